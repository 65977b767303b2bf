"""Multiresolution hash-grid encoding of points in a box (Mueller et al. 2022, "Instant neural graphics
primitives"), in Warp with hand-written adjoints.

L levels, each a lattice over the box with a table of T = 2^log2_T entries of F features (one flat table
(L*T, F) float32: rows [l*T, (l+1)*T) belong to level l). Level l has N_l = floor(N_min * b^l) cells per
axis, i.e. N_l + 1 lattice points per axis, lattice point (x, y, z) at lo + (x, y, z) / N_l * (hi - lo).

A point p is normalized to u = (p - lo) / (hi - lo), clamped into [0, 1]^3 (per axis: the box need not be a
cube), scaled to s = u N_l; its cell corner is i = min(floor(s), N_l - 1) and its offset f = s - i. The
level's features are the trilinear interpolation of the table rows of the cell's 8 corners:
    out[n, l*F + k] = sum_c w_c(f) table[l*T + index_l(i + c), k],  w_c = prod_a (c_a ? f_a : 1 - f_a).
The index of lattice point (x, y, z):
- dense levels, whose (N_l + 1)^3 lattice points fit in the table: x + (N_l + 1) (y + (N_l + 1) z) (no
  collisions; the rest of the level's T rows is unused);
- hashed levels: (x * 1 XOR y * 2654435761 XOR z * 805459861) mod T in uint32 arithmetic (the paper's
  spatial hash, eq. 4: products wrap modulo 2^32, T a power of two so mod T keeps the low bits).

Gradients: w.r.t. the table, each corner row receives w_c times the output's gradient (atomic adds: rows
are shared by points and, on hashed levels, by colliding lattice points); w.r.t. the points (optional),
d out / d p_a = sum_c (d w_c / d f_a) table[..] N_l / (hi_a - lo_a) inside the box, 0 where a coordinate
was clamped. The features are continuous in p but their derivative jumps across cell faces.

Three ways in: `HashGridEncoding.encode` on Warp arrays records the adjoint on the active `wp.Tape`
(`tape.record_func`, as `VoxelGrid.query`); `encode_torch` is a `torch.autograd.Function` on float32 tensors
handed to Warp zero-copy (`wp.from_torch`), for fields whose heads are torch modules; `encode_torch_into` is
the same but adds the table gradient into a buffer the caller keeps (no fresh (L*T, F) gradient per step).

Kernels: one thread per point walks all levels and reads a table entry as one F-vector (F in 1, 2, 4, 8; the
float arrays are viewed as vector arrays without copies). CPU launches run serially, so the atomic adds of
the backward are deterministic there.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
import warp as wp

from ..checks import check_array
from ..thread_tape import active_tape
from .march import parse_aabb
from .voxel_grid import corner_weight, corner_weight_gradient  # the voxel grid's trilinear weights

# the paper's primes for y and z (x's is 1); any large odd constants would do
PRIME_Y = 2654435761
PRIME_Z = 805459861
_PRIME_Y = wp.constant(wp.uint32(PRIME_Y))
_PRIME_Z = wp.constant(wp.uint32(PRIME_Z))


@wp.func
def hash_index(x: int, y: int, z: int, mask: wp.uint32) -> int:
    """(x XOR y * PRIME_Y XOR z * PRIME_Z) & mask, in wrapping uint32 arithmetic (mask = T - 1)."""
    h = wp.uint32(x) ^ (wp.uint32(y) * _PRIME_Y) ^ (wp.uint32(z) * _PRIME_Z)
    return int(h & mask)


@wp.func
def lattice_index(x: int, y: int, z: int, res: int, dense: int, mask: wp.uint32) -> int:
    """Row of lattice point (x, y, z) within its level's table: dense (res + 1)^3 indexing or the hash."""
    if dense != 0:
        n = res + 1
        return x + n * (y + n * z)
    return hash_index(x, y, z, mask)


@wp.func
def level_cell(p: wp.vec3, lo: wp.vec3, inv_extent: wp.vec3, res: int):
    """(corner index i, offset f in [0, 1]^3, inside mask (1 per unclamped axis)) of p's cell on a lattice
    of `res` cells per axis over the box."""
    i = wp.vec3i(0, 0, 0)
    f = wp.vec3(0.0, 0.0, 0.0)
    inside = wp.vec3(0.0, 0.0, 0.0)
    for a in range(3):
        u = (p[a] - lo[a]) * inv_extent[a]
        if u >= 0.0 and u <= 1.0:
            inside[a] = 1.0
        s = wp.clamp(u, 0.0, 1.0) * float(res)
        i[a] = wp.min(int(s), res - 1)
        f[a] = s - float(i[a])
    return i, f, inside


