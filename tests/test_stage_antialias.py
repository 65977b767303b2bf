"""Antialias stage: face adjacency, analytic coverage of a straight edge, silhouette-only blending, a
NumPy reference of the documented formula, and finite-difference gradients w.r.t. every differentiable
input. tri_id and depth come from a tiny NumPy rasterizer below, so no other stage is involved."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
import warp as wp
from drstudio.renderer.stages.antialias import antialias, face_neighbors
from support.gradcheck import check_gradient, weighted_loss

# an arbitrary camera: non-unit quaternion (the kernels normalize it) and a translation
POSE = np.array([0.3, -0.2, 1.5, 0.2, -0.4, 0.1, 1.8], np.float32)


def rotation(pose: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation matrix of a pose's (x, y, z, w) quaternion."""
    x, y, z, w = np.asarray(pose[3:], np.float64) / np.linalg.norm(pose[3:])
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def to_world(p_cam: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return (np.asarray(p_cam, np.float64) @ rotation(pose).T + pose[:3]).astype(np.float32)


def project(world: np.ndarray, intr: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(V, 3) pixel x, pixel y, depth in float64, the convention stated in the stage's docstring."""
    pc = (np.asarray(world, np.float64) - pose[:3]) @ rotation(pose)  # rows of R^T (p - pos)
    d = -pc[:, 2]
    return np.stack([intr[0] * pc[:, 0] / d + intr[2], intr[3] - intr[1] * pc[:, 1] / d, d], axis=1)


def edge(p, q, x):
    return (q[0] - p[0]) * (x[1] - p[1]) - (q[1] - p[1]) * (x[0] - p[0])


def rasterize(scr: np.ndarray, faces: np.ndarray, width: int, height: int):
    """Nearest face whose projection contains each pixel center, and its view depth (1/depth is affine
    in screen space). Returns tri_id int32 (N,), depth float32 (N,)."""
    ys, xs = np.mgrid[0:height, 0:width]
    c = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5])
    tri_id = np.full(c.shape[1], -1, np.int32)
    depth = np.full(c.shape[1], np.inf)
    for f, (i0, i1, i2) in enumerate(faces):
        v0, v1, v2 = scr[i0], scr[i1], scr[i2]
        area = edge(v0, v1, v2)
        if min(v0[2], v1[2], v2[2]) <= 0 or area == 0:
            continue
        b = np.stack([edge(v1, v2, c), edge(v2, v0, c), edge(v0, v1, c)]) / area
        d = 1.0 / (b[0] / v0[2] + b[1] / v1[2] + b[2] / v2[2])
        hit = (b >= 0).all(axis=0) & (d < depth)
        tri_id[hit], depth[hit] = f, d[hit]
    return tri_id, np.where(tri_id >= 0, depth, 0.0).astype(np.float32)


