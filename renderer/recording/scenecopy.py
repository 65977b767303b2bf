"""Copy a scene file and every file it references into a recording, with content hashes.

The referenced files are exactly the files loading the scene reads: the values of the scene schema's
file-reference fields (`scene_schema.FileRef`: mesh files, texture and background images, file inits,
target images, a `transforms.json` and the images its frames name, a dataset recipe's scene and its own
references). Other strings are not references, even when they happen to name a file (a `description`).
Files inside the scene's folder keep their relative path; a file outside it (`../x.png`) is copied to
`_external/<hash>_<name>` and the copied JSON points there, so the copy is self-contained.

`referenced_files(scene_file, root)` lists the same references of a scene file that is already a copy;
the recording reader checks with it that every one resolves inside the recording and has a hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..errors import SceneError, field_path
from ..images import atomic_write
from ..transforms_json import frame_image_path

MAX_DEPTH = 4  # a dataset recipe's scene may have a recipe in turn; deeper chains are not followed


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def _scene_references(path: Path) -> tuple[object, list[tuple[tuple, str, str]]]:
    """(the parsed JSON, [(JSON path parts, file name as written, FileRef kind)]) of a scene file; no
    references when it is not a valid scene (loading it fails before reading any file)."""
    from ..loading import read_json
    from ..scene_schema import file_references, validate_scene

    try:
        doc = read_json(path)
        return doc, file_references(validate_scene(doc, str(path)))
    except SceneError:
        return _read_json(path), []


def _transforms_references(doc) -> list[tuple[tuple, str, str]]:
    """The images a transforms.json names (its frames' `file_path`), as (parts, name, "image")."""
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, list):
        return []
    return [(("frames", i, "file_path"), fr["file_path"], "image") for i, fr in enumerate(frames)
            if isinstance(fr, dict) and isinstance(fr.get("file_path"), str) and fr["file_path"].strip()]


def _resolve(base: Path, name: str, kind: str) -> Path:
    """The file a reference names (a frame's extension-less `file_path` means .png)."""
    return frame_image_path(base, name) if kind == "frame" else base / name


def _references(path: Path, kind: str) -> tuple[object, list[tuple[tuple, str, str]]]:
    if kind == "scene":
        return _scene_references(path)
    doc = _read_json(path)
    return doc, [(p, n, "frame") for p, n, _ in _transforms_references(doc)]


def referenced_files(scene_file, root) -> list[tuple[str, Path]]:
    """(where, path) of every file the scene file `scene_file` (a copy inside the folder `root`) names,
    following transforms.json files and dataset scenes that are inside `root` (and never opening one
    outside it). `where` is "FILE: FIELD" with FILE relative to `root`; `path` is lexical (not resolved)."""
    root = Path(root)
    out: list[tuple[str, Path]] = []
    todo = [(Path(scene_file), "scene", 0)]
    seen = set()
    while todo:
        path, kind, depth = todo.pop()
        if path in seen or depth > MAX_DEPTH:
            continue
        seen.add(path)
        _, refs = _references(path, kind)
        rel = os.path.relpath(path, root)
        for parts, name, ref_kind in refs:
            target = Path(os.path.normpath(_resolve(path.parent, name, ref_kind)))
            out.append((f"{rel}: {field_path(parts)}", target))
            if ref_kind in ("scene", "transforms") and is_inside(target, root) and target.is_file():
                todo.append((target, ref_kind, depth + 1))
    return out


def is_inside(path, root) -> bool:
    """Whether `path` stays inside the folder `root`, both as written and with symbolic links resolved."""
    path, root = Path(path), Path(root)
    try:
        lexical = os.path.relpath(os.path.normpath(path), os.path.normpath(root))
    except ValueError:  # another drive (Windows)
        return False
    if lexical == ".." or lexical.startswith(".." + os.sep) or os.path.isabs(lexical):
        return False
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):  # outside, or a symlink loop
        return False
    return True


def copy_scene(scene_file, dest_dir, downscale: int = 1) -> dict:
    """Copy `scene_file` and its referenced files under `dest_dir`. Returns
    {"file": name of the copied scene file relative to dest_dir, "original": absolute original path,
     "sha256": hash of the original scene file, "files": {relative copied path: sha256}}.
    `downscale` > 1 (a session trained at 1/N: `optimize.targets.downscale`): the `images_N/` files of a
    dataset's frames are copied too, where they lie inside the scene's folder (what the session read)."""
    scene_file, dest_dir = Path(scene_file).resolve(), Path(dest_dir)
    files: dict[str, str] = {}
    _copy_json(scene_file, "scene", scene_file.parent, dest_dir, scene_file.name, files, depth=0,
               downscale=downscale)
    return {"file": scene_file.name, "original": str(scene_file), "sha256": sha256(scene_file), "files": files}


def _copy_json(src: Path, kind: str, root: Path, dest_root: Path, rel: str, files: dict, depth: int,
               downscale: int = 1) -> None:
    """Copy a scene (`kind` "scene") or transforms.json ("transforms") and the files it references."""
    doc, refs = _references(src, kind) if depth <= MAX_DEPTH else (None, [])
    changed = False
    for parts, name, ref_kind in refs:
        ref = _resolve(src.parent, name, ref_kind)
        try:
            present = ref.is_file()
        except OSError:
            present = False
        if not present:
            continue  # loading would fail on it (or, for a dataset's scene, not need it)
        target_rel = _relative(ref.resolve(), root)
        if target_rel is None:
            target_rel = f"_external/{sha256(ref)[:12]}_{ref.name}"
        new = Path(os.path.relpath(dest_root / target_rel, (dest_root / rel).parent)).as_posix()
        if os.path.normpath(new) != os.path.normpath(name):
            if ref_kind == "frame" and not Path(name).suffix and new.endswith(".png"):
                new = new[:-4]  # keep the frame's extension-less form
            if os.path.normpath(new) != os.path.normpath(name):
                _set(doc, parts, new)
                changed = True
        if target_rel not in files:
            if ref_kind in ("scene", "transforms"):
                _copy_json(ref, ref_kind, root, dest_root, target_rel, files, depth + 1, downscale)
            else:
                _copy_file(ref, dest_root / target_rel, target_rel, files)
        if ref_kind == "frame" and downscale > 1 and not target_rel.startswith("_external/"):
            from ..captures import _downscaled

            small = _downscaled(ref, ref.parent, downscale)
            small_rel = _relative(small.resolve(), root) if small is not None else None
            if small_rel is not None and small_rel not in files:
                _copy_file(small, dest_root / small_rel, small_rel, files)
    dest = dest_root / rel
    if changed:
        text = json.dumps(doc, indent=2) + "\n"
        atomic_write(dest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        files[rel] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    else:
        _copy_file(src, dest, rel, files)


def _set(doc, parts: tuple, value) -> None:
    for part in parts[:-1]:
        doc = doc[part]
    doc[parts[-1]] = value


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _copy_file(src: Path, dest: Path, rel: str, files: dict) -> None:
    atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))
    files[rel] = sha256(dest)
