"""Large steps in inverse rendering of geometry (Nicolet, Jacobson, Jakob 2021) for vertex arrays.

Plain gradient steps on vertex positions move each vertex by its own gradient: noisy, high-frequency
updates that crumple a mesh before it can move far. Nicolet et al. optimize u = (I + lambda L) x instead
(L the mesh's uniform Laplacian, x the positions) and map back by x = (I + lambda L)^-1 u: the gradient
seen by u is (I + lambda L)^-1 g (the matrix is symmetric), a smoothed gradient, so large steps keep the
surface smooth. Their optimizer is Adam with a single second-moment scale per array ("uniform Adam": the
maximum of the per-entry second moments), so the smoothing is not undone by per-entry normalization.

`LargeSteps(vertices, faces, lam, lr)` keeps u, its moments, and a sparse LU factorization of
(I + lambda L) (SciPy), on the host: a mesh of 5k vertices solves in well under a millisecond.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import warp as wp


def uniform_laplacian(faces: np.ndarray, n: int) -> sp.csr_matrix:
    """L = D - A of the mesh graph (A: vertex adjacency by edges, D: degrees), (n, n) sparse."""
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    adj = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # an edge shared by two faces counts once
    return (sp.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj).tocsr()


class LargeSteps:
    """Uniform Adam on u = (I + lam L) x for one (V,) vec3 vertex array (see the module docstring).

    `step()` reads `vertices.grad`, updates u and writes x = (I + lam L)^-1 u into `vertices`; non-finite
    gradients skip the update (nothing changes). `state_dict()` / `load_state_dict()` hold u and the
    moments for keyframes."""

    def __init__(self, vertices: wp.array, faces: np.ndarray, lam: float = 10.0, lr: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not isinstance(vertices, wp.array) or vertices.dtype != wp.vec3:
            raise TypeError("vertices: expected a (V,) wp.array of vec3")
        if not lam >= 0:
            raise ValueError(f"lam: expected >= 0, got {lam}")
        if not lr > 0:
            raise ValueError(f"lr: expected > 0, got {lr}")
        n = vertices.shape[0]
        faces = np.asarray(faces, np.int64).reshape(-1, 3)
        if faces.size and (faces.min() < 0 or faces.max() >= n):
            raise ValueError(f"faces: indices must lie in [0, {n})")
        self.vertices, self.lam, self.lr, self.betas, self.eps = vertices, float(lam), float(lr), betas, float(eps)
        self.matrix = (sp.identity(n, format="csr") + self.lam * uniform_laplacian(faces, n)).tocsc()
        self._solve = spla.factorized(self.matrix)
        x = vertices.numpy().astype(np.float64)
        self.u = self.matrix @ x
        self.m = np.zeros_like(self.u)
        self.v = 0.0  # uniform second moment: one scalar
        self.steps = 0

    def to_positions(self, u: np.ndarray) -> np.ndarray:
        return np.stack([self._solve(u[:, k]) for k in range(3)], axis=1)

    def step(self) -> bool:
        g = self.vertices.grad.numpy().astype(np.float64)
        if not np.isfinite(g).all():
            return False
        gu = self.to_positions(g)  # (I + lam L)^-1 g: the gradient with respect to u
        b1, b2 = self.betas
        self.steps += 1
        self.m = b1 * self.m + (1 - b1) * gu
        self.v = b2 * self.v + (1 - b2) * float(np.max(gu * gu))
        m_hat = self.m / (1 - b1**self.steps)
        v_hat = self.v / (1 - b2**self.steps)
        self.u = self.u - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        x = self.to_positions(self.u).astype(np.float32)
        self.vertices.assign(wp.array(x, dtype=wp.vec3, device=self.vertices.device))
        return True

    def state_dict(self) -> dict:
        return {"u": self.u.copy(), "m": self.m.copy(), "v": float(self.v), "steps": int(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        u, m = np.asarray(state["u"], np.float64), np.asarray(state["m"], np.float64)
        if u.shape != self.u.shape or m.shape != self.m.shape:
            raise ValueError(f"state: expected u and m of shape {self.u.shape}, got {u.shape} and {m.shape}")
        self.u, self.m, self.v, self.steps = u.copy(), m.copy(), float(state["v"]), int(state["steps"])
        self.vertices.assign(wp.array(self.to_positions(self.u).astype(np.float32), dtype=wp.vec3,
                                      device=self.vertices.device))
