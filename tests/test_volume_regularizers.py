"""Field regularizers (renderer.volume.regularizers): mip-NeRF 360's distortion loss and the lattice's mean density
against NumPy references (the distortion's quadratic double sum, not the O(n) form the kernel uses), their
hand-written adjoints by central differences, and the scene options that turn them on."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.volume import OccupancyGrid, VoxelGrid, sample_rays
from drstudio.renderer.volume.regularizers import density_l1, distortion
from support.gradcheck import check_gradient

BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def rays(seed=0, n=6, n_samples=10, occupancy=None):
    """Rays into the box with non-unit directions (one misses), their samples, random densities."""
    rng = np.random.default_rng(seed)
    o = np.array([[0.1 * i - 0.3, 0.05 * i, 3.0] for i in range(n - 1)] + [[5.0, 5.0, 3.0]])
    d = (np.tile([0.0, 0.0, -1.3], (n, 1)) + rng.uniform(-0.15, 0.15, (n, 3))).astype(np.float32)
    dirs = wp.array(d, dtype=wp.vec3)
    samples = sample_rays(wp.array(o.astype(np.float32), dtype=wp.vec3), dirs, BOX, n_samples, seed=seed,
                          occupancy=occupancy)
    sigma = rng.uniform(0.0, 4.0, samples.n_samples)
    return samples, dirs, sigma


def distortion_reference(samples, dirs, sigma, length):
    """Mean over rays of sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 D_i (float64, the double sum)."""
    offs, cnts = samples.ray_offsets.numpy(), samples.ray_counts.numpy()
    t0, t1 = samples.t_starts.numpy().astype(np.float64), samples.t_ends.numpy().astype(np.float64)
    delta = samples.deltas.numpy().astype(np.float64)
    scale = np.linalg.norm(dirs.numpy().astype(np.float64), axis=1) / length
    total = 0.0
    for r in range(len(offs)):
        sl = slice(offs[r], offs[r] + cnts[r])
        tau = sigma[sl] * delta[sl]
        w = np.exp(-(np.cumsum(tau) - tau)) * (1.0 - np.exp(-tau))
        m, dd = 0.5 * (t0[sl] + t1[sl]) * scale[r], (t1[sl] - t0[sl]) * scale[r]
        total += (w[:, None] * w[None, :] * np.abs(m[:, None] - m[None, :])).sum() + (w * w * dd).sum() / 3.0
    return total / len(offs)


def run_distortion(samples, dirs, sigma, weight, length):
    loss = wp.zeros(1, dtype=float, requires_grad=True)
    distortion(sigma, samples, dirs, loss, weight, length=length)
    return loss


@pytest.mark.parametrize("length", [1.0, 3.4])
def test_distortion_matches_the_double_sum(length):
    samples, dirs, sigma = rays()
    assert samples.ray_counts.numpy()[-1] == 0  # the ray that misses contributes 0 (and counts in the mean)
    loss = run_distortion(samples, dirs, wp.array(sigma.astype(np.float32), dtype=float), 0.7, length)
    expected = 0.7 * distortion_reference(samples, dirs, sigma.astype(np.float32).astype(np.float64), length)
    assert loss.numpy()[0] == pytest.approx(expected, rel=1e-5)


def test_distortion_is_small_for_a_surface_and_large_for_fog():
    """Weight concentrated in one interval (an opaque surface) scores D/3 of that interval; the same opacity
    spread along the ray scores far more."""
    samples, dirs, _ = rays(n=2, n_samples=32)
    s = samples.n_samples
    surface = np.zeros(s, np.float32)
    surface[10] = 1e4  # opaque at one sample (the second ray misses the box)
    fog = np.full(s, 1.5, np.float32)
    a = run_distortion(samples, dirs, wp.array(surface, dtype=float), 1.0, 1.0).numpy()[0]
    b = run_distortion(samples, dirs, wp.array(fog, dtype=float), 1.0, 1.0).numpy()[0]
    interval = (samples.t_ends.numpy()[10] - samples.t_starts.numpy()[10]) * np.linalg.norm(dirs.numpy()[0])
    assert a == pytest.approx(interval / 3 / 2, rel=1e-3)  # one of the two rays is the miss
    assert b > 20 * a


@pytest.mark.parametrize("seed", [0, 1])
def test_distortion_gradient_by_central_differences(seed):
    samples, dirs, sigma = rays(seed)
    dens = wp.array(sigma.astype(np.float32), dtype=float, requires_grad=True)
    check_gradient(lambda: run_distortion(samples, dirs, dens, 2.0, 1.7), dens, eps=2e-3, rtol=1e-2, atol=2e-4,
                   probes=16, seed=seed)


def test_distortion_gradient_with_occupancy_gaps():
    """Samples dropped by an occupancy grid leave gaps between intervals; the loss and its adjoint use the kept
    intervals as they are (still sorted along the ray)."""
    occ = OccupancyGrid(4, BOX)
    mask = np.ones((4, 4, 4), np.uint8)
    mask[:, :, 1] = 0  # a slab of empty cells across every ray
    occ.occupied.assign(mask)
    samples, dirs, sigma = rays(2, occupancy=occ, n_samples=16)
    assert 0 < samples.n_samples < 5 * 16
    dens = wp.array(sigma.astype(np.float32), dtype=float, requires_grad=True)
    loss = run_distortion(samples, dirs, dens, 1.0, 2.0)
    assert loss.numpy()[0] == pytest.approx(distortion_reference(samples, dirs, sigma.astype(np.float32)
                                                                 .astype(np.float64), 2.0), rel=1e-5)
    check_gradient(lambda: run_distortion(samples, dirs, dens, 1.0, 2.0), dens, eps=2e-3, rtol=1e-2, atol=2e-4,
                   probes=16)


def test_distortion_rejects_bad_arguments():
    samples, dirs, sigma = rays()
    dens = wp.array(sigma.astype(np.float32), dtype=float)
    loss = wp.zeros(1, dtype=float)
    with pytest.raises(ValueError, match="length"):
        distortion(dens, samples, dirs, loss, 1.0, length=0.0)
    with pytest.raises(ValueError, match="densities"):
        distortion(wp.zeros(3, dtype=float), samples, dirs, loss, 1.0)
    with pytest.raises(TypeError, match="samples"):
        distortion(dens, None, dirs, loss, 1.0)


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_density_l1_value_and_gradient(activation):
    rng = np.random.default_rng(3)
    raw = rng.uniform(-3, 3, (5, 4, 3)).astype(np.float32)
    grid = VoxelGrid((5, 4, 3), BOX, 0, activation=activation, density=raw)
    expected = np.log1p(np.exp(raw.astype(np.float64))) if activation == "softplus" else np.maximum(raw, 0.0)

    def forward():
        loss = wp.zeros(1, dtype=float, requires_grad=True)
        density_l1(grid, loss, 0.3)
        return loss

    assert forward().numpy()[0] == pytest.approx(0.3 * expected.mean(), rel=1e-5)
    check_gradient(forward, grid.density, eps=1e-3, rtol=1e-2, atol=1e-5, probes=16)


def test_distortion_in_contracted_coordinates():
    """For a contracted march, distances are measured in s = g(t): t up to the inner box's exit b, 2b - b^2/t
    beyond (rays starting inside the inner box, so b is their exit from it), so the far shell's long intervals
    count by their extent in s, not their world length."""
    from drstudio.renderer.volume.march import contract_far

    lattice = (-2.0, -2.0, -2.0, 2.0, 2.0, 2.0)  # inner box: the unit cube
    rng = np.random.default_rng(4)
    o = rng.uniform(-0.5, 0.5, (4, 3)).astype(np.float32)
    d = rng.normal(0, 1, (4, 3)).astype(np.float32) * 1.7
    origins, dirs = wp.array(o, dtype=wp.vec3), wp.array(d, dtype=wp.vec3)
    far = contract_far(lattice)
    samples = sample_rays(origins, dirs, lattice, 12, far=far, seed=1, contract=True)
    sigma = rng.uniform(0.0, 2.0, samples.n_samples).astype(np.float32)
    dens = wp.array(sigma, dtype=float, requires_grad=True)

    def forward():
        loss = wp.zeros(1, dtype=float, requires_grad=True)
        distortion(dens, samples, dirs, loss, 1.0, length=2.0, contract=(origins, lattice, 0.0, far))
        return loss

    # reference: the same double sum over s-intervals
    b = np.min(np.where(d > 0, (1 - o) / d, (-1 - o) / d), axis=1)
    offs, cnts = samples.ray_offsets.numpy(), samples.ray_counts.numpy()
    t0, t1 = samples.t_starts.numpy().astype(np.float64), samples.t_ends.numpy().astype(np.float64)
    delta = samples.deltas.numpy().astype(np.float64)
    total = 0.0
    for r in range(4):
        sl = slice(offs[r], offs[r] + cnts[r])
        br = b[r]
        g = lambda t, br=br: np.where(t <= br, t, 2 * br - br**2 / np.maximum(t, br))  # noqa: E731
        scale = np.linalg.norm(d[r].astype(np.float64)) / 2.0
        tau = sigma[sl] * delta[sl]
        w = np.exp(-(np.cumsum(tau) - tau)) * (1.0 - np.exp(-tau))
        m, dd = 0.5 * (g(t0[sl]) + g(t1[sl])) * scale, (g(t1[sl]) - g(t0[sl])) * scale
        total += (w[:, None] * w[None, :] * np.abs(m[:, None] - m[None, :])).sum() + (w * w * dd).sum() / 3.0
    assert forward().numpy()[0] == pytest.approx(total / 4, rel=1e-4)
    check_gradient(forward, dens, eps=2e-3, rtol=1e-2, atol=2e-4, probes=16)
