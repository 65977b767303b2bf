"""Real captures as users have them: nerfstudio / instant-ngp `transforms.json` and COLMAP sparse models
(`cameras.bin|txt`, `images.bin|txt`), read into a list of calibrated frames.

    capture = read_capture("data/garden")            # a transforms.json, its folder, or a COLMAP model/project
    capture = normalize(capture)                     # optional: +Y up, centered, cameras in [-1, 1]^3
    box = field_box(capture)                         # (2, 3) field bounds in the capture's world
    for frame, image in capture.images(capture.train, progress=print):   # lazily, one image at a time
        ...                                          # image: (H, W, 3) float32 linear RGB, undistorted

Conventions (`renderer.conventions` states them once; this module only converts into them):
- A frame's `pose` is camera-to-world, OpenGL (+Y up, the camera looks down -Z), 7 floats [p, q(x, y, z, w)].
  `transforms.json` stores OpenGL camera-to-world matrices already (both nerfstudio and instant-ngp);
  COLMAP stores world-to-camera (qvec in (w, x, y, z) order, tvec) in the OpenCV convention: inverted,
  then `opencv_to_opengl`.
- `intrinsics` are pinhole [fx, fy, cx, cy] in pixels of the image as loaded (after `downscale`), with the
  top-left pixel's center at (0.5, 0.5) -- COLMAP's and nerfstudio's convention too, so cx, cy are used as
  stored. Downscaling multiplies fx and cx by new_width / width, fy and cy by new_height / height.
- Distortion is never ignored: a frame with a distortion model (`Distortion`) is undistorted when it is
  loaded, onto a pinhole image of the same size and the same fx, fy, cx, cy (so `intrinsics` describe the
  loaded image exactly). Output pixels whose source falls outside the file are 0; `valid_mask` says which.
  Supported: COLMAP SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV, OPENCV_FISHEYE,
  SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE; transforms.json `camera_model` OPENCV (k1..k4 as nerfstudio's
  polynomial 1 + k1 r^2 + k2 r^4 + k3 r^6 + k4 r^8, p1, p2), OPENCV_FISHEYE (k1..k4) and instant-ngp's
  `is_fisheye`. A fisheye image is resampled to a pinhole one: what lies beyond the pinhole's field of
  view is cut off.
- Images are sRGB files, linear RGB in memory (`srgb_to_linear`); an alpha channel is dropped unless
  `channels=4` is asked for. Downscaling on load is an area (box) filter in linear RGB.
- Frame order: sorted by image path (nerfstudio's order), `index` is the position in that order.
- Splits: per-frame `"split"` ("train", "test", "val" = test), or nerfstudio's `train_filenames` /
  `val_filenames` / `test_filenames`; without either, every 8th frame is held out: index i % 8 == 0 is
  "test" (nerfstudio's `eval_interval` convention, also LLFF's and mip-NeRF 360's; `test_every=None`: none
  held out). The split is decided on every listed frame before missing images are skipped, so a missing
  file does not shift it.
- Missing images are skipped with one `CaptureWarning` naming the first few; `strict=True` raises a
  SceneError naming the file and the field instead. Every other bad input is a SceneError too.
- `downscale=N` reads `images_N/<name>` beside the images folder when it holds the file (nerfstudio's
  `ns-process-data` layout); otherwise the full image is resized on load to round(size / N).

- `normalize` (nerfstudio's orient/center/scale, +Y up) and `transformed` return new captures whose
  `transform` maps the file's world to theirs; `field_box` gives the field bounds; `export_transforms`
  writes a capture as a transforms.json dataset that `load_transforms` reads.

Everything is NumPy float64 except the images (float32). docs/datasets.md "Real captures" is the user's page.
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import conventions as cv
from .errors import SceneError
from .images import atomic_write, read_image, write_image, write_image_bytes

TEST_EVERY = 8  # frame i is held out when i % TEST_EVERY == 0 (nerfstudio "interval" split)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")  # tried for a file_path without one
NGP_SCALE, NGP_OFFSET = 0.33, (0.5, 0.5, 0.5)  # instant-ngp's defaults for `scale` and `offset`
MISSING_LISTED = 5  # missing images named in the warning


class CaptureWarning(UserWarning):
    """A capture was read with frames left out (their images are missing)."""


# ---- distortion ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Distortion:
    """A lens distortion in normalized camera coordinates (x, y) = (X / Z, Y / Z), OpenCV camera
    (x right, y down). Pixel = (fx * x_d + cx, fy * y_d + cy) of the distorted (x_d, y_d).

    - "opencv" (radial-tangential): r^2 = x^2 + y^2,
      radial = (1 + k1 r^2 + k2 r^4 + k3 r^6 + k4 r^8) / (1 + d1 r^2 + d2 r^4 + d3 r^6),
      x_d = x radial + 2 p1 x y + p2 (r^2 + 2 x^2),  y_d = y radial + p1 (r^2 + 2 y^2) + 2 p2 x y.
      COLMAP FULL_OPENCV's k4..k6 are the denominator `d`; its k3 is k[2].
    - "fisheye" (OpenCV fisheye, equidistant): theta = atan(r),
      theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8), (x_d, y_d) = theta_d / r (x, y).
    """

    model: str
    k: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    p: tuple[float, float] = (0.0, 0.0)
    d: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def is_identity(self) -> bool:
        return not any(self.k) and not any(self.p) and not any(self.d)

    def distort(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Distorted (x_d, y_d) of undistorted normalized coordinates (arrays of one shape)."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if self.model == "fisheye":
            r = np.hypot(x, y)
            theta = np.arctan(r)
            t2 = theta * theta
            k1, k2, k3, k4 = self.k
            theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
            ratio = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
            return x * ratio, y * ratio
        radial, _ = self._radial(x * x + y * y)
        p1, p2 = self.p
        r2 = x * x + y * y
        return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)

    def _radial(self, r2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(radial factor, its derivative with respect to r^2) of the "opencv" model."""
        k1, k2, k3, k4 = self.k
        d1, d2, d3 = self.d
        num = 1 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
        dnum = k1 + r2 * (2 * k2 + r2 * (3 * k3 + r2 * 4 * k4))
        den = 1 + r2 * (d1 + r2 * (d2 + r2 * d3))
        dden = d1 + r2 * (2 * d2 + r2 * 3 * d3)
        return num / den, (dnum * den - num * dden) / (den * den)

    def undistort(self, xd, yd, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Undistorted (x, y) of distorted normalized coordinates: Newton's method on
        distort(x, y) = (x_d, y_d) from (x_d, y_d) (2x2 Jacobian for "opencv", on theta for "fisheye").
        Converges to ~1e-12 for the distortions of real lenses inside their image; points where the model
        folds over (no inverse) come back as NaN."""
        xd, yd = np.asarray(xd, np.float64), np.asarray(yd, np.float64)
        if self.model == "fisheye":
            theta_d = np.hypot(xd, yd)
            theta = theta_d.copy()
            k1, k2, k3, k4 = self.k
            for _ in range(iterations):
                t2 = theta * theta
                g = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
                dg = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
                theta = theta - g / dg
            ok = (theta >= 0) & (theta < np.pi / 2)
            scale = np.where(theta_d > 1e-12, np.tan(np.where(ok, theta, 0.0)) / np.maximum(theta_d, 1e-12), 1.0)
            scale = np.where(ok, scale, np.nan)
            return xd * scale, yd * scale
        x, y = xd.copy(), yd.copy()
        p1, p2 = self.p
        for _ in range(iterations):
            r2 = x * x + y * y
            radial, dradial = self._radial(r2)
            fx_, fy_ = self.distort(x, y)
            ex, ey = fx_ - xd, fy_ - yd
            # Jacobian of distort at (x, y)
            j11 = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x
            j12 = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
            j21 = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
            j22 = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x
            det = j11 * j22 - j12 * j21
            det = np.where(np.abs(det) < 1e-12, np.nan, det)
            x = x - (j22 * ex - j12 * ey) / det
            y = y - (-j21 * ex + j11 * ey) / det
        residual = np.hypot(*(a - b for a, b in zip(self.distort(x, y), (xd, yd), strict=True)))
        bad = ~(residual < 1e-6)
        return np.where(bad, np.nan, x), np.where(bad, np.nan, y)


def undistortion_map(width: int, height: int, intrinsics, distortion: Distortion,
                     rows: slice = slice(None)) -> np.ndarray:
    """(H, W, 2) source coordinates (column, row; array-index units, pixel centers on integers) in the
    distorted image of each pixel of the pinhole image with the same `intrinsics` [fx, fy, cx, cy]
    (only the rows `rows` of it when given)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height)[rows] + 0.5)
    xd, yd = distortion.distort((u - cx) / fx, (v - cy) / fy)
    return np.stack([fx * xd + cx - 0.5, fy * yd + cy - 0.5], axis=-1)


