"""Automatic UV atlases (xatlas) for meshes that carry no texture coordinates.

A texture on a mesh without UVs would sample one texel everywhere (every uv is (0, 0)). `add_atlas` gives
such a mesh a chart atlas instead: xatlas cuts it into charts, flattens and packs them into [0, 1]^2; the
vertices on chart seams are split (as drstudio already splits them at creases), so positions, colors and
faces are re-indexed and the mesh keeps its shape exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

FACES_PER_CHART = 256  # the area of a chart is bounded to about this many triangles' on larger meshes


def has_uvs(uvs: np.ndarray) -> bool:
    """False when every vertex has the same uv (a mesh loaded without texture coordinates)."""
    uvs = np.asarray(uvs)
    return len(uvs) > 0 and bool(np.ptp(uvs, axis=0).max() > 0)


def atlas(vertices: np.ndarray, faces: np.ndarray, resolution: int = 1024, padding: int = 2, *,
          with_charts: bool = False):
    """(vmapping (V',) int, faces (F, 3) int32, uvs (V', 2) float32): the atlas of a triangle mesh.
    Vertex i of the result is input vertex vmapping[i]; uvs are in [0, 1] with v = 0 the top texel row
    (drstudio's convention); `resolution` and `padding` (texels between charts) set the packing. The same
    input gives the same atlas (xatlas is deterministic; recordings rely on it). `with_charts`: the number
    of charts is appended to the tuple. ValueError when the charts do not fit one atlas."""
    import xatlas

    vertices = np.ascontiguousarray(vertices, np.float32)
    faces = np.ascontiguousarray(faces, np.uint32)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or not len(faces):
        raise ValueError(f"vertices, faces: expected (V, 3) and (F >= 1, 3), got {vertices.shape}, {faces.shape}")
    a = xatlas.Atlas()
    a.add_mesh(vertices, faces)
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding = int(resolution), int(padding)
    charts = xatlas.ChartOptions()
    if len(faces) > 2 * FACES_PER_CHART:
        # xatlas grows charts by cost alone: on a smooth 20k-triangle sphere 6 charts took 22 s (2 loaded
        # cores); charts of about FACES_PER_CHART triangles by area took 3.6 s and pack as densely
        e1, e2 = (vertices[faces[:, k]] - vertices[faces[:, 0]] for k in (1, 2))
        area = 0.5 * float(np.linalg.norm(np.cross(e1, e2), axis=1).sum())
        charts.max_chart_area = area * FACES_PER_CHART / len(faces)
    a.generate(chart_options=charts, pack_options=pack)
    if a.atlas_count != 1:
        raise ValueError(f"xatlas packed the {a.chart_count} charts into {a.atlas_count} atlases, expected one")
    vmapping, indices, uvs = a[0]
    uvs = np.asarray(uvs, np.float32).copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]  # xatlas: v up from the bottom; drstudio: v = 0 is the top row
    out = np.asarray(vmapping, np.int64), np.asarray(indices, np.int32), uvs
    return (*out, int(a.chart_count)) if with_charts else out


_CACHE: dict[str, tuple] = {}  # content hash -> atlas: a scene loaded again (replay, resume) skips xatlas


def add_atlas(mesh, resolution: int = 1024, *, with_charts: bool = False):
    """A copy of `mesh` (renderer.scene.Mesh) with an atlas: vertices and colors re-indexed, new faces and uvs
    (`atlas_source`: the input vertex of each vertex); the transform, material and name unchanged.
    `with_charts`: (mesh, charts, computed now) — the last is False when this process already computed the
    atlas of the same geometry (a cache by content)."""
    vertices = np.ascontiguousarray(mesh.vertices, np.float32)
    faces = np.ascontiguousarray(mesh.faces, np.int32)
    key = hashlib.sha256(vertices.tobytes() + faces.tobytes() + f"{vertices.shape}{faces.shape}{int(resolution)}"
                         .encode()).hexdigest()
    fresh = key not in _CACHE
    if fresh:
        _CACHE[key] = atlas(vertices, faces, resolution, with_charts=True)
    vmapping, new_faces, uvs, charts = _CACHE[key]
    out = replace(mesh, vertices=np.ascontiguousarray(mesh.vertices[vmapping], np.float32), faces=new_faces.copy(),
                  uvs=uvs.copy(), colors=np.ascontiguousarray(mesh.colors[vmapping], np.float32),
                  atlas_source=vmapping.copy())
    return (out, charts, fresh) if with_charts else out
