"""Image losses and regularizers: forward values against NumPy references written here, tape gradients
against central differences, accumulation into one scalar, and argument validation.

Gradient tolerances: the weighted losses below are L ~ 1..8, summed in float32 (u = 6e-8) over at most
~200 terms, so one evaluation errs by up to ~sqrt(n) u L ~ 1e-6..5e-6, and a central difference with
eps = 1e-3 by up to that / (2 eps) ~ 5e-4..2.5e-3 (typically a tenth). Weights make the gradient
entries O(0.1..1); checks use atol 2e-3 and rtol 1e-2. Truncation (eps^2 |L'''| / 6) is below 1e-5:
the losses are smooth where probed (L1/TV residuals kept away from 0). SSIM has the largest L (7.5)
and uses eps = 5e-3, which cuts roundoff 5x (measured max error over all entries: 1.2e-3 at
eps = 1e-3, 2e-4 at 5e-3)."""

import numpy as np
import pytest
import trimesh
import warp as wp
from drstudio.renderer.optim import losses
from drstudio.renderer.optim import regularizers as reg
from support.gradcheck import check_gradient

C1, C2 = 0.01**2, 0.03**2


def farr(a, grad=False):
    a = np.asarray(a, np.float32)
    return wp.array(a, dtype=float, requires_grad=grad)


def varr(a, grad=False):
    return wp.array(np.asarray(a, np.float32), dtype=wp.vec3, requires_grad=grad)


def accumulator():
    return wp.zeros(1, dtype=float, requires_grad=True)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3)), rng.uniform(0.2, 1.0, n)


def numpy_ssim_map(a, b, width, height):
    """Per-pixel, per-channel SSIM with the window cut to the image and renormalized, central moments."""
    a = a.reshape(height, width, 3).astype(np.float64)
    b = b.reshape(height, width, 3).astype(np.float64)
    taps = np.exp(-np.arange(-5, 6) ** 2 / (2 * 1.5**2))
    out = np.empty((height, width, 3))
    for y in range(height):
        for x in range(width):
            ys = np.arange(max(0, y - 5), min(height, y + 6))
            xs = np.arange(max(0, x - 5), min(width, x + 6))
            w = np.outer(taps[ys - y + 5], taps[xs - x + 5])[..., None]
            w /= w.sum()
            pa, pb = a[np.ix_(ys, xs)], b[np.ix_(ys, xs)]
            ma, mb = (w * pa).sum((0, 1)), (w * pb).sum((0, 1))
            va, vb = (w * (pa - ma) ** 2).sum((0, 1)), (w * (pb - mb) ** 2).sum((0, 1))
            cov = (w * (pa - ma) * (pb - mb)).sum((0, 1))
            out[y, x] = (2 * ma * mb + C1) * (2 * cov + C2) / ((ma**2 + mb**2 + C1) * (va + vb + C2))
    return out.reshape(-1, 3)


def masked_mean(per_value, mask):
    """Mean over pixels and channels of an (N, 3) array, pixels weighted by mask (None: all 1)."""
    m = np.ones(len(per_value)) if mask is None else mask
    return (m[:, None] * per_value).sum() / (3 * m.sum())


