"""renderer.thread_tape: the active `wp.Tape` is per thread. Two threads record and backpropagate on tapes
of their own at the same time and get exactly the serial gradients; a thread rendering without a tape adds
nothing to another thread's tape; the optimizer's steps are bit for bit the same while another thread
renders (the camera-path export, the viewer)."""

from __future__ import annotations

import threading
from pathlib import Path

import drstudio.renderer  # noqa: F401  (installs the per-thread tape)
import numpy as np
import warp as wp
from drstudio.renderer import parallel, thread_tape
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.loading import load_scene
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.render import render_view
from support import scenes
from support.gradcheck import weighted_loss

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["materials.canvas.albedo", "meshes.card.vertices", "meshes.card.colors", "lights.point0.color",
         "cameras.main.pose"]
TIMEOUT = 120.0


def _scene():
    return scenes.gradient_scene(32, 24, mode="antialias")


def _taped_render(ds: DeviceScene, seed: int, barrier: threading.Barrier | None = None):
    """(loss, recorded launches, gradients of PATHS) of a weighted image loss of `ds`'s main view; with
    `barrier`, waits at it inside the tape before and after recording (so two threads' tapes overlap)."""
    ds.zero_grad()
    tape = wp.Tape()
    try:
        with tape:
            if barrier is not None:
                barrier.wait(TIMEOUT)
            out = render_view(ds, ds.prepare(), "main")
            loss = weighted_loss(out.image, seed=seed)
            if barrier is not None:
                barrier.wait(TIMEOUT)
    except BaseException:
        if barrier is not None:
            barrier.abort()  # do not leave the other thread waiting
        raise
    tape.backward(loss)
    result = float(loss.numpy()[0]), len(tape.launches), {p: ds.arrays[p].grad.numpy().copy() for p in PATHS}
    tape.reset()
    return result


def _in_threads(*targets):
    """Run the callables on threads of their own; returns their results, re-raising the first error."""
    results, errors = [None] * len(targets), []

    def run(k, f):
        try:
            results[k] = f()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k, f)) for k, f in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    return results


def test_install_is_process_wide_and_idempotent():
    assert thread_tape.installed()
    thread_tape.install()
    assert thread_tape.installed() and thread_tape.active_tape() is None
    tape = wp.Tape()
    with tape:
        assert wp._src.context.runtime.tape is tape and thread_tape.active_tape() is tape
        seen = _in_threads(thread_tape.active_tape)
        assert seen == [None]  # another thread has no tape
    assert thread_tape.active_tape() is None


def test_two_threads_with_their_own_tapes_give_the_serial_gradients():
    sc = _scene()
    a, b = DeviceScene(sc, "cpu"), DeviceScene(_scene(), "cpu")
    b.set("lights.point0.color", np.array([0.3, 1.0, 0.5], np.float32))  # a different loss
    ref_a, ref_b = _taped_render(a, seed=1), _taped_render(b, seed=2)
    assert ref_a[0] != ref_b[0]
    for _ in range(3):
        barrier = threading.Barrier(2)  # both tapes are active at once, while both threads record
        got_a, got_b = _in_threads(lambda barrier=barrier: _taped_render(a, 1, barrier),
                                   lambda barrier=barrier: _taped_render(b, 2, barrier))
        for got, ref in ((got_a, ref_a), (got_b, ref_b)):
            assert got[:2] == ref[:2]  # the same loss and exactly the launches of one render each
            for p in PATHS:
                assert np.abs(ref[2][p]).max() > 0, p
                np.testing.assert_array_equal(got[2][p], ref[2][p], err_msg=p)


