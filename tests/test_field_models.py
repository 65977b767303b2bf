"""The field representations beyond the voxel grid as scene elements (renderer.optim.field_models): "neural"
(NeRF MLP, PE/IPE), "nerf_w" (appearance embedding, transient + uncertainty) and "dynamic" (a TimeGrid).
Schema errors naming file and field, the flat-weights gradient against torch's, float64 gradchecks of the
new torch code, a float64 all-torch reference of NeRF-W's loss, central differences of the dynamic step,
training through `Problem` and `drstudio optimize` with a recording that verifies bit for bit, the viewer's
read-outs (`render_free`, `time_range`, `occupancy`), and NeRF-W on a tiny dataset with varying lighting
and occluders."""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import warp as wp
from drstudio.app import cli
from drstudio.renderer.datasets import Animation, DatasetOptions, generate_dataset
from drstudio.renderer.errors import SceneError
from drstudio.renderer.loading import load_scene, open_scene
from drstudio.renderer.optim import field_training
from drstudio.renderer.optim.field_models import TRANSIENT_TERM, per_sample_rows, tape_suspended
from drstudio.renderer.optim.field_training import PSNR_TERM
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.recording import load_recording, verify
from drstudio.renderer.stages.camera import generate_rays
from drstudio.renderer.thread_tape import active_tape
from drstudio.renderer.volume.march import sample_rays
from drstudio.renderer.volume.neural_field import FlatLayout, NerfWField, render_rays
from drstudio.renderer.volume.readout import camera_rays
from support.devices import torch_device
from support.gradcheck import set_entry

ROOT = Path(__file__).resolve().parents[1]
BOX = [[-1.05, -1.05, -1.05], [1.05, 1.05, 1.05]]
NEURAL = {"name": "nerf", "type": "neural", "aabb": BOX, "encoding": "ipe", "pos_freqs": 4, "dir_freqs": 1,
          "depth": 2, "width": 32, "samples_per_ray": 16, "density_scale": 10.0}
NERF_W = dict(NEURAL, type="nerf_w", appearance_dim=4, transient_dim=4, dir_freqs=0, use_view_dirs=False)
DYNAMIC = {"name": "nerf", "type": "dynamic", "resolution": 12, "n_times": 3, "aabb": BOX, "samples_per_ray": 24,
           "occupancy": {"resolution": 12, "update_every": 8}, "frames_per_batch": 2}
PARAMS = {"neural": {"fields.nerf.weights": {"lr": 0.01}},
          "nerf_w": {"fields.nerf.weights": {"lr": 0.01}, "fields.nerf.appearance": {"lr": 0.03},
                     "fields.nerf.transient": {"lr": 0.03}},
          "dynamic": {"fields.nerf.density": {"lr": 0.5}, "fields.nerf.sh": {"lr": 0.2}}}


def params_of(field: dict) -> dict:
    """optimize.parameters of a field entry (no appearance parameter when appearance_dim is 0)."""
    return {k: dict(v) for k, v in PARAMS[field["type"]].items()
            if k != "fields.nerf.appearance" or field.get("appearance_dim", 1)}


def scene_doc(field: dict, transforms: str = "data/transforms.json", steps: int = 20, rays: int = 256) -> dict:
    return {
        "version": 1,
        "cameras": [{"name": "preview", "width": 16, "height": 16, "fov_y": 40,
                     "look_at": {"eye": [0, 0.8, 3.5], "target": [0, 0, 0]}}],
        "background": [0.05, 0.05, 0.05],
        "fields": [dict(field)],
        "optimize": {"parameters": params_of(field), "targets": {"transforms": transforms},
                     "loss": {"l2": 1.0, "tv": 1e-5} if field["type"] == "dynamic" else {"l2": 1.0},
                     "optimizer": {"type": "adam", "lr": 0.01}, "steps": steps, "rays_per_batch": rays,
                     "eval_every": 10},
    }


