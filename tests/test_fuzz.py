"""Fuzzing the two doors from disk (issue 14) with Hypothesis, on a bounded budget.

1. Scene files: valid scenes with hostile values put anywhere (wrong types, numbers beyond float32,
   NaN strings, deep nesting, unknown keys, long names, bad and dangerous paths) and hostile JSON text.
   `load_scene` loads them or raises SceneError, nothing else, and writes no file anywhere.
2. Recordings: a small real recording with bytes flipped, lines dropped, repeated, swapped or rewritten
   with valid checksums, meta.json fields replaced and files swapped for links out of the folder.
   `load_recording` (and reading its keyframes and thumbnails) loads it or raises RecordingError, nothing
   else, and opens no file outside the recording.

Opens and writes are watched with an audit hook (sys.addaudithook), which sees every `open` of Python,
NumPy, pillow and imageio. Examples are derandomized (the same every run) and no example database is
written; a failure prints the falsifying example.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from drstudio.renderer.errors import SceneError
from drstudio.renderer.loading import load_scene
from drstudio.renderer.recording import RecordingError, load_recording
from drstudio.renderer.recording import format as fmt
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_recording import LIGHT, SMALL, record_session, tiny_scene
from test_scene_errors import base, png_bytes

# No shrinking: a failure prints its draws, and the budget stays bounded (shrinking can take minutes).
# DRSTUDIO_FUZZ_SCALE=20 runs 20 times the examples, randomized (a longer local hunt).
SCALE = float(os.environ.get("DRSTUDIO_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=60, deadline=None, derandomize=SCALE == 1, database=None, print_blob=False,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


# ---- watching opens ---------------------------------------------------------------------------------

class Opens:
    """Paths opened while `watching` (an audit hook can never be removed, so it is installed once and
    records only inside the context)."""
    installed = False
    active: list | None = None

    @classmethod
    def hook(cls, event: str, args) -> None:
        if cls.active is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writes = any(c in mode for c in "wax+") or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            cls.active.append((os.path.abspath(path), writes))

    def __enter__(self) -> list:
        if not Opens.installed:
            sys.addaudithook(Opens.hook)
            Opens.installed = True
        Opens.active = []
        return Opens.active

    def __exit__(self, *exc) -> None:
        Opens.active = None


def _under(path: str, folder) -> bool:
    folder = os.path.abspath(folder)
    return path == folder or path.startswith(folder + os.sep)


def tree(folder: Path) -> dict:
    """Every entry under `folder` with its size and modification time (symbolic links not followed)."""
    out = {}
    for dirpath, dirnames, names in os.walk(folder):
        for n in dirnames + names:
            st_ = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), folder)] = (st_.st_size, st_.st_mtime_ns)
    return out


# ---- hostile values -----------------------------------------------------------------------------------

BAD_PATHS = ["../../outside.txt", "/etc/passwd", "/dev/zero", "/dev/urandom", "/proc/self/mem", "a\x00b.png",
             "dir.obj", "missing.obj", "~/x.png", "C:\\x.png", "x" * 300 + ".png", "." + "/" * 5, "", " ",
             "scene.json", "bad.obj", "trunc.png", "bomb.png", "float.tif", "link.png", "fifo.png", "t.png",
             "m.obj", "transforms.json", "nul.ply", "..", "/", "dir.obj/x.png", "%s%n.png", "\u202e.png"]
NUMBERS = [1e39, -1e39, 3.4028236e38, 1e308, 1e-300, 5e-324, 1e-46, 1.2e-38, 0.0, -0.0, -1, 2**31, 2**63,
           10**39, 10**400, 0.5, 1, 3]
scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(NUMBERS),
    st.integers(min_value=-(10**45), max_value=10**45),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "inf", "1", "1e39", "true", "0x10"]),
    st.text(max_size=12), st.sampled_from(BAD_PATHS),
    st.builds(lambda n: "n" * n, st.integers(200, 5000)),  # long names
)
KEYS = ["name", "type", "file", "albedo", "scale", "radius", "version", "meshes", "init", "perturb", "sigma",
        "extra", "__proto__", "", "a.b", "x" * 200]
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4),
                      max_leaves=12)


def nested(depth: int, leaf=0):
    for _ in range(depth):
        leaf = [leaf]
    return leaf


hostile = st.one_of(values, st.builds(nested, st.integers(60, 900)))


def locations(doc, parts=()) -> list[tuple]:
    """Every location in the JSON document (containers included)."""
    out = [parts]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += locations(v, parts + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += locations(v, parts + (i,))
    return out


def _at(doc, parts: tuple):
    for p in parts:
        doc = doc[p]
    return doc


def mutate(doc, data) -> dict:
    """1 to 4 edits of `doc` drawn from `data`: replace a value, delete a key, add a key, append an item."""
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        where = data.draw(st.sampled_from(locations(doc)), label="where")
        parent = doc
        for p in where[:-1]:
            parent = parent[p]
        target = parent[where[-1]] if where else doc
        op = data.draw(st.sampled_from(["replace", "number", "delete", "add", "append"]), label="op")
        if op == "number":  # a number where a number goes: values beyond float32, underflows, huge integers
            spots = [w for w in locations(doc) if w and isinstance(_at(doc, w), (int, float))
                     and not isinstance(_at(doc, w), bool)]
            if spots:
                spot = data.draw(st.sampled_from(spots), label="number at")
                _at(doc, spot[:-1])[spot[-1]] = data.draw(st.sampled_from(NUMBERS) | st.floats(allow_nan=False),
                                                          label="number")
        elif op == "replace" and where:
            parent[where[-1]] = data.draw(hostile, label="value")
        elif op == "delete" and where and isinstance(parent, dict):
            del parent[where[-1]]
        elif op == "add" and isinstance(target, dict):
            target[data.draw(st.sampled_from(KEYS) | st.text(max_size=8), label="key")] = data.draw(hostile)
        elif op == "append" and isinstance(target, list):
            target.append(copy.deepcopy(target[0]) if target and data.draw(st.booleans()) else data.draw(hostile))
    return doc


RAW_TEXTS = [b"", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"[" * 100000, b"{" * 3000 + b"}" * 3000,
             b'{"version": ' + b"9" * 5000 + b"}", b'{"version": 1e99999}', b'{"version": 1, "version": 1}',
             b"null", b"1", b'"scene"', b"[]", b'{"version": NaN}', b"\x00" * 64]


def with_assets(folder: Path) -> None:
    """Asset files, good and bad, that the fuzzed scenes may name."""
    (folder / "m.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\n")
    (folder / "bad.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 0 1 2\n")
    (folder / "nul.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99999999\n\x00")
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(folder / "t.png")
    (folder / "trunc.png").write_bytes(png_bytes(4000, 4000, 10))
    (folder / "bomb.png").write_bytes(png_bytes(30000, 30000, 1))
    Image.fromarray(np.full((4, 4), 50.0, np.float32), mode="F").save(folder / "float.tif")
    (folder / "dir.obj").mkdir()
    (folder / "link.png").symlink_to(folder.parent / "outside.txt")
    os.mkfifo(folder / "fifo.png")  # opening a FIFO for reading would block: the loader must not
    (folder / "transforms.json").write_text(json.dumps({"frames": [{"file_path": 5, "transform_matrix": 1}]}))


def check_loaded(scene) -> None:
    """What loads is what the renderer can use: every float32 value finite (a 1e39 became inf before),
    scales > 0 (1e-300 became 0), textures in their ranges."""
    for m in scene.meshes.values():
        for a in (m.vertices, m.uvs, m.colors, m.translation, m.rotation, m.scale):
            assert a.dtype == np.float32 and np.isfinite(a).all(), m
        assert (m.scale > 0).all() and len(m.faces) and 0 <= m.faces.min() and m.faces.max() < len(m.vertices)
    for mat in scene.materials.values():
        assert 0 <= mat.albedo.min() and mat.albedo.max() <= 1 and 0.02 <= mat.roughness.min()
        assert mat.roughness.max() <= 1 and 0 <= mat.metallic.min() and mat.metallic.max() <= 1
    for group in (scene.point_lights, scene.directional_lights, scene.ambient_lights, scene.cameras):
        for item in group.values():
            for v in vars(item).values():
                if isinstance(v, np.ndarray):
                    assert np.isfinite(v).all(), item
    for c in scene.cameras.values():
        assert (c.intrinsics[:2] > 0).all(), c
    assert np.isfinite(scene.background).all() and (scene.background >= 0).all()


@pytest.fixture(scope="module")
def warm_fields(fuzz_root):
    """Load a field scene once before watching: Warp's first launch compiles kernels into its cache."""
    folder = fuzz_root / "warm"
    folder.mkdir()
    (folder / "scene.json").write_text(json.dumps(field_base()))
    load_scene(folder / "scene.json")


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "outside.txt").write_text("a file outside every fuzzed folder")
    return root


