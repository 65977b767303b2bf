"""An explicit radiance field on a voxel lattice (Plenoxels / DVGO style).

Values live on the points of a res[0] x res[1] x res[2] lattice spanning the box corner to corner:
lattice point (ix, iy, iz) is at lo + (ix, iy, iz) * (hi - lo) / (res - 1). Each point stores a raw
density and 3 * K spherical-harmonic coefficients (K = (degree + 1)^2, degree 0..2), channel-major:
sh[ix, iy, iz, c * K + k] is coefficient k of color channel c.

A query at position p and unit view direction d (from the camera into the scene) interpolates the raw
values trilinearly (p is clamped into the box) and then activates them, as DVGO does (interpolating
before the activation keeps sharp boundaries inside a voxel):
    density = softplus(raw) = log(1 + exp(raw))   or   relu(raw) = max(raw, 0),
    color_c = sigmoid(sum_k Y_k(d) sh_ck),
Y_k the real SH basis in the ordering and normalization of Plenoxels / 3D Gaussian splatting.

Gradients w.r.t. the grid values: `query` and `total_variation` launch their forward kernels off the tape
and record hand-written exact adjoints with `tape.record_func` (on the CPU 6x resp. 5x faster than the
adjoints Warp generates, which replay the unrolled forward and add atomically); `query_density` uses
Warp's generated adjoint.

Storage is float32 or float16 (half the memory); all arithmetic is float32 either way. The optimizers
of `renderer.optim` update float32 arrays only, so training runs on a float32 grid and `astype(wp.float16)`
converts it for storage and rendering (queries of a float16 grid are differentiable too, with their
gradients accumulated in float16 `.grad` arrays).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import warp as wp

from ..parallel import part_ranges, run_parts
from ..thread_tape import active_tape
from .march import check_array, parse_aabb
from .occupancy import parse_resolution

ACTIVATIONS = ("softplus", "relu")
#: A query splits over `VoxelGrid.workers` threads only with at least this many samples per thread.
MIN_SAMPLES_PER_THREAD = 16384
#: TV's passes split over threads only with at least this many lattice rows (x) a thread.
MIN_ROWS_PER_THREAD = 8
_SOFTPLUS_LINEAR = wp.constant(20.0)  # softplus(x) == x to float32 precision above this

SH_C0 = wp.constant(0.28209479177387814)
SH_C1 = wp.constant(0.4886025119029199)
SH_C2_0 = wp.constant(1.0925484305920792)
SH_C2_1 = wp.constant(-1.0925484305920792)
SH_C2_2 = wp.constant(0.31539156525252005)
SH_C2_3 = wp.constant(-1.0925484305920792)
SH_C2_4 = wp.constant(0.5462742152960396)

vec9 = wp.types.vector(length=9, dtype=wp.float32)


@wp.func
def sh_basis(d: wp.vec3) -> vec9:
    """Real SH basis Y_0..Y_8 (degrees 0..2) at unit direction d."""
    x = d[0]
    y = d[1]
    z = d[2]
    return vec9(SH_C0, -SH_C1 * y, SH_C1 * z, -SH_C1 * x,
                SH_C2_0 * x * y, SH_C2_1 * y * z, SH_C2_2 * (2.0 * z * z - x * x - y * y),
                SH_C2_3 * x * z, SH_C2_4 * (x * x - y * y))


@wp.func
def activate_density(raw: float, activation: int) -> float:
    """softplus (activation 0) or relu (1) of a raw density."""
    if activation == 1:
        return wp.max(raw, 0.0)
    if raw > _SOFTPLUS_LINEAR:
        return raw
    return wp.log(1.0 + wp.exp(raw))


@wp.func
def sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)), without overflow for large |x|."""
    if x >= 0.0:
        return 1.0 / (1.0 + wp.exp(-x))
    e = wp.exp(x)
    return e / (1.0 + e)


@wp.func
def lattice_cell(p: wp.vec3, lo: wp.vec3, hi: wp.vec3, res: wp.vec3i):
    """(corner index, fractional offset in [0, 1]^3) of p's lattice cell; p is clamped into the box."""
    u = wp.cw_div(p - lo, hi - lo)
    i = wp.vec3i(0, 0, 0)
    f = wp.vec3(0.0, 0.0, 0.0)
    for a in range(3):
        x = wp.clamp(u[a], 0.0, 1.0) * float(res[a] - 1)
        i[a] = wp.min(int(x), res[a] - 2)
        f[a] = x - float(i[a])
    return i, f


