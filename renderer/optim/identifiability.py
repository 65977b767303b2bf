"""Warnings for problems that are under-determined in an obvious way (issue 17), shown by `drstudio
optimize` before it starts and by the viewer's Optimizer panel while the free set changes.

These are structural checks on which parameters are free and which views constrain them, not a rank
test of the Jacobian: they name the ambiguities a user hits first.
- A camera's intrinsics and pose both free: each camera renders one target view, and from one image the
  focal length and the distance along the view axis trade off (a zoom and a dolly change a small
  object's image almost alike), so the pair drifts along that valley.
- A free camera that renders no target view: nothing in the loss depends on it (zero gradient).
- A free albedo together with a free light intensity or color: under the renderer's shading a radiance is
  albedo x light, so only their product is seen (scale one up and the other down: the same images).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..params import Group, ParamPath


def underdetermined(free: Iterable[str], views: Sequence[str]) -> list[str]:
    """One sentence per obvious ambiguity among the `free` parameter paths, given the cameras of the target
    views (`views`, training and held-out); [] when none is found."""
    paths = []
    for p in free:
        try:
            paths.append(ParamPath.parse(p))
        except (TypeError, ValueError):
            continue
    by_camera: dict[str, set[str]] = {}
    for p in paths:
        if p.group is Group.CAMERAS:
            by_camera.setdefault(p.owner, set()).add(p.name)
    out = []
    for camera, leaves in sorted(by_camera.items()):
        if camera not in views:
            out.append(f"cameras.{camera} is free but renders no target view: nothing in the loss constrains it")
        elif {"intrinsics", "pose"} <= leaves:
            out.append(f"cameras.{camera}: intrinsics and pose are both free and this camera has one target view: "
                       "focal length and distance trade off (under-determined); fix one of them")
    albedos = sorted(p for p in paths if p.group is Group.MATERIALS and p.name == "albedo")
    lights = sorted(p for p in paths if p.group is Group.LIGHTS and p.name in ("intensity", "color"))
    if albedos and lights:
        out.append(f"{albedos[0]} and {lights[0]} are both free: the images show only albedo x light, so their "
                   "scale is not determined; fix one of them")
    return out
