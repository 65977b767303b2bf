"""File > Save scene as (issue 17 item 7): the viewer's current values written into a scene file (changed
textures as PNG, changed meshes as OBJ beside it, referenced relatively) that loads with load_scene and
renders as the values it was saved from."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from drstudio.app.viewer.save_scene import save_scene_as
from drstudio.renderer import conventions as cv
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.loading import load_scene
from drstudio.renderer.params import ParamTable
from drstudio.renderer.render import render_view
from test_viewer import write_scene


def _render(ds: DeviceScene, camera: str) -> np.ndarray:
    return render_view(ds, ds.prepare(), camera).numpy()


def test_saved_scene_loads_and_renders_identically(tmp_path):
    scene = load_scene(write_scene(tmp_path))
    ds = DeviceScene(scene, "cpu")
    paths = [e.path for e in ParamTable.from_scene(scene).entries()]
    values = {p: np.array(ds.get(p), np.float32) for p in paths}
    # edits a viewer session makes: a light, a camera pose, a mesh transform and its vertices, a constant
    # material, a texture
    values["lights.key.position"] = np.array([0.9, 1.4, 1.2], np.float32)
    pose = values["cameras.side.pose"].copy()
    pose[:3] += [0.1, 0.2, -0.1]
    pose[3:] = cv.normalize(pose[3:] + np.array([0.02, 0.0, 0.01, 0.0]))
    values["cameras.side.pose"] = pose.astype(np.float32)
    values["meshes.ball.translation"] = np.array([0.1, 0.05, 0.0], np.float32)
    values["meshes.ball.vertices"] = values["meshes.ball.vertices"] * np.float32(1.05)
    values["materials.floor.roughness"] = np.full((1, 1, 1), 0.3, np.float32)
    albedo = values["materials.paint.albedo"].copy()
    albedo[4:10, 4:10] = [0.9, 0.2, 0.1]
    values["materials.paint.albedo"] = albedo
    for p, v in values.items():
        ds.set(p, v)

    out = tmp_path / "saved" / "edited.json"
    out.parent.mkdir()
    render = dataclasses.replace(scene.render, mode="hard")  # the viewer's Render menu changed it
    files = save_scene_as(scene, values, out, render)
    names = sorted(f.name for f in files)
    assert names == ["edited.ball.obj", "edited.json", "edited.paint.albedo.png"], names
    doc = json.loads(out.read_text())
    assert doc["meshes"][0]["file"] == "edited.ball.obj" and doc["materials"][0]["albedo"] == "edited.paint.albedo.png"
    assert "optimize" in doc and doc["render"] == {"mode": "hard", "shadows": True, "mipmaps": False}

    loaded = load_scene(out)
    saved = DeviceScene(loaded, "cpu")
    for p in paths:  # every value round-trips (textures up to 8-bit sRGB quantization)
        tol = 5e-3 if p == "materials.paint.albedo" else 1e-5  # half an 8-bit sRGB step near 1
        np.testing.assert_allclose(saved.get(p), values[p], atol=tol, err_msg=p)
    scene.render.mode = "hard"
    for cam in ("front", "side"):
        a, b = _render(ds, cam), _render(saved, cam)
        assert np.abs(a - b).max() < 0.01 and np.abs(a - b).mean() < 1e-3, (cam, np.abs(a - b).max())


def test_unchanged_scene_keeps_its_files_relinked(tmp_path):
    scene = load_scene(write_scene(tmp_path))
    ds = DeviceScene(scene, "cpu")
    values = {e.path: np.array(ds.get(e.path)) for e in ParamTable.from_scene(scene).entries()}
    out = tmp_path / "elsewhere" / "copy.json"
    out.parent.mkdir()
    assert save_scene_as(scene, values, out) == [out]  # nothing changed: no texture or mesh written
    doc = json.loads(out.read_text())
    assert doc["materials"][0]["albedo"] == "../albedo.png"
    a, b = _render(ds, "front"), _render(DeviceScene(load_scene(out), "cpu"), "front")
    assert np.abs(a - b).max() < 1e-5
