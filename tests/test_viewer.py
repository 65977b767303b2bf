"""The viewer-editor (`app.viewer`), driven like a user would: a real GLFW window on the test Xvfb,
real mouse and keyboard input through xdotool (XTEST events reach GLFW and ImGui's backend exactly
as a user's do), pixels read back from the window.

`test_viewer_session` is one scripted session: open a small scene, check the 3D view shows the mesh
and shades it as the differentiable renderer does, start the optimizer, pause, orbit / pan / zoom /
frame-all the free camera, toggle each gradient overlay and check the pixels it should change (and
those it should not), switch the active view, fix and free a parameter, fix every parameter but the
light, select the target's point light and drag its gizmo while the optimizer runs, then check the
engine got the commands and the optimized light moved toward the new target. The script runs inside
the viewer's `on_frame` hook (a generator advanced once per frame), so the UI thread is never blocked
for more than one xdotool call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from drstudio.renderer.images import write_image
from drstudio.renderer.optim import commands
from drstudio.renderer.params import camera_intrinsics, camera_pose

XDOTOOL = shutil.which("xdotool")
SESSION_TIMEOUT = 75.0  # s, the whole scripted session


def write_scene(folder: Path) -> Path:
    """A ball with a 16x16 albedo texture on a floor under a point light (shadows on), two 64x64
    views; free: the texture (near its true value), the light position and the ball's vertices (so
    every overlay has a gradient to show). The session fixes the texture and the vertices before it
    drags the light, so that the light is identifiable when the optimizer chases it."""
    y, x = np.mgrid[0:16, 0:16] / 16.0
    tex = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.8 - 0.5 * x * y], axis=-1).astype(np.float32)
    write_image(folder / "albedo.png", tex)
    scene = {
        "version": 1,
        "meshes": [{"name": "ball", "primitive": {"type": "sphere", "radius": 0.8, "resolution": 24},
                    "material": "paint"},
                   {"name": "floor", "primitive": {"type": "plane", "size": 4.0}, "material": "floor",
                    "transform": {"translation": [0.0, -0.8, 0.0]}}],
        "materials": [{"name": "paint", "model": "lambert", "albedo": "albedo.png"},
                      {"name": "floor", "model": "ggx", "albedo": [0.6, 0.6, 0.6], "roughness": 0.6}],
        "lights": [{"name": "key", "type": "point", "position": [1.2, 1.0, 1.6], "intensity": 6.0},
                   {"name": "sky", "type": "ambient", "color": [0.1, 0.1, 0.1]}],
        "cameras": [
            {"name": "front", "width": 64, "height": 64, "fov_y": 45,
             "look_at": {"eye": [0, 0.4, 3.2], "target": [0, 0, 0]}},
            {"name": "side", "width": 64, "height": 64, "fov_y": 45,
             "look_at": {"eye": [3.0, 0.6, 1.0], "target": [0, 0, 0]}},
        ],
        "background": [0.05, 0.05, 0.05],
        "render": {"mode": "antialias", "shadows": True, "mipmaps": False},
        "optimize": {
            "parameters": {
                "materials.paint.albedo": {"init": {"perturb": {"sigma": 0.1, "seed": 1}}, "lr": 0.05},
                "lights.key.position": {"init": {"perturb": {"sigma": 0.3, "seed": 2}}, "lr": 0.03},
                "meshes.ball.vertices": {"init": {"perturb": {"sigma": 0.005, "seed": 3}}, "lr": 0.001},
            },
            "targets": {"cameras": ["front", "side"]},
            "loss": {"l2": 1.0},
            "optimizer": {"type": "adam", "lr": 0.02},
            "steps": 5000,
            "batch_views": 2,
        },
    }
    path = folder / "scene.json"
    path.write_text(json.dumps(scene))
    return path


class Input:
    """Real input through xdotool, in screen coordinates of the test display."""

    def __init__(self, display: str):
        self.env = {"DISPLAY": display, "PATH": "/usr/bin:/bin"}

    def __call__(self, *args) -> None:
        subprocess.run([XDOTOOL, *map(str, args)], env=self.env, check=True, timeout=10)

    def move(self, x: float, y: float) -> None:
        self("mousemove", int(round(x)), int(round(y)))


def crop(img: np.ndarray, rect) -> np.ndarray:
    x, y, w, h = (int(round(v)) for v in rect)
    return img[y:y + h, x:x + w].astype(np.int16)


def changed(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels whose color changed by more than 8/255 in some channel."""
    return float((np.abs(a - b).max(axis=-1) > 8).mean())


