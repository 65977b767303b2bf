"""`renderer.datasets` / `drstudio dataset`: generated datasets round-trip through
`renderer.transforms_json.load_transforms`, a pose read back from the file re-renders its image, held-out
splits, lighting variation, occluders and animation do what the frames record, and the CLI writes the
files or exits 2 with a clear message. Tiny images (32x32) keep it fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from drstudio.app import cli
from drstudio.renderer import conventions as cv
from drstudio.renderer.datasets import Animation, DatasetOptions, generate_dataset, plan_dataset
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.images import read_image, write_image
from drstudio.renderer.loading import load_scene
from drstudio.renderer.render import render
from drstudio.renderer.scene import Camera
from drstudio.renderer.transforms_json import load_transforms

ROOT = Path(__file__).resolve().parents[1]
TEXTURE = ROOT / "scenes" / "texture.json"
SIZE = 32
ONE_LEVEL = 1 / 255


def options(**kw) -> DatasetOptions:
    return DatasetOptions(**{"views": 6, "width": SIZE, "height": SIZE, "seed": 3, **kw})


def make(out: Path, scene_file=TEXTURE, **kw):
    scene = load_scene(scene_file)
    return scene, generate_dataset(scene, out, options(**kw), device="cpu")


def rerender(frame, scene_file=TEXTURE, values: dict | None = None) -> np.ndarray:
    """Render `frame`'s camera (as loaded from the file) in the scene, after setting `values` by path."""
    scene = load_scene(scene_file)
    scene.cameras = {"f": Camera("f", frame.width, frame.height, frame.intrinsics, frame.pose)}
    params = scene.params()
    for path, value in (values or {}).items():
        params[path].value[...] = np.asarray(value, np.float32).reshape(params[path].shape)
    return render(DeviceScene(scene, "cpu"), "f").numpy()


def as_stored(linear: np.ndarray) -> np.ndarray:
    """What an 8-bit sRGB PNG of `linear` reads back as."""
    return np.round(cv.linear_to_srgb(linear) * 255) / 255


def image_error(got_linear: np.ndarray, file: Path) -> float:
    return float(np.abs(as_stored(got_linear) - read_image(file)).max())


