"""The shipped path scenes (scenes/cornell_box.json, scenes/env_object.json) against Mitsuba 3, through
`benchmarks/mitsuba_scene.py`'s converter, at low spp and small sizes: images and albedo-gradient images
differ by what two unbiased estimates with the measured noise levels differ by. Also: the converter's GGX
plugin evaluates drstudio's `shading.brdf` (the one formula the comparison shares), and its sampling weight
is its value over its pdf. Skipped without Mitsuba (the `bench` extra, not in the locked environment).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mitsuba")

import warp as wp  # noqa: E402
from drstudio.renderer.stages import shading  # noqa: E402

from benchmarks import mitsuba_scene as ms  # noqa: E402


@pytest.mark.parametrize("name, size, spp", [("cornell_box", 24, 64), ("env_object", 20, 64)])
def test_shipped_scene_matches_mitsuba_within_noise(name, size, spp):
    row = ms.compare(name, spp, size=size, env_upsample=16)
    # |a - b| of two unbiased estimates averages sqrt((noise_a^2 + noise_b^2) / 2); a systematic difference
    # adds to it (measured 1.00-1.02x at 1024 spp; a point-sampled envmap at 16x, without the symmetric
    # edges of `env_for_mitsuba`, gave 1.17x)
    assert row["mad"] < 1.15 * row["expected"], row
    # image means: 64 spp leave ~0.5 % noise in them (measured within 0.1 % at 1024 spp)
    assert all(abs(r - 1) < 0.02 for r in row["mean_ratio"]), row


@pytest.mark.parametrize("name, size, spp", [("cornell_box", 10, 64), ("env_object", 10, 64)])
def test_albedo_gradient_image_matches_mitsuba_prb(name, size, spp):
    row = ms.compare_gradient(name, spp, size=size)
    noise = max(row["rel_noise_dr"], row["rel_noise_mi"])
    assert row["rel"] < 1.2 * noise, row
    assert all(abs(r - 1) < 0.05 for r in row["sum_ratio"]), row


@wp.kernel
def _brdf_cos(wi: wp.array(dtype=wp.vec3), wo: wp.array(dtype=wp.vec3), albedo: wp.vec3, roughness: float,
              metallic: float, out: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    n = wp.vec3(0.0, 0.0, 1.0)
    out[i] = shading.brdf(n, wi[i], wo[i], albedo, roughness, metallic, shading.MODEL_GGX) * wp.max(wo[i][2], 0.0)


def _directions(rng, n):
    d = rng.normal(size=(n, 3))
    d[:, 2] = np.abs(d[:, 2]) + 0.05
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("roughness, metallic", [(0.3, 0.0), (0.6, 1.0), (0.15, 0.4)])
def test_ggx_plugin_is_drstudios_brdf(roughness, metallic):
    mi, dr = ms.mitsuba()
    albedo = (0.7, 0.25, 0.2)
    bsdf = mi.load_dict({"type": "drstudio_ggx", "albedo": mi.ScalarColor3f(*albedo), "roughness": roughness,
                         "metallic": metallic})
    rng = np.random.default_rng(0)
    n = 256
    wi, wo = _directions(rng, n), _directions(rng, n)
    expected = wp.zeros(n, dtype=wp.vec3, device="cpu")
    wp.launch(_brdf_cos, dim=n, inputs=[wp.array(wi, dtype=wp.vec3, device="cpu"),
                                        wp.array(wo, dtype=wp.vec3, device="cpu"), wp.vec3(*albedo), roughness,
                                        metallic], outputs=[expected], device="cpu")
    si = dr.zeros(mi.SurfaceInteraction3f)
    si.wi = mi.Vector3f(wi[:, 0], wi[:, 1], wi[:, 2])
    ctx = mi.BSDFContext()
    got = np.array(bsdf.eval(ctx, si, mi.Vector3f(wo[:, 0], wo[:, 1], wo[:, 2]))).T
    np.testing.assert_allclose(got, expected.numpy(), rtol=2e-4, atol=1e-6)
    # two-sided: the back side mirrors the front
    si.wi = mi.Vector3f(wi[:, 0], wi[:, 1], -wi[:, 2])
    back = np.array(bsdf.eval(ctx, si, mi.Vector3f(wo[:, 0], wo[:, 1], -wo[:, 2]))).T
    np.testing.assert_allclose(back, got, rtol=1e-6, atol=1e-7)
    # sampling: weight = eval / pdf at the sampled direction; the pdf integrates to at most 1 over the
    # hemisphere (less where GGX reflects microfacet samples below the horizon: those are lost, as in drstudio)
    si.wi = mi.Vector3f(wi[:, 0], wi[:, 1], wi[:, 2])
    bs, weight = bsdf.sample(ctx, si, mi.Float(rng.random(n)), mi.Point2f(rng.random(n), rng.random(n)))
    value, pdf = bsdf.eval_pdf(ctx, si, bs.wo)
    pdf = np.array(pdf)
    ok = pdf > 1e-3
    np.testing.assert_allclose(np.array(weight).T[ok], np.array(value).T[ok] / pdf[ok, None], rtol=1e-4)
    m = 200_000
    u = rng.random((m, 2))
    cos_t = u[:, 0]
    sin_t = np.sqrt(1 - cos_t ** 2)
    d = np.stack([sin_t * np.cos(2 * np.pi * u[:, 1]), sin_t * np.sin(2 * np.pi * u[:, 1]), cos_t], 1)
    si = dr.zeros(mi.SurfaceInteraction3f, m)
    si.wi = mi.Vector3f(np.full(m, 0.6), np.zeros(m), np.full(m, 0.8))
    total = float(np.mean(np.array(bsdf.pdf(ctx, si, mi.Vector3f(d[:, 0], d[:, 1], d[:, 2])))) * 2 * np.pi)
    assert 0.8 < total < 1.02, total
