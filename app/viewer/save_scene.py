"""File > Save scene as: the scene file with the viewer's current values (issue 17 item 7).

The source scene's JSON is the template (its optimize section, render settings and names are kept); the
values of lights, cameras (intrinsics as fx fy cx cy, poses as OpenGL camera-to-world matrices), mesh
transforms and constant material properties are written into it. A texture that differs from the file's
is written as a PNG beside the new file (albedo sRGB-encoded, roughness / metallic linear, as the loader
reads them), a mesh whose vertices, uvs or colors changed as an OBJ with its uvs (or a GLB without uvs
when it has vertex colors, which OBJ does not carry); both are referenced relatively. Relative file
references of the source are rewritten relative to the new file's folder. The written file loads with
`renderer.loading.load_scene` and renders as the viewer's values do
(textures written as PNG up to 8-bit quantization)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from drstudio.renderer import conventions as cv
from drstudio.renderer.export import write_mesh
from drstudio.renderer.images import atomic_write, write_image
from drstudio.renderer.params import Group, param_path

NOT_FILES = {"name", "material", "type", "model", "wrap", "mode", "convention", "kind"}  # keys naming no file


def _relink(node, src_dir: Path, dst_dir: Path):
    """`node` with every relative path that names an existing file or folder of `src_dir` made relative to
    `dst_dir` instead."""
    if isinstance(node, dict):
        return {k: (v if k in NOT_FILES else _relink(v, src_dir, dst_dir)) for k, v in node.items()}
    if isinstance(node, list):
        return [_relink(v, src_dir, dst_dir) for v in node]
    if isinstance(node, str) and node and not os.path.isabs(node) and (src_dir / node).exists():
        return os.path.relpath((src_dir / node).resolve(), dst_dir.resolve())
    return node


def _floats(a) -> list:
    return [float(x) for x in np.asarray(a, np.float64).reshape(-1)]


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> Path:
    """An OBJ with one uv per vertex, in file order (`renderer.assets.load_mesh_file` reads it back as
    written; OBJ's v = 0 is the image's bottom row, drstudio's the top)."""
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in np.asarray(vertices, np.float64)]
    lines += [f"vt {u:.9g} {1.0 - v:.9g}" for u, v in np.asarray(uvs, np.float64)]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in np.asarray(faces, np.int64) + 1]
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _same(value, file_value) -> bool:
    a, b = np.asarray(value), np.asarray(file_value)
    return a.size == b.size and np.array_equal(a.reshape(b.shape), b)