def write(folder: Path, doc: dict, name: str = "scene.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    """Tiny datasets of the textured globe (16 views at 16x16, 3 held out): `plain`, `wild` (lighting
    variation 0.6, occluders in half the training views), `clean` (the same lighting, no occluders: the
    poses and lights of a seed do not depend on the occluders) and `anim` (3 times, --animate)."""
    folder = tmp_path_factory.mktemp("fields")
    globe = load_scene(ROOT / "scenes" / "texture.json")
    base = dict(views=16, test_views=3, width=16, height=16)
    for name, extra in (("plain", {}), ("wild", dict(lighting_variation=0.6, occluders=2)),
                        ("clean", dict(lighting_variation=0.6)), ("anim", dict(animate=Animation()))):
        # CPU: the data files are the tests' inputs, generated once for every device
        generate_dataset(globe, folder / name, DatasetOptions(**base, **extra), device="cpu")
    return folder


def problem_of(folder: Path, field: dict, data: str, device: str = "cpu", **kw) -> Problem:
    if field["type"] in ("neural", "nerf_w"):
        torch_device(device)  # a torch module: skips (naming why) where torch cannot run
    return Problem(load_scene(write(folder, scene_doc(field, f"{data}/transforms.json", **kw),
                                    f"{field['type']}_{data}.json")), device)


# ---- schema and loading ---------------------------------------------------------------------------

def setting(path: str, value):
    def edit(d):
        *keys, last = path.split("/")
        for k in keys:
            d = d[int(k)] if k.isdigit() else d[k]
        d[int(last) if last.isdigit() else last] = value
    return edit


ERRORS = [  # (id, field entry, data set, edit, field path, message)
    ("encoding", NEURAL, "plain", setting("fields/0/encoding", "hash"), "fields[0].encoding", "'pe' or 'ipe'"),
    ("depth", NEURAL, "plain", setting("fields/0/depth", 0), "fields[0].depth", "greater than or equal to 1"),
    ("width-float", NEURAL, "plain", setting("fields/0/width", 32.0), "fields[0].width", "integer"),
    ("neural-resolution", NEURAL, "plain", setting("fields/0/resolution", 16), "fields[0].resolution",
     "unknown field; allowed fields: name, aabb, encoding"),
    ("neural-tv", NEURAL, "plain", setting("optimize/loss", {"l2": 1.0, "tv": 1e-4}), "optimize.loss.tv",
     "total variation regularizes grids"),
    ("w-occupancy", NERF_W, "plain", setting("fields/0/occupancy", {"resolution": 16}), "fields[0].occupancy",
     "unknown field"),
    ("w-beta", NERF_W, "plain", setting("fields/0/beta_min", 0.0), "fields[0].beta_min", "greater than 0"),
    ("w-l1", NERF_W, "plain", setting("optimize/loss", {"l1": 1.0}), "optimize.loss.l1", "uncertainty-weighted"),
    ("w-unknown-param", NERF_W, "plain", setting("optimize/parameters", {"fields.nerf.apperance": {}}),
     'optimize.parameters["fields.nerf.apperance"]', "did you mean fields.nerf.appearance"),
    ("dyn-times", DYNAMIC, "anim", setting("fields/0/n_times", 1), "fields[0].n_times", "greater than or equal to 2"),
    ("dyn-range", DYNAMIC, "anim", setting("fields/0/time_range", [1.0, 0.0]), "fields[0].time_range",
     "t_start < t_end"),
    ("dyn-no-time", DYNAMIC, "plain", lambda d: None, "optimize.targets.transforms", "has no time"),
    ("dyn-out-of-range", DYNAMIC, "anim", setting("fields/0/time_range", [0.0, 0.5]), "optimize.targets.transforms",
     "time_range [0, 0.5]"),
    ("dyn-cameras", DYNAMIC, "anim", setting("optimize/targets", {"images": [{"camera": "preview", "file": "x.png"}]}),
     "optimize.targets", "must be a targets.transforms"),
]


@pytest.mark.parametrize("field, data, edit, where, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_entries_name_file_and_field(datasets, field, data, edit, where, message):
    doc = scene_doc(field, f"{data}/transforms.json")
    edit(doc)
    path = write(datasets, doc, "bad.json")
    with pytest.raises(SceneError) as info:
        load_scene(path)
    assert info.value.file == str(path) and info.value.field == where, str(info.value)
    assert message in info.value.message, str(info.value)


def test_missing_dataset_is_generated_from_the_recipe_or_named(tmp_path, capsys):
    import shutil
    shutil.copy(ROOT / "scenes" / "texture.json", tmp_path / "globe.json")
    shutil.copytree(ROOT / "scenes" / "assets", tmp_path / "assets")
    doc = scene_doc(NERF_W, "datasets/w/transforms.json")
    doc["optimize"]["targets"]["dataset"] = {"scene": "globe.json", "views": 8, "test_views": 2, "width": 16,
                                             "height": 16, "occluders": 2, "lighting_variation": 0.3}
    with pytest.raises(SceneError) as info:  # loading reads files and nothing else
        load_scene(write(tmp_path, doc))
    assert info.value.field == "optimize.targets.transforms" and "drstudio dataset" in str(info.value)
    assert not (tmp_path / "datasets").exists()
    scene = open_scene(write(tmp_path, doc))  # the explicit step the CLI and the viewer take
    err = capsys.readouterr().err
    assert (f"drstudio dataset {os.path.relpath(tmp_path / 'globe.json')} --out "
            f"{os.path.relpath(tmp_path / 'datasets' / 'w')} --views 8 --test-views 2 --width 16 --height 16 "
            "--lighting-variation 0.3 --occluders 2") in err, err
    frames = json.loads((tmp_path / "datasets" / "w" / "transforms.json").read_text())["frames"]
    assert len(frames) == 8 and scene.params()["fields.nerf.appearance"].shape == (6, 4)
    assert any(f["occluders"] for f in frames) and all("appearance" in f for f in frames)
    open_scene(write(tmp_path, doc))  # present now: nothing generated
    assert "generating" not in capsys.readouterr().err
    doc["optimize"]["targets"]["dataset"]["views"] = 0
    doc["optimize"]["targets"]["transforms"] = "datasets/v/transforms.json"
    with pytest.raises(SceneError) as info:  # the recipe is checked when it is used
        open_scene(write(tmp_path, doc))
    assert info.value.field == "optimize.targets.dataset.views"
    doc["optimize"]["targets"]["dataset"] = {"scene": "nope.json"}
    with pytest.raises(SceneError) as info:
        open_scene(write(tmp_path, doc))
    assert info.value.field == "optimize.targets.dataset.scene" and "not found" in info.value.message
    del doc["optimize"]["targets"]["dataset"]
    with pytest.raises(SceneError, match="drstudio dataset SCENE --out DIR"):
        load_scene(write(tmp_path, doc))
    doc["optimize"]["targets"] = {"cameras": ["preview"], "dataset": {"scene": "x.json"}}
    with pytest.raises(SceneError, match='"dataset" .* goes with "transforms"'):
        load_scene(write(tmp_path, doc))


def test_parameters_and_summary(datasets):
    scene = load_scene(write(datasets, scene_doc(NERF_W, "wild/transforms.json"), "w.json"))
    params = scene.params()
    n_train = 13
    appearance = params["fields.nerf.appearance"]
    assert appearance.shape == (n_train, 4) and appearance.kind == "embedding"
    assert params["fields.nerf.transient"].shape == (n_train, 4)
    weights = params["fields.nerf.weights"]
    assert weights.kind == "weights" and weights.value.dtype == np.float32 and weights.value.ndim == 1
    # the flat layout is the module's parameter order, and the seed makes the initialization
    module = NerfWField(np.ravel(BOX), appearance_dim=4, transient_dim=4, encoding="ipe", pos_freqs=4, dir_freqs=0,
                        depth=2, width=32, density_scale=10.0, use_view_dirs=False)
    layout = FlatLayout(module)
    assert layout.size == weights.value.size
    again = load_scene(write(datasets, scene_doc(NERF_W, "wild/transforms.json"), "w2.json"))
    np.testing.assert_array_equal(again.params()["fields.nerf.weights"].value, weights.value)
    other = scene_doc(dict(NERF_W, seed=1), "wild/transforms.json")
    assert not np.array_equal(load_scene(write(datasets, other, "w3.json")).params()["fields.nerf.weights"].value,
                              weights.value)
    dyn = load_scene(write(datasets, scene_doc(DYNAMIC, "anim/transforms.json"), "d.json")).params()
    assert dyn["fields.nerf.density"].shape == (3, 12, 12, 12) and dyn["fields.nerf.sh"].shape == (36, 12, 12, 3)
    from drstudio.renderer.loading import summarize
    assert "nerf_w over" in summarize(scene) and "appearance 4, transient 4 per image (13 images)" in summarize(scene)


# ---- gradients ------------------------------------------------------------------------------------

# CPU only: the torch reference is built from host tensors (torch.from_numpy) next to the problem's
def test_flat_weight_gradient_equals_torch_gradient_of_the_module(datasets):
    """One step's gradient in the flat leaf `fields.nerf.weights` equals the gradient torch computes for the
    same module (its parameters loaded from the flat vector) rendered by `render_rays` on the same rays."""
    for encoding in ("pe", "ipe"):
        p = problem_of(datasets, dict(NEURAL, encoding=encoding), "plain")
        ft, state = p.field_training, p.field_training.state
        indices = ft.draw_batch()
        p.ds.zero_grad()
        terms = {"l2": wp.zeros(1, dtype=float, requires_grad=True)}
        ft.record_loss(indices, terms, p.weights, 0)
        flat_grad = p.ds.arrays["fields.nerf.weights"].grad.numpy().copy()
        module = copy.deepcopy(state.module).requires_grad_(True)
        flat = torch.from_numpy(p.ds.get("fields.nerf.weights"))
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(state.layout.views(flat)[name])
        o, d, target = ft.bank.gather(indices)
        views = ft.view_ids(indices)
        rgb, _, _ = render_rays(module, o, d, torch.from_numpy(ft.view_radius[views]), module.aabb, 16,
                                wp.to_torch(p.ds.background_color).clone(), seed=0)
        loss = ((rgb - wp.to_torch(target)) ** 2).mean()
        loss.backward()
        reference = torch.cat([q.grad.reshape(-1) for q in module.parameters()]).numpy()
        assert float(terms["l2"].numpy()[0]) == pytest.approx(loss.item(), rel=1e-6)
        assert np.abs(reference).max() > 0
        np.testing.assert_allclose(flat_grad, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())


def test_nerf_w_module_and_embedding_gather_pass_gradcheck_in_float64():
    torch.manual_seed(0)
    module = NerfWField((-1, -1, -1, 1, 1, 1), appearance_dim=3, transient_dim=2, encoding="pe", pos_freqs=2,
                        dir_freqs=1, depth=2, width=8).double()
    feats = torch.randn(5, module.trunk[0].in_features, dtype=torch.float64, requires_grad=True)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=-1)
    app = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    tr = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, a, t: module(f, dirs, a, t), (feats, app, tr))
    assert len(module(feats, dirs, app)) == 2 and len(module(feats, dirs, app, tr)) == 5
    # the deterministic per-image -> per-sample gather: values and gradients
    table = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    view_ids = np.array([2, 0, 2, 3])
    ray = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    out = per_sample_rows(table, view_ids, ray, 4)
    torch.testing.assert_close(out, table[torch.from_numpy(view_ids)[ray]])
    assert torch.autograd.gradcheck(lambda t: per_sample_rows(t, view_ids, ray, 4), (table,))


def reference_composite(density, color, samples, background):
    """Pure torch compositing (rays padded to (N, K), T = exclusive cumprod of 1 - alpha), no early termination."""
    offs, cnts = wp.to_torch(samples.ray_offsets).long(), wp.to_torch(samples.ray_counts).long()
    n, k = offs.shape[0], max(int(cnts.max()), 1)
    slot = torch.arange(k)
    valid = slot[None, :] < cnts[:, None]
    idx = torch.where(valid, offs[:, None] + slot[None, :], torch.zeros_like(slot)[None, :])
    delta = wp.to_torch(samples.deltas).to(density.dtype)[idx] * valid
    alpha = 1.0 - torch.exp(-density[idx] * valid * delta)
    trans = torch.cumprod(torch.cat([torch.ones(n, 1, dtype=density.dtype), 1.0 - alpha[:, :-1]], 1), 1)
    w = trans * alpha
    opacity = w.sum(1)
    return (w[..., None] * color[idx]).sum(1) + (1.0 - opacity)[:, None] * background, opacity, None


def nerf_w_reference(state, weights, app, tr, o, d, radii, view_ids, target, background, step, beta_min):
    """NeRF-W's data term in float64 torch, composited by cumprod (no early termination), for the samples
    `sample_rays` gives with the step's seed: an independent expectation of `_nerf_w_loss`."""
    from drstudio.renderer.volume.neural_field import sample_inputs
    samples = sample_rays(o, d, state.aabb, state.n_samples, seed=step, jitter=True)
    feats, dirs = sample_inputs(state.module, samples, wp.to_torch(o).reshape(-1, 3), wp.to_torch(d).reshape(-1, 3),
                                torch.from_numpy(radii))
    module = copy.deepcopy(state.module).double()
    ray = wp.to_torch(samples.ray_indices).long()
    image = torch.from_numpy(view_ids)[ray]
    params = {k: v for k, v in state.layout.views(weights).items()}
    out = torch.func.functional_call(module, params, (feats.double(), dirs.double(), app[image], tr[image]))
    sd, sc, td, tc, beta = out
    dens = sd + td
    frac = td / dens
    color = sc * (1 - frac)[:, None] + tc * frac[:, None]
    rgb, _, _ = reference_composite(dens, color, samples, background.double())
    aux = torch.stack([frac * beta, frac, torch.zeros_like(frac)], -1)
    acc, _, _ = reference_composite(dens, aux, samples, torch.zeros(3, dtype=torch.float64))
    b = acc[:, 0] + beta_min
    data = (((rgb - target.double()) ** 2).sum(-1) / (2 * b * b) + torch.log(b / beta_min)).mean()
    return data, td.mean()


# CPU only: the float64 torch reference is built from host tensors (torch.from_numpy) next to the problem's
def test_nerf_w_loss_and_gradients_match_a_float64_torch_reference(datasets):
    p = problem_of(datasets, NERF_W, "wild")
    ft, state = p.field_training, p.field_training.state
    rng = np.random.default_rng(3)  # a trained-looking state: random embeddings
    p.ds.set("fields.nerf.appearance", rng.normal(0, 0.5, (13, 4)).astype(np.float32))
    p.ds.set("fields.nerf.transient", rng.normal(0, 0.5, (13, 4)).astype(np.float32))
    indices = ft.draw_batch()[:64]
    p.ds.zero_grad()
    terms = {"l2": wp.zeros(1, dtype=float, requires_grad=True)}
    ft.record_loss(indices, terms, p.weights, 5)
    o, d, target = ft.bank.gather(indices)
    views = ft.view_ids(indices)
    leaves = {k: torch.from_numpy(p.ds.get(f"fields.nerf.{k}")).double().requires_grad_(True)
              for k in ("weights", "appearance", "transient")}
    ref = nerf_w_reference(state, leaves["weights"], leaves["appearance"], leaves["transient"], o, d,
                           ft.view_radius[views], views, wp.to_torch(target), wp.to_torch(p.ds.background_color),
                           5, 0.1)
    data, transient = ref
    (data + 1.0 * transient).backward()  # lambda_u = 1 (the default)
    assert float(terms["l2"].numpy()[0]) == pytest.approx(data.item(), rel=2e-4)
    assert float(terms[TRANSIENT_TERM].numpy()[0]) == pytest.approx(transient.item(), rel=1e-4)
    for k, leaf in leaves.items():
        got, want = p.ds.arrays[f"fields.nerf.{k}"].grad.numpy(), leaf.grad.numpy()
        assert np.abs(want).max() > 0, k
        # float32 and Warp's early termination (min_transmittance 1e-4) against float64 without it
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3 * np.abs(want).max(), err_msg=k)


