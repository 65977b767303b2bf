"""GL side of the radiance-field preview: the latest finished preview image as a texture drawn over
the viewport (shaders/field.frag, nearest or linear upscaling, linear -> sRGB), and the occupancy
grid's occupied cells as GL points (shaders/points.*) with the free camera. Uploads happen only when
the preview thread published something new (serial numbers); drawing never waits for that thread."""

from __future__ import annotations

from dataclasses import dataclass

import moderngl
import numpy as np

from .camera import gl_bytes
from .field_preview import FieldPreview
from .glsl import program, set_uniform, write_uniform


@dataclass
class FieldViewSettings:
    """The viewport's field options (Overlays window, "Field preview")."""

    preview: bool = True  # draw the field preview (scenes with fields)
    show_meshes: bool = False  # also draw the meshes the targets were rendered from
    occupancy: bool = False  # occupied cells of the occupancy grid as points
    nearest: bool = False  # upscale the preview with nearest filtering (else linear)
    point_size: float = 3.0
    point_opacity: float = 0.6
    time: float | None = None  # dynamic fields: the preview's time
    playing: bool = False
    period: float = 5.0  # s for one pass through the time range while playing


class FieldLayer:
    def __init__(self, ctx: moderngl.Context, colormap: moderngl.Texture):
        self.ctx = ctx
        self.colormap = colormap
        self.prog = program(ctx, "image.vert", "field.frag")
        set_uniform(self.prog, "u_field", 0)
        self.vao = ctx.vertex_array(self.prog, [])
        self.points_prog = program(ctx, "points.vert", "points.frag")
        set_uniform(self.points_prog, "u_colormap", 1)
        self.points_vbo = ctx.buffer(reserve=12 * 4096, dynamic=True)
        self.points_vao = ctx.vertex_array(self.points_prog, [(self.points_vbo, "3f", "in_position")])
        self.texture: moderngl.Texture | None = None
        self.frame = None  # the PreviewFrame in the texture
        self.occupancy = None  # the OccupancyPoints in the buffer
        self.n_points = 0

    def sync(self, preview: FieldPreview, settings: FieldViewSettings) -> None:
        """Upload the preview's latest image / occupancy points if they are new (reference checks)."""
        frame = preview.latest
        if frame is not None and frame is not self.frame:
            if self.texture is None or self.texture.size != (frame.width, frame.height):
                if self.texture is not None:
                    self.texture.release()
                self.texture = self.ctx.texture((frame.width, frame.height), 3, dtype="f4")
                self.texture.repeat_x = self.texture.repeat_y = False
            self.texture.write(np.ascontiguousarray(frame.image, np.float32))
            self.frame = frame
        if self.texture is not None:
            filt = moderngl.NEAREST if settings.nearest else moderngl.LINEAR
            if self.texture.filter != (filt, filt):
                self.texture.filter = (filt, filt)
        occ = preview.occupancy if settings.occupancy else None
        if occ is not self.occupancy:
            self.occupancy = occ
            pts = np.zeros((0, 3), np.float32) if occ is None else np.ascontiguousarray(occ.points, np.float32)
            if pts.nbytes > self.points_vbo.size:
                self.points_vbo.orphan(max(pts.nbytes, 2 * self.points_vbo.size))
            if pts.nbytes:
                self.points_vbo.write(pts.tobytes())
            self.n_points = len(pts)

    def draw_image(self) -> bool:
        """The preview over the whole (current GL viewport) target; False before the first frame."""
        if self.texture is None:
            return False
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.BLEND)
        self.texture.use(0)
        self.vao.render(moderngl.TRIANGLES, vertices=3)
        return True

    def draw_points(self, view_proj: np.ndarray, settings: FieldViewSettings) -> None:
        if not self.n_points or self.occupancy is None:
            return
        ctx = self.ctx
        aabb = self.occupancy.aabb
        p = self.points_prog
        write_uniform(p, "u_view_proj", gl_bytes(view_proj))
        set_uniform(p, "u_point_size", float(settings.point_size))
        set_uniform(p, "u_opacity", float(settings.point_opacity))
        set_uniform(p, "u_y_range", (float(aabb[1]), float(aabb[4])))
        self.colormap.use(1)
        ctx.enable(moderngl.BLEND | moderngl.PROGRAM_POINT_SIZE)
        ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
        ctx.disable(moderngl.DEPTH_TEST)
        self.points_vao.render(moderngl.POINTS, vertices=self.n_points)
        ctx.disable(moderngl.BLEND | moderngl.PROGRAM_POINT_SIZE)

    def release(self) -> None:
        for obj in (self.vao, self.prog, self.points_vao, self.points_vbo, self.points_prog, self.texture):
            if obj is not None:
                obj.release()
        self.texture = None
