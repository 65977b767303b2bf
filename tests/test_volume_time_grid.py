"""Time-conditioned voxel grid: the blend and the TV terms against NumPy, gradients through `at_time` and
`total_variation` by central differences, per-thread tapes, occupancy queries, upsampling, and a small fit of
a moving ball."""

import math

import numpy as np
import pytest
import warp as wp
from drstudio.renderer import parallel
from drstudio.renderer.optim.losses import l2
from drstudio.renderer.optim.optimizers import Adam
from drstudio.renderer.stages.camera import generate_rays
from drstudio.renderer.volume import OccupancyGrid, TimeGrid, VoxelGrid, composite, sample_rays
from support.gradcheck import check_gradient, weighted_loss

BOX = (-1.0, -0.5, 0.0, 1.0, 0.5, 1.5)
RES = (4, 3, 5)
T = 4


def vec3s(a):
    return wp.array(np.asarray(a, np.float32), dtype=wp.vec3)


def random_grid(degree=1, seed=0, activation="softplus", n_times=T):
    rng = np.random.default_rng(seed)
    density = rng.uniform(-1.5, 1.5, (n_times, *RES))
    sh = rng.uniform(-1, 1, (n_times, *RES, 3 * (degree + 1) ** 2))
    return TimeGrid(RES, n_times, BOX, degree, activation, density=density, sh=sh), density, sh


def blend_reference(values, t):
    """Independent reference: linear interpolation in time between the slices at k / (T - 1)."""
    times = np.linspace(0, 1, len(values))
    flat = values.reshape(len(values), -1)
    return np.array([np.interp(t, times, flat[:, j]) for j in range(flat.shape[1])]).reshape(values.shape[1:])


