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


def tiny_render_scene(folder: Path, **changes) -> Path:
    import json

    doc = {"version": 1,
           "meshes": [{"name": "ball", "primitive": {"type": "sphere", "radius": 1.0, "resolution": 12},
                       "material": "paint"}],
           "materials": [{"name": "paint", "albedo": [0.8, 0.5, 0.3]}],
           "lights": [{"name": "key", "type": "point", "position": [2, 3, 2], "intensity": 20.0}],
           "cameras": [{"name": "front", "width": 16, "height": 16, "fov_y": 40,
                        "look_at": {"eye": [0, 0, 3.5], "target": [0, 0, 0]}}]}
    doc["meshes"][0].update(changes)
    path = folder / "scene.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_render_overflowing_float32_is_refused(tmp_path):
    """A translation of 3e38 is finite in float32 but made an all-NaN image (issue 14): refused at load, naming the
    field and the bound; nothing written."""
    scene = tiny_render_scene(tmp_path, transform={"translation": [3e38, 0, 0]})
    result = drstudio("render", scene, "-o", tmp_path / "x.png")
    assert_user_error(result, "meshes[0].transform.translation", "[-1e+06, 1e+06]")
    assert not (tmp_path / "x.png").exists()


def test_params_beyond_the_render_bounds_are_refused(tmp_path):
    import numpy as np

    scene = tiny_render_scene(tmp_path)
    np.savez(tmp_path / "params.npz", **{"lights.key.intensity": np.array([3e38], np.float32)})
    result = drstudio("render", scene, "--params", tmp_path / "params.npz", "-o", tmp_path / "x.png")
    assert_user_error(result, "params.npz", "lights.key.intensity", "[0, 1e+09]")
    assert not (tmp_path / "x.png").exists()


def test_a_non_finite_render_is_reported_not_written(tmp_path, monkeypatch, capsys):
    """The safety net behind the bounds (a trained field can still overflow): a render with inf or NaN pixels
    is exit 2, one line, and no image."""
    import numpy as np
    from drstudio.app import cli
    from drstudio.renderer import render as render_module

    class Image:
        def numpy(self):
            out = np.zeros((16, 16, 3), np.float32)
            out[3, 4, 1] = np.inf
            out[5, 5] = np.nan
            return out

    monkeypatch.setattr(render_module, "render", lambda *a, **k: Image())
    scene = tiny_render_scene(tmp_path)
    assert cli.main(["render", str(scene), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "2 non-finite pixels" in err and "not written" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
