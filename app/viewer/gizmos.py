"""ImGuizmo handles on the target scene: drag the selected light, mesh or camera of the target
scene in the viewport and the viewer sends `set_target_value` (the engine re-renders the targets
and the optimizer chases them). Point lights translate, directional lights rotate (the gizmo's +Z
axis is the direction the light travels), meshes translate/rotate/scale, cameras translate/rotate.
Commands go out at most every TARGET_INTERVAL seconds while dragging, and once more on release."""

from __future__ import annotations

import numpy as np
from drstudio.renderer import conventions as cv
from drstudio.renderer.optim import commands
from drstudio.renderer.params import Group, camera_pose, param_path
from imgui_bundle import imguizmo

from . import geometry
from .state import AppState

gizmo = imguizmo.im_guizmo
TARGET_INTERVAL = 0.25  # s between target re-renders while a gizmo is dragged
_OPS = {"translate": gizmo.OPERATION.translate, "rotate": gizmo.OPERATION.rotate,
        "scale": gizmo.OPERATION.scale}


def to_matrix16(m: np.ndarray):
    """ImGuizmo's column-major Matrix16 of a row-major (4, 4) matrix."""
    return gizmo.Matrix16([float(x) for x in np.asarray(m, np.float64).T.reshape(-1)])


def from_matrix16(m16) -> np.ndarray:
    return np.asarray(m16.values, np.float64).reshape(4, 4).T.copy()


def _orthonormal(r: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(r)
    q = u @ vt
    if np.linalg.det(q) < 0:
        u[:, -1] *= -1
        q = u @ vt
    return q


def _frame_along(z: np.ndarray) -> np.ndarray:
    """A rotation whose +Z column is the unit vector z."""
    z = cv.normalize(z)
    helper = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = cv.normalize(np.cross(helper, z))
    return np.stack([x, np.cross(z, x), z], axis=1)


def target_matrix(state: AppState, group: str, name: str):
    """(object matrix, operation name, mode) of the selected item's target, or None without a gizmo."""
    t = state.targets
    op = state.gizmo.operation
    if group == Group.LIGHTS and name in state.scene.point_lights:
        m = np.eye(4)
        m[:3, 3] = t[param_path(Group.LIGHTS, name, "position")]
        return m, "translate", gizmo.MODE.world
    if group == Group.LIGHTS and name in state.scene.directional_lights:
        center, radius = state.scene_bounds()
        d = cv.normalize(t[param_path(Group.LIGHTS, name, "direction")])
        m = np.eye(4)
        m[:3, :3] = _frame_along(d)
        m[:3, 3] = center - d * radius * 1.6
        return m, "rotate", gizmo.MODE.local
    if group == Group.MESHES:
        _, translation, rotation, scale = geometry.mesh_values(t, name)
        m = geometry.mesh_matrix(translation, rotation, scale)
        return m, op, gizmo.MODE.local if op == "scale" else gizmo.MODE.world
    if group == Group.CAMERAS:
        m = cv.pose_to_matrix(t[camera_pose(name)])
        return m, "rotate" if op == "rotate" else "translate", gizmo.MODE.local
    return None


def values_from_matrix(state: AppState, group: str, name: str, m: np.ndarray) -> dict:
    """Target values (dotted path -> array) a manipulated matrix stands for."""
    if group == Group.LIGHTS and name in state.scene.point_lights:
        return {param_path(Group.LIGHTS, name, "position"): m[:3, 3].astype(np.float32)}
    if group == Group.LIGHTS:
        return {param_path(Group.LIGHTS, name, "direction"): cv.normalize(m[:3, 2]).astype(np.float32)}
    if group == Group.MESHES:
        scale = np.linalg.norm(m[:3, :3], axis=0)
        rot = _orthonormal(m[:3, :3] / np.maximum(scale, 1e-12)[None, :])
        _, translation, rotation, scale_path = geometry.mesh_paths(name)
        return {translation: m[:3, 3].astype(np.float32), rotation: cv.quat_from_matrix(rot).astype(np.float32),
                scale_path: scale.astype(np.float32)}
    if group == Group.CAMERAS:
        r = np.eye(4)
        r[:3, :3] = _orthonormal(m[:3, :3])
        r[:3, 3] = m[:3, 3]
        return {camera_pose(name): cv.matrix_to_pose(r).astype(np.float32)}
    return {}


def edit_selected_target(state: AppState) -> bool:
    """Draw the gizmo of the selected item's target in the current window (after `set_rect`) and
    send the edits. Returns True while the gizmo is hovered or dragged."""
    sel = state.selection
    if sel is None or not state.gizmo.show_targets:
        return False
    found = target_matrix(state, *sel)
    if found is None:
        return False
    m, op, mode = found
    _, _, w, h = state.viewport_rect
    view = to_matrix16(state.camera.view())
    proj = to_matrix16(state.camera.projection(w / max(h, 1.0)))
    m16 = to_matrix16(m)
    gizmo.push_id(f"{sel[0]}.{sel[1]}")
    changed = gizmo.manipulate(view, proj, _OPS[op], mode, m16)
    using = gizmo.is_using()  # inside the ID scope: is_using compares the editing ID with the current one
    over = gizmo.is_over()
    gizmo.pop_id()
    if changed:
        for path, value in values_from_matrix(state, *sel, from_matrix16(m16)).items():
            if not np.allclose(value, state.targets[path], rtol=0.0, atol=1e-7):
                state.send_throttled(("gizmo", path), commands.SetTargetValue, path, value,
                                     interval=TARGET_INTERVAL)
    if not using:  # released (or never dragged): deliver any pending final value
        for info in state.item_params(*sel):
            state.release(("gizmo", info.path))
    state.gizmo_dragging = using
    return using or over
