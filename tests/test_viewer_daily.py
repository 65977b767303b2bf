"""The viewer as a daily tool (issue 17), in a real window under Xvfb with real input (xdotool), as
test_viewer does: undo / redo of every edit kind with Ctrl+Z / Ctrl+Shift+Z and the Edit menu (a drag is
one step, the inverse is sent and reaches the engine), the Start button's label, render settings from
the Render menu (the engine's scene changes), the error popup (a refused command; the app keeps running),
the help overlay (F1, ?), the camera-marker toggle and the UI scale saved under $XDG_CONFIG_HOME."""

from __future__ import annotations

import json
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from drstudio.renderer.conventions import linear_to_srgb
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim import commands
from test_viewer import Session, write_scene

LIGHT = "lights.key.position"
ALBEDO = "materials.paint.albedo"


class DailySession(Session):
    def waiting_detail(self, state) -> str:
        return f"; sent {[str(c) for c in state.sent[-6:]]}, rects {sorted(k for k in state.rects if '.' in k)[:0]}"

    def key(self, state, *keys):
        vx, vy, vw, vh = state.viewport_rect
        ox, oy = state.window_pos
        self.input.move(ox + vx + vw * 0.1, oy + vy + vh * 0.9)  # the pointer's window gets the keys
        yield from self.frames(2)
        for k in keys:
            self.input("key", k)
            yield from self.frames(3)

    def hover(self, state, widget: str):
        ox, oy = state.window_pos
        x, y = state.rect_center(widget)
        self.input.move(ox + x, oy + y)
        yield from self.frames(4)

    def engine_problem(self, state):
        return state.engine.problem

    def run(self, state):
        problem = self.engine_problem(state)
        yield from self.until(state, lambda: state.snapshot.render is not None and "pane.render" in state.rects,
                              "the first snapshot with images")
        yield from self.frames(5)
        self.screen(state, "01_open")

        # -- a learning-rate drag in the parameter table: one undo step, undone and redone by keys --
        lr0 = state.lrs[LIGHT]
        x, y, w, h = state.rects[f"table.lr.{LIGHT}"]
        yield from self.drag(state, (x + w / 2, y + h / 2), (12, 0), steps=6)
        yield from self.until(state, lambda: abs(problem.lrs[LIGHT] - state.lrs[LIGHT]) < 1e-9
                              and state.lrs[LIGHT] != lr0, "the dragged learning rate to reach the engine")
        assert len(state.undo_stack) == 1, [s.label for s in state.undo_stack]  # the whole drag: one step
        lr1 = state.lrs[LIGHT]
        assert lr1 < 1.0, lr1  # a short drag changes a learning rate a little (it used to jump to 10)
        yield from self.key(state, "ctrl+z")
        assert state.lrs[LIGHT] == lr0 and state.sent[-1] == commands.SetLr(LIGHT, lr0), state.sent[-1]
        yield from self.until(state, lambda: problem.lrs[LIGHT] == lr0, "the engine to take the undo")
        yield from self.key(state, "ctrl+shift+z")
        assert state.lrs[LIGHT] == lr1
        yield from self.until(state, lambda: problem.lrs[LIGHT] == lr1, "the engine to take the redo")

        # -- a free flag --
        yield from self.click(state, f"table.free.{ALBEDO}")
        yield from self.until(state, lambda: ALBEDO not in state.snapshot.free, "the albedo to be fixed")
        yield from self.key(state, "ctrl+z")
        yield from self.until(state, lambda: ALBEDO in state.snapshot.free, "the undo to free the albedo again")

        # -- a current value (Inspector drag) and a target drag (gizmo): both one step each --
        yield from self.click(state, "scene.lights.key")
        assert state.selection == ("lights", "key")
        yield from self.frames(3)
        v0 = state.values[LIGHT].copy()
        x, y, w, h = state.rects[f"edit.current.{LIGHT}"]
        yield from self.drag(state, (x + w / 6, y + h / 2), (40, 0), steps=6)  # the x component
        assert np.abs(state.values[LIGHT] - v0).max() > 1e-4, "the drag did not edit the light"
        steps = len(state.undo_stack)
        yield from self.key(state, "ctrl+z")
        np.testing.assert_allclose(state.values[LIGHT], v0, atol=1e-6)
        assert isinstance(state.sent[-1], commands.SetValue) and len(state.undo_stack) == steps - 1

        yield from self.key(state, "f")  # frame the scene and its lights: the target light's gizmo in view
        t0 = state.targets[LIGHT].copy()
        gx, gy = state.project([t0])[0]
        yield from self.drag(state, (gx, gy), (60, 0), steps=8)
        yield from self.until(state, lambda: np.abs(problem.truth[LIGHT] - state.targets[LIGHT]).max() < 1e-5
                              and np.abs(state.targets[LIGHT] - t0).max() > 1e-3, "the target drag to reach the engine")
        assert state.undo_stack[-1].label == f"set target value {LIGHT}", state.undo_stack[-1].label
        self.screen(state, "02_after_target_drag")

        # -- the Edit menu lists the last actions; its Undo item undoes the target drag --
        yield from self.click(state, "menu.edit")
        yield from self.frames(3)
        self.screen(state, "03_edit_menu")
        yield from self.click(state, "menu.edit.undo")
        np.testing.assert_allclose(state.targets[LIGHT], t0, atol=1e-6)
        yield from self.until(state, lambda: np.abs(problem.truth[LIGHT] - t0).max() < 1e-6,
                              "the engine's target to go back")

        # -- a loss weight (scrolled into view in the Optimizer window) --
        w0 = state.weights["l2"]
        yield from self.hover(state, "button.pause")

        def weight_visible():
            wx, wy, ww, wh = state.rects["window.Optimizer"]
            x, y, w, h = state.rects["weight.l2"]
            return y > wy + 20 and y + h < wy + wh - 4

        for _ in range(20):
            if weight_visible():
                break
            self.input("click", 5)  # wheel down
            yield from self.frames(3)
        assert weight_visible(), (state.rects["weight.l2"], state.rects["window.Optimizer"])
        x, y, w, h = state.rects["weight.l2"]
        yield from self.drag(state, (x + w / 2, y + h / 2), (30, 0), steps=6)
        yield from self.until(state, lambda: problem.weights["l2"] == state.weights["l2"] != w0,
                              "the loss weight drag to reach the engine")
        yield from self.key(state, "ctrl+z")
        assert state.weights["l2"] == w0
        yield from self.until(state, lambda: problem.weights["l2"] == w0, "the engine to take the weight undo")

        # -- render settings from the Render menu (and their undo) --
        assert problem.scene.render.mode == "antialias"
        yield from self.click(state, "menu.render")
        yield from self.frames(2)
        self.screen(state, "04_render_menu")
        yield from self.click(state, "menu.render.hard")
        assert state.render.mode == "hard"
        yield from self.until(state, lambda: problem.scene.render.mode == "hard", "the engine to render hard")
        yield from self.click(state, "menu.render")
        yield from self.click(state, "menu.render.shadows")
        yield from self.until(state, lambda: problem.scene.render.shadows is False, "shadows off")
        yield from self.key(state, "ctrl+z", "ctrl+z")
        yield from self.until(state, lambda: problem.scene.render.shadows is True
                              and problem.scene.render.mode == "antialias", "the render settings undone")

        # -- Start / Resume / Running... (the Optimizer window scrolled back to its top) --
        wx, wy, ww, wh = state.rects["window.Optimizer"]
        ox, oy = state.window_pos
        self.input.move(ox + wx + 3, oy + wy + wh / 2)  # the window's margin: over a plot, the wheel zooms it
        yield from self.frames(3)
        for _ in range(30):  # wheel up until the window stops scrolling (at its top)
            y = state.rects["button.start"][1]
            self.input("click", 4)
            yield from self.frames(3)
            if state.rects["button.start"][1] == y:
                break
        yield from self.click(state, "button.start")
        yield from self.until(state, lambda: state.snapshot.state == "running", "start")
        yield from self.frames(3)
        sent = len(state.sent)
        yield from self.click(state, "button.start")  # "Running...": disabled
        assert len(state.sent) == sent, state.sent[sent:]
        yield from self.click(state, "button.pause")
        yield from self.until(state, lambda: state.snapshot.state == "paused", "pause")

        # -- a command the engine refuses: a modal popup with OK; the app keeps running --
        state.send(commands.SetLossWeight("no_such_term", 1.0))  # valid alone, refused by the engine's check
        yield from self.until(state, lambda: "error.ok" in state.rects, "the error popup")
        frame = state.frame
        yield from self.frames(5)
        assert state.frame >= frame + 5
        self.screen(state, "05_error_popup")
        assert "no_such_term" in (state.error_shown or ""), state.error_shown
        yield from self.click(state, "error.ok")
        yield from self.frames(3)
        assert "error.ok" not in state.rects and state.error_shown is None
        yield from self.click(state, "button.step")  # the app still works
        yield from self.until(state, lambda: state.snapshot.state == "paused" and not state.snapshot.error
                              or state.snapshot.step > 0, "a step after the error")

        # -- help overlay: F1 and ? open it, Escape / F1 close it --
        yield from self.key(state, "F1")
        assert state.show_help and "help" in state.rects
        self.screen(state, "06_help")
        yield from self.key(state, "Escape")
        assert not state.show_help
        yield from self.key(state, "question")
        assert state.show_help
        yield from self.key(state, "F1")
        assert not state.show_help

        # -- camera markers off: fewer overlay lines in the 3D view --
        with_cams = len(state.gl.viewport.overlay_lines(state))
        before = self.screen(state)
        yield from self.click(state, "menu.view")
        yield from self.click(state, "menu.view.cameras")
        assert state.gizmo.show_cameras is False
        assert len(state.gl.viewport.overlay_lines(state)) < with_cams
        yield from self.frames(3)
        self.screen(state, "07_no_camera_markers")
        del before

        # -- UI scale, saved in the settings file --
        yield from self.click(state, "menu.view")
        yield from self.hover(state, "menu.view.scale")
        yield from self.click(state, "menu.view.scale.1.25")
        assert state.ui_scale == 1.25
        yield from self.frames(3)
        self.screen(state, "08_scale_1.25")

        # -- File > Save render: into the recording folder; Screenshot: where the (test's) dialog says --
        yield from self.click(state, "menu.file")
        yield from self.click(state, "menu.file.render")
        saved = state.saved[-1]
        assert saved.parent == Path(state.record_dir) and saved.name.startswith("render_front_"), saved
        expected = np.round(linear_to_srgb(state.snapshot.render) * 255)
        assert np.abs(iio.imread(saved)[..., :3].astype(float) - expected).max() <= 1.0
        state.record_dir = None
        yield from self.click(state, "menu.file")
        yield from self.click(state, "menu.file.screenshot")
        yield from self.until(state, lambda: state.saved[-1] != saved, "the screenshot")
        assert state.saved[-1] == self.evidence / "chosen.png"
        assert iio.imread(state.saved[-1]).shape[:2] == (720, 1280)
        # File > Save scene as: the current values in a scene file that loads (its rendering: test_save_scene)
        yield from self.click(state, "menu.file")
        yield from self.click(state, "menu.file.scene")
        assert self.evidence / "saved_scene.json" in state.saved, state.saved  # and the optimized texture
        loaded = load_scene(self.evidence / "saved_scene.json")
        np.testing.assert_allclose(loaded.point_lights["key"].position, state.values[LIGHT], atol=1e-6)


