"""A time-conditioned voxel-grid radiance field: T lattices ("slices") over one box, blended linearly in time.

The field at time t in [0, 1] is a `VoxelGrid` whose raw values are the linear blend of the two slices
around t. Slice k holds the field at time k / (T - 1), k = 0 .. T - 1; with s = t (T - 1),
k = min(floor(s), T - 2) and w = s - k:
    density(t) = (1 - w) density[k] + w density[k + 1],   sh(t) likewise,
then the grid is queried exactly like a `VoxelGrid` (trilinear in space, then the activations). This is a
4D grid, trilinear in space and linear in time (the simplest member of the "4D grid / plane factorization"
family); a deformation field would be the alternative when slices are too expensive.

Layouts (Warp arrays have at most 4 dimensions, so the SH slices are stacked along x):
    density: (T, nx, ny, nz)           density[k] is slice k, laid out as `VoxelGrid.density`;
    sh:      (T * nx, ny, nz, 3K)      rows k * nx .. (k + 1) * nx - 1 are slice k, laid out as
                                       `VoxelGrid.sh`; the memory is exactly that of a C-ordered
                                       (T, nx, ny, nz, 3K) array (`sh.numpy().reshape(T, nx, ny, nz, 3K)`).

Gradients: `at_time` launches its blend off the tape and records a hand-written exact adjoint (each slice
receives its blend weight times the blended grid's gradient) on the active tape, i.e. whatever
`renderer.thread_tape.active_tape()` is for the calling thread (`renderer.parallel` gives each lane its
own).
Call it inside the tape the loss is recorded on; gradients of anything rendered with the returned grid
then reach this grid's `density.grad` / `sh.grad`. `total_variation` records its adjoint the same way.
Queries for the occupancy grid (`query_density_at`, `query_density_max`) are not differentiable.
"""

from __future__ import annotations

import copy
import math
from numbers import Real
from typing import Any

import numpy as np
import warp as wp

from ..thread_tape import active_tape
from .march import check_array, parse_aabb
from .occupancy import parse_resolution
from .voxel_grid import ACTIVATIONS, VoxelGrid, activate_density, corner_weight, lattice_cell, tv_stencil

# Every adjoint here is written by hand (and the occupancy queries are never differentiated): skip
# generating Warp's adjoints.
wp.set_module_options({"enable_backward": False})


@wp.kernel
def _blend(density: wp.array4d(dtype=Any), sh: wp.array4d(dtype=Any), k: int, w: float, nx: int,
           out_density: wp.array3d(dtype=Any), out_sh: wp.array4d(dtype=Any)):
    # out = (1 - w) slice_k + w slice_{k+1}, arithmetic in float32 whatever the storage
    x, y, z = wp.tid()
    a = 1.0 - w
    out_density[x, y, z] = out_density.dtype(a * wp.float32(density[k, x, y, z])
                                             + w * wp.float32(density[k + 1, x, y, z]))
    x0 = k * nx + x
    x1 = x0 + nx
    for c in range(sh.shape[3]):
        out_sh[x, y, z, c] = out_sh.dtype(a * wp.float32(sh[x0, y, z, c]) + w * wp.float32(sh[x1, y, z, c]))


@wp.kernel
def _blend_backward(adj_density: wp.array3d(dtype=Any), adj_sh: wp.array4d(dtype=Any), k: int, w: float,
                    nx: int, grad_density: wp.array4d(dtype=Any), grad_sh: wp.array4d(dtype=Any)):
    # d out / d slice_k = 1 - w, d out / d slice_{k+1} = w. Each thread owns its point of both slices,
    # so a plain read-modify-write (no atomics).
    x, y, z = wp.tid()
    a = 1.0 - w
    g = wp.float32(adj_density[x, y, z])
    grad_density[k, x, y, z] = grad_density[k, x, y, z] + grad_density.dtype(a * g)
    grad_density[k + 1, x, y, z] = grad_density[k + 1, x, y, z] + grad_density.dtype(w * g)
    x0 = k * nx + x
    x1 = x0 + nx
    for c in range(adj_sh.shape[3]):
        g = wp.float32(adj_sh[x, y, z, c])
        grad_sh[x0, y, z, c] = grad_sh[x0, y, z, c] + grad_sh.dtype(a * g)
        grad_sh[x1, y, z, c] = grad_sh[x1, y, z, c] + grad_sh.dtype(w * g)


