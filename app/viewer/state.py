"""`AppState`: the one object the viewer's windows read and edit.

It holds what the UI shows (the latest engine `Snapshot`, the values it knows for every parameter,
the target values it has set, the selection, overlay and pane settings, the free camera, timings)
and the only way to change the optimization: `send()` a command to the engine. Nothing here
touches Warp arrays or waits for a step; `pull()` only swaps in the engine's latest snapshot.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from drstudio.renderer.optim import commands
from drstudio.renderer.optim.engine import EngineBusy, Snapshot
from drstudio.renderer.params import Entry, Group, Kind, ParamPath, ParamTable, param_path
from drstudio.renderer.scene import RenderSettings

from .camera import OrbitCamera, project
from .field_layer import FieldViewSettings
from .overlays import OverlaySettings

log = logging.getLogger("drstudio.viewer")

MAX_UNDO = 200  # undo steps kept
CommandLike = commands.Command | type[commands.Command] | str
GROUPS = tuple(g for g in Group if g is not Group.FIELDS)  # the Scene panel's groups (fields: Overlays)
TEXTURES = tuple(k for k in Kind if k.is_texture)  # albedo, roughness, metallic: the GL texture units' order


@dataclass(frozen=True)
class ParamInfo:
    """A parameter as the viewer lists it: its entry of the scene's parameter table, and whether the
    scene's optimize.parameters lists it (it can be made free)."""

    entry: Entry
    optimizable: bool

    @property
    def path(self) -> ParamPath:
        return self.entry.path

    @property
    def kind(self) -> Kind:
        return self.entry.kind

    @property
    def shape(self) -> tuple:
        return self.entry.shape

    @property
    def group(self) -> Group:
        return self.entry.group

    @property
    def owner(self) -> str:
        return self.entry.owner  # the element's name, e.g. "key" for lights.key.position

    @property
    def name(self) -> str:
        return self.entry.name  # the leaf, e.g. "position"


def param_infos(scene, optimizable) -> dict[ParamPath, ParamInfo]:
    """Every parameter of `scene` in the table's order; `optimizable`: the paths that can be made free."""
    optimizable = set(optimizable)
    return {e.path: ParamInfo(e, e.path in optimizable) for e in ParamTable.from_scene(scene).entries()}


@dataclass
class PaneSettings:
    compare: str = "split"  # split or blend
    split: float = 0.5
    diff_gain: float = 4.0
    # zoom and pan, shared by the four panes (they stay aligned): the shown part of the image is the
    # square of side 1/zoom (in image units, 0..1) around `center` (x right, y down)
    zoom: float = 1.0
    center: tuple = (0.5, 0.5)
    probe: tuple | None = None  # (x, y) pixel under the mouse, and its values: {"render": rgb, ...}
    probe_values: dict = dataclasses.field(default_factory=dict)

    MAX_ZOOM = 64.0

    def region(self) -> tuple[float, float, float, float]:
        """(u0, v0, u1, v1): the shown part of the image in 0..1 (v down), kept inside the image."""
        half = 0.5 / self.zoom
        cx = min(max(self.center[0], half), 1.0 - half)
        cy = min(max(self.center[1], half), 1.0 - half)
        self.center = (cx, cy)
        return cx - half, cy - half, cx + half, cy + half

    def zoom_at(self, factor: float, at: tuple[float, float]) -> None:
        """Zoom by `factor` keeping the image point under `at` (0..1 within the pane) where it is."""
        u0, v0, u1, v1 = self.region()
        px, py = u0 + at[0] * (u1 - u0), v0 + at[1] * (v1 - v0)  # the image point under the mouse
        self.zoom = min(max(self.zoom * factor, 1.0), self.MAX_ZOOM)
        span = 1.0 / self.zoom
        self.center = (px - at[0] * span + span / 2, py - at[1] * span + span / 2)
        self.region()

    def pan(self, dx: float, dy: float) -> None:
        """Move the image by (dx, dy) panes (a drag right moves the image right: the view left)."""
        span = 1.0 / self.zoom
        self.center = (self.center[0] - dx * span, self.center[1] - dy * span)
        self.region()

    def pixel(self, at: tuple[float, float], w: int, h: int) -> tuple[int, int]:
        """The image pixel (x, y) under `at` (0..1 within the pane)."""
        u0, v0, u1, v1 = self.region()
        x = int(min(max((u0 + at[0] * (u1 - u0)) * w, 0), w - 1))
        y = int(min(max((v0 + at[1] * (v1 - v0)) * h, 0), h - 1))
        return x, y


