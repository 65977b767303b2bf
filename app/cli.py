"""The `drstudio` command line. Each subcommand is a small function `cmd_<name>(args) -> exit code`.

Exit codes: 0 success, 1 `replay --verify` found a divergence, 2 a user mistake (bad scene file, bad
arguments; the message names the file and field, no traceback), 130 interrupted, 141 output pipe
closed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib import metadata
from pathlib import Path

from drstudio.renderer.errors import SceneError
from drstudio.renderer.loading import open_scene, summarize
from drstudio.renderer.scene import RENDER_MODES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = ROOT / "scenes" / "texture.json"
EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141


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


# ---- subcommands --------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    print(summarize(open_scene(args.scene)))
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from drstudio.renderer.recording import RecordingError

    from . import headless

    resume = getattr(args, "resume", None)
    if resume is None and not args.scene:
        print("drstudio optimize: error: give a scene file, or --resume DIR", file=sys.stderr)
        return EXIT_USER_ERROR
    out = args.out or headless.default_out_dir(Path.cwd())
    try:
        metrics = headless.optimize(args.scene, steps=args.steps, out=out, device=args.device,
                                    record=not getattr(args, "no_record", False), resume=resume,
                                    from_step=getattr(args, "from_step", None))
    except RecordingError as e:
        print(f"drstudio optimize: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"final loss {metrics['final_loss']:.4g}, render PSNR {metrics['psnr_render_vs_target_db']:.2f} dB, "
          f"{metrics['steps']} steps in {metrics['seconds']:.1f} s")
    for path, m in metrics["parameters"].items():
        print(f"  {path}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
    print(f"results written to {out}")
    if metrics.get("recording"):
        print(f"recording written to {metrics['recording']['path']} ({metrics['recording']['bytes'] / 1e6:.1f} MB)")
    return 0


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


def cmd_render(args: argparse.Namespace) -> int:
    from drstudio.renderer.device_scene import DeviceScene
    from drstudio.renderer.images import write_image
    from drstudio.renderer.render import render

    scene = open_scene(args.scene)
    camera = args.camera or next(iter(scene.cameras))
    if camera not in scene.cameras:
        raise SceneError(args.scene, "cameras", f"no camera named {camera!r}; cameras: {', '.join(scene.cameras)}")
    out = render(DeviceScene(scene, args.device), camera)
    write_image(args.output, out.numpy())
    print(f"wrote {args.output} ({out.width}x{out.height}, camera {camera!r})")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from . import headless
    from .viewer import run_viewer

    record_dir = None if getattr(args, "no_record", False) else headless.default_out_dir(Path.cwd()) / "recording"
    return run_viewer(args.scene or str(DEFAULT_SCENE), device=args.device, record_dir=record_dir)


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import cmd_replay as run

    return run(args)


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
    sys.path.insert(0, str(ROOT))
    from drstudio.renderer.device_scene import default_device

    from benchmarks import bench_render

    quick = ["--quick"] if args.quick else []
    return bench_render.main(["--device", args.device or default_device(), *quick, *args.bench_args])


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
    device(p)
    p = command("optimize", cmd_optimize, "run a scene's optimization headless")
    p.add_argument("scene", nargs="?", help="scene file (not with --resume)")
    p.add_argument("--steps", type=_positive_int, help="override optimize.steps")
    p.add_argument("--out", type=Path, help="output folder for images, metrics and the recording")
    p.add_argument("--no-record", action="store_true", help="do not record the session (default: <out>/recording)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue a recorded session from a keyframe")
    p.add_argument("--from-step", type=int, metavar="K", help="with --resume: the keyframe's step (default: the last)")
    device(p)
    p = command("render", cmd_render, "render a scene to an image file")
    p.add_argument("scene", help="scene file")
    p.add_argument("-o", "--output", type=Path, required=True, help="image file to write (.png, .jpg)")
    p.add_argument("--camera", help="camera name (default: the scene's first camera)")
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
    p = command("info", cmd_info, "validate a scene and print its summary and parameter paths")
    p.add_argument("scene", help="scene file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except SceneError as e:
        print(f"drstudio {args.command}: error: {e}", file=sys.stderr)
        for other in e.others:
            print(f"  also: {other}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"drstudio {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into a reader that quit (`drstudio info x | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
