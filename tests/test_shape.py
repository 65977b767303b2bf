"""Shape optimization of any topology: the large-steps parametrization's gradient (finite differences),
the combined optimizer, isotropic remeshing (closed stays closed; the optimizer's state follows), surface
metrics against an analytic pair of meshes, a short run from a primitive that reduces the Chamfer distance,
`replay --verify` across a remesh, resuming at a remeshed keyframe, and the scene schema's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
import warp as wp
from drstudio.app import cli
from drstudio.app.headless import optimize
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim import optimizers
from drstudio.renderer.optim.large_steps import LargeSteps, ShapeOptimizer, uniform_laplacian
from drstudio.renderer.optim.mesh_metrics import compare_meshes, self_intersections
from drstudio.renderer.optim.metrics import parameter_metrics
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.optim.remesh import isotropic_remesh
from drstudio.renderer.recording import load_recording, resume_problem, verify
from drstudio.renderer.recording.state import compare_state
from support.scenes import icosphere

# ---- large steps -------------------------------------------------------------------------------------

def test_gradient_through_the_parametrization_matches_finite_differences():
    """LargeSteps steps u along (I + lam L)^-1 dloss/dx, which is dloss/du for x = (I + lam L)^-1 u (the matrix
    is symmetric): checked by central differences in u, in float64 with a dense solve (not SciPy's LU)."""
    v, f = icosphere(1.0, 1)
    lam = 7.0
    M = np.eye(len(v)) + lam * uniform_laplacian(f, len(v)).toarray()
    rng = np.random.default_rng(3)
    c, w = rng.normal(size=v.shape), rng.random(v.shape)

    def loss(x):
        return float(np.sum(c * np.sin(2 * x)) + 0.5 * np.sum(w * x * x))

    x0 = v.astype(np.float64)
    grad_x = 2 * c * np.cos(2 * x0) + w * x0
    opt = LargeSteps(wp.array(v, dtype=wp.vec3, device="cpu", requires_grad=True), f, lam=lam)
    grad_u = opt.to_positions(grad_x)
    u0, h = M @ x0, 1e-5
    for i, k in [(0, 0), (5, 1), (17, 2), (33, 0), (41, 1)]:
        du = np.zeros_like(u0)
        du[i, k] = h
        fd = (loss(np.linalg.solve(M, u0 + du)) - loss(np.linalg.solve(M, u0 - du))) / (2 * h)
        # float64 central differences of a smooth function: truncation ~h^2, rounding ~1e-16 / h
        assert fd == pytest.approx(grad_u[i, k], rel=1e-6, abs=1e-9)


def test_shape_optimizer_applies_all_or_nothing_and_round_trips():
    v, f = icosphere(1.0, 1)
    verts = wp.array(v, dtype=wp.vec3, device="cpu", requires_grad=True)
    other = wp.array(np.ones(3, np.float32), dtype=float, device="cpu", requires_grad=True)

    def make(arrays, lrs):
        return optimizers.Adam(arrays, lrs)

    opt = ShapeOptimizer([verts, other], [0.01, 0.1], {0: (f, 10.0)}, make)
    verts.grad.assign(wp.array(np.ones_like(v), dtype=wp.vec3, device="cpu"))
    other.grad.assign(np.ones(3, np.float32))
    assert opt.step(loss_value=1.0)
    state = opt.state_dict()
    assert [len(a) for a in state["u"]] == [3 * len(v), 0] and [len(a) for a in state["exp_avg"]] == [3 * len(v), 3]
    before_v, before_o = verts.numpy().copy(), other.numpy().copy()
    other.grad.assign(np.array([np.nan, 0, 0], np.float32))  # a bad gradient anywhere: nothing moves
    assert not opt.step(loss_value=1.0)
    np.testing.assert_array_equal(verts.numpy(), before_v)
    np.testing.assert_array_equal(other.numpy(), before_o)
    assert opt.steps == 1 and opt.iteration == 2
    fresh = ShapeOptimizer([verts, other], [0.5, 0.5], {0: (f, 10.0)}, make)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(verts.numpy(), before_v)
    assert fresh.lrs == [0.01, 0.1] and fresh.steps == 1


# ---- remeshing ---------------------------------------------------------------------------------------

def _closed(v, f) -> trimesh.Trimesh:
    m = trimesh.Trimesh(v, f, process=False)
    assert m.is_watertight and m.is_winding_consistent and m.euler_number == 2
    return m


@pytest.mark.parametrize("target", [0.5, 0.2])
def test_remesh_keeps_a_closed_manifold_closed_at_the_target_edge_length(target):
    v, f = icosphere(1.0, 2)
    v = v * np.array([1.6, 0.6, 1.0], np.float32)  # stretched: long and short edges
    v2, f2 = isotropic_remesh(v, f, target)
    m = _closed(v2, f2)
    assert m.volume > 0  # outward orientation kept
    lengths = m.edges_unique_length
    # split above 4/3 and collapse below 4/5 of the target, then relaxed (which moves lengths a little)
    assert abs(np.median(lengths) / target - 1) < 0.2
    assert 0.3 * target < lengths.min() and lengths.max() <= 4 / 3 * target * (1 + 1e-6)
    assert self_intersections(v2, f2) == 0
    v3, f3 = isotropic_remesh(v, f, target)  # deterministic
    np.testing.assert_array_equal(v2, v3)
    np.testing.assert_array_equal(f2, f3)


def test_remesh_keeps_a_torus_a_torus():
    from drstudio.renderer import primitives
    from drstudio.renderer.initial_values import _welded

    v, f = _welded(*primitives.torus(1.0, 0.4, 16)[:2])
    v2, f2 = isotropic_remesh(v, f, 0.15)
    m = trimesh.Trimesh(v2, f2, process=False)
    assert m.is_watertight and m.is_winding_consistent and m.euler_number == 0  # genus 1 kept
    assert len(v2) > 2 * len(v)


# ---- metrics -----------------------------------------------------------------------------------------

def test_metrics_of_a_sphere_against_a_scaled_copy_are_analytic():
    """A point p on face f of a convex polyhedron A lies (s - 1) h_f from the scaled copy sA (h_f: the face
    plane's distance from the center): the area-weighted mean is (s - 1) 3 Vol / Area, exactly."""
    m = trimesh.creation.icosphere(subdivisions=3)
    v, f = m.vertices, m.faces
    s = 1.1
    expected = (s - 1) * 3 * m.volume / m.area
    got = compare_meshes(v, f, s * v, f, samples=20000)
    diag = np.linalg.norm(s * (v.max(0) - v.min(0)))
    assert got["reference_bbox_diagonal"] == pytest.approx(diag)
    assert got["chamfer_to_reference_percent"] == pytest.approx(100 * expected / diag, rel=1e-3)
    # the other way the closest point can be on an edge: within 1 % of the face-plane value
    assert got["chamfer_from_reference_percent"] == pytest.approx(100 * expected / diag, rel=1e-2)
    # 1 towards the copy (the same face, scaled); back, a closest point on an edge may pick the neighbour face
    assert got["normal_consistency"] == pytest.approx(1.0, abs=1e-3)
    assert got["self_intersecting_faces"] == 0
    same = compare_meshes(v, f, v, f, samples=5000)
    assert same["chamfer_percent"] < 1e-5


def test_self_intersections_count_crossing_triangles_only():
    crossing = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0.5, 0.5, -1], [0.5, 0.5, 1], [1.5, 0.6, 0]], float)
    assert self_intersections(crossing, [[0, 1, 2], [3, 4, 5]]) == 2
    apart = crossing + np.array([[0, 0, 0]] * 3 + [[5, 0, 0]] * 3)
    assert self_intersections(apart, [[0, 1, 2], [3, 4, 5]]) == 0
    folded = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.2, 0.01]], float)  # share an edge: not tested
    assert self_intersections(folded, [[0, 1, 2], [0, 1, 3]]) == 0
    v, f = icosphere(1.0, 2)
    two_v, two_f = np.concatenate([v, v + [0.6, 0, 0]]), np.concatenate([f, f + len(v)])
    n = self_intersections(two_v, two_f)
    # the faces that cross lie where the spheres meet: on the plane x = 0.3, at radius sqrt(1 - 0.09)
    assert n > 0
    assert self_intersections(np.concatenate([v, v + [3, 0, 0]]), two_f) == 0


