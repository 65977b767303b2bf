"""Smoke test of the renderer benchmark (benchmarks/bench_render.py): every part of the entry point
runs at a tiny size for one repeat, and the two-thread split it times renders the same image and
texture gradient as the single-thread renderer (so its column measures the same work)."""

import numpy as np
import warp as wp

from benchmarks import bench_render

TINY = dict(resolutions=(32,), triangles=(200,), modes=("hard", "antialias"), repeats=1, warmup=0)


def test_run_returns_one_row_per_case():
    rows = bench_render.run(**TINY, threads=2)
    assert [(r["resolution"], r["mode"]) for r in rows] == [(32, "hard"), (32, "antialias")]
    for r in rows:
        assert abs(r["triangles"] - 200) < 60
        for key in ("forward_ms", "step_ms", "forward_mt_ms", "step_mt_ms", "peak_rss_mb", "warp_peak_mb"):
            assert r[key] > 0, key
    table = bench_render.format_table(rows)
    assert "step 2t" in table and len(table.splitlines()) == 2 + len(rows)


def test_main_prints_every_section(capsys):
    argv = ["--resolutions", "32", "--triangles", "200", "--modes", "antialias", "--repeats", "1",
            "--warmup", "0", "--no-mitsuba", "--wait-idle", "0", "--markdown"]
    assert bench_render.main(argv) == 0
    out = capsys.readouterr().out
    for section in ("step 2t", "cached 2t", "| res |", "Profile, 1 thread", "raster_kernel", "cached step:",
                    "Visibility at fixed", "total benchmark time"):
        assert section in out, section


def test_sphere_segments_hit_the_triangle_counts():
    for target in (1_000, 10_000, 100_000):
        s = bench_render.sphere_segments(target)
        faces = 2 * s * (s // 2) - 2 * s
        assert abs(faces - target) / target < 0.02


def test_split_step_matches_single_thread():
    case = bench_render.Case.build(300, 48, "antialias", "cpu")
    image1, image2 = case.forward(1).numpy(), case.forward(2).numpy()
    np.testing.assert_allclose(image2, image1, atol=2e-6)  # only cy - y0 rounds differently
    grad1 = case.step(1).numpy().copy()
    grad2 = case.step(2).numpy().copy()
    scale = np.abs(grad1).max()
    assert scale > 0
    # float32 sums in another order: relative to the largest entry, 1e-5 is ~100 ulps of slack
    np.testing.assert_allclose(grad2, grad1, rtol=0, atol=1e-5 * scale)
    # the cached step (the G-buffer reused): the same gradient, on one and two threads, first and later calls
    for threads in (1, 2):
        cache = case.texture_cache()
        for _ in range(2):
            np.testing.assert_allclose(case.step(threads, cache).numpy(), grad1, rtol=0, atol=1e-5 * scale)
        assert cache.hits > 0
    wp.synchronize()


def test_field_benchmark_runs_briefly_and_writes_its_curve(tmp_path, capsys):
    """benchmarks/bench_field.py on the shipped voxel-grid scene at 16 x 16 for a 2 s budget: the PSNR curve
    (finite, rising from the start) is printed and written, and the rays/s table follows."""
    import json

    from benchmarks import bench_field

    out = tmp_path / "curve.json"
    bench_field.main(["scenes/nerf_grid.json", "--size", "16", "--seconds", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert "held-out PSNR" in text and "rays/s occupancy fwd+bwd" in text
    doc = json.loads(out.read_text())
    assert doc["size"] == 16 and doc["train_views"] == 56 and doc["test_views"] == 8
    curve = doc["curve"]
    assert curve[-1]["step"] > 0 and all(np.isfinite(c["psnr_linear_db"]) for c in curve)
    assert curve[-1]["psnr_linear_db"] > 12.0  # well above an untrained field's


def test_field_benchmark_runs_the_hash_grid_scene(tmp_path, capsys):
    """benchmarks/bench_field.py on the shipped hash-grid scene (16 x 16, 2 s): its curve is written (no rays/s
    table: that is measured for voxel grids)."""
    import json

    from benchmarks import bench_field

    out = tmp_path / "curve.json"
    bench_field.main(["scenes/nerf_hash.json", "--size", "16", "--seconds", "2", "--json", str(out)])
    assert "held-out PSNR" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["train_views"] == 56 and doc["curve"][-1]["step"] > 0
    assert all(np.isfinite(c["psnr_linear_db"]) for c in doc["curve"])


def test_path_benchmark_runs_without_mitsuba(capsys):
    """benchmarks/bench_path.py at 8x8 (drstudio only: Mitsuba is not in the locked environment): one row per
    thread count, wall and CPU times."""
    from benchmarks import bench_path

    argv = ["--size", "8", "--spp", "1", "--repeats", "1", "--warmup", "0", "--threads", "1", "2", "--no-mitsuba"]
    assert bench_path.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all("n/a" in r for r in rows), out
