"""Warp kernels the gradient tests use to reduce an output to a scalar."""

import warp as wp


@wp.kernel
def weighted_sum_1d(x: wp.array(dtype=float), w: wp.array(dtype=float), loss: wp.array(dtype=float)):
    i = wp.tid()
    wp.atomic_add(loss, 0, x[i] * w[i])


@wp.kernel
def weighted_sum_2d(x: wp.array2d(dtype=float), w: wp.array2d(dtype=float), loss: wp.array(dtype=float)):
    i, j = wp.tid()
    wp.atomic_add(loss, 0, x[i, j] * w[i, j])


@wp.kernel
def weighted_sum_vec3(x: wp.array(dtype=wp.vec3), w: wp.array(dtype=wp.vec3), loss: wp.array(dtype=float)):
    i = wp.tid()
    wp.atomic_add(loss, 0, wp.dot(x[i], w[i]))
