"""The radiance-field preview of the viewport (instant-ngp's "train while you watch", nerfstudio's
render state machine): a thread of its own renders the field from the viewer's free camera while the
optimizer trains it in the engine thread.

- The GUI thread posts a `PreviewRequest` every drawn frame (`FieldPreview.request`: a reference swap,
  never a wait) and shows `FieldPreview.latest`, the last finished `PreviewFrame` (linear RGB).
- The preview thread picks the resolution: while the camera moves (dragging, or changed within the
  last `still_after` seconds) the largest step of `LADDER` whose measured render time fits `budget_ms`;
  once the camera is still, the full viewport resolution (through 1/2 first when a full frame is
  slow). A full-resolution render is drawn in bands of rows and abandoned when the camera moves again.
  While the optimizer runs, the still camera gets the largest step expected within `training_budget_ms`
  (1 s), re-rendered every `max(refresh_min, refresh_factor x the last render time)` seconds, so training
  stays visible and the preview takes a bounded share of the CPU (on this 2-core CPU a full-resolution
  frame of an early field takes 10+ s); when the optimizer stops it refines to full resolution. With
  `full_while_training` it refines to full while training too, pausing between bands
  (`share_while_training` of a core), then re-renders at the training step.
- With the occupancy overlay on, it also reads the occupancy grid when the optimizer's step changed
  (at most `occupancy_hz` times a second) and publishes the occupied cell centers (thinned).

`FieldSource` is what the thread renders from: the copy of the field the engine thread publishes
(`FieldModel.published()`, at most every `PUBLISH_INTERVAL` seconds while training and after every command),
never the live training state.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("drstudio.viewer.preview")

LADDER = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # resolution steps, fractions of the viewport's
TRAINING_FLOOR = 1 / 4  # a still camera gets at least this while training (unpaused), whatever the estimates
BAND_RAYS = 8192  # rays per band of a render (a full-resolution render can be abandoned between bands)
MAX_OCCUPANCY_POINTS = 30000  # occupied cells drawn (a strided subset beyond this)


# -- what the preview renders from -------------------------------------------------------------------

class FieldSource:
    """What the preview renders from: the copy of the field the training thread last published
    (`FieldModel.published()`, a `PublishedField`), never the live training state, so the preview takes no
    lock and records on no tape of the optimizer's."""

    def __init__(self, problem):
        self.model = problem.model

    def _field(self):
        pub = self.model.published()
        if pub is None:
            raise RuntimeError("the field has not been published yet (the problem publishes it when built)")
        return pub

    @property
    def step(self) -> int:
        """The optimizer step whose values the preview shows."""
        return self._field().step

    def time_range(self):
        return self._field().time_range()

    def occupancy(self):
        """(mask bool (nx, ny, nz), aabb (6,)) of the first field, or None."""
        return self._field().occupancy()

    def render(self, pose, intrinsics, width: int, height: int, *, time=None) -> np.ndarray:
        """(height, width, 3) float32 linear RGB through a camera pose (7,) / intrinsics (4,)."""
        return np.asarray(self._field().render(np.asarray(pose, np.float32), np.asarray(intrinsics, np.float32),
                                               int(width), int(height), time=time), np.float32)


# -- requests and results ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreviewRequest:
    """What the viewport shows: the free camera (pose (7,), vertical fov in degrees), the viewport size in
    pixels, whether the user is dragging it, and the field time (dynamic fields)."""

    pose: np.ndarray
    fov_y: float
    width: int
    height: int
    moving: bool = False
    time: float | None = None

    def key(self) -> tuple:
        return (np.asarray(self.pose, np.float64).round(9).tobytes(), round(float(self.fov_y), 9), self.width,
                self.height, self.time)


@dataclass(frozen=True)
class PreviewFrame:
    image: np.ndarray  # (h, w, 3) float32 linear RGB, row 0 at the top
    width: int
    height: int
    scale: float  # of the viewport resolution
    ms: float  # render time
    key: tuple  # the request's key it shows
    values_key: tuple  # the optimizer's (step, commands) it shows
    done: float  # time.monotonic() when finished
    serial: int


@dataclass(frozen=True)
class OccupancyPoints:
    points: np.ndarray  # (N, 3) float32 centers of occupied cells (thinned to MAX_OCCUPANCY_POINTS)
    occupied: int  # occupied cells before thinning
    cells: int
    aabb: np.ndarray  # (6,)
    step: int
    serial: int


