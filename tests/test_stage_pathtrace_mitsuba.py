"""benchmarks/mitsuba_path.py at a tiny size: drstudio's path tracer and Mitsuba 3's `path` integrator
render the Cornell box alike (their difference is at the noise level of each). Skipped without Mitsuba
(the `bench` extra, not in the locked test environment)."""

import pytest

pytest.importorskip("mitsuba")

from benchmarks import mitsuba_path  # noqa: E402


def test_drstudio_matches_mitsuba_on_the_cornell_box():
    (row,) = mitsuba_path.compare(24, [32], max_depth=4, rr_depth=3)
    noise = max(row["noise_dr"], row["noise_mi"])
    # independent unbiased estimates: |a - b| averages ~ the noise of either; a systematic error shows above it
    assert row["mad"] < 1.3 * noise
    # off the light, the image mean at 32 spp has ~1% noise (measured 0.07% apart at 4096 spp)
    assert all(abs(r - 1) < 0.03 for r in row["mean_ratio_off_light"])


def test_main_prints_the_table(capsys):
    assert mitsuba_path.main(["--size", "8", "--spp", "4", "--max-depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "| spp | MAD dr vs mi |" in out and out.count("\n") == 4
