"""The in-memory scene: plain NumPy values, one dotted path per differentiable value.

A `Scene` is what the loader (`renderer.loading.load_scene`) produces from a validated scene file.
Code past the loader trusts it. Every differentiable value has one stable dotted path
(`materials.body.albedo`, `lights.key.position`, `cameras.main.pose`, `meshes.bunny.vertices`,
`fields.nerf.density`); the optimizer, the viewer, the recorder and the CLI all address values through
the parameter table (`renderer.params.ParamTable`, built in `Scene.params()`'s order).

Conventions (stated once, see `renderer.conventions`):
- World and camera space follow OpenGL: +Y up, the camera looks down -Z, +X to the right.
- Quaternions are stored (x, y, z, w), the order Warp's `wp.quat` uses.
- Colors and textures are linear RGB floats; image files are sRGB-encoded on disk.
- A camera `pose` is camera-to-world: [px, py, pz, qx, qy, qz, qw] (7 floats).
- Camera `intrinsics` are [fx, fy, cx, cy] in pixels; pixel (0, 0) is the top-left pixel, whose
  center is at (0.5, 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .params import Kind, ParamPath, scene_values

SHADING_MODELS = ("lambert", "ggx")
RENDER_MODES = ("hard", "antialias", "soft", "path")
RASTER_MODES = ("hard", "antialias", "soft")


@dataclass
class Mesh:
    """A triangle mesh in object space with its transform. Vertices are split at creases, so
    smooth per-vertex normals computed from the geometry are correct (cubes have 24 vertices)."""

    name: str
    vertices: np.ndarray  # (V, 3) float32, object space
    faces: np.ndarray  # (F, 3) int32
    uvs: np.ndarray  # (V, 2) float32 (zeros when the source has none)
    colors: np.ndarray  # (V, 3) float32 linear RGB multiplier of the albedo (ones by default)
    translation: np.ndarray  # (3,) float32
    rotation: np.ndarray  # (4,) float32 unit quaternion (x, y, z, w)
    scale: np.ndarray  # (3,) float32
    material: str
    source: str = ""  # the file or primitive it came from, for summaries
    # with an automatic UV atlas (renderer.uv_atlas): the source vertex of each vertex, which seams split
    atlas_source: np.ndarray | None = None


@dataclass
class Material:
    """A material. Each property is a texture of shape (H, W, C); a scalar or RGB value is a 1x1
    texture, so the renderer has one code path and a constant gets one gradient."""

    name: str
    model: str  # one of SHADING_MODELS
    albedo: np.ndarray  # (H, W, 3) float32 linear RGB in [0, 1]
    roughness: np.ndarray  # (H, W, 1) float32 in [0.02, 1]
    metallic: np.ndarray  # (H, W, 1) float32 in [0, 1]
    wrap: str = "wrap"  # texture address mode: "wrap" or "clamp"
    # (H, W, 3) float32 linear RGB radiance >= 0 emitted by the surface (an area light in path mode; added to
    # the shaded color in the rasterized modes)
    emission: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 3), np.float32))


@dataclass
class PointLight:
    name: str
    position: np.ndarray  # (3,)
    color: np.ndarray  # (3,) linear RGB
    intensity: np.ndarray  # (1,) radiant intensity: irradiance at distance d is intensity/d^2


@dataclass
class DirectionalLight:
    name: str
    direction: np.ndarray  # (3,) direction the light travels (towards the scene); normalized in kernels
    color: np.ndarray  # (3,)
    intensity: np.ndarray  # (1,) irradiance on a surface facing the light


@dataclass
class AmbientLight:
    name: str
    color: np.ndarray  # (3,) radiance reflected as albedo * color


@dataclass
class EnvironmentLight:
    """Light from every direction at infinity (path mode only): an equirectangular (He, We, 3) linear RGB
    radiance image (a constant is 1x1), +Y up, column 0 at azimuth -pi (the -Z direction is the middle
    column), row 0 at the zenith (`renderer.stages.pathtrace`'s convention)."""

    name: str
    radiance: np.ndarray  # (He, W, 3) float32 >= 0


@dataclass
class Camera:
    name: str
    width: int
    height: int
    intrinsics: np.ndarray  # (4,) fx, fy, cx, cy in pixels
    pose: np.ndarray  # (7,) camera-to-world: position (3) then unit quaternion (x, y, z, w)


@dataclass
class RenderSettings:
    mode: str = "antialias"  # one of RENDER_MODES
    shadows: bool = True
    soft_sigma: float = 1.0  # SoftRas sharpness in pixels^2
    soft_gamma: float = 1e-2  # SoftRas depth-aggregation temperature
    mipmaps: bool = True
    # path mode (renderer.stages.pathtrace): samples per pixel, scattering events per path (1: direct light
    # only), the random sequence (the optimizer's step k uses seed + k)
    spp: int = 16
    max_depth: int = 4
    seed: int = 0
    jitter: bool = True  # sample uniformly inside each pixel (antialiased); False: at the pixel centers
    # hard and antialias modes with shadows: samples per silhouette edge of the shadow-boundary gradient
    # (renderer.stages.shadow_edges; 0: shadows have no gradient)
    shadow_edges: int = 8


@dataclass
class OccupancySettings:
    """Empty-space skipping of a field while it trains (renderer.volume.OccupancyGrid)."""

    resolution: tuple[int, int, int] = (64, 64, 64)  # cells per axis
    update_every: int = 16  # training steps between updates from the field
    threshold: float = 0.01  # density (per unit world length) below which a cell is empty


FIELD_TYPES = ("voxel_grid", "neural", "nerf_w", "hash_grid", "dynamic")


@dataclass
class Field:
    """A radiance field, one of FIELD_TYPES (scenes/README.md "fields", docs/volume.md):

    - "voxel_grid" (renderer.volume.VoxelGrid): density + SH color on a lattice spanning `aabb`. `density`
      and `sh` are its values on its current lattice: after loading, the lattice training starts from
      (`start_resolution`, which is `resolution` unless the field trains coarse to fine). A training
      `Problem` replaces them when it resamples the grid, so the two parameters (`fields.NAME.density`,
      `fields.NAME.sh`) change shape during coarse-to-fine training.
    - "dynamic" (renderer.volume.time_grid.TimeGrid): `n_times` such lattices over `time_range`; `density`
      (T, nx, ny, nz) and `sh` (T * nx, ny, nz, 3K), slice k in rows k * nx .. (k + 1) * nx - 1 (Warp arrays
      have at most 4 dimensions; the memory is that of a C-ordered (T, nx, ny, nz, 3K) array).
    - "neural" (renderer.volume.neural_field.NeuralField, an MLP in torch): `weights` (P,) every weight of
      the network, flat in `NeuralField`'s parameter order (`FlatLayout`); `model` the validated spec with
      the network's shape (encoding, frequencies, depth, width, ...). `density`, `sh` are None.
    - "nerf_w" (renderer.volume.neural_field.NerfWField): a neural field plus per-training-image embeddings
      `appearance` (n_images, appearance_dim) and `transient` (n_images, transient_dim), rows in the order
      of the training views.
    - "hash_grid" (renderer.volume.hash_field.HashGridField, Instant-NGP): `table` (L * T, F) the hash tables of
      every level, `weights` (P,) the density and color MLPs' weights flat (`FlatLayout` of the MLPs); `model`
      the validated spec. `density`, `sh` are None.
    """

    name: str
    type: str  # one of FIELD_TYPES
    resolution: tuple[int, ...]  # grids: lattice points per axis at the end of training; () for neural fields
    aabb: np.ndarray  # (6,) float32 (xmin, ymin, zmin, xmax, ymax, zmax)
    sh_degree: int  # grids: 0, 1 or 2
    activation: str  # grids: "softplus" or "relu", on the interpolated raw density
    storage: str  # "float32" or "float16": the precision read-outs render and exports store (grids)
    samples_per_ray: int  # strata per ray inside the box
    density: np.ndarray | None  # grids: (nx, ny, nz) (dynamic: (T, nx, ny, nz)) float32 raw densities
    sh: np.ndarray | None  # grids: (nx, ny, nz, 3K) (dynamic: (T * nx, ny, nz, 3K)), K = (sh_degree + 1)^2
    occupancy: OccupancySettings | None = None
    start_resolution: tuple[int, int, int] | None = None  # coarse-to-fine: the first lattice
    upsample_at: tuple[int, ...] = ()  # coarse-to-fine: steps after which the lattice grows
    model: object | None = None  # neural, nerf_w, dynamic: the validated field spec (renderer.scene_schema)
    weights: np.ndarray | None = None  # neural, nerf_w, hash_grid: (P,) float32
    table: np.ndarray | None = None  # hash_grid: (L * T, F) float32
    appearance: np.ndarray | None = None  # nerf_w: (n_images, appearance_dim) float32
    transient: np.ndarray | None = None  # nerf_w: (n_images, transient_dim) float32
    n_times: int = 0  # dynamic: time slices
    time_range: tuple[float, float] | None = None  # dynamic: the times of the first and last slice
    contract: bool = False  # voxel_grid: the lattice holds contracted space; `aabb` is its box, twice the inner one
    distortion: float = 0.0  # voxel_grid: weight of the distortion loss (renderer.volume.regularizers)
    density_l1: float = 0.0  # voxel_grid: weight of the mean activated density over the lattice
    gradient_scaling: float = 0.0  # voxel_grid, hash_grid: samples nearer their camera scale their gradients
    tv_every: int = 1  # voxel_grid: optimize.loss.tv on every tv_every-th step, at tv_every times its weight
    loss_space: str = "linear"  # voxel_grid: the image loss on "linear" or "srgb"-encoded colors

    def resolutions(self) -> list[tuple[int, int, int]]:
        """The lattice of each training phase: start_resolution, then one per `upsample_at` step, the
        last being `resolution`; in between, per axis geometrically spaced (rounded)."""
        if self.start_resolution is None or not self.upsample_at:
            return [tuple(self.resolution)]
        k = len(self.upsample_at)
        return [tuple(int(round(s * (r / s) ** (i / k))) for s, r in zip(self.start_resolution, self.resolution,
                                                                          strict=True))
                for i in range(k + 1)]

    def values(self) -> dict[str, tuple[np.ndarray, str]]:
        """{key: (value, parameter kind)} of the field's parameters `fields.NAME.<key>`."""
        out = {}
        for key, kind in (("density", "density"), ("sh", "sh"), ("table", "weights"), ("weights", "weights"),
                          ("appearance", "embedding"), ("transient", "embedding")):
            value = getattr(self, key)
            if value is not None:
                out[key] = (value, kind)
        return out


@dataclass
class Param:
    """A view of one differentiable value. `value` is the NumPy array the scene holds (not a copy)."""

    path: ParamPath
    value: np.ndarray
    kind: Kind

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)


