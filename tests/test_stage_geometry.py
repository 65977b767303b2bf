"""Geometry stage: vertex transforms and area-weighted normals against NumPy, and their tape gradients."""

import numpy as np
import pytest
import trimesh
import warp as wp
from drstudio.renderer.stages.geometry import transform_vertices, vertex_normals
from support.arrays import farr, quat_matrix, varr
from support.gradcheck import check_gradient, weighted_loss


def numpy_normals(v, f):
    n = np.zeros_like(v, dtype=np.float64)
    for tri in f:
        c = np.cross(v[tri[1]] - v[tri[0]], v[tri[2]] - v[tri[0]])
        n[tri] += c
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(length > 0, n / np.maximum(length, 1e-30), 0.0)


def bumpy_icosahedron():
    ico = trimesh.creation.icosahedron()
    rng = np.random.default_rng(5)
    v = ico.vertices * rng.uniform(0.8, 1.2, (len(ico.vertices), 1))
    return v.astype(np.float32), ico.faces.astype(np.int32)


def test_quarter_turn_about_z(device):
    s = np.sqrt(0.5)
    out = varr(np.zeros((1, 3)))
    transform_vertices(varr([[1.0, 0.0, 0.0]]), farr([1, 2, 3]), farr([0, 0, s, s]), farr([2, 1, 1]), out)
    np.testing.assert_allclose(out.numpy()[0], [1.0, 4.0, 3.0], atol=1e-6)  # (2, 0, 0) turned to (0, 2, 0)


def test_two_meshes_pack_into_one_array(device):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
    ta, qa, sa = [1, 2, 3], [0.1, 0.2, -0.3, 2.0], [1, 2, 3]  # unnormalized quaternion on purpose
    tb, qb, sb = [-1, 0, 1], [0.5, -0.5, 0.5, 0.5], [0.5, 0.5, 2]
    out = varr(np.full((9, 3), 7.0))
    transform_vertices(varr(a), farr(ta), farr(qa), farr(sa), out, 1)
    transform_vertices(varr(b), farr(tb), farr(qb), farr(sb), out, 5)
    got = out.numpy()
    np.testing.assert_allclose(got[1:5], (a * sa) @ quat_matrix(qa).T + ta, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[5:8], (b * sb) @ quat_matrix(qb).T + tb, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[[0, 8]], 7.0)  # untouched


# Tolerances: 5 vertices, world coordinates of order 1..3, |L| ~ 5; roundoff 6e-8 * 5 / 1e-3 = 3e-4, rotation
# truncation eps^2 / 6 * |L'''| ~ 1e-6 * few; atol 2e-3, rtol 1e-2.
@pytest.mark.parametrize("which", ["local", "translation", "rotation", "scale"])
def test_transform_gradient(which, device):
    rng = np.random.default_rng(1)
    args = {"local": varr(rng.normal(size=(5, 3)), which == "local"),
            "translation": farr([0.5, -1, 2], which == "translation"),
            "rotation": farr([0.3, -0.2, 0.4, 0.8], which == "rotation"),
            "scale": farr([1.5, 0.7, 1.2], which == "scale")}

    def forward():
        out = wp.zeros(7, dtype=wp.vec3, requires_grad=True)
        return weighted_loss(transform_vertices(**args, out=out, offset=2), seed=6)

    check_gradient(forward, args[which], eps=1e-3, rtol=1e-2, atol=2e-3,
                   indices=range(args[which].numpy().size))


def test_flat_quad_normals_face_the_ccw_side(device):
    v = varr([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [5, 5, 5]])  # the last vertex is on no face
    n = vertex_normals(v, wp.array([0, 1, 2, 0, 2, 3], dtype=wp.int32)).numpy()
    np.testing.assert_allclose(n, [[0, 0, 1]] * 4 + [[0, 0, 0]], atol=1e-7)


def test_area_weighting(device):
    # vertex 0 is shared by a big face (0, 1, 2) in the z = 0 plane (area 2, normal x cross y) and a small one
    # (0, 4, 3) in the x = 0 plane (area 0.5, normal y cross z): its normal is (0.5, 0, 2) normalized
    v = varr([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1], [0, 1, 0]])
    n = vertex_normals(v, wp.array([0, 1, 2, 0, 4, 3], dtype=wp.int32)).numpy()
    np.testing.assert_allclose(n[0], np.array([0.5, 0, 2]) / np.hypot(0.5, 2), rtol=1e-6)


def test_normals_match_numpy_on_a_closed_mesh(device):
    v, f = bumpy_icosahedron()
    n = vertex_normals(varr(v), wp.array(f.reshape(-1), dtype=wp.int32)).numpy()
    np.testing.assert_allclose(n, numpy_normals(v.astype(np.float64), f), atol=1e-5)
    assert np.all(np.sum(n * v, axis=1) > 0)  # outward on a star-shaped mesh


# Tolerances: 12 unit normals, |L| ~ 3; gradients ~ 1 / edge length ~ 1; roundoff 6e-8 * 3 / 1e-3 = 2e-4,
# truncation eps^2 / 6 * |L'''| with |L'''| ~ 1 / edge^3 ~ 1: 2e-7. atol 2e-3, rtol 1e-2.
def test_normals_gradient(device):
    v, f = bumpy_icosahedron()
    world, faces = varr(v, True), wp.array(f.reshape(-1), dtype=wp.int32)
    check_gradient(lambda: weighted_loss(vertex_normals(world, faces), seed=7), world, eps=1e-3, rtol=1e-2,
                   atol=2e-3, probes=12)


def test_validation(device):
    with pytest.raises(ValueError, match="offset"):
        transform_vertices(varr(np.zeros((3, 3))), farr([0, 0, 0]), farr([0, 0, 0, 1]), farr([1, 1, 1]),
                           varr(np.zeros((4, 3))), 2)
    with pytest.raises(ValueError, match="rotation"):
        transform_vertices(varr(np.zeros((3, 3))), farr([0, 0, 0]), farr([0, 0, 1]), farr([1, 1, 1]),
                           varr(np.zeros((3, 3))))
    with pytest.raises(ValueError, match="faces"):
        vertex_normals(varr(np.zeros((3, 3))), wp.array([0, 1], dtype=wp.int32))
    with pytest.raises(TypeError, match="faces"):
        vertex_normals(varr(np.zeros((3, 3))), wp.array([0, 1, 2], dtype=wp.int64))
