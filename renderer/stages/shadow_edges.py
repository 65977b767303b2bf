"""Shadow-edge stage: gradients through shadow boundaries (point and directional lights; area lights and
the environment in the path mode), by edge sampling.

A shadow ray is a 0/1 test, so an image with hard shadows is piecewise constant in whatever moves a
shadow boundary (the occluder's geometry, the light's position, the receiver, the camera); the shading
stage's gradient stops there. This stage adds the missing boundary term of the derivative of the
box-filtered (area-averaged) image, by edge sampling (Li, Aittala, Durand, Lehtinen 2018,
"Differentiable Monte Carlo Ray Tracing through Edge Sampling", as redner does for direct illumination),
specialised to point and directional lights.

For a point light at c (a directional light: c at infinity, `light_at`), the shadow boundaries on the
surfaces behind an occluder are the central projections from c of the occluder's silhouette edges as
seen from c: edges between a face whose front side faces c and one whose back does, and boundary edges
(no neighbour in `neighbors`). A point
e(s) = v0 + s (v1 - v0), s in [0, 1], of such an edge is projected from the light onto the first surface
behind it, the receiver point y(s) on face r, and y into the image: x(s) = pi(y(s)). With L the
radiance of the pixel p containing x with light j unshadowed minus shadowed (light j's term there:
BRDF x irradiance; the other terms are continuous across this boundary), the derivative of the pixel's
area average I_p w.r.t. any parameter theta is (Reynolds transport on the pixel's lit region)

    dI_p / dtheta = integral over the boundary curve in the pixel of  L (dx/dtheta . n) dl,

n the unit normal of the curve pointing into the shadow, pixels of unit area. With the curve
parametrized by s, (dx/dtheta . n) dl = sigma cross(dx/dtheta, dx/ds) ds, cross(a, b) = a0 b1 - a1 b0
and sigma = +1 when (dx/ds)_1, -(dx/ds)_0 points into the shadow, -1 otherwise. Each edge gets K
stratified jittered samples s_k = (k + u_k) / K, so d loss / d theta is estimated by

    sum over samples  sigma (dloss/dI_p . L) cross(dx/dtheta, dx/ds) / K,

which is unbiased for the box-filtered image. The side and the validity of a sample are decided
numerically: the receiver points seen at x +- h n (h = PROBE_PX pixels, on the receiver face's plane)
are tested with shadow rays to the light; exactly one of them must be lit (otherwise the edge casts no
visible shadow boundary there: it is inside another shadow, or grazes its own faces). A sample also
needs y visible from the camera (an unoccluded ray) and a pixel that sees a surface.

dx/dtheta is taken by Warp's autodiff of `boundary_kernel` (the closed-form chain: edge point ->
ray-plane intersection with the receiver face's plane -> pinhole projection), so theta is every
vertex of the edge and of the receiver face, the light's position, the intrinsics and the pose.

What is held constant (not differentiated): the choice of edges and samples, the receiver face, sigma,
dx/ds and the weights (L and the pixel's loss gradient), as in edge sampling. L is evaluated at y with
the shading normal and material of the pixel's own sample (the pixel-centre G-buffer); a pixel whose
centre sees another surface than y (a primary silhouette inside it) therefore gets L of that surface.
Not covered by this part: shadows seen through reflections, and the self-shadowing terminator of a
smooth surface (continuous there: max(0, n.l) reaches 0 where the shadow starts).

Area lights (emissive meshes) and the environment, path mode only (`record_area_boundary`, at the end):
the soft shadow's discontinuities lie inside the integral over directions at each surface point p the
camera sees, so the edges are sampled per pixel sample ("secondary edges" in Li et al.): an edge of any
mesh chosen uniformly, a point e(s) on it, omega(s) = normalize(e(s) - p); where the directions just
beside omega (PROBE_ANGLE either way) see different emitted radiance, the jump of the integrand
BRDF L_e cos times the boundary's normal velocity on the unit sphere, (d omega/d theta) . (omega x
d omega/ds), is added. The jump counts emitted radiance only (exact for direct light, max_depth 1; deeper
paths' indirect light on the two sides is not compared), p is held fixed (no receiver or camera
gradient), and uniform edge choice wastes most samples on edges that cast no boundary from p (variance,
not bias).
"""

from __future__ import annotations

import numpy as np
import warp as wp

from .. import memory
from ..checks import check_array as _check
from ..thread_tape import recording
from .antialias import face_neighbors
from .camera import camera_ray, pose_position, pose_rotation, project_point, read_intrinsics
from .pathtrace import (
    SceneArrays,
    emission_at,
    env_texel,
    env_value,
    face_normal_area,
    interp_normal,
    interp_uv,
    offset_origin,
    tri_vertex,
    vertex_color,
)
from .shading import (
    brdf,
    directional_light_direction,
    directional_light_irradiance,
    point_light_direction,
    point_light_irradiance,
    shade_point,
)
from .texture import sample_bilinear_level
from .visibility import ray_triangle

PROBE_PX = wp.constant(0.05)  # probe offset across the boundary, in pixels
PROBE_ANGLE = wp.constant(2.0e-4)  # area lights: probe offset across the boundary, in radians
RAY_EPS = wp.constant(1.0e-4)  # ray offsets relative to 1 + max|p| (as the shading stage's shadow rays)
FAR = wp.constant(1.0e20)
MAX_SKIP = 4  # faces of the edge itself skipped along the ray past the edge
AREA_SLOTS = 1 << 20  # area-light samples per launch (~44 MB of sample arrays)


