"""Background stage: compositing over a color or an image against NumPy, its tape gradients, and the
coverage of hard rasterization ids."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.stages.background import composite, composite_output, coverage_from_ids
from support.gradcheck import check_gradient, weighted_loss

N = 7


def farr(a, grad=False):
    return wp.array(np.asarray(a, np.float32), dtype=float, requires_grad=grad)


def case(image_background: bool, seed=0):
    rng = np.random.default_rng(seed)
    color = rng.uniform(0, 1, (N, 3))
    coverage = np.concatenate([[0.0, 1.0], rng.uniform(0, 1, N - 2)])  # both ends and partial coverage
    bg = rng.uniform(0, 1, (N, 3) if image_background else 3)
    return color, coverage, bg


@pytest.mark.parametrize("image_background", [False, True])
def test_composite_matches_numpy(image_background, device):
    color, coverage, bg = case(image_background)
    out = composite(farr(color), farr(coverage), farr(bg)).numpy()
    want = coverage[:, None] * color + (1 - coverage[:, None]) * np.broadcast_to(bg, (N, 3))
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out[0], np.broadcast_to(bg, (N, 3))[0], rtol=1e-6)  # coverage 0: background
    np.testing.assert_allclose(out[1], color[1], rtol=1e-6)  # coverage 1: the color


# The composite is bilinear in (coverage, color | background) with O(1) values over 21 outputs: the
# loss has float32 roundoff ~1e-6, so with eps = 1e-3 the central difference is good to ~1e-3 absolute
# and has no truncation error (second order in each argument separately, exact for the linear ones).
@pytest.mark.parametrize("which", ["color", "coverage", "background"])
@pytest.mark.parametrize("image_background", [False, True])
def test_composite_gradients(image_background, which, device):
    color, coverage, bg = case(image_background, seed=1)
    arrays = {"color": farr(color, True), "coverage": farr(coverage, True), "background": farr(bg, True)}
    check_gradient(lambda: weighted_loss(composite(**arrays)), arrays[which], eps=1e-3, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("image_background", [False, True])
def test_composite_output_equals_composite_and_keeps_its_gradient(image_background, device):
    color, coverage, bg = case(image_background, seed=4)
    want = composite(farr(color), farr(coverage), farr(bg)).numpy()
    arrays = [farr(color, True), farr(coverage, True), farr(bg, True)]
    tape = wp.Tape()
    with tape:
        comp, out = composite_output(*arrays, keep_composite=True)
        loss = weighted_loss(out, seed=5)
    tape.backward(loss)
    np.testing.assert_array_equal(out.numpy(), want)
    np.testing.assert_array_equal(comp.numpy(), want)
    w = np.random.default_rng(5).uniform(-1, 1, (N, 3)).astype(np.float32)
    np.testing.assert_array_equal(out.grad.numpy(), w)  # still readable after the backward pass
    assert composite_output(*arrays)[0] is None


# both outputs feed the loss: the adjoint must add the composite's and the accumulated output's gradients
@pytest.mark.parametrize("which", ["color", "coverage", "background"])
@pytest.mark.parametrize("image_background", [False, True])
def test_composite_output_gradients(image_background, which, device):
    color, coverage, bg = case(image_background, seed=6)
    arrays = {"color": farr(color, True), "coverage": farr(coverage, True), "background": farr(bg, True)}

    def forward():
        comp, out = composite_output(**arrays, keep_composite=True)
        a, b = weighted_loss(comp, seed=7), weighted_loss(out, seed=8)
        wp.launch(_add, dim=1, inputs=[a, b])
        return b

    check_gradient(forward, arrays[which], eps=1e-3, rtol=1e-3, atol=1e-3)


@wp.kernel
def _add(src: wp.array(dtype=float), dst: wp.array(dtype=float)):
    wp.atomic_add(dst, 0, src[0])


def test_background_color_gradient_sums_over_pixels(device):
    # d/d bg_k of sum_i w_ik (1 - c_i) bg_k = sum_i w_ik (1 - c_i), exactly
    color, coverage, bg = case(False, seed=2)
    bg_arr = farr(bg, True)
    tape = wp.Tape()
    with tape:
        out = composite(farr(color), farr(coverage), bg_arr)
        loss = weighted_loss(out, seed=3)
    tape.backward(loss)
    w = np.random.default_rng(3).uniform(-1, 1, (N, 3)).astype(np.float32)  # weighted_loss's weights
    want = ((1 - coverage)[:, None] * w).sum(0)
    np.testing.assert_allclose(bg_arr.grad.numpy(), want, rtol=1e-5, atol=1e-6)


def test_coverage_from_ids(device):
    ids = np.array([-1, 0, 5, -1, 2], np.int32)
    cov = coverage_from_ids(wp.array(ids, dtype=wp.int32))
    np.testing.assert_array_equal(cov.numpy(), (ids >= 0).astype(np.float32))
    assert cov.dtype == wp.float32 and cov.shape == (5,)


def test_validation_errors_name_the_argument(device):
    color, coverage, bg = case(False)
    with pytest.raises(ValueError, match="coverage"):
        composite(farr(color), farr(coverage[:-1]), farr(bg))
    with pytest.raises(ValueError, match="background"):
        composite(farr(color), farr(coverage), farr(np.zeros(4)))
    with pytest.raises(ValueError, match="background"):
        composite(farr(color), farr(coverage), farr(np.zeros((N + 1, 3))))
    with pytest.raises(TypeError, match="background"):
        composite(farr(color), farr(coverage), np.zeros(3))
    with pytest.raises(TypeError, match="color"):
        composite(wp.zeros(N, dtype=wp.vec3), farr(coverage), farr(bg))
    with pytest.raises(TypeError, match="tri_id"):
        coverage_from_ids(farr([0.0, 1.0]))
