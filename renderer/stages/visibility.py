"""Visibility stage: BVH ray casting (which triangle a pixel sees) and the differentiable recomputation
of where the ray meets that triangle.

Barycentrics are `bary = (b1, b2)`, the weights of a triangle's 2nd and 3rd vertex (b0 = 1 - b1 - b2), of the
3D ray-triangle hit point; they are therefore perspective-correct by construction.
"""

from __future__ import annotations

import warp as wp

from .camera import camera_ray, check_array, check_camera, pose_position, pose_rotation, read_intrinsics


@wp.func
def ray_triangle(o: wp.vec3, d: wp.vec3, p0: wp.vec3, p1: wp.vec3, p2: wp.vec3) -> wp.vec3:
    """(b1, b2, t) where the line o + t d meets the plane of triangle (p0, p1, p2), by Moller-Trumbore:
    o + t d = (1 - b1 - b2) p0 + b1 p1 + b2 p2. The barycentrics are not clipped to the triangle.
    Zeros when the ray is parallel to the plane or the triangle is degenerate."""
    e1 = p1 - p0
    e2 = p2 - p0
    pv = wp.cross(d, e2)
    det = wp.dot(e1, pv)
    # det = -d . (e1 x e2): compare with its scale so the test does not depend on units
    if wp.abs(det) <= 1.0e-9 * wp.length(d) * wp.length(wp.cross(e1, e2)):
        return wp.vec3(0.0)
    inv = 1.0 / det
    tv = o - p0
    qv = wp.cross(tv, e1)
    return wp.vec3(wp.dot(tv, pv) * inv, wp.dot(d, qv) * inv, wp.dot(e2, qv) * inv)


@wp.kernel
def trace_primary_kernel(mesh: wp.uint64, origins: wp.array(dtype=wp.vec3),
                         directions: wp.array(dtype=wp.vec3), tri_id: wp.array(dtype=wp.int32)):
    i = wp.tid()
    hit = wp.mesh_query_ray(mesh, origins[i], directions[i], 1.0e30)
    if hit.result:
        tri_id[i] = hit.face
    else:
        tri_id[i] = -1


@wp.kernel
def intersect_kernel(world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                     tri_id: wp.array(dtype=wp.int32), origins: wp.array(dtype=wp.vec3),
                     directions: wp.array(dtype=wp.vec3), bary: wp.array2d(dtype=float),
                     depth: wp.array(dtype=float)):
    i = wp.tid()
    f = tri_id[i]
    if f >= 0 and 3 * f < faces.shape[0]:
        r = ray_triangle(origins[i], directions[i], world[faces[3 * f]], world[faces[3 * f + 1]],
                         world[faces[3 * f + 2]])
        bary[i, 0] = r[0]
        bary[i, 1] = r[1]
        depth[i] = r[2]


@wp.kernel
def bary_derivatives_kernel(world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                            tri_id: wp.array(dtype=wp.int32), intrinsics: wp.array(dtype=float),
                            pose: wp.array(dtype=float), width: int, first_row: int,
                            out: wp.array2d(dtype=float)):
    y, x = wp.tid()
    i = y * width + x
    f = tri_id[i]
    if f < 0 or 3 * f >= faces.shape[0]:
        return
    intr = read_intrinsics(intrinsics)
    pos = pose_position(pose)
    rot = pose_rotation(pose)
    p0 = world[faces[3 * f]]
    p1 = world[faces[3 * f + 1]]
    p2 = world[faces[3 * f + 2]]
    px = float(x) + 0.5
    py = float(y + first_row) + 0.5
    # the neighbour pixels' rays meet the plane of this triangle even where they leave the triangle
    b = ray_triangle(pos, camera_ray(intr, pos, rot, px, py), p0, p1, p2)
    bx = ray_triangle(pos, camera_ray(intr, pos, rot, px + 1.0, py), p0, p1, p2)
    by = ray_triangle(pos, camera_ray(intr, pos, rot, px, py + 1.0), p0, p1, p2)
    out[i, 0] = bx[0] - b[0]
    out[i, 1] = by[0] - b[0]
    out[i, 2] = bx[1] - b[1]
    out[i, 3] = by[1] - b[1]


def _check_mesh(world: wp.array, faces: wp.array) -> None:
    check_array("world", world, wp.vec3, (None,))
    check_array("faces", faces, wp.int32, (None,))
    if faces.shape[0] == 0 or faces.shape[0] % 3:
        raise ValueError(f"faces: expected a flat (3F,) array with F >= 1, got length {faces.shape[0]}")


def build_bvh(world: wp.array, faces: wp.array) -> wp.Mesh:
    """A wp.Mesh (BVH) over world positions wp.vec3 (V,) and faces wp.int32 (3F,).

    The mesh references `world` (no copy). After changing the positions call `refit_bvh`."""
    _check_mesh(world, faces)
    return wp.Mesh(points=world, indices=faces)


