"""Data-parallel optimization (issue 16, renderer.optim.distributed, app/launch.py): `--nproc 2` ends at the
parameters of `--nproc 1` to float32 round-off; only rank 0 writes; the distributed recording verifies in one
process; a torchrun two-"node" run on 127.0.0.1 (c10d rendezvous); a rank killed with SIGKILL ends the run
within a bounded time with a one-line message, a loadable recording, and `--resume` goes on with another N."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.problem import Problem

ROOT = Path(__file__).resolve().parents[1]
ALBEDO, LIGHT, VERTS = "materials.paint.albedo", "lights.key.position", "meshes.ball.vertices"
TIMEOUT = 240  # seconds for one multi-process run on a loaded 2-core machine (they take ~10-30 s)


def tiny_scene(folder: Path, steps: int = 6) -> Path:
    """Four 20x20 views, three per step (an odd batch: 60 rows, 30 per rank, one view cut in two), a texture,
    a light and the mesh's vertices free, and two regularizers (computed once, on rank 0). The texture starts
    from a perturbation, not a constant: TV's |t_i - t_j| has a subgradient that jumps at equal neighbours, so
    from a constant start the round-off of another summation order flips its sign (a texel gradient differing
    by 2 x weight / texels, which Adam makes a texel difference of ~lr)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    iio.imwrite(folder / "tex.png", (rng.random((4, 4, 3)) * 255).astype(np.uint8))
    eyes = ([0, 0.5, 3.2], [3.2, 0.5, 0.3], [0.2, 3.2, 0.5], [-3.0, -0.5, -1.0])
    cams = [{"name": f"c{i}", "width": 20, "height": 20, "fov_y": 40, "look_at": {"eye": e, "target": [0, 0, 0]}}
            for i, e in enumerate(eyes)]
    doc = {
        "version": 1,
        "meshes": [{"name": "ball", "primitive": {"type": "sphere", "radius": 1.0, "resolution": 10},
                    "material": "paint"}],
        "materials": [{"name": "paint", "model": "lambert", "albedo": "tex.png"}],
        "lights": [{"name": "key", "type": "point", "position": [1.5, 2.0, 2.5], "intensity": 12.0},
                   {"name": "sky", "type": "ambient", "color": [0.1, 0.1, 0.1]}],
        "cameras": cams,
        "render": {"mode": "antialias", "shadows": False},
        "optimize": {"parameters": {ALBEDO: {"init": {"perturb": {"sigma": 0.2, "seed": 4}}},
                                    LIGHT: {"init": {"perturb": {"sigma": 0.3, "seed": 1}}, "lr": 0.05},
                                    VERTS: {"init": {"perturb": {"sigma": 0.02, "seed": 2}}, "lr": 0.002}},
                     "targets": {"cameras": [c["name"] for c in cams]},
                     "loss": {"l2": 1.0, "tv": 0.01, "laplacian": 0.1},
                     "optimizer": {"type": "adam", "lr": 0.05}, "steps": steps, "batch_views": 3, "seed": 0},
    }
    path = folder / "tiny.json"
    path.write_text(json.dumps(doc))
    return path


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drstudio.app.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- in one process: the emulated ranks ------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu"])  # the emulation is what replay runs; CPU like the tests below
def test_emulated_ranks_match_one_process_to_round_off(tmp_path, device):
    scene = load_scene(tiny_scene(tmp_path))
    plain = Problem(scene, device)
    values = {}
    for shards in (2, 3):
        p = Problem(scene, device)
        p.set_shards(shards)
        p.model.workers = 1
        for _ in range(5):
            a, b = p.step(), (plain.step() if shards == 2 else None)
            if b is not None:
                assert a.loss == pytest.approx(b.loss, rel=1e-5)
                assert a.loss_terms.keys() == b.loss_terms.keys()
        values[shards] = {k: p.ds.get(k) for k in (ALBEDO, LIGHT, VERTS)}
    for shards, got in values.items():
        for k, v in got.items():
            ref = plain.ds.get(k)
            assert np.allclose(v, ref, rtol=0, atol=1e-5 * max(1.0, np.abs(ref).max())), (shards, k)