@wp.func
def _cross2(a: wp.vec2, b: wp.vec2) -> float:
    return a[0] * b[1] - a[1] * b[0]


@wp.func
def _scale(p: wp.vec3) -> float:
    return 1.0 + wp.max(wp.abs(p[0]), wp.max(wp.abs(p[1]), wp.abs(p[2])))


@wp.func
def _vertex(world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), f: int, k: int) -> wp.vec3:
    return world[faces[3 * f + k]]


@wp.func
def light_at(point_position: wp.array(dtype=wp.vec3), dir_direction: wp.array(dtype=wp.vec3), j: int) -> wp.vec4:
    """Light j as a homogeneous point: (c, 1) for point light j, (-direction, 0) (a point at infinity) for
    directional light j - Lp (lights ordered as the shadow mask's columns)."""
    h = wp.vec4(0.0)
    lp = point_position.shape[0]
    if j < lp:
        c = point_position[j]
        h = wp.vec4(c[0], c[1], c[2], 1.0)
    else:
        d = dir_direction[j - lp]
        h = wp.vec4(-d[0], -d[1], -d[2], 0.0)
    return h


@wp.func
def toward_light(h: wp.vec4, p: wp.vec3) -> wp.vec3:
    """From p towards the light (unnormalized; its length is the distance for a point light)."""
    return wp.vec3(h[0], h[1], h[2]) - p * h[3]


@wp.func
def _faces_light(world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32), f: int, h: wp.vec4) -> bool:
    a = _vertex(world, faces, f, 0)
    n = wp.cross(_vertex(world, faces, f, 1) - a, _vertex(world, faces, f, 2) - a)
    return wp.dot(n, toward_light(h, a)) > 0.0


@wp.func
def receiver_point(h: wp.vec4, e: wp.vec3, r0: wp.vec3, r1: wp.vec3, r2: wp.vec3) -> wp.vec3:
    """Where the light's ray through e meets the plane of the triangle r0 r1 r2."""
    nr = wp.cross(r1 - r0, r2 - r0)
    d = -toward_light(h, e)
    return e + d * (wp.dot(nr, r0 - e) / wp.dot(nr, d))


@wp.func
def receiver_point_ds(h: wp.vec4, e: wp.vec3, de: wp.vec3, r0: wp.vec3, r1: wp.vec3, r2: wp.vec3) -> wp.vec3:
    """d receiver_point / ds for an edge point moving at de per unit s."""
    nr = wp.cross(r1 - r0, r2 - r0)
    d = -toward_light(h, e)
    dd = de * h[3]
    nd = wp.dot(nr, d)
    tau = wp.dot(nr, r0 - e) / nd
    return de + dd * tau - d * ((wp.dot(nr, de) + tau * wp.dot(nr, dd)) / nd)


@wp.func
def project_ds(intr: wp.vec4, pos: wp.vec3, rot: wp.quat, p: wp.vec3, dp: wp.vec3) -> wp.vec2:
    """Directional derivative of `camera.project_point`'s pixel position at p along dp."""
    q = wp.quat_rotate_inv(rot, p - pos)
    dq = wp.quat_rotate_inv(rot, dp)
    z = -q[2]
    dz = -dq[2]
    return wp.vec2(intr[0] * (dq[0] * z - q[0] * dz) / (z * z), -intr[1] * (dq[1] * z - q[1] * dz) / (z * z))


@wp.func
def _plane_point(intr: wp.vec4, pos: wp.vec3, rot: wp.quat, x: wp.vec2, r0: wp.vec3, nr: wp.vec3) -> wp.vec3:
    """The point of the plane (r0, nr) seen at image position x."""
    d = camera_ray(intr, pos, rot, x[0], x[1])
    return pos + d * (wp.dot(nr, r0 - pos) / wp.dot(nr, d))


@wp.func
def _lit(bvh: wp.uint64, p: wp.vec3, nr: wp.vec3, h: wp.vec4) -> bool:
    side = wp.where(wp.dot(nr, toward_light(h, p)) < 0.0, -1.0, 1.0)
    o = p + wp.normalize(nr) * (side * RAY_EPS * _scale(p))
    d = toward_light(h, o)
    max_t = wp.where(h[3] > 0.0, wp.length(d), FAR)
    return not wp.mesh_query_ray_anyhit(bvh, o, wp.normalize(d), max_t)


@wp.kernel(enable_backward=False)
def silhouette_kernel(world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                      neighbors: wp.array(dtype=wp.int32), point_position: wp.array(dtype=wp.vec3),
                      dir_direction: wp.array(dtype=wp.vec3), count: wp.array(dtype=wp.int32),
                      edges: wp.array(dtype=wp.int32)):
    # one thread per (light j, half-edge h): list j * 3F + h if it is a silhouette edge from light j
    j, h = wp.tid()
    f = h // 3
    nb = neighbors[h]
    if nb >= 0 and nb < f:  # an interior edge is handled once, by its lower-numbered face
        return
    c = light_at(point_position, dir_direction, j)
    if nb >= 0 and _faces_light(world, faces, f, c) == _faces_light(world, faces, nb, c):
        return  # not a silhouette from the light
    edges[wp.atomic_add(count, 0, 1)] = j * faces.shape[0] + h


