"""`drstudio optimize --nproc N`: start N ranks of the same command on this machine, the way torchrun does.

This process hosts the rendezvous (a torch.distributed `TCPStore` on 127.0.0.1 and a free port the OS
picks, so no port can be taken by someone else between choosing and binding it) and starts N children
`python -m drstudio.app.cli <the same arguments>` with torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE), which makes each
child one rank (`renderer.optim.distributed`). Then it supervises them:
- every child dies with this process (PR_SET_PDEATHSIG: SIGTERM, a clean stop after the current step);
- SIGINT / SIGTERM sent to this process are passed on to the ranks (they agree on a step to stop after);
- when a rank fails, the others normally notice at their next collective and stop by themselves with a
  one-line message; any still running `grace` seconds later get SIGTERM, then SIGKILL after as long again.
Exit code: 0 when every rank succeeded; that of the first rank that failed (3 when it was killed by a signal
or lost its peers, 2 for a user error, 130 interrupted).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import subprocess
import sys
import time

EXIT_DISTRIBUTED = 3
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass  # not Linux: the child outlives a killed launcher, as under a plain `&`


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def run_ranks(argv: list[str], nproc: int, *, timeout: float, grace: float = 10.0,
              prog: str = "drstudio optimize") -> int:
    """Run `python -m drstudio.app.cli *argv` as `nproc` ranks on this machine; return the exit code."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=timeout))
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0", "TORCHELASTIC_USE_AGENT_STORE": "True",
            # c10d's C++ warnings (a timed-out socket poll) would repeat what the rank's one line says
            "TORCH_CPP_LOG_LEVEL": os.environ.get("TORCH_CPP_LOG_LEVEL", "ERROR")}
    procs: list[subprocess.Popen] = []
    forwarded: list[int] = []

    def forward(signum, frame):
        forwarded.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for rank in range(nproc):
            env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            procs.append(subprocess.Popen([sys.executable, "-m", "drstudio.app.cli", *argv], env=env,
                                          preexec_fn=_die_with_parent))
        return _supervise(procs, grace, prog)
    finally:
        for p in procs:  # only after an exception in this process: never leave ranks behind
            if p.poll() is None:
                p.kill()
                p.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        del store


def _supervise(procs: list[subprocess.Popen], grace: float, prog: str) -> int:
    first: tuple[int, int] | None = None  # (rank, exit code) of the first rank that failed
    failed_at = 0.0
    terminated = False
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        for rank, code in enumerate(codes):
            if code not in (None, 0) and first is None:
                first, failed_at = (rank, code), time.monotonic()
                if code < 0:
                    print(f"{prog}: error: rank {rank} (pid {procs[rank].pid}) {_describe(code)}; stopping the "
                          f"other ranks", file=sys.stderr, flush=True)
        if first is not None:
            waited = time.monotonic() - failed_at
            # a rank that failed before the rendezvous (a user error) leaves the others waiting in it: no grace
            limit = 0.0 if first[1] == 2 else grace
            if waited > limit and not terminated:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                terminated = True
            elif waited > limit + max(grace, 2.0):
                for p in procs:
                    if p.poll() is None:
                        p.kill()
        time.sleep(0.05)
    if first is None:
        return 0
    rank, code = first
    return EXIT_DISTRIBUTED if code < 0 else code
