"""Results survive a full disk (issue 14): a run whose output disk fills up midway keeps its recording up
to its last keyframe (loadable, verifiable) and ends with one line and exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def small_disk(tmp_path):
    """A 24 MiB tmpfs (mounting needs root, which CI is)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_keeps_the_recording_and_exits_2(small_disk):
    out = small_disk / "run"
    proc = subprocess.Popen([sys.executable, "-m", "drstudio.app.cli", "optimize", str(ROOT / "scenes" / "light.json"),
                             "--steps", "400", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(out.rglob("keyframes/0*.npz")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        filler = small_disk / "filler"
        with open(filler, "wb") as f:  # fill the disk while the run goes on
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "No space left on device" in err, err[-3000:]
    from drstudio.renderer.recording import load_recording, verify

    filler.unlink()  # room again for verify's own files
    rec = load_recording(next(p.parent for p in out.rglob("meta.json")))
    assert rec.keyframes and len(rec.steps) > 0
    report = verify(rec)
    assert report.ok, report.message()
