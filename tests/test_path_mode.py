"""The path-traced render mode through the scene API (issue 15): the schema accepts and refuses its fields
(exit 2 naming the field), a scene file renders what `pathtrace.render_path` renders from the same arrays,
the gradients of emission and environment texels through the parameter table match central differences
with shared random numbers, a short path-mode optimization lowers an albedo error, a path-mode recording
replays bit-exactly, the shipped Cornell box shows colour bleeding, and a white furnace holds.

Renders are small (16-32 pixels, a few spp) to stay quick on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import warp as wp
from drstudio.app import cli
from drstudio.renderer.conventions import linear_to_srgb
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.models import step_seed
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.params import Kind
from drstudio.renderer.render import PATH_RR_DEPTH, render, render_view
from drstudio.renderer.stages import pathtrace as pt
from support.gradcheck import check_gradient, weighted_loss

ROOT = Path(__file__).resolve().parents[1]
CORNELL = ROOT / "scenes" / "cornell_box.json"


def room(size: int = 16, spp: int = 4, max_depth: int = 3, env="sky.tif") -> dict:
    """A floor, a red wall and a white wall under a square emitter, in an environment (an image file name
    written by `write_env`, a constant, or None)."""
    doc = {
        "version": 1,
        "meshes": [
            {"name": "floor", "primitive": {"type": "plane", "size": 2.0}, "material": "white",
             "transform": {"translation": [0, -1, 0]}},
            {"name": "wall", "primitive": {"type": "plane", "size": 2.0}, "material": "red",
             "transform": {"translation": [-1, 0, 0], "rotation": {"euler_deg": [0, 0, -90]}}},
            {"name": "back", "primitive": {"type": "plane", "size": 2.0}, "material": "white",
             "transform": {"translation": [0, 0, -1], "rotation": {"euler_deg": [90, 0, 0]}}},
            {"name": "lamp", "primitive": {"type": "plane", "size": 0.8}, "material": "light",
             "transform": {"translation": [0, 0.9, -0.2], "rotation": {"euler_deg": [180, 0, 0]}}},
        ],
        "materials": [
            {"name": "white", "albedo": [0.7, 0.7, 0.7]},
            {"name": "red", "albedo": [0.6, 0.1, 0.1], "model": "ggx", "roughness": 0.4},
            {"name": "light", "albedo": [0, 0, 0], "emission": [6.0, 5.0, 4.0]},
        ],
        "cameras": [{"name": "main", "width": size, "height": size, "fov_y": 60,
                     "look_at": {"eye": [0.3, 0.1, 2.2], "target": [0, -0.2, 0]}}],
        "render": {"mode": "path", "spp": spp, "max_depth": max_depth, "seed": 5},
    }
    if env is not None:
        doc["lights"] = [{"name": "sky", "type": "environment", "radiance": env}]
    return doc


def write_env(folder: Path, name: str = "sky.tif") -> np.ndarray:
    """A 4x8 float32 equirectangular environment (a TIFF imageio reads as stored)."""
    rng = np.random.default_rng(1)
    env = (rng.random((4, 8, 3)) * 0.6 + 0.1).astype(np.float32)
    iio.imwrite(folder / name, env)
    return env


def write(folder: Path, doc: dict, name: str = "scene.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


# ---- schema ------------------------------------------------------------------------------------------

def test_schema_accepts_a_path_scene(tmp_path):
    env = write_env(tmp_path)
    scene = load_scene(write(tmp_path, room()))
    r = scene.render
    assert (r.mode, r.spp, r.max_depth, r.seed) == ("path", 4, 3, 5)
    np.testing.assert_array_equal(scene.environment_lights["sky"].radiance, env)  # float image as stored
    np.testing.assert_array_equal(scene.materials["light"].emission.reshape(3), [6, 5, 4])
    params = scene.params()
    assert params["materials.light.emission"].kind is Kind.EMISSION
    assert params["lights.sky.radiance"].kind is Kind.ENVIRONMENT and params["lights.sky.radiance"].shape == (4, 8, 3)
    # a constant environment is a 1x1 image, scaled; an 8-bit PNG is decoded from sRGB
    doc = room(env=[0.2, 0.4, 0.6])
    doc["lights"][0]["scale"] = 2.0
    np.testing.assert_allclose(load_scene(write(tmp_path, doc)).environment_lights["sky"].radiance.reshape(3),
                               [0.4, 0.8, 1.2], rtol=1e-6)
    iio.imwrite(tmp_path / "sky.png", np.full((2, 4, 3), 255, np.uint8))
    np.testing.assert_allclose(load_scene(write(tmp_path, room(env="sky.png"))).environment_lights["sky"].radiance,
                               1.0, rtol=1e-6)


def _bad(change):
    def mutate(doc):
        change(doc)
        return doc
    return mutate


def _put(path: str, value):
    def change(doc):
        parts = [int(p) if p.isdigit() else p for p in path.split(".")]
        d = doc
        for p in parts[:-1]:
            d = d[p]
        d[parts[-1]] = value
    return _bad(change)


REFUSED = [
    ("spp-zero", _put("render.spp", 0), "render.spp"),
    ("spp-float", _put("render.spp", 4.0), "render.spp"),
    ("depth-negative", _put("render.max_depth", -1), "render.max_depth"),
    ("seed-bool", _put("render.seed", True), "render.seed"),
    ("emission-negative", _put("materials.2.emission", [1, -1, 0]), "materials[2].emission"),
    ("emission-missing-file", _put("materials.2.emission", "nope.png"), "materials[2].emission"),
    ("env-negative", _put("lights.0.radiance", [0.1, -0.2, 0.1]), "lights[0].radiance"),
    ("env-hdr", _put("lights.0.radiance", "sky.hdr"), "lights[0].radiance"),
    ("env-not-image", _put("lights.0.radiance", "scene.json"), "lights[0].radiance"),
    ("env-in-hard-mode", _put("render.mode", "hard"), "lights[0].type"),
    ("two-envs", _bad(lambda d: d["lights"].append({"name": "sky2", "type": "environment",
                                                    "radiance": [1, 1, 1]})), "lights[1].type"),
    ("ambient-in-path", _bad(lambda d: d["lights"].append({"name": "amb", "type": "ambient",
                                                           "color": [1, 1, 1]})), "lights[1].type"),
    ("background-in-path", _put("background", [0.1, 0.1, 0.1]), "background"),
    ("free-vertices", _put("optimize", {"parameters": {"meshes.floor.vertices": {"init": 0.0}},
                                        "targets": {"cameras": ["main"]}, "steps": 2}),
     "optimize.parameters[\"meshes.floor.vertices\"]"),
    ("free-pose", _put("optimize", {"parameters": {"cameras.main.pose": {"init": [0, 0, 2, 0, 0, 0, 1]}},
                                    "targets": {"cameras": ["main"]}, "steps": 2}),
     "optimize.parameters[\"cameras.main.pose\"]"),
    ("target-spp-with-images", _put("optimize", {"parameters": {"materials.red.albedo": {"init": 0.5}},
                                                 "targets": {"images": [{"camera": "main", "file": "t.png"}],
                                                             "spp": 8}, "steps": 2}), "optimize.targets"),
]


@pytest.mark.parametrize("name,mutate,field", REFUSED, ids=[r[0] for r in REFUSED])
def test_schema_refuses_with_exit_2_naming_the_field(tmp_path, capsys, name, mutate, field):
    write_env(tmp_path)
    (tmp_path / "sky.hdr").write_bytes(b"#?RADIANCE\n")
    path = write(tmp_path, mutate(room()))
    assert cli.main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {field}" in err and "Traceback" not in err, err


def test_free_emission_and_environment_are_accepted(tmp_path):
    write_env(tmp_path)
    doc = room()
    doc["optimize"] = {"parameters": {"materials.light.emission": {"init": [3, 3, 3]},
                                      "lights.sky.radiance": {"init": 0.3},
                                      "materials.red.roughness": {"init": 0.6}},
                       "targets": {"cameras": ["main"], "spp": 8}, "steps": 2}
    scene = load_scene(write(tmp_path, doc))
    assert set(scene.optimize.parameters) == {"materials.light.emission", "lights.sky.radiance",
                                              "materials.red.roughness"}


# ---- forward -----------------------------------------------------------------------------------------

def _direct(scene, ds):
    """`render_path` on a PathScene built from the scene's NumPy values (not from the render mode's
    packing), with the render settings of the scene file."""
    frame = ds.prepare()
    materials = [dict(model=m.model, albedo=m.albedo, roughness=m.roughness, metallic=m.metallic,
                      emission=m.emission, wrap=m.wrap) for m in scene.materials.values()]
    env = next(iter(scene.environment_lights.values())).radiance if scene.environment_lights else None
    ps = pt.path_scene_from_numpy(frame.world.numpy(), ds.faces_np, materials, ds.face_material.numpy(),
                                  normals=frame.normals.numpy(), uvs=frame.uvs.numpy(), env=env,
                                  colors=frame.colors.numpy())
    c, r = scene.cameras["main"], scene.render
    img = pt.render_path(ps, wp.array(c.intrinsics, dtype=float), wp.array(c.pose, dtype=float), c.width, c.height,
                         spp=r.spp, seed=r.seed, max_depth=r.max_depth, rr_depth=PATH_RR_DEPTH)
    return img.numpy().reshape(c.height, c.width, 3)


def test_scene_file_render_matches_render_path(tmp_path, capsys):
    write_env(tmp_path)
    path = write(tmp_path, room(size=24, spp=4, max_depth=4))
    scene = load_scene(path)
    ds = DeviceScene(scene, "cpu")
    expected = _direct(scene, ds)
    got = render(ds).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got.mean() > 0.05 and np.isfinite(got).all()
    out = tmp_path / "out.png"
    assert cli.main(["render", str(path), "-o", str(out)]) == 0
    png = iio.imread(out).astype(np.float64) / 255
    assert np.abs(png[..., :3] - linear_to_srgb(np.clip(expected, 0, 1))).max() <= 1.01 / 255


def test_rasterized_mode_adds_emission(tmp_path):
    """In the rasterized modes an emissive surface shows its emission on top of its shaded color."""
    doc = room(env=None)
    doc["render"] = {"mode": "hard", "shadows": False}
    doc["lights"] = [{"name": "key", "type": "point", "position": [0, 2, 2], "intensity": 4.0}]
    scene = load_scene(write(tmp_path, doc))
    ds = DeviceScene(scene, "cpu")
    lit = render(ds)
    lamp_faces = _mesh_faces(scene, "lamp")
    tri = lit.tri_id.numpy()
    on_lamp = np.isin(tri, lamp_faces)
    assert on_lamp.any()
    img = lit.image.numpy()
    ds.set("materials.light.emission", np.zeros((1, 1, 3)))
    dark = render(ds).image.numpy()
    np.testing.assert_allclose(img[on_lamp] - dark[on_lamp], np.tile([6.0, 5.0, 4.0], (on_lamp.sum(), 1)),
                               rtol=1e-5)
    np.testing.assert_allclose(img[~on_lamp], dark[~on_lamp], atol=1e-6)


def _mesh_faces(scene, name: str) -> np.ndarray:
    start = 0
    for m in scene.meshes.values():
        if m.name == name:
            return np.arange(start, start + len(m.faces))
        start += len(m.faces)
    raise KeyError(name)


def test_white_furnace_through_the_scene_api(tmp_path):
    """An albedo-1 Lambert sphere in a uniform environment renders the environment value everywhere."""
    doc = {"version": 1,
           "meshes": [{"name": "ball", "primitive": {"type": "icosphere", "radius": 1.0, "subdivisions": 3},
                       "material": "white"}],
           "materials": [{"name": "white", "albedo": [1.0, 1.0, 1.0]}],
           "lights": [{"name": "sky", "type": "environment", "radiance": [0.7, 0.7, 0.7]}],
           "cameras": [{"name": "main", "width": 24, "height": 24, "fov_y": 40,
                        "look_at": {"eye": [0, 0, 4], "target": [0, 0, 0]}}],
           "render": {"mode": "path", "spp": 32, "max_depth": 6, "seed": 2}}
    out = render(DeviceScene(load_scene(write(tmp_path, doc)), "cpu"))
    img = out.image.numpy()
    # the sphere spans 8.5 pixels around the center (asin(1/4) at f = 12 / tan(20 deg)): away from its rim
    ys, xs = np.mgrid[0:24, 0:24] + 0.5
    r = np.hypot(xs - 12, ys - 12).reshape(-1)
    on, off = r < 7, r > 10
    assert (out.tri_id.numpy()[on] >= 0).all() and (out.tri_id.numpy()[off] < 0).all()
    np.testing.assert_allclose(img[off], 0.7, rtol=1e-6)  # the environment seen directly
    assert abs(img[on].mean() / 0.7 - 1) < 0.01  # the sphere: the environment, up to noise
    assert np.abs(img[on] - 0.7).max() < 0.25


def test_cornell_box_shows_colour_bleeding():
    """The back wall next to the red wall is redder with indirect light (max_depth 3) than with direct light
    only (max_depth 1): red over green rises on its left half."""
    scene = load_scene(CORNELL)
    scene.cameras["main"].width = scene.cameras["main"].height = 32
    scene.cameras["main"].intrinsics *= 32 / 48
    ds = DeviceScene(scene, "cpu")
    frame = ds.prepare()
    full = render_view(ds, frame, "main", spp=32, max_depth=3)
    direct = render_view(ds, frame, "main", spp=32, max_depth=1)
    tri = full.tri_id.numpy().reshape(32, 32)
    back = np.isin(tri, _mesh_faces(scene, "back"))
    left = back & (np.arange(32)[None, :] < 16)
    assert left.sum() > 40
    a, b = full.numpy()[left], direct.numpy()[left]
    redness_full = a[:, 0].mean() / a[:, 1].mean()
    redness_direct = b[:, 0].mean() / b[:, 1].mean()
    assert redness_full > redness_direct * 1.05, (redness_full, redness_direct)


# ---- gradients through the parameter table -----------------------------------------------------------

@pytest.fixture(scope="module")
def grad_scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pathgrad")
    write_env(folder)
    doc = room(size=12, spp=2, max_depth=3)
    scene = load_scene(write(folder, doc))
    return DeviceScene(scene, "cpu")


@pytest.mark.parametrize("path,eps,indices", [
    ("materials.light.emission", 0.05, [0, 1, 2]),
    ("lights.sky.radiance", 0.02, [3 * (1 * 8 + 2) + 0, 3 * (2 * 8 + 5) + 1, 3 * (0 * 8 + 0) + 2]),
    ("materials.white.albedo", 0.01, [0, 1, 2]),
])
def test_gradient_through_the_parameter_table(grad_scene, path, eps, indices):
    """d(weighted image)/d(parameter) from the path-mode tape (render_view -> render_path_backward -> pool
    -> leaf) against central differences with the same seed for +h and -h (shared random numbers: the
    sampled paths do not move). The image is linear in emission and environment texels (no truncation
    error) and a low-order polynomial in the albedo; tolerances as in tests/test_stage_pathtrace.py."""
    ds = grad_scene

    def forward():
        out = render_view(ds, ds.prepare(), "main", seed=11)
        return weighted_loss(out.image, seed=4)

    ds.zero_grad()
    check_gradient(forward, ds.arrays[path], eps=eps, rtol=1e-2, atol=2e-3, indices=indices)


@pytest.mark.parametrize("shadow_edges", [0, 8])
def test_gradients_reach_only_what_the_path_tracer_differentiates(grad_scene, shadow_edges):
    """Under one tape every material, environment and light leaf gets its gradient from the path tracer;
    camera leaves get none, geometry leaves only the visibility-boundary term of the direct light
    (renderer/stages/shadow_edges.py; none with render.shadow_edges = 0)."""
    ds = grad_scene
    ds.zero_grad()
    saved, ds.scene.render.shadow_edges = ds.scene.render.shadow_edges, shadow_edges
    try:
        tape = wp.Tape()
        with tape:
            loss = weighted_loss(render_view(ds, ds.prepare(), "main", seed=1).image, seed=2)
        tape.backward(loss)
    finally:
        ds.scene.render.shadow_edges = saved
    g = {p: np.abs(ds.arrays[p].grad.numpy()).sum() for p in ds.arrays}
    for p in ("materials.white.albedo", "materials.red.albedo", "materials.red.roughness",
              "materials.light.emission", "lights.sky.radiance"):
        assert g[p] > 0, p
    assert g["cameras.main.pose"] == 0
    for p in ("meshes.floor.vertices", "meshes.floor.translation"):
        assert (g[p] > 0) == (shadow_edges > 0), p
    tape.zero()
    ds.zero_grad()


# ---- optimization ------------------------------------------------------------------------------------

def optimize_doc(steps: int = 12) -> dict:
    doc = room(size=16, spp=2, max_depth=2, env=[0.3, 0.3, 0.3])
    doc["optimize"] = {"parameters": {"materials.white.albedo": {"init": [0.3, 0.3, 0.3]}},
                       "targets": {"cameras": ["main"], "spp": 16},
                       "optimizer": {"type": "adam", "lr": 0.05}, "loss": {"l2": 1.0}, "steps": steps, "seed": 0}
    return doc


def test_short_path_optimization_reduces_the_albedo_error(tmp_path):
    problem = Problem(load_scene(write(tmp_path, optimize_doc())), "cpu")
    assert problem.noisy_loss
    before = problem.parameter_errors()["materials.white.albedo"]
    losses = [problem.step().loss for _ in range(12)]
    after = problem.parameter_errors()["materials.white.albedo"]
    assert np.isfinite(losses).all()
    assert after < 0.5 * before, (before, after)


def test_each_step_uses_its_own_seed(tmp_path):
    """Steps k and k' render with seeds render.seed + k and render.seed + k': the same values give different
    noisy images at different steps, and the step's image is the render with that seed."""
    scene = load_scene(write(tmp_path, optimize_doc()))
    assert [step_seed(scene, k) for k in range(3)] == [5, 6, 7]
    problem = Problem(scene, "cpu")
    problem.free = {p: False for p in problem.free}  # nothing changes: only the random numbers differ
    problem.step()
    first = problem._last_grad_images["main"].copy()
    problem.step()
    second = problem._last_grad_images["main"]
    assert not np.array_equal(first, second)


