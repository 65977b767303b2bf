"""A recording as the viewer's replay mode reads it: `ReplaySource` turns a recording into what the live
viewer reads from the engine (`Snapshot`s), position by position, and `Playback` is the play/pause clock
of its timeline.

Its own module (not `app.replay`, the `drstudio replay` command) so that the viewer's replay mode and
the command that opens it do not import each other: `app.replay` -> `app.viewer` -> `app.viewer.
replay_mode` -> here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from drstudio.renderer.optim.engine import Snapshot
from drstudio.renderer.recording import RecordingError, load_recording
from drstudio.renderer.recording import format as fmt
from drstudio.renderer.recording.reader import Recording


@dataclass(frozen=True)
class EditMarker:
    """A command on the timeline: `step` (position), `kind` (engine command), `args` (decoded: NumPy
    arrays for values), `label` (short text for a tooltip), `edit` (True for commands that change the
    optimization, `format.EDIT_COMMANDS`; False for start/pause/resume/stop/step/set_active_view)."""

    step: int
    kind: str
    args: tuple
    label: str
    edit: bool


class ReplaySource:
    """A recording as the viewer's replay mode reads it. Pure NumPy: no Warp launch, no engine, no
    thread; every method returns quickly (keyframes and thumbnails are read from disk on first use and
    cached) and may be called from the UI thread.

    Timeline. Positions are steps: position s is the state after s optimization steps of the session
    (for a resumed recording the first position is the step it was resumed from). They keep counting
    across a `reset` command, where the problem's own step index restarts.
      first_step, last_step      int, the span of the scrubber (inclusive)
      edits                      list[EditMarker]: user edits, to mark on the timeline
      commands                   list[EditMarker]: every recorded command (edits and run control)
      keyframe_steps             list[int]: positions with exact parameter values
      thumbnail_steps            list[int]: positions with a render thumbnail
      time_at(step) -> float     optimizer seconds from first_step to `step` (sum of recorded step times)
      step_at_time(t) -> int     the inverse (for playing at the recorded pace; see `Playback`)
    Data at a position.
      snapshot_at(step) -> Snapshot, the engine's type, filled as follows:
        step            the position asked for (clamped to the timeline)
        state           "replay"
        loss, loss_terms, grad_norms   of the last step taken before `step` (nan / {} at first_step)
        values          free parameter -> value, from the latest keyframe at or before `step`
                        (`values_step(step)` says which; exact at keyframe positions)
        errors          optimizable parameter -> max |value - target| at that keyframe
        free            free parameters at that keyframe; active_view: the thumbnail's view
        render, target  (h, w, 3) float32 linear thumbnails of the active view, the latest at or before
                        `step` (None before the first); smaller than the live render (see
                        meta["options"]["thumb_size"])
        grad_image, texture_grads, vertex_grads, param_grads: not recorded (None / {})
        history         name -> read-only float64 NumPy array over positions first_step..step-1 (index 0
                        is first_step; NaN where a record was lost): "loss", "loss.<term>",
                        "grad.<path>" as in the live engine
        skipped_steps, last_skip_step  up to `step`; steps_per_second from the recorded step times
        error           "" ; commands_applied: commands recorded at or before `step`
      values_step(step) -> int | None    the keyframe position `snapshot_at(step).values` come from
      all_values_at(step) -> dict        every optimizable parameter (free or fixed) at that keyframe
      targets_at(step) -> dict           the target (truth) values that differ from the scene file there
      error_history(step) -> dict        path -> (positions, max abs errors) over keyframes up to `step`
    Static.
      recording      the `renderer.recording.Recording` (meta, records, ...)
      scene          `renderer.scene.Scene` loaded from the recording's scene copy (names, topology,
                     initial values; None when the session's scene was not a file)
      views          target view names; param_specs: optimizable parameter paths
      warnings       list[str] of what was cut or damaged (show them once)
    """

    def __init__(self, recording: Recording | str | Path):
        self.recording = recording if isinstance(recording, Recording) else load_recording(recording)
        rec = self.recording
        self.first_step, self.last_step = int(rec.first_at), int(rec.last_at)
        self.warnings = rec.warnings
        problem = rec.meta.get("problem", {})
        self.views: list[str] = list(problem.get("views", []))
        self.param_specs: list[str] = list(problem.get("params", {}))
        self.commands = [_marker(c) for c in rec.commands]
        self.edits = [m for m in self.commands if m.edit]
        self.keyframe_steps = sorted(rec.keyframes)
        self.thumbnail_steps = sorted(rec.thumbs)
        self._hist = rec.history()
        for v in self._hist.values():
            v.flags.writeable = False
        dt = np.nan_to_num(self._hist["dt"], nan=0.0)
        self._time = np.concatenate([[0.0], np.cumsum(dt)])  # _time[i]: seconds at position first_step + i
        self._scene = None
        self._scene_loaded = False

    # -- timeline ------------------------------------------------------------------------------------
    def clamp(self, step) -> int:
        return int(min(max(int(step), self.first_step), self.last_step))

    def time_at(self, step) -> float:
        return float(self._time[self.clamp(step) - self.first_step])

    def step_at_time(self, t: float) -> int:
        i = int(np.searchsorted(self._time, t, side="right")) - 1
        return self.clamp(self.first_step + max(i, 0))

    @property
    def duration(self) -> float:
        """Optimizer seconds of the whole timeline."""
        return float(self._time[-1])

    # -- data ----------------------------------------------------------------------------------------
    @property
    def scene(self):
        if not self._scene_loaded:
            self._scene_loaded = True
            file = self.recording.scene_file
            if file is not None and file.is_file():
                from drstudio.renderer.recording.session import load_scene_copy

                self._scene = load_scene_copy(self.recording)  # hash-checked, as verify and resume do
        return self._scene

    def values_step(self, step) -> int | None:
        return self.recording.keyframe_at_or_before(self.clamp(step))

    def _keyframe(self, step):
        at = self.values_step(step)
        if at is None:
            return None
        try:
            return self.recording.keyframe(at)
        except RecordingError:  # damaged: fall back to an earlier one
            earlier = [k for k in self.keyframe_steps if k < at]
            return self._keyframe(earlier[-1]) if earlier else None

    def _shown(self, kf) -> dict:
        """The keyframe's values without the vertices of a mesh in a topology of its own (its faces in the
        keyframe's extra state differ from the scene's: a remeshed mesh), which the scene's faces cannot draw."""
        scene = self.scene
        out = {}
        for path, value in kf.values.items():
            faces = kf.extra.get(f"faces/{path}")
            if faces is not None and scene is not None:
                mesh = scene.meshes.get(path.split(".")[1]) if path.startswith("meshes.") else None
                if mesh is None or np.shape(faces) != mesh.faces.shape or not np.array_equal(faces, mesh.faces):
                    continue
            out[path] = value
        return out

    def all_values_at(self, step) -> dict:
        kf = self._keyframe(step)
        return self._shown(kf) if kf else {}

    def targets_at(self, step) -> dict:
        kf = self._keyframe(step)
        return dict(kf.truth) if kf else {}

    def _errors(self, kf) -> dict:
        scene = self.scene
        if kf is None or scene is None:
            return {}
        params = scene.params()
        out = {}
        for path, value in kf.values.items():
            truth = kf.truth.get(path, params[path].value if path in params else None)
            if truth is not None and np.shape(truth) == np.shape(value):
                out[path] = float(np.max(np.abs(np.asarray(value, np.float64) - truth)))
        return out

    def error_history(self, step) -> dict:
        out: dict[str, tuple[list, list]] = {}
        for at in self.keyframe_steps:
            if at > self.clamp(step):
                break
            try:
                kf = self.recording.keyframe(at)
            except RecordingError:
                continue
            for path, err in self._errors(kf).items():
                xs, ys = out.setdefault(path, ([], []))
                xs.append(at)
                ys.append(err)
        return out

    def snapshot_at(self, step) -> Snapshot:
        rec = self.recording
        step = self.clamp(step)
        n = step - self.first_step
        history = {k: v[:n] for k, v in self._hist.items() if k not in ("dt", "applied")}
        last = rec.steps.get(step - 1)
        kf = self._keyframe(step)
        thumb = rec.thumbnail_at_or_before(step)
        render = target = None
        if thumb is not None:
            render, target = rec.image(thumb["file"]), rec.image(thumb["target"])
        applied = self._hist["applied"][:n]
        skipped = np.flatnonzero(applied == 0.0)
        dt = self._hist["dt"][max(0, n - 20):n]
        dt = dt[np.isfinite(dt) & (dt > 0)]
        free = tuple(p for p, f in kf.state["free"].items() if f) if kf else ()
        return Snapshot(
            step=step, state="replay",
            loss=fmt.number(last.get("loss")) if last else math.nan,
            loss_terms={k: fmt.number(v) for k, v in last.get("terms", {}).items()} if last else {},
            grad_norms={k: fmt.number(v) for k, v in last.get("grads", {}).items()} if last else {},
            values={p: v for p, v in self._shown(kf).items() if p in free} if kf else {},
            errors=self._errors(kf), free=free,
            active_view=thumb["view"] if thumb else (kf.state["active_view"] if kf else ""),
            render=render, target=target,
            skipped_steps=int(skipped.size),
            last_skip_step=int(self.first_step + skipped[-1]) if skipped.size else -1,
            steps_per_second=float(1.0 / dt.mean()) if dt.size else 0.0,
            history=history,
            commands_applied=sum(1 for m in self.commands if m.step <= step),
        )


