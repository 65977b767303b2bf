"""Path-tracing stage: unidirectional Monte Carlo light transport over a triangle mesh, and its gradients
by path replay backpropagation.

Light transport. A camera ray per sample (through a uniformly jittered point of the pixel, or its center)
is traced through the wp.Mesh BVH. At each surface interaction the path adds
- the surface's emission (one-sided: emitted on the side the face's counter-clockwise normal points to),
- next-event estimation (NEE) to every point and every directional light (delta lights, no MIS), to one
  emissive triangle (chosen with probability proportional to area x mean emission luminance, a point
  uniform by area on it) and to the environment (a texel chosen with probability proportional to
  luminance x sin(theta), a direction uniform in its solid-angle cell),
and continues along a BSDF sample (Lambert: cosine-weighted; GGX: a mixture of the cosine lobe and the
GGX distribution of visible normals, Heitz 2018). Emitters and the environment reached by a BSDF sample
and by NEE are combined by multiple importance sampling with the power heuristic. Russian roulette
starts at depth `rr_depth`: continue with probability q = min(max_channel(throughput), 0.95).

Depth: `max_depth` counts scattering events. max_depth = 0 renders emitters and the environment seen
directly; max_depth = 1 adds direct lighting (the rasterized `shade` image without ambient light);
each further level adds one bounce of indirect light. (Mitsuba's max_depth is ours + 1.)

Materials are the shading stage's Lambert and GGX BRDFs (`shading.brdf`), both two-sided: at a hit the
geometric and shading normals are turned to the side the ray came from, and directions below the
geometric surface carry nothing. Material m's albedo, roughness, metallic and emission are texture m of
four `TexturePool`s (level 0, bilinear; a constant is a 1x1 texture); optional vertex colors multiply
the albedo, as in the rasterizer. Ambient light is not used (the environment plays its role).

Environment: an equirectangular (He, We, 3) float image, piecewise constant per texel. Direction
d = (sin t sin p, cos t, -sin t cos p) (+Y up, p = 0 looking down -Z) is texel column
floor(We (p / 2 pi + 1/2)), row floor(He t / pi) (row 0 at the zenith, the image convention).

Random numbers: `stages.sampler` at (seed, pixel, sample, dimension); dimensions 0-1 jitter the camera ray,
bounce k uses 2 + 12 k + (0 lobe choice, 1-2 direction, 3 emitter, 4-5 point on it, 6-7 environment,
8 roulette). The emitter and environment sampling tables are inputs (`PathScene`), built once, not
recomputed from the values being differentiated.

Gradients: path replay backpropagation (Vicini, Speierer and Jakob 2021). `render_path_backward`
re-traces every path with the same random numbers, starting from the path's radiance L (kept by the
forward pass when it records on a tape, one vec3 per sample; else traced once more first), subtracting
each contribution from L as it is met, so that at every vertex the radiance still to come is known and
the derivative of the BSDF-sample weight can be applied to it: d(L_rest)/d(theta) = L_rest *
(df/d(theta)) / f. Memory independent of the path length, time linear in it (no tape of the path). The
sampled directions, light and texel choices, MIS weights and Russian roulette are treated as constants
(detached sampling); visibility is not differentiated here (no gradients through silhouettes or shadow
boundaries, and none w.r.t. geometry or the camera). `render.render_view` adds, beside this adjoint, the
shadow-boundary term of point lights on directly seen surfaces (`stages.shadow_edges`, edge sampling),
which gives the occluders' geometry and the lights' positions that part of their gradient.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import warp as wp

from ..checks import check_array
from ..thread_tape import active_tape
from .camera import camera_ray, check_camera
from .sampler import sample_1d
from .shading import (
    ALPHA_MIN,
    INV_PI,
    MODEL_GGX,
    MODEL_LAMBERT,
    Lights,
    brdf,
    fresnel_schlick,
    ggx_distribution,
    smith_visibility,
)
from .texture import TexturePool, _bilinear_adjoint, sample_bilinear_level
from .visibility import ray_triangle

FAR = wp.constant(1.0e20)
RAY_EPS = wp.constant(1.0e-4)  # ray offset relative to 1 + max|p|, as the shading stage's shadow rays
RR_MAX = wp.constant(0.95)
DIMS_PER_BOUNCE = wp.constant(12)  # random dimensions one bounce may use (2 + depth * 12 + k)

# `want` bits of the adjoint: which gradients to accumulate
WANT_ALBEDO = 1
WANT_ROUGHNESS = 2
WANT_METALLIC = 4
WANT_EMISSION = 8
WANT_ENV = 16
WANT_POINT_COLOR = 32
WANT_POINT_INTENSITY = 64
WANT_POINT_POSITION = 128
WANT_DIR_COLOR = 256
WANT_DIR_INTENSITY = 512
WANT_DIR_DIRECTION = 1024
WANT_COLORS = 2048
_W_ALBEDO = wp.constant(WANT_ALBEDO)
_W_ROUGHNESS = wp.constant(WANT_ROUGHNESS)
_W_METALLIC = wp.constant(WANT_METALLIC)
_W_EMISSION = wp.constant(WANT_EMISSION)
_W_ENV = wp.constant(WANT_ENV)
_W_PCOLOR = wp.constant(WANT_POINT_COLOR)
_W_PINT = wp.constant(WANT_POINT_INTENSITY)
_W_PPOS = wp.constant(WANT_POINT_POSITION)
_W_DCOLOR = wp.constant(WANT_DIR_COLOR)
_W_DINT = wp.constant(WANT_DIR_INTENSITY)
_W_DDIR = wp.constant(WANT_DIR_DIRECTION)
_W_COLORS = wp.constant(WANT_COLORS)

vec5 = wp.types.vector(length=5, dtype=float)


@wp.struct
class SceneArrays:
    """The device view of a `PathScene` (one kernel argument)."""

    bvh: wp.uint64
    world: wp.array(dtype=wp.vec3)
    faces: wp.array(dtype=wp.int32)
    normals: wp.array2d(dtype=float)
    uvs: wp.array2d(dtype=float)
    colors: wp.array2d(dtype=float)
    face_material: wp.array(dtype=wp.int32)
    material_model: wp.array(dtype=wp.int32)
    albedo: wp.array(dtype=float)
    albedo_table: wp.array2d(dtype=wp.int32)
    roughness: wp.array(dtype=float)
    roughness_table: wp.array2d(dtype=wp.int32)
    metallic: wp.array(dtype=float)
    metallic_table: wp.array2d(dtype=wp.int32)
    emission: wp.array(dtype=float)
    emission_table: wp.array2d(dtype=wp.int32)
    point_position: wp.array(dtype=wp.vec3)
    point_color: wp.array(dtype=wp.vec3)
    point_intensity: wp.array(dtype=float)
    dir_direction: wp.array(dtype=wp.vec3)
    dir_color: wp.array(dtype=wp.vec3)
    dir_intensity: wp.array(dtype=float)
    env: wp.array3d(dtype=float)
    env_marginal: wp.array(dtype=float)
    env_conditional: wp.array(dtype=float)
    light_faces: wp.array(dtype=wp.int32)
    light_cdf: wp.array(dtype=float)
    face_light_pmf: wp.array(dtype=float)


@wp.struct
class GradArrays:
    """Where the adjoint accumulates (empty arrays for gradients not wanted)."""

    want: int
    albedo: wp.array(dtype=float)
    colors: wp.array2d(dtype=float)
    roughness: wp.array(dtype=float)
    metallic: wp.array(dtype=float)
    emission: wp.array(dtype=float)
    env: wp.array3d(dtype=float)
    point_position: wp.array(dtype=wp.vec3)
    point_color: wp.array(dtype=wp.vec3)
    point_intensity: wp.array(dtype=float)
    dir_direction: wp.array(dtype=wp.vec3)
    dir_color: wp.array(dtype=wp.vec3)
    dir_intensity: wp.array(dtype=float)


@wp.struct
class RenderSettings:
    intrinsics: wp.vec4
    position: wp.vec3
    rotation: wp.quat
    width: int
    spp: int
    first_sample: int  # sample indices first_sample .. first_sample + spp - 1 of the random sequence
    seed: int
    max_depth: int
    rr_depth: int
    jitter: int
    row0: int  # first image row of this launch (one set of rows per CPU thread)
    row_stride: int  # launch row r renders image row row0 + r * row_stride (rows interleaved between threads)


# ---------------------------------------------------------------------------------------------------
# Small device math


@wp.func
def _has(want: int, bit: int) -> bool:
    return (want & bit) != 0


@wp.func
def power_heuristic(a: float, b: float) -> float:
    a2 = a * a
    b2 = b * b
    return wp.where(a2 + b2 > 0.0, a2 / (a2 + b2), 0.0)


@wp.func
def luminance(c: wp.vec3) -> float:
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]


@wp.func
def safe_ratio(a: wp.vec3, b: wp.vec3) -> wp.vec3:
    """a / b per channel, 0 where b == 0."""
    return wp.vec3(wp.where(b[0] != 0.0, a[0] / b[0], 0.0), wp.where(b[1] != 0.0, a[1] / b[1], 0.0),
                   wp.where(b[2] != 0.0, a[2] / b[2], 0.0))


@wp.func
def to_world(n: wp.vec3, local: wp.vec3) -> wp.vec3:
    """Local (x, y, z) in an orthonormal frame whose z is the unit vector n (Duff et al. 2017)."""
    s = wp.where(n[2] >= 0.0, 1.0, -1.0)
    a = -1.0 / (s + n[2])
    b = n[0] * n[1] * a
    t = wp.vec3(1.0 + s * n[0] * n[0] * a, s * b, -s * n[0])
    bt = wp.vec3(b, s + n[1] * n[1] * a, -n[1])
    return t * local[0] + bt * local[1] + n * local[2]


@wp.func
def to_local(n: wp.vec3, w: wp.vec3) -> wp.vec3:
    s = wp.where(n[2] >= 0.0, 1.0, -1.0)
    a = -1.0 / (s + n[2])
    b = n[0] * n[1] * a
    t = wp.vec3(1.0 + s * n[0] * n[0] * a, s * b, -s * n[0])
    bt = wp.vec3(b, s + n[1] * n[1] * a, -n[1])
    return wp.vec3(wp.dot(t, w), wp.dot(bt, w), wp.dot(n, w))


@wp.func
def cosine_sample(u1: float, u2: float) -> wp.vec3:
    r = wp.sqrt(u1)
    phi = 2.0 * wp.pi * u2
    return wp.vec3(r * wp.cos(phi), r * wp.sin(phi), wp.sqrt(wp.max(1.0 - u1, 0.0)))


@wp.func
def ggx_vndf_sample(v: wp.vec3, alpha: float, u1: float, u2: float) -> wp.vec3:
    """A microfacet normal (local frame, z up) from the GGX distribution of normals visible from v
    (local, v.z > 0), by Heitz 2018 "Sampling the GGX distribution of visible normals"."""
    vh = wp.normalize(wp.vec3(alpha * v[0], alpha * v[1], v[2]))
    lensq = vh[0] * vh[0] + vh[1] * vh[1]
    t1 = wp.vec3(1.0, 0.0, 0.0)
    if lensq > 0.0:
        t1 = wp.vec3(-vh[1], vh[0], 0.0) / wp.sqrt(lensq)
    t2 = wp.cross(vh, t1)
    r = wp.sqrt(u1)
    phi = 2.0 * wp.pi * u2
    p1 = r * wp.cos(phi)
    p2 = r * wp.sin(phi)
    s = 0.5 * (1.0 + vh[2])
    p2 = (1.0 - s) * wp.sqrt(wp.max(1.0 - p1 * p1, 0.0)) + s * p2
    nh = t1 * p1 + t2 * p2 + vh * wp.sqrt(wp.max(1.0 - p1 * p1 - p2 * p2, 0.0))
    return wp.normalize(wp.vec3(alpha * nh[0], alpha * nh[1], wp.max(nh[2], 1.0e-6)))


@wp.func
def smith_g1(nv: float, alpha: float) -> float:
    a2 = alpha * alpha
    return 2.0 * nv / (nv + wp.sqrt(a2 + (1.0 - a2) * nv * nv))


@wp.func
def specular_probability(metallic: float) -> float:
    """Probability of sampling the GGX lobe rather than the cosine lobe (metals have no diffuse lobe)."""
    return 0.5 + 0.5 * wp.clamp(metallic, 0.0, 1.0)


@wp.func
def bsdf_pdf(n: wp.vec3, v: wp.vec3, l: wp.vec3, roughness: float, metallic: float, model: int) -> float:
    """Solid-angle density with which `bsdf_sample` produces l (unit vectors)."""
    nl = wp.dot(n, l)
    if nl <= 0.0:
        return 0.0
    p = nl * INV_PI
    if model == MODEL_GGX:
        nv = wp.dot(n, v)
        ps = specular_probability(metallic)
        spec = 0.0
        if nv > 0.0:
            alpha = wp.max(roughness * roughness, ALPHA_MIN)
            h = wp.normalize(l + v)
            # VNDF pdf of the reflected direction: G1(v) D(h) / (4 n.v)
            spec = smith_g1(nv, alpha) * ggx_distribution(wp.dot(n, h), alpha) / (4.0 * nv)
        p = ps * spec + (1.0 - ps) * p
    return p


@wp.func
def bsdf_sample(n: wp.vec3, v: wp.vec3, roughness: float, metallic: float, model: int, u0: float, u1: float,
                u2: float) -> wp.vec3:
    """A direction from the BSDF sampling mixture (unit; may point below the surface, then its pdf is 0)."""
    l = to_world(n, cosine_sample(u1, u2))
    if model == MODEL_GGX:
        if u0 < specular_probability(metallic):
            vl = to_local(n, v)
            if vl[2] > 0.0:
                alpha = wp.max(roughness * roughness, ALPHA_MIN)
                h = to_world(n, ggx_vndf_sample(vl, alpha, u1, u2))
                l = wp.normalize(2.0 * wp.dot(v, h) * h - v)
            else:
                l = -n  # no visible normals: a direction of zero pdf ends the path
    return l


@wp.func
def ggx_brdf_grad(n: wp.vec3, v: wp.vec3, l: wp.vec3, albedo: wp.vec3, roughness: float, metallic: float,
                  g: wp.vec3) -> vec5:
    """(dot(g, df/d albedo_c) per channel c, dot(g, df/d roughness), dot(g, df/d metallic)) of
    `shading.ggx_brdf`, derived by hand from its formulas (same clamps)."""
    r2 = roughness * roughness
    alpha = wp.max(r2, ALPHA_MIN)
    dalpha_dr = wp.where(r2 > ALPHA_MIN, 2.0 * roughness, 0.0)
    a2 = alpha * alpha
    h = wp.normalize(l + v)
    nl = wp.max(wp.dot(n, l), 0.0)
    nv = wp.max(wp.dot(n, v), 0.0)
    nh = wp.dot(n, h)
    vh = wp.max(wp.dot(v, h), 0.0)
    m = 1.0 - vh
    s5 = m * m * m * m * m
    f0 = wp.lerp(wp.vec3(0.04), albedo, metallic)
    f = fresnel_schlick(f0, vh)
    dist = ggx_distribution(nh, alpha)
    vis = smith_visibility(nl, nv, alpha)
    dv = dist * vis
    # d D / d a2 and d V / d a2 (dd written as in `ggx_distribution`, robust for tiny a2)
    nh2 = wp.min(nh * nh, 1.0)
    dd = (1.0 - nh2) + nh2 * a2
    d_dist = wp.where(nh > 0.0, (dd - 2.0 * a2 * nh * nh) / (wp.pi * dd * dd * dd), 0.0)
    sv = wp.sqrt(nv * nv * (1.0 - a2) + a2)
    sl = wp.sqrt(nl * nl * (1.0 - a2) + a2)
    ssum = nl * sv + nv * sl
    d_vis = 0.0
    if ssum > 1.0e-12:
        d_s = nl * (1.0 - nv * nv) / (2.0 * sv) + nv * (1.0 - nl * nl) / (2.0 * sl)
        d_vis = -0.5 / (ssum * ssum) * d_s
    d_dv_dr = (d_dist * vis + dist * d_vis) * 2.0 * alpha * dalpha_dr
    out = vec5()
    dr = float(0.0)
    dm = float(0.0)
    for c in range(3):
        a = albedo[c]
        df_da = metallic * (1.0 - s5)  # dF_c / d albedo_c
        df_dm = (a - 0.04) * (1.0 - s5)  # dF_c / d metallic
        grad_a = (1.0 - metallic) * INV_PI * ((1.0 - f[c]) - a * df_da) + dv * df_da
        grad_m = -a * INV_PI * (1.0 - f[c]) - (1.0 - metallic) * a * INV_PI * df_dm + dv * df_dm
        out[c] = g[c] * grad_a
        dr += g[c] * f[c] * d_dv_dr
        dm += g[c] * grad_m
    out[3] = dr
    out[4] = dm
    return out


@wp.func
def ggx_brdf_grad_l(n: wp.vec3, v: wp.vec3, l: wp.vec3, albedo: wp.vec3, roughness: float, metallic: float,
                    g: wp.vec3) -> wp.vec3:
    """dot(g, df/dl) of `shading.ggx_brdf` for a unit l with n.l > 0 (the clamps are inactive)."""
    alpha = wp.max(roughness * roughness, ALPHA_MIN)
    a2 = alpha * alpha
    hu = l + v
    hl = wp.length(hu)
    h = hu / hl
    nl = wp.max(wp.dot(n, l), 0.0)
    nv = wp.max(wp.dot(n, v), 0.0)
    nh = wp.dot(n, h)
    vh = wp.max(wp.dot(v, h), 0.0)
    m = 1.0 - vh
    f0 = wp.lerp(wp.vec3(0.04), albedo, metallic)
    f = fresnel_schlick(f0, vh)
    dist = ggx_distribution(nh, alpha)
    vis = smith_visibility(nl, nv, alpha)
    nh2 = wp.min(nh * nh, 1.0)
    dd = (1.0 - nh2) + nh2 * a2
    d_dist_dnh = wp.where(nh > 0.0, -4.0 * a2 * nh * (a2 - 1.0) / (wp.pi * dd * dd * dd), 0.0)
    sv = wp.sqrt(nv * nv * (1.0 - a2) + a2)
    sl = wp.sqrt(nl * nl * (1.0 - a2) + a2)
    ssum = nl * sv + nv * sl
    d_vis_dnl = 0.0
    if ssum > 1.0e-12:
        d_vis_dnl = -0.5 / (ssum * ssum) * (sv + nv * nl * (1.0 - a2) / sl)
    # dh/dl = (I - h h^T) / |l + v|
    dnh_dl = (n - h * nh) / hl
    dvh_dl = wp.where(wp.dot(v, h) > 0.0, 1.0, 0.0) * (v - h * wp.dot(v, h)) / hl
    dv = dist * vis
    dds = float(0.0)  # sum_c g_c F_c
    dfv = float(0.0)  # sum_c g_c dF_c/dvh (DV - (1 - metallic) a_c / pi)
    for c in range(3):
        df_dvh = -(1.0 - f0[c]) * 5.0 * m * m * m * m
        dds += g[c] * f[c]
        dfv += g[c] * df_dvh * (dv - (1.0 - metallic) * albedo[c] * INV_PI)
    return dvh_dl * dfv + dds * (dnh_dl * (d_dist_dnh * vis) + n * (dist * d_vis_dnl))


@wp.func
def brdf_grad(n: wp.vec3, v: wp.vec3, l: wp.vec3, albedo: wp.vec3, roughness: float, metallic: float,
              model: int, g: wp.vec3) -> vec5:
    out = vec5()
    if model == MODEL_GGX:
        out = ggx_brdf_grad(n, v, l, albedo, roughness, metallic, g)
    elif model == MODEL_LAMBERT:
        out[0] = g[0] * INV_PI
        out[1] = g[1] * INV_PI
        out[2] = g[2] * INV_PI
    return out


@wp.func
def brdf_grad_l(n: wp.vec3, v: wp.vec3, l: wp.vec3, albedo: wp.vec3, roughness: float, metallic: float,
                model: int, g: wp.vec3) -> wp.vec3:
    out = wp.vec3(0.0)
    if model == MODEL_GGX:
        out = ggx_brdf_grad_l(n, v, l, albedo, roughness, metallic, g)
    return out


@wp.func
def search_cdf(cdf: wp.array(dtype=float), start: int, count: int, u: float) -> int:
    """The first i in [0, count) with cdf[start + i] > u (count - 1 if none): a bin of nonzero mass."""
    lo = int(0)
    hi = count - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cdf[start + mid] > u:
            hi = mid
        else:
            lo = mid + 1
    return lo


@wp.func
def cdf_mass(cdf: wp.array(dtype=float), start: int, i: int) -> float:
    prev = 0.0
    if i > 0:
        prev = cdf[start + i - 1]
    return cdf[start + i] - prev


# ---------------------------------------------------------------------------------------------------
# Environment


@wp.func
def env_texel(env: wp.array3d(dtype=float), d: wp.vec3) -> wp.vec2i:
    """(column, row) of the texel seen in unit direction d."""
    he = env.shape[0]
    we = env.shape[1]
    theta = wp.acos(wp.clamp(d[1], -1.0, 1.0))
    phi = wp.atan2(d[0], -d[2])
    x = wp.clamp(int(wp.floor((phi * (0.5 / wp.pi) + 0.5) * float(we))), 0, we - 1)
    y = wp.clamp(int(wp.floor(theta / wp.pi * float(he))), 0, he - 1)
    return wp.vec2i(x, y)


@wp.func
def env_value(env: wp.array3d(dtype=float), t: wp.vec2i) -> wp.vec3:
    return wp.vec3(env[t[1], t[0], 0], env[t[1], t[0], 1], env[t[1], t[0], 2])


@wp.func
def env_pdf(sc: SceneArrays, d: wp.vec3, t: wp.vec2i) -> float:
    """Solid-angle density of `env_sample` producing unit direction d (in texel t)."""
    he = sc.env.shape[0]
    we = sc.env.shape[1]
    if he == 0 or sc.env_marginal[he - 1] <= 0.0:
        return 0.0
    p = cdf_mass(sc.env_marginal, 0, t[1]) * cdf_mass(sc.env_conditional, t[1] * we, t[0])
    sin_t = wp.sqrt(wp.max(1.0 - d[1] * d[1], 0.0))
    return wp.where(sin_t > 1.0e-7, p * float(he * we) / (2.0 * wp.pi * wp.pi * sin_t), 0.0)


@wp.func
def env_sample(sc: SceneArrays, u1: float, u2: float) -> wp.vec3:
    """A unit direction: row by the marginal CDF, column by the row's conditional CDF, uniform in (u, v)
    inside the texel (the remainders of u1, u2 reused)."""
    he = sc.env.shape[0]
    we = sc.env.shape[1]
    y = search_cdf(sc.env_marginal, 0, he, u1)
    my = cdf_mass(sc.env_marginal, 0, y)
    fy = wp.clamp((u1 - (sc.env_marginal[y] - my)) / wp.max(my, 1.0e-30), 0.0, 0.999999)
    x = search_cdf(sc.env_conditional, y * we, we, u2)
    mx = cdf_mass(sc.env_conditional, y * we, x)
    fx = wp.clamp((u2 - (sc.env_conditional[y * we + x] - mx)) / wp.max(mx, 1.0e-30), 0.0, 0.999999)
    theta = (float(y) + fy) / float(he) * wp.pi
    phi = ((float(x) + fx) / float(we) - 0.5) * 2.0 * wp.pi
    st = wp.sin(theta)
    return wp.vec3(st * wp.sin(phi), wp.cos(theta), -st * wp.cos(phi))


# ---------------------------------------------------------------------------------------------------
# Geometry and materials at a hit


@wp.func
def tri_vertex(sc: SceneArrays, f: int, k: int) -> int:
    return sc.faces[3 * f + k]


@wp.func
def face_normal_area(sc: SceneArrays, f: int) -> wp.vec4:
    """(unit counter-clockwise normal, area) of face f."""
    p0 = sc.world[tri_vertex(sc, f, 0)]
    c = wp.cross(sc.world[tri_vertex(sc, f, 1)] - p0, sc.world[tri_vertex(sc, f, 2)] - p0)
    length = wp.length(c)
    n = wp.where(length > 0.0, c / wp.max(length, 1.0e-30), wp.vec3(0.0))
    return wp.vec4(n[0], n[1], n[2], 0.5 * length)


@wp.func
def interp_uv(sc: SceneArrays, f: int, b1: float, b2: float) -> wp.vec2:
    i0 = tri_vertex(sc, f, 0)
    i1 = tri_vertex(sc, f, 1)
    i2 = tri_vertex(sc, f, 2)
    b0 = 1.0 - b1 - b2
    return wp.vec2(b0 * sc.uvs[i0, 0] + b1 * sc.uvs[i1, 0] + b2 * sc.uvs[i2, 0],
                   b0 * sc.uvs[i0, 1] + b1 * sc.uvs[i1, 1] + b2 * sc.uvs[i2, 1])


@wp.func
def interp_normal(sc: SceneArrays, f: int, b1: float, b2: float) -> wp.vec3:
    i0 = tri_vertex(sc, f, 0)
    i1 = tri_vertex(sc, f, 1)
    i2 = tri_vertex(sc, f, 2)
    b0 = 1.0 - b1 - b2
    return wp.vec3(b0 * sc.normals[i0, 0] + b1 * sc.normals[i1, 0] + b2 * sc.normals[i2, 0],
                   b0 * sc.normals[i0, 1] + b1 * sc.normals[i1, 1] + b2 * sc.normals[i2, 1],
                   b0 * sc.normals[i0, 2] + b1 * sc.normals[i1, 2] + b2 * sc.normals[i2, 2])


@wp.func
def vertex_color(sc: SceneArrays, f: int, b1: float, b2: float) -> wp.vec3:
    """Interpolated vertex color multiplying the albedo (1 without vertex colors)."""
    c = wp.vec3(1.0)
    if sc.colors.shape[0] > 0:
        b0 = 1.0 - b1 - b2
        i0 = tri_vertex(sc, f, 0)
        i1 = tri_vertex(sc, f, 1)
        i2 = tri_vertex(sc, f, 2)
        c = wp.vec3(b0 * sc.colors[i0, 0] + b1 * sc.colors[i1, 0] + b2 * sc.colors[i2, 0],
                    b0 * sc.colors[i0, 1] + b1 * sc.colors[i1, 1] + b2 * sc.colors[i2, 1],
                    b0 * sc.colors[i0, 2] + b1 * sc.colors[i1, 2] + b2 * sc.colors[i2, 2])
    return c


@wp.func
def material_value(data: wp.array(dtype=float), table: wp.array2d(dtype=wp.int32), mat: int, uv: wp.vec2) -> wp.vec3:
    """Level 0 of texture `mat` at uv, bilinear; a 1x1 texture (a constant) is read directly (what bilinear
    filtering gives, without its addressing and four fetches)."""
    if table[mat, 4] == 1 and table[mat, 5] == 1:
        i = table[mat, 3]
        c = table[mat, 2]
        out = wp.vec3(data[i], 0.0, 0.0)
        if c > 1:
            out[1] = data[i + 1]
        if c > 2:
            out[2] = data[i + 2]
        return out
    return sample_bilinear_level(data, table, mat, 0, uv[0], uv[1])


@wp.func
def material_adjoint(data: wp.array(dtype=float), adj: wp.array(dtype=float), table: wp.array2d(dtype=wp.int32),
                     mat: int, uv: wp.vec2, g: wp.vec3):
    """Adjoint of `material_value`: adds g (times the bilinear weights) into adj."""
    if table[mat, 4] == 1 and table[mat, 5] == 1:
        i = table[mat, 3]
        for k in range(table[mat, 2]):
            wp.atomic_add(adj, i + k, g[k])
    else:
        _bilinear_adjoint(data, adj, 1, table, mat, 0, uv[0], uv[1], g, 0)


@wp.func
def emission_at(sc: SceneArrays, mat: int, uv: wp.vec2) -> wp.vec3:
    return material_value(sc.emission, sc.emission_table, mat, uv)


@wp.func
def offset_origin(p: wp.vec3, ng: wp.vec3, d: wp.vec3) -> wp.vec3:
    """Leave the surface on d's side; the offset grows with |p| like float32 roundoff does."""
    side = wp.where(wp.dot(ng, d) < 0.0, -1.0, 1.0)
    scale = 1.0 + wp.max(wp.abs(p[0]), wp.max(wp.abs(p[1]), wp.abs(p[2])))
    return p + ng * (side * RAY_EPS * scale)


