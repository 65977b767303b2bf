"""Shadow rays of point lights against a light-space grid of triangles: the same mask as
`shading.shadow_mask`, without a BVH walk per ray.

Every shadow ray of a point light L ends at L, so seen from L it is a single direction. Project the scene
centrally from L onto an axis plane that L lies outside of (axis k, side s, with s (L_k - x_k) > 0 for every
vertex x): a point x goes to (u, v) = ((x_a - L_a) / z, (x_b - L_b) / z) with z = s (L_k - x_k) > 0, the
other two axes a, b. The ray from a surface point o to L projects to the one point (u, v) of o, and a
triangle can meet it only if its projection (a triangle: all its points have z > 0) contains that point and
some part of it is nearer to the light than o (z < z_o). So the triangles are binned once per light into
a uniform grid over their projected bounding boxes (padded against float roundoff), and each ray tests
only the triangles of its cell whose nearest vertex is not farther from the light than o, with the test
`mesh_query_ray_anyhit` runs on a leaf (Woop, Benthin and Wald's watertight ray/triangle test, the two-sided
hit at 0 <= t < max_t). The answer is the BVH's: the grid only drops triangles the ray cannot reach, and
the per-triangle test is Warp's, ported (its fused multiply-adds done in float64, the same signs).

A light that is not outside the bounding box of the vertices along some axis (a light inside a room),
directional lights, meshes with more triangles than the rays (`shadow_mask_grid`), and rays whose origin
is not in front of the light's plane use `wp.mesh_query_ray_anyhit` as `shading.shadow_kernel` does.
Each ray also skips the triangles whose plane has its origin clearly on the light's side (no crossing).

The grid costs a few launches per light and step (project, count, scan, fill): about O(F) work plus the
cells the triangles' boxes cover, against O(log F) box tests per ray for the BVH.
"""

from __future__ import annotations

import threading

import numpy as np
import warp as wp

from .shading import Lights, shadow_ray

MAX_CELLS_SIDE = 2048
CELLS_PER_TRIANGLE = 2.0  # grid cells per triangle (of the projected bounding box of all vertices)
PAD = wp.constant(1.0e-5)  # relative padding of the triangles' projected boxes and depths
MIN_MARGIN = 1.0e-3  # the light must be this far (relative to the scene's size) outside the box's slab


@wp.func
def _diff_product(a: float, b: float, c: float, d: float) -> float:
    # a b - c d: Warp's intersect_ray_tri_woop uses fmaf (error-free); float64 products are exact
    return float(wp.float64(a) * wp.float64(b) - wp.float64(c) * wp.float64(d))


@wp.func
def _max_dim(d: wp.vec3) -> int:
    x = wp.abs(d[0])
    y = wp.abs(d[1])
    z = wp.abs(d[2])
    k = int(2)
    if x > y and x > z:
        k = 0
    elif y > z:
        k = 1
    return k


@wp.func
def ray_hits_triangle(p: wp.vec3, d: wp.vec3, a: wp.vec3, b: wp.vec3, c: wp.vec3, max_t: float) -> bool:
    """Warp's `intersect_ray_tri_woop` (native/intersect.h) followed by `mesh_query_ray_anyhit`'s
    0 <= t < max_t."""
    kz = _max_dim(d)
    kx = kz + 1
    if kx == 3:
        kx = 0
    ky = kx + 1
    if ky == 3:
        ky = 0
    if d[kz] < 0.0:
        tmp = kx
        kx = ky
        ky = tmp
    sx = d[kx] / d[kz]
    sy = d[ky] / d[kz]
    sz = 1.0 / d[kz]
    aa = a - p
    bb = b - p
    cc = c - p
    ax = aa[kx] - sx * aa[kz]
    ay = aa[ky] - sy * aa[kz]
    bx = bb[kx] - sx * bb[kz]
    by = bb[ky] - sy * bb[kz]
    cx = cc[kx] - sx * cc[kz]
    cy = cc[ky] - sy * cc[kz]
    u = _diff_product(cx, by, cy, bx)
    v = _diff_product(ax, cy, ay, cx)
    w = _diff_product(bx, ay, by, ax)
    hit = True
    if (u < 0.0 or v < 0.0 or w < 0.0) and (u > 0.0 or v > 0.0 or w > 0.0):
        hit = False
    det = u + v + w
    if det == 0.0:
        hit = False
    if hit:
        t_num = u * (sz * aa[kz]) + v * (sz * bb[kz]) + w * (sz * cc[kz])
        # sign(T) against sign(det): T xor sign(det) < 0 rejects
        if (det > 0.0 and t_num < 0.0) or (det < 0.0 and t_num > 0.0):
            hit = False
        else:
            t = t_num * (1.0 / det)
            hit = t < max_t and t >= 0.0
    return hit


