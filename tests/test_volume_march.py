"""Ray marching: box clipping and stratified samples against NumPy, occupancy skipping, validation."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.volume import OccupancyGrid, sample_rays

BOX = (-1.0, -0.5, -1.0, 1.0, 0.5, 2.0)


def vec3s(a):
    return wp.array(np.asarray(a, np.float32), dtype=wp.vec3)


def slab(o, d, box, near, far):
    """NumPy reference of the clipped segment (t0, t1) of one ray."""
    lo, hi = np.array(box[:3]), np.array(box[3:])
    t0, t1 = near, far
    for a in range(3):
        if abs(d[a]) < 1e-12:
            if not lo[a] <= o[a] <= hi[a]:
                return None
        else:
            ta, tb = (lo[a] - o[a]) / d[a], (hi[a] - o[a]) / d[a]
            t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
    return (t0, t1) if t1 > t0 else None


def rays(seed=0):
    rng = np.random.default_rng(seed)
    o = rng.uniform(-3, 3, (40, 3))
    target = rng.uniform(-1.2, 1.2, (40, 3)) * [1.0, 0.5, 1.5] + [0, 0, 0.5]
    d = (target - o) * rng.uniform(0.5, 2.0, (40, 1))  # not unit
    o[0], d[0] = [0.2, 0.1, -3.0], [0.0, 0.0, 1.0]  # axis-parallel, inside the x/y slabs
    o[1], d[1] = [2.0, 0.1, -3.0], [0.0, 0.0, 1.0]  # axis-parallel, outside the x slab: a miss
    o[2], d[2] = [0.0, 0.0, 0.5], [0.3, -0.2, 0.1]  # starts inside the box
    o[3], d[3] = [0.0, 3.0, 0.0], [0.0, 1.0, 0.0]  # points away: a miss
    return o, d


@pytest.mark.parametrize("jitter", [False, True])
def test_samples_tile_the_clipped_segment(jitter, device):
    o, d = rays()
    near, far, n = 0.5, 6.0, 7
    s = sample_rays(vec3s(o), vec3s(d), BOX, n, near, far, seed=3, jitter=jitter)
    counts, offsets = s.ray_counts.numpy(), s.ray_offsets.numpy()
    ts, te, tp = s.t_starts.numpy(), s.t_ends.numpy(), s.t_points.numpy()
    pos, dirs, deltas, ray = s.positions.numpy(), s.directions.numpy(), s.deltas.numpy(), s.ray_indices.numpy()
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(counts)[:-1]]))
    assert s.n_samples == counts.sum() and s.n_rays == len(o)
    hits = 0
    for r in range(len(o)):
        seg = slab(o[r], d[r], BOX, near, far)
        if seg is None:
            assert counts[r] == 0, r
            continue
        hits += 1
        assert counts[r] == n, r
        sl = slice(offsets[r], offsets[r] + n)
        edges = np.linspace(seg[0], seg[1], n + 1)
        np.testing.assert_allclose(ts[sl], edges[:-1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(te[sl], edges[1:], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(ray[sl], r)
        np.testing.assert_allclose(deltas[sl], (seg[1] - seg[0]) / n * np.linalg.norm(d[r]), rtol=1e-5)
        np.testing.assert_allclose(pos[sl], o[r] + tp[sl, None] * d[r], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dirs[sl], np.broadcast_to(d[r] / np.linalg.norm(d[r]), (n, 3)), rtol=1e-5,
                                   atol=1e-6)
        assert np.all(tp[sl] >= ts[sl] - 1e-6) and np.all(tp[sl] <= te[sl] + 1e-6)
        if not jitter:
            np.testing.assert_allclose(tp[sl], 0.5 * (edges[:-1] + edges[1:]), rtol=1e-5, atol=1e-5)
    assert 10 < hits < len(o) - 2  # the case mixes hits and misses
    assert counts[1] == 0 and counts[3] == 0 and counts[0] == n and counts[2] == n


def test_jitter_is_stratified_and_reproducible(device):
    o, d = rays()
    a = sample_rays(vec3s(o), vec3s(d), BOX, 64, seed=1)
    b = sample_rays(vec3s(o), vec3s(d), BOX, 64, seed=1)
    c = sample_rays(vec3s(o), vec3s(d), BOX, 64, seed=2)
    np.testing.assert_array_equal(a.t_points.numpy(), b.t_points.numpy())
    assert not np.allclose(a.t_points.numpy(), c.t_points.numpy())
    u = (a.t_points.numpy() - a.t_starts.numpy()) / (a.t_ends.numpy() - a.t_starts.numpy())
    assert 0.0 <= u.min() and u.max() <= 1.0 and abs(u.mean() - 0.5) < 0.02  # uniform within each stratum


def test_occupancy_drops_samples_in_empty_cells(device):
    o, d = rays(1)
    grid = OccupancyGrid((4, 2, 3), BOX)
    occ = np.zeros((4, 2, 3), np.uint8)
    occ[1, 0, 2] = occ[2, 1, 1] = occ[3, 1, 0] = 1
    grid.occupied.assign(occ)
    full = sample_rays(vec3s(o), vec3s(d), BOX, 32, seed=5)
    kept = sample_rays(vec3s(o), vec3s(d), BOX, 32, seed=5, occupancy=grid)
    lo, hi = np.array(BOX[:3]), np.array(BOX[3:])

    def occupied(p):
        c = np.minimum(((p - lo) / (hi - lo) * [4, 2, 3]).astype(int), [3, 1, 2])
        return occ[c[:, 0], c[:, 1], c[:, 2]] == 1

    fp = full.positions.numpy()
    mask = occupied(fp)
    assert 0 < mask.sum() < len(mask) / 2
    # exactly the occupied samples of the plain march survive, with the same values and order
    np.testing.assert_array_equal(kept.positions.numpy(), fp[mask])
    np.testing.assert_array_equal(kept.t_points.numpy(), full.t_points.numpy()[mask])
    np.testing.assert_array_equal(kept.t_starts.numpy(), full.t_starts.numpy()[mask])
    np.testing.assert_array_equal(kept.ray_indices.numpy(), full.ray_indices.numpy()[mask])
    np.testing.assert_array_equal(kept.ray_counts.numpy(), np.bincount(full.ray_indices.numpy()[mask],
                                                                        minlength=len(o)))
    np.testing.assert_array_equal(kept.ray_offsets.numpy(),
                                  np.concatenate([[0], np.cumsum(kept.ray_counts.numpy())[:-1]]))


def test_sampling_is_not_recorded(device):
    o, d = rays()
    origins, directions = vec3s(o), vec3s(d)
    tape = wp.Tape()
    with tape:
        s = sample_rays(origins, directions, BOX, 4)
    assert len(tape.launches) == 0
    assert not s.positions.requires_grad
    origins.requires_grad = True  # rays with gradients: only the samples' adjoint to them (camera refinement)
    with tape:
        s = sample_rays(origins, directions, BOX, 4)
    assert len(tape.launches) == 1 and callable(tape.launches[0])
    assert s.positions.requires_grad


def test_empty_inputs(device):
    s = sample_rays(vec3s(np.zeros((0, 3))), vec3s(np.zeros((0, 3))), BOX, 4)
    assert s.n_rays == 0 and s.n_samples == 0
    s = sample_rays(vec3s([[5.0, 5.0, 5.0]]), vec3s([[1.0, 0.0, 0.0]]), BOX, 4)
    assert s.n_rays == 1 and s.n_samples == 0


def test_validation_errors_name_the_argument(device):
    o, d = vec3s(np.zeros((2, 3))), vec3s(np.ones((2, 3)))
    with pytest.raises(TypeError, match="origins"):
        sample_rays(np.zeros((2, 3)), d, BOX, 4)
    with pytest.raises(ValueError, match="directions"):
        sample_rays(o, vec3s(np.ones((3, 3))), BOX, 4)
    with pytest.raises(TypeError, match="directions"):
        sample_rays(o, wp.zeros(2, dtype=float), BOX, 4)
    with pytest.raises(ValueError, match="aabb"):
        sample_rays(o, d, (0, 0, 0, 1, 1), 4)
    with pytest.raises(ValueError, match="aabb"):
        sample_rays(o, d, (0, 0, 0, 1, -1, 1), 4)
    with pytest.raises(ValueError, match="n_samples"):
        sample_rays(o, d, BOX, 0)
    with pytest.raises(ValueError, match="near, far"):
        sample_rays(o, d, BOX, 4, near=2.0, far=1.0)
    with pytest.raises(TypeError, match="occupancy"):
        sample_rays(o, d, BOX, 4, occupancy=np.ones((2, 2, 2)))


def lindisp_reference(o, d, box, n, near, far):
    """NumPy reference of a contracted march (march module docstring): (t_starts, t_ends, t_points at the
    midpoints) of one ray, the inner box the central half of `box`."""
    lo, hi = np.array(box[:3]), np.array(box[3:])
    c, h = (lo + hi) / 2, (hi - lo) / 4
    inner = slab(o, d, (*(c - h), *(c + h)), near, far)
    if inner is None:
        a, b = near, max(h.mean() / np.linalg.norm(d), near)
    else:
        a, b = inner
    s1 = 2 * b - b * b / far

    def t_of(s):
        return np.where(s <= b, s, b * b / np.maximum(2 * b - s, 1e-30))

    edges = a + (s1 - a) * np.arange(n + 1) / n
    mids = a + (s1 - a) * (np.arange(n) + 0.5) / n
    def g(t):
        return np.where(t <= b, t, 2 * b - b * b / np.maximum(t, b))

    return t_of(edges[:-1]), t_of(edges[1:]), t_of(mids), g


def test_contracted_march_matches_numpy():
    """Issue 13 (unbounded captures): contracted samples tile the ray from the inner box's entry (or the
    camera) to `far`, uniform in s (linear in t inside, in disparity outside), at the contracted points of
    a NumPy reference; half the strata of a ray starting inside lie in the inner box; all positions lie in
    the lattice box however far the world point is."""
    from drstudio.renderer.volume.march import contract_far, contract_points, uncontract_points

    o, d = rays(3)
    o[4], d[4] = [0.0, 0.0, 0.5], [0.0, 0.0, 1.0]  # inside the inner box
    n, far = 16, contract_far(BOX)
    s = sample_rays(vec3s(o), vec3s(d), BOX, n, 0.0, far, jitter=False, contract=True)
    offsets, counts = s.ray_offsets.numpy(), s.ray_counts.numpy()
    assert (counts == n).all()  # every ray is marched: space is unbounded
    pos = s.positions.numpy()
    lo, hi = np.array(BOX[:3]), np.array(BOX[3:])
    assert (pos >= lo - 1e-5).all() and (pos <= hi + 1e-5).all()
    for r in range(len(o)):
        t0, t1, tp, g = lindisp_reference(o[r], d[r], BOX, n, 0.0, far)
        sl = slice(offsets[r], offsets[r] + n)
        # compared in s = g(t), where strata are uniform (t itself near `far` is float32-sensitive)
        for got, want in ((s.t_starts, t0), (s.t_ends, t1), (s.t_points, tp)):
            np.testing.assert_allclose(g(got.numpy()[sl].astype(np.float64)), g(want), rtol=1e-5, atol=1e-5)
        inner = tp <= tp[n // 2 - 1] * 1.0001  # the linear part: plain lengths
        np.testing.assert_allclose(s.deltas.numpy()[sl][inner], ((t1 - t0) * np.linalg.norm(d[r]))[inner],
                                   rtol=1e-4, atol=1e-5)
        world = o[r] + s.t_points.numpy()[sl, None].astype(np.float64) * d[r]
        np.testing.assert_allclose(pos[sl], contract_points(world, BOX), rtol=1e-4, atol=1e-4)
    c, h = (lo + hi) / 2, (hi - lo) / 4
    inside = np.abs((pos[offsets[4]:offsets[4] + n] - c) / h).max(axis=1) <= 1.0
    assert inside.sum() == n // 2
    world = np.random.default_rng(0).normal(size=(200, 3)) * 5
    np.testing.assert_allclose(uncontract_points(contract_points(world, BOX), BOX), world, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="far"):
        sample_rays(vec3s(o), vec3s(d), BOX, n, contract=True)


def test_contracted_grid_models_far_space():
    """A contracted voxel grid holds what lies far outside its inner box: a solid shell from 4 inner
    half-sizes outwards renders its colour from the centre at the depth the lattice puts its face at; the
    same lattice read bounded is a shell inside the box (what a bounded grid can do with a far wall)."""
    from drstudio.renderer.volume import VoxelGrid
    from drstudio.renderer.volume import render as volume_render
    from drstudio.renderer.volume.march import uncontract_points

    box = np.array([-2.0, -2.0, -2.0, 2.0, 2.0, 2.0])  # inner box [-1, 1]^3
    n = 48
    axis = np.linspace(-2, 2, n)
    lattice = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    inside = np.abs(lattice).max(axis=1) < 2 - 1e-6
    world_norm = np.full(len(lattice), np.inf)
    world_norm[inside] = np.abs(uncontract_points(lattice[inside], box)).max(axis=1)
    raw = np.where(world_norm >= 4.0, 50.0, -20.0).reshape(n, n, n)
    sh = np.zeros((n, n, n, 3))
    sh[..., 0], sh[..., 1], sh[..., 2] = 3.0, -3.0, 0.0  # sigmoid(C0 * 3) red-ish: SH DC as the grid holds it
    rng = np.random.default_rng(1)
    d = rng.normal(size=(64, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = np.zeros_like(d)
    background = wp.array(np.array([0.0, 0.0, 1.0], np.float32), dtype=float)
    expected_depth = 4.0 / np.abs(d).max(axis=1)
    for contract in (True, False):
        grid = VoxelGrid(n, box, 0, density=raw, sh=sh, requires_grad=False, contract=contract)
        rgb, opacity, depth, _ = volume_render(grid, vec3s(o), vec3s(d), 64, background, jitter=False)
        if contract:
            assert opacity.numpy().min() > 0.999
            colour = 1.0 / (1.0 + np.exp(-0.28209479177387814 * np.array([3.0, -3.0, 0.0])))
            np.testing.assert_allclose(rgb.numpy(), np.broadcast_to(colour, (64, 3)), atol=2e-3)
            # the shell's face lies between the lattice planes around contracted norm 1.75 (world norm 4),
            # which far from the centre are world norms apart
            below, above = axis[axis < 1.75].max(), axis[axis >= 1.75].min()
            lo_norm, hi_norm = 1 / (2 - below), 1 / (2 - above)
            ratio = depth.numpy() / expected_depth
            assert (ratio > lo_norm / 4 * 0.98).all() and (ratio < hi_norm / 4 * 1.02).all(), (ratio, lo_norm, hi_norm)
        else:  # bounded, the same lattice is a shell inside the box (its faces 2 from the centre), not at 4
            assert (depth.numpy() <= 2.0 / np.abs(d).max(axis=1) + 1e-4).all()