@wp.func
def unoccluded(sc: SceneArrays, p: wp.vec3, ng: wp.vec3, d: wp.vec3, dist: float) -> bool:
    """No surface between p (offset along ng) and distance `dist` along unit d."""
    o = offset_origin(p, ng, d)
    return not wp.mesh_query_ray_anyhit(sc.bvh, o, d, dist)


@wp.func
def scatter_material(sc: SceneArrays, gr: GradArrays, mat: int, uv: wp.vec2, f: int, b1: float, b2: float,
                     tex_albedo: wp.vec3, vcolor: wp.vec3, g: vec5):
    """Scatter a material-parameter adjoint (albedo rgb, roughness, metallic) into the texel gradients; the
    albedo is texture x vertex color, so each factor gets the adjoint times the other."""
    ga = wp.vec3(g[0], g[1], g[2])
    if _has(gr.want, _W_ALBEDO):
        material_adjoint(sc.albedo, gr.albedo, sc.albedo_table, mat, uv, wp.cw_mul(ga, vcolor))
    if _has(gr.want, _W_COLORS):
        gc = wp.cw_mul(ga, tex_albedo)
        b0 = 1.0 - b1 - b2
        for k in range(3):
            wp.atomic_add(gr.colors, tri_vertex(sc, f, 0), k, b0 * gc[k])
            wp.atomic_add(gr.colors, tri_vertex(sc, f, 1), k, b1 * gc[k])
            wp.atomic_add(gr.colors, tri_vertex(sc, f, 2), k, b2 * gc[k])
    if _has(gr.want, _W_ROUGHNESS) and g[3] != 0.0:
        material_adjoint(sc.roughness, gr.roughness, sc.roughness_table, mat, uv, wp.vec3(g[3], 0.0, 0.0))
    if _has(gr.want, _W_METALLIC) and g[4] != 0.0:
        material_adjoint(sc.metallic, gr.metallic, sc.metallic_table, mat, uv, wp.vec3(g[4], 0.0, 0.0))


