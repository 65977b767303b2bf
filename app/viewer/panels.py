"""The docked ImGui windows: Scene, Inspector, Optimizer, Views, Overlays, Images, and the menu/status
bar. Each is a function of the one `AppState`; they read its snapshot and values and change things
only through `state.send` / `state.send_throttled` (engine commands)."""

from __future__ import annotations

import math

import moderngl
import numpy as np
from drstudio.renderer import conventions as cv
from drstudio.renderer import progress
from drstudio.renderer.optim import commands
from drstudio.renderer.optim.identifiability import underdetermined
from drstudio.renderer.params import Group, Kind, camera_intrinsics, camera_pose
from imgui_bundle import imgui, implot

from ..plot_scale import log_axis_limits  # noqa: F401  (re-exported: tests and older callers import it here)
from .camera_panel import camera_path_panel
from .image_panes import fit, show
from .menus import edit_menu, file_menu, render_menu, view_menu
from .overlays import COLORMAPS, OVERLAY_TEXTURES, OVERLAYS, auto_vmax, draw_legend, magnitudes
from .state import GROUPS, AppState, ParamInfo
from .windows import begin, remember

WINDOWS = ("Viewport", "Images", "Scene", "Inspector", "Optimizer", "Views", "Overlays", "Camera path")
PSNR_TERM = "psnr_test_db"  # the engine's held-out PSNR read-out (scenes with fields), a loss term in dB
STATE_COLORS = {"running": (0.4, 0.9, 0.4, 1.0), "paused": (0.95, 0.8, 0.3, 1.0),
                "finished": (0.5, 0.8, 1.0, 1.0), "error": (1.0, 0.35, 0.35, 1.0),
                "replay": (0.35, 0.8, 1.0, 1.0)}
EDIT_INTERVAL = 0.1  # s between value commands while a widget is dragged


# -- layout ---------------------------------------------------------------------------------------

def dock_layout(dockspace_id, bottom_window: str | None = None) -> None:
    """The default layout: Scene over Inspector on the left, the 3D view in the middle over the image
    panes and the view thumbnails, the Optimizer over the Overlays on the right; `bottom_window`: a window
    docked in a full-width strip under all of them (replay mode's Timeline)."""
    internal = imgui.internal
    vp = imgui.get_main_viewport()
    internal.dock_builder_remove_node(dockspace_id)
    internal.dock_builder_add_node(dockspace_id, imgui.internal.DockNodeFlagsPrivate_.dock_space.value)
    internal.dock_builder_set_node_size(dockspace_id, vp.work_size)

    def split(node, direction, ratio):
        s = internal.dock_builder_split_node(node, direction, ratio)
        return s.id_at_dir, s.id_at_opposite_dir

    root = dockspace_id
    if bottom_window:
        strip, root = split(dockspace_id, imgui.Dir.down, 0.15)
        internal.dock_builder_dock_window(bottom_window, strip)
    left, rest = split(root, imgui.Dir.left, 0.2)
    right, center = split(rest, imgui.Dir.right, 0.33)  # the parameter table's paths need the width
    bottom, center = split(center, imgui.Dir.down, 0.37)
    views, images = split(bottom, imgui.Dir.right, 0.26)
    inspector, scene = split(left, imgui.Dir.down, 0.58)
    overlays, optimizer = split(right, imgui.Dir.down, 0.42)
    for name, node in (("Scene", scene), ("Inspector", inspector), ("Viewport", center), ("Images", images),
                       ("Views", views), ("Optimizer", optimizer), ("Overlays", overlays), ("Camera path", overlays)):
        internal.dock_builder_dock_window(name, node)  # Camera path: a tab behind Overlays
    internal.dock_builder_finish(dockspace_id)


def menu_bar(state: AppState) -> None:
    if not imgui.begin_main_menu_bar():
        return
    file_menu(state)
    edit_menu(state)
    if not state.read_only and imgui.begin_menu("Optimize"):
        for label, command in (("Start", commands.Start), ("Pause", commands.Pause), ("Step", commands.Step),
                               ("Reset", commands.Reset)):
            if imgui.menu_item(label, "", False)[0]:
                state.send(command)
        imgui.end_menu()
    render_menu(state)
    view_menu(state)
    snap = state.snapshot
    imgui.separator()
    imgui.text_colored(STATE_COLORS.get(snap.state, (0.8, 0.8, 0.8, 1.0)), snap.state)
    imgui.text(f"step {snap.step}/{state.steps}   loss {loss_text(snap, 4)}   {snap.steps_per_second:.1f} steps/s   "
               f"{state.fps:.0f} fps")
    phase = progress.current()  # work on another thread (the engine's, the preview's) the user waits for
    if phase is not None:
        imgui.text_colored(STATE_COLORS["paused"], phase.describe())
    for error in errors(state):  # cut to the bar's width; the full message in the tooltip (and the popup)
        imgui.text_colored(STATE_COLORS["error"], fit_text(error, imgui.get_content_region_avail().x))
        if imgui.is_item_hovered():
            imgui.set_tooltip(error)
    imgui.end_main_menu_bar()


def fit_text(text: str, width: float) -> str:
    """`text`, or its longest head that fits `width` pixels with "..." appended."""
    if imgui.calc_text_size(text).x <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix whose "prefix..." fits
        mid = (lo + hi + 1) // 2
        if imgui.calc_text_size(text[:mid] + "...").x <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "..."


def loss_text(snap, digits: int = 5) -> str:
    """The loss to show: "-" before the first step (no loss yet, not "nan"); a NaN of a step shows as nan."""
    if snap.step == 0 and not math.isfinite(snap.loss):
        return "-"
    return f"{snap.loss:.{digits}g}"


def errors(state: AppState) -> list[str]:
    """What went wrong, to show: the engine's last failed command or step, and the last command the
    engine would not queue (`AppState.send_error`)."""
    return [e for e in (state.snapshot.error, state.send_error) if e]


# -- Scene ----------------------------------------------------------------------------------------