def test_emulated_ranks_split_texture_json_by_rows():
    """scenes/texture.json draws 3 of its 6 128x128 views a step: 384 rows, 192 per rank, so one view is cut in
    two (rows 0-63 on rank 0, 64-127 on rank 1). Without its TV term the two ranks end where one process does to
    a few float32 ulps; with it, the scene's constant start (every texel 0.5) leaves neighbours equal, where
    L1 TV's subgradient jumps, so round-off flips its sign: one step still agrees to an ulp, and later steps
    drift to ~5e-4 (measured over 12 steps), which is what a different summation order does to that loss."""
    from drstudio.renderer import parallel

    assert [len(p) for p in parallel.split_rows([128] * 3, 2)] == [2, 2]  # the cut view
    scene = load_scene(ROOT / "scenes" / "texture.json")
    key = "materials.paint.albedo"
    for tv, steps, atol in ((0.0, 6, 3e-7), (None, 1, 1.2e-7)):
        one, two = Problem(scene, "cpu"), Problem(scene, "cpu")
        two.set_shards(2)
        two.model.workers = 1  # a rank on this 2-core machine; `one` renders on every core
        for p in (one, two):
            if tv is not None:
                p.set_loss_weight("tv", tv)
        for _ in range(steps):
            a, b = two.step(), one.step()
            assert a.loss == pytest.approx(b.loss, rel=1e-5)
        assert np.abs(two.ds.get(key) - one.ds.get(key)).max() <= atol, tv


def field_scene(folder: Path) -> Path:
    """A 12^3 voxel grid (with an occupancy grid) learning the textured globe from 8 views of 16x16."""
    from drstudio.renderer.datasets import DatasetOptions, generate_dataset

    generate_dataset(load_scene(ROOT / "scenes" / "texture.json"), folder / "data",
                     DatasetOptions(views=8, width=16, height=16), device="cpu")
    doc = {"version": 1,
           "cameras": [{"name": "preview", "width": 16, "height": 16, "fov_y": 40,
                        "look_at": {"eye": [0, 0.8, 3.5], "target": [0, 0, 0]}}],
           "fields": [{"name": "nerf", "type": "voxel_grid", "resolution": 12, "aabb": [[-1.05] * 3, [1.05] * 3],
                       "samples_per_ray": 24, "occupancy": {"resolution": 12, "update_every": 3, "threshold": 0.2}}],
           "optimize": {"parameters": {"fields.nerf.density": {"lr": 0.5}, "fields.nerf.sh": {"lr": 0.2}},
                        "targets": {"transforms": "data/transforms.json"}, "loss": {"l2": 1.0, "tv": 1e-4},
                        "optimizer": {"type": "adam", "lr": 0.1}, "steps": 20, "rays_per_batch": 255}}
    path = folder / "field.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("device", ["cpu"])  # as above
def test_emulated_ranks_split_a_voxel_grid_ray_batch(tmp_path, device):
    """Contiguous blocks of the ray batch (255 rays: 127 + 128) with the whole batch's jitter: the same
    grid to round-off after steps that include two occupancy refreshes."""
    scene = load_scene(field_scene(tmp_path))
    plain, split = Problem(scene, device), Problem(scene, device)
    split.set_shards(2)
    for _ in range(7):
        a, b = split.step(), plain.step()
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
    for k in ("fields.nerf.density", "fields.nerf.sh"):
        ref = plain.ds.get(k)
        assert np.allclose(split.ds.get(k), ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max())), k


def test_thumbnail_split_by_rows_over_ranks_is_the_whole_render(tmp_path):
    """The recording's thumbnail of a distributed run is rendered by rows over the ranks
    (`Problem.render_rows_shared`; here emulated, each rank's block in turn): the whole render bit for bit, at the
    camera's size and downscaled, in uneven blocks over 3 ranks, for a mesh (antialias bands) and a voxel grid;
    the recorder takes it from the problem once, for its camera, size and step only."""
    from drstudio.renderer.recording.writer import render_thumbnail

    mesh = Problem(load_scene(tiny_scene(tmp_path / "mesh")), "cpu")  # antialias: bands padded by a row
    mesh.step()
    for size in (20, 10, 7):
        whole, _ = render_thumbnail(mesh, mesh.active_view, size)
        mesh.set_shards(3)
        assert np.array_equal(mesh.render_rows_shared(mesh.active_view, size), whole), size
        mesh.set_shards(1)
    p = Problem(load_scene(field_scene(tmp_path)), "cpu")
    for _ in range(4):  # trained a little, with an occupancy refresh (step 3): cells are skipped
        p.step()
    cam = p.active_view
    for size in (16, 8, 6):
        whole, _ = render_thumbnail(p, cam, size)
        for shards in (2, 3):
            p.set_shards(shards)
            assert np.array_equal(p.render_rows_shared(cam, size), whole), (size, shards)
        p.set_shards(1)
    marker = np.full_like(whole, 0.25)
    p._shared_thumbnail = (cam, 6, p.step_index, id(p.ds), marker)
    assert np.array_equal(render_thumbnail(p, cam, 6)[0], marker)  # taken ...
    assert np.array_equal(render_thumbnail(p, cam, 6)[0], whole)  # ... once
    p._shared_thumbnail = (cam, 6, p.step_index - 1, id(p.ds), marker)  # another step's: rendered anew
    assert np.array_equal(render_thumbnail(p, cam, 6)[0], whole)


