"""`drstudio view`: the window, the main loop and the lifecycle of the viewer.

Threads: the optimization engine steps the problem in its own thread; this (main) thread runs the
UI. Each frame the UI swaps in the engine's latest snapshot (`engine.snapshot()`, a reference read
under a lock), sends queued commands (`engine.send()`), uploads what changed to GL and draws. It
never launches an optimizer kernel and never waits for a step.

Lifecycle (hello_imgui's): GLFW window and GL context -> ImGui/ImPlot contexts and the native
GLFW + OpenGL3 backends -> GL resources (`GLResources`, the post-init step) -> frames ->
GL resources released (before-exit) -> backends shut down -> contexts destroyed -> GLFW terminated.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import time
from multiprocessing import AuthenticationError
from pathlib import Path

# imgui_bundle before glfw: it points pyGLFW at the libglfw its native backend is linked against.
from imgui_bundle import imgui, imguizmo, implot  # isort: split

import glfw
import moderngl
import numpy as np
from drstudio.renderer import progress
from drstudio.renderer.errors import SceneError
from drstudio.renderer.loading import open_scene
from drstudio.renderer.optim import commands
from drstudio.renderer.optim.engine import Engine
from drstudio.renderer.optim.problem import Problem

from . import document, menus, panels
from .image_panes import Compositor
from .overlays import colormap_lut
from .state import AppState
from .uploads import Uploader
from .viewport import Viewport, viewport_window
from .windows import WINDOW_BG

log = logging.getLogger("drstudio.viewer")
EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


class GLResources:
    """Every GL object of the viewer; created once the context exists, released before it goes."""

    def __init__(self, ctx: moderngl.Context, state: AppState):
        self.ctx = ctx
        self.uploader = Uploader(ctx)
        self.colormap = state.overlays.colormap
        self.lut = ctx.texture((256, 1), 3, colormap_lut(self.colormap).tobytes())
        self.lut.filter = (moderngl.LINEAR, moderngl.LINEAR)
        self.lut.repeat_x = self.lut.repeat_y = False
        self.compositor = Compositor(ctx, self.lut)
        self.viewport = Viewport(ctx, state, self.uploader, self.lut)

    def update(self, state: AppState) -> None:
        """Once per drawn frame, before the windows: values and gradients -> GL, colormap changes."""
        self.viewport.sync(state)
        if state.overlays.colormap != self.colormap:
            self.colormap = state.overlays.colormap
            self.lut.write(colormap_lut(self.colormap).tobytes())
            for out in self.compositor.outputs.values():
                out.key = None

    def release(self) -> None:
        self.viewport.release()
        self.compositor.release()
        self.uploader.release()
        self.lut.release()


def read_back_buffer(ctx: moderngl.Context) -> np.ndarray:
    """The window's back buffer as (H, W, 3) uint8, row 0 at the top."""
    w, h = ctx.screen.size
    data = ctx.screen.read(components=3)
    _ = ctx.error  # screen.read sets GL_INVALID_OPERATION on the default framebuffer; the read works
    return np.frombuffer(data, np.uint8).reshape(h, w, 3)[::-1].copy()


