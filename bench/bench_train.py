"""Train-step benchmark: a few NFNet family sizes for a fixed number of steps.

Prints per size: params, images/s, achieved model FLOP/s (analytic train FLOPs per
example x images/s) and utilisation against the hardware's peak (scaling.units; on CPU
the per-core peak is the measured fp32 matmul rate, see docs/units.md), compile time
(apart), and peak resident memory. Each size runs in its own process so that memory and
compile time are its own. The step timed is the production one (scaling.train.step:
jitted, data-parallel over all devices, LR as input) on a device-resident batch, so the
data pipeline is not part of the number (bench/bench_data.py measures that).

    python bench/bench_train.py                    # default sizes, 20 steps each
    python bench/bench_train.py --steps 50 --calibrate
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

# (depth_mult, width_mult, resolution, batch): small family members a 2-core CPU trains
# in seconds, spanning ~100x in FLOPs per example.
SIZES = [(0.25, 1 / 32, 32, 32), (0.5, 1 / 16, 32, 32), (0.5, 1 / 8, 32, 32), (1.0, 1 / 8, 32, 32)]


def one(depth: float, width: float, resolution: int, batch: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.models.config import family_config, model_name
    from scaling.models.counts import count
    from scaling.models.nfnet import NFNet, init_params
    from scaling.optim import OptimConfig, apply_updates, make_optimizer
    from scaling.train import step as step_mod

    cfg = family_config(depth, width, num_classes=100)
    counts = count(cfg, resolution)
    mesh = step_mod.make_mesh()
    optimizer = make_optimizer(OptimConfig())
    params = init_params(cfg, jax.random.key(0), resolution)
    rep, data = step_mod.replicated(mesh), step_mod.batch_sharded(mesh)
    state = jax.device_put({"params": params, "opt_state": optimizer.init(params),
                            "step": jnp.int32(0)}, rep)
    rng = np.random.default_rng(0)
    batch_np = {"image": rng.normal(size=(batch, resolution, resolution, 3)).astype(np.float32),
                "label": rng.integers(0, 100, size=batch).astype(np.int32)}
    batch_dev = jax.device_put(batch_np, data)
    hyper = jax.device_put(step_mod.make_hyper(peak_lr=0.1, warmup_steps=0, total_steps=10**6, seed=0), rep)
    fn = step_mod.make_train_step(NFNet(cfg), optimizer, apply_updates, label_smoothing=0.0, mesh=mesh)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch_dev, hyper).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch_dev, hyper)  # warm-up
    float(m["loss"])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch_dev, hyper)
        float(m["loss"])
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {"model": model_name(cfg), "params": counts.params, "resolution": resolution, "batch": batch,
            "train_flops_per_example": counts.train_flops, "step_s": step_s,
            "images_per_s": batch / step_s, "compile_s": compile_s,
            "model_flops_per_s": counts.train_flops * batch / step_s,
            "num_devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--calibrate", action="store_true", help="measure the CPU per-core peak first")
    ap.add_argument("--hardware", default=None, help="profile for utilisation (default: detected)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        d, w, r, b = json.loads(args.one)
        print(json.dumps(one(d, w, r, b, args.steps)))
        return

    from scaling import units

    rows = []
    for size in SIZES:
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(size), "--steps", str(args.steps)],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        rows.append(json.loads(out.stdout.splitlines()[-1]))
    hw = args.hardware or units.hardware_for_device_kind(rows[0]["device_kind"])
    profile = units.hardware(hw)
    if args.calibrate and hw == "cpu":
        profile = units.with_peak(profile, units.measure_cpu_peak_per_core(), "calibrated now")
    cores = units.cores_in_use(profile, rows[0]["num_devices"])
    peak = cores * profile.peak_flops_per_core
    print(f"machine: {_cpu_model()}, {cores} cores in use, load average {os.getloadavg()[0]:.1f}, "
          f"{rows[0]['num_devices']} x {rows[0]['device_kind']}; peak {peak:.3g} FLOP/s ({profile.source})")
    print(f"{'model':24} {'params':>9} {'res':>4} {'batch':>5} {'img/s':>8} {'GFLOP/s':>8} "
          f"{'util':>6} {'compile s':>9} {'maxrss MB':>9}")
    for r in rows:
        print(f"{r['model']:24} {r['params']:>9,} {r['resolution']:>4} {r['batch']:>5} {r['images_per_s']:>8.1f} "
              f"{r['model_flops_per_s'] / 1e9:>8.2f} {r['model_flops_per_s'] / peak:>6.1%} "
              f"{r['compile_s']:>9.1f} {r['max_rss_mb']:>9.0f}")


if __name__ == "__main__":
    main()