def remap_bilinear(image: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample (H0, W0, C) `image` at (H, W, 2) `coords` (column, row; pixel centers on integers) with
    bilinear interpolation: ((H, W, C) float32, (H, W) bool mask of coordinates inside the image;
    outside ones are 0)."""
    h0, w0 = image.shape[:2]
    col, row = coords[..., 0], coords[..., 1]
    valid = _inside(coords, w0, h0)
    col = np.clip(np.nan_to_num(col, nan=-1.0), 0, w0 - 1)
    row = np.clip(np.nan_to_num(row, nan=-1.0), 0, h0 - 1)
    c0, r0 = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    c1, r1 = np.minimum(c0 + 1, w0 - 1), np.minimum(r0 + 1, h0 - 1)
    a, b = (col - c0)[..., None], (row - r0)[..., None]
    out = ((1 - a) * (1 - b) * image[r0, c0] + a * (1 - b) * image[r0, c1]
           + (1 - a) * b * image[r1, c0] + a * b * image[r1, c1])
    out[~valid] = 0
    return out.astype(np.float32), valid


def _inside(coords: np.ndarray, width: int, height: int) -> np.ndarray:
    col, row = coords[..., 0], coords[..., 1]
    return (col >= -0.5) & (col <= width - 0.5) & (row >= -0.5) & (row <= height - 0.5)


def undistort_image(image: np.ndarray, intrinsics, distortion: Distortion,
                    chunk_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The pinhole image (same size, same [fx, fy, cx, cy]) of a distorted (H, W, C) image, and its
    (H, W) bool mask of pixels seen by the file. Works `chunk_rows` rows at a time, so its temporaries
    stay ~chunk_rows x W x 100 bytes whatever the image size."""
    h, w = image.shape[:2]
    out = np.empty((h, w, image.shape[2]), np.float32)
    mask = np.empty((h, w), bool)
    for start in range(0, h, chunk_rows):
        rows = slice(start, min(h, start + chunk_rows))
        out[rows], mask[rows] = remap_bilinear(image, undistortion_map(w, h, intrinsics, distortion, rows))
    return out, mask


def undistorted_mask(width: int, height: int, intrinsics, distortion: Distortion, chunk_rows: int = 256) -> np.ndarray:
    """(H, W) bool: pixels of the undistorted pinhole image whose source lies inside the distorted file."""
    mask = np.empty((height, width), bool)
    for start in range(0, height, chunk_rows):
        rows = slice(start, min(height, start + chunk_rows))
        mask[rows] = _inside(undistortion_map(width, height, intrinsics, distortion, rows), width, height)
    return mask


# ---- frames and captures ------------------------------------------------------------------------

@dataclass
class CaptureFrame:
    """One calibrated image of a capture. Shapes: intrinsics (4,), pose (7,), float64."""

    name: str  # the image as the dataset names it (file_path, or COLMAP's image name)
    image_path: Path  # the file read (an images_N file when `downscale` found one)
    width: int  # of the image as loaded (after downscale)
    height: int
    intrinsics: np.ndarray  # pinhole [fx, fy, cx, cy] of the loaded (undistorted) image
    pose: np.ndarray  # camera-to-world, OpenGL, in the capture's world
    distortion: Distortion | None = None  # undistorted on load when not None
    split: str = "train"  # "train" or "test"
    index: int = 0  # position in the sorted frame list (before missing frames were skipped)
    time: float | None = None  # transforms.json `time`, when given
    source: str = ""  # the field that defines this frame, e.g. frames[3] or "image 5"
    file_size: tuple[int, int] | None = None  # (width, height) of `image_path` when resized on load
    mask_path: Path | None = None  # the frame's own mask (nerfstudio's `mask_path`: 0 = ignore), at the file's size

    def c2w(self) -> np.ndarray:
        """(4, 4) OpenGL camera-to-world matrix."""
        return cv.pose_to_matrix(self.pose)


@dataclass
class Capture:
    """Frames read from `file` (`kind` "transforms" or "colmap").

    `transform` (4, 4) is the similarity (s R, t) taken from the file's world to the capture's world
    (identity until `normalize`): a point p of the file is `transform @ [p, 1]` here, so exports map back
    with its inverse. `aabb` (2, 3) [min, max] is the field box given by the file (instant-ngp
    `aabb_scale`), mapped into the capture's world, or None (then `field_box` derives one from the cameras).
    """

    file: str
    kind: str
    frames: list[CaptureFrame]
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))
    aabb: np.ndarray | None = None
    downscale: int = 1

    @property
    def train(self) -> list[int]:
        """Indices into `frames` of the training frames."""
        return [i for i, f in enumerate(self.frames) if f.split == "train"]

    @property
    def test(self) -> list[int]:
        """Indices into `frames` of the held-out frames."""
        return [i for i, f in enumerate(self.frames) if f.split == "test"]

    def cameras(self, indices: Iterable[int] | None = None, prefix: str = "frame") -> dict:
        """{name: renderer.scene.Camera} of these frames (default: all), named `<prefix>_<i>` with i the
        position in `frames` (3 digits at least), float32 as scene cameras hold them."""
        from .scene import Camera

        order = range(len(self.frames)) if indices is None else indices
        digits = max(3, len(str(len(self.frames) - 1)))
        out = {}
        for i in order:
            f = self.frames[i]
            name = f"{prefix}_{i:0{digits}d}"
            out[name] = Camera(name, f.width, f.height, f.intrinsics.astype(np.float32), f.pose.astype(np.float32))
        return out

    def describe(self) -> str:
        """One line for a person: frames, split, sizes, lens models, downscale."""
        sizes = sorted({(f.width, f.height) for f in self.frames})
        size = ", ".join(f"{w}x{h}" for w, h in sizes[:3]) + (" ..." if len(sizes) > 3 else "")
        lenses = sorted({f.distortion.model if f.distortion else "pinhole" for f in self.frames})
        scaled = f", downscale {self.downscale}" if self.downscale > 1 else ""
        return (f"{self.file}: {len(self.frames)} frames ({len(self.train)} train, {len(self.test)} test), {size}, "
                f"{'/'.join(lenses)} (undistorted on load){scaled}")

    def load(self, frame: int | CaptureFrame, channels: int = 3) -> np.ndarray:
        """(H, W, channels) float32 linear RGB(A) of one frame, at `frame.width` x `frame.height`,
        downscaled and undistorted as its intrinsics say. Raises SceneError naming the image and its
        field when the file cannot be read or has another size than the capture says."""
        f = self.frames[frame] if isinstance(frame, (int, np.integer)) else frame
        where = f"{f.source}.file_path" if self.kind == "transforms" else f"{f.source}.name"
        try:
            raw = read_image(f.image_path, channels)
        except SceneError as e:
            raise SceneError(self.file, where, f"image '{f.image_path}': {e.message}") from None
        expected = f.file_size or (f.width, f.height)
        if (raw.shape[1], raw.shape[0]) != tuple(expected):
            raise SceneError(self.file, where, f"image '{f.image_path}' is {raw.shape[1]}x{raw.shape[0]}, "
                             f"expected {expected[0]}x{expected[1]} (the camera's size)")
        img = raw.copy()
        img[..., :3] = cv.srgb_to_linear(np.clip(raw[..., :3], 0, 1))
        if f.file_size is not None and f.file_size != (f.width, f.height):
            img = resize_area(img, f.width, f.height)
        if f.distortion is not None and not f.distortion.is_identity:
            img, _ = undistort_image(img, f.intrinsics, f.distortion)
        return np.ascontiguousarray(img, np.float32)

    def valid_mask(self, frame: int | CaptureFrame) -> np.ndarray:
        """(H, W) bool: pixels of the loaded image that the file sees (all True without distortion) and that the
        frame's own mask (`mask_path`, downscaled and undistorted with the image) does not ignore."""
        from .transforms_json import MASK_SEEN_SHARE, read_frame_mask

        f = self.frames[frame] if isinstance(frame, (int, np.integer)) else frame
        distorted = f.distortion is not None and not f.distortion.is_identity
        seen = undistorted_mask(f.width, f.height, f.intrinsics, f.distortion) if distorted else \
            np.ones((f.height, f.width), bool)
        if f.mask_path is not None:
            try:  # at the loaded image's size (a full-size mask of a downscaled frame is reduced)
                own = read_frame_mask(f.mask_path, f.width, f.height)
            except SceneError as e:
                raise SceneError(self.file, f"{f.source}.mask_path", f"mask '{f.mask_path}': {e.message}") from None
            if distorted:
                own = undistort_image(own.astype(np.float32)[..., None], f.intrinsics, f.distortion)[0][..., 0] \
                    >= MASK_SEEN_SHARE
            seen &= own
        return seen

    def images(self, indices: Iterable[int] | None = None, progress: Callable[[int, int], None] | None = None,
               channels: int = 3) -> Iterator[tuple[CaptureFrame, np.ndarray]]:
        """Yield (frame, image) one at a time (only one image is in memory at once unless the caller
        keeps them); `progress(done, total)` is called after each."""
        order = list(range(len(self.frames)) if indices is None else indices)
        for done, i in enumerate(order, 1):
            image = self.load(i, channels)
            yield self.frames[i], image
            if progress is not None:
                progress(done, len(order))

    def memory_bytes(self, indices: Iterable[int] | None = None, channels: int = 3,
                     bytes_per_value: int = 4) -> int:
        """Bytes that the loaded images of these frames (default: all) take together."""
        order = range(len(self.frames)) if indices is None else indices
        return sum(memory_estimate(1, self.frames[i].width, self.frames[i].height, channels, bytes_per_value)
                   for i in order)

    def check_memory(self, limit_bytes: int, indices: Iterable[int] | None = None, channels: int = 3) -> int:
        """The bytes `memory_bytes` says, or a SceneError saying how much is needed and what to do."""
        order = list(range(len(self.frames)) if indices is None else indices)
        need = self.memory_bytes(order, channels)
        if need > limit_bytes:
            f = self.frames[order[0]] if order else self.frames[0]
            raise SceneError(self.file, "", f"loading these images needs {need / 2**30:.2f} GiB ({len(order)} "
                             f"frames of {f.width}x{f.height}), more than the limit {limit_bytes / 2**30:.2f} GiB; "
                             f"load them lazily (`images`) or use a larger downscale (now {self.downscale})")
        return need


