"""Hash-grid encoding: hash and level resolutions, forward features against an independent NumPy reference,
table and point gradients, sparsity of the table gradient, the torch wrapper, CPU determinism."""

import numpy as np
import pytest
import torch
import warp as wp
from drstudio.renderer.volume.hash_grid import HashGridEncoding
from support.gradcheck import check_gradient, weighted_loss

BOX = (-1.0, -0.5, 0.0, 1.0, 0.5, 1.5)  # not a cube: each axis is normalized by its own extent
# 5 levels, 2^9 entries: resolutions 2, 3, 4, 6, 10 -> (N+1)^3 = 27, 64, 125, 343 (dense) and 1331 (hashed)
CONFIG = dict(n_levels=5, log2_table_size=9, n_features=4, base_resolution=2, growth=1.5)


# ---- an independent NumPy reference (uint64 arithmetic reduced mod 2^32, float64 interpolation) ----

def ref_resolutions(n_levels, base, growth):
    return np.floor(base * growth ** np.arange(n_levels, dtype=np.float64)).astype(np.int64)


def ref_hash(x, y, z, table_size):
    x, y, z = (np.asarray(v, np.uint64) for v in (x, y, z))
    m32 = np.uint64(0xFFFFFFFF)
    h = (x & m32) ^ ((y * np.uint64(2654435761)) & m32) ^ ((z * np.uint64(805459861)) & m32)
    return (h % np.uint64(table_size)).astype(np.int64)


def ref_rows(p, box, n_levels, log2_t, base, growth):
    """(rows (S, L, 8) into the flat table, weights (S, L, 8)) of points p (S, 3)."""
    lo, hi = np.array(box[:3]), np.array(box[3:])
    t = 2 ** log2_t
    u = np.clip((p - lo) / (hi - lo), 0.0, 1.0)
    rows = np.zeros((len(p), n_levels, 8), np.int64)
    weights = np.zeros((len(p), n_levels, 8))
    for level, res in enumerate(ref_resolutions(n_levels, base, growth)):
        s = u * res
        i = np.minimum(np.floor(s), res - 1).astype(np.int64)
        f = s - i
        for c in range(8):
            o = np.array([c & 1, (c >> 1) & 1, (c >> 2) & 1])
            j = i + o
            if (res + 1) ** 3 <= t:
                idx = j[:, 0] + (res + 1) * j[:, 1] + (res + 1) ** 2 * j[:, 2]
            else:
                idx = ref_hash(j[:, 0], j[:, 1], j[:, 2], t)
            rows[:, level, c] = level * t + idx
            weights[:, level, c] = np.prod(np.where(o == 1, f, 1.0 - f), axis=1)
    return rows, weights


def ref_encode(p, table, box=BOX, **cfg):
    rows, w = ref_rows(p, box, cfg["n_levels"], cfg["log2_table_size"], cfg["base_resolution"], cfg["growth"])
    feats = (w[..., None] * table.astype(np.float64)[rows]).sum(axis=2)  # (S, L, F)
    return feats.reshape(len(p), -1)


# ---- helpers ----

def points(n=64, seed=0, margin=0.1):
    rng = np.random.default_rng(seed)
    lo, hi = np.array(BOX[:3]), np.array(BOX[3:])
    return rng.uniform(lo - margin, hi + margin, (n, 3))  # a few outside: clamped into the box


def vec3s(a, grad=False):
    return wp.array(np.asarray(a, np.float32), dtype=wp.vec3, requires_grad=grad)


def make(seed=0, **over):
    cfg = {**CONFIG, **over}
    enc = HashGridEncoding(BOX, **cfg)
    table = np.random.default_rng(seed).uniform(-1, 1, enc.table_shape).astype(np.float32)
    return enc, cfg, table, wp.array(table, dtype=float, requires_grad=True)


# ---- tests ----

