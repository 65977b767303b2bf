"""Occupancy grid: marks empty space empty, keeps a dense blob, decays like NerfAcc's grid."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.volume import OccupancyGrid

BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


@wp.kernel
def _ball(points: wp.array(dtype=wp.vec3), center: wp.vec3, radius: float, value: float,
          out: wp.array(dtype=float)):
    i = wp.tid()
    out[i] = wp.where(wp.length(points[i] - center) < radius, value, 0.0)


def ball(center, radius, value=10.0):
    def density_fn(points):
        out = wp.empty(points.shape[0], dtype=float, device=points.device)
        wp.launch(_ball, dim=points.shape[0], inputs=[points, wp.vec3(*center), radius, value, out],
                  device=points.device)
        return out
    return density_fn


def cell_distance_range(grid, center):
    """(nearest, farthest) distance from `center` to each cell's box, (nx, ny, nz) each."""
    lo, hi, res = np.array(grid.aabb[:3]), np.array(grid.aabb[3:]), np.array(grid.resolution)
    size = (hi - lo) / res
    c = grid.cell_centers() - center
    nearest = np.linalg.norm(np.maximum(np.abs(c) - size / 2, 0.0), axis=-1)
    farthest = np.linalg.norm(np.abs(c) + size / 2, axis=-1)
    return nearest, farthest


def test_marks_empty_space_empty_and_keeps_the_blob(device):
    grid = OccupancyGrid(16, BOX)
    assert grid.occupied.numpy().all()  # nothing is skipped before the first update
    center, radius = np.array([0.3, -0.2, 0.1]), 0.35
    for step in range(6):
        grid.update(ball(center, radius), ema=0.95, threshold=0.01, step=step, points_per_cell=4)
    occ = grid.occupied.numpy().astype(bool)
    nearest, farthest = cell_distance_range(grid, center)
    assert occ[farthest < radius].all()  # cells inside the blob
    assert not occ[nearest >= radius].any()  # cells the blob does not reach
    # cells the blob only grazes may be missed by the jittered points; what matters for rendering is the
    # blob's volume (its density mass) left in unoccupied cells: check it is tiny
    rng = np.random.default_rng(0)
    p = rng.normal(size=(200000, 3))
    p = center + radius * p / np.linalg.norm(p, axis=1, keepdims=True) * rng.uniform(0, 1, (len(p), 1)) ** (1 / 3)
    cells = np.floor((p + 1.0) / 2.0 * 16).astype(int)
    assert occ[cells[:, 0], cells[:, 1], cells[:, 2]].mean() > 0.99  # 0.9949 for these draws
    assert grid.occupied_fraction() < 0.1
    assert grid.density.numpy().max() == 10.0


def test_slabs_refreshed_apart_and_combined_equal_the_whole_grid(device):
    """Data-parallel ranks refresh slabs of cells (`rows`) and all-gather the rest (`combine`): the same bits as
    one refresh of the whole grid, over updates with a decayed maximum and a mean-clamped threshold. Emulated
    here: rank b's slab is computed first by a second grid, rank a's `combine` writes it in."""
    res, center = (7, 5, 6), np.array([0.2, -0.1, 0.3])
    whole, a, b = (OccupancyGrid(res, BOX) for _ in range(3))
    slab_a, slab_b = (0, 3), (3, 7)

    def capture(store):
        def combine(density):
            store["b"] = density.numpy()[slab_b[0]:slab_b[1]].copy()
        return combine

    def fill(store):
        def combine(density):
            values = density.numpy()
            values[slab_b[0]:slab_b[1]] = store["b"]
            density.assign(values)
        return combine

    for step, (radius, value) in enumerate(((0.5, 3.0), (0.3, 0.005), (0.6, 0.02))):
        fn = ball(center, radius, value)
        whole.update(fn, ema=0.9, threshold=0.01, step=step, points_per_cell=2)
        store = {}
        b.update(fn, ema=0.9, threshold=0.01, step=step, points_per_cell=2, rows=slab_b, combine=capture(store))
        a.update(fn, ema=0.9, threshold=0.01, step=step, points_per_cell=2, rows=slab_a, combine=fill(store))
        b.density.assign(a.density)  # rank b's own all-gather, as a's
        np.testing.assert_array_equal(a.density.numpy(), whole.density.numpy())
        np.testing.assert_array_equal(a.occupied.numpy(), whole.occupied.numpy())
    assert 0 < whole.occupied.numpy().mean() < 1  # the threshold did separate cells

    def failing(density):
        raise RuntimeError("lost a rank")

    before = a.density.numpy().copy()
    with pytest.raises(RuntimeError):
        a.update(ball(center, 0.2), step=9, rows=slab_a, combine=failing)
    np.testing.assert_array_equal(a.density.numpy(), before)  # a failed all-gather leaves the grid as it was
    with pytest.raises(ValueError, match="combine"):
        a.update(ball(center, 0.2), rows=slab_a)
    with pytest.raises(ValueError, match="rows"):
        a.update(ball(center, 0.2), rows=(2, 9), combine=failing)


