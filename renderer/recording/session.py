"""Re-executing a recording: `verify` (does the session reproduce?) and `resume_problem` (continue it).

Why a session reproduces on the CPU: Warp runs every CPU launch on one thread, in launch order, so
the adjoint kernels' atomic adds happen in the same order each time; the optimizers' updates are
elementwise with no atomics; the view batch of each step is drawn from a NumPy generator seeded from
the scene's seed (its state is in every keyframe); commands are applied between steps, and the log
records the position of each one, so re-execution applies them at the same points; nothing in a step
reads the wall clock. (On CUDA, atomic adds commute in any order, so losses agree only to float
rounding there.)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import format as fmt
from .reader import Recording
from .scenecopy import sha256
from .state import compare_state, restore_state

DEFAULT_RTOL = 1e-5

log = logging.getLogger("drstudio.recording")


def load_scene_copy(rec: Recording):
    """The recording's copy of its scene, loaded after every file of the copy was found unmodified (its
    content hash in meta.json); RecordingError otherwise. What replay, resume and verify all read."""
    from ..loading import load_scene

    scene = rec.meta.get("scene")
    if not scene:
        raise fmt.RecordingError(f"{rec.path}: the session's scene was not loaded from a file, so it cannot be "
                                 f"re-executed")
    for rel, digest in scene.get("files", {}).items():
        file = rec.path / rel
        if not file.is_file():
            raise fmt.RecordingError(f"{rec.path}: {rel} of the scene copy is missing")
        if sha256(file) != digest:
            raise fmt.RecordingError(f"{rec.path}: {rel} of the scene copy was modified (content hash differs)")
    return load_scene(rec.path / scene["file"])


def build_problem(rec: Recording, device: str = "cpu"):
    """A fresh `Problem` from the recording's scene copy, seed and initial step budget."""
    from ..optim.problem import Problem

    scene = load_scene_copy(rec)
    downscale = rec.meta.get("downscale")
    if downscale is not None:  # `drstudio optimize --downscale N` (optimize.targets.downscale of the session)
        from ..errors import SceneError
        from ..optim.targets import with_target_downscale

        try:
            scene = with_target_downscale(scene, downscale)
        except SceneError as e:
            raise fmt.RecordingError(f"{rec.path}: meta.json downscale: {e}") from None
    problem = Problem(scene, device, seed=int(rec.meta["seed"]))
    problem.steps = int(rec.meta["start"]["steps"])
    if hasattr(problem.model, "tv_eps"):  # a recording from before the smoothed texture TV: plain L1 (0)
        eps = rec.meta.get("texture_tv_eps", 0.0)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise fmt.RecordingError(f"{rec.path}: meta.json texture_tv_eps: expected a finite number >= 0, "
                                     f"got {eps!r}")
        problem.model.tv_eps = float(eps)
    return problem


def apply_command(problem, record: dict) -> None:
    """Re-execute a recorded command on `problem` through the engine's dispatcher
    (`renderer.optim.commands.execute`; run control such as start and pause does not change the problem).
    A command the engine refused (`"rejected"` in the record) must be refused again: CommandError is
    raised when the two disagree."""
    from ..optim import commands

    refused = record.get("rejected")
    try:
        commands.execute(commands.from_record(record), problem)
    except Exception as exc:
        if refused:
            return  # refused then and now: nothing changed either time
        raise commands.CommandError(f"refused on re-execution: {exc}") from exc
    if refused:
        raise commands.CommandError(f"was refused when recorded ({refused}) but is accepted on re-execution")


@dataclass
class VerifyReport:
    ok: bool = True
    steps_checked: int = 0
    keyframes_checked: int = 0
    max_rel_error: float = 0.0  # over every loss and loss term compared
    divergence: dict | None = None  # the first: {"at", "step", "what", "recorded", "got", "rel_error"}
    notes: list[str] = field(default_factory=list)

    def message(self) -> str:
        if self.ok:
            return (f"reproduced: {self.steps_checked} steps and {self.keyframes_checked} keyframes match "
                    f"(largest relative loss difference {self.max_rel_error:.2g})")
        d = self.divergence
        detail = ""
        if d.get("recorded") is not None:
            detail = f": recorded {d['recorded']:.7g}, re-executed {d['got']:.7g}"
        return (f"diverged at timeline position {d['at']} (problem step {d['step']}): {d['what']} differs "
                f"(relative error {d['rel_error']:.3g}){detail}; {self.steps_checked} steps matched before it")


