"""Disk size of a recorded radiance-field run (issue 13 item 7: compact keyframes).

    python -m benchmarks.recording_size scenes/nerf_grid.json --steps 600
    python -m benchmarks.recording_size scenes/nerf_grid.json --steps 300 --resolution 128 --sh-degree 1

Records `--steps` steps through the engine (`renderer.recording.bench.run`, default RecorderOptions, or
`--keyframes full`) and prints every keyframe (position, encoding, bytes), the recording's size on disk
and the raw (uncompressed float32) size its keyframes would have had. `--resolution/--sh-degree` write a
variant of the scene (the field's final lattice, coarse-to-fine from half of it until step 100) next to it
in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from drstudio.renderer.recording import RecorderOptions, load_recording
from drstudio.renderer.recording.bench import run


def variant(scene: Path, folder: Path, resolution: int, sh_degree: int) -> Path:
    doc = json.loads(scene.read_text())
    for m in doc.get("materials", []):  # asset paths made absolute: the variant lives elsewhere
        for k, v in list(m.items()):
            if isinstance(v, str) and (scene.parent / v).is_file():
                m[k] = str((scene.parent / v).resolve())
    f = doc["fields"][0]
    f["resolution"], f["sh_degree"] = resolution, sh_degree
    f["coarse_to_fine"] = {"start_resolution": resolution // 2, "upsample_at": [100]}
    if "occupancy" in f:
        f["occupancy"]["resolution"] = resolution
    out = folder / f"{scene.stem}_{resolution}_sh{sh_degree}.json"
    out.write_text(json.dumps(doc))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--sh-degree", type=int, default=0)
    parser.add_argument("--keyframes", choices=("auto", "full"), default="auto")
    parser.add_argument("--bytes-per-step", type=int, help="RecorderOptions.keyframe_bytes_per_step (default: "
                        "the option's; --keyframes full --bytes-per-step 65536 writes what version 2 wrote)")
    parser.add_argument("--keep", type=Path, help="write the recording here (default: a temporary folder)")
    args = parser.parse_args(argv)
    extra = {} if args.bytes_per_step is None else {"keyframe_bytes_per_step": args.bytes_per_step}
    options = RecorderOptions(keyframes=args.keyframes, **extra)
    with tempfile.TemporaryDirectory() as tmp:
        scene = args.scene
        if args.resolution:
            scene = variant(args.scene, Path(tmp), args.resolution, args.sh_degree)
        folder = args.keep or Path(tmp) / "rec"
        t0 = time.perf_counter()
        rate, _ = run(str(scene), args.steps, True, folder, options)
        seconds = time.perf_counter() - t0
        rec = load_recording(folder, quiet=True)
        rows = dict(rec.keyframes)
        if rec.start_keyframe is not None:
            rows[rec.start_keyframe["at"]] = rec.start_keyframe
        raw = 0
        for at, r in sorted(rows.items()):
            kf = rec.keyframe(r)
            n = sum(v.size for v in kf.values.values()) * 4
            full_raw = n * 3 + sum(v.nbytes for v in kf.extra.values())  # values + two Adam moments + extras
            raw += full_raw
            print(f"  keyframe at {at:5d} ({r['reason']}): {r.get('encoding', 'full'):7s} {r['bytes'] / 1e6:8.2f} MB "
                  f"(values raw {n / 1e6:.1f} MB)")
        total = rec.disk_bytes()
        load = os.getloadavg()[0]
        print(f"{scene.name}: {args.steps} steps in {seconds:.0f} s ({rate:.2f} steps/s, load {load:.1f}), "
              f"keyframes {args.keyframes}: {len(rows)} keyframes, recording {total / 1e6:.1f} MB "
              f"({total / args.steps / 1e3:.1f} kB/step); the same keyframes as raw float32 .npz: about "
              f"{raw / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
