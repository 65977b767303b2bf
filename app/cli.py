"""The `drstudio` command line. Each subcommand is a small function `cmd_<name>(args) -> exit code`.

Exit codes: 0 success, 1 `replay --verify` found a divergence, 2 a user mistake or an unusable
environment (bad scene file, bad arguments, an output folder that is a file, read-only, full or in use
by another run, a CUDA device that is not there; the message names the file and field, no traceback),
3 a distributed run lost a rank (killed, crashed, timed out) or its ranks diverged, 130 interrupted,
141 output pipe closed.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

from drstudio.renderer import memory, progress
from drstudio.renderer.errors import SceneError
from drstudio.renderer.loading import open_scene, summarize
from drstudio.renderer.memory import MemoryBudgetError
from drstudio.renderer.scene import RENDER_MODES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = ROOT / "scenes" / "texture.json"
EXIT_USER_ERROR, EXIT_DISTRIBUTED, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 3, 130, 141


def version() -> str:
    try:
        return metadata.version("drstudio")
    except metadata.PackageNotFoundError:  # running from a source tree that is not pip-installed
        found = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
        return f"{found.group(1)} (source tree)" if found else "unknown"


def _device(text: str) -> str:
    if text == "cpu" or re.fullmatch(r"cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def _check_device(device: str | None) -> None:
    """A CUDA device that this machine does not have is a user error (exit 2), found before any work."""
    if device and device.startswith("cuda"):
        import warp as wp

        count = wp.get_cuda_device_count()
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise UsageError(f"--device {device}: this machine has {have}; use --device cpu")


class UsageError(Exception):
    """A bad combination of arguments or an unusable environment: one line, exit 2."""


def _fmt(value) -> str:
    """A metric for the summary line: numbers to 4 significant digits; None, strings ("inf") as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a" if value is None else str(value)
    return f"{value:.4g}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1000:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1000), got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1e7:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 1e7], got {text!r}")
    return value


# ---- subcommands --------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    print(summarize(open_scene(args.scene)))
    return 0


def _check_shardable(args: argparse.Namespace) -> None:
    """Before starting ranks: the scene (or the resumed recording's) must be one whose steps split over ranks."""
    from drstudio.renderer.optim.models import model_class
    from drstudio.renderer.recording import RecordingError, load_recording
    from drstudio.renderer.recording.session import load_scene_copy

    if args.resume is not None:
        try:
            scene = load_scene_copy(load_recording(args.resume))
        except RecordingError as e:
            raise UsageError(str(e)) from None
    else:
        scene = open_scene(args.scene)
    model = model_class(scene)
    ok = model.can_shard(scene) if hasattr(model, "can_shard") else getattr(model, "shardable", False)
    if scene.optimize is not None and not ok:
        raise UsageError(f"{args.scene or args.resume}: --nproc and torchrun support mesh scenes and voxel-grid "
                         f"fields only so far; this scene trains a {model.kind} of another type")


