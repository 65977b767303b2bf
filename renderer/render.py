"""`render`: the stages composed into an image, with the auxiliary buffers the viewer shows.

Hard and anti-aliased modes (deferred): camera rays -> BVH visibility -> differentiable ray/triangle
intersection -> interpolated attributes -> textures -> shading (+ shadow rays) -> background ->
(antialias: nvdiffrast-style silhouette blending for edge gradients).
Soft mode (SoftRas): materials are sampled and shaded at the vertices (Gouraud), and the soft
rasterizer aggregates the vertex colors with probabilistic coverage; its alpha gives silhouette
gradients everywhere near an edge. Shadows are not computed in soft mode. The auxiliary buffers
(tri_id, depth, normals) of every mode come from the same ray-cast visibility pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import warp as wp

from .device_scene import DeviceScene, Frame
from .scene import RENDER_MODES, Scene
from .stages import antialias as aa
from .stages import background as bg
from .stages import camera as cam
from .stages import gbuffer, interpolate, pack, shading, softras, texture, visibility


@dataclass
class RenderOutput:
    """Flat per-pixel buffers (N = width * height, row 0 at the top)."""

    width: int
    height: int
    image: wp.array2d  # (N, 3) linear RGB, differentiable; .grad is d(loss)/d(image) after tape.backward
    tri_id: wp.array | None = None  # (N,) int32, -1 background (ray-cast visibility, every mode)
    depth: wp.array | None = None  # (N,) view depth (0 on background)
    normals: wp.array2d | None = None  # (N, 3) unnormalized interpolated normals (0 on background)
    alpha: wp.array | None = None  # (N,) coverage: 0/1 from tri_id (hard, antialias), SoftRas alpha (soft)

    def numpy(self) -> np.ndarray:
        """The image as an (H, W, 3) float32 NumPy array (a copy)."""
        return self.image.numpy().reshape(self.height, self.width, 3).copy()


def _background(ds: DeviceScene, width: int, height: int):
    """The background as a (3,) color array or an (N, 3) image resampled to this resolution."""
    if ds.background_pool is None:
        return ds.background_color
    index = wp.zeros(width * height, dtype=wp.int32, device=ds.device)
    return texture.sample(ds.background_pool, index, gbuffer.pixel_uv(width, height, ds.device), None)


def _roughness_metallic(ds: DeviceScene, frame: Frame, index, uv, uv_da):
    """Per-point roughness and metallic. Lambert ignores both, so a scene without GGX materials skips
    sampling them (their gradient is exactly zero either way)."""
    if "ggx" not in {m.model for m in ds.scene.materials.values()}:
        zeros = wp.zeros((index.shape[0], 1), dtype=float, device=ds.device)
        return zeros, zeros
    return texture.sample(frame.roughness, index, uv, uv_da), texture.sample(frame.metallic, index, uv, uv_da)


def render_view(ds: DeviceScene, frame: Frame, camera: str, *, mode: str | None = None,
                shadows: bool | None = None, intrinsics: wp.array | None = None,
                pose: wp.array | None = None, width: int | None = None,
                height: int | None = None) -> RenderOutput:
    """Render `camera` of `ds` from the prepared `frame`.

    `mode` and `shadows` default to the scene's render settings. `intrinsics`/`pose` override the
    camera's leaf arrays (e.g. the viewer's free camera); `width`/`height` override its resolution
    (intrinsics are then used as given, so scale them to match)."""
    sc = ds.scene
    mode = mode or sc.render.mode
    if mode not in RENDER_MODES:
        raise ValueError(f"render mode {mode!r}: expected one of {RENDER_MODES}")
    shadows = sc.render.shadows if shadows is None else shadows
    c = sc.cameras[camera]
    width, height = width or c.width, height or c.height
    intr = intrinsics if intrinsics is not None else ds.arrays[f"cameras.{camera}.intrinsics"]
    pose = pose if pose is not None else ds.arrays[f"cameras.{camera}.pose"]
    background = _background(ds, width, height)
    origins, directions = cam.generate_rays(intr, pose, width, height)
    tri = visibility.trace_primary(frame.bvh, origins, directions)
    bary, depth = visibility.intersect(frame.world, ds.faces, tri, origins, directions)
    if mode == "soft":
        normals = interpolate.interpolate(frame.normals, ds.faces, tri, bary)
        return _render_soft(ds, frame, intr, pose, width, height, background, tri, depth, normals)

    mat, model = gbuffer.pixel_materials(tri, ds.face_material, ds.material_model)
    uv = interpolate.interpolate(frame.uvs, ds.faces, tri, bary)
    uv_da = None
    if sc.render.mipmaps:
        bary_db = visibility.bary_derivatives(frame.world, ds.faces, tri, intr, pose, width, height)
        uv_da = interpolate.interpolate_derivatives(frame.uvs, ds.faces, tri, bary_db)
    normals = interpolate.interpolate(frame.normals, ds.faces, tri, bary)
    vcolor = interpolate.interpolate(frame.colors, ds.faces, tri, bary)
    positions = gbuffer.hit_points(origins, directions, depth, tri)
    albedo = gbuffer.multiply(texture.sample(frame.albedo, mat, uv, uv_da), vcolor)
    rough, metal = _roughness_metallic(ds, frame, mat, uv, uv_da)
    shadow = shading.shadow_mask(frame.bvh.id, positions, normals, model, frame.lights) if shadows else None
    radiance = shading.shade(positions, normals, albedo, rough, metal, model, pose, frame.lights, shadow)
    coverage = bg.coverage_from_ids(tri)
    image = bg.composite(radiance, coverage, background)
    if mode == "antialias":
        image = aa.antialias(image, tri, depth, frame.world, ds.faces, ds.neighbors, intr, pose, width, height)
    return RenderOutput(width, height, gbuffer.output(image), tri, depth, normals, coverage)


def _render_soft(ds, frame, intr, pose, width, height, background, tri, depth, normals) -> RenderOutput:
    if background.ndim != 1:
        raise ValueError("soft render mode supports a background color only, not an image")
    positions = pack.vec3_to_rows(frame.world)
    albedo = gbuffer.multiply(texture.sample(frame.albedo, ds.vertex_material, frame.uvs, None), frame.colors)
    rough, metal = _roughness_metallic(ds, frame, ds.vertex_material, frame.uvs, None)
    model = _vertex_models(ds)
    vcolors = shading.shade(positions, frame.normals, albedo, rough, metal, model, pose, frame.lights, None)
    s = ds.scene.render
    color, alpha = softras.soft_rasterize(frame.world, ds.faces, vcolors, intr, pose, width, height,
                                          s.soft_sigma, s.soft_gamma, background)
    return RenderOutput(width, height, gbuffer.output(color), tri, depth, normals, alpha)


def _vertex_models(ds: DeviceScene) -> wp.array:
    models = ds.material_model.numpy()[ds.vertex_material.numpy()]
    return wp.array(models.astype(np.int32), dtype=wp.int32, device=ds.device)


def render(scene: Scene | DeviceScene, camera: str | None = None, **kwargs) -> RenderOutput:
    """Prepare and render one camera (the first one by default). Wrap the call in a `wp.Tape` to
    differentiate; for several views of one step call `DeviceScene.prepare` once and `render_view`
    per view instead."""
    ds = scene if isinstance(scene, DeviceScene) else DeviceScene(scene)
    camera = camera or next(iter(ds.scene.cameras))
    return render_view(ds, ds.prepare(), camera, **kwargs)
