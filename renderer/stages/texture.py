"""Texture stage: a pool of packed textures with 2x2-box mip pyramids, sampled per pixel by index.

All textures of one channel count C (3 for albedo, 1 for roughness/metallic; any C in 1..3 works)
live in ONE flat float array, so a single kernel samples every material. Conventions:
- A texture is a (h, w, C) float array; texel (x, y) is row y, column x. uv in [0, 1] covers the
  texture, u to the right, v DOWN: v = 0 is the first row (image convention, row 0 at the top).
- Texel centers are at ((x + 0.5) / w, (y + 0.5) / h); sampling is bilinear between the four
  nearest centers, with "wrap" (repeat) or "clamp" (to edge) addressing per texture.
- Mip level l + 1 is the 2x2 box filter of level l with size max(floor(w / 2), 1) x
  max(floor(h / 2), 1); on odd sizes the footprint is clamped to the edge. Levels go down to 1x1.
- Trilinear sampling blends the two levels around lod = log2(rho), rho the longest screen-space
  footprint axis in level-0 texels, clamped to [0, levels - 1].

Gradients flow to the texels (pool.data, hence the source textures through the build) and to uv.
The lod is treated as a constant: no gradient reaches `uv_da`.

Device functions for other kernels (all take `data = pool.data`, `table = pool.table`):
`sample_bilinear_level(data, table, tex, level, u, v) -> wp.vec3`,
`sample_trilinear(data, table, tex, u, v, lod) -> wp.vec3`,
`mip_lod(table, tex, du_dx, du_dy, dv_dx, dv_dy) -> float`. They return C channels in a vec3, the
unused lanes 0. `tex` must be a valid index (the `sample` kernel handles -1 before calling them).

Pool table layout (int32, shape (T, 3 + 3 * L), L the most levels of any texture): per texture
[levels, wrap (WRAP_REPEAT | WRAP_CLAMP), C, then (offset, w, h) per level]; offset counts floats
into `data`, where texel (x, y) channel c of a level is data[offset + (y * w + x) * C + c].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import warp as wp

from ..thread_tape import active_tape

WRAP_REPEAT = wp.constant(0)
WRAP_CLAMP = wp.constant(1)
WRAP_MODES = {"wrap": 0, "clamp": 1}
_HEAD = wp.constant(3)  # table columns before the per-level (offset, w, h) triples


@wp.func
def _address(i: int, n: int, wrap: int) -> int:
    if wrap == WRAP_REPEAT:
        return ((i % n) + n) % n  # % truncates toward zero in Warp, as in C
    return wp.clamp(i, 0, n - 1)


@wp.func
def _fetch(data: wp.array(dtype=float), base: int, w: int, c: int, x: int, y: int) -> wp.vec3:
    i = base + (y * w + x) * c
    r = data[i]
    g = 0.0
    b = 0.0
    if c > 1:
        g = data[i + 1]
    if c > 2:
        b = data[i + 2]
    return wp.vec3(r, g, b)


@wp.func
def sample_bilinear_level(data: wp.array(dtype=float), table: wp.array2d(dtype=wp.int32), tex: int,
                          level: int, u: float, v: float) -> wp.vec3:
    """Bilinear sample of mip `level` (clamped to the texture's levels) of texture `tex` at (u, v)."""
    level = wp.clamp(level, 0, table[tex, 0] - 1)
    col = _HEAD + 3 * level
    base = table[tex, col]
    w = table[tex, col + 1]
    h = table[tex, col + 2]
    wrap = table[tex, 1]
    c = table[tex, 2]
    if wrap == WRAP_REPEAT:
        # reduce to [0, 1) first so the integer texel index cannot overflow; d(frac)/du = 1
        u = u - wp.floor(u)
        v = v - wp.floor(v)
    # texel-space position measured from the first texel center; clamping outside [-1, n] changes
    # nothing (clamp-to-edge is constant there) but keeps int() in range
    x = wp.clamp(u * float(w) - 0.5, -1.0, float(w))
    y = wp.clamp(v * float(h) - 0.5, -1.0, float(h))
    x0 = wp.floor(x)
    y0 = wp.floor(y)
    fx = x - x0
    fy = y - y0
    xa = _address(int(x0), w, wrap)
    xb = _address(int(x0) + 1, w, wrap)
    ya = _address(int(y0), h, wrap)
    yb = _address(int(y0) + 1, h, wrap)
    top = (1.0 - fx) * _fetch(data, base, w, c, xa, ya) + fx * _fetch(data, base, w, c, xb, ya)
    bottom = (1.0 - fx) * _fetch(data, base, w, c, xa, yb) + fx * _fetch(data, base, w, c, xb, yb)
    return (1.0 - fy) * top + fy * bottom


@wp.func
def sample_trilinear(data: wp.array(dtype=float), table: wp.array2d(dtype=wp.int32), tex: int,
                     u: float, v: float, lod: float) -> wp.vec3:
    """Blend of the bilinear samples of the two levels around `lod` (clamped to [0, levels - 1])."""
    lod = wp.clamp(lod, 0.0, float(table[tex, 0] - 1))
    l0 = wp.floor(lod)
    f = lod - l0
    s = sample_bilinear_level(data, table, tex, int(l0), u, v)
    if f > 0.0:  # skip the second fetch for bilinear (lod 0) and integer lods
        s = s + f * (sample_bilinear_level(data, table, tex, int(l0) + 1, u, v) - s)
    return s


@wp.func
def mip_lod(table: wp.array2d(dtype=wp.int32), tex: int, du_dx: float, du_dy: float, dv_dx: float,
            dv_dy: float) -> float:
    """log2 of the longest pixel footprint axis in level-0 texels (unclamped; -99.7 for a zero footprint)."""
    w = float(table[tex, _HEAD + 1])
    h = float(table[tex, _HEAD + 2])
    rho = wp.max(wp.length(wp.vec2(du_dx * w, dv_dx * h)), wp.length(wp.vec2(du_dy * w, dv_dy * h)))
    return wp.log2(wp.max(rho, 1.0e-30))


@wp.func_grad(mip_lod)
def _adj_mip_lod(table: wp.array2d(dtype=wp.int32), tex: int, du_dx: float, du_dy: float, dv_dx: float,
                 dv_dy: float, adj_ret: float):
    pass  # the lod is a constant for differentiation: no gradient to the uv derivatives


@wp.kernel(enable_backward=False)
def _copy_rows(src: wp.array(dtype=float), data: wp.array(dtype=float), offset: int, row: int):
    # one thread per texture row (row = w * C floats): a texture is a contiguous (h, w, C) block
    y = wp.tid()
    for j in range(y * row, (y + 1) * row):
        data[offset + j] = src[j]


@wp.kernel(enable_backward=False)
def _copy_rows_adjoint(adj_data: wp.array(dtype=float), offset: int, row: int, adj_src: wp.array(dtype=float)):
    y = wp.tid()
    for j in range(y * row, (y + 1) * row):
        adj_src[j] = adj_src[j] + adj_data[offset + j]


@wp.kernel(enable_backward=False)
def _downsample(data: wp.array(dtype=float), src: int, sw: int, sh: int, dst: int, dw: int, channels: int):
    y, x = wp.tid()
    # 2x2 box footprint, clamped to the source edge for odd sizes
    x0 = wp.min(2 * x, sw - 1)
    x1 = wp.min(2 * x + 1, sw - 1)
    y0 = wp.min(2 * y, sh - 1)
    y1 = wp.min(2 * y + 1, sh - 1)
    for c in range(channels):
        s = (data[src + (y0 * sw + x0) * channels + c] + data[src + (y0 * sw + x1) * channels + c]
             + data[src + (y1 * sw + x0) * channels + c] + data[src + (y1 * sw + x1) * channels + c])
        data[dst + (y * dw + x) * channels + c] = 0.25 * s


@wp.kernel(enable_backward=False)
def _downsample_adjoint(adj: wp.array(dtype=float), src: int, sw: int, sh: int, dst: int, dw: int,
                        channels: int):
    y, x = wp.tid()
    x0 = wp.min(2 * x, sw - 1)
    x1 = wp.min(2 * x + 1, sw - 1)
    y0 = wp.min(2 * y, sh - 1)
    y1 = wp.min(2 * y + 1, sh - 1)
    for c in range(channels):
        g = 0.25 * adj[dst + (y * dw + x) * channels + c]
        # atomic: on odd sizes the clamped footprints of neighbouring texels overlap
        wp.atomic_add(adj, src + (y0 * sw + x0) * channels + c, g)
        wp.atomic_add(adj, src + (y0 * sw + x1) * channels + c, g)
        wp.atomic_add(adj, src + (y1 * sw + x0) * channels + c, g)
        wp.atomic_add(adj, src + (y1 * sw + x1) * channels + c, g)


LEVELS_PER_LAUNCH = 4  # mip levels one `_downsample_square` or `_downsample_adjoint_square` launch handles


@wp.func
def _square_children(table: wp.array2d(dtype=wp.int32), tex: int, sw: int, level: int, x: int, y: int, channels: int,
                     c: int) -> wp.vec4i:
    """Flat indices of channel c of the 2x2 texels of level - 1 (sw texels wide, square) under texel (x, y) of
    `level`, in the order (x0, y0), (x1, y0), (x0, y1), (x1, y1)."""
    src = table[tex, _HEAD + 3 * (level - 1)]
    x0 = wp.min(2 * x, sw - 1)
    x1 = wp.min(2 * x + 1, sw - 1)
    y0 = wp.min(2 * y, sw - 1)
    y1 = wp.min(2 * y + 1, sw - 1)
    return wp.vec4i(src + (y0 * sw + x0) * channels + c, src + (y0 * sw + x1) * channels + c,
                    src + (y1 * sw + x0) * channels + c, src + (y1 * sw + x1) * channels + c)


@wp.kernel(enable_backward=False)
def _downsample_square(data: wp.array(dtype=float), table: wp.array2d(dtype=wp.int32), tex: int, size: int,
                       first: int, last: int, channels: int):
    # levels first..last of a square power-of-two pyramid (level l is size >> l texels wide): one thread per texel
    # of level `last` computes its block of each of these levels from the level below, as _downsample does
    ty, tx = wp.tid()
    for level in range(first, last + 1):
        r = 1 << (last - level)  # the block's side at this level
        sw = size >> (level - 1)
        dst = table[tex, _HEAD + 3 * level]
        for y in range(ty * r, ty * r + r):
            for x in range(tx * r, tx * r + r):
                for c in range(channels):
                    q = _square_children(table, tex, sw, level, x, y, channels, c)
                    data[dst + (y * (sw >> 1) + x) * channels + c] = 0.25 * (data[q[0]] + data[q[1]] + data[q[2]]
                                                                           + data[q[3]])


@wp.kernel(enable_backward=False)
def _downsample_adjoint_square(adj: wp.array(dtype=float), table: wp.array2d(dtype=wp.int32), tex: int, size: int,
                               top: int, bottom: int, channels: int):
    # _downsample_adjoint of levels top down to bottom of a square power-of-two pyramid: one thread per texel of
    # level `top` adds a quarter of each texel of its block into the four below it, level by level (each of those
    # is added to once, from its one parent: the same adds in the same order as one launch per level)
    ty, tx = wp.tid()
    for k in range(top - bottom + 1):
        level = top - k
        r = 1 << k  # the block's side at this level
        sw = size >> (level - 1)
        dst = table[tex, _HEAD + 3 * level]
        for y in range(ty * r, ty * r + r):
            for x in range(tx * r, tx * r + r):
                for c in range(channels):
                    g = 0.25 * adj[dst + (y * (sw >> 1) + x) * channels + c]
                    q = _square_children(table, tex, sw, level, x, y, channels, c)
                    for i in range(4):
                        adj[q[i]] = adj[q[i]] + g


def _square_pyramid(chain: list[tuple[int, int]]) -> bool:
    """Whether a pyramid's levels halve exactly (a square power-of-two texture, with its mips or without): then
    `_downsample_square` and `_downsample_adjoint_square` build it and run its adjoint LEVELS_PER_LAUNCH levels a
    launch."""
    w, h = chain[0]
    return w == h and w & (w - 1) == 0 and len(chain) in (1, w.bit_length())


def _flat(a: wp.array) -> wp.array:
    """A contiguous float array viewed as (size,) floats (no copy; keep `a` alive meanwhile)."""
    return wp.array(ptr=a.ptr, dtype=float, shape=(a.size,), device=a.device)


@wp.kernel(enable_backward=False)
def _sample(data: wp.array(dtype=float), table: wp.array2d(dtype=wp.int32),
            tex_index: wp.array(dtype=wp.int32), uv: wp.array2d(dtype=float), uv_da: wp.array2d(dtype=float),
            use_mips: int, scale: wp.array2d(dtype=float), use_scale: int, out: wp.array2d(dtype=float)):
    i = wp.tid()
    t = tex_index[i]
    if t < 0 or t >= table.shape[0]:
        return  # out is zero-initialized
    lod = 0.0
    if use_mips != 0:
        lod = mip_lod(table, t, uv_da[i, 0], uv_da[i, 1], uv_da[i, 2], uv_da[i, 3])
    s = sample_trilinear(data, table, t, uv[i, 0], uv[i, 1], lod)
    for k in range(out.shape[1]):
        v = s[k]
        if use_scale != 0:
            v = v * scale[i, k]
        out[i, k] = v


@wp.func
def _scatter(adj_data: wp.array(dtype=float), base: int, w: int, c: int, x: int, y: int, g: wp.vec3):
    i = base + (y * w + x) * c
    for k in range(c):
        wp.atomic_add(adj_data, i + k, g[k])


_vec5 = wp.types.vector(length=5, dtype=float)


@wp.func
def _bilinear_adjoint(data: wp.array(dtype=float), adj_data: wp.array(dtype=float), want_data: int,
                      table: wp.array2d(dtype=wp.int32), tex: int, level: int, u: float, v: float, g: wp.vec3,
                      want_uv: int) -> _vec5:
    """Adjoint of `sample_bilinear_level` for the output gradient g: adds g times each of the 4 texels'
    bilinear weights into adj_data (when want_data) and returns (dot(g, ds/du), dot(g, ds/dv), s) with s the
    sample itself (when want_uv, else zeros: the texels are read for both). Mirrors the forward's addressing
    and arithmetic line by line."""
    level = wp.clamp(level, 0, table[tex, 0] - 1)
    col = _HEAD + 3 * level
    base = table[tex, col]
    w = table[tex, col + 1]
    h = table[tex, col + 2]
    wrap = table[tex, 1]
    c = table[tex, 2]
    if wrap == WRAP_REPEAT:
        u = u - wp.floor(u)  # d/du = 1
        v = v - wp.floor(v)
    xr = u * float(w) - 0.5
    yr = v * float(h) - 0.5
    x = wp.clamp(xr, -1.0, float(w))
    y = wp.clamp(yr, -1.0, float(h))
    x0 = wp.floor(x)
    y0 = wp.floor(y)
    fx = x - x0
    fy = y - y0
    xa = _address(int(x0), w, wrap)
    xb = _address(int(x0) + 1, w, wrap)
    ya = _address(int(y0), h, wrap)
    yb = _address(int(y0) + 1, h, wrap)
    if want_data != 0:
        _scatter(adj_data, base, w, c, xa, ya, g * ((1.0 - fx) * (1.0 - fy)))
        _scatter(adj_data, base, w, c, xb, ya, g * (fx * (1.0 - fy)))
        _scatter(adj_data, base, w, c, xa, yb, g * ((1.0 - fx) * fy))
        _scatter(adj_data, base, w, c, xb, yb, g * (fx * fy))
    d = _vec5(0.0, 0.0, 0.0, 0.0, 0.0)
    if want_uv != 0:
        t00 = _fetch(data, base, w, c, xa, ya)
        t10 = _fetch(data, base, w, c, xb, ya)
        t01 = _fetch(data, base, w, c, xa, yb)
        t11 = _fetch(data, base, w, c, xb, yb)
        ds_dfx = (1.0 - fy) * (t10 - t00) + fy * (t11 - t01)
        ds_dfy = (1.0 - fx) * (t01 - t00) + fx * (t11 - t10)
        # d fx / du = w inside the clamp (wp.clamp's adjoint passes at the bounds too), 0 outside
        dx = wp.where(xr < -1.0 or xr > float(w), 0.0, float(w))
        dy = wp.where(yr < -1.0 or yr > float(h), 0.0, float(h))
        top = (1.0 - fx) * t00 + fx * t10
        bottom = (1.0 - fx) * t01 + fx * t11
        s = (1.0 - fy) * top + fy * bottom
        d = _vec5(wp.dot(g, ds_dfx) * dx, wp.dot(g, ds_dfy) * dy, s[0], s[1], s[2])
    return d


@wp.kernel(enable_backward=False)
def _sample_adjoint(data: wp.array(dtype=float), table: wp.array2d(dtype=wp.int32),
                    tex_index: wp.array(dtype=wp.int32), uv: wp.array2d(dtype=float),
                    uv_da: wp.array2d(dtype=float), use_mips: int, scale: wp.array2d(dtype=float),
                    use_scale: int, adj_out: wp.array2d(dtype=float), adj_data: wp.array(dtype=float),
                    want_data: int, adj_uv: wp.array2d(dtype=float), want_uv: int,
                    adj_scale: wp.array2d(dtype=float), want_scale: int):
    i = wp.tid()
    t = tex_index[i]
    if t < 0 or t >= table.shape[0]:
        return
    lod = 0.0
    if use_mips != 0:
        lod = mip_lod(table, t, uv_da[i, 0], uv_da[i, 1], uv_da[i, 2], uv_da[i, 3])
    u = uv[i, 0]
    v = uv[i, 1]
    g = wp.vec3(0.0)
    for k in range(adj_out.shape[1]):
        gk = adj_out[i, k]
        if use_scale != 0:
            gk = gk * scale[i, k]
        g[k] = gk
    if want_scale != 0 and want_uv == 0:  # out = s * scale: d/dscale = s
        s = sample_trilinear(data, table, t, u, v, lod)
        for k in range(adj_out.shape[1]):
            wp.atomic_add(adj_scale, i, k, adj_out[i, k] * s[k])
    # the forward's level blend: s = s0 + f (s1 - s0), f = frac(clamped lod), the lod a constant
    lod = wp.clamp(lod, 0.0, float(table[t, 0] - 1))
    l0 = wp.floor(lod)
    f = lod - l0
    d = _bilinear_adjoint(data, adj_data, want_data, table, t, int(l0), u, v, g * (1.0 - f), want_uv)
    s = wp.vec3(d[2], d[3], d[4])
    if f > 0.0:
        d1 = _bilinear_adjoint(data, adj_data, want_data, table, t, int(l0) + 1, u, v, g * f, want_uv)
        d = d + d1
        s = s + f * (wp.vec3(d1[2], d1[3], d1[4]) - s)
    if want_uv != 0:
        wp.atomic_add(adj_uv, i, 0, d[0])
        wp.atomic_add(adj_uv, i, 1, d[1])
        if want_scale != 0:  # the sample from the texels the uv gradient read (as sample_trilinear blends them)
            for k in range(adj_out.shape[1]):
                wp.atomic_add(adj_scale, i, k, adj_out[i, k] * s[k])


@wp.func
def _footprint_level(table: wp.array2d(dtype=wp.int32), tex: int, level: int, u: float, v: float, weight: float,
                     idx: wp.array2d(dtype=wp.int32), w: wp.array2d(dtype=float), i: int, first: int):
    """The 4 texel addresses (of channel 0) and weights * `weight` of `sample_bilinear_level`."""
    level = wp.clamp(level, 0, table[tex, 0] - 1)
    col = _HEAD + 3 * level
    base = table[tex, col]
    tw = table[tex, col + 1]
    th = table[tex, col + 2]
    wrap = table[tex, 1]
    c = table[tex, 2]
    if wrap == WRAP_REPEAT:
        u = u - wp.floor(u)
        v = v - wp.floor(v)
    x = wp.clamp(u * float(tw) - 0.5, -1.0, float(tw))
    y = wp.clamp(v * float(th) - 0.5, -1.0, float(th))
    x0 = wp.floor(x)
    y0 = wp.floor(y)
    fx = x - x0
    fy = y - y0
    xa = _address(int(x0), tw, wrap)
    xb = _address(int(x0) + 1, tw, wrap)
    ya = _address(int(y0), th, wrap)
    yb = _address(int(y0) + 1, th, wrap)
    idx[i, first] = base + (ya * tw + xa) * c
    idx[i, first + 1] = base + (ya * tw + xb) * c
    idx[i, first + 2] = base + (yb * tw + xa) * c
    idx[i, first + 3] = base + (yb * tw + xb) * c
    w[i, first] = weight * (1.0 - fx) * (1.0 - fy)
    w[i, first + 1] = weight * fx * (1.0 - fy)
    w[i, first + 2] = weight * (1.0 - fx) * fy
    w[i, first + 3] = weight * fx * fy


@wp.kernel(enable_backward=False)
def _footprint(table: wp.array2d(dtype=wp.int32), tex_index: wp.array(dtype=wp.int32), uv: wp.array2d(dtype=float),
               uv_da: wp.array2d(dtype=float), use_mips: int, idx: wp.array2d(dtype=wp.int32),
               w: wp.array2d(dtype=float)):
    i = wp.tid()
    t = tex_index[i]
    if t < 0 or t >= table.shape[0]:
        for j in range(8):
            idx[i, j] = 0
            w[i, j] = 0.0
        return
    lod = 0.0
    if use_mips != 0:
        lod = mip_lod(table, t, uv_da[i, 0], uv_da[i, 1], uv_da[i, 2], uv_da[i, 3])
    lod = wp.clamp(lod, 0.0, float(table[t, 0] - 1))
    l0 = wp.floor(lod)
    f = lod - l0
    _footprint_level(table, t, int(l0), uv[i, 0], uv[i, 1], 1.0 - f, idx, w, i, 0)
    _footprint_level(table, t, int(l0) + 1, uv[i, 0], uv[i, 1], f, idx, w, i, 4)


@wp.kernel(enable_backward=False)
def _gather(data: wp.array(dtype=float), idx: wp.array2d(dtype=wp.int32), w: wp.array2d(dtype=float),
            scale: wp.array2d(dtype=float), use_scale: int, out: wp.array2d(dtype=float)):
    i = wp.tid()
    for k in range(out.shape[1]):
        s = float(0.0)
        for j in range(8):
            s += w[i, j] * data[idx[i, j] + k]
        if use_scale != 0:
            s = s * scale[i, k]
        out[i, k] = s


@wp.kernel(enable_backward=False)
def _gather_adjoint(data: wp.array(dtype=float), idx: wp.array2d(dtype=wp.int32), w: wp.array2d(dtype=float),
                    scale: wp.array2d(dtype=float), use_scale: int, adj_out: wp.array2d(dtype=float),
                    adj_data: wp.array(dtype=float), want_data: int, adj_scale: wp.array2d(dtype=float),
                    want_scale: int):
    i = wp.tid()
    for k in range(adj_out.shape[1]):
        g = adj_out[i, k]
        if want_scale != 0:
            s = float(0.0)
            for j in range(8):
                s += w[i, j] * data[idx[i, j] + k]
            wp.atomic_add(adj_scale, i, k, g * s)
        if use_scale != 0:
            g = g * scale[i, k]
        if want_data != 0 and g != 0.0:
            for j in range(8):
                wp.atomic_add(adj_data, idx[i, j] + k, w[i, j] * g)


# ---------------------------------------------------------------------------------------------------------


@dataclass
class TexturePool:
    """Textures of one channel count packed with their mip pyramids (see the module docstring).

    data: (total,) float32, requires_grad; table: (T, 3 + 3 L) int32 on the same device; channels: C.
    Host copies of the table: sizes[t][l] = (w, h) and offsets[t][l] (in floats) of level l of texture t;
    wraps[t] its address mode."""

    data: wp.array
    table: wp.array
    channels: int
    sizes: list[list[tuple[int, int]]]
    offsets: list[list[int]]
    wraps: list[str]

    @property
    def count(self) -> int:
        return len(self.sizes)

    def levels(self, tex: int) -> int:
        return len(self.sizes[tex])

    def level_numpy(self, tex: int, level: int) -> np.ndarray:
        """Mip `level` of texture `tex` as a (h, w, C) NumPy copy (for inspection and tests)."""
        w, h = self.sizes[tex][level]
        o = self.offsets[tex][level]
        return self.data.numpy()[o:o + w * h * self.channels].reshape(h, w, self.channels).copy()

    @staticmethod
    def build(textures: list, wraps: list[str], mipmaps: bool = True) -> TexturePool:
        """Pack `textures` (list of wp.array3d float32 (h, w, C), one C in 1..3, one device) with
        address modes `wraps` ("wrap" or "clamp", one per texture) into a pool; with `mipmaps`, append
        each texture's 2x2-box pyramid down to 1x1 (else level 0 only). Every copy and filter is a
        normal launch, so a surrounding wp.Tape carries gradients from `pool.data` to the sources."""
        if not isinstance(textures, (list, tuple)) or len(textures) == 0:
            raise ValueError("textures: expected a non-empty list of wp.array3d(dtype=float) (h, w, C)")
        if not isinstance(wraps, (list, tuple)) or len(wraps) != len(textures):
            raise ValueError(f"wraps: expected a list of {len(textures)} strings, got {wraps!r}")
        if not isinstance(mipmaps, bool):
            raise TypeError(f"mipmaps: expected a bool, got {type(mipmaps).__name__}")
        device = None
        channels = None
        for k, (tex, mode) in enumerate(zip(textures, wraps, strict=True)):
            name = f"textures[{k}]"
            if not isinstance(tex, wp.array) or tex.ndim != 3 or tex.dtype != wp.float32:
                ndim, dtype = getattr(tex, "ndim", None), getattr(tex, "dtype", None)
                got = f"{type(tex).__name__} ndim={ndim} dtype={dtype}"
                raise TypeError(f"{name}: expected a wp.array3d(dtype=float) of shape (h, w, C), got {got}")
            h, w, c = tex.shape
            if h < 1 or w < 1 or not 1 <= c <= 3:
                raise ValueError(f"{name}: expected shape (h >= 1, w >= 1, C in 1..3), got {tex.shape}")
            if channels is None:
                channels, device = c, tex.device
            if c != channels:
                raise ValueError(f"{name}: expected C={channels} channels like textures[0], got {tex.shape}")
            if tex.device != device:
                raise ValueError(f"{name}: expected device {device} like textures[0], got {tex.device}")
            if mode not in WRAP_MODES:
                raise ValueError(f"wraps[{k}]: expected 'wrap' or 'clamp', got {mode!r}")

        sizes: list[list[tuple[int, int]]] = []
        offsets: list[list[int]] = []
        total = 0
        for tex in textures:
            h, w, _ = tex.shape
            chain = [(w, h)]
            while mipmaps and chain[-1] != (1, 1):
                cw, ch = chain[-1]
                chain.append((max(cw // 2, 1), max(ch // 2, 1)))
            sizes.append(chain)
            offsets.append([])
            for cw, ch in chain:
                offsets[-1].append(total)
                total += cw * ch * channels
        max_levels = max(len(s) for s in sizes)
        table = np.zeros((len(textures), _HEAD + 3 * max_levels), np.int32)
        for k, (chain, offs) in enumerate(zip(sizes, offsets, strict=True)):
            table[k, :_HEAD] = (len(chain), WRAP_MODES[wraps[k]], channels)
            for level, ((cw, ch), o) in enumerate(zip(chain, offs, strict=True)):
                table[k, _HEAD + 3 * level:_HEAD + 3 * level + 3] = (o, cw, ch)

        grad = any(tex.requires_grad for tex in textures)
        data = wp.zeros(total, dtype=float, device=device, requires_grad=grad)
        table_wp = wp.array(table, dtype=wp.int32, device=device)
        # The copies and filters are launched off the tape; one recorded function runs their hand-written
        # adjoint (the pyramid from the top level down, then level 0 into the sources). A square power-of-two
        # texture's levels and their adjoints run LEVELS_PER_LAUNCH levels a launch, with the same arithmetic per
        # texel (the same bits).
        for k, (tex, chain, offs) in enumerate(zip(textures, sizes, offsets, strict=True)):
            if not tex.is_contiguous:
                raise ValueError("textures: expected contiguous arrays")
            h, w, c = tex.shape
            wp.launch(_copy_rows, dim=h, inputs=[_flat(tex), data, offs[0], w * c], device=device,
                      record_tape=False)
            if _square_pyramid(chain):
                for first in range(1, len(chain), LEVELS_PER_LAUNCH):
                    last = min(first + LEVELS_PER_LAUNCH - 1, len(chain) - 1)
                    wp.launch(_downsample_square, dim=(w >> last, w >> last),
                              inputs=[data, table_wp, k, w, first, last, channels], device=device, record_tape=False)
                continue
            for level in range(1, len(chain)):
                (sw, sh), (dw, dh) = chain[level - 1], chain[level]
                wp.launch(_downsample, dim=(dh, dw), inputs=[data, offs[level - 1], sw, sh, offs[level], dw, channels],
                          device=device, record_tape=False)
        tape = active_tape()
        if grad and tape is not None:
            def backward():
                for k, (tex, chain, offs) in enumerate(zip(textures, sizes, offsets, strict=True)):
                    if _square_pyramid(chain):
                        w, top = tex.shape[1], len(chain) - 1
                        while top >= 1:
                            bottom = max(top - LEVELS_PER_LAUNCH + 1, 1)
                            wp.launch(_downsample_adjoint_square, dim=(w >> top, w >> top), device=device,
                                      record_tape=False, inputs=[data.grad, table_wp, k, w, top, bottom, channels])
                            top = bottom - 1
                    else:
                        for level in range(len(chain) - 1, 0, -1):
                            (sw, sh), (dw, dh) = chain[level - 1], chain[level]
                            wp.launch(_downsample_adjoint, dim=(dh, dw), device=device, record_tape=False,
                                      inputs=[data.grad, offs[level - 1], sw, sh, offs[level], dw, channels])
                    if tex.requires_grad:
                        h, w, c = tex.shape
                        wp.launch(_copy_rows_adjoint, dim=h, device=device, record_tape=False,
                                  inputs=[data.grad, offs[0], w * c, _flat(tex.grad)])

            tape.record_func(backward, [data, *[t for t in textures if t.requires_grad]])
        return TexturePool(data, table_wp, channels, sizes, offsets, list(wraps))


def sample(pool: TexturePool, tex_index: wp.array, uv: wp.array, uv_da: wp.array | None = None,
           scale: wp.array | None = None) -> wp.array:
    """Sample `pool` per pixel.

    tex_index: (N,) int32, the texture of each pixel; -1 (or any index outside the pool) gives zeros.
    uv: (N, 2) float32 (u, v); v = 0 is the top row of the texture (image convention).
    uv_da: None for bilinear sampling of level 0, or (N, 4) float32 (du/dx, du/dy, dv/dx, dv/dy) per
    pixel for trilinear mipmapping (the layout `interpolate_derivatives` returns for a uv attribute).
    scale: None, or (N, C) float32 multiplied into the samples channel by channel (vertex colors: this
    saves a separate multiply pass).
    Returns (N, C) float32 on the device of `uv`. Differentiable w.r.t. pool.data, uv and scale, by a
    hand-written adjoint recorded with `wp.Tape.record_func` (texel gradients scattered with the bilinear
    or trilinear weights); the lod is not differentiated (uv_da gets no gradient)."""
    if not isinstance(pool, TexturePool):
        raise TypeError(f"pool: expected a TexturePool, got {type(pool).__name__}")
    if not isinstance(uv, wp.array) or uv.ndim != 2 or uv.shape[1] != 2 or uv.dtype != wp.float32:
        raise TypeError(f"uv: expected a wp.array2d(dtype=float) of shape (N, 2), got "
                        f"{getattr(uv, 'dtype', type(uv).__name__)} shape={getattr(uv, 'shape', None)}")
    n = uv.shape[0]
    if not isinstance(tex_index, wp.array) or tex_index.ndim != 1 or tex_index.dtype != wp.int32:
        raise TypeError(f"tex_index: expected a wp.array(dtype=wp.int32) of shape (N,), got "
                        f"{getattr(tex_index, 'dtype', type(tex_index).__name__)}")
    if tex_index.shape[0] != n:
        raise ValueError(f"tex_index: expected shape ({n},) to match uv, got {tex_index.shape}")
    if uv_da is not None:
        if not isinstance(uv_da, wp.array) or uv_da.ndim != 2 or uv_da.dtype != wp.float32:
            raise TypeError(f"uv_da: expected None or a wp.array2d(dtype=float) of shape ({n}, 4), got "
                            f"{getattr(uv_da, 'dtype', type(uv_da).__name__)}")
        if uv_da.shape != (n, 4):
            raise ValueError(f"uv_da: expected shape ({n}, 4), got {uv_da.shape}")
    device = uv.device
    for name, arr in (("tex_index", tex_index), ("uv_da", uv_da), ("pool.data", pool.data)):
        if arr is not None and arr.device != device:
            raise ValueError(f"{name}: expected device {device} like uv, got {arr.device}")
    if scale is not None:
        if not isinstance(scale, wp.array) or scale.ndim != 2 or scale.dtype != wp.float32:
            raise TypeError(f"scale: expected None or a wp.array2d(dtype=float) of shape ({n}, {pool.channels}), "
                            f"got {getattr(scale, 'dtype', type(scale).__name__)}")
        if scale.shape != (n, pool.channels):
            raise ValueError(f"scale: expected shape ({n}, {pool.channels}), got {scale.shape}")
        if scale.device != device:
            raise ValueError(f"scale: expected device {device} like uv, got {scale.device}")
    empty = wp.empty((0, 0), dtype=float, device=device)
    empty_1d = wp.empty(0, dtype=float, device=device)
    use_mips, use_scale = int(uv_da is not None), int(scale is not None)
    uv_da_arr = uv_da if uv_da is not None else empty
    scale_arr = scale if scale is not None else empty
    want_data = pool.data.requires_grad
    want_uv = uv.requires_grad
    want_scale = scale is not None and scale.requires_grad
    grad = want_data or want_uv or want_scale
    out = wp.zeros((n, pool.channels), dtype=float, device=device, requires_grad=grad)
    inputs = [pool.data, pool.table, tex_index, uv, uv_da_arr, use_mips, scale_arr, use_scale]
    # The forward is not recorded; the hand-written adjoint below is (Warp's generated one replays the
    # whole lookup and scatters per channel through branches: about 2x slower).
    wp.launch(_sample, dim=n, inputs=inputs, outputs=[out], device=device, record_tape=False)
    tape = active_tape()
    if grad and tape is not None:
        data, adj_uv, adj_scale = pool.data, uv.grad if want_uv else empty, scale.grad if want_scale else empty

        def backward():
            wp.launch(_sample_adjoint, dim=n, device=device, record_tape=False,
                      inputs=[*inputs, out.grad, data.grad if want_data else empty_1d, int(want_data),
                              adj_uv, int(want_uv), adj_scale, int(want_scale)])

        tape.record_func(backward, [a for a in (pool.data, uv, scale, out) if a is not None and a.requires_grad])
    return out


@dataclass
class Footprint:
    """Per-point texel addresses and weights of a trilinear (or bilinear) lookup, for sampling the same
    points again (`sample_footprint`) while the uvs, the lod inputs and the pool's layout stay the same.

    index: (N, 8) int32 flat offsets of channel 0 of the 4 texels of each of the two blended levels;
    weight: (N, 8) float32 their weights (sum 1; all 0 for an invalid texture index);
    layout: the pool's (channels, sizes, offsets, wraps) the addresses are valid for."""

    index: wp.array
    weight: wp.array
    layout: tuple


def pool_layout(pool: TexturePool) -> tuple:
    """What a `Footprint` depends on besides the points: (channels, sizes, offsets, wraps), hashable."""
    return (pool.channels, tuple(map(tuple, pool.sizes)), tuple(map(tuple, pool.offsets)), tuple(pool.wraps))


def footprint(pool: TexturePool, tex_index: wp.array, uv: wp.array, uv_da: wp.array | None = None) -> Footprint:
    """The addresses and weights `sample(pool, tex_index, uv, uv_da)` blends (same arguments and
    conventions). Not differentiable (launched with record_tape=False): uv and uv_da are constants of it."""
    if not isinstance(pool, TexturePool):
        raise TypeError(f"pool: expected a TexturePool, got {type(pool).__name__}")
    if not isinstance(uv, wp.array) or uv.ndim != 2 or uv.shape[1] != 2 or uv.dtype != wp.float32:
        raise TypeError("uv: expected a wp.array2d(dtype=float) of shape (N, 2)")
    n = uv.shape[0]
    if not isinstance(tex_index, wp.array) or tex_index.dtype != wp.int32 or tex_index.shape != (n,):
        raise ValueError(f"tex_index: expected a wp.array(dtype=wp.int32) of shape ({n},)")
    if uv_da is not None and (not isinstance(uv_da, wp.array) or uv_da.shape != (n, 4)):
        raise ValueError(f"uv_da: expected None or a float array of shape ({n}, 4)")
    dev = uv.device
    index = wp.empty((n, 8), dtype=wp.int32, device=dev)
    weight = wp.empty((n, 8), dtype=float, device=dev)
    da = uv_da if uv_da is not None else wp.empty((0, 0), dtype=float, device=dev)
    wp.launch(_footprint, dim=n, inputs=[pool.table, tex_index, uv, da, int(uv_da is not None), index, weight],
              device=dev, record_tape=False)
    return Footprint(index, weight, pool_layout(pool))


def sample_footprint(pool: TexturePool, fp: Footprint, scale: wp.array | None = None) -> wp.array:
    """`sample` at the points of `fp` (from `footprint` on a pool of the same layout): (N, C) float32,
    times `scale` (N, C) when given. Differentiable w.r.t. pool.data and scale by a hand-written adjoint
    (recorded with `wp.Tape.record_func`); not w.r.t. the uvs (they are baked into `fp`)."""
    if not isinstance(fp, Footprint):
        raise TypeError(f"fp: expected a Footprint, got {type(fp).__name__}")
    if fp.layout != pool_layout(pool):
        raise ValueError("fp: computed for a pool of another layout (texture sizes, channels or wraps)")
    n, dev, c = fp.index.shape[0], pool.data.device, pool.channels
    if scale is not None and (not isinstance(scale, wp.array) or scale.dtype != wp.float32 or scale.shape != (n, c)):
        raise ValueError(f"scale: expected None or a float array of shape ({n}, {c})")
    empty = wp.empty((0, 0), dtype=float, device=dev)
    scale_arr = scale if scale is not None else empty
    want_data = pool.data.requires_grad
    want_scale = scale is not None and scale.requires_grad
    out = wp.zeros((n, c), dtype=float, device=dev, requires_grad=want_data or want_scale)
    inputs = [pool.data, fp.index, fp.weight, scale_arr, int(scale is not None)]
    wp.launch(_gather, dim=n, inputs=inputs, outputs=[out], device=dev, record_tape=False)
    tape = active_tape()
    if (want_data or want_scale) and tape is not None:
        data = pool.data

        def backward():
            wp.launch(_gather_adjoint, dim=n, device=dev, record_tape=False,
                      inputs=[*inputs, out.grad, data.grad if want_data else wp.empty(0, dtype=float, device=dev),
                              int(want_data), scale.grad if want_scale else empty, int(want_scale)])

        tape.record_func(backward, [a for a in (pool.data, scale, out) if a is not None and a.requires_grad])
    return out
