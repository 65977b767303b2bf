"""Camera paths and camera-path videos (the viewer's "Camera path" window and `drstudio video`).

A path is a list of keyframes (camera-to-world pose (7,) [px, py, pz, qx, qy, qz, qw] and a vertical
field of view in degrees), sampled at N frames evenly in keyframe index: positions by a Catmull-Rom
spline through the keyframes (end keyframes repeated), orientations by quaternion slerp along the
shorter arc, the field of view linearly. An orbit is sampled directly: a camera circling the up axis
through a center at a fixed distance and elevation, looking at the center.

Path files (JSON):
    {"fov_y": 40, "keyframes": [{"pose": [px, py, pz, qx, qy, qz, qw]},
                                {"eye": [x, y, z], "target": [x, y, z], "up": [0, 0, 1], "fov_y": 30}, ...]}
(each keyframe a pose or an eye/target pair with an optional `up`, default +Y; fov_y per keyframe or for
all, default 40). The default orbit turns about the scene's up vector: the mean up of its cameras.

Frames render the scene's radiance field when it has one (`FieldFrames`), else the meshes with the
differentiable renderer (`MeshFrames`, `renderer.render.render_view` with pose/intrinsics overrides),
with trained values from a `params.npz` of `drstudio optimize` if given. `write_video` encodes an mp4
(H.264 through imageio's ffmpeg plugin) into a temporary file next to the output and renames it into
place when every frame is written, so a failed or cancelled export leaves no half-written file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from drstudio.renderer import conventions as cv
from drstudio.renderer.params import Group, element_prefix, param_path

DEFAULT_FOV_Y = 40.0


class PathError(ValueError):
    """A bad camera path, size or parameter file (the message names what is wrong)."""


@dataclass(frozen=True)
class Keyframe:
    pose: np.ndarray  # (7,) camera-to-world
    fov_y: float = DEFAULT_FOV_Y


# -- interpolation -------------------------------------------------------------------------------------

def slerp(q0, q1, t: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions [x, y, z, w] along the shorter arc."""
    q0 = np.asarray(q0, np.float64) / np.linalg.norm(q0)
    q1 = np.asarray(q1, np.float64) / np.linalg.norm(q1)
    d = float(np.dot(q0, q1))
    if d < 0.0:
        q1, d = -q1, -d
    if d > 0.9995:  # nearly parallel: normalized lerp
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(1.0, d))
    s = math.sin(theta)
    return (math.sin((1.0 - t) * theta) * q0 + math.sin(t * theta) * q1) / s


def catmull_rom(p0, p1, p2, p3, t: float) -> np.ndarray:
    """Uniform Catmull-Rom point between p1 (t=0) and p2 (t=1)."""
    p0, p1, p2, p3 = (np.asarray(p, np.float64) for p in (p0, p1, p2, p3))
    t2, t3 = t * t, t * t * t
    return 0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)


def interpolate(keyframes: list[Keyframe], frames: int) -> list[Keyframe]:
    """`frames` keyframes evenly spaced in keyframe index from the first keyframe to the last."""
    if not keyframes:
        raise PathError("camera path: no keyframes")
    if frames < 1:
        raise PathError(f"frames: expected at least 1, got {frames}")
    k = len(keyframes)
    if k == 1:
        return [keyframes[0]] * frames
    pos = [np.asarray(kf.pose[:3], np.float64) for kf in keyframes]
    out = []
    for i in range(frames):
        u = (k - 1) * (i / (frames - 1) if frames > 1 else 0.0)
        j = min(int(math.floor(u)), k - 2)
        t = u - j
        p = catmull_rom(pos[max(j - 1, 0)], pos[j], pos[j + 1], pos[min(j + 2, k - 1)], t)
        q = slerp(keyframes[j].pose[3:], keyframes[j + 1].pose[3:], t)
        fov = (1.0 - t) * keyframes[j].fov_y + t * keyframes[j + 1].fov_y
        out.append(Keyframe(np.r_[p, q].astype(np.float64), float(fov)))
    return out


