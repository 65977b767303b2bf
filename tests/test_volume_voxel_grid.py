"""Voxel-grid field: queries against NumPy, tape gradients, total variation, upsampling, float16 storage."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.volume import VoxelGrid, composite, sample_rays
from support.gradcheck import check_gradient, weighted_loss

BOX = (-1.0, -0.5, 0.0, 1.0, 0.5, 1.5)
RES = (4, 3, 5)


def vec3s(a):
    return wp.array(np.asarray(a, np.float32), dtype=wp.vec3)


def sh_basis(d):
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    c0, c1 = 0.28209479177387814, 0.4886025119029199
    return np.stack([np.full_like(x, c0), -c1 * y, c1 * z, -c1 * x, 1.0925484305920792 * x * y,
                     -1.0925484305920792 * y * z, 0.31539156525252005 * (2 * z * z - x * x - y * y),
                     -1.0925484305920792 * x * z, 0.5462742152960396 * (x * x - y * y)], axis=1)


def trilinear(values, box, p):
    """values (nx, ny, nz, C) at lattice points spanning the box; p (S, 3) -> (S, C)."""
    lo, hi, res = np.array(box[:3]), np.array(box[3:]), np.array(values.shape[:3])
    u = np.clip((p - lo) / (hi - lo), 0, 1) * (res - 1)
    i = np.minimum(np.floor(u).astype(int), res - 2)
    f = u - i
    out = 0.0
    for c in range(8):
        o = np.array([c & 1, (c >> 1) & 1, (c >> 2) & 1])
        w = np.prod(np.where(o == 1, f, 1 - f), axis=1)
        j = i + o
        out = out + w[:, None] * values[j[:, 0], j[:, 1], j[:, 2]]
    return out


def reference_query(density, sh, degree, activation, p, d):
    k = (degree + 1) ** 2
    raw = trilinear(density[..., None].astype(np.float64), BOX, p)[:, 0]
    sigma = np.logaddexp(0.0, raw) if activation == "softplus" else np.maximum(raw, 0.0)
    coeffs = trilinear(sh.astype(np.float64), BOX, p).reshape(-1, 3, k)
    color = 1.0 / (1.0 + np.exp(-(coeffs * sh_basis(d)[:, None, :k]).sum(-1)))
    return sigma, color


def points(n=20, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = np.array(BOX[:3]), np.array(BOX[3:])
    p = rng.uniform(lo - 0.1, hi + 0.1, (n, 3))  # a few outside: clamped into the box
    d = rng.normal(size=(n, 3))
    return p, d / np.linalg.norm(d, axis=1, keepdims=True)


def random_grid(degree, activation="softplus", dtype=wp.float32, seed=0):
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    density = rng.uniform(-1.5, 1.5, RES)
    sh = rng.uniform(-1, 1, (*RES, 3 * k))
    return VoxelGrid(RES, BOX, degree, dtype, activation, density=density, sh=sh), density, sh


@pytest.mark.parametrize("activation", ["softplus", "relu"])
@pytest.mark.parametrize("degree", [0, 1, 2])
def test_query_matches_numpy(degree, activation, device):
    grid, density, sh = random_grid(degree, activation)
    p, d = points()
    sigma, color = grid.query(vec3s(p), vec3s(d))
    want_sigma, want_color = reference_query(density.astype(np.float32), sh.astype(np.float32), degree,
                                             activation, p.astype(np.float32), d.astype(np.float32))
    np.testing.assert_allclose(sigma.numpy(), want_sigma, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(color.numpy(), want_color, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grid.query_density(vec3s(p)).numpy(), want_sigma, rtol=1e-5, atol=1e-6)


def test_lattice_points_are_interpolated_exactly(device):
    grid, density, _ = random_grid(0, "relu")
    lo, hi = np.array(BOX[:3]), np.array(BOX[3:])
    idx = np.array([[0, 0, 0], [3, 2, 4], [1, 2, 3], [2, 0, 1]])
    p = lo + idx / (np.array(RES) - 1) * (hi - lo)
    got = grid.query_density(vec3s(p)).numpy()
    np.testing.assert_allclose(got, np.maximum(density[idx[:, 0], idx[:, 1], idx[:, 2]], 0), rtol=1e-5, atol=1e-6)


# Density and color are smooth in the grid values (trilinear weights are constants of the points;
# softplus and sigmoid have bounded derivatives); the weighted sums over 20 samples are O(1) with float32
# roundoff ~1e-6, so eps = 1e-3 gives differences good to ~1e-3; truncation eps^2 |f'''|/6 < 1e-6.
# Relu is probed away from its kink: for these draws |raw| >= 0.06 >> eps at every point.
@pytest.mark.parametrize(("degree", "activation", "which"),
                         [(0, "softplus", "density"), (2, "softplus", "density"), (2, "relu", "density"),
                          (0, "softplus", "sh"), (1, "softplus", "sh"), (2, "relu", "sh")])
def test_query_gradients(degree, activation, which, device):
    grid, _, _ = random_grid(degree, activation, seed=1)
    p, d = points(seed=2)
    pos, dirs = vec3s(p), vec3s(d)

    def forward():
        sigma, color = grid.query(pos, dirs)
        loss = weighted_loss(sigma, seed=3)
        wp.launch(_add, dim=1, inputs=[weighted_loss(color, seed=4), loss])
        return loss

    param = grid.density if which == "density" else grid.sh
    # probe entries the points actually touch
    touched = np.flatnonzero(_touched(grid, p, which))
    idx = np.random.default_rng(0).choice(touched, size=min(10, len(touched)), replace=False)
    check_gradient(forward, param, eps=1e-3, rtol=1e-2, atol=2e-3, indices=idx)


def test_query_density_gradient(device):
    grid, _, _ = random_grid(1, seed=11)
    p, _ = points(seed=12)
    pos = vec3s(p)
    idx = np.flatnonzero(_touched(grid, p, "density"))[::2][:10]
    check_gradient(lambda: weighted_loss(grid.query_density(pos)), grid.density, eps=1e-3, rtol=1e-2, atol=2e-3,
                   indices=idx)


@wp.kernel
def _add(a: wp.array(dtype=float), out: wp.array(dtype=float)):
    wp.atomic_add(out, 0, a[0])


def _touched(grid, p, which):
    """Mask of grid entries within the interpolation stencil of the points."""
    lo, hi, res = np.array(BOX[:3]), np.array(BOX[3:]), np.array(RES)
    u = np.clip((p - lo) / (hi - lo), 0, 1) * (res - 1)
    i = np.minimum(np.floor(u).astype(int), res - 2)
    mask = np.zeros(RES, bool)
    for c in range(8):
        j = i + [c & 1, (c >> 1) & 1, (c >> 2) & 1]
        mask[j[:, 0], j[:, 1], j[:, 2]] = True
    if which == "sh":
        mask = np.repeat(mask[..., None], 3 * grid.n_coeffs, axis=-1)
    return mask.reshape(-1)


def tv_reference(v):
    """Mean over points and channels of the summed squared forward differences."""
    v = v.reshape(*v.shape[:3], -1).astype(np.float64)
    e = sum((np.diff(v, axis=a) ** 2).sum() for a in range(3))
    return e / v.size


def test_total_variation_matches_numpy_and_its_gradients(device):
    grid, density, sh = random_grid(1, seed=5)
    loss = wp.zeros(1, dtype=float, requires_grad=True)
    grid.total_variation(loss, 0.7, sh_weight=0.3)
    want = 0.7 * tv_reference(density.astype(np.float32)) + 0.3 * tv_reference(sh.astype(np.float32))
    np.testing.assert_allclose(loss.numpy()[0], want, rtol=1e-5)

    def forward():
        out = wp.zeros(1, dtype=float, requires_grad=True)
        grid.total_variation(out, 0.7, sh_weight=0.3)
        return out

    # quadratic: central differences are exact up to roundoff (loss ~1, eps 1e-2: error ~1e-5)
    check_gradient(forward, grid.density, eps=1e-2, rtol=1e-3, atol=1e-4, probes=10)
    check_gradient(forward, grid.sh, eps=1e-2, rtol=1e-3, atol=1e-4, probes=10)


def tv_and_gradients(grid, rows):
    """(loss, density gradient, SH gradient) of `grid.total_variation(out, 0.7, sh_weight=0.3, rows=rows)`."""
    out = wp.zeros(1, dtype=float, requires_grad=True)
    grid.density.grad.zero_()
    grid.sh.grad.zero_()
    tape = wp.Tape()
    with tape:
        grid.total_variation(out, 0.7, sh_weight=0.3, rows=rows)
    tape.backward(out)
    return out.numpy()[0], grid.density.grad.numpy().copy(), grid.sh.grad.numpy().copy()


def test_total_variation_slabs_add_up_to_the_whole_lattice(device):
    """`rows`: the differences that start in the slab (NumPy), and the TV gradient of the slab's points exactly
    (the full gradient's rows); slabs covering the lattice add up to the whole loss and gradient."""
    grid, density, sh = random_grid(1, seed=6)

    def tv(rows):
        return tv_and_gradients(grid, rows)

    def slab_reference(v, x0, x1):
        v = v.reshape(*v.shape[:3], -1).astype(np.float64)
        e = sum((np.diff(v, axis=a)[x0:x1] ** 2).sum() for a in (1, 2)) + (np.diff(v, axis=0)[x0:x1] ** 2).sum()
        return e / v.size

    whole, g_density, g_sh = tv(None)
    nx = RES[0]
    for x0, x1 in ((0, 1), (1, nx), (0, 2), (2, nx), (3, 3)):
        loss, d, s = tv((x0, x1))
        want = 0.7 * slab_reference(density.astype(np.float32), x0, x1) + \
            0.3 * slab_reference(sh.astype(np.float32), x0, x1)
        np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)
        inside = np.zeros(nx, bool)
        inside[x0:x1] = True
        np.testing.assert_array_equal(d[inside], g_density[inside])
        np.testing.assert_array_equal(s[inside], g_sh[inside])
        assert not d[~inside].any() and not s[~inside].any()
    parts = [tv((0, 2)), tv((2, nx))]
    np.testing.assert_allclose(parts[0][0] + parts[1][0], whole, rtol=1e-6)
    np.testing.assert_array_equal(parts[0][1] + parts[1][1], g_density)
    with pytest.raises(ValueError, match="rows"):
        grid.total_variation(wp.zeros(1, dtype=float), 1.0, rows=(2, nx + 1))


