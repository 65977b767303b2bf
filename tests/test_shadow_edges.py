"""Gradients through point-light shadow boundaries (renderer/stages/shadow_edges.py, edge sampling) in the
rasterized render, against central differences of a supersampled render.

Scene: a tilted box (the occluder) 1.3 above a ground plane, a point light above it; the camera looks at
the ground and the box's shadow, the box itself is outside its view. Loss: sum over the shadowed pixels
(those darker than in a render without shadows) of w * image, w a fixed smooth random field (four random
plane waves per channel of period >= ~10 px). The edge-sampled gradient is that of the box-filtered
(area-averaged) image; the reference renders the scene at 16x the resolution, box-downsamples it and
takes central differences with step 0.02 (the shadow moves ~0.5 px).

Why smooth weights: with independent random weights per pixel, the derivative of the box-filtered loss
changes by O(100 %) when the boundary moves by one pixel (each pixel's share of the boundary length is
piecewise linear in its position), so a central difference would need steps of ~0.05 px and ~100x
supersampling. A field smooth over ~10 px keeps the derivative smooth over a step.

Tolerance: measured on the CPU (seeds 0-2, 16x and 32x references, steps 0.01-0.04): the gradient
vectors agree within 1-3 % of their norm; the estimator's own spread across sampling seeds is ~1 %, the
reference's (quantization to 16 x 16 samples a pixel, a step straddling pixel-scale kinks) 1-3 %.
rtol = 6 % of the vector norm, per component. With the boundary term off the occluder's translation
gets no gradient at all and the light position only its interior part: errors of 100 % and > 30 %.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.loading import load_scene
from drstudio.renderer.params import Group, ParamPath
from drstudio.renderer.render import render_view
from drstudio.renderer.stages import shadow_edges
from support import scenes as S

W, H, SS, EPS, RTOL = 32, 24, 16, 0.02, 0.06
TRANSLATION = ParamPath(Group.MESHES, "block", "translation")
LIGHT = ParamPath(Group.LIGHTS, "point0", "position")


def shadow_scene(width: int, height: int, target=(-0.1, 0.0, -0.3), edges: int = 64, light: str = "point"):
    bv, bf = S.box((0.6, 0.3, 0.6))
    gv, gf, guv = S.grid_quad(6.0, 6.0, 2, 2)
    ground = S.mesh("ground", gv, gf, "floor", uvs=guv, rotation=S.axis_angle_quat((1, 0, 0), -90.0))
    block = S.mesh("block", bv, bf, "clay", translation=(0.0, 1.3, 0.0), rotation=S.axis_angle_quat((0, 1, 0), 25.0))
    sc = S.scene([block, ground], [S.material("clay", albedo=(0.7, 0.4, 0.3)), S.material("floor", albedo=(0.8,) * 3)],
                 camera=S.cam(width, height, S.look_at((0.0, 0.7, 2.2), target), 40.0),
                 point=[((0.4, 3.2, 0.3), (1.0, 1.0, 1.0), 12.0)] if light == "point" else [],
                 directional=[((-0.3, -1.0, -0.2), (1.0, 1.0, 1.0), 3.0)] if light == "directional" else [],
                 ambient=[(0.1, 0.1, 0.1)], shadows=True)
    sc.render.shadow_edges = edges
    return sc


def smooth_weights(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    w = np.zeros((H, W, 3))
    for c in range(3):
        for _ in range(4):
            f = rng.uniform(-1, 1, 2) * (2 * np.pi / 10.0)
            w[..., c] += rng.uniform(-1, 1) * np.cos(f[0] * xx + f[1] * yy + rng.uniform(0, 2 * np.pi))
    return w


@wp.kernel
def weighted_sum(x: wp.array2d(dtype=float), w: wp.array2d(dtype=float), loss: wp.array(dtype=wp.float64)):
    i, j = wp.tid()
    wp.atomic_add(loss, 0, wp.float64(x[i, j] * w[i, j]))


class Case:
    """The low-resolution DeviceScene the tape differentiates, the 16x one the reference renders."""

    def __init__(self, target=(-0.1, 0.0, -0.3), edges: int = 64, mode: str = "hard", light: str = "point"):
        dev = wp.get_device()
        lo = shadow_scene(W, H, target, edges, light)
        lo.render.mode, lo.render.spp, lo.render.max_depth = mode, 4, 1
        self.lo = DeviceScene(lo, dev)
        self.fd: dict = {}
        if mode != "hard":  # differentiated only, against the hard Case's reference
            return
        self.hi = DeviceScene(shadow_scene(W * SS, H * SS, target, edges, light), dev)
        shadowed = self.supersampled()
        self.hi.scene.render.shadows = False
        lit = self.supersampled()
        self.hi.scene.render.shadows = True
        self.mask = (lit - shadowed).max(axis=2) > 1e-6
        self.w = smooth_weights() * self.mask[..., None]

    def supersampled(self) -> np.ndarray:
        im = render_view(self.hi, self.hi.prepare(), "main").numpy().astype(np.float64)
        return im.reshape(H, SS, W, SS, 3).mean(axis=(1, 3))

    def finite_difference(self, path) -> np.ndarray:
        if path not in self.fd:
            self.fd[path] = self._finite_difference(path)
        return self.fd[path]

    def _finite_difference(self, path) -> np.ndarray:
        a = self.hi.arrays[path]
        v = a.numpy().copy()
        out = np.zeros(3)
        for i in range(3):
            losses = []
            for step in (EPS, -EPS):
                vv = v.copy()
                vv.reshape(-1)[i] += step
                a.assign(vv)
                losses.append((self.supersampled() * self.w).sum())
            out[i] = (losses[0] - losses[1]) / (2 * EPS)
        a.assign(v)
        return out

    def gradient(self, path) -> np.ndarray:
        ds = self.lo
        weights = wp.array(self.w.reshape(-1, 3).astype(np.float32), dtype=float, device=ds.device)
        ds.zero_grad()
        tape = wp.Tape()
        with tape:
            image = render_view(ds, ds.prepare(), "main").image
            loss = wp.zeros(1, dtype=wp.float64, device=ds.device, requires_grad=True)
            wp.launch(weighted_sum, dim=image.shape, inputs=[image, weights, loss], device=ds.device)
        tape.backward(loss)
        g = ds.arrays[path].grad.numpy().reshape(-1).astype(np.float64)
        tape.reset()
        return g


def relative_error(g: np.ndarray, ref: np.ndarray) -> float:
    """Largest component error as a fraction of the reference vector's norm."""
    return float(np.abs(g - ref).max() / np.linalg.norm(ref))


