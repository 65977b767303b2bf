"""renderer.optim.models: the problem's model protocol, and what a Problem may and may not change: the caller's
scene stays as loaded, target rendering restores the live values whatever happens, edits reach the G-buffer
cache through the parameter table."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from drstudio.renderer.field_scene import FieldDeviceScene
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim import targets as targets_module
from drstudio.renderer.optim.field_training import FieldModel
from drstudio.renderer.optim.models import MeshModel, Model, model_class
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.params import camera_pose

ROOT = Path(__file__).resolve().parents[1]
ALBEDO = "materials.paint.albedo"


def _protocol_methods() -> set[str]:
    return {n for n, v in vars(Model).items() if not n.startswith("_") and callable(v)}


@pytest.mark.parametrize("cls", [MeshModel, FieldModel])
def test_models_implement_the_whole_protocol(cls):
    missing = {n for n in _protocol_methods() if not callable(getattr(cls, n, None))}
    assert not missing, missing
    for name in _protocol_methods():  # the same parameters (names and order) as the protocol
        want = [p for p in inspect.signature(getattr(Model, name)).parameters]
        got = [p for p in inspect.signature(getattr(cls, name)).parameters]
        assert got[:len(want)] == want, (cls.__name__, name, got, want)


def test_model_class_picks_the_representation():
    assert model_class(load_scene(ROOT / "scenes" / "texture.json")) is MeshModel
    assert model_class(load_scene(ROOT / "scenes" / "nerf_neural.json")) is FieldModel


def _values(scene) -> dict:
    return {p: v.value.copy() for p, v in scene.params().items()}


def test_problem_leaves_the_callers_scene_unchanged():
    scene = load_scene(ROOT / "scenes" / "texture.json")
    before, cameras = _values(scene), list(scene.cameras)
    p = Problem(scene, "cpu")
    p.set_value(ALBEDO, np.full(p.truth[ALBEDO].shape, 0.25, np.float32))
    p.step()
    assert list(scene.cameras) == cameras and p.scene is not scene
    after = _values(scene)
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)


def test_field_problem_leaves_the_callers_scene_unchanged():
    scene = load_scene(ROOT / "scenes" / "nerf_neural.json")
    scene.optimize = scene.optimize.model_copy(update={"rays_per_batch": 64, "eval_every": 0})
    cameras = list(scene.cameras)
    weights = scene.fields["nerf"].weights.copy()
    p = Problem(scene, "cpu")
    assert isinstance(p.ds, FieldDeviceScene) and p.model is p.field_training
    p.step()
    assert list(scene.cameras) == cameras and np.array_equal(scene.fields["nerf"].weights, weights)


def test_target_rendering_restores_the_live_values_when_it_fails(monkeypatch):
    p = Problem(load_scene(ROOT / "scenes" / "texture.json"), "cpu")
    current = p.ds.get(ALBEDO)
    p.set_target_value(ALBEDO, np.full(current.shape, 0.9, np.float32))  # truth != the live value

    def broken(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(targets_module, "render_view", broken)
    with pytest.raises(RuntimeError, match="render failed"):
        p.render_targets()
    np.testing.assert_array_equal(p.ds.get(ALBEDO), current)


def test_edits_reach_the_gbuffer_cache_through_the_table():
    """No manual invalidation: a camera edit drops that view's stored parts (and only what depends on it)."""
    p = Problem(load_scene(ROOT / "scenes" / "texture.json"), "cpu")
    p.batch_views = len(p.targets)
    p.step()
    cache = p.gbuffer_cache
    full = cache.nbytes
    assert full > 0
    pose = p.ds.get(camera_pose("front"))
    pose[2] += 0.01
    p.set_value(camera_pose("front"), pose)
    assert 0 < cache.nbytes < full
    before = p.ds.get(ALBEDO)
    p.step()  # the free albedo still trains through the rebuilt view
    assert not np.array_equal(p.ds.get(ALBEDO), before)
