"""First-order optimizers and parameter constraints, all on the device of the parameters.

An optimizer holds a list of Warp arrays (any float32-based dtype and shape: float, vec3, array2d/3d;
contiguous, requires_grad=True) and updates them from their `.grad` in place. It works on flat float32
views of each array, so one kernel per update rule serves every dtype. `step()` launches:
1. a guard that sets a device flag if any gradient (or the loss, when given) is non-finite;
2. the update, which every thread skips when the flag is set, so a bad step leaves parameters and
   moments untouched. Updates are elementwise without atomics: runs reproduce bit-for-bit.
Learning rates are per parameter (`set_lr`), times an optional `schedule(iteration) -> factor`.

Constraints are projections applied after a step: `project(array, kind, offset, count)`, or
`project(array, param_kind)` with a scene parameter kind of `Scene.params()` (CONSTRAINTS_BY_KIND).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import warp as wp

from ..parallel import part_ranges, run_parts

# Never differentiated: skip generating adjoints (faster compiles).
wp.set_module_options({"enable_backward": False})


@wp.kernel
def _flag_nonfinite(x: wp.array(dtype=float), bad: wp.array(dtype=wp.int32)):
    i = wp.tid()
    if not wp.isfinite(x[i]):
        bad[0] = 1  # every writer stores the same value: no atomic needed


@wp.kernel
def _count_step(bad: wp.array(dtype=wp.int32), steps: wp.array(dtype=wp.int32)):
    if bad[0] == 0:
        steps[0] = steps[0] + 1


@wp.kernel
def _adam_corrections(steps: wp.array(dtype=wp.int32), beta1: float, beta2: float,
                      corrections: wp.array(dtype=float)):
    # Bias corrections 1 - beta^t of this step, once per step instead of per element (t: applied steps).
    t = float(steps[0])
    corrections[0] = 1.0 - wp.pow(beta1, t)
    corrections[1] = 1.0 - wp.pow(beta2, t)


@wp.func
def _adam_element(p: wp.array(dtype=float), g: wp.array(dtype=float), m: wp.array(dtype=float),
                  v: wp.array(dtype=float), i: int, lr: float, beta1: float, beta2: float, eps: float,
                  corrections: wp.array(dtype=float)):
    # Adam's update of element i with the step's bias corrections (1 - beta1^t, 1 - beta2^t)
    gi = g[i]
    mi = beta1 * m[i] + (1.0 - beta1) * gi
    vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
    m[i] = mi
    v[i] = vi
    m_hat = mi / corrections[0]
    v_hat = vi / corrections[1]
    p[i] = p[i] - lr * m_hat / (wp.sqrt(v_hat) + eps)


@wp.kernel
def _adam_update(p: wp.array(dtype=float), g: wp.array(dtype=float), m: wp.array(dtype=float),
                 v: wp.array(dtype=float), lr: float, beta1: float, beta2: float, eps: float,
                 corrections: wp.array(dtype=float), lazy: int, bad: wp.array(dtype=wp.int32)):
    # Kingma & Ba with bias correction (PyTorch's Adam): t counts applied steps only. `lazy`: an element
    # whose gradient is exactly 0 keeps its value and moments (torch.optim.SparseAdam, TF's LazyAdam).
    i = wp.tid()
    if bad[0] != 0:
        return
    if lazy != 0 and g[i] == 0.0:
        return
    _adam_element(p, g, m, v, i, lr, beta1, beta2, eps, corrections)


@wp.func
def _element(points: wp.array(dtype=wp.int32), channels: int, t: int) -> int:
    # flat element t of the active set: channel t % C of lattice point points[t / C] ((points, C) rows)
    return points[t / channels] * channels + t % channels


@wp.kernel
def _flag_nonfinite_at(x: wp.array(dtype=float), points: wp.array(dtype=wp.int32), channels: int,
                       bad: wp.array(dtype=wp.int32)):
    if not wp.isfinite(x[_element(points, channels, wp.tid())]):
        bad[0] = 1


@wp.kernel
def _zero_at(x: wp.array(dtype=float), points: wp.array(dtype=wp.int32), channels: int):
    x[_element(points, channels, wp.tid())] = 0.0


@wp.kernel
def _adam_update_at(p: wp.array(dtype=float), g: wp.array(dtype=float), m: wp.array(dtype=float),
                    v: wp.array(dtype=float), points: wp.array(dtype=wp.int32), channels: int, lr: float,
                    beta1: float, beta2: float, eps: float, corrections: wp.array(dtype=float),
                    bad: wp.array(dtype=wp.int32)):
    # _adam_update's lazy rule on the active elements only (every other gradient is 0: they are skipped there too)
    if bad[0] != 0:
        return
    i = _element(points, channels, wp.tid())
    if g[i] == 0.0:
        return
    _adam_element(p, g, m, v, i, lr, beta1, beta2, eps, corrections)


@wp.kernel
def _sum_squares_at(x: wp.array(dtype=float), points: wp.array(dtype=wp.int32), channels: int,
                    out: wp.array(dtype=wp.float64)):
    v = wp.float64(x[_element(points, channels, wp.tid())])
    wp.atomic_add(out, 0, v * v)


def norm_at(arr: wp.array, points: wp.array, channels: int, workers: int = 1) -> float:
    """The L2 norm of the elements (points[k] * channels + c) of `arr` viewed flat (a gradient that is 0
    elsewhere: the sparse counterpart of the whole array's norm), summed in float64 on the device (per thread
    with `workers`, then added)."""
    parts = _parts(arr.device, workers, points.shape[0] * channels)
    outs = [wp.zeros(1, dtype=wp.float64, device=arr.device) for _ in range(parts)]
    ranges = part_ranges(points.shape[0], parts)

    def part(j: int) -> None:
        a, b = ranges[j]
        if b > a:
            wp.launch(_sum_squares_at, dim=(b - a) * channels, inputs=[_flat(arr), points[a:b], int(channels), outs[j]],
                      device=arr.device, record_tape=False)

    run_parts(part, parts)
    return float(np.sqrt(sum(float(o.numpy()[0]) for o in outs)))


def zero_at(arr: wp.array, points: wp.array, channels: int, workers: int = 1) -> None:
    """Zero the elements (points[k] * channels + c) of `arr` viewed flat (a gradient whose other entries are
    already 0: the sparse counterpart of `arr.zero_()`), on up to `workers` CPU threads."""
    if points.shape[0]:
        _launch_at(_zero_at, [_flat(arr), points, int(channels)], 1, int(channels), arr.device, workers)


@wp.kernel
def _sgd_update(p: wp.array(dtype=float), g: wp.array(dtype=float), velocity: wp.array(dtype=float),
                lr: float, momentum: float, bad: wp.array(dtype=wp.int32)):
    # Heavy ball as in PyTorch's SGD (dampening 0): v = mu v + g, p -= lr v.
    i = wp.tid()
    if bad[0] != 0:
        return
    vi = momentum * velocity[i] + g[i]
    velocity[i] = vi
    p[i] = p[i] - lr * vi


@wp.kernel
def _clamp(x: wp.array(dtype=float), offset: int, lo: float, hi: float):
    i = offset + wp.tid()
    x[i] = wp.clamp(x[i], lo, hi)


@wp.kernel
def _normalize_quaternions(x: wp.array(dtype=float), offset: int):
    # A (near-)zero quaternion has no direction to keep: reset it to the identity (0, 0, 0, 1).
    j = offset + 4 * wp.tid()
    q = wp.vec4(x[j], x[j + 1], x[j + 2], x[j + 3])
    n = wp.length(q)
    if n > 1.0e-12:
        q = q / n
    else:
        q = wp.vec4(0.0, 0.0, 0.0, 1.0)
    for k in range(4):
        x[j + k] = q[k]


def _is_float32_based(dtype) -> bool:
    return getattr(dtype, "_wp_scalar_type_", dtype) is wp.float32


def _flat(arr: wp.array) -> wp.array:
    """A 1D float32 view sharing `arr`'s memory (vec3 (V,) -> (3V,), (h, w, C) -> (h*w*C,))."""
    return (arr if arr.dtype is wp.float32 else arr.view(wp.float32)).flatten()


