"""The 3D viewport: the scene drawn with OpenGL from the free camera, with the differentiable
renderer's shading model (shaders/shading.glsl mirrors renderer/stages/shading.py), the current value
of every parameter, the gradient overlays, and markers of the current and target lights and cameras.

`Viewport.sync(state)` pushes changed values into GL buffers, textures and uniforms (identity checks:
a snapshot's arrays are new objects only when the engine published new values), `Viewport.render`
draws into an offscreen framebuffer that `viewport_window` shows in the docked "Viewport" window,
where the mouse orbits (left drag), pans (right or middle drag, or shift + left), zooms (wheel) and F
frames everything. While the camera moves the view renders at half resolution (held frame rate).
"""

from __future__ import annotations

import math
import time

import moderngl
import numpy as np
from drstudio.renderer import conventions as cv
from drstudio.renderer.params import Group, Kind, ParamPath, camera_intrinsics, camera_pose, param_path
from imgui_bundle import imgui, imguizmo

from . import geometry, gizmos
from .camera import gl_bytes, intrinsics_projection, pose_view
from .field_layer import FieldLayer, FieldViewSettings
from .field_preview import LADDER, PreviewRequest
from .glsl import program, set_uniform, write_uniform
from .lights import PackedLights, pack_lights
from .overlays import arrow_lines, auto_vmax, draw_legend, magnitudes
from .path_preview import PathRequest
from .path_preview import status as path_status
from .shadows import ShadowMaps
from .state import TEXTURES, AppState
from .uploads import Uploader

CURRENT_COLOR = (0.25, 0.85, 1.0, 1.0)  # markers of the optimized scene
TARGET_COLOR = (1.0, 0.6, 0.15, 1.0)  # markers of the target scene
ARROW_COLOR = (1.0, 0.25, 0.3, 1.0)  # -gradient arrows of lights and cameras
MOVING_SCALE = 0.5  # resolution while the camera moves
HEAT_UNIT, COLORMAP_UNIT, SHADOW_UNIT, LIGHTS_UNIT, EMISSION_UNIT = 3, 4, 5, 6, 7  # of the mesh program (0-2: TEXTURES)
ENV_UNIT, ENV_HEAT_UNIT, ENV_COLORMAP_UNIT = 0, 1, 2  # texture units of the environment program
SNAPSHOT_REDRAW_FPS = 5.0  # new optimizer values redraw the 3D view at most this often (input: always)
REST_REDRAW_FPS = 1.0  # ... and this often when nobody has touched the window for a while (AppState.at_rest)

gizmo = imguizmo.im_guizmo


class _MeshGL:
    """GL buffers of one mesh (`v` vertices, `faces`); world positions/normals re-uploaded when its values
    change. A new topology (a remeshed optimized mesh) gets new buffers (`Viewport.sync`)."""

    def __init__(self, ctx: moderngl.Context, prog: moderngl.Program, v: int, faces: np.ndarray):
        self.faces = faces  # the faces array in the index buffer (identity: a new topology is a new array)
        self.n = v
        self.pos_nrm = ctx.buffer(reserve=v * 24)
        self.uv = ctx.buffer(reserve=v * 8)
        self.color = ctx.buffer(reserve=v * 12)
        self.heat = ctx.buffer(np.zeros(v, np.float32).tobytes())
        self.ibo = ctx.buffer(np.ascontiguousarray(faces, np.int32).tobytes())
        self.vao = ctx.vertex_array(prog, [(self.pos_nrm, "3f 3f", "in_position", "in_normal"),
                                           (self.uv, "2f", "in_uv"), (self.color, "3f", "in_color"),
                                           (self.heat, "1f", "in_heat")], index_buffer=self.ibo)
        self.sources: dict[str, object] = {}  # uploaded value objects, by parameter path
        self.world = np.zeros((v, 3), np.float32)
        self.heat_source = None

    def release(self) -> None:
        for obj in (self.vao, self.pos_nrm, self.uv, self.color, self.heat, self.ibo):
            obj.release()


