"""Hostile recordings (issue 14): everything a recording names stays inside its folder, the scene copy's
hashes cover every file the scene reads, the scene copy holds exactly the scene's file references,
verify refuses a log with nothing to re-execute, and repeated or reordered sequence numbers are reported.
Each case tampers with a copy of one small recorded session."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from drstudio.renderer.recording import RecordingError, load_recording, verify
from drstudio.renderer.recording import format as fmt
from drstudio.renderer.recording.scenecopy import copy_scene, sha256
from PIL import Image
from test_recording import LIGHT, SMALL, record_session, tiny_scene


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    scene = tiny_scene(folder / "scene", size=12)
    record_session(folder / "rec", scene, steps=6, edits=[(3, "set_lr", (LIGHT, 0.1))], options=SMALL)
    return folder / "rec"


@pytest.fixture
def work(recorded, tmp_path):
    """A copy of the recording, inside tmp_path/box, next to a file outside it (tmp_path/outside.bin)."""
    (tmp_path / "outside.bin").write_bytes(b"secret outside the recording")
    return Path(shutil.copytree(recorded, tmp_path / "box" / "rec"))


def records(path: Path) -> list[dict]:
    return [fmt.decode_line(line) for line in (path / fmt.LOG_FILE).read_bytes().split(b"\n")[:-1]]


def write_records(path: Path, recs: list[dict]) -> None:
    """The log of `recs`, every line with a valid checksum (a deliberate edit, not damage)."""
    (path / fmt.LOG_FILE).write_bytes(b"".join(fmt.encode_record(r) for r in recs))


def edit_meta(path: Path, fn) -> None:
    meta = json.loads((path / fmt.META_FILE).read_text())
    fn(meta)
    (path / fmt.META_FILE).write_text(json.dumps(meta))


def first(recs: list[dict], kind: str, **match) -> dict:
    return next(r for r in recs if r["type"] == kind and all(r.get(k) == v for k, v in match.items()))


# ---- files named by the log: inside the folder, or the recording is refused ----------------------------

@pytest.mark.parametrize("name", ["ABSOLUTE", "../../outside.bin", "keyframes/../../../outside.bin", "/etc/passwd"])
@pytest.mark.parametrize("kind, key", [("keyframe", "file"), ("thumb", "file"), ("thumb", "target")])
def test_log_entries_outside_the_folder_are_refused(work, kind, key, name):
    recs = records(work)
    rec = first(recs, kind)
    rec[key] = str(work.parent.parent / "outside.bin") if name == "ABSOLUTE" else name
    write_records(work, recs)
    with pytest.raises(RecordingError) as info:
        load_recording(work, quiet=True)
    assert f"record {rec['seq']} ({kind} at {rec['at']}): {key}" in str(info.value)
    assert "outside the recording folder" in str(info.value)


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_symbolic_link_out_of_the_folder_is_refused(work, link):
    rec = first(records(work), "keyframe")
    if link == "file":  # keyframes/<at>.npz -> a file outside
        (work / rec["file"]).unlink()
        (work / rec["file"]).symlink_to(work.parent.parent / "outside.bin")
    else:  # keyframes/ -> a folder outside holding the same names
        shutil.move(work / "keyframes", work.parent.parent / "keyframes")
        (work / "keyframes").symlink_to(work.parent.parent / "keyframes")
    with pytest.raises(RecordingError, match=r"keyframe at \d+\): file: 'keyframes/.*' leads outside the "
                                             r"recording folder \(through a symbolic link\)"):
        load_recording(work, quiet=True)


# ---- the scene copy: inside the folder, every file it reads hashed --------------------------------------

def test_scene_copy_names_outside_the_folder_are_refused(work):
    edit_meta(work, lambda m: m["scene"].update(file="../../outside.bin"))
    with pytest.raises(RecordingError, match=r"meta.json: scene.file: '../../outside.bin' is outside"):
        load_recording(work, quiet=True)


def test_a_scene_copy_hash_entry_outside_the_folder_is_refused(work):
    outside = str(work.parent.parent / "outside.bin")
    edit_meta(work, lambda m: m["scene"]["files"].update({outside: "0" * 64}))
    with pytest.raises(RecordingError, match=r"meta.json: scene.files: '/.*outside.bin' is outside"):
        load_recording(work, quiet=True)


def test_a_scene_copy_that_references_a_file_outside_is_refused_even_with_matching_hashes(work):
    scene = work / "scene" / "tiny.json"
    doc = json.loads(scene.read_text())
    doc["materials"][0]["albedo"] = "../../../outside.bin"
    scene.write_text(json.dumps(doc))
    edit_meta(work, lambda m: m["scene"]["files"].update({"scene/tiny.json": sha256(scene)}))
    with pytest.raises(RecordingError, match=r"scene copy scene/tiny.json: materials\[0\].albedo: .*outside.bin is "
                                             r"outside the recording folder"):
        load_recording(work, quiet=True)


def test_a_scene_copy_asset_linked_out_of_the_folder_is_refused(work):
    asset = work / "scene" / "assets" / "tex.png"
    shutil.copy(asset, work.parent.parent / "tex.png")
    asset.unlink()
    asset.symlink_to(work.parent.parent / "tex.png")
    with pytest.raises(RecordingError, match=r"scene.files: 'scene/assets/tex.png' leads outside"):
        load_recording(work, quiet=True)


@pytest.mark.parametrize("files, message", [
    ({}, "scene.files does not list the scene file 'scene/tiny.json'"),
    ("scene only", r"scene.files does not list scene/assets/tex.png, which scene copy scene/tiny.json: "
                   r"materials\[0\].albedo names"),
])
def test_the_scene_copy_hash_check_cannot_be_skipped(work, files, message):
    def strip(meta):
        all_files = meta["scene"]["files"]
        meta["scene"]["files"] = {} if files == {} else {"scene/tiny.json": all_files["scene/tiny.json"]}
    edit_meta(work, strip)
    with pytest.raises(RecordingError, match=message):
        load_recording(work, quiet=True)


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


# ---- verify needs steps; sequence numbers are checked ----------------------------------------------

@pytest.mark.parametrize("log, message", [
    (b"", "nothing to verify: events.jsonl holds no record (it is empty)"),
    (bytes(np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8)), "nothing to verify: events.jsonl is "
                                                                               "unreadable: none of its"),
    (None, "nothing to verify: events.jsonl is missing"),
])
def test_verify_of_a_log_without_steps_fails(work, log, message):
    from drstudio.app import cli

    if log is None:
        (work / fmt.LOG_FILE).unlink()
    else:
        (work / fmt.LOG_FILE).write_bytes(log)
    rec = load_recording(work, quiet=True)
    with pytest.raises(RecordingError, match=re.escape(message)):
        verify(rec)
    assert cli.main(["replay", str(work), "--verify"]) == 2  # a user mistake, not a divergence (1)


def test_repeated_sequence_numbers_are_reported_and_skipped(work):
    recs = records(work)
    step = first(recs, "step", at=2)
    forged = dict(step, loss=123.0)  # a second record 2..: the first one is kept
    write_records(work, recs[:recs.index(step) + 1] + [forged] + recs[recs.index(step) + 1:])
    rec = load_recording(work, quiet=True)
    assert [r["seq"] for r in rec.records] == [r["seq"] for r in recs]
    assert rec.steps[2]["loss"] == step["loss"]
    line = recs.index(step) + 2
    assert any(f"record {step['seq']} at line {line} repeats the sequence number of line {line - 1}" in w
               for w in rec.warnings), rec.warnings


def test_records_out_of_order_are_reported_and_read_in_sequence_order(work):
    recs = records(work)
    i = recs.index(first(recs, "step", at=4))
    swapped = recs[:i] + [recs[i + 1], recs[i]] + recs[i + 2:]
    write_records(work, swapped)
    rec = load_recording(work, quiet=True)
    assert [r["seq"] for r in rec.records] == sorted(r["seq"] for r in recs)
    assert any(f"record {recs[i]['seq']} at line {i + 2} comes after record {recs[i + 1]['seq']}" in w
               and "out of sequence order" in w for w in rec.warnings), rec.warnings


@pytest.mark.parametrize("field, value", [("at", "x"), ("at", None), ("seq", True), ("loss", [1]),
                                          ("terms", {"l2": "big"}), ("type", 5)])
def test_a_checksummed_record_of_the_wrong_shape_is_skipped(work, field, value):
    recs = records(work)
    step = first(recs, "step", at=1)
    step[field] = value
    write_records(work, recs)
    rec = load_recording(work, quiet=True)
    assert 1 not in rec.steps and len(rec.steps) == 5
    assert any("is not a valid record" in w for w in rec.warnings), rec.warnings
    rec.history()


def test_an_untampered_copy_loads_without_warnings(work):
    rec = load_recording(work, quiet=True)
    assert rec.warnings == [] and len(rec.steps) == 6 and os.path.samefile(rec.path, work)


@pytest.mark.parametrize("key, value, message", [
    ("start", [], "meta.json: start: expected"),
    ("start", {"at": "0"}, "meta.json: start: expected"),
    ("parent", {"at": 3}, "meta.json: parent: expected null or"),
    ("seed", 1.5, "meta.json: seed: expected an integer"),
    ("seed", "DELETE", "meta.json: seed: expected an integer"),
    ("start", {"at": 0, "step": 0}, "meta.json: start: expected"),
    ("version", True, "invalid format version True"),
    ("scene", {"file": "scene/tiny.json", "files": ["scene/tiny.json"]}, "meta.json: scene: expected null or"),
])
def test_meta_fields_of_the_wrong_type_are_refused(work, key, value, message):
    edit_meta(work, lambda m: m.pop(key) if value == "DELETE" else m.update({key: value}))
    with pytest.raises(RecordingError, match=re.escape(message)):
        rec = load_recording(work, quiet=True)
        rec.summary()
