"""Recorded sessions (renderer.recording): what a recording holds, its crash safety (a log cut at any
byte, processes killed with SIGKILL at random moments), damage reporting, version refusal and the disk
budget. Replay, export, verify and resume are in test_replay.py (which reuses the helpers here)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim import regularizers
from drstudio.renderer.optim.engine import Engine
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.recording import (
    FORMAT_VERSION,
    Recorder,
    RecorderOptions,
    RecordingError,
    RecordingVersionError,
    build_problem,
    load_recording,
    verify,
)
from drstudio.renderer.recording import format as fmt

ROOT = Path(__file__).resolve().parents[1]
LIGHT = "lights.key.position"
ALBEDO = "materials.paint.albedo"
SMALL = RecorderOptions(keyframe_every=4, thumb_every=3)


def tiny_scene(folder: Path, size: int = 20, steps: int = 40, schedule: dict | None = None) -> Path:
    """A scene file with an 8x8 albedo texture (an asset file) and a point light to recover, three
    target views of `size` pixels and one view per step (so the seeded view batch matters)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "assets").mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    iio.imwrite(folder / "assets" / "tex.png", (rng.random((8, 8, 3)) * 255).astype(np.uint8))
    cams = [{"name": n, "width": size, "height": size, "fov_y": 40, "look_at": {"eye": e, "target": [0, 0, 0]}}
            for n, e in (("front", [0, 0.5, 3.2]), ("side", [3.2, 0.5, 0.3]), ("top", [0.2, 3.2, 0.5]))]
    optimizer = {"type": "adam", "lr": 0.05, **({"schedule": schedule} if schedule else {})}
    doc = {
        "version": 1,
        "meshes": [{"name": "ball", "primitive": {"type": "sphere", "radius": 1.0, "resolution": 12},
                    "material": "paint"}],
        "materials": [{"name": "paint", "model": "lambert", "albedo": "assets/tex.png"}],
        "lights": [{"name": "key", "type": "point", "position": [1.5, 2.0, 2.5], "color": [1, 0.9, 0.8],
                    "intensity": 12.0},
                   {"name": "sky", "type": "ambient", "color": [0.1, 0.1, 0.1]}],
        "cameras": cams,
        "render": {"mode": "antialias", "shadows": False, "mipmaps": True},
        "optimize": {"parameters": {ALBEDO: {"init": 0.5},
                                    LIGHT: {"init": {"perturb": {"sigma": 0.3, "seed": 1}}, "lr": 0.05}},
                     "targets": {"cameras": ["front", "side", "top"]}, "loss": {"l2": 1.0, "tv": 0.001},
                     "optimizer": optimizer, "steps": steps, "batch_views": 1, "seed": 0},
    }
    path = folder / "tiny.json"
    path.write_text(json.dumps(doc))
    return path


def run_steps(engine: Engine, n: int) -> None:
    """Take exactly n more steps (engine paused before and after)."""
    target = engine.snapshot().step + n
    engine.send("step", n)
    engine.wait(lambda s: s.step >= target and s.state == "paused", timeout=120)


EDITS = [  # (position, command, args): applied while paused at that position
    (5, "set_lr", (LIGHT, 0.1)),
    (5, "set_value", (LIGHT, np.array([1.2, 2.2, 2.2], np.float32))),
    (9, "set_free", (ALBEDO, False)),
    (12, "set_free", (ALBEDO, True)),
    (12, "set_loss_weight", ("tv", 0.01)),
    (15, "set_target_value", ("lights.key.color", np.array([1.0, 0.8, 0.6], np.float32))),
    (15, "set_active_view", ("side",)),
]


