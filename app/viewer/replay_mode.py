"""`drstudio replay DIR`: the viewer over a recorded session instead of a running engine.

The same window, viewport, panels and overlays as `drstudio view`; what changes:
- `ReplayEngine` stands where the `Engine` stands: `snapshot()` is `source.snapshot_at(position)` at
  the timeline's position (`app.replay_source.Playback`), built once per position; `send()` refuses.
- `ReplayState` is the `AppState` of a recording: read-only (commands are refused and every editing
  widget is disabled; the target gizmos are inactive), and `pull()` advances the playback clock and,
  when the position changes, takes that position's snapshot plus what a snapshot does not carry:
  every optimizable parameter and the edited target values of the keyframe the values come from, the
  learning rates, loss weights and step budget recorded there, the target thumbnail of each view,
  and the parameter-error history up to the position.
- `timeline_panel` is the "Timeline" window docked along the bottom: play/pause, first/previous/
  next/last step, the playback speed (0.25x..16x of the recorded pace), the position, a scrubber over
  [first_step, last_step], and the user edits as orange ticks on it with markers below (hover: the
  command; click: seek there). Space plays/pauses, Left/Right step, Home/End jump.

The loss and gradient-norm plots show the history up to the position over the whole timeline's
x-range, with the edits as vertical lines. Nothing here launches a Warp kernel or touches an engine.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
from drstudio.app.replay_source import Playback, ReplaySource
from drstudio.renderer.optim import commands
from drstudio.renderer.optim.engine import Snapshot
from drstudio.renderer.recording import RecordingError
from imgui_bundle import imgui

from .state import AppState, param_infos
from .windows import begin, remember

log = logging.getLogger("drstudio.viewer")

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
EDIT_COLOR = (1.0, 0.6, 0.15, 1.0)  # the target/edit orange of the viewport
KEYFRAME_COLOR = (0.6, 0.6, 0.6, 0.7)
HEAD_COLOR = (0.35, 0.8, 1.0, 1.0)
MARKER_SIZE = (12.0, 14.0)  # clickable edit marker below the scrubber (w, h) in pixels
TIMELINE = "Timeline"


class ReplayEngine:
    """What the UI reads instead of an `Engine`: the recording's snapshot at the playback position."""

    def __init__(self, source: ReplaySource, playback: Playback):
        self.source = source
        self.playback = playback
        self._step: int | None = None
        self._snap: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        """The snapshot at the current position (the same object until the position changes)."""
        step = self.playback.position
        if step != self._step:
            self._snap = self.source.snapshot_at(step)
            self._step = step
        return self._snap

    def send(self, command: commands.Command | type[commands.Command] | str, *args) -> None:
        kind = getattr(command, "kind", command)  # a Command, a Command class, or a kind
        raise RuntimeError(f"a replay is read-only: command {kind!r} cannot be sent")


