"""`drstudio optimize` / `make run` without a display: the engine in its background thread, a progress
bar fed by its snapshots, then the results written (atomically) under the output folder:

  params.npz            recovered values of every optimized parameter (dotted path -> array)
  <mesh>.obj            recovered meshes, when vertices were optimized
  <path>.png            recovered textures, when a texture was optimized
  views/<camera>.png    render | target | |difference| (x4) side by side, per target view
  loss.png              loss curve (log scale)
  metrics.json          final loss, PSNR render vs target, parameter errors vs truth, timings; for a scene
                        with fields also psnr_test_db, the mean PSNR over the held-out views
  field_<name>.npz      a trained field: a voxel grid's density, sh (at its storage precision), aabb,
                        sh_degree, activation; a dynamic field's density (T, nx, ny, nz), sh (T, nx, ny, nz,
                        3K), times, aabb, sh_degree, activation; a neural / NeRF-W field's flat weights,
                        layout_names / layout_offsets (where each torch parameter starts), spec (the scene
                        entry as JSON), aabb, type, and NeRF-W's appearance / transient embeddings
  transient_<camera>.png  NeRF-W: for up to 4 training views, static + transient render | target | transient
                        share of the opacity (white = transient)
  views/<camera>.png    also for the held-out views of a scene with fields
  recording/            the session's recording (docs/recording.md), unless record=False
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from drstudio.renderer.conventions import linear_to_srgb
from drstudio.renderer.images import atomic_write, write_image
from drstudio.renderer.loading import open_scene
from drstudio.renderer.optim import losses
from drstudio.renderer.optim.engine import Engine
from drstudio.renderer.optim.field_training import PSNR_TERM
from drstudio.renderer.optim.identifiability import underdetermined
from drstudio.renderer.optim.problem import Problem
from drstudio.renderer.params import Kind
from tqdm import tqdm


def default_out_dir(root: Path) -> Path:
    return root / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")


def optimize(scene_path: str | None, *, steps: int | None, out: Path, device: str, progress: bool = True,
             record: bool = True, resume: Path | None = None, from_step: int | None = None,
             record_options=None, on_start=None, partial_every: float = 30.0, comm=None,
             final_eval: str | None = None, max_seconds: float | None = None,
             downscale: int | None = None) -> dict:
    """Run the scene's optimization to its step budget and write the results to `out`.
    Returns the metrics dict (also written to out/metrics.json).

    record: write a recording of the session to out/recording/ (renderer.recording; another free name
    when that exists). resume: a recording folder to continue from its keyframe at `from_step` (default
    its last) instead of starting `scene_path` afresh; the new recording names it as its parent.
    on_start(engine, problem): called once the engine thread runs (`--serve` starts its server there).
    partial_every: seconds between writes of the latest values (params.npz, a partial metrics.json).
    final_eval: how the final PSNRs are measured (`write_results`).
    max_seconds: a time budget: the run ends after the first step that finishes this many wall-clock seconds
    after the optimization started (first-step kernel compilation included; loading the scene and targets
    before, the final evaluation and the results after are not), as a normal end with its results; every rank of
    a distributed run ends after the same step. metrics.json "time_budget" says whether it ran out.
    downscale: train a dataset scene (`targets.transforms`) at 1/N resolution (`optimize.targets.downscale`;
    the recording stores it, so verify and resume rebuild the same problem). Not with `resume`.
    Ctrl-C or SIGTERM stops the run after its current step, writes the results so far (metrics.json says
    "interrupted": true) and raises `Interrupted`.

    comm: this process is one rank of a distributed run (`renderer.optim.distributed.Comm`): it renders its
    share of each step's views; only rank 0 records, shows progress and writes `out` (other ranks write
    nothing and return the final step and loss). A stop signal on any rank stops every rank after the same
    step; a lost rank raises DistributedError."""
    parent = None
    if resume is not None:
        from drstudio.renderer.recording import load_recording, resume_problem

        bars = []

        def reexecuted(done: int, total: int) -> None:  # a compact keyframe is reached by re-executing the log
            if not bars:
                bars.append(tqdm(total=total, desc="re-executing to the keyframe", unit="step",
                                 disable=not progress, dynamic_ncols=True))
            bars[0].update(1)

        try:
            problem, parent = resume_problem(load_recording(resume), from_step, device, progress=reexecuted)
        finally:
            for bar in bars:
                bar.close()
    else:
        scene = open_scene(scene_path)
        if downscale is not None:
            from drstudio.renderer.optim.targets import with_target_downscale

            scene = with_target_downscale(scene, downscale)
        problem = Problem(scene, device)
    if steps is not None:
        problem.steps = steps
    lead = comm is None or comm.rank == 0  # the process that writes
    for warning in underdetermined(problem.free_paths(), problem.views) if lead else ():
        print(f"warning: {warning}", file=sys.stderr)
    if comm is not None:
        from drstudio.renderer.optim.distributed import threads_per_rank

        problem.set_shards(comm.world, comm)
        problem.model.workers = threads_per_rank(comm.local_world)
        record, progress, partial_every = record and lead, progress and lead, partial_every if lead else 0
    # images only for a watcher (`--serve`, through on_start): at start, on commands and at the end
    engine = Engine(problem, publish_images=False, publish_every=1, render_images=on_start is not None)
    recorder = None
    if record:
        from drstudio.renderer.recording import Recorder, next_recording_dir

        recorder = Recorder(next_recording_dir(Path(out) / "recording"), problem, parent=parent,
                            options=record_options)
        engine.add_listener(recorder)
        if progress:
            print(f"recording to {recorder.dir}", file=sys.stderr)
    engine.start_thread()
    if on_start is not None:
        on_start(engine, problem)
    t0 = time.perf_counter()
    if max_seconds is not None:
        problem.deadline = time.monotonic() + float(max_seconds)
    engine.send("start")
    # a terminal gets a live bar; a log file (CI, pipes) a line every few seconds
    interactive = sys.stderr.isatty()
    bar = tqdm(total=problem.steps, desc="optimize", unit="step", disable=not progress, dynamic_ncols=True,
               mininterval=0.1 if interactive else 5.0)
    loss_label = "loss (noisy estimate)" if problem.noisy_loss else "loss"
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    last_partial = time.monotonic()
    try:
        while comm is not None or not stop.is_set():
            if stop.is_set():  # distributed: every rank stops after the step in which one asked
                problem.stop_request = True
            snap = engine.snapshot()
            # path mode: each step's loss is a Monte Carlo estimate with its own random numbers
            bar.set_postfix({loss_label: f"{snap.loss:.3e}", "steps_s": f"{snap.steps_per_second:.1f}"},
                            refresh=False)
            bar.update(snap.step - bar.n)
            if snap.state in ("finished", "stopped", "error"):
                break
            if partial_every and time.monotonic() - last_partial > partial_every:
                write_partial(out, snap)  # what survives a kill or a power cut: the latest values
                last_partial = time.monotonic()
            if stop.is_set():  # distributed: waiting for the agreed last step
                time.sleep(0.1)
            else:
                stop.wait(0.1)
    finally:
        restore()
        bar.close()
        # the engine finishes its current step first (a step is bounded), so nothing below races with it
        if not engine.shutdown(timeout=None):
            raise RuntimeError("the optimizer thread did not stop")
        if recorder is not None:
            recorder.close()
    interrupted = stop.is_set() or problem.stop_agreed
    elapsed = time.perf_counter() - t0
    snap = engine.snapshot()
    if snap.state == "error":
        if comm is not None:
            from drstudio.renderer.optim.distributed import DistributedError

            raise DistributedError(snap.error)
        raise RuntimeError(snap.error)
    if not lead:
        if interrupted:
            raise Interrupted(f"rank {comm.rank} stopped at step {snap.step}")
        return {"steps": snap.step, "final_loss": snap.loss, "seconds": elapsed}
    extra = {"interrupted": True} if interrupted else {}
    if max_seconds is not None:
        extra["time_budget"] = {"max_seconds": float(max_seconds), "ran_out": bool(problem.out_of_time)}
        if problem.out_of_time and progress:
            print(f"time budget of {max_seconds:g} s reached: stopped after step {snap.step} of {problem.steps}",
                  file=sys.stderr)
    if recorder is not None:
        extra["recording"] = {"path": str(recorder.dir), "bytes": recorder.bytes_written,
                              "error": recorder.failed or None}
    metrics = write_results(problem, snap, out, elapsed, extra, final_eval=final_eval)
    if interrupted:
        raise Interrupted(f"stopped at step {snap.step}; the results so far are in {out}")
    return metrics


class Interrupted(KeyboardInterrupt):
    """The run was interrupted (Ctrl-C, SIGTERM) and its results so far were written."""


def _stop_on_signals(stop: threading.Event):
    """While a headless run is in progress, Ctrl-C (SIGINT) and SIGTERM (a scheduler stopping the job,
    `kill`) set `stop` instead of raising KeyboardInterrupt wherever the main thread happens to be (an
    exception between a lock's acquire and its release would leave the engine's snapshot lock held), so
    the run ends the same clean way. Returns the function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, h) for sig, h in previous.items()]