def test_gather_rows_fills_uneven_slabs_from_every_rank(monkeypatch):
    """Comm.gather_rows with slabs of unequal size (7 rows over 3 ranks: 2, 2, 3; all_gather takes equal parts,
    so the slabs travel padded): rank 1 ends with every rank's rows; its own stay its own."""
    import torch
    import torch.distributed as dist
    from drstudio.renderer.optim.distributed import Comm, rows_of

    full = torch.arange(7 * 4, dtype=torch.float32).reshape(7, 4)
    assert [rows_of(7, r, 3) for r in range(3)] == [(0, 2), (2, 4), (4, 7)]

    class Done:  # a completed collective (Comm waits for them asynchronously)
        def is_completed(self):
            return True

        def wait(self):
            return True

    def all_gather(parts, mine, async_op=False):  # what the other ranks would send: their slab, padded to 3 rows
        assert mine.shape == (3, 4)
        for r, (a, b) in enumerate(rows_of(7, q, 3) for q in range(3)):
            parts[r].zero_()
            parts[r][:b - a] = mine[:b - a] if r == 1 else full[a:b]
        return Done() if async_op else None

    monkeypatch.setattr(dist, "all_gather", all_gather)
    mine = torch.full((7, 4), -1.0)
    mine[2:4] = full[2:4]
    Comm(1, 3, 1, 3, "gloo", "cpu").gather_rows(mine, step=0)
    assert torch.equal(mine, full)


def test_comm_polls_its_collectives_when_asked(monkeypatch):
    """DRSTUDIO_POLL_COLLECTIVES=1: a gloo rank waits for a collective by polling it until it has completed, then
    `wait()` (which raises a failed collective's error: the usual one-line DistributedError); unset, it blocks."""
    import torch
    import torch.distributed as dist
    from drstudio.renderer.optim import distributed

    class Work:
        def __init__(self, polls_needed, error=None):
            self.polls, self.needed, self.error, self.waited_after = 0, polls_needed, error, None

        def is_completed(self):
            self.polls += 1
            return self.polls >= self.needed

        def wait(self):
            self.waited_after = self.polls
            if self.error:
                raise RuntimeError(self.error)
            return True

    works = []

    def all_reduce(t, op=None, async_op=False):
        assert async_op
        works.append(Work(*pending.pop(0)))
        return works[-1]

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.delenv(distributed.POLL_ENV, raising=False)
    assert not distributed.Comm(0, 2, 0, 2, "gloo", "cpu").poll  # off by default
    monkeypatch.setenv(distributed.POLL_ENV, "1")
    comm = distributed.Comm(0, 2, 0, 2, "gloo", "cpu")
    assert comm.poll and not distributed.Comm(0, 2, 0, 2, "nccl", "cuda:0").poll
    flat = torch.ones(4)
    pending = [(3,)]
    assert comm.sum(flat, 0) is flat
    assert works[-1].polls == 3 and works[-1].waited_after == 3  # polled until completed, then waited
    pending = [(1, "[../pair.cc:1] Connection closed by peer [127.0.0.1]:1234")]
    with pytest.raises(distributed.DistributedError, match="lost contact .* step 5 .*Connection closed by peer"):
        comm.sum(flat, 5)


