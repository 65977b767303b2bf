"""G-buffer assembly: small per-pixel glue between visibility, texturing and shading.

Hit positions are recomputed from the rays and the differentiable depth (so gradients reach the
camera and the vertices); material lookups are integer gathers (not differentiable)."""

from __future__ import annotations

import warp as wp


@wp.kernel
def _hit_points(origins: wp.array(dtype=wp.vec3), directions: wp.array(dtype=wp.vec3),
                depth: wp.array(dtype=float), tri_id: wp.array(dtype=wp.int32), out: wp.array2d(dtype=float)):
    i = wp.tid()
    if tri_id[i] >= 0:
        p = origins[i] + depth[i] * directions[i]
        out[i, 0] = p[0]
        out[i, 1] = p[1]
        out[i, 2] = p[2]


@wp.kernel
def _materials(tri_id: wp.array(dtype=wp.int32), face_material: wp.array(dtype=wp.int32),
               material_model: wp.array(dtype=wp.int32), mat_out: wp.array(dtype=wp.int32),
               model_out: wp.array(dtype=wp.int32)):
    i = wp.tid()
    t = tri_id[i]
    if t >= 0:
        m = face_material[t]
        mat_out[i] = m
        model_out[i] = material_model[m]
    else:
        mat_out[i] = -1
        model_out[i] = -1


@wp.kernel
def _multiply(a: wp.array2d(dtype=float), b: wp.array2d(dtype=float), out: wp.array2d(dtype=float)):
    i, j = wp.tid()
    out[i, j] = a[i, j] * b[i, j]


@wp.kernel
def _add(a: wp.array2d(dtype=float), b: wp.array2d(dtype=float), out: wp.array2d(dtype=float)):
    i, c = wp.tid()
    out[i, c] = a[i, c] + b[i, c]


@wp.kernel
def _accumulate_copy(src: wp.array2d(dtype=float), out: wp.array2d(dtype=float)):
    i, j = wp.tid()
    # an atomic add, not a store: the adjoint of a store zeroes the output's gradient after reading it
    wp.atomic_add(out, i, j, src[i, j])


@wp.kernel
def _pixel_uv(width: int, height: int, out: wp.array2d(dtype=float)):
    y, x = wp.tid()
    i = y * width + x
    out[i, 0] = (float(x) + 0.5) / float(width)
    out[i, 1] = (float(y) + 0.5) / float(height)


def hit_points(origins: wp.array, directions: wp.array, depth: wp.array, tri_id: wp.array) -> wp.array2d:
    """(N, 3) world positions origin + depth * direction of covered pixels (zeros elsewhere).
    Differentiable w.r.t. origins, directions and depth."""
    grad = origins.requires_grad or directions.requires_grad or depth.requires_grad
    out = wp.zeros((tri_id.shape[0], 3), dtype=float, device=tri_id.device, requires_grad=grad)
    wp.launch(_hit_points, dim=tri_id.shape[0], inputs=[origins, directions, depth, tri_id, out],
              device=tri_id.device, record_tape=grad)
    return out


def pixel_materials(tri_id: wp.array, face_material: wp.array, material_model: wp.array):
    """(material index (N,), shading model (N,)) per pixel, -1 on background. Not differentiable."""
    n, dev = tri_id.shape[0], tri_id.device
    mat = wp.empty(n, dtype=wp.int32, device=dev)
    model = wp.empty(n, dtype=wp.int32, device=dev)
    wp.launch(_materials, dim=n, inputs=[tri_id, face_material, material_model, mat, model], device=dev,
              record_tape=False)
    return mat, model


def multiply(a: wp.array2d, b: wp.array2d) -> wp.array2d:
    """Elementwise a * b of two (N, C) arrays. Differentiable w.r.t. both."""
    if a.shape != b.shape:
        raise ValueError(f"multiply: shapes {a.shape} and {b.shape} differ")
    out = wp.zeros(a.shape, dtype=float, device=a.device, requires_grad=a.requires_grad or b.requires_grad)
    wp.launch(_multiply, dim=a.shape, inputs=[a, b, out], device=a.device, record_tape=out.requires_grad)
    return out


def add(a: wp.array2d, b: wp.array2d) -> wp.array2d:
    """Elementwise a + b of two (N, C) arrays (emitted plus reflected radiance). Differentiable w.r.t. both."""
    if a.shape != b.shape:
        raise ValueError(f"add: shapes {a.shape} and {b.shape} differ")
    out = wp.zeros(a.shape, dtype=float, device=a.device, requires_grad=a.requires_grad or b.requires_grad)
    wp.launch(_add, dim=a.shape, inputs=[a, b, out], device=a.device, record_tape=out.requires_grad)
    return out


def output(src: wp.array2d) -> wp.array2d:
    """A differentiable copy of an (N, C) array whose `.grad` still holds d(loss)/d(output) after
    `tape.backward`. Warp's adjoint of an array store consumes (zeroes) the gradient of the stored
    element, so the gradient of an array written by a plain store reads as zero after the backward
    pass; this copy is accumulated with atomic adds instead, whose adjoint only reads it."""
    out = wp.zeros(src.shape, dtype=float, device=src.device, requires_grad=True)
    wp.launch(_accumulate_copy, dim=src.shape, inputs=[src, out], device=src.device)
    return out


def pixel_uv(width: int, height: int, device) -> wp.array2d:
    """(N, 2) uv of each pixel center over the whole image (for sampling a background image)."""
    out = wp.empty((width * height, 2), dtype=float, device=device)
    wp.launch(_pixel_uv, dim=(height, width), inputs=[width, height, out], device=device, record_tape=False)
    return out
