"""Render on several CPU cores: a view split into horizontal bands, or a batch of views, one thread each.

Warp runs a CPU kernel launch on one core and releases the GIL while it runs, so launches issued from
two Python threads run on two cores. Every per-pixel stage is independent across pixels (the antialias
stage reads the row above and below), so a band of rows renders exactly like the same rows of the whole
image: each band is rendered by `render_view(..., first_row=...)`, whose pixel stages work in the full
image's pixel coordinates against the view's own intrinsics (bit for bit the full render's pixels), with one
extra row on each inner side, and stitched without it, so silhouette pairs that cross a band boundary are
blended exactly as in `render_view`. (The soft mode has no `first_row`: its bands still render with the
principal point shifted by the band's first row, equal to the full image to float32 round-off.)

Differentiation. The active `wp.Tape` is per thread (`renderer.thread_tape`): each worker makes a tape of
its own the active one of its thread while it renders (the caller's thread too, for its share), and on the
caller's enclosing tape this module records one backward callback that runs those per-worker tapes
backward on the same threads. Adjoint
kernels accumulate with plain (non-atomic) adds on the CPU, so threads must not share gradient buffers:
worker k > 0 renders from aliases of the shared inputs (the `Frame` arrays, the camera arrays) that read
the same values but own separate gradient buffers, which the callback adds into the originals after the
threads finish. The result is the gradient `render_view` gives, up to float summation order.

Use it in place of `renderer.render.render_view` inside or outside a `wp.Tape`. Not re-entrant: do not call
it from inside a worker (e.g. from a callback it runs); calls from several threads share the worker pool.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import warp as wp

from .device_scene import DeviceScene, Frame
from .params import camera_intrinsics, camera_pose
from .render import BAND_MODES, RenderOutput, render_view
from .render_cache import GBufferCache
from .stages.shading import Lights
from .thread_tape import active_tape, recording


@wp.kernel
def _band_intrinsics(intrinsics: wp.array(dtype=float), first_row: float, out: wp.array(dtype=float)):
    # the band's row 0 is the view's row `first_row`: only the principal point moves
    out[0] = intrinsics[0]
    out[1] = intrinsics[1]
    out[2] = intrinsics[2]
    out[3] = intrinsics[3] - first_row


@wp.kernel
def _stitch_rows_2d(band: wp.array2d(dtype=float), src: int, dst: int, out: wp.array2d(dtype=float)):
    i, c = wp.tid()
    out[dst + i, c] = band[src + i, c]


@wp.kernel
def _stitch_rows_1d(band: wp.array(dtype=float), src: int, dst: int, out: wp.array(dtype=float)):
    i = wp.tid()
    out[dst + i] = band[src + i]


@wp.kernel
def _stitch_ids(band: wp.array(dtype=wp.int32), src: int, dst: int, out: wp.array(dtype=wp.int32)):
    i = wp.tid()
    out[dst + i] = band[src + i]


@wp.kernel
def _add_into(src: wp.array(dtype=float), dst: wp.array(dtype=float)):
    i = wp.tid()
    dst[i] = dst[i] + src[i]


# ---------------------------------------------------------------------------------------------------


_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def default_workers() -> int:
    """Threads to use: the number of CPU cores this process may run on (its affinity; at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=max(1, default_workers() - 1),
                                           thread_name_prefix="drstudio-render")
        return _EXECUTOR


def _flat(a: wp.array) -> wp.array:
    """A contiguous array viewed as (size * components,) floats (no copy)."""
    n = a.size * wp.types.type_size(a.dtype)
    return wp.array(ptr=a.ptr, dtype=float, shape=(n,), device=a.device)


