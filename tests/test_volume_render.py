"""End to end: camera rays -> sample_rays -> field query -> composite, against a closed form; occupancy
skipping leaves the image unchanged; a 16^3 voxel grid fitted to 4 views of a synthetic field."""

import math

import numpy as np
import warp as wp
from drstudio.renderer.optim.losses import l2
from drstudio.renderer.optim.optimizers import Adam
from drstudio.renderer.stages.camera import generate_rays
from drstudio.renderer.volume import OccupancyGrid, VoxelGrid, composite, render, sample_rays

BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
CENTER, RADIUS, SIGMA = (0.1, -0.05, 0.0), 0.6, 2.0


@wp.kernel
def _sphere(points: wp.array(dtype=wp.vec3), center: wp.vec3, radius: float, sigma: float, base: wp.vec3,
            slope: float, density: wp.array(dtype=float), color: wp.array2d(dtype=float)):
    i = wp.tid()
    q = points[i] - center
    density[i] = wp.where(wp.length(q) < radius, sigma, 0.0)
    for c in range(3):
        color[i, c] = wp.clamp(base[c] + slope * q[c] / radius, 0.0, 1.0)


class SphereField:
    """Constant density SIGMA in a ball, color base + slope * (p - center) / radius; zero outside."""

    aabb = BOX

    def __init__(self, base=(0.9, 0.3, 0.1), slope=0.0):
        self.base, self.slope = wp.vec3(*base), float(slope)

    def query(self, positions, directions):
        n = positions.shape[0]
        density, color = wp.empty(n, dtype=float), wp.empty((n, 3), dtype=float)
        wp.launch(_sphere, dim=n, inputs=[positions, wp.vec3(*CENTER), RADIUS, SIGMA, self.base, self.slope,
                                          density, color])
        return density, color

    def query_density(self, positions):
        return self.query(positions, positions)[0]


def camera(angle: float, size: int, distance: float = 3.0):
    """A size x size camera on a circle around the y axis, looking at the origin."""
    intr = wp.array(np.array([size, size, size / 2, size / 2], np.float32), dtype=float)
    s, c = math.sin(angle), math.cos(angle)
    pose = wp.array(np.array([distance * s, 0.0, distance * c, 0.0, math.sin(angle / 2), 0.0, math.cos(angle / 2)],
                             np.float32), dtype=float)
    return generate_rays(intr, pose, size, size)


def analytic_sphere(o, d):
    """Closed-form opacity and expected depth of rays through the constant-density ball."""
    oc = o - np.array(CENTER)
    a, b, c = (d * d).sum(1), 2 * (d * oc).sum(1), (oc * oc).sum(1) - RADIUS**2
    disc = np.maximum(b * b - 4 * a * c, 0.0)
    t_in, t_out = (-b - np.sqrt(disc)) / (2 * a), (-b + np.sqrt(disc)) / (2 * a)
    length, k = t_out - t_in, SIGMA * np.sqrt(a)  # k: optical depth per unit of t
    e = np.exp(-k * length)
    opacity = 1 - e
    depth = t_in * (1 - e) + (1 - e) / k - length * e
    return opacity, depth


def test_sphere_matches_the_closed_form(device):
    origins, directions = camera(0.3, 24)
    bg = wp.array(np.array([0.1, 0.2, 0.8], np.float32), dtype=float)
    rgb, opacity, depth, samples = render(SphereField(), origins, directions, 512, bg, seed=4)
    want_opacity, want_depth = analytic_sphere(origins.numpy().astype(np.float64),
                                               directions.numpy().astype(np.float64))
    assert want_opacity.max() > 0.85 and (want_opacity == 0).mean() > 0.3  # opaque core and empty corners
    # stratified samples make the boundary intervals' error at most one interval's optical depth,
    # SIGMA * dt * |d| ~ 2 * (2 / 512) * 1.1 ~ 0.009 per crossing, and unbiased on average
    err = np.abs(opacity.numpy() - want_opacity)
    assert err.max() < 0.015 and err.mean() < 0.002, (err.max(), err.mean())
    np.testing.assert_allclose(rgb.numpy(), want_opacity[:, None] * np.array([0.9, 0.3, 0.1])
                               + (1 - want_opacity[:, None]) * np.array([0.1, 0.2, 0.8]), atol=0.015)
    np.testing.assert_allclose(depth.numpy(), want_depth, atol=0.05)
    assert np.abs(depth.numpy() - want_depth).mean() < 0.005
    assert samples.n_samples == 512 * (samples.ray_counts.numpy() > 0).sum()


