"""The command protocol: every change a user (viewer, CLI, remote) makes to a running optimization.

A command is a frozen dataclass. Its constructor validates what it can alone (types, finiteness,
signs); `check(problem)` validates it against the problem (the path exists and may be edited, the value
has the parameter's shape and range, ...) without changing anything; `apply(problem, run)` then makes
the change. `execute(command, problem, run)` is the one dispatcher: check, then apply, so a refused
command leaves the state exactly as before. The same classes serve

- the engine (`Engine.send` -> `execute` on the engine thread, `run` the engine's run state),
- a recording's replay and verification (`from_record` -> `execute` with no run state: run control
  has no effect on the problem), where a command the engine refused is refused again the same way,
- the viewer's local mirror (`mirror(view)`: the values a viewer shows before the engine confirms).

`to_record()` / `from_record()` are the recording's serialization (`{"kind": ..., "args": [...]}`, the
format recordings have always used, so older recordings replay through these classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from ..params import FLOAT32_MAX


class CommandError(ValueError):
    """A command refused by validation; nothing was changed."""


class RunControl(Protocol):
    """What run-control commands act on (the engine's loop state)."""

    def run_start(self) -> None: ...
    def run_resume(self) -> None: ...
    def run_pause(self) -> None: ...
    def run_stop(self) -> None: ...
    def run_steps(self, n: int) -> None: ...
    def run_reset(self) -> None: ...


def _path(value) -> str:
    if not isinstance(value, str) or not value:
        raise CommandError(f"path: expected a dotted parameter path, got {value!r}")
    return value


def _number(what: str, value, lo: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CommandError(f"{what}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX or value < lo:
        raise CommandError(f"{what}: expected a finite number >= {lo:g} within float32's range, got {value!r}")
    return value


def _count(what: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CommandError(f"{what}: expected an integer, got {type(value).__name__}")
    value = int(value)
    if value < lo or value > 2**31 - 1:
        raise CommandError(f"{what}: expected an integer in [{lo}, {2**31 - 1}], got {value}")
    return value


def _array(what: str, value) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"{what}: expected numbers, got {type(value).__name__}") from exc
    if not np.isfinite(arr).all() or (arr.size and np.abs(arr).max() > FLOAT32_MAX):
        raise CommandError(f"{what}: expected finite values within float32's range")
    arr = arr.astype(np.float32)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class Command:
    """Base class. `kind` is the name recorded in logs and sent over the wire."""

    kind: ClassVar[str] = ""
    edits: ClassVar[bool] = False  # changes the problem (recorded with a keyframe, undoable)

    def check(self, problem) -> None:
        """Validate against `problem`; raise CommandError naming what is wrong. Changes nothing."""

    def apply(self, problem, run: RunControl | None) -> None:
        """Make the change (after `check`)."""

    def mirror(self, view) -> None:
        """Update a viewer's local copy of the values (`view` has `values`, `targets`, `free`, `lrs`,
        `weights`, `steps`, `active_view` and `reset_values()`)."""

    def inverse(self, view) -> Command | None:
        """The command that undoes this one, read from `view` (the mirror's values) before it is mirrored:
        the same class with the value before the edit. None: not undoable (run control, reset)."""
        return None

    def args(self) -> list:
        return []

    def to_record(self) -> dict:
        return {"kind": self.kind, "args": self.args()}

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(_short(a) for a in self.args())})"


def _short(a) -> str:
    if isinstance(a, np.ndarray):
        return f"array{tuple(a.shape)}" if a.size > 4 else np.array2string(a, precision=4, separator=",")
    return repr(a)


def _require_param(problem, path: str):
    if path not in problem.ds.params:
        raise CommandError(problem.ds.params.unknown(path))
    return problem.ds.params[path]


def _require_optimizable(problem, path: str):
    entry = _require_param(problem, path)
    if path not in problem.param_specs:
        raise CommandError(f"{path} is not an optimizable parameter of this scene (optimize.parameters lists "
                           f"{sorted(problem.param_specs)})")
    return entry


def _checked_value(problem, path: str, value: np.ndarray, *, truth: bool) -> None:
    entry = _require_param(problem, path)
    shape = problem.truth[path].shape if truth else entry.shape
    if value.size != int(np.prod(shape)):
        raise CommandError(f"{path}: expected a value of shape {shape}, got {value.shape}")
    if not entry.kind.is_field:  # raw grid / network values have no range
        lo, hi = entry.range
        if value.size and (value.min() < lo or value.max() > hi):
            raise CommandError(f"{path}: expected values in [{lo:g}, {hi:g}] for {entry.kind.value} parameters")


# -- run control -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RunCommand(Command):
    """A run-control command without arguments: calls `run.<method>()` (nothing without a run)."""

    method: ClassVar[str] = ""

    def apply(self, problem, run):
        if run is not None:
            getattr(run, self.method)()


def _require_free(problem) -> None:
    """A run needs something to optimize (a scene opened to edit starts with nothing free)."""
    if not problem.free_paths():
        from .problem import NOTHING_FREE

        raise CommandError(NOTHING_FREE)


@dataclass(frozen=True)
class Start(_RunCommand):
    kind: ClassVar[str] = "start"
    method: ClassVar[str] = "run_start"

    def check(self, problem):
        _require_free(problem)


@dataclass(frozen=True)
class Resume(_RunCommand):
    kind: ClassVar[str] = "resume"
    method: ClassVar[str] = "run_resume"

    def check(self, problem):
        _require_free(problem)


@dataclass(frozen=True)
class Pause(_RunCommand):
    kind: ClassVar[str] = "pause"
    method: ClassVar[str] = "run_pause"


@dataclass(frozen=True)
class Stop(_RunCommand):
    kind: ClassVar[str] = "stop"
    method: ClassVar[str] = "run_stop"


@dataclass(frozen=True)
class Step(Command):
    """Run `n` (>= 1) more steps, then pause."""

    kind: ClassVar[str] = "step"
    n: int = 1

    def __post_init__(self):
        object.__setattr__(self, "n", _count("step count", self.n, 1))

    def check(self, problem):
        _require_free(problem)

    def apply(self, problem, run):
        if run is not None:
            run.run_steps(self.n)

    def args(self):
        return [self.n]


@dataclass(frozen=True)
class SetSteps(Command):
    """Change the step budget."""

    kind: ClassVar[str] = "set_steps"
    edits: ClassVar[bool] = True
    n: int = 0

    def __post_init__(self):
        object.__setattr__(self, "n", _count("step budget", self.n, 0))

    def apply(self, problem, run):
        problem.steps = self.n

    def mirror(self, view):
        view.steps = self.n

    def inverse(self, view):
        return SetSteps(int(view.steps))

    def args(self):
        return [self.n]


# -- edits -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reset(Command):
    """Free parameters back to their initial values, optimizer state cleared, step 0."""

    kind: ClassVar[str] = "reset"
    edits: ClassVar[bool] = True

    def apply(self, problem, run):
        problem.reset()
        if run is not None:
            run.run_reset()

    def mirror(self, view):
        view.reset_values()


@dataclass(frozen=True)
class _PathValue(Command):
    """A command carrying a parameter path and a value (validated alone: a finite float32 array)."""

    path: str = ""
    value: Any = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "path", _path(self.path))
        object.__setattr__(self, "value", _array(self.path, self.value))

    def args(self):
        return [self.path, self.value]