class Session:
    """The scripted session; `step(state)` is the viewer's on_frame hook."""

    def __init__(self, display, evidence: Path):
        self.input = Input(display.display)
        self.evidence = evidence
        self.script = None
        self.error: BaseException | None = None
        self.done = False
        self.log: list[str] = []
        self.results: dict = {}

    def step(self, state) -> None:
        if self.script is None:
            self.script = self.run(state)
        try:
            next(self.script)
        except StopIteration:
            self.done = True
            state.quit = True
        except BaseException as exc:  # surface it after the window closed cleanly
            self.error = exc
            state.quit = True

    # -- helpers (generators: `yield from`) ----------------------------------------------------------
    def frames(self, n: int):
        for _ in range(n):
            yield

    def until(self, state, predicate, what: str, timeout: float = 20.0):
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what} (engine {state.snapshot.state}, "
                                     f"step {state.snapshot.step}{self.waiting_detail(state)})")
            yield

    def waiting_detail(self, state) -> str:
        """More of the state for a timed-out wait's message (subclasses)."""
        return ""

    def screen(self, state, name: str | None = None) -> np.ndarray:
        img = state.screenshot()
        if name:
            import imageio.v3 as iio
            iio.imwrite(self.evidence / f"{name}.png", img)
        return img

    def click(self, state, widget: str):
        ox, oy = state.window_pos
        x, y = state.rect_center(widget)
        self.input.move(ox + x, oy + y)
        yield from self.frames(2)
        self.input("click", 1)
        yield from self.frames(3)

    def drag(self, state, start, delta, button: int = 1, steps: int = 8):
        ox, oy = state.window_pos
        self.input.move(ox + start[0], oy + start[1])
        yield from self.frames(2)
        self.input("mousedown", button)
        yield from self.frames(2)
        for i in range(1, steps + 1):
            self.input.move(ox + start[0] + delta[0] * i / steps, oy + start[1] + delta[1] * i / steps)
            yield from self.frames(1)
        self.input("mouseup", button)
        yield from self.frames(3)

    # -- the session -------------------------------------------------------------------------------
    def run(self, state):
        snap_ready = lambda: state.snapshot.render is not None and "pane.render" in state.rects  # noqa: E731
        yield from self.until(state, snap_ready, "the first snapshot with images")
        yield from self.frames(3)
        vx, vy, vw, vh = state.viewport_rect

        # The viewport shows the mesh: the ball's center is lit, a corner shows the background.
        img = self.screen(state, "01_open")
        cx, cy = state.project([[0.0, 0.0, 0.0]])[0]
        ball = img[int(cy) - 3:int(cy) + 4, int(cx) - 3:int(cx) + 4].reshape(-1, 3).mean(axis=0)
        corner = img[int(vy + vh - 6), int(vx + 6)].astype(float)
        assert np.abs(ball - corner).max() > 30, f"no mesh at the projected ball center: {ball} vs {corner}"
        viewport_pixels = img[int(vy):int(vy + vh), int(vx):int(vx + vw)]
        assert viewport_pixels.std() > 10, "the viewport is flat"

        # The viewport's GL shading (Lambert ball, GGX floor, shadow map) matches the differentiable
        # render of the same values, up to silhouette anti-aliasing and shadow-map edges.
        cam = state.active_view
        c = state.scene.cameras[cam]
        gl_img = state.gl.viewport.render_camera(state, state.values[camera_pose(cam)],
                                                 state.values[camera_intrinsics(cam)], c.width, c.height)
        diff = np.abs(gl_img - state.snapshot.render)
        self.results["shading_mean_abs"] = float(diff.mean())
        assert diff.mean() < 0.01 and np.median(diff) < 2e-3, \
            f"viewport shading differs from the renderer: mean {diff.mean():.4f}, median {np.median(diff):.4f}"

        # Image upload path: a CPU Warp array goes to GL through its NumPy view, values intact.
        import warp as wp

        data = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
        tex = state.gl.uploader.upload("test.upload", wp.array(data, dtype=float, device="cpu"))
        np.testing.assert_array_equal(np.frombuffer(tex.read(), np.float32).reshape(5, 7, 3), data)

        # Start with the real button, let it run, pause.
        yield from self.click(state, "button.start")
        yield from self.until(state, lambda: state.snapshot.state == "running" and state.snapshot.step >= 3,
                              "the optimizer to run")
        yield from self.click(state, "button.pause")
        yield from self.until(state, lambda: state.snapshot.state == "paused", "pause")
        assert [c.kind for c in state.sent][:2] == ["start", "pause"], state.sent
        yield from self.frames(4)

        # Free camera: orbit (left drag), pan (right drag), zoom (wheel), frame all (F).
        cam0 = (state.camera.yaw, state.camera.pitch)
        start = (vx + vw * 0.15, vy + vh * 0.8)
        yield from self.drag(state, start, (80, -30), button=1)
        assert (state.camera.yaw, state.camera.pitch) != cam0, "left drag did not orbit"
        target0 = state.camera.target.copy()
        yield from self.drag(state, start, (40, 20), button=3)
        assert np.linalg.norm(state.camera.target - target0) > 1e-3, "right drag did not pan"
        dist0 = state.camera.distance
        self.input("click", 5)  # wheel down: zoom out
        yield from self.frames(3)
        assert state.camera.distance > dist0, "the wheel did not zoom"
        self.input("key", "f")
        yield from self.frames(3)
        center, radius = state.scene_bounds(with_lights=True)
        assert np.allclose(state.camera.target, center, atol=1e-4), "F did not frame the scene"
        yield from self.frames(2)

        # Each overlay, alone, changes the pixels it should.
        def overlay_rects():
            cx, cy = state.project([[0.0, 0.0, 0.0]])[0]
            right = state.camera.camera_to_world()[:3, 0]
            r = abs(state.project([right * 0.8])[0][0] - cx) * 1.1  # the ball's radius on screen
            return {"ball": (cx - r, cy - r, 2 * r, 2 * r), "render": state.rects["pane.render"],
                    "target": state.rects["pane.target"], "sky": (vx + 4, vy + 40, vw * 0.3, vh * 0.2)}

        assert state.snapshot.grad_image is not None and np.abs(state.snapshot.grad_image).max() > 0, (
            "snapshot.grad_image is all zeros: the engine must copy dLoss/dImage during the backward pass "
            "(Warp zeroes the adjoint of an array once it has been propagated)")
        for name, where, untouched in (("image", "render", "target"), ("texture", "ball", "target"),
                                       ("geometry", "ball", "target"), ("params", "ball", "target")):
            before = self.screen(state)
            rects = overlay_rects()
            yield from self.click(state, f"overlay.{name}")
            assert state.overlays.on(name), f"the {name} overlay checkbox did not toggle"
            yield from self.frames(3)
            after = self.screen(state, f"02_overlay_{name}")
            moved = changed(crop(before, rects[where]), crop(after, rects[where]))
            still = changed(crop(before, rects[untouched]), crop(after, rects[untouched]))
            if name == "params":  # a small arrow: look around the light
                lx, ly = state.project([state.values["lights.key.position"]])[0]
                win = (lx - 100, ly - 100, 200, 200)
                moved = changed(crop(before, win), crop(after, win)) * 200 * 200
                assert moved > 100, f"no gradient arrow at the light: {moved:.0f} pixels changed"
            else:
                assert moved > 0.2, f"overlay {name}: only {moved:.3f} of the {where} pixels changed"
            self.results[f"overlay_{name}"] = (round(moved, 3), still)
            assert still == 0.0, f"overlay {name} changed the {untouched} pane"
            if name in ("texture", "geometry"):  # on the ball only, not on the floor or the sky
                sky = changed(crop(before, rects["sky"]), crop(after, rects["sky"]))
                assert sky == 0.0, f"overlay {name} changed pixels away from the ball"
            yield from self.click(state, f"overlay.{name}")
            assert not state.overlays.on(name)

        # Views: a thumbnail click makes its camera the active view (the panes follow), and back.
        front_target = state.snapshot.target
        yield from self.click(state, "view.side")
        yield from self.until(state, lambda: state.snapshot.active_view == "side", "the side view to be active")
        assert commands.SetActiveView("side") in state.sent
        assert np.abs(state.snapshot.target - front_target).max() > 0.05, "the target pane did not switch"
        yield from self.click(state, "view.front")
        yield from self.until(state, lambda: state.snapshot.active_view == "front", "the front view to be active")

        # Free / fixed: the light's checkbox in the Optimizer's parameter table.
        path = "lights.key.position"
        yield from self.click(state, f"table.free.{path}")
        yield from self.until(state, lambda: path not in state.snapshot.free, "the light position to be fixed")
        yield from self.click(state, f"table.free.{path}")
        yield from self.until(state, lambda: path in state.snapshot.free, "the light position to be free again")
        assert commands.SetFree(path, False) in state.sent and commands.SetFree(path, True) in state.sent

        # The chase checks what it claims only if the light is identifiable: with the texture and the
        # vertices free too, the texture absorbs most of a moved light's shading change and the light
        # creeps (it took ~125 steps to close half the distance headless, more than the wait below on a
        # slow machine). Fix both in the table, as a user isolating the light would; the light alone
        # closes half its distance in ~30 steps (biased only by the texture's remaining error).
        for other in ("materials.paint.albedo", "meshes.ball.vertices"):
            yield from self.click(state, f"table.free.{other}")
            yield from self.until(state, lambda other=other: other not in state.snapshot.free, f"{other} to be fixed")
        assert state.snapshot.free == (path,), state.snapshot.free

        # Select the target's key light (Scene panel), resume, and drag the light gizmo's center
        # (ImGuizmo's screen-plane handle) 70 px to the right while the optimizer runs.
        yield from self.click(state, "scene.lights.key")
        assert state.selection == ("lights", "key")
        yield from self.click(state, "button.start")  # "Resume" while paused
        yield from self.until(state, lambda: state.snapshot.state == "running", "resume")
        before_drag = self.screen(state, "03_gizmo")
        old_target = state.targets["lights.key.position"].copy()
        gx, gy = state.project([old_target])[0]
        assert vx < gx < vx + vw and vy < gy < vy + vh, "the light gizmo is outside the viewport"
        sent_before = len(state.sent)
        yield from self.drag(state, (gx, gy), (70, 0), button=1, steps=10)
        new_target = state.targets["lights.key.position"].copy()
        target_cmds = [c for c in state.sent[sent_before:] if isinstance(c, commands.SetTargetValue)]
        assert target_cmds, f"dragging the gizmo sent no set_target_value: {state.sent[sent_before:]}"
        assert target_cmds[-1].path == "lights.key.position"
        np.testing.assert_allclose(target_cmds[-1].value, new_target, atol=1e-6)
        nx, _ = state.project([new_target])[0]
        assert 40 < nx - gx < 100, f"the target light moved {nx - gx:.1f} px on screen, expected ~70"
        n_sent = len(state.sent)
        yield from self.until(state, lambda: state.snapshot.commands_applied >= n_sent,
                              "the engine to apply every command sent")
        step0 = state.snapshot.step
        d0 = float(np.linalg.norm(state.values["lights.key.position"] - new_target))
        after_drag = self.screen(state, "04_dragged")
        target_pane = changed(crop(before_drag, state.rects["pane.target"]),
                              crop(after_drag, state.rects["pane.target"]))
        assert target_pane > 0.01, "the target image did not change after the drag"

        # The optimizer chases the new target.
        def distance():
            return float(np.linalg.norm(state.values["lights.key.position"] - new_target))

        yield from self.until(state, lambda: state.snapshot.step >= step0 + 20 and distance() < 0.5 * d0,
                              f"the light to close half of its distance {d0:.3f} to the new target", timeout=25)
        yield from self.click(state, "button.pause")
        yield from self.until(state, lambda: state.snapshot.state == "paused", "pause")
        d1 = distance()
        self.results.update(d0=d0, d1=d1, steps=state.snapshot.step - step0, fps=state.fps,
                            steps_per_second=state.snapshot.steps_per_second)
        hist = state.snapshot.history["loss"]
        assert hist[-1] < hist[step0], f"the loss did not fall after the drag: {hist[step0]:.4g} -> {hist[-1]:.4g}"
        self.screen(state, "05_end")