def test_occupancy_skipping_keeps_the_image(device):
    field = SphereField(slope=0.3)
    grid = OccupancyGrid(32, BOX)
    for step in range(10):  # as over training: grazing cells are found by some update's jittered points
        grid.update(field.query_density, step=step, points_per_cell=8)
    origins, directions = camera(-0.7, 24)
    bg = wp.array(np.array([1.0, 1.0, 1.0], np.float32), dtype=float)
    full = render(field, origins, directions, 128, bg, seed=9)
    fast = render(field, origins, directions, 128, bg, seed=9, occupancy=grid)
    # same jittered points; only samples in cells marked empty are dropped. Those carry zero density,
    # except in cells the ball only grazes that no update's random points hit: a few pixels may lose a
    # sliver of density (one interval's optical depth, <= SIGMA * dt ~ 0.03 in opacity).
    assert fast[3].n_samples < 0.4 * full[3].n_samples
    for a, b in zip(full[:3], fast[:3]):
        diff = np.abs(b.numpy() - a.numpy())
        assert diff.max() < 0.03 and (diff > 1e-4).mean() < 0.01, (diff.max(), (diff > 1e-4).mean())


def test_rays_that_miss_render_the_background_under_a_tape(device):
    grid = VoxelGrid(4, BOX)
    bg = wp.array(np.array([0.2, 0.4, 0.6], np.float32), dtype=float, requires_grad=True)
    tape = wp.Tape()
    with tape:
        miss = wp.array(np.array([[5.0, 5.0, 5.0]], np.float32), dtype=wp.vec3)
        rgb, opacity, _, samples = render(grid, miss, wp.array(np.array([[1.0, 0.0, 0.0]], np.float32),
                                                                   dtype=wp.vec3), 8, bg)
        loss = wp.zeros(1, dtype=float, requires_grad=True)
        l2(rgb, wp.zeros((1, 3), dtype=float), loss)
    tape.backward(loss)
    assert samples.n_samples == 0
    np.testing.assert_allclose(rgb.numpy(), [[0.2, 0.4, 0.6]], rtol=1e-6)
    np.testing.assert_allclose(bg.grad.numpy(), 2 * np.array([0.2, 0.4, 0.6]) / 3, rtol=1e-5)
    assert not grid.density.grad.numpy().any()


def fit_setup(size=16, n_samples=32):
    field = SphereField(base=(0.6, 0.5, 0.4), slope=0.4)
    views = [camera(k * math.pi / 2 + 0.2, size) for k in range(4)]
    bg = wp.array(np.array([1.0, 1.0, 1.0], np.float32), dtype=float)
    targets = [render(field, o, d, 256, bg, jitter=False)[0] for o, d in views]
    samples = [sample_rays(o, d, BOX, n_samples, jitter=False) for o, d in views]
    return samples, targets, bg


def fit(grid, samples, targets, bg, steps):
    """`steps` Adam steps of the mean L2 over the views (+ a little TV); returns the loss before each step."""
    opt = Adam(grid.params(), lr=[0.3, 0.1])
    losses = []
    for _ in range(steps):
        loss = wp.zeros(1, dtype=float, requires_grad=True)
        tape = wp.Tape()
        with tape:
            for s, target in zip(samples, targets):
                density, color = grid.query(s.positions, s.directions)
                l2(composite(density, color, s, bg)[0], target, loss, weight=1.0 / len(samples))
            grid.total_variation(loss, 1e-4)
        tape.backward(loss)
        opt.step(loss)
        tape.zero()
        losses.append(float(loss.numpy()[0]))
    return losses


