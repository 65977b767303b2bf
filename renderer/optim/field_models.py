"""The trainable state of the field representations other than the plain voxel grid, inside a `Problem`
(docs/volume.md "Training", scenes/README.md "fields"):

- `NeuralState` ("neural", "nerf_w"): a torch MLP whose weights are ONE flat float32 Warp leaf
  `fields.NAME.weights` (`FlatLayout` order), NeRF-W's per-image embeddings the leaves
  `fields.NAME.appearance` / `fields.NAME.transient` (n_train_images, dim). A step views the leaves as torch
  tensors without copying (`wp.to_torch`), runs the module with `torch.func.functional_call` on views of
  the flat tensor, composites with the Warp op (`torch_bridge.composite_torch`, exact Warp gradients),
  computes the loss in torch and back-propagates in torch; the gradients are then copied into the leaves'
  `.grad` and the loss values into the problem's loss-term arrays. The Warp tape of `Problem.step` records
  nothing for these leaves (its backward only zeroes the gradients of arrays its kernels wrote), so the
  problem's Adam, NaN guard, per-parameter learning rates, keyframes and replay treat them like any leaf.
- `DynamicState` ("dynamic"): a `TimeGrid` over the leaves `fields.NAME.density` (T, nx, ny, nz) and
  `fields.NAME.sh` (T * nx, ny, nz, 3K); a step's rays come from a few frames, one `at_time` blend per frame
  time, recorded on the problem's tape like the voxel grid's queries.

Every state also renders read-outs off every tape (`render_rays_readout`); readers on other threads render a
`published_copy()` (arrays, occupied cells and module of its own), never the live state.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import warp as wp

from ..params import Group, ParamPath
from ..render import RenderOutput
from ..scene import Field
from ..thread_tape import recording
from ..volume import OccupancyGrid, readout, sample_rays
from ..volume import render as volume_render
from ..volume.hash_field import sh_basis_torch
from ..volume.march import contract_far
from ..volume.neural_field import FlatLayout, module_from_spec, pixel_radius, sample_inputs
from ..volume.time_grid import TimeGrid
from ..volume.torch_bridge import composite_torch, scale_gradients_by_distance_torch
from . import losses

READOUT_CHUNK = 8192  # rays per torch forward when a neural field renders a view
EXPORT_RESOLUTION = 128  # at most this many lattice points per axis of a hash-grid field's baked export
SH_C0 = 0.28209479177387814  # the SH DC constant (voxel_grid.SH_C0)
TRANSIENT_TERM = "transient"  # NeRF-W's transient-density regularizer, a loss term of its own
APPEARANCE_FIT_STEPS = 60  # Adam steps fitting a held-out view's appearance embedding (NeRF-W protocol)
APPEARANCE_FIT_LR = 0.05


def tape_suspended():
    """Run torch code that uses Warp ops with their own tapes (`composite_torch`) inside `Problem.step`'s
    tape (entering a second tape while one is active is an error). The launches in the block are not
    recorded on the outer tape (they need not be: torch differentiates them); other threads are unaffected."""
    return recording(None)


@dataclass(frozen=True)
class _Leaves:
    """What a published copy of a state reads instead of the DeviceScene: its own leaf arrays."""

    arrays: dict
    device: object


def _alias(a: wp.array) -> wp.array:
    """A view of `a`'s memory without a gradient (so ops on it record nothing on any tape); keeps `a` alive."""
    view = wp.array(ptr=a.ptr, dtype=a.dtype, shape=a.shape, strides=a.strides, device=a.device,
                    requires_grad=False)
    view._drstudio_source = a
    return view


def _wp(t: torch.Tensor, device) -> wp.array:
    """A float32 Warp array of a contiguous float32 tensor (zero-copy; an empty one gets its own memory)."""
    t = t.detach().contiguous()
    if t.numel() == 0:
        return wp.zeros(tuple(t.shape), dtype=float, device=device)
    return wp.from_torch(t, dtype=wp.float32)


def _add_value(term: wp.array, value: float) -> None:
    """term[0] += value, on the host side of the tape (a read-out of a loss computed in torch)."""
    term.assign(np.array([float(term.numpy()[0]) + float(value)], np.float32))


def view_radius(intrinsics: np.ndarray) -> float:
    """Mip-NeRF's cone radius per unit view depth of a pixel of a camera: `pixel_radius(sqrt(fx fy))`."""
    fx, fy = float(intrinsics[0]), float(intrinsics[1])
    return pixel_radius(math.sqrt(abs(fx * fy)))


def per_sample_weights(density: torch.Tensor, samples) -> torch.Tensor:
    """(S,) compositing weights T_i alpha_i of packed samples (float64 per-ray exclusive cumsum; forward only,
    no early termination): the same formulas as `composite.composite`."""
    deltas = wp.to_torch(samples.deltas, requires_grad=False).to(torch.float64)
    tau = density.to(torch.float64) * deltas
    csum = torch.cumsum(tau, 0)
    offsets = wp.to_torch(samples.ray_offsets, requires_grad=False).long()
    ray = wp.to_torch(samples.ray_indices, requires_grad=False).long()
    start = offsets[ray]
    before_ray = torch.where(start > 0, csum[(start - 1).clamp_min(0)], torch.zeros_like(csum))
    excl = csum - tau - before_ray
    return (torch.exp(-excl) * (1.0 - torch.exp(-tau))).to(torch.float32)


