"""The "hash_grid" field type (Instant-NGP's hash encoding + small MLPs) as a scene element trained through
`Problem` and `drstudio optimize` (renderer.optim.field_models.HashState), and the sampled held-out evaluation
every field type uses while training (FieldModel.eval_pixels, `--final-eval`).

Schema errors exit 2 naming the field; the step's gradient w.r.t. a hash-table entry and an MLP weight against
central differences of the step's loss; a short training run raises the held-out PSNR clearly; the recording
verifies bit for bit and resumes; export and `drstudio render` of the trained field; the viewer's read-out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import warp as wp
from drstudio.app import cli
from drstudio.renderer.datasets import DatasetOptions, generate_dataset
from drstudio.renderer.errors import SceneError
from drstudio.renderer.loading import load_scene, summarize
from drstudio.renderer.optim.field_training import PSNR_TERM
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.recording import load_recording, verify
from drstudio.renderer.volume.hash_field import initial_values, mlps, module_from_spec
from drstudio.renderer.volume.neural_field import FlatLayout
from support.gradcheck import set_entry

ROOT = Path(__file__).resolve().parents[1]
BOX = [[-1.05, -1.05, -1.05], [1.05, 1.05, 1.05]]
HASH = {"name": "nerf", "type": "hash_grid", "aabb": BOX, "n_levels": 4, "n_features": 2, "log2_table_size": 10,
        "base_resolution": 4, "finest_resolution": 32, "width": 16, "geo_features": 7, "color_layers": 1,
        "sh_degree": 1, "samples_per_ray": 24}
PARAMS = {"fields.nerf.table": {"lr": 0.03}, "fields.nerf.weights": {"lr": 0.01}}


def scene_doc(field: dict = HASH, steps: int = 20, rays: int = 256, eval_every: int = 10) -> dict:
    return {
        "version": 1,
        "cameras": [{"name": "preview", "width": 16, "height": 16, "fov_y": 40,
                     "look_at": {"eye": [0, 0.8, 3.5], "target": [0, 0, 0]}}],
        "background": [0.05, 0.05, 0.05],
        "fields": [dict(field)],
        "optimize": {"parameters": {k: dict(v) for k, v in PARAMS.items()},
                     "targets": {"transforms": "plain/transforms.json"}, "loss": {"l2": 1.0},
                     "optimizer": {"type": "adam", "lr": 0.01, "betas": [0.9, 0.99]}, "steps": steps,
                     "rays_per_batch": rays, "eval_every": eval_every},
    }


def write(folder: Path, doc: dict, name: str = "scene.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The textured globe, 16 views at 16x16 of which 3 are held out (`plain/`)."""
    folder = tmp_path_factory.mktemp("hash")
    generate_dataset(load_scene(ROOT / "scenes" / "texture.json"), folder / "plain",
                     DatasetOptions(views=16, test_views=3, width=16, height=16), device="cpu")
    return folder


# ---- schema ---------------------------------------------------------------------------------------

def edit(path: str, value):
    def apply(d):
        *keys, last = path.split("/")
        for k in keys:
            d = d[int(k)] if k.isdigit() else d[k]
        d[int(last) if last.isdigit() else last] = value
    return apply


ERRORS = [  # (id, edit, field path, message)
    ("features", edit("fields/0/n_features", 3), "fields[0].n_features", "1, 2, 4 or 8"),
    ("table-size", edit("fields/0/log2_table_size", 30), "fields[0].log2_table_size", "less than or equal to 24"),
    ("levels", edit("fields/0/n_levels", 0), "fields[0].n_levels", "greater than or equal to 1"),
    ("sh", edit("fields/0/sh_degree", 3), "fields[0].sh_degree", "0, 1 or 2"),
    ("activation", edit("fields/0/density_activation", "exp"), "fields[0].density_activation", "'trunc_exp'"),
    ("finest", edit("fields/0/finest_resolution", 2), "fields[0]", "finest_resolution 2 must be >= base_resolution"),
    ("unknown", edit("fields/0/resolution", 64), "fields[0].resolution", "unknown field"),
    ("tv", edit("optimize/loss", {"l2": 1.0, "tv": 1e-4}), "optimize.loss.tv", "total variation regularizes grids"),
    ("param", edit("optimize/parameters", {"fields.nerf.tabel": {}}), 'optimize.parameters["fields.nerf.tabel"]',
     "fields.nerf.table"),
    ("eps", edit("optimize/optimizer/eps", -1.0), "optimize.optimizer.eps", "greater than 0"),
    ("rising-cosine", edit("optimize/optimizer/schedule", {"type": "cosine", "min_lr": 0.1}),
     "optimize.optimizer.schedule", "must not exceed the optimizer's lr 0.01"),
]


