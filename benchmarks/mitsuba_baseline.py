"""Mitsuba 3 baseline for the renderer benchmark: one texture-optimization step on a CPU.

The scene is built in code to mirror the drstudio renderer benchmark: a UV sphere of ~`triangles`
triangles, a diffuse BSDF whose reflectance is a `texture`x`texture` RGB bitmap (the differentiable
parameter), a point light plus a constant ambient emitter, a perspective camera at `resolution`^2,
1 sample per pixel.
One step = render + L2 loss against a fixed target + `dr.backward` + evaluating the texture gradient.

Each measurement runs in a child Python process, so Dr.Jit's thread pool, its JIT and its memory stay
out of the calling process (and the reported peak RSS is Mitsuba's alone: the child's maximum over
all integrators it ran, Python and the LLVM library included).

Setup (Debian 12): `pip install -e ".[bench]"` (mitsuba, drjit) and `apt-get install libllvm19`.
Dr.Jit's LLVM backend aborts in LLVM's instruction selection with Debian's LLVM 15; this module points
DRJIT_LIBLLVM_PATH at LLVM 19 when that is installed and the variable is unset.

    python benchmarks/mitsuba_baseline.py            # table: 256^2 and 512^2, default and 1 thread
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

VARIANT = "llvm_ad_rgb"
# Newest first; Dr.Jit 1.5 needs a newer LLVM than Debian 12's default 15 (which aborts when compiling).
LLVM_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1",
    "/usr/lib/x86_64-linux-gnu/libLLVM-19.so.1",
    "/usr/lib/x86_64-linux-gnu/libLLVM.so.18.1",
    "/usr/lib/x86_64-linux-gnu/libLLVM-18.so.1",
    "/usr/lib/x86_64-linux-gnu/libLLVM-17.so.1",
    "/usr/lib/x86_64-linux-gnu/libLLVM-16.so.1",
)
CHILD_TIMEOUT_S = 900


def find_libllvm() -> str | None:
    """DRJIT_LIBLLVM_PATH if set, else the newest known-good system libLLVM, else None."""
    if os.environ.get("DRJIT_LIBLLVM_PATH"):
        return os.environ["DRJIT_LIBLLVM_PATH"]
    for path in LLVM_CANDIDATES:
        if os.path.exists(path):
            return path
    found = sorted(glob.glob("/usr/lib/*/libLLVM*.so.1[6-9]*") + glob.glob("/usr/lib/*/libLLVM-1[6-9].so*"))
    return found[-1] if found else None


# --------------------------------------------------------------------------------------------------
# Parent side


def measure_mitsuba(
    resolution: int = 256,
    triangles: int = 10_000,
    texture: int = 256,
    repeats: int = 10,
    warmup: int = 3,
    *,
    threads: int | None = None,
    integrators: tuple[str, ...] = ("direct",),
) -> dict | None:
    """Median timings of Mitsuba 3 (llvm_ad_rgb) for one texture-optimization step, in a child process.

    `threads`: Dr.Jit CPU thread count (`dr.set_thread_count`); None keeps its default (all cores).
    `integrators`: any of "direct" and "path" (path runs with max_depth=2).
    Returns a dict with, per integrator, `forward_ms` (render without gradients) and `step_ms`
    (render + loss + backward + gradient evaluated), plus `peak_rss_mb`, `threads`, versions; or None
    when Mitsuba is not importable or the variant fails, with the reason issued as a RuntimeWarning.
    """
    for name, value in (("resolution", resolution), ("triangles", triangles), ("texture", texture),
                        ("repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"measure_mitsuba: '{name}' must be a positive int, got {value!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"measure_mitsuba: 'warmup' must be an int >= 0, got {warmup!r}")
    bad = [i for i in integrators if i not in ("direct", "path")]
    if bad or not integrators:
        raise ValueError(f"measure_mitsuba: 'integrators' must be a non-empty subset of ('direct', 'path'), "
                         f"got {integrators!r}")

    env = dict(os.environ)
    libllvm = find_libllvm()
    if libllvm:
        env["DRJIT_LIBLLVM_PATH"] = libllvm
    cmd = [sys.executable, os.path.abspath(__file__), "--worker",
           "--resolution", str(resolution), "--triangles", str(triangles), "--texture", str(texture),
           "--repeats", str(repeats), "--warmup", str(warmup),
           "--integrators", ",".join(integrators)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return _unavailable(f"Mitsuba benchmark child did not finish within {CHILD_TIMEOUT_S} s")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-8:]
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        return _unavailable(f"Mitsuba benchmark child failed ({how}; DRJIT_LIBLLVM_PATH={libllvm}):\n"
                            + "\n".join(tail))
    result = json.loads(lines[-1])
    if "error" in result:
        return _unavailable(result["error"])
    return result


def _unavailable(reason: str) -> None:
    warnings.warn(f"Mitsuba baseline unavailable: {reason}", RuntimeWarning, stacklevel=3)
    return None


# --------------------------------------------------------------------------------------------------
# Child side: everything below runs in the worker process.


def uv_sphere(triangles: int):
    """Vertices (V, 3), normals (V, 3), uvs (V, 2) and faces (F, 3) of a unit UV sphere, F ~ triangles.

    A (rings+1) x (segments+1) vertex grid (the seam column is duplicated so uv is continuous); the
    pole rows get one triangle per segment, other rows two: F = 2 * segments * (rings - 1).
    """
    import numpy as np

    rings = max(3, round((triangles / 4) ** 0.5) + 1)
    segments = max(3, round(triangles / (2 * (rings - 1))))
    theta = np.linspace(0.0, np.pi, rings + 1)
    phi = np.linspace(0.0, 2.0 * np.pi, segments + 1)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    normals = np.stack([np.sin(t) * np.cos(p), np.cos(t), -np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    uvs = np.stack([p / (2 * np.pi), t / np.pi], -1).reshape(-1, 2)
    idx = np.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)
    a, b = idx[:-1, :-1], idx[:-1, 1:]
    c, d = idx[1:, :-1], idx[1:, 1:]
    # (a, c, d) collapses at the south pole (c, d coincide), (a, d, b) at the north pole (a, b coincide).
    upper = np.stack([a, c, d], -1)[:-1].reshape(-1, 3)
    lower = np.stack([a, d, b], -1)[1:].reshape(-1, 3)
    faces = np.concatenate([upper, lower]).astype(np.uint32)
    return normals.astype(np.float32), normals.astype(np.float32), uvs.astype(np.float32), faces


def build_scene(integrator: str, resolution: int, triangles: int, texture_rgb):
    """The benchmark scene (needs a Mitsuba variant set); `texture_rgb` (h, w, 3) float32 reflectance."""
    import mitsuba as mi

    positions, normals, uvs, faces = uv_sphere(triangles)
    props = mi.Properties()
    props["bsdf"] = mi.load_dict({
        "type": "diffuse",
        "reflectance": {"type": "bitmap", "bitmap": mi.Bitmap(texture_rgb), "filter_type": "bilinear",
                        "raw": True},
    })
    mesh = mi.Mesh("sphere", vertex_count=len(positions), face_count=len(faces), props=props,
                   has_vertex_normals=True, has_vertex_texcoords=True)
    mesh_params = mi.traverse(mesh)
    mesh_params["vertex_positions"] = mi.Float(positions.ravel())
    mesh_params["vertex_normals"] = mi.Float(normals.ravel())
    mesh_params["vertex_texcoords"] = mi.Float(uvs.ravel())
    mesh_params["faces"] = mi.UInt32(faces.ravel())
    mesh_params.update()
    integrator_dict = {"type": integrator}
    if integrator == "path":
        integrator_dict["max_depth"] = 2  # camera ray + one light bounce: direct lighting only
    return mi.load_dict({
        "type": "scene",
        "integrator": integrator_dict,
        "sensor": {
            "type": "perspective",
            "fov": 40.0,
            "to_world": mi.ScalarTransform4f().look_at(origin=[0, 0.4, 3.2], target=[0, 0, 0], up=[0, 1, 0]),
            "sampler": {"type": "independent", "sample_count": 1},
            "film": {"type": "hdrfilm", "width": resolution, "height": resolution, "rfilter": {"type": "box"},
                     "pixel_format": "rgb"},
        },
        "sphere": mesh,
        "light": {"type": "point", "position": [2.0, 2.0, 3.0], "intensity": {"type": "rgb", "value": 40.0}},
        "ambient": {"type": "constant", "radiance": {"type": "rgb", "value": 0.2}},
    })


def _worker(args: argparse.Namespace) -> dict:
    import resource

    import numpy as np

    try:
        import drjit as dr
        import mitsuba as mi
    except ImportError as exc:
        return {"error": f"mitsuba is not importable ({exc}); install with pip install -e '.[bench]'"}
    try:
        mi.set_variant(VARIANT)
    except Exception as exc:  # noqa: BLE001 - any failure here means "variant unavailable"
        return {"error": f"variant {VARIANT} unavailable: {exc}"}
    if args.threads is not None:
        dr.set_thread_count(args.threads)
    rss_after_import_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    rng = np.random.default_rng(0)
    res, tex = args.resolution, args.texture
    target_texture = rng.uniform(0.05, 0.95, (tex, tex, 3)).astype(np.float32)
    start_texture = np.full((tex, tex, 3), 0.5, np.float32)

    cpu: list[float] = []  # the process's CPU time of each timed call (all its threads), last `timed` only

    def timed(fn, n: int) -> list[float]:
        times = []
        cpu.clear()
        for i in range(n):
            c0, t0 = time.process_time(), time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
        return times

    out = {
        "variant": VARIANT, "mitsuba": mi.__version__, "drjit": dr.__version__,
        "threads": dr.thread_count(), "resolution": res, "texture": tex, "spp": 1,
        "repeats": args.repeats, "warmup": args.warmup, "integrators": {},
    }
    for integrator in args.integrators.split(","):
        scene = build_scene(integrator, res, args.triangles, target_texture)
        out["triangles"] = int(scene.shapes()[0].face_count())
        params = mi.traverse(scene)
        key = next(k for k in params.keys() if k.endswith("reflectance.data"))
        target = mi.render(scene, params, spp=16, seed=12345)
        dr.eval(target)
        params[key] = mi.TensorXf(start_texture)
        params.update()

        # An opaque seed: a Python int is baked into the kernels as a literal, and the `direct`
        # integrator then recompiles three kernels every step (~+50 ms here).
        def forward(i, scene=scene):
            img = mi.render(scene, spp=1, seed=dr.opaque(mi.UInt32, i))
            dr.eval(img)
            dr.sync_thread()

        def step(i, scene=scene, params=params, key=key, target=target):
            dr.enable_grad(params[key])
            params.update()
            img = mi.render(scene, params, spp=1, seed=dr.opaque(mi.UInt32, i))
            loss = dr.mean(dr.square(img - target), axis=None)
            dr.backward(loss)
            grad = dr.grad(params[key])
            dr.eval(grad)
            dr.sync_thread()
            dr.disable_grad(params[key])  # also drops the accumulated gradient
            params.update()

        timed(forward, args.warmup)
        fwd = timed(forward, args.repeats)
        fwd_cpu = statistics.median(cpu)
        timed(step, args.warmup)
        stp = timed(step, args.repeats)
        out["integrators"][integrator] = {
            "forward_ms": statistics.median(fwd), "step_ms": statistics.median(stp),
            "forward_min_ms": min(fwd), "step_min_ms": min(stp),
            # CPU time of the process (all threads): with one thread, the time on an otherwise idle core
            "forward_cpu_ms": fwd_cpu, "step_cpu_ms": statistics.median(cpu),
        }
        if integrator == "path":
            out["integrators"][integrator]["max_depth"] = 2
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["rss_after_import_mb"] = rss_after_import_mb  # Python + Mitsuba + LLVM before any scene
    return out


# --------------------------------------------------------------------------------------------------


def _print_table(rows: list[dict]) -> None:
    head = (f"{'integrator':<10} {'res':>5} {'threads':>7} {'forward ms':>11} {'step ms':>9} "
            f"{'step min ms':>11} {'peak RSS MB':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        for name, t in r["integrators"].items():
            label = f"{name}" + ("(d=2)" if name == "path" else "")
            print(f"{label:<10} {r['resolution']:>5} {r['threads']:>7} {t['forward_ms']:>11.1f} "
                  f"{t['step_ms']:>9.1f} {t['step_min_ms']:>11.1f} {r['peak_rss_mb']:>12.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--triangles", type=int, default=10_000)
    parser.add_argument("--texture", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help="Dr.Jit thread counts to run (default: the default count, then 1)")
    parser.add_argument("--integrators", default="direct,path")
    parser.add_argument("--json", action="store_true", help="print the results as JSON lines")
    args = parser.parse_args(argv)

    if args.worker:
        args.resolution = args.resolution[0]
        args.threads = args.threads[0] if args.threads else None
        print(json.dumps(_worker(args)))
        return 0

    thread_counts = args.threads if args.threads else [None, 1]
    rows = []
    for res in args.resolution:
        for threads in thread_counts:
            r = measure_mitsuba(res, args.triangles, args.texture, args.repeats, args.warmup,
                                threads=threads, integrators=tuple(args.integrators.split(",")))
            if r is None:
                return 1
            rows.append(r)
            if args.json:
                print(json.dumps(r), flush=True)
    first = rows[0]
    print(f"Mitsuba {first['mitsuba']} / Dr.Jit {first['drjit']} ({first['variant']}), "
          f"{first['triangles']} triangles, {first['texture']}^2 texture, 1 spp, "
          f"median of {first['repeats']} after {first['warmup']} warmup; "
          f"step = render + L2 loss + backward + texture gradient evaluated")
    _print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
