"""G-buffer reuse (`renderer.render_cache.GBufferCache`): a cached render gives the uncached render's image
and the gradients of every parameter that is not a dependency of a stored part; edits invalidate it.

Independent expectation: the same `render_view` without a cache (the full, recorded pipeline), and
central differences (`support.gradcheck.check_gradient`) through the cached path. The cached path samples
the albedo as a weighted gather of stored texel addresses and weights, and for a Lambert-only scene
computes the radiance as albedo * (ambient + sum_j E_j s_j / pi) instead of summing the lights per pixel:
the same sums in another order, so images match to float32 roundoff (rtol 1e-5), not bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp
from drstudio.renderer import parallel
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.render import render_view
from drstudio.renderer.render_cache import GBufferCache
from support import scenes
from support.devices import assert_same_render
from support.gradcheck import check_gradient, weighted_loss

wp.config.quiet = True
ALBEDO = "materials.canvas.albedo"


def _scene(mode="antialias", lambert=False):
    sc = scenes.gradient_scene(32, 24, mode=mode)
    if lambert:
        sc.materials["gloss"].model = "lambert"
    return sc


def _step(ds, cache, paths, mode=None, split=False):
    """(image, {path: grad}) of sum(w * image) under a tape."""
    ds.zero_grad()
    tape = wp.Tape()
    with tape:
        frame = ds.prepare(cache=cache)
        if split:
            out = parallel.render_view_split(ds, frame, "main", parts=2, mode=mode, cache=cache)
        else:
            out = render_view(ds, frame, "main", mode=mode, cache=cache)
        loss = weighted_loss(out.image, seed=3)
    tape.backward(loss)
    grads = {p: ds.arrays[p].grad.numpy().copy() for p in paths}
    image = out.image.numpy().copy()
    tape.reset()
    return image, grads


@pytest.mark.parametrize("mode", ["hard", "antialias"])
@pytest.mark.parametrize("lambert", [False, True])
def test_cached_render_matches_uncached_image_and_appearance_gradients(mode, lambert, device):
    ds = DeviceScene(_scene(mode, lambert), device)
    paths = [ALBEDO, "materials.gloss.albedo", "lights.point0.color", "lights.point0.intensity", "lights.sun0.color",
             "lights.ambient0.color"]
    paths = [p for p in paths if p in ds.arrays]
    ref_img, ref_grads = _step(ds, None, paths)
    assert np.abs(ref_grads[ALBEDO]).max() > 0
    cache = GBufferCache(ds, varying=[ALBEDO])
    for call in range(2):  # the first call builds the parts, the second reuses them
        img, grads = _step(ds, cache, paths)
        np.testing.assert_allclose(img, ref_img, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grads[ALBEDO], ref_grads[ALBEDO], rtol=1e-5, atol=1e-7)
        if call == 0:
            assert cache.builds > 0 and cache.hits == 0
    assert cache.hits > 0


def test_varying_light_color_and_vertex_colors_keep_exact_gradients(device):
    """Free light colors and vertex colors: the parts depending on them are recomputed (differentiably)
    while the visibility part is reused; gradients equal the uncached ones and central differences."""
    ds = DeviceScene(_scene("antialias", lambert=True), device)
    varying = [ALBEDO, "lights.point0.color", "meshes.card.colors"]
    _, ref = _step(ds, None, varying)
    cache = GBufferCache(ds, varying=varying)
    _step(ds, cache, varying)
    _, got = _step(ds, cache, varying)
    assert cache.hits > 0
    for p in varying:
        assert np.abs(ref[p]).max() > 0, p
        np.testing.assert_allclose(got[p], ref[p], rtol=1e-4, atol=1e-6, err_msg=p)

    def forward():
        return weighted_loss(render_view(ds, ds.prepare(cache=cache), "main", cache=cache).image, seed=3)

    for p in varying:
        check_gradient(forward, ds.arrays[p], eps=1e-2 if p == ALBEDO else 1e-3, rtol=2e-2, atol=2e-3, probes=4)


def test_texture_gradient_through_cached_path_matches_central_differences(device):
    ds = DeviceScene(_scene("antialias", lambert=True), device)
    cache = GBufferCache(ds, varying=[ALBEDO])

    def forward():
        return weighted_loss(render_view(ds, ds.prepare(cache=cache), "main", cache=cache).image, seed=5)

    forward()
    check_gradient(forward, ds.arrays[ALBEDO], eps=1e-2, rtol=2e-2, atol=2e-3, probes=8)


def test_edits_invalidate_the_stored_parts(device):
    ds = DeviceScene(_scene("antialias"), device)
    cache = GBufferCache(ds, varying=[ALBEDO])
    render_view(ds, ds.prepare(), "main", cache=cache)
    for path, delta in (("meshes.orb.translation", np.array([0.1, 0.0, 0.0], np.float32)),
                        ("cameras.main.pose", np.array([0.05, 0, 0, 0, 0, 0, 0], np.float32)),
                        ("lights.point0.position", np.array([0.0, -1.0, 0.0], np.float32)),
                        ("lights.point0.intensity", np.array([2.0], np.float32))):
        ds.set(path, ds.get(path) + delta)
        got = render_view(ds, ds.prepare(cache=cache), "main", cache=cache).numpy()
        want = render_view(ds, ds.prepare(), "main").numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=path)
    # an in-place write without set() is seen after touch()
    before = render_view(ds, ds.prepare(), "main", cache=cache).numpy()
    a = ds.arrays["meshes.card.vertices"]
    a.assign(wp.array(a.numpy() * 1.1, dtype=wp.vec3))
    stale = render_view(ds, ds.prepare(), "main", cache=cache).numpy()
    assert_same_render(stale, before, device)  # undeclared in-place edits are not seen: documented
    ds.touch("meshes.card.vertices")
    np.testing.assert_allclose(render_view(ds, ds.prepare(cache=cache), "main", cache=cache).numpy(),
                               render_view(ds, ds.prepare(), "main").numpy(), rtol=1e-5, atol=1e-6)


def test_varying_geometry_is_never_stored_and_changing_varying_clears(device):
    ds = DeviceScene(_scene("antialias"), device)
    cache = GBufferCache(ds, varying=["meshes.card.vertices"])
    assert not cache.cacheable("visibility", "main") and not cache.cacheable("uv", "main")
    render_view(ds, ds.prepare(), "main", cache=cache)
    assert cache.builds == 0 and cache.nbytes == 0
    cache.set_varying([ALBEDO])
    render_view(ds, ds.prepare(), "main", cache=cache)
    assert cache.builds > 0 and cache.nbytes > 0
    cache.set_varying([ALBEDO, "lights.point0.color"])
    assert cache.nbytes == 0


def test_stored_parts_are_built_off_the_tape(device):
    ds = DeviceScene(_scene("antialias", lambert=True), device)
    cache = GBufferCache(ds, varying=[ALBEDO])
    counts = []
    for _ in range(3):
        tape = wp.Tape()
        with tape:
            render_view(ds, ds.prepare(), "main", cache=cache)
        counts.append(len(tape.launches))
        tape.reset()
    assert counts[0] == counts[1] == counts[2]
    tape = wp.Tape()
    with tape:
        render_view(ds, ds.prepare(), "main")
    assert len(tape.launches) > counts[0]


def test_split_render_with_cache_matches_single_thread(device):
    ds = DeviceScene(_scene("antialias", lambert=True), device)
    ref_img, ref = _step(ds, None, [ALBEDO])
    cache = GBufferCache(ds, varying=[ALBEDO])
    for _ in range(2):
        img, got = _step(ds, cache, [ALBEDO], split=True)
        np.testing.assert_allclose(img, ref_img, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[ALBEDO], ref[ALBEDO], rtol=1e-4, atol=1e-6)
    assert cache.hits > 0


def test_arguments_are_validated(device):
    ds = DeviceScene(_scene("hard"), device)
    other = DeviceScene(_scene("hard"), device)
    with pytest.raises(ValueError, match="cache"):
        render_view(ds, ds.prepare(), "main", cache=GBufferCache(other))
    with pytest.raises(TypeError, match="cache"):
        render_view(ds, ds.prepare(), "main", cache=object())
    with pytest.raises(ValueError, match="varying"):
        GBufferCache(ds, varying=["no.such.path"])
    with pytest.raises(ValueError, match="max_bytes"):
        GBufferCache(ds, max_bytes=-1)
    with pytest.raises(ValueError, match="part"):
        GBufferCache(ds).dependencies("nope", "main")


def test_memory_budget_drops_least_recently_used_views(device):
    ds = DeviceScene(_scene("hard"), device)
    cache = GBufferCache(ds, varying=[ALBEDO], max_bytes=1)
    render_view(ds, ds.prepare(), "main", cache=cache)
    assert len(cache._entries) == 1  # only the most recent part is kept over budget


def test_prepare_reuses_the_packed_geometry_until_it_changes(device):
    ds = DeviceScene(_scene("antialias"), device)
    cache = GBufferCache(ds, varying=[ALBEDO, "meshes.card.colors"])
    a, b = ds.prepare(cache=cache), ds.prepare(cache=cache)
    assert a.world is b.world and a.uvs is b.uvs and not a.world.requires_grad
    assert a.colors is not b.colors and b.colors.requires_grad  # varying: packed (differentiably) every call
    ds.set("meshes.orb.scale", ds.get("meshes.orb.scale") * 1.2)
    c = ds.prepare(cache=cache)
    assert c.world is not b.world
    np.testing.assert_allclose(c.world.numpy(), ds.prepare().world.numpy())
    # the BVH follows: shadows of the moved orb match the uncached render
    np.testing.assert_allclose(render_view(ds, ds.prepare(cache=cache), "main", cache=cache).numpy(),
                               render_view(ds, ds.prepare(), "main").numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cache"):
        DeviceScene(_scene("hard"), device).prepare(cache=cache)
