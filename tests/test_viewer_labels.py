"""No clipped labels at 1280x720 (issue 17 item 6): the default layout, in a real window under Xvfb, with
the labelling calls of ImGui wrapped so that each label's text width (`imgui.calc_text_size`) is compared
with the room its window or table column leaves it (the draw list's clip rectangle). A label may be cut
only when the full text is its tooltip (`panels._tooltip`, which the path column of the parameter table
uses on purpose). Every panel is walked: the Inspector with a light, a material, a mesh and a camera
selected, the Camera path tab, the Images and Views windows, the menu bar."""

from __future__ import annotations

import time

from test_viewer import Session, write_scene

LABELLED = ("text", "text_disabled", "text_colored", "bullet_text", "selectable", "checkbox", "button",
            "small_button", "radio_button", "separator_text")
# widgets whose label is drawn right of the frame: the item's rect ends where the label ends
FRAMED = ("combo", "drag_float", "drag_float2", "drag_float3", "drag_float4", "drag_int", "slider_float", "slider_int",
          "input_int", "input_float", "input_text", "input_text_with_hint", "color_edit3")


class LabelAudit:
    """Wraps ImGui's labelling functions; `clipped` collects (window, label, needed px, room px)."""

    def __init__(self, imgui, panels, monkeypatch):
        self.imgui = imgui
        self.on = False
        self.clipped: dict[tuple[str, str], tuple[float, float]] = {}
        self._last: tuple[str, str] | None = None
        for name in LABELLED + FRAMED:
            if hasattr(imgui, name):
                monkeypatch.setattr(imgui, name, self._wrap(name, getattr(imgui, name)))
        tooltip = panels._tooltip

        def _tooltip(text: str) -> None:  # a label cut short but shown in full in its tooltip is fine
            if self._last is not None and self._last[1] in text:
                self.clipped.pop(self._last, None)
            self._last = None
            tooltip(text)

        monkeypatch.setattr(panels, "_tooltip", _tooltip)

    @staticmethod
    def label_of(name: str, args) -> str | None:
        if name == "text_colored":
            text = args[1] if len(args) > 1 else None
        else:
            text = args[0] if args else None
        if not isinstance(text, str):
            return None
        return text.split("##")[0]  # the visible part ("###id" and "##id" suffixes are not drawn)

    def _wrap(self, name: str, fn):
        imgui = self.imgui

        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            text = self.label_of(name, args)
            self._last = None
            if not self.on or not text or "\n" in text:
                return out
            if not imgui.is_item_visible():  # scrolled out of its window: not seen, not clipped
                return out
            left = imgui.get_item_rect_min().x
            if name in FRAMED:
                left = imgui.get_item_rect_max().x - imgui.calc_text_size(text).x
            elif name in ("checkbox", "radio_button"):  # the label follows the box and a gap
                left = imgui.get_item_rect_max().x - imgui.calc_text_size(text).x
            elif name in ("button", "small_button", "selectable"):
                left += imgui.get_style().frame_padding.x if name != "selectable" else 0.0
            need = imgui.calc_text_size(text).x
            room = imgui.get_window_draw_list().get_clip_rect_max().x - left
            if need > room + 1.0:
                key = (imgui.internal.get_current_window().name.split("###")[0], text)
                self.clipped[key] = (need, room)
                self._last = key
            return out

        return wrapped


class WalkSession(Session):
    def run(self, state):
        yield from self.until(state, lambda: state.snapshot.render is not None and "pane.render" in state.rects,
                              "the first snapshot with images", timeout=60)
        state.send("step", 3)  # the read-outs a run adds (gradient norms, errors, rates) must fit too
        yield from self.until(state, lambda: state.snapshot.step >= 3 and state.snapshot.state == "paused"
                              and state.snapshot.grad_norms, "three steps", timeout=60)
        yield from self.frames(4)
        self.audit.on = True
        yield from self.frames(2)
        self.screen(state, "01_default")
        for sel in (("lights", "key"), ("materials", "paint"), ("materials", "floor"), ("meshes", "ball"),
                    ("cameras", "front")):
            state.selection = sel
            yield from self.frames(3)
        state.focus_window = "Camera path"
        yield from self.frames(3)
        self.screen(state, "02_camera_path")
        state.focus_window = "Overlays"
        yield from self.frames(3)
        # the check itself: at twice the UI scale labels do not fit, and it says so
        self.audit.on = False
        found, self.audit.clipped = self.audit.clipped, {}
        state.ui_scale = 2.0
        yield from self.frames(2)
        self.audit.on = True
        yield from self.frames(2)
        self.audit.on = False
        self.results["at_2x"] = len(self.audit.clipped)
        self.audit.clipped = found
        state.ui_scale = 1.0
        yield from self.frames(2)


def test_no_clipped_labels_at_1280x720(display, tmp_path, monkeypatch):
    from drstudio.app.viewer import panels, run_viewer
    from imgui_bundle import imgui

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # the default UI scale
    session = WalkSession(display, tmp_path)
    session.audit = LabelAudit(imgui, panels, monkeypatch)
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
    assert session.results["at_2x"] > 5, session.results  # the audit sees clipping where there is some
    clipped = {f"{w}: {t!r} needs {n:.0f} px, has {r:.0f}": None for (w, t), (n, r) in session.audit.clipped.items()}
    assert not clipped, "clipped labels at 1280x720:\n" + "\n".join(clipped)


def test_no_nan_loss_before_the_first_step():
    from types import SimpleNamespace

    from drstudio.app.viewer.panels import loss_text

    assert loss_text(SimpleNamespace(step=0, loss=float("nan"))) == "-"  # idle: no loss yet
    assert loss_text(SimpleNamespace(step=3, loss=float("nan"))) == "nan"  # a step's NaN is news: shown
    assert loss_text(SimpleNamespace(step=3, loss=0.00123456), 4) == "0.001235"