class ViewerApp:
    """The window and its frame loop. Frames are drawn on demand (software GL pays for every pixel
    of every frame, and those cycles are the optimizer's): at up to `max_fps` while there is input
    (and for a few frames after it), when a new snapshot arrives (at most `snapshot_fps`), and at
    least `running_fps` while the optimizer runs (so the window stays fluid), `idle_fps` otherwise.
    At rest (no input for `rest_after` seconds) new snapshots are drawn at most `rest_snapshot_fps` times a
    second and nothing else is drawn more often than `rest_fps`; an attached engine is polled as often
    (`RemoteEngine.poll`), and the 3D view redraws for new optimizer values at most `viewport.REST_REDRAW_FPS`:
    a viewer nobody touches leaves the CPU to the optimizer. The first input draws at full rate again."""

    SETTLE_FRAMES = 4  # frames drawn after the last input event (ImGui hover/active states settle)
    # Replay mode (replay_mode.run_replay) sets these: windows drawn after the standard ones
    # (functions of the state) and the one docked in a full-width strip along the bottom.
    extra_windows: tuple = ()
    bottom_window: str | None = None

    def __init__(self, state: AppState, *, title: str, size=(1280, 720), max_fps: float = 40.0,
                 snapshot_fps: float = 10.0, idle_fps: float = 10.0, running_fps: float = 30.0, opener=None,
                 rest_after: float = 2.0, rest_snapshot_fps: float = 4.0, rest_fps: float = 2.0):
        self.state = state
        # opener(path) -> AppState: File > Open (a new scene's state, its engine running and the old scene's
        # ended), raising SceneError / ValueError / OSError with the CLI's message for a scene it cannot open
        self.opener = opener
        self.title = title
        self.size = size
        self.max_fps = max_fps
        self.snapshot_fps = snapshot_fps
        self.idle_fps = idle_fps
        self.running_fps = running_fps
        self.rest_after, self.rest_snapshot_fps, self.rest_fps = rest_after, rest_snapshot_fps, rest_fps
        self._input_time = time.perf_counter()  # the last input event (or open, or a blocking job)
        self._pulled = 0.0  # when the engine's snapshot was last taken
        self._layout_done = False
        # File > Open or Export results runs between two frames: the phases it reports draw frames of their own
        # (only then: a phase frame's ImGui frame takes the input events queued for the next real frame)
        self._blocking = False
        self._phase_drawn = 0.0
        self._events = 0  # input events seen by our GLFW callbacks (ImGui's backend chains them)

    def run(self, max_frames: int | None = None, on_frame=None) -> int:
        errors: list[str] = []
        glfw.set_error_callback(lambda code, text: errors.append(f"GLFW error {code:#x}: {text}"))
        if not glfw.init():
            print(f"drstudio view: cannot open a window (no display?) {' '.join(errors)}", file=sys.stderr)
            return EXIT_USER_ERROR
        window = None
        try:
            glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
            glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
            glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
            glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, True)
            window = glfw.create_window(self.size[0], self.size[1], self.title, None, None)
            if not window:
                print(f"drstudio view: cannot create an OpenGL 3.3 window: {' '.join(errors)}", file=sys.stderr)
                return EXIT_USER_ERROR
            glfw.make_context_current(window)
            glfw.swap_interval(0)
            return self._run_window(window, max_frames, on_frame)
        finally:
            if window:
                glfw.destroy_window(window)
            glfw.terminate()
            glfw.set_error_callback(None)

    def _install_callbacks(self, window) -> None:
        """Count input events (to draw on demand). Installed before ImGui's backend, which chains them."""
        def seen(*_args) -> None:
            self._events += 1

        for setter in (glfw.set_cursor_pos_callback, glfw.set_mouse_button_callback, glfw.set_scroll_callback,
                       glfw.set_key_callback, glfw.set_char_callback, glfw.set_window_size_callback,
                       glfw.set_window_focus_callback, glfw.set_cursor_enter_callback):
            setter(window, seen)
        glfw.set_drop_callback(window, self._on_drop)

    def _run_window(self, window, max_frames, on_frame) -> int:
        state = self.state
        ctx = moderngl.create_context()
        imgui.create_context()
        implot.create_context()
        io = imgui.get_io()
        io.set_ini_filename(None)  # the layout is rebuilt at start; nothing written to the working directory
        state.settings = menus.load_settings()  # ~/.config/drstudio/viewer.json: the UI scale, recent files
        state.ui_scale = menus.ui_scale(state.settings)
        if self.opener is not None and state.scene is not None and state.scene.path:
            document.add_recent(state.settings, state.scene.path)
            menus.save_settings(state.settings)
        io.config_flags |= imgui.ConfigFlags_.docking_enable
        self._install_callbacks(window)
        imgui.backends.glfw_init_for_opengl(ctypes.cast(window, ctypes.c_void_p).value, True)
        imgui.backends.opengl3_init("#version 330")
        def on_phase(event: str, phase) -> None:  # work that holds the UI thread draws its progress
            self._phase_frame(window, ctx, event, phase)

        progress.add_listener(on_phase)
        try:
            state.gl = GLResources(ctx, state)
            try:
                state.screenshot = lambda: read_back_buffer(ctx)
                self._loop(window, ctx, max_frames, on_frame)
            finally:
                progress.remove_listener(on_phase)
                self.state.screenshot = None
                self.state.gl.release()
                self.state.gl = None
        finally:
            imgui.backends.opengl3_shutdown()
            imgui.backends.glfw_shutdown()
            implot.destroy_context()
            imgui.destroy_context()
            ctx.release()
        return 0

    def _on_drop(self, window, paths) -> None:
        """A scene file dropped on the window opens like File > Open (the first .json of the drop)."""
        self._events += 1
        scenes = [p for p in paths if str(p).lower().endswith(".json")]
        if scenes and self.opener is not None and not self.state.read_only:
            menus.request_open(self.state, str(scenes[0]))
        else:
            log.info("dropped %s: not a scene file (.json)", paths)

    def _due(self, now: float, last_draw: float, dirty: bool, settle: int) -> float:
        """Seconds until the next frame should be drawn (<= 0: now)."""
        state = self.state
        since = now - last_draw
        if settle > 0 or state.gizmo_dragging or state.gl.viewport.moving or state.throttle.pending():
            return 1.0 / self.max_fps - since
        if state.at_rest:
            return 1.0 / (self.rest_snapshot_fps if dirty else self.rest_fps) - since
        snap = state.snapshot
        floor = self.running_fps if snap is not None and snap.state == "running" else self.idle_fps
        if dirty:
            return 1.0 / max(self.snapshot_fps, floor) - since
        return 1.0 / floor - since

    def _rest(self, now: float) -> None:
        """Enter or leave the rest state (no input for `rest_after` s); an attached engine polls accordingly."""
        state = self.state
        rest = now - self._input_time >= self.rest_after and state.open_request is None \
            and state.export_request is None and state.dialog is None
        if rest != state.at_rest:
            state.at_rest = rest
            if hasattr(state.engine, "poll"):  # RemoteEngine: snapshots fetched as often as they are drawn
                state.engine.poll = 1.0 / self.rest_snapshot_fps if rest else 1.0 / self.snapshot_fps

    def _phase_frame(self, window, ctx: moderngl.Context, event: str, phase) -> None:
        """A frame with only the progress of `phase` (name, bar, ETA), drawn while work between two frames
        holds the UI thread (File > Open building a scene, Export results' final evaluation): at its start
        and then at most ten times a second. Phases on other threads show in the menu bar instead."""
        if event == "end" or threading.current_thread() is not threading.main_thread() or not self._blocking:
            return
        now = time.monotonic()
        if event != "start" and now - self._phase_drawn < 0.1:
            return
        self._phase_drawn = now
        self.state.phases_shown.append(phase.name)
        glfw.poll_events()
        imgui.backends.opengl3_new_frame()
        imgui.backends.glfw_new_frame()
        imgui.new_frame()
        vp = imgui.get_main_viewport()
        imgui.set_next_window_pos((vp.work_pos.x + vp.work_size.x / 2, vp.work_pos.y + vp.work_size.y / 2),
                                  imgui.Cond_.always, (0.5, 0.5))
        flags = (imgui.WindowFlags_.no_decoration | imgui.WindowFlags_.always_auto_resize
                 | imgui.WindowFlags_.no_docking | imgui.WindowFlags_.no_saved_settings)
        imgui.begin("##drstudio.phase", None, flags)
        imgui.text(phase.name)
        imgui.progress_bar(phase.fraction, (420, 0), f"{phase.done}/{phase.total} {phase.unit}")
        eta = phase.eta()
        imgui.text_disabled(f"ETA {eta:.0f} s" if eta is not None else "ETA: after the first one")
        imgui.end()
        imgui.render()
        fb_w, fb_h = glfw.get_framebuffer_size(window)
        ctx.screen.use()
        ctx.viewport = (0, 0, fb_w, fb_h)
        ctx.clear(*WINDOW_BG, 1.0)
        imgui.backends.opengl3_render_draw_data(imgui.get_draw_data())
        glfw.swap_buffers(window)

    def _export(self) -> None:
        """File > Export results, between frames (its final evaluation draws progress frames)."""
        state = self.state
        out, state.export_request = state.export_request, None
        self._blocking = True
        try:
            menus.export(state, out)
        finally:
            self._blocking = False

    def _open(self, window, ctx: moderngl.Context) -> None:
        """File > Open: the scene `state.open_request` replaces the open one (its engine stopped, its GL
        resources released); a scene that cannot be opened leaves the old one, with the message in the
        error popup."""
        old = self.state
        path, old.open_request = old.open_request, None
        self._blocking = True
        try:
            new = self.opener(path)
        except (SceneError, ValueError, OSError) as exc:
            old.send_error = str(exc)  # the error popup shows it, as `drstudio view FILE` prints it
            log.error("cannot open %s: %s", path, exc)
            return
        finally:
            self._blocking = False
        old.gl.release()
        old.gl = None
        for name in ("settings", "ui_scale", "screenshot", "window_pos", "frame", "errors_seen", "phases_shown"):
            setattr(new, name, getattr(old, name))
        new.gl = GLResources(ctx, new)
        document.add_recent(new.settings, new.scene.path)
        menus.save_settings(new.settings)
        glfw.set_window_title(window, f"drstudio - {Path(new.scene.path).name}")
        self.state = new

    def _loop(self, window, ctx: moderngl.Context, max_frames, on_frame) -> None:
        state = self.state
        last_draw = time.perf_counter()
        seen_events, settle, dirty = -1, self.SETTLE_FRAMES, True
        while not glfw.window_should_close(window) and not state.quit:
            if state.open_request is not None and self.opener is not None:
                self._open(window, ctx)
                state, dirty, settle = self.state, True, self.SETTLE_FRAMES
                self._input_time = time.perf_counter()
            if state.export_request is not None:
                self._export()
                dirty, settle = True, self.SETTLE_FRAMES
                self._input_time = time.perf_counter()
            glfw.poll_events()
            # ImGui trickles queued input (typed text: one key a frame); events it still holds are input too
            if self._events != seen_events or len(imgui.get_current_context().input_events_queue):
                seen_events, settle = self._events, self.SETTLE_FRAMES
                self._input_time = time.perf_counter()
            now = time.perf_counter()
            self._rest(now)
            if not state.at_rest or now - self._pulled >= 1.0 / self.rest_snapshot_fps:
                # at rest snapshots are taken only as often as they are drawn: an in-process engine renders
                # the panes' images only for snapshots read (images_on_demand)
                dirty |= state.pull()
                self._pulled = now
            dirty |= state.preview_changed()
            wait = self._due(time.perf_counter(), last_draw, dirty, settle)
            if wait > 0:
                # sleep until input or the frame is due (snapshots arriving meanwhile wait for it)
                glfw.wait_events_timeout(min(wait, 0.05))
                continue
            settle = max(0, settle - 1)
            dirty = False
            t_frame = time.perf_counter()
            state.window_pos = glfw.get_window_pos(window)
            state.flush()
            state.gl.update(state)

            imgui.backends.opengl3_new_frame()
            imgui.backends.glfw_new_frame()
            imgui.new_frame()
            imguizmo.im_guizmo.begin_frame()
            self._frame(state)
            imgui.render()

            fb_w, fb_h = glfw.get_framebuffer_size(window)
            ctx.screen.use()
            ctx.viewport = (0, 0, fb_w, fb_h)
            ctx.clear(*WINDOW_BG, 1.0)  # the background of the docked windows
            imgui.backends.opengl3_render_draw_data(imgui.get_draw_data())
            menus.take_screenshot(state)
            if on_frame is not None:
                on_frame(state)  # the back buffer holds this frame until the swap
            glfw.swap_buffers(window)

            now = time.perf_counter()
            state.frame_cpu_ms.append((now - t_frame) * 1000.0)
            state.tick(t_frame - last_draw)
            last_draw = t_frame
            if max_frames is not None and state.frame >= max_frames:
                break
        self.state.flush(force=True)

    def _frame(self, state: AppState) -> None:
        imgui.get_style().font_scale_main = state.ui_scale
        menus.shortcuts(state)
        menus.poll_dialog(state)
        panels.menu_bar(state)
        dockspace = imgui.get_id("drstudio.dockspace")
        if not self._layout_done:
            panels.dock_layout(dockspace, bottom_window=self.bottom_window)
            self._layout_done = True
        if state.frame == 2 and state.focus_window is None:  # once the docked tabs exist
            state.focus_window = "Overlays"  # the front tab of its node (Camera path behind it)
        # the docked windows cover the whole viewport: no background under them (software GL pays per pixel)
        imgui.dock_space_over_viewport(dockspace, imgui.get_main_viewport(),
                                       imgui.DockNodeFlags_.passthru_central_node)
        imguizmo.im_guizmo.enable(not state.read_only)  # read-only (replay): target gizmos drawn inactive
        viewport_window(state, state.gl.viewport, state.gl.lut.glo)
        panels.draw_windows(state)
        for window in self.extra_windows:
            window(state)
        menus.help_window(state)
        menus.error_popup(state, panels.errors(state))