@pytest.mark.parametrize("workers", [2, 3])
def test_threaded_total_variation_has_the_one_thread_gradients(workers, device):
    """TV on `workers` threads (sub-slabs of x): every gradient entry is one thread's bit for bit, the loss (summed
    per thread) equal to float32 round-off; with `rows` the threads split the slab."""
    rng = np.random.default_rng(8)
    res = (26, 5, 4)
    grid = VoxelGrid(res, BOX, 1, density=rng.uniform(-1, 1, res), sh=rng.uniform(-1, 1, (*res, 12)))
    results = []
    for k, rows in ((1, None), (workers, None), (1, (3, 21)), (workers, (3, 21))):
        grid.workers = k
        results.append(tv_and_gradients(grid, rows))
    for one, many in (results[:2], results[2:]):
        np.testing.assert_allclose(many[0], one[0], rtol=1e-6)
        np.testing.assert_array_equal(many[1], one[1])
        np.testing.assert_array_equal(many[2], one[2])
    assert results[2][1][3:21].any() and not results[2][1][:3].any()


def test_upsample_reproduces_a_linear_field_and_lattice_values(device):
    lo, hi = np.array(BOX[:3]), np.array(BOX[3:])

    def lattice(res):
        axes = [np.linspace(lo[a], hi[a], res[a]) for a in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), -1)

    def linear(x):
        return 0.5 + x @ np.array([1.0, -2.0, 0.5])

    coarse = VoxelGrid(RES, BOX, 1, density=linear(lattice(RES)),
                       sh=np.stack([linear(lattice(RES)) * s for s in np.linspace(-1, 1, 12)], -1))
    fine = coarse.upsample((7, 9, 6))
    assert fine.resolution == (7, 9, 6) and fine.sh_degree == 1 and fine.aabb == coarse.aabb
    # trilinear interpolation reproduces a linear function exactly
    np.testing.assert_allclose(fine.density.numpy(), linear(lattice((7, 9, 6))), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fine.sh.numpy()[..., 11], linear(lattice((7, 9, 6))), rtol=1e-5, atol=1e-5)
    # a random grid upsampled to a lattice containing its own points keeps its values there
    grid, _, _ = random_grid(2, seed=6)
    fine = grid.upsample(tuple(2 * r - 1 for r in RES))
    lattice_pts = lattice(RES).reshape(-1, 3)[::3]
    dirs = np.tile([0.0, 0.0, 1.0], (len(lattice_pts), 1))
    for a, b in zip(grid.query(vec3s(lattice_pts), vec3s(dirs)), fine.query(vec3s(lattice_pts), vec3s(dirs))):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)