def test_viewer_session(display, tmp_path):
    from drstudio.app.viewer import run_viewer

    if XDOTOOL is None:  # like the display fixture: skipped on a developer machine, a failure in CI
        message = "the viewer test drives the window with xdotool: apt-get install xdotool"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    scene = write_scene(tmp_path)
    session = Session(display, tmp_path)
    t0 = time.monotonic()
    frames = []

    def on_frame(state):
        frames.append(time.monotonic())
        if time.monotonic() - t0 > SESSION_TIMEOUT and not session.done:
            session.error = session.error or AssertionError(f"session exceeded {SESSION_TIMEOUT} s")
            state.quit = True
            return
        session.step(state)

    rc = run_viewer(str(scene), max_frames=20000, on_frame=on_frame)
    if session.error is not None:
        raise AssertionError(f"{session.error}\n(screenshots in {tmp_path})") from session.error
    assert session.done, "the session did not finish"
    assert rc == 0
    print("viewer session:", session.results, f"{len(frames)} frames in {frames[-1] - frames[0]:.1f} s")


def test_bad_scene_exits_with_user_error(tmp_path, capsys):
    from drstudio.app.viewer import run_viewer

    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "meshes": []}')
    assert run_viewer(str(bad)) == 2
    assert "bad.json" in capsys.readouterr().err


