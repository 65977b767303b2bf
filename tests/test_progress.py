"""renderer.progress: the phases a user waits through (issue 17 item 9), reported alike to the CLI and the
viewer: nesting and `current()`, the ETA, the terminal's lines when stderr is a log, the renderer's kernels
loaded as one phase, and `drstudio optimize`'s phases (rendering the targets, the final evaluation)."""

from __future__ import annotations

import io
import threading
import time

from drstudio.renderer import progress
from test_recording import tiny_scene


def test_phases_nest_and_report_progress():
    events = []
    listener = lambda e, p: events.append((e, p.name, p.done))  # noqa: E731
    progress.add_listener(listener)
    try:
        assert progress.current() is None
        with progress.phase("outer", 2, "step") as outer:
            assert progress.current() is outer and outer.eta() is None
            for _ in progress.track("inner", ["a", "b", "c"], unit="view"):
                assert progress.current().name == "inner"
            outer.started -= 10.0  # 10 s for the first of two: 10 s to go
            outer.advance()
            assert abs(outer.eta() - 10.0) < 0.5 and outer.fraction == 0.5
            assert outer.describe().startswith("outer 1/2 step, ETA 1")
            seen = []
            t = threading.Thread(target=lambda: seen.append(progress.current()))  # any thread sees it
            t.start()
            t.join()
            assert seen == [outer]
        assert progress.current() is None
    finally:
        progress.remove_listener(listener)
    assert events[:2] == [("start", "outer", 0), ("start", "inner", 0)]
    assert ("end", "inner", 3) in events and events[-1] == ("end", "outer", 1)


def test_terminal_lines_for_a_log():
    buf = io.StringIO()  # not a terminal: lines, not a bar
    reporter = progress.TerminalReporter(delay=0.0, file=buf, every=0.0)
    progress.add_listener(reporter)
    try:
        for _ in progress.track("loading target images", range(3), unit="image"):
            time.sleep(0.01)
        with progress.phase("quick", 1):
            pass
    finally:
        progress.remove_listener(reporter)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("loading target images 1/3 image")
    assert lines[-2].startswith("loading target images: 3/3 image in ") and lines[-1].startswith("quick: 0/1")


def test_kernels_load_as_one_phase():
    import warp as wp
    from drstudio.renderer.optim import problem  # noqa: F401 - imports the renderer's kernel modules

    progress.load_kernels("cpu")
    assert progress.load_kernels("cpu") == 0  # all loaded: nothing to report
    module = wp.get_module("drstudio.renderer.stages.raster")
    assert progress._needs_compile(module, wp.get_device("cpu")) is False  # in the kernel cache now



def test_kernels_load_the_variant_a_cpu_launch_runs():
    """load_kernels builds what a launch then uses: after it, a launch on the CPU loads and compiles nothing
    (before, it built the module's default block size, 256, which CPU launches never run, so every module was
    compiled twice on a new machine)."""
    import numpy as np
    import warp as wp

    cpu = wp.get_device("cpu")
    module = wp.get_module(_double.__module__)
    progress.load_kernels("cpu", prefix=_double.__module__)
    loaded = dict(module.execs)
    assert len(loaded) == 1
    a = wp.array(np.arange(4, dtype=np.float32), device=cpu)
    wp.launch(_double, dim=4, inputs=[a], device=cpu)
    np.testing.assert_array_equal(a.numpy(), [0, 2, 4, 6])
    assert dict(module.execs) == loaded  # the launch found its variant loaded


def _make_double():
    import warp as wp

    @wp.kernel
    def double_in_place(a: wp.array(dtype=wp.float32)):
        i = wp.tid()
        a[i] = a[i] * 2.0

    return double_in_place


_double = _make_double()

def test_optimize_reports_its_phases(tmp_path):
    from drstudio.app.headless import optimize

    buf = io.StringIO()
    reporter = progress.TerminalReporter(delay=0.0, file=buf, every=0.0)
    progress.add_listener(reporter)
    try:
        optimize(str(tiny_scene(tmp_path / "s", size=8, steps=2)), steps=2, out=tmp_path / "out", device="cpu",
                 progress=False, record=False)
    finally:
        progress.remove_listener(reporter)
    text = buf.getvalue()
    assert "rendering the targets: 3/3 view in" in text and "final evaluation: 3/3 view in" in text, text
