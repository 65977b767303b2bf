"""A remeshed shape in the viewer (issue 15 follow-up, scenes/shape_sphere.json's kind of optimization): the
optimized mesh changes topology during the run (`renderer/optim/remesh.py`); snapshots carry its vertices and
faces (`Snapshot.meshes`), the 3D view rebuilds the mesh's GL buffers with them, and File > Save scene as
writes that mesh.

Without a window: the snapshot's meshes survive the attach protocol's encoding. Under Xvfb: a small shape
scene is remeshed at step 2; the viewport's index buffer then holds the optimizer's current faces and shows
the mesh, and the saved scene loads with the current vertices and faces.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from drstudio.renderer.optim import commands

SESSION_TIMEOUT = 90.0


def write_scene(folder: Path) -> Path:
    """An ellipsoid-ish target (a scaled icosphere) recovered from a coarse icosphere of its own topology,
    remeshed after step 2 to a shorter edge length; two 32x32 views."""
    scene = {
        "version": 1,
        "meshes": [{"name": "blob", "primitive": {"type": "icosphere", "radius": 0.8, "subdivisions": 2},
                    "material": "clay", "transform": {"scale": [1.2, 0.9, 1.0]}}],
        "materials": [{"name": "clay", "albedo": [0.75, 0.7, 0.65]}],
        "lights": [{"name": "key", "type": "directional", "direction": [-0.5, -0.7, -0.5], "intensity": 2.5},
                   {"name": "fill", "type": "ambient", "color": [0.2, 0.2, 0.2]}],
        "cameras": [{"name": "c0", "width": 32, "height": 32, "fov_y": 40,
                     "look_at": {"eye": [0.0, 0.5, 3.5], "target": [0, 0, 0]}},
                    {"name": "c1", "width": 32, "height": 32, "fov_y": 40,
                     "look_at": {"eye": [3.5, 0.5, 0.0], "target": [0, 0, 0]}}],
        "background": [0.05, 0.05, 0.05],
        "render": {"mode": "antialias"},
        "optimize": {
            "parameters": {"meshes.blob.vertices": {
                "init": {"primitive": {"type": "icosphere", "radius": 0.9, "subdivisions": 1}},
                "remesh": {"steps": [2], "edge_length": [0.25]}}},
            "targets": {"cameras": ["c0", "c1"]},
            "loss": {"l2": 1.0},
            "optimizer": {"type": "adam", "lr": 0.01},
            "steps": 1000,
        },
    }
    path = folder / "shape.json"
    path.write_text(json.dumps(scene))
    return path


@pytest.mark.parametrize("device", ["cpu"])  # a remote message round trip: no renderer work
def test_snapshot_meshes_survive_the_attach_encoding(device):
    from drstudio.renderer.optim.engine import Snapshot
    from drstudio.renderer.optim.remote import decode, encode, snapshot_message

    v = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    f = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6]], np.int32)
    msg = decode(encode(snapshot_message(Snapshot(meshes={"blob": {"vertices": v, "faces": f}}), {})))
    np.testing.assert_array_equal(msg["meshes"]["blob"]["vertices"], v)
    np.testing.assert_array_equal(msg["meshes"]["blob"]["faces"], f)


def test_remeshed_shape_in_the_viewer(display, tmp_path):
    from drstudio.app.viewer import menus, run_viewer
    from drstudio.renderer.loading import load_scene

    path = write_scene(tmp_path)
    got: dict = {}
    t0 = None

    def script(state):
        yield
        while state.snapshot.render is None:
            yield
        vp = state.gl.viewport
        start = len(state.faces("blob"))
        got["start_faces"] = start
        state.send(commands.Step, 3)
        while state.snapshot.step < 3 or state.snapshot.state == "running":
            yield
        for _ in range(4):
            yield
        model = state.problem.model
        faces = model.faces("meshes.blob.vertices")
        got["faces"] = len(faces)
        assert len(faces) != start, "the remesh did not change the topology"
        np.testing.assert_array_equal(state.faces("blob"), faces)
        g = vp.meshes["blob"]
        assert g.faces is state.faces("blob") and g.ibo.size == faces.size * 4 and g.n == len(g.world)
        verts = state.problem.ds.get("meshes.blob.vertices")
        np.testing.assert_allclose(state.values["meshes.blob.vertices"], verts, atol=1e-6)
        # the 3D view shows the mesh: lit pixels around its projected center
        img = state.screenshot()
        cx, cy = state.project([[0.0, 0.0, 0.0]])[0]
        assert img[int(cy) - 3:int(cy) + 4, int(cx) - 3:int(cx) + 4].mean() > 40
        # File > Save scene as, through the menu's writer
        dest = tmp_path / "saved" / "shape_saved.json"
        dest.parent.mkdir()
        menus._write(state, "scene", dest)
        assert not state.send_error, state.send_error
        saved = load_scene(dest).meshes["blob"]
        np.testing.assert_array_equal(saved.faces, faces)
        np.testing.assert_allclose(saved.vertices, verts, atol=1e-5)
        got["saved"] = [p.name for p in state.saved]

    gen = None

    def on_frame(state):
        nonlocal gen, t0
        t0 = t0 or time.monotonic()
        if time.monotonic() - t0 > SESSION_TIMEOUT:
            got["error"] = AssertionError(f"session exceeded {SESSION_TIMEOUT} s")
            state.quit = True
            return
        gen = gen or script(state)
        try:
            next(gen)
        except StopIteration:
            got["done"] = True
            state.quit = True
        except BaseException as exc:
            got["error"] = exc
            state.quit = True

    rc = run_viewer(str(path), device="cpu", max_frames=100000, on_frame=on_frame)
    if "error" in got:
        raise got["error"]
    assert got.get("done") and rc == 0, got
    print("remesh session:", got)
