"""The pooled learning-rate law (analysis.lr.fit_lr_law): recovers known slopes, says
when a slope is not resolved, and refuses designs that cannot pin it."""
import numpy as np
import pandas as pd

from analysis.lr import fit_lr_law


def _cells(s=-0.3, t=-0.25, a=3.0, noise=0.0, seed=0, epochs=(0.5, 1, 2, 4), params=(1e5, 4e5, 1.6e6, 6.4e6)):
    rng = np.random.default_rng(seed)
    rows = [{"model": f"m{n:g}", "epochs": e, "params": n, "edge": "",
             "lr_opt": 2 ** (a + s * np.log2(e) + t * np.log2(n) + noise * rng.standard_normal())}
            for n in params for e in epochs]
    return pd.DataFrame(rows)


def test_exact_cells_give_the_slopes_and_tight_intervals():
    law, why = fit_lr_law(_cells())
    assert why == ""
    assert np.isclose(law.s, -0.3) and np.isclose(law.t, -0.25) and np.isclose(law.a, 3.0)
    assert law.resolved("s") and law.resolved("t")
    lo, hi = law.band(1e6, 8.0)
    assert np.isclose(lo, law.predict(1e6, 8.0)) and np.isclose(hi, law.predict(1e6, 8.0))


def test_a_flat_direction_is_reported_unresolved_and_a_real_one_resolved():
    # No epoch trend, a strong size trend, scatter of a factor 1.6 per cell (as in the demo).
    law, _ = fit_lr_law(_cells(s=0.0, t=-0.5, noise=0.7, seed=3))
    assert not law.resolved("s")
    assert law.resolved("t")
    assert "not resolved" in law.describe() and "resolved" in law.describe()
    d = law.to_dict()
    assert d["s_resolved"] is False and d["t_resolved"] is True and d["n_cells"] == 16


def test_interval_covers_the_true_slope_most_of_the_time():
    hits = [fit_lr_law(_cells(noise=0.7, seed=k), level=0.9)[0].intervals()["t"] for k in range(40)]
    cover = np.mean([lo <= -0.25 <= hi for lo, hi in hits])
    assert 0.8 <= cover <= 0.97, cover  # nominal 0.9 (t-intervals: exact for normal scatter)


def test_edge_cells_are_left_out_and_tiny_designs_refused():
    cells = _cells()
    cells.loc[0, "edge"] = "high"
    cells.loc[0, "lr_opt"] = 1e6  # a bound, not an estimate: must not move the fit
    law, _ = fit_lr_law(cells)
    assert law.n_edge == 1 and np.isclose(law.s, -0.3)
    law, why = fit_lr_law(_cells(epochs=(1.0,), params=(1e5, 2e5, 4e5, 8e5, 1.6e6)))
    assert law is None and "2 epoch budgets" in why
    law, why = fit_lr_law(_cells().head(4))
    assert law is None and "at least 5" in why


def test_flat_cells_weigh_little():
    # A cell whose loss hardly changes with lr (curvature 100x smaller) and whose vertex
    # is therefore wild must barely move the law; with equal weights it would.
    cells = _cells().assign(curvature=0.2)
    cells.loc[0, ["lr_opt", "curvature"]] = [cells.loc[0, "lr_opt"] * 16, 0.002]
    weighted, _ = fit_lr_law(cells)
    equal, _ = fit_lr_law(cells.drop(columns="curvature"))
    assert abs(weighted.s + 0.3) < 0.01 and abs(equal.s + 0.3) > 0.1


def test_lr_figure_draws_when_every_optimum_is_on_the_edge():
    """A one-model sweep with a 2-point lr grid (docs/pods.md's smoke recipe): no interior
    optimum, no pooled law; the figure must still draw (it crashed on an empty log axis)."""
    from analysis import load, plots, synthetic
    from analysis.pipeline import run_analysis

    runs, notes = load.clean(synthetic.make_runs(models=("F0",), epochs=(0.25, 1), lr_grid=[0.5, 1.0]))
    a = run_analysis(runs, notes, resamples=20, backtest=False, approach3=False)
    assert (a.opt["edge"] != "").all() and a.lr_law is None
    assert any("lr law not fitted" in n for n in a.notes)
    fig = plots.lr_figure(a)
    fig.canvas.draw()  # layout and log axes are resolved here
    plots.plt.close(fig)