@pytest.mark.parametrize("use_mask", [False, True])
def test_pixel_losses_match_numpy_and_accumulate(use_mask, device):
    r, t, m = images(20)
    mask = farr(m) if use_mask else None
    out = accumulator()
    out.assign(np.array([0.5], np.float32))  # losses add to what is there
    losses.l1(farr(r), farr(t), out, weight=2.0, mask=mask)
    losses.l2(farr(r), farr(t), out, weight=3.0, mask=mask)
    ref = 0.5 + 2.0 * masked_mean(np.abs(r - t), m if use_mask else None) + 3.0 * masked_mean(
        (r - t) ** 2, m if use_mask else None)
    assert out.numpy()[0] == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_pixel_loss_of_a_band_is_its_share_of_the_whole_image(name, device):
    # pixels=N: rows [a, b) of an image add their part of the whole image's mean, and each pixel's gradient is
    # the whole image's bit for bit (the data-parallel row split, renderer.optim.models)
    r, t, _ = images(20, seed=2)
    fn = getattr(losses, name)
    whole, render = accumulator(), farr(r, grad=True)
    tape = wp.Tape()
    with tape:
        fn(render, farr(t), whole, weight=0.7)
    tape.backward(whole)
    both, render2 = accumulator(), farr(r, grad=True)
    tape2 = wp.Tape()
    with tape2:
        for a, b in ((0, 8), (8, 20)):
            fn(render2[a:b], farr(t[a:b]), both, weight=0.7, pixels=20)
    tape2.backward(both)
    assert float(both.numpy()[0]) == pytest.approx(float(whole.numpy()[0]), rel=1e-6)
    assert np.array_equal(render2.grad.numpy(), render.grad.numpy())
    with pytest.raises(ValueError, match="pixels"):
        fn(farr(r), farr(t), accumulator(), pixels=19)
    with pytest.raises(ValueError, match="pixels"):
        fn(farr(r), farr(t), accumulator(), pixels=40, mask=farr(np.ones(20)))


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_masked_loss_of_a_band_is_its_share_of_the_whole_image(name, device):
    # mask_total: the same for a masked image (a frame's mask_path): each band normalized by the whole mask's sum
    r, t, m = images(20, seed=3)
    m = (m > 0.5).astype(np.float32)
    fn = getattr(losses, name)
    whole, render = accumulator(), farr(r, grad=True)
    tape = wp.Tape()
    with tape:
        fn(render, farr(t), whole, weight=0.7, mask=farr(m))
    tape.backward(whole)
    both, render2 = accumulator(), farr(r, grad=True)
    tape2 = wp.Tape()
    with tape2:
        for a, b in ((0, 8), (8, 20)):
            fn(render2[a:b], farr(t[a:b]), both, weight=0.7, mask=farr(m[a:b]), mask_total=float(m.sum()))
    tape2.backward(both)
    assert float(both.numpy()[0]) == pytest.approx(float(whole.numpy()[0]), rel=1e-6)
    np.testing.assert_allclose(render2.grad.numpy(), render.grad.numpy(), rtol=1e-6)
    assert not np.any(render.grad.numpy()[m == 0])
    with pytest.raises(ValueError, match="mask_total"):
        fn(farr(r), farr(t), accumulator(), mask_total=3.0)
    with pytest.raises(ValueError, match="mask_total"):
        fn(farr(r), farr(t), accumulator(), mask=farr(m), mask_total=0.0)


def test_all_zero_mask_adds_nothing(device):
    r, t, _ = images(6)
    out = accumulator()
    losses.l2(farr(r), farr(t), out, mask=farr(np.zeros(6)))
    losses.ssim_loss(farr(r), farr(t), 3, 2, out, mask=farr(np.zeros(6)))
    assert out.numpy()[0] == 0.0


@pytest.mark.parametrize("use_mask", [False, True])
def test_ssim_matches_numpy(use_mask, device):
    width, height = 16, 12  # larger than the 11x11 window: interior and cut windows
    r, t, m = images(width * height, seed=1)
    t = 0.6 * r + 0.4 * t  # correlated, so SSIM is well away from 0
    out = accumulator()
    losses.ssim_loss(farr(r), farr(t), width, height, out, weight=2.0, mask=farr(m) if use_mask else None)
    ref = 2.0 * masked_mean(1.0 - numpy_ssim_map(r, t, width, height), m if use_mask else None)
    assert out.numpy()[0] == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_ssim_of_identical_images_is_one(device):
    r, _, _ = images(35, seed=2)
    out = accumulator()
    losses.ssim_loss(farr(r), farr(r), 7, 5, out)
    assert abs(out.numpy()[0]) < 1e-6


def test_psnr_matches_formula(device):
    r, t, m = images(10)
    mse = ((r - t) ** 2).mean()
    assert losses.psnr(farr(r), farr(t)) == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    assert losses.psnr(farr(r), farr(t), farr(m)) == pytest.approx(
        10 * np.log10(1 / masked_mean((r - t) ** 2, m)), rel=1e-5)
    assert losses.psnr(farr(r), farr(r)) == float("inf")


def test_l1_gradient(device):
    r, _, m = images(12, seed=3)
    rng = np.random.default_rng(4)
    t = r + rng.choice([-1, 1], r.shape) * rng.uniform(0.1, 0.3, r.shape)  # residuals >= 0.1 >> eps
    render, target, mask = farr(r, grad=True), farr(t), farr(m)

    def forward():
        out = accumulator()
        losses.l1(render, target, out, weight=10.0, mask=mask)
        return out

    check_gradient(forward, render, eps=1e-3, rtol=1e-2, atol=2e-3, probes=12)


