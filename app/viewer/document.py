"""The viewer's document: which scene is open and what leaves with it (issue 17).

- A scene without an `optimize` section opens as a viewer/editor: `editor_scene` gives it an optimize
  section of its own (every parameter listed, none free, the targets rendered from its own cameras), so
  the Optimizer panel's free checkboxes (`set_free`) make any parameter optimizable and a target drag
  gives the optimizer something to chase. Nothing of it is written back (Save scene as keeps the file's
  own sections).
- Open Recent: the list kept in the viewer's settings file (~/.config/drstudio/viewer.json).
- Export results: what `drstudio optimize` writes (`app.headless.write_results`), from a live session.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from drstudio.renderer.optim import commands
from drstudio.renderer.scene_schema import Loss, OptimizeSpec, ParameterSpec, Targets

RECENT_MAX = 10
EDITOR_STEPS = 1000  # the step budget of an editor scene (the Optimizer panel changes it)

EDITOR_HELP = ("This scene has no 'optimize' section: it is open as a viewer/editor. Tick 'free' next to a "
               "parameter to optimize it, drag an orange gizmo (or type a target value in the Inspector) to "
               "change the target, then Start: the optimizer chases the target through the scene's cameras. "
               "To keep the setup, add an 'optimize' section to the scene file (scenes/README.md).")


def editor_scene(scene):
    """A copy of `scene` (which has no optimize section) with the editor's: every parameter listed with no
    init (it starts at the file's value), the targets rendered from all the scene's cameras, an L2 loss.
    ValueError for a scene with radiance fields (a field trains on views the scene file must name)."""
    if scene.optimize is not None:
        raise ValueError("editor_scene: the scene has an optimize section")
    if getattr(scene, "fields", None):
        raise ValueError(f"{scene.path or 'scene'}: a scene with fields needs an 'optimize' section (its "
                         "training views, optimize.targets) to open")
    out = copy.deepcopy(scene)
    params = [p for p in out.params() if not p.startswith("fields.")]
    out.optimize = OptimizeSpec(parameters={p: ParameterSpec() for p in params},
                                targets=Targets(cameras=list(out.cameras)), loss=Loss(l2=1.0),
                                steps=EDITOR_STEPS)
    return out


def fix_all(problem) -> None:
    """An editor scene starts with nothing free (the user frees parameters in the Optimizer panel)."""
    for path in list(problem.param_specs):
        problem.set_free(path, False)


# -- Open Recent --------------------------------------------------------------------------------------

def recent(settings: dict) -> list[str]:
    """The recent scene files, newest first (absolute paths; entries that are not strings are dropped)."""
    items = settings.get("recent", [])
    return [p for p in items if isinstance(p, str)][:RECENT_MAX] if isinstance(items, list) else []


def add_recent(settings: dict, path) -> None:
    p = str(Path(path).resolve())
    settings["recent"] = [p] + [q for q in recent(settings) if q != p][:RECENT_MAX - 1]


def prune_recent(settings: dict) -> None:
    """Drop the entries whose file is gone."""
    items = settings.get("recent", [])
    items = items if isinstance(items, list) else []
    settings["recent"] = [p for p in items if isinstance(p, str) and Path(p).is_file()][:RECENT_MAX]


# -- Export results -------------------------------------------------------------------------------------

def pause_engine(state, timeout: float = 120.0) -> bool:
    """Pause the local engine and wait until it is between steps; True when it was running (to resume)."""
    engine = state.engine
    snap = engine.snapshot()
    if snap.state != "running":
        return False
    applied = snap.commands_applied
    state.send(commands.Pause)
    engine.wait(lambda s: s.state != "running" and s.commands_applied > applied, timeout=timeout)
    return True


def export_results(state, out, *, elapsed: float | None = None, extra: dict | None = None) -> dict:
    """Write what `drstudio optimize` writes (params.npz, metrics.json, views/, recovered textures and
    meshes, loss.png, field_*.npz) for the session's problem into `out`. The engine is paused for it (the
    final evaluation renders every view on this thread) and resumed when it was running. Returns the
    metrics. ValueError for a viewer attached to a served run (that run writes its own results)."""
    from drstudio.app.headless import write_results

    problem = state.problem
    if problem is None:
        raise ValueError("export results: this viewer shows a run served by another process, which writes them")
    was_running = pause_engine(state)
    try:
        seconds = time.monotonic() - state.opened_at if elapsed is None else elapsed
        metrics = write_results(problem, state.engine.snapshot(), Path(out), seconds,
                                {"viewer": True, **(extra or {})})
    finally:
        if was_running:
            state.send(commands.Resume)
    return metrics
