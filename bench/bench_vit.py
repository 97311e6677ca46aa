"""Our Flax ViT against timm's PyTorch VisionTransformer: train-step images/s on this CPU.

Both frameworks train the same architecture (patch size, width, depth, MLP width, heads,
class token, learned position embeddings incl. the class token's, pre-norm, LN eps 1e-6,
linear head; checked: our parameter count, timm's and scaling.models.vit_counts must be
equal or the script stops) at the same batch and resolution, fp32, one Adam step
(forward, backward, update). Known difference: our GELU is the tanh form (flax's and
big_vision's default), timm's the erf form; both one elementwise pass.

Fairness, as bench/bench_nfnet.py (bench/README.md):
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
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_nfnet import PAUSE_S, TORCH_POLICIES, import_timm  # noqa: E402  (the torchvision shim)

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

        t0 = time.perf_counter()
        params = init_params(cfg, jax.random.key(0), resolution)
        # timm's head is not zero-initialised; give ours a random one too (same cost)
        params["classifier"]["kernel"] = 0.02 * jax.random.normal(jax.random.key(2), params["classifier"]["kernel"].shape)
        jax.block_until_ready(params)
        self.init_s = time.perf_counter() - t0
        self.params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        model = ViT(cfg, impl=impl)
        opt = optax.adam(LR)

        def loss_fn(p, x, y):
            logits = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def train_step(p, opt_state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            updates, opt_state = opt.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        rng = np.random.default_rng(0)
        self.x = jnp.asarray(rng.normal(size=(batch, resolution, resolution, 3)).astype(np.float32))
        self.y = jnp.asarray(rng.integers(0, cfg.num_classes, size=batch).astype(np.int32))
        self.state = (params, opt.init(params))
        t0 = time.perf_counter()
        self.fn = jax.jit(train_step, donate_argnums=(0, 1)).lower(*self.state, self.x, self.y).compile()
        self.compile_s = time.perf_counter() - t0

    def step(self) -> float:
        p, o, loss = self.fn(*self.state, self.x, self.y)
        self.state = (p, o)
        return float(loss)  # blocks until the step is done


# --- measurement -------------------------------------------------------------------------


def timed(runner, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    return (time.perf_counter() - t0) / steps


def worker(framework: str, name: str, batch: int, steps: int, impl: str) -> int:
    cfg = config(name)
    res = SIZES[name][-1]
    if framework == "timm":
        import_timm()
    t0 = time.perf_counter()
    runner = JaxRunner(cfg, batch, res, impl) if framework == "jax" else TimmRunner(cfg, batch, res)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner.step()
    runner.step()
    info = {"ready": True, "params": runner.params, "build_s": build_s, "warmup_s": time.perf_counter() - t0,
            "compile_s": getattr(runner, "compile_s", None)}
    if framework == "timm":
        import torch

        info.update(torch_threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        print(json.dumps({"step_s": timed(runner, steps)}), flush=True)
    return 0


class Proc:
    """A worker process driven over its stdin/stdout."""

    def __init__(self, framework: str, name: str, args, policy: str = "default"):
        import subprocess

        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        self.label = framework if framework == "jax" else f"timm[{policy}]"
        self.p = subprocess.Popen(
            [sys.executable, __file__, "--worker", framework, "--sizes", name, "--batch", str(args.batch),
             "--steps", str(args.steps), "--impl", args.impl],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"{self.label}: the worker died (run it alone with --worker to see why)")
        return json.loads(line)

    def block(self) -> float:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        out = self._read()["step_s"]
        time.sleep(PAUSE_S)
        return out

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


def bench_size(name: str, args) -> dict:
    from scaling.models.vit_counts import count

    res = SIZES[name][-1]
    analytic = count(config(name), res).params
    load_before = os.getloadavg()[0]
    peers = {pol: Proc("timm", name, args, pol) for pol in TORCH_POLICIES}
    pilot = {pol: [] for pol in peers}
    for _ in range(2):
        for pol, proc in peers.items():
            pilot[pol].append(proc.block())
    best = min(pilot, key=lambda pol: statistics.median(pilot[pol]))
    for pol, proc in peers.items():
        if pol != best:
            proc.close()
    peer = peers[best]
    ours = Proc("jax", name, args)
    if not ours.info["params"] == peer.info["params"] == analytic:
        raise SystemExit(f"{name}: parameter counts differ: ours {ours.info['params']}, timm "
                         f"{peer.info['params']}, analytic {analytic}; the configurations do not match")
    per_step = {"jax": [], "timm": []}
    for rep in range(args.repeats):
        order = (("jax", ours), ("timm", peer)) if rep % 2 == 0 else (("timm", peer), ("jax", ours))
        for label, proc in order:
            per_step[label].append(proc.block())
    ours.close()
    peer.close()
    med = {k: statistics.median(v) for k, v in per_step.items()}
    w, d, m, h, p, _ = SIZES[name]
    return dict(
        size=name, width=w, depth=d, mlp=m, heads=h, patch=p, resolution=res, batch=args.batch, params=analytic,
        jax_img_s=args.batch / med["jax"], timm_img_s=args.batch / med["timm"], ratio=med["timm"] / med["jax"],
        ratio_min=min(per_step["timm"]) / max(per_step["jax"]), ratio_max=max(per_step["timm"]) / min(per_step["jax"]),
        jax_compile_s=ours.info["compile_s"], torch_policy=best, torch_threads=peer.info.get("torch_threads"),
        load_before=load_before, load_after=os.getloadavg()[0], per_step=per_step, pilot=pilot)


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
        return worker(args.worker, args.sizes, args.batch, args.steps, args.impl)
    import jax
    import torch

    rows = []
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__}, "
          f"torch {torch.__version__}; batch {args.batch}, fp32, Adam; {args.repeats} alternated blocks of "
          f"{args.steps} steps; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
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
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
