"""Path-tracing stage: closed forms (white furnace, a plane under a point and a directional light), the
rasterized direct-light render at max_depth 1, colour bleeding, reproducibility, argument checks, and
path-replay gradients of every differentiable parameter against central differences with shared random
numbers (the same seed, so both see the same paths).

Gradient tolerances. The parameters tested tightly do not change which paths are sampled (albedo,
emission, environment texels, light colors and intensities, and light positions/directions where no
shadow edge moves across a path vertex): with the seed fixed, the image is then a smooth function of the
parameter, and its derivative is what the adjoint computes, up to float32 roundoff. The loss is a
weighted sum of ~500 pixel channels of magnitude ~0.1-1 with weights in [-1, 1]; its float32 roundoff is
~1e-6 relative (|loss| <= ~10 -> ~1e-5 absolute), so a central difference with step h has error
~1e-5 / h: 1e-3 at h = 1e-2. The image is linear in emission, environment and light color/intensity
(truncation error 0) and a low-order polynomial in the albedos (one factor per bounce) or a smooth
function of light positions, where h^2 |L'''| / 6 stays below ~1e-4 for h = 1e-2. Hence atol 2e-3
plus rtol 1e-2 (the adjoint accumulates in a different order than the primal: ~1e-5 relative).
"""

import numpy as np
import pytest
import trimesh
import warp as wp
from drstudio.renderer.stages import pathtrace as pt
from drstudio.renderer.stages.shading import Lights
from support.gradcheck import check_gradient, weighted_loss

from benchmarks.cornell import cornell_box


def farr(a):
    return wp.array(np.asarray(a, np.float32), dtype=float)


def camera(eye, target, fov_deg, width, height):
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    back = (eye - target) / np.linalg.norm(eye - target)
    up = np.array([0.0, 1.0, 0.0]) if abs(back[1]) < 0.99 else np.array([0.0, 0.0, -1.0])
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    r = np.stack([right, np.cross(back, right), back], axis=1)
    w = 0.5 * np.sqrt(1.0 + np.trace(r))
    q = [(r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w), w]
    f = 0.5 * height / np.tan(np.radians(fov_deg) / 2)
    return farr([f, f, width / 2, height / 2]), farr(np.r_[eye, q])


def quad(corners):
    return np.asarray(corners, np.float32), np.array([[0, 1, 2], [0, 2, 3]], np.int32)


# --- closed forms ------------------------------------------------------------------------------------


def test_white_furnace():
    """A Lambert sphere of albedo 1 inside a uniform environment E reflects exactly E (it neither absorbs
    nor emits); of albedo 0.5, 0.5 E (convex: every reflected ray escapes to the environment)."""
    m = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    env = np.full((8, 16, 3), 0.7, np.float32)
    intr, pose = camera((0, 0, 4), (0, 0, 0), 30.0, 32, 32)
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    inside = np.hypot(xs - 16, ys - 16) < 0.8 * 16 * (1 / np.tan(np.radians(15))) / np.sqrt(15)  # well inside
    for albedo in (1.0, 0.5):
        sc = pt.path_scene_from_numpy(m.vertices, m.faces, [dict(albedo=(albedo,) * 3)], env=env)
        img = pt.render_path(sc, intr, pose, 32, 32, spp=64, max_depth=16, seed=3).numpy().reshape(32, 32, 3)
        assert np.allclose(img[0, 0], 0.7, rtol=1e-5)  # the environment itself
        sphere = img[inside]
        # per-pixel std at 64 spp is ~0.023 (measured): the mean of ~400 pixels has std ~1.2e-3 E
        assert inside.sum() > 300
        assert abs(sphere.mean() / (0.7 * albedo) - 1) < 0.01
        assert np.abs(sphere / (0.7 * albedo) - 1).max() < 0.25


