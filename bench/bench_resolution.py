"""Held-out loss against compute for three resolution recipes on the procedural data.

For each model size and epoch budget, the same peak learning rate trained three ways:
  fixed        every step at the full resolution R (the baseline every ratio is quoted against);
  half+ft      [M21]: the budget at about half the pixels, then a short fine-tune at R
               that keeps the classifier (a fine-tune run: scaling/train/finetune.py);
  progressive  [T21]: the budget in K equal stages ramping from a low side up to R
               (scaling/train/progressive.py), from half the side and from 3/4 of it.
Every run is evaluated at R on the same held-out split. Compute is printed as analytic
training FLOPs (each stage at its own resolution) and as measured train seconds
(`device_seconds`: train steps only) beside each recipe's whole wall time (compilation,
evaluation and checkpoints included). One seed, one learning rate: a recipe comparison
on this machine, not a tuned result. The machine and its load average are printed.

    nice python bench/bench_resolution.py                  # the docs' numbers (~10 min on 2 loaded cores)
    python bench/bench_resolution.py --train-size 256 --epochs 1 --widths 0.03125   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Two sizes of the NFNet family at depth 1/4 (the transfer spec's widths,
# sweeps/specs/transfer.toml), the demo's LR centre and AGC at batch 64
# (sweeps/specs/demo.toml).
WIDTHS = "0.0625,0.125"
DEPTH = 0.25
LR, AGC = 0.4, 0.04
# [M21] trains at about half the pixels (B0: 160 of 224 px, 0.51 of the pixels) and then
# fine-tunes briefly at full size (docs/references.md#g16-efficientnet-and-proxy-norm):
# 24 of 32 px is 0.56 of the pixels. Sides are multiples of 8: the NFNet's strides round
# feature maps up (SAME padding), so at these tiny sizes an odd side costs nearly what the
# next multiple does (18 px costs 0.92 of 24 px, not 0.56; scaling.models.counts).
FULL, HALF = 32, 24
# The fine-tune: 1/6 of the budget's epochs at a quarter of the peak LR (our choice; [M21]
# gives 2 epochs after a full ImageNet schedule).
FT_EPOCH_SHARE, FT_LR_SHARE = 1 / 6, 1 / 4
# Progressive: 3 stages, 16, 24, 32 px. [T21] uses 4 stages from 0.43 of the side
# (docs/references.md#efficientnetv2); 3 stages on multiples of 8 whose middle side is the
# half-pixel run's keep the compilations (one per side, 10-20 s each here) to three per
# model. And a gentle ramp, 24 then 32 px (no new side to compile), which separates the
# ramp itself from the cost of a 16 px stage at these toy sizes.
PROGRESSIVE = {"progressive": {"stages": 3, "min_resolution": 16},
               "progressive-24": {"stages": 2, "min_resolution": 24}}


def machine() -> dict:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
        mem = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return dict(cpu=cpu, cores=len(os.sched_getaffinity(0)), mem_gib=mem, platform=platform.platform(),
                jax=jax.__version__, loadavg_start=os.getloadavg())


def recipes(args, width: float, epochs: float, root: Path) -> dict[str, list]:
    """Each recipe as its list of (name, TrainConfig) runs, in order."""
    from scaling.train import TrainConfig

    base = dict(depth_mult=DEPTH, width_mult=width, dataset=args.dataset, epochs=epochs, lr=LR,
                batch_size=args.batch, resolution=FULL, eval_resolution=FULL, optimizer={"agc_clip": AGC},
                eval_points=0, checkpoint_every_steps=10**6, checkpoint_every_minutes=60.0,
                compile_cache_dir=args.compile_cache or None, seed=args.seed)
    half = TrainConfig(**{**base, "resolution": HALF})
    tag = f"w{width:g}-e{epochs:g}"
    ft = TrainConfig(**{**base, "epochs": epochs * FT_EPOCH_SHARE, "lr": LR * FT_LR_SHARE,
                        "parent_trial_id": f"half-{tag}", "parent_workdir": str(root / f"half-{tag}"),
                        "reset_classifier": False})
    return {
        "fixed": [(f"fixed-{tag}", TrainConfig(**base))],
        "half+ft": [(f"half-{tag}", half), (f"ft-{tag}", ft)],
        **{name: [(f"{name}-{tag}", TrainConfig(**{**base, "progressive": table}))]
           for name, table in PROGRESSIVE.items()},
    }


def run_recipe(runs: list, root: Path) -> dict:
    """Train the runs of one recipe; the last run's held-out numbers, the sums of compute."""
    from scaling.train import run_training

    t0 = time.perf_counter()
    results = [run_training(cfg, root / name) for name, cfg in runs]
    last = results[-1]
    return dict(loss=last.heldout_loss, accuracy=last.heldout_accuracy, params=last.params,
                flops=sum(r.train_flops for r in results), train_s=sum(r.device_seconds for r in results),
                compile_s=sum(r.compile_seconds for r in results), wall_s=time.perf_counter() - t0,
                examples=sum(r.examples_seen for r in results))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default=WIDTHS, help="NFNet width multipliers at depth 1/4, comma-separated")
    p.add_argument("--epochs", default="1.5,3", help="epoch budgets of every recipe's main run, comma-separated")
    p.add_argument("--train-size", type=int, default=8192)
    p.add_argument("--heldout", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile-cache", default="results/bench_jax_cache",
                   help="persistent XLA cache ('' for cold compiles every time)")
    p.add_argument("--json", type=Path, help="also write the rows and the machine here")
    args = p.parse_args(argv)
    args.dataset = f"procedural:classes=10,train_size={args.train_size},heldout={args.heldout},res={FULL}"
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['mem_gib']} GiB, {info['platform']}, "
          f"jax {info['jax']}; load average at start {info['loadavg_start'][0]:.2f}")
    print(f"data: {args.dataset}; batch {args.batch}; epochs {args.epochs}; LR {LR}; eval at {FULL} px")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-resolution-") as tmp:
        root = Path(tmp)
        for width in (float(w) for w in args.widths.split(",")):
            for epochs in (float(e) for e in args.epochs.split(",")):
                for recipe, runs in recipes(args, width, epochs, root).items():
                    row = dict(model=f"nfnet-d{DEPTH:g}-w{width:g}", epochs=epochs, recipe=recipe,
                               **run_recipe(runs, root))
                    rows.append(row)
                    print(f"  done {row['model']} {epochs:g} epochs {recipe}: loss {row['loss']:.4f} "
                          f"in {row['wall_s']:.0f} s", flush=True)
    info["loadavg_end"] = os.getloadavg()
    print()
    print("| model | epochs | recipe | held-out loss | top-1 | train FLOPs | x fixed | train s | x fixed | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ref = next(r for r in rows if (r["model"], r["epochs"], r["recipe"]) == (row["model"], row["epochs"], "fixed"))
        print(f"| {row['model']} | {row['epochs']:g} | {row['recipe']} | {row['loss']:.4f} | {row['accuracy']:.1%} "
              f"| {row['flops']:.3g} "
              f"| {row['flops'] / ref['flops']:.2f} | {row['train_s']:.1f} | {row['train_s'] / ref['train_s']:.2f} "
              f"| {row['wall_s']:.0f} |")
    print(f"\nload average (1, 5, 15 min): start {_load(info['loadavg_start'])}, end {_load(info['loadavg_end'])}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0 if all(r["loss"] is not None and math.isfinite(r["loss"]) for r in rows) else 1


def _load(avg) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


if __name__ == "__main__":
    sys.exit(main())
