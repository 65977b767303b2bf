"""Renderer benchmark: forward and texture-optimization-step times, memory, and where the time goes.

The scene (built in code, the same one `benchmarks/mitsuba_baseline.py` builds for Mitsuba 3): a unit
UV sphere (`renderer.primitives.uv_sphere`, seam and poles split so its UVs are continuous) of about
1k, 10k or 100k triangles with a Lambert material whose albedo is a 256x256 procedural texture, a
point light (2, 2, 3) of intensity 40, an ambient light 0.2, a black background and a 40-degree camera
at (0, 0.4, 3.2) looking at the origin. The sphere covers the same ~63 % of the image at every
triangle count and resolution, so the visibility table isolates the cost of the triangle count.

- forward: `DeviceScene.prepare()` + `render_view` (shadows on, mipmaps on), synchronized.
- step (forward + backward): the same under a `wp.Tape`, an L2 loss against a fixed target image,
  `tape.backward`, the albedo texture's gradient ready on the device; `zero_grad` included, the
  optimizer update not (it is the same elementwise update for every renderer). Nothing is reused.
- cached step: the same step with a `GBufferCache` whose only varying path is the albedo texture (a
  texture optimization), so the G-buffer, shadow mask and packed geometry are reused from the first call.
- every time is the median of `repeats` runs after `warmup` runs (kernels compiled beforehand).
- memory: the process peak RSS (VmHWM, reset before each case where Linux allows it) and the peak of
  the bytes Warp allocated on the device during the case (a counting allocator; BVH nodes are
  allocated natively and only show up in RSS).

    python -m benchmarks.bench_render --quick     # < 1 minute once kernels are cached
    python -m benchmarks.bench_render             # the full table, profile, visibility, two cores
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import os
import platform
import resource
import statistics
import sys
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import warp as wp
from drstudio.renderer import conventions, memory, primitives
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.optim import losses
from drstudio.renderer.render import render_view
from drstudio.renderer.render_cache import GBufferCache
from drstudio.renderer.scene import AmbientLight, Camera, Material, Mesh, PointLight, RenderSettings, Scene

RESOLUTIONS = (256, 512)
TRIANGLES = (1_000, 10_000, 100_000)
MODES = ("hard", "antialias")
TEXTURE = 256
FOV_DEG = 40.0
EYE = (0.0, 0.4, 3.2)
ALBEDO = "materials.body.albedo"
VERTICES = "meshes.sphere.vertices"


# ---------------------------------------------------------------------------------------------------
# Scene


def sphere_segments(triangles: int) -> int:
    """The `primitives.uv_sphere` segment count whose triangle count is closest to `triangles`
    (segments s gives s/2 bands of s quads, minus the collapsed pole triangles: F = 2 s (s // 2) - 2 s)."""
    if triangles < 8:
        raise ValueError(f"triangles: expected >= 8, got {triangles}")

    def faces(s: int) -> int:
        return 2 * s * max(2, s // 2) - 2 * s

    s = max(4, int(np.sqrt(triangles)))
    return min(range(max(4, s - 8), s + 8), key=lambda k: abs(faces(k) - triangles))


def procedural_texture(size: int, seed: int) -> np.ndarray:
    """(size, size, 3) float32 in [0.05, 0.95]: a checkerboard times smooth color waves (mips matter)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    checks = ((np.floor(x * 16) + np.floor(y * 8)) % 2).astype(np.float32)
    out = np.empty((size, size, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        out[..., c] = 0.5 + 0.25 * np.sin(2 * np.pi * (fx * x + fy * y) + ph) + 0.2 * (checks - 0.5)
    return np.clip(out, 0.05, 0.95)


def build_scene(triangles: int, resolution: int, texture: int = TEXTURE, mode: str = "antialias",
                seed: int = 0) -> Scene:
    """The benchmark scene (see the module docstring); the albedo texture is `procedural_texture(seed)`."""
    vertices, faces, uvs = primitives.uv_sphere(1.0, sphere_segments(triangles))
    mesh = Mesh("sphere", vertices, faces, uvs, np.ones((len(vertices), 3), np.float32),
                np.zeros(3, np.float32), np.array([0, 0, 0, 1], np.float32), np.ones(3, np.float32), "body")
    material = Material("body", "lambert", procedural_texture(texture, seed),
                        np.full((1, 1, 1), 1.0, np.float32), np.zeros((1, 1, 1), np.float32))
    intrinsics = conventions.fov_y_to_intrinsics(FOV_DEG, resolution, resolution).astype(np.float32)
    pose = conventions.look_at(EYE, (0.0, 0.0, 0.0)).astype(np.float32)
    return Scene(
        path="",
        meshes={"sphere": mesh},
        materials={"body": material},
        point_lights={"key": PointLight("key", np.array([2.0, 2.0, 3.0], np.float32), np.ones(3, np.float32),
                                        np.array([40.0], np.float32))},
        ambient_lights={"fill": AmbientLight("fill", np.full(3, 0.2, np.float32))},
        cameras={"main": Camera("main", resolution, resolution, intrinsics, pose)},
        render=RenderSettings(mode=mode, shadows=True, mipmaps=True),
    )


# ---------------------------------------------------------------------------------------------------
# Instruments


class LaunchProfiler:
    """Wall time of every `wp.launch` (forward and adjoint) and BVH refit, by kernel.

    A CPU launch runs synchronously, so the time around it is the kernel plus its host-side argument
    packing. Installed by patching `warp.launch` and `warp.Mesh.refit` for the duration of the `with`
    block (the stages and `wp.Tape.backward` look `wp.launch` up at call time); not thread-safe."""

    def __init__(self):
        self.times: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # (stage, kernel, pass)
        self._orig_launch = None
        self._orig_refit = None

    def __enter__(self) -> LaunchProfiler:
        self._orig_launch, self._orig_refit = wp.launch, wp.Mesh.refit
        orig_launch, orig_refit, times = self._orig_launch, self._orig_refit, self.times

        def launch(kernel, *args, **kwargs):
            t0 = time.perf_counter()
            result = orig_launch(kernel, *args, **kwargs)
            dt = time.perf_counter() - t0
            stage = kernel.module.name.rsplit(".", 1)[-1]
            times[(stage, kernel.key, "backward" if kwargs.get("adjoint") else "forward")].append(dt)
            return result

        def refit(mesh, *args, **kwargs):
            t0 = time.perf_counter()
            result = orig_refit(mesh, *args, **kwargs)
            times[("visibility", "wp.Mesh.refit", "forward")].append(time.perf_counter() - t0)
            return result

        wp.launch, wp.Mesh.refit = launch, refit
        return self

    def __exit__(self, *exc) -> None:
        wp.launch, wp.Mesh.refit = self._orig_launch, self._orig_refit

    def summary(self, runs: int) -> list[dict]:
        """Per (stage, kernel, pass): ms per run and launches per run, slowest first."""
        rows = [{"stage": s, "kernel": k, "pass": p, "ms": 1e3 * sum(v) / runs, "launches": len(v) / runs}
                for (s, k, p), v in self.times.items()]
        return sorted(rows, key=lambda r: -r["ms"])


class AllocationCounter:
    """Peak bytes allocated through the CPU device's Warp allocator while installed (`with`)."""

    def __init__(self, device):
        self.device = wp.get_device(device)
        self.live = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._orig = None

    def allocate(self, size: int) -> int:
        ptr = self._orig.allocate(size)
        with self._lock:
            self.live += size
            self.peak = max(self.peak, self.live)
        return ptr

    def deallocate(self, ptr: int, size: int) -> None:
        self._orig.deallocate(ptr, size)
        with self._lock:
            self.live -= size

    def __getattr__(self, name):
        return getattr(self._orig, name)

    def __enter__(self) -> AllocationCounter:
        if self.device.is_cpu:
            self._orig = self.device.default_allocator
            self.device.default_allocator = self
        return self

    def __exit__(self, *exc) -> None:
        if self._orig is not None:
            self.device.default_allocator = self._orig


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) via /proc/self/clear_refs; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float | None:
    """Current RSS (VmRSS) in MB, None off Linux."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


def peak_rss_mb() -> float:
    """VmHWM from /proc/self/status (resettable), else getrusage's ru_maxrss (process lifetime)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def tune_malloc() -> bool:
    """glibc's malloc tuned to keep freed buffers for reuse, as the `drstudio` command runs
    (`renderer.memory.reuse_freed_buffers`); False where unavailable."""
    return memory.reuse_freed_buffers()


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of all cores from /proc/stat, this process's own CPU ticks), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    t = os.times()  # children count as our own: the Mitsuba baseline runs in a child process
    own = t.user + t.system + t.children_user + t.children_system
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], round(own * os.sysconf("SC_CLK_TCK"))


class ForeignLoad:
    """Cores' worth of CPU time that OTHER processes used during the `with` block (all busy time in
    /proc/stat minus this process's and its waited-for children's): on a shared 2-core machine a busy
    neighbour halves the two-thread numbers, so every case reports it. `cores` is None where
    /proc/stat is unavailable."""

    def __enter__(self) -> ForeignLoad:
        self._t0, self._ticks0, self.cores = time.perf_counter(), _cpu_ticks(), None
        return self

    def __exit__(self, *exc) -> None:
        ticks = _cpu_ticks()
        if ticks is None or self._ticks0 is None:
            return
        elapsed = (time.perf_counter() - self._t0) * os.sysconf("SC_CLK_TCK")
        foreign = (ticks[0] - self._ticks0[0]) - (ticks[1] - self._ticks0[1])
        self.cores = max(0.0, foreign / max(elapsed, 1e-9))


def wait_until_idle(max_wait_s: float, threshold: float = 0.1, quiet_s: float = 2.0) -> float | None:
    """Wait (up to `max_wait_s`) until other processes have used less than `threshold` cores for
    `quiet_s` seconds in a row; returns the last measured foreign load (None where unmeasurable)."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        with ForeignLoad() as load:
            time.sleep(quiet_s)
        if load.cores is None or load.cores < threshold or time.perf_counter() >= deadline:
            return load.cores


def measure_quietly(measure, wait_idle_s: float, retries: int, max_busy: float = 0.1):
    """`measure()` -> (result, foreign load), after waiting for idle (`wait_idle_s` > 0), repeated up
    to `retries` more times while other processes were busy meanwhile; the least disturbed result."""
    best = None
    for _ in range(retries + 1):
        if wait_idle_s > 0:
            wait_until_idle(wait_idle_s)
        result, busy = measure()
        if best is None or (busy or 0.0) < (best[1] or 0.0):
            best = (result, busy)
        if (busy or 0.0) <= max_busy:
            break
    return best


# ---------------------------------------------------------------------------------------------------
# One case


@dataclass
class Case:
    """A built benchmark case: the device scene and its fixed target image."""

    ds: DeviceScene
    mode: str
    target: wp.array
    resolution: int
    triangles: int

    @classmethod
    def build(cls, triangles: int, resolution: int, mode: str, device: str) -> Case:
        # the target: the same scene under another albedo texture, rendered once
        ds = DeviceScene(build_scene(triangles, resolution, mode=mode, seed=1), device)
        target = wp.clone(render_view(ds, ds.prepare(), "main", mode=mode).image, requires_grad=False)
        ds = DeviceScene(build_scene(triangles, resolution, mode=mode, seed=0), device)
        return cls(ds, mode, target, resolution, ds.num_faces)

    def render(self, frame, threads: int = 1, cache: GBufferCache | None = None):
        if threads == 1:
            return render_view(self.ds, frame, "main", mode=self.mode, cache=cache)
        from drstudio.renderer import parallel

        return parallel.render_view_split(self.ds, frame, "main", mode=self.mode, parts=threads, cache=cache)

    def texture_cache(self) -> GBufferCache:
        """The G-buffer cache a texture optimization uses: only the albedo texture varies."""
        return GBufferCache(self.ds, varying=[ALBEDO])

    def forward(self, threads: int = 1, cache: GBufferCache | None = None) -> wp.array:
        """prepare + render; returns the image."""
        return self.render(self.ds.prepare(cache=cache), threads, cache).image

    def step(self, threads: int = 1, cache: GBufferCache | None = None, wrt: tuple | None = (ALBEDO,)) -> wp.array:
        """One optimization step (zero_grad, prepare + render + L2 under a tape, backward) differentiating
        the paths `wrt` (`DeviceScene.differentiating`, as `Problem.step` does with its free parameters; None:
        every leaf); returns the gradient of the first of them (the albedo texture's by default; with
        wrt=None the albedo's). With `cache` the view's G-buffer is reused (filled by the first call)."""
        self.ds.zero_grad()
        loss = wp.zeros(1, dtype=float, device=self.ds.device, requires_grad=True)
        tape = wp.Tape()
        with tape, (self.ds.differentiating(wrt) if wrt is not None else contextlib.nullcontext()):
            image = self.render(self.ds.prepare(cache=cache), threads, cache).image
            losses.l2(image, self.target, loss)
        tape.backward(loss)
        return self.ds.arrays[wrt[0] if wrt else ALBEDO].grad

    def geometry_step(self, threads: int = 1) -> wp.array:
        """A shape-optimization step: the vertices differentiated, nothing reused; their gradient."""
        return self.step(threads, None, (VERTICES,))


def median_times(fn, device, repeats: int, warmup: int) -> tuple[float, float]:
    """(median wall time, median CPU time of this process) in ms of `repeats` calls after `warmup` calls,
    synchronized around each. The CPU time counts every thread of the process: for one-thread work it is
    the time the call takes on an idle core, whatever other processes do meanwhile (on a loaded machine
    the wall time is not)."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        wp.synchronize_device(device)
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wp.synchronize_device(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * statistics.median(times), 1e3 * statistics.median(cpu)


def median_ms(fn, device, repeats: int, warmup: int) -> float:
    """Median wall time in ms of `repeats` calls after `warmup` calls, synchronized around each."""
    return median_times(fn, device, repeats, warmup)[0]


def measure_case(case: Case, repeats: int, warmup: int, threads: int = 1) -> dict:
    """forward_ms, step_ms (1 thread); with threads > 1 also forward_mt_ms, step_mt_ms (the image split
    into `threads` bands); peak RSS, peak Warp allocation and the foreign CPU load meanwhile."""
    dev = case.ds.device
    reset_peak_rss()
    row = {"resolution": case.resolution, "triangles": case.triangles, "mode": case.mode}
    with AllocationCounter(dev) as alloc, ForeignLoad() as load:
        row["forward_ms"], row["forward_cpu_ms"] = median_times(case.forward, dev, repeats, warmup)
        row["step_ms"], row["step_cpu_ms"] = median_times(case.step, dev, repeats, warmup)
        row["step_all_ms"] = median_ms(lambda: case.step(1, None, None), dev, repeats, warmup)
        row["geo_step_ms"], row["geo_step_cpu_ms"] = median_times(case.geometry_step, dev, repeats, warmup)
        cache = case.texture_cache()
        row["step_cached_ms"] = median_ms(lambda: case.step(1, cache), dev, repeats, warmup)
        if threads > 1 and dev.is_cpu:
            row["threads"] = threads
            row["forward_mt_ms"] = median_ms(lambda: case.forward(threads), dev, repeats, warmup)
            row["step_mt_ms"], row["step_mt_cpu_ms"] = median_times(lambda: case.step(threads), dev, repeats, warmup)
            row["geo_step_mt_ms"], row["geo_step_mt_cpu_ms"] = median_times(lambda: case.geometry_step(threads), dev,
                                                                            repeats, warmup)
            cache = case.texture_cache()
            row["step_cached_mt_ms"] = median_ms(lambda: case.step(threads, cache), dev, repeats, warmup)
    row["peak_rss_mb"] = peak_rss_mb()
    row["warp_peak_mb"] = alloc.peak / 2**20 if dev.is_cpu else None
    row["foreign_load"] = load.cores
    return row


def profile_case(case: Case, runs: int) -> dict:
    """Per-kernel times of `runs` forward passes, `runs` steps and `runs` steps reusing the G-buffer
    (1 thread, after one unprofiled run of each)."""
    cache = case.texture_cache()
    case.forward()
    case.step()
    case.step(1, cache)
    out = {}
    case.geometry_step()
    for name, fn in (("forward", case.forward), ("step", case.step), ("step all", lambda: case.step(1, None, None)),
                     ("geometry step", case.geometry_step), ("cached step", lambda: case.step(1, cache))):
        with LaunchProfiler() as prof:
            t0 = time.perf_counter()
            for _ in range(runs):
                fn()
            wp.synchronize_device(case.ds.device)
            total = 1e3 * (time.perf_counter() - t0) / runs
        kernels = prof.summary(runs)
        stages: dict[tuple[str, str], float] = defaultdict(float)
        for r in kernels:
            stages[(r["stage"], r["pass"])] += r["ms"]
        out[name] = {"total_ms": total, "kernels": kernels,
                     "stages": sorted(({"stage": s, "pass": p, "ms": ms} for (s, p), ms in stages.items()),
                                      key=lambda r: -r["ms"]),
                     "launches_ms": sum(r["ms"] for r in kernels),
                     "launches": sum(r["launches"] for r in kernels)}
    return out


def visibility_scaling(resolution: int, triangles, repeats: int, warmup: int, device: str,
                       wait_idle_s: float = 0.0) -> list[dict]:
    """Hard-mode forward time and primary-visibility time (rasterization + intersect) at fixed coverage."""
    rows = []
    for tris in triangles:
        case = Case.build(tris, resolution, "hard", device)
        if wait_idle_s > 0:
            wait_until_idle(wait_idle_s)
        fwd = median_ms(case.forward, case.ds.device, repeats, warmup)
        prof = profile_case(case, max(2, repeats // 2))["forward"]
        vis = sum(r["ms"] for r in prof["kernels"]
                  if r["kernel"].startswith(("raster_kernel", "_finish_ids", "trace_primary", "intersect_kernel")))
        rows.append({"triangles": case.triangles, "forward_ms": fwd, "visibility_ms": vis})
    return rows


# ---------------------------------------------------------------------------------------------------
# Driver


def machine() -> dict:
    """The machine and software versions the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 2**20
                break
    try:  # the version without importing torch (it would add ~300 MB to the RSS measured here)
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram, "python": platform.python_version(),
            "warp": wp.config.version, "torch": torch, "os": platform.platform(),
            "date": datetime.date.today().isoformat()}


def run(resolutions=RESOLUTIONS, triangles=TRIANGLES, modes=MODES, repeats: int = 10, warmup: int = 3,
        device: str = "cpu", threads: int = 2, mitsuba: bool = False, wait_idle_s: float = 0.0,
        retries: int = 0, log=None) -> list[dict]:
    """Measure every (resolution, triangles, mode) case; one dict per case, slowest loop over modes.

    Keys: resolution, triangles (actual), mode, forward_ms, step_ms, peak_rss_mb, warp_peak_mb,
    foreign_load (cores other processes used meanwhile); with `threads` > 1 on a CPU also threads,
    forward_mt_ms, step_mt_ms (`renderer.parallel.render_view_split`); with `mitsuba`, Mitsuba 3's
    direct integrator at 1 spp on the same resolution and triangle count: mitsuba_forward_ms,
    mitsuba_step_ms (its default thread count, mitsuba_threads) and mitsuba_step_1t_ms (one thread),
    None when Mitsuba is unavailable, and mitsuba_busy. `wait_idle_s` > 0 waits up to that long
    before each measurement for other processes to go idle; a measurement during which they used more
    than 0.1 core is repeated up to `retries` times. `log(row)` is called after each case."""
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0), ("threads", threads, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"modes: expected a subset of {MODES}, got {list(modes)}")
    wp.init()
    rows = []
    mitsuba_cache: dict[tuple[int, int], tuple] = {}
    for res in resolutions:
        for tris in triangles:
            for mode in modes:
                case = Case.build(tris, res, mode, device)

                def ours(case=case):
                    row = measure_case(case, repeats, warmup, threads)
                    return row, row["foreign_load"]

                row, _ = measure_quietly(ours, wait_idle_s, retries)
                del case
                if mitsuba:
                    if (res, tris) not in mitsuba_cache:

                        def theirs(res=res, tris=tris):
                            with ForeignLoad() as load:
                                m = (_mitsuba(res, tris, repeats, warmup, None),
                                     _mitsuba(res, tris, repeats, warmup, 1))
                            return m, load.cores

                        mitsuba_cache[(res, tris)] = measure_quietly(theirs, wait_idle_s, retries)
                    (m, m1), row["mitsuba_busy"] = mitsuba_cache[(res, tris)]
                    row["mitsuba_forward_ms"] = m["integrators"]["direct"]["forward_ms"] if m else None
                    row["mitsuba_step_ms"] = m["integrators"]["direct"]["step_ms"] if m else None
                    row["mitsuba_step_cpu_ms"] = m["integrators"]["direct"].get("step_cpu_ms") if m else None
                    row["mitsuba_threads"] = m["threads"] if m else None
                    row["mitsuba_step_1t_ms"] = m1["integrators"]["direct"]["step_ms"] if m1 else None
                    row["mitsuba_forward_1t_cpu_ms"] = m1["integrators"]["direct"]["forward_cpu_ms"] if m1 else None
                    row["mitsuba_step_1t_cpu_ms"] = m1["integrators"]["direct"]["step_cpu_ms"] if m1 else None
                rows.append(row)
                if log:
                    log(row)
    return rows


def _mitsuba(resolution: int, triangles: int, repeats: int, warmup: int, threads: int | None) -> dict | None:
    """`benchmarks.mitsuba_baseline.measure_mitsuba` (direct integrator), None if unavailable."""
    try:
        from benchmarks.mitsuba_baseline import measure_mitsuba
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return measure_mitsuba(resolution, triangles, TEXTURE, repeats, warmup, threads=threads)


# ---------------------------------------------------------------------------------------------------
# Tables

# (title, key, format); a column is shown when any row has its key
COLUMNS = (("res", "resolution", "4d"), ("tris", "triangles", "6d"), ("mode", "mode", "9s"),
           ("fwd", "forward_ms", "6.1f"), ("step", "step_ms", "6.1f"),
           ("step all", "step_all_ms", "8.1f"), ("geo", "geo_step_ms", "6.1f"),
           ("fwd 2t", "forward_mt_ms", "6.1f"), ("step 2t", "step_mt_ms", "7.1f"),
           ("geo 2t", "geo_step_mt_ms", "6.1f"),
           ("cached", "step_cached_ms", "6.1f"), ("cached 2t", "step_cached_mt_ms", "9.1f"),
           ("mi fwd", "mitsuba_forward_ms", "6.1f"), ("mi step", "mitsuba_step_ms", "7.1f"),
           ("mi 1t", "mitsuba_step_1t_ms", "6.1f"),
           ("fwd cpu", "forward_cpu_ms", "7.1f"), ("step cpu", "step_cpu_ms", "8.1f"),
           ("geo cpu", "geo_step_cpu_ms", "7.1f"), ("mi fwd 1t cpu", "mitsuba_forward_1t_cpu_ms", "13.1f"),
           ("mi 1t cpu", "mitsuba_step_1t_cpu_ms", "9.1f"), ("step 2t cpu", "step_mt_cpu_ms", "11.1f"),
           ("geo 2t cpu", "geo_step_mt_cpu_ms", "10.1f"), ("mi cpu", "mitsuba_step_cpu_ms", "6.1f"),
           ("RSS MB", "peak_rss_mb", "6.0f"), ("warp MB", "warp_peak_mb", "7.1f"),
           ("busy", "foreign_load", "4.1f"), ("mi busy", "mitsuba_busy", "7.1f"))

LEGEND = ("times in ms (median); fwd = prepare + render, step = fwd + L2 loss + backward of the texture "
          "(only it differentiated, as Problem.step and Mitsuba do), everything recomputed; step all = the same "
          "with every leaf differentiated; geo = the step of a shape optimization (the vertices differentiated, "
          "everything recomputed); cached = the same step reusing the G-buffer (GBufferCache, only the "
          "albedo varies: what a texture optimization runs); 2t = image split between 2 threads "
          "(renderer.parallel); mi = Mitsuba 3 llvm_ad_rgb, "
          "direct integrator, 1 spp (all cores; 1t = one thread); cpu = the process's CPU time on one thread "
          "(the time on an idle core; robust to other processes' load), 2t cpu and mi cpu the CPU time of "
          "both threads added; RSS MB = peak process RSS during the "
          "case; warp MB = peak bytes Warp allocated during the case; busy = cores other processes used "
          "meanwhile (should be ~0; mi busy: during the Mitsuba runs)")


def _cell(value, spec: str) -> str:
    width = int(spec.rstrip("dfs").split(".")[0])
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{spec}}" if spec.endswith("s") else format(value, spec)


def format_table(rows: list[dict], header: bool = True) -> str:
    """The results as a fixed-width text table (see LEGEND)."""
    cols = [c for c in COLUMNS if any(c[1] in r for r in rows)] if rows else list(COLUMNS)
    lines = []
    if header:
        head = " ".join(f"{title:>{int(spec.rstrip('dfs').split('.')[0])}}" for title, _, spec in cols)
        lines += [head, "-" * len(head)]
    lines += [" ".join(_cell(r.get(key), spec) for _, key, spec in cols) for r in rows]
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    """The results as a Markdown table (for benchmarks/README.md)."""
    cols = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    lines = ["| " + " | ".join(t for t, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = ["-" if r.get(k) is None else str(r[k]) if spec.endswith("s")
                 else format(r[k], spec.lstrip("0123456789")) for _, k, spec in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_profile(prof: dict, top: int = 12) -> str:
    lines = []
    for name in ("forward", "step", "step all", "geometry step", "cached step"):
        if name not in prof:
            continue
        p = prof[name]
        total = p["total_ms"]
        lines.append(f"{name}: {total:.1f} ms per run; {p['launches']:.0f} launches take "
                     f"{p['launches_ms']:.1f} ms, host-side rest (allocation, checks, Python) "
                     f"{total - p['launches_ms']:.1f} ms")
        lines.append("  by stage: " + ", ".join(
            f"{r['stage']} {r['pass'][:3]} {r['ms']:.1f} ({100 * r['ms'] / total:.0f}%)"
            for r in p["stages"][:8]))
        lines.append(f"  {'stage':<12} {'kernel':<32} {'pass':<8} {'ms':>6} {'share':>6} {'launches':>8}")
        for r in p["kernels"][:top]:
            lines.append(f"  {r['stage']:<12} {r['kernel'][:32]:<32} {r['pass']:<8} {r['ms']:6.2f} "
                         f"{100 * r['ms'] / total:5.1f}% {r['launches']:8.0f}")
    return "\n".join(lines)


def format_visibility(rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"{'tris':>8} {'x tris':>7} {'fwd ms':>8} {'x fwd':>6} {'vis ms':>7} {'x vis':>6}", "-" * 47]
    for r in rows:
        lines.append(f"{r['triangles']:>8d} {r['triangles'] / base['triangles']:7.1f} {r['forward_ms']:8.2f} "
                     f"{r['forward_ms'] / base['forward_ms']:6.2f} {r['visibility_ms']:7.2f} "
                     f"{r['visibility_ms'] / max(base['visibility_ms'], 1e-9):6.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1k and 10k triangles, antialias mode, 3 repeats, no Mitsuba (< 1 minute)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None)
    parser.add_argument("--triangles", type=int, nargs="+", default=None)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per number (median)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before them")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for the split-image columns (1: skip them; default 2)")
    parser.add_argument("--mitsuba", action=argparse.BooleanOptionalAction, default=None,
                        help="include Mitsuba 3 numbers (default: on, off with --quick)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="per-kernel profile of 256x256, 10k triangles, antialias")
    parser.add_argument("--visibility", action=argparse.BooleanOptionalAction, default=True,
                        help="forward time against triangle count at fixed coverage (the --triangles, "
                             "default 1k to 1M)")
    parser.add_argument("--wait-idle", type=float, default=None, metavar="SECONDS",
                        help="before each case wait up to this long for other processes to go idle "
                             "(default 30, 0 with --quick)")
    parser.add_argument("--retries", type=int, default=None,
                        help="re-measure a case up to this often while other processes were busy "
                             "(default 3, 0 with --quick)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--tune-malloc", action=argparse.BooleanOptionalAction, default=True,
                        help="run with glibc's malloc tuned to reuse freed buffers, as the drstudio command does "
                             "(see tune_malloc; default on, --no-tune-malloc for glibc's defaults)")
    args = parser.parse_args(argv)

    quick = args.quick
    resolutions = tuple(args.resolutions or RESOLUTIONS)
    triangles = tuple(args.triangles or ((1_000, 10_000) if quick else TRIANGLES))
    modes = tuple(args.modes or (("antialias",) if quick else MODES))
    repeats = args.repeats or (3 if quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    mitsuba = (not quick) if args.mitsuba is None else args.mitsuba
    wait_idle_s = args.wait_idle if args.wait_idle is not None else (0.0 if quick else 30.0)
    retries = args.retries if args.retries is not None else (0 if quick else 3)

    started = time.perf_counter()
    malloc = "glibc malloc tuned (mmap threshold 32 MB)" if args.tune_malloc and tune_malloc() else "default malloc"
    wp.config.log_level = max(getattr(wp.config, "log_level", 0) or 0, 30)  # no module-load chatter
    wp.init()
    info = machine()
    print(f"drstudio renderer benchmark {info['date']}: {info['cpu']}, {info['cores']} cores, "
          f"{info['ram_gb']:.0f} GB RAM, {info['os']}")
    print(f"Python {info['python']}, Warp {info['warp']}, torch {info['torch']}; device {args.device}")
    print(f"Scene: UV sphere at fixed coverage, {TEXTURE}x{TEXTURE} albedo texture, point + ambient light, "
          f"shadows on, mipmaps on; median of {repeats} after {warmup} warm-up; {malloc}")
    print(LEGEND)
    base = rss_mb()
    print(f"RSS before the first case (Python, NumPy, Warp, trimesh loaded): "
          f"{'-' if base is None else f'{base:.0f} MB'}", flush=True)

    def progress(r: dict) -> None:
        print(f"  measured {r['resolution']}px {r['triangles']} triangles {r['mode']}: "
              f"step {r['step_ms']:.1f} ms ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)

    rows = run(resolutions, triangles, modes, repeats, warmup, args.device, args.threads, mitsuba,
               wait_idle_s, retries, log=progress)
    print()
    print(format_table(rows))
    if args.markdown:
        print()
        print(format_markdown(rows))

    res = 256 if 256 in resolutions else resolutions[0]
    if args.profile:
        tris = 10_000 if 10_000 in triangles else triangles[0]
        case = Case.build(tris, res, "antialias", args.device)
        if wait_idle_s > 0:
            wait_until_idle(wait_idle_s)
        print(f"\nProfile, 1 thread: {res}x{res}, {case.triangles} triangles, antialias "
              "(ms per run, slowest first)")
        print(format_profile(profile_case(case, 3 if quick else repeats)))
        del case
    if args.visibility:
        vis_tris = args.triangles or ((1_000, 10_000) if quick else (1_000, 10_000, 100_000, 1_000_000))
        print(f"\nVisibility at fixed coverage: {res}x{res}, hard mode, 1 thread; "
              "vis = rasterization + intersect")
        print(format_visibility(visibility_scaling(res, vis_tris, repeats, warmup, args.device, wait_idle_s)))
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
