"""The optimization engine: a background thread that steps a `Problem`, takes commands between
steps, and publishes a snapshot after each step.

Threading contract (shared by the headless CLI and the viewer):
- Callers never touch the problem's Warp arrays while the engine runs; they `send()` typed commands
  (`renderer.optim.commands`). Commands are applied by the engine thread between steps, never mid-step,
  in the order sent, through `commands.execute` (validated completely first: a refused command changes
  nothing, is published as the snapshot's `error` and recorded as refused). The queue is bounded
  (`send` raises EngineBusy when full) and at most COMMANDS_PER_STEP commands run between two steps, so
  a flood of commands cannot stop the optimization.
- After every step (and after every command that changes what a viewer shows) the engine builds a
  new immutable `Snapshot` (NumPy copies; histories are read-only views of append-only buffers) and
  publishes it by swapping one reference under a lock:
  the back snapshot is built without the lock, then becomes the front. A reader (`snapshot()`)
  takes the lock only to read that reference, so it never waits for a step, never blocks the
  engine for more than the swap, and never sees a half-written snapshot.
- An exception inside a step stops the loop, is logged, and is published (`state == "error"`,
  `error` holds the message) so the UI can show it; the engine can be reset and started again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from . import commands

log = logging.getLogger("drstudio.engine")

# The commands a caller can send are the typed classes of `renderer.optim.commands` (Start, Pause, Step,
# SetValue, SetFree, SetTargetValue, ...); `send("set_lr", path, lr)` builds one by its recorded kind.
COMMANDS = tuple(commands.COMMANDS)
MAX_QUEUED = 4096  # commands waiting for the engine thread; `send` refuses more (EngineBusy)
COMMANDS_PER_STEP = 64  # while running, at most this many queued commands are applied between two steps


class EngineBusy(commands.CommandError):
    """The engine's command queue is full; the command was not queued."""


class History:
    """Per-name series of floats, appended once per step, published without copying: each series is a
    float64 buffer that doubles when full; a snapshot holds read-only views of the filled prefix, which
    later appends never modify (they write past it, or into a new buffer)."""

    def __init__(self):
        self._buf: dict[str, np.ndarray] = {}
        self._n: dict[str, int] = {}

    def append(self, name: str, value: float) -> None:
        buf, n = self._buf.get(name), self._n.get(name, 0)
        if buf is None or n == len(buf):
            grown = np.empty(max(64, 2 * n), np.float64)
            if buf is not None:
                grown[:n] = buf[:n]
            self._buf[name] = buf = grown
        buf[n] = value
        self._n[name] = n + 1

    def lengths(self) -> dict[str, int]:
        return dict(self._n)

    def truncate(self, name: str, n: int) -> None:
        """Keep the first `n` values of `name`, in a new buffer (views already handed out stay as they were)."""
        if name in self._buf and n < self._n[name]:
            buf = np.empty(max(64, 2 * n), np.float64)
            buf[:n] = self._buf[name][:n]
            self._buf[name], self._n[name] = buf, n

    def views(self) -> dict[str, np.ndarray]:
        out = {}
        for name, buf in self._buf.items():
            v = buf[:self._n[name]]
            v.flags.writeable = False
            out[name] = v
        return out

    def __len__(self) -> int:
        return len(self._buf)


