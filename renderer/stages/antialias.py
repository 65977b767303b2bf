"""Antialias stage: nvdiffrast-style silhouette blending that carries visibility gradients.

A hard rasterization is piecewise constant in the geometry, so its gradient w.r.t. vertex positions and
the camera is zero almost everywhere. Following nvdiffrast's antialias op (Laine et al. 2020, "Modular
Primitives for High-Performance Differentiable Rendering"), this stage blends the colors of adjacent
pixels across silhouette edges by the analytic position where the edge crosses the segment between the
two pixel centers. The blend weight is a smooth function of the projected edge, so the gradient of the
blended image reaches the edge's vertices, the intrinsics and the pose.

Two kernels: `find_silhouette_kernel` (discrete, not recorded) picks per pixel pair the front pixel and
the silhouette edge; `blend_kernel` (recorded, differentiable) computes the crossing and blends.

Conventions: pose [px, py, pz, qx, qy, qz, qw] camera-to-world (quaternion normalized here), OpenGL
camera looking down -Z; a world point p projects to camera space p_c = R^T (p - pos), pixel
x = fx p_c.x / (-p_c.z) + cx, y = cy - fy p_c.y / (-p_c.z), depth -p_c.z. Pixel (x, y) has its center at
(x + 0.5, y + 0.5); pixel buffers are flat, N = height * width, row-major from the top row. A band of rows
[first_row, first_row + height) of the image (`first_row`, see `camera`) uses the pixel centres of those
image rows, so its blends are the full image's on the rows whose pairs it holds (all but its last row's
pairs with the row below, which it does not have).
"""

from __future__ import annotations

import numpy as np
import warp as wp

from ..checks import check_array as _check
from .camera import check_first_row, project_points

# faces walked across one pixel segment before giving up (only matters for sub-pixel triangles)
MAX_WALK = 16


@wp.func
def edge_function(p: wp.vec3, q: wp.vec3, x: wp.vec2) -> float:
    """2D cross (q - p) x (x - p) in pixel space: zero on the line pq, its sign says the side."""
    return (q[0] - p[0]) * (x[1] - p[1]) - (q[1] - p[1]) * (x[0] - p[0])


@wp.func
def pixel_center(i: int, width: int, first_row: int) -> wp.vec2:
    """Centre of flat pixel i of a band whose row 0 is image row first_row, in image pixel coordinates."""
    return wp.vec2(float(i % width) + 0.5, float(i // width + first_row) + 0.5)


@wp.func
def face_area(screen: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), f: int) -> float:
    """Twice the signed screen-space area of face f; its sign is the face's facing w.r.t. the camera
    (for vertices in front of a perspective camera)."""
    c = screen[faces[3 * f + 2]]
    return edge_function(screen[faces[3 * f]], screen[faces[3 * f + 1]], wp.vec2(c[0], c[1]))


@wp.func
def in_front(screen: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), f: int) -> bool:
    d = wp.min(screen[faces[3 * f]][2], wp.min(screen[faces[3 * f + 1]][2], screen[faces[3 * f + 2]][2]))
    return d > 0.0


@wp.kernel
def copy_2d_kernel(src: wp.array2d(dtype=float), dst: wp.array2d(dtype=float)):
    i, c = wp.tid()
    dst[i, c] = src[i, c]