def test_plane_under_point_and_directional_light():
    """max_depth 1, pixel centers: a Lambert plane z = 0 lit by a point light at height 2 and a directional
    light gives albedo / pi * (I c cos / d^2 + I' c' cos') exactly at each pixel's hit point."""
    v, f = quad([[-3, -3, 0], [3, -3, 0], [3, 3, 0], [-3, 3, 0]])
    lights = Lights.create(point_position=[[0.3, -0.2, 2.0]], point_color=[[1.0, 0.8, 0.6]], point_intensity=[5.0],
                           dir_direction=[[0.3, 0.2, -1.0]], dir_color=[[0.2, 0.3, 0.4]], dir_intensity=[1.5])
    albedo = np.array([0.8, 0.5, 0.3])
    sc = pt.path_scene_from_numpy(v, f, [dict(albedo=albedo)], lights=lights)
    w = h = 12
    intr, pose = farr([10, 10, 6, 6]), farr([0, 0, 3, 0, 0, 0, 1])  # looking straight down -Z at the plane
    img = pt.render_path(sc, intr, pose, w, h, spp=1, max_depth=1, jitter=False).numpy().reshape(h, w, 3)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    p = np.stack([(xs - 6) / 10 * 3, -(ys - 6) / 10 * 3, np.zeros_like(xs)], -1)  # depth 3 below the camera
    to = np.array([0.3, -0.2, 2.0]) - p
    d2 = (to**2).sum(-1, keepdims=True)
    e_point = 5.0 * np.array([1.0, 0.8, 0.6]) * to[..., 2:] / np.sqrt(d2) / d2
    ldir = -np.array([0.3, 0.2, -1.0]) / np.linalg.norm([0.3, 0.2, -1.0])
    e_dir = 1.5 * np.array([0.2, 0.3, 0.4]) * ldir[2]
    expected = albedo / np.pi * (e_point + e_dir)
    assert np.allclose(img, expected, rtol=2e-5, atol=1e-7)


def direct_light_scene():
    """`support.scenes.two_meshes` (a Lambert box, a GGX sphere, random vertex colors, a point and a
    directional light) without ambient light, on a black background, with shadows: what both renderers
    model."""
    from drstudio.renderer.device_scene import DeviceScene
    from support import scenes

    sc = scenes.two_meshes(40, 30)
    sc.ambient_lights = {}
    sc.background = np.zeros(3, np.float32)
    sc.render.shadows = True
    # render_view's shadow-boundary term (tests/test_shadow_edges.py) has no counterpart in render_path
    sc.render.shadow_edges = 0
    return DeviceScene(sc, "cpu")


def path_scene_of_frame(ds, frame):
    """The PathScene of a prepared `Frame`: its BVH, normals, uvs, vertex colors, material pools and lights
    (no emission, no environment). Gradients reaching the frame's arrays continue on the tape to the scene's leaves."""
    from drstudio.renderer.stages.texture import TexturePool

    zero = [wp.zeros((1, 1, 3), dtype=float) for _ in ds.scene.materials]
    empty = wp.zeros(0, dtype=float)
    return pt.PathScene(frame.bvh, frame.normals, frame.uvs, ds.face_material, ds.material_model, frame.albedo,
                        frame.roughness, frame.metallic, TexturePool.build(zero, ["wrap"] * len(zero), mipmaps=False),
                        frame.lights, wp.zeros((0, 0, 3), dtype=float), empty, empty, wp.zeros(0, dtype=wp.int32),
                        empty, wp.zeros(ds.num_faces, dtype=float), frame.colors)


def render_direct(ds, frame):
    return pt.render_path(path_scene_of_frame(ds, frame), ds.arrays["cameras.main.intrinsics"],
                          ds.arrays["cameras.main.pose"], 40, 30, spp=1, max_depth=1, jitter=False)


def test_depth_one_equals_rasterized_direct_light():
    """The rasterized `render_view` (hard mode, shadows) equals the path tracer at max_depth 1 with one
    sample at each pixel center: NEE to delta lights is deterministic. Measured: 1193 of 1200 pixels agree
    to 1e-6 and 1199 to 1e-4; one grazing pixel differs by 0.01 (two-sided normal flip, geometric-normal
    light test)."""
    from drstudio.renderer.render import render_view

    ds = direct_light_scene()
    frame = ds.prepare()
    ref = render_view(ds, frame, "main").image.numpy()
    img = render_direct(ds, frame).numpy()
    diff = np.abs(img - ref).max(-1)
    assert (diff < 1e-4 * max(1.0, ref.max())).mean() > 0.99
    assert np.abs(img - ref).mean() < 2e-3 * ref.mean()


