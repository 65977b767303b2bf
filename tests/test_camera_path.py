"""Camera paths and camera-path videos (app.camera_path): interpolation through the keyframes, orbits
that look at their center, path files and their errors, mp4 export (frame count and size read back by
imageio, no temporary file left, cancel writes nothing), and the frame renderers against the renderer."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from drstudio.app import camera_path as cp
from drstudio.renderer import conventions as cv


def _forward(pose) -> np.ndarray:
    return -cv.pose_to_matrix(pose)[:3, 2]


def test_slerp_endpoints_midpoint_and_shorter_arc():
    q0 = cv.quat_from_axis_angle([0, 1, 0], 0.0)
    q1 = cv.quat_from_axis_angle([0, 1, 0], 90.0)
    np.testing.assert_allclose(cp.slerp(q0, q1, 0.0), q0, atol=1e-12)
    np.testing.assert_allclose(cp.slerp(q0, q1, 1.0), q1, atol=1e-12)
    mid = cp.slerp(q0, q1, 0.5)
    np.testing.assert_allclose(cv.quat_to_matrix(mid), cv.quat_to_matrix(cv.quat_from_axis_angle([0, 1, 0], 45.0)),
                               atol=1e-9)
    # -q1 is the same rotation: still 45 degrees at the midpoint, not the long way round
    np.testing.assert_allclose(cv.quat_to_matrix(cp.slerp(q0, -q1, 0.5)), cv.quat_to_matrix(mid), atol=1e-9)


def test_interpolation_passes_through_the_keyframes():
    keys = [cp.Keyframe(cv.look_at(eye, [0, 0, 0]), fov) for eye, fov in
            (([0, 0, 4], 30.0), ([4, 1, 0], 40.0), ([0, 2, -4], 50.0))]
    frames = cp.interpolate(keys, 9)  # keyframes land on frames 0, 4, 8
    assert len(frames) == 9
    for i, k in zip((0, 4, 8), keys):
        np.testing.assert_allclose(frames[i].pose[:3], k.pose[:3], atol=1e-9)
        np.testing.assert_allclose(cv.quat_to_matrix(frames[i].pose[3:]), cv.quat_to_matrix(k.pose[3:]), atol=1e-9)
        assert frames[i].fov_y == pytest.approx(k.fov_y)
    assert frames[2].fov_y == pytest.approx(35.0)
    # Catmull-Rom: smooth, between the keyframes, not a straight chord through the origin
    mid = frames[2].pose[:3]
    assert 3.0 < np.linalg.norm(mid) < 5.0
    assert len(cp.interpolate(keys[:1], 5)) == 5
    with pytest.raises(cp.PathError, match="no keyframes"):
        cp.interpolate([], 3)


def test_orbit_keeps_its_distance_and_looks_at_the_center():
    center = np.array([0.5, -0.2, 0.3])
    frames = cp.orbit(center, 3.0, 12, elevation_deg=25.0, start_yaw_deg=10.0, fov_y=35.0)
    assert len(frames) == 12
    yaws = []
    for f in frames:
        eye = f.pose[:3]
        assert np.linalg.norm(eye - center) == pytest.approx(3.0)
        assert math.degrees(math.asin((eye[1] - center[1]) / 3.0)) == pytest.approx(25.0)
        np.testing.assert_allclose(_forward(f.pose), (center - eye) / 3.0, atol=1e-9)
        yaws.append(math.atan2(eye[0] - center[0], eye[2] - center[2]))
    steps = np.diff(np.unwrap(yaws))
    np.testing.assert_allclose(steps, 2 * math.pi / 12, atol=1e-9)  # one turn, even steps
    with pytest.raises(cp.PathError, match="distance"):
        cp.orbit(center, 0.0, 4)


def test_path_files_round_trip_and_errors_name_the_file(tmp_path):
    keys = cp.orbit([0, 0, 0], 2.0, 3, fov_y=33.0)
    f = cp.save_path(tmp_path / "p.json", keys)
    back = cp.load_path(f)
    for a, b in zip(keys, back):
        np.testing.assert_allclose(a.pose, b.pose, atol=1e-12)
        assert a.fov_y == b.fov_y
    eye_target = tmp_path / "et.json"
    eye_target.write_text(json.dumps({"fov_y": 30, "keyframes": [{"eye": [0, 0, 3], "target": [0, 0, 0]}]}))
    (k,) = cp.load_path(eye_target)
    assert k.fov_y == 30 and np.allclose(k.pose[:3], [0, 0, 3]) and np.allclose(_forward(k.pose), [0, 0, -1])
    cases = {"not json": "{", "no keyframes": {"keyframes": []}, "bad pose": {"keyframes": [{"pose": [0, 0, 1]}]},
             "zero quat": {"keyframes": [{"pose": [0, 0, 1, 0, 0, 0, 0]}]},
             "bad fov": {"keyframes": [{"pose": [0, 0, 1, 0, 0, 0, 1], "fov_y": 200}]},
             "neither": {"keyframes": [{"eye": [0, 0, 1]}]}}
    for name, content in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.json"
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(cp.PathError) as err:
            cp.load_path(bad)
        assert str(bad) in str(err.value), name
    with pytest.raises(cp.PathError, match="no such camera path"):
        cp.load_path(tmp_path / "missing.json")


def test_sizes():
    assert cp.parse_size("64x48") == (64, 48)
    for bad in ("64", "63x48", "64x0", "axb", "64x48x2"):
        with pytest.raises(cp.PathError, match="size"):
            cp.parse_size(bad)


def _gradient_render(pose, intrinsics, width, height, time=None):
    """A test render: a horizontal ramp whose brightness follows the camera's x position."""
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)
    img = np.broadcast_to(x[None, :, None], (height, width, 3)).copy()
    img[..., 1] = np.clip(0.5 + 0.1 * float(pose[0]), 0, 1)
    return img


