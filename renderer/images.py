"""Image files in and out: imageio reads, values in [0, 1]; writes are atomic (temporary file in the
same folder, then rename), so an interrupted run never leaves a half-written image."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageFile

from .conventions import linear_to_srgb
from .errors import SceneError

# A truncated file is an error, never an image padded with zeros (pillow's default; stated here because a
# library that sets it True for its own reasons would change what every read below returns).
ImageFile.LOAD_TRUNCATED_IMAGES = False


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by color type: gray, RGB, palette, gray + alpha, RGBA


def _png_data_problem(path: Path) -> str:
    """Why the pixel data of a PNG does not fill the image its header declares ("" when it does). pillow
    reads a PNG whose compressed stream ends early (header 4000x4000, 10 rows of data) as the rows
    present and zeros after them, without an error; this counts the decompressed bytes instead."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return ""  # not a PNG: the decoder says what is wrong
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if color not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        return ""
    bits = _PNG_CHANNELS[color] * depth
    passes = ([(width, height)] if not interlace else  # Adam7: (columns, rows) of each of the 7 passes
              [(max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy))
               for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                                      (1, 0, 2, 2), (0, 1, 1, 2))])
    expected = sum(h * (1 + (w * bits + 7) // 8) for w, h in passes if w and h)
    inflate, got, pos = zlib.decompressobj(), 0, 8
    try:
        while pos + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            if kind == b"IDAT":
                chunk = data[pos + 8:pos + 8 + length]
                while chunk and got <= expected:
                    got += len(inflate.decompress(chunk, 1 << 20))
                    chunk = inflate.unconsumed_tail
            elif kind == b"IEND":
                break
            pos += 12 + length
    except zlib.error as exc:
        return f"its pixel data is damaged ({exc})"
    if got >= expected:
        return ""
    row_bytes = 1 + (width * bits + 7) // 8
    rows = f"{got // row_bytes} of its {height} rows" if not interlace else f"{got} of {expected} bytes"
    return f"its pixel data is truncated: the header says {width}x{height}, the data holds {rows}"


def read_image(path, channels: int = 3) -> np.ndarray:
    """(H, W, channels) float32 in [0, 1] as stored in the file (no color decoding).
    Raises SceneError naming the file when it is missing, not an image, or truncated."""
    path = Path(path)
    try:
        problem = _png_data_problem(path)
    except OSError:
        problem = ""  # unreadable: imread below says why
    if problem:
        raise SceneError(str(path), "", f"image data is truncated or damaged: {problem}")
    try:
        img = iio.imread(path)
    except FileNotFoundError:
        raise SceneError(str(path), "", "file not found") from None
    except Image.DecompressionBombError as exc:
        raise SceneError(str(path), "", f"refused before decoding: {exc}") from None
    except OSError as exc:  # pillow: "image file is truncated (12 bytes not processed)", a broken stream
        raise SceneError(str(path), "", f"image data is truncated or damaged ({exc})") from None
    except Exception as exc:  # imageio raises many types for non-images
        raise SceneError(str(path), "", f"not a readable image ({exc.__class__.__name__})") from None
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise SceneError(str(path), "", f"expected a 2-D image, got an array of shape {img.shape}")
    scale = np.iinfo(img.dtype).max if np.issubdtype(img.dtype, np.integer) else 1.0
    img = img.astype(np.float32) / np.float32(scale)
    if img.shape[2] >= channels:
        return np.ascontiguousarray(img[..., :channels])
    return np.ascontiguousarray(np.repeat(img[..., :1], channels, axis=2))


def atomic_write(path, write_fn) -> Path:
    """Call write_fn(temporary_path) and rename the result to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_image_bytes(path, data: np.ndarray) -> Path:
    """Write an (H, W), (H, W, 3) or (H, W, 4) uint8 image atomically, its format by the suffix (Pillow).
    A write that fails (a full disk) raises its OSError once and leaves no file (imageio's writer would
    report the same failure a second time from a finalizer)."""
    from PIL import Image

    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"path: expected a .png, .jpg, .bmp or .tif file, got {Path(path).name!r}")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            Image.fromarray(np.ascontiguousarray(data)).save(f, format=fmt)

    return atomic_write(path, write)


def write_image(path, linear: np.ndarray, srgb: bool = True) -> Path:
    """Write an (H, W, C) linear image as 8-bit PNG/JPEG (sRGB-encoded unless srgb=False)."""
    img = linear_to_srgb(linear) if srgb else np.clip(linear, 0, 1)
    data = np.round(np.asarray(img) * 255).astype(np.uint8)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    return write_image_bytes(path, data)
