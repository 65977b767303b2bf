"""Reading the files a scene references: images (pillow/imageio) and meshes (trimesh).

Every failure is a `SceneError` naming the scene file (`file`), the field that referenced the asset
(`field`) and the asset's path.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import charset_normalizer
import numpy as np
import trimesh
from PIL import Image, UnidentifiedImageError

from . import conventions as cv
from . import images, memory
from .errors import SceneError

MAX_IMAGE_SIZE = 4096  # texels per side of a texture, background or target image
# A float image (TIFF, ...) is used as stored, so its values must be in the range of what it holds;
# 8- and 16-bit images are in [0, 1] by construction. Roughness below 0.02 is raised to 0.02 on load.
TEXTURE_RANGES = {"albedo": (0.0, 1.0), "roughness": (0.0, 1.0), "metallic": (0.0, 1.0), "background": (0.0, 1.0)}


def _check_file(path: Path, what: str, file: str, field: str) -> None:
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as e:  # a name longer than the file system allows (ENAMETOOLONG), a loop of links
        shown = f"{str(path)[:80]}... ({len(str(path))} characters)" if len(str(path)) > 100 else str(path)
        raise SceneError(file, field, f"{what} '{shown}' cannot be opened: {e.strerror or e}") from None
    if not exists:
        raise SceneError(file, field, f"{what} '{path}' not found")
    if not is_file:
        raise SceneError(file, field, f"{what} '{path}' is not a file")
    if not os.access(path, os.R_OK):
        raise SceneError(file, field, f"{what} '{path}' is not readable (permission denied)")


def image_size(path, file: str = "", field: str = "", max_size: int = MAX_IMAGE_SIZE) -> tuple[int, int]:
    """(width, height) from the image header, checked against `max_size`, without decoding pixels."""
    path = Path(path)
    _check_file(path, "image", file, field)
    limit = f"the limit {max_size}x{max_size} ({max_size * max_size:,} pixels)"
    try:
        with warnings.catch_warnings():
            # pillow warns above 89M pixels and refuses above 179M (a decompression bomb): our limit is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        raise SceneError(file, field, f"image '{path}' is larger than {limit}: its header declares more than "
                                      f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels (refused before decoding)") from None
    except UnidentifiedImageError:
        raise SceneError(file, field, f"'{path}' is not an image (unrecognized format)") from None
    except OSError as e:
        raise SceneError(file, field, f"image '{path}' cannot be read: {e}") from None
    if width > max_size or height > max_size:
        raise SceneError(file, field, f"image '{path}' is {width}x{height}, larger than {limit}")
    return width, height


def read_image(path, *, srgb: bool, channels: int, file: str = "", field: str = "",
               max_size: int = MAX_IMAGE_SIZE, kind: str = "") -> np.ndarray:
    """An image as (H, W, channels) float32 (`renderer.images.read_image`: 8/16-bit to [0, 1], gray
    repeated, alpha dropped), decoded from sRGB to linear when `srgb`; size-checked before decoding.
    Its values must lie in the range of `kind` (`TEXTURE_RANGES`; [0, 1] when not named)."""
    path = Path(path)
    image_size(path, file, field, max_size)
    try:
        a = images.read_image(path, channels)
    except SceneError as e:
        raise SceneError(file, field, f"image '{path}': {e.message}") from None
    if not np.isfinite(a).all():
        raise SceneError(file, field, f"image '{path}' contains NaN or infinite values")
    lo, hi = TEXTURE_RANGES.get(kind, (0.0, 1.0))
    if a.size and (a.min() < lo or a.max() > hi):
        what = f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} image" if kind else "an image"
        raise SceneError(file, field, f"image '{path}' holds values in [{a.min():g}, {a.max():g}]; {what} must hold "
                                      f"values in [{lo:g}, {hi:g}] (a float image is used as stored)")
    return (cv.srgb_to_linear(a) if srgb else a).astype(np.float32)


HDR_EXTENSIONS = (".hdr", ".exr")  # Radiance RGBE and OpenEXR: read through imageio's opencv plugin


def _hdr_header_size(path: Path) -> tuple[int, int]:
    """(width, height) from a Radiance .hdr header (text lines up to a blank one, then "-Y H +X W")
    without decoding the pixels; ValueError when the header is not one."""
    with open(path, "rb") as f:
        head = f.read(65536)
    if not head.startswith((b"#?RADIANCE", b"#?RGBE")):
        raise ValueError("not a Radiance HDR file (no #?RADIANCE signature)")
    lines = head.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip() and i + 1 < len(lines):
            parts = lines[i + 1].split()
            if len(parts) == 4 and parts[0] in (b"-Y", b"+Y") and parts[2] in (b"+X", b"-X"):
                return int(parts[3]), int(parts[1])
            break
    raise ValueError("no resolution line (e.g. '-Y 512 +X 1024') after the header")


def _exr_header_size(path: Path) -> tuple[int, int]:
    """(width, height) from an OpenEXR header's dataWindow attribute without decoding the pixels;
    ValueError when the header is not one (OpenEXR file layout: magic, version, then attributes as
    name\\0 type\\0 int32 size, value, up to an empty name)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    if head[:4] != b"\x76\x2f\x31\x01":
        raise ValueError("not an OpenEXR file (no magic number)")
    at = 8
    while at < len(head) and head[at] != 0:
        name_end = head.index(b"\0", at)
        type_end = head.index(b"\0", name_end + 1)
        size = int.from_bytes(head[type_end + 1:type_end + 5], "little", signed=True)
        value = head[type_end + 5:type_end + 5 + size]
        if size < 0 or len(value) < size:
            break
        if head[at:name_end] == b"dataWindow" and size == 16:
            x0, y0, x1, y1 = np.frombuffer(value, "<i4")
            if x1 < x0 or y1 < y0:
                raise ValueError(f"an empty dataWindow ({x0}, {y0}, {x1}, {y1})")
            return int(x1 - x0 + 1), int(y1 - y0 + 1)
        at = type_end + 5 + size
    raise ValueError("no dataWindow attribute in its header")


