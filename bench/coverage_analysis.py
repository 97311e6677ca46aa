"""Measure how often the analysis' nominal 80% / 95% intervals cover the truth.

Synthetic studies drawn from a known law (analysis.synthetic: [E24]'s Chinchilla refit
over [B21] Table 3 sizes, 1% log-normal noise), fitted exactly as `scaling analyze` /
`scaling plan` do, once per seed, with both interval methods ("parametric", the default,
and "cases", the old point-resampling bootstrap). Quantities: alpha, beta and the
exponent a_N of Approach 3; N_opt and the predicted loss L(N_opt, D_opt) at the largest
fitted compute and 1 and 3 decades beyond it; b of the frontier law L = k C^-b.
The tables go into docs/analysis.md.

    python bench/coverage_analysis.py [--seeds 100] [--resamples 200] [--procs 2]
"""
from __future__ import annotations

import argparse
import time
from multiprocessing import Pool

import numpy as np
import pandas as pd

from analysis import chinchilla, fitting, frontier, synthetic

LEVELS = (0.8, 0.95)
DESIGNS = {  # name -> (models, epoch budgets); 4x3 is the demo's shape, 7x6 the tests'
    "2x3": (("F0", "F3"), (0.25, 1, 4)),
    "3x3": (("F0", "F2", "F4"), (0.25, 1, 4)),
    "4x3": (("F0", "F2", "F4", "F6"), (0.25, 1, 4)),
    "4x6": (("F0", "F2", "F4", "F6"), synthetic.EPOCHS),
    "7x6": (tuple(synthetic.NFNET_TABLE3["model"]), synthetic.EPOCHS),
}
DECADES = (0, 1, 3)  # budgets: the largest fitted compute x 10^k
FRONTIERS = {"power n=4": ("power", 4), "power n=6": ("power", 6), "power n=10": ("power", 10),
             "power n=20": ("power", 20), "offset n=6": ("offset", 6), "offset n=10": ("offset", 10),
             "offset n=20": ("offset", 20)}
FRONTIER_TRUTH = {"power": {"k": 60.0, "b": 0.05}, "offset": {"E": 1.5, "k": 300.0, "b": 0.15}}


def _covers(samples, truth):
    """{level: True/False/None (withheld)} for one quantity."""
    out = {}
    for level in LEVELS:
        lo, hi = fitting.interval(np.asarray(samples, float), level)
        out[level] = None if not np.isfinite(lo) else bool(lo <= truth <= hi)
    return out


def approach3_trial(args):
    design, method, seed, resamples = args
    models, epochs = DESIGNS[design]
    opt = synthetic.make_optima(models=models, epochs=epochs, noise=0.01, seed=seed)
    fit = chinchilla.fit_approach3(opt, resamples=resamples, seed=seed, polish=False, method=method)
    law, s = synthetic.TRUE_LAW, fit.samples
    g = fit.flops.gamma
    rows = {"alpha": _covers(s["alpha"], law["alpha"]), "beta": _covers(s["beta"], law["beta"]),
            "a_N": _covers(fit.exponent_samples()["a_N"], law["beta"] / (law["alpha"] + g * law["beta"]))}
    for k in DECADES:
        c = float(opt["train_flops"].max()) * 10.0**k
        n_true, d_true = (float(v) for v in fit._optimal(np.array(c), law))
        n_s, _ = fit.optimal_samples([c])
        rows[f"N_opt +{k}dec"] = _covers(n_s[:, 0], n_true)
        with np.errstate(all="ignore"):
            loss_s = fit.predict(np.array([n_true]), np.array([d_true]), samples=True)[:, 0]
        rows[f"loss +{k}dec"] = _covers(loss_s, float(synthetic.true_loss(n_true, d_true)))
    return design, method, len(opt), fit.dof, rows


def frontier_trial(args):
    name, method, seed, resamples = args
    form, n = FRONTIERS[name]
    truth = FRONTIER_TRUTH[form]
    c, loss = synthetic.make_frontier(n=n, noise=0.02, seed=seed, **truth)
    fit = frontier.fit_law(form, c, loss, resamples=resamples, seed=seed, method=method)
    return name, method, fit.n_points, fit.dof, {"b": _covers(fit.samples["b"], truth["b"])}


def table(results) -> pd.DataFrame:
    """Rows (design, points, dof, quantity); per method and level the fraction of seeds
    whose interval covered the truth, among those where an interval was given."""
    rows = []
    for design, method, n, dof, covers in results:
        for q, cov in covers.items():
            for level, hit in cov.items():
                rows.append({"design": design, "points": n, "dof": dof, "method": method, "quantity": q,
                             "level": level, "hit": np.nan if hit is None else float(hit)})
    df = pd.DataFrame(rows)
    keys = ["design", "quantity", "method", "level"]
    out = df.groupby(keys, sort=False).agg(points=("points", "median"), dof=("dof", "median"),
                                           given=("hit", "count"), coverage=("hit", "mean")).reset_index()
    out["cell"] = [f"{c:.2f}" if g else "withheld" for c, g in zip(out["coverage"], out["given"])]
    out["col"] = out["method"] + " " + (100 * out["level"]).round().astype(int).astype(str) + "%"
    return out.pivot(index=["design", "points", "dof", "quantity"], columns="col", values="cell")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--frontiers", default=",".join(FRONTIERS))
    ap.add_argument("--methods", default=",".join(fitting.INTERVAL_METHODS))
    args = ap.parse_args()
    t0 = time.time()
    jobs_a = [(d, m, s, args.resamples) for d in args.designs.split(",") if d
              for m in args.methods.split(",") for s in range(args.seeds)]
    jobs_f = [(f, m, s, args.resamples) for f in args.frontiers.split(",") if f
              for m in args.methods.split(",") for s in range(args.seeds)]
    with Pool(args.procs) as pool:
        res_a = pool.map(approach3_trial, jobs_a, chunksize=4)
        res_f = pool.map(frontier_trial, jobs_f, chunksize=8)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    for name, res in (("Approach 3", res_a), ("frontier law", res_f)):
        if res:
            print(f"## {name}: coverage of nominal {LEVELS} intervals ({args.seeds} seeds, {args.resamples} resamples)")
            print(table(res).round(2).to_string())
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
