"""The sRGB transfer function as a differentiable op on (N, 3) colors, for losses measured on sRGB-encoded
values (the targets of a real capture are sRGB JPEGs, and NeRF papers report PSNR on sRGB images).

`encode(x) = 12.92 x` for x <= 0.0031308, else `1.055 x^(1/2.4) - 0.055`, after clamping x into [0, 1]
(`renderer.conventions.linear_to_srgb` is the NumPy reference). Its derivative is 12.92 on the linear
segment and `1.055 / 2.4 x^(-1.4/2.4)` above it (continuous to 0.05 % at the joint), 0 outside [0, 1].
"""

from __future__ import annotations

import warp as wp

from ..checks import check_array
from ..thread_tape import active_tape

# Never differentiated by Warp: the adjoint is written out below.
wp.set_module_options({"enable_backward": False})


@wp.func
def _encode(x: float) -> float:
    c = wp.clamp(x, 0.0, 1.0)
    if c <= 0.0031308:
        return 12.92 * c
    return 1.055 * wp.pow(c, 1.0 / 2.4) - 0.055


@wp.func
def _slope(x: float) -> float:
    if x < 0.0 or x > 1.0:
        return 0.0
    if x <= 0.0031308:
        return 12.92
    return 1.055 / 2.4 * wp.pow(x, -1.4 / 2.4)


@wp.kernel
def _forward(x: wp.array2d(dtype=float), out: wp.array2d(dtype=float)):
    i, c = wp.tid()
    out[i, c] = _encode(x[i, c])


@wp.kernel
def _backward(x: wp.array2d(dtype=float), adj_out: wp.array2d(dtype=float), adj_x: wp.array2d(dtype=float)):
    i, c = wp.tid()
    adj_x[i, c] = adj_x[i, c] + _slope(x[i, c]) * adj_out[i, c]


def linear_to_srgb(colors: wp.array) -> wp.array:
    """sRGB encoding of linear colors, float32 array2d (N, 3) -> a new (N, 3) array (values clamped into
    [0, 1] first). Differentiable w.r.t. `colors` when it requires grad: the exact adjoint is recorded on
    the active tape (`tape.record_func`; the calling thread's, or renderer.parallel's stand-in)."""
    check_array("colors", colors, wp.float32, (None, 3))
    grad = colors.requires_grad
    out = wp.empty(colors.shape, dtype=float, device=colors.device, requires_grad=grad)
    if colors.shape[0] == 0:
        return out
    wp.launch(_forward, dim=colors.shape, inputs=[colors, out], device=colors.device, record_tape=False)
    tape = active_tape()
    if tape is not None and grad:
        def backward():
            wp.launch(_backward, dim=colors.shape, inputs=[colors, out.grad, colors.grad], device=colors.device,
                      record_tape=False)
        tape.record_func(backward, [colors, out])
    return out