class Viewport:
    def __init__(self, ctx: moderngl.Context, state: AppState, uploader: Uploader, colormap: moderngl.Texture):
        self.ctx = ctx
        self.uploader = uploader
        self.colormap = colormap
        self.mesh_prog = program(ctx, "mesh.vert", "mesh.frag")
        self.line_prog = program(ctx, "lines.vert", "lines.frag")
        for unit, kind in enumerate(TEXTURES):  # units 0-2
            set_uniform(self.mesh_prog, f"u_{kind.value}", unit)
        set_uniform(self.mesh_prog, "u_heat_texture", HEAT_UNIT)
        set_uniform(self.mesh_prog, "u_colormap", COLORMAP_UNIT)
        set_uniform(self.mesh_prog, "u_lights", LIGHTS_UNIT)
        set_uniform(self.mesh_prog, "u_emission", EMISSION_UNIT)
        # the environment light (path mode) as the background: shaders/environment.frag
        self.env_prog = program(ctx, "image.vert", "environment.frag")
        for name, unit in (("u_env", ENV_UNIT), ("u_heat", ENV_HEAT_UNIT), ("u_colormap", ENV_COLORMAP_UNIT)):
            set_uniform(self.env_prog, name, unit)
        self.env_vao = ctx.vertex_array(self.env_prog, [])
        self.env_path = next((param_path(Group.LIGHTS, n, "radiance") for n in state.scene.environment_lights), None)
        self._env_source = None
        self._env_heat_source = None
        self._env_mean = None  # (value, its mean radiance over the sphere)
        self.light_texture: moderngl.Texture | None = None
        self.lights: PackedLights | None = None  # as last uploaded
        self.meshes = {name: self._mesh_gl(state, name) for name in state.scene.meshes}
        self.shadows = ShadowMaps(ctx)
        self._shadows_on = False
        # scenes with radiance fields: the preview thread's latest image and the occupancy points
        self.field = FieldLayer(ctx, colormap) if state.preview is not None else None
        # path mode: the progressive path-traced preview's latest image (app/viewer/path_preview.py)
        self.path_layer = FieldLayer(ctx, colormap) if state.path_preview is not None else None
        self.path_request: PathRequest | None = None
        self.path_shown = None  # the PathFrame the last drawn view shows (None: the rasterization)
        self.line_vbo = ctx.buffer(reserve=1 << 16, dynamic=True)
        self.line_vao = ctx.vertex_array(self.line_prog, [(self.line_vbo, "3f 4f", "in_position", "in_color")])
        self.fbo: moderngl.Framebuffer | None = None
        self.color: moderngl.Texture | None = None
        self.depth: moderngl.Renderbuffer | None = None
        self.size = (0, 0)
        self.drawn = (0, 0)  # the region of the framebuffer drawn last
        self._textures: dict[str, object] = {}  # material texture path -> uploaded value object
        self._heat_textures: dict[str, object] = {}  # material -> the gradient uploaded as its heat texture
        self.vmax: dict[str, float] = {}
        self._vmax_serial = -1
        self.moving = False
        self.drag_button: int | None = None
        self._drawn_key = None  # what the offscreen image shows; redrawn only when it changes
        self._drawn_serial = -1
        self._drawn_time = 0.0
        self.redraws = 0
        center, radius = state.scene_bounds()
        state.camera.scene_radius = radius
        cams = list(state.scene.cameras.values())
        if cams:  # start where the first view looks from, nerfstudio-style
            c = cams[0]
            state.camera.look_through(state.values[camera_pose(c.name)], state.values[camera_intrinsics(c.name)],
                                      c.height, center)
        else:
            state.camera.frame(center, radius)

    def _mesh_gl(self, state: AppState, name: str) -> _MeshGL:
        faces = state.faces(name)
        v = len(state.values[param_path(Group.MESHES, name, "vertices")])
        return _MeshGL(self.ctx, self.mesh_prog, v, faces)

    # -- values -> GL -----------------------------------------------------------------------------
    def sync(self, state: AppState) -> None:
        """Upload what changed since the last frame."""
        values, snap = state.values, state.snapshot
        for name in state.scene.meshes:
            g = self.meshes[name]
            if g.faces is not state.faces(name):  # an optimized mesh of a new topology (a remesh)
                g.release()
                g = self.meshes[name] = self._mesh_gl(state, name)
            geo = geometry.mesh_values(values, name)
            if any(g.sources.get(k) is not v for k, v in zip(("v", "t", "r", "s"), geo)):
                g.world = geometry.transform(*geo)
                normals = geometry.vertex_normals(g.world, g.faces)
                g.pos_nrm.write(np.ascontiguousarray(np.concatenate([g.world, normals], axis=1), np.float32))
                g.sources.update(zip(("v", "t", "r", "s"), geo))
            for key, buf, fill in (("uvs", g.uv, 0.0), ("colors", g.color, 1.0)):
                val = values[param_path(Group.MESHES, name, key)]
                if g.sources.get(key) is not val:
                    # a mesh of its own topology has no uvs or colors of that many vertices (not optimizable)
                    data = val if len(val) == g.n else np.full((g.n, np.shape(val)[1]), fill, np.float32)
                    buf.write(np.ascontiguousarray(data, np.float32))
                    g.sources[key] = val
            heat = snap.vertex_grads.get(param_path(Group.MESHES, name, "vertices")) \
                if state.overlays.on("geometry") else None
            if heat is not None and len(heat) != g.n:
                heat = None  # a gradient of the topology before a remesh
            if g.heat_source is not heat:
                g.heat.write(magnitudes(heat).astype(np.float32) if heat is not None
                             else np.zeros(g.n, np.float32))
                g.heat_source = heat
        for mat in state.scene.materials.values():
            for path in state.texture_paths(mat.name).values():
                val = values[path]
                seen = self._textures.get(path)
                if seen is None or seen[0] is not val or seen[1] != state.render.mipmaps:
                    self.uploader.forget(path)  # a changed mipmap setting re-uploads the same value
                    self.uploader.upload(path, val, mipmaps=state.render.mipmaps, repeat=mat.wrap == "wrap")
                    self._textures[path] = (val, state.render.mipmaps)
            epath = param_path(Group.MATERIALS, mat.name, "emission")
            val = values.get(epath)
            if val is not None and self._textures.get(epath, (None,))[0] is not val:
                self.uploader.upload(epath, val, repeat=mat.wrap == "wrap")  # HDR; bilinear like the renderer
                self._textures[epath] = (val, False)
            grad = overlay_gradient(state, overlay_path(state, mat.name, state.overlays.texture_property))
            if self._heat_textures.get(mat.name) is not grad:
                if grad is not None:
                    self.uploader.upload(f"heat.{mat.name}", grad, nearest=True, repeat=mat.wrap == "wrap")
                self._heat_textures[mat.name] = grad
        if self.env_path is not None:
            val = values[self.env_path]
            if self._env_source is not val:
                self.uploader.upload("environment", val, nearest=True)
                self._env_source = val
            grad = overlay_gradient(state, self.env_path) if state.overlays.on("texture") else None
            if grad is not self._env_heat_source:
                if grad is not None:
                    self.uploader.upload("heat.environment", grad, nearest=True)
                self._env_heat_source = grad
        if self.path_layer is not None:
            self.path_layer.sync(state.path_preview, PATH_LAYER_SETTINGS)
        if self.field is not None:
            self.field.sync(state.preview, state.field_view)
        if self._vmax_serial != state.serial:
            self._vmax_serial = state.serial
            self.vmax = {
                "image": auto_vmax([magnitudes(state.grad_image)] if state.grad_image is not None else []),
                "texture": auto_vmax([magnitudes(g) for g in texture_overlay_grads(state).values()]),
                "geometry": auto_vmax([magnitudes(g) for g in snap.vertex_grads.values()]),
                "params": auto_vmax([np.linalg.norm(param_arrow_vector(state, path, g))
                                     for path, g in snap.param_grads.items()], 100.0),  # a few arrows
            }

    def scale_for(self, state: AppState, overlay: str) -> float:
        ov = state.overlays
        return self.vmax.get(overlay, 1.0) if ov.auto_scale else float(ov.vmax[overlay])

    def _lights(self, state: AppState, prog: moderngl.Program) -> None:
        """Set `prog`'s light uniforms and bind the light texture (the lights `_pack_lights` packed last)."""
        lights = self.lights if self.lights is not None else self._pack_lights(state)
        set_uniform(prog, "u_num_point", lights.num_point)
        set_uniform(prog, "u_num_dir", lights.num_directional)
        ambient = lights.ambient
        if self.env_path is not None and state.render.mode == "path":
            # the rasterization's stand-in for environment light: its mean radiance over the sphere as ambient
            # light (exact for a Lambert surface under a uniform environment, the white furnace)
            value = state.values[self.env_path]
            if self._env_mean is None or self._env_mean[0] is not value:
                self._env_mean = (value, sphere_mean(value))
            ambient = ambient + self._env_mean[1]
        set_uniform(prog, "u_ambient", tuple(float(x) for x in ambient))
        self.light_texture.use(LIGHTS_UNIT)

    def _pack_lights(self, state: AppState) -> PackedLights:
        """The lights of the current values, uploaded to the light texture (shaders/shading.glsl)."""
        self.lights = lights = pack_lights(state.scene, state.values)
        texels = lights.texels()
        size = (texels.shape[1], texels.shape[0])
        if self.light_texture is None or self.light_texture.size != size:
            if self.light_texture is not None:
                self.light_texture.release()
            self.light_texture = self.ctx.texture(size, 4, dtype="f4")
            self.light_texture.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self.light_texture.write(texels.tobytes())
        return lights

    # -- drawing ----------------------------------------------------------------------------------
    def _ensure_target(self, width: int, height: int) -> None:
        if self.size == (width, height):
            return
        self._release_target()
        self.color = self.ctx.texture((width, height), 4)
        self.color.filter = (moderngl.LINEAR, moderngl.LINEAR)
        self.depth = self.ctx.depth_renderbuffer((width, height))
        self.fbo = self.ctx.framebuffer(color_attachments=[self.color], depth_attachment=self.depth)
        self.size = (width, height)

    def _release_target(self) -> None:
        for obj in (self.fbo, self.color, self.depth):
            if obj is not None:
                obj.release()
        self.fbo = self.color = self.depth = None
        self.size = (0, 0)

    def draw_meshes(self, state: AppState, view_proj: np.ndarray, eye, *, linear: bool = False,
                    overlays: bool = True) -> None:
        prog = self.mesh_prog
        self.shadows.bind(prog, SHADOW_UNIT, self._shadows_on)
        set_uniform(prog, "u_gouraud", int(state.render.mode == "soft"))
        write_uniform(prog, "u_view_proj", gl_bytes(view_proj))
        set_uniform(prog, "u_eye", tuple(float(x) for x in eye))
        set_uniform(prog, "u_output_linear", int(linear))
        set_uniform(prog, "u_emission_one_sided", int(state.render.mode == "path"))
        self._lights(state, prog)
        ov = state.overlays
        set_uniform(prog, "u_heat_log", int(ov.log_scale))
        set_uniform(prog, "u_heat_opacity", float(ov.opacity))
        self.colormap.use(COLORMAP_UNIT)
        sc = state.scene
        for name, mesh in sc.meshes.items():
            mat = sc.materials[mesh.material]
            textures = state.texture_paths(mat.name)
            for unit, kind in enumerate(TEXTURES):
                self.uploader.textures[textures[kind]].use(unit)
            self.uploader.textures[param_path(Group.MATERIALS, mat.name, "emission")].use(EMISSION_UNIT)
            set_uniform(prog, "u_model", 0 if mat.model == "lambert" else 1)
            mode = 0
            heat_tex = self.uploader.textures.get(f"heat.{mat.name}")
            if overlays and ov.on("texture") and heat_tex is not None and self._heat_textures.get(mat.name) is not None:
                mode = 1
                heat_tex.use(HEAT_UNIT)
                set_uniform(prog, "u_heat_max", self.scale_for(state, "texture"))
            elif (overlays and ov.on("geometry")
                  and param_path(Group.MESHES, name, "vertices") in state.snapshot.vertex_grads):
                mode = 2
                set_uniform(prog, "u_heat_max", self.scale_for(state, "geometry"))
            set_uniform(prog, "u_overlay", mode)
            self.meshes[name].vao.render(moderngl.TRIANGLES)

    def render(self, state: AppState, width: int, height: int) -> tuple[float, float]:
        """Draw the scene from the free camera into the offscreen target; returns the drawn fraction
        (u, v) of the target (below 1 while the camera moves)."""
        width, height = max(1, width), max(1, height)
        self._ensure_target(width, height)
        scale = MOVING_SCALE if self.moving else 1.0
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        cam = state.camera
        view_proj = cam.projection(width / height) @ cam.view()
        state.view_proj = view_proj
        fv = state.field_view
        field_on = self.field is not None and fv.preview
        if field_on:  # what the preview thread should render next (it never blocks this thread)
            state.preview.want_occupancy = fv.occupancy
            state.preview.request(PreviewRequest(cam.pose(), cam.fov_y, width, height, self.moving, fv.time))
        shown = self._path_request(state, width, height)
        view_key = (width, height, w, h, view_proj.tobytes(), state.version, repr(state.overlays),
                    state.selection, repr(state.gizmo), repr(fv),
                    (id(self.field.frame), id(self.field.occupancy)) if self.field is not None else None,
                    id(shown), state.render.mode)
        now = time.perf_counter()
        cap = REST_REDRAW_FPS if state.at_rest else SNAPSHOT_REDRAW_FPS
        if view_key == self._drawn_key and (state.serial == self._drawn_serial or now - self._drawn_time < 1.0 / cap):
            return w / width, h / height  # nothing new, or only a snapshot arriving sooner than the cap
        self._drawn_key, self._drawn_serial, self._drawn_time = view_key, state.serial, now
        self.redraws += 1
        self.drawn = (w, h)
        ctx = self.ctx
        lights = self._pack_lights(state)
        self._shadows_on = self.shadows.update(state, self.meshes, lights)  # uses its own framebuffer
        self.fbo.use()
        ctx.viewport = (0, 0, w, h)
        bg = np.asarray(state.scene.background, np.float32)
        bg = cv.linear_to_srgb(bg if bg.ndim == 1 else bg.reshape(-1, 3).mean(axis=0))
        self.fbo.clear(float(bg[0]), float(bg[1]), float(bg[2]), 1.0, depth=1.0)
        if field_on:
            self.field.draw_image()
        self.path_shown = shown
        if shown is not None:  # the path-traced preview of this very view (its environment and emitters in it)
            self.path_layer.draw_image()
        elif self.env_path is not None:
            self.draw_environment(state, view_proj, cam.eye())
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.CULL_FACE | moderngl.BLEND)
        if (not field_on or fv.show_meshes) and shown is None:
            self.draw_meshes(state, view_proj, cam.eye())
        if field_on and fv.occupancy:
            self.field.draw_points(view_proj, fv)
        lines = self.overlay_lines(state)
        if len(lines):
            ctx.enable(moderngl.BLEND)
            ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
            ctx.disable(moderngl.DEPTH_TEST)  # markers and arrows stay visible through surfaces
            data = lines.tobytes()
            if len(data) > self.line_vbo.size:
                self.line_vbo.orphan(max(len(data), 2 * self.line_vbo.size))
            self.line_vbo.write(data)
            write_uniform(self.line_prog, "u_view_proj", gl_bytes(view_proj))
            self.line_vao.render(moderngl.LINES, vertices=len(lines))
            ctx.disable(moderngl.BLEND)
        ctx.disable(moderngl.DEPTH_TEST)
        return w / width, h / height

    def _path_request(self, state: AppState, width: int, height: int):
        """Path mode: post the view to the path preview thread; the PathFrame to show instead of the
        rasterization (None while the camera moves, before the first samples of this view, with the preview
        off, or while a gradient overlay is drawn on the meshes: those need the rasterized surfaces)."""
        pv = state.path_preview
        if pv is None:
            return None
        if state.render.mode != "path" or not state.path_view:
            self.path_request = None
            pv.request(None)
            return None
        old = self.path_request
        cam = state.camera
        if old is not None and old.edit == state.version and old.serial == state.serial \
                and old.moving == self.moving and old.width == width and old.height == height \
                and old.max_depth == state.render.max_depth and np.array_equal(old.pose, cam.pose()) \
                and old.fov_y == cam.fov_y:
            req = old
        else:
            req = PathRequest(cam.pose(), cam.fov_y, width, height, self.moving, state.render.max_depth,
                              dict(state.values), state.version, state.serial)
        self.path_request = req
        pv.request(req)
        ov = state.overlays
        if (ov.on("texture") and any(g is not None for g in self._heat_textures.values())) or \
                (ov.on("geometry") and state.snapshot.vertex_grads):
            return None
        return pv.shows(req)

    def draw_environment(self, state: AppState, view_proj: np.ndarray, eye, *, linear: bool = False,
                         overlays: bool = True) -> None:
        """The environment light over the whole (current GL viewport) target, looked up per pixel by view
        direction as the path tracer does (shaders/environment.frag); the texture overlay draws its gradient."""
        prog = self.env_prog
        write_uniform(prog, "u_inv_view_proj", gl_bytes(np.linalg.inv(np.asarray(view_proj, np.float64))))
        set_uniform(prog, "u_eye", tuple(float(x) for x in eye))
        set_uniform(prog, "u_output_linear", int(linear))
        ov = state.overlays
        heat = self.uploader.textures.get("heat.environment")
        on = overlays and ov.on("texture") and heat is not None and self._env_heat_source is not None
        set_uniform(prog, "u_overlay", int(on))
        if on:
            heat.use(ENV_HEAT_UNIT)
            set_uniform(prog, "u_heat_max", self.scale_for(state, "texture"))
            set_uniform(prog, "u_heat_log", int(ov.log_scale))
            set_uniform(prog, "u_heat_opacity", float(ov.opacity))
            self.colormap.use(ENV_COLORMAP_UNIT)
        self.uploader.textures["environment"].use(ENV_UNIT)
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.BLEND)
        self.env_vao.render(moderngl.TRIANGLES, vertices=3)

    def render_camera(self, state: AppState, pose, intrinsics, width: int, height: int) -> np.ndarray:
        """The scene through a drstudio camera as linear radiance (H, W, 3) float32, row 0 at the top:
        the viewport's counterpart of `renderer.render.render_view` (for comparisons and tests)."""
        ctx = self.ctx
        color = ctx.texture((width, height), 4, dtype="f4")
        depth = ctx.depth_renderbuffer((width, height))
        fbo = ctx.framebuffer(color_attachments=[color], depth_attachment=depth)
        try:
            self._shadows_on = self.shadows.update(state, self.meshes, self._pack_lights(state))
            fbo.use()
            ctx.viewport = (0, 0, width, height)
            bg = np.asarray(state.scene.background, np.float32)
            bg = bg if bg.ndim == 1 else np.zeros(3, np.float32)
            fbo.clear(float(bg[0]), float(bg[1]), float(bg[2]), 1.0, depth=1.0)
            ctx.enable(moderngl.DEPTH_TEST)
            ctx.disable(moderngl.CULL_FACE | moderngl.BLEND)
            _, radius = state.scene_bounds()
            view = pose_view(pose)
            dist = float(np.linalg.norm(np.asarray(pose[:3], np.float64) - state.scene_bounds()[0]))
            proj = intrinsics_projection(intrinsics, width, height, max(1e-3, 0.01 * radius), dist + 4 * radius + 10)
            if self.env_path is not None:
                self.draw_environment(state, proj @ view, np.asarray(pose[:3], np.float64), linear=True,
                                      overlays=False)
                ctx.enable(moderngl.DEPTH_TEST)
            self.draw_meshes(state, proj @ view, np.asarray(pose[:3], np.float64), linear=True, overlays=False)
            data = np.frombuffer(fbo.read(components=3, dtype="f4"), np.float32).reshape(height, width, 3)
            return np.ascontiguousarray(data[::-1])
        finally:
            ctx.disable(moderngl.DEPTH_TEST)
            fbo.release()
            depth.release()
            color.release()

    # -- overlay geometry -------------------------------------------------------------------------
    def overlay_lines(self, state: AppState) -> np.ndarray:
        """(N, 7) line-list vertices: grid, light and camera markers, gradient arrows."""
        parts = [self._grid(state)]
        center, radius = state.scene_bounds()
        giz = state.gizmo
        for values, color, show in ((state.values, CURRENT_COLOR, giz.show_current),
                                    (state.targets, TARGET_COLOR, giz.show_targets)):
            if not show:
                continue
            for name in state.scene.point_lights:
                parts.append(_star(values[param_path(Group.LIGHTS, name, "position")], radius * 0.06, color))
            for name in state.scene.directional_lights:
                d = cv.normalize(values[param_path(Group.LIGHTS, name, "direction")])
                start = center - d * radius * 1.6
                parts.append(arrow_lines([start], [d * radius * 0.5], [color]))
            eye = state.camera.eye()
            for name, cam in (state.scene.cameras.items() if giz.show_cameras else ()):
                pose = values[camera_pose(name)]
                if np.linalg.norm(pose[:3] - eye) < radius * 0.05:
                    continue  # looking through it
                parts.append(_frustum(pose, values[camera_intrinsics(name)],
                                      cam.width, cam.height, radius * 0.25, color))
        occ = self.field.occupancy if self.field is not None and state.field_view.occupancy else None
        if occ is not None:  # the field's box around the occupancy points
            parts.append(_box(occ.aabb, (1.0, 0.85, 0.3, 0.6)))
        sel = state.selection
        if sel and sel[0] == Group.MESHES and giz.show_targets:
            parts.append(_target_wire(state, sel[1]))
        ov = state.overlays
        snap = state.snapshot
        if ov.on("geometry") and ov.arrows:
            vmax = self.scale_for(state, "geometry")
            for path, g in snap.vertex_grads.items():
                name = ParamPath.parse(path).owner
                mesh = self.meshes.get(name)
                if mesh is None:
                    continue
                _, t, r, s = geometry.mesh_values(state.values, name)
                # one descent step moves world points by R S (-g_object)
                step = (-np.asarray(g, np.float64) * np.asarray(s)) @ geometry.rotation_matrix(r).T
                mag = magnitudes(g)
                length = radius * ov.arrow_length * np.clip(mag / max(vmax, 1e-30), 0.0, 1.0)
                unit = step / np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-30)
                keep = mag > 1e-3 * vmax
                cols = np.tile(np.array(ARROW_COLOR, np.float32), (int(keep.sum()), 1))
                parts.append(arrow_lines(mesh.world[keep], unit[keep] * length[keep, None], cols))
        parts = [p for p in parts if p is not None and len(p)]
        return np.concatenate(parts) if parts else np.zeros((0, 7), np.float32)

    def param_arrows(self, state: AppState) -> list[tuple[np.ndarray, np.ndarray, str]]:
        """(anchor, -gradient vector scaled for display, label) of each free light position/direction
        and camera pose: drawn over the viewport as thick 2D arrows by `viewport_window`."""
        center, radius = state.scene_bounds()
        vmax = self.scale_for(state, "params")
        out = []
        for path, g in state.snapshot.param_grads.items():
            anchor = param_anchor(state, path, center, radius)
            if anchor is None:
                continue
            vec = -param_arrow_vector(state, path, g)
            n = float(np.linalg.norm(vec))
            if not np.isfinite(n) or n <= 0.0:
                continue
            length = radius * 0.5 * min(1.0, n / max(vmax, 1e-30)) + radius * 0.05
            info = state.params[path]
            out.append((anchor, vec / n * length, f"{info.owner} {info.name}  |g| {n:.2e}"))
        return out

    def _grid(self, state: AppState) -> np.ndarray:
        center, radius = state.scene_bounds()
        lo = min(float(geometry.world_vertices(state, n)[:, 1].min()) for n in state.scene.meshes) \
            if state.scene.meshes else 0.0
        step = 10 ** math.floor(math.log10(max(radius, 1e-6))) / 2
        n = 10
        xs = (np.arange(-n, n + 1) * step)
        cx, cz = round(center[0] / step) * step, round(center[2] / step) * step
        col = (0.6, 0.6, 0.6, 0.25)
        pts = []
        for x in xs:
            pts += [(cx + x, lo, cz - n * step), (cx + x, lo, cz + n * step)]
            pts += [(cx - n * step, lo, cz + x), (cx + n * step, lo, cz + x)]
        pts = np.asarray(pts, np.float32)
        return np.concatenate([pts, np.tile(np.array(col, np.float32), (len(pts), 1))], axis=1)

    def read(self) -> np.ndarray:
        """The last drawn viewport image as (H, W, 3) uint8, row 0 at the top."""
        w, h = self.drawn
        data = np.frombuffer(self.fbo.read(viewport=(0, 0, w, h), components=3), np.uint8)
        return np.ascontiguousarray(data.reshape(h, w, 3)[::-1])

    def release(self) -> None:
        if self.field is not None:
            self.field.release()
        if self.path_layer is not None:
            self.path_layer.release()
        self.env_vao.release()
        self.env_prog.release()
        for m in self.meshes.values():
            m.release()
        self.meshes.clear()
        self.line_vao.release()
        self.line_vbo.release()
        self.shadows.release()
        if self.light_texture is not None:
            self.light_texture.release()
            self.light_texture = None
        self.mesh_prog.release()
        self.line_prog.release()
        self._release_target()


