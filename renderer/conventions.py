"""Coordinate, camera, rotation and color conventions of drstudio, stated once, with converters.

- World and camera space are OpenGL/Blender: right-handed, +Y up; a camera looks down its -Z axis
  with +X to the right and +Y up in the image. OpenCV/COLMAP cameras look down +Z with +Y down in the
  image: the same camera-to-world matrix with its Y and Z columns negated (`opencv_to_opengl`).
  COLMAP's images.txt stores world-to-camera: invert it (np.linalg.inv) before converting.
- A pose is camera-to-world (or object-to-world) as 7 floats [px, py, pz, qx, qy, qz, qw]: the
  position, then a unit quaternion in (x, y, z, w) order, the order of Warp's `wp.quat`. Quaternions
  built here have w >= 0.
- Intrinsics are [fx, fy, cx, cy] in pixels. Pixel (0, 0) is the top-left pixel with its center at
  (0.5, 0.5), so the principal point of a centered camera is (width / 2, height / 2). A camera-space
  point (x, y, z), z < 0, lands at pixel (cx + fx * x / -z, cy - fy * y / -z).
- Euler angles are degrees about the fixed world axes, applied X first, then Y, then Z:
  R = Rz @ Ry @ Rx (SciPy's extrinsic "xyz").
- Colors are linear RGB; image files are sRGB-encoded (`srgb_to_linear`, `linear_to_srgb`).

Everything here is NumPy float64; callers cast to float32 where they store values.
"""

from __future__ import annotations

import numpy as np

GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips the camera's Y and Z axes (its own inverse)


def _vec(x, n: int, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected {n} numbers, got shape {a.shape}")
    return a


def normalize(v, name: str = "vector") -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"{name}: cannot normalize a zero or non-finite vector {v.tolist()}")
    return v / n


# ---- quaternions (x, y, z, w) -------------------------------------------------------------------

def quat_from_axis_angle(axis, degrees: float) -> np.ndarray:
    """Rotation by `degrees` counter-clockwise about `axis` (right-hand rule)."""
    axis = normalize(_vec(axis, 3, "axis"), "axis")
    half = np.radians(degrees) / 2
    return _canonical(np.r_[axis * np.sin(half), np.cos(half)])


def quat_multiply(a, b) -> np.ndarray:
    """Hamilton product a * b: rotating by the result is rotating by b, then by a."""
    ax, ay, az, aw = _vec(a, 4, "a")
    bx, by, bz, bw = _vec(b, 4, "b")
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def quat_from_euler_deg(angles) -> np.ndarray:
    """Degrees about the world X, Y, Z axes, applied in that order (R = Rz @ Ry @ Rx)."""
    x, y, z = _vec(angles, 3, "euler_deg")
    qx = quat_from_axis_angle([1, 0, 0], x)
    qy = quat_from_axis_angle([0, 1, 0], y)
    qz = quat_from_axis_angle([0, 0, 1], z)
    return _canonical(quat_multiply(qz, quat_multiply(qy, qx)))


def quat_to_matrix(q) -> np.ndarray:
    """(3, 3) rotation matrix of a quaternion (normalized first)."""
    x, y, z, w = normalize(_vec(q, 4, "quaternion"), "quaternion")
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def quat_from_matrix(r) -> np.ndarray:
    """Unit quaternion of a (3, 3) rotation matrix (Shepperd's method, numerically stable)."""
    r = np.asarray(r, dtype=np.float64)
    if r.shape != (3, 3):
        raise ValueError(f"rotation matrix: expected shape (3, 3), got {r.shape}")
    t = np.trace(r)
    if t > max(r[0, 0], r[1, 1], r[2, 2]):
        s = 2 * np.sqrt(1 + t)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, s / 4]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * np.sqrt(1 + r[i, i] - r[j, j] - r[k, k])
        q = np.zeros(4)
        q[i] = s / 4
        q[j] = (r[j, i] + r[i, j]) / s
        q[k] = (r[k, i] + r[i, k]) / s
        q[3] = (r[k, j] - r[j, k]) / s
    return _canonical(normalize(q, "quaternion"))


