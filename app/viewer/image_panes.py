"""GPU compositing of linear float images into display textures for ImGui (shaders/image.frag):
the render / target / difference / split-or-blend panes, gradient heatmaps, texture previews and view
thumbnails. Inputs are GL textures filled by `Uploader`; outputs are RGBA8 textures, drawn by ImGui
with `imgui.image(..., uv0=(0, 1), uv1=(1, 0))` (GL rows are bottom-up)."""

from __future__ import annotations

import moderngl
from imgui_bundle import imgui

from .glsl import program, set_uniform

MODES = {"color": 0, "diff": 1, "split": 2, "blend": 3, "heat": 4, "value": 5}


class Output:
    """An RGBA8 texture with its framebuffer."""

    def __init__(self, ctx: moderngl.Context, size: tuple[int, int]):
        self.size = size
        self.texture = ctx.texture(size, 4)
        self.texture.filter = (moderngl.LINEAR, moderngl.LINEAR)
        self.fbo = ctx.framebuffer(color_attachments=[self.texture])
        self.key = None  # what was last drawn into it (skip redundant passes)

    def release(self) -> None:
        self.fbo.release()
        self.texture.release()


class Compositor:
    def __init__(self, ctx: moderngl.Context, colormap: moderngl.Texture):
        self.ctx = ctx
        self.colormap = colormap
        self.prog = program(ctx, "image.vert", "image.frag")
        self.vao = ctx.vertex_array(self.prog, [])
        self.outputs: dict[str, Output] = {}
        for i, name in enumerate(("u_a", "u_b", "u_heat", "u_colormap")):
            set_uniform(self.prog, name, i)
        self._blank = ctx.texture((1, 1), 3, dtype="f4")
        self._blank.write(bytes(12))

    def output(self, name: str, size: tuple[int, int]) -> Output:
        size = (max(1, int(size[0])), max(1, int(size[1])))
        out = self.outputs.get(name)
        if out is None or out.size != size:
            if out is not None:
                out.release()
            out = self.outputs[name] = Output(self.ctx, size)
        return out

    def draw(self, name: str, size, mode: str, a: moderngl.Texture, b: moderngl.Texture | None = None,
             heat: moderngl.Texture | None = None, *, key=None, split: float = 0.5, gain: float = 1.0,
             heat_max: float = 1.0, heat_log: bool = False, heat_opacity: float = 0.85) -> Output:
        """Composite into output `name`; skipped when `key` equals the key of the last pass."""
        out = self.output(name, size)
        if key is not None and out.key == key:
            return out
        out.key = key
        out.fbo.use()
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.BLEND | moderngl.CULL_FACE)
        (a or self._blank).use(0)
        (b or self._blank).use(1)
        (heat or self._blank).use(2)
        self.colormap.use(3)
        p = self.prog
        set_uniform(p, "u_mode", MODES[mode])
        set_uniform(p, "u_split", float(split))
        set_uniform(p, "u_gain", float(gain))
        set_uniform(p, "u_heat_overlay", int(heat is not None))
        set_uniform(p, "u_heat_max", float(heat_max))
        set_uniform(p, "u_heat_log", int(heat_log))
        set_uniform(p, "u_heat_opacity", float(heat_opacity))
        self.vao.render(moderngl.TRIANGLES, vertices=3)
        return out

    def release(self) -> None:
        for out in self.outputs.values():
            out.release()
        self.outputs.clear()
        self.vao.release()
        self.prog.release()
        self._blank.release()


def show(out: Output, size) -> None:
    """Draw a composited output in the current ImGui window."""
    imgui.image(imgui.ImTextureRef(out.texture.glo), (float(size[0]), float(size[1])), (0.0, 1.0), (1.0, 0.0))


def fit(image_w: int, image_h: int, max_w: float, max_h: float) -> tuple[float, float]:
    """The largest size with the image's aspect ratio inside (max_w, max_h)."""
    s = max(1e-6, min(max_w / max(image_w, 1), max_h / max(image_h, 1)))
    return image_w * s, image_h * s
