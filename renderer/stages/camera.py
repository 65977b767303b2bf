"""Camera stage: pinhole rays and projection for a camera-to-world pose (OpenGL: looks down -Z, +Y up).

`intrinsics` is a float array (4,) [fx, fy, cx, cy] in pixels; `pose` a float array (7,)
[px, py, pz, qx, qy, qz, qw] camera-to-world. The quaternion is normalized inside the kernels, so any
non-zero quaternion is accepted and its gradient is tangent to the unit sphere. Pixel (x, y) has its
center at (x + 0.5, y + 0.5), row 0 at the top. The `@wp.func`s are shared with other stages.

Bands of rows: the per-pixel stages (`generate_rays`, `raster.rasterize`, `visibility.bary_derivatives`,
`antialias`) take `first_row`, and then `height` rows starting at image row `first_row` of the camera's
full image: buffers hold the band's rows only, but every pixel centre is (x + 0.5, first_row + y + 0.5)
against the unchanged intrinsics, so a band's pixels are computed with the same float operations as the
same pixels of the full image (bit for bit; a shifted principal point would round differently).
"""

from __future__ import annotations

from numbers import Integral

import warp as wp

from ..checks import check_array


@wp.func
def pose_position(pose: wp.array(dtype=float)) -> wp.vec3:
    """Camera center of a (7,) pose."""
    return wp.vec3(pose[0], pose[1], pose[2])


@wp.func
def pose_rotation(pose: wp.array(dtype=float)) -> wp.quat:
    """Normalized camera-to-world rotation of a (7,) pose."""
    return wp.normalize(wp.quat(pose[3], pose[4], pose[5], pose[6]))


@wp.func
def read_intrinsics(intrinsics: wp.array(dtype=float)) -> wp.vec4:
    """(fx, fy, cx, cy) of a (4,) intrinsics array."""
    return wp.vec4(intrinsics[0], intrinsics[1], intrinsics[2], intrinsics[3])


@wp.func
def camera_ray(intr: wp.vec4, pos: wp.vec3, rot: wp.quat, px: float, py: float) -> wp.vec3:
    """World direction of the ray through image point (px, py); its camera-space z is -1, so the ray
    parameter t of a hit is its view depth. `pos` is unused (the origin is `pos`); it is taken so every
    camera helper reads the same (intr, pos, rot)."""
    d = wp.vec3((px - intr[2]) / intr[0], -(py - intr[3]) / intr[1], -1.0)
    return wp.quat_rotate(rot, d)


@wp.func
def project_point(intr: wp.vec4, pos: wp.vec3, rot: wp.quat, p: wp.vec3) -> wp.vec3:
    """(pixel x, pixel y, view depth) of world point p; depth > 0 in front of the camera."""
    q = wp.quat_rotate_inv(rot, p - pos)
    depth = -q[2]
    # keep a point on the camera plane finite instead of producing inf/nan
    z = wp.where(wp.abs(depth) > 1.0e-12, depth, 1.0e-12)
    return wp.vec3(intr[2] + intr[0] * q[0] / z, intr[3] - intr[1] * q[1] / z, depth)


@wp.kernel
def generate_rays_kernel(intrinsics: wp.array(dtype=float), pose: wp.array(dtype=float), width: int,
                         origins: wp.array(dtype=wp.vec3), directions: wp.array(dtype=wp.vec3)):
    y, x = wp.tid()
    i = y * width + x
    pos = pose_position(pose)
    origins[i] = pos
    directions[i] = camera_ray(read_intrinsics(intrinsics), pos, pose_rotation(pose),
                               float(x) + 0.5, float(y) + 0.5)


@wp.kernel
def generate_band_rays_kernel(intrinsics: wp.array(dtype=float), pose: wp.array(dtype=float), width: int,
                              first_row: int, origins: wp.array(dtype=wp.vec3),
                              directions: wp.array(dtype=wp.vec3)):
    # generate_rays_kernel for rows [first_row, first_row + height) of the image (module docstring)
    y, x = wp.tid()
    i = y * width + x
    pos = pose_position(pose)
    origins[i] = pos
    directions[i] = camera_ray(read_intrinsics(intrinsics), pos, pose_rotation(pose),
                               float(x) + 0.5, float(y + first_row) + 0.5)