def sphere_mean(env) -> np.ndarray:
    """(3,) mean radiance over directions of an equirectangular (He, We, 3) image: rows weighted by their
    solid angle (the band between row edges theta_i, theta_i+1 covers 2 pi (cos theta_i - cos theta_i+1))."""
    env = np.asarray(env, np.float64).reshape(-1, np.shape(env)[-2], 3)
    edges = np.cos(np.linspace(0.0, np.pi, env.shape[0] + 1))
    weights = (edges[:-1] - edges[1:]) / 2.0
    return (env.mean(axis=1) * weights[:, None]).sum(axis=0).astype(np.float32)


PATH_LAYER_SETTINGS = FieldViewSettings(nearest=False)  # the path preview's image: linear upscaling


def overlay_path(state: AppState, material: str, kind: Kind) -> ParamPath:
    """The parameter whose gradient the texture overlay shows on `material`'s meshes for the chosen kind."""
    if kind in TEXTURES:
        return state.texture_paths(material)[kind]
    return param_path(Group.MATERIALS, material, kind.value)  # emission


def overlay_gradient(state: AppState, path) -> np.ndarray | None:
    """The latest gradient of the texture-like parameter `path` as an (H, W, C) image, or None: a texture's
    (`snapshot.texture_grads`), or a constant's (1x1: `snapshot.param_grads`, the path mode's albedos and
    emissions), or the environment's (path mode)."""
    snap = state.snapshot
    g = snap.texture_grads.get(path)
    if g is None:
        g = snap.param_grads.get(path)
        info = state.params.get(path)
        if g is None or info is None or len(info.shape) != 3:
            return None
        g = np.asarray(g, np.float32).reshape(info.shape)
    return g


