"""The viewer in render mode "path" (issue 15 item 7): the progressive path-traced preview, emitters and the
environment light in the OpenGL viewport, gradient overlays of path-mode parameters.

Without a window: `PathPreview`'s accumulation is exactly the path tracer's render of that many samples (its
passes continue one random sequence), and what restarts it (a camera move, an edit that changes a value; a
command that changes nothing does not; the optimizer's values only after the refresh interval).

Under Xvfb (`test_path_mode_session`, real input through xdotool): with the preview off the viewport's
background is the environment texel of each pixel's view direction (screen pixels against a NumPy lookup with
the path tracer's formulas, and `Viewport.render_camera` against the path tracer's own image of the
environment seen directly, pixel for pixel), the emissive wall shows its emission; with the preview on, the
sample count grows while nothing changes, and restarts on a camera orbit and on an edit of the emission (the
new colour appears); a step of the optimizer gives the emission and environment gradients, and the texture
overlay draws them on the wall and over the background. Then, with the optimizer running and no input for
two seconds, the window is at rest (at most ~4 frames a second) until the mouse moves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from drstudio.renderer import conventions as cv
from drstudio.renderer.optim import commands
from test_viewer import XDOTOOL, Session

SESSION_TIMEOUT = 120.0
EMISSION = np.array([0.2, 0.5, 0.1], np.float32)


def env_image(he: int = 8, we: int = 16) -> np.ndarray:
    """A small environment whose texels all differ (so a flipped or shifted lookup is caught): hue by
    column, brightness by row, values in [0.05, 0.8] (no sRGB clipping)."""
    y, x = np.mgrid[0:he, 0:we]
    r = 0.05 + 0.75 * x / (we - 1)
    g = 0.05 + 0.75 * y / (he - 1)
    b = 0.05 + 0.75 * ((x * 5 + y * 3) % 7) / 6
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def write_scene(folder: Path) -> Path:
    """A black-albedo emissive wall facing the camera (its colour is its emission, whatever the light) under
    an environment light; path mode; the emission (starting at EMISSION) and the environment are free."""
    import tifffile

    tifffile.imwrite(folder / "sky.tif", env_image(), photometric="rgb")
    scene = {
        "version": 1,
        "meshes": [{"name": "wall", "primitive": {"type": "plane", "size": 1.0}, "material": "glow",
                    "transform": {"rotation": {"euler_deg": [90, 0, 0]}}}],
        "materials": [{"name": "glow", "albedo": [0.0, 0.0, 0.0], "emission": [0.4, 0.4, 0.4]}],
        "lights": [{"name": "sky", "type": "environment", "radiance": "sky.tif"}],
        "cameras": [{"name": "front", "width": 32, "height": 24, "fov_y": 60,
                     "look_at": {"eye": [0.3, 0.2, 2.5], "target": [0.0, 0.0, 0.0]}}],
        "render": {"mode": "path", "spp": 2, "max_depth": 1, "seed": 0, "jitter": False},
        "optimize": {
            "parameters": {"materials.glow.emission": {"init": EMISSION.tolist()},
                           # free at the file's value (sigma 0): the background tests compare with sky.tif
                           "lights.sky.radiance": {"init": {"perturb": {"sigma": 0.0, "seed": 0}}}},
            "targets": {"cameras": ["front"], "spp": 8},
            "loss": {"l2": 1.0},
            "optimizer": {"type": "adam", "lr": 0.01},
            "steps": 1000,
        },
    }
    path = folder / "scene.json"
    path.write_text(json.dumps(scene))
    return path


def env_lookup(env: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The texel of unit directions d (..., 3): renderer/stages/pathtrace.py env_texel in NumPy."""
    he, we = env.shape[:2]
    theta = np.arccos(np.clip(d[..., 1], -1.0, 1.0))
    phi = np.arctan2(d[..., 0], -d[..., 2])
    x = np.clip(np.floor((phi * (0.5 / np.pi) + 0.5) * we).astype(int), 0, we - 1)
    y = np.clip(np.floor(theta / np.pi * he).astype(int), 0, he - 1)
    return env[y, x]


