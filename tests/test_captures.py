"""`renderer.captures`: real captures (transforms.json, COLMAP binary and text models) read into calibrated
frames. Every dataset here is written by the test itself (json, COLMAP files packed with struct, small
PNG/JPEG images), so the expected poses, intrinsics and pixels are known exactly."""

from __future__ import annotations

import json
import struct
import warnings
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from drstudio.renderer import conventions as cv
from drstudio.renderer.captures import (
    COLMAP_MODELS,
    Capture,
    CaptureFrame,
    CaptureWarning,
    Distortion,
    colmap_intrinsics,
    default_split,
    export_transforms,
    field_box,
    focus_point,
    frustum_box,
    memory_estimate,
    normalize,
    read_capture,
    read_colmap,
    read_colmap_cameras,
    read_colmap_images,
    read_transforms,
    transform_box,
    transformed,
    undistort_image,
)
from drstudio.renderer.errors import SceneError
from drstudio.renderer.images import write_image_bytes
from drstudio.renderer.transforms_json import load_transforms, read_frame_mask

MODEL_IDS = {name: i for i, (name, _) in COLMAP_MODELS.items()}


# ---- writers (independent of the module) --------------------------------------------------------

def write_rgb(path: Path, srgb: np.ndarray) -> Path:
    """An (H, W, 3) sRGB image in [0, 1] as 8-bit (or a 16-bit gray PNG of its first channel when the
    name says .16.png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".16.png"):
        iio.imwrite(path, np.round(np.clip(srgb[..., 0], 0, 1) * 65535).astype(np.uint16))
    else:
        iio.imwrite(path, np.round(np.clip(srgb, 0, 1) * 255).astype(np.uint8))
    return path


def qvec_to_matrix(q) -> np.ndarray:
    """COLMAP's qvec (w, x, y, z) as a rotation matrix (the textbook formula)."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def expected_gl_pose(qvec, tvec) -> np.ndarray:
    """(4, 4) OpenGL camera-to-world of a COLMAP world-to-camera (qvec, tvec)."""
    r = qvec_to_matrix(qvec)
    c2w = np.eye(4)
    c2w[:3, :3] = r.T
    c2w[:3, 3] = -r.T @ np.asarray(tvec)
    return c2w @ np.diag([1.0, -1.0, -1.0, 1.0])


