"""A neural radiance field in torch (NeRF MLP) with NeRF's positional encoding or Mip-NeRF's integrated
positional encoding of conical frustums; rendered with the Warp volume ops (docs/volume.md "Neural field").

Encodings of a position x (world units, normalized to u = (x - center) / scale with `center`, `scale` the
box's center and largest half-extent, so the box maps into [-1, 1]^3), frequencies w_l = 2^l pi,
l = 0..L-1, features [u, sin(w_l u), cos(w_l u)] (per axis):
- "pe" (NeRF): the point sample's features.
- "ipe" (Mip-NeRF, Barron et al. 2021, eqs. 7-8 and 14-16): the expected features over the conical frustum
  of the sample's interval [t0, t1] of a cone with apex o, axis d and radius r per unit t. The frustum is
  approximated by a Gaussian with mean o + mu_t d and covariance sigma_t^2 d d^T + sigma_r^2 (I - d d^T / |d|^2),
      t_mu = (t0 + t1) / 2,  t_d = (t1 - t0) / 2,
      mu_t      = t_mu + 2 t_mu t_d^2 / (3 t_mu^2 + t_d^2),
      sigma_t^2 = t_d^2 / 3 - (4 / 15) t_d^4 (12 t_mu^2 - t_d^2) / (3 t_mu^2 + t_d^2)^2,
      sigma_r^2 = r^2 (t_mu^2 / 4 + (5 / 12) t_d^2 - (4 / 15) t_d^4 / (3 t_mu^2 + t_d^2)),
  and for x ~ N(mu, var): E[sin(w x)] = sin(w mu) exp(-w^2 var / 2), E[cos(w x)] = cos(w mu) exp(-w^2 var / 2)
  (diagonal covariance only, as Mip-NeRF), E[x] = mu. As r -> 0 and t1 -> t0 it is "pe" at o + mu_t d.

Pixel radius: for a pinhole camera of focal length f pixels and rays with camera-space z = -1
(`generate_rays`, so t is view depth), r = 2 / (sqrt(12) f) = 1 / (sqrt(3) f): the cone whose cross
section at depth t has the variance of the pixel's box footprint (side t / f) — Mip-NeRF's convention
(`pixel_radius(focal)`).

The view direction (unit) gets plain PE with `dir_freqs` frequencies. Density is
density_scale * softplus(raw + density_bias) per unit world length, color sigmoid(raw). Sampling is Warp's
`march.sample_rays` (no gradient), compositing Warp's `composite` through `torch_bridge.composite_torch`
(exact Warp gradients).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
import warp as wp

from .march import parse_aabb, sample_rays
from .torch_bridge import composite_torch

ENCODINGS = ("pe", "ipe")


def pixel_radius(focal: float) -> float:
    """Cone radius per unit view depth of a pixel of a pinhole camera with focal length `focal` (pixels):
    2 / (sqrt(12) focal), Mip-NeRF's choice (the std of the pixel's box footprint, times 2)."""
    if not isinstance(focal, Real) or not focal > 0:
        raise ValueError(f"focal: expected a positive number of pixels, got {focal!r}")
    return 2.0 / (math.sqrt(12.0) * float(focal))


def frequencies(n_freqs: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_freqs,) angular frequencies 2^l pi, l = 0..n_freqs-1."""
    return math.pi * 2.0 ** torch.arange(n_freqs, dtype=dtype, device=device)


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """NeRF PE of (..., D) points: (..., D (1 + 2 n_freqs)) = [x, sin(w_l x) (l-major), cos(w_l x)]."""
    return integrated_positional_encoding(x, None, n_freqs)


def integrated_positional_encoding(mean: torch.Tensor, var: torch.Tensor | None, n_freqs: int) -> torch.Tensor:
    """Expected PE of (..., D) Gaussians N(mean, diag(var)): [mean, sin(w mean) e^{-w^2 var/2}, cos(..) e^{..}]
    in the layout of `positional_encoding` (var None: the PE of `mean`)."""
    w = frequencies(n_freqs, mean.device, mean.dtype)
    scaled = (mean[..., None, :] * w[:, None]).flatten(-2)  # (..., L*D), l-major
    if var is None:
        return torch.cat([mean, torch.sin(scaled), torch.cos(scaled)], dim=-1)
    damp = torch.exp(-0.5 * (var[..., None, :] * (w * w)[:, None]).flatten(-2))
    return torch.cat([mean, torch.sin(scaled) * damp, torch.cos(scaled) * damp], dim=-1)