def build(scene_path: str, device: str | None = None, scene=None) -> tuple[AppState, Engine]:
    """Load the scene (or take `scene`, loaded from `scene_path`), set up its problem and engine, and the
    viewer state (engine not started). A scene without an optimize section opens as a viewer/editor
    (`document.editor_scene`: every parameter listed, none free)."""
    scene = open_scene(scene_path) if scene is None else scene
    editor = scene.optimize is None
    problem = Problem(document.editor_scene(scene) if editor else scene, device)
    if editor:
        document.fix_all(problem)
    # A field's render of the active view costs many optimizer steps; the viewport's field preview shows
    # training live, so the image panes of field scenes refresh once a second instead of ten times.
    engine = Engine(problem, image_interval=1.0 if problem.field_training is not None else 0.1,
                    images_on_demand=True)
    state = AppState.from_problem(problem, engine)
    state.problem = problem
    state.editor = editor
    if problem.field_training is not None:  # the field preview thread (started with the engine)
        from .field_preview import FieldPreview, FieldSource

        source = FieldSource(problem)
        # Load the Warp modules of the read-out here, before the engine and preview threads start: two
        # threads loading the same module at once crash Warp (a launch through a replaced module).
        source.render(np.array([0, 0, 4, 0, 0, 0, 1], np.float32), np.array([2, 2, 1, 1], np.float32), 2, 2)
        state.preview = FieldPreview(source, engine)
    elif scene.meshes:  # render mode "path": the viewport's progressive path-traced preview (idle otherwise)
        from .path_preview import PathPreview

        state.path_preview = PathPreview(problem.scene, str(problem.ds.device))
    return state, engine


