"""A law whose irreducible loss E runs to its bound 0 must not report a tight interval
for E (the parametric bootstrap refits land on the bound too, so their spread is ~0)."""
import numpy as np

from analysis import frontier, load, synthetic
from analysis.pipeline import run_analysis


def test_floor_at_bound_withholds_e_and_says_so():
    c = np.geomspace(1e9, 1e12, 8)
    loss = 200 * c ** (-0.15 - 0.02 * np.log10(c / 1e9))  # steepening, like the demo's frontier: no floor
    fit = frontier.fit_law("offset", c, loss, resamples=100, envelope=False)
    assert fit.params["E"] < 1e-6
    lo, hi = fit.intervals()["E"]
    assert np.isnan(lo) and np.isnan(hi)
    assert all(np.isfinite(fit.intervals()[k]).all() for k in ("k", "b"))
    assert np.isnan(fit.to_dict()["intervals"]["E"]).all()


def test_a_real_floor_keeps_its_interval_and_no_note():
    runs, notes = load.clean(synthetic.make_runs(models=("F0", "F1", "F3", "F5"), epochs=(0.25, 1, 4)))
    a = run_analysis(runs, notes, resamples=50, backtest=False)
    assert a.approach3.params["E"] > 1  # the synthetic law's E is 1.82
    assert np.isfinite(a.approach3.to_dict()["intervals"]["E"]).all()
    assert not any("fitted at its bound" in n for n in a.notes)
