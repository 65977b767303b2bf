"""The viewer-editor (`drstudio view`): a docked OpenGL + ImGui window over the optimization engine.

Modules: `app` (window, loop, lifecycle), `state` (the one AppState), `viewport` (3D view and free
camera input), `camera` (orbit camera and GL matrices), `geometry` (host-side display geometry),
`panels` (ImGui windows), `windows` (what every window function shares), `image_panes` (GPU
compositing of the image panes), `overlays` (gradient overlays, colormaps, legends), `gizmos` (ImGuizmo
handles on the target scene), `lights` (the lights packed as the renderer packs them, for the shaders),
`shadows` (shadow maps), `uploads` (NumPy / CUDA arrays to GL textures), `glsl` (shader files from
shaders/), `replay_mode` (the viewer over a recorded session, `drstudio replay DIR`, reading
`app.replay_source`).
"""

from __future__ import annotations


def run_viewer(scene_path: str | None, **kwargs) -> int:
    """See `app.viewer.app.run_viewer` (imported on call: importing the package opens no GL library)."""
    from .app import run_viewer as run

    return run(scene_path, **kwargs)


def run_replay(source, *, speed: float = 1.0, max_frames: int | None = None, on_frame=None) -> int:
    """See `app.viewer.replay_mode.run_replay` (imported on call, like `run_viewer`)."""
    from .replay_mode import run_replay as run

    return run(source, speed=speed, max_frames=max_frames, on_frame=on_frame)


__all__ = ["run_replay", "run_viewer"]
