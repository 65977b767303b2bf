"""Large steps in inverse rendering of geometry (Nicolet, Jacobson, Jakob 2021) for vertex arrays.

Plain gradient steps on vertex positions move each vertex by its own gradient: noisy, high-frequency
updates that crumple a mesh before it can move far. Nicolet et al. optimize u = (I + lambda L) x instead
(L the mesh's uniform Laplacian, x the positions) and map back by x = (I + lambda L)^-1 u: the gradient
seen by u is (I + lambda L)^-1 g (the matrix is symmetric), a smoothed gradient, so large steps keep the
surface smooth. Their optimizer is Adam with a single second-moment scale per array ("uniform Adam", the
`largesteps` package's `AdamUniform`: per-entry first and second moments, each step divided by the largest
square root of the bias-corrected second moments), so the smoothing is not undone by per-entry normalization.

`LargeSteps(vertices, faces, lam, lr)` keeps u, its moments, and a sparse LU factorization of
(I + lambda L) (SciPy), on the host: a mesh of 5k vertices solves in about a millisecond.
`ShapeOptimizer` is a `Problem`'s optimizer when some of its vertex arrays take large steps: those arrays
by `LargeSteps`, every other parameter by the scene's optimizer (Adam or SGD), with one step count, one
schedule and one state dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
    gradients skip the update (nothing changes). A value written into `vertices` by someone else (an edit, a
    keyframe) is taken over: u is recomputed from it before the next update. `state_dict()` /
    `load_state_dict()` hold u and the moments (float64) for keyframes."""

    def __init__(self, vertices: wp.array, faces: np.ndarray, lam: float = 10.0, lr: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not isinstance(vertices, wp.array) or vertices.dtype != wp.vec3:
            raise TypeError("vertices: expected a (V,) wp.array of vec3")
        if not lam >= 0:
            raise ValueError(f"lam: expected >= 0, got {lam}")
        if not lr >= 0:
            raise ValueError(f"lr: expected >= 0, got {lr}")
        n = vertices.shape[0]
        faces = np.asarray(faces, np.int64).reshape(-1, 3)
        if faces.size and (faces.min() < 0 or faces.max() >= n):
            raise ValueError(f"faces: indices must lie in [0, {n})")
        self.vertices, self.lam, self.lr, self.betas, self.eps = vertices, float(lam), float(lr), betas, float(eps)
        self.faces = faces
        self.matrix = (sp.identity(n, format="csr") + self.lam * uniform_laplacian(faces, n)).tocsc()
        self._solve = spla.factorized(self.matrix)
        self._written = vertices.numpy().copy()
        self.u = self.matrix @ self._written.astype(np.float64)
        self.m = np.zeros_like(self.u)
        self.g2 = np.zeros_like(self.u)
        self.steps = 0

    def to_positions(self, u: np.ndarray) -> np.ndarray:
        return np.stack([self._solve(np.ascontiguousarray(u[:, k])) for k in range(3)], axis=1)

    def gradient_finite(self) -> bool:
        return bool(np.isfinite(self.vertices.grad.numpy()).all())

    def _sync(self) -> None:
        """Take over a value written into the array by someone else (u follows x)."""
        x = self.vertices.numpy()
        if not np.array_equal(x, self._written):
            self._written = x.copy()
            self.u = self.matrix @ x.astype(np.float64)

    def _write(self) -> None:
        x = self.to_positions(self.u).astype(np.float32)
        self.vertices.assign(wp.array(x, dtype=wp.vec3, device=self.vertices.device))
        self._written = x

    def step(self, lr: float | None = None) -> bool:
        """One update with learning rate `lr` (default: `self.lr`); False (nothing changes) when the gradient
        is not finite."""
        if not self.gradient_finite():
            return False
        self._sync()
        g = self.vertices.grad.numpy().astype(np.float64)
        gu = self.to_positions(g)  # (I + lam L)^-1 g: the gradient with respect to u
        b1, b2 = self.betas
        self.steps += 1
        self.m = b1 * self.m + (1 - b1) * gu
        self.g2 = b2 * self.g2 + (1 - b2) * gu * gu
        m_hat = self.m / (1 - b1**self.steps)
        scale = float(np.sqrt(self.g2 / (1 - b2**self.steps)).max())  # uniform: one scale for the array
        self.u = self.u - (self.lr if lr is None else lr) * m_hat / (scale + self.eps)
        self._write()
        return True

    def state_dict(self) -> dict:
        return {"u": self.u.copy(), "m": self.m.copy(), "g2": self.g2.copy(), "steps": int(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        arrays = {k: np.asarray(state[k], np.float64).reshape(-1, 3) for k in ("u", "m", "g2")}
        for k, a in arrays.items():
            if a.shape != self.u.shape:
                raise ValueError(f"state[{k!r}]: expected shape {self.u.shape}, got {a.shape}")
        self.u, self.m, self.g2 = (arrays[k].copy() for k in ("u", "m", "g2"))
        self.steps = int(state["steps"])
        self._write()


_EMPTY = np.zeros(0, np.float32)


def large_steps_lambda(parameter_spec) -> float | None:
    """The lambda of a vertices parameter's `parametrization` (scene schema): the default is large steps with
    lambda 19; None for `{"type": "plain"}`."""
    from ..scene_schema import DEFAULT_LARGE_STEPS_LAMBDA

    spec = getattr(parameter_spec, "parametrization", None)
    if spec is None:
        return DEFAULT_LARGE_STEPS_LAMBDA
    return None if spec.type == "plain" else float(getattr(spec, "lambda"))


class ShapeOptimizer:
    """One optimizer over a problem's free arrays: the arrays listed in `large` ({index: (faces, lambda)},
    (V,) vec3 vertex arrays) take large steps (`LargeSteps`, uniform Adam with `betas`), the others are
    updated by `make_base(arrays, lrs)` (the scene's Adam or SGD). One applied-step count: a step is applied
    to all arrays or to none (a non-finite loss or gradient anywhere skips it). `schedule(iteration)`
    multiplies the learning rates of the large-step arrays (the base applies the same schedule itself).

    `state_dict()` has the keys of `optimizers._Optimizer.state_dict()`: per buffer one flat array per array,
    empty where an array has no such buffer; large-step arrays have `exp_avg` (the first moment of u),
    `exp_avg_sq` (its second moments) and `u`, in float64."""

    def __init__(self, arrays: Sequence[wp.array], lrs: Sequence[float], large: dict[int, tuple[np.ndarray, float]],
                 make_base: Callable | None, betas: tuple[float, float] = (0.9, 0.999),
                 schedule: Callable[[int], float] | None = None):
        if len(lrs) != len(arrays):
            raise ValueError(f"lrs: expected {len(arrays)} learning rates, got {len(lrs)}")
        self.arrays, self.lrs, self.schedule = list(arrays), [float(x) for x in lrs], schedule
        self.large = {i: LargeSteps(arrays[i], faces, lam, self.lrs[i], betas=betas)
                      for i, (faces, lam) in large.items()}
        self.others = [i for i in range(len(arrays)) if i not in self.large]
        self.base = make_base([arrays[i] for i in self.others], [self.lrs[i] for i in self.others]) \
            if self.others else None
        self._iteration = 0
        self.steps = 0

    @property
    def iteration(self) -> int:
        """Calls to step(), applied or skipped: the schedule's clock."""
        return self._iteration

    @iteration.setter
    def iteration(self, value: int) -> None:
        self._iteration = int(value)
        if self.base is not None:
            self.base.iteration = int(value)

    def set_lr(self, key: int, lr: float) -> None:
        if not lr >= 0.0:
            raise ValueError(f"lr: expected a learning rate >= 0, got {lr}")
        self.lrs[key] = float(lr)
        if key in self.large:
            self.large[key].lr = float(lr)
        else:
            self.base.set_lr(self.others.index(key), float(lr))

    def get_lr(self, key: int) -> float:
        return self.lrs[key] * (self.schedule(self._iteration) if self.schedule else 1.0)

    def step(self, loss: wp.array | None = None, *, loss_value: float | None = None) -> bool:
        ok = (loss_value is None or math.isfinite(loss_value)) and all(
            ls.gradient_finite() for ls in self.large.values())
        if self.base is not None:
            applied = bool(self.base.step(loss, loss_value=loss_value if ok else math.nan))
        else:
            applied = ok and (loss is None or bool(np.isfinite(loss.numpy()).all()))
        if applied:
            factor = self.schedule(self._iteration) if self.schedule else 1.0
            for i, ls in self.large.items():
                ls.step(self.lrs[i] * factor)
            self.steps += 1
        self.iteration = self._iteration + 1
        return applied

    def _buffer_names(self) -> list[str]:
        names = ["exp_avg", "exp_avg_sq", "u"]
        if self.base is not None:
            names += [b for b in self.base._buffer_names if b not in names]
        return names

    def state_dict(self) -> dict:
        base = self.base.state_dict() if self.base is not None else {}
        out = {"iteration": self._iteration, "steps": self.steps, "lr": list(self.lrs)}
        for b in self._buffer_names():
            values = []
            for i in range(len(self.arrays)):
                if i in self.large:
                    key = {"exp_avg": "m", "exp_avg_sq": "g2", "u": "u"}.get(b)
                    values.append(self.large[i].state_dict()[key].ravel() if key else _EMPTY)
                else:
                    got = base.get(b)
                    values.append(got[self.others.index(i)] if got is not None else _EMPTY)
            out[b] = values
        return out

    def load_state_dict(self, state) -> None:
        names = self._buffer_names()
        missing = {"iteration", "steps", "lr", *names} - set(state)
        if missing:
            raise ValueError(f"state: missing keys {sorted(missing)}")
        if len(state["lr"]) != len(self.arrays):
            raise ValueError(f"state['lr']: expected {len(self.arrays)} learning rates, got {len(state['lr'])}")
        if self.base is not None:
            sub = {"iteration": state["iteration"], "steps": state["steps"],
                   "lr": [state["lr"][i] for i in self.others]}
            for b in self.base._buffer_names:
                sub[b] = [state[b][i] for i in self.others]
            self.base.load_state_dict(sub)
        for i, ls in self.large.items():
            ls.load_state_dict({"u": state["u"][i], "m": state["exp_avg"][i], "g2": state["exp_avg_sq"][i],
                                "steps": state["steps"]})
            ls.lr = float(state["lr"][i])
        self.lrs = [float(x) for x in state["lr"]]
        self.steps = int(state["steps"])
        self.iteration = int(state["iteration"])