@wp.kernel(enable_backward=False)
def _project_kernel(world: wp.array(dtype=wp.vec3), light: wp.vec3, axis: int, side: float,
                    out: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    x = world[i]
    a = (axis + 1) % 3
    b = (axis + 2) % 3
    z = side * (light[axis] - x[axis])
    out[i] = wp.vec3((x[a] - light[a]) / z, (x[b] - light[b]) / z, z)


@wp.func
def _plane_tol(x: wp.vec3, w: float) -> float:
    """Bound on the roundoff of dot(n, x) - w (unit n) in float32, with a wide margin."""
    return PAD * (1.0 + wp.abs(x[0]) + wp.abs(x[1]) + wp.abs(x[2]) + wp.abs(w))


@wp.func
def _cell(x: float, lo: float, inv: float, n: int) -> int:
    return wp.clamp(int(wp.floor((x - lo) * inv)), 0, n - 1)


@wp.func
def _tri_box(proj: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), f: int, pad: float) -> wp.vec4:
    p0 = proj[faces[3 * f]]
    p1 = proj[faces[3 * f + 1]]
    p2 = proj[faces[3 * f + 2]]
    return wp.vec4(wp.min(p0[0], wp.min(p1[0], p2[0])) - pad, wp.min(p0[1], wp.min(p1[1], p2[1])) - pad,
                   wp.max(p0[0], wp.max(p1[0], p2[0])) + pad, wp.max(p0[1], wp.max(p1[1], p2[1])) + pad)


@wp.kernel(enable_backward=False)
def _count_kernel(proj: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), lo: wp.vec2, inv: wp.vec2,
                  n: int, pad: float, counts: wp.array(dtype=wp.int32), world: wp.array(dtype=wp.vec3),
                  light: wp.vec3, planes: wp.array(dtype=wp.vec4)):
    f = wp.tid()
    # the triangle's plane, unit normal towards the light: a ray whose origin is clearly on the light's side
    # cannot reach it (0, 0, 0, 1 where that is not clear: never skipped)
    a = world[faces[3 * f]]
    nn = wp.cross(world[faces[3 * f + 1]] - a, world[faces[3 * f + 2]] - a)
    length = wp.length(nn)
    plane = wp.vec4(0.0, 0.0, 0.0, 1.0)
    if length > 0.0:
        nn = nn / length
        w = wp.dot(nn, a)
        sl = wp.dot(nn, light) - w
        if wp.abs(sl) > _plane_tol(light, w):
            if sl < 0.0:
                nn = -nn
                w = -w
            plane = wp.vec4(nn[0], nn[1], nn[2], w)
    planes[f] = plane
    box = _tri_box(proj, faces, f, pad)
    x0 = _cell(box[0], lo[0], inv[0], n)
    x1 = _cell(box[2], lo[0], inv[0], n)
    y0 = _cell(box[1], lo[1], inv[1], n)
    y1 = _cell(box[3], lo[1], inv[1], n)
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            wp.atomic_add(counts, y * n + x, 1)


@wp.kernel(enable_backward=False)
def _fill_kernel(proj: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), lo: wp.vec2, inv: wp.vec2,
                 n: int, pad: float, cursor: wp.array(dtype=wp.int32), entries: wp.array(dtype=wp.int32),
                 near: wp.array(dtype=float)):
    f = wp.tid()
    box = _tri_box(proj, faces, f, pad)
    x0 = _cell(box[0], lo[0], inv[0], n)
    x1 = _cell(box[2], lo[0], inv[0], n)
    y0 = _cell(box[1], lo[1], inv[1], n)
    y1 = _cell(box[3], lo[1], inv[1], n)
    z = wp.min(proj[faces[3 * f]][2], wp.min(proj[faces[3 * f + 1]][2], proj[faces[3 * f + 2]][2]))
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            slot = wp.atomic_add(cursor, y * n + x, -1) - 1  # cursor starts at the cell's end
            entries[slot] = f
            near[slot] = z


