"""Shading stage: Lambert and GGX against NumPy references and closed forms, tape gradients of every
differentiable input, empty light lists, and shadow rays against a small occluding quad."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.stages.shading import Lights, shade, shadow_mask
from support.gradcheck import check_gradient, weighted_loss

CAM = np.array([0.3, -0.2, 4.0, 0.1, 0.3, -0.2, 0.9], np.float32)  # unnormalized quaternion: unused


def farr(a, grad=False):
    return wp.array(np.asarray(a, np.float32), dtype=float, requires_grad=grad)


def iarr(a):
    return wp.array(np.asarray(a, np.int32), dtype=wp.int32)


# --- NumPy reference (float64), written from the textbook forms, not from the kernel's rearrangement --


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_brdf(n, v, l, albedo, rough, metal, model):
    if model == 0:
        return albedo / np.pi
    alpha = max(rough**2, 1e-4)
    h = unit(l + v)
    nl, nv, nh, vh = n @ l, n @ v, n @ h, v @ h
    d = alpha**2 / (np.pi * (nh**2 * (alpha**2 - 1) + 1) ** 2) if nh > 0 else 0.0  # chi+(n.h)

    def smith_lambda(c):  # Lambda(theta) = (sqrt(1 + a^2 tan^2 theta) - 1) / 2
        return (np.sqrt(1 + alpha**2 * (1 - c * c) / (c * c)) - 1) / 2

    if nv > 0:
        vis = 1 / (1 + smith_lambda(nv) + smith_lambda(nl)) / (4 * nl * nv)  # height-correlated G2
    else:  # the documented clamp n.v = 0: Lambda(nv) ~ a / (2 nv), so G2 / (4 nl nv) -> 1 / (2 a nl)
        vis = 1 / (2 * alpha * nl)
    f0 = 0.04 * (1 - metal) + albedo * metal
    f = f0 + (1 - f0) * (1 - vh) ** 5
    return (1 - f) * (1 - metal) * albedo / np.pi + d * vis * f


def ref_shade(P, N, A, R, M, model, cam, L, shadow=None):
    out = np.zeros((len(P), 3))
    for i in range(len(P)):
        if model[i] < 0:
            continue
        n, v = unit(N[i]), unit(cam[:3] - P[i])
        out[i] += A[i] * L["ambient"] * ((1 - M[i, 0]) if model[i] == 1 else 1.0)
        lights = []
        for pos, col, inten in zip(L["pp"], L["pc"], L["pi"], strict=True):
            d = pos - P[i]
            lights.append((unit(d), inten * col / (d @ d)))
        for dirn, col, inten in zip(L["dd"], L["dc"], L["di"], strict=True):
            lights.append((-unit(dirn), inten * col))
        for j, (l, e) in enumerate(lights):
            if n @ l <= 0:
                continue
            s = 1.0 if shadow is None else shadow[i, j]
            out[i] += s * ref_brdf(n, v, l, A[i], R[i, 0], M[i, 0], model[i]) * e * (n @ l)
    return out


def scene(n=6, lp=2, ld=2, seed=0):
    """Points on a bumpy patch near z = 0 facing +z, camera and lights above: every n.l and n.v is
    >= ~0.25 by construction (away from the max(0, .) kinks), normals of random length."""
    rng = np.random.default_rng(seed)
    normals = np.column_stack([rng.uniform(-0.3, 0.3, (n, 2)), np.ones(n)]) * rng.uniform(0.5, 2, (n, 1))
    geo = dict(P=rng.uniform([-1, -1, -0.2], [1, 1, 0.2], (n, 3)), N=normals,
               A=rng.uniform(0.2, 0.9, (n, 3)), R=rng.uniform(0.2, 0.9, (n, 1)),
               M=rng.uniform(0.1, 0.9, (n, 1)))
    L = dict(pp=rng.uniform([-1, -1, 2.5], [1, 1, 3.5], (lp, 3)), pc=rng.uniform(0.5, 1, (lp, 3)),
             pi=rng.uniform(3, 8, lp), dd=np.column_stack([rng.uniform(-0.4, 0.4, (ld, 2)), -np.ones(ld)]),
             dc=rng.uniform(0.5, 1, (ld, 3)), di=rng.uniform(0.5, 2, ld), ambient=rng.uniform(0.05, 0.2, 3))
    return {k: v.astype(np.float32) for k, v in geo.items()}, {k: v.astype(np.float32) for k, v in L.items()}


def make_lights(L, grad=False):
    return Lights.create(L["pp"], L["pc"], L["pi"], L["dd"], L["dc"], L["di"], L["ambient"],
                         requires_grad=grad)


def launch_inputs(geo, model, grad=False):
    return dict(positions=farr(geo["P"], grad), normals=farr(geo["N"], grad), albedo=farr(geo["A"], grad),
                roughness=farr(geo["R"], grad), metallic=farr(geo["M"], grad), model=iarr(model),
                pose=farr(CAM, grad))


# --- forward ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_models_match_numpy_reference(seed, device):
    geo, L = scene(n=24, lp=3, ld=2, seed=seed)
    model = np.tile([0, 1, -1], 8)
    out = shade(**launch_inputs(geo, model), lights=make_lights(L)).numpy()
    want = ref_shade(geo["P"], geo["N"], geo["A"], geo["R"], geo["M"], model, CAM, L)
    # float32 kernel vs float64 reference: a few ulp of relative error per term
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=1e-6)
    assert np.all(out[model == -1] == 0.0)
    assert np.all(out[model >= 0] > 0.0)


@pytest.mark.parametrize("cam_xyz", [(0.2, 0.1, 4.0), (5.0, 1.0, -0.6)])
def test_lights_below_horizon_and_camera_behind_surface(cam_xyz, device):
    # lights all around the patch (clamped n.l contributes nothing); the grazing camera sees some
    # normals from behind (n.v < 0, clamped to 0) and microfacets with n.h <= 0 (D = 0)
    rng = np.random.default_rng(5)
    geo, L = scene(n=40, lp=4, ld=3, seed=5)
    L["pp"] = rng.uniform(-3, 3, (4, 3)).astype(np.float32)
    L["dd"] = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
    model = np.tile([0, 1], 20)
    cam = np.array([*cam_xyz, 0, 0, 0, 1], np.float32)
    out = shade(**{**launch_inputs(geo, model), "pose": farr(cam)}, lights=make_lights(L)).numpy()
    want = ref_shade(geo["P"], geo["N"], geo["A"], geo["R"], geo["M"], model, cam, L)
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=1e-6)


def test_shadow_multiplies_each_light(device):
    geo, L = scene(n=10, lp=2, ld=2, seed=3)
    model = np.tile([0, 1], 5)
    shadow = np.random.default_rng(3).uniform(0, 1, (10, 4)).astype(np.float32)
    out = shade(**launch_inputs(geo, model), lights=make_lights(L), shadow=farr(shadow)).numpy()
    want = ref_shade(geo["P"], geo["N"], geo["A"], geo["R"], geo["M"], model, CAM, L, shadow)
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=1e-6)


def test_lambert_directional_closed_form(device):
    # a unit-albedo-scaled surface at angle theta to a directional light: albedo / pi * I * color * cos
    theta = np.array([0.0, 0.4, 1.0, 1.4])
    normals = np.column_stack([np.sin(theta), np.zeros(4), np.cos(theta)]) * 3.0  # normalized in the kernel
    albedo = np.array([[0.5, 0.25, 1.0]] * 4)
    lights = Lights.create(dir_direction=[[0, 0, -2.0]], dir_color=[[1.0, 0.5, 0.2]], dir_intensity=[3.0])
    out = shade(farr(np.zeros((4, 3))), farr(normals), farr(albedo), farr(np.full((4, 1), 0.5)),
                farr(np.zeros((4, 1))), iarr([0] * 4), farr(CAM), lights).numpy()
    want = albedo / np.pi * 3.0 * np.array([1.0, 0.5, 0.2]) * np.cos(theta)[:, None]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)


def test_lambert_point_light_inverse_square(device):
    lights = Lights.create(point_position=[[0, 0, 2.0]], point_intensity=[8.0])
    pos = np.array([[0, 0, 0], [0, 0, 1], [2, 0, 0]], np.float32)  # distances 2, 1, sqrt(8)
    cos = np.array([1, 1, 2 / np.sqrt(8)])
    d2 = np.array([4, 1, 8])
    out = shade(farr(pos), farr(np.tile([0, 0, 1.0], (3, 1))), farr(np.ones((3, 3))), farr(np.ones((3, 1))),
                farr(np.zeros((3, 1))), iarr([0] * 3), farr(CAM), lights).numpy()
    np.testing.assert_allclose(out, np.repeat((8.0 / np.pi * cos / d2)[:, None], 3, 1), rtol=1e-6)


@pytest.mark.parametrize("rough, metal", [(0.3, 0.0), (0.5, 0.7), (1.0, 1.0), (0.0, 1.0), (0.005, 0.5)])
def test_ggx_normal_incidence_closed_form(rough, metal, device):
    # n = v = l = h: D = 1 / (pi a^2), G2 = 1, F = F0, so f = (1 - F0)(1 - m) albedo / pi + F0 / (4 pi a^2);
    # roughness below 0.01 acts as 0.01 (a = 1e-4, a^2 = 1e-8: below float32's epsilon next to 1, the case
    # where D's denominator must not be formed as n.h^2 (a^2 - 1) + 1)
    albedo = np.array([0.8, 0.5, 0.1])
    lights = Lights.create(dir_direction=[[0, 0, -1.0]], dir_intensity=[2.0], ambient=[0.1, 0.2, 0.3])
    out = shade(farr([[0, 0, 0]]), farr([[0, 0, 1]]), farr([albedo]), farr([[rough]]), farr([[metal]]),
                iarr([1]), farr([0, 0, 5, 0, 0, 0, 1]), lights).numpy()[0]
    a = max(rough**2, 1e-4)
    f0 = 0.04 * (1 - metal) + albedo * metal
    f = (1 - f0) * (1 - metal) * albedo / np.pi + f0 / (4 * np.pi * a * a)
    want = 2.0 * f + albedo * (1 - metal) * np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(out, want, rtol=1e-5)


@pytest.mark.parametrize("lp, ld", [(0, 0), (0, 2), (2, 0)])
def test_empty_light_lists(lp, ld, device):
    geo, L = scene(n=8, lp=lp, ld=ld, seed=7)
    model = np.tile([0, 1], 4)
    lights = make_lights(L, grad=True)
    assert (lights.num_point, lights.num_directional) == (lp, ld)
    inputs = launch_inputs(geo, model, grad=True)
    half = np.full((8, lp + ld), 0.5, np.float32)
    shadow = farr(half)
    out = shade(**inputs, lights=lights, shadow=shadow)
    want = ref_shade(geo["P"], geo["N"], geo["A"], geo["R"], geo["M"], model, CAM, L, half)
    np.testing.assert_allclose(out.numpy(), want, rtol=2e-5, atol=1e-6)
    # the adjoint runs with length-0 light arrays, and the ambient gradient is exact:
    # d/d ambient_k of sum_i w_ik A_ik (1 - m_i [GGX]) for the weights of weighted_loss
    check_gradient(lambda: weighted_loss(shade(**inputs, lights=lights, shadow=shadow)), lights.ambient,
                   probes=3, atol=1e-4)
    if lp + ld == 0:
        keep = np.where(model == 1, 1 - geo["M"][:, 0], 1.0)[:, None]
        np.testing.assert_allclose(out.numpy(), geo["A"] * L["ambient"] * keep, rtol=1e-6)


# --- gradients -------------------------------------------------------------------------------------
# Loss = sum of w * out, w uniform in [-1, 1]. Each output carries a float32 error of at most ~10 ulp
# (a few dozen operations), so a central difference with step eps has a roundoff error of at most
# ~10 u S / eps, S = sum|out| (u = 6e-8; S ~ 5 in these scenes: ~3e-3). Truncation is
# (eps / width)^2 / 6 relative, the narrowest feature being the GGX lobe of width a = roughness^2 >= 0.04
# rad: < 1e-4. Hence rtol = 1e-2 and atol = max(1e-3, 10 u S / eps).

EPS = 1e-3


def fd_atol(out) -> float:
    return max(1e-3, 10 * 6e-8 * float(np.abs(out.numpy()).sum()) / EPS)


def gradient_case(model_id, name, seed=11, with_shadow=False):
    geo, L = scene(n=5, lp=2, ld=2, seed=seed)
    model = np.full(5, model_id)
    inputs = launch_inputs(geo, model, grad=True)
    lights = make_lights(L, grad=True)
    shadow = farr(np.random.default_rng(seed).uniform(0.2, 1, (5, 4))) if with_shadow else None

    def forward():
        return weighted_loss(shade(**inputs, lights=lights, shadow=shadow), seed=seed)

    param = inputs[name] if name in inputs else getattr(lights, name)
    return forward, param, fd_atol(shade(**inputs, lights=lights, shadow=shadow))


INPUTS = ["positions", "normals", "albedo", "roughness", "metallic", "pose", "point_position", "point_color",
          "point_intensity", "dir_direction", "dir_color", "dir_intensity", "ambient"]


@pytest.mark.parametrize("name", INPUTS)
@pytest.mark.parametrize("model_id", [0, 1])
def test_gradient(model_id, name, device):
    forward, param, atol = gradient_case(model_id, name)
    check_gradient(forward, param, eps=EPS, rtol=1e-2, atol=atol, probes=6)


@pytest.mark.parametrize("name", ["normals", "albedo", "point_intensity", "dir_color"])
def test_gradient_with_shadow(name, device):
    forward, param, atol = gradient_case(1, name, seed=12, with_shadow=True)
    check_gradient(forward, param, eps=EPS, rtol=1e-2, atol=atol, probes=6)


@pytest.mark.parametrize("name", ["positions", "normals", "roughness", "metallic", "pose", "dir_direction"])
def test_gradient_on_the_specular_lobe(name, device):
    # camera straight above, light mirrored about a tilted normal: h sits 0, a/2 and a away from n, where
    # D and its derivatives are largest (roughness 0.25: a = 0.0625 rad)
    n = np.array([0.05, 0.0, 1.0]) / np.hypot(0.05, 1.0)
    l = 2 * n[2] * n - np.array([0, 0, 1.0])  # the mirror direction of v = +z
    offsets = np.array([0.0, 0.03, 0.06])
    normals = np.column_stack([n[0] + offsets, np.zeros(3), np.full(3, n[2])])
    inputs = dict(positions=farr(np.zeros((3, 3)), True), normals=farr(normals, True),
                  albedo=farr(np.tile([0.8, 0.6, 0.3], (3, 1)), True),
                  roughness=farr(np.full((3, 1), 0.25), True),
                  metallic=farr(np.full((3, 1), 0.5), True), model=iarr([1, 1, 1]),
                  pose=farr([0, 0, 3.0, 0, 0, 0, 1], True))
    lights = Lights.create(dir_direction=[-l], dir_intensity=[1.5], requires_grad=True)
    out = shade(**inputs, lights=lights)
    assert out.numpy().max() > 5.0  # really on the lobe: D V F ~ 81 * 0.25 * 0.42
    param = inputs[name] if name in inputs else getattr(lights, name)
    check_gradient(lambda: weighted_loss(shade(**inputs, lights=lights)), param, eps=EPS, rtol=1e-2,
                   atol=fd_atol(out), probes=6)


def test_gradient_is_zero_where_model_is_none_and_for_the_quaternion(device):
    geo, L = scene(n=6, lp=1, ld=1, seed=2)
    model = np.array([0, -1, 1, -1, 0, 1])
    inputs = launch_inputs(geo, model, grad=True)
    tape = wp.Tape()
    with tape:
        loss = weighted_loss(shade(**inputs, lights=make_lights(L, grad=True)))
    tape.backward(loss)
    for name in ["positions", "normals", "albedo", "roughness", "metallic"]:
        g = inputs[name].grad.numpy()
        assert np.all(g[model == -1] == 0.0) and np.any(g[model >= 0] != 0.0), name
    # roughness and metallic do not enter Lambert
    assert np.all(inputs["roughness"].grad.numpy()[model == 0] == 0.0)
    pose_grad = inputs["pose"].grad.numpy()
    assert np.all(pose_grad[3:] == 0.0) and np.any(pose_grad[:3] != 0.0)


# --- validation ------------------------------------------------------------------------------------


def test_validation_errors_name_the_argument(device):
    geo, L = scene(n=4, lp=1, ld=1)
    inputs = launch_inputs(geo, np.zeros(4))
    lights = make_lights(L)
    with pytest.raises(ValueError, match="roughness"):
        shade(**{**inputs, "roughness": farr(np.zeros((4, 3)))}, lights=lights)
    with pytest.raises(TypeError, match="model"):
        shade(**{**inputs, "model": farr(np.zeros(4))}, lights=lights)
    with pytest.raises(ValueError, match="pose"):
        shade(**{**inputs, "pose": farr(np.zeros(3))}, lights=lights)
    with pytest.raises(ValueError, match="shadow"):
        shade(**inputs, lights=lights, shadow=farr(np.ones((4, 3))))
    with pytest.raises(TypeError, match="lights"):
        shade(**inputs, lights={"ambient": None})
    with pytest.raises(ValueError, match="lights.point_color"):
        Lights(lights.point_position, wp.zeros(3, dtype=wp.vec3), lights.point_intensity,
               lights.dir_direction, lights.dir_color, lights.dir_intensity, lights.ambient)
    with pytest.raises(TypeError, match="lights.dir_intensity"):
        Lights(lights.point_position, lights.point_color, lights.point_intensity, lights.dir_direction,
               lights.dir_color, wp.zeros(1, dtype=wp.vec3), lights.ambient)
    with pytest.raises(TypeError, match="normals"):
        shadow_mask(0, inputs["positions"], np.zeros((4, 3)), inputs["model"], lights)


# --- shadow rays -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quad(device):
    """The square [-1, 1]^2 at z = 1 (two triangles), the occluder."""
    with wp.ScopedDevice(device):  # module scope: set up before the per-test default device
        pts = wp.array(np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], np.float32), dtype=wp.vec3)
        return wp.Mesh(points=pts, indices=iarr([0, 1, 2, 0, 2, 3]))


def test_shadow_mask_against_quad(quad, device):
    # columns: point light above the quad, point light between quad and origin, light travelling -z,
    # light travelling +x (grazes nothing)
    lights = Lights.create(point_position=[[0, 0, 3.0], [0.2, 0.1, 0.5]],
                           dir_direction=[[0.1, 0.0, -1.0], [1.0, 0.0, 0.0]])
    pos = [[0, 0, 0],  # under the quad
           [3, 0, 0],  # beside it
           [0.5, 0.5, 1.0],  # on the quad, normal up: must not shadow itself
           [0.5, -0.5, 1.0],  # on the quad, normal down: the ray still leaves on the lit side
           [0.3, 0.3, 0.0],  # under the quad but model -1
           [0.0, 0.0, 2.0],  # above the quad
           [0.5, 0.5, 0.99]]  # just under the quad: the offset must not push it through
    normals = [[0, 0, 1], [0, 0, 1], [0, 0, 2], [0, 0, -1], [0, 0, 1], [0, 0, -1], [0, 0, 1]]
    model = [0, 1, 0, 1, -1, 0, 1]
    got = shadow_mask(quad.id, farr(pos), farr(normals), iarr(model), lights).numpy()
    want = [[0, 1, 0, 1],
            [1, 1, 1, 1],
            [1, 1, 1, 1],  # lights below: the ray starts on the quad's lower side
            [1, 1, 1, 1],
            [1, 1, 1, 1],
            [1, 0, 1, 1],  # the second point light is under the quad
            [0, 1, 0, 1]]
    np.testing.assert_array_equal(got, np.array(want, np.float32))


def test_shadow_mask_is_not_recorded_and_works_without_lights(quad, device):
    tape = wp.Tape()
    with tape:
        m = shadow_mask(quad.id, farr([[0, 0, 0]], True), farr([[0, 0, 1]]), iarr([0]),
                        Lights.create(point_position=[[0, 0, 3.0]]))
    assert m.numpy().tolist() == [[0.0]] and len(tape.launches) == 0
    empty = shadow_mask(quad.id, farr([[0, 0, 0]]), farr([[0, 0, 1]]), iarr([0]), Lights.create())
    assert empty.shape == (1, 0)


def test_facing_only_mask_skips_lights_behind_the_normal_and_shades_the_same(quad, device):
    """facing_only gives 0 where n.l < 0 (no ray) and the geometric visibility elsewhere; shading with
    either mask gives the same radiance, since such a light contributes max(0, n.l) = 0."""
    lights = Lights.create(point_position=[[0, 0, 3.0], [0.2, 0.1, 0.5]], point_color=[[1, 1, 1], [1, 0.5, 0.2]],
                           point_intensity=[4.0, 2.0], dir_direction=[[0.1, 0.0, -1.0], [1.0, 0.0, 0.0]],
                           ambient=[0.1, 0.1, 0.1])
    pos = [[0, 0, 0], [3, 0, 0], [0.5, 0.5, 1.0], [0.5, -0.5, 1.0], [0.3, 0.3, 0.0], [0.0, 0.0, 2.0],
           [0.5, 0.5, 0.99], [2, 0, 0.5]]
    normals = [[0, 0, 1], [0, 0, 1], [0, 0, 2], [0, 0, -1], [0, 0, 1], [0, 0, -1], [0, 0, 1], [-1, 0, 0]]
    model = [0, 1, 0, 1, -1, 0, 1, 0]
    full = shadow_mask(quad.id, farr(pos), farr(normals), iarr(model), lights).numpy()
    culled = shadow_mask(quad.id, farr(pos), farr(normals), iarr(model), lights, facing_only=True).numpy()
    p, n = np.array(pos, float), np.array(normals, float)
    to_light = np.concatenate([np.array([[0, 0, 3.0], [0.2, 0.1, 0.5]])[None] - p[:, None],
                               -np.broadcast_to(np.array([[0.1, 0.0, -1.0], [1.0, 0.0, 0.0]]), (len(p), 2, 3))],
                              axis=1)
    away = (np.einsum("ik,ijk->ij", n, to_light) < 0) & (np.array(model) >= 0)[:, None]
    assert away.any() and (~away).any()
    np.testing.assert_array_equal(culled[away], 0.0)
    np.testing.assert_array_equal(culled[~away], full[~away])
    rng = np.random.default_rng(0)
    albedo = farr(rng.uniform(0.2, 0.9, (len(pos), 3)))
    rough, metal = farr(rng.uniform(0.2, 0.9, (len(pos), 1))), farr(rng.uniform(0, 1, (len(pos), 1)))
    pose = farr([0.5, 1.0, 4.0, 0, 0, 0, 1])
    args = (farr(pos), farr(normals), albedo, rough, metal, iarr(model), pose, lights)
    np.testing.assert_array_equal(shade(*args, farr(culled)).numpy(), shade(*args, farr(full)).numpy())