class _ThreadPair:
    """Two ranks as two threads of this process: `sum` adds the other rank's buffer into this rank's, in place
    (what gloo's all_reduce does for 2 ranks: b0 + b1 on both, the same bits in either order)."""

    device = "cpu"

    def __init__(self, rank: int, shared: dict):
        self.rank, self.world, self.local_rank, self.local_world, self.shared = rank, 2, rank, 2, shared

    def sum(self, flat, step):
        self.shared["bufs"][self.rank] = flat.clone()
        self.shared["barrier"].wait()
        flat += self.shared["bufs"][1 - self.rank]
        self.shared["barrier"].wait()
        return flat

    def check_same(self, checksum, step):
        self.shared["crc"][self.rank] = checksum
        self.shared["barrier"].wait()
        assert self.shared["crc"][0] == self.shared["crc"][1]

    def gather_rows(self, arr, step):  # Comm.gather_rows: the other rank's slab of the first axis
        from drstudio.renderer.optim.distributed import rows_of

        self.shared["rows"][self.rank] = arr.clone()
        self.shared["barrier"].wait()
        a, b = rows_of(arr.shape[0], 1 - self.rank, 2)
        arr[a:b] = self.shared["rows"][1 - self.rank][a:b]
        self.shared["barrier"].wait()


def _pair_steps(scene, steps: int, keys=(ALBEDO, LIGHT, VERTS)) -> tuple[list, list, list]:
    """Two real ranks (threads, `_ThreadPair`) taking `steps` steps: (their losses, their parameters, them)."""
    import threading

    shared = {"bufs": [None, None], "crc": [None, None], "rows": [None, None],
              "barrier": threading.Barrier(2, timeout=120)}
    probs = [Problem(scene, "cpu") for _ in range(2)]
    for r, p in enumerate(probs):
        p.set_shards(2, _ThreadPair(r, shared))
        p.model.workers = 1
    losses = [[], []]

    def run(r):
        for _ in range(steps):
            losses[r].append(probs[r].step().loss)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert losses[0] == losses[1] and len(losses[0]) == steps
    return losses[0], [{k: p.ds.get(k) for k in keys} for p in probs], probs


def test_ranks_gradients_in_the_flat_buffer_equal_the_copies_and_the_emulation(tmp_path, monkeypatch):
    """A CPU rank's gradients live in its flat buffer (`distributed.GradBuffer`: no copy into it or back out of
    it). Two ranks (threads) end bit for bit where ranks that pack and unpack copies do, and where the one-process
    emulation (what `replay --verify` runs) does, with the texture, the light and the vertices free and TV and
    the Laplacian on."""
    from drstudio.renderer.optim import distributed

    scene = load_scene(tiny_scene(tmp_path))
    emulated = Problem(scene, "cpu")
    emulated.set_shards(2)
    emulated.model.workers = 1
    want_losses = [emulated.step().loss for _ in range(5)]
    want = {k: emulated.ds.get(k) for k in (ALBEDO, LIGHT, VERTS)}
    in_place_losses, in_place, ranks = _pair_steps(scene, 5)
    for p in ranks:  # the optimizer's gradients are views of the rank's buffer
        assert all(p.ds.arrays[k].grad.ptr == v.ptr for k, v in zip(p._opt_paths, p._grad_buffer.views, strict=True))
    monkeypatch.setattr(distributed.GradBuffer, "fits", staticmethod(lambda ds, paths: False))
    copied_losses, copied, ranks = _pair_steps(scene, 5)
    assert all(p._grad_buffer is None for p in ranks)
    assert in_place_losses == copied_losses == want_losses
    for values in (*in_place, *copied):
        for k, v in want.items():
            assert np.array_equal(values[k], v), k


def test_ranks_gradient_buffer_follows_an_upsampled_grid(tmp_path):
    """The field's lattice grows after step 3 (coarse to fine: new grid arrays, a new optimizer), so each rank's
    flat buffer is made again for the new arrays: two ranks (threads) still end bit for bit where the one-process
    emulation does, with two occupancy refreshes gathered across them."""
    doc = json.loads(field_scene(tmp_path).read_text())
    doc["fields"][0]["coarse_to_fine"] = {"start_resolution": 8, "upsample_at": [3]}
    path = tmp_path / "c2f.json"
    path.write_text(json.dumps(doc))
    scene = load_scene(path)
    keys = ("fields.nerf.density", "fields.nerf.sh")
    emulated = Problem(scene, "cpu")
    emulated.set_shards(2)
    want_losses = [emulated.step().loss for _ in range(7)]
    got_losses, got, ranks = _pair_steps(scene, 7, keys)
    assert emulated.ds.get(keys[0]).shape[0] == 12 and ranks[0]._grad_buffer.arrays[0].shape[0] == 12
    assert got_losses == want_losses
    for values in got:
        for k in keys:
            assert np.array_equal(values[k], emulated.ds.get(k)), k


