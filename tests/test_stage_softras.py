"""Soft rasterization stage: forward vs a NumPy reference, limits in sigma and gamma, binning, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.stages import softras
from support import loss_kernels
from support.devices import assert_same_render
from support.gradcheck import check_gradient, weighted_loss

EPS_D = 1e-4  # coverage cutoff, as documented in softras


# ---------------------------------------------------------------- NumPy reference (float64, no tiles)

def quat_matrix(q):
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def ref_project(world, intr, pose):
    pc = (np.asarray(world, np.float64) - pose[:3]) @ quat_matrix(pose[3:])  # rows: R^T (p - pos)
    fx, fy, cx, cy = np.asarray(intr, np.float64)
    depth = -pc[:, 2]
    return np.stack([fx * pc[:, 0] / depth + cx, cy - fy * pc[:, 1] / depth, depth], 1)


def ref_fragment(p, tri):
    """(squared distance to the triangle, 0 inside; barycentrics of the closest triangle point)."""
    a, b, c = tri
    # barycentrics of p by solving p = a + u (b - a) + v (c - a)
    u, v = np.linalg.solve(np.stack([b - a, c - a], 1), p - a)
    bary = np.array([1 - u - v, u, v])
    if bary.min() >= 0:
        return 0.0, bary
    best = None
    for i, j in ((0, 1), (1, 2), (2, 0)):
        e = tri[j] - tri[i]
        t = float(np.clip(np.dot(p - tri[i], e) / np.dot(e, e), 0, 1))
        d2 = float(np.sum((p - tri[i] - t * e) ** 2))
        if best is None or d2 < best[0]:
            w = np.zeros(3)
            w[i], w[j] = 1 - t, t
            best = (d2, w)
    return best


def ref_coverage(d2, sigma):
    """1 inside (d2 = 0); (1 + eps_D) 2 sigmoid(-d2 / sigma) - eps_D outside, clamped at 0."""
    return max(0.0, (1 + EPS_D) * (1 - math.tanh(0.5 * d2 / sigma)) - EPS_D)  # 2 sigmoid(-x) = 1 - tanh(x/2)


def ref_soft_rasterize(world, faces, colors, intr, pose, width, height, sigma, gamma, bg, near=0.05,
                       far=100.0):
    scr = ref_project(world, intr, pose)
    tris = np.asarray(faces).reshape(-1, 3)
    color = np.zeros((height * width, 3))
    alpha = np.zeros(height * width)
    for py in range(height):
        for px in range(width):
            p = np.array([px + 0.5, py + 0.5])
            frags = []
            for f in tris:
                z = scr[f, 2]
                if z.min() < near or z.max() > far:
                    continue
                d2, w = ref_fragment(p, scr[f, :2])
                cov = ref_coverage(d2, sigma)
                if cov <= 0:
                    continue
                u = w / z
                b = u / u.sum()  # perspective-correct barycentrics
                frags.append((cov, (far - 1 / u.sum()) / (far - near), b @ colors[f]))
            i = py * width + px
            a = 1 - np.prod([1 - cov for cov, _, _ in frags])
            fg = np.zeros(3)
            if frags:
                zmax = max(zn for _, zn, _ in frags)
                e = np.array([cov * math.exp((zn - zmax) / gamma) for cov, zn, _ in frags])
                fg = e @ np.array([col for _, _, col in frags]) / e.sum()
            color[i] = a * fg + (1 - a) * np.asarray(bg, np.float64)
            alpha[i] = a
    return color, alpha


# ---------------------------------------------------------------- scenes

def arr(x, dtype=float, grad=False):
    x = np.asarray(x, np.float32)
    return wp.array(x, dtype=dtype, requires_grad=grad)


def three_triangles():
    """Three overlapping triangles at depths ~3..5 (one wound clockwise, one partly off-screen) plus one
    behind the camera, which must be culled."""
    world = np.array([[-1.0, -0.8, -3.0], [1.0, -0.9, -3.2], [0.1, 1.0, -2.9],   # front, CCW
                      [-0.3, -0.2, -4.0], [0.6, 1.6, -4.5], [2.8, 0.1, -4.2],    # middle, CW, off right
                      [-2.0, 0.6, -5.0], [0.8, -1.5, -5.0], [0.5, 1.2, -4.8],    # back, large
                      [-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]],     # behind the camera
                     np.float32)
    faces = np.arange(12, dtype=np.int32)
    colors = np.random.default_rng(1).uniform(0, 1, (12, 3)).astype(np.float32)
    intr = np.array([11.0, 10.0, 6.2, 4.9], np.float32)
    pose = np.array([0.1, -0.05, 0.2, 0.02, -0.03, 0.01, 0.9995], np.float32)
    return world, faces, colors, intr, pose


# ---------------------------------------------------------------- forward

def test_project_vertices_analytic(device):
    intr = arr([100.0, 80.0, 32.0, 24.0])
    # identity pose: (x, y, -z) lands at (cx + fx x / z, cy - fy y / z)
    out = softras.project_vertices(arr([[0, 0, -2], [1, 1, -2], [-3, 0.5, -4]], wp.vec3), intr,
                                   arr([0, 0, 0, 0, 0, 0, 1])).numpy()
    np.testing.assert_allclose(out, [[32, 24, 2], [82, -16, 2], [-43, 14, 4]], rtol=1e-6, atol=1e-5)
    # camera at (1, 2, 3) turned +90 deg about +Y looks down world -X; an unnormalized quaternion is the same
    s = math.sqrt(0.5)
    for scale in (1.0, 2.5):
        pose = arr([1, 2, 3, 0, s * scale, 0, s * scale])
        out = softras.project_vertices(arr([[-2, 2, 3], [-2, 3, 3], [-2, 2, 2]], wp.vec3), intr, pose).numpy()
        # camera right (+X) is world -Z, camera up is world +Y
        np.testing.assert_allclose(out, [[32, 24, 3], [32, 24 - 80 / 3, 3], [32 + 100 / 3, 24, 3]], atol=1e-4)


def test_reference_scene_covers_every_regime(device):
    world, faces, colors, intr, pose = three_triangles()
    _, alpha = ref_soft_rasterize(world, faces, colors, intr, pose.astype(np.float64), 12, 10, 0.8, 0.02,
                                  np.zeros(3))
    # empty pixels, covered pixels (alpha exactly 1), partial coverage, and the behind-camera triangle would
    # cover the image if it were not culled
    assert (alpha == 0).sum() >= 4 and (alpha == 1).sum() >= 20 and ((alpha > 0.05) & (alpha < 0.9)).sum() > 30


@pytest.mark.parametrize("tile_size, sigma, gamma", [(4, 0.8, 0.02), (5, 0.8, 0.02), (16, 0.8, 0.02),
                                                     (7, 0.05, 1e-3), (4, 5.0, 1e-4)])
def test_forward_matches_numpy_reference(tile_size, sigma, gamma, device):
    world, faces, colors, intr, pose = three_triangles()
    bg = np.array([0.2, 0.5, 0.9], np.float32)
    w, h = 12, 10
    color, alpha = softras.soft_rasterize(arr(world, wp.vec3), wp.array(faces, dtype=wp.int32), arr(colors),
                                          arr(intr), arr(pose), w, h, sigma, gamma, arr(bg),
                                          tile_size=tile_size)
    ref_color, ref_alpha = ref_soft_rasterize(world, faces, colors, intr, pose.astype(np.float64), w, h,
                                              sigma, gamma, bg)
    assert color.shape == (w * h, 3) and alpha.shape == (w * h,)
    # float32 error: pixel coordinates ~10 carry ~1e-6 px, the depth-softmax exponents (zn / gamma, after the
    # max shift) ~1e-7 relative; outputs are in [0, 1]. Observed <= 1.5e-6; 5e-6 leaves margin.
    np.testing.assert_allclose(alpha.numpy(), ref_alpha, atol=5e-6)
    np.testing.assert_allclose(color.numpy(), ref_color, atol=5e-6)


def test_small_sigma_gives_hard_coverage(device):
    world, faces, colors, intr, pose = three_triangles()
    w, h = 12, 10
    _, alpha = softras.soft_rasterize(arr(world, wp.vec3), wp.array(faces, dtype=wp.int32), arr(colors),
                                      arr(intr), arr(pose), w, h, 1e-5, 0.02, arr([0, 0, 0]))
    # independent expectation: pixel centers inside any front triangle by edge-function signs
    scr = ref_project(world, intr, pose.astype(np.float64))
    ys, xs = np.mgrid[0:h, 0:w]
    p = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    inside = np.zeros(w * h, bool)
    margin = np.full(w * h, np.inf)
    for f in faces.reshape(-1, 3):
        if scr[f, 2].min() < 0.05:
            continue
        v = scr[f, :2]
        edge = []
        for k in range(3):
            e, q = v[(k + 1) % 3] - v[k], p - v[k]
            edge.append((e[0] * q[:, 1] - e[1] * q[:, 0]) / np.linalg.norm(e))  # signed distance to the line
        edge = np.stack(edge, 1)
        inside |= (edge > 0).all(1) | (edge < 0).all(1)
        margin = np.minimum(margin, np.abs(edge).min(1))  # <= distance to the nearest edge line
    # r = sqrt(1e-5 ln(2e4 + 1)) ~ 0.01 px: a center farther than 0.05 px from every edge line has coverage
    # exactly 0 outside every triangle, and alpha is exactly 1 inside any
    clear = margin > 0.05
    assert clear.sum() >= 0.9 * w * h and inside[clear].any() and (~inside[clear]).any()
    np.testing.assert_array_equal(alpha.numpy()[clear], inside[clear].astype(np.float32))


def test_nearer_triangle_dominates_as_gamma_small(device):
    # a red triangle at depth 2 over a green one at depth 4, both covering the image center
    world = np.array([[-1, -1, -2], [1, -1, -2], [0, 1, -2], [-2, -2, -4], [2, -2, -4], [0, 2, -4]],
                     np.float32)
    colors = np.array([[1, 0, 0]] * 3 + [[0, 1, 0]] * 3, np.float32)
    bg = np.array([0, 0, 1], np.float32)
    intr, pose = arr([8.0, 8.0, 4.0, 4.0]), arr([0, 0, 0, 0, 0, 0, 1])
    center = 3 * 8 + 3  # pixel (3, 3): inside both triangles, so both coverages are exactly 1
    zn = (100.0 - np.array([2.0, 4.0])) / (100.0 - 0.05)  # both layers are at constant depth
    for order in (np.arange(6), np.r_[3:6, 0:3]):
        faces = wp.array(order.astype(np.int32), dtype=wp.int32)
        for gamma in (1e-5, 1e-3, 0.05, 10.0):
            color, alpha = softras.soft_rasterize(arr(world, wp.vec3), faces, arr(colors), intr, pose, 8, 8,
                                                  0.05, gamma, arr(bg))
            color = color.numpy()
            assert np.isfinite(color).all()  # exp(zn / gamma) ~ e^100000 without the max shift
            assert alpha.numpy()[center] == 1.0  # covered: no background
            # softmax over (red, green) with logits zn / gamma; the background is not a candidate
            logits = zn / gamma
            weights = np.exp(logits - logits.max())
            expect = weights / weights.sum() @ np.array([colors[0], colors[3]], np.float64)
            np.testing.assert_allclose(color[center], expect, atol=1e-5)
            if gamma <= 1e-3:  # green weighs e^(-0.02 / gamma) <= 2e-9 of red
                np.testing.assert_allclose(color[center], [1, 0, 0], atol=1e-6)
            if gamma == 10.0:  # blends: the two exp(zn / gamma) are within 0.2% of each other
                np.testing.assert_allclose(color[center], [0.5, 0.5, 0], atol=1e-3)


def square_scene():
    """The screen square [0, 6]^2 as two triangles sharing the diagonal x + y = 6 (and vertices), red, at depth
    1: intrinsics (1, 1, 0, 0) and the identity pose map world (X, -Y, -1) to pixel (X, Y)."""
    world = np.array([[0, 0, -1], [6, 0, -1], [0, -6, -1], [6, -6, -1]], np.float32)
    faces = np.array([0, 1, 2, 1, 3, 2], np.int32)
    colors = np.tile(np.float32([1, 0, 0]), (4, 1))
    return world, faces, colors, np.float32([1, 1, 0, 0]), np.float32([0, 0, 0, 0, 0, 0, 1])


def test_shared_edges_do_not_darken_and_silhouettes_blend_into_the_background(device):
    world, faces, colors, intr, pose = square_scene()
    w = h = 8
    sigma = 0.25  # r = sqrt(0.25 ln(2e4 + 1)) = 1.57 px
    color, alpha = softras.soft_rasterize(arr(world, wp.vec3), wp.array(faces, dtype=wp.int32), arr(colors),
                                          arr(intr), arr(pose), w, h, sigma, 0.01, arr([0, 0, 1]))
    color, alpha = color.numpy().reshape(h, w, 3), alpha.numpy().reshape(h, w)
    # every center in the square is covered, including the six on the shared diagonal (SoftRas: 0.75 there)
    np.testing.assert_array_equal(alpha[:6, :6], 1.0)
    np.testing.assert_allclose(color[:6, :6], np.broadcast_to([1, 0, 0], (6, 6, 3)), atol=1e-6)
    # outside: 1 - prod_j (1 - D_j), D_j = (1 + eps_D) 2 sigmoid(-d_j^2 / sigma) - eps_D, 0 beyond r; both
    # triangles reach the pixels next to the corners (6, 0) and (0, 6)
    scr = world[:, :2] * [1, -1]
    cov = np.ones((h, w))
    for y in range(h):
        for x in range(w):
            for f in faces.reshape(2, 3):
                cov[y, x] *= 1 - ref_coverage(ref_fragment(np.array([x + 0.5, y + 0.5]), scr[f])[0], sigma)
    cov = 1 - cov
    np.testing.assert_allclose(alpha, cov, atol=1e-6)
    assert ((alpha > 0.01) & (alpha < 0.99)).sum() >= 8 and (alpha == 0).sum() >= 1
    # the color blends red over the blue background by alpha
    np.testing.assert_allclose(color, cov[..., None] * [1, 0, 0] + (1 - cov[..., None]) * [0, 0, 1], atol=1e-6)


def test_silhouette_pixel_has_the_analytic_vertex_gradient(device):
    """Pixel (6, 2), center (6.5, 2.5), lies d = 0.5 px right of the square's right edge (vertices 1 and 3);
    the diagonal triangle is 2.1 px away, beyond r = 1.57 px. Moving the edge right by dX changes red = alpha
    = D(d) by dD/dX = (1 + eps_D) 2 s (1 - s) 2 d / sigma, s = sigmoid(-d^2 / sigma), and blue = 1 - alpha
    by the opposite; SoftRas's image had no such gradient (its color stayed red up to the cutoff)."""
    world, faces, colors, intr, pose = square_scene()
    sigma, d = 0.25, 0.5
    s = 1 / (1 + math.exp(d * d / sigma))
    expect = (1 + EPS_D) * 2 * s * (1 - s) * 2 * d / sigma
    world_wp = arr(world, wp.vec3, grad=True)
    tape = wp.Tape()
    with tape:
        color, _ = softras.soft_rasterize(world_wp, wp.array(faces, dtype=wp.int32), arr(colors), arr(intr),
                                          arr(pose), 8, 8, sigma, 0.01, arr([0, 0, 1]))
    for channel, sign in ((0, 1), (2, -1)):
        seed = np.zeros((64, 3), np.float32)
        seed[2 * 8 + 6, channel] = 1
        tape.backward(grads={color: wp.array(seed, dtype=float)})
        g = world_wp.grad.numpy()
        np.testing.assert_allclose(g[[1, 3], 0].sum(), sign * expect, rtol=1e-4)
        np.testing.assert_allclose(g[[0, 2]], 0, atol=1e-7)  # the left vertices do not move the right edge
        tape.zero()


