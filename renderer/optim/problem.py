"""An optimization problem: free parameters, targets, losses and the optimizer, on one device.

`Problem(scene)` reads the scene's validated `optimize` section:
1. the scene's values are the truth; targets are rendered from them through the target cameras (or
   loaded from image files with their cameras);
2. each free parameter then starts from its `init` (a value, a file, or a seeded perturbation of the
   truth) and is kept valid by a projection after every update (see `optimizers.CONSTRAINTS_BY_KIND`);
3. `step()` renders a batch of target views under one `wp.Tape`, sums the weighted image losses and
   regularizers, back-propagates, and applies one optimizer update unless the loss or any gradient
   is not finite (then nothing changes and the step reports `applied=False`).
What differs between representations lives in the problem's `model` (`renderer.optim.models.Model`):
`MeshModel` for mesh scenes, `FieldModel` for radiance fields (ray batches instead of views, held-out test
views, occupancy, coarse to fine). The problem has no branch on the representation.
The problem works on a copy of the caller's `Scene` (it adds dataset cameras and writes field values).
All heavy work stays on the device; the host reads back only scalars and snapshot images.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import warp as wp

from .. import progress
from ..initial_values import initial_value
from ..params import Kind
from ..scene import Scene
from . import losses, optimizers
from .distributed import CHECK_EVERY
from .large_steps import ShapeOptimizer, large_steps_lambda
from .models import IMAGE_LOSSES, MeshModel, Model, model_class
from .targets import Target, add_dataset_cameras

REGULARIZERS = ("tv", "laplacian", "edge_length")
NOTHING_FREE = "nothing is free: make a parameter free first (the Optimizer panel's 'free' checkbox, set_free)"


@dataclass
class StepResult:
    step: int  # index of the step just taken (0-based)
    loss: float
    loss_terms: dict
    grad_norms: dict
    applied: bool


def _finite(path: str, value) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if not np.isfinite(value).all():
        raise ValueError(f"{path}: value is not finite")
    return value


def _grad_norm(grad: wp.array, active: tuple[wp.array, int] | None, workers: int = 1) -> float:
    """The L2 norm of a gradient; with `active` (points, C) only those elements are read (the rest are 0)."""
    if active is None:
        return float(np.linalg.norm(grad.numpy().reshape(-1)))
    return optimizers.norm_at(grad, *active, workers=workers)


def _image_grads(outputs: dict) -> dict[str, np.ndarray]:
    """d(loss)/d(image) of each rendered view, (H, W, 3) copies (the tape's reset zeroes the arrays)."""
    return {cam: out.image.grad.numpy().reshape(out.height, out.width, 3).copy() for cam, out in outputs.items()}


class Problem:
    def __init__(self, scene: Scene, device: str | None = None, *, seed: int | None = None):
        spec = scene.optimize
        if spec is None:
            raise ValueError(f"{scene.path or 'scene'}: has no 'optimize' section; nothing to optimize")
        scene = copy.deepcopy(scene)  # the caller's scene stays as it was loaded
        spec = scene.optimize
        self.scene, self.spec = scene, spec
        model_cls = model_class(scene)
        progress.load_kernels(device)  # a phase of its own: minutes on a new machine, not a silent first step
        self._dataset_files = add_dataset_cameras(scene, spec.targets)
        model_files = model_cls.add_cameras(scene, spec.targets)
        self.ds = model_cls.device_scene(scene, device)
        self.truth = {path: p.value.copy() for path, p in scene.params().items()}
        self.seed = spec.seed if seed is None else seed
        self.steps = int(spec.steps)
        self.batch_views = max(1, int(spec.batch_views))
        self.weights = {name: float(getattr(spec.loss, name, 0.0) or 0.0) for name in IMAGE_LOSSES + REGULARIZERS}
        self.target_spec = spec.targets
        self.targets: list[Target] = []
        self.test_targets: list[Target] = []  # held out of training (a model's test views)
        self.param_specs = dict(spec.parameters)
        # the loader's seeding (optimize.seed and the path) so a scene always starts from the same values
        self.initial = {path: initial_value(scene, path).astype(np.float32) for path in self.param_specs}
        self.model: Model = model_cls(self, model_files)
        self.render_targets()
        self.views = [t.camera for t in self.targets + self.test_targets]
        self.active_view = self.views[0]

        self.base_lr = float(spec.optimizer.lr)
        self.lrs = {path: float(pspec.lr if pspec.lr is not None else self.base_lr)
                    for path, pspec in self.param_specs.items()}
        self.free = {path: True for path in self.param_specs}
        self._view_rng = np.random.default_rng(self.seed + 1)
        # data parallelism (renderer.optim.distributed): the step's batch is split over `shards` ranks; with
        # `comm` this process is one of them, without it `shards` > 1 emulates them one after another (replay)
        self.shards = 1
        self.comm = None
        self.check_every = CHECK_EVERY
        self.stop_request = False  # set from another thread: ask every rank to stop after this step
        self.stop_agreed = False  # a rank asked; every rank stops after the same step
        # a time budget (`optimize --max-seconds`): `deadline` a time.monotonic() value; once a step ends past
        # it (on any rank), `out_of_time` is set and the engine finishes after that step (every rank the same)
        self.deadline: float | None = None
        self.out_of_time = False
        # the recording's thumbnails split over the ranks: rank 0's recorder sets `thumbnail_due` (() -> the
        # largest side of the thumbnail it will draw after the coming step, else 0); the request travels in the
        # step's buffer, every rank renders its rows after the step and rank 0 keeps the gathered image
        self.thumbnail_due = None
        self._thumbnail_request = 0
        self._shared_thumbnail = None
        # what failed after a step was taken (a lost rank in the parameter check or the thumbnail's gather): the
        # step is returned (recorded, so the closing keyframe holds its parameters under its number) and this is
        # raised by the next `step()`; the engine reports it at once (`take_deferred_error`)
        self.deferred_error: BaseException | None = None
        self.thumbnails_shared = 0  # how many of them were taken (the recorder notes it in the thumb record)
        self._sparse_grads: dict = {}  # path -> (array, points, C) of the last step's sparse gradient (_zero_grads)
        self._grad_buffer = None  # a CPU rank's flat buffer its gradients live in (distributed.GradBuffer)
        self.reset()

    # -- the model -------------------------------------------------------------------------------
    @property
    def field_training(self):
        """The model when it trains radiance fields (what the viewer's field preview reads), else None.
        Kept for callers of earlier versions; use `model`."""
        return self.model if self.model.kind == "field" else None

    @property
    def gbuffer_cache(self):
        return getattr(self.model, "gbuffer_cache", None)

    @property
    def noisy_loss(self) -> bool:
        """Whether the loss of a step is a Monte Carlo estimate that varies from step to step (path mode)."""
        return bool(getattr(self.model, "noisy_loss", False))

    @property
    def parallel_views(self) -> bool:
        """Whether a step's views render on all cores (mesh models)."""
        return bool(getattr(self.model, "parallel_views", False))

    @parallel_views.setter
    def parallel_views(self, value: bool) -> None:
        self.model.parallel_views = bool(value)

    def render_targets(self) -> None:
        """(Re-)render or load the target images from the current truth."""
        self.targets, self.test_targets = self.model.build_targets()
        self.targets_version = getattr(self, "targets_version", -1) + 1
        self._target_images = {t.camera: self.target_numpy(t.camera) for t in self.targets + self.test_targets}

    def target_images(self) -> dict:
        """camera -> (H, W, 3) target image; the arrays are replaced, never modified, when targets change."""
        return dict(self._target_images)

    def _current_values(self) -> dict:
        return {path: self.ds.get(path) for path in self.ds.arrays}

    def reset(self) -> None:
        """Free parameters back to their initial values; optimizer state cleared; step 0."""
        self.model.reset()  # e.g. a field's first lattice (leaf shapes), a fresh occupancy grid
        for path, value in self.initial.items():
            self.ds.set(path, value)
        self.step_index = 0
        self._build_optimizer()
        self.model.after_reset()

    def _rebuild_optimizer_keep_clock(self) -> None:
        """A new optimizer for replaced leaf arrays (a field's grid upsampled): fresh moments, the same
        schedule horizon and iteration."""
        iteration, horizon = self.optimizer.iteration, self.schedule_steps
        self._build_optimizer(horizon)
        self.optimizer.iteration = iteration

    def _build_optimizer(self, horizon: int | None = None) -> None:
        paths = [p for p in self.param_specs if self.free[p]]
        self._opt_paths = paths
        opt = self.spec.optimizer
        # the horizon the learning-rate schedule is built with
        self.schedule_steps = self.steps if horizon is None else horizon
        arrays = [self.ds.arrays[p] for p in paths]
        lrs = [self.lrs[p] for p in paths]
        schedule = optimizers.make_schedule(getattr(opt, "schedule", None), self.schedule_steps,
                                           base_lr=float(opt.lr))
        betas = tuple(getattr(opt, "betas", None) or (0.9, 0.999))
        device = self.ds.device  # an optimizer of no parameters (nothing free yet) needs it

        def make(arrays, lrs):
            if opt.type == "sgd":
                return optimizers.SGD(arrays, lrs, momentum=float(getattr(opt, "momentum", 0.0) or 0.0),
                                      schedule=schedule, device=device)
            return optimizers.Adam(arrays, lrs, betas=betas, schedule=schedule, device=device,
                                   lazy=bool(getattr(opt, "lazy", False)), eps=float(getattr(opt, "eps", 1e-8)))

        # free vertices take large steps unless their parametrization is "plain" (renderer.optim.large_steps)
        large = {}
        for i, path in enumerate(paths):
            lam = large_steps_lambda(self.param_specs[path]) if self.ds.kind(path) is Kind.VERTICES else None
            if lam is not None:
                large[i] = (self.scene.meshes[self.ds.params[path].owner].faces, lam)
        if large:
            self.optimizer = ShapeOptimizer(arrays, lrs, large, make, betas=betas, schedule=schedule)
        else:
            self.optimizer = make(arrays, lrs)

    @property
    def opt_paths(self) -> list[str]:
        """The parameters the optimizer holds, in its order."""
        return list(self._opt_paths)

    def view_rng_state(self) -> dict:
        """State of the RNG that draws each step's batch of views (for keyframes)."""
        return self._view_rng.bit_generator.state

    def set_view_rng_state(self, state: dict) -> None:
        self._view_rng.bit_generator.state = state

    # -- commands --------------------------------------------------------------------------------
    def free_paths(self) -> list[str]:
        return [p for p in self.param_specs if self.free[p]]

    def set_value(self, path: str, value) -> None:
        value = _finite(path, value)
        # the table's shape: a remeshed mesh's vertices differ in count from the truth's
        self.ds.set(path, self._project_host(path, value.reshape(self.ds.params[path].shape)))

    def set_free(self, path: str, free: bool) -> None:
        if path not in self.param_specs:
            raise KeyError(f"{path} is not an optimizable parameter of this scene")
        if self.free[path] != bool(free):
            self.free[path] = bool(free)
            self._build_optimizer()

    def set_lr(self, path: str, lr: float) -> None:
        if path not in self.param_specs:
            raise KeyError(f"{path} is not an optimizable parameter of this scene")
        if not (np.isfinite(lr) and lr >= 0):
            raise ValueError(f"learning rate of {path}: expected a finite number >= 0, got {lr}")
        self.lrs[path] = float(lr)
        if path in self._opt_paths:
            self.optimizer.set_lr(self._opt_paths.index(path), float(lr))

    def set_loss_weight(self, name: str, weight: float) -> None:
        if name not in self.weights:
            raise KeyError(f"unknown loss term {name!r}; expected one of {tuple(self.weights)}")
        if not (np.isfinite(weight) and weight >= 0):
            raise ValueError(f"loss weight {name}: expected a finite number >= 0, got {weight}")
        self.weights[name] = float(weight)

    def set_active_view(self, camera: str) -> None:
        if camera not in self.views:
            raise KeyError(f"{camera!r} is not a target view; views: {self.views}")
        self.active_view = camera

    @property
    def targets_editable(self) -> bool:
        """Whether the targets are rendered from the scene's values (so the target scene can be edited)."""
        return self.target_spec.cameras is not None

    def set_target_value(self, path: str, value) -> None:
        """Edit the truth (drag a light of the target scene) and re-render the targets."""
        if path not in self.truth:
            raise KeyError(f"unknown parameter {path!r}")
        value = _finite(path, value).reshape(self.truth[path].shape)
        self.truth[path] = self._project_host(path, value)
        self.render_targets()

    def _project_host(self, path: str, value: np.ndarray) -> np.ndarray:
        if self.ds.kind(path) not in optimizers.CONSTRAINTS_BY_KIND:
            return value  # unconstrained (raw field values)
        arr = wp.array(value.reshape(self.ds.arrays[path].numpy().shape), dtype=self.ds.arrays[path].dtype,
                       device=self.ds.device)
        optimizers.project(arr, self.ds.kind(path))
        return arr.numpy().reshape(value.shape)

    # -- the step --------------------------------------------------------------------------------
    def _record_loss(self, batch, share: tuple[int, int] = (0, 1)):
        """Forward pass of one step (the model's); returns (total loss array, per-term arrays, outputs by
        camera). `share` (rank, ranks): the part of the batch this pass renders (`shards`)."""
        dev = self.ds.device
        terms = {name: wp.zeros(1, dtype=float, device=dev, requires_grad=True)
                 for name, w in self.weights.items() if w > 0}
        total = wp.zeros(1, dtype=float, device=dev, requires_grad=True)
        if share != (0, 1):
            self.model.share = share
        try:
            # only the free parameters are differentiated: no adjoint runs that only fixed ones need
            with self.ds.differentiating(self._opt_paths):
                outputs = self.model.record_loss(batch, terms, self.weights, self.step_index)
        finally:
            if share != (0, 1):
                self.model.share = (0, 1)
        for arr in terms.values():
            losses.accumulate(arr, total)
        return total, terms, outputs

    def set_shards(self, shards: int, comm=None) -> None:
        """Split each step's batch over `shards` ranks: this process is one of them when `comm` (a
        `distributed.Comm` of that world size) is given, else the ranks are emulated in turn."""
        shards = int(shards)
        if shards < 1:
            raise ValueError(f"shards: expected an integer >= 1, got {shards}")
        if shards > 1 and not getattr(self.model, "shardable", False):
            raise ValueError(f"{self.scene.path or 'scene'}: data-parallel optimization (--nproc, torchrun) "
                             f"supports mesh scenes and voxel-grid fields only so far; this scene trains a "
                             f"{self.model.kind} of another type")
        if comm is not None and comm.world != shards:
            raise ValueError(f"shards {shards} differs from the process group's {comm.world} ranks")
        self.shards, self.comm = shards, comm

    def _forward_backward(self, batch):
        """(loss, term values, gradient images by camera, tape to reset after the update) of this step, with
        the gradients of every parameter in their `.grad`."""
        self._zero_grads()
        tape = wp.Tape()
        with tape:
            total, terms, outputs = self._record_loss(batch)
        tape.backward(total)
        loss = float(total.numpy()[0])
        images = _image_grads(outputs)
        out = outputs.get(self.active_view)  # the pane's render, if this step rendered the active view
        self._step_render = None if out is None else \
            (self.active_view, out.image.numpy().reshape(out.height, out.width, 3).copy())
        return loss, {k: float(v.numpy()[0]) for k, v in terms.items()}, images, tape

    def _threads(self) -> int:
        """CPU threads for the elementwise work of a step on large arrays (the model's `threads()`: a field's
        lattice; 1 for models without)."""
        threads = getattr(self.model, "threads", None)
        return threads() if threads is not None else 1

    def _zero_grads(self) -> None:
        """Zero every gradient before a backward: a leaf whose last step's gradient was sparse (the same array;
        `_sparse_grads`) only at the elements that step wrote, the others whole."""
        sparse, self._sparse_grads = self._sparse_grads, {}
        for path, arr in self.ds.arrays.items():
            held = sparse.get(path)
            if held is not None and held[0] is arr:
                optimizers.zero_at(arr.grad, held[1], held[2], workers=self._threads())
            else:
                arr.grad.zero_()

    def _step_sharded(self, batch):
        """`_forward_backward` split over `shards` ranks (renderer.optim.distributed): each rank's part of the
        batch under its own tape into one flat buffer, the buffers summed across ranks (or, emulated, in rank
        order), the sums written back into the `.grad` of the optimizer's parameters."""
        from . import distributed

        comm, paths = self.comm, self._opt_paths
        names = [n for n, w in self.weights.items() if w > 0]
        ranks = [comm.rank] if comm is not None else range(self.shards)
        device = comm.device if comm is not None else "cpu"
        parts, images = [], {}
        thumbnail = 0  # only real ranks share a render; the one-process emulation draws it whole
        if comm is not None and self.thumbnail_due is not None and getattr(self.model, "renders_rows", False):
            thumbnail = int(self.thumbnail_due() or 0)
        tape = None  # the in-place rank's tape, reset after the update; the copying paths reset theirs here
        if comm is not None and distributed.GradBuffer.fits(self.ds, paths):
            tail, images, tape = self._step_rank_in_place(batch, paths, names, thumbnail)
        else:
            for r in ranks:
                self.ds.zero_grad()
                part_tape = wp.Tape()
                with part_tape:
                    total, terms, outputs = self._record_loss(batch, (r, self.shards))
                part_tape.backward(total)
                parts.append(distributed.pack(self.ds, paths, [terms[n] for n in names], total, self.stop_request,
                                              device, self._past_deadline(), thumbnail))
                images.update(_image_grads(outputs))
                part_tape.reset()
            flat = comm.sum(parts[0], self.step_index) if comm is not None else distributed.ordered_sum(parts)
            tail = distributed.unpack(flat, self.ds, paths, len(names))
        values, loss, stop, out_of_time, self._thumbnail_request = tail
        self.stop_agreed = self.stop_agreed or stop
        self.out_of_time = self.out_of_time or out_of_time
        return loss, dict(zip(names, values, strict=True)), images, tape

    def _step_rank_in_place(self, batch, paths: list[str], names: list[str], thumbnail: int):
        """The rank's part of `_step_sharded` on the CPU without copies: the parameters' gradients live in the
        flat buffer (`distributed.GradBuffer`), the backward pass writes it, the sum replaces it in place with the
        ranks' sum, so the optimizer reads the summed gradients where they are; the tape is reset after the
        update, as in one process. The same buffer, the same sum, the same bits as `pack` / `unpack`. Only the
        buffer is zeroed before the backward pass (`DeviceScene.zero_grad` zeroes every leaf's gradient).
        Returns (`distributed.read_tail` of the summed buffer, the image gradients, the tape)."""
        from . import distributed

        n_tail = len(names) + distributed.TAIL_EXTRA
        buf = self._grad_buffer
        if buf is None or not buf.matches(self.ds, paths, n_tail):
            buf = self._grad_buffer = distributed.GradBuffer(self.ds, paths, n_tail)
        buf.attach()
        # the optimizer's gradients and the tail, in one memset; every other leaf's gradient a step writes was
        # zeroed by the previous step's tape reset, and no one reads the gradient of a parameter that is not free
        buf.flat.zero_()
        tape = wp.Tape()
        with tape:
            total, terms, outputs = self._record_loss(batch, (self.comm.rank, self.shards))
        tape.backward(total)
        tail, n = buf.tail, len(names)
        for k, name in enumerate(names):
            tail[k] = terms[name].numpy()[0]
        tail[n] = total.numpy()[0]
        tail[n + 1:] = distributed.tail_flags(self.stop_request, self._past_deadline(), thumbnail)
        images = _image_grads(outputs)
        summed = self.comm.sum(buf.tensor, self.step_index)
        if summed is not buf.tensor:  # more than 2 ranks: the ordered sum is a new tensor
            buf.tensor.copy_(summed)
        return distributed.read_tail(tail, n), images, tape

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _check_ranks(self) -> None:
        """Every `check_every` steps, at the last step and before an agreed stop: every rank must hold the
        same parameters (DistributedError otherwise)."""
        from . import distributed

        i = self.step_index
        if self.comm is None or not (i % self.check_every == 0 or i >= self.steps or self.stop_agreed
                                     or self.out_of_time):
            return
        self.comm.check_same(distributed.checksum(self.ds, self.param_specs), i)

    def take_deferred_error(self) -> BaseException | None:
        """The error that ended the last step after its update was applied (see `deferred_error`), once."""
        err, self.deferred_error = self.deferred_error, None
        return err

    def step(self) -> StepResult:
        if not self._opt_paths:
            raise ValueError(NOTHING_FREE)
        err = self.take_deferred_error()
        if err is not None:  # the ranks were lost after the last step: no step can be taken
            raise err
        rng_state = self.view_rng_state() if self.comm is not None else None
        batch = self.model.batch(self._view_rng)
        if self.shards > 1 or self.comm is not None:
            try:
                self.model.before_step(self.step_index)  # ranks may talk here (a field's occupancy refresh)
                loss, terms, grad_images, tape = self._step_sharded(batch)
            except Exception:
                if rng_state is not None:  # a lost rank: the step was not taken, so its batch is drawn again
                    self.set_view_rng_state(rng_state)  # by whoever resumes from the closing keyframe
                raise
        else:
            self.model.before_step(self.step_index)
            loss, terms, grad_images, tape = self._forward_backward(batch)
            self.out_of_time = self.out_of_time or self._past_deadline()
        # a step whose gradients are 0 outside the lattice points its samples touched (a voxel grid's) updates
        # those points only (lazy Adam: exactly the dense update), and the next step zeroes only them
        active = getattr(self.model, "active_elements", lambda: None)()  # None on dense steps and ranks
        sparse = {}
        if active and isinstance(self.optimizer, optimizers.Adam):
            sparse = {p: a for p, a in active.items() if p in self._opt_paths
                      and self.optimizer.accepts_active(self._opt_paths.index(p))}
        self.optimizer.workers = self._threads()
        if sparse:
            applied = self.optimizer.step(loss_value=loss,
                                          active={self._opt_paths.index(p): a for p, a in sparse.items()})
        else:
            applied = self.optimizer.step(loss_value=loss)
        self._sparse_grads = {p: (self.ds.arrays[p], *a) for p, a in sparse.items()}
        if applied:
            for path in self._opt_paths:
                if self.ds.kind(path) in optimizers.CONSTRAINTS_BY_KIND:  # raw field values are unconstrained
                    optimizers.project(self.ds.arrays[path], self.ds.kind(path))
        # large values (field grids): their gradient norms only, no copies
        self._last_param_grads = {p: self.ds.arrays[p].grad.numpy().copy() for p in self.free_paths()
                                  if self.model.reports(p)}
        grad_norms = {p: _grad_norm(self.ds.arrays[p].grad, sparse.get(p), self._threads()) for p in self.free_paths()}
        self._last_grad_images = grad_images
        if tape is not None:
            tape.reset()
        terms.update(self.model.after_step(self.step_index))  # e.g. upsampling, a test PSNR (a read-out)
        # what the step's render of the active view was taken after: reused by `view_images` while unchanged
        self._step_render_key = (id(self.ds), dict(self.ds.params.versions), repr(self.scene.render))
        result = StepResult(self.step_index, loss, terms, grad_norms, applied)
        self.step_index += 1
        try:  # the step is taken: what fails now is reported after it (`deferred_error`), not instead of it
            self._check_ranks()
            if self._thumbnail_request:  # every rank: its rows of the thumbnail rank 0's recorder draws now
                size, self._thumbnail_request = self._thumbnail_request, 0
                cam = self.active_view
                self._shared_thumbnail = (cam, size, self.step_index, id(self.ds),
                                          self.render_rows_shared(cam, size))
        except Exception as exc:
            self._thumbnail_request, self._shared_thumbnail = 0, None
            self.deferred_error = exc
        return result

    def render_rows_shared(self, camera: str, max_size: int) -> np.ndarray:
        """The recording's thumbnail render of `camera` (`recording.writer.thumbnail_view`: longest side at most
        `max_size`) split over the ranks by rows (`distributed.rows_of`): each rank renders its block and
        `Comm.gather_rows` gives every rank the whole image; without a process group (`shards` emulated) the
        blocks are rendered in turn. Each pixel is the whole render's bit for bit (`renders_rows` models)."""
        from ..recording.writer import thumbnail_view
        from . import distributed

        width, height, intrinsics = thumbnail_view(self, camera, max_size)
        world = self.comm.world if self.comm is not None else self.shards
        ranks = [self.comm.rank] if self.comm is not None else range(world)
        image = np.zeros((height, width, 3), np.float32)
        for r in ranks:
            a, b = distributed.rows_of(height, r, world)
            if b > a:
                out = self.model.render(camera, intrinsics, width, height, rows=(a, b))
                image[a:b] = out.image.numpy().reshape(b - a, width, 3)
        if self.comm is not None:
            import torch

            self.comm.gather_rows(torch.from_numpy(image), self.step_index)  # in place: shares image's memory
        return image

    def shared_thumbnail(self, camera: str, max_size: int) -> np.ndarray | None:
        """The thumbnail of `camera` the ranks rendered together after this step (`render_rows_shared`), or None
        when there is none for this camera, size and step (then the caller renders it alone). Taken once."""
        shared, self._shared_thumbnail = self._shared_thumbnail, None
        if shared is None or shared[:4] != (camera, int(max_size), self.step_index, id(self.ds)):
            return None
        self.thumbnails_shared += 1
        return shared[4]

    # -- read-outs -------------------------------------------------------------------------------
    def free_values(self) -> dict:
        """Current value of each free parameter the model reports (field grids are left out: megabytes per
        snapshot; read them with `ds.get`)."""
        return {p: self.ds.get(p) for p in self.free_paths() if self.model.reports(p)}

    def own_meshes(self) -> dict:
        """Optimized meshes whose topology is their own (not the scene's): name -> {"vertices", "faces"}
        (copies), for viewers whose scene holds other faces. Empty for models without such meshes."""
        fn = getattr(self.model, "own_meshes", None)
        return fn() if fn is not None else {}

    def parameter_errors(self) -> dict:
        """Max abs error of each optimizable parameter vs the truth (fields have none: see the test PSNR)."""
        return {p: float(np.max(np.abs(self.ds.get(p) - self.truth[p]))) for p in self.param_specs
                if self.model.reports(p)}

    def target_numpy(self, camera: str) -> np.ndarray:
        t = next(t for t in self.targets + self.test_targets if t.camera == camera)
        c = self.scene.cameras[camera]
        return t.image.numpy().reshape(c.height, c.width, 3).copy()

    def render_image(self, camera: str, intrinsics: wp.array | None = None, width: int | None = None,
                     height: int | None = None) -> np.ndarray:
        """(H, W, 3) render of `camera` as this problem's model sees it. `intrinsics`/`width`/`height`
        override the camera's (e.g. thumbnails)."""
        return self.model.render(camera, intrinsics, width, height).numpy()

    def render_numpy(self, camera: str) -> np.ndarray:
        return self.render_image(camera)

    def _reusable_render(self) -> np.ndarray | None:
        """The last step's render of the active view when nothing but that step's update changed since (no
        edit, no other view, no new topology): the render the step's loss and gradients came from, one update
        behind the values. Saves a viewer's snapshot a render of its own (a step's forward pass)."""
        step = getattr(self, "_step_render", None)
        key = getattr(self, "_step_render_key", None)
        if step is None or key is None or step[0] != self.active_view or not isinstance(self.model, MeshModel):
            return None
        if key[0] != id(self.ds) or key[1] != self.ds.params.versions or key[2] != repr(self.scene.render):
            return None
        return step[1]

    def view_images(self, result=None) -> dict:
        cam = self.active_view
        grads = getattr(self, "_last_grad_images", {})
        pg = getattr(self, "_last_param_grads", {})
        reuse = self._reusable_render()
        model = self.model.view_images(cam, pg) if reuse is None else self.model.view_images(cam, pg, render=reuse)
        out = {"render": model["render"], "target": self._target_images[cam], "grad_image": grads.get(cam)}
        out["texture_grads"] = model.get("texture_grads", {})
        out["vertex_grads"] = model.get("vertex_grads", {})
        out["param_grads"] = {p: g for p, g in pg.items() if g.size <= 16}
        return out