@dataclass(frozen=True)
class SetValue(_PathValue):
    """A user edit of a parameter's current value."""

    kind: ClassVar[str] = "set_value"
    edits: ClassVar[bool] = True

    def check(self, problem):
        _checked_value(problem, self.path, self.value, truth=False)

    def apply(self, problem, run):
        problem.set_value(self.path, self.value)

    def mirror(self, view):
        view.values[self.path] = np.array(self.value, np.float32)

    def inverse(self, view):
        return SetValue(self.path, view.values[self.path]) if self.path in view.values else None


@dataclass(frozen=True)
class SetTargetValue(_PathValue):
    """Edit the target scene (drag a light of the target) and re-render the targets."""

    kind: ClassVar[str] = "set_target_value"
    edits: ClassVar[bool] = True

    def check(self, problem):
        if self.path not in problem.truth:
            raise CommandError(problem.ds.params.unknown(self.path))
        if not problem.targets_editable:
            raise CommandError(f"{self.path}: the targets are images loaded from files; the target scene "
                               f"cannot be edited")
        _checked_value(problem, self.path, self.value, truth=True)

    def apply(self, problem, run):
        problem.set_target_value(self.path, self.value)

    def mirror(self, view):
        view.targets[self.path] = np.array(self.value, np.float32)

    def inverse(self, view):
        return SetTargetValue(self.path, view.targets[self.path]) if self.path in view.targets else None