@wp.kernel
def _tv_forward(values: wp.array4d(dtype=Any), nx: int, scale: float, time_scale: float,
                out_loss: wp.array(dtype=float)):
    # values (T * nx, ny, nz, C): squared forward differences along x, y, z inside each slice (scale) and
    # between the same point of consecutive slices (time_scale); differences leaving the grid are absent
    r, y, z = wp.tid()
    x = r % nx
    e = float(0.0)
    e_time = float(0.0)
    for c in range(values.shape[3]):
        v = wp.float32(values[r, y, z, c])
        if x + 1 < nx:
            d = wp.float32(values[r + 1, y, z, c]) - v
            e += d * d
        if y + 1 < values.shape[1]:
            d = wp.float32(values[r, y + 1, z, c]) - v
            e += d * d
        if z + 1 < values.shape[2]:
            d = wp.float32(values[r, y, z + 1, c]) - v
            e += d * d
        if r + nx < values.shape[0]:
            d = wp.float32(values[r + nx, y, z, c]) - v
            e_time += d * d
    wp.atomic_add(out_loss, 0, scale * e + time_scale * e_time)


@wp.kernel
def _tv_backward(values: wp.array4d(dtype=Any), nx: int, scale: float, time_scale: float,
                 adj_loss: wp.array(dtype=float), grad: wp.array4d(dtype=Any)):
    # d/dv of the squared differences v takes part in: 2 (v - v_prev) - 2 (v_next - v) per axis and in
    # time. Each thread owns its point's gradients: plain read-modify-write.
    r, y, z = wp.tid()
    x = r % nx
    k = 2.0 * adj_loss[0]
    for c in range(values.shape[3]):
        v = wp.float32(values[r, y, z, c])
        g = tv_stencil(values, r, x, nx, y, z, c)
        g_time = float(0.0)
        if r + nx < values.shape[0]:
            g_time -= wp.float32(values[r + nx, y, z, c]) - v
        if r >= nx:
            g_time += v - wp.float32(values[r - nx, y, z, c])
        grad[r, y, z, c] = grad[r, y, z, c] + grad.dtype(k * (scale * g + time_scale * g_time))


@wp.func
def _interpolate_slice(density: wp.array4d(dtype=Any), k: int, i: wp.vec3i, f: wp.vec3) -> float:
    raw = float(0.0)
    for c in range(8):
        raw += corner_weight(f, c) * wp.float32(density[k, i[0] + (c & 1), i[1] + ((c >> 1) & 1),
                                                        i[2] + ((c >> 2) & 1)])
    return raw


@wp.kernel
def _query_density_time(density: wp.array4d(dtype=Any), k: int, w: float, lo: wp.vec3, hi: wp.vec3,
                        activation: int, positions: wp.array(dtype=wp.vec3), out: wp.array(dtype=float)):
    s = wp.tid()
    res = wp.vec3i(density.shape[1], density.shape[2], density.shape[3])
    i, f = lattice_cell(positions[s], lo, hi, res)
    raw = (1.0 - w) * _interpolate_slice(density, k, i, f) + w * _interpolate_slice(density, k + 1, i, f)
    out[s] = activate_density(raw, activation)


@wp.kernel
def _query_density_max(density: wp.array4d(dtype=Any), lo: wp.vec3, hi: wp.vec3, activation: int,
                       positions: wp.array(dtype=wp.vec3), out: wp.array(dtype=float)):
    # max over slices of the raw value, then the (monotonic) activation: the max over slices of the density
    s = wp.tid()
    res = wp.vec3i(density.shape[1], density.shape[2], density.shape[3])
    i, f = lattice_cell(positions[s], lo, hi, res)
    best = _interpolate_slice(density, 0, i, f)
    for k in range(1, density.shape[0]):
        best = wp.max(best, _interpolate_slice(density, k, i, f))
    out[s] = activate_density(best, activation)


def _values(name: str, value, shapes: list[tuple[int, ...]]) -> np.ndarray:
    """`value` (array-like or Warp array) as float64 of the first of `shapes`; ValueError otherwise."""
    if isinstance(value, wp.array):
        value = value.numpy()
    a = np.asarray(value, dtype=np.float64)
    if a.shape not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
    return a.reshape(shapes[0])


