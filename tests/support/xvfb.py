"""A private Xvfb server for the GUI tests.

Xvfb picks a free display number itself and writes it to the file descriptor given by
`-displayfd`, so parallel test runs (other checkouts, other sessions) never collide on `:99`.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

MISSING_XVFB_MESSAGE = (
    "GUI tests need Xvfb; install xvfb (plus Mesa GL: libgl1 libglx-mesa0 libgl1-mesa-dri libegl1) "
    "— tests/support/ensure_display_deps.sh does this as root (it runs as part of `make test`)"
)


class XvfbError(RuntimeError):
    """Xvfb is installed but did not start."""


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test process dies without stopping us (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def xvfb_executable() -> str | None:
    """Path of the Xvfb binary, or None when it is not installed."""
    return shutil.which("Xvfb")


class Xvfb:
    """One Xvfb process; `display` is the DISPLAY value (":N") once `start()` returned."""

    def __init__(self, width: int = 1280, height: int = 720, depth: int = 24, start_timeout: float = 15.0):
        self.screen = f"{width}x{height}x{depth}"
        self.start_timeout = start_timeout
        self.display: str | None = None
        self._proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    def start(self) -> str:
        exe = xvfb_executable()
        if exe is None:
            raise FileNotFoundError(MISSING_XVFB_MESSAGE)
        read_fd, write_fd = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [exe, "-displayfd", str(write_fd), "-screen", "0", self.screen, "-noreset",
                 "-nolisten", "tcp"],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which then stops us
                preexec_fn=_die_with_parent,
            )
            os.close(write_fd)
            write_fd = -1
            self.display = ":" + self._read_display_number(read_fd)
        except BaseException:
            if write_fd != -1:
                os.close(write_fd)
            self.stop()
            raise
        finally:
            os.close(read_fd)
        return self.display

    def _read_display_number(self, read_fd: int) -> str:
        """Xvfb writes "N\\n" to the -displayfd pipe once it accepts connections."""
        deadline = time.monotonic() + self.start_timeout
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise XvfbError(
                    f"Xvfb did not report a display within {self.start_timeout:.0f} s\n{self.log()}"
                )
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 64)
            if not chunk:  # pipe closed: Xvfb exited
                code = self._proc.wait(timeout=5) if self._proc else None
                raise XvfbError(f"Xvfb exited (code {code}) before reporting a display\n{self.log()}")
            data += chunk
        number = data.strip().decode()
        if not number.isdigit():
            raise XvfbError(f"Xvfb reported an unexpected display {number!r}\n{self.log()}")
        return number

    def log(self) -> str:
        """Everything Xvfb printed so far (for error messages)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def screenshot(self, path: str | Path) -> Path:
        """Save the whole screen with ImageMagick `import` (evidence for a failing GUI test)."""
        if self.display is None:
            raise XvfbError("screenshot() before start()")
        path = Path(path)
        subprocess.run(
            ["import", "-display", self.display, "-window", "root", str(path)],
            check=True, capture_output=True, timeout=30,
        )
        return path

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.display = None

    def __enter__(self) -> Xvfb:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._log.close()