def test_float16_storage_halves_memory_and_keeps_the_render(device):
    grid, _, _ = random_grid(2, seed=8)
    half = grid.astype(wp.float16)
    assert half.density.dtype == wp.float16 and half.sh.dtype == wp.float16
    assert half.nbytes * 2 == grid.nbytes == 4 * (np.prod(RES) * (1 + 27))
    p, d = points(seed=9)
    a, b = grid.query(vec3s(p), vec3s(d)), half.query(vec3s(p), vec3s(d))
    # values in [-1.5, 1.5] round to 2^-11 relative: outputs move by < 1e-3
    np.testing.assert_allclose(b[0].numpy(), a[0].numpy(), atol=1e-3)
    np.testing.assert_allclose(b[1].numpy(), a[1].numpy(), atol=1e-3)
    # a float16 grid is differentiable too (gradients accumulate in float16)
    tape = wp.Tape()
    with tape:
        loss = weighted_loss(half.query(vec3s(p), vec3s(d))[1])
    tape.backward(loss)
    tape32 = wp.Tape()
    with tape32:
        loss32 = weighted_loss(grid.query(vec3s(p), vec3s(d))[1])
    tape32.backward(loss32)
    g16, g32 = half.sh.grad.numpy().astype(np.float32), grid.sh.grad.numpy()
    assert half.sh.grad.dtype == wp.float16
    np.testing.assert_allclose(g16, g32, atol=2e-3 * np.abs(g32).max())


