"""Ray marching for volume rendering: ray/box clipping, stratified samples, occupancy-grid skipping.

A ray o + t d (d need not be unit: camera rays from `renderer.stages.camera.generate_rays` have
camera-space z = -1, so t is view depth) is clipped to an axis-aligned box and to [near, far]; the
clipped segment [t0, t1] is cut into `n_samples` equal intervals, and each interval holds one sample
at a jittered point (stratified sampling) or at its midpoint. With an occupancy grid, samples whose
point lies in an unoccupied cell are dropped (NerfAcc-style empty-space skipping), so rays carry
different sample counts: samples are packed ray after ray, located by per-ray offsets and counts.

Scene contraction (`contract=True`, for unbounded captures; mip-NeRF 360's idea with the L-infinity norm,
as nerfstudio does for grids): the box given is the lattice's box, and its central half (the same centre,
half the size per axis) is the "inner" box, where the scene is modelled as is. A world point p with
normalized position x = (p - c) / h (c the centre, h the inner half-size per axis, m = max_a |x_a|) is
stored at c + h * f(x), f(x) = x for m <= 1 and (2 - 1 / m) x / m beyond: all of space maps into the
lattice's box, far points towards its faces. Rays are then marched from the inner box's entry (or `near`)
to `far`, with intervals uniform in s = g(t): g(t) = t up to the inner box's exit b, then
g(t) = 2 b - b^2 / t (linear in disparity; continuous with slope 1 at b), so half the strata of a ray
that starts inside lie inside the inner box and half in the contracted rest. A ray that misses the inner
box is marched from `near` with b = the inner box's mean half-size (in units of |d|). Sample positions
are the contracted points (what the field is queried at and the occupancy grid is kept over); `deltas`
stay world lengths, as densities integrate over world space.

Sampling is not differentiable: the sample parameters (t, intervals, deltas) are constants of the rays (launched
with record_tape=False), so no gradient reaches the box or near/far through them. When the rays' origins or
directions have requires_grad (camera refinement), the samples' positions and directions get requires_grad too,
and a hand-written adjoint recorded on the active tape carries their gradients back to the rays with each
sample's t held: position o + t d (through the contraction's Jacobian), direction d / |d|. The deltas keep no
gradient w.r.t. |d| (a rigid change of a camera keeps |d|, so its gradient loses nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import warp as wp

from ..checks import check_array  # noqa: F401  (re-exported for the volume modules)
from ..thread_tape import active_tape

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


@wp.func
def contract_point(p: wp.vec3, center: wp.vec3, half: wp.vec3) -> wp.vec3:
    """p stored in the contracted lattice box: identity in the inner box [center - half, center + half],
    then (2 - 1/m) x / m in normalized coordinates x = (p - center) / half, m = max |x_a|."""
    x = wp.cw_div(p - center, half)
    m = wp.max(wp.abs(x[0]), wp.max(wp.abs(x[1]), wp.abs(x[2])))
    if m <= 1.0:
        return p
    return center + wp.cw_mul(half, x * ((2.0 - 1.0 / m) / m))


@wp.func
def lindisp_t(s: float, span: wp.vec4) -> float:
    """The ray parameter at s of the piecewise sampling (g^-1) of span = (s0, s1, b, far): t = s up to b,
    then b^2 / (2 b - s), evaluated as 1/t linear from 1/b at s = b to 1/far at s = s1 (no cancellation
    near far)."""
    b = span[2]
    if s <= b:
        return s
    u = wp.min((s - b) / wp.max(span[1] - b, 1.0e-30), 1.0)
    return 1.0 / (1.0 / b + (1.0 / span[3] - 1.0 / b) * u)


@wp.func
def contracted_span(o: wp.vec3, d: wp.vec3, lo: wp.vec3, hi: wp.vec3, near: float, far: float) -> wp.vec4:
    """(s0, s1, b, far) of a contracted march: strata are uniform in s over [s0, s1], t = lindisp_t(s, span).
    lo, hi: the lattice's box; its central half is the inner box."""
    center = (lo + hi) * 0.5
    half = (hi - lo) * 0.25
    span = clip_ray_to_box(o, d, center - half, center + half, near, far)
    a = near
    b = (half[0] + half[1] + half[2]) / (3.0 * wp.length(d))
    if span[1] > span[0]:
        a = span[0]
        b = span[1]
    else:
        b = wp.max(b, near)
    s1 = 2.0 * b - b * b / far
    if b >= far:  # the whole march lies in the linear part
        s1 = far
    return wp.vec4(a, s1, b, far)