def _orbit_frame(up) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, a, b): the unit `up` and two unit vectors completing a right-handed frame; for +Y up, a = +X
    and b = +Z (so yaw 0 looks from +Z, as before up vectors were supported)."""
    u = np.asarray(up, np.float64)
    n = np.linalg.norm(u)
    if not (np.isfinite(u).all() and n > 1e-9):
        raise PathError(f"up: expected a nonzero direction, got {up!r}")
    u = u / n
    ref = np.array([0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    a = np.cross(u, ref)
    a /= np.linalg.norm(a)
    b = np.cross(a, u)
    return u, a, b


def orbit(center, distance: float, frames: int, *, elevation_deg: float = 20.0, start_yaw_deg: float = 0.0,
          fov_y: float = DEFAULT_FOV_Y, turns: float = 1.0, up=(0.0, 1.0, 0.0)) -> list[Keyframe]:
    """One turn (by default) around the axis through `center` along `up` (the scene's up vector: +Y by
    drstudio's convention, +Z for many captures), looking at it with `up` up; frame i at yaw
    start + 360 * turns * i / frames (the last frame stops one step short of the first: loops cleanly);
    elevation above the plane perpendicular to `up`."""
    if frames < 1:
        raise PathError(f"frames: expected at least 1, got {frames}")
    if not distance > 0:
        raise PathError(f"orbit distance: expected > 0, got {distance}")
    c = np.asarray(center, np.float64)
    u, a, b = _orbit_frame(up)
    el = math.radians(float(np.clip(elevation_deg, -89.0, 89.0)))
    out = []
    for i in range(frames):
        yaw = math.radians(start_yaw_deg) + 2 * math.pi * turns * i / frames
        direction = math.cos(el) * (math.sin(yaw) * a + math.cos(yaw) * b) + math.sin(el) * u
        out.append(Keyframe(cv.look_at(c + distance * direction, c, u), float(fov_y)))
    return out


def scene_up(scene) -> np.ndarray:
    """The scene's up vector: the mean of its cameras' up directions (camera +Y in world space), as
    nerfstudio orients captures; +Y when that mean is degenerate or there are no cameras."""
    ups = [cv.quat_to_matrix(np.asarray(c.pose[3:], np.float64)) @ np.array([0.0, 1.0, 0.0])
           for c in scene.cameras.values()]
    if ups:
        m = np.mean(ups, axis=0)
        if np.linalg.norm(m) > 0.3:
            return m / np.linalg.norm(m)
    return np.array([0.0, 1.0, 0.0])


# -- files ----------------------------------------------------------------------------------------------

def _keyframe(item, i: int, fov_default: float, where: str) -> Keyframe:
    if not isinstance(item, dict):
        raise PathError(f"{where}: keyframes[{i}]: expected an object with \"pose\" or \"eye\"/\"target\"")
    fov = item.get("fov_y", fov_default)
    if not isinstance(fov, (int, float)) or not 0 < fov < 180:
        raise PathError(f"{where}: keyframes[{i}].fov_y: expected degrees in (0, 180), got {fov!r}")
    try:
        if "pose" in item:
            pose = np.asarray(item["pose"], np.float64)
            if pose.shape != (7,) or not np.isfinite(pose).all() or np.linalg.norm(pose[3:]) < 1e-9:
                raise PathError(f"{where}: keyframes[{i}].pose: expected 7 finite numbers [px, py, pz, qx, qy, "
                                "qz, qw] with a nonzero quaternion")
            pose[3:] /= np.linalg.norm(pose[3:])
        elif "eye" in item and "target" in item:
            pose = cv.look_at(np.asarray(item["eye"], np.float64), np.asarray(item["target"], np.float64),
                              item.get("up", (0.0, 1.0, 0.0)))
        else:
            raise PathError(f"{where}: keyframes[{i}]: expected \"pose\" or both \"eye\" and \"target\"")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PathError):
            raise
        raise PathError(f"{where}: keyframes[{i}]: {exc}") from None
    return Keyframe(pose, float(fov))


def load_path(path) -> list[Keyframe]:
    """Keyframes of a path file (module docstring); PathError naming the file and entry otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PathError(f"{path}: no such camera path file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PathError(f"{path}: not a JSON camera path: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keyframes"), list) or not data["keyframes"]:
        raise PathError(f"{path}: expected an object with a non-empty \"keyframes\" list")
    fov = data.get("fov_y", DEFAULT_FOV_Y)
    return [_keyframe(item, i, fov, str(path)) for i, item in enumerate(data["keyframes"])]


def path_json(keyframes: list[Keyframe]) -> dict:
    return {"keyframes": [{"pose": [float(v) for v in kf.pose], "fov_y": float(kf.fov_y)} for kf in keyframes]}


def save_path(path, keyframes: list[Keyframe]) -> Path:
    from drstudio.renderer.images import atomic_write

    text = json.dumps(path_json(keyframes), indent=1) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def parse_size(text: str) -> tuple[int, int]:
    """"WxH" -> (W, H): positive and even (H.264 with 4:2:0 chroma needs even sizes)."""
    parts = str(text).lower().split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise PathError(f"size: expected WIDTHxHEIGHT like 640x360, got {text!r}") from None
    check_size(w, h)
    return w, h


def check_size(width: int, height: int) -> None:
    if width < 2 or height < 2 or width % 2 or height % 2 or width > 8192 or height > 8192:
        raise PathError(f"size: expected even width and height in [2, 8192] (H.264), got {width}x{height}")


# -- frame renderers ------------------------------------------------------------------------------------

def render_banded(render, pose, intrinsics, width: int, height: int, band_rays: int = 16384, **kw) -> np.ndarray:
    """(H, W, 3) image rendered band of rows by band of rows through `render(pose, intrinsics, w, h, **kw)`
    (the band's intrinsics: the principal point moved up by the band's first row)."""
    image = np.empty((height, width, 3), np.float32)
    rows = max(1, band_rays // width)
    intr = np.asarray(intrinsics, np.float32)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        band = intr.copy()
        band[3] -= r0
        image[r0:r1] = render(pose, band, width, r1 - r0, **kw)
    return image


def _load_npz(path) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            zipped = fh.read(4) == b"PK\x03\x04"
        if not zipped:
            raise ValueError("not a zip archive")
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except FileNotFoundError:
        raise PathError(f"{path}: no such parameter file") from None
    except (OSError, ValueError, EOFError):
        raise PathError(f"{path}: not a params.npz of `drstudio optimize` (a NumPy .npz archive)") from None


class FieldFrames:
    """Renders a scene's (first) radiance field through any camera: values from the scene, or from a
    params.npz (`fields.NAME.density` / `.sh`, at any lattice of the field). With occupancy settings, an
    occupancy grid is built from the field first (empty-space skipping, as training renders)."""

    def __init__(self, scene, device=None, params: dict | None = None, params_file: str = "params"):
        import warp as wp
        from drstudio.renderer.render_field import FieldState, field_grid
        from drstudio.renderer.volume import OccupancyGrid

        name, f = next(iter(scene.fields.items()))
        if getattr(f, "type", "voxel_grid") != "voxel_grid":
            raise PathError(f"{scene.path}: field {name!r} is a {f.type} field; use TrainedFieldFrames")
        params = params or {}
        if params and not any(k.startswith(element_prefix(Group.FIELDS, name)) for k in params):
            raise PathError(f"{params_file}: no values of field {name!r} (it holds {', '.join(sorted(params))})")
        density = params.get(param_path(Group.FIELDS, name, "density"), f.density)
        sh = params.get(param_path(Group.FIELDS, name, "sh"), f.sh)
        dev = wp.get_device(device)
        try:
            arrays = [wp.array(np.asarray(a, np.float32), dtype=float, device=dev, requires_grad=False)
                      for a in (density, sh)]
            grid = field_grid(f, *arrays)
        except ValueError as exc:
            raise PathError(f"{params_file}: field {name!r}: {exc}") from None
        if f.storage == "float16":
            grid = grid.astype(wp.float16, requires_grad=False)
        occ = None
        if f.occupancy is not None:
            occ = OccupancyGrid(f.occupancy.resolution, grid.aabb, device=dev)
            for step in range(8):  # distinct random points per update (docs/volume.md)
                occ.update(grid.query_density, threshold=f.occupancy.threshold, step=step, points_per_cell=2)
        self.state = FieldState(f, grid, occ)
        bg = np.asarray(scene.background, np.float32)
        self.background = wp.array(bg if bg.ndim == 1 else np.zeros(3, np.float32), dtype=float, device=dev)
        self.center = (np.asarray(f.aabb[:3], np.float64) + np.asarray(f.aabb[3:], np.float64)) / 2.0

    def render(self, pose, intrinsics, width: int, height: int, time=None) -> np.ndarray:
        import warp as wp
        from drstudio.renderer.render_field import render_field_view

        dev = self.background.device
        out = render_field_view(self.state, wp.array(np.asarray(intrinsics, np.float32), dtype=float, device=dev),
                                wp.array(np.asarray(pose, np.float32), dtype=float, device=dev), width, height,
                                self.background, self.state.occupancy)
        return out.image.numpy().reshape(height, width, 3).copy()


class TrainedFieldFrames:
    """Renders a neural, NeRF-W or dynamic field (whose values only make sense with the scene's training set-up:
    the network layout, the per-image embeddings, the time axis) through any camera: the scene's `Problem` is
    built, `values` (a params.npz) are set, and frames come from `FieldTraining.render_free` (NeRF-W: the static
    component with the mean appearance embedding; dynamic: at the frame's time, `time_range` for the sweep)."""

    def __init__(self, scene, device=None, values: dict | None = None, params_file: str = "params"):
        from drstudio.renderer.optim.problem import Problem

        name, f = next(iter(scene.fields.items()))
        if scene.optimize is None:
            raise PathError(f"{scene.path}: a {f.type} field is defined by its training set-up; the scene has no "
                            "'optimize' section")
        values = values or {}
        if values and not any(k.startswith(element_prefix(Group.FIELDS, name)) for k in values):
            raise PathError(f"{params_file}: no values of field {name!r} (it holds {', '.join(sorted(values))})")
        self.problem = Problem(scene, device)
        for path, value in values.items():
            if path not in self.problem.ds.arrays:
                raise PathError(f"{params_file}: {path!r} is not a parameter of {scene.path}")
            try:
                self.problem.ds.set(path, np.asarray(value, np.float32))
            except ValueError as exc:
                raise PathError(f"{params_file}: {path}: {exc}") from None
        self.training = self.problem.field_training
        aabb = np.asarray(f.aabb, np.float64).ravel()
        self.center = (aabb[:3] + aabb[3:]) / 2.0

    def time_range(self):
        return self.training.time_range()

    def render(self, pose, intrinsics, width: int, height: int, time=None) -> np.ndarray:
        return np.asarray(self.training.render_free(np.asarray(pose, np.float32), np.asarray(intrinsics, np.float32),
                                                    int(width), int(height), time=time), np.float32)


class MeshFrames:
    """Renders a scene's meshes with the differentiable renderer through any camera, with `values`
    (dotted path -> array, e.g. a params.npz or the viewer's current values) set first."""

    def __init__(self, scene, device=None, values: dict | None = None, params_file: str = "params"):
        from drstudio.renderer.device_scene import DeviceScene

        if not scene.cameras:
            raise PathError(f"{scene.path}: the scene has no camera (the renderer needs one for its settings)")
        self.ds = DeviceScene(scene, device)
        for path, value in (values or {}).items():
            if path not in self.ds.arrays:
                raise PathError(f"{params_file}: {path!r} is not a parameter of {scene.path}")
            try:  # within the kind's range, as at load: bounds that keep the render finite
                self.ds.set(path, np.asarray(value, np.float32), check_range=True)
            except ValueError as exc:
                raise PathError(f"{params_file}: {exc}") from None
        for arr in self.ds.arrays.values():
            arr.requires_grad = False  # read-only renders: no gradient buffers
        self.frame = self.ds.prepare()
        self.camera = next(iter(scene.cameras))
        verts = [np.asarray(m.vertices) for m in scene.meshes.values()]
        pts = np.concatenate(verts) if verts else np.zeros((1, 3))
        self.center = (pts.min(axis=0) + pts.max(axis=0)) / 2.0

    def render(self, pose, intrinsics, width: int, height: int, time=None) -> np.ndarray:
        import warp as wp
        from drstudio.renderer.render import render_view

        dev = self.ds.device
        out = render_view(self.ds, self.frame, self.camera,
                          pose=wp.array(np.asarray(pose, np.float32), dtype=float, device=dev),
                          intrinsics=wp.array(np.asarray(intrinsics, np.float32), dtype=float, device=dev),
                          width=width, height=height)
        return out.numpy().reshape(height, width, 3).copy()


def scene_frames(scene, device=None, params_path=None):
    """FieldFrames for a scene with fields, else MeshFrames; trained values from `params_path`."""
    values = _load_npz(params_path) if params_path else None
    name = str(params_path) if params_path else "params"
    if scene.fields:
        kind = getattr(next(iter(scene.fields.values())), "type", "voxel_grid")
        if kind != "voxel_grid":
            return TrainedFieldFrames(scene, device, values, name)
        return FieldFrames(scene, device, values, name)
    return MeshFrames(scene, device, values, name)


def default_orbit(scene, frames_renderer, frames: int) -> list[Keyframe]:
    """The orbit `drstudio video --path orbit` renders: around the field's box center (or the meshes'),
    about the scene's up vector (`scene_up`), at the first camera's distance, elevation and field of view."""
    center = frames_renderer.center
    cam = next(iter(scene.cameras.values()), None)
    if cam is None:
        return orbit(center, 4.0, frames)
    up = scene_up(scene)
    u, a, b = _orbit_frame(up)
    d = np.asarray(cam.pose[:3], np.float64) - center
    dist = float(np.linalg.norm(d)) or 4.0
    elevation = math.degrees(math.asin(float(np.clip(np.dot(d, u) / dist, -1.0, 1.0))))
    yaw = math.degrees(math.atan2(np.dot(d, a), np.dot(d, b)))
    return orbit(center, dist, frames, elevation_deg=float(np.clip(elevation, -60, 60)), start_yaw_deg=yaw,
                 fov_y=cv.intrinsics_to_fov_y(cam.intrinsics, cam.height), up=up)


# -- the video ------------------------------------------------------------------------------------------

def write_video(out, frames, width: int, height: int, render, *, fps: float = 24.0, times=None,
                progress=None, cancel: threading.Event | None = None) -> Path:
    """Render each `Keyframe` of `frames` at width x height through `render(pose, intrinsics, w, h,
    time=...)` (linear RGB), sRGB-encode it and encode an H.264 mp4 at `out`, written to a temporary file
    in the same folder and renamed into place at the end. `progress(done, total)` after each frame;
    `cancel` set: stop, remove the temporary file, raise InterruptedError."""
    import imageio.v2 as imageio

    out = Path(out)
    check_size(width, height)
    if out.suffix.lower() != ".mp4":
        raise PathError(f"{out}: the output must be an .mp4 file")
    if not out.parent.is_dir():
        raise PathError(f"{out}: folder {out.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".partial.mp4", dir=out.parent)
    os.close(fd)
    try:
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=float(fps), codec="libx264",
                                    pixelformat="yuv420p", quality=8, macro_block_size=2, ffmpeg_log_level="error")
        try:
            for i, kf in enumerate(frames):
                if cancel is not None and cancel.is_set():
                    raise InterruptedError("video export cancelled")
                intr = cv.fov_y_to_intrinsics(kf.fov_y, width, height)
                t = None if times is None else times[i]
                img = render(kf.pose, intr, width, height, time=t)
                bad = int(np.count_nonzero(~np.isfinite(img).all(axis=-1)))
                if bad:  # a trained field can still overflow float32: say so instead of encoding garbage
                    raise PathError(f"{out}: frame {i} has {bad} non-finite pixel{'s' * (bad != 1)} (inf or NaN: "
                                    "a value overflowed float32 while rendering); the video was not written")
                writer.append_data(np.round(cv.linear_to_srgb(img) * 255.0).astype(np.uint8))
                if progress is not None:
                    progress(i + 1, len(frames))
        finally:
            writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


class VideoJob:
    """`write_video` in a background thread, with progress for a UI: `done`/`total` frames, `state`
    (running, finished, cancelled, error), `message`, `seconds`."""

    def __init__(self, out, frames, width, height, render, *, fps=24.0, times=None):
        self.out, self.total, self.done = Path(out), len(frames), 0
        self.state, self.message, self.seconds = "running", "", 0.0
        self._cancel = threading.Event()
        self._args = (out, frames, width, height, render)
        self._kw = dict(fps=fps, times=times)
        self._thread = threading.Thread(target=self._run, name="drstudio-video", daemon=True)
        self._thread.start()

    def _progress(self, done: int, total: int) -> None:
        self.done = done

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            write_video(*self._args, progress=self._progress, cancel=self._cancel, **self._kw)
            self.state, self.message = "finished", f"wrote {self.out}"
        except InterruptedError:
            self.state, self.message = "cancelled", "cancelled (nothing written)"
        except Exception as exc:
            self.state, self.message = "error", f"video export failed: {exc}"
        self.seconds = time.perf_counter() - t0

    def cancel(self) -> None:
        self._cancel.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.state == "running"