def memory_estimate(frames: int, width: int, height: int, channels: int = 3, bytes_per_value: int = 4) -> int:
    """Bytes of `frames` images of width x height x channels values (float32 by default)."""
    return int(frames) * int(width) * int(height) * int(channels) * int(bytes_per_value)


def resize_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width, C) float32 area (box) average of an (H, W, C) image (Pillow BOX, per channel)."""
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
        (width, height), Image.BOX)) for c in range(image.shape[2])]
    return np.stack(chans, axis=-1).astype(np.float32)


def default_split(count: int, every: int | None = TEST_EVERY) -> list[str]:
    """Split of `count` frames in their sorted order: "test" when i % every == 0, else "train" (every
    frame "train" when `every` is None)."""
    if every is not None and (not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 2):
        raise ValueError(f"test_every: expected an integer >= 2 or None, got {every!r}")
    return ["test" if every is not None and i % every == 0 else "train" for i in range(count)]


# ---- shared helpers -----------------------------------------------------------------------------

def _number(v, file: str, field_: str, positive: bool = False) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or (positive and v <= 0):
        raise SceneError(file, field_, f"expected a finite {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


def _rigid(m, file: str, field_: str) -> np.ndarray:
    """A (4, 4) rigid matrix from a nearly rigid one (rotation projected with an SVD when it is off by
    less than 1e-2, as exported files round their matrices)."""
    try:
        m = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneError(file, field_, "expected a 4x4 matrix of numbers") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0, 0, 0, 1]])
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise SceneError(file, field_, f"expected a finite 4x4 matrix, got shape {m.shape}")
    if cv.rigid_error(m) > 1e-2:
        raise SceneError(file, field_, "expected a rigid camera-to-world matrix (rotation and translation, "
                         "no scale or shear, last row 0 0 0 1)")
    u, _, vt = np.linalg.svd(m[:3, :3])
    m = m.copy()
    m[:3, :3] = u @ vt
    m[3] = [0, 0, 0, 1]
    return m


def _downscaled(image: Path, images_dir: Path, n: int) -> Path | None:
    """`<images_dir>/../images_N/<path of image under images_dir>` (or `<file name>`) when it exists."""
    folder = images_dir.parent / f"images_{n}"
    try:
        rel = image.relative_to(images_dir)
    except ValueError:
        rel = Path(image.name)
    for candidate in dict.fromkeys((folder / rel, folder / image.name)):
        if candidate.is_file():
            return candidate
        for ext in IMAGE_EXTENSIONS:  # ns-process-data may re-encode (e.g. .JPG -> .png)
            if candidate.with_suffix(ext).is_file():
                return candidate.with_suffix(ext)
    return None


def _header_size(path: Path, file: str, field_: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise SceneError(file, field_, f"image '{path}' cannot be read: {e}") from None


def _apply_downscale(frame: CaptureFrame, images_dir: Path, n: int, file: str, where: str) -> CaptureFrame:
    """The frame at 1/n of its size: from images_n/ beside `images_dir` when it has the file, else
    resized on load."""
    if n == 1:
        return frame
    w, h = frame.width, frame.height
    small = _downscaled(frame.image_path, images_dir, n)
    if small is not None:
        nw, nh = _header_size(small, file, where)
        path, file_size = small, None
    else:
        nw, nh = max(1, round(w / n)), max(1, round(h / n))
        path, file_size = frame.image_path, (w, h)
    sx, sy = nw / w, nh / h
    fx, fy, cx, cy = frame.intrinsics
    return replace(frame, image_path=path, width=nw, height=nh, file_size=file_size,
                   intrinsics=np.array([fx * sx, fy * sy, cx * sx, cy * sy]))


def _finish(file: str, kind: str, frames: list[CaptureFrame], missing: list[CaptureFrame], strict: bool,
            downscale: int, aabb=None, images: Path | None = None) -> Capture:
    if missing and strict:
        f = missing[0]
        where = f"{f.source}.file_path" if kind == "transforms" else f"{f.source}.name"
        raise SceneError(file, where, f"image '{f.image_path}' not found (expected an image file; "
                         f"{len(missing)} of {len(frames) + len(missing)} frames are missing)")
    if missing:
        names = ", ".join(f.name for f in missing[:MISSING_LISTED])
        more = f" and {len(missing) - MISSING_LISTED} more" if len(missing) > MISSING_LISTED else ""
        warnings.warn(f"{file}: skipped {len(missing)} of {len(frames) + len(missing)} frames whose image is "
                      f"missing: {names}{more}", CaptureWarning, stacklevel=3)
    if not frames:
        where = f" in '{images}'" if images is not None else " relative to the dataset"
        raise SceneError(file, "", f"no frame has an image file{where}; expected the images the frames name")
    return Capture(file, kind, frames, np.eye(4), None if aabb is None else np.asarray(aabb, np.float64),
                   downscale)


def _check_downscale(downscale, file: str) -> int:
    if not isinstance(downscale, (int, np.integer)) or isinstance(downscale, bool) or downscale < 1:
        raise SceneError(file, "", f"downscale: expected an integer >= 1, got {downscale!r}")
    return int(downscale)


# ---- transforms.json ----------------------------------------------------------------------------

_CAMERA_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "k1", "k2", "k3",
                "k4", "p1", "p2", "camera_model", "is_fisheye")
_TRANSFORMS_MODELS = ("OPENCV", "OPENCV_FISHEYE", "PINHOLE", "SIMPLE_PINHOLE")


def _resolve_file(base: Path, file_path: str) -> Path:
    """The image of a frame's `file_path` (relative to the json; without an extension, the first of
    IMAGE_EXTENSIONS that exists, else .png)."""
    p = base / file_path
    if p.suffix:
        return p
    for ext in IMAGE_EXTENSIONS:
        if p.with_suffix(ext).is_file():
            return p.with_suffix(ext)
    return p.with_suffix(".png")


def _transforms_camera(doc: dict, fr: dict, image: Path, file: str, field_: str):
    """(width, height, [fx, fy, cx, cy], Distortion | None) of a frame: its own keys, else the top level."""

    def get(key: str):
        if key in fr:
            return fr[key], f"{field_}.{key}"
        return doc.get(key), key

    def num(key: str, positive: bool = False):
        v, where = get(key)
        return None if v is None else _number(v, file, where, positive)

    w, h = num("w", True), num("h", True)
    if w is None or h is None:
        w, h = _header_size(image, file, f"{field_}.file_path")
    w, h = int(round(w)), int(round(h))
    fx, fy = num("fl_x", True), num("fl_y", True)
    if fx is None:
        angle, where = get("camera_angle_x")
        if angle is None and fy is None:
            raise SceneError(file, "fl_x", "expected fl_x (pixels) or camera_angle_x (radians), at the top "
                             "level or on every frame")
        if angle is not None:
            angle = _number(angle, file, where)
            if not 0 < angle < math.pi:
                raise SceneError(file, where, f"expected a horizontal field of view in (0, pi) radians, got {angle}")
            fx = 0.5 * w / math.tan(0.5 * angle)
    if fy is None:
        angle, where = get("camera_angle_y")
        if angle is not None:
            angle = _number(angle, file, where)
            if not 0 < angle < math.pi:
                raise SceneError(file, where, f"expected a vertical field of view in (0, pi) radians, got {angle}")
            fy = 0.5 * h / math.tan(0.5 * angle)
        else:
            fy = fx
    fx = fy if fx is None else fx
    cx, cy = num("cx"), num("cy")
    intrinsics = np.array([fx, fy, w / 2 if cx is None else cx, h / 2 if cy is None else cy])
    model, where = get("camera_model")
    fisheye, fwhere = get("is_fisheye")
    if model is None:
        model = "OPENCV_FISHEYE" if fisheye is True else "OPENCV"
    if model not in _TRANSFORMS_MODELS:
        raise SceneError(file, where, f"expected a camera_model of {', '.join(_TRANSFORMS_MODELS)}, got {model!r} "
                         "(other models: convert with COLMAP, or read the COLMAP model directly)")
    k = tuple(num(f"k{i}") or 0.0 for i in range(1, 5))
    p = (num("p1") or 0.0, num("p2") or 0.0)
    if model == "OPENCV_FISHEYE":
        if any(p):
            raise SceneError(file, "p1", "expected no tangential distortion (p1, p2) with OPENCV_FISHEYE")
        distortion = Distortion("fisheye", k)
    elif model == "OPENCV":
        distortion = Distortion("opencv", k, p)
    else:
        distortion = None
        if any(k) or any(p):
            raise SceneError(file, where, f"{model} has no distortion, but k1..k4/p1/p2 are given; expected "
                             "camera_model OPENCV or OPENCV_FISHEYE")
    if distortion is not None and distortion.is_identity:
        distortion = None
    return w, h, intrinsics, distortion


def _ngp_box(doc: dict, file: str) -> np.ndarray | None:
    """instant-ngp's field box in the file's world, when `aabb_scale` or `aabb` is given: the unit cube of
    its normalized space scaled by `aabb_scale` (default 1) about (0.5, 0.5, 0.5), where a file point p is
    p * scale + offset (before instant-ngp's axis cycle, which leaves a cube unchanged). `scale` (default
    0.33) and `offset` (default 0.5; a number or 3) come from the file, or from `aabb` [[min], [max]],
    which instant-ngp fits into the unit cube (its longest side)."""
    if "aabb_scale" not in doc and "aabb" not in doc:
        return None
    s = _number(doc.get("aabb_scale", 1), file, "aabb_scale", positive=True)
    scale = _number(doc.get("scale", NGP_SCALE), file, "scale", positive=True)
    raw = doc.get("offset", NGP_OFFSET)
    offset = np.asarray([raw] * 3 if isinstance(raw, (int, float)) else raw, dtype=np.float64)
    if offset.shape != (3,) or not np.isfinite(offset).all():
        raise SceneError(file, "offset", f"expected a number or 3 finite numbers, got {raw!r}")
    if "aabb" in doc:
        try:
            box = np.asarray(doc["aabb"], dtype=np.float64)
        except (TypeError, ValueError):
            box = np.zeros(0)
        if box.shape != (2, 3) or not np.isfinite(box).all() or not (box[1] > box[0]).all():
            raise SceneError(file, "aabb", f"expected [[min x, y, z], [max x, y, z]] with max > min, "
                             f"got {doc['aabb']!r}")
        scale = 1.0 / float((box[1] - box[0]).max())
        offset = 0.5 - 0.5 * (box[0] + box[1]) * scale
    return np.stack([(0.5 - s / 2 - offset) / scale, (0.5 + s / 2 - offset) / scale])


def read_transforms(path, *, downscale: int = 1, strict: bool = False, test_every: int | None = TEST_EVERY) -> Capture:
    """Read a nerfstudio or instant-ngp `transforms.json` (or a folder holding one); see the module
    docstring for the keys, conventions, splits, missing frames and `downscale`. `test_every`: the
    automatic split when the file gives none (None: every frame trains)."""
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    file = str(path)
    downscale = _check_downscale(downscale, file)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneError(file, "", "file not found") from None
    except json.JSONDecodeError as e:
        raise SceneError(file, "", f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list) or not doc["frames"]:
        raise SceneError(file, "frames", "expected a non-empty list of frames")
    listed: list[tuple[str, int, dict]] = []
    for i, fr in enumerate(doc["frames"]):
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str) or "transform_matrix" not in fr:
            raise SceneError(file, f"frames[{i}]", "expected an object with file_path (a string) and "
                             "transform_matrix")
        listed.append((fr["file_path"].replace("\\", "/"), i, fr))  # Windows paths, as instant-ngp allows
    listed.sort(key=lambda t: t[0])
    splits = _transforms_splits(doc, [t[2] for t in listed], [t[1] for t in listed], file, test_every)
    base = path.parent
    frames, missing = [], []
    for index, ((file_path, i, fr), split) in enumerate(zip(listed, splits, strict=True)):
        source = f"frames[{i}]"
        pose = cv.matrix_to_pose(_rigid(fr["transform_matrix"], file, f"{source}.transform_matrix"))
        image = _resolve_file(base, file_path)
        t = fr.get("time")
        if t is not None:
            t = _number(t, file, f"{source}.time")
        frame = CaptureFrame(file_path, image, 0, 0, np.zeros(4), pose, None, split, index, t, source)
        if not image.is_file():
            missing.append(frame)
            continue
        w, h, intrinsics, distortion = _transforms_camera(doc, fr, image, file, source)
        frame = replace(frame, width=w, height=h, intrinsics=intrinsics, distortion=distortion,
                        mask_path=_frame_mask(base, fr, file, source))
        frames.append(_apply_downscale(frame, base / "images", downscale, file, f"{source}.file_path"))
    return _finish(file, "transforms", frames, missing, strict, downscale, _ngp_box(doc, file))


def _frame_mask(base: Path, fr: dict, file: str, source: str) -> Path | None:
    """The file of a transforms.json frame's `mask_path` (nerfstudio's key), None without one."""
    if fr.get("mask_path") is None:
        return None
    if not isinstance(fr["mask_path"], str) or not fr["mask_path"].strip():
        raise SceneError(file, f"{source}.mask_path", f"expected a mask image file name, got {fr['mask_path']!r}")
    mask = _resolve_file(base, fr["mask_path"].replace("\\", "/"))
    if not mask.is_file():
        raise SceneError(file, f"{source}.mask_path", f"mask image '{mask}' not found")
    return mask


def _transforms_splits(doc: dict, frames: list[dict], positions: list[int], file: str,
                       test_every: int | None) -> list[str]:
    """Per sorted frame: its "split", else nerfstudio's *_filenames lists, else every 8th held out."""
    if any("split" in fr for fr in frames):
        out = []
        for fr, i in zip(frames, positions, strict=True):
            s = fr.get("split", "train")
            if s not in ("train", "test", "val"):
                raise SceneError(file, f"frames[{i}].split", f"expected \"train\", \"test\" or \"val\", got {s!r}")
            out.append("test" if s == "val" else s)
        return out
    held = set()
    lists = [k for k in ("train_filenames", "val_filenames", "test_filenames") if k in doc]
    for key in lists:
        if not isinstance(doc[key], list) or not all(isinstance(n, str) for n in doc[key]):
            raise SceneError(file, key, "expected a list of file paths")
        if key != "train_filenames":
            held |= {os.path.normpath(n) for n in doc[key]}
    if lists:
        return ["test" if os.path.normpath(fr["file_path"]) in held else "train" for fr in frames]
    return default_split(len(frames), test_every)