def assert_same_image(got_linear: np.ndarray, file: Path, evidence: Path, tol: float = ONE_LEVEL) -> None:
    """Same 8-bit image up to one code (a value on a rounding boundary); on failure the re-rendered
    image is written next to the test's files."""
    err = image_error(got_linear, file)
    if err > tol:
        got = write_image(evidence / f"got_{file.name}", got_linear)
        pytest.fail(f"re-rendered image differs from {file} by {err:.4f} > {tol:.4f}; got: {got}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "texture"
    scene, summary = make(out, test_views=2)
    return out, scene, summary


# ---- round trip ---------------------------------------------------------------------------------

def test_round_trip_through_load_transforms(dataset):
    out, scene, summary = dataset
    plan = plan_dataset(scene, options(test_views=2))
    frames = load_transforms(out / "transforms.json")
    assert len(frames) == 6 and summary.frames == 6
    for frame, view in zip(frames, plan.views):
        np.testing.assert_allclose(frame.intrinsics, plan.intrinsics, rtol=1e-6)
        np.testing.assert_allclose(frame.intrinsics, cv.fov_y_to_intrinsics(40.0, SIZE, SIZE), rtol=1e-6)
        np.testing.assert_allclose(frame.pose, view.pose, atol=1e-6)
        assert (frame.width, frame.height) == (SIZE, SIZE)
        assert read_image(frame.image_path).shape == (SIZE, SIZE, 3)
        assert frame.image_path == out / "images" / f"{view.name}.png"
        # cameras sit at the planned distance and look at the center (camera -Z through it)
        m = cv.pose_to_matrix(frame.pose)
        to_center = plan.center - m[:3, 3]
        assert np.linalg.norm(to_center) == pytest.approx(plan.distance, rel=1e-5)
        np.testing.assert_allclose(-m[:3, 2], to_center / np.linalg.norm(to_center), atol=1e-5)
    doc = json.loads((out / "transforms.json").read_text())
    assert doc["camera_angle_x"] == pytest.approx(np.radians(40.0))  # square images: fov_x = fov_y
    assert {doc[k] for k in ("w", "h")} == {SIZE} and "time" not in doc["frames"][0]


def test_pose_from_the_file_re_renders_the_same_image(dataset, tmp_path):
    out, _, _ = dataset
    frames = load_transforms(out / "transforms.json")
    for frame in (frames[0], frames[3]):
        assert_same_image(rerender(frame), frame.image_path, tmp_path)


def test_held_out_splits(dataset):
    out, scene, summary = dataset
    assert (summary.train, summary.test) == (4, 2)
    doc = json.loads((out / "transforms.json").read_text())
    splits = [f["split"] for f in doc["frames"]]
    assert splits.count("train") == 4 and splits.count("test") == 2
    split_frames = {s: load_transforms(out / f"transforms_{s}.json") for s in ("train", "val", "test")}
    assert [len(split_frames[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    train = {f.image_path for f in split_frames["train"]}
    test = {f.image_path for f in split_frames["test"]}
    assert not train & test and train | test == {f.image_path for f in load_transforms(out / "transforms.json")}
    assert all(p.is_file() for p in train | test)
    # nerfstudio's explicit split lists name the same files
    assert {out / p for p in doc["test_filenames"]} == test == {out / p for p in doc["val_filenames"]}
    assert {out / p for p in doc["train_filenames"]} == train
    for views, k in ((5, 1), (9, 4), (3, 2)):
        plan = plan_dataset(scene, options(views=views, test_views=k))
        assert len(plan.split("test")) == k and len(plan.split("train")) == views - k


def test_no_split_files_without_test_views(tmp_path):
    out = tmp_path / "d"
    make(out, views=2)
    assert sorted(p.name for p in out.iterdir()) == ["images", "transforms.json"]
    doc = json.loads((out / "transforms.json").read_text())
    assert "split" not in doc["frames"][0] and "train_filenames" not in doc


def test_poses_are_deterministic_and_spread(dataset):
    _, scene, _ = dataset
    a, b = plan_dataset(scene, options(views=20)), plan_dataset(scene, options(views=20))
    c = plan_dataset(scene, options(views=20, seed=4))
    pa, pb, pc = (np.stack([v.pose for v in p.views]) for p in (a, b, c))
    assert np.array_equal(pa, pb) and not np.allclose(pa, pc)
    dirs = pa[:, :3] - a.center
    assert dirs[:, 1].max() > 0.8 * a.distance and dirs[:, 1].min() < -0.8 * a.distance  # top and bottom
    hemi = plan_dataset(scene, options(views=20, hemisphere=True))
    assert all(v.pose[1] > hemi.center[1] for v in hemi.views)


# ---- NeRF-W variations --------------------------------------------------------------------------

def test_lighting_variation_changes_images_and_records_the_lights(dataset, tmp_path):
    clean_out, _, _ = dataset
    out = tmp_path / "lit"
    make(out, test_views=2, lighting_variation=0.5)
    clean, lit = load_transforms(clean_out / "transforms.json"), load_transforms(out / "transforms.json")
    doc = json.loads((out / "transforms.json").read_text())
    for a, b, rec in zip(clean, lit, doc["frames"]):
        np.testing.assert_array_equal(a.pose, b.pose)  # same seed, same cameras
        assert np.abs(read_image(a.image_path) - read_image(b.image_path)).max() > 3 * ONE_LEVEL
        assert set(rec["appearance"]) == {"lights.sun.color", "lights.sun.intensity", "lights.sky.color"}
    appearances = [json.dumps(rec["appearance"]) for rec in doc["frames"]]
    assert len(set(appearances)) == len(appearances)
    assert_same_image(rerender(lit[2], values=doc["frames"][2]["appearance"]), lit[2].image_path, tmp_path)


def test_occluders_appear_only_in_the_frames_that_list_them(dataset, tmp_path):
    clean_out, _, _ = dataset
    out = tmp_path / "occ"
    _, summary = make(out, test_views=2, occluders=2, occluded_fraction=0.5)
    doc = json.loads((out / "transforms.json").read_text())
    listed = [i for i, rec in enumerate(doc["frames"]) if rec["occluders"]]
    assert listed == summary.occluded and len(listed) == 2  # half of the 4 train views
    assert all(doc["frames"][i]["split"] == "train" for i in listed)
    for i, (clean, occ) in enumerate(zip(load_transforms(clean_out / "transforms.json"),
                                         load_transforms(out / "transforms.json"))):
        changed = np.abs(read_image(clean.image_path) - read_image(occ.image_path)).max(axis=2) > 4 * ONE_LEVEL
        if i in listed:
            assert len(doc["frames"][i]["occluders"]) == 2
            assert changed.sum() >= 4, f"frame {i} lists occluders but they are not in its image"
        else:
            assert doc["frames"][i]["occluders"] == [] and not changed.any(), f"frame {i}"


# ---- animation ----------------------------------------------------------------------------------

def test_animated_frames_have_increasing_time_and_move(tmp_path):
    out = tmp_path / "anim"
    scene, _ = make(out, views=4, animate=Animation(degrees=90.0))
    frames = load_transforms(out / "transforms.json")
    times = [f.time for f in frames]
    assert times == pytest.approx([0, 1 / 3, 2 / 3, 1]) and all(a < b for a, b in zip(times, times[1:]))
    anim = json.loads((out / "transforms.json").read_text())["drstudio"]["animation"]
    assert anim["mesh"] == "globe" and anim["degrees"] == 90.0
    assert_same_image(rerender(frames[0]), frames[0].image_path, tmp_path)  # time 0: the scene as is
    globe = scene.meshes["globe"]
    for frame in frames[1:]:
        static = rerender(frame)
        assert image_error(static, frame.image_path) > 10 * ONE_LEVEL, "the scene did not move"
        moved = {"meshes.globe.translation": globe.translation + frame.time * np.asarray(anim["translation"]),
                 "meshes.globe.rotation": cv.quat_multiply(
                     cv.quat_from_axis_angle(anim["axis"], frame.time * anim["degrees"]), globe.rotation)}
        assert_same_image(rerender(frame, values=moved), frame.image_path, tmp_path)


def test_multi_view_sequence_gives_every_time_cameras_over_the_whole_sphere():
    # animate.times = T: T times, each seen from ~views / T cameras spread over the sphere (a 4D grid's
    # slices are each constrained by views from all around), test views spread over the times
    scene = load_scene(TEXTURE)
    plan = plan_dataset(scene, options(views=20, test_views=5, animate=Animation(times=4)))
    times = np.array([v.time for v in plan.views])
    np.testing.assert_allclose(times, np.repeat([0, 1 / 3, 2 / 3, 1], 5))  # numbered time by time
    assert plan.animation["times"] == 4
    dirs = np.array([cv.pose_to_matrix(v.pose.astype(np.float64))[:3, 3] for v in plan.views]) - plan.center
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    for j in range(4):
        group = dirs[5 * j:5 * j + 5]
        assert group[:, 1].max() > 0.5 and group[:, 1].min() < -0.5  # top to bottom
        azimuth = np.arctan2(group[:, 0], group[:, 2])
        assert np.ptp(np.unwrap(np.sort(azimuth))) > np.pi / 2  # and around
        train = [v for v in plan.views[5 * j:5 * j + 5] if v.split == "train"]
        assert len(train) >= 3
    assert not np.allclose(dirs[:5], dirs[5:10])  # the times see different viewpoints
    assert sorted(v.split for v in plan.views).count("test") == 5
    assert len({v.time for v in plan.views if v.split == "test"}) == 4
    # without times: one time per frame along the spiral, poses as before
    plain = plan_dataset(scene, options(views=20, animate=Animation()))
    np.testing.assert_allclose([v.time for v in plain.views], np.arange(20) / 19)
    static = plan_dataset(scene, options(views=20))

    def unit(p):  # camera directions from the center (the motion enlarges the framed sphere)
        d = np.array([cv.pose_to_matrix(v.pose.astype(np.float64))[:3, 3] for v in p.views]) - p.center
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    np.testing.assert_allclose(unit(plain), unit(static), atol=1e-6)


def test_multi_view_sequence_frames_render_the_scene_at_their_time(tmp_path):
    out = tmp_path / "seq"
    scene, summary = make(out, views=6, animate=Animation(times=3, degrees=60.0))
    frames = load_transforms(out / "transforms.json")
    assert [f.time for f in frames] == pytest.approx([0, 0, 0.5, 0.5, 1, 1])
    anim = json.loads((out / "transforms.json").read_text())["drstudio"]["animation"]
    globe = scene.meshes["globe"]
    for frame in frames[1::2]:
        moved = {"meshes.globe.translation": globe.translation + frame.time * np.asarray(anim["translation"]),
                 "meshes.globe.rotation": cv.quat_multiply(
                     cv.quat_from_axis_angle(anim["axis"], frame.time * anim["degrees"]), globe.rotation)}
        assert_same_image(rerender(frame, values=moved), frame.image_path, tmp_path)


def test_multi_view_sequence_validation():
    scene = load_scene(TEXTURE)
    for times in (1, 7, True, 2.5):
        with pytest.raises(ValueError, match=r"animate.times: expected an integer in \[2, views = 6\]"):
            options(animate=Animation(times=times))
    # 3 times of 2 views, 4 test views: one time would keep no training view
    with pytest.raises(ValueError, match="animate.times: 3 times over 6 views with 4 test views leave time 1"):
        plan_dataset(scene, options(test_views=4, animate=Animation(times=3)))


def test_load_transforms_checks_frame_times(tmp_path):
    from drstudio.renderer.errors import SceneError

    frame = {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}
    doc = {"camera_angle_x": 0.8, "w": 4, "h": 4}
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))  # frames without an image are skipped
    for frames, message in ((([{**frame, "time": 1.5}]), r"frames\[0\]\.time.*expected a time in \[0, 1\]"),
                            ([{**frame, "time": 0.5}, frame], r"frames\[1\]\.time.*missing")):
        (tmp_path / "t.json").write_text(json.dumps({**doc, "frames": frames}))
        with pytest.raises(SceneError, match=message):
            load_transforms(tmp_path / "t.json")
    (tmp_path / "t.json").write_text(json.dumps({**doc, "frames": [{**frame, "time": 0}, {**frame, "time": 1}]}))
    assert [f.time for f in load_transforms(tmp_path / "t.json")] == [0.0, 1.0]


# ---- background and alpha -----------------------------------------------------------------------

def test_background_color_and_rgba_alpha_from_coverage(tmp_path):
    import imageio.v3 as iio

    make(tmp_path / "white", views=1, background=(1.0, 1.0, 1.0))
    assert read_image(tmp_path / "white" / "images" / "r_000.png")[0, 0].tolist() == [1.0, 1.0, 1.0]
    for mode in ("hard", "antialias"):
        out = tmp_path / mode
        make(out, views=2, rgba=True, mode=mode)
        frame = load_transforms(out / "transforms.json")[1]
        rgba = iio.imread(frame.image_path)
        assert rgba.shape == (SIZE, SIZE, 4)
        alpha = rgba[..., 3] / 255
        scene = load_scene(TEXTURE)
        scene.cameras = {"f": Camera("f", SIZE, SIZE, frame.intrinsics, frame.pose)}
        covered = render(DeviceScene(scene, "cpu"), "f", mode="hard").tri_id.numpy().reshape(SIZE, SIZE) >= 0
        assert (rgba[~covered & (alpha == 0)][:, :3] == 0).all()  # nothing of the backdrop in the color
        if mode == "hard":
            np.testing.assert_array_equal(alpha, covered.astype(float))
        else:  # anti-aliased coverage: fractional along the silhouette only
            edge = np.zeros_like(covered)
            for shift, axis in ((1, 0), (-1, 0), (1, 1), (-1, 1)):
                edge |= covered != np.roll(covered, shift, axis)
            partial = (alpha > 0) & (alpha < 1)
            assert partial.any() and not (partial & ~edge).any()
            np.testing.assert_array_equal(alpha[~edge], covered[~edge].astype(float))


# ---- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"views": 0}, "views: expected an integer >= 1"),
    ({"views": 3, "test_views": 3}, "test_views: expected fewer than views (3)"),
    ({"width": 0}, "width: expected an integer in [1, "),
    ({"fov_y": 180}, "fov_y: expected degrees in (0, 180)"),
    ({"lighting_variation": -1}, "lighting_variation: expected a number in [0.0, 2.0]"),
    ({"background": (1, 2)}, "background: expected 3 finite numbers"),
    ({"mode": "x"}, "mode: expected one of hard, antialias, soft"),
])
def test_bad_options_raise_value_error_naming_the_option(kw, message):
    with pytest.raises(ValueError) as err:
        DatasetOptions(**kw)
    assert message in str(err.value)


