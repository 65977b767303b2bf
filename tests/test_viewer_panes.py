"""The image panes' zoom (wheel), pan (drag) and pixel read-out (issue 17 item 6), in a real window under
Xvfb with real input (xdotool): the read-out gives the linear values of the pixel under the mouse in the
render, the target and their difference; the wheel zooms about the mouse (the pixel under it stays under
it, and the screen there shows that pixel's color); a drag pans; a double-click fits the image again."""

from __future__ import annotations

import time

import numpy as np
from drstudio.renderer.conventions import linear_to_srgb
from test_viewer import Session, write_scene


class PaneSession(Session):
    def hover(self, state, x, y):
        ox, oy = state.window_pos
        self.input.move(ox + x, oy + y)
        yield from self.frames(4)

    def run(self, state):
        ps = state.panes
        yield from self.until(state, lambda: state.snapshot.render is not None and "pane.target" in state.rects,
                              "the first snapshot with images", timeout=60)
        yield from self.frames(4)
        render, target = state.snapshot.render, state.snapshot.target
        h, w = target.shape[:2]
        x0, y0, pw, ph = state.rects["pane.target"]
        mx, my = x0 + pw * 0.55, y0 + ph * 0.4  # on the ball
        yield from self.hover(state, mx, my)
        expected = (int((mx - x0) / pw * w), int((my - y0) / ph * h))
        assert ps.probe is not None and max(abs(a - b) for a, b in zip(ps.probe, expected, strict=True)) <= 1, \
            (ps.probe, expected)
        px, py = ps.probe
        np.testing.assert_allclose(ps.probe_values["target"], target[py, px], atol=1e-6)
        np.testing.assert_allclose(ps.probe_values["render"], render[py, px], atol=1e-6)
        np.testing.assert_allclose(ps.probe_values["diff"], np.abs(render[py, px] - target[py, px]), atol=1e-6)
        assert "images.readout" in state.rects

        # wheel up: zoom about the mouse; the same pixel stays under it and fills the screen around it
        for _ in range(8):
            self.input("click", 4)
            yield from self.frames(2)
        yield from self.until(state, lambda: ps.zoom > 4.0, "the panes to zoom")
        yield from self.frames(3)
        assert max(abs(a - b) for a, b in zip(ps.probe, (px, py), strict=True)) <= 1, (ps.probe, (px, py))
        px, py = ps.probe
        img = self.screen(state, "01_zoomed").astype(float)
        seen = img[int(my), int(mx)]
        want = np.round(linear_to_srgb(np.clip(target[py, px], 0, 1)) * 255)
        assert np.abs(seen - want).max() <= 4, (seen, want)
        zoom = ps.zoom

        # drag right: the image moves right (the view's center moves left)
        c0 = ps.center
        yield from self.drag(state, (mx, my), (pw * 0.2, 0), steps=6)
        assert ps.center[0] < c0[0] - 0.01 and abs(ps.center[1] - c0[1]) < 1e-3 and ps.zoom == zoom, (c0, ps.center)
        # double-click: fit again
        ox, oy = state.window_pos
        self.input.move(ox + mx, oy + my)
        yield from self.frames(2)
        self.input("click", "--repeat", "2", "--delay", "60", 1)
        yield from self.until(state, lambda: ps.zoom == 1.0 and ps.center == (0.5, 0.5), "the double-click fit")
        # off the panes: no read-out
        vx, vy, vw, vh = state.viewport_rect
        yield from self.hover(state, vx + vw / 2, vy + vh / 2)
        assert ps.probe is None


def test_image_pane_zoom_pan_readout(display, tmp_path, monkeypatch):
    from drstudio.app.viewer import run_viewer

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    session = PaneSession(display, tmp_path)
    scene = write_scene(tmp_path)
    t0 = time.monotonic()

    def on_frame(state):
        if time.monotonic() - t0 > 120 and not session.done:
            session.error = session.error or AssertionError("session exceeded 120 s")
            state.quit = True
            return
        session.step(state)

    rc = run_viewer(str(scene), device="cpu", max_frames=5000, on_frame=on_frame)
    if session.error is not None:
        raise AssertionError(f"{session.error}\n(screenshots in {tmp_path})") from session.error
    assert session.done and rc == 0


def test_pane_zoom_keeps_the_point_under_the_mouse():
    from drstudio.app.viewer.state import PaneSettings

    ps = PaneSettings()
    assert ps.pixel((0.3, 0.7), 64, 32) == (19, 22)
    ps.zoom_at(4.0, (0.3, 0.7))
    assert ps.zoom == 4.0 and ps.pixel((0.3, 0.7), 64, 32) == (19, 22)
    u0, v0, u1, v1 = ps.region()
    assert abs((u1 - u0) - 0.25) < 1e-12 and 0 <= u0 and u1 <= 1 and 0 <= v0 and v1 <= 1
    ps.pan(-10.0, 0.0)  # far left: clamped at the image's right edge
    assert abs(ps.region()[2] - 1.0) < 1e-12
    ps.zoom_at(1e6, (0.5, 0.5))
    assert ps.zoom == PaneSettings.MAX_ZOOM
    ps.zoom_at(1e-6, (0.5, 0.5))
    assert ps.zoom == 1.0 and ps.region() == (0.0, 0.0, 1.0, 1.0)
