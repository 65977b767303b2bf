"""Optimizers against NumPy re-implementations on a quadratic, the NaN guard, schedules, state round
trips, and the constraint projections.

The quadratic: an (4, 3) float param A under `losses.l2` (gradient 2 (A - TA) / 12) plus a (5,) vec3
param B under sum_i c_i ||B_i - TB_i||^2 (gradient 2 c_i (B_i - TB_i)), both through a wp.Tape, so the
optimizers see real tape gradients of two dtypes. Float32 updates vs the float64 reference: each step
moves a value by <= lr ~ 0.1 with relative error ~1e-6, so 5 steps agree to ~1e-6; checked at 1e-5."""

import math

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.optim import losses
from drstudio.renderer.optim.optimizers import (
    CONSTRAINTS_BY_KIND,
    SGD,
    Adam,
    cosine_decay,
    exponential_decay,
    make_schedule,
    norm_at,
    project,
    zero_at,
)
from drstudio.renderer.scene import AmbientLight, Camera, DirectionalLight, Material, Mesh, PointLight, Scene
from drstudio.renderer.scene_schema import CosineSchedule, ExponentialSchedule


@wp.kernel
def weighted_sq_distance(b: wp.array(dtype=wp.vec3), target: wp.array(dtype=wp.vec3),
                         c: wp.array(dtype=float), out: wp.array(dtype=float)):
    i = wp.tid()
    d = b[i] - target[i]
    wp.atomic_add(out, 0, c[i] * wp.dot(d, d))


RNG = np.random.default_rng(0)
A0, TA = RNG.uniform(-1, 1, (4, 3)), RNG.uniform(-1, 1, (4, 3))
B0, TB, CB = RNG.uniform(-1, 1, (5, 3)), RNG.uniform(-1, 1, (5, 3)), RNG.uniform(0.5, 2.0, 5)


class Problem:
    """The two parameters on the device and one tape step producing their gradients."""

    def __init__(self):
        self.a = wp.array(A0.astype(np.float32), dtype=float, requires_grad=True)
        self.b = wp.array(B0.astype(np.float32), dtype=wp.vec3, requires_grad=True)
        self.ta = wp.array(TA.astype(np.float32), dtype=float)
        self.tb = wp.array(TB.astype(np.float32), dtype=wp.vec3)
        self.cb = wp.array(CB.astype(np.float32), dtype=float)
        self.tape = wp.Tape()

    def backward(self):
        self.tape.reset()
        loss = wp.zeros(1, dtype=float, requires_grad=True)
        with self.tape:
            losses.l2(self.a, self.ta, loss)
            wp.launch(weighted_sq_distance, dim=5, inputs=[self.b, self.tb, self.cb, loss])
        self.tape.backward(loss)
        return loss

    def run(self, opt, steps):
        applied = []
        for _ in range(steps):
            loss = self.backward()
            applied.append(opt.step(loss))
            self.tape.zero()
        return applied

    def values(self):
        return self.a.numpy().copy(), self.b.numpy().copy()


def numpy_grads(a, b):
    return 2 * (a - TA) / TA.size, 2 * CB[:, None] * (b - TB)


def numpy_adam(steps, lrs, betas=(0.9, 0.999), eps=1e-8, factor=lambda s: 1.0):
    p = [A0.copy(), B0.copy()]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t in range(1, steps + 1):
        for k, g in enumerate(numpy_grads(*p)):
            m[k] = betas[0] * m[k] + (1 - betas[0]) * g
            v[k] = betas[1] * v[k] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[k] / (1 - betas[0] ** t), v[k] / (1 - betas[1] ** t)
            p[k] = p[k] - lrs[k] * factor(t - 1) * m_hat / (np.sqrt(v_hat) + eps)
    return p


def numpy_sgd(steps, lrs, momentum, factor=lambda s: 1.0):
    p = [A0.copy(), B0.copy()]
    vel = [np.zeros_like(x) for x in p]
    for s in range(steps):
        for k, g in enumerate(numpy_grads(*p)):
            vel[k] = momentum * vel[k] + g
            p[k] = p[k] - lrs[k] * factor(s) * vel[k]
    return p


def assert_close(got, want):
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_adam_matches_numpy(device):
    prob = Problem()
    opt = Adam({"a": prob.a, "b": prob.b}, lr=[0.1, 0.05])
    assert prob.run(opt, 5) == [True] * 5
    assert_close(prob.values(), numpy_adam(5, [0.1, 0.05]))
    assert opt.state_dict()["steps"] == 5


