"""Every bad input is a SceneError whose one-line message names the file, the field path and what was
expected. Each case writes a small bad scene (and bad assets) into tmp_path."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from drstudio.renderer.errors import SceneError, field_path
from drstudio.renderer.loading import load_scene
from PIL import Image


def base() -> dict:
    return {
        "version": 1,
        "meshes": [{"name": "ball", "primitive": {"type": "sphere", "radius": 1.0, "resolution": 16},
                    "material": "paint"}],
        "materials": [{"name": "paint", "albedo": [0.5, 0.5, 0.5]}],
        "lights": [{"name": "key", "type": "point", "position": [1, 2, 3]}],
        "cameras": [{"name": "main", "width": 32, "height": 24, "fov_y": 45,
                     "look_at": {"eye": [0, 0, 4], "target": [0, 0, 0]}}],
        "optimize": {"parameters": {"materials.paint.albedo": {"init": 0.2}},
                     "targets": {"cameras": ["main"]}, "steps": 3},
    }


def put(d, path: str, value):
    """Set d[...] along a /-separated path ('meshes/0/transform'); the value DELETE removes the key."""
    keys = [int(k) if k.isdigit() else k for k in path.split("/")]
    for k in keys[:-1]:
        d = d[k]
    if value is DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


DELETE = object()


def text(t: str):
    return lambda d, tmp: t


def setting(path: str, value):
    def mutate(d, tmp):
        put(d, path, value)
        return d
    return mutate


def with_file(name: str, content: bytes | str, path: str, value=None):
    def mutate(d, tmp):
        (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        put(d, path, name if value is None else value)
        return d
    return mutate


def with_image(name: str, array: np.ndarray, path: str):
    def mutate(d, tmp):
        Image.fromarray(array).save(tmp / name)
        put(d, path, name)
        return d
    return mutate


def image_targets(d, tmp):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp / "photo.png")
    d["optimize"]["targets"] = {"images": [{"camera": "main", "file": "photo.png"}]}
    d["optimize"]["parameters"]["materials.paint.albedo"] = {}
    return d


def edit_tmp(fn):
    def mutate(d, tmp):
        fn(d, tmp)
        return d
    return mutate


def edit(fn):
    def mutate(d, tmp):
        fn(d)
        return d
    return mutate


def png_bytes(width: int, height: int, rows: int) -> bytes:
    """An RGB PNG whose header says width x height and whose pixel data holds only `rows` rows (a truncated
    download, or a decompression bomb's header with next to no data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    pixels = zlib.compress((b"\x00" + b"\x80" * (3 * width)) * rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def with_float_tiff(name: str, array: np.ndarray, path: str):
    """A 32-bit float TIFF (pillow mode F): values are used as stored, not scaled from 8 bits."""
    def mutate(d, tmp):
        Image.fromarray(array.astype(np.float32), mode="F").save(tmp / name)
        put(d, path, name)
        return d
    return mutate


def far_vertices_init(d, tmp):
    (tmp / "m.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\n")
    (tmp / "far.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 3e38 0\nf 1 2 3\n")
    d["meshes"][0] = TRI
    d["optimize"]["parameters"]["meshes.ball.vertices"] = {"init": "far.obj"}


PLY_HEAD = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n")
TRI = {"name": "ball", "file": "m.obj", "material": "paint"}
SCALED = np.diag([2, 2, 2, 1]).tolist()
TWO_ROTATIONS = {"euler_deg": [0, 0, 0], "quaternion": [0, 0, 0, 1]}
AMBIENT_KEY = {"name": "key", "type": "ambient", "color": [1, 1, 1]}
VERTICES_INIT = {"meshes.ball.vertices": {"init": "other.obj"}}

# (id, mutation, field path, part of the message)
CASES = [
    # the file itself
    ("bad-json", text('{"version": 1,\n  "meshes": [}\n'), "line 2, column", "invalid JSON"),
    ("trailing-comma", text('{"version": 1,}'), "line 1, column", "invalid JSON"),
    ("duplicate-key", text('{"version": 1, "version": 1}'), "", 'duplicate key "version"'),
    ("not-an-object", text("[1, 2]"), "", "expected an object"),
    ("version", setting("version", 2), "version", "expected 1"),
    ("missing-meshes", setting("meshes", DELETE), "meshes", "required field is missing"),
    ("unknown-top-key", setting("mesh", []), "mesh", "unknown field; allowed fields: version, description"),
    ("empty-meshes", setting("meshes", []), "meshes", "expected at least 1 item"),
    # meshes
    ("name-pattern", setting("meshes/0/name", "1ball"), "meshes[0].name", "letters, digits and _"),
    ("name-dot", setting("meshes/0/name", "a.b"), "meshes[0].name", "dotted-path"),
    ("duplicate-name", edit(lambda d: d["meshes"].append(dict(d["meshes"][0]))), "meshes[1].name",
     "duplicate name 'ball'"),
    ("file-and-primitive", setting("meshes/0/file", "x.obj"),
     "meshes[0]", 'exactly one of "file" or "primitive"'),
    ("no-source", setting("meshes/0/primitive", DELETE), "meshes[0]", 'exactly one of "file" or "primitive"'),
    ("primitive-type", setting("meshes/0/primitive/type", "cone"), "meshes[0].primitive.type",
     "expected one of 'sphere', 'icosphere', 'cube', 'plane', 'torus'"),
    ("resolution-zero", setting("meshes/0/primitive/resolution", 0), "meshes[0].primitive.resolution",
     "greater than or equal to 3"),
    ("resolution-huge", setting("meshes/0/primitive/resolution", 10**6), "meshes[0].primitive.resolution",
     "less than or equal to 1024"),
    ("resolution-float", setting("meshes/0/primitive/resolution", 16.0), "meshes[0].primitive.resolution",
     "valid integer"),
    ("radius-nan", text(json.dumps(base()).replace('"radius": 1.0', '"radius": NaN')),
     "meshes[0].primitive.radius", "finite number"),
    ("radius-inf", text(json.dumps(base()).replace('"radius": 1.0', '"radius": Infinity')),
     "meshes[0].primitive.radius", "finite number"),
    ("radius-string", setting("meshes/0/primitive/radius", "1"),
     "meshes[0].primitive.radius", "valid number"),
    ("cube-extra", setting("meshes/0/primitive", {"type": "cube", "radius": 1}), "meshes[0].primitive.radius",
     "unknown field; allowed fields: type, size"),
    ("unknown-material", setting("meshes/0/material", "nope"), "meshes[0].material",
     "unknown material 'nope'; defined: paint"),
    ("mesh-file-missing", setting("meshes/0", dict(TRI, file="missing.obj")), "meshes[0].file", "not found"),
    ("mesh-file-extension", setting("meshes/0", dict(TRI, file="m.stl")),
     "meshes[0].file", ".obj, .ply, .glb"),
    ("mesh-file-directory", setting("meshes/0", dict(TRI, file="dir.obj")),
     "meshes[0].file", "is not a file"),
    ("mesh-garbage", with_file("m.obj", "this is not a mesh\n", "meshes/0", TRI), "meshes[0].file",
     "contains no triangles"),
    ("mesh-empty", with_file("m.obj", "", "meshes/0", TRI), "meshes[0].file", "contains no triangles"),
    ("mesh-binary-garbage", with_file("m.glb", b"\x00\x01garbage", "meshes/0", dict(TRI, file="m.glb")),
     "meshes[0].file", "cannot be read"),
    ("mesh-point-cloud", with_file("m.ply", PLY_HEAD + "end_header\n0 0 0\n1 0 0\n1 1 0\n", "meshes/0",
                                   dict(TRI, file="m.ply")), "meshes[0].file", "not a triangle mesh"),
    ("mesh-face-out-of-range", with_file(
        "m.ply", PLY_HEAD + "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0\n1 0 0\n1 1 0\n3 0 1 9\n", "meshes/0", dict(TRI, file="m.ply")),
     "meshes[0].file", "outside 0..2"),
    ("obj-index-out-of-range", with_file("m.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 7\n", "meshes/0", TRI),
     "meshes[0].file", "m.obj"),
    ("mesh-nan", with_file("m.obj", "v 0 0 nan\nv 1 0 0\nv 1 1 0\nf 1 2 3\n", "meshes/0", TRI),
     "meshes[0].file", "NaN or infinite"),
    ("scale-zero", setting("meshes/0/transform", {"scale": 0}), "meshes[0].transform.scale", "number > 0"),
    ("scale-negative", setting("meshes/0/transform", {"scale": [1, -1, 1]}), "meshes[0].transform.scale",
     "list of 3 numbers > 0"),
    ("translation-short", setting("meshes/0/transform", {"translation": [1, 2]}),
     "meshes[0].transform.translation",
     "expected at least 3 items, got [1, 2]"),
    ("rotation-two", setting("meshes/0/transform", {"rotation": TWO_ROTATIONS}),
     "meshes[0].transform.rotation", "exactly one of"),
    ("rotation-zero-axis", setting("meshes/0/transform", {"rotation": {"axis_angle": [0, 0, 0, 30]}}),
     "meshes[0].transform.rotation.axis_angle", "non-zero axis"),
    # materials
    ("albedo-range", setting("materials/0/albedo", [2, 0, 0]), "materials[0].albedo",
     "expected [r, g, b] with each in [0, 1], or an image file name, got [2, 0, 0]"),
    ("albedo-short", setting("materials/0/albedo", [0.5, 0.5]), "materials[0].albedo", "[r, g, b]"),
    ("albedo-missing-file", setting("materials/0/albedo", "nope.png"), "materials[0].albedo", "not found"),
    ("albedo-not-image", with_file("t.png", b"not an image", "materials/0/albedo"), "materials[0].albedo",
     "not an image"),
    ("albedo-too-big", with_image("big.png", np.zeros((1, 4097), np.uint8), "materials/0/albedo"),
     "materials[0].albedo", "larger than the limit 4096x4096"),
    ("roughness-range", setting("materials/0/roughness", 0.0), "materials[0].roughness", "[0.02, 1]"),
    ("metallic-range", setting("materials/0/metallic", 1.5), "materials[0].metallic", "[0, 1]"),
    ("metallic-bool", setting("materials/0/metallic", True), "materials[0].metallic", "[0, 1]"),
    ("model", setting("materials/0/model", "phong"), "materials[0].model", "expected 'lambert' or 'ggx'"),
    ("wrap", setting("materials/0/wrap", "mirror"), "materials[0].wrap", "'wrap' or 'clamp'"),
    # lights
    ("light-type", setting("lights/0/type", "spot"), "lights[0].type",
     "expected one of 'point', 'directional', 'ambient'"),
    ("light-no-type", setting("lights/0/type", DELETE), "lights[0].type", "required field is missing"),
    ("light-no-position", setting("lights/0/position", DELETE),
     "lights[0].position", "required field is missing"),
    ("light-color", setting("lights/0/color", [-1, 0, 0]),
     "lights[0].color[0]", "greater than or equal to 0"),
    ("light-intensity", setting("lights/0/intensity", -1),
     "lights[0].intensity", "greater than or equal to 0"),
    ("light-extra", setting("lights/0/direction", [0, -1, 0]), "lights[0].direction",
     "allowed fields: name, type, position, color, intensity"),
    ("directional-zero", setting("lights/0", {"name": "sun", "type": "directional", "direction": [0, 0, 0]}),
     "lights[0].direction", "non-zero"),
    ("light-duplicate", edit(lambda d: d["lights"].append(AMBIENT_KEY)),
     "lights[1].name", "duplicate name 'key'"),
    # cameras
    ("width-zero", setting("cameras/0/width", 0), "cameras[0].width", "greater than or equal to 1"),
    ("width-huge", setting("cameras/0/width", 10000), "cameras[0].width", "less than or equal to 8192"),
    ("width-float", setting("cameras/0/width", 32.0), "cameras[0].width", "valid integer"),
    ("fov-180", setting("cameras/0/fov_y", 180), "cameras[0].fov_y", "less than 180"),
    ("fov-and-fx", edit(lambda d: d["cameras"][0].update(fx=10, fy=10)),
     "cameras[0]", 'exactly one of "fov_y" or "fx"'),
    ("fx-without-fy", edit(lambda d: d["cameras"][0].update(fx=10)), "cameras[0]", '"fx" and "fy"'),
    ("no-pose", setting("cameras/0/look_at", DELETE), "cameras[0]", 'exactly one of "look_at" or "matrix"'),
    ("eye-is-target", setting("cameras/0/look_at/eye", [0, 0, 0]),
     "cameras[0].look_at", "different eye and target"),
    ("up-parallel", setting("cameras/0/look_at/up", [0, 0, 1]),
     "cameras[0].look_at", "not parallel to target - eye"),
    ("matrix-scaled", edit(lambda d: d["cameras"][0].update(look_at=None, matrix=SCALED)),
     "cameras[0].matrix", "rigid"),
    ("matrix-shape", edit(lambda d: d["cameras"][0].update(look_at=None, matrix=np.eye(3).tolist())),
     "cameras[0].matrix[0]", "expected at least 4 items"),
    ("convention-look-at", setting("cameras/0/convention", "opencv"),
     "cameras[0]", "applies to \"matrix\" only"),
    ("convention-value", edit(lambda d: d["cameras"][0].update(look_at=None, matrix=np.eye(4).tolist(),
                                                              convention="colmap")),
     "cameras[0].convention", "'opengl' or 'opencv'"),
    # background and render
    ("background-negative", setting("background", [-1, 0, 0]), "background", "each >= 0"),
    ("background-missing", setting("background", "sky.png"), "background", "not found"),
    ("render-mode", setting("render", {"mode": "fast"}), "render.mode", "'hard', 'antialias', 'soft' or 'path'"),
    ("render-sigma", setting("render", {"soft_sigma": 0}), "render.soft_sigma", "greater than 0"),
    ("render-shadows", setting("render", {"shadows": "yes"}), "render.shadows", "valid boolean"),
    ("render-shadow-edges", setting("render", {"shadow_edges": -1}), "render.shadow_edges", "greater than or equal"),
    ("render-shadow-edges-type", setting("render", {"shadow_edges": "many"}), "render.shadow_edges", "valid integer"),
    # optimize
    ("unknown-path", setting("optimize/parameters", {"materials.paint.albedoo": {"init": 0.2}}),
     'optimize.parameters["materials.paint.albedoo"]', "did you mean materials.paint.albedo"),
    ("init-shape", setting("optimize/parameters/materials.paint.albedo/init", [1, 2]),
     'optimize.parameters["materials.paint.albedo"].init', "does not broadcast to the parameter's shape"),
    ("init-range", setting("optimize/parameters/materials.paint.albedo/init", 2.0),
     'optimize.parameters["materials.paint.albedo"].init', "expected values in [0, 1] for albedo parameters"),
    ("init-bool", setting("optimize/parameters/materials.paint.albedo/init", True),
     'optimize.parameters["materials.paint.albedo"].init', "a finite number, a list of numbers, a file name"),
    ("init-ragged", setting("optimize/parameters/materials.paint.albedo/init", [[1], [1, 2]]),
     'optimize.parameters["materials.paint.albedo"].init', "rectangular"),
    ("init-unknown-dict", setting("optimize/parameters/materials.paint.albedo/init", {"jitter": 1}),
     'optimize.parameters["materials.paint.albedo"].init', '{"perturb": {...}}'),
    ("perturb-sigma", setting("optimize/parameters/materials.paint.albedo/init", {"perturb": {"sigma": -1}}),
     'optimize.parameters["materials.paint.albedo"].init.perturb.sigma', "greater than or equal to 0"),
    ("perturb-pose-not-pose", setting("optimize/parameters/materials.paint.albedo/init",
                                      {"perturb_pose": {"degrees": 3}}),
     'optimize.parameters["materials.paint.albedo"].init', "camera poses"),
    ("file-init-not-texture", setting("optimize/parameters", {"lights.key.color": {"init": "c.png"}}),
     'optimize.parameters["lights.key.color"].init', "applies to textures"),
    ("texture-init-missing", setting("optimize/parameters/materials.paint.albedo/init", "gray.png"),
     'optimize.parameters["materials.paint.albedo"].init', "not found"),
    ("texture-init-size", with_image("gray.png", np.zeros((3, 3, 3), np.uint8),
                                     "optimize/parameters/materials.paint.albedo/init"),
     'optimize.parameters["materials.paint.albedo"].init', "the parameter is 1x1x3"),
    # a file of another topology is a start mesh of its own (tests/test_shape.py); a flat one has no triangle
    ("vertices-init-degenerate", with_file("other.obj", "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n",
                                           "optimize/parameters", VERTICES_INIT),
     'optimize.parameters["meshes.ball.vertices"].init', "has no triangle of nonzero area"),
    ("init-required", setting("optimize/parameters/materials.paint.albedo", {}),
     'optimize.parameters["materials.paint.albedo"].init', "starts at the answer"),
    ("lr-zero", setting("optimize/parameters/materials.paint.albedo/lr", 0),
     'optimize.parameters["materials.paint.albedo"].lr', "greater than 0"),
    ("no-parameters", setting("optimize/parameters", {}), "optimize.parameters", "expected at least 1 item"),
    ("target-camera", setting("optimize/targets", {"cameras": ["nope"]}), "optimize.targets.cameras[0]",
     "unknown camera 'nope'; defined: main"),
    ("targets-two", setting("optimize/targets", {"cameras": ["main"], "transforms": "t.json"}),
     "optimize.targets", 'exactly one of "cameras" or "images" or "transforms"'),
    ("target-image-size", image_targets, "optimize.targets.images[0].file", "camera 'main' is 32x24"),
    ("transforms-missing", setting("optimize/targets", {"transforms": "nope/transforms.json"}),
     "optimize.targets.transforms", "not found"),
    ("loss-zero", setting("optimize/loss", {"l2": 0}), "optimize.loss", "at least one weight > 0"),
    ("loss-unknown", setting("optimize/loss", {"l3": 1}), "optimize.loss.l3", "allowed fields: l1, l2, ssim"),
    ("optimizer-type", setting("optimize/optimizer", {"type": "lbfgs"}),
     "optimize.optimizer.type", "'adam', 'sgd'"),
    ("adam-momentum", setting("optimize/optimizer", {"type": "adam", "momentum": 0.9}),
     "optimize.optimizer.momentum", "unknown field"),
    ("betas", setting("optimize/optimizer", {"type": "adam", "betas": [0.9, 1.0]}),
     "optimize.optimizer.betas[1]",
     "less than 1"),
    ("schedule-gamma", setting("optimize/optimizer", {"type": "sgd", "schedule": {"type": "exponential",
                                                                                  "gamma": 0}}),
     "optimize.optimizer.schedule.gamma", "greater than 0"),
    ("steps-zero", setting("optimize/steps", 0), "optimize.steps", "greater than or equal to 1"),
    ("steps-missing", setting("optimize/steps", DELETE), "optimize.steps", "required field is missing"),
    ("batch-views", setting("optimize/batch_views", 2), "optimize.batch_views", "at most 1"),
    # hostile values (issue 14): finite in float64, not in float32; bools for integers; deep or huge JSON
    ("float32-overflow", setting("lights/0/position", [1e39, 0, 0]), "lights[0].position[0]",
     "expected a number within float32's range (|x| <= 3.4e+38), got 1e+39"),
    ("float32-overflow-negative", setting("cameras/0/look_at/eye", [0, -1e39, 4]), "cameras[0].look_at.eye[1]",
     "float32's range"),
    ("int-overflows-float32", setting("optimize/seed", 10**39), "optimize.seed", "an integer of 40 digits"),
    ("scale-underflow", setting("meshes/0/transform", {"scale": 1e-300}), "meshes[0].transform.scale",
     "smaller ones are 0 in float32"),
    ("scale-underflow-list", setting("meshes/0/transform", {"scale": [1, 1e-45, 1]}), "meshes[0].transform.scale",
     "smaller ones are 0 in float32"),
    ("radius-underflow", setting("meshes/0/primitive/radius", 1e-300), "meshes[0].primitive.radius",
     "float32 keeps > 0"),
    ("fov-underflow", setting("cameras/0/fov_y", 1e-40), "cameras[0].fov_y", "float32 keeps > 0"),
    ("fov-focal-overflow", setting("cameras/0/fov_y", 1.2e-38), "cameras[0]", "expected intrinsics finite in float32"),
    ("version-true", setting("version", True), "version", "true and false are not integers"),
    ("nested-100000", text("[" * 100000 + "]" * 100000), "", "invalid JSON: nested too deeply"),
    ("nested-900", edit(lambda d: d.update(description=json.loads("[" * 900 + "]" * 900))),
     "description[0][0]", "nested more than 64 levels deep"),
    ("integer-5000-digits", text('{"version": ' + "7" * 5000 + "}"), "", "invalid JSON: an integer has too many"),
    ("metallic-float-image-range", with_float_tiff("m.tif", np.linspace(-50, 100, 64).reshape(8, 8),
                                                   "materials/0/metallic"),
     "materials[0].metallic", "holds values in [-50, 100]; a metallic image must hold values in [0, 1]"),
    ("roughness-float-image-range", with_float_tiff("r.tif", np.full((4, 4), 1.5), "materials/0/roughness"),
     "materials[0].roughness", "a roughness image must hold values in [0, 1]"),
    ("albedo-float-image-negative", with_float_tiff("a.tif", np.full((4, 4), -0.25), "materials/0/albedo"),
     "materials[0].albedo", "an albedo image must hold values in [0, 1]"),
    ("background-float-image-range", with_float_tiff("b.tif", np.full((4, 4), 7.0), "background"),
     "background", "a background image must hold values in [0, 1]"),
    ("png-truncated", with_file("t.png", png_bytes(4000, 4000, 10), "materials/0/albedo"),
     "materials[0].albedo", "t.png': image data is truncated"),
    ("jpeg-truncated", with_file("t.jpg", jpeg_bytes()[:2000], "materials/0/albedo"),
     "materials[0].albedo", "t.jpg': image data is truncated or damaged (image file is truncated"),
    ("png-bomb", with_file("bomb.png", png_bytes(30000, 30000, 1), "materials/0/albedo"),
     "materials[0].albedo", "bomb.png' is larger than the limit 4096x4096 (16,777,216 pixels)"),
    ("perturb-seed-negative", setting("optimize/parameters", {"lights.key.position": {
        "init": {"perturb": {"sigma": 1.0, "seed": -1}}}}),
     'optimize.parameters["lights.key.position"].init.perturb.seed', "greater than or equal to 0"),
    ("perturb-pose-seed-negative", setting("optimize/parameters", {"cameras.main.pose": {
        "init": {"perturb_pose": {"degrees": 1, "seed": -5}}}}),
     'optimize.parameters["cameras.main.pose"].init.perturb_pose.seed', "greater than or equal to 0"),
    ("perturb-overflows-float32", setting("optimize/parameters", {"lights.key.position": {
        "init": {"perturb": {"sigma": 3e38, "seed": 3}}}}),  # seed 3 draws 1.1 and -1.4 sigma
     'optimize.parameters["lights.key.position"].init', "beyond [-1e+06, 1e+06]: the range of position parameters"),
    ("init-vertices-file-overflows", edit_tmp(far_vertices_init),
     'optimize.parameters["meshes.ball.vertices"].init', "beyond [-1e+06, 1e+06]"),
    ("obj-index-zero", with_file("m.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nf 0 1 2\n", "meshes/0", TRI),
     "meshes[0].file", "m.obj' line 4: face index 0 is invalid (OBJ indices start at 1"),
    ("obj-index-past-the-end", with_file("m.obj", "v 0 0 0\nv 1 0 0\n# c\nv 1 1 0\nf 1 2 4\n", "meshes/0", TRI),
     "meshes[0].file", "m.obj' line 5: face index 4 is out of range: the file has 3 'v' elements"),
    ("obj-negative-before-first", with_file("m.obj", "v 0 0 0\nv 1 0 0\nf -1 -2 -3\nv 1 1 0\n", "meshes/0", TRI),
     "meshes[0].file", "line 3: face index -3 is out of range: the file has 3 'v' elements, 2 before this line"),
    ("obj-uv-index", with_file("m.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nvt 0 0\nf 1/1 2/2 3/1\n", "meshes/0", TRI),
     "meshes[0].file", "line 5: face index 2 is out of range: the file has 1 'vt' element"),
    ("obj-index-not-integer", with_file("m.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3.5\n", "meshes/0", TRI),
     "meshes[0].file", "line 4: face index '3.5' is not an integer"),
    ("obj-line-index-zero", with_file("m.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\nl 0 1\n", "meshes/0", TRI),
     "meshes[0].file", "m.obj' line 5: line index 0 is invalid (OBJ indices start at 1"),
    ("obj-line-index-past-the-end", with_file("m.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\nl 1 2 9\n", "meshes/0",
                                              TRI),
     "meshes[0].file", "m.obj' line 5: line index 9 is out of range: the file has 3 'v' elements"),
    ("obj-line-uv-index", with_file("m.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nvt 0 0\nf 1 2 3\nl 1/1 2/3\n", "meshes/0",
                                    TRI),
     "meshes[0].file", "m.obj' line 6: line index 3 is out of range: the file has 1 'vt' element"),
    ("obj-line-one-vertex", with_file("m.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\nl 1\n", "meshes/0", TRI),
     "meshes[0].file", "m.obj' line 5: a line needs at least 2 vertices"),
    ("obj-point-negative-before-first", with_file("m.obj", "v 0 0 0\np -2\nv 1 0 0\nv 1 1 0\nf 1 2 3\n", "meshes/0",
                                                  TRI),
     "meshes[0].file", "m.obj' line 2: point index -2 is out of range: the file has 3 'v' elements, 1 before"),
    ("obj-curve-index", with_file("m.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\ncurv 0.0 1.0 1 4\n", "meshes/0",
                                  TRI),
     "meshes[0].file", "m.obj' line 5: curve index 4 is out of range: the file has 3 'v' elements"),
    # values that pass float32's range but overflow while rendering: refused with the field and the bound
    ("render-overflow-translation", setting("meshes/0/transform", {"translation": [3e38, 0, 0]}),
     "meshes[0].transform.translation", "expected translation in [-1e+06, 1e+06]"),
    ("render-overflow-scale", setting("meshes/0/transform", {"scale": 1e30}),
     "meshes[0].transform.scale", "expected scale in [0.001, 1e+06]"),
    ("render-overflow-vertices", with_file("m.obj", "v 0 0 0\nv 3e38 0 0\nv 1 1 0\nf 1 2 3\n", "meshes/0", TRI),
     "meshes[0].file", "expected vertex coordinates in [-1e+06, 1e+06]"),
    ("render-overflow-intensity", setting("lights/0/intensity", 3e38),
     "lights[0].intensity", "expected intensity in [0, 1e+09]"),
    ("render-overflow-light-color", setting("lights/0/color", [3e38, 1, 1]),
     "lights[0].color", "expected color in [0, 1e+06]"),
    ("render-overflow-light-position", setting("lights/0/position", [0, -3e38, 0]),
     "lights[0].position", "expected position in [-1e+06, 1e+06]"),
    ("render-overflow-camera-eye", setting("cameras/0/look_at", {"eye": [0, 0, 3e38], "target": [0, 0, 0]}),
     "cameras[0].look_at.eye", "expected camera position in [-1e+06, 1e+06]"),
    ("render-overflow-camera-matrix", setting("cameras/0", {"name": "main", "width": 32, "height": 24, "fov_y": 45,
                                                             "matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1e30],
                                                                        [0, 0, 0, 1]]}),
     "cameras[0]", "expected camera position in [-1e+06, 1e+06]"),
    ("render-overflow-focal-length", setting("cameras/0", {"name": "main", "width": 32, "height": 24, "fx": 1e30,
                                                            "fy": 1e30, "look_at": {"eye": [0, 0, 4],
                                                                                    "target": [0, 0, 0]}}),
     "cameras[0].fx", "expected intrinsics fx, fy, cx, cy in [-1e+08, 1e+08]"),
    # a 300-character file name (issue 14) ended in "File name too long" without the field
    ("texture-name-300", setting("materials/0/albedo", "t" * 300 + ".png"), "materials[0].albedo",
     "expected a file name whose parts are at most 255 bytes"),
    ("mesh-name-300", setting("meshes/0", {"name": "ball", "file": "m" * 300 + ".obj", "material": "paint"}),
     "meshes[0].file", "got a part of 304 bytes"),
    ("transforms-name-300", setting("optimize/targets", {"transforms": "d/" + "t" * 300 + ".json"}),
     "optimize.targets.transforms", "at most 255 bytes"),
    ("file-loop", edit_tmp(lambda d, tmp: (tmp / "loop.png").symlink_to(tmp / "loop.png")
                           or d["materials"][0].update(albedo="loop.png")),
     "materials[0].albedo", "image '"),
    ("png-bomb-target", edit_tmp(lambda d, tmp: (tmp / "bomb.png").write_bytes(png_bytes(30000, 30000, 1))
                                 and d["optimize"].update(parameters={"materials.paint.albedo": {}}, targets={
                                     "images": [{"camera": "main", "file": "bomb.png"}]})),
     "optimize.targets.images[0].file", "larger than the limit 8192x8192 (67,108,864 pixels)"),
]


