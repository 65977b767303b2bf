"""Raster stage: rasterized primary visibility against BVH ray casting (`visibility.trace_primary`) and a
float64 NumPy ray/triangle reference, on several meshes and cameras, including triangles behind and
straddling the camera plane, back faces and exact ties.

The two methods may only disagree on pixels where the choice is a tie to float32 precision: the two
triangles' hits are at the same depth (relative 1e-5, in float64), or the pixel's ray passes within 1e-4
(barycentric) of an edge of one of them (shared edges: both methods' float32 tests may round either way).
"""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.primitives import uv_sphere
from drstudio.renderer.stages import camera as cam
from drstudio.renderer.stages import raster, visibility
from support import scenes
from support.devices import assert_same_render

wp.config.quiet = True


def _arrays(vertices, faces, intrinsics, pose):
    world = wp.array(np.asarray(vertices, np.float32), dtype=wp.vec3)
    f = wp.array(np.asarray(faces, np.int32).reshape(-1), dtype=wp.int32)
    return world, f, wp.array(np.asarray(intrinsics, np.float32), dtype=float), \
        wp.array(np.asarray(pose, np.float32), dtype=float)


def _ray_hits(origin, dirs, tri):
    """float64 (t, min barycentric) of every ray with triangle tri (3, 3); t = nan where parallel."""
    p0, p1, p2 = tri
    e1, e2 = p1 - p0, p2 - p0
    pv = np.cross(dirs, e2)
    det = pv @ e1
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        tv = origin - p0
        b1 = (pv @ tv) * inv
        qv = np.cross(tv, e1)
        b2 = (dirs @ qv) * inv
        t = (qv @ e2) * inv
    return t, np.minimum(np.minimum(b1, b2), 1 - b1 - b2)


def _compare(vertices, faces, intrinsics, pose, width, height):
    """Raster ids vs BVH ids; asserts every disagreement is a tie. Returns the raster ids."""
    world, f, intr, pose_a = _arrays(vertices, faces, intrinsics, pose)
    ids = raster.rasterize(world, f, intr, pose_a, width, height).numpy()
    origins, dirs = cam.generate_rays(intr, pose_a, width, height)
    ref = visibility.trace_primary(visibility.build_bvh(world, f), origins, dirs).numpy()
    origin, d = scenes.pixel_rays(intrinsics, pose, width, height)
    v = np.asarray(vertices, np.float64)
    fc = np.asarray(faces).reshape(-1, 3)
    for p in np.flatnonzero(ids != ref):
        near_edge, depths = False, []
        for tri in (ids[p], ref[p]):
            if tri < 0:
                depths.append(np.inf)
                continue
            t, bmin = _ray_hits(origin, d[p:p + 1], v[fc[tri]])
            depths.append(t[0])
            near_edge |= abs(bmin[0]) < 1e-4
        tie = np.isclose(depths[0], depths[1], rtol=1e-5, atol=0)
        assert near_edge or tie, f"pixel {p}: raster {ids[p]} at t={depths[0]}, BVH {ref[p]} at t={depths[1]}"
    assert (ids != ref).mean() < 2e-3
    return ids


@pytest.mark.parametrize("segments", [12, 40, 90])
@pytest.mark.parametrize("eye", [(0.0, 0.4, 3.2), (2.0, -1.0, 1.5), (0.1, 0.0, 1.3)])
def test_sphere_matches_bvh(segments, eye, device):
    v, f, _ = uv_sphere(1.0, segments)
    pose = scenes.look_at(eye, (0.0, 0.0, 0.0))
    w, h = 64, 48
    ids = _compare(v, f, scenes.centered_intrinsics(50.0, w, h), pose, w, h)
    assert (ids >= 0).mean() > 0.2


def test_scenes_match_bvh(device):
    for sc in (scenes.gradient_scene(40, 30), scenes.two_meshes(48, 36), scenes.shadow_scene(40, 30)):
        world, faces, _, _ = scenes.world_geometry(sc)
        c = next(iter(sc.cameras.values()))
        ids = _compare(world, faces, c.intrinsics, c.pose, c.width, c.height)
        assert (ids >= 0).any()


