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
# The data-constrained law has one parameter more than the plain one: the plan uses it only
# when it cuts the backtest's log-loss RMSE by at least this fraction (a tie, or a gain at
# the noise level, keeps the simpler law; docs/analysis.md#data-repetition).
BACKTEST_MARGIN = 0.10
# A backtest whose training runs (all but the largest epoch budget) fit no better with the
# penalty than without it (objective cut by less than this fraction) cannot place R*: both
# laws then extrapolate alike, which says nothing about repetition, so the verdict falls back
# to all runs (docs/analysis.md#data-repetition). 1% is far above the profile's numerical
# flatness (objectives equal to ~1e-12 when R* is unresolved) and far below a resolved
# penalty's cut (4x on the planner tests' R* = 3 runs).
BACKTEST_RESOLVES = 0.01
GOLDEN_STEPS = 15  # golden-section refinements of log R* around the best grid point (to 0.03%)


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
    samples: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # per resample, with R_star

    def predict_samples(self, n, examples_seen, unique) -> np.ndarray:
        """The loss under each bootstrap resample's law (its own R*): shape (B,) + broadcast."""
        s = {k: np.asarray(v, float).reshape((-1,) + (1,) * np.ndim(n)) for k, v in self.samples.items()}
        with np.errstate(all="ignore"):
            d_eff = effective_data(np.asarray(examples_seen, float)[None], unique, s["R_star"])
            return s["E"] + s["A"] / np.asarray(n, float)[None] ** s["alpha"] + s["B"] / d_eff ** s["beta"]

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


WARM_STARTS = 8  # at most this many starts: warm starts, descended directly (no screening)


def _profile(log_n, examples, unique, y, r_star, starts, polish=False, max_iter=None):
    """The fit at a fixed R*. Few (warm) starts are descended directly, `max_iter` capping
    the iterations: a profile only needs the objective's ordering, and an R* far from the
    optimum crawls for thousands of iterations to a loss far above it."""
    designs = chinchilla._designs(log_n, np.log(effective_data(examples, unique, r_star)))
    starts = np.atleast_2d(np.asarray(starts, float))
    if starts.shape[0] > WARM_STARTS:
        return fitting.fit_multistart(starts, designs, y, polish=polish)
    res = fitting.minimize_batched(starts, designs, y, np.ones(y.size), max_iter=max_iter or 2000)
    k = int(np.nanargmin(res.loss))
    return fitting.PointFit(res.theta[k], float(res.loss[k]), f"batched IRLS from {len(starts)} warm start(s)",
                            bool(res.converged[k]), len(starts), int(np.sum(res.loss <= res.loss[k] * (1 + 1e-9))))


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
                   level: float = 0.95, starts: np.ndarray = chinchilla.INIT_GRID,
                   profile_iter: int | None = None) -> RepetitionFit:
    """Fit the data-constrained law to lr-optimal runs (params, examples_seen, heldout_loss
    and, unless `unique` is given, epochs: U = examples_seen / epochs per run). With a few
    warm `starts` (the planner: the plain law's point), `profile_iter` caps each profile
    step's and each bootstrap refit's iterations (the final fit at the chosen R* is not
    capped)."""
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
            cache[r_star] = _profile(log_n, examples, unique, y, r_star, starts, max_iter=profile_iter)
        return cache[r_star].loss

    r_star = _best_r_star(at)
    point = _profile(log_n, examples, unique, y, r_star, starts, polish=True,
                     max_iter=None if profile_iter is None else 10 * profile_iter)
    named = chinchilla._named(point.theta)
    params = {k: float(v[0]) for k, v in named.items()} | {"R_star": r_star}
    samples = np.full(resamples, np.nan)
    if resamples:
        rng = np.random.default_rng(seed)
        designs = chinchilla._designs(log_n, np.log(effective_data(examples, unique, r_star)))
        resid, jac = fitting.linearise(point.theta, designs, y)
        y_sim = fitting.parametric_samples(y - resid, resid, fitting.residual_dof(jac), resamples, rng)
        losses, thetas = [], []
        for g in R_STAR_GRID:  # each resample's profile over the grid, batched over resamples
            d = chinchilla._designs(log_n, np.log(effective_data(examples, unique, g)))
            with np.errstate(all="ignore"):
                res = fitting.minimize_batched(np.repeat(point.theta[None], resamples, axis=0), d, y_sim,
                                               np.ones(y.size),
                                               max_iter=min(fitting.BOOTSTRAP_MAX_ITER, profile_iter or 10**9))
            losses.append(res.loss)
            thetas.append(res.theta)
        best = np.argmin(np.array(losses), axis=0)
        samples = R_STAR_GRID[best]
        theta = np.array(thetas)[best, np.arange(resamples)]
        per_resample = chinchilla._named(theta) | {"R_star": samples}
    else:
        per_resample = {}
    return RepetitionFit(params, point.loss, plain.loss, unique, samples, level,
                         float(np.max(examples / unique - 1.0)), per_resample)


