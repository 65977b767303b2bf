"""Interpolate stage: per-vertex attributes at each pixel's barycentrics, and their screen derivatives."""

from __future__ import annotations

import warp as wp

from ..thread_tape import active_tape
from .camera import check_array


@wp.kernel(enable_backward=False)
def interpolate_kernel(attr: wp.array2d(dtype=float), faces: wp.array(dtype=wp.int32),
                       tri_id: wp.array(dtype=wp.int32), bary: wp.array2d(dtype=float),
                       out: wp.array2d(dtype=float)):
    i = wp.tid()
    f = tri_id[i]
    if f >= 0 and 3 * f < faces.shape[0]:
        b1 = bary[i, 0]
        b2 = bary[i, 1]
        v0 = faces[3 * f]
        v1 = faces[3 * f + 1]
        v2 = faces[3 * f + 2]
        for c in range(out.shape[1]):
            out[i, c] = (1.0 - b1 - b2) * attr[v0, c] + b1 * attr[v1, c] + b2 * attr[v2, c]


@wp.kernel(enable_backward=False)
def interpolate_adjoint_kernel(attr: wp.array2d(dtype=float), faces: wp.array(dtype=wp.int32),
                               tri_id: wp.array(dtype=wp.int32), bary: wp.array2d(dtype=float),
                               adj_out: wp.array2d(dtype=float), adj_attr: wp.array2d(dtype=float),
                               want_attr: int, adj_bary: wp.array2d(dtype=float), want_bary: int):
    # out_c = a0_c + b1 (a1_c - a0_c) + b2 (a2_c - a0_c): the vertices get (1 - b1 - b2, b1, b2) g_c,
    # the barycentrics sum_c g_c (a1_c - a0_c) and sum_c g_c (a2_c - a0_c)
    i = wp.tid()
    f = tri_id[i]
    if f >= 0 and 3 * f < faces.shape[0]:
        b1 = bary[i, 0]
        b2 = bary[i, 1]
        v0 = faces[3 * f]
        v1 = faces[3 * f + 1]
        v2 = faces[3 * f + 2]
        for c in range(adj_out.shape[1]):
            g = adj_out[i, c]
            if want_attr != 0:
                wp.atomic_add(adj_attr, v0, c, (1.0 - b1 - b2) * g)
                wp.atomic_add(adj_attr, v1, c, b1 * g)
                wp.atomic_add(adj_attr, v2, c, b2 * g)
            if want_bary != 0:
                a0 = attr[v0, c]
                wp.atomic_add(adj_bary, i, 0, g * (attr[v1, c] - a0))
                wp.atomic_add(adj_bary, i, 1, g * (attr[v2, c] - a0))


@wp.kernel
def interpolate_derivatives_kernel(attr: wp.array2d(dtype=float), faces: wp.array(dtype=wp.int32),
                                   tri_id: wp.array(dtype=wp.int32), bary_db: wp.array2d(dtype=float),
                                   out: wp.array2d(dtype=float)):
    i, c = wp.tid()
    f = tri_id[i]
    if f >= 0 and 3 * f < faces.shape[0]:
        a0 = attr[faces[3 * f], c]
        # A = a0 + b1 (a1 - a0) + b2 (a2 - a0), so dA = (a1 - a0) db1 + (a2 - a0) db2
        d1 = attr[faces[3 * f + 1], c] - a0
        d2 = attr[faces[3 * f + 2], c] - a0
        out[i, 2 * c] = d1 * bary_db[i, 0] + d2 * bary_db[i, 2]
        out[i, 2 * c + 1] = d1 * bary_db[i, 1] + d2 * bary_db[i, 3]


def _check(attr: wp.array, faces: wp.array, tri_id: wp.array) -> None:
    check_array("attr", attr, wp.float32, (None, None))
    check_array("faces", faces, wp.int32, (None,))
    if faces.shape[0] % 3:
        raise ValueError(f"faces: expected a flat (3F,) array, got length {faces.shape[0]}")
    check_array("tri_id", tri_id, wp.int32, (None,))


def interpolate(attr: wp.array, faces: wp.array, tri_id: wp.array, bary: wp.array) -> wp.array:
    """Barycentric interpolation of vertex attributes: A = (1 - b1 - b2) a0 + b1 a1 + b2 a2.

    Args:
        attr: float32 array2d (V, C) per-vertex attributes.
        faces: wp.int32 (3F,); tri_id: wp.int32 (N,), -1 for background.
        bary: float32 array2d (N, 2) = (b1, b2) from `visibility.intersect`.

    Returns:
        float32 array2d (N, C), zeros on background. Differentiable w.r.t. attr and bary (a hand-written
        adjoint recorded with `wp.Tape.record_func`).
    """
    _check(attr, faces, tri_id)
    n, ch = tri_id.shape[0], attr.shape[1]
    check_array("bary", bary, wp.float32, (n, 2))
    dev = attr.device
    want_attr, want_bary = attr.requires_grad, bary.requires_grad
    out = wp.zeros((n, ch), dtype=float, device=dev, requires_grad=want_attr or want_bary)
    # off the tape, with a hand-written adjoint: one thread per pixel for all channels, and a scatter
    # instead of Warp's generated replay (about half the time of the (N, C) kernel and its adjoint)
    wp.launch(interpolate_kernel, dim=n, inputs=[attr, faces, tri_id, bary], outputs=[out], device=dev,
              record_tape=False)
    tape = active_tape()
    if (want_attr or want_bary) and tape is not None:
        empty = wp.empty((0, 0), dtype=float, device=dev)

        def backward():
            wp.launch(interpolate_adjoint_kernel, dim=n, device=dev, record_tape=False,
                      inputs=[attr, faces, tri_id, bary, out.grad, attr.grad if want_attr else empty,
                              int(want_attr), bary.grad if want_bary else empty, int(want_bary)])

        tape.record_func(backward, [a for a in (attr, bary, out) if a.requires_grad])
    return out


def interpolate_derivatives(attr: wp.array, faces: wp.array, tri_id: wp.array, bary_db: wp.array) -> wp.array:
    """Screen-space derivatives of the interpolated attributes.

    Args:
        attr: float32 array2d (V, C); faces: wp.int32 (3F,); tri_id: wp.int32 (N,).
        bary_db: float32 array2d (N, 4) = (db1/dx, db1/dy, db2/dx, db2/dy) from `visibility.bary_derivatives`.

    Returns:
        float32 array2d (N, 2C): columns 2c and 2c + 1 are dA_c/dx and dA_c/dy (for uv: du/dx, du/dy, dv/dx,
        dv/dy, the `uv_da` layout of the texture stage). Zeros on background. Not differentiable (launched
        with record_tape=False).
    """
    _check(attr, faces, tri_id)
    n, ch = tri_id.shape[0], attr.shape[1]
    check_array("bary_db", bary_db, wp.float32, (n, 4))
    out = wp.zeros((n, 2 * ch), dtype=float, device=attr.device)
    wp.launch(interpolate_derivatives_kernel, dim=(n, ch), inputs=[attr, faces, tri_id, bary_db],
              outputs=[out], device=attr.device, record_tape=False)
    return out
