"""Optimizer steps per second of data-parallel ranks (`drstudio optimize --nproc N`,
renderer.optim.distributed) against one process rendering a step's views on one thread and on several
threads (renderer.parallel.render_views for the mesh tasks; for the voxel-grid field its query, adjoint, TV and
lazy update split over threads, docs/volume.md "Every core"), on the multi-view mesh tasks and the voxel-grid field.

    python -m benchmarks.bench_distributed                       # shape, texture, nerf_grid: 1t / 2t / 2 ranks
    python -m benchmarks.bench_distributed --markdown            # the table for benchmarks/README.md
    python -m benchmarks.bench_distributed --scenes scenes/shape.json --rounds 9 --steps 20 --wait-idle 120

Every case is a whole `Problem.step()` (forward, backward, the rank's all-reduce, the optimizer update). The
set-ups of a scene are built and warmed up once (`--warmup` steps), then measured in `--rounds` interleaved
rounds, 1t, 2t, np, 2i, 1t, 2t, np, 2i, ...: in each round a set-up takes `--round-warmup` untimed steps, then
`--steps` timed ones, and its rate in that round is 1 / the median step time. The table gives the median over
rounds of each set- up's rate and of the per-round ratios (with their range over rounds), so a slow minute on a
shared machine moves one round, not a ratio. The ranks are separate processes started the way `drstudio optimize
--nproc` starts them (a TCPStore rendezvous on 127.0.0.1, gloo), each rendering its share of the step on `cores
// nproc` threads, pinned to as many cores (`distributed.pin_to_cores`; `DRSTUDIO_PIN_RANKS=0` leaves them free; rank 0
prints its cores); they stay up between rounds, blocked on the store while the one-process set-ups run. Rank 0's
step times are the run's (a step ends for every rank at the all-reduce); `all-reduce ms` is the median time rank
0 spent in it (waiting for the slower rank, plus the transfer). `CPU ms/step` is the CPU time each process used
per timed step (user + system, all its threads; for the ranks, each rank's own): on an idle machine the wall time
of a step is about the larger of the ranks', and on a busy one it says what the step costs regardless of what the
scheduler gave it. `CPU-bound 2p / 1t` is one thread's CPU per step over the slower rank's, per round (median and
range): the speed-up `--nproc` would reach if each rank had a core of its own and nothing waited, the figure that
survives a loaded machine (`CPU-bound 2i / 1t` likewise: N x one thread's CPU per step over the independent
processes' mean, the ceiling's throughput ratio if each had a core: below N by what N copies at once slow each
other down). `busy` is how many cores other processes
used while a set-up was measured (see benchmarks/bench_render.py `ForeignLoad`), the median over rounds: it
should be ~0; a busy neighbour on a 2-core machine makes every number here meaningless, and the two-core cases
suffer most.

The reference set-up "2 independent" (`2i`, `--no-independent` leaves it out) is the ceiling of any
data-parallel scheme here: `--nproc` processes, each running the one-process one-thread step of the same
scene (the 1t set-up's exact work), all at once, with no communication. Its figure is their combined
throughput (the sum of each process's rate, 1 / its median step) and `2i / 1t` that throughput over the
1t set-up's rate in the same round: what N processes that share nothing but the machine (its caches,
memory bandwidth, the hypervisor) get over one, so `np / 1t` can at best reach `2i / 1t`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENES = ("scenes/shape.json", "scenes/texture.json", "scenes/nerf_grid.json")
STORE_TIMEOUT_S = 900


def _ticks():
    from benchmarks.bench_render import _cpu_ticks

    return _cpu_ticks()


def _own_cpu_s() -> float:
    """CPU seconds this process used (all threads, user + system; not its children), at the clock's resolution
    (os.times counts 10 ms ticks)."""
    return time.process_time()


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


class LocalCase:
    """One process; a step's views on `threads` threads."""

    def __init__(self, scene: str, threads: int, warmup: int, batch_views: int | None):
        self.p = _problem(scene, batch_views)
        self.p.model.workers = threads
        self.p.model.parallel_views = threads > 1
        _time_steps(self.p, warmup, 0)

    def round(self, warmup: int, steps: int) -> dict:
        from benchmarks.bench_render import ForeignLoad

        _time_steps(self.p, warmup, 0)
        cpu0 = _own_cpu_s()
        with ForeignLoad() as load:
            times = _time_steps(self.p, 0, steps)
        return {"median_s": float(np.median(times)), "busy": load.cores,
                "cpu_s": [(_own_cpu_s() - cpu0) / steps]}

    def close(self) -> None:
        self.p = None


