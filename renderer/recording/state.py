"""The full state of a `Problem` at one moment, as keyframes store it, and its restoration.

A keyframe holds everything the next step depends on, so a session continues from it exactly as it
would have (the determinism `--verify` checks):
- the value of every optimizable parameter (free or fixed: a fixed one may have been edited);
- the target values the user edited (`set_target_value`), i.e. where the truth differs from the scene;
- the optimizer's state (`state_dict()`: moments, counters, learning rates) and which parameters it
  holds, in order;
- the free flags, per-parameter learning rates, loss weights, active view, step index and budget,
  the step budget the learning-rate schedule was built with, and the view-batch RNG's state;
- extra state the problem's `model` keeps outside the parameters (a radiance field's occupancy grid, the
  faces of a remeshed mesh: its `load_topology(extra, values)` puts them back before the values), when it
  offers the hook `extra_state() -> dict[str, np.ndarray]` / `load_extra_state(dict)`:
  stored as `extra/<name>` arrays (a prefix of their own, so no name can clash with a parameter path's
  `value/<path>`), restored last.

Keyframes come in two encodings (format version 3; docs/recording.md "Keyframes"):
- **full**: every array exactly, in an uncompressed .npz (`np.savez`, as versions 1 and 2 wrote them:
  deflate takes only 7-8 % off a trained field's float32 state and costs 20x the time to write).
  `restore_state` needs one: resume and verify start from full keyframes.
- **compact**: what replay shows, at display precision: the parameter values in float16 (an array whose
  values float16 cannot hold stays float32), edited targets and integer extra state (a remeshed mesh's
  faces, occupancy flags) exactly, no optimizer buffers or float extra state; plus the SHA-256 digest of
  every array a full keyframe would hold (values, optimizer buffers, extra state), so `compare_state`
  checks the re-executed state bit for bit against it, and resume reaches it by re-executing the log from
  the full keyframe before it (`session.resume_problem`).
- compact keyframes are compressed (`np.savez_compressed`: zip deflate).
Both record `encoding` in state.json; a keyframe without it (versions 1 and 2) is full.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..images import atomic_write
from .format import file_crc32

STATE_KEY = "state.json"
EXTRA_PREFIX = "extra/"
FULL, COMPACT = "full", "compact"
COMPACT_MIN = 1024  # float arrays with fewer elements are kept exactly in a compact keyframe
F16_MAX = float(np.finfo(np.float16).max)

log = logging.getLogger("drstudio.recording")


def extra_state_owner(problem):
    """The object whose `extra_state()` / `load_extra_state(dict)` keyframes store and restore (the
    problem's `field_training`, else its `model`, when it has both methods), or None."""
    owner = getattr(problem, "field_training", None) or getattr(problem, "model", None)
    if owner is not None and callable(getattr(owner, "extra_state", None)) and callable(
            getattr(owner, "load_extra_state", None)):
        return owner
    return None


def extra_arrays(problem) -> dict[str, np.ndarray]:
    """{name: array} of the problem's extra state ({} without the hook). Names must be non-empty strings
    and values numeric or bool arrays (what an .npz stores without pickling)."""
    owner = extra_state_owner(problem)
    if owner is None:
        return {}
    out = {}
    for name, value in owner.extra_state().items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"extra_state: expected non-empty string names, got {name!r}")
        a = np.array(value, copy=True)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"extra_state[{name!r}]: expected a numeric or bool array, got dtype {a.dtype}")
        out[name] = a
    return out


def schedule_steps(problem) -> int:
    """The step budget the problem's learning-rate schedule was built with: its optimizer is built in
    `Problem.__init__` with the scene's `optimize.steps` and rebuilt by `reset()` and by `set_free()`
    with the `steps` of that moment. `Recorder` tracks it; `restore_state` sets it."""
    return int(problem.schedule_steps)