@wp.kernel
def _count_samples(origins: wp.array(dtype=wp.vec3), directions: wp.array(dtype=wp.vec3), lo: wp.vec3,
                   hi: wp.vec3, near: float, far: float, n_samples: int, jitter: int, seed: int,
                   first_ray: int, use_occupancy: int, occupancy: wp.array3d(dtype=wp.uint8), occ_lo: wp.vec3,
                   occ_hi: wp.vec3, contract: int, counts: wp.array(dtype=wp.int32)):
    r = wp.tid()
    o = origins[r]
    d = directions[r]
    n = int(0)
    if contract != 0:
        cs = contracted_span(o, d, lo, hi, near, far)
        if cs[1] > cs[0]:
            if use_occupancy == 0:
                n = n_samples
            else:
                center = (lo + hi) * 0.5
                half = (hi - lo) * 0.25
                ds = (cs[1] - cs[0]) / float(n_samples)
                for k in range(n_samples):
                    t = lindisp_t(stratum_point(cs[0], ds, k, jitter, seed, first_ray + r, n_samples), cs)
                    if occupied_at(contract_point(o + t * d, center, half), occupancy, occ_lo, occ_hi):
                        n += 1
        counts[r] = n
        return
    span = clip_ray_to_box(o, d, lo, hi, near, far)
    if span[1] > span[0]:
        if use_occupancy == 0:
            n = n_samples
        else:
            dt = (span[1] - span[0]) / float(n_samples)
            for k in range(n_samples):
                t = stratum_point(span[0], dt, k, jitter, seed, first_ray + r, n_samples)
                if occupied_at(o + t * d, occupancy, occ_lo, occ_hi):
                    n += 1
    counts[r] = n


@wp.kernel
def _write_samples(origins: wp.array(dtype=wp.vec3), directions: wp.array(dtype=wp.vec3), lo: wp.vec3,
                   hi: wp.vec3, near: float, far: float, n_samples: int, jitter: int, seed: int,
                   first_ray: int, use_occupancy: int, occupancy: wp.array3d(dtype=wp.uint8), occ_lo: wp.vec3,
                   occ_hi: wp.vec3, offsets: wp.array(dtype=wp.int32), ray_indices: wp.array(dtype=wp.int32),
                   t_starts: wp.array(dtype=float), t_ends: wp.array(dtype=float),
                   t_points: wp.array(dtype=float), deltas: wp.array(dtype=float),
                   positions: wp.array(dtype=wp.vec3), view_dirs: wp.array(dtype=wp.vec3), contract: int):
    r = wp.tid()
    o = origins[r]
    d = directions[r]
    if contract != 0:
        cs = contracted_span(o, d, lo, hi, near, far)
        if cs[1] > cs[0]:
            center = (lo + hi) * 0.5
            half = (hi - lo) * 0.25
            ds = (cs[1] - cs[0]) / float(n_samples)
            scale = wp.length(d)
            unit = d / scale
            s = offsets[r]
            for k in range(n_samples):
                t = lindisp_t(stratum_point(cs[0], ds, k, jitter, seed, first_ray + r, n_samples), cs)
                p = contract_point(o + t * d, center, half)
                if use_occupancy == 0 or occupied_at(p, occupancy, occ_lo, occ_hi):
                    t0 = lindisp_t(cs[0] + float(k) * ds, cs)
                    t1 = lindisp_t(cs[0] + float(k + 1) * ds, cs)
                    ray_indices[s] = r
                    t_starts[s] = t0
                    t_ends[s] = t1
                    t_points[s] = t
                    deltas[s] = (t1 - t0) * scale
                    positions[s] = p
                    view_dirs[s] = unit
                    s += 1
        return
    span = clip_ray_to_box(o, d, lo, hi, near, far)
    if span[1] > span[0]:
        dt = (span[1] - span[0]) / float(n_samples)
        scale = wp.length(d)
        unit = d / scale
        s = offsets[r]
        for k in range(n_samples):
            t = stratum_point(span[0], dt, k, jitter, seed, first_ray + r, n_samples)
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