def test_depth_one_gradients_equal_rasterized_gradients():
    """Through one wp.Tape over `DeviceScene.prepare` and the render, the path tracer's replayed adjoint
    reaches the scene's leaf arrays (via the texture pools' and light packing's recorded adjoints) with the
    rasterizer's gradients: albedo, vertex colors, roughness, metallic, light colors, intensities, position,
    direction.
    The pixels where the two images differ are left out of the loss; the rest is the same function, so
    the gradients agree to float32 summation order."""
    from drstudio.renderer.render import render_view
    from support import loss_kernels

    ds = direct_light_scene()
    frame = ds.prepare()
    same = np.abs(render_direct(ds, frame).numpy() - render_view(ds, frame, "main").image.numpy()).max(-1) < 1e-6
    w = np.random.default_rng(0).uniform(-1, 1, (1200, 3)).astype(np.float32) * same[:, None]
    weights = wp.array(w, dtype=float)
    paths = [p for p in ds.arrays if p.startswith(("materials.", "lights.")) or p.endswith(".colors")]
    grads = []
    for render in (lambda f: render_direct(ds, f), lambda f: render_view(ds, f, "main").image):
        ds.zero_grad()
        tape = wp.Tape()
        with tape:
            image = render(ds.prepare())
            loss = wp.zeros(1, dtype=float, requires_grad=True)
            wp.launch(loss_kernels.weighted_sum_2d, dim=image.shape, inputs=[image, weights, loss])
        tape.backward(loss)
        grads.append({p: ds.arrays[p].grad.numpy().copy() for p in paths})
    for p in paths:
        ref = grads[1][p]
        assert np.allclose(grads[0][p], ref, rtol=1e-4, atol=1e-5 * max(np.abs(ref).max(), 1e-3)), p
    zero = sorted(p for p in paths if not np.abs(grads[0][p]).any())
    # Lambert ignores roughness and metallic; the emission (zero, not part of this PathScene) has none
    assert zero == ["materials.matte.emission", "materials.matte.metallic", "materials.matte.roughness",
                    "materials.shiny.emission"]


def test_colour_bleeding_and_energy():
    """In the Cornell box the white back wall next to the red wall gets redder with indirect light
    (max_depth >= 2 than 1), and every extra depth adds energy."""
    cb = cornell_box(blocks=False, width=24, height=24)
    sc = pt.path_scene_from_numpy(cb["vertices"], cb["faces"], cb["materials"], face_material=cb["face_material"])
    intr, pose = farr(cb["intrinsics"]), farr(cb["pose"])
    imgs = {d: pt.render_path(sc, intr, pose, 24, 24, spp=32, max_depth=d, seed=5).numpy().reshape(24, 24, 3)
            for d in (1, 2, 4)}
    patch = (slice(9, 15), slice(5, 9))  # back wall, near the red (left) wall
    ratio = {d: imgs[d][patch][..., 0].mean() / imgs[d][patch][..., 1].mean() for d in imgs}
    assert ratio[2] > 1.1 * ratio[1] and ratio[4] > 1.1 * ratio[1]
    assert imgs[1].mean() < imgs[2].mean() < imgs[4].mean()
    # depth 0: only the light itself, seen directly
    d0 = pt.render_path(sc, intr, pose, 24, 24, spp=1, max_depth=0, jitter=False).numpy()
    assert set(np.unique(d0.round(4))) <= {0.0, 4.0, 12.0, 17.0} and d0.max() == pytest.approx(17.0)


def test_reproducible_with_seed():
    cb = cornell_box(width=16, height=16)
    sc = pt.path_scene_from_numpy(cb["vertices"], cb["faces"], cb["materials"], face_material=cb["face_material"])
    intr, pose = farr(cb["intrinsics"]), farr(cb["pose"])
    a = pt.render_path(sc, intr, pose, 16, 16, spp=4, seed=11).numpy()
    b = pt.render_path(sc, intr, pose, 16, 16, spp=4, seed=11).numpy()
    c = pt.render_path(sc, intr, pose, 16, 16, spp=4, seed=12).numpy()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert abs(a.mean() - c.mean()) < 0.1 * a.mean()  # different noise, same expectation
    # progressive: samples 0-3 and 4-7 average to samples 0-7
    d = pt.render_path(sc, intr, pose, 16, 16, spp=4, seed=11, first_sample=4).numpy()
    e = pt.render_path(sc, intr, pose, 16, 16, spp=8, seed=11).numpy()
    assert np.allclose((a + d) / 2, e, rtol=1e-5, atol=1e-6)


