"""Compact keyframes (format version 3, issue 13 item 7): float16 values for display plus SHA-256 digests of
the exact state, so verify stays bit-exact and resume re-executes from the full keyframe before them; full
keyframes compressed losslessly; older (uncompressed) keyframes still read; damaged compressed data is a
RecordingError naming the file (exit 2 from the CLI)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from drstudio.app import cli
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.recording import RecorderOptions, RecordingError, load_recording, resume_problem, verify
from drstudio.renderer.recording.state import (
    Keyframe,
    array_digest,
    capture_state,
    compare_state,
    restore_state,
    write_keyframe,
)
from test_recording import ROOT, record_session

COMPACT = RecorderOptions(keyframe_every=4, thumb_every=10, full_keyframe_bytes_per_step=1)  # none full


def field_scene(folder: Path) -> Path:
    """A 12^3 voxel grid (SH 0, occupancy grid) on an 8-view 16x16 dataset of the texture scene."""
    from drstudio.renderer.datasets import DatasetOptions, generate_dataset

    generate_dataset(load_scene(ROOT / "scenes" / "texture.json"), folder / "data",
                     DatasetOptions(views=8, width=16, height=16), device="cpu")
    doc = {"version": 1,
           "cameras": [{"name": "preview", "width": 16, "height": 16, "fov_y": 40,
                        "look_at": {"eye": [0, 0.8, 3.5], "target": [0, 0, 0]}}],
           "fields": [{"name": "nerf", "type": "voxel_grid", "resolution": 12, "aabb": [[-1.05] * 3, [1.05] * 3],
                       "samples_per_ray": 24, "occupancy": {"resolution": 12, "update_every": 3, "threshold": 0.2}}],
           "optimize": {"parameters": {"fields.nerf.density": {"lr": 0.5}, "fields.nerf.sh": {"lr": 0.2}},
                        "targets": {"transforms": "data/transforms.json"}, "loss": {"l2": 1.0},
                        "optimizer": {"type": "adam", "lr": 0.1}, "steps": 16, "rays_per_batch": 256}}
    scene = folder / "field.json"
    scene.write_text(json.dumps(doc))
    return scene


@pytest.fixture(scope="module")
def field_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compact")
    scene = field_scene(folder)
    record_session(folder / "rec", scene, steps=16, edits=[], options=COMPACT)
    return folder / "rec", scene


def test_keyframe_round_trip_full_and_compact(field_run, tmp_path):
    _, scene = field_run
    problem = Problem(load_scene(scene), "cpu")
    for _ in range(4):
        problem.step()
    state, arrays = capture_state(problem, at=4, sched_steps=problem.steps, reason="periodic")
    write_keyframe(tmp_path / "full.npz", state, arrays, fsync=False)
    write_keyframe(tmp_path / "compact.npz", state, arrays, fsync=False, compact=True)
    full, small = Keyframe.read(tmp_path / "full.npz"), Keyframe.read(tmp_path / "compact.npz")
    assert not full.compact and small.compact
    for path, v in full.values.items():  # full: exact; compact: float16 of the same values, read as float32
        assert np.array_equal(v, arrays[f"value/{path}"])
        assert small.values[path].dtype == np.float32
        np.testing.assert_array_equal(small.values[path], v.astype(np.float16).astype(np.float32))
    assert all(len(full.optimizer[b]) == 2 for b in ("exp_avg", "exp_avg_sq"))
    assert small.optimizer["exp_avg"] == [] and set(small.extra) == {"occupancy.nerf.occupied", "psnr_test_db"}
    assert np.array_equal(small.extra["occupancy.nerf.occupied"], arrays["extra/occupancy.nerf.occupied"])
    assert small.digests == {k: array_digest(a) for k, a in arrays.items() if not k.startswith("truth/")}
    assert (tmp_path / "compact.npz").stat().st_size < (tmp_path / "full.npz").stat().st_size / 2
    # the state it describes compares equal, bit for bit; one ulp anywhere is a difference
    assert compare_state(problem, small, 1e-5) is None and compare_state(problem, full, 1e-5) is None
    density = problem.ds.get("fields.nerf.density")
    density.flat[7] = np.nextafter(density.flat[7], np.float32(np.inf))
    problem.ds.set("fields.nerf.density", density)
    what, err = compare_state(problem, small, 1e-5)
    assert "fields.nerf.density" in what and "not bit-identical" in what and err < 1e-3
    assert compare_state(problem, full, 1e-5) is None  # the full keyframe's tolerance (1e-5) lets 1 ulp pass
    with pytest.raises(ValueError, match="compact"):
        restore_state(problem, small)


def test_verify_is_bit_exact_through_compact_keyframes(field_run):
    folder, _ = field_run
    rec = load_recording(folder)
    encodings = {at: r["encoding"] for at, r in rec.keyframes.items()}
    # a fresh session's start is what the scene copy builds: it need not be restorable from the file
    assert encodings == {0: "compact", 4: "compact", 8: "compact", 12: "compact", 16: "compact"}
    report = verify(rec)
    assert report.ok and report.keyframes_checked == 5 and report.steps_checked == 16, report.message()


def test_resume_from_a_compact_keyframe_re_executes_to_it(field_run):
    folder, _ = field_run
    rec = load_recording(folder)
    problem, parent = resume_problem(rec, 8)
    assert parent["at"] == 8 and problem.step_index == 8
    assert [problem.step().loss for _ in range(8, 16)] == [rec.steps[at]["loss"] for at in range(8, 16)]
    problem, _ = resume_problem(rec)  # the last keyframe (the end, compact)
    assert problem.step_index == 16 and compare_state(problem, rec.keyframe(16), 0.0) is None


def test_a_resumed_session_starts_with_a_full_keyframe_and_verifies(field_run, tmp_path):
    """The start of a resumed session exists nowhere else: it is full, and verify restores it."""
    from drstudio.renderer.optim.engine import Engine
    from drstudio.renderer.recording import Recorder
    from test_recording import run_steps

    rec = load_recording(field_run[0])
    problem, parent = resume_problem(rec, 8)
    recorder = Recorder(tmp_path / "rec2", problem, options=COMPACT, parent=parent)
    engine = Engine(problem, publish_images=False)
    engine.add_listener(recorder)
    engine.start_thread()
    try:
        run_steps(engine, 6)
    finally:
        engine.shutdown()
        recorder.close()
    child = load_recording(tmp_path / "rec2")
    assert child.start_keyframe["encoding"] == "full" and child.keyframes[12]["encoding"] == "compact"
    assert [child.steps[at]["loss"] for at in range(8, 14)] == [rec.steps[at]["loss"] for at in range(8, 14)]
    report = verify(child)
    assert report.ok and report.steps_checked == 6, report.message()
    problem, _ = resume_problem(child, 12)  # re-executed from the full start keyframe at 8
    assert problem.step_index == 12


def test_old_uncompressed_keyframes_read_as_full(field_run, tmp_path):
    """Versions 1-2 wrote `np.savez` keyframes without an encoding: they read as full ones (and
    tests/data/recording_v1 still verifies: tests/test_commands.py)."""
    _, scene = field_run
    problem = Problem(load_scene(scene), "cpu")
    state, arrays = capture_state(problem, at=0, sched_steps=problem.steps, reason="start")
    payload = dict(arrays, **{"state.json": np.frombuffer(json.dumps(state).encode(), np.uint8)})
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, **payload)
    kf = Keyframe.read(tmp_path / "old.npz")
    assert not kf.compact and all(np.array_equal(kf.values[p], arrays[f"value/{p}"]) for p in kf.values)
    assert compare_state(problem, kf, 0.0) is None


def _damage(rec_dir: Path, at: int, how: str) -> str:
    """Damage the keyframe file at `at` and make its log record's CRC and size match (a hostile edit the
    checksum does not catch); returns its file name."""
    rec = load_recording(rec_dir)
    krec = rec.keyframes[at]
    file = rec_dir / krec["file"]
    data = bytearray(file.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # flip bytes inside the first compressed member's data
        start = 30 + int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
        for i in range(start + 40, start + 80):
            data[i] ^= 0x5A
    file.write_bytes(bytes(data))
    log = rec_dir / "events.jsonl"
    lines = log.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line:
            continue
        r = json.loads(line[9:])
        if r.get("type") == "keyframe" and r["file"] == krec["file"]:
            r["bytes"], r["crc32"] = len(data), zlib.crc32(bytes(data))
            text = json.dumps(r, separators=(",", ":")).encode()
            lines[i] = b"%08x %s" % (zlib.crc32(text), text)
    log.write_bytes(b"\n".join(lines))
    return krec["file"]


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_damaged_compressed_keyframe_is_refused_naming_the_file(field_run, tmp_path, capsys, how):
    import shutil

    work = Path(shutil.copytree(field_run[0], tmp_path / "rec"))
    name = _damage(work, 8, how)
    with pytest.raises(RecordingError, match=f"{name}.*(unreadable|corrupt)"):
        load_recording(work).keyframe(8)
    capsys.readouterr()
    assert cli.main(["optimize", "--resume", str(work), "--from-step", "8", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_keyframe_that_would_inflate_beyond_memory_is_refused(field_run, monkeypatch):
    """The zip's declared sizes are checked against half the machine's memory before anything is inflated
    (a decompression bomb declaring more is refused, not attempted)."""
    from drstudio.renderer.recording import state

    rec = load_recording(field_run[0])
    monkeypatch.setattr(state, "inflate_limit", lambda: 1000)
    with pytest.raises(RecordingError, match=r"keyframes/.*unreadable.*would inflate to"):
        rec.keyframe(4)


def test_cli_resume_from_a_compact_keyframe(field_run, tmp_path, capsys):
    rec = load_recording(field_run[0])
    out = tmp_path / "out"
    assert cli.main(["optimize", "--resume", str(field_run[0]), "--from-step", "12", "--steps", "16",
                     "--out", str(out)]) == 0
    capsys.readouterr()
    child = load_recording(out / "recording")
    assert child.parent["at"] == 12 and child.start_keyframe["encoding"] == "full"
    assert [child.steps[at]["loss"] for at in range(12, 16)] == [rec.steps[at]["loss"] for at in range(12, 16)]
    # --keyframes full: every keyframe of the new recording lossless
    assert cli.main(["optimize", "--resume", str(field_run[0]), "--from-step", "12", "--steps", "16",
                     "--keyframes", "full", "--out", str(tmp_path / "full")]) == 0
    capsys.readouterr()
    assert {r["encoding"] for r in load_recording(tmp_path / "full" / "recording").keyframes.values()} == {"full"}
