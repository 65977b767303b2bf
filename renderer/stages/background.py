"""Background stage: blend shaded pixels over a background color or image by their coverage."""

from __future__ import annotations

import warp as wp

from ..checks import check_array as _check


@wp.kernel
def composite_color_kernel(color: wp.array2d(dtype=float), coverage: wp.array(dtype=float),
                           background: wp.array(dtype=float), out: wp.array2d(dtype=float)):
    i, k = wp.tid()
    c = coverage[i]
    out[i, k] = c * color[i, k] + (1.0 - c) * background[k]


@wp.kernel
def composite_image_kernel(color: wp.array2d(dtype=float), coverage: wp.array(dtype=float),
                           background: wp.array2d(dtype=float), out: wp.array2d(dtype=float)):
    i, k = wp.tid()
    c = coverage[i]
    out[i, k] = c * color[i, k] + (1.0 - c) * background[i, k]


@wp.kernel
def composite_output_kernel(color: wp.array2d(dtype=float), coverage: wp.array(dtype=float),
                            background: wp.array2d(dtype=float), per_pixel: int, keep: int,
                            comp: wp.array2d(dtype=float), out: wp.array2d(dtype=float)):
    i = wp.tid()
    c = coverage[i]
    for k in range(3):
        b = background[0, k]
        if per_pixel != 0:
            b = background[i, k]
        v = c * color[i, k] + (1.0 - c) * b
        if keep != 0:
            comp[i, k] = v
        # an atomic add, not a store: its adjoint only reads out.grad, which stays readable (gbuffer.output)
        wp.atomic_add(out, i, k, v)


@wp.kernel
def coverage_kernel(tri_id: wp.array(dtype=wp.int32), out: wp.array(dtype=float)):
    i = wp.tid()
    out[i] = wp.where(tri_id[i] >= 0, 1.0, 0.0)


def composite(color: wp.array, coverage: wp.array, background: wp.array) -> wp.array:
    """out = coverage * color + (1 - coverage) * background, per pixel and channel.

    Args:
        color: (N, 3) float shaded pixels.
        coverage: (N,) float in [0, 1] (not clamped here), e.g. `coverage_from_ids` or a soft alpha.
        background: (3,) float, one RGB color for every pixel, or (N, 3) float, an image.

    Returns:
        (N, 3) float, differentiable w.r.t. color, coverage and background.
    """
    _check("color", color, wp.float32, (None, 3))
    dev, n = color.device, color.shape[0]
    _check("coverage", coverage, wp.float32, (n,), dev)
    if isinstance(background, wp.array) and background.ndim == 2:
        _check("background", background, wp.float32, (n, 3), dev)
        kernel = composite_image_kernel
    else:
        _check("background", background, wp.float32, (3,), dev)
        kernel = composite_color_kernel
    grad = color.requires_grad or coverage.requires_grad or background.requires_grad
    out = wp.empty((n, 3), dtype=float, device=dev, requires_grad=grad)
    wp.launch(kernel, dim=(n, 3), device=dev, inputs=[color, coverage, background], outputs=[out])
    return out


def composite_output(color: wp.array, coverage: wp.array, background: wp.array,
                     keep_composite: bool = False) -> tuple[wp.array | None, wp.array]:
    """`composite` fused with `gbuffer.output`: returns (composite or None, out), both (N, 3) float with
    the values of `composite(color, coverage, background)`. `out` is accumulated with atomic adds, so its
    `.grad` still holds d(loss)/d(out) after `tape.backward` and later stages may add into it (the
    antialias blend); `composite` (only with keep_composite) is a plain copy for stages that read the
    composited colors. Differentiable w.r.t. color, coverage and background through both."""
    _check("color", color, wp.float32, (None, 3))
    dev, n = color.device, color.shape[0]
    _check("coverage", coverage, wp.float32, (n,), dev)
    if isinstance(background, wp.array) and background.ndim == 2:
        _check("background", background, wp.float32, (n, 3), dev)
        bg2, per_pixel = background, 1
    else:
        _check("background", background, wp.float32, (3,), dev)
        bg2 = wp.array(ptr=background.ptr, dtype=float, shape=(1, 3), device=dev, grad=_row_grad(background))
        per_pixel = 0
    grad = color.requires_grad or coverage.requires_grad or background.requires_grad
    comp = wp.zeros((n, 3), dtype=float, device=dev, requires_grad=grad) if keep_composite else None
    out = wp.zeros((n, 3), dtype=float, device=dev, requires_grad=grad)
    wp.launch(composite_output_kernel, dim=n, device=dev,
              inputs=[color, coverage, bg2, per_pixel, int(keep_composite),
                      comp if comp is not None else wp.empty((0, 3), dtype=float, device=dev)],
              outputs=[out])
    return comp, out


def _row_grad(a: wp.array):
    """a.grad viewed as (1, 3) (the gradient of the (1, 3) alias of a (3,) array), or None."""
    if a.grad is None:
        return None
    return wp.array(ptr=a.grad.ptr, dtype=float, shape=(1, 3), device=a.device)


def coverage_from_ids(tri_id: wp.array) -> wp.array:
    """(N,) float coverage of hard rasterization: 1 where tri_id >= 0, else 0. A constant of the
    (non-differentiable) ids: launched with record_tape=False, output has no gradient."""
    _check("tri_id", tri_id, wp.int32, (None,))
    out = wp.empty(tri_id.shape[0], dtype=float, device=tri_id.device)
    wp.launch(coverage_kernel, dim=tri_id.shape[0], device=tri_id.device, inputs=[tri_id], outputs=[out],
              record_tape=False)
    return out
