"""Gradients of the composed renderer: `DeviceScene.prepare()` + `render_view` under one `wp.Tape`,
against central differences (`support.gradcheck.check_gradient`) on the leaf arrays `ds.arrays[path]`
of a 24x20 scene (tests/support/scenes.gradient_scene), for every parameter kind and every mode.

Loss: sum(w * image) with fixed weights w uniform in [-1, 1], accumulated in float64, and zero on
some pixels:
- hard mode: zero within one pixel of a silhouette (a different mesh or the background in the pixel's
  3x3 neighbourhood). Hard rasterization is piecewise constant in the geometry and the camera, so only
  the interior (intersection, interpolation, texturing, shading) is differentiable there.
- antialias mode: no zeros; the silhouette pixels carry the edge gradients of the antialias stage.
- soft mode: no zeros; the soft image of this scene is continuous in every parameter, silhouettes included (the
  soft fringe blends the surface into the background by alpha; see the soft silhouette tests below).

Discrete choices must not change under a step: for each probed entry the test renders at +eps and -eps
and skips the entry (taking the next largest gradient instead) when tri_id changes on a weighted pixel
(hard) or anywhere (antialias: a pair's blend depends on both ids); soft mode has no discrete state
(coverage reaches 0 at its cutoff radius continuously). Each case must still check `need` entries. The
probed entries are those with the largest |tape gradient|, so the relative test is meaningful.

Tolerances. float32 unit roundoff u = 6e-8. Each pixel value carries a roundoff error of up to ~20 u of
its size (the ray-triangle intersection subtracts positions ~3 apart to get barycentrics ~0.3; then
normals, lights and the GGX lobe); errors are independent across pixels and do not cancel between the
two evaluations, so the loss difference carries ~20 u R, R = sqrt(sum (w * image)^2) ~ 5, and the central
difference ~20 u R / eps (measured: 1 to 22 u R / eps over 8 weight seeds): atol = 30 u R / eps.
The float64 accumulation matters: a float32 sum of 1440 terms adds ~sqrt(1440) u |L| ~ 1e-5, ten times
more. rtol = 1e-2 covers the truncation error and the kinks a step may straddle: the max(0, n.l) terminator,
the GGX lobe, the soft coverage outside a triangle (its closest point switches between edge and vertex
regions; coverage meets 0 at the cutoff radius with a kink of slope ~1e-4), the t = 1/2 switch of the
antialias blend. Steps are small enough that the kinks are rarely straddled (a step of 1e-3 on the soft
orb rotation errs by up to 75%); the card's texture is affine (scenes.ramp_texture), so bilinear sampling
has no kinks at texel centers either.
"""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.render import render_view
from support import scenes
from support.devices import assert_same_render
from support.gradcheck import check_gradient, set_entry

U = 6e-8
W, H = 24, 20


@wp.kernel
def weighted_sum_f64(x: wp.array2d(dtype=float), w: wp.array2d(dtype=float), loss: wp.array(dtype=wp.float64)):
    i, j = wp.tid()
    wp.atomic_add(loss, 0, wp.float64(x[i, j] * w[i, j]))


