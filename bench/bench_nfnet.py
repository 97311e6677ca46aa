"""Our Flax NFNet against timm's PyTorch NFNet: train-step images/s on this machine.

Both frameworks train the same architecture (depth pattern, widths, group width, SE,
GELU, two 3x3 grouped convs per block, skip gain, head conv x2, fp32) at the same
batch and resolution, in one process, on the same cores. Each repeat times `--steps`
SGD steps (forward + backward + momentum update) of one framework, then of the other,
alternating which goes first, so slow drift of the machine's load hits both alike; we
quote medians over repeats. Compilation (JAX) and warm-up (both) are timed apart.

    python bench/bench_nfnet.py                   # default sizes, 5 repeats
    python bench/bench_nfnet.py --sizes d1-w0.5-r32 --repeats 9 --json out.json

Setup (torch CPU wheel, timm, torchvision shim): bench/README.md. Results: docs/bench_nfnet.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# name -> (depth_mult, width_mult, resolution). The 32x32 four span ~60x in params
# (0.28M .. 17M, the sizes of an earlier quick probe); d1-w0.25-r64 is the larger-map case.
SIZES = {
    "d1-w0.0625-r32": (1.0, 0.0625, 32),
    "d1-w0.125-r32": (1.0, 0.125, 32),
    "d1-w0.25-r32": (1.0, 0.25, 32),
    "d1-w0.5-r32": (1.0, 0.5, 32),
    "d1-w0.25-r64": (1.0, 0.25, 64),
}
NUM_CLASSES = 10
LR, MOMENTUM = 0.01, 0.9  # plain SGD + momentum on both sides; the values do not change the cost
TORCH_THREADS = 2  # the machine's 2 cores (XLA's CPU client uses every core by default)
# torch's OpenMP threads spin-wait by default; when other processes share the cores
# (this machine's usual state) a spinning thread holds a core its partner needs and a
# timm step becomes 5-30x slower (measured: 8.4 s instead of 1.0 s at 4.3M params, load
# ~8). PASSIVE (sleep when idle) is torch's best setting under load, so the peer gets it
# unless the caller sets the variable; it must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# --- the peer: timm ----------------------------------------------------------------------


def import_timm():
    """Import timm, working around a CUDA-linked torchvision beside a CPU torch.

    timm imports torchvision; PyPI's torchvision 0.28.0 is built against the CUDA torch
    2.13.0, so beside the CPU wheel its C extension (detection ops, unused by NFNet)
    cannot load and torchvision's import fails while registering fake kernels for the
    ops `nms`/`qnms`. Declaring those two op schemas first lets the pure-Python part of
    torchvision import. With a matching pair (bench/README.md) the first import works.
    """
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_timm._keep = lib  # the schema lives as long as the Library object
        import torchvision  # noqa: F401
    import timm

    return timm


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

        self.jax = jax
        t0 = time.perf_counter()
        params = init_params(cfg, jax.random.key(0), resolution, conv_impl)
        jax.block_until_ready(params)
        self.init_s = time.perf_counter() - t0
        self.params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        model = NFNet(cfg, conv_impl)
        opt = optax.sgd(LR, momentum=MOMENTUM)

        def loss_fn(p, x, y, key):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def train_step(p, opt_state, x, y, key):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y, key)
            updates, opt_state = opt.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        rng = np.random.default_rng(0)
        self.x = jnp.asarray(rng.normal(size=(batch, resolution, resolution, 3)).astype(np.float32))
        self.y = jnp.asarray(rng.integers(0, cfg.num_classes, size=batch).astype(np.int32))
        self.key = jax.random.key(1)
        self.state = (params, opt.init(params))
        t0 = time.perf_counter()
        self.fn = jax.jit(train_step, donate_argnums=(0, 1)).lower(*self.state, self.x, self.y, self.key).compile()
        self.compile_s = time.perf_counter() - t0

    def step(self) -> float:
        p, o, loss = self.fn(*self.state, self.x, self.y, self.key)
        self.state = (p, o)
        return float(loss)  # blocks until the step is done


# --- measurement -------------------------------------------------------------------------


def timed(runner, steps: int) -> float:
    """Seconds per step over `steps` steps (each step ends with a host sync)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    return (time.perf_counter() - t0) / steps