@wp.func
def corner_weight(f: wp.vec3, c: int) -> float:
    """Trilinear weight of corner c (bit 0: +x, bit 1: +y, bit 2: +z) of a cell at offset f."""
    wx = wp.where((c & 1) != 0, f[0], 1.0 - f[0])
    wy = wp.where((c & 2) != 0, f[1], 1.0 - f[1])
    wz = wp.where((c & 4) != 0, f[2], 1.0 - f[2])
    return wx * wy * wz


@wp.func
def corner_weight_gradient(f: wp.vec3, c: int) -> wp.vec3:
    """d corner_weight(f, c) / d f."""
    wx = wp.where((c & 1) != 0, f[0], 1.0 - f[0])
    wy = wp.where((c & 2) != 0, f[1], 1.0 - f[1])
    wz = wp.where((c & 4) != 0, f[2], 1.0 - f[2])
    sx = wp.where((c & 1) != 0, 1.0, -1.0)
    sy = wp.where((c & 2) != 0, 1.0, -1.0)
    sz = wp.where((c & 4) != 0, 1.0, -1.0)
    return wp.vec3(sx * wy * wz, wx * sy * wz, wx * wy * sz)


@wp.func
def query_adjoints(out_color: wp.array2d(dtype=float), adj_color: wp.array2d(dtype=float),
                   adj_density: wp.array(dtype=float), s: int) -> wp.vec4:
    """Sample s's adjoints of its three colour logits (before the sigmoid: d sigmoid = c (1 - c)) and of its
    activated density, from its outputs' adjoints."""
    cr = out_color[s, 0]
    cg = out_color[s, 1]
    cb = out_color[s, 2]
    return wp.vec4(adj_color[s, 0] * cr * (1.0 - cr), adj_color[s, 1] * cg * (1.0 - cg),
                   adj_color[s, 2] * cb * (1.0 - cb), adj_density[s])


@wp.func
def raw_density_adjoint(adj: float, raw: float, activation: int) -> float:
    """The adjoint of a raw (interpolated) density from its activated density's: d softplus = sigmoid(raw),
    d relu = [raw > 0]."""
    if activation == 1:
        return wp.where(raw > 0.0, adj, 0.0)
    return adj * sigmoid(raw)


@wp.func
def interpolate_density(density: wp.array3d(dtype=Any), i: wp.vec3i, f: wp.vec3) -> float:
    """Trilinear interpolation of the raw density in the cell at corner i, offset f."""
    raw = float(0.0)
    # constant trip count: Warp unrolls the loop, so the local it updates has an exact adjoint
    for c in range(8):
        raw += corner_weight(f, c) * wp.float32(density[i[0] + (c & 1), i[1] + ((c >> 1) & 1),
                                                        i[2] + ((c >> 2) & 1)])
    return raw


@wp.kernel
def _mark_cells(positions: wp.array(dtype=wp.vec3), lo: wp.vec3, hi: wp.vec3, res: wp.vec3i,
                touched: wp.array3d(dtype=wp.uint8), x_lo: int, x_hi: int):
    # the 8 lattice points a query at positions[s] reads (so the only ones its adjoint writes): flag those in the
    # slab x_lo <= x < x_hi
    s = wp.tid()
    i, f = lattice_cell(positions[s], lo, hi, res)
    if i[0] + 1 < x_lo or i[0] >= x_hi:
        return
    for c in range(8):
        x = i[0] + (c & 1)
        if x >= x_lo and x < x_hi:
            touched[x, i[1] + ((c >> 1) & 1), i[2] + ((c >> 2) & 1)] = wp.uint8(1)


@wp.kernel
def _query(density: wp.array3d(dtype=Any), sh: wp.array4d(dtype=Any), lo: wp.vec3, hi: wp.vec3,
           n_coeffs: int, activation: int, positions: wp.array(dtype=wp.vec3), dirs: wp.array(dtype=wp.vec3),
           out_density: wp.array(dtype=float), out_color: wp.array2d(dtype=float)):
    s = wp.tid()
    res = wp.vec3i(density.shape[0], density.shape[1], density.shape[2])
    i, f = lattice_cell(positions[s], lo, hi, res)
    basis = sh_basis(dirs[s])
    red = float(0.0)
    green = float(0.0)
    blue = float(0.0)
    for c in range(8):
        w = corner_weight(f, c)
        x = i[0] + (c & 1)
        y = i[1] + ((c >> 1) & 1)
        z = i[2] + ((c >> 2) & 1)
        for k in range(9):  # unrolled (faster than a loop to n_coeffs)
            if k < n_coeffs:
                wb = w * basis[k]
                red += wb * wp.float32(sh[x, y, z, k])
                green += wb * wp.float32(sh[x, y, z, n_coeffs + k])
                blue += wb * wp.float32(sh[x, y, z, 2 * n_coeffs + k])
    out_density[s] = activate_density(interpolate_density(density, i, f), activation)
    out_color[s, 0] = sigmoid(red)
    out_color[s, 1] = sigmoid(green)
    out_color[s, 2] = sigmoid(blue)


