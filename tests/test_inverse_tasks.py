"""Each shipped inverse task, on a small budget (few steps, smaller images): the optimization must
make real progress on the error that task is judged by. The full-budget runs, with their thresholds,
are in benchmarks/inverse_tasks.py and their numbers in benchmarks/README.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.metrics import parameter_metrics
from drstudio.renderer.optim.problem import Problem

ROOT = Path(__file__).resolve().parents[1]


def _shrink(scene, factor: float) -> None:
    for cam in scene.cameras.values():
        cam.width, cam.height = int(cam.width * factor), int(cam.height * factor)
        cam.intrinsics[:] = cam.intrinsics * factor


def _run(name: str, steps: int, factor: float = 0.5, target_spp: int | None = None):
    scene = load_scene(ROOT / "scenes" / f"{name}.json")
    _shrink(scene, factor)
    if target_spp is not None:  # path mode: cheaper targets
        opt = scene.optimize
        scene.optimize = opt.model_copy(update={"targets": opt.targets.model_copy(update={"spp": target_spp})})
    problem = Problem(scene, "cpu")
    problem.steps = steps
    before = parameter_metrics(problem)
    losses = [problem.step().loss for _ in range(steps)]
    return problem, before, parameter_metrics(problem), losses


def test_texture_recovery_improves_texture_psnr():
    _, before, after, losses = _run("texture", 40)
    m0, m1 = before["materials.paint.albedo"], after["materials.paint.albedo"]
    assert m1["psnr_db_seen_texels"] > m0["psnr_db_seen_texels"] + 8
    assert losses[-1] < 0.2 * losses[0]


def test_light_recovery_moves_the_light_to_its_true_position():
    _, before, after, _ = _run("light", 100)
    d0 = before["lights.key.position"]["distance"]
    d1 = after["lights.key.position"]["distance"]
    assert d1 < 0.2 * d0


def test_material_estimation_reduces_every_error():
    _, before, after, _ = _run("material", 60)
    for p in ("materials.metal.albedo", "materials.metal.roughness", "materials.metal.metallic"):
        assert after[p]["max_abs_error"] < 0.5 * before[p]["max_abs_error"], p


def test_camera_pose_recovery_reduces_rotation_and_position_error():
    _, before, after, _ = _run("camera", 150)
    m0, m1 = before["cameras.main.pose"], after["cameras.main.pose"]
    assert m0["rotation_error_deg"] == pytest.approx(10.0, rel=1e-3)  # the perturbation the issue names
    assert m1["rotation_error_deg"] < 0.3 * m0["rotation_error_deg"]
    assert m1["position_error_fraction_of_distance"] < 0.5 * m0["position_error_fraction_of_distance"]


def test_shape_recovery_reduces_chamfer_distance():
    problem, before, after, _ = _run("shape", 40)
    c0 = before["meshes.blob.vertices"]["chamfer_fraction_of_bbox_diagonal"]
    c1 = after["meshes.blob.vertices"]["chamfer_fraction_of_bbox_diagonal"]
    assert c1 < 0.7 * c0
    assert np.isfinite(problem.ds.get("meshes.blob.vertices")).all()


def test_shape_from_a_sphere_reduces_the_surface_chamfer_distance():
    problem, before, after, _ = _run("shape_sphere", 40)
    m0, m1 = before["meshes.blob.vertices"], after["meshes.blob.vertices"]
    assert len(problem.ds.get("meshes.blob.vertices")) == 162  # the icosphere's, not the blob's 2562
    # large steps move smooth changes of size slowly at first (the full run ends near 0.04 %)
    assert m1["chamfer_percent"] < 0.85 * m0["chamfer_percent"]
    assert m1["self_intersecting_faces"] == 0


def test_cornell_box_recovery_reduces_albedo_and_emission_errors():
    """Path mode: 40 steps at 24x24 move the walls' albedos and the emitter's radiance towards the truth."""
    _, before, after, losses = _run("cornell_box", 40, target_spp=128)
    assert np.isfinite(losses).all()
    for m in ("floor", "back", "red", "green"):
        p = f"materials.{m}.albedo"
        assert after[p]["max_abs_error"] < 0.7 * before[p]["max_abs_error"], p
    e0 = before["materials.light.emission"]["max_rel_error"]
    assert after["materials.light.emission"]["max_rel_error"] < 0.5 * e0


def test_env_object_recovery_reduces_roughness_and_albedo_errors():
    """Path mode under an environment map: 30 steps at 20x20 move roughness and albedo towards the truth."""
    _, before, after, losses = _run("env_object", 30, target_spp=64)
    assert np.isfinite(losses).all()
    for p in ("materials.glossy.albedo", "materials.glossy.roughness"):
        assert after[p]["max_abs_error"] < 0.7 * before[p]["max_abs_error"], p


def test_shadow_position_recovery_moves_the_hidden_block_from_its_shadow():
    """The block is outside the view: only the shadow-boundary gradient (edge sampling) can move it. 40 steps
    at 64x48 bring it from 0.29 to a small fraction of that; without the boundary term it does not move."""
    problem, before, after, _ = _run("shadow_position", 40)
    d0 = before["meshes.block.translation"]["distance"]
    assert d0 > 0.25
    assert after["meshes.block.translation"]["distance"] < 0.3 * d0
    problem, before, after, _ = _run_without_shadow_edges("shadow_position", 5)
    assert after["meshes.block.translation"]["distance"] == before["meshes.block.translation"]["distance"]


def _run_without_shadow_edges(name: str, steps: int):
    scene = load_scene(ROOT / "scenes" / f"{name}.json")
    _shrink(scene, 0.5)
    scene.render.shadow_edges = 0
    problem = Problem(scene, "cpu")
    problem.steps = steps
    before = parameter_metrics(problem)
    losses = [problem.step().loss for _ in range(steps)]
    return problem, before, parameter_metrics(problem), losses