def test_adam_eps_of_a_scene_matches_numpy(device):
    """optimizer.eps of a scene (Instant-NGP's 1e-15 for hash tables) reaches the update: 5 steps equal the NumPy
    reference with that eps, and the schema refuses eps <= 0 naming the key."""
    from drstudio.renderer.scene_schema import AdamSpec

    spec = AdamSpec.model_validate({"type": "adam", "eps": 1e-15})
    assert AdamSpec.model_validate({"type": "adam"}).eps == 1e-8
    with pytest.raises(ValueError, match="eps"):
        AdamSpec.model_validate({"type": "adam", "eps": 0.0})
    prob = Problem()
    prob.run(Adam([prob.a, prob.b], lr=[0.1, 0.05], eps=spec.eps), 5)
    assert_close(prob.values(), numpy_adam(5, [0.1, 0.05], eps=1e-15))


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_cosine_min_lr_above_lr_is_refused(kind):
    """A cosine schedule whose min_lr exceeds the optimizer's lr would make the rates rise (factor min_lr / lr; a
    hash-grid run with lr 0.01 and min_lr 0.1 diverged that way): refused naming optimizer.schedule."""
    from drstudio.renderer.scene_schema import AdamSpec, SgdSpec

    spec = AdamSpec if kind == "adam" else SgdSpec
    assert spec.model_validate({"type": kind, "lr": 0.1, "schedule": {"type": "cosine", "min_lr": 0.1}})
    with pytest.raises(ValueError, match="schedule") as e:
        spec.model_validate({"type": kind, "lr": 0.01, "schedule": {"type": "cosine", "min_lr": 0.1}})
    assert "must not exceed the optimizer's lr 0.01" in str(e.value)
    assert make_schedule(CosineSchedule(type="cosine", min_lr=0.01), 11, base_lr=0.1)(10) == pytest.approx(0.1)


def test_lazy_adam_equals_adam_when_every_gradient_is_nonzero(device):
    dense, lazy = Problem(), Problem()
    dense.run(Adam([dense.a, dense.b], lr=[0.1, 0.05]), 5)
    lazy.run(Adam([lazy.a, lazy.b], lr=[0.1, 0.05], lazy=True), 5)
    for d, z in zip(dense.values(), lazy.values(), strict=True):
        np.testing.assert_array_equal(d, z)  # the same kernel path: bit for bit


def test_lazy_adam_matches_numpy_sparse_adam(device):
    """A different random subset of elements has a gradient each step (as the lattice points a ray batch
    touches): those take Adam's update with the global step count in the bias correction, the others keep
    value and both moments (torch.optim.SparseAdam's rule), against a float64 NumPy reference."""
    rng = np.random.default_rng(3)
    n, steps, lr, betas, eps = 64, 6, 0.1, (0.9, 0.999), 1e-8
    p0 = rng.uniform(-1, 1, n)
    grads = rng.normal(size=(steps, n)) * (rng.uniform(size=(steps, n)) < 0.4)
    grads[:, 0] = 0.0  # never touched
    grads[0, 1], grads[1:, 1] = 0.7, 0.0  # touched once, then left alone
    param = wp.array(p0.astype(np.float32), dtype=float, requires_grad=True)
    opt = Adam([param], lr=lr, betas=betas, eps=eps, lazy=True)
    p, m, v = p0.copy(), np.zeros(n), np.zeros(n)
    for t in range(1, steps + 1):
        param.grad.assign(grads[t - 1].astype(np.float32))
        assert opt.step()
        g = grads[t - 1]
        hit = g != 0
        m[hit] = betas[0] * m[hit] + (1 - betas[0]) * g[hit]
        v[hit] = betas[1] * v[hit] + (1 - betas[1]) * g[hit] ** 2
        p[hit] -= lr * (m[hit] / (1 - betas[0] ** t)) / (np.sqrt(v[hit] / (1 - betas[1] ** t)) + eps)
    np.testing.assert_allclose(param.numpy(), p, rtol=1e-5, atol=1e-5)
    state = opt.state_dict()
    np.testing.assert_allclose(state["exp_avg"][0], m, rtol=1e-5, atol=1e-7)
    # 1 - beta2 = 0.001 is 0.00100005 in float32 (5e-5 relative); it cancels in p through the bias correction
    np.testing.assert_allclose(state["exp_avg_sq"][0], v, rtol=1e-4, atol=1e-9)
    assert param.numpy()[0] == np.float32(p0[0]) and state["exp_avg"][0][0] == 0.0  # untouched: unchanged
    first = np.float32(1 - np.float32(0.9)) * np.float32(0.7)  # its moment after step 1, in float32 ...
    assert state["exp_avg"][0][1] == first  # ... kept, not decayed, through the steps without a gradient
    assert state["steps"] == steps


