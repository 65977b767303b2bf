"""Results in formats other programs open: meshes (OBJ, PLY, glTF binary) with their texture or vertex
colors, radiance fields as a surface (marching cubes, PyMCubes) with vertex colors or as a colored
point cloud (PLY), and cameras (optimized or not) as a nerfstudio / instant-ngp `transforms.json`.
Every file is written atomically (`renderer.images.atomic_write`).

Conventions: positions are world space (+Y up, OpenGL, as the renderer); colors and textures are linear
RGB in drstudio and sRGB-encoded 8-bit in the files (what viewers expect); uv v = 0 is the top texel row
in drstudio (image convention) and the bottom in OBJ/glTF, so v is flipped on the way out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .conventions import linear_to_srgb
from .images import atomic_write

MESH_FORMATS = (".obj", ".ply", ".glb")
POINT_FORMATS = (".ply",)
_SH_C0 = 0.28209479177387814


def _srgb8(linear: np.ndarray) -> np.ndarray:
    return np.round(linear_to_srgb(np.clip(linear, 0.0, 1.0)) * 255).astype(np.uint8)


def write_mesh(path, vertices: np.ndarray, faces: np.ndarray, *, uvs: np.ndarray | None = None,
               texture: np.ndarray | None = None, vertex_colors: np.ndarray | None = None) -> Path:
    """Write a triangle mesh to `path` (.obj with .mtl and texture PNG beside it, .ply, or .glb).

    vertices (V, 3) float; faces (F, 3) int; uvs (V, 2) in drstudio's convention with `texture`
    (H, W, 3) linear RGB (OBJ and glTF carry it; PLY does not and gets no texture); vertex_colors (V, 3)
    linear RGB (PLY and glTF; ignored with a texture)."""
    import trimesh
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise ValueError(f"path: expected a file ending in one of {MESH_FORMATS}, got {path.name!r}")
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"vertices, faces: expected (V, 3) and (F, 3), got {vertices.shape} and {faces.shape}")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"faces: indices must lie in [0, {len(vertices)})")
    visual = None
    if texture is not None and uvs is not None and path.suffix.lower() != ".ply":
        uv = np.asarray(uvs, np.float64).copy()
        uv[:, 1] = 1.0 - uv[:, 1]
        image = Image.fromarray(_srgb8(np.asarray(texture, np.float32)[..., :3]))
        visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    elif vertex_colors is not None:
        rgb = _srgb8(np.asarray(vertex_colors, np.float32))
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.c_[rgb, np.full(len(rgb), 255, np.uint8)])
    mesh = trimesh.Trimesh(vertices, faces, visual=visual, process=False)
    if path.suffix.lower() == ".obj":
        # OBJ is several files (mesh, material, texture): trimesh's exporter returns them by name
        files = trimesh.exchange.obj.export_obj(mesh, return_texture=True, mtl_name=f"{path.stem}.mtl",
                                                include_color=vertex_colors is not None)
        text, extra = files if isinstance(files, tuple) else (files, {})
        for name, data in extra.items():
            atomic_write(path.parent / name, lambda tmp, d=data: Path(tmp).write_bytes(d))
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    kind = path.suffix.lower()[1:]
    return atomic_write(path, lambda tmp: mesh.export(tmp, file_type=kind))


def write_points(path, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """A colored point cloud (.ply): points (N, 3) world space, colors (N, 3) linear RGB."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in POINT_FORMATS:
        raise ValueError(f"path: expected a .ply file, got {path.name!r}")
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    rgba = None
    if colors is not None:
        rgb = _srgb8(np.asarray(colors, np.float32).reshape(-1, 3))
        rgba = np.c_[rgb, np.full(len(rgb), 255, np.uint8)]
    cloud = trimesh.PointCloud(pts, colors=rgba)
    return atomic_write(path, lambda tmp: cloud.export(tmp, file_type="ply"))


# -- cameras -------------------------------------------------------------------------------------------
def write_cameras(path, cameras, *, extra: dict | None = None) -> Path:
    """Cameras as a nerfstudio / instant-ngp `transforms.json` (.json): one frame per camera with its
    `file_path`, `fl_x`, `fl_y`, `cx`, `cy`, `w`, `h` and `transform_matrix` (camera-to-world, OpenGL: looks
    down -Z, +Y up; drstudio's world), plus drstudio's `name` and `optimized` keys, which those tools ignore.

    cameras: iterable of dicts with `name`, `width`, `height`, `intrinsics` (fx, fy, cx, cy),
    `pose` (position + quaternion x, y, z, w), `file_path` (default `images/<name>.png`) and `optimized`
    (bool, default False). `extra` adds top-level keys (e.g. the capture block of the source dataset)."""
    import json

    from .conventions import pose_to_matrix

    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ValueError(f"path: expected a .json file, got {path.name!r}")
    frames = []
    for cam in cameras:
        fx, fy, cx, cy = (float(v) for v in np.asarray(cam["intrinsics"], np.float64).reshape(4))
        frames.append({"file_path": cam.get("file_path") or f"images/{cam['name']}.png",
                       "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": int(cam["width"]), "h": int(cam["height"]),
                       "transform_matrix": pose_to_matrix(cam["pose"]).tolist(),
                       "name": cam["name"], "optimized": bool(cam.get("optimized", False))})
    doc = {**(extra or {}), "frames": frames}
    text = json.dumps(doc, indent=1) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# -- voxel-grid fields --------------------------------------------------------------------------------