def test_replay_verify_of_a_path_recording_is_bit_exact(tmp_path):
    from drstudio.renderer.recording import load_recording, verify
    from test_recording import record_session

    scene = write(tmp_path, optimize_doc(steps=8))
    record_session(tmp_path / "rec", scene, steps=6, edits=())
    rec = load_recording(tmp_path / "rec")
    meta = json.loads((tmp_path / "rec" / "meta.json").read_text())
    assert "render.seed + step" in meta["problem"]["render_seeds"]["step_seed"]
    report = verify(rec, rtol=0.0)
    assert report.ok and report.steps_checked == 6, report.message()
    assert report.max_rel_error == 0.0


def test_unchanged_tables_are_not_rebuilt(grad_scene):
    """The emitter and environment sampling tables are rebuilt only when emission, geometry or the
    environment changed."""
    ds = grad_scene
    render_view(ds, ds.prepare(), "main")
    tables = ds.path_tables
    cdf, marg = tables["light_cdf"], tables["env_marginal"]
    render_view(ds, ds.prepare(), "main")
    assert ds.path_tables["light_cdf"] is cdf and ds.path_tables["env_marginal"] is marg
    old = ds.get("lights.sky.radiance")
    ds.set("lights.sky.radiance", old * 2)
    render_view(ds, ds.prepare(), "main")
    assert ds.path_tables["env_marginal"] is not marg and ds.path_tables["light_cdf"] is cdf
    ds.set("lights.sky.radiance", old)