def test_lazy_adam_per_parameter_and_validation(device):
    a = wp.array(np.ones(3, np.float32), dtype=float, requires_grad=True)
    b = wp.array(np.ones(3, np.float32), dtype=float, requires_grad=True)
    opt = Adam([a, b], lr=0.1, lazy=[True, False])
    a.grad.assign(np.array([1, 0, 0], np.float32))
    b.grad.assign(np.array([1, 0, 0], np.float32))
    opt.step()
    np.testing.assert_allclose(a.numpy(), [0.9, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [0.9, 1, 1], rtol=1e-6)  # dense: a zero gradient, zero moments
    a.grad.zero_()
    b.grad.zero_()
    opt.step()  # momentum carries the dense parameter's first element on; the lazy one stays put
    assert a.numpy()[0] == np.float32(0.9) and b.numpy()[0] < np.float32(0.9) - 0.05
    with pytest.raises(ValueError, match="lazy"):
        Adam([a, b], lazy=[True])


def test_adam_on_active_points_equals_the_dense_lazy_update(device):
    """step(active={i: (points, C)}): the guard and the update read only the C values of each active point (a
    voxel grid's touched lattice points); with every other gradient 0 that is the dense lazy update bit for bit,
    and a NaN among the active values still skips the whole step. `zero_at` zeroes just those values."""
    rng = np.random.default_rng(5)
    n, c = 50, 3
    p0 = rng.uniform(-1, 1, (n, c)).astype(np.float32)
    params = [wp.array(p0, dtype=float, requires_grad=True) for _ in range(2)]
    dense, sparse = (Adam([p], lr=0.1, lazy=True) for p in params)
    for _ in range(4):
        points = np.sort(rng.choice(n, 12, replace=False)).astype(np.int32)
        g = np.zeros((n, c), np.float32)
        g[points] = rng.normal(size=(12, c))
        g[points[0], 1] = 0.0  # an active value without gradient keeps its value and moments too
        for p in params:
            p.grad.assign(g)
        assert dense.step()
        assert sparse.step(active={0: (wp.array(points, dtype=wp.int32), c)})
        np.testing.assert_array_equal(params[1].numpy(), params[0].numpy())
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(sparse.state_dict()[key][0], dense.state_dict()[key][0])
    g[points[3], 2] = np.nan
    params[1].grad.assign(g)
    before = params[1].numpy().copy()
    assert sparse.step(active={0: (wp.array(points, dtype=wp.int32), c)}) is False
    np.testing.assert_array_equal(params[1].numpy(), before)
    zero_at(params[1].grad, wp.array(points[:5], dtype=wp.int32), c)
    left = params[1].grad.numpy()
    assert not left[points[:5]].any() and np.array_equal(left[points[5:]], g[points[5:]], equal_nan=True)
    with pytest.raises(ValueError, match="not a lazy Adam parameter"):
        Adam([params[0]], lr=0.1).step(active={0: (wp.array(points, dtype=wp.int32), c)})
    # `norm_at`: the norm of a gradient that is 0 off the active points, reading those points only
    g = np.zeros((n, c), np.float32)
    g[points] = rng.normal(size=(12, c))
    params[0].grad.assign(g)
    assert norm_at(params[0].grad, wp.array(points, dtype=wp.int32), c) == pytest.approx(np.linalg.norm(g), rel=1e-6)
    assert norm_at(params[0].grad, wp.array(points[:4], dtype=wp.int32), c) == \
        pytest.approx(np.linalg.norm(g[points[:4]]), rel=1e-6)
    assert norm_at(params[0].grad, wp.zeros(0, dtype=wp.int32), c) == 0.0
    with pytest.raises(ValueError, match="dividing its 150 values"):
        sparse.step(active={0: (wp.array(points, dtype=wp.int32), 4)})


def test_sgd_momentum_matches_numpy(device):
    prob = Problem()
    opt = SGD([prob.a, prob.b], lr=[0.2, 0.05], momentum=0.9)
    prob.run(opt, 5)
    assert_close(prob.values(), numpy_sgd(5, [0.2, 0.05], 0.9))


def test_set_lr_at_run_time(device):
    # Adam's step is ~lr * sign(g) early on, so a changed lr shows directly in the update.
    prob = Problem()
    opt = Adam({"a": prob.a, "b": prob.b}, lr=0.1)
    prob.run(opt, 1)
    before = prob.values()
    opt.set_lr("b", 0.0)
    opt.set_lr(0, 0.01)
    assert opt.get_lr("a") == pytest.approx(0.01)
    prob.run(opt, 1)
    after = prob.values()
    np.testing.assert_array_equal(after[1], before[1])
    assert 0 < np.abs(after[0] - before[0]).max() <= 0.01 * 1.001
    with pytest.raises(ValueError, match="key"):
        opt.set_lr("c", 0.1)


def test_schedule_scales_the_learning_rate(device):
    decay = exponential_decay(0.5)
    prob = Problem()
    opt = SGD([prob.a, prob.b], lr=0.2, momentum=0.5, schedule=decay)
    assert opt.get_lr(0) == pytest.approx(0.2)
    prob.run(opt, 4)
    assert opt.get_lr(1) == pytest.approx(0.2 * 0.5**4)
    assert_close(prob.values(), numpy_sgd(4, [0.2, 0.2], 0.5, factor=decay))
    # and it matters: without the schedule the result differs well beyond the tolerance
    assert np.abs(prob.values()[0] - numpy_sgd(4, [0.2, 0.2], 0.5)[0]).max() > 1e-3


def test_schedule_factories(device):
    assert exponential_decay(0.9)(3) == pytest.approx(0.729)
    cos = cosine_decay(10, final_factor=0.1)
    assert cos(0) == pytest.approx(1.0)
    assert cos(5) == pytest.approx(0.55)
    assert cos(10) == pytest.approx(0.1) and cos(20) == pytest.approx(0.1)
    assert cos(3) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.3)))