def intrinsics_for(fov_y: float, width: int, height: int) -> np.ndarray:
    """[fx, fy, cx, cy] of the free camera at a resolution (square pixels, as the GL projection)."""
    f = 0.5 * height / math.tan(math.radians(fov_y) / 2.0)
    return np.array([f, f, width / 2.0, height / 2.0], np.float32)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def occupancy_points(mask: np.ndarray, aabb, limit: int = MAX_OCCUPANCY_POINTS) -> tuple[np.ndarray, int]:
    """World centers (N, 3) of the occupied cells of `mask` over the box `aabb`, at most ~`limit` of them
    (every k-th cell beyond that); and the number of occupied cells."""
    mask = np.asarray(mask, bool)
    idx = np.argwhere(mask)
    n = len(idx)
    if n > limit:
        idx = idx[:: int(math.ceil(n / limit))]
    lo, hi = np.asarray(aabb[:3], np.float64), np.asarray(aabb[3:], np.float64)
    cell = (hi - lo) / np.asarray(mask.shape, np.float64)
    return (lo + (idx + 0.5) * cell).astype(np.float32), n


@dataclass
class PreviewSettings:
    budget_ms: float = 60.0  # a preview frame while the camera moves
    still_after: float = 0.3  # s without camera change before refining to full resolution
    refresh_min: float = 0.5  # s between re-renders while the optimizer changes the values...
    refresh_factor: float = 3.0  # ... and at least this many times the last render's time
    training_budget_ms: float = 1000.0  # those re-renders: the largest step expected within this
    full_while_training: bool = False  # refine to full resolution also while the optimizer runs
    share_while_training: float = 0.5  # a refine while the optimizer runs pauses between bands (CPU share)
    occupancy_hz: float = 4.0


