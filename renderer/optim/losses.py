"""Image losses between a render and a target, accumulated on the device.

Images are flat float32 `wp.array2d` of shape (N, 3), N = H*W pixels row-major (docs/architecture.md).
Every loss ADDS `weight * loss` into a (1,) float32 accumulator `out_loss` (allocate it with
requires_grad=True, zero it once per step), so several terms and several views sum into one scalar
under one `wp.Tape`. Losses are differentiable w.r.t. `render` (and `target` when it requires grad),
never w.r.t. `mask`.

The optional `mask` (N,) float32 weighs pixels: a loss is the mask-weighted mean over pixels and the
3 channels, sum_i m_i e_i / (3 sum_i m_i), so its scale does not depend on the covered area (an
all-zero mask adds 0). Without a mask every pixel weighs 1 and the loss is the plain mean over 3N
values. The mask sum is reduced on the device; nothing is read back to the host.
"""

from __future__ import annotations

import numpy as np
import warp as wp

from ..checks import check_array as _check

SSIM_RADIUS = wp.constant(5)  # 11x11 window
SSIM_SIGMA = wp.constant(1.5)
SSIM_C1 = wp.constant(0.01**2)  # (K1 L)^2 with dynamic range L = 1 (linear RGB in [0, 1])
SSIM_C2 = wp.constant(0.03**2)


@wp.kernel
def _sum(x: wp.array(dtype=float), out: wp.array(dtype=float)):
    i = wp.tid()
    wp.atomic_add(out, 0, x[i])


@wp.kernel
def _accumulate(term: wp.array(dtype=float), weight: float, total: wp.array(dtype=float)):
    wp.atomic_add(total, 0, weight * term[0])


@wp.func
def _pixel_scale(scale: float, mask: wp.array(dtype=float), masked: int, mask_sum: wp.array(dtype=float),
                 i: int):
    # The max() only matters for an all-zero mask, where every term is 0 anyway.
    if masked != 0:
        return scale * mask[i] / wp.max(mask_sum[0], 1.0e-20)
    return scale


@wp.kernel
def _l1(render: wp.array2d(dtype=float), target: wp.array2d(dtype=float), mask: wp.array(dtype=float),
        masked: int, mask_sum: wp.array(dtype=float), scale: float, out: wp.array(dtype=float)):
    i = wp.tid()
    e = (wp.abs(render[i, 0] - target[i, 0]) + wp.abs(render[i, 1] - target[i, 1])
         + wp.abs(render[i, 2] - target[i, 2]))
    wp.atomic_add(out, 0, _pixel_scale(scale, mask, masked, mask_sum, i) * e)


@wp.kernel
def _l2(render: wp.array2d(dtype=float), target: wp.array2d(dtype=float), mask: wp.array(dtype=float),
        masked: int, mask_sum: wp.array(dtype=float), scale: float, out: wp.array(dtype=float)):
    i = wp.tid()
    d0 = render[i, 0] - target[i, 0]
    d1 = render[i, 1] - target[i, 1]
    d2 = render[i, 2] - target[i, 2]
    wp.atomic_add(out, 0, _pixel_scale(scale, mask, masked, mask_sum, i) * (d0 * d0 + d1 * d1 + d2 * d2))


@wp.kernel
def _ssim_moments(render: wp.array2d(dtype=float), target: wp.array2d(dtype=float),
                  moments: wp.array2d(dtype=float)):
    # Columns: x (0..2), y (3..5), x^2 (6..8), y^2 (9..11), x*y (12..14); x = render, y = target.
    i, c = wp.tid()
    x = render[i, c]
    y = target[i, c]
    moments[i, c] = x
    moments[i, 3 + c] = y
    moments[i, 6 + c] = x * x
    moments[i, 9 + c] = y * y
    moments[i, 12 + c] = x * y


