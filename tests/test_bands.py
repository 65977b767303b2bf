"""Bands of rows (`render_view(first_row=...)`, `renderer.parallel.render_view_split`, the data-parallel row
split of `renderer.optim.models`): every pixel stage works in the full image's pixel coordinates against the
unshifted intrinsics, so a band's pixels are the full render's bit for bit. The scene is the hard case: a uv
seam (two triangles that share no vertex and map different parts of the texture) along an edge that runs
through pixel centres, where rounding decides which triangle a pixel gets; a band rendered with a shifted
principal point (what render_view_split did before) does not reproduce the full image there."""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp
from drstudio.renderer import parallel
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.render import render_view
from support import scenes
from support.gradcheck import weighted_loss

wp.config.quiet = True
SIZE = 32
PATHS = ["materials.paper.albedo", "meshes.card.vertices", "cameras.main.pose"]


def seam_scene(mode: str):
    """A 3.2 x 3.2 quad in a 32x32 view (background around it), cut along its diagonal into two triangles with
    their own vertices and uvs (the second one mirrored in u: a seam). The diagonal passes through the quad's
    centre, which projects to the principal point (cx = cy), so it runs through every pixel centre
    (k + 0.5, k + 0.5)."""
    rng = np.random.default_rng(0)
    v, f, uv = scenes.grid_quad(3.2, 3.2)
    f = f.ravel()
    v, uv = v[f], uv[f].copy()
    uv[3:, 0] = 1.0 - uv[3:, 0]
    camera = scenes.cam(SIZE, SIZE, [0.0, 0.0, 2.0, 0, 0, 0, 1], intrinsics=[19.0, 19.0, 16.37, 16.37])
    sc = scenes.scene([scenes.mesh("card", v, np.arange(6).reshape(2, 3), "paper", uvs=uv)],
                      [scenes.material("paper", albedo=scenes.ramp_texture(16, 16, rng))], camera=camera,
                      ambient=[(0.3, 0.3, 0.3)], directional=[((0.2, -0.3, -1.0), (1.0, 1.0, 1.0), 1.5)],
                      background=(0.1, 0.2, 0.3), mipmaps=True, mode=mode)
    return sc


def _buffers(out, rows=slice(None)):
    h, w = out.height, out.width
    return {"image": out.image.numpy().reshape(h, w, 3)[rows], "tri_id": out.tri_id.numpy().reshape(h, w)[rows],
            "depth": out.depth.numpy().reshape(h, w)[rows], "normals": out.normals.numpy().reshape(h, w, 3)[rows],
            "alpha": out.alpha.numpy().reshape(h, w)[rows]}


@pytest.mark.parametrize("mode", ["hard", "antialias"])
def test_a_band_equals_the_full_render_bit_for_bit(mode):
    ds = DeviceScene(seam_scene(mode), "cpu")
    frame = ds.prepare()
    full = _buffers(render_view(ds, frame, "main"))
    ids = full["tri_id"]
    assert set(np.unique(ids)) == {-1, 0, 1}  # both triangles, and background around them
    shifted_differs = False
    for first, end in ((0, 9), (1, SIZE), (7, 8), (13, 29), (17, SIZE), (SIZE - 1, SIZE)):
        band = _buffers(render_view(ds, frame, "main", first_row=first, height=end - first))
        # the antialias blends of a band's first (last) row with the row above (below) are the ones it lacks
        lo = 1 if mode == "antialias" and first > 0 else 0
        hi = end - first - (1 if mode == "antialias" and end < SIZE else 0)
        for name, a in band.items():
            kept = slice(lo, hi) if name == "image" else slice(None)
            ref = full[name][first:end][kept]
            assert np.array_equal(a[kept], ref), (name, first, end)
        intr = ds.leaf("cameras.main.intrinsics").numpy().copy()
        intr[3] -= first  # the old way: the band's own principal point
        old = render_view(ds, frame, "main", intrinsics=wp.array(intr, dtype=float), height=end - first)
        shifted_differs |= not np.array_equal(_buffers(old)["image"][lo:hi], full["image"][first:end][lo:hi])
    # the scene does exercise the rounding a shifted principal point changes: the antialias stage's screen-space
    # edge functions (bands from row 16 on: 1-15 pixels each; the hard mode's rays happen to round the same)
    assert shifted_differs or mode == "hard"


