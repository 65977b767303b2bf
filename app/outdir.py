"""The output folder of a command, checked before any work starts and held by one run at a time.

`claim(out, what)` is a context manager: it refuses (OutputError, exit 2 in the CLI) a path that is a
file, a folder that cannot be created or written, a disk with less than `min_free` bytes free, and a
folder another drstudio process is writing into (an exclusive `fcntl` lock on `<out>/.drstudio.lock`,
released by the kernel when the holder exits, even by SIGKILL, so a crashed run never leaves a stale lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".drstudio.lock"
MIN_FREE = 16 * 2**20  # bytes: below this a run would fail midway writing its results


class OutputError(OSError):
    """The output folder cannot be used; nothing was written."""


@contextlib.contextmanager
def claim(out: Path, what: str = "output folder", min_free: int = MIN_FREE) -> Iterator[Path]:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{what} {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {out} cannot be created: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {out} is not writable")
    free = shutil.disk_usage(out).free
    if free < min_free:
        raise OutputError(f"{what} {out}: only {free / 2**20:.1f} MiB free on its disk (need at least "
                          f"{min_free / 2**20:.0f} MiB)")
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{what} {out} is not writable: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{what} {out} is in use by another drstudio run; choose another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield out
    finally:
        os.close(fd)  # releases the lock
