"""renderer.optim.commands.SetRenderSetting (issue 17 item 4): validated at construction and against the
problem, applied to `scene.render`, targets rendered from the scene re-rendered with the new setting,
recorded and replayed like every command, undone by its inverse."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim import commands as C
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.scene import RenderSettings
from test_recording import tiny_scene


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    return tiny_scene(tmp_path_factory.mktemp("rs") / "scene", size=16)


@pytest.mark.parametrize("name, value, message", [
    ("mode", "wireframe", "expected one of"), ("mode", 1, "expected one of"), ("shadows", "yes", "true or false"),
    ("mipmaps", 1, "true or false"), ("soft_sigma", 2.0, "render setting"), ("", True, "render setting"),
    (None, True, "render setting")])
def test_construction_validates_alone(name, value, message):
    with pytest.raises(C.CommandError, match=message):
        C.SetRenderSetting(name, value)


def test_apply_changes_the_scene_and_rerenders_targets(scene_file):
    problem = Problem(load_scene(scene_file), "cpu")
    before = {cam: img.copy() for cam, img in problem.target_images().items()}
    version = problem.targets_version
    C.execute(C.SetRenderSetting("shadows", True), problem)
    assert problem.scene.render.shadows is True
    C.execute(C.SetRenderSetting("mode", "hard"), problem)
    assert problem.scene.render.mode == "hard"
    assert problem.targets_version == version + 2
    after = problem.target_images()
    # hard rasterization: the silhouette loses its anti-aliasing, so the target images change
    assert max(float(np.abs(after[c] - before[c]).max()) for c in before) > 0.05
    C.execute(C.SetRenderSetting("mode", "soft"), problem)
    assert problem.scene.render.mode == "soft"
    problem.step()  # the optimizer steps with the new mode


def test_soft_mode_refused_with_a_background_image(scene_file, tmp_path):
    from drstudio.renderer.images import write_image

    doc = json.loads(scene_file.read_text())
    write_image(tmp_path / "bg.png", np.full((16, 16, 3), 0.3, np.float32))
    doc["background"] = str(tmp_path / "bg.png")
    doc["materials"][0]["albedo"] = str(scene_file.parent / "assets" / "tex.png")
    path = tmp_path / "bg.json"
    path.write_text(json.dumps(doc))
    problem = Problem(load_scene(path), "cpu")
    with pytest.raises(C.CommandError, match="background"):
        C.execute(C.SetRenderSetting("mode", "soft"), problem)
    assert problem.scene.render.mode == "antialias"  # refused: nothing changed


def test_record_mirror_and_inverse():
    cmd = C.SetRenderSetting("mode", "soft")
    assert C.from_record(json.loads(json.dumps(cmd.to_record()))) == cmd
    assert C.make("set_render_setting", "shadows", False) == C.SetRenderSetting("shadows", False)
    view = types.SimpleNamespace(render=RenderSettings(mode="antialias", shadows=True))
    inverse = cmd.inverse(view)
    cmd.mirror(view)
    assert view.render.mode == "soft" and inverse == C.SetRenderSetting("mode", "antialias")
    inverse.mirror(view)
    assert view.render.mode == "antialias"


def test_inverse_of_every_edit_is_the_value_before():
    view = types.SimpleNamespace(values={"a": np.zeros(3, np.float32)}, targets={"a": np.ones(3, np.float32)},
                                 free={"a"}, lrs={"a": 0.1}, weights={"l2": 1.0}, steps=10)
    for cmd, before in ((C.SetValue("a", [1, 2, 3]), C.SetValue("a", [0, 0, 0])),
                        (C.SetTargetValue("a", [4, 5, 6]), C.SetTargetValue("a", [1, 1, 1])),
                        (C.SetFree("a", False), C.SetFree("a", True)), (C.SetLr("a", 0.5), C.SetLr("a", 0.1)),
                        (C.SetLossWeight("l2", 2.0), C.SetLossWeight("l2", 1.0)), (C.SetSteps(99), C.SetSteps(10))):
        inverse = cmd.inverse(view)
        assert inverse == before, (cmd, inverse)
        if hasattr(before, "value"):
            np.testing.assert_array_equal(inverse.value, before.value)
    assert C.Start().inverse(view) is None and C.Reset().inverse(view) is None


def test_recorded_and_verified(scene_file, tmp_path):
    """A session that changes the render mode mid-run is recorded and reproduced by `verify` (the command
    re-executed at its position re-renders the targets the same way)."""
    from drstudio.renderer.recording import load_recording, verify
    from test_recording import record_session

    edits = [(3, "set_render_setting", ("mode", "hard")), (6, "set_render_setting", ("shadows", True))]
    recorder, snap = record_session(tmp_path / "rec", scene_file, steps=9, edits=edits)
    assert snap.error == "" and snap.commands_applied >= 2
    report = verify(load_recording(recorder.dir))
    assert report.ok, report
