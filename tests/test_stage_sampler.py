"""Sampler stage: counter-based random numbers are reproducible, match an independent NumPy
reimplementation of the hash bit for bit, are uniform and decorrelated across dimensions, pixels and
seeds, and come from a table builder that validates its arguments."""

import numpy as np
import pytest
from drstudio.renderer.stages.sampler import random_table

MASK = 0xFFFFFFFF


def pcg(x: int) -> int:
    state = (x * 747796405 + 2891336453) & MASK
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & MASK
    return ((word >> 22) ^ word) & MASK


def reference(seed, pixel, sample, dim):
    h = pcg(dim)
    h = pcg((sample + h) & MASK)
    h = pcg((pixel + h) & MASK)
    return (pcg((seed + h) & MASK) >> 8) / 2.0**24


def test_matches_reference_and_is_reproducible():
    a = random_table(12345, 64, 6, sample=3, dim0=10).numpy()
    b = random_table(12345, 64, 6, sample=3, dim0=10).numpy()
    assert np.array_equal(a, b)
    for p, d in [(0, 0), (5, 2), (63, 5), (17, 4)]:
        assert a[p, d] == pytest.approx(reference(12345, p, 3, 10 + d), abs=0)
    # seeds beyond int32 wrap to their low 32 bits
    big = random_table(2**32 + 7, 4, 2).numpy()
    assert np.array_equal(big, random_table(7, 4, 2).numpy())


def test_uniform_and_decorrelated():
    t = random_table(7, 20000, 8).numpy().astype(np.float64)
    assert t.min() >= 0.0 and t.max() < 1.0
    # mean and variance of 160k uniforms: standard errors 7e-4 and 2e-4
    assert abs(t.mean() - 0.5) < 4e-3
    assert abs(t.var() - 1 / 12) < 1.5e-3
    # 20 bins, 20000 draws per dimension: chi-square with 19 dof, 99.9% quantile 43.8
    for d in range(t.shape[1]):
        counts = np.histogram(t[:, d], bins=20, range=(0, 1))[0]
        assert ((counts - 1000) ** 2 / 1000).sum() < 43.8
    # correlations between dimensions, neighbouring pixels and seeds: standard error 1/sqrt(20000) = 0.007
    c = np.corrcoef(t.T)
    assert np.abs(c[~np.eye(8, dtype=bool)]).max() < 0.035
    assert abs(np.corrcoef(t[:-1, 0], t[1:, 0])[0, 1]) < 0.035
    other = random_table(8, 20000, 1).numpy()[:, 0]
    assert abs(np.corrcoef(t[:, 0], other)[0, 1]) < 0.035
    other_sample = random_table(7, 20000, 1, sample=1).numpy()[:, 0]
    assert abs(np.corrcoef(t[:, 0], other_sample)[0, 1]) < 0.035


def test_validation():
    with pytest.raises(ValueError, match="pixels"):
        random_table(0, 0, 2)
    with pytest.raises(ValueError, match="dims"):
        random_table(0, 2, -1)
    with pytest.raises(TypeError, match="seed"):
        random_table(0.5, 2, 2)
