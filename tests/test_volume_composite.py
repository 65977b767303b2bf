"""Emission-absorption compositing against NumPy, early termination, and its tape gradients."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.volume import composite, sample_rays, scale_gradients_by_distance
from drstudio.renderer.volume.march import Samples
from support.gradcheck import check_gradient, weighted_loss

BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def farr(a, grad=False):
    return wp.array(np.asarray(a, np.float32), dtype=float, requires_grad=grad)


def case(seed=0, n_samples=6, dense=False):
    """Rays through the box (one misses), with random densities and colors at their samples."""
    rng = np.random.default_rng(seed)
    o = np.array([[0.1 * i - 0.3, 0.05 * i, 3.0] for i in range(6)] + [[5.0, 5.0, 3.0]])
    d = np.tile([0.0, 0.0, -1.0], (7, 1)) + rng.uniform(-0.1, 0.1, (7, 3))
    samples = sample_rays(wp.array(o.astype(np.float32), dtype=wp.vec3), wp.array(d.astype(np.float32), dtype=wp.vec3),
                          BOX, n_samples, seed=seed)
    s = samples.n_samples
    sigma = rng.uniform(0.0, 8.0 if dense else 1.5, s)
    colors = rng.uniform(0, 1, (s, 3))
    bg = rng.uniform(0, 1, 3)
    return samples, sigma, colors, bg


def reference(samples: Samples, sigma, colors, bg, min_transmittance=1e-4):
    """Sequential NumPy march with early termination."""
    offs, cnts = samples.ray_offsets.numpy(), samples.ray_counts.numpy()
    delta, t = samples.deltas.numpy().astype(np.float64), samples.t_points.numpy()
    n = len(offs)
    rgb, opacity, depth = np.zeros((n, 3)), np.zeros(n), np.zeros(n)
    for r in range(n):
        T = 1.0
        for s in range(offs[r], offs[r] + cnts[r]):
            if T < min_transmittance:
                break
            alpha = 1.0 - np.exp(-sigma[s] * delta[s])
            w = T * alpha
            rgb[r] += w * colors[s]
            opacity[r] += w
            depth[r] += w * t[s]
            T *= 1.0 - alpha
        rgb[r] += (1.0 - opacity[r]) * bg
    return rgb, opacity, depth


@pytest.mark.parametrize("dense", [False, True])
def test_composite_matches_numpy(dense, device):
    samples, sigma, colors, bg = case(dense=dense, n_samples=12)
    rgb, opacity, depth = composite(farr(sigma), farr(colors), samples, farr(bg))
    want = reference(samples, sigma.astype(np.float32), colors.astype(np.float32), bg.astype(np.float32))
    np.testing.assert_allclose(rgb.numpy(), want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opacity.numpy(), want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(depth.numpy(), want[2], rtol=1e-5, atol=1e-5)
    # the missing ray shows the background
    assert samples.ray_counts.numpy()[-1] == 0
    np.testing.assert_allclose(rgb.numpy()[-1], bg, rtol=1e-6)
    assert opacity.numpy()[-1] == 0.0 and depth.numpy()[-1] == 0.0


def test_early_termination_leaves_out_the_tail(device):
    samples, sigma, colors, bg = case(seed=3, n_samples=16)
    sigma[:] = 60.0  # T falls by exp(-60 * 0.125 * |d|) ~ 5e-4 per sample: stops after the 2nd sample
    on = composite(farr(sigma), farr(colors), samples, farr(bg))
    off = composite(farr(sigma), farr(colors), samples, farr(bg), min_transmittance=0.0)
    np.testing.assert_allclose(on[0].numpy(), reference(samples, sigma, colors, bg)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(off[0].numpy(), reference(samples, sigma, colors, bg, 0.0)[0], rtol=1e-5, atol=1e-6)
    # the truncated tail weighs less than min_transmittance
    assert np.abs(on[0].numpy() - off[0].numpy()).max() < 1e-4
    assert np.abs(on[0].numpy() - off[0].numpy()).max() > 0.0
    # and gets no gradient
    dens = farr(sigma, True)
    tape = wp.Tape()
    with tape:
        loss = weighted_loss(composite(dens, farr(colors), samples, farr(bg))[0])
    tape.backward(loss)
    g = dens.grad.numpy()
    offs = samples.ray_offsets.numpy()
    for r in range(6):
        assert np.all(g[offs[r] + 2:offs[r] + 16] == 0.0) and np.all(g[offs[r]:offs[r] + 2] != 0.0)


# Each output is smooth in (sigma, color, background): products of exponentials of sums of sigma * delta
# with delta ~ 0.3, sigma in [0, 1.5], colors in [0, 1]; the weighted losses are O(1) sums over <= 21
# outputs. float32 roundoff on the loss is ~1e-6, so eps = 1e-3 gives central differences good to ~1e-3
# absolute; truncation is eps^2 |L'''| / 6 ~ 1e-7 (|L'''| <= sum |delta|^3 ~ 1). Termination is off:
# it only changes the function by <= 1e-4 at its threshold, tested above.
@pytest.mark.parametrize(("which", "output"), [("densities", 0), ("colors", 0), ("background", 0),
                                               ("densities", 1), ("densities", 2)],
                         ids=["rgb-densities", "rgb-colors", "rgb-background", "opacity-densities",
                              "depth-densities"])
def test_composite_gradients(which, output, device):
    # (opacity and depth depend on the densities only)
    samples, sigma, colors, bg = case(seed=1)
    arrays = {"densities": farr(sigma, True), "colors": farr(colors, True), "background": farr(bg, True)}

    def forward():
        return weighted_loss(composite(**arrays, samples=samples, min_transmittance=0.0)[output])

    check_gradient(forward, arrays[which], eps=1e-3, rtol=1e-2, atol=2e-3, probes=10)


def test_gradients_with_termination_active(device):
    # Densities high enough that some rays terminate: FD still matches the truncated sum wherever the
    # perturbation does not move a sample across the threshold (true for these fixed draws).
    samples, sigma, colors, bg = case(seed=2, dense=True, n_samples=8)
    dens = farr(sigma, True)
    on = composite(farr(sigma), farr(colors), samples, farr(bg))[1].numpy()
    off = composite(farr(sigma), farr(colors), samples, farr(bg), min_transmittance=0.0)[1].numpy()
    assert np.any(on != off)  # termination changes something here
    check_gradient(lambda: weighted_loss(composite(dens, farr(colors), samples, farr(bg))[0]), dens,
                   eps=1e-3, rtol=1e-2, atol=2e-3, probes=12)


def test_output_gradients_survive_backward(device):
    # outputs are atomic-add accumulations, so their .grad holds d(loss)/d(output) after backward
    samples, sigma, colors, bg = case(seed=4)
    tape = wp.Tape()
    with tape:
        rgb, opacity, depth = composite(farr(sigma, True), farr(colors, True), samples, farr(bg))
        loss = weighted_loss(rgb, seed=7)
    tape.backward(loss)
    w = np.random.default_rng(7).uniform(-1, 1, rgb.shape).astype(np.float32)
    np.testing.assert_allclose(rgb.grad.numpy(), w, rtol=1e-6)


def test_no_rays_and_no_samples(device):
    empty = sample_rays(wp.zeros(0, dtype=wp.vec3), wp.zeros(0, dtype=wp.vec3), BOX, 4)
    rgb, opacity, depth = composite(farr(np.zeros(0)), farr(np.zeros((0, 3))), empty, farr([1, 1, 1]))
    assert rgb.shape == (0, 3) and opacity.shape == (0,) and depth.shape == (0,)


def test_validation_errors_name_the_argument(device):
    samples, sigma, colors, bg = case()
    with pytest.raises(ValueError, match="densities"):
        composite(farr(sigma[:-1]), farr(colors), samples, farr(bg))
    with pytest.raises(TypeError, match="densities"):
        composite(sigma, farr(colors), samples, farr(bg))
    with pytest.raises(ValueError, match="colors"):
        composite(farr(sigma), farr(colors[:, :2]), samples, farr(bg))
    with pytest.raises(TypeError, match="colors"):
        composite(farr(sigma), wp.zeros(len(sigma), dtype=wp.vec3), samples, farr(bg))
    with pytest.raises(ValueError, match="background"):
        composite(farr(sigma), farr(colors), samples, farr(np.zeros(4)))
    with pytest.raises(TypeError, match="samples"):
        composite(farr(sigma), farr(colors), None, farr(bg))
    with pytest.raises(ValueError, match="min_transmittance"):
        composite(farr(sigma), farr(colors), samples, farr(bg), min_transmittance=1.0)


def _scale_factors(samples: Samples, directions: np.ndarray, distance: float) -> np.ndarray:
    """NumPy: min(1, (t |d| / distance)^2) per sample."""
    r = samples.t_points.numpy() * np.linalg.norm(directions, axis=1)[samples.ray_indices.numpy()]
    return np.minimum((r / distance) ** 2, 1.0)


def _composite_grads(samples, sigma, colors, bg, distance=None, directions=None):
    dens, cols = farr(sigma, True), farr(colors, True)
    tape = wp.Tape()
    with tape:
        if distance is not None:
            scale_gradients_by_distance(dens, cols, samples, wp.array(directions.astype(np.float32), dtype=wp.vec3),
                                        distance)
        loss = weighted_loss(composite(dens, cols, samples, farr(bg), min_transmittance=0.0)[0])
    tape.backward(loss)
    return dens.grad.numpy(), cols.grad.numpy(), loss.numpy()


@pytest.mark.parametrize("distance", [0.5, 3.0, 100.0])
def test_gradient_scaling_by_distance(distance, device):
    # Floaters No More: each sample's density and color adjoints times min(1, (t |d| / distance)^2); the forward
    # values are untouched. The rays start 3 units from the box's centre, samples lie 2-4 units away: distance
    # 0.5 leaves every sample's gradient as it is, 3.0 scales the nearer ones, 100 all of them.
    samples, sigma, colors, bg = case(seed=5)
    rng = np.random.default_rng(5)
    directions = np.tile([0.0, 0.0, -1.0], (7, 1)) + rng.uniform(-0.1, 0.1, (7, 3))
    samples = sample_rays(wp.array(np.array([[0.1 * i - 0.3, 0.05 * i, 3.0] for i in range(6)] + [[5.0, 5.0, 3.0]],
                                            np.float32), dtype=wp.vec3),
                          wp.array(directions.astype(np.float32), dtype=wp.vec3), BOX, 6, seed=5)
    sigma, colors = sigma[:samples.n_samples], colors[:samples.n_samples]
    plain_d, plain_c, plain_loss = _composite_grads(samples, sigma, colors, bg)
    d, c, loss = _composite_grads(samples, sigma, colors, bg, distance, directions)
    k = _scale_factors(samples, directions, distance)
    assert loss == plain_loss  # the forward pass is the same
    if distance == 0.5:
        assert np.all(k == 1.0)
    else:
        assert k.min() < 0.9
    np.testing.assert_allclose(d, k * plain_d, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(c, k[:, None] * plain_c, rtol=1e-6, atol=1e-12)


def test_gradient_scaling_rejects_a_bad_distance(device):
    samples, sigma, colors, _ = case(seed=6)
    directions = wp.zeros(samples.n_rays, dtype=wp.vec3)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="distance"):
            scale_gradients_by_distance(farr(sigma, True), farr(colors, True), samples, directions, bad)
