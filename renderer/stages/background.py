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


def coverage_from_ids(tri_id: wp.array) -> wp.array:
    """(N,) float coverage of hard rasterization: 1 where tri_id >= 0, else 0. A constant of the
    (non-differentiable) ids: launched with record_tape=False, output has no gradient."""
    _check("tri_id", tri_id, wp.int32, (None,))
    out = wp.empty(tri_id.shape[0], dtype=float, device=tri_id.device)
    wp.launch(coverage_kernel, dim=tri_id.shape[0], device=tri_id.device, inputs=[tri_id], outputs=[out],
              record_tape=False)
    return out
