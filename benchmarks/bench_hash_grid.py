"""Field-query throughput on the CPU: the hash-grid field (renderer/volume/hash_field.py) against the torch MLP
neural field (renderer/volume/neural_field.py, its default PE encoding), and a Warp per-point MLP against
torch for the heads.

    .venv/bin/python benchmarks/bench_hash_grid.py                 # batches 4096 and 16384, median of 7
    .venv/bin/python benchmarks/bench_hash_grid.py --batches 4096 --repeat 3 --torch-threads 1

Points uniform in the box [-1, 1]^3 with random unit view directions. "fwd" is one query (density and
color of every point); "fwd+bwd" adds the backward pass of the loss sum(density) + sum(color) w.r.t. every
parameter (torch's `.grad` set to None before each step, so the dense table gradient is allocated and
zeroed every step, as a training step would). Median of `--repeat` runs after a warm-up; points/s = batch /
median wall time; the table also gives the median CPU time of the process (all its threads), the steadier
number on a shared machine. Rows:
- `hash field ngp`: L 16, T 2^19, F 2, N 16 -> 1024, density MLP 32 -> 64 -> 16, color MLP (15 + 9 SH) ->
  64 -> 64 -> 3 (Instant-NGP's NeRF shape), trunc_exp.
- `hash field small`: the same with L 8, T 2^16, N 16 -> 256 (a table 64x smaller).
- `... kept grad`: the same field with `kept_table_grad=True` (the table gradient added into a kept `.grad`).
- `hash encoding ngp` / `small`: the Warp encoding alone (forward; backward into a freshly allocated zeroed
  table gradient, as the torch wrapper returns one); `kept grad`: into one buffer kept between steps and
  zeroed (a Warp leaf's `.grad`): a fresh 64 MiB buffer costs its page faults every step.
- `neural field (pe)`: `NeuralField` defaults (PE 8 position / 4 direction frequencies, 4 x 64 trunk).
- `mlp torch` / `mlp warp`: the density MLP alone (32 -> 64 -> 16, ReLU) in torch and as a Warp kernel
  with per-point loops and a hand-written backward (weight gradients by atomic adds), the option
  of writing the heads in Warp; the Warp MLP is checked against torch first.
"""

from __future__ import annotations

import argparse
import os
import time

import drstudio.renderer  # noqa: F401  (quiet Warp)
import numpy as np
import torch
import warp as wp
from drstudio.renderer.volume.hash_field import HashGridField
from drstudio.renderer.volume.hash_grid import HashGridEncoding
from drstudio.renderer.volume.neural_field import NeuralField

BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


# ---- a per-point ("fully fused" style) 2-layer MLP in Warp: in -> hidden (ReLU) -> out ----

@wp.kernel
def _mlp_forward(x: wp.array2d(dtype=float), w1: wp.array2d(dtype=float), b1: wp.array(dtype=float),
                 w2: wp.array2d(dtype=float), b2: wp.array(dtype=float), hidden: wp.array2d(dtype=float),
                 out: wp.array2d(dtype=float)):
    # hidden = relu(W1 x + b1), out = W2 hidden + b2, one thread per point
    n = wp.tid()
    for j in range(w1.shape[0]):
        a = b1[j]
        for i in range(w1.shape[1]):
            a += w1[j, i] * x[n, i]
        hidden[n, j] = wp.max(a, 0.0)
    for o in range(w2.shape[0]):
        a = b2[o]
        for j in range(w2.shape[1]):
            a += w2[o, j] * hidden[n, j]
        out[n, o] = a


@wp.kernel
def _mlp_backward(x: wp.array2d(dtype=float), w1: wp.array2d(dtype=float), w2: wp.array2d(dtype=float),
                  hidden: wp.array2d(dtype=float), adj_out: wp.array2d(dtype=float), adj_x: wp.array2d(dtype=float),
                  gw1: wp.array2d(dtype=float), gb1: wp.array(dtype=float), gw2: wp.array2d(dtype=float),
                  gb2: wp.array(dtype=float)):
    # adj_hidden_j = [hidden_j > 0] sum_o W2[o, j] adj_out_o; weight gradients are outer products added
    # atomically (shared by all points); adj_x = W1^T adj_hidden
    n = wp.tid()
    for o in range(w2.shape[0]):
        g = adj_out[n, o]
        wp.atomic_add(gb2, o, g)
        for j in range(w2.shape[1]):
            wp.atomic_add(gw2, o, j, g * hidden[n, j])
    for j in range(w1.shape[0]):
        if hidden[n, j] > 0.0:
            g = float(0.0)
            for o in range(w2.shape[0]):
                g += w2[o, j] * adj_out[n, o]
            wp.atomic_add(gb1, j, g)
            for i in range(w1.shape[1]):
                wp.atomic_add(gw1, j, i, g * x[n, i])
                adj_x[n, i] = adj_x[n, i] + w1[j, i] * g