def _split_step(ds, parts: int | None):
    ds.zero_grad()
    tape = wp.Tape()
    with tape:
        frame = ds.prepare()
        out = (render_view(ds, frame, "main") if parts is None else
               parallel.render_view_split(ds, frame, "main", parts=parts))
        loss = weighted_loss(out.image, seed=3)
    tape.backward(loss)
    result = _buffers(out), {p: ds.arrays[p].grad.numpy().copy() for p in PATHS}
    tape.reset()
    return result


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_render_view_split_equals_render_view_bit_for_bit(parts):
    # parts 1: one thread (render_view itself); 2: two threads; 3: more bands than cores
    ds = DeviceScene(seam_scene("antialias"), "cpu")
    for p in PATHS:
        ds.arrays[p].requires_grad = True
    ref, ref_grads = _split_step(ds, None)
    got, grads = _split_step(ds, parts)
    for name, a in got.items():
        assert np.array_equal(a, ref[name]), name
    for p in PATHS:  # the same per-pixel adjoints, summed in another order
        scale = np.abs(ref_grads[p]).max()
        assert scale > 0, p
        np.testing.assert_allclose(grads[p], ref_grads[p], rtol=0, atol=1e-5 * scale, err_msg=p)


def test_split_rows_covers_every_row_once():
    assert parallel.split_rows([128, 128, 128], 2) == [[(0, 0, 128), (1, 0, 64)], [(1, 64, 128), (2, 0, 128)]]
    assert parallel.split_rows([20, 20, 20, 20], 2) == [[(0, 0, 20), (1, 0, 20)], [(2, 0, 20), (3, 0, 20)]]
    rng = np.random.default_rng(1)
    for _ in range(20):
        heights = [int(h) for h in rng.integers(1, 40, rng.integers(1, 6))]
        parts = int(rng.integers(1, 5))
        seen = [np.zeros(h, int) for h in heights]
        blocks = parallel.split_rows(heights, parts)
        assert len(blocks) == parts
        sizes = []
        for pieces in blocks:
            sizes.append(sum(e - f for _, f, e in pieces))
            for v, f, e in pieces:
                seen[v][f:e] += 1
        assert all((s == 1).all() for s in seen)
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="parts"):
        parallel.split_rows([4], 0)


def test_a_bad_band_is_refused():
    ds = DeviceScene(seam_scene("antialias"), "cpu")
    frame = ds.prepare()
    with pytest.raises(ValueError, match="first_row"):
        render_view(ds, frame, "main", first_row=-1, height=4)
    with pytest.raises(ValueError, match="first_row"):
        render_view(ds, frame, "main", first_row=4)  # a band needs its height
    with pytest.raises(ValueError, match="first_row"):
        render_view(ds, frame, "main", first_row=4, height=4, mode="soft")


def test_render_views_renders_bands_on_threads():
    # what a rank with several threads renders: its pieces, whole views and bands, on the worker pool
    ds = DeviceScene(seam_scene("antialias"), "cpu")
    ds.scene.cameras["side"] = scenes.cam(SIZE, SIZE, scenes.look_at((0.6, 0.3, 2.2), (0, 0, 0)), 50.0, name="side")
    ds = DeviceScene(ds.scene, "cpu")
    frame = ds.prepare()
    rows = [(5, 20), None, (0, 13)]
    got = parallel.render_views(ds, frame, ["main", "side", "side"], workers=2, rows=rows)
    for cam, r, out in zip(["main", "side", "side"], rows, got, strict=True):
        ref = render_view(ds, frame, cam, **({} if r is None else dict(first_row=r[0], height=r[1] - r[0])))
        for name, a in _buffers(out).items():
            assert np.array_equal(a, _buffers(ref)[name]), (cam, r, name)
    with pytest.raises(ValueError, match="rows"):
        parallel.render_views(ds, frame, ["main"], workers=2, rows=[None, None])


def test_soft_mode_split_still_matches_to_round_off():
    # the soft rasterizer has no first_row: its bands keep the shifted principal point (equal to round-off)
    ds = DeviceScene(scenes.gradient_scene(32, 24, mode="soft"), "cpu")
    frame = ds.prepare()
    ref = render_view(ds, frame, "main").image.numpy()
    got = parallel.render_view_split(ds, frame, "main", parts=2).image.numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
