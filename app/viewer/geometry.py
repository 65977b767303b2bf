"""Display geometry on the host: the same world transform and area-weighted vertex normals as
renderer/stages/geometry.py, in NumPy, from the values the viewer knows (a few thousand vertices per
mesh, recomputed only when a value changes). Nothing here is differentiated."""

from __future__ import annotations

import numpy as np
from drstudio.renderer import conventions as cv
from drstudio.renderer.params import Group, ParamPath, param_path


def rotation_matrix(q) -> np.ndarray:
    q = np.asarray(q, np.float64)
    if not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-12:
        return np.eye(3)
    return cv.quat_to_matrix(q)


def transform(vertices, translation, rotation, scale) -> np.ndarray:
    """world = t + R(q) (s * v), as `transform_vertices`."""
    v = np.asarray(vertices, np.float64) * np.asarray(scale, np.float64)
    return (v @ rotation_matrix(rotation).T + np.asarray(translation, np.float64)).astype(np.float32)


def vertex_normals(world: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit normals (zero for vertices on no face), as `vertex_normals`."""
    w = np.asarray(world, np.float64)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    n = np.cross(w[f[:, 1]] - w[f[:, 0]], w[f[:, 2]] - w[f[:, 0]])
    acc = np.zeros_like(w)
    for k in range(3):
        np.add.at(acc, f[:, k], n)
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    return np.where(length > 1e-20, acc / np.maximum(length, 1e-30), 0.0).astype(np.float32)


TRANSFORM_LEAVES = ("vertices", "translation", "rotation", "scale")  # what a mesh's world positions come from


def mesh_paths(name: str) -> tuple[ParamPath, ...]:
    """The paths of mesh `name`'s object-space vertices, translation, rotation and scale."""
    return tuple(param_path(Group.MESHES, name, leaf) for leaf in TRANSFORM_LEAVES)


def mesh_values(values: dict, name: str) -> tuple:
    """(vertices, translation, rotation, scale) of mesh `name` in `values` (path -> array)."""
    return tuple(values[p] for p in mesh_paths(name))


def world_vertices(state, name: str, values: dict | None = None) -> np.ndarray:
    """World-space vertices of mesh `name` from `values` (default: the state's current values)."""
    return transform(*mesh_values(state.values if values is None else values, name))


def mesh_matrix(translation, rotation, scale) -> np.ndarray:
    """(4, 4) object-to-world T R S."""
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(rotation) * np.asarray(scale, np.float64)[None, :]
    m[:3, 3] = translation
    return m
