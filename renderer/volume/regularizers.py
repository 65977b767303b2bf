"""Regularizers of a radiance field's density along rays and over its lattice (docs/volume.md "Regularizers").

- `distortion`: mip-NeRF 360's distortion loss (Barron et al. 2022, eq. 15) of each ray's weights
  w_i = T_i alpha_i (the `composite` weights), in the O(n) form of its appendix: with the samples' interval
  midpoints m_i and lengths D_i (in units of `length`, sorted along the ray),

      L_ray = sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 D_i
            = 2 sum_i w_i (m_i W_{<i} - M_{<i}) + 1/3 sum_i w_i^2 D_i,
  with W_{<i} = sum_{j<i} w_j and M_{<i} = sum_{j<i} w_j m_j.

  It is small when a ray's weight is concentrated in one short stretch (a surface) and large when it is
  spread along the ray (fog, floaters in front of the surface). Differentiable w.r.t. the densities, by a
  hand-written adjoint (three O(n) passes per ray, below); the samples are constants.
- `density_l1`: the mean activated density over a `VoxelGrid`'s lattice points (a sparsity prior, as
  Plenoxels' and instant-ngp's density penalties). Every lattice point gets a gradient, also those no training
  ray reaches, so with Adam (whose steps do not scale with the gradient's size) space no view constrains is
  emptied, while where the photometric gradient is large this small term barely moves the balance.

Both add `weight * (their value)` into a (1,) float32 `out_loss`, like `losses.l2` and `VoxelGrid.total_variation`,
and record their adjoints with `tape.record_func` on the active tape (renderer.thread_tape).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import warp as wp

from ..thread_tape import active_tape
from .march import Samples, check_array, contracted_span, parse_aabb
from .voxel_grid import ACTIVATIONS, VoxelGrid, activate_density

wp.set_module_options({"enable_backward": False})  # adjoints are written by hand below


@wp.func
def _s_of_t(t: float, b: float, contract: int) -> float:
    """The marching coordinate of a contracted march (march.lindisp_t's inverse g: t up to b, 2 b - b^2 / t
    beyond), or t itself."""
    if contract == 0 or t <= b:
        return t
    return 2.0 * b - b * b / t


@wp.func
def _interval(t_start: float, t_end: float, scale: float, b: float, contract: int) -> wp.vec2:
    """(midpoint, length) of [t_start, t_end] in units of `length` (scale = |d| / length), measured in s = g(t)
    for a contracted march."""
    s0 = _s_of_t(t_start, b, contract)
    s1 = _s_of_t(t_end, b, contract)
    return wp.vec2(0.5 * (s0 + s1) * scale, (s1 - s0) * scale)


@wp.func
def _ray_b(o: wp.vec3, d: wp.vec3, lo: wp.vec3, hi: wp.vec3, near: float, far: float, contract: int) -> float:
    if contract == 0:
        return 0.0
    return contracted_span(o, d, lo, hi, near, far)[2]


@wp.kernel
def _distortion_forward(densities: wp.array(dtype=float), deltas: wp.array(dtype=float),
                        t_starts: wp.array(dtype=float), t_ends: wp.array(dtype=float),
                        offsets: wp.array(dtype=wp.int32), counts: wp.array(dtype=wp.int32),
                        directions: wp.array(dtype=wp.vec3), inv_length: float, scale: float,
                        origins: wp.array(dtype=wp.vec3), lo: wp.vec3, hi: wp.vec3, near: float, far: float,
                        contract: int, out_loss: wp.array(dtype=float)):
    r = wp.tid()
    o = offsets[r]
    k = wp.length(directions[r]) * inv_length
    b = _ray_b(origins[r], directions[r], lo, hi, near, far, contract)
    tau = float(0.0)
    w_sum = float(0.0)  # W_{<i}
    m_sum = float(0.0)  # M_{<i}
    acc = float(0.0)
    for s in range(o, o + counts[r]):
        md = _interval(t_starts[s], t_ends[s], k, b, contract)
        w = wp.exp(-tau) * (1.0 - wp.exp(-densities[s] * deltas[s]))
        acc += 2.0 * w * (md[0] * w_sum - m_sum) + w * w * md[1] / 3.0
        w_sum += w
        m_sum += w * md[0]
        tau += densities[s] * deltas[s]
    wp.atomic_add(out_loss, 0, scale * acc)


@wp.kernel
def _distortion_backward(densities: wp.array(dtype=float), deltas: wp.array(dtype=float),
                         t_starts: wp.array(dtype=float), t_ends: wp.array(dtype=float),
                         offsets: wp.array(dtype=wp.int32), counts: wp.array(dtype=wp.int32),
                         directions: wp.array(dtype=wp.vec3), inv_length: float, scale: float,
                         origins: wp.array(dtype=wp.vec3), lo: wp.vec3, hi: wp.vec3, near: float, far: float,
                         contract: int, adj_loss: wp.array(dtype=float), adj_densities: wp.array(dtype=float)):
    # dL/dw_i = g_i = 2 (m_i W_{<i} - M_{<i}) + 2 ((M - M_{<=i}) - m_i (W - W_{<=i})) + 2/3 w_i D_i, and with
    # w_i = T_i alpha_i: dw_i/dsigma_k = T_k delta_k exp(-sigma_k delta_k) (i = k), -delta_k w_i (i > k), so
    # dL/dsigma_k = g_k T_{k+1} delta_k - delta_k sum_{i>k} g_i w_i. Passes: totals W, M; total G = sum g_i w_i;
    # then the gradients with the running prefix of g_i w_i.
    r = wp.tid()
    o = offsets[r]
    n = counts[r]
    k = wp.length(directions[r]) * inv_length
    b = _ray_b(origins[r], directions[r], lo, hi, near, far, contract)
    tau = float(0.0)
    w_tot = float(0.0)
    m_tot = float(0.0)
    for s in range(o, o + n):
        md = _interval(t_starts[s], t_ends[s], k, b, contract)
        w = wp.exp(-tau) * (1.0 - wp.exp(-densities[s] * deltas[s]))
        w_tot += w
        m_tot += w * md[0]
        tau += densities[s] * deltas[s]
    tau = float(0.0)
    w_sum = float(0.0)
    m_sum = float(0.0)
    g_tot = float(0.0)
    for s in range(o, o + n):
        md = _interval(t_starts[s], t_ends[s], k, b, contract)
        w = wp.exp(-tau) * (1.0 - wp.exp(-densities[s] * deltas[s]))
        g = (2.0 * (md[0] * w_sum - m_sum) + 2.0 * ((m_tot - m_sum - w * md[0]) - md[0] * (w_tot - w_sum - w))
             + 2.0 / 3.0 * w * md[1])
        g_tot += g * w
        w_sum += w
        m_sum += w * md[0]
        tau += densities[s] * deltas[s]
    tau = float(0.0)
    w_sum = float(0.0)
    m_sum = float(0.0)
    gw_sum = float(0.0)  # sum_{i<=k} g_i w_i
    c = scale * adj_loss[0]
    for s in range(o, o + n):
        md = _interval(t_starts[s], t_ends[s], k, b, contract)
        w = wp.exp(-tau) * (1.0 - wp.exp(-densities[s] * deltas[s]))
        g = (2.0 * (md[0] * w_sum - m_sum) + 2.0 * ((m_tot - m_sum - w * md[0]) - md[0] * (w_tot - w_sum - w))
             + 2.0 / 3.0 * w * md[1])
        gw_sum += g * w
        tau += densities[s] * deltas[s]
        adj_densities[s] = adj_densities[s] + c * deltas[s] * (g * wp.exp(-tau) - (g_tot - gw_sum))
        w_sum += w
        m_sum += w * md[0]


def distortion(densities: wp.array, samples: Samples, directions: wp.array, out_loss: wp.array, weight: float,
               length: float = 1.0, *, contract: tuple | None = None) -> None:
    """out_loss[0] += weight * mean over the rays of mip-NeRF 360's distortion loss (module docstring).

    Args:
        densities: float32 (S,) activated densities at the samples (what `composite` takes).
        samples: the `march.Samples` they were queried at (S = samples.n_samples; sorted along each ray).
        directions: vec3 (N,) the rays' directions as sampled (not necessarily unit): distances along ray r
            are t |directions[r]|, world units.
        out_loss: float32 (1,).
        weight: the loss weight (mip-NeRF 360: 0.01 with distances normalized to [0, 1]).
        length: the unit of distance (world units), e.g. the field box's diagonal, so the loss does not scale
            with the scene's size.
        contract: for samples of a contracted march (`sample_rays(..., contract=True)`): (origins vec3 (N,),
            lattice aabb, near, far) as sampled. Distances are then measured in the march's coordinate
            s = g(t) (t up to the inner box's exit b, 2 b - b^2 / t beyond: mip-NeRF 360's normalized distance
            up to scale), so the far, long intervals of the contracted shell are not penalized by their world
            length.
    Differentiable w.r.t. `densities` (hand-written adjoint on the active tape); not w.r.t. the samples. The
    weights are the untruncated ones (no early termination, unlike `composite`)."""
    if not isinstance(samples, Samples):
        raise TypeError(f"samples: expected a march.Samples, got {type(samples).__name__}")
    dev, n, s = samples.ray_offsets.device, samples.n_rays, samples.n_samples
    check_array("densities", densities, wp.float32, (s,), dev)
    check_array("directions", directions, wp.vec3, (n,), dev)
    check_array("out_loss", out_loss, wp.float32, (1,), dev)
    if not (np.isfinite(length) and length > 0.0):
        raise ValueError(f"length: expected a positive finite distance, got {length!r}")
    if weight == 0.0 or n == 0:
        return
    if contract is None:
        span = [wp.empty(0, dtype=wp.vec3, device=dev), wp.vec3(), wp.vec3(), 0.0, 0.0, 0]
    else:
        origins, aabb, near, far = contract
        check_array("contract origins", origins, wp.vec3, (n,), dev)
        lo, hi = parse_aabb("contract aabb", aabb)
        span = [origins, lo, hi, float(near), float(far), 1]
    inputs = [densities, samples.deltas, samples.t_starts, samples.t_ends, samples.ray_offsets, samples.ray_counts,
              directions, float(1.0 / length), float(weight) / n, *span]
    wp.launch(_distortion_forward, dim=n, device=dev, record_tape=False, inputs=[*inputs, out_loss])
    tape = active_tape()
    if tape is not None and densities.requires_grad and out_loss.requires_grad and s > 0:
        def backward():
            wp.launch(_distortion_backward, dim=n, device=dev, record_tape=False,
                      inputs=[*inputs, out_loss.grad, densities.grad])
        tape.record_func(backward, [densities, out_loss])


@wp.kernel
def _density_l1_forward(density: wp.array3d(dtype=Any), activation: int, scale: float,
                        out_loss: wp.array(dtype=float)):
    x, y, z = wp.tid()
    wp.atomic_add(out_loss, 0, scale * activate_density(float(density[x, y, z]), activation))


@wp.kernel
def _density_l1_backward(density: wp.array3d(dtype=Any), activation: int, scale: float,
                         adj_loss: wp.array(dtype=float), grad: wp.array3d(dtype=Any)):
    x, y, z = wp.tid()
    raw = float(density[x, y, z])
    g = float(0.0)
    if activation == 0:  # softplus: d/dx log(1 + e^x) = sigmoid(x)
        g = 1.0 / (1.0 + wp.exp(-raw))
    elif raw > 0.0:  # relu
        g = 1.0
    grad[x, y, z] = grad[x, y, z] + grad.dtype(scale * adj_loss[0] * g)


def density_l1(grid: VoxelGrid, out_loss: wp.array, weight: float) -> None:
    """out_loss[0] += weight * mean over `grid`'s lattice points of the activated density (>= 0).

    Differentiable w.r.t. `grid.density` (hand-written adjoint on the active tape)."""
    if not isinstance(grid, VoxelGrid):
        raise TypeError(f"grid: expected a VoxelGrid, got {type(grid).__name__}")
    check_array("out_loss", out_loss, wp.float32, (1,), grid.device)
    if weight == 0.0:
        return
    activation = ACTIVATIONS.index(grid.activation)
    scale = float(weight) / int(np.prod(grid.resolution))
    density = grid.density
    wp.launch(_density_l1_forward, dim=density.shape, device=grid.device, record_tape=False,
              inputs=[density, activation, scale, out_loss])
    tape = active_tape()
    if tape is not None and density.requires_grad and out_loss.requires_grad:
        def backward():
            wp.launch(_density_l1_backward, dim=density.shape, device=density.device, record_tape=False,
                      inputs=[density, activation, scale, out_loss.grad, density.grad])
        tape.record_func(backward, [density, out_loss])
