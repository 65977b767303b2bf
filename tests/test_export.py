"""renderer.export: meshes with texture or colors in OBJ/PLY/glTF, voxel-grid fields as marching-cubes
surfaces and point clouds — each file read back with trimesh and compared with what was written."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from drstudio.renderer import export
from drstudio.renderer.conventions import linear_to_srgb


def quad():
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)  # drstudio: v = 0 is the top row
    return v, f, uv


@pytest.mark.parametrize("suffix", [".obj", ".glb"])
def test_textured_mesh_round_trips(tmp_path, suffix):
    v, f, uv = quad()
    tex = np.zeros((4, 4, 3), np.float32)
    tex[:2] = [1.0, 0.0, 0.0]  # top half red
    path = export.write_mesh(tmp_path / f"quad{suffix}", v, f, uvs=uv, texture=tex)
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == 2
    np.testing.assert_allclose(np.sort(loaded.vertices, axis=0), np.sort(v, axis=0), atol=1e-6)
    image = np.asarray(loaded.visual.material.to_simple().image if hasattr(loaded.visual.material, "to_simple")
                       else loaded.visual.material.image)
    # the image is stored top row first; drstudio's uv v = 0 (top) became the file's v = 1
    assert tuple(image[0, 0, :3]) == (255, 0, 0) and tuple(image[-1, 0, :3]) == (0, 0, 0)
    top = np.argmax(loaded.vertices[:, 1] > 0.5)  # a vertex with y = 1: uv v = 0 in drstudio
    assert loaded.visual.uv[top, 1] == pytest.approx(1.0)


def test_vertex_colored_ply(tmp_path):
    v, f, _ = quad()
    colors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]], np.float32)
    path = export.write_mesh(tmp_path / "quad.ply", v, f, vertex_colors=colors)
    loaded = trimesh.load(path, process=False)
    expected = np.round(linear_to_srgb(colors) * 255).astype(np.uint8)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], expected)


def test_bad_arguments(tmp_path):
    v, f, _ = quad()
    with pytest.raises(ValueError, match="ending in"):
        export.write_mesh(tmp_path / "x.stl", v, f)
    with pytest.raises(ValueError, match="indices"):
        export.write_mesh(tmp_path / "x.ply", v, f + 10)


def ball_grid(n=40, radius=0.6, activation="softplus"):
    """A raw density grid over [-1, 1]^3 whose activated density crosses the default level on a sphere of
    `radius`, and SH DC coefficients making it red on +x and blue on -x."""
    aabb = np.array([-1, -1, -1, 1, 1, 1], np.float32)
    lin = np.linspace(-1, 1, n)
    x, y, z = np.meshgrid(lin, lin, lin, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    level = export.default_level(aabb, (n, n, n))
    target = np.minimum(level * np.exp(-(r - radius) * 8), 60.0)  # = level at the radius, decreasing outward
    raw = np.log(np.expm1(target)) if activation == "softplus" else target
    sh = np.zeros((n, n, n, 3), np.float32)
    sh[..., 0] = 8 * x  # red grows with x; C0 * 8 * x inside the sigmoid
    sh[..., 2] = -8 * x
    return raw.astype(np.float32), sh, aabb


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_grid_mesh_is_the_level_set(tmp_path, activation):
    raw, sh, aabb = ball_grid(activation=activation)
    verts, faces, colors = export.grid_mesh(raw, aabb, activation, sh=sh, sh_degree=0)
    radii = np.linalg.norm(verts, axis=1)
    assert abs(radii.mean() - 0.6) < 0.01 and radii.std() < 0.01
    mesh = trimesh.Trimesh(verts, faces, process=True)
    assert mesh.is_watertight and mesh.volume > 0  # outward normals: positive signed volume
    assert abs(mesh.volume - 4 / 3 * np.pi * 0.6**3) / (4 / 3 * np.pi * 0.6**3) < 0.03
    east, west = colors[verts[:, 0] > 0.5], colors[verts[:, 0] < -0.5]
    assert (east[:, 0] > east[:, 2]).all() and (west[:, 2] > west[:, 0]).all()
    path = export.write_mesh(tmp_path / "field.ply", verts, faces, vertex_colors=colors)
    assert len(trimesh.load(path, process=False).faces) == len(faces)


def test_grid_points_inside_the_surface(tmp_path):
    raw, sh, aabb = ball_grid()
    pts, colors = export.grid_points(raw, aabb, "softplus", sh=sh)
    assert len(pts) > 100 and np.linalg.norm(pts, axis=1).max() <= 0.6 + 1e-6
    cloud = trimesh.load(export.write_points(tmp_path / "cloud.ply", pts, colors))
    assert len(cloud.vertices) == len(pts)
    with pytest.raises(ValueError, match="no surface"):
        export.grid_mesh(np.full((4, 4, 4), -20.0, np.float32), aabb)


def test_cli_exports_a_run(tmp_path):
    """`drstudio export RUN`: the voxel-grid field of a run folder as a surface and a point cloud, the
    scene's meshes with their texture; a run with nothing to export exits 2."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    raw, sh, aabb = ball_grid(n=24)
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "field_nerf.npz", density=raw, sh=sh, aabb=aabb, sh_degree=np.int32(0),
             activation=np.array("softplus"))
    cli = [sys.executable, "-m", "drstudio.app.cli", "export", str(run), "--scene",
           str(root / "scenes" / "texture.json")]
    out = subprocess.run(cli, capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in (run / "export").iterdir())
    assert "field_nerf.glb" in files and "field_nerf_points.ply" in files
    surface = trimesh.load(run / "export" / "field_nerf.glb", force="mesh")
    assert abs(np.linalg.norm(surface.vertices, axis=1).mean() - 0.6) < 0.03
    globe = [f for f in files if f not in ("field_nerf.glb", "field_nerf_points.ply", "transforms.json")]
    assert globe and trimesh.load(run / "export" / globe[0], force="mesh").visual.kind == "texture"
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "export", str(empty)], capture_output=True,
                         text=True, cwd=root, timeout=300)
    assert out.returncode == 2 and "nothing to export" in out.stderr and "Traceback" not in out.stderr


