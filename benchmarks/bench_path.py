"""Speed of drstudio's path mode against Mitsuba 3 on the same scene, in one run (issue 15, item 6).

The scene is a shipped path scene (default `scenes/cornell_box.json`) at `--size`^2 (default 256), built
for Mitsuba by `benchmarks.mitsuba_scene`; both renderers use the same spp and depth (drstudio max_depth
d = Mitsuba d + 1), Russian roulette from the same depth, a box pixel filter (drstudio jittered), and run on
1 and 2 CPU threads (drstudio: `render_path(threads=...)`, interleaved rows on Python threads; Mitsuba:
`dr.set_thread_count`, in a child process per thread count so its thread pool and JIT stay out of ours).

- forward: one render (drstudio `render_path`; Mitsuba `path`), a new seed each repeat;
- step: render + L2 loss against a fixed target + backward + the gradient of every material albedo
  evaluated (drstudio: `render_path` under a tape, which keeps each path's radiance, then path replay;
  Mitsuba: `prb`, `dr.backward`).
Medians of `--repeats` after `--warmup` untimed repeats. `busy` is the cores' worth of CPU other processes
used meanwhile (`bench_render.ForeignLoad`); with busy near 1 or more the two-thread figures are not
meaningful. `--baseline-module` also times an older copy of the stage in the same run (before/after).

    python -m benchmarks.bench_path --size 256 --spp 16 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = "drstudio.renderer.stages.pathtrace"


def _median_ms(fn, repeats: int, warmup: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms of this process, all its threads) of fn(i) over `repeats` calls after
    `warmup` untimed ones. CPU time is the work done, much less sensitive to other processes' load."""
    for i in range(warmup):
        fn(1000 + i)
    wall, cpu = [], []
    for i in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn(i)
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def _l2_kernel():
    import warp as wp

    @wp.kernel
    def l2(img: wp.array2d(dtype=float), target: wp.array2d(dtype=float), scale: float,
           loss: wp.array(dtype=float)):
        i = wp.tid()
        d0 = img[i, 0] - target[i, 0]
        d1 = img[i, 1] - target[i, 1]
        d2 = img[i, 2] - target[i, 2]
        wp.atomic_add(loss, 0, (d0 * d0 + d1 * d1 + d2 * d2) * scale)

    return l2


def measure_drstudio(scene: str, size: int, spp: int, max_depth: int | None, threads: int, repeats: int,
                     warmup: int, module: str = STAGE) -> dict:
    """drstudio's forward and step medians (ms) and the foreign load during each; `module` the
    path-tracing stage to time (an older copy of it gives before/after figures in one run)."""
    import importlib

    import warp as wp

    from benchmarks.bench_render import ForeignLoad
    from benchmarks.mitsuba_scene import load

    pt = importlib.import_module(module)
    l2 = _l2_kernel()
    ld = load(scene, size=size, requires_grad=True)
    depth = ld.render.max_depth if max_depth is None else max_depth
    ps = ld.scene
    if not isinstance(ps, pt.PathScene):
        ps = pt.PathScene(**{f: getattr(ps, f) for f in ps.__dataclass_fields__})
    kw = dict(spp=spp, max_depth=depth, rr_depth=5, jitter=True, threads=threads)
    target = pt.render_path(ps, ld.intrinsics, ld.pose, ld.width, ld.height, seed=99, **dict(kw, spp=4 * spp))
    loss = wp.zeros(1, dtype=float, requires_grad=True)

    def forward(i):
        pt.render_path(ps, ld.intrinsics, ld.pose, ld.width, ld.height, seed=i, **kw)
        wp.synchronize_device()

    def step(i):
        loss.zero_()
        ps.albedo.data.grad.zero_()
        tape = wp.Tape()
        with tape:
            img = pt.render_path(ps, ld.intrinsics, ld.pose, ld.width, ld.height, seed=i, **kw)
            wp.launch(l2, dim=img.shape[0], inputs=[img, target, 1.0 / img.size], outputs=[loss])
        tape.backward(loss)
        ps.albedo.data.grad.numpy()
        tape.reset()

    with ForeignLoad() as busy_f:
        fwd, fwd_cpu = _median_ms(forward, repeats, warmup)
    with ForeignLoad() as busy_s:
        stp, stp_cpu = _median_ms(step, repeats, warmup)
    return dict(forward_ms=fwd, step_ms=stp, forward_cpu_ms=fwd_cpu, step_cpu_ms=stp_cpu, busy_forward=busy_f.cores,
                busy_step=busy_s.cores, max_depth=depth)