# -- without a window ------------------------------------------------------------------------------------

def _request(pose, values, *, edit=0, serial=0, width=64, height=48):
    from drstudio.app.viewer.path_preview import PathRequest

    return PathRequest(np.asarray(pose, np.float32), 50.0, width, height, False, 1, values, edit, serial)


@pytest.mark.parametrize("device", ["cpu"])  # the viewer's own renders run on the CPU
def test_accumulation_is_the_render_of_all_samples(tmp_path, device):
    import warp as wp
    from drstudio.app.viewer.field_preview import intrinsics_for
    from drstudio.app.viewer.path_preview import PathPreview, PathSettings
    from drstudio.renderer.device_scene import DeviceScene
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.render import PATH_RR_DEPTH, path_scene
    from drstudio.renderer.stages import pathtrace as pt

    scene = load_scene(write_scene(tmp_path))
    values = {p: v.value.copy() for p, v in scene.params().items()}
    pose = np.array([0.3, 0.2, 2.5, 0, 0, 0, 1], np.float32)
    pv = PathPreview(scene, "cpu", PathSettings(max_spp=7, seed=3))
    req = _request(pose, values)  # 64x48: the first pass: 1 sample at 1/4; then as many as fit
    while pv._work(req):
        pass
    f = pv.latest
    assert f.spp == 7 and pv.restarts == 1 and pv.passes >= 2 and (f.width, f.height) == (16, 12)
    ds = DeviceScene(scene, "cpu")
    want = pt.render_path(path_scene(ds, ds.prepare()), wp.array(intrinsics_for(50.0, f.width, f.height), dtype=float),
                          wp.array(pose, dtype=float), f.width, f.height, spp=7, seed=3, max_depth=1,
                          rr_depth=PATH_RR_DEPTH, jitter=True).numpy().reshape(f.height, f.width, 3)
    np.testing.assert_allclose(f.image, want, rtol=1e-5, atol=1e-6)

    # a command that changes no value (a pause) does not restart; a changed value does, at once
    assert not pv._work(_request(pose, dict(values), edit=1))
    assert pv.restarts == 1 and pv.latest.spp == 7
    edited = dict(values, **{"materials.glow.emission": np.full((1, 1, 3), 0.7, np.float32)})
    pv.settings.pass_budget_ms = 1e-6  # one sample a pass: how many fit 200 ms depends on the machine's speed
    assert pv._work(_request(pose, edited, edit=2))
    assert pv.restarts == 2 and pv.latest.spp < 7
    # the optimizer's new values wait for the refresh interval; a camera move restarts at once
    pv.settings.refresh, pv.settings.refresh_factor = 60.0, 0.0
    stepped = dict(edited, **{"materials.glow.emission": np.full((1, 1, 3), 0.6, np.float32)})
    pv._work(_request(pose, stepped, edit=2, serial=1))
    assert pv.restarts == 2
    pv._work(_request(pose + np.float32([0.1, 0, 0, 0, 0, 0, 0]), stepped, edit=2, serial=1))
    assert pv.restarts == 3 and pv.latest.spp <= 7


