"""Rendering as a PyTorch op.

    ds = DeviceScene(load_scene("scenes/texture.json"), device="cpu")
    tex = torch.full((64, 64, 3), 0.5, requires_grad=True)
    image = render_torch(ds, "main", {"materials.body.albedo": tex})   # (H, W, 3)
    loss = ((image - target) ** 2).mean(); loss.backward()             # tex.grad filled

The tensors given for dotted paths replace those leaves for the call, zero-copy (`wp.from_torch`):
Warp reads the tensors' memory and writes their gradients straight into torch-owned buffers. Paths
not given keep the DeviceScene's current values and receive no gradient (their `.grad` in the
DeviceScene is left untouched). Gradients equal those of the Warp path (`wp.Tape` over
`DeviceScene.prepare` + `render_view`), because it is the same computation. Each call runs its own
`prepare()`, so several calls (several cameras, or several values of one path) may feed one loss.
"""

from __future__ import annotations

import torch
import warp as wp

from .device_scene import DeviceScene
from .render import render_view


def _wrap(ds: DeviceScene, path: str, tensor: torch.Tensor) -> tuple[wp.array, torch.Tensor]:
    """A Warp view of `tensor` (no copy when it is contiguous) standing in for the leaf at `path`, and
    the torch buffer its gradient is written into (the Warp array's `.grad`, also without a copy)."""
    if path not in ds.arrays:
        raise KeyError(f"render_torch: unknown parameter path {path!r}; expected one of {sorted(ds.arrays)}")
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"render_torch: value for {path!r} is a {type(tensor).__name__}, expected a torch.Tensor")
    leaf = ds.arrays[path]
    expected = tuple(ds.params[path].shape)
    if tuple(tensor.shape) != expected:
        raise ValueError(f"render_torch: tensor for {path!r} has shape {tuple(tensor.shape)}, expected {expected}")
    if tensor.dtype != torch.float32:
        raise TypeError(f"render_torch: tensor for {path!r} has dtype {tensor.dtype}, expected torch.float32")
    if wp.device_from_torch(tensor.device) != ds.device:
        raise ValueError(f"render_torch: tensor for {path!r} is on {tensor.device}, expected the DeviceScene's "
                         f"device {ds.device}")
    data = tensor.detach().contiguous()
    grad = torch.zeros_like(data)
    arr = wp.from_torch(data, dtype=leaf.dtype, requires_grad=True)
    arr.grad = wp.from_torch(grad, dtype=leaf.dtype)
    return arr, grad


def _constant(leaf: wp.array) -> wp.array:
    """The leaf's memory as an array without gradient, so a backward pass leaves `leaf.grad` alone."""
    alias = wp.array(ptr=leaf.ptr, dtype=leaf.dtype, shape=leaf.shape, device=leaf.device, requires_grad=False)
    alias._leaf = leaf  # the alias does not own the memory: keep the leaf alive as long as the tape needs it
    return alias


class _RenderFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ds: DeviceScene, camera: str, paths: tuple[str, ...], options: dict, *tensors):
        saved = dict(ds.arrays)
        grads = []
        try:
            for path in ds.arrays:
                if path not in paths:
                    ds.arrays[path] = _constant(saved[path])
            for path, t in zip(paths, tensors, strict=True):
                ds.arrays[path], g = _wrap(ds, path, t)
                grads.append(g)
            tape = wp.Tape()
            with tape:
                out = render_view(ds, ds.prepare(), camera, **options)
        finally:
            ds.arrays.update(saved)
        ctx.tape, ctx.out, ctx.grads = tape, out, grads
        return wp.to_torch(out.image).view(out.height, out.width, 3).clone()

    @staticmethod
    def backward(ctx, grad_image):
        if ctx.tape is None:
            raise RuntimeError("render_torch: backward through one render twice is not supported "
                               "(retain_graph=True); render again instead")
        out, tape, grads = ctx.out, ctx.tape, ctx.grads
        ctx.tape = ctx.out = ctx.grads = None  # release the recorded launches and their buffers
        g = wp.from_torch(grad_image.to(torch.float32).contiguous().view(-1, 3), dtype=wp.float32)
        tape.backward(grads={out.image: g})
        # no tape.reset(): it would zero every gradient the tape touched, including the torch buffers
        # returned here
        return (None, None, None, None, *grads)


def render_torch(ds: DeviceScene, camera: str, params: dict[str, torch.Tensor], **options) -> torch.Tensor:
    """Render `camera` as an (H, W, 3) float32 tensor, differentiable w.r.t. the `params` tensors
    (dotted path -> tensor of that parameter's shape, float32, on the DeviceScene's device).
    `options` are passed to `render_view` (mode, shadows, ...).

    Raises KeyError for an unknown path, ValueError for a wrong shape or device, TypeError for a
    dtype other than torch.float32."""
    paths = tuple(params)
    if any(ds.kind(p) == "emission" for p in paths if p in ds.arrays):  # differentiated even while zero
        options = {**options, "emission_grad": True}
    return _RenderFunction.apply(ds, camera, paths, options, *(params[p] for p in paths))