@wp.kernel
def project_points_kernel(points: wp.array(dtype=wp.vec3), intrinsics: wp.array(dtype=float),
                          pose: wp.array(dtype=float), out: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    out[i] = project_point(read_intrinsics(intrinsics), pose_position(pose), pose_rotation(pose), points[i])


def check_camera(intrinsics: wp.array, pose: wp.array, width: int | None = None,
                 height: int | None = None, first_row: int = 0) -> None:
    """Validate camera arrays (and image size and a band's first row when given)."""
    check_array("intrinsics", intrinsics, wp.float32, (4,))
    check_array("pose", pose, wp.float32, (7,))
    for name, v in (("width", width), ("height", height)):
        if v is not None and (not isinstance(v, Integral) or v <= 0):
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    check_first_row(first_row)


def check_first_row(first_row) -> int:
    """A band's first image row: an int >= 0 (module docstring)."""
    if not isinstance(first_row, Integral) or isinstance(first_row, bool) or first_row < 0:
        raise ValueError(f"first_row: expected an int >= 0, got {first_row!r}")
    return int(first_row)


def generate_rays(intrinsics: wp.array, pose: wp.array, width: int, height: int,
                  first_row: int = 0) -> tuple[wp.array, wp.array]:
    """Primary rays through the pixel centers of a width x height image (or band: rows
    [first_row, first_row + height) of the camera's image, module docstring).

    Args:
        intrinsics: float32 (4,) [fx, fy, cx, cy] in pixels.
        pose: float32 (7,) [px, py, pz, qx, qy, qz, qw] camera-to-world (quaternion need not be unit).
        width, height: image size in pixels.

    Returns:
        (origins, directions), each wp.vec3 (N,), N = height * width, row-major from the top row.
        Origins are the camera center; directions are
        R(q) ((x + 0.5 - cx) / fx, -(first_row + y + 0.5 - cy) / fy, -1),
        not normalized, so a hit at ray parameter t has view depth t.
        Differentiable w.r.t. intrinsics and pose.
    """
    check_camera(intrinsics, pose, width, height, first_row)
    width, height = int(width), int(height)
    dev = intrinsics.device
    grad = intrinsics.requires_grad or pose.requires_grad
    origins = wp.zeros(width * height, dtype=wp.vec3, device=dev, requires_grad=grad)
    directions = wp.zeros(width * height, dtype=wp.vec3, device=dev, requires_grad=grad)
    wp.launch(generate_band_rays_kernel, dim=(height, width), inputs=[intrinsics, pose, width, int(first_row)],
              outputs=[origins, directions], device=dev, record_tape=grad)
    return origins, directions


def project_points(points: wp.array, intrinsics: wp.array, pose: wp.array) -> wp.array:
    """Project world points into the image.

    Args:
        points: wp.vec3 (P,) world positions.
        intrinsics: float32 (4,) [fx, fy, cx, cy]; pose: float32 (7,) camera-to-world.

    Returns:
        wp.vec3 (P,): (pixel x, pixel y, view depth); depth > 0 in front of the camera. Pixel coordinates
        are continuous (pixel (x, y) spans [x, x + 1) x [y, y + 1)). A point with |depth| < 1e-12 is
        projected as if its depth were 1e-12. Differentiable w.r.t. points, intrinsics and pose.
    """
    check_array("points", points, wp.vec3, (None,))
    check_camera(intrinsics, pose)
    dev = points.device
    grad = points.requires_grad or intrinsics.requires_grad or pose.requires_grad
    out = wp.zeros(points.shape[0], dtype=wp.vec3, device=dev, requires_grad=grad)
    wp.launch(project_points_kernel, dim=points.shape[0], inputs=[points, intrinsics, pose], outputs=[out],
              device=dev, record_tape=grad)
    return out