def test_write_video_frames_size_and_no_temporary_file(tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "v.mp4"
    frames = cp.orbit([0, 0, 0], 3.0, 7)
    seen = []
    cp.write_video(out, frames, 64, 48, _gradient_render, fps=12, progress=lambda d, n: seen.append((d, n)))
    video = iio.imread(out)
    assert video.shape == (7, 48, 64, 3)
    assert seen[-1] == (7, 7)
    # the ramp survives encoding: dark on the left, bright on the right (sRGB)
    assert video[0, :, :4, 0].mean() < 60 and video[0, :, -4:, 0].mean() > 215
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_cancelled_or_failed_export_leaves_nothing(tmp_path):
    out = tmp_path / "c.mp4"
    cancel = threading.Event()

    def render(*args, **kw):
        cancel.set()  # cancelled after the first frame
        return _gradient_render(*args, **kw)

    with pytest.raises(InterruptedError):
        cp.write_video(out, cp.orbit([0, 0, 0], 3.0, 5), 32, 32, render, cancel=cancel)

    def broken(*args, **kw):
        raise RuntimeError("render failed")

    job = cp.VideoJob(tmp_path / "e.mp4", cp.orbit([0, 0, 0], 3.0, 3), 32, 32, broken)
    job.join(30)
    assert job.state == "error" and "render failed" in job.message
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(cp.PathError, match="mp4"):
        cp.write_video(tmp_path / "v.gif", [], 32, 32, broken)


def test_a_non_finite_frame_stops_the_video_and_leaves_nothing(tmp_path):
    """A render that overflowed float32 (issue 14) is reported, not encoded as garbage."""
    def overflowing(pose, intrinsics, width, height, time=None):
        img = _gradient_render(pose, intrinsics, width, height)
        img[2, 3] = np.inf if pose[0] > 0 else 0.5
        return img

    with pytest.raises(cp.PathError, match=r"frame \d+ has 1 non-finite pixel .*not written"):
        cp.write_video(tmp_path / "v.mp4", cp.orbit([0, 0, 0], 3.0, 6), 32, 32, overflowing)
    assert list(tmp_path.iterdir()) == []


def test_mesh_frames_match_the_renderer_through_a_scene_camera():
    """The path renderer with a pose/intrinsics override of a scene camera's own values gives that
    camera's render."""
    from drstudio.renderer.device_scene import DeviceScene
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.render import render

    scene = load_scene("scenes/light.json")
    name, c = next(iter(scene.cameras.items()))
    expected = render(DeviceScene(scene), name).numpy().reshape(c.height, c.width, 3)
    frames = cp.scene_frames(scene)
    got = frames.render(c.pose, c.intrinsics, c.width, c.height)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_field_frames_with_trained_values(tmp_path):
    """A field renders from a params.npz at another lattice than the scene's; band rendering equals one
    piece; a params file without the field's values is refused by name."""
    from drstudio.renderer.loading import load_scene
    from test_viewer_fields import write_field_scene

    scene = load_scene(write_field_scene(tmp_path))
    f = scene.fields["nerf"]
    res = 12
    ax = np.linspace(-1, 1, res)
    p = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1)
    density = np.where(np.linalg.norm(p, axis=-1) < 0.6, 8.0, -8.0).astype(np.float32)
    sh = np.zeros((res, res, res, 3), np.float32)
    sh[..., 0], sh[..., 1:] = 2.0, -2.0  # red after the sigmoid
    np.savez(tmp_path / "params.npz", **{"fields.nerf.density": density, "fields.nerf.sh": sh})
    frames = cp.scene_frames(scene, params_path=tmp_path / "params.npz")
    assert frames.state.grid.resolution == (res, res, res) != tuple(f.density.shape)
    pose, intr = cv.look_at([0, 0, 3], [0, 0, 0]), cv.fov_y_to_intrinsics(40, 32, 24)
    img = frames.render(pose, intr, 32, 24)
    assert img[12, 16, 0] > img[12, 16, 1] + 0.2 > 0.5  # the red ball in the middle (SH degree 0: Y0 sh)
    assert np.abs(img[0, 0] - np.asarray(scene.background)).max() < 0.02  # background in the corner
    np.testing.assert_allclose(cp.render_banded(frames.render, pose, intr, 32, 24, band_rays=32 * 5), img, atol=1e-5)
    np.savez(tmp_path / "other.npz", **{"lights.key.position": np.zeros(3, np.float32)})
    with pytest.raises(cp.PathError, match="other.npz: no values of field 'nerf'"):
        cp.scene_frames(scene, params_path=tmp_path / "other.npz")