def test_cornell_box_renders_and_runs_from_the_cli(tmp_path, capsys):
    image = tmp_path / "cornell.png"
    assert cli.main(["render", str(CORNELL), "-o", str(image)]) == 0
    img = iio.imread(image)
    assert img.shape[:2] == (48, 48) and img[..., 0].mean() > 20
    doc = json.loads(CORNELL.read_text())  # a smaller copy: 16x16 and 8-spp targets
    cam = doc["cameras"][0]
    cam["width"] = cam["height"] = 16
    doc["optimize"]["targets"]["spp"] = 8
    out = tmp_path / "run"
    assert cli.main(["run", str(write(tmp_path, doc)), "--headless", "--steps", "2", "--out", str(out)]) == 0
    assert "render: mode path, 4 spp, max depth 3, seed 0" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and "noisy" in metrics["final_loss_note"]
    assert metrics["parameters"]["materials.light.emission"]["max_rel_error"] > 0


def test_save_scene_as_keeps_emission_and_environment_edits(tmp_path):
    """File > Save scene as: an edited emission constant and an edited environment image round-trip (the
    image as a float TIFF beside the scene, values exact)."""
    from drstudio.app.viewer.save_scene import save_scene_as

    write_env(tmp_path)
    scene = load_scene(write(tmp_path, room()))
    ds = DeviceScene(scene, "cpu")
    values = {p: ds.get(p) for p in ds.arrays}
    values["materials.light.emission"] = np.array([[[7.5, 2.0, 0.25]]], np.float32)
    env = values["lights.sky.radiance"].copy()
    env[1, 3] = [5.0, 0.0, 12.5]
    values["lights.sky.radiance"] = env
    out = tmp_path / "saved" / "edited.json"
    out.parent.mkdir()
    files = save_scene_as(scene, values, out, None)
    assert sorted(f.name for f in files) == ["edited.json", "edited.sky.radiance.tif"]
    loaded = load_scene(out)
    np.testing.assert_array_equal(loaded.materials["light"].emission, values["materials.light.emission"])
    np.testing.assert_array_equal(loaded.environment_lights["sky"].radiance, env)


