"""Pydantic models of a drstudio scene file (JSON, version 1), documented in scenes/README.md.

Every model forbids unknown keys and non-finite numbers and is strict (no "1" for 1, no 1.0 for an
integer, no true for 1). Every number must be finite in float32 (the renderer's type: |x| <= 3.4e38) and
values that must be > 0 must stay > 0 in float32 (at least its smallest normal, 1.2e-38); nesting is at
most `MAX_JSON_DEPTH` deep. `validate_scene(data, file)` turns any validation failure into a `SceneError` naming the
JSON field path, e.g. ``meshes[1].transform.scale``. Checks that need more than one field of the
file (names that must exist, files that must load, parameter paths) live in `renderer.loading`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import conventions as cv
from .errors import SceneError, field_path
from .scene import RENDER_MODES, SHADING_MODELS, RenderSettings

MESH_EXTENSIONS = (".obj", ".ply", ".glb", ".gltf")
MAX_CAMERA_SIZE = 8192
MAX_JSON_DEPTH = 64  # nesting of objects and lists in a scene file (real scenes: under 10)
NAME_MAX = 255  # bytes in one part of a file name (Linux, macOS and Windows file systems)
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: larger numbers are inf in float32
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # 1.2e-38: smallest normal float32; below it values underflow


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError("unknown_field", "unknown field; allowed fields: {allowed}",
                                              {"field": key, "allowed": ", ".join(cls.model_fields)})
        return data


def _exactly_one(model: BaseModel, *names: str) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) != 1:
        listed = " or ".join(f'"{n}"' for n in names)
        got = f"{len(given)} ({', '.join(given)})" if given else "none"
        raise ValueError(f"expected exactly one of {listed}, got {got}")


# ---- file references ----------------------------------------------------------------------------

class FileRef:
    """Field metadata: a string value of this field is the name of a file that loading the scene reads
    (relative to the scene file). `kind`: "image", "mesh", "image_or_mesh" (an init), "transforms" (a
    transforms.json, which names images in turn) or "scene" (another scene file). `file_references` lists
    them; the recorder copies exactly these files into a recording and the reader checks exactly these."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"FileRef({self.kind!r})"


def file_references(spec: BaseModel, parts: tuple = ()) -> list[tuple[tuple, str, str]]:
    """(JSON path parts, file name as written, FileRef kind) of every file reference in a validated scene
    (the JSON path of a model field is its path in the file: the models have no aliases)."""
    out = []
    for name, info in type(spec).model_fields.items():
        value = getattr(spec, name)
        ref = next((m for m in info.metadata if isinstance(m, FileRef)), None)
        if ref is not None and isinstance(value, str):
            out.append((parts + (name,), value, ref.kind))
            continue
        items = (value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list)
                 else [(None, value)])
        for key, item in items:
            if isinstance(item, BaseModel):
                out += file_references(item, parts + ((name,) if key is None else (name, key)))
    return out


# ---- value types --------------------------------------------------------------------------------

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _f32_positive(v: float) -> float:
    """A value that must be > 0 stays > 0 (and normal) in float32."""
    if v < FLOAT32_TINY:
        raise ValueError(f"expected a number > 0 that float32 keeps > 0 (at least {FLOAT32_TINY:.2g})")
    return v


def _not_bool(v: Any) -> Any:
    """JSON true/false are not the integers 1/0 (a Literal[0, 1] would take them)."""
    if isinstance(v, bool):
        raise ValueError("expected an integer (true and false are not integers)")
    return v


MAX_NAME = 64  # names become file names of results (views/<camera>.png, <path>.png): well under 255 bytes


def _check_name(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
        raise ValueError("expected a name of letters, digits and _ not starting with a digit "
                         "(names become dotted-path segments)")
    if len(v) > MAX_NAME:
        raise ValueError(f"expected a name of at most {MAX_NAME} characters (names become file names of the "
                         f"results), got {len(v)}")
    return v


def _numbers(n: int, lo: float, hi: float):
    """A checker of n numbers in [lo, hi] as a list (n = 0: one bare number); None when invalid."""
    def check(v: Any):
        items = [v] if n == 0 else v if isinstance(v, list) and len(v) == n else None
        if items is None or not all(_is_number(x) and lo <= x <= hi for x in items):
            return None
        return float(v) if n == 0 else [float(x) for x in v]
    return check


def _number_or_file(check, what: str) -> PlainValidator:
    """A value that is either numbers accepted by `check` or a (non-empty) image file name."""
    def validate(v: Any):
        if isinstance(v, str) and v.strip():
            return v
        value = None if isinstance(v, str) else check(v)
        if value is None:
            raise ValueError(f"expected {what}")
        return value
    return PlainValidator(validate)


def _scale(v: Any) -> list[float]:
    def ok(x):
        return _is_number(x) and FLOAT32_TINY <= x <= FLOAT32_MAX
    if ok(v):
        return [float(v)] * 3
    if isinstance(v, list) and len(v) == 3 and all(ok(x) for x in v):
        return [float(x) for x in v]
    raise ValueError(f"expected a number > 0 or a list of 3 numbers > 0 (each at least {FLOAT32_TINY:.2g}, "
                     f"smaller ones are 0 in float32)")


def _number_array(v: Any) -> list:
    """Nested lists of finite numbers with a rectangular shape."""
    def walk(x):
        if isinstance(x, list):
            return all(walk(y) for y in x)
        return _is_number(x)
    ok = isinstance(v, list) and walk(v)
    if ok:
        try:
            np.asarray(v, dtype=np.float64)
        except ValueError:
            ok = False
    if not ok:
        raise ValueError("expected a list (possibly nested, rectangular) of finite numbers")
    return v


Name = Annotated[str, AfterValidator(_check_name)]
Vec3 = Annotated[list[float], Field(min_length=3, max_length=3)]
Vec4 = Annotated[list[float], Field(min_length=4, max_length=4)]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0), AfterValidator(_f32_positive)]
Color = Annotated[list[NonNegative], Field(min_length=3, max_length=3)]
Matrix4 = Annotated[list[Vec4], Field(min_length=4, max_length=4)]
Resolution = Annotated[int, Field(ge=3, le=1024)]