def test_viewer_export_of_a_mesh_scene(tmp_path):
    """The Camera path window's export without the window: a one-turn orbit from the free camera of a
    mesh scene, rendered by the differentiable renderer in the export thread with the viewer's values."""
    import imageio.v3 as iio
    from drstudio.app.viewer.app import build
    from drstudio.app.viewer.camera_panel import orbit_here, settings, start_export

    state, engine = build("scenes/light.json")  # the engine thread is not started: nothing optimizes
    v = settings(state)
    v.frames, v.width, v.height, v.out = 4, 48, 32, str(tmp_path / "mesh.mp4")
    start_export(state)
    assert v.job is None and "no keyframes" in v.message  # no path yet: nothing exported
    orbit_here(state)
    start_export(state)
    assert v.job is not None, v.message
    v.job.join(60)
    assert v.job.state == "finished", v.job.message
    video = iio.imread(tmp_path / "mesh.mp4")
    assert video.shape == (4, 32, 48, 3) and video.std() > 5
    v.out = str(tmp_path / "missing" / "x.mp4")
    start_export(state)
    assert "does not exist" in v.message


def test_orbit_turns_about_the_scene_up_vector():
    """A +Z-up capture orbits about +Z, upright (issue 13: the orbit was about +Y, rolled and behind the
    wall); +Y up gives the same orbit as before up vectors existed."""
    from types import SimpleNamespace

    from drstudio.app import camera_path as cp
    from drstudio.renderer import conventions as cv

    center = np.array([0.5, -0.2, 0.3])
    for up in ((0, 0, 1), (0, 1, 0), (1, 1, 0)):
        u = np.asarray(up, float) / np.linalg.norm(up)
        path = cp.orbit(center, 2.0, 8, elevation_deg=30, up=up)
        for k in path:
            eye, rot = k.pose[:3], cv.quat_to_matrix(k.pose[3:])
            assert np.linalg.norm(eye - center) == pytest.approx(2.0)
            assert np.dot(eye - center, u) / 2.0 == pytest.approx(np.sin(np.radians(30)), abs=1e-9)
            np.testing.assert_allclose(rot @ [0, 0, -1], (center - eye) / 2.0, atol=1e-9)  # looks at the center
            assert np.dot(rot @ [0, 1, 0], u) > 0.8  # upright: the camera's up leans along the scene's up
    old_style = cp.orbit(center, 2.0, 4, elevation_deg=20)
    eye0 = center + 2.0 * np.array([0, np.sin(np.radians(20)), np.cos(np.radians(20))])
    np.testing.assert_allclose(old_style[0].pose[:3], eye0, atol=1e-9)
    cams = {n: SimpleNamespace(pose=cv.look_at(np.array(e, float), np.zeros(3), (0, 0, 1)))
            for n, e in (("a", (3, 0, 1)), ("b", (0, 3, 1)), ("c", (-3, -1, 1)))}
    np.testing.assert_allclose(cp.scene_up(SimpleNamespace(cameras=cams)), [0, 0, 1], atol=0.2)