def write_colmap(folder: Path, cameras: list[tuple], images: list[tuple], binary: bool) -> Path:
    """cameras: (id, model name, width, height, params); images: (id, qvec, tvec, camera id, name)."""
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        data = struct.pack("<Q", len(cameras))
        for cid, model, w, h, params in cameras:
            data += struct.pack("<iiQQ", cid, MODEL_IDS[model], w, h) + struct.pack(f"<{len(params)}d", *params)
        (folder / "cameras.bin").write_bytes(data)
        data = struct.pack("<Q", len(images))
        for k, (iid, q, t, cid, name) in enumerate(images):
            data += struct.pack("<idddddddi", iid, *q, *t, cid) + name.encode() + b"\0"
            points = [(10.0 + k, 20.0, -1), (30.0, 40.0, 7)]  # 2-D points, skipped by the reader
            data += struct.pack("<Q", len(points)) + b"".join(struct.pack("<ddq", *p) for p in points)
        (folder / "images.bin").write_bytes(data)
    else:
        lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
        lines += [f"{cid} {model} {w} {h} " + " ".join(repr(float(p)) for p in params)
                  for cid, model, w, h, params in cameras]
        (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
        lines = ["# Image list with two lines of data per image:"]
        for k, (iid, q, t, cid, name) in enumerate(images):
            lines.append(f"{iid} " + " ".join(repr(float(v)) for v in (*q, *t)) + f" {cid} {name}")
            lines.append("" if k % 2 else "10.0 20.0 -1 30.0 40.0 7")  # empty points lines occur too
        (folder / "images.txt").write_text("\n".join(lines) + "\n")
    return folder


def look_at_matrix(eye, target=(0, 0, 0), up=(0, 1, 0)) -> np.ndarray:
    return cv.pose_to_matrix(cv.look_at(eye, target, up))


def write_transforms(folder: Path, frames: list[dict], images: dict[str, np.ndarray] | None = None,
                     **header) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in (images or {}).items():
        write_rgb(folder / name, img)
    doc = {**header, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(doc))
    return folder / "transforms.json"


def gray(h=6, w=8, value=0.5) -> np.ndarray:
    return np.full((h, w, 3), value)


def ring_frames(n: int, radius: float = 4.0, height: float = 0.0) -> list[dict]:
    out = []
    for i in range(n):
        a = 2 * np.pi * i / n
        m = look_at_matrix([radius * np.sin(a), height, radius * np.cos(a)])
        out.append({"file_path": f"images/f_{i:03d}.png", "transform_matrix": m.tolist()})
    return out


# ---- poses ---------------------------------------------------------------------------------------

def test_transforms_pose_of_a_camera_at_plus_z_looking_at_the_origin(tmp_path):
    # OpenGL: a camera at +Z looking at the origin has the identity rotation
    m = np.eye(4)
    m[:3, 3] = [0, 0, 4]
    x_side = look_at_matrix([3, 0, 0])
    path = write_transforms(tmp_path, [{"file_path": "images\\a.png", "transform_matrix": m.tolist()},
                                       {"file_path": "images/b", "transform_matrix": x_side.tolist()}],
                            {"images/a.png": gray(), "images/b.jpg": gray()}, fl_x=10, fl_y=11, cx=4, cy=3, w=8, h=6)
    cap = read_transforms(path)
    a, b = cap.frames
    np.testing.assert_allclose(a.pose, [0, 0, 4, 0, 0, 0, 1], atol=1e-12)
    assert b.image_path.name == "b.jpg"  # a file_path without extension finds the JPEG
    np.testing.assert_allclose(b.c2w(), x_side, atol=1e-12)
    np.testing.assert_allclose(b.c2w()[:3, 2], [1, 0, 0], atol=1e-12)  # looks down -Z: toward -X, the origin
    np.testing.assert_allclose(a.intrinsics, [10, 11, 4, 3])
    assert (a.width, a.height) == (8, 6) and a.distortion is None and cap.kind == "transforms"


def test_drstudio_datasets_read_as_load_transforms_reads_them(tmp_path):
    # the layout `drstudio dataset` writes: Blender-style paths without extension, header intrinsics
    frames = [dict(f, file_path=f"./images/r_{i:03d}", split="test" if i == 2 else "train")
              for i, f in enumerate(ring_frames(5, height=1.0))]
    images = {f"images/r_{i:03d}.png": gray() for i in range(5)}
    path = write_transforms(tmp_path, frames, images, camera_angle_x=0.8, fl_x=9.5, fl_y=9.5, cx=4, cy=3, w=8, h=6)
    old, cap = load_transforms(path), read_transforms(path)
    assert [f.image_path for f in old] == [f.image_path for f in cap.frames]
    for a, b in zip(old, cap.frames, strict=True):
        np.testing.assert_allclose(b.pose, a.pose, atol=1e-6)
        np.testing.assert_allclose(b.intrinsics, a.intrinsics)
        assert (a.width, a.height) == (b.width, b.height)
    assert cap.test == [2]


def test_transforms_camera_angle_and_per_frame_intrinsics(tmp_path):
    frames = ring_frames(2)
    frames[1].update({"fl_x": 20.0, "fl_y": 21.0, "cx": 3.5, "cy": 2.5, "w": 8, "h": 6})
    path = write_transforms(tmp_path, frames, {f["file_path"]: gray() for f in frames},
                            camera_angle_x=2 * np.arctan(0.5))
    a, b = read_transforms(path).frames
    np.testing.assert_allclose(a.intrinsics, [8.0, 8.0, 4.0, 3.0])  # w/h from the image, f = 0.5 w / tan(angle/2)
    np.testing.assert_allclose(b.intrinsics, [20, 21, 3.5, 2.5])


def colmap_scene(tmp_path: Path, binary: bool, cameras=None) -> Path:
    cameras = cameras or [(1, "PINHOLE", 8, 6, [10.0, 11.0, 4.0, 3.0])]
    rng = np.random.default_rng(5)
    images = [(1, [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 4.0], cameras[0][0], "a.png")]  # at +Z looking at the origin
    for k in range(2, 6):
        q = rng.normal(size=4)
        images.append((k, list(q / np.linalg.norm(q)), list(rng.normal(size=3)), cameras[(k - 1) % len(cameras)][0],
                       f"sub/i_{k}.png"))
    write_colmap(tmp_path / "sparse" / "0", cameras, images, binary)
    for *_, name in images:
        write_rgb(tmp_path / "images" / name, gray())
    return tmp_path


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_poses_are_opengl_camera_to_world(tmp_path, binary):
    project = colmap_scene(tmp_path, binary)
    cap = read_capture(project)
    assert cap.kind == "colmap" and [f.name for f in cap.frames] == ["a.png"] + [f"sub/i_{k}.png" for k in range(2, 6)]
    np.testing.assert_allclose(cap.frames[0].pose, [0, 0, 4, 0, 0, 0, 1], atol=1e-12)
    images = {1: ([0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 4.0])}
    source = (project / "sparse" / "0" / ("images.bin" if binary else "images.txt"))
    for im in read_colmap_images(source).values():
        images[im.id] = (im.qvec, im.tvec)
    for f in cap.frames:
        q, t = images[int(f.source.split()[1])]
        np.testing.assert_allclose(f.c2w(), expected_gl_pose(q, t), atol=1e-9)
    np.testing.assert_allclose(cap.frames[0].intrinsics, [10, 11, 4, 3])


def all_models() -> list[tuple]:
    return [(1, "SIMPLE_PINHOLE", 8, 6, [10.0, 4.0, 3.0]),
            (2, "PINHOLE", 8, 6, [10.0, 11.0, 4.0, 3.0]),
            (3, "SIMPLE_RADIAL", 8, 6, [10.0, 4.0, 3.0, -0.1]),
            (4, "RADIAL", 8, 6, [10.0, 4.0, 3.0, -0.1, 0.02]),
            (5, "OPENCV", 8, 6, [10.0, 11.0, 4.0, 3.0, -0.1, 0.02, 0.001, -0.002]),
            (6, "OPENCV_FISHEYE", 8, 6, [10.0, 11.0, 4.0, 3.0, 0.05, -0.01, 0.002, 0.0]),
            (7, "FULL_OPENCV", 8, 6, [10.0, 11.0, 4.0, 3.0, -0.1, 0.02, 0.001, -0.002, 0.003, 0.01, 0.0, 0.0])]


def test_colmap_binary_and_text_agree_for_every_model(tmp_path):
    caps = [read_colmap(colmap_scene(tmp_path / kind, kind == "bin", all_models())) for kind in ("bin", "txt")]
    cams = [read_colmap_cameras(tmp_path / kind / "sparse" / "0" / f"cameras.{kind}") for kind in ("bin", "txt")]
    assert {c.model for c in cams[0].values()} == {m[1] for m in all_models()}
    for cid in cams[0]:
        np.testing.assert_array_equal(cams[0][cid].params, cams[1][cid].params)
    for fb, ft in zip(*(c.frames for c in caps), strict=True):
        np.testing.assert_allclose(fb.pose, ft.pose, atol=1e-12)
        np.testing.assert_array_equal(fb.intrinsics, ft.intrinsics)
        assert fb.distortion == ft.distortion
    by_model = {m[1]: read_colmap_cameras(tmp_path / "bin/sparse/0/cameras.bin")[m[0]] for m in all_models()}
    k, d = colmap_intrinsics(by_model["SIMPLE_PINHOLE"])
    np.testing.assert_array_equal(k, [10, 10, 4, 3])
    assert d is None
    assert colmap_intrinsics(by_model["SIMPLE_RADIAL"])[1] == Distortion("opencv", (-0.1, 0, 0, 0))
    assert colmap_intrinsics(by_model["OPENCV"])[1] == Distortion("opencv", (-0.1, 0.02, 0, 0), (0.001, -0.002))
    assert colmap_intrinsics(by_model["OPENCV_FISHEYE"])[1] == Distortion("fisheye", (0.05, -0.01, 0.002, 0.0))
    assert colmap_intrinsics(by_model["FULL_OPENCV"])[1] == Distortion(
        "opencv", (-0.1, 0.02, 0.003, 0), (0.001, -0.002), (0.01, 0.0, 0.0))


def test_colmap_errors_name_the_file_and_the_record(tmp_path):
    project = colmap_scene(tmp_path, True)
    cams = project / "sparse" / "0" / "cameras.bin"
    cams.write_bytes(cams.read_bytes()[:-4])
    with pytest.raises(SceneError) as e:
        read_capture(project)
    assert e.value.file == str(cams) and e.value.field == "camera 1.params" and "ends early" in e.value.message
    other = colmap_scene(tmp_path / "fov", False, [(1, "FOV", 8, 6, [10.0, 10.0, 4.0, 3.0, 0.9])])
    with pytest.raises(SceneError, match="FOV is not supported") as e:
        read_capture(other)
    assert e.value.field == "camera 1.model"
    with pytest.raises(SceneError, match="expected a transforms.json"):
        read_capture(tmp_path / "nothing")


# ---- distortion ----------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [Distortion("opencv", (-0.25, 0.05, 0.0, 0.0), (0.002, -0.001)),
                               Distortion("opencv", (0.1, 0.01, 0.001, 0.0), (0.001, 0.002), (0.05, 0.0, 0.0)),
                               Distortion("fisheye", (0.1, -0.05, 0.01, 0.0))])
