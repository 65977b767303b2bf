"""Small `renderer.scene.Scene` builders for the end-to-end tests, built in code (no scene files).

Geometry comes from trimesh primitives or NumPy; the camera math here (quaternion -> matrix, look-at,
pixel rays) is written from the conventions in `renderer/scene.py` and docs/architecture.md, not
imported from the renderer, so the tests that use it are independent expectations:
OpenGL camera (looks down -Z, +Y up), pose [px, py, pz, qx, qy, qz, qw] camera-to-world, intrinsics
[fx, fy, cx, cy] in pixels, pixel (x, y) centered at (x + 0.5, y + 0.5), row 0 at the top.
"""

from __future__ import annotations

import numpy as np
import trimesh
from drstudio.renderer.scene import (
    AmbientLight,
    Camera,
    DirectionalLight,
    Material,
    Mesh,
    PointLight,
    RenderSettings,
    Scene,
)

F32 = np.float32
IDENTITY_QUAT = np.array([0, 0, 0, 1], F32)


# --- camera and rotation math (float64) -------------------------------------------------------------


def quat_to_matrix(q) -> np.ndarray:
    """(3, 3) rotation matrix of an (x, y, z, w) quaternion (normalized first)."""
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """(x, y, z, w) of a rotation matrix whose trace is > -1 (all the cameras built here)."""
    w = 0.5 * np.sqrt(1.0 + np.trace(r))
    return np.array([(r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w),
                     (r[1, 0] - r[0, 1]) / (4 * w), w])


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Pose (7,) of a camera at `eye` whose -Z axis points at `target`."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    r = np.stack([right, np.cross(back, right), back], axis=1)  # columns: camera x, y, z in world
    return np.concatenate([eye, matrix_to_quat(r)]).astype(F32)