def rank_main(args) -> int:
    """One rank (started by `RankCase` with torchrun's environment): warm up, then per round wait for the
    parent's go on the store, time the steps; rank 0 posts the round's result on the store."""
    import torch
    import torch.distributed as dist
    from drstudio.renderer.optim.distributed import Comm, threads_per_rank
    from torch.distributed import TCPStore

    comm = Comm.from_env("cpu", timeout=STORE_TIMEOUT_S)
    if comm.rank == 0 and hasattr(os, "sched_getaffinity"):  # pinned unless DRSTUDIO_PIN_RANKS=0 (docs/distributed.md)
        cores = sorted(os.sched_getaffinity(0))
        print(f"rank 0 runs on cores {cores} of {os.cpu_count()}", file=sys.stderr, flush=True)
    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))
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
    _time_steps(p, args.warmup, 0)
    store.set(f"bench/ready/{comm.rank}", "1")
    for r in range(args.rounds):
        store.wait([f"bench/go/{r}"])
        _time_steps(p, args.round_warmup, 0)
        waits.clear()
        t0, s0, c0 = time.perf_counter(), _ticks(), _own_cpu_s()
        times = _time_steps(p, 0, args.steps)
        elapsed, s1, c1 = time.perf_counter() - t0, _ticks(), _own_cpu_s()
        # other processes' CPU: all busy time minus every rank's own; each rank's CPU per step
        own = torch.zeros(comm.world + 1, dtype=torch.float64)
        own[0] = float(s1[1] - s0[1]) if s0 and s1 else 0.0
        own[1 + comm.rank] = (c1 - c0) / args.steps
        dist.all_reduce(own)
        if comm.rank == 0:
            busy = None
            if s0 and s1:
                busy = max(0.0, (s1[0] - s0[0] - float(own[0])) / (elapsed * os.sysconf("SC_CLK_TCK")))
            store.set(f"bench/result/{r}", json.dumps({
                "median_s": float(np.median(times)), "busy": busy, "wait_s": float(np.median(waits)),
                "cpu_s": [float(x) for x in own[1:]]}))
    comm.close()
    return 0


def independent_main(args) -> int:
    """One process of the "2 independent" set-up (started by `IndependentCase`): the 1t set-up's step, timed in
    the same rounds as the ranks' (go and results through the parent's store), with no other communication."""
    from torch.distributed import TCPStore

    index = int(os.environ["RANK"])
    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))
    case = LocalCase(args.scene, 1, args.warmup, args.batch_views)
    store.set(f"bench/ready/{index}", "1")
    for r in range(args.rounds):
        store.wait([f"bench/go/{r}"])
        _time_steps(case.p, args.round_warmup, 0)
        t0, s0, c0 = time.perf_counter(), _ticks(), _own_cpu_s()
        times = _time_steps(case.p, 0, args.steps)
        elapsed, s1, c1 = time.perf_counter() - t0, _ticks(), _own_cpu_s()
        store.set(f"bench/result/{r}/{index}", json.dumps({
            "median_s": float(np.median(times)), "cpu_s": (c1 - c0) / args.steps, "elapsed_s": elapsed,
            "all_busy_ticks": float(s1[0] - s0[0]) if s0 and s1 else None}))
    return 0