def scene_panel(state: AppState) -> None:
    if begin(state, "Scene"):
        sc = state.scene
        flags = imgui.TreeNodeFlags_.default_open
        for group in GROUPS:
            names = state.items(group)
            if not imgui.tree_node_ex(f"{group.capitalize()} ({len(names)})###{group}", flags):
                continue
            for name in names:
                free = sum(1 for p in state.item_params(group, name) if p.path in state.free)
                detail = ""
                if group is Group.LIGHTS:
                    detail = state.light_type(name)
                elif group is Group.MATERIALS:
                    detail = sc.materials[name].model
                elif group is Group.MESHES:
                    m = sc.meshes[name]
                    detail = f"{len(m.vertices)} v, {len(m.faces)} f"
                elif group is Group.CAMERAS:
                    c = sc.cameras[name]
                    detail = f"{c.width}x{c.height}" + ("  (view)" if name in state.views else "")
                label = f"{name}  [{detail}]" + (f"  {free} free" if free else "")
                clicked, _ = imgui.selectable(f"{label}##{group}.{name}", state.selection == (group, name))
                remember(state, f"scene.{group}.{name}")
                if clicked:
                    state.selection = (group, name)
            imgui.tree_pop()
    imgui.end()


# -- Inspector ------------------------------------------------------------------------------------

def quat_to_euler_deg(q) -> np.ndarray:
    """Inverse of conventions.quat_from_euler_deg (R = Rz Ry Rx)."""
    r = cv.quat_to_matrix(q) if np.linalg.norm(q) > 1e-12 else np.eye(3)
    y = math.asin(float(np.clip(-r[2, 0], -1.0, 1.0)))
    x = math.atan2(r[2, 1], r[2, 2])
    z = math.atan2(r[1, 0], r[0, 0])
    return np.degrees([x, y, z])


def _drag3(which: str, label: str, v: np.ndarray, speed: float) -> np.ndarray | None:
    changed, out = imgui.drag_float3(f"{which}{label}", v.tolist(), speed, format="%.4f")
    return np.asarray(out, np.float32) if changed else None


def _light_color(which: str, label: str, v: np.ndarray, speed: float) -> np.ndarray | None:
    flags = imgui.ColorEditFlags_.float | imgui.ColorEditFlags_.hdr
    changed, out = imgui.color_edit3(f"{which}{label}", v.tolist(), flags)
    return np.asarray(out, np.float32) if changed else None


def _radiance(which: str, label: str, v: np.ndarray, speed: float) -> np.ndarray | None:
    """A constant emission or environment radiance (1x1x3): an HDR color, kept >= 0."""
    out = _light_color(which, label, v.reshape(3), speed)
    return None if out is None else np.maximum(out, 0).reshape(v.shape).astype(np.float32)


def _intensity(which: str, label: str, v: np.ndarray, speed: float) -> np.ndarray | None:
    lo = Kind.INTENSITY.range[0]
    changed, out = imgui.drag_float(f"{which}{label}", float(v.reshape(-1)[0]), speed, lo, 1e6, "%.4f")
    return np.array([max(out, lo)], np.float32) if changed else None


# The Inspector's value labels are short ("current", "target rot"): at 1280x720 the window leaves them the
# width of "fill current" (INSPECTOR_LABEL); what a label abbreviates is in the widget's tooltip.
INSPECTOR_LABEL = "fill current"


def _quaternion(which: str, label: str, v: np.ndarray, speed: float) -> np.ndarray | None:
    changed, out = imgui.drag_float3(f"{which} rot{label}", quat_to_euler_deg(v).tolist(), 0.5, format="%.2f")
    _tooltip(f"{which} rotation as Euler angles in degrees (X, Y, Z)")
    return cv.quat_from_euler_deg(out).astype(np.float32) if changed else None


def _pose(which: str, label: str, v: np.ndarray, speed: float) -> np.ndarray | None:
    c1, pos = imgui.drag_float3(f"{which} pos{label}", v[:3].tolist(), speed, format="%.4f")
    _tooltip(f"{which} camera position (world)")
    c2, eul = imgui.drag_float3(f"{which} rot{label}", quat_to_euler_deg(v[3:]).tolist(), 0.5, format="%.2f")
    _tooltip(f"{which} camera rotation as Euler angles in degrees (X, Y, Z)")
    return np.r_[pos, cv.quat_from_euler_deg(eul)].astype(np.float32) if c1 or c2 else None


def _intrinsics(which: str, label: str, v: np.ndarray, speed: float) -> np.ndarray | None:
    changed, out = imgui.drag_float4(f"{which}{label}", v.tolist(), 0.5, format="%.2f")
    _tooltip(f"{which} intrinsics: fx, fy, cx, cy in pixels")
    return np.asarray(out, np.float32) if changed else None


# editors of small values by kind: (number of elements the widget shows, widget(which, id label, value, speed))
EDITORS = {Kind.POSITION: (3, _drag3), Kind.SCALE: (3, _drag3), Kind.DIRECTION: (3, _drag3),
           Kind.COLOR: (3, _light_color), Kind.INTENSITY: (None, _intensity), Kind.QUATERNION: (None, _quaternion),
           Kind.POSE: (None, _pose), Kind.INTRINSICS: (None, _intrinsics),
           Kind.EMISSION: (3, _radiance), Kind.ENVIRONMENT: (3, _radiance)}


def _row_color(label: str, row: np.ndarray, speed: float):
    return imgui.color_edit3(label, row.tolist(), imgui.ColorEditFlags_.float)


def _row_uv(label: str, row: np.ndarray, speed: float):
    return imgui.drag_float2(label, row.tolist(), 0.001, format="%.4f")


def _row_position(label: str, row: np.ndarray, speed: float):
    return imgui.drag_float3(label, row.tolist(), speed, format="%.4f")


# per-vertex arrays are edited one row at a time: widget(label, row, speed) -> (changed, row)
ROW_EDITORS = {Kind.VERTICES: _row_position, Kind.COLORS: _row_color, Kind.UVS: _row_uv}


