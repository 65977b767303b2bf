"""A loaded drstudio scene, rebuilt in Mitsuba 3 for the path mode's comparisons (issue 15, items 4 and 6).

`load(path)` loads a scene file the way `drstudio render` does and packs its path-tracing arrays
(`renderer.render.path_scene`: world-space triangles with the meshes' transforms applied, shading normals,
per-material textures, lights, environment, camera). `to_mitsuba(...)` builds the same scene in Mitsuba 3
(`llvm_ad_rgb`) from those arrays:

- each material's triangles are one Mitsuba mesh (OBJ written to a temporary folder, vertex normals
  kept: the shading normals are drstudio's), every BSDF wrapped in `twosided` (drstudio's surfaces are
  two-sided; a one-sided emitter emits on the side its counter-clockwise normal points to in both);
- Lambert -> `diffuse`; a material with no BSDF (model "none") -> `diffuse` of reflectance 0;
- GGX (drstudio's `shading.ggx_brdf`: (1 - F)(1 - metallic) albedo / pi + F D V, Schlick F with
  F0 = mix(0.04, albedo, metallic), Trowbridge-Reitz D with alpha = roughness^2, height-correlated Smith V)
  -> `drstudio_ggx`, a Python BSDF plugin defined here that evaluates that formula and samples
  Mitsuba's own GGX visible-normal distribution and cosine lobe (its own pdf, so Mitsuba's MIS is self-consistent).
  No built-in Mitsuba BSDF evaluates the same function: `principled` has Disney's diffuse lobe (not
  (1 - F) albedo / pi), an exact dielectric Fresnel for the specular lobe of a dielectric, and the
  separable Smith G1(wi) G1(wo); with metallic = 1 it reduces to Schlick(albedo) D G / (4 cos cos), which
  differs from ours in the shadowing term only (separable vs height-correlated). `roughconductor`
  uses the exact conductor Fresnel. So the plugin carries drstudio's BSDF formula; everything else
  (intersection, sampling, MIS, emitters, environment, integrator) is Mitsuba's. `principled=True`
  swaps in Mitsuba's `principled` for GGX materials (for metallic = 1 variants of a scene);
- emission -> an `area` emitter of that radiance; point lights -> `point` (intensity = intensity x color:
  both give intensity cos / d^2), directional lights -> `directional` (irradiance = intensity x color,
  `direction` the direction light travels in both);
- the environment -> `envmap`. Mitsuba's envmap interpolates bilinearly between point samples (a vertex
  grid: row j at theta = j pi / (rows - 1), column i at u = (i + 1/2) / columns, u = atan2(x, -z) / 2 pi),
  drstudio's is piecewise constant per texel (u = atan2(x, -z) / 2 pi + 1/2). The direction formulas are
  the same; the converter samples drstudio's texels at Mitsuba's vertex directions on a grid
  `env_upsample` times finer (`env_for_mitsuba`), so the two differ only within 1/env_upsample of a texel
  at texel edges, by a ramp symmetric about the edge;
- the camera -> `perspective` with the same vertical field of view and pose (needs fx = fy and the
  principal point at the image center), `hdrfilm` with a `box` pixel filter, `independent` sampler;
- `path` (or `prb`) with max_depth = drstudio's + 1 (Mitsuba counts the camera vertex) and
  rr_depth likewise.

Textured materials and vertex colors are not converted (the shipped path scenes use constants).
Setup: `pip install mitsuba` (the `bench` extra); DRJIT_LIBLLVM_PATH is set from
`benchmarks.mitsuba_baseline.find_libllvm()` when unset.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VARIANT = "llvm_ad_rgb"


def mitsuba():
    """Import Mitsuba with the LLVM variant set (DRJIT_LIBLLVM_PATH from `find_libllvm` when unset) and the
    `drstudio_ggx` plugin registered; returns (mi, dr)."""
    if not os.environ.get("DRJIT_LIBLLVM_PATH"):
        from benchmarks.mitsuba_baseline import find_libllvm

        lib = find_libllvm()
        if lib:
            os.environ["DRJIT_LIBLLVM_PATH"] = lib
    import drjit as dr
    import mitsuba as mi

    if mi.variant() != VARIANT:
        mi.set_variant(VARIANT)
    _register_ggx(mi, dr)
    return mi, dr


# ---------------------------------------------------------------------------------------------------
# drstudio's GGX BSDF as a Mitsuba plugin

_REGISTERED: set = set()


def _register_ggx(mi, dr) -> None:
    if mi.variant() in _REGISTERED:
        return

    class DrstudioGGX(mi.BSDF):
        """drstudio's `shading.ggx_brdf`, two-sided (a back-side query is mirrored to the front)."""

        def __init__(self, props):
            mi.BSDF.__init__(self, props)
            self.albedo = mi.Color3f(props.get("albedo", mi.ScalarColor3f(0.5)))
            self.roughness = mi.Float(props.get("roughness", 0.5))
            self.metallic = mi.Float(props.get("metallic", 0.0))
            flags = (mi.BSDFFlags.GlossyReflection | mi.BSDFFlags.DiffuseReflection | mi.BSDFFlags.FrontSide
                     | mi.BSDFFlags.BackSide)
            self.m_components = [flags]
            self.m_flags = flags

        def _alpha(self):
            return dr.maximum(self.roughness * self.roughness, 1e-4)

        def _lobes(self, wi, wo):
            """(f cos(wo), pdf) for local unit wi, wo already on the front side."""
            alpha = self._alpha()
            a2 = alpha * alpha
            nl, nv = dr.maximum(wo.z, 0.0), dr.maximum(wi.z, 0.0)
            h = dr.normalize(wi + wo)
            nh = h.z
            vh = dr.maximum(dr.dot(wi, h), 0.0)
            m = 1.0 - vh
            s5 = m * m * m * m * m
            f0 = dr.lerp(mi.Color3f(0.04), self.albedo, self.metallic)
            fres = f0 + (1.0 - f0) * s5
            nh2 = dr.minimum(nh * nh, 1.0)
            dd = (1.0 - nh2) + nh2 * a2
            dist = dr.select(nh > 0.0, a2 / (dr.pi * dd * dd), 0.0)
            vis = 0.5 / dr.maximum(nl * dr.sqrt(nv * nv * (1.0 - a2) + a2) + nv * dr.sqrt(nl * nl * (1.0 - a2) + a2),
                                   1e-12)
            f = (1.0 - fres) * self.albedo * ((1.0 - self.metallic) / dr.pi) + fres * (dist * vis)
            ok = (wi.z > 0.0) & (wo.z > 0.0)
            distr = mi.MicrofacetDistribution(mi.MicrofacetType.GGX, alpha, True)
            ps = 0.5 + 0.5 * dr.clip(self.metallic, 0.0, 1.0)
            spec = distr.pdf(wi, h) / dr.maximum(4.0 * dr.dot(wo, h), 1e-12)
            spec = dr.select(dr.dot(wo, h) > 0.0, spec, 0.0)
            pdf = ps * spec + (1.0 - ps) * nl / dr.pi
            return dr.select(ok, f * nl, 0.0), dr.select(ok, pdf, 0.0)

        @staticmethod
        def _front(si, wo):
            flip = mi.Frame3f.cos_theta(si.wi) < 0.0
            wi = mi.Vector3f(si.wi.x, si.wi.y, dr.select(flip, -si.wi.z, si.wi.z))
            wo = mi.Vector3f(wo.x, wo.y, dr.select(flip, -wo.z, wo.z))
            return flip, wi, wo

        def eval(self, ctx, si, wo, active=True):
            _, wi, wo = self._front(si, wo)
            return dr.select(active, self._lobes(wi, wo)[0], 0.0)

        def pdf(self, ctx, si, wo, active=True):
            _, wi, wo = self._front(si, wo)
            return dr.select(active, self._lobes(wi, wo)[1], 0.0)

        def eval_pdf(self, ctx, si, wo, active=True):
            _, wi, wo = self._front(si, wo)
            value, pdf = self._lobes(wi, wo)
            return dr.select(active, value, 0.0), dr.select(active, pdf, 0.0)

        def sample(self, ctx, si, sample1, sample2, active=True):
            flip, wi, _ = self._front(si, mi.Vector3f(0.0, 0.0, 1.0))
            distr = mi.MicrofacetDistribution(mi.MicrofacetType.GGX, self._alpha(), True)
            ps = 0.5 + 0.5 * dr.clip(self.metallic, 0.0, 1.0)
            spec = sample1 < ps
            mnormal, _ = distr.sample(wi, sample2)
            wo = dr.select(spec, mi.reflect(wi, mnormal), mi.warp.square_to_cosine_hemisphere(sample2))
            value, pdf = self._lobes(wi, wo)
            bs = dr.zeros(mi.BSDFSample3f)
            bs.wo = mi.Vector3f(wo.x, wo.y, dr.select(flip, -wo.z, wo.z))
            bs.pdf = pdf
            bs.eta = 1.0
            bs.sampled_type = mi.UInt32(+mi.BSDFFlags.GlossyReflection)
            bs.sampled_component = mi.UInt32(0)
            ok = active & (pdf > 0.0)
            return bs, dr.select(ok, value / dr.maximum(pdf, 1e-30), 0.0)

        def traverse(self, callback):
            callback.put("albedo", self.albedo, mi.ParamFlags.Differentiable)
            callback.put("roughness", self.roughness, mi.ParamFlags.Differentiable)
            callback.put("metallic", self.metallic, mi.ParamFlags.Differentiable)

        def parameters_changed(self, keys):
            pass

        def to_string(self):
            return "DrstudioGGX[]"

    mi.register_bsdf("drstudio_ggx", lambda props: DrstudioGGX(props))
    _REGISTERED.add(mi.variant())


