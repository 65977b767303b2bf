"""A Cornell box as NumPy arrays (quads split into triangles), for the path-tracing tests and
`benchmarks/mitsuba_path.py`.

The box spans [-1, 1]^3 with its front (z = +1) open; the camera sits on +Z looking down -Z (OpenGL).
Walls: floor, ceiling and back white, left (x = -1) red, right (x = +1) green; a square area light just
below the ceiling emitting downwards; optionally a short and a tall block. Every face's
counter-clockwise normal points into the box (towards where it is seen from), so the one-sided light
emits downwards. Lambert materials, albedos in the range of the classic scene's measured reflectances.
"""

from __future__ import annotations

import numpy as np

WHITE = (0.73, 0.73, 0.73)
RED = (0.63, 0.065, 0.05)
GREEN = (0.14, 0.45, 0.091)
LIGHT_RADIANCE = (17.0, 12.0, 4.0)
LIGHT_HALF = 0.25  # the light is a square of side 0.5 at y = 0.99


def _quad(corners, normal):
    """Two triangles of a planar quad (corners in order around it), wound so (b - a) x (c - a) has the
    direction of `normal`."""
    c = np.asarray(corners, np.float64)
    if np.dot(np.cross(c[1] - c[0], c[2] - c[0]), normal) < 0:
        c = c[::-1]
    return c, np.array([[0, 1, 2], [0, 2, 3]])


def _block(center, size, height, angle_deg):
    """The 5 visible sides (no bottom) of a block standing on the floor, rotated about +Y."""
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    h = size / 2
    x0, z0 = center
    quads = []
    local = {  # corner lists and outward normals in block space
        "top": ([[-h, height, -h], [h, height, -h], [h, height, h], [-h, height, h]], [0, 1, 0]),
        "front": ([[-h, 0, h], [h, 0, h], [h, height, h], [-h, height, h]], [0, 0, 1]),
        "back": ([[-h, 0, -h], [h, 0, -h], [h, height, -h], [-h, height, -h]], [0, 0, -1]),
        "left": ([[-h, 0, -h], [-h, 0, h], [-h, height, h], [-h, height, -h]], [-1, 0, 0]),
        "right": ([[h, 0, -h], [h, 0, h], [h, height, h], [h, height, -h]], [1, 0, 0]),
    }
    for corners, normal in local.values():
        c = np.asarray(corners, np.float64) @ rot.T + [x0, -1.0, z0]
        quads.append((c, rot @ np.asarray(normal, np.float64)))
    return quads


def cornell_box(blocks: bool = True, light_radiance=LIGHT_RADIANCE, width: int = 64, height: int = 64):
    """Returns a dict: vertices (V, 3) float32, faces (F, 3) int32, face_material (F,) int32,
    materials (list of dicts for `pathtrace.path_scene_from_numpy`: white, red, green, light),
    material_names, intrinsics (4,) and pose (7,) float32 of a 40-degree camera at (0, 0, 3.4)
    looking down -Z, width, height."""
    quads = [  # (corners, inward normal, material)
        ([[-1, -1, -1], [1, -1, -1], [1, -1, 1], [-1, -1, 1]], [0, 1, 0], 0),  # floor
        ([[-1, 1, -1], [1, 1, -1], [1, 1, 1], [-1, 1, 1]], [0, -1, 0], 0),  # ceiling
        ([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]], [0, 0, 1], 0),  # back
        ([[-1, -1, -1], [-1, -1, 1], [-1, 1, 1], [-1, 1, -1]], [1, 0, 0], 1),  # left, red
        ([[1, -1, -1], [1, -1, 1], [1, 1, 1], [1, 1, -1]], [-1, 0, 0], 2),  # right, green
    ]
    s = LIGHT_HALF
    quads.append(([[-s, 0.99, -s], [s, 0.99, -s], [s, 0.99, s], [-s, 0.99, s]], [0, -1, 0], 3))
    if blocks:
        quads += [(c, n, 0) for c, n in _block((0.33, 0.3), 0.6, 0.6, -17.0)]
        quads += [(c, n, 0) for c, n in _block((-0.33, -0.3), 0.6, 1.2, 17.0)]
    verts, faces, mats = [], [], []
    for corners, normal, mat in quads:
        c, f = _quad(corners, np.asarray(normal, np.float64))
        faces.append(f + 4 * len(verts))
        verts.append(c)
        mats += [mat, mat]
    materials = [dict(model="lambert", albedo=WHITE), dict(model="lambert", albedo=RED),
                 dict(model="lambert", albedo=GREEN),
                 dict(model="none", albedo=(0.0, 0.0, 0.0), emission=tuple(light_radiance))]
    fy = 0.5 * height / np.tan(np.radians(40.0) / 2)
    return dict(vertices=np.concatenate(verts).astype(np.float32), faces=np.concatenate(faces).astype(np.int32),
                face_material=np.asarray(mats, np.int32), materials=materials,
                material_names=["white", "red", "green", "light"],
                intrinsics=np.array([fy, fy, width / 2, height / 2], np.float32),
                pose=np.array([0, 0, 3.4, 0, 0, 0, 1], np.float32), width=width, height=height)