@wp.kernel
def _query_backward(density: wp.array3d(dtype=Any), lo: wp.vec3, hi: wp.vec3, n_coeffs: int, activation: int,
                    positions: wp.array(dtype=wp.vec3), dirs: wp.array(dtype=wp.vec3),
                    out_color: wp.array2d(dtype=float), adj_density: wp.array(dtype=float),
                    adj_color: wp.array2d(dtype=float), grad_density: wp.array3d(dtype=Any),
                    grad_sh: wp.array4d(dtype=Any), x_lo: int, x_hi: int):
    # The exact adjoint of _query w.r.t. the grid values, written out: d sigmoid = c (1 - c),
    # d softplus = sigmoid(raw), d relu = [raw > 0]; each corner receives its trilinear weight (times the SH
    # basis value for coefficients). 6x faster on the CPU than Warp's generated adjoint, which replays the
    # unrolled forward. Only the lattice points of the slab x_lo <= x < x_hi are written: launches over
    # disjoint slabs may run at once (CPU adds are not atomic), each adding in sample order as one launch does.
    s = wp.tid()
    g = query_adjoints(out_color, adj_color, adj_density, s)
    if g == wp.vec4(0.0):
        return  # e.g. a sample past early termination
    gr = g[0]
    gg = g[1]
    gb = g[2]
    res = wp.vec3i(density.shape[0], density.shape[1], density.shape[2])
    i, f = lattice_cell(positions[s], lo, hi, res)
    if i[0] + 1 < x_lo or i[0] >= x_hi:
        return
    gs = raw_density_adjoint(g[3], interpolate_density(density, i, f), activation)
    basis = sh_basis(dirs[s])
    for c in range(8):
        x = i[0] + (c & 1)
        if x < x_lo or x >= x_hi:
            continue
        w = corner_weight(f, c)
        y = i[1] + ((c >> 1) & 1)
        z = i[2] + ((c >> 2) & 1)
        wp.atomic_add(grad_density, x, y, z, grad_density.dtype(w * gs))
        for k in range(9):
            if k < n_coeffs:
                wb = w * basis[k]
                wp.atomic_add(grad_sh, x, y, z, k, grad_sh.dtype(wb * gr))
                wp.atomic_add(grad_sh, x, y, z, n_coeffs + k, grad_sh.dtype(wb * gg))
                wp.atomic_add(grad_sh, x, y, z, 2 * n_coeffs + k, grad_sh.dtype(wb * gb))


@wp.func
def sh_dot_grad(d: wp.vec3, a: vec9, n_coeffs: int) -> wp.vec3:
    """d/d d of sum_k a_k Y_k(d) over the first n_coeffs basis functions (d not renormalized)."""
    x = d[0]
    y = d[1]
    z = d[2]
    g = wp.vec3(0.0, 0.0, 0.0)
    if n_coeffs > 1:
        g += wp.vec3(-SH_C1 * a[3], -SH_C1 * a[1], SH_C1 * a[2])
    if n_coeffs > 4:
        g += SH_C2_0 * a[4] * wp.vec3(y, x, 0.0)
        g += SH_C2_1 * a[5] * wp.vec3(0.0, z, y)
        g += SH_C2_2 * a[6] * wp.vec3(-2.0 * x, -2.0 * y, 4.0 * z)
        g += SH_C2_3 * a[7] * wp.vec3(z, 0.0, x)
        g += SH_C2_4 * a[8] * wp.vec3(2.0 * x, -2.0 * y, 0.0)
    return g


