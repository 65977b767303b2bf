"""A radiance field on a multiresolution hash grid (Instant-NGP's architecture): `hash_grid.HashGridEncoding`
(Warp, hand-written adjoint) -> a small density MLP -> a small color MLP, the MLPs in torch.

    position p (S, 3) -> hash-grid features (S, L*F)                                   [Warp]
      -> density MLP: Linear(L*F, width), ReLU, Linear(width, 1 + G)                   [torch]
         density = activation(raw_0 + density_bias) per unit world length, geometry features raw_1..G
      -> color MLP: [geometry features (G), SH basis of the unit view direction (K)]
         Linear(G + K, width), ReLU, (color_layers - 1) x (Linear(width, width), ReLU), Linear(width, 3)
         color = sigmoid(.)

Density activations: "trunc_exp" (Instant-NGP: exp(x), its gradient computed with exp(min(x, 15)) so a
large raw value cannot blow up the step) or "softplus" (density_scale * softplus(x), as `NeuralField`).
The view direction's SH basis (degree 0..2, K = (degree + 1)^2) is `voxel_grid.sh_basis`'s: the real SH of
Plenoxels / 3DGS in the same order and normalization.

Why the MLPs are torch and the encoding Warp: on this CPU (2 cores, Warp runs a CPU launch on one core)
torch's batched matrix products beat per-point Warp loops for the MLPs by a wide margin, while the hash
encoding, a gather/scatter with no dense algebra, is what torch does badly (benchmarks/bench_hash_grid.py).

`render_rays(field, origins, directions, n_samples, background, ...)` samples with `march.sample_rays`
(optionally skipping empty cells of an `OccupancyGrid`; update it from `field.density_fn()`), queries the
field in torch and composites with `torch_bridge.composite_torch` (exact Warp gradients).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
import warp as wp

from . import voxel_grid as _vg
from .hash_grid import HashGridEncoding
from .march import lattice_box, sample_rays
from .neural_field import _rays_to_warp
from .torch_bridge import composite_torch

DENSITY_ACTIVATIONS = ("trunc_exp", "softplus")
_TRUNC_EXP_MAX = 15.0


class _TruncExp(torch.autograd.Function):
    """exp(x) with the gradient exp(min(x, 15)) (Instant-NGP's trunc_exp)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=_TRUNC_EXP_MAX))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x), its gradient clamped as exp(min(x, 15))."""
    return _TruncExp.apply(x)


def sh_basis_torch(d: torch.Tensor, degree: int) -> torch.Tensor:
    """(S, (degree + 1)^2) real SH basis of unit directions d (S, 3), degree 0..2 (`voxel_grid.sh_basis`)."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    out = [torch.full_like(x, _vg.SH_C0)]
    if degree >= 1:
        out += [-_vg.SH_C1 * y, _vg.SH_C1 * z, -_vg.SH_C1 * x]
    if degree >= 2:
        out += [_vg.SH_C2_0 * x * y, _vg.SH_C2_1 * y * z, _vg.SH_C2_2 * (2.0 * z * z - x * x - y * y),
                _vg.SH_C2_3 * x * z, _vg.SH_C2_4 * (x * x - y * y)]
    return torch.stack(out, dim=-1)


class HashGridField(torch.nn.Module):
    """Hash-grid radiance field (module docstring).

    Args:
        aabb: the box, 6 numbers; the encoding normalizes positions by it (clamped into it).
        n_levels, log2_table_size, n_features, base_resolution: the `HashGridEncoding`'s L, log2 T, F, N_min.
        finest_resolution: N_max; the growth is chosen so level L-1 has ~N_max cells per axis
            (`HashGridEncoding.growth_for`), unless `growth` is given.
        width: hidden width of both MLPs; geo_features: G, the geometry features passed to the color MLP.
        color_layers: hidden layers of the color MLP (>= 1).
        sh_degree: degree of the view-direction SH encoding (0..2); use_view_dirs False drops it.
        density_activation: "trunc_exp" or "softplus"; density_bias: added to the raw density first;
        density_scale: multiplies the softplus density (ignored by trunc_exp).
        seed: the table's initialization (uniform in +-1e-4); the MLPs use torch's default initialization
            from the global RNG.
        kept_table_grad: add the table's gradient into `table.grad` in place (`encode_torch_into`, allocated
            once) instead of letting autograd allocate a fresh one every backward; zero it with
            `optimizer.zero_grad(set_to_none=False)`. Faster for large tables; the table gradient is then
            invisible to `torch.autograd.grad`.
        device: Warp device of the encoding (the torch tensors must live there too).

    Parameters: `table` (L*T, F) and the MLPs' weights (`parameters()`).
    """

    def __init__(self, aabb, n_levels: int = 16, log2_table_size: int = 19, n_features: int = 2,
                 base_resolution: int = 16, finest_resolution: int = 1024, growth: float | None = None,
                 width: int = 64, geo_features: int = 15, color_layers: int = 2, sh_degree: int = 2,
                 use_view_dirs: bool = True, density_activation: str = "trunc_exp", density_bias: float = 0.0,
                 density_scale: float = 1.0, seed: int = 0, kept_table_grad: bool = False, device=None):
        super().__init__()
        if growth is None:
            if not isinstance(finest_resolution, Integral) or finest_resolution < base_resolution:
                raise ValueError(f"finest_resolution: expected an int >= base_resolution ({base_resolution}), "
                                 f"got {finest_resolution!r}")
            growth = HashGridEncoding.growth_for(base_resolution, finest_resolution, n_levels)
        self.encoding = HashGridEncoding(aabb, n_levels, log2_table_size, n_features, base_resolution, growth, device)
        self.aabb = self.encoding.aabb
        for name, v, least in (("width", width, 1), ("geo_features", geo_features, 0),
                               ("color_layers", color_layers, 1)):
            if not isinstance(v, Integral) or isinstance(v, bool) or v < least:
                raise ValueError(f"{name}: expected an int >= {least}, got {v!r}")
        if sh_degree not in (0, 1, 2) or isinstance(sh_degree, bool):
            raise ValueError(f"sh_degree: expected 0, 1 or 2, got {sh_degree!r}")
        if density_activation not in DENSITY_ACTIVATIONS:
            raise ValueError(f"density_activation: expected one of {DENSITY_ACTIVATIONS}, got {density_activation!r}")
        if not isinstance(density_scale, Real) or not density_scale > 0:
            raise ValueError(f"density_scale: expected a positive number, got {density_scale!r}")
        self.geo_features, self.sh_degree, self.use_view_dirs = int(geo_features), int(sh_degree), bool(use_view_dirs)
        self.density_activation, self.density_bias = density_activation, float(density_bias)
        self.density_scale = float(density_scale)
        self.kept_table_grad = bool(kept_table_grad)
        self.table = torch.nn.Parameter(torch.from_numpy(self.encoding.init_table(seed)))
        self.density_mlp = torch.nn.Sequential(torch.nn.Linear(self.encoding.output_dim, width), torch.nn.ReLU(),
                                               torch.nn.Linear(width, 1 + self.geo_features))
        n_in = self.geo_features + ((self.sh_degree + 1) ** 2 if self.use_view_dirs else 0)
        layers = []
        for _ in range(color_layers):
            layers += [torch.nn.Linear(n_in, width), torch.nn.ReLU()]
            n_in = width
        self.color_mlp = torch.nn.Sequential(*layers, torch.nn.Linear(n_in, 3))

    def _encode(self, positions: torch.Tensor) -> torch.Tensor:
        if not self.kept_table_grad or not torch.is_grad_enabled():
            return self.encoding.encode_torch(positions, self.table)
        if self.table.grad is None:
            self.table.grad = torch.zeros_like(self.table)
        return self.encoding.encode_torch_into(positions, self.table, self.table.grad)

    def _density(self, raw: torch.Tensor) -> torch.Tensor:
        if self.density_activation == "trunc_exp":
            return trunc_exp(raw + self.density_bias)
        return self.density_scale * torch.nn.functional.softplus(raw + self.density_bias)

    def forward(self, positions: torch.Tensor, view_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(density (S,) per unit world length, color (S, 3) in (0, 1)) at world points (S, 3) seen along unit
        directions (S, 3), float32 tensors on the encoding's device."""
        h = self.density_mlp(self._encode(positions))
        density = self._density(h[:, 0])
        parts = [h[:, 1:]]
        if self.use_view_dirs:
            parts.append(sh_basis_torch(view_dirs, self.sh_degree))
        color = torch.sigmoid(self.color_mlp(torch.cat(parts, dim=-1)))
        return density, color

    def query_density(self, positions: torch.Tensor) -> torch.Tensor:
        """density (S,) at world points (S, 3) (no color head)."""
        return self._density(self.density_mlp(self._encode(positions))[:, 0])

    def density_fn(self, chunk: int = 1 << 16):
        """A `density_fn` for `OccupancyGrid.update`: vec3 (S,) wp.array -> float32 (S,) wp.array, without
        gradients, in chunks of `chunk` points."""

        def fn(points: wp.array) -> wp.array:
            p = wp.to_torch(points, requires_grad=False).reshape(-1, 3)
            out = torch.empty(p.shape[0], dtype=torch.float32, device=p.device)
            with torch.no_grad():
                for a in range(0, p.shape[0], chunk):
                    out[a:a + chunk] = self.query_density(p[a:a + chunk])
            return wp.from_torch(out)

        return fn

    def n_weights(self) -> dict[str, int]:
        """Parameter counts: {"table": L*T*F, "mlp": the MLPs' weights and biases}."""
        table = self.table.numel()
        return {"table": table, "mlp": sum(p.numel() for p in self.parameters()) - table}


