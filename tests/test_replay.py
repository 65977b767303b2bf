"""Replaying recordings (app/replay.py, renderer.recording.session): --verify re-executes a session with
edits to 1e-5 and reports the first divergence; resume continues from a keyframe into a new recording
that names its parent and follows the original exactly; --export writes a playable mp4/gif of the
expected length and size; the viewer's ReplaySource and Playback; the replay/optimize CLI."""

from __future__ import annotations

import json
import shutil

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from drstudio.app import cli
from drstudio.app.replay import VIDEO_SIZE, Playback, ReplaySource, export_video
from drstudio.renderer.recording import format as fmt
from drstudio.renderer.recording import load_recording, verify
from test_recording import ALBEDO, EDITS, LIGHT, record_session, tiny_scene


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A 20-step session with edits (set_lr, set_value, set_free, loss weight, target drag, view change)."""
    folder = tmp_path_factory.mktemp("replay")
    scene = tiny_scene(folder / "scene", steps=24, schedule={"type": "cosine", "min_lr": 0.005})
    record_session(folder / "rec", scene, steps=20)
    return folder / "rec", scene


# ---- verify ------------------------------------------------------------------------------------------

def test_verify_reproduces_a_session_with_edits(recorded):
    rec = load_recording(recorded[0])
    report = verify(rec, rtol=1e-5)
    assert report.ok, report.message()
    assert report.steps_checked == 20 and report.keyframes_checked == len(rec.keyframes)
    assert report.max_rel_error <= 1e-5 and "reproduced: 20 steps" in report.message()


def test_verify_reports_the_first_divergence(recorded, tmp_path):
    work = tmp_path / "tampered"
    shutil.copytree(recorded[0], work)
    lines = (work / fmt.LOG_FILE).read_bytes().split(b"\n")
    for i, line in enumerate(lines[:-1]):
        r = fmt.decode_line(line)
        if r["type"] == "step" and r["at"] in (11, 14):
            r["loss"] *= 1.001  # a plausible but wrong value, with a valid checksum
            lines[i] = fmt.encode_record(r)[:-1]
    (work / fmt.LOG_FILE).write_bytes(b"\n".join(lines))
    report = verify(load_recording(work))
    assert not report.ok and report.divergence["at"] == 11 and report.divergence["what"] == "loss"
    assert report.steps_checked == 11
    assert "diverged at timeline position 11" in report.message() and "relative error 0.000999" in report.message()
    # the CLI: exit 1 and the same message
    assert cli.main(["replay", str(work), "--verify"]) == 1


# ---- resume ------------------------------------------------------------------------------------------

def test_resume_continues_from_a_keyframe_into_a_new_recording(recorded, tmp_path, capsys):
    parent = load_recording(recorded[0])
    out = tmp_path / "resumed"
    assert cli.main(["optimize", "--resume", str(recorded[0]), "--from-step", "16", "--steps", "20",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"recording written to {out / 'recording'}" in printed.out
    child = load_recording(out / "recording")
    assert child.warnings == [] and child.parent["at"] == 16 and child.parent["path"] == str(recorded[0].resolve())
    assert child.first_at == 16 and child.last_at == 20
    # the continuation takes exactly the steps the original took from there (edits before 16 included)
    np.testing.assert_array_equal(child.history()["loss"], parent.history()["loss"][16:20])
    assert child.keyframe(20).state["active_view"] == "side"
    assert verify(child).ok  # a resumed recording verifies from its own start keyframe
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recording"]["path"] == str(out / "recording") and metrics["steps"] == 20


def test_resume_from_a_step_without_a_keyframe_lists_the_keyframes(recorded, capsys):
    assert cli.main(["optimize", "--resume", str(recorded[0]), "--from-step", "7"]) == 2
    err = capsys.readouterr().err
    assert "no keyframe at step 7; keyframes at: 0, 4, 5," in err and "Traceback" not in err


def test_recording_is_on_by_default_and_can_be_switched_off(tmp_path, capsys):
    scene = tiny_scene(tmp_path / "scene")
    assert cli.main(["optimize", str(scene), "--steps", "3", "--out", str(tmp_path / "a")]) == 0
    assert load_recording(tmp_path / "a" / "recording").last_at == 3
    assert cli.main(["optimize", str(scene), "--steps", "3", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "recording-2" / fmt.META_FILE).is_file()  # never overwrites a recording
    assert "recording written to" in capsys.readouterr().out
    assert cli.main(["optimize", str(scene), "--steps", "3", "--out", str(tmp_path / "b"), "--no-record"]) == 0
    assert not (tmp_path / "b" / "recording").exists()
    assert "recording written to" not in capsys.readouterr().out


# ---- export ------------------------------------------------------------------------------------------

def test_export_mp4_is_playable_with_the_expected_length_and_size(recorded, tmp_path, capsys):
    rec = load_recording(recorded[0])
    out = tmp_path / "session.mp4"
    assert cli.main(["replay", str(recorded[0]), "--export", str(out), "--fps", "5"]) == 0
    captured = capsys.readouterr()
    n = len(rec.thumbs)
    assert f"({n} frames, {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]}, {n / 5:.1f} s)" in captured.out
    assert "export session.mp4" in captured.err and "100%" in captured.err  # the progress bar
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(VIDEO_SIZE[1], VIDEO_SIZE[0], 3) for f in reader]
    assert meta["size"] == VIDEO_SIZE and meta["codec"].startswith("h264") and meta["fps"] == 5
    assert len(frames) == n and abs(meta["duration"] - n / 5) < 0.05
    assert frames[-1].std() > 10  # not blank: images and the curve are drawn


def test_export_gif(recorded, tmp_path):
    rec = load_recording(recorded[0])
    info = export_video(rec, tmp_path / "session.gif", fps=5, progress=False)
    frames = iio.imread(tmp_path / "session.gif", index=None)
    assert info["frames"] == len(rec.thumbs) == frames.shape[0]
    assert frames.shape[1:3] == (VIDEO_SIZE[1], VIDEO_SIZE[0])
    assert iio.immeta(tmp_path / "session.gif", index=0)["duration"] == 200  # ms (GIF stores centiseconds)
    with pytest.raises(ValueError, match="expected a .mp4 or .gif"):
        export_video(rec, tmp_path / "session.avi")


# ---- the viewer's replay source ---------------------------------------------------------------------

def test_replay_source_gives_snapshots_along_the_timeline(recorded):
    src = ReplaySource(recorded[0])
    assert (src.first_step, src.last_step) == (0, 20) and src.warnings == []
    assert [(m.step, m.kind) for m in src.edits] == [(a, k) for a, k, _ in EDITS if k != "set_active_view"]
    assert src.edits[1].label.startswith("set_value('lights.key.position', [1.2")
    start = src.snapshot_at(0)
    assert start.state == "replay" and np.isnan(start.loss) and start.history["loss"].size == 0
    assert set(start.values) == {ALBEDO, LIGHT} and start.render is not None and start.render.shape == (20, 20, 3)
    snap = src.snapshot_at(10)  # between keyframes 9 and 12: values of 9; the loss of step 9
    rec = src.recording
    assert src.values_step(10) == 9 and snap.step == 10
    assert snap.loss == rec.steps[9]["loss"] and len(snap.history["loss"]) == 10
    assert snap.free == (LIGHT,)  # the albedo was fixed at 9
    np.testing.assert_array_equal(snap.values[LIGHT], rec.keyframe(9).values[LIGHT])
    assert set(snap.errors) == {ALBEDO, LIGHT} and snap.errors[LIGHT] > 0
    np.testing.assert_array_equal(snap.render, rec.image(rec.thumbs[9]["file"]))
    late = src.snapshot_at(99)  # clamped
    assert late.step == 20 and late.active_view == "side" and len(late.history[f"grad.{LIGHT}"]) == 20
    assert src.targets_at(20)["lights.key.color"].tolist() == pytest.approx([1.0, 0.8, 0.6])
    assert src.scene is not None and ALBEDO in src.scene.params()
    errs = src.error_history(20)
    assert errs[LIGHT][0][0] == 0 and len(errs[LIGHT][0]) == len(src.keyframe_steps)


def test_playback_follows_the_recorded_pace(recorded):
    src = ReplaySource(recorded[0])
    play = Playback(src, speed=2.0)
    assert play.position == 0 and not play.playing
    play.play()
    half = src.duration / 2
    step = play.update(half / 2.0)  # at 2x, half of the recorded time takes a quarter of it
    assert src.time_at(step) <= half + 1e-9 < src.time_at(min(step + 1, src.last_step)) + 1e-9
    play.update(src.duration)
    assert play.position == src.last_step and not play.playing  # stops at the end
    play.seek(5)
    assert play.position == 5
    play.toggle()
    assert play.playing
    with pytest.raises(ValueError, match="speed"):
        Playback(src, speed=0)


# ---- the replay command ------------------------------------------------------------------------------

def test_replay_cli_user_errors(recorded, tmp_path, capsys):
    assert cli.main(["replay", str(tmp_path / "nope")]) == 2
    assert "no such recording folder" in capsys.readouterr().err
    future = tmp_path / "future"
    shutil.copytree(recorded[0], future)
    meta = json.loads((future / fmt.META_FILE).read_text())
    meta["version"] = 99
    (future / fmt.META_FILE).write_text(json.dumps(meta))
    assert cli.main(["replay", str(future), "--verify"]) == 2
    assert "recording format version 99" in capsys.readouterr().err
    assert cli.main(["replay", str(recorded[0]), "--export", str(tmp_path / "x.avi")]) == 2


def test_replay_cli_prints_what_a_damaged_recording_lost(recorded, tmp_path, capsys):
    work = tmp_path / "cut"
    shutil.copytree(recorded[0], work)
    log = work / fmt.LOG_FILE
    log.write_bytes(log.read_bytes()[:-40])
    assert cli.main(["replay", str(work), "--verify"]) == 0
    err = capsys.readouterr().err
    assert "warning: events.jsonl: the last record is incomplete" in err and "no end record" in err
