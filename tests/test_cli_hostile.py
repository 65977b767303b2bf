"""The command line under unlucky and hostile conditions (issue 14): each case exits 2 with one line
naming what is wrong, no traceback, and changes nothing it should not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENE = str(ROOT / "scenes" / "light.json")


def drstudio(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "drstudio.app.cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_out_is_a_file(tmp_path):
    f = tmp_path / "out"
    f.write_text("keep me")
    assert_user_error(drstudio("optimize", SCENE, "--steps", 1, "--out", f), "not a folder")
    assert f.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_is_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    assert_user_error(drstudio("optimize", SCENE, "--steps", 1, "--out", ro / "run"), "cannot be created")


def test_out_in_use_by_another_run(tmp_path):
    from drstudio.app.outdir import claim

    out = tmp_path / "run"
    with claim(out):  # another process: the lock is per open file description, so a child sees it held
        assert_user_error(drstudio("optimize", SCENE, "--steps", 1, "--out", out), "in use by another")
    assert list(out.iterdir()) == [out / ".drstudio.lock"]


def test_cuda_without_a_gpu(tmp_path):
    import warp as wp

    if wp.get_cuda_device_count() > 0:
        pytest.skip("this machine has a GPU")
    assert_user_error(drstudio("optimize", SCENE, "--steps", 1, "--out", tmp_path / "r", "--device", "cuda"),
                      "no CUDA device")
    assert not (tmp_path / "r").exists()


def test_scene_and_resume_together(tmp_path):
    assert_user_error(drstudio("optimize", SCENE, "--resume", tmp_path, "--out", tmp_path / "r"), "not both")


def test_summary_of_non_finite_metrics():
    from drstudio.app.cli import _fmt

    assert (_fmt(float("nan")), _fmt("inf"), _fmt(None), _fmt(3), _fmt(0.123456)) == ("nan", "inf", "n/a", "3",
                                                                                        "0.1235")


def test_claim_refuses_unwritable_and_full_folders(tmp_path, monkeypatch):
    """What a read-only mount and a full disk look like to `claim` (root ignores permission bits, and CI
    runs as root, so the conditions are simulated at the system calls `claim` asks)."""
    from collections import namedtuple

    from drstudio.app import outdir

    monkeypatch.setattr(outdir.os, "access", lambda path, mode: False)
    with pytest.raises(outdir.OutputError, match="not writable"):
        with outdir.claim(tmp_path / "a"):
            pass
    monkeypatch.undo()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(outdir.OutputError, match="MiB free"):
        with outdir.claim(tmp_path / "b"):
            pass
    assert not (tmp_path / "b" / outdir.LOCK_FILE).exists()


def test_non_finite_renders_are_not_perfect_psnr():
    """lr 1e308 made metrics.json report PSNR "inf", which reads as perfect (issue 14): a NaN render is NaN
    (null in the file); only exact matches are inf."""
    import math

    import numpy as np
    from drstudio.app.headless import _json_safe, _mean_psnr, _psnr_srgb

    nan_img, img = np.full((2, 2, 3), np.nan, np.float32), np.full((2, 2, 3), 0.5, np.float32)
    assert math.isnan(_psnr_srgb(nan_img, img)) and _psnr_srgb(img, img) == math.inf
    assert math.isnan(_mean_psnr([30.0, math.nan])) and _mean_psnr([math.inf, math.inf]) == math.inf
    assert _mean_psnr([math.inf, 30.0, 20.0]) == 25.0 and math.isnan(_mean_psnr([]))
    assert _json_safe({"psnr": math.nan, "x": math.inf}) == {"psnr": None, "x": "inf"}
