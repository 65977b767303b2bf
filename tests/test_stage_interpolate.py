"""Interpolate stage: barycentric interpolation and its screen derivatives against NumPy, its tape gradients,
and perspective-correctness of the visibility + interpolate chain on a quad tilted in depth."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.stages.camera import generate_rays
from drstudio.renderer.stages.interpolate import interpolate, interpolate_derivatives
from drstudio.renderer.stages.visibility import bary_derivatives, build_bvh, intersect, trace_primary
from support.gradcheck import check_gradient, weighted_loss

RNG = np.random.default_rng(11)
ATTR = RNG.normal(size=(6, 3)).astype(np.float32)
FACES = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 0]], np.int32)
TRI = np.array([0, -1, 2, 1, 1, -1, 0], np.int32)
BARY = RNG.uniform(0, 0.5, (7, 2)).astype(np.float32)


def farr(a, grad=False):
    return wp.array(np.asarray(a, np.float32), dtype=float, requires_grad=grad)


def iarr(a):
    return wp.array(np.asarray(a, np.int32).reshape(-1), dtype=wp.int32)


def numpy_interpolate(attr, faces, tri, bary):
    a = attr[faces[np.maximum(tri, 0)]]  # (N, 3, C)
    w = np.c_[1 - bary.sum(1), bary]
    return np.where(tri[:, None] >= 0, np.einsum("nk,nkc->nc", w, a), 0.0)


def test_interpolate_matches_numpy(device):
    out = interpolate(farr(ATTR), iarr(FACES), iarr(TRI), farr(BARY)).numpy()
    np.testing.assert_allclose(out, numpy_interpolate(ATTR, FACES, TRI, BARY), rtol=1e-6, atol=1e-6)
    assert np.all(out[TRI < 0] == 0)


def test_interpolate_at_vertices_returns_vertex_values(device):
    bary = farr([[0, 0], [1, 0], [0, 1]])
    out = interpolate(farr(ATTR), iarr(FACES), iarr([1, 1, 1]), bary).numpy()
    np.testing.assert_array_equal(out, ATTR[[2, 3, 4]])


# Tolerances: the output is linear in attr and bilinear in (attr, bary), so truncation is zero (attr) or
# eps^2 * 0 (the loss is linear in bary too); 7 x 3 outputs of order 1, |L| ~ 3: roundoff 6e-8 * 3 / 1e-3
# = 2e-4. atol 1e-3, rtol 1e-2.
@pytest.mark.parametrize("which", ["attr", "bary"])
def test_interpolate_gradient(which, device):
    attr, bary = farr(ATTR, which == "attr"), farr(BARY, which == "bary")
    param = attr if which == "attr" else bary
    check_gradient(lambda: weighted_loss(interpolate(attr, iarr(FACES), iarr(TRI), bary), seed=9), param,
                   eps=1e-3, rtol=1e-2, atol=1e-3, indices=range(param.numpy().size))


def test_interpolate_derivatives_matches_numpy(device):
    db = RNG.normal(size=(7, 4)).astype(np.float32)
    out = interpolate_derivatives(farr(ATTR), iarr(FACES), iarr(TRI), farr(db)).numpy()
    assert out.shape == (7, 6)
    # A(b + db) - A(b) is linear in db: interpolate at bary = (db1/dx, db2/dx) minus at bary = 0
    zero = np.zeros((7, 2))
    want_x = numpy_interpolate(ATTR, FACES, TRI, db[:, [0, 2]]) - numpy_interpolate(ATTR, FACES, TRI, zero)
    want_y = numpy_interpolate(ATTR, FACES, TRI, db[:, [1, 3]]) - numpy_interpolate(ATTR, FACES, TRI, zero)
    np.testing.assert_allclose(out[:, 0::2], want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, 1::2], want_y, rtol=1e-5, atol=1e-5)


# A square tilted in depth (z from -2 at the bottom to -6 at the top) with uv = its corners.
QUAD = np.array([[-1, -1, -2], [1, -1, -2], [1, 1, -6], [-1, 1, -6]], np.float32)
QUAD_UV = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
QUAD_F = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
W, H = 24, 20
INTR = np.array([14.0, 14.0, 12.0, 8.0], np.float32)
POSE = np.array([0, 0.5, 0, 0, 0, 0, 1], np.float32)


def numpy_quad_uv(dx=0.0, dy=0.0):
    """uv of the hit of each pixel's ray (shifted by (dx, dy)) with the quad's plane: uv is affine on the
    parallelogram, uv = (s, t) with hit = P0 + s (P1 - P0) + t (P3 - P0)."""
    fx, fy, cx, cy = INTR
    y, x = np.mgrid[0:H, 0:W].reshape(2, -1) + 0.5
    d = np.stack([(x + dx - cx) / fx, -(y + dy - cy) / fy, -np.ones_like(x)], 1)
    p0, e1, e2 = QUAD[0], QUAD[1] - QUAD[0], QUAD[3] - QUAD[0]
    m = np.stack([e1, e2, -np.ones(3)], 1)
    out = np.empty((len(d), 2))
    for i, di in enumerate(d):
        m[:, 2] = -di
        out[i] = np.linalg.solve(m, POSE[:3] - p0)[:2]
    return out


def render_quad_uv():
    world, faces, uv = (wp.array(QUAD, dtype=wp.vec3), iarr(QUAD_F), farr(QUAD_UV))
    intr, pose = farr(INTR), farr(POSE)
    o, d = generate_rays(intr, pose, W, H)
    tri = trace_primary(build_bvh(world, faces), o, d)
    bary, _ = intersect(world, faces, tri, o, d)
    db = bary_derivatives(world, faces, tri, intr, pose, W, H)
    uv_px, uv_da = interpolate(uv, faces, tri, bary), interpolate_derivatives(uv, faces, tri, db)
    return tri.numpy(), uv_px.numpy(), uv_da.numpy()


def test_tilted_quad_uv_is_perspective_correct(device):
    tri, uv, _ = render_quad_uv()
    want = numpy_quad_uv()
    hit = tri >= 0
    assert hit.sum() > 100
    inside = np.all((want > 0.01) & (want < 0.99), 1)
    np.testing.assert_array_equal(hit[inside], True)
    np.testing.assert_allclose(uv[hit], want[hit], atol=2e-5)
    # the test discriminates: screen-affine interpolation of the projected corners is far off
    fx, fy, cx, cy = INTR
    rel = QUAD - POSE[:3]
    sx, sy = cx + fx * rel[:, 0] / -rel[:, 2], cy - fy * rel[:, 1] / -rel[:, 2]
    y, x = np.mgrid[0:H, 0:W].reshape(2, -1) + 0.5
    naive = np.full(len(x), np.nan)
    for f in QUAD_F:  # screen-space barycentrics, then linear v
        m = np.array([[sx[f[1]] - sx[f[0]], sx[f[2]] - sx[f[0]]], [sy[f[1]] - sy[f[0]], sy[f[2]] - sy[f[0]]]])
        b = np.linalg.solve(m, np.stack([x - sx[f[0]], y - sy[f[0]]]))
        ok = (b >= 0).all(0) & (b.sum(0) <= 1)
        v = (1 - b.sum(0)) * QUAD_UV[f[0], 1] + b[0] * QUAD_UV[f[1], 1] + b[1] * QUAD_UV[f[2], 1]
        naive[ok] = v[ok]
    assert np.nanmax(np.abs(naive[hit] - want[hit, 1])) > 0.05


def test_tilted_quad_uv_derivatives_are_neighbour_differences(device):
    # uv is affine in the hit on the plane, so the forward differences of uv between neighbour pixels' plane
    # hits equal interpolate_derivatives of bary_derivatives exactly (up to float32)
    tri, _, da = render_quad_uv()
    uv, ux, uy = numpy_quad_uv(), numpy_quad_uv(1, 0), numpy_quad_uv(0, 1)
    want = np.stack([ux[:, 0] - uv[:, 0], uy[:, 0] - uv[:, 0], ux[:, 1] - uv[:, 1], uy[:, 1] - uv[:, 1]], 1)
    hit = tri >= 0
    np.testing.assert_allclose(da[hit], want[hit], atol=2e-5)
    assert np.all(da[~hit] == 0)
    assert np.ptp(da[hit, 3]) > 0.01  # dv/dy changes with depth: not a constant screen-space gradient


def test_validation(device):
    with pytest.raises(ValueError, match="bary"):
        interpolate(farr(ATTR), iarr(FACES), iarr(TRI), farr(BARY[:5]))
    with pytest.raises(ValueError, match="attr"):
        interpolate(farr(ATTR[:, 0]), iarr(FACES), iarr(TRI), farr(BARY))
    with pytest.raises(ValueError, match="bary_db"):
        interpolate_derivatives(farr(ATTR), iarr(FACES), iarr(TRI), farr(BARY))