class _Lane:
    """One worker's view of the shared inputs. Lane 0 reads and accumulates into the originals; the
    others (when differentiating) into aliases with their own gradient buffers, merged by `merge`."""

    def __init__(self, index: int, differentiate: bool):
        self.index = index
        self.tape = wp.Tape() if differentiate else None
        self._separate = differentiate and index > 0
        self._aliases: dict[int, tuple[wp.array, wp.array]] = {}

    def alias(self, a):
        if not self._separate or not isinstance(a, wp.array) or a.grad is None or a.size == 0:
            return a
        if id(a) not in self._aliases:
            if not (a.is_contiguous and a.grad.is_contiguous):
                raise ValueError("render_parallel: shared differentiable inputs must be contiguous arrays")
            b = wp.array(ptr=a.ptr, dtype=a.dtype, shape=a.shape, strides=a.strides, device=a.device,
                         requires_grad=True)
            self._aliases[id(a)] = (a, b)
        return self._aliases[id(a)][1]

    def frame(self, frame: Frame) -> Frame:
        if not self._separate:
            return frame

        def pool(p):
            return dataclasses.replace(p, data=self.alias(p.data))

        return dataclasses.replace(
            frame, world=self.alias(frame.world), normals=self.alias(frame.normals),
            uvs=self.alias(frame.uvs), colors=self.alias(frame.colors), albedo=pool(frame.albedo),
            roughness=pool(frame.roughness), metallic=pool(frame.metallic),
            lights=Lights(*[self.alias(x) for x in frame.lights.arrays()]))

    def merge(self) -> None:
        """Add this lane's gradients into the originals' and zero them (one backward pass each)."""
        for orig, alias in self._aliases.values():
            src, dst = _flat(alias.grad), _flat(orig.grad)
            if src.shape[0]:
                wp.launch(_add_into, dim=src.shape[0], inputs=[src, dst], device=src.device,
                          record_tape=False)
            alias.grad.zero_()


_LOAD_LOCK = threading.Lock()


def _load_modules() -> None:
    """Load every imported renderer kernel module on the default device before lanes launch: Warp 1.19
    hashes a module's kernels lazily on first launch, and two threads doing that at once can fail
    (KeyError in get_kernel_mangled_name). A no-op (~0.1 ms) once they are loaded."""
    with _LOAD_LOCK:
        wp.load_module("drstudio.renderer", device=wp.get_device(), recursive=True, max_workers=0)


def _run_lanes(lanes: list[_Lane], work, outer: wp.Tape | None) -> list:
    """Run work(lane) for every lane, lane 0 in this thread, the others on the pool (`run_parts`); each lane's
    launches are recorded on its own tape when `outer` is a tape. Returns the results in lane order."""
    results: list = [None] * len(lanes)

    def in_lane(k: int) -> None:
        with recording(lanes[k].tape):  # this thread's active tape while it runs the lane (None: no tape)
            results[k] = work(lanes[k])

    run_parts(in_lane, len(lanes))
    if outer is not None:
        _record_backward(lanes, outer)
    return results


def part_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """[a, b) ranges cutting range(n) into `parts` consecutive pieces of sizes differing by at most one."""
    return [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]


def run_parts(work, parts: int) -> None:
    """work(k) for k in range(parts): part 0 in this thread, the others on the worker pool, concurrently (Warp
    releases the GIL during a CPU launch, so launches of different parts run on different cores); returns when
    all are done, re-raising the first exception. The parts must not write the same memory (CPU adjoints add
    without atomics). With parts <= 1, work(0) in this thread."""
    if parts <= 1:
        work(0)
        return
    _load_modules()
    futures = [_executor().submit(work, k) for k in range(1, parts)]
    first_error = None
    try:
        work(0)
    except BaseException as exc:  # wait for the workers before re-raising
        first_error = exc
    wait(futures)
    if first_error is not None:
        raise first_error
    for f in futures:
        f.result()


def _record_backward(lanes: list[_Lane], outer: wp.Tape) -> None:
    def backward():
        run_parts(lambda k: lanes[k].tape.backward(), len(lanes))
        for lane in lanes[1:]:
            lane.merge()

    # registering every array the lanes' tapes touch lets `outer.zero()` zero their gradients too
    arrays = {}
    for lane in lanes:
        for launch in lane.tape.launches:
            if callable(launch):
                continue
            for a in (*launch[3], *launch[4]):
                if isinstance(a, wp.array) and a.grad is not None and a.size > 0:
                    arrays[id(a)] = a
    if arrays:
        outer.record_func(backward, list(arrays.values()))


def _resolve_camera(ds: DeviceScene, camera: str, intrinsics, pose, width, height):
    c = ds.scene.cameras[camera]
    intr = intrinsics if intrinsics is not None else ds.leaf(camera_intrinsics(camera))
    pose = pose if pose is not None else ds.leaf(camera_pose(camera))
    return intr, pose, int(width or c.width), int(height or c.height)