def test_fit_a_voxel_grid_to_four_views(device):
    samples, targets, bg = fit_setup()
    grid = VoxelGrid(16, BOX, sh_degree=0)
    losses = fit(grid, samples, targets, bg, 50)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.1 * losses[0], losses  # measured: 0.0162 -> 0.0005
    # the fitted grid holds the ball: dense inside, (almost) empty at the corners
    dens = np.logaddexp(0, grid.density.numpy())
    assert dens[8, 8, 8] > 1.0 and dens[0, 0, 0] < 0.1 and dens[15, 15, 15] < 0.1


def test_coarse_to_fine_fit(device):
    # 8^3 for 25 steps, upsampled to 15^3 (the coarse lattice points stay lattice points), 25 more steps
    samples, targets, bg = fit_setup()
    coarse = VoxelGrid(8, BOX, sh_degree=0)
    first = fit(coarse, samples, targets, bg, 25)
    fine = coarse.upsample(15)
    second = fit(fine, samples, targets, bg, 25)
    assert second[0] < 1.5 * first[-1]  # upsampling keeps what the coarse grid learned
    assert second[-1] < 0.1 * first[0] and second[-1] < first[-1], (first, second)


def test_gradient_scaling_reaches_the_grid_through_render(device):
    # render(gradient_scaling=r) gives the lattice J^T (k * a): a the composite's adjoints of the samples' density
    # and color, k = min(1, (t |d| / r)^2) per sample, J the query's Jacobian; built here from the parts.
    rng = np.random.default_rng(3)
    grid = VoxelGrid(6, BOX, sh_degree=1, init_density=0.8)
    grid.density = wp.array(grid.density.numpy() + rng.normal(0, 0.3, grid.density.shape).astype(np.float32),
                            dtype=float, requires_grad=True)
    grid.sh = wp.array(rng.normal(0, 0.5, grid.sh.shape).astype(np.float32), dtype=float, requires_grad=True)
    o, d = camera(0.4, 6, distance=1.6)  # samples 0.6-2.6 units from the camera
    bg = wp.array(np.array([0.3, 0.3, 0.3], np.float32), dtype=float)
    target = wp.zeros((36, 3), dtype=float)
    distance = 2.0

    tape = wp.Tape()
    with tape:
        rgb, _, _, samples = render(grid, o, d, 16, bg, seed=1, gradient_scaling=distance)
        loss = wp.zeros(1, dtype=float, requires_grad=True)
        l2(rgb, target, loss)
    tape.backward(loss)
    got_density, got_sh = grid.density.grad.numpy().copy(), grid.sh.grad.numpy().copy()

    # the parts: the composite's adjoints a (query outputs as leaves), then J^T (k * a) through the query alone
    density, color = grid.query(samples.positions, samples.directions)
    leaf_d = wp.array(density.numpy(), dtype=float, requires_grad=True)
    leaf_c = wp.array(color.numpy(), dtype=float, requires_grad=True)
    tape2 = wp.Tape()
    with tape2:
        loss2 = wp.zeros(1, dtype=float, requires_grad=True)
        l2(composite(leaf_d, leaf_c, samples, bg)[0], target, loss2)
    tape2.backward(loss2)
    r = samples.t_points.numpy() * np.linalg.norm(d.numpy(), axis=1)[samples.ray_indices.numpy()]
    k = np.minimum((r / distance) ** 2, 1.0).astype(np.float32)
    assert 0.05 < k.min() < 0.5 and k.max() == 1.0  # both regimes occur
    grid.density.grad.zero_()
    grid.sh.grad.zero_()
    tape3 = wp.Tape()
    with tape3:
        density, color = grid.query(samples.positions, samples.directions)
    tape3.backward(grads={density: wp.array(k * leaf_d.grad.numpy(), dtype=float),
                          color: wp.array(k[:, None] * leaf_c.grad.numpy(), dtype=float)})
    np.testing.assert_allclose(got_density, grid.density.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got_sh, grid.sh.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert np.abs(got_density).max() > 1e-4