def test_orbit_camera_and_projection_conventions():
    """The viewer's camera math agrees with the renderer's conventions: a point straight ahead of a
    look-at camera projects to the principal point, and `intrinsics_projection` lands a camera-space
    point on the pixel `conventions` states."""
    from drstudio.app.viewer.camera import OrbitCamera, intrinsics_projection, pose_view, project
    from drstudio.renderer import conventions as cv

    cam = OrbitCamera(target=np.array([0.5, 0.2, -1.0]), distance=3.0, yaw=0.7, pitch=0.4)
    view_proj = cam.projection(1.5) @ cam.view()
    x, y = project(view_proj, [cam.target], (0, 0, 300, 200))[0]
    assert abs(x - 150) < 1e-6 and abs(y - 100) < 1e-6
    pose = cam.pose()
    np.testing.assert_allclose(cv.pose_to_matrix(pose), cam.camera_to_world(), atol=1e-9)

    intr = np.array([80.0, 70.0, 30.0, 25.0])
    p_cam = np.array([0.3, -0.2, -2.0])
    expected = (intr[2] + intr[0] * p_cam[0] / 2.0, intr[3] - intr[1] * p_cam[1] / 2.0)
    world = cv.pose_to_matrix(pose) @ np.r_[p_cam, 1.0]
    got = project(intrinsics_projection(intr, 64, 48, 0.1, 10.0) @ pose_view(pose), [world[:3]], (0, 0, 64, 48))[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)

    cam2 = OrbitCamera()
    cam2.look_through(pose, intr, 48, cam.target)
    np.testing.assert_allclose(cam2.eye(), pose[:3], atol=1e-6)
    np.testing.assert_allclose(cam2.forward(), cam.forward(), atol=1e-6)