def test_newton_undistortion_inverts_the_distortion(d):
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-0.7, 0.7, 500), rng.uniform(-0.5, 0.5, 500)
    xu, yu = d.undistort(*d.distort(x, y))
    np.testing.assert_allclose(xu, x, atol=1e-12)
    np.testing.assert_allclose(yu, y, atol=1e-12)


W, H, K = 64, 48, np.array([50.0, 52.0, 31.0, 25.0])


def checker(x, y) -> np.ndarray:
    """A smooth checkerboard of normalized camera coordinates (period 0.5, ~25 px), sRGB values in [0.1, 0.9]."""
    v = 0.5 + 0.4 * np.tanh(2 * np.sin(2 * np.pi * x / 0.5) * np.sin(2 * np.pi * y / 0.5))
    return np.repeat(v[..., None], 3, axis=-1)


def distorted_checker(d: Distortion) -> np.ndarray:
    """What a camera with intrinsics K and distortion d sees of the checkerboard: each distorted pixel
    center is undistorted (Newton) and the pattern evaluated there."""
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    x, y = d.undistort((u - K[2]) / K[0], (v - K[3]) / K[1])
    return checker(x, y)


def pinhole_checker(shift: float = 0.0) -> np.ndarray:
    """The checkerboard seen by the pinhole camera K (pixel centers moved by `shift` pixels)."""
    u, v = np.meshgrid(np.arange(W) + 0.5 + shift, np.arange(H) + 0.5 + shift)
    return checker((u - K[2]) / K[0], (v - K[3]) / K[1])


LENSES = {  # source, model: (the file's parameters, the Distortion they mean)
    ("transforms", "OPENCV"): ({"k1": -0.25, "k2": 0.05, "p1": 0.002, "p2": -0.001},
                               Distortion("opencv", (-0.25, 0.05, 0, 0), (0.002, -0.001))),
    ("transforms", "OPENCV_FISHEYE"): ({"k1": 0.1, "k2": -0.05, "k3": 0.01},
                                       Distortion("fisheye", (0.1, -0.05, 0.01, 0))),
    ("colmap", "OPENCV"): ([*K, -0.25, 0.05, 0.002, -0.001],
                           Distortion("opencv", (-0.25, 0.05, 0, 0), (0.002, -0.001))),
    ("colmap", "FULL_OPENCV"): ([*K, -0.2, 0.05, 0.002, -0.001, 0.01, 0.05, 0.0, 0.0],
                                Distortion("opencv", (-0.2, 0.05, 0.01, 0), (0.002, -0.001), (0.05, 0, 0))),
    ("colmap", "OPENCV_FISHEYE"): ([*K, 0.1, -0.05, 0.01, 0.0], Distortion("fisheye", (0.1, -0.05, 0.01, 0))),
}


@pytest.mark.parametrize("source, model", list(LENSES))
def test_loading_undistorts_a_synthetic_checkerboard(tmp_path, source, model):
    params, d = LENSES[source, model]
    if source == "transforms":
        frame = {"file_path": "images/c.16.png", "transform_matrix": np.eye(4).tolist()}
        path = write_transforms(tmp_path, [frame], {"images/c.16.png": distorted_checker(d)}, camera_model=model,
                                fl_x=K[0], fl_y=K[1], cx=K[2], cy=K[3], w=W, h=H, **params)
        cap = read_transforms(path)
    else:
        write_colmap(tmp_path / "sparse" / "0", [(1, model, W, H, params)],
                     [(1, [1, 0, 0, 0], [0, 0, 0], 1, "c.16.png")], binary=True)
        write_rgb(tmp_path / "images" / "c.16.png", distorted_checker(d))
        cap = read_colmap(tmp_path)
    f = cap.frames[0]
    assert f.distortion == d
    np.testing.assert_array_equal(f.intrinsics, K)  # the pinhole image keeps fx, fy, cx, cy
    got, mask = cap.load(0), cap.valid_mask(0)  # linear RGB
    expected = cv.srgb_to_linear(pinhole_checker())
    err = np.abs(got - expected)[mask]
    raw = np.abs(cv.srgb_to_linear(distorted_checker(d)) - expected)[mask]
    half_pixel = np.abs(cv.srgb_to_linear(pinhole_checker(0.5)) - expected)[mask]
    # Bilinear interpolation error of this pattern is ~0.004 on average, ~0.02 at most (measured); a
    # convention slip of half a pixel would cost ~0.036 on average, and not undistorting ~0.07.
    assert mask.mean() > 0.9 and err.max() < 0.04 and err.mean() < 0.2 * half_pixel.mean(), (err.max(), err.mean())
    assert raw.mean() > 10 * err.mean()  # the distortion was there and has been removed