@dataclass(frozen=True)
class Snapshot:
    """What a viewer or progress bar may read; every array is a private copy."""

    step: int = 0
    state: str = "idle"  # idle, running, paused, finished, stopped, error
    loss: float = float("nan")
    loss_terms: dict = field(default_factory=dict)
    grad_norms: dict = field(default_factory=dict)  # dotted path -> L2 norm of the gradient
    values: dict = field(default_factory=dict)  # dotted path -> current value of each free parameter
    errors: dict = field(default_factory=dict)  # dotted path -> error vs truth (when known)
    free: tuple = ()  # dotted paths currently free
    active_view: str = ""
    render: np.ndarray | None = None  # (H, W, 3) current render of the active view
    target: np.ndarray | None = None  # (H, W, 3) its target
    grad_image: np.ndarray | None = None  # (H, W, 3) dLoss/dImage of the active view
    texture_grads: dict = field(default_factory=dict)  # dotted path -> (h, w, C) gradient of a free texture
    vertex_grads: dict = field(default_factory=dict)  # dotted path -> (V, 3) gradient of free vertices
    param_grads: dict = field(default_factory=dict)  # dotted path -> gradient of each small free parameter
    skipped_steps: int = 0  # steps whose loss or gradients were not finite (update skipped)
    last_skip_step: int = -1
    steps_per_second: float = 0.0
    history: dict = field(default_factory=dict)  # name -> read-only float64 array, one value per step
    thumbnails: dict = field(default_factory=dict)  # camera -> (H, W, 3) target image of every view
    targets_version: int = 0  # increases whenever the targets are re-rendered
    error: str = ""  # the last failed command or step, until the next start or reset
    commands_applied: int = 0  # commands taken off the queue, applied or refused
    commands_rejected: int = 0  # of those, refused by validation (nothing changed)
    # optimized meshes of a topology of their own (a shape init of another topology, a remesh): mesh name ->
    # {"vertices": (V, 3) object space, "faces": (F, 3) int32}; their vertices are not in `values`
    meshes: dict = field(default_factory=dict)


_EXIT = object()  # queued by shutdown(): ends the loop