# ---- a tiny shape task -------------------------------------------------------------------------------

def _bumpy(subdivisions: int = 2) -> tuple[np.ndarray, np.ndarray]:
    v, f = icosphere(1.0, subdivisions)
    n = v / np.linalg.norm(v, axis=1, keepdims=True)
    up, side = np.array([0, 1, 0.0]), np.array([1, 0, 0.0])
    r = 1 + 0.3 * np.exp(-(1 - n @ up) / 0.15) - 0.15 * np.exp(-(1 - n @ side) / 0.1)
    return (n * r[:, None]).astype(np.float32), f


def _write_obj(path: Path, v, f) -> None:
    path.write_text("".join(f"v {a:.6f} {b:.6f} {c:.6f}\n" for a, b, c in v)
                    + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in f))


def tiny_shape_scene(folder: Path, *, steps: int = 12, remesh=None, reference=None, **param) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write_obj(folder / "target.obj", *_bumpy())
    eyes = [[0, 0.8, 3.2], [3.2, 0.3, 0], [0, -0.5, -3.2], [-3.2, 1.0, 0.3]]
    # lambda 1: on a 42-vertex mesh the uniform Laplacian's smooth modes have eigenvalues near 1, so the
    # default 19 (for meshes of thousands of vertices) would slow every change of size twentyfold
    spec = {"init": {"primitive": {"type": "icosphere", "subdivisions": 1, "radius": 0.75}},
            "parametrization": {"type": "large_steps", "lambda": 1.0}, **param}
    if remesh is not None:
        spec["remesh"] = remesh
    if reference is not None:
        spec["reference"] = reference
    scene = {
        "version": 1,
        "meshes": [{"name": "blob", "file": "target.obj", "material": "clay"}],
        "materials": [{"name": "clay", "albedo": [0.7, 0.7, 0.7]}],
        "lights": [{"name": "key", "type": "directional", "direction": [-0.5, -0.7, -0.5], "intensity": 2.5},
                   {"name": "sky", "type": "ambient", "color": [0.2, 0.2, 0.2]}],
        "cameras": [{"name": f"c{i}", "width": 40, "height": 40, "fov_y": 40,
                     "look_at": {"eye": e, "target": [0, 0, 0]}} for i, e in enumerate(eyes)],
        "render": {"mode": "antialias"},
        "optimize": {"parameters": {"meshes.blob.vertices": spec},
                     "targets": {"cameras": [f"c{i}" for i in range(4)]},
                     "loss": {"l2": 1.0}, "optimizer": {"type": "adam", "lr": 0.05},
                     "steps": steps, "batch_views": 2, "seed": 0},
    }
    (folder / "scene.json").write_text(json.dumps(scene))
    return folder / "scene.json"


