"""A coarse occupancy grid for empty-space skipping, maintained during training (after NerfAcc).

The box is split into res[0] x res[1] x res[2] equal cells. Each cell keeps a decayed maximum of the
density seen at random points inside it; cells whose value exceeds a threshold are occupied, and
`march.sample_rays(..., occupancy=grid)` drops samples in the others. Not differentiable: a bookkeeping
structure updated outside the tape (its kernels launch with record_tape=False).
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral

import numpy as np
import warp as wp

from .march import check_array, parse_aabb

# Never differentiated: skip generating adjoints (faster compiles).
wp.set_module_options({"enable_backward": False})


@wp.kernel
def _jittered_points(lo: wp.vec3, cell: wp.vec3, x0: int, ny: int, nz: int, per_cell: int, seed: int,
                     points: wp.array(dtype=wp.vec3)):
    # Point m of cell (i, j, k), i = x0 + the launch's first index (a slab of cells from x0), is stored at
    # ((i - x0) * ny + j) * nz + k) * per_cell + m, uniform in the cell; its random stream is keyed by the index
    # it has in the whole grid, so a slab draws the points the whole grid would.
    ii, j, k, m = wp.tid()
    i = x0 + ii
    state = wp.rand_init(seed, ((i * ny + j) * nz + k) * per_cell + m)
    u = wp.vec3(float(i) + wp.randf(state), float(j) + wp.randf(state), float(k) + wp.randf(state))
    points[((ii * ny + j) * nz + k) * per_cell + m] = lo + wp.cw_mul(u, cell)


@wp.kernel
def _update_cells(values: wp.array(dtype=float), per_cell: int, decay: float, x0: int,
                  density: wp.array3d(dtype=float), total: wp.array(dtype=float)):
    ii, j, k = wp.tid()
    i = x0 + ii
    base = ((ii * density.shape[1] + j) * density.shape[2] + k) * per_cell
    new = float(0.0)
    for m in range(per_cell):
        new = wp.max(new, values[base + m])
    d = wp.max(decay * density[i, j, k], new)
    density[i, j, k] = d
    wp.atomic_add(total, 0, d)


@wp.kernel
def _sum_cells(density: wp.array3d(dtype=float), total: wp.array(dtype=float)):
    # the same additions in the same order as _update_cells over the whole grid (one thread at a time on a CPU)
    i, j, k = wp.tid()
    wp.atomic_add(total, 0, density[i, j, k])


@wp.kernel
def _threshold(density: wp.array3d(dtype=float), threshold: float, total: wp.array(dtype=float),
               occupied: wp.array3d(dtype=wp.uint8)):
    i, j, k = wp.tid()
    n = float(density.shape[0] * density.shape[1] * density.shape[2])
    thr = wp.min(threshold, total[0] / n)
    occupied[i, j, k] = wp.where(density[i, j, k] > thr, wp.uint8(1), wp.uint8(0))


def parse_resolution(name: str, resolution, minimum: int = 1) -> tuple[int, int, int]:
    """(nx, ny, nz) of an int or 3 ints, each >= minimum; ValueError naming `name` otherwise."""
    res = (resolution,) * 3 if isinstance(resolution, Integral) else tuple(resolution)
    if len(res) != 3 or not all(isinstance(r, Integral) and not isinstance(r, bool) and r >= minimum for r in res):
        raise ValueError(f"{name}: expected an int >= {minimum} or 3 of them, got {resolution!r}")
    return tuple(int(r) for r in res)


class OccupancyGrid:
    """Occupancy of res^3 cells over a box.

    Attributes:
        resolution: (nx, ny, nz) cells; lo, hi: wp.vec3 corners of the box.
        density: float32 array3d (nx, ny, nz), the decayed maximum density per cell (starts at 0).
        occupied: uint8 array3d (nx, ny, nz), 1 for occupied. Starts all occupied, so nothing is skipped
            before the first `update`.
    """

    def __init__(self, resolution, aabb, device=None):
        self.resolution = parse_resolution("resolution", resolution)
        self.lo, self.hi = parse_aabb("aabb", aabb)
        self.aabb = tuple(float(v) for v in (*self.lo, *self.hi))
        self.device = wp.get_device(device)
        self.density = wp.zeros(self.resolution, dtype=float, device=self.device)
        self.occupied = wp.ones(self.resolution, dtype=wp.uint8, device=self.device)

    def update(self, density_fn: Callable[[wp.array], wp.array], ema: float = 0.95, threshold: float = 0.01,
               step: int = 0, points_per_cell: int = 1, rows: tuple[int, int] | None = None,
               combine: Callable[[wp.array], None] | None = None) -> None:
        """Refresh the grid from the current field.

        Draws `points_per_cell` uniform random points in every cell (stream keyed by `step`), evaluates
        `density_fn(points)` on them (points: vec3 (C * points_per_cell,), C cells, cell-major in
        (i, j, k) order; it returns float32 (C * points_per_cell,) densities), and updates each cell as
        NerfAcc does: d <- max(ema * d, max over the cell's points). A cell is then occupied iff
        d > min(threshold, mean of d over the grid) (the mean keeps a grid of uniformly low density
        occupied early in training). `threshold` is a density (per unit world length). Call it outside a
        `wp.Tape` (or with a density_fn that does not record); nothing here is differentiable.

        Shared by data-parallel ranks (renderer.optim.distributed): `rows` (x0, x1) refreshes only the slab
        of cells x0 <= i < x1 (their points as the whole grid draws them), then `combine(density)` must write
        the other slabs' new values into `density` (a float32 (nx, ny, nz) copy of the grid's; the ranks'
        all-gather) before the threshold is taken over the whole grid. The grid changes only after
        `combine` returned: a `combine` that raises leaves it as it was. Same bits as the whole update on a CPU.
        """
        if not callable(density_fn):
            raise TypeError(f"density_fn: expected a callable points -> densities, got {type(density_fn).__name__}")
        if not 0.0 <= ema <= 1.0:
            raise ValueError(f"ema: expected a decay in [0, 1], got {ema!r}")
        if not threshold >= 0.0:
            raise ValueError(f"threshold: expected a density >= 0, got {threshold!r}")
        if not isinstance(step, Integral):
            raise TypeError(f"step: expected an int, got {type(step).__name__}")
        if not isinstance(points_per_cell, Integral) or points_per_cell < 1:
            raise ValueError(f"points_per_cell: expected a positive int, got {points_per_cell!r}")
        nx, ny, nz = self.resolution
        x0, x1 = (0, nx) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= x0 <= x1 <= nx:
            raise ValueError(f"rows: expected 0 <= x0 <= x1 <= {nx}, got {rows!r}")
        if (x0, x1) != (0, nx) and combine is None:
            raise ValueError("combine: a refresh of a slab of cells (rows) needs a combine that fills in the others")
        count = (x1 - x0) * ny * nz * int(points_per_cell)
        points = wp.empty(count, dtype=wp.vec3, device=self.device)
        cell = wp.vec3(*[(h - l) / r for l, h, r in zip(self.lo, self.hi, self.resolution, strict=True)])
        if count:
            wp.launch(_jittered_points, dim=(x1 - x0, ny, nz, int(points_per_cell)), device=self.device,
                      record_tape=False, inputs=[self.lo, cell, x0, ny, nz, int(points_per_cell),
                                                 int(step) % (2**31), points])
        values = density_fn(points)
        check_array("density_fn(points)", values, wp.float32, (count,), self.device)
        total = wp.zeros(1, dtype=float, device=self.device)
        density = self.density if combine is None else wp.clone(self.density)
        if count:
            wp.launch(_update_cells, dim=(x1 - x0, ny, nz), device=self.device, record_tape=False,
                      inputs=[values, int(points_per_cell), float(ema), x0, density, total])
        if combine is not None:
            combine(density)
            total.zero_()
            wp.launch(_sum_cells, dim=self.resolution, device=self.device, record_tape=False,
                      inputs=[density, total])
            wp.copy(self.density, density)
        wp.launch(_threshold, dim=self.resolution, device=self.device, record_tape=False,
                  inputs=[self.density, float(threshold), total, self.occupied])

    def occupied_fraction(self) -> float:
        """Fraction of occupied cells (reads the grid back to the host)."""
        return float(self.occupied.numpy().mean())

    @property
    def nbytes(self) -> int:
        """Device memory of the grid's arrays in bytes."""
        return self.density.capacity + self.occupied.capacity

    def cell_centers(self) -> np.ndarray:
        """(nx, ny, nz, 3) float64 world centers of the cells (for tests and inspection)."""
        axes = [l + (np.arange(r) + 0.5) * (h - l) / r for l, h, r in zip(self.lo, self.hi, self.resolution,
                                                                             strict=True)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