def test_torch_op_in_path_mode_matches_the_tape(grad_scene):
    """render_torch on a path-mode scene: the same image as render_view with the same seed, and the
    gradient of a weighted sum w.r.t. the emission equals the tape's."""
    import torch
    from drstudio.renderer.torch import render_torch

    ds = grad_scene
    path = "materials.light.emission"
    emission = torch.tensor(ds.get(path), requires_grad=True)
    img = render_torch(ds, "main", {path: emission}, seed=9)
    w = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, tuple(img.shape)).astype(np.float32))
    (img * w).sum().backward()
    ds.zero_grad()
    tape = wp.Tape()
    with tape:
        out = render_view(ds, ds.prepare(), "main", seed=9)
    np.testing.assert_allclose(img.detach().numpy().reshape(-1, 3), out.image.numpy(), rtol=1e-6, atol=1e-7)
    tape.backward(grads={out.image: wp.array(w.numpy().reshape(-1, 3), dtype=float)})
    np.testing.assert_allclose(emission.grad.numpy(), ds.arrays[path].grad.numpy(), rtol=1e-4, atol=1e-6)
    assert np.abs(emission.grad.numpy()).sum() > 0
    tape.zero()
    ds.zero_grad()


def test_viewer_opens_a_path_mode_scene(display, tmp_path):
    """The viewer runs a path-mode scene (a small copy of the Cornell box, with an environment light): the
    engine publishes a path-traced render and the viewer draws frames with it."""
    import time

    from drstudio.app.viewer import run_viewer

    doc = json.loads(CORNELL.read_text())
    doc["cameras"][0]["width"] = doc["cameras"][0]["height"] = 16
    doc["optimize"]["targets"]["spp"] = 8
    doc["lights"] = [{"name": "sky", "type": "environment", "radiance": [0.1, 0.1, 0.1]}]
    scene = write(tmp_path, doc)
    got: dict = {"frames": 0}
    t0 = time.monotonic()

    def on_frame(state):
        if time.monotonic() - t0 > 60:
            got["error"] = "no snapshot with a render in 60 s"
            state.quit = True
        if state.snapshot.render is None or state.gl is None or state.quit:
            return
        got["frames"] += 1
        if got["frames"] >= 3:
            got["render"] = np.array(state.snapshot.render)
            state.quit = True

    rc = run_viewer(str(scene), device="cpu", max_frames=5000, on_frame=on_frame, record_dir=None)
    assert rc == 0 and "render" in got, got.get("error")
    img = got["render"]
    assert img.shape == (16, 16, 3) and np.isfinite(img).all() and img.mean() > 0.05