@pytest.mark.parametrize("workers", [2, 3])
def test_threaded_query_is_the_one_thread_query_bit_for_bit(workers, monkeypatch, device):
    """`workers` threads: the forward over ranges of the samples, the adjoint and the touched flags over slabs of
    the lattice's x axis; values, gradients and flags are those of one thread exactly (same adds, same order)."""
    from drstudio.renderer.volume import voxel_grid

    monkeypatch.setattr(voxel_grid, "MIN_SAMPLES_PER_THREAD", 64)
    rng = np.random.default_rng(3)
    res, n = (17, 9, 11), 3000
    lo, hi = np.array(BOX[:3]), np.array(BOX[3:])
    p = lo + (hi - lo) * rng.beta(2.0, 5.0, (n, 3))  # crowded towards low x: the slabs must balance, not halve
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    w_sigma, w_color = rng.normal(size=n).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32)
    results = []
    density, sh = rng.uniform(-1, 1, res), rng.uniform(-1, 1, (*res, 12))
    for k in (1, workers):
        grid = VoxelGrid(res, BOX, 1, density=density, sh=sh)
        grid.workers = k
        grid.touched = wp.zeros(res, dtype=wp.uint8)
        pos = vec3s(p)
        if k > 1:
            slabs = grid._slabs(pos, k)
            assert len(slabs) == k and slabs[0][0] == 0 and slabs[-1][1] == res[0]
            assert all(a < b for a, b in slabs) and slabs[0][1] < res[0] // 2  # cut where the samples are
        tape = wp.Tape()
        with tape:
            sigma, color = grid.query(pos, vec3s(d))
        sigma.grad.assign(w_sigma)
        color.grad.assign(w_color)
        tape.backward()
        results.append([sigma.numpy(), color.numpy(), grid.density.grad.numpy(), grid.sh.grad.numpy(),
                        grid.touched.numpy()])
    for one, many in zip(*results, strict=True):
        np.testing.assert_array_equal(many, one)
    assert results[0][4].any() and not results[0][4].all()