def test_argument_checks():
    v, f = quad([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]])
    sc = pt.path_scene_from_numpy(v, f, [dict()])
    intr, pose = farr([4, 4, 2, 2]), farr([0, 0, 2, 0, 0, 0, 1])
    with pytest.raises(TypeError, match="scene"):
        pt.render_path("scene", intr, pose, 4, 4)
    with pytest.raises(ValueError, match="spp"):
        pt.render_path(sc, intr, pose, 4, 4, spp=0)
    with pytest.raises(ValueError, match="max_depth"):
        pt.render_path(sc, intr, pose, 4, 4, max_depth=-1)
    with pytest.raises(ValueError, match="intrinsics"):
        pt.render_path(sc, farr([4, 4, 2]), pose, 4, 4)
    with pytest.raises(TypeError, match="jitter"):
        pt.render_path(sc, intr, pose, 4, 4, jitter=1)
    with pytest.raises(ValueError, match="grad_image"):
        pt.render_path_backward(sc, wp.zeros((3, 3), dtype=float), intr, pose, 4, 4)
    with pytest.raises(ValueError, match="path_radiance"):
        pt.render_path_backward(sc, wp.zeros((16, 3), dtype=float), intr, pose, 4, 4, spp=2, wrt=[],
                                path_radiance=wp.zeros(16, dtype=wp.vec3))
    with pytest.raises(ValueError, match="normals"):
        pt.PathScene(sc.bvh, wp.zeros((3, 3), dtype=float), *[getattr(sc, k) for k in (
            "uvs", "face_material", "material_model", "albedo", "roughness", "metallic", "emission", "lights", "env",
            "env_marginal", "env_conditional", "light_faces", "light_cdf", "face_light_pmf")])
    with pytest.raises(ValueError, match="face_material"):
        pt.path_scene_from_numpy(v, f, [dict()], face_material=[0, 1])
    with pytest.raises(ValueError, match="colors"):
        pt.path_scene_from_numpy(v, f, [dict()], colors=np.ones((3, 3)))


# --- gradients ---------------------------------------------------------------------------------------


def open_box_scene(requires_grad=True):
    """Floor (Lambert, 3x3 albedo texture), back wall (GGX), left wall (Lambert), all with vertex colors, a
    textured emitter under the ceiling facing down, a random environment seen through the open top-right,
    a point light inside and a directional light from the front."""
    rng = np.random.default_rng(0)
    parts = [quad([[-1, -1, 1], [1, -1, 1], [1, -1, -1], [-1, -1, -1]]),  # floor, normal +y
             quad([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]]),  # back, +z
             quad([[-1, -1, 1], [-1, -1, -1], [-1, 1, -1], [-1, 1, 1]]),  # left, +x
             quad([[-0.4, 0.8, -0.6], [0.2, 0.8, -0.6], [0.2, 0.8, 0.0], [-0.4, 0.8, 0.0]])]  # emitter, -y
    verts = np.concatenate([p[0] for p in parts])
    faces = np.concatenate([p[1] + 4 * k for k, p in enumerate(parts)])
    uvs = np.tile(np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]], np.float32), (4, 1))
    materials = [dict(model="lambert", albedo=rng.uniform(0.3, 0.8, (3, 3, 3))),
                 dict(model="ggx", albedo=(0.6, 0.5, 0.4), roughness=0.4, metallic=0.3),
                 dict(model="lambert", albedo=(0.7, 0.3, 0.2)),
                 dict(model="none", albedo=(0, 0, 0), emission=rng.uniform(2.0, 5.0, (2, 2, 3)))]
    lights = Lights.create(point_position=[[0.4, 0.2, 0.3]], point_color=[[1.0, 0.9, 0.8]], point_intensity=[1.5],
                           dir_direction=[[-0.3, -0.6, -0.8]], dir_color=[[0.7, 0.8, 1.0]], dir_intensity=[0.8],
                           requires_grad=requires_grad)
    env = rng.uniform(0.2, 1.0, (4, 8, 3)).astype(np.float32)
    colors = rng.uniform(0.6, 1.0, (len(verts), 3))
    sc = pt.path_scene_from_numpy(verts, faces, materials, face_material=[0, 0, 1, 1, 2, 2, 3, 3], uvs=uvs,
                                  lights=lights, env=env, colors=colors, requires_grad=requires_grad)
    intr, pose = camera((0.3, 0.4, 3.2), (0.0, -0.2, 0.0), 50.0, 12, 12)
    return sc, intr, pose


RENDER = dict(spp=4, max_depth=3, rr_depth=99, seed=7)


@pytest.fixture(scope="module")
def box():
    return open_box_scene()