def test_switching_to_and_from_path_mode(tmp_path):
    """SetRenderSetting("mode", ...) (the viewer's Render menu): a path scene without an environment light
    switches to a rasterized mode and back (targets re-rendered, steps taken in both); one with an
    environment light, or a scene the path mode cannot differentiate, is refused with a message."""
    from drstudio.renderer.optim import commands as C

    doc = optimize_doc()
    doc["lights"] = [{"name": "key", "type": "point", "position": [0, 0.5, 1.5], "intensity": 2.0}]
    problem = Problem(load_scene(write(tmp_path, doc)), "cpu")
    C.execute(C.SetRenderSetting("mode", "hard"), problem)
    assert problem.scene.render.mode == "hard"
    problem.step()
    C.execute(C.SetRenderSetting("mode", "path"), problem)
    assert problem.scene.render.mode == "path" and problem.noisy_loss
    problem.step()

    with_env = Problem(load_scene(write(tmp_path, optimize_doc(), "env.json")), "cpu")
    with pytest.raises(C.CommandError, match="environment light"):
        C.execute(C.SetRenderSetting("mode", "antialias"), with_env)
    assert with_env.scene.render.mode == "path"

    doc = optimize_doc()
    doc["render"] = {"mode": "antialias"}
    doc["lights"] = [{"name": "key", "type": "point", "position": [0, 0.5, 1.5]}]
    doc["optimize"]["parameters"] = {"meshes.floor.translation": {"init": [0, -0.9, 0]}}
    raster = Problem(load_scene(write(tmp_path, doc, "raster.json")), "cpu")
    with pytest.raises(C.CommandError, match="no gradient for meshes.floor.translation"):
        C.execute(C.SetRenderSetting("mode", "path"), raster)