def load_checked(root: Path, text: bytes) -> None:
    """Write the scene into a fresh folder of `root` with the assets, load it: a Scene or a SceneError,
    no file written or changed anywhere (audit hook, and the folder and the file outside unchanged)."""
    folder = Path(tempfile.mkdtemp(dir=root))
    with_assets(folder)
    (folder / "scene.json").write_bytes(text)
    before, outside = tree(root), (root / "outside.txt").read_bytes()
    with Opens() as opened:
        try:
            scene = load_scene(folder / "scene.json")
        except SceneError as e:
            assert "\n" not in str(e) and str(e).startswith(str(folder / "scene.json"))
        else:
            check_loaded(scene)
    written = [p for p, w in opened if w]
    assert written == [], written
    assert not any(p.endswith("fifo.png") for p, _ in opened)
    assert tree(root) == before and (root / "outside.txt").read_bytes() == outside
    shutil.rmtree(folder)


@settings(FUZZ, max_examples=examples(60))
@given(data=st.data())
def test_fuzzed_scene_values_load_or_raise_scene_error(fuzz_root, data):
    doc = mutate(base(), data)
    load_checked(fuzz_root, json.dumps(doc, allow_nan=True).encode())


def field_base() -> dict:
    """base() with a tiny voxel-grid field (loading builds its fresh grid with Warp)."""
    doc = base()
    doc["fields"] = [{"name": "f", "type": "voxel_grid", "resolution": 4, "aabb": [[-1, -1, -1], [1, 1, 1]],
                      "occupancy": {"resolution": 4}, "coarse_to_fine": {"start_resolution": 2, "upsample_at": [5]}}]
    doc["optimize"]["parameters"] = {"fields.f.density": {}, "fields.f.sh": {}}
    return doc


