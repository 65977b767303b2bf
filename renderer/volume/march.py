"""Ray marching for volume rendering: ray/box clipping, stratified samples, occupancy-grid skipping.

A ray o + t d (d need not be unit: camera rays from `renderer.stages.camera.generate_rays` have
camera-space z = -1, so t is view depth) is clipped to an axis-aligned box and to [near, far]; the
clipped segment [t0, t1] is cut into `n_samples` equal intervals, and each interval holds one sample
at a jittered point (stratified sampling) or at its midpoint. With an occupancy grid, samples whose
point lies in an unoccupied cell are dropped (NerfAcc-style empty-space skipping), so rays carry
different sample counts: samples are packed ray after ray, located by per-ray offsets and counts.

Sampling is not differentiable: sample parameters and positions are constants of the rays (launched
with record_tape=False), so no gradient reaches ray origins, directions, the box or near/far.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import warp as wp

from ..checks import check_array  # noqa: F401  (re-exported for the volume modules)

# Never differentiated: skip generating adjoints (faster compiles).
wp.set_module_options({"enable_backward": False})

_PARALLEL_EPS = wp.constant(1.0e-12)


@wp.func
def clip_ray_to_box(o: wp.vec3, d: wp.vec3, lo: wp.vec3, hi: wp.vec3, near: float, far: float) -> wp.vec2:
    """(t0, t1) of the ray inside box [lo, hi] and [near, far] by the slab method; t1 <= t0 if empty.
    A direction component that is (near) zero leaves the slab unbounded when the origin is inside it."""
    t0 = near
    t1 = far
    for a in range(3):
        if wp.abs(d[a]) < _PARALLEL_EPS:
            if o[a] < lo[a] or o[a] > hi[a]:
                t1 = t0 - 1.0
        else:
            inv = 1.0 / d[a]
            ta = (lo[a] - o[a]) * inv
            tb = (hi[a] - o[a]) * inv
            t0 = wp.max(t0, wp.min(ta, tb))
            t1 = wp.min(t1, wp.max(ta, tb))
    return wp.vec2(t0, t1)


@wp.func
def cell_of(p: wp.vec3, lo: wp.vec3, hi: wp.vec3, res: wp.vec3i) -> wp.vec3i:
    """Index of the cell of a res[0] x res[1] x res[2] grid over [lo, hi] holding p; -1 in x if outside."""
    u = wp.cw_div(p - lo, hi - lo)
    if u[0] < 0.0 or u[1] < 0.0 or u[2] < 0.0 or u[0] > 1.0 or u[1] > 1.0 or u[2] > 1.0:
        return wp.vec3i(-1, 0, 0)
    # a point on the far face belongs to the last cell
    i = wp.min(int(u[0] * float(res[0])), res[0] - 1)
    j = wp.min(int(u[1] * float(res[1])), res[1] - 1)
    k = wp.min(int(u[2] * float(res[2])), res[2] - 1)
    return wp.vec3i(i, j, k)


@wp.func
def occupied_at(p: wp.vec3, occupancy: wp.array3d(dtype=wp.uint8), lo: wp.vec3, hi: wp.vec3) -> bool:
    """Whether p lies in an occupied cell of the grid over [lo, hi]; points outside it are empty."""
    c = cell_of(p, lo, hi, wp.vec3i(occupancy.shape[0], occupancy.shape[1], occupancy.shape[2]))
    if c[0] < 0:
        return False
    return occupancy[c[0], c[1], c[2]] != wp.uint8(0)


@wp.func
def stratum_point(t0: float, dt: float, k: int, jitter: int, seed: int, ray: int, n_samples: int) -> float:
    """Ray parameter of sample k in interval [t0 + k dt, t0 + (k + 1) dt]: uniform in it (jitter) or its
    midpoint. The random stream is keyed by (seed, ray, k) so every pass draws the same point."""
    u = 0.5
    if jitter != 0:
        state = wp.rand_init(seed, ray * n_samples + k)
        u = wp.randf(state)
    return t0 + (float(k) + u) * dt


@wp.kernel
def _count_samples(origins: wp.array(dtype=wp.vec3), directions: wp.array(dtype=wp.vec3), lo: wp.vec3,
                   hi: wp.vec3, near: float, far: float, n_samples: int, jitter: int, seed: int,
                   use_occupancy: int, occupancy: wp.array3d(dtype=wp.uint8), occ_lo: wp.vec3,
                   occ_hi: wp.vec3, counts: wp.array(dtype=wp.int32)):
    r = wp.tid()
    o = origins[r]
    d = directions[r]
    span = clip_ray_to_box(o, d, lo, hi, near, far)
    n = int(0)
    if span[1] > span[0]:
        if use_occupancy == 0:
            n = n_samples
        else:
            dt = (span[1] - span[0]) / float(n_samples)
            for k in range(n_samples):
                t = stratum_point(span[0], dt, k, jitter, seed, r, n_samples)
                if occupied_at(o + t * d, occupancy, occ_lo, occ_hi):
                    n += 1
    counts[r] = n


@wp.kernel
def _write_samples(origins: wp.array(dtype=wp.vec3), directions: wp.array(dtype=wp.vec3), lo: wp.vec3,
                   hi: wp.vec3, near: float, far: float, n_samples: int, jitter: int, seed: int,
                   use_occupancy: int, occupancy: wp.array3d(dtype=wp.uint8), occ_lo: wp.vec3,
                   occ_hi: wp.vec3, offsets: wp.array(dtype=wp.int32), ray_indices: wp.array(dtype=wp.int32),
                   t_starts: wp.array(dtype=float), t_ends: wp.array(dtype=float),
                   t_points: wp.array(dtype=float), deltas: wp.array(dtype=float),
                   positions: wp.array(dtype=wp.vec3), view_dirs: wp.array(dtype=wp.vec3)):
    r = wp.tid()
    o = origins[r]
    d = directions[r]
    span = clip_ray_to_box(o, d, lo, hi, near, far)
    if span[1] > span[0]:
        dt = (span[1] - span[0]) / float(n_samples)
        scale = wp.length(d)
        unit = d / scale
        s = offsets[r]
        for k in range(n_samples):
            t = stratum_point(span[0], dt, k, jitter, seed, r, n_samples)
            p = o + t * d
            if use_occupancy == 0 or occupied_at(p, occupancy, occ_lo, occ_hi):
                ray_indices[s] = r
                t_starts[s] = span[0] + float(k) * dt
                t_ends[s] = span[0] + float(k + 1) * dt
                t_points[s] = t
                deltas[s] = dt * scale
                positions[s] = p
                view_dirs[s] = unit
                s += 1


@dataclass
class Samples:
    """Packed samples of N rays (S in total), ray after ray in marching order.

    ray_offsets, ray_counts: int32 (N,); ray r owns samples [ray_offsets[r], ray_offsets[r] + ray_counts[r]).
    ray_indices: int32 (S,) the ray of each sample.
    t_starts, t_ends: float32 (S,) the sample's interval in ray parameter t (units of the ray direction).
    t_points: float32 (S,) ray parameter of the sample point, inside its interval.
    deltas: float32 (S,) interval length in world units, (t_end - t_start) * |d|: the length densities
        integrate over.
    positions: vec3 (S,) world sample points o + t_point d.
    directions: vec3 (S,) unit view direction of the sample's ray (from the camera into the scene).
    """

    ray_offsets: wp.array
    ray_counts: wp.array
    ray_indices: wp.array
    t_starts: wp.array
    t_ends: wp.array
    t_points: wp.array
    deltas: wp.array
    positions: wp.array
    directions: wp.array

    @property
    def n_rays(self) -> int:
        return self.ray_offsets.shape[0]

    @property
    def n_samples(self) -> int:
        return self.ray_indices.shape[0]


def parse_aabb(name: str, aabb) -> tuple[wp.vec3, wp.vec3]:
    """(lo, hi) of a box given as 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax) with min < max."""
    try:
        box = np.asarray(aabb, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax), got {aabb!r}") from e
    if box.shape != (6,) or not np.all(np.isfinite(box)):
        raise ValueError(f"{name}: expected 6 finite numbers (xmin, ymin, zmin, xmax, ymax, zmax), got {aabb!r}")
    if not np.all(box[:3] < box[3:]):
        raise ValueError(f"{name}: expected min < max on every axis, got {box.tolist()}")
    return wp.vec3(*box[:3].tolist()), wp.vec3(*box[3:].tolist())


def sample_rays(origins: wp.array, directions: wp.array, aabb, n_samples: int, near: float = 0.0,
                far: float = 1.0e10, *, seed: int = 0, jitter: bool = True, occupancy=None) -> Samples:
    """Stratified samples along rays inside a box.

    Args:
        origins, directions: vec3 (N,) rays o + t d; d need not be unit (t is in units of |d|).
        aabb: the scene box, 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax).
        n_samples: intervals the ray's segment [t0, t1] inside the box and [near, far] is cut into
            (equal width (t1 - t0) / n_samples); a ray that misses gets none.
        near, far: ray-parameter bounds (view depth for camera rays), 0 <= near < far.
        seed: random stream of the jitter; pass the training step to draw new points every step.
        jitter: one uniform random point per interval (stratified sampling) if True, else the midpoint.
        occupancy: an `OccupancyGrid` or None. When given, samples whose point lies in an unoccupied cell,
            or outside the grid's box, are dropped; the intervals kept still tile their part of the ray.

    Returns:
        `Samples` (S samples packed ray after ray). Reads the total sample count back to the host to
        size the arrays (one device synchronization). Not differentiable (record_tape=False).
    """
    check_array("origins", origins, wp.vec3, (None,))
    dev, n = origins.device, origins.shape[0]
    check_array("directions", directions, wp.vec3, (n,), dev)
    lo, hi = parse_aabb("aabb", aabb)
    if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples <= 0:
        raise ValueError(f"n_samples: expected a positive int, got {n_samples!r}")
    if not (isinstance(near, Real) and isinstance(far, Real) and 0.0 <= near < far):
        raise ValueError(f"near, far: expected 0 <= near < far, got near={near!r}, far={far!r}")
    if not isinstance(seed, Integral):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if occupancy is None:
        occ, occ_lo, occ_hi = wp.ones((1, 1, 1), dtype=wp.uint8, device=dev), lo, hi
    else:
        if not hasattr(occupancy, "occupied"):
            raise TypeError(f"occupancy: expected an OccupancyGrid or None, got {type(occupancy).__name__}")
        occ, occ_lo, occ_hi = occupancy.occupied, occupancy.lo, occupancy.hi
        if occ.device != dev:
            raise ValueError(f"occupancy: is on {occ.device}, expected {dev} (the device of origins)")
    common = [origins, directions, lo, hi, float(near), float(far), int(n_samples), int(bool(jitter)),
              int(seed) % (2**31), int(occupancy is not None), occ, occ_lo, occ_hi]
    counts = wp.empty(n, dtype=wp.int32, device=dev)
    wp.launch(_count_samples, dim=n, inputs=[*common, counts], device=dev, record_tape=False)
    offsets = wp.empty(n, dtype=wp.int32, device=dev)
    if n > 0:
        wp.utils.array_scan(counts, offsets, inclusive=False)
        total = int(offsets[n - 1:].numpy()[0] + counts[n - 1:].numpy()[0])
    else:
        total = 0
    out = Samples(ray_offsets=offsets, ray_counts=counts,
                  ray_indices=wp.empty(total, dtype=wp.int32, device=dev),
                  t_starts=wp.empty(total, dtype=float, device=dev), t_ends=wp.empty(total, dtype=float, device=dev),
                  t_points=wp.empty(total, dtype=float, device=dev), deltas=wp.empty(total, dtype=float, device=dev),
                  positions=wp.empty(total, dtype=wp.vec3, device=dev),
                  directions=wp.empty(total, dtype=wp.vec3, device=dev))
    wp.launch(_write_samples, dim=n, device=dev, record_tape=False,
              inputs=[*common, offsets, out.ray_indices, out.t_starts, out.t_ends, out.t_points, out.deltas,
                      out.positions, out.directions])
    return out
