"""`Recorder`: an engine listener that writes a recording (format: `renderer.recording.format`).

    problem = Problem(scene, device)
    recorder = Recorder(next_recording_dir(out / "recording"), problem)   # before the engine starts
    engine = Engine(problem); engine.add_listener(recorder); engine.start_thread()
    ...
    engine.shutdown(); recorder.close()                                      # after the engine stops

What it writes, and when (all on the engine thread, between steps):
- every applied command, with the timeline position and problem step at which it was applied;
- every step's loss, loss terms, gradient norms, whether the update was applied, and its time;
- a keyframe (the optimization state, `state.capture_state`) at the start, periodically, after every
  edit command (`format.EDIT_COMMANDS`) and at `close()`; several keyframes at one position supersede
  each other, so an edit dragged while paused leaves one file. Periodic keyframes are at the multiples of
  `keyframe_every` (25 by default), doubled after any keyframe until keyframes cost at most
  `keyframe_bytes_per_step` bytes per step (large states, e.g. radiance fields, get sparser ones).
  A keyframe is full (lossless, restorable) at a resumed session's start and when the full state fits
  `full_keyframe_bytes_per_step` since the last restorable position, else compact (float16 values and
  digests: `state.py`); `keyframes="full"` makes every one full;
- a thumbnail of the active view's render (and its target) every `thumb_every` steps, after edits,
  at the start and at `close()`.

Timeline positions (`at`) count the steps taken since the session began (plus the starting step of a
resumed session); unlike the problem's step index they keep increasing across a `reset`.

Crash safety: meta.json and every keyframe/thumbnail are written atomically before the log record
that names them; log records are appended with one `os.write` each and the log is fsynced at most
every `fsync_every` seconds. A process killed at any instant leaves a recording `load_recording`
reads up to its last complete record. Disk use: when the recording exceeds `max_bytes`, periodic
keyframes and thumbnails are thinned (intervals doubled, every other old one deleted, a `pruned`
record says which); edit keyframes and the log are kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from ..conventions import linear_to_srgb
from ..images import atomic_write, write_image_bytes
from ..optim.models import seed_schedule
from ..params import camera_intrinsics
from . import format as fmt
from .scenecopy import copy_scene
from .state import capture_state, compact_bytes, schedule_steps, write_keyframe

log = logging.getLogger("drstudio.recording")

MAX_INTERVAL = 1 << 20  # thinning beyond this stops writing keyframes and thumbnails altogether


@dataclass
class RecorderOptions:
    keyframe_every: int = 25  # steps between periodic keyframes (the least: see keyframe_bytes_per_step)
    # Periodic keyframes cost at most this many bytes per step on average: after each keyframe the interval
    # doubles until (keyframe bytes) / interval <= this (in "auto" mode the bytes of the compact form: a 64^3
    # SH-0 field's 1.85 MB every 200 steps; a texture every 25). The interval never shrinks. 0: no limit
    # (every keyframe_every steps).
    keyframe_bytes_per_step: int = 16 * 1024
    # "auto": a keyframe is written full (lossless, restorable) at a resumed session's start and whenever its
    # raw size is at most full_keyframe_bytes_per_step times the steps since the last restorable position;
    # every other keyframe is compact (values in float16 + digests of the exact state; state.py). "full":
    # every keyframe full.
    keyframes: str = "auto"
    full_keyframe_bytes_per_step: int = 4 * 1024
    thumb_every: int = 10  # steps between thumbnails of the active render
    thumb_size: int = 128  # longest side of a thumbnail in pixels (renders are downscaled by an integer)
    max_bytes: int = 1 << 30  # disk budget of the whole recording
    fsync_every: float = 2.0  # seconds between fsyncs of the log (0: after every record)
    fsync_keyframes: bool = True  # fsync each keyframe before its rename

    def __post_init__(self):
        for name in ("keyframe_every", "thumb_every", "thumb_size", "max_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RecorderOptions.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.keyframes not in ("auto", "full"):
            raise ValueError(f"RecorderOptions.keyframes: expected 'auto' or 'full', got {self.keyframes!r}")
        if int(self.full_keyframe_bytes_per_step) < 0:
            raise ValueError(f"RecorderOptions.full_keyframe_bytes_per_step: expected bytes >= 0, got "
                             f"{self.full_keyframe_bytes_per_step}")
        if int(self.keyframe_bytes_per_step) < 0:
            raise ValueError(f"RecorderOptions.keyframe_bytes_per_step: expected bytes >= 0, got "
                             f"{self.keyframe_bytes_per_step}")
        if not self.fsync_every >= 0:
            raise ValueError(f"RecorderOptions.fsync_every: expected seconds >= 0, got {self.fsync_every}")


def next_recording_dir(base) -> Path:
    """`base` if it does not exist (or is an empty folder), else base-2, base-3, ..."""
    base = Path(base)
    candidate, n = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def versions() -> dict:
    import warp as wp

    try:
        drstudio = metadata.version("drstudio")
    except metadata.PackageNotFoundError:
        drstudio = "unknown"
    return {"drstudio": drstudio, "python": platform.python_version(), "numpy": np.__version__,
            "warp": wp.config.version, "platform": platform.platform()}


class Recorder:
    """Writes one recording of a `Problem` driven by an `Engine` (call it as the engine's listener).
    Create it before the engine thread starts and `close()` it after the engine stopped."""

    def __init__(self, directory, problem, *, options: RecorderOptions | None = None, parent: dict | None = None):
        self.dir = Path(directory)
        if self.dir.exists() and (not self.dir.is_dir() or any(self.dir.iterdir())):
            raise FileExistsError(f"{self.dir}: already exists and is not an empty folder; a recording needs "
                                  f"a new one (see next_recording_dir)")
        self.problem = problem
        self.options = options or RecorderOptions()
        self.keyframe_every = int(self.options.keyframe_every)
        self.thumb_every = int(self.options.thumb_every)
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._last_sync = self._t0
        self._seq = 0
        self._fd: int | None = None
        self.failed = ""  # why recording stopped early (disk full, ...), "" while healthy
        self.closed = False
        self.at = int(problem.step_index)
        self.steps_recorded = 0
        self._topology = getattr(getattr(problem, "model", None), "topology_version", None)  # remeshes so far
        self._sched = schedule_steps(problem)
        self._free = tuple(problem.free_paths())
        self._target_serial = 0
        self._target_files: dict[tuple[str, int], str] = {}
        self._keyframes: dict[int, tuple[str, int, str]] = {}  # at -> (file, bytes, reason)
        self._thumbs: dict[int, tuple[str, int]] = {}  # at -> (file, bytes)
        self._media_off = False
        self._start_at = -1
        # where the state can last be restored exactly: a fresh session's start is the problem the scene copy
        # builds (verify and resume rebuild it), a resumed one's start is written full
        self._last_full_at = self.at
        self._full_at: set[int] = set()  # positions whose kept keyframe is full
        self._resumed = parent is not None or self.at != 0
        self._names: dict[tuple[str, int], int] = {}  # (folder, at) -> files written there so far
        self._log_bytes = 0
        self._other_bytes = 0  # meta, scene copy, target thumbnails

        self.dir.mkdir(parents=True, exist_ok=True)
        scene_info = None
        scene_path = Path(problem.scene.path) if problem.scene.path else None
        if scene_path is not None and scene_path.is_file():
            scene_info = copy_scene(scene_path, self.dir / fmt.SCENE_DIR,
                                    downscale=int(getattr(problem.spec.targets, "downscale", 1) or 1))
            scene_info["file"] = f"{fmt.SCENE_DIR}/{scene_info['file']}"
            scene_info["files"] = {f"{fmt.SCENE_DIR}/{k}": v for k, v in scene_info["files"].items()}
            self._other_bytes += sum((self.dir / k).stat().st_size for k in scene_info["files"])
        else:
            log.warning("recording %s: the scene was not loaded from a file; the recording can be replayed "
                        "but not verified or resumed", self.dir)
        ds = problem.ds
        self.meta = {
            "format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "device": str(ds.device), "seed": int(problem.seed),
            "scene": scene_info, "parent": parent,
            "options": asdict(self.options),
            "start": {"at": self.at, "step": int(problem.step_index), "steps": int(problem.steps),
                      "spec_steps": int(problem.spec.steps)},
            "problem": {
                "params": {p: {"kind": ds.kind(p), "shape": list(problem.truth[p].shape)}
                           for p in problem.param_specs},
                "views": list(problem.views), "loss_terms": list(problem.weights),
                "optimizer": type(problem.optimizer).__name__,
                **({"render_seeds": schedule} if (schedule := seed_schedule(problem.scene)) else {}),
            },
            "argv": list(sys.argv),
        }
        downscale = int(getattr(problem.spec.targets, "downscale", 1) or 1)
        if downscale > 1:  # `--downscale N` is not in the scene copy's file: build_problem applies it
            self.meta["downscale"] = downscale
        tv_eps = getattr(problem.model, "tv_eps", None)
        if tv_eps is not None:  # the texture TV's smoothing: what verify re-executes with (build_problem)
            self.meta["texture_tv_eps"] = float(tv_eps)
        if getattr(problem, "shards", 1) > 1:  # a distributed run: what verify emulates in one process
            self.meta["data_parallel"] = {"ranks": int(problem.shards),
                                          "threads_per_rank": getattr(problem.model, "workers", None)}
        text = json.dumps(fmt.to_json(self.meta), indent=2) + "\n"
        atomic_write(self.dir / fmt.META_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        self._other_bytes += len(text)
        self._fd = os.open(self.dir / fmt.LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with self._lock:
            self._keyframe("start")
            self._thumbnail()
        if getattr(problem, "comm", None) is not None:  # a distributed run: the ranks render the thumbnails together
            problem.thumbnail_due = self._thumbnail_due

    # -- public --------------------------------------------------------------------------------------
    @property
    def bytes_written(self) -> int:
        """Current disk use of the recording (log, keyframes, thumbnails, scene copy, meta)."""
        return (self._log_bytes + self._other_bytes + sum(b for _, b, _ in self._keyframes.values())
                + sum(b for _, b in self._thumbs.values()))

    def __call__(self, event: dict) -> None:
        """The engine listener: record one command or step event (engine thread)."""
        with self._lock:
            if self.closed or self.failed:
                return
            try:
                if event.get("type") == "step":
                    self._on_step(event)
                elif event.get("type") == "command":
                    self._on_command(event)
            except OSError as exc:  # disk full, folder removed: stop recording, keep the optimizer running
                self._fail(f"recording stopped at {self.at}: {exc}")

    def close(self) -> None:
        """Write the final keyframe and thumbnail and the `end` record; idempotent."""
        with self._lock:
            if self.closed:
                return
            try:
                if not self.failed:
                    if self.at not in self._keyframes and self.at != self._start_at:
                        self._keyframe("end")
                    if self.at not in self._thumbs:
                        self._thumbnail()
                    self._append({"type": "end", "at": self.at, "steps_recorded": self.steps_recorded,
                                  "bytes": self.bytes_written})
                    os.fsync(self._fd)
            except OSError as exc:
                self._fail(f"recording could not be closed cleanly: {exc}")
            finally:
                self.closed = True
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

    def summary(self) -> str:
        mb = self.bytes_written / 1e6
        state = f"stopped early: {self.failed}" if self.failed else "complete"
        return (f"{self.dir}: {self.steps_recorded} steps, {len(self._keyframes) + 1} keyframes, "
                f"{len(self._thumbs)} thumbnails, {mb:.1f} MB ({state})")

    def _thumbnail_due(self) -> int:
        """The largest side of the thumbnail `_on_step` will draw after the coming step, else 0 (asked by the
        step of a distributed run before its sum, on the engine thread: Problem.render_rows_shared)."""
        if self.closed or self.failed or self._media_off or (self.at + 1) % self.thumb_every:
            return 0
        return int(self.options.thumb_size)

    # -- events ----------------------------------------------------------------------------------------
    def _on_step(self, ev: dict) -> None:
        self._append({"type": "step", "at": self.at, "step": int(ev["step"]), "loss": ev["loss"],
                      "terms": ev.get("loss_terms", {}), "grads": ev.get("grad_norms", {}),
                      "applied": bool(ev.get("applied", True)), "dt": ev.get("dt", 0.0)})
        self.at += 1
        self.steps_recorded += 1
        topology = getattr(getattr(self.problem, "model", None), "topology_version", None)
        if topology != self._topology:  # a remeshed mesh: its faces are in the keyframe
            self._topology = topology
            self._keyframe("topology")
        elif self.at % self.keyframe_every == 0:
            self._keyframe("periodic")
        if self.at % self.thumb_every == 0:
            self._thumbnail()

    def _on_command(self, ev: dict) -> None:
        kind = ev["kind"]
        record = {"type": "command", "at": self.at, "step": int(ev["step"]), "kind": kind,
                  "args": list(ev.get("args", ()))}
        if ev.get("rejected"):
            record["rejected"] = str(ev["rejected"])
            self._append(record)
            return  # refused: nothing changed, so no keyframe or thumbnail
        self._append(record)
        p = self.problem
        if kind == "reset" or (kind == "set_free" and tuple(p.free_paths()) != self._free):
            self._sched = int(p.steps)  # the optimizer was rebuilt with the budget of this moment
        self._free = tuple(p.free_paths())
        if kind == "set_target_value":
            self._target_serial += 1
        if kind in fmt.EDIT_COMMANDS:
            self._keyframe("edit")
        if kind in ("set_value", "set_target_value", "reset", "set_active_view"):
            self._thumbnail()

    # -- writing ---------------------------------------------------------------------------------------
    def _append(self, record: dict) -> None:
        record = {"seq": self._seq, **record, "time": round(time.monotonic() - self._t0, 6)}
        line = fmt.encode_record(fmt.to_json(record))
        view = memoryview(line)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._seq += 1
        self._log_bytes += len(line)
        now = time.monotonic()
        if now - self._last_sync >= self.options.fsync_every:
            os.fsync(self._fd)
            self._last_sync = now

    def _keyframe(self, reason: str) -> None:
        if self._media_off:
            return
        state, arrays = capture_state(self.problem, at=self.at, sched_steps=self._sched, reason=reason)
        # A file is never overwritten: a later keyframe at the same position gets a new name and the
        # one it supersedes is deleted only after its record is in the log, so a crash at any point
        # leaves the last logged record of each position naming an intact file.
        rel = f"{fmt.KEYFRAME_DIR}/start.npz" if reason == "start" else self._new_name(fmt.KEYFRAME_DIR, "", ".npz")
        raw = sum(a.nbytes for a in arrays.values())
        # full: a resumed session's start (its state exists nowhere else); a keyframe that supersedes a full one
        # at this position (which is deleted); one whose state fits the rate since the last restorable
        # position (a small state: every one)
        full = (self.options.keyframes == "full" or (reason == "start" and self._resumed) or self.at in self._full_at
                or raw <= int(self.options.full_keyframe_bytes_per_step) * max(1, self.at - self._last_full_at))
        size, crc = write_keyframe(self.dir / rel, state, arrays, fsync=self.options.fsync_keyframes,
                                   compact=not full)
        if full:
            self._last_full_at = self.at
            if reason != "start":
                self._full_at.add(self.at)
        # the interval is fitted to what periodic keyframes cost: compact ones in "auto" mode (for a full one,
        # the uncompressed size of its compact form, an upper bound), full ones in "full" mode
        self._fit_interval(size if not full or self.options.keyframes == "full" else compact_bytes(arrays))
        previous = None
        if reason == "start":
            self._other_bytes += size
            self._start_at = self.at
        else:
            previous = self._keyframes.get(self.at)
            keep_reason = reason if previous is None or previous[2] == "periodic" else previous[2]
            self._keyframes[self.at] = (rel, size, keep_reason)
        self._append({"type": "keyframe", "at": self.at, "step": int(self.problem.step_index), "file": rel,
                      "reason": reason, "bytes": size, "crc32": crc, "keyframe_every": self.keyframe_every,
                      "encoding": "full" if full else "compact"})
        if previous is not None:
            (self.dir / previous[0]).unlink(missing_ok=True)
        self._enforce_budget()

    def _fit_interval(self, size: int) -> None:
        """Double the periodic keyframe interval until a keyframe of `size` bytes costs at most
        `keyframe_bytes_per_step` per step. Doubling keeps periodic keyframes at multiples of the interval,
        as the disk-budget thinning (which doubles it too) expects; it never shrinks, so a state that grew
        (a field's finer lattice) and shrank again (reset) keeps the sparser spacing."""
        rate = int(self.options.keyframe_bytes_per_step)
        while rate and size > rate * self.keyframe_every and self.keyframe_every < MAX_INTERVAL:
            self.keyframe_every *= 2

    def _new_name(self, folder: str, prefix: str, suffix: str) -> str:
        n = self._names.get((folder, self.at), 0)
        self._names[(folder, self.at)] = n + 1
        return f"{folder}/{prefix}{self.at:08d}_{n}{suffix}"

    def _thumbnail(self) -> None:
        if self._media_off:
            return
        p = self.problem
        cam = p.active_view
        shared = getattr(p, "thumbnails_shared", 0)
        render, target = render_thumbnail(p, cam, self.options.thumb_size)
        shared = getattr(p, "thumbnails_shared", 0) > shared  # rendered by the ranks together
        rel = self._new_name(fmt.THUMB_DIR, "r", ".png")
        size = _write_png(self.dir / rel, render)
        key = (cam, self._target_serial)
        if key not in self._target_files:
            trel = f"{fmt.THUMB_DIR}/t_{cam}_{self._target_serial}.png"
            self._other_bytes += _write_png(self.dir / trel, target)
            self._target_files[key] = trel
        previous = self._thumbs.get(self.at)
        self._thumbs[self.at] = (rel, size)
        self._append({"type": "thumb", "at": self.at, "step": int(p.step_index), "view": cam, "file": rel,
                      "target": self._target_files[key], "bytes": size, **({"ranks": p.shards} if shared else {})})
        if previous is not None:
            (self.dir / previous[0]).unlink(missing_ok=True)
        self._enforce_budget()

    def _enforce_budget(self) -> None:
        budget = self.options.max_bytes
        while self.bytes_written > budget and not self._media_off:
            self.keyframe_every *= 2
            self.thumb_every *= 2
            last = self.at
            drop_k = [at for at, (_, _, reason) in self._keyframes.items()
                      if reason == "periodic" and at % self.keyframe_every and at != last]
            drop_t = [at for at in self._thumbs if at % self.thumb_every and at != last and at != min(self._thumbs)]
            files = [self._keyframes[a][0] for a in drop_k] + [self._thumbs[a][0] for a in drop_t]
            if self.keyframe_every > MAX_INTERVAL:
                self._media_off = True
                msg = (f"disk budget of {budget} bytes reached with nothing left to thin: no more keyframes or "
                       f"thumbnails are written (steps are still logged)")
                log.warning("recording %s: %s", self.dir, msg)
                self._append({"type": "budget", "at": self.at, "message": msg})
                break
            if not files:
                continue
            # the record first: a crash between it and the deletions leaves files no one expects
            self._append({"type": "pruned", "at": self.at, "files": files, "keyframe_every": self.keyframe_every,
                          "thumb_every": self.thumb_every, "reason": f"disk budget {budget} bytes"})
            for a in drop_k:
                (self.dir / self._keyframes.pop(a)[0]).unlink(missing_ok=True)
            for a in drop_t:
                (self.dir / self._thumbs.pop(a)[0]).unlink(missing_ok=True)

    def _fail(self, message: str) -> None:
        self.failed = message
        log.error("recording %s: %s", self.dir, message)


def thumbnail_view(problem, camera: str, max_size: int):
    """(width, height, intrinsics) a thumbnail of `camera` is rendered at: the camera's resolution divided by the
    smallest integer that makes its longest side at most `max_size`; intrinsics a float (4,) Warp array scaled
    to it, or None at the camera's own size (its own intrinsics)."""
    import warp as wp

    c = problem.scene.cameras[camera]
    f = max(1, math.ceil(max(c.width, c.height) / max_size))
    w, h = max(1, c.width // f), max(1, c.height // f)
    if f == 1:
        return w, h, None
    ds = problem.ds
    k = ds.arrays[camera_intrinsics(camera)].numpy().astype(np.float32).copy()
    k *= np.array([w / c.width, h / c.height, w / c.width, h / c.height], np.float32)
    return w, h, wp.array(k, dtype=float, device=ds.device)


def render_thumbnail(problem, camera: str, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(render, target) of `camera` as (h, w, 3) float32 linear images whose longest side is at most
    `max_size`: the camera's resolution divided by the smallest integer that fits. The render is drawn
    directly at that size (intrinsics scaled), the target box-filtered down. Not recorded on a tape."""
    c = problem.scene.cameras[camera]
    f = max(1, math.ceil(max(c.width, c.height) / max_size))
    w, h, intr = thumbnail_view(problem, camera, max_size)
    # the problem's own render: the meshes', or the field's in a scene with fields; in a distributed run the
    # ranks may have rendered it together after the step (Problem.render_rows_shared)
    shared = getattr(problem, "shared_thumbnail", None)
    render = shared(camera, max_size) if shared is not None else None
    if render is None:
        render = problem.render_image(camera, intrinsics=intr, width=w if f > 1 else None,
                                      height=h if f > 1 else None)
    target = problem.target_numpy(camera)
    if f > 1:
        target = target[:h * f, :w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3))
    return render.astype(np.float32), target.astype(np.float32)


def _write_png(path: Path, linear: np.ndarray) -> int:
    data = np.round(linear_to_srgb(linear) * 255).astype(np.uint8)
    write_image_bytes(path, data)
    return path.stat().st_size
