"""Raster stage: primary visibility by rasterizing triangles, the drop-in for BVH ray casting
(`visibility.trace_primary`) whose cost grows with the triangles plus the fragments they cover.

The test is the ray test, done per triangle over its pixel bounding box. In camera space (origin at the
camera, the pixel ray d = ((x + 0.5 - cx) / fx, -(y + 0.5 - cy) / fy, -1), so a hit's ray parameter t is
its view depth, as `camera.generate_rays`), with the triangle's vertices v0, v1, v2:
    e0 = d . (v1 x v2),  e1 = d . (v2 x v0),  e2 = d . (v0 x v1),  S = e0 + e1 + e2 = d . N,
    N = (v1 - v0) x (v2 - v0), and the ray meets the triangle's plane at t = (v0 . (v1 x v2)) / S with
    barycentrics e_i / S.
The pixel sees the triangle iff S != 0, every e_i / S >= 0 and t >= 0: any side of the triangle (no
back-face culling, like `trace_primary`), and homogeneous, so triangles with vertices behind the camera
need no special case in the test. The bounding box of a triangle that crosses the camera plane is taken
from its part at view depth >= NEAR (clipped), so hits closer than NEAR are not found (the BVH path finds
them); a triangle entirely behind the camera is skipped.

Two passes: the nearest t per pixel (atomic min), then among the fragments at exactly that t the lowest
triangle id (atomic min): deterministic, ties between triangles at the same depth go to the lower id. On a
CPU, whose launch runs the triangles one after the other in one thread, one pass keeps both (the same ids).
"""

from __future__ import annotations

import warp as wp

from .camera import check_array, check_camera, pose_position, pose_rotation, read_intrinsics

NEAR = wp.constant(1.0e-6)  # view depth below which a triangle's part is left out of its bounding box
FAR_DEPTH = wp.constant(1.0e30)
NO_ID = wp.constant(2147483647)
BOX_PAD = wp.constant(1.0e-3)


@wp.kernel(enable_backward=False)
def camera_space_kernel(world: wp.array(dtype=wp.vec3), pose: wp.array(dtype=float), out: wp.array(dtype=wp.vec3)):
    # once per vertex, not once per triangle corner (a vertex is shared by ~6 triangles)
    v = wp.tid()
    out[v] = wp.quat_rotate_inv(pose_rotation(pose), world[v] - pose_position(pose))


@wp.func
def _project(intr: wp.vec4, v: wp.vec3) -> wp.vec2:
    """Pixel coordinates of a camera-space point with -v.z > 0."""
    z = -v[2]
    return wp.vec2(intr[2] + intr[0] * v[0] / z, intr[3] - intr[1] * v[1] / z)


@wp.func
def _extend(box: wp.vec4, p: wp.vec2) -> wp.vec4:
    return wp.vec4(wp.min(box[0], p[0]), wp.min(box[1], p[1]), wp.max(box[2], p[0]), wp.max(box[3], p[1]))


@wp.func
def _clip_edge(box: wp.vec4, intr: wp.vec4, a: wp.vec3, b: wp.vec3) -> wp.vec4:
    """Add the point of edge ab at depth NEAR when the edge crosses it."""
    da = -a[2]
    db = -b[2]
    out = box
    if (da >= NEAR) != (db >= NEAR):
        s = (NEAR - da) / (db - da)
        out = _extend(box, _project(intr, a + s * (b - a)))
    return out


@wp.func
def _bbox(intr: wp.vec4, v0: wp.vec3, v1: wp.vec3, v2: wp.vec3) -> wp.vec4:
    """(xmin, ymin, xmax, ymax) in pixels of the triangle's part at depth >= NEAR (xmin > xmax: none)."""
    box = wp.vec4(1.0e30, 1.0e30, -1.0e30, -1.0e30)
    if -v0[2] >= NEAR:
        box = _extend(box, _project(intr, v0))
    if -v1[2] >= NEAR:
        box = _extend(box, _project(intr, v1))
    if -v2[2] >= NEAR:
        box = _extend(box, _project(intr, v2))
    box = _clip_edge(box, intr, v0, v1)
    box = _clip_edge(box, intr, v1, v2)
    box = _clip_edge(box, intr, v2, v0)
    return box


