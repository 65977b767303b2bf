"""The progressive path-traced preview of the viewport (render mode "path").

A thread of its own path-traces the scene from the viewer's free camera and accumulates samples while
nothing changes: pass k renders samples `spp_k .. spp_k + n - 1` of every pixel's sequence
(`renderer.stages.pathtrace.render_path(first_sample=...)`), so the running mean after any number of passes
is exactly the render of that many samples per pixel. It restarts (from sample 0, with the values of the
moment) when the camera, the viewport size or the render settings change, at once when an edit changed a
value, and at most every `refresh` seconds for values the optimizer published (so the preview of a running
optimization shows its progress and still converges between restarts); it stops at `max_spp`, leaving the
CPU to the optimizer.

- The GUI thread posts a `PathRequest` every drawn frame (`PathPreview.request`: a reference swap, never a
  wait) and shows `PathPreview.latest`, the last finished `PathFrame` (linear RGB, its sample count), when it
  shows the current view; while the camera moves the viewport draws its OpenGL rasterization instead.
- The thread renders from a `DeviceScene` of its own (built on its first request), set to the values the
  request carries (the viewer's mirror of the published values and its own edits, never the engine's live
  arrays), on no tape, with one CPU thread (`render_path(threads=1)`): the other core stays the optimizer's.
- The resolution is the largest fraction of the viewport (`LADDER`) whose measured time per sample fits one
  pass in `pass_budget_ms`; a pass renders as many samples as fit it (at most `MAX_SPP_PER_PASS`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from .field_preview import intrinsics_for, scaled_size

log = logging.getLogger("drstudio.viewer.path")

LADDER = (1 / 8, 1 / 4, 1 / 2, 1.0)  # resolution steps, fractions of the viewport's
MAX_SPP_PER_PASS = 16


@dataclass(frozen=True)
class PathRequest:
    """What the viewport shows: the free camera (pose (7,), vertical fov in degrees), the viewport size, whether
    the camera is moving, the path tracer's depth, the values to render (path -> array; the arrays are never
    written in place) and the counters that say they may have changed: `edit` (the viewer's own edits) and
    `serial` (snapshots of the optimizer)."""

    pose: np.ndarray
    fov_y: float
    width: int
    height: int
    moving: bool
    max_depth: int
    values: dict
    edit: int
    serial: int

    def view_key(self) -> tuple:
        return (np.asarray(self.pose, np.float64).round(9).tobytes(), round(float(self.fov_y), 9), self.width,
                self.height, int(self.max_depth))


@dataclass(frozen=True)
class PathFrame:
    image: np.ndarray  # (h, w, 3) float32 linear RGB: the mean of `spp` samples per pixel, row 0 at the top
    width: int
    height: int
    scale: float  # of the viewport resolution
    spp: int  # samples per pixel accumulated
    ms: float  # time of the last pass
    key: tuple  # the request's view key it shows
    restarts: int  # accumulations started so far (a new one resets spp)
    done: float  # time.monotonic() when finished


@dataclass
class PathSettings:
    max_spp: int = 256  # stop accumulating here (the CPU goes back to the optimizer)
    pass_budget_ms: float = 200.0  # one pass (a frame of the preview) should take about this long
    refresh: float = 1.0  # s: values published by the optimizer restart the accumulation at most this often...
    refresh_factor: float = 3.0  # ... and at most every this many times a pass's time
    seed: int = 1  # the preview's random sequence (the optimizer's seeds are its own)


class _Accumulation:
    def __init__(self, key: tuple, width: int, height: int, scale: float, edit: int, serial: int):
        self.key, self.width, self.height, self.scale = key, width, height, scale
        self.edit, self.serial = edit, serial
        self.sum = np.zeros((height, width, 3), np.float64)
        self.spp = 0
        self.started = time.monotonic()


class PathPreview:
    """The preview thread (module docstring). `start()` / `stop()`; `request()` and the attributes `latest`,
    `error` are read and written by reference (no lock held while rendering)."""

    def __init__(self, scene, device: str | None = None, settings: PathSettings | None = None):
        self.scene = scene
        self.device = device
        self.settings = settings or PathSettings()
        self.latest: PathFrame | None = None
        self.error = ""
        self.passes = 0
        self.restarts = 0
        self.us_per_sample: float | None = None  # measured microseconds per pixel sample (EMA)
        self._request: PathRequest | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ds = None
        self._frame = None
        self._applied: dict = {}  # path -> the value object last set into the DeviceScene
        self._acc: _Accumulation | None = None

    # -- GUI side ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="drstudio-path-preview", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def request(self, req: PathRequest | None) -> None:
        """Post what the viewport shows now (None: not in path mode; the thread idles). Never blocks."""
        old = self._request
        self._request = req
        if req is None or old is None or old.view_key() != req.view_key() or old.moving != req.moving \
                or old.edit != req.edit or old.serial != req.serial:
            self._wake.set()

    def shows(self, req: PathRequest | None) -> PathFrame | None:
        """The latest frame if it shows the view of `req` (and the camera is still), else None."""
        f = self.latest
        if req is None or f is None or req.moving or f.key != req.view_key():
            return None
        return f

    # -- the thread ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        from drstudio.renderer.thread_tape import recording

        with recording(None):  # a read-out: never on any tape
            while not self._stop.is_set():
                req = self._request
                try:
                    busy = req is not None and not req.moving and self._work(req)
                except Exception as exc:  # shown in the viewport's status line; the viewer keeps running
                    log.exception("path preview failed")
                    self.error = f"path preview failed: {type(exc).__name__}: {exc}"
                    self._acc = None
                    busy = False
                if not busy:
                    self._wake.wait(0.1)
                    self._wake.clear()

    def _setup(self) -> None:
        from drstudio.renderer.device_scene import DeviceScene

        self._ds = DeviceScene(self.scene, self.device)
        for arr in self._ds.arrays.values():
            arr.requires_grad = False

    def _changed(self, values: dict) -> list:
        """The paths whose value differs from what the DeviceScene holds."""
        out = []
        for path, value in values.items():
            if path not in self._ds.arrays or np.shape(value) != tuple(self._ds.params[path].shape):
                continue  # not a value of this scene, or a remeshed mesh (the preview keeps the scene's)
            seen = self._applied.get(path)
            if seen is value:
                continue
            if seen is None or np.shape(seen) != np.shape(value) or not np.array_equal(seen, value):
                out.append(path)
            else:
                self._applied[path] = value  # the same numbers in a new array (a new snapshot)
        return out

    def _apply(self, values: dict, paths: list) -> None:
        for path in paths:
            self._ds.set(path, np.asarray(values[path], np.float32))
            self._applied[path] = values[path]
        if paths or self._frame is None:
            self._frame = self._ds.prepare()

    def _scale(self, width: int, height: int) -> float:
        us = self.us_per_sample
        if us is None:
            return 1 / 4  # the first pass measures
        budget = self.settings.pass_budget_ms * 1000.0
        fits = [s for s in LADDER if np.prod(scaled_size(width, height, s)) * us <= budget]
        return fits[-1] if fits else LADDER[0]

    def _work(self, req: PathRequest) -> bool:
        """One step of the thread's work for `req`: maybe restart, then one pass. False when idle (done)."""
        if self._ds is None:
            self._setup()
        s = self.settings
        acc = self._acc
        now = time.monotonic()
        key = req.view_key()
        restart = acc is None or acc.key != key
        if not restart and (req.edit != acc.edit or req.serial != acc.serial):
            changed = self._changed(req.values)
            refresh = max(s.refresh, s.refresh_factor * (self.latest.ms / 1000.0 if self.latest else 0.0))
            if not changed:
                acc.edit, acc.serial = req.edit, req.serial  # nothing new (a pause, a snapshot of the same values)
            elif req.edit != acc.edit or now - acc.started >= refresh:
                restart = True
            # else: the optimizer's new values wait for the refresh; keep converging the current ones
        if restart:
            self._apply(req.values, self._changed(req.values))
            scale = self._scale(req.width, req.height)
            w, h = scaled_size(req.width, req.height, scale)
            acc = self._acc = _Accumulation(key, w, h, scale, req.edit, req.serial)
            self.restarts += 1
        if acc.spp >= s.max_spp:
            return False
        self._pass(req, acc)
        return True

    def _pass(self, req: PathRequest, acc: _Accumulation) -> None:
        import warp as wp
        from drstudio.renderer.render import PATH_RR_DEPTH, path_scene
        from drstudio.renderer.stages import pathtrace as pt

        s = self.settings
        w, h = acc.width, acc.height
        us = self.us_per_sample
        n = 1 if us is None else int(np.clip(s.pass_budget_ms * 1000.0 / max(us * w * h, 1e-9), 1, MAX_SPP_PER_PASS))
        n = min(n, s.max_spp - acc.spp)
        dev = self._ds.device
        intr = wp.array(intrinsics_for(req.fov_y, w, h), dtype=float, device=dev)
        pose = wp.array(np.asarray(req.pose, np.float32), dtype=float, device=dev)
        t0 = time.perf_counter()
        image = pt.render_path(path_scene(self._ds, self._frame), intr, pose, w, h, spp=n, seed=s.seed,
                               max_depth=int(req.max_depth), rr_depth=PATH_RR_DEPTH, jitter=True, threads=1,
                               first_sample=acc.spp)
        img = image.numpy().reshape(h, w, 3)
        ms = (time.perf_counter() - t0) * 1000.0
        per = ms * 1000.0 / (n * w * h)
        self.us_per_sample = per if self.us_per_sample is None else 0.7 * self.us_per_sample + 0.3 * per
        if self._acc is not acc:
            return
        acc.sum += img.astype(np.float64) * n
        acc.spp += n
        self.passes += 1
        self.error = ""
        self.latest = PathFrame((acc.sum / acc.spp).astype(np.float32), w, h, acc.scale, acc.spp, ms, acc.key,
                                self.restarts, time.monotonic())


def status(preview: PathPreview) -> str:
    """"path preview 179x104 (1/4) 37 spp, 120 ms/pass" or what the thread is doing."""
    if preview.error:
        return preview.error[:160]
    f = preview.latest
    if f is None:
        return "path preview: rendering the first samples..."
    frac = f"1/{round(1 / f.scale)}" if f.scale < 1.0 else "full"
    done = "   (done)" if f.spp >= preview.settings.max_spp else ""
    return f"path preview {f.width}x{f.height} ({frac}) {f.spp} spp, {f.ms:.0f} ms/pass{done}"
