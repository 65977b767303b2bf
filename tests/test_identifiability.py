"""Warnings for obviously under-determined problems (renderer.optim.identifiability, issue 17): each rule on
free sets that trigger it and on ones that must not, and `drstudio optimize` printing them before it starts."""

from __future__ import annotations

import json

from drstudio.renderer.optim.identifiability import underdetermined
from test_recording import tiny_scene

VIEWS = ["front", "side"]


def test_camera_intrinsics_and_pose_free_together():
    (w,) = underdetermined(["cameras.front.intrinsics", "cameras.front.pose"], VIEWS)
    assert w.startswith("cameras.front:") and "intrinsics and pose" in w
    # one of them, or each on a different camera, is fine
    assert underdetermined(["cameras.front.pose"], VIEWS) == []
    assert underdetermined(["cameras.front.intrinsics", "cameras.side.pose"], VIEWS) == []


def test_a_free_camera_without_a_target_view():
    (w,) = underdetermined(["cameras.spare.pose"], VIEWS)
    assert "cameras.spare" in w and "no target view" in w


def test_albedo_and_light_scale():
    (w,) = underdetermined(["materials.paint.albedo", "lights.key.intensity", "lights.key.position"], VIEWS)
    assert "materials.paint.albedo" in w and "lights.key.intensity" in w
    assert underdetermined(["materials.paint.albedo", "lights.key.position"], VIEWS) == []
    assert underdetermined(["materials.paint.roughness", "lights.key.color"], VIEWS) == []
    assert underdetermined(["not a path", "fields.f.density"], VIEWS) == []  # ignored, no crash


def test_optimize_prints_the_warning(tmp_path, capsys):
    from drstudio.app.headless import optimize

    scene = tiny_scene(tmp_path / "s", size=8, steps=1)
    doc = json.loads(scene.read_text())
    doc["optimize"]["parameters"]["lights.key.intensity"] = {"init": 8.0}
    scene.write_text(json.dumps(doc))
    optimize(str(scene), steps=1, out=tmp_path / "out", device="cpu", progress=False, record=False)
    err = capsys.readouterr().err
    assert "warning: materials.paint.albedo and lights.key.intensity are both free" in err, err