def _rel(a: float, r: float) -> float:
    if a == r or (np.isnan(a) and np.isnan(r)):
        return 0.0
    if not (np.isfinite(a) and np.isfinite(r)):
        return np.inf
    return abs(a - r) / max(abs(r), 1e-12)


def verify(rec: Recording, device: str = "cpu", rtol: float = DEFAULT_RTOL, progress=None) -> VerifyReport:
    """Re-execute the session from its initial scene, seed and recorded commands (a resumed session from
    its start keyframe) and compare every step's loss and loss terms and every keyframe's parameters and
    optimizer state with the recording, to `rtol` relative (a compact keyframe: bit for bit, through its
    digests; `state.compare_state`). Stops at the first divergence.
    `progress(done, total)` is called after each step, if given. RecordingError when the log holds no
    step to re-execute (empty, missing, or every line damaged: "reproduced: 0 steps" would claim nothing)."""
    if not rec.steps:
        raise fmt.RecordingError(f"{rec.path}: nothing to verify: {rec.log_state()}")
    problem = build_problem(rec, device)
    _emulate_ranks(rec, problem)
    start = rec.start_keyframe
    if rec.parent is not None or rec.first_at != 0:
        if start is None:
            raise fmt.RecordingError(f"{rec.path}: a resumed session needs its start keyframe, which is missing")
        restore_state(problem, rec.keyframe(start))
    return reexecute(rec, problem, rec.records, device=device, rtol=rtol, progress=progress)


def _emulate_ranks(rec: Recording, problem) -> None:
    split = rec.meta.get("data_parallel")
    if isinstance(split, dict):  # a distributed run: its ranks emulated in turn, their sums in the same order
        ranks, threads = split.get("ranks"), split.get("threads_per_rank")
        if not (isinstance(ranks, int) and 1 <= ranks <= 4096 and (threads is None or isinstance(threads, int)
                                                                    and 1 <= threads <= 4096)):
            raise fmt.RecordingError(f"{rec.path}: meta.json data_parallel: expected ranks and threads_per_rank "
                                     f"integers in [1, 4096], got {split}")
        try:
            problem.set_shards(ranks)
        except ValueError as e:
            raise fmt.RecordingError(f"{rec.path}: meta.json data_parallel: {e}") from None
        problem.model.workers = threads


def reexecute(rec: Recording, problem, records: list[dict], *, device: str = "cpu", rtol: float = DEFAULT_RTOL,
              progress=None, until: dict | None = None) -> VerifyReport:
    """Apply `records` (log records in order) to `problem`: commands as the engine applied them, steps
    taken and their losses compared with the recorded ones, keyframes (the last one logged at their
    position; the start keyframe) compared with the problem's state. Stops at the first divergence, or
    after the keyframe record `until` (resume: the keyframe to reach)."""
    report = VerifyReport()
    start = rec.start_keyframe
    total = sum(1 for r in records if r["type"] == "step")
    at = rec.first_at
    exact = str(device).startswith("cpu")

    def diverge(what: str, err: float, recorded=None, got=None) -> VerifyReport:
        report.ok = False
        report.divergence = {"at": at, "step": int(problem.step_index), "what": what, "rel_error": float(err),
                             "recorded": recorded, "got": got}
        return report

    for r in records:
        kind = r["type"]
        at = int(r.get("at", at))
        if kind == "command":
            try:
                apply_command(problem, r)
            except Exception as exc:
                return diverge(f"command {r.get('kind')} ({exc})", np.inf)
        elif kind == "step":
            result = problem.step()
            pairs = [("loss", fmt.number(r.get("loss")), result.loss)]
            pairs += [(f"loss term {k}", fmt.number(v), result.loss_terms.get(k, np.nan))
                      for k, v in r.get("terms", {}).items()]
            for what, recorded, got in pairs:
                err = _rel(got, recorded)
                if not err <= rtol:
                    return diverge(what, err, recorded, got)
                report.max_rel_error = max(report.max_rel_error, err)
            if bool(r.get("applied", True)) != result.applied:
                return diverge("whether the update was applied", np.inf, r.get("applied"), result.applied)
            report.steps_checked += 1
            if progress is not None:
                progress(report.steps_checked, total)
        elif kind == "keyframe":
            if r is not start and r is not rec.keyframes.get(at) and r is not until:
                continue  # superseded by a later keyframe at this position, pruned, or missing
            try:
                kf = rec.keyframe(r)
            except fmt.RecordingError as exc:
                if r is until:
                    raise
                report.notes.append(f"keyframe at {r['at']} not compared: {exc}")
                continue
            found = compare_state(problem, kf, rtol, exact=exact)
            if found is not None:
                what, err = found
                return diverge(f"{what} in the keyframe at {r['at']}", err)
            report.keyframes_checked += 1
            if kf.compact and not exact:
                note = "compact keyframes compared to float16 precision (this device does not re-execute bit for bit)"
                if note not in report.notes:
                    report.notes.append(note)
        if r is until:
            break
    return report