@wp.kernel
def _gaussian_blur_axis(src: wp.array2d(dtype=float), width: int, height: int, axis: int,
                        dst: wp.array2d(dtype=float)):
    # One separable pass (axis 0: along x, 1: along y). Taps outside the image are dropped and the
    # remaining weights renormalized; the window is a rectangle, so the two passes give exactly the
    # 2D Gaussian renormalized over the in-image part of the 11x11 window.
    i, c = wp.tid()
    px = i % width
    py = i // width
    s = 0.0
    wsum = 0.0
    # Static bounds unroll the loop: Warp's adjoint of a dynamic loop that mutates locals is wrong.
    for k in range(wp.static(-SSIM_RADIUS), wp.static(SSIM_RADIUS + 1)):
        qx = px + k * (1 - axis)
        qy = py + k * axis
        if qx >= 0 and qx < width and qy >= 0 and qy < height:
            w = wp.exp(-float(k * k) / (2.0 * SSIM_SIGMA * SSIM_SIGMA))
            s = s + w * src[qy * width + qx, c]
            wsum = wsum + w
    dst[i, c] = s / wsum


@wp.func
def _ssim(mx: float, my: float, exx: float, eyy: float, exy: float):
    vx = exx - mx * mx
    vy = eyy - my * my
    cxy = exy - mx * my
    return ((2.0 * mx * my + SSIM_C1) * (2.0 * cxy + SSIM_C2)) / (
        (mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))


@wp.kernel
def _ssim_loss(stats: wp.array2d(dtype=float), mask: wp.array(dtype=float), masked: int,
               mask_sum: wp.array(dtype=float), scale: float, out: wp.array(dtype=float)):
    i = wp.tid()
    e = 0.0
    for c in range(3):
        e = e + 1.0 - _ssim(stats[i, c], stats[i, 3 + c], stats[i, 6 + c], stats[i, 9 + c], stats[i, 12 + c])
    wp.atomic_add(out, 0, _pixel_scale(scale, mask, masked, mask_sum, i) * e)


def _check_accumulator(out_loss, device) -> None:
    _check("out_loss", out_loss, wp.float32, (1,), device)


def _check_images(render, target, mask, out_loss=None) -> int:
    _check("render", render, wp.float32, (None, 3))
    n = render.shape[0]
    _check("target", target, wp.float32, (n, 3), render.device)
    if mask is not None:
        _check("mask", mask, wp.float32, (n,), render.device)
    if out_loss is not None:
        _check_accumulator(out_loss, render.device)
    return n


def _normalization(mask, n: int, weight: float, device) -> tuple[float, wp.array | None]:
    """(scale, mask_sum): per-pixel factor weight/(3 n) without a mask; weight/3 and sum(mask) with one."""
    if mask is None:
        return float(weight) / (3.0 * n), None
    mask_sum = wp.zeros(1, dtype=float, device=device)
    wp.launch(_sum, dim=n, inputs=[mask, mask_sum], device=device, record_tape=False)
    return float(weight) / 3.0, mask_sum


def _pixel_loss(kernel, render, target, out_loss, weight, mask, pixels=None, mask_total=None) -> None:
    n = _check_images(render, target, mask, out_loss)
    if pixels is not None:
        if mask is not None:
            raise ValueError("pixels: a masked loss is normalized by its mask; pass mask_total instead")
        if not isinstance(pixels, int) or isinstance(pixels, bool) or pixels < n:
            raise ValueError(f"pixels: expected an int >= the render's {n} pixels, got {pixels!r}")
    if mask_total is not None:
        if mask is None or not (np.isfinite(mask_total) and mask_total > 0):
            raise ValueError(f"mask_total: expected a positive number with a mask, got {mask_total!r}")
        scale = float(weight) / 3.0
        mask_sum = wp.array([float(mask_total)], dtype=float, device=render.device)
    else:
        scale, mask_sum = _normalization(mask, n if pixels is None else pixels, weight, render.device)
    wp.launch(kernel, dim=n, inputs=[render, target, mask, int(mask is not None), mask_sum, scale, out_loss],
              device=render.device)