def test_l2_gradient_wrt_render_and_target(device):
    r, t, m = images(12, seed=5)
    render, target, mask = farr(r, grad=True), farr(t, grad=True), farr(m)

    def forward():
        out = accumulator()
        losses.l2(render, target, out, weight=10.0, mask=mask)
        return out

    check_gradient(forward, render, eps=1e-3, rtol=1e-2, atol=2e-3, probes=12)
    check_gradient(forward, target, eps=1e-3, rtol=1e-2, atol=2e-3, probes=12)


def test_ssim_gradient(device):
    width, height = 7, 5  # the window is cut on every side
    r, t, m = images(width * height, seed=6)
    render, target, mask = farr(r, grad=True), farr(0.5 * r + 0.5 * t), farr(m)

    def forward():
        out = accumulator()
        losses.ssim_loss(render, target, width, height, out, weight=20.0, mask=mask)
        return out

    check_gradient(forward, render, eps=5e-3, rtol=1e-2, atol=2e-3, probes=16)


def test_accumulate_sums_terms_differentiably(device):
    r, t, _ = images(8, seed=12)
    assert np.abs(r - t).min() > 2e-3  # the l1 term is smooth where probed
    render, target = farr(r, grad=True), farr(t)

    def forward():
        term_a, term_b, total = accumulator(), accumulator(), accumulator()
        losses.l2(render, target, term_a, weight=10.0)
        losses.l1(render, target, term_b, weight=5.0)
        losses.accumulate(term_a, total)
        losses.accumulate(term_b, total, weight=2.0)
        return total

    ref = 10.0 * ((r - t) ** 2).mean() + 2.0 * 5.0 * np.abs(r - t).mean()
    assert forward().numpy()[0] == pytest.approx(ref, rel=1e-5)
    check_gradient(forward, render, eps=1e-3, rtol=1e-2, atol=2e-3, probes=8)


def test_loss_validation(device):
    r, t, _ = images(6)
    with pytest.raises(ValueError, match="target"):
        losses.l1(farr(r), farr(t[:5]), accumulator())
    with pytest.raises(TypeError, match="render"):
        losses.l2(wp.array(r, dtype=wp.float64), farr(t), accumulator())
    with pytest.raises(ValueError, match="mask"):
        losses.l1(farr(r), farr(t), accumulator(), mask=farr(np.ones(5)))
    with pytest.raises(ValueError, match="out_loss"):
        losses.l1(farr(r), farr(t), wp.zeros(2, dtype=float))
    with pytest.raises(ValueError, match="width"):
        losses.ssim_loss(farr(r), farr(t), 4, 2, accumulator())
    with pytest.raises(ValueError, match="term"):
        losses.accumulate(wp.zeros(3, dtype=float), accumulator())


# ---- regularizers ----

def numpy_tv(tex, squared, eps=0.0):
    f = np.square if squared else (lambda d: np.sqrt(d * d + eps * eps) - eps) if eps > 0 else np.abs
    return (f(np.diff(tex, axis=1)).sum() + f(np.diff(tex, axis=0)).sum()) / tex.size


def test_smoothed_total_variation_matches_numpy_and_its_gradients(device):
    rng = np.random.default_rng(17)
    tex = rng.uniform(0, 1, (5, 6, 3))
    tex[2, :, :] = tex[1, :, :] + rng.uniform(-2e-3, 2e-3, (6, 3))  # differences inside the smoothed zone
    out = accumulator()
    reg.total_variation(wp.array(tex.astype(np.float32), dtype=float), out, weight=1.5, eps=reg.TV_EPS)
    assert out.numpy()[0] == pytest.approx(1.5 * numpy_tv(tex.astype(np.float32).astype(np.float64), False,
                                                            reg.TV_EPS), rel=1e-5)
    texture = wp.array(tex.astype(np.float32), dtype=float, requires_grad=True)

    def forward():
        out = accumulator()
        reg.total_variation(texture, out, weight=10.0, eps=0.01)  # a wide smooth zone: no kink to straddle
        return out

    check_gradient(forward, texture, eps=1e-3, rtol=2e-2, atol=2e-3, probes=12)
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            reg.total_variation(texture, accumulator(), eps=bad)