def near_silhouette(labels: np.ndarray) -> np.ndarray:
    """(H, W) pixels with a different label in their 3x3 neighbourhood."""
    pad = np.pad(labels, 1, mode="edge")
    out = np.zeros(labels.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= pad[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] != labels
    return out


class Setup:
    """A DeviceScene of the gradient scene rendered in one mode, the loss weights and the discrete state
    a finite-difference step must keep."""

    def __init__(self, mode: str, shadows: bool = False, seed: int = 0):
        self.mode, self.shadows = mode, shadows
        self.ds = DeviceScene(scenes.gradient_scene(W, H), wp.get_device())  # the test's `device` (conftest)
        out = self.render()
        w = np.random.default_rng(seed).uniform(-1, 1, (H * W, 3)).astype(np.float32)
        if mode == "hard":
            labels = scenes.mesh_labels(self.ds.scene, out.tri_id.numpy()).reshape(H, W)
            self.weighted = ~near_silhouette(labels).reshape(-1)
        else:
            self.weighted = np.ones(H * W, bool)
        w[~self.weighted] = 0
        self.weights = wp.array(w, dtype=float, device=self.ds.device)
        self.R = float(np.sqrt(((w * out.image.numpy()).astype(np.float64) ** 2).sum()))
        self.state = self.discrete(out)

    def render(self):
        return render_view(self.ds, self.ds.prepare(), "main", mode=self.mode, shadows=self.shadows)

    def discrete(self, out) -> np.ndarray:
        if self.mode == "soft":
            return np.zeros(0, bool)
        tri = out.tri_id.numpy()
        return tri[self.weighted] if self.mode == "hard" else tri

    def loss(self) -> wp.array:
        image = self.render().image
        loss = wp.zeros(1, dtype=wp.float64, device=self.ds.device, requires_grad=True)
        wp.launch(weighted_sum_f64, dim=image.shape, inputs=[image, self.weights, loss], device=self.ds.device)
        return loss

    def tape_gradient(self, path: str) -> np.ndarray:
        self.ds.zero_grad()
        tape = wp.Tape()
        with tape:
            loss = self.loss()
        tape.backward(loss)
        g = self.ds.arrays[path].grad.numpy().reshape(-1).copy()
        tape.reset()
        return g

    def stable(self, path: str, idx: int, eps: float) -> bool:
        arr = self.ds.arrays[path]
        flat = arr.numpy().reshape(-1)  # a view of a CPU array, a copy of a CUDA one (set_entry writes back)
        orig = float(flat[idx])
        same = True
        for step in (eps, -eps):
            set_entry(arr, flat, idx, orig + step)
            same = same and np.array_equal(self.discrete(self.render()), self.state)
        set_entry(arr, flat, idx, orig)
        return same

    def check(self, path: str, eps: float, probes: int, need: int) -> tuple[np.ndarray, list[int]]:
        """Central differences at up to `probes` entries of largest |gradient| whose step keeps the discrete
        state; at least `need` of them (or every entry of a smaller parameter)."""
        g = self.tape_gradient(path)
        chosen = []
        for idx in np.argsort(-np.abs(g), kind="stable"):
            if len(chosen) == probes:
                break
            if self.stable(path, int(idx), eps):
                chosen.append(int(idx))
        assert len(chosen) >= min(need, g.size), f"{path}: only {len(chosen)} entries keep their discrete state"
        check_gradient(self.loss, self.ds.arrays[path], eps=eps, rtol=1e-2, atol=30 * U * self.R / eps,
                       indices=chosen)
        return g, chosen


SETUPS: dict[tuple, Setup] = {}


def setup(mode: str, shadows: bool = False) -> Setup:
    key = (mode, shadows, str(wp.get_device()))
    if key not in SETUPS:
        SETUPS[key] = Setup(mode, shadows)
    return SETUPS[key]


def test_scene_preconditions(device):
    """The card's texture is magnified (lod < 0, clamped to level 0), so the mip lod -- a constant to the
    tape -- cannot change under a step; both meshes and many faces carry weight."""
    s = setup("hard")
    with_mips = s.render().image.numpy()
    s.ds.scene.render.mipmaps = False
    try:
        assert_same_render(with_mips, s.render().image.numpy(), device)
    finally:
        s.ds.scene.render.mipmaps = True
    labels = scenes.mesh_labels(s.ds.scene, s.state)
    assert s.weighted.sum() > 120 and set(labels.tolist()) == {-1, 0, 1} and len(set(s.state.tolist())) > 12


# (path, eps, probes, need). eps: 1e-2 where the image is linear in the value (colors, texels, light color
# and intensity, ambient); 1e-3 for vertex positions (a pixel is ~0.1 world units wide here, so an edge
# moves ~0.01 px and rarely crosses a weighted pixel's center), scales, uvs, roughness, metallic, directions
# and intrinsics (~26 px); 1e-4 for translations and quaternions, which move every edge of a mesh (or the
# image) at once: at 1e-3 some weighted pixel changes its face for one axis out of three.
HARD_CASES = [
    ("meshes.card.vertices", 1e-3, 8, 6),
    ("meshes.orb.vertices", 1e-3, 8, 6),
    ("meshes.card.colors", 1e-2, 6, 6),
    ("meshes.orb.colors", 1e-2, 6, 6),
    ("meshes.card.uvs", 1e-3, 6, 6),
    ("meshes.card.translation", 1e-4, 3, 3),
    ("meshes.orb.translation", 1e-4, 3, 3),
    ("meshes.card.rotation", 1e-4, 4, 3),
    ("meshes.orb.rotation", 1e-4, 4, 3),
    ("meshes.card.scale", 1e-3, 3, 2),
    ("meshes.orb.scale", 1e-3, 3, 3),
    ("materials.canvas.albedo", 1e-2, 8, 8),  # a 4x5 texture
    ("materials.gloss.albedo", 1e-2, 3, 3),  # a constant (1x1 texture)
    ("materials.gloss.roughness", 1e-3, 1, 1),
    ("materials.gloss.metallic", 1e-3, 1, 1),
    ("lights.point0.position", 1e-3, 3, 3),
    ("lights.point0.color", 1e-2, 3, 3),
    ("lights.point0.intensity", 1e-2, 1, 1),
    ("lights.sun0.direction", 1e-3, 3, 3),
    ("lights.sun0.color", 1e-2, 3, 3),
    ("lights.sun0.intensity", 1e-2, 1, 1),
    ("lights.ambient0.color", 1e-2, 3, 3),
    ("cameras.main.intrinsics", 1e-3, 4, 4),
    ("cameras.main.pose", 1e-4, 7, 5),
]


@pytest.mark.parametrize("path, eps, probes, need", HARD_CASES, ids=[c[0] for c in HARD_CASES])
def test_hard_mode_gradient(path, eps, probes, need, device):
    g, chosen = setup("hard").check(path, eps, probes, need)
    assert np.abs(g[chosen]).max() > 1e-4, f"{path}: no gradient reaches the image"


@pytest.mark.parametrize("path", ["materials.canvas.roughness", "materials.canvas.metallic", "meshes.orb.uvs"])
def test_parameters_without_influence_get_zero_gradient(path, device):
    """Lambert ignores roughness and metallic; the orb's constant (1x1) albedo makes its uvs irrelevant."""
    s = setup("hard")
    assert not s.tape_gradient(path).any()
    s.check(path, 1e-2, 2, 2)


@pytest.mark.parametrize("path", ["lights.point0.intensity", "materials.canvas.albedo", "lights.sun0.color"])
def test_hard_mode_gradient_with_shadows(path, device):
    """Shadow rays are a constant mask to the tape; these values cannot move a shadow boundary."""
    s = setup("hard", shadows=True)
    assert not np.array_equal(s.render().image.numpy(), setup("hard").render().image.numpy())  # a shadow
    g, chosen = s.check(path, 1e-2, 4, 1)
    assert np.abs(g[chosen]).max() > 1e-4


# Edge gradients: every silhouette pixel of a moving mesh or camera counts, so the steps are 10x smaller
# than in hard mode (a translation of 1e-3 flips a silhouette pixel for most entries), 1e-5 for the camera
# pose (its atol ~1 still checks the large entries, 10..90, to a few percent).
AA_CASES = [
    ("meshes.card.vertices", 1e-4, 8, 6),
    ("meshes.orb.vertices", 1e-4, 8, 6),
    ("meshes.orb.translation", 1e-4, 3, 2),
    ("meshes.orb.rotation", 1e-5, 4, 3),
    ("meshes.card.scale", 1e-4, 3, 2),
    ("cameras.main.intrinsics", 1e-4, 4, 3),
    ("cameras.main.pose", 1e-5, 4, 4),
    ("materials.canvas.albedo", 1e-2, 4, 4),
]


@pytest.mark.parametrize("path, eps, probes, need", AA_CASES, ids=[c[0] for c in AA_CASES])
def test_antialias_mode_gradient(path, eps, probes, need, device):
    setup("antialias").check(path, eps, probes, need)


def test_antialias_adds_edge_gradients_to_silhouette_vertices(device):
    """The card's corners lie on silhouettes: antialias mode gives them a gradient beyond the interior one
    of hard mode (same weights on every pixel)."""
    aa, hard = setup("antialias"), Setup("hard")
    hard.weights = aa.weights
    path = "meshes.card.vertices"
    g_aa, g_hard = aa.tape_gradient(path).reshape(-1, 3), hard.tape_gradient(path).reshape(-1, 3)
    corners = [0, 4, 15, 19]  # 3 rows x 4 columns of cells: 4 x 5 vertices
    assert np.abs(g_aa[corners] - g_hard[corners]).max() > 0.1


# Soft mode: steps of 1e-4 (1e-5 for the camera pose). The soft image is continuous everywhere but has kinks
# outside triangles (where the closest point switches between edge and vertex regions) and, at the sphere's
# edge-on silhouette triangles (screen areas down to 0.006 px^2), very steep spots where that closest point
# races along a tiny triangle; a step of 1e-3 straddles them often enough to bias central differences by
# several percent.
SOFT_CASES = [
    ("meshes.card.vertices", 1e-4, 6, 5),
    ("meshes.orb.vertices", 1e-4, 6, 5),
    ("meshes.card.colors", 1e-2, 4, 4),
    ("meshes.card.uvs", 1e-4, 4, 4),
    ("meshes.orb.rotation", 1e-4, 4, 3),
    ("materials.canvas.albedo", 1e-2, 4, 4),
    ("materials.gloss.albedo", 1e-2, 3, 3),
    ("materials.gloss.roughness", 1e-3, 1, 1),
    ("lights.point0.position", 1e-3, 3, 3),
    ("lights.sun0.direction", 1e-3, 3, 3),
    ("cameras.main.intrinsics", 1e-4, 4, 3),
    ("cameras.main.pose", 1e-5, 7, 5),
]


@pytest.mark.parametrize("path, eps, probes, need", SOFT_CASES, ids=[c[0] for c in SOFT_CASES])
def test_soft_mode_gradient(path, eps, probes, need, device):
    setup("soft").check(path, eps, probes, need)


# Soft silhouettes. The ray-cast background pixels the soft coverage reaches (alpha > 0.01, a fringe ~3 px
# wide around the card; the orb lies inside the card) must blend the surface into the background and carry
# a gradient to the geometry and the camera. SoftRas's own aggregation did neither: its background weight
# exp(eps / gamma) was ~e^-97 of any covering triangle's (zn ~ 0.97, gamma = 0.01), so a fringe pixel
# showed the surface until its last coverage reached 0 at the cutoff radius, then jumped to the background.
B2 = np.array([0.95, 0.05, 0.65], np.float32)  # a second background, far from the scene's (0.15, 0.2, 0.25)


class SoftFringe(Setup):
    """Soft mode with the loss sum(w * (image(b1) - image(b2))) over the fringe only: image = alpha * surface
    + (1 - alpha) * background, so the difference of two renders with backgrounds b1 and b2 is
    (1 - alpha) (b1 - b2), and its gradient is the silhouette gradient alone (the surface term cancels)."""

    def __init__(self):
        super().__init__("soft")
        out = self.render()
        self.fringe = (out.tri_id.numpy() < 0) & (out.alpha.numpy() > 0.01)
        w = self.weights.numpy()
        w[~self.fringe] = 0
        self.weights = wp.array(w, dtype=float, device=self.ds.device)
        self.neg_weights = wp.array(-w, dtype=float, device=self.ds.device)
        self.b1 = self.ds.background_color
        self.b2 = wp.array(B2, dtype=float, device=self.ds.device)
        # the loss difference carries the roundoff of both renders (see the module docstring)
        r = [np.sqrt(((w * im.image.numpy()).astype(np.float64) ** 2).sum()) for im in self.render_both()]
        self.R = float(np.hypot(*r))

    def render_both(self):
        try:
            first = self.render()
            self.ds.background_color = self.b2  # a separate array: the tape reads each launch's own inputs
            return first, self.render()
        finally:
            self.ds.background_color = self.b1

    def loss(self) -> wp.array:
        first, second = self.render_both()
        loss = wp.zeros(1, dtype=wp.float64, device=self.ds.device, requires_grad=True)
        wp.launch(weighted_sum_f64, dim=first.image.shape, inputs=[first.image, self.weights, loss],
                  device=self.ds.device)
        wp.launch(weighted_sum_f64, dim=first.image.shape, inputs=[second.image, self.neg_weights, loss],
                  device=self.ds.device)
        return loss


def fringe_setup() -> SoftFringe:
    key = ("fringe", str(wp.get_device()))
    if key not in SETUPS:
        SETUPS[key] = SoftFringe()
    return SETUPS[key]


def test_soft_image_blends_into_the_background_outside_silhouettes(device):
    """image(b1) - image(b2) = (1 - alpha) (b1 - b2) at every pixel; on the fringe 0 < alpha < 1 (a blend)."""
    s = fringe_setup()
    first, second = s.render_both()
    alpha = first.alpha.numpy()
    b1 = s.b1.numpy()
    np.testing.assert_allclose(first.image.numpy() - second.image.numpy(), (1 - alpha)[:, None] * (b1 - B2),
                               atol=1e-6)
    assert s.fringe.sum() >= 100
    assert (alpha[s.fringe] < 1).all() and (alpha[s.fringe] > 0.3).sum() >= 20


def test_soft_image_is_continuous_across_silhouettes(device):
    """Rotating the camera in 20 steps of 1e-4 moves the image by ~0.003 px per step: a continuous image
    changes by ~1e-3 per step at most (measured 7e-4); SoftRas's jump to the background was ~0.5."""
    s = setup("soft")
    pose = s.ds.arrays["cameras.main.pose"]
    flat = pose.numpy()
    orig = float(flat[4])
    images = []
    try:
        for t in np.linspace(-1e-3, 1e-3, 21):
            set_entry(pose, flat, 4, orig + t)
            images.append(s.render().image.numpy().copy())
    finally:
        set_entry(pose, flat, 4, orig)
    assert np.abs(np.diff(np.array(images), axis=0)).max() < 5e-3


# Steps as in SOFT_CASES. The fringe loss sums ~170 pixels of two renders, R ~ 7, so atol ~ 0.12 (1.2 for the
# pose) against largest gradients of ~7 (vertices), ~14 (translation) and ~90 (pose); SoftRas's were < 1e-6.
FRINGE_CASES = [
    ("meshes.card.vertices", 1e-4, 6, 5),
    ("meshes.card.translation", 1e-4, 3, 3),
    ("cameras.main.pose", 1e-5, 5, 4),
]


@pytest.mark.parametrize("path, eps, probes, need", FRINGE_CASES, ids=[c[0] for c in FRINGE_CASES])
def test_soft_silhouette_gradient(path, eps, probes, need, device):
    """The silhouette term of the fringe pixels reaches the card's vertices and placement and the camera,
    matching central differences; with SoftRas's aggregation it was 0."""
    g, chosen = fringe_setup().check(path, eps, probes, need)
    assert np.abs(g[chosen]).max() > 2, f"{path}: no silhouette gradient"


@pytest.mark.parametrize("mode", ["hard", "antialias", "soft"])
def test_image_gradient_is_readable_after_backward(mode, device):
    """`RenderOutput.image.grad` is d(loss)/d(image) after the backward pass (the viewer's gradient overlay
    and the optimizer's per-view gradient images read it): here the loss weights themselves."""
    s = setup(mode)
    tape = wp.Tape()
    with tape:
        out = s.render()
        loss = wp.zeros(1, dtype=wp.float64, device=device, requires_grad=True)
        wp.launch(weighted_sum_f64, dim=out.image.shape, inputs=[out.image, s.weights, loss], device=device)
    tape.backward(loss)
    np.testing.assert_array_equal(out.image.grad.numpy(), s.weights.numpy())
    tape.reset()
