"""Wall and CPU time per optimizer step by phase, in real data-parallel ranks and in one process (benchmarks/README.md,
"Data-parallel ranks"): where a rank's step goes that does not halve.

    python -m benchmarks.phase_ranks --scene scenes/texture.json          # one process (one thread), then 2 ranks
    python -m benchmarks.phase_ranks --scene scenes/nerf_grid.json --lattice 64 --steps 30

Unlike `profile_rank` (a rank alone, with a stand-in sum), the ranks here are real: two processes started as
`drstudio optimize --nproc 2` starts them (gloo on 127.0.0.1, `Comm.from_env`: pinned unless DRSTUDIO_PIN_RANKS=0,
torch on one thread, `threads_per_rank` render threads), so `sum` is the real all-reduce: its wall time includes
waiting for the other rank, its CPU time what gloo's threads spend on it. One process renders on one thread. Phases
(each function's wall time and the process's CPU time, all threads, around each call): `before_step` (a field's
occupancy refresh), `zero_grads`, `forward` (`Problem._record_loss`), `backward` (`wp.Tape.backward`), `sum`
(`Comm.sum`), `update` (the optimizer's `step`, with its non-finite guard), `project` (the constraints' clamps),
`other` (the rest of `Problem.step`: batch, the tail, image and gradient copies, the tape's reset, bookkeeping).
Means per step over `--steps` steps after `--warmup`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("before_step", "zero_grads", "forward", "backward", "sum", "update", "project", "other")


def measure(args) -> dict:
    """{phase: (wall ms, CPU ms) per step} of this process: one rank if RANK is set, else one process."""
    from drstudio.renderer import memory

    memory.reuse_freed_buffers()  # as the drstudio command does
    import torch
    import warp as wp
    from drstudio.renderer.loading import open_scene
    from drstudio.renderer.optim import optimizers
    from drstudio.renderer.optim.distributed import Comm, threads_per_rank
    from drstudio.renderer.optim.problem import Problem

    comm = Comm.from_env("cpu") if "RANK" in os.environ else None
    torch.set_num_threads(1)
    p = Problem(open_scene(args.scene), "cpu")
    p.steps = p.check_every = 10**9
    if args.lattice:
        for name in p.scene.fields:
            p.model.move_to_lattice(name, (args.lattice,) * 3)
        p._build_optimizer()
    if comm is not None:
        p.set_shards(comm.world, comm)
        p.model.workers = threads_per_rank(comm.local_world)
    else:
        p.model.workers, p.model.parallel_views = 1, False
    spent = collections.defaultdict(lambda: [0.0, 0.0])
    timing = [False]

    def wrap(owner, name, phase):
        fn = getattr(owner, name)

        def timed(*a, **k):
            if not timing[0]:
                return fn(*a, **k)
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[phase][0] += time.perf_counter() - w
                spent[phase][1] += time.process_time() - c
        setattr(owner, name, timed)

    wrap(p.model, "before_step", "before_step")
    wrap(p, "_zero_grads", "zero_grads")
    wrap(p, "_record_loss", "forward")
    wrap(wp.Tape, "backward", "backward")
    wrap(type(p.optimizer), "step", "update")
    wrap(optimizers, "project", "project")
    if comm is not None:
        wrap(comm, "sum", "sum")
    for _ in range(args.warmup):
        p.step()
    timing[0] = True
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        p.step()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    out = {k: (1e3 * spent[k][0] / args.steps, 1e3 * spent[k][1] / args.steps) for k in PHASES if k in spent}
    out["other"] = (1e3 * wall / args.steps - sum(v[0] for v in out.values()),
                    1e3 * cpu / args.steps - sum(v[1] for v in out.values()))
    out["total"] = (1e3 * wall / args.steps, 1e3 * cpu / args.steps)
    if comm is not None:
        comm.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", default=str(ROOT / "scenes" / "texture.json"))
    ap.add_argument("--lattice", type=int, help="move a voxel-grid field to this lattice first (e.g. 64)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.as_rank:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return 0
    cmd = [sys.executable, "-m", "benchmarks.phase_ranks", "--as-rank", "--scene", args.scene,
           "--warmup", str(args.warmup), "--steps", str(args.steps)] + \
        (["--lattice", str(args.lattice)] if args.lattice else [])
    load0 = os.getloadavg()[0]
    cases = {}
    one = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})
    cases["one process, 1 thread"] = _result(one.stdout, one.returncode)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for r in range(2)]
    for r, proc in enumerate(procs):
        out, _ = proc.communicate()
        cases[f"rank {r} of 2"] = _result(out, proc.returncode)
    print(f"{Path(args.scene).name}{f' at {args.lattice}^3' if args.lattice else ''}, load average {load0:.2f} "
          f"before, {os.getloadavg()[0]:.2f} after; ms per step, wall / CPU (all threads)")
    print("| phase | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    for phase in (*PHASES, "total"):
        if any(phase in c for c in cases.values()):
            print(f"| {phase} | " + " | ".join(f"{c[phase][0]:.2f} / {c[phase][1]:.2f}" if phase in c else "-"
                                              for c in cases.values()) + " |")
    return 0


def _result(stdout: str, code: int) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if code or not lines:
        raise SystemExit(f"a measuring process failed (exit {code})")
    return json.loads(lines[-1][7:])


if __name__ == "__main__":
    raise SystemExit(main())