def _segment_sum(values: torch.Tensor, ray: torch.Tensor, n: int) -> torch.Tensor:
    """(n, ...) sums of `values` (S, ...) per ray, `ray` (S,) sorted ray indices (packed samples); differentiable
    and deterministic (torch.segment_reduce)."""
    lengths = torch.bincount(ray, minlength=n)
    return torch.segment_reduce(values, "sum", lengths=lengths, axis=0)


class _ExpandToSamples(torch.autograd.Function):
    """per_ray (N, D) -> per sample (S, D) = per_ray[ray] for packed samples (`ray` sorted); the backward
    sums per ray with `torch.segment_reduce` (deterministic, unlike the scatter-add of indexing)."""

    @staticmethod
    def forward(ctx, per_ray, ray, lengths):
        ctx.save_for_backward(lengths)
        return per_ray[ray]

    @staticmethod
    def backward(ctx, grad):
        (lengths,) = ctx.saved_tensors
        return torch.segment_reduce(grad.contiguous(), "sum", lengths=lengths, axis=0), None, None


def per_sample_rows(table: torch.Tensor, view_ids: np.ndarray, ray: torch.Tensor, n_rays: int) -> torch.Tensor:
    """(S, D) rows of a per-image `table` (n_images, D) for packed samples: sample s gets row
    view_ids[ray[s]]. Differentiable w.r.t. `table` with a deterministic backward (a one-hot matmul from images
    to rays, a segment sum from samples to rays), so NeRF-W sessions replay bit for bit."""
    onehot = torch.zeros((n_rays, table.shape[0]), dtype=table.dtype)
    onehot[torch.arange(n_rays), torch.from_numpy(np.asarray(view_ids, np.int64))] = 1.0
    per_ray = onehot @ table
    return _ExpandToSamples.apply(per_ray, ray, torch.bincount(ray, minlength=n_rays))