def test_make_schedule_from_scene_spec(device):
    assert make_schedule(None, 100) is None
    assert make_schedule(ExponentialSchedule(type="exponential", gamma=0.9), 100)(2) == pytest.approx(0.81)
    cos = make_schedule(CosineSchedule(type="cosine", min_lr=0.002), 11, base_lr=0.02)
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.1)  # min_lr at the last step, 10
    assert make_schedule(CosineSchedule(type="cosine"), 11)(10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="base_lr"):
        make_schedule(CosineSchedule(type="cosine", min_lr=0.002), 11)


# CPU only: plants the NaN through numpy(), which is a view of the gradient only in CPU memory
@pytest.mark.parametrize("device", ["cpu"])
def test_nan_guard_skips_the_whole_step(device):
    prob = Problem()
    opt = Adam([prob.a, prob.b], lr=0.1)
    prob.run(opt, 2)
    params, state = prob.values(), opt.state_dict()

    loss = prob.backward()
    prob.b.grad.numpy()[3, 1] = np.nan  # CPU: numpy() is a view of the gradient
    assert opt.step(loss) is False
    prob.tape.zero()
    loss = prob.backward()
    loss.assign(np.array([np.inf], np.float32))  # finite gradients, non-finite loss
    assert opt.step(loss) is False
    prob.tape.zero()
    prob.backward()
    assert opt.step(loss_value=float("nan")) is False  # a loss already read back to the host
    prob.tape.zero()

    for got, want in zip(prob.values(), params, strict=True):
        np.testing.assert_array_equal(got, want)
    after = opt.state_dict()
    assert after["steps"] == state["steps"] == 2 and after["iteration"] == 5
    for key in ("exp_avg", "exp_avg_sq"):
        for got, want in zip(after[key], state[key], strict=True):
            np.testing.assert_array_equal(got, want)
    # the next good step continues as if the bad ones never happened (bias correction uses t = 3)
    assert prob.run(opt, 1) == [True]
    assert_close(prob.values(), numpy_adam(3, [0.1, 0.1]))


def test_step_without_sync_still_applies(device):
    prob = Problem()
    opt = SGD([prob.a, prob.b], lr=0.1)
    prob.backward()
    assert opt.step(sync=False) is None
    assert_close(prob.values(), numpy_sgd(1, [0.1, 0.1], 0.0))