def texture_overlay_grads(state: AppState) -> dict:
    """Every gradient the texture overlay shows now (the chosen kind of every material, the environment)."""
    kind = state.overlays.texture_property
    paths = [overlay_path(state, m, kind) for m in state.scene.materials]
    paths += [param_path(Group.LIGHTS, n, "radiance") for n in state.scene.environment_lights]
    out = {p: overlay_gradient(state, p) for p in paths}
    return {p: g for p, g in out.items() if g is not None}


# -- markers -------------------------------------------------------------------------------------

def _lines(points, color) -> np.ndarray:
    pts = np.asarray(points, np.float32).reshape(-1, 3)
    return np.concatenate([pts, np.tile(np.asarray(color, np.float32), (len(pts), 1))], axis=1)


def _box(aabb, color) -> np.ndarray:
    lo, hi = np.asarray(aabb[:3], np.float32), np.asarray(aabb[3:], np.float32)
    c = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], np.float32)
    edges = [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7)]
    return _lines(c[np.asarray(edges).reshape(-1)], color)


def _star(position, size: float, color) -> np.ndarray:
    p = np.asarray(position, np.float32)
    axes = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.58, 0.58, 0.58], [-0.58, 0.58, 0.58],
                     [0.58, -0.58, 0.58], [0.58, 0.58, -0.58]], np.float32) * size
    return _lines(np.stack([p - axes, p + axes], axis=1), color)