def activate(raw: np.ndarray, activation: str) -> np.ndarray:
    """The density a voxel grid's raw value stands for (renderer.volume.voxel_grid)."""
    raw = np.asarray(raw, np.float64)
    if activation == "relu":
        return np.maximum(raw, 0.0)
    return np.logaddexp(0.0, raw)  # softplus without overflow


def default_level(aabb: np.ndarray, resolution) -> float:
    """The density whose opacity across one lattice spacing is 1/2: ln 2 / spacing (scale-free)."""
    lo, hi = np.asarray(aabb, np.float64)[:3], np.asarray(aabb, np.float64)[3:]
    spacing = float(np.mean((hi - lo) / (np.asarray(resolution, np.float64) - 1)))
    return float(np.log(2.0) / spacing)


def _trilinear(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """values (nx, ny, nz, C) at fractional lattice coordinates idx (N, 3) (clamped to the lattice)."""
    res = np.array(values.shape[:3])
    idx = np.clip(idx, 0, res - 1)
    i0 = np.minimum(np.floor(idx).astype(np.int64), res - 2).clip(0)
    f = idx - i0
    out = np.zeros((len(idx), values.shape[3]), np.float64)
    for c in range(8):
        o = np.array([c & 1, (c >> 1) & 1, (c >> 2) & 1])
        w = np.prod(np.where(o, f, 1 - f), axis=1)
        j = np.minimum(i0 + o, res - 1)
        out += w[:, None] * values[j[:, 0], j[:, 1], j[:, 2]]
    return out


def _world(idx: np.ndarray, aabb: np.ndarray, res) -> np.ndarray:
    lo, hi = np.asarray(aabb, np.float64)[:3], np.asarray(aabb, np.float64)[3:]
    return lo + idx * (hi - lo) / (np.asarray(res, np.float64) - 1)


def grid_colors(sh: np.ndarray, idx: np.ndarray, sh_degree: int) -> np.ndarray:
    """The view-independent color (the SH DC term, sigmoid-activated as the field renders it) at
    fractional lattice coordinates idx (N, 3)."""
    k = (sh_degree + 1) ** 2
    dc = np.asarray(sh, np.float64)[..., [0, k, 2 * k]]
    return 1.0 / (1.0 + np.exp(-_SH_C0 * _trilinear(dc, idx)))


#: Contracted fields export what lies within this max-norm of the contracted space (2 is infinity; 1.9
#: is 10 inner half-sizes from the centre): the far shell is a backdrop, not geometry.
CONTRACTED_EXPORT_NORM = 1.9


def _contracted_keep(points: np.ndarray, aabb) -> np.ndarray:
    box = np.asarray(aabb, np.float64).reshape(2, 3)
    x = (points - box.mean(axis=0)) / ((box[1] - box[0]) / 4.0)
    return np.abs(x).max(axis=1) < CONTRACTED_EXPORT_NORM


def grid_mesh(density_raw: np.ndarray, aabb, activation: str = "softplus", sh: np.ndarray | None = None,
              sh_degree: int = 0, level: float | None = None, contract: bool = False):
    """Marching cubes of a voxel grid's activated density at `level` (default `default_level`).
    Returns (vertices (V, 3) world, faces (F, 3), colors (V, 3) linear or None); ValueError when no
    surface crosses the level. A contracted grid (`contract`) keeps the triangles within
    CONTRACTED_EXPORT_NORM of the contracted space, their vertices mapped back to the world."""
    import mcubes

    density = activate(density_raw, activation)
    level = default_level(aabb, density.shape) if level is None else float(level)
    if not (density.min() < level < density.max()):
        raise ValueError(f"level: the density lies in [{density.min():.4g}, {density.max():.4g}]; no surface at "
                         f"{level:.4g}")
    idx, faces = mcubes.marching_cubes(density, level)
    colors = grid_colors(sh, idx, sh_degree) if sh is not None else None
    # mcubes' triangles are counter-clockwise seen from the low-density side: normals point out of the
    # dense region, as the renderer's front faces (tests/test_export.py checks the signed volume)
    vertices, faces = _world(idx, aabb, density.shape), faces.astype(np.int64)
    if contract:
        from .volume.march import uncontract_points

        keep = _contracted_keep(vertices, aabb)
        faces = faces[keep[faces].all(axis=1)]
        used = np.unique(faces)
        remap = np.full(len(vertices), -1, np.int64)
        remap[used] = np.arange(len(used))
        vertices, faces = uncontract_points(vertices[used], aabb), remap[faces]
        colors = colors[used] if colors is not None else None
        if not len(faces):
            raise ValueError("the surface lies only in the contracted far shell: nothing near enough to export")
    return vertices, faces, colors


def grid_points(density_raw: np.ndarray, aabb, activation: str = "softplus", sh: np.ndarray | None = None,
                sh_degree: int = 0, level: float | None = None, contract: bool = False):
    """The lattice points whose activated density exceeds `level`: (points (N, 3) world, colors or None);
    a contracted grid's within CONTRACTED_EXPORT_NORM, mapped back to the world."""
    density = activate(density_raw, activation)
    level = default_level(aabb, density.shape) if level is None else float(level)
    idx = np.argwhere(density > level).astype(np.float64)
    colors = grid_colors(sh, idx, sh_degree) if sh is not None else None
    points = _world(idx, aabb, density.shape)
    if contract:
        from .volume.march import uncontract_points

        keep = _contracted_keep(points, aabb)
        points, colors = uncontract_points(points[keep], aabb), (colors[keep] if colors is not None else None)
    return points, colors