class TimeGrid:
    """Density + SH color on T lattice slices over one box, linear in time (module docstring).

    Args:
        resolution: lattice points per axis of each slice, an int or (nx, ny, nz), each >= 2.
        n_times: T >= 2 slices, slice k at time k / (T - 1).
        aabb: the box, 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax).
        sh_degree: 0, 1 or 2; K = (sh_degree + 1)^2 coefficients per channel.
        activation: "softplus" or "relu" (as `VoxelGrid`).
        init_density: activated density of every slice of a fresh grid; ignored when `density` is given.
        device: Warp device (default: the current one).
        density: optional raw values (T, nx, ny, nz); sh: optional raw coefficients (T, nx, ny, nz, 3K) or
            stacked (T * nx, ny, nz, 3K) (default 0: color 0.5).
        dtype: storage, wp.float32 or wp.float16.
        requires_grad: allocate gradients for the value arrays.

    Attributes:
        density: array4d (T, nx, ny, nz); sh: array4d (T * nx, ny, nz, 3K) (slice k = rows k*nx..(k+1)*nx-1);
        the leaves an optimizer updates (`params`). resolution (nx, ny, nz), n_times, aabb, sh_degree,
        n_coeffs, activation, dtype, device.
    """

    def __init__(self, resolution, n_times: int, aabb, sh_degree: int = 0, activation: str = "softplus",
                 init_density: float = 0.1, device=None, density=None, sh=None, dtype=wp.float32,
                 requires_grad: bool = True):
        if not isinstance(n_times, (int, np.integer)) or isinstance(n_times, bool) or n_times < 2:
            raise ValueError(f"n_times: expected an integer >= 2 (slices at times k / (n_times - 1)), got "
                             f"{n_times!r}")
        self.n_times = int(n_times)
        self.resolution = parse_resolution("resolution", resolution, minimum=2)
        # the static-grid checks (aabb, sh_degree, dtype, activation, init_density) and a template whose
        # copies become the grids `at_time` and `slice` return; 2^3 values, so it costs nothing
        self._template = VoxelGrid(2, aabb, sh_degree, dtype, activation,
                                   init_density if density is None else 1.0, device=device, requires_grad=False)
        t = self._template
        self.lo, self.hi = parse_aabb("aabb", aabb)
        self.aabb, self.sh_degree, self.n_coeffs = t.aabb, t.sh_degree, t.n_coeffs
        self.activation, self.dtype, self.device = t.activation, t.dtype, t.device
        T, (nx, ny, nz), c3 = self.n_times, self.resolution, 3 * self.n_coeffs
        if density is None:
            density = np.broadcast_to(t.density.numpy().astype(np.float64)[0, 0, 0], (T, nx, ny, nz))
        density = _values("density", density, [(T, nx, ny, nz)])
        sh = np.zeros((T * nx, ny, nz, c3)) if sh is None else _values("sh", sh, [(T * nx, ny, nz, c3),
                                                                                 (T, nx, ny, nz, c3)])
        np_dtype = np.float16 if dtype == wp.float16 else np.float32
        self.density = wp.array(density.astype(np_dtype), dtype=dtype, device=self.device,
                                requires_grad=requires_grad)
        self.sh = wp.array(sh.astype(np_dtype), dtype=dtype, device=self.device, requires_grad=requires_grad)

    # -- bookkeeping -----------------------------------------------------------------------------
    def params(self) -> dict[str, wp.array]:
        """{"density": ..., "sh": ...}: the leaf arrays, for an optimizer (float32 grids only)."""
        return {"density": self.density, "sh": self.sh}

    @property
    def nbytes(self) -> int:
        """Bytes of the value arrays of all slices (gradients and optimizer state not included)."""
        return self.density.capacity + self.sh.capacity

    def times(self) -> np.ndarray:
        """float64 (T,): the slices' times k / (T - 1)."""
        return np.linspace(0.0, 1.0, self.n_times)

    def sh_slices(self) -> np.ndarray:
        """The SH values as a NumPy (T, nx, ny, nz, 3K) array (a copy)."""
        return self.sh.numpy().reshape(self.n_times, *self.resolution, 3 * self.n_coeffs).copy()

    def slice_weights(self, t: float) -> tuple[int, float]:
        """(k, w) with the field at `t` = (1 - w) slice k + w slice k + 1; ValueError for t outside [0, 1]."""
        if not isinstance(t, Real) or isinstance(t, bool) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"t: expected a time in [0, 1], got {t!r}")
        s = float(t) * (self.n_times - 1)
        k = min(int(math.floor(s)), self.n_times - 2)
        return k, s - k

    def _grid(self, density: wp.array, sh: wp.array) -> VoxelGrid:
        g = copy.copy(self._template)
        g.resolution, g.density, g.sh = self.resolution, density, sh
        return g

    def slice(self, k: int) -> VoxelGrid:
        """Slice k as a `VoxelGrid` whose arrays are views of this grid's (no copy: edits and gradients
        go straight into slice k)."""
        if not isinstance(k, (int, np.integer)) or not 0 <= k < self.n_times:
            raise ValueError(f"k: expected a slice index in [0, {self.n_times - 1}], got {k!r}")
        nx = self.resolution[0]
        return self._grid(self.density[int(k)], self.sh[int(k) * nx:(int(k) + 1) * nx])

    # -- the field at a time ---------------------------------------------------------------------
    def at_time(self, t: float) -> VoxelGrid:
        """The field at time t in [0, 1]: a new `VoxelGrid` (same box, degree, activation, dtype) whose raw
        values are (1 - w) slice k + w slice k + 1 (`slice_weights`). Computed by a Warp kernel; under an
        active tape its exact adjoint is recorded, so gradients of anything rendered with the returned grid
        flow into this grid's `density.grad` and `sh.grad`. ValueError for t outside [0, 1]."""
        k, w = self.slice_weights(t)
        nx = self.resolution[0]
        grad = self.density.requires_grad or self.sh.requires_grad
        out_density = wp.empty(self.resolution, dtype=self.dtype, device=self.device, requires_grad=grad)
        out_sh = wp.empty((*self.resolution, 3 * self.n_coeffs), dtype=self.dtype, device=self.device,
                          requires_grad=grad)
        wp.launch(_blend, dim=self.resolution, device=self.device, record_tape=False,
                  inputs=[self.density, self.sh, k, w, nx, out_density, out_sh])
        tape = active_tape()  # the calling thread's tape (or renderer.parallel's stand-in), None outside
        if tape is not None and grad:
            density, sh, res = self.density, self.sh, self.resolution

            def backward():
                # a leaf without gradients (e.g. fixed SH) receives its share in a scratch array
                g_density = density.grad if density.requires_grad else wp.zeros_like(density)
                g_sh = sh.grad if sh.requires_grad else wp.zeros_like(sh)
                wp.launch(_blend_backward, dim=res, device=density.device, record_tape=False,
                          inputs=[out_density.grad, out_sh.grad, k, w, nx, g_density, g_sh])

            tape.record_func(backward, [a for a in (density, sh, out_density, out_sh) if a.requires_grad])
        return self._grid(out_density, out_sh)

    def _check_points(self, positions) -> int:
        check_array("positions", positions, wp.vec3, (None,), self.device)
        return positions.shape[0]

    def query_density_at(self, t: float):
        """A function positions vec3 (S,) -> float32 (S,) densities of the field at time t (what
        `at_time(t).query_density` gives, without building the blended grid). For the occupancy grid of
        one time; not differentiable."""
        k, w = self.slice_weights(t)

        def density_fn(positions: wp.array) -> wp.array:
            s = self._check_points(positions)
            out = wp.zeros(s, dtype=float, device=self.device)
            wp.launch(_query_density_time, dim=s, device=self.device, record_tape=False,
                      inputs=[self.density, k, w, self.lo, self.hi, ACTIVATIONS.index(self.activation),
                              positions, out])
            return out

        return density_fn

    def query_density_max(self, positions: wp.array) -> wp.array:
        """float32 (S,): the largest density over the slices at each position. The field at any time t is
        at most this (a blend of two slices, linear in the raw values, is at most their max, and the
        activations are monotonic), so `OccupancyGrid.update(grid.query_density_max)` gives one occupancy
        grid valid for every time. Not differentiable."""
        s = self._check_points(positions)
        out = wp.zeros(s, dtype=float, device=self.device)
        wp.launch(_query_density_max, dim=s, device=self.device, record_tape=False,
                  inputs=[self.density, self.lo, self.hi, ACTIVATIONS.index(self.activation), positions, out])
        return out

    # -- regularization --------------------------------------------------------------------------
    def total_variation(self, out_loss: wp.array, weight: float, sh_weight: float | None = None,
                        time_weight: float | None = None, sh_time_weight: float | None = None) -> None:
        """out_loss[0] += weight * TVs(density) + sh_weight * TVs(sh) + time_weight * TVt(density)
                          + sh_time_weight * TVt(sh).

        TVs(v) = (1 / T) sum_k TV(v_k), `VoxelGrid.total_variation`'s TV of each slice averaged over the
        slices, i.e. (1 / (T n C)) sum over slices, the n lattice points, C channels and 3 axes of the
        squared forward differences. TVt(v) = (1 / ((T - 1) n C)) sum_{k < T-1} sum_{p, c}
        (v_{k+1}[p, c] - v_k[p, c])^2, the mean squared difference of consecutive slices (temporal
        smoothness). sh_weight defaults to weight, time_weight to 0, sh_time_weight to time_weight.
        Differentiable w.r.t. the values (hand-written adjoint on the active tape) when out_loss has
        requires_grad=True."""
        check_array("out_loss", out_loss, wp.float32, (1,), self.device)
        sh_weight = weight if sh_weight is None else sh_weight
        time_weight = 0.0 if time_weight is None else time_weight
        sh_time_weight = time_weight if sh_time_weight is None else sh_time_weight
        T, res = self.n_times, self.resolution
        n = int(np.prod(res))
        c3 = 3 * self.n_coeffs
        for values, w_space, w_time, c in ((self.density.reshape((T * res[0], res[1], res[2], 1)), weight,
                                            time_weight, 1),
                                           (self.sh, sh_weight, sh_time_weight, c3)):
            if w_space == 0.0 and w_time == 0.0:
                continue
            _total_variation(values, res[0], float(w_space) / (T * n * c), float(w_time) / ((T - 1) * n * c),
                             out_loss)

    # -- conversions -----------------------------------------------------------------------------
    def upsample(self, new_resolution) -> TimeGrid:
        """A new grid of `new_resolution` lattice points per slice over the same box and times, each slice
        resampled trilinearly as `VoxelGrid.upsample` does (build a new optimizer for its arrays). Same
        degree, dtype, activation. Not differentiable."""
        res = parse_resolution("new_resolution", new_resolution, minimum=2)
        slices = [self.slice(k).upsample(res) for k in range(self.n_times)]
        density = np.stack([g.density.numpy() for g in slices]).astype(np.float64)
        sh = np.stack([g.sh.numpy() for g in slices]).astype(np.float64)
        return TimeGrid(res, self.n_times, self.aabb, self.sh_degree, self.activation, device=self.device,
                        density=density, sh=sh, dtype=self.dtype, requires_grad=self.density.requires_grad)

    def astype(self, dtype, requires_grad: bool | None = None) -> TimeGrid:
        """A copy stored as `dtype` (wp.float32 or wp.float16; float16 rounds to nearest)."""
        requires_grad = self.density.requires_grad if requires_grad is None else requires_grad
        return TimeGrid(self.resolution, self.n_times, self.aabb, self.sh_degree, self.activation,
                        device=self.device, density=self.density.numpy().astype(np.float64),
                        sh=self.sh.numpy().astype(np.float64), dtype=dtype, requires_grad=requires_grad)


def _total_variation(values: wp.array, nx: int, scale: float, time_scale: float, out_loss: wp.array) -> None:
    """out_loss[0] += scale * (spatial squared differences) + time_scale * (temporal ones) of a
    (T * nx, ny, nz, C) array of T stacked slices, with the adjoint recorded on the active tape."""
    dim = values.shape[:3]
    wp.launch(_tv_forward, dim=dim, device=values.device, record_tape=False,
              inputs=[values, nx, scale, time_scale, out_loss])
    tape = active_tape()
    if tape is not None and values.requires_grad and out_loss.requires_grad:
        def backward():
            wp.launch(_tv_backward, dim=dim, device=values.device, record_tape=False,
                      inputs=[values, nx, scale, time_scale, out_loss.grad, values.grad])
        tape.record_func(backward, [values, out_loss])
