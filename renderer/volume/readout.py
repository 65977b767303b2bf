"""Forward-only read-outs of the volume ops that never touch a `wp.Tape`.

The active tape is per-thread (`renderer.thread_tape`), so a viewer thread does not record on the
optimizer's tape anyway; these read-outs also never record on their own thread's tape. They launch the
same kernels as `stages.camera.generate_rays`, `VoxelGrid.query` and `composite.composite` with
`record_tape=False` and allocate outputs without gradients, so they are safe to call from any thread at
any time. Same contracts and results as the taped ops (tests compare them).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import warp as wp

from ..stages.camera import generate_rays_kernel
from .composite import _accumulate_samples, _add_background, _optical_depth_scan
from .march import Samples
from .voxel_grid import ACTIVATIONS, VoxelGrid, _query


def occupancy_snapshot(occupancy):
    """A copy of an `OccupancyGrid`'s occupied cells (None stays None) for a read-out on another thread:
    `sample_rays` reads the grid in two passes (count, then write), and the training thread updates it in
    place; an update between the passes would make the write pass overrun the arrays sized by the count."""
    if occupancy is None:
        return None
    snap = copy.copy(occupancy)
    snap.occupied = wp.array(occupancy.occupied.numpy().copy(), dtype=wp.uint8, device=occupancy.occupied.device)
    return snap


def camera_rays(intrinsics, pose, width: int, height: int, device) -> tuple[wp.array, wp.array]:
    """(origins, directions) vec3 (H*W,) through pixel centers, row-major (`generate_rays`' contract).
    intrinsics (4,) [fx, fy, cx, cy], pose (7,) camera-to-world: NumPy or float32 Warp arrays."""
    dev = wp.get_device(device)
    intr = intrinsics if isinstance(intrinsics, wp.array) else wp.array(
        np.asarray(intrinsics, np.float32).reshape(4), dtype=float, device=dev)
    pos = pose if isinstance(pose, wp.array) else wp.array(np.asarray(pose, np.float32).reshape(7), dtype=float,
                                                            device=dev)
    n = int(width) * int(height)
    origins = wp.zeros(n, dtype=wp.vec3, device=dev)
    directions = wp.zeros(n, dtype=wp.vec3, device=dev)
    wp.launch(generate_rays_kernel, dim=(int(height), int(width)), inputs=[intr, pos, int(width)],
              outputs=[origins, directions], device=dev, record_tape=False)
    return origins, directions


def grid_query(grid: VoxelGrid, positions: wp.array, directions: wp.array) -> tuple[wp.array, wp.array]:
    """`VoxelGrid.query` without gradients: (density (S,), color (S, 3))."""
    s = positions.shape[0]
    out_density = wp.zeros(s, dtype=float, device=grid.device)
    out_color = wp.zeros((s, 3), dtype=float, device=grid.device)
    if s:
        wp.launch(_query, dim=s, device=grid.device, record_tape=False,
                  inputs=[grid.density, grid.sh, grid.lo, grid.hi, grid.n_coeffs,
                          ACTIVATIONS.index(grid.activation), positions, directions, out_density,
                          out_color])
    return out_density, out_color


def composite_forward(densities: wp.array, colors: wp.array, samples: Samples, background: wp.array,
                      min_transmittance: float = 1.0e-4) -> tuple[wp.array, wp.array, wp.array]:
    """`composite.composite` without gradients: (rgb (N, 3), opacity (N,), depth (N,))."""
    dev, n, s = samples.ray_offsets.device, samples.n_rays, samples.n_samples
    max_tau = -math.log(min_transmittance) if min_transmittance > 0.0 else math.inf
    tau_before = wp.zeros(s, dtype=float, device=dev)
    rgb = wp.zeros((n, 3), dtype=float, device=dev)
    opacity = wp.zeros(n, dtype=float, device=dev)
    depth = wp.zeros(n, dtype=float, device=dev)
    wp.launch(_optical_depth_scan, dim=n, device=dev, record_tape=False,
              inputs=[densities, samples.deltas, samples.ray_offsets, samples.ray_counts, tau_before])
    wp.launch(_accumulate_samples, dim=s, device=dev, record_tape=False,
              inputs=[densities, colors, samples.deltas, samples.t_points, samples.ray_indices, tau_before,
                      float(max_tau), rgb, opacity, depth])
    wp.launch(_add_background, dim=(n, 3), device=dev, record_tape=False, inputs=[opacity, background, rgb])
    return rgb, opacity, depth
