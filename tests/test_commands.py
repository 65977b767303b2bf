"""renderer.optim.commands: typed commands validated before they change anything, one dispatcher for
the engine and the recording's re-execution, refusals recorded and reproduced, a bounded queue that
keeps the optimizer stepping under a flood, and recordings of the previous format still verifying."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim import commands as C
from drstudio.renderer.optim.engine import MAX_QUEUED, EngineBusy
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.recording import load_recording, verify
from test_recording import ALBEDO, LIGHT, SMALL, record_session, tiny_scene

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "data" / "recording_v1"  # recorded by main before the command protocol (format 1)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    return tiny_scene(tmp_path_factory.mktemp("cmd") / "scene", size=12)


@pytest.fixture()
def problem(scene_file):
    return Problem(load_scene(scene_file), "cpu")


def test_construction_validates_alone():
    for kind, args, message in (("step", (-3,), "step count"), ("step", (0,), "step count"),
                                ("step", (True,), "integer"), ("set_steps", (-1,), "step budget"),
                                ("set_lr", (LIGHT, float("inf")), "finite"), ("set_lr", (LIGHT, -1.0), ">= 0"),
                                ("set_value", (LIGHT, [1e39, 0, 0]), "float32"),
                                ("set_value", (LIGHT, "abc"), "numbers"), ("set_free", (LIGHT, "yes"), "true or false"),
                                ("set_loss_weight", ("l2", float("nan")), "finite"),
                                ("set_active_view", ("",), "camera"),
                                ("explode", (), "unknown command"), ("pause", (1,), "wrong arguments")):
        with pytest.raises(C.CommandError, match=message):
            C.make(kind, *args)
    cmd = C.make("set_value", LIGHT, [1, 2, 3])
    assert isinstance(cmd, C.SetValue) and cmd.value.dtype == np.float32 and not cmd.value.flags.writeable


def test_records_round_trip():
    from drstudio.renderer.recording import format as fmt

    for cmd in (C.Step(4), C.SetValue(LIGHT, [1, 2, 3]), C.SetFree(ALBEDO, False), C.SetLr(LIGHT, 0.1),
                C.SetLossWeight("tv", 0.5), C.SetActiveView("side"), C.Reset(), C.Pause()):
        record = fmt.from_json(fmt.to_json(cmd.to_record()))
        back = C.from_record(record)
        assert type(back) is type(cmd) and back.args()[:1] == cmd.args()[:1]
        if isinstance(cmd, C.SetValue):
            np.testing.assert_array_equal(back.value, cmd.value)
    assert set(fmt.EDIT_COMMANDS) | set(fmt.CONTROL_COMMANDS) == set(C.COMMANDS)


def state_of(problem) -> dict:
    return {"values": {p: problem.ds.get(p) for p in problem.param_specs}, "free": problem.free_paths(),
            "lrs": dict(problem.lrs), "weights": dict(problem.weights), "steps": problem.steps,
            "view": problem.active_view, "truth": {p: v.copy() for p, v in problem.truth.items()}}


def assert_same_state(a: dict, b: dict) -> None:
    assert a["free"] == b["free"] and a["lrs"] == b["lrs"] and a["weights"] == b["weights"]
    assert a["steps"] == b["steps"] and a["view"] == b["view"]
    for p in a["values"]:
        np.testing.assert_array_equal(a["values"][p], b["values"][p])
    for p in a["truth"]:
        np.testing.assert_array_equal(a["truth"][p], b["truth"][p])


def test_a_refused_command_changes_nothing(problem):
    problem.step()
    before = state_of(problem)
    refused = [C.SetValue(LIGHT, [1.0, 2.0]), C.SetValue("lights.nope.position", [0, 0, 0]),
               C.SetValue(ALBEDO, np.full(problem.ds.params[ALBEDO].shape, 1.5)),  # albedo is in [0, 1]
               C.SetFree("lights.key.color", False),  # not optimizable in this scene
               C.SetLr("meshes.ball.vertices", 0.1), C.SetLossWeight("nope", 1.0), C.SetActiveView("nope"),
               C.SetTargetValue(LIGHT, [1.0]), C.SetTargetValue("materials.paint.roughness", [[[5.0]]]),
               # within float32 but overflowing while rendering (issue 14): beyond the kinds' bounds
               C.SetValue(LIGHT, [3e38, 0.0, 0.0]), C.SetTargetValue(LIGHT, [0.0, -2e6, 0.0]),
               C.SetValue("lights.key.intensity", [3e38]), C.SetValue("meshes.ball.scale", [1e30, 1.0, 1.0]),
               C.SetValue("meshes.ball.translation", [0.0, 0.0, 3e38]),
               C.SetValue("cameras.front.pose", [0.0, 0.0, 3e38, 0.0, 0.0, 0.0, 1.0])]
    for cmd in refused:
        with pytest.raises(C.CommandError):
            C.execute(cmd, problem)
        assert_same_state(state_of(problem), before)
    # every parameter can be fixed (an undo may fix the only free one); with none free a run is refused
    # (Start, Resume, Step) and the problem does not step, until one is free again
    C.execute(C.SetFree(ALBEDO, False), problem)
    C.execute(C.SetFree(LIGHT, False), problem)
    assert problem.free_paths() == []
    for cmd in (C.Start(), C.Resume(), C.Step(2)):
        with pytest.raises(C.CommandError, match="nothing is free"):
            C.execute(cmd, problem)
    with pytest.raises(ValueError, match="nothing is free"):
        problem.step()
    C.execute(C.SetFree(LIGHT, True), problem)
    assert problem.free_paths() == [LIGHT]
    problem.step()  # and the optimizer steps again
    C.execute(C.Reset(), problem)  # reset rebuilds the optimizer with the current free set
    assert problem.step_index == 0


def test_refusals_are_recorded_and_verify(scene_file, tmp_path):
    edits = [(2, "set_lr", (LIGHT, 0.1)), (3, "set_value", (LIGHT, np.array([1.0, 2.0], np.float32))),
             (4, "set_free", (ALBEDO, False)), (4, "set_free", ("lights.key.color", False)),
             (5, "set_free", (ALBEDO, True))]
    recorder, snap = record_session(tmp_path / "rec", scene_file, steps=7, edits=edits, options=SMALL)
    assert snap.commands_rejected == 2
    rec = load_recording(tmp_path / "rec")
    refused = [r for r in rec.records if r["type"] == "command" and r.get("rejected")]
    assert [r["kind"] for r in refused] == ["set_value", "set_free"] and "optimizable" in refused[1]["rejected"]
    report = verify(rec)
    assert report.ok and report.steps_checked == 7, report.message()


def test_a_command_flood_cannot_stop_the_steps(problem):
    from drstudio.renderer.optim.engine import Engine

    engine = Engine(problem, publish_images=False)
    engine.start_thread()
    try:
        engine.send("set_steps", 10**6)
        engine.send("start")
        sent, busy = 0, 0
        for i in range(2 * MAX_QUEUED):
            try:
                engine.send(C.SetLr(LIGHT, 0.01 + (i % 7) * 1e-3))
                sent += 1
            except EngineBusy:
                busy += 1
        snap = engine.wait(lambda s: s.step >= 5, timeout=120)
        assert snap.step >= 5  # steps went on while thousands of commands waited
        assert busy > 0  # the queue is bounded: the excess was refused at once
        engine.send("pause")
        engine.wait(lambda s: s.commands_applied >= sent + 3 and s.state == "paused", timeout=300)
    finally:
        engine.shutdown()


def test_a_recording_of_the_previous_format_loads_replays_and_verifies(tmp_path):
    rec_dir = shutil.copytree(LEGACY, tmp_path / "rec")
    rec = load_recording(rec_dir)
    assert rec.version == 1 and len(rec.steps) == 18
    assert [r["kind"] for r in rec.records if r["type"] == "command" and r["kind"].startswith("set_")]
    report = verify(rec)
    assert report.ok and report.steps_checked == 18 and report.keyframes_checked > 0, report.message()
    out = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "replay", str(rec_dir), "--verify"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and "reproduced: 18 steps" in out.stdout, out.stdout + out.stderr
    gif = tmp_path / "legacy.gif"
    out = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "replay", str(rec_dir), "--export", str(gif)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and gif.stat().st_size > 0, out.stdout + out.stderr
