"""Target images of an optimization: rendered from the scene's true values through its cameras, or
read from image files (sRGB on disk, linear in memory) with the scene's cameras, or a
nerfstudio/Blender `transforms.json` whose frames become cameras `<prefix>_<index>`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import warp as wp

from .. import memory, progress
from ..conventions import srgb_to_linear
from ..device_scene import DeviceScene
from ..errors import SceneError
from ..images import read_image
from ..render import render_view
from ..scene import Camera, Scene
from ..transforms_json import load_transforms, read_frame_image, read_frame_mask


@dataclass
class Target:
    camera: str
    image: wp.array2d  # (N, 3) linear RGB
    # (N,) float32: 1 where the target's pixel is used, 0 where it is ignored (its frame's `mask_path`); None: all
    mask: wp.array | None = None

    @functools.cached_property
    def mask_sum(self) -> float:
        """The number of pixels the mask uses (the pixel count without a mask)."""
        return float(self.mask.numpy().sum()) if self.mask is not None else float(self.image.shape[0])


def add_dataset_cameras(scene: Scene, target_spec) -> dict[str, str]:
    """For a `transforms` target, add one camera per frame to `scene` (before its DeviceScene is
    built) and return {camera name: image file}. Other targets: {}."""
    path = getattr(target_spec, "transforms", None)
    if not path:
        return {}
    base = Path(scene.path).parent if scene.path else Path(".")
    frames = load_transforms(base / path, downscale=target_downscale(scene))
    files = {}
    for i, f in enumerate(frames):
        name = f"frame_{i:03d}"
        scene.cameras[name] = Camera(name, f.width, f.height, f.intrinsics, f.pose)
        files[name] = str(f.image_path)
    return files


def dataset_masks(scene: Scene, target_spec, key: str = "transforms", prefix: str = "frame") -> dict[str, Path]:
    """{camera: mask file} of the frames of `targets.<key>` (cameras `<prefix>_<index>`, as `add_dataset_cameras`
    and `add_test_cameras` name them) that have a `mask_path`."""
    path = getattr(target_spec, key, None)
    if not path:
        return {}
    base = Path(scene.path).parent if scene.path else Path(".")
    frames = load_transforms(base / path, downscale=target_downscale(scene))
    return {f"{prefix}_{i:03d}": f.mask_path for i, f in enumerate(frames) if f.mask_path is not None}


def target_downscale(scene: Scene) -> int:
    """`optimize.targets.downscale` of the scene (1 without one): dataset frames load at 1/N of their size."""
    spec = getattr(getattr(scene, "optimize", None), "targets", None)
    return int(getattr(spec, "downscale", 1) or 1)


def with_target_downscale(scene: Scene, downscale: int) -> Scene:
    """A shallow copy of `scene` whose `optimize.targets.downscale` is `downscale` (`drstudio optimize
    --downscale N`). SceneError unless its targets come from a dataset (`targets.transforms`)."""
    import copy

    spec = getattr(scene, "optimize", None)
    if spec is None or getattr(spec.targets, "transforms", None) is None:
        raise SceneError(scene.path, "optimize.targets", f"--downscale {downscale}: expected a scene whose targets "
                         f"come from a dataset (targets.transforms); this one's do not")
    if not isinstance(downscale, int) or isinstance(downscale, bool) or not 1 <= downscale <= 64:
        raise SceneError(scene.path, "optimize.targets.downscale", f"expected an integer in [1, 64], got "
                         f"{downscale!r}")
    out = copy.copy(scene)
    out.optimize = spec.model_copy(update={"targets": spec.targets.model_copy(update={"downscale": downscale})})
    return out


def build_targets(scene: Scene, ds: DeviceScene, truth: dict, target_spec, current: dict,
                  image_files: dict[str, str] | None = None, mask_files: dict[str, Path] | None = None) -> list:
    """The targets: the image files' (`image_files` {camera: file}, and `targets.images`), with the masks of
    `mask_files` {camera: mask file} (`dataset_masks`), else the views of `targets.cameras` rendered at `truth`."""
    base = Path(scene.path).parent if scene.path else Path(".")
    files: dict[str, str] = dict(image_files or {})
    downscale = target_downscale(scene)
    for item in getattr(target_spec, "images", None) or []:
        files[item.camera] = str(base / item.file)
    targets = []
    if files:
        # held as float32 linear RGB on the device (12 bytes a pixel), with a decoding copy of one at a time
        pixels = sum(scene.cameras[c].width * scene.cameras[c].height for c in files)
        try:
            memory.require(12 * pixels, f"the {len(files)} target images ({pixels / 1e6:.0f} Mpixels)")
        except memory.MemoryBudgetError as exc:
            raise SceneError(scene.path, "optimize.targets", f"{exc}; use a downscaled dataset (drstudio capture "
                             "--downscale N)") from None
        for cam, file in progress.track("loading target images", files.items(), unit="image"):
            c = scene.cameras[cam]
            if downscale > 1:  # an images_N/ file, or the full image resized on load
                img = read_frame_image(file, c.width, c.height)
            else:
                img = srgb_to_linear(read_image(file, channels=3))
            if img.shape[:2] != (c.height, c.width):
                raise SceneError(file, "", f"image is {img.shape[1]}x{img.shape[0]}, but camera {cam!r} is "
                                 f"{c.width}x{c.height}")
            arr = wp.array(np.ascontiguousarray(img.reshape(-1, 3), np.float32), dtype=float, device=ds.device)
            mask = None
            if (mask_files or {}).get(cam) is not None:
                seen = read_frame_mask(mask_files[cam], c.width, c.height).reshape(-1)
                if not seen.any():
                    raise SceneError(str(mask_files[cam]), "", f"the mask of camera {cam!r} ignores every pixel")
                mask = wp.array(seen.astype(np.float32), dtype=float, device=ds.device)
            targets.append(Target(cam, arr, mask))
        return targets
    cameras = list(getattr(target_spec, "cameras", None) or scene.cameras)
    # the truth goes into the live leaves for the render and the current values come back whatever happens
    try:
        for path, value in truth.items():
            ds.set(path, value)
        frame = ds.prepare()
        path = {}
        if scene.render.mode == "path":  # a less noisy estimate, with random numbers no step uses
            from .models import TARGET_SEED_OFFSET, TARGET_SPP_FACTOR

            path = dict(spp=getattr(target_spec, "spp", None) or TARGET_SPP_FACTOR * scene.render.spp,
                        seed=(scene.render.seed + TARGET_SEED_OFFSET) % (1 << 31))
        for cam in progress.track("rendering the targets", cameras, unit="view"):
            out = render_view(ds, frame, cam, **path)
            targets.append(Target(cam, wp.clone(out.image, requires_grad=False)))
    finally:
        for path, value in current.items():
            ds.set(path, value)
    return targets
