"""The viewer's free camera (orbit / pan / zoom about a target point) and the GL matrices of
drstudio cameras.

Conventions are renderer.conventions': OpenGL camera space (looks down -Z, +Y up), poses are
camera-to-world [px, py, pz, qx, qy, qz, qw], intrinsics [fx, fy, cx, cy] in pixels with pixel (0, 0)
the top-left pixel. Matrices here are NumPy (4, 4) row-major float64; `gl_bytes` gives the
column-major float32 bytes a GLSL mat4 uniform expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from drstudio.renderer import conventions as cv


def gl_bytes(m: np.ndarray) -> bytes:
    """Column-major float32 bytes of a row-major (4, 4) matrix."""
    return np.ascontiguousarray(np.asarray(m, np.float64).T, dtype=np.float32).tobytes()


def perspective(fov_y_deg: float, aspect: float, near: float, far: float) -> np.ndarray:
    f = 1.0 / math.tan(math.radians(fov_y_deg) / 2.0)
    m = np.zeros((4, 4))
    m[0, 0] = f / aspect
    m[1, 1] = f
    m[2, 2] = (far + near) / (near - far)
    m[2, 3] = 2.0 * far * near / (near - far)
    m[3, 2] = -1.0
    return m


def intrinsics_projection(intrinsics, width: int, height: int, near: float, far: float) -> np.ndarray:
    """GL projection of a pinhole camera with [fx, fy, cx, cy] in pixels (top-left origin), so a
    camera-space point lands on the same pixel as in the differentiable renderer."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    m = np.zeros((4, 4))
    m[0, 0] = 2.0 * fx / width
    m[0, 2] = 1.0 - 2.0 * cx / width
    m[1, 1] = 2.0 * fy / height
    m[1, 2] = 2.0 * cy / height - 1.0
    m[2, 2] = (far + near) / (near - far)
    m[2, 3] = 2.0 * far * near / (near - far)
    m[3, 2] = -1.0
    return m


def pose_view(pose) -> np.ndarray:
    """World-to-camera (4, 4) of a camera-to-world pose (7,)."""
    return np.linalg.inv(cv.pose_to_matrix(np.asarray(pose, np.float64)))


@dataclass
class OrbitCamera:
    """Orbits `target` at `distance`; yaw about world +Y, pitch above the horizon (radians)."""

    target: np.ndarray = field(default_factory=lambda: np.zeros(3))
    distance: float = 4.0
    yaw: float = 0.0
    pitch: float = 0.3
    fov_y: float = 45.0  # degrees
    scene_radius: float = 1.0  # sets the clip planes and pan/zoom speeds

    PITCH_LIMIT = math.radians(89.0)

    def forward(self) -> np.ndarray:
        """Unit viewing direction (from the eye towards the target)."""
        cp = math.cos(self.pitch)
        return -np.array([cp * math.sin(self.yaw), math.sin(self.pitch), cp * math.cos(self.yaw)])

    def eye(self) -> np.ndarray:
        return np.asarray(self.target, np.float64) - self.forward() * self.distance

    def camera_to_world(self) -> np.ndarray:
        f = self.forward()
        right = np.cross(f, [0.0, 1.0, 0.0])
        right /= max(np.linalg.norm(right), 1e-12)
        up = np.cross(right, f)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -f, self.eye()
        return m

    def pose(self) -> np.ndarray:
        """Camera-to-world pose (7,) in drstudio's convention."""
        return cv.matrix_to_pose(self.camera_to_world())

    def view(self) -> np.ndarray:
        return np.linalg.inv(self.camera_to_world())

    def clip_planes(self) -> tuple[float, float]:
        far = self.distance + 4.0 * self.scene_radius + 10.0
        near = max(1e-3, min(self.distance * 0.05, self.scene_radius * 0.05))
        return near, far

    def projection(self, aspect: float) -> np.ndarray:
        near, far = self.clip_planes()
        return perspective(self.fov_y, max(aspect, 1e-6), near, far)

    # -- input (pixels of the viewport) -------------------------------------------------------------
    def orbit(self, dx: float, dy: float, speed: float = 0.008) -> None:
        self.yaw -= dx * speed
        self.pitch = float(np.clip(self.pitch + dy * speed, -self.PITCH_LIMIT, self.PITCH_LIMIT))

    def pan(self, dx: float, dy: float, viewport_height: float) -> None:
        """Move the target so the point under the cursor follows it (at the target's depth)."""
        m = self.camera_to_world()
        per_pixel = 2.0 * self.distance * math.tan(math.radians(self.fov_y) / 2.0) / max(viewport_height, 1.0)
        self.target = np.asarray(self.target, np.float64) + (-dx * m[:3, 0] + dy * m[:3, 1]) * per_pixel

    def zoom(self, wheel: float) -> None:
        self.distance = float(np.clip(self.distance * 0.88 ** wheel, 1e-3 * self.scene_radius,
                                      1e3 * self.scene_radius))

    def frame(self, center, radius: float) -> None:
        """Frame all: look at `center` from the current direction so a sphere of `radius` fits."""
        self.target = np.asarray(center, np.float64).copy()
        self.scene_radius = max(float(radius), 1e-6)
        self.distance = self.scene_radius / math.sin(math.radians(self.fov_y) / 2.0) * 1.1

    def look_through(self, pose, intrinsics, height: int, center) -> None:
        """Match a drstudio camera: its position, viewing direction and vertical field of view; the
        orbit target is the point of its viewing axis nearest to `center`."""
        m = cv.pose_to_matrix(np.asarray(pose, np.float64))
        eye, f = m[:3, 3], -m[:3, 2]
        depth = max(float(np.dot(np.asarray(center) - eye, f)), 1e-3 * self.scene_radius)
        self.target = eye + f * depth
        self.distance = depth
        self.pitch = float(np.clip(math.asin(float(np.clip(-f[1], -1.0, 1.0))), -self.PITCH_LIMIT,
                                   self.PITCH_LIMIT))
        self.yaw = math.atan2(-f[0], -f[2])
        self.fov_y = math.degrees(2.0 * math.atan(height / (2.0 * float(intrinsics[1]))))


def project(view_proj: np.ndarray, points, rect) -> np.ndarray:
    """Screen positions (N, 2) of world points through `view_proj` into rect (x, y, w, h), y down;
    points behind the camera get NaN."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    clip = np.c_[p, np.ones(len(p))] @ view_proj.T
    w = clip[:, 3:4]
    ndc = np.where(w > 1e-9, clip[:, :2] / np.where(w > 1e-9, w, 1.0), np.nan)
    x, y, width, height = rect
    return np.c_[x + (ndc[:, 0] + 1.0) * 0.5 * width, y + (1.0 - ndc[:, 1]) * 0.5 * height]