def test_threads_per_rank_counts_the_cores_this_process_may_use(monkeypatch):
    """`threads_per_rank` shares the cores of the process's affinity (not `os.cpu_count()`, which counts cores a
    container or `taskset` may not give it), and a pinned rank uses the cores it was pinned to."""
    from drstudio.renderer import parallel
    from drstudio.renderer.optim import distributed

    monkeypatch.setattr(distributed, "_PINNED", None)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 4, 5}, raising=False)
    assert distributed.threads_per_rank(2) == 2 and distributed.threads_per_rank(1) == 4
    assert distributed.threads_per_rank(3) == 1 and distributed.threads_per_rank(8) == 1
    assert parallel.default_workers() == 4
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: None, raising=False)
    assert distributed.pin_to_cores(1, 2) == [4, 5]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5}, raising=False)  # what the OS then reports
    assert distributed.threads_per_rank(2) == 2


def test_ranks_pin_to_their_share_of_the_cores(monkeypatch):
    """`pin_to_cores`: rank r of N on one machine takes cores [r k, (r + 1) k), k = cores // N; nothing with fewer
    cores than ranks. A CPU rank pins itself when it joins (`Comm.from_env`), unless DRSTUDIO_PIN_RANKS=0; with
    DRSTUDIO_PIN_RANKS=main after gloo started its threads (which then stay free)."""
    import torch.distributed as dist
    from drstudio.renderer.optim import distributed

    pinned = []
    monkeypatch.setattr(distributed, "_PINNED", None)  # restored after the test: pin_to_cores sets it
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5}, raising=False)
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: pinned.append(list(cores)), raising=False)
    assert distributed.pin_to_cores(1, 2) == [2, 3] and pinned == [[2, 3]]
    assert distributed.pin_to_cores(0, 2) == [0, 1]
    assert distributed.pin_to_cores(2, 3) == [2]
    assert distributed.pin_to_cores(0, 6) is None and distributed.pin_to_cores(0, 1) is None
    pinned.clear()
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # what a rank also does; not to this process
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pinned.append("init"))
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(distributed.PIN_ENV, raising=False)
    distributed.Comm.from_env("cpu")
    assert pinned == [[2, 3], "init"]  # before gloo starts its threads: they inherit it
    monkeypatch.setenv(distributed.PIN_ENV, "0")
    distributed.Comm.from_env("cpu")
    assert pinned == [[2, 3], "init", "init"]  # not again
    monkeypatch.setenv(distributed.PIN_ENV, "main")  # the main thread only, after gloo started its threads
    distributed.Comm.from_env("cpu")
    assert pinned == [[2, 3], "init", "init", "init", [2, 3]]
    monkeypatch.setenv(distributed.LOOP_NICE_ENV, "high")  # refused before the rank joins
    with pytest.raises(distributed.DistributedError, match="DRSTUDIO_GLOO_LOOP_NICE must be an integer .*'high'"):
        distributed.Comm.from_env("cpu")
    assert pinned == [[2, 3], "init", "init", "init", [2, 3]]


