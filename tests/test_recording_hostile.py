"""Hostile recordings (issue 14): everything a recording names stays inside its folder, the scene copy's
hashes cover every file the scene reads, the scene copy holds exactly the scene's file references,
verify refuses a log with nothing to re-execute, and repeated or reordered sequence numbers are reported.
Each case tampers with a copy of one small recorded session."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from drstudio.renderer.recording.scenecopy import copy_scene, sha256


def test_the_scene_copy_holds_exactly_the_scene_file_references(tmp_path):
    """Only schema file-reference fields are copied: a description naming a file next to the scene is text;
    an asset outside the scene's folder goes to _external/ (the copy points there); a transforms.json brings
    the images its frames name (extension-less file_path: .png)."""
    src = tmp_path / "src"
    (src / "assets").mkdir(parents=True)
    (src / "data" / "train").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (src / "notes.txt").write_text("private notes, not an asset")
    (src / "secret.png").write_bytes(b"not referenced")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(src / "assets" / "a.png")
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(tmp_path / "shared" / "rough.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "data" / "train" / "r_0.png")
    (src / "data" / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": [
        {"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist(), "note": "../secret.png"}]}))
    doc = {"version": 1, "description": "notes.txt",
           "meshes": [{"name": "ball", "primitive": {"type": "sphere"}, "material": "paint"}],
           "materials": [{"name": "paint", "albedo": "assets/a.png", "roughness": "../shared/rough.png"}],
           "cameras": [{"name": "secret", "width": 8, "height": 8, "fov_y": 40,
                        "look_at": {"eye": [0, 0, 3], "target": [0, 0, 0]}}],
           "optimize": {"parameters": {"materials.paint.albedo": {}}, "targets": {"transforms": "data/transforms.json"},
                        "steps": 2}}
    (src / "scene.json").write_text(json.dumps(doc))
    info = copy_scene(src / "scene.json", tmp_path / "copy")
    external = "_external/" + sha256(tmp_path / "shared" / "rough.png")[:12] + "_rough.png"
    assert set(info["files"]) == {"scene.json", "assets/a.png", external, "data/transforms.json",
                                  "data/train/r_0.png"}
    assert not (tmp_path / "copy" / "notes.txt").exists() and not (tmp_path / "copy" / "secret.png").exists()
    copied = json.loads((tmp_path / "copy" / "scene.json").read_text())
    assert copied["materials"][0]["roughness"] == external and copied["description"] == "notes.txt"
    transforms = "data/transforms.json"
    assert (tmp_path / "copy" / transforms).read_bytes() == (src / transforms).read_bytes()
