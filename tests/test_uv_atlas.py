"""renderer.uv_atlas: a mesh without UVs gets an atlas that keeps its shape, covers the texture square
without overlaps, and lets a texture vary across the surface."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from drstudio.renderer.uv_atlas import add_atlas, atlas, has_uvs
from support.scenes import icosphere, mesh


def test_has_uvs():
    assert not has_uvs(np.zeros((5, 2), np.float32))
    assert has_uvs(np.array([[0, 0], [0.5, 0.1]], np.float32))


def test_atlas_keeps_the_shape_and_packs_charts():
    v, f = icosphere(1.0, 2)
    vmap, faces, uvs = atlas(v, f, resolution=256)
    # the same triangles in space: re-indexed through vmapping
    np.testing.assert_array_equal(vmap[faces], f)
    assert uvs.min() >= 0 and uvs.max() <= 1 and len(uvs) >= len(v)  # seams split vertices
    # charts do not overlap: the uv triangles' areas add up to the area of their union (rasterized)
    tri = uvs[faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    n = 512
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / n
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    covered = np.zeros(len(pts), np.int32)
    for a, b, c in tri:
        d = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if abs(d) < 1e-12:
            continue
        l1 = ((b[1] - c[1]) * (pts[:, 0] - c[0]) + (c[0] - b[0]) * (pts[:, 1] - c[1])) / d
        l2 = ((c[1] - a[1]) * (pts[:, 0] - c[0]) + (a[0] - c[0]) * (pts[:, 1] - c[1])) / d
        covered += (l1 >= 0) & (l2 >= 0) & (1 - l1 - l2 >= 0)
    assert covered.max() <= 2  # shared edges may count twice, interiors never
    assert abs((covered > 0).mean() - area) < 0.02 and area > 0.3  # a well-used square


def test_add_atlas_on_a_scene_mesh():
    v, f = icosphere(0.5, 1)
    m = mesh("ball", v, f, "paint")
    assert not has_uvs(m.uvs)
    m2 = add_atlas(m, resolution=128)
    assert has_uvs(m2.uvs) and m2.material == "paint" and m2.faces.dtype == np.int32
    a = trimesh.Trimesh(m.vertices, m.faces).area
    b = trimesh.Trimesh(m2.vertices, m2.faces).area
    assert b == pytest.approx(a, rel=1e-6)


# -- wired into loading (issue 13 item 5): a texture on a mesh without UVs ------------------------------------

VIEWS = {"front": [0, 0.3, 3.2], "back": [0, 0.3, -3.2], "left": [-3.2, 0.3, 0], "right": [3.2, 0.3, 0],
         "top": [0.3, 3.2, 0.2], "bottom": [0.3, -3.2, 0.2]}


def uvless_scene(folder, tex: int = 64, optimize: dict | None = None):
    """An icosphere OBJ without `vt` lines, a random tex x tex albedo texture, ambient light only (a pixel's
    color is the texture at its uv), six views."""
    import json

    from PIL import Image

    v, f = icosphere(1.0, 2)
    with open(folder / "ball.obj", "w") as out:
        out.writelines(f"v {x:.7f} {y:.7f} {z:.7f}\n" for x, y, z in v)
        out.writelines(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in f)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((tex, tex, 3)) * 255).astype(np.uint8)).save(folder / "tex.png")
    doc = {"version": 1, "meshes": [{"name": "ball", "file": "ball.obj", "material": "paint"}],
           "materials": [{"name": "paint", "albedo": "tex.png"}],
           "lights": [{"name": "sky", "type": "ambient", "color": [1, 1, 1]}],
           "cameras": [{"name": n, "width": 48, "height": 48, "fov_y": 40, "look_at": {"eye": e, "target": [0, 0, 0]}}
                       for n, e in VIEWS.items()],
           "render": {"mode": "hard", "shadows": False, "mipmaps": False}}
    if optimize:
        doc["optimize"] = optimize
    path = folder / "scene.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_texture_on_a_uvless_mesh_gets_a_deterministic_atlas_logged_once(tmp_path, capsys):
    from drstudio.renderer import uv_atlas
    from drstudio.renderer.device_scene import DeviceScene
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.render import render

    path = uvless_scene(tmp_path)
    uv_atlas._CACHE.clear()
    first = load_scene(path)
    err = capsys.readouterr().err
    assert err.count("automatic UV atlas") == 1 and "mesh 'ball'" in err and "charts" in err, err
    uv_atlas._CACHE.clear()  # xatlas itself gives the same atlas again (recordings replay through it)
    again = load_scene(path)
    load_scene(path)
    assert capsys.readouterr().err.count("automatic UV atlas") == 1  # once per process and geometry
    m1, m2 = first.meshes["ball"], again.meshes["ball"]
    assert has_uvs(m1.uvs)
    for leaf in ("vertices", "faces", "uvs"):
        np.testing.assert_array_equal(getattr(m1, leaf), getattr(m2, leaf))
    # the texture varies over the surface: under ambient light each pixel is the texture at its uv, so the
    # ball's pixels spread like the random texture's values (one texel everywhere would be a flat disk)
    image = render(DeviceScene(first, "cpu"), "front").numpy().reshape(48, 48, 3)
    ball = image[14:34, 14:34].reshape(-1, 3)
    texture = first.materials["paint"].albedo.reshape(-1, 3)
    assert ball.std(axis=0).min() > 0.5 * texture.std(axis=0).min()


def covered_texels(uvs: np.ndarray, faces: np.ndarray, n: int) -> np.ndarray:
    """(n, n) bool: texel centers inside some uv triangle (row = v * n, drstudio's top-row-first convention)."""
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / n
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    covered = np.zeros(len(pts), bool)
    for a, b, c in uvs[faces]:
        d = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if abs(d) < 1e-12:
            continue
        l1 = ((b[1] - c[1]) * (pts[:, 0] - c[0]) + (c[0] - b[0]) * (pts[:, 1] - c[1])) / d
        l2 = ((c[1] - a[1]) * (pts[:, 0] - c[0]) + (a[0] - c[0]) * (pts[:, 1] - c[1])) / d
        covered |= (l1 >= 0) & (l2 >= 0) & (1 - l1 - l2 >= 0)
    return covered.reshape(n, n)


def test_a_texture_optimization_on_a_uvless_mesh_reaches_most_texels(tmp_path):
    """Without the atlas every vertex sampled uv (0, 0): 0.024 % of the texels saw a gradient (issue 13). With
    it, one step over the six views sends gradient to more than half of the texels the atlas covers."""
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.optim.problem import Problem

    opt = {"parameters": {"materials.paint.albedo": {"init": 0.5}}, "targets": {"cameras": list(VIEWS)},
           "loss": {"l2": 1.0}, "optimizer": {"type": "adam", "lr": 0.02}, "steps": 1, "batch_views": 6}
    scene = load_scene(uvless_scene(tmp_path, optimize=opt))
    problem = Problem(scene, "cpu")
    problem.step()
    grad = np.abs(problem._last_param_grads["materials.paint.albedo"]).reshape(64, 64, 3).sum(axis=-1)
    mesh = scene.meshes["ball"]
    covered = covered_texels(mesh.uvs, mesh.faces, 64)
    assert covered.mean() > 0.3
    seen = (grad > 0) & covered
    assert seen.sum() / covered.sum() > 0.5, seen.sum() / covered.sum()


def test_an_atlas_that_cannot_apply_is_an_error_naming_the_mesh(tmp_path):
    """A per-vertex list init of the UV-less mesh (the atlas re-indexes its vertices) cannot apply: a SceneError
    naming the mesh, not the silent uv (0, 0) nor a shape mismatch later. (A mesh file init is read through the
    atlas: tests/test_scene_loading.py::test_file_inits.)"""
    from drstudio.renderer.errors import SceneError
    from drstudio.renderer.loading import load_scene

    v, _ = icosphere(1.0, 2)
    opt = {"parameters": {"materials.paint.albedo": {"init": 0.5}, "meshes.ball.colors": {"init": np.ones_like(v)
                                                                                          .tolist()}},
           "targets": {"cameras": ["front"]}, "steps": 1}
    path = uvless_scene(tmp_path, optimize=opt)
    with pytest.raises(SceneError, match=r"meshes\[0\].file: mesh 'ball' has no texture coordinates and its material "
                                         r"'paint' has a 64x64 texture: an automatic UV atlas splits"):
        load_scene(path)


def test_xatlas_failure_is_an_error_naming_the_mesh(tmp_path, monkeypatch):
    from drstudio.renderer import uv_atlas
    from drstudio.renderer.errors import SceneError
    from drstudio.renderer.loading import load_scene

    def fail(*a, **k):
        raise ValueError("xatlas packed the 900 charts into 2 atlases, expected one")

    monkeypatch.setattr(uv_atlas, "atlas", fail)
    uv_atlas._CACHE.clear()
    with pytest.raises(SceneError, match=r"meshes\[0\].file: mesh 'ball' .* no automatic UV atlas could be made"):
        load_scene(uvless_scene(tmp_path))


def test_save_scene_keeps_the_atlas(tmp_path):
    """File > Save scene as of a scene with an automatic atlas: an unchanged mesh keeps its file (the same atlas
    is made again on load), a changed one is written with the atlas' uvs; both reload with the same uvs."""
    from drstudio.app.viewer.save_scene import save_scene_as
    from drstudio.renderer.loading import load_scene

    scene = load_scene(uvless_scene(tmp_path))
    mesh = scene.meshes["ball"]
    out = tmp_path / "saved"
    out.mkdir()
    save_scene_as(scene, {}, out / "same.json")
    np.testing.assert_array_equal(load_scene(out / "same.json").meshes["ball"].uvs, mesh.uvs)
    moved = mesh.vertices * 1.1
    files = save_scene_as(scene, {"meshes.ball.vertices": moved}, out / "moved.json")
    assert any(f.suffix == ".obj" for f in files)
    back = load_scene(out / "moved.json").meshes["ball"]
    np.testing.assert_allclose(back.uvs, mesh.uvs, atol=1e-6)
    np.testing.assert_allclose(back.vertices, moved, atol=1e-5)


def test_a_recording_of_an_atlas_mesh_replays(tmp_path):
    """The recording's scene copy holds the UV-less OBJ; loading it again makes the same atlas (from scratch:
    the cache is cleared), so the recorded session verifies."""
    from drstudio.renderer import uv_atlas
    from drstudio.renderer.recording import load_recording, verify
    from test_recording import SMALL, record_session

    opt = {"parameters": {"materials.paint.albedo": {"init": 0.5}}, "targets": {"cameras": ["front", "left"]},
           "loss": {"l2": 1.0}, "optimizer": {"type": "adam", "lr": 0.05}, "steps": 4, "batch_views": 1}
    path = uvless_scene(tmp_path, tex=32, optimize=opt)
    record_session(tmp_path / "rec", path, steps=4, edits=[], options=SMALL)
    uv_atlas._CACHE.clear()
    report = verify(load_recording(tmp_path / "rec"))
    assert report.ok and report.steps_checked == 4, report.message()


def test_charts_of_a_larger_mesh_are_bounded_in_area():
    """xatlas grows charts by cost alone (6 charts over a smooth 20k-triangle sphere took 22 s here); above
    2 * FACES_PER_CHART triangles a chart's area is bounded to about FACES_PER_CHART triangles'."""
    from drstudio.renderer.uv_atlas import FACES_PER_CHART

    v, f = icosphere(1.0, 4)  # 5120 triangles
    vmap, faces, uvs, charts = atlas(v, f, resolution=512, with_charts=True)
    np.testing.assert_array_equal(vmap[faces], f)
    assert charts >= len(f) // FACES_PER_CHART // 2 and uvs.min() >= 0 and uvs.max() <= 1
