"""Shadow maps for the viewport, so its lighting matches the renderer's shadow rays (hard 0/1
visibility per light, renderer/stages/shading.py `shadow_mask`).

One R32F atlas: point light j owns six cube-face tiles (6 j .. 6 j + 5) storing the distance to the
light, directional light j one orthographic tile (after every point light's) storing the depth along
its travel direction over the scene's bounding sphere. The face bases and projections here are the
ones shaders/shadows.glsl reads back with; the maps are redrawn only when geometry or lights change.
"""

from __future__ import annotations

import math

import moderngl
import numpy as np

from .camera import gl_bytes, perspective
from .glsl import program, set_uniform, write_uniform

ATLAS_LIMIT = 4096  # texels along each side of the atlas at most: more lights, smaller tiles
# Cube face bases (right, up, forward) in the order +X, -X, +Y, -Y, +Z, -Z, as in shadows.glsl.
FACES = (((0, 0, -1), (0, 1, 0), (1, 0, 0)), ((0, 0, 1), (0, 1, 0), (-1, 0, 0)),
         ((1, 0, 0), (0, 0, -1), (0, 1, 0)), ((1, 0, 0), (0, 0, 1), (0, -1, 0)),
         ((1, 0, 0), (0, 1, 0), (0, 0, 1)), ((-1, 0, 0), (0, 1, 0), (0, 0, -1)))


def _view(right, up, forward, eye) -> np.ndarray:
    """World-to-light-camera with rows right, up, -forward (camera looks down -Z)."""
    r = np.array([right, up, -np.asarray(forward, np.float64)], np.float64)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = -r @ np.asarray(eye, np.float64)
    return m


