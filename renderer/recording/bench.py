"""What recording costs the optimizer: `python -m drstudio.renderer.recording.bench [SCENE] [--steps N] [--repeats R]`.

Runs the scene's optimization headless (engine thread, no images published) for N steps with recording
off and on (default options), alternating, R times each, and prints the median steps/s of each, the
time of each kind of write, and the disk use per step. The numbers in docs/recording.md come from here.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ..loading import load_scene
from ..optim.engine import Engine
from ..optim.problem import Problem
from .writer import Recorder, RecorderOptions

ROOT = Path(__file__).resolve().parents[2]


def run(scene: str, steps: int, record: bool, folder: Path, options: RecorderOptions) -> tuple[float, Recorder | None]:
    problem = Problem(load_scene(scene), "cpu")
    problem.steps = steps
    engine = Engine(problem, publish_images=False)
    recorder = Recorder(folder, problem, options=options) if record else None
    if recorder is not None:
        engine.add_listener(recorder)
    engine.start_thread()
    engine.wait(lambda s: s.state == "idle")
    t0 = time.perf_counter()
    engine.send("start")
    engine.wait(lambda s: s.state == "finished", timeout=3600, poll=0.002)
    elapsed = time.perf_counter() - t0
    engine.shutdown()
    if recorder is not None:
        recorder.close()
    return steps / elapsed, recorder


def time_writes(scene: str, folder: Path, options: RecorderOptions, n: int = 20) -> dict:
    """Milliseconds per step record, keyframe and thumbnail, written directly (no optimization)."""
    problem = Problem(load_scene(scene), "cpu")
    rec = Recorder(folder, problem, options=options)
    event = {"type": "step", "step": 0, "loss": 0.01, "loss_terms": {"l2": 0.01, "tv": 1e-4},
             "grad_norms": {p: 1.0 for p in problem.param_specs}, "applied": True, "dt": 0.1}
    out = {}
    t = time.perf_counter()
    for _ in range(200):
        rec._append({"type": "step", "at": 0, **event})
    out["step_record_ms"] = (time.perf_counter() - t) / 200 * 1e3
    t = time.perf_counter()
    for _ in range(n):
        rec._keyframe("periodic")
    out["keyframe_ms"] = (time.perf_counter() - t) / n * 1e3
    out["keyframe_bytes"] = rec._keyframes[rec.at][1]
    t = time.perf_counter()
    for _ in range(n):
        rec._thumbnail()
    out["thumbnail_ms"] = (time.perf_counter() - t) / n * 1e3
    t = time.perf_counter()
    import os

    for _ in range(n):
        os.fsync(rec._fd)
    out["log_fsync_ms"] = (time.perf_counter() - t) / n * 1e3
    rec.close()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", nargs="?", default=str(ROOT / "scenes" / "texture.json"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    options = RecorderOptions()
    rates: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        run(args.scene, 3, False, Path(tmp) / "warmup", options)  # kernel loading
        last = None
        for i in range(args.repeats):
            for record in (False, True):
                rate, rec = run(args.scene, args.steps, record, Path(tmp) / f"r{i}", options)
                rates[record].append(rate)
                last = rec or last
                print(f"  run {i} recording {'on ' if record else 'off'}: {rate:.2f} steps/s")
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{Path(args.scene).name}: {args.steps} steps x {args.repeats}: recording off {off:.2f} steps/s, "
              f"on {on:.2f} steps/s ({(1 - on / off) * 100:+.1f}% slower)")
        print(f"disk: {last.bytes_written / 1e6:.2f} MB for {args.steps} steps "
              f"({last.bytes_written / args.steps / 1e3:.1f} kB/step with keyframes every "
              f"{options.keyframe_every}, thumbnails every {options.thumb_every})")
        writes = time_writes(args.scene, Path(tmp) / "writes", options)
        print("per write: " + ", ".join(f"{k} {v:.3g}" for k, v in writes.items()))


if __name__ == "__main__":
    main()