def _frustum(pose, intrinsics, width: int, height: int, depth: float, color) -> np.ndarray:
    m = cv.pose_to_matrix(np.asarray(pose, np.float64))
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    corners = []
    for px, py in ((0, 0), (width, 0), (width, height), (0, height)):
        d = np.array([(px - cx) / fx, -(py - cy) / fy, -1.0]) * depth  # camera space, z = -depth
        corners.append(m[:3, :3] @ d + m[:3, 3])
    o = m[:3, 3]
    up = m[:3, :3] @ np.array([0.0, -(0 - cy) / fy * depth * 1.25, -depth]) + o
    segs = [o, corners[0], o, corners[1], o, corners[2], o, corners[3],
            corners[0], corners[1], corners[1], corners[2], corners[2], corners[3], corners[3], corners[0],
            corners[0], up, up, corners[1]]
    return _lines(segs, color)


def _target_wire(state: AppState, name: str) -> np.ndarray | None:
    """Edges of the target mesh `name` when its target transform differs from the current one."""
    if all(np.allclose(state.targets[p], state.values[p], atol=1e-6) for p in geometry.mesh_paths(name)):
        return None
    world = geometry.world_vertices(state, name, state.targets)
    f = state.scene.meshes[name].faces
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    color = (*TARGET_COLOR[:3], 0.35)
    return _lines(world[edges.reshape(-1)], color)


