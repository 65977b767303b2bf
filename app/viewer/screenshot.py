"""Regenerate docs/screenshot.png: the viewer on a shipped scene with the optimizer running, the
target's key light selected (its gizmo shown), and gradient overlays on.

    python -m drstudio.app.viewer.screenshot [scenes/light.json] [docs/screenshot.png] [--steps 40]

Needs a display (DISPLAY, e.g. Xvfb at 1280x720).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scene", nargs="?", default=str(ROOT / "scenes" / "light.json"))
    parser.add_argument("out", nargs="?", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps before the shot")
    parser.add_argument("--select", default="lights.key", help="group.name of the item to select")
    parser.add_argument("--overlays", default="image,params,texture,geometry")
    args = parser.parse_args(argv)

    import imageio.v3 as iio
    from drstudio.renderer.params import Group

    from .app import run_viewer

    shot = {}

    def on_frame(state) -> None:
        if state.frame == 0:
            group, _, name = args.select.partition(".")
            state.selection = (Group(group), name)
            for overlay in args.overlays.split(","):
                if overlay:
                    state.overlays.enabled[overlay] = True
            center, radius = state.scene_bounds(with_lights=True)
            state.camera.frame(center, radius * 0.8)
            state.camera.yaw += 0.35
            state.send("start")
        elif state.snapshot.step >= args.steps and "done" not in shot:
            if state.snapshot.state == "running":
                state.send("pause")
            elif state.snapshot.state == "paused":
                shot["wait"] = shot.get("wait", 0) + 1
                if shot["wait"] > 5:  # a few frames with the final snapshot
                    iio.imwrite(args.out, state.screenshot())
                    shot["done"] = True
                    state.quit = True

    rc = run_viewer(args.scene, on_frame=on_frame)
    if "done" not in shot:
        print("screenshot: the viewer closed before the shot", file=sys.stderr)
        return rc or 1
    print(f"wrote {args.out}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