def reference_antialias(color, tri_id, depth, scr, faces, neighbors, width, height, max_walk=16):
    """The docstring's formula in plain NumPy (float64). Also returns the margins of its discrete choices
    (gaps between competing crossings t, |t - 1|, |t - 0.5|, the perpendicularity test in pixels), so
    gradient tests can check that none flips within their finite-difference step."""
    out = np.array(color, np.float64)
    margins = []
    area = lambda f: edge(*scr[faces[f]])  # noqa: E731
    for p, d in np.ndindex(width * height, 2):
        q = p + 1 if d == 0 else p + width
        if (d == 0 and p % width + 1 >= width) or (d == 1 and q >= width * height) or tri_id[p] == tri_id[q]:
            continue
        a, b = (q, p) if tri_id[p] < 0 or (tri_id[q] >= 0 and depth[q] < depth[p]) else (p, q)
        ca = np.array([a % width + 0.5, a // width + 0.5])
        cb = np.array([b % width + 0.5, b // width + 0.5])
        f = tri_id[a]
        for _ in range(max_walk):
            v = scr[faces[f]]
            if (v[:, 2] <= 0).any():
                break
            s = np.sign(area(f))
            cand = []
            for k in range(3):
                ea, eb = s * edge(v[k], v[(k + 1) % 3], ca), s * edge(v[k], v[(k + 1) % 3], cb)
                if eb < ea:
                    cand.append((ea / (ea - eb), k))
            cand.sort()
            t, k = cand[0]
            margins += [abs(t - 1)] + ([cand[1][0] - t] if len(cand) > 1 else [])
            if t > 1:
                break
            nb = neighbors[f, k]
            if nb >= 0 and area(nb) * area(tri_id[a]) > 0:
                f = nb
                continue
            v0, v1 = v[k], v[(k + 1) % 3]
            margins.append(abs(abs(v1[1 - d] - v0[1 - d]) - abs(v1[d] - v0[d])))
            if abs(v1[1 - d] - v0[1 - d]) >= abs(v1[d] - v0[d]):
                margins.append(abs(t - 0.5))
                if t > 0.5:
                    out[b] += (color[a] - color[b]) * (t - 0.5)
                else:
                    out[a] += (color[b] - color[a]) * (0.5 - t)
            break
    return out, np.array(margins)


class Setup:
    """Warp inputs of `antialias` for a mesh, camera and per-pixel colors; tri_id/depth rasterized here."""

    def __init__(self, world, faces, intr, pose, width, height, color, neighbors=None, grad=False):
        self.faces_np = np.asarray(faces, np.int32)
        self.nb_np = face_neighbors(self.faces_np) if neighbors is None else np.asarray(neighbors, np.int32)
        self.width, self.height = width, height
        self.scr = project(world, intr, pose)
        self.tri_np, self.depth_np = rasterize(self.scr, self.faces_np, width, height)
        self.color_np = np.asarray(color, np.float32)
        arr = lambda x, dt: wp.array(x, dtype=dt, requires_grad=grad)  # noqa: E731
        self.color = arr(self.color_np, float)
        self.world = arr(np.asarray(world, np.float32), wp.vec3)
        self.intr = arr(np.asarray(intr, np.float32), float)
        self.pose = arr(np.asarray(pose, np.float32), float)
        self.tri_id = wp.array(self.tri_np, dtype=wp.int32)
        self.depth = wp.array(self.depth_np, dtype=float)
        self.faces = wp.array(self.faces_np.ravel(), dtype=wp.int32)
        self.neighbors = wp.array(self.nb_np.ravel(), dtype=wp.int32)

    def run(self) -> wp.array:
        return antialias(self.color, self.tri_id, self.depth, self.world, self.faces, self.neighbors,
                         self.intr, self.pose, self.width, self.height)

    def reference(self):
        return reference_antialias(self.color_np, self.tri_np, self.depth_np, self.scr, self.faces_np,
                                   self.nb_np, self.width, self.height)


# ---------------------------------------------------------------------------------------------- adjacency

def test_face_neighbors_quad(device):
    nb = face_neighbors(np.array([[0, 1, 2], [0, 2, 3]]))
    assert nb.dtype == np.int32
    np.testing.assert_array_equal(nb, [[-1, -1, 1], [0, -1, -1]])


def test_face_neighbors_closed_icosphere(device):
    faces = trimesh.creation.icosphere(subdivisions=2).faces
    nb = face_neighbors(faces)
    assert nb.shape == faces.shape and (nb >= 0).all()
    for f, k in np.ndindex(*faces.shape):
        g = nb[f, k]
        assert g != f
        assert {faces[f, k], faces[f, (k + 1) % 3]} <= set(faces[g])
        assert f in nb[g]


def test_face_neighbors_split_vertices_and_nonmanifold_are_boundary(device):
    # the same quad with the diagonal's vertices duplicated, plus a third face on edge (0, 1) of a fan
    np.testing.assert_array_equal(face_neighbors(np.array([[0, 1, 2], [3, 4, 5]])), -np.ones((2, 3)))
    nb = face_neighbors(np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]]))
    assert nb[:, 0].tolist() == [-1, -1, -1]


def test_face_neighbors_validates(device):
    with pytest.raises(ValueError, match="faces"):
        face_neighbors(np.zeros((4, 2), np.int32))
    with pytest.raises(TypeError, match="faces"):
        face_neighbors(np.zeros((4, 3), np.float32))


# ---------------------------------------------------------------------------------------------- forward

def half_plane(axis: int, edge_px: float, inside_low: bool, intr, depth=2.0, far=60.0):
    """A quad in the camera plane z = -depth covering the half of the image with pixel coordinate
    `axis` below (inside_low) or above `edge_px`; its diagonal is far outside the image."""
    e = (edge_px - intr[2 + axis]) * depth / intr[axis] * (1.0 if axis == 0 else -1.0)
    s = -1.0 if (inside_low == (axis == 0)) else 1.0  # camera y points up, pixel y down
    u = np.array([[e, -far], [e + s * far, -far], [e + s * far, far], [e, far]])
    cam = np.zeros((4, 3))
    cam[:, axis], cam[:, 1 - axis], cam[:, 2] = u[:, 0], u[:, 1], -depth
    return cam


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("frac", [0.3, 0.7])
@pytest.mark.parametrize("inside_low", [True, False])
def test_straight_edge_gives_exact_pixel_coverage(axis, frac, inside_low, device):
    """A straight silhouette edge at pixel coordinate 10.3 / 10.7 (x) or 3.3 / 3.7 (y) of a 20x8 image:
    after AA every pixel holds coverage * inside + (1 - coverage) * outside, with coverage the
    analytic fraction of the pixel on the inside (1 or 0 away from the edge)."""
    width, height = 20, 8
    intr = np.array([16.0, 14.0, 10.0, 4.0], np.float32)
    edge_px = (10.0 if axis == 0 else 3.0) + frac
    world = to_world(half_plane(axis, edge_px, inside_low, intr), POSE)
    faces = [[0, 1, 2], [0, 2, 3]]
    inside, outside = np.array([1.0, 0.5, 0.25]), np.array([0.1, 0.2, 0.9])
    # the colors a hard renderer would produce: inside where covered, outside on background
    s = Setup(world, faces, intr, POSE, width, height, np.zeros((width * height, 3)))
    covered = (s.tri_np >= 0)[:, None]
    s = Setup(world, faces, intr, POSE, width, height, np.where(covered, inside, outside))

    ys, xs = np.mgrid[0:height, 0:width]
    lo = (xs if axis == 0 else ys).ravel().astype(np.float64)
    coverage = np.clip(edge_px - lo, 0, 1) if inside_low else np.clip(lo + 1 - edge_px, 0, 1)
    np.testing.assert_array_equal(covered[:, 0], lo + 0.5 < edge_px if inside_low else lo + 0.5 > edge_px)
    expected = coverage[:, None] * inside + (1 - coverage[:, None]) * outside
    np.testing.assert_allclose(s.run().numpy(), expected, atol=2e-5)


def test_interior_edge_of_connected_quad_changes_nothing(device):
    """A quad covering the whole image, its diagonal crossing it, random colors per pixel: the diagonal
    is shared by two front faces, so nothing blends. Without adjacency the same diagonal blends."""
    width, height = 12, 10
    intr = np.array([10.0, 10.0, 6.0, 5.0], np.float32)
    cam = np.array([[-3, -3, -2], [3, -2.5, -2.2], [2.5, 3, -1.9], [-3, 2.8, -2.0]], np.float64)
    world = to_world(cam, POSE)
    color = np.random.default_rng(1).uniform(0, 1, (width * height, 3))
    s = Setup(world, [[0, 1, 2], [0, 2, 3]], intr, POSE, width, height, color)
    assert set(np.unique(s.tri_np)) == {0, 1}
    np.testing.assert_array_equal(s.run().numpy(), s.color_np)

    split = Setup(world, [[0, 1, 2], [0, 2, 3]], intr, POSE, width, height, color, neighbors=-np.ones((2, 3)))
    out = split.run().numpy()
    assert (np.abs(out - split.color_np).max(axis=1) > 1e-3).sum() >= 5
    np.testing.assert_allclose(out, split.reference()[0], atol=1e-4)


def sphere_setup(grad=False, width=24, height=24):
    ico = trimesh.creation.icosphere(subdivisions=2)
    world = to_world(ico.vertices + [0.1, -0.05, -3.0], POSE)
    intr = np.array([30.0, 28.0, 12.3, 11.8], np.float32)
    color = np.random.default_rng(2).uniform(0, 1, (width * height, 3))
    return Setup(world, ico.faces, intr, POSE, width, height, color, grad=grad)


def test_closed_sphere_blends_only_silhouette_pixels(device):
    """On a closed icosphere every interior edge joins two front faces, so only pixels next to the
    background change; the result matches the NumPy reference of the documented formula."""
    s = sphere_setup()
    out = s.run().numpy()
    img = (s.tri_np >= 0).reshape(s.height, s.width)
    band = np.zeros_like(img)
    band[:, :-1] |= img[:, :-1] != img[:, 1:]
    band[:, 1:] |= img[:, :-1] != img[:, 1:]
    band[:-1] |= img[:-1] != img[1:]
    band[1:] |= img[:-1] != img[1:]
    changed = (out != s.color_np).any(axis=1).reshape(img.shape)
    assert img.sum() > 200 and len(np.unique(s.tri_np)) > 60  # many faces meet inside the disk
    assert not (changed & ~band).any()
    # and the silhouette is found: (nearly) every covered/background pair blends one of its pixels
    pairs = img[:, :-1] != img[:, 1:]
    hit = (pairs & (changed[:, :-1] | changed[:, 1:])).sum()
    vpairs = img[:-1] != img[1:]
    hit += (vpairs & (changed[:-1] | changed[1:])).sum()
    assert hit >= 0.9 * (pairs.sum() + vpairs.sum())
    np.testing.assert_allclose(out, s.reference()[0], atol=1e-4)


def test_antialias_validates_inputs(device):
    s = sphere_setup()
    with pytest.raises(ValueError, match="tri_id"):
        antialias(s.color, wp.zeros(5, dtype=wp.int32), s.depth, s.world, s.faces, s.neighbors, s.intr,
                  s.pose, s.width, s.height)
    with pytest.raises(TypeError, match="depth"):
        antialias(s.color, s.tri_id, s.tri_id, s.world, s.faces, s.neighbors, s.intr, s.pose, s.width,
                  s.height)
    with pytest.raises(ValueError, match="neighbors"):
        antialias(s.color, s.tri_id, s.depth, s.world, s.faces, s.faces[:3], s.intr, s.pose, s.width,
                  s.height)
    with pytest.raises(ValueError, match="width"):
        antialias(s.color, s.tri_id, s.depth, s.world, s.faces, s.neighbors, s.intr, s.pose, 0, s.height)


# ---------------------------------------------------------------------------------------------- gradients
#
# The AA output is linear in the colors and in t, and t = e(a) / (e(a) - e(b)) is a smooth function of
# the projected vertices, so central differences have no truncation error to speak of as long as no
# discrete choice (front pixel, edge, walk step, t vs 0.5, perpendicularity) flips within the step:
# `grad_setup` asserts all their margins are >= 0.05 (in t, i.e. pixels), while the steps below move
# every projected vertex by at most 0.016 px (quaternion entries; 0.007 px for positions, 0.01 px for
# intrinsics), and the blended edges are steep, so t moves by at most ~0.023. What remains is float32
# roundoff: the loss sums 3N = 360 terms of size <= 1 in float32, so two evaluations differ by ~1e-5 from
# re-rounding alone, ~5e-3 in a difference quotient with 2h = 2e-3; hence atol = 2e-2 against geometry
# gradients of size ~1..10, and rtol = 1e-2.

def grad_setup():
    """A quad (two triangles sharing an interior edge) partly in a 12x10 image with slanted edges."""
    width, height = 12, 10
    intr = np.array([12.0, 11.0, 6.2, 4.9], np.float32)
    cam = np.array([[-0.82, -0.52, -1.86], [0.63, -0.6, -2.45], [0.87, 0.52, -1.8], [-0.49, 0.93, -2.19]])
    color = np.random.default_rng(3).uniform(0, 1, (width * height, 3))
    s = Setup(to_world(cam, POSE), [[0, 1, 2], [0, 2, 3]], intr, POSE, width, height, color, grad=True)
    ref, margins = s.reference()
    assert (np.abs(ref - s.color_np).max(axis=1) > 1e-3).sum() >= 10
    assert margins.min() >= 0.05, margins.min()
    np.testing.assert_allclose(s.run().numpy(), ref, atol=1e-4)
    return s


@pytest.fixture(scope="module")
def gs(device):
    with wp.ScopedDevice(device):  # module scope: set up before the per-test default device
        return grad_setup()


def forward_of(s):
    return lambda: weighted_loss(s.run(), seed=4)


def tape_grad(s, arr):
    tape = wp.Tape()
    with tape:
        loss = forward_of(s)()
    tape.backward(loss)
    g = arr.grad.numpy().copy()
    tape.zero()
    return g


def test_gradient_world_vertices(gs, device):
    """Moving a vertex moves the silhouette and changes the blended coverage as the tape predicts."""
    g = tape_grad(gs, gs.world)
    assert (np.abs(g).max(axis=1) > 0.1).all()  # every vertex bounds a visible silhouette edge
    check_gradient(forward_of(gs), gs.world, eps=1e-3, rtol=1e-2, atol=2e-2, indices=range(12))


def test_gradient_color(gs, device):
    # linear in color: only roundoff, ~1e-5 / (2 * 1e-2)
    changed = np.flatnonzero((gs.reference()[0] != gs.color_np).any(axis=1))
    idx = np.concatenate([changed[:6] * 3 + np.arange(len(changed[:6])) % 3, [0, 100, 200]])
    check_gradient(forward_of(gs), gs.color, eps=1e-2, rtol=1e-2, atol=5e-3, indices=idx)


def test_gradient_intrinsics(gs, device):
    # a step of 1e-2 in cx/cy moves vertices 1e-2 px, in fx/fy <= 5e-3 px; quotient roundoff ~1e-5 / 2e-2
    assert np.abs(tape_grad(gs, gs.intr)).min() > 0.05
    check_gradient(forward_of(gs), gs.intr, eps=1e-2, rtol=1e-2, atol=5e-3, indices=range(4))


def test_gradient_pose(gs, device):
    # a translation step moves vertices by <= 0.007 px, a quaternion step (~1e-3 rad) by <= 0.016 px
    g = tape_grad(gs, gs.pose)
    assert np.abs(g[:3]).min() > 0.1
    check_gradient(forward_of(gs), gs.pose, eps=1e-3, rtol=1e-2, atol=2e-2, indices=range(7))
