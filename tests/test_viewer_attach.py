"""`drstudio view --attach`: the viewer drives a run served in another engine (issue 16 item 4) — start,
pause, a target drag through the gizmo — in a real window under Xvfb; a wrong token is refused."""

from __future__ import annotations

import time

import numpy as np
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.engine import Engine
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.optim.remote import EngineServer
from test_viewer import Session, write_scene


class AttachSession(Session):
    def __init__(self, display, evidence, engine):
        super().__init__(display, evidence)
        self.served = engine

    def waiting_detail(self, state) -> str:
        return (f"; sent {[str(c) for c in state.sent]}, send error {getattr(state, 'send_error', '')!r}, "
                f"start at {state.rects.get('button.start')}, window {state.window_pos}")

    def run(self, state):
        yield from self.until(state, lambda: state.snapshot.render is not None and "pane.render" in state.rects,
                              "the first served snapshot")
        yield from self.frames(10)  # the window mapped and hovered before the first click
        self.screen(state, "00_attached")
        yield from self.click(state, "button.start")
        yield from self.until(state, lambda: self.served.snapshot().state == "running"
                              and state.snapshot.step >= 2, "the served run to start")
        yield from self.click(state, "button.pause")
        yield from self.until(state, lambda: self.served.snapshot().state == "paused", "the served run to pause")
        # drag the target light's gizmo, as in test_viewer: the served problem's target moves
        yield from self.click(state, "scene.lights.key")
        assert state.selection == ("lights", "key"), state.selection
        vx, vy, vw, vh = state.viewport_rect
        ox, oy = state.window_pos
        self.input.move(ox + vx + vw * 0.1, oy + vy + vh * 0.9)  # hover the viewport: it takes the key
        yield from self.frames(3)
        self.input("key", "f")  # frame the scene and its lights, so the light's gizmo is in view
        yield from self.frames(3)
        old = self.served.problem.truth["lights.key.position"].copy()
        gx, gy = state.project([state.targets["lights.key.position"]])[0]
        self.screen(state, "01_before_drag")
        yield from self.drag(state, (gx, gy), (60, 0), button=1, steps=8)
        self.screen(state, "02_after_drag")
        yield from self.until(state, lambda: np.abs(self.served.problem.truth["lights.key.position"] - old).max()
                              > 1e-3, "the served target to move")
        np.testing.assert_allclose(self.served.problem.truth["lights.key.position"],
                                   state.targets["lights.key.position"], atol=1e-5)
        self.screen(state, "attached")


def test_viewer_attaches_to_a_served_run(display, tmp_path):
    from drstudio.app.viewer import run_viewer

    problem = Problem(load_scene(write_scene(tmp_path)), "cpu")
    engine = Engine(problem)
    engine.start_thread()
    server = EngineServer(engine, problem, ("127.0.0.1", 0))
    try:
        assert run_viewer(None, attach=server.address, token="not the token", max_frames=5) == 2
        session = AttachSession(display, tmp_path, engine)
        t0 = time.monotonic()

        def on_frame(state):
            if time.monotonic() - t0 > 60 and not session.done:
                session.error = session.error or AssertionError("attach session exceeded 60 s")
                state.quit = True
                return
            session.step(state)

        rc = run_viewer(None, attach=server.address, token=server.token, max_frames=5000, on_frame=on_frame)
        if session.error is not None:
            raise AssertionError(f"{session.error}\n(screenshots in {tmp_path})") from session.error
        assert session.done and rc == 0
        assert engine.snapshot().state == "paused"  # the viewer closing leaves the served run as it was
    finally:
        server.close()
        engine.shutdown()
