"""Packaging: one import namespace (`drstudio.app`, `drstudio.renderer`, shaders and shipped scenes as
package data) and a venv that holds exactly the lock file.

The lock check runs where `make test` / `make check-lock` set DRSTUDIO_LOCK_CHECK=1 (the venv the
Makefile built from requirements.lock); in any other environment it is skipped, since a developer's
own venv need not match the lock.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock: Path) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line of a pip-compile lock file."""
    pins = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if m:
            pins[_canonical(m.group(1))] = m.group(2)
    return pins


def frozen_pins(freeze: str) -> dict[str, str]:
    pins = {}
    for line in freeze.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(==| @ )(\S+)$", line.strip())
        if m:  # `name @ url`: installed from a file or URL, not from the lock: shows as a version mismatch
            pins[_canonical(m.group(1))] = m.group(3) if m.group(2) == "==" else f"@ {m.group(3)}"
        elif line.strip() and not line.startswith(("#", "-e ")):
            raise AssertionError(f"pip freeze line not understood: {line!r}")
    return pins


def test_lock_parser(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("a-b==1.0 \\\n    --hash=sha256:00\n# c==2\nTyping_Extensions==4.1 ; python_version < '3.12'\n")
    assert locked_pins(lock) == {"a-b": "1.0", "typing-extensions": "4.1"}
    assert frozen_pins("A_B==1.0\n-e /x\n# Editable install\nc @ file:///w.whl\n") == {"a-b": "1.0",
                                                                                       "c": "@ file:///w.whl"}


@pytest.mark.skipif(os.environ.get("DRSTUDIO_LOCK_CHECK") != "1",
                    reason="only in the venv `make test` builds from requirements.lock")
def test_venv_equals_lock():
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                            check=True).stdout
    installed = frozen_pins(freeze)
    installed.pop("pip", None)  # pinned by the Makefile, not the lock
    installed.pop("drstudio", None)
    locked = locked_pins(ROOT / "requirements.lock")
    assert installed == locked, (
        f"venv differs from requirements.lock: only installed {sorted(set(installed) - set(locked))}, "
        f"only locked {sorted(set(locked) - set(installed))}, versions "
        f"{ {k: (installed[k], locked[k]) for k in set(installed) & set(locked) if installed[k] != locked[k]} }")


def test_pyproject_bounds_warp():
    """renderer/thread_tape.py patches a Warp internal: pyproject admits only tested Warp releases."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"warp-lang([^"]*)"', text)
    assert m and "<" in m.group(1), f"warp-lang needs an upper bound in pyproject.toml, got {m and m.group(0)}"


def test_import_namespace_from_elsewhere(tmp_path):
    """From a folder that is not the repository, drstudio.app and drstudio.renderer import and the
    generic names `app` and `renderer` do not (nothing top-level was installed besides drstudio)."""
    code = ("import importlib.util as u, drstudio.app, drstudio.renderer, drstudio.app.cli;"
            "print(u.find_spec('app') is None, u.find_spec('renderer') is None)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"], out.stdout


def test_wheel_holds_one_namespace(tmp_path):
    """The built wheel's top level is `drstudio/` and its dist-info only; shaders and the shipped
    scenes (with their assets) are package data where the code looks for them."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("drstudio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"drstudio"}
    for needed in ("drstudio/app/cli.py", "drstudio/renderer/__init__.py", "drstudio/shaders/mesh.frag",
                   "drstudio/scenes/texture.json", "drstudio/scenes/assets/albedo.png"):
        assert needed in names, f"{needed} missing from the wheel"
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "drstudio = drstudio.app.cli:main" in entry