def test_a_short_run_from_a_primitive_reduces_chamfer_and_remeshes(tmp_path):
    problem = Problem(load_scene(tiny_shape_scene(tmp_path, remesh={"steps": [5], "edge_length": [0.3]})), "cpu")
    path = "meshes.blob.vertices"
    assert len(problem.ds.get(path)) == 42 and len(problem.truth[path]) == 162  # topologies of their own
    held = problem.scene  # what the viewer's state holds (thread engine): a remesh must not change it
    held_faces = held.meshes["blob"].faces.copy()
    before = parameter_metrics(problem)[path]
    assert "scene's mesh" in before["reference"]
    for _ in range(12):
        assert problem.step().applied
    after = parameter_metrics(problem)[path]
    assert after["chamfer_percent"] < 0.8 * before["chamfer_percent"]
    assert after["self_intersecting_faces"] == 0
    v, f = problem.ds.get(path), problem.model.faces(path)
    assert len(v) != 42 and problem.model.topology_version == 1
    _closed(v, f)
    assert problem.scene is not held and problem.scene.meshes["blob"].faces is f
    np.testing.assert_array_equal(held.meshes["blob"].faces, held_faces)  # copy on write, not in place
    # the optimizer's state is sized to the new mesh and u is the new mesh's (I + lam L) x
    state = problem.optimizer.state_dict()
    i = problem.opt_paths.index(path)
    assert all(state[b][i].size == 3 * len(v) for b in ("u", "exp_avg", "exp_avg_sq"))
    ls = problem.optimizer.large[i]
    np.testing.assert_allclose(ls.to_positions(state["u"][i].reshape(-1, 3)), v, atol=1e-5)
    # reset: back to the start topology
    problem.reset()
    assert len(problem.ds.get(path)) == 42