# ---------------------------------------------------------------------------------------------------
# drstudio side


@dataclass
class Loaded:
    """A scene file's path-tracing inputs: `scene` the `pathtrace.PathScene`, `intrinsics`/`pose` the camera's
    wp arrays, `width`/`height`, `render` the file's render settings, `names` the material names (index
    order), `ds` the DeviceScene (kept alive: the PathScene's arrays belong to its frame)."""

    scene: object
    intrinsics: object
    pose: object
    width: int
    height: int
    render: object
    names: list
    ds: object
    frame: object


def load(path, camera: str | None = None, size: int | None = None, requires_grad: bool = False) -> Loaded:
    """Load `path` (a scene file) and pack camera `camera` (default: the first) at `size` x `size` (default:
    the file's resolution; the field of view is kept). `requires_grad`: make the material albedos
    differentiable (for `render_path_backward`)."""
    import drstudio.renderer  # noqa: F401  (Warp settings)
    from drstudio.renderer.device_scene import DeviceScene
    from drstudio.renderer.loading import load_scene
    from drstudio.renderer.params import camera_intrinsics, camera_pose
    from drstudio.renderer.render import path_scene

    sc = load_scene(Path(path))
    name = camera or next(iter(sc.cameras))
    cam = sc.cameras[name]
    if size is not None:
        cam.intrinsics = cam.intrinsics * (size / cam.height)
        cam.width = cam.height = int(size)
    ds = DeviceScene(sc, "cpu")
    frame = ds.prepare(mipmaps=False)
    ps = path_scene(ds, frame)
    if requires_grad:
        ps.albedo.data.requires_grad = True
    return Loaded(ps, ds.arrays[camera_intrinsics(name)], ds.arrays[camera_pose(name)], cam.width, cam.height,
                  sc.render, list(sc.materials), ds, frame)