#: The lazy updates at touched points (`step(active=...)`) and the whole-array Adam update split over
#: `_Optimizer.workers` CPU threads only with at least this many values a thread.
MIN_VALUES_PER_THREAD = 1 << 16


def _parts(device, workers: int, values: int) -> int:
    """Threads for elementwise work on `values` values: `workers` on the CPU, fewer for small work."""
    if not device.is_cpu or workers <= 1:
        return 1
    return max(1, min(int(workers), values // MIN_VALUES_PER_THREAD))


def _launch_at(kernel, inputs: list, at: int, channels: int, device, workers: int = 1) -> None:
    """Launch an elementwise kernel over the (points, channels) elements (`_element`) of inputs[at] = points,
    split into consecutive ranges of the points over threads (elements are independent: same result)."""
    points = inputs[at]
    k = points.shape[0]
    parts = _parts(device, workers, k * channels)
    ranges = part_ranges(k, parts)

    def part(j: int) -> None:
        a, b = ranges[j]
        if b > a:
            args = list(inputs)
            args[at] = points[a:b]
            wp.launch(kernel, dim=(b - a) * channels, inputs=args, device=device, record_tape=False)

    run_parts(part, parts)


def _launch_flat(kernel, inputs: list, flat: tuple[int, ...], device, workers: int = 1) -> None:
    """Launch an elementwise kernel over 1D arrays inputs[i] (i in `flat`, all of one length; element i =
    thread i), split into consecutive ranges over threads."""
    n = inputs[flat[0]].shape[0]
    parts = _parts(device, workers, n)
    ranges = part_ranges(n, parts)

    def part(j: int) -> None:
        a, b = ranges[j]
        if b > a:
            args = [x[a:b] if i in flat else x for i, x in enumerate(inputs)]
            wp.launch(kernel, dim=b - a, inputs=args, device=device, record_tape=False)

    run_parts(part, parts)


def _check_param(name: str, arr) -> None:
    if not isinstance(arr, wp.array):
        raise TypeError(f"{name}: expected a wp.array, got {type(arr).__name__}")
    if not _is_float32_based(arr.dtype):
        raise TypeError(f"{name}: expected a float32-based dtype (float32, vec3, ...), "
                        f"got {wp.types.type_repr(arr.dtype)}")
    if not arr.is_contiguous:
        raise ValueError(f"{name}: expected a contiguous array, got strides {arr.strides}")


class _Optimizer:
    """Shared machinery: parameters, learning rates, schedule, NaN guard, state."""

    _buffer_names: tuple[str, ...] = ()

    def __init__(self, params: Sequence[wp.array] | Mapping[str, wp.array], lr: float | Sequence[float],
                 schedule: Callable[[int], float] | None, device=None):
        if isinstance(params, Mapping):
            self.names, self.params = list(params.keys()), list(params.values())
        else:
            self.params = list(params)
            self.names = [str(i) for i in range(len(self.params))]
        if not self.params and device is None:
            raise ValueError("params: expected at least one wp.array (or, for an optimizer of none, a device)")
        # an optimizer of no parameters (nothing free yet, e.g. a scene opened to edit) steps nothing
        self.device = self.params[0].device if self.params else wp.get_device(device)
        for name, p in zip(self.names, self.params, strict=True):
            _check_param(f"params[{name!r}]", p)
            if not p.requires_grad:
                raise ValueError(f"params[{name!r}]: expected requires_grad=True (step() reads .grad)")
            if p.device != self.device:
                raise ValueError(f"params[{name!r}]: is on {p.device}, expected {self.device} like params[0]")
        lrs = [lr] * len(self.params) if np.isscalar(lr) else list(lr)
        if len(lrs) != len(self.params):
            raise ValueError(f"lr: expected a float or {len(self.params)} floats, got {len(lrs)}")
        self.lrs = [float(x) for x in lrs]
        self.schedule = schedule
        self.iteration = 0  # calls to step(), applied or skipped: the schedule's clock
        self._flat = [_flat(p) for p in self.params]
        self._buffers = {b: [wp.zeros(f.shape[0], dtype=float, device=self.device) for f in self._flat]
                         for b in self._buffer_names}
        self._steps = wp.zeros(1, dtype=wp.int32, device=self.device)  # applied steps, on the device
        self._bad = wp.zeros(1, dtype=wp.int32, device=self.device)
        # CPU threads of the NaN guard and of Adam's update (elementwise: the same result on any number)
        self.workers = 1

    def _index(self, key: int | str) -> int:
        if isinstance(key, str):
            if key not in self.names:
                raise ValueError(f"key: unknown parameter name {key!r}; known: {self.names}")
            return self.names.index(key)
        if not 0 <= key < len(self.params):
            raise ValueError(f"key: expected an index in [0, {len(self.params)}), got {key}")
        return key

    def set_lr(self, key: int | str, lr: float) -> None:
        """Set the base learning rate of parameter `key` (index or name); takes effect at the next step."""
        if not lr >= 0.0:
            raise ValueError(f"lr: expected a learning rate >= 0, got {lr}")
        self.lrs[self._index(key)] = float(lr)

    def get_lr(self, key: int | str) -> float:
        """The effective learning rate of parameter `key` at the next step (base lr * schedule factor)."""
        return self.lrs[self._index(key)] * (self.schedule(self.iteration) if self.schedule else 1.0)

    def step(self, loss: wp.array | None = None, *, loss_value: float | None = None,
             sync: bool = True, active: Mapping[int, tuple[wp.array, int]] | None = None) -> bool | None:
        """Update every parameter from its `.grad` (left as is; zero it before the next backward).

        If any gradient entry, `loss` ((1,) float32 on the device, optional) or `loss_value` (the loss
        already read back to the host, optional) is NaN or inf, nothing changes:
        parameters, moments and the applied-step count keep their values (the iteration count, the
        schedule's clock, still advances). Returns whether the update was applied, which reads one int
        back from the device; with sync=False returns None and never waits for the device.

        active: {parameter index: (points, C)} for lazy Adam parameters whose gradient is 0 outside the flat
        elements points[k] * C + c (points int32 (K,), c < C; e.g. the lattice points a voxel grid's queries
        touched, C its values per point): the guard and the update read those elements only, so they cost per
        touched point, with exactly the dense lazy update's result."""
        self._bad.fill_(0 if loss_value is None or math.isfinite(loss_value) else 1)
        if loss is not None:
            if not isinstance(loss, wp.array) or loss.dtype is not wp.float32:
                raise TypeError("loss: expected a float32 wp.array of shape (1,)")
            if loss.shape != (1,):
                raise ValueError(f"loss: expected shape (1,), got {loss.shape}")
            wp.launch(_flag_nonfinite, dim=1, inputs=[loss, self._bad], device=self.device, record_tape=False)
        active = dict(active or {})
        for i, (points, channels) in active.items():
            if not self.accepts_active(i):
                raise ValueError(f"active: params[{self.names[i]!r}] is not a lazy Adam parameter")
            if points.dtype is not wp.int32 or points.ndim != 1 or not int(channels) >= 1 or \
                    self._flat[i].shape[0] % int(channels):
                raise ValueError(f"active: params[{self.names[i]!r}]: expected (int32 points (K,), C) with C "
                                 f"dividing its {self._flat[i].shape[0]} values")
        grads = []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            if p.grad is None:
                raise ValueError(f"params[{name!r}]: has no .grad array")
            grads.append(_flat(p.grad))
            if i in active:
                points, channels = active[i]
                if points.shape[0]:  # threads may flag at once: they all write 1
                    _launch_at(_flag_nonfinite_at, [grads[-1], points, int(channels), self._bad], 1, int(channels),
                               self.device, self.workers)
                continue
            _launch_flat(_flag_nonfinite, [grads[-1], self._bad], (0,), self.device, self.workers)
        wp.launch(_count_step, dim=1, inputs=[self._bad, self._steps], device=self.device, record_tape=False)
        self._before_updates()
        factor = self.schedule(self.iteration) if self.schedule else 1.0
        for i, g in enumerate(grads):
            if i in active:
                self._update_at(i, g, self.lrs[i] * factor, *active[i])
            else:
                self._update(i, g, self.lrs[i] * factor)
        self.iteration += 1
        return bool(self._bad.numpy()[0] == 0) if sync else None

    def _before_updates(self) -> None:
        """Per-step work shared by every parameter's update (after the applied-step count is advanced)."""

    def _update(self, i: int, grad: wp.array, lr: float) -> None:
        raise NotImplementedError

    def accepts_active(self, i: int) -> bool:
        """Whether parameter i may be updated on an active set only (`step(active=...)`)."""
        return False

    def _update_at(self, i: int, grad: wp.array, lr: float, points: wp.array, channels: int) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Zero the moments and both counters; keeps parameters and learning rates."""
        for bufs in self._buffers.values():
            for b in bufs:
                b.zero_()
        self._steps.zero_()
        self.iteration = 0

    def state_dict(self) -> dict:
        """The optimizer state as host values: counters, learning rates, and per buffer a list of flat
        float32 NumPy arrays (one per parameter). Parameters themselves are not included."""
        return {"iteration": self.iteration, "steps": int(self._steps.numpy()[0]), "lr": list(self.lrs),
                **{b: [x.numpy().copy() for x in bufs] for b, bufs in self._buffers.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a `state_dict()` of an optimizer of the same class over parameters of the same sizes."""
        missing = {"iteration", "steps", "lr", *self._buffer_names} - set(state)
        if missing:
            raise ValueError(f"state: missing keys {sorted(missing)}")
        if len(state["lr"]) != len(self.params):
            raise ValueError(f"state['lr']: expected {len(self.params)} learning rates, "
                             f"got {len(state['lr'])}")
        for b in self._buffer_names:
            values = state[b]
            if len(values) != len(self.params) or any(
                    np.shape(v) != (f.shape[0],) for v, f in zip(values, self._flat, strict=True)):
                raise ValueError(f"state[{b!r}]: expected {len(self.params)} flat arrays of sizes "
                                 f"{[f.shape[0] for f in self._flat]}, got {[np.shape(v) for v in values]}")
        for b in self._buffer_names:
            for dst, v in zip(self._buffers[b], state[b], strict=True):
                wp.copy(dst, wp.array(np.asarray(v, np.float32), dtype=float, device=self.device))
        self._steps.assign(np.array([state["steps"]], np.int32))
        self.lrs = [float(x) for x in state["lr"]]
        self.iteration = int(state["iteration"])


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, as torch.optim.Adam without weight decay.

    params: list of arrays, or a dict name -> array (names for `set_lr`); lr: one float or one per
    parameter; schedule: step -> factor multiplying every lr (see `exponential_decay`, `cosine_decay`).

    lazy: one bool, or one per parameter. A lazy parameter is updated only where its gradient is nonzero
    this step (a voxel grid's lattice points that the step's rays touched): those elements take the dense
    update, with the step count t of every applied step in the bias correction; an element whose gradient
    is exactly 0 keeps its value and both moments (they are not decayed). This is torch.optim.SparseAdam's
    rule (TF's LazyAdam); with every gradient nonzero it equals Adam. Untouched elements' stale moments
    resume when touched again (their m is not decayed for the skipped steps, so it is larger than dense
    Adam's would be), and the cost of an update is the reading of the gradient plus the work on touched
    elements only."""

    _buffer_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float | Sequence[float] = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, schedule: Callable[[int], float] | None = None, device=None,
                 lazy: bool | Sequence[bool] = False):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas: expected two values in [0, 1), got {betas}")
        if not eps > 0.0:
            raise ValueError(f"eps: expected eps > 0, got {eps}")
        super().__init__(params, lr, schedule, device)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        flags = [lazy] * len(self.params) if isinstance(lazy, bool) else list(lazy)
        if len(flags) != len(self.params) or not all(isinstance(f, bool) for f in flags):
            raise ValueError(f"lazy: expected a bool or {len(self.params)} bools, got {lazy!r}")
        self.lazy = flags
        self._corrections = wp.ones(2, dtype=float, device=self.device)

    def _before_updates(self):
        wp.launch(_adam_corrections, dim=1, inputs=[self._steps, *self.betas, self._corrections],
                  device=self.device, record_tape=False)

    def _update(self, i, grad, lr):
        m, v = self._buffers["exp_avg"][i], self._buffers["exp_avg_sq"][i]
        _launch_flat(_adam_update, [self._flat[i], grad, m, v, lr, *self.betas, self.eps, self._corrections,
                                    int(self.lazy[i]), self._bad], (0, 1, 2, 3), self.device, self.workers)

    def accepts_active(self, i: int) -> bool:
        return self.lazy[i]

    def _update_at(self, i, grad, lr, points, channels):
        if points.shape[0]:
            m, v = self._buffers["exp_avg"][i], self._buffers["exp_avg_sq"][i]
            _launch_at(_adam_update_at, [self._flat[i], grad, m, v, points, int(channels), lr, *self.betas,
                                         self.eps, self._corrections, self._bad], 4, int(channels), self.device,
                       self.workers)


class SGD(_Optimizer):
    """Stochastic gradient descent with heavy-ball momentum, as torch.optim.SGD (dampening 0, no
    Nesterov): v = momentum * v + g; p -= lr * v. momentum=0 is plain gradient descent."""

    _buffer_names = ("velocity",)

    def __init__(self, params, lr: float | Sequence[float] = 1e-2, momentum: float = 0.0,
                 schedule: Callable[[int], float] | None = None, device=None):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
        super().__init__(params, lr, schedule, device)
        self.momentum = float(momentum)

    def _update(self, i, grad, lr):
        wp.launch(_sgd_update, dim=grad.shape[0],
                  inputs=[self._flat[i], grad, self._buffers["velocity"][i], lr, self.momentum, self._bad],
                  device=self.device, record_tape=False)


def exponential_decay(gamma: float) -> Callable[[int], float]:
    """Schedule factor gamma**step (gamma in (0, 1]: 0.99 halves the lr in ~69 steps)."""
    return lambda step: gamma**step


def cosine_decay(total_steps: int, final_factor: float = 0.0) -> Callable[[int], float]:
    """Schedule factor falling from 1 at step 0 to `final_factor` at `total_steps` along a half cosine,
    constant after."""
    if total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1, got {total_steps}")

    def factor(step: int) -> float:
        s = min(step, total_steps) / total_steps
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * s))
    return factor


def make_schedule(spec, total_steps: int, base_lr: float | None = None) -> Callable[[int], float] | None:
    """The schedule of a scene file's `optimizer.schedule` (renderer.scene_schema), or None for None.

    {"type": "exponential", "gamma"}: gamma**step. {"type": "cosine", "min_lr"}: half cosine from 1 at
    step 0 to min_lr / base_lr at the last step, total_steps - 1 (base_lr: the optimizer's lr; needed
    when min_lr > 0; per-parameter lrs scale by the same factor)."""
    if spec is None:
        return None
    if spec.type == "exponential":
        return exponential_decay(float(spec.gamma))
    if spec.type == "cosine":
        if spec.min_lr > 0 and not base_lr:
            raise ValueError(f"base_lr: a cosine schedule with min_lr={spec.min_lr} needs the optimizer lr, "
                             f"got {base_lr}")
        return cosine_decay(max(total_steps - 1, 1), float(spec.min_lr) / base_lr if spec.min_lr > 0 else 0.0)
    raise ValueError(f"spec: expected a schedule of type 'exponential' or 'cosine', got {spec.type!r}")


# kind -> (lower, upper) for the clamping projections.
_BOUNDS = {
    "unit_interval": (0.0, 1.0),
    "roughness": (0.02, 1.0),  # GGX degenerates as roughness -> 0
    "nonnegative": (0.0, math.inf),
    "positive": (1e-3, math.inf),
}
PROJECTIONS = (*_BOUNDS, "unit_quaternion")

# Scene parameter kind (Scene.params()) -> projections (kind, offset, count) applied after each step,
# on the flat float view; count None means to the end of the array.
CONSTRAINTS_BY_KIND: dict[str, tuple[tuple[str, int, int | None], ...]] = {
    "vertices": (),
    "uvs": (),  # textures wrap or clamp, any uv is valid
    "position": (),
    "direction": (),  # kernels normalize light directions
    "colors": (("nonnegative", 0, None),),  # vertex colors multiply the albedo: >= 0, may exceed 1
    "quaternion": (("unit_quaternion", 0, None),),
    "scale": (("positive", 0, None),),  # a scale through 0 would collapse and mirror the mesh
    "albedo": (("unit_interval", 0, None),),
    "roughness": (("roughness", 0, None),),
    "metallic": (("unit_interval", 0, None),),
    "emission": (("nonnegative", 0, None),),  # emitted radiance
    "environment": (("nonnegative", 0, None),),  # environment radiance texels
    "color": (("nonnegative", 0, None),),  # light colors
    "intensity": (("nonnegative", 0, None),),
    "intrinsics": (("positive", 0, 2),),  # fx, fy; the principal point is free
    "pose": (("unit_quaternion", 3, 4),),  # [px, py, pz, qx, qy, qz, qw]
}


def _clamp_to_render_bounds(array: wp.array, kind: str) -> None:
    """Clamp every element to its kind's range (`params.Kind.range`: the bounds within which rendering
    stays finite in float32, the same the loader and commands check), so that an update with a huge
    learning rate cannot carry a value where the renderer overflows."""
    from ..params import Kind

    lo, hi = Kind(kind).range
    if math.isinf(lo) and math.isinf(hi):
        return
    big = float(np.finfo(np.float32).max)
    _check_param("array", array)
    flat = _flat(array)
    wp.launch(_clamp, dim=flat.shape[0], inputs=[flat, 0, max(float(lo), -big), min(float(hi), big)],
              device=flat.device, record_tape=False)


@functools.cache  # a kind's constraints are constants: computed once, not on every step's projection
def _merged_clamp(kind: str) -> tuple[float, float] | None:
    """(lo, hi) of the one clamp that equals a scene kind's projections followed by its render bounds
    (`_clamp_to_render_bounds`), when its projections are a single clamp of the whole array: clamping to [a, b]
    and then to an overlapping [c, d] is clamping to [max(a, c), min(b, d)], element for element (also for
    infinities). None when the kind has other projections (quaternions, a part of the array) or none."""
    from ..params import Kind

    subs = CONSTRAINTS_BY_KIND[kind]
    if len(subs) != 1 or subs[0][0] not in _BOUNDS or subs[0][1:] != (0, None):
        return None
    (lo, hi), (rlo, rhi) = _BOUNDS[subs[0][0]], Kind(kind).range
    big = float(np.finfo(np.float32).max)
    lo, hi = max(lo, float(rlo), -big), min(hi, float(rhi), big)
    if lo > hi:
        return None
    return lo, hi


def project(array: wp.array, kind: str, offset: int = 0, count: int | None = None) -> None:
    """Project flat elements [offset, offset + count) of `array` (count None: to the end) in place.

    kind: "unit_interval" clamp to [0, 1]; "roughness" clamp to [0.02, 1]; "nonnegative" max(x, 0);
    "positive" max(x, 1e-3); "unit_quaternion" normalize consecutive groups of 4 (count a multiple of
    4; a zero quaternion becomes the identity (0, 0, 0, 1)). Or a scene parameter kind (a key of
    CONSTRAINTS_BY_KIND, offset and count left at their defaults): apply that kind's projections
    ("roughness" means the same either way). `array`: any contiguous float32-based array, seen as its
    flat float view (a vec3 (V,) array has 3V elements). Not recorded on a tape."""
    if kind not in PROJECTIONS:
        if kind not in CONSTRAINTS_BY_KIND:
            raise ValueError(f"kind: expected one of {PROJECTIONS} or a scene parameter kind "
                             f"{sorted(CONSTRAINTS_BY_KIND)}, got {kind!r}")
        if offset != 0 or count is not None:
            raise ValueError(f"offset, count: not used with the scene parameter kind {kind!r}")
        merged = _merged_clamp(kind)
        if merged is not None:  # one clamp of the whole array does both (albedo: [0, 1] twice)
            _check_param("array", array)
            flat = _flat(array)
            wp.launch(_clamp, dim=flat.shape[0], inputs=[flat, 0, *merged], device=flat.device, record_tape=False)
            return
        for sub_kind, sub_offset, sub_count in CONSTRAINTS_BY_KIND[kind]:
            project(array, sub_kind, sub_offset, sub_count)
        _clamp_to_render_bounds(array, kind)
        return
    _check_param("array", array)
    flat = _flat(array)
    n = flat.shape[0]
    count = n - offset if count is None else count
    if offset < 0 or count < 0 or offset + count > n:
        raise ValueError(f"offset, count: expected a range inside the {n} elements of array, got "
                         f"offset={offset} count={count}")
    if kind == "unit_quaternion":
        if count % 4:
            raise ValueError(f"count: unit_quaternion needs a multiple of 4 elements, got {count}")
        wp.launch(_normalize_quaternions, dim=count // 4, inputs=[flat, offset], device=flat.device,
                  record_tape=False)
    else:
        lo, hi = _BOUNDS[kind]
        wp.launch(_clamp, dim=count, inputs=[flat, offset, lo, hi], device=flat.device, record_tape=False)
