"""Planner / Approach 3 intervals with few points: honest coverage, withheld when the
design does not identify the law, growing with extrapolation, and the few-points WARNING.

The coverage numbers these tests rest on are measured by bench/coverage_analysis.py and
tabulated in docs/analysis.md."""
from __future__ import annotations

import numpy as np
import pytest

from analysis import chinchilla, fitting, frontier, load, planner, synthetic
from analysis.pipeline import WARNING, run_analysis

LAW = synthetic.TRUE_LAW
TRUTH = np.array([[np.log(LAW["A"]), np.log(LAW["B"]), np.log(LAW["E"]), LAW["alpha"], LAW["beta"]]])


def _coverage(models, epochs, method, seeds, level=0.8, decades=1.0, resamples=100):
    """Fractions of seeds whose `level` intervals hold the true a_N (the exponent of
    N_opt ~ C^a_N) and the true N_opt `decades` beyond the largest run. Point fits start at
    the truth (skips the 4500-start grid, tested in test_analysis.py); the rest is
    fit_approach3's own code."""
    hits = []
    for seed in range(seeds):
        opt = synthetic.make_optima(models=models, epochs=epochs, noise=0.01, seed=seed)
        fit = chinchilla.fit_approach3(opt, resamples=resamples, seed=seed, polish=False, method=method,
                                       starts=TRUTH)
        c = float(opt["train_flops"].max()) * 10**decades
        a_n = LAW["beta"] / (LAW["alpha"] + fit.flops.gamma * LAW["beta"])
        lo, hi = fitting.interval(fit.exponent_samples()["a_N"], level)
        n_lo, n_hi = fitting.interval(fit.optimal_samples([c])[0][:, 0], level)
        hits.append((lo <= a_n <= hi, n_lo <= float(fit._optimal(np.array(c), LAW)[0]) <= n_hi))
    return np.mean(hits, axis=0)


@pytest.mark.slow  # ~19 s CPU: 60 fits of 100 refits, the fewest seeds that separate the methods
def test_small_design_intervals_cover_and_the_old_bootstrap_did_not():
    """3 sizes x 3 epoch budgets (9 points, the smallest identified design), 30 seeds: the
    80% intervals of a_N and of N_opt one decade beyond the runs must hold the truth in
    >= 0.62 of the seeds (0.8 - 2.5 binomial SD of 0.073; measured over 60 seeds with the
    grid search: 0.82 and 0.90). The old point-resampling bootstrap ("cases", measured a_N
    0.40; here 0.50) fails the same check; it is computed on the same seeds to keep the test
    honest (checked: new 0.80 / 0.87, old 0.50 / 0.63)."""
    design = (("F0", "F2", "F4"), (0.25, 1, 4))
    new = _coverage(*design, method="parametric", seeds=30)
    old = _coverage(*design, method="cases", seeds=30)
    assert (new >= 0.62).all(), new
    assert old[0] < 0.62, old  # if this fails, the test no longer tells the two methods apart


@pytest.fixture(scope="module")
def two_sizes():
    """The README's `quick` shape: 2 model sizes x 3 epoch budgets x 3 lrs = 6 optima."""
    runs, notes = load.clean(synthetic.make_runs(models=("F0", "F3"), epochs=(0.5, 1, 2), lr_grid=(0.8, 1.6, 3.2),
                                                 lr_curvature=0.05, noise=0.01))
    return run_analysis(runs, notes, resamples=50, laws=False, backtest=False, polish=False)


def test_two_sizes_withhold_intervals_and_warn(two_sizes):
    fit = two_sizes.approach3
    assert "3 distinct model sizes" in fit.withheld and fit.n_sizes == 2
    assert np.isnan(fit.samples["alpha"]).all() and np.isnan(fit.converged_fraction)
    assert fit.same_rate()["verdict"].startswith("not tested (intervals withheld")
    p = planner.plan(two_sizes, two_sizes.compute_range[1] * 10**2.9, "flops", extrapolate=True)
    assert np.isnan(p["compute_optimal"]["params_interval"]).all() and np.isnan(p["predicted_loss_interval"]).all()
    text = planner.format_plan(p).splitlines()
    warning = text[0]
    # one few-points warning; the plan's own warnings (shape, epoch extrapolation) follow it
    assert warning.startswith(f"{WARNING}few points") and len([t for t in text if "few points" in t]) == 1
    assert all(t.startswith((f"{WARNING}few points", f"{WARNING}shape extrapolation", f"{WARNING}epoch extrapolation"))
               for t in text if t.startswith(WARNING))
    for fact in ("6 (model, epochs) optima", "2 model size(s) x 3 epoch budget(s)", "add 2 more model size(s)"):
        assert fact in warning, (fact, warning)
    assert "(95% interval withheld)" in next(t for t in text if t.startswith("compute-optimal size")) and any(t.startswith("intervals withheld: the N exponent") for t in text)
    assert two_sizes.notes[0] == warning and two_sizes.warnings == [warning]


def test_no_warning_for_a_large_design():
    runs, notes = load.clean(synthetic.make_runs(models=("F0", "F1", "F3", "F5"), epochs=(0.25, 1, 4),
                                                 lr_grid=2.0 ** np.arange(-3, 3), lr_curvature=0.05, noise=0.005))
    a = run_analysis(runs, notes, resamples=20, laws=False, backtest=False, polish=False)
    assert a.approach3.withheld == "" and a.approach3.dof >= 5 and a.warnings == []


def test_intervals_grow_with_extrapolation():
    """The further beyond the runs, the wider the N_opt and predicted-loss intervals (in log)."""
    runs, notes = load.clean(synthetic.make_runs(models=("F0", "F2", "F4", "F6"), epochs=(0.25, 1, 4),
                                                 lr_grid=2.0 ** np.arange(-3, 3), lr_curvature=0.05, noise=0.01))
    a = run_analysis(runs, notes, resamples=100, laws=False, backtest=False, polish=False)
    widths = []
    for decades in (0, 1, 2, 3):
        p = planner.plan(a, a.compute_range[1] * 10**decades, "flops", extrapolate=True)
        n_lo, n_hi = p["compute_optimal"]["params_interval"]
        l_lo, l_hi = p["predicted_loss_interval"]
        assert n_lo <= p["compute_optimal"]["params"] <= n_hi and l_lo <= p["predicted_loss"] <= l_hi
        widths.append((np.log(n_hi / n_lo), np.log(l_hi / l_lo)))
    widths = np.array(widths)
    assert (np.diff(widths, axis=0) > 0).all(), widths
