"""Shared pytest fixtures.

`device`: the Warp device a test runs on, parametrized over `support.devices.test_devices()` (the CPU,
plus CUDA when present; $DRSTUDIO_TEST_DEVICES restricts), ids `[cpu]`, `[cuda:0]`. While a test that
takes `device` runs, it is also Warp's default device, so arrays the test builds without `device=` (and
launches without one) live on it too. A test that must stay on the CPU says "cpu" with a comment why:
a literal "cpu" where it passes a device, or @pytest.mark.parametrize("device", ["cpu"]) where it relies
on the default device.

`private_config` (autouse): an empty $XDG_CONFIG_HOME per test, so viewer settings never leak.

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


@pytest.fixture(autouse=True)
def private_config(tmp_path_factory, monkeypatch):
    """Every test gets its own empty $XDG_CONFIG_HOME: the viewer's settings (UI scale, recent files,
    ~/.config/drstudio/viewer.json) never leak from one test into another, nor into the user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))


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


def _names(argnames) -> list[str]:
    return [n.strip() for n in argnames.split(",")] if isinstance(argnames, str) else list(argnames)


def pytest_generate_tests(metafunc):
    # Parametrize here rather than in @pytest.fixture(params=...): Warp is imported and the device list (and
    # wp.init) computed only in sessions that collect a test using `device`. A CPU-only test says so itself with
    # @pytest.mark.parametrize("device", ["cpu"]) (and a comment why); that one is left alone.
    if "device" not in metafunc.fixturenames:
        return
    if any("device" in _names(m.args[0]) for m in metafunc.definition.iter_markers("parametrize")):
        return
    from support.devices import test_devices

    metafunc.parametrize("device", test_devices(), ids=str, indirect=True, scope="session")


@pytest.fixture(scope="session")
def device(request) -> str:
    """The Warp device name this test runs on ("cpu", "cuda:0", ...)."""
    return request.param


@pytest.fixture(autouse=True)
def _default_device(request):
    # A test (or fixture) that takes `device` runs with it as Warp's default device.
    if "device" not in request.fixturenames:
        yield
        return
    import warp as wp

    with wp.ScopedDevice(request.getfixturevalue("device")):
        yield