# the parameters whose gradient is drawn as an arrow: (group, kind) -> the size of their gradient (a camera
# pose's arrow is its position part)
ARROWS = {(Group.LIGHTS, Kind.POSITION): 3, (Group.LIGHTS, Kind.DIRECTION): 3, (Group.CAMERAS, Kind.POSE): 7}


def param_arrow_vector(state: AppState, path: str, grad) -> np.ndarray:
    """The 3-vector drawn for a parameter gradient: light position and direction gradients as they are,
    a camera pose's position part; others (colors, intensities, quaternions) have no arrow (zeros)."""
    g = np.asarray(grad, np.float64).reshape(-1)
    info = state.params.get(path)
    if info is None or ARROWS.get((info.group, info.kind)) != g.size:
        return np.zeros(3)
    return g[:3]


def param_anchor(state: AppState, path: str, center, radius) -> np.ndarray | None:
    """Where a parameter's gradient arrow starts: the current light, the camera, or None."""
    info = state.params.get(path)
    if info is None or (info.group, info.kind) not in ARROWS:
        return None
    value = np.asarray(state.values[path], np.float64)
    if info.kind is Kind.DIRECTION:  # a directional light: drawn outside the scene, pointing at it
        return center - cv.normalize(value) * radius * 1.6
    return value[:3]  # a light's position, a camera pose's position


