"""`render`: the stages composed into an image, with the auxiliary buffers the viewer shows.

Hard and anti-aliased modes (deferred): camera rays -> rasterized visibility -> differentiable ray/triangle
intersection -> interpolated attributes -> textures -> shading (+ shadow rays) -> background ->
(antialias: nvdiffrast-style silhouette blending for edge gradients).
Soft mode (SoftRas): materials are sampled and shaded at the vertices (Gouraud), and the soft
rasterizer aggregates the vertex colors with probabilistic coverage; its alpha gives silhouette
gradients everywhere near an edge. Shadows are not computed in soft mode. The auxiliary buffers
(tri_id, depth, normals) of every mode come from the same visibility pass. Primary visibility is
rasterized (`stages.raster`, the ids BVH ray casting would give); the BVH serves the shadow rays.
Emissive materials add their emission to the shaded color in these modes.
Path mode: `stages.pathtrace` over the prepared frame (`path_scene`: the frame's packed arrays, so the
path-replay adjoint hands its gradients to the same tape), light transport with emitters and the
environment light; the auxiliary buffers come from the rasterized primary visibility.
`render_view(..., cache=GBufferCache)` reuses what the optimized parameters do not change
(`render_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import warp as wp

from . import memory
from .device_scene import DeviceScene, Frame
from .params import Group, ParamPath, camera_intrinsics, camera_pose
from .render_cache import GBufferCache, constant
from .scene import RENDER_MODES, Scene
from .stages import antialias as aa
from .stages import background as bg
from .stages import camera as cam
from .stages import gbuffer, interpolate, pack, raster, shading, shadow_edges, shadow_grid, softras, texture, visibility
from .stages import pathtrace as pt
from .stages.shading import Lights
from .thread_tape import active_tape, recording


@dataclass
class RenderOutput:
    """Flat per-pixel buffers (N = width * height, row 0 at the top)."""

    width: int
    height: int
    image: wp.array2d  # (N, 3) linear RGB, differentiable; .grad is d(loss)/d(image) after tape.backward
    tri_id: wp.array | None = None  # (N,) int32, -1 background (primary visibility, every mode)
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


# Rasterization costs about one triangle setup per triangle plus one test per pixel of its bounding box;
# a BVH ray costs about log(triangles) per pixel. Measured on this CPU at 256x256: rasterization is 2-5x
# faster up to 1.5 triangles per pixel and slower beyond ~10 (1M triangles), where the BVH takes over.
RASTER_MAX_TRIANGLES_PER_PIXEL = 8.0
BAND_MODES = ("hard", "antialias")  # the modes that render a band of rows exactly (render_view's first_row)


def _primary_ids(ds: DeviceScene, frame: Frame, world, intr, pose, origins, directions, width: int, height: int,
                 first_row: int = 0, image_pixels: int | None = None):
    """Per-pixel triangle ids: rasterized, or BVH ray cast for meshes much denser than the pixels (the same
    ids but for exact ties). `image_pixels`: the whole image's pixel count, which decides (a band of rows
    from `first_row` on chooses as its image does); default width * height."""
    if ds.num_faces <= RASTER_MAX_TRIANGLES_PER_PIXEL * (image_pixels or width * height):
        return raster.rasterize(world, ds.faces, intr, pose, width, height, first_row)
    return visibility.trace_primary(frame.bvh, origins, directions)


def _lambert_only(ds: DeviceScene) -> bool:
    return all(m.model == "lambert" for m in ds.scene.materials.values())


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
                height: int | None = None, cache: GBufferCache | None = None,
                cache_key: tuple | None = None, spp: int | None = None, seed: int | None = None,
                max_depth: int | None = None, adjoint_seed: int | None = None,
                emission_grad: bool = False, first_row: int = 0, image_height: int | None = None) -> RenderOutput:
    """Render `camera` of `ds` from the prepared `frame`.

    `mode` and `shadows` default to the scene's render settings; so do `spp`, `seed` and `max_depth` of
    the path mode (`_render_path`; the other modes ignore them, and `adjoint_seed`). The rasterized modes add
    the emission of emissive materials when it is nonzero, or, under a tape, when an emission is free in
    `cache` or `emission_grad` asks for its gradient (a zero emission otherwise costs nothing and gets no
    gradient). `intrinsics`/`pose` override the
    camera's leaf arrays (e.g. the viewer's free camera); `width`/`height` override its resolution
    (intrinsics are then used as given, so scale them to match).

    `cache` (a `renderer.render_cache.GBufferCache` of `ds`) reuses the view's G-buffer parts whose inputs
    did not change since they were stored (hard and antialias modes; see that module for what is exact).
    With `intrinsics`/`pose` overrides the cache is used only when `cache_key` is given: a tuple that the
    overrides are a function of, together with the camera's own leaves.

    `first_row` (hard and antialias modes, a color background): render only the band of `height` image rows
    from `first_row` on (`stages.camera`: every pixel stage works in the full image's pixel coordinates
    against the unchanged intrinsics, so the band's pixels equal the full render's bit for bit, except the
    antialias blends of its first row with the row above and of its last row with the row below, which it does
    not have: render one more row on each side and keep the inner rows). `height` is then the
    band's row count (required); the outputs hold the band's rows, and `image_height` is the whole image's
    (which decides rasterization or BVH ray casting as for the whole image; default `height`). Used by
    `renderer.parallel` and the data-parallel split of a step's rows (`renderer.optim.models`)."""
    sc = ds.scene
    mode = mode or sc.render.mode
    if mode not in RENDER_MODES:
        raise ValueError(f"render mode {mode!r}: expected one of {RENDER_MODES}")
    if cache is not None and not isinstance(cache, GBufferCache):
        raise TypeError(f"cache: expected a GBufferCache or None, got {type(cache).__name__}")
    if cache is not None and cache.ds is not ds:
        raise ValueError("cache: expected a GBufferCache of this DeviceScene")
    shadows = sc.render.shadows if shadows is None else shadows
    c = sc.cameras[camera]
    first_row = cam.check_first_row(first_row)
    if first_row and (height is None or mode not in BAND_MODES or ds.background_pool is not None):
        raise ValueError(f"first_row {first_row}: a band of rows needs its height and the {BAND_MODES} modes "
                         f"with a background color (got mode {mode!r}, height {height!r})")
    width, height = width or c.width, height or c.height
    image_pixels = width * int(image_height or height)  # of the whole image a band belongs to
    if width * height > 2**20:  # only large renders can exceed the machine: skip the check for the rest
        memory.require(memory.render_bytes(width, height), f"rendering camera {camera!r} at {width}x{height}")
    overridden = intrinsics is not None or pose is not None
    intr = intrinsics if intrinsics is not None else ds.leaf(camera_intrinsics(camera))
    pose = pose if pose is not None else ds.leaf(camera_pose(camera))
    if mode == "path":
        r = sc.render
        return _render_path(ds, frame, intr, pose, width, height, spp=r.spp if spp is None else spp,
                            seed=r.seed if seed is None else seed,
                            max_depth=r.max_depth if max_depth is None else max_depth, adjoint_seed=adjoint_seed)
    background = _background(ds, width, height)
    if mode == "soft":
        origins, directions = cam.generate_rays(intr, pose, width, height)
        tri = _primary_ids(ds, frame, frame.world, intr, pose, origins, directions, width, height)
        bary, depth = visibility.intersect(frame.world, ds.faces, tri, origins, directions)
        normals = interpolate.interpolate(frame.normals, ds.faces, tri, bary)
        return _render_soft(ds, frame, intr, pose, width, height, background, tri, depth, normals,
                            _adds_emission(ds, frame, cache, emission_grad))
    if overridden and cache_key is None:
        cache = None
    mipmaps = bool(sc.render.mipmaps)
    key = (camera, int(width), int(height), mode, mipmaps, bool(shadows), cache_key, first_row, image_pixels)

    def part(name: str, build):
        return build(False) if cache is None else cache.fetch(key, name, camera, build)

    def build_visibility(const: bool) -> dict:
        k = constant if const else (lambda a: a)
        world, i, p = k(frame.world), k(intr), k(pose)
        origins, directions = cam.generate_rays(i, p, width, height, first_row)
        tri = _primary_ids(ds, frame, world, i, p, origins, directions, width, height, first_row, image_pixels)
        bary, depth = visibility.intersect(world, ds.faces, tri, origins, directions)
        mat, model = gbuffer.pixel_materials(tri, ds.face_material, ds.material_model)
        out = dict(tri=tri, bary=bary, depth=depth, mat=mat, model=model,
                   normals=interpolate.interpolate(k(frame.normals), ds.faces, tri, bary),
                   positions=gbuffer.hit_points(origins, directions, depth, tri),
                   coverage=bg.coverage_from_ids(tri), bary_db=None, screen=None, pairs=None)
        if mipmaps:
            out["bary_db"] = visibility.bary_derivatives(world, ds.faces, tri, i, p, width, height, first_row)
        if mode == "antialias":
            out["screen"] = cam.project_points(world, i, p)
            out["pairs"] = aa.silhouette_pairs(tri, depth, out["screen"], ds.faces, ds.neighbors, width, height,
                                               first_row)
        return out

    g = part("visibility", build_visibility)
    tri, bary = g["tri"], g["bary"]

    def build_uv(const: bool):
        uvs = constant(frame.uvs) if const else frame.uvs
        uv = interpolate.interpolate(uvs, ds.faces, tri, bary)
        uv_da = None
        if mipmaps:
            uv_da = interpolate.interpolate_derivatives(uvs, ds.faces, tri, g["bary_db"])
        return uv, uv_da

    def build_colors(const: bool):
        return interpolate.interpolate(constant(frame.colors) if const else frame.colors, ds.faces, tri, bary)

    def build_shadow(const: bool):
        lights = Lights(*[constant(a) for a in frame.lights.arrays()]) if const else frame.lights
        return shadow_grid.shadow_mask_grid(frame.bvh, g["positions"], g["normals"], g["model"], lights,
                                            facing_only=True, grids=frame.shadow_grids)

    uv, uv_da = part("uv", build_uv)
    mat, model = g["mat"], g["model"]
    # the point lights' shadow boundaries (edge sampling, below): only under a tape, when something that moves
    # a shadow is differentiated, and not when the cache holds the shadow mask as a constant
    shadow_boundaries = (shadows and sc.render.shadow_edges > 0 and active_tape() is not None
                         and any(a.requires_grad for a in (frame.world, frame.lights.point_position,
                                                           frame.lights.dir_direction, intr, pose))
                         and not (cache is not None and cache.cacheable("shadow", camera)))

    def sample_albedo(scale):
        if cache is None or not cache.cacheable("footprint", camera):
            return texture.sample(frame.albedo, mat, uv, uv_da, scale=scale)
        # constant uvs: the texel addresses and weights are too, so the lookup is a weighted gather
        layout = texture.pool_layout(frame.albedo)
        fp = cache.fetch((*key, layout), "footprint", camera,
                         lambda const: texture.footprint(frame.albedo, mat, uv, uv_da))
        return texture.sample_footprint(frame.albedo, fp, scale=scale)

    if cache is not None and _lambert_only(ds) and cache.cacheable("lambert", camera):
        # Lambert radiance is linear in the albedo: albedo * (ambient + sum_j E_j s_j / pi) per channel.
        # With geometry, camera, lights and vertex colors fixed, the factor vcolor * that sum is a
        # constant, so the step is one texture sample scaled by it (no shade pass, no shadow rays).
        def build_lambert(const: bool):
            lights = Lights(*[constant(a) for a in frame.lights.arrays()])
            n = tri.shape[0]
            ones = wp.ones((n, 3), dtype=float, device=ds.device)
            zeros = wp.zeros((n, 1), dtype=float, device=ds.device)
            shadow = build_shadow(True) if shadows else None
            irradiance = shading.shade(g["positions"], g["normals"], ones, zeros, zeros, model, constant(pose),
                                       lights, shadow)
            return gbuffer.multiply(irradiance, build_colors(True))

        radiance = sample_albedo(part("lambert", build_lambert))
        gb = None  # geometry and lights are constants of this render: no shadow boundary moves
    elif _lambert_only(ds):
        # The same factorization recomputed: the factor is shaded with the vertex colors as the albedo and the
        # albedo lookup scaled by it, so a step that differentiates only the texture runs one lookup's adjoint
        # and no shading adjoint (equal to shading the albedo to float32 roundoff: another order of products)
        zeros = wp.zeros((tri.shape[0], 1), dtype=float, device=ds.device)
        shadow = part("shadow", build_shadow) if shadows else None
        vcolor = part("colors", build_colors)
        factor = shading.shade(g["positions"], g["normals"], vcolor, zeros, zeros, model, pose, frame.lights, shadow)
        radiance = sample_albedo(factor)
        # the shadow boundaries' radiance jump needs the albedo itself: one more lookup, only when they run
        gb = (sample_albedo(vcolor), zeros, zeros) if shadow_boundaries else None
    else:
        vcolor = part("colors", build_colors)
        albedo = sample_albedo(vcolor)
        rough, metal = _roughness_metallic(ds, frame, mat, uv, uv_da)
        shadow = part("shadow", build_shadow) if shadows else None
        radiance = shading.shade(g["positions"], g["normals"], albedo, rough, metal, model, pose, frame.lights,
                                 shadow)
        gb = (albedo, rough, metal)
    if _adds_emission(ds, frame, cache, emission_grad):
        radiance = gbuffer.add(radiance, texture.sample(frame.emission, mat, uv, uv_da))
    # composite fused with the output copy (whose gradient stays readable); the blend adds into it
    comp, image = bg.composite_output(radiance, g["coverage"], background, keep_composite=mode == "antialias")
    if mode == "antialias":
        aa.blend(comp, g["screen"], ds.faces, *g["pairs"], width, into=image, first_row=first_row)
    # the point lights' shadow boundaries (edge sampling), reading image.grad in the backward pass
    if shadow_boundaries and gb is not None:
        shadow_edges.record_shading_boundary(
            active_tape(), image, frame.bvh.id, frame.world, ds.faces, _shadow_neighbors(ds), tri, g["normals"], *gb,
            model, frame.lights, intr, pose, width, height, samples=int(sc.render.shadow_edges),
            seed=int(sc.render.seed), first_row=first_row)
    return RenderOutput(width, height, image, tri, g["depth"], g["normals"], g["coverage"])