@pytest.mark.parametrize("name", ["albedo", "colors", "emission", "env", "point_color", "point_intensity", "dir_color",
                                  "dir_intensity", "point_position"])
def test_gradient_matches_shared_rng_finite_differences(box, name):
    sc, intr, pose = box
    param = sc.parameters()[name]

    def forward():
        return weighted_loss(pt.render_path(sc, intr, pose, 12, 12, **RENDER))

    probes = {"albedo": 8, "colors": 8, "emission": 6, "env": 10}.get(name, 3)
    check_gradient(forward, param, eps=1e-2, rtol=1e-2, atol=2e-3, probes=probes, seed=1)


def corner_scene(requires_grad=True):
    """A Lambert floor (2x2 albedo texture) meeting a GGX back wall (2x2 roughness and metallic textures),
    lit from the front by a point and a directional light: a concave corner, so no surface shadows the
    lights from the other (no shadow edge can move across a path vertex)."""
    parts = [quad([[-1, -1, 1], [1, -1, 1], [1, -1, -1], [-1, -1, -1]]),
             quad([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]])]
    verts = np.concatenate([p[0] for p in parts])
    faces = np.concatenate([p[1] + 4 * k for k, p in enumerate(parts)])
    uvs = np.tile(np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]], np.float32), (2, 1))
    materials = [dict(model="lambert", albedo=[[[0.7, 0.6, 0.5], [0.4, 0.5, 0.6]], [[0.6, 0.6, 0.3], [0.5, 0.3, 0.6]]]),
                 dict(model="ggx", albedo=(0.8, 0.6, 0.4), roughness=[[[0.3], [0.5]], [[0.45], [0.6]]],
                      metallic=[[[0.2], [0.6]], [[0.4], [0.1]]])]
    lights = Lights.create(point_position=[[0.3, 0.6, 0.8]], point_color=[[1.0, 0.9, 0.8]], point_intensity=[2.0],
                           dir_direction=[[0.2, -0.5, -0.8]], dir_color=[[0.7, 0.8, 1.0]], dir_intensity=[0.9],
                           requires_grad=requires_grad)
    sc = pt.path_scene_from_numpy(verts, faces, materials, face_material=[0, 0, 1, 1], uvs=uvs, lights=lights,
                                  requires_grad=requires_grad)
    intr, pose = camera((0.2, 0.3, 3.0), (0.0, -0.3, -0.5), 55.0, 12, 12)
    return sc, intr, pose


@pytest.fixture(scope="module")
def corner():
    return corner_scene()


@pytest.mark.parametrize("name,depth", [("roughness", 1), ("metallic", 1), ("albedo", 1), ("point_position", 2),
                                        ("dir_direction", 2), ("albedo", 3)])
def test_gradient_corner_finite_differences(corner, name, depth):
    """Roughness and metallic at max_depth 1: light reaches the camera by NEE only, whose directions do
    not depend on them, so the shared-RNG image is smooth in them (deeper paths sample directions from
    the GGX lobe, and the gradient is exact only in expectation). Light position and direction at depth 2
    move no shadow edge here."""
    sc, intr, pose = corner
    render = dict(spp=2, max_depth=depth, rr_depth=99, seed=3)

    def forward():
        return weighted_loss(pt.render_path(sc, intr, pose, 12, 12, **render))

    param = sc.parameters()[name]
    check_gradient(forward, param, eps=1e-2, rtol=1e-2, atol=2e-3, probes=min(param.size, 8), seed=2)