def backtest(opt: pd.DataFrame, holdout_epochs: float | None = None, starts: np.ndarray = chinchilla.INIT_GRID,
             profile_iter: int | None = None) -> pd.DataFrame:
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
    rep = fit_repetition(train, starts=starts, profile_iter=profile_iter)
    unique = (test["examples_seen"] / test["epochs"]).to_numpy(float)
    err = np.log(rep.predict(test["params"], test["examples_seen"], unique)) - np.log(test["heldout_loss"])
    rows.append({"form": "data-constrained", "fit_epochs_max": cut, "test_epochs_min": float(test["epochs"].min()),
                 "n_test": len(test), "rmse_log": float(np.sqrt(np.mean(err ** 2))),
                 "train_R_star": rep.params["R_star"], "train_objective": rep.objective,
                 "train_plain_objective": rep.plain_objective})
    log_n, log_d = np.log(train["params"].to_numpy(float)), np.log(train["examples_seen"].to_numpy(float))
    d, yt = chinchilla._designs(log_n, log_d), np.log(train["heldout_loss"].to_numpy(float))
    if np.atleast_2d(starts).shape[0] <= WARM_STARTS:
        res = fitting.minimize_batched(np.atleast_2d(starts), d, yt, np.ones(yt.size))
        plain = fitting.PointFit(res.theta[int(np.nanargmin(res.loss))], float(np.nanmin(res.loss)), "", True, 0, 0)
    else:
        plain = fitting.fit_multistart(starts, d, yt, polish=False)
    p = {k: float(v[0]) for k, v in chinchilla._named(plain.theta).items()}
    pred = p["E"] + p["A"] / test["params"] ** p["alpha"] + p["B"] / test["examples_seen"] ** p["beta"]
    err = np.log(pred) - np.log(test["heldout_loss"])
    rows.append({"form": "plain", "fit_epochs_max": cut, "test_epochs_min": float(test["epochs"].min()),
                 "n_test": len(test), "rmse_log": float(np.sqrt(np.mean(err ** 2)))})
    return pd.DataFrame(rows)


def constrained_optimal(p: dict, flops, compute: float, unique: float, n_centre: float,
                        decades: float = 3.0, points: int = 601):
    """(N_opt, D_opt) at `compute` under the data-constrained law with parameters `p`
    (scalars, or arrays of resamples): the N on a log grid around `n_centre` minimising
    L(N, D'(C / (3 f(N)), U)). No closed form once D' saturates, so a grid (601 points
    over +-3 decades: steps of 1%)."""
    grid = np.geomspace(n_centre * 10 ** -decades, n_centre * 10 ** decades, points)
    d = compute / (3.0 * flops(grid))
    q = {k: np.asarray(v, float)[..., None] for k, v in p.items()}
    with np.errstate(all="ignore"):
        loss = q["E"] + q["A"] / grid ** q["alpha"] + q["B"] / effective_data(d, unique, q["R_star"]) ** q["beta"]
    loss = np.where(np.isfinite(loss), loss, np.inf)
    k = np.argmin(loss, axis=-1)
    n = grid[k]
    bad = ~np.isfinite(np.take_along_axis(loss, np.asarray(k)[..., None], axis=-1)[..., 0])
    n = np.where(bad, np.nan, n)
    return n, compute / (3.0 * flops(n))