def warp_mlp_check(n_in: int, n_hidden: int, n_out: int) -> None:
    """The Warp MLP against torch on 50 points (values and all gradients)."""
    rng = np.random.default_rng(0)
    lin1, lin2 = torch.nn.Linear(n_in, n_hidden), torch.nn.Linear(n_hidden, n_out)
    x = torch.tensor(rng.normal(size=(50, n_in)).astype(np.float32), requires_grad=True)
    g = torch.tensor(rng.normal(size=(50, n_out)).astype(np.float32))
    ref = lin2(torch.relu(lin1(x)))
    (ref * g).sum().backward()
    w = [wp.from_torch(t.detach()) for t in (lin1.weight, lin1.bias, lin2.weight, lin2.bias)]
    xw = wp.from_torch(x.detach())
    hidden, out = wp.zeros((50, n_hidden), dtype=float), wp.zeros((50, n_out), dtype=float)
    wp.launch(_mlp_forward, dim=50, inputs=[xw, *w, hidden, out])
    grads = [wp.zeros_like(a) for a in (xw, *w)]
    wp.launch(_mlp_backward, dim=50, inputs=[xw, w[0], w[2], hidden, wp.from_torch(g), grads[0], grads[1], grads[2],
                                            grads[3], grads[4]])
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, (x.grad, lin1.weight.grad, lin1.bias.grad, lin2.weight.grad, lin2.bias.grad),
                         strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


# ---- timing ----

def timed(fn, repeat: int) -> tuple[float, float]:
    """(median wall time, median process CPU time) in seconds. On a shared machine the CPU time (all threads
    of this process) is the steadier measure of the work; for one-thread work it is the time on an idle core."""
    fn()
    ts, cs = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wp.synchronize()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    return float(np.median(ts)), float(np.median(cs))


def field_step(module, positions, dirs, backward: bool):
    def run():
        for p in module.parameters():
            if getattr(module, "kept_table_grad", False) and p is module.table and p.grad is not None:
                p.grad.zero_()  # the kept buffer, zeroed in place
            else:
                p.grad = None
        if backward:
            density, color = module.query(positions, dirs) if isinstance(module, NeuralField) else module(positions,
                                                                                                          dirs)
            (density.sum() + color.sum()).backward()
        else:
            with torch.no_grad():
                if isinstance(module, NeuralField):
                    module.query(positions, dirs)
                else:
                    module(positions, dirs)
    return run


