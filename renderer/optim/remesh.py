"""Isotropic remeshing of a closed triangle mesh towards a target edge length (Botsch & Kobbelt 2004, "A
remeshing approach to multiresolution modeling"), for shape optimization.

`isotropic_remesh(vertices, faces, target)` repeats, `iterations` times:
1. split every edge longer than 4/3 target at its midpoint (each face split by one edge per pass, passes
   until none is too long);
2. collapse edges shorter than 4/5 target into their midpoint, unless the collapse would break the
   manifold (link condition: the two endpoints share exactly two neighbours), leave a vertex of valence
   below 3, create an edge longer than 4/3 target or turn a face over;
3. flip edges where it brings the four vertices' valences closer to 6 and turns no face over;
4. tangential relaxation: each vertex moves halfway to its neighbours' centroid within its tangent plane;
and splits once more at the end, so no edge is longer than 4/3 target. A closed, consistently oriented
2-manifold stays one. Everything is deterministic (stable orders, no randomness), so a recorded
optimization that remeshes re-executes exactly (`drstudio replay --verify`).

`nearest_vertices(old, new)` maps each new vertex to the nearest old one: how per-vertex optimizer state
follows the mesh across a remesh.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def _check(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices: expected shape (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces: expected an integer array of shape (F, 3), got {f.dtype} {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"faces: indices must lie in [0, {len(v)})")
    return v.copy(), f.astype(np.int64).copy()


def _edge_table(f: np.ndarray):
    """(edges (E, 2) sorted pairs, half-edge -> edge id (3F,)); half-edge k is face k % F from corner k // F."""
    he = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    n = int(f.max()) + 1 if f.size else 1
    keys, inverse = np.unique(he[:, 0] * n + he[:, 1], return_inverse=True)  # rows in (a, b) order
    return np.stack([keys // n, keys % n], 1), inverse.ravel()


def _edge_faces(f: np.ndarray, inverse: np.ndarray, n_edges: int) -> np.ndarray:
    """(E, 2) half-edge indices of each edge (-1 where an edge has one: a boundary)."""
    out = np.full((n_edges, 2), -1, np.int64)
    order = np.argsort(inverse, kind="stable")
    ids = inverse[order]
    first = np.r_[True, ids[1:] != ids[:-1]]
    out[ids[first], 0] = order[first]
    second = ~first
    out[ids[second], 1] = order[second]
    return out


def _face_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])


def _split_long(v: np.ndarray, f: np.ndarray, max_len: float, max_passes: int = 32):
    for _ in range(max_passes):
        edges, inverse = _edge_table(f)
        length = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
        long = np.flatnonzero(length > max_len)
        if not long.size:
            break
        nf = len(f)
        halves = _edge_faces(f, inverse, len(edges))
        used = np.zeros(nf, bool)
        chosen = []
        for e in long[np.argsort(-length[long], kind="stable")]:
            fs = [h % nf for h in halves[e] if h >= 0]
            if any(used[x] for x in fs):
                continue
            used[fs] = True
            chosen.append(e)
        chosen = np.asarray(chosen, np.int64)
        new_index = len(v) + np.arange(len(chosen))
        v = np.concatenate([v, 0.5 * (v[edges[chosen, 0]] + v[edges[chosen, 1]])])
        added = []
        for col in (0, 1):
            h = halves[chosen, col]
            ok = h >= 0
            h, m = h[ok], new_index[ok]
            face, corner = h % nf, h // nf
            p = f[face, corner]
            q = f[face, (corner + 1) % 3]
            r = f[face, (corner + 2) % 3]
            f[face] = np.stack([p, m, r], 1)  # (p, q, r) -> (p, m, r) and (m, q, r): orientation kept
            added.append(np.stack([m, q, r], 1))
        f = np.concatenate([f, *added])
    return v, f


def _neighbours(f: np.ndarray, n: int) -> list[set]:
    nb = [set() for _ in range(n)]
    edges, _ = _edge_table(f)
    for a, b in edges.tolist():
        nb[a].add(b)
        nb[b].add(a)
    return nb


def _vertex_faces(f: np.ndarray, n: int) -> list[list[int]]:
    vf = [[] for _ in range(n)]
    for i, tri in enumerate(f.tolist()):
        for x in tri:
            vf[x].append(i)
    return vf