@dataclass(frozen=True)
class SetFree(Command):
    """Make an optimizable parameter free or fixed (with none free, a run is refused: Start, Step)."""

    kind: ClassVar[str] = "set_free"
    edits: ClassVar[bool] = True
    path: str = ""
    free: bool = True

    def __post_init__(self):
        object.__setattr__(self, "path", _path(self.path))
        if not isinstance(self.free, (bool, np.bool_)):
            raise CommandError(f"free: expected true or false, got {self.free!r}")
        object.__setattr__(self, "free", bool(self.free))

    def check(self, problem):
        _require_optimizable(problem, self.path)

    def apply(self, problem, run):
        problem.set_free(self.path, self.free)

    def mirror(self, view):
        (view.free.add if self.free else view.free.discard)(self.path)

    def inverse(self, view):
        return SetFree(self.path, self.path in view.free)

    def args(self):
        return [self.path, self.free]


@dataclass(frozen=True)
class SetLr(Command):
    kind: ClassVar[str] = "set_lr"
    edits: ClassVar[bool] = True
    path: str = ""
    lr: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "path", _path(self.path))
        object.__setattr__(self, "lr", _number(f"learning rate of {self.path}", self.lr))

    def check(self, problem):
        _require_optimizable(problem, self.path)

    def apply(self, problem, run):
        problem.set_lr(self.path, self.lr)

    def mirror(self, view):
        view.lrs[self.path] = self.lr

    def inverse(self, view):
        return SetLr(self.path, view.lrs[self.path]) if self.path in view.lrs else None

    def args(self):
        return [self.path, self.lr]


@dataclass(frozen=True)
class SetLossWeight(Command):
    kind: ClassVar[str] = "set_loss_weight"
    edits: ClassVar[bool] = True
    name: str = ""
    weight: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise CommandError(f"loss term: expected a name, got {self.name!r}")
        object.__setattr__(self, "weight", _number(f"loss weight {self.name}", self.weight))

    def check(self, problem):
        if self.name not in problem.weights:
            raise CommandError(f"unknown loss term {self.name!r}; expected one of {tuple(problem.weights)}")

    def apply(self, problem, run):
        problem.set_loss_weight(self.name, self.weight)

    def mirror(self, view):
        view.weights[self.name] = self.weight

    def inverse(self, view):
        return SetLossWeight(self.name, view.weights[self.name]) if self.name in view.weights else None

    def args(self):
        return [self.name, self.weight]


@dataclass(frozen=True)
class SetActiveView(Command):
    kind: ClassVar[str] = "set_active_view"
    camera: str = ""

    def __post_init__(self):
        if not isinstance(self.camera, str) or not self.camera:
            raise CommandError(f"camera: expected a camera name, got {self.camera!r}")

    def check(self, problem):
        if self.camera not in problem.views:
            raise CommandError(f"{self.camera!r} is not a target view; views: {problem.views}")

    def apply(self, problem, run):
        problem.set_active_view(self.camera)

    def mirror(self, view):
        view.active_view = self.camera

    def args(self):
        return [self.camera]


# what SetRenderSetting may change, and to what (the path mode's integers: the scene schema's ranges)
RENDER_SETTINGS: dict[str, tuple | range] = {"mode": ("hard", "antialias", "soft", "path"), "shadows": (False, True),
                                             "mipmaps": (False, True), "spp": range(1, 65537),
                                             "max_depth": range(0, 65)}


