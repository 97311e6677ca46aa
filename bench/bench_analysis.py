"""Benchmark: the full analysis over ~1000 synthetic trials with 1000 bootstrap resamples
(target < 10 s on the 2-core dev machine) and the planner (target < 1 s).

The "peer" is the target; for scale we also time a naive version of the frontier and
Approach 3 fits: scipy `curve_fit` (plain least squares, one start) refitted in a Python
loop for every bootstrap resample. Wall and CPU seconds are both printed because the
dev machine is shared (CPU time is what the code costs; wall time is what a user waits).

    python bench/bench_analysis.py [--resamples 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
from scipy.optimize import curve_fit

from analysis import frontier, load, planner, synthetic
from analysis.pipeline import run_analysis


def timed(fn, repeats):
    best_wall, best_cpu, out = np.inf, np.inf, None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - w0), min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, out


def naive(opt, resamples, seed=0):
    """curve_fit peer: offset law on the frontier + Approach 3, refitted per resample."""
    rng = np.random.default_rng(seed)
    c, l = opt["train_flops"].to_numpy(float), opt["heldout_loss"].to_numpy(float)
    on = frontier.envelope_mask(c, l)
    cc, ll = c[on] / c[on].min(), l[on]
    n, d, y = opt["params"].to_numpy(float), opt["examples_seen"].to_numpy(float), l

    def law(x, e, k, b):
        return e + k * x ** (-b)

    def a3(x, e, a, b, al, be):
        return e + a / x[0] ** al + b / x[1] ** be

    fails = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(resamples):
            i = rng.integers(0, cc.size, cc.size)
            j = rng.integers(0, y.size, y.size)
            try:
                curve_fit(law, cc[i], ll[i], p0=(ll.min() * 0.8, ll.max() - ll.min() * 0.8, 0.2), maxfev=20000)
                curve_fit(a3, np.stack([n[j], d[j]]), y[j], p0=(1.8, 480, 2000, 0.35, 0.37), maxfev=20000)
            except RuntimeError:
                fails += 1
    return fails


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    raw = synthetic.make_runs(seeds=3, lr_grid=2.0 ** np.arange(-5, 3), lr_curvature=0.05, seed=0)
    print(f"trials: {len(raw)}; resamples: {args.resamples}; cores: {len(os.sched_getaffinity(0))}; "
          f"load average: {os.getloadavg()[0]:.1f}")

    def full():
        runs, notes = load.clean(raw)
        return run_analysis(runs, notes, resamples=args.resamples, seed=0)

    wall, cpu, a = timed(full, args.repeats)
    print(f"full analysis (lr optima, 2 frontier laws, backtest, Approach 3, IsoFLOP): "
          f"{wall:.2f} s wall, {cpu:.2f} s CPU  (target < 10 s: {'OK' if wall < 10 else 'MISSED'})")
    for name, fit in [*a.laws.items(), ("approach3", a.approach3)]:
        print(f"  {name}: converged {fit.success} ({fit.status}); bootstrap converged {fit.converged_fraction:.1%}")

    def plan():
        runs, notes = load.clean(raw)
        pa = run_analysis(runs, notes, resamples=planner.PLAN_RESAMPLES, seed=0, laws=False, backtest=False,
                          polish=False)
        return planner.plan(pa, 2e4, "tpu-v4-core-hours")

    wall_p, cpu_p, p = timed(plan, args.repeats)
    print(f"planner (fit with {planner.PLAN_RESAMPLES} resamples + plan): {wall_p:.2f} s wall, {cpu_p:.2f} s CPU "
          f"(target < 1 s: {'OK' if wall_p < 1 else 'MISSED'}); recommends {p['recommended']['model']}")
    wall_n, cpu_n, fails = timed(lambda: naive(a.opt, args.resamples), 1)
    print(f"peer: naive curve_fit loop (offset law + Approach 3, least squares, one start, {args.resamples} "
          f"resamples): {wall_n:.2f} s wall, {cpu_n:.2f} s CPU, {fails} failed fits; "
          f"ratio full analysis / naive = {wall / wall_n:.2f}")


if __name__ == "__main__":
    main()