@wp.func
def scatter_emission(sc: SceneArrays, gr: GradArrays, mat: int, uv: wp.vec2, g: wp.vec3):
    if _has(gr.want, _W_EMISSION):
        material_adjoint(sc.emission, gr.emission, sc.emission_table, mat, uv, g)


@wp.func
def scatter_env(gr: GradArrays, t: wp.vec2i, g: wp.vec3):
    if _has(gr.want, _W_ENV):
        wp.atomic_add(gr.env, t[1], t[0], 0, g[0])
        wp.atomic_add(gr.env, t[1], t[0], 1, g[1])
        wp.atomic_add(gr.env, t[1], t[0], 2, g[2])


# ---------------------------------------------------------------------------------------------------
# One path


@wp.func
def trace_path(sc: SceneArrays, rs: RenderSettings, px: int, py: int, s: int, adjoint: int, l_total: wp.vec3,
               dl: wp.vec3, gr: GradArrays) -> wp.vec3:
    """Radiance estimate of sample s of pixel (px, py). With adjoint != 0 the same path is replayed:
    `l_total` must be its primal radiance and `dl` the adjoint of that radiance; every contribution is
    subtracted from l_total as it is met (what remains is the radiance the rest of the path brings) and
    dl times the derivative of each term is accumulated into `gr`."""
    pixel = py * rs.width + px
    seed = rs.seed
    jx = 0.5
    jy = 0.5
    if rs.jitter != 0:
        jx = sample_1d(seed, pixel, s, 0)
        jy = sample_1d(seed, pixel, s, 1)
    o = rs.position
    d = wp.normalize(camera_ray(rs.intrinsics, rs.position, rs.rotation, float(px) + jx, float(py) + jy))
    beta = wp.vec3(1.0)
    radiance = wp.vec3(0.0)
    rest = l_total  # adjoint: radiance not yet accounted for
    prev_pdf = float(0.0)  # BSDF pdf of d; 0 for the camera ray (no MIS)
    n_point = sc.point_position.shape[0]
    n_dir = sc.dir_direction.shape[0]
    n_lightf = sc.light_faces.shape[0]
    he = sc.env.shape[0]
    env_nee = he > 0
    if env_nee:
        env_nee = sc.env_marginal[he - 1] > 0.0
    for depth in range(rs.max_depth + 1):
        dim = 2 + depth * DIMS_PER_BOUNCE
        q = wp.mesh_query_ray(sc.bvh, o, d, FAR)
        if not q.result:
            if he > 0:
                t = env_texel(sc.env, d)
                w = 1.0
                if prev_pdf > 0.0:
                    w = power_heuristic(prev_pdf, env_pdf(sc, d, t))
                c = wp.cw_mul(beta, env_value(sc.env, t)) * w
                radiance += c
                if adjoint != 0:
                    rest -= c
                    scatter_env(gr, t, wp.cw_mul(dl, beta) * w)
            break
        f = q.face
        p0 = sc.world[tri_vertex(sc, f, 0)]
        bt = ray_triangle(o, d, p0, sc.world[tri_vertex(sc, f, 1)], sc.world[tri_vertex(sc, f, 2)])
        na = face_normal_area(sc, f)
        ng_face = wp.vec3(na[0], na[1], na[2])
        p = o + d * q.t
        wo = -d
        uv = interp_uv(sc, f, bt[0], bt[1])
        mat = sc.face_material[f]
        model = sc.material_model[mat]
        cos_o = wp.dot(ng_face, wo)
        # emission, one-sided
        if cos_o > 0.0:
            le = emission_at(sc, mat, uv)
            # a zero emission adds nothing, but its gradient is still wanted in the adjoint
            if adjoint != 0 or le[0] != 0.0 or le[1] != 0.0 or le[2] != 0.0:
                w = 1.0
                if prev_pdf > 0.0:
                    pdf_l = sc.face_light_pmf[f] * q.t * q.t / wp.max(na[3] * cos_o, 1.0e-30)
                    w = power_heuristic(prev_pdf, pdf_l)
                c = wp.cw_mul(beta, le) * w
                radiance += c
                if adjoint != 0:
                    rest -= c
                    scatter_emission(sc, gr, mat, uv, wp.cw_mul(dl, beta) * w)
        if depth == rs.max_depth or model < 0:
            break
        # two-sided surface: geometric and shading normals on the side of wo
        ng = wp.where(cos_o < 0.0, -ng_face, ng_face)
        n = interp_normal(sc, f, bt[0], bt[1])
        if wp.length(n) < 1.0e-12:
            n = ng
        n = wp.normalize(n)
        if wp.dot(n, ng) < 0.0:
            n = -n
        tex_albedo = material_value(sc.albedo, sc.albedo_table, mat, uv)
        vcolor = vertex_color(sc, f, bt[0], bt[1])
        albedo = wp.cw_mul(tex_albedo, vcolor)
        rough = float(0.0)  # Lambert reads neither (and its adjoint for them is 0)
        metal = float(0.0)
        if model == MODEL_GGX:
            rough = material_value(sc.roughness, sc.roughness_table, mat, uv)[0]
            metal = material_value(sc.metallic, sc.metallic_table, mat, uv)[0]
        gb = wp.cw_mul(dl, beta)  # adjoint of a term beta * x is gb * dx
        mgrad = vec5()  # material-parameter adjoint accumulated over this vertex's terms
        # --- NEE: point lights
        for j in range(n_point):
            to = sc.point_position[j] - p
            d2 = wp.max(wp.dot(to, to), 1.0e-12)
            dist = wp.sqrt(d2)
            l = to / dist
            cos_l = wp.dot(n, l)
            if cos_l > 0.0 and wp.dot(ng, l) > 0.0:
                o_s = offset_origin(p, ng, l)
                if not wp.mesh_query_ray_anyhit(sc.bvh, o_s, wp.normalize(sc.point_position[j] - o_s),
                                                wp.length(sc.point_position[j] - o_s)):
                    fr = brdf(n, wo, l, albedo, rough, metal, model)
                    geo = sc.point_intensity[j] * cos_l / d2
                    e = sc.point_color[j] * geo
                    c = wp.cw_mul(beta, wp.cw_mul(fr, e))
                    radiance += c
                    if adjoint != 0:
                        rest -= c
                        mgrad += brdf_grad(n, wo, l, albedo, rough, metal, model, wp.cw_mul(gb, e))
                        gf = wp.cw_mul(gb, fr)
                        if _has(gr.want, _W_PCOLOR):
                            wp.atomic_add(gr.point_color, j, gf * geo)
                        if _has(gr.want, _W_PINT):
                            wp.atomic_add(gr.point_intensity, j, wp.dot(gf, sc.point_color[j]) * cos_l / d2)
                        if _has(gr.want, _W_PPOS):
                            ge = wp.cw_mul(gb, sc.point_color[j]) * sc.point_intensity[j]
                            # d/dP of f(l) cos / d^2, l = (P - p) / d: d(n.to / d^3)/dP = n / d^3 - 3 (n.to) to / d^5
                            dgeo = n / (d2 * dist) - to * (3.0 * wp.dot(n, to) / (d2 * d2 * dist))
                            gl = brdf_grad_l(n, wo, l, albedo, rough, metal, model, ge) * (cos_l / d2)
                            dpos = (gl - l * wp.dot(l, gl)) / dist + dgeo * wp.dot(ge, fr)
                            wp.atomic_add(gr.point_position, j, dpos)
        # --- NEE: directional lights
        for j in range(n_dir):
            dir_len = wp.length(sc.dir_direction[j])
            l = -sc.dir_direction[j] / wp.max(dir_len, 1.0e-30)
            cos_l = wp.dot(n, l)
            if cos_l > 0.0 and wp.dot(ng, l) > 0.0 and unoccluded(sc, p, ng, l, FAR):
                fr = brdf(n, wo, l, albedo, rough, metal, model)
                geo = sc.dir_intensity[j] * cos_l
                e = sc.dir_color[j] * geo
                c = wp.cw_mul(beta, wp.cw_mul(fr, e))
                radiance += c
                if adjoint != 0:
                    rest -= c
                    mgrad += brdf_grad(n, wo, l, albedo, rough, metal, model, wp.cw_mul(gb, e))
                    gf = wp.cw_mul(gb, fr)
                    if _has(gr.want, _W_DCOLOR):
                        wp.atomic_add(gr.dir_color, j, gf * geo)
                    if _has(gr.want, _W_DINT):
                        wp.atomic_add(gr.dir_intensity, j, wp.dot(gf, sc.dir_color[j]) * cos_l)
                    if _has(gr.want, _W_DDIR):
                        ge = wp.cw_mul(gb, sc.dir_color[j]) * sc.dir_intensity[j]
                        # d/dl of f(l) (n.l), then l = -dir / |dir|: dl/d dir = -(I - l l^T) / |dir|
                        gl = brdf_grad_l(n, wo, l, albedo, rough, metal, model, ge) * cos_l + n * wp.dot(ge, fr)
                        wp.atomic_add(gr.dir_direction, j, -(gl - l * wp.dot(l, gl)) / dir_len)
        # --- NEE: one emissive triangle
        if n_lightf > 0:
            k = search_cdf(sc.light_cdf, 0, n_lightf, sample_1d(seed, pixel, s, dim + 3))
            fl = sc.light_faces[k]
            su = wp.sqrt(sample_1d(seed, pixel, s, dim + 4))
            b1 = sample_1d(seed, pixel, s, dim + 5) * su
            b2 = 1.0 - su
            q0 = sc.world[tri_vertex(sc, fl, 0)]
            pl = q0 + (sc.world[tri_vertex(sc, fl, 1)] - q0) * b1 + (sc.world[tri_vertex(sc, fl, 2)] - q0) * b2
            nal = face_normal_area(sc, fl)
            to = pl - p
            d2 = wp.dot(to, to)
            dist = wp.sqrt(d2)
            l = to / wp.max(dist, 1.0e-30)
            cos_e = -(nal[0] * l[0] + nal[1] * l[1] + nal[2] * l[2])
            cos_l = wp.dot(n, l)
            if cos_e > 0.0 and cos_l > 0.0 and wp.dot(ng, l) > 0.0 and nal[3] > 0.0:
                if unoccluded(sc, p, ng, l, dist * (1.0 - 1.0e-3)):
                    matl = sc.face_material[fl]
                    uvl = interp_uv(sc, fl, b1, b2)
                    le = emission_at(sc, matl, uvl)
                    pdf_l = sc.face_light_pmf[fl] * d2 / (nal[3] * cos_e)
                    if pdf_l > 0.0:
                        w = power_heuristic(pdf_l, bsdf_pdf(n, wo, l, rough, metal, model))
                        fr = brdf(n, wo, l, albedo, rough, metal, model)
                        k_w = cos_l * w / pdf_l
                        c = wp.cw_mul(beta, wp.cw_mul(fr, le)) * k_w
                        radiance += c
                        if adjoint != 0:
                            rest -= c
                            mgrad += brdf_grad(n, wo, l, albedo, rough, metal, model, wp.cw_mul(gb, le) * k_w)
                            scatter_emission(sc, gr, matl, uvl, wp.cw_mul(gb, fr) * k_w)
        # --- NEE: environment
        if env_nee:
            l = env_sample(sc, sample_1d(seed, pixel, s, dim + 6), sample_1d(seed, pixel, s, dim + 7))
            cos_l = wp.dot(n, l)
            if cos_l > 0.0 and wp.dot(ng, l) > 0.0 and unoccluded(sc, p, ng, l, FAR):
                t = env_texel(sc.env, l)
                pdf_e = env_pdf(sc, l, t)
                if pdf_e > 0.0:
                    w = power_heuristic(pdf_e, bsdf_pdf(n, wo, l, rough, metal, model))
                    fr = brdf(n, wo, l, albedo, rough, metal, model)
                    le = env_value(sc.env, t)
                    k_w = cos_l * w / pdf_e
                    c = wp.cw_mul(beta, wp.cw_mul(fr, le)) * k_w
                    radiance += c
                    if adjoint != 0:
                        rest -= c
                        mgrad += brdf_grad(n, wo, l, albedo, rough, metal, model, wp.cw_mul(gb, le) * k_w)
                        scatter_env(gr, t, wp.cw_mul(gb, fr) * k_w)
        # --- continue along a BSDF sample
        wi = bsdf_sample(n, wo, rough, metal, model, sample_1d(seed, pixel, s, dim),
                         sample_1d(seed, pixel, s, dim + 1), sample_1d(seed, pixel, s, dim + 2))
        pdf_b = bsdf_pdf(n, wo, wi, rough, metal, model)
        cos_i = wp.dot(n, wi)
        alive = pdf_b > 0.0 and cos_i > 0.0 and wp.dot(ng, wi) > 0.0
        fr = wp.vec3(0.0)
        if alive:
            fr = brdf(n, wo, wi, albedo, rough, metal, model)
        if adjoint != 0:
            if alive:
                # what the rest of the path brings is proportional to f(wi): d rest = rest * df / f
                mgrad += brdf_grad(n, wo, wi, albedo, rough, metal, model, wp.cw_mul(dl, safe_ratio(rest, fr)))
            scatter_material(sc, gr, mat, uv, f, bt[0], bt[1], tex_albedo, vcolor, mgrad)
        if not alive:
            break
        beta = wp.cw_mul(beta, fr) * (cos_i / pdf_b)
        if depth + 1 >= rs.rr_depth:
            qs = wp.min(wp.max(beta[0], wp.max(beta[1], beta[2])), RR_MAX)
            if sample_1d(seed, pixel, s, dim + 8) >= qs:
                break
            beta = beta / qs
        o = offset_origin(p, ng, wi)
        d = wi
        prev_pdf = pdf_b
    return radiance