class ReplayState(AppState):
    """The viewer's state over a recording (see the module docstring). Build it with `from_source`."""

    def __init__(self, source: ReplaySource, playback: Playback, base: dict, **kwargs):
        self.source = source
        self.playback = playback
        self._base = base  # path -> value of every scene parameter in the recording's scene file
        self._values_at: int | None = -1  # keyframe position the values come from (-1: none yet)
        self._thumbs_key = None
        self._clock = time.perf_counter()
        self._resume_after_scrub = False
        super().__init__(source.scene, ReplayEngine(source, playback), **kwargs)
        self.read_only = True
        self.history_start = source.first_step
        self.plot_span = (source.first_step, max(source.last_step, source.first_step + 1))
        self.plot_marks = tuple(sorted({m.step for m in source.edits}))
        # every keyframe is read once here; the error plot is sliced per position afterwards
        self._error_series = source.error_history(source.last_step)
        self.speeds = tuple(sorted(set(SPEEDS) | {float(playback.speed)}))
        self._apply(self.snapshot)

    @classmethod
    def from_source(cls, source: ReplaySource, speed: float = 1.0) -> ReplayState:
        scene = source.scene
        if scene is None:
            raise ValueError(f"{source.recording.path}: the recording holds no scene file (the session's scene "
                             f"was built in code), which the viewer needs; use --export or --verify")
        params = param_infos(scene, source.param_specs)
        base = {path: np.ascontiguousarray(p.value, np.float32) for path, p in scene.params().items()}
        first = source.all_values_at(source.first_step)
        kf = _keyframe_state(source, source.first_step)
        return cls(source, Playback(source, speed), base, params=params, values=dict(base), targets=dict(base),
                   initial={k: np.array(v, np.float32) for k, v in first.items()},
                   lrs=dict(kf.get("lrs", {})), weights=dict(kf.get("weights", {})), views=list(source.views),
                   steps=int(kf.get("steps", source.last_step)), thumbnails={})

    # -- the timeline ---------------------------------------------------------------------------------
    @property
    def position(self) -> int:
        return self.playback.position

    def seek(self, step: int) -> None:
        self.playback.seek(step)

    def pull(self) -> bool:
        """Advance the playback clock; swap in the snapshot of the new position. True when it is new."""
        now = time.perf_counter()
        self.playback.update(now - self._clock)
        self._clock = now
        snap = self.engine.snapshot()
        if snap is self.snapshot:
            return False
        self.snapshot = snap
        self.serial += 1
        self._apply(snap)
        return True

    def _apply(self, snap: Snapshot) -> None:
        src = self.source
        self.free = set(snap.free)
        if snap.active_view:
            self.active_view = snap.active_view
        at = src.values_step(snap.step)
        if at != self._values_at:  # a new keyframe: every parameter, targets, settings, errors
            self._values_at = at
            self.values.clear()
            self.values.update(self._base)
            self.values.update(src.all_values_at(snap.step))
            self.targets.clear()
            self.targets.update(self._base)
            self.targets.update({k: np.asarray(v, np.float32) for k, v in src.targets_at(snap.step).items()})
            kf = _keyframe_state(src, snap.step)
            self.lrs.update(kf.get("lrs", {}))
            self.weights.update(kf.get("weights", {}))
            self.steps = int(kf.get("steps", self.steps))
            self.version += 1
        self.values.update(snap.values)  # the same arrays: a snapshot's values are the keyframe's
        self.error_history = {path: [(x, e) for x, e in zip(xs, ys) if x <= snap.step]
                              for path, (xs, ys) in self._error_series.items()}
        self._update_thumbnails(snap.step)

    def _update_thumbnails(self, step: int) -> None:
        """Each view's target thumbnail: the latest recorded at or before `step`, else its first."""
        rec = self.source.recording
        files: dict[str, str] = {}
        for at, t in rec.thumbs.items():
            view = t.get("view", "")
            if view and (at <= step or view not in files):
                files[view] = t["target"]
        key = tuple(sorted(files.items()))
        if key == self._thumbs_key:
            return
        self._thumbs_key = key
        self.thumbnails = {view: rec.image(file) for view, file in files.items()}

    def marker_groups(self) -> list[tuple[int, list[str]]]:
        """User edits grouped by position: [(step, [labels])], in timeline order."""
        groups: dict[int, list[str]] = {}
        for m in self.source.edits:
            groups.setdefault(m.step, []).append(m.label)
        return sorted(groups.items())


def _keyframe_state(source: ReplaySource, step: int) -> dict:
    """state.json of the keyframe the values at `step` come from ({} when there is none or it is damaged)."""
    at = source.values_step(step)
    if at is None:
        return {}
    try:
        return source.recording.keyframe(at).state
    except RecordingError:
        return {}


# -- the Timeline window ------------------------------------------------------------------------------

def slider_x(rect, first: int, last: int, step: float) -> float:
    """Screen x of `step` on an ImGui integer slider spanning `rect` (x, y, w, h): the center of its grab
    (ImGui's SliderBehavior: 2 px padding, a grab one unit wide or GrabMinSize)."""
    x, _, w, _ = rect
    pad = 2.0
    size = w - 2 * pad
    grab = min(max(size / (last - first + 1), imgui.get_style().grab_min_size), size)
    t = (step - first) / max(last - first, 1)
    return x + pad + grab / 2 + t * (size - grab)


def _icon_button(state: ReplayState, label: str, name: str, tip: str) -> bool:
    clicked = imgui.button(label)
    remember(state, name)
    imgui.set_item_tooltip(tip)
    return clicked


def _shortcuts(state: ReplayState) -> None:
    io = imgui.get_io()
    if io.want_text_input or io.key_ctrl:
        return
    pb, src = state.playback, state.source
    if imgui.is_key_pressed(imgui.Key.space, False):
        pb.toggle()
    for key, delta in ((imgui.Key.left_arrow, -1), (imgui.Key.right_arrow, 1)):
        if imgui.is_key_pressed(key):
            pb.pause()
            pb.seek(pb.position + delta)
    if imgui.is_key_pressed(imgui.Key.home, False):
        pb.seek(src.first_step)
    if imgui.is_key_pressed(imgui.Key.end, False):
        pb.seek(src.last_step)