def test_gizmo_matrices_round_trip():
    from drstudio.app.viewer.geometry import mesh_matrix
    from drstudio.app.viewer.gizmos import _frame_along, from_matrix16, to_matrix16
    from drstudio.renderer import conventions as cv

    q = cv.quat_from_axis_angle([1, 2, 3], 40)
    m = mesh_matrix([1, 2, 3], q, [0.5, 2.0, 1.5])
    np.testing.assert_allclose(from_matrix16(to_matrix16(m)), m, atol=1e-6)
    r = _frame_along(np.array([0.3, -0.8, 0.2]))
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(r[:, 2], cv.normalize([0.3, -0.8, 0.2]), atol=1e-12)


def test_throttle_delivers_the_last_value():
    from drstudio.app.viewer.state import Throttle

    def lr(value):
        return commands.SetLr("p", value)

    t = Throttle()
    t.push("k", lr(1), interval=10.0)
    assert t.due(0.0) == [("k", lr(1))]
    t.push("k", lr(2), interval=10.0)
    t.push("k", lr(3), interval=10.0)
    assert t.due(1.0) == []  # rate-limited
    assert t.flush_key("k") == [lr(3)]  # the release delivers the latest
    assert t.due(100.0) == []


def write_many_lights_scene(folder: Path, points: int = 12, directionals: int = 10) -> Path:
    """The session's ball on a floor (shadows on) under more lights than the viewer once drew (8 of each
    type): `points` point lights around the ball and `directionals` directional lights, every light
    beyond the eighth of its type brighter than the first eight together, so a viewport that drops
    lights is far off the renderer. Free: one light's intensity (the problem needs a parameter)."""
    lights = []
    for i in range(points):
        a = 2 * np.pi * i / points
        strong = i >= 8
        lights.append({"name": f"p{i}", "type": "point", "position": [2.0 * np.cos(a), 1.2 + 0.3 * (i % 3),
                                                                        2.0 * np.sin(a)],
                       "color": [1.0, 0.6 + 0.04 * i, 0.4 + 0.05 * i], "intensity": 3.0 if strong else 0.15})
    for i in range(directionals):
        a = 2 * np.pi * (i + 0.5) / directionals
        strong = i >= 8
        lights.append({"name": f"d{i}", "type": "directional", "direction": [np.cos(a), -1.0, np.sin(a)],
                       "color": [0.3 + 0.07 * i, 0.8, 1.0 - 0.05 * i], "intensity": 0.5 if strong else 0.03})
    lights.append({"name": "sky", "type": "ambient", "color": [0.05, 0.05, 0.05]})
    lights.append({"name": "fill", "type": "ambient", "color": [0.02, 0.03, 0.01]})
    scene = {
        "version": 1,
        "meshes": [{"name": "ball", "primitive": {"type": "sphere", "radius": 0.8, "resolution": 24},
                    "material": "paint"},
                   {"name": "floor", "primitive": {"type": "plane", "size": 4.0}, "material": "floor",
                    "transform": {"translation": [0.0, -0.8, 0.0]}}],
        "materials": [{"name": "paint", "model": "lambert", "albedo": [0.8, 0.7, 0.6]},
                      {"name": "floor", "model": "ggx", "albedo": [0.6, 0.6, 0.6], "roughness": 0.6}],
        "lights": lights,
        "cameras": [{"name": "front", "width": 64, "height": 64, "fov_y": 45,
                     "look_at": {"eye": [0, 1.2, 3.2], "target": [0, -0.2, 0]}}],
        "background": [0.05, 0.05, 0.05],
        "render": {"mode": "antialias", "shadows": True, "mipmaps": False},
        "optimize": {"parameters": {"lights.p0.intensity": {"init": [0.2], "lr": 0.01}},
                     "targets": {"cameras": ["front"]},
                     "loss": {"l2": 1.0}, "optimizer": {"type": "adam", "lr": 0.01}, "steps": 10},
    }
    path = folder / "scene.json"
    path.write_text(json.dumps(scene))
    return path