@pytest.mark.parametrize("cls", [Adam, SGD])
def test_state_dict_round_trip_reproduces_bit_for_bit(cls, device):
    kwargs = {"momentum": 0.9} if cls is SGD else {}
    prob = Problem()
    opt = cls([prob.a, prob.b], lr=0.05, **kwargs)
    prob.run(opt, 3)
    state, params = opt.state_dict(), prob.values()
    prob.run(opt, 2)
    expected = prob.values()

    fresh = Problem()  # new arrays, new optimizer, restored state
    fresh.a.assign(params[0])
    fresh.b.assign(params[1])
    opt2 = cls([fresh.a, fresh.b], lr=1.0, **kwargs)
    opt2.load_state_dict(state)
    assert opt2.lrs == [0.05, 0.05]
    fresh.run(opt2, 2)
    for got, want in zip(fresh.values(), expected, strict=True):
        np.testing.assert_array_equal(got, want)

    bad = dict(state)
    bad[cls._buffer_names[0]] = [np.zeros(3, np.float32), np.zeros(15, np.float32)]
    with pytest.raises(ValueError, match=cls._buffer_names[0]):
        opt2.load_state_dict(bad)


def test_reset_restarts_from_zero_moments(device):
    prob = Problem()
    opt = Adam([prob.a, prob.b], lr=0.1)
    prob.run(opt, 3)
    opt.reset()
    state = opt.state_dict()
    assert state["steps"] == 0 and state["iteration"] == 0
    assert all(not x.any() for x in state["exp_avg"] + state["exp_avg_sq"])


def test_optimizer_validation(device):
    with pytest.raises(ValueError, match="requires_grad"):
        Adam([wp.zeros(3, dtype=float)])
    with pytest.raises(TypeError, match="dtype"):
        SGD([wp.zeros(3, dtype=wp.int32, requires_grad=True)])
    with pytest.raises(ValueError, match="contiguous"):
        Adam([wp.zeros((4, 4), dtype=float, requires_grad=True)[:, 1]])
    with pytest.raises(ValueError, match="lr"):
        SGD([wp.zeros(3, dtype=float, requires_grad=True)], lr=[0.1, 0.2])


# ---- constraints ----

def farr(a):
    return wp.array(np.asarray(a, np.float32), dtype=float)


@pytest.mark.parametrize("kind, lo, hi", [("unit_interval", 0.0, 1.0), ("roughness", 0.02, 1.0),
                                          ("nonnegative", 0.0, np.inf), ("positive", 1e-3, np.inf)])
def test_clamping_projections(kind, lo, hi, device):
    x = np.random.default_rng(1).uniform(-2, 2, (6, 3)).astype(np.float32)
    arr = wp.array(x, dtype=wp.vec3)  # a vec3 array is projected through its flat float view
    project(arr, kind)
    np.testing.assert_array_equal(arr.numpy(), np.clip(x, np.float32(lo), hi))


def test_projection_range_and_quaternions(device):
    intrinsics = farr([-5.0, 0.0, -1.0, -2.0])
    project(intrinsics, "positive", 0, 2)  # fx, fy only; the principal point may be anywhere
    np.testing.assert_array_equal(intrinsics.numpy(), np.float32([1e-3, 1e-3, -1.0, -2.0]))

    pose = np.float32([1, 2, 3, 0.5, -1.0, 2.0, 0.5])
    arr = farr(pose)
    project(arr, "pose")
    np.testing.assert_allclose(arr.numpy()[3:], pose[3:] / np.linalg.norm(pose[3:]), rtol=1e-6)
    np.testing.assert_array_equal(arr.numpy()[:3], pose[:3])

    quats = farr([[0, 0, 0, 0], [3, 0, 4, 0]])
    project(quats, "unit_quaternion")
    np.testing.assert_allclose(quats.numpy(), [[0, 0, 0, 1], [0.6, 0, 0.8, 0]], rtol=1e-6)

    with pytest.raises(ValueError, match="count"):
        project(farr(np.ones(7)), "unit_quaternion", 1, 6)
    with pytest.raises(ValueError, match="offset"):
        project(farr(np.ones(4)), "nonnegative", 2, 3)
    with pytest.raises(ValueError, match="kind"):
        project(farr(np.ones(4)), "unit_sphere")