@pytest.mark.parametrize("mutate, field, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_scene_names_file_field_and_expectation(tmp_path, mutate, field, message):
    (tmp_path / "dir.obj").mkdir()
    data = mutate(base(), tmp_path)
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(SceneError) as info:
        load_scene(path)
    err = info.value
    line = str(err)
    assert "\n" not in line
    assert line.startswith(f"{path}: "), line
    assert err.field.startswith(field), line
    assert message in line, line


def test_errors_report_every_problem(tmp_path):
    data = base()
    data["meshes"][0]["primitive"]["radius"] = -1
    data["cameras"][0]["width"] = 0
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SceneError) as info:
        load_scene(path)
    assert info.value.field == "meshes[0].primitive.radius"
    assert [e.field for e in info.value.others] == ["cameras[0].width"]
    assert "(and 1 more error)" in str(info.value)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "scene file not found"),
    (lambda p: p.mkdir(), "scene file is not a file"),
    (lambda p: p.write_bytes(b"\xff\xfe{}"), "not UTF-8"),
])
def test_unreadable_scene_file(tmp_path, setup, message):
    path = tmp_path / "scene.json"
    setup(path)
    with pytest.raises(SceneError, match=message) as info:
        load_scene(path)
    assert str(info.value).startswith(str(path))


