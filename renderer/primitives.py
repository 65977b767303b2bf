"""Primitive meshes in object space (+Y up), triangles wound counter-clockwise seen from outside.

Each builder returns (vertices (V, 3) float32, faces (F, 3) int32, uvs (V, 2) float32), uv v = 0 at
the top row of a texture image (the image convention of `renderer.stages.texture`).

- `uv_sphere(radius, segments)`: `segments` quads around the equator, segments // 2 bands from pole
  to pole. The seam (u = 0 and u = 1, at -Z) and the poles are duplicated per column so texture
  coordinates are continuous; seen from +Z, u runs left to right and v top to bottom. Duplicated
  seam/pole vertices get one-sided normals from the geometry (off by half a segment at most).
  trimesh.creation.uv_sphere welds the seam, has no UVs and is Z-up, hence this builder.
- `icosphere(radius, subdivisions)`: trimesh's welded icosphere (no seam, even triangles), for shape
  optimization; no UVs (zeros).
- `cube(size)` and `plane(size)`: every face has its own four vertices (a cube has 24) so normals
  from the geometry are flat, and its own [0, 1]^2 UVs. The plane lies in y = 0 facing +Y.
- `torus(major_radius, minor_radius, segments)`: around the Y axis, `segments` around the ring and
  max(3, segments // 2) around the tube, seams duplicated like the sphere.
"""

from __future__ import annotations

import numpy as np
import trimesh

Built = tuple[np.ndarray, np.ndarray, np.ndarray]


def _pack(vertices, faces, uvs) -> Built:
    return (np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.int32),
            np.ascontiguousarray(uvs, np.float32))


def _grid(position, rows: int, cols: int) -> Built:
    """A (rows + 1) x (cols + 1) vertex grid over (u, v) in [0, 1]^2 with `position(u, v)`; drops the
    zero-area triangles of collapsed rows (sphere poles) and the vertices no triangle uses."""
    u, v = np.meshgrid(np.linspace(0, 1, cols + 1), np.linspace(0, 1, rows + 1))
    vertices = position(u.ravel(), v.ravel())
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    a = (i * (cols + 1) + j).ravel()
    b, c, d = a + cols + 1, a + cols + 2, a + 1  # below, below-right, right (v grows downwards)
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    area = np.linalg.norm(np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]],
                                   vertices[faces[:, 2]] - vertices[faces[:, 0]]), axis=1)
    faces = faces[area > 1e-12 * area.max()]  # relative: a sphere of radius 1e-5 keeps its triangles
    used = np.unique(faces)  # a collapsed row has one vertex more than triangles touching it
    remap = np.zeros(len(vertices), np.int64)
    remap[used] = np.arange(len(used))
    return _pack(vertices[used], remap[faces], np.stack([u.ravel(), v.ravel()], 1)[used])


def uv_sphere(radius: float, segments: int) -> Built:
    def position(u, v):
        theta, phi = np.pi * v, 2 * np.pi * u
        ring = np.sin(theta)
        return radius * np.stack([-ring * np.sin(phi), np.cos(theta), -ring * np.cos(phi)], 1)

    return _grid(position, max(2, segments // 2), segments)


def icosphere(radius: float, subdivisions: int) -> Built:
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return _pack(m.vertices, m.faces, np.zeros((len(m.vertices), 2)))


def torus(major_radius: float, minor_radius: float, segments: int) -> Built:
    def position(u, v):
        phi, psi = 2 * np.pi * u, 2 * np.pi * v
        ring = major_radius + minor_radius * np.cos(psi)
        return np.stack([-ring * np.sin(phi), -minor_radius * np.sin(psi), -ring * np.cos(phi)], 1)

    return _grid(position, max(3, segments // 2), segments)


# (normal, right, up) per face with right x up = normal, so corners (-r-u, +r-u, +r+u, -r+u) are CCW.
_CUBE_FACES = np.array([
    [[1, 0, 0], [0, 0, -1], [0, 1, 0]], [[-1, 0, 0], [0, 0, 1], [0, 1, 0]],
    [[0, 1, 0], [1, 0, 0], [0, 0, -1]], [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
    [[0, 0, 1], [1, 0, 0], [0, 1, 0]], [[0, 0, -1], [-1, 0, 0], [0, 1, 0]],
], dtype=np.float64)
_CORNERS = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
_CORNER_UVS = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], dtype=np.float64)


def _quads(frames: np.ndarray, size: float, offset: float) -> Built:
    n, r, up = frames[:, None, 0], frames[:, None, 1], frames[:, None, 2]
    vertices = offset * n + 0.5 * size * (_CORNERS[None, :, :1] * r + _CORNERS[None, :, 1:] * up)
    base = 4 * np.arange(len(frames))[:, None]
    faces = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]])
    return _pack(vertices.reshape(-1, 3), faces, np.tile(_CORNER_UVS, (len(frames), 1)))


def cube(size: float) -> Built:
    return _quads(_CUBE_FACES, size, size / 2)


def plane(size: float) -> Built:
    return _quads(_CUBE_FACES[2:3], size, 0.0)