def test_smoothed_total_variation_is_stable_under_round_off(device):
    # Two neighbours equal in one run and one rounding error apart in another (another summation order):
    # plain |d| gives gradients that differ by the whole weight, the smoothed TV by about round-off.
    tex = np.full((2, 2, 1), 0.5, np.float32)
    nudged = tex.copy()
    nudged[0, 1, 0] = np.nextafter(np.float32(0.5), np.float32(1))
    grads = {}
    for eps in (0.0, reg.TV_EPS):
        for name, t in (("equal", tex), ("nudged", nudged)):
            texture = wp.array(t, dtype=float, requires_grad=True)
            out = accumulator()
            tape = wp.Tape()
            with tape:
                reg.total_variation(texture, out, weight=1.0, eps=eps)
            tape.backward(out)
            grads[eps, name] = texture.grad.numpy()
    # the nudged texel's two differences (to its left and lower neighbours) each jump by weight / (h w C)
    assert np.abs(grads[0.0, "nudged"] - grads[0.0, "equal"]).max() == pytest.approx(2 * 0.25)
    # smoothed: the jump times d / eps (6e-8 / 1e-3 here), under a thousandth of it
    assert np.abs(grads[reg.TV_EPS, "nudged"] - grads[reg.TV_EPS, "equal"]).max() < 1e-3 * 2 * 0.25


@pytest.mark.parametrize("squared", [False, True])
def test_total_variation_matches_numpy(squared, device):
    tex = np.random.default_rng(7).uniform(0, 1, (5, 6, 3))
    out = accumulator()
    reg.total_variation(wp.array(tex.astype(np.float32), dtype=float), out, weight=1.5, squared=squared)
    assert out.numpy()[0] == pytest.approx(1.5 * numpy_tv(tex, squared), rel=1e-5)


@pytest.mark.parametrize("squared", [False, True])
def test_total_variation_gradient(squared, device):
    tex = np.random.default_rng(8).uniform(0, 1, (4, 5, 2)).astype(np.float32)
    # |d| is not differentiable at 0: the central difference must not straddle a kink.
    assert min(np.abs(np.diff(tex, axis=0)).min(), np.abs(np.diff(tex, axis=1)).min()) > 2e-3
    texture = wp.array(tex, dtype=float, requires_grad=True)

    def forward():
        out = accumulator()
        reg.total_variation(texture, out, weight=10.0, squared=squared)
        return out

    check_gradient(forward, texture, eps=1e-3, rtol=1e-2, atol=2e-3, probes=12)


@pytest.mark.parametrize("squared", [False, True])
def test_total_variation_split_by_rows_adds_up_to_the_whole(squared, device):
    # the data-parallel split (renderer.optim.models): rank r takes the differences starting in its rows
    tex = np.random.default_rng(9).uniform(0, 1, (7, 5, 3)).astype(np.float32)
    whole, texture = accumulator(), wp.array(tex, dtype=float, requires_grad=True)
    tape = wp.Tape()
    with tape:
        reg.total_variation(texture, whole, weight=2.0, squared=squared)
    tape.backward(whole)
    parts, texture2 = accumulator(), wp.array(tex, dtype=float, requires_grad=True)
    tape2 = wp.Tape()
    with tape2:
        for rows in ((0, 3), (3, 3), (3, 7)):
            reg.total_variation(texture2, parts, weight=2.0, squared=squared, rows=rows)
    tape2.backward(parts)
    assert float(parts.numpy()[0]) == pytest.approx(float(whole.numpy()[0]), rel=1e-6)
    assert float(whole.numpy()[0]) == pytest.approx(2.0 * numpy_tv(tex.astype(np.float64), squared), rel=1e-5)
    np.testing.assert_allclose(texture2.grad.numpy(), texture.grad.numpy(), rtol=0, atol=1e-7)
    for bad in ((-1, 3), (4, 2), (0, 8)):
        with pytest.raises(ValueError, match="rows"):
            reg.total_variation(texture, accumulator(), rows=bad)


def test_mesh_topology_helpers(device):
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(reg.unique_edges(faces), [[0, 1], [0, 2], [0, 3], [1, 2], [2, 3]])
    offsets, indices = reg.neighbor_csr(faces, 5)  # vertex 4 is in no face
    np.testing.assert_array_equal(offsets, [0, 3, 5, 8, 10, 10])
    np.testing.assert_array_equal(indices, [1, 2, 3, 0, 2, 0, 1, 3, 0, 2])
    assert offsets.dtype == np.int32 and indices.dtype == np.int32
    with pytest.raises(ValueError, match="faces"):
        reg.neighbor_csr(faces, 3)
    with pytest.raises(ValueError, match="faces"):
        reg.unique_edges(np.array([0, 1, 2]))