@wp.kernel(enable_backward=False)
def raster_kernel(cam: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                  intrinsics: wp.array(dtype=float), width: int, height: int, first_row: int,
                  resolve: int, depth: wp.array(dtype=float), tri_id: wp.array(dtype=wp.int32)):
    f = wp.tid()
    intr = read_intrinsics(intrinsics)
    v0 = cam[faces[3 * f]]
    v1 = cam[faces[3 * f + 1]]
    v2 = cam[faces[3 * f + 2]]
    box = _bbox(intr, v0, v1, v2)
    if box[0] > box[2]:
        return  # entirely behind the camera
    # pixel centers x + 0.5 in [xmin, xmax], widened by BOX_PAD of a pixel against the projection's
    # roundoff (the exact test decides), clamped first so the float -> int conversion stays in range;
    # rows are image rows, the band's [first_row, first_row + height) (the test of a pixel does not
    # depend on the range it is part of, so a band finds the full image's ids)
    top = float(first_row)
    x0 = int(wp.ceil(wp.clamp(box[0], -2.0, float(width) + 2.0) - 0.5 - BOX_PAD))
    x1 = int(wp.floor(wp.clamp(box[2], -2.0, float(width) + 2.0) - 0.5 + BOX_PAD))
    y0 = int(wp.ceil(wp.clamp(box[1], top - 2.0, top + float(height) + 2.0) - 0.5 - BOX_PAD))
    y1 = int(wp.floor(wp.clamp(box[3], top - 2.0, top + float(height) + 2.0) - 0.5 + BOX_PAD))
    x0 = wp.max(x0, 0)
    y0 = wp.max(y0, first_row)
    x1 = wp.min(x1, width - 1)
    y1 = wp.min(y1, first_row + height - 1)
    n0 = wp.cross(v1, v2)
    n1 = wp.cross(v2, v0)
    n2 = wp.cross(v0, v1)
    triple = wp.dot(v0, n0)
    inv_fx = 1.0 / intr[0]
    for y in range(y0, y1 + 1):
        dy = -(float(y) + 0.5 - intr[3]) / intr[1]
        # e_k = d . n_k = n_k.x X + (n_k.y dy - n_k.z): the row's constant part, negated exactly for the
        # reversed edge of the neighbouring triangle, so shared edges stay watertight
        c0 = n0[1] * dy - n0[2]
        c1 = n1[1] * dy - n1[2]
        c2 = n2[1] * dy - n2[2]
        for x in range(x0, x1 + 1):
            dx = (float(x) + 0.5 - intr[2]) * inv_fx
            e0 = n0[0] * dx + c0
            e1 = n1[0] * dx + c1
            e2 = n2[0] * dx + c2
            s = e0 + e1 + e2
            inside = (s > 0.0 and e0 >= 0.0 and e1 >= 0.0 and e2 >= 0.0 and triple >= 0.0) or (
                s < 0.0 and e0 <= 0.0 and e1 <= 0.0 and e2 <= 0.0 and triple <= 0.0)
            if inside:
                t = triple / s
                i = (y - first_row) * width + x
                # atomics: plain read-modify-writes in a (single-threaded) CPU launch, real ones on a GPU
                if resolve == 0:
                    wp.atomic_min(depth, i, t)
                elif resolve == 1:
                    if t == depth[i]:
                        wp.atomic_min(tri_id, i, f)
                elif t < depth[i] or (t == depth[i] and f < tri_id[i]):
                    # both at once: only where one thread runs the triangles in turn (a CPU launch)
                    depth[i] = t
                    tri_id[i] = f


@wp.kernel(enable_backward=False)
def _finish_ids(tri_id: wp.array(dtype=wp.int32)):
    i = wp.tid()
    if tri_id[i] == NO_ID:
        tri_id[i] = -1


def rasterize(world: wp.array, faces: wp.array, intrinsics: wp.array, pose: wp.array, width: int,
              height: int, first_row: int = 0) -> wp.array:
    """The closest triangle at each pixel center, by rasterization (see the module docstring), of the whole
    image or of the band of rows [first_row, first_row + height) (`camera`: the band's ids are the full
    image's, bit for bit).

    Args:
        world: wp.vec3 (V,) world positions; faces: wp.int32 (3F,).
        intrinsics: float32 (4,) [fx, fy, cx, cy]; pose: float32 (7,) camera-to-world (see `camera`).
        width, height: image (band) size; N = height * width pixels, row-major from the top row.
        first_row: the band's first image row (0: the whole image when height is the camera's).

    Returns:
        wp.int32 (N,) face index, -1 where no triangle is hit at view depth >= 0 (triangles crossing the
        camera plane: >= NEAR), the same ids as `visibility.trace_primary` on `camera.generate_rays`
        except between triangles at equal depth (the lower id wins here). Not differentiable (launched
        with record_tape=False); pass the ids to `visibility.intersect` for differentiable barycentrics.
    """
    check_array("world", world, wp.vec3, (None,))
    check_array("faces", faces, wp.int32, (None,))
    if faces.shape[0] % 3:
        raise ValueError(f"faces: expected a flat (3F,) array, got length {faces.shape[0]}")
    check_camera(intrinsics, pose, width, height, first_row)
    width, height = int(width), int(height)
    dev = world.device
    n = width * height
    depth = wp.full(n, 1.0e30, dtype=float, device=dev)
    tri_id = wp.full(n, NO_ID, dtype=wp.int32, device=dev)
    nf = faces.shape[0] // 3
    if nf:
        cam = wp.empty(world.shape[0], dtype=wp.vec3, device=dev)
        wp.launch(camera_space_kernel, dim=world.shape[0], inputs=[world, pose, cam], device=dev, record_tape=False)
        for resolve in ((2,) if dev.is_cpu else (0, 1)):
            wp.launch(raster_kernel, dim=nf, device=dev, record_tape=False,
                      inputs=[cam, faces, intrinsics, width, height, int(first_row), resolve, depth, tri_id])
    wp.launch(_finish_ids, dim=n, inputs=[tri_id], device=dev, record_tape=False)
    return tri_id