@wp.kernel(enable_backward=False)
def shadow_grid_kernel(bvh: wp.uint64, world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                       positions: wp.array2d(dtype=float), normals: wp.array2d(dtype=float),
                       model: wp.array(dtype=wp.int32), point_position: wp.array(dtype=wp.vec3),
                       dir_direction: wp.array(dtype=wp.vec3), eps: float, facing_only: int, j: int,
                       use_grid: int, axis: int, side: float, lo: wp.vec2, inv: wp.vec2, n: int,
                       ends: wp.array(dtype=wp.int32), counts: wp.array(dtype=wp.int32),
                       entries: wp.array(dtype=wp.int32), near: wp.array(dtype=float),
                       planes: wp.array(dtype=wp.vec4), out: wp.array2d(dtype=float)):
    # column j of `shading.shadow_kernel` (its `shadow_ray`), cell candidates for the test
    i = wp.tid()
    trace, o, d, max_t = shadow_ray(positions, normals, model, point_position, dir_direction, eps, facing_only,
                                    i, j)
    lit = 1.0
    if model[i] >= 0 and not trace:  # a light behind the normal (facing_only)
        lit = 0.0
    if trace:
        dn = wp.normalize(d)
        light = wp.vec3(0.0)
        z = 0.0
        if use_grid != 0:
            light = point_position[j]
            z = side * (light[axis] - o[axis])
        if z > 0.0:
            a = (axis + 1) % 3
            b = (axis + 2) % 3
            fx = ((o[a] - light[a]) / z - lo[0]) * inv[0]
            fy = ((o[b] - light[b]) / z - lo[1]) * inv[1]
            # outside the grid no triangle's box is: lit
            if fx >= 0.0 and fx < float(n) and fy >= 0.0 and fy < float(n):
                c = int(wp.floor(fy)) * n + int(wp.floor(fx))
                zmax = z * (1.0 + PAD) + PAD
                for k in range(ends[c] - counts[c], ends[c]):
                    if near[k] <= zmax:
                        f = entries[k]
                        pl = planes[f]
                        w = pl[3]
                        so = pl[0] * o[0] + pl[1] * o[1] + pl[2] * o[2] - w
                        # o and the light on the same side of the plane: no crossing
                        if so > _plane_tol(o, w):
                            continue
                        if ray_hits_triangle(o, dn, world[faces[3 * f]], world[faces[3 * f + 1]],
                                             world[faces[3 * f + 2]], max_t):
                            lit = 0.0
                            break
        elif wp.mesh_query_ray_anyhit(bvh, o, dn, max_t):
            lit = 0.0
    out[i, j] = lit