def step_loss(p: Problem, indices: np.ndarray, path: str) -> tuple[float, np.ndarray]:
    """(total loss, gradient of `path`, flat) of a step on `indices` (the problem's step index fixes the
    jitter)."""
    p.ds.zero_grad()
    tape = wp.Tape()
    with tape:
        total, _, _ = p._record_loss(indices)
    tape.backward(total)
    value, grad = float(total.numpy()[0]), p.ds.arrays[path].grad.numpy().reshape(-1).copy()
    tape.reset()
    return value, grad


def test_dynamic_step_gradient_matches_central_differences(datasets, device):
    """The gradient a dynamic field's step leaves in `fields.nerf.density` / `.sh` (blends per time, render,
    l2 shares, spatial + temporal TV) against central differences of the step's loss."""
    p = problem_of(datasets, DYNAMIC, "anim", device)
    rng = np.random.default_rng(0)
    p.ds.set("fields.nerf.density", rng.normal(0.5, 1.0, p.ds.get("fields.nerf.density").shape).astype(np.float32))
    p.ds.set("fields.nerf.sh", rng.normal(0.0, 0.5, p.ds.get("fields.nerf.sh").shape).astype(np.float32))
    p.weights["tv"] = 1e-3
    indices = p.field_training.draw_batch()[:96]
    for path in ("fields.nerf.density", "fields.nerf.sh"):
        _, grad = step_loss(p, indices, path)
        arr = p.ds.arrays[path]
        flat = arr.numpy().reshape(-1)  # a view on the CPU, a copy on CUDA (set_entry writes back)
        for idx in np.argsort(-np.abs(grad))[:4]:
            orig, eps = float(flat[idx]), 1e-2
            set_entry(arr, flat, idx, orig + eps)
            lp = step_loss(p, indices, path)[0]
            set_entry(arr, flat, idx, orig - eps)
            lm = step_loss(p, indices, path)[0]
            set_entry(arr, flat, idx, orig)
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - grad[idx]) <= 3e-2 * abs(grad[idx]) + 1e-6, (path, idx, fd, grad[idx])


