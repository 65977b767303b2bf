"""Synthetic NeRF-style datasets rendered from drstudio's own scenes (`drstudio dataset`).

Two steps, so options can be checked before anything is rendered:

- `plan_dataset(scene, options) -> DatasetPlan` (NumPy only): camera poses on a Fibonacci spiral over
  the sphere (or the upper hemisphere) around the scene's center, looking at it; the held-out test
  views; per-view light values (`lighting_variation`), occluder cubes (`occluders`) and animation
  time (`animate`). Every random choice comes from `options.seed`, one stream per purpose, so the
  poses of a seed do not change when lighting or occluders are switched on.
- `write_dataset(scene, plan, out) -> DatasetSummary` renders every view with `render_view` and
  writes `images/r_XXX.png`, then `transforms_{train,val,test}.json` (Blender style, only with test
  views; `val` repeats `test`, which Blender-style loaders expect), then `transforms.json`
  (nerfstudio style, every frame). Every file is written atomically and `transforms.json` last, so a
  folder holding one holds a complete dataset.

Conventions (`renderer.conventions`): `transform_matrix` is camera-to-world in the OpenGL convention
(+Y up, the camera looks down -Z), as nerfstudio and the Blender set store it, so a frame's pose is
`matrix_to_pose(transform_matrix)`; `camera_angle_x` is the horizontal field of view in radians;
intrinsics are in pixels with the principal point at (w/2, h/2). Images are sRGB-encoded 8-bit PNG;
with `rgba` the alpha channel is linear coverage and RGB is the un-premultiplied color.

Per-frame metadata besides `file_path` and `transform_matrix`:
- `split`: "train" or "test" (only when test views are held out).
- `time` in [0, 1] (only with `animate`): frame i of N has time i / (N - 1) (one time per frame, D-NeRF's
  monocular setting), or with `Animation.times = T` the j-th of T times j / (T - 1), shared by a group of
  cameras spread over the whole sphere (a multi-view sequence: what a 4D grid needs to be well posed).
- `appearance` (only with `lighting_variation`): the light values of this view by dotted parameter
  path, e.g. {"lights.sun.intensity": [2.1], "lights.sun.color": [1.0, 0.9, 0.8]}.
- `occluders` (only with `occluders`): the cubes in this view, [] for a clean view; each
  {"translation", "rotation" (x, y, z, w), "size", "color" (linear RGB)}. Test views are never
  occluded, so they measure how well a method ignores transient objects.
"""

from __future__ import annotations

import colorsys
import copy
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import warp as wp

from . import conventions as cv
from . import primitives
from .device_scene import DeviceScene
from .errors import SceneError
from .images import atomic_write, write_image
from .params import Group, ParamPath, camera_pose
from .render import render_view
from .scene import RENDER_MODES, Camera, Material, Mesh, Scene
from .scene_schema import MAX_CAMERA_SIZE

CAMERA = "dataset"  # the one camera of the render scene; its pose is set per view
CAMERA_POSE = camera_pose(CAMERA)
OCCLUDER = "dataset-occluder-{}"  # mesh and material names; "-" cannot occur in a scene file's names
_POSES, _LIGHTING, _OCCLUDERS = 0, 1, 2  # random streams: np.random.default_rng([seed, stream])


@dataclass
class Animation:
    """Motion of one mesh over time t in [0, 1]: rotated by t * `degrees` about `axis` (through the
    mesh's origin, after its own rotation) and moved by t * `translation`."""

    mesh: str | None = None  # default: the scene's first mesh
    degrees: float = 90.0
    axis: tuple[float, float, float] = (0.0, 1.0, 0.0)
    translation: tuple[float, float, float] | None = None  # world units; None: 0.2 * scene radius along +Y
    # None: one time per frame along the spiral (frame i of N at i / (N - 1)). T >= 2: T times j / (T - 1),
    # each seen by ~N / T cameras on a spiral of their own over the whole sphere (rotated per time), frames
    # numbered time by time; test views are spread over the times. See docs/datasets.md "Animation".
    times: int | None = None