def test_light_packing_matches_the_renderer(tmp_path):
    """The viewport's light packing (app/viewer/lights.py) is the renderer's (`DeviceScene.prepare`):
    every light, point lights then directional ones, the ambient colors summed."""
    from drstudio.app.viewer.lights import pack_lights
    from drstudio.renderer.device_scene import DeviceScene
    from drstudio.renderer.loading import load_scene

    scene = load_scene(write_many_lights_scene(tmp_path))
    ds = DeviceScene(scene, device="cpu")
    values = {path: ds.get(path) for path in ds.params}
    packed = pack_lights(scene, values)
    warp = ds.prepare().lights
    assert (packed.num_point, packed.num_directional) == (12, 10)
    for name in ("point_position", "point_color", "point_intensity", "dir_direction", "dir_color",
                 "dir_intensity"):
        np.testing.assert_array_equal(getattr(packed, name), getattr(warp, name).numpy().reshape(
            getattr(packed, name).shape), err_msg=name)
    np.testing.assert_allclose(packed.ambient, warp.ambient.numpy().reshape(3), rtol=1e-6)
    texels = packed.texels().reshape(-1, 4)  # what shaders/shading.glsl reads: 2 texels per light
    np.testing.assert_array_equal(texels[2 * 12 + 2 * 3, :3], packed.dir_direction[3])
    np.testing.assert_array_equal(texels[2 * 11 + 1, :3], packed.point_color[11])
    assert texels[2 * 5, 3] == packed.point_intensity[5]