CASES: dict = {}


def case(device) -> Case:
    if str(device) not in CASES:
        CASES[str(device)] = Case()
    return CASES[str(device)]


@pytest.mark.parametrize("path", [TRANSLATION, LIGHT], ids=["occluder_translation", "light_position"])
def test_shadow_boundary_gradient_matches_supersampled_differences(path, device):
    c = case(device)
    assert c.mask.sum() > 40  # a shadow in view; the occluder is not
    assert not np.isin(S.mesh_labels(c.lo.scene, render_view(c.lo, c.lo.prepare(), "main").tri_id.numpy()), 0).any()
    ref = c.finite_difference(path)
    assert np.linalg.norm(ref) > 10.0  # the shadow does move
    g = c.gradient(path)
    assert relative_error(g, ref) < RTOL, f"{path}: edge sampling {g} vs central differences {ref}"


@pytest.mark.parametrize("path", [TRANSLATION, LIGHT], ids=["occluder_translation", "light_position"])
def test_without_boundary_term_the_check_fails(path, device):
    """The same check with the boundary term switched off (render.shadow_edges = 0) misses by far."""
    c = case(device)
    ref = c.finite_difference(path)
    c.lo.scene.render.shadow_edges = 0
    try:
        g = c.gradient(path)
    finally:
        c.lo.scene.render.shadow_edges = 64
    assert relative_error(g, ref) > 0.3
    if path == TRANSLATION:
        assert not g.any()  # the occluder is out of view: nothing else moves the image


def test_no_shadow_edge_in_view_gives_zero_boundary_gradient(device):
    """The camera turned away from the shadow: the occluder gets exactly zero and the light position only
    its interior (shading) gradient, the same with and without the boundary term."""
    c = Case(target=(1.5, 0.0, 4.0), edges=64)
    assert not c.mask.any()
    c.w = smooth_weights()
    assert not c.gradient(TRANSLATION).any()
    with_edges = c.gradient(LIGHT)
    c.lo.scene.render.shadow_edges = 0
    np.testing.assert_array_equal(with_edges, c.gradient(LIGHT))
    assert np.abs(with_edges).max() > 0


@pytest.mark.parametrize("mode", ["antialias", "path"])
def test_other_modes_shadow_boundary_gradient(mode, device):
    """Antialias mode: the same hook (nothing of the occluder is in view to blend). Path mode, direct light
    (max_depth 1, 4 jittered samples a pixel): the next-event estimate's shadow boundary gets the same
    edge-sampled term; the light position's interior part comes from path replay. Same reference (the path
    mode's expected image is the rasterized one without the ambient term, which no shadow moves)."""
    c = case(device)
    p = Case(mode=mode)
    p.w = c.w
    for path in (TRANSLATION, LIGHT):
        ref = c.finite_difference(path)
        g = p.gradient(path)
        assert relative_error(g, ref) < RTOL, f"{path}: edge sampling {g} vs central differences {ref}"


SUN = ParamPath(Group.LIGHTS, "sun0", "direction")


