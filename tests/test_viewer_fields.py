"""The viewer on a radiance-field scene (app/viewer/field_preview.py, field_layer.py, camera_panel.py):
a real window on the test Xvfb, real X input through xdotool, pixels read back.

`test_field_session` trains a tiny voxel-grid field (6 views of 32x32, a 16^3 grid) while the viewport
shows the field preview, rendered in its own thread from the free camera: the viewport shows the
field where the preview image has it (pixels equal to the sRGB preview image, the ball where it is);
the held-out PSNR plot appears once the engine publishes `psnr_test_db`; the preview drops its
resolution while the camera is orbited (xdotool drag) and refines to full resolution when the camera
stops; the occupancy overlay changes the viewport's pixels when toggled on and restores them when toggled
off; there is no time slider (a static field); the Camera path window's Orbit + Export buttons write an
mp4 with the requested frames and size and no temporary file.

`test_time_slider_for_dynamic_fields`: a dynamic field (on a tiny animated dataset) gets the time slider;
Play advances the time and the preview renders at it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from test_viewer import XDOTOOL, Session, changed, crop

SESSION_TIMEOUT = 180.0  # s, a bound on a hang, not a speed test


def write_field_scene(folder: Path, views: int = 6, size: int = 32, res: int = 16, eval_every: int = 5) -> Path:
    """An orange ball seen by `views` training cameras and 2 held-out ones around it (32x32), a 16^3
    voxel-grid field with an occupancy grid to learn it, 32 samples per ray, PSNR every 5 steps."""
    cams = []
    for i in range(views + 2):
        a = 2 * math.pi * i / (views + 2)
        el = 0.35 * math.sin(3 * a)
        eye = [3.2 * math.cos(el) * math.sin(a), 3.2 * math.sin(el), 3.2 * math.cos(el) * math.cos(a)]
        cams.append({"name": f"c{i}", "width": size, "height": size, "fov_y": 40,
                     "look_at": {"eye": eye, "target": [0, 0, 0]}})
    scene = {
        "version": 1,
        "meshes": [{"name": "ball", "primitive": {"type": "sphere", "radius": 0.7, "resolution": 24},
                    "material": "paint"}],
        "materials": [{"name": "paint", "model": "lambert", "albedo": [0.9, 0.5, 0.2]}],
        "lights": [{"name": "sun", "type": "directional", "direction": [-0.4, -0.6, -0.7], "intensity": 2.5},
                   {"name": "sky", "type": "ambient", "color": [0.3, 0.3, 0.3]}],
        "cameras": cams,
        "background": [0.05, 0.05, 0.05],
        "render": {"mode": "antialias", "shadows": False, "mipmaps": False},
        "fields": [{"name": "nerf", "type": "voxel_grid", "resolution": res, "aabb": [[-1, -1, -1], [1, 1, 1]],
                    "sh_degree": 0, "storage": "float32", "samples_per_ray": 32,
                    "occupancy": {"resolution": res, "update_every": 4, "threshold": 0.01}}],
        "optimize": {
            "parameters": {"fields.nerf.density": {"lr": 0.5}, "fields.nerf.sh": {"lr": 0.2}},
            "targets": {"cameras": [c["name"] for c in cams[:views]],
                        "test_cameras": [c["name"] for c in cams[views:]]},
            "loss": {"l2": 1.0}, "optimizer": {"type": "adam", "lr": 0.1}, "steps": 100000,
            "rays_per_batch": 1024, "eval_every": eval_every, "seed": 0,
        },
    }
    path = folder / "field.json"
    path.write_text(json.dumps(scene))
    return path


def _need_xdotool():
    import os

    if XDOTOOL is None:
        message = "the viewer tests drive the window with xdotool: apt-get install xdotool"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


class Script(Session):
    """test_viewer's scripted session with its body passed in (`body(script, state)`, a generator) and a time
    limit; the instance itself is the viewer's on_frame hook."""

    def __init__(self, display, evidence: Path, body):
        super().__init__(display, evidence)
        self.body = body
        self.t0 = time.monotonic()

    def run(self, state):
        return self.body(self, state)

    def __call__(self, state) -> None:
        if time.monotonic() - self.t0 > SESSION_TIMEOUT and not self.done:
            self.error = self.error or AssertionError(f"session exceeded {SESSION_TIMEOUT} s")
            state.quit = True
            return
        self.step(state)

    def until(self, state, predicate, what: str, timeout: float = 30.0):
        yield from super().until(state, predicate, what, timeout)

    def waiting_detail(self, state) -> str:
        pv = state.preview
        return f"; preview {pv.latest and pv.latest.scale} {pv.error}" if pv is not None else ""