def refit_bvh(bvh: wp.Mesh, world: wp.array | None = None) -> wp.Mesh:
    """Refit `bvh` to its positions after they changed in place, or to a new array `world` of the same
    shape (which the mesh then references). Returns `bvh`."""
    if not isinstance(bvh, wp.Mesh):
        raise TypeError(f"bvh: expected a wp.Mesh, got {type(bvh).__name__}")
    if world is None or world is bvh.points:
        bvh.refit()
    else:
        check_array("world", world, wp.vec3, (bvh.points.shape[0],))
        bvh.points = world  # the setter refits
    return bvh


def trace_primary(bvh: wp.Mesh, origins: wp.array, directions: wp.array) -> wp.array:
    """Closest triangle hit by each ray (any side of the triangle, t >= 0).

    Args:
        bvh: from `build_bvh`.
        origins, directions: wp.vec3 (N,); directions need not be normalized.

    Returns:
        wp.int32 (N,) face index, -1 where the ray misses. Not differentiable (launched with
        record_tape=False).
    """
    if not isinstance(bvh, wp.Mesh):
        raise TypeError(f"bvh: expected a wp.Mesh, got {type(bvh).__name__}")
    check_array("origins", origins, wp.vec3, (None,))
    check_array("directions", directions, wp.vec3, (origins.shape[0],))
    tri_id = wp.empty(origins.shape[0], dtype=wp.int32, device=origins.device)
    wp.launch(trace_primary_kernel, dim=origins.shape[0], inputs=[bvh.id, origins, directions],
              outputs=[tri_id], device=origins.device, record_tape=False)
    return tri_id


def intersect(world: wp.array, faces: wp.array, tri_id: wp.array, origins: wp.array,
              directions: wp.array) -> tuple[wp.array, wp.array]:
    """Differentiable hit of each ray with its triangle `tri_id` (Moller-Trumbore).

    Args:
        world: wp.vec3 (V,); faces: wp.int32 (3F,).
        tri_id: wp.int32 (N,) from `trace_primary`, -1 for background.
        origins, directions: wp.vec3 (N,).

    Returns:
        (bary, depth): bary float32 array2d (N, 2) = (b1, b2), depth float32 (N,) the ray parameter t
        (the view depth for `generate_rays` directions). Zeros for background pixels, rays parallel to the
        triangle and degenerate triangles. Differentiable w.r.t. world, origins and directions.
    """
    _check_mesh(world, faces)
    check_array("tri_id", tri_id, wp.int32, (None,))
    n = tri_id.shape[0]
    check_array("origins", origins, wp.vec3, (n,))
    check_array("directions", directions, wp.vec3, (n,))
    dev = world.device
    grad = world.requires_grad or origins.requires_grad or directions.requires_grad
    bary = wp.zeros((n, 2), dtype=float, device=dev, requires_grad=grad)
    depth = wp.zeros(n, dtype=float, device=dev, requires_grad=grad)
    wp.launch(intersect_kernel, dim=n, inputs=[world, faces, tri_id, origins, directions],
              outputs=[bary, depth], device=dev, record_tape=grad)
    return bary, depth


def bary_derivatives(world: wp.array, faces: wp.array, tri_id: wp.array, intrinsics: wp.array, pose: wp.array,
                     width: int, height: int, first_row: int = 0) -> wp.array:
    """Screen-space derivatives of the barycentrics by ray differentials.

    For each covered pixel (x, y) the rays through the centers of pixels (x, y), (x + 1, y) and (x, y + 1) are
    intersected with the plane of the pixel's triangle; the derivatives are the one-pixel forward
    differences of (b1, b2) between them.

    Args:
        world: wp.vec3 (V,); faces: wp.int32 (3F,); tri_id: wp.int32 (N,), N = height * width.
        intrinsics: float32 (4,); pose: float32 (7,) (see `camera.generate_rays`).
        first_row: for a band of rows [first_row, first_row + height) of the image (`camera`), else 0.

    Returns:
        float32 array2d (N, 4) = (db1/dx, db1/dy, db2/dx, db2/dy) per pixel, zeros on background. Not
        differentiable (launched with record_tape=False).
    """
    _check_mesh(world, faces)
    check_camera(intrinsics, pose, width, height, first_row)
    width, height = int(width), int(height)
    check_array("tri_id", tri_id, wp.int32, (width * height,))
    out = wp.zeros((width * height, 4), dtype=float, device=world.device)
    wp.launch(bary_derivatives_kernel, dim=(height, width),
              inputs=[world, faces, tri_id, intrinsics, pose, width, int(first_row)], outputs=[out],
              device=world.device, record_tape=False)
    return out