class NeuralState:
    """A neural field ("neural") or NeRF-W field ("nerf_w") of a problem: module, flat layout, occupancy."""

    def __init__(self, field: Field, ds, name: str):
        self.field, self.ds, self.name = field, ds, name
        self.spec = field.model
        self.nerf_w = field.type == "nerf_w"
        self.module = module_from_spec(self.spec)
        self.module.requires_grad_(False)  # its own parameters are placeholders: the values are the leaf's
        self.layout = FlatLayout(self.module)
        if self.layout.size != field.weights.size:
            raise ValueError(f"{ParamPath(Group.FIELDS, name, 'weights')}: expected {self.layout.size} weights for "
                             f"the network, got "
                             f"{field.weights.size}")
        self.occupancy: OccupancyGrid | None = None
        self.fitted_appearance: dict[str, np.ndarray] = {}  # held-out camera -> embedding fitted on its left half

    # -- leaves ----------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self.field.samples_per_ray)

    @property
    def aabb(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.field.aabb)

    def leaf(self, key: str) -> wp.array | None:
        return self.ds.arrays.get(self.path(key))

    def path(self, key: str) -> ParamPath:
        """The dotted path of this field's leaf `key`."""
        return ParamPath(Group.FIELDS, self.name, key)

    def _tensor(self, key: str, grad: bool) -> torch.Tensor | None:
        """The leaf as a torch tensor sharing its memory; a fresh autograd leaf when `grad`."""
        arr = self.leaf(key)
        if arr is None:
            return None
        t = wp.to_torch(arr, requires_grad=False).detach()
        return t.requires_grad_(True) if grad else t

    def reset(self) -> None:
        occ = self.field.occupancy
        self.occupancy = (OccupancyGrid(occ.resolution, self.aabb, device=self.ds.device) if occ is not None
                          else None)
        self.fitted_appearance = {}

    def time_range(self) -> None:
        return None

    def published_copy(self) -> NeuralState:
        """A copy for readers on other threads (the viewer's preview): the leaves cloned off every tape, its own
        module (torch's functional call swaps a module's parameters while it runs) and occupied cells."""
        c = copy.copy(self)
        with recording(None):
            c.ds = _Leaves({self.path(k): wp.clone(self.leaf(k), requires_grad=False)
                            for k in ("weights", "appearance", "transient") if self.leaf(k) is not None},
                           self.ds.device)
            c.occupancy = readout.occupancy_snapshot(self.occupancy)
        c.module = copy.deepcopy(self.module)
        c.fitted_appearance = dict(self.fitted_appearance)
        return c

    # -- the field -------------------------------------------------------------------------------
    def _run(self, weights: torch.Tensor, features, dirs, appearance=None, transient=None):
        args = (features, dirs) if not self.nerf_w else (features, dirs, appearance, transient)
        return torch.func.functional_call(self.module, self.layout.views(weights), args)

    def query_density(self, points: wp.array) -> wp.array:
        """Static density at world points vec3 (S,) (float32 (S,)), no gradient: the occupancy grid's
        `density_fn` (PE of the points: IPE of a zero-size frustum)."""
        with torch.no_grad():
            w = self._tensor("weights", False).clone()
            p = wp.to_torch(points, requires_grad=False).reshape(-1, 3)
            out = torch.empty(p.shape[0], dtype=torch.float32)
            dirs = torch.zeros((min(p.shape[0], 1 << 16), 3))
            dirs[:, 2] = -1.0
            for a in range(0, p.shape[0], 1 << 16):
                chunk = p[a:a + (1 << 16)]
                out[a:a + chunk.shape[0]] = self._run(w, self.module.encode(chunk), dirs[:chunk.shape[0]])[0]
        return wp.array(out.numpy(), dtype=float, device=self.ds.device)

    def update_occupancy(self, step: int) -> None:
        occ = self.field.occupancy
        if self.occupancy is not None and step > 0 and step % occ.update_every == 0:
            self.occupancy.update(self.query_density, threshold=occ.threshold, step=step)

    def mean_appearance(self) -> torch.Tensor | None:
        a = self._tensor("appearance", False)
        return None if a is None or a.shape[0] == 0 else a.mean(0).clone()

    # -- training --------------------------------------------------------------------------------
    def record_loss(self, origins: wp.array, directions: wp.array, target: wp.array, view_ids: np.ndarray,
                    radii: np.ndarray, terms: dict, weights: dict, step: int, free: set[str]) -> None:
        """One step's loss of a ray batch (origins, directions vec3 (B,), target (B, 3), view_ids (B,) index of
        each ray's training view, radii (B,) cone radius per unit t), back-propagated in torch: gradients of
        the free leaves land in their `.grad`, the loss values in `terms` (l2 / l1 weighted by `weights`;
        NeRF-W: its data term under "l2" and `TRANSIENT_TERM`)."""
        keys = [k for k in ("weights", "appearance", "transient") if self.leaf(k) is not None]
        grad_keys = {k for k in keys if self.path(k) in free}
        with tape_suspended():
            t = {k: self._tensor(k, k in grad_keys) for k in keys}
            samples = sample_rays(origins, directions, self.aabb, self.n_samples, seed=step, jitter=True,
                                  occupancy=self.occupancy)
            o_t = wp.to_torch(origins, requires_grad=False).reshape(-1, 3)
            d_t = wp.to_torch(directions, requires_grad=False).reshape(-1, 3)
            target_t = wp.to_torch(target, requires_grad=False)
            features, dirs = sample_inputs(self.module, samples, o_t, d_t, torch.from_numpy(radii.astype(np.float32)))
            background = wp.to_torch(self.ds.background_color, requires_grad=False).detach()
            values: dict[str, torch.Tensor] = {}
            if not self.nerf_w:
                density, color = self._run(t["weights"], features, dirs)
                rgb, _, _ = composite_torch(density.contiguous(), color.contiguous(), samples, background)
                if "l2" in terms:
                    values["l2"] = weights["l2"] * ((rgb - target_t) ** 2).mean()
                if "l1" in terms:
                    values["l1"] = weights["l1"] * (rgb - target_t).abs().mean()
            else:
                values.update(self._nerf_w_loss(t, samples, features, dirs, view_ids, background, target_t,
                                                weights, terms))
            total = sum(values.values())
            if grad_keys and isinstance(total, torch.Tensor) and total.requires_grad:
                total.backward()
            for k in grad_keys:
                if t[k].grad is not None:
                    wp.to_torch(self.leaf(k).grad, requires_grad=False).copy_(t[k].grad)
        for name, v in values.items():
            if name not in terms:
                terms[name] = wp.zeros(1, dtype=float, device=self.ds.device, requires_grad=True)
            _add_value(terms[name], float(v.detach()))

    def _nerf_w_loss(self, t, samples, features, dirs, view_ids, background, target_t, weights, terms) -> dict:
        """NeRF-W's loss: the static + transient mixture composited (densities add; the color of a sample is
        the density-weighted mix), the ray's uncertainty beta = sum_i w_i (sigma^tau_i / sigma_i) beta_i +
        beta_min, data term mean over rays of |C - C_hat|^2 / (2 beta^2) + log(beta / beta_min) (NeRF-W's
        log beta^2 / 2 shifted to be >= 0), and lambda_u * mean transient density over the samples."""
        ray = wp.to_torch(samples.ray_indices, requires_grad=False).long()
        n_rays = len(view_ids)
        appearance = (per_sample_rows(t["appearance"], view_ids, ray, n_rays) if t.get("appearance") is not None
                      else None)
        transient = (per_sample_rows(t["transient"], view_ids, ray, n_rays) if t.get("transient") is not None
                     else None)
        out = self._run(t["weights"], features, dirs, appearance, transient)
        spec = self.spec
        if len(out) == 2:  # no transient head
            density, color = out
            rgb, _, _ = composite_torch(density.contiguous(), color.contiguous(), samples, background)
            return {"l2": weights.get("l2", 0.0) * ((rgb - target_t) ** 2).mean()} if "l2" in terms else {}
        s_density, s_color, t_density, t_color, beta = out
        density = s_density + t_density
        frac = t_density / density.clamp_min(1e-10)
        color = s_color * (1.0 - frac)[:, None] + t_color * frac[:, None]
        rgb, _, _ = composite_torch(density.contiguous(), color.contiguous(), samples, background)
        aux = torch.stack([frac * beta, frac, torch.zeros_like(frac)], dim=-1)
        acc, _, _ = composite_torch(density.contiguous(), aux.contiguous(), samples, torch.zeros(3))
        beta_ray = acc[:, 0] + spec.beta_min
        data = (((rgb - target_t) ** 2).sum(-1) / (2.0 * beta_ray ** 2) + torch.log(beta_ray / spec.beta_min)).mean()
        out = {}
        if "l2" in terms:
            out["l2"] = weights["l2"] * data
        if spec.lambda_u > 0:
            out[TRANSIENT_TERM] = spec.lambda_u * t_density.mean() if t_density.numel() else t_density.sum()
        return out

    # -- read-outs -------------------------------------------------------------------------------
    def _appearance_tensor(self, appearance) -> torch.Tensor | None:
        if not self.nerf_w or not self.spec.appearance_dim:
            return None
        if appearance is None:
            return self.mean_appearance()
        a = torch.as_tensor(np.asarray(appearance, np.float32)).reshape(-1)
        if a.shape[0] != self.spec.appearance_dim:
            raise ValueError(f"appearance: expected an embedding of {self.spec.appearance_dim} numbers, got "
                             f"{a.shape[0]}")
        return a

    def render_rays_readout(self, origins: wp.array, directions: wp.array, background: wp.array, *,
                            time: float | None = None, appearance=None, radius: float = 0.0,
                            transient_view: int | None = None, with_opacity: bool = False):
        """(N, 3) float32 NumPy colors of rays (midpoints, the occupancy grid of the moment), forward only and
        off every tape. NeRF-W: the static component with `appearance` (default: the mean training
        embedding); with `transient_view` (a training view's index) the static + transient mixture of that
        view, and with `with_opacity` also (N,) the transient share of each pixel's opacity."""
        with torch.no_grad():
            w = self._tensor("weights", False).clone()
            app = self._appearance_tensor(appearance)
            tr = None
            if transient_view is not None and self.leaf("transient") is not None:
                tr = self._tensor("transient", False)[transient_view].clone()
                if self.leaf("appearance") is not None:
                    app = self._tensor("appearance", False)[transient_view].clone()
            occupancy = readout.occupancy_snapshot(self.occupancy)
            n = origins.shape[0]
            out = np.empty((n, 3), np.float32)
            share = np.zeros(n, np.float32)
            for a in range(0, n, READOUT_CHUNK):
                b = min(a + READOUT_CHUNK, n)
                o, d = origins[a:b], directions[a:b]
                samples = sample_rays(o, d, self.aabb, self.n_samples, jitter=False,
                                      occupancy=occupancy if tr is None else None)
                o_t = wp.to_torch(o, requires_grad=False).reshape(-1, 3)
                d_t = wp.to_torch(d, requires_grad=False).reshape(-1, 3)
                feats, dirs = sample_inputs(self.module, samples, o_t, d_t, torch.full((b - a,), float(radius)))
                s = feats.shape[0]
                res = self._run(w, feats, dirs, None if app is None else app.expand(s, -1),
                                None if tr is None else tr.expand(s, -1))
                density, color = res[0], res[1]
                if len(res) == 5:
                    t_density, t_color = res[2], res[3]
                    total = density + t_density
                    frac = t_density / total.clamp_min(1e-10)
                    color = color * (1.0 - frac)[:, None] + t_color * frac[:, None]
                    density = total
                    if with_opacity:
                        aux = torch.stack([frac, torch.zeros_like(frac), torch.zeros_like(frac)], -1).contiguous()
                        acc, _, _ = readout.composite_forward(_wp(density, o.device), _wp(aux, o.device), samples,
                                                              wp.zeros(3, dtype=float, device=o.device))
                        share[a:b] = acc.numpy()[:, 0]
                rgb, _, _ = readout.composite_forward(_wp(density, o.device), _wp(color, o.device), samples,
                                                      background)
                out[a:b] = rgb.numpy()
        return (out, share) if with_opacity else out

    def fit_appearance(self, origins: wp.array, directions: wp.array, target: np.ndarray, background: wp.array,
                       radius: float, seed: int = 0) -> np.ndarray:
        """NeRF-W's held-out protocol: the appearance embedding that best explains the rays (e.g. the left half
        of a test view; target (N, 3)) with the network frozen. The static densities give fixed compositing
        weights; only the color head sees the embedding, so Adam (`APPEARANCE_FIT_STEPS` steps from the mean
        embedding) runs on the samples that carry weight (> 1e-4). Returns the embedding (appearance_dim,)."""
        start = self.mean_appearance()
        if start is None:
            return np.zeros(0, np.float32)
        with torch.no_grad():
            w = self._tensor("weights", False).clone()
            samples = sample_rays(origins, directions, self.aabb, self.n_samples, jitter=False)
            o_t = wp.to_torch(origins, requires_grad=False).reshape(-1, 3)
            d_t = wp.to_torch(directions, requires_grad=False).reshape(-1, 3)
            feats, dirs = sample_inputs(self.module, samples, o_t, d_t, torch.full((o_t.shape[0],), float(radius)))
            params = self.layout.views(w)
            h = torch.func.functional_call(self.module.trunk, {k[6:]: v for k, v in params.items()
                                                              if k.startswith("trunk.")}, (feats,))
            density = self.module.density_scale * torch.nn.functional.softplus(
                torch.nn.functional.linear(h, params["density_head.weight"], params["density_head.bias"])[:, 0]
                + self.module.density_bias)
            weight = per_sample_weights(density, samples)
            ray = wp.to_torch(samples.ray_indices, requires_grad=False).long()
            n = o_t.shape[0]
            bg = wp.to_torch(background, requires_grad=False).clone()
            # segment sums over the samples (packed ray after ray): deterministic, unlike index_add_ on the CPU
            rest = (1.0 - _segment_sum(weight, ray, n)).clamp_min(0.0)
            keep = weight > 1e-4
            parts = [h[keep]]
            if self.module.use_view_dirs:
                from ..volume.neural_field import positional_encoding
                parts.append(positional_encoding(dirs[keep], self.module.dir_freqs))
            fixed = torch.cat(parts, -1)
            wk, rk = weight[keep], ray[keep]
            head = {k[11:]: v for k, v in params.items() if k.startswith("color_head.")}
            target_t = torch.as_tensor(np.asarray(target, np.float32))
        emb = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([emb], lr=APPEARANCE_FIT_LR)
        for _ in range(APPEARANCE_FIT_STEPS):
            opt.zero_grad()
            c = torch.sigmoid(torch.func.functional_call(self.module.color_head, head,
                                                         (torch.cat([fixed, emb.expand(fixed.shape[0], -1)], -1),)))
            rgb = _segment_sum(wk[:, None] * c, rk, n) + rest[:, None] * bg
            loss = ((rgb - target_t) ** 2).mean()
            loss.backward()
            opt.step()
        return emb.detach().numpy().copy()

    def export(self) -> dict[str, np.ndarray]:
        out = {"weights": self.leaf("weights").numpy().copy(), "aabb": np.asarray(self.field.aabb, np.float32),
               "type": np.array(self.field.type), "spec": np.array(self.spec.model_dump_json()),
               "layout_names": np.array([n for n, _, _ in self.layout.entries]),
               "layout_offsets": np.array([o for _, o, _ in self.layout.entries], np.int64)}
        for key in ("appearance", "transient"):
            if self.leaf(key) is not None:
                out[key] = self.leaf(key).numpy().copy()
        return out