def conical_frustum_gaussian(origins: torch.Tensor, directions: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor,
                             radii: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (S, 3) and diagonal covariance (S, 3) of the Gaussian approximating the conical frustum
    {o + t (d + r-disk)} for t in [t0, t1] (module docstring; Mip-NeRF eqs. 7-8). origins, directions (S, 3)
    (directions not necessarily unit; t in units of d), t0, t1, radii (S,) (radius per unit t)."""
    t_mu = 0.5 * (t0 + t1)
    t_d = 0.5 * (t1 - t0)
    t_mu2, t_d2 = t_mu * t_mu, t_d * t_d
    denom = 3.0 * t_mu2 + t_d2
    mu_t = t_mu + 2.0 * t_mu * t_d2 / denom
    var_t = t_d2 / 3.0 - (4.0 / 15.0) * t_d2 * t_d2 * (12.0 * t_mu2 - t_d2) / (denom * denom)
    var_r = radii * radii * (t_mu2 / 4.0 + (5.0 / 12.0) * t_d2 - (4.0 / 15.0) * t_d2 * t_d2 / denom)
    d2 = directions * directions
    norm2 = d2.sum(-1, keepdim=True).clamp_min(1e-20)
    mean = origins + mu_t[:, None] * directions
    var = var_t[:, None] * d2 + var_r[:, None] * (1.0 - d2 / norm2)
    return mean, var


class NeuralField(torch.nn.Module):
    """NeRF-style MLP over a box: encoded position -> `depth` x `width` ReLU trunk -> density (softplus)
    and a feature; feature + encoded view direction -> one hidden layer (width // 2) -> color (sigmoid).

    Args:
        aabb: the box, 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax); positions are normalized to it.
        encoding: "pe" (point samples) or "ipe" (Mip-NeRF integrated encoding of conical frustums).
        pos_freqs, dir_freqs: number of frequencies L of the position and view-direction encodings
            (dir_freqs = 0: the color still sees the unit direction itself; use_view_dirs=False: not at all).
        depth, width: trunk layers and their width.
        density_bias: added to the raw density before softplus (negative: starts nearly empty).
        density_scale: density = density_scale * softplus(raw + density_bias): the density unit, per world
            length. Raw outputs start near 0, so pick it so that softplus(0) * density_scale * (the length a
            ray travels in the box) is a moderate optical depth (1 for a 1-unit box; 30 for a 0.04 slab).
        use_view_dirs: whether color depends on the view direction.
    """

    def __init__(self, aabb, encoding: str = "pe", pos_freqs: int = 8, dir_freqs: int = 4, depth: int = 4,
                 width: int = 64, density_bias: float = 0.0, density_scale: float = 1.0, use_view_dirs: bool = True):
        super().__init__()
        lo, hi = parse_aabb("aabb", aabb)
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}")
        for name, v, least in (("pos_freqs", pos_freqs, 0), ("dir_freqs", dir_freqs, 0), ("depth", depth, 1),
                               ("width", width, 2)):
            if not isinstance(v, Integral) or isinstance(v, bool) or v < least:
                raise ValueError(f"{name}: expected an int >= {least}, got {v!r}")
        self.aabb = tuple(float(v) for v in (*lo, *hi))
        self.encoding, self.pos_freqs, self.dir_freqs = encoding, int(pos_freqs), int(dir_freqs)
        if not isinstance(density_scale, Real) or not density_scale > 0:
            raise ValueError(f"density_scale: expected a positive number, got {density_scale!r}")
        self.use_view_dirs, self.density_bias = bool(use_view_dirs), float(density_bias)
        self.density_scale = float(density_scale)
        lo_t, hi_t = torch.tensor(self.aabb[:3]), torch.tensor(self.aabb[3:])
        self.register_buffer("center", 0.5 * (lo_t + hi_t))
        self.register_buffer("scale", (0.5 * (hi_t - lo_t)).max().reshape(1))
        layers, n_in = [], 3 * (1 + 2 * self.pos_freqs)
        for _ in range(depth):
            layers += [torch.nn.Linear(n_in, width), torch.nn.ReLU()]
            n_in = width
        self.trunk = torch.nn.Sequential(*layers)
        self.density_head = torch.nn.Linear(width, 1)
        n_dir = 3 * (1 + 2 * self.dir_freqs) if self.use_view_dirs else 0
        self.color_head = torch.nn.Sequential(torch.nn.Linear(width + n_dir, width // 2), torch.nn.ReLU(),
                                              torch.nn.Linear(width // 2, 3))

    def encode(self, mean: torch.Tensor, var: torch.Tensor | None = None) -> torch.Tensor:
        """Position features of world points (S, 3) (var None) or world Gaussians (mean, diagonal var (S, 3))."""
        u = (mean - self.center) / self.scale
        v = None if var is None else var / (self.scale * self.scale)
        return integrated_positional_encoding(u, v, self.pos_freqs)

    def forward(self, features: torch.Tensor, view_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(density (S,), color (S, 3)) from position features (S, F) (`encode`) and unit view dirs (S, 3)."""
        h = self.trunk(features)
        density = self.density_scale * torch.nn.functional.softplus(self.density_head(h)[:, 0] + self.density_bias)
        parts = [h]
        if self.use_view_dirs:
            parts.append(positional_encoding(view_dirs, self.dir_freqs))
        color = torch.sigmoid(self.color_head(torch.cat(parts, dim=-1)))
        return density, color

    def query(self, positions: torch.Tensor, view_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(density (S,), color (S, 3)) at world points (S, 3) with PE (whatever `encoding` is)."""
        return self(self.encode(positions), view_dirs)

    def query_frustums(self, origins: torch.Tensor, directions: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor,
                       radii: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(density (S,), color (S, 3)) of conical frustums (see `conical_frustum_gaussian`) with IPE."""
        mean, var = conical_frustum_gaussian(origins, directions, t0, t1, radii)
        unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-20)
        return self(self.encode(mean, var), unit)

    def render_rays(self, origins, directions, pixel_radius, n_samples: int, background, **kwargs):
        """`render_rays(self, ...)`: see the module function."""
        return render_rays(self, origins, directions, pixel_radius, self.aabb, n_samples, background, **kwargs)


def _rays_to_warp(name: str, x) -> tuple[wp.array, torch.Tensor]:
    """(wp vec3 (N,), float32 tensor (N, 3)) of rays given as a torch (N, 3) tensor or a wp vec3 array."""
    if isinstance(x, wp.array):
        if x.dtype != wp.vec3 or x.ndim != 1:
            raise TypeError(f"{name}: expected a wp.vec3 array (N,), got dtype {wp.types.type_repr(x.dtype)} "
                            f"ndim {x.ndim}")
        return x, wp.to_torch(x).reshape(-1, 3)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor (N, 3) or a wp.vec3 array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != 3 or x.dtype != torch.float32:
        raise ValueError(f"{name}: expected a float32 tensor of shape (N, 3), got {x.dtype} {tuple(x.shape)}")
    t = x.detach().contiguous()
    return wp.from_torch(t, dtype=wp.vec3), t


def render_rays(field: NeuralField, origins, directions, pixel_radius, aabb, n_samples: int, background, *,
                near: float = 0.0, far: float = 1.0e10, seed: int = 0, jitter: bool = True,
                min_transmittance: float = 1.0e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render rays through a `NeuralField`: `march.sample_rays` in Warp (no gradient), the MLP in torch
    (point samples for "pe", the samples' conical frustums [t_start, t_end] for "ipe"), `composite_torch`.

    Args:
        field: the NeuralField.
        origins, directions: (N, 3) float32 tensors or wp.vec3 (N,) arrays; o + t d, d not necessarily unit
            (camera rays from `generate_rays`: t is view depth). Constants (no gradient to rays).
        pixel_radius: cone radius per unit t, a float or an (N,) float32 tensor (`pixel_radius(focal)`);
            used by "ipe" only.
        aabb: the box to sample in (usually `field.aabb`).
        n_samples: strata per ray (see `march.sample_rays`); near, far, seed, jitter likewise.
        background: float32 (3,) tensor (may require grad).
        min_transmittance: early termination of `composite`.

    Returns:
        (rgb (N, 3), opacity (N,), depth (N,)) tensors, differentiable w.r.t. the field's parameters and the
        background.
    """
    if not isinstance(field, NeuralField):
        raise TypeError(f"field: expected a NeuralField, got {type(field).__name__}")
    wp.init()  # wp.from_torch needs the runtime (a no-op once initialized)
    o_wp, o_t = _rays_to_warp("origins", origins)
    d_wp, d_t = _rays_to_warp("directions", directions)
    if o_t.shape != d_t.shape:
        raise ValueError(f"directions: expected shape {tuple(o_t.shape)} like origins, got {tuple(d_t.shape)}")
    samples = sample_rays(o_wp, d_wp, aabb, n_samples, near, far, seed=seed, jitter=jitter)
    if field.encoding == "pe":
        positions = wp.to_torch(samples.positions).reshape(-1, 3)
        density, color = field.query(positions, wp.to_torch(samples.directions).reshape(-1, 3))
    else:
        n = o_t.shape[0]
        if isinstance(pixel_radius, torch.Tensor):
            radius = pixel_radius.detach().to(torch.float32).reshape(-1)
            if radius.shape[0] != n:
                raise ValueError(f"pixel_radius: expected a float or a tensor of shape ({n},), "
                                 f"got {tuple(pixel_radius.shape)}")
        elif isinstance(pixel_radius, Real) and pixel_radius >= 0:
            radius = torch.full((n,), float(pixel_radius), device=o_t.device)
        else:
            raise ValueError(f"pixel_radius: expected a number >= 0 or an ({n},) tensor, got {pixel_radius!r}")
        ray = wp.to_torch(samples.ray_indices).long()
        density, color = field.query_frustums(o_t[ray], d_t[ray], wp.to_torch(samples.t_starts),
                                              wp.to_torch(samples.t_ends), radius[ray])
    return composite_torch(density.contiguous(), color.contiguous(), samples, background, min_transmittance)


def sample_inputs(field: NeuralField, samples, origins: torch.Tensor, directions: torch.Tensor,
                  radii: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(position features (S, F), unit view directions (S, 3)) of packed `samples` (`march.sample_rays`) for
    `field`'s encoding: PE of `samples.positions` ("pe") or IPE of the conical frustums [t_start, t_end] of
    the samples' rays ("ipe", `radii` (N,) cone radius per unit t per ray). origins, directions: (N, 3)
    float32 tensors of the rays (constants)."""
    if field.encoding == "pe" or samples.n_samples == 0:
        positions = wp.to_torch(samples.positions, requires_grad=False).reshape(-1, 3)
        return field.encode(positions), wp.to_torch(samples.directions, requires_grad=False).reshape(-1, 3)
    ray = wp.to_torch(samples.ray_indices, requires_grad=False).long()
    d = directions[ray]
    mean, var = conical_frustum_gaussian(origins[ray], d, wp.to_torch(samples.t_starts, requires_grad=False),
                                         wp.to_torch(samples.t_ends, requires_grad=False), radii[ray])
    return field.encode(mean, var), d / d.norm(dim=-1, keepdim=True).clamp_min(1e-20)


class NerfWField(NeuralField):
    """NeRF in the Wild (Martin-Brualla et al. 2021) on top of `NeuralField`: the static color also sees a
    per-image appearance embedding, and a transient head (trunk features + a per-image transient embedding
    -> one hidden layer of width // 2) gives a transient density, color and uncertainty per sample.

    Args (besides `NeuralField`'s):
        appearance_dim: length of the appearance embedding fed to the color head (0: none).
        transient_dim: length of the transient embedding (0: no transient head).
        transient_bias: added to the raw transient density before softplus (negative: starts nearly empty).

    `forward(features (S, F), view_dirs (S, 3), appearance (S, A) | None, transient (S, T) | None)`:
    (density (S,), color (S, 3)) of the static field (appearance None: the zero embedding), plus, when
    `transient` is given, (transient density (S,) = density_scale * softplus(raw + transient_bias),
    transient color (S, 3) sigmoid, uncertainty beta (S,) softplus >= 0): a 5-tuple.
    """

    def __init__(self, aabb, appearance_dim: int = 8, transient_dim: int = 8, transient_bias: float = -4.0,
                 **kwargs):
        super().__init__(aabb, **kwargs)
        for name, v in (("appearance_dim", appearance_dim), ("transient_dim", transient_dim)):
            if not isinstance(v, Integral) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
        self.appearance_dim, self.transient_dim = int(appearance_dim), int(transient_dim)
        self.transient_bias = float(transient_bias)
        width = self.density_head.in_features
        n_dir = 3 * (1 + 2 * self.dir_freqs) if self.use_view_dirs else 0
        self.color_head = torch.nn.Sequential(torch.nn.Linear(width + n_dir + self.appearance_dim, width // 2),
                                              torch.nn.ReLU(), torch.nn.Linear(width // 2, 3))
        self.transient_head = (torch.nn.Sequential(torch.nn.Linear(width + self.transient_dim, width // 2),
                                                   torch.nn.ReLU(), torch.nn.Linear(width // 2, 5))
                               if self.transient_dim > 0 else None)

    def forward(self, features: torch.Tensor, view_dirs: torch.Tensor, appearance: torch.Tensor | None = None,
                transient: torch.Tensor | None = None):
        h = self.trunk(features)
        density = self.density_scale * torch.nn.functional.softplus(self.density_head(h)[:, 0] + self.density_bias)
        parts = [h]
        if self.use_view_dirs:
            parts.append(positional_encoding(view_dirs, self.dir_freqs))
        if self.appearance_dim:
            parts.append(appearance if appearance is not None
                         else h.new_zeros((h.shape[0], self.appearance_dim)))
        color = torch.sigmoid(self.color_head(torch.cat(parts, dim=-1)))
        if transient is None or self.transient_head is None:
            return density, color
        raw = self.transient_head(torch.cat([h, transient], dim=-1))
        t_density = self.density_scale * torch.nn.functional.softplus(raw[:, 0] + self.transient_bias)
        return density, color, t_density, torch.sigmoid(raw[:, 1:4]), torch.nn.functional.softplus(raw[:, 4])


class FlatLayout:
    """Where each parameter of a module lives in one flat float32 vector (the scene parameter
    `fields.NAME.weights`): the module's `named_parameters()` order, each row-major.

    `size`: total length; `flatten(module) -> np.ndarray (size,)`; `views(flat (size,) tensor) -> {name:
    tensor of the parameter's shape}` (views of `flat`, no copies: gradients flow back into `flat`), for
    `torch.func.functional_call(module, layout.views(flat), args)`."""

    def __init__(self, module: torch.nn.Module):
        self.entries: list[tuple[str, int, tuple[int, ...]]] = []
        offset = 0
        for name, p in module.named_parameters():
            self.entries.append((name, offset, tuple(p.shape)))
            offset += p.numel()
        self.size = offset

    def flatten(self, module: torch.nn.Module) -> np.ndarray:
        params = dict(module.named_parameters())
        return torch.cat([params[name].detach().reshape(-1).to(torch.float32) for name, _, _ in self.entries]
                         ).numpy().copy()

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if flat.ndim != 1 or flat.shape[0] != self.size:
            raise ValueError(f"flat: expected a vector of {self.size} weights, got shape {tuple(flat.shape)}")
        return {name: flat[o:o + math.prod(shape)].view(shape) for name, o, shape in self.entries}


def module_from_spec(spec) -> NeuralField:
    """The (freshly initialized) module of a validated scene field spec of type "neural" or "nerf_w"
    (renderer.scene_schema): its box, encoding and MLP shape."""
    kwargs = dict(encoding=spec.encoding, pos_freqs=spec.pos_freqs, dir_freqs=spec.dir_freqs, depth=spec.depth,
                  width=spec.width, density_bias=spec.density_bias, density_scale=spec.density_scale,
                  use_view_dirs=spec.use_view_dirs)
    aabb = [x for corner in spec.aabb for x in corner]
    if spec.type == "nerf_w":
        return NerfWField(aabb, appearance_dim=spec.appearance_dim, transient_dim=spec.transient_dim,
                          transient_bias=spec.transient_bias, **kwargs)
    return NeuralField(aabb, **kwargs)


def initial_weights(spec) -> np.ndarray:
    """float32 (P,): the flat weights (`FlatLayout`) of `module_from_spec(spec)` initialized by torch's default
    rules from `spec.seed` (a private generator state: the global torch RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.seed))
        module = module_from_spec(spec)
    return FlatLayout(module).flatten(module)