def test_options_the_scene_cannot_satisfy():
    scene = load_scene(TEXTURE)
    with pytest.raises(ValueError, match="animate.mesh: no mesh named 'nope'; meshes: globe"):
        plan_dataset(scene, options(animate=Animation(mesh="nope")))
    scene.directional_lights.clear()
    scene.ambient_lights.clear()
    with pytest.raises(ValueError, match="no lights to vary"):
        plan_dataset(scene, options(lighting_variation=0.3))


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_writes_a_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "tmp"
    assert cli.main(["dataset", "scenes/texture.json", "--views", "6", "--test-views", "2", "--out", str(out),
                     "--width", str(SIZE), "--height", str(SIZE)]) == 0
    assert "wrote 6 views (4 train, 2 test)" in capsys.readouterr().out
    for name in ("transforms.json", "transforms_train.json", "transforms_val.json", "transforms_test.json"):
        assert (out / name).is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"r_{i:03d}.png" for i in range(6)]
    assert len(load_transforms(out / "transforms_train.json")) == 4
    # an existing dataset is not overwritten without --force
    args = ["dataset", "scenes/texture.json", "--views", "2", "--out", str(out), "--width", "8", "--height", "8"]
    assert cli.main(args) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert cli.main(args + ["--force"]) == 0 and len(load_transforms(out / "transforms.json")) == 2


