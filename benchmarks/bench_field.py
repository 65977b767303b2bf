"""Radiance-field training on the CPU: held-out PSNR against training time, and rays/s (docs/volume.md, "Training").

    .venv/bin/python benchmarks/bench_field.py scenes/nerf_grid.json --seconds 300

Trains the scene's field through `Problem.step()` (no engine, no recorder) until the wall-clock budget of
training steps is spent (evaluations are not counted), printing at 15, 30, 60, 90, 120, 180, 240, 300 s the
mean PSNR over the held-out views, in linear RGB (the repo's `losses.psnr`, metrics.json `psnr_test_db`) and
on sRGB-encoded images (NeRF papers' convention, `psnr_test_srgb_db`). Then, on the trained field: rays/s of
a 4096-ray batch from the training views, forward and forward+backward, with and without the occupancy grid
(median of 7 after a warm-up).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import warp as wp

import renderer  # noqa: F401  (quiet Warp)
from renderer.conventions import linear_to_srgb
from renderer.loading import load_scene
from renderer.optim import losses
from renderer.optim.problem import Problem
from renderer.volume import render as volume_render

MARKS = (15, 30, 60, 90, 120, 180, 240, 300, 450, 600)


def test_psnr(problem) -> tuple[float, float]:
    ft, lin, srgb = problem.field_training, [], []
    for t in problem.test_targets:
        img, ref = np.clip(ft.render(t.camera).numpy(), 0, 1), np.clip(problem.target_numpy(t.camera), 0, 1)
        lin.append(10 * np.log10(1 / np.mean((img - ref) ** 2)))
        srgb.append(10 * np.log10(1 / np.mean((linear_to_srgb(img) - linear_to_srgb(ref)) ** 2)))
    return float(np.mean(lin)), float(np.mean(srgb))


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", nargs="?", default="scenes/nerf_grid.json")
    parser.add_argument("--seconds", type=float, default=300.0, help="budget of training time")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    problem = Problem(load_scene(args.scene), args.device)
    if problem.field_training is None or not problem.test_targets:
        raise SystemExit(f"{args.scene}: expected a scene with a field and held-out views")
    problem.step()
    problem.step()
    problem.reset()  # kernels compiled and loaded
    ft = problem.field_training
    print(f"{args.scene}: {len(problem.targets)} training views, {len(problem.test_targets)} held out; "
          f"{ft.rays_per_batch} rays per step", flush=True)
    elapsed, k = 0.0, 0
    while problem.step_index < problem.steps and elapsed < args.seconds:
        t = time.perf_counter()
        result = problem.step()
        elapsed += time.perf_counter() - t
        if k < len(MARKS) and elapsed >= MARKS[k]:
            k += 1
            lin, srgb = test_psnr(problem)
            state = next(iter(ft.states.values()))
            occ = state.occupancy.occupied_fraction() if state.occupancy is not None else 1.0
            print(f"{elapsed:6.1f} s  step {problem.step_index:5d} ({elapsed / problem.step_index * 1e3:.0f} ms/step)  "
                  f"loss {result.loss:.5f}  held-out PSNR {lin:.2f} dB linear, {srgb:.2f} dB sRGB  "
                  f"lattice {state.grid.resolution[0]}  occupied cells {occ:.3f}", flush=True)
    lin, srgb = test_psnr(problem)
    print(f"end: {elapsed:.1f} s, {problem.step_index} steps, held-out PSNR {lin:.2f} dB linear, {srgb:.2f} dB sRGB")
    state = next(iter(ft.states.values()))
    for label, occ in (("plain", None), ("occupancy", state.occupancy)):
        if label == "occupancy" and occ is None:
            continue
        for backward in (False, True):
            rate, spr = rays_per_second(problem, occ, backward)
            print(f"rays/s {label:9s} {'fwd+bwd' if backward else 'fwd':7s}: {rate / 1e3:.0f}k "
                  f"({4096 / rate * 1e3:.0f} ms per 4096 rays, {spr:.1f} samples per ray)", flush=True)


if __name__ == "__main__":
    main()
