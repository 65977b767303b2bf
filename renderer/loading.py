"""Scene file -> `Scene`: parse, validate (renderer.scene_schema), load assets, cross-check.

`load_scene(path)` is the only door into a `Scene` from disk: every problem is a `SceneError` naming
the file, the JSON field path and what was expected, and code past it trusts the scene. Relative
file names in a scene file are relative to the scene file's directory.
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from . import conventions as cv
from . import memory, primitives
from .assets import image_size, load_mesh_file, read_image, read_radiance_image
from .errors import SceneError, field_path
from .initial_values import initial_value
from .params import MATERIAL_LEAVES, Group, Kind, ParamPath, scene_values
from .scene import (
    AmbientLight,
    Camera,
    DirectionalLight,
    EnvironmentLight,
    Field,
    Material,
    Mesh,
    OccupancySettings,
    PointLight,
    RenderSettings,
    Scene,
)
from .scene_schema import (
    DEFAULT_RAYS_PER_BATCH,
    MAX_CAMERA_SIZE,
    MAX_JSON_DEPTH,
    AmbientLightSpec,
    DirectionalLightSpec,
    EnvironmentLightSpec,
    OptimizeSpec,
    validate_scene,
)
from .transforms_json import load_transforms

MAX_SCENE_BYTES = 16 * 2**20


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise _DuplicateKey(k)
    return dict(pairs)


def read_json(path, what: str = "scene file"):
    """Parsed JSON of a file; SceneError with line and column for malformed JSON."""
    path, file = Path(path), str(path)
    if not path.is_file():
        raise SceneError(file, "", f"{what} not found" if not path.exists() else f"{what} is not a file")
    try:
        if path.stat().st_size > MAX_SCENE_BYTES:
            raise SceneError(file, "", f"{what} is larger than {MAX_SCENE_BYTES >> 20} MiB")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SceneError(file, "", f"{what} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SceneError(file, "", f"{what} cannot be read: {e.strerror or e}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise SceneError(file, f"line {e.lineno}, column {e.colno}", f"invalid JSON: {e.msg}") from None
    except _DuplicateKey as e:
        raise SceneError(file, "", f"invalid JSON: duplicate key \"{e.args[0]}\" in an object") from None
    except RecursionError:
        raise SceneError(file, "", f"invalid JSON: nested too deeply (a scene file is at most {MAX_JSON_DEPTH} "
                                   "levels deep)") from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits (4300)
        why = "an integer has too many digits" if "digits" in str(e) else str(e)
        raise SceneError(file, "", f"invalid JSON: {why}") from None


def load_scene(path) -> Scene:
    """Load, validate and cross-check a scene file (see scenes/README.md). Reads files and nothing else: a
    missing dataset is a SceneError (`generate_missing_dataset` renders one from the scene's recipe)."""
    file = str(path)
    spec = validate_scene(read_json(path), file)
    base = Path(path).parent

    def err(parts: tuple, msg: str) -> SceneError:
        return SceneError(file, field_path(parts), msg)

    for group in ("meshes", "materials", "lights", "cameras", "fields"):
        seen: dict[str, int] = {}
        for i, item in enumerate(getattr(spec, group)):
            if item.name in seen:
                first = f"{group}[{seen[item.name]}]"
                raise err((group, i, "name"), f"duplicate name '{item.name}' (first used at {first})")
            seen[item.name] = i

    scene = Scene(path=file, render=RenderSettings(**spec.render.model_dump()), description=spec.description)
    for i, m in enumerate(spec.materials):
        where = ("materials", i)
        scene.materials[m.name] = Material(
            m.name, m.model, _texture(m.albedo, 3, True, base, file, where + ("albedo",)),
            np.clip(_texture(m.roughness, 1, False, base, file, where + ("roughness",)), 0.02, 1.0),
            _texture(m.metallic, 1, False, base, file, where + ("metallic",)), m.wrap,
            _radiance(m.emission, m.emission_scale, base, file, where + ("emission",)))
    for i, m in enumerate(spec.meshes):
        if m.material not in scene.materials:
            raise err(("meshes", i, "material"), f"unknown material '{m.material}'; defined: "
                                                   f"{', '.join(scene.materials)}")
        if m.file is not None:
            where = field_path(("meshes", i, "file"))
            vertices, faces, uvs, colors = load_mesh_file(base / m.file, file, where)
        else:
            vertices, faces, uvs = _primitive(m.primitive)
            colors = np.ones_like(vertices)
        t = m.transform
        rotation = t.rotation.to_quaternion() if t.rotation else np.array([0.0, 0.0, 0.0, 1.0])
        scene.meshes[m.name] = Mesh(m.name, vertices, faces, uvs, colors, _f32(t.translation), _f32(rotation),
                                    _f32(t.scale), m.material, m.file or f"primitive {m.primitive.type}")
    _add_atlases(scene, spec, file)
    path_mode = spec.render.mode == "path"
    if path_mode and spec.fields:
        raise err(("render", "mode"), "render mode 'path' traces the scene's meshes; a scene with fields is "
                                      "volume-rendered (use another mode)")
    for i, light in enumerate(spec.lights):
        if isinstance(light, EnvironmentLightSpec):
            if not path_mode:
                raise err(("lights", i, "type"), f"an environment light needs render.mode 'path' (the "
                                                 f"'{spec.render.mode}' mode has no light from infinity)")
            if scene.environment_lights:
                raise err(("lights", i, "type"), "a scene has at most one environment light")
            scene.environment_lights[light.name] = EnvironmentLight(
                light.name, _radiance(light.radiance, light.scale, base, file, ("lights", i, "radiance")))
        elif isinstance(light, AmbientLightSpec):
            if path_mode:
                raise err(("lights", i, "type"), "an ambient light has no meaning in render mode 'path' "
                                                 "(light comes from surfaces and lights; use an environment "
                                                 "light)")
            scene.ambient_lights[light.name] = AmbientLight(light.name, _f32(light.color))
        elif isinstance(light, DirectionalLightSpec):
            scene.directional_lights[light.name] = DirectionalLight(
                light.name, _f32(cv.normalize(light.direction)), _f32(light.color), _f32([light.intensity]))
        else:
            scene.point_lights[light.name] = PointLight(light.name, _f32(light.position), _f32(light.color),
                                                        _f32([light.intensity]))
    for c in spec.cameras:
        scene.cameras[c.name] = Camera(c.name, c.width, c.height, _f32(c.intrinsics()), _f32(c.pose()))
    if spec.optimize is not None:
        _check_dataset_present(spec.optimize.targets, base, file)
    for i, f in enumerate(spec.fields):
        n_images = 0
        if f.type == "nerf_w":
            if spec.optimize is None:
                raise err(("fields", i, "type"), "a nerf_w field needs an optimize section: its per-image "
                                                 "embeddings are sized by the training views")
            n_images = _training_view_count(spec.optimize.targets, base, file)
        if f.aabb == "auto":
            f = f.model_copy(update={"aabb": _auto_aabb(spec.optimize, base, file, i)})
        if f.type in ("voxel_grid", "dynamic"):
            # the lattice allocated now (start of coarse to fine), twice (the fresh grid and the scene's copy);
            # training holds four copies of the final lattice (values, gradients, two Adam moments)
            start = tuple(f.coarse_to_fine.start_resolution) if getattr(f, "coarse_to_fine", None) else f.resolution
            times = f.n_times if f.type == "dynamic" else 1
            first, last = ("x".join(map(str, r)) for r in (start, f.resolution))
            try:
                memory.require(memory.grid_bytes(start, f.sh_degree, 2) * times, f"the field's {first} lattice")
                if spec.optimize is not None:
                    memory.require(memory.grid_bytes(f.resolution, f.sh_degree, 4) * times,
                                   f"training the field at {last}")
            except memory.MemoryBudgetError as exc:
                raise err(("fields", i, "resolution"), str(exc)) from None
        if f.type == "hash_grid":
            # the table allocated now twice (the fresh one and the scene's copy); training holds five copies
            try:
                memory.require(memory.hash_table_bytes(f.n_levels, f.log2_table_size, f.n_features, 2),
                               f"the field's hash tables ({f.n_levels} levels of 2^{f.log2_table_size} entries)")
                if spec.optimize is not None:
                    memory.require(memory.hash_table_bytes(f.n_levels, f.log2_table_size, f.n_features, 5),
                                   "training the field's hash tables")
            except memory.MemoryBudgetError as exc:
                raise err(("fields", i, "log2_table_size"), str(exc)) from None
        _check_field_batches(f, spec.optimize, file, i)
        scene.fields[f.name] = _field(f, n_images)
    if isinstance(spec.background, str):
        if scene.fields:
            raise err(("background",), "expected [r, g, b]: a scene with fields needs a background color "
                                       "(the volume renderer composites over a constant)")
        scene.background = read_image(base / spec.background, srgb=True, channels=3, file=file,
                                      field="background", kind="background")
    else:
        scene.background = _f32(spec.background)
    _check_ranges(scene, spec, file)
    if path_mode and (isinstance(spec.background, str) or any(spec.background)):
        raise err(("background",), "render mode 'path' shows the environment light where rays escape (black "
                                   "without one); expected the default [0, 0, 0] (use an environment light)")
    if spec.optimize is not None:
        scene.optimize = spec.optimize
        _check_optimize(scene, spec.optimize)
    return scene


def _add_atlases(scene: Scene, spec, file: str) -> None:
    """A mesh without texture coordinates whose material has a texture (larger than 1x1, free or not) gets an
    automatic UV atlas (renderer.uv_atlas, xatlas; deterministic, so recordings replay), noted once on stderr;
    where one cannot apply (an init listing the mesh's per-vertex values, which the atlas re-indexes, or
    xatlas fails) a SceneError names the mesh. Without it every vertex would sample texel (0, 0)."""
    from .uv_atlas import add_atlas, has_uvs

    for i, m in enumerate(spec.meshes):
        mesh = scene.meshes[m.name]
        mat = scene.materials[mesh.material]
        sizes = [getattr(mat, leaf).shape[:2] for leaf, _ in MATERIAL_LEAVES]
        textured = [s for s in sizes if s != (1, 1)]
        if not textured or has_uvs(mesh.uvs):
            continue
        where = ("meshes", i, "file" if m.file is not None else "primitive")
        h, w = max(textured, key=lambda s: s[0] * s[1])
        why = (f"mesh '{m.name}' has no texture coordinates and its material '{mesh.material}' has a {w}x{h} "
               "texture")
        params = spec.optimize.parameters if spec.optimize is not None else {}
        for leaf in ("vertices", "colors", "uvs"):
            init = getattr(params.get(f"meshes.{m.name}.{leaf}"), "init", None)
            # (a mesh file init is mapped through the atlas: initial_values reads it per original vertex)
            if isinstance(init, list) and np.ndim(init) >= 2 and np.shape(init)[0] > 1:
                raise SceneError(file, field_path(where), f"{why}: an automatic UV atlas splits its vertices on "
                                 f"chart seams, so optimize.parameters[\"meshes.{m.name}.{leaf}\"].init (per "
                                 "original vertex) cannot apply; give the mesh file texture coordinates")
        try:
            scene.meshes[m.name], charts, fresh = add_atlas(mesh, int(np.clip(max(h, w), 64, 4096)),
                                                            with_charts=True)
        except Exception as exc:  # xatlas: degenerate input, charts that do not pack
            raise SceneError(file, field_path(where), f"{why}, and no automatic UV atlas could be made for it "
                             f"({type(exc).__name__}: {exc}); give the mesh file texture coordinates") from None
        if fresh:
            print(f"drstudio: {file}: {field_path(where)}: {why}; gave it an automatic UV atlas (xatlas: {charts} "
                  f"charts, {len(mesh.vertices)} -> {len(scene.meshes[m.name].vertices)} vertices)", file=sys.stderr)


def _range_field(spec, path: ParamPath) -> tuple:
    """The scene-file field a parameter's value comes from (for range errors)."""
    group = getattr(spec, str(path.group))
    i = next(i for i, item in enumerate(group) if item.name == path.owner)
    if path.group == "meshes":
        if path.name in ("translation", "rotation", "scale"):
            return ("meshes", i, "transform", path.name)
        return ("meshes", i, "file" if group[i].file is not None else "primitive")
    if path.group == "cameras":
        c = group[i]
        if path.name == "pose":
            return ("cameras", i) + (("look_at", "eye") if c.look_at is not None else ("matrix",))
        return ("cameras", i, "fov_y" if c.fov_y is not None else "fx")
    return (str(path.group), i, path.name)


def _check_ranges(scene: Scene, spec, file: str) -> None:
    """Every mesh, light and camera value within its kind's range (`Kind.range`: bounds that keep the
    renderer's products finite in float32, so a schema-valid 3e38 cannot render as inf or NaN)."""
    for path, (value, kind) in scene_values(scene).items():
        if path.group not in ("meshes", "lights", "cameras") or not value.size:
            continue
        lo, hi = kind.range
        if value.min() >= lo and value.max() <= hi:
            continue
        what = {"vertices": "vertex coordinates", "uvs": "texture coordinates", "colors": "vertex colors",
                "intrinsics": "intrinsics fx, fy, cx, cy", "pose": "camera position"}.get(path.name, path.name)
        raise SceneError(file, field_path(_range_field(spec, path)),
                         f"expected {what} in [{lo:g}, {hi:g}] ({path}: the {kind.value} range that keeps rendering "
                         f"finite in float32), got values in [{float(value.min()):g}, {float(value.max()):g}]")


def _check_field_batches(f, opt, file: str, i: int) -> None:
    """A field's ray batches fit in memory: a training step's `rays_per_batch` rays and a render's group of rays,
    times `samples_per_ray` (memory.field_batch_bytes), checked before anything is allocated."""
    from .render_field import DEFAULT_CHUNK

    samples, group = f.samples_per_ray, DEFAULT_CHUNK
    if f.type in ("neural", "nerf_w"):  # (torch is loaded for these fields anyway)
        from .optim.field_models import READOUT_CHUNK as group
    try:
        memory.require(memory.field_batch_bytes(f, group, training=False),
                       f"rendering fields[{i}] ('{f.name}') in groups of {group} rays x {samples} samples per ray")
    except memory.MemoryBudgetError as exc:
        raise SceneError(file, field_path(("fields", i, "samples_per_ray")), str(exc)) from None
    if opt is None:
        return
    rays = opt.rays_per_batch or DEFAULT_RAYS_PER_BATCH
    try:
        memory.require(memory.field_batch_bytes(f, rays, training=True),
                       f"a training step of {rays} rays x {samples} samples per ray (fields[{i}] '{f.name}'"
                       + (f", an MLP {f.depth} x {f.width}" if f.type in ("neural", "nerf_w") else "") + ")")
    except memory.MemoryBudgetError as exc:
        raise SceneError(file, "optimize.rays_per_batch", f"{exc}; use fewer rays per batch or samples per ray") \
            from None


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _texture(value, channels: int, srgb: bool, base: Path, file: str, parts: tuple) -> np.ndarray:
    """A material property as an (H, W, C) texture: a constant becomes 1x1."""
    if isinstance(value, str):
        return read_image(base / value, srgb=srgb, channels=channels, file=file, field=field_path(parts),
                          kind=parts[-1])
    return _f32(value).reshape(1, 1, channels)


def _radiance(value, scale: float, base: Path, file: str, parts: tuple) -> np.ndarray:
    """Emitted or environment radiance as an (H, W, 3) float32 image: a constant becomes 1x1; an image file
    is read through imageio (8/16-bit files decoded from sRGB, float files such as .hdr/.exr as stored),
    after checking that its texels (and their gradients and optimizer state) fit in memory."""
    if not isinstance(value, str):
        return (_f32(value) * np.float32(scale)).reshape(1, 1, 3)
    where = field_path(parts)
    img = read_radiance_image(base / value, file, where)
    out = img * np.float32(scale)
    if not np.isfinite(out).all():
        raise SceneError(file, where, f"image '{value}' times scale {scale:g} exceeds float32's range")
    return out.astype(np.float32)


def _primitive(p) -> primitives.Built:
    if p.type == "sphere":
        return primitives.uv_sphere(p.radius, p.resolution)
    if p.type == "icosphere":
        return primitives.icosphere(p.radius, p.subdivisions)
    if p.type == "cube":
        return primitives.cube(p.size)
    if p.type == "plane":
        return primitives.plane(p.size)
    return primitives.torus(p.major_radius, p.minor_radius, p.resolution)


def _missing_dataset(targets, base: Path) -> Path | None:
    """The `targets.transforms` file when it is missing and the scene gives a recipe to render it from
    (`targets.dataset`), else None."""
    rel = targets.transforms
    if rel is None or targets.dataset is None or (base / rel).exists():
        return None
    return base / rel


def _check_dataset_present(targets, base: Path, file: str) -> None:
    """A missing `targets.transforms` / `test_transforms` file is a SceneError that says how to make one
    (`generate_missing_dataset` or `drstudio dataset` when the scene gives a recipe)."""
    for key in ("transforms", "test_transforms"):
        rel = getattr(targets, key)
        if rel is None or (base / rel).exists():
            continue
        where, path = f"optimize.targets.{key}", base / rel
        recipe = targets.dataset
        if recipe is None or key != "transforms":
            raise SceneError(file, where, f"file not found: '{os.path.relpath(path)}' (generate a dataset with "
                             "`drstudio dataset SCENE --out DIR`)")
        command = recipe.command(shlex.quote(os.path.relpath(base / recipe.scene)),
                                 shlex.quote(os.path.relpath(path.parent)))
        raise SceneError(file, where, f"file not found: '{os.path.relpath(path)}'; the scene's recipe "
                         f"(optimize.targets.dataset) renders it: `{command}`")


def _inside_folder(path: Path, folder: Path) -> bool:
    """`path` stays inside `folder`, as written (no absolute path, no `..` out) and with links resolved."""
    lexical = os.path.relpath(os.path.normpath(path), os.path.normpath(folder))
    if lexical == ".." or lexical.startswith(".." + os.sep) or os.path.isabs(lexical):
        return False
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _dataset_plan(recipe, file: str, source: Scene):
    """The `renderer.datasets` plan of `recipe` (targets.dataset) over `source` (SceneError on bad options)."""
    from .datasets import Animation, DatasetOptions, plan_dataset

    where = "optimize.targets.dataset"
    animate = Animation(times=recipe.animate_times) if recipe.animate or recipe.animate_times else None
    try:
        options = DatasetOptions(views=recipe.views, test_views=recipe.test_views, width=recipe.width,
                                 height=recipe.height, lighting_variation=recipe.lighting_variation,
                                 occluders=recipe.occluders, animate=animate, seed=recipe.seed)
        return plan_dataset(source, options)
    except ValueError as e:
        raise SceneError(file, where, str(e)) from None


def generate_missing_dataset(path) -> Path | None:
    """Render the dataset of scene file `path` from its recipe (`optimize.targets.dataset`) when its
    `targets.transforms` file is missing; a note with the equivalent `drstudio dataset` command goes to
    stderr. Returns the directory written, or None when there was nothing to do. The explicit step the CLI and
    the viewer take before `load_scene` (which never writes files)."""
    from .datasets import write_dataset

    file = str(path)
    spec = validate_scene(read_json(path), file)
    base = Path(path).parent
    if spec.optimize is None:
        return None
    missing = _missing_dataset(spec.optimize.targets, base)
    if missing is None:
        return None
    recipe, out = spec.optimize.targets.dataset, missing.parent
    where = "optimize.targets.dataset"
    if not _inside_folder(missing, base):
        raise SceneError(file, "optimize.targets.transforms", f"'{os.path.relpath(missing)}' is outside the scene's "
                         "folder: a missing dataset is generated (targets.dataset) only inside it, so a scene file "
                         "cannot make drstudio write elsewhere; generate it there with `drstudio dataset SCENE "
                         "--out DIR`")
    command = recipe.command(shlex.quote(os.path.relpath(base / recipe.scene)), shlex.quote(os.path.relpath(out)))
    print(f"drstudio: {file}: its dataset is missing; generating it (the same as `{command}`)", file=sys.stderr)
    try:
        source = load_scene(base / recipe.scene)
    except SceneError as e:
        raise SceneError(file, f"{where}.scene", str(e)) from None
    write_dataset(source, _dataset_plan(recipe, file, source), out)  # never over existing images
    return out


def open_scene(path, *, generate_datasets: bool = True) -> Scene:
    """`load_scene`, after rendering a missing dataset from the scene's recipe when `generate_datasets`
    (`generate_missing_dataset`): what the CLI and the viewer open a scene with."""
    if generate_datasets:
        generate_missing_dataset(path)
    return load_scene(path)


def _auto_aabb(opt, base: Path, file: str, i: int) -> list[list[float]]:
    """A field's `"aabb": "auto"`: the box of its training dataset (`targets.transforms`): the `capture.aabb`
    `drstudio capture` wrote, else instant-ngp's `aabb_scale` box or the region the cameras' frustums
    share (renderer.captures.field_box)."""
    from .captures import field_box, read_transforms

    where = ("fields", i, "aabb")
    transforms = getattr(getattr(opt, "targets", None), "transforms", None)
    if not transforms:
        raise SceneError(file, field_path(where), '"auto" takes the box from optimize.targets.transforms, which '
                         "this scene does not have")
    path = base / transforms
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        doc = None  # load_transforms reports the file's own problems under optimize.targets.transforms
    box = (doc.get("capture") or {}).get("aabb") if isinstance(doc, dict) else None
    if box is None:
        box = field_box(read_transforms(path, test_every=None)).tolist()
    arr = np.asarray(box, np.float64)
    if arr.shape != (2, 3) or not np.isfinite(arr).all() or not (arr[1] > arr[0]).all():
        raise SceneError(file, field_path(where), f"the dataset's box {box!r} is not [[min], [max]] with max > min")
    return arr.tolist()


def _training_view_count(targets, base: Path, file: str) -> int:
    """The number of training views of `targets` (held-out views excluded): the rows of per-image embeddings."""
    if targets.transforms is not None:
        try:
            frames = load_transforms(base / targets.transforms)  # its own checks, under the scene's field
        except SceneError as e:
            raise SceneError(file, "optimize.targets.transforms", str(e)) from None
        return sum(1 for f in frames if f.split != "test")
    return len(targets.images or targets.cameras or [])


def _field(f, n_images: int = 0) -> Field:
    """A scene `Field` from its validated spec: the fresh grid at the lattice training starts from, the
    seeded initial weights of a network (zero embeddings for NeRF-W's `n_images` training views)."""
    from .volume.march import lattice_box
    from .volume.voxel_grid import VoxelGrid

    aabb = _f32(np.ravel(f.aabb))
    occ = getattr(f, "occupancy", None)
    occupancy = OccupancySettings(tuple(occ.resolution), occ.update_every, occ.threshold) if occ else None
    if f.type in ("neural", "nerf_w"):
        from .volume.neural_field import initial_weights

        field = Field(f.name, f.type, (), aabb, 0, "softplus", "float32", f.samples_per_ray, None, None, occupancy,
                      model=f, weights=initial_weights(f))
        if f.type == "nerf_w":
            if f.appearance_dim:
                field.appearance = np.zeros((n_images, f.appearance_dim), np.float32)
            if f.transient_dim:
                field.transient = np.zeros((n_images, f.transient_dim), np.float32)
        return field
    if f.type == "hash_grid":
        from .volume.hash_field import initial_values

        table, weights = initial_values(f)
        return Field(f.name, f.type, (), lattice_box(aabb, f.contract), f.sh_degree, "trunc_exp", "float32",
                     f.samples_per_ray, None, None, occupancy, model=f, weights=weights, table=table,
                     contract=bool(f.contract), gradient_scaling=float(f.gradient_scaling))
    if f.type == "dynamic":
        from .volume.time_grid import TimeGrid

        grid = TimeGrid(tuple(f.resolution), f.n_times, aabb, f.sh_degree, f.activation, f.init_density,
                        device="cpu", requires_grad=False)
        return Field(f.name, f.type, tuple(f.resolution), aabb, f.sh_degree, f.activation, "float32",
                     f.samples_per_ray, grid.density.numpy().copy(), grid.sh.numpy().copy(), occupancy, model=f,
                     n_times=f.n_times, time_range=(float(f.time_range[0]), float(f.time_range[1])))

    start = tuple(f.coarse_to_fine.start_resolution) if f.coarse_to_fine else tuple(f.resolution)
    aabb = lattice_box(aabb, f.contract)
    # the VoxelGrid constructor is the one definition of a fresh grid's raw values
    grid = VoxelGrid(start, aabb, f.sh_degree, activation=f.activation, init_density=f.init_density,
                     device="cpu", requires_grad=False)
    return Field(f.name, f.type, tuple(f.resolution), aabb, f.sh_degree, f.activation, f.storage,
                 f.samples_per_ray, grid.density.numpy().copy(), grid.sh.numpy().copy(), occupancy,
                 start if f.coarse_to_fine else None,
                 tuple(f.coarse_to_fine.upsample_at) if f.coarse_to_fine else (), contract=bool(f.contract),
                 distortion=float(f.distortion), density_l1=float(f.density_l1), tv_every=int(f.tv_every),
                 loss_space=str(f.loss_space), gradient_scaling=float(f.gradient_scaling))


def _check_field_optimize(scene: Scene, opt: OptimizeSpec) -> None:
    """A scene with fields trains its fields from ray batches; one without has no use for the ray options."""
    file = scene.path
    if not scene.fields:
        for key in ("rays_per_batch", "eval_every", "eval_rays", "pixel_jitter", "camera_refinement"):
            if getattr(opt, key) is not None:
                raise SceneError(file, f"optimize.{key}", "applies to scenes with fields only")
        for key in ("test_cameras", "test_transforms"):
            if getattr(opt.targets, key) is not None:
                raise SceneError(file, f"optimize.targets.{key}", "applies to scenes with fields only (held-out "
                                 "views measure a field's PSNR)")
        return
    for path in opt.parameters:
        if not path.startswith("fields."):
            raise SceneError(file, field_path(("optimize", "parameters", path)),
                             "a scene with fields optimizes field parameters only (fields.NAME.density, "
                             "fields.NAME.sh, fields.NAME.weights, ...): the field's render does not depend on "
                             "this value")
    for key in ("ssim", "laplacian", "edge_length"):
        if getattr(opt.loss, key) > 0:
            raise SceneError(file, f"optimize.loss.{key}", "not available for fields (they train on batches "
                             "of rays, not whole images, and have no vertices); use l2, l1 and tv")
    for i, f in enumerate(scene.fields.values()):
        if opt.camera_refinement is not None and f.type != "voxel_grid":
            raise SceneError(file, "optimize.camera_refinement", f"refines cameras with voxel-grid fields only so far; "
                             f"fields[{i}] is a {f.type} field")
        if f.type in ("neural", "nerf_w", "hash_grid") and opt.loss.tv > 0:
            raise SceneError(file, "optimize.loss.tv", f"total variation regularizes grids; fields[{i}] is a "
                             f"{f.type} field (an MLP): use l2 or l1")
        if f.type == "nerf_w" and opt.loss.l1 > 0:
            raise SceneError(file, "optimize.loss.l1", f"fields[{i}] is a nerf_w field, whose data term is NeRF-W's "
                             "uncertainty-weighted squared error, weighted by loss.l2; use l2")
        if f.type == "dynamic":
            _check_times(scene, opt, f, i)
    if opt.targets.cameras is not None and not scene.meshes:
        raise SceneError(file, "optimize.targets.cameras", "renders the targets from the scene's meshes, and this "
                         "scene has none; use targets.transforms or targets.images")
    train = set(opt.targets.cameras or [])
    for i, name in enumerate(opt.targets.test_cameras or []):
        where = field_path(("optimize", "targets", "test_cameras", i))
        if name not in scene.cameras:
            raise SceneError(file, where, f"unknown camera '{name}'; defined: {', '.join(scene.cameras)}")
        if name in train:
            raise SceneError(file, where, f"camera '{name}' is also a training camera (targets.cameras); "
                             "held-out views must not be trained on")
    if opt.targets.test_transforms is not None:
        field = "optimize.targets.test_transforms"
        try:
            frames = load_transforms(Path(file).parent / opt.targets.test_transforms)
        except SceneError as e:
            raise SceneError(file, field, str(e)) from None
        for i, f in enumerate(frames):
            size = image_size(f.image_path, file, field, max_size=MAX_CAMERA_SIZE)
            if size != (f.width, f.height):
                raise SceneError(file, field, f"image '{f.image_path}' is {size[0]}x{size[1]}, frames[{i}] of "
                                 f"'{opt.targets.test_transforms}' is {f.width}x{f.height}")


def _check_times(scene: Scene, opt: OptimizeSpec, f: Field, index: int) -> None:
    """A dynamic field trains on frames with a `time` (transforms.json) inside its time range."""
    file, base = scene.path, Path(scene.path).parent
    if opt.targets.transforms is None:
        raise SceneError(file, "optimize.targets", f"fields[{index}] is a dynamic field: its targets must be a "
                         "targets.transforms whose frames have a \"time\" (drstudio dataset --animate)")
    t0, t1 = f.time_range
    for key in ("transforms", "test_transforms"):
        rel = getattr(opt.targets, key)
        if rel is None:
            continue
        try:
            frames = load_transforms(base / rel)
        except SceneError as e:
            raise SceneError(file, f"optimize.targets.{key}", str(e)) from None
        for i, fr in enumerate(frames):
            if fr.time is None or not t0 <= fr.time <= t1:
                got = "no time" if fr.time is None else f"time {fr.time:g}"
                raise SceneError(file, f"optimize.targets.{key}", f"frames[{i}] of '{rel}' has {got}; fields[{index}] "
                                 f"(dynamic) needs every frame's time in its time_range [{t0:g}, {t1:g}]")


PATH_GRADIENTS = ("material albedo, roughness, metallic and emission, mesh vertex colors, environment radiance, "
                  "point and directional light color, intensity, position and direction")


def path_differentiable(p) -> bool:
    """Whether the path tracer's adjoint (renderer.stages.pathtrace) gives a gradient for parameter `p`."""
    if p.path.group is Group.MESHES:
        return p.kind is Kind.COLORS
    # every light of a path-mode scene (ambient lights are refused there); no camera or field gradients
    return p.path.group in (Group.MATERIALS, Group.LIGHTS)


def _check_optimize(scene: Scene, opt: OptimizeSpec) -> None:
    params = scene.params()
    _check_field_optimize(scene, opt)
    for path, p in opt.parameters.items():
        where = field_path(("optimize", "parameters", path))
        if path not in params:
            close = difflib.get_close_matches(path, list(params), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "`drstudio info SCENE` lists all paths"
            raise SceneError(scene.path, where, f"unknown parameter path; {hint}")
        # a field's own value is a fresh grid, never the answer, so it may start from it
        if p.init is None and opt.targets.cameras is not None and not path.startswith("fields."):
            raise SceneError(scene.path, where + ".init", "required when the targets are rendered from the "
                             "scene (targets.cameras): without an init the optimization starts at the answer")
        if scene.render.mode == "path" and not path_differentiable(params[path]):
            raise SceneError(scene.path, where, f"render mode 'path' gives no gradient for {params[path].kind} "
                             f"parameters of {params[path].path.group}; it differentiates {PATH_GRADIENTS}")
        initial_value(scene, path)  # validates the init against the parameter
        _check_shape_settings(scene, opt, path, p, where)
    views = _count_target_views(scene, opt.targets)
    if opt.batch_views > views:
        raise SceneError(scene.path, "optimize.batch_views",
                         f"expected at most {views} (the number of target views), got {opt.batch_views}")


def _check_shape_settings(scene: Scene, opt: OptimizeSpec, path: str, p, where: str) -> None:
    """The vertices-only settings of a parameter (parametrization, remesh, reference, a topology of its own)."""
    from .initial_values import start_mesh

    is_vertices = path.startswith("meshes.") and path.endswith(".vertices")
    for key in ("parametrization", "remesh", "reference"):
        if getattr(p, key) is not None and not is_vertices:
            raise SceneError(scene.path, f"{where}.{key}", "applies to mesh vertices (meshes.NAME.vertices) only")
    if not is_vertices:
        return
    if p.reference is not None:
        load_mesh_file(Path(scene.path).parent / p.reference, scene.path, f"{where}.reference")
    owner = path.split(".")[1]
    if p.remesh is not None or start_mesh(scene, path) is not None:
        for leaf in ("uvs", "colors"):
            if f"meshes.{owner}.{leaf}" in opt.parameters:
                why = "is remeshed" if p.remesh is not None else "starts from a mesh of its own topology"
                raise SceneError(scene.path, field_path(("optimize", "parameters", f"meshes.{owner}.{leaf}")),
                                 f"cannot be optimized: the mesh's vertices {why} (per-vertex values would not "
                                 "follow the topology)")
    if p.remesh is not None and p.remesh.steps[-1] >= opt.steps:
        raise SceneError(scene.path, f"{where}.remesh.steps", f"expected steps before the last step (optimize.steps "
                         f"= {opt.steps}), got {p.remesh.steps[-1]}")


def _count_target_views(scene: Scene, targets) -> int:
    """Checks the targets (cameras exist; images are images of their camera's size) and counts them."""
    file, base = scene.path, Path(scene.path).parent

    def check_image(image: Path, width: int, height: int, field: str, what: str) -> None:
        size = image_size(image, file, field, max_size=MAX_CAMERA_SIZE)
        if size != (width, height):
            raise SceneError(file, field, f"image '{image}' is {size[0]}x{size[1]}, {what} is "
                                          f"{width}x{height}")

    if targets.transforms is not None:
        field = "optimize.targets.transforms"
        try:
            frames = load_transforms(base / targets.transforms)
        except SceneError as e:  # report it under the scene field that referenced the file
            raise SceneError(file, field, str(e)) from None
        for i, f in enumerate(frames):
            check_image(f.image_path, f.width, f.height, field, f"frames[{i}] of '{targets.transforms}'")
        return len(frames)
    for i, t in enumerate(targets.images or [(name, None) for name in targets.cameras]):
        name, image = (t.camera, t.file) if targets.images else t
        parts = ("optimize", "targets") + (("images", i, "camera") if image else ("cameras", i))
        if name not in scene.cameras:
            raise SceneError(file, field_path(parts), f"unknown camera '{name}'; defined: "
                                                      f"{', '.join(scene.cameras)}")
        if image is not None:
            cam = scene.cameras[name]
            check_image(base / image, cam.width, cam.height, field_path(parts[:-1] + ("file",)),
                        f"camera '{name}'")
    return len(targets.images or targets.cameras)


def summarize(scene: Scene) -> str:
    """A human-readable multi-line summary, ending with every parameter path and its shape."""
    lines = [f"scene {scene.path}" + (f": {scene.description}" if scene.description else "")]
    for m in scene.meshes.values():
        lines.append(f"  mesh {m.name}: {m.source}, {len(m.vertices)} vertices, {len(m.faces)} triangles, "
                     f"material {m.material}")
    for f in scene.fields.values():
        box = f"{_value_text(f.aabb[:3])}..{_value_text(f.aabb[3:])}"
        if f.type in ("neural", "nerf_w"):
            m = f.model
            extra = [f"{m.encoding.upper()} {m.pos_freqs}/{m.dir_freqs} frequencies", f"MLP {m.depth} x {m.width}",
                     f"{f.weights.size} weights", f"{f.samples_per_ray} samples per ray"]
            if f.type == "nerf_w":
                extra.append(f"appearance {m.appearance_dim}, transient {m.transient_dim} per image "
                             f"({0 if f.appearance is None else len(f.appearance)} images), beta_min {m.beta_min:g}, "
                             f"lambda_u {m.lambda_u:g}")
            if f.occupancy is not None:
                extra.append(f"occupancy {'x'.join(map(str, f.occupancy.resolution))} every "
                             f"{f.occupancy.update_every} steps")
            lines.append(f"  field {f.name}: {f.type} over {box}, " + ", ".join(extra))
            continue
        if f.type == "hash_grid":
            m = f.model
            extra = [f"{m.n_levels} levels x 2^{m.log2_table_size} entries x {m.n_features} features "
                     f"({f.table.size} table values), cells {m.base_resolution}..{m.finest_resolution}",
                     f"MLP width {m.width} ({f.weights.size} weights), SH degree {m.sh_degree}",
                     f"{f.samples_per_ray} samples per ray"]
            if f.occupancy is not None:
                extra.append(f"occupancy {'x'.join(map(str, f.occupancy.resolution))} every "
                             f"{f.occupancy.update_every} steps")
            if f.contract:
                extra.append("contracted (unbounded; the inner box is the central half)")
            lines.append(f"  field {f.name}: {f.type} over {box}, " + ", ".join(extra))
            continue
        extra = [f"SH degree {f.sh_degree}", f"{f.samples_per_ray} samples per ray", f"storage {f.storage}"]
        if f.type == "dynamic":
            extra.insert(0, f"{f.n_times} time slices over [{f.time_range[0]:g}, {f.time_range[1]:g}]")
        if f.occupancy is not None:
            extra.append(f"occupancy {'x'.join(map(str, f.occupancy.resolution))} every {f.occupancy.update_every} "
                         "steps")
        if f.contract:
            extra.append("contracted (unbounded; the inner box is the central half)")
        if f.upsample_at:
            extra.append("coarse to fine " + " -> ".join("x".join(map(str, r)) for r in f.resolutions())
                         + f" after steps {', '.join(map(str, f.upsample_at))}")
        lines.append(f"  field {f.name}: {f.type} {'x'.join(map(str, f.resolution))} over {box}, " + ", ".join(extra))
    for mat in scene.materials.values():
        props = ", ".join(f"{k} {_value_text(getattr(mat, k))}" for k, _ in MATERIAL_LEAVES)
        lines.append(f"  material {mat.name}: {mat.model}, {props}, wrap {mat.wrap}")
    for light in scene.point_lights.values():
        lines.append(f"  light {light.name}: point at {_value_text(light.position)}, color "
                     f"{_value_text(light.color)}, intensity {light.intensity[0]:g}")
    for light in scene.directional_lights.values():
        lines.append(f"  light {light.name}: directional {_value_text(light.direction)}, color "
                     f"{_value_text(light.color)}, intensity {light.intensity[0]:g}")
    for light in scene.ambient_lights.values():
        lines.append(f"  light {light.name}: ambient {_value_text(light.color)}")
    for light in scene.environment_lights.values():
        lines.append(f"  light {light.name}: environment {_value_text(light.radiance)}")
    for c in scene.cameras.values():
        fov = cv.intrinsics_to_fov_y(c.intrinsics, c.height)
        lines.append(f"  camera {c.name}: {c.width}x{c.height}, fov_y {fov:.1f} deg, "
                     f"at {_value_text(c.pose[:3])}")
    r = scene.render
    lines.append(f"  background {_value_text(scene.background)}")
    if r.mode == "path":
        lines.append(f"  render: mode path, {r.spp} spp, max depth {r.max_depth}, seed {r.seed}")
    else:
        lines.append(f"  render: mode {r.mode}, shadows {'on' if r.shadows else 'off'}, mipmaps "
                     f"{'on' if r.mipmaps else 'off'}, soft sigma {r.soft_sigma:g} gamma {r.soft_gamma:g}")
    opt = scene.optimize
    if opt is not None:
        t = opt.targets
        target = (f"cameras {', '.join(t.cameras)}" if t.cameras else f"{len(t.images)} images" if t.images
                  else f"transforms {t.transforms}")
        losses = ", ".join(f"{k} {v:g}" for k, v in opt.loss.model_dump().items() if v > 0)
        batch = (f"{opt.rays_per_batch or DEFAULT_RAYS_PER_BATCH} rays per step" if scene.fields
                 else f"{opt.batch_views} view(s) per step")
        lines.append(f"  optimize: {opt.steps} steps, {opt.optimizer.type} lr {opt.optimizer.lr:g}, loss "
                     f"{losses}, targets {target}, {batch}, seed {opt.seed}")
    params = scene.params()
    lines.append(f"parameters ({len(params)}; * = optimized):")
    width = max(len(p) for p in params)
    for path, p in params.items():
        mark = "*" if opt is not None and path in opt.parameters else " "
        lines.append(f"  {mark} {path:<{width}}  {str(p.shape):<16} {p.kind}")
    return "\n".join(lines)


def _value_text(v: np.ndarray) -> str:
    if v.size <= 4:
        return "[" + ", ".join(f"{x:.3g}" for x in v.ravel()) + "]"
    return "x".join(str(n) for n in v.shape) + " texture" if v.ndim == 3 else str(v.shape)