def _edit_texture(kind: Kind, v: np.ndarray, which: str, label: str) -> np.ndarray | None:
    """A constant texture (1x1) is edited as its value; a larger one can be filled with one value."""
    lo, hi = kind.range
    color = kind.channels == 3
    if v.shape[:2] == (1, 1):
        if color:
            changed, out = imgui.color_edit3(f"{which}{label}", v.reshape(3).tolist(), imgui.ColorEditFlags_.float)
        else:
            changed, out = imgui.slider_float(f"{which}{label}", float(v.reshape(-1)[0]), lo, hi)
        return np.asarray(out, np.float32).reshape(v.shape) if changed else None
    if color:
        mean = v.reshape(-1, 3).mean(axis=0)
        changed, out = imgui.color_edit3(f"fill {which}{label}", mean.tolist(),
                                         imgui.ColorEditFlags_.float | imgui.ColorEditFlags_.no_inputs)
    else:
        changed, out = imgui.slider_float(f"fill {which}{label}", float(np.clip(v.mean(), lo, hi)), lo, hi)
    return np.broadcast_to(np.asarray(out, np.float32), v.shape).copy() if changed else None


def _edit(state: AppState, info: ParamInfo, value: np.ndarray, which: str, speed: float) -> np.ndarray | None:
    """Widgets for one value; returns the edited value (or None). `which`: current or target."""
    kind, label = info.kind, f"##{which}.{info.path}"
    v = np.asarray(value, np.float32)
    if kind.is_texture:
        return _edit_texture(kind, v, which, label)
    row_editor = ROW_EDITORS.get(kind)
    if row_editor is not None:
        key = f"row.{info.path}"
        row = int(np.clip(state.inspector_rows.get(key, 0), 0, len(v) - 1))
        if state.read_only:  # choosing the row to look at is not an edit
            imgui.end_disabled()
        _, row = imgui.slider_int(f"index{label}", row, 0, len(v) - 1)
        if state.read_only:
            imgui.begin_disabled()
        state.inspector_rows[key] = row
        changed, out = row_editor(f"{which}{label}", v[row], speed)  # the row: the index slider above
        if not changed:
            return None
        new = v.copy()
        new[row] = out
        return new
    size, editor = EDITORS.get(kind, (None, None))
    if editor is None or (size is not None and v.size != size):
        imgui.text(np.array2string(v.reshape(-1)[:8], precision=4))
        return None
    return editor(which, label, v, speed)


def _send_edit(state: AppState, info: ParamInfo, new, which: str) -> None:
    command = commands.SetValue if which == "current" else commands.SetTargetValue
    key = (which, info.path)
    remember(state, f"edit.{which}.{info.path}")
    if new is not None:
        state.send_throttled(key, command, info.path, new, interval=EDIT_INTERVAL if which == "current" else 0.25)
    if imgui.is_item_deactivated_after_edit() or imgui.is_item_deactivated():
        state.release(key)


def _texture_previews(state: AppState, info: ParamInfo) -> None:
    gl = state.gl
    snap = state.snapshot
    v = state.values[info.path]
    h, w = v.shape[:2]
    if h * w <= 1:
        return
    grad = snap.texture_grads.get(info.path)
    shown = 2 + (grad is not None)
    spacing = imgui.get_style().item_spacing.x
    side = max(32.0, min(140.0, (imgui.get_content_region_avail().x - spacing * (shown - 1)) / shown))
    size = fit(w, h, side, side)
    mode = "color" if info.kind.channels == 3 else "value"
    for which, arr in (("current", v), ("target", state.targets.get(info.path))):
        if arr is None:
            continue
        src = gl.uploader.upload(f"preview.{which}.{info.path}", arr)
        out = gl.compositor.draw(f"preview.{which}.{info.path}", (w, h), mode, src, key=id(arr))
        imgui.begin_group()
        imgui.text(which)
        show(out, size)
        imgui.end_group()
        imgui.same_line()
    if grad is not None:
        ov = state.overlays
        vmax = auto_vmax([magnitudes(grad)]) if ov.auto_scale else float(ov.vmax["texture"])
        src = gl.uploader.upload(f"igrad.{info.path}", grad, nearest=True)
        out = gl.compositor.draw(f"igrad.{info.path}", (w, h), "heat", src,
                                 key=(id(grad), vmax, ov.log_scale, ov.colormap), heat_max=vmax,
                                 heat_log=ov.log_scale)
        imgui.begin_group()
        imgui.text("|gradient|")
        show(out, size)
        remember(state, f"inspector.grad.{info.path}")
        imgui.end_group()
        lo = imgui.get_cursor_screen_pos()
        draw_legend(imgui.get_window_draw_list(), (lo.x + 4, lo.y + 4), 160.0, 10.0, gl.lut.glo, vmax,
                    ov.log_scale, "|dL/d texel|")
        imgui.dummy((170.0, 14.0 + 2 * imgui.get_text_line_height() + 8))
    else:
        imgui.new_line()


def inspector_panel(state: AppState) -> None:
    if not begin(state, "Inspector"):
        imgui.end()
        return
    sel = state.selection
    if sel is None:
        imgui.text_wrapped("Select a mesh, material, light or camera in the Scene panel.")
        imgui.end()
        return
    imgui.push_item_width(-(imgui.calc_text_size(INSPECTOR_LABEL).x + imgui.get_style().item_inner_spacing.x))
    _inspector(state, sel)
    imgui.pop_item_width()
    imgui.end()


def _note(text: str) -> None:
    """A disabled-colored line that wraps at the window's edge (never clipped)."""
    imgui.push_style_color(imgui.Col_.text, imgui.get_style().color_(imgui.Col_.text_disabled))
    imgui.text_wrapped(text)
    imgui.pop_style_color()