@dataclass(frozen=True)
class SetRenderSetting(Command):
    """Change one of the scene's render settings (`scene.render.<name>`: mode, shadows, mipmaps, and the
    path mode's spp and max_depth); targets rendered from the scene are re-rendered with it, so the
    optimizer compares like with like."""

    kind: ClassVar[str] = "set_render_setting"
    edits: ClassVar[bool] = True
    name: str = ""
    value: Any = None

    def __post_init__(self):
        allowed = RENDER_SETTINGS.get(self.name) if isinstance(self.name, str) else None
        if allowed is None:
            raise CommandError(f"render setting: expected one of {tuple(RENDER_SETTINGS)}, got {self.name!r}")
        value = self.value
        if allowed == (False, True):
            if not isinstance(value, (bool, np.bool_)):
                raise CommandError(f"render.{self.name}: expected true or false, got {value!r}")
            value = bool(value)
        elif isinstance(allowed, range):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value not in allowed:
                raise CommandError(f"render.{self.name}: expected an integer in [{allowed.start}, {allowed.stop - 1}], "
                                   f"got {value!r}")
            value = int(value)
        elif value not in allowed:
            raise CommandError(f"render.{self.name}: expected one of {allowed}, got {value!r}")
        object.__setattr__(self, "value", value)

    def check(self, problem):
        scene = problem.scene
        if self.name == "mode" and self.value == "soft" and np.ndim(scene.background) == 3:
            raise CommandError("render.mode: soft supports a background color only, and this scene's background "
                               "is an image")
        if self.name == "mode":
            _check_path_mode(problem, self.value)

    def apply(self, problem, run):
        setattr(problem.scene.render, self.name, self.value)
        if problem.targets_editable:  # rendered from the scene: re-rendered with the new setting
            problem.render_targets()
        cache = getattr(problem, "gbuffer_cache", None)  # parts packed with the old setting (mipmaps)
        if cache is not None:
            cache.clear()

    def mirror(self, view):
        setattr(view.render, self.name, self.value)

    def inverse(self, view):
        return SetRenderSetting(self.name, getattr(view.render, self.name))

    def args(self):
        return [self.name, self.value]


def _check_path_mode(problem, mode: str) -> None:
    """What the loader refuses for a path-mode scene (renderer.loading), refused for a switch of mode too."""
    from ..loading import PATH_GRADIENTS, path_differentiable

    scene = problem.scene
    if mode != "path":
        if scene.environment_lights:
            raise CommandError(f"render.mode: {mode} cannot show the environment light; it needs 'path'")
        return
    if scene.fields:
        raise CommandError("render.mode: path traces meshes; this scene's fields are volume-rendered")
    if scene.ambient_lights:
        raise CommandError("render.mode: path has no ambient light (this scene has one); use an environment light")
    if np.ndim(scene.background) != 1 or np.any(scene.background):
        raise CommandError("render.mode: path shows the environment where rays escape, and this scene has a "
                           "background")
    params = scene.params()
    for path in problem.param_specs:
        if not path_differentiable(params[path]):
            raise CommandError(f"render.mode: path gives no gradient for {path} (it differentiates "
                               f"{PATH_GRADIENTS})")


COMMANDS: dict[str, type[Command]] = {c.kind: c for c in (
    Start, Resume, Pause, Stop, Step, SetSteps, Reset, SetValue, SetTargetValue, SetFree, SetLr, SetLossWeight,
    SetActiveView, SetRenderSetting)}


def make(kind: str, *args) -> Command:
    """The command `kind` with positional `args` (as recorded); CommandError for an unknown kind or bad
    arguments."""
    cls = COMMANDS.get(kind)
    if cls is None:
        raise CommandError(f"unknown command {kind!r}; expected one of {tuple(COMMANDS)}")
    try:
        return cls(*args)
    except TypeError as exc:
        raise CommandError(f"command {kind}: wrong arguments {list(args)!r} ({exc})") from None


def from_record(record: dict) -> Command:
    """The command of a recording's log record `{"kind": ..., "args": [...]}` (arrays decoded)."""
    from ..recording.format import from_json

    return make(record["kind"], *from_json(list(record.get("args", []))))


def execute(command: Command, problem, run: RunControl | None = None) -> None:
    """The one dispatcher: validate `command` against `problem`, then apply it. A CommandError (or any
    error `check` raises) leaves the problem and `run` exactly as they were."""
    if not isinstance(command, Command):
        raise TypeError(f"command: expected a Command, got {type(command).__name__}")
    command.check(problem)
    command.apply(problem, run)
