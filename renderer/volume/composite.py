"""Emission-absorption compositing of packed ray samples (the NeRF quadrature).

For the samples i = 0, 1, ... of one ray, with density sigma_i >= 0, color c_i and interval length
delta_i (world units):
    alpha_i = 1 - exp(-sigma_i delta_i),   T_i = prod_{j<i} (1 - alpha_j) = exp(-sum_{j<i} sigma_j delta_j),
    w_i = T_i alpha_i,   rgb = sum_i w_i c_i + (1 - opacity) background,   opacity = sum_i w_i,
    depth = sum_i w_i t_i  (t_i the sample's ray parameter; not divided by opacity).

Three passes keep Warp's automatic adjoint exact: a per-ray exclusive scan of optical depth that reads and
writes only arrays (Warp's adjoint of a dynamic loop mutating locals is wrong, one over array elements
replays correctly), a per-sample pass that atomically adds w_i c_i, w_i and w_i t_i into the ray's
outputs, and a per-ray background pass. Outputs are produced by atomic adds only, so their `.grad` still
holds d(loss)/d(output) after `tape.backward`.
"""

from __future__ import annotations

import math

import warp as wp

from ..thread_tape import active_tape
from .march import Samples, check_array


@wp.kernel
def _optical_depth_scan(densities: wp.array(dtype=float), deltas: wp.array(dtype=float),
                        offsets: wp.array(dtype=wp.int32), counts: wp.array(dtype=wp.int32),
                        tau_before: wp.array(dtype=float)):
    # tau_before[s] = sum of sigma_j delta_j over the ray's samples before s (first sample: 0, zero-filled).
    r = wp.tid()
    o = offsets[r]
    for s in range(o + 1, o + counts[r]):
        tau_before[s] = tau_before[s - 1] + densities[s - 1] * deltas[s - 1]


@wp.kernel
def _accumulate_samples(densities: wp.array(dtype=float), colors: wp.array2d(dtype=float),
                        deltas: wp.array(dtype=float), t_points: wp.array(dtype=float),
                        ray_indices: wp.array(dtype=wp.int32), tau_before: wp.array(dtype=float),
                        max_tau: float, rgb: wp.array2d(dtype=float), opacity: wp.array(dtype=float),
                        depth: wp.array(dtype=float)):
    s = wp.tid()
    # early termination: T_s = exp(-tau_before) is monotone along the ray, so T_s >= T_min keeps a prefix
    if tau_before[s] <= max_tau:
        r = ray_indices[s]
        transmittance = wp.exp(-tau_before[s])
        w = transmittance * (1.0 - wp.exp(-densities[s] * deltas[s]))
        wp.atomic_add(rgb, r, 0, w * colors[s, 0])
        wp.atomic_add(rgb, r, 1, w * colors[s, 1])
        wp.atomic_add(rgb, r, 2, w * colors[s, 2])
        wp.atomic_add(opacity, r, w)
        wp.atomic_add(depth, r, w * t_points[s])


@wp.kernel
def _add_background(opacity: wp.array(dtype=float), background: wp.array(dtype=float),
                    rgb: wp.array2d(dtype=float)):
    r, c = wp.tid()
    wp.atomic_add(rgb, r, c, (1.0 - opacity[r]) * background[c])


