"""`volume.srgb.linear_to_srgb`: the forward against the NumPy reference (`conventions.linear_to_srgb`), and its
adjoint against central differences of the op itself (float32) and of the reference (float64)."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.conventions import linear_to_srgb as reference
from drstudio.renderer.volume.srgb import linear_to_srgb

# both segments, the joint's neighbourhood, near 1, and outside [0, 1] (clamped: slope 0)
X = np.array([[0.0005, 0.002, 0.003], [0.0035, 0.01, 0.05], [0.2, 0.5, 0.97], [-0.2, 1.3, 0.7]], np.float32)


def encode(x: np.ndarray, weights: np.ndarray | None = None):
    colors = wp.array(x, dtype=float, requires_grad=weights is not None)
    tape = wp.Tape()
    with tape:
        out = linear_to_srgb(colors)
    if weights is None:
        return out.numpy()
    tape.backward(grads={out: wp.array(weights, dtype=float)})
    return out.numpy(), colors.grad.numpy()


def test_forward_matches_numpy(device):
    np.testing.assert_allclose(encode(X), reference(X), rtol=2e-6, atol=1e-7)
    assert encode(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_adjoint_matches_central_differences(device):
    w = np.random.default_rng(0).uniform(0.5, 1.5, X.shape).astype(np.float32)
    _, grad = encode(X, w)
    # float64 reference, h well inside each segment (the nearest joint or clamp is >= 5e-4 away)
    h = 1e-6
    fd64 = w * (reference(X.astype(np.float64) + h) - reference(X.astype(np.float64) - h)) / (2 * h)
    np.testing.assert_allclose(grad, fd64, rtol=1e-4, atol=1e-6)
    # the op itself in float32: h = 1e-4 on values of O(1); round-off 6e-8 / 2e-4 ~ 3e-4 relative
    h = np.float32(1e-4)
    fd32 = w * (encode(X + h).astype(np.float64) - encode(X - h)) / (2 * h)
    np.testing.assert_allclose(grad, fd32, rtol=3e-3, atol=2e-3)
    assert grad[3, 0] == 0 and grad[3, 1] == 0  # clamped


def test_validation(device):
    with pytest.raises(TypeError, match="colors"):
        linear_to_srgb(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="colors"):
        linear_to_srgb(wp.zeros((2, 4), dtype=float))