class RankCase:
    """`nproc` rank processes, started as `drstudio optimize --nproc` starts them, kept up between rounds."""

    role = "--as-rank"

    def __init__(self, scene: str, nproc: int, args):
        from torch.distributed import TCPStore

        self.nproc = nproc
        self.store = TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(self.store.port),
               "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "TORCHELASTIC_USE_AGENT_STORE": "True"}
        cmd = [sys.executable, "-m", "benchmarks.bench_distributed", self.role, "--scene", scene,
               "--warmup", str(args.warmup), "--round-warmup", str(args.round_warmup), "--steps", str(args.steps),
               "--rounds", str(args.rounds)]
        if args.batch_views:
            cmd += ["--batch-views", str(args.batch_views)]
        self.procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
                      for r in range(nproc)]
        self.round_index = 0
        self._wait([f"bench/ready/{r}" for r in range(nproc)])

    def _wait(self, keys: list[str]) -> None:
        # poll so that a rank that died is reported instead of waiting for the store's timeout
        deadline = time.monotonic() + STORE_TIMEOUT_S
        while not self.store.check(keys):
            codes = [p.poll() for p in self.procs]
            if any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"a rank failed: exit codes {codes}")
            time.sleep(0.05)

    def round(self, warmup: int, steps: int) -> dict:
        r = self.round_index
        self.round_index += 1
        self.store.set(f"bench/go/{r}", "1")
        self._wait([f"bench/result/{r}"])
        return json.loads(self.store.get(f"bench/result/{r}"))

    def close(self) -> None:
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=60))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        if any(codes):
            raise RuntimeError(f"a rank failed: exit codes {codes}")


class IndependentCase(RankCase):
    """The "2 independent" reference: `nproc` processes each running the 1t set-up's step at once, no
    communication (`independent_main`); a round's figure is their combined rate."""

    role = "--as-independent"

    def round(self, warmup: int, steps: int) -> dict:
        r = self.round_index
        self.round_index += 1
        self.store.set(f"bench/go/{r}", "1")
        keys = [f"bench/result/{r}/{i}" for i in range(self.nproc)]
        self._wait(keys)
        res = [json.loads(self.store.get(k)) for k in keys]
        busy = None
        if all(x["all_busy_ticks"] is not None for x in res):  # process 0's window, less every process's own CPU
            own = sum(x["cpu_s"] for x in res) * steps * os.sysconf("SC_CLK_TCK")
            busy = max(0.0, (res[0]["all_busy_ticks"] - own) / (res[0]["elapsed_s"] * os.sysconf("SC_CLK_TCK")))
        return {"median_s": 1.0 / sum(1.0 / x["median_s"] for x in res), "busy": busy,
                "cpu_s": [x["cpu_s"] for x in res]}


