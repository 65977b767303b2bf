"""Volume rendering of radiance fields: separate, individually tested ops (docs/volume.md).

- `march.sample_rays`: ray/box clipping, stratified samples, occupancy-grid skipping (not differentiable).
- `composite.composite`: emission-absorption compositing (differentiable w.r.t. densities, colors, background).
- `occupancy.OccupancyGrid`: a coarse grid of occupied cells, updated from the field during training.
- `voxel_grid.VoxelGrid`: an explicit field, density + SH color on a lattice, trilinear (differentiable
  w.r.t. its values), with total variation, upsampling and float16 storage.

- `readout`: forward-only versions of camera rays, grid queries and compositing that record nothing on any
  tape (Warp's tape is global), for viewer threads rendering while training records its step.
- `neural_field` (torch NeRF MLP, PE/IPE, `NerfWField`, `FlatLayout`), `time_grid.TimeGrid` (dynamic fields).

`render` is the thin composition of the three for a field with a `query(positions, directions)` method.
Independent of the mesh renderer; rays come from `renderer.stages.camera.generate_rays`.
"""

from __future__ import annotations

import warp as wp

from .composite import composite, scale_gradients_by_distance
from .march import Samples, contract_far, sample_rays
from .occupancy import OccupancyGrid
from .time_grid import TimeGrid as TimeGrid
from .voxel_grid import VoxelGrid

__all__ = ["OccupancyGrid", "Samples", "VoxelGrid", "composite", "render", "sample_rays", "scale_gradients_by_distance"]


def render(field, origins: wp.array, directions: wp.array, n_samples: int, background: wp.array, *,
           near: float = 0.0, far: float = 1.0e10, seed: int = 0, jitter: bool = True, occupancy=None,
           min_transmittance: float = 1.0e-4, first_ray: int = 0, return_densities: bool = False,
           gradient_scaling: float = 0.0):
    """sample_rays over `field.aabb` (through the scene contraction when `field.contract`), `field.query`
    at the samples, `composite`.

    Returns (rgb (N, 3), opacity (N,), depth (N,), samples), and the samples' densities (S,) last with
    `return_densities` (for regularizers of the weights, `regularizers.distortion`): see the ops for the contracts.
    Differentiable w.r.t. what `field.query` is differentiable w.r.t. and the background; `gradient_scaling` > 0
    scales the samples' gradients by their distance from the camera (`composite.scale_gradients_by_distance`)."""
    contract = bool(getattr(field, "contract", False))
    if contract and far >= 1.0e10:
        far = contract_far(field.aabb)
    samples = sample_rays(origins, directions, field.aabb, n_samples, near, far, seed=seed, jitter=jitter,
                          occupancy=occupancy, contract=contract, first_ray=first_ray)
    density, color = field.query(samples.positions, samples.directions)
    if gradient_scaling > 0.0:
        scale_gradients_by_distance(density, color, samples, directions, gradient_scaling)
    rgb, opacity, depth = composite(density, color, samples, background, min_transmittance)
    if return_densities:
        return rgb, opacity, depth, samples, density
    return rgb, opacity, depth, samples
