"""Whether a sharded optimizer update (ZeRO stage 1) can pay for itself with gloo on this machine: the cost of the
collectives it needs against the update work it saves a rank (benchmarks/README.md, "Data-parallel ranks").

    python -m benchmarks.bench_collectives            # the flat buffers of shape, texture, nerf_grid (32^3, 64^3)
    python -m benchmarks.bench_collectives --floats 49152 --rounds 9

Two ranks are started as `drstudio optimize --nproc 2` starts them (a TCPStore on 127.0.0.1, gloo, `Comm.from_env`:
pinned unless DRSTUDIO_PIN_RANKS=0, torch on one thread). For each buffer size n (float32) they time, in
interleaved rounds after a barrier (so both ranks enter together, no waiting for a slower rank is in the figures):

- `AR`: `all_reduce(SUM)` of n floats: the step's gradient sum today (`Comm.sum`);
- `RS + AG`: `reduce_scatter` of the n floats into halves, then `all_gather` of the n / 2 updated values: a
  ZeRO-1 step's communication in place of `AR` (each rank sums and updates its half only);
- `AR + AG`: the full sum, then `all_gather` of the halves: ZeRO-1 keeping today's sum (every rank holds every
  summed gradient, e.g. for the non-finite guard and the reported gradient norms), the exchange added after it.

Per collective: the wall time (median over rounds of each round's median) and the CPU time of the rank's process
(all its threads; user + system, mean), of which system time. The parent process times what sharding saves
(before the ranks start): Adam + the non-finite guard + a [0, 1] clamp (`optimizers.Adam.step`,
`optimizers.project`: a texture's update) over n and over n / 2 elements, one thread, CPU ms; `saved` is the
difference, the most a rank can save per step by updating half. ZeRO-1 pays when `saved` exceeds the extra
collective time (`RS + AG` - `AR`, or `AR + AG` - `AR`), in CPU and in wall time (a rank waits for the exchange
before its next forward pass).

`--work-ms W` (default 7, about a texture.json rank's forward and backward pass) adds the all-reduce as a step
makes it: each rank busy for W ms after the barrier, then the all-reduce, waited for by blocking (`work.wait()`, the
default) or by polling (`Comm._wait` with DRSTUDIO_POLL_COLLECTIVES=1); only the all-reduce is timed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# the flat gradient buffers of the benchmark tasks (floats): shape.json's 642 vertices, texture.json's 128x128x3
# albedo, nerf_grid.json's density + SH grid at 32^3 (its first phase) and 64^3
SIZES = {"shape": 1926, "texture": 49152, "nerf_grid 32^3": 131072, "nerf_grid 64^3": 1048576}
OPS = ("AR", "RS + AG", "AR + AG")


def _cpu() -> tuple[float, float]:
    """(CPU seconds of this process, all threads; of which system), at a finer resolution than os.times()."""
    import resource

    return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _busy(seconds: float) -> None:
    """Keep this thread's core busy for `seconds` (a step's forward and backward pass, as far as gloo can tell)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _polled(work) -> None:
    """`Comm._wait` with polling (DRSTUDIO_POLL_COLLECTIVES=1)."""
    while not work.is_completed():
        time.sleep(0)
    work.wait()


