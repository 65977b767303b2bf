"""The `drstudio` command line. Each subcommand is a small function `cmd_<name>(args) -> exit code`.

Exit codes: 0 success, 1 `replay --verify` found a divergence, 2 a user mistake (bad scene file, bad
arguments; the message names the file and field, no traceback), 3 the command is not built yet,
130 interrupted, 141 output pipe closed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib import metadata
from pathlib import Path

from renderer.errors import SceneError
from renderer.loading import load_scene, summarize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = ROOT / "scenes" / "texture.json"
EXIT_USER_ERROR, EXIT_NOT_BUILT, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 3, 130, 141


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


# ---- subcommands --------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    print(summarize(load_scene(args.scene)))
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from renderer.recording import RecordingError

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
    print(summarize(load_scene(args.scene)))
    args.command = "optimize"
    return cmd_optimize(args)


def _not_built(args: argparse.Namespace) -> int:
    print(f"drstudio {args.command}: not built yet", file=sys.stderr)
    return EXIT_NOT_BUILT


def cmd_render(args: argparse.Namespace) -> int:
    from renderer.device_scene import DeviceScene
    from renderer.images import write_image
    from renderer.render import render

    scene = load_scene(args.scene)
    camera = args.camera or next(iter(scene.cameras))
    if camera not in scene.cameras:
        raise SceneError(args.scene, "cameras", f"no camera named {camera!r}; cameras: {', '.join(scene.cameras)}")
    out = render(DeviceScene(scene, args.device), camera)
    write_image(args.output, out.numpy())
    print(f"wrote {args.output} ({out.width}x{out.height}, camera {camera!r})")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    try:
        from .viewer import run_viewer
    except ImportError:
        print("drstudio view: not built yet", file=sys.stderr)
        return EXIT_NOT_BUILT
    return run_viewer(args.scene or str(DEFAULT_SCENE), device=args.device)


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import cmd_replay as run

    return run(args)


cmd_bench = _not_built


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
        p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default: cpu)")

    p = command("run", cmd_run, "the main job: the viewer on a scene, or its optimization headless "
                "when there is no display")
    p.add_argument("scene", nargs="?", default=str(DEFAULT_SCENE),
                   help=f"scene file (default: {DEFAULT_SCENE})")
    p.add_argument("--headless", action="store_true", help="optimize headless even when a display is present")
    p.add_argument("--steps", type=_positive_int, help="override optimize.steps (headless)")
    p.add_argument("--out", type=Path, help="output folder (headless; default runs/<timestamp>)")
    p.add_argument("--no-record", action="store_true", help="do not record the session (headless)")
    device(p)
    p = command("view", cmd_view, "open the viewer (on a scene, if given)")
    p.add_argument("scene", nargs="?", help="scene file")
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
    p = command("bench", cmd_bench, "measure rendering and optimization speed")
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
