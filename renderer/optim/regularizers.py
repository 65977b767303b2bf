"""Regularizers on textures and meshes, accumulated on the device like the image losses.

Each ADDS `weight * value` into a (1,) float32 accumulator `out_loss` and is differentiable w.r.t. its
texture or vertices. Mesh topology comes from the NumPy helpers `unique_edges` and `neighbor_csr`
(build once per mesh, upload as int32 arrays). Meshes are split at creases (docs: a cube has 24
vertices), so split seams are boundaries to these regularizers: split copies are not tied together.
"""

from __future__ import annotations

import math

import numpy as np
import warp as wp

from .losses import _check, _check_accumulator

# The smoothing of the texture TV an optimization uses (`total_variation(eps=)`), in texel values (colors in
# [0, 1]): differences above ~1e-2 cost |d| - eps as plain L1 TV, and the gradient is continuous at 0.
TV_EPS = 1e-3


@wp.func
def _tv_term(d: float, squared: int, eps: float) -> float:
    if squared != 0:
        return d * d
    if eps > 0.0:
        return wp.sqrt(d * d + eps * eps) - eps  # pseudo-Huber: |d| - eps for |d| >> eps, d^2 / (2 eps) near 0
    return wp.abs(d)


@wp.kernel
def _total_variation(tex: wp.array3d(dtype=float), first_row: int, squared: int, eps: float, scale: float,
                     out: wp.array(dtype=float)):
    # Forward differences; a difference that would leave the texture is absent (no wrap). Thread (y, x, c) takes
    # the differences that start at texel (first_row + y, x, c).
    t, x, c = wp.tid()
    y = first_row + t
    v = tex[y, x, c]
    e = 0.0
    if x + 1 < tex.shape[1]:
        e = e + _tv_term(tex[y, x + 1, c] - v, squared, eps)
    if y + 1 < tex.shape[0]:
        e = e + _tv_term(tex[y + 1, x, c] - v, squared, eps)
    wp.atomic_add(out, 0, scale * e)


@wp.kernel
def _neighbor_sum(vertices: wp.array(dtype=wp.vec3), offsets: wp.array(dtype=wp.int32),
                  indices: wp.array(dtype=wp.int32), sums: wp.array(dtype=wp.vec3)):
    # Accumulating into the array, not a local: Warp's adjoint of a dynamic loop that mutates a local
    # is wrong, the adjoint of an atomic add per iteration is exact.
    i = wp.tid()
    for k in range(offsets[i], offsets[i + 1]):
        wp.atomic_add(sums, i, vertices[indices[k]])


@wp.kernel
def _laplacian(vertices: wp.array(dtype=wp.vec3), offsets: wp.array(dtype=wp.int32),
               sums: wp.array(dtype=wp.vec3), scale: float, out: wp.array(dtype=float)):
    i = wp.tid()
    degree = offsets[i + 1] - offsets[i]
    if degree > 0:
        d = vertices[i] - sums[i] / float(degree)
        wp.atomic_add(out, 0, scale * wp.dot(d, d))


@wp.kernel
def _edge_lengths(vertices: wp.array(dtype=wp.vec3), edges: wp.array2d(dtype=wp.int32),
                  lengths: wp.array(dtype=float), total: wp.array(dtype=float)):
    e = wp.tid()
    length = wp.length(vertices[edges[e, 1]] - vertices[edges[e, 0]])
    lengths[e] = length
    wp.atomic_add(total, 0, length)


@wp.kernel
def _edge_deviation(lengths: wp.array(dtype=float), rest: wp.array(dtype=float), has_rest: int,
                    total: wp.array(dtype=float), scale: float, out: wp.array(dtype=float)):
    # Deviation from the rest length, or from the mean length (two passes: no E[l^2] - E[l]^2 cancellation).
    e = wp.tid()
    target = total[0] / float(lengths.shape[0])
    if has_rest != 0:
        target = rest[e]
    d = lengths[e] - target
    wp.atomic_add(out, 0, scale * d * d)


def total_variation(texture: wp.array, out_loss: wp.array, weight: float = 1.0, *,
                    squared: bool = False, eps: float = 0.0, rows: tuple[int, int] | None = None) -> None:
    """out_loss[0] += weight * (sum |dx| + sum |dy|) / (h*w*C), anisotropic TV of a texture.

    texture: (h, w, C) float32 array3d; dx = t[y, x+1] - t[y, x], dy = t[y+1, x] - t[y, x] per channel,
    forward differences inside the texture only (no wrap). squared=True sums dx^2 + dy^2 instead. eps > 0
    (not squared) sums the pseudo-Huber sqrt(d^2 + eps^2) - eps instead of |d|: the same for |d| >> eps, and
    smooth at 0, where |d|'s gradient jumps from -1 to 1: two neighbours equal in one run and one rounding
    error apart in another (another summation order: threads, ranks) then get gradients that differ by
    round-off, not by the whole weight (what the optimizer uses, `TV_EPS`). Differentiable w.r.t. texture.

    `rows` (first, end): only the differences that start in texture rows [first, end) (dx within those rows,
    dy to the row below each), still divided by h*w*C: the terms of a split of the rows into ranges add up
    to the whole texture's (a data-parallel rank's share, `renderer.optim.models`)."""
    _check("texture", texture, wp.float32, (None, None, None))
    _check_accumulator(out_loss, texture.device)
    h, w, c = texture.shape
    if h * w * c == 0:
        raise ValueError(f"texture: expected a non-empty (h, w, C) texture, got {tuple(texture.shape)}")
    first, end = (0, h) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= first <= end <= h:
        raise ValueError(f"rows: expected 0 <= first <= end <= {h} (the texture's rows), got {rows!r}")
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"eps: expected a finite value >= 0, got {eps!r}")
    scale = float(weight) / (h * w * c)
    if end > first:
        wp.launch(_total_variation, dim=(end - first, w, c),
                  inputs=[texture, first, int(squared), float(eps), scale, out_loss], device=texture.device)