@wp.kernel(enable_backward=False)
def render_kernel(sc: SceneArrays, rs: RenderSettings, gr: GradArrays, keep: int, samples: wp.array(dtype=wp.vec3),
                  out: wp.array2d(dtype=float)):
    band_row, px = wp.tid()
    py = band_row * rs.row_stride + rs.row0
    i = py * rs.width + px
    acc = wp.vec3(0.0)
    for k in range(rs.spp):
        l = trace_path(sc, rs, px, py, rs.first_sample + k, 0, wp.vec3(0.0), wp.vec3(0.0), gr)
        if keep != 0:
            samples[i * rs.spp + k] = l  # each path's radiance, for the adjoint (saves its first replay)
        acc += l
    acc = acc / float(rs.spp)
    out[i, 0] = acc[0]
    out[i, 1] = acc[1]
    out[i, 2] = acc[2]


@wp.kernel(enable_backward=False)
def adjoint_kernel(sc: SceneArrays, rs: RenderSettings, grad_image: wp.array2d(dtype=float), kept: int,
                   samples: wp.array(dtype=wp.vec3), gr: GradArrays):
    band_row, px = wp.tid()
    py = band_row * rs.row_stride + rs.row0
    i = py * rs.width + px
    dl = wp.vec3(grad_image[i, 0], grad_image[i, 1], grad_image[i, 2]) / float(rs.spp)
    if dl[0] == 0.0 and dl[1] == 0.0 and dl[2] == 0.0:
        return
    for k in range(rs.spp):
        s = rs.first_sample + k
        # replay: the primal radiance of this path (kept by the forward pass, or traced again), then the
        # same path with the adjoint
        total = wp.vec3(0.0)
        if kept != 0:
            total = samples[i * rs.spp + k]
        else:
            total = trace_path(sc, rs, px, py, s, 0, wp.vec3(0.0), wp.vec3(0.0), gr)
        trace_path(sc, rs, px, py, s, 1, total, dl, gr)


