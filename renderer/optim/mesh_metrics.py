"""How close a recovered mesh is to a reference mesh, surface to surface (any two topologies).

- `chamfer`: points sampled uniformly by area on one surface (a seeded generator: reproducible), each one's
  exact distance to the other surface (closest point on a triangle through Warp's mesh BVH); the mean in
  each direction, as a percentage of the reference's bounding-box diagonal;
- normal consistency (Mescheder et al. 2019, "Occupancy Networks"): the mean |n_a . n_b| between the normal
  of each sampled point's triangle and that of its closest triangle on the other surface, both directions
  averaged (1: the surfaces are parallel everywhere);
- `self_intersections`: the triangles that cross another triangle of the same mesh sharing no vertex with
  it (an edge of one passes through the other; candidates from the BVH), as a count. Triangles sharing a
  vertex are not tested (they touch by construction); coplanar overlaps are not counted.
"""

from __future__ import annotations

import numpy as np
import warp as wp

wp.set_module_options({"enable_backward": False})


@wp.kernel
def _closest(mesh: wp.uint64, points: wp.array(dtype=wp.vec3), max_dist: float, dist: wp.array(dtype=float),
             face: wp.array(dtype=wp.int32)):
    i = wp.tid()
    q = wp.mesh_query_point_no_sign(mesh, points[i], max_dist)
    if q.result:
        dist[i] = wp.length(wp.mesh_eval_position(mesh, q.face, q.u, q.v) - points[i])
        face[i] = q.face
    else:
        dist[i] = -1.0
        face[i] = -1


@wp.func
def _segment_crosses(p: wp.vec3, q: wp.vec3, a: wp.vec3, b: wp.vec3, c: wp.vec3) -> int:
    # Moller-Trumbore on the segment p->q (t in [0, 1]); parallel (coplanar) segments do not count
    e1 = b - a
    e2 = c - a
    d = q - p
    h = wp.cross(d, e2)
    det = wp.dot(e1, h)
    scale = wp.length(e1) * wp.length(e2) * wp.length(d)
    if wp.abs(det) <= 1e-9 * scale:
        return 0
    inv = 1.0 / det
    s = p - a
    u = inv * wp.dot(s, h)
    if u < 0.0 or u > 1.0:
        return 0
    r = wp.cross(s, e1)
    v = inv * wp.dot(d, r)
    if v < 0.0 or u + v > 1.0:
        return 0
    t = inv * wp.dot(e2, r)
    if t < 0.0 or t > 1.0:
        return 0
    return 1


@wp.kernel
def _self_intersections(mesh: wp.uint64, points: wp.array(dtype=wp.vec3), indices: wp.array(dtype=wp.int32),
                        flags: wp.array(dtype=wp.int32)):
    f = wp.tid()
    i0 = indices[3 * f]
    i1 = indices[3 * f + 1]
    i2 = indices[3 * f + 2]
    a = points[i0]
    b = points[i1]
    c = points[i2]
    query = wp.mesh_query_aabb(mesh, wp.min(wp.min(a, b), c), wp.max(wp.max(a, b), c))
    g = int(0)
    hit = int(0)
    while wp.mesh_query_aabb_next(query, g):
        j0 = indices[3 * g]
        j1 = indices[3 * g + 1]
        j2 = indices[3 * g + 2]
        shared = int(0)
        if j0 == i0 or j0 == i1 or j0 == i2 or j1 == i0 or j1 == i1 or j1 == i2:
            shared = 1
        if j2 == i0 or j2 == i1 or j2 == i2:
            shared = 1
        if g != f and shared == 0:
            d = points[j0]
            e = points[j1]
            h = points[j2]
            n = (_segment_crosses(a, b, d, e, h) + _segment_crosses(b, c, d, e, h) + _segment_crosses(c, a, d, e, h)
                 + _segment_crosses(d, e, a, b, c) + _segment_crosses(e, h, a, b, c) + _segment_crosses(h, d, a, b, c))
            if n > 0:
                hit = 1
    flags[f] = hit


