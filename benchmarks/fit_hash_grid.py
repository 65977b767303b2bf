"""Demo (not a test): fit a `HashGridField` to the training views of a shipped field scene and print the held-out
PSNR against training time, to compare with the scene's own field (`benchmarks/bench_field.py`).

    .venv/bin/python benchmarks/fit_hash_grid.py scenes/nerf_grid.json --seconds 180
    .venv/bin/python benchmarks/bench_field.py scenes/nerf_grid.json --seconds 180      # the voxel grid

The scene's `Problem` builds the targets (training views, held-out views, the `RayBank` of every training ray)
exactly as for its own field; nothing of the optimizer is used. The loop is self-contained: each step draws
`--rays` random training rays, renders them through the hash field (`hash_field.render_rays`: jittered strata
in the field's box, occupancy-grid skipping, Warp compositing), takes the mean squared error against the
target colors and makes a torch Adam step (Instant-NGP's betas 0.9 / 0.99, eps 1e-15, lr `--lr`; the MLPs get
weight decay 1e-6). The occupancy grid (the scene's resolution, threshold 0.01) is refreshed from the field's
density every `--occupancy-every` steps from step 16 on, outside the timed steps' gradient.

Held-out PSNR (linear RGB, every pixel, midpoint samples, the occupancy grid) is measured at 15, 30, 60, 90, 120,
180, 240, 300 s of training time; evaluations are not counted in the time.
"""

from __future__ import annotations

import argparse
import time

import drstudio.renderer  # noqa: F401  (quiet Warp)
import numpy as np
import torch
import warp as wp
from drstudio.renderer.conventions import linear_to_srgb
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.stages.camera import generate_rays
from drstudio.renderer.volume import OccupancyGrid
from drstudio.renderer.volume.hash_field import HashGridField, psnr, render_rays

MARKS = (15, 30, 60, 90, 120, 180, 240, 300, 450, 600)


def held_out_psnr(problem, field, occupancy, n_samples, background, chunk=8192) -> tuple[float, float]:
    """Mean over the held-out views of each view's PSNR (linear, sRGB)."""
    ds, lin, srgb = problem.ds, [], []
    with torch.no_grad():
        for t in problem.test_targets:
            cam = problem.scene.cameras[t.camera]
            o, d = generate_rays(ds.arrays[f"cameras.{t.camera}.intrinsics"], ds.arrays[f"cameras.{t.camera}.pose"],
                                 cam.width, cam.height)
            parts = []
            for a in range(0, o.shape[0], chunk):
                b = min(a + chunk, o.shape[0])
                rgb, _, _ = render_rays(field, o[a:b], d[a:b], n_samples, background, jitter=False,
                                        occupancy=occupancy)
                parts.append(rgb.numpy())
            img = np.clip(np.concatenate(parts), 0, 1)
            ref = np.clip(t.image.numpy(), 0, 1)
            lin.append(psnr(img, ref))
            srgb.append(psnr(linear_to_srgb(img), linear_to_srgb(ref)))
    return float(np.mean(lin)), float(np.mean(srgb))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene", nargs="?", default="scenes/nerf_grid.json")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--rays", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=None, help="strata per ray (default: the scene field's)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--levels", type=int, default=12)
    ap.add_argument("--log2-table", type=int, default=16)
    ap.add_argument("--finest", type=int, default=256)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--occupancy-every", type=int, default=16)
    ap.add_argument("--density-bias", type=float, default=0.0, help="initial density exp(bias) per unit length")
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(args.seed)
    problem = Problem(load_scene(args.scene), "cpu")
    ft = problem.field_training
    if ft is None or not problem.test_targets:
        raise SystemExit(f"{args.scene}: expected a scene with a field and held-out views")
    spec = next(iter(ft.states.values())).field
    aabb = [float(v) for v in np.asarray(spec.aabb).reshape(-1)]
    n_samples = args.samples or int(spec.samples_per_ray)
    field = HashGridField(aabb, n_levels=args.levels, log2_table_size=args.log2_table, n_features=2,
                          base_resolution=16, finest_resolution=args.finest, width=args.width, geo_features=15,
                          color_layers=2, sh_degree=2 if spec.sh_degree > 0 else 0, seed=args.seed,
                          density_bias=args.density_bias)
    mlp = [p for n, p in field.named_parameters() if n != "table"]
    opt = torch.optim.Adam([{"params": [field.table], "weight_decay": 0.0},
                            {"params": mlp, "weight_decay": 1e-6}], lr=args.lr, betas=(0.9, 0.99), eps=1e-15)
    occ_res = spec.occupancy.resolution if spec.occupancy is not None else 64
    occupancy = OccupancyGrid(occ_res, aabb)
    background = wp.to_torch(problem.ds.background_color).clone()
    bank, rng = ft.bank, np.random.default_rng(args.seed)
    e = field.encoding
    print(f"{args.scene}: {len(problem.targets)} training views, {len(problem.test_targets)} held out, "
          f"{len(bank)} training rays; hash grid levels {e.resolutions}, table {e.table_shape} "
          f"({e.nbytes / 2**20:.1f} MiB), MLP weights {field.n_weights()['mlp']}; {args.rays} rays x {n_samples} "
          f"strata per step, torch threads {torch.get_num_threads()}", flush=True)
    elapsed, step, k = 0.0, 0, 0
    while elapsed < args.seconds:
        t = time.perf_counter()
        if step >= 16 and step % args.occupancy_every == 0:
            occupancy.update(field.density_fn(), step=step)
        o, d, target = bank.gather(rng.integers(0, len(bank), size=args.rays))
        rgb, _, _ = render_rays(field, o, d, n_samples, background, seed=step, occupancy=occupancy)
        loss = ((rgb - wp.to_torch(target)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        elapsed += time.perf_counter() - t
        if step <= 3 or step % 50 == 0:
            print(f"  step {step:5d}  {elapsed:6.1f} s  loss {loss.item():.5f}  "
                  f"occupied {occupancy.occupied_fraction():.3f}", flush=True)
        if k < len(MARKS) and elapsed >= MARKS[k]:
            k += 1
            lin, srgb = held_out_psnr(problem, field, occupancy, n_samples, background)
            print(f"{elapsed:6.1f} s  step {step:5d} ({elapsed / step * 1e3:.0f} ms/step)  loss {loss.item():.5f}  "
                  f"held-out PSNR {lin:.2f} dB linear, {srgb:.2f} dB sRGB  occupied cells "
                  f"{occupancy.occupied_fraction():.3f}", flush=True)
    lin, srgb = held_out_psnr(problem, field, occupancy, n_samples, background)
    print(f"end: {elapsed:.1f} s, {step} steps, held-out PSNR {lin:.2f} dB linear, {srgb:.2f} dB sRGB")


if __name__ == "__main__":
    main()