def test_viewer_daily_tool(display, tmp_path, monkeypatch):
    from drstudio.app.viewer import menus, run_viewer
    from drstudio.app.viewer.menus import settings_path

    class Chosen:  # the native save dialog, answered at once
        def __init__(self, title, default, filters=("PNG images", "*.png")):
            self.name = "saved_scene.json" if "scene" in title else "chosen"
            assert default.endswith(".json" if "scene" in title else ".png"), default

        def ready(self):
            return True

        def result(self):
            return str(tmp_path / self.name)  # chosen: no suffix, .png is added

    monkeypatch.setattr(menus, "save_dialog", Chosen)

    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.chdir(tmp_path)
    scene = write_scene(tmp_path)
    session = DailySession(display, tmp_path)
    t0 = time.monotonic()

    def on_frame(state):
        if time.monotonic() - t0 > 150 and not session.done:
            session.error = session.error or AssertionError("session exceeded 150 s")
            state.quit = True
            return
        session.step(state)

    rc = run_viewer(str(scene), device="cpu", max_frames=20000, on_frame=on_frame, record_dir=tmp_path / "rec")
    if session.error is not None:
        raise AssertionError(f"{session.error}\n(screenshots in {tmp_path})") from session.error
    assert session.done and rc == 0
    assert settings_path() == config / "drstudio" / "viewer.json"
    assert json.loads(settings_path().read_text())["ui_scale"] == 1.25
    assert not (tmp_path / "viewer.json").exists() and not (tmp_path / "imgui.ini").exists()