class FieldPreview:
    """The preview thread (module docstring). `start()` / `stop()`; `request()` and the attributes
    `latest`, `occupancy`, `ms_by_scale` are read and written by reference (no locks held while rendering)."""

    def __init__(self, source: FieldSource, engine, settings: PreviewSettings | None = None):
        self.source = source
        self.engine = engine
        self.settings = settings or PreviewSettings()
        self.time_range_value = source.time_range()  # (t0, t1) of a dynamic field, else None
        self.latest: PreviewFrame | None = None
        self.occupancy: OccupancyPoints | None = None
        self.want_occupancy = False
        self.ms_by_scale: dict[float, float] = {}  # measured render time per ladder step (EMA)
        self.renders = 0
        self.aborted = 0
        self.error = ""
        self._request: PreviewRequest | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_key = None
        self._changed = 0.0
        self._occ_time = -1e9
        self._occ_values = None
        self._serial = 0
        self._refined = None  # the view (request key) last rendered at full resolution

    # -- GUI side ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="drstudio-field-preview", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def request(self, req: PreviewRequest) -> None:
        """Post what the viewport shows now (the thread picks up the latest; never blocks)."""
        old = self._request
        self._request = req
        if old is None or old.key() != req.key() or old.moving != req.moving:
            self._wake.set()

    # -- decisions (pure; tested) -------------------------------------------------------------------------
    def estimate_ms(self, scale: float, pixels: int) -> float:
        """Expected render time at `scale` of a viewport of `pixels`: measured at that step, else
        extrapolated per pixel from the nearest measured step (0 when nothing was measured)."""
        if scale in self.ms_by_scale:
            return self.ms_by_scale[scale]
        if not self.ms_by_scale:
            return 0.0
        s = min(self.ms_by_scale, key=lambda k: abs(math.log(k / scale)))
        return self.ms_by_scale[s] * (scale / s) ** 2

    def training_scale(self, pixels: int) -> float:
        """While the optimizer runs (camera still, after the full-resolution refine): the largest step whose
        expected time fits `training_budget_ms`, so the periodic re-render stays frequent."""
        fits = [s for s in LADDER if self.estimate_ms(s, pixels) <= self.settings.training_budget_ms]
        return max([*fits, self.moving_scale(pixels), TRAINING_FLOOR])

    def moving_scale(self, pixels: int) -> float:
        """The largest ladder step whose expected time fits the budget (the smallest if none does)."""
        fits = [s for s in LADDER if self.estimate_ms(s, pixels) <= self.settings.budget_ms]
        if not self.ms_by_scale:
            return LADDER[1]  # nothing measured yet: start coarse
        return max(fits) if fits else LADDER[0]

    # -- the thread ---------------------------------------------------------------------------------------
    def _running(self) -> bool:
        return self.engine.snapshot().state == "running"

    def _values_key(self) -> tuple:
        snap = self.engine.snapshot()
        return snap.step, snap.commands_applied, snap.targets_version

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.03)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._tick()
            except Exception as exc:  # keep the viewer alive; show the message in the viewport
                message = f"field preview: {exc}"
                if message != self.error:  # log each distinct failure once
                    log.exception("field preview failed")
                self.error = message
                time.sleep(0.5)

    def _tick(self) -> None:
        req = self._request
        if req is None:
            return
        s = self.settings
        now = time.monotonic()
        key = req.key()
        if key != self._seen_key:
            self._seen_key, self._changed = key, now
        moving = req.moving or now - self._changed < s.still_after
        values = self._values_key()
        if self.want_occupancy and values != self._occ_values and now - self._occ_time >= 1.0 / s.occupancy_hz:
            self._read_occupancy(values)
        last = self.latest
        pixels = req.width * req.height
        if moving:
            scale = self.moving_scale(pixels)
            if last is not None and last.key == key and last.scale >= scale and last.values_key == values:
                return
        else:
            running = self._running()
            if last is None or last.key != key:  # a new view: a quick frame first unless full is quick
                quick = bool(self.ms_by_scale) and self.estimate_ms(1.0, pixels) <= s.budget_ms
                scale = 1.0 if quick else self.moving_scale(pixels)
            elif running and not s.full_while_training:
                # training: the largest step expected within the training budget, re-rendered periodically
                scale = self.training_scale(pixels)
                if last.scale >= scale and (last.values_key == values or now - last.done < max(
                        s.refresh_min, s.refresh_factor * last.ms / 1000.0)):
                    return
            elif last.scale < 1.0 and (self._refined != key or not running):
                # the camera came to rest: refine to full resolution, through 1/2 when a full frame is slow
                slow = self.estimate_ms(1.0, pixels) > 4 * s.budget_ms and last.scale < 0.5
                scale = 0.5 if slow else 1.0
            elif last.values_key != values:  # the optimizer changed the field
                if running and now - last.done < max(s.refresh_min, s.refresh_factor * last.ms / 1000.0):
                    return  # re-render later: the preview takes a bounded share of the CPU
                scale = self.training_scale(pixels) if running else 1.0
            else:
                return  # up to date
        self._render(req, key, scale, values, abortable=not moving)

    def _render(self, req: PreviewRequest, key: tuple, scale: float, values: tuple, abortable: bool) -> None:
        w, h = scaled_size(req.width, req.height, scale)
        intr = intrinsics_for(req.fov_y, w, h)
        t0 = time.perf_counter()
        image = np.empty((h, w, 3), np.float32)
        rows = max(1, BAND_RAYS // w)
        # Pauses between bands only for a refine beyond the training step (up to 1/4 the user waits for it: the
        # still camera reaches 1/4 within about a second while training; with pauses it took 1.6-1.8 s)
        share = self.settings.share_while_training if abortable and scale > TRAINING_FLOOR and self._running() \
            else 1.0
        paused = 0.0
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            band = intr.copy()
            band[3] -= r0  # the band's row 0 is the view's row r0: only the principal point moves
            tb = time.perf_counter()
            image[r0:r1] = self.source.render(req.pose, band, w, r1 - r0, time=req.time)
            if share < 1.0 and r1 < h:  # while training: leave the optimizer its share of the CPU
                rest = (time.perf_counter() - tb) * (1.0 / share - 1.0)
                self._wake.wait(rest)  # cut short by a camera change (checked below)
                paused += rest
            if self._stop.is_set():
                return
            if abortable:
                now_req = self._request
                if now_req is not None and (now_req.key() != key or now_req.moving):
                    self.aborted += 1
                    return
        ms = (time.perf_counter() - t0 - paused) * 1000.0  # render time, not the pauses between bands
        if scale == 1.0:
            self._refined = key
        old = self.ms_by_scale.get(scale)
        self.ms_by_scale[scale] = ms if old is None else 0.7 * old + 0.3 * ms
        self._serial += 1
        self.renders += 1
        self.error = ""
        self.latest = PreviewFrame(image, w, h, scale, ms, key, values, time.monotonic(), self._serial)

    def _read_occupancy(self, values: tuple) -> None:
        self._occ_time, self._occ_values = time.monotonic(), values
        occ = self.source.occupancy()
        if occ is None:
            self.occupancy = None
            return
        mask, aabb = occ
        pts, n = occupancy_points(mask, aabb)
        self._serial += 1
        self.occupancy = OccupancyPoints(pts, n, int(np.size(mask)), np.asarray(aabb, np.float32), values[0],
                                         self._serial)
