"""Soft rasterization stage: SoftRas-style (Liu et al. 2019) soft coverage + depth softmax, tile-binned.

Every triangle near a pixel contributes a coverage D_j from the squared screen distance between the pixel
center and the triangle; surface colors are blended with a softmax over normalized inverse depth, and the
result is composited over the background with alpha = 1 - prod_j (1 - D_j). Conventions
(docs/architecture.md): pixel (x, y) has its center at (x + 0.5, y + 0.5), row 0 at the top; pose
[px, py, pz, qx, qy, qz, qw] is camera-to-world, OpenGL (looks down -Z).

Two departures from SoftRas (so that covered regions are solid and silhouettes carry a gradient in the
color image):
- Coverage is one-sided, as in DIB-R: D_j = 1 when the pixel center is inside triangle j and
  2 sigmoid(-d^2 / sigma) outside (d = screen distance to the triangle), which is continuous with slope 0
  at the edge. SoftRas's two-sided sigmoid(delta d^2 / sigma) is 0.5 on every edge, so two triangles
  sharing an interior edge give alpha = 0.75 there (a dark seam); here alpha = 1 wherever a pixel center
  is covered, and falls off smoothly over ~sqrt(sigma) px outside silhouettes only.
- The background is not a softmax candidate. SoftRas's background weight exp(eps / gamma) is ~e^-97 of
  any covering triangle's for zn ~ 0.97 and gamma = 0.01, so its color jumped from the surface to the
  background where the last coverage reached 0. Here the softmax runs over triangles only and the
  background enters through alpha: color = alpha * foreground + (1 - alpha) * background.
The softmax itself is SoftRas's: where a nearer surface's falloff overlaps a farther covered surface, the
nearer one outweighs it by D exp(delta zn / gamma) until its coverage reaches 0 at the cutoff radius, so
when delta zn >> gamma a silhouette over another surface (not over the background) still switches color
there, as in SoftRas.

Pipeline: project vertices (differentiable) -> bin triangles into screen tiles (not differentiable, all in
Warp so it runs on CUDA) -> per-pixel depth maximum (not differentiable, only a numerical shift) ->
per-pixel sums over the pixel's tile list -> per-pixel color and alpha from the sums (both differentiable).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import warp as wp

from ..checks import check_array as _check

# eps_D: a triangle's coverage reaches 0 at screen distance r = sqrt(sigma ln(2 / eps_D + 1)) from it.
COVERAGE_EPS = wp.constant(1.0e-4)
# 1 - D_j below this counts as 0 in log(1 - D_j), keeping the log and its adjoint finite
MIN_TRANSPARENCY = wp.constant(1.0e-30)
TILE_SIZE = 16


@wp.func
def project_vertex(p: wp.vec3, intrinsics: wp.array(dtype=float), pose: wp.array(dtype=float)) -> wp.vec3:
    """(pixel x, pixel y, view depth) of world point p."""
    rot = wp.normalize(wp.quat(pose[3], pose[4], pose[5], pose[6]))
    pc = wp.quat_rotate_inv(rot, p - wp.vec3(pose[0], pose[1], pose[2]))
    depth = -pc[2]
    # points at or behind the camera plane are culled later; keep them finite (and their gradient zero)
    inv = 1.0 / wp.max(depth, 1.0e-6)
    x = intrinsics[0] * pc[0] * inv + intrinsics[2]
    return wp.vec3(x, intrinsics[3] - intrinsics[1] * pc[1] * inv, depth)


@wp.func
def cross2(a: wp.vec2, b: wp.vec2) -> float:
    return a[0] * b[1] - a[1] * b[0]


@wp.func
def segment_closest(p: wp.vec2, a: wp.vec2, b: wp.vec2) -> float:
    """Parameter t in [0, 1] of the point of segment ab closest to p."""
    e = b - a
    return wp.clamp(wp.dot(p - a, e) / wp.max(wp.dot(e, e), 1.0e-20), 0.0, 1.0)


@wp.func
def closest_point(p: wp.vec2, a: wp.vec2, b: wp.vec2, c: wp.vec2) -> wp.vec4:
    """(d2, w0, w1, w2): d2 = squared distance from p to the triangle (0 when p is inside or on it); w =
    screen-space barycentrics of the triangle point closest to p (p itself when inside). Either winding;
    the triangle must not be degenerate."""
    area = cross2(b - a, c - a)
    w = wp.vec3(cross2(b - p, c - p), cross2(c - p, a - p), cross2(a - p, b - p)) / area
    if wp.min(w) >= 0.0:
        return wp.vec4(0.0, w[0], w[1], w[2])
    tab = segment_closest(p, a, b)
    tbc = segment_closest(p, b, c)
    tca = segment_closest(p, c, a)
    dab = wp.length_sq(p - (a + tab * (b - a)))
    dbc = wp.length_sq(p - (b + tbc * (c - b)))
    dca = wp.length_sq(p - (c + tca * (a - c)))
    d2 = dab
    q = wp.vec3(1.0 - tab, tab, 0.0)
    if dbc < d2:
        d2 = dbc
        q = wp.vec3(0.0, 1.0 - tbc, tbc)
    if dca < d2:
        d2 = dca
        q = wp.vec3(tca, 0.0, 1.0 - tca)
    return wp.vec4(d2, q[0], q[1], q[2])


@wp.func
def coverage(x: float) -> float:
    """(1 + eps_D) 2 sigmoid(-x) - eps_D of x = d^2 / sigma >= 0: 1 with slope 0 at the edge (x = 0), and
    shifted by < eps_D so it is exactly 0 at the cutoff x = ln(2 / eps_D + 1) (a truncated falloff would
    jump by eps_D there). Positive means the triangle contributes."""
    e = wp.exp(-x)  # <= 1: no overflow in value or adjoint for any x >= 0
    return (1.0 + COVERAGE_EPS) * 2.0 * e / (1.0 + e) - COVERAGE_EPS


@wp.func
def log_transparency(x: float) -> float:
    """log(1 - coverage(x)) = log((1 + eps_D) tanh(x / 2)) for x > 0; 1 - D is clamped to MIN_TRANSPARENCY
    (reached only for d^2 < 2e-30 sigma, where the true gradient w.r.t. the geometry vanishes anyway)."""
    return wp.log(1.0 + COVERAGE_EPS) + wp.log(wp.max(wp.tanh(0.5 * x), MIN_TRANSPARENCY))


@wp.func
def perspective_weights(w: wp.vec3, za: float, zb: float, zc: float) -> wp.vec4:
    """Screen-space barycentrics w -> (perspective-correct barycentrics, view depth)."""
    u = wp.vec3(w[0] / za, w[1] / zb, w[2] / zc)
    inv_z = u[0] + u[1] + u[2]
    return wp.vec4(u[0] / inv_z, u[1] / inv_z, u[2] / inv_z, 1.0 / inv_z)


@wp.func
def tile_range(screen: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), f: int, radius: float,
               near: float, far: float, width: int, height: int, tile_size: int) -> wp.vec4i:
    """Inclusive tile range (tx0, ty0, tx1, ty1) of triangle f's screen bbox grown by `radius`; empty
    (tx0 > tx1) when the triangle is culled: a vertex outside [near, far] in depth, or zero screen area."""
    a = screen[faces[3 * f]]
    b = screen[faces[3 * f + 1]]
    c = screen[faces[3 * f + 2]]
    zlo = wp.min(a[2], wp.min(b[2], c[2]))
    zhi = wp.max(a[2], wp.max(b[2], c[2]))
    area = cross2(wp.vec2(b[0] - a[0], b[1] - a[1]), wp.vec2(c[0] - a[0], c[1] - a[1]))
    empty = wp.vec4i(1, 1, 0, 0)
    if zlo < near or zhi > far or wp.abs(area) < 1.0e-12:
        return empty
    # clamp in float first: projected coordinates can be far outside the int range
    x0 = wp.clamp(wp.min(a[0], wp.min(b[0], c[0])) - radius, -1.0, float(width))
    x1 = wp.clamp(wp.max(a[0], wp.max(b[0], c[0])) + radius, -1.0, float(width))
    y0 = wp.clamp(wp.min(a[1], wp.min(b[1], c[1])) - radius, -1.0, float(height))
    y1 = wp.clamp(wp.max(a[1], wp.max(b[1], c[1])) + radius, -1.0, float(height))
    # pixels whose centers (px + 0.5) can lie in [x0, x1] are among floor(x0) .. floor(x1)
    px0 = wp.max(int(wp.floor(x0)), 0)
    px1 = wp.min(int(wp.floor(x1)), width - 1)
    py0 = wp.max(int(wp.floor(y0)), 0)
    py1 = wp.min(int(wp.floor(y1)), height - 1)
    if px0 > px1 or py0 > py1:
        return empty
    return wp.vec4i(px0 // tile_size, py0 // tile_size, px1 // tile_size, py1 // tile_size)


@wp.kernel
def project_kernel(world: wp.array(dtype=wp.vec3), intrinsics: wp.array(dtype=float),
                   pose: wp.array(dtype=float), screen: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    screen[i] = project_vertex(world[i], intrinsics, pose)


@wp.kernel(enable_backward=False)
def count_tiles_kernel(screen: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), radius: float,
                       near: float, far: float, width: int, height: int, tile_size: int, tiles_x: int,
                       counts: wp.array(dtype=wp.int32)):
    f = wp.tid()
    r = tile_range(screen, faces, f, radius, near, far, width, height, tile_size)
    for ty in range(r[1], r[3] + 1):
        for tx in range(r[0], r[2] + 1):
            wp.atomic_add(counts, ty * tiles_x + tx, 1)


@wp.kernel(enable_backward=False)
def fill_tiles_kernel(screen: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), radius: float,
                      near: float, far: float, width: int, height: int, tile_size: int, tiles_x: int,
                      offsets: wp.array(dtype=wp.int32), cursor: wp.array(dtype=wp.int32),
                      tile_tris: wp.array(dtype=wp.int32)):
    f = wp.tid()
    r = tile_range(screen, faces, f, radius, near, far, width, height, tile_size)
    for ty in range(r[1], r[3] + 1):
        for tx in range(r[0], r[2] + 1):
            t = ty * tiles_x + tx
            tile_tris[offsets[t] + wp.atomic_add(cursor, t, 1)] = f


@wp.func
def fragment(screen: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), f: int, p: wp.vec2,
             sigma: float, near: float, far: float):
    """(x = d^2 / sigma, 0 inside; perspective barycentrics + depth of the closest point; normalized
    inverse depth of the closest point)."""
    a = screen[faces[3 * f]]
    b = screen[faces[3 * f + 1]]
    c = screen[faces[3 * f + 2]]
    cp = closest_point(p, wp.vec2(a[0], a[1]), wp.vec2(b[0], b[1]), wp.vec2(c[0], c[1]))
    pw = perspective_weights(wp.vec3(cp[1], cp[2], cp[3]), a[2], b[2], c[2])
    return cp[0] / sigma, pw, (far - pw[3]) / (far - near)


@wp.kernel(enable_backward=False)
def depth_max_kernel(screen: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                     offsets: wp.array(dtype=wp.int32), counts: wp.array(dtype=wp.int32),
                     tile_tris: wp.array(dtype=wp.int32), width: int, tile_size: int, tiles_x: int,
                     sigma: float, near: float, far: float, zmax: wp.array(dtype=float)):
    i = wp.tid()
    px = i % width
    py = i // width
    p = wp.vec2(float(px) + 0.5, float(py) + 0.5)
    t = (py // tile_size) * tiles_x + px // tile_size
    m = float(0.0)  # zn >= 0 for every triangle that is not culled
    for k in range(counts[t]):
        x, pw, z = fragment(screen, faces, tile_tris[offsets[t] + k], p, sigma, near, far)
        if coverage(x) > 0.0:
            m = wp.max(m, z)
    zmax[i] = m


@wp.kernel
def accumulate_kernel(screen: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                      colors: wp.array2d(dtype=float), offsets: wp.array(dtype=wp.int32),
                      counts: wp.array(dtype=wp.int32), tile_tris: wp.array(dtype=wp.int32),
                      zmax: wp.array(dtype=float), width: int, tile_size: int, tiles_x: int, sigma: float,
                      gamma: float, near: float, far: float, sums: wp.array2d(dtype=float)):
    """Per pixel (sum_j e_j, sum_j e_j C_j (3), sum over partial j of log(1 - D_j), number of triangles
    covering the center), e_j = D_j exp((zn_j - zmax) / gamma)."""
    i = wp.tid()
    px = i % width
    py = i // width
    p = wp.vec2(float(px) + 0.5, float(py) + 0.5)
    t = (py // tile_size) * tiles_x + px // tile_size
    m = zmax[i]  # exponent shift, a constant to autodiff (the final result does not depend on it)
    den = wp.float32(0.0)  # a typed variable: Warp cannot reassign a literal in a dynamic loop
    num = wp.vec3(0.0)
    log_t = wp.float32(0.0)
    inside = wp.float32(0.0)
    # Warp's backward neither replays a dynamic loop before the code after it nor stores per-iteration
    # values; it re-runs each iteration's body in reverse. So the loop only carries plain sums and writes
    # them out; everything nonlinear in them happens in resolve_kernel.
    for k in range(counts[t]):
        f = tile_tris[offsets[t] + k]
        x, pw, z = fragment(screen, faces, f, p, sigma, near, far)
        d = coverage(x)
        if d > 0.0:
            v0 = faces[3 * f]
            v1 = faces[3 * f + 1]
            v2 = faces[3 * f + 2]
            col = (pw[0] * wp.vec3(colors[v0, 0], colors[v0, 1], colors[v0, 2])
                   + pw[1] * wp.vec3(colors[v1, 0], colors[v1, 1], colors[v1, 2])
                   + pw[2] * wp.vec3(colors[v2, 0], colors[v2, 1], colors[v2, 2]))
            e = d * wp.exp((z - m) / gamma)
            den = den + e
            num = num + e * col
            # D = 1 (log(1 - D) = -inf) is counted instead, and makes alpha exactly 1
            if x > 0.0:
                log_t = log_t + log_transparency(x)
            else:
                inside = inside + 1.0
    sums[i, 0] = den
    sums[i, 1] = num[0]
    sums[i, 2] = num[1]
    sums[i, 3] = num[2]
    sums[i, 4] = log_t
    sums[i, 5] = inside


@wp.kernel
def resolve_kernel(sums: wp.array2d(dtype=float), background: wp.array(dtype=float),
                   out_color: wp.array2d(dtype=float), out_alpha: wp.array(dtype=float)):
    """alpha = 1 - prod_j (1 - D_j); color = alpha * sum_j e_j C_j / sum_j e_j + (1 - alpha) * background."""
    i = wp.tid()
    alpha = float(0.0)
    if sums[i, 5] > 0.0:
        alpha = 1.0
    else:
        alpha = 1.0 - wp.exp(sums[i, 4])
    den = sums[i, 0]
    for c in range(3):
        fg = float(0.0)
        if den > 0.0:  # den = 0 only where no triangle contributes, i.e. alpha = 0
            fg = sums[i, 1 + c] / den
        out_color[i, c] = alpha * fg + (1.0 - alpha) * background[c]
    out_alpha[i] = alpha


def _check_positive_int(name: str, v) -> None:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")


def coverage_radius(sigma: float) -> float:
    """Blur radius in pixels: the falloff 2 sigmoid(-d^2 / sigma) outside a triangle falls to
    eps_D / (1 + eps_D) ~ eps_D = COVERAGE_EPS (negligible) at d = r = sqrt(sigma ln(2 / eps_D + 1)) (~3.15 px
    for sigma = 1), where the shifted coverage is exactly 0."""
    return math.sqrt(sigma * math.log(2.0 / COVERAGE_EPS + 1.0))


def project_vertices(world: wp.array, intrinsics: wp.array, pose: wp.array) -> wp.array:
    """Project world vertices: wp.vec3 (V,) -> wp.vec3 (V,) (pixel x, pixel y, view depth).

    pixel x = fx * p_c.x / (-p_c.z) + cx, pixel y = cy - fy * p_c.y / (-p_c.z), depth = -p_c.z with
    p_c = R(q)^T (p - pos), q normalized. Vertices with depth < 1e-6 are projected as if at depth 1e-6
    (soft_rasterize culls them). Differentiable w.r.t. world, intrinsics (float32 (4,)) and pose
    (float32 (7,)).
    """
    _check("world", world, wp.vec3, (None,))
    _check("intrinsics", intrinsics, wp.float32, (4,))
    _check("pose", pose, wp.float32, (7,))
    grad = world.requires_grad or intrinsics.requires_grad or pose.requires_grad
    screen = wp.zeros(world.shape[0], dtype=wp.vec3, device=world.device, requires_grad=grad)
    wp.launch(project_kernel, dim=world.shape[0], inputs=[world, intrinsics, pose], outputs=[screen],
              device=world.device)
    return screen


def bin_triangles(screen: wp.array, faces: wp.array, width: int, height: int, radius: float,
                  near: float = 0.05, far: float = 100.0, tile_size: int = TILE_SIZE):
    """Bin triangles into tile_size x tile_size screen tiles. Not differentiable (record_tape=False).

    Args:
        screen: wp.vec3 (V,) projected vertices (pixel x, pixel y, depth), e.g. from `project_vertices`.
        faces: int32 (3F,) vertex indices. width, height: image size; radius: blur radius in pixels.
        near, far: a triangle with a vertex depth outside [near, far] is culled (no clipping), as is one
            with zero screen area.

    Returns:
        (offsets int32 (T,), counts int32 (T,), triangles int32 (max(M, 1),)), T = tiles_x * tiles_y tiles
        row-major (tiles_x = ceil(width / tile_size)); tile t lists triangles[offsets[t]:offsets[t] +
        counts[t]], every triangle whose screen bbox grown by `radius` touches a pixel of the tile, in
        arbitrary order. Cost is O(F + M), M = sum(counts). Reads the total M back to the host once.
    """
    dev = screen.device
    tiles_x = -(-width // tile_size)
    n_tiles = tiles_x * -(-height // tile_size)
    n_faces = faces.shape[0] // 3
    args = [screen, faces, float(radius), float(near), float(far), width, height, tile_size, tiles_x]
    # one extra slot so the exclusive scan also yields the total
    counts = wp.zeros(n_tiles + 1, dtype=wp.int32, device=dev)
    wp.launch(count_tiles_kernel, dim=n_faces, inputs=args, outputs=[counts], device=dev, record_tape=False)
    offsets = wp.zeros(n_tiles + 1, dtype=wp.int32, device=dev)
    wp.utils.array_scan(counts, offsets, inclusive=False)
    total = int(offsets[n_tiles:].numpy()[0])
    tile_tris = wp.zeros(max(total, 1), dtype=wp.int32, device=dev)
    cursor = wp.zeros(n_tiles, dtype=wp.int32, device=dev)
    wp.launch(fill_tiles_kernel, dim=n_faces, inputs=[*args, offsets, cursor], outputs=[tile_tris],
              device=dev, record_tape=False)
    return offsets[:n_tiles], counts[:n_tiles], tile_tris


def soft_rasterize(world: wp.array, faces: wp.array, vertex_colors: wp.array, intrinsics: wp.array,
                   pose: wp.array, width: int, height: int, sigma: float, gamma: float, background: wp.array,
                   near: float = 0.05, far: float = 100.0, *, tile_size: int = TILE_SIZE):
    """Soft-rasterized image of a triangle mesh with per-vertex colors, composited over a background color.

    Args:
        world: wp.vec3 (V,) world-space vertex positions.
        faces: int32 (3F,) vertex indices (each in [0, V); not checked). Both windings are rendered.
        vertex_colors: float32 array2d (V, 3).
        intrinsics: float32 (4,) [fx, fy, cx, cy] pixels; pose: float32 (7,) camera-to-world (any non-zero
            quaternion; normalized in the kernel).
        width, height: image size in pixels. sigma: > 0, width of the coverage falloff outside silhouettes
            in pixels^2. gamma: > 0, depth-softmax temperature. background: float32 (3,) color.
        near, far: 0 < near < far. A triangle with any vertex depth outside [near, far] is culled whole.
        tile_size: binning tile edge in pixels (a performance knob; the result does not depend on it).

    Returns:
        (color float32 array2d (N, 3), alpha float32 (N,)), N = height * width, row-major from the top.
        For pixel center p and each non-culled triangle j with d_j = screen distance from p to the triangle
        (0 when p is inside or on it):
            D_j = 1 inside, max(0, (1 + eps_D) 2 sigmoid(-d_j^2 / sigma) - eps_D) outside, eps_D = 1e-4
        (continuous with slope 0 at the edge; shifted by < eps_D so coverage reaches exactly 0 at
        r = sqrt(sigma ln(2 / eps_D + 1)) and the image stays continuous in the vertices). q_j = the
        triangle point closest to p (p when inside); its perspective-correct barycentrics interpolate
        vertex_colors (C_j) and view depth z_j; zn_j = (far - z_j) / (far - near), w_j = D_j exp(zn_j / gamma).
            alpha = 1 - prod_j (1 - D_j)   (exactly 1 where any triangle covers p),
            color = alpha * sum_j w_j C_j / sum_j w_j + (1 - alpha) * background   (background where
                    no triangle contributes),
        with the softmax exponents shifted by the pixel's max zn_j over contributing j for float32 range.
        Differentiable (recorded on a surrounding wp.Tape) w.r.t. world, vertex_colors, intrinsics, pose and
        background; silhouettes over the background carry gradients to the geometry and the camera through
        alpha. The binning and the exponent shift are launched with record_tape=False.
        Reads the binned fragment count back to the host once (not CUDA-graph capturable).
    """
    _check("world", world, wp.vec3, (None,))
    n_verts = world.shape[0]
    _check("faces", faces, wp.int32, (None,))
    if faces.shape[0] % 3 != 0:
        raise ValueError(f"faces: expected shape (3F,), got {tuple(faces.shape)} (not a multiple of 3)")
    _check("vertex_colors", vertex_colors, wp.float32, (n_verts, 3))
    _check("intrinsics", intrinsics, wp.float32, (4,))
    _check("pose", pose, wp.float32, (7,))
    _check("background", background, wp.float32, (3,))
    _check_positive_int("width", width)
    _check_positive_int("height", height)
    _check_positive_int("tile_size", tile_size)
    for name, v in (("sigma", sigma), ("gamma", gamma)):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: expected a finite float > 0, got {v!r}")
    if not (0 < near < far < math.inf):
        raise ValueError(f"near, far: expected 0 < near < far < inf, got near={near!r}, far={far!r}")
    dev = world.device
    for name, arr in (("faces", faces), ("vertex_colors", vertex_colors), ("intrinsics", intrinsics),
                      ("pose", pose), ("background", background)):
        if arr.device != dev:
            raise ValueError(f"{name}: expected an array on {dev} (the device of world), got {arr.device}")

    width, height, tile_size = int(width), int(height), int(tile_size)
    sigma, gamma, near, far = float(sigma), float(gamma), float(near), float(far)
    screen = project_vertices(world, intrinsics, pose)
    radius = coverage_radius(sigma)
    offsets, counts, tile_tris = bin_triangles(screen, faces, width, height, radius, near, far, tile_size)
    n = width * height
    tiles_x = -(-width // tile_size)
    zmax = wp.zeros(n, dtype=float, device=dev)
    wp.launch(depth_max_kernel, dim=n,
              inputs=[screen, faces, offsets, counts, tile_tris, width, tile_size, tiles_x, sigma, near, far],
              outputs=[zmax], device=dev, record_tape=False)
    grad = any(a.requires_grad for a in (world, vertex_colors, intrinsics, pose, background))
    sums = wp.zeros((n, 6), dtype=float, device=dev, requires_grad=grad)
    wp.launch(accumulate_kernel, dim=n,
              inputs=[screen, faces, vertex_colors, offsets, counts, tile_tris, zmax, width, tile_size,
                      tiles_x, sigma, gamma, near, far],
              outputs=[sums], device=dev)
    color = wp.zeros((n, 3), dtype=float, device=dev, requires_grad=grad)
    alpha = wp.zeros(n, dtype=float, device=dev, requires_grad=grad)
    wp.launch(resolve_kernel, dim=n, inputs=[sums, background], outputs=[color, alpha], device=dev)
    return color, alpha
