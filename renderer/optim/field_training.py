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
from ..render_field import FieldState, RayBank, field_grid, render_field_view
from ..scene import Camera, Scene
from ..scene_schema import DEFAULT_EVAL_EVERY, DEFAULT_RAYS_PER_BATCH
from ..transforms_json import load_transforms
from ..volume import OccupancyGrid
from ..volume import render as volume_render
from . import losses
from .targets import Target, build_targets

FIELD_KINDS = ("density", "sh")  # parameter kinds of fields: unconstrained raw values
PSNR_TERM = "psnr_test_db"


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

    def set(self, path: str, value: np.ndarray) -> None:
        if self.training is not None and path in self.kinds and self.kinds[path] in FIELD_KINDS:
            shape = tuple(np.shape(value))
            if shape != tuple(self.arrays[path].shape):
                self.training.move_to_lattice(path.split(".")[1], shape[:3])
        super().set(path, value)


class FieldTraining:
    """The field-specific part of a `Problem` whose scene has fields (see the module docstring)."""

    def __init__(self, problem, test_files: dict[str, str]):
        self.p = problem
        spec = problem.spec
        self.rays_per_batch = int(spec.rays_per_batch or DEFAULT_RAYS_PER_BATCH)
        self.eval_every = int(DEFAULT_EVAL_EVERY if spec.eval_every is None else spec.eval_every)
        self.test_files = dict(test_files)
        self.held_out = held_out_frames(problem.scene, spec.targets)
        self.states: dict[str, FieldState] = {}
        self.phase: dict[str, int] = {}
        params = problem.scene.params()
        # the values each field starts (and resets) from: the optimized ones' inits, the fixed ones' values
        self.start_values: dict[str, np.ndarray] = {}
        for name, f in problem.scene.fields.items():
            self.states[name] = FieldState(f, self._grid(name))
            for key in ("density", "sh"):
                path = f"fields.{name}.{key}"
                self.start_values[path] = problem.initial.get(path, params[path].value.copy())
        self.bank: RayBank | None = None
        self.psnr_test = math.nan
        if isinstance(problem.ds, FieldDeviceScene):
            problem.ds.training = self
        self.reset_state()

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
        return train, test

    # -- the step --------------------------------------------------------------------------------
    def draw_batch(self) -> np.ndarray:
        """Flat ray indices of this step's batch, uniform over every training pixel (the problem's batch RNG)."""
        return self.p._view_rng.integers(0, len(self.bank), size=self.rays_per_batch)

    def before_step(self, step: int) -> None:
        """Refresh occupancy grids that are due (outside the tape; step 0 keeps the all-occupied start)."""
        for state in self.states.values():
            occ = state.field.occupancy
            if state.occupancy is not None and step > 0 and step % occ.update_every == 0:
                state.occupancy.update(state.grid.query_density, threshold=occ.threshold, step=step)

    def record_loss(self, indices: np.ndarray, terms: dict, weights: dict, step: int) -> dict:
        """Forward pass of one step under the caller's tape: the ray batch through every field, image
        losses on the batch, TV of the free grids. Returns {} (no whole-image outputs)."""
        p = self.p
        origins, directions, target = self.bank.gather(indices)
        for name, state in self.states.items():
            rgb, _, _, _ = volume_render(state.grid, origins, directions, state.n_samples, p.ds.background_color,
                                         seed=step, jitter=True, occupancy=state.occupancy)
            for loss in ("l1", "l2"):
                if loss in terms:
                    getattr(losses, loss)(rgb, target, terms[loss], weight=weights[loss])
            if "tv" in terms:
                free = set(p.free_paths())
                w_density = weights["tv"] if f"fields.{name}.density" in free else 0.0
                w_sh = weights["tv"] if f"fields.{name}.sh" in free else 0.0
                if w_density or w_sh:
                    state.grid.total_variation(terms["tv"], w_density, w_sh)
        return {}

    def after_step(self, step: int) -> dict:
        """Upsample the grids due after this step, evaluate the test PSNR when due; the read-out terms."""
        for name, state in self.states.items():
            if step + 1 in state.field.upsample_at:
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
        `intrinsics`/`width`/`height` override the camera's (e.g. a smaller thumbnail)."""
        p = self.p
        c = p.scene.cameras[camera]
        intr = p.ds.arrays[f"cameras.{camera}.intrinsics"] if intrinsics is None else intrinsics
        state = next(iter(self.states.values()))  # one field per scene so far (scene_schema)
        return render_field_view(state, intr, p.ds.arrays[f"cameras.{camera}.pose"], width or c.width,
                                 height or c.height, p.ds.background_color, state.occupancy,
                                 grid=state.storage_grid())

    def psnr_by_view(self, targets: list[Target]) -> dict[str, float]:
        return {t.camera: losses.psnr(self.render(t.camera).image, t.image) for t in targets}

    def test_psnr(self) -> float:
        """Mean over the held-out views of each view's PSNR (dB, peak 1), NaN without test views."""
        values = list(self.psnr_by_view(self.p.test_targets).values())
        return float(np.mean(values)) if values else math.nan

    def parameter_metrics(self) -> dict:
        """{path: {...}} for the optimized field parameters: lattice, storage, bytes (no ground truth)."""
        out = {}
        for path in self.p.param_specs:
            name, key = path.split(".")[1:]
            state = self.states[name]
            arr = state.grid.density if key == "density" else state.grid.sh
            itemsize = 2 if state.field.storage == "float16" else 4
            out[path] = {"shape": list(arr.shape), "storage": state.field.storage,
                         "bytes": int(np.prod(arr.shape)) * itemsize}
        return out

    def export(self) -> dict[str, dict[str, np.ndarray]]:
        """{field name: {"density", "sh" (at the storage precision), "aabb", "sh_degree", "activation"}}."""
        out = {}
        for name, state in self.states.items():
            g = state.storage_grid()
            out[name] = {"density": g.density.numpy().copy(), "sh": g.sh.numpy().copy(),
                         "aabb": np.asarray(g.aabb, np.float32), "sh_degree": np.int32(g.sh_degree),
                         "activation": np.array(g.activation)}
        return out