def build_attached(address: tuple[str, int], token: str) -> tuple[AppState, object]:
    """The viewer state of a run served by `drstudio optimize --serve` (renderer.optim.remote): the
    scene file it names is loaded here (it must be readable from this machine), values come from it."""
    from drstudio.renderer.optim.remote import RemoteEngine

    engine = RemoteEngine(address, token)
    scene = open_scene(engine.description["scene"])
    state = AppState.from_description(scene, engine, engine.description)
    if scene.meshes and not scene.fields:
        from .path_preview import PathPreview

        state.path_preview = PathPreview(scene, "cpu")  # this process's own renders stay on the CPU
    return state, engine


class LiveSession:
    """One open scene of a live viewer: its state, engine (running), recorder and results folder.
    `end()` stops it and, with a results folder, writes what `drstudio optimize` writes there."""

    def __init__(self, state: AppState, engine, recorder=None, results_dir: Path | None = None):
        self.state, self.engine, self.recorder = state, engine, recorder
        state.results_dir = results_dir
        if recorder is not None:
            engine.add_listener(recorder)
            state.record_dir = recorder.dir  # File > Save render / Screenshot write there
            print(f"recording to {recorder.dir}", file=sys.stderr)
        engine.start_thread()
        for preview in (state.preview, state.path_preview):
            if preview is not None:
                preview.start()

    def end(self) -> None:
        state, engine = self.state, self.engine
        for preview in (state.preview, state.path_preview):
            if preview is not None:
                preview.stop()
        if state.video is not None and state.video.job is not None:
            state.video.job.cancel()
            state.video.job.join(30)
        stopped = engine.shutdown(timeout=120.0)
        if self.recorder is not None:
            self.recorder.close()
            print(self.recorder.summary(), file=sys.stderr)
        if state.results_dir is None or state.problem is None:
            return
        if not stopped:
            print(f"drstudio view: the optimizer did not stop; no results written to {state.results_dir}",
                  file=sys.stderr)
            return
        extra = {"viewer": True}
        if self.recorder is not None:
            extra["recording"] = {"path": str(self.recorder.dir), "bytes": self.recorder.bytes_written,
                                  "error": self.recorder.failed or None}
        from drstudio.app.headless import write_results

        print(f"writing results to {state.results_dir}", file=sys.stderr)
        try:
            write_results(state.problem, engine.snapshot(), Path(state.results_dir),
                          time.monotonic() - state.opened_at, extra)
        except OSError as exc:
            print(f"drstudio view: cannot write results to {state.results_dir}: {exc}", file=sys.stderr)


