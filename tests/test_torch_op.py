"""`renderer.torch.render_torch`: the same images and gradients as the Warp path (`wp.Tape` over
`DeviceScene.prepare` + `render_view`), zero-copy wrapping of the tensors, an ordinary torch optimization
loop, and argument validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import warp as wp
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.render import render_view
from drstudio.renderer.torch import _wrap, render_torch
from support import scenes
from support.devices import assert_same_render, torch_device

PATHS = ["materials.canvas.albedo", "meshes.orb.vertices", "lights.point0.position", "cameras.main.pose"]


@wp.kernel
def weighted_sum(x: wp.array2d(dtype=float), w: wp.array2d(dtype=float), loss: wp.array(dtype=float)):
    i, j = wp.tid()
    wp.atomic_add(loss, 0, x[i, j] * w[i, j])


@pytest.fixture(autouse=True)
def _torch_on_the_test_device(device):
    # tensors built without device= live on the test's device, as Warp arrays do (conftest)
    with torch.device(torch_device(device)):
        yield


def make_ds(mode: str = "antialias") -> DeviceScene:
    return DeviceScene(scenes.gradient_scene(mode=mode), wp.get_device())  # the test's `device` (conftest)


def weights(ds: DeviceScene, seed: int = 0) -> np.ndarray:
    c = ds.scene.cameras["main"]
    return np.random.default_rng(seed).uniform(-1, 1, (c.height, c.width, 3)).astype(np.float32)


def params(ds: DeviceScene, paths=PATHS) -> dict[str, torch.Tensor]:
    return {p: torch.tensor(ds.get(p), requires_grad=True) for p in paths}


@pytest.mark.parametrize("mode", ["hard", "antialias", "soft"])
def test_image_and_gradients_equal_the_warp_path(mode, device):
    """Same scene, same loss sum(w * image): the torch op runs the same kernels, so the image is identical
    and the gradients agree to float32 roundoff of the atomic accumulations."""
    ds = make_ds(mode)
    w = weights(ds)
    ds.zero_grad()
    tape = wp.Tape()
    with tape:
        out = render_view(ds, ds.prepare(), "main")
        loss = wp.zeros(1, dtype=float, device=device, requires_grad=True)
        wp.launch(weighted_sum, dim=out.image.shape, inputs=[out.image, wp.array(w.reshape(-1, 3), dtype=float), loss])
    tape.backward(loss)
    warp_grads = {p: ds.arrays[p].grad.numpy().reshape(ds.get(p).shape).copy() for p in PATHS}
    tape.reset()
    assert all(np.abs(g).max() > 1e-3 for g in warp_grads.values())

    ts = params(ds)
    image = render_torch(ds, "main", ts)
    assert_same_render(image.detach().cpu().numpy(), out.numpy(), device)
    (image * torch.tensor(w)).sum().backward()
    for p in PATHS:
        g = ts[p].grad.cpu().numpy()
        np.testing.assert_allclose(g, warp_grads[p], rtol=1e-5, atol=1e-6 * np.abs(warp_grads[p]).max(), err_msg=p)
    # the op writes gradients only into the tensors: the DeviceScene's leaves keep a zero .grad
    assert all(not ds.arrays[p].grad.numpy().any() for p in ds.arrays)


def test_wrap_is_zero_copy():
    ds = make_ds()
    t = torch.tensor(ds.get("meshes.orb.vertices"), requires_grad=True)
    arr, grad = _wrap(ds, "meshes.orb.vertices", t)
    assert arr.dtype == wp.vec3 and arr.shape == (t.shape[0],)
    assert arr.ptr == t.data_ptr() and arr.grad.ptr == grad.data_ptr()
    with torch.no_grad():
        t[0, 1] = 7.0
    assert arr.numpy()[0, 1] == 7.0  # Warp reads the tensor's memory
    tex = torch.rand(4, 5, 3)
    arr, _ = _wrap(ds, "materials.canvas.albedo", tex)
    assert arr.ptr == tex.data_ptr() and arr.shape == (4, 5, 3)
    # a non-contiguous tensor is copied once (Warp arrays here are contiguous)
    strided = torch.rand(5, 4, 3).transpose(0, 1)
    arr, _ = _wrap(ds, "materials.canvas.albedo", strided)
    assert arr.ptr != strided.data_ptr()
    np.testing.assert_array_equal(arr.numpy(), strided.cpu().numpy())


def test_tensors_replace_the_leaves_only_for_the_call(device):
    ds = make_ds("hard")
    before = dict(ds.arrays)
    base = render_view(ds, ds.prepare(), "main").numpy()
    dark = torch.zeros(4, 5, 3)
    image = render_torch(ds, "main", {"materials.canvas.albedo": dark}).cpu().numpy()
    assert ds.arrays.keys() == before.keys() and all(ds.arrays[p] is before[p] for p in before)
    assert not np.array_equal(image, base)
    assert_same_render(render_view(ds, ds.prepare(), "main").numpy(), base, device)
    # options reach render_view
    soft = render_torch(ds, "main", {}, mode="soft")
    assert_same_render(soft.cpu().numpy(), render_view(ds, ds.prepare(), "main", mode="soft").numpy(), device)


def test_several_renders_feed_one_backward():
    """Two renders with different values of one path, one loss: each prepare() has its own world positions,
    so the gradients equal those of two separate backward passes."""
    ds = make_ds("antialias")
    w = torch.tensor(weights(ds))
    v0 = torch.tensor(ds.get("meshes.orb.vertices"))

    def grads(together: bool):
        vs = [(v0 * s).requires_grad_() for s in (1.0, 1.1)]
        images = [render_torch(ds, "main", {"meshes.orb.vertices": v}) for v in vs]
        if together:
            sum((im * w).sum() for im in images).backward()
        else:
            for im in images:
                (im * w).sum().backward()
        return [v.grad for v in vs]

    for a, b in zip(grads(False), grads(True), strict=True):
        assert a.abs().max() > 1e-2
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_second_backward_raises():
    ds = make_ds("hard")
    t = torch.tensor(ds.get("lights.point0.position"), requires_grad=True)
    loss = render_torch(ds, "main", {"lights.point0.position": t}).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_adam_on_a_texture_reduces_the_loss():
    ds = make_ds("hard")
    target = render_torch(ds, "main", {}).detach()
    tex = torch.full((4, 5, 3), 0.5, requires_grad=True)
    opt = torch.optim.Adam([tex], lr=0.05)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = ((render_torch(ds, "main", {"materials.canvas.albedo": tex}) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], losses[::8]
    # texels that cover pixels converge to the scene's texture
    seen = np.abs(tex.grad.cpu().numpy()).sum(axis=2) > 0
    np.testing.assert_allclose(tex.detach().cpu().numpy()[seen], ds.get("materials.canvas.albedo")[seen], atol=0.1)


def test_validation_errors_name_the_path_and_the_expectation():
    ds = make_ds("hard")
    before = dict(ds.arrays)
    with pytest.raises(ValueError, match=r"materials\.canvas\.albedo.*\(4, 5, 3\)"):
        render_torch(ds, "main", {"materials.canvas.albedo": torch.zeros(5, 4, 3)})
    with pytest.raises(TypeError, match=r"lights\.point0\.position.*float64.*float32"):
        render_torch(ds, "main", {"lights.point0.position": torch.zeros(3, dtype=torch.float64)})
    with pytest.raises(KeyError, match="lights.nope.position"):
        render_torch(ds, "main", {"lights.nope.position": torch.zeros(3)})
    with pytest.raises(TypeError, match="torch.Tensor"):
        render_torch(ds, "main", {"lights.point0.position": np.zeros(3, np.float32)})
    assert all(ds.arrays[p] is before[p] for p in before)  # restored after each failed call