def resume_problem(rec: Recording, from_step: int | None = None, device: str = "cpu", progress=None):
    """(problem, parent) for continuing the session from the keyframe at timeline position `from_step`
    (default: the last keyframe): a fresh problem from the recording's scene put into that keyframe's
    state, and the `parent` dict a new `Recorder` stores in its meta.json.

    A full keyframe is restored directly. A compact one (display precision: no optimizer state) is
    reached by restoring the latest full keyframe before it (or the session's start) and re-executing the
    log up to it, checking every loss on the way and its digests at the end (bit for bit), so the problem
    is in exactly the recorded state; RecordingError if it is not. `progress(done, total)` per step."""
    if not rec.keyframes:
        raise fmt.RecordingError(f"{rec.path}: has no keyframe to resume from")
    at = max(rec.keyframes) if from_step is None else int(from_step)
    kf = rec.keyframe(at)  # RecordingError listing the keyframes when there is none at `at`
    krec = rec.keyframes[at]
    problem = build_problem(rec, device)
    if not kf.compact:
        restore_state(problem, kf)
    else:
        _reach(rec, problem, krec, device, progress)
    parent = {"path": str(Path(rec.path).resolve()), "at": at, "keyframe": krec["file"], "crc32": krec.get("crc32"),
              "step": int(kf.state["step"])}
    return problem, parent


def _reach(rec: Recording, problem, target: dict, device: str, progress) -> None:
    """Put `problem` into the state of the compact keyframe record `target` by re-execution (see
    `resume_problem`)."""
    _emulate_ranks(rec, problem)  # a distributed run's losses are re-executed as its ranks summed them
    index = next(i for i, r in enumerate(rec.records) if r is target)
    base = None  # the index of the latest intact full keyframe record before the target
    for i in range(index - 1, -1, -1):
        r = rec.records[i]
        if r["type"] != "keyframe" or (r is not rec.start_keyframe and r is not rec.keyframes.get(r["at"])):
            continue
        if r.get("encoding", "full") == "compact":
            continue
        try:
            kf = rec.keyframe(r)
        except fmt.RecordingError:
            continue
        if not kf.compact:
            base = i
            restore_state(problem, kf)
            break
    if base is None:
        if rec.parent is not None or rec.first_at != 0:
            raise fmt.RecordingError(f"{rec.path}: no full keyframe before the compact one at {target['at']} to "
                                     f"re-execute from (a resumed session's start keyframe is missing)")
        base = -1  # the session's start: the fresh problem is its state
    records = rec.records[base + 1:index + 1]
    steps = sum(1 for r in records if r["type"] == "step")
    log.info("resume: the keyframe at %d is compact; re-executing %d steps from %s to reach it", target["at"],
             steps, "the start" if base < 0 else f"the full keyframe at {rec.records[base]['at']}")
    report = reexecute(rec, problem, records, device=device, progress=progress, until=target)
    if not report.ok:
        raise fmt.RecordingError(f"{rec.path}: cannot reach the compact keyframe at {target['at']} by "
                                 f"re-execution: {report.message()}")