def _light_axis(light: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[int, float] | None:
    """(axis, side) with the light outside the vertices' bounding box along `axis` by the largest margin,
    side +1 when it is beyond the maximum; None when it is inside every slab (or too close to one)."""
    size = float(np.max(hi - lo)) + float(np.max(np.abs(light))) + 1e-30
    margins = np.maximum(light - hi, lo - light)
    k = int(np.argmax(margins))
    if not margins[k] > MIN_MARGIN * size:
        return None
    return k, (1.0 if light[k] > hi[k] else -1.0)


def shadow_mask_grid(bvh: wp.Mesh, positions: wp.array, normals: wp.array, model: wp.array, lights: Lights,
                     eps: float = 1.0e-4, facing_only: bool = False, grids: dict | None = None) -> wp.array:
    """`shading.shadow_mask(bvh.id, positions, normals, model, lights, eps, facing_only)` (same arguments and
    result, bit for bit up to how float32 roundoff decides rays that graze an edge), with the point lights'
    rays tested against a light-space grid (module docstring). `bvh` is the `wp.Mesh` itself (its points
    and indices are binned). `grids`: a dict that keeps the grids for later calls with the same mesh positions
    and lights (e.g. every view and band of one prepared frame; thread-safe). Not differentiable (as
    `shadow_mask`)."""
    if not isinstance(bvh, wp.Mesh):
        raise TypeError(f"bvh: expected a wp.Mesh, got {type(bvh).__name__}")
    if not isinstance(lights, Lights):
        raise TypeError(f"lights: expected a Lights, got {type(lights).__name__}")
    dev, n = positions.device, positions.shape[0]
    out = wp.empty((n, lights.count), dtype=float, device=dev)
    if n == 0 or lights.count == 0:
        return out
    world, faces = bvh.points, bvh.indices
    nf = faces.shape[0] // 3
    empty_i = wp.empty(1, dtype=wp.int32, device=dev)
    empty_f = wp.empty(1, dtype=float, device=dev)
    lp = lights.point_position.numpy().reshape(-1, 3) if lights.num_point else np.zeros((0, 3), np.float32)
    # the grid's build grows with the triangles and the cells they cover, the BVH's walk with the rays: far
    # more triangles than rays (a dense mesh in a small image, measured at 100k triangles and 256x256) walk
    # the BVH
    built = _grids(world, faces, nf, lp, grids) if nf * CELLS_PER_TRIANGLE <= 2 * n else []
    for j in range(lights.count):
        grid = built[j] if j < len(built) else None
        use_grid = int(grid is not None)
        if grid is None:  # the BVH for this light
            grid = [0, 0.0, wp.vec2(0.0, 0.0), wp.vec2(0.0, 0.0), 1, empty_i, empty_i, empty_i, empty_f,
                    wp.empty(1, dtype=wp.vec4, device=dev)]
        wp.launch(shadow_grid_kernel, dim=n, device=dev, record_tape=False,
                  inputs=[bvh.id, world, faces, positions, normals, model, lights.point_position,
                          lights.dir_direction, float(eps), int(bool(facing_only)), j, use_grid, *grid],
                  outputs=[out])
    return out


_GRIDS_LOCK = threading.Lock()


def _grids(world: wp.array, faces: wp.array, nf: int, lp: np.ndarray, cache: dict | None) -> list:
    """The grid (or None: the BVH) of each point light, from `cache` when it holds them for these positions."""
    key = (world.ptr, faces.ptr, lp.tobytes())
    with _GRIDS_LOCK:  # one thread builds, the others (bands of one frame) wait for its result
        if cache is not None and cache.get("key") == key:
            return cache["grids"]
        grids = []
        if nf > 0 and len(lp):
            wnp = world.numpy()
            lo3, hi3 = wnp.min(axis=0), wnp.max(axis=0)
            grids = [_build(world, faces, nf, light, lo3, hi3) for light in lp]
        if cache is not None:
            cache.update(key=key, grids=grids)
        return grids


def _build(world: wp.array, faces: wp.array, nf: int, light: np.ndarray, lo3: np.ndarray, hi3: np.ndarray):
    """The grid of one point light: [axis, side, lo, inv, n, ends, counts, entries, near, planes], or None when the
    light is not outside the vertices' bounding box (the caller then walks the BVH)."""
    choice = _light_axis(np.asarray(light, np.float64), lo3.astype(np.float64), hi3.astype(np.float64))
    if choice is None:
        return None
    axis, side = choice
    dev = world.device
    proj = wp.empty(world.shape[0], dtype=wp.vec3, device=dev)
    wp.launch(_project_kernel, dim=world.shape[0], device=dev, record_tape=False,
              inputs=[world, wp.vec3(*map(float, light)), axis, side, proj])
    pnp = proj.numpy()
    ulo, uhi = float(pnp[:, 0].min()), float(pnp[:, 0].max())
    vlo, vhi = float(pnp[:, 1].min()), float(pnp[:, 1].max())
    extent = max(uhi - ulo, vhi - vlo, 1e-30)
    pad = float(1.0e-5 * (extent + max(abs(ulo), abs(uhi), abs(vlo), abs(vhi))))
    cells = int(np.clip(np.sqrt(CELLS_PER_TRIANGLE * nf), 1, MAX_CELLS_SIDE))
    lo = wp.vec2(ulo - 2 * pad, vlo - 2 * pad)
    inv = wp.vec2(cells / (uhi - ulo + 4 * pad + 1e-30), cells / (vhi - vlo + 4 * pad + 1e-30))
    counts = wp.zeros(cells * cells, dtype=wp.int32, device=dev)
    planes = wp.empty(nf, dtype=wp.vec4, device=dev)
    wp.launch(_count_kernel, dim=nf, device=dev, record_tape=False,
              inputs=[proj, faces, lo, inv, cells, pad, counts, world, wp.vec3(*map(float, light)), planes])
    ends = wp.empty_like(counts)
    wp.utils.array_scan(counts, ends, inclusive=True)
    total = int(ends[cells * cells - 1:].numpy()[0])
    entries = wp.empty(max(total, 1), dtype=wp.int32, device=dev)
    near = wp.empty(max(total, 1), dtype=float, device=dev)
    cursor = wp.clone(ends)
    wp.launch(_fill_kernel, dim=nf, device=dev, record_tape=False,
              inputs=[proj, faces, lo, inv, cells, pad, cursor, entries, near])
    return [axis, side, lo, inv, cells, ends, counts, entries, near, planes]
