"""The scene's lights as the viewport's shaders read them, in the differentiable renderer's packing.

`pack_lights` lays the lights out exactly as `DeviceScene.prepare` packs them for the Warp kernels
(`renderer.stages.shading.Lights`): every point light in the scene's order, then every directional
light (the renderer's shadow-mask columns), and the sum of the ambient colors; tests/test_viewer.py
checks the two packings are equal. `PackedLights.texels` is what shaders/shading.glsl reads: one RGBA32F
texture, two texels per light, so the viewport draws as many lights as the scene has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from drstudio.renderer.params import Group, param_path

TEXTURE_WIDTH = 2048  # texels per row of the light texture (even: a light's two texels share a row)


@dataclass(frozen=True)
class PackedLights:
    """Float32 arrays, as `renderer.stages.shading.Lights` holds them on the device."""

    point_position: np.ndarray  # (Lp, 3)
    point_color: np.ndarray  # (Lp, 3)
    point_intensity: np.ndarray  # (Lp,)
    dir_direction: np.ndarray  # (Ld, 3) the direction the light travels (not normalized)
    dir_color: np.ndarray  # (Ld, 3)
    dir_intensity: np.ndarray  # (Ld,)
    ambient: np.ndarray  # (3,) the sum of the ambient lights' colors

    @property
    def num_point(self) -> int:
        return len(self.point_position)

    @property
    def num_directional(self) -> int:
        return len(self.dir_direction)

    @property
    def count(self) -> int:
        return self.num_point + self.num_directional

    def texels(self) -> np.ndarray:
        """(rows, width, 4) float32, the light texture of shaders/shading.glsl: light i (point lights,
        then directional ones) is texel 2 i = (position or travel direction, intensity) and texel
        2 i + 1 = (color, 0), texels counted row by row. At least one light's texels (all zero)."""
        n = max(self.count, 1)
        flat = np.zeros((n, 2, 4), np.float32)
        lp = self.num_point
        flat[:lp, 0, :3], flat[:lp, 0, 3], flat[:lp, 1, :3] = (self.point_position, self.point_intensity,
                                                              self.point_color)
        flat[lp:self.count, 0, :3], flat[lp:self.count, 0, 3], flat[lp:self.count, 1, :3] = (
            self.dir_direction, self.dir_intensity, self.dir_color)
        flat = flat.reshape(-1, 4)
        width = min(len(flat), TEXTURE_WIDTH)
        rows = -(-len(flat) // width)
        out = np.zeros((rows * width, 4), np.float32)
        out[:len(flat)] = flat
        return out.reshape(rows, width, 4)


def pack_lights(scene, values: dict) -> PackedLights:
    """The lights of `scene` (a `renderer.scene.Scene`: names and types) with `values` (path -> array,
    e.g. the viewer's current or target values)."""

    def rows(names, leaf: str, width: int) -> np.ndarray:
        out = np.zeros((len(names), width), np.float32)
        for i, name in enumerate(names):
            out[i] = np.asarray(values[param_path(Group.LIGHTS, name, leaf)], np.float32).reshape(-1)[:width]
        return out

    points, dirs = list(scene.point_lights), list(scene.directional_lights)
    ambient = rows(list(scene.ambient_lights), "color", 3).sum(axis=0, dtype=np.float32)
    return PackedLights(rows(points, "position", 3), rows(points, "color", 3), rows(points, "intensity", 1)[:, 0],
                        rows(dirs, "direction", 3), rows(dirs, "color", 3), rows(dirs, "intensity", 1)[:, 0],
                        ambient.astype(np.float32))