# -- the ImGui window ----------------------------------------------------------------------------

def viewport_window(state: AppState, vp: Viewport, lut_id: int) -> None:
    imgui.push_style_var(imgui.StyleVar_.window_padding, (0.0, 0.0))
    flags = imgui.WindowFlags_.no_scrollbar | imgui.WindowFlags_.no_move | imgui.WindowFlags_.no_background
    visible = imgui.begin("Viewport", None, flags)[0]
    imgui.pop_style_var()
    if not visible:
        imgui.end()
        return
    pos = imgui.get_cursor_screen_pos()
    avail = imgui.get_content_region_avail()
    width, height = int(max(avail.x, 1)), int(max(avail.y, 1))
    state.viewport_rect = (pos.x, pos.y, float(width), float(height))
    u, v = vp.render(state, width, height)  # (values were synced by GLResources.update)
    imgui.image(imgui.ImTextureRef(vp.color.glo), (float(width), float(height)), (0.0, v), (u, 0.0))
    hovered = imgui.is_item_hovered()
    draw_list = imgui.get_window_draw_list()
    _labels(state, draw_list)
    if state.overlays.on("params"):
        _draw_param_arrows(state, vp, draw_list)
    gizmo.set_drawlist()
    gizmo.set_rect(pos.x, pos.y, float(width), float(height))
    gizmos.edit_selected_target(state)
    _camera_input(state, vp, hovered, height)
    _legends(state, vp, draw_list, pos, width, height, lut_id)
    _toolbar(state, vp, pos)
    imgui.end()


def _camera_input(state: AppState, vp: Viewport, hovered: bool, height: int) -> None:
    io = imgui.get_io()
    cam = state.camera
    over_gizmo = gizmo.is_over() or gizmo.is_using()
    if vp.drag_button is None and hovered and not over_gizmo:
        for button in (0, 1, 2):
            if imgui.is_mouse_clicked(button):
                vp.drag_button = button
                break
    if vp.drag_button is not None:
        if not imgui.is_mouse_down(vp.drag_button):
            vp.drag_button = None
        else:
            dx, dy = io.mouse_delta.x, io.mouse_delta.y
            if dx or dy:
                if vp.drag_button == 0 and not io.key_shift:
                    cam.orbit(dx, dy)
                else:
                    cam.pan(dx, dy, height)
    vp.moving = vp.drag_button is not None
    if hovered and io.mouse_wheel:
        cam.zoom(io.mouse_wheel)
    if hovered and not io.want_text_input:
        if imgui.is_key_pressed(imgui.Key.f, False):
            center, radius = state.scene_bounds(with_lights=True)
            cam.frame(center, radius)
        for key, op in ((imgui.Key.w, "translate"), (imgui.Key.e, "rotate"), (imgui.Key.r, "scale")):
            if imgui.is_key_pressed(key, False):
                state.gizmo.operation = op