def test_level_resolutions_and_dense_levels():
    enc = HashGridEncoding(BOX, n_levels=16, log2_table_size=19, n_features=2, base_resolution=16, growth=1.3819)
    want = ref_resolutions(16, 16, 1.3819)
    assert enc.resolutions == tuple(int(r) for r in want)
    assert enc.resolutions[0] == 16 and enc.resolutions[-1] == 2047
    assert enc.dense == tuple(bool((r + 1) ** 3 <= 2**19) for r in want)
    assert enc.dense[:4] == (True, True, True, True) and not any(enc.dense[5:])  # 80^3 > 2^19 hashed
    assert HashGridEncoding.growth_for(16, 2048, 16) == pytest.approx(np.exp(np.log(128) / 15))
    small = HashGridEncoding(BOX, **CONFIG)
    assert small.resolutions == (2, 3, 4, 6, 10) and small.dense == (True, True, True, True, False)


@pytest.mark.parametrize("res", [64, 4096])
def test_hash_matches_numpy_reference(res):
    # with the table holding each row's index, a lattice point (offset f = 0, weight 1 on corner (i, j, k))
    # reads exactly its row; points i / res with res a power of two are exact in float32. Coordinates up to
    # 4096 make y * 2654435761 and z * 805459861 wrap modulo 2^32 many times.
    enc = HashGridEncoding((0, 0, 0, 1, 1, 1), n_levels=1, log2_table_size=10, n_features=1, base_resolution=res,
                           growth=1.0)
    assert enc.dense == (False,)  # (res + 1)^3 > 1024
    table = np.arange(1024, dtype=np.float32)[:, None]
    ijk = np.random.default_rng(1).integers(0, res, (300, 3))
    ijk[:4] = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    got = enc.encode(vec3s(ijk / res), wp.array(table, dtype=float)).numpy()[:, 0]
    want = ref_hash(ijk[:, 0], ijk[:, 1], ijk[:, 2], 1024)
    assert list(want[:4]) == [0, 1, 2654435761 % 1024, 805459861 % 1024]
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_forward_matches_numpy_trilinear():
    enc, cfg, table, tab = make()
    p = points(200).astype(np.float32)
    got = enc.encode(vec3s(p), tab).numpy()
    want = ref_encode(p.astype(np.float64), table, **cfg)
    assert got.shape == (200, 20)
    # float32 interpolation of O(1) values: the offsets f carry ~|s| * 6e-8 error, s <= 10
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_torch_wrapper_matches_warp_and_gradients():
    enc, cfg, table, tab = make(seed=3)
    p = points(50, seed=4).astype(np.float32)
    pt = torch.tensor(p, requires_grad=True)
    tt = torch.tensor(table, requires_grad=True)
    out = enc.encode_torch(pt, tt)
    np.testing.assert_array_equal(out.detach().numpy(), enc.encode(vec3s(p), tab).numpy())
    w = torch.tensor(np.random.default_rng(0).uniform(-1, 1, out.shape).astype(np.float32))
    (out * w).sum().backward()
    # against the Warp tape's gradients of the same loss
    pw = vec3s(p, grad=True)
    tape = wp.Tape()
    with tape:
        o = enc.encode(pw, tab)
    tape.backward(grads={o: wp.array(w.numpy(), dtype=float)})
    np.testing.assert_allclose(tt.grad.numpy(), tab.grad.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pt.grad.numpy(), pw.grad.numpy(), rtol=1e-6, atol=1e-6)
    # the weight gradient is the transposed interpolation: reference scatter
    rows, wts = ref_rows(p.astype(np.float64), BOX, cfg["n_levels"], cfg["log2_table_size"], cfg["base_resolution"],
                         cfg["growth"])
    g = w.numpy().reshape(50, cfg["n_levels"], cfg["n_features"]).astype(np.float64)
    want = np.zeros(table.shape)
    np.add.at(want, rows.reshape(-1), (wts[..., None] * g[:, :, None, :]).reshape(-1, cfg["n_features"]))
    np.testing.assert_allclose(tt.grad.numpy(), want, rtol=1e-5, atol=1e-5)


