"""Data-parallel optimization on torch.distributed: each rank renders its share of a step's views, the
gradients of the free parameters are summed across ranks in one flat float32 buffer, and every rank applies
the same optimizer update, so the parameters stay identical on every rank (docs/distributed.md).

`Comm` is one rank's membership in the process group (gloo on the CPU, NCCL on CUDA), made from the
environment a launcher sets (`torchrun`, or `drstudio optimize --nproc N`): RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT. A `Problem` with `comm` set (and `shards` = world size) takes its
steps through `Problem._step_sharded`, which uses the helpers below; the same function with `comm=None`
emulates the ranks one after another in one process (what `replay --verify` of a distributed recording does),
summing the per-rank buffers in the same order, so the emulation reproduces the run.

The flat buffer of one rank: the gradients of the optimizer's parameters (in `Problem.opt_paths` order, each
flattened), then the rank's share of each weighted loss term (in `Problem.weights` order, terms with weight 0
left out), its share of the total loss, a stop flag (1 when that rank was asked to stop: Ctrl-C, SIGTERM), a
time flag (1 when that rank's time budget, `optimize --max-seconds`, ran out) and a thumbnail request (the
largest side of the recording's thumbnail rank 0 will draw after this step, else 0: every rank then renders its
rows of it, `Problem.render_rows_shared`).

Reduction order: 1 or 2 ranks: `all_reduce(SUM)` (a + b is exact and commutative in float32, so every rank and
the emulation get the same bits); more ranks: `all_gather`, then the buffers are added in rank order,
((b0 + b1) + b2) + ..., on every rank — the same bits everywhere and in the emulation, which a backend's ring
all-reduce would not give. A failed collective (a rank crashed or was killed, or did not answer within the
process-group timeout) raises `DistributedError` with a one-line message.
"""

from __future__ import annotations

import datetime
import os
import time
import zlib
from typing import TYPE_CHECKING

import numpy as np
import warp as wp

if TYPE_CHECKING:  # torch is imported where it is used: a one-process run never loads it for this module
    import torch

DEFAULT_TIMEOUT = 300.0  # seconds a collective waits for the other ranks (first steps compile kernels)
CHECK_EVERY = 10  # steps between checks that every rank holds the same parameters


class DistributedError(RuntimeError):
    """A distributed run cannot go on: a rank was lost, timed out, or the ranks' parameters diverged.
    `expected`: the engine reports it as a one-line error without a traceback."""

    expected = True


def launched() -> bool:
    """Whether this process was started as one rank of several (RANK and WORLD_SIZE > 1 in the environment)."""
    try:
        return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


# "0": leave a CPU rank free to run on any core; "main": pin its main and render threads but not gloo's (default:
# the whole rank pinned, `pin_to_cores`)
PIN_ENV = "DRSTUDIO_PIN_RANKS"
POLL_ENV = "DRSTUDIO_POLL_COLLECTIVES"  # "1": a gloo rank polls its collectives instead of blocking (`Comm._wait`)
# the nice value of gloo's TCP loop thread on a CPU rank (`lower_gloo_loop`); "0" leaves it at the rank's own
LOOP_NICE_ENV = "DRSTUDIO_GLOO_LOOP_NICE"
LOOP_NICE_DEFAULT = 10


def pin_to_cores(local_rank: int, local_world: int) -> list[int] | None:
    """Pin this process, and the threads it starts afterwards, to its share of the cores it may run on: rank r of
    the N on this machine takes cores [r k, (r + 1) k), k = cores // N (as many as its render threads,
    `threads_per_rank`), so the ranks never trade cores and each finds its caches where it left them after a
    wait in the all-reduce. Returns the cores, or None (nothing changed) with fewer cores than ranks, or where
    the OS has no sched_setaffinity."""
    if not hasattr(os, "sched_setaffinity") or local_world < 2:
        return None
    cores = sorted(os.sched_getaffinity(0))
    k = len(cores) // local_world
    if k < 1 or not 0 <= local_rank < local_world:
        return None
    mine = cores[local_rank * k:(local_rank + 1) * k]
    os.sched_setaffinity(0, mine)
    global _PINNED
    _PINNED = list(mine)
    return mine


_PINNED: list[int] | None = None  # the cores `pin_to_cores` gave this process, once it did


