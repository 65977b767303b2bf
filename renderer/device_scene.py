"""A scene's values as Warp arrays on one device, and the per-step packing the stages read.

`DeviceScene` holds one leaf array (requires_grad) per path of its parameter table (`self.params`, a
`renderer.params.ParamTable`): the optimizer updates these, the tape accumulates gradients into their
`.grad`, the viewer reads them. Values change through `self.params.update` (validated, versioned, and
announced to subscribers such as the G-buffer cache); the table's writer stores them here. `prepare()`
runs the differentiable work shared by every view of one step (world-space vertices, normals, packed
attributes, texture pyramids, packed lights) and returns a `Frame`; `renderer.render.render_view`
draws one camera from a `Frame`. Record `prepare()` and all views of a step under one `wp.Tape`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import warp as wp

from .params import Group, Kind, ParamPath, ParamTable
from .scene import SHADING_MODELS, Scene
from .stages import geometry, pack, visibility
from .stages.antialias import face_neighbors
from .stages.shading import Lights
from .stages.texture import TexturePool
from .thread_tape import recording

_VEC3_KINDS = (Kind.VERTICES,)


def default_device() -> str:
    """CUDA when available, else the CPU."""
    return "cuda:0" if wp.get_cuda_device_count() > 0 else "cpu"


def _constant(a: wp.array) -> wp.array:
    """`a` without gradient (an alias of its memory; keep `a` alive while it is used)."""
    if not a.requires_grad:
        return a
    return wp.array(ptr=a.ptr, dtype=a.dtype, shape=a.shape, strides=a.strides, device=a.device)


def _leaf(value: np.ndarray, kind: str, device) -> wp.array:
    value = np.ascontiguousarray(value, dtype=np.float32)
    if kind in _VEC3_KINDS:
        return wp.array(value, dtype=wp.vec3, device=device, requires_grad=True)
    return wp.array(value, dtype=float, device=device, requires_grad=True)


@dataclass
class Frame:
    """Everything the views of one step share. All arrays are outputs of recorded kernels."""

    world: wp.array  # (V,) vec3 world-space positions of all meshes, packed
    normals: wp.array2d  # (V, 3) smooth unit normals
    uvs: wp.array2d  # (V, 2)
    colors: wp.array2d  # (V, 3) vertex color multipliers
    bvh: wp.Mesh  # shared by all frames of a DeviceScene: valid until the next prepare()
    albedo: TexturePool
    roughness: TexturePool
    metallic: TexturePool
    lights: Lights
    emission: TexturePool | None = None  # (3 channels) emitted radiance per material
    env: wp.array | None = None  # (He, We, 3) float environment radiance (path mode); None without one
    # the point lights' shadow grids (stages.shadow_grid), built by the first view that casts shadow rays and
    # shared by the others (and by the bands and views renderer.parallel derives from this frame)
    shadow_grids: dict = field(default_factory=dict, repr=False)


class DeviceScene:
    """Leaf arrays per dotted path plus the static topology, on `device`."""

    def __init__(self, scene: Scene, device: str | None = None):
        self.scene = scene
        self.device = wp.get_device(device or default_device())
        self.params = ParamTable.from_scene(scene)
        self.params.bind(self._write)
        self.arrays: dict[ParamPath, wp.array] = {}
        for path, p in scene.params().items():
            self.arrays[path] = _leaf(p.value, p.kind, self.device)

        mat_index = {name: i for i, name in enumerate(scene.materials)}
        self.material_model = wp.array(
            np.array([SHADING_MODELS.index(m.model) for m in scene.materials.values()], np.int32),
            dtype=wp.int32, device=self.device)
        faces, face_mat, vert_mat, self.vertex_offsets = [], [], [], []
        offset = 0
        for m in scene.meshes.values():
            self.vertex_offsets.append(offset)
            faces.append(m.faces.astype(np.int32) + offset)
            face_mat.append(np.full(len(m.faces), mat_index[m.material], np.int32))
            vert_mat.append(np.full(len(m.vertices), mat_index[m.material], np.int32))
            offset += len(m.vertices)
        self.num_vertices = offset
        faces_np = np.concatenate(faces) if faces else np.zeros((0, 3), np.int32)
        self.faces_np = faces_np
        self.num_faces = len(faces_np)
        self.faces = wp.array(faces_np.reshape(-1), dtype=wp.int32, device=self.device)
        self.face_material = wp.array(np.concatenate(face_mat) if face_mat else np.zeros(0, np.int32),
                                      dtype=wp.int32, device=self.device)
        self.vertex_material = wp.array(np.concatenate(vert_mat) if vert_mat else np.zeros(0, np.int32),
                                        dtype=wp.int32, device=self.device)
        self.neighbors = wp.array(face_neighbors(faces_np).reshape(-1), dtype=wp.int32, device=self.device)
        self.wraps = [m.wrap for m in scene.materials.values()]
        backdrop = np.asarray(scene.background, np.float32)
        self.background_color = wp.array(backdrop if backdrop.ndim == 1 else np.zeros(3, np.float32),
                                          dtype=float, device=self.device)
        self.background_pool = None
        if backdrop.ndim == 3:  # an image, sampled per pixel at any resolution
            img = wp.array(backdrop, dtype=float, device=self.device)
            self.background_pool = TexturePool.build([img], ["clamp"], mipmaps=False)
        self._bvh: wp.Mesh | None = None
        self._emits: tuple | None = None
        self.path_tables: dict = {}  # renderer.render's path-mode sampling tables, by the versions they came from
        # the paths renders differentiate (None: every path); see `differentiating`
        self.differentiable: frozenset[ParamPath] | None = None

    # -- values ---------------------------------------------------------------------------------
    @property
    def versions(self) -> dict[ParamPath, int]:
        """Per path, bumped by every change the table hears of (what `GBufferCache` checks entries with)."""
        return self.params.versions

    def kind(self, path) -> Kind:
        return self.params[path].kind

    def get(self, path) -> np.ndarray:
        """A NumPy copy of the current value at `path`, in the table's shape."""
        return self.arrays[path].numpy().reshape(self.params[path].shape).copy()

    def set(self, path, value: np.ndarray, *, check_range: bool = False) -> None:
        """Overwrite the value at `path` through the table (`params.update`: shape and finiteness checked,
        version bumped, subscribers told). The kind's range is checked with `check_range`; callers that
        project their values themselves (the optimizer's constraints) leave it off."""
        self.params.update(path, value, check_range=check_range)

    def _write(self, path: ParamPath, value: np.ndarray) -> None:
        arr = self.arrays[path]
        arr.assign(wp.array(value.reshape(arr.numpy().shape), dtype=arr.dtype, device=self.device))

    def replace_leaf(self, path, value: np.ndarray) -> wp.array:
        """A new leaf array of another shape at `path` (a field's lattice grows): the table's entry is
        resized and the change announced. Returns the new array."""
        entry = self.params[path]
        arr = _leaf(value, entry.kind, self.device)
        self.arrays[entry.path] = arr
        self.params.resize(entry.path, value.shape)
        return arr

    def touch(self, path) -> None:
        """Declare that the value at `path` changed in place (written other than through `set`)."""
        self.params.changed((path,))

    def leaf(self, path) -> wp.array:
        """The leaf array at `path` as renders read it: the array itself, or, while `path` is not one of the
        `differentiable` paths, an alias without gradient (kernels that read it record no adjoint for it)."""
        a = self.arrays[path]
        if self.differentiable is None or path in self.differentiable:
            return a
        return _constant(a)

    @contextmanager
    def differentiating(self, paths):
        """Within the block `prepare()` and `render_view` differentiate only w.r.t. `paths` (an optimizer's free
        parameters): the other leaves are read as constants, so the backward pass runs no adjoint that only
        they need (a shape optimization skips the camera's and the textures', a texture optimization the
        geometry's). Their `.grad` stays as it was (zero after `zero_grad`). Gradients of `paths` are exact:
        every adjoint on their way is still recorded."""
        paths = frozenset(ParamPath.parse(p) for p in paths)
        unknown = [str(p) for p in paths if p not in self.arrays]
        if unknown:
            raise ValueError(f"paths: unknown parameter paths {unknown}")
        before = self.differentiable
        self.differentiable = paths
        try:
            yield self
        finally:
            self.differentiable = before

    def zero_grad(self) -> None:
        for arr in self.arrays.values():
            arr.grad.zero_()

    def write_back(self) -> None:
        """Copy the current values into the NumPy scene (e.g. before saving it)."""
        for path, p in self.scene.params().items():
            p.value[...] = self.get(path)

    # -- per-step packing -----------------------------------------------------------------------
    def prepare(self, mipmaps: bool | None = None, cache=None) -> Frame:
        """World-space geometry, attributes, texture pyramids and lights for this step.

        `cache` (a `renderer.render_cache.GBufferCache` of this scene): each packed product (world
        positions and normals, uvs, vertex colors, each material property's texture pool, the lights) is
        reused, as a constant without gradient, while none of the paths it is computed from is varying or
        changed (a reused world needs no BVH refit either)."""
        a, dev, sc = self.arrays, self.device, self.scene
        mipmaps = sc.render.mipmaps if mipmaps is None else mipmaps
        if cache is not None and cache.ds is not self:
            raise ValueError("cache: expected a GBufferCache of this DeviceScene")
        meshes = list(sc.meshes)

        def leaf(group: Group, owner: str, name: str) -> wp.array:
            return self.leaf(ParamPath(group, owner, name))

        def build_geometry(const: bool):
            k = _constant if const else (lambda x: x)
            # A fresh array per call: a Frame's world positions must not change after prepare() returns,
            # because the backward pass of its views reads them (several prepare() calls may share one
            # backward, e.g. render_torch for several cameras or several values of a path).
            world = wp.zeros(self.num_vertices, dtype=wp.vec3, device=dev, requires_grad=not const)
            for off, m in zip(self.vertex_offsets, meshes):
                geometry.transform_vertices(*(k(leaf(Group.MESHES, m, n)) for n in ("vertices", "translation",
                                                                                   "rotation", "scale")), world, off)
            return world, geometry.vertex_normals(world, self.faces)

        def build_rows(name: str, width: int):
            def build(const: bool):
                out = wp.zeros((self.num_vertices, width), dtype=float, device=dev, requires_grad=not const)
                for off, m in zip(self.vertex_offsets, meshes):
                    src = leaf(Group.MESHES, m, name)
                    pack.copy_rows(_constant(src) if const else src, out, off)
                return out
            return build

        def part(name: str, leaves: tuple | None, build, deps: list[str] | None = None):
            deps = deps if deps is not None else [ParamPath(Group.MESHES, m, n) for m in meshes for n in leaves]
            if self.differentiable is not None and not any(d in self.differentiable for d in deps):
                inner = build

                def build(const: bool):  # nothing to differentiate: a constant, built off the tape
                    with recording(None):
                        return inner(True)
            if cache is None:
                return build(False)
            return cache.fetch_static(name, deps, build)

        world, normals = part("geometry", ("vertices", "translation", "rotation", "scale"), build_geometry)
        uvs = part("uvs", ("uvs",), build_rows("uvs", 2))
        colors = part("colors", ("colors",), build_rows("colors", 3))
        if self._bvh is None:
            self._bvh = visibility.build_bvh(world, self.faces)
        elif world is not self._bvh.points:
            # one BVH, re-pointed at this step's positions and refitted (the topology never changes); the
            # cached world of a previous call is the same array, already fitted
            visibility.refit_bvh(self._bvh, world)
        mats = list(sc.materials)

        def build_pool(prop: str):
            def build(const: bool):
                textures = [leaf(Group.MATERIALS, n, prop) for n in mats]
                return TexturePool.build([_constant(t) for t in textures] if const else textures, self.wraps,
                                         mipmaps=mipmaps)
            return build

        pools = [part(f"{prop} pool {bool(mipmaps)}", None, build_pool(prop),
                      [ParamPath(Group.MATERIALS, n, prop) for n in mats])
                 for prop in ("albedo", "roughness", "metallic", "emission")]
        pl, dl, al = sc.point_lights, sc.directional_lights, sc.ambient_lights

        def build_lights(const: bool):
            k = _constant if const else (lambda x: x)
            return Lights(
                point_position=pack.gather_vec3([k(leaf(Group.LIGHTS, n, "position")) for n in pl], dev),
                point_color=pack.gather_vec3([k(leaf(Group.LIGHTS, n, "color")) for n in pl], dev),
                point_intensity=pack.gather_scalar([k(leaf(Group.LIGHTS, n, "intensity")) for n in pl], dev),
                dir_direction=pack.gather_vec3([k(leaf(Group.LIGHTS, n, "direction")) for n in dl], dev),
                dir_color=pack.gather_vec3([k(leaf(Group.LIGHTS, n, "color")) for n in dl], dev),
                dir_intensity=pack.gather_scalar([k(leaf(Group.LIGHTS, n, "intensity")) for n in dl], dev),
                ambient=pack.sum_vec3([k(leaf(Group.LIGHTS, n, "color")) for n in al], dev),
            )

        lights = part("lights", None, build_lights, [e.path for e in self.params.select(group=Group.LIGHTS)])
        env = None
        if sc.environment_lights:
            path = ParamPath(Group.LIGHTS, next(iter(sc.environment_lights)), "radiance")
            env = part("environment", None, lambda const: _constant(a[path]) if const else self.leaf(path), [path])
        return Frame(world, normals, uvs, colors, self._bvh, *pools[:3], lights, pools[3], env)

    def emits(self) -> bool:
        """Whether any material's emission is nonzero or may change under a tape (requires grad through a
        free path): the rasterized modes then add it to the shaded color. Read from the host once per
        change of the emission values (the table's versions)."""
        paths = [ParamPath(Group.MATERIALS, n, "emission") for n in self.scene.materials]
        key = tuple(self.params.versions[p] for p in paths)
        if self._emits is None or self._emits[0] != key:
            self._emits = (key, any(bool(np.any(self.arrays[p].numpy())) for p in paths))
        return self._emits[1]