def _inspector(state: AppState, sel) -> None:
    group, name = sel
    sc = state.scene
    snap = state.snapshot
    _, radius = state.scene_bounds()
    speed = radius * 0.005
    imgui.text(f"{group[:-1]} '{name}'")
    if group == Group.MESHES:
        m = sc.meshes[name]
        _note(f"{len(m.vertices)} vertices, {len(m.faces)} faces, from {m.source}")
        if imgui.small_button(f"material: {m.material}"):
            state.selection = (Group.MATERIALS, m.material)
    elif group == Group.LIGHTS:
        imgui.text_disabled(f"{state.light_type(name)} light")
    elif group == Group.MATERIALS:
        imgui.text_disabled(f"{sc.materials[name].model}, {sc.materials[name].wrap}")
    elif group == Group.CAMERAS:
        c = sc.cameras[name]
        imgui.text_disabled(f"{c.width}x{c.height}" + ("  target view" if name in state.views else ""))
        if name in state.views and not state.read_only and imgui.small_button("make active view"):
            state.send(commands.SetActiveView, name)
        imgui.same_line()
        if imgui.small_button("look through"):
            center, _ = state.scene_bounds()
            state.camera.look_through(state.values[camera_pose(name)], state.values[camera_intrinsics(name)],
                                      c.height, center)
    for info in state.item_params(group, name):
        imgui.push_id(info.path)
        imgui.separator_text(info.name)
        if info.optimizable:
            imgui.begin_disabled(state.read_only)
            changed, free = imgui.checkbox("free", info.path in state.free)
            imgui.end_disabled()
            remember(state, f"free.{info.path}")
            if changed:
                state.send(commands.SetFree, info.path, free)
        else:
            _note("fixed (not in optimize.parameters)")
        g, err = snap.grad_norms.get(info.path), snap.errors.get(info.path)
        readout = "   ".join(t for t in (None if g is None else f"|grad| {g:.3e}",
                                         None if err is None else f"err {err:.3e}") if t)
        if readout:  # beside the checkbox when it fits, else on its own (wrapped) line
            imgui.same_line()
            if imgui.calc_text_size(readout).x > imgui.get_content_region_avail().x:
                imgui.new_line()
            _note(readout)
        pg = snap.param_grads.get(info.path)
        if pg is not None and np.size(pg) <= 8:
            _note("grad " + np.array2string(np.asarray(pg).reshape(-1), precision=3))
        imgui.begin_disabled(state.read_only)  # replay: values shown, not editable
        new = _edit(state, info, state.values[info.path], "current", speed)
        _send_edit(state, info, new, "current")
        if info.path in state.targets and info.kind not in ROW_EDITORS:  # per-vertex targets: not editable
            new = _edit(state, info, state.targets[info.path], "target", speed)
            _send_edit(state, info, new, "target")
        imgui.end_disabled()
        if info.kind.is_texture:
            _texture_previews(state, info)
        imgui.pop_id()


# -- Optimizer ------------------------------------------------------------------------------------

def _tooltip(text: str) -> None:
    """`text` as the last item's hover tooltip (also when it is disabled), once the mouse rests on it (ImGui's
    normal delay, ~0.4 s: not in the way of clicks)."""
    flags = imgui.HoveredFlags_.allow_when_disabled | imgui.HoveredFlags_.delay_normal | imgui.HoveredFlags_.stationary
    if imgui.is_item_hovered(flags) and imgui.begin_tooltip():
        imgui.push_text_wrap_pos(imgui.get_font_size() * 24.0)  # a narrow box near the mouse, not a banner
        imgui.text_unformatted(text)
        imgui.pop_text_wrap_pos()
        imgui.end_tooltip()


def _button(state: AppState, label: str, name: str) -> bool:
    clicked = imgui.button(label)
    remember(state, name)
    return clicked


def optimizer_panel(state: AppState) -> None:
    if not begin(state, "Optimizer"):
        imgui.end()
        return
    snap = state.snapshot
    imgui.text_colored(STATE_COLORS.get(snap.state, (0.8, 0.8, 0.8, 1.0)), snap.state.upper())
    imgui.same_line()
    imgui.text(f"step {snap.step} / {state.steps}")
    for error in errors(state):
        imgui.text_colored(STATE_COLORS["error"], error)
    if state.read_only:  # replay: no run control; the recorded values, settings and plots
        imgui.text_disabled("replay of a recorded session (read-only): use the Timeline")
        imgui.text_wrapped(f"loss {loss_text(snap)}   recorded {snap.steps_per_second:.2f} steps/s   "
                           f"viewer {state.fps:.0f} fps")
        _parameter_table(state)
        _plots(state)
        _loss_weights(state)
        imgui.end()
        return
    if state.editor:  # no optimize section in the file: how to optimize anything (document.editor_scene)
        from .document import EDITOR_HELP

        imgui.push_style_color(imgui.Col_.text, (0.55, 0.8, 1.0, 1.0))
        imgui.text_wrapped(EDITOR_HELP)
        imgui.pop_style_color()
        remember(state, "optimizer.editor_help")
    for warning in underdetermined(state.free, state.views):
        imgui.push_style_color(imgui.Col_.text, STATE_COLORS["paused"])
        imgui.text_wrapped(f"warning: {warning}")
        imgui.pop_style_color()
        remember(state, "optimizer.warning")
    label, command = start_button(snap.state)
    imgui.begin_disabled(command is None)
    if _button(state, label, "button.start") and command is not None:
        state.send(command)
    imgui.end_disabled()
    _tooltip({"Start": "start optimizing from the current values", "Resume": "continue the paused optimization"}
             .get(label.split("###")[0], "the optimizer is running"))
    imgui.same_line()
    if _button(state, "Pause", "button.pause"):
        state.send(commands.Pause)
    _tooltip("pause after the current step")
    imgui.same_line()
    if _button(state, f"Step {state.step_count}", "button.step"):
        state.send(commands.Step, state.step_count)
    _tooltip("run this many steps, then pause (steps per click below)")
    imgui.same_line()
    if _button(state, "Reset", "button.reset"):
        state.send(commands.Reset)
    _tooltip("free parameters back to their initial values, optimizer state cleared, step 0 (clears undo)")
    imgui.set_next_item_width(110)
    changed, n = imgui.input_int("steps per click", state.step_count)
    if changed:
        state.step_count = max(1, n)
    imgui.set_next_item_width(110)
    changed, budget = imgui.input_int("step budget", state.steps, 100, 1000)
    _tooltip("the optimization finishes at this step")
    if changed and budget >= 1:
        state.send_throttled("steps", commands.SetSteps, int(budget), interval=0.3)
    if imgui.is_item_deactivated():
        state.release("steps")
    imgui.progress_bar(min(1.0, snap.step / max(state.steps, 1)), (-1.0, 0.0), f"{snap.step}/{state.steps}")
    imgui.text_wrapped(f"loss {loss_text(snap)}   {snap.steps_per_second:.2f} steps/s   viewer {state.fps:.0f} fps")
    if state.render.mode == "path":
        _tooltip("path tracing: each step's loss is a Monte Carlo estimate with fresh random numbers (noisy)")
        imgui.text_disabled("loss: a noisy estimate (path tracing)")
    _psnr_readout(state)
    if snap.skipped_steps:
        imgui.text_colored(STATE_COLORS["paused"], f"{snap.skipped_steps} steps skipped (non-finite), "
                                                   f"last at {snap.last_skip_step}")
    _parameter_table(state)
    _plots(state)
    _loss_weights(state)
    imgui.end()