def test_viewport_shades_every_light(display, tmp_path):
    """12 point and 10 directional lights, shadows on: the viewport's GL shading (every light from the
    light texture, a shadow map for each) equals the differentiable render of the same values, as in the
    session with one light. Switching off the lights beyond the eighth of each type moves the GL image
    far from the render, so a viewport that drops them fails here."""
    from drstudio.app.viewer import run_viewer
    from drstudio.renderer.params import Group, param_path

    scene = write_many_lights_scene(tmp_path)
    got: dict = {}
    t0 = time.monotonic()

    def on_frame(state):
        if time.monotonic() - t0 > SESSION_TIMEOUT:
            got["error"] = f"no snapshot with a render in {SESSION_TIMEOUT} s"
            state.quit = True
        if state.snapshot.render is None or state.gl is None or state.quit:
            return
        vp, cam = state.gl.viewport, state.active_view
        c = state.scene.cameras[cam]

        def render():
            return vp.render_camera(state, state.values[camera_pose(cam)], state.values[camera_intrinsics(cam)],
                                    c.width, c.height)

        got.update(gl=render(), render=state.snapshot.render, lights=vp.lights, tiles=vp.shadows.grid)
        extra = [param_path(Group.LIGHTS, n, "intensity") for n in ("p8", "p9", "p10", "p11", "d8", "d9")]
        kept = {p: state.values[p] for p in extra}
        state.values.update({p: np.zeros(1, np.float32) for p in extra})
        got["first_eight"] = render()
        state.values.update(kept)
        state.quit = True

    rc = run_viewer(str(scene), max_frames=5000, on_frame=on_frame)
    assert rc == 0 and "gl" in got, got.get("error")
    lights = got["lights"]
    assert (lights.num_point, lights.num_directional) == (12, 10)
    assert got["tiles"][0] * got["tiles"][1] >= 6 * 12 + 10, f"shadow atlas {got['tiles']} lacks tiles"
    gl_img, ref = got["gl"], got["render"]
    diff = np.abs(gl_img - ref)
    dropped = np.abs(got["first_eight"] - ref)
    if not (diff.mean() < 0.01 and np.median(diff) < 2e-3):
        import imageio.v3 as iio

        for name, img in (("viewport", gl_img), ("renderer", ref)):
            iio.imwrite(tmp_path / f"{name}.png", (np.clip(img, 0, 1) * 255).astype(np.uint8))
    assert diff.mean() < 0.01 and np.median(diff) < 2e-3, (
        f"viewport shading differs from the renderer with 22 lights: mean {diff.mean():.4f}, median "
        f"{np.median(diff):.4f} (images in {tmp_path})")
    assert dropped.mean() > 10 * max(diff.mean(), 1e-3), (
        f"the lights beyond the eighth barely matter (mean {dropped.mean():.4f}): the test would not see them "
        f"dropped")
    print(f"many lights: mean |gl - render| {diff.mean():.5f}, median {np.median(diff):.5f}; "
          f"without the extra lights {dropped.mean():.4f}")


class _Engine:
    """An engine stand-in for AppState: records what it is sent, or refuses as a full queue does."""

    def __init__(self, busy: bool = False):
        from drstudio.renderer.optim.engine import Snapshot

        self.busy = busy
        self.got = []
        self.snap = Snapshot(active_view="front")

    def snapshot(self):
        return self.snap

    def send(self, cmd):
        from drstudio.renderer.optim.engine import EngineBusy

        if self.busy:
            raise EngineBusy(f"engine busy: {cmd} was not queued")
        self.got.append(cmd)
        return cmd


def _state(engine):
    from drstudio.app.viewer.state import AppState

    p = "lights.key.position"
    return AppState(None, engine, params={}, values={p: np.zeros(3, np.float32)},
                    targets={p: np.zeros(3, np.float32)}, initial={p: np.ones(3, np.float32)},
                    lrs={p: 0.1}, weights={"l2": 1.0}, views=["front", "side"], steps=100, thumbnails={})