def test_ggx_hand_derivatives_match_warp_autodiff():
    """`ggx_brdf_grad` (albedo, roughness, metallic) and `ggx_brdf_grad_l` (light direction) against Warp's
    generated adjoint of `shading.ggx_brdf` on random configurations with n.l, n.v > 0.1 and roughness
    above the ALPHA_MIN clamp: the same float32 formulas, so agreement to ~1e-5 relative."""
    from support.pathtrace_kernels import ggx_hand_grads, ggx_weighted

    rng = np.random.default_rng(4)
    k = 64
    n = np.tile([0.0, 0.0, 1.0], (k, 1))

    def hemi(lo):
        d = rng.normal(size=(k, 3))
        d[:, 2] = np.abs(d[:, 2]) + lo * np.linalg.norm(d, axis=1)
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def vec(a, grad=False):
        return wp.array(np.asarray(a, np.float32), dtype=wp.vec3, requires_grad=grad)

    def flt(a, grad=False):
        return wp.array(np.asarray(a, np.float32), dtype=float, requires_grad=grad)

    args = [vec(n), vec(hemi(0.2)), vec(hemi(0.2) * rng.uniform(0.5, 2, (k, 1)), True),
            vec(rng.uniform(0.05, 0.95, (k, 3)), True), flt(rng.uniform(0.15, 0.95, k), True),
            flt(rng.uniform(0.0, 1.0, k), True), vec(rng.uniform(-1, 1, (k, 3)))]
    out = wp.zeros(k, dtype=float, requires_grad=True)
    tape = wp.Tape()
    with tape:
        wp.launch(ggx_weighted, dim=k, inputs=args, outputs=[out])
    tape.backward(grads={out: wp.ones(k, dtype=float)})
    d_params = wp.zeros(k, dtype=pt.vec5)
    d_l = wp.zeros(k, dtype=wp.vec3)
    wp.launch(ggx_hand_grads, dim=k, inputs=args, outputs=[d_params, d_l])
    hand = d_params.numpy()
    auto = np.column_stack([args[3].grad.numpy(), args[4].grad.numpy(), args[5].grad.numpy()])
    assert np.allclose(hand, auto, rtol=1e-4, atol=1e-5 * np.abs(auto).max())
    assert np.allclose(d_l.numpy(), args[2].grad.numpy(), rtol=1e-4, atol=1e-5 * np.abs(args[2].grad.numpy()).max())


def test_roughness_metallic_gradients_in_expectation(corner):
    """At max_depth 2 the GGX lobe also chooses where paths go, so the replayed gradient (sampling
    detached) is exact only in expectation. At 1024 spp it agrees with shared-RNG central differences
    (h = 0.02) within the Monte Carlo noise measured for this scene (differences up to ~0.02 at
    2048 spp on gradients of ~0.1-0.7; FD of a lobe-selection flip is the noisiest part)."""
    sc, intr, pose = corner
    render = dict(spp=1024, max_depth=2, rr_depth=99, seed=5)

    def forward():
        return weighted_loss(pt.render_path(sc, intr, pose, 12, 12, **render))

    for name in ("roughness", "metallic"):
        check_gradient(forward, sc.parameters()[name], eps=2e-2, rtol=0.15, atol=0.04, indices=[1, 2, 3, 4])


def test_environment_importance_sampling_on_a_plane():
    """A Lambert plane facing +Y under a random environment, max_depth 1: each point sees the upper
    hemisphere, so the radiance is albedo / pi * sum over texels of L * dphi * (sin^2 t1 - sin^2 t0) / 2
    (the exact cosine-weighted solid angle of a texel's cell). Checks the environment's direction mapping,
    its sampling pdf and the MIS combination with cosine sampling."""
    rng = np.random.default_rng(9)
    he, we = 6, 12
    env = rng.uniform(0.0, 1.0, (he, we, 3)).astype(np.float32)
    env[1, 3] = [40.0, 30.0, 20.0]  # a small bright "sun": what importance sampling is for
    theta = np.arange(he + 1) / he * np.pi
    w = (2 * np.pi / we) * 0.5 * np.diff(np.sin(theta) ** 2)
    upper = theta[1:] <= np.pi / 2 + 1e-9
    irradiance = (env[upper] * w[upper, None, None]).sum((0, 1))
    albedo = np.array([0.9, 0.7, 0.5])
    v, f = quad([[-1, 0, 1], [1, 0, 1], [1, 0, -1], [-1, 0, -1]])
    sc = pt.path_scene_from_numpy(v, f, [dict(albedo=albedo)], env=env)
    intr, pose = camera((0, 3, 0.01), (0, 0, 0), 20.0, 8, 8)
    img = pt.render_path(sc, intr, pose, 8, 8, spp=256, max_depth=1, seed=2).numpy()
    expected = albedo / np.pi * irradiance
    # 64 pixels x 256 spp: per-pixel relative std ~5% (measured), so the mean has ~0.6%; bounds at ~5 sigma
    assert np.allclose(img.mean(0), expected, rtol=0.03)
    assert np.allclose(img, expected, rtol=0.3)


