"""Differentiable copies that pack per-item leaf arrays (one per dotted path) into the flat buffers
the other stages read. Each is a plain copy, so its adjoint scatters gradients back to the leaf."""

from __future__ import annotations

import warp as wp


@wp.kernel
def _rows_2d(src: wp.array2d(dtype=float), dst: wp.array2d(dtype=float), offset: int):
    i, j = wp.tid()
    dst[offset + i, j] = src[i, j]


@wp.kernel
def _vec3_item(src: wp.array(dtype=float), dst: wp.array(dtype=wp.vec3), row: int):
    dst[row] = wp.vec3(src[0], src[1], src[2])


@wp.kernel
def _scalar_item(src: wp.array(dtype=float), dst: wp.array(dtype=float), row: int):
    dst[row] = src[0]


@wp.kernel
def _accumulate_vec3(src: wp.array(dtype=float), dst: wp.array(dtype=wp.vec3)):
    wp.atomic_add(dst, 0, wp.vec3(src[0], src[1], src[2]))


@wp.kernel
def _vec3_to_rows(src: wp.array(dtype=wp.vec3), dst: wp.array2d(dtype=float)):
    i = wp.tid()
    v = src[i]
    dst[i, 0] = v[0]
    dst[i, 1] = v[1]
    dst[i, 2] = v[2]


def copy_rows(src: wp.array2d, dst: wp.array2d, offset: int) -> None:
    """dst[offset:offset+len(src), :] = src (same column count)."""
    if src.ndim != 2 or dst.ndim != 2 or src.shape[1] != dst.shape[1]:
        raise ValueError(f"copy_rows: src {src.shape} and dst {dst.shape} must be 2-D with equal columns")
    if src.shape[0]:
        wp.launch(_rows_2d, dim=src.shape, inputs=[src, dst, offset], device=src.device, record_tape=src.requires_grad)


def gather_vec3(items: list[wp.array], device) -> wp.array:
    """Pack k (3,) float arrays into one (k,) vec3 array."""
    grad = any(src.requires_grad for src in items)  # constants pack into a constant (no adjoint to run)
    out = wp.zeros(len(items), dtype=wp.vec3, device=device, requires_grad=grad)
    for row, src in enumerate(items):
        wp.launch(_vec3_item, dim=1, inputs=[src, out, row], device=device, record_tape=grad)
    return out


def gather_scalar(items: list[wp.array], device) -> wp.array:
    """Pack k (1,) float arrays into one (k,) float array."""
    grad = any(src.requires_grad for src in items)
    out = wp.zeros(len(items), dtype=float, device=device, requires_grad=grad)
    for row, src in enumerate(items):
        wp.launch(_scalar_item, dim=1, inputs=[src, out, row], device=device, record_tape=grad)
    return out


def sum_vec3(items: list[wp.array], device) -> wp.array:
    """Sum k (3,) float arrays into one (1,) vec3 array (zero when k = 0)."""
    grad = any(src.requires_grad for src in items)
    out = wp.zeros(1, dtype=wp.vec3, device=device, requires_grad=grad)
    for src in items:
        wp.launch(_accumulate_vec3, dim=1, inputs=[src, out], device=device, record_tape=grad)
    return out


def vec3_to_rows(src: wp.array) -> wp.array2d:
    """A (V,) vec3 array as a (V, 3) float array (a differentiable copy)."""
    out = wp.zeros((src.shape[0], 3), dtype=float, device=src.device, requires_grad=True)
    if src.shape[0]:
        wp.launch(_vec3_to_rows, dim=src.shape[0], inputs=[src, out], device=src.device)
    return out
