"""Warp kernels for tests/test_stage_pathtrace.py (Warp needs kernels in an importable file)."""

import warp as wp
from drstudio.renderer.stages import pathtrace as pt
from drstudio.renderer.stages.shading import ggx_brdf


@wp.kernel
def ggx_weighted(n: wp.array(dtype=wp.vec3), v: wp.array(dtype=wp.vec3), l: wp.array(dtype=wp.vec3),
                 albedo: wp.array(dtype=wp.vec3), rough: wp.array(dtype=float), metal: wp.array(dtype=float),
                 g: wp.array(dtype=wp.vec3), out: wp.array(dtype=float)):
    i = wp.tid()
    out[i] = wp.dot(g[i], ggx_brdf(n[i], v[i], wp.normalize(l[i]), albedo[i], rough[i], metal[i]))


@wp.kernel(enable_backward=False)
def ggx_hand_grads(n: wp.array(dtype=wp.vec3), v: wp.array(dtype=wp.vec3), l: wp.array(dtype=wp.vec3),
                   albedo: wp.array(dtype=wp.vec3), rough: wp.array(dtype=float), metal: wp.array(dtype=float),
                   g: wp.array(dtype=wp.vec3), d_params: wp.array(dtype=pt.vec5), d_l: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    lu = wp.normalize(l[i])
    d_params[i] = pt.ggx_brdf_grad(n[i], v[i], lu, albedo[i], rough[i], metal[i], g[i])
    # chain rule through the normalization of l, as the autodiff kernel sees it
    gl = pt.ggx_brdf_grad_l(n[i], v[i], lu, albedo[i], rough[i], metal[i], g[i])
    d_l[i] = (gl - lu * wp.dot(lu, gl)) / wp.length(l[i])
