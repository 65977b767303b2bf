"""Copy a scene file and every file it references into a recording, with content hashes.

A referenced file is any string value of the scene JSON that names an existing file relative to the
scene's folder (textures, meshes, target images, a `transforms.json` and, recursively, the images it
names). Files inside the scene's folder keep their relative path; a file outside it (`../x.png`) is
copied to `_external/<hash>_<name>` and the copied JSON points there, so the copy is self-contained.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..images import atomic_write


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _is_inside(rel: str) -> bool:
    p = Path(rel)
    return not p.is_absolute() and ".." not in p.parts


def copy_scene(scene_file, dest_dir) -> dict:
    """Copy `scene_file` and its referenced files under `dest_dir`. Returns
    {"file": name of the copied scene file relative to dest_dir, "original": absolute original path,
     "sha256": hash of the original scene file, "files": {relative copied path: sha256}}."""
    scene_file, dest_dir = Path(scene_file).resolve(), Path(dest_dir)
    files: dict[str, str] = {}
    root = scene_file.parent
    _copy_json(scene_file, root, dest_dir, scene_file.name, files, depth=0)
    return {"file": scene_file.name, "original": str(scene_file), "sha256": sha256(scene_file), "files": files}


def _copy_json(src: Path, root: Path, dest_root: Path, rel: str, files: dict, depth: int) -> None:
    try:
        doc = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if doc is None or depth > 4:  # not JSON after all: copy it verbatim
        _copy_file(src, dest_root / rel, rel, files)
        return
    base = src.parent
    changed = False

    def visit(x):
        nonlocal changed
        if isinstance(x, dict):
            return {k: visit(v) for k, v in x.items()}
        if isinstance(x, list):
            return [visit(v) for v in x]
        if isinstance(x, str) and "." in x and len(x) < 4096:
            ref = base / x
            try:
                is_file = ref.is_file()
            except OSError:
                is_file = False
            if is_file:
                target_rel = _relative(ref.resolve(), root)
                if target_rel is None:
                    digest = sha256(ref)[:12]
                    target_rel = f"_external/{digest}_{ref.name}"
                    new = str(Path(_relative_to(dest_root / target_rel, (dest_root / rel).parent)))
                    if new != x:
                        changed = True
                    x = new
                if target_rel not in files:
                    if ref.suffix.lower() == ".json":
                        _copy_json(ref, root, dest_root, target_rel, files, depth + 1)
                    else:
                        _copy_file(ref, dest_root / target_rel, target_rel, files)
        return x

    new_doc = visit(doc)
    dest = dest_root / rel
    if changed:
        text = json.dumps(new_doc, indent=2) + "\n"
        atomic_write(dest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        files[rel] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    else:
        _copy_file(src, dest, rel, files)


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _relative_to(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def _copy_file(src: Path, dest: Path, rel: str, files: dict) -> None:
    atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))
    files[rel] = sha256(dest)