# The features are linear in the table, so central differences have no truncation error at any eps; the
# only error is float32 roundoff of the loss: sum of 64 x 20 terms w * out with |out| <= 1, |loss| ~ 10,
# each evaluation off by ~ sqrt(1280) * 6e-8 * 1 ~ 2e-6, so with eps = 1e-2 the difference quotient is good to
# ~ 2e-6 / 1e-2 = 2e-4: atol 1e-3, rtol 1e-3 leave a 5x margin.
@pytest.mark.parametrize("level", [0, 3, 4])  # dense, dense, hashed
def test_table_gradient_central_differences(level):
    enc, cfg, table, tab = make(seed=1)
    p = vec3s(points(64, seed=2))
    rows, _ = ref_rows(points(64, seed=2).astype(np.float32).astype(np.float64), BOX, cfg["n_levels"],
                       cfg["log2_table_size"], cfg["base_resolution"], cfg["growth"])
    touched = np.unique(rows[:, level, :])
    rng = np.random.default_rng(level)
    chosen = rng.choice(touched, size=min(8, len(touched)), replace=False)
    f = cfg["n_features"]
    idx = chosen * f + rng.integers(0, f, len(chosen))
    check_gradient(lambda: weighted_loss(enc.encode(p, tab), seed=7), tab, eps=1e-2, rtol=1e-3, atol=1e-3,
                   indices=idx)


def test_table_gradient_only_on_touched_rows():
    enc, cfg, _, tab = make(seed=2)
    p = points(20, seed=9).astype(np.float32)
    tape = wp.Tape()
    with tape:
        loss = weighted_loss(enc.encode(vec3s(p), tab), seed=1)
    tape.backward(loss)
    grad = tab.grad.numpy()
    rows, weights = ref_rows(p.astype(np.float64), BOX, cfg["n_levels"], cfg["log2_table_size"],
                             cfg["base_resolution"], cfg["growth"])
    touched = np.zeros(grad.shape[0], bool)
    touched[rows[weights > 0]] = True  # clamped points give some corners weight exactly 0
    assert touched.sum() < grad.shape[0] // 4  # the test is not vacuous
    assert np.all(grad[~touched] == 0.0)
    # generic weights and points: every touched row gets some gradient
    assert np.all(np.abs(grad[touched]).sum(axis=1) > 0)


# The features are trilinear in p inside a cell (smooth), so the float64 reference is differentiated by
# central differences with h = 1e-6 world units (truncation ~h^2 |f'''| ~ 1e-12 x res^3 ~ 1e-9); a step
# must not cross a cell face on any level: cells are >= 1/10 of the box, and points whose coordinate lies
# within 1e-5 of a face are skipped. The Warp gradient is float32: the products res / extent * table
# values sum ~8 * 10 terms of O(10): relative error ~1e-5, tolerance rtol 1e-4 plus atol 1e-3.
def test_point_gradient_matches_reference_differences():
    enc, cfg, table, tab = make(seed=4)
    p = points(40, seed=6, margin=0.0)[:, :]
    p32 = p.astype(np.float32).astype(np.float64)
    w = np.random.default_rng(2).uniform(-1, 1, (40, enc.output_dim))
    lo, hi = np.array(BOX[:3]), np.array(BOX[3:])
    keep = np.ones(40, bool)
    for res in enc.resolutions:
        s = (p32 - lo) / (hi - lo) * res
        keep &= np.all(np.abs(s - np.round(s)) > 1e-4 * res, axis=1)
    pw = vec3s(p32, grad=True)
    tape = wp.Tape()
    with tape:
        o = enc.encode(pw, tab)
    tape.backward(grads={o: wp.array(w.astype(np.float32), dtype=float)})
    got = pw.grad.numpy()
    h = 1e-6
    want = np.zeros((40, 3))
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        fp = (ref_encode(p32 + e, table, **cfg) * w).sum(axis=1)
        fm = (ref_encode(p32 - e, table, **cfg) * w).sum(axis=1)
        want[:, a] = (fp - fm) / (2 * h)
    assert keep.sum() >= 30
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-4, atol=1e-3)


def test_point_gradient_zero_outside_box():
    enc, _, _, tab = make(seed=5)
    p = np.array([[-1.5, 0.0, 0.7], [0.2, 0.9, 0.7], [0.3, 0.1, 2.0]])  # x, y, z clamped respectively
    pw = vec3s(p, grad=True)
    tape = wp.Tape()
    with tape:
        loss = weighted_loss(enc.encode(pw, tab))
    tape.backward(loss)
    g = pw.grad.numpy()
    assert g[0, 0] == 0.0 and g[1, 1] == 0.0 and g[2, 2] == 0.0
    assert np.all(g[0, 1:] != 0.0) and g[1, 0] != 0.0 and g[2, 0] != 0.0