def test_a_plain_parametrization_remeshes_with_adam_state_carried(tmp_path):
    scene = tiny_shape_scene(tmp_path, steps=4, remesh={"steps": [2], "edge_length": [0.25]},
                             parametrization={"type": "plain"})
    problem = Problem(load_scene(scene), "cpu")
    for _ in range(3):
        assert problem.step().applied
    n = len(problem.ds.get("meshes.blob.vertices"))
    state = problem.optimizer.state_dict()
    assert n > 42 and type(problem.optimizer).__name__ == "Adam"
    assert state["exp_avg"][0].size == state["exp_avg_sq"][0].size == 3 * n and state["steps"] == 3
    assert (state["exp_avg_sq"][0] > 0).mean() > 0.5  # carried over, not zeroed (unseen vertices stay at 0)


def test_replay_verify_reproduces_a_run_with_a_remesh(tmp_path):
    scene = tiny_shape_scene(tmp_path / "scene", steps=10, remesh={"steps": [4], "edge_length": [0.3]})
    optimize(str(scene), steps=None, out=tmp_path / "out", device="cpu", progress=False)
    rec = load_recording(tmp_path / "out" / "recording")
    reasons = [r.get("reason") for r in rec.records if r["type"] == "keyframe"]
    assert "topology" in reasons
    report = verify(rec)
    assert report.ok, report.message()
    assert report.steps_checked == 10
    # resuming at the keyframe after the remesh rebuilds that topology with its optimizer state
    at = next(r["at"] for r in rec.records if r["type"] == "keyframe" and r.get("reason") == "topology")
    problem, _ = resume_problem(rec, at)
    kf = rec.keyframe(at)
    assert compare_state(problem, kf, 1e-6) is None
    assert len(problem.ds.get("meshes.blob.vertices")) == len(kf.values["meshes.blob.vertices"]) != 42
    # the replay viewer's source leaves out vertices the scene's faces cannot draw (after the remesh)
    from drstudio.app.replay import ReplaySource

    source = ReplaySource(rec)
    assert "meshes.blob.vertices" not in source.all_values_at(at)
    assert "meshes.blob.vertices" not in source.snapshot_at(at).values
    # drstudio export writes the recovered mesh with its own faces
    assert cli.main(["export", str(tmp_path / "out"), "--format", "ply"]) == 0
    exported = trimesh.load(tmp_path / "out" / "export" / "blob.ply", process=False)
    final = np.load(tmp_path / "out" / "params.npz")["meshes.blob.vertices"]
    assert len(exported.vertices) == len(final) != 162 and exported.is_watertight
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["parameters"]["meshes.blob.vertices"]["self_intersecting_faces"] == 0


def test_a_reference_file_is_measured_and_no_reference_is_said(tmp_path):
    scene = tiny_shape_scene(tmp_path, steps=2, reference="target.obj", parametrization={"type": "plain"})
    problem = Problem(load_scene(scene), "cpu")
    m = parameter_metrics(problem)["meshes.blob.vertices"]
    assert m["reference"] == "reference mesh target.obj" and m["chamfer_percent"] > 0
    assert type(problem.optimizer).__name__ == "Adam"  # plain: the scene's optimizer moves the vertices
    # image targets: the scene's mesh is a placeholder, so there is nothing to compare with
    from drstudio.renderer.images import write_image

    data = json.loads(scene.read_text())
    for t in problem.targets:
        write_image(tmp_path / f"{t.camera}.png", problem.target_numpy(t.camera))
    data["optimize"]["targets"] = {"images": [{"camera": f"c{i}", "file": f"c{i}.png"} for i in range(4)]}
    del data["optimize"]["parameters"]["meshes.blob.vertices"]["reference"]
    scene.write_text(json.dumps(data))
    m = parameter_metrics(Problem(load_scene(scene), "cpu"))["meshes.blob.vertices"]
    assert m["reference"].startswith("none:") and "chamfer_percent" not in m