def record_session(folder: Path, scene: Path, steps: int = 20, edits=EDITS, options=SMALL, problem=None):
    """Record `steps` steps of `scene` with `edits` applied at their positions; returns (recorder,
    the engine's final snapshot)."""
    problem = problem or Problem(load_scene(scene), "cpu")
    recorder = Recorder(folder, problem, options=options)
    engine = Engine(problem, publish_images=False)
    engine.add_listener(recorder)
    engine.start_thread()
    try:
        done = 0
        for at in sorted({a for a, _, _ in edits} | {steps}):
            if at > done:
                run_steps(engine, at - done)
                done = at
            n = engine.snapshot().commands_applied
            for a, kind, args in edits:
                if a == at:
                    engine.send(kind, *args)
                    n += 1
            engine.wait(lambda s, n=n: s.commands_applied >= n)
        snap = engine.snapshot()
    finally:
        engine.shutdown()
        recorder.close()
    return recorder, snap


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One recorded session with edits, shared by the read-only tests of this module."""
    folder = tmp_path_factory.mktemp("session")
    scene = tiny_scene(folder / "scene")
    recorder, snap = record_session(folder / "rec", scene)
    return folder / "rec", recorder, snap, scene


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- what is recorded -----------------------------------------------------------------------------

def test_a_recording_holds_the_session(session):
    path, recorder, snap, scene = session
    rec = load_recording(path)
    assert rec.warnings == [] and rec.closed and rec.version == FORMAT_VERSION
    # initial scene: a copy of the file and its asset, with hashes; seed, device, versions
    meta = rec.meta
    assert meta["seed"] == 0 and meta["device"] == "cpu" and meta["versions"]["warp"]
    assert meta["texture_tv_eps"] == regularizers.TV_EPS  # what verify re-executes the texture TV with
    assert (path / "scene" / "tiny.json").read_bytes() == scene.read_bytes()
    assert (path / "scene" / "assets" / "tex.png").read_bytes() == (scene.parent / "assets" / "tex.png").read_bytes()
    assert set(meta["scene"]["files"]) == {"scene/tiny.json", "scene/assets/tex.png"}
    # per-step loss terms, gradient norms and times: exactly what the engine reported
    hist = rec.history()
    assert rec.first_at == 0 and rec.last_at == 20 and len(rec.steps) == 20
    np.testing.assert_array_equal(hist["loss"], snap.history["loss"])
    np.testing.assert_array_equal(hist["loss.tv"], snap.history["loss.tv"])
    np.testing.assert_array_equal(hist[f"grad.{LIGHT}"], snap.history[f"grad.{LIGHT}"])
    assert np.all(hist["dt"] > 0)
    # every command with the step at which it was applied
    got = [(c["at"], c["kind"]) for c in rec.commands if c["kind"] != "step"]
    assert got == [(a, k) for a, k, _ in EDITS]
    value = fmt.from_json(rec.commands[[c["kind"] for c in rec.commands].index("set_value")]["args"][1])
    np.testing.assert_array_equal(value, EDITS[1][2][1])
    # keyframes every 4 steps and at every edit, thumbnails every 3 steps and after value edits
    assert {0, 4, 5, 8, 9, 12, 15, 16, 20} <= set(rec.keyframes)
    assert rec.keyframes[5]["reason"] == "edit" and rec.keyframes[8]["reason"] == "periodic"
    assert rec.start_keyframe is not None and rec.start_keyframe["file"] == "keyframes/start.npz"
    assert {0, 3, 6, 9, 12, 15, 18, 20} <= set(rec.thumbs)
    assert rec.thumbs[18]["view"] == "side" and rec.thumbs[3]["view"] == "front"
    img = rec.image(rec.thumbs[18]["file"])
    assert img.shape == (20, 20, 3) and img.dtype == np.float32 and 0 < img.mean() < 1
    # a keyframe holds every optimizable parameter, the edited target, optimizer state and the view RNG
    kf = rec.keyframe(16)
    assert set(kf.values) == {ALBEDO, LIGHT} and set(kf.truth) == {"lights.key.color"}
    assert kf.state["step"] == 16 and kf.state["weights"]["tv"] == 0.01 and kf.state["active_view"] == "side"
    assert kf.state["lrs"][LIGHT] == 0.1 and kf.state["view_rng"]["bit_generator"] == "PCG64"
    assert len(kf.optimizer["exp_avg"]) == 2 and kf.optimizer["iteration"] == 4  # rebuilt at step 12
    # disk use is reported and matches the folder
    assert abs(recorder.bytes_written - rec.disk_bytes()) < 2000
    assert "20 steps" in recorder.summary()


def test_log_lines_carry_a_checksum_and_a_sequence_number(session):
    path = session[0]
    lines = (path / fmt.LOG_FILE).read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [fmt.decode_line(line) for line in lines[:-1]]
    assert all(r is not None for r in records)
    assert [r["seq"] for r in records] == list(range(len(records)))
    damaged = lines[3][:20] + bytes([lines[3][20] ^ 1]) + lines[3][21:]
    assert fmt.decode_line(damaged) is None


# ---- crash safety ------------------------------------------------------------------------------------

def test_a_log_cut_at_any_byte_loads_its_complete_records(session, tmp_path):
    path = session[0]
    data = (path / fmt.LOG_FILE).read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(data)), 24)) + [ends[5], ends[5] - 1]
    work = copy_of(path, tmp_path / "cut")
    for cut in cuts:
        (work / fmt.LOG_FILE).write_bytes(data[:cut])
        rec = load_recording(work, quiet=True)
        complete = sum(1 for e in ends if e <= cut)
        assert len(rec.records) == complete, cut
        torn = cut not in ends
        assert any("incomplete" in w for w in rec.warnings) == torn, (cut, rec.warnings)
        assert any("no end record" in w for w in rec.warnings)
        assert rec.last_at == max([r["at"] + (r["type"] == "step") for r in rec.records] or [0])
        for at in rec.keyframes:  # every keyframe the intact log names is readable
            rec.keyframe(at)


KILL_SCRIPT = r"""
import sys, time
import numpy as np
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.engine import Engine
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.recording import Recorder, RecorderOptions