def test_nee_and_bsdf_sampling_agree():
    """The Cornell box with light sampling (NEE + MIS) and with BSDF sampling alone (empty light list)
    are two unbiased estimators of the same image: equal means within noise, NEE much less noisy."""
    cb = cornell_box(blocks=False, width=12, height=12)
    sc = pt.path_scene_from_numpy(cb["vertices"], cb["faces"], cb["materials"], face_material=cb["face_material"])
    intr, pose = farr(cb["intrinsics"]), farr(cb["pose"])
    empty_f, empty_i = wp.zeros(0, dtype=float), wp.zeros(0, dtype=wp.int32)
    bsdf_only = pt.PathScene(sc.bvh, sc.normals, sc.uvs, sc.face_material, sc.material_model, sc.albedo,
                             sc.roughness, sc.metallic, sc.emission, sc.lights, sc.env, sc.env_marginal,
                             sc.env_conditional, empty_i, empty_f, wp.zeros(sc.face_material.shape[0], dtype=float))
    kw = dict(spp=256, max_depth=3, seed=4, jitter=False)
    a = pt.render_path(sc, intr, pose, 12, 12, **kw).numpy()
    b = pt.render_path(bsdf_only, intr, pose, 12, 12, **kw).numpy()
    light = a.max(1) > 3.0  # pixels seeing the light (identical in both)
    assert np.allclose(a[light], b[light], rtol=1e-6)
    ma, mb = a[~light].mean(0), b[~light].mean(0)
    # BSDF-only: per-pixel relative std ~0.5 at 256 spp (the light covers ~2% of the hemisphere): its mean
    # over ~130 pixels has ~4%
    assert np.allclose(ma, mb, rtol=0.1)
    # noise: the difference of two renders with different seeds
    kw["seed"] = 5
    noise_a = np.abs(a - pt.render_path(sc, intr, pose, 12, 12, **kw).numpy())[~light].mean()
    noise_b = np.abs(b - pt.render_path(bsdf_only, intr, pose, 12, 12, **kw).numpy())[~light].mean()
    assert noise_a < 0.5 * noise_b