def _labels(state: AppState, draw_list) -> None:
    """Names of the lights and cameras next to their markers."""
    names, points = [], []
    for name in state.scene.point_lights:
        names.append(name)
        points.append(state.values[param_path(Group.LIGHTS, name, "position")])
    for name in (state.scene.cameras if state.gizmo.show_cameras else ()):
        names.append(name)
        points.append(state.values[camera_pose(name)][:3])
    if not points:
        return
    screen = state.project(np.asarray(points))
    col = imgui.get_color_u32((0.85, 0.95, 1.0, 0.9))
    for name, (x, y) in zip(names, screen):
        if np.isfinite(x) and np.isfinite(y):
            draw_list.add_text((float(x) + 6, float(y) - 6), col, name)


def _draw_param_arrows(state: AppState, vp: Viewport, draw_list) -> None:
    col = imgui.get_color_u32(ARROW_COLOR)
    for anchor, vec, label in vp.param_arrows(state):
        (x0, y0), (x1, y1) = state.project(np.stack([anchor, anchor + vec]))
        if not all(np.isfinite([x0, y0, x1, y1])):
            continue
        d = np.array([x1 - x0, y1 - y0])
        n = float(np.linalg.norm(d))
        draw_list.add_line((x0, y0), (x1, y1), col, 3.0)
        if n > 1.0:
            u = d / n
            w = np.array([-u[1], u[0]])
            head = min(12.0, n * 0.5)
            p1 = np.array([x1, y1])
            a, b = p1 - u * head + w * head * 0.5, p1 - u * head - w * head * 0.5
            draw_list.add_triangle_filled((x1, y1), (float(a[0]), float(a[1])), (float(b[0]), float(b[1])), col)
        draw_list.add_text((x1 + 6, y1), col, label)


def _legends(state: AppState, vp: Viewport, draw_list, pos, width: int, height: int, lut_id: int) -> None:
    ov = state.overlays
    snap = state.snapshot
    tex = texture_overlay_grads(state) if ov.on("texture") else {}
    has = {"texture": bool(tex), "geometry": bool(snap.vertex_grads),
           "params": any(np.any(param_arrow_vector(state, p, g)) for p, g in snap.param_grads.items())}
    shown = [name for name in ("texture", "geometry", "params") if ov.on(name) and has[name]]
    y = pos.y + height - 8
    for name in shown:
        env = " / environment" if vp.env_path in tex and len(tex) > 1 else ""
        what = "environment" if vp.env_path in tex and len(tex) == 1 else ov.texture_property.value + env
        title = {"texture": f"|dL/d {what} texel|", "geometry": "|dL/d vertex|",
                 "params": "|dL/d light, camera| (arrows: -grad)"}[name]
        block = 16 + 2 * imgui.get_text_line_height() + 12
        y -= block
        draw_legend(draw_list, (pos.x + 12, y), 200.0, 12.0, lut_id, vp.scale_for(state, name), ov.log_scale,
                    title)


def _toolbar(state: AppState, vp: Viewport, pos) -> None:
    imgui.set_cursor_screen_pos((pos.x + 8, pos.y + 8))
    snap = state.snapshot
    cost = np.median(state.frame_cpu_ms) if state.frame_cpu_ms else 0.0
    imgui.text_colored((1.0, 1.0, 1.0, 0.9), f"{state.fps:4.0f} fps ({cost:.0f} ms/frame)   step {snap.step}   "
                       f"{snap.state}" + ("   (coarse while moving)" if vp.moving else ""))
    line = imgui.get_text_line_height_with_spacing()
    if vp.field is not None and state.field_view.preview:
        imgui.set_cursor_screen_pos((pos.x + 8, pos.y + 8 + line))
        imgui.text_colored((1.0, 0.9, 0.5, 0.95), preview_status(state))
        line *= 2
    elif state.path_preview is not None and state.render.mode == "path" and state.path_view:
        imgui.set_cursor_screen_pos((pos.x + 8, pos.y + 8 + line))
        shown = "" if vp.path_shown is not None else "   (showing the rasterization)"
        imgui.text_colored((1.0, 0.9, 0.5, 0.95), path_status(state.path_preview) + shown)
        line *= 2
    imgui.set_cursor_screen_pos((pos.x + 8, pos.y + 8 + line))
    # wrapped at the viewport's width (1280x720: one line does not fit); F1 lists everything
    imgui.push_text_wrap_pos(imgui.get_cursor_pos().x + max(imgui.get_content_region_avail().x - 16, 100.0))
    imgui.push_style_color(imgui.Col_.text, (1.0, 1.0, 1.0, 0.45))
    imgui.text_wrapped("drag: orbit   right/middle drag: pan   wheel: zoom   F: frame all   "
                       f"W/E/R: move/rotate/scale the target gizmo ({state.gizmo.operation})   F1: help")
    imgui.pop_style_color()
    imgui.pop_text_wrap_pos()


def preview_status(state: AppState) -> str:
    """"field preview 87x54 (1/8) 35 ms" (the shown frame) and the preview thread's state."""
    pv = state.preview
    f = pv.latest
    if pv.error:
        return pv.error[:120]
    if f is None:
        return "field preview: rendering the first frame..."
    frac = f"1/{round(1 / f.scale)}" if f.scale < 1.0 else "full"
    steps = "  ".join(f"{'1/' + str(round(1 / s)) if s < 1 else 'full'} {pv.ms_by_scale[s]:.0f}"
                      for s in LADDER if s in pv.ms_by_scale)
    occ = pv.occupancy if state.field_view.occupancy else None
    extra = f"   occupancy {occ.occupied}/{occ.cells} cells" if occ is not None else ""
    return f"field preview {f.width}x{f.height} ({frac}) {f.ms:.0f} ms   [ms by step: {steps}]{extra}"