def test_transforms_errors_name_both_files(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": [
        {"file_path": "r_0.png", "transform_matrix": np.diag([2, 2, 2, 1]).tolist()}]}))
    data = base()
    data["optimize"]["targets"] = {"transforms": "t.json"}
    data["optimize"]["parameters"]["materials.paint.albedo"] = {}
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SceneError) as info:
        load_scene(path)
    assert info.value.field == "optimize.targets.transforms"
    assert "t.json" in info.value.message and "frames[0].transform_matrix" in info.value.message


def test_a_scene_error_is_one_line_whatever_the_names_hold(tmp_path):
    data = base()
    data["materials"][0]["albedo"] = "sky\nline\u2028.png"
    data["meshes"][0]["a\r\nb"] = 1
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SceneError) as info:
        load_scene(path)
    assert len(str(info.value).splitlines()) == 1 and 'meshes[0]["a\\r\\nb"]' in str(info.value)
    assert info.value.field == 'meshes[0]["a\r\nb"]'  # the attributes keep the text as it is


def test_scene_error_format():
    err = SceneError("scenes/x.json", "materials[0].albedo", "expected [r, g, b]")
    assert str(err) == "scenes/x.json: materials[0].albedo: expected [r, g, b]"
    assert str(SceneError("x.json", "", "not found")) == "x.json: not found"
    assert isinstance(err, ValueError)
    assert field_path(("optimize", "parameters", "a.b", "init")) == 'optimize.parameters["a.b"].init'
    assert field_path(("meshes", 1, "transform", "scale")) == "meshes[1].transform.scale"
    import pickle
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_a_float_image_in_range_is_used_as_stored(tmp_path):
    data = base()
    Image.fromarray(np.full((4, 4), 0.25, np.float32), mode="F").save(tmp_path / "m.tif")
    data["materials"][0]["metallic"] = "m.tif"
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(data))
    np.testing.assert_array_equal(load_scene(path).materials["paint"].metallic, np.full((4, 4, 1), 0.25, np.float32))