@dataclass
class GizmoSettings:
    operation: str = "translate"  # translate, rotate, scale (what the viewport gizmo edits)
    show_targets: bool = True  # markers of the target scene's lights and cameras
    show_current: bool = True  # markers of the current (optimized) lights and cameras
    show_cameras: bool = True  # camera frustums among those markers (datasets have dozens of cameras)


@dataclass
class UndoStep:
    """One undoable action: the last command sent (a drag's final value) and the command restoring the
    value before it (its first value's inverse)."""

    key: Hashable  # the throttle key of a drag (its commands merge into this step); None for a single edit
    command: commands.Command
    inverse: commands.Command

    @property
    def label(self) -> str:
        c = self.command
        what = getattr(c, "path", None) or getattr(c, "name", None)
        return f"{c.kind.replace('_', ' ')}" + (f" {what}" if what else "")


class Throttle:
    """Latest-value-wins rate limiter for commands sent while a widget is dragged: at most one
    command per key every `interval` seconds, and the last value is always delivered (`flush`)."""

    def __init__(self):
        self._pending: dict[Hashable, tuple[commands.Command, float]] = {}
        self._last: dict[Hashable, float] = {}

    def push(self, key: Hashable, command: commands.Command, interval: float) -> None:
        self._pending[key] = (command, interval)

    def due(self, now: float, force: bool = False) -> list[tuple[Hashable, commands.Command]]:
        """(key, command) of every pending command whose interval has passed (all with `force`)."""
        out = []
        for key, (command, interval) in list(self._pending.items()):
            if force or now - self._last.get(key, -math.inf) >= interval:
                out.append((key, command))
                self._last[key] = now
                del self._pending[key]
        return out

    def pending(self) -> bool:
        return bool(self._pending)

    def flush_key(self, key: Hashable) -> list[commands.Command]:
        item = self._pending.pop(key, None)
        if item is None:
            return []
        self._last[key] = time.monotonic()
        return [item[0]]