scene, out = sys.argv[1], sys.argv[2]
problem = Problem(load_scene(scene), "cpu")
problem.steps = 100000
recorder = Recorder(out, problem, options=RecorderOptions(keyframe_every=2, thumb_every=2, fsync_every=0.05))
engine = Engine(problem, publish_images=False)
engine.add_listener(recorder)
engine.start_thread()
engine.send("start")
print("started", flush=True)
i = 0
while True:  # user edits while it runs, until killed
    time.sleep(0.03)
    i += 1
    engine.send("set_lr", "lights.key.position", 0.05 + 0.001 * (i % 7))
    if i % 5 == 0:
        engine.send("set_value", "lights.key.position", np.array([1.2, 2.0, 2.4], np.float32) + 0.01 * (i % 3))
"""


def test_sigkill_at_random_moments_leaves_a_loadable_recording(tmp_path):
    scene = tiny_scene(tmp_path / "scene", size=16)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for trial in range(3):
        out = tmp_path / f"killed{trial}"
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(scene), str(out)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout.readline().strip() == "started"
            time.sleep(rng.uniform(0.05, 0.8))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        rec = load_recording(out, quiet=True)
        context = f"trial {trial}, random seed {seed}: {rec.warnings}"
        assert not rec.closed and any("no end record" in w for w in rec.warnings), context
        assert all("damaged" not in w and "missing" not in w for w in rec.warnings), context
        assert list(rec.steps) == list(range(rec.first_at, rec.last_at)), context
        assert np.isfinite(rec.history()["loss"]).all(), context
        for at in rec.keyframes:
            rec.keyframe(at)
        for t in rec.thumbs.values():
            rec.image(t["file"])
        if not rec.steps:  # killed before its first step: nothing to re-execute, which verify refuses
            with pytest.raises(RecordingError, match="nothing to verify"):
                verify(rec)
            continue
        # what remains is still a reproducible session
        report = verify(rec)
        assert report.ok, f"{context}: {report.message()}"
        assert report.steps_checked == len(rec.steps)


# ---- damage and versions -------------------------------------------------------------------------------

def test_damage_is_reported_and_the_rest_loads(session, tmp_path):
    work = copy_of(session[0], tmp_path / "damaged")
    lines = (work / fmt.LOG_FILE).read_bytes().split(b"\n")
    victim = next(i for i, line in enumerate(lines) if b'"type":"step","at":7,' in line)
    lines[victim] = lines[victim].replace(b'"loss":', b'"loss":1')  # CRC no longer matches
    (work / fmt.LOG_FILE).write_bytes(b"\n".join(lines))
    (work / "thumbs" / "r00000006_0.png").unlink()
    kf = work / "keyframes" / "00000008_0.npz"
    data = bytearray(kf.read_bytes())
    data[len(data) // 2] ^= 0xFF
    kf.write_bytes(bytes(data))
    rec = load_recording(work, quiet=True)
    text = "\n".join(rec.warnings)
    assert f"line {victim + 1} damaged" in text and "record" in text and "missing before timeline position 8" in text
    assert "thumbnail at 6: thumbs/r00000006_0.png is missing" in text
    assert "1 step records missing" in text
    assert rec.closed and len(rec.steps) == 19 and np.isnan(rec.history()["loss"][7])
    assert 6 not in rec.thumbs and 9 in rec.thumbs
    with pytest.raises(RecordingError, match="00000008_0.npz is damaged"):
        rec.keyframe(8)
    rec.keyframe(12)  # the others are intact


@pytest.mark.parametrize("bad", ["0.001", -1.0, 1e400, True])
def test_a_bad_texture_tv_eps_in_meta_is_refused(session, tmp_path, bad):
    work = copy_of(session[0], tmp_path / "tv")
    meta = json.loads((work / fmt.META_FILE).read_text())
    meta["texture_tv_eps"] = bad
    (work / fmt.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(RecordingError, match="texture_tv_eps: expected a finite number >= 0"):
        build_problem(load_recording(work))


def test_a_newer_format_version_is_refused_with_a_clear_message(session, tmp_path):
    work = copy_of(session[0], tmp_path / "future")
    meta = json.loads((work / fmt.META_FILE).read_text())
    meta["version"] = FORMAT_VERSION + 1
    (work / fmt.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(RecordingVersionError, match=f"format version {FORMAT_VERSION + 1} .* newer .* upgrade"):
        load_recording(work)


def test_not_a_recording(tmp_path):
    with pytest.raises(RecordingError, match="no such recording folder"):
        load_recording(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="not a drstudio recording"):
        load_recording(tmp_path / "empty")
    with pytest.raises(FileExistsError):
        Recorder(tmp_path, object())  # a recording never overwrites a non-empty folder


# ---- disk budget -------------------------------------------------------------------------------------

def test_disk_use_is_bounded_by_thinning_keyframes_and_thumbnails(session, tmp_path):
    scene = session[3]
    budget = 90_000
    options = RecorderOptions(keyframe_every=1, thumb_every=1, max_bytes=budget)
    recorder, _ = record_session(tmp_path / "rec", scene, steps=30, edits=[(10, "set_lr", (LIGHT, 0.02))],
                                 options=options)
    rec = load_recording(tmp_path / "rec")
    assert rec.warnings == []
    assert recorder.bytes_written <= budget + 1000 and rec.disk_bytes() <= budget + 1000  # + the last record
    pruned = [r for r in rec.records if r["type"] == "pruned"]
    assert pruned and recorder.keyframe_every > 1 and recorder.thumb_every > 1
    assert 10 in rec.keyframes and rec.keyframes[10]["reason"] == "edit"  # edit keyframes are kept
    assert len(rec.steps) == 30  # the log is never thinned
    assert verify(rec).ok


# ---- keyframe spacing by size ------------------------------------------------------------------------

def test_keyframe_interval_scales_with_the_state_size(session, tmp_path):
    scene = session[3]
    # the size of this scene's keyframe, then a byte rate at which every 4 steps is too often: 12 steps'
    # worth of it per keyframe, so the interval doubles 4 -> 8 -> 16
    # (keyframes are compressed: the size of one taken after some steps; the start's constant values and
    # zero moments compress far better)
    size = max(r["bytes"] for r in load_recording(session[0]).keyframes.values() if r["reason"] != "start")
    options = RecorderOptions(keyframe_every=4, thumb_every=3, keyframe_bytes_per_step=size // 12,
                              keyframes="full")  # "auto" fits the interval to compact keyframes' size instead
    recorder, _ = record_session(tmp_path / "rec", scene, steps=40, edits=[(5, "set_lr", (LIGHT, 0.1))],
                                 options=options)
    rec = load_recording(tmp_path / "rec")
    assert rec.warnings == [] and recorder.keyframe_every == 16
    # periodic at multiples of 16; always at the start, at edits and at the end
    assert sorted(rec.keyframes) == [0, 5, 16, 32, 40]
    assert {at: r["reason"] for at, r in rec.keyframes.items()} == {0: "start", 5: "edit", 16: "periodic",
                                                                     32: "periodic", 40: "end"}
    # (the start's constant values compress to little: the interval grows from the first edit's keyframe)
    assert all(r["keyframe_every"] == 16 for at, r in rec.keyframes.items() if at != 0)
    periodic = [r["bytes"] for r in rec.keyframes.values() if r["reason"] == "periodic"]
    assert max(periodic) / 16 <= options.keyframe_bytes_per_step
    report = verify(rec)  # still re-executes bit for bit and compares every kept keyframe
    assert report.ok and report.keyframes_checked == 5, report.message()


def test_default_keyframe_spacing_for_small_and_large_states(tmp_path, session):
    recorder = Recorder(tmp_path / "r", Problem(load_scene(session[3]), "cpu"))
    try:
        assert recorder.keyframe_every == 25  # a small state keeps the minimum spacing
        recorder._fit_interval(300_000)  # a compact keyframe of the texture scene's size: still 25 at 16 KiB/step
        assert recorder.keyframe_every == 25
        recorder._fit_interval(1_500_000)  # a 64^3 SH-0 field's compact keyframe: 16 KiB/step -> 100
        assert recorder.keyframe_every == 100
        recorder._fit_interval(1_000)  # never shrinks
        assert recorder.keyframe_every == 100
    finally:
        recorder.close()
    with pytest.raises(ValueError, match="keyframe_bytes_per_step"):
        RecorderOptions(keyframe_bytes_per_step=-1)
    unlimited = Recorder(tmp_path / "u", Problem(load_scene(session[3]), "cpu"),
                         options=RecorderOptions(keyframe_bytes_per_step=0))
    unlimited._fit_interval(10**9)
    assert unlimited.keyframe_every == 25
    unlimited.close()


# ---- extra state (a field's occupancy grid) ------------------------------------------------------------

class ExtraStateStub:
    """Stands in for `problem.field_training`'s hook: state that lives outside the parameters and changes
    with the steps (derived from the problem's step index and a value), and a log of what was loaded."""

    def __init__(self, problem):
        self.problem = problem
        self.loaded: list[tuple[dict, int]] = []

    def extra_state(self):
        k = self.problem.step_index
        return {"occupancy.f.density": np.arange(6, dtype=np.float32).reshape(1, 2, 3) * k,
                "occupancy.f.binary": np.array([[k % 2, 1]], np.uint8)}

    def load_extra_state(self, state):
        # record what arrived and the step index at that moment: it must come after everything else
        self.loaded.append(({k: v.copy() for k, v in state.items()}, self.problem.step_index))


class WithExtraState:
    """A problem whose `field_training` is `owner` (everything else forwarded, attribute writes too), so
    the recorder and restore see the hook on a mesh problem whose own steps do not use it."""

    def __init__(self, problem, owner):
        object.__setattr__(self, "_problem", problem)
        object.__setattr__(self, "field_training", owner)

    def __getattr__(self, name):
        return getattr(self._problem, name)

    def __setattr__(self, name, value):
        setattr(self._problem, name, value)


def test_keyframes_store_and_restore_extra_state(session, tmp_path):
    from drstudio.renderer.recording import Keyframe
    from drstudio.renderer.recording.state import compare_state, restore_state

    scene = session[3]
    problem = Problem(load_scene(scene), "cpu")
    recorded = WithExtraState(problem, ExtraStateStub(problem))
    recorder = Recorder(tmp_path / "rec", recorded, options=SMALL)
    engine = Engine(problem, publish_images=False)
    engine.add_listener(recorder)
    engine.start_thread()
    try:
        run_steps(engine, 9)
    finally:
        engine.shutdown()
        recorder.close()
    rec = load_recording(tmp_path / "rec")
    assert sorted(rec.keyframes) == [0, 4, 8, 9]
    kf = rec.keyframe(8)
    assert kf.state["extra"] == ["occupancy.f.binary", "occupancy.f.density"]
    np.testing.assert_array_equal(kf.extra["occupancy.f.density"], np.arange(6).reshape(1, 2, 3) * 8)
    assert kf.extra["occupancy.f.binary"].dtype == np.uint8 and kf.extra["occupancy.f.binary"].tolist() == [[0, 1]]
    assert set(kf.values) == {ALBEDO, LIGHT}  # prefixed apart from the parameters
    # restore: loaded once, last (the step index is already the keyframe's), as the arrays were stored
    fresh = Problem(load_scene(scene), "cpu")
    target = WithExtraState(fresh, ExtraStateStub(fresh))
    restore_state(target, kf)
    [(loaded, step_then)] = target.field_training.loaded
    assert step_then == 8 and set(loaded) == set(kf.extra)
    np.testing.assert_array_equal(loaded["occupancy.f.density"], kf.extra["occupancy.f.density"])
    # compare_state (verify) compares the extra state too
    assert compare_state(target, kf, 1e-5) is None
    fresh.step_index = 8
    other = WithExtraState(fresh, ExtraStateStub(fresh))
    other.field_training.extra_state = lambda: {"occupancy.f.density": np.zeros((1, 2, 3), np.float32),
                                                "occupancy.f.binary": np.array([[0, 1]], np.uint8)}
    assert compare_state(other, kf, 1e-5)[0] == "extra state occupancy.f.density"
    # a problem without the hook restores the rest and says what it could not load
    plain = Problem(load_scene(scene), "cpu")
    restore_state(plain, kf)
    assert plain.step_index == 8
    # keyframes written before the hook existed have no extra state
    assert Keyframe(dict(kf.state, extra=[]), {f"value/{p}": v for p, v in kf.values.items()}
                    | {f"opt/{b}/{i}": a for b in kf.optimizer if b not in ("iteration", "steps", "lr")
                       for i, a in enumerate(kf.optimizer[b])}).extra == {}
    # the recording itself still verifies (its re-execution has no hook: extras are not compared)
    assert verify(rec).ok


def test_a_field_run_resumes_bit_for_bit_with_its_occupancy_grid(tmp_path, monkeypatch):
    from drstudio.renderer.datasets import DatasetOptions, generate_dataset
    from drstudio.renderer.optim.field_training import FieldTraining
    from drstudio.renderer.recording import resume_problem

    generate_dataset(load_scene(ROOT / "scenes" / "texture.json"), tmp_path / "data",
                     DatasetOptions(views=8, width=16, height=16), device="cpu")
    doc = {"version": 1,
           "cameras": [{"name": "preview", "width": 16, "height": 16, "fov_y": 40,
                        "look_at": {"eye": [0, 0.8, 3.5], "target": [0, 0, 0]}}],
           "fields": [{"name": "nerf", "type": "voxel_grid", "resolution": 12, "aabb": [[-1.05] * 3, [1.05] * 3],
                       "samples_per_ray": 24, "occupancy": {"resolution": 12, "update_every": 3, "threshold": 0.2}}],
           "optimize": {"parameters": {"fields.nerf.density": {"lr": 0.5}, "fields.nerf.sh": {"lr": 0.2}},
                        "targets": {"transforms": "data/transforms.json"}, "loss": {"l2": 1.0},
                        "optimizer": {"type": "adam", "lr": 0.1}, "steps": 20, "rays_per_batch": 256}}
    scene = tmp_path / "field.json"
    scene.write_text(json.dumps(doc))
    # full keyframes: their extra state is what this test reads (compact ones: tests/test_recording_compact.py)
    record_session(tmp_path / "rec", scene, steps=20, edits=[],
                   options=RecorderOptions(keyframe_every=8, keyframes="full"))
    rec = load_recording(tmp_path / "rec")
    kf = rec.keyframe(8)
    assert set(kf.extra) == {"occupancy.nerf.density", "occupancy.nerf.occupied", "psnr_test_db"}
    # updated at steps 3 and 6 (threshold 0.2 > the mean density: cells below the mean are empty)
    assert kf.extra["occupancy.nerf.density"].min() > 0 and 0 < kf.extra["occupancy.nerf.occupied"].mean() < 1

    def continued(problem):
        return [problem.step().loss for _ in range(8, 20)]

    recorded = [rec.steps[at]["loss"] for at in range(8, 20)]
    problem, _ = resume_problem(rec, 8)
    assert continued(problem) == recorded  # bit for bit, through the occupancy updates at 9, 12, 15, 18
    assert verify(rec).ok
    # without the hook the resumed run starts from an all-occupied grid and drifts off the recording
    monkeypatch.delattr(FieldTraining, "load_extra_state")
    problem, _ = resume_problem(rec, 8)
    assert continued(problem) != recorded
