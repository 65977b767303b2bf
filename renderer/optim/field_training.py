"""Training a scene's radiance field inside a `Problem` (scenes/README.md "fields", docs/volume.md "Training").

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
  term `psnr_test_db` (carried between evaluations; it is a read-out, not part of the loss).
The other representations ("neural", "nerf_w", "dynamic") keep their state in `field_models`
(`NeuralState`, `DynamicState`); this class dispatches on the field's type.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import warp as wp

from ..device_scene import DeviceScene
from ..errors import SceneError
from ..render import RenderOutput
from ..render_field import FieldState, RayBank, field_grid, gather_rays, render_field_view
from ..scene import Camera, Scene
from ..scene_schema import DEFAULT_EVAL_EVERY, DEFAULT_RAYS_PER_BATCH
from ..transforms_json import load_transforms
from ..volume import OccupancyGrid, readout
from ..volume import render as volume_render
from . import losses
from .field_models import DynamicState, NeuralState, render_output, view_radius
from .targets import Target, build_targets

# parameter kinds of fields: unconstrained raw values (grids), flat network weights, per-image embeddings
FIELD_KINDS = ("density", "sh", "weights", "embedding")
GRID_KINDS = ("density", "sh")
PSNR_TERM = "psnr_test_db"
APPEARANCE_FIT_RAYS = 2048  # NeRF-W's held-out protocol: at most this many left-half pixels fit a view's embedding


def add_test_cameras(scene: Scene, target_spec) -> dict[str, str]:
    """For `targets.test_transforms`, add one camera `test_<index>` per frame to `scene` (before its
    DeviceScene is built) and return {camera name: image file}. Otherwise {}."""
    path = getattr(target_spec, "test_transforms", None)
    if not path:
        return {}
    base = Path(scene.path).parent if scene.path else Path(".")
    files = {}
    for i, f in enumerate(load_transforms(base / path)):
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
    frames = json.loads((base / path).read_text()).get("frames", [])
    return {f"frame_{i:03d}" for i, fr in enumerate(frames) if isinstance(fr, dict) and fr.get("split") == "test"}


class FieldDeviceScene(DeviceScene):
    """A DeviceScene whose field values may be set at another lattice of the field's coarse-to-fine
    schedule (restoring a keyframe taken after an upsample): the field first moves to that lattice."""

    training: FieldTraining | None = None

    def set(self, path, value: np.ndarray, *, check_range: bool = False) -> None:
        entry = self.params[path]
        if self.training is not None and entry.kind.is_grid \
                and self.training.states[entry.owner].field.type == "voxel_grid":
            shape = tuple(np.shape(value))
            if shape != tuple(self.arrays[entry.path].shape):
                self.training.move_to_lattice(entry.owner, shape[:3])
        super().set(path, value, check_range=check_range)


class FieldTraining:
    """The field-specific part of a `Problem` whose scene has fields (see the module docstring)."""

    def __init__(self, problem, test_files: dict[str, str]):
        self.p = problem
        spec = problem.spec
        self.rays_per_batch = int(spec.rays_per_batch or DEFAULT_RAYS_PER_BATCH)
        self.eval_every = int(DEFAULT_EVAL_EVERY if spec.eval_every is None else spec.eval_every)
        self.test_files = dict(test_files)
        self.held_out = held_out_frames(problem.scene, spec.targets)
        self.states: dict[str, FieldState | NeuralState | DynamicState] = {}
        self.phase: dict[str, int] = {}
        params = problem.scene.params()
        # the values each field starts (and resets) from: the optimized ones' inits, the fixed ones' values
        self.start_values: dict[str, np.ndarray] = {}
        for name, f in problem.scene.fields.items():
            if f.type == "voxel_grid":
                self.states[name] = FieldState(f, self._grid(name))
            elif f.type == "dynamic":
                self.states[name] = DynamicState(f, problem.ds, name)
            else:
                self.states[name] = NeuralState(f, problem.ds, name)
            for key in f.values():
                path = f"fields.{name}.{key}"
                self.start_values[path] = problem.initial.get(path, params[path].value.copy())
        self.bank: RayBank | None = None
        self.train_cameras: list[str] = []
        self.bank_offsets = np.zeros(1, np.int64)  # first flat ray index of each training view, then the total
        self.view_radius = np.zeros(0, np.float32)  # cone radius per unit depth of each training view (IPE)
        self.view_time: dict[str, float] = {}  # camera -> frame time (dynamic fields)
        self.psnr_test = math.nan
        if isinstance(problem.ds, FieldDeviceScene):
            problem.ds.training = self
        self.reset_state()

    @property
    def state(self):
        """The scene's field state (one field per scene so far, scene_schema)."""
        return next(iter(self.states.values()))

    # -- arrays ----------------------------------------------------------------------------------
    def _grid(self, name: str):
        a = self.p.ds.arrays
        return field_grid(self.p.scene.fields[name], a[f"fields.{name}.density"], a[f"fields.{name}.sh"])

    def _install(self, name: str, density: wp.array, sh: wp.array) -> None:
        """Make (density, sh) the field's leaf arrays (a new lattice): DeviceScene leaves, the scene's values
        (so `Scene.params()` shapes follow) and the problem's `truth` (a field has none; it mirrors the
        scene so nothing reads as an edited target)."""
        p, f = self.p, self.p.scene.fields[name]
        f.density, f.sh = density.numpy().copy(), sh.numpy().copy()
        for key, arr, value in (("density", density, f.density), ("sh", sh, f.sh)):
            path = f"fields.{name}.{key}"
            p.ds.arrays[path] = arr
            p.ds.params.resize(path, value.shape)
            p.truth[path] = value
        self.states[name].grid = self._grid(name)

    def move_to_lattice(self, name: str, resolution: tuple[int, int, int]) -> None:
        """Resample field `name` to `resolution`, one of its schedule's lattices (`Field.resolutions()`),
        and rebuild the optimizer for its new arrays (fresh moments; a restored keyframe then loads them)."""
        state = self.states[name]
        lattices = state.field.resolutions()
        if tuple(resolution) not in lattices:
            raise ValueError(f"fields.{name}: a value of lattice {tuple(resolution)} does not fit the field, whose "
                             f"lattices are {lattices}")
        self.phase[name] = lattices.index(tuple(resolution))
        new = state.grid.upsample(resolution)
        self._install(name, new.density, new.sh)
        if hasattr(self.p, "optimizer"):
            self.p._rebuild_optimizer_keep_clock()

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
            density, sh = (self.start_values[f"fields.{name}.{k}"] for k in ("density", "sh"))
            self._install(name, wp.array(density, dtype=float, device=p.ds.device, requires_grad=True),
                          wp.array(sh, dtype=float, device=p.ds.device, requires_grad=True))
            state.occupancy = (OccupancyGrid(f.occupancy.resolution, state.grid.aabb, device=p.ds.device)
                               if f.occupancy is not None else None)
        self.psnr_test = math.nan

    # -- targets ---------------------------------------------------------------------------------
    def build_targets(self) -> tuple[list[Target], list[Target]]:
        """(training targets, held-out test targets) from the problem's target spec."""
        p = self.p
        spec, scene, ds = p.target_spec, p.scene, p.ds
        current = p._current_values()
        files = dict(p._dataset_files)
        if spec.images:
            files.update({item.camera: str(Path(scene.path).parent / item.file) for item in spec.images})
        train_files = {c: f for c, f in files.items() if c not in self.held_out}
        test_files = {c: f for c, f in files.items() if c in self.held_out} | self.test_files
        if files and not train_files:
            raise SceneError(scene.path, "optimize.targets", "every view is held out (split: test); nothing "
                             "is left to train on")
        no_images = SimpleNamespace(images=None)
        if files:
            train = build_targets(scene, ds, p.truth, no_images, current, train_files)
        else:
            train = build_targets(scene, ds, p.truth, spec, current)
        test = []
        if test_files:
            test = build_targets(scene, ds, p.truth, no_images, current, test_files)
        elif spec.test_cameras:
            test = build_targets(scene, ds, p.truth, SimpleNamespace(cameras=spec.test_cameras, images=None),
                                 current)
        self.bank = RayBank([(ds.arrays[f"cameras.{t.camera}.intrinsics"], ds.arrays[f"cameras.{t.camera}.pose"],
                              scene.cameras[t.camera].width, scene.cameras[t.camera].height, t.image)
                             for t in train], ds.device)
        self.train_cameras = [t.camera for t in train]
        self.bank_offsets = np.concatenate([[0], np.cumsum(self.bank.sizes)]).astype(np.int64)
        self.view_radius = np.array([view_radius(scene.cameras[c].intrinsics) for c in self.train_cameras],
                                    np.float32)
        self.view_time = self._frame_times()
        for name, state in self.states.items():
            rows = getattr(state.field, "appearance", None)
            rows = rows if rows is not None else getattr(state.field, "transient", None)
            if rows is not None and rows.shape[0] != len(train):
                raise SceneError(scene.path, "optimize.targets", f"fields.{name}: its per-image embeddings have "
                                 f"{rows.shape[0]} rows, the targets {len(train)} training views")
            if state.field.type == "dynamic":
                missing = [t.camera for t in train + test if t.camera not in self.view_time]
                if missing:
                    raise SceneError(scene.path, "optimize.targets", f"fields.{name} is dynamic: views "
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
        """Flat ray indices of this step's batch (the problem's batch RNG): uniform over every training pixel;
        for a dynamic field, `frames_per_batch` distinct training views (so times) and the rays uniform over
        their pixels, grouped by view."""
        rng, state = self.p._view_rng, self.state
        if state.field.type != "dynamic":
            return rng.integers(0, len(self.bank), size=self.rays_per_batch)
        n_views = len(self.train_cameras)
        k = min(int(state.spec.frames_per_batch), n_views)
        views = np.sort(rng.choice(n_views, size=k, replace=False))
        counts = np.full(k, self.rays_per_batch // k)
        counts[: self.rays_per_batch % k] += 1
        sizes = np.diff(self.bank_offsets)
        return np.concatenate([self.bank_offsets[v] + rng.integers(0, sizes[v], size=c)
                               for v, c in zip(views, counts, strict=True)])

    def before_step(self, step: int) -> None:
        """Refresh occupancy grids that are due (outside the tape; step 0 keeps the all-occupied start)."""
        for state in self.states.values():
            occ = state.field.occupancy
            if state.field.type != "voxel_grid":
                state.update_occupancy(step)
            elif state.occupancy is not None and step > 0 and step % occ.update_every == 0:
                state.occupancy.update(state.grid.query_density, threshold=occ.threshold, step=step)

    def record_loss(self, indices: np.ndarray, terms: dict, weights: dict, step: int) -> dict:
        """Forward pass of one step under the caller's tape: the ray batch through every field, image
        losses on the batch, TV of the free grids. Neural fields run (and back-propagate) in torch here and
        leave their gradients in their leaves' `.grad` and their loss values in `terms`. Returns {} (no
        whole-image outputs)."""
        p = self.p
        free = set(p.free_paths())
        for name, state in self.states.items():
            kind = state.field.type
            if kind in ("neural", "nerf_w"):
                origins, directions, target = self.bank.gather(indices)
                views = self.view_ids(indices)
                state.record_loss(origins, directions, target, views, self.view_radius[views], terms, weights,
                                  step, free)
                continue
            if kind == "dynamic":
                times = np.array([self.view_time[self.train_cameras[v]] for v in self.view_ids(indices)])
                groups = []
                for time in np.unique(times):  # one blend of the time slices per distinct time
                    o, d, t = self.bank.gather(indices[times == time])
                    groups.append((float(time), o, d, t))
                state.record_loss(groups, len(indices), terms, weights, step, free)
                continue
            origins, directions, target = self.bank.gather(indices)
            rgb, _, _, _ = volume_render(state.grid, origins, directions, state.n_samples, p.ds.background_color,
                                         seed=step, jitter=True, occupancy=state.occupancy)
            for loss in ("l1", "l2"):
                if loss in terms:
                    getattr(losses, loss)(rgb, target, terms[loss], weight=weights[loss])
            if "tv" in terms:
                w_density = weights["tv"] if f"fields.{name}.density" in free else 0.0
                w_sh = weights["tv"] if f"fields.{name}.sh" in free else 0.0
                if w_density or w_sh:
                    state.grid.total_variation(terms["tv"], w_density, w_sh)
        return {}

    def after_step(self, step: int) -> dict:
        """Upsample the grids due after this step, evaluate the test PSNR when due; the read-out terms."""
        for name, state in self.states.items():
            if state.field.type == "voxel_grid" and step + 1 in state.field.upsample_at:
                self.move_to_lattice(name, state.field.resolutions()[self.phase[name] + 1])
        if not self.p.test_targets or self.eval_every == 0:
            return {}
        if step % self.eval_every == 0:
            self.psnr_test = self.test_psnr()
        return {PSNR_TERM: self.psnr_test}

    # -- read-outs -------------------------------------------------------------------------------
    def render(self, camera: str, intrinsics: wp.array | None = None, width: int | None = None,
               height: int | None = None) -> RenderOutput:
        """A whole view through `camera` (midpoint samples, occupancy skipping, the storage precision);
        `intrinsics`/`width`/`height` override the camera's (e.g. a smaller thumbnail). A dynamic field
        renders at the camera's frame time; NeRF-W renders its static component with the camera's own
        appearance embedding (a training view), the one fitted on its left half (a held-out view, after an
        evaluation), else the mean embedding."""
        p = self.p
        c = p.scene.cameras[camera]
        intr = p.ds.arrays[f"cameras.{camera}.intrinsics"] if intrinsics is None else intrinsics
        state = self.state
        w, h = width or c.width, height or c.height
        if state.field.type == "voxel_grid":
            return render_field_view(state, intr, p.ds.arrays[f"cameras.{camera}.pose"], w, h,
                                     p.ds.background_color, state.occupancy, grid=state.storage_grid())
        origins, directions = readout.camera_rays(intr, p.ds.arrays[f"cameras.{camera}.pose"], w, h, p.ds.device)
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

    # -- viewer read-outs (any thread) -------------------------------------------------------------
    def render_free(self, pose, intrinsics, width: int, height: int, *, time: float | None = None,
                    appearance=None) -> np.ndarray:
        """(height, width, 3) float32 linear RGB of the field seen from a free camera.

        pose (7,) camera-to-world [px, py, pz, qx, qy, qz, qw], intrinsics (4,) [fx, fy, cx, cy] for this
        width/height. Safe from a viewer thread while the optimizer steps in another: no tape (every launch
        is `record_tape=False`, torch under `no_grad`), it reads the current values (references taken once at
        the start, so a concurrent upsample does not disturb it; it samples from a copy of the occupancy grid,
        which the training thread updates in place) and mutates no training state. Midpoint samples, the
        occupancy grid of the moment. `time`: for dynamic fields (default: the start of the time
        range), ignored otherwise; `appearance`: a NeRF-W appearance embedding (appearance_dim,) (default:
        the mean of the training embeddings), ignored otherwise; NeRF-W renders its static component only."""
        width, height = int(width), int(height)
        if width < 1 or height < 1:
            raise ValueError(f"width, height: expected positive sizes, got {width}x{height}")
        state = self.state
        origins, directions = readout.camera_rays(intrinsics, pose, width, height, self.p.ds.device)
        rgb = state.render_rays_readout(origins, directions, self.p.ds.background_color, time=time,
                                        appearance=appearance, radius=view_radius(np.asarray(intrinsics).ravel()))
        return rgb.reshape(height, width, 3)

    def time_range(self) -> tuple[float, float] | None:
        """(t_min, t_max) of a dynamic field's time axis, None for static fields."""
        return self.state.time_range()

    def occupancy(self, name: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(occupied cells bool (nx, ny, nz), aabb float32 (6,)) of field `name` (default: the first), None
        when it has no occupancy grid. A copy of the grid of the moment."""
        state = self.states[name] if name is not None else self.state
        occ = state.occupancy
        if occ is None:
            return None
        return occ.occupied.numpy().astype(bool), np.asarray(occ.aabb, np.float32)

    def eval_mask(self, camera: str) -> wp.array | None:
        """(N,) float32 mask of the pixels a held-out view's PSNR is measured on: NeRF-W's protocol fits the
        view's appearance embedding on the left half of the image and measures the right half (columns
        >= width // 2); None (every pixel) otherwise."""
        if self.state.field.type != "nerf_w" or self.state.leaf("appearance") is None \
                or camera in self.train_cameras:
            return None
        c = self.p.scene.cameras[camera]
        m = np.zeros((c.height, c.width), np.float32)
        m[:, c.width // 2:] = 1.0
        return wp.array(m.ravel(), dtype=float, device=self.p.ds.device)

    def fit_test_appearance(self, targets: list[Target]) -> None:
        """NeRF-W: fit each held-out view's appearance embedding on the left half of its target
        (`NeuralState.fit_appearance`); later renders of the view use it."""
        state, p = self.state, self.p
        if state.field.type != "nerf_w" or state.leaf("appearance") is None:
            return
        for t in targets:
            c = p.scene.cameras[t.camera]
            o, d = readout.camera_rays(c.intrinsics, c.pose, c.width, c.height, p.ds.device)
            left = np.flatnonzero((np.arange(c.width * c.height) % c.width) < c.width // 2)
            if left.size > APPEARANCE_FIT_RAYS:  # an evenly spread subset: a few numbers need few pixels
                left = left[np.linspace(0, left.size - 1, APPEARANCE_FIT_RAYS).round().astype(np.int64)]
            idx = wp.array(left.astype(np.int32), dtype=wp.int32, device=p.ds.device)
            lo, ld, lt = gather_rays(idx, o, d, t.image)
            state.fitted_appearance[t.camera] = state.fit_appearance(lo, ld, lt.numpy(), p.ds.background_color,
                                                                     view_radius(c.intrinsics))

    def psnr_by_view(self, targets: list[Target]) -> dict[str, float]:
        self.fit_test_appearance([t for t in targets if t.camera not in self.train_cameras])
        return {t.camera: losses.psnr(self.render(t.camera).image, t.image, self.eval_mask(t.camera))
                for t in targets}

    def test_psnr(self) -> float:
        """Mean over the held-out views of each view's PSNR (dB, peak 1), NaN without test views."""
        values = list(self.psnr_by_view(self.p.test_targets).values())
        return float(np.mean(values)) if values else math.nan

    def parameter_metrics(self) -> dict:
        """{path: {...}} for the optimized field parameters: shape, storage, bytes (no ground truth)."""
        out = {}
        for path in self.p.param_specs:
            name, key = path.split(".")[1:]
            state = self.states[name]
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
                out[f"occupancy.{name}.density"] = state.occupancy.density.numpy().copy()
                out[f"occupancy.{name}.occupied"] = state.occupancy.occupied.numpy().copy()
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
                entry = f"occupancy.{name}.{key}"
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
                         "activation": np.array(g.activation)}
        return out