@wp.kernel(enable_backward=False)
def find_kernel(bvh: wp.uint64, world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                neighbors: wp.array(dtype=wp.int32), tri_id: wp.array(dtype=wp.int32),
                point_position: wp.array(dtype=wp.vec3), dir_direction: wp.array(dtype=wp.vec3),
                intrinsics: wp.array(dtype=float), pose: wp.array(dtype=float), width: int, height: int,
                first_row: int, edges: wp.array(dtype=wp.int32),
                samples: int, seed: int,
                pixel: wp.array(dtype=wp.int32), receiver: wp.array(dtype=wp.int32),
                s_out: wp.array(dtype=float), sign: wp.array(dtype=float), tangent: wp.array(dtype=wp.vec2),
                point: wp.array(dtype=wp.vec3)):
    # one thread per (listed edge i, sample k); slot = i * samples + k
    i, k = wp.tid()
    slot = i * samples + k
    pixel[slot] = -1
    edge = edges[i]
    j = edge // faces.shape[0]
    h = edge % faces.shape[0]
    f = h // 3
    nb = neighbors[h]
    c = light_at(point_position, dir_direction, j)
    v0 = world[faces[h]]
    v1 = world[faces[3 * f + (h % 3 + 1) % 3]]
    state = wp.rand_init(seed, edge * samples + k)  # keyed by the edge: the list's order does not matter
    s = (float(k) + wp.randf(state)) / float(samples)
    e = v0 + (v1 - v0) * s
    dn = wp.normalize(-toward_light(c, e))
    delta = RAY_EPS * _scale(e)
    o = e + dn * delta
    fr = int(-1)
    for _i in range(MAX_SKIP):
        q = wp.mesh_query_ray(bvh, o, dn, FAR)
        if not q.result:
            return
        if q.face != f and q.face != nb:
            fr = q.face
            break
        o = o + dn * (q.t + delta)
    if fr < 0:
        return
    r0 = _vertex(world, faces, fr, 0)
    r1 = _vertex(world, faces, fr, 1)
    r2 = _vertex(world, faces, fr, 2)
    nr = wp.cross(r1 - r0, r2 - r0)
    if wp.abs(wp.dot(wp.normalize(nr), dn)) < 1.0e-4:  # the ray grazes the receiver's plane
        return
    y = receiver_point(c, e, r0, r1, r2)
    intr = read_intrinsics(intrinsics)
    pos = pose_position(pose)
    rot = pose_rotation(pose)
    xp = project_point(intr, pos, rot, y)
    # image rows [first_row, first_row + height): the band the pixel buffers hold
    if xp[2] <= 0.0 or xp[0] < 0.0 or xp[1] < float(first_row) or xp[0] >= float(width) or (
            xp[1] >= float(first_row + height)):
        return
    p = (int(xp[1]) - first_row) * width + int(xp[0])
    if tri_id[p] < 0:
        return
    to_y = y - pos
    dist = wp.length(to_y)
    if wp.mesh_query_ray_anyhit(bvh, pos, to_y / dist, dist * (1.0 - 1.0e-4)):
        return  # the camera does not see y
    t = project_ds(intr, pos, rot, y, receiver_point_ds(c, e, v1 - v0, r0, r1, r2))
    tl = wp.length(t)
    if tl <= 0.0:
        return
    n = wp.vec2(t[1], -t[0]) / tl
    x = wp.vec2(xp[0], xp[1])
    lit_plus = _lit(bvh, _plane_point(intr, pos, rot, x + n * PROBE_PX, r0, nr), nr, c)
    lit_minus = _lit(bvh, _plane_point(intr, pos, rot, x - n * PROBE_PX, r0, nr), nr, c)
    if lit_plus == lit_minus:
        return
    pixel[slot] = p
    receiver[slot] = fr
    s_out[slot] = s
    sign[slot] = wp.where(lit_minus, 1.0, -1.0)
    tangent[slot] = t
    point[slot] = y


