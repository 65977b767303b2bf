"""The on-disk format of a recording (version 3; docs/recording.md is the user-facing description).

A recording is a directory:

  meta.json               what was recorded: format name and version, versions, device, seed, options,
                          the scene copy and its hashes, the parent recording of a resumed session
  scene/                  a copy of the scene file and every file it references (paths kept relative)
  events.jsonl            the append-only event log: one record per line, `CRC32 JSON\\n`
  keyframes/<at>_<n>.npz  optimization state at timeline position `at` (written atomically; n counts
                          the keyframes at that position, the last logged one holds; start.npz: the start),
                          full (lossless, uncompressed) or compact (display precision + digests, deflated)
  thumbs/r<at>_<n>.png    the active view's render at `at`; thumbs/t_<view>_<n>.png its target

A log line is the 8 hex digits of the CRC-32 of the JSON text, one space, the JSON text (one object,
no newline inside) and a newline. A line without its newline (a torn write) or whose CRC does not
match is not a record; every record carries `seq` (0, 1, 2, ...) so a lost line shows as a gap.
Arrays inside records are `{"dtype", "shape", "data"}` (a list, exact for float32) or
`{"dtype", "shape", "b64"}` (little-endian bytes, base64) for more than `INLINE_ARRAY_MAX` elements.
"""

from __future__ import annotations

import base64
import json
import math
import zlib

import numpy as np

from ..optim import commands as _commands

FORMAT_NAME = "drstudio-recording"
# 3: keyframes are compressed .npz files, full or compact (float16 values and SHA-256 digests of the exact
#    state; renderer.recording.state), with "encoding" in their state.json and log record.
# 2: command records are the typed commands of renderer.optim.commands (same "kind"/"args" fields) and
#    may carry "rejected" (the engine refused it; nothing changed; re-execution must refuse it too).
# 1: the first format; it reads unchanged (it has no refused commands).
FORMAT_VERSION = 3

META_FILE = "meta.json"
LOG_FILE = "events.jsonl"
SCENE_DIR = "scene"
KEYFRAME_DIR = "keyframes"
THUMB_DIR = "thumbs"

INLINE_ARRAY_MAX = 64

# Commands that change what the optimizer computes: each one is followed by an edit keyframe and is
# shown as a marker on the replay timeline. The others (start, pause, resume, stop, step,
# set_active_view) only change when and what is displayed.
EDIT_COMMANDS = tuple(k for k, c in _commands.COMMANDS.items() if c.edits)
CONTROL_COMMANDS = tuple(k for k, c in _commands.COMMANDS.items() if not c.edits)


class RecordingError(ValueError):
    """A directory that is not a usable recording (missing, not a recording, unreadable meta)."""


class RecordingVersionError(RecordingError):
    """A recording written by a newer format version than this drstudio reads."""


# ---- JSON values ----------------------------------------------------------------------------------

def to_json(x):
    """A JSON-safe copy of `x`: NumPy arrays become array objects, NumPy scalars Python numbers,
    tuples lists, non-finite floats the strings "nan", "inf", "-inf"."""
    if isinstance(x, np.ndarray):
        return encode_array(x)
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isfinite(x):
            return x
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def from_json(x):
    """Inverse of `to_json` for array objects (other values are returned as stored)."""
    if isinstance(x, dict):
        if "dtype" in x and "shape" in x and ("data" in x or "b64" in x):
            return decode_array(x)
        return {k: from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_json(v) for v in x]
    return x


def number(x) -> float:
    """A float stored by `to_json` (a number or "nan"/"inf"/"-inf"); None -> nan."""
    if x is None:
        return math.nan
    return float(x)


def encode_array(a: np.ndarray) -> dict:
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"array: expected a numeric or bool dtype, got {a.dtype}")
    out = {"dtype": a.dtype.str.lstrip("<>|="), "shape": list(a.shape)}
    if a.size <= INLINE_ARRAY_MAX and (a.dtype.kind != "f" or np.isfinite(a).all()):
        out["data"] = a.reshape(-1).tolist()
    else:
        out["b64"] = base64.b64encode(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()).decode("ascii")
    return out


def decode_array(d: dict) -> np.ndarray:
    dtype = np.dtype(d["dtype"]).newbyteorder("<")
    shape = tuple(int(s) for s in d["shape"])
    if "data" in d:
        return np.asarray(d["data"], dtype).reshape(shape).astype(dtype.newbyteorder("="))
    raw = base64.b64decode(d["b64"])
    return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))


# ---- log lines ------------------------------------------------------------------------------------

def encode_record(record: dict) -> bytes:
    """One log line (bytes, newline included) for a record that is already JSON-safe."""
    text = json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(text), text)


def decode_line(line: bytes) -> dict | None:
    """The record of one complete line (without its newline), or None if it is damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    text = line[9:]
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    if zlib.crc32(text) != crc:
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, a 5000-digit integer, 100,000-deep nesting
        return None
    return record if isinstance(record, dict) else None


def file_crc32(path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc
