"""[Mu23]'s data-constrained law: R* recovered from synthetic repeated-data runs, the loss
at 20 repetitions predicted within 3%, and the backtest prefers it when data repeat."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import repetition, synthetic

LAW = synthetic.TRUE_LAW  # [E24]'s refit: E 1.82, A 482, B 2085, alpha 0.348, beta 0.366
UNIQUE, R_STAR = 5e7, 5.0


def true_loss(n, d, unique=UNIQUE, r_star=R_STAR):
    d_eff = repetition.effective_data(d, unique, r_star)
    return LAW["E"] + LAW["A"] / np.asarray(n, float) ** LAW["alpha"] + LAW["B"] / d_eff ** LAW["beta"]


def runs(epochs=(0.5, 1, 2, 4, 8), noise=0.003, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for n in (2e7, 7e7, 2e8, 4e8):
        for ep in epochs:
            d = ep * UNIQUE
            rows.append({"model": f"m{n:.0e}", "params": n, "examples_seen": d, "epochs": ep,
                         "heldout_loss": true_loss(n, d) * np.exp(noise * rng.standard_normal())})
    return pd.DataFrame(rows)


def test_effective_data_is_d_up_to_one_epoch_then_saturates():
    d = np.array([0.5, 1, 2, 5, 100]) * UNIQUE
    d_eff = repetition.effective_data(d, UNIQUE, R_STAR)
    assert np.allclose(d_eff[:2], d[:2])
    assert np.all(np.diff(d_eff) > 0) and d_eff[-1] < UNIQUE * (1 + R_STAR)
    assert d_eff[2] == pytest.approx(UNIQUE * (1 + R_STAR * (1 - np.exp(-1 / R_STAR))))


def test_recovers_r_star_and_predicts_the_loss_at_20_repetitions():
    fit = repetition.fit_repetition(runs(), resamples=100)
    assert fit.params["R_star"] == pytest.approx(R_STAR, rel=0.3)
    lo, hi = fit.r_star_interval()
    assert lo <= R_STAR <= hi
    for n in (7e7, 4e8):
        d20 = 21 * UNIQUE  # 20 repetitions beyond the first epoch
        assert fit.predict(n, d20, UNIQUE) == pytest.approx(true_loss(n, d20), rel=0.03)
    assert fit.objective < fit.plain_objective  # the plain law cannot bend with repetition


def test_backtest_prefers_the_data_constrained_law_on_repeated_data():
    bt = repetition.backtest(runs(epochs=(0.5, 1, 2, 4, 8, 16))).set_index("form")
    assert bt.loc["data-constrained", "rmse_log"] < bt.loc["plain", "rmse_log"]



def test_a_backtest_whose_training_runs_never_repeat_defers_to_all_runs():
    """Budgets 0.5, 1 and 12 epochs: the backtest fits on <= 1 epoch, where the two laws are
    one law, so its RMSEs cannot judge and the verdict comes from all runs. One repeated
    budget cannot place R* either (B and beta bend to any three points along D), so R*'s
    interval reaches the grid's top and the plan keeps the plain law, saying why."""
    rng = np.random.default_rng(3)
    rows = [{"model": f"m{n:.0e}", "params": n, "examples_seen": ep * UNIQUE, "epochs": ep,
             "heldout_loss": true_loss(n, ep * UNIQUE) * np.exp(0.003 * rng.standard_normal())}
            for n in (2e7, 7e7, 2e8, 4e8) for ep in (0.5, 1, 12)]
    out = repetition.choose_law(pd.DataFrame(rows), resamples=100)
    assert not repetition._backtest_resolves(pd.DataFrame(out["backtest"]))
    assert out["law"] == "plain" and out["why"].startswith("backtest uninformative"), out["why"]
    assert "reaches the grid's top" in out["why"] and out["fit"].r_star_interval()[1] == repetition.R_STAR_GRID[-1]


@pytest.mark.parametrize("r_star, law", [(R_STAR, "data-constrained"), (1e6, "plain")])
def test_without_a_backtest_r_stars_interval_decides(r_star, law):
    """Five repeated budgets: all runs place R* = 5 (interval below the grid's top) and reject
    the plain law; with no penalty (R* = 1e6) the interval reaches the top and keeps it."""
    rng = np.random.default_rng(0)
    rows = [{"model": f"m{n:.0e}", "params": n, "examples_seen": ep * UNIQUE, "epochs": ep,
             "heldout_loss": true_loss(n, ep * UNIQUE, r_star=r_star) * np.exp(0.003 * rng.standard_normal())}
            for n in (2e7, 7e7, 2e8, 4e8) for ep in (0.5, 1, 2, 4, 8)]
    fit = repetition.fit_repetition(pd.DataFrame(rows), resamples=100)
    verdict, why = repetition._in_sample_verdict(fit)
    assert verdict == law, why
    assert ("excludes" in why) == (law == "data-constrained")
