"""Radiance-field training on the CPU: held-out PSNR against training time, and rays/s (docs/volume.md, "Training").

    .venv/bin/python benchmarks/bench_field.py scenes/nerf_grid.json --seconds 300
    .venv/bin/python benchmarks/bench_field.py scenes/nerf_hash.json --seconds 300
    .venv/bin/python benchmarks/bench_field.py scenes/nerf_w.json --size 200 --views 64 --json w200.json

Trains the scene's field (any representation: voxel_grid, neural, nerf_w, hash_grid, dynamic) through `Problem.step()`
(no engine, no recorder) until the wall-clock budget of training steps or the scene's step budget is spent
(`--clock cpu`: the budget and the marks count the steps' process CPU time instead, which a machine shared with
other jobs inflates much less than the wall clock).
Evaluations are taken out of the timed steps: at 15, 30, 60, 90, 120, 180, 240, 300 s it prints the mean PSNR
over the held-out views with the scene's protocol (NeRF-W: each view's appearance embedding fitted on its left
half, PSNR on its right half), in linear RGB (the repo's `losses.psnr`, metrics.json `psnr_test_db`) and on
sRGB-encoded images (NeRF papers' convention). `--size S` renders every view at S x S; a scene trained on a
generated dataset (`optimize.targets.dataset`) regenerates it with `--views` views (1/8 held out) at that size
into scenes/datasets/bench-*. Then, for voxel grids, on the trained field: rays/s of a 4096-ray batch from the
training views, forward and forward+backward, with and without the occupancy grid (median of 7 after a warm-up).
On a loaded machine compare variants at equal steps: `--at-steps 100,200,300 --max-steps 300 --marks ""` measures
at those steps only, and `--renders DIR` writes every held-out view (render | target) and prints its PSNR.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import drstudio.renderer  # noqa: F401  (quiet Warp)
import numpy as np
import warp as wp
from drstudio.renderer.conventions import linear_to_srgb
from drstudio.renderer.images import atomic_write
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim import losses
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.volume import render as volume_render

MARKS = (15, 30, 60, 90, 120, 180, 240, 300, 450, 600)


def test_psnr(problem) -> tuple[float, float]:
    """Mean held-out PSNR (linear, sRGB) with the scene's own protocol (`FieldTraining.eval_mask`): every pixel
    its frame's mask uses (all without one), and for NeRF-W of those the right half of each view after fitting its
    appearance embedding on the left half."""
    ft, lin, srgb = problem.field_training, [], []
    ft.fit_test_appearance([t for t in problem.test_targets if t.camera not in ft.train_cameras])
    for t in problem.test_targets:
        img, ref = np.clip(ft.render(t.camera).numpy(), 0, 1), np.clip(problem.target_numpy(t.camera), 0, 1)
        mask = ft.eval_mask(t.camera)
        keep = np.ones(img.shape[:2], bool) if mask is None else mask.numpy().reshape(img.shape[:2]) > 0
        lin.append(10 * np.log10(1 / np.mean((img[keep] - ref[keep]) ** 2)))
        srgb.append(10 * np.log10(1 / np.mean((linear_to_srgb(img[keep]) - linear_to_srgb(ref[keep])) ** 2)))
    return float(np.mean(lin)), float(np.mean(srgb))


def write_renders(problem, folder: Path) -> None:
    """Each held-out view as one sRGB PNG, render | target side by side, into `folder`; prints each view's PSNR on the
    pixels its mask uses (as `test_psnr`) and, when it has a mask, over every pixel too."""
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    ft, line = problem.field_training, []
    for t in problem.test_targets:
        img, ref = np.clip(ft.render(t.camera).numpy(), 0, 1), np.clip(problem.target_numpy(t.camera), 0, 1)
        both = np.concatenate([img, ref], axis=1)
        iio.imwrite(folder / f"{t.camera}.png", (linear_to_srgb(both) * 255 + 0.5).astype(np.uint8))
        mask = ft.eval_mask(t.camera)
        keep = np.ones(img.shape[:2], bool) if mask is None else mask.numpy().reshape(img.shape[:2]) > 0
        text = f"{t.camera} {10 * np.log10(1 / np.mean((img[keep] - ref[keep]) ** 2)):.2f}"
        if mask is not None:
            text += f" (every pixel {10 * np.log10(1 / np.mean((img - ref) ** 2)):.2f})"
        line.append(text)
    print("held-out PSNR per view (linear dB): " + ", ".join(line), flush=True)


def rays_per_second(problem, occupancy, backward: bool, n_rays: int = 4096, repeat: int = 7) -> tuple[float, float]:
    ft = problem.field_training
    state = next(iter(ft.states.values()))
    rng = np.random.default_rng(0)

    def iteration(seed: int) -> int:
        o, d, target = ft.bank.gather(rng.integers(0, len(ft.bank), size=n_rays))
        loss = wp.zeros(1, dtype=float, requires_grad=True)
        tape = wp.Tape()
        with tape:
            rgb, _, _, samples = volume_render(state.grid, o, d, state.n_samples, problem.ds.background_color,
                                               seed=seed, occupancy=occupancy)
            losses.l2(rgb, target, loss)
        if backward:
            tape.backward(loss)
            tape.zero()
        wp.synchronize()
        return samples.n_samples

    iteration(0)
    times, counts = [], []
    for i in range(repeat):
        t = time.perf_counter()
        counts.append(iteration(i + 1))
        times.append(time.perf_counter() - t)
    return n_rays / float(np.median(times)), float(np.mean(counts)) / n_rays


def load_dataset_variant(path: str, size: int, views: int):
    """A scene trained on a generated dataset (`optimize.targets.dataset`, e.g. nerf_w.json, nerf_dynamic.json)
    loaded with its recipe at `views` views (1/8 held out) of `size` x `size` pixels, generated into
    `datasets/bench-<scene>-<size>-<views>/` next to the scene; None for other scenes. The variant scene file is
    written next to the original (its relative paths must resolve) and removed after loading."""
    doc = json.loads(Path(path).read_text())
    targets = doc.get("optimize", {}).get("targets", {})
    if "dataset" not in targets:
        return None
    targets["dataset"].update(views=views, test_views=max(1, views // 8), width=size, height=size)
    targets["transforms"] = f"datasets/bench-{Path(path).stem}-{size}-{views}/transforms.json"
    variant = Path(path).with_name(f".bench-{Path(path).stem}-{size}-{views}.json")
    variant.write_text(json.dumps(doc))
    try:
        return load_scene(variant)
    finally:
        variant.unlink()


def resize_cameras(scene, size: int) -> None:
    """Every camera of `scene` at `size` x `size` pixels, same field of view (intrinsics scaled)."""
    if size < 8:
        raise SystemExit(f"--size: expected at least 8 pixels, got {size}")
    for c in scene.cameras.values():
        sx, sy = size / c.width, size / c.height
        c.intrinsics = np.asarray(c.intrinsics, np.float32) * np.array([sx, sy, sx, sy], np.float32)
        c.width = c.height = int(size)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", nargs="?", default="scenes/nerf_grid.json")
    parser.add_argument("--seconds", type=float, default=300.0, help="budget of training time")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what --seconds and --marks count: wall-clock time of the training steps, or their "
                        "process CPU time (what an idle machine's clock would read; for a machine shared with other "
                        "jobs, when the training runs on one thread)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=None,
                        help="render every camera (targets and held-out views) at SIZE x SIZE pixels instead")
    parser.add_argument("--json", default=None, help="also write the PSNR-vs-time curve to this JSON file")
    parser.add_argument("--at-steps", default="",
                        help="also measure the held-out PSNR after these steps (comma-separated), for equal-step "
                        "comparisons of variants on a loaded machine")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--marks", default=",".join(str(m) for m in MARKS),
                        help="training times (s) at which to measure the held-out PSNR (comma-separated; empty: none)")
    parser.add_argument("--renders", default=None,
                        help="at the end, write each held-out view as render | target PNG into this folder")
    parser.add_argument("--views", type=int, default=64,
                        help="with --size, for scenes trained on a generated dataset (targets.dataset): views of the "
                        "regenerated dataset, 1/8 of them held out (default 64)")
    args = parser.parse_args(argv)
    scene = load_dataset_variant(args.scene, args.size, args.views) if args.size is not None else None
    if scene is None:
        scene = load_scene(args.scene)
        if args.size is not None:
            resize_cameras(scene, args.size)
    problem = Problem(scene, args.device)
    if problem.field_training is None or not problem.test_targets:
        raise SystemExit(f"{args.scene}: expected a scene with a field and held-out views")
    problem.step()
    problem.step()
    problem.reset()  # kernels compiled and loaded
    ft = problem.field_training
    ft.eval_every = 0  # the held-out PSNR is measured at the marks below, outside the timed steps
    print(f"{args.scene}: {len(problem.targets)} training views, {len(problem.test_targets)} held out; "
          f"{ft.rays_per_batch} rays per step", flush=True)
    elapsed, cpu, k = 0.0, 0.0, 0  # wall and process CPU time of the training steps
    curve = []
    at_steps = {int(s) for s in args.at_steps.split(",") if s.strip()}
    marks = [float(s) for s in args.marks.split(",") if s.strip()]
    max_steps = problem.steps if args.max_steps is None else min(problem.steps, args.max_steps)
    clock = (lambda: cpu) if args.clock == "cpu" else (lambda: elapsed)  # noqa: E731
    while problem.step_index < max_steps and clock() < args.seconds:
        t, c = time.perf_counter(), time.process_time()
        result = problem.step()
        elapsed += time.perf_counter() - t
        cpu += time.process_time() - c
        at_mark = k < len(marks) and clock() >= marks[k]
        if at_mark or problem.step_index in at_steps:
            k += int(at_mark)
            lin, srgb = test_psnr(problem)
            curve.append({"seconds": round(elapsed, 2), "cpu_seconds": round(cpu, 2), "step": problem.step_index,
                          "psnr_linear_db": lin, "psnr_srgb_db": srgb, "loss": result.loss})
            state = next(iter(ft.states.values()))
            occ = state.occupancy.occupied_fraction() if state.occupancy is not None else 1.0
            resolution = getattr(getattr(state, "grid", None), "resolution", None)
            lattice = f"  lattice {resolution[0]}" if resolution is not None else ""
            print(f"{elapsed:6.1f} s  step {problem.step_index:5d} ({elapsed / problem.step_index * 1e3:.0f} ms/step, "
                  f"CPU {cpu / problem.step_index * 1e3:.0f} ms/step)  "
                  f"loss {result.loss:.5f}  held-out PSNR {lin:.2f} dB linear, {srgb:.2f} dB sRGB{lattice}  "
                  f"occupied cells {occ:.3f}", flush=True)
    lin, srgb = test_psnr(problem)
    print(f"end: {elapsed:.1f} s (CPU {cpu:.1f} s), {problem.step_index} steps, held-out PSNR"
          f" {lin:.2f} dB linear, {srgb:.2f} dB sRGB")
    curve.append({"seconds": round(elapsed, 2), "cpu_seconds": round(cpu, 2), "step": problem.step_index,
                  "psnr_linear_db": lin, "psnr_srgb_db": srgb, "loss": float("nan")})
    if args.renders:
        write_renders(problem, Path(args.renders))
    if args.json:
        out = {"scene": args.scene, "size": args.size, "train_views": len(problem.targets),
               "test_views": len(problem.test_targets), "clock": args.clock, "curve": curve}
        text = json.dumps(out, indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    state = next(iter(ft.states.values()))
    if state.field.type != "voxel_grid":
        return  # rays/s below is measured for voxel grids (their query is the whole step)
    for label, occ in (("plain", None), ("occupancy", state.occupancy)):
        if label == "occupancy" and occ is None:
            continue
        for backward in (False, True):
            rate, spr = rays_per_second(problem, occ, backward)
            print(f"rays/s {label:9s} {'fwd+bwd' if backward else 'fwd':7s}: {rate / 1e3:.0f}k "
                  f"({4096 / rate * 1e3:.0f} ms per 4096 rays, {spr:.1f} samples per ray)", flush=True)


if __name__ == "__main__":
    main()