# ---------------------------------------------------------------------------------------------------
# Python side


@dataclass
class PathScene:
    """Everything `render_path` reads, as Warp arrays on one device.

    Geometry: `bvh` a wp.Mesh over world positions `bvh.points` wp.vec3 (V,) and faces `bvh.indices`
    wp.int32 (3F,) (counter-clockwise winding defines the emitting side); `normals` float (V, 3) shading
    normals (any length; zero rows fall back to the face normal); `uvs` float (V, 2) (v = 0 is a texture's
    top row); `colors` float (V, 3) or None: vertex colors multiplying the albedo (as the rasterizer's);
    `face_material` int32 (F,) material per face; `material_model` int32 (M,) per material
    -1 none (black, emission only), 0 Lambert, 1 GGX.
    Materials: `albedo` (3 channels), `roughness` (1), `metallic` (1), `emission` (3, radiance) are
    `TexturePool`s with texture m belonging to material m (level 0 sampled bilinearly; mip levels unused).
    Lights: `lights` the shading stage's packed `Lights` (ambient is ignored).
    Emitters: `light_faces` int32 (E,) the faces that may emit, `light_cdf` float (E,) their inclusive
    selection CDF (last entry 1), `face_light_pmf` float (F,) each face's selection probability (0 if not
    in `light_faces`). Built by `emitter_distribution`.
    Environment: `env` float array3d (He, We, 3) linear RGB radiance (He = We = 0: none),
    `env_marginal` float (He,) inclusive row CDF, `env_conditional` float (He * We,) per-row inclusive
    column CDFs, built by `env_distribution`.

    The sampling tables are inputs, not recomputed from the current values: rebuild them when the
    values they came from change a lot (any table gives an unbiased image; better tables less noise).
    Gradients go to `.grad` of albedo/roughness/metallic/emission `.data`, `colors`, `env` and the light
    arrays."""

    bvh: wp.Mesh
    normals: wp.array
    uvs: wp.array
    face_material: wp.array
    material_model: wp.array
    albedo: TexturePool
    roughness: TexturePool
    metallic: TexturePool
    emission: TexturePool
    lights: Lights
    env: wp.array
    env_marginal: wp.array
    env_conditional: wp.array
    light_faces: wp.array
    light_cdf: wp.array
    face_light_pmf: wp.array
    colors: wp.array | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.bvh, wp.Mesh):
            raise TypeError(f"bvh: expected a wp.Mesh, got {type(self.bvh).__name__}")
        world, faces = self.bvh.points, self.bvh.indices
        dev = world.device
        check_array("bvh.points", world, wp.vec3, (None,), dev)
        check_array("bvh.indices", faces, wp.int32, (None,), dev)
        v, f = world.shape[0], faces.shape[0] // 3
        check_array("normals", self.normals, wp.float32, (v, 3), dev)
        check_array("uvs", self.uvs, wp.float32, (v, 2), dev)
        if self.colors is not None:
            check_array("colors", self.colors, wp.float32, (v, 3), dev)
        check_array("face_material", self.face_material, wp.int32, (f,), dev)
        check_array("material_model", self.material_model, wp.int32, (None,), dev)
        m = self.material_model.shape[0]
        for name, pool, ch in (("albedo", self.albedo, 3), ("roughness", self.roughness, 1),
                               ("metallic", self.metallic, 1), ("emission", self.emission, 3)):
            if not isinstance(pool, TexturePool):
                raise TypeError(f"{name}: expected a TexturePool, got {type(pool).__name__}")
            if pool.channels != ch or pool.count != m:
                raise ValueError(f"{name}: expected a TexturePool of {m} textures with {ch} channels, got "
                                 f"{pool.count} with {pool.channels}")
            if pool.data.device != dev:
                raise ValueError(f"{name}: expected a pool on device {dev}, got {pool.data.device}")
        if not isinstance(self.lights, Lights):
            raise TypeError(f"lights: expected a Lights, got {type(self.lights).__name__}")
        if self.lights.device != dev:
            raise ValueError(f"lights: expected arrays on device {dev}, got {self.lights.device}")
        check_array("env", self.env, wp.float32, (None, None, 3), dev)
        he, we = self.env.shape[0], self.env.shape[1]
        check_array("env_marginal", self.env_marginal, wp.float32, (he,), dev)
        check_array("env_conditional", self.env_conditional, wp.float32, (he * we,), dev)
        check_array("light_faces", self.light_faces, wp.int32, (None,), dev)
        check_array("light_cdf", self.light_cdf, wp.float32, (self.light_faces.shape[0],), dev)
        check_array("face_light_pmf", self.face_light_pmf, wp.float32, (f,), dev)

    @property
    def device(self):
        return self.bvh.points.device

    def arrays(self) -> SceneArrays:
        s = SceneArrays()
        s.bvh = self.bvh.id
        s.world, s.faces = self.bvh.points, self.bvh.indices
        s.normals, s.uvs = self.normals, self.uvs
        s.colors = self.colors if self.colors is not None else wp.empty((0, 3), dtype=float, device=self.device)
        s.face_material, s.material_model = self.face_material, self.material_model
        s.albedo, s.albedo_table = self.albedo.data, self.albedo.table
        s.roughness, s.roughness_table = self.roughness.data, self.roughness.table
        s.metallic, s.metallic_table = self.metallic.data, self.metallic.table
        s.emission, s.emission_table = self.emission.data, self.emission.table
        lt = self.lights
        s.point_position, s.point_color, s.point_intensity = lt.point_position, lt.point_color, lt.point_intensity
        s.dir_direction, s.dir_color, s.dir_intensity = lt.dir_direction, lt.dir_color, lt.dir_intensity
        s.env, s.env_marginal, s.env_conditional = self.env, self.env_marginal, self.env_conditional
        s.light_faces, s.light_cdf, s.face_light_pmf = self.light_faces, self.light_cdf, self.face_light_pmf
        return s

    def parameters(self) -> dict[str, wp.array]:
        """The arrays `render_path_backward` can accumulate gradients into, by name."""
        lt = self.lights
        colors = self.colors if self.colors is not None else wp.empty((0, 3), dtype=float, device=self.device)
        return {"albedo": self.albedo.data, "colors": colors, "roughness": self.roughness.data,
                "metallic": self.metallic.data,
                "emission": self.emission.data, "env": self.env, "point_position": lt.point_position,
                "point_color": lt.point_color, "point_intensity": lt.point_intensity,
                "dir_direction": lt.dir_direction, "dir_color": lt.dir_color, "dir_intensity": lt.dir_intensity}