def test_fresh_grid_has_the_initial_density(device):
    for activation in ("softplus", "relu"):
        grid = VoxelGrid(3, BOX, 0, activation=activation, init_density=0.25)
        sigma, color = grid.query(vec3s([[0.1, 0.2, 0.3]]), vec3s([[0.0, 0.0, 1.0]]))
        np.testing.assert_allclose(sigma.numpy(), [0.25], rtol=1e-5)
        np.testing.assert_allclose(color.numpy(), [[0.5, 0.5, 0.5]], rtol=1e-6)


def test_render_through_a_grid_is_differentiable_end_to_end(device):
    # sample_rays -> query -> composite: the density gradient of a rendered pixel matches FD
    grid, _, _ = random_grid(1, seed=10)
    o = np.array([[0.1 * i - 0.4, 0.05 * i - 0.2, 3.0] for i in range(8)])
    d = np.tile([0.05, 0.02, -1.0], (8, 1))
    samples = sample_rays(vec3s(o), vec3s(d), BOX, 12, seed=1)
    bg = wp.array(np.array([0.2, 0.3, 0.4], np.float32), dtype=float)

    def forward():
        sigma, color = grid.query(samples.positions, samples.directions)
        return weighted_loss(composite(sigma, color, samples, bg, min_transmittance=0.0)[0])

    check_gradient(forward, grid.density, eps=1e-3, rtol=1e-2, atol=2e-3, probes=10,
                   indices=np.flatnonzero(_touched(grid, samples.positions.numpy(), "density"))[::3][:10])
    check_gradient(forward, grid.sh, eps=1e-3, rtol=1e-2, atol=2e-3, probes=10,
                   indices=np.flatnonzero(_touched(grid, samples.positions.numpy(), "sh"))[::17][:10])


def test_validation_errors_name_the_argument(device):
    with pytest.raises(ValueError, match="resolution"):
        VoxelGrid(1, BOX)
    with pytest.raises(ValueError, match="aabb"):
        VoxelGrid(4, (0, 0, 0, 1, 1))
    with pytest.raises(ValueError, match="sh_degree"):
        VoxelGrid(4, BOX, sh_degree=3)
    with pytest.raises(TypeError, match="dtype"):
        VoxelGrid(4, BOX, dtype=wp.float64)
    with pytest.raises(ValueError, match="activation"):
        VoxelGrid(4, BOX, activation="exp")
    with pytest.raises(ValueError, match="density"):
        VoxelGrid(4, BOX, density=np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="sh"):
        VoxelGrid(4, BOX, sh_degree=1, sh=np.zeros((4, 4, 4, 3)))
    grid = VoxelGrid(4, BOX)
    with pytest.raises(TypeError, match="positions"):
        grid.query(np.zeros((2, 3)), vec3s(np.zeros((2, 3))))
    with pytest.raises(ValueError, match="directions"):
        grid.query(vec3s(np.zeros((2, 3))), vec3s(np.zeros((3, 3))))
    with pytest.raises(ValueError, match="out_loss"):
        grid.total_variation(wp.zeros(2, dtype=float), 1.0)
    with pytest.raises(ValueError, match="new_resolution"):
        grid.upsample(0)