def _collapse_short(v: np.ndarray, f: np.ndarray, min_len: float, max_len: float):
    edges, _ = _edge_table(f)
    length = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
    short = np.flatnonzero(length < min_len)
    if not short.size:
        return v, f
    n = len(v)
    nb, vf = _neighbours(f, n), _vertex_faces(f, n)
    normals = _face_normals(v, f)
    fl = f.tolist()  # Python lists in the loop: per-element NumPy indexing costs more than the work
    locked = [False] * n
    removed = [False] * len(f)
    alive = n
    for a, b in edges[short[np.argsort(length[short], kind="stable")]].tolist():
        if locked[a] or locked[b] or alive <= 6:
            continue
        common = nb[a] & nb[b]
        if len(common) != 2 or any(len(nb[c]) <= 3 for c in common):
            continue
        ring = (nb[a] | nb[b]) - {a, b}
        if len(ring) < 3:
            continue
        p = 0.5 * (v[a] + v[b])
        ring_idx = np.fromiter(ring, np.int64)
        if np.any(np.linalg.norm(v[ring_idx] - p, axis=1) > max_len):
            continue
        moved = [fi for fi in set(vf[a]) | set(vf[b]) if not removed[fi]]
        keep = [fi for fi in moved if not (a in fl[fi] and b in fl[fi])]
        tri = np.array([fl[fi] for fi in keep], np.int64).reshape(-1, 3)
        tv = v[tri]
        tv[(tri == a) | (tri == b)] = p
        new_n = np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])
        if np.any(np.einsum("ij,ij->i", new_n, normals[keep]) <= 0):
            continue  # a face would turn over (or degenerate)
        v[a] = p
        for fi in moved:
            if a in fl[fi] and b in fl[fi]:
                removed[fi] = True
        for fi in keep:
            fl[fi] = [a if x == b else x for x in fl[fi]]
        for x in nb[b] - {a}:
            nb[x].discard(b)
            nb[x].add(a)
        nb[a] = (nb[a] | nb[b]) - {a, b}
        nb[b] = set()
        vf[a] = keep
        locked[a] = locked[b] = True
        for x in ring:
            locked[x] = True
        alive -= 1
    f = np.array(fl, np.int64).reshape(-1, 3)[~np.array(removed, bool)]
    used = np.unique(f)
    index = np.full(n, -1, np.int64)
    index[used] = np.arange(len(used))
    return v[used], index[f]


def _flip_edges(v: np.ndarray, f: np.ndarray):
    # Python lists in the loop: per-element NumPy indexing costs more than the work
    edges, inverse = _edge_table(f)
    nf = len(f)
    halves = _edge_faces(f, inverse, len(edges)).tolist()
    fl = f.tolist()
    nb = _neighbours(f, len(v))
    valence = [len(x) for x in nb]
    locked = [False] * len(v)
    for h0, h1 in halves:
        if h0 < 0 or h1 < 0:
            continue
        fa, ca = h0 % nf, h0 // nf
        fb, cb = h1 % nf, h1 // nf
        ta, tb = fl[fa], fl[fb]
        a, b, c = ta[ca], ta[(ca + 1) % 3], ta[(ca + 2) % 3]  # fa = (a, b, c)
        d = tb[(cb + 2) % 3]  # fb = (b, a, d)
        if tb[cb] != b or locked[a] or locked[b] or locked[c] or locked[d] or c == d or d in nb[c]:
            continue
        va, vb, vc, vd = valence[a], valence[b], valence[c], valence[d]
        if va <= 3 or vb <= 3:
            continue
        before = (va - 6) ** 2 + (vb - 6) ** 2 + (vc - 6) ** 2 + (vd - 6) ** 2
        after = (va - 7) ** 2 + (vb - 7) ** 2 + (vc - 5) ** 2 + (vd - 5) ** 2
        if after >= before:
            continue
        t1, t2 = [a, d, c], [d, b, c]
        normals = _face_normals(v, np.array([ta, tb, t1, t2]))  # one call: the loop's cost is per call
        n_old, n1, n2 = normals[0] + normals[1], normals[2], normals[3]
        if n1 @ n_old <= 0 or n2 @ n_old <= 0 or n1 @ n2 <= 0:
            continue
        fl[fa], fl[fb] = t1, t2
        nb[a].discard(b)
        nb[b].discard(a)
        nb[c].add(d)
        nb[d].add(c)
        valence[a], valence[b], valence[c], valence[d] = va - 1, vb - 1, vc + 1, vd + 1
        locked[a] = locked[b] = locked[c] = locked[d] = True
    return v, np.array(fl, np.int64).reshape(-1, 3)


def _relax(v: np.ndarray, f: np.ndarray, weight: float = 0.5) -> np.ndarray:
    import scipy.sparse as sp

    edges, _ = _edge_table(f)
    n = len(v)
    i = np.r_[edges[:, 0], edges[:, 1]]
    j = np.r_[edges[:, 1], edges[:, 0]]
    adj = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    degree = np.asarray(adj.sum(axis=1)).ravel()
    centroid = (adj @ v) / np.maximum(degree, 1)[:, None]
    fn = _face_normals(v, f)
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-30)
    d = centroid - v
    d -= np.einsum("ij,ij->i", d, vn)[:, None] * vn
    return v + weight * d * (degree > 0)[:, None]


def isotropic_remesh(vertices, faces, target: float, iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V', 3) float32, faces (F', 3) int32): the closed mesh remeshed towards edge length
    `target` (same units as the vertices). See the module docstring."""
    if not target > 0:
        raise ValueError(f"target: expected an edge length > 0, got {target}")
    v, f = _check(vertices, faces)
    lo, hi = 0.8 * target, 4.0 / 3.0 * target
    for _ in range(iterations):
        v, f = _split_long(v, f, hi)
        v, f = _collapse_short(v, f, lo, hi)
        v, f = _flip_edges(v, f)
        v = _relax(v, f)
    v, f = _split_long(v, f, hi)  # the relaxation may have stretched an edge: none ends above 4/3 target
    return v.astype(np.float32), f.astype(np.int32)


def nearest_vertices(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """(V_new,) index of the nearest vertex of `old` (V_old, 3) for each vertex of `new` (V_new, 3)."""
    _, index = cKDTree(np.asarray(old, np.float64)).query(np.asarray(new, np.float64))
    return np.asarray(index, np.int64)