def test_start_button_labels():
    from drstudio.app.viewer.panels import start_button

    assert start_button("idle") == ("Start###start", commands.Start)
    assert start_button("paused") == ("Resume###start", commands.Resume)
    assert start_button("running")[1] is None and start_button("running")[0].startswith("Running")
    for s in ("finished", "stopped", "error"):
        assert start_button(s)[1] is commands.Start


def test_undo_stack_merges_drags_and_sends_inverses():
    """AppState's undo stack without a window: a throttled drag is one step whose inverse is the value
    before the drag; undo / redo send commands (recorded like any other); a new edit clears redo; reset
    clears the stack; a grad image is kept across snapshots without one (the overlay does not blink)."""
    from drstudio.renderer.optim.engine import Snapshot
    from test_viewer import _Engine, _state

    engine = _Engine()
    state = _state(engine)
    for v in ([1, 0, 0], [2, 0, 0], [3, 0, 0]):
        state.send_throttled(("current", LIGHT), commands.SetValue, LIGHT, v, interval=0.0)
        state.flush()
    state.release(("current", LIGHT))
    state.send(commands.SetLr, LIGHT, 0.5)
    state.send_throttled(("weight", "l2"), commands.SetLossWeight, "l2", 2.0)
    state.send_throttled(("weight", "l2"), commands.SetLossWeight, "l2", 3.0)
    assert [s.label for s in state.undo_stack] == [f"set value {LIGHT}", f"set lr {LIGHT}", "set loss weight l2"]
    assert state.undo() == commands.SetLossWeight("l2", 1.0)  # the open drag is released first, then undone
    assert engine.got[-2] == commands.SetLossWeight("l2", 3.0) and state.weights["l2"] == 1.0
    assert state.undo() == commands.SetLr(LIGHT, 0.1) and state.lrs[LIGHT] == 0.1
    inverse = state.undo()
    assert isinstance(inverse, commands.SetValue) and inverse.value.tolist() == [0, 0, 0]
    assert state.undo() is None and state.values[LIGHT].tolist() == [0, 0, 0]
    redo = state.redo()
    assert redo.value.tolist() == [3, 0, 0] and state.values[LIGHT].tolist() == [3, 0, 0]
    assert engine.got[-1] is redo
    state.free = {LIGHT}
    state.send(commands.SetFree, LIGHT, False)
    assert state.redo_stack == [] and state.undo() == commands.SetFree(LIGHT, True)
    state.send(commands.Reset)
    assert state.undo_stack == [] and state.undo() is None

    grad = np.ones((4, 4, 3), np.float32)
    engine.snap = Snapshot(active_view="front", grad_image=grad, step=1)
    state.pull()
    engine.snap = Snapshot(active_view="front", grad_image=None, step=2)
    state.pull()
    assert state.grad_image is grad  # kept until a new one arrives
    engine.snap = Snapshot(active_view="side", grad_image=None, step=3)
    state.pull()
    assert state.grad_image is None  # another view: the old view's gradient is not drawn over it