# ---- training, read-outs, recording ---------------------------------------------------------------

@pytest.mark.parametrize("field, data", [(dict(NEURAL, encoding="pe"), "plain"), (NEURAL, "plain"),
                                         (NERF_W, "wild"), (DYNAMIC, "anim")],
                         ids=["neural-pe", "neural-ipe", "nerf_w", "dynamic"])
def test_each_representation_trains_through_problem(datasets, field, data, device):
    p = problem_of(datasets, field, data, device, steps=40)
    losses = [p.step() for _ in range(40)]
    assert all(r.applied for r in losses)
    first, last = np.mean([r.loss for r in losses[:5]]), np.mean([r.loss for r in losses[-5:]])
    assert last < 0.7 * first, (first, last)
    assert np.isfinite(losses[-1].loss_terms[PSNR_TERM])
    if field["type"] == "nerf_w":
        assert TRANSIENT_TERM in losses[-1].loss_terms
    # reset restores the starting values and the optimizer
    p.reset()
    first = next(iter(params_of(field)))
    np.testing.assert_array_equal(p.ds.get(first), p.initial[first])


def test_viewer_read_outs_for_every_representation(datasets, device):
    occupancy = {"resolution": 8, "update_every": 4}
    for field, data in ((dict(NEURAL, occupancy=occupancy), "plain"), (NERF_W, "wild"), (DYNAMIC, "anim")):
        p = problem_of(datasets, field, data, device)
        for _ in range(9):
            p.step()
        ft = p.field_training
        cam = p.scene.cameras[p.test_targets[0].camera]
        kwargs = {"time": ft.view_time[cam.name]} if field["type"] == "dynamic" else {}
        img = ft.render_free(cam.pose, cam.intrinsics, cam.width, cam.height, **kwargs)
        assert img.shape == (16, 16, 3) and img.dtype == np.float32
        if field["type"] != "nerf_w":  # the problem's render of the view is the same read-out
            np.testing.assert_allclose(img, p.render_image(cam.name), atol=1e-6)
        assert ft.time_range() == ((0.0, 1.0) if field["type"] == "dynamic" else None)
        occ = ft.occupancy()
        if field["type"] == "nerf_w":
            assert occ is None
            a = ft.render_free(cam.pose, cam.intrinsics, 8, 8, appearance=np.zeros(4))
            b = ft.render_free(cam.pose, cam.intrinsics, 8, 8, appearance=np.full(4, 3.0))
            assert np.abs(a - b).max() > 0
            with pytest.raises(ValueError, match="appearance: expected an embedding of 4 numbers"):
                ft.render_free(cam.pose, cam.intrinsics, 8, 8, appearance=np.zeros(3))
        else:
            cells, box = occ
            assert cells.dtype == bool and cells.shape == ((8,) * 3 if field["type"] == "neural" else (12,) * 3)
            np.testing.assert_allclose(box, np.ravel(BOX), rtol=1e-6)
            assert cells.any()
        if field["type"] == "dynamic":
            t0 = ft.render_free(cam.pose, cam.intrinsics, 16, 16)
            t1 = ft.render_free(cam.pose, cam.intrinsics, 16, 16, time=1.0)
            assert np.abs(t0 - t1).max() > 0  # the slices differ after training on a moving globe