@dataclass
class DatasetOptions:
    """What to generate. Invalid values raise ValueError naming the option."""

    views: int = 100  # views in all, test views included
    test_views: int = 0  # held out of `views` (evenly spread along the spiral)
    width: int = 128
    height: int = 128
    fov_y: float = 40.0  # vertical field of view, degrees
    distance: float | None = None  # from the center; None: the scene's bounding sphere fills the view
    center: tuple[float, float, float] | None = None  # None: the center of the meshes' bounding box
    hemisphere: bool = False  # cameras above the center only (+Y), e.g. for an object on a ground
    seed: int = 0
    lighting_variation: float = 0.0  # strength s in [0, 2]; 0: every view has the scene's lights
    occluders: int = 0  # cubes in each occluded view; 0: none
    occluded_fraction: float = 0.5  # of the train views, when occluders > 0
    animate: Animation | None = None
    background: tuple[float, float, float] | None = None  # linear RGB; None: the scene's background
    rgba: bool = False  # write RGBA with alpha = coverage (`background` is then not used)
    mode: str | None = None  # render mode; None: the scene's

    def __post_init__(self):
        def integer(name: str, low: int, high: int | None = None) -> None:
            v = getattr(self, name)
            is_int = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            if not is_int or v < low or (high is not None and v > high):
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"{name}: expected an integer {bound}, got {v!r}")

        def number(name: str, low: float, high: float, open_low: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v <= high and (
                v > low if open_low else v >= low)
            if not ok:
                raise ValueError(f"{name}: expected a number in {'(' if open_low else '['}{low}, {high}], got {v!r}")

        integer("views", 1)
        integer("test_views", 0)
        if self.test_views >= self.views:
            raise ValueError(f"test_views: expected fewer than views ({self.views}) so that some views are "
                             f"left to train on, got {self.test_views}")
        integer("width", 1, MAX_CAMERA_SIZE)
        integer("height", 1, MAX_CAMERA_SIZE)
        if not (isinstance(self.fov_y, (int, float)) and 0 < self.fov_y < 180):
            raise ValueError(f"fov_y: expected degrees in (0, 180), got {self.fov_y!r}")
        if self.distance is not None:
            number("distance", 0.0, 1e6, open_low=True)
        if self.center is not None:
            self.center = tuple(float(x) for x in _finite_vector(self.center, 3, "center"))
        integer("seed", 0)
        number("lighting_variation", 0.0, 2.0)
        integer("occluders", 0, 64)
        number("occluded_fraction", 0.0, 1.0)
        if self.animate is not None:
            a = self.animate
            if not (isinstance(a.degrees, (int, float)) and math.isfinite(a.degrees)):
                raise ValueError(f"animate.degrees: expected a finite number, got {a.degrees!r}")
            cv.normalize(_finite_vector(a.axis, 3, "animate.axis"), "animate.axis")
            if a.translation is not None:
                _finite_vector(a.translation, 3, "animate.translation")
            if a.times is not None:
                is_int = isinstance(a.times, (int, np.integer)) and not isinstance(a.times, bool)
                if not is_int or a.times < 2 or a.times > self.views:
                    raise ValueError(f"animate.times: expected an integer in [2, views = {self.views}] (each time "
                                     f"needs a camera), got {a.times!r}")
        if self.background is not None:
            bg = _finite_vector(self.background, 3, "background")
            if (bg < 0).any():
                raise ValueError(f"background: expected linear RGB values >= 0, got {list(self.background)}")
            self.background = tuple(float(x) for x in bg)
        if self.mode is not None and self.mode not in RENDER_MODES:
            raise ValueError(f"mode: expected one of {', '.join(RENDER_MODES)}, got {self.mode!r}")


def _finite_vector(x, n: int, name: str) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {n} numbers, got {x!r}") from None
    if v.shape != (n,) or not np.isfinite(v).all():
        raise ValueError(f"{name}: expected {n} finite numbers, got {x!r}")
    return v


# ---- planning (NumPy) ---------------------------------------------------------------------------

@dataclass
class Occluder:
    """A cube of edge `size` in one view."""

    translation: np.ndarray  # (3,) world position of its center
    rotation: np.ndarray  # (4,) unit quaternion (x, y, z, w)
    size: float
    color: np.ndarray  # (3,) linear RGB albedo

    def record(self) -> dict:
        return {"translation": _floats(self.translation), "rotation": _floats(self.rotation),
                "size": float(self.size), "color": _floats(self.color)}


@dataclass
class ViewPlan:
    index: int
    name: str  # image file stem, r_000
    split: str  # "train" or "test"
    pose: np.ndarray  # (7,) float32 camera-to-world
    time: float | None = None
    lights: dict[str, np.ndarray] = field(default_factory=dict)  # varied light values by dotted path
    mesh_values: dict[str, np.ndarray] = field(default_factory=dict)  # animated transform by dotted path
    occluders: list[Occluder] | None = None  # None: occluders off for the dataset


@dataclass
class DatasetPlan:
    scene_path: str
    options: DatasetOptions
    width: int
    height: int
    intrinsics: np.ndarray  # (4,) float32 [fx, fy, cx, cy]
    center: np.ndarray  # (3,)
    radius: float  # of the bounding sphere about `center` (over the whole animation)
    distance: float
    animation: dict | None  # resolved animation (mesh, degrees, axis, translation)
    views: list[ViewPlan]

    @property
    def camera_angle_x(self) -> float:
        return 2 * math.atan(0.5 * self.width / float(self.intrinsics[0]))

    @property
    def camera_angle_y(self) -> float:
        return 2 * math.atan(0.5 * self.height / float(self.intrinsics[1]))

    def split(self, name: str) -> list[ViewPlan]:
        return [v for v in self.views if v.split == name]


GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))