def axis_angle_quat(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    half = np.radians(degrees) / 2
    return np.concatenate([axis * np.sin(half), [np.cos(half)]]).astype(F32)


def pixel_rays(intrinsics, pose, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(origin (3,), directions (H*W, 3)) in float64 through the pixel centers, row-major from the top;
    camera-space z of each direction is -1."""
    fx, fy, cx, cy = np.asarray(intrinsics, np.float64)
    ys, xs = np.mgrid[0:height, 0:width]
    d = np.stack([(xs.ravel() + 0.5 - cx) / fx, -(ys.ravel() + 0.5 - cy) / fy, -np.ones(xs.size)], axis=1)
    return np.asarray(pose[:3], np.float64), d @ quat_to_matrix(pose[3:]).T


def centered_intrinsics(fov_y_deg: float, width: int, height: int) -> np.ndarray:
    fy = 0.5 * height / np.tan(np.radians(fov_y_deg) / 2)
    return np.array([fy, fy, width / 2, height / 2], F32)



def project(world: np.ndarray, camera: Camera) -> np.ndarray:
    """(V, 2) pixel coordinates: p_c = R^T (p - pos), x = cx + fx p_c.x / -p_c.z, y = cy - fy p_c.y / -p_c.z."""
    fx, fy, cx, cy = camera.intrinsics.astype(np.float64)
    pc = (world - camera.pose[:3]) @ quat_to_matrix(camera.pose[3:])
    return np.stack([cx + fx * pc[:, 0] / -pc[:, 2], cy - fy * pc[:, 1] / -pc[:, 2]], axis=1)


def world_geometry(sc: Scene):
    """All meshes in world space, packed in scene order (the DeviceScene's order), float64:
    world = t + R(q) (s * v). Returns (world (V, 3), faces (F, 3), vertex colors (V, 3), material index
    per face (F,))."""
    mats = list(sc.materials)
    world, faces, colors, face_mat = [], [], [], []
    off = 0
    for m in sc.meshes.values():
        world.append(m.translation + (m.vertices.astype(np.float64) * m.scale) @ quat_to_matrix(m.rotation).T)
        faces.append(m.faces + off)
        colors.append(m.colors)
        face_mat.append(np.full(len(m.faces), mats.index(m.material)))
        off += len(m.vertices)
    return tuple(np.concatenate(a) for a in (world, faces, colors, face_mat))


def mesh_labels(sc: Scene, tri_id: np.ndarray) -> np.ndarray:
    """Mesh index (scene order) of each pixel's face id, -1 for background."""
    starts = np.cumsum([0] + [len(m.faces) for m in sc.meshes.values()])
    return np.where(tri_id >= 0, np.searchsorted(starts, tri_id, side="right") - 1, -1)

# --- geometry ---------------------------------------------------------------------------------------


def sphere(radius: float = 1.0, count: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """trimesh's welded (watertight) UV sphere turned so its poles are on the Y axis (trimesh's are on
    Z, which would put a pole's triangle fan at the center of a camera on +Z): smooth vertex normals
    everywhere, no UVs."""
    m = trimesh.creation.uv_sphere(radius=radius, count=[count, count])
    v = m.vertices @ np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # rows: x -> x, y -> -z, z -> y
    return v.astype(F32), m.faces.astype(np.int32)


def icosphere(radius: float = 1.0, subdivisions: int = 1) -> tuple[np.ndarray, np.ndarray]:
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return m.vertices.astype(F32), m.faces.astype(np.int32)


def box(extents=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """A box split at its creases (24 vertices), so normals from the geometry are flat per side."""
    m = trimesh.creation.box(extents=extents)
    # one vertex per (corner, face direction): the two triangles of a side share their diagonal
    keys = np.column_stack([m.faces.reshape(-1), np.repeat(np.round(m.face_normals), 3, axis=0)])
    keys, index = np.unique(keys, axis=0, return_inverse=True)
    return m.vertices[keys[:, 0].astype(int)].astype(F32), index.reshape(-1, 3).astype(np.int32)


def grid_quad(width: float, height: float, rows: int = 1, cols: int = 1):
    """A quad in the plane z = 0 facing +Z, [-w/2, w/2] x [-h/2, h/2], split into rows x cols cells
    (two CCW triangles each). uv = (0, 0) at the top-left corner (-w/2, +h/2), v growing downwards.
    Returns (vertices (V, 3), faces (F, 3), uvs (V, 2))."""
    u, v = np.meshgrid(np.linspace(0, 1, cols + 1), np.linspace(0, 1, rows + 1))
    verts = np.stack([(u.ravel() - 0.5) * width, (0.5 - v.ravel()) * height, np.zeros(u.size)], axis=1)
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    a = (i * (cols + 1) + j).ravel()
    below, right = a + cols + 1, a + 1
    faces = np.concatenate([np.stack([a, below, below + 1], 1), np.stack([a, below + 1, right], 1)])
    return verts.astype(F32), faces.astype(np.int32), np.stack([u.ravel(), v.ravel()], 1).astype(F32)


# --- scene assembly ---------------------------------------------------------------------------------


def mesh(name: str, vertices, faces, material: str, *, uvs=None, colors=None, translation=(0, 0, 0),
         rotation=IDENTITY_QUAT, scale=(1, 1, 1)) -> Mesh:
    v = np.ascontiguousarray(vertices, F32)
    return Mesh(name, v, np.ascontiguousarray(faces, np.int32),
                np.zeros((len(v), 2), F32) if uvs is None else np.ascontiguousarray(uvs, F32),
                np.ones((len(v), 3), F32) if colors is None else np.ascontiguousarray(colors, F32),
                np.asarray(translation, F32), np.asarray(rotation, F32), np.asarray(scale, F32), material)


def material(name: str, model: str = "lambert", albedo=(0.5, 0.5, 0.5), roughness=0.5, metallic=0.0,
             wrap: str = "wrap") -> Material:
    """Constants become 1x1 textures (the Scene's representation); arrays are used as given."""
    def tex(x, channels):
        x = np.asarray(x, F32)
        return x.reshape(1, 1, channels) if x.ndim <= 1 else np.ascontiguousarray(x)

    return Material(name, model, tex(albedo, 3), tex(roughness, 1), tex(metallic, 1), wrap)


def scene(meshes, materials, *, camera: Camera, point=(), directional=(), ambient=(), background=None,
          mode: str = "hard", shadows: bool = False, mipmaps: bool = False, sigma: float = 1.0,
          gamma: float = 1e-2) -> Scene:
    sc = Scene(path="", render=RenderSettings(mode=mode, shadows=shadows, soft_sigma=sigma, soft_gamma=gamma,
                                              mipmaps=mipmaps))
    sc.meshes = {m.name: m for m in meshes}
    sc.materials = {m.name: m for m in materials}
    sc.cameras = {camera.name: camera}
    for i, (pos, color, intensity) in enumerate(point):
        sc.point_lights[f"point{i}"] = PointLight(f"point{i}", np.asarray(pos, F32), np.asarray(color, F32),
                                                  np.asarray([intensity], F32))
    for i, (direction, color, intensity) in enumerate(directional):
        sc.directional_lights[f"sun{i}"] = DirectionalLight(f"sun{i}", np.asarray(direction, F32),
                                                            np.asarray(color, F32), np.asarray([intensity], F32))
    for i, color in enumerate(ambient):
        sc.ambient_lights[f"ambient{i}"] = AmbientLight(f"ambient{i}", np.asarray(color, F32))
    if background is not None:
        sc.background = np.asarray(background, F32)
    return sc


def cam(width: int, height: int, pose, fov_y: float = 40.0, name: str = "main", intrinsics=None) -> Camera:
    intr = centered_intrinsics(fov_y, width, height) if intrinsics is None else np.asarray(intrinsics, F32)
    return Camera(name, width, height, intr, np.asarray(pose, F32))


# --- the scenes the tests use -----------------------------------------------------------------------

SUN_DIRECTION = np.array([-0.4, -0.5, -0.75])  # travels down, left and away from the camera
SUN_COLOR = np.array([1.0, 0.8, 0.6])
SUN_INTENSITY = 2.5
SPHERE_ALBEDO = np.array([0.7, 0.5, 0.3])


def lambert_sphere(width: int = 48, height: int = 40, count: int = 48) -> Scene:
    """A unit Lambert sphere at the origin under one directional light, camera on +Z at distance 4."""
    v, f = sphere(1.0, count)
    return scene([mesh("ball", v, f, "clay")], [material("clay", albedo=SPHERE_ALBEDO)],
                 camera=cam(width, height, look_at((0, 0, 4), (0, 0, 0)), fov_y=35.0),
                 directional=[(SUN_DIRECTION, SUN_COLOR, SUN_INTENSITY)])


def textured_quad(texture: np.ndarray, distance: float = 2.0, f: float = 20.0, mipmaps: bool = False) -> Scene:
    """A quad facing the camera whose texels map 1:1 to the pixels of a (h, w) image: the quad spans
    w/f * distance by h/f * distance at `distance` in front of a camera with focal length f pixels and
    the principal point at the image center. Ambient light of color 1 only: radiance == albedo."""
    h, w, _ = texture.shape
    v, faces, uvs = grid_quad(w / f * distance, h / f * distance)
    return scene([mesh("card", v, faces, "paper", uvs=uvs)], [material("paper", albedo=texture)],
                 camera=cam(w, h, [0, 0, distance, 0, 0, 0, 1], intrinsics=[f, f, w / 2, h / 2]),
                 ambient=[(1.0, 1.0, 1.0)], mipmaps=mipmaps)


def two_meshes(width: int = 32, height: int = 24, mode: str = "hard", seed: int = 0) -> Scene:
    """A Lambert box with random vertex colors and a GGX sphere, both with non-trivial transforms,
    seen by a rotated camera; a point light, a directional light and ambient light; gray background."""
    rng = np.random.default_rng(seed)
    bv, bf = box((1.2, 0.8, 1.0))
    sv, sf = icosphere(0.55, 2)
    meshes = [
        mesh("crate", bv, bf, "matte", colors=rng.uniform(0.4, 1.0, (len(bv), 3)), translation=(-0.55, 0.0, 0.1),
             rotation=axis_angle_quat((0.3, 1.0, 0.2), 35.0), scale=(0.9, 1.1, 1.0)),
        mesh("orb", sv, sf, "shiny", colors=rng.uniform(0.6, 1.0, (len(sv), 3)), translation=(0.6, 0.15, 0.35),
             rotation=axis_angle_quat((1.0, 0.0, 0.5), 20.0), scale=(1.0, 0.9, 1.1)),
    ]
    materials = [material("matte", "lambert", albedo=(0.8, 0.6, 0.4)),
                 material("shiny", "ggx", albedo=(0.3, 0.5, 0.8), roughness=0.35, metallic=0.3)]
    return scene(meshes, materials, camera=cam(width, height, look_at((0.8, 1.6, 3.6), (0.0, 0.05, 0.2)), 38.0),
                 point=[((1.5, 2.5, 2.0), (1.0, 0.9, 0.8), 9.0)],
                 directional=[((0.3, -1.0, -0.4), (0.6, 0.7, 1.0), 0.8)], ambient=[(0.05, 0.06, 0.08)],
                 background=(0.2, 0.25, 0.3), mode=mode)


def shadow_scene(width: int = 40, height: int = 30, shadows: bool = True) -> Scene:
    """A sphere (radius 0.5, center (0, 1, 0)) over a 4 x 4 ground plane y = 0; a point light above and to
    the right, so the shadow falls to the left of the sphere, where the camera sees it."""
    sv, sf = sphere(0.5, 24)
    gv, gf, guv = grid_quad(4.0, 4.0, 2, 2)
    ground = mesh("ground", gv, gf, "floor", uvs=guv, rotation=axis_angle_quat((1, 0, 0), -90.0))
    return scene([mesh("ball", sv, sf, "clay", translation=(0, 1, 0)), ground],
                 [material("clay", albedo=(0.7, 0.4, 0.3)), material("floor", albedo=(0.8, 0.8, 0.8))],
                 camera=cam(width, height, look_at((0.0, 3.0, 4.5), (-0.5, 0.3, 0.0)), 45.0),
                 point=[((1.2, 3.5, 0.0), (1.0, 1.0, 1.0), 12.0)], ambient=[(0.1, 0.1, 0.1)], shadows=shadows)


def gradient_scene(width: int = 24, height: int = 20, mode: str = "hard", mipmaps: bool = True,
                   seed: int = 1) -> Scene:
    """A tiny scene with every parameter kind: a textured Lambert card (4x3 grid of cells, a 5x4 albedo
    texture magnified on screen, random vertex colors) behind a GGX icosphere with constant albedo,
    roughness and metallic; a point light, a directional light, ambient light; a rotated camera."""
    rng = np.random.default_rng(seed)
    cv, cf, cuv = grid_quad(2.4, 1.8, 3, 4)
    cuv = cuv * 0.7 + 0.15  # texel coordinates 0.25..3.75 (x), 0.1..2.9 (y): inside the texel centers' hull
    sv, sf = icosphere(0.5, 1)
    meshes = [
        mesh("card", cv, cf, "canvas", uvs=cuv, colors=rng.uniform(0.5, 1.0, (len(cv), 3)),
             translation=(0.0, 0.0, -0.3), rotation=axis_angle_quat((0.2, 1.0, 0.0), -15.0), scale=(1.0, 1.05, 1.0)),
        mesh("orb", sv, sf, "gloss", colors=rng.uniform(0.7, 1.0, (len(sv), 3)), translation=(0.25, -0.05, 0.45),
             rotation=axis_angle_quat((1.0, 0.3, 0.0), 25.0), scale=(1.1, 0.95, 1.0)),
    ]
    materials = [material("canvas", "lambert", albedo=ramp_texture(4, 5, rng), wrap="clamp"),
                 material("gloss", "ggx", albedo=(0.6, 0.4, 0.3), roughness=0.45, metallic=0.35)]
    return scene(meshes, materials, camera=cam(width, height, look_at((0.4, 0.5, 3.2), (0.05, 0.0, 0.0)), 42.0),
                 point=[((1.2, 1.5, 2.0), (1.0, 0.9, 0.8), 6.0)],
                 directional=[((-0.3, -0.5, -1.0), (0.7, 0.8, 1.0), 0.9)], ambient=[(0.08, 0.07, 0.06)],
                 background=(0.15, 0.2, 0.25), mode=mode, mipmaps=mipmaps)


def ramp_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An (h, w, 3) texture affine in the texel position, per channel, with values in [0.15, 0.9]. Bilinear
    sampling inside the hull of the texel centers reproduces an affine function exactly, so the sampled
    albedo has no kinks at texel centers (which a step of a finite difference could straddle)."""
    y, x = np.mgrid[0:h, 0:w] / np.array([max(h - 1, 1), max(w - 1, 1)])[:, None, None]
    lo, hi = rng.uniform(0.15, 0.4, (2, 3)), rng.uniform(0.6, 0.9, 3)
    gx, gy = rng.uniform(-1, 1, (2, 3))
    t = (gx * x[..., None] + gy * y[..., None] - np.minimum(gx, 0) - np.minimum(gy, 0)) / (np.abs(gx) + np.abs(gy))
    return (lo[0] + t * (hi - lo[0])).astype(F32)