def test_decayed_maximum_forgets_moved_content(device):
    grid = OccupancyGrid(8, BOX)
    a, b = np.array([-0.5, 0.0, 0.0]), np.array([0.5, 0.0, 0.0])
    grid.update(ball(a, 0.3), ema=0.5, threshold=0.01, points_per_cell=8)
    cell_a = tuple(np.floor((a + 1) / 2 * 8).astype(int))
    cell_b = tuple(np.floor((b + 1) / 2 * 8).astype(int))
    assert grid.occupied.numpy()[cell_a] == 1 and grid.occupied.numpy()[cell_b] == 0
    for step in range(1, 12):  # the blob moved: 10 * 0.5^11 < 0.01
        grid.update(ball(b, 0.3), ema=0.5, threshold=0.01, step=step, points_per_cell=8)
        if step < 10:
            assert grid.occupied.numpy()[cell_a] == 1, step  # decays slowly: conservative
        np.testing.assert_allclose(grid.density.numpy()[cell_a], 10.0 * 0.5**step, rtol=1e-6)
    assert grid.occupied.numpy()[cell_a] == 0 and grid.occupied.numpy()[cell_b] == 1


def test_threshold_is_clamped_to_the_mean(device):
    # threshold = min(threshold, mean density): a faint blob in empty space is kept even below the
    # threshold (NerfAcc's rule, so early, faint fields are not skipped away) ...
    grid = OccupancyGrid(8, BOX)
    grid.update(ball([0.0, 0.0, 0.0], 0.3, value=0.005), threshold=0.01, points_per_cell=8)
    occ = grid.occupied.numpy()
    assert occ[3:5, 3:5, 3:5].all() and 0.0 < grid.occupied_fraction() < 0.2
    # ... a uniform field above the threshold is occupied everywhere, an empty field nowhere
    grid = OccupancyGrid(4, BOX)
    grid.update(lambda p: wp.full(p.shape[0], 0.05, dtype=float), threshold=0.01)
    assert grid.occupied_fraction() == 1.0
    grid = OccupancyGrid(4, BOX)
    grid.update(lambda p: wp.zeros(p.shape[0], dtype=float), threshold=0.01)
    assert grid.occupied_fraction() == 0.0


def test_validation_errors_name_the_argument(device):
    with pytest.raises(ValueError, match="resolution"):
        OccupancyGrid(0, BOX)
    with pytest.raises(ValueError, match="aabb"):
        OccupancyGrid(4, (1, 0, 0, 0, 1, 1))
    grid = OccupancyGrid(4, BOX)
    with pytest.raises(TypeError, match="density_fn"):
        grid.update(None)
    with pytest.raises(ValueError, match="ema"):
        grid.update(ball([0, 0, 0], 0.5), ema=1.5)
    with pytest.raises(ValueError, match="points_per_cell"):
        grid.update(ball([0, 0, 0], 0.5), points_per_cell=0)
    with pytest.raises(ValueError, match=r"density_fn\(points\)"):
        grid.update(lambda p: wp.zeros(3, dtype=float))
