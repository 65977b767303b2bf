"""Small helpers the stage tests share: Warp arrays from lists, and an independent NumPy rotation."""

from __future__ import annotations

import numpy as np
import warp as wp


def quat_matrix(q) -> np.ndarray:
    """Rotation matrix of quaternion (x, y, z, w), normalized first (a float64 reference)."""
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def farr(a, grad: bool = False) -> wp.array:
    """A float32 Warp array of `a`."""
    return wp.array(np.asarray(a, np.float32), dtype=float, requires_grad=grad)


def varr(a, grad: bool = False) -> wp.array:
    """A wp.vec3 Warp array of the (n, 3) `a`."""
    return wp.array(np.asarray(a, np.float32), dtype=wp.vec3, requires_grad=grad)
