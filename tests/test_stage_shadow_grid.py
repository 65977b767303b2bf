"""Shadow rays against a light-space grid (`stages.shadow_grid`): the same mask as the BVH's
`shading.shadow_mask`, entry for entry, on a quad with hand-checked answers, a random triangle soup with
point lights on every side, inside the scene and directional, and a rasterized sphere's own terminator."""

import numpy as np
import pytest
import warp as wp
from drstudio.renderer import render as render_module
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.params import camera_intrinsics, camera_pose
from drstudio.renderer.stages import camera as cam
from drstudio.renderer.stages import gbuffer, visibility
from drstudio.renderer.stages.shading import Lights, shadow_mask
from drstudio.renderer.stages.shadow_grid import shadow_mask_grid

from benchmarks.bench_render import build_scene


def farr(a):
    return wp.array(np.asarray(a, np.float32), dtype=float)


def iarr(a):
    return wp.array(np.asarray(a, np.int32), dtype=wp.int32)


def mesh(points, faces):
    return wp.Mesh(points=wp.array(np.asarray(points, np.float32), dtype=wp.vec3),
                   indices=iarr(np.asarray(faces).reshape(-1)))


def both(bvh, pos, normals, model, lights, facing_only):
    args = (farr(pos), farr(normals), iarr(model), lights)
    return (shadow_mask(bvh.id, *args, facing_only=facing_only).numpy(),
            shadow_mask_grid(bvh, *args, facing_only=facing_only).numpy())


@pytest.mark.parametrize("facing_only", [False, True])
def test_quad_matches_the_bvh_and_the_hand_checked_answers(device, facing_only):
    quad = mesh([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], [0, 1, 2, 0, 2, 3])
    # a point light above the quad (gridded along +z), one below it (inside the quad's x/y extent, outside
    # its z slab: gridded along -z), two directional lights (the BVH)
    lights = Lights.create(point_position=[[0, 0, 3.0], [0.2, 0.1, 0.5]],
                           dir_direction=[[0.1, 0.0, -1.0], [1.0, 0.0, 0.0]])
    pos = [[0, 0, 0], [3, 0, 0], [0.5, 0.5, 1.0], [0.5, -0.5, 1.0], [0.3, 0.3, 0.0], [0.0, 0.0, 2.0],
           [0.5, 0.5, 0.99]]
    normals = [[0, 0, 1], [0, 0, 1], [0, 0, 2], [0, 0, -1], [0, 0, 1], [0, 0, -1], [0, 0, 1]]
    model = [0, 1, 0, 1, -1, 0, 1]
    want, got = both(quad, pos, normals, model, lights, facing_only)
    np.testing.assert_array_equal(got, want)
    if not facing_only:
        np.testing.assert_array_equal(got, [[0, 1, 0, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1],
                                            [1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 0, 1]])


def test_random_soup_matches_the_bvh_for_lights_on_every_side(device):
    rng = np.random.default_rng(3)
    centers = rng.uniform(-1, 1, (400, 1, 3))
    tris = (centers + rng.normal(0, 0.15, (400, 3, 3))).reshape(-1, 3)
    soup = mesh(tris, np.arange(len(tris)))
    # receivers on the triangles (the hard case: rays leave a surface) and in the open
    f = rng.integers(0, 400, 3000)
    b = rng.dirichlet(np.ones(3), 3000)
    on = np.einsum("nk,nkc->nc", b, tris.reshape(400, 3, 3)[f])
    pos = np.concatenate([on, rng.uniform(-1.2, 1.2, (1000, 3))])
    normals = rng.normal(size=pos.shape)
    model = rng.integers(-1, 2, len(pos))
    lights = Lights.create(point_position=[[3.0, 0.2, 0.1], [0.1, -4.0, 0.3], [0.2, 0.3, 2.5], [-3.0, -3.0, 0.0],
                                           [0.0, 0.1, 0.0]],  # the last one inside the soup: the BVH
                           dir_direction=[[0.3, -1.0, 0.2]])
    for facing_only in (False, True):
        want, got = both(soup, pos, normals, model, lights, facing_only)
        assert (want == 0).any() and (want == 1).any()
        np.testing.assert_array_equal(got, want)


def test_sphere_terminator_matches_the_bvh(device):
    """The rendered case: rasterized surface points of a smooth-shaded sphere, whose rays near the
    terminator leave a triangle towards a light behind its plane (self-shadowed)."""
    ds = DeviceScene(build_scene(1000, 48), device)
    frame = ds.prepare()
    out = render_module.render_view(ds, frame, "main")
    tri = out.tri_id
    normals = out.normals
    o, d = cam.generate_rays(ds.arrays[camera_intrinsics("main")], ds.arrays[camera_pose("main")], 48, 48)
    _, depth = visibility.intersect(frame.world, ds.faces, tri, o, d)
    pos = gbuffer.hit_points(o, d, depth, tri)
    _, model = gbuffer.pixel_materials(tri, ds.face_material, ds.material_model)
    for facing_only in (False, True):
        want = shadow_mask(frame.bvh.id, pos, normals, model, frame.lights, facing_only=facing_only).numpy()
        got = shadow_mask_grid(frame.bvh, pos, normals, model, frame.lights, facing_only=facing_only).numpy()
        assert (want == 0).any() and (want == 1).any()
        np.testing.assert_array_equal(got, want)


def test_not_recorded_and_checked(device):
    quad = mesh([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], [0, 1, 2, 0, 2, 3])
    tape = wp.Tape()
    with tape:
        m = shadow_mask_grid(quad, farr([[0, 0, 0]]), farr([[0, 0, 1]]), iarr([0]),
                             Lights.create(point_position=[[0, 0, 3.0]]))
    assert m.numpy().tolist() == [[0.0]] and len(tape.launches) == 0
    assert shadow_mask_grid(quad, farr([[0, 0, 0]]), farr([[0, 0, 1]]), iarr([0]), Lights.create()).shape == (1, 0)
    with pytest.raises(TypeError, match="bvh"):
        shadow_mask_grid(quad.id, farr([[0, 0, 0]]), farr([[0, 0, 1]]), iarr([0]), Lights.create())