def _read_hdr(path: Path) -> np.ndarray:
    """An .hdr / .exr image as (H, W, 3) float32 RGB through imageio's opencv plugin (OpenCV reads
    OpenEXR only when OPENCV_IO_ENABLE_OPENEXR is set before it is first imported)."""
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    import cv2
    import imageio.v3 as iio

    a = iio.imread(path, plugin="opencv", flags=cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
    return np.asarray(a, np.float32)
# an environment or emission image while optimizing: its texels, their gradient, two Adam moments, the
# sampling tables and the device copy
RADIANCE_BYTES_PER_TEXEL = 3 * 4 * 6


def read_radiance_image(path, file: str = "", field: str = "", max_size: int = MAX_IMAGE_SIZE) -> np.ndarray:
    """A radiance image (environment or emission) as (H, W, 3) float32 linear RGB >= 0, read through imageio:
    a float file (Radiance .hdr, OpenEXR .exr, a 32-bit float TIFF) as stored, an 8/16-bit file (PNG) decoded
    from sRGB to linear.
    Its header's size is checked against `max_size` and against the memory at hand (`renderer.memory`)
    before decoding; every failure is a SceneError naming `file` and `field`."""
    import imageio.v3 as iio

    path = Path(path)
    _check_file(path, "image", file, field)
    hdr = path.suffix.lower() in HDR_EXTENSIONS
    try:
        if hdr:  # the size from the header: a decompression bomb is refused before decoding
            width, height = (_hdr_header_size if path.suffix.lower() == ".hdr" else _exr_header_size)(path)
            shape, dtype = (height, width, 3), np.dtype(np.float32)
        else:
            props = iio.improps(path)
            shape, dtype = tuple(props.shape), props.dtype
    except Exception as exc:  # imageio raises many types for non-images
        detail = f": {exc}" if hdr else ""
        raise SceneError(file, field, f"'{path}' is not a readable image ({exc.__class__.__name__}{detail})") from None
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] > 4):
        raise SceneError(file, field, f"image '{path}': expected a 2-D image, got an array of shape {shape}")
    height, width = shape[:2]
    if width > max_size or height > max_size:
        raise SceneError(file, field, f"image '{path}' is {width}x{height}, larger than the limit "
                                      f"{max_size}x{max_size}")
    try:
        memory.require(width * height * RADIANCE_BYTES_PER_TEXEL, f"the {width}x{height} radiance image '{path}'")
    except memory.MemoryBudgetError as exc:
        raise SceneError(file, field, str(exc)) from None
    try:
        if hdr:
            a = _read_hdr(path)
            if a.shape != shape:
                raise SceneError(file, field, f"decoded as {a.shape}, its header says {shape}")
        else:
            a = images.read_image(path, 3)
    except SceneError as e:
        raise SceneError(file, field, f"image '{path}': {e.message}") from None
    except Exception as exc:  # OpenCV: a truncated or corrupt file
        raise SceneError(file, field, f"image '{path}' cannot be decoded ({exc.__class__.__name__})") from None
    if not np.isfinite(a).all():
        raise SceneError(file, field, f"image '{path}' contains NaN or infinite values")
    if a.size and a.min() < 0:
        raise SceneError(file, field, f"image '{path}' holds negative values (down to {a.min():g}); radiance "
                                      "must be >= 0")
    if np.issubdtype(dtype, np.integer):
        a = cv.srgb_to_linear(a)
    return np.ascontiguousarray(a, dtype=np.float32)


