"""renderer.memory: schema-valid inputs too large for this machine are refused before allocating, with
a message naming them (issue 14: an 8192x8192 camera, a 512^3 SH-2 grid during `info`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from drstudio.renderer import memory

ROOT = Path(__file__).resolve().parents[1]


def test_estimates_and_budget():
    assert memory.grid_bytes((512, 512, 512), 2) == 512**3 * 28 * 4
    assert memory.render_bytes(100, 10) == 1000 * memory.RENDER_BYTES_PER_PIXEL
    memory.require(10**6, "a small thing", available=10**9)
    with pytest.raises(memory.MemoryBudgetError, match="a big thing needs about 0.9 GiB.*0.9 GiB free"):
        memory.require(10**9, "a big thing", available=10**9)
    assert memory.available_bytes() > 0


def run(*args):
    return subprocess.run([sys.executable, "-m", "drstudio.app.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_a_huge_grid_is_refused_by_info(tmp_path):
    scene = json.loads((ROOT / "scenes" / "nerf_grid.json").read_text())
    scene["fields"][0]["resolution"] = [512, 512, 512]
    scene["fields"][0]["sh_degree"] = 2  # 512^3 x 28 float32 values: 15 GiB a copy
    scene["fields"][0].pop("coarse_to_fine", None)
    scene.pop("optimize", None)
    shutil.copytree(ROOT / "scenes" / "assets", tmp_path / "assets")
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(scene))
    out = run("info", path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "fields[0].resolution" in out.stderr and "GiB" in out.stderr


def test_a_huge_camera_is_refused_before_rendering(tmp_path, monkeypatch):
    """An 8192x8192 camera (the schema's maximum) with the machine's memory shrunk to 8 GiB for the test:
    refused before any buffer is allocated, exit 2."""
    scene = json.loads((ROOT / "scenes" / "light.json").read_text())
    for cam in scene["cameras"]:
        cam["width"] = cam["height"] = 8192
    scene.pop("optimize", None)
    for key in ("meshes", "materials"):
        for item in scene.get(key, []):
            for k, v in list(item.items()):
                if isinstance(v, str) and v.endswith((".png", ".obj")):
                    item[k] = str((ROOT / "scenes" / v).resolve())
    path = tmp_path / "big.json"
    path.write_text(json.dumps(scene))
    from drstudio.renderer.device_scene import DeviceScene
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.render import render_view

    monkeypatch.setattr(memory, "available_bytes", lambda: 8 * 2**30)
    sc = load_scene(path)
    ds = DeviceScene(sc, "cpu")
    with pytest.raises(memory.MemoryBudgetError, match="8192x8192"):
        render_view(ds, ds.prepare(), next(iter(sc.cameras)))


def test_target_images_beyond_the_machine_are_refused(tmp_path, monkeypatch):
    """A dataset whose target images do not fit (the full-resolution capture at 7.7 GB RSS) is refused
    before one is read, with the way out (downscale), naming the scene's field."""

    from drstudio.renderer.errors import SceneError
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.optim.problem import Problem

    scene = json.loads((ROOT / "scenes" / "texture.json").read_text())
    shutil.copytree(ROOT / "scenes" / "assets", tmp_path / "assets")
    cam = scene["cameras"][0]
    import imageio.v3 as iio
    import numpy as np

    iio.imwrite(tmp_path / "t.png", np.zeros((cam["height"], cam["width"], 3), np.uint8))
    scene["optimize"]["targets"] = {"images": [{"camera": cam["name"], "file": "t.png"}]}
    scene["optimize"]["batch_views"] = 1
    path = tmp_path / "s.json"
    path.write_text(json.dumps(scene))
    sc = load_scene(path)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with pytest.raises(SceneError, match=r"optimize.targets: the 1 target images .* --downscale"):
        Problem(sc, "cpu")


def test_a_render_larger_than_memory_is_drawn_in_bands(tmp_path, monkeypatch):
    """`drstudio render` of an image whose buffers exceed the memory at hand renders it band by band
    (issue 14: big renders tiled where that makes them possible) and gets the same picture."""
    import imageio.v3 as iio
    import numpy as np
    from drstudio.app import cli

    scene = str(ROOT / "scenes" / "material.json")
    assert cli.main(["render", scene, "-o", str(tmp_path / "whole.png")]) == 0
    whole = iio.imread(tmp_path / "whole.png").astype(int)
    h, w = whole.shape[:2]
    # memory for about a fifth of the image's buffers: five or more bands
    fifth = int(memory.render_bytes(w, h) / 5 / memory.BUDGET_FRACTION * 2)
    monkeypatch.setattr(memory, "available_bytes", lambda: fifth)
    calls = []
    from drstudio.app import camera_path

    real = camera_path.render_banded
    monkeypatch.setattr(camera_path, "render_banded", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert cli.main(["render", scene, "-o", str(tmp_path / "bands.png")]) == 0
    assert calls and calls[0]["band_rays"] < w * h / 4
    bands = iio.imread(tmp_path / "bands.png").astype(int)
    diff = np.abs(bands - whole).max(axis=-1)
    assert (diff > 2).mean() < 0.01  # the same picture but for anti-aliased edges on the band seams


def test_field_batch_estimates():
    from types import SimpleNamespace

    grid = SimpleNamespace(type="voxel_grid", samples_per_ray=128)
    mlp = SimpleNamespace(type="neural", samples_per_ray=64, width=256, depth=4)
    assert memory.field_batch_bytes(grid, 4096, training=True) == 4096 * 128 * memory.GRID_SAMPLE_BYTES
    assert memory.field_batch_bytes(mlp, 1024, training=True) == 1024 * 64 * (
        memory.NEURAL_SAMPLE_BYTES + memory.NEURAL_UNIT_BYTES * 256 * 4)
    assert memory.field_batch_bytes(grid, 1 << 16, training=False) == (1 << 16) * 128 * memory.RENDER_SAMPLE_BYTES
    assert memory.field_batch_bytes(mlp, 8192, training=False) > memory.field_batch_bytes(grid, 8192, training=False)


def field_scene_file(tmp_path, name: str, **changes) -> Path:
    scene = json.loads((ROOT / "scenes" / name).read_text())
    scene["fields"][0].update(changes.pop("field", {}))
    scene["optimize"].update(changes)
    shutil.copytree(ROOT / "scenes" / "assets", tmp_path / "assets")
    path = tmp_path / "field.json"
    path.write_text(json.dumps(scene))
    return path


def test_a_training_batch_beyond_memory_is_refused_at_load(tmp_path, monkeypatch):
    """A field's ray batch (rays_per_batch x samples_per_ray samples under a tape) is estimated before
    anything is allocated and refused naming the option, the field and the estimate (issue 14)."""
    from drstudio.renderer.errors import SceneError
    from drstudio.renderer.loading import load_scene

    path = field_scene_file(tmp_path, "nerf_neural.json", rays_per_batch=1 << 16)
    monkeypatch.setattr(memory, "available_bytes", lambda: 4 * 2**30)
    with pytest.raises(SceneError, match=r"optimize.rays_per_batch: a training step of 65536 rays x 48 samples per "
                                         r"ray \(fields\[0\] 'nerf', an MLP 4 x 64\) needs about 9.0 GiB"):
        load_scene(path)
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 2**30)
    load_scene(path)  # the same batch fits a larger machine


def test_a_field_render_group_beyond_memory_is_refused(tmp_path):
    """4096 samples per ray (the schema's maximum) on 65,536-ray render groups: 16 GiB; with 4M rays per
    training batch 2 TiB: `drstudio info` exits 2 naming the field."""
    path = field_scene_file(tmp_path, "nerf_grid.json", rays_per_batch=1 << 22, field={"samples_per_ray": 4096})
    out = run("info", path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "fields[0].samples_per_ray" in out.stderr or "optimize.rays_per_batch" in out.stderr, out.stderr
    assert "GiB" in out.stderr and len(out.stderr.strip().splitlines()) <= 2, out.stderr


def test_a_field_ray_bank_beyond_memory_is_refused(tmp_path, monkeypatch):
    """A field trains from every pixel's ray (origin, direction, color: 48 B a pixel with its target): the 56
    views of nerf_grid.json at 128x128 need about 44 MB, refused before a target is rendered on a machine with
    25 MB (the target renders themselves would fit)."""
    from drstudio.renderer.errors import SceneError
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.optim.problem import Problem

    sc = load_scene(field_scene_file(tmp_path, "nerf_grid.json"))
    monkeypatch.setattr(memory, "available_bytes", lambda: 25 * 2**20)
    with pytest.raises(SceneError, match=r"optimize.targets: the rays of the 56 training views \(0.9 Mpixels, 48 B "
                                         r"each\) needs about 42 MiB.*--downscale"):
        Problem(sc, "cpu")