def start_button(engine_state: str) -> tuple[str, type[commands.Command] | None]:
    """The Start button's label and command for the engine's state: Start (idle, finished, stopped, error),
    Resume (paused), "Running..." (running: nothing to do, disabled)."""
    if engine_state == "paused":
        return "Resume###start", commands.Resume
    if engine_state == "running":
        return "Running...###start", None
    return "Start###start", commands.Start


def _parameter_table(state: AppState) -> None:
    snap = state.snapshot
    flags = imgui.TableFlags_.borders_inner_h | imgui.TableFlags_.row_bg | imgui.TableFlags_.sizing_stretch_prop
    if not imgui.begin_table("parameters", 5, flags):
        return
    # the path gets the widest column; what is still clipped shows in full in its tooltip
    em = imgui.calc_text_size("0").x
    imgui.table_setup_column("parameter", imgui.TableColumnFlags_.width_stretch)
    for col, width in (("free", 3.5), ("lr", 8.5), ("|grad|", 7.5), ("error", 7.5)):
        imgui.table_setup_column(col, imgui.TableColumnFlags_.width_fixed, width * em)
    imgui.table_headers_row()
    for path, info in state.params.items():
        if not info.optimizable:
            continue
        imgui.push_id(path)
        imgui.table_next_row()
        imgui.table_next_column()
        # the element and leaf ("ball.vertices"): the group is implied by the leaf; the tooltip has the path
        if imgui.selectable(f"{info.owner}.{info.name}", state.selection == (info.group, info.owner))[0]:
            state.selection = (info.group, info.owner)
        remember(state, f"table.path.{path}")
        _tooltip(f"{path} ({info.kind.value}, shape {tuple(info.shape)}): click to inspect")
        imgui.table_next_column()
        imgui.begin_disabled(state.read_only)
        changed, free = imgui.checkbox("##free", path in state.free)
        remember(state, f"table.free.{path}")
        _tooltip("free: optimized; fixed: kept at its value")
        if changed:
            state.send(commands.SetFree, path, free)
        imgui.table_next_column()
        imgui.set_next_item_width(-1)
        # not a %e format: ImGui takes its precision as -1, so a logarithmic drag's zero epsilon became
        # 10^1 and the first pixel of any drag jumped the learning rate to the maximum, 10
        changed, lr = imgui.drag_float("##lr", state.lrs.get(path, 0.0), 0.002, 1e-6, 10.0, "%.6g",
                                       imgui.SliderFlags_.logarithmic)
        remember(state, f"table.lr.{path}")
        _tooltip(f"learning rate of {path} (drag, or Ctrl+click to type)")
        if changed:
            state.send_throttled(("lr", path), commands.SetLr, path, float(lr), interval=EDIT_INTERVAL)
        if imgui.is_item_deactivated():
            state.release(("lr", path))
        imgui.end_disabled()
        imgui.table_next_column()
        g = snap.grad_norms.get(path)
        imgui.text("-" if g is None else f"{g:.1e}")
        imgui.table_next_column()
        e = snap.errors.get(path)
        imgui.text("-" if e is None else f"{e:.1e}")
        imgui.pop_id()
    imgui.end_table()


def _loss_weights(state: AppState) -> None:
    if not imgui.collapsing_header("Loss weights", imgui.TreeNodeFlags_.default_open):
        return
    terms = state.snapshot.loss_terms
    for name, w in state.weights.items():
        imgui.set_next_item_width(140)
        imgui.begin_disabled(state.read_only)
        changed, w = imgui.drag_float(f"{name}##weight", w, 0.01, 0.0, 100.0, "%.3f")
        imgui.end_disabled()
        remember(state, f"weight.{name}")
        _tooltip(f"weight of the {name} loss term (drag, or Ctrl+click to type)")
        if changed:
            state.send_throttled(("weight", name), commands.SetLossWeight, name, max(0.0, float(w)),
                                 interval=EDIT_INTERVAL)
        if imgui.is_item_deactivated():
            state.release(("weight", name))
        if name in terms:
            imgui.same_line()
            imgui.text_disabled(f"term {terms[name]:.4g}")


MAX_PLOT_POINTS = 300  # per series: software GL pays per vertex, and histories grow with every step