def _viewport_rect(state):
    x, y, w, h = state.viewport_rect
    return int(x), int(y), int(w), int(h)


def _field_session(s: Script, state):
    from drstudio.renderer import conventions as cv

    pv = state.preview
    assert pv is not None, "a scene with fields gets a field preview"
    assert "field.time" not in state.rects  # static field: no time slider
    state.gizmo.show_current = state.gizmo.show_targets = False  # no camera frustums over the field
    yield from s.frames(2)
    state.send("start")
    yield from s.until(state, lambda: state.snapshot.step >= 60, "60 training steps", timeout=90)
    state.send("pause")
    yield from s.until(state, lambda: state.snapshot.state == "paused", "pause")

    # The viewport shows the field: with the camera still, a full-resolution preview of the paused
    # values; the viewport's pixels are that image, sRGB-encoded; the ball is where the field is.
    def settled():
        f, req = pv.latest, pv._request
        return (f is not None and f.scale == 1.0 and req is not None and f.key == req.key()
                and f.values_key[0] == state.snapshot.step and state.gl.viewport.field.frame is f)

    yield from s.until(state, settled, "a full-resolution preview of the paused field")
    yield from s.frames(3)
    img = s.screen(state, "01_field")
    frame = state.gl.viewport.field.frame
    vx, vy, vw, vh = _viewport_rect(state)
    shown = img[vy:vy + vh, vx:vx + vw].astype(np.int16)
    expected = np.round(cv.linear_to_srgb(frame.image) * 255).astype(np.int16)
    assert expected.shape == shown.shape, (expected.shape, shown.shape)
    body = slice(vh // 5, vh), slice(0, vw)  # below the toolbar text
    close = (np.abs(shown[body] - expected[body]).max(axis=-1) <= 3).mean()
    s.results["preview_pixels_equal"] = round(float(close), 3)
    assert close > 0.9, f"only {close:.2f} of the viewport pixels show the preview image"
    cx, cy = state.project([[0.0, 0.0, 0.0]])[0]
    ball = img[int(cy) - 3:int(cy) + 4, int(cx) - 3:int(cx) + 4].reshape(-1, 3).mean(axis=0)
    corner = img[vy + vh - 6, vx + 6].astype(float)
    assert ball[0] > ball[2] + 60 and ball[0] > corner[0] + 80, f"no orange field at the center: {ball} vs {corner}"
    assert not state.field_view.show_meshes  # what is shown is the field, not the target's mesh

    # Held-out PSNR: its own plot once the engine published it (and not on the loss plot).
    psnr = state.snapshot.loss_terms.get("psnr_test_db")
    assert psnr is not None and np.isfinite(psnr) and psnr > 15.0, psnr
    assert "plot.psnr" in state.rects and "readout.psnr" in state.rects
    px, py, pw, ph = (int(v) for v in state.rects["plot.psnr"])
    assert pw > 100 and ph > 50 and img[py:py + ph, px:px + pw].std() > 10, "the PSNR plot is not drawn"
    from drstudio.app.viewer.panels import loss_series, psnr_series

    assert not any(k.endswith("_db") for k in loss_series(state.snapshot.history))
    xs, ys = psnr_series(state.snapshot.history)
    assert len(ys) >= 2 and ys[-1] == pytest.approx(psnr)
    s.results["psnr_db"] = round(float(psnr), 2)

    # Orbit: while the left button drags, the preview renders below full resolution; when the camera
    # stops it refines to full resolution of the new view.
    yaw0 = state.camera.yaw
    ox, oy = state.window_pos
    start = (vx + vw * 0.3, vy + vh * 0.7)
    s.input.move(ox + start[0], oy + start[1])
    yield from s.frames(2)
    s.input("mousedown", 1)
    scales = []
    for i in range(1, 25):
        s.input.move(ox + start[0] + 6 * i, oy + start[1] - (i % 3))
        for _ in range(3):
            yield
            if state.gl.viewport.moving and pv.latest is not None and pv.latest.key != frame.key:
                scales.append(pv.latest.scale)
    s.input("mouseup", 1)
    assert state.camera.yaw != yaw0, "the drag did not orbit"
    assert scales and min(scales) < 1.0, f"no reduced-resolution preview while orbiting: {scales}"
    s.results["scales_while_orbiting"] = sorted(set(scales))
    yield from s.until(state, settled, "the preview to refine to full resolution after the orbit")
    s.screen(state, "02_after_orbit")
    assert pv.latest.width == vw and pv.latest.height == vh

    # Occupancy overlay: toggling it draws points (pixels change); toggling it off restores them.
    yield from s.frames(3)
    before = s.screen(state)
    yield from s.click(state, "field.occupancy")
    assert state.field_view.occupancy
    yield from s.until(state, lambda: state.gl.viewport.field.n_points > 0, "occupancy points")
    yield from s.frames(3)
    on = s.screen(state, "03_occupancy")
    vrect = (vx, vy + vh // 5, vw, vh - vh // 5)
    moved = changed(crop(before, vrect), crop(on, vrect))
    s.results["occupancy_changed"] = round(moved, 3)
    assert moved > 0.01, f"the occupancy overlay changed only {moved:.4f} of the viewport"
    occ = pv.occupancy
    assert 0 < occ.occupied <= occ.cells and occ.step == state.snapshot.step
    yield from s.click(state, "field.occupancy")
    yield from s.frames(4)
    off = s.screen(state)
    assert changed(crop(before, vrect), crop(off, vrect)) < 0.002, "the occupancy overlay did not go away"

    # Camera path: one-click orbit, then export a 6-frame 64x48 mp4 from the viewer.
    from drstudio.app.viewer.camera_panel import settings

    v = settings(state)
    v.frames, v.width, v.height, v.out = 6, 64, 48, str(s.evidence / "video" / "orbit.mp4")
    (s.evidence / "video").mkdir()
    state.focus_window = "Camera path"
    yield from s.frames(3)
    yield from s.click(state, "path.orbit")
    assert v.orbit
    yield from s.click(state, "path.export")
    assert v.job is not None, v.message
    yield from s.until(state, lambda: not v.job.running, "the video export", timeout=40)
    assert v.job.state == "finished", v.job.message
    yield from s.frames(2)
    s.screen(state, "04_exported")
    s.results["video_seconds"] = round(v.job.seconds, 2)


def test_field_session(display, tmp_path):
    _need_xdotool()
    from drstudio.app.viewer import run_viewer

    scene = write_field_scene(tmp_path)
    script = Script(display, tmp_path, _field_session)
    rc = run_viewer(str(scene), max_frames=100000, on_frame=script)
    if script.error is not None:
        raise AssertionError(f"{script.error}\n(screenshots in {tmp_path})") from script.error
    assert script.done and rc == 0
    import imageio.v3 as iio

    video = iio.imread(tmp_path / "video" / "orbit.mp4")
    assert video.shape == (6, 48, 64, 3)
    assert sorted(p.name for p in (tmp_path / "video").iterdir()) == ["orbit.mp4"]  # no temporary file left
    assert video[:, 20:28, 28:36, 0].mean() > video[:, :4, :4, 0].mean() + 60  # the field in the middle
    print("field session:", script.results)


def write_dynamic_scene(folder: Path) -> Path:
    """A dynamic (time-conditioned) voxel-grid field on a tiny animated dataset of the globe (10 views of
    16x16 over times in [0, 1], 2 held out)."""
    from drstudio.renderer.datasets import Animation, DatasetOptions, generate_dataset
    from drstudio.renderer.loading import load_scene

    globe = load_scene(Path(__file__).resolve().parents[1] / "scenes" / "texture.json")
    generate_dataset(globe, folder / "anim", DatasetOptions(views=10, test_views=2, width=16, height=16,
                                                            animate=Animation()), device="cpu")
    box = [[-1.05, -1.05, -1.05], [1.05, 1.05, 1.05]]
    doc = {"version": 1,
           "cameras": [{"name": "preview", "width": 16, "height": 16, "fov_y": 40,
                        "look_at": {"eye": [0, 0.8, 3.5], "target": [0, 0, 0]}}],
           "background": [0.05, 0.05, 0.05],
           "fields": [{"name": "nerf", "type": "dynamic", "resolution": 12, "n_times": 3, "aabb": box,
                       "samples_per_ray": 24, "occupancy": {"resolution": 12, "update_every": 8},
                       "frames_per_batch": 2}],
           "optimize": {"parameters": {"fields.nerf.density": {"lr": 0.5}, "fields.nerf.sh": {"lr": 0.2}},
                        "targets": {"transforms": "anim/transforms.json"}, "loss": {"l2": 1.0, "tv": 1e-5},
                        "optimizer": {"type": "adam", "lr": 0.01}, "steps": 100000, "rays_per_batch": 256,
                        "eval_every": 10}}
    path = folder / "dynamic.json"
    path.write_text(json.dumps(doc))
    return path


def _time_session(s: Script, state):
    pv = state.preview
    assert pv.time_range_value == (0.0, 1.0)
    yield from s.until(state, lambda: "field.time" in state.rects, "the time slider")
    assert state.field_view.time == 0.0
    state.send("start")
    yield from s.until(state, lambda: pv.latest is not None and pv.latest.key[-1] == 0.0, "a preview at time 0")
    yield from s.click(state, "field.play")
    assert state.field_view.playing
    yield from s.until(state, lambda: state.field_view.time > 0.2, "time to advance while playing")
    yield from s.until(state, lambda: pv.latest.key[-1] is not None and pv.latest.key[-1] > 0.1,
                       "a preview rendered at a later time")
    yield from s.click(state, "field.play")
    assert not state.field_view.playing
    s.screen(state, "time_slider")


def test_time_slider_for_dynamic_fields(display, tmp_path):
    _need_xdotool()
    from drstudio.app.viewer import run_viewer

    script = Script(display, tmp_path, _time_session)
    rc = run_viewer(str(write_dynamic_scene(tmp_path)), max_frames=100000, on_frame=script)
    if script.error is not None:
        raise AssertionError(f"{script.error}\n(screenshots in {tmp_path})") from script.error
    assert script.done and rc == 0


# -- the preview thread's decisions, without a window (its _tick driven by hand) ------------------------

class _FakeSource:
    def __init__(self):
        self.calls = []
        self.hook = None

    def time_range(self):
        return None

    def occupancy(self):
        mask = np.zeros((4, 4, 4), bool)
        mask[1:3, 1:3, 1:3] = True
        return mask, np.array([-1, -1, -1, 1, 1, 1], np.float32)

    def render(self, pose, intrinsics, width, height, *, time=None):
        self.calls.append((width, height, float(intrinsics[3])))
        if self.hook:
            self.hook()
        return np.full((height, width, 3), 0.5, np.float32)


class _FakeEngine:
    def __init__(self):
        self.step = 0
        self.state = "paused"

    def snapshot(self):
        from types import SimpleNamespace

        return SimpleNamespace(step=self.step, commands_applied=0, targets_version=0, state=self.state)


def _preview():
    from drstudio.app.viewer.field_preview import FieldPreview, PreviewSettings

    src, eng = _FakeSource(), _FakeEngine()
    return FieldPreview(src, eng, PreviewSettings(still_after=0.0, refresh_min=0.0, refresh_factor=0.0)), src, eng


def test_preview_resolution_steps():
    from drstudio.app.viewer.field_preview import PreviewRequest

    pv, src, eng = _preview()
    pose = np.array([0, 0, 3, 0, 0, 0, 1], np.float64)
    pv.request(PreviewRequest(pose, 40.0, 320, 200, moving=True))
    pv._tick()
    assert pv.latest.scale == 1 / 8 and (pv.latest.width, pv.latest.height) == (40, 25)  # nothing measured: 1/8
    pv.ms_by_scale = {1 / 8: 200.0, 1 / 16: 20.0}
    assert pv.moving_scale(320 * 200) == 1 / 16  # 1/8 is over the 60 ms budget
    pv.ms_by_scale = {1 / 4: 40.0}
    assert pv.estimate_ms(1 / 2, 0) == pytest.approx(160.0) and pv.moving_scale(0) == 1 / 4
    pv.ms_by_scale = {1 / 16: 1.0, 1 / 2: 30.0, 1.0: 1000.0}
    # the camera stops: a new view still gets a quick frame first, then refines through 1/2 to full
    pv.request(PreviewRequest(pose + 0.1, 40.0, 320, 200, moving=False))
    pv._tick()
    assert pv.latest.scale == 1 / 2  # the largest step within the budget
    pv._tick()
    assert pv.latest.scale == 1.0 and (pv.latest.width, pv.latest.height) == (320, 200)
    n = pv.renders
    pv._tick()
    assert pv.renders == n  # up to date: nothing rendered
    eng.step = 5  # a step while paused: re-rendered at full resolution
    pv._tick()
    assert pv.renders == n + 1 and pv.latest.values_key[0] == 5 and pv.latest.scale == 1.0
    eng.state, eng.step = "running", 6  # training: periodic re-renders within the training budget (1 s)
    pv.ms_by_scale = {1 / 16: 1.0, 1 / 2: 30.0, 1.0: 3000.0}
    pv._tick()
    assert pv.latest.values_key[0] == 6 and pv.latest.scale == 1 / 2
    pv.settings.training_budget_ms = 5000.0
    eng.step = 7
    src.calls.clear()
    pv._tick()
    assert pv.latest.scale == 1.0
    eng.state = "paused"
    # bands: each band's principal point moves up by its first row, the image is stitched whole
    from drstudio.app.viewer.field_preview import BAND_RAYS

    rows = src.calls
    assert len(rows) == -(-200 // (BAND_RAYS // 320))
    assert rows[0][2] == pytest.approx(100.0) and rows[1][2] == pytest.approx(100.0 - BAND_RAYS // 320)


def test_preview_reaches_a_quarter_while_training_without_pauses():
    """While the optimizer runs, a still camera gets at least 1/4 resolution whatever the estimates say, and
    that frame is not slowed by the pauses a refine beyond it leaves the optimizer (issue 17: the preview sat
    at 1/16; measured on nerf_grid.json, 1/4 of a 680x420 viewport now arrives 0.8-1.0 s after the camera
    stops, 1.6-1.8 s with the pauses)."""
    from drstudio.app.viewer.field_preview import TRAINING_FLOOR, PreviewRequest

    pv, src, eng = _preview()
    pv.settings.share_while_training = 0.01  # a pause 99x the band's render time, if any were taken
    eng.state = "running"
    pv.ms_by_scale = {1 / 16: 30.0, 1 / 8: 900.0, 1 / 4: 5000.0}  # 1/4 over the 1 s training budget
    assert pv.training_scale(1280 * 800) == TRAINING_FLOOR == 1 / 4
    pose = np.array([0, 0, 3, 0, 0, 0, 1], np.float64)
    pv.request(PreviewRequest(pose, 40.0, 1280, 800, moving=False))
    pv._tick()  # a new view: the quick frame first
    assert pv.latest.scale == 1 / 16
    src.hook = lambda: time.sleep(0.005)  # 5 ms a band: a pause would be 0.5 s after each of the 8 bands
    src.calls.clear()
    t0 = time.perf_counter()
    pv._tick()
    assert pv.latest.scale == 1 / 4 and (pv.latest.width, pv.latest.height) == (320, 200) and len(src.calls) == 8
    assert time.perf_counter() - t0 < 2.0  # bands back to back (with the pauses: > 3.5 s)


def test_preview_abandons_a_refine_when_the_camera_moves_and_reads_occupancy():
    from drstudio.app.viewer.field_preview import PreviewRequest

    pv, src, eng = _preview()
    pose = np.array([0, 0, 3, 0, 0, 0, 1], np.float64)
    pv.ms_by_scale = {1.0: 10.0}
    pv.request(PreviewRequest(pose, 40.0, 640, 400, moving=False))
    src.hook = lambda: pv.request(PreviewRequest(pose + 1.0, 40.0, 640, 400, moving=True))
    pv._tick()
    assert pv.latest is None and pv.aborted == 1  # a full-resolution render, abandoned after its first band
    src.hook = None
    pv.want_occupancy = True
    pv._tick()
    occ = pv.occupancy
    assert occ.occupied == 8 and occ.cells == 64 and len(occ.points) == 8
    np.testing.assert_allclose(np.sort(np.unique(occ.points)), [-0.25, 0.25])  # cell centers of the middle cells
    from drstudio.app.viewer.field_preview import occupancy_points

    pts, n = occupancy_points(np.ones((40, 40, 40), bool), [0, 0, 0, 1, 1, 1], limit=1000)
    assert n == 64000 and 900 <= len(pts) <= 1000


# -- torch fields (neural, NeRF-W) in the viewer ----------------------------------------------------------

def write_torch_field_scene(folder: Path, kind: str) -> Path:
    """A tiny neural (IPE), NeRF-W or hash-grid field on a 10-view 16x16 dataset of the globe (NeRF-W: varied
    lighting and occluders), 2 views held out."""
    from drstudio.renderer.datasets import DatasetOptions, generate_dataset
    from drstudio.renderer.loading import load_scene

    globe = load_scene(Path(__file__).resolve().parents[1] / "scenes" / "texture.json")
    extra = dict(lighting_variation=0.4, occluders=1) if kind == "nerf_w" else {}
    generate_dataset(globe, folder / "data", DatasetOptions(views=10, test_views=2, width=16, height=16, **extra),
                     device="cpu")
    box = [[-1.05, -1.05, -1.05], [1.05, 1.05, 1.05]]
    field = {"name": "nerf", "type": kind, "aabb": box, "encoding": "ipe", "pos_freqs": 4, "dir_freqs": 0,
             "use_view_dirs": False, "depth": 2, "width": 32, "samples_per_ray": 16, "density_scale": 10.0}
    params = {"fields.nerf.weights": {"lr": 0.01}}
    if kind == "nerf_w":
        field.update(appearance_dim=4, transient_dim=4)
        params.update({"fields.nerf.appearance": {"lr": 0.03}, "fields.nerf.transient": {"lr": 0.03}})
    if kind == "hash_grid":
        field = {"name": "nerf", "type": kind, "aabb": box, "n_levels": 4, "log2_table_size": 10, "base_resolution": 4,
                 "finest_resolution": 32, "width": 16, "color_layers": 1, "sh_degree": 0, "samples_per_ray": 16,
                 "occupancy": {"resolution": 8, "update_every": 4}}
        params = {"fields.nerf.table": {"lr": 0.03}, "fields.nerf.weights": {"lr": 0.01}}
    doc = {"version": 1,
           "cameras": [{"name": "preview", "width": 16, "height": 16, "fov_y": 40,
                        "look_at": {"eye": [0, 0.8, 3.5], "target": [0, 0, 0]}}],
           "background": [0.05, 0.05, 0.05], "fields": [field],
           "optimize": {"parameters": params, "targets": {"transforms": "data/transforms.json"},
                        "loss": {"l2": 1.0}, "optimizer": {"type": "adam", "lr": 0.01}, "steps": 100000,
                        "rays_per_batch": 256, "eval_every": 5}}
    path = folder / f"{kind}.json"
    path.write_text(json.dumps(doc))
    return path


def _torch_field_session(s: Script, state):
    pv = state.preview
    assert pv is not None and "field.time" not in state.rects  # a static field: preview, no time slider
    state.gizmo.show_current = state.gizmo.show_targets = False
    yield from s.frames(2)
    state.send("start")
    yield from s.until(state, lambda: state.snapshot.step >= 12, "12 training steps")
    yield from s.until(state, lambda: "psnr_test_db" in state.snapshot.loss_terms, "a held-out PSNR")
    step = state.snapshot.step
    yield from s.until(state, lambda: pv.latest is not None and pv.latest.values_key[0] >= step,
                       "a preview of the trained values")
    yield from s.frames(3)
    img = s.screen(state, "torch_field")
    vx, vy, vw, vh = _viewport_rect(state)
    shown = img[vy + vh // 5:vy + vh, vx:vx + vw].astype(float)
    assert shown.std() > 2.0, "the viewport shows a flat image, not the field"
    assert np.isfinite(state.snapshot.loss_terms["psnr_test_db"])
    state.send("pause")
    yield from s.until(state, lambda: state.snapshot.state == "paused", "pause")


@pytest.mark.parametrize("kind", ["neural", "nerf_w", "hash_grid"])
def test_torch_fields_train_and_preview_in_the_viewer(display, tmp_path, kind):
    _need_xdotool()
    from drstudio.app.viewer import run_viewer

    script = Script(display, tmp_path, _torch_field_session)
    rc = run_viewer(str(write_torch_field_scene(tmp_path, kind)), max_frames=100000, on_frame=script)
    if script.error is not None:
        raise AssertionError(f"{script.error}\n(screenshots in {tmp_path})") from script.error
    assert script.done and rc == 0