def test_gloo_loop_thread_runs_at_a_lower_priority():
    """`lower_gloo_loop` sets the nice value of the threads the OS calls `gloo_tcp_loop`, and of no other thread;
    in a real gloo process group (one rank, in a child process) such a thread exists: the name is torch's, and a
    torch that renamed it would silently lose the faster collectives (benchmarks/README.md, "gloo's loop thread")."""
    import ctypes
    import threading

    from drstudio.renderer.optim import distributed

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux's /proc")
    libc = ctypes.CDLL(None)
    ready, done, tids = threading.Event(), threading.Event(), []

    def named(name: bytes):
        libc.prctl(15, name, 0, 0, 0)  # PR_SET_NAME: the thread's name in /proc/self/task/TID/comm
        tids.append(threading.get_native_id())
        ready.set()
        done.wait(30)

    threads = [threading.Thread(target=named, args=(n,)) for n in (b"gloo_tcp_loop", b"pt_gloo_runloop")]
    try:
        for t in threads:
            ready.clear()
            t.start()
            assert ready.wait(30)
        before = os.getpriority(os.PRIO_PROCESS, 0)
        assert distributed.lower_gloo_loop(0) == 0  # 0: nothing changed
        assert distributed.lower_gloo_loop(7) == 1
        assert os.getpriority(os.PRIO_PROCESS, tids[0]) == 7
        assert os.getpriority(os.PRIO_PROCESS, tids[1]) == before  # the worker thread keeps the rank's priority
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    finally:
        done.set()
        for t in threads:
            t.join()
    child = """
import os, socket, datetime
import torch.distributed as dist
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                        timeout=datetime.timedelta(seconds=60))
from drstudio.renderer.optim import distributed
print("changed", distributed.lower_gloo_loop(distributed.LOOP_NICE_DEFAULT))
names = {open(f"/proc/self/task/{t}/comm").read().strip(): os.getpriority(os.PRIO_PROCESS, int(t))
         for t in os.listdir("/proc/self/task")}
print("nice", names.get("gloo_tcp_loop"))
dist.destroy_process_group()
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert "changed 1" in out.stdout and f"nice {distributed.LOOP_NICE_DEFAULT}" in out.stdout, out.stdout


def test_profile_rank_runs_briefly(tmp_path, capsys):
    """benchmarks/profile_rank.py (the README's per-kernel table of a rank's step) on the small field."""
    from benchmarks import profile_rank

    scene = field_scene(tmp_path)
    assert profile_rank.main(["--scene", str(scene), "--warmup", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "| rank 0 of 2 | rank 1 of 2 |" in out and "`_query`" in out and "| total, mean (median) |" in out


# -- processes -----------------------------------------------------------------------------------------

def test_nproc2_field_equals_nproc1_and_verifies(tmp_path):
    """The voxel-grid field as two processes: the ranks split the ray batch, the TV by lattice slabs and the
    occupancy refreshes by slabs of cells (an all-gather; steps 3, 6 and 9 refresh); the grid equals a one-process
    run's to round-off and the recording re-executes in one process to the same bits. The thumbnail after step 10
    was rendered by both ranks (rows gathered to rank 0) and shows what one process's does."""
    from drstudio.app import cli as app_cli
    from drstudio.renderer.recording import load_recording, verify

    scene = field_scene(tmp_path / "scene")
    one, two = tmp_path / "one", tmp_path / "two"
    assert app_cli.main(["optimize", str(scene), "--steps", "11", "--final-eval", "none", "--out", str(one)]) == 0
    res = cli("optimize", str(scene), "--steps", "11", "--final-eval", "none", "--nproc", "2", "--out", str(two),
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = np.load(one / "params.npz"), np.load(two / "params.npz")
    for k in ("fields.nerf.density", "fields.nerf.sh"):
        assert np.allclose(b[k], a[k], rtol=0, atol=1e-4 * max(1.0, np.abs(a[k]).max())), k
    report = verify(load_recording(two / "recording"))
    assert report.ok and report.steps_checked == 11, report.message()
    assert report.max_rel_error == 0.0
    thumbs = [load_recording(d / "recording").thumbs for d in (one, two)]
    assert thumbs[1][10].get("ranks") == 2 and "ranks" not in thumbs[0][10] and "ranks" not in thumbs[1][11]
    a, b = (iio.imread(d / "recording" / t[10]["file"]).astype(int) for d, t in zip((one, two), thumbs, strict=True))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1  # 8-bit sRGB of parameters equal to round-off



@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return tiny_scene(tmp_path_factory.mktemp("dist") / "scene")


@pytest.fixture(scope="module")
def runs(scene, tmp_path_factory):
    """The tiny scene optimized by one process (in this one) and by `--nproc 2`, each in a folder of its own."""
    from drstudio.app import cli as app_cli

    root = tmp_path_factory.mktemp("runs")
    out = {n: root / f"cwd{n}" for n in (1, 2)}
    assert app_cli.main(["optimize", str(scene), "--out", str(out[1] / "out")]) == 0
    out[2].mkdir()
    res = cli("optimize", str(scene), "--out", "out", "--nproc", "2", cwd=out[2])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("results written to") == 1
    return out


def test_nproc2_equals_nproc1_and_only_rank0_writes(runs):
    one, two = (np.load(runs[n] / "out" / "params.npz") for n in (1, 2))
    for k in (ALBEDO, LIGHT, VERTS):
        assert np.allclose(two[k], one[k], rtol=0, atol=1e-5 * max(1.0, np.abs(one[k]).max())), k
    # rank 1 wrote nothing: the two runs' folders hold the same files
    assert files_under(runs[2]) == files_under(runs[1])
    meta = json.loads((runs[2] / "out" / "recording" / "meta.json").read_text())
    assert meta["data_parallel"]["ranks"] == 2


def test_distributed_recording_verifies_in_one_process(runs):
    from drstudio.renderer.recording import load_recording, verify

    report = verify(load_recording(runs[2] / "out" / "recording"))
    assert report.ok and report.steps_checked == 6, report.message()
    assert report.max_rel_error == 0.0  # the emulated ranks sum in the order the two processes did


def test_a_bad_data_parallel_entry_is_refused(runs, tmp_path):
    import shutil

    from drstudio.renderer.recording import RecordingError, load_recording, verify

    rec = tmp_path / "rec"
    shutil.copytree(runs[2] / "out" / "recording", rec)
    meta = json.loads((rec / "meta.json").read_text())
    meta["data_parallel"] = {"ranks": "two", "threads_per_rank": 1}
    (rec / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RecordingError, match="data_parallel"):
        verify(load_recording(rec))


class _CheckFails:
    """Rank 0 of 2 whose twin holds the same gradients (the sum doubles them) and is lost in the parameter check
    after step `fail_at` (None: never): what a rank killed right after the sum of its last step looks like."""

    rank, world, local_rank, local_world, device, backend, warp_device = 0, 2, 0, 2, "cpu", "gloo", "cpu"

    def __init__(self, fail_at):
        self.fail_at = fail_at

    def sum(self, flat, step):
        flat += flat
        return flat

    def check_same(self, checksum, step):
        from drstudio.renderer.optim.distributed import DistributedError

        if step == self.fail_at:
            raise DistributedError(f"rank 0: lost contact with the other ranks at step {step} (test)")

    def gather_rows(self, arr, step):
        pass

    def close(self):
        pass


def test_a_rank_lost_after_a_step_keeps_that_step_in_the_recording(tmp_path):
    """A collective that fails after a step's update (the parameter check at the last step) ends the run with the
    one-line error, and the step is recorded: the closing keyframe is at the step count whose parameters it
    holds, the same keyframe a run whose check passed ends with, so `--resume` continues where the run stood."""
    from drstudio.app import headless
    from drstudio.renderer.optim.distributed import DistributedError
    from drstudio.renderer.recording import load_recording

    path = tiny_scene(tmp_path / "s", steps=6)
    for name, fail_at in (("ok", None), ("lost", 6)):
        kwargs = dict(steps=None, out=tmp_path / name, device="cpu", progress=False, partial_every=1e9,
                      final_eval="none", comm=_CheckFails(fail_at))
        if fail_at is None:
            headless.optimize(str(path), **kwargs)
        else:
            with pytest.raises(DistributedError, match="lost contact with the other ranks at step 6"):
                headless.optimize(str(path), **kwargs)
    ok, lost = (load_recording(tmp_path / name / "recording") for name in ("ok", "lost"))
    assert len(lost.steps) == len(ok.steps) == 6
    assert max(lost.keyframes) == max(ok.keyframes) == 6
    a, b = ok.keyframe(6).values, lost.keyframe(6).values
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_sigterm_stops_every_rank_after_the_same_step(scene, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "drstudio.app.cli", "optimize", str(scene), "--steps", "100000",
                             "--nproc", "2", "--out", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        log = out / "recording" / "events.jsonl"
        while not (log.exists() and log.read_text().count('"type":"step"') >= 3):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run did not start stepping"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # to the launcher, which passes it on to both ranks
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    steps = json.loads((out / "metrics.json").read_text())
    assert steps["interrupted"] is True
    # both ranks name the same last step
    assert f"rank 1 stopped at step {steps['steps']}" in err and f"stopped at step {steps['steps']};" in err


def test_torchrun_two_nodes_on_localhost(scene, runs, tmp_path):
    """Two launches of torchrun, one process each, meeting through its c10d rendezvous on 127.0.0.1."""
    port = free_port()
    procs = []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "drstudio-test",
               "-m", "drstudio.app.cli", "optimize", str(scene), "--out", "out"]
        procs.append(subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        results = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    wrote = [node for node in (0, 1) if (tmp_path / f"node{node}" / "out").exists()]
    assert len(wrote) == 1  # rank 0's node; the other wrote nothing
    assert files_under(tmp_path / f"node{1 - wrote[0]}") == set()
    got = np.load(tmp_path / f"node{wrote[0]}" / "out" / "params.npz")
    one = np.load(runs[1] / "out" / "params.npz")
    for k in (ALBEDO, LIGHT, VERTS):
        assert np.allclose(got[k], one[k], rtol=0, atol=1e-5 * max(1.0, np.abs(one[k]).max())), k


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def test_killed_rank_ends_the_run_and_resume_takes_another_n(scene, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "drstudio.app.cli", "optimize", str(scene), "--steps", "100000",
                             "--nproc", "2", "--out", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        log = out / "recording" / "events.jsonl"
        while True:  # stepping: its recording holds a few steps
            if log.exists() and log.read_text().count('"type":"step"') >= 3:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run did not start stepping"
            time.sleep(0.2)
        victim = next(c for c in _children(proc.pid) if _rank_of(c) == 1)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-3000:]
    assert took < 60, took  # the survivor notices at its next collective; the launcher's grace is 10 s
    assert "Traceback" not in err
    assert f"rank 1 (pid {victim}) was killed by SIGKILL" in err
    assert "rank 0: lost contact with the other ranks" in err
    from drstudio.renderer.recording import load_recording

    rec = load_recording(out / "recording")
    assert rec.steps and rec.keyframes
    last = max(rec.keyframes)
    # resume from the last keyframe with one process: a few more steps
    from drstudio.app import cli as app_cli

    more_out = str(tmp_path / "more")
    assert app_cli.main(["optimize", "--resume", str(out / "recording"), "--steps", str(last + 3), "--out",
                         more_out]) == 0
    more = load_recording(tmp_path / "more" / "recording")
    assert more.meta["parent"]["at"] == last and more.meta.get("data_parallel") is None
    assert json.loads((tmp_path / "more" / "metrics.json").read_text())["steps"] == last + 3


def test_serve_and_fields_are_refused_with_nproc(scene, tmp_path, monkeypatch, capsys):
    from drstudio.app import cli as app_cli

    monkeypatch.chdir(tmp_path)
    assert app_cli.main(["optimize", str(scene), "--nproc", "2", "--serve"]) == 2
    assert "--serve is not supported" in capsys.readouterr().err
    assert app_cli.main(["optimize", str(ROOT / "scenes" / "nerf_neural.json"), "--nproc", "2"]) == 2
    assert "mesh scenes and voxel-grid fields only" in capsys.readouterr().err
    assert files_under(tmp_path) == set()
    (tmp_path / "afile").write_text("")  # an unusable output folder: refused before any rank starts
    assert app_cli.main(["optimize", str(scene), "--nproc", "2", "--out", "afile"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_benchmark_runs_briefly(scene, capsys, monkeypatch):
    """benchmarks/bench_distributed.py end to end on the tiny scene (one timed step per case)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bench_distributed

    assert bench_distributed.main(["--scenes", str(scene), "--steps", "1", "--warmup", "1", "--rounds", "2",
                                   "--markdown"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| scene | 1 thread | 2 threads | --nproc 2 | 2 independent |")
    assert "| ceiling 2i / 1t | 2p / 2i |" in table[0] and table[2].startswith("| tiny.json |")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert len(cells) == len(table[0].strip("|").split("|"))
    assert float(cells[4]) > 0 and cells[7].split()[0].endswith("x")  # independent throughput, ceiling


def test_phase_ranks_and_bench_collectives_run_briefly(scene, capsys, monkeypatch):
    """benchmarks/phase_ranks.py (a real rank's step by phase) and benchmarks/bench_collectives.py (the collectives
    a sharded update needs, and the sum after a step's work) end to end, briefly."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bench_collectives, phase_ranks

    assert phase_ranks.main(["--scene", str(scene), "--warmup", "1", "--steps", "2"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[1] == "| phase | one process, 1 thread | rank 0 of 2 | rank 1 of 2 |"
    rows = {line.split("|")[1].strip(): line for line in table[3:]}
    assert {"forward", "backward", "sum", "update", "other", "total"} <= set(rows)
    assert rows["sum"].split("|")[2].strip() == "-"  # one process has no sum
    assert bench_collectives.main(["--floats", "64", "--rounds", "1", "--reps", "2", "--work-ms", "1"]) == 0
    out = capsys.readouterr().out
    assert "| AR wall / CPU / sys | RS + AG wall / CPU / sys | AR + AG wall / CPU / sys |" in out
    assert "| after work, blocking | after work, polled |" in out and "|  | 64 |" in out
