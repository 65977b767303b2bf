"""Camera stage: ray generation and projection against NumPy references, and their tape gradients."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.stages.camera import generate_rays, project_points
from support.arrays import farr, quat_matrix
from support.gradcheck import check_gradient, weighted_loss

W, H = 5, 4
INTR = np.array([3.0, 2.5, 2.2, 1.9], np.float32)  # wide field of view: directions of order 1
POSE = np.array([0.3, -0.2, 1.5, 0.2, -0.3, 0.1, 1.1], np.float32)  # unnormalized quaternion on purpose


def camera_dirs(intr, w, h):
    fx, fy, cx, cy = intr
    y, x = np.mgrid[0:h, 0:w].reshape(2, -1) + 0.5
    return np.stack([(x - cx) / fx, -(y - cy) / fy, -np.ones_like(x)], 1)


def test_identity_camera_directions(device):
    pose = [1.0, 2.0, 3.0, 0, 0, 0, 1]
    o, d = generate_rays(farr(INTR), farr(pose), W, H)
    np.testing.assert_allclose(o.numpy(), np.tile([1.0, 2.0, 3.0], (W * H, 1)))
    d = d.numpy()
    # top-left pixel center (0.5, 0.5) points left (-x) and up (+y); the last one right and down
    np.testing.assert_allclose(d[0], [(0.5 - 2.2) / 3.0, (1.9 - 0.5) / 2.5, -1.0], rtol=1e-6)
    np.testing.assert_allclose(d[-1], [(4.5 - 2.2) / 3.0, (1.9 - 3.5) / 2.5, -1.0], rtol=1e-6)
    np.testing.assert_allclose(d, camera_dirs(INTR, W, H), rtol=1e-6, atol=1e-7)


def test_turned_camera_looks_down_minus_x(device):
    # +90 degrees about +Y turns the view axis -Z into -X
    s = np.sqrt(0.5)
    _, d = generate_rays(farr([1, 1, 0.5, 0.5]), farr([0, 0, 0, 0, s, 0, s]), 1, 1)
    np.testing.assert_allclose(d.numpy()[0], [-1.0, 0.0, 0.0], atol=1e-6)


def test_rotated_camera_matches_numpy(device):
    o, d = generate_rays(farr(INTR), farr(POSE), W, H)
    np.testing.assert_allclose(o.numpy(), np.tile(POSE[:3], (W * H, 1)), rtol=1e-6)
    want = camera_dirs(INTR, W, H) @ quat_matrix(POSE[3:]).T
    np.testing.assert_allclose(d.numpy(), want, rtol=1e-5, atol=1e-6)


def test_project_generated_points_round_trip(device):
    o, d = generate_rays(farr(INTR), farr(POSE), W, H)
    t = np.random.default_rng(1).uniform(0.5, 5.0, W * H)
    pts = o.numpy() + t[:, None] * d.numpy()
    p = project_points(wp.array(pts.astype(np.float32), dtype=wp.vec3), farr(INTR), farr(POSE)).numpy()
    y, x = np.mgrid[0:H, 0:W].reshape(2, -1) + 0.5
    np.testing.assert_allclose(p[:, 0], x, atol=1e-4)
    np.testing.assert_allclose(p[:, 1], y, atol=1e-4)
    np.testing.assert_allclose(p[:, 2], t, rtol=1e-5)


def test_project_behind_camera_has_negative_depth(device):
    # identity camera at the origin: (1, 2, +4) is behind it, mirrored through the center of projection
    p = project_points(wp.array([[1.0, 2.0, 4.0]], dtype=wp.vec3), farr([10, 20, 5, 6]),
                       farr([0, 0, 0, 0, 0, 0, 1]))
    np.testing.assert_allclose(p.numpy()[0], [5 + 10 * 1 / -4, 6 - 20 * 2 / -4, -4.0], rtol=1e-6)


def _sum2(a, b):
    # Tape-recorded a + b of two (1,) losses: ray origins and directions both depend on the pose.
    out = wp.zeros(1, dtype=float, requires_grad=True)
    wp.launch(_add_kernel, dim=1, inputs=[a, b], outputs=[out])
    return out


@wp.kernel
def _add_kernel(a: wp.array(dtype=float), b: wp.array(dtype=float), out: wp.array(dtype=float)):
    out[0] = a[0] + b[0]


# Tolerances: a 5x4 image gives 60 direction entries of order 1 with weights in [-1, 1], |L| ~ 5; float32
# roundoff of the central difference is ~ u |L| / eps = 6e-8 * 5 / 1e-3 = 3e-4, truncation eps^2 L''' / 6
# ~ 1e-6. atol 2e-3 leaves a margin of ~6x.
@pytest.mark.parametrize("which", ["intrinsics", "pose"])
def test_generate_rays_gradient(which, device):
    intr, pose = farr(INTR, which == "intrinsics"), farr(POSE, which == "pose")

    def forward():
        o, d = generate_rays(intr, pose, W, H)
        if which == "intrinsics":  # the origins do not depend on the intrinsics
            return weighted_loss(d, seed=2)
        return _sum2(weighted_loss(o, 1), weighted_loss(d, 2))

    check_gradient(forward, intr if which == "intrinsics" else pose, eps=1e-3, rtol=1e-2, atol=2e-3,
                   indices=range(4 if which == "intrinsics" else 7))


# Tolerances: 6 points at depth 2..4 with f = 20 give pixel values ~ 10..30, |L| ~ 60, gradients ~ f / z
# ~ 5..10. With eps = 1e-2 roundoff is 6e-8 * 60 / 1e-2 = 4e-4 and truncation eps^2 / 6 * |L'''|
# (~ 6 f |X| / z^4 per term, a few units) ~ 1e-4; atol 5e-3, rtol 1e-2.
@pytest.mark.parametrize("which", ["points", "intrinsics", "pose"])
def test_project_points_gradient(which, device):
    rng = np.random.default_rng(3)
    cam = np.array([0.1, 0.2, 0.3, 0.05, -0.1, 0.02, 0.9], np.float32)
    local = np.c_[rng.uniform(-1, 1, (6, 2)), -rng.uniform(2, 4, 6)]
    world = local @ quat_matrix(cam[3:]).T + cam[:3]
    pts = wp.array(world.astype(np.float32), dtype=wp.vec3, requires_grad=which == "points")
    intr = farr([20.0, 22.0, 8.0, 7.0], which == "intrinsics")
    pose = farr(cam, which == "pose")
    param = {"points": pts, "intrinsics": intr, "pose": pose}[which]
    check_gradient(lambda: weighted_loss(project_points(pts, intr, pose), seed=4), param, eps=1e-2, rtol=1e-2,
                   atol=5e-3, indices=range(param.numpy().size))


def test_validation(device):
    with pytest.raises(ValueError, match="pose"):
        generate_rays(farr(INTR), farr(POSE[:6]), W, H)
    with pytest.raises(TypeError, match="intrinsics"):
        generate_rays(wp.array(INTR.astype(np.float64), dtype=wp.float64), farr(POSE), W, H)
    with pytest.raises(ValueError, match="width"):
        generate_rays(farr(INTR), farr(POSE), 0, H)
    with pytest.raises(TypeError, match="points"):
        project_points(farr(np.zeros(6)), farr(INTR), farr(POSE))