class HashState(NeuralState):
    """A hash-grid field ("hash_grid", Instant-NGP) of a problem: a `HashGridField` module whose values are the
    leaves `fields.NAME.table` (L*T, F) and `fields.NAME.weights` (the MLPs flat, `FlatLayout(mlps(.))`), an
    occupancy grid. A step runs like a neural field's: the module in torch on views of the leaves (the encoding's
    Warp kernels with their hand-written adjoint inside), `composite_torch`, the loss back-propagated in torch and
    the gradients copied into the leaves' `.grad`."""

    KEYS = ("table", "weights")

    def __init__(self, field: Field, ds, name: str):
        from ..volume.hash_field import mlps, module_from_spec

        self.field, self.ds, self.name = field, ds, name
        self.spec = field.model
        self.nerf_w = False
        self.module = module_from_spec(self.spec)
        self.module.requires_grad_(False)  # placeholders: the values are the leaves'
        self.layout = FlatLayout(mlps(self.module))
        for key, want in (("weights", (self.layout.size,)), ("table", self.module.encoding.table_shape)):
            got = tuple(getattr(field, key).shape)
            if got != tuple(want):
                raise ValueError(f"{ParamPath(Group.FIELDS, name, key)}: expected shape {tuple(want)} for the "
                                 f"field's settings, got {got}")
        self.occupancy: OccupancyGrid | None = None
        self.fitted_appearance = {}

    @property
    def _march(self) -> dict:
        """sample_rays' keywords of the field's space: through the scene contraction (with its far bound) when the
        field is contracted (`aabb` is then the encoding's box, twice the inner one)."""
        return {"contract": True, "far": contract_far(self.aabb)} if self.field.contract else {}

    def published_copy(self) -> HashState:
        c = copy.copy(self)
        with recording(None):
            c.ds = _Leaves({self.path(k): wp.clone(self.leaf(k), requires_grad=False) for k in self.KEYS},
                           self.ds.device)
            c.occupancy = readout.occupancy_snapshot(self.occupancy)
        # the encoding (configuration and read-only Warp arrays) is shared; the parameters torch swaps are not
        c.module = copy.deepcopy(self.module, {id(self.module.encoding): self.module.encoding})
        return c

    def _params(self, table: torch.Tensor, weights: torch.Tensor) -> dict:
        return {**self.layout.views(weights), "table": table}

    def _field(self, table, weights, positions, dirs):
        return torch.func.functional_call(self.module, self._params(table, weights), (positions, dirs))

    def query_density(self, points: wp.array) -> wp.array:
        """Density at world points vec3 (S,) (float32 (S,)), no gradient: the occupancy grid's `density_fn`."""
        with torch.no_grad():
            params = self._params(self._tensor("table", False).clone(), self._tensor("weights", False).clone())
            p = wp.to_torch(points, requires_grad=False).reshape(-1, 3)
            out = torch.empty(p.shape[0], dtype=torch.float32)
            for a in range(0, p.shape[0], 1 << 16):
                chunk = p[a:a + (1 << 16)].contiguous()
                out[a:a + chunk.shape[0]] = self._query(params, chunk)
        return wp.array(out.numpy(), dtype=float, device=self.ds.device)

    def _query(self, params: dict, points: torch.Tensor) -> torch.Tensor:
        m = self.module
        feats = m.encoding.encode_torch(points, params["table"])
        h = torch.func.functional_call(m.density_mlp, {k[len("density_mlp."):]: v for k, v in params.items()
                                                       if k.startswith("density_mlp.")}, (feats,))
        return m._density(h[:, 0])

    def mean_appearance(self) -> None:
        return None

    def record_loss(self, origins: wp.array, directions: wp.array, target: wp.array, view_ids: np.ndarray,
                    radii: np.ndarray, terms: dict, weights: dict, step: int, free: set[str]) -> None:
        """One step's loss of a ray batch (origins, directions vec3 (B,), target (B, 3); view_ids and radii
        unused), back-propagated in torch: gradients of the free leaves land in their `.grad`, the weighted l2 /
        l1 values in `terms`."""
        grad_keys = {k for k in self.KEYS if self.path(k) in free}
        with tape_suspended():
            t = {k: self._tensor(k, k in grad_keys) for k in self.KEYS}
            samples = sample_rays(origins, directions, self.aabb, self.n_samples, seed=step, jitter=True,
                                  occupancy=self.occupancy, **self._march)
            positions = wp.to_torch(samples.positions, requires_grad=False).reshape(-1, 3)
            dirs = wp.to_torch(samples.directions, requires_grad=False).reshape(-1, 3)
            target_t = wp.to_torch(target, requires_grad=False)
            background = wp.to_torch(self.ds.background_color, requires_grad=False).detach()
            values: dict[str, torch.Tensor] = {}
            if samples.n_samples:
                density, color = self._field(t["table"], t["weights"], positions, dirs)
                if self.field.gradient_scaling > 0.0:
                    density, color = scale_gradients_by_distance_torch(
                        density, color, samples, wp.to_torch(directions, requires_grad=False).reshape(-1, 3),
                        self.field.gradient_scaling)
            else:
                density, color = torch.zeros(0), torch.zeros((0, 3))
            rgb, _, _ = composite_torch(density.contiguous(), color.contiguous(), samples, background)
            if "l2" in terms:
                values["l2"] = weights["l2"] * ((rgb - target_t) ** 2).mean()
            if "l1" in terms:
                values["l1"] = weights["l1"] * (rgb - target_t).abs().mean()
            total = sum(values.values())
            if grad_keys and isinstance(total, torch.Tensor) and total.requires_grad:
                total.backward()
            for k in grad_keys:
                g = wp.to_torch(self.leaf(k).grad, requires_grad=False)
                if t[k].grad is not None:
                    g.copy_(t[k].grad)
                else:
                    g.zero_()
        for name, v in values.items():
            if name not in terms:
                terms[name] = wp.zeros(1, dtype=float, device=self.ds.device, requires_grad=True)
            _add_value(terms[name], float(v.detach()))

    def render_rays_readout(self, origins: wp.array, directions: wp.array, background: wp.array, **_) -> np.ndarray:
        """(N, 3) float32 NumPy colors of rays (midpoints, the occupancy grid of the moment), forward only and
        off every tape."""
        with torch.no_grad():
            table, w = self._tensor("table", False).clone(), self._tensor("weights", False).clone()
            occupancy = readout.occupancy_snapshot(self.occupancy)
            n = origins.shape[0]
            out = np.empty((n, 3), np.float32)
            for a in range(0, n, READOUT_CHUNK):
                b = min(a + READOUT_CHUNK, n)
                o, d = origins[a:b], directions[a:b]
                samples = sample_rays(o, d, self.aabb, self.n_samples, jitter=False, occupancy=occupancy,
                                      **self._march)
                if samples.n_samples == 0:
                    out[a:b] = background.numpy()
                    continue
                positions = wp.to_torch(samples.positions, requires_grad=False).reshape(-1, 3)
                dirs = wp.to_torch(samples.directions, requires_grad=False).reshape(-1, 3)
                density, color = self._field(table, w, positions, dirs)
                rgb, _, _ = readout.composite_forward(_wp(density, o.device), _wp(color, o.device), samples,
                                                      background)
                out[a:b] = rgb.numpy()
        return out

    def baked_lattice(self, resolution: int = EXPORT_RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
        """The field sampled on a resolution^3 lattice spanning its box (lattice points at the box's corners, as a
        voxel grid's): (density (n, n, n) float32 per unit length, color (n, n, n, 3) float32: the mean of the
        colors seen along +-x, +-y, +-z)."""
        lo, hi = np.asarray(self.aabb[:3]), np.asarray(self.aabb[3:])
        axes = [np.linspace(lo[a], hi[a], resolution, dtype=np.float32) for a in range(3)]
        points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        m = self.module
        dirs = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32)
        density = np.empty(len(points), np.float32)
        color = np.zeros((len(points), 3), np.float32)
        with torch.no_grad():
            params = self._params(self._tensor("table", False).clone(), self._tensor("weights", False).clone())
            dmlp = {k[len("density_mlp."):]: v for k, v in params.items() if k.startswith("density_mlp.")}
            cmlp = {k[len("color_mlp."):]: v for k, v in params.items() if k.startswith("color_mlp.")}
            for a in range(0, len(points), 1 << 16):
                chunk = torch.from_numpy(points[a:a + (1 << 16)])
                h = torch.func.functional_call(m.density_mlp, dmlp, (m.encoding.encode_torch(chunk, params["table"]),))
                density[a:a + len(chunk)] = m._density(h[:, 0]).numpy()
                for d in dirs:
                    parts = [h[:, 1:]]
                    if m.use_view_dirs:
                        parts.append(sh_basis_torch(d.expand(len(chunk), 3), m.sh_degree))
                    c = torch.sigmoid(torch.func.functional_call(m.color_mlp, cmlp, (torch.cat(parts, -1),)))
                    color[a:a + len(chunk)] += c.numpy() / len(dirs)
        n = (resolution,) * 3
        return density.reshape(n), color.reshape(*n, 3)

    def export(self) -> dict[str, np.ndarray]:
        """The leaves ("table", "weights" with the MLPs' layout), the spec (JSON), aabb, type; and the field baked
        on a lattice of min(`EXPORT_RESOLUTION`, finest_resolution + 1) points per axis as a voxel grid's arrays
        (what `drstudio export` meshes): "density" the density itself (activation "relu", the identity on it),
        "sh" degree 0 whose sigmoid-activated DC term is the mean color over six view directions."""
        density, color = self.baked_lattice(min(EXPORT_RESOLUTION, int(self.spec.finest_resolution) + 1))
        dc = np.log(np.clip(color, 1e-6, 1 - 1e-6) / (1 - np.clip(color, 1e-6, 1 - 1e-6))) / SH_C0
        return {"table": self.leaf("table").numpy().copy(), "weights": self.leaf("weights").numpy().copy(),
                "aabb": np.asarray(self.aabb, np.float32), "type": np.array(self.field.type),
                "spec": np.array(self.spec.model_dump_json()),
                "layout_names": np.array([n for n, _, _ in self.layout.entries]),
                "layout_offsets": np.array([o for _, o, _ in self.layout.entries], np.int64),
                "density": density, "sh": dc.astype(np.float32), "sh_degree": np.int32(0),
                "activation": np.array("relu"), "contract": np.bool_(self.field.contract)}