def test_undistort_image_marks_pixels_outside_the_file():
    d = Distortion("opencv", (0.3, 0.0, 0.0, 0.0))  # pincushion: the pinhole corners come from outside the file
    img, mask = undistort_image(np.ones((H, W, 3), np.float32), K, d)
    assert not mask[0, 0] and mask[H // 2, W // 2] and (img[~mask] == 0).all() and (img[mask] > 0.99).all()


# ---- downscale -----------------------------------------------------------------------------------

def test_downscale_resizes_on_load_with_an_area_filter(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, (6, 8, 3))
    frames = [{"file_path": "images/a.png", "transform_matrix": np.eye(4).tolist()}]
    path = write_transforms(tmp_path, frames, {"images/a.png": img}, fl_x=10, fl_y=12, cx=4, cy=3, w=8, h=6)
    full = read_transforms(path)
    half = read_transforms(path, downscale=2)
    f = half.frames[0]
    assert (f.width, f.height) == (4, 3) and f.image_path == full.frames[0].image_path
    np.testing.assert_allclose(f.intrinsics, [5, 6, 2, 1.5])
    linear = full.load(0)
    np.testing.assert_allclose(half.load(0), linear.reshape(3, 2, 4, 2, 3).mean(axis=(1, 3)), atol=1e-6)


def test_downscale_uses_images_n_when_present(tmp_path):
    frames = [{"file_path": "images/a.png", "transform_matrix": np.eye(4).tolist()}]
    path = write_transforms(tmp_path, frames, {"images/a.png": gray(value=0.5), "images_2/a.png": gray(3, 4, 0.2)},
                            fl_x=10, fl_y=12, cx=4, cy=3, w=8, h=6)
    f = read_transforms(path, downscale=2).frames[0]
    assert f.image_path == tmp_path / "images_2" / "a.png" and f.file_size is None
    np.testing.assert_allclose(f.intrinsics, [5, 6, 2, 1.5])
    cap = read_transforms(path, downscale=2)
    np.testing.assert_allclose(cap.load(0), cv.srgb_to_linear(np.round(0.2 * 255) / 255) * np.ones((3, 4, 3)),
                               atol=1e-6)


def test_colmap_downscale_uses_images_n_beside_the_images_folder(tmp_path):
    project = colmap_scene(tmp_path, True)
    write_rgb(project / "images_2" / "sub" / "i_2.png", gray(3, 4))
    cap = read_colmap(project, downscale=2)
    by_name = {f.name: f for f in cap.frames}
    assert by_name["sub/i_2.png"].image_path == project / "images_2" / "sub" / "i_2.png"
    assert by_name["a.png"].file_size == (8, 6)  # not in images_2: resized on load
    for f in cap.frames:
        np.testing.assert_allclose(f.intrinsics, [5, 5.5, 2, 1.5])
        assert cap.load(f).shape == (3, 4, 3)


# ---- missing frames and splits -------------------------------------------------------------------

def test_missing_images_are_skipped_with_one_warning_or_raise_when_strict(tmp_path):
    frames = ring_frames(12)
    present = {f["file_path"]: gray() for k, f in enumerate(frames) if k % 3 == 0}  # 4 of 12
    path = write_transforms(tmp_path, frames, present, fl_x=10, w=8, h=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cap = read_transforms(path)
    assert len(caught) == 1 and caught[0].category is CaptureWarning
    text = str(caught[0].message)
    assert "skipped 8 of 12" in text and "images/f_001.png" in text and "and 3 more" in text
    assert [f.index for f in cap.frames] == [0, 3, 6, 9]
    with pytest.raises(SceneError) as e:
        read_transforms(path, strict=True)
    assert e.value.file == str(path) and e.value.field == "frames[1].file_path" and "f_001.png" in e.value.message


def test_split_holds_out_every_eighth_frame_when_none_is_given(tmp_path):
    frames = ring_frames(17)[::-1]  # listed out of order: the split follows the sorted file names
    images = {f["file_path"]: gray() for f in frames if not f["file_path"].endswith("f_003.png")}
    path = write_transforms(tmp_path, frames, images, fl_x=10, w=8, h=6)
    with pytest.warns(CaptureWarning):
        cap = read_transforms(path)
    assert [cap.frames[i].index for i in cap.test] == [0, 8, 16]  # a missing frame does not shift the split
    assert [cap.frames[i].name for i in cap.test] == ["images/f_000.png", "images/f_008.png", "images/f_016.png"]
    assert default_split(9) == ["test"] + ["train"] * 7 + ["test"]
    with pytest.warns(CaptureWarning):
        assert read_transforms(path, test_every=None).test == []  # no automatic split


def test_explicit_splits_are_kept(tmp_path):
    frames = ring_frames(4)
    frames[2]["split"] = "val"
    path = write_transforms(tmp_path, frames, {f["file_path"]: gray() for f in frames}, fl_x=10, w=8, h=6)
    assert read_transforms(path).test == [2]
    for f in frames:
        f.pop("split", None)
    path = write_transforms(tmp_path, frames, None, fl_x=10, w=8, h=6, train_filenames=["images/f_000.png"],
                            test_filenames=["images/f_001.png", "./images/f_003.png"])
    assert read_transforms(path).test == [1, 3]


def test_colmap_split_and_text_model_with_an_images_argument(tmp_path):
    write_colmap(tmp_path / "model", [(1, "PINHOLE", 8, 6, [10.0, 10.0, 4.0, 3.0])],
                 [(k + 1, [1.0, 0, 0, 0], [0, 0, k], 1, f"{k:02d}.png") for k in range(10)], binary=False)
    for k in range(10):
        write_rgb(tmp_path / "photos" / f"{k:02d}.png", gray())
    cap = read_colmap(tmp_path / "model", images=tmp_path / "photos")
    assert [cap.frames[i].name for i in cap.test] == ["00.png", "08.png"]
    assert "10 frames (8 train, 2 test), 8x6, pinhole" in cap.describe()
    cams = cap.cameras(cap.test, prefix="test")
    assert list(cams) == ["test_000", "test_008"] and cams["test_008"].pose.dtype == np.float32
    np.testing.assert_allclose(cams["test_008"].pose[:3], [0, 0, -8])  # camera center -R^T t
    with pytest.warns(CaptureWarning), pytest.raises(SceneError, match="no frame has an image file in"):
        read_colmap(tmp_path / "model", images=tmp_path / "elsewhere")


# ---- normalization and the field box --------------------------------------------------------------

def random_rigid(rng) -> np.ndarray:
    q = rng.normal(size=4)
    m = cv.pose_to_matrix(np.r_[rng.normal(size=3) * 5, q / np.linalg.norm(q)])
    return m


def test_normalize_orients_up_to_plus_y_centers_and_fits_the_unit_box(tmp_path):
    rng = np.random.default_rng(7)
    world = random_rigid(rng)  # the file's world: tilted and moved
    frames = []
    for i in range(20):
        a, h = 2 * np.pi * i / 20, rng.uniform(0.2, 1.5)
        local = look_at_matrix([3 * np.cos(a), h, 3 * np.sin(a)], [0, 0.3, 0])
        frames.append({"file_path": f"images/f_{i:02d}.png", "transform_matrix": (world @ local).tolist()})
    path = write_transforms(tmp_path, frames, {f["file_path"]: gray() for f in frames}, fl_x=10, w=8, h=6,
                            aabb_scale=2)
    cap = read_transforms(path)
    np.testing.assert_allclose(cap.aabb, [[-1 / 0.33] * 3, [1 / 0.33] * 3])  # instant-ngp's unit cube x 2
    out = normalize(cap)
    pos = np.array([f.pose[:3] for f in out.frames])
    assert np.abs(pos).max() == pytest.approx(1.0) and (np.abs(pos) <= 1 + 1e-12).all()
    np.testing.assert_allclose(pos.mean(0), 0, atol=1e-12)
    up = np.mean([f.c2w()[:3, 1] for f in out.frames], axis=0)
    np.testing.assert_allclose(up / np.linalg.norm(up), [0, 1, 0], atol=1e-9)
    for before, after in zip(cap.frames, out.frames, strict=True):  # `transform` maps the file's points here
        np.testing.assert_allclose(out.transform @ np.r_[before.pose[:3], 1], np.r_[after.pose[:3], 1], atol=1e-9)
        assert cv.rigid_error(after.c2w()) < 1e-9
    np.testing.assert_allclose(out.aabb, transform_box(cap.aabb, out.transform))
    np.testing.assert_allclose(field_box(out), out.aabb)
    # the cameras' target point in the local frame is where their axes meet
    focus = focus_point(cap.frames)
    np.testing.assert_allclose(focus, (world @ [0, 0.3, 0, 1])[:3], atol=1e-9)
    centered = normalize(cap, center="focus")
    np.testing.assert_allclose(centered.transform @ np.r_[focus, 1], [0, 0, 0, 1], atol=1e-9)
    # a second capture of the same world (a separate test set) follows with the same transform
    same = transformed(read_transforms(path), out.transform)
    for a, b in zip(out.frames, same.frames, strict=True):
        np.testing.assert_allclose(b.pose, a.pose, atol=1e-12)
    with pytest.raises(ValueError, match="similarity"):
        transformed(cap, np.diag([1.0, 2.0, 1.0, 1.0]))
    box = read_transforms(write_transforms(tmp_path, frames, None, fl_x=10, w=8, h=6,
                                           aabb=[[-1, -2, 0], [3, 2, 2]], aabb_scale=2)).aabb
    np.testing.assert_allclose(box, [[-3, -4, -3], [5, 4, 5]])  # `aabb` fits the unit cube, then x 2


def test_frustum_box_is_the_region_most_cameras_see():
    frames = []
    for i in range(8):
        a = 2 * np.pi * i / 8
        m = look_at_matrix([np.sin(a), 0.0, np.cos(a)])
        frames.append(CaptureFrame(f"{i}", Path(f"{i}.png"), 32, 32, np.array([28.0, 28, 16, 16]),
                                   cv.matrix_to_pose(m)))
    box = frustum_box(frames, near=0.1, far=2.0)
    assert (box[0] < -0.1).all() and (box[1] > 0.1).all()  # holds the center the cameras look at
    assert (box[1] - box[0])[[0, 2]].max() < 2.0  # and lies inside the ring of cameras in x and z
    cap = Capture("x.json", "transforms", frames)
    np.testing.assert_allclose(field_box(cap, near=0.1, far=2.0), box)


# ---- bounded memory ------------------------------------------------------------------------------

def test_images_load_lazily_with_progress_and_memory_is_estimated(tmp_path):
    frames = ring_frames(5)
    path = write_transforms(tmp_path, frames, {f["file_path"]: gray() for f in frames}, fl_x=10, w=8, h=6)
    cap = read_transforms(path)
    calls = []
    it = cap.images(cap.train, progress=lambda done, total: calls.append((done, total)))
    frame, image = next(it)
    assert calls == [] and image.shape == (6, 8, 3) and image.dtype == np.float32  # nothing read ahead
    rest = list(it)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)] and len(rest) == 3
    assert memory_estimate(10, 100, 50) == 10 * 100 * 50 * 3 * 4
    assert cap.memory_bytes() == 5 * 8 * 6 * 3 * 4
    with pytest.raises(SceneError, match="needs .* GiB"):
        cap.check_memory(100)
    assert cap.check_memory(10**6) == cap.memory_bytes()


