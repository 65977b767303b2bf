"""`FieldModel`: a scene's radiance field as the `Model` a `Problem` trains (scenes/README.md "fields",
docs/volume.md "Training"; the protocol is `renderer.optim.models.Model`).

A field is another scene element with free parameters (`fields.NAME.density`, `fields.NAME.sh`, leaves
of the `DeviceScene` like every other value) and a training run is another optimization session: the
same `Problem.step()`, optimizer, engine and recorder. What differs, and lives here:
- targets: the training views, and the held-out test views (never trained on) that measure the PSNR;
- a step renders a batch of rays, not whole images: `rays_per_batch` pixels drawn uniformly from all
  training pixels with the problem's batch RNG (its state is in every keyframe), their targets gathered
  from a `RayBank`;
- `loss.tv` regularizes the grid (density and SH);
- the occupancy grid is refreshed from the field every `update_every` steps (outside the tape);
- coarse to fine: after each `upsample_at` step the grid is resampled to the next lattice, its arrays
  replace the leaves (their shapes change) and the optimizer is rebuilt for them (fresh moments, same
  schedule clock);
- every `eval_every` steps the mean PSNR over the test views is computed and reported as the loss
  term `psnr_test_db` (carried between evaluations; it is a read-out, not part of the loss). It is sampled:
  each held-out view is rendered at `eval_rays` fixed pixels only (chosen once per view from a seed of the
  camera's name, independent of the run's RNGs), so an evaluation costs a small fraction of training; the
  time spent is kept in `eval_seconds`. `test_psnr(sampled=False)` renders every pixel.
The other representations ("neural", "nerf_w", "hash_grid", "dynamic") keep their state in `field_models`
(`NeuralState`, `HashState`, `DynamicState`); this class dispatches on the field's type. The field's leaves live in a
`renderer.field_scene.FieldDeviceScene`, which holds no training state: a lattice change (an upsample, a
reset, a restored keyframe of another lattice) replaces the leaves there, and this model hears of it from
the parameter table.
"""

from __future__ import annotations

import math
import time as _time
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import warp as wp

from .. import memory, progress
from ..errors import SceneError
from ..field_scene import FieldDeviceScene
from ..parallel import default_workers
from ..params import Group, ParamPath, camera_intrinsics, camera_pose, element_prefix
from ..render import RenderOutput
from ..render_field import FieldState, RayBank, field_grid, gather_rays, refine_rays, render_field_view
from ..scene import Camera, Scene
from ..scene_schema import DEFAULT_EVAL_EVERY, DEFAULT_EVAL_RAYS, DEFAULT_RAYS_PER_BATCH, ParameterSpec
from ..thread_tape import recording
from ..transforms_json import load_transforms
from ..volume import OccupancyGrid, readout, regularizers, srgb
from ..volume import render as volume_render
from ..volume.march import contract_far
from . import losses
from .distributed import rows_of
from .field_models import DynamicState, HashState, NeuralState, render_output, view_radius
from .models import EVALUATION_PHASE
from .targets import Target, build_targets, dataset_masks, target_downscale

PSNR_TERM = "psnr_test_db"
PUBLISH_INTERVAL = 0.5  # s: while training, a copy of the field for other threads at most this often
APPEARANCE_FIT_RAYS = 2048  # NeRF-W's held-out protocol: at most this many left-half pixels fit a view's embedding


def _render_free(state, background: wp.array, pose, intrinsics, width: int, height: int, time, appearance):
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"width, height: expected positive sizes, got {width}x{height}")
    origins, directions = readout.camera_rays(intrinsics, pose, width, height, background.device)
    rgb = state.render_rays_readout(origins, directions, background, time=time, appearance=appearance,
                                    radius=view_radius(np.asarray(intrinsics).ravel()))
    return rgb.reshape(height, width, 3)


def _occupancy(occ) -> tuple[np.ndarray, np.ndarray] | None:
    if occ is None:
        return None
    return occ.occupied.numpy().astype(bool), np.asarray(occ.aabb, np.float32)