class DynamicState:
    """A dynamic field ("dynamic") of a problem: a `TimeGrid` whose arrays are the problem's leaves."""

    def __init__(self, field: Field, ds, name: str):
        self.field, self.ds, self.name = field, ds, name
        self.spec = field.model
        self.occupancy: OccupancyGrid | None = None

    @property
    def n_samples(self) -> int:
        return int(self.field.samples_per_ray)

    def path(self, key: str) -> ParamPath:
        """The dotted path of this field's leaf `key`."""
        return ParamPath(Group.FIELDS, self.name, key)

    def grid(self, arrays: dict | None = None) -> TimeGrid:
        """The TimeGrid over the current leaves (not copies: blends record gradients into their `.grad`)."""
        a = self.ds.arrays if arrays is None else arrays
        f = self.field
        g = TimeGrid(2, f.n_times, f.aabb, f.sh_degree, f.activation, device=self.ds.device, requires_grad=False)
        density, sh = a[self.path("density")], a[self.path("sh")]
        g.resolution = tuple(int(n) for n in density.shape[1:])
        g.density, g.sh = density, sh
        return g

    def readout_grid(self) -> TimeGrid:
        """The TimeGrid over gradient-free views of the leaves (its blends record nothing on any tape)."""
        g = self.grid()
        g.density, g.sh = _alias(g.density), _alias(g.sh)
        return g

    def time_range(self) -> tuple[float, float]:
        return tuple(float(x) for x in self.field.time_range)

    def published_copy(self) -> DynamicState:
        """A copy for readers on other threads (the viewer's preview): the leaves and occupied cells cloned off
        every tape."""
        c = copy.copy(self)
        with recording(None):
            c.ds = _Leaves({p: wp.clone(self.ds.arrays[p], requires_grad=False)
                            for p in (self.path("density"), self.path("sh"))}, self.ds.device)
            c.occupancy = readout.occupancy_snapshot(self.occupancy)
        return c

    def unit_time(self, time: float | None) -> float:
        """A scene time mapped to the grid's [0, 1] (clamped); None: the start of the range."""
        t0, t1 = self.time_range()
        if time is None:
            return 0.0
        if not math.isfinite(float(time)):
            raise ValueError(f"time: expected a finite number, got {time!r}")
        return min(max((float(time) - t0) / (t1 - t0), 0.0), 1.0)

    def reset(self) -> None:
        occ = self.field.occupancy
        self.occupancy = (OccupancyGrid(occ.resolution, self.field.aabb, device=self.ds.device)
                          if occ is not None else None)

    def update_occupancy(self, step: int) -> None:
        occ = self.field.occupancy
        if self.occupancy is not None and step > 0 and step % occ.update_every == 0:
            self.occupancy.update(self.readout_grid().query_density_max, threshold=occ.threshold, step=step)

    def record_loss(self, groups: list[tuple[float, wp.array, wp.array, wp.array]], n_total: int, terms: dict,
                    weights: dict, step: int, free: set[str]) -> None:
        """Under the caller's tape: per group (time, origins, directions, target) of a ray batch, the field at
        that time (`TimeGrid.at_time`, one blend per distinct time), rendered and compared (l2 / l1, each
        group weighted by its share of the batch, so the term is the batch mean); `loss.tv` adds the spatial
        TV of the free grids and `time_tv` times it as temporal smoothness."""
        g = self.grid()
        for time, origins, directions, target in groups:
            share = origins.shape[0] / n_total
            grid_t = g.at_time(self.unit_time(time))
            rgb, _, _, _ = volume_render(grid_t, origins, directions, self.n_samples, self.ds.background_color,
                                         seed=step, jitter=True, occupancy=self.occupancy)
            for loss in ("l1", "l2"):
                if loss in terms:
                    getattr(losses, loss)(rgb, target, terms[loss], weight=weights[loss] * share)
        if "tv" in terms:
            w_density = weights["tv"] if self.path("density") in free else 0.0
            w_sh = weights["tv"] if self.path("sh") in free else 0.0
            if w_density or w_sh:
                k = float(self.spec.time_tv)
                g.total_variation(terms["tv"], w_density, w_sh, time_weight=w_density * k, sh_time_weight=w_sh * k)

    def render_rays_readout(self, origins: wp.array, directions: wp.array, background: wp.array, *,
                            time: float | None = None, appearance=None, chunk: int = 1 << 16, **_) -> np.ndarray:
        """(N, 3) float32 NumPy colors of rays at scene time `time` (default: the start of the range), forward
        only and off every tape (midpoints, the occupancy grid of the moment)."""
        grid_t = self.readout_grid().at_time(self.unit_time(time))
        occupancy = readout.occupancy_snapshot(self.occupancy)
        n = origins.shape[0]
        out = np.empty((n, 3), np.float32)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            samples = sample_rays(origins[a:b], directions[a:b], grid_t.aabb, self.n_samples, jitter=False,
                                  occupancy=occupancy)
            density, color = readout.grid_query(grid_t, samples.positions, samples.directions)
            rgb, _, _ = readout.composite_forward(density, color, samples, background)
            out[a:b] = rgb.numpy()
        return out

    def export(self) -> dict[str, np.ndarray]:
        g = self.grid()
        f = self.field
        return {"density": g.density.numpy().copy(),
                "sh": g.sh.numpy().reshape(f.n_times, *g.resolution, -1).copy(),
                "times": np.linspace(*self.time_range(), f.n_times).astype(np.float32),
                "aabb": np.asarray(f.aabb, np.float32), "sh_degree": np.int32(f.sh_degree),
                "activation": np.array(f.activation)}


def render_output(rgb: np.ndarray, width: int, height: int, device) -> RenderOutput:
    """A `RenderOutput` of a read-out image (N, 3) (no depth, no alpha)."""
    return RenderOutput(int(width), int(height), wp.array(np.ascontiguousarray(rgb, np.float32), dtype=float,
                                                          device=device))
