"""renderer.parallel: a multi-view batch spread over threads (`render_views`, what `Problem.step` uses on
the CPU) gives the images and gradients of a serial loop of `render_view`, with and without a G-buffer
cache. Gradients are summed in another order: compared at 1e-5 of the largest entry."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import warp as wp
from drstudio.renderer import parallel
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.render import render_view
from drstudio.renderer.render_cache import GBufferCache
from support import scenes
from support.gradcheck import weighted_loss

wp.config.quiet = True
PATHS = ["materials.canvas.albedo", "meshes.card.vertices", "lights.point0.color", "cameras.side.pose"]


@wp.kernel
def _add(src: wp.array(dtype=float), dst: wp.array(dtype=float)):
    wp.atomic_add(dst, 0, src[0])


def _scene():
    sc = scenes.gradient_scene(32, 24, mode="antialias")
    for name, eye in (("side", (2.0, 0.6, 2.4)), ("top", (0.2, 3.0, 1.0))):
        sc.cameras[name] = scenes.cam(32, 24, scenes.look_at(eye, (0.0, 0.0, 0.0)), 45.0, name=name)
    return sc


def _batch(ds, cache, threaded):
    ds.zero_grad()
    tape = wp.Tape()
    cams = list(ds.scene.cameras)
    with tape:
        frame = ds.prepare(cache=cache)
        if threaded:
            outs = parallel.render_views(ds, frame, cams, workers=2, cache=cache)
        else:
            outs = [render_view(ds, frame, c, cache=cache) for c in cams]
        total = wp.zeros(1, dtype=float, requires_grad=True)
        for k, o in enumerate(outs):
            wp.launch(_add, dim=1, inputs=[weighted_loss(o.image, seed=k), total])
    tape.backward(total)
    out = [o.image.numpy().copy() for o in outs], {p: ds.arrays[p].grad.numpy().copy() for p in PATHS}
    tape.reset()
    return out


@pytest.mark.parametrize("cached", [False, True])
def test_render_views_matches_serial(cached):
    ds = DeviceScene(_scene(), "cpu")
    varying = ["materials.canvas.albedo", "lights.point0.color"]
    ref_imgs, ref = _batch(ds, None, False)
    cache = GBufferCache(ds, varying=varying) if cached else None
    for _ in range(2):
        imgs, got = _batch(ds, cache, True)
        for a, b in zip(imgs, ref_imgs, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for p in (PATHS if not cached else varying):
            scale = np.abs(ref[p]).max()
            assert scale > 0, p
            np.testing.assert_allclose(got[p], ref[p], rtol=0, atol=1e-5 * scale, err_msg=p)


def test_concurrent_batches_on_two_threads_match_serial():
    # the active tape is per thread (renderer.thread_tape): two threads, each under a tape of its own,
    # may run parallel batches at once (sharing the worker pool) and get the serial result
    a, b = DeviceScene(_scene(), "cpu"), DeviceScene(_scene(), "cpu")
    b.set("lights.point0.color", np.array([0.2, 1.0, 0.6], np.float32))
    refs = [_batch(ds, None, False) for ds in (a, b)]
    for _ in range(2):
        results, errors = {}, []

        def run(ds, key, results=results, errors=errors):
            try:
                results[key] = _batch(ds, None, True)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(ds, k)) for k, ds in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(results) == 2, errors
        for k, (ref_imgs, ref) in enumerate(refs):
            imgs, got = results[k]
            for x, y in zip(imgs, ref_imgs, strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
            for p in PATHS:
                scale = np.abs(ref[p]).max()
                np.testing.assert_allclose(got[p], ref[p], rtol=0, atol=1e-5 * scale, err_msg=p)