def composite(densities: wp.array, colors: wp.array, samples: Samples, background: wp.array,
              min_transmittance: float = 1.0e-4) -> tuple[wp.array, wp.array, wp.array]:
    """Render rays from their samples by emission-absorption compositing (module docstring formulas).

    Args:
        densities: float32 (S,) sigma_i >= 0 per unit world length (apply the field's activation first).
        colors: float32 array2d (S, 3) c_i.
        samples: the `Samples` of `march.sample_rays` the values were queried at (S = samples.n_samples).
        background: float32 (3,) color seen through the remaining transmittance.
        min_transmittance: early termination: samples whose transmittance T_i < min_transmittance are
            left out (weight 0), i.e. marching stops at the first such sample. 0 disables it.

    Returns:
        (rgb (N, 3) float32 array2d, opacity (N,) float32, depth (N,) float32). A ray without samples
        gives (background, 0, 0). Differentiable w.r.t. densities, colors and background. The gradient is
        the exact derivative of this truncated sum: terminated samples get zero gradient, and the
        truncation point itself (a step of size <= min_transmittance in the outputs) is not differentiated,
        so finite differences that move a sample across the threshold differ by O(min_transmittance).
        Not differentiable w.r.t. the samples (see `march`).
    """
    if not isinstance(samples, Samples):
        raise TypeError(f"samples: expected a march.Samples, got {type(samples).__name__}")
    dev, n, s = samples.ray_offsets.device, samples.n_rays, samples.n_samples
    check_array("densities", densities, wp.float32, (s,), dev)
    check_array("colors", colors, wp.float32, (s, 3), dev)
    check_array("background", background, wp.float32, (3,), dev)
    if not 0.0 <= min_transmittance < 1.0:
        raise ValueError(f"min_transmittance: expected a value in [0, 1), got {min_transmittance!r}")
    max_tau = -math.log(min_transmittance) if min_transmittance > 0.0 else math.inf
    grad = densities.requires_grad or colors.requires_grad or background.requires_grad
    tau_before = wp.zeros(s, dtype=float, device=dev, requires_grad=grad)
    rgb = wp.zeros((n, 3), dtype=float, device=dev, requires_grad=grad)
    opacity = wp.zeros(n, dtype=float, device=dev, requires_grad=grad)
    depth = wp.zeros(n, dtype=float, device=dev, requires_grad=grad)
    wp.launch(_optical_depth_scan, dim=n, device=dev,
              inputs=[densities, samples.deltas, samples.ray_offsets, samples.ray_counts, tau_before])
    wp.launch(_accumulate_samples, dim=s, device=dev,
              inputs=[densities, colors, samples.deltas, samples.t_points, samples.ray_indices, tau_before,
                      float(max_tau), rgb, opacity, depth])
    wp.launch(_add_background, dim=(n, 3), device=dev, inputs=[opacity, background, rgb])
    return rgb, opacity, depth


@wp.kernel
def _scale_sample_adjoints(t_points: wp.array(dtype=float), ray_indices: wp.array(dtype=wp.int32),
                           directions: wp.array(dtype=wp.vec3), inv_distance: float,
                           adj_density: wp.array(dtype=float), adj_color: wp.array2d(dtype=float)):
    s = wp.tid()
    x = t_points[s] * wp.length(directions[ray_indices[s]]) * inv_distance
    k = wp.min(x * x, 1.0)
    adj_density[s] = adj_density[s] * k
    adj_color[s, 0] = adj_color[s, 0] * k
    adj_color[s, 1] = adj_color[s, 1] * k
    adj_color[s, 2] = adj_color[s, 2] * k


def check_distance(distance) -> None:
    """ValueError unless `distance` (Floaters No More's, `scale_gradients_by_distance`) is a finite number > 0."""
    if not (isinstance(distance, (int, float)) and not isinstance(distance, bool) and distance > 0.0
            and math.isfinite(distance)):
        raise ValueError(f"distance: expected a finite distance > 0, got {distance!r}")


def scale_gradients_by_distance(densities: wp.array, colors: wp.array, samples: Samples, directions: wp.array,
                                distance: float) -> None:
    """Floaters No More (Philip and Deschaintre 2023): on the backward pass, scale the adjoints of each sample's
    density and color by min(1, (r / distance)^2), r = t_point |d| its distance from the ray's origin (the
    camera). The forward values are untouched. Space right in front of a training camera is seen by that camera
    alone and at a large solid angle, so its samples otherwise take large gradients that grow floaters; the
    scaling evens out each lattice point's gradient over the cameras at different distances.

    Call it after the query that produced `densities` and `colors` and before anything reads them under the
    active tape (compositing, regularizers of the weights): the tape replays in reverse, so the scaling runs after
    every later op has added its adjoint into `densities.grad` and `colors.grad` and before the query's adjoint
    reads them. Without an active tape, or with arrays that take no gradient, it does nothing.

    Args:
        densities: float32 (S,), colors: float32 array2d (S, 3): the query's outputs at `samples`.
        samples: the `Samples` they were queried at; directions: vec3 (N,) the rays' directions (t units).
        distance: world distance from the camera beyond which gradients are left as they are (> 0).
    """
    check_distance(distance)
    if not isinstance(samples, Samples):
        raise TypeError(f"samples: expected a march.Samples, got {type(samples).__name__}")
    dev, n, s = samples.ray_offsets.device, samples.n_rays, samples.n_samples
    check_array("densities", densities, wp.float32, (s,), dev)
    check_array("colors", colors, wp.float32, (s, 3), dev)
    check_array("directions", directions, wp.vec3, (n,), dev)
    tape = active_tape()
    if tape is None or s == 0 or not (densities.requires_grad and colors.requires_grad):
        return
    inv = 1.0 / float(distance)

    def backward():
        wp.launch(_scale_sample_adjoints, dim=s, device=dev, record_tape=False,
                  inputs=[samples.t_points, samples.ray_indices, directions, inv, densities.grad, colors.grad])

    tape.record_func(backward, [densities, colors])