def measure_mitsuba(scene: str, size: int, spp: int, max_depth: int, threads: int, repeats: int,
                    warmup: int) -> dict:
    """Mitsuba's forward (`path`) and step (`prb`) medians (ms), in a child process."""
    from benchmarks.bench_render import ForeignLoad

    cmd = [sys.executable, "-m", "benchmarks.bench_path", "--mitsuba-worker", "--scene", scene, "--size", str(size),
           "--spp", str(spp), "--max-depth", str(max_depth), "--threads", str(threads), "--repeats", str(repeats),
           "--warmup", str(warmup)]
    with ForeignLoad() as busy:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode != 0:
        raise RuntimeError(f"Mitsuba worker failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["busy"] = busy.cores
    return out


def _mitsuba_worker(args) -> dict:
    from benchmarks.mitsuba_scene import load, mitsuba, to_mitsuba

    mi, dr = mitsuba()
    dr.set_thread_count(args.threads)
    ld = load(args.scene, size=args.size)
    out = {"threads": dr.thread_count(), "mitsuba": mi.__version__, "drjit": dr.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        path = to_mitsuba(ld, tmp, spp=args.spp, max_depth=args.max_depth, integrator="path")
        prb = to_mitsuba(ld, tmp, spp=args.spp, max_depth=args.max_depth, integrator="prb")
    target = mi.render(prb, spp=4 * args.spp, seed=99)
    dr.eval(target)

    # an opaque seed: a Python int would be baked into the kernels as a literal (a recompile per seed)
    def forward(i):
        img = mi.render(path, spp=args.spp, seed=dr.opaque(mi.UInt32, i))
        dr.eval(img)
        dr.sync_thread()

    params = mi.traverse(prb)
    keys = [k for k in params.keys() if k.endswith("reflectance.value") or k.endswith("brdf_0.albedo")]

    def step(i):
        for k in keys:
            dr.enable_grad(params[k])
        params.update()
        img = mi.render(prb, params, spp=args.spp, seed=dr.opaque(mi.UInt32, i))
        loss = dr.mean(dr.square(img - target), axis=None)
        dr.backward(loss)
        grads = [dr.grad(params[k]) for k in keys]
        dr.eval(*grads)
        dr.sync_thread()
        for k in keys:
            dr.disable_grad(params[k])

    out["forward_ms"], out["forward_cpu_ms"] = _median_ms(forward, args.repeats, args.warmup)
    out["step_ms"], out["step_cpu_ms"] = _median_ms(step, args.repeats, args.warmup)
    return out


def _fmt(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def print_table(rows: list[dict], scene: str, size: int, spp: int) -> None:
    depth = rows[0]["dr"]["max_depth"]
    load = os.getloadavg()
    print(f"{Path(scene).name} {size}x{size}, {spp} spp, max_depth {depth} (Mitsuba {depth + 1}); "
          f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("Wall ms (CPU ms of the process, all threads); ratios of wall times, CPU-time ratios in brackets.")
    print("| threads | drstudio fwd | Mitsuba path fwd | fwd dr/mi | drstudio step | Mitsuba prb step | step dr/mi "
          "| busy dr (fwd, step) | busy mi | before: fwd, step |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def cell(x, key):
        return f"{x[key + '_ms']:.0f} ({x[key + '_cpu_ms']:.0f})" if x else "n/a"

    def ratio(d, m, key):
        if not m:
            return "n/a"
        return f"{d[key + '_ms'] / m[key + '_ms']:.2f} ({d[key + '_cpu_ms'] / m[key + '_cpu_ms']:.2f})"

    for r in rows:
        d, m, b = r["dr"], r.get("mi"), r.get("before")
        before = f"{cell(b, 'forward')}, {cell(b, 'step')}" if b else "-"
        print(f"| {r['threads']} | {cell(d, 'forward')} | {cell(m, 'forward')} | {ratio(d, m, 'forward')} "
              f"| {cell(d, 'step')} | {cell(m, 'step')} | {ratio(d, m, 'step')} | "
              f"{_fmt(d['busy_forward'])}, {_fmt(d['busy_step'])} | {_fmt(m and m.get('busy'))} | {before} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", default=str(ROOT / "scenes" / "cornell_box.json"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--spp", type=int, default=16)
    ap.add_argument("--max-depth", type=int, default=None, help="scattering events (default: the scene file's)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-mitsuba", action="store_true")
    ap.add_argument("--baseline-module", default=None,
                    help="also time this copy of the path-tracing stage in the same run, e.g. "
                         "drstudio.renderer.stages._pathtrace_before after `git show <commit>:renderer/stages/"
                         "pathtrace.py > renderer/stages/_pathtrace_before.py`")
    ap.add_argument("--mitsuba-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mitsuba_worker:
        args.threads = args.threads[0]
        print(json.dumps(_mitsuba_worker(args)))
        return 0
    rows = []
    for t in args.threads:
        row = dict(threads=t, dr=measure_drstudio(args.scene, args.size, args.spp, args.max_depth, t, args.repeats,
                                                  args.warmup))
        if args.baseline_module:
            row["before"] = measure_drstudio(args.scene, args.size, args.spp, args.max_depth, t, args.repeats,
                                             args.warmup, module=args.baseline_module)
        if not args.no_mitsuba:
            row["mi"] = measure_mitsuba(args.scene, args.size, args.spp, row["dr"]["max_depth"], t, args.repeats,
                                        args.warmup)
        rows.append(row)
    print_table(rows, args.scene, args.size, args.spp)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