class Engine:
    """Runs `problem.step()` in a daemon thread. See the module docstring for the contract."""

    def __init__(self, problem, *, publish_images: bool = True, publish_every: int = 1,
                 image_interval: float = 0.1, render_images: bool = True, images_on_demand: bool = False):
        """`publish_images`: render the active view for snapshots (a viewer wants it; the headless CLI
        does not). Images are re-rendered at most every `image_interval` seconds while running (a viewer
        shows about ten snapshot frames a second), and always when a run starts, pauses or a command lands.
        `render_images` False: never render them, not even then (a headless run that nobody watches: one
        full-resolution view of a radiance field can take minutes).
        `images_on_demand`: while running, only when `snapshot()` was called since the last images (a reader
        that polls slowly, e.g. an attached viewer at rest, costs as many renders as it reads)."""
        self.problem = problem
        self.publish_images = publish_images
        self.render_images = render_images
        self.publish_every = max(1, publish_every)
        self.image_interval = image_interval
        self.images_on_demand = images_on_demand
        self._images_read = True  # snapshot() was called since the images were last rendered
        self._image_time = -1e9
        self._images: dict = {}
        self._commands: queue.Queue = queue.Queue(maxsize=MAX_QUEUED)
        self._lock = threading.Lock()
        self._front = Snapshot(active_view=problem.active_view, free=tuple(problem.free_paths()))
        self._thread: threading.Thread | None = None
        self._state = "idle"
        self._pending_steps = 0
        self._skipped = 0
        self._last_skip = -1
        self._applied = 0
        self._rejected = 0
        self._rate = 0.0
        self._history = History()
        self._listeners = []  # callables(event: dict) for the recorder; called on the engine thread
        self._last: dict = {}
        self._last_error = ""  # shown until the next start or reset

    # -- public API (any thread) -----------------------------------------------------------------
    def start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="drstudio-engine", daemon=True)
            self._thread.start()

    def send(self, command: commands.Command | str, *args) -> commands.Command:
        """Queue a command for the engine thread (applied between steps, in order) and return it. A
        `Command`, or a kind and its positional arguments (`send("set_lr", path, 0.01)`). Arguments are
        validated here (CommandError); the check against the problem happens on the engine thread, and a
        refused command changes nothing and is published as the snapshot's `error` (and recorded).
        EngineBusy when the queue is full: the caller keeps the command and may retry."""
        cmd = command if isinstance(command, commands.Command) else commands.make(command, *args)
        if args and isinstance(command, commands.Command):
            raise TypeError("send: pass a Command, or a kind and its arguments, not both")
        try:
            self._commands.put_nowait(cmd)
        except queue.Full:
            raise EngineBusy(f"engine busy: {MAX_QUEUED} commands are waiting; {cmd} was not queued") from None
        return cmd

    def snapshot(self) -> Snapshot:
        with self._lock:
            self._images_read = True
            return self._front

    def shutdown(self, timeout: float | None = 10.0) -> bool:
        """Stop the loop (after the current step or command) and join the thread, waiting at most `timeout`
        seconds (None: until it ends). True when the thread has ended."""
        self._commands.put(_EXIT)
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
            self._thread = None
        return True

    def add_listener(self, fn) -> None:
        self._listeners.append(fn)

    def wait(self, predicate, timeout: float = 60.0, poll: float = 0.005) -> Snapshot:
        """Poll snapshots until `predicate(snapshot)` holds (for tests and the CLI)."""
        end = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            if time.monotonic() > end:
                raise TimeoutError(f"engine: condition not reached in {timeout} s "
                                   f"(state {snap.state}, step {snap.step})")
            time.sleep(poll)

    # -- engine thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        self._publish(force_images=True)
        applied, rejected_only = 0, True  # commands applied since the last step / publish
        while True:
            busy = self._state == "running" or self._pending_steps > 0
            cmd = None
            if not busy or applied < COMMANDS_PER_STEP:  # a flood of commands cannot stall the steps
                try:
                    cmd = self._commands.get_nowait() if (busy or applied) else self._commands.get(timeout=0.1)
                except queue.Empty:
                    pass
            if cmd is _EXIT:
                return
            if cmd is not None:
                rejected_only &= not self._apply(cmd)
                applied += 1
                continue  # drain queued commands (up to COMMANDS_PER_STEP), then publish once
            if applied:  # one snapshot for the whole batch of commands
                self._publish(force_images=not rejected_only)
                applied, rejected_only = 0, True
            if busy:
                self._one_step()

    # -- run control (commands.RunControl), on the engine thread ---------------------------------------
    def run_start(self) -> None:
        p = self.problem
        self._state = "running" if p.step_index < p.steps else "finished"

    def run_resume(self) -> None:
        if self._state in ("paused", "idle", "stopped"):
            self._state = "running"

    def run_pause(self) -> None:
        self._pending_steps = 0
        if self._state == "running":
            self._state = "paused"

    def run_stop(self) -> None:
        self._pending_steps = 0
        self._state = "stopped"

    def run_steps(self, n: int) -> None:
        self._pending_steps += n
        if self._state == "running":
            self._state = "paused"

    def run_reset(self) -> None:
        self._pending_steps = 0
        self._skipped, self._last_skip, self._history = 0, -1, History()
        self._state = "idle"

    def _apply(self, cmd: commands.Command) -> bool:
        """Execute one command; True when it was applied, False when refused (published as the error)."""
        p = self.problem
        rejected = ""
        if isinstance(cmd, (commands.Start, commands.Reset)):
            self._last_error = ""
        try:
            commands.execute(cmd, p, self)
        except Exception as exc:  # a bad command from the UI must not kill the engine
            rejected = str(exc) if isinstance(exc, commands.CommandError) else f"{type(exc).__name__}: {exc}"
            log.error("engine command %s refused: %s", cmd, rejected)
            self._rejected += 1
            self._last_error = f"command {cmd.kind} refused: {rejected}"
        self._applied += 1
        event = {"type": "command", "command": cmd, "kind": cmd.kind, "args": cmd.args(), "step": p.step_index}
        if rejected:
            event["rejected"] = rejected
        self._emit(event)
        return not rejected

    def _one_step(self) -> None:
        p = self.problem
        t0 = time.perf_counter()
        try:
            result = p.step()
        except Exception as exc:
            self._step_failed(exc)
            return
        dt = time.perf_counter() - t0
        self._rate = 1.0 / dt if self._rate == 0.0 else 0.9 * self._rate + 0.1 / max(dt, 1e-9)
        if not result.applied:
            self._skipped += 1
            self._last_skip = result.step
            log.warning("step %d: non-finite loss or gradient; update skipped, parameters kept", result.step)
        for name, value in result.loss_terms.items():
            self._history.append(f"loss.{name}", value)
        self._history.append("loss", result.loss)
        for path, g in result.grad_norms.items():
            self._history.append(f"grad.{path}", g)
        self._last = {"result": result, "dt": dt}
        self._emit({"type": "step", "step": result.step, "loss": result.loss, "loss_terms": result.loss_terms,
                    "grad_norms": result.grad_norms, "applied": result.applied, "dt": dt})
        if self._pending_steps > 0:
            self._pending_steps -= 1
            if self._pending_steps == 0 and self._state != "running":
                self._state = "paused"
        if (p.step_index >= p.steps or getattr(p, "out_of_time", False)) and self._state == "running":
            self._state = "finished"  # the step budget, or the time budget (optimize --max-seconds)
        elif getattr(p, "stop_agreed", False) and self._state == "running":
            self._state = "stopped"  # a distributed run: every rank stops after this same step
        deferred = getattr(p, "take_deferred_error", lambda: None)()
        if deferred is not None:  # failed after the step was taken (a lost rank): the step above is recorded
            self._step_failed(deferred)
            return
        done = self._state != "running" and self._pending_steps == 0
        if done or p.step_index % self.publish_every == 0:
            self._publish(force_images=done)

    def _step_failed(self, exc: BaseException) -> None:
        p = self.problem
        if getattr(exc, "expected", False):  # a lost rank of a distributed run: the caller reports the message
            log.info("optimization step %d failed: %s", p.step_index, exc)
        else:
            log.error("optimization step failed:\n%s", "".join(traceback.format_exception(exc)))
        self._error(f"step {p.step_index} failed: {exc}", fatal=True)

    def _error(self, message: str, fatal: bool) -> None:
        if fatal:
            self._state = "error"
            self._pending_steps = 0
        self._last_error = message
        self._publish(force_images=False, error=message)

    def _emit(self, event: dict) -> None:
        for fn in self._listeners:
            try:
                fn(event)
            except Exception:
                log.error("engine listener failed:\n%s", traceback.format_exc())

    def _publish(self, force_images: bool = False, error: str = "") -> None:
        p = self.problem
        result = self._last.get("result")
        now = time.perf_counter()
        wanted = self._images_read or not self.images_on_demand
        if self.render_images and (force_images or (self.publish_images and wanted
                                                    and now - self._image_time >= self.image_interval)):
            self._images = p.view_images(result)
            self._image_time = now
            self._images_read = False
        images = self._images
        snap = Snapshot(
            step=p.step_index, state=self._state,
            loss=result.loss if result else float("nan"),
            loss_terms=dict(result.loss_terms) if result else {},
            grad_norms=dict(result.grad_norms) if result else {},
            values=p.free_values(), errors=p.parameter_errors(), free=tuple(p.free_paths()),
            active_view=p.active_view,
            render=images.get("render"), target=images.get("target"), grad_image=images.get("grad_image"),
            texture_grads=images.get("texture_grads", {}), vertex_grads=images.get("vertex_grads", {}),
            param_grads=images.get("param_grads", {}),
            skipped_steps=self._skipped, last_skip_step=self._last_skip, steps_per_second=self._rate,
            history=self._history.views(),
            thumbnails=p.target_images(), targets_version=p.targets_version,
            error=error or self._last_error,
            commands_applied=self._applied, commands_rejected=self._rejected,
            meshes=p.own_meshes(),
        )
        with self._lock:
            self._front = snap
