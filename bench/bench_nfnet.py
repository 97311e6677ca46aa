"""Our Flax NFNet against timm's PyTorch NFNet: train-step images/s on this machine.

Both frameworks train the same architecture (depth pattern, widths, group width, SE,
GELU, two 3x3 grouped convs per block, skip gain, head conv x2, fp32) at the same
batch and resolution. Fairness rules (bench/README.md):
- each framework runs in its OWN process with its own defaults, as its users run it
  (XLA's CPU client on every core; torch with its default thread count);
- torch's OpenMP wait policy changes its speed a lot on a shared machine, so the peer is
  first tried with its default and with OMP_WAIT_POLICY=PASSIVE (a short pilot, the two
  alternated) and the faster is kept; the choice is printed;
- the two processes take turns, A B A B, one block of `--steps` steps at a time, with a
  pause between blocks so neither's idle threads steal the other's cores; each waits
  blocked on a pipe while the other runs;
- medians over `--repeats` blocks are quoted with min and max, and the load average
  is recorded before and after each size.
Compilation (JAX) and warm-up (both) are timed apart.

    python bench/bench_nfnet.py                   # default sizes, 7 repeats
    python bench/bench_nfnet.py --sizes d1-w0.5-r32 --repeats 9 --json out.json

Setup (torch CPU wheel, timm, torchvision shim): bench/README.md. Results: docs/bench_nfnet.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import duel, import_timm, jax_train_step, machine, print_machine, serve  # noqa: E402

# name -> (depth_mult, width_mult, resolution). The 32x32 four span ~60x in params
# (0.28M .. 17M, the sizes of an earlier quick probe); the two at 64 px are the larger-map
# cases the speed goal names (4.3M and 17M).
SIZES = {
    "d1-w0.0625-r32": (1.0, 0.0625, 32),
    "d1-w0.125-r32": (1.0, 0.125, 32),
    "d1-w0.25-r32": (1.0, 0.25, 32),
    "d1-w0.5-r32": (1.0, 0.5, 32),
    "d1-w0.25-r64": (1.0, 0.25, 64),
    "d1-w0.5-r64": (1.0, 0.5, 64),
}
NUM_CLASSES = 10
LR, MOMENTUM = 0.01, 0.9  # plain SGD + momentum on both sides; the values do not change the cost


# --- the peer: timm ----------------------------------------------------------------------


def timm_model(cfg):
    """timm NormFreeNet with our config's architecture.

    Matching choices: deep_quad stem with stem_chs = widths[0] // 2 (its 4 convs are
    /8, /4, /2, /1 of that, i.e. our stem_widths + widths[0] // 2), extra_conv (two 3x3
    grouped convs), SE with hidden = 0.5 x channels (rd_divisor 1: no rounding),
    skipinit (a scalar skip gain per block, as ours), head conv to 2x last width,
    ch_div 1 (no channel rounding). timm's own speed defaults are kept where they do not
    change the function: gamma folded into the conv (gamma_in_act=False) and static
    symmetric padding (same_padding=False; the same output shapes as SAME at even sizes).
    """
    from timm.models.nfnet import NfCfg, NormFreeNet

    if tuple(cfg.stem_widths) != tuple(cfg.widths[0] // 2 // d for d in (8, 4, 2)):
        raise SystemExit(f"timm's deep_quad stem cannot express stem {cfg.stem_widths} for widths {cfg.widths}")
    nf = NfCfg(
        depths=tuple(cfg.depths),
        channels=tuple(cfg.widths),
        alpha=cfg.alpha,
        stem_type="deep_quad",
        stem_chs=cfg.widths[0] // 2,
        group_size=cfg.group_width,
        attn_layer="se",
        attn_kwargs=dict(rd_ratio=cfg.se_ratio, rd_divisor=1),
        bottle_ratio=cfg.bottleneck_ratio,
        num_features=cfg.final_conv_mult * cfg.widths[-1],
        ch_div=1,
        extra_conv=True,
        skipinit=True,
        act_layer=cfg.activation,
    )
    return NormFreeNet(nf, num_classes=cfg.num_classes, drop_rate=0.0, drop_path_rate=0.0)


class TimmRunner:
    def __init__(self, cfg, batch: int, resolution: int):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.model = timm_model(cfg).train()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, resolution, resolution, generator=g)
        self.y = torch.randint(0, cfg.num_classes, (batch,), generator=g)

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.item()


# --- ours ----------------------------------------------------------------------------------


class JaxRunner:
    def __init__(self, cfg, batch: int, resolution: int, conv_impl: str):
        import jax
        import jax.numpy as jnp
        import numpy as np
        import optax

        from scaling.models.nfnet import NFNet, init_params

        params = init_params(cfg, jax.random.key(0), resolution, conv_impl)
        self.params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        model = NFNet(cfg, conv_impl)

        def loss_fn(p, x, y, key):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        rng = np.random.default_rng(0)
        batch_arrays = (jnp.asarray(rng.normal(size=(batch, resolution, resolution, 3)).astype(np.float32)),
                        jnp.asarray(rng.integers(0, cfg.num_classes, size=batch).astype(np.int32)),
                        jax.random.key(1))
        self._step, self.state, self.compile_s = jax_train_step(
            loss_fn, params, optax.sgd(LR, momentum=MOMENTUM), batch_arrays)

    def step(self) -> float:
        self.state, loss = self._step(self.state)
        return loss


# --- measurement (bench/_harness.py) ------------------------------------------------------


def runner(framework: str, name: str, args):
    from scaling.models.config import family_config

    depth, width, res = SIZES[name]
    cfg = family_config(depth, width, num_classes=NUM_CLASSES)
    if framework == "timm":
        import_timm()  # the torchvision shim first (see _harness.import_timm)
        return TimmRunner(cfg, args.batch, res)
    return JaxRunner(cfg, args.batch, res, args.conv_impl)


def bench_size(name: str, args) -> dict:
    from scaling.models.config import family_config
    from scaling.models.counts import count

    depth, width, res = SIZES[name]
    analytic = count(family_config(depth, width, num_classes=NUM_CLASSES), res).params
    worker_args = ["--sizes", name, "--batch", str(args.batch), "--steps", str(args.steps),
                   "--conv-impl", args.conv_impl]
    row = duel(__file__, worker_args, args.repeats, args.batch, analytic, name)
    return dict(size=name, depth_mult=depth, width_mult=width, resolution=res, **row)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7, help="blocks per framework (median quoted)")
    ap.add_argument("--steps", type=int, default=3, help="train steps per block")
    ap.add_argument("--conv-impl", default="auto", help="our conv kernels (scaling.models.layers)")
    ap.add_argument("--json", help="also write the rows and machine description here")
    ap.add_argument("--worker", choices=("jax", "timm"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return serve(runner, args.worker, args.sizes[0], args)

    info = machine()
    print_machine(info)
    print(f"conv_impl={args.conv_impl}")
    print(f"batch {args.batch}, fp32, SGD+momentum step; each framework in its own process, "
          f"{args.repeats} alternated blocks x {args.steps} steps; medians [min..max of the ratio]")
    print(f"{'size':<16}{'params':>10}{'res':>5}{'jax img/s':>11}{'timm img/s':>12}{'jax/timm':>10}"
          f"{'[min..max]':>14}{'torch policy':>14}{'load':>11}{'compile s':>11}", flush=True)
    rows = []
    for name in args.sizes:
        row = bench_size(name, args)
        rows.append(row)
        spread = f"[{row['ratio_min']:.2f}..{row['ratio_max']:.2f}]"
        policy = f"{row['torch_policy']} x{row['torch_threads']}"
        load = f"{row['load_before']:.1f}->{row['load_after']:.1f}"
        print(f"{name:<16}{row['params'] / 1e6:>9.2f}M{row['resolution']:>5}{row['jax_img_s']:>11.0f}"
              f"{row['timm_img_s']:>12.0f}{row['ratio']:>10.2f}{spread:>14}{policy:>14}{load:>11}"
              f"{row['jax_compile_s']:>11.1f}", flush=True)
    info["loadavg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, args=vars(args), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
