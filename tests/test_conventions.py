"""renderer.conventions: look_at, intrinsics, poses, quaternions, OpenCV <-> OpenGL, sRGB."""

import numpy as np
import pytest
from drstudio.renderer import conventions as cv

RNG = np.random.default_rng(7)


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("seed", range(5))
def test_look_at_minus_z_points_at_target(seed):
    rng = np.random.default_rng(seed)
    eye, target = rng.normal(size=3) * 3, rng.normal(size=3)
    pose = cv.look_at(eye, target, up=[0, 1, 0])
    r = cv.quat_to_matrix(pose[3:])
    np.testing.assert_allclose(pose[:3], eye)
    forward = (target - eye) / np.linalg.norm(target - eye)
    np.testing.assert_allclose(-r[:, 2], forward, atol=1e-9)
    assert abs(r[:, 0] @ [0, 1, 0]) < 1e-9  # camera +X is horizontal
    assert r[:, 1] @ [0, 1, 0] > 0  # camera +Y leans up
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-9)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_look_at_rejects_up_parallel_to_view():
    with pytest.raises(ValueError, match="parallel"):
        cv.look_at([0, 3, 0], [0, 0, 0], [0, 1, 0])
    with pytest.raises(ValueError):
        cv.look_at([1, 1, 1], [1, 1, 1])


def test_fov_y_intrinsics_put_the_fov_edge_on_the_image_edge():
    w, h, fov = 200, 100, 60.0
    fx, fy, cx, cy = cv.fov_y_to_intrinsics(fov, w, h)
    assert (fx, cx, cy) == (pytest.approx(fy), 100, 50)
    y = np.tan(np.radians(fov / 2))  # camera-space point (0, y, -1) on the top edge of the fov
    assert cy - fy * y / 1.0 == pytest.approx(0.0)
    assert cv.intrinsics_to_fov_y([fx, fy, cx, cy], h) == pytest.approx(fov)
    with pytest.raises(ValueError):
        cv.fov_y_to_intrinsics(180, w, h)


@pytest.mark.parametrize("seed", range(5))
def test_quaternion_matrix_round_trip(seed):
    rng = np.random.default_rng(seed)
    r = random_rotation(rng)
    q = cv.quat_from_matrix(r)
    assert q[3] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
    np.testing.assert_allclose(cv.quat_to_matrix(q), r, atol=1e-9)


def test_quaternion_from_matrix_near_180_degrees():
    for axis in np.eye(3):
        q = cv.quat_from_axis_angle(axis, 179.999)
        np.testing.assert_allclose(cv.quat_to_matrix(cv.quat_from_matrix(cv.quat_to_matrix(q))),
                                   cv.quat_to_matrix(q), atol=1e-9)


def test_axis_angle_and_euler():
    q = cv.quat_from_axis_angle([0, 2, 0], 90)  # axis need not be unit
    np.testing.assert_allclose(cv.quat_to_matrix(q) @ [1, 0, 0], [0, 0, -1], atol=1e-12)  # right-hand rule
    angles = [30.0, -45.0, 70.0]
    rx, ry, rz = (cv.quat_to_matrix(cv.quat_from_axis_angle(axis, d))
                  for axis, d in zip(np.eye(3), angles, strict=True))
    np.testing.assert_allclose(cv.quat_to_matrix(cv.quat_from_euler_deg(angles)), rz @ ry @ rx, atol=1e-12)
    a, b = cv.quat_from_axis_angle([1, 0, 0], 30), cv.quat_from_axis_angle([0, 0, 1], 50)
    np.testing.assert_allclose(cv.quat_to_matrix(cv.quat_multiply(a, b)),
                               cv.quat_to_matrix(a) @ cv.quat_to_matrix(b), atol=1e-12)


def test_pose_matrix_round_trip_and_rigidity():
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = random_rotation(RNG), [1, 2, 3]
    pose = cv.matrix_to_pose(m)
    np.testing.assert_allclose(cv.pose_to_matrix(pose), m, atol=1e-9)
    with pytest.raises(ValueError, match="rigid"):
        cv.matrix_to_pose(np.diag([2.0, 2, 2, 1]))
    with pytest.raises(ValueError, match="rigid"):
        cv.matrix_to_pose(np.diag([1.0, 1, -1, 1]))  # a reflection


def test_opencv_opengl_round_trip():
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = random_rotation(RNG), [0.5, -1, 2]
    gl = cv.opencv_to_opengl(m)
    np.testing.assert_allclose(cv.opengl_to_opencv(gl), m)
    np.testing.assert_allclose(gl[:3, 2], -m[:3, 2])  # OpenCV looks down +Z, OpenGL down -Z
    np.testing.assert_allclose(gl[:3, 1], -m[:3, 1])  # OpenCV +Y is down in the image
    np.testing.assert_allclose(gl[:3, [0, 3]], m[:3, [0, 3]])
    pose = cv.matrix_to_pose(m)
    back = cv.opengl_to_opencv(cv.opencv_to_opengl(pose))
    np.testing.assert_allclose(cv.pose_to_matrix(back), m, atol=1e-9)
    np.testing.assert_allclose(cv.pose_to_matrix(cv.opencv_to_opengl(pose)), gl, atol=1e-9)


def test_opencv_camera_at_z4_looking_at_origin_matches_look_at():
    cv_matrix = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 4], [0, 0, 0, 1]], float)
    pose = cv.matrix_to_pose(cv.opencv_to_opengl(cv_matrix))
    np.testing.assert_allclose(pose, cv.look_at([0, 0, 4], [0, 0, 0]), atol=1e-12)


def test_srgb_round_trip_and_known_values():
    x = np.linspace(0, 1, 101)
    np.testing.assert_allclose(cv.linear_to_srgb(cv.srgb_to_linear(x)), x, atol=1e-12)
    assert cv.srgb_to_linear(0.5) == pytest.approx(0.21404, abs=1e-5)
    assert cv.linear_to_srgb(0.5) == pytest.approx(0.73536, abs=1e-5)


def test_bad_shapes_raise_value_errors():
    with pytest.raises(ValueError, match="expected 7"):
        cv.pose_to_matrix([0, 0, 0, 1])
    with pytest.raises(ValueError, match="zero"):
        cv.normalize([0, 0, 0])
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        cv.opencv_to_opengl(np.eye(3))