def test_cpu_determinism():
    enc, _, _, _ = make()
    p = vec3s(points(3000, seed=8))
    results = []
    for _ in range(2):
        tab = wp.array(np.random.default_rng(0).uniform(-1, 1, enc.table_shape).astype(np.float32), dtype=float,
                       requires_grad=True)
        tape = wp.Tape()
        with tape:
            out = enc.encode(p, tab)
            loss = weighted_loss(out, seed=3)
        tape.backward(loss)
        results.append((out.numpy().copy(), tab.grad.numpy().copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_argument_errors():
    enc, _, _, tab = make()
    with pytest.raises(ValueError, match="n_levels"):
        HashGridEncoding(BOX, n_levels=0)
    with pytest.raises(ValueError, match="growth"):
        HashGridEncoding(BOX, growth=0.5)
    with pytest.raises(ValueError, match="aabb"):
        HashGridEncoding((0, 0, 0, 1, -1, 1))
    with pytest.raises(ValueError, match="table"):
        enc.encode(vec3s(points(3)), wp.zeros((10, 3), dtype=float))
    with pytest.raises(TypeError, match="points"):
        enc.encode(wp.zeros(3, dtype=float), tab)
    with pytest.raises(ValueError, match="table"):
        enc.encode_torch(torch.zeros(3, 3), torch.zeros(5, 3))
    with pytest.raises(TypeError, match="points"):
        enc.encode_torch(torch.zeros(3, 3, dtype=torch.float64), torch.zeros(enc.table_shape))


# ---- the hash-grid field (hash_field.py): SH basis, trunc_exp, rendering gradients ----

def test_field_sh_basis_matches_voxel_grid_reference():
    from drstudio.renderer.volume.hash_field import sh_basis_torch
    from test_volume_voxel_grid import sh_basis as reference_sh_basis
    d = np.random.default_rng(0).normal(size=(30, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    want = reference_sh_basis(d)
    for degree, k in ((0, 1), (1, 4), (2, 9)):
        got = sh_basis_torch(torch.tensor(d, dtype=torch.float32), degree).numpy()
        np.testing.assert_allclose(got, want[:, :k], rtol=1e-5, atol=1e-6)


def test_trunc_exp_clamps_its_gradient():
    from drstudio.renderer.volume.hash_field import trunc_exp
    x = torch.tensor([0.0, 2.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    y.sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), np.exp([0.0, 2.0, 20.0]), rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), np.exp([0.0, 2.0, 15.0]), rtol=1e-6)


def small_field(**over):
    from drstudio.renderer.volume.hash_field import HashGridField
    torch.manual_seed(0)
    kw = dict(n_levels=4, log2_table_size=10, n_features=2, base_resolution=4, finest_resolution=24, width=16,
              geo_features=7, color_layers=1, density_activation="softplus", density_scale=2.0)
    field = HashGridField(BOX, **{**kw, **over})
    with torch.no_grad():
        field.table.uniform_(-1.0, 1.0)  # O(1) features, so every parameter visibly moves the image
    return field


def field_rays(n=12, seed=0):
    rng = np.random.default_rng(seed)
    center = np.array([0.0, 0.0, 0.75])
    o = center + np.array([0.0, 0.0, 3.0]) + rng.uniform(-0.2, 0.2, (n, 3))
    target = center + rng.uniform(-0.5, 0.5, (n, 3))
    return torch.tensor(o, dtype=torch.float32), torch.tensor(target - o, dtype=torch.float32)


def test_field_render_gradient_of_table_central_differences():
    # rgb of a few rays through sample -> hash encoding (Warp) -> MLPs (torch) -> composite (Warp); the loss is a
    # fixed weighted sum of the colors. The MLPs are piecewise linear (ReLU) and a table step of eps = 1e-3 on
    # an O(1) table crosses a ReLU kink with probability ~1e-3 per unit; with float32 sums of O(1) terms the
    # difference quotient is good to ~1e-7 * 10 / 1e-3 = 1e-3 and truncation (softplus, sigmoid, exp) ~eps^2.
    from drstudio.renderer.volume.hash_field import render_rays
    field = small_field()
    o, d = field_rays()
    bg = torch.tensor([0.2, 0.3, 0.4])
    w = torch.tensor(np.random.default_rng(3).uniform(-1, 1, (12, 3)), dtype=torch.float32)

    def loss():
        rgb, _, _ = render_rays(field, o, d, 16, bg, jitter=False)
        return (rgb * w).sum()

    loss().backward()
    grad = field.table.grad.numpy()
    touched = np.flatnonzero(np.abs(grad).sum(axis=1) > 1e-6)
    assert len(touched) > 20
    rows = np.random.default_rng(1).choice(touched, size=8, replace=False)
    eps = 1e-3
    for r in rows:
        for k in range(2):
            with torch.no_grad():
                orig = float(field.table[r, k])
                field.table[r, k] = orig + eps
                lp = float(loss())
                field.table[r, k] = orig - eps
                lm = float(loss())
                field.table[r, k] = orig
            fd = (lp - lm) / (2 * eps)
            assert abs(grad[r, k] - fd) <= 2e-3 + 2e-2 * abs(fd), (r, k, grad[r, k], fd)


def test_field_with_occupancy_grid_and_density_fn():
    from drstudio.renderer.volume import OccupancyGrid
    from drstudio.renderer.volume.hash_field import render_rays
    field = small_field(density_activation="trunc_exp", density_bias=-1.0, color_layers=2, sh_degree=1)
    occ = OccupancyGrid(8, field.aabb)
    occ.update(field.density_fn(chunk=100), step=0)
    o, d = field_rays(seed=4)
    rgb, opacity, depth = render_rays(field, o, d, 16, torch.zeros(3), occupancy=occ, seed=2)
    assert rgb.shape == (12, 3) and opacity.shape == (12,)
    (rgb.sum() + opacity.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in field.parameters())
    # density_fn is query_density, without gradients
    pts = wp.array(points(50).astype(np.float32), dtype=wp.vec3)
    dens = field.density_fn()(pts).numpy()
    with torch.no_grad():
        want = field.query_density(torch.tensor(points(50), dtype=torch.float32)).numpy()
    np.testing.assert_allclose(dens, want, rtol=1e-6)


def test_encode_torch_into_adds_the_same_gradient_into_a_kept_buffer():
    enc, _, table, _ = make(seed=6)
    p = points(40, seed=3).astype(np.float32)
    w = torch.tensor(np.random.default_rng(4).uniform(-1, 1, (40, enc.output_dim)).astype(np.float32))
    tt = torch.tensor(table, requires_grad=True)
    pt = torch.tensor(p, requires_grad=True)
    (enc.encode_torch(pt, tt) * w).sum().backward()
    kept = torch.zeros(enc.table_shape)
    pk = torch.tensor(p, requires_grad=True)
    out = enc.encode_torch_into(pk, torch.tensor(table), kept)
    np.testing.assert_array_equal(out.detach().numpy(), enc.encode_torch(pt, tt).detach().numpy())
    (out * w).sum().backward()
    np.testing.assert_array_equal(kept.numpy(), tt.grad.numpy())
    np.testing.assert_array_equal(pk.grad.numpy(), pt.grad.numpy())
    # points without grad: the backward still runs (anchor) and adds again
    (enc.encode_torch_into(torch.tensor(p), torch.tensor(table), kept) * w).sum().backward()
    np.testing.assert_allclose(kept.numpy(), 2 * tt.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_field_kept_table_grad_matches_autograd():
    from drstudio.renderer.volume.hash_field import render_rays
    o, d = field_rays(seed=5)
    grads = []
    for kept in (False, True):
        field = small_field(kept_table_grad=kept)
        rgb, _, _ = render_rays(field, o, d, 16, torch.zeros(3), jitter=False)
        rgb.square().sum().backward()
        grads.append((field.table.grad.numpy().copy(), field.density_mlp[0].weight.grad.numpy().copy()))
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grads[1][1], grads[0][1], rtol=1e-6, atol=1e-8)


def test_benchmark_entry_point_smoke(capsys):
    from benchmarks import bench_hash_grid
    bench_hash_grid.main(["--batches", "64", "--repeat", "1"])  # also checks its Warp MLP against torch
    out = capsys.readouterr().out
    for row in ("hash field ngp", "hash field small kept grad", "hash encoding small", "neural field (pe)",
                "mlp warp 32-64-16", "| batch | case |"):
        assert row in out, row