def _shadow_neighbors(ds: DeviceScene) -> wp.array:
    """Face adjacency with vertices welded by position (`shadow_edges.welded_neighbors`), built once per
    DeviceScene."""
    nb = getattr(ds, "_shadow_neighbors", None)
    if nb is None:
        verts = [m.vertices for m in ds.scene.meshes.values()]
        nb = wp.array(shadow_edges.welded_neighbors(verts, ds.faces_np), dtype=wp.int32, device=ds.device)
        ds._shadow_neighbors = nb
    return nb


def _adds_emission(ds: DeviceScene, frame: Frame, cache: GBufferCache | None, emission_grad: bool) -> bool:
    """Whether a rasterized render adds the emission: when some emission is nonzero, or under a tape when a
    zero emission is to be differentiated (free in the optimizer's cache, or `emission_grad`). Sampling it
    costs ~15 % of an uncached 256x256 step, so a zero emission nobody differentiates is skipped."""
    if frame.emission is None:
        return False
    if ds.emits():
        return True
    if active_tape() is None or not frame.emission.data.requires_grad:
        return False
    if emission_grad:
        return True
    return cache is not None and any(ParamPath(Group.MATERIALS, m, "emission") in cache.varying
                                     for m in ds.scene.materials)


PATH_RR_DEPTH = 5  # Russian roulette from this scattering event on (renderer.stages.pathtrace)