def _canonical(q: np.ndarray) -> np.ndarray:
    return -q if q[3] < 0 else q


# ---- poses and matrices -------------------------------------------------------------------------

def pose_to_matrix(pose) -> np.ndarray:
    """(4, 4) camera-to-world matrix of a pose [px, py, pz, qx, qy, qz, qw]."""
    pose = _vec(pose, 7, "pose")
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(pose[3:])
    m[:3, 3] = pose[:3]
    return m


def rigid_error(matrix) -> float:
    """How far a (4, 4) matrix is from a rigid transform (rotation + translation, last row 0 0 0 1)."""
    m = np.asarray(matrix, dtype=np.float64)
    r = m[:3, :3]
    return float(max(np.abs(r.T @ r - np.eye(3)).max(), abs(np.linalg.det(r) - 1),
                     np.abs(m[3] - [0, 0, 0, 1]).max()))


def matrix_to_pose(matrix, tolerance: float = 1e-4) -> np.ndarray:
    """Pose (7,) of a rigid (4, 4) camera-to-world matrix; raises ValueError for scale, shear or
    reflection (a pose cannot represent them)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"matrix: expected shape (4, 4), got {m.shape}")
    if not np.isfinite(m).all() or rigid_error(m) > tolerance:
        raise ValueError("matrix: expected a rigid transform (orthonormal rotation with determinant +1, "
                         "last row 0 0 0 1)")
    return np.r_[m[:3, 3], quat_from_matrix(m[:3, :3])]


def opencv_to_opengl(c2w) -> np.ndarray:
    """Convert an OpenCV/COLMAP camera-to-world (4, 4) matrix or (7,) pose to OpenGL (same form)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape == (7,):
        return matrix_to_pose(pose_to_matrix(c2w) @ GL_FROM_CV)
    if c2w.shape != (4, 4):
        raise ValueError(f"camera-to-world: expected a (4, 4) matrix or a (7,) pose, got shape {c2w.shape}")
    return c2w @ GL_FROM_CV


opengl_to_opencv = opencv_to_opengl  # flipping Y and Z twice is the identity


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world pose (7,) of a camera at `eye` whose -Z axis points at `target`, with its +Y
    axis in the plane of `up` and the viewing direction."""
    eye, target, up = _vec(eye, 3, "eye"), _vec(target, 3, "target"), _vec(up, 3, "up")
    forward = normalize(target - eye, "target - eye")
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9 * max(1.0, np.linalg.norm(up)):
        raise ValueError("look_at: `up` is parallel to the viewing direction (or zero)")
    right = normalize(right)
    rot = np.column_stack([right, np.cross(right, forward), -forward])
    return np.r_[eye, quat_from_matrix(rot)]


# ---- intrinsics ---------------------------------------------------------------------------------

def fov_y_to_intrinsics(fov_y_deg: float, width: int, height: int) -> np.ndarray:
    """[fx, fy, cx, cy] of a centered camera with square pixels and vertical field of view fov_y."""
    if not 0 < fov_y_deg < 180:
        raise ValueError(f"fov_y: expected degrees in (0, 180), got {fov_y_deg}")
    f = 0.5 * height / np.tan(np.radians(fov_y_deg) / 2)
    return np.array([f, f, width / 2, height / 2])


def intrinsics_to_fov_y(intrinsics, height: int) -> float:
    """Vertical field of view in degrees of intrinsics [fx, fy, cx, cy] for an image `height` tall."""
    fy = _vec(intrinsics, 4, "intrinsics")[1]
    return float(np.degrees(2 * np.arctan(0.5 * height / fy)))


# ---- color --------------------------------------------------------------------------------------

def srgb_to_linear(c) -> np.ndarray:
    """IEC 61966-2-1 sRGB decoding of values in [0, 1]."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c) -> np.ndarray:
    """sRGB encoding of linear values (clamped to [0, 1] first)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)