def load_mesh_file(path, file: str = "", field: str = "") -> tuple[np.ndarray, ...]:
    """(vertices (V, 3) float32, faces (F, 3) int32, uvs (V, 2) float32, colors (V, 3) float32) of an
    OBJ/PLY/glTF/GLB file, vertices in file order (trimesh `process=False`). Polygons are triangulated
    by trimesh; a multi-part file (glTF scene) is concatenated with its node transforms. UVs get v = 0
    at the image top (files use v = 0 at the bottom); zeros when absent. Vertex colors are decoded
    from sRGB to linear; ones when absent. Materials inside the file are ignored."""
    path = Path(path)
    _check_file(path, "mesh file", file, field)

    def error(msg: str) -> SceneError:
        return SceneError(file, field, f"mesh file '{path}' {msg}")

    try:
        if path.suffix.lower() == ".obj":
            text = _strict_obj_text(path.read_bytes(), error)
            loaded = trimesh.load(io.BytesIO(text.encode("utf-8")), file_type="obj", process=False,
                                  resolver=trimesh.resolvers.FilePathResolver(path))
        else:
            loaded = trimesh.load(str(path), process=False)
    except SceneError:
        raise
    except Exception as e:  # trimesh raises many types for malformed files
        raise error(f"cannot be read: {type(e).__name__}: {e}") from None
    if isinstance(loaded, trimesh.Scene):
        if not any(isinstance(g, trimesh.Trimesh) and len(g.faces) for g in loaded.geometry.values()):
            raise error("contains no triangles")
        loaded = loaded.to_mesh()
    if not isinstance(loaded, trimesh.Trimesh):
        raise error(f"is not a triangle mesh (it holds a {type(loaded).__name__})")
    vertices, faces = np.asarray(loaded.vertices, np.float64), np.asarray(loaded.faces)
    if len(faces) == 0 or len(vertices) == 0:
        raise error("contains no triangles")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise error(f"has faces of shape {faces.shape}, expected triangles (F, 3)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise error(f"has faces indexing vertices outside 0..{len(vertices) - 1}")
    if not np.isfinite(vertices).all():
        raise error("has NaN or infinite vertex coordinates")
    visual = loaded.visual
    uvs = np.zeros((len(vertices), 2))
    if getattr(visual, "kind", None) == "texture" and getattr(visual, "uv", None) is not None:
        uv = np.asarray(visual.uv, np.float64)
        if uv.shape != (len(vertices), 2) or not np.isfinite(uv).all():
            raise error(f"has texture coordinates of shape {uv.shape} (or non-finite), "
                        f"expected ({len(vertices)}, 2)")
        uvs = np.c_[uv[:, 0], 1.0 - uv[:, 1]]
    colors = np.ones((len(vertices), 3))
    if getattr(visual, "kind", None) == "vertex":
        colors = cv.srgb_to_linear(np.asarray(visual.vertex_colors, np.float64)[:, :3] / 255.0)
    f32 = np.float32
    return vertices.astype(f32), faces.astype(np.int32), uvs.astype(f32), colors.astype(f32)


def _decode_text(data: bytes) -> str | None:
    """UTF-8, else the encoding charset-normalizer finds most likely (an exporter's latin-1 or cp1252
    comment or material name), else None."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        best = charset_normalizer.from_bytes(data).best()
        return None if best is None else str(best)


# the OBJ statements that reference elements by index: tag -> (leading numbers that are not indices (a free-form
# curve's or surface's parameter range), the element each slot of a reference names, the fewest references)
OBJ_INDEXED = {"f": (0, ("v", "vt", "vn"), 3), "fo": (0, ("v", "vt", "vn"), 3), "l": (0, ("v", "vt"), 2),
               "p": (0, ("v",), 1), "curv": (2, ("v",), 2), "curv2": (0, ("vp",), 2),
               "surf": (4, ("v", "vt", "vn"), 1), "sp": (0, ("vp",), 1)}
OBJ_STATEMENT = {"f": "a face", "fo": "a face", "l": "a line", "p": "a point", "curv": "a curve", "curv2": "a curve",
                 "surf": "a surface", "sp": "a special point"}


def _strict_obj_text(data: bytes, error) -> str:
    """The OBJ text with every element index checked, and face indices written as absolute 1-based indices.

    OBJ indices are 1-based; a negative index counts back from the last element defined so far (-1: the
    previous vertex). trimesh reads `f 0 1 2` as a face on other vertices and resolves negative indices
    against the whole file, so each reference of every index-bearing statement (`OBJ_INDEXED`: faces v,
    v/vt, v//vn, v/vt/vn; lines `l`, points `p`, free-form `curv`, `curv2`, `surf`, `sp`) is checked here:
    0, an index past the file's elements or a negative one before the first, or not an integer, is an error
    naming the line. Only faces make triangles (trimesh ignores the others)."""
    text = _decode_text(data)
    if text is None:
        raise error("is not text in any encoding charset-normalizer recognizes (an OBJ file is text)")
    lines = text.splitlines()
    totals = {"v": 0, "vt": 0, "vn": 0, "vp": 0}
    for line in lines:
        tag = line.split(maxsplit=1)[0] if line.strip() else ""
        if tag in totals:
            totals[tag] += 1
    seen = dict.fromkeys(totals, 0)
    out = []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0] not in OBJ_INDEXED:
            if parts and parts[0] in seen:
                seen[parts[0]] += 1
            out.append(line)
            continue
        tag, (skip, kinds, least) = parts[0], OBJ_INDEXED[parts[0]]
        what = OBJ_STATEMENT[tag]
        noun = what.split()[-1]
        if len(parts) < 1 + skip + least:
            raise error(f"line {number}: {what} needs at least {least} vert{'ices' if least != 1 else 'ex'}, got "
                        f"'{line.strip()[:80]}'")
        refs = []
        for ref in parts[1 + skip:]:
            slots = ref.split("/")
            if len(slots) > len(kinds) or not slots[0]:
                forms = {3: "v, v/vt, v//vn or v/vt/vn", 2: "v or v/vt", 1: kinds[0]}[len(kinds)]
                raise error(f"line {number}: '{ref[:40]}' is not {'an' if noun[0] in 'aeiou' else 'a'} {noun} "
                            f"vertex ({forms})")
            fixed = []
            for kind, slot in zip(kinds, slots):
                if not slot:
                    fixed.append("")
                    continue
                try:
                    index = int(slot)
                except ValueError:
                    raise error(f"line {number}: {noun} index '{slot[:40]}' is not an integer") from None
                if index == 0:
                    raise error(f"line {number}: {noun} index 0 is invalid (OBJ indices start at 1; negative "
                                f"ones count back from the last {kind})")
                absolute = index if index > 0 else seen[kind] + 1 + index
                if not 1 <= absolute <= totals[kind]:
                    raise error(f"line {number}: {noun} index {index} is out of range: the file has {totals[kind]} "
                                f"'{kind}' element{'s' * (totals[kind] != 1)}"
                                + (f", {seen[kind]} before this line" if index < 0 else ""))
                fixed.append(str(absolute))
            refs.append("/".join(fixed))
        out.append("f " + " ".join(refs) if tag in ("f", "fo") else line)
    return "\n".join(out) + "\n"
