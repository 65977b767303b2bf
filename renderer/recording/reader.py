"""`load_recording(dir) -> Recording`: read a recording, keeping what is intact and saying what is not.

Refused (RecordingError): a folder without a readable meta.json, or of another format; a file name in
meta.json, the log or the scene copy that leads outside the recording folder (absolute, `..`, a symbolic
link out); a scene copy whose `files` hashes do not cover the scene file and every file it references.
Refused (RecordingVersionError): a recording of a newer format version. Everything else loads:
- a torn last line (the process was killed mid-write) is dropped;
- damaged lines (CRC mismatch) and records of the wrong shape (a field of the wrong type) are skipped;
- gaps in the record sequence are reported; a record whose `seq` repeats an earlier one is skipped (the
  first is kept); records out of sequence order are put back in order (the writer appends them in order,
  so either is a log that was edited or concatenated);
- keyframes and thumbnails the log names but that are missing or of the wrong size are left out
  (a keyframe's CRC is checked when it is read);
- a recording without its `end` record (killed, crashed) ends at its last complete record.
Each of these adds one line to `Recording.warnings`, which names what was cut.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from ..conventions import srgb_to_linear
from . import format as fmt
from .scenecopy import is_inside, referenced_files
from .state import Keyframe

log = logging.getLogger("drstudio.recording")


def load_recording(directory, *, quiet: bool = False) -> Recording:
    """Load the recording in `directory` (see the module docstring). Warnings are also logged unless
    `quiet`."""
    rec = Recording(Path(directory))
    if not quiet:
        for w in rec.warnings:
            log.warning("recording %s: %s", rec.path, w)
    return rec


class Recording:
    """A loaded recording. Timeline positions (`at`) count the steps of the session (see
    `renderer.recording.writer`); `first_at`..`last_at` is the span recorded.

    Attributes: `path`, `meta` (meta.json), `version`, `records` (every intact log record in order),
    `warnings` (what was cut or damaged), `closed` (the `end` record is present), `steps` (at -> step
    record), `commands` (command records in order), `edits` (the commands that change the
    optimization: `format.EDIT_COMMANDS`), `keyframes` (at -> keyframe record, files present),
    `thumbs` (at -> thumbnail record, files present)."""

    def __init__(self, path: Path):
        self.path = path
        self.warnings: list[str] = []
        if not path.is_dir():
            raise fmt.RecordingError(f"{path}: no such recording folder")
        self.meta = self._read_meta()
        self.version = int(self.meta["version"])
        self._check_scene_copy()
        self.records = self._read_log()
        self.closed = any(r.get("type") == "end" for r in self.records)
        self._index()

    def entry(self, rel, what: str) -> Path:
        """`self.path / rel` for a file name the recording holds (`what` names where, for the error).
        RecordingError unless it is a relative name without `..` that stays inside the folder with
        symbolic links resolved: nothing a recording names is read from outside it."""
        if not isinstance(rel, str) or not rel or "\0" in rel:
            raise fmt.RecordingError(f"{self.path}: {what}: expected a file name inside the recording, got {rel!r}")
        parts = rel.replace("\\", "/").split("/")
        if rel.startswith(("/", "\\")) or Path(rel).is_absolute() or ".." in parts:
            raise fmt.RecordingError(f"{self.path}: {what}: {rel!r} is outside the recording folder (a file name "
                                     f"in a recording is relative, without '..')")
        if not is_inside(self.path / rel, self.path):
            raise fmt.RecordingError(f"{self.path}: {what}: {rel!r} leads outside the recording folder (through a "
                                     f"symbolic link)")
        return self.path / rel

    def _check_scene_copy(self) -> None:
        """The scene copy's file names stay inside the recording, and its hashes cover the scene file and
        every file the scene names (scenecopy.referenced_files), so `build_problem` checks them all."""
        scene = self.meta.get("scene")
        if scene is None:
            return
        where = f"{fmt.META_FILE}: scene"
        files = scene.get("files") if isinstance(scene, dict) else None
        if (not isinstance(scene, dict) or not isinstance(files, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
            raise fmt.RecordingError(f"{self.path}: {where}: expected null or {{\"file\": name, \"files\": "
                                     f"{{name: sha256}}, ...}}")
        for rel in files:
            self.entry(rel, f"{where}.files")
        scene_file = self.entry(scene.get("file"), f"{where}.file")
        rel = scene["file"]
        if rel not in files:
            raise fmt.RecordingError(f"{self.path}: {where}.files does not list the scene file {rel!r}: the "
                                     f"scene copy's content could not be checked")
        if not scene_file.is_file():
            return  # build_problem reports it missing
        for named, path in referenced_files(scene_file, self.path):
            if not is_inside(path, self.path):
                raise fmt.RecordingError(f"{self.path}: scene copy {named}: {path} is outside the recording "
                                         f"folder (a scene copy names files inside it)")
            rel = Path(os.path.relpath(path, self.path)).as_posix()
            if rel not in files and path.exists():
                raise fmt.RecordingError(f"{self.path}: {where}.files does not list {rel}, which scene copy "
                                         f"{named} names: its content hash would not be checked")

    # -- loading ---------------------------------------------------------------------------------------
    def _read_meta(self) -> dict:
        file = self.path / fmt.META_FILE
        if not file.is_file():
            raise fmt.RecordingError(f"{self.path}: not a drstudio recording (no {fmt.META_FILE}; a process killed "
                                     f"before the recording started leaves none)")
        self.entry(fmt.META_FILE, fmt.META_FILE)
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
        except RecursionError:
            raise fmt.RecordingError(f"{file}: unreadable (nested too deeply)") from None
        except (OSError, ValueError) as exc:  # not UTF-8, not JSON, an integer of too many digits
            raise fmt.RecordingError(f"{file}: unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != fmt.FORMAT_NAME:
            raise fmt.RecordingError(f"{file}: not a drstudio recording (format "
                                     f"{_short(meta.get('format')) if isinstance(meta, dict) else None}, expected "
                                     f"{fmt.FORMAT_NAME!r})")
        version = meta.get("version")
        if not _is_int(version) or version < 1:
            raise fmt.RecordingError(f"{file}: invalid format version {version!r}")
        if version > fmt.FORMAT_VERSION:
            versions = meta.get("versions")
            by = versions.get("drstudio", "a newer drstudio") if isinstance(versions, dict) else "a newer drstudio"
            raise fmt.RecordingVersionError(
                f"{self.path}: recording format version {version} (written by drstudio {by}) is newer than the "
                f"versions this drstudio reads (up to {fmt.FORMAT_VERSION}); upgrade drstudio to open it")
        start = meta.get("start", {})
        needed = ("steps",) if meta.get("scene") is not None else ()  # what build_problem reads
        if (not isinstance(start, dict) or not all(_is_int(start.get(k, 0)) for k in ("at", "step", "steps"))
                or not all(k in start for k in needed)):
            raise fmt.RecordingError(f"{file}: start: expected {{\"at\": int, \"step\": int, \"steps\": int, ...}}, "
                                     f"got {_short(start)}")
        parent = meta.get("parent")
        if parent is not None and not (isinstance(parent, dict) and _is_int(parent.get("at"))
                                       and isinstance(parent.get("path"), str)):
            raise fmt.RecordingError(f"{file}: parent: expected null or {{\"path\", \"at\": int, ...}}, got "
                                     f"{_short(parent)}")
        if not _is_int(meta.get("seed", 0)) or (meta.get("scene") is not None and "seed" not in meta):
            raise fmt.RecordingError(f"{file}: seed: expected an integer, got {_short(meta.get('seed'))}")
        return meta

    def _read_log(self) -> list[dict]:
        file = self.path / fmt.LOG_FILE
        self.damaged_lines = self.sequence_problems = 0
        if not file.is_file():
            self.warnings.append(f"{fmt.LOG_FILE} is missing: nothing was recorded after the start")
            return []
        self.entry(fmt.LOG_FILE, fmt.LOG_FILE)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise fmt.RecordingError(f"{file}: unreadable ({exc})") from None
        lines = data.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: empty unless the last write was torn
        records, damaged, malformed = [], [], []
        first_line: dict[int, int] = {}  # seq -> line
        repeats, disorder = [], []
        for number, line in enumerate(lines, start=1):
            rec = fmt.decode_line(line)
            if rec is None:
                damaged.append(number)
                continue
            problem = _record_problem(rec)
            if problem:
                malformed.append((number, problem))
                continue
            seq = rec["seq"]
            if seq in first_line:
                repeats.append((seq, number, first_line[seq]))
                continue
            if records and seq < records[-1]["seq"]:
                disorder.append((seq, number, records[-1]["seq"]))
            first_line[seq] = number
            records.append(rec)
        self.damaged_lines = len(damaged)
        for first, last in _runs(damaged):
            where = f"line {first}" if first == last else f"lines {first}-{last}"
            self.warnings.append(f"{fmt.LOG_FILE}: {where} damaged (checksum mismatch), skipped")
        for number, problem in malformed[:3]:
            self.warnings.append(f"{fmt.LOG_FILE}: line {number} is not a valid record ({problem}), skipped")
        if len(malformed) > 3:
            self.warnings.append(f"{fmt.LOG_FILE}: {len(malformed) - 3} more lines are not valid records, skipped")
        if repeats:
            seq, number, first = repeats[0]
            more = f" and {len(repeats) - 1} more" if len(repeats) > 1 else ""
            self.warnings.append(f"{fmt.LOG_FILE}: record {seq} at line {number} repeats the sequence number of line "
                                 f"{first}{more}; the repeats were skipped (the first is kept)")
        if disorder:
            seq, number, prev = disorder[0]
            more = f" and {len(disorder) - 1} more" if len(disorder) > 1 else ""
            self.warnings.append(f"{fmt.LOG_FILE}: record {seq} at line {number} comes after record {prev}{more} "
                                 f"(out of sequence order); the records are read in sequence order")
            records.sort(key=lambda r: r["seq"])
        self.sequence_problems = len(repeats) + len(disorder)
        expected = 0
        for rec in records:
            if rec["seq"] > expected:
                gap = f"record {expected}" if rec["seq"] == expected + 1 else f"records {expected}-{rec['seq'] - 1}"
                self.warnings.append(f"{fmt.LOG_FILE}: {gap} missing before timeline position {rec.get('at')}")
            expected = max(expected, rec["seq"] + 1)
        if tail:
            last_at = records[-1].get("at") if records else self.meta.get("start", {}).get("at", 0)
            self.warnings.append(f"{fmt.LOG_FILE}: the last record is incomplete ({len(tail)} bytes cut by an "
                                 f"interrupted write) and was dropped; the recording ends at timeline position "
                                 f"{last_at}")
        return records

    def _index(self) -> None:
        start = self.meta.get("start", {})
        self.first_at = int(start.get("at", 0))
        self.steps: dict[int, dict] = {}
        self.commands: list[dict] = []
        keyframes: dict[int, dict] = {}  # at -> the last keyframe record there (files are never overwritten)
        thumbs: dict[int, dict] = {}
        start_kf = None
        pruned: set[str] = set()
        last_at = self.first_at
        for rec in self.records:
            kind = rec["type"]
            at = rec["at"]
            if kind in ("keyframe", "thumb"):
                what = f"{fmt.LOG_FILE}: record {rec['seq']} ({kind} at {at})"
                self.entry(rec["file"], f"{what}: file")
                if kind == "thumb":
                    self.entry(rec["target"], f"{what}: target")
            if kind == "step":
                self.steps[at] = rec
                last_at = max(last_at, at + 1)
            elif kind == "command":
                self.commands.append(rec)
            elif kind == "keyframe":
                if rec.get("reason") == "start":
                    start_kf = rec
                else:
                    keyframes[at] = rec
            elif kind == "thumb":
                thumbs[at] = rec
            elif kind == "pruned":
                pruned.update(rec.get("files", []))
            last_at = max(last_at, at)
        self.last_at = last_at
        self.edits = [c for c in self.commands if c.get("kind") in fmt.EDIT_COMMANDS]
        self.start_keyframe: dict | None = None  # the state before any recorded command
        if start_kf is not None:
            problem = self._check_file(start_kf["file"], start_kf.get("bytes"))
            if problem:
                self.warnings.append(f"start keyframe: {problem}; left out")
            else:
                self.start_keyframe = start_kf
                keyframes.setdefault(int(start_kf["at"]), start_kf)  # unless an edit at the start follows it
        self.keyframes: dict[int, dict] = {}
        for at, rec in keyframes.items():
            if rec["file"] in pruned:
                continue
            problem = self._check_file(rec["file"], rec.get("bytes"))
            if problem:
                self.warnings.append(f"keyframe at {at}: {problem}; left out")
            else:
                self.keyframes[at] = rec
        self.thumbs: dict[int, dict] = {}
        for at, rec in thumbs.items():
            if rec["file"] in pruned:
                continue
            problem = self._check_file(rec["file"], rec.get("bytes")) or self._check_file(rec["target"], None)
            if problem:
                self.warnings.append(f"thumbnail at {at}: {problem}; left out")
            else:
                self.thumbs[at] = rec
        self.keyframes = dict(sorted(self.keyframes.items()))
        self.thumbs = dict(sorted(self.thumbs.items()))
        missing_steps = (self.last_at - self.first_at) - len(self.steps)
        if missing_steps > 0:
            self.warnings.append(f"{missing_steps} step records missing: their losses are shown as gaps")
        leftovers = [p.name for d in (fmt.KEYFRAME_DIR, fmt.THUMB_DIR)
                     if is_inside(self.path / d, self.path) and (self.path / d).is_dir()
                     for p in (self.path / d).iterdir() if p.name.startswith(".")]
        if leftovers:
            self.warnings.append(f"{len(leftovers)} temporary file(s) of interrupted writes ignored")
        if not self.closed:
            self.warnings.append(f"no end record: the recording process stopped without closing it (killed or "
                                 f"crashed); it ends at timeline position {self.last_at} after "
                                 f"{len(self.steps)} recorded steps")
        self._kf_cache: dict[str, Keyframe] = {}
        self._image_cache: dict[str, np.ndarray] = {}

    def _check_file(self, rel: str, size) -> str:
        if not rel:
            return "no file named"
        file = self.path / rel
        if not file.is_file():
            return f"{rel} is missing"
        if size is not None and file.stat().st_size != int(size):
            return f"{rel} has {file.stat().st_size} bytes, the log says {size} (damaged)"
        return ""

    def log_state(self) -> str:
        """Why the log has no step records (for refusing to verify or replay nothing), or a count."""
        file = self.path / fmt.LOG_FILE
        if not file.is_file():
            return f"{fmt.LOG_FILE} is missing"
        if not self.records:
            if self.damaged_lines:
                return (f"{fmt.LOG_FILE} is unreadable: none of its {self.damaged_lines} lines is an intact record "
                        f"(not a drstudio log, or damaged)")
            return f"{fmt.LOG_FILE} holds no record" + (" (it is empty)" if file.stat().st_size == 0 else "")
        return f"{fmt.LOG_FILE} holds {len(self.records)} records and {len(self.steps)} step records"

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def scene_file(self) -> Path | None:
        """The copied scene file (None when the session's scene was not loaded from a file)."""
        scene = self.meta.get("scene")
        return self.path / scene["file"] if scene else None

    @property
    def parent(self) -> dict | None:
        """{"path", "at", ...} of the recording this session was resumed from, or None."""
        return self.meta.get("parent")

    @property
    def step_positions(self) -> np.ndarray:
        """Timeline positions of the recorded steps, sorted."""
        return np.array(sorted(self.steps), np.int64)

    def history(self, upto: int | None = None) -> dict[str, np.ndarray]:
        """Per-step series for the steps taken before position `upto` (all when None), indexed by
        `at - first_at`, NaN where a record is missing: "loss", "loss.<term>", "grad.<path>" (the
        engine's `Snapshot.history` names), "dt" (seconds per step) and "applied" (1.0 or 0.0)."""
        end = self.last_at if upto is None else max(self.first_at, min(int(upto), self.last_at))
        n = end - self.first_at
        out: dict[str, np.ndarray] = {"loss": np.full(n, np.nan), "dt": np.full(n, np.nan),
                                      "applied": np.full(n, np.nan)}
        for at in range(self.first_at, end):
            rec = self.steps.get(at)
            if rec is None:
                continue
            i = at - self.first_at
            out["loss"][i] = fmt.number(rec.get("loss"))
            out["dt"][i] = fmt.number(rec.get("dt"))
            out["applied"][i] = 1.0 if rec.get("applied", True) else 0.0
            for name, v in rec.get("terms", {}).items():
                out.setdefault(f"loss.{name}", np.full(n, np.nan))[i] = fmt.number(v)
            for path, v in rec.get("grads", {}).items():
                out.setdefault(f"grad.{path}", np.full(n, np.nan))[i] = fmt.number(v)
        return out

    def keyframe_at_or_before(self, at: int) -> int | None:
        """The position of the latest keyframe at or before `at`, or None."""
        best = None
        for k in self.keyframes:
            if k <= at:
                best = k
        return best

    def keyframe(self, at: int | dict) -> Keyframe:
        """The keyframe at position `at`, or of a keyframe record (RecordingError if there is none or its
        file is damaged). At a position with several (the start, then edits) it is the last one."""
        rec = at if isinstance(at, dict) else self.keyframes.get(at)
        if rec is None:
            near = ", ".join(str(k) for k in self.keyframes) or "none"
            raise fmt.RecordingError(f"{self.path}: no keyframe at step {at}; keyframes at: {near}")
        key = rec["file"]
        if key in self._kf_cache:
            return self._kf_cache[key]
        file = self.entry(rec["file"], f"keyframe at {rec.get('at')}")
        crc = rec.get("crc32")
        if crc is not None and fmt.file_crc32(file) != int(crc):
            msg = f"keyframe at {rec['at']}: {rec['file']} is damaged (checksum mismatch)"
            if msg not in self.warnings:
                self.warnings.append(msg)
            raise fmt.RecordingError(f"{self.path}: {msg}")
        try:
            kf = Keyframe.read(file)
        except (OSError, ValueError, KeyError, zlib.error) as exc:
            raise fmt.RecordingError(f"{self.path}: keyframe at {rec['at']}: {rec['file']} unreadable "
                                     f"({exc})") from None
        if len(self._kf_cache) > 8:
            self._kf_cache.pop(next(iter(self._kf_cache)))
        self._kf_cache[key] = kf
        return kf

    def thumbnail_at_or_before(self, at: int) -> dict | None:
        """The latest thumbnail record at or before `at` (None before the first one)."""
        best = None
        for k, rec in self.thumbs.items():
            if k <= at:
                best = rec
        return best

    def image(self, rel: str) -> np.ndarray:
        """A thumbnail PNG of the recording as (h, w, 3) float32 linear RGB (cached)."""
        img = self._image_cache.get(rel)
        if img is None:
            file = self.entry(rel, "thumbnail")
            try:
                data = np.asarray(iio.imread(file, plugin="pillow"))  # thumbnails are PNGs: no format guessing
            except Exception as exc:  # imageio raises many types for damaged images
                raise fmt.RecordingError(f"{self.path}: thumbnail {rel} unreadable ({type(exc).__name__}: "
                                         f"{exc})") from None
            if data.ndim == 2:
                data = np.repeat(data[..., None], 3, axis=2)
            if data.ndim != 3 or data.dtype != np.uint8:
                raise fmt.RecordingError(f"{self.path}: thumbnail {rel} is not an 8-bit image (shape {data.shape}, "
                                         f"{data.dtype})")
            img = srgb_to_linear(data[..., :3] / 255.0).astype(np.float32)
            if len(self._image_cache) > 64:
                self._image_cache.pop(next(iter(self._image_cache)))
            self._image_cache[rel] = img
        return img

    def disk_bytes(self) -> int:
        """Bytes of the files in the folder (symbolic links are not followed)."""
        total = 0
        for folder, _, names in os.walk(self.path):
            total += sum(os.lstat(os.path.join(folder, n)).st_size for n in names)
        return total

    def summary(self) -> str:
        h = self.history()
        finite = h["loss"][np.isfinite(h["loss"])]
        loss = f", loss {finite[0]:.4g} -> {finite[-1]:.4g}" if finite.size else ""
        parent = f", resumed from {self.parent['path']} at {self.parent['at']}" if self.parent else ""
        return (f"{self.path}: steps {self.first_at}..{self.last_at} ({len(self.steps)} recorded{loss}), "
                f"{len(self.edits)} edits, {len(self.keyframes)} keyframes, {len(self.thumbs)} thumbnails, "
                f"{self.disk_bytes() / 1e6:.1f} MB, format v{self.version}{parent}"
                f"{'' if self.closed else ' (not closed)'}")


def _runs(numbers: list[int]):
    """Consecutive runs of sorted integers as (first, last) pairs."""
    start = prev = None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            yield start, prev
            start = prev = n
    if start is not None:
        yield start, prev



def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(x) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(x) -> bool:
    """A number as `format.to_json` stores it: a JSON number, or "nan", "inf", "-inf"."""
    return (isinstance(x, (int, float)) and not isinstance(x, bool) and (not isinstance(x, float) or math.isfinite(x))
            or x in ("nan", "inf", "-inf"))


def _record_problem(rec: dict) -> str:
    """What makes an intact (checksummed) log line not a record this reader can use ("" if nothing): the
    fields every record has, and those of each type that the reader reads."""
    if not _is_int(rec.get("seq")) or rec["seq"] < 0:
        return f"seq: expected an integer >= 0, got {_short(rec.get('seq'))}"
    if not isinstance(rec.get("type"), str):
        return f"type: expected a string, got {_short(rec.get('type'))}"
    if not _is_int(rec.get("at")) or rec["at"] < 0:
        return f"at: expected an integer >= 0, got {_short(rec.get('at'))}"
    kind = rec["type"]
    checks = []
    if kind == "step":
        checks = [("loss", _is_number(rec.get("loss", "nan"))), ("dt", _is_number(rec.get("dt", "nan"))),
                  ("applied", isinstance(rec.get("applied", True), bool))]
        for key in ("terms", "grads"):
            d = rec.get(key, {})
            checks.append((key, isinstance(d, dict) and all(_is_number(v) for v in d.values())))
    elif kind == "command":
        checks = [("kind", isinstance(rec.get("kind"), str)), ("args", isinstance(rec.get("args", []), list))]
    elif kind in ("keyframe", "thumb"):
        checks = [("file", isinstance(rec.get("file"), str)),
                  ("bytes", rec.get("bytes") is None or _is_int(rec["bytes"]) and rec["bytes"] >= 0)]
        if kind == "keyframe":
            checks.append(("crc32", rec.get("crc32") is None or _is_int(rec["crc32"])))
        else:
            checks.append(("target", isinstance(rec.get("target"), str)))
    elif kind == "pruned":
        files = rec.get("files", [])
        checks = [("files", isinstance(files, list) and all(isinstance(f, str) for f in files))]
    bad = [key for key, ok in checks if not ok]
    return f"{kind} record: {', '.join(bad)} of the wrong type" if bad else ""