def l1(render: wp.array, target: wp.array, out_loss: wp.array, weight: float = 1.0,
       mask: wp.array | None = None, pixels: int | None = None, mask_total: float | None = None) -> None:
    """out_loss[0] += weight * mean |render - target| (mask-weighted mean over pixels and channels).
    `pixels`: these N pixels are part of an image of `pixels` pixels (a band of rows), whose mean this
    adds their share of: the sum is divided by 3 `pixels` instead of 3 N (the whole image's factor, so a
    pixel's gradient is the whole image's bit for bit). `mask_total`: the same for a masked band, the sum of
    the whole image's mask.

    render, target: (N, 3) float32 array2d; mask: (N,) float32 or None; out_loss: (1,) float32.
    The gradient at a zero residual is 0 (the subgradient Warp's abs uses)."""
    _pixel_loss(_l1, render, target, out_loss, weight, mask, pixels, mask_total)


def l2(render: wp.array, target: wp.array, out_loss: wp.array, weight: float = 1.0,
       mask: wp.array | None = None, pixels: int | None = None, mask_total: float | None = None) -> None:
    """out_loss[0] += weight * mean (render - target)^2, the (mask-weighted) mean squared error.
    `pixels`, `mask_total`: as in `l1`.

    render, target: (N, 3) float32 array2d; mask: (N,) float32 or None; out_loss: (1,) float32."""
    _pixel_loss(_l2, render, target, out_loss, weight, mask, pixels, mask_total)


def ssim_loss(render: wp.array, target: wp.array, width: int, height: int, out_loss: wp.array,
              weight: float = 1.0, mask: wp.array | None = None) -> None:
    """out_loss[0] += weight * (1 - mean SSIM(render, target)), SSIM per pixel and channel.

    SSIM (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2
    (dynamic range 1); local statistics are Gaussian-weighted means, variances E[x^2] - E[x]^2 and
    the covariance likewise. At the image border the window is cut to the image and its weights
    renormalized (no padding). The mean over pixels and channels is mask-weighted like the other
    losses; the mask weighs the SSIM map, windows still see masked-out neighbours.
    render, target: (N, 3) float32 array2d with N = width*height row-major; mask: (N,) or None."""
    n = _check_images(render, target, mask, out_loss)
    if width <= 0 or height <= 0 or width * height != n:
        raise ValueError(f"width, height: expected width*height == N = {n}, got {width}x{height}")
    device = render.device
    grad = render.requires_grad or target.requires_grad
    moments, tmp, stats = (wp.empty((n, 15), dtype=float, device=device, requires_grad=grad)
                           for _ in range(3))
    wp.launch(_ssim_moments, dim=(n, 3), inputs=[render, target, moments], device=device)
    wp.launch(_gaussian_blur_axis, dim=(n, 15), inputs=[moments, width, height, 0, tmp], device=device)
    wp.launch(_gaussian_blur_axis, dim=(n, 15), inputs=[tmp, width, height, 1, stats], device=device)
    scale, mask_sum = _normalization(mask, n, weight, device)
    wp.launch(_ssim_loss, dim=n, inputs=[stats, mask, int(mask is not None), mask_sum, scale, out_loss],
              device=device)


def psnr(render: wp.array, target: wp.array, mask: wp.array | None = None) -> float:
    """Peak signal-to-noise ratio in dB for peak value 1: 10 log10(1 / MSE), the MSE mask-weighted as in
    `l2`. A metric, not differentiable; reads both images back to the host. Identical images give inf."""
    n = _check_images(render, target, mask)
    r = render.numpy().astype(np.float64)
    t = target.numpy().astype(np.float64)
    m = np.ones(n) if mask is None else mask.numpy().astype(np.float64)
    mse = float((m[:, None] * (r - t) ** 2).sum() / max(3.0 * m.sum(), 1e-300))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(1.0 / mse))


def accumulate(term: wp.array, total: wp.array, weight: float = 1.0) -> None:
    """total[0] += weight * term[0] for two (1,) float32 accumulators, differentiably: sum separately
    kept loss terms (for per-term read-outs) into the one scalar the tape back-propagates."""
    _check("total", total, wp.float32, (1,))
    _check("term", term, wp.float32, (1,), total.device)
    wp.launch(_accumulate, dim=1, inputs=[term, float(weight), total], device=total.device)