@wp.func
def contract_point_vjp(p: wp.vec3, center: wp.vec3, half: wp.vec3, g: wp.vec3) -> wp.vec3:
    """g^T J at world point p of `contract_point` (g: the gradient w.r.t. the contracted point). Beyond the inner box,
    with x = (p - center) / half, m = |x_a*| (a* the axis of the largest |x_a|) and y = s(m) x, s(m) = (2m - 1) / m^2:
    dy/dx = s I + x (ds/dm) sign(x_a*) e_a*^T, ds/dm = 2 (1 - m) / m^3."""
    x = wp.cw_div(p - center, half)
    ax = int(0)
    m = wp.abs(x[0])
    if wp.abs(x[1]) > m:
        ax = 1
        m = wp.abs(x[1])
    if wp.abs(x[2]) > m:
        ax = 2
        m = wp.abs(x[2])
    if m <= 1.0:
        return g
    gy = wp.cw_mul(g, half)  # gradient w.r.t. y
    s = (2.0 * m - 1.0) / (m * m)
    gx = s * gy
    gx[ax] = gx[ax] + wp.dot(gy, x) * 2.0 * (1.0 - m) / (m * m * m) * wp.sign(x[ax])
    return wp.cw_div(gx, half)


@wp.kernel
def _samples_backward(origins: wp.array(dtype=wp.vec3), directions: wp.array(dtype=wp.vec3),
                      offsets: wp.array(dtype=wp.int32), counts: wp.array(dtype=wp.int32),
                      t_points: wp.array(dtype=float), adj_positions: wp.array(dtype=wp.vec3),
                      adj_dirs: wp.array(dtype=wp.vec3), lo: wp.vec3, hi: wp.vec3, contract: int,
                      adj_origins: wp.array(dtype=wp.vec3), adj_directions: wp.array(dtype=wp.vec3)):
    # one ray: the sum over its samples of the adjoint of p = C(o + t d) (t held) and of u = d / |d|; each ray
    # writes its own entries only
    r = wp.tid()
    o = origins[r]
    d = directions[r]
    center = (lo + hi) * 0.5
    half = (hi - lo) * 0.25
    go = wp.vec3(0.0, 0.0, 0.0)
    gd = wp.vec3(0.0, 0.0, 0.0)
    gu = wp.vec3(0.0, 0.0, 0.0)
    a = offsets[r]
    for s in range(a, a + counts[r]):
        t = t_points[s]
        g = adj_positions[s]
        if contract != 0:
            g = contract_point_vjp(o + t * d, center, half, g)
        go += g
        gd += t * g
        gu += adj_dirs[s]
    length = wp.length(d)
    u = d / length
    gd += (gu - u * wp.dot(u, gu)) / length
    adj_origins[r] = adj_origins[r] + go
    adj_directions[r] = adj_directions[r] + gd


@dataclass
class Samples:
    """Packed samples of N rays (S in total), ray after ray in marching order.

    ray_offsets, ray_counts: int32 (N,); ray r owns samples [ray_offsets[r], ray_offsets[r] + ray_counts[r]).
    ray_indices: int32 (S,) the ray of each sample.
    t_starts, t_ends: float32 (S,) the sample's interval in ray parameter t (units of the ray direction).
    t_points: float32 (S,) ray parameter of the sample point, inside its interval.
    deltas: float32 (S,) interval length in world units, (t_end - t_start) * |d|: the length densities
        integrate over.
    positions: vec3 (S,) world sample points o + t_point d (contracted, with `contract`).
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
                far: float = 1.0e10, *, seed: int = 0, jitter: bool = True, occupancy=None,
                contract: bool = False, first_ray: int = 0) -> Samples:
    """Stratified samples along rays inside a box.

    Args:
        origins, directions: vec3 (N,) rays o + t d; d need not be unit (t is in units of |d|).
        aabb: the scene box, 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax).
        n_samples: intervals the ray's segment [t0, t1] inside the box and [near, far] is cut into
            (equal width (t1 - t0) / n_samples); a ray that misses gets none.
        near, far: ray-parameter bounds (view depth for camera rays), 0 <= near < far.
        seed: random stream of the jitter; pass the training step to draw new points every step.
        jitter: one uniform random point per interval (stratified sampling) if True, else the midpoint.
        first_ray: the jitter of ray i is that of ray first_ray + i of a larger batch (a rank's slice of a
            batch draws the points the whole batch would; renderer.optim.distributed).
        occupancy: an `OccupancyGrid` or None. When given, samples whose point lies in an unoccupied cell,
            or outside the grid's box, are dropped; the intervals kept still tile their part of the ray.
        contract: march unbounded space through the scene contraction (module docstring): `aabb` is the
            lattice's box, its central half the inner box; rays run to `far` (give a finite one, e.g.
            CONTRACT_FAR times the box size), sample positions are contracted points.

    Returns:
        `Samples` (S samples packed ray after ray). Reads the total sample count back to the host to
        size the arrays (one device synchronization). The sampling itself is not differentiable; with rays that
        have requires_grad, the positions and directions are (module docstring).
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
    if contract and not far < 1.0e10:
        raise ValueError(f"far: a contracted march needs a finite far bound, got {far!r}")
    common = [origins, directions, lo, hi, float(near), float(far), int(n_samples), int(bool(jitter)),
              int(seed) % (2**31), int(first_ray), int(occupancy is not None), occ, occ_lo, occ_hi]
    counts = wp.empty(n, dtype=wp.int32, device=dev)
    wp.launch(_count_samples, dim=n, inputs=[*common, int(bool(contract)), counts], device=dev, record_tape=False)
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
                      out.positions, out.directions, int(bool(contract))])
    tape = active_tape()
    if (origins.requires_grad or directions.requires_grad) and tape is not None:
        _record_samples_backward(tape, origins, directions, out, lo, hi, contract)
    return out


