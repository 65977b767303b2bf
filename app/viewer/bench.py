"""What the viewer costs the optimization: optimizer steps/s headless vs with the viewer open, and
the viewer's frame rate while the optimizer runs.

    python -m drstudio.app.viewer.bench scenes/texture.json scenes/light.json --seconds 20

Per scene, four runs of the same engine (each after a warm-up, averaged over `--seconds`):
- headless: `Engine(publish_images=False)`, as `drstudio optimize` runs it;
- headless + images: the engine publishing render/target/gradient images after every step, as it
  does for the viewer, but no window (the engine-side share of the viewer's cost);
- viewer, watching: the window open, optimizer running, no input (frames drawn on demand: when a
  snapshot arrives, at most 10 per second);
- viewer, orbiting: the same while the mouse orbits the 3D view without pause (real X input from
  xdotool): the frame rate a user interacting gets, and what it costs the optimizer.
Needs a display (DISPLAY, e.g. Xvfb) and xdotool; prints a Markdown table.

Scenes with radiance fields (e.g. scenes/nerf_grid.json) also run the field preview thread in both
viewer runs, and report its render time per resolution step (ms, EMA) and how many previews it
finished; the viewer runs are then "training while you watch".
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _steps_rate(engine, warmup: float, seconds: float) -> tuple[float, float]:
    """(steps/s, CPU ms per step of this process) over `seconds` after `warmup`."""
    time.sleep(warmup)
    s0, t0, c0 = engine.snapshot().step, time.perf_counter(), time.process_time()
    time.sleep(seconds)
    s1, t1, c1 = engine.snapshot().step, time.perf_counter(), time.process_time()
    return (s1 - s0) / (t1 - t0), (c1 - c0) * 1000.0 / max(s1 - s0, 1)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def headless(scene_path: str, device: str, seconds: float, warmup: float, publish_images: bool) -> tuple[float, float]:
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.optim.engine import Engine
    from drstudio.renderer.optim.problem import Problem

    problem = Problem(load_scene(scene_path), device)
    problem.steps = 10**6
    # as the viewer's engine (app.build): field scenes publish pane images once a second
    engine = Engine(problem, publish_images=publish_images,
                    image_interval=1.0 if problem.field_training is not None else 0.1)
    engine.start_thread()
    try:
        engine.send("start")
        return _steps_rate(engine, warmup, seconds)
    finally:
        engine.shutdown()


def _orbit_mouse(state, stop: threading.Event) -> None:
    """Hold the left button in the 3D view and circle the mouse until `stop` (real X input)."""
    xdo = shutil.which("xdotool")
    env = dict(os.environ)
    x, y, w, h = state.viewport_rect
    ox, oy = state.window_pos
    cx, cy = ox + x + w * 0.2, oy + y + h * 0.75
    subprocess.run([xdo, "mousemove", str(int(cx)), str(int(cy)), "mousedown", "1"], env=env, check=True)
    t = 0.0
    while not stop.is_set():
        t += 0.15
        subprocess.run([xdo, "mousemove", str(int(cx + 40 * math.cos(t))), str(int(cy + 20 * math.sin(t)))],
                       env=env, check=True)
        time.sleep(0.01)
    subprocess.run([xdo, "mouseup", "1"], env=env, check=True)


def viewer(scene_path: str, device: str, seconds: float, warmup: float, orbit: bool = False,
           process: bool = False, rest: bool = True) -> tuple[float, float, float, dict]:
    """(steps/s, median frames/s, 5th-percentile frames/s, field preview stats) with the viewer open;
    `process`: the optimizer in a child process (`drstudio view --engine process`), the viewer attached."""
    from .app import ViewerApp, build, build_attached

    child = None
    if process:
        from ..engine_process import EngineProcess

        child = EngineProcess(scene_path, device).start()
        state, engine = build_attached(child.address, child.token)
    else:
        state, engine = build(scene_path, device)
        engine.start_thread()
    if state.preview is not None:
        state.preview.start()
    marks: dict = {}
    frame_times: list[float] = []
    stop = threading.Event()

    def on_frame(st) -> None:
        now = time.perf_counter()
        if st.frame == 0:
            st.send("set_steps", 10**6)
            st.send("start")
            marks["start"] = now
            return
        t = now - marks["start"]
        if orbit and t >= warmup * 0.5 and "mouse" not in marks:
            marks["mouse"] = threading.Thread(target=_orbit_mouse, args=(st, stop), daemon=True)
            marks["mouse"].start()
        if t >= warmup and "t0" not in marks:
            marks["t0"], marks["s0"] = now, st.snapshot.step
            marks["cpu0"] = (time.process_time(), process_cpu(child.proc.pid) if child else 0.0)
        if "t0" in marks:
            frame_times.append(now)
            if now - marks["t0"] >= seconds:
                marks["t1"], marks["s1"] = now, st.snapshot.step
                marks["cpu1"] = (time.process_time(), process_cpu(child.proc.pid) if child else 0.0)
                st.quit = True

    preview = {}
    try:
        # rest=False: the window never rests (as before the rest state: >= 30 frames/s while running)
        rc = ViewerApp(state, title="drstudio bench", rest_after=2.0 if rest else float("inf")).run(on_frame=on_frame)
    finally:
        stop.set()
        if "mouse" in marks:
            marks["mouse"].join(10)
        pv = state.preview
        if pv is not None:
            pv.stop()
            preview = {"ms_by_scale": dict(sorted(pv.ms_by_scale.items())), "renders": pv.renders,
                       "aborted": pv.aborted, "size": (pv.latest.width, pv.latest.height) if pv.latest else None}
        engine.shutdown()
        if child is not None:
            child.close()
    if "s1" not in marks:  # the window did not open, or closed before the measured interval ended
        print(f"viewer bench: {scene_path}: the viewer ran no measured interval (its exit code {rc}; its message is "
              "above)", file=sys.stderr)
        raise SystemExit(2)
    dt = np.diff(frame_times)
    n = marks["s1"] - marks["s0"]
    steps = n / (marks["t1"] - marks["t0"])
    # CPU ms per optimizer step: of the viewer's process (UI, and the engine when it is a thread) and of the child
    cpu = {"ui_ms_per_step": (marks["cpu1"][0] - marks["cpu0"][0]) * 1000.0 / max(n, 1),
           "child_ms_per_step": (marks["cpu1"][1] - marks["cpu0"][1]) * 1000.0 / max(n, 1),
           "ui_cpu_share": (marks["cpu1"][0] - marks["cpu0"][0]) / (marks["t1"] - marks["t0"])}
    preview = dict(preview, cpu=cpu)
    return steps, 1.0 / float(np.median(dt)), 1.0 / float(np.percentile(dt, 95)), preview


def _preview_text(stats: dict) -> str:
    if not stats or "ms_by_scale" not in stats:
        return ""
    steps = ", ".join(f"{'full' if s == 1 else f'1/{round(1 / s)}'} {ms:.0f} ms"
                      for s, ms in stats["ms_by_scale"].items())
    return f"preview {stats['renders']} frames ({stats['aborted']} abandoned), last {stats['size']}: {steps}"


def preview_steps(scene_path: str, device: str, train_steps: int, size=(715, 414), repeat: int = 3) -> list:
    """Field scenes: ms of one preview frame (`render_free`, in the preview's bands) at each resolution
    step of a viewport of `size` (the default layout's at 1280x720), median of `repeat`, optimizer idle:
    for the untrained field and after `train_steps` steps. Returns [(steps, scale, w, h, ms)]."""
    from drstudio.renderer import conventions as cv
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.optim.problem import Problem

    from .field_preview import BAND_RAYS, LADDER, FieldSource, intrinsics_for, scaled_size

    problem = Problem(load_scene(scene_path), device)
    source = FieldSource(problem)
    cam = next(iter(problem.scene.cameras.values()))
    pose = cv.look_at(np.asarray(cam.pose[:3], np.float64) * 1.1, [0.0, 0.0, 0.0])
    rows = []
    for target in (0, train_steps):
        while problem.step_index < target:
            problem.step()
        for scale in LADDER:
            w, h = scaled_size(size[0], size[1], scale)
            intr = intrinsics_for(40.0, w, h)
            times = []
            for _ in range(repeat if scale < 1 else 1):
                t0 = time.perf_counter()
                band = max(1, BAND_RAYS // w)
                for r0 in range(0, h, band):
                    b = intr.copy()
                    b[3] -= r0
                    source.render(pose, b, w, min(h, r0 + band) - r0)
                times.append((time.perf_counter() - t0) * 1000.0)
            rows.append((problem.step_index, scale, w, h, float(np.median(times))))
            print(f"  step {problem.step_index}: {w}x{h} ({scale:g}) {rows[-1][-1]:.0f} ms", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenes", nargs="+")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--preview-steps", type=int, default=0, metavar="N",
                        help="field scenes only: time the preview at each resolution step, untrained and after "
                        "N training steps (no window), instead of the viewer runs")
    parser.add_argument("--process", action="store_true",
                        help="also run the viewer with its optimizer in a child process (drstudio view --engine "
                        "process), watching and orbiting")
    parser.add_argument("--only-watching", action="store_true", help="skip the runs with the mouse orbiting")
    parser.add_argument("--no-rest", action="store_true",
                        help="with --process: also a run whose window never rests (30 frames/s while running)")
    parser.add_argument("--process-only", action="store_true",
                        help="headless and the viewer with its optimizer in a child process only (no in-process "
                        "viewer, no headless + images run)")
    args = parser.parse_args(argv)
    if args.preview_steps:
        for scene in args.scenes:
            rows = preview_steps(scene, args.device, args.preview_steps)
            print(f"\n{scene}: preview frame (render_free, optimizer idle)\n")
            print("| training steps | " + " | ".join(f"{w}x{h}" for _, _, w, h, _ in rows[:5]) + " |")
            print("|---|" + "---|" * 5)
            for k in range(0, len(rows), 5):
                print(f"| {rows[k][0]} | " + " | ".join(f"{r[4]:.0f} ms" for r in rows[k:k + 5]) + " |")
        return 0
    rows, process_rows = [], []
    skipped = (float("nan"),) * 3 + ({},)
    for scene in args.scenes:
        print(f"{scene}: load average {load_average()}", flush=True)
        a, a_cpu = headless(scene, args.device, args.seconds, args.warmup, publish_images=False)
        print(f"{scene}: headless {a:.2f} steps/s, {a_cpu:.1f} CPU ms/step (load {load_average()})", flush=True)
        if args.process_only:
            b, watch, orbit = float("nan"), skipped, skipped
        else:
            b = headless(scene, args.device, args.seconds, args.warmup, publish_images=True)[0]
            watch = viewer(scene, args.device, args.seconds, args.warmup)
            orbit = skipped if args.only_watching else viewer(scene, args.device, args.seconds, args.warmup,
                                                             orbit=True)
            print(f"{scene}: +images {b:.2f}; viewer watching {watch[0]:.2f} steps/s at {watch[1]:.1f} fps; "
                  f"orbiting {orbit[0]:.2f} steps/s at {orbit[1]:.1f} fps (5% of frames below {orbit[2]:.1f} fps)"
                  f" (load {load_average()})", flush=True)
        rows.append((scene, a, b, watch, orbit))
        if args.process or args.process_only:
            if args.no_rest:
                nr = viewer(scene, args.device, args.seconds, args.warmup, process=True, rest=False)
                cpu = nr[3].get("cpu", {})
                print(f"{scene}: engine in a child process, window never at rest: {nr[0]:.2f} steps/s "
                      f"({nr[0] / a:.0%}) at {nr[1]:.1f} fps, CPU ms/step child {cpu.get('child_ms_per_step', 0):.1f}"
                      f" + viewer {cpu.get('ui_ms_per_step', 0):.1f} (load {load_average()})", flush=True)
            p_watch = viewer(scene, args.device, args.seconds, args.warmup, process=True)
            p_orbit = (skipped if args.only_watching
                       else viewer(scene, args.device, args.seconds, args.warmup, orbit=True, process=True))
            process_rows.append((scene, a, a_cpu, p_watch, p_orbit))
            cpu = p_watch[3].get("cpu", {})
            print(f"{scene}: engine in a child process: watching {p_watch[0]:.2f} steps/s ({p_watch[0] / a:.0%}) at "
                  f"{p_watch[1]:.1f} fps, CPU ms/step child {cpu.get('child_ms_per_step', 0):.1f} + viewer "
                  f"{cpu.get('ui_ms_per_step', 0):.1f} (viewer {cpu.get('ui_cpu_share', 0):.0%} of a core); "
                  f"orbiting {p_orbit[0]:.2f} steps/s at {p_orbit[1]:.1f} fps (load {load_average()})", flush=True)
        for label, run in (("watching", watch), ("orbiting", orbit)):
            if _preview_text(run[3]):
                print(f"  {label}: {_preview_text(run[3])}", flush=True)
    print()
    if not args.process_only:
        print("| scene | headless steps/s | + snapshot images | viewer watching: steps/s, fps | "
              "viewer orbiting: steps/s, fps (median / 5th pct) |")
        print("|---|---|---|---|---|")
        for scene, a, b, watch, orbit in rows:
            print(f"| {scene} | {a:.2f} | {b:.2f} ({b / a:.0%}) | {watch[0]:.2f} ({watch[0] / a:.0%}), "
                  f"{watch[1]:.0f} | {orbit[0]:.2f} ({orbit[0] / a:.0%}), {orbit[1]:.0f} / {orbit[2]:.0f} |")
    if process_rows:
        print()
        print("| scene | headless steps/s, CPU ms/step | engine in a child process, watching: steps/s, fps; CPU "
              "ms/step child + viewer | orbiting: steps/s, fps (median / 5th pct) |")
        print("|---|---|---|---|")
        for scene, a, a_cpu, watch, orbit in process_rows:
            cpu = watch[3].get("cpu", {})
            print(f"| {scene} | {a:.2f}, {a_cpu:.1f} | {watch[0]:.2f} ({watch[0] / a:.0%}), {watch[1]:.0f}; "
                  f"{cpu.get('child_ms_per_step', 0):.1f} + {cpu.get('ui_ms_per_step', 0):.1f} | "
                  f"{orbit[0]:.2f} ({orbit[0] / a:.0%}), {orbit[1]:.0f} / {orbit[2]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