@wp.kernel
def _encode(points: wp.array(dtype=wp.vec3), lo: wp.vec3, inv_extent: wp.vec3,
            resolutions: wp.array(dtype=wp.int32), dense: wp.array(dtype=wp.int32), table_size: int,
            table: wp.array(dtype=Any), out: wp.array2d(dtype=Any)):
    # one thread per point, all levels; table (L*T,) and out (N, L) hold F-vectors (views of the float arrays)
    n = wp.tid()
    p = points[n]
    mask = wp.uint32(table_size - 1)
    for l in range(resolutions.shape[0]):
        res = resolutions[l]
        i, f, inside = level_cell(p, lo, inv_extent, res)
        base = l * table_size
        acc = table.dtype()
        for c in range(8):
            row = base + lattice_index(i[0] + (c & 1), i[1] + ((c >> 1) & 1), i[2] + ((c >> 2) & 1), res, dense[l],
                                       mask)
            acc += corner_weight(f, c) * table[row]
        out[n, l] = acc


@wp.kernel
def _encode_backward(points: wp.array(dtype=wp.vec3), lo: wp.vec3, inv_extent: wp.vec3,
                     resolutions: wp.array(dtype=wp.int32), dense: wp.array(dtype=wp.int32), table_size: int,
                     table: wp.array(dtype=Any), adj_out: wp.array2d(dtype=Any), want_table: int,
                     grad_table: wp.array(dtype=Any), want_points: int, grad_points: wp.array(dtype=wp.vec3)):
    # The exact adjoint of _encode: row r of corner c gets w_c * adj (atomic: rows are shared by points and,
    # on hashed levels, by colliding lattice points); the point gets
    # sum_c (dw_c/df) (table row . adj) * res / extent on its unclamped axes.
    n = wp.tid()
    p = points[n]
    mask = wp.uint32(table_size - 1)
    dp = wp.vec3(0.0, 0.0, 0.0)
    zero = table.dtype()
    for l in range(resolutions.shape[0]):
        adj = adj_out[n, l]
        if adj == zero:
            continue  # e.g. a sample past early termination
        res = resolutions[l]
        i, f, inside = level_cell(p, lo, inv_extent, res)
        base = l * table_size
        dl = wp.vec3(0.0, 0.0, 0.0)
        for c in range(8):
            row = base + lattice_index(i[0] + (c & 1), i[1] + ((c >> 1) & 1), i[2] + ((c >> 2) & 1), res, dense[l],
                                       mask)
            if want_table != 0:
                wp.atomic_add(grad_table, row, corner_weight(f, c) * adj)
            if want_points != 0:
                dl += corner_weight_gradient(f, c) * wp.dot(table[row], adj)
        dp += wp.cw_mul(dl, inside) * float(res)
    if want_points != 0:
        grad_points[n] = grad_points[n] + wp.cw_mul(dp, inv_extent)


_VECTORS = {1: wp.types.vector(length=1, dtype=wp.float32), 2: wp.vec2, 4: wp.vec4,
            8: wp.types.vector(length=8, dtype=wp.float32)}


def _vector_view(a: wp.array, length: int, shape: tuple) -> wp.array:
    """The contiguous float32 array `a` seen as an array of `shape` of `length`-vectors (same memory, no copy;
    the caller keeps `a` alive)."""
    if not a.is_contiguous:
        raise ValueError("expected a contiguous float32 array")
    if a.size == 0:
        return wp.empty(shape, dtype=_VECTORS[length], device=a.device)
    return wp.array(ptr=a.ptr, dtype=_VECTORS[length], shape=shape, device=a.device, copy=False)


def level_resolutions(n_levels: int, base_resolution: int, growth: float) -> tuple[int, ...]:
    """Cells per axis of each level, floor(base_resolution * growth^l), l = 0..n_levels-1 (float64)."""
    return tuple(int(math.floor(base_resolution * growth ** level)) for level in range(n_levels))