def _path_tables(ds: DeviceScene, frame: Frame) -> dict:
    """The path tracer's importance-sampling tables (emissive triangles by area x emission, environment
    texels by luminance), built on the host from the current values and rebuilt only when the values they
    come from changed (the table's versions). Any table gives an unbiased image; they are constants of the
    render (not differentiated)."""
    sc, dev = ds.scene, ds.device
    emission_paths = [ParamPath(Group.MATERIALS, n, "emission") for n in sc.materials]
    geometry_paths = [ParamPath(Group.MESHES, m, n) for m in sc.meshes
                      for n in ("vertices", "translation", "rotation", "scale")]
    env_paths = [ParamPath(Group.LIGHTS, n, "radiance") for n in sc.environment_lights]
    versions = ds.params.versions
    tables = ds.path_tables
    key = tuple(versions[p] for p in emission_paths + geometry_paths)
    if tables.get("emitters_key") != key:
        means = np.stack([ds.arrays[p].numpy().reshape(-1, 3).mean(0) for p in emission_paths])
        world = frame.world.numpy()
        lf, cdf, pmf = pt.emitter_distribution(world, ds.faces_np, ds.face_material.numpy(), means)
        tables.update(emitters_key=key, light_faces=wp.array(lf, dtype=wp.int32, device=dev),
                      light_cdf=wp.array(cdf, dtype=float, device=dev),
                      face_light_pmf=wp.array(pmf, dtype=float, device=dev))
    key = tuple(versions[p] for p in env_paths)
    if tables.get("env_key") != key:
        if env_paths:
            marg, cond = pt.env_distribution(ds.arrays[env_paths[0]].numpy())
        else:
            marg, cond = np.zeros(0, np.float32), np.zeros(0, np.float32)
        tables.update(env_key=key, env_marginal=wp.array(marg, dtype=float, device=dev),
                      env_conditional=wp.array(cond, dtype=float, device=dev))
    return tables