def test_a_thread_rendering_without_a_tape_adds_nothing_to_another_threads_tape():
    ds, other = DeviceScene(_scene(), "cpu"), DeviceScene(_scene(), "cpu")

    def viewer():
        assert thread_tape.active_tape() is None
        for _ in range(2):
            render_view(other, other.prepare(), "main")
            parallel.render_view_split(other, other.prepare(), "main", parts=2)
        with wp.Tape() as own:  # a tape of its own while the other thread's is active: no error
            render_view(other, other.prepare(), "main")
        return len(own.launches)

    tape = wp.Tape()
    with tape:
        render_view(ds, ds.prepare(), "main")
        n_render = len(tape.launches)
        assert n_render > 0
        assert _in_threads(viewer) == [n_render]  # the viewer's own tape has its one render
        assert len(tape.launches) == n_render  # and this one nothing of the viewer's renders
        render_view(ds, ds.prepare(), "main")
    assert len(tape.launches) == 2 * n_render
    tape.reset()


def test_parallel_workers_leave_no_tape_behind():
    ds = DeviceScene(_scene(), "cpu")
    tape = wp.Tape()
    with tape:
        out = parallel.render_view_split(ds, ds.prepare(), "main", parts=2)
        assert thread_tape.active_tape() is tape
    tape.backward(grads={out.image: wp.ones_like(out.image)})
    assert parallel._executor().submit(thread_tape.active_tape).result(TIMEOUT) is None
    assert thread_tape.active_tape() is None
    tape.reset()


def _problem() -> Problem:
    scene = load_scene(ROOT / "scenes" / "light.json")
    for cam in scene.cameras.values():
        cam.width, cam.height = 40, 30
        cam.intrinsics[:] = [cam.intrinsics[0] * 40 / 128, cam.intrinsics[1] * 30 / 96, 20, 15]
    return Problem(scene, "cpu", seed=3)


def _steps(problem: Problem, n: int):
    runs = []
    for _ in range(n):
        r = problem.step()
        runs.append((r.loss, {p: g.copy() for p, g in problem._last_param_grads.items()}))
    return runs


def test_optimizer_steps_are_unchanged_while_another_thread_renders(monkeypatch):
    """The Engine steps on its thread (recording under `wp.Tape`, its views on `renderer.parallel`'s
    workers) while e.g. the camera-path export renders mesh frames with `render_view` on another: the
    same losses and gradients, and every tape records the launches of one thread only."""
    ref = _steps(_problem(), 4)
    # id(tape) -> names of the threads that recorded on it; the tapes are kept alive in `tapes` so that an
    # id is never reused by a later tape (a freed step's tape and a new one can share an address)
    recorders: dict[int, set[str]] = {}
    tapes = []
    record_launch, record_func = wp.Tape.record_launch, wp.Tape.record_func

    def note(tape):
        if id(tape) not in recorders:
            tapes.append(tape)
        recorders.setdefault(id(tape), set()).add(threading.current_thread().name)

    monkeypatch.setattr(wp.Tape, "record_launch", lambda self, *a, **k: (note(self), record_launch(self, *a, **k)))
    monkeypatch.setattr(wp.Tape, "record_func", lambda self, *a, **k: (note(self), record_func(self, *a, **k)))
    problem = _problem()
    viewer_scene = load_scene(ROOT / "scenes" / "light.json")
    ds = DeviceScene(viewer_scene, "cpu")  # as app.camera_path.MeshFrames: a scene of its own
    stop, count = threading.Event(), [0]

    def viewer():
        while not stop.is_set():
            render_view(ds, ds.prepare(), next(iter(viewer_scene.cameras)), width=48, height=36)
            count[0] += 1

    def optimizer():
        try:
            return _steps(problem, 4)
        finally:
            stop.set()

    _, got = _in_threads(viewer, optimizer)
    assert count[0] > 0
    assert problem.parallel_views and len(problem._last_grad_images) > 1  # the steps used the workers
    assert recorders and all(len(names) == 1 for names in recorders.values()), recorders
    for (loss, grads), (ref_loss, ref_grads) in zip(got, ref, strict=True):
        assert loss == ref_loss
        assert grads.keys() == ref_grads.keys() and grads
        for p in grads:
            np.testing.assert_array_equal(grads[p], ref_grads[p], err_msg=p)