@wp.kernel
def _query_backward_points(density: wp.array3d(dtype=Any), sh: wp.array4d(dtype=Any), lo: wp.vec3, hi: wp.vec3,
                           n_coeffs: int, activation: int, positions: wp.array(dtype=wp.vec3),
                           dirs: wp.array(dtype=wp.vec3), out_color: wp.array2d(dtype=float),
                           adj_density: wp.array(dtype=float), adj_color: wp.array2d(dtype=float),
                           adj_positions: wp.array(dtype=wp.vec3), adj_dirs: wp.array(dtype=wp.vec3)):
    # The exact adjoint of _query w.r.t. its sample points and directions: the trilinear weights' derivatives
    # (zero along an axis where the point is clamped into the box) and the SH basis' gradient. Each sample writes
    # its own entries only, so launches over disjoint sample ranges may run at once.
    s = wp.tid()
    adj = query_adjoints(out_color, adj_color, adj_density, s)
    if adj == wp.vec4(0.0):
        return
    gr = adj[0]
    gg = adj[1]
    gb = adj[2]
    res = wp.vec3i(density.shape[0], density.shape[1], density.shape[2])
    p = positions[s]
    i, f = lattice_cell(p, lo, hi, res)
    gs = raw_density_adjoint(adj[3], interpolate_density(density, i, f), activation)
    basis = sh_basis(dirs[s])
    d_f = wp.vec3(0.0, 0.0, 0.0)  # d loss / d f
    red = vec9()
    green = vec9()
    blue = vec9()
    for c in range(8):
        w = corner_weight(f, c)
        dw = corner_weight_gradient(f, c)
        x = i[0] + (c & 1)
        y = i[1] + ((c >> 1) & 1)
        z = i[2] + ((c >> 2) & 1)
        pull = gs * wp.float32(density[x, y, z])
        for k in range(9):
            if k < n_coeffs:
                vr = wp.float32(sh[x, y, z, k])
                vg = wp.float32(sh[x, y, z, n_coeffs + k])
                vb = wp.float32(sh[x, y, z, 2 * n_coeffs + k])
                pull += basis[k] * (gr * vr + gg * vg + gb * vb)
                red[k] = red[k] + w * vr
                green[k] = green[k] + w * vg
                blue[k] = blue[k] + w * vb
        d_f += pull * dw
    g = wp.vec3(0.0, 0.0, 0.0)
    for a in range(3):
        u = (p[a] - lo[a]) / (hi[a] - lo[a])
        if u > 0.0 and u < 1.0:
            g[a] = d_f[a] * float(res[a] - 1) / (hi[a] - lo[a])
    adj_positions[s] = adj_positions[s] + g
    d = dirs[s]
    adj_dirs[s] = (adj_dirs[s] + gr * sh_dot_grad(d, red, n_coeffs) + gg * sh_dot_grad(d, green, n_coeffs)
                   + gb * sh_dot_grad(d, blue, n_coeffs))


# The storage types' overloads of the kernels that `VoxelGrid.query` launches from several threads, made when the
# module is imported: an overload made by a launch (a new argument type) rebuilds the module, which another thread
# launching at that moment does not survive (Warp 1.19: KeyError in get_kernel_mangled_name).
for _dtype in (wp.float32, wp.float16):
    wp.overload(_query, {"density": wp.array3d(dtype=_dtype), "sh": wp.array4d(dtype=_dtype)})
    wp.overload(_query_backward, {"density": wp.array3d(dtype=_dtype), "grad_density": wp.array3d(dtype=_dtype),
                                  "grad_sh": wp.array4d(dtype=_dtype)})
    wp.overload(_query_backward_points, {"density": wp.array3d(dtype=_dtype), "sh": wp.array4d(dtype=_dtype)})


@wp.kernel
def _query_density(density: wp.array3d(dtype=Any), lo: wp.vec3, hi: wp.vec3, activation: int,
                   positions: wp.array(dtype=wp.vec3), out_density: wp.array(dtype=float)):
    s = wp.tid()
    res = wp.vec3i(density.shape[0], density.shape[1], density.shape[2])
    i, f = lattice_cell(positions[s], lo, hi, res)
    out_density[s] = activate_density(interpolate_density(density, i, f), activation)


@wp.kernel
def _tv_forward(values: wp.array4d(dtype=Any), x0: int, scale: float, out_loss: wp.array(dtype=float)):
    # squared forward differences along x, y, z, summed over channels; differences leaving the grid are absent.
    # The launch covers the lattice points x0 <= x < x0 + dim[0] (a slab; the whole lattice with x0 = 0).
    xi, y, z = wp.tid()
    x = x0 + xi
    e = float(0.0)
    for c in range(values.shape[3]):
        v = wp.float32(values[x, y, z, c])
        if x + 1 < values.shape[0]:
            d = wp.float32(values[x + 1, y, z, c]) - v
            e += d * d
        if y + 1 < values.shape[1]:
            d = wp.float32(values[x, y + 1, z, c]) - v
            e += d * d
        if z + 1 < values.shape[2]:
            d = wp.float32(values[x, y, z + 1, c]) - v
            e += d * d
    wp.atomic_add(out_loss, 0, scale * e)


@wp.func
def tv_stencil(values: wp.array4d(dtype=Any), row: int, x: int, nx: int, y: int, z: int, c: int) -> float:
    """Half the spatial TV gradient at a lattice point: sum over axes of (v - v_prev) - (v_next - v), with
    neighbours outside the lattice left out. `row` indexes the first axis of `values` (x, or x within a
    stack of lattices along it), `x` in [0, nx) decides the x boundary."""
    v = wp.float32(values[row, y, z, c])
    g = float(0.0)
    if x + 1 < nx:
        g -= wp.float32(values[row + 1, y, z, c]) - v
    if x > 0:
        g += v - wp.float32(values[row - 1, y, z, c])
    if y + 1 < values.shape[1]:
        g -= wp.float32(values[row, y + 1, z, c]) - v
    if y > 0:
        g += v - wp.float32(values[row, y - 1, z, c])
    if z + 1 < values.shape[2]:
        g -= wp.float32(values[row, y, z + 1, c]) - v
    if z > 0:
        g += v - wp.float32(values[row, y, z - 1, c])
    return g


