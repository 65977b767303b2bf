"""An optimization problem: free parameters, targets, losses and the optimizer, on one device.

`Problem(scene)` reads the scene's validated `optimize` section:
1. the scene's values are the truth; targets are rendered from them through the target cameras (or
   loaded from image files with their cameras);
2. each free parameter then starts from its `init` (a value, a file, or a seeded perturbation of the
   truth) and is kept valid by a projection after every update (see `optimizers.CONSTRAINTS_BY_KIND`);
3. `step()` renders a batch of target views under one `wp.Tape`, sums the weighted image losses and
   regularizers, back-propagates, and applies one optimizer update unless the loss or any gradient
   is not finite (then nothing changes and the step reports `applied=False`).
A scene with fields (radiance fields) trains them through the same step; `field_training.FieldTraining`
holds what differs (ray batches instead of views, held-out test views, occupancy, coarse to fine).
All heavy work stays on the device; the host reads back only scalars and snapshot images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import warp as wp

from .. import parallel
from ..device_scene import DeviceScene
from ..initial_values import initial_value
from ..render import render_view
from ..render_cache import GBufferCache
from ..scene import Scene
from . import losses, optimizers, regularizers
from .field_training import FIELD_KINDS, FieldDeviceScene, FieldTraining, add_test_cameras
from .targets import Target, add_dataset_cameras, build_targets

IMAGE_LOSSES = ("l1", "l2", "ssim")
REGULARIZERS = ("tv", "laplacian", "edge_length")


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


class Problem:
    def __init__(self, scene: Scene, device: str | None = None, *, seed: int | None = None):
        spec = scene.optimize
        if spec is None:
            raise ValueError(f"{scene.path or 'scene'}: has no 'optimize' section; nothing to optimize")
        self.scene, self.spec = scene, spec
        self._dataset_files = add_dataset_cameras(scene, spec.targets)
        test_files = add_test_cameras(scene, spec.targets) if scene.fields else {}
        self.ds = (FieldDeviceScene if scene.fields else DeviceScene)(scene, device)
        self.truth = {path: p.value.copy() for path, p in scene.params().items()}
        self.seed = spec.seed if seed is None else seed
        self.steps = int(spec.steps)
        self.batch_views = max(1, int(spec.batch_views))
        self.weights = {name: float(getattr(spec.loss, name, 0.0) or 0.0) for name in IMAGE_LOSSES + REGULARIZERS}
        self.target_spec = spec.targets
        self.targets: list[Target] = []
        self.test_targets: list[Target] = []  # held out of training (scenes with fields)
        self.param_specs = dict(spec.parameters)
        # the loader's seeding (optimize.seed and the path) so a scene always starts from the same values
        self.initial = {path: initial_value(scene, path).astype(np.float32) for path in self.param_specs}
        self.field_training = FieldTraining(self, test_files) if scene.fields else None
        self.render_targets()
        self.views = [t.camera for t in self.targets + self.test_targets]
        self.active_view = self.views[0]

        self.base_lr = float(spec.optimizer.lr)
        self.lrs = {path: float(pspec.lr if pspec.lr is not None else self.base_lr)
                    for path, pspec in self.param_specs.items()}
        self.free = {path: True for path in self.param_specs}
        # G-buffer parts of the target views that no free parameter affects, reused across steps
        self.gbuffer_cache = GBufferCache(self.ds) if self.field_training is None else None
        self.parallel_views = True  # render a step's views on all cores (renderer.parallel.render_views)
        self._topology = self._mesh_topology()
        self._view_rng = np.random.default_rng(self.seed + 1)
        self.reset()

    # -- set-up ----------------------------------------------------------------------------------
    def _mesh_topology(self) -> dict:
        """Per free vertex array: neighbor CSR and unique edges with rest lengths (regularizers)."""
        topo = {}
        for path in self.param_specs:
            if self.ds.kind(path) != "vertices":
                continue
            mesh = self.scene.meshes[path.split(".")[1]]
            offsets, indices = regularizers.neighbor_csr(mesh.faces, len(mesh.vertices))
            edges = regularizers.unique_edges(mesh.faces)
            init = self.initial[path]
            rest = np.linalg.norm(init[edges[:, 0]] - init[edges[:, 1]], axis=1).astype(np.float32)
            dev = self.ds.device
            topo[path] = dict(
                offsets=wp.array(offsets, dtype=wp.int32, device=dev),
                indices=wp.array(indices, dtype=wp.int32, device=dev),
                edges=wp.array(edges.astype(np.int32), dtype=wp.int32, device=dev),
                rest=wp.array(rest, dtype=float, device=dev))
        return topo

    def render_targets(self) -> None:
        """(Re-)render or load the target images from the current truth."""
        if self.field_training is not None:
            self.targets, self.test_targets = self.field_training.build_targets()
        else:
            self.targets = build_targets(self.scene, self.ds, self.truth, self.target_spec, self._current_values(),
                                         self._dataset_files)
        self.targets_version = getattr(self, "targets_version", -1) + 1
        self._target_images = {t.camera: self.target_numpy(t.camera) for t in self.targets + self.test_targets}

    def target_images(self) -> dict:
        """camera -> (H, W, 3) target image; the arrays are replaced, never modified, when targets change."""
        return dict(self._target_images)

    def _current_values(self) -> dict:
        return {path: self.ds.get(path) for path in self.ds.arrays}

    def reset(self) -> None:
        """Free parameters back to their initial values; optimizer state cleared; step 0."""
        if self.field_training is not None:
            self.field_training.reset_state()  # first lattice (leaf shapes), fresh occupancy grid
        for path, value in self.initial.items():
            self.ds.set(path, value)
        self._invalidate_gbuffer()
        self.step_index = 0
        self._build_optimizer()

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
        if opt.type == "sgd":
            self.optimizer = optimizers.SGD(arrays, lrs, momentum=float(getattr(opt, "momentum", 0.0) or 0.0),
                                            schedule=schedule)
        else:
            betas = tuple(getattr(opt, "betas", None) or (0.9, 0.999))
            self.optimizer = optimizers.Adam(arrays, lrs, betas=betas, schedule=schedule)

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
        self.ds.set(path, self._project_host(path, value.reshape(self.truth[path].shape)))
        self._invalidate_gbuffer()

    def _invalidate_gbuffer(self) -> None:
        """Drop the reused G-buffer parts (after an edit; `DeviceScene.set` versions catch the same)."""
        if getattr(self, "gbuffer_cache", None) is not None:
            self.gbuffer_cache.clear()

    def _gbuffer(self) -> GBufferCache | None:
        """The G-buffer cache for this step: parts depending on a free parameter are never reused. The free
        set is read at every step (a restored keyframe sets `free` directly)."""
        cache = self.gbuffer_cache
        if cache is not None:
            cache.set_varying(self.free_paths())
        return cache

    def set_free(self, path: str, free: bool) -> None:
        if path not in self.param_specs:
            raise KeyError(f"{path} is not an optimizable parameter of this scene")
        if self.free[path] != bool(free):
            self.free[path] = bool(free)
            self._invalidate_gbuffer()
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
        self._invalidate_gbuffer()

    def _project_host(self, path: str, value: np.ndarray) -> np.ndarray:
        if self.ds.kind(path) in FIELD_KINDS:
            return value  # raw grid values: unconstrained
        arr = wp.array(value.reshape(self.ds.arrays[path].numpy().shape), dtype=self.ds.arrays[path].dtype,
                       device=self.ds.device)
        optimizers.project(arr, self.ds.kind(path))
        return arr.numpy().reshape(value.shape)

    # -- the step --------------------------------------------------------------------------------
    def _batch(self) -> list[Target] | np.ndarray:
        if self.field_training is not None:
            return self.field_training.draw_batch()  # flat ray indices
        if self.batch_views >= len(self.targets):
            return list(self.targets)
        idx = self._view_rng.choice(len(self.targets), size=self.batch_views, replace=False)
        return [self.targets[i] for i in sorted(idx)]

    def _record_loss(self, batch: list[Target] | np.ndarray):
        """Forward pass of one step; returns (total loss array, per-term arrays, outputs by camera)."""
        dev = self.ds.device
        terms = {name: wp.zeros(1, dtype=float, device=dev, requires_grad=True)
                 for name, w in self.weights.items() if w > 0}
        total = wp.zeros(1, dtype=float, device=dev, requires_grad=True)
        if self.field_training is not None:  # a batch of rays through the field
            outputs = self.field_training.record_loss(batch, terms, self.weights, self.step_index)
            for arr in terms.values():
                losses.accumulate(arr, total)
            return total, terms, outputs
        cache = self._gbuffer()
        frame = self.ds.prepare(cache=cache)
        outputs = {}
        scale = 1.0 / len(batch)
        if len(batch) > 1 and self.ds.device.is_cpu and self.parallel_views:
            # one CPU launch runs on one core: spread the views over the cores (same images; the gradient
            # sums in a fixed, different order)
            rendered = parallel.render_views(self.ds, frame, [t.camera for t in batch], cache=cache)
        else:
            rendered = [render_view(self.ds, frame, t.camera, cache=cache) for t in batch]
        for t, out in zip(batch, rendered, strict=True):
            outputs[t.camera] = out
            for name in IMAGE_LOSSES:
                if name in terms:
                    w = self.weights[name] * scale
                    if name == "ssim":
                        losses.ssim_loss(out.image, t.image, out.width, out.height, terms[name], weight=w)
                    else:
                        getattr(losses, name)(out.image, t.image, terms[name], weight=w)
        for path in self.free_paths():
            kind, arr = self.ds.kind(path), self.ds.arrays[path]
            if "tv" in terms and kind in ("albedo", "roughness", "metallic") and arr.shape[0] > 1:
                regularizers.total_variation(arr, terms["tv"], weight=self.weights["tv"])
            if kind == "vertices":
                topo = self._topology[path]
                if "laplacian" in terms:
                    regularizers.laplacian_smoothing(arr, topo["offsets"], topo["indices"], terms["laplacian"],
                                                     weight=self.weights["laplacian"])
                if "edge_length" in terms:
                    regularizers.edge_length(arr, topo["edges"], topo["rest"], terms["edge_length"],
                                             weight=self.weights["edge_length"])
        for arr in terms.values():
            losses.accumulate(arr, total)
        return total, terms, outputs

    def step(self) -> StepResult:
        batch = self._batch()
        if self.field_training is not None:
            self.field_training.before_step(self.step_index)
        self.ds.zero_grad()
        tape = wp.Tape()
        with tape:
            total, terms, outputs = self._record_loss(batch)
        tape.backward(total)
        loss = float(total.numpy()[0])
        applied = self.optimizer.step(loss_value=loss)
        if applied:
            for path in self._opt_paths:
                if self.ds.kind(path) not in FIELD_KINDS:  # raw grid values are unconstrained
                    optimizers.project(self.ds.arrays[path], self.ds.kind(path))
        # field grids are large: their gradient norms only, no copies
        self._last_param_grads = {p: self.ds.arrays[p].grad.numpy().copy() for p in self.free_paths()
                                  if self.ds.kind(p) not in FIELD_KINDS}
        grad_norms = {p: float(np.linalg.norm(self.ds.arrays[p].grad.numpy().ravel())) for p in self.free_paths()}
        self._last_grad_images = {cam: out.image.grad.numpy().reshape(out.height, out.width, 3).copy()
                                  for cam, out in outputs.items()}
        tape.reset()
        terms = {k: float(v.numpy()[0]) for k, v in terms.items()}
        if self.field_training is not None:  # upsampling, test PSNR (a read-out among the terms)
            terms.update(self.field_training.after_step(self.step_index))
        result = StepResult(self.step_index, loss, terms, grad_norms, applied)
        self.step_index += 1
        return result

    # -- read-outs -------------------------------------------------------------------------------
    def free_values(self) -> dict:
        """Current value of each free parameter; field grids are left out (megabytes per snapshot: read
        them with `ds.get`)."""
        return {p: self.ds.get(p) for p in self.free_paths() if self.ds.kind(p) not in FIELD_KINDS}

    def parameter_errors(self) -> dict:
        """Max abs error of each optimizable parameter vs the truth (fields have none: see the test PSNR)."""
        return {p: float(np.max(np.abs(self.ds.get(p) - self.truth[p]))) for p in self.param_specs
                if self.ds.kind(p) not in FIELD_KINDS}

    def target_numpy(self, camera: str) -> np.ndarray:
        t = next(t for t in self.targets + self.test_targets if t.camera == camera)
        c = self.scene.cameras[camera]
        return t.image.numpy().reshape(c.height, c.width, 3).copy()

    def render_image(self, camera: str, intrinsics: wp.array | None = None, width: int | None = None,
                     height: int | None = None) -> np.ndarray:
        """(H, W, 3) render of `camera` as this problem sees it: the field's when the scene has fields,
        else the meshes'. `intrinsics`/`width`/`height` override the camera's (e.g. thumbnails)."""
        if self.field_training is not None:
            return self.field_training.render(camera, intrinsics, width, height).numpy()
        cache = self._gbuffer()
        return render_view(self.ds, self.ds.prepare(cache=cache), camera, intrinsics=intrinsics, width=width,
                           height=height, cache=cache).numpy()

    def render_numpy(self, camera: str) -> np.ndarray:
        return self.render_image(camera)

    def view_images(self, result=None) -> dict:
        cam = self.active_view
        grads = getattr(self, "_last_grad_images", {})
        out = {"render": self.render_numpy(cam), "target": self._target_images[cam], "grad_image": grads.get(cam)}
        pg = getattr(self, "_last_param_grads", {})
        out["texture_grads"] = {p: g for p, g in pg.items()
                                if self.ds.kind(p) in ("albedo", "roughness", "metallic") and g.shape[0] > 1}
        out["vertex_grads"] = {p: g for p, g in pg.items() if self.ds.kind(p) == "vertices"}
        out["param_grads"] = {p: g for p, g in pg.items() if g.size <= 16}
        return out
