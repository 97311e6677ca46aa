"""Is the procedural dataset learnable with a real scaling trend?

Trains NFNet family members with the project's own training loop
(`scaling.train.loop.run_training`: NFNet, SGD+Nesterov+AGC, warmup+cosine) on the
procedural dataset for increasing numbers of fresh examples (train_size is large, so
every run is under one epoch), and prints held-out loss against model size, examples and
training FLOPs as a markdown table (docs/data.md). One fixed learning rate, not tuned
per run: the trend, not the optimum, is the question.

    python bench/learnability.py [--widths 0.03125,0.0625,0.125] [--examples 4096,16384,65536]
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="procedural:classes=10,train_size=1000000,heldout=1000,res=16")
    ap.add_argument("--depth", type=float, default=0.25)
    ap.add_argument("--widths", default="0.03125,0.0625,0.125")
    ap.add_argument("--examples", default="4096,16384,65536")
    ap.add_argument("--lr", type=float, default=0.4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=None, help="also append JSON lines here")
    args = ap.parse_args()

    from scaling.data import get_dataset
    from scaling.train.config import TrainConfig
    from scaling.train.loop import run_training

    train_size = get_dataset(args.dataset).train_size
    print(f"dataset {args.dataset}; depth {args.depth}; batch {args.batch}; lr {args.lr}")
    print("| width | params | examples | train FLOPs | held-out loss | held-out acc | wall s |")
    print("|---|---|---|---|---|---|---|")
    for width in (float(w) for w in args.widths.split(",")):
        for examples in (int(e) for e in args.examples.split(",")):
            t0 = time.time()
            config = TrainConfig(depth_mult=args.depth, width_mult=width, dataset=args.dataset,
                                 epochs=examples / train_size, lr=args.lr, batch_size=args.batch,
                                 compile_cache_dir=tempfile.gettempdir() + "/scaling_jax_cache")
            r = run_training(config, tempfile.mkdtemp(prefix="learn-"))
            row = {"width": width, "params": r.params, "examples": r.examples_seen, "train_flops": r.train_flops,
                   "heldout_loss": r.heldout_loss, "heldout_accuracy": r.heldout_accuracy,
                   "wall_s": round(time.time() - t0, 1), "status": r.status}
            print(f"| {width:g} | {r.params:,} | {r.examples_seen:,} | {r.train_flops:.2e} | "
                  f"{r.heldout_loss:.3f} | {r.heldout_accuracy:.3f} | {row['wall_s']} |", flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(f"chance loss = ln(classes) = {math.log(get_dataset(args.dataset).num_classes):.3f}")


if __name__ == "__main__":
    main()
