"""Optimizer steps per second of data-parallel ranks (`drstudio optimize --nproc N`,
renderer.optim.distributed) against one process rendering a step's views on one thread and on several
threads (renderer.parallel.render_views), on the multi-view mesh tasks and the voxel-grid field (whose ray
batch has no threaded path: its "2 threads" column is n/a).

    python -m benchmarks.bench_distributed                       # shape, texture, nerf_grid: 1t / 2t / 2 ranks
    python -m benchmarks.bench_distributed --markdown            # the table for benchmarks/README.md
    python -m benchmarks.bench_distributed --scenes scenes/shape.json --steps 40 --warmup 8 --wait-idle 120

Every case is a whole `Problem.step()` (forward, backward, the rank's all-reduce, the optimizer update),
timed one by one after `--warmup` steps; the table gives the median. The ranks are separate processes
started the way `drstudio optimize --nproc` starts them (a TCPStore rendezvous on 127.0.0.1, gloo), each
rendering its share of the views on `cores // nproc` threads; rank 0's step times are the run's (a step
ends for every rank at the all-reduce); `all-reduce ms` is the median time rank 0 spent in it (waiting for
the slower rank, plus the transfer). `busy` is how many cores other processes used while a case was
measured (see benchmarks/bench_render.py `ForeignLoad`): it should be ~0; a busy neighbour on a 2-core
machine makes every number here meaningless, and the two-core cases suffer most.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENES = ("scenes/shape.json", "scenes/texture.json", "scenes/nerf_grid.json")


def _ticks():
    from benchmarks.bench_render import _cpu_ticks

    return _cpu_ticks()


def _problem(scene: str, batch_views: int | None):
    from drstudio.renderer import memory
    from drstudio.renderer.loading import open_scene
    from drstudio.renderer.optim.problem import Problem

    memory.reuse_freed_buffers()  # as the `drstudio` command does in every process (app/cli.py main)
    p = Problem(open_scene(scene), "cpu")
    if batch_views:
        p.batch_views = batch_views
    p.steps = 10**9  # never "finished" while measuring
    return p


def _time_steps(p, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        p.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        p.step()
        times.append(time.perf_counter() - t0)
    return times


def measure_local(scene: str, threads: int, warmup: int, steps: int, batch_views: int | None) -> dict:
    """One process; a step's views on `threads` threads."""
    from benchmarks.bench_render import ForeignLoad

    p = _problem(scene, batch_views)
    p.model.workers = threads
    p.model.parallel_views = threads > 1
    for _ in range(warmup):
        p.step()
    with ForeignLoad() as load:
        times = _time_steps(p, 0, steps)
    return {"median_s": float(np.median(times)), "busy": load.cores}


def rank_main(args) -> int:
    """One rank (started by `measure_ranks` with torchrun's environment): time the steps, rank 0 writes them."""
    import torch
    import torch.distributed as dist
    from drstudio.renderer.optim.distributed import Comm, threads_per_rank

    comm = Comm.from_env("cpu", timeout=600)
    p = _problem(args.scene, args.batch_views)
    p.set_shards(comm.world, comm)
    p.model.workers = threads_per_rank(comm.local_world)
    p.check_every = 10**9  # not part of a step's cost worth measuring here
    waits = []  # seconds each step spent in the all-reduce (waiting for the other ranks, and the transfer)
    total_sum = comm.sum

    def timed_sum(flat, step):
        t = time.perf_counter()
        try:
            return total_sum(flat, step)
        finally:
            waits.append(time.perf_counter() - t)

    comm.sum = timed_sum
    for _ in range(args.warmup):
        p.step()
    waits.clear()
    t0, s0 = time.perf_counter(), _ticks()
    times = _time_steps(p, 0, args.steps)
    elapsed, s1 = time.perf_counter() - t0, _ticks()
    # other processes' CPU: all busy time minus every rank's own
    own = torch.tensor([float(s1[1] - s0[1]) if s0 and s1 else 0.0])
    dist.all_reduce(own)
    comm.close()
    if comm.rank == 0:
        busy = None
        if s0 and s1:
            busy = max(0.0, (s1[0] - s0[0] - float(own[0])) / (elapsed * os.sysconf("SC_CLK_TCK")))
        Path(args.result).write_text(json.dumps({"median_s": float(np.median(times)), "busy": busy,
                                                 "wait_s": float(np.median(waits))}))
    return 0


def measure_ranks(scene: str, nproc: int, warmup: int, steps: int, batch_views: int | None) -> dict:
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=600))
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "TORCHELASTIC_USE_AGENT_STORE": "True"}
        cmd = [sys.executable, "-m", "benchmarks.bench_distributed", "--as-rank", "--scene", scene, "--warmup",
               str(warmup), "--steps", str(steps), "--result", str(result)]
        if batch_views:
            cmd += ["--batch-views", str(batch_views)]
        procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
                 for r in range(nproc)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"a rank failed: exit codes {codes}")
        return json.loads(result.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", nargs="+", default=list(SCENES))
    ap.add_argument("--nproc", type=int, default=2, help="ranks of the data-parallel case (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the multi-threaded case (default 2)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per case (the median is reported)")
    ap.add_argument("--batch-views", type=int, help="override optimize.batch_views")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each case wait up to S seconds for other processes to leave the CPU alone")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.as_rank:
        return rank_main(args)
    from benchmarks.bench_render import wait_until_idle

    rows = []
    for scene in args.scenes:
        path = str(ROOT / scene) if not Path(scene).is_absolute() else scene
        cases = {}
        opts = (args.warmup, args.steps, args.batch_views)
        field = bool(json.loads(Path(path).read_text()).get("fields"))
        for name, run, arg in (("1t", measure_local, 1), (f"{args.threads}t", measure_local, args.threads),
                               (f"{args.nproc}p", measure_ranks, args.nproc)):
            if field and run is measure_local and arg > 1:
                continue  # a field's ray batch renders in one launch per stage: no threaded path to compare
            if args.wait_idle > 0:
                wait_until_idle(args.wait_idle)
            cases[name] = run(path, arg, *opts)
            extra = f", all-reduce {1e3 * cases[name]['wait_s']:.1f} ms" if "wait_s" in cases[name] else ""
            print(f"{scene} {name}: {1 / cases[name]['median_s']:.2f} steps/s (busy {cases[name]['busy']}{extra})",
                  file=sys.stderr, flush=True)
        rows.append((scene, cases))
    t, p = f"{args.threads}t", f"{args.nproc}p"
    head = ["scene", "1 thread", f"{args.threads} threads", f"--nproc {args.nproc}", f"{p} / 1t", f"{p} / {t}",
            "all-reduce ms", "busy 1t / 2t / np"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] if args.markdown else ["  ".join(head)]
    for scene, c in rows:
        rate = {k: 1.0 / v["median_s"] for k, v in c.items()}
        busy = " / ".join("n/a" if v["busy"] is None else f"{v['busy']:.1f}" for v in c.values())
        cells = [Path(scene).name, f"{rate['1t']:.2f}", f"{rate[t]:.2f}" if t in rate else "n/a", f"{rate[p]:.2f}",
                 f"{rate[p] / rate['1t']:.2f}x", f"{rate[p] / rate[t]:.2f}x" if t in rate else "n/a",
                 f"{1e3 * c[p]['wait_s']:.1f}", busy]
        lines.append("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
