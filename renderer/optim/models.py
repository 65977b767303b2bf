"""What a `Problem` optimizes, behind one protocol (nerfstudio's `Model`): the mesh scene (`MeshModel`) or a
scene's radiance fields (`renderer.optim.field_training.FieldModel`).

The `Problem` owns what every representation shares — the truth, the free set, learning rates, loss
weights, the optimizer with its NaN guard and projections, the step's tape and the batch RNG — and asks its
model for the rest. A new representation is one new model class (listed in `MODELS`), not a branch in the
problem or the engine.

A model is built in three stages (the problem's copy of the scene gains cameras before its DeviceScene
exists): `add_cameras(scene, target_spec)` and `device_scene(scene, device)` (static), then
`Model(problem, extra)` with what `add_cameras` returned.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import warp as wp

from .. import parallel, progress
from ..device_scene import DeviceScene
from ..params import Group, Kind, ParamPath
from ..render import BAND_MODES, RenderOutput, render_view
from ..render_cache import GBufferCache
from ..scene import Scene
from . import losses, regularizers
from .targets import Target, build_targets, dataset_masks

EVALUATION_PHASE = "final evaluation"  # the results' render of every view (renderer.progress)
# image-shaped parameters whose gradient snapshots carry as images (`view_images` "texture_grads"): the
# material textures, emission textures and an environment light's texels (path mode)
IMAGE_GRAD_KINDS = frozenset({Kind.ALBEDO, Kind.ROUGHNESS, Kind.METALLIC, Kind.EMISSION, Kind.ENVIRONMENT})

IMAGE_LOSSES = ("l1", "l2", "ssim")
# path mode: the targets rendered from the truth use the random sequence render.seed + TARGET_SEED_OFFSET,
# far from any step's (step k uses render.seed + k), so target noise and step noise are independent
TARGET_SEED_OFFSET = 1 << 30
TARGET_SPP_FACTOR = 4  # default targets.spp: this many times render.spp
# step k's adjoint replays the independent paths of seed step_seed(k) + ADJOINT_SEED_OFFSET (an unbiased
# gradient of the expected loss: renderer.render._render_path)
ADJOINT_SEED_OFFSET = 1 << 29


def step_seed(scene: Scene, step: int) -> int:
    """The path tracer's seed of optimization step `step` (fresh random numbers every step, so the gradients
    are unbiased; a function of the scene file and the step only, so a replay renders the same paths)."""
    return (int(scene.render.seed) + int(step)) % (1 << 31)


def seed_schedule(scene: Scene) -> dict | None:
    """What a recording states about the random numbers of a path-mode run (None in the other modes)."""
    r = scene.render
    if r.mode != "path":
        return None
    spp = getattr(scene.optimize.targets, "spp", None) if scene.optimize is not None else None
    return {"step_seed": f"(render.seed + step) mod 2^31, render.seed = {r.seed}",
            "adjoint_seed": f"(step seed + {ADJOINT_SEED_OFFSET}) mod 2^31", "spp": r.spp,
            "max_depth": r.max_depth, "target_seed": (r.seed + TARGET_SEED_OFFSET) % (1 << 31),
            "target_spp": spp or TARGET_SPP_FACTOR * r.spp}


class Model(Protocol):
    """The protocol every representation implements (see the module docstring)."""

    kind: str  # "mesh", "field": what the viewer shows for it

    @staticmethod
    def applies(scene: Scene) -> bool:
        """Whether this model represents `scene` (the first of `MODELS` that applies is used)."""

    @staticmethod
    def add_cameras(scene: Scene, target_spec) -> dict[str, str]:
        """Add the model's own cameras to the problem's copy of `scene`; returns {camera: image file}."""

    @staticmethod
    def device_scene(scene: Scene, device) -> DeviceScene:
        """The DeviceScene holding the scene's values for this model."""

    def parameters(self) -> list[ParamPath]:
        """The table entries this model renders from and trains."""

    def reports(self, path) -> bool:
        """Whether snapshots copy the value, gradient and error of `path` (small values with a truth)."""

    def build_targets(self) -> tuple[list[Target], list[Target]]:
        """(training targets, held-out test targets) from the problem's truth and target spec."""

    def batch(self, rng: np.random.Generator) -> Any:
        """This step's batch (views, ray indices), drawn with the problem's batch RNG."""

    def before_step(self, step: int) -> None:
        """Work due before step `step`, off the tape (an occupancy refresh)."""

    def record_loss(self, batch, terms: dict, weights: dict, step: int) -> dict[str, RenderOutput]:
        """The forward pass of one step under the problem's tape: weighted loss terms into `terms` (one
        (1,) array per term with a weight > 0). Returns whole-view outputs by camera (their image
        gradients are shown), or {}."""

    def after_step(self, step: int) -> dict[str, float]:
        """Work due after step `step` (an upsample, an evaluation); read-out terms to report."""

    def render(self, camera: str, intrinsics: wp.array | None = None, width: int | None = None,
               height: int | None = None, rows: tuple[int, int] | None = None) -> RenderOutput:
        """A whole view through `camera` as the model sees it (overrides for thumbnails); `rows` (first, end):
        only those image rows, bit for bit the whole view's (models whose `renders_rows` is true)."""

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics (test PSNR), {} when the model has none."""

    def evaluation_views(self, targets: list[Target]) -> dict[str, tuple[RenderOutput, wp.array | None]]:
        """{camera: (its final render, the pixel mask its PSNR is measured on or None)} of `targets`, for the
        results of a run (renders of the model's own protocol, e.g. NeRF-W's held-out half-images)."""

    def parameter_metrics(self) -> dict:
        """{path: {metric: value}} of the optimized parameters (against the truth when there is one)."""

    def export(self) -> dict[str, dict[str, np.ndarray]]:
        """{name: arrays} the results folder stores as `field_<name>.npz` ({} for none)."""

    def result_images(self) -> dict[str, np.ndarray]:
        """{file stem: (H, W, 3) linear image} of model-specific result images ({} for none)."""

    def view_images(self, camera: str, param_grads: dict) -> dict:
        """Snapshot images of `camera`: "render", plus per-parameter gradient images ("texture_grads",
        "vertex_grads") from `param_grads` {path: gradient}."""

    def extra_state(self) -> dict[str, np.ndarray]:
        """Training state outside the parameters that steers later steps (keyframes store it)."""

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `extra_state` returned."""

    def reset(self) -> None:
        """Back to the start (before the problem writes the initial values and rebuilds the optimizer)."""

    def after_reset(self) -> None:
        """The problem is back at step 0 with its initial values (e.g. publish a copy for other threads)."""


