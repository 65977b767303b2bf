"""The composed renderer (`DeviceScene.prepare` + `render_view`) against expectations computed
independently in NumPy: the Lambert radiance profile of a sphere, a texture seen 1:1, a small ray-tracing
reference renderer, backgrounds, shadows, anti-aliasing and the soft rasterizer's coverage.

Scenes are built in code (tests/support/scenes.py); camera rays here come from that module's own
float64 camera math, not from the renderer's camera stage."""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.render import render, render_view
from support import scenes
from support.devices import assert_same_render
from support.scenes import mesh_labels, pixel_rays, project, world_geometry


def draw(sc, **kwargs):
    ds = DeviceScene(sc, wp.get_device())  # the test's `device` (conftest makes it the default)
    return ds, render_view(ds, ds.prepare(), "main", **kwargs)


def ray_sphere(o, d, center, radius):
    """Nearest ray parameter t >= 0 of o + t d on the sphere (NaN on a miss), float64."""
    oc = o - center
    a = np.einsum("ij,ij->i", d, d)
    b = d @ oc
    disc = b * b - a * (oc @ oc - radius * radius)
    with np.errstate(invalid="ignore"):
        return (-b - np.sqrt(disc)) / a


def neighbours(mask2d: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour whose label differs, for an (H, W) label image."""
    out = np.zeros(mask2d.shape, bool)
    dx = mask2d[:, 1:] != mask2d[:, :-1]
    dy = mask2d[1:, :] != mask2d[:-1, :]
    out[:, 1:] |= dx
    out[:, :-1] |= dx
    out[1:, :] |= dy
    out[:-1, :] |= dy
    return out


def area_weighted_normals(world: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The documented vertex normals: normalized sum of the adjacent faces' (e1 x e2)."""
    n = np.cross(world[faces[:, 1]] - world[faces[:, 0]], world[faces[:, 2]] - world[faces[:, 0]])
    acc = np.zeros_like(world)
    for k in range(3):
        np.add.at(acc, faces[:, k], n)
    return acc / np.linalg.norm(acc, axis=1, keepdims=True)


def edge_distance(points, a, b):
    """(P, E) distance from each 2D point to each segment a[e] b[e]."""
    e = b - a
    t = np.clip(((points[:, None] - a[None]) * e[None]).sum(-1) / (e * e).sum(-1), 0, 1)
    return np.linalg.norm(points[:, None] - (a[None] + t[..., None] * e[None]), axis=-1)


# --- (a) Lambert sphere under a directional light ----------------------------------------------------


def test_lambert_sphere_matches_the_analytic_radiance_profile(device):
    """L = albedo * color * I / pi * max(0, n.l) at the sphere's normal under each pixel.

    The mesh is a tessellated unit sphere, so the renderer's hit q lies on a flat triangle, between the
    sphere and its inscribed sphere (radius r_in = the nearest face plane), and its shading normal is
    normalize(sum b_i n_i) of the vertex normals n_i. With n_i = p_i + e_i (p_i radial, unit), sum b_i p_i = q,
    so the shading normal is q / |q| up to |e| / |q| <= max|e_i| / r_in. Hence at each pixel n.l lies within
    [min, max] of p.l over the ray segment between the two spheres, widened by that bound; both come from
    NumPy. Pixels near the silhouette (n.v < 0.3) and the poles (where trimesh's fan triangles are thin)
    are left out."""
    sc = scenes.lambert_sphere()
    ds, out = draw(sc, shadows=False)
    c = sc.cameras["main"]
    img = out.numpy().reshape(-1, 3)
    o, d = pixel_rays(c.intrinsics, c.pose, c.width, c.height)

    m = sc.meshes["ball"]
    v64, f = m.vertices.astype(np.float64), m.faces
    face_n = np.cross(v64[f[:, 1]] - v64[f[:, 0]], v64[f[:, 2]] - v64[f[:, 0]])
    face_n /= np.linalg.norm(face_n, axis=1, keepdims=True)
    r_in = np.abs(np.einsum("ij,ij->i", face_n, v64[f[:, 0]])).min()
    vn = area_weighted_normals(v64, f)
    radial = v64 / np.linalg.norm(v64, axis=1, keepdims=True)
    band = np.abs(radial[:, 1]) < 0.95  # every vertex of a face under the tested pixels
    normal_slack = np.linalg.norm(vn - radial, axis=1)[band].max() / r_in
    assert 0.95 < r_in < 1.0 and normal_slack < 0.02  # a fine tessellation, as the bound assumes

    t_out = ray_sphere(o, d, np.zeros(3), 1.0)
    t_in = ray_sphere(o, d, np.zeros(3), r_in)
    l_dir = -scenes.SUN_DIRECTION / np.linalg.norm(scenes.SUN_DIRECTION)
    ts = np.linspace(0, 1, 9)[:, None]
    with np.errstate(invalid="ignore"):
        pts = o + (t_out + ts * (t_in - t_out))[..., None] * d  # (9, N, 3) along each segment
        normals = pts / np.linalg.norm(pts, axis=-1, keepdims=True)
        cos_l = normals @ l_dir
        facing = -(normals[0] * d).sum(1) / np.linalg.norm(d, axis=1)
    tested = ~np.isnan(t_in) & (facing > 0.3) & (np.abs(normals[..., 1]).max(0) < 0.85)
    assert tested.sum() > 400

    scale = scenes.SPHERE_ALBEDO * scenes.SUN_COLOR * scenes.SUN_INTENSITY / np.pi
    lo = np.maximum(cos_l.min(0) - normal_slack, 0)[:, None] * scale
    hi = np.maximum(cos_l.max(0) + normal_slack, 0)[:, None] * scale
    tol = 1e-5  # float32 evaluation of the same quantity
    got = img[tested]
    bad = (got < lo[tested] - tol) | (got > hi[tested] + tol)
    assert not bad.any(), f"{bad.any(1).sum()} pixels outside the analytic bounds, e.g. {got[bad.any(1)][:3]}"
    # the bound is tight: the analytic value at the outer sphere is within 2% of the largest radiance
    mid = np.maximum(cos_l[0], 0)[:, None] * scale
    assert np.abs(got - mid[tested]).max() < 0.02 * scale.max()
    # coverage: every ray through the inscribed sphere hits, every ray missing the sphere sees background
    tri = out.tri_id.numpy()
    assert (tri[~np.isnan(t_in)] >= 0).all() and (tri[np.isnan(t_out)] == -1).all()
    assert (img[np.isnan(t_out)] == 0).all()


# --- (b) a texture seen 1:1 ------------------------------------------------------------------------


@pytest.mark.parametrize("mipmaps", [False, True])
def test_textured_quad_reproduces_its_texture(mipmaps, device):
    """Texel (x, y) covers pixel (x, y) exactly, so bilinear sampling at the pixel center returns the texel
    (and the mip lod is log2(1) = 0, so trilinear sampling returns level 0). Ambient light 1: radiance is
    the albedo. Tolerance: the texel position u * w - 0.5 carries float32 roundoff ~1e-6 of a texel."""
    tex = np.random.default_rng(3).uniform(0.05, 0.95, (12, 16, 3)).astype(np.float32)
    sc = scenes.textured_quad(tex, mipmaps=mipmaps)
    _, out = draw(sc)
    assert (out.tri_id.numpy() >= 0).all()
    np.testing.assert_allclose(out.numpy(), tex, atol=1e-5 if not mipmaps else 1e-4, rtol=0)


def test_textured_quad_magnified_twice_is_bilinear(device):
    """At twice the resolution pixel centers fall at texel offsets -1/4 and +1/4 from the texel centers:
    the interior pixels are the 3/4-1/4 bilinear blends of the texture's neighbours (computed in NumPy)."""
    tex = np.random.default_rng(4).uniform(0.05, 0.95, (12, 16, 3)).astype(np.float32)
    sc = scenes.textured_quad(tex)
    ds = DeviceScene(sc, device)
    intr = wp.array(sc.cameras["main"].intrinsics * 2, dtype=float, device=device)
    img = render_view(ds, ds.prepare(), "main", intrinsics=intr, width=32, height=24).numpy()
    x = (np.arange(32) + 0.5) / 2 - 0.5  # texel coordinate of each pixel column: x/2 - 1/4
    y = (np.arange(24) + 0.5) / 2 - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[None, :, None], (y - y0)[:, None, None]
    xi, yi = np.clip(x0, 0, 15), np.clip(y0, 0, 11)
    xj, yj = np.clip(x0 + 1, 0, 15), np.clip(y0 + 1, 0, 11)
    want = ((1 - fy) * ((1 - fx) * tex[yi][:, xi] + fx * tex[yi][:, xj])
            + fy * ((1 - fx) * tex[yj][:, xi] + fx * tex[yj][:, xj]))
    np.testing.assert_allclose(img[1:-1, 1:-1], want[1:-1, 1:-1], atol=1e-5)


# --- (c) a NumPy reference renderer ----------------------------------------------------------------


def ref_ggx(n, v, l, albedo, rough, metal):
    """Cook-Torrance as documented (renderer/stages/shading.py), written with the Smith Lambda form."""
    alpha = max(rough**2, 1e-4)
    h = (l + v) / np.linalg.norm(l + v)
    nl, nv, nh, vh = max(n @ l, 0), max(n @ v, 0), n @ h, max(v @ h, 0)
    d = alpha**2 / (np.pi * (nh**2 * (alpha**2 - 1) + 1) ** 2) if nh > 0 else 0.0

    def lam(c):
        return (np.sqrt(1 + alpha**2 * (1 - c * c) / (c * c)) - 1) / 2

    vis = 1 / (1 + lam(nv) + lam(nl)) / (4 * nl * nv)
    f0 = 0.04 * (1 - metal) + albedo * metal
    f = f0 + (1 - f0) * (1 - vh) ** 5
    return (1 - f) * (1 - metal) * albedo / np.pi + d * vis * f


def reference_render(sc):
    """Hard-mode reference in float64: Moller-Trumbore against every triangle, barycentric interpolation of
    area-weighted vertex normals and vertex colors, constant albedos, Lambert and GGX under the scene's
    point, directional and ambient lights, no shadows. Returns (image (N, 3), face id (N,), depth (N,),
    normal (N, 3), margin (N,)): margin is the smallest barycentric of the hit (or the distance of a miss
    from the nearest triangle in barycentric units), to skip pixels a rounding error could flip."""
    c = sc.cameras["main"]
    o, d = pixel_rays(c.intrinsics, c.pose, c.width, c.height)
    world, faces, colors, face_mat = world_geometry(sc)
    mats = list(sc.materials)
    vn = area_weighted_normals(world, faces)

    p0, p1, p2 = world[faces[:, 0]], world[faces[:, 1]], world[faces[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    pv = np.cross(d[:, None], e2[None])  # (N, F, 3)
    det = np.einsum("fk,nfk->nf", e1, pv)
    tv = o - p0
    qv = np.cross(tv, e1)  # (F, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        b1 = np.einsum("fk,nfk->nf", tv, pv) / det
        b2 = (d @ qv.T) / det
        t = np.einsum("fk,fk->f", e2, qv)[None] / det
    bmin = np.minimum(np.minimum(b1, b2), 1 - b1 - b2)
    hit = (bmin >= 0) & (t > 0)
    tt = np.where(hit, t, np.inf)
    face = np.argmin(tt, axis=1)
    n_pix = len(d)
    covered = np.isfinite(tt[np.arange(n_pix), face])
    margin = np.where(covered, bmin[np.arange(n_pix), face], -np.nanmax(np.where(t > 0, bmin, -np.inf), axis=1))

    L = sc.point_lights["point0"], sc.directional_lights["sun0"]
    ambient = sum(a.color for a in sc.ambient_lights.values())
    img = np.tile(np.asarray(sc.background, np.float64), (n_pix, 1))
    depth = np.zeros(n_pix)
    normal = np.zeros((n_pix, 3))
    for i in np.flatnonzero(covered):
        f = face[i]
        w = np.array([1 - b1[i, f] - b2[i, f], b1[i, f], b2[i, f]])
        p = o + t[i, f] * d[i]
        n = w @ vn[faces[f]]
        normal[i], depth[i] = n, t[i, f]
        n = n / np.linalg.norm(n)
        mat = sc.materials[mats[face_mat[f]]]
        albedo = mat.albedo.reshape(3) * (w @ colors[faces[f]])
        rough, metal = float(mat.roughness.reshape(())), float(mat.metallic.reshape(()))
        v = (o - p) / np.linalg.norm(o - p)
        to_light = L[0].position - p
        lights = [(to_light / np.linalg.norm(to_light), L[0].intensity * L[0].color / (to_light @ to_light)),
                  (-L[1].direction / np.linalg.norm(L[1].direction), L[1].intensity * L[1].color)]
        ggx = mat.model == "ggx"
        rad = albedo * ambient * ((1 - metal) if ggx else 1.0)
        for l, e in lights:
            if n @ l > 0:
                brdf = ref_ggx(n, v, l, albedo, rough, metal) if ggx else albedo / np.pi
                rad = rad + brdf * e * (n @ l)
        img[i] = rad
    return img, np.where(covered, face, -1), depth, normal, margin


def test_two_meshes_match_a_numpy_reference_renderer(device):
    sc = scenes.two_meshes()
    _, out = draw(sc, shadows=False)
    want, face, depth, normal, margin = reference_render(sc)
    sure = np.abs(margin) > 1e-4  # pixel centers not within rounding of a triangle edge
    assert sure.sum() > 0.95 * len(sure) and (face[sure] >= 0).sum() > 150
    tri = out.tri_id.numpy()
    np.testing.assert_array_equal(tri[sure], face[sure])
    # float32 rendering vs float64 reference: positions and normals carry ~1e-6 relative error, which the
    # GGX lobe (roughness 0.35, a = 0.12) amplifies by at most ~1/a
    np.testing.assert_allclose(out.image.numpy()[sure], want[sure], rtol=1e-4, atol=1e-5)
    # auxiliary buffers: view depth (directions have camera-space z = -1) and interpolated normals
    cov = sure & (face >= 0)
    np.testing.assert_allclose(out.depth.numpy()[cov], depth[cov], rtol=1e-5)
    got_n = out.normals.numpy()[cov]
    np.testing.assert_allclose(got_n / np.linalg.norm(got_n, axis=1, keepdims=True),
                               normal[cov] / np.linalg.norm(normal[cov], axis=1, keepdims=True), atol=1e-5)
    assert (out.depth.numpy()[tri < 0] == 0).all() and (out.normals.numpy()[tri < 0] == 0).all()


# --- (d) background --------------------------------------------------------------------------------


def test_background_color_and_image(device):
    sc = scenes.two_meshes()
    _, out = draw(sc)
    bg = out.tri_id.numpy() < 0
    assert 0.3 < bg.mean() < 0.9
    np.testing.assert_array_equal(out.image.numpy()[bg], np.tile(sc.background, (bg.sum(), 1)))

    h, w = sc.cameras["main"].height, sc.cameras["main"].width
    image = np.random.default_rng(5).uniform(0, 1, (h, w, 3)).astype(np.float32)
    sc.background = image
    ds, out = draw(sc)
    bg = out.tri_id.numpy() < 0
    np.testing.assert_allclose(out.image.numpy()[bg], image.reshape(-1, 3)[bg], atol=1e-6)
    covered_before = out.image.numpy()[~bg]
    # at half the resolution each pixel center sits between four image pixels: their 2x2 average
    intr = wp.array(sc.cameras["main"].intrinsics / 2, dtype=float, device=device)
    half = render_view(ds, ds.prepare(), "main", intrinsics=intr, width=w // 2, height=h // 2)
    box = image.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).reshape(-1, 3)
    hbg = half.tri_id.numpy() < 0
    np.testing.assert_allclose(half.image.numpy()[hbg], box[hbg], atol=1e-6)
    # the background does not leak into covered pixels in hard mode
    sc.background = np.array([0.2, 0.25, 0.3], np.float32)
    assert_same_render(draw(sc)[1].image.numpy()[~bg], covered_before, device)


def test_soft_mode_background(device):
    sc = scenes.two_meshes(mode="soft")
    _, out = draw(sc)
    far = out.alpha.numpy() == 0  # beyond every triangle's coverage radius
    assert far.mean() > 0.3
    np.testing.assert_allclose(out.image.numpy()[far], np.tile(sc.background, (far.sum(), 1)), atol=1e-6)
    sc.background = np.zeros((24, 32, 3), np.float32)
    with pytest.raises(ValueError, match="background"):
        draw(sc)


# --- (e) shadows -----------------------------------------------------------------------------------


def test_sphere_casts_a_shadow_on_the_plane(device):
    """Ground pixels whose segment to the light passes well inside the sphere receive only ambient light
    (albedo * ambient); pixels whose segment passes well outside are unchanged by shadows. The margins
    (0.9 r and 1.05 r) cover the tessellation (inscribed radius 0.99 r) and the penumbra-free point light."""
    lit_sc, shadow_sc = scenes.shadow_scene(shadows=False), scenes.shadow_scene(shadows=True)
    _, lit = draw(lit_sc)
    _, shaded = draw(shadow_sc)
    c = lit_sc.cameras["main"]
    o, d = pixel_rays(c.intrinsics, c.pose, c.width, c.height)
    tri = lit.tri_id.numpy()
    np.testing.assert_array_equal(tri, shaded.tri_id.numpy())
    ground = tri >= len(lit_sc.meshes["ball"].faces)
    p = o + lit.depth.numpy()[:, None].astype(np.float64) * d
    light = lit_sc.point_lights["point0"].position.astype(np.float64)
    center, radius = np.array([0.0, 1.0, 0.0]), 0.5
    seg = light - p
    s = np.clip(((center - p) * seg).sum(1) / (seg * seg).sum(1), 0, 1)
    dist = np.linalg.norm(p + s[:, None] * seg - center, axis=1)
    umbra, clear = ground & (dist < 0.9 * radius), ground & (dist > 1.05 * radius)
    assert umbra.sum() >= 10 and clear.sum() >= 100
    ambient_only = 0.8 * 0.1
    np.testing.assert_allclose(shaded.image.numpy()[umbra], ambient_only, rtol=1e-6)
    assert (lit.image.numpy()[umbra] > 2 * ambient_only).all()
    assert_same_render(shaded.image.numpy()[clear], lit.image.numpy()[clear], device)


# --- (f) antialiasing ------------------------------------------------------------------------------


def test_antialias_changes_only_silhouette_pixels(device):
    """Both meshes of the gradient scene are welded (no crease edges), so the only visibility discontinuities
    are the boundaries between different meshes and the background."""
    sc = scenes.gradient_scene(mode="hard")
    ds = DeviceScene(sc, device)
    frame = ds.prepare()
    hard = render_view(ds, frame, "main", mode="hard")
    aa = render_view(ds, frame, "main", mode="antialias")
    for name in ("tri_id", "depth", "normals", "alpha"):
        np.testing.assert_array_equal(getattr(aa, name).numpy(), getattr(hard, name).numpy(), err_msg=name)
    h, w = hard.height, hard.width
    labels = mesh_labels(sc, hard.tri_id.numpy()).reshape(h, w)
    silhouette = neighbours(labels)
    changed = (np.abs(aa.numpy() - hard.numpy()) > 0).any(axis=2)
    assert not (changed & ~silhouette).any(), np.argwhere(changed & ~silhouette)
    assert changed.sum() > 0.3 * silhouette.sum()


# --- (g) soft rasterization ------------------------------------------------------------------------


def test_soft_alpha_approaches_hard_coverage_for_small_sigma(device):
    """With sigma = 1e-4 px^2 a triangle's coverage falls from 1 - 1e-4 to 0 within sqrt(sigma ln 1e4) = 0.03 px
    of its edges, so alpha is the hard coverage except at pixel centers within 0.03 px of an edge."""
    sc = scenes.gradient_scene(mode="soft")
    sc.render.soft_sigma = 1e-4
    ds = DeviceScene(sc, device)
    frame = ds.prepare()
    soft = render_view(ds, frame, "main")
    hard = render_view(ds, frame, "main", mode="hard")
    coverage = (hard.tri_id.numpy() >= 0).astype(np.float32)
    c = sc.cameras["main"]
    world, faces, _, _ = world_geometry(sc)
    scr = project(world, c)
    a, b = scr[faces].reshape(-1, 2), scr[np.roll(faces, -1, axis=1)].reshape(-1, 2)
    ys, xs = np.mgrid[0:c.height, 0:c.width]
    centers = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    near_edge = edge_distance(centers, a, b).min(axis=1) < 0.035  # 0.03 px plus float32 slack
    assert near_edge.sum() < 0.15 * near_edge.size  # both sides of the sphere and the card project edges here
    # D_j >= 1 - 1e-4 for every triangle a center lies inside, 0 for the others: alpha within 1e-4
    np.testing.assert_allclose(soft.alpha.numpy()[~near_edge], coverage[~near_edge], atol=2e-4)
    # aux buffers of the soft mode come from the same visibility pass as the hard mode
    for name in ("tri_id", "depth", "normals"):
        np.testing.assert_array_equal(getattr(soft, name).numpy(), getattr(hard, name).numpy(), err_msg=name)


def test_render_convenience_and_mode_validation():
    sc = scenes.two_meshes()
    out = render(sc)
    assert out.numpy().shape == (24, 32, 3)
    with pytest.raises(ValueError, match="render mode"):
        render(sc, mode="wireframe")