def run_viewer(scene_path: str | None, *, device: str | None = None, max_frames: int | None = None,
               on_frame=None, record_dir: str | Path | None = None, attach: tuple[str, int] | None = None,
               token: str | None = None, results_dir: str | Path | None = None) -> int:
    """Open the viewer-editor on a scene file and run until the window closes (or `max_frames`).

    `record_dir`: record the session into a new folder below it (see docs/recording.md); None: off.
    `results_dir`: when the session ends (quit, or File > Open of another scene), write there what
    `drstudio optimize` writes (params.npz, metrics.json, views/, ...); a scene opened later gets a fresh
    folder beside it (`<results_dir>-2`, ...), and its recording goes below that when `record_dir` was inside
    `results_dir`. None: nothing written at the end.
    `attach` (host, port) and `token`: show and steer a run served by `drstudio optimize --serve` instead
    (its own process records it; `scene_path`, `record_dir` and `results_dir` are not used).

    `on_frame(state)` is called every frame after drawing, before the buffer swap (a test hook; the
    back buffer can be read with `state.screenshot()`; File > Open replaces the state). Returns the process
    exit code: 0, 2 for a bad scene file or no display, 130 when interrupted."""
    from drstudio.renderer.recording import Recorder, next_recording_dir

    results_dir = None if results_dir is None or attach is not None else Path(results_dir)
    inside = results_dir is not None and record_dir is not None and \
        Path(record_dir).resolve().is_relative_to(results_dir.resolve())
    rec_rel = Path(record_dir).resolve().relative_to(results_dir.resolve()) if inside else None

    def start(path: str, scene=None, first: bool = False) -> LiveSession:
        state, engine = build(path, device, scene)
        out = results_dir if first or results_dir is None else next_recording_dir(results_dir)
        rec = record_dir if not inside or first else out / rec_rel
        recorder = None if rec is None else Recorder(next_recording_dir(rec), engine.problem)
        return LiveSession(state, engine, recorder, out)

    try:
        if attach is not None:
            state, engine = build_attached(attach, token or "")
            scene_path = state.scene.path
            session = LiveSession(state, engine)
        else:
            session = start(scene_path, first=True)
    except SceneError as exc:
        print(f"drstudio view: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ValueError as exc:  # e.g. a scene with fields but no optimize section
        print(f"drstudio view: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (OSError, TimeoutError, AuthenticationError) as exc:  # attach: nothing served there, a wrong token
        print(f"drstudio view: cannot attach to {attach}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR

    def opener(path: str) -> AppState:
        """File > Open: validate the file first (a bad one leaves the open scene running), pause the old
        engine (no two threads load Warp modules at once), build the new scene, then end the old one."""
        nonlocal session
        scene = open_scene(path)
        old = session
        was_running = document.pause_engine(old.state)
        try:
            new = start(path, scene)
        except BaseException:
            if was_running:
                old.state.send(commands.Resume)
            raise
        old.end()
        session = new
        return new.state

    try:
        app = ViewerApp(session.state, title=f"drstudio - {Path(scene_path).name}",
                        opener=None if attach is not None else opener)
        return app.run(max_frames=max_frames, on_frame=on_frame)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        session.end()