def save_scene_as(scene, values: dict, dest, render=None, faces: dict | None = None) -> list[Path]:
    """Write `scene` (loaded from `scene.path`) with `values` (dotted path -> array, the viewer's current
    values) and `render` (a RenderSettings, the viewer's current ones; None: the file's) to `dest` (.json),
    and the textures and meshes that changed beside it. Returns the files written. `faces` (mesh name ->
    (F, 3)): meshes whose optimized topology is their own (a remesh; `AppState.mesh_faces`), written with
    these faces and their vertices from `values` (no uvs: zeros; colors are not optimizable then).
    ValueError for a scene with radiance fields (their grids are saved by `drstudio optimize`)."""
    dest = Path(dest)
    if getattr(scene, "fields", None):
        raise ValueError("save scene as: scenes with radiance fields are saved as a params.npz by drstudio optimize")
    src = Path(scene.path)
    doc = _relink(json.loads(src.read_text()), src.parent, dest.parent)
    written: list[Path] = []
    if render is not None:
        doc.setdefault("render", {}).update(mode=render.mode, shadows=bool(render.shadows),
                                            mipmaps=bool(render.mipmaps))

    def value(group, owner, leaf):
        return values.get(param_path(group, owner, leaf))

    loaded = []

    def original():
        """The source file's scene as it loads (read once, when a mesh's arrays are compared)."""
        if not loaded:
            from drstudio.renderer.loading import load_scene

            loaded.append(load_scene(src))
        return loaded[0]

    for spec in doc.get("lights", []):
        for leaf in ("position", "direction", "color", "intensity"):
            v = value(Group.LIGHTS, spec["name"], leaf)
            if v is not None:
                spec[leaf] = _floats(v)[0] if leaf == "intensity" else _floats(v)
    for spec in doc.get("cameras", []):
        k, pose = value(Group.CAMERAS, spec["name"], "intrinsics"), value(Group.CAMERAS, spec["name"], "pose")
        if k is not None:
            spec.pop("fov_y", None)
            spec["fx"], spec["fy"], spec["cx"], spec["cy"] = _floats(k)
        if pose is not None:
            spec.pop("look_at", None)
            spec["matrix"] = cv.pose_to_matrix(np.asarray(pose, np.float64)).tolist()
            spec["convention"] = "opengl"
    for spec in doc.get("meshes", []):
        name = spec["name"]
        mesh = scene.meshes[name]
        t, r, s = (value(Group.MESHES, name, leaf) for leaf in ("translation", "rotation", "scale"))
        spec["transform"] = {"translation": _floats(mesh.translation if t is None else t),
                             "rotation": {"quaternion": _floats(mesh.rotation if r is None else r)},
                             "scale": _floats(mesh.scale if s is None else s)}
        arrays = {leaf: value(Group.MESHES, name, leaf) for leaf in ("vertices", "uvs", "colors")}
        # unchanged means as in the source file: a problem's scene may hold a start mesh of its own instead
        # (a shape optimization's init), which is not what the file says
        if all(a is None or _same(a, getattr(original().meshes[name], leaf)) for leaf, a in arrays.items()):
            continue
        verts, uvs, colors = (np.asarray(getattr(mesh, leaf) if a is None else a, np.float32).reshape(-1, n)
                              for (leaf, a), n in zip(arrays.items(), (3, 2, 3)))
        mesh_faces = mesh.faces if faces is None or name not in faces else np.asarray(faces[name], np.int32)
        if len(uvs) != len(verts) or len(colors) != len(verts):  # a topology of its own: no per-vertex uvs/colors
            uvs, colors = np.zeros((len(verts), 2), np.float32), np.ones((len(verts), 3), np.float32)
        has_colors = not np.allclose(colors, 1.0)
        path = dest.parent / f"{dest.stem}.{name}{'.glb' if has_colors else '.obj'}"
        if has_colors:
            write_mesh(path, verts, mesh_faces, vertex_colors=colors)
        else:
            write_obj(path, verts, mesh_faces, uvs)
        written.append(path)
        spec.pop("primitive", None)
        spec["file"] = path.name
    for spec in doc.get("materials", []):
        name = spec["name"]
        for leaf in ("albedo", "roughness", "metallic"):
            v = value(Group.MATERIALS, name, leaf)
            if v is None:
                continue
            v = np.asarray(v, np.float32)
            if v.shape[:2] == (1, 1):
                spec[leaf] = _floats(v) if leaf == "albedo" else _floats(v)[0]
            elif not np.array_equal(v, getattr(scene.materials[name], leaf)):
                path = dest.parent / f"{dest.stem}.{name}.{leaf}.png"
                write_image(path, v, srgb=leaf == "albedo")
                written.append(path)
                spec[leaf] = path.name
    # radiance (path mode): emission and environment, constants inline, images as float TIFFs
    radiance = [(spec, value(Group.MATERIALS, spec["name"], "emission"), "emission", "emission_scale")
                for spec in doc.get("materials", [])]
    radiance += [(spec, value(Group.LIGHTS, spec["name"], "radiance"), "radiance", "scale")
                 for spec in doc.get("lights", []) if spec.get("type") == "environment"]
    for spec, v, key, scale_key in radiance:
        if v is None:
            continue
        v = np.asarray(v, np.float32)
        spec.pop(scale_key, None)  # the value is the scaled radiance
        if v.shape[:2] == (1, 1):
            spec[key] = _floats(v)
        else:
            path = dest.parent / f"{dest.stem}.{spec['name']}.{key}.tif"
            atomic_write(path, lambda tmp, v=v: iio.imwrite(tmp, v, extension=".tif"))
            written.append(path)
            spec[key] = path.name
    text = json.dumps(doc, indent=1)
    atomic_write(dest, lambda tmp: Path(tmp).write_text(text))
    return [dest, *written]