def render_drstudio(ld: Loaded, spp: int, seed: int, max_depth: int, rr_depth: int = 5, threads: int = 1,
                    jitter: bool = True) -> np.ndarray:
    """drstudio's path-traced image (H, W, 3) of a loaded scene (jitter=True: a box pixel filter, as Mitsuba's)."""
    from drstudio.renderer.stages import pathtrace as pt

    img = pt.render_path(ld.scene, ld.intrinsics, ld.pose, ld.width, ld.height, spp=spp, seed=seed,
                         max_depth=max_depth, rr_depth=rr_depth, jitter=jitter, threads=threads)
    return img.numpy().reshape(ld.height, ld.width, 3)


# ---------------------------------------------------------------------------------------------------
# Mitsuba side


def _constant(pool, m: int, what: str) -> np.ndarray:
    if pool.sizes[m][0] != (1, 1):
        raise ValueError(f"material {m}: {what} is a texture; the Mitsuba converter handles constants only")
    return pool.level_numpy(m, 0).reshape(-1).astype(float)


def _write_obj(path: str, verts: np.ndarray, normals: np.ndarray, faces: np.ndarray) -> None:
    used = np.unique(faces)
    remap = np.full(len(verts), -1)
    remap[used] = np.arange(len(used))
    n = normals[used] / np.maximum(np.linalg.norm(normals[used], axis=1, keepdims=True), 1e-20)
    with open(path, "w") as f:
        f.writelines(f"v {v[0]:.9g} {v[1]:.9g} {v[2]:.9g}\n" for v in verts[used])
        f.writelines(f"vn {v[0]:.9g} {v[1]:.9g} {v[2]:.9g}\n" for v in n)
        f.writelines(f"f {a}//{a} {b}//{b} {c}//{c}\n" for a, b, c in remap[faces] + 1)


