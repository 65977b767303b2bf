"""The menus and popups of a daily tool (issue 17): Edit (undo / redo and the last actions), Render (the
scene's render settings, sent as `set_render_setting`), View (camera markers, UI scale, help), the
keyboard shortcuts, the help overlay, the error popup, and the viewer's own settings file.

Like the windows, each is a function of the one `AppState`: they read it and send commands."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from drstudio.renderer.images import write_image
from drstudio.renderer.optim import commands
from imgui_bundle import imgui

from .state import AppState
from .windows import remember

log = logging.getLogger("drstudio.viewer")

RENDER_MODES = commands.RENDER_SETTINGS["mode"]
UI_SCALES = (0.75, 1.0, 1.25, 1.5, 2.0)
HISTORY_SHOWN = 10  # last actions listed in the Edit menu

SHORTCUTS = (  # (keys, what): the help overlay's table
    ("Ctrl+Z", "undo the last edit (a whole drag is one step)"),
    ("Ctrl+Shift+Z, Ctrl+Y", "redo"),
    ("F1, ?", "this help"),
    ("Ctrl+O", "open a scene (File > Open path: type one)"),
    ("Ctrl+S", "save the scene (again where it was last saved as; else Save scene as)"),
    ("Ctrl+Q", "quit"),
    ("F (over the 3D view)", "frame the scene and its lights"),
    ("W / E / R (over the 3D view)", "gizmo: translate / rotate / scale"),
    ("left drag (3D view)", "orbit the free camera"),
    ("right or middle drag, Shift+left drag", "pan"),
    ("wheel", "zoom"),
    ("drag an orange gizmo", "edit the target scene (the optimizer chases it)"),
    ("drag a value", "edit it (sent while dragging, one undo step)"),
    ("Ctrl+click a value", "type a value"),
)


# -- the viewer's own settings (UI scale) -----------------------------------------------------------

def settings_path() -> Path:
    """~/.config/drstudio/viewer.json ($XDG_CONFIG_HOME honoured); never the working directory."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "drstudio" / "viewer.json"