def test_constraints_cover_every_scene_param_kind(device):
    f32 = np.float32
    one, tex = np.ones(3, f32), np.ones((1, 1, 1), f32)
    mesh = Mesh("m", np.zeros((3, 3), f32), np.array([[0, 1, 2]], np.int32), np.zeros((3, 2), f32),
                np.ones((3, 3), f32), np.zeros(3, f32), f32([0, 0, 0, 1]), one, "mat")
    scene = Scene("", meshes={"m": mesh},
                  materials={"mat": Material("mat", "ggx", np.ones((1, 1, 3), f32), tex, 0 * tex)},
                  point_lights={"p": PointLight("p", one, one, f32([1]))},
                  directional_lights={"d": DirectionalLight("d", one, one, f32([1]))},
                  ambient_lights={"a": AmbientLight("a", one)},
                  cameras={"c": Camera("c", 4, 4, f32([4, 4, 2, 2]), f32([0, 0, 0, 0, 0, 0, 1]))})
    kinds = {p.kind for p in scene.params().values()}
    assert kinds <= set(CONSTRAINTS_BY_KIND), kinds - set(CONSTRAINTS_BY_KIND)
    for p in scene.params().values():  # every entry applies to its parameter's shape
        project(wp.array(p.value, dtype=float), p.kind)


def test_project_by_scene_param_kind(device):
    albedo = np.random.default_rng(2).uniform(-0.5, 1.5, (2, 2, 3)).astype(np.float32)
    arr = wp.array(albedo, dtype=float)
    project(arr, "albedo")
    np.testing.assert_array_equal(arr.numpy(), np.clip(albedo, 0, 1))
    rough = farr([0.0, 0.5, 2.0])
    project(rough, "roughness")
    np.testing.assert_array_equal(rough.numpy(), np.float32([0.02, 0.5, 1.0]))
    intrinsics = farr([-1.0, 2.0, -3.0, 4.0])
    project(intrinsics, "intrinsics")
    np.testing.assert_array_equal(intrinsics.numpy(), np.float32([1e-3, 2.0, -3.0, 4.0]))
    colors = wp.array(np.float32([[-1, 2, 0.5]]), dtype=wp.vec3)
    project(colors, "colors")
    np.testing.assert_array_equal(colors.numpy(), np.float32([[0, 2, 0.5]]))
    with pytest.raises(ValueError, match="kind"):
        project(rough, "texture")
    with pytest.raises(ValueError, match="offset"):
        project(rough, "albedo", 1)


def test_updates_stay_within_the_render_bounds(device):
    """Issue 14: an update with a huge learning rate cannot carry a value past its kind's render bound
    (params.Kind.range, what the loader and the commands check): positions and intensities are clamped."""
    from drstudio.renderer.params import COORD_MAX, INTENSITY_MAX

    position = farr([3e38, -5e20, 1.0])
    project(position, "position")
    np.testing.assert_array_equal(position.numpy(), np.float32([COORD_MAX, -COORD_MAX, 1.0]))
    intensity = farr([2e30])
    project(intensity, "intensity")
    assert intensity.numpy()[0] == np.float32(INTENSITY_MAX)
    pose = farr([1e9, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0])
    project(pose, "pose")
    np.testing.assert_allclose(pose.numpy(), [COORD_MAX, 0, 0, 0, 0, 0, 1])
    moved = wp.array(np.float32([0.0, 0.0, 1.0]), dtype=float, requires_grad=True)
    opt = Adam([moved], lr=1e30)
    moved.grad = farr([-1.0, 1.0, -1.0])
    opt.step()
    assert np.abs(moved.numpy()).max() > 1e29  # what the update alone would leave
    project(moved, "position")
    position = moved
    assert np.isfinite(position.numpy()).all() and np.abs(position.numpy()).max() <= COORD_MAX


def test_merged_clamp_equals_the_projection_then_the_render_bounds(device):
    """A kind whose projection is one clamp of the whole array (albedo, roughness, colors, ...) is projected by one
    launch clamping to the intersection of its bounds and its render bounds: bit for bit the two clamps in turn,
    for values inside, outside, at the bounds, huge and infinite."""
    from drstudio.renderer.optim import optimizers

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-3, 3, 40), rng.uniform(-1e12, 1e12, 20),
                        [0.0, -0.0, 1.0, 0.02, 1e-3, 1e6, 1e9, 3e38, -3e38, np.inf, -np.inf]]).astype(np.float32)
    merged = [k for k in CONSTRAINTS_BY_KIND if optimizers._merged_clamp(k) is not None]
    assert {"albedo", "roughness", "metallic", "colors", "emission", "intensity", "scale"} <= set(merged)
    for kind in merged:
        got = farr(x)
        project(got, kind)
        want = farr(x)
        for sub_kind, sub_offset, sub_count in CONSTRAINTS_BY_KIND[kind]:
            project(want, sub_kind, sub_offset, sub_count)
        optimizers._clamp_to_render_bounds(want, kind)
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=kind)