def test_sphere_mean_of_an_environment():
    from drstudio.app.viewer.viewport import sphere_mean

    env = env_image(32, 64)
    d = np.random.default_rng(0).normal(size=(200000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)  # uniform on the sphere
    np.testing.assert_allclose(sphere_mean(env), env_lookup(env, d).mean(axis=0), atol=3e-3)
    np.testing.assert_allclose(sphere_mean(np.full((4, 8, 3), 0.5, np.float32)), 0.5, rtol=1e-6)


# -- in a window ---------------------------------------------------------------------------------------------

class PathSession(Session):
    def waiting_detail(self, state) -> str:
        pv = state.path_preview
        f = pv.latest
        return f", path preview: {pv.error or ''} spp {f.spp if f else None}, restarts {pv.restarts}"

    def view_dirs(self, state, xy: np.ndarray) -> np.ndarray:
        """Unit world directions through window points (x, y) of the viewport (the last drawn camera)."""
        vx, vy, vw, vh = state.viewport_rect
        ndc = np.stack([(xy[:, 0] - vx) / vw * 2 - 1, 1 - (xy[:, 1] - vy) / vh * 2, np.ones(len(xy)),
                        np.ones(len(xy))], axis=1)
        far = ndc @ np.linalg.inv(state.view_proj).T
        d = far[:, :3] / far[:, 3:] - state.camera.eye()
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def run(self, state):
        pv, vp = state.path_preview, state.gl.viewport
        yield from self.until(state, lambda: state.snapshot.render is not None, "the first snapshot")
        env = env_image()

        # 1. the OpenGL rasterization: the environment behind, the emissive wall in its colour
        state.path_view = False
        yield from self.frames(6)
        vx, vy, vw, vh = state.viewport_rect
        img = self.screen(state, "01_gl")
        wall = state.project([[0.0, 0.0, 0.0]])[0]
        got = img[int(wall[1]), int(wall[0])].astype(float)
        want = cv.linear_to_srgb(EMISSION) * 255
        assert np.abs(got - want).max() <= 3, f"emissive wall {got} != {want}"
        rng = np.random.default_rng(0)
        # left of the wall and the grid, below the status lines
        pts = np.stack([rng.uniform(vx + 4, vx + vw * 0.3, 40), rng.uniform(vy + 90, vy + vh - 4, 40)], axis=1)
        pts = np.floor(pts) + 0.5  # pixel centers
        want = cv.linear_to_srgb(env_lookup(env, self.view_dirs(state, pts))) * 255
        got = img[pts[:, 1].astype(int), pts[:, 0].astype(int)].astype(float)
        close = np.abs(got - want).max(axis=1) <= 3
        assert close.mean() >= 0.9, f"background != environment texels ({close.mean():.2f} agree): " \
                                    f"{np.c_[pts, got, want][~close][:5]}"
        self.results["background_pixels_ok"] = float(close.mean())
        # the viewport through the scene camera against the path tracer's environment seen directly
        c = state.scene.cameras["front"]
        lin = vp.render_camera(state, state.values["cameras.front.pose"], state.values["cameras.front.intrinsics"],
                               c.width, c.height)
        ref, tri = self.reference
        bg = tri < 0
        agree = np.abs(lin - ref).max(axis=-1)[bg] < 1e-5
        assert bg.sum() > 100 and agree.mean() > 0.97, f"render_camera vs path tracer: {agree.mean():.3f}"
        self.results["render_camera_background_agree"] = float(agree.mean())

        # 2. the path-traced preview: samples accumulate while still
        state.path_view = True
        yield from self.until(state, lambda: vp.path_shown is not None, "the first path-traced frame", 40)
        s1 = vp.path_shown.spp
        yield from self.until(state, lambda: vp.path_shown is not None and vp.path_shown.spp >= s1 + 3,
                              "more samples while still", 40)
        s2, r2 = vp.path_shown.spp, pv.restarts
        img = self.screen(state, "02_path")
        got = img[int(wall[1]), int(wall[0])].astype(float)
        assert np.abs(got - cv.linear_to_srgb(EMISSION) * 255).max() <= 4, f"path preview wall {got}"
        self.results["spp_still"] = (s1, s2)

        # 3. a camera orbit restarts it
        yield from self.drag(state, (vx + vw * 0.3, vy + vh * 0.5), (40, 0))
        yield from self.until(state, lambda: pv.restarts > r2 and vp.path_shown is not None, "a restart after orbit")
        assert vp.path_shown.spp < s2, f"spp after the orbit {vp.path_shown.spp} >= {s2}"
        self.results["spp_after_orbit"] = vp.path_shown.spp
        yield from self.until(state, lambda: vp.path_shown is not None and vp.path_shown.spp >= 4, "samples again", 40)

        # 4. an edit restarts it with the new value
        r3, s3 = pv.restarts, vp.path_shown.spp
        new = np.array([0.6, 0.15, 0.3], np.float32)
        state.send(commands.SetValue, "materials.glow.emission", new.reshape(1, 1, 3))
        yield from self.until(state, lambda: pv.restarts > r3 and vp.path_shown is not None
                              and vp.path_shown.restarts > r3, "a restart after the edit")
        assert vp.path_shown.spp <= s3
        yield from self.frames(2)
        img = self.screen(state, "03_edited")
        wall = state.project([[0.0, 0.0, 0.0]])[0]
        got = img[int(wall[1]), int(wall[0])].astype(float)
        assert np.abs(got - cv.linear_to_srgb(new) * 255).max() <= 4, f"edited wall {got}"

        # 5. gradients of the emission and the environment, drawn by the texture overlay
        state.send(commands.Step, 1)
        yield from self.until(state, lambda: state.snapshot.step >= 1 and "lights.sky.radiance"
                              in state.snapshot.texture_grads, "a step with the environment gradient")
        assert "materials.glow.emission" in state.snapshot.param_grads
        from drstudio.renderer.params import Kind

        state.overlays.texture_property = Kind.EMISSION
        state.overlays.enabled["texture"] = True
        yield from self.frames(4)
        assert vp.path_shown is None  # the overlay is drawn on the rasterized meshes
        img = self.screen(state, "04_overlay")
        heat = img[int(wall[1]), int(wall[0])].astype(float)
        assert np.abs(heat - cv.linear_to_srgb(new) * 255).max() > 20, f"no overlay on the wall: {heat}"
        bg_heat = img[pts[:, 1].astype(int), pts[:, 0].astype(int)].astype(float)
        assert np.abs(bg_heat - want).max(axis=1).mean() > 10, "no environment gradient over the background"
        self.results["overlay"] = heat.tolist()

        # 6. at rest (no input for 2 s) frames slow down to at most 4 a second; the mouse wakes it up
        state.send(commands.Resume)
        yield from self.until(state, lambda: state.at_rest, "the rest state", 20)
        f0, t0 = state.frame, time.monotonic()
        yield from self.until(state, lambda: time.monotonic() - t0 >= 2.0, "two seconds")
        rate = (state.frame - f0) / (time.monotonic() - t0)
        assert rate <= 5.0, f"{rate:.1f} frames/s at rest while running"
        self.input.move(state.window_pos[0] + vx + vw * 0.5, state.window_pos[1] + vy + vh * 0.5)
        yield from self.until(state, lambda: not state.at_rest, "input ends the rest state", 10)
        self.results["rest_fps"] = round(rate, 2)


def test_path_mode_session(display, tmp_path):
    from drstudio.app.viewer import run_viewer
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.render import render

    if XDOTOOL is None:
        pytest.skip("the viewer test drives the window with xdotool: apt-get install xdotool")
    path = write_scene(tmp_path)
    # the path tracer's own image with the environment seen directly (pixel centers, depth 0)
    out = render(load_scene(path), "front", max_depth=0, spp=1)
    session = PathSession(display, tmp_path)
    session.reference = (out.numpy(), out.tri_id.numpy().reshape(out.height, out.width))
    t0 = None

    def on_frame(state):
        nonlocal t0
        t0 = t0 or time.monotonic()
        if time.monotonic() - t0 > SESSION_TIMEOUT and not session.done:
            session.error = session.error or AssertionError(f"session exceeded {SESSION_TIMEOUT} s")
            state.quit = True
            return
        session.step(state)

    rc = run_viewer(str(path), device="cpu", max_frames=100000, on_frame=on_frame)
    if session.error is not None:
        raise AssertionError(f"{session.error}\n(screenshots in {tmp_path})") from session.error
    assert session.done and rc == 0
    print("path session:", session.results)
