"""Starting values of optimized parameters, from the `init` of `optimize.parameters` in a scene file.

`init` forms (see scenes/README.md):
- absent: the scene's own value (a copy).
- a number or nested list: broadcast (NumPy rules) to the parameter's shape; must lie in the
  parameter's valid range (albedo and metallic [0, 1], roughness [0.02, 1], colors >= 0, ...).
- a file name, relative to the scene file: an image for albedo/roughness/metallic (same size as the
  scene's texture), a mesh file for vertices: with the scene mesh's faces, its vertices; with any other
  topology, the welded mesh of the file becomes the optimized mesh (`start_mesh`).
- {"primitive": {...}} for vertices: a welded primitive (icosphere, sphere, cube, torus) becomes the
  optimized mesh, of any topology (`start_mesh`).
- {"perturb": {"sigma", "seed"?}}: the scene's value plus Gaussian noise, then clipped into the valid
  range (quaternions renormalized).
- {"perturb_pose": {"degrees", "translation", "seed"?}} for camera poses: rotated by exactly
  `degrees` about a random axis (in the camera frame) and moved by `translation` times the distance
  from the camera to the center of the scene's bounding box, in a random direction.
A perturbation without a seed uses `rng`, by default seeded from optimize.seed and the path.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from . import conventions as cv
from .assets import load_mesh_file, read_image
from .errors import SceneError, field_path
from .params import COORD_MAX, Kind, ParamPath
from .scene import Scene
from .scene_schema import PerturbInit, PerturbPoseInit, PrimitiveInit


def scene_center(scene: Scene) -> np.ndarray:
    """Center of the world-space bounding box of all meshes (origin when there are none)."""
    points = [(cv.quat_to_matrix(m.rotation) @ (m.vertices * m.scale).T).T + m.translation
              for m in scene.meshes.values()]
    if not points:
        return np.zeros(3)
    allp = np.concatenate(points)
    return (allp.min(0) + allp.max(0)) / 2


def _rng(scene: Scene, path: str, seed: int | None, rng: np.random.Generator | None) -> np.random.Generator:
    if seed is not None:
        return np.random.default_rng(seed)
    if rng is not None:
        return rng
    base = getattr(scene.optimize, "seed", 0)
    return np.random.default_rng([base, zlib.crc32(path.encode())])


def _within_render_bounds(kind: Kind, value: np.ndarray, error) -> np.ndarray:
    """`value` when it lies within its kind's bounds that keep rendering finite in float32 (those of magnitude
    >= COORD_MAX, e.g. positions within +-1e6); beyond them is an error, never clipped. The kind's other
    bounds (albedo in [0, 1], scale >= 1e-3) are projections `_fix_range` applies."""
    lo, hi = kind.range
    lo, hi = (lo if lo <= -COORD_MAX else -np.inf), (hi if hi >= COORD_MAX else np.inf)
    if value.size and (value.min() < lo or value.max() > hi):
        raise error(f"gives values in [{value.min():g}, {value.max():g}], beyond [{lo:g}, {hi:g}]: the range of "
                    f"{kind} parameters that keeps rendering finite in float32 (use a smaller perturbation)")
    return value


def _fix_range(kind: Kind, value: np.ndarray) -> np.ndarray:
    lo, hi = kind.range
    if np.isfinite(lo) or np.isfinite(hi):
        value = np.clip(value, lo, hi)
    if kind is Kind.QUATERNION:
        value = cv.normalize(value, "quaternion")
    if kind is Kind.POSE:
        value = np.r_[value[:3], cv.normalize(value[3:], "pose quaternion")]
    return value


def initial_value(scene: Scene, path: str, spec=None, rng: np.random.Generator | None = None) -> np.ndarray:
    """The starting value (float32, the parameter's shape) of parameter `path`. `spec` is an `init`
    value of the scene schema; by default the one in scene.optimize for `path`. Raises SceneError
    naming optimize.parameters["path"].init when the init does not fit the parameter."""
    params = scene.params()
    if path not in params:
        raise SceneError(scene.path, field_path(("optimize", "parameters", path)), "unknown parameter path")
    param = params[path]
    if spec is None and scene.optimize is not None and path in scene.optimize.parameters:
        spec = scene.optimize.parameters[path].init
    where = field_path(("optimize", "parameters", path, "init"))

    def error(msg: str) -> SceneError:
        return SceneError(scene.path, where, msg)

    shape, kind, current = param.shape, Kind(param.kind), param.value.astype(np.float64)
    if kind is Kind.VERTICES and isinstance(spec, (PrimitiveInit, str)):
        own = start_mesh(scene, path, spec)
        if own is not None:
            return own[0]
    if spec is None:
        value = current
    elif isinstance(spec, PerturbInit):
        noise = _rng(scene, path, spec.perturb.seed, rng).normal(0.0, spec.perturb.sigma, shape)
        value = _fix_range(kind, _within_render_bounds(kind, current + noise, error))
    elif isinstance(spec, PerturbPoseInit):
        if kind is not Kind.POSE:
            raise error(f'"perturb_pose" applies to camera poses (cameras.NAME.pose), not to {kind} '
                        'parameters')
        p, g = spec.perturb_pose, _rng(scene, path, spec.perturb_pose.seed, rng)
        axis, shift = cv.normalize(g.normal(size=3)), cv.normalize(g.normal(size=3))
        distance = max(float(np.linalg.norm(current[:3] - scene_center(scene))), 1e-6)
        rot = cv.quat_to_matrix(current[3:]) @ cv.quat_to_matrix(cv.quat_from_axis_angle(axis, p.degrees))
        value = np.r_[_within_render_bounds(kind, current[:3] + p.translation * distance * shift, error),
                      cv.quat_from_matrix(rot)]
    elif isinstance(spec, PrimitiveInit):
        raise error(f'"primitive" applies to mesh vertices (meshes.NAME.vertices), not to {kind} parameters')
    elif isinstance(spec, str):
        value = _from_file(scene, path, kind, shape, Path(scene.path).parent / spec, where)
    else:
        given = np.asarray(spec, dtype=np.float64)
        try:
            value = np.broadcast_to(given, shape).copy()
        except ValueError:
            raise error(f"value of shape {given.shape} does not broadcast to the parameter's shape "
                        f"{shape}") from None
        lo, hi = kind.range
        if value.min() < lo or value.max() > hi:
            raise error(f"expected values in [{lo:g}, {hi:g}] for {kind} parameters")
        value = _fix_range(kind, value)
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(value, dtype=np.float32)
    if not np.isfinite(out).all():  # e.g. a perturb sigma of 3e38: finite in the file, inf in float32
        raise error(f"gives values outside float32's finite range (|x| <= {np.finfo(np.float32).max:.3g}); "
                    "use a smaller perturbation")
    return out


def _from_file(scene: Scene, path: str, kind: Kind, shape: tuple, file: Path, where: str) -> np.ndarray:
    def error(msg: str) -> SceneError:
        return SceneError(scene.path, where, msg)

    if kind.is_texture:
        value = read_image(file, srgb=kind is Kind.ALBEDO, channels=shape[2], file=scene.path, field=where,
                           kind=kind)
        if value.shape != shape:
            raise error(f"image '{file}' is {value.shape[1]}x{value.shape[0]}x{value.shape[2]}, the "
                        f"parameter is {shape[1]}x{shape[0]}x{shape[2]} (W x H x C)")
        return _fix_range(kind, value)
    if kind is Kind.VERTICES:
        mesh = scene.meshes[ParamPath.parse(path).owner]
        vertices, faces, _, _ = load_mesh_file(file, scene.path, where)
        source = mesh.atlas_source
        if source is not None and len(vertices) > source.max() and np.array_equal(faces, source[mesh.faces]):
            vertices = vertices[source]  # the mesh's vertices before its automatic UV atlas split them on seams
            faces = mesh.faces
        if vertices.shape != shape or not np.array_equal(faces, mesh.faces):
            raise error(f"mesh file '{file}' has {len(vertices)} vertices and {len(faces)} triangles, the "
                        f"mesh {shape[0]} and {len(mesh.faces)}: the same vertices and faces are required")
        return _within_render_bounds(kind, vertices, error)
    raise error("a file init applies to textures (albedo, roughness, metallic) and vertices, not to "
                f"{kind} parameters")


def _welded(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One vertex per position (seams and poles merged), degenerate and duplicate faces dropped."""
    import trimesh

    m = trimesh.Trimesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64), process=True)
    m.update_faces(m.nondegenerate_faces())
    m.update_faces(m.unique_faces())
    m.remove_unreferenced_vertices()
    return np.ascontiguousarray(m.vertices, np.float32), np.ascontiguousarray(m.faces, np.int32)