def test_a_mesh_file_of_another_topology_starts_the_optimization(tmp_path):
    scene = tiny_shape_scene(tmp_path, steps=3)
    box = trimesh.creation.box(extents=(1.2, 1.2, 1.2))
    box.export(tmp_path / "start.obj")
    data = json.loads(scene.read_text())
    data["optimize"]["parameters"]["meshes.blob.vertices"]["init"] = "start.obj"
    scene.write_text(json.dumps(data))
    problem = Problem(load_scene(scene), "cpu")
    path = "meshes.blob.vertices"
    assert len(problem.ds.get(path)) == 8 and problem.model.faces(path).shape == (12, 3)
    assert not problem.model.reports(path)  # its values do not line up with the truth's 162 vertices
    for _ in range(3):
        assert problem.step().applied
    assert problem.parameter_errors() == {}  # nothing to compare vertex by vertex
    problem.set_value(path, problem.ds.get(path) * 1.01)  # an edit of the optimized mesh's own shape
    assert problem.step().applied


# ---- schema ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, field", [
    (lambda s: s["optimize"]["parameters"]["meshes.blob.vertices"].update(
        parametrization={"type": "large_steps", "lambda": -1}), "parametrization"),
    (lambda s: s["optimize"]["parameters"]["meshes.blob.vertices"].update(
        parametrization={"type": "smooth"}), "parametrization.type"),
    (lambda s: s["optimize"]["parameters"]["meshes.blob.vertices"].update(
        remesh={"steps": [3, 5], "edge_length": [0.2]}), "remesh"),
    (lambda s: s["optimize"]["parameters"]["meshes.blob.vertices"].update(
        remesh={"steps": [5, 3], "edge_length": [0.2, 0.1]}), "remesh"),
    (lambda s: s["optimize"]["parameters"]["meshes.blob.vertices"].update(
        remesh={"steps": [12], "edge_length": [0.2]}), "remesh.steps"),
    (lambda s: s["optimize"]["parameters"]["meshes.blob.vertices"].update(
        init={"primitive": {"type": "teapot"}}), "init.primitive.type"),
    (lambda s: s["optimize"]["parameters"]["meshes.blob.vertices"].update(reference="missing.obj"), "reference"),
    (lambda s: s["optimize"]["parameters"].update({"materials.clay.albedo": {
        "init": 0.5, "remesh": {"steps": [1], "edge_length": [0.1]}}}), "materials.clay.albedo\"].remesh"),
    (lambda s: s["optimize"]["parameters"].update({"materials.clay.albedo": {
        "init": {"primitive": {"type": "icosphere"}}}}), "materials.clay.albedo\"].init"),
    (lambda s: s["optimize"]["parameters"].update({"meshes.blob.colors": {"init": 0.5}}), "meshes.blob.colors"),
])
def test_schema_errors_exit_2_naming_the_field(tmp_path, capsys, edit, field):
    scene = tiny_shape_scene(tmp_path)
    data = json.loads(scene.read_text())
    edit(data)
    scene.write_text(json.dumps(data))
    assert cli.main(["info", str(scene)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert field in err, err


def test_a_textured_mesh_keeps_its_uvs_when_its_vertices_are_free(tmp_path):
    """Freeing the vertices of a textured mesh (the scene's own topology) keeps its uvs and vertex colors;
    a remesh carries them to the new vertices by nearest old vertex instead of zeroing them."""
    from test_viewer import write_scene

    scene = load_scene(write_scene(tmp_path))
    uvs = scene.meshes["ball"].uvs.copy()
    assert np.ptp(uvs) > 0.5
    problem = Problem(scene, "cpu")
    np.testing.assert_array_equal(problem.scene.meshes["ball"].uvs, uvs)
    np.testing.assert_array_equal(problem.ds.get("meshes.ball.uvs"), uvs)
    model = problem.model
    v = problem.ds.get("meshes.ball.vertices")
    f = problem.scene.meshes["ball"].faces
    new_v, new_f = isotropic_remesh(v, f, float(np.linalg.norm(v[f[:, 0]] - v[f[:, 1]], axis=1).mean() * 0.7))
    model._set_topology({"meshes.ball.vertices": (new_v, new_f)})
    moved = problem.scene.meshes["ball"].uvs
    assert moved.shape == (len(new_v), 2) and np.ptp(moved) > 0.5
