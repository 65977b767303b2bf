"""The optimization engine: a background thread that steps a `Problem`, takes commands between
steps, and publishes a snapshot after each step.

Threading contract (shared by the headless CLI and the viewer):
- Callers never touch the problem's Warp arrays while the engine runs; they `send()` commands.
  Commands are applied by the engine thread between steps, never mid-step, in the order sent.
- After every step (and after every command that changes what a viewer shows) the engine builds a
  new immutable `Snapshot` (NumPy copies) and publishes it by swapping one reference under a lock:
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

log = logging.getLogger("drstudio.engine")

# Command kinds (payload in parentheses):
#   start                 run until `steps` (the problem's budget) or pause/stop
#   pause, resume, stop
#   step (n)              run n more steps, then pause
#   reset                 parameters back to their initial values, optimizer state cleared, step 0
#   set_value (path, value)        a user edit of a parameter's current value
#   set_free (path, bool)          make a parameter free or fixed
#   set_lr (path, lr)
#   set_target_value (path, value) edit the target scene (e.g. drag a light) and re-render targets
#   set_loss_weight (name, weight)
#   set_active_view (camera)
#   set_steps (n)                  change the step budget
COMMANDS = ("start", "pause", "resume", "stop", "step", "reset", "set_value", "set_free", "set_lr",
            "set_target_value", "set_loss_weight", "set_active_view", "set_steps")


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
    history: dict = field(default_factory=dict)  # name -> list of floats per step (loss terms, grad norms)
    thumbnails: dict = field(default_factory=dict)  # camera -> (H, W, 3) target image of every view
    targets_version: int = 0  # increases whenever the targets are re-rendered
    error: str = ""  # the last failed command or step, until the next start or reset
    commands_applied: int = 0


class Engine:
    """Runs `problem.step()` in a daemon thread. See the module docstring for the contract."""

    def __init__(self, problem, *, publish_images: bool = True, publish_every: int = 1,
                 image_interval: float = 0.1):
        """`publish_images`: render the active view for snapshots (a viewer wants it; the headless CLI
        does not). Images are re-rendered at most every `image_interval` seconds while running (a viewer
        shows about ten snapshot frames a second), and always when a run pauses or a command lands."""
        self.problem = problem
        self.publish_images = publish_images
        self.publish_every = max(1, publish_every)
        self.image_interval = image_interval
        self._image_time = -1e9
        self._images: dict = {}
        self._commands: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._front = Snapshot(active_view=problem.active_view, free=tuple(problem.free_paths()))
        self._thread: threading.Thread | None = None
        self._state = "idle"
        self._pending_steps = 0
        self._skipped = 0
        self._last_skip = -1
        self._applied = 0
        self._rate = 0.0
        self._history: dict[str, list[float]] = {}
        self._listeners = []  # callables(event: dict) for the recorder; called on the engine thread
        self._last: dict = {}
        self._last_error = ""  # shown until the next start or reset

    # -- public API (any thread) -----------------------------------------------------------------
    def start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="drstudio-engine", daemon=True)
            self._thread.start()

    def send(self, kind: str, *args) -> None:
        if kind not in COMMANDS:
            raise ValueError(f"unknown engine command {kind!r}; expected one of {COMMANDS}")
        self._commands.put((kind, args))

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._front

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop and join the thread."""
        self._commands.put(("_exit", ()))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

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
        while True:
            busy = self._state == "running" or self._pending_steps > 0
            try:
                cmd = self._commands.get_nowait() if busy else self._commands.get(timeout=0.1)
            except queue.Empty:
                cmd = None
            if cmd is not None:
                if cmd[0] == "_exit":
                    return
                self._apply(cmd)
                continue  # drain every queued command before the next step
            if busy:
                self._one_step()

    def _apply(self, cmd) -> None:
        kind, args = cmd
        p = self.problem
        try:
            if kind in ("start", "reset"):
                self._last_error = ""
            if kind == "start":
                self._state = "running" if p.step_index < p.steps else "finished"
            elif kind == "resume":
                if self._state in ("paused", "idle", "stopped"):
                    self._state = "running"
            elif kind == "pause":
                self._pending_steps = 0
                if self._state == "running":
                    self._state = "paused"
            elif kind == "stop":
                self._pending_steps = 0
                self._state = "stopped"
            elif kind == "step":
                self._pending_steps += int(args[0]) if args else 1
                if self._state == "running":
                    self._state = "paused"
            elif kind == "reset":
                p.reset()
                self._pending_steps = 0
                self._skipped, self._last_skip, self._history = 0, -1, {}
                self._state = "idle"
            elif kind == "set_value":
                p.set_value(*args)
            elif kind == "set_free":
                p.set_free(*args)
            elif kind == "set_lr":
                p.set_lr(*args)
            elif kind == "set_target_value":
                p.set_target_value(*args)
            elif kind == "set_loss_weight":
                p.set_loss_weight(*args)
            elif kind == "set_active_view":
                p.set_active_view(*args)
            elif kind == "set_steps":
                p.steps = int(args[0])
            self._applied += 1
            self._emit({"type": "command", "kind": kind, "args": args, "step": p.step_index})
        except Exception as exc:  # a bad command from the UI must not kill the engine
            log.error("engine command %s%r failed: %s", kind, args, exc)
            self._error(f"command {kind} failed: {exc}", fatal=False)
        self._publish(force_images=True)

    def _one_step(self) -> None:
        p = self.problem
        t0 = time.perf_counter()
        try:
            result = p.step()
        except Exception as exc:
            log.error("optimization step failed:\n%s", traceback.format_exc())
            self._error(f"step {p.step_index} failed: {exc}", fatal=True)
            return
        dt = time.perf_counter() - t0
        self._rate = 1.0 / dt if self._rate == 0.0 else 0.9 * self._rate + 0.1 / max(dt, 1e-9)
        if not result.applied:
            self._skipped += 1
            self._last_skip = result.step
            log.warning("step %d: non-finite loss or gradient; update skipped, parameters kept", result.step)
        for name, value in result.loss_terms.items():
            self._history.setdefault(f"loss.{name}", []).append(value)
        self._history.setdefault("loss", []).append(result.loss)
        for path, g in result.grad_norms.items():
            self._history.setdefault(f"grad.{path}", []).append(g)
        self._last = {"result": result, "dt": dt}
        self._emit({"type": "step", "step": result.step, "loss": result.loss, "loss_terms": result.loss_terms,
                    "grad_norms": result.grad_norms, "applied": result.applied, "dt": dt})
        if self._pending_steps > 0:
            self._pending_steps -= 1
            if self._pending_steps == 0 and self._state != "running":
                self._state = "paused"
        if p.step_index >= p.steps and self._state == "running":
            self._state = "finished"
        done = self._state != "running" and self._pending_steps == 0
        if done or p.step_index % self.publish_every == 0:
            self._publish(force_images=done)

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
        if force_images or (self.publish_images and now - self._image_time >= self.image_interval):
            self._images = p.view_images(result)
            self._image_time = now
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
            history={k: list(v) for k, v in self._history.items()},
            thumbnails=p.target_images(), targets_version=p.targets_version,
            error=error or self._last_error,
            commands_applied=self._applied,
        )
        with self._lock:
            self._front = snap
