"""Property-based tests of the command protocol (issue 14): any sequence of commands — well formed or
not, valid for the problem or not — is either refused with CommandError leaving the problem exactly as
it was, or applied; nothing else is ever raised, the optimizer can always take a step afterwards, and a
recorded session of such commands re-executes (verifies) exactly, refusals included."""

from __future__ import annotations

import numpy as np
import pytest
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim import commands as C
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.recording import load_recording, verify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_commands import assert_same_state, state_of
from test_recording import ALBEDO, LIGHT, SMALL, record_session, tiny_scene

PATHS = [LIGHT, ALBEDO, "lights.key.color", "lights.sky.color", "meshes.ball.vertices", "cameras.front.pose",
         "lights.nope.position", "not a path", ""]
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.floats(min_value=-3.0, max_value=3.0), st.integers(-5, 5), st.booleans())
values = st.one_of(numbers, st.lists(st.floats(-3, 3), min_size=0, max_size=4),
                   st.lists(st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=8, max_size=8),
                            min_size=8, max_size=8),
                   st.text(max_size=3), st.none())
args = {
    "step": st.tuples(st.one_of(st.integers(-3, 4), numbers)),
    "set_steps": st.tuples(st.one_of(st.integers(-2, 50), numbers)),
    "reset": st.just(()),
    "pause": st.just(()),
    "set_value": st.tuples(st.sampled_from(PATHS), values),
    "set_target_value": st.tuples(st.sampled_from(PATHS), values),
    "set_free": st.tuples(st.sampled_from(PATHS), st.one_of(st.booleans(), numbers)),
    "set_lr": st.tuples(st.sampled_from(PATHS), numbers),
    "set_loss_weight": st.tuples(st.sampled_from(["l2", "tv", "ssim", "nope", ""]), numbers),
    "set_active_view": st.tuples(st.sampled_from(["front", "side", "top", "nope", ""])),
    "explode": st.just(()),
}
command = st.sampled_from(sorted(args)).flatmap(lambda k: args[k].map(lambda a, k=k: (k, a)))


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    return tiny_scene(tmp_path_factory.mktemp("fuzzcmd") / "scene", size=8, steps=40)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sequence=st.lists(command, min_size=1, max_size=12))
def test_any_command_sequence_is_refused_cleanly_or_applied(scene_file, sequence):
    problem = Problem(load_scene(scene_file), "cpu")
    for kind, a in sequence:
        before = state_of(problem)
        try:
            cmd = C.make(kind, *a)
        except C.CommandError:
            assert_same_state(state_of(problem), before)
            continue
        try:
            C.execute(cmd, problem)
        except C.CommandError:
            assert_same_state(state_of(problem), before)  # refused: exactly as it was
    if not problem.free_paths():  # everything fixed: a run is refused until something is free again
        with pytest.raises(C.CommandError, match="nothing is free"):
            C.execute(C.Start(), problem)
        C.execute(C.SetFree(LIGHT, True), problem)
    result = problem.step()  # whatever was applied, the optimizer still works
    assert np.isfinite(result.loss)


def test_a_fuzzed_session_records_and_verifies(scene_file, tmp_path):
    """A session with refused and applied commands mixed in replays exactly, refusals included."""
    edits = []
    for at, (kind, a) in enumerate([("set_lr", (LIGHT, 0.2)), ("set_value", (LIGHT, [1.0, 2.0])),
                                    ("set_free", (ALBEDO, False)), ("set_free", ("lights.nope.position", False)),
                                    ("set_loss_weight", ("tv", 0.5)), ("set_active_view", ("nope",)),
                                    ("set_target_value", ("lights.key.color", [0.9, 0.8, 0.7])),
                                    ("set_free", (ALBEDO, True)), ("reset", ())], start=1):
        edits.append((at, kind, tuple(np.asarray(x, np.float32) if isinstance(x, list) else x for x in a)))
    recorder, snap = record_session(tmp_path / "rec", scene_file, steps=12, edits=edits, options=SMALL)
    assert snap.commands_rejected == 3
    report = verify(load_recording(tmp_path / "rec"))
    assert report.ok, report.message()
