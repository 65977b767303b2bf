"""The "Camera path" window: record a path from the free camera (keyframes, or a one-click orbit
around the orbit target) and export it as an mp4 in a background thread (app.camera_path.VideoJob),
with a progress readout. Fields render the field (`FieldSource`: `render_free`, the values of the
moment, so a running optimizer keeps changing it during the export); mesh scenes the differentiable
renderer with the viewer's values at the start of the export (`MeshFrames`, its own DeviceScene). The
window only starts and reads jobs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from drstudio.app import camera_path as cp
from imgui_bundle import imgui

from .state import AppState
from .windows import begin, remember


@dataclass
class VideoSettings:
    keyframes: list = field(default_factory=list)  # camera_path.Keyframe, from the free camera
    orbit: bool = False  # True: the one-click orbit instead of the keyframes
    orbit_params: tuple = ()  # (center, distance, elevation_deg, start_yaw_deg, fov_y)
    frames: int = 48
    fps: int = 24
    width: int = 320
    height: int = 240
    out: str = "camera_path.mp4"
    path_file: str = "camera_path.json"
    job: object = None  # camera_path.VideoJob
    message: str = ""


def settings(state: AppState) -> VideoSettings:
    if state.video is None:
        state.video = VideoSettings()
    return state.video


def free_camera_keyframe(state: AppState) -> cp.Keyframe:
    return cp.Keyframe(np.asarray(state.camera.pose(), np.float64), float(state.camera.fov_y))


def orbit_here(state: AppState) -> None:
    """One turn around the free camera's orbit target, from where the camera is, at its distance and
    elevation (what the "Orbit" button records)."""
    v, cam = settings(state), state.camera
    v.orbit = True
    v.orbit_params = (np.asarray(cam.target, np.float64).copy(), float(cam.distance), math.degrees(cam.pitch),
                      math.degrees(cam.yaw), float(cam.fov_y))


def path_frames(state: AppState) -> list[cp.Keyframe]:
    v = settings(state)
    if v.orbit:
        center, dist, el, yaw, fov = v.orbit_params
        return cp.orbit(center, dist, v.frames, elevation_deg=el, start_yaw_deg=yaw, fov_y=fov)
    return cp.interpolate(v.keyframes, v.frames)


def frame_renderer(state: AppState):
    """render(pose, intrinsics, w, h, time=None) for the export thread (module docstring)."""
    if state.preview is not None:
        from .field_preview import FieldSource

        source = FieldSource(state.problem)  # the live values: pause the optimizer for a fixed field

        def render(pose, intrinsics, width, height, time=None):
            return cp.render_banded(source.render, pose, intrinsics, width, height, time=time)

        return render
    values = {k: np.array(v, np.float32) for k, v in state.values.items()}
    scene = state.scene
    holder = {}

    def render(pose, intrinsics, width, height, time=None):
        if "frames" not in holder:  # built on the export thread
            holder["frames"] = cp.MeshFrames(scene, state.problem.ds.device if state.problem else None, values)
        return holder["frames"].render(pose, intrinsics, width, height)

    return render


def start_export(state: AppState) -> None:
    """Start the export job of the current path (no-op while one runs); errors land in `message`."""
    v = settings(state)
    if v.job is not None and v.job.running:
        return
    try:
        cp.check_size(v.width, v.height)
        out = Path(v.out).expanduser()
        if out.suffix.lower() != ".mp4":
            raise cp.PathError(f"{out}: the output must be an .mp4 file")
        if not out.parent.is_dir():
            raise cp.PathError(f"{out}: folder {out.parent} does not exist")
        frames = path_frames(state)
        times = None
        rng = state.preview.time_range_value if state.preview is not None else None
        if rng is not None:  # dynamic fields: time runs through its range over the video
            times = list(np.linspace(float(rng[0]), float(rng[1]), len(frames)))
        v.job = cp.VideoJob(out, frames, v.width, v.height, frame_renderer(state), fps=v.fps, times=times)
        v.message = ""
    except (cp.PathError, ValueError) as exc:
        v.message = str(exc)


def camera_path_panel(state: AppState) -> None:
    if not begin(state, "Camera path"):
        imgui.end()
        return
    v = settings(state)
    imgui.text("orbit (one turn)" if v.orbit else f"{len(v.keyframes)} keyframes")
    if imgui.button("Add keyframe"):
        v.orbit = False
        v.keyframes.append(free_camera_keyframe(state))
    remember(state, "path.add")
    imgui.same_line()
    if imgui.button("Orbit"):
        orbit_here(state)
    remember(state, "path.orbit")
    imgui.same_line()
    if imgui.button("Clear"):
        v.keyframes.clear()
        v.orbit = False
    imgui.set_next_item_width(140)
    _, v.path_file = imgui.input_text("##pathfile", v.path_file)
    imgui.same_line()
    if imgui.button("Save path") and (v.keyframes or v.orbit):
        try:
            cp.save_path(Path(v.path_file).expanduser(), v.keyframes if not v.orbit else path_frames(state))
            v.message = f"saved {v.path_file}"
        except OSError as exc:
            v.message = f"cannot save the path: {exc}"
    imgui.same_line()
    if imgui.button("Load"):
        try:
            v.keyframes, v.orbit = cp.load_path(Path(v.path_file).expanduser()), False
            v.message = f"loaded {len(v.keyframes)} keyframes"
        except cp.PathError as exc:
            v.message = str(exc)
    imgui.separator()
    imgui.set_next_item_width(90)
    _, v.frames = imgui.input_int("frames", v.frames)
    v.frames = max(1, min(v.frames, 10000))
    imgui.same_line()
    imgui.set_next_item_width(90)
    _, v.fps = imgui.input_int("fps", v.fps)
    v.fps = max(1, min(v.fps, 120))
    imgui.set_next_item_width(140)
    _, size = imgui.input_int2("size (even)", [v.width, v.height])
    v.width, v.height = int(size[0]), int(size[1])
    imgui.set_next_item_width(-60)
    _, v.out = imgui.input_text("mp4##out", v.out)
    job = v.job
    running = job is not None and job.running
    imgui.begin_disabled(running or not (v.keyframes or v.orbit))
    if imgui.button("Export video"):
        start_export(state)
    imgui.end_disabled()
    remember(state, "path.export")
    if running:
        imgui.same_line()
        if imgui.button("Cancel"):
            job.cancel()
    if job is not None:
        imgui.progress_bar(job.done / max(job.total, 1), (-1.0, 0.0), f"{job.done}/{job.total} frames")
        remember(state, "path.progress")
        if not running:
            imgui.text_wrapped(f"{job.message} ({job.seconds:.1f} s)")
    if v.message:
        imgui.text_colored((1.0, 0.6, 0.4, 1.0), v.message)
    imgui.end()
