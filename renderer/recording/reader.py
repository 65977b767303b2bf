"""`load_recording(dir) -> Recording`: read a recording, keeping what is intact and saying what is not.

Refused (RecordingError): a folder without a readable meta.json, or of another format. Refused
(RecordingVersionError): a recording of a newer format version. Everything else loads:
- a torn last line (the process was killed mid-write) is dropped;
- damaged lines (CRC mismatch) and gaps in the record sequence are skipped;
- keyframes and thumbnails the log names but that are missing or of the wrong size are left out
  (a keyframe's CRC is checked when it is read);
- a recording without its `end` record (killed, crashed) ends at its last complete record.
Each of these adds one line to `Recording.warnings`, which names what was cut.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from ..conventions import srgb_to_linear
from . import format as fmt
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
        self.records = self._read_log()
        self.closed = any(r.get("type") == "end" for r in self.records)
        self._index()

    # -- loading ---------------------------------------------------------------------------------------
    def _read_meta(self) -> dict:
        file = self.path / fmt.META_FILE
        if not file.is_file():
            raise fmt.RecordingError(f"{self.path}: not a drstudio recording (no {fmt.META_FILE}; a process killed "
                                     f"before the recording started leaves none)")
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise fmt.RecordingError(f"{file}: unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != fmt.FORMAT_NAME:
            raise fmt.RecordingError(f"{file}: not a drstudio recording (format "
                                     f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected "
                                     f"{fmt.FORMAT_NAME!r})")
        version = meta.get("version")
        if not isinstance(version, int) or version < 1:
            raise fmt.RecordingError(f"{file}: invalid format version {version!r}")
        if version > fmt.FORMAT_VERSION:
            by = meta.get("versions", {}).get("drstudio", "a newer drstudio")
            raise fmt.RecordingVersionError(
                f"{self.path}: recording format version {version} (written by drstudio {by}) is newer than the "
                f"versions this drstudio reads (up to {fmt.FORMAT_VERSION}); upgrade drstudio to open it")
        return meta

    def _read_log(self) -> list[dict]:
        file = self.path / fmt.LOG_FILE
        if not file.is_file():
            self.warnings.append(f"{fmt.LOG_FILE} is missing: nothing was recorded after the start")
            return []
        data = file.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: empty unless the last write was torn
        records, damaged = [], []
        for number, line in enumerate(lines, start=1):
            rec = fmt.decode_line(line)
            if rec is None or not isinstance(rec.get("seq"), int) or "type" not in rec:
                damaged.append(number)
            else:
                records.append(rec)
        for first, last in _runs(damaged):
            where = f"line {first}" if first == last else f"lines {first}-{last}"
            self.warnings.append(f"{fmt.LOG_FILE}: {where} damaged (checksum mismatch), skipped")
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
            at = int(rec.get("at", last_at))
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
            problem = self._check_file(rec["file"], rec.get("bytes")) or self._check_file(rec.get("target", ""), None)
            if problem:
                self.warnings.append(f"thumbnail at {at}: {problem}; left out")
            else:
                self.thumbs[at] = rec
        self.keyframes = dict(sorted(self.keyframes.items()))
        self.thumbs = dict(sorted(self.thumbs.items()))
        missing_steps = (self.last_at - self.first_at) - len(self.steps)
        if missing_steps > 0:
            self.warnings.append(f"{missing_steps} step records missing: their losses are shown as gaps")
        leftovers = [p.name for d in (fmt.KEYFRAME_DIR, fmt.THUMB_DIR) if (self.path / d).is_dir()
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
        file = self.path / rec["file"]
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
            data = iio.imread(self.path / rel)
            img = srgb_to_linear(np.asarray(data)[..., :3] / 255.0).astype(np.float32)
            if len(self._image_cache) > 64:
                self._image_cache.pop(next(iter(self._image_cache)))
            self._image_cache[rel] = img
        return img

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

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