_WANT_BITS = {"albedo": WANT_ALBEDO, "colors": WANT_COLORS, "roughness": WANT_ROUGHNESS, "metallic": WANT_METALLIC,
              "emission": WANT_EMISSION, "env": WANT_ENV, "point_position": WANT_POINT_POSITION,
              "point_color": WANT_POINT_COLOR, "point_intensity": WANT_POINT_INTENSITY,
              "dir_direction": WANT_DIR_DIRECTION, "dir_color": WANT_DIR_COLOR, "dir_intensity": WANT_DIR_INTENSITY}


def env_distribution(env: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Marginal and conditional inclusive CDFs of an (He, We, 3) equirectangular image for sampling
    texels with probability proportional to luminance x sin(theta at the row center).

    Returns (marginal float32 (He,), conditional float32 (He * We,)); all zeros when the image is
    black (the renderer then skips environment NEE and relies on BSDF sampling)."""
    env = np.asarray(env, np.float64)
    if env.ndim != 3 or env.shape[2] != 3:
        raise ValueError(f"env: expected an (He, We, 3) array, got shape {env.shape}")
    he, we = env.shape[:2]
    lum = np.maximum(env @ np.array([0.2126, 0.7152, 0.0722]), 0.0)
    w = lum * np.sin((np.arange(he) + 0.5) / he * np.pi)[:, None]
    rows = w.sum(1)
    total = rows.sum()
    if total <= 0:
        return np.zeros(he, np.float32), np.zeros(he * we, np.float32)
    cond = np.where(rows[:, None] > 0, np.cumsum(w, 1) / np.where(rows > 0, rows, 1)[:, None],
                    np.arange(1, we + 1)[None, :] / we)
    cond[:, -1] = 1.0
    marg = np.cumsum(rows) / total
    marg[-1] = 1.0
    return marg.astype(np.float32), cond.reshape(-1).astype(np.float32)


def emitter_distribution(world: np.ndarray, faces: np.ndarray, face_material: np.ndarray,
                         emission_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The emissive-triangle sampling tables: faces whose material's mean emission (M, 3) is nonzero,
    chosen with probability proportional to area x mean emission luminance.

    Args: world (V, 3) positions, faces (F, 3), face_material (F,), emission_mean (M, 3).
    Returns (light_faces int32 (E,), light_cdf float32 (E,), face_light_pmf float32 (F,))."""
    world = np.asarray(world, np.float64)
    faces = np.asarray(faces).reshape(-1, 3)
    emission_mean = np.asarray(emission_mean, np.float64).reshape(-1, 3)
    p = world[faces]
    area = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
    lum = np.maximum(emission_mean @ np.array([0.2126, 0.7152, 0.0722]), 0.0)[np.asarray(face_material)]
    weight = area * lum
    emissive = np.flatnonzero(weight > 0)
    pmf = np.zeros(len(faces), np.float64)
    if len(emissive) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), pmf.astype(np.float32)
    pmf[emissive] = weight[emissive] / weight[emissive].sum()
    cdf = np.cumsum(pmf[emissive])
    cdf[-1] = 1.0
    return emissive.astype(np.int32), cdf.astype(np.float32), pmf.astype(np.float32)


