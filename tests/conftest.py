"""Shared pytest fixtures.

`display`: a private Xvfb for tests that open windows. Without Xvfb the GUI tests are skipped on a
developer machine but FAIL when the CI environment variable is set, so CI never passes by silently
skipping them.
"""

from __future__ import annotations

import os

# Before any test module imports glfw: imgui_bundle points pyGLFW at the libglfw its native ImGui
# backend is linked against (PYGLFW_LIBRARY); importing glfw first would load a second GLFW.
import imgui_bundle  # noqa: F401
import pytest
from support.xvfb import MISSING_XVFB_MESSAGE, Xvfb, xvfb_executable


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def display():
    """Start Xvfb (1280x720x24), point DISPLAY at it for the session and yield the Xvfb object.

    `display.display` is the DISPLAY string; `display.screenshot(path)` saves the screen.
    """
    if xvfb_executable() is None:
        if running_in_ci():
            pytest.fail(MISSING_XVFB_MESSAGE, pytrace=False)
        pytest.skip(MISSING_XVFB_MESSAGE)
    with Xvfb(1280, 720, 24) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPLAY", server.display)
        # GLFW prefers Wayland when it sees a compositor; the tests always talk to our X server.
        mp.delenv("WAYLAND_DISPLAY", raising=False)
        yield server
