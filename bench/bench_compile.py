"""Cold compile time of the trainer's programs, per demo-sized shape, with its parts apart.

What a new sweep worker pays before its first step when the persistent compilation cache
does not have the shape yet: parameter init, tracing + lowering of the train step, XLA's
compilation of it, and the same for the eval step. Each shape is measured in a FRESH
process with the persistent cache off (a warm in-process cache or a disk hit would hide
the cost), `--repeats` times, alternating shapes; medians and min..max are printed with
the load average. The peer is the same program compiled at XLA's lowest backend
optimisation level (`--xla_backend_optimization_level=0`, what a user wanting fast
compiles would try first), so the ratio says how much of the time is XLA's optimiser.

    python bench/bench_compile.py                    # the demo's four widths
    python bench/bench_compile.py --widths 0.125 --repeats 5 --json out.json

Goal (docs/bench_nfnet.md#compile-time): under 10 s cold per demo-sized shape.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEMO_WIDTHS = "0.03125,0.0625,0.09375,0.125"  # sweeps/specs/demo.toml
PEER_FLAGS = "--xla_backend_optimization_level=0"
PARTS = ("init_s", "train_lower_s", "train_compile_s", "eval_lower_s", "eval_compile_s")


def measure(depth: float, width: float, resolution: int, batch: int, dataset: str) -> dict:
    """In this (fresh) process: build the demo trial's model and recipe as the trainer does
    and time each part of getting its executables."""
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.data import get_dataset
    from scaling.train import step as step_mod
    from scaling.train.config import TrainConfig
    from scaling.train.loop import _build

    import_s = time.perf_counter() - t0
    jax.config.update("jax_enable_compilation_cache", False)
    config = TrainConfig(depth_mult=depth, width_mult=width, dataset=dataset, epochs=1, lr=0.4,
                         batch_size=batch, resolution=resolution, optimizer={"agc_clip": 0.04})
    ds = get_dataset(dataset)
    built = _build(config, ds)
    model = built.family.load("module")(built.model_cfg, dtype=config.compute_dtype)
    mesh = step_mod.make_mesh()
    out = {"import_s": import_s}
    clock = _Clock(out)
    with clock("init_s"):
        params = built.family.load("init")(built.model_cfg, jax.random.key(0), resolution, channels=ds.channels)
        jax.block_until_ready(params)
    state = {"params": params, "opt_state": built.recipe.optimizer.init(params), "step": jnp.int32(0)}
    hyper = step_mod.make_hyper(peak_lr=0.4, warmup_steps=10, total_steps=100, seed=0)
    images = np.zeros((batch, resolution, resolution, ds.channels), np.uint8)
    batch_arrays = {"image": jnp.asarray(images), "label": jnp.zeros((batch,), jnp.int32)}
    train = step_mod.make_train_step(model, built.recipe, label_smoothing=built.optim_cfg.label_smoothing, mesh=mesh)
    with clock("train_lower_s"):
        lowered = train.lower(state, batch_arrays, hyper)
    with clock("train_compile_s"):
        lowered.compile()
    evaluate = step_mod.make_eval_step(model, mesh=mesh)
    eval_batch = dict(batch_arrays, mask=jnp.ones((batch,), jnp.float32))
    with clock("eval_lower_s"):
        lowered = evaluate.lower(params, eval_batch)
    with clock("eval_compile_s"):
        lowered.compile()
    out["total_s"] = sum(out[k] for k in PARTS)
    out["total_cpu_s"] = sum(out["cpu_" + k] for k in PARTS)
    return out


class _Clock:
    """Times a part both ways: wall seconds (what a user waits) and this process's CPU
    seconds over all its threads (far less sensitive to other load on a shared machine)."""

    def __init__(self, out: dict):
        self.out = out

    def __call__(self, part: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            w, c = time.perf_counter(), time.process_time()
            yield
            self.out[part] = time.perf_counter() - w
            self.out["cpu_" + part] = time.process_time() - c

        return timed()


def run_fresh(args, width: float, xla_flags: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + xla_flags).strip())
    cmd = [sys.executable, __file__, "--worker", "--depth", str(args.depth), "--widths", str(width),
           "--resolution", str(args.resolution), "--batch", str(args.batch), "--dataset", args.dataset]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"worker failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=float, default=0.25)
    ap.add_argument("--widths", default=DEMO_WIDTHS)
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dataset", default="procedural:classes=10,train_size=1024,heldout=256,res=16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    widths = [float(w) for w in args.widths.split(",")]
    if args.worker:
        print(json.dumps(measure(args.depth, widths[0], args.resolution, args.batch, args.dataset)))
        return 0
    print(f"{os.cpu_count()} cores; each cell a fresh process, persistent cache off; {args.repeats} repeats; "
          f"peer = same program with XLA_FLAGS={PEER_FLAGS}")
    print(f"{'shape':<22}{'init':>7}{'tr lower':>9}{'tr comp':>9}{'ev lower':>9}{'ev comp':>9}{'total':>8}"
          f"{'[min..max]':>14}{'cpu s':>7}{'peer total':>11}{'ours/peer':>10}{'load':>11}")
    rows = []
    for width in widths:
        load0 = os.getloadavg()[0]
        ours, peer = [], []
        for rep in range(args.repeats):
            pair = (("ours", ""), ("peer", PEER_FLAGS)) if rep % 2 == 0 else (("peer", PEER_FLAGS), ("ours", ""))
            for label, flags in pair:
                (ours if label == "ours" else peer).append(run_fresh(args, width, flags))
        med = {k: statistics.median(r[k] for r in ours) for k in (*PARTS, "total_s", "total_cpu_s")}
        peer_total = statistics.median(r["total_s"] for r in peer)
        totals = [r["total_s"] for r in ours]
        name = f"d{args.depth:g}-w{width:g}-r{args.resolution}-b{args.batch}"
        row = dict(shape=name, ours=ours, peer=peer, median=med, peer_total_s=peer_total,
                   load_before=load0, load_after=os.getloadavg()[0])
        rows.append(row)
        load = f"{load0:.1f}->{row['load_after']:.1f}"
        print(f"{name:<22}{med['init_s']:>7.2f}{med['train_lower_s']:>9.2f}{med['train_compile_s']:>9.2f}"
              f"{med['eval_lower_s']:>9.2f}{med['eval_compile_s']:>9.2f}{med['total_s']:>8.2f}"
              f"{f'[{min(totals):.1f}..{max(totals):.1f}]':>14}{med['total_cpu_s']:>7.1f}{peer_total:>11.2f}{med['total_s'] / peer_total:>10.2f}"
              f"{load:>11}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