# CPU only: two trainings' losses compared bit for bit (CUDA atomics reorder the sums between runs)
def test_published_field_renders_while_the_optimizer_steps(datasets):
    """Another thread renders the published copy during steps (the optimizer's tape is active then): no
    crash, and the training is the one it would have been (the read-outs record nothing on its tape and
    read nothing of the live state). Every step publishes here (interval 0), so copies replace each other
    while the reader renders."""
    runs = []
    for concurrent in (False, True):  # occupancy updated every 2 steps, in place, while the viewer samples
        p = problem_of(datasets, dict(NEURAL, occupancy={"resolution": 8, "update_every": 2}), "plain")
        cam = p.scene.cameras["preview"]
        stop, count = threading.Event(), [0]

        def viewer(p=p, cam=cam, stop=stop, count=count):
            while not stop.is_set():
                p.model.published().render(cam.pose, cam.intrinsics, 12, 12)
                count[0] += 1

        th = threading.Thread(target=viewer) if concurrent else None
        if th:
            th.start()
        with mock.patch.object(field_training, "PUBLISH_INTERVAL", 0.0):
            losses = [p.step().loss for _ in range(8)]
        stop.set()
        if th:
            th.join()
            assert count[0] > 0
        runs.append(losses)
    assert runs[0] == runs[1]


