"""renderer.uv_atlas: a mesh without UVs gets an atlas that keeps its shape, covers the texture square
without overlaps, and lets a texture vary across the surface."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from drstudio.renderer.uv_atlas import add_atlas, atlas, has_uvs
from support.scenes import icosphere, mesh


def test_has_uvs():
    assert not has_uvs(np.zeros((5, 2), np.float32))
    assert has_uvs(np.array([[0, 0], [0.5, 0.1]], np.float32))


def test_atlas_keeps_the_shape_and_packs_charts():
    v, f = icosphere(1.0, 2)
    vmap, faces, uvs = atlas(v, f, resolution=256)
    # the same triangles in space: re-indexed through vmapping
    np.testing.assert_array_equal(vmap[faces], f)
    assert uvs.min() >= 0 and uvs.max() <= 1 and len(uvs) >= len(v)  # seams split vertices
    # charts do not overlap: the uv triangles' areas add up to the area of their union (rasterized)
    tri = uvs[faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    n = 512
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / n
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    covered = np.zeros(len(pts), np.int32)
    for a, b, c in tri:
        d = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if abs(d) < 1e-12:
            continue
        l1 = ((b[1] - c[1]) * (pts[:, 0] - c[0]) + (c[0] - b[0]) * (pts[:, 1] - c[1])) / d
        l2 = ((c[1] - a[1]) * (pts[:, 0] - c[0]) + (a[0] - c[0]) * (pts[:, 1] - c[1])) / d
        covered += (l1 >= 0) & (l2 >= 0) & (1 - l1 - l2 >= 0)
    assert covered.max() <= 2  # shared edges may count twice, interiors never
    assert abs((covered > 0).mean() - area) < 0.02 and area > 0.3  # a well-used square


def test_add_atlas_on_a_scene_mesh():
    v, f = icosphere(0.5, 1)
    m = mesh("ball", v, f, "paint")
    assert not has_uvs(m.uvs)
    m2 = add_atlas(m, resolution=128)
    assert has_uvs(m2.uvs) and m2.material == "paint" and m2.faces.dtype == np.int32
    a = trimesh.Trimesh(m.vertices, m.faces).area
    b = trimesh.Trimesh(m2.vertices, m2.faces).area
    assert b == pytest.approx(a, rel=1e-6)