# ---- COLMAP -------------------------------------------------------------------------------------

# model id -> (name, number of parameters), as in COLMAP's src/colmap/sensor/models.h
COLMAP_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
                 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16)}
_MODEL_IDS = {name: (i, n) for i, (name, n) in COLMAP_MODELS.items()}


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # (n,) as COLMAP orders them for `model`


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (4,) world-to-camera rotation, (w, x, y, z)
    tvec: np.ndarray  # (3,) world-to-camera translation (OpenCV camera)
    camera_id: int
    name: str


def colmap_intrinsics(camera: ColmapCamera, file: str = "", field_: str = "") -> tuple[np.ndarray, Distortion | None]:
    """Pinhole [fx, fy, cx, cy] and the distortion of a COLMAP camera; SceneError for models without a
    converter (FOV, THIN_PRISM_FISHEYE, RAD_TAN_THIN_PRISM_FISHEYE: undistort them with `colmap
    image_undistorter` first)."""
    m, q = camera.model, [float(v) for v in camera.params]
    if m == "SIMPLE_PINHOLE":
        return np.array([q[0], q[0], q[1], q[2]]), None
    if m == "PINHOLE":
        return np.array(q[:4]), None
    if m in ("SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
        k = (q[3], q[4] if len(q) > 4 else 0.0, 0.0, 0.0)
        d = Distortion("fisheye" if "FISHEYE" in m else "opencv", k)
        return np.array([q[0], q[0], q[1], q[2]]), None if d.is_identity else d
    if m == "OPENCV":
        d = Distortion("opencv", (q[4], q[5], 0.0, 0.0), (q[6], q[7]))
    elif m == "OPENCV_FISHEYE":
        d = Distortion("fisheye", tuple(q[4:8]))
    elif m == "FULL_OPENCV":
        d = Distortion("opencv", (q[4], q[5], q[8], 0.0), (q[6], q[7]), (q[9], q[10], q[11]))
    else:
        supported = [n for n in _MODEL_IDS if n not in ("FOV", "THIN_PRISM_FISHEYE", "RAD_TAN_THIN_PRISM_FISHEYE")]
        raise SceneError(file, field_, f"camera model {m} is not supported; expected one of "
                         f"{', '.join(supported)} (or undistort with `colmap image_undistorter` first)")
    return np.array(q[:4]), None if d.is_identity else d


def _txt_lines(path: Path) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        yield n, line.strip()


def read_colmap_cameras(path) -> dict[int, ColmapCamera]:
    """cameras.bin or cameras.txt as {camera_id: ColmapCamera}.

    Binary: uint64 count, then per camera int32 camera_id, int32 model_id, uint64 width, uint64 height,
    float64 params[n(model)] (little endian). Text: `CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`, # comments."""
    path = Path(path)
    file = str(path)
    out = {}
    if path.suffix == ".bin":
        data = _read_bytes(path)
        r = _Reader(data, file)
        for k in range(r.unpack("<Q")[0]):
            cam_id, model_id, w, h = r.unpack("<iiQQ", f"camera {k}")
            if model_id not in COLMAP_MODELS:
                raise SceneError(file, f"camera {cam_id}.model_id", f"expected a COLMAP model id 0..11, got {model_id}")
            name, n = COLMAP_MODELS[model_id]
            params = np.array(r.unpack(f"<{n}d", f"camera {cam_id}.params"))
            out[cam_id] = ColmapCamera(cam_id, name, int(w), int(h), params)
        r.done()
        return out
    for n, line in _txt_lines(_exists(path)):
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"line {n}"
        if len(parts) < 4 or parts[1] not in _MODEL_IDS:
            raise SceneError(file, where, "expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS... with MODEL one of "
                             f"{', '.join(_MODEL_IDS)}")
        count = _MODEL_IDS[parts[1]][1]
        try:
            cam_id, w, h = int(parts[0]), int(parts[2]), int(parts[3])
            params = np.array([float(v) for v in parts[4:]])
        except ValueError:
            raise SceneError(file, where, "expected integers CAMERA_ID WIDTH HEIGHT and numeric PARAMS") from None
        if len(params) != count:
            raise SceneError(file, where, f"{parts[1]} expects {count} parameters, got {len(params)}")
        out[cam_id] = ColmapCamera(cam_id, parts[1], w, h, params)
    return out


def read_colmap_images(path) -> dict[int, ColmapImage]:
    """images.bin or images.txt as {image_id: ColmapImage} (the 2-D points are skipped).

    Binary: uint64 count, then per image int32 image_id, float64 qw qx qy qz tx ty tz, int32 camera_id,
    the name NUL-terminated, uint64 n_points, n_points x (float64 x, float64 y, int64 point3D_id). Text:
    two lines per image, `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME` then its points (maybe empty)."""
    path = Path(path)
    file = str(path)
    out = {}
    if path.suffix == ".bin":
        r = _Reader(_read_bytes(path), file)
        for k in range(r.unpack("<Q")[0]):
            vals = r.unpack("<idddddddi", f"image {k}")
            end = r.data.find(b"\0", r.pos)
            if end < 0:
                raise SceneError(file, f"image {vals[0]}.name", "expected a NUL-terminated name; the file ends")
            name = r.data[r.pos:end].decode("utf-8", errors="replace")
            r.pos = end + 1
            n_points = r.unpack("<Q", f"image {vals[0]}.points2D")[0]
            r.skip(24 * n_points, f"image {vals[0]}.points2D")
            out[vals[0]] = ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name)
        r.done()
        return out
    lines = list(_txt_lines(_exists(path)))
    i = 0
    while i < len(lines):
        n, line = lines[i]
        i += 1
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=9)
        if len(parts) < 10:
            raise SceneError(file, f"line {n}", "expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        try:
            vals = [float(v) for v in parts[1:8]]
            image_id, cam_id = int(parts[0]), int(parts[8])
        except ValueError:
            raise SceneError(file, f"line {n}", "expected integer ids and numeric QW QX QY QZ TX TY TZ") from None
        out[image_id] = ColmapImage(image_id, np.array(vals[:4]), np.array(vals[4:]), cam_id, parts[9])
        i += 1  # the image's 2-D points line, read as is (may be empty)
    return out


class _Reader:
    def __init__(self, data: bytes, file: str):
        self.data, self.pos, self.file = data, 0, file

    def unpack(self, fmt: str, where: str = ""):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise SceneError(self.file, where, f"the file ends early (expected {size} more bytes at offset "
                             f"{self.pos}); expected a COLMAP binary model")
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return vals

    def skip(self, size: int, where: str) -> None:
        if self.pos + size > len(self.data):
            raise SceneError(self.file, where, "the file ends early; expected a COLMAP binary model")
        self.pos += size

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SceneError(self.file, "", f"{len(self.data) - self.pos} bytes after the last record; expected a "
                             "COLMAP binary model")


def _exists(path: Path) -> Path:
    if not path.is_file():
        raise SceneError(str(path), "", "file not found")
    return path


def _read_bytes(path: Path) -> bytes:
    return _exists(path).read_bytes()


def _model_file(folder: Path, stem: str) -> Path | None:
    for ext in (".bin", ".txt"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def find_colmap_model(path) -> Path | None:
    """The folder holding cameras.* and images.* : `path` itself, path/sparse/0, path/sparse,
    path/colmap/sparse/0 (nerfstudio's layout); None when none has them."""
    path = Path(path)
    for folder in (path, path / "sparse" / "0", path / "sparse", path / "colmap" / "sparse" / "0"):
        if _model_file(folder, "cameras") and _model_file(folder, "images"):
            return folder
    return None


def read_colmap(path, *, images=None, downscale: int = 1, strict: bool = False,
                test_every: int | None = TEST_EVERY) -> Capture:
    """Read a COLMAP sparse model (a folder with cameras.bin|txt and images.bin|txt, binary preferred, or
    a project folder holding sparse/0). `images` is the image folder; default: the first of
    <project>/images, <model>/../images, <model>/images that exists (project = the folder above sparse/).
    Poses: camera-to-world = inverse of COLMAP's world-to-camera (qvec, tvec), then OpenCV -> OpenGL.
    Split: every `test_every`-th image by name is held out (None: every image trains)."""
    path = Path(path)
    model = find_colmap_model(path)
    if model is None:
        raise SceneError(str(path), "", "expected a COLMAP model: cameras.bin|txt and images.bin|txt here or "
                         "in sparse/0")
    cam_file, img_file = _model_file(model, "cameras"), _model_file(model, "images")
    file = str(img_file)
    downscale = _check_downscale(downscale, file)
    cameras = read_colmap_cameras(cam_file)
    records = sorted(read_colmap_images(img_file).values(), key=lambda im: im.name)
    if not records:
        raise SceneError(file, "", "no registered images; expected a reconstructed model")
    if images is None:
        project = model.parent.parent if model.parent.name == "sparse" else model.parent
        candidates = [project / "images", model.parent / "images", model / "images",
                      project.parent / "images"]  # the last: nerfstudio's <data>/colmap/sparse/0 with <data>/images
        images = next((c for c in candidates if c.is_dir()), candidates[0])
    root = Path(images)
    splits = default_split(len(records), test_every)
    intr_cache: dict[int, tuple[np.ndarray, Distortion | None]] = {}
    frames, missing = [], []
    for index, (im, split) in enumerate(zip(records, splits, strict=True)):
        source = f"image {im.id}"
        cam = cameras.get(im.camera_id)
        if cam is None:
            raise SceneError(file, f"{source}.camera_id", f"camera {im.camera_id} is not in {cam_file}; expected "
                             f"one of {sorted(cameras)}")
        if cam.id not in intr_cache:
            intr_cache[cam.id] = colmap_intrinsics(cam, str(cam_file), f"camera {cam.id}.model")
        intrinsics, distortion = intr_cache[cam.id]
        q = np.asarray(im.qvec, np.float64)
        if not np.isfinite(q).all() or np.linalg.norm(q) < 1e-9 or not np.isfinite(im.tvec).all():
            raise SceneError(file, f"{source}.qvec", "expected a finite non-zero quaternion and translation")
        w2c = np.eye(4)
        w2c[:3, :3] = cv.quat_to_matrix([q[1], q[2], q[3], q[0]])
        w2c[:3, 3] = im.tvec
        c2w_cv = np.eye(4)
        c2w_cv[:3, :3] = w2c[:3, :3].T
        c2w_cv[:3, 3] = -w2c[:3, :3].T @ im.tvec
        pose = cv.matrix_to_pose(cv.opencv_to_opengl(c2w_cv))
        frame = CaptureFrame(im.name, root / im.name, cam.width, cam.height, intrinsics.copy(), pose,
                             distortion, split, index, None, source)
        if not frame.image_path.is_file():
            missing.append(frame)
            continue
        frames.append(_apply_downscale(frame, root, downscale, file, f"{source}.name"))
    return _finish(file, "colmap", frames, missing, strict, downscale, images=root)


def read_capture(path, *, downscale: int = 1, strict: bool = False, images=None,
                 test_every: int | None = TEST_EVERY) -> Capture:
    """A `transforms.json` (the file or a folder holding one) or a COLMAP model / project folder."""
    path = Path(path)
    if path.suffix == ".json" or (path.is_dir() and (path / "transforms.json").is_file()):
        return read_transforms(path, downscale=downscale, strict=strict, test_every=test_every)
    if path.is_dir() and find_colmap_model(path) is not None:
        return read_colmap(path, images=images, downscale=downscale, strict=strict, test_every=test_every)
    raise SceneError(str(path), "", "expected a transforms.json, a folder holding one, or a COLMAP model "
                     "(cameras.bin|txt and images.bin|txt, or sparse/0 holding them)")


# ---- normalization and the field box ------------------------------------------------------------

def rotation_between(a, b) -> np.ndarray:
    """(3, 3) smallest rotation taking unit direction `a` to unit direction `b` (180 degrees about an
    axis perpendicular to `a` when they are opposite)."""
    a, b = cv.normalize(a, "a"), cv.normalize(b, "b")
    v, c = np.cross(a, b), float(a @ b)
    if c < -1 + 1e-12:
        axis = np.cross(a, [1.0, 0, 0]) if abs(a[0]) < 0.9 else np.cross(a, [0, 1.0, 0])
        axis = cv.normalize(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def focus_point(frames: Sequence[CaptureFrame], iterations: int = 10) -> np.ndarray:
    """(3,) the point nearest (least squares) to the optical axes of the cameras that have it in front of
    them (nerfstudio's `focus_of_attention`: start from the mean position, drop the cameras facing away,
    solve again until the set is stable); the mean position when fewer than two cameras face it."""
    mats = np.stack([f.c2w() for f in frames])
    dirs, origins = -mats[:, :3, 2], mats[:, :3, 3]
    point = origins.mean(0)
    active = np.einsum("ij,ij->i", dirs, point - origins) > 0
    for _ in range(iterations):
        if active.sum() < 2:
            break
        proj = np.eye(3) - dirs[active, :, None] * dirs[active, None, :]
        m = proj.sum(0)
        if np.linalg.cond(m) > 1e8:  # (nearly) parallel axes: no focus
            break
        point = np.linalg.solve(m, np.einsum("nij,nj->i", proj, origins[active]))
        now = np.einsum("ij,ij->i", dirs, point - origins) > 0
        if (now == active).all():
            break
        active = now
    return point


def transform_box(box, transform) -> np.ndarray:
    """(2, 3) axis-aligned bounds of the 8 corners of box (2, 3) mapped by a (4, 4) transform."""
    box = np.asarray(box, np.float64)
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2], 1.0] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    mapped = (np.asarray(transform, np.float64) @ corners.T).T[:, :3]
    return np.stack([mapped.min(0), mapped.max(0)])


def normalize(capture: Capture, *, orient: bool = True, center: str = "poses", scale: bool = True) -> Capture:
    """A copy of `capture` in a normalized world (nerfstudio's `auto_orient_and_center_poses` and
    `auto_scale_poses`, with drstudio's +Y up):
    - orient: the rotation taking the mean camera up vector (+Y column of the camera-to-world) to +Y;
    - center: "poses" (mean camera position), "focus" (`focus_point` of the optical axes) or "none";
    - scale: uniform, so that the camera positions fit [-1, 1]^3 (max |coordinate| = 1).
    The applied similarity is composed into `transform` (file world -> capture world); `aabb` follows.
    Poses stay rigid: rotations are rotated, positions rotated, moved and scaled."""
    if center not in ("poses", "focus", "none"):
        raise ValueError(f"center: expected 'poses', 'focus' or 'none', got {center!r}")
    mats = np.stack([f.c2w() for f in capture.frames])
    rot = np.eye(3)
    if orient:
        up = mats[:, :3, 1].mean(0)
        rot = rotation_between(up, [0.0, 1.0, 0.0]) if np.linalg.norm(up) > 1e-9 else np.eye(3)
    origin = np.zeros(3)
    if center == "poses":
        origin = mats[:, :3, 3].mean(0)
    elif center == "focus":
        origin = focus_point(capture.frames)
    positions = (mats[:, :3, 3] - origin) @ rot.T  # the oriented, centered camera positions
    s = 1.0
    if scale:
        extent = np.abs(positions).max()
        s = 1.0 / extent if extent > 1e-12 else 1.0
    sim = np.eye(4)
    sim[:3, :3] = s * rot
    sim[:3, 3] = -s * rot @ origin
    return transformed(capture, sim)


def transformed(capture: Capture, similarity) -> Capture:
    """A copy of `capture` moved by a (4, 4) similarity [s R | t] (s > 0, R a rotation): positions
    p -> s R p + t, camera rotations -> R rot (poses stay rigid), `aabb` mapped, `transform` composed.
    Use it to bring a second capture (a separate test set) into the world of a normalized one:
    `transformed(test, train.transform)` (both read from the same file world)."""
    sim = np.asarray(similarity, np.float64)
    s = float(np.cbrt(np.linalg.det(sim[:3, :3]))) if sim.shape == (4, 4) else 0.0
    if not s > 0 or cv.rigid_error(np.vstack([np.c_[sim[:3, :3] / s, sim[:3, 3]], [0, 0, 0, 1]])) > 1e-6:
        raise ValueError("similarity: expected a (4, 4) matrix [s R | t] with s > 0 and R a rotation, last row 0 0 0 1")
    rot = sim[:3, :3] / s
    frames = []
    for f in capture.frames:
        m = f.c2w()
        new = np.eye(4)
        new[:3, :3] = rot @ m[:3, :3]
        new[:3, 3] = sim[:3, :3] @ m[:3, 3] + sim[:3, 3]
        frames.append(replace(f, pose=cv.matrix_to_pose(new)))
    aabb = None if capture.aabb is None else transform_box(capture.aabb, sim)
    return replace(capture, frames=frames, transform=sim @ capture.transform, aabb=aabb)


def frustum_box(frames: Sequence[CaptureFrame], near: float | None = None, far: float | None = None,
                min_fraction: float = 0.5, resolution: int = 48) -> np.ndarray:
    """(2, 3) [min, max] box of the region seen by at least `min_fraction` of the cameras at a depth in
    [near, far] (world units). Defaults: far = the largest distance between two cameras (at least the
    largest distance of a camera from their mean, x 2), near = far / 100. Counted on a resolution^3
    lattice spanning the cameras' positions grown by `far`; raises ValueError when no lattice point is
    seen by enough cameras (give the box explicitly)."""
    pos = np.array([f.pose[:3] for f in frames])
    if far is None:
        spread = float(np.linalg.norm(pos[:, None] - pos[None], axis=-1).max()) if len(pos) > 1 else 0.0
        far = max(spread, 2 * float(np.linalg.norm(pos - pos.mean(0), axis=1).max()), 1e-6)
        if spread < 1e-9:
            far = 1.0
    near = far / 100 if near is None else near
    lo, hi = pos.min(0) - far, pos.max(0) + far
    axes = [np.linspace(lo[i], hi[i], resolution) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    counts = np.zeros(len(grid), np.int32)
    for f in frames:
        m = f.c2w()
        pc = (grid - m[:3, 3]) @ m[:3, :3]  # camera space, OpenGL (looks down -Z)
        depth = -pc[:, 2]
        fx, fy, cx, cy = f.intrinsics
        with np.errstate(divide="ignore", invalid="ignore"):
            u = cx + fx * pc[:, 0] / depth
            v = cy - fy * pc[:, 1] / depth
        counts += ((depth >= near) & (depth <= far) & (u >= 0) & (u <= f.width) & (v >= 0) & (v <= f.height))
    need = max(1, math.ceil(min_fraction * len(frames)))
    seen = grid[counts >= need]
    if not len(seen):
        raise ValueError(f"no point within [{near:.3g}, {far:.3g}] of the cameras is seen by {need} of "
                         f"{len(frames)} cameras; give the field box explicitly")
    half = (hi - lo) / (resolution - 1) / 2
    return np.stack([seen.min(0) - half, seen.max(0) + half])


def field_box(capture: Capture, **frustum_options) -> np.ndarray:
    """(2, 3) field bounds in the capture's world: the file's `aabb_scale` box (mapped by `transform`),
    else `frustum_box` of the frames (options passed on)."""
    if capture.aabb is not None:
        return capture.aabb.copy()
    try:
        return frustum_box(capture.frames, **frustum_options)
    except ValueError as e:
        raise SceneError(capture.file, "aabb_scale", str(e)) from None


# ---- export -------------------------------------------------------------------------------------

def export_transforms(capture: Capture, out, *, overwrite: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """Write `capture` as a dataset that `renderer.transforms_json.load_transforms` (so today's
    `targets.transforms`) reads: its frames loaded (downscaled, undistorted, in the capture's world) as
    8-bit sRGB `images/frame_XXXXX.png`, then `transforms.json` (written last, atomically) with per-frame
    `fl_x, fl_y, cx, cy, w, h`, `transform_matrix` (OpenGL camera-to-world), `split`, `time` when given and
    `source` (the image the frame came from), `mask_path` (`masks/frame_XXXXX.png`, nerfstudio's key) for a
    frame whose undistortion leaves pixels the photograph does not cover (0 there), and a `capture` block: the
    source file, `transform` (file world -> this world, 4x4) and `aabb` (the field box, `field_box`). One image
    in memory at a time.
    Returns the json's path; SceneError when `out` already holds a dataset and not `overwrite`."""
    out = Path(out)
    if (out / "transforms.json").exists() and not overwrite:
        raise SceneError(str(out), "", "the folder already holds a dataset (transforms.json); choose another "
                         "folder or overwrite it")
    digits = max(5, len(str(len(capture.frames) - 1)))
    records = []
    for i, (frame, image) in enumerate(capture.images(progress=progress)):
        name = f"images/frame_{i:0{digits}d}.png"
        write_image(out / name, image)
        fx, fy, cx, cy = (float(v) for v in frame.intrinsics)
        rec = {"file_path": name, "transform_matrix": frame.c2w().tolist(), "fl_x": fx, "fl_y": fy, "cx": cx,
               "cy": cy, "w": frame.width, "h": frame.height, "split": frame.split, "source": frame.name}
        seen = capture.valid_mask(frame)
        if not seen.all():  # the undistorted image's pixels the photograph does not cover: black, not scene
            rec["mask_path"] = f"masks/frame_{i:0{digits}d}.png"
            write_image_bytes(out / rec["mask_path"], np.where(seen, 255, 0).astype(np.uint8))
        if frame.time is not None:
            rec["time"] = frame.time
        records.append(rec)
    try:
        box = field_box(capture).tolist()
    except SceneError:
        box = None
    doc = {"frames": records, "capture": {"file": capture.file, "kind": capture.kind, "downscale": capture.downscale,
                                          "transform": np.asarray(capture.transform).tolist(), "aabb": box}}
    text = json.dumps(doc, indent=1) + "\n"
    atomic_write(out / "transforms.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out / "transforms.json"


# ---- a scene that trains on an exported capture -------------------------------------------------

#: Field settings `training_scene` writes, per field type: measured on instant-ngp's fox capture at 8x
#: downscale (benchmarks/README.md, "Real captures"). The field is a contracted lattice: the walls and whatever else
#: lies beyond its inner box are modelled in the contracted shell instead of being faked by floaters in front of the
#: cameras (+3 dB on the held-out close-up at the capture's edge). The upsample to the final lattice comes early
#: (step 100: +0.8 dB at step 200 against the 64^3 lattice), which the lazy Adam update and TV every 16 steps make
#: affordable (0.70 instead of 1.4 s of CPU a step at 128^3); TV 1e-3 rather than 1e-5 (held out at step 300 on
#: the finer lattice: 22.41 dB with 1e-3, 22.29 with 3e-4, 22.04 with 1e-4), and the learning rates fall along a
#: half cosine to a tenth over the `steps` (a run of about 10 minutes on one core of this 2-core CPU, 6 on both).
#: Since 2026-12-07 night: the occupancy threshold is instant-ngp's (a cell is empty when a stratum's opacity
#: sigma * delta there stays below CAPTURE_OCCUPANCY_ALPHA; the fox's 0.5 per unit length), which leaves 12 % of the
#: cells occupied instead of 99 % (the walls' backs and the air are skipped) and halves a 128^3 step at the same
#: held-out PSNR; Floaters No More's gradient scaling (`gradient_scaling`, CAPTURE_GRADIENT_SCALING of the inner
#: box's mean edge; +0.1-0.2 dB, +0.8-1.1 dB on the close-up frame 43); and with the time saved a 256^3 lattice
#: (64 -> 128 -> 256 at steps 100 and 200): 23.2 dB at step 600 against 22.8 for 128^3 at step 450. TV 4e-3 on
#: it (TV is a mean of squared neighbour differences, smaller on a finer lattice): 23.35 dB at step 450 against
#: 23.16 with 1e-3, and 23.03 at step 300 with 1e-2 (23.13 with 4e-3).
CAPTURE_FIELDS = {
    "voxel_grid": {
        "field": {"type": "voxel_grid", "resolution": 256, "aabb": "auto", "sh_degree": 1, "storage": "float32",
                  "samples_per_ray": 192, "occupancy": {"resolution": 64, "update_every": 4, "threshold": "auto"},
                  "coarse_to_fine": {"start_resolution": 64, "upsample_at": [100, 200]}, "contract": True,
                  "tv_every": 16, "gradient_scaling": "auto"},
        "parameters": {"density": {"lr": 0.5}, "sh": {"lr": 0.2}},
        "loss": {"l2": 1.0, "tv": 4e-03},
        "optimizer": {"type": "adam", "lr": 0.1, "lazy": True, "schedule": {"type": "cosine", "min_lr": 0.01}},
        "steps": 800,
    },
}
#: The opacity sigma * delta below which an occupancy cell is empty (instant-ngp's 0.01 and nerfacc's), delta a
#: stratum's length inside the inner box: the contracted march puts half of `samples_per_ray` there.
CAPTURE_OCCUPANCY_ALPHA = 0.0125
#: Floaters No More's distance (`gradient_scaling`) as a fraction of the inner box's mean edge (the fox: 1.0 world
#: units of a 2.37-unit box, its held-out cameras 1.0-1.7 units from the focus).
CAPTURE_GRADIENT_SCALING = 0.42
#: The inner box of a contracted field, as a fraction of the capture's box (`field_box`: instant-ngp's `aabb_scale`
#: box or the cameras' frustums) per axis, about its centre. The `aabb_scale` box of a phone capture holds the room
#: (the fox's is 4 times instant-ngp's unit cube; its cameras stand 0.8 of the box's half-size from the centre);
#: what lies outside the inner box is still modelled, in the contracted shell, so a smaller inner box puts the
#: lattice's points on the object. Measured at 128^3 (benchmarks/README.md): half the box fitted the training views
#: better than the whole box (loss 0.0032 vs 0.0043 at step 200) and was +0.7 dB held out at step 100 but equal at
#: step 200 (21.72 vs 21.74 dB); with TV 1e-4, 0.7 and 0.5 of the box gave the same held-out mean at step 300
#: (22.04 / 22.02 dB), and 0.5 a haze of floaters in the close-up whose camera then stood outside the inner box.
CAPTURE_INNER_SCALE = 0.7


def _scale_settings(field: dict) -> None:
    """The preset's "auto" settings in the units of the field's box (in place): the occupancy threshold as a density
    (CAPTURE_OCCUPANCY_ALPHA over a stratum's length inside the inner box) and `gradient_scaling` as a distance
    (CAPTURE_GRADIENT_SCALING of the box's mean edge). Without a numeric box (the capture gave none: "auto" names
    the problem when the scene loads) they take their neutral values, the threshold 0.01 and no scaling."""
    box = field.get("aabb")
    edge = float(np.mean(np.subtract(box[1], box[0]))) if isinstance(box, list) else None
    occupancy = field.get("occupancy")
    if isinstance(occupancy, dict) and occupancy.get("threshold") == "auto":
        strata = field["samples_per_ray"] / 2 if field.get("contract") else field["samples_per_ray"]
        threshold = CAPTURE_OCCUPANCY_ALPHA * strata / edge if edge else 0.01
        field["occupancy"] = {**occupancy, "threshold": round(threshold, 4)}
    if field.get("gradient_scaling") == "auto":
        field["gradient_scaling"] = round(CAPTURE_GRADIENT_SCALING * edge, 4) if edge else 0.0


def training_scene(capture: Capture, transforms: str = "transforms.json", *, field_type: str = "voxel_grid",
                   steps: int | None = None) -> dict:
    """A scene file (as a dict) that trains a radiance field of `field_type` on the dataset that
    `export_transforms(capture, ...)` writes, with `transforms` its path relative to the scene file:
    the field over the capture's box (`field_box`; a contracted field's inner box is that box scaled by
    CAPTURE_INNER_SCALE about its centre), held-out frames as the capture splits them, and a `preview` camera at
    the first held-out frame (else the first frame) for the viewer and `drstudio render`. The settings are
    CAPTURE_FIELDS[field_type]; `steps` (default: the preset's) is the run's length and the horizon of its
    learning-rate schedule."""
    if field_type not in CAPTURE_FIELDS:
        raise ValueError(f"field type {field_type!r}: expected one of {', '.join(CAPTURE_FIELDS)}")
    if not capture.frames:
        raise SceneError(capture.file, "frames", "no frames to train on")
    preset = CAPTURE_FIELDS[field_type]
    field = dict(preset["field"])
    if field.get("contract") and CAPTURE_INNER_SCALE != 1.0:  # the inner box: the capture's box shrunk about its centre
        try:
            box = field_box(capture)
        except SceneError:
            box = None  # "auto" then names the problem when the scene is loaded
        if box is not None:
            center, half = box.mean(axis=0), (box[1] - box[0]) / 2 * CAPTURE_INNER_SCALE
            field["aabb"] = [[float(v) for v in center - half], [float(v) for v in center + half]]
    _scale_settings(field)
    shown = capture.frames[capture.test[0] if capture.test else 0]
    fx, fy, cx, cy = (float(v) for v in shown.intrinsics)
    preview = {"name": "preview", "width": int(shown.width), "height": int(shown.height),
               "fx": fx, "fy": fy, "cx": cx, "cy": cy,
               "matrix": [[float(v) for v in row] for row in shown.c2w()], "convention": "opengl"}
    return {
        "version": 1,
        "description": f"A {field_type.replace('_', ' ')} radiance field trained on {Path(capture.file).name} "
                       f"({len(capture.train)} training and {len(capture.test)} held-out frames, downscale "
                       f"{capture.downscale}); written by `drstudio capture`.",
        "cameras": [preview],
        "background": [0.0, 0.0, 0.0],
        "fields": [{"name": "nerf", **field}],
        "optimize": {
            "parameters": {f"fields.nerf.{name}": dict(v) for name, v in preset["parameters"].items()},
            "targets": {"transforms": transforms},
            "loss": dict(preset["loss"]),
            "optimizer": dict(preset["optimizer"]),
            "steps": int(preset.get("steps", 3000) if steps is None else steps),
            "rays_per_batch": 4096,
            "eval_every": 500,
            "seed": 0,
        },
    }


def write_training_scene(capture: Capture, out, *, overwrite: bool = False, **options) -> Path:
    """`training_scene` written as `out/scene.json` (atomically) beside the exported `transforms.json`;
    SceneError when it exists and not `overwrite`."""
    path = Path(out) / "scene.json"
    if path.exists() and not overwrite:
        raise SceneError(str(path), "", "the file exists; choose another folder or overwrite it")
    text = json.dumps(training_scene(capture, "transforms.json", **options), indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