def start_mesh(scene: Scene, path: str, spec=None) -> tuple[np.ndarray, np.ndarray] | None:
    """(vertices (V, 3) float32, faces (F, 3) int32) of the mesh a vertices parameter starts from when its
    `init` gives it a topology of its own (a primitive, or a mesh file whose faces differ from the scene
    mesh's); None when it keeps the scene mesh's faces. Raises SceneError naming the init."""
    from .loading import _primitive

    if spec is None and scene.optimize is not None and path in scene.optimize.parameters:
        spec = scene.optimize.parameters[path].init
    where = field_path(("optimize", "parameters", path, "init"))
    mesh = scene.meshes[ParamPath.parse(path).owner]
    if isinstance(spec, PrimitiveInit):
        vertices, faces, _ = _primitive(spec.primitive)
        return _welded(vertices, faces)
    if isinstance(spec, str):
        vertices, faces, _, _ = load_mesh_file(Path(scene.path).parent / spec, scene.path, where)
        if vertices.shape == mesh.vertices.shape and np.array_equal(faces, mesh.faces):
            return None
        source = mesh.atlas_source  # the scene mesh's topology before its automatic UV atlas split it
        if source is not None and len(vertices) > source.max() and np.array_equal(faces, source[mesh.faces]):
            return None
        vertices, faces = _welded(vertices, faces)
        if len(faces) == 0:
            raise SceneError(scene.path, where, f"mesh file '{spec}' has no triangle of nonzero area")
        return vertices, faces
    return None
