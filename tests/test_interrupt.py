"""Results survive (issue 14): a headless run stopped by Ctrl-C (SIGINT) or SIGTERM ends after its
current step, writes its results so far (metrics.json says "interrupted") and exits 130; its recording
loads and verifies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_keeps_its_results(tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "drstudio.app.cli", "optimize", str(ROOT / "scenes" / "light.json"),
                             "--steps", "100000", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        log = out / "recording"
        # wait until the run is stepping (its recording holds steps), then stop it
        while time.monotonic() < deadline:
            logs = list(log.glob("*/events.jsonl")) + list(log.glob("events.jsonl"))
            if logs and logs[0].stat().st_size > 2000:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err and str(out) in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True and 0 < metrics["steps"] < 100000
    params = np.load(out / "params.npz")
    assert "lights.key.position" in params.files
    from drstudio.renderer.recording import load_recording, verify

    rec = load_recording(next(p.parent for p in out.rglob("meta.json")))
    report = verify(rec)
    assert report.ok, report.message()