def _record_samples_backward(tape, origins, directions, out: Samples, lo, hi, contract: bool) -> None:
    """Give the samples' positions and directions gradients and record their adjoint to the rays (module docstring)."""
    for arr in (out.positions, out.directions):
        arr.requires_grad = True
    for arr in (origins, directions):
        if arr.grad is None:
            arr.grad = wp.zeros_like(arr, requires_grad=False)

    def backward():
        wp.launch(_samples_backward, dim=origins.shape[0], device=origins.device, record_tape=False,
                  inputs=[origins, directions, out.ray_offsets, out.ray_counts, out.t_points, out.positions.grad,
                          out.directions.grad, lo, hi, int(bool(contract)), origins.grad, directions.grad])

    tape.record_func(backward, [origins, directions, out.positions, out.directions])


#: The far bound of a contracted march, in units of the lattice box's largest size: beyond it the
#: contracted point lies within ~1/CONTRACT_FAR of the box's faces.
CONTRACT_FAR = 1000.0


def contract_far(aabb) -> float:
    """The far bound (view depth) of a contracted march through a lattice over `aabb`."""
    lo, hi = parse_aabb("aabb", aabb)
    return CONTRACT_FAR * max(hi[a] - lo[a] for a in range(3))


def lattice_box(aabb, contract: bool) -> np.ndarray:
    """The box (6,) float32 a field's lattice or encoding spans, from the field's `aabb` (6 numbers): the box itself,
    or for a contracted field (the contracted space: module docstring) the inner box given, doubled about its
    centre."""
    box = np.asarray(aabb, np.float32).reshape(6)
    if not contract:
        return box
    center, half = (box[:3] + box[3:]) / 2, (box[3:] - box[:3]) / 2
    return np.r_[center - 2 * half, center + 2 * half].astype(np.float32)


def contract_points(points: np.ndarray, aabb) -> np.ndarray:
    """NumPy reference of the contraction (module docstring): world points (N, 3) -> lattice-box points."""
    box = np.asarray(aabb, np.float64).reshape(2, 3)
    center, half = box.mean(axis=0), (box[1] - box[0]) / 4.0
    x = (np.asarray(points, np.float64) - center) / half
    m = np.abs(x).max(axis=1, keepdims=True)
    scale = np.where(m <= 1.0, 1.0, (2.0 - 1.0 / np.maximum(m, 1.0)) / np.maximum(m, 1.0))
    return center + half * x * scale


def uncontract_points(points: np.ndarray, aabb) -> np.ndarray:
    """The inverse of `contract_points` for lattice-box points strictly inside its box (max-norm < 2)."""
    box = np.asarray(aabb, np.float64).reshape(2, 3)
    center, half = box.mean(axis=0), (box[1] - box[0]) / 4.0
    y = (np.asarray(points, np.float64) - center) / half
    m2 = np.abs(y).max(axis=1, keepdims=True)
    if np.any(m2 >= 2.0):
        raise ValueError("points: contracted points must lie strictly inside the lattice box (max-norm < 2)")
    m = np.where(m2 <= 1.0, 1.0, 1.0 / (2.0 - np.maximum(m2, 1.0)))
    return center + half * y * np.where(m2 <= 1.0, 1.0, m / np.maximum(m2, 1.0))
