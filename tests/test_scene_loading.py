"""Good scene files load into the expected `Scene`: shapes, dtypes, primitives, files, conventions,
parameter paths and initial values; every shipped scene loads; committed assets are up to date."""

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from drstudio.renderer import conventions as cv
from drstudio.renderer import primitives
from drstudio.renderer.initial_values import initial_value, scene_center, start_mesh
from drstudio.renderer.loading import load_scene, open_scene, summarize
from PIL import Image

from scenes import make_assets

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenes").glob("*.json"))


def base_scene() -> dict:
    return {
        "version": 1,
        "meshes": [{"name": "ball", "primitive": {"type": "sphere", "radius": 1.0, "resolution": 16},
                    "material": "paint"}],
        "materials": [{"name": "paint", "albedo": [0.5, 0.4, 0.3]}],
        "lights": [{"name": "key", "type": "point", "position": [1, 2, 3], "intensity": 5}],
        "cameras": [{"name": "main", "width": 32, "height": 24, "fov_y": 45,
                     "look_at": {"eye": [0, 0, 4], "target": [0, 0, 0]}}],
    }


def write(tmp_path: Path, data: dict, name: str = "scene.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# ---- primitives ---------------------------------------------------------------------------------

def ring_point(v):
    """Nearest point on the unit circle in y = 0 (the torus's core) of each vertex."""
    flat = v * [1, 0, 1]
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def vertex_normals(v, f):
    n = np.zeros_like(v, dtype=np.float64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # area-weighted
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


@pytest.mark.parametrize("build, outward", [
    (lambda: primitives.uv_sphere(1.0, 24), lambda v: v),
    (lambda: primitives.icosphere(1.0, 2), lambda v: v),
    (lambda: primitives.cube(2.0), lambda v: v),
    (lambda: primitives.plane(3.0), lambda v: np.tile([0, 1, 0], (len(v), 1))),
    (lambda: primitives.torus(1.0, 0.3, 24), lambda v: v - ring_point(v)),
], ids=["sphere", "icosphere", "cube", "plane", "torus"])
def test_primitives_have_valid_triangles_outward_normals_and_uvs(build, outward):
    v, f, uv = build()
    assert v.dtype == np.float32 and f.dtype == np.int32 and uv.dtype == np.float32
    assert f.ndim == 2 and f.shape[1] == 3 and f.min() >= 0 and f.max() < len(v)
    assert len(np.unique(f)) == len(v)  # every vertex is used
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    assert area.min() > 1e-8
    n = vertex_normals(v.astype(np.float64), f)
    assert np.all(np.isfinite(n))
    out = outward(v.astype(np.float64))
    d = np.sum(n * out, axis=1) / np.linalg.norm(out, axis=1)
    assert d.min() > 0.5  # smooth normals point outwards (seam/pole copies within half a segment)
    assert uv.shape == (len(v), 2) and uv.min() >= 0 and uv.max() <= 1


def test_cube_has_24_vertices_and_flat_faces():
    v, f, uv = primitives.cube(1.0)
    assert v.shape == (24, 3) and f.shape == (12, 3)
    n = vertex_normals(v.astype(np.float64), f)
    assert np.allclose(np.abs(n).max(axis=1), 1.0)  # axis-aligned: no averaging across creases
    assert np.allclose(np.abs(v), 0.5)


def test_uv_sphere_seam_is_duplicated_and_uvs_follow_the_convention():
    v, f, uv = primitives.uv_sphere(2.0, 16)
    assert np.allclose(np.linalg.norm(v, axis=1), 2.0, atol=1e-5)
    inner = (uv[:, 1] > 0) & (uv[:, 1] < 1)  # poles: one vertex per column, the unused extra dropped
    seam0, seam1 = v[inner & (uv[:, 0] == 0)], v[inner & (uv[:, 0] == 1)]
    assert len(seam0) == 7
    np.testing.assert_allclose(seam0, seam1, atol=1e-6)
    assert np.all(seam0[:, 2] <= 1e-6)  # the seam is at the back (-Z)
    top = v[uv[:, 1] == 0]
    np.testing.assert_allclose(top, np.tile([0, 2, 0], (len(top), 1)), atol=1e-6)  # v = 0 at the north pole
    front = v[np.argmin(np.linalg.norm(uv - [0.5, 0.5], axis=1))]
    np.testing.assert_allclose(front, [0, 0, 2], atol=1e-5)  # u = 0.5 faces +Z


# ---- good scenes --------------------------------------------------------------------------------

def test_minimal_scene_shapes_and_dtypes(tmp_path):
    scene = load_scene(write(tmp_path, base_scene()))
    ball = scene.meshes["ball"]
    assert ball.vertices.dtype == np.float32 and ball.faces.dtype == np.int32
    assert ball.uvs.shape == (len(ball.vertices), 2) and ball.colors.shape == ball.vertices.shape
    assert np.all(ball.colors == 1)
    np.testing.assert_array_equal(ball.rotation, [0, 0, 0, 1])
    np.testing.assert_array_equal(ball.scale, [1, 1, 1])
    mat = scene.materials["paint"]
    assert mat.model == "lambert" and mat.wrap == "wrap"
    assert mat.albedo.shape == (1, 1, 3)
    assert mat.roughness.shape == (1, 1, 1) and mat.metallic.shape == (1, 1, 1)
    np.testing.assert_allclose(mat.albedo.ravel(), [0.5, 0.4, 0.3])
    assert scene.point_lights["key"].intensity.shape == (1,)
    cam = scene.cameras["main"]
    assert cam.intrinsics.dtype == np.float32 and cam.pose.shape == (7,)
    np.testing.assert_allclose(cam.intrinsics, cv.fov_y_to_intrinsics(45, 32, 24), rtol=1e-6)
    assert scene.render.mode == "antialias" and scene.optimize is None
    assert scene.background.shape == (3,)


def test_parameter_paths(tmp_path):
    data = base_scene()
    data["lights"] += [{"name": "sun", "type": "directional", "direction": [0, -2, 0]},
                       {"name": "sky", "type": "ambient", "color": [0.1, 0.1, 0.1]}]
    scene = load_scene(write(tmp_path, data))
    params = scene.params()
    assert list(params) == [
        "meshes.ball.vertices", "meshes.ball.colors", "meshes.ball.uvs", "meshes.ball.translation",
        "meshes.ball.rotation", "meshes.ball.scale", "materials.paint.albedo", "materials.paint.roughness",
        "materials.paint.metallic", "materials.paint.emission", "lights.key.position", "lights.key.color",
        "lights.key.intensity", "lights.sun.direction", "lights.sun.color", "lights.sun.intensity", "lights.sky.color",
        "cameras.main.intrinsics", "cameras.main.pose"]
    np.testing.assert_allclose(scene.directional_lights["sun"].direction, [0, -1, 0])  # normalized
    assert params["cameras.main.pose"].shape == (7,)
    summary = summarize(scene)
    for path, p in params.items():
        assert path in summary and str(p.shape) in summary


def test_rotation_forms_agree(tmp_path):
    quats = []
    for rotation in ({"axis_angle": [0, 1, 0, 90]}, {"euler_deg": [0, 90, 0]},
                     {"quaternion": [0, 2 * np.sin(np.pi / 4), 0, 2 * np.cos(np.pi / 4)]}):
        data = base_scene()
        data["meshes"][0]["transform"] = {"translation": [1, 2, 3], "rotation": rotation, "scale": [1, 2, 3]}
        mesh = load_scene(write(tmp_path, data)).meshes["ball"]
        quats.append(mesh.rotation)
        np.testing.assert_array_equal(mesh.scale, [1, 2, 3])
    for q in quats[1:]:
        np.testing.assert_allclose(q, quats[0], atol=1e-6)


def test_camera_matrix_conventions(tmp_path):
    data = base_scene()
    data["cameras"] = [
        {"name": "a", "width": 64, "height": 48, "fx": 50, "fy": 60,
         "look_at": {"eye": [0, 0, 4], "target": [0, 0, 0]}},
        {"name": "b", "width": 64, "height": 48, "fov_y": 30, "cx": 30, "cy": 20,
         "matrix": [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 4], [0, 0, 0, 1]], "convention": "opencv"},
        {"name": "c", "width": 64, "height": 48, "fov_y": 30,
         "matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]},
    ]
    cams = load_scene(write(tmp_path, data)).cameras
    np.testing.assert_allclose(cams["a"].intrinsics, [50, 60, 32, 24])
    assert cams["b"].intrinsics[2:].tolist() == [30, 20]
    np.testing.assert_allclose(cams["a"].pose, cams["b"].pose, atol=1e-6)
    np.testing.assert_allclose(cams["b"].pose, cams["c"].pose, atol=1e-6)


def test_textures_are_decoded(tmp_path):
    rgb = np.zeros((4, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 188, 255  # sRGB 188/255 is linear ~0.5
    png(tmp_path / "albedo.png", rgb)
    rough = np.full((4, 8), 0, np.uint8)
    rough[:, 4:] = 128
    png(tmp_path / "rough.png", rough)
    Image.fromarray(np.full((2, 3), 65535, np.uint16)).save(tmp_path / "metal16.png")
    data = base_scene()
    data["materials"] = [{"name": "paint", "model": "ggx", "albedo": "albedo.png", "roughness": "rough.png",
                          "metallic": "metal16.png", "wrap": "clamp"}]
    mat = load_scene(write(tmp_path, data)).materials["paint"]
    assert mat.albedo.shape == (4, 8, 3) and mat.albedo.dtype == np.float32
    np.testing.assert_allclose(mat.albedo[0, 0], [cv.srgb_to_linear(188 / 255), 1, 0], rtol=1e-5)
    assert mat.roughness.shape == (4, 8, 1)
    assert mat.roughness[0, 0, 0] == pytest.approx(0.02)  # raised to the GGX minimum
    assert mat.roughness[0, 7, 0] == pytest.approx(128 / 255)  # linear, not sRGB-decoded
    assert mat.metallic.shape == (2, 3, 1) and np.allclose(mat.metallic, 1.0)
    assert mat.wrap == "clamp"


def test_background_image(tmp_path):
    png(tmp_path / "bg.png", np.full((24, 32, 3), 255, np.uint8))
    data = base_scene()
    data["background"] = "bg.png"
    bg = load_scene(write(tmp_path, data)).background
    assert bg.shape == (24, 32, 3) and np.allclose(bg, 1)


def test_mesh_files(tmp_path):
    (tmp_path / "quad.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"
                                       "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf 1/1 2/2 3/3 4/4\n")
    (tmp_path / "colored.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 1\n"
        "property list uchar int vertex_indices\nend_header\n"
        "0 0 0 255 0 0\n1 0 0 0 255 0\n1 1 0 0 0 188\n3 0 1 2\n")
    glb = trimesh.Scene()
    glb.add_geometry(trimesh.creation.box(), transform=trimesh.transformations.translation_matrix([5, 0, 0]))
    glb.add_geometry(trimesh.creation.icosphere(1))
    glb.export(tmp_path / "parts.glb")
    data = base_scene()
    data["meshes"] = [{"name": n, "file": f, "material": "paint"}
                      for n, f in (("quad", "quad.obj"), ("tri", "colored.ply"), ("parts", "parts.glb"))]
    scene = load_scene(write(tmp_path, data))
    quad, tri, parts = scene.meshes["quad"], scene.meshes["tri"], scene.meshes["parts"]
    assert quad.vertices.shape == (4, 3) and quad.faces.shape == (2, 3)  # triangulated
    np.testing.assert_allclose(quad.uvs[quad.vertices[:, 1] == 1][:, 1], 0)  # file v = 1 (top) -> our v = 0
    blue = cv.srgb_to_linear(188 / 255)
    np.testing.assert_allclose(tri.colors, [[1, 0, 0], [0, 1, 0], [0, 0, blue]], atol=1e-6)
    assert np.all(tri.uvs == 0)
    assert parts.vertices[:, 0].max() == pytest.approx(5.5)  # node transform applied
    assert parts.source == "parts.glb"


# ---- optimize and initial values ----------------------------------------------------------------

def optimize_scene(tmp_path, parameters: dict, **extra) -> Path:
    data = base_scene()
    data["cameras"].append({"name": "side", "width": 32, "height": 24, "fov_y": 45,
                            "look_at": {"eye": [4, 0, 0], "target": [0, 0, 0]}})
    data["optimize"] = {"parameters": parameters, "targets": {"cameras": ["main", "side"]}, "steps": 5,
                        **extra}
    return write(tmp_path, data)


def test_initial_values(tmp_path):
    scene = load_scene(optimize_scene(tmp_path, {
        "materials.paint.albedo": {"init": 0.25},
        "lights.key.position": {"init": {"perturb": {"sigma": 0.1, "seed": 4}}, "lr": 0.1},
        "lights.key.color": {"init": [0.5, 0.5, 0.5]},
        "cameras.side.pose": {"init": {"perturb_pose": {"degrees": 5, "translation": 0.1}}},
        "meshes.ball.rotation": {"init": {"perturb": {"sigma": 0.2}}},
    }, seed=11, batch_views=2))
    opt = scene.optimize
    assert opt.steps == 5 and opt.batch_views == 2 and opt.seed == 11 and opt.loss.l2 == 1.0
    assert opt.optimizer.type == "adam" and opt.parameters["lights.key.position"].lr == 0.1
    albedo = initial_value(scene, "materials.paint.albedo")
    assert albedo.shape == (1, 1, 3) and albedo.dtype == np.float32 and np.all(albedo == 0.25)
    np.testing.assert_array_equal(initial_value(scene, "lights.key.color"), [0.5, 0.5, 0.5])
    pos = initial_value(scene, "lights.key.position")
    np.testing.assert_array_equal(pos, initial_value(scene, "lights.key.position"))  # seeded
    assert 0 < np.linalg.norm(pos - scene.point_lights["key"].position) < 1
    q = initial_value(scene, "meshes.ball.rotation")
    assert np.linalg.norm(q) == pytest.approx(1, abs=1e-6) and not np.allclose(q, [0, 0, 0, 1])
    truth, start = scene.cameras["side"].pose, initial_value(scene, "cameras.side.pose")
    r = cv.quat_to_matrix(truth[3:]).T @ cv.quat_to_matrix(start[3:])
    assert np.degrees(np.arccos((np.trace(r) - 1) / 2)) == pytest.approx(5, abs=1e-3)
    distance = np.linalg.norm(truth[:3] - scene_center(scene))
    assert np.linalg.norm(start[:3] - truth[:3]) == pytest.approx(0.1 * distance, rel=1e-5)
    assert np.all(initial_value(scene, "lights.key.intensity") == scene.point_lights["key"].intensity)


def test_file_inits(tmp_path):
    plain, _, faces = make_assets.spheres()
    make_assets.write_obj(tmp_path / "init.obj", plain * 0.5, faces, "half-size sphere")
    make_assets.write_obj(tmp_path / "truth.obj", plain, faces, "sphere")
    png(tmp_path / "gray.png", np.full((4, 4, 3), 188, np.uint8))
    png(tmp_path / "truth.png", np.zeros((4, 4, 3), np.uint8))
    data = json.loads(optimize_scene(tmp_path, {"meshes.blob.vertices": {"init": "init.obj"},
                                                "materials.paint.albedo": {"init": "gray.png"}}).read_text())
    data["meshes"][0] = {"name": "blob", "file": "truth.obj", "material": "paint"}
    data["materials"][0]["albedo"] = "truth.png"
    scene = load_scene(write(tmp_path, data))
    # the OBJ has no uvs and the material a 4x4 texture: an automatic atlas split the vertices on its seams, and
    # the init file (the original vertices) is read through it
    source = scene.meshes["blob"].atlas_source
    assert source is not None and len(source) > len(plain)
    np.testing.assert_allclose(initial_value(scene, "meshes.blob.vertices"), (plain * 0.5)[source], atol=1e-6)
    gray = cv.srgb_to_linear(188 / 255)
    np.testing.assert_allclose(initial_value(scene, "materials.paint.albedo"), gray, rtol=1e-5)


def test_image_targets(tmp_path):
    png(tmp_path / "photo.png", np.zeros((24, 32, 3), np.uint8))
    data = base_scene()
    data["optimize"] = {"parameters": {"materials.paint.albedo": {}},
                        "targets": {"images": [{"camera": "main", "file": "photo.png"}]}, "steps": 1,
                        "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9,
                                      "schedule": {"type": "cosine", "min_lr": 0.001}}}
    opt = load_scene(write(tmp_path, data)).optimize
    assert opt.targets.images[0].camera == "main" and opt.optimizer.momentum == 0.9
    assert opt.optimizer.schedule.min_lr == 0.001


def test_transforms_targets(tmp_path):
    (tmp_path / "data").mkdir()
    png(tmp_path / "data" / "r_0.png", np.zeros((24, 32, 3), np.uint8))
    matrix = cv.pose_to_matrix(cv.look_at([0, 0, 4], [0, 0, 0])).tolist()
    (tmp_path / "data" / "transforms.json").write_text(json.dumps(
        {"camera_angle_x": 0.8, "frames": [{"file_path": "./r_0", "transform_matrix": matrix}]}))
    data = base_scene()
    data["optimize"] = {"parameters": {"materials.paint.albedo": {}},
                        "targets": {"transforms": "data/transforms.json"}, "steps": 1}
    assert load_scene(write(tmp_path, data)).optimize.targets.transforms == "data/transforms.json"


def test_masked_transforms_targets_weigh_only_the_pixels_their_masks_keep(tmp_path):
    """A mesh scene trained on a dataset frame with a `mask_path`: the target carries the mask, the image loss is
    the mean over the kept pixels only, and the final PSNR is measured on them."""
    from drstudio.renderer.optim.problem import Problem

    (tmp_path / "data").mkdir()
    img = np.full((24, 32, 3), 128, np.uint8)
    img[:, 20:] = (255, 0, 0)  # paint that the mask hides
    png(tmp_path / "data" / "r_0.png", img)
    mask = np.full((24, 32), 255, np.uint8)
    mask[:, 20:] = 0
    png(tmp_path / "data" / "m_0.png", mask)
    matrix = cv.pose_to_matrix(cv.look_at([0, 0, 4], [0, 0, 0])).tolist()
    frame = {"file_path": "./r_0", "mask_path": "m_0.png", "transform_matrix": matrix}
    (tmp_path / "data" / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": [frame]}))
    data = base_scene()
    data["optimize"] = {"parameters": {"materials.paint.albedo": {}},
                        "targets": {"transforms": "data/transforms.json"}, "steps": 1}
    problem = Problem(load_scene(write(tmp_path, data)), "cpu")
    target = problem.targets[0]
    seen = target.mask.numpy().reshape(24, 32) > 0
    assert seen[:, :20].all() and not seen[:, 20:].any()
    camera = target.camera
    render = problem.model.render(camera).numpy().reshape(24, 32, 3).astype(np.float64)
    truth = problem.target_numpy(camera).astype(np.float64)
    result = problem.step()
    assert result.loss_terms["l2"] == pytest.approx(np.mean((render - truth)[seen] ** 2), rel=1e-4)
    assert result.loss_terms["l2"] < 0.5 * np.mean((render - truth) ** 2)  # the red paint would dominate
    rendered, mask = problem.model.evaluation_views([target])[camera]
    assert mask is target.mask


# ---- shipped scenes and assets ------------------------------------------------------------------

def test_there_are_five_shipped_scenes():
    assert {p.stem for p in SHIPPED} >= {"texture", "light", "material", "camera", "shape"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scene_loads(path):
    scene = open_scene(path)  # a scene with a dataset recipe renders its dataset first, as the CLI does
    assert scene.meshes and scene.cameras and scene.optimize is not None
    params = scene.params()
    for p in scene.optimize.parameters:
        value = initial_value(scene, p)
        own = start_mesh(scene, p) if p.endswith(".vertices") else None  # a start mesh of its own topology
        assert value.shape == (params[p].shape if own is None else own[0].shape) and np.all(np.isfinite(value))
        if not p.startswith("fields."):  # a field's own value is a fresh grid, not the answer
            assert own is not None or not np.allclose(value, params[p].value)  # starts away from the answer
    assert "parameters" in summarize(scene)


def test_shape_scene_compares_vertex_to_vertex():
    scene = load_scene(ROOT / "scenes" / "shape.json")
    truth, start = scene.meshes["blob"].vertices, initial_value(scene, "meshes.blob.vertices")
    assert truth.shape == start.shape == (642, 3)
    np.testing.assert_allclose(np.linalg.norm(start, axis=1), 1, atol=1e-5)
    radial = np.sum(truth * start, axis=1) / np.linalg.norm(truth, axis=1)
    np.testing.assert_allclose(radial, 1, atol=1e-5)  # same direction: bumps push along the normal


def test_committed_assets_are_up_to_date(tmp_path):
    for fresh in make_assets.build(tmp_path):
        committed = ROOT / "scenes" / "assets" / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed}: python -m scenes.make_assets"
