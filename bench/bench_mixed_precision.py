"""bfloat16 against float32 compute: train steps/s of the same run, interleaved.

    python bench/bench_mixed_precision.py                     # d0.25 w1/8, 16 px, batch 64
    python bench/bench_mixed_precision.py --width-mult 0.25 --repeats 5

Each repeat trains the same config twice through `run_training` (the production loop),
once per compute dtype, in ABBA order so drift in machine load hits both alike; steps/s
is steps / device_seconds (compile, evaluation and checkpoints excluded). The first pair
compiles and is dropped. Peer: the float32 run of the same repeat. Results:
docs/training.md, "Precision".
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

from scaling.train import TrainConfig, run_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth-mult", type=float, default=0.25)
    ap.add_argument("--width-mult", type=float, default=0.125)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="ABBA rounds (2 runs per dtype each)")
    args = ap.parse_args()

    def run(dtype: str) -> float:
        cfg = TrainConfig(depth_mult=args.depth_mult, width_mult=args.width_mult,
                          dataset=f"procedural:classes=10,train_size={args.steps * args.batch},heldout=64,res=16",
                          epochs=1.0, lr=0.4, batch_size=args.batch, resolution=16,
                          checkpoint_every_steps=10**6, compute_dtype=dtype)
        r = run_training(cfg, tempfile.mkdtemp(prefix=f"bench-{dtype}-"))
        rate = r.steps / r.device_seconds
        print(f"{dtype:9s} {rate:7.2f} steps/s  held-out {r.heldout_loss:.4f}  compile {r.compile_seconds:.1f} s",
              flush=True)
        return rate

    run("float32"), run("bfloat16")  # compile both, not counted
    rates = {"float32": [], "bfloat16": []}
    for _ in range(args.repeats):
        for dtype in ("float32", "bfloat16", "bfloat16", "float32"):
            rates[dtype].append(run(dtype))
    f32, bf16 = statistics.median(rates["float32"]), statistics.median(rates["bfloat16"])
    print(f"median steps/s: float32 {f32:.2f}, bfloat16 {bf16:.2f}; bfloat16 / float32 = {bf16 / f32:.2f}")


if __name__ == "__main__":
    main()
