"""The matrix products of one ViT block, XLA's against torch's, on this CPU.

bench/profile_step.py puts three quarters of our ViT train step in matrix products, so
whether our ViT can reach timm's speed depends first on whether XLA's CPU matmuls (YNNPACK
here) are as fast as torch's (oneDNN / MKL) on the same shapes. This runs exactly the
products of one pre-norm ViT block's train step, with its tokens as rows of one
[B*T, D] matrix as scaling/models/vit.py holds them: for each of qkv (D -> 3D), the
attention output projection (D -> D), fc1 (D -> M) and fc2 (M -> D), the forward
product X W, the weight gradient X^T dY and the input gradient dY W^T. fp32, as the
speed benches.

Fairness as the other speed benches (bench/_harness.py): each framework in its own
process with its own thread settings (XLA on every core; torch's default thread count,
its OpenMP wait policy piloted, default vs PASSIVE, the faster kept), blocks of
`--steps` calls alternated A B A B, medians with the ratio's min..max, load recorded.

    python bench/bench_matmul.py                         # ViT-Ti's block: D 192, M 768, 65 tokens
    python bench/bench_matmul.py --sizes w128-t65 --repeats 9

Results: docs/models.md#vit-on-this-cpu.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import duel, machine, print_machine, serve  # noqa: E402

# name -> (width D, MLP width M, tokens T): bench_vit.py's two larger sizes
SIZES = {"w192-t65": (192, 768, 65), "w128-t65": (128, 512, 65)}


def _shapes(name: str) -> list[tuple[int, int]]:
    d, m, _ = SIZES[name]
    return [(d, 3 * d), (d, d), (d, m), (m, d)]  # qkv, proj, fc1, fc2 as (in, out)


def _flops(name: str, batch: int) -> float:
    rows = batch * SIZES[name][2]
    return sum(3 * 2 * rows * i * o for i, o in _shapes(name))  # fwd, dW, dX


class JaxRunner:
    def __init__(self, name: str, batch: int):
        import jax
        import jax.numpy as jnp

        rows = batch * SIZES[name][2]
        keys = jax.random.split(jax.random.key(0), 3 * len(_shapes(name)))
        self.args = []
        for n, (i, o) in enumerate(_shapes(name)):
            self.args += [jax.random.normal(keys[3 * n], (rows, i)), jax.random.normal(keys[3 * n + 1], (i, o)),
                          jax.random.normal(keys[3 * n + 2], (rows, o))]
        self.params = sum(i * o for i, o in _shapes(name))

        def products(*a):
            out = []
            for n in range(0, len(a), 3):
                x, w, dy = a[n:n + 3]
                out += [x @ w, x.T @ dy, dy @ w.T]
            return out

        self.fn = jax.jit(products)
        self.compile_s = None

    def step(self):
        import jax

        jax.block_until_ready(self.fn(*self.args))


class TorchRunner:
    def __init__(self, name: str, batch: int):
        import torch

        rows = batch * SIZES[name][2]
        g = torch.Generator().manual_seed(0)
        self.args = [(torch.randn(rows, i, generator=g), torch.randn(i, o, generator=g), torch.randn(rows, o, generator=g))
                     for i, o in _shapes(name)]
        self.params = sum(i * o for i, o in _shapes(name))

    def step(self):
        for x, w, dy in self.args:
            x @ w
            x.t() @ dy
            dy @ w.t()


def runner(framework: str, name: str, args):
    return TorchRunner(name, args.batch) if framework == "timm" else JaxRunner(name, args.batch)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--batch", type=int, default=128, help="images; rows = batch x tokens")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="calls per block")
    ap.add_argument("--json")
    ap.add_argument("--worker", choices=("jax", "timm"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return serve(runner, args.worker, args.sizes[0], args)
    info = machine()
    print_machine(info)
    print(f"{'size':<10}{'GFLOP/call':>11}{'xla GFLOP/s':>13}{'torch GFLOP/s':>15}{'xla/torch':>11}{'[min..max]':>14}"
          f"{'torch policy':>14}{'load':>11}")
    rows = []
    for name in args.sizes:
        worker_args = ["--sizes", name, "--batch", str(args.batch), "--steps", str(args.steps)]
        params = sum(i * o for i, o in _shapes(name))
        row = duel(__file__, worker_args, args.repeats, args.batch, params, name)
        gflop = _flops(name, args.batch) / 1e9
        # duel reports images/s = batch / seconds per call; turn it into GFLOP/s
        xla, torch_ = row["jax_img_s"] / args.batch * gflop, row["timm_img_s"] / args.batch * gflop
        rows.append(dict(size=name, gflop=gflop, xla_gflop_s=xla, torch_gflop_s=torch_, **row))
        print(f"{name:<10}{gflop:>11.2f}{xla:>13.1f}{torch_:>15.1f}{row['ratio']:>11.2f}"
              f"{'[%.2f..%.2f]' % (row['ratio_min'], row['ratio_max']):>14}{row['torch_policy']:>14}"
              f"{row['load_before']:>5.1f}->{row['load_after']:<4.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