# CPU only: the recording verifies bit for bit (rtol 0), which relies on the CPU's fixed summation order
def test_optimize_nerf_w_writes_results_and_a_recording_that_verifies_bit_for_bit(datasets, tmp_path):
    doc = scene_doc(NERF_W, "wild/transforms.json", steps=8, rays=128)
    doc["optimize"]["eval_every"] = 4
    out = tmp_path / "run"
    assert cli.main(["optimize", str(write(datasets, doc, "run_w.json")), "--out", str(out), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8 and len(metrics["psnr_test_by_view_db"]) == 3
    assert metrics["parameters"]["fields.nerf.appearance"]["shape"] == [13, 4]
    field = np.load(out / "field_nerf.npz")
    assert field["weights"].ndim == 1 and field["appearance"].shape == (13, 4) and str(field["type"]) == "nerf_w"
    assert json.loads(str(field["spec"]))["appearance_dim"] == 4
    assert list(field["layout_names"])[0].startswith("trunk.0")
    assert any(f.name.startswith("transient_") for f in out.iterdir())
    report = verify(load_recording(out / "recording"), rtol=0.0)  # torch on a fixed thread count: bit for bit
    assert report.ok, report.message()
    # `drstudio video` renders the trained field (the params.npz values, not the fresh initialization)
    scene = write(datasets, doc, "run_w.json")
    video = tmp_path / "orbit.mp4"
    assert cli.main(["video", str(scene), "--params", str(out / "params.npz"), "--frames", "3", "--size", "16x16",
                     "--out", str(video)]) == 0
    import imageio.v3 as iio
    from drstudio.app.camera_path import TrainedFieldFrames
    assert iio.imread(video).shape == (3, 16, 16, 3)
    trained = TrainedFieldFrames(load_scene(scene), "cpu", dict(np.load(out / "params.npz")))
    fresh = TrainedFieldFrames(load_scene(scene), "cpu")
    cam = load_scene(scene).cameras["preview"]
    a, b = (f.render(cam.pose, cam.intrinsics, 16, 16) for f in (trained, fresh))
    assert np.abs(a - b).max() > 1e-3


def test_video_of_a_dynamic_field_plays_its_time_range(datasets, tmp_path, device):
    """A dynamic field's video sweeps its time range: frames of the same pose at t=0 and t=1 differ."""
    from drstudio.app.camera_path import TrainedFieldFrames
    problem = problem_of(datasets, DYNAMIC, "anim", device, steps=30)
    for _ in range(30):
        problem.step()
    values = {p: problem.ds.get(p) for p in problem.param_specs}
    scene = write(datasets, scene_doc(DYNAMIC, "anim/transforms.json"), "video_dyn.json")
    frames = TrainedFieldFrames(load_scene(scene), device, values)
    assert frames.time_range() == (0.0, 1.0)
    cam = load_scene(scene).cameras["preview"]
    t0, t1 = (frames.render(cam.pose, cam.intrinsics, 16, 16, time=t) for t in (0.0, 1.0))
    assert np.abs(t0 - t1).max() > 1e-2  # the globe moved
    np.savez(tmp_path / "params.npz", **values)
    video = tmp_path / "dyn.mp4"
    assert cli.main(["video", str(scene), "--params", str(tmp_path / "params.npz"), "--frames", "2", "--size",
                     "16x16", "--out", str(video)]) == 0


# CPU only: reads the field's torch tensors with .numpy() (host memory)
def test_nerf_w_held_out_protocol_fits_the_left_half_and_scores_the_right(datasets):
    p = problem_of(datasets, NERF_W, "wild")
    for _ in range(10):
        p.step()
    ft = p.field_training
    cam = p.test_targets[0].camera
    mask = ft.eval_mask(cam).numpy().reshape(16, 16)
    assert mask[:, :8].sum() == 0 and mask[:, 8:].min() == 1
    assert ft.eval_mask(ft.train_cameras[0]) is None
    ft.test_psnr()
    fitted = ft.state.fitted_appearance[cam]
    assert fitted.shape == (4,) and not np.allclose(fitted, ft.state.mean_appearance().numpy())


# ---- NeRF-W on varying lighting and occluders -----------------------------------------------------

def test_nerf_w_embeddings_explain_lighting_and_the_transient_takes_the_occluders(datasets, device):
    """On the `wild` dataset (lighting intensity/tint per view, occluder cubes in half the training views),
    150 steps: (a) the static render with each view's own appearance embedding is closer to that view's
    occluder-free image (`clean`) than the render of the same training without appearance embeddings and
    than its own render with the mean embedding (measured: 14.49 vs 13.67 and 14.16 dB); (b) the transient
    share of the opacity is higher on occluder pixels (where `wild` and `clean` differ) than elsewhere
    (measured 0.141 vs 0.085)."""
    from drstudio.renderer.conventions import srgb_to_linear
    from drstudio.renderer.images import read_image
    wild = json.loads((datasets / "wild" / "transforms.json").read_text())["frames"]
    clean = json.loads((datasets / "clean" / "transforms.json").read_text())["frames"]
    mse, on, off = {}, [], []
    for dim in (4, 0):
        p = problem_of(datasets, dict(NERF_W, appearance_dim=dim), "wild", device, steps=150, rays=512)
        for _ in range(150):
            p.step()
        ft = p.field_training
        app = p.ds.get("fields.nerf.appearance") if dim else None
        for v, cam in enumerate(ft.train_cameras):
            i = int(cam.split("_")[1])
            c = p.scene.cameras[cam]
            ref = srgb_to_linear(read_image(datasets / "clean" / clean[i]["file_path"], channels=3))
            render = ft.render_free(c.pose, c.intrinsics, 16, 16, appearance=None if app is None else app[v])
            mse.setdefault(dim, []).append(np.mean((render - ref) ** 2))
            if dim:
                mse.setdefault("mean", []).append(np.mean((ft.render_free(c.pose, c.intrinsics, 16, 16) - ref) ** 2))
            if dim and wild[i]["occluders"]:
                img = srgb_to_linear(read_image(datasets / "wild" / wild[i]["file_path"], channels=3))
                occluder = np.abs(img - ref).max(-1) > 0.05
                _, share = ft.render_transient(cam)
                if occluder.any():
                    on.append(share[occluder].mean())
                    off.append(share[~occluder].mean())
    psnr = {k: -10 * np.log10(np.mean(v)) for k, v in mse.items()}
    assert psnr[4] > psnr[0] + 0.3 and psnr[4] > psnr["mean"], psnr
    assert np.mean(on) > 1.4 * np.mean(off), (np.mean(on), np.mean(off))


def test_tape_suspended_restores_the_active_tape(device):
    tape = wp.Tape()
    with tape:
        with tape_suspended():
            assert active_tape() is None
            inner = wp.Tape()
            with inner:
                pass
        assert active_tape() is tape
    o, d = camera_rays(np.array([8, 8, 4, 4], np.float32), np.array([0, 0, 3, 0, 0, 0, 1], np.float32), 8, 8, device)
    ro, rd = generate_rays(wp.array([8, 8, 4, 4], dtype=float), wp.array([0, 0, 3, 0, 0, 0, 1], dtype=float), 8, 8)
    np.testing.assert_array_equal(o.numpy(), ro.numpy())
    np.testing.assert_array_equal(d.numpy(), rd.numpy())


# ---- shipped scenes -------------------------------------------------------------------------------

def test_shipped_neural_scene_runs_two_steps(device):
    scene = load_scene(ROOT / "scenes" / "nerf_neural.json")
    assert scene.fields["nerf"].type == "neural" and scene.fields["nerf"].model.encoding == "ipe"
    scene.optimize = scene.optimize.model_copy(update={"rays_per_batch": 64, "eval_every": 0})
    torch_device(device)  # a torch module: skips (naming why) where torch cannot run
    problem = Problem(scene, device)
    assert len(problem.targets) == 56 and len(problem.test_targets) == 8
    for _ in range(2):
        assert problem.step().applied


@pytest.mark.parametrize("name", ["nerf_w", "nerf_dynamic"])
def test_shipped_dataset_scenes_generate_their_dataset_and_train(tmp_path, name, capsys, device):
    """A copy of the shipped scene (its recipe made small: 10 views of 16x16) next to a copy of texture.json and
    its assets, without the dataset: loading generates it, and the scene trains on it."""
    import shutil
    doc = json.loads((ROOT / "scenes" / f"{name}.json").read_text())
    doc["optimize"]["targets"]["dataset"].update(views=10, test_views=2, width=16, height=16)
    (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    shutil.copy(ROOT / "scenes" / "texture.json", tmp_path / "texture.json")
    shutil.copytree(ROOT / "scenes" / "assets", tmp_path / "assets")
    scene = open_scene(tmp_path / f"{name}.json")
    assert "its dataset is missing; generating it" in capsys.readouterr().err
    assert (tmp_path / "datasets" / name / "transforms.json").is_file()
    scene.optimize = scene.optimize.model_copy(update={"rays_per_batch": 64})
    if name == "nerf_w":
        torch_device(device)  # a torch module: skips (naming why) where torch cannot run
    problem = Problem(scene, device)
    assert len(problem.targets) == 8 and len(problem.test_targets) == 2
    for _ in range(2):
        assert problem.step().applied