def load_settings() -> dict:
    """The saved settings ({} when there are none or the file is unreadable: defaults, logged)."""
    path = settings_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring viewer settings %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(settings: dict) -> None:
    """Write the settings atomically (a temporary file renamed over the old one)."""
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(settings, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot save viewer settings to %s: %s", path, exc)


def ui_scale(settings: dict) -> float:
    try:
        scale = float(settings.get("ui_scale", 1.0))
    except (TypeError, ValueError):
        return 1.0
    return scale if 0.5 <= scale <= 3.0 else 1.0


def set_ui_scale(state: AppState, scale: float) -> None:
    state.ui_scale = scale
    state.settings["ui_scale"] = scale
    save_settings(state.settings)


# -- File: save the render pane's image, a screenshot of the window -------------------------------

def save_dialog(title: str, default_path: str, filters: tuple[str, str] = ("PNG images", "*.png")):
    """A native "save as" dialog (imgui-bundle's portable-file-dialogs), not blocking: the returned object
    has `ready()` (poll it each frame) and `result()` (the chosen path, "" when cancelled). Tests replace
    this function (no dialogs in tests)."""
    from imgui_bundle import portable_file_dialogs as pfd

    return pfd.save_file(title, default_path, list(filters))


def open_dialog(title: str, default_path: str, filters: tuple[str, str] = ("drstudio scenes", "*.json")):
    """A native "open file" dialog, not blocking (as `save_dialog`); `result()` is a list of chosen paths
    ([] when cancelled). Tests replace this function, or type a path into File > Open path."""
    from imgui_bundle import portable_file_dialogs as pfd

    return pfd.open_file(title, default_path, list(filters))


def folder_dialog(title: str, default_path: str):
    """A native "select folder" dialog, not blocking; `result()` is the folder ("" when cancelled)."""
    from imgui_bundle import portable_file_dialogs as pfd

    return pfd.select_folder(title, default_path)


def native_dialogs() -> bool:
    """Whether portable-file-dialogs has a backend here (zenity, kdialog, ... on Linux)."""
    try:
        from imgui_bundle import portable_file_dialogs as pfd

        return bool(pfd.settings.available())
    except Exception:  # noqa: BLE001 - no dialogs: File > Open path still works
        return False


def request_open(state: AppState, path: str) -> None:
    """Open `path` instead of the current scene (the app acts on it after this frame). A file that is not
    there is reported at once; every other problem comes from loading it (the error popup, the scene kept)."""
    path = os.path.expanduser(path.strip())
    if not path:
        return
    if not Path(path).is_file():
        state.send_error = f"open: {path}: no such file"
        return
    state.open_request = path


def save_image(state: AppState, what: str) -> None:
    """Save the active view's render ("render") or the window ("screenshot") as PNG: into the folder the
    session records into, else where the user chooses (`save_dialog`, polled by `poll_dialog`)."""
    name = f"{what}_{state.active_view}_step{state.snapshot.step:06d}.png"
    if state.record_dir is not None:
        _write(state, what, Path(state.record_dir) / name)
        return
    state.dialog = (save_dialog(f"Save {what} as PNG", str(Path.cwd() / name)), what)


def poll_dialog(state: AppState) -> None:
    """Once per frame: a save dialog that has an answer is acted on (the UI never waits for it)."""
    if state.dialog is None:
        return
    dialog, what = state.dialog
    if not dialog.ready():
        return
    state.dialog = None
    path = dialog.result()
    if what == "open":
        if path:
            request_open(state, path[0] if isinstance(path, list) else path)
        return
    if what == "export":
        if path:
            state.export_request = Path(path)  # done between frames: its progress is drawn
        return
    if path:
        suffix = ".json" if what == "scene" else ".png"
        _write(state, what, Path(path) if Path(path).suffix else Path(path).with_suffix(suffix))


def save_scene_again(state: AppState) -> None:
    """File > Save scene (Ctrl+S): over the file this session last saved the scene as; the first time, Save
    scene as (the scene's own file is never overwritten without the dialog)."""
    if state.save_path is None:
        save_scene(state)
    else:
        _write(state, "scene", Path(state.save_path))


def save_scene(state: AppState) -> None:
    """File > Save scene as: the scene JSON with the current values, where the user chooses."""
    default = Path(state.scene.path).with_name(Path(state.scene.path).stem + "_edited.json")
    state.dialog = (save_dialog("Save scene as", str(default), ("drstudio scenes", "*.json")), "scene")


def _write(state: AppState, what: str, path: Path) -> None:
    if what == "scene":
        from .save_scene import save_scene_as

        try:
            files = save_scene_as(state.scene, state.values, path, state.render, faces=state.mesh_faces)
        except (OSError, ValueError) as exc:
            state.send_error = f"save scene as {path}: {exc}"
            return
        state.saved.extend(files)
        state.save_path = path
        log.info("saved %s", ", ".join(map(str, files)))
        return
    if what == "screenshot":  # the back buffer of a frame without the menu: written after it is drawn
        state.pending_screenshot = (path, 2)
        return
    render = state.snapshot.render
    if render is None:
        state.send_error = "save render: no render yet"
        return
    try:
        write_image(path, np.asarray(render, np.float32))  # atomic: a temporary file renamed
    except (OSError, ValueError) as exc:
        state.send_error = f"save render: cannot write {path}: {exc}"
        return
    state.saved.append(path)
    log.info("saved %s", path)


def export(state: AppState, out: Path) -> None:
    """File > Export results: what `drstudio optimize` writes, into `out` (document.export_results)."""
    from .document import export_results

    try:
        export_results(state, out)
    except (OSError, ValueError, TimeoutError) as exc:
        state.send_error = f"export results to {out}: {exc}"
        return
    state.exported.append(out)
    log.info("exported results to %s", out)


def export_default(state: AppState) -> Path:
    """Where Export results offers to write: the session's results folder's sibling, else runs/<time>."""
    from drstudio.app.headless import default_out_dir

    return default_out_dir(Path.cwd())


def take_screenshot(state: AppState) -> None:
    """Called by the app after a frame is drawn (before the swap): write a pending screenshot."""
    if state.pending_screenshot is None or state.screenshot is None:
        return
    path, frames = state.pending_screenshot
    if frames > 0:
        state.pending_screenshot = (path, frames - 1)
        return
    state.pending_screenshot = None
    try:
        write_image(path, state.screenshot().astype(np.float32) / 255.0, srgb=False)  # already sRGB
    except (OSError, ValueError) as exc:
        state.send_error = f"screenshot: cannot write {path}: {exc}"
        return
    state.saved.append(path)
    log.info("saved %s", path)


def file_menu(state: AppState) -> None:
    opened = imgui.begin_menu("File")
    remember(state, "menu.file")
    if not opened:
        return
    live = not state.read_only and state.problem is not None  # a local engine (not a replay, not attached)
    if imgui.menu_item("Open...###open", "Ctrl+O", False, live)[0]:
        open_scene_dialog(state)
    remember(state, "menu.file.open")
    if imgui.is_item_hovered():
        imgui.set_tooltip("open another scene file (this one's session ends and its results are written)"
                          + ("" if native_dialogs() else "; no native dialog here: use Open path"))
    open_path_field(state, live)
    recent_menu(state, live)
    imgui.separator()
    where = f" (into {state.record_dir})" if state.record_dir is not None else "..."
    if imgui.menu_item(f"Save render as PNG{where}###saverender", "", False, state.snapshot.render is not None)[0]:
        save_image(state, "render")
    remember(state, "menu.file.render")
    if imgui.is_item_hovered():
        imgui.set_tooltip("the active view's render (the Images window's render pane), as PNG")
    if imgui.menu_item(f"Screenshot{where}###screenshot", "", False)[0]:
        save_image(state, "screenshot")
    remember(state, "menu.file.screenshot")
    savable = not getattr(state.scene, "fields", None)
    again = f"Save scene ({Path(state.save_path).name})" if state.save_path else "Save scene..."
    if imgui.menu_item(again + "###savescene1", "Ctrl+S", False, savable)[0]:
        save_scene_again(state)
    remember(state, "menu.file.save")
    if imgui.menu_item("Save scene as...###savescene", "", False, savable)[0]:
        save_scene(state)
    remember(state, "menu.file.scene")
    if imgui.is_item_hovered():
        imgui.set_tooltip("the scene JSON with the current values (changed textures as PNG, meshes as OBJ beside it)")
    if imgui.menu_item("Export results...###export", "", False, live)[0]:
        state.dialog = (folder_dialog("Export results into a folder", str(export_default(state))), "export")
    remember(state, "menu.file.export")
    if imgui.is_item_hovered():
        imgui.set_tooltip("what `drstudio optimize` writes: params.npz, metrics.json, views/, loss.png, recovered "
                          "textures and meshes (the optimizer pauses for the final evaluation)")
    imgui.separator()
    if imgui.menu_item("Quit", "Ctrl+Q", False)[0]:
        state.quit = True
    imgui.end_menu()


def open_scene_dialog(state: AppState) -> None:
    default = str(Path(state.scene.path).parent) + os.sep if state.scene is not None and state.scene.path else ""
    state.dialog = (open_dialog("Open a scene", default), "open")


def open_path_field(state: AppState, enabled: bool) -> None:
    """File > Open path: type a scene file's path, Enter opens it (no native dialog needed)."""
    imgui.begin_disabled(not enabled)
    imgui.set_next_item_width(imgui.calc_text_size("0").x * 28)
    flags = imgui.InputTextFlags_.enter_returns_true | imgui.InputTextFlags_.auto_select_all  # a click selects it all
    entered, state.open_text = imgui.input_text_with_hint("##openpath", "Open path: type a scene file, Enter",
                                                          state.open_text, flags)
    remember(state, "menu.file.openpath")
    if imgui.is_item_hovered():
        imgui.set_tooltip("a scene file's path (absolute, or relative to the working folder); Enter opens it")
    if entered:
        request_open(state, state.open_text)
        if state.open_request is not None:
            state.open_text = ""
        imgui.close_current_popup()
    imgui.end_disabled()


def recent_menu(state: AppState, enabled: bool) -> None:
    """File > Open Recent: the last scenes opened (greyed out when the file is gone; Clear missing)."""
    from .document import prune_recent, recent

    items = recent(state.settings)
    opened = imgui.begin_menu("Open Recent", enabled and bool(items))
    remember(state, "menu.file.recent")
    if not opened:
        return
    for i, path in enumerate(items):
        there = Path(path).is_file()
        if imgui.menu_item(f"{Path(path).name}  ({Path(path).parent})###recent{i}", "", False, there)[0]:
            request_open(state, path)
        remember(state, f"menu.file.recent.{i}")
        if imgui.is_item_hovered(imgui.HoveredFlags_.allow_when_disabled):
            imgui.set_tooltip(path if there else f"{path} (missing)")
    imgui.separator()
    if imgui.menu_item("Clear missing", "", False, any(not Path(p).is_file() for p in items))[0]:
        prune_recent(state.settings)
        save_settings(state.settings)
    remember(state, "menu.file.recent.prune")
    imgui.end_menu()


# -- menus ------------------------------------------------------------------------------------------

def edit_menu(state: AppState) -> None:
    opened = imgui.begin_menu("Edit")
    remember(state, "menu.edit")
    if not opened:
        return
    undo = state.undo_stack[-1].label if state.undo_stack else ""
    redo = state.redo_stack[-1].label if state.redo_stack else ""
    if imgui.menu_item(f"Undo {undo}###undo", "Ctrl+Z", False, bool(undo) and not state.read_only)[0]:
        state.undo()
    remember(state, "menu.edit.undo")
    if imgui.menu_item(f"Redo {redo}###redo", "Ctrl+Shift+Z", False, bool(redo) and not state.read_only)[0]:
        state.redo()
    remember(state, "menu.edit.redo")
    imgui.separator_text("last actions")
    if not state.undo_stack:
        imgui.text_disabled("(none yet)")
    for i, step in enumerate(reversed(state.undo_stack[-HISTORY_SHOWN:])):
        imgui.text_disabled(f"{i + 1}. {step.label}")
    imgui.end_menu()


def render_menu(state: AppState) -> None:
    """The scene's render settings, for the optimizer, the targets and the 3D view alike."""
    opened = imgui.begin_menu("Render")
    remember(state, "menu.render")
    if not opened:
        return
    imgui.begin_disabled(state.read_only)
    for mode in RENDER_MODES:
        label = "path tracing" if mode == "path" else f"{mode} rasterization"
        if imgui.menu_item(label, "", state.render.mode == mode)[0] and state.render.mode != mode:
            state.send(commands.SetRenderSetting, "mode", mode)
        remember(state, f"menu.render.{mode}")
        if imgui.is_item_hovered():
            imgui.set_tooltip(RENDER_MODE_HELP[mode])
    imgui.separator()
    for name, label in (("shadows", "shadows"), ("mipmaps", "texture mipmaps")):
        if imgui.menu_item(label, "", getattr(state.render, name))[0]:
            state.send(commands.SetRenderSetting, name, not getattr(state.render, name))
        remember(state, f"menu.render.{name}")
    if state.render.mode == "path":
        imgui.separator()
        for name, label, choices, tip in PATH_SETTINGS:
            current = int(getattr(state.render, name))
            opened_sub = imgui.begin_menu(f"{label}: {current}")
            remember(state, f"menu.render.{name}")
            if imgui.is_item_hovered():
                imgui.set_tooltip(tip)
            if opened_sub:
                for value in sorted(set(choices) | {current}):
                    if imgui.menu_item(str(value), "", value == current)[0] and value != current:
                        state.send(commands.SetRenderSetting, name, value)
                    remember(state, f"menu.render.{name}.{value}")
                imgui.end_menu()
    imgui.end_disabled()
    imgui.text_disabled("re-renders the targets (when rendered from the scene)")
    imgui.end_menu()


PATH_SETTINGS = (("spp", "samples per pixel", (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
                  "path tracing: samples per pixel of every render (more: less noise, slower steps)"),
                 ("max_depth", "max depth", (0, 1, 2, 3, 4, 5, 6, 8, 12, 16),
                  "path tracing: scattering events per path (1: direct light only; each more adds a bounce)"))

RENDER_MODE_HELP = {"hard": "hard rasterization: no gradient at silhouettes (fastest)",
                    "antialias": "analytic antialiasing: gradients at silhouette edges",
                    "soft": "SoftRas: blurred silhouettes, gradients reach far pixels (background color only)",
                    "path": "path tracing: indirect light, emitters, environment light (noisy; no geometry "
                            "gradients)"}


def view_menu(state: AppState) -> None:
    opened = imgui.begin_menu("View")
    remember(state, "menu.view")
    if not opened:
        return
    if imgui.menu_item("camera markers", "", state.gizmo.show_cameras)[0]:
        state.gizmo.show_cameras = not state.gizmo.show_cameras
    remember(state, "menu.view.cameras")
    if imgui.begin_menu("UI scale"):
        for scale in UI_SCALES:
            if imgui.menu_item(f"{scale:g}x", "", abs(state.ui_scale - scale) < 1e-6)[0]:
                set_ui_scale(state, scale)
            remember(state, f"menu.view.scale.{scale:g}")
        imgui.end_menu()
    remember(state, "menu.view.scale")
    if imgui.menu_item("Help", "F1", state.show_help)[0]:
        state.show_help = not state.show_help
    imgui.end_menu()


# -- keyboard, help, errors ------------------------------------------------------------------------

def shortcuts(state: AppState) -> None:
    """Application shortcuts (not while a text field has the keyboard)."""
    io = imgui.get_io()
    if io.want_text_input:
        return
    if io.key_ctrl and imgui.is_key_pressed(imgui.Key.q):
        state.quit = True
    if io.key_ctrl and imgui.is_key_pressed(imgui.Key.o) and not state.read_only and state.problem is not None:
        open_scene_dialog(state)
    if io.key_ctrl and imgui.is_key_pressed(imgui.Key.s) and not getattr(state.scene, "fields", None):
        save_scene_again(state)
    if io.key_ctrl and imgui.is_key_pressed(imgui.Key.z):
        state.redo() if io.key_shift else state.undo()
    if io.key_ctrl and imgui.is_key_pressed(imgui.Key.y):
        state.redo()
    if imgui.is_key_pressed(imgui.Key.f1, False) or (io.key_shift and imgui.is_key_pressed(imgui.Key.slash, False)):
        state.show_help = not state.show_help


def help_window(state: AppState) -> None:
    if not state.show_help:
        return
    vp = imgui.get_main_viewport()
    imgui.set_next_window_pos((vp.work_pos.x + vp.work_size.x / 2, vp.work_pos.y + vp.work_size.y / 2),
                              imgui.Cond_.appearing, (0.5, 0.5))
    imgui.set_next_window_bg_alpha(0.95)
    flags = imgui.WindowFlags_.always_auto_resize | imgui.WindowFlags_.no_docking | imgui.WindowFlags_.no_collapse
    opened, state.show_help = imgui.begin("Help: shortcuts and mouse", True, flags)
    state.rects["help"] = (*imgui.get_window_pos(), *imgui.get_window_size())
    if opened and imgui.begin_table("shortcuts", 2, imgui.TableFlags_.row_bg | imgui.TableFlags_.borders_inner_h):
        for keys, what in SHORTCUTS:
            imgui.table_next_row()
            imgui.table_next_column()
            imgui.text_colored((1.0, 0.8, 0.4, 1.0), keys)
            imgui.table_next_column()
            imgui.text(what)
        imgui.end_table()
        imgui.text_disabled("Every edit is a command sent to the optimizer; Edit > Undo sends the inverse.")
    if imgui.is_key_pressed(imgui.Key.escape, False):
        state.show_help = False
    imgui.end()


ERROR_POPUP = "Error###drstudio.error"


def error_popup(state: AppState, messages: list[str]) -> None:
    """A modal popup with the newest error (a refused command, an engine step that failed) and OK; shown
    once per message (acknowledged messages stay in the status line). The app keeps running behind it."""
    if state.error_shown is None:
        new = [m for m in messages if m not in state.errors_seen]
        if new:
            state.error_shown = new[-1]
            imgui.open_popup(ERROR_POPUP)
    vp = imgui.get_main_viewport()
    imgui.set_next_window_pos((vp.work_pos.x + vp.work_size.x / 2, vp.work_pos.y + vp.work_size.y / 2),
                              imgui.Cond_.appearing, (0.5, 0.5))
    imgui.set_next_window_size_constraints((320, 0), (640, 480))
    if imgui.begin_popup_modal(ERROR_POPUP, None, imgui.WindowFlags_.always_auto_resize)[0]:
        imgui.push_text_wrap_pos(600)
        imgui.text_colored((1.0, 0.45, 0.45, 1.0), "drstudio could not do this:")
        imgui.text_wrapped(state.error_shown or "")
        imgui.pop_text_wrap_pos()
        state.rects["error.popup"] = (*imgui.get_window_pos(), *imgui.get_window_size())
        ok = imgui.button("OK", (120, 0))
        remember(state, "error.ok")
        if ok or imgui.is_key_pressed(imgui.Key.enter, False) or imgui.is_key_pressed(imgui.Key.escape, False):
            state.errors_seen.add(state.error_shown)
            state.error_shown = None
            imgui.close_current_popup()
        imgui.end_popup()
    else:
        state.rects.pop("error.popup", None)
        state.rects.pop("error.ok", None)