def _fmt_ratio(values: list[float]) -> str:
    v = np.asarray(values)
    med = f"{np.median(v):.2f}x"
    return med if len(v) < 2 else f"{med} ({v.min():.2f}-{v.max():.2f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", nargs="+", default=list(SCENES))
    ap.add_argument("--nproc", type=int, default=2, help="ranks of the data-parallel case (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the multi-threaded case (default 2)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps of each set-up before the first round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the set-ups (default 5)")
    ap.add_argument("--round-warmup", type=int, default=2, help="untimed steps of a set-up in each round")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of a set-up in each round")
    ap.add_argument("--batch-views", type=int, help="override optimize.batch_views")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each round of each set-up wait up to S seconds for other processes to leave "
                         "the CPU alone")
    ap.add_argument("--no-independent", action="store_true",
                    help="leave out the reference set-up of --nproc independent one-thread processes (the ceiling)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--as-independent", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("rounds", "steps", "nproc", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")
    if args.as_rank:
        return rank_main(args)
    if args.as_independent:
        return independent_main(args)
    from benchmarks.bench_render import wait_until_idle

    t, p, i = f"{args.threads}t", f"{args.nproc}p", f"{args.nproc}i"
    rows = []
    for scene in args.scenes:
        path = str(ROOT / scene) if not Path(scene).is_absolute() else scene
        cases = {"1t": LocalCase(path, 1, args.warmup, args.batch_views),
                 t: LocalCase(path, args.threads, args.warmup, args.batch_views)}
        cases[p] = RankCase(path, args.nproc, args)
        if not args.no_independent:
            cases[i] = IndependentCase(path, args.nproc, args)
        results: dict[str, list[dict]] = {name: [] for name in cases}
        try:
            for r in range(args.rounds):
                for name, case in cases.items():
                    if args.wait_idle > 0:
                        wait_until_idle(args.wait_idle)
                    res = case.round(args.round_warmup, args.steps)
                    results[name].append(res)
                    extra = f", all-reduce {1e3 * res['wait_s']:.1f} ms" if "wait_s" in res else ""
                    cpu = " / ".join(f"{1e3 * c:.1f}" for c in res["cpu_s"])
                    print(f"{Path(scene).name} round {r + 1}/{args.rounds} {name}: {1 / res['median_s']:.2f} steps/s, "
                          f"CPU {cpu} ms/step (busy {res['busy']}{extra})", file=sys.stderr, flush=True)
        finally:
            for case in cases.values():
                case.close()
        rows.append((scene, results))
        print(f"{Path(scene).name} done, load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)

    indep = not args.no_independent
    head = ["scene", "1 thread", f"{args.threads} threads", f"--nproc {args.nproc}"]
    head += [f"{args.nproc} independent"] if indep else []
    head += [f"{p} / 1t", f"{p} / {t}"] + ([f"ceiling {i} / 1t", f"{p} / {i}"] if indep else [])
    head += ["all-reduce ms", f"CPU ms/step 1t / {t} / ranks" + (" / independent" if indep else ""),
             f"CPU-bound {p} / 1t"] + ([f"CPU-bound {i} / 1t"] if indep else [])
    head += [f"busy 1t / {t} / {p}" + (f" / {i}" if indep else "")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] if args.markdown else ["  ".join(head)]
    for scene, res in rows:
        rate = {k: [1.0 / x["median_s"] for x in v] for k, v in res.items()}
        med = {k: float(np.median(v)) for k, v in rate.items()}
        ratios = {k: [a / b for a, b in zip(rate[p], rate[k], strict=True)] for k in rate if k != p}
        ceiling = [a / b for a, b in zip(rate[i], rate["1t"], strict=True)] if i in rate else []
        order = ["1t", t, p] + ([i] if indep else [])
        busy = " / ".join("n/a" if k not in res or any(x["busy"] is None for x in res[k])
                          else f"{np.median([x['busy'] for x in res[k]]):.1f}" for k in order)
        cpu = " / ".join("n/a" if k not in res else
                         " + ".join(f"{1e3 * c:.1f}" for c in np.median([x["cpu_s"] for x in res[k]], axis=0))
                         for k in order)
        # CPU-bound ratios, per round: what the set-up would reach if every process had a core of its own and
        # nothing waited (the ranks: the slower rank's CPU per step; the independent processes: their mean)
        one = [x["cpu_s"][0] for x in res["1t"]]
        cpu_np = [a / max(x["cpu_s"]) for a, x in zip(one, res[p], strict=True)]
        cpu_i = [a * len(x["cpu_s"]) ** 2 / sum(x["cpu_s"]) for a, x in zip(one, res[i], strict=True)] if indep else []
        cells = [Path(scene).name, f"{med['1t']:.2f}", f"{med[t]:.2f}" if t in med else "n/a", f"{med[p]:.2f}"]
        cells += [f"{med[i]:.2f}"] if indep else []
        cells += [_fmt_ratio(ratios["1t"]), _fmt_ratio(ratios[t]) if t in ratios else "n/a"]
        cells += [_fmt_ratio(ceiling), _fmt_ratio(ratios[i])] if indep else []
        cells += [f"{1e3 * np.median([x['wait_s'] for x in res[p]]):.1f}", cpu]
        cells += [_fmt_ratio(cpu_np)] + ([_fmt_ratio(cpu_i)] if indep else []) + [busy]
        lines.append("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
