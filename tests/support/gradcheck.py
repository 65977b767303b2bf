"""Central finite-difference checks of Warp tape gradients.

Usage: build `forward()` that launches the stage under test on fixed inputs and returns a
(1,)-shaped float32 loss array (use `weighted_loss` to reduce any output with fixed random
weights), then call `check_gradient(forward, param, eps=..., rtol=..., atol=...)`.

Tolerances: everything runs in float32 (unit roundoff u = 6e-8). A central difference with step h
on a loss of magnitude |L| has roundoff error about u*|L|/h plus truncation h^2*|L'''|/6; with
|L| ~ 1..10 and h = 1e-3 the roundoff term is ~1e-4..1e-3 absolute, so gradient checks use
atol ~ 1e-3..1e-2 (scaled to the loss) and rtol ~ 1e-2 unless a test argues otherwise.
"""

from __future__ import annotations

import numpy as np
import warp as wp

from . import loss_kernels


def weighted_loss(out: wp.array, seed: int = 0) -> wp.array:
    """sum(w * out) with weights uniform in [-1, 1] drawn from `seed` (same weights every call)."""
    rng = np.random.default_rng(seed)
    loss = wp.zeros(1, dtype=float, device=out.device, requires_grad=True)
    if out.dtype == wp.vec3 and out.ndim == 1:
        w = wp.array(rng.uniform(-1, 1, (out.shape[0], 3)).astype(np.float32), dtype=wp.vec3, device=out.device)
        wp.launch(loss_kernels.weighted_sum_vec3, dim=out.shape[0], inputs=[out, w, loss], device=out.device)
    elif out.ndim == 2:
        w = wp.array(rng.uniform(-1, 1, out.shape).astype(np.float32), dtype=float, device=out.device)
        wp.launch(loss_kernels.weighted_sum_2d, dim=out.shape, inputs=[out, w, loss], device=out.device)
    elif out.ndim == 1 and out.dtype == wp.float32:
        w = wp.array(rng.uniform(-1, 1, out.shape).astype(np.float32), dtype=float, device=out.device)
        wp.launch(loss_kernels.weighted_sum_1d, dim=out.shape[0], inputs=[out, w, loss], device=out.device)
    else:
        raise TypeError(f"weighted_loss: unsupported array dtype={out.dtype} ndim={out.ndim}")
    return loss


def set_entry(param: wp.array, flat: np.ndarray, idx: int, value: float) -> None:
    """Set flat entry `idx` of `param` to `value`; `flat` is `param.numpy().reshape(-1)`, a view of the
    array on the CPU and a host copy on CUDA (copied back to the device here)."""
    flat[idx] = value
    if not param.device.is_cpu:
        host = wp.array(flat.reshape(param.numpy().shape), dtype=param.dtype, device="cpu")
        wp.copy(param, host)


def check_gradient(forward, param: wp.array, *, eps: float = 1e-3, rtol: float = 1e-2, atol: float = 1e-3,
                   probes: int = 8, seed: int = 0, indices=None) -> None:
    """Compare the tape gradient of `forward()` w.r.t. `param` with central differences.

    `param` must be a contiguous array with requires_grad=True that `forward` reads, on any device.
    Probes `probes` random flat entries (or `indices`). Raises AssertionError naming the entry on
    mismatch."""
    tape = wp.Tape()
    with tape:
        loss = forward()
    tape.backward(loss)
    analytic = param.grad.numpy().reshape(-1).copy()
    tape.zero()
    flat = param.numpy().reshape(-1)  # on the CPU a view: edits change the Warp array
    rng = np.random.default_rng(seed)
    if indices is None:
        indices = rng.choice(flat.size, size=min(probes, flat.size), replace=False)
    for idx in indices:
        orig = float(flat[idx])
        set_entry(param, flat, idx, orig + eps)
        lp = float(forward().numpy()[0])
        set_entry(param, flat, idx, orig - eps)
        lm = float(forward().numpy()[0])
        set_entry(param, flat, idx, orig)
        fd = (lp - lm) / (2 * eps)
        g = float(analytic[idx])
        if not abs(g - fd) <= atol + rtol * max(abs(fd), abs(g)):
            raise AssertionError(f"gradient mismatch at flat index {idx}: tape {g:.6g} vs central difference "
                                 f"{fd:.6g} (eps={eps}, rtol={rtol}, atol={atol})")