class MeshModel:
    """The mesh scene: whole views rasterized by `renderer.render`, image losses and mesh/texture
    regularizers, G-buffer parts that no free parameter affects reused across steps."""

    kind = "mesh"
    shardable = True  # a step's views split over ranks (Problem.set_shards, renderer.optim.distributed)
    share = (0, 1)  # (rank, ranks) while the problem records one rank's part of a step
    workers: int | None = None  # threads for a step's views (renderer.parallel.render_views; None: one per core)
    # the texture TV's smoothing (regularizers.total_variation eps): the recording keeps it, and a recording
    # without it (made before TV was smoothed) re-executes with plain L1 TV, 0 (recording.session.build_problem)
    tv_eps: float = regularizers.TV_EPS

    @property
    def noisy_loss(self) -> bool:
        """Whether a step's loss is a Monte Carlo estimate (path mode: each step's own random numbers)."""
        return self.p.ds.scene.render.mode == "path"

    @staticmethod
    def applies(scene: Scene) -> bool:
        return True

    @staticmethod
    def add_cameras(scene: Scene, target_spec) -> dict[str, str]:
        return {}

    @staticmethod
    def device_scene(scene: Scene, device) -> DeviceScene:
        return DeviceScene(scene, device)

    def __init__(self, problem, extra: dict[str, str] | None = None):
        self.p = problem
        # G-buffer parts of the target views that no free parameter affects, reused across steps; the cache
        # listens to the parameter table, so every edit drops what it invalidates
        self.gbuffer_cache = GBufferCache(problem.ds)
        self.parallel_views = True  # render a step's views on all cores (renderer.parallel.render_views)
        self._topology = self._mesh_topology()

    def _mesh_topology(self, rest_from: dict | None = None) -> dict:
        """Per optimizable vertex array: neighbor CSR and unique edges with rest lengths (regularizers), the
        rest lengths those of `rest_from[path]` (default: the initial values)."""
        p, topo = self.p, {}
        for path in p.param_specs:
            if p.ds.kind(path) is not Kind.VERTICES:
                continue
            mesh = p.scene.meshes[p.ds.params[path].owner]
            offsets, indices = regularizers.neighbor_csr(mesh.faces, len(mesh.vertices))
            edges = regularizers.unique_edges(mesh.faces)
            init = (p.initial if rest_from is None else rest_from)[path]
            rest = np.linalg.norm(init[edges[:, 0]] - init[edges[:, 1]], axis=1).astype(np.float32)
            dev = p.ds.device
            topo[path] = dict(
                offsets=wp.array(offsets, dtype=wp.int32, device=dev),
                indices=wp.array(indices, dtype=wp.int32, device=dev),
                edges=wp.array(edges.astype(np.int32), dtype=wp.int32, device=dev),
                rest=wp.array(rest, dtype=float, device=dev))
        return topo

    # -- the protocol ----------------------------------------------------------------------------
    def parameters(self) -> list[ParamPath]:
        return [e.path for e in self.p.ds.params.entries() if e.group is not Group.FIELDS]

    def reports(self, path) -> bool:
        return True

    def build_targets(self) -> tuple[list[Target], list[Target]]:
        p = self.p
        return build_targets(p.scene, p.ds, p.truth, p.target_spec, p._current_values(), p._dataset_files,
                             dataset_masks(p.scene, p.target_spec)), []

    def batch(self, rng: np.random.Generator) -> list[Target]:
        targets, n = self.p.targets, self.p.batch_views
        if n >= len(targets):
            return list(targets)
        idx = rng.choice(len(targets), size=n, replace=False)
        return [targets[i] for i in sorted(idx)]

    def before_step(self, step: int) -> None:
        pass

    def gbuffer(self) -> GBufferCache:
        """The G-buffer cache for this step: parts depending on a free parameter are never reused. The free
        set is read at every step (a restored keyframe sets `free` directly)."""
        self.gbuffer_cache.set_varying(self.p.free_paths())
        return self.gbuffer_cache

    def record_loss(self, batch: list[Target], terms: dict, weights: dict, step: int) -> dict[str, RenderOutput]:
        ds = self.p.ds
        cache = self.gbuffer()
        frame = ds.prepare(cache=cache)
        outputs = {}
        scale = 1.0 / len(batch)  # the mean over the whole batch, also when a rank renders part of it
        rank, ranks = self.share
        if ranks > 1 and self._splits_rows(terms):
            self._record_rows(batch, frame, cache, terms, weights, rank, ranks, outputs)
            mine = []
        else:
            mine = batch[rank::ranks]  # rank r: views r, r + ranks, ... of the batch
        if not mine:
            rendered = []
        elif ds.scene.render.mode == "path":
            # a Monte Carlo estimate with this step's own random numbers (each view already uses every core)
            seed = step_seed(ds.scene, step)
            adjoint = (seed + ADJOINT_SEED_OFFSET) % (1 << 31)
            rendered = [render_view(ds, frame, t.camera, cache=cache, seed=seed, adjoint_seed=adjoint) for t in mine]
        elif len(mine) > 1 and ds.device.is_cpu and self.parallel_views and self.workers != 1:
            # one CPU launch runs on one core: spread the views over the cores (same images; the gradient
            # sums in a fixed, different order)
            rendered = parallel.render_views(ds, frame, [t.camera for t in mine], cache=cache, workers=self.workers)
        else:
            rendered = [render_view(ds, frame, t.camera, cache=cache) for t in mine]
        for t, out in zip(mine, rendered, strict=True):
            outputs[t.camera] = out
            for name in IMAGE_LOSSES:
                if name in terms:
                    w = weights[name] * scale
                    if name == "ssim":
                        losses.ssim_loss(out.image, t.image, out.width, out.height, terms[name], weight=w,
                                         mask=t.mask)
                    else:
                        getattr(losses, name)(out.image, t.image, terms[name], weight=w, mask=t.mask)
        for path in self.p.free_paths():  # regularizers once: TV by texel rows over the ranks, the rest on rank 0
            kind, arr = ds.kind(path), ds.arrays[path]
            if "tv" in terms and kind.is_texture and arr.shape[0] > 1:
                h = arr.shape[0]
                regularizers.total_variation(arr, terms["tv"], weight=weights["tv"], eps=self.tv_eps,
                                             rows=(rank * h // ranks, (rank + 1) * h // ranks))
            if kind is Kind.VERTICES and rank == 0:
                topo = self._topology[path]
                if "laplacian" in terms:
                    regularizers.laplacian_smoothing(arr, topo["offsets"], topo["indices"], terms["laplacian"],
                                                     weight=weights["laplacian"])
                if "edge_length" in terms:
                    regularizers.edge_length(arr, topo["edges"], topo["rest"], terms["edge_length"],
                                             weight=weights["edge_length"])
        return outputs

    def _splits_rows(self, terms: dict) -> bool:
        """Whether a rank's share of a step is a block of rows (`_record_rows`) rather than whole views: in the
        modes whose bands render exactly (`render.BAND_MODES`), with a background color, and per-pixel image
        losses (SSIM's window reaches across rows)."""
        ds = self.p.ds
        return (ds.scene.render.mode in BAND_MODES and ds.background_pool is None and "ssim" not in terms)

    def _record_rows(self, batch: list[Target], frame, cache, terms: dict, weights: dict, rank: int, ranks: int,
                     outputs: dict) -> None:
        """Rank `rank`'s share of the batch as rows: the views' rows laid end to end, split into `ranks` equal
        blocks (`parallel.split_rows`). A piece that is a whole view renders as in one process; a part of a
        view renders its rows plus one row above and below (antialias: the silhouette pairs across the cut)
        with `render_view(first_row=...)`, whose pixels are the full render's bit for bit, and its image loss
        covers its own rows only, divided by the whole view's pixel count (each pixel's loss gradient is one
        process's bit for bit), so the ranks' losses and gradients add up to one process's to float32 round-off.
        Whole views go into `outputs` (a cut view has none there: its gradient image is in pieces on several
        ranks)."""
        ds = self.p.ds
        scale = 1.0 / len(batch)
        heights = [ds.scene.cameras[t.camera].height for t in batch]
        pieces = parallel.split_rows(heights, ranks)[rank]
        pad = 1 if ds.scene.render.mode == "antialias" else 0
        bands = []
        for v, first, end in pieces:
            h = heights[v]
            bands.append(None if (first, end) == (0, h) else (max(0, first - pad), min(h, end + pad)))
        cameras = [batch[v].camera for v, _, _ in pieces]
        if len(pieces) > 1 and ds.device.is_cpu and self.parallel_views and self.workers != 1:
            rendered = parallel.render_views(ds, frame, cameras, cache=cache, workers=self.workers, rows=bands)
        else:
            rendered = [render_view(ds, frame, c, cache=cache, **({} if b is None else dict(
                first_row=b[0], height=b[1] - b[0], image_height=ds.scene.cameras[c].height)))
                        for c, b in zip(cameras, bands, strict=True)]
        for (v, first, end), band, out in zip(pieces, bands, rendered, strict=True):
            t, w = batch[v], out.width
            if band is None:
                outputs[t.camera] = out
                image, target = out.image, t.image
            else:  # this piece's own rows of the band, and of the target
                image = out.image[(first - band[0]) * w:(end - band[0]) * w]
                target = t.image[first * w:end * w]
            # normalized by the whole view's pixels (or mask): each pixel's gradient is one process's
            whole = (dict(pixels=heights[v] * w) if t.mask is None else
                     dict(mask=t.mask[first * w:end * w], mask_total=t.mask_sum))
            for name in ("l1", "l2"):
                if name in terms:
                    getattr(losses, name)(image, target, terms[name], weight=weights[name] * scale, **whole)

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    @property
    def renders_rows(self) -> bool:
        """Whether `render(..., rows=)` renders a block of a view's rows exactly: the modes whose bands do
        (`render.BAND_MODES`), with a background color (Problem's shared thumbnails of a distributed run)."""
        ds = self.p.ds
        return ds.scene.render.mode in BAND_MODES and ds.background_pool is None

    def render(self, camera: str, intrinsics: wp.array | None = None, width: int | None = None,
               height: int | None = None, rows: tuple[int, int] | None = None) -> RenderOutput:
        """A whole view through `camera` (overrides for thumbnails), or only its image rows `rows` = (first, end)
        (`renders_rows`): a band with one row above and below for the antialias pairs across the cut, whose own
        rows are the whole render's bit for bit (`render_view(first_row=...)`)."""
        ds, cache = self.p.ds, self.gbuffer()
        frame = ds.prepare(cache=cache)
        if rows is None:
            return render_view(ds, frame, camera, intrinsics=intrinsics, width=width, height=height, cache=cache)
        c = ds.scene.cameras[camera]
        w, h = width or c.width, height or c.height
        first, end = (int(x) for x in rows)
        if not self.renders_rows or not 0 <= first < end <= h:
            raise ValueError(f"rows: expected 0 <= first < end <= {h} in the {BAND_MODES} modes with a background "
                             f"color, got {rows} in mode {ds.scene.render.mode!r}")
        pad = 1 if ds.scene.render.mode == "antialias" else 0
        lo, hi = max(0, first - pad), min(h, end + pad)
        out = render_view(ds, frame, camera, intrinsics=intrinsics, width=w, height=hi - lo, first_row=lo,
                          image_height=h, cache=cache)
        return RenderOutput(w, end - first, out.image[(first - lo) * w:(end - lo) * w])

    def evaluate(self) -> dict[str, float]:
        return {}

    def evaluation_views(self, targets: list[Target]) -> dict[str, tuple[RenderOutput, wp.array | None]]:
        ds = self.p.ds
        frame = ds.prepare()  # without the G-buffer cache: the reference render of every view
        return {t.camera: (render_view(ds, frame, t.camera), t.mask)  # the pixels its frame's mask uses
                for t in progress.track(EVALUATION_PHASE, targets, unit="view")}

    def parameter_metrics(self) -> dict:
        from .metrics import parameter_metrics

        return parameter_metrics(self.p)

    def export(self) -> dict[str, dict[str, np.ndarray]]:
        return {}

    def result_images(self) -> dict[str, np.ndarray]:
        return {}

    def view_images(self, camera: str, param_grads: dict, render: np.ndarray | None = None) -> dict:
        """`render`: the image of `camera` when the caller has it (the last step's), else rendered here."""
        kind = self.p.ds.kind
        return {"render": self.render(camera).numpy() if render is None else render,
                "texture_grads": {p: g for p, g in param_grads.items()
                                  if kind(p) in IMAGE_GRAD_KINDS and g.shape[0] > 1},
                "vertex_grads": {p: g for p, g in param_grads.items() if kind(p) is Kind.VERTICES}}

    def extra_state(self) -> dict[str, np.ndarray]:
        return {}

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    def reset(self) -> None:
        pass  # the G-buffer cache hears of the values the problem writes next from the table

    def after_reset(self) -> None:
        pass  # readers on other threads read the engine's snapshots


def _is_vertices(path: str) -> bool:
    return path.startswith("meshes.") and path.endswith(".vertices")


class ShapeModel(MeshModel):
    """A mesh scene whose vertices are optimized: the optimized meshes have a topology of their own.

    The targets are rendered from the scene as loaded (the truth, `target_ds`); each optimized mesh starts
    from its `init` (a primitive or a mesh file of any topology, or the scene mesh's faces) and is remeshed
    after the steps its `remesh` lists (`renderer.optim.remesh`), so `problem.ds` is rebuilt whenever a
    topology changes. The optimizer's per-vertex state follows each vertex to the nearest vertex of the mesh
    before the change. Keyframes store each optimized mesh's faces (`extra_state`); `load_topology` puts
    them back before the values. The results are measured against each parameter's `reference` mesh (or the
    scene's mesh when the targets are rendered from it; none for image and dataset targets)."""

    @staticmethod
    def applies(scene: Scene) -> bool:
        opt = scene.optimize
        return opt is not None and any(_is_vertices(p) for p in opt.parameters)

    def __init__(self, problem, extra: dict[str, str] | None = None):
        from ..initial_values import start_mesh

        p = self.p = problem
        self.target_scene = copy.deepcopy(p.scene)  # the truth, as loaded: what the targets render
        self.target_ds = p.ds
        self.target_ds.scene = self.target_scene
        self.shape_paths = [path for path in p.param_specs if p.ds.kind(path) is Kind.VERTICES]
        self.remesh_specs = {path: p.param_specs[path].remesh for path in self.shape_paths
                             if p.param_specs[path].remesh is not None}
        self.start = {}
        for path in self.shape_paths:
            own = start_mesh(p.scene, path)
            faces = own[1] if own is not None else p.scene.meshes[self._owner(path)].faces
            self.start[path] = (p.initial[path].copy(), np.array(faces, np.int32))
        self.topology_version = 0  # bumped by every change of topology (the recorder keyframes it)
        self.parallel_views = True
        self._set_topology(self.start, count=False)

    def _owner(self, path) -> str:
        return self.p.ds.params[path].owner

    def faces(self, path) -> np.ndarray:
        """(F, 3) int32 faces of the optimized mesh of vertices parameter `path` now."""
        return self.p.scene.meshes[self._owner(path)].faces

    def _set_topology(self, meshes: dict, count: bool = True) -> None:
        """Give the optimized meshes {path: (vertices, faces)} and rebuild `problem.ds` around them (every
        other value keeps its current value). A mesh whose faces do not change keeps its uvs and vertex
        colors; across a change of topology both follow the nearest old vertex (uvs are exact for vertices
        that did not move and approximate near texture seams)."""
        from .remesh import nearest_vertices

        p = self.p
        old = p.ds
        owners = {self._owner(path): path for path in meshes}
        per_vertex = ("vertices", "uvs", "colors")
        values = {path: old.get(path) for path in old.arrays
                  if not (old.params[path].owner in owners and old.params[path].path.name in per_vertex)}
        # copy on write: whoever holds the scene object from before (the viewer's state, in the thread engine,
        # reads its meshes from the UI thread) keeps seeing it unchanged; the problem gets a new scene whose
        # changed meshes are new objects
        scene = copy.copy(p.scene)
        scene.meshes = dict(p.scene.meshes)
        for owner, path in owners.items():
            v, f = meshes[path]
            mesh = scene.meshes[owner] = copy.copy(p.scene.meshes[owner])
            before = old.get(path)
            colors = old.get(f"meshes.{owner}.colors")
            uvs = old.get(f"meshes.{owner}.uvs") if f"meshes.{owner}.uvs" in old.arrays else mesh.uvs
            same = len(v) == len(before) and np.array_equal(np.asarray(f), mesh.faces)
            near = (np.arange(len(v)) if same else nearest_vertices(before, v) if len(before)
                    else np.zeros(len(v), np.int64))
            mesh.vertices = np.ascontiguousarray(v, np.float32)
            mesh.faces = np.ascontiguousarray(f, np.int32)
            mesh.uvs = (np.ascontiguousarray(uvs[near], np.float32) if len(uvs) == len(before)
                        else np.zeros((len(v), 2), np.float32))
            mesh.colors = np.ascontiguousarray(colors[near], np.float32)
        p.scene = scene
        p.ds = DeviceScene(scene, old.device)
        for path, value in values.items():
            p.ds.set(path, value)
        self.gbuffer_cache = GBufferCache(p.ds)
        self._topology = self._mesh_topology({path: p.ds.get(path) for path in self.shape_paths})
        if count:
            self.topology_version += 1

    def own_meshes(self) -> dict:
        """{mesh name: {"vertices": (V, 3) object space, "faces": (F, 3) int32}} of the optimized meshes whose
        topology is not the scene's (what `reports` leaves out of the snapshots' values). The faces array is
        copied once per topology (`topology_version`), the vertices every call."""
        cached = getattr(self, "_faces_published", None)
        if cached is None or cached[0] != self.topology_version:
            cached = self._faces_published = (self.topology_version, {
                self._owner(path): self.faces(path).copy() for path in self.shape_paths
                if not self._same_topology(path)})
        return {owner: {"vertices": self.p.ds.get(f"meshes.{owner}.vertices"), "faces": faces}
                for owner, faces in cached[1].items()}

    def _same_topology(self, path) -> bool:
        mesh, target = self.p.scene.meshes[self._owner(path)], self.target_scene.meshes[self._owner(path)]
        return mesh.faces.shape == target.faces.shape and np.array_equal(mesh.faces, target.faces)

    # -- the protocol ----------------------------------------------------------------------------
    def reports(self, path) -> bool:
        # a mesh of another topology than the scene's: its vertices do not line up with the truth (nor with
        # the faces of the viewer's copy of the scene)
        return path not in self.shape_paths or self._same_topology(path)

    def build_targets(self) -> tuple[list[Target], list[Target]]:
        p, ds = self.p, self.target_ds
        current = {path: ds.get(path) for path in ds.arrays}
        return build_targets(self.target_scene, ds, p.truth, p.target_spec, current, p._dataset_files,
                             dataset_masks(self.target_scene, p.target_spec)), []

    def after_step(self, step: int) -> dict[str, float]:
        due = {path: spec.edge_length[spec.steps.index(step + 1)] for path, spec in self.remesh_specs.items()
               if step + 1 in spec.steps}
        if due:
            self.remesh(due)
        return {}

    def remesh(self, targets: dict) -> None:
        """Remesh the optimized meshes {path: target edge length} now, carrying the optimizer's state over
        (per-vertex moments from the nearest old vertex; counters, learning rates and the schedule kept)."""
        from .remesh import isotropic_remesh, nearest_vertices

        p = self.p
        old = {path: p.ds.get(path) for path in targets}
        state = p.optimizer.state_dict()
        paths = list(p.opt_paths)
        meshes = {path: isotropic_remesh(old[path], self.faces(path), float(length))
                  for path, length in targets.items()}
        self._set_topology(meshes)
        near = {path: nearest_vertices(old[path], meshes[path][0]) for path in targets}
        for path in targets:
            if path not in paths:
                continue
            i = paths.index(path)
            for key, values in state.items():
                if isinstance(values, list) and key != "lr" and values[i].size:
                    per = values[i].reshape(len(old[path]), -1)
                    values[i] = per[near[path]].ravel()
            if "u" in state and state["u"][i].size:
                # u = (I + lam L) x on the new mesh (its Laplacian is new), not a copy of the old u
                state["u"][i] = np.zeros(0)
        self._load_optimizer_state(state)

    def _load_optimizer_state(self, state: dict) -> None:
        p = self.p
        iteration, horizon = state["iteration"], p.schedule_steps
        p._build_optimizer(horizon)
        fresh = p.optimizer.state_dict()
        if "u" in state:
            state["u"] = [fresh["u"][i] if s.size == 0 and fresh["u"][i].size else s
                          for i, s in enumerate(state["u"])]
        state["iteration"] = iteration
        p.optimizer.load_state_dict(state)

    def parameter_metrics(self) -> dict:
        from .metrics import parameter_metrics

        return parameter_metrics(self.p)

    def reference_mesh(self, path) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(vertices, faces, what it is) the optimized mesh of `path` is measured against, or None."""
        from ..assets import load_mesh_file

        p = self.p
        ref = p.param_specs[path].reference
        if ref is not None:
            v, f, _, _ = load_mesh_file(Path(p.scene.path).parent / ref, p.scene.path, "reference")
            return v, f, f"reference mesh {ref}"
        if p.target_spec.cameras is not None:
            mesh = self.target_scene.meshes[self._owner(path)]
            return p.truth[path], mesh.faces, "the scene's mesh (the truth the targets are rendered from)"
        return None

    def extra_state(self) -> dict[str, np.ndarray]:
        return {f"faces/{path}": self.faces(path).copy() for path in self.shape_paths}

    def load_topology(self, extra: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> None:
        """Give the optimized meshes the faces of a keyframe's `extra` with its `values` (before the values and
        the optimizer's state are restored: this rebuilds the optimizer at that topology)."""
        meshes = {}
        for path in self.shape_paths:
            faces = extra.get(f"faces/{path}")
            if faces is None or path not in values:
                continue
            faces = np.asarray(faces, np.int32)
            if not np.array_equal(faces, self.faces(path)) or len(values[path]) != len(self.p.ds.get(path)):
                meshes[path] = (np.asarray(values[path], np.float32), faces)
        if meshes:
            self._set_topology(meshes)
            self.p._build_optimizer(self.p.schedule_steps)

    def load_extra_state(self, state: dict[str, np.ndarray]) -> None:
        pass  # the faces: `load_topology`, before the values

    def reset(self) -> None:
        changed = {path: self.start[path] for path in self.shape_paths
                   if not np.array_equal(self.faces(path), self.start[path][1])}
        if changed:
            self._set_topology(changed)


def model_class(scene: Scene) -> type:
    """The model that represents `scene`: the first of `MODELS` that applies."""
    from .field_training import FieldModel  # it builds on this module's protocol

    return next(m for m in (FieldModel, ShapeModel, MeshModel) if m.applies(scene))