def timeline_panel(state: ReplayState) -> None:
    """The Timeline window (see the module docstring)."""
    flags = imgui.WindowFlags_.no_scrollbar | imgui.WindowFlags_.no_scroll_with_mouse
    if not begin(state, TIMELINE, flags):
        imgui.end()
        return
    _shortcuts(state)
    pb, src, snap = state.playback, state.source, state.snapshot
    first, last = src.first_step, src.last_step

    if _icon_button(state, "Pause" if pb.playing else " Play ", "timeline.play", "play / pause (Space)"):
        pb.toggle()
    imgui.same_line()
    for label, name, tip, target in (("|<", "first", "first step (Home)", first),
                                     ("<", "prev", "previous step (Left)", pb.position - 1),
                                     (">", "next", "next step (Right)", pb.position + 1),
                                     (">|", "last", "last step (End)", last)):
        if _icon_button(state, label, f"timeline.{name}", tip):
            pb.pause()
            pb.seek(target)
        imgui.same_line()
    imgui.set_next_item_width(80)
    opened = imgui.begin_combo("speed", f"{pb.speed:g}x")
    remember(state, "timeline.speed")
    if opened:
        for s in state.speeds:
            if imgui.selectable(f"{s:g}x", s == pb.speed)[0]:
                pb.speed = s
            remember(state, f"timeline.speed.{s:g}")
        imgui.end_combo()
    imgui.same_line(0.0, 24.0)
    kf = src.values_step(snap.step)
    imgui.text(f"step {snap.step}  ({first}..{last})")
    remember(state, "timeline.step")
    imgui.same_line()
    imgui.text_disabled(f"values: keyframe at {kf if kf is not None else '-'}   loss {snap.loss:.4g}   "
                        f"{len(src.edits)} edits   REPLAY (read-only)")
    if src.warnings:
        imgui.same_line()
        imgui.text_colored(EDIT_COLOR, f"{len(src.warnings)} warning(s)")
        imgui.set_item_tooltip("\n".join(src.warnings))

    # the scrubber: dragging it pauses playback and resumes on release
    imgui.set_next_item_width(-1)
    changed, value = imgui.slider_int("##scrubber", pb.position, first, max(last, first), "step %d")
    remember(state, "timeline.scrubber")
    if imgui.is_item_activated():
        state._resume_after_scrub = pb.playing
        pb.pause()
    if changed:
        pb.seek(value)
    if imgui.is_item_deactivated() and state._resume_after_scrub:
        state._resume_after_scrub = False
        pb.play()
    rect = state.rects["timeline.scrubber"]
    draw = imgui.get_window_draw_list()
    x0, y0, w, h = rect
    edit_col = imgui.get_color_u32(EDIT_COLOR)
    groups = state.marker_groups()
    for step, _ in groups:  # ticks on the scrubber itself
        x = slider_x(rect, first, last, step)
        draw.add_line((x, y0 + 1), (x, y0 + h - 1), edit_col, 2.0)

    # the strip below: keyframes (gray dots), the position (blue), clickable edit markers (orange)
    top = imgui.get_cursor_screen_pos()
    mw, mh = MARKER_SIZE
    kf_col = imgui.get_color_u32(KEYFRAME_COLOR)
    for at in src.keyframe_steps:
        draw.add_circle_filled((slider_x(rect, first, last, at), top.y + mh / 2), 2.0, kf_col)
    xh = slider_x(rect, first, last, snap.step)
    draw.add_triangle_filled((xh, top.y), (xh - 5, top.y + 7), (xh + 5, top.y + 7), imgui.get_color_u32(HEAD_COLOR))
    for i, (step, labels) in enumerate(groups):
        x = slider_x(rect, first, last, step)
        imgui.set_cursor_screen_pos((x - mw / 2, top.y))
        clicked = imgui.invisible_button(f"##edit{i}", (mw, mh))
        remember(state, f"timeline.marker.{i}")
        hovered = imgui.is_item_hovered()
        grow = 1.5 if hovered else 0.0
        draw.add_triangle_filled((x, top.y + 1 - grow), (x - mw / 2 - grow, top.y + mh),
                                 (x + mw / 2 + grow, top.y + mh), edit_col)
        if hovered:
            imgui.set_tooltip(f"step {step}: " + "\n         ".join(labels) + "\n(click: go there)")
        if clicked:
            pb.pause()
            pb.seek(step)
    imgui.set_cursor_screen_pos((top.x, top.y + mh + 2))
    imgui.dummy((1.0, 1.0))
    imgui.end()


# -- entry point --------------------------------------------------------------------------------------

def run_replay(source, *, speed: float = 1.0, max_frames: int | None = None, on_frame=None) -> int:
    """Open the viewer in replay mode on a recording (`ReplaySource` or its folder) and run until the
    window closes (or `max_frames`). `speed`: playback speed, times the recorded pace. `on_frame(state)`:
    as in `run_viewer` (the state is a `ReplayState`). Returns 0, 2 for an unreadable recording, one
    without a scene file, a bad speed or no display, 130 when interrupted."""
    from .app import EXIT_INTERRUPTED, EXIT_USER_ERROR, ViewerApp

    try:
        if not isinstance(source, ReplaySource):
            source = ReplaySource(source)
        state = ReplayState.from_source(source, speed=speed)
    except (RecordingError, ValueError) as exc:
        print(f"drstudio replay: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    # a new snapshot is a new position (playing or scrubbing): draw those at up to 30 fps
    app = ViewerApp(state, title=f"drstudio replay - {Path(source.recording.path).name}", snapshot_fps=30.0)
    app.extra_windows = (timeline_panel,)
    app.bottom_window = TIMELINE
    try:
        return app.run(max_frames=max_frames, on_frame=on_frame)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
