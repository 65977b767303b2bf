"""Visibility stage: BVH tracing against NumPy ray-plane / ray-sphere references, the differentiable
Moller-Trumbore recomputation and its gradients, and barycentric ray differentials."""

import numpy as np
import pytest
import trimesh
import warp as wp
from drstudio.renderer.stages.camera import generate_rays
from drstudio.renderer.stages.visibility import bary_derivatives, build_bvh, intersect, refit_bvh, trace_primary
from support.arrays import farr, quat_matrix, varr
from support.gradcheck import check_gradient, weighted_loss


def iarr(a):
    return wp.array(np.asarray(a, np.int32).reshape(-1), dtype=wp.int32)


def numpy_rays(intr, pose, w, h, dx=0.0, dy=0.0):
    """Rays through pixel centers shifted by (dx, dy), float64."""
    fx, fy, cx, cy = intr
    y, x = np.mgrid[0:h, 0:w].reshape(2, -1) + 0.5
    d = np.stack([(x + dx - cx) / fx, -(y + dy - cy) / fy, -np.ones_like(x)], 1) @ quat_matrix(pose[3:]).T
    return np.broadcast_to(np.asarray(pose[:3], np.float64), d.shape), d


def plane_bary(o, d, p0, p1, p2):
    """(b1, b2, t) of o + t d = p0 + b1 (p1 - p0) + b2 (p2 - p0) by a linear solve (not Moller-Trumbore)."""
    m = np.stack([p1 - p0, p2 - p0, -d], -1)
    return np.linalg.solve(m, (o - p0)[..., None])[..., 0]


QUAD_V = np.array([[-1, -1, -3], [1, -1, -3], [1, 1, -3], [-1, 1, -3]], np.float32)
QUAD_F = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
IDENTITY = np.array([0, 0, 0, 0, 0, 0, 1], np.float32)


def test_quad_coverage_triangles_and_depth(device):
    w, h, intr = 16, 12, np.array([12.0, 12.0, 8.0, 6.0], np.float32)
    world, faces = varr(QUAD_V), iarr(QUAD_F)
    o, d = generate_rays(farr(intr), farr(IDENTITY), w, h)
    tri = trace_primary(build_bvh(world, faces), o, d).numpy()
    _, dn = numpy_rays(intr, IDENTITY, w, h)
    x, y = 3 * dn[:, 0], 3 * dn[:, 1]  # the hit on the plane z = -3 (t = 3)
    inside = (np.abs(x) < 1) & (np.abs(y) < 1)
    want = np.where(inside, np.where(x > y, 0, 1), -1)  # the diagonal from (-1, -1) to (1, 1) splits the quad
    clear = (np.abs(np.abs(x) - 1) > 1e-3) & (np.abs(np.abs(y) - 1) > 1e-3) & (np.abs(x - y) > 1e-3)
    assert inside.sum() > 30 and (~inside).sum() > 30 and clear.sum() > 150
    np.testing.assert_array_equal(tri[clear], want[clear])

    bary, depth = intersect(world, faces, wp.array(tri, dtype=wp.int32), o, d)
    bary, depth = bary.numpy(), depth.numpy()
    np.testing.assert_allclose(depth[tri >= 0], 3.0, rtol=1e-6)
    assert np.all(depth[tri < 0] == 0) and np.all(bary[tri < 0] == 0)
    # b1, b2 weigh the 2nd and 3rd vertex: on face 0 = (v0, v1, v2), x = -1 + 2 b1 + 2 b2 and y = -1 + 2 b2
    f0 = tri == 0
    np.testing.assert_allclose(bary[f0, 1], (y[f0] + 1) / 2, atol=1e-6)
    np.testing.assert_allclose(bary[f0, 0], (x[f0] + 1) / 2 - (y[f0] + 1) / 2, atol=1e-6)