def test_cli_animate_times_writes_a_multi_view_sequence(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "seq"
    assert cli.main(["dataset", "scenes/texture.json", "--views", "8", "--animate-times", "4", "--out", str(out),
                     "--width", str(SIZE), "--height", str(SIZE)]) == 0
    times = [f.time for f in load_transforms(out / "transforms.json")]
    np.testing.assert_allclose(sorted(set(times)), [0.0, 1 / 3, 2 / 3, 1.0], atol=1e-6)
    assert all(times.count(t) == 2 for t in set(times))  # two cameras at each of the 4 times


def test_cli_subprocess_the_documented_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "dataset", "scenes/texture.json", "--views", "6",
                             "--test-views", "2", "--out", str(tmp_path / "tmp")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    frames = load_transforms(tmp_path / "tmp" / "transforms.json")
    assert len(frames) == 6 and read_image(frames[5].image_path).shape == (128, 128, 3)
    assert len(load_transforms(tmp_path / "tmp" / "transforms_test.json")) == 2


def test_cli_zero_views_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["dataset", str(TEXTURE), "--views", "0", "--out", str(tmp_path / "d")])
    assert exit_info.value.code == 2
    assert "argument --views: expected a positive integer, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--views", "3", "--test-views", "3"], "test_views: expected fewer than views (3)"),
    (["--animate-mesh", "nope"], "animate.mesh: no mesh named 'nope'; meshes: globe"),
    (["--views", "4", "--animate-times", "5"], "animate.times: expected an integer in [2, views = 4]"),
])
def test_cli_bad_options_exit_2(tmp_path, capsys, extra, message):
    assert cli.main(["dataset", str(TEXTURE), "--out", str(tmp_path / "d"), *extra]) == 2
    err = capsys.readouterr().err
    assert f"drstudio dataset: error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # nothing written


def test_cli_unwritable_out_exits_2_before_rendering(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli.main(["dataset", str(TEXTURE), "--views", "2", "--out", str(blocker / "d")]) == 2
    err = capsys.readouterr().err
    assert f"drstudio dataset: error: {blocker / 'd'}: cannot write the dataset there" in err
    assert cli.main(["dataset", str(TEXTURE), "--views", "2", "--out", str(blocker)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
