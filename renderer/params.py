"""The scene's parameter table: every differentiable value by one dotted path, with its kind and flags.

Built once from a `Scene` (`ParamTable.from_scene`), like Mitsuba's `mi.traverse`: a flat, ordered map
from `ParamPath` (`materials.paint.albedo`) to an `Entry` (group, owner, `Kind`, shape, dtype, valid
range, differentiable / discontinuous flags). It is the only place that builds or splits a dotted path:
everyone else asks it (`param_path`, `ParamPath.parse`, `table.select(...)`) and keeps the path object.

Changes go through the table: `update(path, value)` validates the value against its entry, writes it
through the bound writer (the `DeviceScene` leaf arrays), bumps the path's version and notifies the
subscribers (the G-buffer cache, target re-rendering); `changed(paths)` does the last two for values
written in place on the device (an optimizer update); `resize(path, shape)` is the only way a shape
changes (a field's lattice grows during coarse-to-fine training).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)


class Group(str, Enum):
    """The first part of a dotted path: which kind of scene element owns the value."""

    MESHES = "meshes"
    MATERIALS = "materials"
    LIGHTS = "lights"
    CAMERAS = "cameras"
    FIELDS = "fields"

    def __str__(self) -> str:
        return self.value


class Kind(str, Enum):
    """What a parameter is: decides its valid range, its projection after an optimizer update, how it is
    initialised and shown. A `str` enum, so it compares equal to its name (`Kind.ALBEDO == "albedo"`)."""

    VERTICES = "vertices"  # (V, 3) object-space positions
    COLORS = "colors"  # (V, 3) per-vertex albedo multipliers, >= 0
    UVS = "uvs"  # (V, 2)
    POSITION = "position"  # (3,) a mesh translation or a point light's position
    QUATERNION = "quaternion"  # (4,) unit (x, y, z, w)
    SCALE = "scale"  # (3,) > 0
    ALBEDO = "albedo"  # (H, W, 3) texture in [0, 1]
    ROUGHNESS = "roughness"  # (H, W, 1) texture in [0.02, 1]
    METALLIC = "metallic"  # (H, W, 1) texture in [0, 1]
    EMISSION = "emission"  # (H, W, 3) emitted radiance texture, >= 0
    ENVIRONMENT = "environment"  # (He, We, 3) equirectangular radiance of an environment light, >= 0
    COLOR = "color"  # (3,) light color, >= 0
    INTENSITY = "intensity"  # (1,) >= 0
    DIRECTION = "direction"  # (3,) direction a directional light travels (normalized in kernels)
    INTRINSICS = "intrinsics"  # (4,) fx, fy, cx, cy in pixels
    POSE = "pose"  # (7,) camera-to-world position + unit quaternion
    DENSITY = "density"  # field grids: raw densities
    SH = "sh"  # field grids: SH color coefficients
    WEIGHTS = "weights"  # neural fields: flat network weights
    EMBEDDING = "embedding"  # NeRF-W per-image embeddings

    def __str__(self) -> str:
        return self.value

    @property
    def is_texture(self) -> bool:
        return self in TEXTURE_KINDS

    @property
    def is_field(self) -> bool:
        return self in FIELD_KINDS

    @property
    def is_grid(self) -> bool:
        return self in GRID_KINDS

    @property
    def range(self) -> tuple[float, float]:
        """The meaningful closed range of every element (quaternions and poses are also renormalized)."""
        return _RANGES.get(self, (-np.inf, np.inf))

    @property
    def channels(self) -> int | None:
        """Texture channels (3 for albedo, 1 for roughness and metallic); None for other kinds."""
        return {Kind.ALBEDO: 3, Kind.ROUGHNESS: 1, Kind.METALLIC: 1}.get(self)


TEXTURE_KINDS = frozenset({Kind.ALBEDO, Kind.ROUGHNESS, Kind.METALLIC})
FIELD_KINDS = frozenset({Kind.DENSITY, Kind.SH, Kind.WEIGHTS, Kind.EMBEDDING})
GRID_KINDS = frozenset({Kind.DENSITY, Kind.SH})
# kinds whose change moves silhouettes or visibility (edge gradients, no G-buffer reuse)
DISCONTINUOUS_KINDS = frozenset({Kind.VERTICES, Kind.POSITION, Kind.QUATERNION, Kind.SCALE, Kind.INTRINSICS,
                                 Kind.POSE})
# Bounds that keep every product the renderer forms finite in float32 (|x| <= 3.4e38), so a value that
# passes float32's range cannot overflow while rendering (scenes/README.md, "Value ranges"): world
# coordinates stay within COORD_MAX * SCALE_MAX + COORD_MAX = 1e12 (squared distances ~1e24); a point
# light's radiance intensity * color / d^2 (d^2 >= 1e-12 in the kernels) times GGX's peak (~3e7) stays
# near 3e34; focal lengths up to 1e8 pixels are a field of view of 0.005 degrees at 8192 pixels.
COORD_MAX = 1e6  # vertices, translations, light and camera positions, uvs (scene units)
SCALE_MAX = 1e6
LIGHT_COLOR_MAX = 1e6  # light colors and per-vertex color multipliers
INTENSITY_MAX = 1e9
INTRINSICS_MAX = 1e8  # fx, fy, cx, cy in pixels
_RANGES = {Kind.ALBEDO: (0.0, 1.0), Kind.ROUGHNESS: (0.02, 1.0), Kind.METALLIC: (0.0, 1.0),
           Kind.COLOR: (0.0, LIGHT_COLOR_MAX), Kind.COLORS: (0.0, LIGHT_COLOR_MAX),
           Kind.INTENSITY: (0.0, INTENSITY_MAX), Kind.EMISSION: (0.0, INTENSITY_MAX),
           Kind.ENVIRONMENT: (0.0, INTENSITY_MAX),
           Kind.SCALE: (1e-3, SCALE_MAX), Kind.VERTICES: (-COORD_MAX, COORD_MAX), Kind.UVS: (-COORD_MAX, COORD_MAX),
           Kind.POSITION: (-COORD_MAX, COORD_MAX), Kind.POSE: (-COORD_MAX, COORD_MAX),
           Kind.QUATERNION: (-COORD_MAX, COORD_MAX), Kind.DIRECTION: (-COORD_MAX, COORD_MAX),
           Kind.INTRINSICS: (-INTRINSICS_MAX, INTRINSICS_MAX)}
# the leaf names of each element type, in the table's order, with their kinds
MESH_LEAVES = (("vertices", Kind.VERTICES), ("colors", Kind.COLORS), ("uvs", Kind.UVS),
               ("translation", Kind.POSITION), ("rotation", Kind.QUATERNION), ("scale", Kind.SCALE))
MATERIAL_LEAVES = (("albedo", Kind.ALBEDO), ("roughness", Kind.ROUGHNESS), ("metallic", Kind.METALLIC),
                   ("emission", Kind.EMISSION))
POINT_LIGHT_LEAVES = (("position", Kind.POSITION), ("color", Kind.COLOR), ("intensity", Kind.INTENSITY))
DIRECTIONAL_LIGHT_LEAVES = (("direction", Kind.DIRECTION), ("color", Kind.COLOR), ("intensity", Kind.INTENSITY))
AMBIENT_LIGHT_LEAVES = (("color", Kind.COLOR),)
ENVIRONMENT_LIGHT_LEAVES = (("radiance", Kind.ENVIRONMENT),)
CAMERA_LEAVES = (("intrinsics", Kind.INTRINSICS), ("pose", Kind.POSE))


class ParamPath(str):
    """A dotted path `group.owner.name`, e.g. `lights.key.position`. A `str` (so it keys dicts, compares
    and serializes as the text it is) that also knows its parts. Build one with `param_path` or
    `ParamPath.parse`; element names may not contain dots (the scene schema refuses them)."""

    group: Group
    owner: str
    name: str

    def __new__(cls, group: Group | str, owner: str, name: str) -> ParamPath:
        group = Group(group)
        for what, part in (("owner", owner), ("name", name)):
            if not isinstance(part, str) or not part or "." in part:
                raise ValueError(f"{what}: expected a non-empty name without dots, got {part!r}")
        self = super().__new__(cls, f"{group.value}.{owner}.{name}")
        self.group, self.owner, self.name = group, owner, name
        return self

    def __reduce__(self):
        return (ParamPath, (self.group.value, self.owner, self.name))

    @classmethod
    def parse(cls, text: str) -> ParamPath:
        """The path a dotted string names; ValueError when it is not `group.owner.name`."""
        if isinstance(text, ParamPath):
            return text
        if not isinstance(text, str):
            raise TypeError(f"path: expected a dotted string such as 'lights.key.position', got {type(text).__name__}")
        parts = text.split(".")
        if len(parts) != 3 or parts[0] not in Group._value2member_map_:
            raise ValueError(f"path: expected 'group.owner.name' with group one of "
                             f"{[g.value for g in Group]}, got {text!r}")
        return cls(*parts)

    @property
    def element(self) -> tuple[Group, str]:
        """(group, owner): the scene element the value belongs to."""
        return self.group, self.owner


def param_path(group: Group | str, owner: str, name: str) -> ParamPath:
    """The path of leaf `name` of scene element `owner` in `group`."""
    return ParamPath(group, owner, name)


def camera_pose(camera: str) -> ParamPath:
    return ParamPath(Group.CAMERAS, camera, "pose")


def camera_intrinsics(camera: str) -> ParamPath:
    return ParamPath(Group.CAMERAS, camera, "intrinsics")


def element_prefix(group: Group | str, owner: str) -> str:
    """`group.owner.`: the prefix every path of one element starts with (for files keyed by path)."""
    return f"{Group(group).value}.{owner}."


@dataclass(frozen=True)
class Entry:
    """One parameter of the table."""

    path: ParamPath
    kind: Kind
    shape: tuple[int, ...]
    dtype: str = "float32"
    differentiable: bool = True
    discontinuous: bool = False  # changing it moves silhouettes / visibility

    @property
    def group(self) -> Group:
        return self.path.group

    @property
    def owner(self) -> str:
        return self.path.owner

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def range(self) -> tuple[float, float]:
        return self.kind.range

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def check(self, value, what: str | None = None, check_range: bool = True) -> np.ndarray:
        """`value` as a float32 array of this entry's shape, or ValueError naming the path: wrong shape,
        not finite, outside float32's range, or (with `check_range`) outside the kind's range."""
        what = what or str(self.path)
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: expected numbers of shape {self.shape}, got {type(value).__name__}") from exc
        if arr.size == self.size and arr.shape != self.shape:
            arr = arr.reshape(self.shape)
        if arr.shape != self.shape:
            raise ValueError(f"{what}: expected shape {self.shape}, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: value is not finite")
        if arr.size and np.abs(arr).max() > FLOAT32_MAX:
            raise ValueError(f"{what}: values beyond float32's range (|x| <= {FLOAT32_MAX:.3g})")
        lo, hi = self.range if check_range else (-np.inf, np.inf)
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"{what}: expected values in [{lo:g}, {hi:g}] for {self.kind.value} parameters, "
                             f"got [{arr.min():g}, {arr.max():g}]")
        return arr.astype(np.float32)


def scene_values(scene) -> dict[ParamPath, tuple[np.ndarray, Kind]]:
    """{path: (the NumPy array the scene holds — not a copy, kind)} of every differentiable value of
    `scene` (a `renderer.scene.Scene`) in a stable order: meshes, materials, point / directional / ambient /
    environment lights, cameras, fields."""
    out: dict[ParamPath, tuple[np.ndarray, Kind]] = {}

    def add(group: Group, owner: str, leaves, values) -> None:
        for (name, kind), value in zip(leaves, values, strict=True):
            out[ParamPath(group, owner, name)] = (value, kind)

    for m in scene.meshes.values():
        add(Group.MESHES, m.name, MESH_LEAVES, (m.vertices, m.colors, m.uvs, m.translation, m.rotation, m.scale))
    for mat in scene.materials.values():
        add(Group.MATERIALS, mat.name, MATERIAL_LEAVES, (mat.albedo, mat.roughness, mat.metallic, mat.emission))
    for light in scene.point_lights.values():
        add(Group.LIGHTS, light.name, POINT_LIGHT_LEAVES, (light.position, light.color, light.intensity))
    for light in scene.directional_lights.values():
        add(Group.LIGHTS, light.name, DIRECTIONAL_LIGHT_LEAVES, (light.direction, light.color, light.intensity))
    for light in scene.ambient_lights.values():
        add(Group.LIGHTS, light.name, AMBIENT_LIGHT_LEAVES, (light.color,))
    for light in getattr(scene, "environment_lights", {}).values():
        add(Group.LIGHTS, light.name, ENVIRONMENT_LIGHT_LEAVES, (light.radiance,))
    for cam in scene.cameras.values():
        add(Group.CAMERAS, cam.name, CAMERA_LEAVES, (cam.intrinsics, cam.pose))
    for f in scene.fields.values():
        values = f.values()
        add(Group.FIELDS, f.name, [(key, Kind(kind)) for key, (_, kind) in values.items()],
            [v for v, _ in values.values()])
    return out


Subscriber = Callable[[tuple[ParamPath, ...]], None]


class ParamTable:
    """The ordered table of a scene's parameters (see the module docstring)."""

    def __init__(self, entries: Iterable[Entry]):
        self._entries: dict[ParamPath, Entry] = {}
        for e in entries:
            if e.path in self._entries:
                raise ValueError(f"{e.path}: two parameters share this path")
            self._entries[e.path] = e
        self.versions: dict[ParamPath, int] = {p: 0 for p in self._entries}
        self._writer: Callable[[ParamPath, np.ndarray], None] | None = None
        self._subscribers: list[Subscriber] = []

    @classmethod
    def from_scene(cls, scene) -> ParamTable:
        """Every differentiable value of `scene` (a `renderer.scene.Scene`), in `scene_values`' order."""
        return cls(Entry(path, kind, tuple(np.shape(value)),
                         discontinuous=kind in DISCONTINUOUS_KINDS and path.group is not Group.LIGHTS)
                   for path, (value, kind) in scene_values(scene).items())

    # -- look-up -------------------------------------------------------------------------------------
    def __contains__(self, path) -> bool:
        return path in self._entries

    def __iter__(self) -> Iterator[ParamPath]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, path) -> Entry:
        try:
            return self._entries[path]
        except KeyError:
            raise KeyError(self.unknown(path)) from None

    def unknown(self, path) -> str:
        """The message for a path that is not in the table, with close matches."""
        close = difflib.get_close_matches(str(path), [str(p) for p in self._entries], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"{path!r} is not a parameter of this scene{hint}"

    def path(self, text) -> ParamPath:
        """The table's own path object for a dotted string (KeyError with close matches when absent)."""
        return self[text].path

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def select(self, group: Group | str | None = None, owner: str | None = None, kind: Kind | str | None = None,
               name: str | None = None) -> list[Entry]:
        """The entries matching every given criterion, in table order."""
        group = Group(group) if group is not None else None
        kinds = None if kind is None else {Kind(kind)}
        return [e for e in self._entries.values()
                if (group is None or e.group is group) and (owner is None or e.owner == owner)
                and (kinds is None or e.kind in kinds) and (name is None or e.name == name)]

    def find(self, group: Group | str, owner: str, name: str) -> ParamPath | None:
        """The path `group.owner.name` when the table has it, else None."""
        p = ParamPath(group, owner, name)
        return p if p in self._entries else None

    def of_element(self, group: Group | str, owner: str) -> list[ParamPath]:
        return [e.path for e in self.select(group=group, owner=owner)]

    # -- changes -------------------------------------------------------------------------------------
    def bind(self, writer: Callable[[ParamPath, np.ndarray], None]) -> None:
        """Set the function that stores a checked value (a `DeviceScene` writes its leaf array)."""
        self._writer = writer

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call `fn(paths)` after every change; returns a function that unsubscribes."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn) if fn in self._subscribers else None

    def update(self, path, value, *, check_range: bool = True) -> np.ndarray:
        """Validate `value` against the entry at `path`, store it, bump the version and notify. Returns the
        stored float32 array. Nothing changes when validation fails. `check_range=False` skips the kind's
        range (raw field values, a projected optimizer state) but never shape and finiteness."""
        entry = self[path]
        arr = entry.check(value, check_range=check_range)
        if self._writer is None:
            raise RuntimeError("ParamTable.update: no writer bound (the table of a DeviceScene has one)")
        self._writer(entry.path, arr)
        self.changed((entry.path,))
        return arr

    def changed(self, paths: Iterable) -> None:
        """Declare values at `paths` changed in place (bump versions, notify subscribers)."""
        paths = tuple(self[p].path for p in paths)
        for p in paths:
            self.versions[p] += 1
        if paths:
            for fn in list(self._subscribers):
                fn(paths)

    def resize(self, path, shape: tuple[int, ...]) -> None:
        """Give the entry at `path` a new shape (the caller replaces its storage); counts as a change."""
        e = self[path]
        self._entries[e.path] = Entry(e.path, e.kind, tuple(int(s) for s in shape), e.dtype, e.differentiable,
                                      e.discontinuous)
        self.changed((e.path,))
