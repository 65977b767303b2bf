"""CPU time of one data-parallel rank's optimizer step, by Warp kernel, against the whole step in one process
(benchmarks/README.md, "Data-parallel ranks": the voxel-grid field's table).

    python -m benchmarks.profile_rank                          # scenes/nerf_grid.json: one process, rank 0 and 1 of 2
    python -m benchmarks.profile_rank --scene scenes/nerf_grid.json --lattice 64 --steps 20

One process renders on one thread, a rank on `cores // ranks` threads (as bench_distributed's 1t set-up and
ranks). A rank is measured alone, in this process: `Problem.set_shards(N, comm)` with a stand-in comm whose sum is the
identity, so the rank renders its share of each step exactly as it would and the all-reduce costs nothing here
(bench_distributed measures real ranks). A rank cannot gather the other ranks' slabs of an occupancy refresh
alone, so here it refreshes the whole grid as one process does (a real rank does its slab plus a 1 MB
all-gather). CPU launches are synchronous: each kernel's CPU time is taken around its launch (process time);
`rest` is the step's CPU time outside kernels (Python, argument packing, allocation, `zero_` of gradients).
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class _AloneComm:
    """A rank of `world` without the others: the sum of the buffers is this rank's own."""

    device = "cpu"

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def sum(self, flat, step):
        return flat

    def check_same(self, checksum, step):
        pass


def profile(scene: str, ranks: int, rank: int, warmup: int, steps: int, lattice: int | None) -> dict:
    """{"cpu_ms": [per step], "kernels": {name: CPU ms per step}} of rank `rank` of `ranks` (1: one process)."""
    import warp._src.context as wctx
    from drstudio.renderer import memory
    from drstudio.renderer.loading import open_scene
    from drstudio.renderer.optim.distributed import threads_per_rank
    from drstudio.renderer.optim.problem import Problem

    memory.reuse_freed_buffers()  # as the drstudio command does
    import torch

    torch.set_num_threads(1)  # as a rank does (Comm.from_env): torch's idle pool would spin on the CPU measured
    p = Problem(open_scene(scene), "cpu")
    p.steps, p.check_every = 10**9, 10**9
    if lattice:
        for name in p.scene.fields:
            p.model.move_to_lattice(name, (lattice,) * 3)
    # render threads as bench_distributed's set-ups: one process on one thread, a rank on its share of the cores
    p.model.workers = threads_per_rank(ranks) if ranks > 1 else 1
    if ranks > 1:
        alone = _AloneComm(rank, ranks)
        p.set_shards(ranks, alone)
        whole_refresh = type(p.model).before_step

        def before_step(step):  # no other rank to gather an occupancy slab from: refresh the whole grid
            p.comm = None
            try:
                whole_refresh(p.model, step)
            finally:
                p.comm = alone

        p.model.before_step = before_step
    spent = collections.defaultdict(float)
    invoke = wctx.invoke

    def timed(kernel, hooks, params, adjoint):
        t = time.process_time()
        try:
            invoke(kernel, hooks, params, adjoint)
        finally:
            spent[kernel.key + (" (adjoint)" if adjoint else "")] += time.process_time() - t

    for _ in range(warmup):
        p.step()
    wctx.invoke = timed
    try:
        cpu = []
        for _ in range(steps):
            t = time.process_time()
            p.step()
            cpu.append(time.process_time() - t)
    finally:
        wctx.invoke = invoke
    kernels = {k: 1e3 * v / steps for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    kernels["rest"] = 1e3 * np.mean(cpu) - sum(kernels.values())
    return {"cpu_ms": [1e3 * c for c in cpu], "kernels": kernels}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", default=str(ROOT / "scenes" / "nerf_grid.json"))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lattice", type=int, help="move a voxel-grid field to this lattice first (e.g. 64)")
    args = ap.parse_args(argv)
    cases = {"one process": profile(args.scene, 1, 0, args.warmup, args.steps, args.lattice)}
    for r in range(args.ranks if args.ranks > 1 else 0):
        cases[f"rank {r} of {args.ranks}"] = profile(args.scene, args.ranks, r, args.warmup, args.steps, args.lattice)
    names = list(cases)
    rows = list(dict.fromkeys(k for c in cases.values() for k in c["kernels"]))
    print("| CPU ms per step | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k in rows:
        print(f"| `{k}` | " + " | ".join(f"{c['kernels'].get(k, 0.0):.2f}" for c in cases.values()) + " |")
    print("| total, mean (median) | " + " | ".join(f"{np.mean(c['cpu_ms']):.1f} ({np.median(c['cpu_ms']):.1f})"
                                                   for c in cases.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
