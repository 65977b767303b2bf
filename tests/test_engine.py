"""The optimization engine as the viewer and the CLI use it: commands applied between steps,
pause/resume/step/reset, user edits during a run, target edits, a NaN injected mid-run, and
snapshots that are never torn."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.commands import CommandError
from drstudio.renderer.optim.engine import Engine
from drstudio.renderer.optim.problem import Problem

ROOT = Path(__file__).resolve().parents[1]
LIGHT = "lights.key.position"


@pytest.fixture()
def engine(device):
    scene = load_scene(ROOT / "scenes" / "light.json")
    for cam in scene.cameras.values():  # smaller images: these tests are about behaviour, not accuracy
        cam.width, cam.height = 48, 48
        cam.intrinsics[:] = [cam.intrinsics[0] * 48 / 128, cam.intrinsics[1] * 48 / 128, 24, 24]
    problem = Problem(scene, device)
    eng = Engine(problem)
    eng.start_thread()
    yield eng
    eng.shutdown()


def test_start_runs_to_the_step_budget_and_reduces_the_loss(engine):
    engine.send("set_steps", 25)
    engine.send("start")
    snap = engine.wait(lambda s: s.state == "finished", timeout=120)
    assert snap.step == 25 and len(snap.history["loss"]) == 25
    assert snap.history["loss"][-1] < 0.5 * snap.history["loss"][0]
    assert snap.steps_per_second > 0 and snap.render is not None and snap.target is not None
    assert snap.grad_image is not None and snap.grad_image.shape == snap.render.shape
    assert set(snap.grad_norms) == {LIGHT, "lights.key.color"}


def test_pause_resume_and_single_steps(engine):
    engine.send("set_steps", 10_000)
    engine.send("start")
    engine.wait(lambda s: s.step >= 3)
    engine.send("pause")
    paused = engine.wait(lambda s: s.state == "paused")
    still = engine.wait(lambda s: s.commands_applied >= paused.commands_applied)  # nothing runs while paused
    assert still.step == paused.step
    engine.send("step", 4)
    stepped = engine.wait(lambda s: s.step == paused.step + 4 and s.state == "paused")
    assert stepped.step == paused.step + 4
    engine.send("resume")
    engine.wait(lambda s: s.step >= stepped.step + 3 and s.state == "running")
    engine.send("stop")
    assert engine.wait(lambda s: s.state == "stopped").state == "stopped"


def test_user_edit_and_fixing_a_parameter_during_a_run(engine):
    engine.send("set_steps", 10_000)
    engine.send("start")
    engine.wait(lambda s: s.step >= 2)
    edited = np.array([0.5, 2.0, 1.0], np.float32)
    engine.send("set_free", LIGHT, False)
    engine.send("set_value", LIGHT, edited)
    snap = engine.wait(lambda s: LIGHT not in s.free and s.step >= 8)
    # fixed: the optimizer no longer moves it, and the edit was applied between steps
    np.testing.assert_allclose(engine.problem.ds.get(LIGHT), edited)
    assert LIGHT not in snap.values
    engine.send("set_free", LIGHT, True)
    engine.send("set_lr", LIGHT, 0.1)
    engine.wait(lambda s: LIGHT in s.free)
    engine.wait(lambda s: s.step >= snap.step + 5)
    engine.send("pause")
    engine.wait(lambda s: s.state == "paused")
    assert not np.allclose(engine.problem.ds.get(LIGHT), edited)  # free again: it moves
    assert engine.problem.optimizer.get_lr(engine.problem.opt_paths.index(LIGHT)) == pytest.approx(0.1)


def test_target_drag_rerenders_targets_and_the_optimizer_follows(engine):
    problem = engine.problem
    old_target = problem.target_numpy(problem.active_view)
    new_position = problem.truth[LIGHT] + np.array([-1.5, 0.5, 0.5], np.float32)
    engine.send("set_target_value", LIGHT, new_position)
    snap = engine.wait(lambda s: s.commands_applied >= 1)
    assert not np.allclose(snap.target, old_target)  # the published target changed
    engine.send("set_steps", 150)
    engine.send("start")
    engine.wait(lambda s: s.state == "finished", timeout=240)
    start = problem.initial[LIGHT]
    end = problem.ds.get(LIGHT)
    # the recovered light moved toward the dragged target, much closer than where it started
    assert np.linalg.norm(end - new_position) < 0.3 * np.linalg.norm(start - new_position)


def test_nan_mid_run_skips_the_update_and_keeps_parameters(engine):
    problem = engine.problem
    original = problem._record_loss
    poison = {"step": 4}
    seen = {}

    def record_loss(batch):
        total, terms, outputs = original(batch)
        if problem.step_index == poison["step"]:
            seen["before"] = problem.ds.get(LIGHT)
            terms["l2"].fill_(float("nan"))  # the loss read back is NaN and so are the gradients
            from drstudio.renderer.optim import losses
            losses.accumulate(terms["l2"], total)
        return total, terms, outputs

    problem._record_loss = record_loss
    engine.send("set_steps", 8)
    engine.send("start")
    snap = engine.wait(lambda s: s.state == "finished", timeout=120)
    assert snap.skipped_steps == 1 and snap.last_skip_step == poison["step"]
    assert np.isfinite(problem.ds.get(LIGHT)).all()
    assert np.isfinite(snap.history["loss"][poison["step"] + 1:]).all()
    state = problem.optimizer.state_dict()
    assert all(np.isfinite(np.asarray(v)).all() for v in _leaves(state))


def _leaves(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _leaves(v)
    elif isinstance(x, np.ndarray) or np.isscalar(x):
        yield x


def test_bad_commands_are_reported_and_change_nothing(engine):
    before = engine.problem.ds.get(LIGHT)
    # what a command can tell alone is refused by `send` itself
    with pytest.raises(CommandError, match="finite"):
        engine.send("set_value", LIGHT, [np.nan, 0, 0])
    with pytest.raises(CommandError, match="unknown command"):
        engine.send("explode")
    with pytest.raises(CommandError, match="step count"):
        engine.send("step", -3)
    # what needs the problem is refused on the engine thread, published, and changes nothing
    engine.send("set_value", LIGHT, [1.0, 2.0])
    snap = engine.wait(lambda s: bool(s.error))
    assert "shape" in snap.error and snap.state != "error" and snap.commands_rejected == 1
    np.testing.assert_array_equal(engine.problem.ds.get(LIGHT), before)


def test_exception_in_a_step_is_published_and_reset_recovers(engine):
    problem = engine.problem
    original = problem.step
    problem.step = lambda: (_ for _ in ()).throw(RuntimeError("kaboom"))
    engine.send("start")
    snap = engine.wait(lambda s: s.state == "error")
    assert "kaboom" in snap.error
    problem.step = original
    engine.send("reset")
    engine.send("step", 2)
    snap = engine.wait(lambda s: s.step == 2 and s.state == "paused")
    np.testing.assert_allclose(problem.ds.get("lights.key.color").shape, (3,))


def test_reset_restores_initial_values(engine):
    engine.send("step", 5)
    engine.wait(lambda s: s.step == 5)
    engine.send("reset")
    snap = engine.wait(lambda s: s.step == 0 and s.state == "idle")
    np.testing.assert_allclose(snap.values[LIGHT], engine.problem.initial[LIGHT])


def test_snapshots_are_never_torn(engine):
    """A reader hammering snapshot() while the engine steps always sees self-consistent snapshots."""
    problems = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            s = engine.snapshot()
            losses = s.history.get("loss", [])
            if len(losses) != s.step:
                problems.append(f"history length {len(losses)} != step {s.step}")
            if s.step and s.loss != losses[-1]:
                problems.append("loss differs from the last history entry")

    t = threading.Thread(target=reader)
    t.start()
    engine.send("set_steps", 20)
    engine.send("start")
    engine.wait(lambda s: s.state == "finished", timeout=120)
    stop.set()
    t.join()
    assert not problems, problems[:3]


def test_an_engine_that_renders_no_images_never_renders_a_view(device):
    """The headless CLI's engine (nobody watches): no view is rendered, not even at the start, on a pause or
    at the end: one full-resolution view of a radiance field can take minutes (a 1080x1920 capture did)."""
    scene = load_scene(ROOT / "scenes" / "light.json")
    problem = Problem(scene, device)
    rendered = []
    problem.view_images = lambda result=None: rendered.append(1) or {}
    eng = Engine(problem, publish_images=False, render_images=False)
    eng.start_thread()
    try:
        eng.send("set_steps", 3)
        eng.send("start")
        snap = eng.wait(lambda s: s.state == "finished", timeout=120)
        eng.send("pause")
        eng.send("step")
        eng.wait(lambda s: s.step == 4, timeout=120)
    finally:
        eng.shutdown()
    assert snap.step == 3 and snap.render is None and rendered == []


def test_images_on_demand_follow_the_reader(engine):
    """`images_on_demand`: while running, the active view is rendered for snapshots only after a reader took
    the last ones (an attached viewer at rest polls four times a second: as many renders, not ten)."""
    problem = engine.problem
    engine.images_on_demand, engine.image_interval = True, 0.0
    renders = []
    view_images = problem.view_images
    problem.view_images = lambda *a, **k: renders.append(1) or view_images(*a, **k)
    engine.send("set_steps", 10**6)
    engine.send("start")
    engine.wait(lambda s: s.step >= 3, timeout=120)  # wait() reads snapshots: images follow
    import time

    before, step = len(renders), engine.problem.step_index
    time.sleep(1.0)  # nobody reads: at most the one render after the last read
    while engine.problem.step_index < step + 5:
        time.sleep(0.05)
    assert len(renders) - before <= 1
    engine.images_on_demand = False  # the default: every step (image_interval 0)
    before, step = len(renders), engine.problem.step_index
    while engine.problem.step_index < step + 5:
        time.sleep(0.05)
    assert len(renders) - before >= 4


def test_pane_render_reuses_the_steps_render(device):
    """`view_images` takes the last step's render of the active view while nothing but that step's update
    changed (no forward pass of its own); after an edit, another active view or a render setting it renders."""
    scene = load_scene(ROOT / "scenes" / "light.json")
    for cam in scene.cameras.values():
        cam.width, cam.height = 32, 32
        cam.intrinsics[:] = [cam.intrinsics[0] * 32 / 128, cam.intrinsics[1] * 32 / 128, 16, 16]
    problem = Problem(scene, device)
    problem.batch_views = len(problem.views)  # every view in each step's batch
    renders = []
    render = problem.model.render
    problem.model.render = lambda *a, **k: renders.append(a[0]) or render(*a, **k)
    problem.step()
    step_image = problem._step_render[1]
    out = problem.view_images()
    assert renders == [] and out["render"] is step_image
    problem.ds.set(LIGHT, problem.ds.get(LIGHT) + 0.1)  # an edit: the pane renders the new value
    fresh = problem.view_images()["render"]
    assert renders == [problem.active_view] and not np.array_equal(fresh, step_image)
    problem.step()
    problem.scene.render.shadows = not problem.scene.render.shadows  # a render setting
    problem.view_images()
    assert len(renders) == 2