def lower_gloo_loop(nice: int) -> int:
    """Give gloo's TCP loop threads (thread name `gloo_tcp_loop`, one per process group) the lower priority `nice`
    (Linux; a thread's nice value is its own). Returns how many threads were changed (0 where there is no /proc or
    `nice` is 0).

    Why: gloo's loop thread waits for its sockets with level-triggered `epoll_wait`, and when data arrives while a
    worker thread holds that connection's lock (sending its half of the sum), it does not wait for the lock: it
    returns and calls `epoll_wait` again at once, which reports the same unread data, over and over until the lock
    is free (gloo's `tcp::Pair::handleEvents`, a `try_lock`). Pinned, the spinning loop thread shares the rank's one
    core with the lock holder, and at equal priority the scheduler gives it half of it: measured
    on this 2-core machine (benchmarks/README.md, "gloo's loop thread"), an all-reduce after 7 ms of work took
    2.5-2.9 ms at equal priority and 0.7-0.9 ms with the loop thread at nice 10, and each rank used 0.9 ms less CPU
    per step. The cost: when the rank waits in a collective and another process wants its core, the loop thread
    gets a smaller share of it (a busy process beside the ranks: +1-2 ms a collective)."""
    if nice <= 0 or not os.path.isdir("/proc/self/task"):
        return 0
    changed = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            if name == "gloo_tcp_loop":
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                changed += 1
        except (OSError, ValueError):  # the thread ended, or the OS refused: the run goes on at equal priority
            continue
    return changed


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container, `taskset` or a batch system may
    limit to fewer than the machine has; `os.cpu_count()` where the OS has no affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_rank(local_world: int) -> int:
    """Render threads each rank uses: the cores this process may run on shared by the ranks on this machine (at
    least 1); a rank `pin_to_cores` pinned uses the cores it was given (already its share)."""
    if _PINNED is not None:
        return max(1, len(_PINNED))
    return max(1, usable_cores() // max(1, int(local_world)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    # gloo prefixes its source location: "[.../pair.cc:553] Connection closed by peer ..."
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    # and adds advice after the first sentence ("... This is typically caused by a remote worker crashing.")
    return line.split(". ", 1)[0][:200]


class Comm:
    """This process's rank in a process group: `rank`, `world`, `local_rank`, `local_world`, `device` (the
    torch device the buffers live on), `backend`, `warp_device` (the Warp device the rank optimizes on: the
    CPU, or cuda:LOCAL_RANK)."""

    def __init__(self, rank: int, world: int, local_rank: int, local_world: int, backend: str, device: str):
        self.rank, self.world = rank, world
        self.local_rank, self.local_world = local_rank, local_world
        self.backend, self.device = backend, device
        self.warp_device = device  # "cpu" or "cuda:N": the same names in Warp and torch
        # gloo: wait for a collective by polling it (`_wait`) when POLL_ENV is "1" (not the default: not yet measured
        # on a quiet machine in real steps)
        self.poll = backend == "gloo" and os.environ.get(POLL_ENV, "0") == "1"

    @classmethod
    def from_env(cls, device: str | None, timeout: float = DEFAULT_TIMEOUT) -> Comm:
        """Join the process group the environment describes (blocks until every rank has joined, at most
        `timeout` seconds). `device`: the Warp device of the run ("cpu", "cuda", None: cpu); on CUDA each
        rank takes cuda:LOCAL_RANK and NCCL."""
        import torch.distributed as dist

        env = os.environ
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local_rank = int(env.get("LOCAL_RANK", rank))
            local_world = int(env.get("LOCAL_WORLD_SIZE", world))
        except (KeyError, ValueError) as e:
            raise DistributedError(f"bad launcher environment: RANK and WORLD_SIZE must be integers ({e})") from None
        try:
            loop_nice = min(19, int(env.get(LOOP_NICE_ENV, LOOP_NICE_DEFAULT)))
        except ValueError:
            raise DistributedError(f"{LOOP_NICE_ENV} must be an integer nice value (0 to 19), "
                                   f"not {env[LOOP_NICE_ENV]!r}") from None
        import torch

        cuda = bool(device) and device.startswith("cuda")
        pin = "" if cuda else os.environ.get(PIN_ENV, "1")
        if pin not in ("0", "main", ""):  # before gloo starts its threads: they inherit it
            pin_to_cores(local_rank, local_world)
        backend = "nccl" if cuda else "gloo"
        tdev = f"cuda:{local_rank}" if cuda else "cpu"
        if cuda:
            torch.cuda.set_device(local_rank)
        else:  # the buffers are small; torch's own thread pool would only compete with the ranks' renders
            torch.set_num_threads(1)
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=float(timeout)))
        except Exception as exc:  # the rendezvous failed or timed out
            raise DistributedError(f"rank {rank} could not join the other {world - 1} rank(s) at "
                                   f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}: {_first_line(exc)}") from None
        if pin == "main":  # this thread and the render threads it starts; gloo's threads stay free
            pin_to_cores(local_rank, local_world)
        if backend == "gloo":
            lower_gloo_loop(loop_nice)
        return cls(rank, world, local_rank, local_world, backend, tdev)

    def _lost(self, step: int, exc: BaseException) -> DistributedError:
        return DistributedError(f"rank {self.rank}: lost contact with the other ranks at step {step} (one crashed, "
                                f"was killed or stopped answering): {_first_line(exc)}")

    def _wait(self, work) -> None:
        """Wait for an asynchronous collective (raising its error). With `poll` (gloo, DRSTUDIO_POLL_COLLECTIVES=1),
        by asking whether it has completed, with `time.sleep(0)` between the questions, instead of blocking in
        `work.wait()`. Unproven (benchmarks/README.md, branch dp16e): in one two-process loop on this VM a polled
        all-reduce after 7 ms of work took 0.4-0.6 ms against 1.1-4.8 ms blocked, in `bench_collectives --work-ms`
        4.8 ms either way, and in real texture.json steps on a loaded machine it gained nothing; so it is off by
        default. A polling rank keeps its core busy while it waits (its CPU time then counts the wait); a failed or
        timed-out collective completes too, so the loop ends and `wait` raises."""
        if self.poll:
            while not work.is_completed():
                time.sleep(0)  # lets gloo's threads (and any other) run; no GIL held while they need it
        work.wait()

    def sum(self, flat: torch.Tensor, step: int) -> torch.Tensor:
        """The element-wise sum of every rank's `flat` (float32, same length), identical on every rank."""
        import torch
        import torch.distributed as dist

        try:
            if self.world <= 2:
                self._wait(dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True))
                return flat
            parts = [torch.empty_like(flat) for _ in range(self.world)]
            self._wait(dist.all_gather(parts, flat, async_op=True))
        except Exception as exc:
            raise self._lost(step, exc) from None
        return ordered_sum(parts)

    def gather_rows(self, arr: torch.Tensor, step: int) -> None:
        """Work split by slabs (`rows_of`): every rank computed rows `rows_of(n, its rank, world)` of `arr` (first
        axis, n rows); write the other ranks' rows into this rank's `arr` (in place, an all-gather). Nothing is
        added, so every rank then holds the same bits."""
        import torch
        import torch.distributed as dist

        n = arr.shape[0]
        bounds = [rows_of(n, r, self.world) for r in range(self.world)]
        size = max(b - a for a, b in bounds)  # all_gather takes equal parts: the slabs padded to the largest
        lo, hi = bounds[self.rank]
        mine = torch.zeros((size, *arr.shape[1:]), dtype=arr.dtype, device=arr.device)
        mine[:hi - lo] = arr[lo:hi]
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        try:
            self._wait(dist.all_gather(parts, mine, async_op=True))
        except Exception as exc:
            raise self._lost(step, exc) from None
        for r, (a, b) in enumerate(bounds):
            if r != self.rank:
                arr[a:b] = parts[r][:b - a]
        if arr.is_cuda:  # the caller's Warp kernels read `arr` next, on Warp's stream (not tested: no GPU here)
            torch.cuda.synchronize(arr.device)

    def check_same(self, checksum: int, step: int) -> None:
        """Raise DistributedError unless every rank passed the same `checksum` (of its parameters)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([checksum, -checksum], dtype=torch.int64, device=self.device)
        try:
            self._wait(dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True))
        except Exception as exc:
            raise self._lost(step, exc) from None
        if int(t[0]) != -int(t[1]):
            raise DistributedError(f"rank {self.rank}: the ranks' parameters diverged after step {step} (checksums "
                                   f"differ); every rank must run the same drstudio, scene and device")

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def rows_of(n: int, rank: int, world: int) -> tuple[int, int]:
    """(first, end) of rank `rank`'s slab of `n` rows split over `world` ranks: [rank n / world, (rank + 1) n /
    world), rounded down (what a voxel grid's TV and occupancy refresh split by)."""
    return rank * n // world, (rank + 1) * n // world


def ordered_sum(parts: list[torch.Tensor]) -> torch.Tensor:
    """((p0 + p1) + p2) + ...: the reduction order of `Comm.sum` and of the one-process emulation."""
    acc = parts[0].clone()
    for p in parts[1:]:
        acc += p
    return acc


class GradBuffer:
    """One rank's flat buffer (module docstring) as the memory its gradients live in, on the CPU: the `.grad` of
    each of the optimizer's parameters is a view of its slot, so the backward pass writes the buffer and the sum
    leaves the summed gradients in the `.grad` arrays, with no copy either way (`pack` and `unpack` copy: the
    one-process emulation keeps a buffer per rank). `tensor`: the whole buffer as a torch tensor (the same
    memory); `tail`: its last `n_tail` floats as a NumPy view (the loss terms, total and flags)."""

    def __init__(self, ds, paths: list[str], n_tail: int):
        self.paths = list(paths)
        self.arrays = [ds.arrays[p] for p in self.paths]
        sizes = [a.size * wp.types.type_size(a.dtype) for a in self.arrays]
        self.n = int(sum(sizes))
        self.flat = wp.zeros(self.n + int(n_tail), dtype=float, device=ds.device)
        self.tensor = wp.to_torch(self.flat, requires_grad=False)
        self.tail = self.flat.numpy()[self.n:]  # a view on the CPU
        self.views, offset = [], 0
        for a, size in zip(self.arrays, sizes, strict=True):
            view = wp.array(ptr=self.flat.ptr + 4 * offset, dtype=a.dtype, shape=a.shape, device=a.device)
            view._ref = self.flat  # keeps the buffer alive while a parameter's .grad is this view
            self.views.append(view)
            offset += size

    @staticmethod
    def fits(ds, paths: list[str]) -> bool:
        """Whether the parameters' gradients can live in one CPU float32 buffer (contiguous float32 arrays)."""
        arrays = [ds.arrays[p] for p in paths]
        return ds.device.is_cpu and all(a.is_contiguous and getattr(a.dtype, "_wp_scalar_type_", a.dtype) is wp.float32
                                        for a in arrays)

    def matches(self, ds, paths: list[str], n_tail: int) -> bool:
        """Whether this buffer is for these parameter arrays (not replaced since: a remesh, an upsampling)."""
        return (self.paths == list(paths) and len(self.tail) == n_tail
                and all(ds.arrays[p] is a for p, a in zip(paths, self.arrays, strict=True)))

    def attach(self) -> None:
        """Make each parameter's `.grad` its view of the buffer (once; the old gradient is dropped: the step
        zeroes gradients before its backward pass)."""
        for a, view in zip(self.arrays, self.views, strict=True):
            if a.grad is not view:
                a.grad = view


TAIL_EXTRA = 4  # floats after the term values in a rank's flat buffer: the total, then `tail_flags`


def tail_flags(stop: bool, out_of_time: bool, thumbnail: int) -> tuple[float, float, float]:
    """The last three floats of a rank's flat buffer: the stop and time flags and the thumbnail request."""
    return 1.0 if stop else 0.0, 1.0 if out_of_time else 0.0, float(thumbnail)


def read_tail(tail, n_terms: int) -> tuple[list[float], float, bool, bool, int]:
    """(term values, total, stop, out of time, thumbnail size) of a summed buffer's tail (the floats after the
    gradients): a flag is set when any rank set it; only rank 0 requests thumbnails."""
    return ([float(x) for x in tail[:n_terms]], float(tail[n_terms]), bool(tail[n_terms + 1] > 0),
            bool(tail[n_terms + 2] > 0), int(round(float(tail[n_terms + 3]))))


def pack(ds, paths: list[str], terms: list[wp.array], total: wp.array, stop: bool, device: str,
         out_of_time: bool = False, thumbnail: int = 0) -> torch.Tensor:
    """One rank's flat buffer (module docstring): gradients of `paths`, the term and total values, the stop
    and time flags and the thumbnail request. A copy: the tape's reset zeroes the gradients afterwards."""
    import torch

    chunks = [wp.to_torch(ds.arrays[p].grad, requires_grad=False).reshape(-1) for p in paths]
    chunks += [wp.to_torch(t, requires_grad=False).reshape(-1) for t in (*terms, total)]
    chunks.append(torch.tensor(tail_flags(stop, out_of_time, thumbnail), dtype=torch.float32,
                               device=chunks[-1].device))
    return torch.cat(chunks).to(device)


def unpack(flat: torch.Tensor, ds, paths: list[str], n_terms: int) -> tuple[list[float], float, bool, bool, int]:
    """Write the summed gradients back into the parameters' `.grad`; return `read_tail` of the rest."""
    offset = 0
    for p in paths:
        g = wp.to_torch(ds.arrays[p].grad, requires_grad=False).reshape(-1)
        g.copy_(flat[offset:offset + g.numel()].to(g.device))
        offset += g.numel()
    return read_tail(flat[offset:].cpu().numpy(), n_terms)


def checksum(ds, paths) -> int:
    """CRC-32 of the bytes of the parameters `paths` (what `Comm.check_same` compares across ranks)."""
    crc = 0
    for p in paths:
        crc = zlib.crc32(np.ascontiguousarray(ds.arrays[p].numpy()).tobytes(), crc)
    return crc