@wp.kernel
def _tv_backward(values: wp.array4d(dtype=Any), x0: int, scale: float, adj_loss: wp.array(dtype=float),
                 grad: wp.array4d(dtype=Any)):
    # d/dv of the squared differences v takes part in: 2 (v - v_prev) - 2 (v_next - v) per axis. Each thread
    # owns its lattice point's gradients, so a plain read-modify-write (no atomics). Points x0 <= x < x0 + dim[0].
    xi, y, z = wp.tid()
    x = x0 + xi
    k = 2.0 * scale * adj_loss[0]
    for c in range(values.shape[3]):
        g = tv_stencil(values, x, x, values.shape[0], y, z, c)
        grad[x, y, z, c] = grad[x, y, z, c] + grad.dtype(k * g)


@wp.kernel
def _add_loss(part: wp.array(dtype=float), out_loss: wp.array(dtype=float)):
    out_loss[0] = out_loss[0] + part[0]


# The storage types' overloads of the TV kernels, made at import (threads launch them: see _query's above).
for _dtype in (wp.float32, wp.float16):
    wp.overload(_tv_forward, {"values": wp.array4d(dtype=_dtype)})
    wp.overload(_tv_backward, {"values": wp.array4d(dtype=_dtype), "grad": wp.array4d(dtype=_dtype)})