Albedo = Annotated[list[float] | str, _number_or_file(
    _numbers(3, 0.0, 1.0), "[r, g, b] with each in [0, 1], or an image file name")]
Roughness = Annotated[float | str, _number_or_file(
    _numbers(0, 0.02, 1.0), "a number in [0.02, 1] or an image file name")]
Metallic = Annotated[float | str, _number_or_file(
    _numbers(0, 0.0, 1.0), "a number in [0, 1] or an image file name")]
Background = Annotated[list[float] | str, _number_or_file(
    _numbers(3, 0.0, math.inf), "[r, g, b] with each >= 0, or an image file name")]
Radiance = Annotated[list[float] | str, _number_or_file(
    _numbers(3, 0.0, FLOAT32_MAX), "[r, g, b] radiance with each >= 0, or an image file name")]
Scale = Annotated[list[float], PlainValidator(_scale)]


# ---- meshes -------------------------------------------------------------------------------------

class SpherePrimitive(Strict):
    """UV sphere: `resolution` segments around the equator, resolution // 2 bands pole to pole."""
    type: Literal["sphere"]
    radius: Positive = 1.0
    resolution: Resolution = 64


class IcospherePrimitive(Strict):
    """Welded icosphere (no seam, no UVs): 10 * 4^subdivisions + 2 vertices."""
    type: Literal["icosphere"]
    radius: Positive = 1.0
    subdivisions: Annotated[int, Field(ge=0, le=7)] = 3


class CubePrimitive(Strict):
    type: Literal["cube"]
    size: Positive = 1.0


class PlanePrimitive(Strict):
    """A square in y = 0 facing +Y."""
    type: Literal["plane"]
    size: Positive = 1.0


class TorusPrimitive(Strict):
    """Around the Y axis: `resolution` segments around the ring, max(3, resolution // 2) around the tube."""
    type: Literal["torus"]
    major_radius: Positive = 1.0
    minor_radius: Positive = 0.25
    resolution: Resolution = 64


Primitive = Annotated[SpherePrimitive | IcospherePrimitive | CubePrimitive | PlanePrimitive | TorusPrimitive,
                      Field(discriminator="type")]