def _marker(c: dict) -> EditMarker:
    kind = c.get("kind", "?")
    args = tuple(fmt.from_json(list(c.get("args", []))))
    shown = []
    for a in args:
        if isinstance(a, np.ndarray):
            shown.append(np.array2string(a, precision=3, separator=", ") if a.size <= 4 else f"array{a.shape}")
        else:
            shown.append(repr(a))
    return EditMarker(int(c.get("at", 0)), kind, args, f"{kind}({', '.join(shown)})", kind in fmt.EDIT_COMMANDS)


class Playback:
    """The timeline's clock: `update(dt)` once per UI frame advances `position` while playing, at `speed`
    times the recorded optimizer pace (speed 1: the session's own step times; steps recorded with no
    time advance at 60 steps per second). Stops at the end."""

    def __init__(self, source: ReplaySource, speed: float = 1.0):
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed: expected a number > 0, got {speed}")
        self.source = source
        self.speed = float(speed)
        self.playing = False
        self._t = 0.0

    @property
    def position(self) -> int:
        return self.source.step_at_time(self._t) if self.source.duration > 0 else self._fallback_step()

    def _fallback_step(self) -> int:
        return self.source.clamp(self.source.first_step + int(self._t * 60.0))

    def seek(self, step) -> None:
        step = self.source.clamp(step)
        self._t = self.source.time_at(step) if self.source.duration > 0 else (step - self.source.first_step) / 60.0

    def play(self) -> None:
        if self.position >= self.source.last_step:
            self.seek(self.source.first_step)
        self.playing = True

    def pause(self) -> None:
        self.playing = False

    def toggle(self) -> None:
        self.pause() if self.playing else self.play()

    def update(self, dt: float) -> int:
        if self.playing:
            self._t += max(0.0, dt) * self.speed
            if self.position >= self.source.last_step:
                self.seek(self.source.last_step)
                self.playing = False
        return self.position