def test_tape_and_explicit_backward_agree():
    """render_path under a wp.Tape (its backward starts from the radiance the forward pass kept per path)
    gives the same gradients as render_path_backward called by hand (which traces each path once more for
    it); `wrt` selects the parameters; gradients accumulate (a second backward adds)."""
    sc, intr, pose = corner_scene()
    kw = dict(spp=2, max_depth=2, seed=1)
    tape = wp.Tape()
    with tape:
        loss = weighted_loss(pt.render_path(sc, intr, pose, 12, 12, **kw))
    tape.backward(loss)
    via_tape = {k: a.grad.numpy().copy() for k, a in sc.parameters().items() if a.grad is not None}
    tape.zero()
    img = pt.render_path(sc, intr, pose, 12, 12, **kw)
    img.grad.zero_()
    grad_image = wp.array(np.random.default_rng(0).uniform(-1, 1, (144, 3)).astype(np.float32), dtype=float)
    for k in ("albedo", "point_color"):
        sc.parameters()[k].grad.zero_()
    pt.render_path_backward(sc, grad_image, intr, pose, 12, 12, wrt=["albedo"], **kw)
    assert np.abs(via_tape["albedo"]).max() > 0
    assert np.allclose(sc.parameters()["albedo"].grad.numpy(), via_tape["albedo"], rtol=1e-5, atol=1e-7)
    assert not sc.parameters()["point_color"].grad.numpy().any()
    pt.render_path_backward(sc, grad_image, intr, pose, 12, 12, wrt=["albedo"], **kw)
    assert np.allclose(sc.parameters()["albedo"].grad.numpy(), 2 * via_tape["albedo"], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unknown parameter"):
        pt.render_path_backward(sc, grad_image, intr, pose, 12, 12, wrt=["colour"], **kw)


def test_threads_give_the_same_image_and_gradients():
    """Bands of rows on two CPU threads: the same image bit for bit (per-pixel random numbers), the same
    gradients up to float summation order (each band scatters into its own buffers, added afterwards)."""
    sc, intr, pose = open_box_scene()
    kw = dict(spp=2, max_depth=3, seed=3)
    grads = []
    for threads in (1, 2):
        for a in sc.parameters().values():
            if a.grad is not None:
                a.grad.zero_()
        tape = wp.Tape()
        with tape:
            img = pt.render_path(sc, intr, pose, 12, 11, threads=threads, **kw)
            loss = weighted_loss(img)
        tape.backward(loss)
        params = sc.parameters().items()
        grads.append((img.numpy(), {k: a.grad.numpy().copy() for k, a in params if a.grad is not None}))
    assert np.array_equal(grads[0][0], grads[1][0])
    for k, g in grads[0][1].items():
        assert np.allclose(grads[1][1][k], g, rtol=1e-5, atol=1e-6 * max(np.abs(g).max(), 1e-6)), k
    with pytest.raises(ValueError, match="threads"):
        pt.render_path(sc, intr, pose, 12, 11, threads=0)


def test_inverse_rendering_recovers_a_wall_albedo():
    """Gradient descent (Adam) through path replay: from gray walls, 40 steps of 4 spp (a new seed each
    step) against a 64 spp target of the Cornell box bring the red wall's albedo close to the target's and
    leave the white walls white (measured: red (0.625, 0.122, 0.071) for (0.63, 0.065, 0.05), white 0.69-0.70
    for 0.73). A smoke test of the whole loop: render, image adjoint, backward, update."""
    cb = cornell_box(blocks=False, width=16, height=16)
    intr, pose = farr(cb["intrinsics"]), farr(cb["pose"])
    kw = dict(max_depth=3, rr_depth=99)
    target = pt.render_path(pt.path_scene_from_numpy(cb["vertices"], cb["faces"], cb["materials"],
                                                     face_material=cb["face_material"]),
                            intr, pose, 16, 16, spp=64, seed=100, **kw).numpy()
    start = [dict(m, albedo=(0.5, 0.5, 0.5)) if m["model"] == "lambert" else m for m in cb["materials"]]
    sc = pt.path_scene_from_numpy(cb["vertices"], cb["faces"], start, face_material=cb["face_material"],
                                  requires_grad=True)
    albedo = sc.albedo.data
    x = albedo.numpy()  # a view: updates write the Warp array (CPU)
    m1, m2 = np.zeros_like(x), np.zeros_like(x)
    for step in range(1, 41):
        img = pt.render_path(sc, intr, pose, 16, 16, spp=4, seed=step, **kw)
        grad_image = wp.array(2 * (img.numpy() - target) / target.size, dtype=float)
        albedo.grad.zero_()
        pt.render_path_backward(sc, grad_image, intr, pose, 16, 16, spp=4, seed=step, wrt=["albedo"], **kw)
        g = albedo.grad.numpy()
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g * g
        x -= 0.03 * (m1 / (1 - 0.9**step)) / (np.sqrt(m2 / (1 - 0.999**step)) + 1e-8)
        np.clip(x, 0.0, 1.0, out=x)
    red, white = x[3:6], x[0:3]
    assert np.abs(red - np.array(cb["materials"][1]["albedo"])).max() < 0.12
    assert np.abs(white - 0.73).max() < 0.12


def test_extreme_materials_stay_finite():
    """Random triangles (both sides seen, degenerate ones included) with GGX at roughness 0 and 1 and
    metallic 0 and 1, a Lambert of albedo 0 and 1, every light kind: the image and every gradient are
    finite."""
    rng = np.random.default_rng(5)
    verts = rng.uniform(-1, 1, (60, 3)).astype(np.float32)
    faces = rng.integers(0, 60, (20, 3)).astype(np.int32)
    faces[0] = [3, 3, 7]  # degenerate
    materials = [dict(model="ggx", albedo=(0.9, 0.5, 0.1), roughness=r, metallic=m) for r in (0.0, 1.0)
                 for m in (0.0, 1.0)]
    materials += [dict(albedo=(0.0, 0.0, 0.0)), dict(albedo=(1.0, 1.0, 1.0), emission=(2.0, 1.0, 0.5))]
    lights = Lights.create(point_position=[[0.2, 0.3, 1.5]], point_intensity=[3.0], dir_direction=[[0.1, -1.0, 0.2]],
                           requires_grad=True)
    env = rng.uniform(0, 2, (4, 8, 3)).astype(np.float32)
    sc = pt.path_scene_from_numpy(verts, faces, materials, face_material=rng.integers(0, 6, 20), lights=lights,
                                  env=env, requires_grad=True)
    intr, pose = camera((0.5, 0.4, 3.0), (0, 0, 0), 50.0, 16, 16)
    tape = wp.Tape()
    with tape:
        img = pt.render_path(sc, intr, pose, 16, 16, spp=8, max_depth=6, rr_depth=2, seed=1)
        loss = weighted_loss(img)
    tape.backward(loss)
    assert np.isfinite(img.numpy()).all() and img.numpy().max() > 0
    for name, a in sc.parameters().items():
        assert a.size == 0 or np.isfinite(a.grad.numpy()).all(), name
