"""Rendering a scene's radiance field (`Scene.fields`, renderer.volume) through cameras and ray batches.

The volume counterpart of `renderer.render`: camera rays from `renderer.stages.camera.generate_rays`,
then `renderer.volume.render` (sample -> query -> composite, docs/volume.md). Differentiable w.r.t. the
field's values (density, SH) and the background, not w.r.t. cameras (samples are constants).

- `field_grid(field, density, sh)`: the `VoxelGrid` of a scene `Field` over given value arrays (e.g. a
  DeviceScene's leaves `fields.NAME.density` / `.sh`), so the tape's gradients land in their `.grad`.
- `FieldState`: that grid plus the field's settings and its occupancy grid (or None).
- `render_field_view(state, intrinsics, pose, width, height, background, occupancy, step) -> RenderOutput`:
  a whole view (large views in chunks, forward only), or a block of its rows (`rows=`).
- `RayBank`: every pixel ray of a set of views with its target color; `gather(indices)` makes a ray batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import warp as wp

from .render import RenderOutput
from .scene import Field
from .stages.camera import generate_rays
from .thread_tape import active_tape, recording
from .volume import OccupancyGrid, VoxelGrid, readout, sample_rays
from .volume import render as volume_render
from .volume.march import contract_far

DEFAULT_CHUNK = 1 << 16  # rays per launch group when a view is rendered without gradients


@wp.kernel
def _gather_rays(indices: wp.array(dtype=wp.int32), origins: wp.array(dtype=wp.vec3),
                 directions: wp.array(dtype=wp.vec3), colors: wp.array2d(dtype=float),
                 out_origins: wp.array(dtype=wp.vec3), out_directions: wp.array(dtype=wp.vec3),
                 out_colors: wp.array2d(dtype=float)):
    i = wp.tid()
    r = indices[i]
    out_origins[i] = origins[r]
    out_directions[i] = directions[r]
    for c in range(3):
        out_colors[i, c] = colors[r, c]


PIXEL_JITTER_SALT = 0x2545F491  # keeps the pixel jitter's random stream apart from the strata's (march.py)


@wp.kernel
def _gather_rays_jittered(indices: wp.array(dtype=wp.int32), origins: wp.array(dtype=wp.vec3),
                          directions: wp.array(dtype=wp.vec3), colors: wp.array2d(dtype=float),
                          offsets: wp.array(dtype=wp.int32), widths: wp.array(dtype=wp.int32), seed: int,
                          first_ray: int, out_origins: wp.array(dtype=wp.vec3),
                          out_directions: wp.array(dtype=wp.vec3), out_colors: wp.array2d(dtype=float)):
    """As `_gather_rays`, but through a uniform random point of the ray's pixel: the bank's direction plus
    (a - 1/2, b - 1/2) times the differences to the next pixel's along x and y (the previous one's on the last
    column / row). Bank directions are linear in the pixel coordinates (`generate_rays`: not normalized, view
    depth 1), so that is the pinhole ray through (x + a, y + b), depth convention kept. The stream is keyed by
    (seed, first_ray + i)."""
    i = wp.tid()
    r = indices[i]
    # the view of ray r: offsets holds each view's first ray, then the total
    v = int(0)
    while offsets[v + 1] <= r:
        v += 1
    w = widths[v]
    n = offsets[v + 1] - offsets[v]
    local = r - offsets[v]
    x = local % w
    d = directions[r]
    dx = wp.vec3(0.0)
    if w > 1:
        if x + 1 < w:
            dx = directions[r + 1] - d
        else:
            dx = d - directions[r - 1]
    dy = wp.vec3(0.0)
    if n > w:
        if local + w < n:
            dy = directions[r + w] - d
        else:
            dy = d - directions[r - w]
    state = wp.rand_init(seed, first_ray + i)
    a = wp.randf(state) - 0.5
    b = wp.randf(state) - 0.5
    out_origins[i] = origins[r]
    out_directions[i] = d + a * dx + b * dy
    for c in range(3):
        out_colors[i, c] = colors[r, c]


def field_grid(field: Field, density: wp.array, sh: wp.array) -> VoxelGrid:
    """A `VoxelGrid` with `field`'s box, SH degree and activation whose values ARE `density` (nx, ny, nz)
    and `sh` (nx, ny, nz, 3K) (not copies): queries read them and record gradients into their `.grad`."""
    if density.ndim != 3 or sh.ndim != 4 or tuple(sh.shape[:3]) != tuple(density.shape):
        raise ValueError(f"density, sh: expected shapes (nx, ny, nz) and (nx, ny, nz, 3K), got {density.shape} "
                         f"and {sh.shape}")
    if sh.shape[3] != 3 * (field.sh_degree + 1) ** 2:
        raise ValueError(f"sh: expected {3 * (field.sh_degree + 1) ** 2} channels for SH degree {field.sh_degree}, "
                         f"got {sh.shape[3]}")
    # a 2^3 placeholder lattice from the constructor (it validates box, degree and activation), then our arrays
    grid = VoxelGrid(2, field.aabb, field.sh_degree, dtype=density.dtype, activation=field.activation,
                     device=density.device, requires_grad=False, contract=field.contract)
    grid.resolution, grid.density, grid.sh = tuple(int(n) for n in density.shape), density, sh
    return grid


@dataclass
class FieldState:
    """What rendering a field needs: its scene settings, its grid, and its occupancy grid (or None)."""

    field: Field
    grid: VoxelGrid
    occupancy: OccupancyGrid | None = None

    @property
    def n_samples(self) -> int:
        return int(self.field.samples_per_ray)

    def storage_grid(self) -> VoxelGrid:
        """The grid at the field's storage precision: itself (float32) or a float16 copy (what read-outs
        render and exports store; training keeps float32 values, as renderer.optim updates float32 only)."""
        if self.field.storage == "float16" and self.grid.dtype != wp.float16:
            return self.grid.astype(wp.float16, requires_grad=False)
        return self.grid

    def time_range(self) -> tuple[float, float] | None:
        return None

    def published_copy(self) -> FieldState:
        """A copy for readers on other threads (the viewer's preview): the grid at the storage precision and
        the occupied cells, cloned off every tape, so the training thread may update or replace the
        originals meanwhile."""
        with recording(None):
            grid = self.storage_grid()
            if grid is self.grid:
                grid = field_grid(self.field, wp.clone(grid.density, requires_grad=False),
                                  wp.clone(grid.sh, requires_grad=False))
            return FieldState(self.field, grid, readout.occupancy_snapshot(self.occupancy))

    def render_rays_readout(self, origins: wp.array, directions: wp.array, background: wp.array, *,
                            time: float | None = None, appearance=None, chunk: int = DEFAULT_CHUNK,
                            **_) -> np.ndarray:
        """(N, 3) float32 NumPy colors of rays, forward only and off every tape (`volume.readout`): midpoint
        samples, the occupancy grid of the moment, the storage precision. The grid and occupancy references
        are taken once, so a concurrent upsample (which replaces them) does not disturb the render."""
        grid, occupancy = self.storage_grid(), readout.occupancy_snapshot(self.occupancy)
        n = origins.shape[0]
        out = np.empty((n, 3), np.float32)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            samples = sample_rays(origins[a:b], directions[a:b], grid.aabb, self.n_samples, jitter=False,
                                  occupancy=occupancy, contract=grid.contract,
                                  far=contract_far(grid.aabb) if grid.contract else 1.0e10)
            density, color = readout.grid_query(grid, samples.positions, samples.directions)
            rgb, _, _ = readout.composite_forward(density, color, samples, background)
            out[a:b] = rgb.numpy()
        return out


def render_field_view(state: FieldState, intrinsics: wp.array, pose: wp.array, width: int, height: int,
                      background: wp.array, occupancy: OccupancyGrid | None = None, step: int = 0, *,
                      jitter: bool = False, grid: VoxelGrid | None = None,
                      chunk: int = DEFAULT_CHUNK, rows: tuple[int, int] | None = None) -> RenderOutput:
    """Render a whole view of a field.

    Args:
        state: the field (`grid` overrides its grid, e.g. `state.storage_grid()`).
        intrinsics: float (4,) [fx, fy, cx, cy]; pose: float (7,) camera-to-world (docs/architecture.md).
        width, height: pixels. background: float (3,) linear RGB behind the field.
        occupancy: skip samples in empty cells (an `OccupancyGrid`), or None to march every stratum.
        step: seed of the stratified jitter (only used with jitter=True; read-outs use midpoints).
        chunk: rays per group; a view of more pixels is rendered group by group, which is forward only.
        rows: (first, end): only the image rows [first, end) (e.g. one rank's share of a view); every ray is
            rendered on its own, so these are the whole view's pixels bit for bit (without jitter).

    Returns:
        `RenderOutput` with `image` (N, 3), `alpha` the opacity (N,) and `depth` the expected view depth
        (N,) (not divided by the opacity). Differentiable w.r.t. the grid values and background when the
        view fits in one chunk; a larger view under an active `wp.Tape` raises ValueError. With `rows`, a
        `RenderOutput` of width x (end - first) pixels.
    """
    grid = state.grid if grid is None else grid
    origins, directions = generate_rays(intrinsics, pose, width, height)
    if rows is not None:
        first, end = (int(x) for x in rows)
        if not 0 <= first <= end <= int(height):
            raise ValueError(f"rows: expected 0 <= first <= end <= height {height}, got {rows}")
        origins, directions = origins[first * width:end * width], directions[first * width:end * width]
        height = end - first
    n = int(width) * int(height)
    if n <= chunk:
        rgb, opacity, depth, _ = volume_render(grid, origins, directions, state.n_samples, background, seed=step,
                                               jitter=jitter, occupancy=occupancy)
        return RenderOutput(width, height, rgb, depth=depth, alpha=opacity)
    if active_tape() is not None:
        raise ValueError(f"render_field_view: a {width}x{height} view is rendered in chunks of {chunk} rays, "
                         "which is not differentiable; use ray batches (RayBank) or a larger chunk under a tape")
    dev = origins.device
    rgb = wp.empty((n, 3), dtype=float, device=dev)
    opacity = wp.empty(n, dtype=float, device=dev)
    depth = wp.empty(n, dtype=float, device=dev)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        c_rgb, c_opacity, c_depth, _ = volume_render(grid, origins[a:b], directions[a:b], state.n_samples,
                                                     background, seed=step, jitter=jitter, occupancy=occupancy)
        wp.copy(rgb[a:b], c_rgb)
        wp.copy(opacity[a:b], c_opacity)
        wp.copy(depth[a:b], c_depth)
    return RenderOutput(width, height, rgb, depth=depth, alpha=opacity)


class RayBank:
    """Every pixel ray of a set of views and its target color, flat: view after view, each row-major.

    Built once per set of targets (rays are constants of the volume path). `gather(indices)` returns the
    ray batch (origins (B,) vec3, directions (B,) vec3, target colors (B, 3)) of flat ray indices."""

    def __init__(self, views: list[tuple[wp.array, wp.array, int, int, wp.array]], device):
        """views: (intrinsics (4,), pose (7,), width, height, target image (width * height, 3)) each."""
        self.device = wp.get_device(device)
        self.sizes = [int(w) * int(h) for _, _, w, h, _ in views]
        total = int(sum(self.sizes))
        if total == 0:
            raise ValueError("views: expected at least one view with pixels")
        self.origins = wp.empty(total, dtype=wp.vec3, device=self.device)
        self.directions = wp.empty(total, dtype=wp.vec3, device=self.device)
        self.colors = wp.empty((total, 3), dtype=float, device=self.device)
        a = 0
        for (intrinsics, pose, w, h, image), n in zip(views, self.sizes, strict=True):
            if tuple(image.shape) != (n, 3):
                raise ValueError(f"views: a {w}x{h} view needs a target of shape ({n}, 3), got {image.shape}")
            o, d = generate_rays(intrinsics, pose, w, h)
            wp.copy(self.origins[a:a + n], o)
            wp.copy(self.directions[a:a + n], d)
            wp.copy(self.colors[a:a + n], image)
            a += n
        self._offsets = wp.array(np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int32), dtype=wp.int32,
                                 device=self.device)
        self._widths = wp.array(np.array([int(w) for _, _, w, _, _ in views], np.int32), dtype=wp.int32,
                                device=self.device)

    def __len__(self) -> int:
        return self.origins.shape[0]

    def gather(self, indices: np.ndarray | wp.array, *, jitter_seed: int | None = None, first_ray: int = 0
               ) -> tuple[wp.array, wp.array, wp.array]:
        """The rays and target colors at flat `indices` (int, each in [0, len(self))). With `jitter_seed`, each
        ray passes through a uniform random point of its pixel instead of its centre (the target is the pixel's
        colour, an average over its area), keyed by (jitter_seed, first_ray + i): a rank's slice of a batch that
        starts at `first_ray` draws what the whole batch draws there."""
        if not isinstance(indices, wp.array):
            indices = np.asarray(indices)
            if indices.ndim != 1 or (indices.size and (indices.min() < 0 or indices.max() >= len(self))):
                raise ValueError(f"indices: expected a 1D array of ray indices in [0, {len(self)})")
            indices = wp.array(indices.astype(np.int32), dtype=wp.int32, device=self.device)
        if jitter_seed is None:
            return gather_rays(indices, self.origins, self.directions, self.colors)
        b, dev = indices.shape[0], self.device
        out = (wp.empty(b, dtype=wp.vec3, device=dev), wp.empty(b, dtype=wp.vec3, device=dev),
               wp.empty((b, 3), dtype=float, device=dev))
        seed = (int(jitter_seed) ^ PIXEL_JITTER_SALT) & 0x7FFFFFFF
        wp.launch(_gather_rays_jittered, dim=b, device=dev, record_tape=False,
                  inputs=[indices, self.origins, self.directions, self.colors, self._offsets, self._widths, seed,
                          int(first_ray)], outputs=list(out))
        return out


def gather_rays(indices: wp.array, origins: wp.array, directions: wp.array, colors: wp.array
                ) -> tuple[wp.array, wp.array, wp.array]:
    """(origins[indices], directions[indices], colors[indices]) of int32 `indices` (B,) into vec3 (N,), vec3
    (N,) and (N, 3) arrays; not recorded on any tape."""
    b, dev = indices.shape[0], origins.device
    out_origins = wp.empty(b, dtype=wp.vec3, device=dev)
    out_directions = wp.empty(b, dtype=wp.vec3, device=dev)
    out_colors = wp.empty((b, 3), dtype=float, device=dev)
    wp.launch(_gather_rays, dim=b, device=dev, record_tape=False,
              inputs=[indices, origins, directions, colors, out_origins, out_directions, out_colors])
    return out_origins, out_directions, out_colors


@wp.kernel
def _copy_slice(src: wp.array(dtype=float), dst: wp.array(dtype=float), offset: int):
    i = wp.tid()
    dst[offset + i] = src[i]


@wp.kernel
def _add_slice(src: wp.array(dtype=float), offset: int, dst: wp.array(dtype=float)):
    i = wp.tid()
    dst[i] = dst[i] + src[offset + i]


@wp.kernel
def _refine_rays(views: wp.array(dtype=wp.int32), origins: wp.array(dtype=wp.vec3),
                 directions: wp.array(dtype=wp.vec3), base: wp.array(dtype=float), poses: wp.array(dtype=float),
                 out_origins: wp.array(dtype=wp.vec3), out_directions: wp.array(dtype=wp.vec3)):
    # a ray of a view whose pose moved from base (p0, q0) to (p, q): o + (p - p0), (q q0^-1) d. Warp's adjoint.
    r = wp.tid()
    v = views[r] * 7
    p0 = wp.vec3(base[v], base[v + 1], base[v + 2])
    q0 = wp.normalize(wp.quat(base[v + 3], base[v + 4], base[v + 5], base[v + 6]))
    p = wp.vec3(poses[v], poses[v + 1], poses[v + 2])
    q = wp.normalize(wp.quat(poses[v + 3], poses[v + 4], poses[v + 5], poses[v + 6]))
    out_origins[r] = origins[r] + (p - p0)
    out_directions[r] = wp.quat_rotate(q * wp.quat_inverse(q0), directions[r])


def refine_rays(views: np.ndarray, origins: wp.array, directions: wp.array, base_poses: np.ndarray,
                poses: list[wp.array]) -> tuple[wp.array, wp.array]:
    """Rays of a batch from cameras whose poses moved (camera refinement): ray i of view `views[i]` (an index into
    `poses`), generated at pose `base_poses[views[i]]` (7,) as (origins[i], directions[i]), as the same pixel's ray
    at the pose `poses[views[i]]` (a (7,) leaf [px, py, pz, qx, qy, qz, qw]; quaternions need not be unit).

    Recorded on the active tape: gradients reach the pose leaves that have requires_grad (not the input rays)."""
    dev, n, v = origins.device, origins.shape[0], len(poses)
    views = np.asarray(views, np.int32)
    if views.shape != (n,) or (n and (views.min() < 0 or views.max() >= v)):
        raise ValueError(f"views: expected {n} view indices in [0, {v})")
    base = np.asarray(base_poses, np.float32).reshape(-1)
    if base.shape != (7 * v,):
        raise ValueError(f"base_poses: expected {v} poses of 7 numbers, got shape {np.shape(base_poses)}")
    grad = any(p.requires_grad for p in poses)
    stack = wp.empty(7 * v, dtype=float, device=dev, requires_grad=grad)
    for k, pose in enumerate(poses):  # off the tape: the recorded scatter below is its adjoint
        wp.launch(_copy_slice, dim=7, device=dev, record_tape=False, inputs=[pose, stack, 7 * k])
    out = (wp.empty(n, dtype=wp.vec3, device=dev, requires_grad=grad),
           wp.empty(n, dtype=wp.vec3, device=dev, requires_grad=grad))
    tape = active_tape()
    if grad and tape is not None:
        def scatter():
            for k, pose in enumerate(poses):
                if pose.requires_grad:
                    wp.launch(_add_slice, dim=7, device=dev, record_tape=False, inputs=[stack.grad, 7 * k, pose.grad])

        tape.record_func(scatter, [stack, *poses])
    wp.launch(_refine_rays, dim=n, device=dev,
              inputs=[wp.array(views, dtype=wp.int32, device=dev), origins, directions,
                      wp.array(base, dtype=float, device=dev), stack], outputs=list(out))
    return out
