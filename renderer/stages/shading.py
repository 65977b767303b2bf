"""Shading stage: Lambert / GGX shading of per-pixel surface samples, and shadow-ray visibility.

Radiometry (docs/architecture.md): a point light gives irradiance intensity * color * max(0, n.l) / d^2,
a directional light intensity * color * max(0, n.l); the reflected radiance of one light is
BRDF * irradiance (per RGB channel). Ambient adds albedo * ambient (Lambert) or
albedo * (1 - metallic) * ambient (GGX: metals have no diffuse lobe), with no shadowing and no pi.

BRDFs, with n the normalized shading normal, v the unit vector to the camera, l the unit vector to
the light, h = normalize(l + v):
- Lambert (model 0): albedo / pi.
- GGX (model 1), Cook-Torrance: (1 - F) (1 - metallic) albedo / pi + D V F with
  D = a^2 / (pi ((n.h)^2 (a^2 - 1) + 1)^2), Trowbridge-Reitz with a = max(roughness^2, 1e-4);
  V = G2 / (4 n.l n.v), G2 the height-correlated Smith masking-shadowing (Heitz 2014), evaluated as
  V = 0.5 / (n.l sqrt((n.v)^2 (1 - a^2) + a^2) + n.v sqrt((n.l)^2 (1 - a^2) + a^2)),
  which needs no division by n.l n.v and stays finite at grazing angles;
  F = F0 + (1 - F0) (1 - v.h)^5 (Schlick) with F0 = mix(0.04, albedo, metallic).
  n.l, n.v and v.h are clamped at 0 (a camera behind the shading normal sees n.v = 0, where V has the
  finite limit 1 / (2 a n.l)); D is 0 where n.h <= 0.

The per-point math is exposed as `@wp.func`s (`shade_point`, `ambient_radiance`,
`point_light_irradiance`, ...) so other kernels (soft rasterizer shading at vertices) can call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import warp as wp

from ..checks import check_array as _check

MODEL_NONE = -1
MODEL_LAMBERT = 0
MODEL_GGX = 1

INV_PI = wp.constant(1.0 / math.pi)
ALPHA_MIN = wp.constant(1.0e-4)  # roughness below 0.01 acts as 0.01 (keeps D finite in float32)
FAR = wp.constant(1.0e20)  # shadow-ray length for directional lights


# ---------------------------------------------------------------------------------------------------
# Per-point device math


@wp.func
def lambert_brdf(albedo: wp.vec3) -> wp.vec3:
    return albedo * INV_PI


@wp.func
def ggx_distribution(nh: float, alpha: float) -> float:
    """Trowbridge-Reitz normal distribution D(h), zero for microfacets facing below the surface."""
    a2 = alpha * alpha
    # (1 - nh^2) + nh^2 a2, not nh^2 (a2 - 1) + 1: in float32 a2 - 1 rounds to -1 for a2 < 6e-8 (alpha
    # 1e-4 gives a2 = 1e-8), which makes d = 0 and D = 0 / 0 at nh = 1; this form stays >= nh^2 a2 > 0
    nh2 = wp.min(nh * nh, 1.0)
    d = (1.0 - nh2) + nh2 * a2
    return wp.where(nh > 0.0, a2 / (wp.pi * d * d), 0.0)


@wp.func
def smith_visibility(nl: float, nv: float, alpha: float) -> float:
    """Height-correlated Smith G2 / (4 n.l n.v)."""
    a2 = alpha * alpha
    gv = nl * wp.sqrt(nv * nv * (1.0 - a2) + a2)
    gl = nv * wp.sqrt(nl * nl * (1.0 - a2) + a2)
    return 0.5 / wp.max(gv + gl, 1.0e-12)


@wp.func
def fresnel_schlick(f0: wp.vec3, vh: float) -> wp.vec3:
    m = 1.0 - vh
    m2 = m * m
    return f0 + (wp.vec3(1.0) - f0) * (m2 * m2 * m)  # products, not pow: pow's adjoint is NaN at 0


@wp.func
def ggx_brdf(n: wp.vec3, v: wp.vec3, l: wp.vec3, albedo: wp.vec3, roughness: float,
             metallic: float) -> wp.vec3:
    alpha = wp.max(roughness * roughness, ALPHA_MIN)
    h = wp.normalize(l + v)
    nl = wp.max(wp.dot(n, l), 0.0)
    nv = wp.max(wp.dot(n, v), 0.0)
    nh = wp.dot(n, h)
    vh = wp.max(wp.dot(v, h), 0.0)
    f = fresnel_schlick(wp.lerp(wp.vec3(0.04), albedo, metallic), vh)
    diffuse = wp.cw_mul(wp.vec3(1.0) - f, albedo) * ((1.0 - metallic) * INV_PI)
    return diffuse + f * (ggx_distribution(nh, alpha) * smith_visibility(nl, nv, alpha))


@wp.func
def brdf(n: wp.vec3, v: wp.vec3, l: wp.vec3, albedo: wp.vec3, roughness: float, metallic: float,
         model: int) -> wp.vec3:
    """BRDF of shading model `model` (0 Lambert, 1 GGX, anything else zero). n, v, l unit vectors."""
    f = wp.vec3(0.0)
    if model == MODEL_GGX:
        f = ggx_brdf(n, v, l, albedo, roughness, metallic)
    elif model == MODEL_LAMBERT:
        f = lambert_brdf(albedo)
    return f


@wp.func
def point_light_direction(p: wp.vec3, light_position: wp.vec3) -> wp.vec3:
    """Unit vector from surface point p towards a point light."""
    return wp.normalize(light_position - p)


@wp.func
def point_light_irradiance(p: wp.vec3, n: wp.vec3, light_position: wp.vec3, color: wp.vec3,
                           intensity: float) -> wp.vec3:
    """intensity * color * max(0, n.l) / d^2 at point p with unit normal n."""
    d = light_position - p
    d2 = wp.max(wp.dot(d, d), 1.0e-12)
    cos = wp.max(wp.dot(n, d) / wp.sqrt(d2), 0.0)
    return color * (intensity * cos / d2)


@wp.func
def directional_light_direction(direction: wp.vec3) -> wp.vec3:
    """Unit vector towards a directional light, given the (unnormalized) direction it travels."""
    return -wp.normalize(direction)


@wp.func
def directional_light_irradiance(n: wp.vec3, direction: wp.vec3, color: wp.vec3, intensity: float) -> wp.vec3:
    """intensity * color * max(0, n.l) for a light travelling along `direction` (normalized here)."""
    cos = wp.max(wp.dot(n, directional_light_direction(direction)), 0.0)
    return color * (intensity * cos)


@wp.func
def shade_point(n: wp.vec3, v: wp.vec3, l: wp.vec3, irradiance: wp.vec3, albedo: wp.vec3, roughness: float,
                metallic: float, model: int) -> wp.vec3:
    """Radiance reflected towards v from one light of unit direction l and irradiance (cosine
    included). Callers looping over lights should accumulate by plain addition (linear, so Warp's
    dynamic-loop adjoint is exact) or into an output array."""
    return wp.cw_mul(brdf(n, v, l, albedo, roughness, metallic, model), irradiance)


@wp.func
def ambient_radiance(albedo: wp.vec3, metallic: float, ambient: wp.vec3, model: int) -> wp.vec3:
    r = wp.vec3(0.0)
    if model == MODEL_GGX:
        r = wp.cw_mul(albedo, ambient) * (1.0 - metallic)
    elif model == MODEL_LAMBERT:
        r = wp.cw_mul(albedo, ambient)
    return r


# ---------------------------------------------------------------------------------------------------
# Kernels


@wp.func
def _row3(a: wp.array2d(dtype=float), i: int) -> wp.vec3:
    return wp.vec3(a[i, 0], a[i, 1], a[i, 2])


@wp.func
def _accumulate(out: wp.array2d(dtype=float), i: int, c: wp.vec3):
    # Atomic adds into the output: the sum over lights carries no loop state through the adjoint.
    wp.atomic_add(out, i, 0, c[0])
    wp.atomic_add(out, i, 1, c[1])
    wp.atomic_add(out, i, 2, c[2])


@wp.func
def _shadow_factor(shadow: wp.array2d(dtype=float), use_shadow: int, i: int, j: int) -> float:
    s = 1.0
    if use_shadow != 0:
        s = shadow[i, j]
    return s


@wp.kernel
def shade_kernel(positions: wp.array2d(dtype=float), normals: wp.array2d(dtype=float),
                 albedo: wp.array2d(dtype=float), roughness: wp.array2d(dtype=float),
                 metallic: wp.array2d(dtype=float), model: wp.array(dtype=wp.int32),
                 pose: wp.array(dtype=float),
                 point_position: wp.array(dtype=wp.vec3), point_color: wp.array(dtype=wp.vec3),
                 point_intensity: wp.array(dtype=float), dir_direction: wp.array(dtype=wp.vec3),
                 dir_color: wp.array(dtype=wp.vec3), dir_intensity: wp.array(dtype=float),
                 ambient: wp.array(dtype=wp.vec3), shadow: wp.array2d(dtype=float), use_shadow: int,
                 out: wp.array2d(dtype=float)):
    i = wp.tid()
    m = int(model[i])
    if m >= 0:
        p = _row3(positions, i)
        n = wp.normalize(_row3(normals, i))
        v = wp.normalize(wp.vec3(pose[0], pose[1], pose[2]) - p)
        a = _row3(albedo, i)
        r = roughness[i, 0]
        mt = metallic[i, 0]
        _accumulate(out, i, ambient_radiance(a, mt, ambient[0], m))
        n_point = point_position.shape[0]
        for j in range(n_point):
            e = point_light_irradiance(p, n, point_position[j], point_color[j], point_intensity[j])
            c = shade_point(n, v, point_light_direction(p, point_position[j]), e, a, r, mt, m)
            _accumulate(out, i, c * _shadow_factor(shadow, use_shadow, i, j))
        for j in range(dir_direction.shape[0]):
            e = directional_light_irradiance(n, dir_direction[j], dir_color[j], dir_intensity[j])
            c = shade_point(n, v, directional_light_direction(dir_direction[j]), e, a, r, mt, m)
            _accumulate(out, i, c * _shadow_factor(shadow, use_shadow, i, n_point + j))


@wp.func
def shadow_ray(positions: wp.array2d(dtype=float), normals: wp.array2d(dtype=float), model: wp.array(dtype=wp.int32),
               point_position: wp.array(dtype=wp.vec3), dir_direction: wp.array(dtype=wp.vec3), eps: float,
               facing_only: int, i: int, j: int):
    """Sample i's shadow ray towards light j (points first, then directional): (trace, origin, direction (not
    normalized), max t). trace is False for background samples and, with `facing_only`, for lights behind the
    shading normal (they contribute max(0, n.l) = 0 there: no ray needed; the mask entry stays 1)."""
    trace = model[i] >= 0
    if trace and facing_only != 0:
        p0 = _row3(positions, i)
        n0 = _row3(normals, i)
        l0 = wp.vec3(0.0)
        if j < point_position.shape[0]:
            l0 = point_position[j] - p0
        else:
            l0 = -dir_direction[j - point_position.shape[0]]
        if wp.dot(n0, l0) < 0.0:
            trace = False
    o = wp.vec3(0.0)
    d = wp.vec3(0.0)
    max_t = FAR
    if trace:
        p = _row3(positions, i)
        n = wp.normalize(_row3(normals, i))
        n_point = point_position.shape[0]
        to_light = wp.vec3(0.0)
        if j < n_point:
            to_light = point_position[j] - p
        else:
            to_light = directional_light_direction(dir_direction[j - n_point])
        # Leave the surface on the light's side; the offset grows with |p| like float32 roundoff does.
        side = wp.where(wp.dot(n, to_light) < 0.0, -1.0, 1.0)
        scale = 1.0 + wp.max(wp.abs(p[0]), wp.max(wp.abs(p[1]), wp.abs(p[2])))
        o = p + n * (side * eps * scale)
        if j < n_point:
            d = point_position[j] - o
            max_t = wp.length(d)
        else:
            d = to_light
    return trace, o, d, max_t


@wp.kernel
def shadow_kernel(bvh: wp.uint64, positions: wp.array2d(dtype=float), normals: wp.array2d(dtype=float),
                  model: wp.array(dtype=wp.int32), point_position: wp.array(dtype=wp.vec3),
                  dir_direction: wp.array(dtype=wp.vec3), eps: float, facing_only: int,
                  out: wp.array2d(dtype=float)):
    i, j = wp.tid()
    trace, o, d, max_t = shadow_ray(positions, normals, model, point_position, dir_direction, eps, facing_only,
                                    i, j)
    lit = 1.0
    if model[i] >= 0 and not trace:  # a light behind the normal (facing_only)
        lit = 0.0
    if trace:
        if wp.mesh_query_ray_anyhit(bvh, o, wp.normalize(d), max_t):
            lit = 0.0
    out[i, j] = lit


# ---------------------------------------------------------------------------------------------------
# Python launchers


@dataclass
class Lights:
    """Packed lights, as `shade` and `shadow_mask` read them (all arrays on one device).

    point_position (Lp,) vec3, point_color (Lp,) vec3, point_intensity (Lp,) float;
    dir_direction (Ld,) vec3 the direction the light travels (need not be unit), dir_color (Ld,) vec3,
    dir_intensity (Ld,) float; ambient (1,) vec3 the sum of ambient colors. Lp or Ld may be 0.
    Shadow-mask columns are ordered point lights first, then directional lights."""

    point_position: wp.array
    point_color: wp.array
    point_intensity: wp.array
    dir_direction: wp.array
    dir_color: wp.array
    dir_intensity: wp.array
    ambient: wp.array

    def __post_init__(self) -> None:
        dev = self.ambient.device if isinstance(self.ambient, wp.array) else None
        _check("lights.ambient", self.ambient, wp.vec3, (1,))
        _check("lights.point_position", self.point_position, wp.vec3, (None,), dev)
        lp = self.point_position.shape[0]
        _check("lights.point_color", self.point_color, wp.vec3, (lp,), dev)
        _check("lights.point_intensity", self.point_intensity, wp.float32, (lp,), dev)
        _check("lights.dir_direction", self.dir_direction, wp.vec3, (None,), dev)
        ld = self.dir_direction.shape[0]
        _check("lights.dir_color", self.dir_color, wp.vec3, (ld,), dev)
        _check("lights.dir_intensity", self.dir_intensity, wp.float32, (ld,), dev)

    @property
    def num_point(self) -> int:
        return self.point_position.shape[0]

    @property
    def num_directional(self) -> int:
        return self.dir_direction.shape[0]

    @property
    def count(self) -> int:
        """Lp + Ld, the number of shadow-mask columns."""
        return self.num_point + self.num_directional

    @property
    def device(self):
        return self.ambient.device

    def arrays(self) -> list[wp.array]:
        return [self.point_position, self.point_color, self.point_intensity, self.dir_direction,
                self.dir_color, self.dir_intensity, self.ambient]

    @classmethod
    def create(cls, point_position=None, point_color=None, point_intensity=None, dir_direction=None,
               dir_color=None, dir_intensity=None, ambient=None, *, device="cpu",
               requires_grad: bool = False) -> Lights:
        """Build from array-likes: positions/colors/directions (L, 3), intensities (L,), ambient (3,).
        Omitted lights are empty; omitted colors are white, intensities 1, ambient black."""

        def vec(x, n, fill):
            x = np.full((n, 3), fill, np.float32) if x is None else np.asarray(x, np.float32).reshape(-1, 3)
            return wp.array(x, dtype=wp.vec3, device=device, requires_grad=requires_grad)

        def scalar(x, n):
            x = np.ones(n, np.float32) if x is None else np.asarray(x, np.float32).reshape(-1)
            return wp.array(x, dtype=float, device=device, requires_grad=requires_grad)

        lp = 0 if point_position is None else np.asarray(point_position).reshape(-1, 3).shape[0]
        ld = 0 if dir_direction is None else np.asarray(dir_direction).reshape(-1, 3).shape[0]
        return cls(vec(point_position, lp, 0.0), vec(point_color, lp, 1.0), scalar(point_intensity, lp),
                   vec(dir_direction, ld, 0.0), vec(dir_color, ld, 1.0), scalar(dir_intensity, ld),
                   vec(ambient, 1, 0.0))


def shade(positions: wp.array, normals: wp.array, albedo: wp.array, roughness: wp.array, metallic: wp.array,
          model: wp.array, pose: wp.array, lights: Lights, shadow: wp.array | None = None) -> wp.array:
    """Shade N surface samples under `lights`, seen from the camera at pose[0:3].

    Args:
        positions: (N, 3) float world-space surface points.
        normals: (N, 3) float shading normals (normalized here, any nonzero length).
        albedo: (N, 3) float linear RGB.
        roughness: (N, 1) float perceptual roughness (GGX a = roughness^2; unused by Lambert).
        metallic: (N, 1) float in [0, 1] (unused by Lambert).
        model: (N,) int32 per sample: -1 none (output 0), 0 Lambert, 1 GGX.
        pose: (7,) float camera-to-world [px, py, pz, qx, qy, qz, qw]; only the position is read.
        lights: the packed `Lights`.
        shadow: (N, Lp + Ld) float multiplying each light's contribution (e.g. `shadow_mask`), or None.

    Returns:
        (N, 3) float reflected radiance, differentiable w.r.t. positions, normals, albedo, roughness,
        metallic, pose (position part) and every light array; not w.r.t. `shadow`.
    """
    _check("positions", positions, wp.float32, (None, 3))
    dev, n = positions.device, positions.shape[0]
    _check("normals", normals, wp.float32, (n, 3), dev)
    _check("albedo", albedo, wp.float32, (n, 3), dev)
    _check("roughness", roughness, wp.float32, (n, 1), dev)
    _check("metallic", metallic, wp.float32, (n, 1), dev)
    _check("model", model, wp.int32, (n,), dev)
    _check("pose", pose, wp.float32, (7,), dev)
    if not isinstance(lights, Lights):
        raise TypeError(f"lights: expected a Lights, got {type(lights).__name__}")
    if lights.device != dev:
        raise ValueError(f"lights: expected arrays on device {dev}, got {lights.device}")
    if shadow is None:
        shadow_arr, use_shadow = wp.empty((0, 0), dtype=float, device=dev), 0
    else:
        _check("shadow", shadow, wp.float32, (n, lights.count), dev)
        shadow_arr, use_shadow = shadow, 1
    diff = [positions, normals, albedo, roughness, metallic, pose, *lights.arrays()]
    out = wp.zeros((n, 3), dtype=float, device=dev, requires_grad=any(a.requires_grad for a in diff))
    wp.launch(shade_kernel, dim=n, device=dev,
              inputs=[positions, normals, albedo, roughness, metallic, model, pose, *lights.arrays(),
                      shadow_arr, use_shadow],
              outputs=[out], record_tape=out.requires_grad)
    return out


def shadow_mask(bvh_id, positions: wp.array, normals: wp.array, model: wp.array, lights: Lights,
                eps: float = 1.0e-4, facing_only: bool = False) -> wp.array:
    """Visibility of every light from every sample: 1 lit, 0 occluded (columns: point lights, then
    directional lights; samples with model -1 get 1).

    A shadow ray starts at p + s * eps * (1 + max_k |p_k|) * n, with n the normalized normal and
    s = +-1 choosing the light's side of the surface (the offset avoids self-hits and scales like
    float32 roundoff of p), and tests any hit of the mesh `bvh_id` (a `wp.Mesh.id`, wp.uint64) before
    the point light, or at any distance for a directional light.

    With `facing_only`, a sample whose normal faces away from a light (n . l < 0, l towards the light,
    unnormalized) gets 0 for it without a ray: `shade` multiplies the mask by that light's
    max(0, n.l) = 0 there (Lambert and GGX), so the rendered image and its gradients are the same
    (`render_view` uses this; the mask is then not the geometric visibility on those entries).

    Not differentiable: launched with record_tape=False, so no gradients flow through shadow
    boundaries (`shade` treats the mask as a constant).

    Returns (N, Lp + Ld) float.
    """
    _check("positions", positions, wp.float32, (None, 3))
    dev, n = positions.device, positions.shape[0]
    _check("normals", normals, wp.float32, (n, 3), dev)
    _check("model", model, wp.int32, (n,), dev)
    if not isinstance(lights, Lights):
        raise TypeError(f"lights: expected a Lights, got {type(lights).__name__}")
    if lights.device != dev:
        raise ValueError(f"lights: expected arrays on device {dev}, got {lights.device}")
    if isinstance(bvh_id, wp.Mesh):
        raise TypeError("bvh_id: expected the mesh id (wp.Mesh.id, a wp.uint64), got the wp.Mesh itself")
    out = wp.empty((n, lights.count), dtype=float, device=dev)
    if n > 0 and lights.count > 0:
        wp.launch(shadow_kernel, dim=(n, lights.count), device=dev, record_tape=False,
                  inputs=[bvh_id, positions, normals, model, lights.point_position,
                          lights.dir_direction, float(eps), int(bool(facing_only))],
                  outputs=[out])
    return out