# ---------------------------------------------------------------- binning

def test_binning_lists_are_short_and_conservative(device):
    rng = np.random.default_rng(3)
    w, h, n_tris, sigma, tile = 64, 48, 300, 0.3, 16
    centers = rng.uniform([0, 0], [w, h], (n_tris, 2))
    offs = rng.uniform(-1.2, 1.2, (n_tris, 3, 2))
    scr2 = (centers[:, None, :] + offs).reshape(-1, 2)
    screen = np.concatenate([scr2, rng.uniform(2, 5, (scr2.shape[0], 1))], 1).astype(np.float32)
    faces = np.arange(3 * n_tris, dtype=np.int32)
    radius = softras.coverage_radius(sigma)
    assert radius == pytest.approx(math.sqrt(sigma * math.log(2e4 + 1)))
    screen, faces = wp.array(screen, dtype=wp.vec3), wp.array(faces, dtype=wp.int32)
    offsets, counts, tris = softras.bin_triangles(screen, faces, w, h, radius, tile_size=tile)
    offsets, counts, tris = offsets.numpy(), counts.numpy(), tris.numpy()
    tiles_x = w // tile
    assert counts.shape == (tiles_x * (h // tile),)
    lists = [tris[o:o + c] for o, c in zip(offsets, counts, strict=True)]
    # short lists: each small triangle lands in 1-4 of the 12 tiles, so ~F/12 per tile, never near F
    assert counts.max() <= n_tris // 4
    assert counts.sum() <= 2 * n_tris
    assert all(len(set(lst)) == len(lst) for lst in lists)  # no duplicates
    # conservative: every (pixel, triangle) pair within the blur radius (or inside) is in the pixel's tile
    ys, xs = np.mgrid[0:h, 0:w]
    p = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    tile_of = (ys.ravel() // tile) * tiles_x + xs.ravel() // tile
    tri_xy = scr2.reshape(n_tris, 3, 2)
    d2 = np.full((p.shape[0], n_tris), np.inf)
    for i in range(3):
        a, e = tri_xy[:, i], tri_xy[:, (i + 1) % 3] - tri_xy[:, i]
        t = np.clip(np.einsum("pfk,fk->pf", p[:, None] - a[None], e) / (e * e).sum(1), 0, 1)
        d2 = np.minimum(d2, (((p[:, None] - a[None] - t[..., None] * e[None]) ** 2).sum(-1)))
    needed = d2 < radius ** 2  # inside pixels are within the bbox too, a fortiori
    pix, tri = np.nonzero(needed)
    assert len(pix) > n_tris  # the check is not vacuous
    member = {(t, f) for t, lst in enumerate(lists) for f in lst}
    missing = [(int(i), int(f)) for i, f in zip(pix, tri, strict=True) if (tile_of[i], f) not in member]
    assert not missing, f"(pixel, triangle) pairs missing from their tile list: {missing[:5]}"


def test_culled_and_offscreen_triangles_change_nothing(device):
    world, faces, colors, intr, pose = three_triangles()
    far_right = np.array([[30, 0, -3], [31, 0, -3], [30, 1, -3]], np.float32)  # projects to x > 100 px
    args = (arr(intr), arr(pose), 12, 10, 1.0, 0.05, arr([0.1, 0.2, 0.3]))
    base = softras.soft_rasterize(arr(world[:9], wp.vec3), wp.array(faces[:9], dtype=wp.int32),
                                  arr(colors[:9]), *args)
    more = softras.soft_rasterize(arr(np.concatenate([world, far_right]), wp.vec3),
                                  wp.array(np.arange(15, dtype=np.int32), dtype=wp.int32),
                                  arr(np.concatenate([colors, colors[:3]])), *args)
    assert_same_render(more[0].numpy(), base[0].numpy(), device)  # CUDA fills tile lists in atomic order
    assert_same_render(more[1].numpy(), base[1].numpy(), device)


def test_argument_validation(device):
    world, faces, colors, intr, pose = three_triangles()
    good = dict(world=arr(world, wp.vec3), faces=wp.array(faces, dtype=wp.int32), vertex_colors=arr(colors),
                intrinsics=arr(intr), pose=arr(pose), width=12, height=10, sigma=1.0, gamma=0.1,
                background=arr([0, 0, 0]))
    bad = [("world", arr(world), TypeError), ("faces", wp.array(faces[:7], dtype=wp.int32), ValueError),
           ("vertex_colors", arr(colors[:, :2]), ValueError), ("intrinsics", arr(intr[:3]), ValueError),
           ("pose", wp.array(pose, dtype=wp.float64), TypeError), ("background", arr([0, 0]), ValueError),
           ("width", 0, ValueError), ("sigma", 0.0, ValueError), ("gamma", -1.0, ValueError),
           ("near", 0.0, ValueError)]
    for name, value, exc in bad:
        with pytest.raises(exc, match=name):
            softras.soft_rasterize(**{**good, name: value})


# ---------------------------------------------------------------- gradients

def grad_setup():
    world, faces, colors, intr, pose = three_triangles()
    arrays = dict(world=arr(world[:9], wp.vec3, True), vertex_colors=arr(colors[:9], grad=True),
                  intrinsics=arr(intr, grad=True), pose=arr(pose, grad=True),
                  background=arr([0.2, 0.5, 0.9], grad=True))
    faces = wp.array(faces[:9], dtype=wp.int32)
    w_alpha = wp.array(np.random.default_rng(7).uniform(-1, 1, 12 * 10).astype(np.float32), dtype=float)

    def forward():
        # near/far tight around the depths 3..5 so the depth softmax is not flat: zn differs by ~0.3,
        # i.e. e^3 at gamma = 0.1
        color, alpha = softras.soft_rasterize(arrays["world"], faces, arrays["vertex_colors"],
                                              arrays["intrinsics"], arrays["pose"], 12, 10, 2.0, 0.1,
                                              arrays["background"], near=1.0, far=7.0, tile_size=4)
        loss = weighted_loss(color)
        wp.launch(loss_kernels.weighted_sum_1d, dim=alpha.shape[0], inputs=[alpha, w_alpha, loss])
        return loss

    return arrays, forward


# Tolerances: the loss sums 480 outputs in [0, 1] with weights in [-1, 1] (|L| ~ 10); its float32 roundoff
# is ~1e-5 (measured: central differences with h = 2.5e-4 scatter by ~0.02), so a difference with step h
# carries ~1e-5 / h. Steps move the image by ~0.01 px: world h = 2e-3 (fx h / z ~ 0.007 px, error ~5e-3),
# quaternion h = 5e-4 (rotation 2h rad -> fx 2h ~ 0.011 px, error ~2e-2), colors, background and intrinsics
# (pixels) h = 1e-2 (error ~1e-3). Coverage is constant inside a triangle, so the image is smooth there; the
# kinks left are outside, where the closest triangle point moves from an edge to a vertex region (C_j, z_j)
# and where coverage reaches 0 at the cutoff (slope ~eps_D). Measured worst errors at these steps: world
# 2e-3, colors 2e-4, intrinsics 6e-4, pose 1.4e-2 (of 65), background 8e-5.
# rtol 2e-2 on gradients of magnitude 0.1..65 absorbs the remaining truncation.
@pytest.mark.parametrize("name, eps, atol", [("world", 2e-3, 1e-2), ("vertex_colors", 1e-2, 3e-3),
                                             ("intrinsics", 1e-2, 3e-3), ("pose", 5e-4, 2e-2),
                                             ("background", 1e-2, 3e-3)])
def test_gradients(name, eps, atol, device):
    arrays, forward = grad_setup()
    param = arrays[name]
    check_gradient(forward, param, eps=eps, rtol=2e-2, atol=atol, indices=range(param.numpy().size))
    # the gradient is not trivially zero
    tape = wp.Tape()
    with tape:
        loss = forward()
    tape.backward(loss)
    assert np.abs(param.grad.numpy()).max() > 0.05