def machine() -> dict:
    import jax
    import jaxlib
    import flax
    import torch

    timm = import_timm()
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(
        cpu=cpu,
        cores=len(os.sched_getaffinity(0)),
        platform=platform.platform(),
        python=platform.python_version(),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        flax=flax.__version__,
        torch=torch.__version__,
        timm=timm.__version__,
        torch_threads=torch.get_num_threads(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
        loadavg_start=os.getloadavg(),
    )


def bench_size(name: str, batch: int, repeats: int, steps: int, conv_impl: str) -> dict:
    from scaling.models.config import family_config
    from scaling.models.counts import count

    depth, width, res = SIZES[name]
    cfg = family_config(depth, width, num_classes=NUM_CLASSES)
    ours = JaxRunner(cfg, batch, res, conv_impl)
    peer = TimmRunner(cfg, batch, res)
    analytic = count(cfg, res).params
    if not ours.params == peer.params == analytic:
        raise SystemExit(f"{name}: parameter counts differ: ours {ours.params}, timm {peer.params}, "
                         f"analytic {analytic}; the configurations do not match")
    warm = {}
    for label, r in (("jax", ours), ("timm", peer)):
        t0 = time.perf_counter()
        r.step()
        r.step()
        warm[label] = time.perf_counter() - t0
    per_step = {"jax": [], "timm": []}
    for rep in range(repeats):
        order = (("jax", ours), ("timm", peer)) if rep % 2 == 0 else (("timm", peer), ("jax", ours))
        for label, r in order:
            per_step[label].append(timed(r, steps))
    med = {k: statistics.median(v) for k, v in per_step.items()}
    row = dict(
        size=name, depth_mult=depth, width_mult=width, resolution=res, batch=batch, params=ours.params,
        jax_img_s=batch / med["jax"], timm_img_s=batch / med["timm"], ratio=med["timm"] / med["jax"],
        jax_compile_s=ours.compile_s, jax_init_s=ours.init_s, warmup_s=warm,
        jax_step_s=per_step["jax"], timm_step_s=per_step["timm"],
    )
    del ours, peer
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5, help="measurements per framework (median quoted)")
    ap.add_argument("--steps", type=int, default=3, help="train steps per measurement")
    ap.add_argument("--conv-impl", default="auto", help="our conv kernels (scaling.models.layers)")
    ap.add_argument("--json", help="also write the rows and machine description here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(TORCH_THREADS)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['platform']}")
    print(f"versions: python {info['python']}, jax {info['jax']} (jaxlib {info['jaxlib']}), flax {info['flax']}, "
          f"torch {info['torch']} ({info['torch_threads']} threads, OMP_WAIT_POLICY={info['omp_wait_policy']}), "
          f"timm {info['timm']}; "
          f"XLA_FLAGS={info['xla_flags']!r}; conv_impl={args.conv_impl}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    print(f"batch {args.batch}, fp32, SGD+momentum step; {args.repeats} interleaved repeats x {args.steps} steps; medians")
    header = f"{'size':<16}{'params':>10}{'res':>5}{'jax img/s':>11}{'timm img/s':>12}{'jax/timm':>10}{'compile s':>11}"
    print(header, flush=True)
    rows = []
    for name in args.sizes:
        row = bench_size(name, args.batch, args.repeats, args.steps, args.conv_impl)
        rows.append(row)
        print(f"{name:<16}{row['params'] / 1e6:>9.2f}M{row['resolution']:>5}{row['jax_img_s']:>11.0f}"
              f"{row['timm_img_s']:>12.0f}{row['ratio']:>10.2f}{row['jax_compile_s']:>11.1f}", flush=True)
    info["loadavg_end"] = os.getloadavg()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in info['loadavg_end'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, args=vars(args), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