def rank_main(args) -> int:
    import warnings

    import torch
    import torch.distributed as dist
    from drstudio.renderer.optim.distributed import Comm

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's renames of the *_tensor collectives
    comm = Comm.from_env("cpu")
    out = {}
    for n in args.floats:
        n -= n % 2
        full, half = torch.ones(n), torch.ones(n // 2)
        ops = {"AR": lambda full=full: dist.all_reduce(full),
               "RS + AG": lambda full=full, half=half: (dist.reduce_scatter_tensor(half, full),
                                                        dist.all_gather_into_tensor(full, half)),
               "AR + AG": lambda full=full, half=half: (dist.all_reduce(full),
                                                        dist.all_gather_into_tensor(full, half))}
        if args.work_ms > 0:  # the sum as a step makes it: after work, blocking in wait() or polling (Comm._wait)
            ops["AR after work"] = lambda full=full: dist.all_reduce(full, async_op=True).wait()
            ops["AR after work, polled"] = lambda full=full: _polled(dist.all_reduce(full, async_op=True))
        rec = {k: {"wall": [], "cpu": [], "sys": []} for k in ops}
        for f in ops.values():  # warm-up: connections, buffers
            for _ in range(5):
                f()
        for _ in range(args.rounds):
            for k, f in ops.items():
                walls = []
                for _ in range(args.reps):
                    dist.barrier()
                    if k.startswith("AR after work"):
                        _busy(args.work_ms / 1e3)
                    c0, s0 = _cpu()
                    t0 = time.perf_counter()
                    f()
                    walls.append(time.perf_counter() - t0)
                    c1, s1 = _cpu()
                    rec[k]["cpu"].append(c1 - c0)
                    rec[k]["sys"].append(s1 - s0)
                rec[k]["wall"].append(float(np.median(walls)))
        out[n] = {k: {"wall_ms": 1e3 * float(np.median(v["wall"])), "cpu_ms": 1e3 * float(np.mean(v["cpu"])),
                      "sys_ms": 1e3 * float(np.mean(v["sys"]))} for k, v in rec.items()}
    if comm.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
    comm.close()
    return 0


def update_cpu_ms(n: int, reps: int) -> float:
    """CPU ms of one Adam step (guard + update) and a [0, 1] clamp over n float32 elements, one thread."""
    import warp as wp
    from drstudio.renderer.optim import optimizers

    rng = np.random.default_rng(0)
    p = wp.array(rng.random(n, dtype=np.float32), dtype=float, requires_grad=True)
    p.grad.assign(rng.standard_normal(n).astype(np.float32))
    opt = optimizers.Adam([p], 1e-2)
    for _ in range(5):
        opt.step(loss_value=1.0)
        optimizers.project(p, "albedo")
    times = []
    for _ in range(reps):
        t = time.process_time()
        opt.step(loss_value=1.0)
        optimizers.project(p, "albedo")
        times.append(time.process_time() - t)
    return 1e3 * float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--floats", type=int, nargs="+", default=list(SIZES.values()))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="collectives per op per round")
    ap.add_argument("--work-ms", type=float, default=7.0,
                    help="also time an all-reduce after this much busy work on each rank, blocking and polled (0: no)")
    ap.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.as_rank:
        return rank_main(args)
    import warp as wp

    wp.config.quiet = True
    wp.init()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2"}
    cmd = [sys.executable, "-m", "benchmarks.bench_collectives", "--as-rank", "--rounds", str(args.rounds),
           "--reps", str(args.reps), "--work-ms", str(args.work_ms), "--floats", *map(str, args.floats)]
    load0 = os.getloadavg()[0]
    # the update's cost first, alone: a third process would take a core from the ranks
    updates = {n - n % 2: (update_cpu_ms(n - n % 2, 50), update_cpu_ms((n - n % 2) // 2, 50)) for n in args.floats}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL, text=True) for r in range(2)]
    out, _ = procs[0].communicate()
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"a rank failed: exit codes {codes}", file=sys.stderr)
        return 1
    res = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    names = {v: k for k, v in SIZES.items()}
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load average {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; rank 0's wall / CPU / system ms per collective; update CPU ms, one thread")
    print("| buffer | floats | " + " | ".join(f"{k} wall / CPU / sys" for k in OPS)
          + " | update n / n/2 | saved | RS + AG - AR (wall / CPU) | AR + AG - AR (wall / CPU) |")
    print("|---|---|" + "---|" * (len(OPS) + 4))
    for n, r in res.items():
        n = int(n)
        full, half = updates[n]
        extra = [(r[k]["wall_ms"] - r["AR"]["wall_ms"], r[k]["cpu_ms"] - r["AR"]["cpu_ms"]) for k in OPS[1:]]
        print(f"| {names.get(n, '')} | {n} | "
              + " | ".join(f"{r[k]['wall_ms']:.2f} / {r[k]['cpu_ms']:.2f} / {r[k]['sys_ms']:.2f}" for k in OPS)
              + f" | {full:.2f} / {half:.2f} | {full - half:.2f} | "
              + " | ".join(f"{w:+.2f} / {c:+.2f}" for w, c in extra) + " |")
    if args.work_ms > 0:
        print(f"\nAn all-reduce after {args.work_ms:g} ms of busy work on each rank (a step), wall / CPU / sys ms:")
        print("| buffer | floats | AR after a barrier | after work, blocking | after work, polled |")
        print("|---|---|---|---|---|")
        for n, r in res.items():
            print(f"| {names.get(int(n), '')} | {n} | " + " | ".join(
                f"{r[k]['wall_ms']:.2f} / {r[k]['cpu_ms']:.2f} / {r[k]['sys_ms']:.2f}"
                for k in ("AR", "AR after work", "AR after work, polled")) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