def directional_basis(direction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) of a directional light's map, as shadows.glsl builds it."""
    f = np.asarray(direction, np.float64)
    f = f / max(np.linalg.norm(f), 1e-12)
    up = np.array([0.0, 1.0, 0.0]) if abs(f[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    right = np.cross(f, up)
    right /= max(np.linalg.norm(right), 1e-12)
    return right, np.cross(right, f), f


class ShadowMaps:
    def __init__(self, ctx: moderngl.Context):
        self.ctx = ctx
        self.prog = program(ctx, "shadow.vert", "shadow.frag")
        self.atlas: moderngl.Texture | None = None
        self.depth: moderngl.Renderbuffer | None = None
        self.fbo: moderngl.Framebuffer | None = None
        self.grid = (1, 1)
        self.tile = 512
        self._key = None
        self._vaos: dict[str, moderngl.VertexArray] = {}
        self.center = np.zeros(3)
        self.radius = 1.0

    def _ensure(self, tiles: int) -> None:
        limit = min(ATLAS_LIMIT, int(self.ctx.info.get("GL_MAX_TEXTURE_SIZE", ATLAS_LIMIT)))
        tile = 512 if tiles <= 12 else 256
        cols = min(tiles, max(6, math.ceil(math.sqrt(tiles))))
        while tile > 16 and max(cols, math.ceil(tiles / cols)) * tile > limit:
            tile //= 2
        grid = (cols, math.ceil(tiles / cols))
        size = (grid[0] * tile, grid[1] * tile)
        if self.atlas is not None and self.atlas.size == size:
            self.grid, self.tile = grid, tile
            return
        self.release_targets()
        self.atlas = self.ctx.texture(size, 1, dtype="f4")
        self.atlas.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self.atlas.repeat_x = self.atlas.repeat_y = False
        self.depth = self.ctx.depth_renderbuffer(size)
        self.fbo = self.ctx.framebuffer(color_attachments=[self.atlas], depth_attachment=self.depth)
        self.grid, self.tile = grid, tile

    def update(self, state, meshes: dict, lights) -> bool:
        """Redraw the maps if geometry or lights changed; False when shadows are off or no light
        casts any. `meshes`: name -> the viewport's mesh buffers (world positions uploaded); `lights`:
        the `lights.PackedLights` the mesh program shades with (every light casts shadows)."""
        if not state.render.shadows or state.render.mode == "soft":
            return False
        tiles = 6 * lights.num_point + lights.num_directional
        if tiles == 0:
            return False
        geo = [id(m.world) for m in meshes.values()]
        key = (tuple(geo), lights.point_position.tobytes(), lights.dir_direction.tobytes())
        if key == self._key:
            return True
        self._key = key
        self._ensure(tiles)
        self.center, self.radius = state.scene_bounds()
        self.radius *= 1.05
        ctx = self.ctx
        self.fbo.use()
        self.fbo.clear(1e30, 1e30, 1e30, 1.0, depth=1.0)
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.CULL_FACE | moderngl.BLEND)
        near = max(1e-3, 1e-3 * self.radius)
        far = 100.0 * self.radius + 100.0
        proj = perspective(90.0, 1.0, near, far)
        tile = 0
        set_uniform(self.prog, "u_directional", 0)
        for pos in np.asarray(lights.point_position, np.float64):
            set_uniform(self.prog, "u_origin", tuple(float(x) for x in pos))
            for right, up, fwd in FACES:
                self._draw_tile(tile, proj @ _view(right, up, fwd, pos), meshes)
                tile += 1
        set_uniform(self.prog, "u_directional", 1)
        set_uniform(self.prog, "u_origin", tuple(float(x) for x in self.center))
        r = self.radius
        ortho = np.diag([1.0 / r, 1.0 / r, -1.0 / r, 1.0])
        ortho[2, 3] = -1.0  # camera z in [-2r, 0] (the sphere, entered at z = 0) -> ndc [1, -1]
        for direction in lights.dir_direction:
            right, up, fwd = directional_basis(direction)
            set_uniform(self.prog, "u_direction", tuple(float(x) for x in fwd))
            # the light camera sits at the sphere's entry point, looking along the travel direction
            self._draw_tile(tile, ortho @ _view(right, up, fwd, self.center - fwd * r), meshes)
            tile += 1
        ctx.disable(moderngl.DEPTH_TEST)
        return True

    def _draw_tile(self, tile: int, view_proj: np.ndarray, meshes: dict) -> None:
        cols = self.grid[0]
        s = self.tile
        self.ctx.viewport = ((tile % cols) * s, (tile // cols) * s, s, s)
        write_uniform(self.prog, "u_view_proj", gl_bytes(view_proj))
        for name, mesh in meshes.items():
            vao = self._vaos.get(name)
            if vao is None:
                vao = self._vaos[name] = self.ctx.vertex_array(
                    self.prog, [(mesh.pos_nrm, "3f 12x", "in_position")], index_buffer=mesh.ibo)
            vao.render(moderngl.TRIANGLES)

    def bind(self, prog: moderngl.Program, unit: int, enabled: bool) -> None:
        """Set the mesh program's shadow uniforms (and bind the atlas to `unit`)."""
        set_uniform(prog, "u_shadows", int(enabled and self.atlas is not None))
        if not enabled or self.atlas is None:
            return
        self.atlas.use(unit)
        set_uniform(prog, "u_shadow_atlas", unit)
        set_uniform(prog, "u_shadow_grid", self.grid)
        set_uniform(prog, "u_shadow_texel_point", 2.0 / self.tile)
        set_uniform(prog, "u_shadow_texel_dir", 2.0 * self.radius / self.tile)
        set_uniform(prog, "u_shadow_center", tuple(float(x) for x in self.center))
        set_uniform(prog, "u_shadow_radius", float(self.radius))

    def release_targets(self) -> None:
        for obj in (self.fbo, self.depth, self.atlas):
            if obj is not None:
                obj.release()
        self.fbo = self.depth = self.atlas = None

    def release(self) -> None:
        for vao in self._vaos.values():
            vao.release()
        self._vaos.clear()
        self.release_targets()
        self.prog.release()
