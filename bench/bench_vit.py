"""Our Flax ViT against timm's PyTorch VisionTransformer: train-step images/s on this CPU.

Both frameworks train the same architecture (patch size, width, depth, MLP width, heads,
class token, learned position embeddings incl. the class token's, pre-norm, LN eps 1e-6,
linear head; checked: our parameter count, timm's and scaling.models.vit_counts must be
equal or the script stops) at the same batch and resolution, fp32, one Adam step
(forward, backward, update). Known difference: our GELU is the tanh form (flax's and
big_vision's default), timm's the erf form; both one elementwise pass.

Fairness, as bench/bench_nfnet.py (bench/_harness.py, bench/README.md):
- each framework runs in its OWN process with its own best thread settings: XLA's CPU
  client on every core; torch with its default thread count, its OpenMP wait policy
  picked by a short alternated pilot (default vs OMP_WAIT_POLICY=PASSIVE, faster kept);
- the processes take turns, A B A B (who goes first alternates), one block of `--steps`
  steps each, a pause between blocks; each waits blocked on a pipe while the other runs;
- medians over `--repeats` blocks, with the min..max of the ratio, and the load average
  before and after each size. JAX compilation and warm-up are timed apart.

    python bench/bench_vit.py                           # default sizes, 5 repeats
    python bench/bench_vit.py --sizes w64-d4-p4-r16 --repeats 9 --json out.json

Results: docs/models.md#vit-on-this-cpu.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import duel, import_timm, jax_train_step, machine, print_machine, serve  # noqa: E402

# name -> (width, depth, mlp, heads, patch, resolution). The first two are the compare
# spec's ViTs (sweeps/specs/compare.toml); the last is ViT-Ti's shape on 32 px inputs.
SIZES = {
    "w32-d2-p4-r16": (32, 2, 128, 1, 4, 16),
    "w64-d4-p4-r16": (64, 4, 256, 1, 4, 16),
    "w128-d6-p4-r32": (128, 6, 512, 2, 4, 32),
    "w192-d12-p4-r32": (192, 12, 768, 3, 4, 32),
}
NUM_CLASSES = 10
LR = 1e-3  # plain Adam on both sides; the value does not change the cost


def config(name: str):
    from scaling.models.vit_config import family_config

    w, d, m, h, p, _ = SIZES[name]
    return family_config(w, d, m, h, p, num_classes=NUM_CLASSES)


# --- the peer: timm ----------------------------------------------------------------------


class TimmRunner:
    def __init__(self, cfg, batch: int, resolution: int):
        import torch
        from timm.models.vision_transformer import VisionTransformer

        torch.manual_seed(0)
        self.torch = torch
        self.model = VisionTransformer(
            img_size=resolution, patch_size=cfg.patch_size, in_chans=3, num_classes=cfg.num_classes,
            global_pool="token", embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_dim / cfg.width, qkv_bias=True, class_token=True, no_embed_class=False,
            pre_norm=False, fc_norm=False, drop_rate=0.0, drop_path_rate=0.0).train()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
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
    def __init__(self, cfg, batch: int, resolution: int, impl: str):
        import jax
        import jax.numpy as jnp
        import numpy as np
        import optax

        from scaling.models.vit import ViT, init_params

        params = init_params(cfg, jax.random.key(0), resolution)
        # timm's head is not zero-initialised; give ours a random one too (same cost)
        params["classifier"]["kernel"] = 0.02 * jax.random.normal(jax.random.key(2), params["classifier"]["kernel"].shape)
        self.params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        model = ViT(cfg, impl=impl)

        def loss_fn(p, x, y):
            logits = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        rng = np.random.default_rng(0)
        batch_arrays = (jnp.asarray(rng.normal(size=(batch, resolution, resolution, 3)).astype(np.float32)),
                        jnp.asarray(rng.integers(0, cfg.num_classes, size=batch).astype(np.int32)))
        self._step, self.state, self.compile_s = jax_train_step(loss_fn, params, optax.adam(LR), batch_arrays)

    def step(self) -> float:
        self.state, loss = self._step(self.state)
        return loss


# --- measurement (bench/_harness.py) ------------------------------------------------------


def runner(framework: str, name: str, args):
    cfg = config(name)
    res = SIZES[name][-1]
    if framework == "timm":
        import_timm()
        return TimmRunner(cfg, args.batch, res)
    return JaxRunner(cfg, args.batch, res, args.impl)


def bench_size(name: str, args) -> dict:
    from scaling.models.vit_counts import count

    res = SIZES[name][-1]
    analytic = count(config(name), res).params
    worker_args = ["--sizes", name, "--batch", str(args.batch), "--steps", str(args.steps), "--impl", args.impl]
    row = duel(__file__, worker_args, args.repeats, args.batch, analytic, name)
    w, d, m, h, p, _ = SIZES[name]
    return dict(size=name, width=w, depth=d, mlp=m, heads=h, patch=p, resolution=res, **row)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {', '.join(SIZES)}")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="blocks per framework, alternated")
    ap.add_argument("--impl", default="auto", help="our kernels: auto (cpu here), cpu or native")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--worker", choices=("jax", "timm"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return serve(runner, args.worker, args.sizes, args)

    info = machine()
    print_machine(info)
    print(f"batch {args.batch}, fp32, Adam; {args.repeats} alternated blocks of {args.steps} steps")
    rows = []
    print(f"{'size':>16} {'params':>10} {'ours img/s':>11} {'timm img/s':>11} {'ours/timm':>10} "
          f"{'(min..max)':>13} {'compile s':>9} {'torch':>16} {'load':>10}")
    for name in args.sizes.split(","):
        r = bench_size(name, args)
        rows.append(r)
        print(f"{name:>16} {r['params']:>10,} {r['jax_img_s']:>11.0f} {r['timm_img_s']:>11.0f} {r['ratio']:>10.2f} "
              f"{r['ratio_min']:>6.2f}..{r['ratio_max']:<6.2f} {r['jax_compile_s']:>9.1f} "
              f"{r['torch_policy'] + ' x' + str(r['torch_threads']):>16} "
              f"{r['load_before']:>4.1f}->{r['load_after']:<4.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, args=vars(args), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