def laplacian_smoothing(vertices: wp.array, offsets: wp.array, indices: wp.array, out_loss: wp.array,
                        weight: float = 1.0) -> None:
    """out_loss[0] += weight * (1/V) sum_i ||v_i - mean_{j in N(i)} v_j||^2, the uniform Laplacian.

    vertices: (V,) vec3; offsets (V+1,) and indices (offsets[V],) int32: the CSR neighbour lists of
    `neighbor_csr`. A vertex without neighbours contributes 0 (and still counts in V).
    Differentiable w.r.t. vertices (both the centre and its neighbours)."""
    _check("vertices", vertices, wp.vec3, (None,))
    v = vertices.shape[0]
    device = vertices.device
    _check("offsets", offsets, wp.int32, (v + 1,), device)
    _check("indices", indices, wp.int32, (None,), device)
    _check_accumulator(out_loss, device)
    if v == 0:
        raise ValueError("vertices: expected at least one vertex, got shape (0,)")
    sums = wp.zeros(v, dtype=wp.vec3, device=device, requires_grad=vertices.requires_grad)
    wp.launch(_neighbor_sum, dim=v, inputs=[vertices, offsets, indices, sums], device=device)
    wp.launch(_laplacian, dim=v, inputs=[vertices, offsets, sums, float(weight) / v, out_loss], device=device)


def edge_length(vertices: wp.array, edges: wp.array, rest_lengths: wp.array | None, out_loss: wp.array,
                weight: float = 1.0) -> None:
    """out_loss[0] += weight * (1/E) sum_e (l_e - r_e)^2 with l_e = ||v_b - v_a|| for edge e = (a, b).

    r_e = rest_lengths[e] when given ((E,) float32), else the mean edge length, so the term is then the
    variance of the edge lengths (absolute, in squared scene units). vertices: (V,) vec3; edges: (E, 2)
    int32 array2d from `unique_edges`. Differentiable w.r.t. vertices (undefined for zero-length edges)."""
    _check("vertices", vertices, wp.vec3, (None,))
    device = vertices.device
    _check("edges", edges, wp.int32, (None, 2), device)
    e = edges.shape[0]
    if e == 0:
        raise ValueError("edges: expected at least one edge, got shape (0, 2)")
    if rest_lengths is not None:
        _check("rest_lengths", rest_lengths, wp.float32, (e,), device)
    _check_accumulator(out_loss, device)
    lengths = wp.empty(e, dtype=float, device=device, requires_grad=vertices.requires_grad)
    total = wp.zeros(1, dtype=float, device=device, requires_grad=vertices.requires_grad)
    wp.launch(_edge_lengths, dim=e, inputs=[vertices, edges, lengths, total], device=device)
    scale = float(weight) / e
    wp.launch(_edge_deviation, dim=e,
              inputs=[lengths, rest_lengths, int(rest_lengths is not None), total, scale, out_loss],
              device=device)


def _check_faces(faces) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces: expected an integer array of shape (F, 3), got {faces.dtype} {faces.shape}")
    return faces.astype(np.int64)


def unique_edges(faces) -> np.ndarray:
    """The unique undirected edges of a triangle mesh: (E, 2) int32 rows (a, b) with a < b, sorted."""
    f = _check_faces(faces)
    pairs = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]  # degenerate triangles repeat a vertex
    return np.unique(pairs, axis=0).reshape(-1, 2).astype(np.int32)


def neighbor_csr(faces, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR vertex adjacency of a triangle mesh: (offsets (V+1,) int32, indices (2E,) int32).

    The neighbours of vertex i are indices[offsets[i]:offsets[i+1]], each once, in increasing order;
    vertices in no face have none."""
    f = _check_faces(faces)
    if f.size and (f.min() < 0 or f.max() >= num_vertices):
        raise ValueError(f"faces: indices must lie in [0, num_vertices={num_vertices}), "
                         f"got [{f.min()}, {f.max()}]")
    e = unique_edges(f).astype(np.int64)
    both = np.concatenate([e, e[:, ::-1]])
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    offsets = np.zeros(num_vertices + 1, np.int32)
    np.cumsum(np.bincount(both[:, 0], minlength=num_vertices), out=offsets[1:])
    return offsets, both[:, 1].astype(np.int32)
