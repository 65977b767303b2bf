"""Texture stage: packing, mip pyramids, bilinear/trilinear sampling and their gradients.

Forward results are compared with a NumPy reference sampler written here from the contract
(texel centers at (i + 0.5) / w, v down, floor-mod wrap or clip, 2x2 clamped box pyramid).
Tolerances: texels are in [0, 1] and a sample is a handful of float32 products, so 2e-5 absolute
covers roundoff even at |uv * w| ~ 20 (float32 spacing there ~2e-6).
"""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.stages.texture import TexturePool, footprint, sample, sample_bilinear_level, sample_footprint
from support.gradcheck import check_gradient, weighted_loss

wp.config.quiet = True
ATOL = 2e-5


@wp.kernel
def _probe_level(data: wp.array(dtype=float), table: wp.array2d(dtype=wp.int32), tex: int, level: int,
                 uv: wp.array2d(dtype=float), out: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    out[i] = sample_bilinear_level(data, table, tex, level, uv[i, 0], uv[i, 1])


def _arr(a, grad=False):
    return wp.array(np.asarray(a, np.float32), dtype=float, requires_grad=grad)


def _idx(a):
    return wp.array(np.asarray(a, np.int32), dtype=wp.int32)


def ref_bilinear(tex, u, v, wrap):
    """Bilinear sample of a (h, w, C) NumPy texture at arrays u, v -> (n, C)."""
    h, w, _ = tex.shape
    x = np.asarray(u, np.float64) * w - 0.5
    y = np.asarray(v, np.float64) * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def addr(i, n):
        return np.mod(i, n) if wrap == "wrap" else np.clip(i, 0, n - 1)

    xa, xb, ya, yb = addr(x0, w), addr(x0 + 1, w), addr(y0, h), addr(y0 + 1, h)
    return ((1 - fy) * ((1 - fx) * tex[ya, xa] + fx * tex[ya, xb])
            + fy * ((1 - fx) * tex[yb, xa] + fx * tex[yb, xb]))


def ref_pyramid(tex):
    levels = [np.asarray(tex, np.float64)]
    while levels[-1].shape[:2] != (1, 1):
        a = levels[-1]
        h, w, _ = a.shape
        ys = np.minimum(2 * np.arange(max(h // 2, 1))[:, None] + [0, 1], h - 1)
        xs = np.minimum(2 * np.arange(max(w // 2, 1))[:, None] + [0, 1], w - 1)
        levels.append(a[ys][:, :, xs].mean(axis=(1, 3)))
    return levels


def ref_trilinear(tex, u, v, da, wrap):
    levels = ref_pyramid(tex)
    h, w, _ = tex.shape
    rho = np.maximum(np.hypot(da[:, 0] * w, da[:, 2] * h), np.hypot(da[:, 1] * w, da[:, 3] * h))
    lod = np.clip(np.log2(np.maximum(rho, 1e-30)), 0, len(levels) - 1)
    out = np.zeros((len(u), tex.shape[2]))
    for k in range(len(u)):
        l0 = int(np.floor(lod[k]))
        l1 = min(l0 + 1, len(levels) - 1)
        f = lod[k] - l0
        a = ref_bilinear(levels[l0], u[k:k + 1], v[k:k + 1], wrap)[0]
        b = ref_bilinear(levels[l1], u[k:k + 1], v[k:k + 1], wrap)[0]
        out[k] = (1 - f) * a + f * b
    return out


def _away_from_centers(rng, n, sizes, lo=-0.4, hi=1.4, margin=0.1):
    """uv points whose texel-space coordinates at every (w, h) in `sizes` are at least `margin`
    from a texel-center line, where bilinear sampling has a kink."""
    pts = []
    while len(pts) < n:
        u, v = rng.uniform(lo, hi, 2)
        fr = [(c * s - 0.5) % 1.0 for w, h in sizes for c, s in ((u, w), (v, h))]
        if all(margin < f < 1 - margin for f in fr):
            pts.append((u, v))
    return np.array(pts, np.float32)


# ---- forward --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["wrap", "clamp"])
def test_bilinear_matches_numpy_reference(wrap, device):
    rng = np.random.default_rng(1)
    tex = rng.random((5, 7, 3)).astype(np.float32)
    uv = rng.uniform(-1.3, 2.2, (64, 2)).astype(np.float32)
    uv[:4] = [[0.5 / 7, 0.5 / 5], [0.0, 0.0], [1.0, 1.0], [6.5 / 7, 4.5 / 5]]  # centers and corners
    pool = TexturePool.build([_arr(tex)], [wrap])
    got = sample(pool, _idx(np.zeros(64)), _arr(uv)).numpy()
    np.testing.assert_allclose(got, ref_bilinear(tex, uv[:, 0], uv[:, 1], wrap), atol=ATOL)
    np.testing.assert_allclose(got[0], tex[0, 0], atol=ATOL)  # v = 0 is the first row
    np.testing.assert_allclose(got[3], tex[4, 6], atol=ATOL)


def test_constant_1x1_texture_everywhere(device):
    for value in ([0.2, 0.5, 0.9], [0.35]):
        pool = TexturePool.build([_arr(np.reshape(value, (1, 1, -1)))], ["wrap"])
        assert pool.levels(0) == 1
        rng = np.random.default_rng(2)
        uv = _arr(rng.uniform(-3, 3, (20, 2)))
        da = _arr(rng.uniform(-5, 5, (20, 4)))
        for d in (None, da):
            got = sample(pool, _idx(np.zeros(20)), uv, d).numpy()
            np.testing.assert_allclose(got, np.tile(value, (20, 1)), atol=1e-6)


def test_mip_pyramid_is_clamped_2x2_box_filter(device):
    rng = np.random.default_rng(3)
    a = rng.random((4, 4, 3)).astype(np.float32)
    b = rng.random((3, 5, 1)).astype(np.float32)
    pool = TexturePool.build([_arr(a)], ["wrap"])
    assert pool.sizes[0] == [(4, 4), (2, 2), (1, 1)]
    block_means = a.reshape(2, 2, 2, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(pool.level_numpy(0, 1), block_means, atol=1e-6)
    np.testing.assert_allclose(pool.level_numpy(0, 2)[0, 0], a.mean(axis=(0, 1)), atol=1e-6)
    odd = TexturePool.build([_arr(b)], ["clamp"])
    assert odd.sizes[0] == [(5, 3), (2, 1), (1, 1)]
    # 5x3 -> 2x1: texel (0, 0) averages rows 0-1, columns 0-1 (the last row/column is dropped)
    np.testing.assert_allclose(odd.level_numpy(0, 1)[0, 0], b[:2, :2].mean(axis=(0, 1)), atol=1e-6)
    for level, ref in enumerate(ref_pyramid(b)):
        np.testing.assert_allclose(odd.level_numpy(0, level), ref, atol=1e-6)
    assert TexturePool.build([_arr(a)], ["wrap"], mipmaps=False).sizes[0] == [(4, 4)]


def test_trilinear_at_lod_one_equals_level_one_bilinear(device):
    rng = np.random.default_rng(4)
    tex = rng.random((8, 8, 3)).astype(np.float32)
    uv = rng.uniform(0, 1, (16, 2)).astype(np.float32)
    pool = TexturePool.build([_arr(tex)], ["wrap"])
    da = np.tile([2 / 8, 0.0, 0.0, 2 / 8], (16, 1))  # a footprint of 2 texels: lod = 1
    got = sample(pool, _idx(np.zeros(16)), _arr(uv), _arr(da)).numpy()
    level1 = tex.reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(got, ref_bilinear(level1, uv[:, 0], uv[:, 1], "wrap"), atol=ATOL)
    # the exposed device function at level 1 agrees
    out = wp.zeros(16, dtype=wp.vec3)
    wp.launch(_probe_level, dim=16, inputs=[pool.data, pool.table, 0, 1, _arr(uv), out])
    np.testing.assert_allclose(out.numpy(), got, atol=ATOL)
    # lod 1.5 (footprint 2 * sqrt(2) along a diagonal) is the midpoint of levels 1 and 2
    da = np.tile([2 / 8, 0.0, 2 / 8, 0.0], (16, 1))
    got = sample(pool, _idx(np.zeros(16)), _arr(uv), _arr(da)).numpy()
    level2 = level1.reshape(2, 2, 2, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(got, 0.5 * ref_bilinear(level1, uv[:, 0], uv[:, 1], "wrap")
                               + 0.5 * ref_bilinear(level2, uv[:, 0], uv[:, 1], "wrap"), atol=ATOL)


@pytest.mark.parametrize("wrap", ["wrap", "clamp"])
def test_trilinear_matches_numpy_reference_anisotropic(wrap, device):
    rng = np.random.default_rng(5)
    tex = rng.random((4, 16, 3)).astype(np.float32)  # w != h exercises the per-axis scaling of the lod
    n = 40
    uv = rng.uniform(-0.5, 1.5, (n, 2)).astype(np.float32)
    da = (rng.uniform(-0.3, 0.3, (n, 4)) * rng.uniform(0, 1, (n, 1)) ** 2).astype(np.float32)
    pool = TexturePool.build([_arr(tex)], [wrap])
    got = sample(pool, _idx(np.zeros(n)), _arr(uv), _arr(da)).numpy()
    np.testing.assert_allclose(got, ref_trilinear(tex, uv[:, 0], uv[:, 1], da, wrap), atol=ATOL)


def test_checkerboard_minified_averages_with_mipmaps_and_aliases_without(device):
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[..., None]
    grid = (8 * np.arange(8) + 0.5) / 64  # texel centers 8 texels apart: all the same checker color
    uv = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2).astype(np.float32)
    da = _arr(np.tile([8 / 64, 0.0, 0.0, 8 / 64], (64, 1)))  # one pixel spans 8 texels: lod 3
    idx = _idx(np.zeros(64))
    mipped = sample(TexturePool.build([_arr(checker)], ["wrap"]), idx, _arr(uv), da).numpy()
    aliased = sample(TexturePool.build([_arr(checker)], ["wrap"], mipmaps=False), idx, _arr(uv), da).numpy()
    np.testing.assert_allclose(mipped, 0.5, atol=1e-6)
    assert np.all(np.isin(aliased, [0.0, 1.0])) and abs(aliased.mean() - 0.5) > 0.45


def test_many_textures_in_one_pool_by_index(device):
    rng = np.random.default_rng(6)
    for c in (3, 1):
        texs = [rng.random(s + (c,)).astype(np.float32) for s in [(3, 5), (1, 1), (6, 4), (2, 2)]]
        wraps = ["wrap", "clamp", "clamp", "wrap"]
        pool = TexturePool.build([_arr(t) for t in texs], wraps)
        assert pool.count == 4 and pool.channels == c
        n = 80
        index = rng.integers(-1, 4, n).astype(np.int32)
        uv = rng.uniform(-0.7, 1.7, (n, 2)).astype(np.float32)
        da = (rng.uniform(-0.5, 0.5, (n, 4)) * rng.uniform(0, 1, (n, 1)) ** 2).astype(np.float32)
        got_bi = sample(pool, _idx(index), _arr(uv)).numpy()
        got_tri = sample(pool, _idx(index), _arr(uv), _arr(da)).numpy()
        assert got_bi.shape == (n, c)
        for k in range(n):
            t = index[k]
            if t < 0:
                np.testing.assert_array_equal(got_bi[k], 0.0)
                np.testing.assert_array_equal(got_tri[k], 0.0)
                continue
            ref = ref_bilinear(texs[t], uv[k:k + 1, 0], uv[k:k + 1, 1], wraps[t])[0]
            np.testing.assert_allclose(got_bi[k], ref, atol=ATOL)
            ref = ref_trilinear(texs[t], uv[k:k + 1, 0], uv[k:k + 1, 1], da[k:k + 1], wraps[t])[0]
            np.testing.assert_allclose(got_tri[k], ref, atol=ATOL)


def test_negative_index_gives_zeros_and_no_gradient(device):
    tex = _arr(np.ones((2, 2, 3)), grad=True)
    uv = _arr(np.full((5, 2), 0.3), grad=True)
    tape = wp.Tape()
    with tape:
        out = sample(TexturePool.build([tex], ["wrap"]), _idx(-np.ones(5)), uv)
        loss = weighted_loss(out)
    tape.backward(loss)
    np.testing.assert_array_equal(out.numpy(), 0.0)
    np.testing.assert_array_equal(tex.grad.numpy(), 0.0)
    np.testing.assert_array_equal(uv.grad.numpy(), 0.0)


# ---- gradients --------------------------------------------------------------------------------------------
# The loss is linear in the texels, so central differences are exact up to roundoff: with eps = 0.05 and
# |L| <~ 30 that is ~6e-8 * 30 / 0.1 ~ 2e-5, hence atol 1e-3. For uv, each sample is linear in u (and in v)
# between texel-center lines; probes stay >= 0.1 texel away from them at every level involved and
# eps * w <= 0.04 texel, so the difference is again exact up to roundoff 6e-8 * 30 / 1e-2 ~ 2e-4.


def _grad_setup(seed, n=24, mips=False):
    rng = np.random.default_rng(seed)
    texs = [_arr(rng.random((3, 4, 3)), grad=True), _arr(rng.random((6, 8, 3)), grad=True)]
    wraps = ["wrap", "clamp"]
    index = _idx(rng.integers(0, 2, n))
    sizes = [(4, 3), (8, 6), (4, 3), (2, 1), (1, 1)]  # level sizes of both textures
    uv = _arr(_away_from_centers(rng, n, sizes), grad=True)
    # footprints of 1.3 .. 3.5 texels of the 8x6 texture: fractional lods in (0.4, 1.8)
    da = _arr(np.column_stack([rng.uniform(1.3, 3.5, n) / 8, np.zeros(n), np.zeros(n), np.zeros(n)]))
    da = da if mips else None

    def forward():
        pool = TexturePool.build(texs, wraps)
        return weighted_loss(sample(pool, index, uv, da))

    return texs, uv, forward


@pytest.mark.parametrize("mips", [False, True])
def test_gradient_wrt_source_texels(mips, device):
    texs, _, forward = _grad_setup(7, mips=mips)
    for t in texs:
        check_gradient(forward, t, eps=0.05, rtol=1e-3, atol=1e-3, indices=range(t.size))


@pytest.mark.parametrize("mips", [False, True])
def test_gradient_wrt_uv(mips, device):
    _, uv, forward = _grad_setup(8, mips=mips)
    check_gradient(forward, uv, eps=5e-3, rtol=1e-2, atol=2e-3, indices=range(uv.size))


def _scaled_setup(seed, n=20):
    rng = np.random.default_rng(seed)
    tex = _arr(rng.random((5, 7, 3)), grad=True)  # odd sizes: clamped 2x2 footprints overlap in the pyramid
    index = _idx(np.where(rng.random(n) < 0.15, -1, 0))
    uv = _arr(_away_from_centers(rng, n, [(7, 5), (3, 2), (1, 1)]), grad=True)
    da = _arr(np.column_stack([rng.uniform(1.3, 3.0, n) / 7, np.zeros(n), np.zeros(n), np.zeros(n)]))
    scale = _arr(rng.uniform(0.5, 1.5, (n, 3)), grad=True)

    def forward():
        pool = TexturePool.build([tex], ["wrap"])
        # two samples share uv, so uv's gradient must accumulate both adjoints
        a = sample(pool, index, uv, da, scale=scale)
        b = sample(pool, index, uv, None)
        loss = weighted_loss(a, seed=1)
        extra = weighted_loss(b, seed=2)
        wp.launch(_add_scalar, dim=1, inputs=[extra, loss])
        return loss

    return tex, uv, scale, index, da, forward


@wp.kernel
def _add_scalar(src: wp.array(dtype=float), dst: wp.array(dtype=float)):
    wp.atomic_add(dst, 0, src[0])


def test_scale_multiplies_the_sample(device):
    tex, uv, scale, index, da, _ = _scaled_setup(11)
    pool = TexturePool.build([tex], ["wrap"])
    plain = sample(pool, index, uv, da).numpy()
    np.testing.assert_array_equal(sample(pool, index, uv, da, scale=scale).numpy(), plain * scale.numpy())


@pytest.mark.parametrize("which", ["texels", "uv", "scale"])
def test_gradients_with_scale_and_shared_uv(which, device):
    tex, uv, scale, _, _, forward = _scaled_setup(12)
    if which == "texels":
        check_gradient(forward, tex, eps=0.05, rtol=1e-3, atol=1e-3, indices=range(tex.size))
    elif which == "uv":
        check_gradient(forward, uv, eps=5e-3, rtol=1e-2, atol=2e-3, indices=range(uv.size))
    else:
        check_gradient(forward, scale, eps=0.05, rtol=1e-3, atol=1e-3, indices=range(scale.size))


def test_no_gradient_through_lod(device):
    rng = np.random.default_rng(9)
    pool_src = _arr(rng.random((8, 8, 3)), grad=True)
    uv = _arr(rng.uniform(0, 1, (6, 2)), grad=True)
    da = _arr(rng.uniform(0.1, 0.3, (6, 4)), grad=True)
    tape = wp.Tape()
    with tape:
        loss = weighted_loss(sample(TexturePool.build([pool_src], ["wrap"]), _idx(np.zeros(6)), uv, da))
    tape.backward(loss)
    np.testing.assert_array_equal(da.grad.numpy(), 0.0)
    assert np.abs(uv.grad.numpy()).max() > 0 and np.abs(pool_src.grad.numpy()).max() > 0


# ---- argument validation ----------------------------------------------------------------------------------


def test_build_rejects_bad_arguments(device):
    good, gray = _arr(np.zeros((2, 2, 3))), _arr(np.zeros((2, 2, 1)))
    cases = [
        (ValueError, "textures", lambda: TexturePool.build([], [])),
        (TypeError, r"textures\[0\]", lambda: TexturePool.build([np.zeros((2, 2, 3))], ["wrap"])),
        (TypeError, r"textures\[0\]", lambda: TexturePool.build([_arr(np.zeros((2, 2)))], ["wrap"])),
        (ValueError, r"textures\[0\]", lambda: TexturePool.build([_arr(np.zeros((2, 2, 4)))], ["wrap"])),
        (ValueError, r"textures\[1\]", lambda: TexturePool.build([good, gray], ["wrap"] * 2)),
        (ValueError, "wraps", lambda: TexturePool.build([good], ["wrap", "wrap"])),
        (ValueError, r"wraps\[0\]", lambda: TexturePool.build([good], ["mirror"])),
        (TypeError, "mipmaps", lambda: TexturePool.build([good], ["wrap"], mipmaps="yes")),
    ]
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()


def test_sample_rejects_bad_scale(device):
    pool = TexturePool.build([_arr(np.zeros((2, 2, 3)))], ["wrap"])
    uv, idx = _arr(np.zeros((4, 2))), _idx(np.zeros(4))
    with pytest.raises(ValueError, match="scale"):
        sample(pool, idx, uv, None, scale=_arr(np.zeros((4, 1))))
    with pytest.raises(TypeError, match="scale"):
        sample(pool, idx, uv, None, scale=np.zeros((4, 3)))


def test_sample_rejects_bad_arguments(device):
    pool = TexturePool.build([_arr(np.zeros((2, 2, 3)))], ["wrap"])
    idx, uv = _idx(np.zeros(4)), _arr(np.zeros((4, 2)))
    cases = [
        (TypeError, "pool", lambda: sample(None, idx, uv)),
        (TypeError, "uv", lambda: sample(pool, idx, _arr(np.zeros((4, 3))))),
        (TypeError, "tex_index", lambda: sample(pool, _arr(np.zeros(4)), uv)),
        (ValueError, "tex_index", lambda: sample(pool, _idx(np.zeros(3)), uv)),
        (ValueError, "uv_da", lambda: sample(pool, idx, uv, _arr(np.zeros((4, 2))))),
        (TypeError, "uv_da", lambda: sample(pool, idx, uv, _idx(np.zeros((4, 4))))),
    ]
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()


def test_uv_gradient_with_constant_texels(device):
    """Texels without gradient (e.g. a fixed texture in the torch op): only uv is differentiated."""
    rng = np.random.default_rng(13)
    tex = _arr(rng.random((6, 8, 3)))
    uv = _arr(_away_from_centers(rng, 16, [(8, 6)]), grad=True)
    index = _idx(np.zeros(16))

    def forward():
        return weighted_loss(sample(TexturePool.build([tex], ["clamp"], mipmaps=False), index, uv))

    check_gradient(forward, uv, eps=5e-3, rtol=1e-2, atol=2e-3, indices=range(uv.size))


@pytest.mark.parametrize("mips", [False, True])
def test_footprint_gather_equals_sample(mips, device):
    tex, uv, scale, index, da, _ = _scaled_setup(14)
    pool = TexturePool.build([tex], ["wrap"])
    da = da if mips else None
    fp = footprint(pool, index, uv, da)
    np.testing.assert_allclose(fp.weight.numpy().sum(1), np.where(index.numpy() >= 0, 1.0, 0.0), atol=1e-6)
    for s in (None, scale):
        np.testing.assert_allclose(sample_footprint(pool, fp, scale=s).numpy(),
                                   sample(pool, index, uv, da, scale=s).numpy(), rtol=1e-5, atol=1e-6)
    other = TexturePool.build([_arr(np.zeros((4, 4, 3)))], ["wrap"])
    with pytest.raises(ValueError, match="layout"):
        sample_footprint(other, fp)


@pytest.mark.parametrize("which", ["texels", "scale"])
def test_footprint_gradients(which, device):
    tex, uv, scale, index, da, _ = _scaled_setup(15)

    def forward():
        pool = TexturePool.build([tex], ["wrap"])
        return weighted_loss(sample_footprint(pool, footprint(pool, index, uv, da), scale=scale))

    arr = tex if which == "texels" else scale
    check_gradient(forward, arr, eps=0.05, rtol=1e-3, atol=1e-3, indices=range(arr.size))


def _level_by_level(textures, grads, mipmaps=True):
    """The pool's data, its gradient after the pyramid's adjoint and the sources' gradients by the per-level kernels
    (`_downsample`, `_downsample_adjoint`, `_copy_rows_adjoint`) from the pool's gradient `grads` (a gradient at every
    level, as sampling leaves it)."""
    from drstudio.renderer.stages import texture as T

    pool = TexturePool.build([_arr(t) for t in textures], ["wrap"] * len(textures), mipmaps=mipmaps)
    data = wp.zeros(pool.data.shape[0], dtype=float)
    adj = wp.array(grads, dtype=float)
    src_grads = []
    for k, t in enumerate(textures):
        h, w, c = t.shape
        chain, offs = pool.sizes[k], pool.offsets[k]
        wp.launch(T._copy_rows, dim=h, inputs=[_arr(t.reshape(-1)), data, offs[0], w * c])
        for level in range(1, len(chain)):
            (sw, sh), (dw, dh) = chain[level - 1], chain[level]
            wp.launch(T._downsample, dim=(dh, dw), inputs=[data, offs[level - 1], sw, sh, offs[level], dw, c])
        for level in range(len(chain) - 1, 0, -1):
            (sw, sh), (dw, dh) = chain[level - 1], chain[level]
            wp.launch(T._downsample_adjoint, dim=(dh, dw), inputs=[adj, offs[level - 1], sw, sh, offs[level], dw, c])
        g = _arr(np.full(t.size, 0.125))  # the sources' gradients accumulate
        wp.launch(T._copy_rows_adjoint, dim=h, inputs=[adj, offs[0], w * c, g])
        src_grads.append(g.numpy())
    return data.numpy(), adj.numpy(), src_grads


@pytest.mark.parametrize("mipmaps", [True, False])
def test_square_power_of_two_pyramid_equals_the_level_by_level_kernels(mipmaps, device):
    """A square power-of-two texture's pyramid and its adjoint run LEVELS_PER_LAUNCH levels a launch: the pool's
    texels, its gradient and the sources' gradients bit for bit those of one launch per level, next to a texture
    of another shape (the level-by-level path) in the same pool; for 1, 2, 3 channels."""
    rng = np.random.default_rng(7)
    for channels in (1, 2, 3):
        textures = [rng.random((s, s, channels)).astype(np.float32) for s in (128, 1, 2, 32)]
        textures.append(rng.random((3, 5, channels)).astype(np.float32))
        sources = [_arr(t, grad=True) for t in textures]
        for s in sources:
            s.grad.fill_(0.125)
        tape = wp.Tape()
        with tape:
            pool = TexturePool.build(sources, ["wrap"] * len(sources), mipmaps=mipmaps)
        grads = rng.standard_normal(pool.data.shape[0]).astype(np.float32)
        want_data, want_adj, want_grads = _level_by_level(textures, grads, mipmaps)
        np.testing.assert_array_equal(pool.data.numpy(), want_data)
        tape.backward(grads={pool.data: wp.array(grads, dtype=float)})
        np.testing.assert_array_equal(pool.data.grad.numpy(), want_adj)
        for s, want in zip(sources, want_grads, strict=True):
            np.testing.assert_array_equal(s.grad.numpy().reshape(-1), want)