def bumpy_mesh():
    """An icosahedron with jittered vertices plus one vertex in no face."""
    ico = trimesh.creation.icosahedron()
    rng = np.random.default_rng(9)
    v = ico.vertices * rng.uniform(0.8, 1.2, (len(ico.vertices), 1))
    v = np.vstack([v, [[2.0, 0.0, 0.0]]])
    return v.astype(np.float32), ico.faces.astype(np.int32)


def numpy_laplacian(v, faces):
    v = v.astype(np.float64)
    neighbors = [set() for _ in v]
    for a, b, c in faces:
        for i, j in ((a, b), (b, c), (c, a)):
            neighbors[i].add(j)
            neighbors[j].add(i)
    terms = [np.sum((v[i] - v[sorted(n)].mean(0)) ** 2) if n else 0.0 for i, n in enumerate(neighbors)]
    return float(np.mean(terms))


def topology(v, faces):
    offsets, indices = reg.neighbor_csr(faces, len(v))
    return wp.array(offsets, dtype=wp.int32), wp.array(indices, dtype=wp.int32)


def test_laplacian_matches_numpy(device):
    v, faces = bumpy_mesh()
    out = accumulator()
    reg.laplacian_smoothing(varr(v), *topology(v, faces), out, weight=2.0)
    assert out.numpy()[0] == pytest.approx(2.0 * numpy_laplacian(v, faces), rel=1e-5)


def test_laplacian_gradient(device):
    v, faces = bumpy_mesh()
    vertices = varr(v, grad=True)
    offsets, indices = topology(v, faces)

    def forward():
        out = accumulator()
        reg.laplacian_smoothing(vertices, offsets, indices, out, weight=10.0)
        return out

    check_gradient(forward, vertices, eps=1e-3, rtol=1e-2, atol=2e-3, probes=12)


@pytest.mark.parametrize("use_rest", [False, True])
def test_edge_length_matches_numpy(use_rest, device):
    v, faces = bumpy_mesh()
    edges = reg.unique_edges(faces)
    lengths = np.linalg.norm(v[edges[:, 1]].astype(np.float64) - v[edges[:, 0]], axis=1)
    rest = np.random.default_rng(10).uniform(0.8, 1.2, len(edges))
    ref = np.mean((lengths - rest) ** 2) if use_rest else np.var(lengths)
    out = accumulator()
    rest_wp = farr(rest) if use_rest else None
    reg.edge_length(varr(v), wp.array(edges, dtype=wp.int32), rest_wp, out, weight=3.0)
    assert out.numpy()[0] == pytest.approx(3.0 * ref, rel=1e-4)


@pytest.mark.parametrize("use_rest", [False, True])
def test_edge_length_gradient(use_rest, device):
    v, faces = bumpy_mesh()
    edges = reg.unique_edges(faces)
    vertices, edges_wp = varr(v, grad=True), wp.array(edges, dtype=wp.int32)
    rest = farr(np.random.default_rng(11).uniform(0.8, 1.2, len(edges))) if use_rest else None

    def forward():
        out = accumulator()
        reg.edge_length(vertices, edges_wp, rest, out, weight=10.0)
        return out

    check_gradient(forward, vertices, eps=1e-3, rtol=1e-2, atol=2e-3, probes=12)


def test_regularizer_validation(device):
    v, faces = bumpy_mesh()
    offsets, indices = topology(v, faces)
    with pytest.raises(ValueError, match="offsets"):
        reg.laplacian_smoothing(varr(v[:-1]), offsets, indices, accumulator())
    edges = wp.array(reg.unique_edges(faces), dtype=wp.int32)
    with pytest.raises(TypeError, match="vertices"):
        reg.edge_length(farr(v), edges, None, accumulator())
    with pytest.raises(ValueError, match="rest_lengths"):
        reg.edge_length(varr(v), edges, farr([1.0]), accumulator())
    with pytest.raises(ValueError, match="texture"):
        reg.total_variation(wp.zeros((4, 4), dtype=float), accumulator())