@pytest.mark.parametrize("path", [TRANSLATION, SUN], ids=["occluder_translation", "light_direction"])
def test_directional_light_shadow_boundary_gradient(path, device):
    """A directional light instead of the point light: the same check (its boundaries are the occluder's
    silhouette from the direction the light comes from, projected along it)."""
    c = CASES.setdefault(f"{device}-directional", None) or Case(light="directional")
    CASES[f"{device}-directional"] = c
    assert c.mask.sum() > 20  # a smaller shadow than the point light's (parallel projection)
    ref = c.finite_difference(path)
    assert np.linalg.norm(ref) > 10.0
    g = c.gradient(path)
    assert relative_error(g, ref) < RTOL, f"{path}: edge sampling {g} vs central differences {ref}"


def test_welded_neighbors_join_creases():
    """A box split at its creases has boundary edges by vertex index, none once welded by position."""
    v, f = S.box()
    from drstudio.renderer.stages.antialias import face_neighbors
    assert (face_neighbors(f) < 0).any()
    nb = shadow_edges.welded_neighbors([v], f)
    assert nb.shape == (f.size,) and (nb >= 0).all()


def area_light_scene(tmp_path, spp: int, edges: int):
    """A block between a square emitter (0.6 wide, facing down) and the floor; the camera sees the soft shadow
    only (block and emitter out of view). Path mode, direct light."""
    doc = {"version": 1,
           "meshes": [
               {"name": "block", "primitive": {"type": "cube", "size": 0.5}, "material": "clay",
                "transform": {"translation": [0.0, 1.2, 0.0], "rotation": {"euler_deg": [0, 25, 0]}}},
               {"name": "floor", "primitive": {"type": "plane", "size": 6.0}, "material": "floor"},
               {"name": "lamp", "primitive": {"type": "plane", "size": 0.6}, "material": "light",
                "transform": {"translation": [0.3, 2.8, 0.2], "rotation": {"euler_deg": [180, 0, 0]}}}],
           "materials": [{"name": "clay", "albedo": [0.7, 0.4, 0.3]}, {"name": "floor", "albedo": [0.8, 0.8, 0.8]},
                         {"name": "light", "albedo": [0, 0, 0], "emission": [8.0, 8.0, 8.0]}],
           "cameras": [{"name": "main", "width": 24, "height": 18, "fov_y": 40,
                        "look_at": {"eye": [0.0, 0.5, 1.8], "target": [-0.1, 0.0, -0.4]}}],
           "render": {"mode": "path", "spp": spp, "max_depth": 1, "seed": 3, "shadow_edges": edges}}
    path = tmp_path / f"area_{spp}_{edges}.json"
    path.write_text(json.dumps(doc))
    return DeviceScene(load_scene(path), wp.get_device())


def test_area_light_soft_shadow_gradient(tmp_path, monkeypatch, device):
    """Path mode, an emissive square: the soft shadow's gradient w.r.t. the occluder's translation (edge
    sampling of the edges seen from the surface points, 1024 samples a pixel) against central differences
    (step 0.02) of 1024-spp renders with shared random numbers. Measured: 2.5-4.4 % of the norm over four
    sampling seeds (the estimator picks edges uniformly, so most samples find no boundary), the reference
    within ~2 % (256 vs 1024 spp, steps 0.02 and 0.05): rtol 8 %. Off (shadow_edges 0): no gradient."""
    ref_ds = area_light_scene(tmp_path, 1024, 0)
    h, w = 18, 24
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    weights = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            f = rng.uniform(-1, 1, 2) * (2 * np.pi / 10.0)
            weights[..., c] += rng.uniform(-1, 1) * np.cos(f[0] * xx + f[1] * yy + rng.uniform(0, 2 * np.pi))
    a = ref_ds.arrays[TRANSLATION]
    v = a.numpy().copy()
    ref = np.zeros(3)
    for i in range(3):
        losses = []
        for step in (EPS, -EPS):
            vv = v.copy()
            vv[i] += step
            a.assign(vv)
            losses.append((render_view(ref_ds, ref_ds.prepare(), "main").numpy().astype(np.float64) * weights).sum())
        ref[i] = (losses[0] - losses[1]) / (2 * EPS)
    assert np.linalg.norm(ref) > 5.0

    def gradient(edges: int) -> np.ndarray:
        ds = area_light_scene(tmp_path, 4, edges)
        ds.arrays[TRANSLATION].requires_grad = True
        wts = wp.array(weights.reshape(-1, 3).astype(np.float32), dtype=float, device=ds.device)
        tape = wp.Tape()
        with tape:
            image = render_view(ds, ds.prepare(), "main").image
            loss = wp.zeros(1, dtype=wp.float64, device=ds.device, requires_grad=True)
            wp.launch(weighted_sum, dim=image.shape, inputs=[image, wts, loss], device=ds.device)
        tape.backward(loss)
        return ds.arrays[TRANSLATION].grad.numpy().astype(np.float64)

    g = gradient(1024)
    assert relative_error(g, ref) < 0.08, f"edge sampling {g} vs central differences {ref}"
    assert not gradient(0).any()
    monkeypatch.setattr(shadow_edges, "AREA_SLOTS", 5000)  # launched in chunks of pixels: the same samples
    np.testing.assert_allclose(gradient(1024), g, rtol=1e-4, atol=1e-4 * np.abs(g).max())
