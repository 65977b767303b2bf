"""Rendering as a PyTorch op.

    ds = DeviceScene(load_scene("scenes/texture.json"), device="cpu")
    tex = torch.full((64, 64, 3), 0.5, requires_grad=True)
    image = render_torch(ds, "main", {"materials.body.albedo": tex})   # (H, W, 3)
    loss = ((image - target) ** 2).mean(); loss.backward()             # tex.grad filled

The tensors given for dotted paths replace those leaves for the call, zero-copy (`wp.from_torch`):
Warp reads the tensors' memory and writes their gradients straight into torch-owned buffers. Paths
not given keep the DeviceScene's current values and receive no gradient. Gradients equal those of the
Warp path (`wp.Tape` over `DeviceScene.prepare` + `render_view`), because it is the same computation.
"""

from __future__ import annotations

import torch
import warp as wp

from .device_scene import DeviceScene
from .render import render_view


def _wrap(ds: DeviceScene, path: str, tensor: torch.Tensor) -> tuple[wp.array, torch.Tensor]:
    leaf = ds.arrays[path]
    expected = tuple(ds.scene.params()[path].shape)
    if tuple(tensor.shape) != expected:
        raise ValueError(f"render_torch: tensor for {path!r} has shape {tuple(tensor.shape)}, expected {expected}")
    if tensor.dtype != torch.float32:
        raise TypeError(f"render_torch: tensor for {path!r} has dtype {tensor.dtype}, expected torch.float32")
    data = tensor.detach().contiguous()
    grad = torch.zeros_like(data)
    arr = wp.from_torch(data, dtype=leaf.dtype, requires_grad=True)
    arr.grad = wp.from_torch(grad, dtype=leaf.dtype)
    return arr, grad


class _RenderFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ds: DeviceScene, camera: str, paths: tuple[str, ...], options: dict, *tensors):
        saved = {p: ds.arrays[p] for p in paths}
        grads = []
        try:
            for path, t in zip(paths, tensors):
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
        out = ctx.out
        g = wp.from_torch(grad_image.contiguous().view(-1, 3).to(torch.float32), dtype=float)
        ctx.tape.backward(grads={out.image: g})
        ctx.tape.reset()
        return (None, None, None, None, *ctx.grads)


def render_torch(ds: DeviceScene, camera: str, params: dict[str, torch.Tensor], **options) -> torch.Tensor:
    """Render `camera` as an (H, W, 3) float32 tensor, differentiable w.r.t. the `params` tensors
    (dotted path -> tensor of that parameter's shape, float32, on the DeviceScene's device).
    `options` are passed to `render_view` (mode, shadows, ...)."""
    paths = tuple(params)
    return _RenderFunction.apply(ds, camera, paths, options, *(params[p] for p in paths))
