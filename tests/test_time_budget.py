"""`drstudio optimize --max-seconds S` (issue 13): a time budget ends any run after the step that finishes past
it, as a normal end with its results (exit 0, metrics.json "time_budget", a recording that verifies); with
data-parallel ranks every rank ends after the same step; bad values exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.problem import Problem

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_ends_at_its_time_budget_with_its_results(tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "optimize", str(ROOT / "scenes" / "light.json"),
                           "--steps", "1000000", "--max-seconds", "4", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "time budget of 4 s reached" in proc.stderr and "Traceback" not in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["time_budget"] == {"max_seconds": 4.0, "ran_out": True}
    assert "interrupted" not in metrics and 0 < metrics["steps"] < 1000000
    assert time.monotonic() - t0 < 240  # not the million steps
    from drstudio.renderer.recording import load_recording, verify

    rec = load_recording(next(p.parent for p in out.rglob("meta.json")))
    report = verify(rec)
    assert report.ok, report.message()


def test_a_budget_that_is_not_reached_changes_nothing(tmp_path):
    from drstudio.app import cli

    out = tmp_path / "run"
    assert cli.main(["optimize", str(ROOT / "scenes" / "light.json"), "--steps", "3", "--max-seconds", "100000",
                     "--out", str(out), "--no-record"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["time_budget"]["ran_out"] is False


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e9", "soon"])
def test_bad_budgets_exit_2_and_write_nothing(tmp_path, value, capsys):
    from drstudio.app import cli

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        cli.main(["optimize", str(ROOT / "scenes" / "light.json"), "--max-seconds", value, "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--max-seconds" in err and "Traceback" not in err
    assert not out.exists()


def test_ranks_agree_on_the_step_the_budget_ends(tmp_path):
    """The time flag travels in the ranks' flat buffer: when only one rank's clock is past the deadline,
    both end after the same step (the emulated ranks share one clock, so rank 1's flag is forced)."""
    from drstudio.renderer.optim import distributed

    sys.path.insert(0, str(Path(__file__).parent))
    from test_distributed import tiny_scene

    p = Problem(load_scene(tiny_scene(tmp_path)), "cpu")
    p.set_shards(2)
    p.model.workers = 1
    p.step()
    assert not p.out_of_time
    packed = []
    real_pack = distributed.pack

    def pack(*args, **kwargs):  # rank 0 in time, rank 1 out of it
        flag = len(packed) % 2 == 1
        packed.append(flag)
        return real_pack(*args[:6], out_of_time=flag)

    distributed.pack = pack
    try:
        p.step()
    finally:
        distributed.pack = real_pack
    assert packed == [False, True] and p.out_of_time
