"""The viewer's optimizer in a child process (`drstudio view --engine process`, app.engine_process): the
child serves the viewer's engine on a private address, takes the typed commands, records the session and
stops when the parent closes its pipe; a bad scene ends it with the CLI's exit code. The window side is
the attach path (tests/test_viewer_attach.py drives it under Xvfb)."""

from __future__ import annotations

import time

import pytest
from drstudio.app.engine_process import EngineProcess, EngineProcessError
from drstudio.renderer.optim.remote import RemoteEngine
from drstudio.renderer.recording import load_recording
from test_viewer import write_scene


def wait_for(predicate, what: str, timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_engine_process_serves_commands_and_records(tmp_path):
    scene = write_scene(tmp_path)
    child = EngineProcess(str(scene), "cpu", tmp_path / "recordings").start()
    try:
        assert child.address[0] == "127.0.0.1" and child.token
        remote = RemoteEngine(child.address, child.token)
        assert remote.description["scene"] == str(scene)
        assert remote.snapshot().state in ("idle", "paused")  # as the in-process viewer: waits for Start
        remote.send("start")
        wait_for(lambda: remote.snapshot().step >= 3, "three steps")
        remote.send("pause")
        wait_for(lambda: remote.snapshot().state == "paused", "the pause")
        remote.close()
    finally:
        code = child.close()
    assert code == 0
    rec = load_recording(tmp_path / "recordings")
    assert rec.closed and len(rec.steps) >= 3, rec.summary()
    assert [c["kind"] for c in rec.commands if c["kind"] in ("start", "pause")] == ["start", "pause"]


def test_engine_process_refuses_a_bad_scene(tmp_path, capfd):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "meshes": 3}')
    with pytest.raises(EngineProcessError, match="exit code 2"):
        EngineProcess(str(bad), "cpu").start()
    err = capfd.readouterr().err
    assert "bad.json" in err and "Traceback" not in err