def path_scene_from_numpy(vertices, faces, materials: list[dict], face_material=None, normals=None, uvs=None,
                          lights: Lights | None = None, env=None, colors=None, device="cpu",
                          requires_grad: bool = False) -> PathScene:
    """Build a `PathScene` from NumPy inputs (tests, benchmarks).

    Args:
        vertices: (V, 3) world positions; faces: (F, 3) vertex indices (counter-clockwise front).
        materials: M dicts with keys model ("lambert" | "ggx" | "none", default "lambert"), albedo (3,) or
            (h, w, 3), roughness scalar or (h, w, 1), metallic likewise, emission (3,) or (h, w, 3)
            (default 0), wrap ("wrap" | "clamp", default "wrap").
        face_material: (F,) material index per face (default all 0).
        normals: (V, 3) shading normals (default: area-weighted vertex normals of the mesh).
        uvs: (V, 2) (default zeros).
        lights: packed `Lights` on `device` (default none).
        env: (He, We, 3) equirectangular radiance or None.
        colors: (V, 3) vertex colors multiplying the albedo, or None.
        requires_grad: make the parameter arrays (texture data, env, lights built here) require grad.
    """
    v = np.ascontiguousarray(vertices, np.float32).reshape(-1, 3)
    fc = np.ascontiguousarray(faces, np.int32).reshape(-1, 3)
    nf = len(fc)
    fm = np.zeros(nf, np.int32) if face_material is None else np.ascontiguousarray(face_material, np.int32)
    if fm.shape != (nf,):
        raise ValueError(f"face_material: expected shape ({nf},), got {fm.shape}")
    if len(materials) == 0 or (fm.size and (fm.min() < 0 or fm.max() >= len(materials))):
        raise ValueError("materials: expected one dict per material index used by face_material")
    if normals is None:
        p = v[fc].astype(np.float64)
        fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        acc = np.zeros((len(v), 3))
        for k in range(3):
            np.add.at(acc, fc[:, k], fn)
        normals = acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-20)
    normals = np.ascontiguousarray(normals, np.float32).reshape(-1, 3)
    uvs = np.zeros((len(v), 2), np.float32) if uvs is None else np.ascontiguousarray(uvs, np.float32)
    models = {"none": -1, "lambert": 0, "ggx": 1}

    def tex(x, ch):
        x = np.asarray(x, np.float32)
        return x.reshape(1, 1, ch) if x.ndim <= 1 else np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], ch)

    def pool(key, ch, default):
        texs = [wp.array(tex(m.get(key, default), ch), dtype=float, device=device) for m in materials]
        p = TexturePool.build(texs, [m.get("wrap", "wrap") for m in materials], mipmaps=False)
        # the pool's data is the parameter: a fresh leaf so gradients accumulate there
        data = wp.array(p.data.numpy(), dtype=float, device=device, requires_grad=requires_grad)
        return TexturePool(data, p.table, p.channels, p.sizes, p.offsets, p.wraps)

    albedo = pool("albedo", 3, (0.5, 0.5, 0.5))
    rough = pool("roughness", 1, 0.5)
    metal = pool("metallic", 1, 0.0)
    emission = pool("emission", 3, (0.0, 0.0, 0.0))
    emean = np.stack([tex(m.get("emission", (0, 0, 0)), 3).reshape(-1, 3).mean(0) for m in materials])
    lf, lcdf, lpmf = emitter_distribution(v, fc, fm, emean)
    if env is None:
        env_np = np.zeros((0, 0, 3), np.float32)
        marg, cond = np.zeros(0, np.float32), np.zeros(0, np.float32)
    else:
        env_np = np.ascontiguousarray(env, np.float32)
        marg, cond = env_distribution(env_np)
    world = wp.array(v, dtype=wp.vec3, device=device)
    faces_wp = wp.array(fc.reshape(-1), dtype=wp.int32, device=device)
    if lights is None:
        lights = Lights.create(device=device, requires_grad=requires_grad)
    return PathScene(
        bvh=wp.Mesh(points=world, indices=faces_wp),
        normals=wp.array(normals, dtype=float, device=device),
        uvs=wp.array(uvs, dtype=float, device=device),
        face_material=wp.array(fm, dtype=wp.int32, device=device),
        material_model=wp.array(np.array([models[m.get("model", "lambert")] for m in materials], np.int32),
                                dtype=wp.int32, device=device),
        albedo=albedo, roughness=rough, metallic=metal, emission=emission, lights=lights,
        env=wp.array(env_np, dtype=float, device=device, requires_grad=requires_grad and env is not None),
        env_marginal=wp.array(marg, dtype=float, device=device),
        env_conditional=wp.array(cond, dtype=float, device=device),
        light_faces=wp.array(lf, dtype=wp.int32, device=device),
        light_cdf=wp.array(lcdf, dtype=float, device=device),
        face_light_pmf=wp.array(lpmf, dtype=float, device=device),
        colors=None if colors is None else wp.array(np.ascontiguousarray(colors, np.float32).reshape(-1, 3),
                                                    dtype=float, device=device, requires_grad=requires_grad))


def _settings(intrinsics, pose, width, height, spp, seed, max_depth, rr_depth, jitter,
              first_sample) -> RenderSettings:
    check_camera(intrinsics, pose, width, height)
    for name, val, lo in (("spp", spp, 1), ("max_depth", max_depth, 0), ("rr_depth", rr_depth, 0),
                          ("first_sample", first_sample, 0)):
        if not isinstance(val, Integral) or isinstance(val, bool) or val < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {val!r}")
    if not isinstance(seed, Integral) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if not isinstance(jitter, bool):
        raise TypeError(f"jitter: expected a bool, got {type(jitter).__name__}")
    intr = intrinsics.numpy().astype(np.float64)
    pose_np = pose.numpy().astype(np.float64)
    q = pose_np[3:] / np.linalg.norm(pose_np[3:])
    rs = RenderSettings()
    rs.intrinsics = wp.vec4(*intr)
    rs.position = wp.vec3(*pose_np[:3])
    rs.rotation = wp.quat(*q)
    rs.width = int(width)
    rs.spp = int(spp)
    rs.first_sample = int(first_sample)
    seed = int(seed) & 0xFFFFFFFF
    rs.seed = seed - (1 << 32) if seed >= (1 << 31) else seed
    rs.max_depth = int(max_depth)
    rs.rr_depth = int(rr_depth)
    rs.jitter = int(jitter)
    rs.row0 = 0
    rs.row_stride = 1
    return rs


def _grad_arrays(scene: PathScene, want: int, grads: dict | None = None) -> GradArrays:
    """The adjoint's targets: the parameters' .grad, or the arrays in `grads` (by name) instead."""
    dev = scene.device
    g = GradArrays()
    g.want = want
    e1 = wp.empty(0, dtype=float, device=dev)
    e3 = wp.empty(0, dtype=wp.vec3, device=dev)
    params = scene.parameters()

    def grad(name, empty):
        if not want & _WANT_BITS[name]:
            return empty
        return grads[name] if grads is not None else params[name].grad

    g.albedo, g.roughness, g.metallic = grad("albedo", e1), grad("roughness", e1), grad("metallic", e1)
    g.colors = grad("colors", wp.empty((0, 3), dtype=float, device=dev))
    g.emission = grad("emission", e1)
    g.env = grad("env", wp.empty((0, 0, 3), dtype=float, device=dev))
    g.point_position, g.point_color = grad("point_position", e3), grad("point_color", e3)
    g.point_intensity = grad("point_intensity", e1)
    g.dir_direction, g.dir_color = grad("dir_direction", e3), grad("dir_color", e3)
    g.dir_intensity = grad("dir_intensity", e1)
    return g


@wp.kernel(enable_backward=False)
def _add_into(src: wp.array(dtype=float), dst: wp.array(dtype=float)):
    i = wp.tid()
    dst[i] = dst[i] + src[i]