def load_obj(tmp_path, data: bytes):
    (tmp_path / "m.obj").write_bytes(data)
    scene = base()
    scene["meshes"][0] = dict(TRI)
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(scene))
    return load_scene(path).meshes["ball"]


def test_an_obj_with_a_latin1_comment_loads(tmp_path):
    text = "# mod\u00e8le export\u00e9 par Caf\u00e9 3D \u00a9 2026\nv 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\n"
    data = text.encode("latin-1")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    mesh = load_obj(tmp_path, data)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2]])
    np.testing.assert_array_equal(mesh.vertices[2], [1, 1, 0])


def test_obj_negative_indices_count_back_from_the_last_vertex_so_far(tmp_path):
    # trimesh resolved -1 against the whole file: the second triangle reused the first one's vertices
    mesh = load_obj(tmp_path, b"v 0 0 0\nv 1 0 0\nv 1 1 0\nf -3 -2 -1\nv 5 0 0\nv 6 0 0\nv 6 1 0\nf -3 -2 -1\n")
    assert len(mesh.vertices) == 6
    np.testing.assert_array_equal(mesh.vertices[mesh.faces[1]], [[5, 0, 0], [6, 0, 0], [6, 1, 0]])


@pytest.mark.parametrize("where", ["ABSOLUTE", "../elsewhere/transforms.json", "link/transforms.json"])
def test_a_dataset_is_generated_only_inside_the_scene_folder(tmp_path, where):
    """A scene with a dataset recipe and a missing transforms file makes `open_scene` (what the CLI and the
    viewer call) write a dataset: a hostile scene must not point that at another folder (absolute, .., a
    link out). `load_scene` never writes: it reports the missing file."""
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (scenes / "link").symlink_to(tmp_path / "elsewhere")
    data = base()
    (scenes / "source.json").write_text(json.dumps(data))
    target = str(tmp_path / "elsewhere" / "transforms.json") if where == "ABSOLUTE" else where
    data["optimize"]["targets"] = {"transforms": target, "dataset": {"scene": "source.json", "views": 2}}
    data["optimize"]["parameters"]["materials.paint.albedo"] = {}
    path = scenes / "scene.json"
    path.write_text(json.dumps(data))
    from drstudio.renderer.loading import open_scene

    with pytest.raises(SceneError, match="optimize.targets.transforms: .* is outside the scene's folder"):
        open_scene(path)
    with pytest.raises(SceneError, match="file not found"):
        load_scene(path)
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 100000, "nested too deeply"),
    (b'{"frames": ' + b"9" * 5000 + b"}", "malformed JSON"),
    (json.dumps({"camera_angle_x": 0.8, "frames": [{"file_path": 5, "transform_matrix": 1}]}).encode(),
     "frames[0].file_path: expected an image file name, got 5"),
    (json.dumps({"camera_angle_x": 0.8, "frames": [{"file_path": "a", "transform_matrix": [["x"]]}]}).encode(),
     "frames[0].transform_matrix: expected a finite 4x4 matrix"),
    (json.dumps({"camera_angle_x": 0.8, "frames": [{"file_path": "a", "transform_matrix": [[1, 2], [3]]}]}).encode(),
     "frames[0].transform_matrix: expected a finite 4x4 matrix"),
    # finite, but a render from there overflows float32 (issue 14)
    (json.dumps({"camera_angle_x": 0.8, "frames": [{"file_path": "a", "transform_matrix": [
        [1, 0, 0, 3e38], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]}).encode(),
     "frames[0].transform_matrix: expected a camera position in [-1e+06, 1e+06]"),
    (json.dumps({"fl_x": 1e30, "w": 4, "h": 4, "frames": [{"file_path": "a", "transform_matrix": [
        [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]}).encode(),
     "frames[0].fl_x: expected intrinsics fl_x, fl_y, cx, cy within 1e+08 pixels"),
])
def test_a_hostile_transforms_file_is_a_scene_error(tmp_path, content, message):
    (tmp_path / "t.json").write_bytes(content)
    data = base()
    data["optimize"]["targets"] = {"transforms": "t.json"}
    data["optimize"]["parameters"]["materials.paint.albedo"] = {}
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SceneError) as info:
        load_scene(path)
    assert info.value.field == "optimize.targets.transforms" and message in info.value.message, str(info.value)


@pytest.mark.parametrize("radius", [1e-5, 1e-20, 1.2e-38])
def test_a_small_primitive_keeps_its_triangles(tmp_path, radius):
    """Primitives drop the zero-area triangles of collapsed rows relative to their size: an absolute 1e-12
    threshold emptied a sphere of radius 1e-5 (a mesh with no triangles). Object-space size is free: the
    scale brings it back (radius 1e-20, scale 1e20)."""
    data = base()
    data["meshes"][0]["primitive"].update(radius=radius, resolution=64)
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(data))
    mesh = load_scene(path).meshes["ball"]
    data["meshes"][0]["primitive"]["radius"] = 1.0
    path.write_text(json.dumps(data))
    unit = load_scene(path).meshes["ball"]
    np.testing.assert_array_equal(mesh.faces, unit.faces)


@pytest.mark.parametrize("where", ["cameras", "materials"])
def test_a_very_long_name_is_refused(tmp_path, where):
    """A 250-character camera or material name (issue 14) would make result file names longer than the
    file system allows and lose a finished run's results: refused at load, naming the field."""
    data = base()
    data[where][0]["name"] = "n" * 250
    path = tmp_path / "long.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SceneError, match=rf"{where}\[0\]\.name: expected a name of at most 64 characters"):
        load_scene(path)


def test_a_generated_dataset_never_overwrites_existing_images(tmp_path):
    """Issue 14: opening a scene whose dataset is missing generates it, but an image already in its folder
    (images/r_001.png) is refused, not overwritten."""
    from drstudio.renderer.loading import open_scene

    data = base()
    (tmp_path / "source.json").write_text(json.dumps(data))
    data["optimize"]["targets"] = {"transforms": "data/transforms.json", "dataset": {"scene": "source.json",
                                                                                     "views": 2}}
    data["optimize"]["parameters"]["materials.paint.albedo"] = {}
    (tmp_path / "scene.json").write_text(json.dumps(data))
    keep = tmp_path / "data" / "images" / "r_001.png"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"mine")
    with pytest.raises(SceneError, match=r"would overwrite images/r_001.png.*--force"):
        open_scene(tmp_path / "scene.json")
    assert keep.read_bytes() == b"mine" and not (tmp_path / "data" / "transforms.json").exists()
