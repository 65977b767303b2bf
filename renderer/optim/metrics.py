"""How well an optimization recovered its parameters, in the units each inverse task is judged by.

- textures (albedo, roughness, metallic maps): PSNR in dB against the true texture over the texels
  the target views see (texels that receive gradient from some view), peak 1;
- point-light positions: distance to the truth as a fraction of the scene's size (the diagonal of the
  bounding box of all meshes); colors, intensities, scalar materials: max abs error;
- camera poses: rotation error in degrees and position error as a fraction of the camera's distance
  to the scene center;
- vertices: surface to surface against the parameter's reference mesh (`reference` in the scene, or the
  scene's mesh when the targets are rendered from it; `renderer.optim.mesh_metrics`): Chamfer distance
  both ways in percent of the reference's bounding-box diagonal, normal consistency, self-intersecting
  triangles. Without a reference (image or dataset targets and no `reference`) only the self-intersections
  and a `reference` entry saying there is none: the start is no reference.
"""

from __future__ import annotations

import numpy as np
import warp as wp

from .. import conventions as cv
from ..initial_values import scene_center
from ..params import Kind
from ..render import render_view


def scene_size(scene) -> float:
    pts = [(cv.quat_to_matrix(m.rotation) @ (m.vertices * m.scale).T).T + m.translation
           for m in scene.meshes.values()]
    allp = np.concatenate(pts)
    return float(np.linalg.norm(allp.max(0) - allp.min(0)))


def chamfer(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> float:
    """Symmetric mean nearest-neighbour distance between point sets a (n, 3) and b (m, 3)."""
    def one_way(x, y):
        out = []
        for i in range(0, len(x), chunk):
            d = np.linalg.norm(x[i:i + chunk, None, :] - y[None, :, :], axis=2)
            out.append(d.min(axis=1))
        return float(np.concatenate(out).mean())
    return 0.5 * (one_way(a, b) + one_way(b, a))


def rotation_error_deg(q_a: np.ndarray, q_b: np.ndarray) -> float:
    qa, qb = cv.normalize(q_a), cv.normalize(q_b)
    return float(np.degrees(2 * np.arccos(np.clip(abs(np.dot(qa, qb)), 0.0, 1.0))))


def seen_texels(problem, path: str) -> np.ndarray:
    """Boolean (h, w) mask of the texels of texture `path` that some target view samples."""
    ds = problem.ds
    arr = ds.arrays[path]
    ds.zero_grad()
    tape = wp.Tape()
    with tape:
        frame = ds.prepare()
        outs = [render_view(ds, frame, t.camera) for t in problem.targets]
    # seed every view's image adjoint with ones: a texel gets gradient iff some pixel samples it
    tape.backward(grads={out.image: wp.full(out.image.shape, 1.0, dtype=float, device=ds.device) for out in outs})
    mask = np.abs(arr.grad.numpy()).sum(axis=2) > 0
    tape.reset()
    return mask


def texture_psnr(value: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    err = ((value - truth) ** 2)[mask]
    mse = float(err.mean()) if err.size else 0.0
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def parameter_metrics(problem) -> dict:
    """{path: {metric: value}} for every optimized parameter, against the scene's true values."""
    out = {}
    scene, size = problem.scene, scene_size(problem.scene)
    center = scene_center(scene)
    for path in problem.param_specs:
        kind = problem.ds.kind(path)
        value, truth = problem.ds.get(path), problem.truth[path]
        if kind is Kind.VERTICES and hasattr(problem.model, "reference_mesh"):
            out[path] = vertex_metrics(problem, path)
            continue
        m = {"max_abs_error": float(np.max(np.abs(value - truth)))}
        if kind.is_texture and value.shape[0] * value.shape[1] > 1:
            mask = seen_texels(problem, path)
            m["psnr_db_seen_texels"] = texture_psnr(value, truth, mask)
            m["seen_texel_fraction"] = float(mask.mean())
        elif kind in (Kind.EMISSION, Kind.ENVIRONMENT):  # radiance: relative to the true value
            m["max_rel_error"] = float(np.max(np.abs(value - truth) / np.maximum(np.abs(truth), 1e-6)))
        elif kind is Kind.POSITION:  # a light's position or a mesh's translation
            m["distance"] = float(np.linalg.norm(value - truth))
            m["distance_fraction_of_scene_size"] = m["distance"] / size
        elif kind is Kind.POSE:
            m["rotation_error_deg"] = rotation_error_deg(value[3:], truth[3:])
            dist = float(np.linalg.norm(truth[:3] - center))
            m["position_error_fraction_of_distance"] = float(np.linalg.norm(value[:3] - truth[:3])) / dist
        elif kind is Kind.VERTICES:
            diag = float(np.linalg.norm(truth.max(0) - truth.min(0)))
            m["chamfer"] = chamfer(value, truth)
            m["chamfer_fraction_of_bbox_diagonal"] = m["chamfer"] / diag
        out[path] = m
    return out


def vertex_metrics(problem, path: str, samples: int = 100_000) -> dict:
    """Metrics of the optimized mesh of vertices parameter `path` against its reference (module docstring)."""
    from .mesh_metrics import compare_meshes, self_intersections

    model = problem.model
    value, faces = problem.ds.get(path), model.faces(path)
    ref = model.reference_mesh(path)
    if ref is None:
        return {"reference": f"none: no optimize.parameters[\"{path}\"].reference mesh is given and the targets "
                             "are images, so there is nothing to compare with",
                "self_intersecting_faces": self_intersections(value, faces, problem.ds.device),
                "vertices": int(len(value)), "faces": int(len(faces))}
    rv, rf, what = ref
    m = compare_meshes(value, faces, rv, rf, samples=samples, device=problem.ds.device)
    m["reference"] = what
    return m