@wp.kernel(enable_backward=False)
def weight_kernel(pixel: wp.array(dtype=wp.int32), sign: wp.array(dtype=float), point: wp.array(dtype=wp.vec3),
                  edges: wp.array(dtype=wp.int32), num_half_edges: int, samples: int,
                  grad_image: wp.array2d(dtype=float),
                  normals: wp.array2d(dtype=float), albedo: wp.array2d(dtype=float),
                  roughness: wp.array2d(dtype=float), metallic: wp.array2d(dtype=float),
                  model: wp.array(dtype=wp.int32), pose: wp.array(dtype=float),
                  point_position: wp.array(dtype=wp.vec3), point_color: wp.array(dtype=wp.vec3),
                  point_intensity: wp.array(dtype=float), dir_direction: wp.array(dtype=wp.vec3),
                  dir_color: wp.array(dtype=wp.vec3), dir_intensity: wp.array(dtype=float),
                  weight: wp.array(dtype=float)):
    """weight = sigma (dloss/dI_p . L) / K, L light j's unshadowed term at y with pixel p's G-buffer."""
    slot = wp.tid()
    weight[slot] = 0.0
    p = pixel[slot]
    if p < 0:
        return
    m = int(model[p])
    if m < 0:
        return
    j = edges[slot // samples] // num_half_edges
    y = point[slot]
    n = wp.normalize(wp.vec3(normals[p, 0], normals[p, 1], normals[p, 2]))
    v = wp.normalize(pose_position(pose) - y)
    lp = point_position.shape[0]
    e = wp.vec3(0.0)
    l = wp.vec3(0.0)
    if j < lp:
        e = point_light_irradiance(y, n, point_position[j], point_color[j], point_intensity[j])
        l = point_light_direction(y, point_position[j])
    else:
        e = directional_light_irradiance(n, dir_direction[j - lp], dir_color[j - lp], dir_intensity[j - lp])
        l = directional_light_direction(dir_direction[j - lp])
    a = wp.vec3(albedo[p, 0], albedo[p, 1], albedo[p, 2])
    radiance = shade_point(n, v, l, e, a, roughness[p, 0], metallic[p, 0], m)
    g = wp.vec3(grad_image[p, 0], grad_image[p, 1], grad_image[p, 2])
    weight[slot] = sign[slot] * wp.dot(g, radiance) / float(samples)


@wp.kernel(enable_backward=False)
def path_weight_kernel(sc: SceneArrays, pixel: wp.array(dtype=wp.int32), receiver: wp.array(dtype=wp.int32),
                       sign: wp.array(dtype=float), point: wp.array(dtype=wp.vec3), edges: wp.array(dtype=wp.int32),
                       num_half_edges: int, samples: int, grad_image: wp.array2d(dtype=float),
                       pose: wp.array(dtype=float),
                       weight: wp.array(dtype=float)):
    """weight = sigma (dloss/dI_p . L) / K for the path mode: L is the path tracer's next-event estimate of
    light j at the camera ray's hit y on face r (`pathtrace.trace_path` at depth 0: two-sided normals,
    the material sampled at y's uv, vertex colors)."""
    slot = wp.tid()
    weight[slot] = 0.0
    p = pixel[slot]
    if p < 0:
        return
    f = receiver[slot]
    mat = sc.face_material[f]
    model = sc.material_model[mat]
    if model < 0:
        return
    y = point[slot]
    p0 = sc.world[tri_vertex(sc, f, 0)]
    e1 = sc.world[tri_vertex(sc, f, 1)] - p0
    e2 = sc.world[tri_vertex(sc, f, 2)] - p0
    r = y - p0
    d11 = wp.dot(e1, e1)
    d12 = wp.dot(e1, e2)
    d22 = wp.dot(e2, e2)
    det = d11 * d22 - d12 * d12
    if det <= 0.0:
        return
    b1 = (d22 * wp.dot(r, e1) - d12 * wp.dot(r, e2)) / det
    b2 = (d11 * wp.dot(r, e2) - d12 * wp.dot(r, e1)) / det
    na = face_normal_area(sc, f)
    ng = wp.vec3(na[0], na[1], na[2])
    wo = wp.normalize(pose_position(pose) - y)
    if wp.dot(ng, wo) < 0.0:
        ng = -ng
    n = interp_normal(sc, f, b1, b2)
    if wp.length(n) < 1.0e-12:
        n = ng
    n = wp.normalize(n)
    if wp.dot(n, ng) < 0.0:
        n = -n
    j = edges[slot // samples] // num_half_edges
    lp = sc.point_position.shape[0]
    l = wp.vec3(0.0)
    geo = float(0.0)
    color = wp.vec3(0.0)
    if j < lp:
        to = sc.point_position[j] - y
        d2 = wp.max(wp.dot(to, to), 1.0e-12)
        l = to / wp.sqrt(d2)
        geo = sc.point_intensity[j] / d2
        color = sc.point_color[j]
    else:
        l = -wp.normalize(sc.dir_direction[j - lp])
        geo = sc.dir_intensity[j - lp]
        color = sc.dir_color[j - lp]
    cos_l = wp.dot(n, l)
    if cos_l <= 0.0 or wp.dot(ng, l) <= 0.0:
        return
    uv = interp_uv(sc, f, b1, b2)
    albedo = wp.cw_mul(sample_bilinear_level(sc.albedo, sc.albedo_table, mat, 0, uv[0], uv[1]),
                       vertex_color(sc, f, b1, b2))
    rough = sample_bilinear_level(sc.roughness, sc.roughness_table, mat, 0, uv[0], uv[1])[0]
    metal = sample_bilinear_level(sc.metallic, sc.metallic_table, mat, 0, uv[0], uv[1])[0]
    e = color * (geo * cos_l)
    radiance = wp.cw_mul(brdf(n, wo, l, albedo, rough, metal, model), e)
    g = wp.vec3(grad_image[p, 0], grad_image[p, 1], grad_image[p, 2])
    weight[slot] = sign[slot] * wp.dot(g, radiance) / float(samples)


@wp.kernel
def boundary_kernel(world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                    point_position: wp.array(dtype=wp.vec3), dir_direction: wp.array(dtype=wp.vec3),
                    intrinsics: wp.array(dtype=float),
                    pose: wp.array(dtype=float), edges: wp.array(dtype=wp.int32), num_half_edges: int, samples: int,
                    pixel: wp.array(dtype=wp.int32), receiver: wp.array(dtype=wp.int32),
                    s_in: wp.array(dtype=float), tangent: wp.array(dtype=wp.vec2), weight: wp.array(dtype=float),
                    out: wp.array(dtype=float)):
    """out = weight cross(x(theta), dx/ds): its adjoint with d out = 1 is the boundary term's gradient."""
    slot = wp.tid()
    if pixel[slot] < 0:
        return
    w = weight[slot]
    if w == 0.0:
        return
    j = edges[slot // samples] // num_half_edges
    h = edges[slot // samples] % num_half_edges
    f = h // 3
    v0 = world[faces[h]]
    v1 = world[faces[3 * f + (h % 3 + 1) % 3]]
    e = v0 + (v1 - v0) * s_in[slot]
    fr = receiver[slot]
    y = receiver_point(light_at(point_position, dir_direction, j), e, _vertex(world, faces, fr, 0),
                       _vertex(world, faces, fr, 1), _vertex(world, faces, fr, 2))
    xp = project_point(read_intrinsics(intrinsics), pose_position(pose), pose_rotation(pose), y)
    out[slot] = w * _cross2(wp.vec2(xp[0], xp[1]), tangent[slot])


def welded_neighbors(vertices: list[np.ndarray], faces: np.ndarray) -> np.ndarray:
    """Face adjacency for the silhouette test, with each mesh's vertices welded by position.

    Meshes split at creases (a cube's 24 vertices) have boundary edges there by index; a shadow edge
    must see the two faces of a crease as neighbours, or it would count the crease twice (once per side)
    and take every crease for a silhouette. Args: `vertices`, one (V_m, 3) array per mesh in packing
    order (vertex offsets follow their lengths); `faces` (F, 3) packed vertex indices. Returns int32 (3F,)
    as `antialias.face_neighbors` does, for the welded indices. Positions are compared exactly (the
    split copies of a vertex are equal); the welding is done once, so it is the topology at load."""
    canon, offset = [], 0
    for v in vertices:
        v = np.asarray(v, np.float32).reshape(-1, 3)
        _, first, inverse = np.unique(v, axis=0, return_index=True, return_inverse=True)
        canon.append(first[inverse.reshape(-1)] + offset)
        offset += len(v)
    index = np.concatenate(canon) if canon else np.zeros(0, np.int64)
    f = np.asarray(faces).reshape(-1, 3)
    return face_neighbors(index[f] if f.size else f).reshape(-1)


class EdgeSamples:
    """The discrete half: the samples on the lights' silhouette edges that land on a visible shadow boundary
    (`find`). `edges` (E,) lists the silhouette edges as j * 3F + h (light j, half-edge h); the other
    arrays are per slot i * K + k, (E * K,); pixel -1 marks an unused slot."""

    def __init__(self, edges, pixel, receiver, s, sign, tangent, point, samples: int, num_half_edges: int):
        self.edges = edges
        self.pixel, self.receiver, self.s, self.sign = pixel, receiver, s, sign
        self.tangent, self.point = tangent, point
        self.samples = samples
        self.num_half_edges = num_half_edges

    def count(self) -> int:
        """Samples on a visible boundary (a host read)."""
        return int((self.pixel.numpy() >= 0).sum())


def find(bvh_id, world: wp.array, faces: wp.array, neighbors: wp.array, tri_id: wp.array,
         point_position: wp.array, dir_direction: wp.array, intrinsics: wp.array, pose: wp.array, width: int,
         height: int, *, samples: int, seed: int = 0, first_row: int = 0) -> EdgeSamples:
    """Sample the silhouette edges of the mesh `bvh_id` as seen from each light (see the module).

    Args:
        bvh_id: the `wp.Mesh.id` (wp.uint64) of the scene's BVH over `world`.
        world: wp.vec3 (V,) world positions; faces: int32 (3F,); neighbors: int32 (3F,)
            (`welded_neighbors`, or `antialias.face_neighbors(faces).ravel()` for meshes not split at creases).
        tri_id: int32 (N,) the primary visibility, N = width * height (-1 background).
        point_position: wp.vec3 (Lp,); dir_direction: wp.vec3 (Ld,) the directions directional lights
            travel (lights j < Lp are point lights, the others directional); intrinsics float32 (4,);
            pose float32 (7,).
        samples: K samples per edge (stratified, jittered by `seed`).
        first_row: the pixel buffers (tri_id) hold image rows [first_row, first_row + height) (a band,
            `camera`); samples that land outside them are dropped.

    Not differentiable (launched off the tape)."""
    _check("world", world, wp.vec3, (None,))
    dev = world.device
    _check("faces", faces, wp.int32, (None,), dev)
    nh = faces.shape[0]
    _check("neighbors", neighbors, wp.int32, (nh,), dev)
    _check("tri_id", tri_id, wp.int32, (width * height,), dev)
    _check("point_position", point_position, wp.vec3, (None,), dev)
    _check("dir_direction", dir_direction, wp.vec3, (None,), dev)
    _check("intrinsics", intrinsics, wp.float32, (4,), dev)
    _check("pose", pose, wp.float32, (7,), dev)
    if isinstance(bvh_id, wp.Mesh):
        raise TypeError("bvh_id: expected the mesh id (wp.Mesh.id, a wp.uint64), got the wp.Mesh itself")
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples: expected a positive int, got {samples!r}")
    nl = point_position.shape[0] + dir_direction.shape[0]
    edges = wp.empty(nl * nh, dtype=wp.int32, device=dev)
    count = wp.zeros(1, dtype=wp.int32, device=dev)
    if nl * nh > 0:
        wp.launch(silhouette_kernel, dim=(nl, nh), device=dev, record_tape=False,
                  inputs=[world, faces, neighbors, point_position, dir_direction], outputs=[count, edges])
    ne = int(count.numpy()[0])
    edges = edges[:ne]
    m = ne * samples
    memory.require(48 * m, f"the {ne} x {samples} shadow-edge samples")
    pixel = wp.full(m, -1, dtype=wp.int32, device=dev)
    receiver = wp.zeros(m, dtype=wp.int32, device=dev)
    s = wp.zeros(m, dtype=float, device=dev)
    sign = wp.zeros(m, dtype=float, device=dev)
    tangent = wp.zeros(m, dtype=wp.vec2, device=dev)
    point = wp.zeros(m, dtype=wp.vec3, device=dev)
    if m > 0:
        wp.launch(find_kernel, dim=(ne, samples), device=dev, record_tape=False,
                  inputs=[bvh_id, world, faces, neighbors, tri_id, point_position, dir_direction, intrinsics, pose,
                          int(width), int(height), int(first_row), edges, int(samples), int(seed)],
                  outputs=[pixel, receiver, s, sign, tangent, point])
    return EdgeSamples(edges, pixel, receiver, s, sign, tangent, point, int(samples), nh)


def accumulate(es: EdgeSamples, weight: wp.array, world: wp.array, faces: wp.array, point_position: wp.array,
               dir_direction: wp.array, intrinsics: wp.array, pose: wp.array) -> None:
    """Add the boundary term sum_slots weight cross(dx/dtheta, dx/ds) into the .grad of those of `world`,
    `point_position`, `dir_direction`, `intrinsics` and `pose` that require grad (the adjoint of
    `boundary_kernel`)."""
    m = es.pixel.shape[0]
    inputs = [world, point_position, dir_direction, intrinsics, pose]
    if m == 0 or not any(a.requires_grad for a in inputs):
        return
    dev = world.device
    out = wp.zeros(m, dtype=float, device=dev, requires_grad=True)
    local = wp.Tape()
    with recording(local):
        wp.launch(boundary_kernel, dim=m, device=dev,
                  inputs=[world, faces, point_position, dir_direction, intrinsics, pose, es.edges, es.num_half_edges,
                          es.samples,
                          es.pixel, es.receiver, es.s, es.tangent, weight],
                  outputs=[out])
    with recording(None):
        local.backward(grads={out: wp.ones(m, dtype=float, device=dev)})


def shading_weights(es: EdgeSamples, grad_image: wp.array, normals: wp.array, albedo: wp.array,
                    roughness: wp.array, metallic: wp.array, model: wp.array, pose: wp.array, lights) -> wp.array:
    """Per-slot weights sigma (dloss/dI_p . L) / K for the rasterized modes: L is light j's term of the
    shading stage (`shading.shade_point` x `point_light_irradiance`) at y with pixel p's G-buffer
    (normals, albedo (N, 3), roughness, metallic (N, 1), model (N,)); `grad_image` (N, 3) is the
    loss's adjoint of the image."""
    m = es.pixel.shape[0]
    weight = wp.zeros(m, dtype=float, device=grad_image.device)
    if m > 0:
        wp.launch(weight_kernel, dim=m, device=grad_image.device, record_tape=False,
                  inputs=[es.pixel, es.sign, es.point, es.edges, es.num_half_edges, es.samples, grad_image, normals,
                          albedo, roughness, metallic, model, pose, lights.point_position, lights.point_color,
                          lights.point_intensity, lights.dir_direction, lights.dir_color, lights.dir_intensity],
                  outputs=[weight])
    return weight


def record_shading_boundary(tape, image: wp.array, bvh_id, world: wp.array, faces: wp.array, neighbors: wp.array,
                            tri_id: wp.array, normals: wp.array, albedo: wp.array, roughness: wp.array,
                            metallic: wp.array, model: wp.array, lights, intrinsics: wp.array, pose: wp.array,
                            width: int, height: int, *, samples: int, seed: int = 0, first_row: int = 0) -> bool:
    """Hook of the rasterized modes: record on `tape` a backward step that adds the point and directional
    lights' shadow-boundary term (see the module) to the gradients of `world`, the lights' positions and
    directions, `intrinsics` and `pose`, reading `image.grad` (N, 3) when the tape runs backward. The
    G-buffer arrays are those the image was shaded from. Returns whether anything was recorded (nothing
    when no light, no sample or none of those arrays requires grad). `first_row`: the image's first row when it
    is a band of rows (`camera`)."""
    targets = [a for a in (world, lights.point_position, lights.dir_direction, intrinsics, pose)
               if a.requires_grad and a.size > 0]
    if tape is None or samples <= 0 or lights.count == 0 or not targets or not image.requires_grad:
        return False

    def backward():
        with recording(None):
            es = find(bvh_id, world, faces, neighbors, tri_id, lights.point_position, lights.dir_direction,
                      intrinsics, pose, width, height, samples=samples, seed=seed, first_row=first_row)
            weight = shading_weights(es, image.grad, normals, albedo, roughness, metallic, model, pose, lights)
        accumulate(es, weight, world, faces, lights.point_position, lights.dir_direction, intrinsics, pose)

    tape.record_func(backward, [image, *targets])
    return True


def record_path_boundary(tape, image: wp.array, scene, neighbors: wp.array, tri_id: wp.array,
                         intrinsics: wp.array, pose: wp.array, width: int, height: int, *, samples: int,
                         seed: int = 0) -> bool:
    """Hook of the path mode (`pathtrace.render_path`'s image of the `PathScene` `scene`): record on `tape`
    a backward step adding the point and directional lights' shadow-boundary term of the directly seen
    surfaces (the next-event estimate at the camera ray's first hit) to the gradients of the scene's world
    positions (`scene.bvh.points`), the lights' positions and directions, `intrinsics` and `pose`. Shadows
    seen through reflections (deeper path vertices) are not covered; area lights: `record_area_boundary`.
    Returns whether anything was recorded."""
    lights, world = scene.lights, scene.bvh.points
    targets = [a for a in (world, lights.point_position, lights.dir_direction, intrinsics, pose)
               if a.requires_grad and a.size > 0]
    if tape is None or samples <= 0 or lights.count == 0 or not targets or not image.requires_grad:
        return False
    faces = scene.bvh.indices

    def backward():
        with recording(None):
            es = find(scene.bvh.id, world, faces, neighbors, tri_id, lights.point_position, lights.dir_direction,
                      intrinsics, pose, width, height, samples=samples, seed=seed)
            m = es.pixel.shape[0]
            weight = wp.zeros(m, dtype=float, device=world.device)
            if m > 0:
                wp.launch(path_weight_kernel, dim=m, device=world.device, record_tape=False,
                          inputs=[scene.arrays(), es.pixel, es.receiver, es.sign, es.point, es.edges,
                                  es.num_half_edges, es.samples, image.grad, pose],
                          outputs=[weight])
        accumulate(es, weight, world, faces, lights.point_position, lights.dir_direction, intrinsics, pose)

    tape.record_func(backward, [image, *targets])
    return True


# ---------------------------------------------------------------------------------------------------
# Area lights and the environment in the path mode: edges seen from the surface point (secondary edges)


@wp.func
def _radiance_from(sc: SceneArrays, o: wp.vec3, d: wp.vec3) -> wp.vec3:
    """Emitted radiance arriving at o from unit direction d: the first hit's one-sided emission, or the
    environment's on a miss (what the path mode's direct light integrates)."""
    le = wp.vec3(0.0)
    q = wp.mesh_query_ray(sc.bvh, o, d, FAR)
    if q.result:
        f = q.face
        p0 = sc.world[tri_vertex(sc, f, 0)]
        bt = ray_triangle(o, d, p0, sc.world[tri_vertex(sc, f, 1)], sc.world[tri_vertex(sc, f, 2)])
        na = face_normal_area(sc, f)
        if na[0] * d[0] + na[1] * d[1] + na[2] * d[2] < 0.0:
            le = emission_at(sc, sc.face_material[f], interp_uv(sc, f, bt[0], bt[1]))
    elif sc.env.shape[0] > 0:
        le = env_value(sc.env, env_texel(sc.env, d))
    return le


@wp.kernel(enable_backward=False)
def area_find_kernel(sc: SceneArrays, neighbors: wp.array(dtype=wp.int32), edge_list: wp.array(dtype=wp.int32),
                     intrinsics: wp.array(dtype=float), pose: wp.array(dtype=float), width: int, pixel0: int,
                     samples: int, seed: int, grad_image: wp.array2d(dtype=float), edge: wp.array(dtype=wp.int32),
                     s_out: wp.array(dtype=float), origin: wp.array(dtype=wp.vec3), normal: wp.array(dtype=wp.vec3),
                     weight: wp.array(dtype=float)):
    # one thread per (pixel i, sample k): a jittered camera ray's first hit p, one edge chosen uniformly from
    # the list and a point on it; weight (dloss/dI_i . (g- - g+)) E / K where g = f L_e cos is the direct-light
    # integrand on either side of the boundary the edge casts in p's sphere of directions
    c, k = wp.tid()
    i = pixel0 + c
    slot = c * samples + k
    weight[slot] = 0.0
    edge[slot] = -1
    state = wp.rand_init(seed, i * samples + k)
    intr = read_intrinsics(intrinsics)
    pos = pose_position(pose)
    d = wp.normalize(camera_ray(intr, pos, pose_rotation(pose), float(i % width) + wp.randf(state),
                                float(i // width) + wp.randf(state)))
    q = wp.mesh_query_ray(sc.bvh, pos, d, FAR)
    if not q.result:
        return
    f = q.face
    mat = sc.face_material[f]
    model = sc.material_model[mat]
    if model < 0:
        return
    p0 = sc.world[tri_vertex(sc, f, 0)]
    bt = ray_triangle(pos, d, p0, sc.world[tri_vertex(sc, f, 1)], sc.world[tri_vertex(sc, f, 2)])
    p = pos + d * bt[2]
    wo = -d
    na = face_normal_area(sc, f)
    ng = wp.vec3(na[0], na[1], na[2])
    if wp.dot(ng, wo) < 0.0:
        ng = -ng
    n = interp_normal(sc, f, bt[0], bt[1])
    if wp.length(n) < 1.0e-12:
        n = ng
    n = wp.normalize(n)
    if wp.dot(n, ng) < 0.0:
        n = -n
    ne = edge_list.shape[0]
    h = edge_list[wp.min(int(wp.randf(state) * float(ne)), ne - 1)]
    fe = h // 3
    nb = neighbors[h]
    hp = wp.vec4(p[0], p[1], p[2], 1.0)  # p seen as a point light: faces that face p
    if nb >= 0 and _faces_light(sc.world, sc.faces, fe, hp) == _faces_light(sc.world, sc.faces, nb, hp):
        return  # not a silhouette seen from p
    v0 = sc.world[sc.faces[h]]
    v1 = sc.world[sc.faces[3 * fe + (h % 3 + 1) % 3]]
    s = wp.randf(state)
    # directions are taken from the shadow rays' origin (lifted off the surface): taken from p, the
    # boundary would sit up to ~RAY_EPS / distance off the probes' centre, and probes would miss it
    o = offset_origin(p, ng, ng)
    r = v0 + (v1 - v0) * s - o
    dist = wp.length(r)
    if dist <= 0.0:
        return
    w = r / dist
    dw = ((v1 - v0) - w * wp.dot(w, v1 - v0)) / dist
    m = wp.cross(w, dw)
    ml = wp.length(m)
    if ml <= 0.0:
        return
    w_plus = wp.normalize(w + m * (PROBE_ANGLE / ml))
    w_minus = wp.normalize(w - m * (PROBE_ANGLE / ml))
    if wp.dot(ng, w_plus) <= 0.0 or wp.dot(ng, w_minus) <= 0.0:
        return
    cos_plus = wp.dot(n, w_plus)
    cos_minus = wp.dot(n, w_minus)
    if cos_plus <= 0.0 or cos_minus <= 0.0:
        return
    le_plus = _radiance_from(sc, o, w_plus)
    le_minus = _radiance_from(sc, o, w_minus)
    if le_plus == le_minus:
        return
    uv = interp_uv(sc, f, bt[0], bt[1])
    albedo = wp.cw_mul(sample_bilinear_level(sc.albedo, sc.albedo_table, mat, 0, uv[0], uv[1]),
                       vertex_color(sc, f, bt[0], bt[1]))
    rough = sample_bilinear_level(sc.roughness, sc.roughness_table, mat, 0, uv[0], uv[1])[0]
    metal = sample_bilinear_level(sc.metallic, sc.metallic_table, mat, 0, uv[0], uv[1])[0]
    g_plus = wp.cw_mul(brdf(n, wo, w_plus, albedo, rough, metal, model), le_plus) * cos_plus
    g_minus = wp.cw_mul(brdf(n, wo, w_minus, albedo, rough, metal, model), le_minus) * cos_minus
    g = wp.vec3(grad_image[i, 0], grad_image[i, 1], grad_image[i, 2])
    edge[slot] = h
    s_out[slot] = s
    origin[slot] = o
    normal[slot] = m
    weight[slot] = wp.dot(g, g_minus - g_plus) * float(ne) / float(samples)


@wp.kernel
def area_boundary_kernel(world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                         edge: wp.array(dtype=wp.int32), s_in: wp.array(dtype=float),
                         origin: wp.array(dtype=wp.vec3), normal: wp.array(dtype=wp.vec3),
                         weight: wp.array(dtype=float), out: wp.array(dtype=float)):
    """out = weight (omega(theta) . m): its adjoint is weight (d omega/d theta . m), m = omega x d omega/ds."""
    slot = wp.tid()
    h = edge[slot]
    if h < 0:
        return
    f = h // 3
    v0 = world[faces[h]]
    v1 = world[faces[3 * f + (h % 3 + 1) % 3]]
    w = wp.normalize(v0 + (v1 - v0) * s_in[slot] - origin[slot])
    out[slot] = weight[slot] * wp.dot(w, normal[slot])


def record_area_boundary(tape, image: wp.array, scene, neighbors: wp.array, intrinsics: wp.array, pose: wp.array,
                         width: int, height: int, *, samples: int, seed: int = 0) -> bool:
    """Path mode, emissive meshes and the environment: record on `tape` a backward step adding the
    visibility-boundary term of the direct light at the surfaces the camera sees (edge sampling of the
    secondary edges, Li et al. 2018): per pixel, `samples` jittered camera rays to a surface point p, each
    with one edge chosen uniformly among all edges and a uniform point e(s) on it. The edge's image in p's
    sphere of directions, omega(s) = normalize(e(s) - p), is a boundary of the integrand
    g = BRDF L_e cos when the directions just beside it (PROBE_ANGLE either way along m = omega x d omega/ds)
    see different emitted radiance (an emitter's face, another face, the environment); the term is
    (g- - g+) (d omega/d theta . m) per unit s. Gradients reach the world positions (the occluders' and the
    emitters' edges); p is held fixed (the camera, the receiver's geometry: none). The jump counts emitted
    radiance only: exact for max_depth 1, without the indirect part of the jump deeper. Returns whether
    anything was recorded."""
    world = scene.bvh.points
    if (tape is None or samples <= 0 or not world.requires_grad or not image.requires_grad
            or (scene.light_faces.shape[0] == 0 and scene.env.shape[0] == 0)):
        return False
    faces = scene.bvh.indices
    nb = neighbors.numpy()
    f = np.arange(nb.size) // 3
    edge_list = wp.array(np.nonzero((nb < 0) | (f < nb))[0].astype(np.int32), dtype=wp.int32, device=world.device)
    if edge_list.shape[0] == 0:
        return False

    def backward():
        dev = world.device
        n = width * height
        chunk = max(1, AREA_SLOTS // samples)  # pixels per launch: bounded memory at any size and spp
        arrays = scene.arrays()
        for pixel0 in range(0, n, chunk):
            rows = min(chunk, n - pixel0)
            m = rows * samples
            edge = wp.empty(m, dtype=wp.int32, device=dev)
            s = wp.empty(m, dtype=float, device=dev)
            origin = wp.empty(m, dtype=wp.vec3, device=dev)
            normal = wp.empty(m, dtype=wp.vec3, device=dev)
            weight = wp.empty(m, dtype=float, device=dev)
            with recording(None):
                wp.launch(area_find_kernel, dim=(rows, samples), device=dev, record_tape=False,
                          inputs=[arrays, neighbors, edge_list, intrinsics, pose, int(width), pixel0, int(samples),
                                  int(seed), image.grad],
                          outputs=[edge, s, origin, normal, weight])
            out = wp.zeros(m, dtype=float, device=dev, requires_grad=True)
            local = wp.Tape()
            with recording(local):
                wp.launch(area_boundary_kernel, dim=m, device=dev,
                          inputs=[world, faces, edge, s, origin, normal, weight], outputs=[out])
            with recording(None):
                local.backward(grads={out: wp.ones(m, dtype=float, device=dev)})

    tape.record_func(backward, [image, world])
    return True
