"""nerfstudio / Blender-synthetic `transforms.json` datasets.

Fields read: `camera_angle_x` (horizontal fov, radians) or `fl_x`/`fl_y` (+ optional `cx`/`cy`),
`w`/`h` (else taken from the first image), and per frame `file_path` (relative to the json; a
missing extension means `.png`, as in the Blender set), `transform_matrix` (camera-to-world, OpenGL
convention, as both formats store it), optional per-frame intrinsics and `time` (in [0, 1], on every
frame or on none). Intrinsics may also be given per frame (nerfstudio). Errors name the file and the field.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .conventions import matrix_to_pose
from .errors import SceneError
from .images import read_image
from .params import COORD_MAX, INTRINSICS_MAX


@dataclass
class Frame:
    image_path: Path
    width: int
    height: int
    intrinsics: np.ndarray  # (4,) float32
    pose: np.ndarray  # (7,) float32 camera-to-world
    time: float | None = None
    split: str | None = None  # the frame's "split" ("train", "test", ...), when it has one
    file_size: tuple[int, int] | None = None  # (w, h) of image_path when it is resized to width x height on load
    # nerfstudio's `mask_path`: an image of the pixels to use (nonzero) and to ignore (0) in training and
    # evaluation, e.g. the corners an undistortion leaves unseen (`drstudio capture` writes them)
    mask_path: Path | None = None


def _number(d: dict, key: str, file: str, field: str):
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise SceneError(file, f"{field}{key}", f"expected a finite number, got {v!r}")
    return float(v)


def frame_image_path(base: Path, file_path: str) -> Path:
    """The image a frame's `file_path` names: relative to the json's folder, `.png` when it has no extension."""
    img_path = Path(base) / file_path
    return img_path if img_path.suffix else img_path.with_suffix(".png")


_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def load_transforms(path, *, strict: bool = False, downscale: int = 1) -> list[Frame]:
    """The frames of a transforms.json whose image exists. Frames whose image is missing are skipped with
    one warning naming them and their count (real captures list frames COLMAP could not register or that
    were deleted); `strict=True` refuses them instead. Lens distortion (nonzero `k1..k4, p1, p2`, a fisheye
    model) is refused, never ignored: `drstudio capture` undistorts a capture into a dataset this reads.

    `downscale=N` (`optimize.targets.downscale`, `drstudio optimize --downscale N`): each frame at 1/N of its
    size, intrinsics scaled with it (fx, cx by new_w / w; fy, cy by new_h / h), from `images_N/<name>`
    beside the frame's image folder when that file exists (nerfstudio's layout; its size is read from its
    header), else the image resized on load to round(size / N) by an area filter (`read_frame_image`)."""
    path = Path(path)
    if not isinstance(downscale, int) or isinstance(downscale, bool) or downscale < 1:
        raise SceneError(str(path), "", f"downscale: expected an integer >= 1, got {downscale!r}")
    file = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneError(file, "", "file not found") from None
    except json.JSONDecodeError as exc:
        raise SceneError(file, "", f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise SceneError(file, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise SceneError(file, "", "malformed JSON: nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise SceneError(file, "", f"malformed JSON: {exc}") from None
    except OSError as exc:  # a folder, no permission
        raise SceneError(file, "", f"cannot be read: {exc.strerror or exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list) or not doc["frames"]:
        raise SceneError(file, "frames", "expected a non-empty list of frames")
    frames, missing = [], []
    for where, d in [("", doc)] + [(f"frames[{i}].", fr) for i, fr in enumerate(doc["frames"]) if isinstance(fr, dict)]:
        bent = [k for k in _DISTORTION_KEYS if isinstance(d.get(k), (int, float)) and d.get(k)]
        if bent or d.get("is_fisheye") or str(d.get("camera_model", "")).upper() == "OPENCV_FISHEYE":
            what = ", ".join(f"{k}={d[k]:g}" for k in bent) or "a fisheye camera model"
            raise SceneError(file, f"{where}{bent[0] if bent else 'camera_model'}", f"lens distortion ({what}) is "
                             "not applied to transforms.json targets; undistort the capture into a dataset first: "
                             f"`drstudio capture {file} --out DIR [--downscale N]`")
    for i, fr in enumerate(doc["frames"]):
        field = f"frames[{i}]."
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise SceneError(file, f"frames[{i}]", "expected an object with file_path and transform_matrix")
        if not isinstance(fr["file_path"], str) or not fr["file_path"].strip():
            raise SceneError(file, f"{field}file_path", f"expected an image file name, got {fr['file_path']!r}")
        img_path = frame_image_path(path.parent, fr["file_path"])
        try:
            m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):  # strings, ragged lists, 400-digit integers
            m = np.zeros(0)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise SceneError(file, f"{field}transform_matrix", "expected a finite 4x4 matrix")
        try:
            pose = matrix_to_pose(m, tolerance=1e-3)
        except ValueError as exc:
            raise SceneError(file, f"{field}transform_matrix", str(exc)) from None
        if np.abs(pose[:3]).max() > COORD_MAX:  # finite, but a render from there overflows float32 (Kind.range)
            raise SceneError(file, f"{field}transform_matrix", f"expected a camera position in [{-COORD_MAX:g}, "
                             f"{COORD_MAX:g}] (the range that keeps rendering finite in float32), got "
                             f"{np.abs(pose[:3]).max():g}")
        t = _number(fr, "time", file, field)
        if t is not None and not 0.0 <= t <= 1.0:
            raise SceneError(file, f"{field}time", f"expected a time in [0, 1] (D-NeRF convention), got {t!r}")
        given = [_number(fr, k, file, field) or _number(doc, k, file, "") for k in ("fl_x", "fl_y", "cx", "cy")]
        if max(abs(v or 0.0) for v in given) > INTRINSICS_MAX:
            raise SceneError(file, f"{field}fl_x", f"expected intrinsics fl_x, fl_y, cx, cy within "
                             f"{INTRINSICS_MAX:g} pixels (the range that keeps rendering finite in float32), got "
                             + ", ".join("-" if v is None else f"{v:g}" for v in given))
        if not img_path.is_file():  # checked after the frame's own fields, which are errors either way
            if strict:
                raise SceneError(file, f"{field}file_path", f"image '{img_path}' not found (without strict, frames "
                                 "whose image is missing are skipped with a warning)")
            missing.append(fr["file_path"])
            continue
        mask_path = None
        if fr.get("mask_path") is not None:
            if not isinstance(fr["mask_path"], str) or not fr["mask_path"].strip():
                raise SceneError(file, f"{field}mask_path", f"expected a mask image file name, got {fr['mask_path']!r}")
            mask_path = frame_image_path(path.parent, fr["mask_path"])
            if not mask_path.is_file():
                raise SceneError(file, f"{field}mask_path", f"mask image '{mask_path}' not found")
        w = _number(fr, "w", file, field) or _number(doc, "w", file, "")
        h = _number(fr, "h", file, field) or _number(doc, "h", file, "")
        if w is None or h is None:
            img = read_image(img_path)
            h, w = img.shape[:2]
        w, h = int(w), int(h)
        fl_x = _number(fr, "fl_x", file, field) or _number(doc, "fl_x", file, "")
        fl_y = _number(fr, "fl_y", file, field) or _number(doc, "fl_y", file, "")
        if fl_x is None:
            angle = _number(doc, "camera_angle_x", file, "")
            if angle is None or not 0 < angle < math.pi:
                raise SceneError(file, "camera_angle_x", "expected fl_x/fl_y or camera_angle_x in (0, pi) radians")
            fl_x = 0.5 * w / math.tan(0.5 * angle)
        fl_y = fl_y or fl_x
        cx = _number(fr, "cx", file, field) or _number(doc, "cx", file, "") or w / 2
        cy = _number(fr, "cy", file, field) or _number(doc, "cy", file, "") or h / 2
        split = fr.get("split") if isinstance(fr.get("split"), str) else None
        frame = Frame(img_path, w, h, np.array([fl_x, fl_y, cx, cy], np.float32), pose.astype(np.float32), t, split,
                      mask_path=mask_path)
        frames.append(_downscaled_frame(frame, downscale, file, f"{field}file_path") if downscale > 1 else frame)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        warnings.warn(f"{file}: skipped {len(missing)} of {len(doc['frames'])} frames whose image is missing "
                      f"({shown})", stacklevel=1)  # one location: shown once per run, however often read
    if not frames:
        raise SceneError(file, "frames", f"none of the {len(doc['frames'])} frames has its image")
    timed = [f.time is not None for f in frames]
    if any(timed) and not all(timed):
        i = timed.index(False)
        raise SceneError(file, f"frames[{i}].time", "missing: some frames have a time and this one has not (a "
                         "time-varying dataset needs a time on every frame)")
    return frames


def _downscaled_frame(frame: Frame, n: int, file: str, where: str) -> Frame:
    """`frame` at 1/n of its size: its `images_n/` file when there is one, else resized on load."""
    from .captures import _downscaled, _header_size

    small = _downscaled(frame.image_path, frame.image_path.parent, n)
    if small is not None:
        nw, nh = _header_size(small, file, where)
        path, file_size = small, None
    else:
        nw, nh = max(1, round(frame.width / n)), max(1, round(frame.height / n))
        path, file_size = frame.image_path, (frame.width, frame.height)
    scale = np.array([nw / frame.width, nh / frame.height] * 2, np.float32)
    return replace(frame, image_path=path, width=nw, height=nh, intrinsics=frame.intrinsics * scale,
                   file_size=file_size)


#: A pixel of a downscaled frame counts as seen when at least this share of the mask pixels it covers is seen.
MASK_SEEN_SHARE = 0.999


def read_frame_mask(file, width: int, height: int) -> np.ndarray:
    """A frame's `mask_path` image as a (height, width) bool array: True where the pixel is used (a nonzero mask
    value: the first channel of a colour image, as a gray one), False where it is ignored. A larger mask (a
    downscaled frame) is reduced by an area filter; a pixel stays True only when (almost) all of it is seen.
    SceneError naming the file when it is no image or of another size than the frame (or a multiple of it)."""
    from .captures import resize_area

    m = read_image(file, channels=1)[..., 0] > 0.0
    h0, w0 = m.shape
    if (h0, w0) == (height, width):
        return m
    if h0 < height or w0 < width or round(w0 / width) != round(h0 / height) or abs(w0 / width - h0 / height) > 0.1:
        raise SceneError(str(file), "", f"mask is {w0}x{h0}, expected the frame's size {width}x{height} (or a "
                         "multiple of it)")
    share = resize_area(m.astype(np.float32)[..., None], width, height)[..., 0]
    return share >= MASK_SEEN_SHARE


def read_frame_image(file, width: int, height: int, channels: int = 3) -> np.ndarray:
    """A dataset image as (height, width, channels) float32 linear RGB: resized by an area (box) filter in
    linear RGB when the file is larger (a frame of a downscaled dataset without an `images_N/` file)."""
    from .captures import resize_area
    from .conventions import srgb_to_linear

    img = srgb_to_linear(read_image(file, channels=channels)).astype(np.float32)
    if img.shape[:2] != (height, width) and img.shape[0] > height and img.shape[1] > width:
        img = resize_area(img, width, height)
    return img