def path_scene(ds: DeviceScene, frame: Frame) -> pt.PathScene:
    """The `PathScene` of a prepared frame: its arrays are the frame's (outputs of recorded kernels or the
    leaves themselves), so gradients the path tracer accumulates into them flow on to the leaves through the
    enclosing tape."""
    t = _path_tables(ds, frame)
    env = frame.env if frame.env is not None else wp.zeros((0, 0, 3), dtype=float, device=ds.device)
    return pt.PathScene(
        bvh=frame.bvh, normals=frame.normals, uvs=frame.uvs, face_material=ds.face_material,
        material_model=ds.material_model, albedo=frame.albedo, roughness=frame.roughness, metallic=frame.metallic,
        emission=frame.emission, lights=frame.lights, env=env, env_marginal=t["env_marginal"],
        env_conditional=t["env_conditional"], light_faces=t["light_faces"], light_cdf=t["light_cdf"],
        face_light_pmf=t["face_light_pmf"], colors=frame.colors)


def _render_path(ds: DeviceScene, frame: Frame, intr, pose, width: int, height: int, *, spp: int, seed: int,
                 max_depth: int, adjoint_seed: int | None = None) -> RenderOutput:
    """Path mode: `renderer.stages.pathtrace.render_path` of the frame (every CPU core renders a band of
    rows), differentiable through an enclosing tape by path replay backpropagation.

    The adjoint replays the paths of `seed` (None: the exact derivative of this very image, what a
    finite-difference check with shared random numbers sees) or of `adjoint_seed`, an independent estimate
    of the derivative of the expected image. A loss such as L2 multiplies the image's error by its
    derivative; estimated from the same paths, the two are correlated and the product's expectation is
    biased (by their covariance), estimated from independent paths it is not (what the optimizer uses).
    The auxiliary buffers (tri_id, depth, normals, coverage) come from the rasterized primary visibility,
    off the tape."""
    from .parallel import default_workers

    scene = path_scene(ds, frame)
    intr_c, pose_c = constant(intr), constant(pose)
    kwargs = dict(spp=int(spp), max_depth=int(max_depth), rr_depth=PATH_RR_DEPTH, threads=default_workers(),
                  jitter=bool(ds.scene.render.jitter))
    tape = active_tape()
    if adjoint_seed is None or tape is None:
        if tape is not None:  # render_path keeps each path's radiance (12 bytes a sample) for the adjoint
            memory.require(12 * width * height * int(spp), f"the {width}x{height}x{spp}-sample path radiance kept "
                           "for the adjoint")
        image = pt.render_path(scene, intr_c, pose_c, width, height, seed=int(seed), **kwargs)
    else:
        with recording(None):
            image = pt.render_path(scene, intr_c, pose_c, width, height, seed=int(seed), **kwargs)
        params = scene.parameters()
        want = [k for k, a in params.items() if a.requires_grad and a.size > 0]
        if want:  # the image requires grad then (render_path made it so)
            def backward():
                pt.render_path_backward(scene, image.grad, intr_c, pose_c, width, height, seed=int(adjoint_seed),
                                        wrt=want, **kwargs)

            tape.record_func(backward, [image, *[params[k] for k in want]])
    if tape is not None and not image.requires_grad:
        image.requires_grad = True  # nothing to differentiate, but the loss's adjoint still lands in .grad
    world, i, p = constant(frame.world), constant(intr), constant(pose)
    origins, directions = cam.generate_rays(i, p, width, height)
    tri = _primary_ids(ds, frame, world, i, p, origins, directions, width, height)
    if max_depth >= 1 and ds.scene.render.shadow_edges > 0:
        # the point lights' shadow boundaries on directly seen surfaces (edge sampling)
        # (camera: constants, as in the rest of the path mode, which gives the camera no gradient)
        shadow_edges.record_path_boundary(tape, image, scene, _shadow_neighbors(ds), tri, intr_c, pose_c, width,
                                          height, samples=int(ds.scene.render.shadow_edges), seed=int(seed))
        # emissive meshes and the environment: the edges seen from the surfaces (per pixel)
        shadow_edges.record_area_boundary(tape, image, scene, _shadow_neighbors(ds), intr_c, pose_c, width, height,
                                          samples=int(ds.scene.render.shadow_edges), seed=int(seed))
    bary, depth = visibility.intersect(world, ds.faces, tri, origins, directions)
    normals = interpolate.interpolate(constant(frame.normals), ds.faces, tri, bary)
    return RenderOutput(width, height, image, tri, depth, normals, bg.coverage_from_ids(tri))


def _render_soft(ds, frame, intr, pose, width, height, background, tri, depth, normals,
                 emission: bool = False) -> RenderOutput:
    if background.ndim != 1:
        raise ValueError("soft render mode supports a background color only, not an image")
    positions = pack.vec3_to_rows(frame.world)
    albedo = texture.sample(frame.albedo, ds.vertex_material, frame.uvs, None, scale=frame.colors)
    rough, metal = _roughness_metallic(ds, frame, ds.vertex_material, frame.uvs, None)
    model = _vertex_models(ds)
    vcolors = shading.shade(positions, frame.normals, albedo, rough, metal, model, pose, frame.lights, None)
    if emission:
        vcolors = gbuffer.add(vcolors, texture.sample(frame.emission, ds.vertex_material, frame.uvs, None))
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