def choose_law(opt: pd.DataFrame, starts=None, resamples: int = 0, seed: int = 0, level: float = 0.95,
               profile_iter: int | None = None) -> dict:
    """Whether the plan should use the data-constrained law: fitted when runs repeat data
    (epochs > 1), kept when the [A22]-style backtest on the largest epoch budget predicts
    better with it (or, with too few epoch budgets to backtest, when it fits better: it
    contains the plain law as R* -> infinity). Returns {"law": "plain"|"data-constrained",
    "fit": RepetitionFit|None, "backtest": records, "why": text}."""
    pts = opt.dropna(subset=["params", "examples_seen", "heldout_loss", "epochs"])
    pts = pts[pts["epochs"] > 0]
    if pts.empty:
        return {"law": "plain", "fit": None, "backtest": [], "why": "no epochs recorded: repetition cannot be told"}
    if pts["epochs"].max() <= 1.0:
        return {"law": "plain", "fit": None, "backtest": [],
                "why": f"no run repeats data (at most {pts['epochs'].max():g} epochs)"}
    kw = {"profile_iter": profile_iter} | ({} if starts is None else {"starts": starts})
    try:
        fit = fit_repetition(pts, resamples=resamples, seed=seed, level=level, **kw)
    except (ValueError, np.linalg.LinAlgError) as err:
        return {"law": "plain", "fit": None, "backtest": [], "why": f"data-constrained law not fitted: {err}"}
    if _at_grid_top(fit.params["R_star"]) or fit.objective > fit.plain_objective:
        return {"law": "plain", "fit": fit, "backtest": [],
                "why": f"no repetition penalty measurable: R* = {fit.params['R_star']:.3g} at the top of its grid "
                       f"or no better fit than the plain law ({fit.objective:.3g} vs {fit.plain_objective:.3g})"}
    try:
        bt = backtest(pts, **kw)
    except (ValueError, np.linalg.LinAlgError):
        bt = pd.DataFrame()
    if len(bt) and _backtest_resolves(bt):
        r = bt.set_index("form")["rmse_log"]
        law = "data-constrained" if r["data-constrained"] < (1 - BACKTEST_MARGIN) * r["plain"] else "plain"
        why = (f"backtest on the runs above {bt['fit_epochs_max'].iloc[0]:g} epochs: log-loss RMSE "
               f"{r['data-constrained']:.3g} (data-constrained) vs {r['plain']:.3g} (plain)")
    else:
        law, verdict = _in_sample_verdict(fit)
        why = ("too few epoch budgets to backtest (need 3)" if not len(bt) else
               f"backtest uninformative: the runs up to {bt['fit_epochs_max'].iloc[0]:g} epochs show no repetition "
               f"penalty (their fit gains < {BACKTEST_RESOLVES:.0%} from R*), so both laws extrapolate alike")
        why += f"; all runs: {verdict}"
    return {"law": law, "fit": fit, "backtest": bt.to_dict(orient="records"), "why": why}


def _at_grid_top(r_star: float) -> bool:
    """R* at the top of its profile grid: no repetition penalty measurable (the plain law)."""
    return r_star >= R_STAR_GRID[-1] * (1 - 1e-6)


def _backtest_resolves(bt: pd.DataFrame) -> bool:
    """Whether the backtest's training runs place R* at all (their penalised fit beats the
    plain one by BACKTEST_RESOLVES); if not, its RMSEs compare one law with itself."""
    row = bt.set_index("form").loc["data-constrained"]
    return bool(row["train_objective"] < (1 - BACKTEST_RESOLVES) * row["train_plain_objective"])


def _in_sample_verdict(fit: RepetitionFit) -> tuple[str, str]:
    """The law from all runs when no backtest can judge: with bootstrap refits, the
    data-constrained law when R*'s interval excludes the top of its grid (the plain law is
    R* -> infinity, so the runs then reject it at the fit's level); without them, when it
    fits better."""
    samples = fit.r_star_samples[np.isfinite(fit.r_star_samples)]
    if samples.size:
        lo, hi = fit.r_star_interval()
        resolved = not _at_grid_top(hi)
        return ("data-constrained" if resolved else "plain",
                f"R* = {fit.params['R_star']:.3g}, {fit.level:.0%} interval [{lo:.3g}, {hi:.3g}] "
                + ("excludes" if resolved else "reaches") + f" the grid's top ({R_STAR_GRID[-1]:g}: no penalty)")
    better = fit.objective <= fit.plain_objective
    return ("data-constrained" if better else "plain",
            f"fit objective {fit.objective:.3g} (data-constrained) vs {fit.plain_objective:.3g} (plain)")
