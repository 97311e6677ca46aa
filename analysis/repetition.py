"""Repeated data: [Mu23]'s data-constrained law, fitted beside the plain Approach 3 law.

A run that sees its U unique examples D/U times gets less from the repeats than from new
data. [Mu23] (docs/references.md#repeated-data) replaces D by an effective count
    D' = U + U R* (1 - exp(-R / R*)),   R = D/U - 1 repetitions beyond the first epoch,
(D' = D for a run of at most one epoch), so that repeated data is worth almost as much
as fresh data for a few epochs and returns fade over about R* repetitions. The law is
L(N, D') = E + A/N^alpha + B/D'^beta. For a fixed R* it is the Approach 3 law on log D',
so R* is profiled: the LSE fit (analysis.fitting) at each R* of a log grid, refined by a
golden-section search on log R*; the bootstrap refits do the same per resample.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import chinchilla, fitting

# Profile grid of R* (repetitions): [Mu23] fit R* ~ 15 for language models; the grid spans
# 0.3 .. 300 so an image-data R* two decades either side is found, not clipped.
R_STAR_GRID = np.geomspace(0.3, 300.0, 25)
GOLDEN_STEPS = 30  # golden-section refinements of log R* around the best grid point


def effective_data(examples_seen, unique, r_star):
    """D' of [Mu23]: D for D <= U, else U + U R* (1 - exp(-(D/U - 1)/R*)). Broadcasts."""
    d = np.asarray(examples_seen, float)
    u = np.asarray(unique, float)
    r = np.maximum(d / u - 1.0, 0.0)
    r_star = np.asarray(r_star, float)
    return np.where(d <= u, d, u + u * r_star * (1.0 - np.exp(-r / r_star)))


@dataclass
class RepetitionFit:
    params: dict[str, float]  # E, A, B, alpha, beta, R_star
    objective: float
    plain_objective: float  # the same points under the plain law (no repetition penalty)
    unique: np.ndarray = field(repr=False)
    r_star_samples: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    level: float = 0.95
    max_repetitions: float = 0.0  # the most repetitions among the fitted runs

    def predict(self, n, examples_seen, unique):
        p = self.params
        d_eff = effective_data(examples_seen, unique, p["R_star"])
        return p["E"] + p["A"] / np.asarray(n, float) ** p["alpha"] + p["B"] / d_eff ** p["beta"]

    def r_star_interval(self) -> tuple[float, float]:
        return fitting.interval(self.r_star_samples, self.level)

    def to_dict(self) -> dict:
        return {"params": self.params, "R_star_interval": self.r_star_interval(), "level": self.level,
                "objective": self.objective, "plain_objective": self.plain_objective,
                "max_repetitions": self.max_repetitions}


def _profile(log_n, examples, unique, y, r_star, starts, polish=False):
    designs = chinchilla._designs(log_n, np.log(effective_data(examples, unique, r_star)))
    return fitting.fit_multistart(starts, designs, y, polish=polish)