def cmd_optimize(args: argparse.Namespace) -> int:
    from drstudio.renderer.optim import distributed
    from drstudio.renderer.recording import RecordingError

    from . import headless
    from .outdir import claim

    resume = getattr(args, "resume", None)
    if resume is None and not args.scene:
        raise UsageError("give a scene file, or --resume DIR")
    if resume is not None and getattr(args, "downscale", None) is not None:
        raise UsageError("--downscale is not for --resume: a resumed session continues at its recorded resolution")
    if resume is not None and args.scene:
        raise UsageError(f"give either a scene file ({args.scene}) or --resume DIR ({resume}), not both: a resumed "
                         f"session continues the recording's own scene")
    nproc = getattr(args, "nproc", 1) or 1
    rank = distributed.env_rank() if distributed.launched() else None  # started as one rank of several
    if args.scene and rank is None and is_capture(args.scene):  # a capture: `drstudio capture` into <out>/dataset
        if nproc > 1:
            raise UsageError(f"{args.scene} is a capture: with --nproc, make its dataset first (drstudio capture "
                             f"{args.scene} --out DIR --downscale N), then optimize DIR/scene.json --nproc {nproc}")
        args.out = args.out or headless.default_out_dir(Path.cwd())
        with claim(args.out):
            args.scene = str(_capture_dataset(args.scene, Path(args.out) / "dataset",
                                              downscale=getattr(args, "downscale", None) or 1, overwrite=True))
        args.downscale = None  # the dataset is at that size now
    if (nproc > 1 or rank is not None) and getattr(args, "serve", None) is not None:
        raise UsageError("--serve is not supported with --nproc > 1 or under torchrun yet: run the distributed "
                         "optimization headless, or serve a one-process run")
    if rank is None and nproc > 1:
        from .launch import run_ranks

        _check_shardable(args)  # one message here rather than one per rank
        out = args.out or headless.default_out_dir(Path.cwd())
        with claim(out):  # refused here (exit 2) rather than by rank 0 after every rank started
            pass
        return run_ranks([*args.argv, "--out", str(out)], nproc, timeout=args.dist_timeout)
    if rank is not None:
        return _optimize_rank(args, rank)
    out = args.out or headless.default_out_dir(Path.cwd())
    servers = []

    def serve(engine, problem):  # --serve: the run is watched and steered by `drstudio view --attach`
        from drstudio.renderer.optim.remote import EngineServer, parse_address

        server = EngineServer(engine, problem, parse_address(args.serve))
        servers.append(server)
        host, port = server.address
        print(f"serving on {host}:{port}; attach with: drstudio view --attach {host}:{port} --token {server.token}",
              file=sys.stderr, flush=True)

    try:
        with claim(out):
            metrics = headless.optimize(args.scene, steps=args.steps, out=out, device=args.device,
                                        record=not getattr(args, "no_record", False), resume=resume,
                                        from_step=getattr(args, "from_step", None),
                                        final_eval=getattr(args, "final_eval", None),
                                        max_seconds=getattr(args, "max_seconds", None),
                                        downscale=getattr(args, "downscale", None),
                                        record_options=_record_options(args),
                                        on_start=serve if getattr(args, "serve", None) is not None else None)
    except RecordingError as e:
        print(f"drstudio optimize: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        for server in servers:
            server.close()
    _print_summary(metrics, out)
    return 0


def _record_options(args: argparse.Namespace):
    """RecorderOptions from `--keyframes` (None: the defaults)."""
    if getattr(args, "keyframes", None) is None:
        return None
    from drstudio.renderer.recording import RecorderOptions

    return RecorderOptions(keyframes=args.keyframes)


def _optimize_rank(args: argparse.Namespace, rank: int) -> int:
    """One rank of a distributed `optimize` (renderer.optim.distributed): rank 0 claims the output folder, records
    and writes the results; the other ranks write nothing. Exit 3 when the run lost a rank."""
    import contextlib

    from drstudio.renderer.optim.distributed import DEFAULT_TIMEOUT, Comm, DistributedError
    from drstudio.renderer.recording import RecordingError

    from . import headless
    from .outdir import claim

    out = args.out or headless.default_out_dir(Path.cwd())
    try:
        with claim(out) if rank == 0 else contextlib.nullcontext():
            from drstudio.renderer.device_scene import default_device

            timeout = getattr(args, "dist_timeout", DEFAULT_TIMEOUT)
            comm = Comm.from_env(args.device or default_device(), timeout=timeout)  # cuda: cuda:LOCAL_RANK
            try:
                metrics = headless.optimize(args.scene, steps=args.steps, out=out, device=comm.warp_device,
                                            record=not getattr(args, "no_record", False),
                                            resume=getattr(args, "resume", None),
                                            from_step=getattr(args, "from_step", None), progress=rank == 0, comm=comm,
                                            final_eval=getattr(args, "final_eval", None),
                                            max_seconds=getattr(args, "max_seconds", None),
                                            downscale=getattr(args, "downscale", None),
                                            record_options=_record_options(args))
            finally:
                comm.close()
    except (RecordingError, ValueError) as e:
        print(f"drstudio optimize: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except DistributedError as e:
        print(f"drstudio optimize: error: {e}", file=sys.stderr)
        return EXIT_DISTRIBUTED
    if rank != 0:
        return 0
    _print_summary(metrics, out)
    return 0


def _print_summary(metrics: dict, out: Path) -> None:
    print(f"final loss {_fmt(metrics['final_loss'])}, render PSNR {_fmt(metrics['psnr_render_vs_target_db'])} dB, "
          f"{metrics['steps']} steps in {_fmt(metrics['seconds'])} s")
    for path, m in metrics["parameters"].items():
        print(f"  {path}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in m.items()))
    print(f"results written to {out}")
    if metrics.get("recording"):
        print(f"recording written to {metrics['recording']['path']} ({metrics['recording']['bytes'] / 1e6:.1f} MB)")


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: the viewer when there is a display, else the same optimization headless."""
    if _has_display() and not args.headless:
        args.command = "view"
        return cmd_view(args)
    print(summarize(open_scene(args.scene)))
    args.command = "optimize"
    return cmd_optimize(args)


def _render_cameras(scene) -> dict:
    """Every camera `drstudio render` can use: the scene's, then the frames of its `transforms` dataset
    (named frame_000, frame_001, ... as the optimizer names them), as {name: scene Camera}."""
    from drstudio.renderer.scene import Camera
    from drstudio.renderer.transforms_json import load_transforms

    cameras = dict(scene.cameras)
    targets = getattr(scene.optimize, "targets", None)
    transforms = getattr(targets, "transforms", None)
    if transforms:
        base = Path(scene.path).parent if scene.path else Path(".")
        for i, f in enumerate(load_transforms(base / transforms)):
            name = f"frame_{i:03d}"
            cameras.setdefault(name, Camera(name, f.width, f.height, f.intrinsics, f.pose))
    return cameras


def cmd_render(args: argparse.Namespace) -> int:
    """One image of a scene: its meshes, or its radiance field (with trained values from --params), from
    any of its cameras or its dataset's, by name or index."""
    import numpy as np
    from drstudio.renderer.device_scene import DeviceScene
    from drstudio.renderer.images import write_image
    from drstudio.renderer.render import render

    from . import camera_path as cp

    scene = open_scene(args.scene)
    cameras = _render_cameras(scene)
    if not cameras:
        raise SceneError(args.scene, "cameras", "the scene has no camera and no dataset to take one from")
    names = list(cameras)
    choice = args.camera if args.camera is not None else names[0]
    if choice not in cameras and choice.isdigit() and int(choice) < len(names):
        choice = names[int(choice)]
    if choice not in cameras:
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise SceneError(args.scene, "cameras", f"no camera named {choice!r}; cameras (or an index "
                                                f"0..{len(names) - 1}): {shown}")
    c = cameras[choice]
    from drstudio.renderer import memory

    # a render larger than the memory at hand is drawn in bands of rows, each within the budget (silhouette
    # anti-aliasing pairs no pixels across two bands: edges on band seams are hard there)
    budget = memory.BUDGET_FRACTION * memory.available_bytes() / 2
    banded = memory.render_bytes(c.width, c.height) > budget
    try:
        if scene.fields or args.params or banded:
            frames = cp.scene_frames(scene, args.device, args.params)
            if scene.fields or banded:
                rays = 1 << 16 if scene.fields else max(c.width, int(budget // memory.RENDER_BYTES_PER_PIXEL))
                image = cp.render_banded(frames.render, c.pose, c.intrinsics, c.width, c.height, band_rays=rays)
            else:
                image = frames.render(c.pose, c.intrinsics, c.width, c.height)
        else:
            image = render(DeviceScene(scene, args.device), choice).numpy()
    except cp.PathError as e:
        raise UsageError(str(e)) from None
    bad = int(np.count_nonzero(~np.isfinite(image).all(axis=-1)))
    if bad:  # a safety net: load and set bound every value, but a trained field can still overflow
        raise UsageError(f"{args.params or args.scene}: the render from camera {choice!r} has {bad} non-finite "
                         f"pixel{'s' * (bad != 1)} (inf or NaN: a value overflowed float32 while rendering); "
                         f"{args.output} not written")
    write_image(args.output, image)
    print(f"wrote {args.output} ({c.width}x{c.height}, camera {choice!r})")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from . import headless
    from .viewer import run_viewer

    if getattr(args, "attach", None):
        from drstudio.renderer.optim.remote import parse_address

        try:
            address = parse_address(args.attach)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if not args.token:
            raise UsageError("--attach needs the --token the served run printed")
        return run_viewer(None, attach=address, token=args.token)
    out = headless.default_out_dir(Path.cwd())  # the session's results when it ends, as `drstudio optimize`'s
    record_dir = None if getattr(args, "no_record", False) else out / "recording"
    scene = args.scene or str(DEFAULT_SCENE)
    if getattr(args, "engine", "thread") == "process":
        return _view_with_engine_process(scene, args.device, record_dir)
    return run_viewer(scene, device=args.device, record_dir=record_dir, results_dir=out)


def _view_with_engine_process(scene: str, device, record_dir) -> int:
    """`drstudio view --engine process`: the optimizer in a child process (app.engine_process), the viewer
    attached to it; the child stops when the window closes."""
    from .engine_process import EngineProcess, EngineProcessError
    from .viewer import run_viewer

    open_scene(scene)  # a bad scene file: the CLI's message and exit 2, before a process starts
    print("starting the optimizer process", file=sys.stderr, flush=True)
    child = EngineProcess(scene, device, record_dir)
    try:
        child.start()
    except EngineProcessError as e:
        print(f"drstudio view: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        return run_viewer(None, attach=child.address, token=child.token)
    finally:
        child.close()


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import cmd_replay as run

    return run(args)


def _export_cameras(scene, values: dict, path: Path) -> Path:
    """The scene's cameras and its dataset's frames (as `drstudio render` names them), with the run's
    optimized pose and intrinsics where it has them, as a transforms.json (renderer.export.write_cameras):
    what nerfstudio, instant-ngp or another drstudio scene reads."""
    from drstudio.renderer import export
    from drstudio.renderer.params import Group, ParamPath
    from drstudio.renderer.transforms_json import load_transforms

    files = {}
    targets = getattr(scene.optimize, "targets", None)
    transforms = getattr(targets, "transforms", None)
    base = Path(scene.path).parent if scene.path else Path(".")
    if transforms:
        for i, f in enumerate(load_transforms(base / transforms)):
            files[f"frame_{i:03d}"] = f.image_path.resolve().as_posix()
    cams = []
    for name, c in _render_cameras(scene).items():
        pose = values.get(ParamPath(Group.CAMERAS, name, "pose"))
        intrinsics = values.get(ParamPath(Group.CAMERAS, name, "intrinsics"))
        cams.append({"name": name, "width": c.width, "height": c.height, "file_path": files.get(name),
                     "intrinsics": c.intrinsics if intrinsics is None else intrinsics,
                     "pose": c.pose if pose is None else pose, "optimized": pose is not None or intrinsics is not None})
    return export.write_cameras(path, cams)


def cmd_export(args: argparse.Namespace) -> int:
    """Recovered meshes (with their albedo texture or color) and trained voxel-grid fields (a marching-cubes
    surface with vertex colors and a point cloud) of an optimization run, in formats other programs open."""
    import json

    import numpy as np
    from drstudio.renderer import export
    from drstudio.renderer.params import Group, ParamPath

    run = args.run
    if not run.is_dir():
        raise UsageError(f"{run}: not a folder (expected the --out folder of drstudio optimize)")
    out = args.out or run / "export"
    fmt = f".{args.format}"
    written = []
    params_file, metrics_file = run / "params.npz", run / "metrics.json"
    values = dict(np.load(params_file)) if params_file.is_file() else {}
    scene_path = args.scene or (json.loads(metrics_file.read_text()).get("scene") if metrics_file.is_file() else None)
    for npz in sorted(run.glob("field_*.npz")):
        data = np.load(npz)
        if "density" not in data or data["density"].ndim != 3:
            raise UsageError(f"{npz}: only voxel-grid and hash-grid fields export as meshes so far (this one has "
                             f"no 3-D density grid: a neural, NeRF-W or dynamic field; not built yet)")
        grid = dict(aabb=data["aabb"], activation=str(data["activation"]), sh=data["sh"].astype(np.float32),
                    sh_degree=int(data["sh_degree"]), level=args.level,
                    contract=bool(data["contract"]) if "contract" in data else False)
        try:
            verts, faces, colors = export.grid_mesh(data["density"].astype(np.float32), **grid)
        except ValueError as e:  # no surface at that level: say which file and what to change
            raise UsageError(f"{npz}: {e}; give another --level") from None
        surface = ".ply" if fmt == ".obj" else fmt  # OBJ has no standard vertex colors
        written.append(export.write_mesh(out / f"{npz.stem}{surface}", verts, faces, vertex_colors=colors))
        pts, pcolors = export.grid_points(data["density"].astype(np.float32), **grid)
        written.append(export.write_points(out / f"{npz.stem}_points.ply", pts, pcolors))
    if scene_path:
        scene = open_scene(scene_path)
        for mesh in scene.meshes.values():
            get = lambda leaf, m=mesh: values.get(ParamPath(Group.MESHES, m.name, leaf))  # noqa: E731
            vertices = get("vertices") if get("vertices") is not None else mesh.vertices
            faces, uvs, mesh_colors = mesh.faces, mesh.uvs, mesh.colors
            own = run / f"{mesh.name}.obj"  # the run's recovered mesh: its faces, whatever its topology
            if get("vertices") is not None and own.is_file():
                from drstudio.renderer.assets import load_mesh_file

                own_vertices, own_faces, _, _ = load_mesh_file(own)
                if len(own_vertices) == len(vertices) and not np.array_equal(own_faces, mesh.faces):
                    faces, uvs, mesh_colors = own_faces, None, np.ones_like(vertices)  # a remeshed mesh
            material = scene.materials[mesh.material]
            albedo = values.get(ParamPath(Group.MATERIALS, material.name, "albedo"), material.albedo)
            textured = albedo.shape[0] * albedo.shape[1] > 1
            colors = None if textured else np.broadcast_to(albedo.reshape(3), vertices.shape) * mesh_colors
            written.append(export.write_mesh(out / f"{mesh.name}{fmt}", vertices, faces, uvs=uvs,
                                             texture=albedo if textured else None, vertex_colors=colors))
        written.append(_export_cameras(scene, values, out / "transforms.json"))
    if not written:
        raise UsageError(f"{run}: nothing to export (no field_*.npz, and no scene with meshes: give --scene)")
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """A real capture (nerfstudio / instant-ngp transforms.json, or a COLMAP model) as a dataset drstudio
    trains on: frames whose image is missing skipped (or refused with --strict), images downscaled and
    undistorted, cameras oriented (mean up -> +Y), centred and scaled into a unit box, the field box from
    aabb_scale or the camera frustums (renderer.captures)."""
    from .outdir import claim

    with claim(args.out):
        scene_file = Path(args.out) / "scene.json"
        if scene_file.exists() and not args.force:
            raise UsageError(f"{scene_file}: exists; choose another --out or add --force")
        scene_file = _capture_dataset(args.source, args.out, downscale=args.downscale, strict=args.strict,
                                      test_every=args.test_every or None, normalize=not args.no_normalize,
                                      overwrite=args.force, field=args.field)
    print(f"train with: drstudio optimize {scene_file}")
    return 0


def _capture_dataset(source, out: Path, *, downscale: int = 1, strict: bool = False, test_every: int | None = 8,
                     normalize: bool = True, overwrite: bool = False, field: str = "voxel_grid") -> Path:
    """`drstudio capture`'s work: the capture at `source` exported as a dataset and a training scene into `out`
    (the caller holds it). Returns the scene file; says what it wrote on stdout."""
    import json

    from drstudio.renderer import captures

    cap = captures.read_capture(source, downscale=downscale, strict=strict, test_every=test_every)
    if normalize:
        cap = captures.normalize(cap)
    print(cap.describe(), file=sys.stderr)
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(cap.frames), desc="images", unit="img")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)
        elif done == total or done % 10 == 0:
            print(f"images {done}/{total}", file=sys.stderr)

    try:
        written = captures.export_transforms(cap, out, overwrite=overwrite, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    scene_file = captures.write_training_scene(cap, out, overwrite=True, field_type=field)
    masks = sum("mask_path" in f for f in json.loads(written.read_text(encoding="utf-8"))["frames"])
    masked = f", {masks} with a mask of the pixels the photograph does not cover" if masks else ""
    print(f"wrote {written} ({len(cap.frames)} frames{masked}) and {scene_file}")
    return scene_file


def is_capture(path) -> bool:
    """Whether `path` names a capture rather than a scene file: a folder (a capture folder or a COLMAP model), or
    a .json file with `frames` and no scene `version` (a nerfstudio / instant-ngp transforms.json)."""
    import json

    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix.lower() != ".json" or not path.is_file() or path.stat().st_size > 64 * 2**20:
        return False
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError, RecursionError):
        return False  # the scene loader says what is wrong with it
    return isinstance(doc, dict) and "frames" in doc and "version" not in doc


def cmd_video(args: argparse.Namespace) -> int:
    """A camera-path video of a scene: its field, or its meshes (app.camera_path)."""
    import numpy as np

    from . import camera_path as cp

    def fail(message: str) -> int:
        print(f"drstudio video: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR

    try:
        width, height = cp.parse_size(args.size)
        out = Path(args.out)
        if out.suffix.lower() != ".mp4":
            return fail(f"--out {out}: expected an .mp4 file")
        if not out.parent.is_dir():
            return fail(f"--out {out}: folder {out.parent} does not exist")
        if args.path != "orbit" and not Path(args.path).is_file():
            return fail(f"--path {args.path}: expected 'orbit' or a camera path JSON file")
        scene = open_scene(args.scene)
        keyframes = cp.load_path(args.path) if args.path != "orbit" else None
        frames = cp.scene_frames(scene, args.device, args.params)
        path = cp.default_orbit(scene, frames, args.frames) if keyframes is None else cp.interpolate(keyframes,
                                                                                                     args.frames)
        kind = "field" if scene.fields else "meshes"
        print(f"rendering {len(path)} frames of {width}x{height} ({kind}) to {out}", file=sys.stderr)
        render = frames.render
        if scene.fields:
            def render(pose, intr, w, h, time=None):
                return cp.render_banded(frames.render, pose, intr, w, h, band_rays=1 << 16, time=time)

        span = frames.time_range() if hasattr(frames, "time_range") else None
        times = None if span is None else list(np.linspace(span[0], span[1], len(path)))  # a dynamic field plays
        cp.write_video(out, path, width, height, render, fps=args.fps, times=times)
    except cp.PathError as e:
        return fail(str(e))
    print(f"wrote {out} ({len(path)} frames, {width}x{height}, {args.fps:g} fps)")
    return 0


# ---- dataset ------------------------------------------------------------------------------------

def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _three_floats(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers like 1,1,1, got {text!r}")
    return values


def cmd_dataset(args: argparse.Namespace) -> int:
    """Render a NeRF-style dataset of a scene (renderer.datasets)."""
    from drstudio.renderer.datasets import Animation, DatasetOptions, plan_dataset, write_dataset

    scene = open_scene(args.scene)
    try:
        animate = Animation(mesh=args.animate_mesh, degrees=args.animate_degrees,
                            translation=args.animate_translation, times=args.animate_times) if (
            args.animate or args.animate_mesh or args.animate_translation is not None
            or args.animate_times is not None) else None
        options = DatasetOptions(
            views=args.views, test_views=args.test_views, width=args.width, height=args.height, fov_y=args.fov_y,
            distance=args.distance, hemisphere=args.hemisphere, seed=args.seed,
            lighting_variation=args.lighting_variation, occluders=args.occluders,
            occluded_fraction=args.occluded_fraction, animate=animate, background=args.background,
            rgba=args.rgba, mode=args.mode)
        plan = plan_dataset(scene, options)
    except ValueError as e:  # an option out of range, or one the scene cannot satisfy
        print(f"drstudio dataset: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(write_dataset(scene, plan, args.out, device=args.device, overwrite=args.force).text())
    return 0


def _dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scene", help="scene file")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--views", type=_positive_int, default=100, help="number of views, test views included "
                   "(default 100)")
    p.add_argument("--test-views", type=_nonnegative_int, default=0, metavar="K",
                   help="hold out K views as the test split (writes transforms_{train,val,test}.json too)")
    p.add_argument("--width", type=_positive_int, default=128, help="image width in pixels (default 128)")
    p.add_argument("--height", type=_positive_int, default=128, help="image height in pixels (default 128)")
    p.add_argument("--fov-y", type=float, default=40.0, metavar="DEG", help="vertical field of view (default 40)")
    p.add_argument("--distance", type=float, help="camera distance from the center (default: frame the scene)")
    p.add_argument("--hemisphere", action="store_true", help="cameras on the upper (+Y) hemisphere only")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--lighting-variation", type=float, default=0.0, metavar="S",
                   help="per-view random light intensity/tint of strength S, e.g. 0.3 (NeRF-W; default 0)")
    p.add_argument("--occluders", type=_nonnegative_int, default=0, metavar="K",
                   help="K random cubes between camera and scene in some train views (NeRF-W; default 0)")
    p.add_argument("--occluded-fraction", type=float, default=0.5, metavar="F",
                   help="with --occluders: the fraction of train views that get them (default 0.5)")
    p.add_argument("--animate", action="store_true", help="animate a mesh over time in [0, 1] (D-NeRF); "
                   "frame i of N gets time i/(N-1)")
    p.add_argument("--animate-mesh", metavar="NAME", help="the mesh to animate (implies --animate; default: "
                   "the first)")
    p.add_argument("--animate-degrees", type=float, default=90.0, metavar="DEG",
                   help="with --animate: rotation about +Y at time 1 (default 90)")
    p.add_argument("--animate-translation", type=_three_floats, metavar="X,Y,Z", help="with --animate: "
                   "displacement at time 1 (default: 0.2 scene radii up)")
    p.add_argument("--animate-times", type=_positive_int, metavar="T",
                   help="implies --animate: T times j/(T-1), each seen by about VIEWS/T cameras over the whole "
                   "sphere (a well-posed sequence for a 4D grid; default: one time per frame along the spiral)")
    p.add_argument("--background", type=_three_floats, metavar="R,G,B",
                   help="linear background color (default: the scene's)")
    p.add_argument("--rgba", action="store_true", help="write RGBA images with alpha = coverage")
    p.add_argument("--mode", choices=RENDER_MODES, help="render mode (default: the scene's)")
    p.add_argument("--force", action="store_true", help="overwrite a dataset already in --out")


def cmd_bench(args: argparse.Namespace) -> int:
    """The renderer benchmark (benchmarks/bench_render.py, part of the source tree, not the package)."""
    bench = ROOT / "benchmarks" / "bench_render.py"
    if not bench.is_file():
        print(f"drstudio bench: {bench} not found (the benchmarks ship with the source tree)", file=sys.stderr)
        return EXIT_USER_ERROR
    from drstudio.renderer.device_scene import default_device

    # run as its own program (`python -m benchmarks.bench_render` from the source tree): the benchmarks
    # sit above the app and import it, never the other way round
    quick = ["--quick"] if args.quick else []
    cmd = [sys.executable, "-m", "benchmarks.bench_render", "--device", args.device or default_device(), *quick,
           *args.bench_args]
    return subprocess.run(cmd, cwd=ROOT).returncode


# ---- parser -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drstudio", description="A desktop studio for differentiable "
                                     "rendering: render scenes and recover their parameters from images.")
    parser.add_argument("--version", action="version", version=f"drstudio {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", type=_device, default=None,
                       help="cpu, cuda or cuda:N (default: cuda:0 when a GPU is present, else cpu)")

    p = command("run", cmd_run, "the main job: the viewer on a scene, or its optimization headless "
                "when there is no display")
    p.add_argument("scene", nargs="?", default=str(DEFAULT_SCENE),
                   help=f"scene file (default: {DEFAULT_SCENE})")
    p.add_argument("--headless", action="store_true", help="optimize headless even when a display is present")
    p.add_argument("--steps", type=_positive_int, help="override optimize.steps (headless)")
    p.add_argument("--out", type=Path, help="output folder (headless; default runs/<timestamp>)")
    p.add_argument("--no-record", action="store_true", help="do not record the session")
    device(p)
    p = command("view", cmd_view, "open the viewer (on a scene, if given)")
    p.add_argument("scene", nargs="?", help="scene file")
    p.add_argument("--no-record", action="store_true", help="do not record the session")
    p.add_argument("--attach", metavar="HOST:PORT", help="show and steer a run started with optimize --serve")
    p.add_argument("--engine", choices=("thread", "process"), default="thread",
                   help="where the optimizer runs: a thread of the viewer's process (default; shares buffers, "
                   "shows the field preview) or a child process (no shared GIL: faster optimizer, mesh scenes)")
    p.add_argument("--token", help="with --attach: the token the served run printed")
    device(p)
    p = command("optimize", cmd_optimize, "run a scene's optimization headless")
    p.add_argument("scene", nargs="?", help="scene file (not with --resume), or a capture (a transforms.json, a "
                   "COLMAP model or a folder holding one: made into <out>/dataset by `drstudio capture` first)")
    p.add_argument("--steps", type=_positive_int, help="override optimize.steps")
    p.add_argument("--out", type=Path, help="output folder for images, metrics and the recording")
    p.add_argument("--no-record", action="store_true", help="do not record the session (default: <out>/recording)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue a recorded session from a keyframe")
    p.add_argument("--from-step", type=int, metavar="K", help="with --resume: the keyframe's step (default: the last)")
    p.add_argument("--keyframes", choices=("auto", "full"), help="recording keyframes: auto (default; compact "
                   "when the state is large: float16 values and digests, resume re-executes from the last full "
                   "one) or full (every one lossless and restorable; larger)")
    p.add_argument("--downscale", type=_positive_int, metavar="N", help="a scene trained on a dataset "
                   "(targets.transforms): train at 1/N resolution, intrinsics scaled; reads images_N/ beside the "
                   "images when present, else resizes on load (overrides optimize.targets.downscale)")
    p.add_argument("--final-eval", choices=("full", "sampled", "none"), help="the evaluation at the end: every "
                   "pixel of every view (full), each view at optimize.eval_rays fixed pixels (sampled; the default for "
                   "scenes with fields, which then write views/ for one held-out view only) or none; metrics.json "
                   "says which")
    p.add_argument("--max-seconds", type=_seconds, metavar="S", help="a time budget: end the run after the step "
                   "that finishes S seconds after the optimization started, with its results as at a normal end "
                   "(metrics.json time_budget); with --nproc every rank ends after the same step")
    p.add_argument("--serve", nargs="?", const="", metavar="ADDR", help="serve the run to `drstudio view --attach` "
                   "(default 127.0.0.1:7391; a random token is printed and required)")
    p.add_argument("--nproc", type=_positive_int, default=1, metavar="N", help="run N processes on this machine, "
                   "each rendering its share of every step's views (data parallel, torch.distributed; "
                   "docs/distributed.md)")
    p.add_argument("--dist-timeout", type=_positive_float, default=300.0, metavar="S",
                   help="distributed runs: seconds a rank waits for the others before giving up (default 300)")
    device(p)
    p = command("render", cmd_render, "render a scene to an image file")
    p.add_argument("scene", help="scene file")
    p.add_argument("-o", "--output", type=Path, required=True, help="image file to write (.png, .jpg)")
    p.add_argument("--camera", help="camera name or index, the scene's or its dataset's (frame_005; default: the "
                   "first)")
    p.add_argument("--params", type=Path, metavar="FILE", help="trained values: a params.npz of drstudio optimize")
    device(p)
    p = command("replay", cmd_replay, "replay a recorded optimization session in the viewer, export it as a "
                "video, or verify that it reproduces")
    p.add_argument("recording", type=Path, metavar="DIR", help="recording folder (e.g. runs/<time>/recording)")
    p.add_argument("--export", type=Path, metavar="FILE", help="write a video of the session (.mp4 or .gif)")
    p.add_argument("--fps", type=float, default=10.0, help="with --export: frames per second (default 10)")
    p.add_argument("--verify", action="store_true", help="re-execute the session and compare it with the "
                   "recording (exit 1 at a divergence)")
    p.add_argument("--speed", type=float, default=1.0, help="viewer playback speed, times the recorded pace")
    device(p)
    p = command("bench", cmd_bench, "measure rendering and optimization speed (benchmarks/bench_render.py)")
    device(p)
    p.add_argument("--quick", action="store_true", help="a small table in under a minute")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="further options of benchmarks/bench_render.py")
    p = command("dataset", cmd_dataset, "render a NeRF-style dataset of a scene: images from cameras around "
                "it and a transforms.json (nerfstudio/Blender)")
    _dataset_arguments(p)
    device(p)
    p = command("video", cmd_video, "render a camera-path video (mp4) of a scene: its radiance field, or its "
                "meshes; optionally with trained values")
    p.add_argument("scene", help="scene file")
    p.add_argument("--params", type=Path, metavar="FILE", help="trained values: a params.npz of drstudio optimize")
    p.add_argument("--path", default="orbit", help="'orbit' (default: one turn around the scene at the first "
                   "camera's distance and elevation) or a camera path JSON file (docs/viewer.md)")
    p.add_argument("--frames", type=_positive_int, default=48, help="number of frames (default 48)")
    p.add_argument("--size", default="320x240", metavar="WxH", help="frame size, even numbers (default 320x240)")
    p.add_argument("--fps", type=_positive_float, default=24.0, help="frames per second (default 24)")
    p.add_argument("--out", type=Path, required=True, help="the .mp4 file to write")
    device(p)
    p = command("export", cmd_export, "write a run's recovered meshes (OBJ/PLY/glTF, with texture) and voxel-grid "
                "fields (marching-cubes surface and point cloud, PLY) for other programs")
    p.add_argument("run", type=Path, help="the --out folder of drstudio optimize")
    p.add_argument("--format", choices=("obj", "ply", "glb"), default="glb", help="mesh format (default glb)")
    p.add_argument("--scene", help="the run's scene file (default: the one metrics.json names)")
    p.add_argument("--level", type=float, help="fields: the density of the surface (default: opacity 1/2 across "
                   "one voxel)")
    p.add_argument("--out", type=Path, help="output folder (default RUN/export)")
    p = command("capture", cmd_capture, "turn a real capture (transforms.json or a COLMAP model) into a dataset: "
                "missing frames skipped, images downscaled and undistorted, cameras normalized")
    p.add_argument("source", help="a transforms.json, a folder holding one, or a COLMAP model / project folder")
    p.add_argument("--out", type=Path, required=True, help="output folder for images/ and transforms.json")
    p.add_argument("--downscale", type=_positive_int, default=1, help="divide the image size by N (uses images_N/ "
                   "when present)")
    p.add_argument("--strict", action="store_true", help="refuse frames whose image is missing (default: skip them "
                   "with a warning)")
    p.add_argument("--test-every", type=int, default=8, metavar="N", help="hold out every Nth frame when the "
                   "capture names no split (nerfstudio's convention; 0: none)")
    p.add_argument("--no-normalize", action="store_true", help="keep the capture's own world (no orienting, "
                   "centring or scaling)")
    p.add_argument("--force", action="store_true", help="overwrite a dataset already in --out")
    p.add_argument("--field", choices=("voxel_grid",), default="voxel_grid",
                   help="the radiance field of the scene.json written beside the dataset (default voxel_grid)")
    p = command("info", cmd_info, "validate a scene and print its summary and parameter paths")
    p.add_argument("scene", help="scene file")
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as a command-line user reads them: one line, no source location."""
    return f"drstudio: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    memory.reuse_freed_buffers()  # renders allocate per-pixel buffers every step: keep them in the heap
    shown = warnings.formatwarning  # restored on return: callers in-process (tests, scripts) keep theirs
    warnings.formatwarning = _format_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = shown


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `--nproc` starts each rank with
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        _check_device(getattr(args, "device", None))
        with progress.terminal():  # kernels compiled on a first run, images loaded, the final evaluation
            return args.func(args)
    except SceneError as e:
        print(f"drstudio {args.command}: error: {e}", file=sys.stderr)
        for other in e.others:
            print(f"  also: {other}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (UsageError, MemoryBudgetError) as e:
        print(f"drstudio {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:
        print(f"drstudio {args.command}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into a reader that quit (`drstudio info x | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_BROKEN_PIPE
    except OSError as e:  # the output folder (OutputError), a full disk, a read-only file system
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"drstudio {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