def test_sphere_coverage_and_depth(device):
    w, h, intr = 32, 24, np.array([40.0, 40.0, 16.0, 12.0], np.float32)
    pose = np.array([0.2, 0.1, 0.5, 0.0, 0.05, 0.0, 1.0], np.float32)
    center = np.array([0.0, 0.0, -4.0])
    ico = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    world, faces = varr(ico.vertices + center), iarr(ico.faces)
    o, d = generate_rays(farr(intr), farr(pose), w, h)
    tri = trace_primary(build_bvh(world, faces), o, d)
    _, depth = intersect(world, faces, tri, o, d)
    tri, depth = tri.numpy(), depth.numpy()

    on, dn = numpy_rays(intr, pose, w, h)
    # The polyhedron lies between its insphere (radius r_in: the nearest face plane) and the unit sphere, so
    # every ray meeting the insphere hits it, no ray missing the sphere does, and the hit depth is bracketed
    # by the near roots of |o + t d - c| = r_in and = 1.
    v = ico.vertices[ico.faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    r_in = np.min(np.abs(np.sum(n * v[:, 0], 1)) / np.linalg.norm(n, axis=1))
    assert 0.99 < r_in < 1.0
    oc = on - center
    dd = np.sum(dn * dn, 1)
    tc = -np.sum(oc * dn, 1) / dd
    dist = np.linalg.norm(oc + tc[:, None] * dn, axis=1)  # closest approach of the ray line to the center

    def near_root(r):
        return tc - np.sqrt(np.maximum(r * r - dist**2, 0) / dd)

    inner, outer = dist < r_in - 1e-4, dist > 1.0 + 1e-4
    assert inner.sum() > 100 and outer.sum() > 100
    assert np.all(tri[inner] >= 0) and np.all(tri[outer] == -1)
    np.testing.assert_array_less(near_root(1.0)[inner] - 1e-5, depth[inner])
    np.testing.assert_array_less(depth[inner], near_root(r_in)[inner] + 1e-5)


def test_intersect_matches_linear_solve(device):
    rng = np.random.default_rng(2)
    v = rng.normal(size=(9, 3)).astype(np.float32)
    f = np.arange(9).reshape(3, 3)
    tri = np.array([0, 2, -1, 1, 2, 0, -1])
    o = rng.normal(size=(7, 3)).astype(np.float32)
    d = rng.normal(size=(7, 3)).astype(np.float32)
    bary, depth = intersect(varr(v), iarr(f), wp.array(tri, dtype=wp.int32), varr(o), varr(d))
    for i, fi in enumerate(tri):
        want = plane_bary(o[i], d[i], *v[f[fi]].astype(np.float64)) if fi >= 0 else np.zeros(3)
        np.testing.assert_allclose(np.r_[bary.numpy()[i], depth.numpy()[i]], want, rtol=1e-4, atol=1e-4)


def test_parallel_ray_gives_zeros(device):
    bary, depth = intersect(varr(QUAD_V), iarr(QUAD_F), wp.array([0], dtype=wp.int32), varr([[0, 0, 0]]),
                            varr([[1, 0, 0]]))
    assert np.all(bary.numpy() == 0) and depth.numpy()[0] == 0


# Rays aimed at points well inside the faces of a tilted quad (b in [0.15, 0.6]), so an FD step of 1e-3 never
# changes the traced triangle. Outputs are O(1) (bary) and O(3) (depth) over 6 rays, |L| ~ 5, gradients
# ~ 1 / edge ~ 1; roundoff 6e-8 * 5 / 1e-3 = 3e-4, truncation ~ 1e-6. atol 2e-3, rtol 1e-2.
TILTED = np.array([[-1, -1, -2.5], [1, -1, -3.5], [1.2, 1, -4], [-1, 1.1, -3]], np.float32)
TARGETS = [(0, 0.2, 0.3), (0, 0.6, 0.2), (0, 0.15, 0.6), (1, 0.3, 0.3), (1, 0.2, 0.5), (1, 0.55, 0.15)]
ORIGIN = np.array([0.05, -0.02, 0.1])


def aimed_rays():
    """Directions (camera z = -1) from ORIGIN to the points with barycentrics TARGETS on the tilted quad."""
    p = np.array([(1 - b1 - b2) * TILTED[QUAD_F[f, 0]] + b1 * TILTED[QUAD_F[f, 1]] + b2 * TILTED[QUAD_F[f, 2]]
                  for f, b1, b2 in TARGETS]) - ORIGIN
    return p / -p[:, 2:]


@pytest.mark.parametrize("which", ["world", "origins", "directions"])
def test_intersect_gradient(which, device):
    world = varr(TILTED, which == "world")
    faces = iarr(QUAD_F)
    origins = varr(np.tile(ORIGIN, (len(TARGETS), 1)), which == "origins")
    directions = varr(aimed_rays(), which == "directions")
    bvh = build_bvh(world, faces)
    tri = trace_primary(bvh, origins, directions)
    bary, _ = intersect(world, faces, tri, origins, directions)
    np.testing.assert_array_equal(tri.numpy(), [t[0] for t in TARGETS])
    np.testing.assert_allclose(bary.numpy(), [t[1:] for t in TARGETS], atol=1e-5)

    def forward():
        refit_bvh(bvh)
        tri = trace_primary(bvh, origins, directions)  # off the tape: the ids stay fixed under the FD step
        bary, depth = intersect(world, faces, tri, origins, directions)
        loss = weighted_loss(bary, seed=8)
        wp.launch(_add_weighted_depth, dim=depth.shape[0], inputs=[depth], outputs=[loss])
        return loss

    param = {"world": world, "origins": origins, "directions": directions}[which]
    check_gradient(forward, param, eps=1e-3, rtol=1e-2, atol=2e-3, probes=12)


@wp.kernel
def _add_weighted_depth(depth: wp.array(dtype=float), loss: wp.array(dtype=float)):
    i = wp.tid()
    wp.atomic_add(loss, 0, (0.3 - 0.1 * float(i)) * depth[i])


def test_refit_follows_moved_vertices(device):
    world, faces = varr(QUAD_V), iarr(QUAD_F)
    o, d = varr([[2.0, 0.2, 0.0]]), varr([[0.0, 0.0, -1.0]])
    bvh = build_bvh(world, faces)
    assert trace_primary(bvh, o, d).numpy()[0] == -1
    world.assign(QUAD_V + np.float32([2, 0, 0]))  # the quad now spans x in [1, 3]
    assert trace_primary(refit_bvh(bvh), o, d).numpy()[0] == 1
    assert trace_primary(refit_bvh(bvh, varr(QUAD_V + np.float32([0, 5, 0]))), o, d).numpy()[0] == -1


def test_bary_derivatives_match_neighbour_rays(device):
    w, h = 12, 10
    intr = np.array([14.0, 13.0, 6.0, 5.2], np.float32)
    pose = np.array([0.1, -0.1, 0.3, 0.05, 0.08, -0.03, 1.0], np.float32)
    world, faces = varr(TILTED), iarr(QUAD_F)
    o, d = generate_rays(farr(intr), farr(pose), w, h)
    tri = trace_primary(build_bvh(world, faces), o, d)
    got = bary_derivatives(world, faces, tri, farr(intr), farr(pose), w, h).numpy()
    tri = tri.numpy()
    assert (tri >= 0).sum() > 20 and (tri < 0).sum() > 5
    assert np.all(got[tri < 0] == 0)
    tv = TILTED.astype(np.float64)[QUAD_F]
    for i in np.flatnonzero(tri >= 0):
        b = [plane_bary(rays[0][i], rays[1][i], *tv[tri[i]])[:2]
             for rays in (numpy_rays(intr, pose, w, h), numpy_rays(intr, pose, w, h, 1, 0),
                          numpy_rays(intr, pose, w, h, 0, 1))]
        want = [b[1][0] - b[0][0], b[2][0] - b[0][0], b[1][1] - b[0][1], b[2][1] - b[0][1]]
        np.testing.assert_allclose(got[i], want, atol=2e-5)


def test_bary_derivatives_of_a_fronto_parallel_triangle_are_constant(device):
    # on a plane z = -2 facing an identity camera the barycentrics are affine in pixel coordinates: the
    # derivatives are exact and the same everywhere; with f = 10 the triangle spans (0,0), (20,0), (0,20)
    # pixels from the center (5, 5), so b1 = (x - 5) / 20 and b2 = -(y - 5) / 20
    tri_v = varr([[0, 0, -2], [4, 0, -2], [0, 4, -2]])
    intr = farr([10.0, 10.0, 5.0, 5.0])
    pose = farr(IDENTITY)
    tri = iarr(np.r_[np.full(50, 0), np.full(50, -1)])
    got = bary_derivatives(tri_v, iarr([0, 1, 2]), tri, intr, pose, 10, 10).numpy()
    np.testing.assert_allclose(got[:50], np.tile([0.05, 0.0, 0.0, -0.05], (50, 1)), atol=1e-6)


def test_validation(device):
    world, faces = varr(QUAD_V), iarr(QUAD_F)
    with pytest.raises(ValueError, match="faces"):
        build_bvh(world, iarr([0, 1]))
    with pytest.raises(ValueError, match="directions"):
        trace_primary(build_bvh(world, faces), varr(np.zeros((3, 3))), varr(np.zeros((2, 3))))
    with pytest.raises(TypeError, match="bvh"):
        trace_primary(None, varr(np.zeros((3, 3))), varr(np.zeros((3, 3))))
    with pytest.raises(ValueError, match="tri_id"):
        bary_derivatives(world, faces, iarr([0, 1]), farr([1, 1, 1, 1]), farr(IDENTITY), 2, 2)