def encoding_step(enc: HashGridEncoding, points: wp.array, table: wp.array, backward: bool, persistent: bool = False):
    out = wp.zeros((points.shape[0], enc.output_dim), dtype=float)
    adj = wp.ones((points.shape[0], enc.output_dim), dtype=float)
    kept = wp.zeros(enc.table_shape, dtype=float)

    def run():
        enc.encode(points, table, out=out)
        if backward:
            if persistent:  # a gradient buffer kept between steps (a Warp leaf's .grad), zeroed
                kept.zero_()
                grad = kept
            else:  # a fresh buffer, as torch's autograd returns one
                grad = wp.zeros(enc.table_shape, dtype=float)
            enc.encode_backward(points, table, adj, grad)
    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    wp.init()  # wp.from_torch needs the runtime
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    warp_mlp_check(32, 64, 16)
    configs = {
        "ngp": dict(n_levels=16, log2_table_size=19, n_features=2, base_resolution=16, finest_resolution=1024),
        "small": dict(n_levels=8, log2_table_size=16, n_features=2, base_resolution=16, finest_resolution=256),
    }
    fields = {name: HashGridField(BOX, **cfg) for name, cfg in configs.items()}
    fields.update({f"{name} kept grad": HashGridField(BOX, **cfg, kept_table_grad=True)
                   for name, cfg in configs.items()})
    neural = NeuralField(BOX)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}, warp {wp.__version__} (CPU launches on one "
          f"core), cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    for name, f in fields.items():
        e = f.encoding
        print(f"hash field {name}: levels {e.resolutions} (dense {sum(e.dense)}), table {e.table_shape} "
              f"= {e.nbytes / 2**20:.1f} MiB, weights {f.n_weights()}")
    print(f"neural field: {sum(p.numel() for p in neural.parameters())} weights")
    rows = []
    rng = np.random.default_rng(1)
    for batch in args.batches:
        p = torch.tensor(rng.uniform(-1, 1, (batch, 3)).astype(np.float32))
        d = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(batch, 3)).astype(np.float32)), dim=1)
        cases = {}
        for name, f in fields.items():
            cases[f"hash field {name}"] = (field_step(f, p, d, False), field_step(f, p, d, True))
        for name, f in fields.items():
            if f.kept_table_grad:
                continue
            tab = wp.from_torch(f.table.detach())
            pw = wp.from_torch(p, dtype=wp.vec3)
            cases[f"hash encoding {name}"] = (encoding_step(f.encoding, pw, tab, False),
                                              encoding_step(f.encoding, pw, tab, True))
            cases[f"hash encoding {name} kept grad"] = (encoding_step(f.encoding, pw, tab, False),
                                                        encoding_step(f.encoding, pw, tab, True, persistent=True))
        cases["neural field (pe)"] = (field_step(neural, p, d, False), field_step(neural, p, d, True))
        mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
        x = torch.randn(batch, 32)

        def torch_mlp(backward, mlp=mlp, x=x):
            def run():
                for q in mlp.parameters():
                    q.grad = None
                if backward:
                    xx = x.clone().requires_grad_(True)
                    mlp(xx).sum().backward()
                else:
                    with torch.no_grad():
                        mlp(x)
            return run

        ws = [wp.from_torch(t.detach()) for t in (mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias)]
        xw = wp.from_torch(x)
        hidden, out = wp.zeros((batch, 64), dtype=float), wp.zeros((batch, 16), dtype=float)
        adj = wp.ones((batch, 16), dtype=float)

        def warp_mlp(backward, ws=ws, xw=xw, hidden=hidden, out=out, adj=adj, batch=batch):
            def run():
                wp.launch(_mlp_forward, dim=batch, inputs=[xw, *ws, hidden, out])
                if backward:
                    grads = [wp.zeros_like(a) for a in (xw, *ws)]
                    wp.launch(_mlp_backward, dim=batch, inputs=[xw, ws[0], ws[2], hidden, adj, *grads])
            return run

        cases["mlp torch 32-64-16"] = (torch_mlp(False), torch_mlp(True))
        cases["mlp warp 32-64-16"] = (warp_mlp(False), warp_mlp(True))
        for name, (fwd, both) in cases.items():
            (tf, cf), (tb, cb) = timed(fwd, args.repeat), timed(both, args.repeat)
            rows.append((batch, name, tf, cf, tb, cb))
            print(f"  {batch:6d} {name:32s} fwd {batch / tf / 1e6:7.3f} Mpts/s ({tf * 1e3:7.2f} ms, cpu "
                  f"{cf * 1e3:7.2f} ms)  fwd+bwd {batch / tb / 1e6:7.3f} Mpts/s ({tb * 1e3:7.2f} ms, cpu "
                  f"{cb * 1e3:7.2f} ms)", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print("| batch | case | fwd points/s (wall) | fwd ms wall / cpu | fwd+bwd points/s (wall) "
          "| fwd+bwd ms wall / cpu |")
    print("|---|---|---|---|---|---|")
    for batch, name, tf, cf, tb, cb in rows:
        print(f"| {batch} | {name} | {batch / tf / 1e6:.3f} M | {tf * 1e3:.1f} / {cf * 1e3:.1f} | "
              f"{batch / tb / 1e6:.3f} M | {tb * 1e3:.1f} / {cb * 1e3:.1f} |")


if __name__ == "__main__":
    main()
