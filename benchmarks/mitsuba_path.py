"""drstudio's path tracer against Mitsuba 3's `path` integrator on the same Cornell box, at equal spp.

Both render `benchmarks.cornell.cornell_box()` (Lambert walls and blocks, a one-sided area light, an
open front, no environment) with a box pixel filter, `spp` independent samples per pixel, the same
depth (drstudio max_depth = d scattering events is Mitsuba max_depth = d + 1) and Russian roulette from
the same depth. Printed per spp: the mean absolute difference (MAD) between the two images, and the
noise level, the MAD between two drstudio images with different seeds and between two Mitsuba images
with different seeds. Two unbiased renderers of one scene differ by about the noise level; a
systematic difference shows as a MAD above it and as a ratio of the image means away from 1 (also
printed for the pixels that do not see the light, whose partial coverage dominates the image mean's noise).
Times are wall-clock seconds of one render after a warm-up render (drstudio: `--threads` CPU threads,
default 1; Mitsuba: Dr.Jit's default thread count).

Setup: `pip install mitsuba` and (Debian 12) `apt-get install libllvm19`; DRJIT_LIBLLVM_PATH is set from
`benchmarks.mitsuba_baseline.find_libllvm()` when unset. Mitsuba variant `llvm_ad_rgb`.

    python -m benchmarks.mitsuba_path --size 64 --spp 16 64 256
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.cornell import cornell_box


def render_drstudio(cb: dict, spp: int, seed: int, max_depth: int, rr_depth: int,
                    threads: int = 1) -> tuple[np.ndarray, float]:
    import drstudio.renderer  # noqa: F401  (Warp settings)
    import warp as wp
    from drstudio.renderer.stages import pathtrace as pt

    sc = pt.path_scene_from_numpy(cb["vertices"], cb["faces"], cb["materials"], face_material=cb["face_material"])
    intr = wp.array(cb["intrinsics"], dtype=float)
    pose = wp.array(cb["pose"], dtype=float)
    kw = dict(spp=spp, seed=seed, max_depth=max_depth, rr_depth=rr_depth, threads=threads)
    pt.render_path(sc, intr, pose, cb["width"], cb["height"], **dict(kw, spp=1))  # compile outside the timing
    t = time.perf_counter()
    img = pt.render_path(sc, intr, pose, cb["width"], cb["height"], **kw)
    wp.synchronize_device()
    return img.numpy().reshape(cb["height"], cb["width"], 3), time.perf_counter() - t


def _write_obj(path: str, verts: np.ndarray, faces: np.ndarray) -> None:
    used = np.unique(faces)
    remap = np.full(len(verts), -1)
    remap[used] = np.arange(len(used))
    with open(path, "w") as f:
        for v in verts[used]:
            f.write(f"v {v[0]:.7g} {v[1]:.7g} {v[2]:.7g}\n")
        for t in remap[faces] + 1:
            f.write(f"f {t[0]} {t[1]} {t[2]}\n")


def mitsuba_scene(cb: dict, spp: int, seed: int, max_depth: int, rr_depth: int, tmp: str):
    import mitsuba as mi

    fov = float(np.degrees(2 * np.arctan(0.5 * cb["height"] / cb["intrinsics"][1])))
    eye = cb["pose"][:3].astype(float)
    scene = {
        "type": "scene",
        # Mitsuba counts the camera vertex: its max_depth d + 1 is our d scattering events
        "integrator": {"type": "path", "max_depth": max_depth + 1, "rr_depth": rr_depth + 1},
        "sensor": {
            "type": "perspective", "fov": fov, "fov_axis": "y",
            "to_world": mi.ScalarTransform4f().look_at(origin=eye.tolist(), target=(eye - [0, 0, 1]).tolist(),
                                                       up=[0, 1, 0]),
            "sampler": {"type": "independent", "sample_count": spp, "seed": seed},
            "film": {"type": "hdrfilm", "width": cb["width"], "height": cb["height"], "rfilter": {"type": "box"},
                     "pixel_format": "rgb"},
        },
    }
    for m, mat in enumerate(cb["materials"]):
        path = os.path.join(tmp, f"mat{m}.obj")
        _write_obj(path, cb["vertices"], cb["faces"][cb["face_material"] == m])
        shape = {"type": "obj", "filename": path, "face_normals": True,
                 "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": list(mat["albedo"])}}}
        if np.any(np.asarray(mat.get("emission", (0, 0, 0))) > 0):
            shape["emitter"] = {"type": "area", "radiance": {"type": "rgb", "value": list(mat["emission"])}}
        scene[f"shape{m}"] = shape
    return mi.load_dict(scene)


def render_mitsuba(cb: dict, spp: int, seed: int, max_depth: int, rr_depth: int) -> tuple[np.ndarray, float]:
    if not os.environ.get("DRJIT_LIBLLVM_PATH"):
        from benchmarks.mitsuba_baseline import find_libllvm

        lib = find_libllvm()
        if lib:
            os.environ["DRJIT_LIBLLVM_PATH"] = lib
    import drjit as dr
    import mitsuba as mi

    mi.set_variant("llvm_ad_rgb")
    with tempfile.TemporaryDirectory() as tmp:
        scene = mitsuba_scene(cb, spp, seed, max_depth, rr_depth, tmp)
        mi.render(scene, spp=1, seed=seed + 1000)  # JIT-compile outside the timing
        t = time.perf_counter()
        img = mi.render(scene, spp=spp, seed=seed)
        dr.eval(img)
        out = np.array(img, dtype=np.float32)[..., :3]
        return out, time.perf_counter() - t


def compare(size: int, spps, max_depth: int, rr_depth: int, threads: int = 1) -> list[dict]:
    cb = cornell_box(width=size, height=size)
    rows = []
    for spp in spps:
        a, ta = render_drstudio(cb, spp, 1, max_depth, rr_depth, threads)
        a2, _ = render_drstudio(cb, spp, 2, max_depth, rr_depth, threads)
        b, tb = render_mitsuba(cb, spp, 1, max_depth, rr_depth)
        b2, _ = render_mitsuba(cb, spp, 2, max_depth, rr_depth)
        # pixels that see the light (radiance 17, 12, 4) dominate the image mean with the noise of their
        # coverage; the ratio off them measures the light transport
        off = (a.max(-1) < 2) & (b.max(-1) < 2)
        rows.append(dict(spp=spp, mad=float(np.abs(a - b).mean()), noise_dr=float(np.abs(a - a2).mean()),
                         noise_mi=float(np.abs(b - b2).mean()), mean_ratio=(a.mean((0, 1)) / b.mean((0, 1))).tolist(),
                         mean_ratio_off_light=(a[off].mean(0) / b[off].mean(0)).tolist(),
                         time_dr=ta, time_mi=tb, mean=float(b.mean())))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--spp", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--max-depth", type=int, default=8, help="scattering events (drstudio convention)")
    ap.add_argument("--rr-depth", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for drstudio (bands of rows)")
    args = ap.parse_args(argv)
    rows = compare(args.size, args.spp, args.max_depth, args.rr_depth, args.threads)
    print(f"Cornell box {args.size}x{args.size}, max_depth {args.max_depth} (Mitsuba {args.max_depth + 1}), "
          f"rr_depth {args.rr_depth}, drstudio threads {args.threads}; image mean {rows[0]['mean']:.4f}")
    print("| spp | MAD dr vs mi | noise dr vs dr | noise mi vs mi | mean dr / mi (r, g, b) | same, off the light "
          "| dr s | mi s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = ", ".join(f"{x:.4f}" for x in r["mean_ratio"])
        ratio_off = ", ".join(f"{x:.4f}" for x in r["mean_ratio_off_light"])
        print(f"| {r['spp']} | {r['mad']:.4f} | {r['noise_dr']:.4f} | {r['noise_mi']:.4f} | {ratio} | {ratio_off} | "
              f"{r['time_dr']:.2f} | {r['time_mi']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