def env_for_mitsuba(env: np.ndarray, upsample: int) -> np.ndarray:
    """drstudio's piecewise-constant (He, We, 3) environment sampled at Mitsuba envmap's vertex grid, which
    Mitsuba interpolates bilinearly: upsample * He + 1 rows at theta = j pi / (rows - 1), upsample * We columns
    at u = (i + 1/2) / columns. Column edges of drstudio's texels fall midway between Mitsuba's columns; row
    edges fall on Mitsuba's rows, which get the mean of the two texels: either way the bilinear ramp across
    an edge is symmetric about it and integrates (to first order) to the step."""
    he, we = env.shape[:2]
    rows, cols = upsample * he + 1, upsample * we
    u_mi = (np.arange(cols) + 0.5) / cols
    # the same direction has u_mi in Mitsuba and u_dr = u_mi + 1/2 in drstudio
    col = np.floor(((u_mi + 0.5) % 1.0) * we).astype(int).clip(0, we - 1)
    j = np.arange(rows)
    above = ((j - 1) // upsample).clip(0, he - 1)  # texel rows just above and below theta_j = (j / upsample) pi / He
    below = (j // upsample).clip(0, he - 1)
    edge = (j % upsample == 0)[:, None, None]
    img = np.where(edge, 0.5 * (env[above] + env[below]), env[below])
    return np.ascontiguousarray(img[:, col], np.float32)


def camera_fov(intrinsics: np.ndarray, width: int, height: int) -> float:
    fx, fy, cx, cy = (float(x) for x in intrinsics)
    if abs(fx - fy) > 1e-4 * fy or abs(cx - width / 2) > 1e-4 or abs(cy - height / 2) > 1e-4:
        raise ValueError(f"camera intrinsics {intrinsics}: the converter needs fx = fy and a centered principal point")
    return math.degrees(2 * math.atan(0.5 * height / fy))


def _look_at(mi, pose: np.ndarray):
    from scipy.spatial.transform import Rotation

    pos = pose[:3].astype(float)
    rot = Rotation.from_quat(pose[3:] / np.linalg.norm(pose[3:])).as_matrix()
    fwd, up = rot @ [0.0, 0.0, -1.0], rot @ [0.0, 1.0, 0.0]
    return mi.ScalarTransform4f().look_at(origin=pos.tolist(), target=(pos + fwd).tolist(), up=up.tolist())


def to_mitsuba(ld: Loaded, tmp: str, *, spp: int, max_depth: int, rr_depth: int = 5, seed: int = 0,
               integrator: str = "path", env_upsample: int = 64, principled: bool = False):
    """The Mitsuba scene of `ld` (see the module docstring); OBJ files go to folder `tmp` (keep it until the
    scene is loaded). The mesh of material <name> is `mesh-<name>` (`mi.traverse` keys
    `mesh-<name>.bsdf.brdf_0.reflectance.value` for Lambert, `mesh-<name>.bsdf.brdf_0.albedo` for GGX; Mitsuba
    may merge meshes whose BSDFs are equal)."""
    mi, _ = mitsuba()
    from drstudio.renderer.stages import pathtrace as pt

    ps = ld.scene
    world = ps.bvh.points.numpy().astype(np.float64)
    faces = ps.bvh.indices.numpy().reshape(-1, 3)
    normals = ps.normals.numpy().astype(np.float64)
    fm = ps.face_material.numpy()
    models = ps.material_model.numpy()
    if ps.colors is not None and np.any(ps.colors.numpy() != 1.0):
        raise ValueError("vertex colors: not converted to Mitsuba")
    scene = {
        "type": "scene",
        "integrator": {"type": integrator, "max_depth": max_depth + 1, "rr_depth": rr_depth + 1},
        "sensor": {
            "type": "perspective", "fov": camera_fov(ld.intrinsics.numpy(), ld.width, ld.height), "fov_axis": "y",
            "to_world": _look_at(mi, ld.pose.numpy()),
            "sampler": {"type": "independent", "sample_count": int(spp), "seed": int(seed)},
            "film": {"type": "hdrfilm", "width": ld.width, "height": ld.height, "rfilter": {"type": "box"},
                     "pixel_format": "rgb"},
        },
    }
    for m, name in enumerate(ld.names):
        sel = faces[fm == m]
        if len(sel) == 0:
            continue
        albedo = _constant(ps.albedo, m, "albedo")
        if models[m] == pt.MODEL_GGX:
            rough = float(_constant(ps.roughness, m, "roughness")[0])
            metal = float(_constant(ps.metallic, m, "metallic")[0])
            if principled:
                brdf = {"type": "principled", "base_color": {"type": "rgb", "value": albedo.tolist()},
                        "roughness": rough, "metallic": metal, "specular": 0.5, "spec_tint": 0.0}
            else:
                brdf = {"type": "drstudio_ggx", "albedo": mi.ScalarColor3f(*albedo), "roughness": rough,
                        "metallic": metal}
        else:
            if models[m] != pt.MODEL_LAMBERT:
                albedo = np.zeros(3)
            brdf = {"type": "diffuse", "reflectance": {"type": "rgb", "value": albedo.tolist()}}
        path = os.path.join(tmp, f"mat{m}.obj")
        _write_obj(path, world, normals, sel)
        shape = {"type": "obj", "filename": path, "face_normals": False,
                 "bsdf": {"type": "twosided", "id": f"mat-{name}", "brdf_0": brdf}}
        emission = _constant(ps.emission, m, "emission")
        if np.any(emission > 0):
            shape["emitter"] = {"type": "area", "radiance": {"type": "rgb", "value": emission.tolist()}}
        scene[f"mesh-{name}"] = shape
    lt = ps.lights
    for j, (p, c, i) in enumerate(zip(lt.point_position.numpy(), lt.point_color.numpy(), lt.point_intensity.numpy())):
        scene[f"point{j}"] = {"type": "point", "position": p.tolist(),
                              "intensity": {"type": "rgb", "value": (c * i).tolist()}}
    for j, (d, c, i) in enumerate(zip(lt.dir_direction.numpy(), lt.dir_color.numpy(), lt.dir_intensity.numpy())):
        scene[f"directional{j}"] = {"type": "directional", "direction": d.tolist(),
                                    "irradiance": {"type": "rgb", "value": (c * i).tolist()}}
    env = ps.env.numpy()
    if env.size:
        scene["environment"] = {"type": "envmap", "bitmap": mi.Bitmap(env_for_mitsuba(env, env_upsample))}
    return mi.load_dict(scene)


def render_mitsuba(ld: Loaded, spp: int, seed: int, max_depth: int, rr_depth: int = 5, **kwargs) -> np.ndarray:
    """Mitsuba's image (H, W, 3) of a loaded scene (`to_mitsuba` keyword arguments pass through)."""
    mi, dr = mitsuba()
    with tempfile.TemporaryDirectory() as tmp:
        scene = to_mitsuba(ld, tmp, spp=spp, max_depth=max_depth, rr_depth=rr_depth, seed=seed, **kwargs)
    img = mi.render(scene, spp=spp, seed=seed)
    return np.array(img, dtype=np.float32)[..., :3]


# ---------------------------------------------------------------------------------------------------
# Albedo-gradient images


def gradient_drstudio(ld: Loaded, material: str, spp: int, seed: int, max_depth: int, rr_depth: int = 5,
                      jitter: bool = True) -> np.ndarray:
    """d image / d albedo of `material` (H, W, 3): channel c of pixel p is d image[p, c] / d albedo[c] (the
    channels of Lambert and dielectric GGX albedos are independent), by drstudio's path replay
    backpropagation (`render_path_backward`) with a one-hot image adjoint per pixel. `ld` must be loaded
    with requires_grad=True."""
    import warp as wp
    from drstudio.renderer.stages import pathtrace as pt

    ps = ld.scene
    m = ld.names.index(material)
    o = ps.albedo.offsets[m][0]
    n = ld.width * ld.height
    out = np.zeros((n, 3), np.float32)
    one_hot = np.zeros((n, 3), np.float32)
    adj = wp.zeros((n, 3), dtype=float, device=ps.device)
    for i in range(n):
        one_hot[i] = 1.0
        adj.assign(one_hot)
        one_hot[i] = 0.0
        ps.albedo.data.grad.zero_()
        pt.render_path_backward(ps, adj, ld.intrinsics, ld.pose, ld.width, ld.height, spp=spp, seed=seed,
                                max_depth=max_depth, rr_depth=rr_depth, jitter=jitter, wrt=["albedo"])
        out[i] = ps.albedo.data.grad.numpy()[o:o + 3]
    return out.reshape(ld.height, ld.width, 3)


def gradient_mitsuba(ld: Loaded, material: str, spp: int, seed: int, max_depth: int, rr_depth: int = 5,
                     passes: int = 1) -> np.ndarray:
    """The same gradient image by Mitsuba's `prb` in forward mode (the albedo's three channels seeded with
    1), averaged over `passes` renders of spp / passes samples (seeds seed, seed + 1, ...)."""
    mi, dr = mitsuba()
    with tempfile.TemporaryDirectory() as tmp:
        scene = to_mitsuba(ld, tmp, spp=spp, max_depth=max_depth, rr_depth=rr_depth, seed=seed, integrator="prb")
    params = mi.traverse(scene)
    keys = [k for k in (f"mesh-{material}.bsdf.brdf_0.reflectance.value", f"mesh-{material}.bsdf.brdf_0.albedo")
            if k in params]
    if not keys:
        raise ValueError(f"material {material!r}: no albedo parameter in the Mitsuba scene")
    key = keys[0]
    acc = np.zeros((ld.height, ld.width, 3))
    for k in range(passes):
        dr.enable_grad(params[key])
        params.update()
        img = mi.render(scene, params, spp=spp // passes, seed=seed + k)
        dr.forward(params[key])
        acc += np.array(dr.grad(img), dtype=np.float64)[..., :3]
        dr.disable_grad(params[key])
    return (acc / passes).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Comparisons


SCENES = {"cornell_box": ("scenes/cornell_box.json", "red"), "env_object": ("scenes/env_object.json", "glossy")}
ROOT = Path(__file__).resolve().parents[1]


def _stats(a, a2, b, b2) -> dict:
    """MAD between the renderers, the noise of each (MAD between two seeds), and what two unbiased estimates
    with those noises differ by: |a - b| has the variance of (|a - a2| + |b - b2|) / 2, so the expected MAD
    is sqrt((noise_a^2 + noise_b^2) / 2) for Gaussian-like errors."""
    na, nb = float(np.abs(a - a2).mean()), float(np.abs(b - b2).mean())
    return dict(mad=float(np.abs(a - b).mean()), noise_dr=na, noise_mi=nb,
                expected=float(np.sqrt((na * na + nb * nb) / 2)),
                mean_ratio=((a + a2).mean((0, 1)) / (b + b2).mean((0, 1))).tolist())


def compare(name: str, spp: int, size: int | None = None, max_depth: int | None = None, threads: int = 1,
            env_upsample: int = 64) -> dict:
    """drstudio vs Mitsuba `path` on shipped scene `name` (a key of SCENES) at `spp`, two seeds each
    (the file's depth and resolution unless given; drstudio jittered: a box pixel filter as Mitsuba's)."""
    ld = load(ROOT / SCENES[name][0], size=size)
    depth = ld.render.max_depth if max_depth is None else max_depth
    a = render_drstudio(ld, spp, 1, depth, threads=threads)
    a2 = render_drstudio(ld, spp, 2, depth, threads=threads)
    b = render_mitsuba(ld, spp, 1, depth, env_upsample=env_upsample)
    b2 = render_mitsuba(ld, spp, 2, depth, env_upsample=env_upsample)
    return dict(_stats(a, a2, b, b2), scene=name, spp=spp, width=ld.width, height=ld.height, max_depth=depth,
                images=(a, b), mean=float(b.mean()))


def compare_gradient(name: str, spp: int, size: int | None = None, max_depth: int | None = None,
                     passes: int = 1) -> dict:
    """drstudio's path-replay albedo-gradient image vs Mitsuba `prb` forward mode on shipped scene `name`
    (the albedo of SCENES[name][1]), two seeds each; adds the relative L1 error sum|a - b| / sum|b| and the
    same for two seeds of each."""
    ld = load(ROOT / SCENES[name][0], size=size, requires_grad=True)
    depth = ld.render.max_depth if max_depth is None else max_depth
    mat = SCENES[name][1]
    a = gradient_drstudio(ld, mat, spp, 1, depth)
    a2 = gradient_drstudio(ld, mat, spp, 2, depth)
    b = gradient_mitsuba(ld, mat, spp, 1, depth, passes=passes)
    b2 = gradient_mitsuba(ld, mat, spp, 1 + passes, depth, passes=passes)
    ref = float(np.abs(b + b2).sum() / 2)

    def rel(x, y):
        return float(np.abs(x - y).sum() / ref)

    return dict(_stats(a, a2, b, b2), scene=name, material=mat, spp=spp, width=ld.width, height=ld.height,
                max_depth=depth, rel=rel(a, b), rel_noise_dr=rel(a, a2), rel_noise_mi=rel(b, b2),
                sum_ratio=((a + a2).sum((0, 1)) / (b + b2).sum((0, 1))).tolist(), images=(a, b))


def _tone(x: np.ndarray) -> np.ndarray:
    return np.clip(x / (1 + x), 0, 1) ** (1 / 2.2)


def save_figure(path, rows: list[dict], title: str, gradient: bool = False) -> None:
    """One row per comparison: drstudio, Mitsuba, |difference| x 4 (images: sRGB-ish tone map; gradients:
    a diverging map of the channel sum, one scale per row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for r, ax in zip(rows, axes):
        a, b = r["images"]
        if gradient:
            sa, sb = a.sum(-1), b.sum(-1)
            lim = float(np.percentile(np.abs(sb), 99)) or 1.0
            for k, (im, label) in enumerate(((sa, "drstudio path replay"), (sb, "Mitsuba prb (forward)"))):
                ax[k].imshow(im, cmap="RdBu_r", vmin=-lim, vmax=lim)
                ax[k].set_title(f"{r['scene']}: {label}", fontsize=7)
            ax[2].imshow(np.abs(sa - sb), cmap="magma", vmin=0, vmax=lim / 4)
            ax[2].set_title(f"|difference| (x4); rel. {r['rel']:.3f}", fontsize=7)
        else:
            ax[0].imshow(_tone(a))
            ax[0].set_title(f"{r['scene']}: drstudio {r['spp']} spp", fontsize=7)
            ax[1].imshow(_tone(b))
            ax[1].set_title(f"Mitsuba path {r['spp']} spp", fontsize=7)
            ax[2].imshow(np.clip(np.abs(a - b).mean(-1) * 4, 0, 1), cmap="magma", vmin=0, vmax=1)
            ax[2].set_title(f"|difference| x4; MAD {r['mad']:.4f}", fontsize=7)
        for x in ax:
            x.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="drstudio's path mode vs Mitsuba 3 on the shipped path scenes")
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--spp", type=int, default=1024)
    ap.add_argument("--grad-spp", type=int, default=0, help="also compare albedo-gradient images at this spp")
    ap.add_argument("--size", type=int, default=None, help="square image size (default: the scene file's)")
    ap.add_argument("--grad-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--figure", default=None, help="write the comparison figure(s) with this path prefix")
    args = ap.parse_args(argv)
    rows = [compare(s, args.spp, args.size, threads=args.threads) for s in args.scenes]
    print("| scene | size | spp | max depth | MAD drstudio vs Mitsuba | noise drstudio | noise Mitsuba "
          "| expected MAD | mean ratio dr / mi (r, g, b) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = ", ".join(f"{x:.4f}" for x in r["mean_ratio"])
        print(f"| {r['scene']} | {r['width']}x{r['height']} | {r['spp']} | {r['max_depth']} | {r['mad']:.4f} | "
              f"{r['noise_dr']:.4f} | {r['noise_mi']:.4f} | {r['expected']:.4f} | {ratio} |")
    if args.figure:
        save_figure(f"{args.figure}_images.png", rows, "drstudio path mode vs Mitsuba 3 path")
    if args.grad_spp:
        grows = [compare_gradient(s, args.grad_spp, args.grad_size, passes=max(1, args.grad_spp // 256))
                 for s in args.scenes]
        print()
        print("| scene | d image / d albedo of | size | spp | rel. L1 error dr vs mi | rel. noise dr | rel. noise mi "
              "| MAD | noise dr | noise mi | expected MAD | sum ratio dr / mi (r, g, b) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in grows:
            ratio = ", ".join(f"{x:.4f}" for x in r["sum_ratio"])
            print(f"| {r['scene']} | {r['material']} | {r['width']}x{r['height']} | {r['spp']} | {r['rel']:.4f} | "
                  f"{r['rel_noise_dr']:.4f} | {r['rel_noise_mi']:.4f} | {r['mad']:.4f} | {r['noise_dr']:.4f} | "
                  f"{r['noise_mi']:.4f} | {r['expected']:.4f} | {ratio} |")
        if args.figure:
            save_figure(f"{args.figure}_gradients.png", grows, "d image / d albedo: drstudio path replay vs "
                        "Mitsuba prb", gradient=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