def test_transforms_errors_name_the_field(tmp_path):
    frames = ring_frames(1)
    images = {frames[0]["file_path"]: gray()}
    with pytest.raises(SceneError) as e:
        read_transforms(write_transforms(tmp_path, frames, images, fl_x=10, camera_model="EQUIRECTANGULAR"))
    assert e.value.field == "camera_model" and "OPENCV" in e.value.message
    frames[0]["transform_matrix"] = (np.diag([2.0, 1, 1, 1])).tolist()
    with pytest.raises(SceneError) as e:
        read_transforms(write_transforms(tmp_path, frames, images, fl_x=10))
    assert e.value.field == "frames[0].transform_matrix"
    with pytest.raises(SceneError) as e:
        read_transforms(write_transforms(tmp_path, ring_frames(1), images))
    assert e.value.field == "fl_x"
    with pytest.raises(SceneError, match="downscale"):
        read_transforms(tmp_path, downscale=0)


def test_export_writes_what_load_transforms_reads(tmp_path):
    d = Distortion("opencv", (-0.25, 0.05, 0, 0), (0.002, -0.001))
    frames = ring_frames(3, height=0.5)
    images = {f["file_path"].replace(".png", ".16.png"): distorted_checker(d) for f in frames}
    for f in frames:
        f["file_path"] = f["file_path"].replace(".png", ".16.png")
    path = write_transforms(tmp_path / "src", frames, images, camera_model="OPENCV", fl_x=K[0], fl_y=K[1], cx=K[2],
                            cy=K[3], w=W, h=H, k1=-0.25, k2=0.05, p1=0.002, p2=-0.001)
    cap = normalize(read_transforms(path, downscale=2))
    calls = []
    out = export_transforms(cap, tmp_path / "out", progress=lambda done, total: calls.append(done))
    assert calls == [1, 2, 3]
    frames_back = load_transforms(out)
    for a, b in zip(cap.frames, frames_back, strict=True):
        np.testing.assert_allclose(b.pose, a.pose, atol=1e-6)
        np.testing.assert_allclose(b.intrinsics, a.intrinsics, rtol=1e-6)
        assert (b.width, b.height) == (W // 2, H // 2)
    again = read_transforms(out)
    stored = cv.linear_to_srgb(again.load(1)) - cv.linear_to_srgb(cap.load(1))
    assert np.abs(stored).max() <= 0.5 / 255 + 1e-6  # the images, rounded to 8-bit sRGB
    doc = json.loads(out.read_text())
    np.testing.assert_allclose(doc["capture"]["transform"], cap.transform)
    assert doc["frames"][0]["split"] == "test" and doc["frames"][1]["source"] == "images/f_001.16.png"
    # barrel distortion: the photograph covers the whole pinhole image, so no frame needs a mask
    assert all(cap.valid_mask(a).all() for a in cap.frames)
    assert not any("mask_path" in f for f in doc["frames"]) and all(b.mask_path is None for b in frames_back)
    with pytest.raises(SceneError, match="already holds a dataset"):
        export_transforms(cap, tmp_path / "out")


def test_export_masks_what_the_photograph_does_not_cover(tmp_path):
    """Pincushion distortion: the undistorted image's corners lie outside the photograph (black): each frame gets a
    mask (nerfstudio's `mask_path`) that ignores exactly them."""
    d = Distortion("opencv", (0.3, 0.0, 0, 0), (0.0, 0.0))
    frames = ring_frames(2, height=0.5)
    path = write_transforms(tmp_path / "src", frames, {f["file_path"]: distorted_checker(d) for f in frames},
                            camera_model="OPENCV", fl_x=K[0], fl_y=K[1], cx=K[2], cy=K[3], w=W, h=H, k1=0.3)
    cap = read_transforms(path)
    out = export_transforms(cap, tmp_path / "out")
    doc, again = json.loads(out.read_text()), read_transforms(out)
    for i, (a, b) in enumerate(zip(cap.frames, load_transforms(out), strict=True)):
        assert doc["frames"][i]["mask_path"] == f"masks/frame_{i:05d}.png"
        seen = read_frame_mask(b.mask_path, b.width, b.height)
        np.testing.assert_array_equal(seen, cap.valid_mask(a))
        assert 0 < (~seen).sum() < seen.size // 4 and not seen[0, 0] and seen[H // 2, W // 2]
        assert np.all(again.load(i)[~seen] == 0)  # what the mask hides is the undistortion's black


def test_a_pinhole_capture_writes_no_masks(tmp_path):
    frames = ring_frames(2)
    path = write_transforms(tmp_path / "src", frames, {f["file_path"]: gray() for f in frames}, fl_x=8.0, w=8, h=6)
    out = export_transforms(read_transforms(path), tmp_path / "out")
    assert all("mask_path" not in f for f in json.loads(out.read_text())["frames"])
    assert not (tmp_path / "out" / "masks").exists()


def test_a_source_frames_mask_is_carried_into_the_export(tmp_path):
    """A nerfstudio capture's own `mask_path`: downscaled with its image (a pixel stays only when all of it is
    seen) and undistorted with it, combined with what the undistortion leaves uncovered."""
    d = Distortion("opencv", (-0.25, 0.05, 0, 0), (0.002, -0.001))
    frames = ring_frames(2, height=0.5)
    mask = np.full((H, W), 255, np.uint8)
    mask[:, W // 2:] = 0  # the right half ignored
    for f in frames:
        f["mask_path"] = "masks/" + Path(f["file_path"]).name
        write_image_bytes(tmp_path / "src" / f["mask_path"], mask)
    header = dict(camera_model="OPENCV", fl_x=K[0], fl_y=K[1], cx=K[2], cy=K[3], w=W, h=H, k1=-0.25, k2=0.05,
                  p1=0.002, p2=-0.001)
    path = write_transforms(tmp_path / "src", frames, {f["file_path"]: distorted_checker(d) for f in frames}, **header)
    cap = read_transforms(path, downscale=2)
    seen = cap.valid_mask(0)
    assert seen.shape == (H // 2, W // 2)
    assert not seen[:, W // 4 + 2:].any()  # the ignored half (the distortion moves its edge by a pixel or so)
    assert seen[H // 8:-H // 8, W // 16:W // 4 - 2].all()
    np.testing.assert_array_equal(seen & ~cap.valid_mask(replace(cap.frames[0], mask_path=None)), 0)
    out = export_transforms(cap, tmp_path / "out")
    got = load_transforms(out)[0]
    np.testing.assert_array_equal(read_frame_mask(got.mask_path, got.width, got.height), seen)
    frames[1]["mask_path"] = "masks/absent.png"
    path = write_transforms(tmp_path / "src", frames, **header)
    with pytest.raises(SceneError, match=r"frames\[1\]\.mask_path: mask image .*absent.png' not found"):
        read_transforms(path)


def test_mask_path_is_read_checked_and_downscaled(tmp_path):
    """nerfstudio's per-frame `mask_path` (nonzero: used, 0: ignored): read at the frame's size, reduced with
    the frame on `downscale` (a pixel is seen only when all of it is), and errors that name the field."""
    frames = ring_frames(2)
    for f in frames:
        f["mask_path"] = "masks/" + Path(f["file_path"]).name
    path = write_transforms(tmp_path / "src", frames, {f["file_path"]: gray(6, 8) for f in frames}, fl_x=8.0,
                            w=8, h=6)
    mask = np.full((6, 8), 255, np.uint8)
    mask[:, 0] = 0  # the first column ignored
    mask[0, 3] = 0  # and one pixel
    for f in frames:
        write_image_bytes(tmp_path / "src" / f["mask_path"], mask)
    got = load_transforms(path)
    np.testing.assert_array_equal(read_frame_mask(got[0].mask_path, 8, 6), mask > 0)
    half = load_transforms(path, downscale=2)[0]
    small = read_frame_mask(half.mask_path, half.width, half.height)
    assert small.shape == (3, 4)
    np.testing.assert_array_equal(small, [[False, False, True, True], [False, True, True, True],
                                          [False, True, True, True]])
    with pytest.raises(SceneError, match="mask is 8x6, expected the frame's size 5x5"):
        read_frame_mask(got[0].mask_path, 5, 5)
    frames[1]["mask_path"] = "masks/none.png"
    path = write_transforms(tmp_path / "src", frames, fl_x=8.0, w=8, h=6)
    with pytest.raises(SceneError, match=r"frames\[1\]\.mask_path: mask image .*none.png' not found"):
        load_transforms(path)
    frames[1]["mask_path"] = 3
    path = write_transforms(tmp_path / "src", frames, fl_x=8.0, w=8, h=6)
    with pytest.raises(SceneError, match=r"frames\[1\]\.mask_path: expected a mask image file name, got 3"):
        load_transforms(path)


# ---- against the renderer ------------------------------------------------------------------------

def test_a_colmap_camera_re_renders_its_image(tmp_path):
    """A camera written as COLMAP stores it (OpenCV world-to-camera, off-center principal point, a
    non-square image) and read back renders the image it was written with: the conventions of
    `renderer.conventions`, not just self-consistency."""
    from drstudio.renderer.device_scene import DeviceScene
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.render import render
    from drstudio.renderer.scene import Camera

    scene = load_scene(Path(__file__).resolve().parents[1] / "scenes" / "texture.json")
    w, h, k = 40, 28, np.array([30.0, 31.0, 17.0, 12.5])
    c2w_gl = look_at_matrix([1.2, 0.9, 2.6], [0.1, 0.05, 0.0])

    def draw(width, height, intrinsics, pose) -> np.ndarray:
        scene.cameras = {"c": Camera("c", width, height, np.asarray(intrinsics, np.float32),
                                     np.asarray(pose, np.float32))}
        return render(DeviceScene(scene, "cpu"), "c").numpy()

    image = draw(w, h, k, cv.matrix_to_pose(c2w_gl))
    write_rgb(tmp_path / "images" / "view.png", cv.linear_to_srgb(image))
    r_cv = c2w_gl[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes: x right, y down, z forward
    r_w2c, t_w2c = r_cv.T, -r_cv.T @ c2w_gl[:3, 3]
    qw = np.sqrt(max(0.0, 1 + np.trace(r_w2c))) / 2  # w-first quaternion (the rotation is far from 180 degrees)
    q = [qw, (r_w2c[2, 1] - r_w2c[1, 2]) / (4 * qw), (r_w2c[0, 2] - r_w2c[2, 0]) / (4 * qw),
         (r_w2c[1, 0] - r_w2c[0, 1]) / (4 * qw)]
    np.testing.assert_allclose(qvec_to_matrix(q), r_w2c, atol=1e-12)
    write_colmap(tmp_path / "sparse" / "0", [(1, "PINHOLE", w, h, list(k))], [(1, q, list(t_w2c), 1, "view.png")],
                 binary=True)
    cap = read_colmap(tmp_path)
    f = cap.frames[0]
    again = draw(f.width, f.height, f.intrinsics, f.pose)
    stored = cap.load(0)
    err = np.abs(cv.linear_to_srgb(again) - cv.linear_to_srgb(stored)).max()
    assert err <= 1 / 255 + 1e-6, err
    # the check has teeth: the image has structure, and a principal point flipped vertically misses it
    flipped = draw(f.width, f.height, [*f.intrinsics[:3], h - f.intrinsics[3]], f.pose)
    assert image.std() > 0.05 and np.abs(cv.linear_to_srgb(flipped) - cv.linear_to_srgb(stored)).max() > 0.1


# ---- the command line and load_transforms -----------------------------------------------------------

def test_load_transforms_skips_missing_frames_and_refuses_distortion(tmp_path):
    """Targets read a phone capture's transforms.json as users have it (issue 13): frames without an image
    are skipped with one warning (or refused with strict=True), and lens distortion is refused with the
    command that undistorts, never ignored."""
    from drstudio.renderer.transforms_json import load_transforms

    frames = ring_frames(10)
    for fr, split in zip(frames, ["train"] * 9 + ["test"]):
        fr["split"] = split
    images = {fr["file_path"]: gray() for i, fr in enumerate(frames) if i not in (2, 5, 6)}
    path = write_transforms(tmp_path / "cap", frames, images, fl_x=8.0, w=8, h=6)
    with pytest.warns(UserWarning, match=r"skipped 3 of 10 frames whose image is missing \(images/f_002.png"):
        got = load_transforms(path)
    assert len(got) == 7 and got[-1].split == "test"
    with pytest.raises(SceneError, match=r"frames\[2\]\.file_path: image .* not found"):
        load_transforms(path, strict=True)
    bent = write_transforms(tmp_path / "bent", ring_frames(2), {f"images/f_{i:03d}.png": gray() for i in range(2)},
                            fl_x=8.0, w=8, h=6, k1=-0.1)
    with pytest.raises(SceneError, match=r"k1: lens distortion \(k1=-0.1\) .*`drstudio capture .*json --out DIR"):
        load_transforms(bent)


def test_drstudio_capture_makes_a_dataset(tmp_path):
    """`drstudio capture` on a capture with missing frames and distortion: a dataset load_transforms reads,
    downscaled, undistorted, normalized (cameras inside the unit box), every 8th frame held out."""
    import subprocess
    import sys

    from drstudio.renderer.transforms_json import load_transforms

    frames = ring_frames(12, radius=6.0, height=1.0)
    images = {fr["file_path"]: gray(12, 16) for i, fr in enumerate(frames) if i != 4}
    path = write_transforms(tmp_path / "cap", frames, images, fl_x=14.0, fl_y=14.0, cx=8.0, cy=6.0, w=16, h=12,
                            k1=-0.05, p1=0.001, camera_model="OPENCV")
    out = tmp_path / "data"
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "capture", str(path), "--out", str(out),
                          "--downscale", "2"], capture_output=True, text=True, cwd=root, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "drstudio: warning: " in run.stderr and "skipped 1 of 12" in run.stderr and "Warning" not in run.stderr
    got = load_transforms(out / "transforms.json")
    assert len(got) == 11 and all((f.width, f.height) == (8, 6) for f in got)
    positions = np.array([f.pose[:3] for f in got])
    assert np.abs(positions).max() <= 1.0 + 1e-5
    assert sum(f.split == "test" for f in got) == 2  # frames 0 and 8 of the 11 kept
    again = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "capture", str(path), "--out", str(out)],
                           capture_output=True, text=True, cwd=root, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr


def test_drstudio_capture_writes_a_scene_that_trains(tmp_path):
    """Issue 13: a capture trains with one more command and no hand edits: `drstudio capture` writes
    scene.json beside the dataset (the field over the capture's box, the held-out split, a preview camera
    at the first held-out frame), and `drstudio optimize` runs it; a second capture into the folder is
    refused before anything is written, --force replaces both files."""
    import subprocess
    import sys

    from drstudio.renderer.loading import load_scene

    frames = ring_frames(9, radius=6.0, height=1.0)
    images = {fr["file_path"]: gray(12, 16) for fr in frames}
    path = write_transforms(tmp_path / "cap", frames, images, fl_x=14.0, w=16, h=12)
    out = tmp_path / "data"
    root = Path(__file__).resolve().parents[1]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "drstudio.app.cli", *args], capture_output=True, text=True,
                              cwd=root, timeout=300)

    run = cli("capture", str(path), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert f"drstudio optimize {out / 'scene.json'}" in run.stdout
    scene = load_scene(out / "scene.json")
    written = json.loads((out / "transforms.json").read_text())
    from drstudio.renderer.captures import CAPTURE_GRADIENT_SCALING, CAPTURE_INNER_SCALE, CAPTURE_OCCUPANCY_ALPHA

    box = np.ravel(written["capture"]["aabb"])  # scaled about its centre: the contracted lattice's inner box
    center, half = (box[:3] + box[3:]) / 2, (box[3:] - box[:3]) / 2 * CAPTURE_INNER_SCALE
    assert scene.fields["nerf"].contract
    np.testing.assert_allclose(scene.fields["nerf"].aabb, np.r_[center - 2 * half, center + 2 * half], rtol=1e-5,
                               atol=1e-6)
    # the settings in the box's units: the occupancy threshold a density whose stratum (half the strata inside the
    # inner box) has opacity CAPTURE_OCCUPANCY_ALPHA, Floaters No More's distance a fraction of the inner box's edge
    field = json.loads((out / "scene.json").read_text())["fields"][0]
    edge = float(np.mean(2 * half))
    assert field["occupancy"]["threshold"] == pytest.approx(
        CAPTURE_OCCUPANCY_ALPHA * field["samples_per_ray"] / 2 / edge, rel=1e-3)
    assert scene.fields["nerf"].gradient_scaling == pytest.approx(CAPTURE_GRADIENT_SCALING * edge, rel=1e-3)
    test = [fr for fr in written["frames"] if fr["split"] == "test"]
    assert len(test) == 2  # frames 0 and 8
    preview = scene.cameras["preview"]
    np.testing.assert_allclose(preview.intrinsics, [test[0][k] for k in ("fl_x", "fl_y", "cx", "cy")], rtol=1e-6)
    assert (preview.width, preview.height) == (test[0]["w"], test[0]["h"])
    before = (out / "scene.json").read_bytes(), sorted(p.name for p in out.rglob("*"))
    again = cli("capture", str(path), "--out", str(out), "--downscale", "2")
    assert again.returncode == 2 and "scene.json: exists" in again.stderr and "Traceback" not in again.stderr
    assert ((out / "scene.json").read_bytes(), sorted(p.name for p in out.rglob("*"))) == before
    trained = cli("optimize", str(out / "scene.json"), "--steps", "2", "--out", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and "psnr_test_db" in metrics
    forced = cli("capture", str(path), "--out", str(out), "--downscale", "2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_scene(out / "scene.json").cameras["preview"].width == 8


def test_drstudio_optimize_trains_a_capture_in_one_command(tmp_path):
    """`drstudio optimize CAPTURE --downscale N`: a capture with distortion and a missing frame (a transforms.json,
    or the folder holding it) becomes <out>/dataset (what `drstudio capture` writes, masks included) and trains;
    with --nproc it says to make the dataset first."""
    import subprocess
    import sys

    d = Distortion("opencv", (0.3, 0.0, 0, 0), (0.0, 0.0))
    frames = ring_frames(9, radius=6.0, height=1.0)
    images = {fr["file_path"]: distorted_checker(d) for i, fr in enumerate(frames) if i != 3}
    path = write_transforms(tmp_path / "cap", frames, images, camera_model="OPENCV", fl_x=K[0], fl_y=K[1], cx=K[2],
                            cy=K[3], w=W, h=H, k1=0.3)
    root = Path(__file__).resolve().parents[1]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "drstudio.app.cli", *args], capture_output=True, text=True,
                              cwd=root, timeout=300)

    for source, run_dir in ((path, tmp_path / "run"), (path.parent, tmp_path / "run_folder")):
        run = cli("optimize", str(source), "--downscale", "2", "--steps", "2", "--out", str(run_dir))
        assert run.returncode == 0, run.stderr
        assert "skipped 1 of 9" in run.stderr and "8 frames, 8 with a mask" in run.stdout
        assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2
        dataset = load_transforms(run_dir / "dataset" / "transforms.json")
        assert len(dataset) == 8 and (dataset[0].width, dataset[0].height) == (W // 2, H // 2)
        assert all(f.mask_path is not None for f in dataset)
    refused = cli("optimize", str(path), "--nproc", "2", "--out", str(tmp_path / "run2"))
    assert refused.returncode == 2 and "make its dataset first" in refused.stderr and "Traceback" not in refused.stderr


def test_a_field_box_from_the_dataset(tmp_path):
    """`"aabb": "auto"` (issue 13: no guessing the field's box): the box `drstudio capture` wrote into the
    dataset, else the frustum box of its cameras; without a transforms target, an error naming the field."""
    import subprocess
    import sys

    from drstudio.renderer.loading import load_scene

    frames = ring_frames(8, radius=6.0, height=1.0)
    images = {fr["file_path"]: gray(12, 16) for fr in frames}
    path = write_transforms(tmp_path / "cap", frames, images, fl_x=14.0, w=16, h=12)
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "capture", str(path), "--out",
                          str(tmp_path / "data")], capture_output=True, text=True, cwd=root, timeout=300)
    assert run.returncode == 0, run.stderr
    written = json.loads((tmp_path / "data" / "transforms.json").read_text())["capture"]["aabb"]
    scene = {"version": 1, "background": [0, 0, 0],
             "cameras": [{"name": "preview", "width": 8, "height": 8, "fov_y": 40,
                          "look_at": {"eye": [0, 0, 3], "target": [0, 0, 0]}}],
             "fields": [{"name": "f", "type": "voxel_grid", "resolution": 8, "aabb": "auto", "sh_degree": 0,
                         "samples_per_ray": 8}],
             "optimize": {"parameters": {"fields.f.density": {}}, "targets": {"transforms": "data/transforms.json"},
                          "steps": 2}}
    (tmp_path / "s.json").write_text(json.dumps(scene))
    np.testing.assert_allclose(load_scene(tmp_path / "s.json").fields["f"].aabb, np.ravel(written), rtol=1e-6)
    raw = json.loads((tmp_path / "data" / "transforms.json").read_text())
    del raw["capture"]
    (tmp_path / "data" / "transforms.json").write_text(json.dumps(raw))
    box = load_scene(tmp_path / "s.json").fields["f"].aabb.reshape(2, 3)
    assert (box[1] > box[0]).all() and (box[0] <= 0).all() and (box[1] >= 0).all()  # around the ring's centre
    scene["optimize"]["targets"] = {"cameras": ["preview"]}
    (tmp_path / "s.json").write_text(json.dumps(scene))
    with pytest.raises(SceneError, match=r"fields\[0\]\.aabb"):
        load_scene(tmp_path / "s.json")