def test_cli_exports_optimized_cameras(tmp_path):
    """Issue 13: a run's cameras leave as a transforms.json that nerfstudio / instant-ngp (and drstudio's own
    reader) load: the optimized pose and intrinsics where the run has them, the scene's elsewhere."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from drstudio.renderer.conventions import quat_to_matrix
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.transforms_json import load_transforms

    root = Path(__file__).resolve().parents[1]
    scene = load_scene(root / "scenes" / "camera.json")
    main = scene.cameras["main"]
    angle = np.radians(20.0)
    pose = np.r_[main.pose[:3] + [0.1, -0.2, 0.3], 0.0, np.sin(angle / 2), 0.0, np.cos(angle / 2)].astype(np.float32)
    intrinsics = (main.intrinsics * [1.1, 1.1, 1.0, 1.0]).astype(np.float32)
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "params.npz", **{"cameras.main.pose": pose, "cameras.main.intrinsics": intrinsics})
    out = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "export", str(run), "--scene",
                          str(root / "scenes" / "camera.json"), "--format", "ply"],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads((run / "export" / "transforms.json").read_text())
    assert [f["name"] for f in doc["frames"]] == ["main"] and doc["frames"][0]["optimized"] is True
    m = np.array(doc["frames"][0]["transform_matrix"])
    np.testing.assert_allclose(m[:3, 3], pose[:3], atol=1e-6)
    np.testing.assert_allclose(m[:3, :3], quat_to_matrix(pose[3:].astype(np.float64)), atol=1e-6)
    from drstudio.renderer.images import write_image

    write_image(run / "export" / "images" / "main.png", np.zeros((main.height, main.width, 3), np.float32))
    (back,) = load_transforms(run / "export" / "transforms.json")  # the image a reader wants beside it
    np.testing.assert_allclose(back.pose[:3], pose[:3], atol=1e-5)
    assert abs(abs(float(np.dot(back.pose[3:], pose[3:]))) - 1.0) < 1e-6  # the same rotation (q or -q)
    np.testing.assert_allclose(back.intrinsics, intrinsics, rtol=1e-6)
    frame = doc["frames"][0]
    assert [frame[k] for k in ("fl_x", "fl_y", "cx", "cy")] == pytest.approx(intrinsics.tolist(), rel=1e-6)
    assert (frame["w"], frame["h"]) == (main.width, main.height)


def test_contracted_grid_exports_world_geometry():
    """A contracted grid (renderer.volume.march) holding a ball of world radius 3 around an inner box of
    half-size 1 (so in the contracted shell): the exported surface and points lie at world radius 3."""
    from drstudio.renderer.volume.march import uncontract_points

    box = np.array([-2.0, -2.0, -2.0, 2.0, 2.0, 2.0])
    n = 64
    axis = np.linspace(-2, 2, n)
    lattice = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    world_r = np.full(len(lattice), np.inf)
    inside = np.abs(lattice).max(axis=1) < 2 - 1e-9
    world_r[inside] = np.linalg.norm(uncontract_points(lattice[inside], box), axis=1)
    raw = np.where(world_r < 3.0, 30.0, -30.0).reshape(n, n, n)
    verts, faces, _ = export.grid_mesh(raw, box, contract=True)
    r = np.linalg.norm(verts, axis=1)
    # the lattice spacing in contracted space (4/63) is ~0.5 world units at radius 3 (dm/dm' = m^2)
    assert len(faces) > 100 and abs(np.median(r) - 3.0) < 0.3 and r.min() > 2.3 and r.max() < 3.8
    points, _ = export.grid_points(raw, box, contract=True)
    assert np.linalg.norm(points, axis=1).max() < 3.0 + 1e-9
    plain, _, _ = export.grid_mesh(raw, box)  # read bounded, the same lattice is a smaller, boxier shape
    assert np.abs(plain).max() < 2.0 and abs(np.median(np.linalg.norm(plain, axis=1)) - 3.0) > 0.5


def test_export_of_a_field_without_a_surface_exits_2(tmp_path):
    """A field whose density never crosses the level: exit 2 naming the file and the density range, no
    traceback (issue 14's rule for every CLI failure)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    run.mkdir()
    raw = np.full((8, 8, 8), -20.0, np.float32)  # softplus: ~2e-9 everywhere
    np.savez(run / "field_nerf.npz", density=raw, sh=np.zeros((8, 8, 8, 3), np.float32),
             aabb=np.float32([-1, -1, -1, 1, 1, 1]), sh_degree=np.int32(0), activation=np.array("softplus"))
    out = subprocess.run([sys.executable, "-m", "drstudio.app.cli", "export", str(run)], capture_output=True,
                         text=True, cwd=root, timeout=300)
    assert out.returncode == 2 and "field_nerf.npz" in out.stderr and "--level" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (run / "export").exists()
