"""`DeviceScene.differentiating(paths)`: renders differentiate only the given paths, with the same gradients
of those paths as a render that differentiates every leaf, and fewer launches on the tape."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer import parallel
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.optim import losses
from drstudio.renderer.render import render_view

from benchmarks.bench_render import build_scene

PATHS = ["materials.body.albedo", "meshes.sphere.vertices", "cameras.main.pose", "lights.key.position"]


def step(ds, target, wrt, split):
    """(every leaf's gradient, launches recorded) of an L2 step, differentiating `wrt` (None: everything)."""
    ds.zero_grad()
    loss = wp.zeros(1, dtype=float, requires_grad=True)
    tape = wp.Tape()
    with tape:
        if wrt is None:
            frame = ds.prepare()
            out = (parallel.render_view_split(ds, frame, "main", parts=2) if split else render_view(ds, frame, "main"))
        else:
            with ds.differentiating(wrt):
                frame = ds.prepare()
                out = (parallel.render_view_split(ds, frame, "main", parts=2) if split
                       else render_view(ds, frame, "main"))
        losses.l2(out.image, target, loss)
    tape.backward(loss)
    grads = {p: ds.arrays[p].grad.numpy().copy() for p in ds.arrays}
    return grads, len(tape.launches)


@pytest.mark.parametrize("split", [False, True])
def test_gradients_of_the_differentiated_paths_are_unchanged(device, split):
    ds = DeviceScene(build_scene(300, 24, seed=1), device)
    target = wp.clone(render_view(ds, ds.prepare(), "main").image)
    ds = DeviceScene(build_scene(300, 24, seed=0), device)
    full, n_full = step(ds, target, None, split)
    for path in PATHS:
        got, n = step(ds, target, [path], split)
        assert np.abs(full[path]).max() > 0, path
        np.testing.assert_allclose(got[path], full[path], rtol=1e-5, atol=1e-6 * np.abs(full[path]).max(),
                                   err_msg=path)
        others = [p for p in ds.arrays if p != path]
        assert all(not got[p].any() for p in others), path  # nothing else differentiated
        if not split:
            assert n < n_full, path
    with pytest.raises(ValueError, match="unknown"), ds.differentiating(["meshes.nope.vertices"]):
        pass
    assert ds.differentiable is None