@dataclass(frozen=True)
class PublishedField:
    """A copy of a training field that readers on other threads render from (the viewer's preview): made
    on the training thread by `FieldModel.publish`, never changed afterwards, so reading it needs no lock and
    no tape of anyone's. `step`: the optimizer step whose values it holds."""

    state: object  # FieldState / NeuralState / DynamicState over arrays of its own
    background: wp.array
    step: int

    def render(self, pose, intrinsics, width: int, height: int, *, time: float | None = None,
               appearance=None) -> np.ndarray:
        """(height, width, 3) float32 linear RGB of the field seen from a free camera.

        pose (7,) camera-to-world [px, py, pz, qx, qy, qz, qw], intrinsics (4,) [fx, fy, cx, cy] for this
        width/height. Forward only and off every tape (launches `record_tape=False`, torch under `no_grad`),
        midpoint samples, the copied occupancy grid. `time`: for dynamic fields (default: the start of the time
        range), ignored otherwise; `appearance`: a NeRF-W appearance embedding (appearance_dim,) (default:
        the mean of the training embeddings), ignored otherwise; NeRF-W renders its static component only.
        One reader at a time per copy (a neural field's module is the copy's own, not shared)."""
        return _render_free(self.state, self.background, pose, intrinsics, width, height, time, appearance)

    def time_range(self) -> tuple[float, float] | None:
        return self.state.time_range()

    def occupancy(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(occupied cells bool (nx, ny, nz), aabb float32 (6,)), None without an occupancy grid."""
        return _occupancy(self.state.occupancy)


def _term(terms: dict, name: str, device) -> wp.array:
    """The (1,) loss-term array `name` of this step, added to `terms` (summed into the loss by the problem) when
    the scene's `optimize.loss` has no such term (a field's own regularizers)."""
    if name not in terms:
        terms[name] = wp.zeros(1, dtype=float, device=device, requires_grad=True)
    return terms[name]


def _gather_rows(comm, arr: wp.array, step: int) -> None:
    """`comm.gather_rows` of a Warp array (torch reads it after Warp's kernels wrote it: on CUDA, other streams)."""
    wp.synchronize_device(arr.device)
    comm.gather_rows(wp.to_torch(arr, requires_grad=False), step)


def _box_diagonal(grid) -> float:
    """The length of the field's box diagonal (world units; of the inner box for a contracted grid)."""
    lo, hi = np.asarray(grid.aabb[:3], np.float64), np.asarray(grid.aabb[3:], np.float64)
    return float(np.linalg.norm(hi - lo)) / (2.0 if grid.contract else 1.0)


def _label(name: str) -> str:
    """`fields.NAME`: how messages name field `name`."""
    return element_prefix(Group.FIELDS, name).rstrip(".")


def occupancy_key(name: str, key: str) -> str:
    """The keyframe entry of field `name`'s occupancy array `key` ("density", "occupied"): `occupancy.NAME.KEY`,
    a name in the recording's extra state (not a parameter path; recordings of earlier versions use it)."""
    return ".".join(("occupancy", name, key))


def add_test_cameras(scene: Scene, target_spec) -> dict[str, str]:
    """For `targets.test_transforms`, add one camera `test_<index>` per frame to `scene` (before its
    DeviceScene is built) and return {camera name: image file}. Otherwise {}."""
    path = getattr(target_spec, "test_transforms", None)
    if not path:
        return {}
    base = Path(scene.path).parent if scene.path else Path(".")
    files = {}
    for i, f in enumerate(load_transforms(base / path, downscale=target_downscale(scene))):
        name = f"test_{i:03d}"
        scene.cameras[name] = Camera(name, f.width, f.height, f.intrinsics, f.pose)
        files[name] = str(f.image_path)
    return files


def held_out_frames(scene: Scene, target_spec) -> set[str]:
    """Cameras `frame_<index>` of `targets.transforms` whose frame says "split": "test" (as `drstudio
    dataset --test-views` writes)."""
    path = getattr(target_spec, "transforms", None)
    if not path:
        return set()
    base = Path(scene.path).parent if scene.path else Path(".")
    # indices of the frames load_transforms keeps (frames without an image are skipped), as the cameras are named
    return {f"frame_{i:03d}" for i, f in enumerate(load_transforms(base / path)) if f.split == "test"}


class FieldModel:
    """The radiance fields of a `Problem`'s scene as a `renderer.optim.models.Model` (see the module
    docstring)."""

    kind = "field"
    share = (0, 1)  # (rank, ranks) while the problem records one rank's part of a step (voxel grids)
    workers: int | None = None  # CPU threads of a step's voxel-grid queries and lazy updates (None: one per core)

    @staticmethod
    def applies(scene: Scene) -> bool:
        return bool(scene.fields)

    @staticmethod
    def can_shard(scene: Scene) -> bool:
        """Whether a step's ray batch splits over ranks (renderer.optim.distributed): voxel grids only so far."""
        return all(f.type == "voxel_grid" for f in scene.fields.values())

    @property
    def shardable(self) -> bool:
        return self.can_shard(self.p.scene)

    @staticmethod
    def add_cameras(scene: Scene, target_spec) -> dict[str, str]:
        """The held-out test cameras of `targets.test_transforms` (added to the problem's copy of the scene)."""
        return add_test_cameras(scene, target_spec)

    @staticmethod
    def device_scene(scene: Scene, device) -> FieldDeviceScene:
        return FieldDeviceScene(scene, device)

    def __init__(self, problem, test_files: dict[str, str]):
        self.p = problem
        spec = problem.spec
        self.rays_per_batch = int(spec.rays_per_batch or DEFAULT_RAYS_PER_BATCH)
        self.eval_every = int(DEFAULT_EVAL_EVERY if spec.eval_every is None else spec.eval_every)
        self.pixel_jitter = bool(getattr(spec, "pixel_jitter", None))
        self.eval_rays = int(DEFAULT_EVAL_RAYS if getattr(spec, "eval_rays", None) is None else spec.eval_rays)
        self.eval_seconds = 0.0  # wall time spent in the periodic (sampled) held-out evaluations
        self._eval_pixels: dict[str, np.ndarray] = {}
        self.test_files = dict(test_files)
        self.held_out = held_out_frames(problem.scene, spec.targets)
        self.states: dict[str, FieldState | NeuralState | HashState | DynamicState] = {}
        self.phase: dict[str, int] = {}
        params = problem.scene.params()
        # the values each field starts (and resets) from: the optimized ones' inits, the fixed ones' values
        self.start_values: dict[str, np.ndarray] = {}
        for name, f in problem.scene.fields.items():
            if f.type == "voxel_grid":
                self.states[name] = FieldState(f, self._grid(name))
            elif f.type == "dynamic":
                self.states[name] = DynamicState(f, problem.ds, name)
            elif f.type == "hash_grid":
                self.states[name] = HashState(f, problem.ds, name)
            else:
                self.states[name] = NeuralState(f, problem.ds, name)
            for key in f.values():
                path = ParamPath(Group.FIELDS, name, key)
                self.start_values[path] = problem.initial.get(path, params[path].value.copy())
        # camera refinement (optimize.camera_refinement): the training cameras whose poses are free parameters
        self.refined: list[str] = []
        refine = getattr(spec, "camera_refinement", None)
        if refine is not None:
            self.refined = self._training_view_names()
            for camera in self.refined:
                path = camera_pose(camera)
                problem.param_specs[path] = ParameterSpec(lr=float(refine.lr))
                problem.initial[path] = problem.ds.get(path).astype(np.float32)
        self.bank_poses = np.zeros((0, 7), np.float32)  # each training view's pose its bank rays were made at
        self.seen: dict[str, np.ndarray] = {}  # camera -> (N,) bool: the pixels its frame's mask uses
        self.view_rays: list[np.ndarray] | None = None  # per training view, the ray indices a batch may draw
        self.drawable = np.zeros(0, np.int64)  # their concatenation
        self._touched: dict[str, wp.array] = {}  # per voxel-grid field: its lattice points this step touched
        self._touched_step = False  # whether this step's gradients are sparse (`active_elements`)
        self.bank: RayBank | None = None
        self.train_cameras: list[str] = []
        self.bank_offsets = np.zeros(1, np.int64)  # first flat ray index of each training view, then the total
        self.view_radius = np.zeros(0, np.float32)  # cone radius per unit depth of each training view (IPE)
        self.view_time: dict[str, float] = {}  # camera -> frame time (dynamic fields)
        self.psnr_test = math.nan
        self._published: PublishedField | None = None
        self._published_at = -math.inf
        self._read_at = -math.inf  # when another thread last read the published copy (`published()`)
        # the grid leaves each voxel-grid field's state is built on (a replaced leaf is a new lattice)
        self._held: dict[str, tuple[wp.array, wp.array]] = {
            name: tuple(problem.ds.arrays[p] for p in problem.ds.grid_paths(name))
            for name, st in self.states.items() if st.field.type == "voxel_grid"}
        self.close = problem.ds.params.subscribe(self._changed)
        self.reset_state()

    @property
    def state(self):
        """The scene's field state (one field per scene so far, scene_schema)."""
        return next(iter(self.states.values()))

    # -- arrays ----------------------------------------------------------------------------------
    def parameters(self) -> list[ParamPath]:
        """The table entries this model trains: every field leaf, and the refined training cameras' poses."""
        return [e.path for e in self.p.ds.params.select(group=Group.FIELDS)] + [camera_pose(c) for c in self.refined]

    def reports(self, path) -> bool:
        """Whether snapshots copy the value, gradient and error of `path`: not for field leaves (megabytes;
        no ground truth)."""
        return not self.p.ds.kind(path).is_field

    def _grid(self, name: str):
        a = self.p.ds.arrays
        density, sh = self.p.ds.grid_paths(name)
        return field_grid(self.p.scene.fields[name], a[density], a[sh])

    def _changed(self, paths) -> None:
        """Table listener: a voxel-grid field whose leaves were replaced (both, at one lattice) is at a new
        lattice. Its state, phase, the scene's values (so `Scene.params()` shapes follow) and the problem's
        `truth` (a field has none; it mirrors the scene so nothing reads as an edited target) follow, and the
        optimizer is rebuilt for the new arrays (fresh moments, same schedule clock)."""
        ds, p = self.p.ds, self.p
        for name, held in self._held.items():
            arrays = tuple(ds.arrays[q] for q in ds.grid_paths(name))
            if all(a is b for a, b in zip(arrays, held, strict=True)):
                continue
            density, sh = arrays
            if tuple(sh.shape[:3]) != tuple(density.shape):
                continue  # half replaced: the other leaf follows
            self._held[name] = arrays
            f = p.scene.fields[name]
            f.density, f.sh = density.numpy().copy(), sh.numpy().copy()
            for path, value in zip(ds.grid_paths(name), (f.density, f.sh), strict=True):
                p.truth[path] = value
            self.states[name].grid = self._grid(name)
            lattices = f.resolutions()
            self.phase[name] = lattices.index(ds.lattice(name)) if ds.lattice(name) in lattices else 0
            if hasattr(p, "optimizer"):
                p._rebuild_optimizer_keep_clock()

    def move_to_lattice(self, name: str, resolution: tuple[int, int, int]) -> None:
        """Resample field `name` to `resolution`, one of its schedule's lattices (`Field.resolutions()`);
        the optimizer is rebuilt for its new arrays (fresh moments; a restored keyframe then loads them)."""
        self.p.ds.move_to_lattice(name, resolution)

    def reset(self) -> None:
        self.reset_state()

    def after_reset(self) -> None:
        self.publish()

    def reset_state(self) -> None:
        """Each field back to its first lattice and starting values, a fresh occupancy grid, no test PSNR
        yet. The caller (`Problem.reset`) then writes the initial values and rebuilds the optimizer."""
        p = self.p
        for name, state in self.states.items():
            f = state.field
            if f.type != "voxel_grid":
                state.reset()  # fresh occupancy; the leaves keep their shapes (Problem.reset writes the values)
                continue
            self.phase[name] = 0
            density, sh = (self.start_values[q] for q in p.ds.grid_paths(name))
            p.ds.replace_grid(name, density, sh)
            state.occupancy = (OccupancyGrid(f.occupancy.resolution, state.grid.aabb, device=p.ds.device)
                               if f.occupancy is not None else None)
        self.psnr_test = math.nan

    # -- targets ---------------------------------------------------------------------------------
    def _target_files(self) -> dict[str, str]:
        """{camera: image file} of the target files: the dataset's frames and `targets.images`."""
        spec, p = self.p.target_spec, self.p
        files = dict(p._dataset_files)
        if spec.images:
            files.update({item.camera: str(Path(p.scene.path).parent / item.file) for item in spec.images})
        return files

    def _training_view_names(self) -> list[str]:
        """The cameras `build_targets` trains on (before it runs): the target files' cameras that are not held out,
        else the rendered targets' cameras."""
        files = self._target_files()
        if files:
            return [c for c in files if c not in self.held_out]
        return list(self.p.target_spec.cameras or [])

    def build_targets(self) -> tuple[list[Target], list[Target]]:
        """(training targets, held-out test targets) from the problem's target spec."""
        p = self.p
        spec, scene, ds = p.target_spec, p.scene, p.ds
        current = p._current_values()
        files = self._target_files()
        train_files = {c: f for c, f in files.items() if c not in self.held_out}
        test_files = {c: f for c, f in files.items() if c in self.held_out} | self.test_files
        if files and not train_files:
            raise SceneError(scene.path, "optimize.targets", "every view is held out (split: test); nothing "
                             "is left to train on")
        no_images = SimpleNamespace(images=None)
        views = list(train_files) if files else list(spec.cameras or [])
        pixels = sum(scene.cameras[c].width * scene.cameras[c].height for c in views if c in scene.cameras)
        try:  # before a target is read or rendered
            memory.require(memory.RAY_BANK_BYTES_PER_PIXEL * pixels, f"the rays of the {len(views)} training views "
                           f"({pixels / 1e6:.1f} Mpixels, {memory.RAY_BANK_BYTES_PER_PIXEL} B each)")
        except memory.MemoryBudgetError as exc:
            raise SceneError(scene.path, "optimize.targets", f"{exc}; use a downscaled dataset (drstudio capture "
                             "--downscale N)") from None
        masks = dataset_masks(scene, spec) | dataset_masks(scene, spec, "test_transforms", "test")
        if files:
            train = build_targets(scene, ds, p.truth, no_images, current, train_files, masks)
        else:
            train = build_targets(scene, ds, p.truth, spec, current)
        test = []
        if test_files:
            test = build_targets(scene, ds, p.truth, no_images, current, test_files, masks)
        elif spec.test_cameras:
            test = build_targets(scene, ds, p.truth, SimpleNamespace(cameras=spec.test_cameras, images=None),
                                 current)
        self.bank = RayBank([(ds.arrays[camera_intrinsics(t.camera)], ds.arrays[camera_pose(t.camera)],
                              scene.cameras[t.camera].width, scene.cameras[t.camera].height, t.image)
                             for t in train], ds.device)
        self.train_cameras = [t.camera for t in train]
        self.bank_poses = np.stack([ds.get(camera_pose(c)).astype(np.float32) for c in self.train_cameras])
        self.bank_offsets = np.concatenate([[0], np.cumsum(self.bank.sizes)]).astype(np.int64)
        # pixels a frame's mask ignores are never drawn into a batch, nor measured (`eval_mask`)
        self.seen = {t.camera: t.mask.numpy() > 0 for t in train + test if t.mask is not None}
        self.view_rays = None  # per training view: the flat ray indices a batch may draw (None: every pixel)
        if any(t.camera in self.seen for t in train):
            self.view_rays = [self.bank_offsets[v] + (np.flatnonzero(self.seen[c]) if c in self.seen
                                                      else np.arange(self.bank.sizes[v]))
                              for v, c in enumerate(self.train_cameras)]
            self.drawable = np.concatenate(self.view_rays)
        self.view_radius = np.array([view_radius(scene.cameras[c].intrinsics) for c in self.train_cameras],
                                    np.float32)
        self.view_time = self._frame_times()
        for name, state in self.states.items():
            rows = getattr(state.field, "appearance", None)
            rows = rows if rows is not None else getattr(state.field, "transient", None)
            if rows is not None and rows.shape[0] != len(train):
                raise SceneError(scene.path, "optimize.targets", f"{_label(name)}: its per-image embeddings have "
                                 f"{rows.shape[0]} rows, the targets {len(train)} training views")
            if state.field.type == "dynamic":
                missing = [t.camera for t in train + test if t.camera not in self.view_time]
                if missing:
                    raise SceneError(scene.path, "optimize.targets", f"{_label(name)} is dynamic: views "
                                     f"{', '.join(missing[:4])} have no frame time")
        return train, test

    def _frame_times(self) -> dict[str, float]:
        """camera -> `time` of its transforms.json frame (`frame_<i>`, `test_<i>`), for frames that have one."""
        spec, scene = self.p.target_spec, self.p.scene
        base = Path(scene.path).parent if scene.path else Path(".")
        out = {}
        for key, prefix in (("transforms", "frame"), ("test_transforms", "test")):
            path = getattr(spec, key, None)
            if path:
                for i, f in enumerate(load_transforms(base / path)):
                    if f.time is not None:
                        out[f"{prefix}_{i:03d}"] = float(f.time)
        return out

    def view_ids(self, indices: np.ndarray) -> np.ndarray:
        """The training view (index into `train_cameras`) of each flat ray index."""
        return np.searchsorted(self.bank_offsets, np.asarray(indices), side="right") - 1

    # -- the step --------------------------------------------------------------------------------
    def draw_batch(self) -> np.ndarray:
        return self.batch(self.p._view_rng)

    def batch(self, rng: np.random.Generator) -> np.ndarray:
        """Flat ray indices of this step's batch (`rng`: the problem's batch RNG): uniform over every training
        pixel; for a dynamic field, `frames_per_batch` distinct training views (so times) and the rays
        uniform over their pixels, grouped by view."""
        state = self.state
        if state.field.type != "dynamic":
            if self.view_rays is not None:  # the pixels the frames' masks use
                return self.drawable[rng.integers(0, len(self.drawable), size=self.rays_per_batch)]
            return rng.integers(0, len(self.bank), size=self.rays_per_batch)
        n_views = len(self.train_cameras)
        k = min(int(state.spec.frames_per_batch), n_views)
        views = np.sort(rng.choice(n_views, size=k, replace=False))
        counts = np.full(k, self.rays_per_batch // k)
        counts[: self.rays_per_batch % k] += 1
        sizes = np.diff(self.bank_offsets)
        if self.view_rays is not None:
            return np.concatenate([self.view_rays[v][rng.integers(0, len(self.view_rays[v]), size=c)]
                                   for v, c in zip(views, counts, strict=True)])
        return np.concatenate([self.bank_offsets[v] + rng.integers(0, sizes[v], size=c)
                               for v, c in zip(views, counts, strict=True)])

    def _jitter(self, step: int) -> int | None:
        """The pixel jitter's seed of `step` (`optimize.pixel_jitter`), or None: rays through pixel centres."""
        return step if self.pixel_jitter else None

    def _sparse_step(self, step: int) -> bool:
        """Whether step `step` writes the voxel grids' gradients only at the lattice points its samples touch
        (`active_elements`): one process, and no term this step that writes every lattice point (TV on its
        steps, `density_l1`)."""
        p = self.p
        if p.comm is not None or p.shards != 1:
            return False
        for state in self.states.values():
            f = state.field
            if f.type != "voxel_grid" or f.density_l1 > 0.0:
                return False
            if p.weights.get("tv", 0.0) > 0.0 and step % f.tv_every == 0:
                return False
        return True

    def active_elements(self) -> dict | None:
        """{path: (points int32 (K,), values per point)} of this step's free voxel-grid leaves, whose gradients
        are 0 outside those lattice points (the points the step's samples touched, flagged by the grids' queries),
        or None when this step wrote dense gradients (`_sparse_step`). Read after the backward."""
        if not self._touched_step:
            return None
        free, out = set(self.p.free_paths()), {}
        for name, mask in self._touched.items():
            points = wp.array(np.flatnonzero(mask.numpy()).astype(np.int32), dtype=wp.int32, device=mask.device)
            density, sh = self.p.ds.grid_paths(name)
            for path in (density, sh):
                if path in free:
                    arr = self.p.ds.arrays[path]
                    out[path] = (points, arr.size // mask.size)
        return out

    def threads(self) -> int:
        """CPU threads a step's voxel-grid work runs on (`workers`; None: one per core; 1 off the CPU)."""
        if not self.p.ds.device.is_cpu:
            return 1
        return max(1, int(self.workers)) if self.workers is not None else default_workers()

    def before_step(self, step: int) -> None:
        """Refresh occupancy grids that are due (outside the tape; step 0 keeps the all-occupied start). Data-
        parallel ranks (the problem's `comm`) each refresh a slab of cells and all-gather the rest (the same bits
        as one process refreshing all). Arms the grids' touched flags on a sparse step (`active_elements`)."""
        self._touched_step = self._sparse_step(step)
        threads = self.threads()
        for name, state in self.states.items():
            if state.field.type != "voxel_grid":
                continue
            state.grid.workers = threads
            if not self._touched_step:
                state.grid.touched = None  # the mask is kept for the next sparse step
                continue
            mask = self._touched.get(name)
            if mask is None or tuple(mask.shape) != tuple(state.grid.density.shape):
                mask = wp.zeros(tuple(state.grid.density.shape), dtype=wp.uint8, device=self.p.ds.device)
                self._touched[name] = mask
            else:
                mask.zero_()
            state.grid.touched = mask
        comm = self.p.comm
        for state in self.states.values():
            occ = state.field.occupancy
            if state.field.type != "voxel_grid":
                state.update_occupancy(step)
            elif state.occupancy is not None and step > 0 and step % occ.update_every == 0:
                split = {}
                if comm is not None and comm.world > 1:
                    split = {"rows": rows_of(state.occupancy.resolution[0], comm.rank, comm.world),
                             "combine": lambda d: _gather_rows(comm, d, step)}
                state.occupancy.update(state.grid.query_density, threshold=occ.threshold, step=step, **split)

    def record_loss(self, batch: np.ndarray, terms: dict, weights: dict, step: int) -> dict:
        """Forward pass of one step under the caller's tape: the ray batch through every field, image
        losses on the batch, TV of the free grids. Neural fields run (and back-propagate) in torch here and
        leave their gradients in their leaves' `.grad` and their loss values in `terms`. Returns {} (no
        whole-image outputs). `batch`: flat ray indices (`batch`)."""
        p, indices = self.p, batch
        free = set(p.free_paths())
        for name, state in self.states.items():
            kind = state.field.type
            if kind in ("neural", "nerf_w", "hash_grid"):
                origins, directions, target = self.bank.gather(indices, jitter_seed=self._jitter(step))
                views = self.view_ids(indices)
                state.record_loss(origins, directions, target, views, self.view_radius[views], terms, weights,
                                  step, free)
                continue
            if kind == "dynamic":
                times = np.array([self.view_time[self.train_cameras[v]] for v in self.view_ids(indices)])
                groups = []
                for time in np.unique(times):  # one blend of the time slices per distinct time
                    o, d, t = self.bank.gather(indices[times == time], jitter_seed=self._jitter(step))
                    groups.append((float(time), o, d, t))
                state.record_loss(groups, len(indices), terms, weights, step, free)
                continue
            # a rank's share: a contiguous block of the batch, its jitter and its part of the batch mean as in
            # the whole batch (renderer.optim.distributed)
            rank, ranks = self.share
            lo, hi = rank * len(indices) // ranks, (rank + 1) * len(indices) // ranks
            f = state.field
            if hi > lo:
                origins, directions, target = self.bank.gather(indices[lo:hi], jitter_seed=self._jitter(step),
                                                               first_ray=lo)
                if self.refined:  # the rays at the cameras' current poses, differentiable w.r.t. the free ones
                    poses = [p.ds.arrays[camera_pose(c)] for c in self.train_cameras]
                    origins, directions = refine_rays(self.view_ids(indices[lo:hi]), origins, directions,
                                                      self.bank_poses, poses)
                rgb, _, _, samples, densities = volume_render(state.grid, origins, directions, state.n_samples,
                                                              p.ds.background_color, seed=step, jitter=True,
                                                              occupancy=state.occupancy, first_ray=lo,
                                                              return_densities=True,
                                                              gradient_scaling=f.gradient_scaling)
                part = (hi - lo) / len(indices)
                if f.loss_space == "srgb":
                    rgb, target = srgb.linear_to_srgb(rgb), srgb.linear_to_srgb(target)
                for loss in ("l1", "l2"):
                    if loss in terms:
                        getattr(losses, loss)(rgb, target, terms[loss], weight=weights[loss] * part)
                if f.distortion > 0.0:
                    g = state.grid
                    span = (origins, g.aabb, 0.0, contract_far(g.aabb)) if g.contract else None
                    regularizers.distortion(densities, samples, directions, _term(terms, "distortion", p.ds.device),
                                            f.distortion * part, length=_box_diagonal(g), contract=span)
            if f.density_l1 > 0.0 and rank == 0 and p.ds.grid_paths(name)[0] in free:
                regularizers.density_l1(state.grid, _term(terms, "density_l1", p.ds.device), f.density_l1)
            if "tv" in terms and step % f.tv_every == 0:  # rank r: the slab r of N of the lattice (x)
                density, sh = p.ds.grid_paths(name)
                w_density = weights["tv"] * f.tv_every if density in free else 0.0
                w_sh = weights["tv"] * f.tv_every if sh in free else 0.0
                nx = state.grid.resolution[0]
                if w_density or w_sh:
                    state.grid.total_variation(terms["tv"], w_density, w_sh, rows=rows_of(nx, rank, ranks))
        return {}

    def after_step(self, step: int) -> dict:
        """Upsample the grids due after this step, evaluate the test PSNR when due, publish a copy for other
        threads when due; the read-out terms."""
        for name, state in self.states.items():
            if state.field.type == "voxel_grid" and step + 1 in state.field.upsample_at:
                self.move_to_lattice(name, state.field.resolutions()[self.phase[name] + 1])
        # a new copy only for a reader: one that read the last copy (`published()`) since it was made; a headless
        # run copies nothing (a 256^3 grid at SH degree 1 is 0.9 GB a copy)
        if self._read_at >= self._published_at and _time.monotonic() - self._published_at >= PUBLISH_INTERVAL:
            self.publish(step + 1)
        if not self.p.test_targets or self.eval_every == 0:
            return {}
        if step % self.eval_every == 0:
            start = _time.perf_counter()
            self.psnr_test = self.test_psnr(sampled=True)
            self.eval_seconds += _time.perf_counter() - start
        return {PSNR_TERM: self.psnr_test}

    # -- read-outs -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """{PSNR_TERM: the mean PSNR of the held-out views} ({} without test views)."""
        return {PSNR_TERM: self.test_psnr()} if self.p.test_targets else {}

    def evaluation_views(self, targets: list[Target]) -> dict[str, tuple[RenderOutput, wp.array | None]]:
        """NeRF-W first fits the held-out views' appearance embeddings on their left halves; a held-out view's
        mask is then its right half (`eval_mask`)."""
        held_out = [t for t in targets if t.camera in {u.camera for u in self.p.test_targets}]
        self.fit_test_appearance(held_out)
        return {t.camera: (self.render(t.camera), self.eval_mask(t.camera))
                for t in progress.track(EVALUATION_PHASE, targets, unit="view")}

    def result_images(self) -> dict[str, np.ndarray]:
        """NeRF-W with transient embeddings: `transient_<camera>` for the first four training views: the static
        + transient render, the target and the transient share of the opacity, side by side."""
        state, out = self.state, {}
        if state.field.type != "nerf_w" or state.leaf("transient") is None:
            return out
        targets = self.p.target_images()
        for camera in self.train_cameras[:4]:
            rgb, share = self.render_transient(camera)
            gap = np.ones((rgb.shape[0], 2, 3), np.float32)
            out[f"transient_{camera}"] = np.concatenate([rgb, gap, targets[camera], gap,
                                                         np.repeat(share[..., None], 3, -1)], axis=1)
        return out

    def view_images(self, camera: str, param_grads: dict) -> dict:
        """The snapshot render of `camera` (field leaves have no gradient images); publishes a copy of the
        field for other threads too (the engine asks after every command)."""
        self.publish()
        return {"render": self.render(camera).numpy(), "texture_grads": {}, "vertex_grads": {}}

    @property
    def renders_rows(self) -> bool:
        """Whether `render(..., rows=)` renders a block of a view's rows (a voxel grid; Problem's shared
        thumbnails of a distributed run)."""
        return self.state.field.type == "voxel_grid"

    def render(self, camera: str, intrinsics: wp.array | None = None, width: int | None = None,
               height: int | None = None, rows: tuple[int, int] | None = None) -> RenderOutput:
        """A whole view through `camera` (midpoint samples, occupancy skipping, the storage precision);
        `intrinsics`/`width`/`height` override the camera's (e.g. a smaller thumbnail); `rows` (first, end):
        only those image rows, the whole view's pixels bit for bit (`renders_rows` models only). A dynamic field
        renders at the camera's frame time; NeRF-W renders its static component with the camera's own
        appearance embedding (a training view), the one fitted on its left half (a held-out view, after an
        evaluation), else the mean embedding."""
        p = self.p
        c = p.scene.cameras[camera]
        intr = p.ds.arrays[camera_intrinsics(camera)] if intrinsics is None else intrinsics
        state = self.state
        w, h = width or c.width, height or c.height
        if state.field.type == "voxel_grid":
            return render_field_view(state, intr, p.ds.arrays[camera_pose(camera)], w, h,
                                     p.ds.background_color, state.occupancy, grid=state.storage_grid(), rows=rows)
        if rows is not None:
            raise ValueError(f"rows: a {state.field.type} field renders whole views only")
        origins, directions = readout.camera_rays(intr, p.ds.arrays[camera_pose(camera)], w, h, p.ds.device)
        rgb = state.render_rays_readout(origins, directions, p.ds.background_color, **self._view_settings(camera,
                                                                                                    intr.numpy()))
        return render_output(rgb, w, h, p.ds.device)

    def _view_settings(self, camera: str, intrinsics: np.ndarray) -> dict:
        """render_rays_readout's per-view keywords: the frame time, NeRF-W's embedding, the IPE radius."""
        state = self.state
        kind = state.field.type
        if kind == "dynamic":
            return {"time": self.view_time.get(camera)}
        out = {"radius": view_radius(intrinsics)}
        if kind == "nerf_w" and state.leaf("appearance") is not None:
            if camera in self.train_cameras:
                out["appearance"] = state.leaf("appearance").numpy()[self.train_cameras.index(camera)]
            elif camera in state.fitted_appearance:
                out["appearance"] = state.fitted_appearance[camera]
        return out

    def render_transient(self, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """NeRF-W, a training view: ((H, W, 3) the static + transient render with the view's embeddings,
        (H, W) the transient share of each pixel's opacity)."""
        p, state = self.p, self.state
        if state.field.type != "nerf_w" or camera not in self.train_cameras:
            raise ValueError(f"render_transient: {camera!r} is not a training view of a nerf_w field")
        c = p.scene.cameras[camera]
        o, d = readout.camera_rays(c.intrinsics, c.pose, c.width, c.height, p.ds.device)
        rgb, share = state.render_rays_readout(o, d, p.ds.background_color, radius=view_radius(c.intrinsics),
                                               transient_view=self.train_cameras.index(camera), with_opacity=True)
        return rgb.reshape(c.height, c.width, 3), share.reshape(c.height, c.width)

    # -- free-camera read-outs --------------------------------------------------------------------
    def render_free(self, pose, intrinsics, width: int, height: int, *, time: float | None = None,
                    appearance=None) -> np.ndarray:
        """(height, width, 3) float32 linear RGB of the live field seen from a free camera, on the training
        thread (other threads render `published()`, a copy). See `PublishedField.render` for the arguments."""
        return _render_free(self.state, self.p.ds.background_color, pose, intrinsics, width, height, time,
                            appearance)

    def time_range(self) -> tuple[float, float] | None:
        """(t_min, t_max) of a dynamic field's time axis, None for static fields."""
        return self.state.time_range()

    def occupancy(self, name: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(occupied cells bool (nx, ny, nz), aabb float32 (6,)) of field `name` (default: the first), None
        when it has no occupancy grid. A copy of the grid of the moment."""
        state = self.states[name] if name is not None else self.state
        return _occupancy(state.occupancy)

    # -- the published copy (what other threads read) ------------------------------------------------
    def publish(self, step: int | None = None) -> PublishedField:
        """Make a copy of the first field's state (values, occupied cells) the one `published()` returns.
        Called on the training thread: after a reset, from `view_images` (after every engine command and at
        the engine's image rate) and after a step when `PUBLISH_INTERVAL` seconds have passed and the last copy
        was read (`published()`)."""
        with recording(None):
            pub = PublishedField(self.state.published_copy(), wp.clone(self.p.ds.background_color,
                                                                        requires_grad=False),
                                 self.p.step_index if step is None else step)
        self._published, self._published_at = pub, _time.monotonic()
        return pub

    def published(self) -> PublishedField | None:
        """The last published copy (any thread; a reference read, never a wait), None before the first. Reading
        it asks for the next: after a step, a new copy is made only when the last one was read since it was made
        and `PUBLISH_INTERVAL` seconds have passed."""
        self._read_at = _time.monotonic()
        return self._published

    def eval_mask(self, camera: str) -> wp.array | None:
        """(N,) float32 mask of the pixels a view's PSNR is measured on: the pixels its frame's mask uses
        (`mask_path`), and for a held-out view of NeRF-W only the right half (its protocol fits the view's
        appearance embedding on the left half, columns < width // 2); None: every pixel."""
        c = self.p.scene.cameras[camera]
        seen = self.seen.get(camera)
        m = None if seen is None else seen.astype(np.float32)
        if self.state.field.type == "nerf_w" and self.state.leaf("appearance") is not None \
                and camera not in self.train_cameras:
            half = np.zeros((c.height, c.width), np.float32)
            half[:, c.width // 2:] = 1.0
            m = half.ravel() if m is None else m * half.ravel()
        return None if m is None else wp.array(m, dtype=float, device=self.p.ds.device)

    def fit_test_appearance(self, targets: list[Target]) -> None:
        """NeRF-W: fit each held-out view's appearance embedding on the left half of its target
        (`NeuralState.fit_appearance`); later renders of the view use it."""
        state, p = self.state, self.p
        if state.field.type != "nerf_w" or state.leaf("appearance") is None:
            return
        for t in targets:
            c = p.scene.cameras[t.camera]
            o, d = readout.camera_rays(c.intrinsics, c.pose, c.width, c.height, p.ds.device)
            left = (np.arange(c.width * c.height) % c.width) < c.width // 2
            left = np.flatnonzero(left & self.seen[t.camera] if t.camera in self.seen else left)
            if left.size > APPEARANCE_FIT_RAYS:  # an evenly spread subset: a few numbers need few pixels
                left = left[np.linspace(0, left.size - 1, APPEARANCE_FIT_RAYS).round().astype(np.int64)]
            idx = wp.array(left.astype(np.int32), dtype=wp.int32, device=p.ds.device)
            lo, ld, lt = gather_rays(idx, o, d, t.image)
            state.fitted_appearance[t.camera] = state.fit_appearance(lo, ld, lt.numpy(), p.ds.background_color,
                                                                     view_radius(c.intrinsics))

    def eval_pixels(self, camera: str) -> np.ndarray:
        """The flat pixel indices (sorted int64) a sampled evaluation of `camera` renders: at most `eval_rays`
        of the pixels its PSNR is measured on (`eval_mask`), drawn without replacement with a seed made from the
        camera's name (the same pixels at every evaluation, in every run; the run's RNGs are not touched)."""
        if camera not in self._eval_pixels:
            c = self.p.scene.cameras[camera]
            mask = self.eval_mask(camera)
            pixels = np.arange(c.width * c.height) if mask is None else np.flatnonzero(mask.numpy() > 0)
            if pixels.size > self.eval_rays:
                rng = np.random.default_rng(zlib.crc32(camera.encode()))
                pixels = np.sort(rng.choice(pixels, self.eval_rays, replace=False))
            self._eval_pixels[camera] = pixels.astype(np.int64)
        return self._eval_pixels[camera]

    def render_pixels(self, camera: str, pixels: np.ndarray) -> np.ndarray:
        """(len(pixels), 3) float32 colors of the flat pixel indices `pixels` of `camera`'s view, as `render`
        draws them (midpoints, the occupancy grid, the storage precision, the view's time / embedding)."""
        p = self.p
        c = p.scene.cameras[camera]
        intr = p.ds.arrays[camera_intrinsics(camera)]
        o, d = readout.camera_rays(intr, p.ds.arrays[camera_pose(camera)], c.width, c.height, p.ds.device)
        idx = wp.array(np.asarray(pixels, np.int32), dtype=wp.int32, device=p.ds.device)
        colors = wp.zeros((c.width * c.height, 3), dtype=float, device=p.ds.device)
        o, d, _ = gather_rays(idx, o, d, colors)
        return self.state.render_rays_readout(o, d, p.ds.background_color,
                                              **self._view_settings(camera, intr.numpy()))

    def psnr_by_view(self, targets: list[Target], sampled: bool = False) -> dict[str, float]:
        """{camera: PSNR (dB, peak 1)} of each target view: of every pixel (on its `eval_mask`), or with
        `sampled` of its `eval_pixels` only."""
        if not sampled:
            self.fit_test_appearance([t for t in targets if t.camera not in self.train_cameras])
            return {t.camera: losses.psnr(self.render(t.camera).image, t.image, self.eval_mask(t.camera))
                    for t in targets}
        out = {}
        for camera, (rgb, ref) in self.sampled_views(targets).items():
            mse = float(np.mean((rgb.astype(np.float64) - ref.astype(np.float64)) ** 2))
            out[camera] = math.inf if mse == 0.0 else (10.0 * math.log10(1.0 / mse) if math.isfinite(mse)
                                                       else math.nan)
        return out

    def sampled_views(self, targets: list[Target]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{camera: (rendered (n, 3), target (n, 3))} float32 colors at each view's `eval_pixels` (NeRF-W first
        fits the held-out views' appearance embeddings on their left halves)."""
        self.fit_test_appearance([t for t in targets if t.camera not in self.train_cameras])
        out = {}
        for t in targets:
            pixels = self.eval_pixels(t.camera)
            out[t.camera] = (self.render_pixels(t.camera, pixels), t.image.numpy()[pixels])
        return out

    def test_psnr(self, sampled: bool = False) -> float:
        """Mean over the held-out views of each view's PSNR (dB, peak 1), NaN without test views; `sampled`:
        on each view's `eval_pixels` only (what training reports)."""
        values = list(self.psnr_by_view(self.p.test_targets, sampled=sampled).values())
        return float(np.mean(values)) if values else math.nan

    def parameter_metrics(self) -> dict:
        """{path: {...}} for the optimized field parameters: shape, storage, bytes (no ground truth)."""
        out = {}
        for path in self.p.param_specs:
            if self.p.ds.params[path].group is not Group.FIELDS:
                continue  # refined camera poses: reported like any small parameter
            state = self.states[self.p.ds.params[path].owner]
            arr = self.p.ds.arrays[path]
            storage = state.field.storage if state.field.type == "voxel_grid" else "float32"
            itemsize = 2 if storage == "float16" else 4
            out[path] = {"shape": list(arr.shape), "storage": storage, "bytes": int(np.prod(arr.shape)) * itemsize}
        return out

    # -- keyframes (renderer.recording.state: stored and restored after the parameter values) ----------
    def extra_state(self) -> dict[str, np.ndarray]:
        """Training state that is not a parameter but steers later steps: each field's occupancy grid
        (`occupancy.NAME.density` float32, `occupancy.NAME.occupied` uint8, both (nx, ny, nz)) and the
        carried held-out PSNR (`psnr_test_db`, (1,), reported between evaluations). With it a resumed run
        samples the same points as the recorded one."""
        out = {PSNR_TERM: np.array([self.psnr_test], np.float64)}
        for name, state in self.states.items():
            if state.occupancy is not None:
                out[occupancy_key(name, "density")] = state.occupancy.density.numpy().copy()
                out[occupancy_key(name, "occupied")] = state.occupancy.occupied.numpy().copy()
        return out

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `extra_state` stored; a field whose grid is missing or of another shape keeps its
        own (ValueError names the entry)."""
        if PSNR_TERM in state:
            self.psnr_test = float(np.asarray(state[PSNR_TERM]).ravel()[0])
        for name, st in self.states.items():
            if st.occupancy is None:
                continue
            for key in ("density", "occupied"):
                entry = occupancy_key(name, key)
                if entry not in state:
                    continue
                arr = getattr(st.occupancy, key)
                value = np.asarray(state[entry])
                if value.shape != tuple(arr.shape):
                    raise ValueError(f"{entry}: expected shape {tuple(arr.shape)}, got {value.shape}")
                arr.assign(wp.array(value.astype(arr.numpy().dtype), dtype=arr.dtype, device=arr.device))

    def export(self) -> dict[str, dict[str, np.ndarray]]:
        """{field name: arrays of `field_NAME.npz`}: a voxel grid's "density", "sh" (at the storage precision),
        "aabb", "sh_degree", "activation"; a dynamic field's density (T, nx, ny, nz), sh (T, nx, ny, nz, 3K),
        times, aabb, sh_degree, activation; a neural field's flat "weights" with its layout (names, offsets),
        its spec (JSON), aabb, type, and NeRF-W's "appearance" / "transient" embeddings."""
        out = {}
        for name, state in self.states.items():
            if state.field.type != "voxel_grid":
                out[name] = state.export()
                continue
            g = state.storage_grid()
            out[name] = {"density": g.density.numpy().copy(), "sh": g.sh.numpy().copy(),
                         "aabb": np.asarray(g.aabb, np.float32), "sh_degree": np.int32(g.sh_degree),
                         "activation": np.array(g.activation), "contract": np.bool_(g.contract)}
        return out


FieldTraining = FieldModel  # the name of earlier versions
