"""`drstudio optimize --downscale N` / `optimize.targets.downscale` (issue 13 item 1): a scene trained on a
dataset (targets.transforms) at 1/N resolution, intrinsics scaled, `images_N/` files when present, else the
images area-averaged on load; the recording keeps N so verify and resume rebuild the same problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from drstudio.app import cli
from drstudio.renderer.conventions import srgb_to_linear
from drstudio.renderer.images import read_image, write_image
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.optim.targets import with_target_downscale
from drstudio.renderer.params import camera_intrinsics
from drstudio.renderer.recording import load_recording, verify
from drstudio.renderer.transforms_json import load_transforms

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset_scene(tmp_path_factory):
    """A 12^3 voxel grid on a generated 6-view 32x32 dataset of the texture scene."""
    from drstudio.renderer.datasets import DatasetOptions, generate_dataset

    folder = tmp_path_factory.mktemp("downscale")
    generate_dataset(load_scene(ROOT / "scenes" / "texture.json"), folder / "data",
                     DatasetOptions(views=6, width=32, height=32), device="cpu")
    doc = {"version": 1,
           "cameras": [{"name": "preview", "width": 16, "height": 16, "fov_y": 40,
                        "look_at": {"eye": [0, 0.8, 3.5], "target": [0, 0, 0]}}],
           "fields": [{"name": "nerf", "type": "voxel_grid", "resolution": 12, "aabb": [[-1.05] * 3, [1.05] * 3],
                       "samples_per_ray": 16}],
           "optimize": {"parameters": {"fields.nerf.density": {"lr": 0.5}, "fields.nerf.sh": {"lr": 0.2}},
                        "targets": {"transforms": "data/transforms.json"}, "loss": {"l2": 1.0},
                        "optimizer": {"type": "adam", "lr": 0.1}, "steps": 3, "rays_per_batch": 128}}
    scene = folder / "field.json"
    scene.write_text(json.dumps(doc))
    return scene


def _box2(img: np.ndarray) -> np.ndarray:
    h, w, c = img.shape
    return img.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))


def test_frames_and_targets_at_half_resolution(dataset_scene):
    full = load_transforms(dataset_scene.parent / "data" / "transforms.json")
    half = load_transforms(dataset_scene.parent / "data" / "transforms.json", downscale=2)
    for f, g in zip(full, half, strict=True):
        assert (g.width, g.height) == (16, 16) and g.file_size == (32, 32) and g.image_path == f.image_path
        np.testing.assert_allclose(g.intrinsics, f.intrinsics * 0.5, rtol=1e-6)
    problem = Problem(with_target_downscale(load_scene(dataset_scene), 2), "cpu")
    cam = problem.scene.cameras["frame_001"]
    assert (cam.width, cam.height) == (16, 16)
    np.testing.assert_allclose(problem.ds.get(camera_intrinsics("frame_001")), half[1].intrinsics, rtol=1e-6)
    # the targets: the files area-averaged in linear RGB (an independent 2x2 mean)
    expected = _box2(srgb_to_linear(read_image(half[1].image_path, channels=3)).astype(np.float64))
    np.testing.assert_allclose(problem.target_numpy("frame_001"), expected, atol=2e-6)
    assert np.isfinite(problem.step().loss)


def test_images_n_folder_is_used_when_present(dataset_scene, tmp_path):
    import shutil

    data = Path(shutil.copytree(dataset_scene.parent / "data", tmp_path / "data"))
    shutil.copy(dataset_scene, tmp_path / "field.json")
    small = np.full((16, 16, 3), 0.25, np.float32)  # not what the full images average to: shows which was read
    for img in (data / "images").iterdir():
        write_image(data / "images_2" / img.name, small)
    frames = load_transforms(data / "transforms.json", downscale=2)
    assert all(f.image_path.parent.name == "images_2" and f.file_size is None for f in frames)
    problem = Problem(with_target_downscale(load_scene(tmp_path / "field.json"), 2), "cpu")
    np.testing.assert_allclose(problem.target_numpy("frame_000"), srgb_to_linear(read_image(
        data / "images_2" / frames[0].image_path.name, channels=3)), atol=1e-6)


def test_cli_downscale_records_and_verifies(dataset_scene, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["optimize", str(dataset_scene), "--downscale", "2", "--steps", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    rec = load_recording(out / "recording")
    assert rec.meta["downscale"] == 2
    report = verify(rec)
    assert report.ok and report.steps_checked == 3, report.message()


def test_cli_downscale_user_errors(tmp_path, capsys):
    scene = ROOT / "scenes" / "texture.json"  # targets rendered from cameras: nothing to downscale
    assert cli.main(["optimize", str(scene), "--downscale", "2", "--steps", "1", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "texture.json" in err and "targets.transforms" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:  # argparse: usage and exit 2
        cli.main(["optimize", str(scene), "--downscale", "0", "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and "--downscale" in capsys.readouterr().err
