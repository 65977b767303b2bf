"""`composite` as a PyTorch op: Warp's emission-absorption compositing on torch tensors.

    samples = sample_rays(origins, directions, aabb, 32)                 # Warp, not differentiable
    density, color = field(torch_positions, ...)                         # any torch computation
    rgb, opacity, depth = composite_torch(density, color, samples, bg)   # torch tensors, differentiable

The tensors are handed to `composite.composite` zero-copy (`wp.from_torch`): Warp reads their memory and
the backward pass (`wp.Tape.backward` with the incoming torch gradients) writes the gradients of densities,
colors and background straight into torch-owned buffers. The gradient is therefore exactly the one of the
Warp op (the derivative of the truncated sum, see `composite.composite`), not a re-implementation.
"""

from __future__ import annotations

import torch
import warp as wp

from .composite import check_distance, composite
from .march import Samples


def _as_warp(name: str, t: torch.Tensor, shape: tuple, device) -> tuple[wp.array, torch.Tensor]:
    """A Warp float32 view of `t` (no copy when contiguous) with requires_grad, and the torch buffer its
    gradient is written into (the view's `.grad`, also without a copy)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name}: expected dtype torch.float32, got {t.dtype}")
    if tuple(t.shape) != shape:
        want = "(" + ", ".join(str(s) for s in shape) + ("," * (len(shape) == 1)) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if wp.device_from_torch(t.device) != device:
        raise ValueError(f"{name}: is on {t.device}, expected the samples' device {device}")
    data = t.detach().contiguous()
    grad = torch.zeros_like(data)
    if data.numel() == 0:  # wp.from_torch needs memory to point at
        arr = wp.zeros(shape, dtype=wp.float32, device=device, requires_grad=True)
        return arr, grad
    arr = wp.from_torch(data, dtype=wp.float32, requires_grad=True)
    arr.grad = wp.from_torch(grad, dtype=wp.float32)
    return arr, grad


class CompositeFunction(torch.autograd.Function):
    """torch.autograd.Function around `composite.composite`; use `composite_torch`."""

    @staticmethod
    def forward(ctx, densities, colors, background, samples: Samples, min_transmittance: float):
        dev, s = samples.ray_offsets.device, samples.n_samples
        d, gd = _as_warp("densities", densities, (s,), dev)
        c, gc = _as_warp("colors", colors, (s, 3), dev)
        b, gb = _as_warp("background", background, (3,), dev)
        tape = wp.Tape()
        with tape:
            rgb, opacity, depth = composite(d, c, samples, b, min_transmittance)
        # keep the inputs' views alive with the tape: it holds their pointers, not the arrays' owners
        ctx.tape, ctx.outputs, ctx.inputs, ctx.grads = tape, (rgb, opacity, depth), (d, c, b), (gd, gc, gb)
        return tuple(wp.to_torch(a, requires_grad=False).clone() for a in (rgb, opacity, depth))

    @staticmethod
    def backward(ctx, g_rgb, g_opacity, g_depth):
        if ctx.tape is None:
            raise RuntimeError("composite_torch: backward through one call twice is not supported "
                               "(retain_graph=True); composite again instead")
        tape, outputs, grads = ctx.tape, ctx.outputs, ctx.grads
        ctx.tape = ctx.outputs = ctx.inputs = ctx.grads = None
        incoming = {}
        for out, g in zip(outputs, (g_rgb, g_opacity, g_depth), strict=True):
            if g is not None and out.size > 0:
                incoming[out] = wp.from_torch(g.to(torch.float32).contiguous(), dtype=wp.float32)
        if incoming:
            tape.backward(grads=incoming)
        # no tape.reset(): it would zero the torch-owned gradient buffers returned here
        return (*grads, None, None)


def composite_torch(densities: torch.Tensor, colors: torch.Tensor, samples: Samples, background: torch.Tensor,
                    min_transmittance: float = 1.0e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Emission-absorption compositing of packed samples (`composite.composite`) on torch tensors.

    Args:
        densities: float32 (S,) sigma_i >= 0 per unit world length, S = samples.n_samples.
        colors: float32 (S, 3).
        samples: the `march.Samples` the values belong to (its arrays stay on their Warp device, which must
            be the tensors' device).
        background: float32 (3,).
        min_transmittance: early termination threshold (see `composite.composite`; 0 disables).

    Returns:
        (rgb (N, 3), opacity (N,), depth (N,)) float32 tensors, differentiable w.r.t. densities, colors and
        background with the exact gradients of the Warp op (computed by its tape, written zero-copy into
        torch buffers). One backward per call (no retain_graph).

    Raises TypeError for a non-tensor or non-float32 input, ValueError for a wrong shape or device.
    """
    if not isinstance(samples, Samples):
        raise TypeError(f"samples: expected a march.Samples, got {type(samples).__name__}")
    wp.init()  # wp.from_torch needs the runtime (a no-op once initialized)
    return CompositeFunction.apply(densities, colors, background, samples, float(min_transmittance))


class _ScaleByDistance(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradients by per-sample factors k (S,)."""

    @staticmethod
    def forward(ctx, densities, colors, k):
        ctx.save_for_backward(k)
        return densities.clone(), colors.clone()

    @staticmethod
    def backward(ctx, grad_densities, grad_colors):
        (k,) = ctx.saved_tensors
        gd = None if grad_densities is None else grad_densities * k
        gc = None if grad_colors is None else grad_colors * k[:, None]
        return gd, gc, None


def scale_gradients_by_distance_torch(densities: torch.Tensor, colors: torch.Tensor, samples: Samples,
                                      directions: torch.Tensor, distance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`composite.scale_gradients_by_distance` for torch fields: (densities, colors) unchanged in value, whose
    gradients are scaled by min(1, (t_point |d| / distance)^2) per sample (Floaters No More). `directions`: (N, 3)
    the rays' directions; `distance` > 0 in world units."""
    check_distance(distance)
    s = samples.n_samples
    if s == 0:
        return densities, colors
    t = wp.to_torch(samples.t_points, requires_grad=False)
    ray = wp.to_torch(samples.ray_indices, requires_grad=False).long()
    r = t * directions.detach().reshape(-1, 3).norm(dim=1)[ray] / float(distance)
    k = (r * r).clamp(max=1.0).to(densities.dtype)
    return _ScaleByDistance.apply(densities, colors, k)