def _best_r_star(objective_at) -> float:
    """argmin of objective_at(R*) over the grid, refined by golden section in log R*."""
    grid = np.log(R_STAR_GRID)
    values = np.array([objective_at(np.exp(g)) for g in grid])
    k = int(np.argmin(values))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    phi = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
    fa, fb = objective_at(np.exp(a)), objective_at(np.exp(b))
    for _ in range(GOLDEN_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - phi * (hi - lo)
            fa = objective_at(np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + phi * (hi - lo)
            fb = objective_at(np.exp(b))
    best = (a + b) / 2.0
    return float(np.exp(best if objective_at(np.exp(best)) <= values[k] else grid[k]))


def fit_repetition(opt: pd.DataFrame, unique=None, resamples: int = 0, seed: int = 0,
                   level: float = 0.95, starts: np.ndarray = chinchilla.INIT_GRID) -> RepetitionFit:
    """Fit the data-constrained law to lr-optimal runs (params, examples_seen, heldout_loss
    and, unless `unique` is given, epochs: U = examples_seen / epochs per run)."""
    pts = opt.dropna(subset=["params", "examples_seen", "heldout_loss"])
    if unique is None:
        if "epochs" not in pts or pts["epochs"].isna().any():
            raise ValueError("the data-constrained law needs each run's unique examples: epochs, or pass unique=")
        unique = (pts["examples_seen"] / pts["epochs"]).to_numpy(float)
    unique = np.broadcast_to(np.asarray(unique, float), (len(pts),)).copy()
    log_n = np.log(pts["params"].to_numpy(float))
    examples = pts["examples_seen"].to_numpy(float)
    y = np.log(pts["heldout_loss"].to_numpy(float))
    plain = fitting.fit_multistart(starts, chinchilla._designs(log_n, np.log(examples)), y, polish=False)
    cache: dict[float, fitting.PointFit] = {}

    def at(r_star: float) -> float:
        if r_star not in cache:
            cache[r_star] = _profile(log_n, examples, unique, y, r_star, starts)
        return cache[r_star].loss

    r_star = _best_r_star(at)
    point = _profile(log_n, examples, unique, y, r_star, starts, polish=True)
    named = chinchilla._named(point.theta)
    params = {k: float(v[0]) for k, v in named.items()} | {"R_star": r_star}
    samples = np.full(resamples, np.nan)
    if resamples:
        rng = np.random.default_rng(seed)
        designs = chinchilla._designs(log_n, np.log(effective_data(examples, unique, r_star)))
        resid, jac = fitting.linearise(point.theta, designs, y)
        y_sim = fitting.parametric_samples(y - resid, resid, fitting.residual_dof(jac), resamples, rng)
        losses = []
        for g in R_STAR_GRID:  # each resample's profile over the grid, batched over resamples
            d = chinchilla._designs(log_n, np.log(effective_data(examples, unique, g)))
            with np.errstate(all="ignore"):
                res = fitting.minimize_batched(np.repeat(point.theta[None], resamples, axis=0), d, y_sim,
                                               np.ones(y.size), max_iter=fitting.BOOTSTRAP_MAX_ITER)
            losses.append(res.loss)
        samples = R_STAR_GRID[np.argmin(np.array(losses), axis=0)]
    return RepetitionFit(params, point.loss, plain.loss, unique, samples, level,
                         float(np.max(examples / unique - 1.0)))


def backtest(opt: pd.DataFrame, holdout_epochs: float | None = None) -> pd.DataFrame:
    """[A22]-style comparison of the two laws on repetition: fit both on the runs with at
    most `holdout_epochs` epochs (default: all but the largest epoch budget), score the
    log-loss RMSE of each on the runs above it. The plan uses the law that predicts better."""
    pts = opt.dropna(subset=["params", "examples_seen", "heldout_loss", "epochs"])
    budgets = np.sort(pts["epochs"].unique())
    if budgets.size < 3:
        return pd.DataFrame()
    cut = budgets[-2] if holdout_epochs is None else holdout_epochs
    train, test = pts[pts["epochs"] <= cut], pts[pts["epochs"] > cut]
    if test.empty or train["epochs"].nunique() < 2:
        return pd.DataFrame()
    rows = []
    rep = fit_repetition(train)
    unique = (test["examples_seen"] / test["epochs"]).to_numpy(float)
    err = np.log(rep.predict(test["params"], test["examples_seen"], unique)) - np.log(test["heldout_loss"])
    rows.append({"form": "data-constrained", "fit_epochs_max": cut, "test_epochs_min": float(test["epochs"].min()),
                 "n_test": len(test), "rmse_log": float(np.sqrt(np.mean(err ** 2)))})
    log_n, log_d = np.log(train["params"].to_numpy(float)), np.log(train["examples_seen"].to_numpy(float))
    plain = fitting.fit_multistart(chinchilla.INIT_GRID, chinchilla._designs(log_n, log_d),
                                   np.log(train["heldout_loss"].to_numpy(float)), polish=False)
    p = {k: float(v[0]) for k, v in chinchilla._named(plain.theta).items()}
    pred = p["E"] + p["A"] / test["params"] ** p["alpha"] + p["B"] / test["examples_seen"] ** p["beta"]
    err = np.log(pred) - np.log(test["heldout_loss"])
    rows.append({"form": "plain", "fit_epochs_max": cut, "test_epochs_min": float(test["epochs"].min()),
                 "n_test": len(test), "rmse_log": float(np.sqrt(np.mean(err ** 2)))})
    return pd.DataFrame(rows)