@pytest.mark.parametrize("t", [0.0, 0.2, 1 / 3, 0.5, 0.9, 1.0])
def test_at_time_is_the_linear_blend_of_the_slices(t, device):
    grid, density, sh = random_grid(seed=1)
    g = grid.at_time(t)
    assert isinstance(g, VoxelGrid) and g.resolution == RES and g.aabb == grid.aabb and g.sh_degree == 1
    d32, sh32 = density.astype(np.float32), sh.astype(np.float32)
    np.testing.assert_allclose(g.density.numpy(), blend_reference(d32, t), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g.sh.numpy(), blend_reference(sh32, t), rtol=1e-6, atol=1e-6)
    # and it queries like a VoxelGrid holding those values
    rng = np.random.default_rng(2)
    p = rng.uniform(np.array(BOX[:3]), np.array(BOX[3:]), (16, 3))
    d = rng.normal(size=(16, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ref = VoxelGrid(RES, BOX, 1, density=blend_reference(d32, t), sh=blend_reference(sh32, t))
    for a, b in zip(g.query(vec3s(p), vec3s(d)), ref.query(vec3s(p), vec3s(d))):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grid.query_density_at(t)(vec3s(p)).numpy(), ref.query_density(vec3s(p)).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_slices_times_and_layout(device):
    grid, density, sh = random_grid(degree=2, seed=3)
    np.testing.assert_allclose(grid.times(), [0, 1 / 3, 2 / 3, 1])
    assert grid.density.shape == (T, *RES) and grid.sh.shape == (T * RES[0], *RES[1:], 27)
    np.testing.assert_allclose(grid.sh_slices(), sh.astype(np.float32))
    for k in range(T):
        np.testing.assert_allclose(grid.at_time(float(grid.times()[k])).density.numpy(),
                                   density[k].astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(grid.slice(k).sh.numpy(), sh[k].astype(np.float32))
    assert grid.slice_weights(0.5) == (1, pytest.approx(0.5)) and grid.slice_weights(1.0) == (2, 1.0)
    assert grid.nbytes == 4 * T * np.prod(RES) * 28
    assert set(grid.params()) == {"density", "sh"}
    # the stacked SH layout is accepted too
    again = TimeGrid(RES, T, BOX, 2, density=density, sh=grid.sh.numpy())
    np.testing.assert_array_equal(again.sh.numpy(), grid.sh.numpy())


def tv_reference(v):
    """VoxelGrid's TV of one slice: mean over points and channels of the summed squared forward differences."""
    v = v.reshape(*v.shape[:3], -1).astype(np.float64)
    return sum((np.diff(v, axis=a) ** 2).sum() for a in range(3)) / v.size


def time_reference(v):
    """Mean over consecutive slice pairs, points and channels of the squared difference."""
    v = v.astype(np.float64)
    return float((np.diff(v, axis=0) ** 2).mean())


def test_total_variation_matches_numpy(device):
    grid, density, sh = random_grid(degree=1, seed=5)
    d32, sh32 = density.astype(np.float32), sh.astype(np.float32)
    loss = wp.zeros(1, dtype=float, requires_grad=True)
    grid.total_variation(loss, 0.7, sh_weight=0.3, time_weight=0.5, sh_time_weight=0.2)
    want = (0.7 * np.mean([tv_reference(x) for x in d32]) + 0.3 * np.mean([tv_reference(x) for x in sh32])
            + 0.5 * time_reference(d32) + 0.2 * time_reference(sh32))
    np.testing.assert_allclose(loss.numpy()[0], want, rtol=1e-5)
    # defaults: sh_weight = weight, no time term; sh_time_weight = time_weight
    loss.zero_()
    grid.total_variation(loss, 0.7)
    want = 0.7 * np.mean([tv_reference(x) for x in d32] + []) + 0.7 * np.mean([tv_reference(x) for x in sh32])
    np.testing.assert_allclose(loss.numpy()[0], want, rtol=1e-5)
    loss.zero_()
    grid.total_variation(loss, 0.0, time_weight=1.5)
    np.testing.assert_allclose(loss.numpy()[0], 1.5 * (time_reference(d32) + time_reference(sh32)), rtol=1e-5)


@pytest.mark.parametrize(("weights"), [(0.7, 0.3, 0.5, 0.2), (0.0, 0.0, 1.0, 2.0)])
def test_total_variation_gradients(weights, device):
    grid, _, _ = random_grid(degree=1, seed=6)

    def forward():
        out = wp.zeros(1, dtype=float, requires_grad=True)
        grid.total_variation(out, weights[0], sh_weight=weights[1], time_weight=weights[2],
                             sh_time_weight=weights[3])
        return out

    # quadratic in the values: central differences are exact up to roundoff (loss ~1, eps 1e-2: error ~1e-5)
    check_gradient(forward, grid.density, eps=1e-2, rtol=1e-3, atol=1e-4, probes=12)
    check_gradient(forward, grid.sh, eps=1e-2, rtol=1e-3, atol=1e-4, probes=12)


# ---- gradients of a render through at_time ------------------------------------------------------

def touched(p, channels):
    """Flat mask (nx, ny, nz, channels) of lattice entries in the interpolation stencil of points p."""
    lo, hi, res = np.array(BOX[:3]), np.array(BOX[3:]), np.array(RES)
    u = np.clip((p - lo) / (hi - lo), 0, 1) * (res - 1)
    i = np.minimum(np.floor(u).astype(int), res - 2)
    mask = np.zeros(RES, bool)
    for c in range(8):
        j = i + [c & 1, (c >> 1) & 1, (c >> 2) & 1]
        mask[j[:, 0], j[:, 1], j[:, 2]] = True
    return np.repeat(mask[..., None], channels, axis=-1).reshape(-1)


def render_setup():
    o = np.array([[0.1 * i - 0.4, 0.05 * i - 0.2, 3.0] for i in range(8)])
    d = np.tile([0.05, 0.02, -1.0], (8, 1))
    samples = sample_rays(vec3s(o), vec3s(d), BOX, 12, seed=1)
    bg = wp.array(np.array([0.2, 0.3, 0.4], np.float32), dtype=float)
    return samples, bg


def rendered_loss(grid, t, samples, bg):
    g = grid.at_time(t)
    sigma, color = g.query(samples.positions, samples.directions)
    return weighted_loss(composite(sigma, color, samples, bg, min_transmittance=0.0)[0])


# t between slices (k = 1, w = 0.41), exactly at slice 1 (w = 0), and the two ends (t = 1: k = 2, w = 1).
# The loss is smooth in the grid values and linear blend weights <= 1 only scale the VoxelGrid derivatives,
# so the float32 argument of the VoxelGrid tests holds: eps 1e-3 on an O(1) loss gives differences good
# to ~1e-3 (roundoff u |L| / eps ~ 1e-4 plus truncation), hence atol 2e-3, rtol 1e-2.
@pytest.mark.parametrize("t", [0.47, 1 / 3, 0.0, 1.0])
def test_render_gradients_through_at_time(t, device):
    grid, _, _ = random_grid(degree=1, seed=10)
    samples, bg = render_setup()
    k, w = grid.slice_weights(t)
    n = int(np.prod(RES))
    p = samples.positions.numpy()
    mask_d, mask_sh = touched(p, 1), touched(p, 12)
    rng = np.random.default_rng(0)

    def probes(mask, size, slices):
        idx = np.flatnonzero(mask)
        return np.concatenate([s * size + rng.choice(idx, 5, replace=False) for s in slices])

    # probe the slices the blend reads (both, even where one has weight 0: its gradient must be 0 there)
    check_gradient(lambda: rendered_loss(grid, t, samples, bg), grid.density, eps=1e-3, rtol=1e-2, atol=2e-3,
                   indices=probes(mask_d, n, (k, k + 1)))
    check_gradient(lambda: rendered_loss(grid, t, samples, bg), grid.sh, eps=1e-3, rtol=1e-2, atol=2e-3,
                   indices=probes(mask_sh, n * 12, (k, k + 1)))
    # the exact weights: slice k gets (1 - w) and slice k + 1 gets w times the blended grid's gradient,
    # the other slices nothing
    tape = wp.Tape()
    with tape:
        g = grid.at_time(t)
        sigma, color = g.query(samples.positions, samples.directions)
        loss = weighted_loss(composite(sigma, color, samples, bg, min_transmittance=0.0)[0])
    tape.backward(loss)
    gd, gsh = grid.density.grad.numpy(), grid.sh.grad.numpy().reshape(T, *RES, 12)
    assert np.abs(g.density.grad.numpy()).max() > 1e-3
    np.testing.assert_allclose(gd[k], (1 - w) * g.density.grad.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gd[k + 1], w * g.density.grad.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gsh[k + 1], w * g.sh.grad.numpy(), rtol=1e-6, atol=1e-9)
    others = [j for j in range(T) if j not in (k, k + 1)]
    assert not gd[others].any() and not gsh[others].any()
    tape.zero()
    assert not grid.density.grad.numpy().any()


def test_only_the_leaves_with_gradients_receive_them(device):
    grid, density, sh = random_grid(degree=0, seed=13)
    grid.sh = wp.array(grid.sh.numpy(), dtype=float)  # a fixed SH leaf: no .grad
    samples, bg = render_setup()
    tape = wp.Tape()
    with tape:
        loss = rendered_loss(grid, 0.5, samples, bg)
    tape.backward(loss)
    assert grid.sh.grad is None and np.abs(grid.density.grad.numpy()).max() > 1e-3


# CPU only: renderer.parallel's lanes are CPU threads (its public entry points use one lane on CUDA)
@pytest.mark.parametrize("device", ["cpu"])
def test_at_time_records_on_per_thread_tapes(device):
    # renderer.parallel runs each lane under a tape of its own (renderer.thread_tape); at_time must record
    # there (the lanes read disjoint slices: t = 0.1 reads 0-1, t = 0.9 reads 2-3).
    grid, _, _ = random_grid(degree=1, seed=12)
    samples, bg = render_setup()
    # load the modules on this thread first: Warp 1.19's lazy kernel hashing races when two threads launch
    # a module's kernels for the first time at once (KeyError in get_kernel_mangled_name)
    rendered_loss_rgb(grid, 0.5, samples, bg)

    def work(lane):
        g = grid.at_time(0.1 if lane.index == 0 else 0.9)
        sigma, color = g.query(samples.positions, samples.directions)
        return composite(sigma, color, samples, bg, min_transmittance=0.0)[0]

    tape = wp.Tape()
    with tape:
        rgb = parallel._run_lanes([parallel._Lane(0, True), parallel._Lane(1, True)], work, tape)
        loss = weighted_loss(rgb[0], seed=1)
        wp.launch(_add, dim=1, inputs=[weighted_loss(rgb[1], seed=2), loss])
    tape.backward(loss)
    got = grid.density.grad.numpy().copy(), grid.sh.grad.numpy().copy()
    tape.zero()
    # renderer.parallel registers only the lanes' kernel launches for tape.zero(), not record_func
    # callbacks, so the leaves that only the callbacks touched keep their gradients: zero them here
    grid.density.grad.zero_()
    grid.sh.grad.zero_()

    serial = wp.Tape()
    with serial:
        loss = weighted_loss(rendered_loss_rgb(grid, 0.1, samples, bg), seed=1)
        wp.launch(_add, dim=1, inputs=[weighted_loss(rendered_loss_rgb(grid, 0.9, samples, bg), seed=2), loss])
    serial.backward(loss)
    assert np.abs(got[0]).max() > 1e-3
    np.testing.assert_allclose(got[0], grid.density.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[1], grid.sh.grad.numpy(), rtol=1e-5, atol=1e-7)


def rendered_loss_rgb(grid, t, samples, bg):
    g = grid.at_time(t)
    sigma, color = g.query(samples.positions, samples.directions)
    return composite(sigma, color, samples, bg, min_transmittance=0.0)[0]


@wp.kernel
def _add(a: wp.array(dtype=float), out: wp.array(dtype=float)):
    wp.atomic_add(out, 0, a[0])


# ---- occupancy, upsampling, storage, validation -------------------------------------------------

def test_query_density_max_bounds_every_time(device):
    grid, density, _ = random_grid(degree=0, seed=20)
    p = vec3s(np.random.default_rng(21).uniform(np.array(BOX[:3]) - 0.1, np.array(BOX[3:]) + 0.1, (200, 3)))
    top = grid.query_density_max(p).numpy()
    at = np.stack([grid.query_density_at(float(t))(p).numpy() for t in np.linspace(0, 1, 13)])
    assert (at <= top + 1e-6).all()
    # at the lattice times the max is attained: it is the max over the slices
    slices = np.stack([grid.slice(k).query_density(p).numpy() for k in range(T)])
    np.testing.assert_allclose(top, slices.max(0), rtol=1e-6)
    occ = OccupancyGrid(4, BOX)
    occ.update(grid.query_density_max, threshold=0.5)  # the documented use


def test_upsample_and_astype(device):
    grid, _, _ = random_grid(degree=1, seed=30)
    fine = grid.upsample((7, 5, 9))
    assert fine.resolution == (7, 5, 9) and fine.n_times == T and fine.sh.shape == (T * 7, 5, 9, 12)
    for k in range(T):
        want = grid.slice(k).upsample((7, 5, 9))
        np.testing.assert_array_equal(fine.slice(k).density.numpy(), want.density.numpy())
        np.testing.assert_array_equal(fine.slice(k).sh.numpy(), want.sh.numpy())
    half = grid.astype(wp.float16)
    assert half.density.dtype == wp.float16 and 2 * half.nbytes == grid.nbytes
    g16 = half.at_time(0.6)
    assert g16.density.dtype == wp.float16
    np.testing.assert_allclose(g16.density.numpy().astype(np.float32), grid.at_time(0.6).density.numpy(),
                               atol=2e-3)


def test_validation_errors_name_the_argument(device):
    with pytest.raises(ValueError, match="n_times"):
        TimeGrid(4, 1, BOX)
    with pytest.raises(ValueError, match="resolution"):
        TimeGrid(1, 2, BOX)
    with pytest.raises(ValueError, match="aabb"):
        TimeGrid(4, 2, (0, 0, 0, 1, 1))
    with pytest.raises(ValueError, match="sh_degree"):
        TimeGrid(4, 2, BOX, sh_degree=3)
    with pytest.raises(ValueError, match=r"density: expected shape \(2, 4, 4, 4\)"):
        TimeGrid(4, 2, BOX, density=np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="sh: expected shape"):
        TimeGrid(4, 2, BOX, sh=np.zeros((2, 4, 4, 4, 12)))
    grid = TimeGrid(4, 3, BOX)
    for t in (-0.1, 1.5, math.nan, "0.5"):
        with pytest.raises(ValueError, match=r"t: expected a time in \[0, 1\]"):
            grid.at_time(t)
    with pytest.raises(ValueError, match="out_loss"):
        grid.total_variation(wp.zeros(2, dtype=float), 1.0)
    with pytest.raises(TypeError, match="positions"):
        grid.query_density_max(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="k: expected a slice index"):
        grid.slice(3)


# ---- a small fit of a moving ball ---------------------------------------------------------------

FIT_BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def ball_center(t):
    return np.array([-0.4 + 0.8 * t, 0.0, 0.0])  # moves along +x from -0.4 to 0.4


def ball_grid(times, res=24, radius=0.35):
    """Ground truth: a TimeGrid whose slice at time t holds a dense ball (raw 4 inside, -6 outside) of
    `radius` about ball_center(t), colored by x (sh0 from -1 to 1 across the box)."""
    ax = np.linspace(-1, 1, res)
    p = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1)
    density = np.stack([np.where(np.linalg.norm(p - ball_center(t), axis=-1) < radius, 4.0, -6.0) for t in times])
    sh = np.repeat(np.stack([p[..., 0], 0.5 * p[..., 1], -p[..., 0]], -1)[None] / 0.28, len(times), 0)
    return TimeGrid(res, len(times), FIT_BOX, 0, density=density, sh=sh)


def camera_rays(angle, size=16, distance=3.0):
    intr = wp.array(np.array([size, size, size / 2, size / 2], np.float32), dtype=float)
    s, c = math.sin(angle), math.cos(angle)
    pose = wp.array(np.array([distance * s, 0.0, distance * c, 0.0, math.sin(angle / 2), 0.0, math.cos(angle / 2)],
                             np.float32), dtype=float)
    return generate_rays(intr, pose, size, size)


def centroid_x(grid, threshold=1.0):
    """x of the centroid of the density above `threshold` on the grid's lattice."""
    sigma = np.logaddexp(0, grid.density.numpy().astype(np.float64))
    w = np.maximum(sigma - threshold, 0)
    x = np.linspace(-1, 1, grid.resolution[0])[:, None, None]
    return float((w * x).sum() / w.sum())


def test_fit_a_moving_ball(device):
    # 3 times (the model's slices), 4 views per time around the y axis, rotated by 45 degrees between
    # times; targets rendered from a fine ground-truth TimeGrid with 4 slices (so t = 0.5 is a blend there)
    truth = ball_grid([0.0, 1 / 3, 2 / 3, 1.0])
    bg = wp.array(np.ones(3, np.float32), dtype=float)
    times = [0.0, 0.5, 1.0]
    batches = []
    for j, t in enumerate(times):
        for v in range(4):
            o, d = camera_rays(v * math.pi / 2 + j * math.pi / 4)
            s = sample_rays(o, d, FIT_BOX, 32, jitter=False)
            g = truth.at_time(t)
            target = composite(*g.query(s.positions, s.directions), s, bg)[0]
            batches.append((t, s, target))
    model = TimeGrid(12, 3, FIT_BOX, 0)
    opt = Adam(model.params(), lr=[0.3, 0.1])
    losses = []
    for _ in range(60):
        loss = wp.zeros(1, dtype=float, requires_grad=True)
        tape = wp.Tape()
        with tape:
            grids = {t: model.at_time(t) for t in times}
            for t, s, target in batches:
                rgb = composite(*grids[t].query(s.positions, s.directions), s, bg)[0]
                l2(rgb, target, loss, weight=1.0 / len(batches))
            model.total_variation(loss, 1e-4, time_weight=1e-4)
        tape.backward(loss)
        opt.step(loss)
        tape.zero()
        losses.append(float(loss.numpy()[0]))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.1 * losses[0], losses
    # the fitted ball moves with t: its centroid follows the truth's, also between the trained times
    got = [centroid_x(model.at_time(t)) for t in (0.0, 0.25, 0.5, 1.0)]
    want = [ball_center(t)[0] for t in (0.0, 0.25, 0.5, 1.0)]
    assert got[0] < got[1] < got[2] < got[3], got
    np.testing.assert_allclose(got, want, atol=0.15)
    # and where it moved: at t = 0.5 the left end of the t = 0 ball emptied, the space right of it filled
    left, right = vec3s([[-0.6, 0.0, 0.0]]), vec3s([[0.25, 0.0, 0.0]])
    d0, d5 = model.query_density_at(0.0), model.query_density_at(0.5)
    assert d0(left).numpy()[0] > 3 * d5(left).numpy()[0]
    assert d5(right).numpy()[0] > 3 * d0(right).numpy()[0]