@pytest.fixture(scope="module")
def lit_scene(tmp_path_factory):
    """The room lit by a point and a directional light only, arranged so that nothing casts a shadow edge
    (the emitter panel is gone, the red wall stands on the side the sun travels to)."""
    folder = tmp_path_factory.mktemp("pathlights")
    doc = room(size=12, spp=2, max_depth=2, env=None)
    doc["meshes"] = [m for m in doc["meshes"] if m["name"] != "lamp"]
    doc["meshes"][1]["transform"] = {"translation": [1, 0, 0], "rotation": {"euler_deg": [0, 0, 90]}}
    doc["lights"] = [{"name": "key", "type": "point", "position": [0.3, 0.2, 0.6], "color": [1.0, 0.8, 0.6],
                      "intensity": 2.0},
                     {"name": "sun", "type": "directional", "direction": [0.3, -1.0, -0.4], "intensity": 1.5}]
    return DeviceScene(load_scene(write(folder, doc)), "cpu")


@pytest.mark.parametrize("path,eps", [
    ("lights.key.color", 0.01), ("lights.key.intensity", 0.02), ("lights.key.position", 0.01),
    ("lights.sun.color", 0.01), ("lights.sun.intensity", 0.02), ("lights.sun.direction", 0.01),
    ("meshes.floor.colors", 0.01)])
