"""Image files in and out: imageio reads, values in [0, 1]; writes are atomic (temporary file in the
same folder, then rename), so an interrupted run never leaves a half-written image."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from .conventions import linear_to_srgb
from .errors import SceneError


def read_image(path, channels: int = 3) -> np.ndarray:
    """(H, W, channels) float32 in [0, 1] as stored in the file (no color decoding).
    Raises SceneError naming the file when it is missing or not an image."""
    path = Path(path)
    try:
        img = iio.imread(path)
    except FileNotFoundError:
        raise SceneError(str(path), "", "file not found") from None
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


def write_image(path, linear: np.ndarray, srgb: bool = True) -> Path:
    """Write an (H, W, C) linear image as 8-bit PNG/JPEG (sRGB-encoded unless srgb=False)."""
    img = linear_to_srgb(linear) if srgb else np.clip(linear, 0, 1)
    data = np.round(np.asarray(img) * 255).astype(np.uint8)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    return atomic_write(path, lambda tmp: iio.imwrite(tmp, data, extension=Path(path).suffix))