def _mesh(vertices: np.ndarray, faces: np.ndarray, device) -> tuple[wp.Mesh, wp.array, wp.array]:
    points = wp.array(np.ascontiguousarray(vertices, np.float32), dtype=wp.vec3, device=device)
    indices = wp.array(np.ascontiguousarray(faces, np.int32).ravel(), dtype=wp.int32, device=device)
    return wp.Mesh(points=points, indices=indices), points, indices


def _check(name: str, vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    v, f = np.asarray(vertices, np.float64), np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise ValueError(f"{name} vertices: expected finite values of shape (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"{name} faces: expected integers of shape (F, 3) with F >= 1, got {f.dtype} {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"{name} faces: indices must lie in [0, {len(v)})")
    return v, f.astype(np.int64)


def sample_surface(vertices, faces, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 3), face of each (n,)): uniform by area, from a generator seeded with `seed`."""
    v, f = _check("mesh", vertices, faces)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not area.sum() > 0:
        raise ValueError("mesh: has zero surface area")
    rng = np.random.default_rng(seed)
    face = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], 1)  # uniform barycentrics
    return np.einsum("nk,nkj->nj", w, tri[face]), face


def _unit_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)


def _one_way(src_v, src_f, dst_v, dst_f, n: int, seed: int, device) -> tuple[float, float]:
    """(mean distance from `src` samples to the `dst` surface, mean |normal dot| of the pairs)."""
    points, face = sample_surface(src_v, src_f, n, seed)
    mesh, _pts, _idx = _mesh(dst_v, dst_f, device)
    p = wp.array(points.astype(np.float32), dtype=wp.vec3, device=device)
    dist = wp.zeros(n, dtype=float, device=device)
    near = wp.zeros(n, dtype=wp.int32, device=device)
    wp.launch(_closest, dim=n, inputs=[mesh.id, p, 1e30, dist, near], device=device)
    d, g = dist.numpy().astype(np.float64), near.numpy()
    if (g < 0).any():
        raise RuntimeError("closest point query failed")
    cos = np.abs(np.einsum("ij,ij->i", _unit_normals(src_v, src_f)[face], _unit_normals(dst_v, dst_f)[g]))
    return float(d.mean()), float(cos.mean())


def self_intersections(vertices, faces, device="cpu") -> int:
    """How many triangles cross a triangle of the same mesh that shares no vertex with them."""
    v, f = _check("mesh", vertices, faces)
    mesh, points, indices = _mesh(v, f, device)
    flags = wp.zeros(len(f), dtype=wp.int32, device=device)
    wp.launch(_self_intersections, dim=len(f), inputs=[mesh.id, points, indices, flags], device=device)
    return int(flags.numpy().sum())


def compare_meshes(vertices, faces, ref_vertices, ref_faces, samples: int = 100_000, seed: int = 0,
                   device="cpu") -> dict:
    """{metric: value} of a mesh against a reference (module docstring); distances in percent of the
    reference's bounding-box diagonal."""
    v, f = _check("mesh", vertices, faces)
    rv, rf = _check("reference", ref_vertices, ref_faces)
    diag = float(np.linalg.norm(rv.max(0) - rv.min(0)))
    to_ref, n_to = _one_way(v, f, rv, rf, samples, seed, device)
    from_ref, n_from = _one_way(rv, rf, v, f, samples, seed + 1, device)
    return {
        "chamfer_to_reference_percent": 100 * to_ref / diag,
        "chamfer_from_reference_percent": 100 * from_ref / diag,
        "chamfer_percent": 50 * (to_ref + from_ref) / diag,
        "chamfer_fraction_of_bbox_diagonal": 0.5 * (to_ref + from_ref) / diag,
        "normal_consistency": 0.5 * (n_to + n_from),
        "self_intersecting_faces": self_intersections(v, f, device),
        "reference_bbox_diagonal": diag,
        "vertices": int(len(v)),
        "faces": int(len(f)),
    }