def test_floor_straddling_the_camera_plane_and_triangles_behind(device):
    """A floor quad from z = -20 to z = +20 under a camera at the origin looking down -z (its vertices
    behind the camera project through the camera plane), a triangle behind the camera, and a triangle
    crossing the camera plane beside the view axis."""
    v = np.array([[-20, -1, -20], [20, -1, -20], [20, -1, 20], [-20, -1, 20],  # floor
                  [-1, -1, 5], [1, -1, 5], [0, 1, 5],  # behind the camera
                  [0.5, -0.2, 0.5], [0.9, -0.2, -3.0], [0.7, 0.6, -1.0]], np.float64)  # crossing z = 0
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [7, 8, 9]])
    pose = np.array([0, 0, 0, 0, 0, 0, 1], np.float32)
    w, h = 64, 48
    ids = _compare(v, f, scenes.centered_intrinsics(70.0, w, h), pose, w, h)
    assert (ids == 3).sum() > 10  # the crossing triangle is seen
    assert not (ids == 2).any()  # the one behind is not
    assert (np.isin(ids, [0, 1])).sum() > 0.3 * w * h  # the floor below the horizon
    assert (ids.reshape(h, w)[:10, : w // 2] == -1).all()  # sky (the crossing triangle is on the right)


def test_back_faces_are_hit_and_ties_go_to_the_lower_id(device):
    v = np.array([[-1, -1, -2], [1, -1, -2], [0, 1, -2]], np.float64)
    pose = np.array([0, 0, 0, 0, 0, 0, 1], np.float32)
    intr = scenes.centered_intrinsics(60.0, 32, 32)
    front = _compare(v, [[0, 1, 2]], intr, pose, 32, 32)
    back = _compare(v, [[0, 2, 1]], intr, pose, 32, 32)
    np.testing.assert_array_equal(front >= 0, back >= 0)
    assert (front >= 0).sum() > 50
    # coincident copies: 1 and 2 are the same triangle (exactly equal depths: the lower id, 1, wins); 0 is
    # the reversed winding, whose depth rounds differently (a float32 tie either way)
    world, f, i, p = _arrays(v, [[0, 2, 1], [0, 1, 2], [0, 1, 2]], intr, pose)
    ids = raster.rasterize(world, f, i, p, 32, 32).numpy()
    assert np.isin(ids[front >= 0], [0, 1]).all() and (ids[front >= 0] == 1).any()
    np.testing.assert_array_equal(ids[front < 0], -1)


def test_bands_of_a_shifted_principal_point_match_the_full_image(device):
    v, f, _ = uv_sphere(1.0, 30)
    pose = scenes.look_at((0.3, 0.5, 3.0), (0.0, 0.0, 0.0))
    intr = scenes.centered_intrinsics(45.0, 40, 40)
    world, fa, i, p = _arrays(v, f, intr, pose)
    full = raster.rasterize(world, fa, i, p, 40, 40).numpy()
    band_intr = intr.copy()
    band_intr[3] -= 17
    band = raster.rasterize(world, fa, wp.array(band_intr, dtype=float), p, 40, 11).numpy()
    np.testing.assert_array_equal(band, full[17 * 40:28 * 40])


def test_validation_errors_name_the_argument(device):
    world, f, i, p = _arrays(np.zeros((3, 3)), [[0, 1, 2]], [10, 10, 5, 5], [0, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="faces"):
        raster.rasterize(world, wp.array(np.zeros(4, np.int32), dtype=wp.int32), i, p, 8, 8)
    with pytest.raises(ValueError, match="width"):
        raster.rasterize(world, f, i, p, 0, 8)
    with pytest.raises((TypeError, ValueError), match="intrinsics"):
        raster.rasterize(world, f, wp.zeros(3, dtype=float), p, 8, 8)


def test_render_view_gives_the_same_image_with_either_visibility_method(monkeypatch, device):
    """render_view rasterizes unless the mesh has more than RASTER_MAX_TRIANGLES_PER_PIXEL triangles per
    pixel; forcing the BVH path must give the same image (no exact ties in this scene)."""
    from drstudio.renderer import render
    from drstudio.renderer.device_scene import DeviceScene

    ds = DeviceScene(scenes.gradient_scene(40, 30, mode="antialias"), device)
    raster_img = render.render_view(ds, ds.prepare(), "main").numpy()
    monkeypatch.setattr(render, "RASTER_MAX_TRIANGLES_PER_PIXEL", 0.0)
    bvh_img = render.render_view(ds, ds.prepare(), "main").numpy()
    assert_same_render(raster_img, bvh_img, device)


def test_one_pass_cpu_resolve_equals_the_two_passes(device):
    """On a CPU `rasterize` keeps depth and id in one pass over the triangles; the ids are those of the two
    passes (nearest depth, then the lowest id among exactly equal depths), coincident copies included."""
    if not wp.get_device(device).is_cpu:
        pytest.skip("the one-pass resolve is the CPU's")
    v, f, _ = uv_sphere(1.0, 24)
    faces = np.concatenate([f, f[::-1], f[:, ::-1]])  # exact ties: copies, reversed windings
    for eye in ((0.0, 0.4, 3.2), (0.1, 0.0, 1.1)):
        intr = scenes.centered_intrinsics(50.0, 48, 40)
        world, fa, i, p = _arrays(v, faces, intr, scenes.look_at(eye, (0.0, 0.0, 0.0)))
        one = raster.rasterize(world, fa, i, p, 48, 40).numpy()
        cam_pts = wp.empty(world.shape[0], dtype=wp.vec3)
        wp.launch(raster.camera_space_kernel, dim=world.shape[0], inputs=[world, p, cam_pts])
        depth = wp.full(48 * 40, 1.0e30, dtype=float)
        ids = wp.full(48 * 40, int(raster.NO_ID), dtype=wp.int32)
        for resolve in (0, 1):
            wp.launch(raster.raster_kernel, dim=len(faces), inputs=[cam_pts, fa, i, 48, 40, 0, resolve, depth, ids])
        wp.launch(raster._finish_ids, dim=48 * 40, inputs=[ids])
        assert (one >= 0).sum() > 300
        np.testing.assert_array_equal(one, ids.numpy())