class Rotation(Strict):
    axis_angle: Vec4 | None = None  # [ax, ay, az, degrees]
    quaternion: Vec4 | None = None  # [x, y, z, w], normalized on load
    euler_deg: Vec3 | None = None  # degrees about world X, then Y, then Z

    @field_validator("axis_angle")
    @classmethod
    def _axis(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and np.linalg.norm(v[:3]) < 1e-9:
            raise ValueError("expected [ax, ay, az, degrees] with a non-zero axis")
        return v

    @field_validator("quaternion")
    @classmethod
    def _nonzero(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and np.linalg.norm(v) < 1e-9:
            raise ValueError("expected a non-zero quaternion [x, y, z, w]")
        return v

    @model_validator(mode="after")
    def _one(self) -> Rotation:
        _exactly_one(self, "axis_angle", "quaternion", "euler_deg")
        return self

    def to_quaternion(self) -> np.ndarray:
        if self.axis_angle is not None:
            return cv.quat_from_axis_angle(self.axis_angle[:3], self.axis_angle[3])
        if self.quaternion is not None:
            return cv.normalize(self.quaternion)
        return cv.quat_from_euler_deg(self.euler_deg)


class Transform(Strict):
    translation: Vec3 = [0.0, 0.0, 0.0]
    rotation: Rotation | None = None
    scale: Scale = [1.0, 1.0, 1.0]  # a number (uniform) or [sx, sy, sz], all > 0


class MeshSpec(Strict):
    name: Name
    file: Annotated[str | None, FileRef("mesh")] = None
    primitive: Primitive | None = None
    transform: Transform = Field(default_factory=Transform)
    material: Name

    @field_validator("file")
    @classmethod
    def _extension(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith(MESH_EXTENSIONS):
            raise ValueError(f"expected a mesh file ending in {', '.join(MESH_EXTENSIONS)}")
        return v

    @model_validator(mode="after")
    def _source(self) -> MeshSpec:
        _exactly_one(self, "file", "primitive")
        return self


# ---- materials, lights, cameras -----------------------------------------------------------------

class MaterialSpec(Strict):
    name: Name
    model: Literal[SHADING_MODELS] = "lambert"
    albedo: Annotated[Albedo, FileRef("image")] = [0.8, 0.8, 0.8]
    roughness: Annotated[Roughness, FileRef("image")] = 0.5
    metallic: Annotated[Metallic, FileRef("image")] = 0.0
    wrap: Literal["wrap", "clamp"] = "wrap"
    emission: Annotated[Radiance, FileRef("image")] = [0.0, 0.0, 0.0]  # emitted radiance (linear RGB)
    emission_scale: Annotated[float, Field(ge=0, le=FLOAT32_MAX)] = 1.0  # multiplies an emission image


class PointLightSpec(Strict):
    name: Name
    type: Literal["point"]
    position: Vec3
    color: Color = [1.0, 1.0, 1.0]
    intensity: NonNegative = 1.0


class DirectionalLightSpec(Strict):
    name: Name
    type: Literal["directional"]
    direction: Vec3  # the direction light travels
    color: Color = [1.0, 1.0, 1.0]
    intensity: NonNegative = 1.0

    @field_validator("direction")
    @classmethod
    def _nonzero(cls, v: list[float]) -> list[float]:
        if np.linalg.norm(v) < 1e-9:
            raise ValueError("expected a non-zero direction")
        return v


class AmbientLightSpec(Strict):
    name: Name
    type: Literal["ambient"]
    color: Color


class EnvironmentLightSpec(Strict):
    """Radiance from every direction at infinity (render mode "path" only): a constant or an equirectangular
    image (+Y up, row 0 at the zenith, the middle column towards -Z), times `scale`."""
    name: Name
    type: Literal["environment"]
    radiance: Annotated[Radiance, FileRef("image")]
    scale: Annotated[float, Field(ge=0, le=FLOAT32_MAX)] = 1.0


LightSpec = Annotated[PointLightSpec | DirectionalLightSpec | AmbientLightSpec | EnvironmentLightSpec,
                      Field(discriminator="type")]


class LookAt(Strict):
    eye: Vec3
    target: Vec3
    up: Vec3 = [0.0, 1.0, 0.0]

    @model_validator(mode="after")
    def _valid(self) -> LookAt:
        forward = np.subtract(self.target, self.eye)
        if np.linalg.norm(forward) < 1e-9:
            raise ValueError("expected different eye and target")
        if np.linalg.norm(np.cross(forward, self.up)) < 1e-9 * np.linalg.norm(forward):
            raise ValueError("expected an up vector not parallel to target - eye (nor zero)")
        return self


class CameraSpec(Strict):
    name: Name
    width: Annotated[int, Field(ge=1, le=MAX_CAMERA_SIZE)]
    height: Annotated[int, Field(ge=1, le=MAX_CAMERA_SIZE)]
    fov_y: Annotated[float, Field(gt=0, lt=180), AfterValidator(_f32_positive)] | None = None  # degrees
    fx: Positive | None = None  # pixels
    fy: Positive | None = None
    cx: float | None = None  # pixels, default width / 2
    cy: float | None = None  # pixels, default height / 2
    look_at: LookAt | None = None
    matrix: Matrix4 | None = None  # camera-to-world, rows
    convention: Literal["opengl", "opencv"] = "opengl"  # of `matrix`

    @model_validator(mode="after")
    def _valid(self) -> CameraSpec:
        if (self.fx is None) != (self.fy is None):
            raise ValueError('expected both "fx" and "fy" (or neither, with "fov_y")')
        _exactly_one(self, "fov_y", "fx")
        _exactly_one(self, "look_at", "matrix")
        if self.look_at is not None and "convention" in self.model_fields_set:
            raise ValueError('"convention" applies to "matrix" only (look_at is convention-free)')
        with np.errstate(over="ignore", divide="ignore"):
            k = self.intrinsics().astype(np.float32)
        if not np.isfinite(k).all():  # fov_y 1e-38: a focal length of 1e39 pixels
            raise ValueError(f"expected intrinsics finite in float32, got fx, fy, cx, cy = {k.tolist()} (fov_y "
                             f"too small?)")
        return self

    @field_validator("matrix")
    @classmethod
    def _rigid(cls, v: list | None) -> list | None:
        if v is not None and cv.rigid_error(v) > 1e-4:
            raise ValueError("expected a rigid camera-to-world transform (orthonormal rotation with "
                             "determinant +1, last row [0, 0, 0, 1])")
        return v

    def intrinsics(self) -> np.ndarray:
        if self.fov_y is not None:
            k = cv.fov_y_to_intrinsics(self.fov_y, self.width, self.height)
        else:
            k = np.array([self.fx, self.fy, self.width / 2, self.height / 2])
        k[2] = k[2] if self.cx is None else self.cx
        k[3] = k[3] if self.cy is None else self.cy
        return k

    def pose(self) -> np.ndarray:
        if self.look_at is not None:
            return cv.look_at(self.look_at.eye, self.look_at.target, self.look_at.up)
        m = np.asarray(self.matrix, dtype=np.float64)
        return cv.matrix_to_pose(cv.opencv_to_opengl(m) if self.convention == "opencv" else m)


class RenderSpec(Strict):
    mode: Literal[RENDER_MODES] = RenderSettings.mode
    shadows: bool = RenderSettings.shadows
    soft_sigma: Positive = RenderSettings.soft_sigma
    soft_gamma: Positive = RenderSettings.soft_gamma
    mipmaps: bool = RenderSettings.mipmaps
    # mode "path" (others ignore them): samples per pixel, scattering events per path, random sequence
    spp: Annotated[int, Field(ge=1, le=1 << 16)] = RenderSettings.spp
    max_depth: Annotated[int, Field(ge=0, le=64)] = RenderSettings.max_depth
    seed: Annotated[int, Field(ge=0, le=(1 << 31) - 1)] = RenderSettings.seed
    jitter: bool = RenderSettings.jitter
    shadow_edges: Annotated[int, Field(ge=0, le=4096)] = RenderSettings.shadow_edges


# ---- fields (radiance fields) -------------------------------------------------------------------

MAX_GRID_RESOLUTION = 512


def _grid_resolution(v: Any) -> list[int]:
    def ok(x):
        return isinstance(x, int) and not isinstance(x, bool) and 2 <= x <= MAX_GRID_RESOLUTION
    if ok(v):
        return [v] * 3
    if isinstance(v, list) and len(v) == 3 and all(ok(x) for x in v):
        return list(v)
    raise ValueError(f"expected an integer in [2, {MAX_GRID_RESOLUTION}] or a list of 3 of them")


def _aabb(v: Any) -> list[list[float]] | str:
    if v == "auto":  # from the training dataset: its `capture.aabb` (drstudio capture), aabb_scale, or frustums
        return v
    if (isinstance(v, list) and len(v) == 2 and all(isinstance(c, list) and len(c) == 3 for c in v)
            and all(_is_number(x) for c in v for x in c)):
        if all(np.float32(lo) < np.float32(hi) for lo, hi in zip(v[0], v[1], strict=True)):
            return [[float(x) for x in c] for c in v]
    raise ValueError('expected [[xmin, ymin, zmin], [xmax, ymax, zmax]] with each min < max (in float32), or '
                     '"auto" (from the targets.transforms dataset)')


GridResolution = Annotated[list[int], PlainValidator(_grid_resolution)]
Aabb = Annotated[list[list[float]] | str, PlainValidator(_aabb)]


class OccupancySpec(Strict):
    """Empty-space skipping while training (renderer.volume.OccupancyGrid)."""
    resolution: GridResolution = [64, 64, 64]  # cells per axis
    update_every: Annotated[int, Field(ge=1)] = 16  # steps between updates
    threshold: NonNegative = 0.01  # density below which a cell is empty


class CoarseToFineSpec(Strict):
    start_resolution: GridResolution
    upsample_at: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]  # steps, increasing

    @field_validator("upsample_at")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("expected strictly increasing step numbers")
        return v


class VoxelGridFieldSpec(Strict):
    """Density + SH color on a lattice (renderer.volume.VoxelGrid)."""
    name: Name
    type: Literal["voxel_grid"]
    resolution: GridResolution  # lattice points per axis at the end of training
    aabb: Aabb
    sh_degree: Annotated[Literal[0, 1, 2], BeforeValidator(_not_bool)] = 0
    activation: Literal["softplus", "relu"] = "softplus"
    init_density: Positive = 0.1  # the activated density of the fresh grid
    storage: Literal["float32", "float16"] = "float32"
    samples_per_ray: Annotated[int, Field(ge=1, le=4096)] = 128
    occupancy: OccupancySpec | None = None
    coarse_to_fine: CoarseToFineSpec | None = None
    contract: bool = False  # model unbounded space: aabb is the inner box, the lattice spans twice it
    # regularizers of each step (renderer.volume.regularizers), reported as loss terms of those names:
    distortion: NonNegative = 0.0  # mip-NeRF 360's distortion loss of the batch's rays, distances in box diagonals
    density_l1: NonNegative = 0.0  # mean activated density over the lattice (empties space no view constrains)
    # Floaters No More: the gradients of samples nearer to their camera than this world distance scale with
    # (distance / this)^2 (renderer.volume.composite.scale_gradients_by_distance); 0 leaves them as they are
    gradient_scaling: NonNegative = 0.0
    # optimize.loss.tv on every tv_every-th step only, at tv_every times its weight: TV's pass over the whole lattice
    # (and, with optimizer.lazy, the update of every lattice point it touches) then costs 1/tv_every per step
    tv_every: Annotated[int, Field(ge=1)] = 1
    # the image loss (optimize.loss l1/l2) on linear RGB, or on sRGB-encoded render and target (renderer.volume.srgb)
    loss_space: Literal["linear", "srgb"] = "linear"

    @model_validator(mode="after")
    def _coarse_below_fine(self) -> VoxelGridFieldSpec:
        c = self.coarse_to_fine
        if c is not None and not all(s < r for s, r in zip(c.start_resolution, self.resolution, strict=True)):
            raise ValueError(f"coarse_to_fine.start_resolution {c.start_resolution} must be below resolution "
                             f"{self.resolution} on every axis")
        return self


class _NeuralCommon(Strict):
    """What a neural field and a NeRF-W field share: the box and the MLP's shape."""
    name: Name
    aabb: Aabb
    encoding: Literal["pe", "ipe"] = "ipe"
    pos_freqs: Annotated[int, Field(ge=0, le=16)] = 8
    dir_freqs: Annotated[int, Field(ge=0, le=8)] = 4
    depth: Annotated[int, Field(ge=1, le=16)] = 4
    width: Annotated[int, Field(ge=2, le=1024)] = 64
    use_view_dirs: bool = True
    density_scale: Positive = 10.0  # density = density_scale * softplus(raw + density_bias), per world length
    density_bias: float = 0.0
    samples_per_ray: Annotated[int, Field(ge=1, le=4096)] = 64
    seed: Annotated[int, Field(ge=0)] = 0  # of the weights' initialization


class NeuralFieldSpec(_NeuralCommon):
    """A NeRF MLP in torch (renderer.volume.neural_field.NeuralField), PE or Mip-NeRF IPE; all its weights are
    one flat parameter `fields.NAME.weights`."""
    type: Literal["neural"]
    occupancy: OccupancySpec | None = None


class NerfWFieldSpec(_NeuralCommon):
    """NeRF-W: a neural field plus a per-image appearance embedding (in the static color) and a transient
    field with an uncertainty (Martin-Brualla et al. 2021). Parameters `fields.NAME.weights`,
    `fields.NAME.appearance` (n_train_images, appearance_dim), `fields.NAME.transient` (n_train_images,
    transient_dim). No occupancy grid: transient content may lie anywhere along a ray."""
    type: Literal["nerf_w"]
    appearance_dim: Annotated[int, Field(ge=0, le=256)] = 8  # 0: no appearance embedding
    transient_dim: Annotated[int, Field(ge=0, le=256)] = 8  # 0: no transient component
    beta_min: Positive = 0.1  # floor of the per-ray uncertainty
    lambda_u: NonNegative = 1.0  # weight of the transient-density regularizer (mean transient density)
    transient_bias: float = -4.0  # added to the raw transient density (negative: starts nearly empty)


class HashGridFieldSpec(Strict):
    """Instant-NGP's multiresolution hash-grid encoding (Warp, renderer.volume.hash_grid) feeding a small density
    MLP and a color MLP (torch, renderer.volume.hash_field.HashGridField). Parameters `fields.NAME.table`
    (n_levels * 2^log2_table_size, n_features), the hash tables, and `fields.NAME.weights` (P,), both MLPs' weights
    flat. The defaults are Instant-NGP's scaled for a CPU (8 levels of 2^16 entries instead of 16 of 2^19)."""
    name: Name
    type: Literal["hash_grid"]
    aabb: Aabb
    n_levels: Annotated[int, Field(ge=1, le=32)] = 8
    n_features: Annotated[Literal[1, 2, 4, 8], BeforeValidator(_not_bool)] = 2  # per level
    log2_table_size: Annotated[int, Field(ge=4, le=24)] = 16  # entries per level: 2^log2_table_size
    base_resolution: Annotated[int, Field(ge=1, le=4096)] = 16  # cells per axis of the coarsest level
    finest_resolution: Annotated[int, Field(ge=1, le=1 << 16)] = 256  # cells per axis of the finest level
    width: Annotated[int, Field(ge=2, le=1024)] = 64  # hidden width of both MLPs
    geo_features: Annotated[int, Field(ge=0, le=256)] = 15  # density MLP outputs passed on to the color MLP
    color_layers: Annotated[int, Field(ge=1, le=8)] = 2  # hidden layers of the color MLP
    sh_degree: Annotated[Literal[0, 1, 2], BeforeValidator(_not_bool)] = 2  # view-direction SH encoding
    use_view_dirs: bool = True
    density_activation: Literal["trunc_exp", "softplus"] = "trunc_exp"
    density_bias: float = 0.0  # added to the raw density before the activation
    density_scale: Positive = 1.0  # softplus only: density = density_scale * softplus(raw + density_bias)
    samples_per_ray: Annotated[int, Field(ge=1, le=4096)] = 64
    occupancy: OccupancySpec | None = None
    seed: Annotated[int, Field(ge=0)] = 0  # of the table's and the MLPs' initialization
    contract: bool = False  # model unbounded space: aabb is the inner box, the encoding spans twice it (voxel_grid's)
    gradient_scaling: NonNegative = 0.0  # Floaters No More, as voxel_grid's (a world distance; 0: off)

    @model_validator(mode="after")
    def _finest_above_base(self) -> HashGridFieldSpec:
        if self.finest_resolution < self.base_resolution:
            raise ValueError(f"finest_resolution {self.finest_resolution} must be >= base_resolution "
                             f"{self.base_resolution}")
        return self


class DynamicFieldSpec(Strict):
    """A time-conditioned voxel grid (renderer.volume.time_grid.TimeGrid): `n_times` lattices over the time
    range, linearly blended between neighbouring slices. Parameters `fields.NAME.density` (T, nx, ny, nz),
    `fields.NAME.sh` (T, nx, ny, nz, 3K)."""
    name: Name
    type: Literal["dynamic"]
    resolution: GridResolution
    n_times: Annotated[int, Field(ge=2, le=256)]
    aabb: Aabb
    time_range: Annotated[list[float], Field(min_length=2, max_length=2)] = [0.0, 1.0]
    sh_degree: Annotated[Literal[0, 1, 2], BeforeValidator(_not_bool)] = 0
    activation: Literal["softplus", "relu"] = "softplus"
    init_density: Positive = 0.1
    samples_per_ray: Annotated[int, Field(ge=1, le=4096)] = 128
    occupancy: OccupancySpec | None = None
    time_tv: NonNegative = 1.0  # weight of the temporal smoothness in `loss.tv`, relative to the spatial TV
    frames_per_batch: Annotated[int, Field(ge=1, le=1024)] = 4  # distinct frames (times) the rays of a step come from

    @field_validator("time_range")
    @classmethod
    def _ordered(cls, v: list[float]) -> list[float]:
        if not np.float32(v[0]) < np.float32(v[1]):
            raise ValueError("expected [t_start, t_end] with t_start < t_end (in float32)")
        return v


FieldSpec = Annotated[VoxelGridFieldSpec | NeuralFieldSpec | NerfWFieldSpec | HashGridFieldSpec | DynamicFieldSpec,
                      Field(discriminator="type")]
NEURAL_FIELD_TYPES = ("neural", "nerf_w")


# ---- optimize -----------------------------------------------------------------------------------

class Perturb(Strict):
    sigma: NonNegative  # standard deviation of the Gaussian noise added to every entry
    seed: Annotated[int, Field(ge=0)] | None = None  # default: derived from optimize.seed and the parameter path


class PerturbInit(Strict):
    perturb: Perturb


class PerturbPose(Strict):
    degrees: NonNegative = 0.0  # rotation by exactly this angle about a random axis
    translation: NonNegative = 0.0  # shift by this fraction of the camera-to-scene-center distance
    seed: Annotated[int, Field(ge=0)] | None = None


class PerturbPoseInit(Strict):
    perturb_pose: PerturbPose


ShapePrimitive = Annotated[SpherePrimitive | IcospherePrimitive | CubePrimitive | TorusPrimitive,
                           Field(discriminator="type")]


class PrimitiveInit(Strict):
    """Vertices only: start from a primitive of any topology (welded: one vertex per position)."""
    primitive: ShapePrimitive


def _init_tag(v: Any) -> str | None:
    if _is_number(v):
        return "number"
    if isinstance(v, list):
        return "list"
    if isinstance(v, str):
        return "file"
    if isinstance(v, dict) and len(v) == 1:
        key = next(iter(v))
        return key if key in ("perturb", "perturb_pose", "primitive") else None
    return None


Init = Annotated[
    Annotated[float, Tag("number")] | Annotated[list, PlainValidator(_number_array), Tag("list")]
    | Annotated[str, Tag("file")] | Annotated[PerturbInit, Tag("perturb")]
    | Annotated[PerturbPoseInit, Tag("perturb_pose")] | Annotated[PrimitiveInit, Tag("primitive")],
    Discriminator(_init_tag, custom_error_type="init_type", custom_error_message=(
        'expected a finite number, a list of numbers, a file name, {"perturb": {...}}, '
        '{"perturb_pose": {...}} or {"primitive": {...}}')),
]


DEFAULT_LARGE_STEPS_LAMBDA = 19.0
# Nicolet et al. 2021: optimize u = (I + lambda L) x with uniform Adam (renderer.optim.large_steps). Built with
# create_model: the field's name, `lambda`, is a Python keyword (read it with getattr(spec, "lambda")).
LargeStepsParametrization = create_model(
    "LargeStepsParametrization", __base__=Strict, type=(Literal["large_steps"], ...),
    **{"lambda": (Annotated[float, Field(ge=0, le=1e6)], DEFAULT_LARGE_STEPS_LAMBDA)})


class PlainParametrization(Strict):
    """The vertex positions themselves, updated by `optimizer`."""
    type: Literal["plain"]


Parametrization = Annotated[LargeStepsParametrization | PlainParametrization, Field(discriminator="type")]


class RemeshSpec(Strict):
    """Isotropic remeshing of optimized vertices (renderer.optim.remesh) after the listed steps: edges split,
    collapsed and flipped towards `edge_length[i]` (object-space units) after step `steps[i]`."""
    steps: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=64)]
    edge_length: Annotated[list[Positive], Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _paired(self) -> RemeshSpec:
        if len(self.steps) != len(self.edge_length):
            raise ValueError(f'expected as many "edge_length" values as "steps", got {len(self.edge_length)} '
                             f"and {len(self.steps)}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError(f'"steps": expected strictly increasing step numbers, got {self.steps}')
        return self


class ParameterSpec(Strict):
    init: Annotated[Init | None, FileRef("image_or_mesh")] = None  # None: start from the scene's value
    lr: Positive | None = None  # overrides optimizer.lr for this parameter
    # vertices only: default {"type": "large_steps", "lambda": 19}
    parametrization: Parametrization | None = None
    remesh: RemeshSpec | None = None  # vertices only
    # vertices only: the mesh the result is measured against (object space of the mesh); default: the scene's
    # mesh when the targets are rendered from it, none for image or dataset targets
    reference: Annotated[str | None, FileRef("mesh")] = None


class TargetImage(Strict):
    camera: Name
    file: Annotated[str, FileRef("image")]


class DatasetRecipe(Strict):
    """How the dataset of `targets.transforms` is generated (`drstudio dataset`, renderer.datasets), for a
    scene that trains on a generated dataset that is not shipped: when the transforms file is missing, the
    loader generates it into the folder of `targets.transforms` (and says so, with the equivalent command).
    `scene` (relative to the scene file) is the scene rendered; the other keys are `drstudio dataset`'s options."""
    scene: Annotated[str, FileRef("scene")]
    views: Annotated[int, Field(ge=1, le=10000)] = 100
    test_views: Annotated[int, Field(ge=0)] = 0
    width: Annotated[int, Field(ge=1, le=MAX_CAMERA_SIZE)] = 128
    height: Annotated[int, Field(ge=1, le=MAX_CAMERA_SIZE)] = 128
    lighting_variation: NonNegative = 0.0
    occluders: Annotated[int, Field(ge=0, le=64)] = 0
    animate: bool = False
    animate_times: Annotated[int, Field(ge=2)] | None = None
    seed: Annotated[int, Field(ge=0)] = 0

    def command(self, scene: str, out: str) -> str:
        """The equivalent `drstudio dataset` command line (paths as given)."""
        parts = ["drstudio", "dataset", scene, "--out", out, "--views", str(self.views)]
        for key, default in (("test_views", 0), ("width", 128), ("height", 128), ("lighting_variation", 0.0),
                             ("occluders", 0), ("animate_times", None), ("seed", 0)):
            value = getattr(self, key)
            if value != default:
                parts += ["--" + key.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
        if self.animate and self.animate_times is None:
            parts.append("--animate")
        return " ".join(parts)


class Targets(Strict):
    cameras: Annotated[list[Name], Field(min_length=1)] | None = None  # rendered from the true scene
    images: Annotated[list[TargetImage], Field(min_length=1)] | None = None
    transforms: Annotated[str | None, FileRef("transforms")] = None  # nerfstudio / instant-ngp transforms.json
    # held out of training, for the test PSNR of field scenes: cameras rendered from the scene (with
    # `cameras`) or a second transforms.json (with `transforms`; frames with "split": "test" are held out too)
    test_cameras: Annotated[list[Name], Field(min_length=1)] | None = None
    test_transforms: Annotated[str | None, FileRef("transforms")] = None
    dataset: DatasetRecipe | None = None  # with `transforms`: how to generate it when it is missing
    # with `transforms`: train at 1/N resolution (intrinsics scaled; images_N/ files when present, else
    # resized on load); `drstudio optimize --downscale N` sets it
    downscale: Annotated[int, Field(ge=1, le=64)] = 1
    # render mode "path", with `cameras`: samples per pixel of the rendered targets (default 4 x render.spp);
    # they use their own random sequence, independent of every step's
    spp: Annotated[int, Field(ge=1, le=1 << 16)] | None = None

    @model_validator(mode="after")
    def _one(self) -> Targets:
        _exactly_one(self, "cameras", "images", "transforms")
        if self.dataset is not None and self.transforms is None:
            raise ValueError('"dataset" (how to generate the dataset) goes with "transforms"')
        if self.test_cameras is not None and self.cameras is None:
            raise ValueError('"test_cameras" goes with "cameras" (use "test_transforms" with "transforms")')
        if self.test_transforms is not None and self.transforms is None:
            raise ValueError('"test_transforms" goes with "transforms"')
        if self.downscale != 1 and self.transforms is None:
            raise ValueError('"downscale" (of the dataset\'s images) goes with "transforms"')
        if self.spp is not None and self.cameras is None:
            raise ValueError('"spp" (samples of the path-traced targets) goes with "cameras"')
        return self


class Loss(Strict):
    l1: NonNegative = 0.0
    l2: NonNegative = 0.0
    ssim: NonNegative = 0.0  # weight of (1 - SSIM)
    tv: NonNegative = 0.0  # total variation of optimized textures
    laplacian: NonNegative = 0.0  # uniform Laplacian of optimized vertices
    edge_length: NonNegative = 0.0  # variance of optimized mesh edge lengths

    @model_validator(mode="after")
    def _some(self) -> Loss:
        if not any(getattr(self, k) > 0 for k in type(self).model_fields):
            raise ValueError("expected at least one weight > 0")
        return self


class ExponentialSchedule(Strict):
    type: Literal["exponential"]
    gamma: Annotated[float, Field(gt=0, le=1), AfterValidator(_f32_positive)]  # lr multiplier per step


class CosineSchedule(Strict):
    type: Literal["cosine"]
    min_lr: NonNegative = 0.0  # reached at the last step


Schedule = Annotated[ExponentialSchedule | CosineSchedule, Field(discriminator="type")]
Fraction = Annotated[float, Field(ge=0, lt=1)]


def _decays(schedule, info):
    """A cosine schedule ends at min_lr, a fraction of the optimizer's lr: min_lr above lr would make the rates
    rise along the run (the factor is min_lr / lr), a mistake, not a decay."""
    lr = info.data.get("lr")
    if isinstance(schedule, CosineSchedule) and lr is not None and schedule.min_lr > lr:
        raise ValueError(f"cosine min_lr {schedule.min_lr:g} must not exceed the optimizer's lr {lr:g} (the rates "
                         f"would rise to {schedule.min_lr / lr:g} times theirs)")
    return schedule


class AdamSpec(Strict):
    type: Literal["adam"]
    lr: Positive = 1e-2
    betas: Annotated[list[Fraction], Field(min_length=2, max_length=2)] = [0.9, 0.999]
    schedule: Schedule | None = None
    # update only elements with a nonzero gradient this step (voxel grids: the lattice points the rays touched);
    # their moments are left as they are otherwise (torch.optim.SparseAdam's rule, renderer.optim.optimizers.Adam)
    lazy: bool = False
    eps: Positive = 1e-8  # added to sqrt(v_hat) (Instant-NGP trains its hash tables with 1e-15)
    _schedule_decays = field_validator("schedule")(_decays)


class SgdSpec(Strict):
    type: Literal["sgd"]
    lr: Positive = 1e-2
    momentum: Fraction = 0.0
    schedule: Schedule | None = None
    _schedule_decays = field_validator("schedule")(_decays)


OptimizerSpec = Annotated[AdamSpec | SgdSpec, Field(discriminator="type")]


DEFAULT_RAYS_PER_BATCH = 4096  # optimize.rays_per_batch of a scene with fields
DEFAULT_EVAL_EVERY = 100  # optimize.eval_every of a scene with fields
DEFAULT_EVAL_RAYS = 1024  # optimize.eval_rays of a scene with fields


class CameraRefinement(Strict):
    """Scenes with voxel-grid fields: the training views' poses are refined with the field (nerfstudio's camera
    optimizer): each training camera's pose becomes a free parameter `cameras.NAME.pose` at learning rate `lr`
    (the optimizer's schedule applies). The held-out views keep their poses."""
    lr: Positive = 1.0e-4


class OptimizeSpec(Strict):
    parameters: Annotated[dict[str, ParameterSpec], Field(min_length=1)]  # dotted path -> spec
    targets: Targets
    loss: Loss = Field(default_factory=lambda: Loss(l2=1.0))
    optimizer: OptimizerSpec = Field(default_factory=lambda: AdamSpec(type="adam"))
    steps: Annotated[int, Field(ge=1, le=1_000_000)]
    batch_views: Annotated[int, Field(ge=1)] = 1
    seed: Annotated[int, Field(ge=0)] = 0
    # scenes with fields only: rays per step, drawn uniformly from the training views' pixels, and steps
    # between evaluations of the PSNR on the held-out views (0: only at the end)
    rays_per_batch: Annotated[int, Field(ge=1, le=1 << 22)] | None = None
    eval_every: Annotated[int, Field(ge=0)] | None = None
    # rays (pixels) per held-out view of the sampled evaluations during training (fields only)
    eval_rays: Annotated[int, Field(ge=1, le=1 << 22)] | None = None
    # fields only: each training ray through a uniform random point of its pixel, not its centre
    pixel_jitter: bool | None = None
    # voxel-grid fields only: refine the training views' poses with the field
    camera_refinement: CameraRefinement | None = None


class SceneSpec(Strict):
    version: Annotated[Literal[1], BeforeValidator(_not_bool)]
    description: str = ""
    meshes: Annotated[list[MeshSpec], Field(min_length=1)]
    materials: Annotated[list[MaterialSpec], Field(min_length=1)]
    lights: list[LightSpec] = []
    cameras: Annotated[list[CameraSpec], Field(min_length=1)]
    background: Annotated[Background, FileRef("image")] = [0.0, 0.0, 0.0]  # linear RGB or an image file
    render: RenderSpec = Field(default_factory=RenderSpec)
    optimize: OptimizeSpec | None = None
    fields: Annotated[list[FieldSpec], Field(max_length=1)] = []  # radiance fields; one per scene so far


class FieldSceneSpec(SceneSpec):
    """A scene with fields: meshes (and with them materials) are optional."""
    meshes: list[MeshSpec] = []
    materials: list[MaterialSpec] = []
    fields: Annotated[list[FieldSpec], Field(min_length=1, max_length=1)]


# ---- validation errors as SceneErrors -----------------------------------------------------------

def _data_path(data: Any, loc: tuple, missing: bool) -> list:
    """The pydantic error location as a path into the JSON data: union tags are dropped; the last
    part is kept though absent from the data when the error is a `missing` field."""
    out = []
    for i, part in enumerate(loc):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        elif missing and isinstance(data, dict) and i == len(loc) - 1:
            data = None
        else:
            continue
        out.append(part)
    return out


def _describe(err: dict, data: Any) -> tuple[list, str]:
    kind, ctx = err["type"], err.get("ctx") or {}
    path = _data_path(data, err["loc"], missing=kind == "missing")
    got = json.dumps(err["input"], default=str)
    got = f", got {got if len(got) <= 80 else got[:77] + '...'}"
    if kind == "unknown_field":
        return path + [ctx["field"]], f"unknown field; allowed fields: {ctx['allowed']}"
    if kind == "missing":
        return path, "required field is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key = ctx["discriminator"].strip("'")
        if kind == "union_tag_not_found":
            return path + [key], "required field is missing"
        return path + [key], f"expected one of {ctx['expected_tags']}, got '{ctx['tag']}'"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"expected an object {{...}}{got}"
    if kind == "too_short":
        return path, f"expected at least {ctx['min_length']} item{'s' * (ctx['min_length'] != 1)}{got}"
    if kind == "too_long":
        return path, f"expected at most {ctx['max_length']} item{'s' * (ctx['max_length'] != 1)}{got}"
    if kind == "value_error" and isinstance(err["input"], dict):
        got = ""  # a whole object: the message names what is wrong in it
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg.replace("Input should be greater", "expected a value greater")
    msg = msg.replace("Input should be less", "expected a value less")
    msg = msg.replace("Input should be ", "expected ")
    return path, msg + got


def validate(model: type[BaseModel], data: Any, file: str):
    """`model.model_validate(data)`; raises SceneError naming the field path of the first problem
    (all problems are in `.others`)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = [SceneError(file, field_path(p), m) for p, m in (_describe(err, data) for err in e.errors())]
        raise SceneError(errors[0].file, errors[0].field, errors[0].message, tuple(errors[1:])) from None


def check_json_values(data: Any, file: str) -> None:
    """Refuse what no model should see (SceneError naming the field path): nesting deeper than
    `MAX_JSON_DEPTH` and numbers outside float32's finite range. Iterative, so any depth is safe."""
    errors = []
    stack = [(data, ())]
    while stack:
        value, parts = stack.pop()
        if len(parts) > MAX_JSON_DEPTH:
            raise SceneError(file, field_path(parts[:MAX_JSON_DEPTH]),
                             f"nested more than {MAX_JSON_DEPTH} levels deep (a scene file is a few levels deep)")
        if isinstance(value, dict):
            stack.extend((v, parts + (k,)) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, parts + (i,)) for i, v in reversed(list(enumerate(value))))
        elif (isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float)
              and math.isfinite(value)) and abs(value) > FLOAT32_MAX:  # inf and NaN: the models say "finite"
            got = f"{value:.3g}" if isinstance(value, float) else f"an integer of {len(str(abs(value)))} digits"
            errors.append(SceneError(file, field_path(parts), f"expected a number within float32's range "
                                                             f"(|x| <= {FLOAT32_MAX:.3g}), got {got}"))
    if errors:
        raise SceneError(errors[0].file, errors[0].field, errors[0].message, tuple(errors[1:]))


def validate_scene(data: Any, file: str) -> SceneSpec:
    """A scene needs at least one mesh, or at least one field (then meshes and materials are optional)."""
    check_json_values(data, file)
    with_fields = isinstance(data, dict) and data.get("fields") not in (None, [])
    spec = validate(FieldSceneSpec if with_fields else SceneSpec, data, file)
    for parts, name, _ in file_references(spec):
        longest = max((len(p.encode("utf-8", "surrogatepass")) for p in re.split(r"[/\\]", name)), default=0)
        if longest > NAME_MAX:  # the file system would refuse it ("File name too long") wherever it is opened
            raise SceneError(file, field_path(parts), f"expected a file name whose parts are at most {NAME_MAX} "
                             f"bytes (the file system's limit), got a part of {longest} bytes: "
                             f"'{name[:60]}...'")
    return spec