def _total_variation(values: wp.array, scale: float, out_loss: wp.array, rows: tuple[int, int],
                     workers: int = 1) -> None:
    """out_loss[0] += scale * sum of squared forward differences of a (nx, ny, nz, C) array that start at the
    lattice points rows[0] <= x < rows[1], with the TV gradient of those points recorded on the active tape.
    `workers` CPU threads take sub-slabs of the rows: each sums its own differences (added to out_loss after, so
    the loss value may differ from one thread's in the last bits) and writes its own points' gradients (the same
    values as one thread)."""
    x0, x1 = rows
    if x1 <= x0:
        return
    parts = max(1, min(int(workers), (x1 - x0) // MIN_ROWS_PER_THREAD)) if values.device.is_cpu else 1
    slabs = [(x0 + a, x0 + b) for a, b in part_ranges(x1 - x0, parts)]
    sums = [out_loss] + [wp.zeros(1, dtype=float, device=values.device) for _ in slabs[1:]]

    def forward(k: int) -> None:
        a, b = slabs[k]
        wp.launch(_tv_forward, dim=(b - a, *values.shape[1:3]), device=values.device, record_tape=False,
                  inputs=[values, a, scale, sums[k]])

    run_parts(forward, parts)
    for part in sums[1:]:
        wp.launch(_add_loss, dim=1, device=values.device, record_tape=False, inputs=[part, out_loss])
    tape = active_tape()
    if tape is not None and values.requires_grad and out_loss.requires_grad:
        def backward():
            def slab(k: int) -> None:
                a, b = slabs[k]
                wp.launch(_tv_backward, dim=(b - a, *values.shape[1:3]), device=values.device, record_tape=False,
                          inputs=[values, a, scale, out_loss.grad, values.grad])

            run_parts(slab, parts)
        tape.record_func(backward, [values, out_loss])


@wp.kernel
def _resample(src_density: wp.array3d(dtype=Any), src_sh: wp.array4d(dtype=Any),
              dst_density: wp.array3d(dtype=float), dst_sh: wp.array4d(dtype=float)):
    # trilinear resample of raw values from one lattice to another over the same box (unit box here)
    x, y, z = wp.tid()
    p = wp.vec3(float(x) / float(dst_density.shape[0] - 1), float(y) / float(dst_density.shape[1] - 1),
                float(z) / float(dst_density.shape[2] - 1))
    res = wp.vec3i(src_density.shape[0], src_density.shape[1], src_density.shape[2])
    i, f = lattice_cell(p, wp.vec3(0.0, 0.0, 0.0), wp.vec3(1.0, 1.0, 1.0), res)
    for c in range(8):
        w = corner_weight(f, c)
        sx = i[0] + (c & 1)
        sy = i[1] + ((c >> 1) & 1)
        sz = i[2] + ((c >> 2) & 1)
        dst_density[x, y, z] = dst_density[x, y, z] + w * wp.float32(src_density[sx, sy, sz])
        for k in range(src_sh.shape[3]):
            dst_sh[x, y, z, k] = dst_sh[x, y, z, k] + w * wp.float32(src_sh[sx, sy, sz, k])


def _softplus_inverse(y: float) -> float:
    return float(y + np.log(-np.expm1(-y)))  # log(exp(y) - 1), stable for large y


class VoxelGrid:
    """Density + SH color on a lattice over a box (module docstring for the exact model).

    Args:
        resolution: lattice points per axis, an int or (nx, ny, nz), each >= 2.
        aabb: the box, 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax).
        sh_degree: 0 (view-independent color), 1 or 2; K = (sh_degree + 1)^2 coefficients per channel.
        dtype: storage, wp.float32 or wp.float16.
        activation: "softplus" or "relu", applied to the interpolated raw density.
        init_density: the activated density of a fresh grid (raw values set to its inverse; relu needs > 0
            for gradients to flow); ignored when `density` is given.
        density: optional raw values, array-like (nx, ny, nz); sh: optional raw coefficients (nx, ny, nz, 3K)
            (default 0: color sigmoid(0) = 0.5).
        requires_grad: allocate gradients for the value arrays.
        contract: the lattice holds contracted space (`march` module docstring): `volume.render` and the
            read-outs march rays through the scene contraction; the box's central half is the inner box.

    Attributes:
        density: array3d (nx, ny, nz) raw densities; sh: array4d (nx, ny, nz, 3K) coefficients; both of
        `dtype`, the leaves an optimizer updates (see `params`).
        touched: None, or a uint8 array3d (nx, ny, nz) in which every `query` recorded on a tape sets to 1 the
            lattice points its adjoint writes (the caller zeroes it): a training step's touched points, for an
            update that costs per touched point (`optimizers.Adam.step(active=...)`).
        workers: CPU threads a query and its adjoint run on (1 by default): the forward over consecutive
            ranges of the samples, the adjoint (and the touched flags) over slabs of the lattice's first axis,
            each thread reading every sample and writing only its slab's points, so every value and gradient is
            the one thread's bit for bit. Queries of fewer than MIN_SAMPLES_PER_THREAD samples a thread use fewer.
    """

    touched: wp.array | None = None
    workers: int = 1

    def __init__(self, resolution, aabb, sh_degree: int = 0, dtype=wp.float32, activation: str = "softplus",
                 init_density: float = 0.1, density=None, sh=None, device=None, requires_grad: bool = True,
                 contract: bool = False):
        self.resolution = parse_resolution("resolution", resolution, minimum=2)
        self.contract = bool(contract)
        self.lo, self.hi = parse_aabb("aabb", aabb)
        self.aabb = tuple(float(v) for v in (*self.lo, *self.hi))
        if sh_degree not in (0, 1, 2) or isinstance(sh_degree, bool):
            raise ValueError(f"sh_degree: expected 0, 1 or 2, got {sh_degree!r}")
        if dtype not in (wp.float32, wp.float16):
            raise TypeError(f"dtype: expected wp.float32 or wp.float16, got {dtype!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.sh_degree = int(sh_degree)
        self.n_coeffs = (self.sh_degree + 1) ** 2
        self.dtype = dtype
        self.activation = activation
        self.device = wp.get_device(device)
        np_dtype = np.float16 if dtype == wp.float16 else np.float32
        shape, sh_shape = self.resolution, (*self.resolution, 3 * self.n_coeffs)
        if density is None:
            if activation == "softplus":
                if not init_density > 0.0:
                    raise ValueError(f"init_density: expected a density > 0 for softplus, got {init_density!r}")
                raw = _softplus_inverse(float(init_density))
            else:
                raw = float(init_density)
            density = np.full(shape, raw)
        density = np.asarray(density, dtype=np.float64)
        if density.shape != shape:
            raise ValueError(f"density: expected shape {shape}, got {density.shape}")
        sh = np.zeros(sh_shape) if sh is None else np.asarray(sh, dtype=np.float64)
        if sh.shape != sh_shape:
            raise ValueError(f"sh: expected shape {sh_shape} (3 * K = {3 * self.n_coeffs} for degree "
                             f"{self.sh_degree}), got {sh.shape}")
        self.density = wp.array(density.astype(np_dtype), dtype=dtype, device=self.device, requires_grad=requires_grad)
        self.sh = wp.array(sh.astype(np_dtype), dtype=dtype, device=self.device, requires_grad=requires_grad)

    def params(self) -> dict[str, wp.array]:
        """{"density": ..., "sh": ...}: the leaf arrays, for an optimizer (float32 grids only)."""
        return {"density": self.density, "sh": self.sh}

    @property
    def nbytes(self) -> int:
        """Bytes of the value arrays (gradients and optimizer state not included)."""
        return self.density.capacity + self.sh.capacity

    def _check_points(self, positions, directions=None) -> int:
        check_array("positions", positions, wp.vec3, (None,), self.device)
        if directions is not None:
            check_array("directions", directions, wp.vec3, (positions.shape[0],), self.device)
        return positions.shape[0]

    def query(self, positions: wp.array, directions: wp.array) -> tuple[wp.array, wp.array]:
        """Density and color at sample points.

        Args:
            positions: vec3 (S,) world points (clamped into the box); directions: vec3 (S,) unit view
                directions (e.g. `Samples.positions`, `Samples.directions`).

        Returns:
            (density float32 (S,) >= 0, color float32 array2d (S, 3) in (0, 1)). Differentiable w.r.t. the
            grid values (density, sh) through a hand-written adjoint recorded on the active `wp.Tape`
            (`tape.record_func`), and w.r.t. positions and directions when they have requires_grad (samples of
            rays that do: camera refinement, `march.sample_rays`) through another.
        """
        s = self._check_points(positions, directions)
        grad = self.density.requires_grad or self.sh.requires_grad
        point_grad = positions.requires_grad or directions.requires_grad
        out_density = wp.zeros(s, dtype=float, device=self.device, requires_grad=grad or point_grad)
        out_color = wp.zeros((s, 3), dtype=float, device=self.device, requires_grad=grad or point_grad)
        activation = ACTIVATIONS.index(self.activation)
        parts = self._parts(s)
        ranges = part_ranges(s, parts)

        def forward(k: int) -> None:  # samples [a, b): each writes its own outputs
            a, b = ranges[k]
            if b == a:
                return
            wp.launch(_query, dim=b - a, device=self.device, record_tape=False,
                      inputs=[self.density, self.sh, self.lo, self.hi, self.n_coeffs, activation, positions[a:b],
                              directions[a:b], out_density[a:b], out_color[a:b]])

        run_parts(forward, parts)
        tape = active_tape()  # the calling thread's tape (or renderer.parallel's stand-in), None outside
        if tape is not None and point_grad and s > 0:
            self._record_point_backward(tape, positions, directions, out_density, out_color, ranges)
        if tape is not None and grad and s > 0:
            density, sh, lo, hi, n_coeffs = self.density, self.sh, self.lo, self.hi, self.n_coeffs
            slabs = self._slabs(positions, parts)
            if self.touched is not None:  # flag the lattice points this query's adjoint will write
                touched, res = self.touched, wp.vec3i(*density.shape)
                run_parts(lambda k: wp.launch(_mark_cells, dim=s, device=self.device, record_tape=False,
                                              inputs=[positions, lo, hi, res, touched, *slabs[k]]), len(slabs))

            def backward():
                def slab(k: int) -> None:  # every sample, writing the lattice points of slab k only
                    wp.launch(_query_backward, dim=s, device=density.device, record_tape=False,
                              inputs=[density, lo, hi, n_coeffs, activation, positions, directions, out_color,
                                      out_density.grad, out_color.grad, density.grad, sh.grad, *slabs[k]])

                run_parts(slab, len(slabs))

            tape.record_func(backward, [density, sh, out_density, out_color])
        return out_density, out_color

    def _record_point_backward(self, tape, positions, directions, out_density, out_color, ranges) -> None:
        """Record the adjoint of a query w.r.t. its points and directions (`_query_backward_points`): each thread a
        range of the samples. Gradients go to `positions.grad` / `directions.grad` (allocated when missing)."""
        activation = ACTIVATIONS.index(self.activation)
        density, sh, lo, hi, n_coeffs = self.density, self.sh, self.lo, self.hi, self.n_coeffs
        for arr in (positions, directions):
            if arr.grad is None:
                arr.grad = wp.zeros_like(arr, requires_grad=False)

        def backward():
            def part(k: int) -> None:
                a, b = ranges[k]
                if b > a:
                    wp.launch(_query_backward_points, dim=b - a, device=density.device, record_tape=False,
                              inputs=[density, sh, lo, hi, n_coeffs, activation,
                                      positions[a:b], directions[a:b], out_color[a:b], out_density.grad[a:b],
                                      out_color.grad[a:b], positions.grad[a:b], directions.grad[a:b]])

            run_parts(part, len(ranges))

        tape.record_func(backward, [positions, directions, out_density, out_color])

    def _parts(self, samples: int) -> int:
        """Threads for a query of `samples` points: `workers` on the CPU, fewer for small queries."""
        if not self.device.is_cpu or self.workers <= 1:
            return 1
        return max(1, min(int(self.workers), samples // MIN_SAMPLES_PER_THREAD))

    def _slabs(self, positions: wp.array, parts: int) -> list[tuple[int, int]]:
        """`parts` slabs x_lo <= x < x_hi tiling the lattice's first axis, cut at quantiles of the sample points'
        x (every 16th point), so the threads of a query's adjoint get about equal shares of its samples."""
        nx = self.resolution[0]
        if parts <= 1:
            return [(0, nx)]
        xs = positions.numpy()[::16, 0]
        u = np.clip((xs - self.lo[0]) / (self.hi[0] - self.lo[0]), 0.0, 1.0) * (nx - 1)
        cuts = np.clip(np.rint(np.quantile(u, [k / parts for k in range(1, parts)])), 0, nx).astype(int)
        bounds = [0, *np.maximum.accumulate(cuts).tolist(), nx]
        return [(bounds[k], bounds[k + 1]) for k in range(parts)]

    def query_density(self, positions: wp.array) -> wp.array:
        """float32 (S,) density at `positions` (no color): the `density_fn` of `OccupancyGrid.update`.
        Differentiable w.r.t. the density values like `query`."""
        s = self._check_points(positions)
        out = wp.zeros(s, dtype=float, device=self.device, requires_grad=self.density.requires_grad)
        wp.launch(_query_density, dim=s, device=self.device,
                  inputs=[self.density, self.lo, self.hi, ACTIVATIONS.index(self.activation), positions, out])
        return out

    def total_variation(self, out_loss: wp.array, weight: float, sh_weight: float | None = None,
                        rows: tuple[int, int] | None = None) -> None:
        """out_loss[0] += weight * TV(density) + sh_weight * TV(sh) (sh_weight defaults to weight).

        TV(v) = (1 / (n C)) sum over the n lattice points, C channels and the 3 axes of the squared forward
        difference (v[p + e_axis] - v[p])^2, differences past the last point omitted: a mean squared
        gradient of the raw values (Plenoxels/DVGO smoothness prior). Differentiable w.r.t. the values by a
        hand-written adjoint recorded on the active `wp.Tape` when out_loss has requires_grad=True.

        `rows` (x0, x1), 0 <= x0 <= x1 <= nx: only the slab of lattice points x0 <= x < x1: the differences
        that start there and the gradient entries of those points (data-parallel ranks each take a slab,
        renderer.optim.distributed; the slabs' losses and gradients add up to the whole lattice's). None: all.
        On `workers` CPU threads (sub-slabs): the same gradients, the loss summed per thread."""
        check_array("out_loss", out_loss, wp.float32, (1,), self.device)
        nx = self.resolution[0]
        rows = (0, nx) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= rows[0] <= rows[1] <= nx:
            raise ValueError(f"rows: expected 0 <= x0 <= x1 <= {nx}, got {rows}")
        sh_weight = weight if sh_weight is None else sh_weight
        n = int(np.prod(self.resolution))
        threads = self.workers if self.device.is_cpu else 1
        if weight != 0.0:
            _total_variation(self.density.reshape((*self.resolution, 1)), float(weight) / n, out_loss, rows, threads)
        if sh_weight != 0.0:
            _total_variation(self.sh, float(sh_weight) / (n * 3 * self.n_coeffs), out_loss, rows, threads)

    def upsample(self, new_resolution) -> VoxelGrid:
        """A new grid of `new_resolution` lattice points over the same box, its raw values the trilinear
        interpolation of this grid's (coarse-to-fine training: build a new optimizer for its arrays).
        Same degree, dtype and activation. Not differentiable (record_tape=False)."""
        res = parse_resolution("new_resolution", new_resolution, minimum=2)
        density = wp.zeros(res, dtype=float, device=self.device)
        sh = wp.zeros((*res, 3 * self.n_coeffs), dtype=float, device=self.device)
        wp.launch(_resample, dim=res, device=self.device, record_tape=False,
                  inputs=[self.density, self.sh, density, sh])
        return VoxelGrid(res, self.aabb, self.sh_degree, self.dtype, self.activation, density=density.numpy(),
                         sh=sh.numpy(), device=self.device, requires_grad=self.density.requires_grad,
                         contract=self.contract)

    def astype(self, dtype, requires_grad: bool | None = None) -> VoxelGrid:
        """A copy stored as `dtype` (wp.float32 or wp.float16; float16 rounds to nearest)."""
        requires_grad = self.density.requires_grad if requires_grad is None else requires_grad
        return VoxelGrid(self.resolution, self.aabb, self.sh_degree, dtype, self.activation,
                         density=self.density.numpy().astype(np.float64), sh=self.sh.numpy().astype(np.float64),
                         device=self.device, requires_grad=requires_grad, contract=self.contract)