def render_rays(field: HashGridField, origins, directions, n_samples: int, background: torch.Tensor, *,
                near: float = 0.0, far: float = 1.0e10, seed: int = 0, jitter: bool = True, occupancy=None,
                min_transmittance: float = 1.0e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render rays through a `HashGridField`: `march.sample_rays` over `field.aabb` (Warp, no gradient; with
    `occupancy` empty cells are skipped), the field in torch at the sample points, `composite_torch`.

    Args:
        origins, directions: (N, 3) float32 tensors or wp.vec3 (N,) arrays (constants).
        n_samples: strata per ray; near, far, seed, jitter: see `march.sample_rays`.
        background: float32 (3,) tensor. occupancy: an `OccupancyGrid` or None.
        min_transmittance: early termination of `composite` (samples past it get no gradient).

    Returns:
        (rgb (N, 3), opacity (N,), depth (N,)) tensors, differentiable w.r.t. the field's table and MLPs and
        the background.
    """
    if not isinstance(field, HashGridField):
        raise TypeError(f"field: expected a HashGridField, got {type(field).__name__}")
    wp.init()
    o_wp, o_t = _rays_to_warp("origins", origins)
    d_wp, d_t = _rays_to_warp("directions", directions)
    if o_t.shape != d_t.shape:
        raise ValueError(f"directions: expected shape {tuple(o_t.shape)} like origins, got {tuple(d_t.shape)}")
    samples = sample_rays(o_wp, d_wp, field.aabb, n_samples, near, far, seed=seed, jitter=jitter, occupancy=occupancy)
    positions = wp.to_torch(samples.positions, requires_grad=False).reshape(-1, 3)
    dirs = wp.to_torch(samples.directions, requires_grad=False).reshape(-1, 3)
    if samples.n_samples == 0:
        density = torch.zeros(0, dtype=torch.float32, device=positions.device)
        color = torch.zeros((0, 3), dtype=torch.float32, device=positions.device)
    else:
        density, color = field(positions, dirs)
    return composite_torch(density.contiguous(), color.contiguous(), samples, background, min_transmittance)


def module_from_spec(spec) -> HashGridField:
    """The (freshly initialized) `HashGridField` of a validated scene field spec of type "hash_grid"
    (renderer.scene_schema.HashGridFieldSpec), on the CPU; its MLPs from the global torch RNG. A contracted field's
    (`spec.contract`) encoding spans the contracted space, twice the inner box `spec.aabb` (`march.lattice_box`)."""
    aabb = [float(x) for x in lattice_box([x for corner in spec.aabb for x in corner], bool(spec.contract))]
    return HashGridField(aabb, n_levels=spec.n_levels, log2_table_size=spec.log2_table_size,
                         n_features=spec.n_features, base_resolution=spec.base_resolution,
                         finest_resolution=spec.finest_resolution, width=spec.width, geo_features=spec.geo_features,
                         color_layers=spec.color_layers, sh_degree=spec.sh_degree, use_view_dirs=spec.use_view_dirs,
                         density_activation=spec.density_activation, density_bias=spec.density_bias,
                         density_scale=spec.density_scale, seed=spec.seed, device="cpu")


def mlps(field: HashGridField) -> torch.nn.Module:
    """The field's two MLPs as one module whose parameter names are the field's ("density_mlp.0.weight", ...):
    `FlatLayout(mlps(field))` is the layout of the scene parameter `fields.NAME.weights`."""
    return torch.nn.ModuleDict({"density_mlp": field.density_mlp, "color_mlp": field.color_mlp})


def initial_values(spec) -> tuple[np.ndarray, np.ndarray]:
    """(table float32 (L*T, F), MLP weights float32 (P,) flat in `FlatLayout(mlps(.))` order) of
    `module_from_spec(spec)`: the table uniform in +-1e-4 from `spec.seed`, the MLPs by torch's default rules from
    `spec.seed` (a private generator state: the global torch RNG is left as it was)."""
    from .neural_field import FlatLayout

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.seed))
        field = module_from_spec(spec)
    heads = mlps(field)
    return field.table.detach().numpy().copy(), FlatLayout(heads).flatten(heads)


def psnr(image: np.ndarray, target: np.ndarray) -> float:
    """10 log10(1 / MSE) of two images in [0, 1] (linear RGB, the repo's convention)."""
    mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(target, np.float64)) ** 2))
    return 10.0 * np.log10(1.0 / max(mse, 1e-20))