def test_light_and_vertex_color_gradients_through_the_parameter_table(lit_scene, path, eps):
    """Light color, intensity, position and direction and vertex colors: the path-mode tape gradient at the
    table's leaves against central differences with shared random numbers. Without shadow edges the image
    is smooth in them (the path tracer does not differentiate visibility: a moving shadow edge would add a
    term the adjoint does not have)."""
    ds = lit_scene

    def forward():
        return weighted_loss(render_view(ds, ds.prepare(), "main", seed=7).image, seed=3)

    ds.zero_grad()
    n = ds.arrays[path].numpy().size
    check_gradient(forward, ds.arrays[path], eps=eps, rtol=1e-2, atol=2e-3, indices=list(range(min(n, 3))))


def test_rasterized_gradient_of_a_zero_emission(tmp_path):
    """A free emission that is zero still gets its gradient in a rasterized mode: d(sum w . image)/d(emission)
    is the sum of the weights over the pixels the emitter covers, when asked for (`emission_grad`, what the
    torch op and a free emission in the optimizer's cache do); without it a zero emission costs nothing."""
    doc = room(env=None)
    doc["render"] = {"mode": "hard", "shadows": False}
    doc["lights"] = [{"name": "key", "type": "point", "position": [0, 2, 2], "intensity": 4.0}]
    doc["materials"][2]["emission"] = [0, 0, 0]
    ds = DeviceScene(load_scene(write(tmp_path, doc)), "cpu")
    tape = wp.Tape()
    with tape:
        out = render_view(ds, ds.prepare(), "main", emission_grad=True)
        loss = weighted_loss(out.image, seed=1)
    tape.backward(loss)
    w = np.random.default_rng(1).uniform(-1, 1, (out.image.shape[0], 3)).astype(np.float32)
    lamp = np.isin(out.tri_id.numpy(), _mesh_faces(ds.scene, "lamp"))
    assert lamp.any()
    np.testing.assert_allclose(ds.arrays["materials.light.emission"].grad.numpy().reshape(3), w[lamp].sum(0),
                               rtol=1e-4, atol=1e-5)
    tape.zero()