def write_partial(out: Path, snap) -> None:
    """The latest values of the free parameters and where the run is, written atomically while it runs
    (`write_results` replaces both at the end)."""
    values = {p: np.asarray(v) for p, v in snap.values.items()}
    atomic_write(out / "params.npz", lambda tmp: np.savez(open(tmp, "wb"), **values))
    doc = _json_safe({"partial": True, "steps": snap.step, "final_loss": snap.loss, "state": snap.state})
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n"))


def _side_by_side(render: np.ndarray, target: np.ndarray) -> np.ndarray:
    diff = np.clip(np.abs(render - target) * 4.0, 0, 1)
    gap = np.ones((render.shape[0], 2, 3), np.float32)
    return np.concatenate([render, gap, target, gap, diff], axis=1)


def _loss_plot(path: Path, history: dict) -> tuple[float, float]:
    """Write `loss.png`: the loss and its terms against the step, on a log axis bounded by the data
    (`app.plot_scale.log_axis_limits`; linear when nothing is positive). Returns the y range drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot_scale import log_axis_limits

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    curves = {name: values for name, values in history.items()
              if name == "loss" or (name.startswith("loss.") and not name.endswith("_db"))}  # not read-outs in dB
    for name, values in curves.items():
        ax.plot(np.arange(len(values)), values, label=name, lw=1.2 if name == "loss" else 0.8)
    limits = log_axis_limits(curves)
    if limits is not None:  # bounded by the data: a term at 1e-30 does not squash the curves
        ax.set_yscale("log")
        ax.set_ylim(*limits)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if ax.lines:  # a session that took no step has no curve to name
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    ylim = tuple(float(v) for v in ax.get_ylim())
    plt.close(fig)
    return ylim


def _psnr_srgb(render: np.ndarray, target: np.ndarray) -> float:
    """PSNR (dB, peak 1) between the sRGB encodings of two linear images clipped to [0, 1]."""
    mse = float(np.mean((linear_to_srgb(np.clip(render, 0, 1)) - linear_to_srgb(np.clip(target, 0, 1))) ** 2))
    if not math.isfinite(mse):
        return math.nan  # a non-finite render is no match, not a perfect one
    return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf


def _mean_psnr(values) -> float:
    """The mean PSNR of views: NaN (null in metrics.json) when any view's is NaN (a non-finite render), inf
    ("inf") only when every view matches exactly, else the mean over the views that do not match exactly."""
    values = list(values)
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.inf


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


FINAL_EVAL_MODES = ("full", "sampled", "none")
SHOWN_SIZE = 640  # the longest side of the one view a sampled evaluation writes (the resolution divided by an integer)


def _evaluate_views(problem: Problem, out: Path, mode: str):
    """The final evaluation of `write_results`: (PSNR by training view, PSNR by held-out view, sRGB PSNRs of the
    held-out views). "full": every pixel of every view, each written as views/<camera>.png; "sampled" (fields):
    each view at its `eval_pixels` only, and views/<camera>.png for the first held-out view (else the first
    training view), downscaled by an integer to at most SHOWN_SIZE pixels a side; "none": nothing."""
    model = problem.model
    psnrs, test_psnrs, test_srgb = {}, {}, []
    held_out = {t.camera for t in problem.test_targets}
    targets = problem.targets + problem.test_targets
    if mode == "none":
        return psnrs, test_psnrs, test_srgb
    if mode == "sampled":
        for camera, (rgb, ref) in model.sampled_views(targets).items():
            mse = float(np.mean((rgb.astype(np.float64) - ref.astype(np.float64)) ** 2))
            value = math.nan if not math.isfinite(mse) else (10 * math.log10(1.0 / mse) if mse > 0 else math.inf)
            (test_psnrs if camera in held_out else psnrs)[camera] = value
            if camera in held_out:
                test_srgb.append(_psnr_srgb(rgb, ref))
        from drstudio.renderer.recording.writer import render_thumbnail

        shown = (problem.test_targets or problem.targets)[:1]
        for t in shown:  # at most SHOWN_SIZE pixels a side: a capture's full-resolution view takes minutes
            rendered, target = render_thumbnail(problem, t.camera, SHOWN_SIZE)
            write_image(out / "views" / f"{t.camera}.png", _side_by_side(rendered, target))
        return psnrs, test_psnrs, test_srgb
    views = model.evaluation_views(targets)  # e.g. NeRF-W fits the held-out views' embeddings first
    for t in targets:
        rendered, mask = views[t.camera]  # mask: e.g. NeRF-W held out, the right half
        (test_psnrs if t.camera in held_out else psnrs)[t.camera] = losses.psnr(rendered.image, t.image, mask)
        target = t.image.numpy().reshape(rendered.height, rendered.width, 3)
        if t.camera in held_out:  # also as NeRF papers measure it: on the sRGB-encoded images
            m = None if mask is None else mask.numpy().reshape(rendered.height, rendered.width).astype(bool)
            test_srgb.append(_psnr_srgb(rendered.numpy()[m] if m is not None else rendered.numpy(),
                                        target[m] if m is not None else target))
        write_image(out / "views" / f"{t.camera}.png", _side_by_side(rendered.numpy(), target))
    return psnrs, test_psnrs, test_srgb


def write_results(problem: Problem, snap, out: Path, elapsed: float, extra: dict | None = None,
                  final_eval: str | None = None, downscale: int | None = None) -> dict:
    """Write the results (module docstring) and return the metrics. `final_eval`: how the final PSNRs are
    measured, one of FINAL_EVAL_MODES (`_evaluate_views`); default "sampled" for a scene with fields, "full"
    otherwise (a scene without fields has no sampled evaluation: "sampled" means "full" there)."""
    out.mkdir(parents=True, exist_ok=True)
    ds = problem.ds
    values = {p: ds.get(p) for p in problem.param_specs}
    atomic_write(out / "params.npz", lambda tmp: np.savez(open(tmp, "wb"), **values))
    for path, value in values.items():
        kind = ds.kind(path)
        if kind.is_texture and value.shape[0] * value.shape[1] > 1:
            write_image(out / f"{path}.png", value, srgb=(kind is Kind.ALBEDO))
        if kind is Kind.VERTICES:
            import trimesh

            mesh = problem.scene.meshes[ds.params[path].owner]
            tm = trimesh.Trimesh(value, mesh.faces, process=False)
            atomic_write(out / f"{mesh.name}.obj", lambda tmp, tm=tm: tm.export(tmp, file_type="obj"))
    model = problem.model
    is_field = getattr(model, "kind", None) == "field"
    mode = final_eval or ("sampled" if is_field else "full")
    if mode not in FINAL_EVAL_MODES:
        raise ValueError(f"final_eval: expected one of {FINAL_EVAL_MODES}, got {mode!r}")
    if mode == "sampled" and not is_field:
        mode = "full"
    start = time.perf_counter()
    psnrs, test_psnrs, test_srgb = _evaluate_views(problem, out, mode)
    eval_info = {"final_eval": mode, "final_eval_seconds": time.perf_counter() - start}
    if is_field:
        eval_info.update(eval_rays_per_view=model.eval_rays, eval_seconds=model.eval_seconds,
                         eval_every=model.eval_every)
    for name, arrays in model.export().items():
        atomic_write(out / f"field_{name}.npz", lambda tmp, a=arrays: np.savez(open(tmp, "wb"), **a))
    for stem, image in model.result_images().items():
        write_image(out / f"{stem}.png", image)
    _loss_plot(out / "loss.png", snap.history)
    metrics = {
        "scene": problem.scene.path,
        "steps": snap.step,
        "final_loss": snap.loss,
        **({"final_loss_note": "a Monte Carlo estimate of the last step (path mode), noisy"}
           if problem.noisy_loss else {}),
        # the held-out PSNR is reported below from the final evaluation; the step's term holds the last periodic one
        "loss_terms": {k: v for k, v in snap.loss_terms.items() if k != PSNR_TERM},
        "psnr_render_vs_target_db": _mean_psnr(psnrs.values()),
        "psnr_by_view_db": psnrs,
        **({"psnr_test_db": _mean_psnr(test_psnrs.values()), "psnr_test_by_view_db": test_psnrs,
            "psnr_test_srgb_db": float(np.mean(test_srgb))} if test_psnrs else {}),
        "parameters": model.parameter_metrics(),
        "skipped_steps": snap.skipped_steps,
        "seconds": elapsed,
        "steps_per_second": snap.step / elapsed if elapsed > 0 else 0.0,
        "device": str(ds.device),
        **eval_info,
        **(extra or {}),
    }
    metrics = _json_safe(metrics)
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n"))
    return metrics