def test_send_mirrors_typed_commands():
    """`AppState.send` queues typed commands and updates the local copy through `Command.mirror`."""
    p = "lights.key.position"
    engine = _Engine()
    state = _state(engine)
    state.error_history[p] = [(0, 1.0)]
    sent = [state.send("set_value", p, [1.0, 2.0, 3.0]), state.send(commands.SetTargetValue, p, [4.0, 5.0, 6.0]),
            state.send(commands.SetFree(p, False)), state.send("set_lr", p, 0.5),
            state.send("set_loss_weight", "l2", 2.0), state.send(commands.SetSteps, 7),
            state.send("set_active_view", "side")]
    assert engine.got == state.sent == sent and all(isinstance(c, commands.Command) for c in sent)
    np.testing.assert_array_equal(state.values[p], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(state.targets[p], [4.0, 5.0, 6.0])
    assert state.stale_thumbnails == {"front", "side"}
    assert p not in state.free and state.lrs[p] == 0.5 and state.weights["l2"] == 2.0
    assert state.steps == 7 and state.active_view == "side"
    state.send("reset")
    np.testing.assert_array_equal(state.values[p], [1.0, 1.0, 1.0])
    assert state.error_history == {} and state.send_error == ""
    # throttled: the local copy follows at once, the engine gets the latest value when due
    state.send_throttled("drag", commands.SetValue, p, [7.0, 7.0, 7.0], interval=10.0)
    np.testing.assert_array_equal(state.values[p], [7.0, 7.0, 7.0])
    state.send_throttled("drag", commands.SetValue, p, [8.0, 8.0, 8.0], interval=10.0)
    state.release("drag")
    assert isinstance(engine.got[-1], commands.SetValue) and engine.got[-1].value.tolist() == [8.0, 8.0, 8.0]


def test_refused_commands_do_not_raise():
    """Bad arguments and a full engine queue are shown (`send_error`, with the engine's errors) and the UI
    goes on; a throttled value the engine could not take is kept and sent again."""
    from drstudio.app.viewer.panels import errors

    p = "lights.key.position"
    state = _state(_Engine())
    assert state.send("set_lr", p, float("nan")) is None and "learning rate" in state.send_error
    assert state.send("no_such_command") is None and "unknown command" in state.send_error
    assert state.send_throttled("k", commands.Step, 0) is None and "step count" in state.send_error
    assert state.sent == [] and errors(state) == [state.send_error]
    busy = _Engine(busy=True)
    state = _state(busy)
    assert state.send("start") is None and "busy" in state.send_error and state.sent == []
    state.send_throttled("drag", commands.SetValue, p, [1.0, 1.0, 1.0], interval=0.0)
    state.flush()
    assert state.throttle.pending(), "the value the engine could not take was dropped"
    busy.busy = False
    state.flush()
    assert not state.throttle.pending() and state.sent == busy.got and busy.got[0].value.tolist() == [1, 1, 1]
    state.send("start")
    assert state.send_error == ""


def test_plots_take_read_only_histories():
    """A snapshot's histories are read-only float64 views: the plot helpers read them without copying into
    them, and ImPlot draws them (in a headless ImGui frame)."""
    from drstudio.app.viewer.panels import PSNR_TERM, _plot_series, decimate, loss_series, psnr_series
    from imgui_bundle import imgui, implot

    def ro(values):
        a = np.asarray(values, np.float64)
        a.flags.writeable = False
        return a

    hist = {"loss": ro(np.linspace(1.0, 0.1, 1000)), "loss.l2": ro(np.linspace(1.0, 0.1, 1000)),
            f"loss.{PSNR_TERM}": ro([np.nan, np.nan, 20.0, 20.0, 21.5]), "grad.lights.key.position": ro([1.0, 2.0])}
    loss = loss_series(hist, x0=5)
    assert set(loss) == {"loss", "loss.l2"} and loss["loss"][0][0] == 5
    xs, ys = psnr_series(hist)
    assert xs.tolist() == [2.0, 4.0] and ys.tolist() == [20.0, 21.5]
    x, y = decimate(*loss["loss"])
    assert len(y) <= 301 and y[-1] == hist["loss"][-1]
    imgui.create_context()
    implot.create_context()
    try:
        io = imgui.get_io()
        io.set_ini_filename(None)  # no imgui.ini written into the working directory
        io.display_size = (800, 600)
        io.backend_flags |= imgui.BackendFlags_.renderer_has_textures
        imgui.new_frame()
        imgui.begin("plots")
        _plot_series(loss, "Loss")
        _plot_series({"psnr": (xs, ys)}, "PSNR", log_y=False, span=(0, 10), marks=ro([3.0]))
        _plot_series({"g": (np.arange(2), hist["grad.lights.key.position"])}, "Gradient norms", log_y=False)
        imgui.end()
        imgui.render()
    finally:
        implot.destroy_context()
        imgui.destroy_context()


def test_log_axes_are_bounded_by_the_data():
    """A regularizer that starts at 0 and a NaN do not stretch a log axis (issue 13 / 17: the loss plot ran
    from 1e-30 to 1); an axis with no positive value falls back to linear (None)."""
    from drstudio.app.viewer.panels import log_axis_limits

    series = {"loss": ([0, 1, 2], [1.0, 0.1, 0.01]), "loss.tv": ([0, 1, 2], [0.0, 1e-4, np.nan])}
    lo, hi = log_axis_limits(series)
    assert 1e-4 / 2 < lo < 1e-4 and 1.0 < hi < 2.0
    assert log_axis_limits({"a": ([0], [0.0]), "b": ([], [])}) is None
    lo, hi = log_axis_limits({"flat": ([0, 1], [0.5, 0.5])})
    assert lo < 0.5 < hi