def decimate(xs, ys, n: int = MAX_PLOT_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ~n points of a series, evenly strided, always keeping the last one. Never writes into its
    inputs (a snapshot's history holds read-only views)."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if len(ys) <= n:
        return xs, ys
    idx = np.unique(np.r_[np.linspace(0, len(ys) - 1, n).astype(np.int64), len(ys) - 1])
    return xs[idx], ys[idx]


def _plot_series(series: dict, title: str, log_y: bool = True, span=None, marks=()) -> None:
    """Line plots of `series` (label -> (xs, ys)); `span`: a fixed (min, max) step range (replay: the
    timeline) instead of fitting the data; `marks`: steps drawn as vertical lines (replay: edits)."""
    if not implot.begin_plot(title, (-1.0, 150.0 + 16.0 * max(0, len(series) // 3))):  # legend rows
        return
    limits = log_axis_limits(series) if log_y else None
    log_y = limits is not None  # no positive data (replay at its start, all zeros): linear
    # the legend above the plot area, in a row: inside it covered the curves' start (where losses are largest)
    implot.setup_legend(implot.Location_.north, implot.LegendFlags_.outside | implot.LegendFlags_.horizontal)
    implot.setup_axes("step", "", implot.AxisFlags_.auto_fit if span is None else 0,
                      0 if log_y else implot.AxisFlags_.auto_fit)
    if span is not None:
        implot.setup_axis_limits(implot.ImAxis_.x1, float(span[0]), float(span[1]), implot.Cond_.always)
    if log_y:
        implot.setup_axis_scale(implot.ImAxis_.y1, implot.Scale_.log10)
        implot.setup_axis_limits(implot.ImAxis_.y1, limits[0], limits[1], implot.Cond_.always)
    if len(marks):
        spec = implot.Spec()
        spec.line_color = (1.0, 0.6, 0.15, 0.6)
        implot.plot_inf_lines("edits", np.asarray(marks, np.float64), spec)
    for label, (xs, ys) in series.items():
        if len(ys):
            x, y = decimate(xs, ys)
            if log_y:  # values a log axis cannot show become gaps in the line
                y = np.where(np.isfinite(y) & (y > 0), y, np.nan)
            implot.plot_line(label, x, y)
    implot.end_plot()


def _plots(state: AppState) -> None:
    hist = state.snapshot.history
    if not imgui.collapsing_header("Plots", imgui.TreeNodeFlags_.default_open):
        return
    x0, span, marks = state.history_start, state.plot_span, state.plot_marks
    # read-outs in dB (the held-out PSNR) are not losses: their own plot (first), linear axis
    xs, ys = psnr_series(hist, x0)
    if len(ys):
        _plot_series({"held-out PSNR (dB)": (xs, ys)}, "Held-out PSNR (dB)", log_y=False, span=span, marks=marks)
        state.rects["plot.psnr"] = _item_rect()
    loss = loss_series(hist, x0)
    _plot_series(loss, "Loss", span=span, marks=marks)
    grads = {_short_path(state, k[5:]): (x0 + np.arange(len(v)), v) for k, v in hist.items() if k.startswith("grad.")}
    _plot_series(grads, "Gradient norms", span=span, marks=marks)
    errs = {_short_path(state, k): ([s for s, _ in v], [e for _, e in v]) for k, v in state.error_history.items()}
    _plot_series(errs, "Parameter error vs truth (max abs)", span=span, marks=marks)


def _short_path(state: AppState, path: str) -> str:
    """`element.leaf` of a parameter path (legends side by side fit a narrow plot); others as they are."""
    info = state.params.get(path)
    return f"{info.owner}.{info.name}" if info is not None else path


def loss_series(history: dict, x0: int = 0) -> dict:
    """The Loss plot's series: the total and each loss term, not read-outs in dB."""
    return {k: (x0 + np.arange(len(v)), v) for k, v in history.items()
            if k == "loss" or (k.startswith("loss.") and not k.endswith("_db"))}


def psnr_series(history: dict, x0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(steps, dB) of the held-out PSNR: the history carries the last evaluation between evaluations
    (NaN before the first), so only the steps where the value changed (and the last) are plotted."""
    v = np.asarray(history.get(f"loss.{PSNR_TERM}", []), np.float64)
    if not len(v):
        return np.zeros(0), np.zeros(0)
    keep = np.isfinite(v)
    keep[1:] &= (v[1:] != v[:-1]) | (np.arange(1, len(v)) == len(v) - 1)
    idx = np.flatnonzero(keep)
    return x0 + idx.astype(np.float64), v[idx]


def _psnr_readout(state: AppState) -> None:
    v = state.snapshot.loss_terms.get(PSNR_TERM)
    if v is None:
        return
    if np.isfinite(v):
        imgui.text_colored((0.6, 0.95, 0.6, 1.0), f"held-out PSNR {v:.2f} dB")
    else:
        imgui.text_disabled("held-out PSNR: not evaluated yet")
    remember(state, "readout.psnr")


def _item_rect() -> tuple[float, float, float, float]:
    lo, hi = imgui.get_item_rect_min(), imgui.get_item_rect_max()
    return lo.x, lo.y, hi.x - lo.x, hi.y - lo.y


# -- Views ----------------------------------------------------------------------------------------

def views_panel(state: AppState) -> None:
    if not begin(state, "Views"):
        imgui.end()
        return
    gl = state.gl
    avail = imgui.get_content_region_avail().x
    thumb = 96.0
    per_row = max(1, int(avail // (thumb + 12)))
    for i, cam in enumerate(state.views):
        img = state.thumbnails.get(cam)
        if i % per_row:
            imgui.same_line()
        imgui.begin_group()
        active = cam == state.active_view
        label = cam + (" *" if active else "") + (" (stale)" if cam in state.stale_thumbnails else "")
        imgui.text(label)
        if img is not None:
            src = gl.uploader.upload(f"thumb.{cam}", img)
            out = gl.compositor.draw(f"thumb.{cam}", (img.shape[1], img.shape[0]), "color", src, key=id(img))
            size = fit(img.shape[1], img.shape[0], thumb, thumb)
            if active:
                imgui.push_style_color(imgui.Col_.button, (0.9, 0.6, 0.1, 1.0))
            clicked = imgui.image_button(f"view.{cam}", imgui.ImTextureRef(out.texture.glo), size, (0, 1), (1, 0))
            if active:
                imgui.pop_style_color()
        else:
            clicked = imgui.button(f"{cam}##view", (thumb, thumb))
        remember(state, f"view.{cam}")
        _tooltip(f"target view {cam}" + (" (active)" if active else ": click to make it the active view"))
        if clicked and not active and not state.read_only:  # replay: the recorded active view
            state.send(commands.SetActiveView, cam)
        imgui.end_group()
    imgui.end()


# -- Overlays -------------------------------------------------------------------------------------

OVERLAY_HELP = {"image": "|dLoss/dPixel| of the active view over the Images window's render pane",
                "texture": "|dLoss/dTexel| of free textures as a heatmap on the mesh (and in the Inspector)",
                "geometry": "|dLoss/dVertex| as vertex colors, with arrows along -gradient",
                "params": "the gradient of free light positions / directions and camera poses as arrows "
                          "(-gradient: where a descent step moves them)"}
OVERLAY_LABELS = {"image": "image-space gradient (render pane)", "texture": "texture-space gradient (mesh)",
                  "geometry": "vertex gradients (colors + arrows)", "params": "light / camera gradient arrows"}


def overlays_panel(state: AppState) -> None:
    if not begin(state, "Overlays"):
        imgui.end()
        return
    if state.preview is not None:  # scenes with fields: the field preview's options first
        field_settings(state)
        imgui.separator_text("Gradient overlays")
    elif state.path_preview is not None and state.render.mode == "path":
        _, state.path_view = imgui.checkbox("path-traced preview", state.path_view)
        remember(state, "path_view")
        _tooltip("render mode path: the viewport accumulates path-traced samples while nothing changes\n"
                 "(restarting on a camera move or an edit); off, or while the camera moves, or with a\n"
                 "gradient overlay on the meshes: the OpenGL rasterization (emission and environment shown)")
        imgui.separator_text("Gradient overlays")
    ov = state.overlays
    for name in OVERLAYS:
        changed, on = imgui.checkbox(OVERLAY_LABELS[name], ov.on(name))
        remember(state, f"overlay.{name}")
        _tooltip(OVERLAY_HELP[name])
        if changed:
            ov.enabled[name] = on
    imgui.separator()
    imgui.set_next_item_width(140)
    changed, idx = imgui.combo("colormap", COLORMAPS.index(ov.colormap), list(COLORMAPS))
    if changed:
        ov.colormap = COLORMAPS[idx]
    _, ov.auto_scale = imgui.checkbox("auto scale (99th percentile)", ov.auto_scale)
    _tooltip("scale each overlay by the 99th percentile of its current magnitudes (the top 1% saturate);\n"
             "off: set the largest magnitude shown per overlay")
    if not ov.auto_scale:
        for name in OVERLAYS:
            imgui.set_next_item_width(140)
            _, v = imgui.drag_float(f"max |grad| {name}", ov.vmax[name], ov.vmax[name] * 0.01 + 1e-12, 1e-12, 1e12,
                                    "%.12g", imgui.SliderFlags_.logarithmic)  # not %e: see the lr drag
            ov.vmax[name] = max(v, 1e-12)
    _, ov.log_scale = imgui.checkbox("log scale (3 decades)", ov.log_scale)
    imgui.set_next_item_width(140)
    _, ov.opacity = imgui.slider_float("opacity", ov.opacity, 0.0, 1.0)
    _, ov.arrows = imgui.checkbox("vertex arrows", ov.arrows)
    imgui.set_next_item_width(140)
    _, ov.arrow_length = imgui.slider_float("arrow length", ov.arrow_length, 0.01, 1.0)
    imgui.set_next_item_width(140)
    changed, idx = imgui.combo("texture gradient of", OVERLAY_TEXTURES.index(ov.texture_property),
                               [k.value for k in OVERLAY_TEXTURES])
    _tooltip("which material property's gradient the texture overlay draws on the meshes (a constant's is\n"
             "one color per material); an environment light's gradient is drawn over the background")
    if changed:
        ov.texture_property = OVERLAY_TEXTURES[idx]
    imgui.separator_text("Gizmos")
    for op in ("translate", "rotate", "scale"):
        if imgui.radio_button(op, state.gizmo.operation == op):
            state.gizmo.operation = op
        imgui.same_line()
    imgui.new_line()
    _, state.gizmo.show_targets = imgui.checkbox("target scene (orange, draggable)", state.gizmo.show_targets)
    _, state.gizmo.show_current = imgui.checkbox("current estimate (cyan)", state.gizmo.show_current)
    _, state.gizmo.show_cameras = imgui.checkbox("camera markers", state.gizmo.show_cameras)
    _tooltip("the cameras' frustums and names (a dataset's dozens of cameras cover the view); also View menu")
    imgui.text_disabled("Select a light, mesh or camera, then drag its gizmo:\n"
                        "the target scene changes and the optimizer chases it.")
    imgui.end()


def field_settings(state: AppState) -> None:
    """The field preview's options: on/off, meshes, occupancy overlay, upscaling, budget, time."""
    fv, pv = state.field_view, state.preview
    _, fv.preview = imgui.checkbox("field preview (own thread)", fv.preview)
    remember(state, "field.preview")
    _, fv.show_meshes = imgui.checkbox("meshes of the target scene", fv.show_meshes)
    remember(state, "field.meshes")
    _, fv.occupancy = imgui.checkbox("occupancy grid (occupied cells)", fv.occupancy)
    remember(state, "field.occupancy")
    _, fv.nearest = imgui.checkbox("nearest upscaling (else linear)", fv.nearest)
    imgui.set_next_item_width(140)
    _, pv.settings.budget_ms = imgui.slider_float("ms budget while moving", pv.settings.budget_ms, 10.0, 500.0,
                                                  "%.0f", imgui.SliderFlags_.logarithmic)
    imgui.set_next_item_width(140)
    _, pv.settings.training_budget_ms = imgui.slider_float("ms budget while training", pv.settings.training_budget_ms,
                                                           50.0, 20000.0, "%.0f", imgui.SliderFlags_.logarithmic)
    _, pv.settings.full_while_training = imgui.checkbox("full resolution while training",
                                                        pv.settings.full_while_training)
    time_controls(state)


def time_controls(state: AppState) -> None:
    """Dynamic fields (`time_range()` not None): the preview's time, play / pause. Nothing otherwise."""
    rng = state.preview.time_range_value
    if rng is None:
        return
    fv = state.field_view
    t0, t1 = float(rng[0]), float(rng[1])
    if fv.time is None:
        fv.time = t0
    if fv.playing and t1 > t0:  # one pass through the range every `period` seconds, looping
        dt = min(imgui.get_io().delta_time, 0.1)
        fv.time = t0 + (fv.time - t0 + dt * (t1 - t0) / max(fv.period, 1e-3)) % (t1 - t0)
    if imgui.button("Pause##time" if fv.playing else "Play##time"):
        fv.playing = not fv.playing
    remember(state, "field.play")
    imgui.same_line()
    imgui.set_next_item_width(-1)
    changed, t = imgui.slider_float("##field.time", float(fv.time), t0, t1, "time %.3f")
    remember(state, "field.time")
    if changed:
        fv.time = float(t)


# -- Images ---------------------------------------------------------------------------------------

def images_panel(state: AppState) -> None:
    if not begin(state, "Images", imgui.WindowFlags_.no_scroll_with_mouse):  # the wheel zooms the panes
        imgui.end()
        return
    gl = state.gl
    snap = state.snapshot
    ps = state.panes
    ov = state.overlays
    imgui.text(f"view {state.active_view}")
    imgui.same_line()
    for mode in ("split", "blend"):
        if imgui.radio_button(mode, ps.compare == mode):
            ps.compare = mode
        imgui.same_line()
    imgui.set_next_item_width(140)
    _, ps.split = imgui.slider_float("##split", ps.split, 0.0, 1.0, "render | target %.2f")
    remember(state, "images.split")
    _tooltip("where the split pane changes from the render (left) to the target (right); the blend weight")
    imgui.same_line()
    imgui.set_next_item_width(70)
    _, ps.diff_gain = imgui.slider_float("gain", ps.diff_gain, 1.0, 32.0, "%.1f", imgui.SliderFlags_.logarithmic)
    _tooltip("the |render - target| pane's gain")
    if snap.render is None or snap.target is None:
        imgui.text_disabled("waiting for the first render...")
        imgui.end()
        return
    h, w = snap.render.shape[:2]
    render = gl.uploader.upload("img.render", snap.render)
    target = gl.uploader.upload("img.target", snap.target)
    grad = None
    vmax = 1.0
    if ov.on("image") and state.grad_image is not None:
        grad = gl.uploader.upload("img.grad", state.grad_image)
        vmax = gl.viewport.scale_for(state, "image")
    avail = imgui.get_content_region_avail()
    legend_h = 2 * imgui.get_text_line_height() + 22 if grad is not None else 0.0
    readout_h = imgui.get_text_line_height_with_spacing()
    pane_w, pane_h = fit(w, h, (avail.x - 24) / 4, avail.y - imgui.get_text_line_height() - 12 - legend_h - readout_h)
    u0, v0, u1, v1 = ps.region()
    hovered_at = None
    ser = state.serial
    panes = (
        ("render", "render" + (" + grad" if grad is not None else ""), "color", render, None, grad,
         (ser, grad is not None, vmax, ov.log_scale, ov.opacity, ov.colormap)),
        ("target", "target", "color", target, None, None, (ser,)),
        ("diff", f"|difference| x{ps.diff_gain:.0f}", "diff", render, target, None, (ser, ps.diff_gain)),
        ("compare", ps.compare, ps.compare, render, target, None, (ser, ps.compare, ps.split)),
    )
    for i, (name, title, mode, a, b, heat, key) in enumerate(panes):
        if i:
            imgui.same_line()
        out = gl.compositor.draw(f"pane.{name}", (w, h), mode, a, b, heat, key=key, split=ps.split,
                                 gain=ps.diff_gain, heat_max=vmax, heat_log=ov.log_scale, heat_opacity=ov.opacity)
        imgui.begin_group()
        imgui.text(title)
        out.texture.filter = (moderngl.NEAREST, moderngl.NEAREST) if ps.zoom > 1.0 else (moderngl.LINEAR,) * 2
        pos = imgui.get_cursor_screen_pos()
        imgui.image(imgui.ImTextureRef(out.texture.glo), (pane_w, pane_h), (u0, 1.0 - v0), (u1, 1.0 - v1))
        imgui.set_cursor_screen_pos(pos)
        imgui.invisible_button(f"##pane.{name}", (pane_w, pane_h))  # takes the drag (pan), not the window
        remember(state, f"pane.{name}")
        mouse = imgui.get_mouse_pos()
        at = ((mouse.x - pos.x) / pane_w, (mouse.y - pos.y) / pane_h)
        if imgui.is_item_hovered() or imgui.is_item_active():
            hovered_at = at
            wheel = imgui.get_io().mouse_wheel
            if wheel:
                ps.zoom_at(1.25 ** wheel, at)
            if imgui.is_mouse_double_clicked(imgui.MouseButton_.left):
                ps.zoom, ps.center = 1.0, (0.5, 0.5)
        if imgui.is_item_active() and imgui.is_mouse_dragging(imgui.MouseButton_.left, 0.0):
            d = imgui.get_io().mouse_delta
            ps.pan(d.x / pane_w, d.y / pane_h)
        _tooltip("wheel: zoom, drag: pan, double-click: fit; the pixel under the mouse is read out below")
        imgui.end_group()
    if grad is not None:
        x, y, _, ph = state.rects["pane.render"]
        draw_legend(imgui.get_window_draw_list(), (x + 4, y + ph + 6), min(pane_w - 8, 200.0), 10.0, gl.lut.glo,
                    vmax, ov.log_scale, "|dL/d pixel|")
        imgui.dummy((pane_w, legend_h))
    _pixel_readout(state, hovered_at, snap.render, snap.target)
    imgui.end()


def _pixel_readout(state: AppState, at, render: np.ndarray, target: np.ndarray) -> None:
    """The linear values of the pixel under the mouse in render, target and |render - target|."""
    ps = state.panes
    zoom = f"zoom {ps.zoom:.2g}x   " if ps.zoom > 1.0 else ""
    if at is None or not (0.0 <= at[0] <= 1.0 and 0.0 <= at[1] <= 1.0):
        ps.probe, ps.probe_values = None, {}
        imgui.text_disabled(fit_text(zoom + "hover a pane: pixel values (wheel zooms, drag pans)",
                                     imgui.get_content_region_avail().x))
        return
    h, w = render.shape[:2]
    x, y = ps.pixel(at, w, h)
    r, t = np.asarray(render[y, x], np.float64), np.asarray(target[y, x], np.float64)
    ps.probe, ps.probe_values = (x, y), {"render": r, "target": t, "diff": np.abs(r - t)}
    fmt = lambda v: " ".join(f"{c:.3f}" for c in v)  # noqa: E731
    text = f"{zoom}({x}, {y})  render {fmt(r)}  target {fmt(t)}  |diff| {fmt(np.abs(r - t))}"
    imgui.text(fit_text(text, imgui.get_content_region_avail().x))
    remember(state, "images.readout")
    _tooltip(f"pixel ({x}, {y}) of {w}x{h}, linear RGB: render {fmt(r)}, target {fmt(t)}, |render - target| "
             f"{fmt(np.abs(r - t))}")


def draw_windows(state: AppState) -> None:
    """Every docked window except the viewport (drawn by viewport.viewport_window)."""
    scene_panel(state)
    inspector_panel(state)
    optimizer_panel(state)
    views_panel(state)
    overlays_panel(state)
    camera_path_panel(state)
    images_panel(state)