@dataclass
class Scene:
    path: str  # the file it was loaded from ("" when built in code)
    meshes: dict[str, Mesh] = field(default_factory=dict)
    materials: dict[str, Material] = field(default_factory=dict)
    point_lights: dict[str, PointLight] = field(default_factory=dict)
    directional_lights: dict[str, DirectionalLight] = field(default_factory=dict)
    ambient_lights: dict[str, AmbientLight] = field(default_factory=dict)
    environment_lights: dict[str, EnvironmentLight] = field(default_factory=dict)  # at most one (path mode)
    cameras: dict[str, Camera] = field(default_factory=dict)
    fields: dict[str, Field] = field(default_factory=dict)  # radiance fields (scene file `fields`)
    background: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))  # (3,) or (H, W, 3)
    render: RenderSettings = field(default_factory=RenderSettings)
    optimize: object | None = None  # the validated `optimize` section (renderer.scene_schema.OptimizeSpec)
    description: str = ""  # what the scene is about, from the scene file

    def params(self) -> dict[ParamPath, Param]:
        """Every differentiable value of the scene by dotted path, in the parameter table's order
        (`renderer.params.scene_values`); each `Param.value` is the array the scene holds."""
        return {path: Param(path, value, kind) for path, (value, kind) in scene_values(self).items()}