def fibonacci_directions(n: int, hemisphere: bool = False, seed: int = 0, azimuth: float = 0.0) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (or the +Y hemisphere) along a Fibonacci
    spiral from the top down; the spiral's azimuth is rotated by an angle drawn from `seed`, plus
    `azimuth` radians."""
    golden = GOLDEN_ANGLE
    offset = np.random.default_rng([seed, _POSES]).uniform(0, 2 * math.pi) + azimuth
    k = np.arange(n, dtype=np.float64)
    y = 1 - (k + 0.5) / n if hemisphere else 1 - 2 * (k + 0.5) / n  # never exactly a pole
    ring = np.sqrt(np.clip(1 - y * y, 0, None))
    phi = offset + golden * k
    return np.stack([ring * np.sin(phi), y, ring * np.cos(phi)], 1)


def mesh_world_vertices(mesh: Mesh, translation=None, rotation=None) -> np.ndarray:
    """(V, 3) world positions of a mesh: translation + R(rotation) (scale * v)."""
    t = mesh.translation if translation is None else translation
    r = cv.quat_to_matrix(mesh.rotation if rotation is None else rotation)
    return (mesh.vertices.astype(np.float64) * mesh.scale) @ r.T + t


def scene_bounds(scene: Scene, extra: list[np.ndarray] = ()) -> tuple[np.ndarray, float]:
    """(center of the bounding box of all world-space vertices (and `extra` points), radius of the
    sphere about it holding them all)."""
    points = np.concatenate([mesh_world_vertices(m) for m in scene.meshes.values()] + list(extra))
    center = 0.5 * (points.min(0) + points.max(0))
    return center, float(np.linalg.norm(points - center, axis=1).max())


def _animated(mesh: Mesh, anim: dict, t: float) -> tuple[np.ndarray, np.ndarray]:
    translation = mesh.translation + t * np.asarray(anim["translation"])
    rotation = cv.quat_multiply(cv.quat_from_axis_angle(anim["axis"], t * anim["degrees"]), mesh.rotation)
    return translation, rotation


def _test_indices(views: int, test_views: int) -> set[int]:
    """`test_views` indices spread evenly over 0..views-1 (the spiral order, so over the sphere)."""
    return {int((j + 0.5) * views / test_views) for j in range(test_views)}


def _timed_cameras(o: DatasetOptions) -> tuple[np.ndarray, list[float], set[int]]:
    """Cameras of a multi-view sequence (`animate.times` = T): (directions (N, 3), time of each view,
    test view indices). Views are numbered time by time; time j gets n_j = N // T or N // T + 1 views on
    a Fibonacci spiral of its own over the whole sphere, rotated about +Y by j golden angles so that the
    times see different viewpoints; test views are spread over the times (evenly), and along each time's
    spiral. Raises ValueError when a time would have no training view."""
    t_count = o.animate.times
    sizes = [o.views // t_count + (j < o.views % t_count) for j in range(t_count)]
    q, r = divmod(o.test_views, t_count)
    extra = {int((m + 0.5) * t_count / r) for m in range(r)} if r else set()
    tests_per = [q + (j in extra) for j in range(t_count)]
    dirs, times, tests, start = [], [], set(), 0
    for j, (n, k) in enumerate(zip(sizes, tests_per)):
        if n - k < 1:
            raise ValueError(f"animate.times: {t_count} times over {o.views} views with {o.test_views} test views "
                             f"leave time {j} without a training view; use fewer times or more views")
        dirs.append(fibonacci_directions(n, o.hemisphere, o.seed, azimuth=j * GOLDEN_ANGLE))
        times += [j / (t_count - 1)] * n
        tests |= {start + i for i in (_test_indices(n, k) if k else ())}
        start += n
    return np.concatenate(dirs), times, tests


def plan_dataset(scene: Scene, options: DatasetOptions) -> DatasetPlan:
    """Cameras, splits and per-view variations of a dataset of `scene`. Raises ValueError for an
    option the scene cannot satisfy (an unknown animated mesh, lighting variation without lights)."""
    o = options
    if not scene.meshes:
        raise ValueError("scene: has no meshes to render")
    anim = None
    if o.animate is not None:
        name = o.animate.mesh or next(iter(scene.meshes))
        if name not in scene.meshes:
            raise ValueError(f"animate.mesh: no mesh named {name!r}; meshes: {', '.join(scene.meshes)}")
        anim = {"mesh": name, "degrees": float(o.animate.degrees),
                "axis": _floats(cv.normalize(o.animate.axis)), "translation": None,
                "times": None if o.animate.times is None else int(o.animate.times)}
    if ((o.mode or scene.render.mode) == "soft" and np.ndim(scene.background) == 3 and o.background is None
            and not o.rgba):
        raise ValueError("mode: soft rendering supports a background color only, and the scene's background "
                         "is an image; give a background color")
    if o.lighting_variation > 0 and not _light_paths(scene):
        raise ValueError("lighting_variation: the scene has no lights to vary")

    swept = []
    if anim is not None:
        if o.animate.translation is None:
            anim["translation"] = [0.0, 0.2 * scene_bounds(scene)[1], 0.0]
        else:
            anim["translation"] = _floats(o.animate.translation)
        mesh = scene.meshes[anim["mesh"]]
        swept = [mesh_world_vertices(mesh, *_animated(mesh, anim, t)) for t in np.linspace(0, 1, 9)]
    center, radius = scene_bounds(scene, swept)
    if o.center is not None:
        center = np.asarray(o.center, np.float64)
        points = np.concatenate([mesh_world_vertices(m) for m in scene.meshes.values()] + swept)
        radius = float(np.linalg.norm(points - center, axis=1).max())
    radius = max(radius, 1e-6)
    intrinsics = cv.fov_y_to_intrinsics(o.fov_y, o.width, o.height)
    half_y = math.radians(o.fov_y) / 2
    half_x = math.atan(o.width / o.height * math.tan(half_y))
    distance = o.distance if o.distance is not None else 1.1 * radius / math.sin(min(half_x, half_y))

    if anim is not None and anim["times"] is not None:
        directions, times, tests = _timed_cameras(o)
    else:
        directions = fibonacci_directions(o.views, o.hemisphere, o.seed)
        times = [i / (o.views - 1) if o.views > 1 else 0.0 for i in range(o.views)]
        tests = _test_indices(o.views, o.test_views) if o.test_views else set()
    train = [i for i in range(o.views) if i not in tests]
    occluded: set[int] = set()
    occ_rng = np.random.default_rng([o.seed, _OCCLUDERS])
    if o.occluders and o.occluded_fraction > 0:
        count = max(1, round(o.occluded_fraction * len(train)))
        occluded = {int(i) for i in occ_rng.choice(train, size=count, replace=False)}
    light_rng = np.random.default_rng([o.seed, _LIGHTING])
    digits = max(3, len(str(o.views - 1)))

    views = []
    for i, d in enumerate(directions):
        pose = cv.look_at(center + distance * d, center).astype(np.float32)
        v = ViewPlan(i, f"r_{i:0{digits}d}", "test" if i in tests else "train", pose)
        if anim is not None:
            v.time = times[i]
            t, r = _animated(scene.meshes[anim["mesh"]], anim, v.time)
            v.mesh_values = {ParamPath(Group.MESHES, anim["mesh"], "translation"): t.astype(np.float32),
                             ParamPath(Group.MESHES, anim["mesh"], "rotation"): r.astype(np.float32)}
        if o.lighting_variation > 0:
            v.lights = _vary_lights(scene, light_rng, o.lighting_variation)
        if o.occluders:
            v.occluders = _place_occluders(occ_rng, pose, intrinsics, o.width, o.height, distance, radius,
                                           o.occluders) if i in occluded else []
        views.append(v)
    return DatasetPlan(scene.path, o, o.width, o.height, intrinsics.astype(np.float32), center, radius,
                       float(distance), anim, views)


def _light_paths(scene: Scene) -> list[str]:
    paths = []
    for n in list(scene.point_lights) + list(scene.directional_lights):
        paths += [ParamPath(Group.LIGHTS, n, "color"), ParamPath(Group.LIGHTS, n, "intensity")]
    return paths + [ParamPath(Group.LIGHTS, n, "color") for n in scene.ambient_lights]


def _vary_lights(scene: Scene, rng: np.random.Generator, s: float) -> dict[str, np.ndarray]:
    """Each light's intensity times exp(U(-s, s)) and color times a tint 1 + U(-s/2, s/2) per channel
    (ambient: its color times both)."""
    out = {}
    for n, light in list(scene.point_lights.items()) + list(scene.directional_lights.items()):
        scale, tint = math.exp(rng.uniform(-s, s)), 1 + rng.uniform(-s / 2, s / 2, 3)
        out[ParamPath(Group.LIGHTS, n, "color")] = (light.color * tint).astype(np.float32)
        out[ParamPath(Group.LIGHTS, n, "intensity")] = (light.intensity * scale).astype(np.float32)
    for n, light in scene.ambient_lights.items():
        scale, tint = math.exp(rng.uniform(-s, s)), 1 + rng.uniform(-s / 2, s / 2, 3)
        out[ParamPath(Group.LIGHTS, n, "color")] = (light.color * scale * tint).astype(np.float32)
    return out


def _place_occluders(rng: np.random.Generator, pose: np.ndarray, intrinsics: np.ndarray, width: int,
                     height: int, distance: float, radius: float, count: int) -> list[Occluder]:
    """`count` cubes between the camera and the scene's bounding sphere, inside the view: at depth
    0.35..0.75 of the gap to the sphere, at a random point of the central 60% of the image, with an
    edge of 12..30% of the image height at that depth (so a cube never reaches the sphere)."""
    m = cv.pose_to_matrix(pose.astype(np.float64))
    right, up, forward = m[:3, 0], m[:3, 1], -m[:3, 2]
    tan_x, tan_y = 0.5 * width / intrinsics[0], 0.5 * height / intrinsics[1]
    gap = max(distance - radius, 0.1 * distance)
    out = []
    for _ in range(count):
        depth = gap * rng.uniform(0.35, 0.75)
        x, y = rng.uniform(-0.6, 0.6, 2)
        center = m[:3, 3] + depth * (forward + x * tan_x * right + y * tan_y * up)
        size = rng.uniform(0.12, 0.3) * 2 * depth * tan_y
        q = rng.normal(size=4)
        q = q / np.linalg.norm(q)
        color = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)))
        out.append(Occluder(center, q if q[3] >= 0 else -q, float(size), color))
    return out


# ---- rendering and writing ----------------------------------------------------------------------

@dataclass
class DatasetSummary:
    out: Path
    scene_path: str
    frames: int
    train: int
    test: int
    width: int
    height: int
    fov_y: float
    distance: float
    center: np.ndarray
    files: list[str]  # json files written, relative to `out`
    occluded: list[int]  # frame indices with occluders
    seconds: float

    def text(self) -> str:
        split = f" ({self.train} train, {self.test} test)" if self.test else ""
        c = ", ".join(f"{x:.3g}" for x in self.center)
        lines = [f"wrote {self.frames} views{split} of {self.scene_path} to {self.out} in {self.seconds:.1f} s",
                 f"  {self.width}x{self.height}, fov_y {self.fov_y:.1f} deg, cameras at distance "
                 f"{self.distance:.3g} around [{c}]",
                 f"  {', '.join(self.files)}, images/r_*.png"]
        if self.occluded:
            lines.append(f"  occluders in {len(self.occluded)} views")
        return "\n".join(lines)


def _render_scene(scene: Scene, plan: DatasetPlan, occluder_slots: int) -> Scene:
    """A copy of `scene` with one camera (`CAMERA`), the dataset's background and `occluder_slots`
    cubes (meshes and materials `OCCLUDER.format(k)`, placed per view)."""
    o = plan.options
    sc = copy.deepcopy(scene)
    sc.optimize = None
    sc.cameras = {CAMERA: Camera(CAMERA, plan.width, plan.height, plan.intrinsics.copy(),
                                 plan.views[0].pose.copy())}
    if o.mode is not None:
        sc.render.mode = o.mode
    if o.rgba:
        sc.background = np.zeros(3, np.float32)  # alpha is measured against black and white backdrops
    elif o.background is not None:
        sc.background = np.asarray(o.background, np.float32)
    vertices, faces, uvs = primitives.cube(1.0)
    for k in range(occluder_slots):
        name = OCCLUDER.format(k)
        one = np.ones((1, 1, 1), np.float32)
        sc.materials[name] = Material(name, "lambert", np.full((1, 1, 3), 0.5, np.float32), one, 0 * one)
        sc.meshes[name] = Mesh(name, vertices, faces, uvs, np.ones_like(vertices), np.zeros(3, np.float32),
                               np.array([0, 0, 0, 1], np.float32), np.ones(3, np.float32), name, "occluder cube")
    return sc


def _view_values(view: ViewPlan) -> dict[str, np.ndarray]:
    values = {CAMERA_POSE: view.pose, **view.lights, **view.mesh_values}
    for k, occ in enumerate(view.occluders or []):
        name = OCCLUDER.format(k)
        values[ParamPath(Group.MESHES, name, "translation")] = occ.translation
        values[ParamPath(Group.MESHES, name, "rotation")] = occ.rotation
        values[ParamPath(Group.MESHES, name, "scale")] = np.full(3, occ.size)
        values[ParamPath(Group.MATERIALS, name, "albedo")] = occ.color.reshape(1, 1, 3)
    return values



def render_plan_view(ds: DeviceScene, view: ViewPlan, rgba: bool = False) -> np.ndarray:
    """Set `view`'s values on `ds` (a DeviceScene of the render scene) and render it: (H, W, 3)
    linear RGB, or (H, W, 4) straight (un-premultiplied) RGB + coverage with `rgba`."""
    for path, value in _view_values(view).items():
        ds.set(path, value)
    frame = ds.prepare()
    image = render_view(ds, frame, CAMERA).numpy()
    if not rgba:
        return image
    # Compositing is linear in the backdrop b: I = premultiplied color + (1 - alpha) b, so two backdrops
    # give the anti-aliased (or SoftRas) coverage exactly, where the 0/1 tri_id coverage would not.
    black = ds.background_color.numpy().copy()
    ds.background_color.assign(wp.array(np.ones(3, np.float32), dtype=float, device=ds.device))
    try:
        white = render_view(ds, frame, CAMERA).numpy()
    finally:
        ds.background_color.assign(wp.array(black, dtype=float, device=ds.device))
    alpha = np.clip(1 - (white - image).mean(axis=2, keepdims=True), 0, 1)
    color = np.where(alpha > 1e-3, image / np.maximum(alpha, 1e-3), 0)
    return np.concatenate([np.clip(color, 0, 1), alpha], axis=2).astype(np.float32)


def _check_out(out: Path, overwrite: bool) -> None:
    """Create `out` (and out/images) and make sure files can be written there, before rendering."""
    if out.exists() and not out.is_dir():
        raise SceneError(str(out), "", "the output path exists and is not a folder")
    if (out / "transforms.json").exists() and not overwrite:
        raise SceneError(str(out), "", "the folder already holds a dataset (transforms.json); choose another "
                                       "folder or overwrite it (--force)")
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=out / "images")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SceneError(str(out), "", f"cannot write the dataset there: {e.strerror or e}") from None


def _write_json(path: Path, doc: dict) -> None:
    text = json.dumps(doc, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _floats(x) -> list[float]:
    return [float(v) for v in np.asarray(x, np.float64).ravel()]


def _frame_record(plan: DatasetPlan, view: ViewPlan, file_path: str) -> dict:
    matrix = cv.pose_to_matrix(view.pose.astype(np.float64))
    rec: dict = {"file_path": file_path, "transform_matrix": matrix.tolist()}
    if plan.options.test_views:
        rec["split"] = view.split
    if view.time is not None:
        rec["time"] = view.time
    if view.lights:
        rec["appearance"] = {p: _floats(v) for p, v in view.lights.items()}
    if view.occluders is not None:
        rec["occluders"] = [occ.record() for occ in view.occluders]
    return rec


def _header(plan: DatasetPlan) -> dict:
    fx, fy, cx, cy = (float(v) for v in plan.intrinsics)
    return {"camera_angle_x": plan.camera_angle_x, "camera_angle_y": plan.camera_angle_y,
            "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": plan.width, "h": plan.height}


def _generator_record(plan: DatasetPlan) -> dict:
    o = plan.options
    return {"scene": plan.scene_path, "seed": o.seed, "views": o.views, "test_views": o.test_views,
            "center": _floats(plan.center), "radius": plan.radius, "distance": plan.distance,
            "hemisphere": o.hemisphere, "lighting_variation": o.lighting_variation, "occluders": o.occluders,
            "occluded_fraction": o.occluded_fraction, "animation": plan.animation, "rgba": o.rgba,
            "background": list(o.background) if o.background is not None else None, "mode": o.mode}


def write_dataset(scene: Scene, plan: DatasetPlan, out, device: str | None = None,
                  overwrite: bool = False) -> DatasetSummary:
    """Render every view of `plan` and write the dataset under `out` (see the module docstring).
    Raises SceneError naming `out` when it cannot be written (checked before rendering) or already
    holds a dataset and `overwrite` is False."""
    start = time.perf_counter()
    out = Path(out)
    _check_out(out, overwrite)
    if not overwrite:  # no dataset file there, but images of the same names: never overwrite them silently
        taken = [f"images/{v.name}.png" for v in plan.views if (out / "images" / f"{v.name}.png").exists()]
        if taken:
            more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
            raise SceneError(str(out), "", f"writing the dataset would overwrite {', '.join(taken[:3])}{more}; "
                             "remove them or overwrite them (--force)")
    o = plan.options
    base = DeviceScene(_render_scene(scene, plan, 0), device)
    slots = max((len(v.occluders or []) for v in plan.views), default=0)
    occluded = DeviceScene(_render_scene(scene, plan, slots), device) if slots else None
    for view in plan.views:
        ds = occluded if view.occluders else base
        image = render_plan_view(ds, view, rgba=o.rgba)
        if o.rgba:
            encoded = np.concatenate([cv.linear_to_srgb(image[..., :3]), image[..., 3:]], axis=2)
            write_image(out / "images" / f"{view.name}.png", encoded, srgb=False)
        else:
            write_image(out / "images" / f"{view.name}.png", image)

    header, files = _header(plan), []
    if o.test_views:
        for split, views in (("train", plan.split("train")), ("val", plan.split("test")),
                             ("test", plan.split("test"))):
            doc = {**header, "frames": [_frame_record(plan, v, f"./images/{v.name}") for v in views]}
            _write_json(out / f"transforms_{split}.json", doc)
            files.append(f"transforms_{split}.json")
    doc = {**header, "frames": [_frame_record(plan, v, f"images/{v.name}.png") for v in plan.views]}
    if o.test_views:  # nerfstudio's explicit split lists (it requires all three once one is given)
        doc["train_filenames"] = [f"images/{v.name}.png" for v in plan.split("train")]
        doc["val_filenames"] = doc["test_filenames"] = [f"images/{v.name}.png" for v in plan.split("test")]
    doc["drstudio"] = _generator_record(plan)
    _write_json(out / "transforms.json", doc)
    files.insert(0, "transforms.json")
    return DatasetSummary(out, plan.scene_path, len(plan.views), len(plan.split("train")), len(plan.split("test")),
                          plan.width, plan.height, o.fov_y, plan.distance, plan.center, files,
                          [v.index for v in plan.views if v.occluders], time.perf_counter() - start)


def generate_dataset(scene: Scene, out, options: DatasetOptions, device: str | None = None,
                     overwrite: bool = False) -> DatasetSummary:
    """`plan_dataset` then `write_dataset`."""
    return write_dataset(scene, plan_dataset(scene, options), out, device=device, overwrite=overwrite)