@wp.kernel(enable_backward=False)
def find_silhouette_kernel(tri_id: wp.array(dtype=wp.int32), depth: wp.array(dtype=float),
                           screen: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                           neighbors: wp.array(dtype=wp.int32), width: int, height: int, first_row: int,
                           max_walk: int,
                           pair_a: wp.array2d(dtype=wp.int32), pair_edge: wp.array2d(dtype=wp.int32)):
    # pair (d, p): d = 0 pairs p with its right neighbor, d = 1 with the one below
    d, p = wp.tid()
    pair_edge[d, p] = -1
    if (d == 0 and p % width + 1 >= width) or (d == 1 and p // width + 1 >= height):
        return
    q = wp.where(d == 0, p + 1, p + width)
    if tri_id[p] == tri_id[q]:
        return
    # a = the pixel of the nearer covered side (background is infinitely far)
    a = p
    if tri_id[p] < 0 or (tri_id[q] >= 0 and depth[q] < depth[p]):
        a = q
    b = p + q - a
    ca = pixel_center(a, width, first_row)
    cb = pixel_center(b, width, first_row)
    t_face = tri_id[a]
    if t_face >= faces.shape[0] // 3:  # a corrupt id: skip rather than read out of bounds
        return
    facing = face_area(screen, faces, t_face)
    f = t_face
    # walk from a's center towards b's across faces of T's facing until the segment leaves the surface
    for _step in range(max_walk):
        if not in_front(screen, faces, f):
            return
        s = wp.sign(face_area(screen, faces, f))  # makes the edge functions positive inside f
        best_t = float(2.0)  # noqa: UP018 (Warp: a variable mutated in a dynamic loop needs a constructor)
        best_k = int(-1)  # noqa: UP018
        for k in range(3):
            v0 = screen[faces[3 * f + k]]
            v1 = screen[faces[3 * f + (k + 1) % 3]]
            ea = s * edge_function(v0, v1, ca)
            eb = s * edge_function(v0, v1, cb)
            if eb < ea and ea / (ea - eb) < best_t:  # the segment heads out through this edge's line
                best_t = ea / (ea - eb)
                best_k = k
        if best_t > 1.0:  # b's center lies inside f: no edge between the two centers
            return
        nb = neighbors[3 * f + best_k]
        if nb < 0 or face_area(screen, faces, nb) * facing <= 0.0:
            # silhouette; like nvdiffrast, a pair only takes edges closer to perpendicular to it
            v0 = screen[faces[3 * f + best_k]]
            v1 = screen[faces[3 * f + (best_k + 1) % 3]]
            along = wp.abs(v1[d] - v0[d])
            across = wp.abs(v1[1 - d] - v0[1 - d])
            if across >= along:
                pair_a[d, p] = a
                pair_edge[d, p] = 3 * f + best_k
            return
        f = nb


@wp.kernel
def blend_kernel(color: wp.array2d(dtype=float), screen: wp.array(dtype=wp.vec3),
                 faces: wp.array(dtype=wp.int32), pair_a: wp.array2d(dtype=wp.int32),
                 pair_edge: wp.array2d(dtype=wp.int32), width: int, first_row: int,
                 out: wp.array2d(dtype=float)):
    d, p = wp.tid()
    e = pair_edge[d, p]
    if e < 0:
        return
    a = pair_a[d, p]
    b = p + wp.where(d == 0, p + 1, p + width) - a
    v0 = screen[faces[e]]
    v1 = screen[faces[e - e % 3 + (e % 3 + 1) % 3]]
    ea = edge_function(v0, v1, pixel_center(a, width, first_row))
    t = ea / (ea - edge_function(v0, v1, pixel_center(b, width, first_row)))  # crossing along a -> b, from a
    for c in range(color.shape[1]):
        if t > 0.5:
            wp.atomic_add(out, b, c, (color[a, c] - color[b, c]) * (t - 0.5))
        else:
            wp.atomic_add(out, a, c, (color[b, c] - color[a, c]) * (0.5 - t))


def face_neighbors(faces: np.ndarray) -> np.ndarray:
    """Face adjacency across edges, for `antialias`.

    Args:
        faces: integer array (F, 3) of vertex indices.

    Returns:
        int32 (F, 3): entry [f, k] is the face that shares edge k of face f, the vertex pair
        {faces[f, k], faces[f, (k + 1) % 3]} (in either order), or -1 if no other face does. Edges shared
        by more than two faces (non-manifold) also get -1, as do edges with equal endpoints. Faces are
        matched by vertex index, not position: a mesh split at creases (a cube with 24 vertices) has
        boundary edges there.
    """
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces: expected shape (F, 3), got {f.shape}")
    if not np.issubdtype(f.dtype, np.integer):
        raise TypeError(f"faces: expected an integer dtype, got {f.dtype}")
    if f.size and f.min() < 0:
        raise ValueError("faces: expected non-negative vertex indices")
    out = np.full(f.size, -1, dtype=np.int32)
    if f.size == 0:
        return out.reshape(-1, 3)
    v0 = f.astype(np.int64).ravel()
    v1 = np.roll(f, -1, axis=1).astype(np.int64).ravel()
    key = np.minimum(v0, v1) * (int(f.max()) + 1) + np.maximum(v0, v1)
    order = np.argsort(key, kind="stable")
    _, start, count = np.unique(key[order], return_index=True, return_counts=True)
    first = start[count == 2]
    e0, e1 = order[first], order[first + 1]
    ok = v0[e0] != v1[e0]
    e0, e1 = e0[ok], e1[ok]
    out[e0] = e1 // 3
    out[e1] = e0 // 3
    return out.reshape(-1, 3)


def antialias(color: wp.array, tri_id: wp.array, depth: wp.array, world: wp.array, faces: wp.array,
              neighbors: wp.array, intrinsics: wp.array, pose: wp.array, width: int, height: int,
              first_row: int = 0) -> wp.array:
    """Blend colors across silhouette edges so the image is differentiable w.r.t. geometry and camera.

    Args:
        color: float32 array2d (N, C), N = height * width (C = 3 for RGB; any C >= 1 works), the hard
            rendered image.
        tri_id: int32 (N,) visible face per pixel, -1 for background (ids must index `faces`).
        depth: float32 (N,) view depth per pixel (read only where tri_id >= 0; not differentiated).
        world: wp.vec3 (V,) world vertex positions.
        faces: int32 (3F,) flat vertex indices.
        neighbors: int32 (3F,) `face_neighbors(faces).ravel()`.
        intrinsics: float32 (4,) [fx, fy, cx, cy]; pose: float32 (7,) camera-to-world.
        width, height: image size in pixels (of the band, with first_row).
        first_row: 0, or the first image row of a band of `height` rows (module docstring).

    Returns:
        float32 array2d (N, C): `color` plus, for every horizontally or vertically adjacent pixel pair
        (p, q) with tri_id[p] != tri_id[q]:
        - T is the face of the nearer covered pixel (background is infinitely far; on equal depth, p's),
          a its pixel and b the other one; every face is projected with its vertices' perspective
          projection, and a face's facing is the sign of its projected area;
        - the segment from a's center to b's center leaves T through the edge whose line it crosses
          first; if that edge is interior (its neighbor has T's facing) the walk continues in the
          neighbor, up to MAX_WALK faces, until it reaches a silhouette edge: no neighbor (-1), or a
          neighbor facing the other way (for a front-facing T: back-facing w.r.t. the camera position).
          Nothing happens if b's center is reached first (b lies inside the walked surface), if a
          walked face has a vertex at depth <= 0, or if the edge is closer to parallel to the pair
          than to perpendicular (|edge extent along the pair| > |extent across|; that edge is handled
          by the pairs of the other direction, as in nvdiffrast);
        - with the 2D edge function e(x) = (v1 - v0) x (x - v0) of that edge, t = e(a) / (e(a) - e(b))
          in [0, 1] is where it crosses the segment, measured from a, and
          t > 0.5: out[b] += (color[a] - color[b]) (t - 0.5)   (T's surface covers part of b),
          t <= 0.5: out[a] += (color[b] - color[a]) (0.5 - t)  (a is partly uncovered).
        Contributions of all pairs add (a pixel next to two edges gets two). For a straight edge crossing
        a row (column) of pixels, each pixel ends up as its exact coverage blend of the two colors.
        Differentiable w.r.t. color, world, intrinsics and pose, through t (to the edge's two vertices)
        and both colors; tri_id, depth and the choice of pixel a and edge are held fixed (found by a
        kernel launched with record_tape=False).

    Limitations: at most one edge per pixel pair (the first silhouette edge the walk reaches); pairs
    whose pixels are both covered are resolved by the depth rule alone, so an occluder that is not
    connected to what lies behind it blends only across its own boundary/silhouette edges; no near-plane
    clipping; the blend (and its gradient) approximates coverage, as nvdiffrast's does.
    """
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        raise ValueError(f"width, height: expected positive ints, got {width!r}, {height!r}")
    n = width * height
    _check("color", color, wp.float32, (n, None), None)
    dev = color.device
    _check("tri_id", tri_id, wp.int32, (n,), dev)
    _check("depth", depth, wp.float32, (n,), dev)
    _check("world", world, wp.vec3, (None,), dev)
    _check("faces", faces, wp.int32, (None,), dev)
    if faces.shape[0] % 3:
        raise ValueError(f"faces: expected shape (3F,), got {tuple(faces.shape)}")
    _check("neighbors", neighbors, wp.int32, (faces.shape[0],), dev)
    _check("intrinsics", intrinsics, wp.float32, (4,), dev)
    _check("pose", pose, wp.float32, (7,), dev)
    screen = project_points(world, intrinsics, pose)
    pair_a, pair_edge = silhouette_pairs(tri_id, depth, screen, faces, neighbors, width, height, first_row)
    return blend(color, screen, faces, pair_a, pair_edge, width, first_row=first_row)


def silhouette_pairs(tri_id: wp.array, depth: wp.array, screen: wp.array, faces: wp.array, neighbors: wp.array,
                     width: int, height: int, first_row: int = 0) -> tuple[wp.array, wp.array]:
    """The discrete half of `antialias`: per pixel pair, the front pixel and the silhouette edge.

    Args:
        tri_id: int32 (N,); depth: float32 (N,); screen: wp.vec3 (V,) `project_points(world, ...)`;
        faces: int32 (3F,); neighbors: int32 (3F,); width, height: image size (N = height * width);
        first_row: 0, or a band's first image row (module docstring).

    Returns:
        (pair_a, pair_edge), int32 array2d (2, N) each: for pair (d, p) (d = 0 the pair of p and its right
        neighbor, d = 1 of p and the one below) the front pixel a and the flat index 3 f + k of the blended
        edge (-1: no blend). Not differentiable (launched with record_tape=False)."""
    n = width * height
    _check("tri_id", tri_id, wp.int32, (n,), None)
    dev = tri_id.device
    _check("depth", depth, wp.float32, (n,), dev)
    _check("screen", screen, wp.vec3, (None,), dev)
    _check("neighbors", neighbors, wp.int32, (faces.shape[0],), dev)
    first_row = check_first_row(first_row)
    pair_a = wp.empty((2, n), dtype=wp.int32, device=dev)
    pair_edge = wp.empty((2, n), dtype=wp.int32, device=dev)
    wp.launch(find_silhouette_kernel, dim=(2, n),
              inputs=[tri_id, depth, screen, faces, neighbors, width, height, first_row, MAX_WALK],
              outputs=[pair_a, pair_edge], device=dev, record_tape=False)
    return pair_a, pair_edge


def blend(color: wp.array, screen: wp.array, faces: wp.array, pair_a: wp.array, pair_edge: wp.array,
          width: int, into: wp.array | None = None, first_row: int = 0) -> wp.array:
    """The differentiable half of `antialias`: `color` (N, C) plus the silhouette blends of the pairs from
    `silhouette_pairs` (see `antialias`). Differentiable w.r.t. color and screen (wp.vec3 (V,)).

    `into`: None, or an (N, C) array that already holds `color` (e.g. `background.composite_output`'s
    out); the blends are then atomically added into it (no copy) and it is returned.
    `first_row`: that of `silhouette_pairs`."""
    n = color.shape[0]
    dev = color.device
    _check("pair_a", pair_a, wp.int32, (2, n), dev)
    _check("pair_edge", pair_edge, wp.int32, (2, n), dev)
    _check("screen", screen, wp.vec3, (None,), dev)
    first_row = check_first_row(first_row)
    if into is not None:
        _check("into", into, wp.float32, tuple(color.shape), dev)
        out = into
    else:
        grad = color.requires_grad or screen.requires_grad
        out = wp.zeros(color.shape, dtype=float, device=dev, requires_grad=grad)
        wp.launch(copy_2d_kernel, dim=color.shape, inputs=[color], outputs=[out], device=dev)
    wp.launch(blend_kernel, dim=(2, n), inputs=[color, screen, faces, pair_a, pair_edge, width, first_row],
              outputs=[out], device=dev)
    return out
