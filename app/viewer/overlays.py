"""Gradient overlays: settings, colormaps, color scales and legends, arrow geometry.

Four overlays, each toggled on its own (`OverlaySettings`):
- image: |dLoss/dImage| per pixel (snapshot.grad_image) over the render in the image panes;
- texture: |dLoss/dTexel| (snapshot.texture_grads) as a heatmap on the mesh and in the inspector;
- geometry: |dLoss/dVertex| (snapshot.vertex_grads) as vertex colors and/or arrows;
- params: the gradient of free light positions/directions and camera poses (snapshot.param_grads)
  as an arrow at the light or camera.
Arrows point along -gradient: the direction one gradient-descent step moves the value.
Magnitudes map to [0, 1] linearly up to `vmax`, or on a log scale over three decades below it; in
auto mode `vmax` is the largest magnitude in the current snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from drstudio.renderer.params import Kind
from imgui_bundle import imgui

COLORMAPS = ("viridis", "magma", "inferno", "turbo", "coolwarm")
OVERLAYS = ("image", "texture", "geometry", "params")
# what the texture overlay can show on the meshes (emission: path mode, and emissive materials anywhere)
OVERLAY_TEXTURES = (Kind.ALBEDO, Kind.ROUGHNESS, Kind.METALLIC, Kind.EMISSION)


@dataclass
class OverlaySettings:
    enabled: dict = field(default_factory=lambda: {name: False for name in OVERLAYS})
    colormap: str = "viridis"
    auto_scale: bool = True
    vmax: dict = field(default_factory=lambda: {name: 1.0 for name in OVERLAYS})  # manual scale per overlay
    log_scale: bool = False
    opacity: float = 0.85
    arrows: bool = True  # geometry overlay: arrows in addition to vertex colors
    arrow_length: float = 0.15  # longest arrow, as a fraction of the scene radius
    texture_property: Kind = Kind.ALBEDO  # which texture gradient the mesh shows

    def on(self, name: str) -> bool:
        return bool(self.enabled.get(name, False))


def colormap_lut(name: str, size: int = 256) -> np.ndarray:
    """(size, 3) uint8 display colors of a matplotlib colormap."""
    from matplotlib import colormaps  # imported on first use: ~0.2 s

    if name not in COLORMAPS:
        raise ValueError(f"colormap {name!r}: expected one of {COLORMAPS}")
    rgba = colormaps[name](np.linspace(0.0, 1.0, size))
    return np.ascontiguousarray((rgba[:, :3] * 255.0 + 0.5).astype(np.uint8))


def magnitudes(grad: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis: (..., C) -> (...)."""
    g = np.asarray(grad, dtype=np.float32)
    return np.sqrt(np.einsum("...c,...c->...", g, g))


AUTO_PERCENTILE = 99.0  # auto scale: a few extreme pixels (silhouette edges) must not wash out the rest


def auto_vmax(values, percentile: float = AUTO_PERCENTILE) -> float:
    """The `percentile` of the finite non-zero magnitudes among arrays (100: the largest; 1 when there is
    none, so scales stay valid). Gradients are heavy-tailed: scaled by their max, most of an overlay is
    black; by the 99th percentile, the 1% above it saturate and the rest is visible."""
    parts = [np.asarray(v, np.float64).reshape(-1) for v in values if v is not None and np.size(v)]
    m = np.concatenate(parts) if parts else np.zeros(0)
    m = m[np.isfinite(m) & (m > 0.0)]
    if not len(m):
        return 1.0
    best = float(np.percentile(m, percentile)) if percentile < 100.0 else float(m.max())
    return best if best > 0.0 else 1.0


def heat_position(m, vmax: float, log_scale: bool):
    """The same map as common.glsl's heat_position, for legends and tests."""
    vmax = max(float(vmax), 1e-30)
    m = np.asarray(m, dtype=np.float64)
    if log_scale:
        vmin = vmax * 1e-3
        return np.clip(np.log(np.maximum(m, vmin) / vmin) / np.log(1000.0), 0.0, 1.0)
    return np.clip(m / vmax, 0.0, 1.0)


def arrow_lines(origins: np.ndarray, vectors: np.ndarray, colors: np.ndarray, up=(0.0, 1.0, 0.0),
                head: float = 0.25) -> np.ndarray:
    """Line-list vertices (N * 6, 7) [x, y, z, r, g, b, a] of arrows from `origins` (N, 3) along
    `vectors` (N, 3): a shaft and two head strokes at `head` of the length. `colors` (N, 4) in [0, 1].
    Zero-length arrows collapse to points."""
    o = np.asarray(origins, np.float32).reshape(-1, 3)
    v = np.asarray(vectors, np.float32).reshape(-1, 3)
    c = np.asarray(colors, np.float32).reshape(-1, 4)
    tip = o + v
    length = np.linalg.norm(v, axis=1, keepdims=True)
    d = v / np.maximum(length, 1e-20)
    side = np.cross(d, np.asarray(up, np.float32))
    bad = np.linalg.norm(side, axis=1) < 1e-3  # arrows along `up`: use another side vector
    side[bad] = np.cross(d[bad], np.array([1.0, 0.0, 0.0], np.float32))
    side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-20)
    back = tip - d * length * head
    wing = side * length * head * 0.5
    pts = np.stack([o, tip, tip, back + wing, tip, back - wing], axis=1).reshape(-1, 3)
    cols = np.repeat(c, 6, axis=0)
    return np.ascontiguousarray(np.concatenate([pts, cols], axis=1), dtype=np.float32)


def draw_legend(draw_list, pos, width: float, height: float, lut_texture_id: int, vmax: float,
                log_scale: bool, title: str) -> None:
    """A horizontal colormap bar with its scale, drawn at screen position `pos` (top left)."""
    x, y = float(pos[0]), float(pos[1])
    pad = 4.0
    text_h = imgui.get_text_line_height()
    bg = imgui.get_color_u32((0.0, 0.0, 0.0, 0.6))
    draw_list.add_rect_filled((x - pad, y - pad), (x + width + pad, y + height + 2 * text_h + pad), bg)
    white = imgui.get_color_u32((1.0, 1.0, 1.0, 1.0))
    draw_list.add_text((x, y), white, title)
    bar_y = y + text_h
    draw_list.add_image(imgui.ImTextureRef(lut_texture_id), (x, bar_y), (x + width, bar_y + height))
    lo = f"{vmax * 1e-3:.2e}" if log_scale else "0"
    hi = f"{vmax:.2e}"
    draw_list.add_text((x, bar_y + height), white, lo)
    hi_w = imgui.calc_text_size(hi).x
    draw_list.add_text((x + width - hi_w, bar_y + height), white, hi)
    if log_scale:
        mid = "log"
        draw_list.add_text((x + width / 2 - imgui.calc_text_size(mid).x / 2, bar_y + height), white, mid)