@settings(FUZZ, max_examples=examples(30))
@given(data=st.data())
def test_fuzzed_field_scene_values_load_or_raise_scene_error(fuzz_root, warm_fields, data):
    doc = mutate(field_base(), data)
    load_checked(fuzz_root, json.dumps(doc, allow_nan=True).encode())


@pytest.mark.parametrize("raw", RAW_TEXTS, ids=range(len(RAW_TEXTS)))
def test_hostile_scene_text_loads_or_raises_scene_error(fuzz_root, raw):
    load_checked(fuzz_root, raw)


@settings(FUZZ, max_examples=examples(30))
@given(raw=st.binary(max_size=200), cut=st.integers(0, 2000))
def test_fuzzed_scene_text_loads_or_raises_scene_error(fuzz_root, raw, cut):
    valid = json.dumps(base()).encode()
    load_checked(fuzz_root, raw if raw else valid[:cut])


# ---- recordings -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzrec")
    scene = tiny_scene(root / "scene", size=12)
    record_session(root / "rec", scene, steps=6, edits=[(3, "set_lr", (LIGHT, 0.1))], options=SMALL)
    (root / "outside.txt").write_text("a file outside the recording")
    return root


def recording_files(rec: Path) -> list[str]:
    return sorted(str(p.relative_to(rec)) for p in rec.rglob("*") if p.is_file())