class AppState:
    """Everything the viewer shows and edits. Build it with `from_problem` before the engine thread
    starts (the only time the viewer reads the problem directly)."""

    def __init__(self, scene, engine, *, params: dict, values: dict, targets: dict, initial: dict,
                 lrs: dict, weights: dict, views: list, steps: int, thumbnails: dict):
        self.scene = scene  # topology and names (values in it are not kept current)
        self.engine = engine
        self.params: dict[ParamPath, ParamInfo] = params
        self.table = ParamTable(info.entry for info in params.values())  # the scene's parameters (paths, kinds)
        self._texture_paths: dict[str, dict[Kind, ParamPath]] = {}
        self.values: dict[str, np.ndarray] = values  # latest known value of every parameter
        self.targets: dict[str, np.ndarray] = targets  # the target scene's values, as last sent
        self.initial: dict[str, np.ndarray] = initial  # optimizable parameters after `reset`
        self.lrs: dict[str, float] = lrs
        self.weights: dict[str, float] = weights
        self.views: list[str] = views
        self.steps = steps
        self.thumbnails: dict[str, np.ndarray] = thumbnails  # target image per view
        self.stale_thumbnails: set[str] = set()

        self.snapshot: Snapshot = engine.snapshot()
        self.serial = 0  # bumps with every new snapshot
        # faces of the optimized meshes of a topology of their own (snapshot.meshes: a shape init, a remesh);
        # their vertices are in `values`. `faces(name)` is the one place the viewer asks for a mesh's faces.
        self.mesh_faces: dict[str, np.ndarray] = {}
        self._take_meshes(self.snapshot)
        self.free: set[str] = set(self.snapshot.free)
        self.active_view: str = self.snapshot.active_view or (views[0] if views else "")
        self.error_history: dict[str, list[tuple[int, float]]] = {}

        self.selection: tuple[str, str] | None = None  # (group, name)
        self.overlays = OverlaySettings()
        self.panes = PaneSettings()
        self.gizmo = GizmoSettings()
        self.camera = OrbitCamera()
        self.step_count = 1  # the Optimizer panel's "Step n"
        self.inspector_rows: dict[str, int] = {}  # per-vertex editors: the row being edited

        self.sent: list[commands.Command] = []  # every command queued, in order (log and tests)
        # the render settings as last sent (the viewport draws with them; the engine's scene is not ours)
        self.render = dataclasses.replace(scene.render) if scene is not None else RenderSettings()
        self.undo_stack: list[UndoStep] = []
        self.redo_stack: list[UndoStep] = []
        self._open_step: UndoStep | None = None  # a drag still going on (merges its commands)
        self.errors_seen: set[str] = set()  # errors acknowledged in the error popup (OK)
        self.error_shown: str | None = None  # the error the popup shows
        # The active view's last image-space gradient: a step whose view batch left the active view out
        # publishes none (batch_views < views), and the overlay must not blink off for those snapshots.
        self.grad_image: np.ndarray | None = None
        self._grad_view = ""
        self.record_dir = None  # the folder this session records into (File > Save render writes there)
        self.dialog = None  # (a pending save dialog, what to save) (menus.poll_dialog)
        self.pending_screenshot = None  # (path, frames to wait) (menus.take_screenshot)
        self.saved: list = []  # files saved from the File menu
        self.show_help = False  # the shortcut and mouse overlay (F1, ?)
        self.settings: dict = {}  # the viewer's own settings (menus.load_settings, ~/.config/drstudio)
        self.ui_scale = 1.0
        self.send_error = ""  # the last command the engine would not take (bad arguments, queue full)
        self.version = 0  # bumps with every local edit of values or targets (redraw keys)
        self.throttle = Throttle()
        self.frame = 0
        self.fps = 0.0
        self.frame_ms: deque = deque(maxlen=240)  # time between drawn frames
        self.frame_cpu_ms: deque = deque(maxlen=60)  # time spent drawing a frame (what a frame costs)
        self.rects: dict[str, tuple[float, float, float, float]] = {}  # widget name -> screen rect
        self.viewport_rect = (0.0, 0.0, 1.0, 1.0)  # screen rect of the 3D view
        self.window_pos = (0, 0)  # of the OS window on the screen (ImGui coordinates are window-relative)
        self.view_proj = np.eye(4)  # of the free camera, last frame
        self.gizmo_dragging = False
        self.at_rest = False  # no input for a while: frames, polls and 3D redraws slow down (ViewerApp)
        self.docked: dict[str, bool] = {}  # window name -> docked last frame
        self.gl = None  # the app's GL resources (created after GL init, released before exit)
        self.screenshot = None  # callable() -> (H, W, 3) uint8 of the back buffer (set by the app)
        self.quit = False
        self.focus_window: str | None = None  # a window to bring to the front next frame (tabs; tests)

        # Scenes with radiance fields (app.build sets `preview`, a field_preview.FieldPreview).
        self.preview = None
        self.field_view = FieldViewSettings()
        self._preview_seen = (None, None, None)
        # Mesh scenes: the progressive path-traced preview of render mode "path" (app.build sets it, a
        # path_preview.PathPreview); `path_view`: the Overlays window's "path-traced preview" checkbox.
        self.path_preview = None
        self.path_view = True
        self.problem = None  # the Problem (for the video export's renderers; never stepped here)
        self.editor = False  # the scene has no optimize section: a viewer/editor (document.editor_scene)
        self.opened_at = time.monotonic()  # when this scene was opened (the results' "seconds")
        self.open_request: str | None = None  # a scene file to open instead (File > Open; the app acts on it)
        self.open_text = ""  # File > Open path: the typed path
        self.results_dir = None  # where this session's results go when it ends (`drstudio view`: runs/<ts>)
        self.exported: list = []  # folders File > Export results wrote
        self.save_path = None  # where Save scene as last wrote the scene (File > Save scene, Ctrl+S, writes there)
        self.export_request = None  # a folder to export the results into (the app does it between frames)
        self.phases_shown: list[str] = []  # phases whose progress the app drew while they held the UI thread
        self.video = None  # camera_panel.VideoSettings (created by the Camera path window)

        # Replay mode (app/viewer/replay_mode.py sets these; the live viewer keeps the defaults).
        self.read_only = False  # True: commands are refused (kept in `refused`), editing widgets disabled
        self.refused: list[commands.Command] = []  # commands dropped because the state is read-only
        self.history_start = 0  # timeline position of index 0 of `snapshot.history` (the plots' x)
        self.plot_span: tuple[int, int] | None = None  # fixed x-range of the plots; None: fit the data
        self.plot_marks: tuple[int, ...] = ()  # x positions marked on the plots (user edits)

    @classmethod
    def from_problem(cls, problem, engine) -> AppState:
        scene = problem.scene
        params = param_infos(scene, problem.param_specs)
        values = {path: problem.ds.get(path) for path in params}
        thumbnails = {}
        for cam in problem.views:
            try:
                thumbnails[cam] = problem.target_numpy(cam)
            except StopIteration:  # a view without a target image
                pass
        return cls(scene, engine, params=params, values=values,
                   targets={k: np.array(v, np.float32) for k, v in problem.truth.items()},
                   initial={k: np.array(v, np.float32) for k, v in problem.initial.items()},
                   lrs=dict(problem.lrs), weights=dict(problem.weights), views=list(problem.views),
                   steps=int(problem.steps), thumbnails=thumbnails)

    @classmethod
    def from_description(cls, scene, engine, d: dict) -> AppState:
        """The state of a viewer attached to a served run (`renderer.optim.remote`): the problem's
        description the server sent (`RemoteEngine.description`) instead of the problem itself."""
        params = param_infos(scene, d["param_specs"])
        f32 = lambda m: {k: np.array(v, np.float32) for k, v in m.items()}  # noqa: E731
        return cls(scene, engine, params=params, values=f32(d["values"]), targets=f32(d["truth"]),
                   initial=f32(d["initial"]), lrs=dict(d["lrs"]), weights=dict(d["weights"]), views=list(d["views"]),
                   steps=int(d["steps"]), thumbnails=f32(d["thumbnails"]))

    # -- commands -----------------------------------------------------------------------------------
    def command(self, command: CommandLike, *args) -> commands.Command | None:
        """The command to send: `command` itself, or a command class (`commands.SetLr`) or kind
        (`"set_lr"`) with its arguments (`commands.make`). None, with the message in `send_error`, when the
        arguments are bad."""
        if isinstance(command, commands.Command):
            if args:
                raise TypeError("command: pass a Command, or a command class or kind and its arguments")
            return command
        kind = command.kind if isinstance(command, type) and issubclass(command, commands.Command) else command
        try:
            return commands.make(kind, *args)
        except commands.CommandError as exc:
            self._show_refusal(exc)
            return None

    def send(self, command: CommandLike, *args) -> commands.Command | None:
        """Queue a command for the engine (applied between steps, in order) and show its effect at once
        (`Command.mirror`). A `Command`, or a command class or kind and its arguments
        (`send(commands.SetLr, path, 0.01)`, `send("set_lr", path, 0.01)`).
        Returns the command queued, or None: read-only (kept in `refused`), or refused by `Engine.send`
        (bad arguments, queue full: the message is in `send_error`, shown with the engine's errors)."""
        cmd = self.command(command, *args)
        if cmd is None:
            return None
        if self.read_only:
            self.refused.append(cmd)
            return None
        inverse = cmd.inverse(self)
        try:
            self._deliver(cmd)
        except commands.CommandError as exc:  # engine.EngineBusy too
            self._show_refusal(exc)
            return None
        self._record_undo(None, cmd, inverse)
        return cmd

    # -- undo / redo --------------------------------------------------------------------------------
    def _record_undo(self, key: Hashable, cmd: commands.Command, inverse: commands.Command | None) -> None:
        """Remember `cmd` as an undo step; commands of an open drag with the same `key` merge into it."""
        if isinstance(cmd, commands.Reset):  # values before a reset are not restorable one command at a time
            self.undo_stack.clear()
            self.redo_stack.clear()
            self._open_step = None
            return
        if inverse is None:
            return
        step = self._open_step
        if key is not None and step is not None and step.key == key:
            step.command = cmd
            return
        step = UndoStep(key, cmd, inverse)
        self.undo_stack.append(step)
        del self.undo_stack[:-MAX_UNDO]
        self.redo_stack.clear()
        self._open_step = step if key is not None else None

    def undo(self) -> commands.Command | None:
        """Send the inverse of the last edit (recorded like any command); None when there is nothing."""
        self._close_drags()
        if not self.undo_stack:
            return None
        step = self.undo_stack.pop()
        sent = self._send_untracked(step.inverse)
        if sent is None:
            self.undo_stack.append(step)
            return None
        self.redo_stack.append(step)
        return sent

    def redo(self) -> commands.Command | None:
        """Send again the last undone edit; None when there is nothing."""
        self._close_drags()
        if not self.redo_stack:
            return None
        step = self.redo_stack.pop()
        sent = self._send_untracked(step.command)
        if sent is None:
            self.redo_stack.append(step)
            return None
        self.undo_stack.append(step)
        return sent

    def _close_drags(self) -> None:
        if self._open_step is not None:
            self.release(self._open_step.key)
        self._open_step = None

    def _send_untracked(self, cmd: commands.Command) -> commands.Command | None:
        if self.read_only:
            self.refused.append(cmd)
            return None
        try:
            self._deliver(cmd)
        except commands.CommandError as exc:
            self._show_refusal(exc)
            return None
        return cmd

    def _deliver(self, cmd: commands.Command) -> None:
        self.engine.send(cmd)
        self.sent.append(cmd)
        self.version += 1
        if isinstance(cmd, (commands.Start, commands.Reset)):
            self.send_error = ""  # as the engine's own error: shown until the next start or reset
        cmd.mirror(self)
        if isinstance(cmd, commands.SetTargetValue):
            self.stale_thumbnails = set(self.views)  # until the engine publishes the new targets

    def _show_refusal(self, exc: Exception) -> None:
        self.send_error = f"command refused: {exc}"
        log.warning("%s", self.send_error)

    def send_throttled(self, key: Hashable, command: CommandLike, *args, interval: float = 0.1) -> None:
        """For values edited continuously (drags): the latest value goes out at most every `interval`
        seconds; call `release(key)` when the drag ends so the final value is sent. The local values
        follow every call."""
        cmd = self.command(command, *args)
        if cmd is None:
            return
        if self.read_only:
            self.refused.append(cmd)
            return
        inverse = cmd.inverse(self)
        self.throttle.push(key, cmd, interval)
        self.version += 1
        cmd.mirror(self)
        self._record_undo(key, cmd, inverse)  # a drag: one undo step, its first value's inverse

    def release(self, key: Hashable) -> None:
        """The drag of `key` ended: its last value is sent and its undo step closed."""
        for cmd in self.throttle.flush_key(key):
            self._send_pending(key, cmd)
        if self._open_step is not None and self._open_step.key == key:
            self._open_step = None

    def flush(self, force: bool = False) -> None:
        for key, cmd in self.throttle.due(time.monotonic(), force):
            self._send_pending(key, cmd)

    def _send_pending(self, key: Hashable, cmd: commands.Command) -> None:
        try:
            self._deliver(cmd)
        except EngineBusy as exc:  # the latest value of a drag is not lost: retried at the next flush
            self._show_refusal(exc)
            self.throttle.push(key, cmd, 0.0)
        except commands.CommandError as exc:
            self._show_refusal(exc)

    def reset_values(self) -> None:
        """What `reset` does to the local copy (`commands.Reset.mirror`): the optimizable parameters back to
        their initial values, the error plots cleared."""
        for path, value in self.initial.items():
            self.values[path] = value.copy()
        self.error_history.clear()
        self.grad_image = None

    # -- engine state -------------------------------------------------------------------------------
    def pull(self) -> bool:
        """Swap in the engine's latest snapshot; True when it is new."""
        snap = self.engine.snapshot()
        if snap is self.snapshot:
            return False
        self.snapshot = snap
        self.serial += 1
        self.values.update(snap.values)
        self._take_meshes(snap)
        self.free = set(snap.free)
        if snap.active_view:
            self.active_view = snap.active_view
        if snap.grad_image is not None:
            self.grad_image, self._grad_view = snap.grad_image, snap.active_view
        elif self._grad_view != self.active_view:  # another view's gradient: not shown over this one
            self.grad_image = None
        if snap.target is not None and snap.active_view:
            self.thumbnails[snap.active_view] = snap.target
            self.stale_thumbnails.discard(snap.active_view)
        thumbs = getattr(snap, "thumbnails", None)  # all target views, when the engine publishes them
        if thumbs:
            self.thumbnails.update(thumbs)
            self.stale_thumbnails.clear()
        for path, err in snap.errors.items():
            hist = self.error_history.setdefault(path, [])
            if not hist or hist[-1][0] != snap.step:
                hist.append((snap.step, float(err)))
        return True

    def _take_meshes(self, snap) -> None:
        """The vertices and faces of optimized meshes of their own topology (`snapshot.meshes`). The faces
        array is kept while the topology is the same (a new array means new GL buffers)."""
        for name, mesh in getattr(snap, "meshes", {}).items():
            if self.scene is None or name not in self.scene.meshes:
                continue
            self.values[param_path(Group.MESHES, name, "vertices")] = mesh["vertices"]
            old = self.mesh_faces.get(name)
            faces = np.asarray(mesh["faces"], np.int32)
            if old is None or old.shape != faces.shape or not np.array_equal(old, faces):
                self.mesh_faces[name] = faces

    def faces(self, name: str) -> np.ndarray:
        """(F, 3) faces of mesh `name` as the optimizer has it now (`values` holds its vertices)."""
        faces = self.mesh_faces.get(name)
        return self.scene.meshes[name].faces if faces is None else faces

    def preview_changed(self) -> bool:
        """True when the field preview thread published an image or occupancy points not drawn yet, or the
        path preview a frame."""
        pv, pp = self.preview, self.path_preview
        now = (pv.latest if pv else None, pv.occupancy if pv else None, pp.latest if pp else None)
        if all(a is b for a, b in zip(now, self._preview_seen)):
            return False
        self._preview_seen = now
        return True

    def tick(self, dt: float) -> None:
        self.frame += 1
        self.frame_ms.append(dt * 1000.0)
        if dt > 0:
            self.fps = 1.0 / dt if self.fps == 0.0 else 0.95 * self.fps + 0.05 / dt

    # -- helpers ------------------------------------------------------------------------------------
    def items(self, group: Group | str) -> list[str]:
        if group == Group.LIGHTS:
            sc = self.scene
            return [*sc.point_lights, *sc.directional_lights, *sc.ambient_lights]
        return list(getattr(self.scene, group))

    def item_params(self, group: Group | str, name: str) -> list[ParamInfo]:
        return [self.params[path] for path in self.table.of_element(group, name)]

    def texture_paths(self, material: str) -> dict[Kind, ParamPath]:
        """The paths of material `material`'s textures, by kind (in `TEXTURES` order)."""
        paths = self._texture_paths.get(material)
        if paths is None:
            found = {e.kind: e.path for e in self.table.select(group=Group.MATERIALS, owner=material)}
            paths = self._texture_paths[material] = {k: found[k] for k in TEXTURES}
        return paths

    def light_type(self, name: str) -> str:
        sc = self.scene
        if name in sc.point_lights:
            return "point"
        if name in sc.directional_lights:
            return "directional"
        return "ambient"

    def scene_bounds(self, with_lights: bool = False) -> tuple[np.ndarray, float]:
        """Center and radius of the meshes' current world-space bounding box (and of the current and
        target point lights: what "frame all" shows)."""
        from .geometry import world_vertices

        pts = [world_vertices(self, name) for name in self.scene.meshes]
        if not pts and getattr(self.scene, "fields", None):  # a field-only scene: the fields' boxes
            pts = [np.asarray(f.aabb, np.float32).reshape(2, 3) for f in self.scene.fields.values()]
        if with_lights:
            pts += [np.asarray(v[param_path(Group.LIGHTS, n, "position")], np.float32).reshape(1, 3)
                    for n in self.scene.point_lights for v in (self.values, self.targets)]
        pts = np.concatenate(pts) if pts else np.zeros((1, 3))
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        return (lo + hi) / 2.0, max(float(np.linalg.norm(hi - lo)) / 2.0, 1e-3)

    def project(self, points) -> np.ndarray:
        """Screen positions (N, 2) of world points in the last drawn viewport (for input and tests)."""
        return project(self.view_proj, points, self.viewport_rect)

    def rect_center(self, name: str) -> tuple[float, float]:
        x, y, w, h = self.rects[name]
        return x + w / 2.0, y + h / 2.0