@pytest.mark.parametrize("change, where, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_settings_name_file_and_field(data, change, where, message):
    doc = scene_doc()
    change(doc)
    path = write(data, doc, "bad.json")
    with pytest.raises(SceneError) as info:
        load_scene(path)
    assert info.value.file == str(path) and info.value.field == where, str(info.value)
    assert message in info.value.message, str(info.value)


def test_bad_settings_exit_2_with_one_line(data, capsys):
    doc = scene_doc()
    doc["fields"][0]["n_features"] = 3
    assert cli.main(["optimize", str(write(data, doc, "bad_cli.json")), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "fields[0].n_features" in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_huge_table_is_refused_before_allocation(data, monkeypatch):
    from drstudio.renderer import memory
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 2**20)
    doc = scene_doc(dict(HASH, log2_table_size=22, n_levels=16))
    with pytest.raises(SceneError) as info:
        load_scene(write(data, doc, "huge.json"))
    assert info.value.field == "fields[0].log2_table_size" and "hash tables" in info.value.message


def test_parameters_layout_and_summary(data):
    scene = load_scene(write(data, scene_doc(), "layout.json"))
    params = scene.params()
    table, weights = params["fields.nerf.table"], params["fields.nerf.weights"]
    assert table.shape == (4 * 1024, 2) and table.kind == "weights" and weights.value.ndim == 1
    spec = scene.fields["nerf"].model
    module = module_from_spec(spec)
    assert FlatLayout(mlps(module)).size == weights.value.size
    # the seed makes the initialization; the table is the paper's uniform +-1e-4
    t2, w2 = initial_values(spec)
    np.testing.assert_array_equal(t2, table.value)
    np.testing.assert_array_equal(w2, weights.value)
    assert np.abs(table.value).max() <= 1e-4
    text = summarize(scene)
    assert "hash_grid over" in text and "4 levels x 2^10 entries x 2 features" in text


# ---- the step's gradient --------------------------------------------------------------------------

def step_loss(p: Problem, indices: np.ndarray, paths) -> tuple[float, dict]:
    p.ds.zero_grad()
    tape = wp.Tape()
    with tape:
        total, _, _ = p._record_loss(indices)
    tape.backward(total)
    value = float(total.numpy()[0])
    grads = {path: p.ds.arrays[path].grad.numpy().reshape(-1).copy() for path in paths}
    tape.reset()
    return value, grads


@pytest.mark.parametrize("contract", [False, True], ids=["bounded", "contracted"])
def test_step_gradient_of_a_table_entry_and_an_mlp_weight_matches_central_differences(data, contract):
    """d loss / d(hash-table entry) and d loss / d(MLP weight) of a training step (hash encoding with its
    hand-written adjoint -> MLPs -> Warp compositing -> l2) against central differences of the same step (fixed
    rays, fixed jitter), for a bounded field and a contracted one (samples through the scene contraction). The
    table starts at +-1e-4, where the MLPs barely see it, so it is set to N(0, 0.5) first.
    Tolerance: float32 losses of ~1e-2 and steps of 1e-2 give a difference quotient good to ~1e-4 absolute; a
    sample crossing the early-termination threshold is the other error, ~1 % relative."""
    doc = scene_doc({**HASH, "contract": True, "aabb": [[-0.6] * 3, [0.6] * 3]} if contract else HASH)
    p = Problem(load_scene(write(data, doc, f"grad-{contract}.json")), "cpu")
    rng = np.random.default_rng(1)
    table = p.ds.get("fields.nerf.table")
    p.ds.set("fields.nerf.table", rng.normal(0.0, 0.5, table.shape).astype(np.float32))
    indices = p.field_training.draw_batch()[:64]
    paths = ("fields.nerf.table", "fields.nerf.weights")
    _, grads = step_loss(p, indices, paths)
    checked = 0
    for path in paths:
        grad = grads[path]
        assert np.abs(grad).max() > 0, path
        arr = p.ds.arrays[path]
        flat = arr.numpy().reshape(-1)
        for idx in np.argsort(-np.abs(grad))[:3]:
            orig, eps = float(flat[idx]), 1e-2
            set_entry(arr, flat, idx, orig + eps)
            lp = step_loss(p, indices, paths)[0]
            set_entry(arr, flat, idx, orig - eps)
            lm = step_loss(p, indices, paths)[0]
            set_entry(arr, flat, idx, orig)
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - grad[idx]) <= 3e-2 * abs(grad[idx]) + 2e-5, (path, idx, fd, grad[idx])
            checked += 1
    assert checked == 6


def test_gradient_scaling_reaches_the_hash_field(data):
    """`gradient_scaling` on a hash-grid field: the same loss, and gradients that a distance below every sample's
    leaves unchanged and one far beyond them shrinks (every sample's factor (r / distance)^2 < 0.01; the exact
    factors are tested on the op in tests/test_neural_field.py)."""
    out = {}
    for name, distance in (("plain", 0.0), ("near", 1e-3), ("far", 100.0)):
        p = Problem(load_scene(write(data, scene_doc({**HASH, "gradient_scaling": distance}), f"gs-{name}.json")),
                    "cpu")
        indices = p.field_training.draw_batch()[:64]
        out[name] = step_loss(p, indices, ("fields.nerf.weights",))
    assert out["near"][0] == out["plain"][0] == out["far"][0]
    plain, near, far = (np.abs(out[k][1]["fields.nerf.weights"]).sum() for k in ("plain", "near", "far"))
    assert near == plain > 0
    assert 0 < far < 0.01 * plain, (far, plain)


def test_scene_adam_eps_reaches_the_optimizer(data):
    doc = scene_doc()
    doc["optimize"]["optimizer"]["eps"] = 1e-15
    assert Problem(load_scene(write(data, doc, "eps.json")), "cpu").optimizer.eps == 1e-15


def test_contracted_field_renders_the_contraction_of_world_points(data):
    """`contract: true`: the field's box is the inner box given, doubled (the encoding's box too), and a read-out
    pixel equals an independent expectation: the ray's sample points t from the march, the world points o + t d
    contracted by the NumPy reference (`march.contract_points`), the module queried there, composited in float64
    NumPy (1 - exp(-sigma delta), transmittance products, background)."""
    from drstudio.renderer.volume import readout
    from drstudio.renderer.volume.march import contract_far, contract_points, lattice_box, sample_rays

    inner = [[-0.6, -0.5, -0.4], [0.6, 0.5, 0.4]]
    p = Problem(load_scene(write(data, scene_doc({**HASH, "contract": True, "aabb": inner}), "contract.json")), "cpu")
    state = p.field_training.states["nerf"]
    box = np.array([-1.2, -1.0, -0.8, 1.2, 1.0, 0.8], np.float32)
    np.testing.assert_array_equal(state.field.aabb, box)
    np.testing.assert_array_equal(lattice_box(np.ravel(inner), True), box)
    np.testing.assert_array_equal(lattice_box(np.ravel(inner), False), np.ravel(inner).astype(np.float32))
    np.testing.assert_allclose(np.ravel(state.module.encoding.aabb), box, rtol=1e-6)
    rng = np.random.default_rng(3)
    p.ds.set("fields.nerf.table", rng.normal(0.0, 0.5, p.ds.get("fields.nerf.table").shape).astype(np.float32))
    cam = p.scene.cameras[p.test_targets[0].camera]
    o_all, d_all = readout.camera_rays(cam.intrinsics, cam.pose, cam.width, cam.height, "cpu")
    pick = [0, 37, 120, 255]
    o = wp.array(o_all.numpy()[pick], dtype=wp.vec3)
    d = wp.array(d_all.numpy()[pick], dtype=wp.vec3)
    bg = p.ds.background_color
    got = state.render_rays_readout(o, d, bg)
    s = sample_rays(o, d, tuple(box), state.n_samples, jitter=False, contract=True, far=contract_far(box))
    t = s.t_points.numpy()
    ray = s.ray_indices.numpy()
    world = o.numpy()[ray] + t[:, None] * d.numpy()[ray]
    import torch

    with torch.no_grad():
        pts = torch.from_numpy(contract_points(world, box).astype(np.float32))
        dirs = torch.from_numpy(s.directions.numpy())
        density, color = state._field(state._tensor("table", False), state._tensor("weights", False), pts, dirs)
    sigma, rgb, deltas = density.numpy().astype(np.float64), color.numpy().astype(np.float64), s.deltas.numpy()
    for r in range(len(pick)):
        k = ray == r
        alpha = 1.0 - np.exp(-sigma[k] * deltas[k])
        trans = np.concatenate([[1.0], np.cumprod(1.0 - alpha)[:-1]])
        want = (trans * alpha) @ rgb[k] + np.prod(1.0 - alpha) * bg.numpy()
        np.testing.assert_allclose(got[r], want, atol=2e-3)
    # field_NAME.npz says the baked lattice holds contracted space (drstudio export maps it back to the world)
    exported = state.export()
    assert bool(exported["contract"]) and exported["density"].shape == (33, 33, 33)
    np.testing.assert_array_equal(exported["aabb"], box)


# ---- training, evaluation, recording --------------------------------------------------------------

def test_training_raises_the_held_out_psnr(data):
    """60 steps of 512 rays on the tiny globe: the full held-out PSNR (every pixel) rises by more than 4 dB
    (measured: 11.25 -> 21.83 dB); the sampled evaluation with enough rays for every pixel is the
    full one."""
    doc = scene_doc(steps=60, rays=512, eval_every=0)
    doc["optimize"]["eval_rays"] = 256  # every pixel of a 16x16 view
    p = Problem(load_scene(write(data, doc, "train.json")), "cpu")
    ft = p.field_training
    before = ft.test_psnr()
    for _ in range(60):
        assert p.step().applied
    after = ft.test_psnr()
    print(f"held-out PSNR {before:.2f} -> {after:.2f} dB")
    assert after > before + 4.0, (before, after)
    assert ft.test_psnr(sampled=True) == pytest.approx(after, abs=1e-4)
    # the viewer's preview: the published copy renders what the problem renders
    cam = p.scene.cameras[p.test_targets[0].camera]
    img = p.model.publish().render(cam.pose, cam.intrinsics, cam.width, cam.height)
    np.testing.assert_allclose(img, p.render_image(cam.name), atol=1e-6)
    assert ft.occupancy() is None


def test_sampled_evaluation_draws_fixed_pixels_per_view(data):
    doc = scene_doc(dict(HASH, occupancy={"resolution": 8, "update_every": 4}))
    doc["optimize"]["eval_rays"] = 40
    p = Problem(load_scene(write(data, doc, "sampled.json")), "cpu")
    ft = p.field_training
    cams = [t.camera for t in p.test_targets]
    pixels = {c: ft.eval_pixels(c) for c in cams}
    assert all(v.shape == (40,) and len(set(v.tolist())) == 40 and v.max() < 256 for v in pixels.values())
    assert not np.array_equal(pixels[cams[0]], pixels[cams[1]])
    again = Problem(load_scene(write(data, doc, "sampled.json")), "cpu").field_training
    np.testing.assert_array_equal(again.eval_pixels(cams[0]), pixels[cams[0]])  # the same in every run
    # the sampled PSNR is the PSNR of the full render at those pixels (an independent read of the same image)
    for _ in range(5):
        p.step()
    t = p.test_targets[0]
    full = p.render_image(t.camera).reshape(-1, 3)[pixels[t.camera]]
    ref = t.image.numpy()[pixels[t.camera]]
    want = 10 * np.log10(1 / np.mean((full.astype(np.float64) - ref) ** 2))
    assert ft.psnr_by_view([t], sampled=True)[t.camera] == pytest.approx(want, abs=1e-4)


def test_optimize_records_resumes_verifies_exports_and_renders(data, tmp_path):
    doc = scene_doc(dict(HASH, occupancy={"resolution": 8, "update_every": 4}), steps=8, rays=128, eval_every=4)
    scene = write(data, doc, "run.json")
    out = tmp_path / "run"
    assert cli.main(["optimize", str(scene), "--out", str(out), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["final_eval"] == "sampled" and metrics["eval_rays_per_view"] == 1024
    assert len(metrics["psnr_test_by_view_db"]) == 3 and metrics["eval_seconds"] > 0
    assert PSNR_TERM not in metrics["loss_terms"]  # one held-out PSNR: the final evaluation's, not a stale term
    assert metrics["parameters"]["fields.nerf.table"]["shape"] == [4096, 2]
    assert sorted(f.name for f in (out / "views").iterdir()) == [f"{list(metrics['psnr_test_by_view_db'])[0]}.png"]
    field = np.load(out / "field_nerf.npz")
    assert str(field["type"]) == "hash_grid" and field["table"].shape == (4096, 2)
    assert field["density"].ndim == 3 and np.isfinite(field["density"]).all()
    report = verify(load_recording(out / "recording"), rtol=0.0)  # CPU: bit for bit
    assert report.ok, report.message()
    # resume from the last keyframe (step 8): the continued steps verify too
    resumed = tmp_path / "resumed"
    assert cli.main(["optimize", "--resume", str(out / "recording"), "--steps", "12", "--out", str(resumed),
                     "--final-eval", "none"]) == 0
    m2 = json.loads((resumed / "metrics.json").read_text())
    assert m2["steps"] == 12 and m2["final_eval"] == "none" and "psnr_test_db" not in m2
    report = verify(load_recording(resumed / "recording"), rtol=0.0)
    assert report.ok, report.message()
    # export: a marching-cubes mesh and a point cloud of the field's density
    assert field["density"].shape == (33, 33, 33)  # the finest level's lattice
    level = float(field["density"].min() + field["density"].max()) / 2  # 8 steps: no surface at the default level
    assert cli.main(["export", str(out), "--out", str(tmp_path / "export"), "--level", str(level),
                     "--format", "ply"]) == 0
    import trimesh
    mesh = trimesh.load(tmp_path / "export" / "field_nerf.ply", process=False)
    assert len(mesh.faces) > 0 and (tmp_path / "export" / "field_nerf_points.ply").is_file()
    # drstudio render at a dataset camera with the trained values
    image = tmp_path / "frame.png"
    assert cli.main(["render", str(scene), "--params", str(out / "params.npz"), "--camera", "frame_002",
                     "-o", str(image)]) == 0
    assert image.is_file()


def test_full_final_evaluation_renders_every_view(data, tmp_path):
    out = tmp_path / "full"
    doc = scene_doc(steps=2, rays=64, eval_every=0)
    assert cli.main(["optimize", str(write(data, doc, "full.json")), "--out", str(out), "--no-record",
                     "--final-eval", "full"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final_eval"] == "full" and len(list((out / "views").iterdir())) == 16
    assert np.isfinite(metrics["psnr_test_db"]) and PSNR_TERM not in metrics["loss_terms"]


def test_shipped_hash_scene_runs_two_steps():
    scene = load_scene(ROOT / "scenes" / "nerf_hash.json")
    assert scene.fields["nerf"].type == "hash_grid"
    scene.optimize = scene.optimize.model_copy(update={"rays_per_batch": 32, "eval_every": 0})
    problem = Problem(scene, "cpu")
    assert len(problem.targets) == 56 and len(problem.test_targets) == 8
    for _ in range(2):
        assert problem.step().applied