def capture_state(problem, *, at: int, sched_steps: int, reason: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(state, arrays) of `problem` now. Call it on the engine thread (or with the engine stopped)."""
    ds = problem.ds
    arrays: dict[str, np.ndarray] = {}
    for path in problem.param_specs:
        arrays[f"value/{path}"] = ds.get(path)
    scene_values = problem.scene.params()
    for path, truth in problem.truth.items():
        if not np.array_equal(truth, scene_values[path].value):
            arrays[f"truth/{path}"] = np.asarray(truth, np.float32)
    extra = extra_arrays(problem)
    for name, a in extra.items():
        arrays[EXTRA_PREFIX + name] = a
    opt = problem.optimizer
    sd = opt.state_dict()
    buffers = [k for k in sd if k not in ("iteration", "steps", "lr")]
    for b in buffers:
        for i, v in enumerate(sd[b]):
            v = np.asarray(v)  # float64 stays float64 (large steps' u: positions are solved from it)
            arrays[f"opt/{b}/{i}"] = v if v.dtype == np.float64 else v.astype(np.float32)
    state = {
        "at": int(at), "reason": reason,
        "step": int(problem.step_index), "steps": int(problem.steps), "schedule_steps": int(sched_steps),
        "free": {p: bool(problem.free[p]) for p in problem.param_specs},
        "lrs": {p: float(v) for p, v in problem.lrs.items()},
        "weights": {k: float(v) for k, v in problem.weights.items()},
        "active_view": problem.active_view,
        "optimizer": {"class": type(opt).__name__, "paths": list(problem.opt_paths),
                      "iteration": int(sd["iteration"]), "steps": int(sd["steps"]),
                      "lr": [float(x) for x in sd["lr"]], "buffers": buffers},
        "view_rng": problem.view_rng_state(),
        "extra": sorted(extra),
    }
    return state, arrays


def array_digest(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and little-endian bytes (hex): what a compact keyframe records of
    each array it does not keep exactly, and what `compare_state` recomputes."""
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode("ascii"))
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def compact_arrays(arrays: dict[str, np.ndarray], digests: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """(stored arrays, encoding) of a compact keyframe of `arrays` (as `capture_state` returns them): see
    the module docstring. `encoding["digests"]` holds the digest of every `value/`, `opt/` and `extra/`
    array; `encoding["float16"]` names the arrays stored in float16 (`Keyframe` reads them as float32)."""
    stored: dict[str, np.ndarray] = {}
    sums, halves = {}, []
    for name, a in arrays.items():
        if digests and not name.startswith("truth/"):
            sums[name] = array_digest(a)
        if name.startswith("opt/"):
            continue
        big_float = a.dtype.kind == "f" and a.size >= COMPACT_MIN
        if name.startswith(EXTRA_PREFIX) and big_float:
            continue  # training state (an occupancy grid's densities): not shown, checked by its digest
        if name.startswith("value/") and big_float:
            finite = np.isfinite(a)
            if not np.any(np.abs(a[finite]) > F16_MAX):
                stored[name] = a.astype(np.float16)
                halves.append(name)
                continue
        stored[name] = a
    return stored, {"kind": COMPACT, "digests": sums, "float16": halves}


def compact_bytes(arrays: dict[str, np.ndarray]) -> int:
    """The uncompressed size of the compact form of `arrays` (an upper bound of its file's size, less the
    digests and headers), without encoding it."""
    stored, _ = compact_arrays(arrays, digests=False)
    return sum(a.nbytes for a in stored.values())


def write_keyframe(path: Path, state: dict, arrays: dict[str, np.ndarray], fsync: bool = True,
                   compact: bool = False) -> tuple[int, int]:
    """Write a keyframe .npz atomically (temporary file, fsync, rename): a full one (uncompressed), or with
    `compact` a compact one (`compact_arrays`, deflated). Returns (bytes, crc32)."""
    if compact:
        payload, encoding = compact_arrays(arrays)
    else:
        payload, encoding = dict(arrays), {"kind": FULL}
    state = {**state, "encoding": encoding}
    payload[STATE_KEY] = np.frombuffer(json.dumps(state).encode("utf-8"), np.uint8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compact else np.savez)(f, **payload)
            f.flush()
            if fsync:
                os.fsync(f.fileno())

    atomic_write(path, write)
    return path.stat().st_size, file_crc32(path)


class Keyframe:
    """A loaded keyframe: `state` (dict, see `capture_state`), `values` (path -> array, every
    optimizable parameter), `truth` (path -> array, edited targets only), `optimizer` (state_dict; empty
    buffers in a compact keyframe), `extra` (name -> array: the problem's extra state, {} when it has none or
    the keyframe predates it; a compact keyframe's integer arrays only), `compact` (True: display precision,
    `digests` of the exact state; not restorable)."""

    def __init__(self, state: dict, arrays: dict[str, np.ndarray]):
        self.state = state
        self.at = int(state["at"])
        encoding = state.get("encoding") or {"kind": FULL}
        self.compact = encoding.get("kind") == COMPACT
        self.digests: dict[str, str] = dict(encoding.get("digests", {})) if self.compact else {}
        halves = set(encoding.get("float16", ())) if self.compact else set()
        self.values = {k[6:]: (v.astype(np.float32) if k in halves else v)
                       for k, v in arrays.items() if k.startswith("value/")}
        self.truth = {k[6:]: v for k, v in arrays.items() if k.startswith("truth/")}
        self.extra = {k[len(EXTRA_PREFIX):]: v for k, v in arrays.items() if k.startswith(EXTRA_PREFIX)}
        opt = state["optimizer"]
        sd = {"iteration": opt["iteration"], "steps": opt["steps"], "lr": list(opt["lr"])}
        for b in opt["buffers"]:
            sd[b] = [] if self.compact else [arrays[f"opt/{b}/{i}"] for i in range(len(opt["paths"]))]
        self.optimizer = sd

    @classmethod
    def read(cls, path) -> Keyframe:
        """Read a keyframe file (any format version). ValueError (or OSError) for anything that is not an
        intact keyframe: truncated or corrupt compressed data, declared sizes beyond the memory available, a
        missing entry, a malformed state.json or encoding; the message says what."""
        with open(path, "rb") as f:
            data = f.read()
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:  # what inflating it would take, before inflating it
                declared = sum(i.file_size for i in z.infolist())
        except zipfile.BadZipFile:
            declared = 0  # np.load below says what is wrong
        limit = inflate_limit()
        if declared > limit:
            raise ValueError(f"its arrays would inflate to {declared / 2**30:.1f} GiB, more than this reader allows "
                             f"({limit / 2**30:.1f} GiB: half the machine's memory)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            state = json.loads(arrays.pop(STATE_KEY).tobytes().decode("utf-8"))
        except (zipfile.BadZipFile, zlib.error, EOFError, MemoryError, RecursionError) as exc:
            raise ValueError(f"corrupt compressed data ({type(exc).__name__}: {exc})") from None
        except KeyError:
            raise ValueError(f"no {STATE_KEY} entry") from None
        _check_state(state, arrays)
        try:
            return cls(state, arrays)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{STATE_KEY}: malformed ({type(exc).__name__}: {exc})") from None


def inflate_limit() -> int:
    """Bytes a keyframe's arrays may declare: half the machine's physical memory (os.sysconf: no file is
    opened, so reading a recording opens nothing outside it)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # a platform without these names
        return 1 << 34


def _check_state(state, arrays: dict) -> None:
    """ValueError unless state.json has the fields `Keyframe` reads with the right types, and a compact
    keyframe's encoding names only arrays it can hold (digests: hex strings; float16: stored arrays)."""
    if not isinstance(state, dict) or not isinstance(state.get("at"), int) or not isinstance(
            state.get("optimizer"), dict):
        raise ValueError(f"{STATE_KEY}: expected an object with 'at' (integer) and 'optimizer'")
    opt = state["optimizer"]
    if not (isinstance(opt.get("buffers"), list) and isinstance(opt.get("paths"), list)
            and isinstance(opt.get("lr"), list)):
        raise ValueError(f"{STATE_KEY}: optimizer: expected lists 'buffers', 'paths', 'lr'")
    encoding = state.get("encoding")
    if encoding is None:
        return
    if not isinstance(encoding, dict) or encoding.get("kind") not in (FULL, COMPACT):
        raise ValueError(f"{STATE_KEY}: encoding: expected {{\"kind\": \"full\" or \"compact\", ...}}")
    if encoding["kind"] == COMPACT:
        digests, halves = encoding.get("digests"), encoding.get("float16")
        if not (isinstance(digests, dict) and all(isinstance(k, str) and isinstance(v, str) and len(v) == 64
                                                  for k, v in digests.items())):
            raise ValueError(f"{STATE_KEY}: encoding.digests: expected {{name: SHA-256 hex}}")
        if not (isinstance(halves, list) and all(isinstance(k, str) and k in arrays
                                                 and arrays[k].dtype == np.float16 for k in halves)):
            raise ValueError(f"{STATE_KEY}: encoding.float16: expected the names of float16 arrays it holds")


def restore_state(problem, kf: Keyframe) -> None:
    """Put `problem` (freshly built from the recording's scene, seed and device) into the keyframe's
    state, so that its next `step()` is the step the recorded session took from there. Needs a full
    keyframe (ValueError for a compact one: `session.resume_problem` re-executes up to it instead)."""
    if kf.compact:
        raise ValueError(f"keyframe at {kf.at} is compact (display precision, no optimizer state): it cannot be "
                         f"restored directly; re-execute from the full keyframe before it")
    s = kf.state
    missing = set(s["free"]) ^ set(problem.param_specs)
    if missing:
        raise ValueError(f"keyframe at {kf.at}: its parameters {sorted(s['free'])} do not match the problem's "
                         f"{sorted(problem.param_specs)}")
    for path, free in s["free"].items():
        problem.free[path] = bool(free)
    problem.lrs.update({p: float(v) for p, v in s["lrs"].items()})
    for name, w in s["weights"].items():
        problem.set_loss_weight(name, w)
    if kf.truth:
        for path, value in kf.truth.items():
            problem.truth[path] = np.asarray(value, np.float32)
        problem.render_targets()
    problem.steps = int(s["schedule_steps"])
    problem.reset()  # rebuilds the optimizer over the free parameters with the schedule's budget
    if list(problem.opt_paths) != list(s["optimizer"]["paths"]):
        raise ValueError(f"keyframe at {kf.at}: optimizer parameters {s['optimizer']['paths']} do not match "
                         f"the rebuilt problem's {problem.opt_paths}")
    if type(problem.optimizer).__name__ != s["optimizer"]["class"]:
        raise ValueError(f"keyframe at {kf.at}: optimizer {s['optimizer']['class']}, but the scene builds "
                         f"{type(problem.optimizer).__name__}")
    load_topology = getattr(getattr(problem, "model", None), "load_topology", None)
    if load_topology is not None:  # a remeshed mesh: its faces first (the values and the optimizer fit them)
        load_topology(kf.extra, kf.values)
    for path, value in kf.values.items():
        problem.ds.set(path, value)
    problem.optimizer.load_state_dict(kf.optimizer)
    problem.step_index = int(s["step"])
    problem.steps = int(s["steps"])
    problem.set_active_view(s["active_view"])
    problem.set_view_rng_state(s["view_rng"])
    if kf.extra:  # last: setting values may have moved a field to another lattice (and reset its extras)
        owner = extra_state_owner(problem)
        if owner is None:
            log.warning("keyframe at %d holds extra state (%s) the problem cannot load (no load_extra_state); "
                        "the session continues without it and will not match the original exactly", kf.at,
                        ", ".join(sorted(kf.extra)))
        else:
            owner.load_extra_state({k: np.array(v, copy=True) for k, v in kf.extra.items()})


def compare_state(problem, kf: Keyframe, rtol: float, exact: bool = True) -> tuple[str, float] | None:
    """The first quantity of `problem` that differs from the keyframe by more than `rtol` (relative to
    the keyframe's largest magnitude of that quantity) as (description, relative error), or None.

    A compact keyframe holds digests, not the state: every array must then be bit for bit the recorded
    one (its SHA-256), whatever `rtol`; a difference is reported with its relative error against the
    float16 copy when there is one (else inf). `exact=False` (a device whose re-execution matches only to
    float rounding, e.g. CUDA) compares the parameter values with the float16 copies instead, to
    `max(rtol, 1e-3)` (float16 keeps 11 bits), and the rest not at all."""
    def rel(a, r) -> float:
        a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
        if a.shape != r.shape:
            return np.inf
        if r.size and not np.isfinite(r).all():  # NaN/inf where both have them are equal (e.g. "no test PSNR yet")
            same = (np.isnan(a) & np.isnan(r)) | (a == r)
            if not same[~np.isfinite(r)].all():
                return np.inf
            a, r = np.where(np.isfinite(r), a, 0.0), np.where(np.isfinite(r), r, 0.0)
        scale = max(float(np.max(np.abs(r))) if r.size else 0.0, 1e-12)
        return float(np.max(np.abs(a - r))) / scale if r.size else 0.0

    if int(problem.step_index) != int(kf.state["step"]):
        return f"step index {problem.step_index} (recorded {kf.state['step']})", np.inf
    if kf.compact:
        return _compare_digests(problem, kf, rtol, exact, rel)
    for path, ref in kf.values.items():
        err = rel(problem.ds.get(path), ref)
        if not err <= rtol:
            return f"parameter {path}", err
    sd = problem.optimizer.state_dict()
    for b in kf.state["optimizer"]["buffers"]:
        for i, ref in enumerate(kf.optimizer[b]):
            err = rel(sd[b][i], ref) if i < len(sd.get(b, [])) else np.inf
            if not err <= rtol:
                return f"optimizer {b} of {kf.state['optimizer']['paths'][i]}", err
    got = extra_arrays(problem) if kf.extra else {}
    if got:  # a model that keeps no extra state compares as one without the hook
        for name, ref in sorted(kf.extra.items()):
            err = rel(got[name], ref) if name in got else np.inf
            if not err <= rtol:
                return f"extra state {name}", err
    return None


def _compare_digests(problem, kf: Keyframe, rtol: float, exact: bool, rel) -> tuple[str, float] | None:
    _, arrays = capture_state(problem, at=kf.at, sched_steps=int(problem.schedule_steps), reason="compare")
    if not exact:
        for path, ref in kf.values.items():
            err = rel(problem.ds.get(path), ref)
            if not err <= max(rtol, 1e-3):
                return f"parameter {path} (against its float16 copy)", err
        return None
    names = {"value/": "parameter", "opt/": "optimizer buffer", EXTRA_PREFIX: "extra state"}
    recorded = set(kf.digests)
    if not any(k.startswith(EXTRA_PREFIX) for k in arrays):  # no extra state here: compared as without the hook
        recorded = {k for k in recorded if not k.startswith(EXTRA_PREFIX)}
    for name in sorted(recorded | {k for k in arrays if not k.startswith("truth/")}):
        what = next(f"{w} {name[len(p):]}" for p, w in names.items() if name.startswith(p)) if any(
            name.startswith(p) for p in names) else name
        if name not in arrays or name not in kf.digests:
            return f"{what} (present in only one of the recorded and the re-executed state)", np.inf
        if array_digest(arrays[name]) != kf.digests[name]:
            ref = kf.values.get(name[6:]) if name.startswith("value/") else None
            err = rel(arrays[name], ref) if ref is not None else np.inf
            return f"{what} (not bit-identical: its SHA-256 differs from the compact keyframe's)", err
    return None