@pytest.mark.parametrize("ext", [".hdr", ".exr"])
def test_environment_maps_in_hdr_and_exr(tmp_path, ext):
    """Issue 15: an environment map in Radiance .hdr or OpenEXR .exr loads through imageio (values as
    stored: .exr exactly, .hdr to its 8-bit shared-exponent precision), with its size read from the header
    before decoding; a header that claims a huge image is refused before any pixel is decoded."""
    import cv2  # the files are written with OpenCV itself, the independent writer
    from drstudio.renderer.assets import read_radiance_image
    from drstudio.renderer.errors import SceneError

    sky = (np.random.default_rng(0).random((16, 32, 3)) * 4).astype(np.float32)
    sky[2, 3] = [50.0, 40.0, 30.0]  # a sun, beyond any 8-bit range
    path = tmp_path / f"sky{ext}"
    assert cv2.imwrite(str(path), sky[..., ::-1].copy())  # OpenCV writes BGR
    got = read_radiance_image(path, "scene.json", "lights[0].radiance")
    assert got.shape == (16, 32, 3) and got.dtype == np.float32
    if ext == ".exr":
        np.testing.assert_array_equal(got, sky)
    else:  # RGBE: 8-bit mantissas sharing the pixel's exponent, so the error scales with its largest channel
        assert (np.abs(got - sky) <= sky.max(axis=2, keepdims=True) / 64).all()
        np.testing.assert_allclose(got[2, 3], sky[2, 3], rtol=0.01)
    if ext == ".hdr":  # a header claiming 100000 x 100000 with no pixels
        path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 100000 +X 100000\n")
    else:
        raw = bytearray(path.read_bytes())
        at = raw.index(b"dataWindow\0box2i\0") + len(b"dataWindow\0box2i\0") + 4
        raw[at:at + 16] = np.array([0, 0, 99999, 99999], "<i4").tobytes()
        path.write_bytes(bytes(raw))
    with pytest.raises(SceneError, match=r"lights\[0\]\.radiance.*100000x100000"):
        read_radiance_image(path, "scene.json", "lights[0].radiance")


def test_spp_and_max_depth_are_render_settings(tmp_path):
    """The Render menu's path settings are commands: spp and max_depth change the renders (a deeper path
    carries indirect light: the image brightens), are validated before anything changes, and undo."""
    from drstudio.renderer.optim import commands as C

    problem = Problem(load_scene(write(tmp_path, optimize_doc())), "cpu")
    cam = problem.views[0]
    C.execute(C.SetRenderSetting("max_depth", 1), problem)
    direct = problem.render_numpy(cam)
    assert problem.scene.render.max_depth == 1
    C.execute(C.SetRenderSetting("max_depth", 4), problem)
    C.execute(C.SetRenderSetting("spp", 8), problem)
    assert (problem.scene.render.max_depth, problem.scene.render.spp) == (4, 8)
    assert problem.render_numpy(cam).mean() > direct.mean() * 1.02
    for bad in (0, -1, 70000, 2.5, True, "8"):
        with pytest.raises(C.CommandError, match="render.spp"):
            C.SetRenderSetting("spp", bad)
    with pytest.raises(C.CommandError, match="render.max_depth"):
        C.SetRenderSetting("max_depth", 65)
    undo = C.SetRenderSetting("spp", 32).inverse(problem.scene)
    assert undo.args() == ["spp", 8]
    problem.step()