def _floats(a: wp.array) -> wp.array:
    """A contiguous array viewed as flat floats (no copy; keep `a` alive meanwhile)."""
    return wp.array(ptr=a.ptr, dtype=float, shape=(a.capacity // 4,), device=a.device)


def _check_threads(threads) -> int:
    if not isinstance(threads, Integral) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
    return int(threads)


def _run_bands(dev, height: int, threads: int, launch) -> None:
    """launch(k, row0, rows, stride) for `threads` sets of rows (one on a GPU): set k is rows k, k + stride,
    ... (interleaved, so the threads get like shares of costly and cheap rows, where contiguous bands could
    give one thread the costlier half and leave the other idle). Warp runs a CPU launch on one core and releases
    the GIL meanwhile, so sets launched from separate threads run on separate cores."""
    n = threads if dev.is_cpu else 1
    n = max(1, min(n, height))
    bands = [(k, k, (height - k + n - 1) // n, n) for k in range(n)]
    if n == 1:
        launch(*bands[0])
        return
    # compile before the threads start, so they do not race to build the module
    wp.load_module(module=__name__, device=dev)
    errors = []

    def run(k, row0, rows, stride):
        try:
            launch(k, row0, rows, stride)
        except BaseException as e:  # re-raised on the caller's thread below
            errors.append(e)

    workers = [threading.Thread(target=run, args=b) for b in bands[1:]]
    for t in workers:
        t.start()
    run(*bands[0])
    for t in workers:
        t.join()
    if errors:
        raise errors[0]


def _band(rs: RenderSettings, row0: int, stride: int) -> RenderSettings:
    b = RenderSettings()
    for name in ("intrinsics", "position", "rotation", "width", "spp", "first_sample", "seed", "max_depth", "rr_depth",
                 "jitter"):
        setattr(b, name, getattr(rs, name))
    b.row0 = int(row0)
    b.row_stride = int(stride)
    return b


def render_path(scene: PathScene, intrinsics: wp.array, pose: wp.array, width: int, height: int, *, spp: int = 16,
                seed: int = 0, max_depth: int = 4, rr_depth: int = 5, jitter: bool = True,
                threads: int = 1, first_sample: int = 0) -> wp.array:
    """Path-traced image of `scene` (see the module docstring for the light transport).

    Args:
        scene: the packed `PathScene`.
        intrinsics: float32 (4,) [fx, fy, cx, cy] in pixels.
        pose: float32 (7,) camera-to-world [px, py, pz, qx, qy, qz, qw], OpenGL (looks down -Z, +Y up);
            read on the host once per call (not differentiated).
        width, height: image size; pixel (x, y) spans [x, x + 1) x [y, y + 1), row 0 at the top.
        spp: samples per pixel (>= 1); the image is their mean.
        seed: int; the random numbers are a function of (seed, pixel, sample, dimension) only
            (`stages.sampler`), so equal seeds give identical images and shared random numbers.
        max_depth: scattering events per path (0: emitters and environment seen directly; 1: direct light).
        rr_depth: Russian roulette from this depth on (>= max_depth: never).
        jitter: sample uniformly inside each pixel (True) or at its center (False).
        threads: on the CPU, render this many interleaved sets of rows on as many threads (the image is the same:
            each pixel's random numbers depend on the pixel only); ignored on a GPU.
        first_sample: render samples first_sample .. first_sample + spp - 1 of each pixel's sequence, so
            calls with first_sample = 0, spp, 2 spp, ... average (progressively) to one render of more spp.

    Returns:
        float32 array2d (N, 3), N = height * width, linear RGB radiance, row-major from the top row.
        Launched with record_tape=False. If a wp.Tape is recording and any parameter array of `scene`
        (see `PathScene.parameters`) requires grad, the tape gets the adjoint: its backward calls
        `render_path_backward` with the image's .grad and the same settings.
    """
    if not isinstance(scene, PathScene):
        raise TypeError(f"scene: expected a PathScene, got {type(scene).__name__}")
    rs = _settings(intrinsics, pose, width, height, spp, seed, max_depth, rr_depth, jitter, first_sample)
    dev = scene.device
    check_array("intrinsics", intrinsics, wp.float32, (4,), dev)
    want = [k for k, a in scene.parameters().items() if a.requires_grad and a.size > 0]
    out = wp.zeros((int(width) * int(height), 3), dtype=float, device=dev, requires_grad=bool(want))
    threads = _check_threads(threads)
    sc, no_grads = scene.arrays(), _grad_arrays(scene, 0)
    tape = active_tape()
    record = bool(want) and tape is not None
    # for the tape's backward: each path's radiance (12 bytes per sample), so the adjoint traces it once
    samples = wp.empty(int(width) * int(height) * int(spp) if record else 0, dtype=wp.vec3, device=dev)

    def launch(k, row0, rows, stride):
        wp.launch(render_kernel, dim=(rows, int(width)),
                  inputs=[sc, _band(rs, row0, stride), no_grads, int(record), samples], outputs=[out], device=dev,
                  record_tape=False)

    _run_bands(dev, int(height), threads, launch)
    if record:
        def backward():
            render_path_backward(scene, out.grad, intrinsics, pose, width, height, spp=spp, seed=seed,
                                 max_depth=max_depth, rr_depth=rr_depth, jitter=jitter, wrt=want, threads=threads,
                                 first_sample=first_sample, path_radiance=samples)

        tape.record_func(backward, [out, *[scene.parameters()[k] for k in want]])
    return out


def render_path_backward(scene: PathScene, grad_image: wp.array, intrinsics: wp.array, pose: wp.array, width: int,
                         height: int, *, spp: int = 16, seed: int = 0, max_depth: int = 4, rr_depth: int = 5,
                         jitter: bool = True, wrt=None, threads: int = 1, first_sample: int = 0,
                         path_radiance: wp.array | None = None) -> None:
    """Path replay backpropagation of `render_path` with the same arguments: ADDS
    sum_pixels grad_image . d(image)/d(theta) into `.grad` of each parameter array theta named in `wrt`.

    Args:
        scene, intrinsics, pose, width, height, spp, seed, max_depth, rr_depth, jitter, first_sample: exactly
            those of the `render_path` call being differentiated (same seed: the paths are replayed).
        grad_image: float32 array2d (N, 3), the adjoint of the image.
        wrt: names from `PathScene.parameters()` (albedo, colors, roughness, metallic, emission, env,
            point_position, point_color, point_intensity, dir_direction, dir_color, dir_intensity), or None
            for every one whose array requires grad. Each named array must have a .grad.
        path_radiance: wp.vec3 (N * spp,) each path's radiance from the forward pass (pixel-major), which
            `render_path` keeps when it records on a tape; None traces every path once more to get it (the
            adjoint then costs about two primal renders instead of one).
        threads: on the CPU, interleaved sets of rows on this many threads, each scattering into gradient buffers of
            its own that are then added into `.grad` (Warp's CPU atomics are plain adds, so threads must
            not share a buffer); the result equals one thread's up to float summation order.

    The gradient is that of the Monte Carlo estimate with sampling decisions held fixed (detached
    sampling): for parameters that do not change where paths go (albedo of Lambert surfaces, emission,
    environment texels, light colors, intensities, positions and directions) it equals the derivative of
    the same-seed image; for GGX roughness and metallic, which also steer the sampled directions, it equals
    it in expectation. Visibility is not differentiated: no gradient from moving shadow boundaries or
    silhouettes (e.g. of a light position whose shadow edge moves).
    Launched with record_tape=False.
    """
    if not isinstance(scene, PathScene):
        raise TypeError(f"scene: expected a PathScene, got {type(scene).__name__}")
    rs = _settings(intrinsics, pose, width, height, spp, seed, max_depth, rr_depth, jitter, first_sample)
    n = int(width) * int(height)
    dev = scene.device
    check_array("grad_image", grad_image, wp.float32, (n, 3), dev)
    params = scene.parameters()
    if wrt is None:
        wrt = [k for k, a in params.items() if a.requires_grad and a.size > 0]
    want = 0
    for k in wrt:
        if k not in params:
            raise ValueError(f"wrt: unknown parameter {k!r}; expected names from {sorted(params)}")
        if params[k].grad is None:
            raise ValueError(f"wrt: {k} has no .grad (create its array with requires_grad=True)")
        if params[k].size > 0:
            want |= _WANT_BITS[k]
    threads = _check_threads(threads)
    if path_radiance is not None:
        check_array("path_radiance", path_radiance, wp.vec3, (n * int(spp),), dev)
    if want == 0:
        return
    kept = wp.empty(0, dtype=wp.vec3, device=dev) if path_radiance is None else path_radiance
    sc = scene.arrays()
    named = [k for k in wrt if params[k].size > 0]
    private = {}  # band k > 0: its own zeroed gradient buffers

    def launch(k, row0, rows, stride):
        grads = None
        if k > 0:
            grads = private[k] = {name: wp.zeros_like(params[name].grad) for name in named}
        wp.launch(adjoint_kernel, dim=(rows, int(width)),
                  inputs=[sc, _band(rs, row0, stride), grad_image, int(path_radiance is not None), kept,
                          _grad_arrays(scene, want, grads)], device=dev, record_tape=False)

    _run_bands(dev, int(height), threads, launch)
    for grads in private.values():
        for name, g in grads.items():
            dst = _floats(params[name].grad)
            wp.launch(_add_into, dim=dst.shape[0], inputs=[_floats(g), dst], device=dev, record_tape=False)