class HashGridEncoding:
    """The hash-grid encoding of points in a box (module docstring for the exact model). It holds the
    configuration only; the table (L*T, F) is passed to each call (a torch Parameter, a DeviceScene leaf...).

    Args:
        aabb: the box, 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax); points outside are clamped into it.
        n_levels: L >= 1.
        log2_table_size: T = 2^log2_table_size entries per level, 4..24.
        n_features: F features per entry: 1, 2, 4 or 8 (the kernels read an entry as one F-vector).
        base_resolution: N_min >= 1 cells per axis of level 0.
        growth: b >= 1, the per-level scale (level l has floor(N_min b^l) cells per axis). Instant-NGP picks
            b = exp((ln N_max - ln N_min) / (L - 1)) for a finest resolution N_max: `growth_for(...)`.
        device: the Warp device of the launches.

    Attributes: `resolutions` (L,) cells per axis, `dense` (L,) bools (level indexed densely), `table_size` T,
    `table_shape` (L*T, F), `output_dim` L*F, `aabb`.
    """

    def __init__(self, aabb, n_levels: int = 16, log2_table_size: int = 19, n_features: int = 2,
                 base_resolution: int = 16, growth: float = 1.5, device=None):
        self.lo, self.hi = parse_aabb("aabb", aabb)
        self.aabb = tuple(float(v) for v in (*self.lo, *self.hi))
        for name, v, least, most in (("n_levels", n_levels, 1, 64), ("log2_table_size", log2_table_size, 4, 24),
                                     ("base_resolution", base_resolution, 1, 2**20)):
            if not isinstance(v, Integral) or isinstance(v, bool) or not least <= v <= most:
                raise ValueError(f"{name}: expected an int in [{least}, {most}], got {v!r}")
        if n_features not in _VECTORS or isinstance(n_features, bool):
            raise ValueError(f"n_features: expected 1, 2, 4 or 8, got {n_features!r}")
        if not isinstance(growth, Real) or not math.isfinite(growth) or growth < 1.0:
            raise ValueError(f"growth: expected a number >= 1, got {growth!r}")
        self.n_levels, self.n_features = int(n_levels), int(n_features)
        self.log2_table_size, self.table_size = int(log2_table_size), 1 << int(log2_table_size)
        self.base_resolution, self.growth = int(base_resolution), float(growth)
        self.resolutions = level_resolutions(self.n_levels, self.base_resolution, self.growth)
        if self.resolutions[-1] > 2**20:
            raise ValueError(f"growth: the finest level would have {self.resolutions[-1]} cells per axis (max 2^20)")
        self.dense = tuple((r + 1) ** 3 <= self.table_size for r in self.resolutions)
        self.table_shape = (self.n_levels * self.table_size, self.n_features)
        self.output_dim = self.n_levels * self.n_features
        self.device = wp.get_device(device)
        extent = np.array(self.aabb[3:]) - np.array(self.aabb[:3])
        self.inv_extent = wp.vec3(*(1.0 / extent).tolist())
        self._resolutions = wp.array(np.array(self.resolutions, np.int32), dtype=wp.int32, device=self.device)
        self._dense = wp.array(np.array(self.dense, np.int32), dtype=wp.int32, device=self.device)

    @staticmethod
    def growth_for(base_resolution: int, finest_resolution: int, n_levels: int) -> float:
        """The growth b that takes `n_levels` levels from `base_resolution` to `finest_resolution` cells."""
        if n_levels < 2:
            return 1.0
        return math.exp((math.log(finest_resolution) - math.log(base_resolution)) / (n_levels - 1))

    def init_table(self, seed: int = 0, scale: float = 1e-4) -> np.ndarray:
        """float32 (L*T, F) uniform in [-scale, scale] (the paper's initialization), from `seed`."""
        return np.random.default_rng(seed).uniform(-scale, scale, self.table_shape).astype(np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes of a float32 table."""
        return 4 * self.table_shape[0] * self.table_shape[1]

    def _check(self, points: wp.array, table: wp.array) -> int:
        check_array("points", points, wp.vec3, (None,), self.device)
        check_array("table", table, wp.float32, self.table_shape, self.device)
        return points.shape[0]

    def _launch_forward(self, points: wp.array, table: wp.array, out: wp.array) -> None:
        """_encode on checked float32 arrays: table (L*T, F), out (N, L*F) viewed as F-vectors."""
        n, f = points.shape[0], self.n_features
        if n == 0:
            return
        wp.launch(_encode, dim=n, device=self.device, record_tape=False,
                  inputs=[points, self.lo, self.inv_extent, self._resolutions, self._dense, self.table_size,
                          _vector_view(table, f, (self.table_shape[0],)),
                          _vector_view(out, f, (n, self.n_levels))])

    def _launch_backward(self, points, table, adj_out, grad_table, grad_points) -> None:
        n, f = points.shape[0], self.n_features
        if n == 0 or (grad_table is None and grad_points is None):
            return
        rows = (self.table_shape[0],)
        wp.launch(_encode_backward, dim=n, device=self.device, record_tape=False,
                  inputs=[points, self.lo, self.inv_extent, self._resolutions, self._dense, self.table_size,
                          _vector_view(table, f, rows), _vector_view(adj_out, f, (n, self.n_levels)),
                          int(grad_table is not None),
                          wp.empty(1, dtype=_VECTORS[f], device=self.device) if grad_table is None
                          else _vector_view(grad_table, f, rows),
                          int(grad_points is not None),
                          wp.empty(1, dtype=wp.vec3, device=self.device) if grad_points is None else grad_points])

    def encode(self, points: wp.array, table: wp.array, out: wp.array | None = None) -> wp.array:
        """Features of points.

        Args:
            points: vec3 (N,) world points (clamped into the box).
            table: float32 array2d (L*T, F).
            out: optional contiguous float32 array2d (N, L*F) to write into (its contents are replaced).

        Returns:
            float32 array2d (N, L*F), level-major (`out[n, l*F + k]`). Under an active `wp.Tape` (or
            `renderer.parallel`'s stand-in) the hand-written adjoint is recorded: `table.grad` and, when
            `points.requires_grad`, `points.grad` receive the gradients (added, not overwritten).
        """
        n = self._check(points, table)
        want_grad = table.requires_grad or points.requires_grad
        if out is None:
            out = wp.empty((n, self.output_dim), dtype=float, device=self.device, requires_grad=want_grad)
        else:
            check_array("out", out, wp.float32, (n, self.output_dim), self.device)
        self._launch_forward(points, table, out)
        tape = active_tape()
        if tape is not None and want_grad and n > 0:
            if out.grad is None:
                raise ValueError("out: expected an array with requires_grad=True under a tape")

            def backward():
                self.encode_backward(points, table, out.grad,
                                     table.grad if table.requires_grad else None,
                                     points.grad if points.requires_grad else None)

            tape.record_func(backward, [a for a in (points, table, out) if a.requires_grad])
        return out

    def encode_backward(self, points: wp.array, table: wp.array, adj_out: wp.array, grad_table: wp.array | None,
                        grad_points: wp.array | None = None) -> None:
        """Add the gradients of `encode` given dL/d(out) `adj_out` (N, L*F): into `grad_table` (L*T, F)
        (atomic adds) and, if given, `grad_points` vec3 (N,). Not recorded on any tape."""
        n = self._check(points, table)
        check_array("adj_out", adj_out, wp.float32, (n, self.output_dim), self.device)
        if grad_table is not None:
            check_array("grad_table", grad_table, wp.float32, self.table_shape, self.device)
        if grad_points is not None:
            check_array("grad_points", grad_points, wp.vec3, (n,), self.device)
        self._launch_backward(points, table, adj_out, grad_table, grad_points)

    def encode_torch(self, points: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """`encode` on float32 tensors: points (N, 3), table (L*T, F) -> (N, L*F), differentiable w.r.t. both
        (a `torch.autograd.Function`; memory shared with Warp, no copies of contiguous inputs). The tensors
        must be on this encoding's device."""
        for name, t, shape in (("points", points, (None, 3)), ("table", table, self.table_shape)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dtype != torch.float32:
                raise TypeError(f"{name}: expected dtype torch.float32, got {t.dtype}")
            if t.ndim != 2 or any(s is not None and s != m for s, m in zip(shape, t.shape, strict=True)):
                raise ValueError(f"{name}: expected shape {tuple('N' if s is None else s for s in shape)}, "
                                 f"got {tuple(t.shape)}")
            if wp.device_from_torch(t.device) != self.device:
                raise ValueError(f"{name}: is on {t.device}, expected the encoding's device {self.device}")
        return _HashGridFunction.apply(points, table, self)


    def encode_torch_into(self, points: torch.Tensor, table: torch.Tensor, grad_table: torch.Tensor) -> torch.Tensor:
        """`encode_torch` whose table gradient is ADDED into a buffer kept by the caller instead of returned.

        Args:
            points: float32 (N, 3); the output is differentiable w.r.t. them as in `encode_torch`.
            table: float32 (L*T, F) values (read, not differentiated through autograd).
            grad_table: float32 (L*T, F) contiguous: the backward adds dL/d(table) into it (e.g. the table
                Parameter's `.grad` or a Warp leaf's `.grad` seen through `wp.to_torch`); zeroing it is the
                caller's job.

        Returns:
            (N, L*F) tensor. Why: torch's contract makes `encode_torch` allocate a fresh zeroed (L*T, F) gradient
        every backward, which for a 64 MiB table costs more than the scatter itself (page faults); a kept buffer
        is zeroed in place instead. The table gradient is invisible to autograd (`torch.autograd.grad` w.r.t. the
        table does not see it); the backward runs even when `points` do not require grad.
        """
        for name, t, shape in (("table", table, self.table_shape), ("grad_table", grad_table, self.table_shape)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected a float32 tensor of shape {shape}, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if not grad_table.is_contiguous():
            raise ValueError("grad_table: expected a contiguous tensor (the backward writes into it)")
        anchor = torch.empty(0, requires_grad=True)  # makes autograd call the backward
        return _HashGridIntoFunction.apply(points, table, anchor, grad_table, self)


def _vec3_view(t: torch.Tensor) -> wp.array:
    if t.shape[0] == 0:
        return wp.empty(0, dtype=wp.vec3, device=wp.device_from_torch(t.device))
    return wp.from_torch(t, dtype=wp.vec3)


def _float_view(t: torch.Tensor) -> wp.array:
    if t.numel() == 0:
        return wp.empty(tuple(t.shape), dtype=float, device=wp.device_from_torch(t.device))
    return wp.from_torch(t, dtype=wp.float32)


class _HashGridFunction(torch.autograd.Function):
    """torch.autograd.Function around `HashGridEncoding.encode`; use `HashGridEncoding.encode_torch`."""

    @staticmethod
    def forward(ctx, points, table, encoding: HashGridEncoding):
        p, t = points.detach().contiguous(), table.detach().contiguous()
        out = torch.empty((p.shape[0], encoding.output_dim), dtype=torch.float32, device=p.device)
        encoding._launch_forward(_vec3_view(p), _float_view(t), _float_view(out))
        ctx.save_for_backward(p, t)
        ctx.encoding = encoding
        return out

    @staticmethod
    def backward(ctx, grad_out):
        p, t = ctx.saved_tensors
        enc = ctx.encoding
        want_points, want_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_points = torch.zeros_like(p) if want_points else None
        grad_table = torch.zeros_like(t) if want_table else None
        if want_points or want_table:
            g = grad_out.to(torch.float32).contiguous()
            enc._launch_backward(_vec3_view(p), _float_view(t), _float_view(g),
                                _float_view(grad_table) if want_table else None,
                                _vec3_view(grad_points) if want_points else None)
        return grad_points, grad_table, None


class _HashGridIntoFunction(torch.autograd.Function):
    """`HashGridEncoding.encode_torch_into`: the table gradient goes into a caller's buffer."""

    @staticmethod
    def forward(ctx, points, table, anchor, grad_table, encoding: HashGridEncoding):
        p, t = points.detach().contiguous(), table.detach().contiguous()
        out = torch.empty((p.shape[0], encoding.output_dim), dtype=torch.float32, device=p.device)
        encoding._launch_forward(_vec3_view(p), _float_view(t), _float_view(out))
        ctx.save_for_backward(p, t)
        ctx.grad_table, ctx.encoding = grad_table, encoding
        return out

    @staticmethod
    def backward(ctx, grad_out):
        p, t = ctx.saved_tensors
        grad_points = torch.zeros_like(p) if ctx.needs_input_grad[0] else None
        g = grad_out.to(torch.float32).contiguous()
        ctx.encoding._launch_backward(_vec3_view(p), _float_view(t), _float_view(g), _float_view(ctx.grad_table),
                                      _vec3_view(grad_points) if grad_points is not None else None)
        return grad_points, None, None, None, None
