"""Sampler stage: counter-based random numbers for Monte Carlo rendering.

A random number is a pure function of (seed, pixel, sample, dimension): a hash, with no state carried
between calls. So a render is reproducible, two renders with the same seed see the same random numbers
(what finite differences with shared randomness and path replay need: the adjoint pass re-traces a
path by asking for the same counters again), and a path may consume dimensions in any order.

The hash is the PCG "RXS-M-XS" 32-bit output permutation (O'Neill 2014, as recommended for GPU hashing
by Jarzynski and Olano, "Hash Functions for GPU Rendering", JCGT 2020), applied in a chain:
h = pcg(seed + pcg(pixel + pcg(sample + pcg(dimension)))), mod 2^32. Each pcg is a bijection of the
32-bit integers, so distinct dimensions of one (seed, pixel, sample) never collide. The float is the top
24 bits of h times 2^-24: uniform on the grid {0, 2^-24, ..., 1 - 2^-24}, so it lies in [0, 1) exactly.
"""

from __future__ import annotations

from numbers import Integral

import warp as wp

# As typed constants: Warp emits an inline literal such as wp.uint32(2891336453) through an int32
# temporary (a C++ narrowing warning; the bits survive, but say what is meant).
_PCG_MUL = wp.constant(wp.uint32(747796405))
_PCG_INC = wp.constant(wp.uint32(2891336453))
_PCG_OUT = wp.constant(wp.uint32(277803737))


@wp.func
def pcg_hash(x: wp.uint32) -> wp.uint32:
    """PCG RXS-M-XS permutation of a 32-bit integer (arithmetic wraps mod 2^32)."""
    state = x * _PCG_MUL + _PCG_INC
    word = ((state >> ((state >> wp.uint32(28)) + wp.uint32(4))) ^ state) * _PCG_OUT
    return (word >> wp.uint32(22)) ^ word


@wp.func
def hash4(seed: int, pixel: int, sample: int, dim: int) -> wp.uint32:
    h = pcg_hash(wp.uint32(dim))
    h = pcg_hash(wp.uint32(sample) + h)
    h = pcg_hash(wp.uint32(pixel) + h)
    return pcg_hash(wp.uint32(seed) + h)


@wp.func
def sample_1d(seed: int, pixel: int, sample: int, dim: int) -> float:
    """Uniform float in [0, 1) for the counter (seed, pixel, sample, dim)."""
    return float(hash4(seed, pixel, sample, dim) >> wp.uint32(8)) * (1.0 / 16777216.0)


@wp.func
def sample_2d(seed: int, pixel: int, sample: int, dim: int) -> wp.vec2:
    """Two uniforms: dimensions dim and dim + 1."""
    return wp.vec2(sample_1d(seed, pixel, sample, dim), sample_1d(seed, pixel, sample, dim + 1))


@wp.kernel(enable_backward=False)
def _table_kernel(seed: int, sample: int, dim0: int, out: wp.array2d(dtype=float)):
    pixel, d = wp.tid()
    out[pixel, d] = sample_1d(seed, pixel, sample, dim0 + d)


def random_table(seed: int, pixels: int, dims: int, sample: int = 0, dim0: int = 0,
                 device=None) -> wp.array:
    """The sampler's numbers as an array, for inspection and tests.

    Args:
        seed: int, the render seed (any int; taken mod 2^32).
        pixels: number of rows P (pixel indices 0..P-1).
        dims: number of columns D (dimensions dim0..dim0+D-1).
        sample: the sample index of every row.
        dim0: the first dimension.
        device: Warp device (default: Warp's default device).

    Returns:
        float32 array2d (P, D): entry (p, d) = sample_1d(seed, p, sample, dim0 + d), in [0, 1).
        Not differentiable.
    """
    for name, v in (("seed", seed), ("sample", sample), ("dim0", dim0)):
        if not isinstance(v, Integral):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    for name, v in (("pixels", pixels), ("dims", dims)):
        if not isinstance(v, Integral) or v <= 0:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    out = wp.empty((int(pixels), int(dims)), dtype=float, device=device)
    wp.launch(_table_kernel, dim=(int(pixels), int(dims)), inputs=[_u32(seed), int(sample), int(dim0)],
              outputs=[out], device=out.device, record_tape=False)
    return out


def _u32(x: int) -> int:
    """An int reduced into Warp's int32 range with the same low 32 bits (the kernel reinterprets it)."""
    x = int(x) & 0xFFFFFFFF
    return x - (1 << 32) if x >= (1 << 31) else x