def band_rows(height: int, parts: int) -> list[tuple[int, int, int, int]]:
    """Split rows [0, height) into `parts` bands (fewer if the image is short): per band
    (render_first, render_end, keep_first, keep_end), the rendered rows including one row of overlap
    with each neighbouring band, and the rows it contributes."""
    parts = max(1, min(int(parts), height // 2))
    edges = [round(k * height / parts) for k in range(parts + 1)]
    return [(max(0, a - 1), min(height, b + 1), a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def render_view_split(ds: DeviceScene, frame: Frame, camera: str, *, parts: int | None = None,
                      mode: str | None = None, shadows: bool | None = None,
                      intrinsics: wp.array | None = None, pose: wp.array | None = None,
                      width: int | None = None, height: int | None = None,
                      cache: GBufferCache | None = None) -> RenderOutput:
    """`render_view` with the image split into `parts` horizontal bands rendered by that many threads
    (default: one per core). Same arguments and result: `image`, `depth`, `normals` and `alpha` are
    differentiable as in `render_view` (under an enclosing `wp.Tape`), `tri_id` is not. In the hard and
    antialias modes the outputs equal `render_view`'s bit for bit (the gradients up to summation order).

    Falls back to a plain `render_view` when `parts` is 1, the device is not a CPU (a GPU launch is
    already parallel), or the scene's background is an image (`render_view` resamples it over the
    image it renders, which for a band would be the band)."""
    parts = default_workers() if parts is None else int(parts)
    if parts < 1:
        raise ValueError(f"parts: expected an int >= 1, got {parts}")
    kwargs = dict(mode=mode, shadows=shadows, intrinsics=intrinsics, pose=pose, width=width, height=height,
                  cache=cache)
    # with overrides the bands' G-buffers cannot be told apart from another camera's: no cache then
    band_cache = cache if intrinsics is None and pose is None else None
    intr, pose, width, height = _resolve_camera(ds, camera, intrinsics, pose, width, height)
    bands = band_rows(height, parts)
    # the path mode already renders bands of rows on every core (renderer.stages.pathtrace)
    path_mode = (mode or ds.scene.render.mode) == "path"
    if len(bands) == 1 or not ds.device.is_cpu or ds.background_pool is not None or path_mode:
        return render_view(ds, frame, camera, **kwargs)

    outer = active_tape()
    grad = outer is not None
    exact = (mode or ds.scene.render.mode) in BAND_MODES
    lanes = [_Lane(k, grad) for k in range(len(bands))]
    n, dev = width * height, ds.device
    full: dict[str, wp.array] = {}
    full_lock = threading.Lock()

    def full_like(name: str, band: wp.array | None) -> wp.array | None:
        if band is None:
            return None
        with full_lock:
            if name not in full:
                shape = (n,) if band.ndim == 1 else (n, band.shape[1])
                full[name] = wp.zeros(shape, dtype=band.dtype, device=dev,
                                      requires_grad=grad and band.requires_grad)
            return full[name]

    def work(lane: _Lane) -> None:
        first, end, keep, keep_end = bands[lane.index]
        if exact:
            band_intr, first_row = lane.alias(intr), first
        else:  # soft mode
            band_intr, first_row = wp.zeros(4, dtype=float, device=dev, requires_grad=grad and intr.requires_grad), 0
            wp.launch(_band_intrinsics, dim=1, inputs=[lane.alias(intr), float(first)], outputs=[band_intr],
                      device=dev)
        out = render_view(ds, lane.frame(frame), camera, mode=mode, shadows=shadows, intrinsics=band_intr,
                          pose=lane.alias(pose), width=width, height=end - first, cache=band_cache,
                          cache_key=("band", first, end, height), first_row=first_row,
                          image_height=height if exact else None)
        src, dst, count = (keep - first) * width, keep * width, (keep_end - keep) * width
        for name in ("image", "normals", "depth", "alpha", "tri_id"):
            band = getattr(out, name)
            dest = full_like(name, band)
            if band is None:
                continue
            if band.dtype == wp.int32:
                wp.launch(_stitch_ids, dim=count, inputs=[band, src, dst], outputs=[dest], device=dev,
                          record_tape=False)
            elif band.ndim == 1:
                wp.launch(_stitch_rows_1d, dim=count, inputs=[band, src, dst], outputs=[dest], device=dev,
                          record_tape=band.requires_grad)
            else:  # constant bands (a reused G-buffer's normals) need no adjoint launch
                wp.launch(_stitch_rows_2d, dim=(count, band.shape[1]), inputs=[band, src, dst],
                          outputs=[dest], device=dev, record_tape=band.requires_grad)

    _run_lanes(lanes, work, outer)
    return RenderOutput(width, height, full["image"], full.get("tri_id"), full.get("depth"),
                        full.get("normals"), full.get("alpha"))


def split_rows(heights: list[int], parts: int) -> list[list[tuple[int, int, int]]]:
    """The rows of a batch of views laid end to end (view 0's rows, then view 1's, ...) split into `parts`
    contiguous blocks of equal size (to a row): per part, its pieces (view index, first_row, end_row), in
    batch order. A view cut by a block boundary is in two (or more) parts' pieces; the pieces of all parts
    together cover every row of every view exactly once. The data-parallel split of a mesh step
    (`renderer.optim.models.MeshModel`): every rank computes the same blocks."""
    parts = int(parts)
    if parts < 1:
        raise ValueError(f"parts: expected an int >= 1, got {parts}")
    starts = np.concatenate([[0], np.cumsum(heights)]).astype(np.int64)
    total = int(starts[-1])
    out = []
    for k in range(parts):
        a, b = k * total // parts, (k + 1) * total // parts
        pieces = []
        for v, h in enumerate(heights):
            lo, hi = max(a, int(starts[v])), min(b, int(starts[v]) + int(h))
            if lo < hi:
                pieces.append((v, lo - int(starts[v]), hi - int(starts[v])))
        out.append(pieces)
    return out


def render_views(ds: DeviceScene, frame: Frame, cameras: list[str], *, workers: int | None = None,
                 mode: str | None = None, shadows: bool | None = None,
                 cache: GBufferCache | None = None,
                 rows: list[tuple[int, int] | None] | None = None) -> list[RenderOutput]:
    """`render_view` of each camera in `cameras` (all from one prepared `frame`), the views spread over
    `workers` threads (default: one per core). Outputs are differentiable as in `render_view` under an
    enclosing `wp.Tape`. Falls back to a plain loop on a GPU device or with one worker.

    `rows`: per camera None (the whole view) or (first_row, end_row), a band of the view's rows rendered
    with `render_view(..., first_row=first_row, height=end_row - first_row)` (hard and antialias modes)."""
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers: expected an int >= 1, got {workers}")
    cameras = list(cameras)
    for c in cameras:
        if c not in ds.scene.cameras:
            raise ValueError(f"cameras: unknown camera {c!r}; the scene has {list(ds.scene.cameras)}")
    rows = [None] * len(cameras) if rows is None else list(rows)
    if len(rows) != len(cameras):
        raise ValueError(f"rows: expected one entry per camera ({len(cameras)}), got {len(rows)}")

    def band(i: int) -> dict:
        if rows[i] is None:
            return {}
        first, end = (int(x) for x in rows[i])
        return dict(first_row=first, height=end - first, image_height=ds.scene.cameras[cameras[i]].height)

    workers = min(workers, len(cameras))
    if workers <= 1 or not ds.device.is_cpu or (mode or ds.scene.render.mode) == "path":  # path: see above
        return [render_view(ds, frame, c, mode=mode, shadows=shadows, cache=cache, **band(i))
                for i, c in enumerate(cameras)]

    outer = active_tape()
    lanes = [_Lane(k, outer is not None) for k in range(workers)]

    def work(lane: _Lane) -> list[tuple[int, RenderOutput]]:
        lane_frame = lane.frame(frame)
        done = []
        for i in range(lane.index, len(cameras), workers):
            c = cameras[i]
            intr = lane.alias(ds.leaf(camera_intrinsics(c)))
            pose = lane.alias(ds.leaf(camera_pose(c)))
            # the aliases read the camera's own leaves: the view's cache entry is the camera's
            done.append((i, render_view(ds, lane_frame, c, mode=mode, shadows=shadows, intrinsics=intr,
                                        pose=pose, cache=cache, cache_key=("view",), **band(i))))
        return done

    outputs: list[RenderOutput | None] = [None] * len(cameras)
    for done in _run_lanes(lanes, work, outer):
        for i, out in done:
            outputs[i] = out
    return outputs
