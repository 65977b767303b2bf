"""Geometry stage: object-to-world vertex transforms and area-weighted vertex normals."""

from __future__ import annotations

import warp as wp

from .camera import check_array


@wp.kernel
def transform_vertices_kernel(local: wp.array(dtype=wp.vec3), translation: wp.array(dtype=float),
                              rotation: wp.array(dtype=float), scale: wp.array(dtype=float), offset: int,
                              out: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    q = wp.normalize(wp.quat(rotation[0], rotation[1], rotation[2], rotation[3]))
    s = wp.vec3(scale[0], scale[1], scale[2])
    t = wp.vec3(translation[0], translation[1], translation[2])
    out[offset + i] = t + wp.quat_rotate(q, wp.cw_mul(s, local[i]))


@wp.kernel
def accumulate_face_normals(world: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.int32),
                            acc: wp.array(dtype=wp.vec3)):
    f = wp.tid()
    i0 = faces[3 * f]
    i1 = faces[3 * f + 1]
    i2 = faces[3 * f + 2]
    p0 = world[i0]
    # the unnormalized cross product is twice the face area times its unit normal: area weighting
    n = wp.cross(world[i1] - p0, world[i2] - p0)
    wp.atomic_add(acc, i0, n)
    wp.atomic_add(acc, i1, n)
    wp.atomic_add(acc, i2, n)


@wp.kernel
def normalize_rows(acc: wp.array(dtype=wp.vec3), out: wp.array2d(dtype=float)):
    i = wp.tid()
    n = acc[i]
    length = wp.length(n)
    # vertices on no face (or only degenerate faces) get a zero normal instead of nan
    if length > 1.0e-20:
        n = n / length
    else:
        n = wp.vec3(0.0)
    out[i, 0] = n[0]
    out[i, 1] = n[1]
    out[i, 2] = n[2]


def transform_vertices(local: wp.array, translation: wp.array, rotation: wp.array, scale: wp.array,
                       out: wp.array, offset: int = 0) -> wp.array:
    """World positions world = t + R(q) (s * v) of one mesh, written into a packed array.

    Args:
        local: wp.vec3 (V,) object-space vertices.
        translation: float32 (3,); rotation: float32 (4,) quaternion (x, y, z, w), normalized in the kernel;
        scale: float32 (3,) per-axis scale applied before the rotation.
        out: wp.vec3 (M,) with M >= offset + V; entries [offset, offset + V) are overwritten, so several
            meshes pack into one array. Give it requires_grad=True to differentiate through it.
        offset: index in `out` of this mesh's first vertex.

    Returns:
        `out`. Differentiable w.r.t. local, translation, rotation and scale.
    """
    check_array("local", local, wp.vec3, (None,))
    check_array("translation", translation, wp.float32, (3,))
    check_array("rotation", rotation, wp.float32, (4,))
    check_array("scale", scale, wp.float32, (3,))
    check_array("out", out, wp.vec3, (None,))
    if not isinstance(offset, int) or offset < 0 or offset + local.shape[0] > out.shape[0]:
        raise ValueError(f"offset: expected an int with 0 <= offset and offset + {local.shape[0]} <= "
                         f"len(out) = {out.shape[0]}, got {offset!r}")
    wp.launch(transform_vertices_kernel, dim=local.shape[0],
              inputs=[local, translation, rotation, scale, offset], outputs=[out], device=local.device)
    return out


def vertex_normals(world: wp.array, faces: wp.array) -> wp.array:
    """Unit vertex normals: the normalized sum of the unnormalized normals (e1 x e2) of adjacent faces,
    i.e. area-weighted, oriented by the counter-clockwise winding of the faces.

    Args:
        world: wp.vec3 (V,) positions.
        faces: wp.int32 (3F,) flat vertex indices (the wp.Mesh layout).

    Returns:
        float32 array2d (V, 3). A vertex whose summed normal has length <= 1e-20 gets (0, 0, 0).
        Differentiable w.r.t. world.
    """
    check_array("world", world, wp.vec3, (None,))
    check_array("faces", faces, wp.int32, (None,))
    if faces.shape[0] % 3:
        raise ValueError(f"faces: expected a flat (3F,) array, got length {faces.shape[0]}")
    dev, grad = world.device, world.requires_grad
    acc = wp.zeros(world.shape[0], dtype=wp.vec3, device=dev, requires_grad=grad)
    out = wp.zeros((world.shape[0], 3), dtype=float, device=dev, requires_grad=grad)
    wp.launch(accumulate_face_normals, dim=faces.shape[0] // 3, inputs=[world, faces], outputs=[acc],
              device=dev)
    wp.launch(normalize_rows, dim=world.shape[0], inputs=[acc], outputs=[out], device=dev)
    return out