def _flip_bytes(path: Path, data) -> None:
    raw = bytearray(path.read_bytes())
    if not raw:
        return
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        i = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[i] = data.draw(st.integers(0, 255), label="byte")
    path.write_bytes(bytes(raw))


def _edit_log(path: Path, data) -> None:
    lines = path.read_bytes().split(b"\n")[:-1]
    for _ in range(data.draw(st.integers(1, 4), label="line edits")):
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        op = data.draw(st.sampled_from(["drop", "repeat", "swap", "field", "cut"]), label="line op")
        if op == "drop":
            del lines[i]
        elif op == "repeat":
            lines.insert(i, lines[i])
        elif op == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif op == "cut":
            lines[i] = lines[i][:data.draw(st.integers(0, len(lines[i])))]
        elif op == "field":  # a checksummed record with a hostile field: an edit, not damage
            rec = fmt.decode_line(lines[i])
            if rec is None:
                continue
            key = data.draw(st.sampled_from(sorted(rec) + ["file", "target", "files", "at", "seq"]), label="field")
            rec[key] = data.draw(hostile, label="value")
            try:
                lines[i] = fmt.encode_record(rec)[:-1]
            except (ValueError, TypeError):  # not JSON-encodable (a NaN): leave the line
                pass
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _edit_meta(path: Path, data) -> None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # bytes flipped before: the reader's problem, not this edit's
        return
    spots = [w for w in locations(meta) if w]
    if not spots:
        return
    where = data.draw(st.sampled_from(spots), label="meta field")
    parent = meta
    for p in where[:-1]:
        parent = parent[p]
    parent[where[-1]] = data.draw(hostile | st.sampled_from(BAD_PATHS), label="value")
    path.write_text(json.dumps(meta, allow_nan=True))


def _link_out(rec: Path, rel: str, outside: Path) -> None:
    (rec / rel).unlink()
    (rec / rel).symlink_to(outside)


@settings(FUZZ, max_examples=examples(80))
@given(data=st.data())
def test_fuzzed_recordings_load_or_raise_recording_error(recording, data):
    work = Path(tempfile.mkdtemp(dir=recording)) / "rec"
    shutil.copytree(recording / "rec", work)
    outside = recording / "outside.txt"
    files = recording_files(work)
    links = []
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        kind = data.draw(st.sampled_from(["bytes", "log", "meta", "link"]), label="mutation")
        if kind == "bytes":
            _flip_bytes(work / data.draw(st.sampled_from(files), label="file"), data)
        elif kind == "log":
            _edit_log(work / fmt.LOG_FILE, data)
        elif kind == "meta":
            _edit_meta(work / fmt.META_FILE, data)
        else:
            links.append(data.draw(st.sampled_from(files), label="linked"))
    for rel in set(links):  # last, so that no edit above writes through a link
        _link_out(work, rel, outside)
    with Opens() as opened:
        try:
            rec = load_recording(work, quiet=True)
        except RecordingError:
            rec = None
        if rec is not None:
            rec.history()
            rec.summary()
            for at in list(rec.keyframes):
                try:
                    rec.keyframe(at)
                except RecordingError:
                    pass
            for t in list(rec.thumbs.values()):
                for rel in (t["file"], t["target"]):
                    try:
                        rec.image(rel)
                    except RecordingError:
                        pass
    read = sorted({p for p, _ in opened if not _under(p, work) and _under(p, recording)})
    assert read == [], f"opened outside the recording: {read}"
    assert not any(p.startswith(("/etc", "/proc", "/dev")) for p, _ in opened), opened
    assert not any(w for _, w in opened), [p for p, w in opened if w]
    assert outside.read_text() == "a file outside the recording"
    shutil.rmtree(work.parent)
