"""renderer.optim.large_steps: Nicolet et al.'s parametrization — the Laplacian, the update against a
NumPy reference of uniform Adam, smoothed steps, convergence, state round trip, the NaN guard."""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.optim.large_steps import LargeSteps, uniform_laplacian
from support.scenes import icosphere


def test_uniform_laplacian():
    faces = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])  # a tetrahedron: every vertex degree 3
    L = uniform_laplacian(faces, 4).toarray()
    np.testing.assert_array_equal(np.diag(L), [3, 3, 3, 3])
    np.testing.assert_array_equal(L, L.T)
    np.testing.assert_array_equal(L.sum(axis=1), 0)


def leaf(x, device):
    return wp.array(np.asarray(x, np.float32), dtype=wp.vec3, device=device, requires_grad=True)


def test_update_matches_a_numpy_reference(device):
    v, f = icosphere(1.0, 1)
    x = leaf(v, device)
    opt = LargeSteps(x, f, lam=5.0, lr=0.05)
    rng = np.random.default_rng(0)
    M = np.eye(len(v)) + 5.0 * uniform_laplacian(f, len(v)).toarray()
    u, m, g2 = M @ v.astype(np.float64), np.zeros((len(v), 3)), np.zeros((len(v), 3))
    for t in range(1, 4):  # the largesteps package's AdamUniform: the step divided by the largest sqrt(v_hat)
        g = rng.normal(size=(len(v), 3)).astype(np.float32)
        x.grad.assign(wp.array(g, dtype=wp.vec3, device=device))
        assert opt.step()
        gu = np.linalg.solve(M, g.astype(np.float64))
        m = 0.9 * m + 0.1 * gu
        g2 = 0.999 * g2 + 0.001 * gu * gu
        u = u - 0.05 * (m / (1 - 0.9**t)) / (np.sqrt(g2 / (1 - 0.999**t)).max() + 1e-8)
        np.testing.assert_allclose(x.numpy(), np.linalg.solve(M, u), atol=2e-6)


def test_steps_are_smooth_and_converge(device):
    """A gradient that pulls one vertex moves its neighbourhood smoothly (plain Adam would move that vertex
    alone); minimizing |x - target|^2 reaches a smooth target."""
    v, f = icosphere(1.0, 2)
    x = leaf(v, device)
    opt = LargeSteps(x, f, lam=20.0, lr=0.01)
    g = np.zeros((len(v), 3), np.float32)
    g[0] = -v[0]  # pull vertex 0 outward
    x.grad.assign(wp.array(g, dtype=wp.vec3, device=device))
    opt.step()
    dx = x.numpy() - v
    moved = np.linalg.norm(dx, axis=1)
    neighbours = np.unique(f[(f == 0).any(axis=1)])
    assert moved[neighbours].min() > 0.2 * moved[0]  # the neighbourhood follows
    L = uniform_laplacian(f, len(v))
    rough = lambda d: np.linalg.norm(L @ d) / np.linalg.norm(d)  # noqa: E731
    assert rough(dx) < 0.2 * rough(g)  # the step is much smoother than the gradient
    target = (v * 1.3).astype(np.float32)
    for _ in range(1500):  # high frequencies of x move slowly through u: the price of smooth steps
        x.grad.assign(wp.array(2 * (x.numpy() - target), dtype=wp.vec3, device=device))
        opt.step()
    err = np.abs(x.numpy() - target)  # from 0.3 (the 1.3x scale) at the start
    assert err.max() < 0.03 and err.mean() < 0.01


def test_state_round_trip_and_nan_guard(device):
    v, f = icosphere(1.0, 1)
    x = leaf(v, device)
    opt = LargeSteps(x, f, lam=3.0, lr=0.1)
    x.grad.assign(wp.array(np.ones((len(v), 3), np.float32), dtype=wp.vec3, device=device))
    opt.step()
    state, before = opt.state_dict(), x.numpy().copy()
    x.grad.assign(wp.array(np.full((len(v), 3), np.nan, np.float32), dtype=wp.vec3, device=device))
    assert not opt.step()
    np.testing.assert_array_equal(x.numpy(), before)
    x2 = leaf(v, device)
    opt2 = LargeSteps(x2, f, lam=3.0, lr=0.1)
    opt2.load_state_dict(state)
    np.testing.assert_allclose(x2.numpy(), before, atol=1e-6)
    with pytest.raises(ValueError, match="faces"):
        LargeSteps(x, f + 100)
