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
# torch's OpenMP threads spin-wait by default; PASSIVE makes them sleep when idle. Which
# is faster depends on the machine's load, so both are tried (see the module docstring).
TORCH_POLICIES = ("default", "PASSIVE")
PAUSE_S = 0.3  # between blocks: OpenMP's spin-wait (KMP_BLOCKTIME 200 ms) ends before the other starts


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


def worker(framework: str, name: str, batch: int, steps: int, conv_impl: str) -> int:
    """One framework in this process: build, warm up, then time a block per 'go' line."""
    from scaling.models.config import family_config

    depth, width, res = SIZES[name]
    cfg = family_config(depth, width, num_classes=NUM_CLASSES)
    if framework == "timm":
        import_timm()  # the torchvision shim first (see import_timm)
    t0 = time.perf_counter()
    runner = JaxRunner(cfg, batch, res, conv_impl) if framework == "jax" else TimmRunner(cfg, batch, res)
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
             "--steps", str(args.steps), "--conv-impl", args.conv_impl],
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
    from scaling.models.config import family_config
    from scaling.models.counts import count

    depth, width, res = SIZES[name]
    analytic = count(family_config(depth, width, num_classes=NUM_CLASSES), res).params
    load_before = os.getloadavg()[0]
    # The peer's wait policy: a pilot of 2 alternated blocks each, the faster kept.
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
    return dict(
        size=name, depth_mult=depth, width_mult=width, resolution=res, batch=args.batch, params=analytic,
        jax_img_s=args.batch / med["jax"], timm_img_s=args.batch / med["timm"], ratio=med["timm"] / med["jax"],
        ratio_min=min(per_step["timm"]) / max(per_step["jax"]), ratio_max=max(per_step["timm"]) / min(per_step["jax"]),
        jax_compile_s=ours.info["compile_s"], torch_policy=best, torch_threads=peer.info.get("torch_threads"),
        pilot_s=pilot, jax_step_s=per_step["jax"], timm_step_s=per_step["timm"],
        load_before=load_before, load_after=os.getloadavg()[0],
    )


def machine() -> dict:
    import flax
    import jax
    import jaxlib
    import torch

    timm = import_timm()
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(cpu=cpu, cores=len(os.sched_getaffinity(0)), platform=platform.platform(),
                python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                flax=flax.__version__, torch=torch.__version__, timm=timm.__version__,
                xla_flags=os.environ.get("XLA_FLAGS", ""), loadavg_start=os.getloadavg())


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
        return worker(args.worker, args.sizes[0], args.batch, args.steps, args.conv_impl)

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['platform']}")
    print(f"versions: python {info['python']}, jax {info['jax']} (jaxlib {info['jaxlib']}), flax {info['flax']}, "
          f"torch {info['torch']}, timm {info['timm']}; XLA_FLAGS={info['xla_flags']!r}; conv_impl={args.conv_impl}")
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
