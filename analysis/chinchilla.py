"""Compute-optimal model size and epochs: [H22] Approach 3 with ConvNet compute.

L(N, D) = E + A/N^alpha + B/D^beta, N = parameters, D = training examples seen, fitted as
log L_hat = LSE(a - alpha log N, b - beta log D, e) with the summed Huber loss (delta 1e-3)
from the [H22] initialisation grid (docs/references.md#approach-3-a-parametric-law-in-n-and-d).
Intervals: a parametric bootstrap at
the fitted points with a small-sample noise scale, withheld when the design has < 3 model
sizes or < 3 data sizes (see fit_approach3 and docs/analysis.md for measured coverage).

Compute is NOT 6 N D for ConvNets: FLOPs per example depend on depth, width and
resolution. Between family members we fit F(N) = c N^gamma (forward FLOPs/example against
params, log-log least squares over the models measured), so a run costs C = 3 F(N) D
(train = 3 x forward, docs/units.md#three-records-per-run). Minimising L along
C = 3 c N^gamma D gives
  N_opt = [alpha A / (gamma beta B)]^(1/(alpha + gamma beta)) (C / 3c)^(beta / (alpha + gamma beta))
  D_opt = C / (3 c N_opt^gamma),   exponents a_N = beta/(alpha+gamma beta), a_D = alpha/(alpha+gamma beta)
which is [H22]'s frontier when gamma = 1 and 3c = 6.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import fitting

NAMES = ("E", "A", "B", "alpha", "beta")
# [H22] Approach 3 initialisation grid (docs/references.md#approach-3-a-parametric-law-in-n-and-d).
INIT_GRID = np.array([
    (a, b, e, al, be)
    for al, be, e, a, b in itertools.product(np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5),
                                             np.arange(-1, 1.01, 0.5), np.arange(0, 25.1, 5), np.arange(0, 25.1, 5))
])


@dataclass
class FlopsRelation:
    """Forward FLOPs per example as a power law of params, across the family's models."""

    c: float
    gamma: float
    n_models: int

    def __call__(self, params):
        return self.c * np.asarray(params, dtype=float) ** self.gamma


def fit_flops_relation(opt: pd.DataFrame) -> FlopsRelation:
    models = opt.groupby("model")[["params", "flops_per_example"]].median()
    if models["params"].nunique() < 2:
        raise ValueError("FLOPs-per-example vs params needs at least 2 models of different size")
    gamma, logc = np.polyfit(np.log(models["params"]), np.log(models["flops_per_example"]), 1)
    if not gamma > 0:
        # Shapes varied at about one size (a deeper model with fewer params costs more):
        # compute then buys no definite N, so N_opt(C) has no meaning for these runs.
        raise ValueError(f"FLOPs per example do not grow with params across these {len(models)} models "
                         f"(fitted exponent {gamma:.2g}); Approach 3 needs a ladder of sizes, not only shapes "
                         "at one size")
    return FlopsRelation(float(np.exp(logc)), float(gamma), len(models))


def _designs(log_n, log_d):
    one, zero = np.ones_like(log_n), np.zeros_like(log_n)
    return np.stack([np.stack([one, zero, zero, -log_n, zero], axis=1),
                     np.stack([zero, one, zero, zero, -log_d], axis=1),
                     np.stack([zero, zero, one, zero, zero], axis=1)])


def _named(theta):
    theta = np.atleast_2d(theta)
    a, b, e, alpha, beta = theta.T
    with np.errstate(over="ignore"):  # a wild resample overflows to inf: not finite, left out of intervals
        return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}


@dataclass
class ChinchillaFit:
    params: dict[str, float]
    samples: dict[str, np.ndarray] = field(repr=False)
    flops: FlopsRelation
    r2: float
    status: str
    success: bool
    starts: int
    starts_agreeing: int
    converged_fraction: float
    n_points: int
    level: float = 0.95
    n_sizes: int = 0  # distinct model sizes among the points
    n_data_sizes: int = 0  # distinct examples_seen
    dof: int = 0  # residual degrees of freedom (points - identified parameter directions)
    method: str = "parametric"  # how the samples were drawn (fit_approach3)
    withheld: str = ""  # why the samples are all NaN (no intervals), "" when they are given

    def predict(self, n, d, samples: bool = False):
        p = self.samples if samples else {k: np.asarray(v) for k, v in self.params.items()}
        n, d = np.asarray(n, float), np.asarray(d, float)
        if samples:
            n, d = n[None, ...], d[None, ...]
            p = {k: v.reshape(-1, *([1] * n.ndim)[1:]) for k, v in p.items()}
        with np.errstate(over="ignore", invalid="ignore"):  # wild resamples -> inf/NaN, left out of intervals
            return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]

    def _optimal(self, compute, p):
        g = self.flops.gamma
        alpha, beta = np.asarray(p["alpha"], float), np.asarray(p["beta"], float)
        denom = alpha + g * beta
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            # a resample with alpha or beta <= 0 has no optimum: NaN (left out of intervals), never complex
            ratio = np.where((alpha > 0) & (beta > 0), alpha * p["A"] / (g * beta * p["B"]), np.nan)
            coef = ratio ** (1.0 / denom)
            n_opt = coef * (compute / (3.0 * self.flops.c)) ** (beta / denom)
        d_opt = compute / (3.0 * self.flops(n_opt))
        if np.ndim(n_opt) == 0:  # a point estimate: plain floats for the callers' formatting
            return float(n_opt), float(d_opt)
        return n_opt, d_opt

    def optimal(self, compute):
        """(N_opt, D_opt) at compute C in FLOPs (point estimate)."""
        return self._optimal(np.asarray(compute, float), self.params)

    def optimal_samples(self, compute):
        """(N_opt, D_opt) per bootstrap resample: arrays (B, len(compute))."""
        c = np.asarray(compute, float)[None, :]
        p = {k: v[:, None] for k, v in self.samples.items()}
        with np.errstate(all="ignore"):
            return self._optimal(c, p)

    def exponents(self) -> dict[str, float]:
        g, p = self.flops.gamma, self.params
        return {"a_N": p["beta"] / (p["alpha"] + g * p["beta"]), "a_D": p["alpha"] / (p["alpha"] + g * p["beta"])}

    def exponent_samples(self) -> dict[str, np.ndarray]:
        g, p = self.flops.gamma, self.samples
        with np.errstate(all="ignore"):
            return {"a_N": p["beta"] / (p["alpha"] + g * p["beta"]), "a_D": p["alpha"] / (p["alpha"] + g * p["beta"])}

    def same_rate(self, level: float | None = None) -> dict:
        """[S23]'s rule "scale model size and epochs at the same rate": a_N = a_D?

        Consistent when the bootstrap interval of a_N - a_D contains 0."""
        level = self.level if level is None else level
        ex, s = self.exponents(), self.exponent_samples()
        lo, hi = fitting.interval(s["a_N"] - s["a_D"], level)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            verdict = f"not tested (intervals withheld: {self.withheld})" if self.withheld else "not tested (no interval)"
        else:
            verdict = "consistent" if lo <= 0 <= hi else ("model size faster" if lo > 0 else "epochs faster")
        return {"a_N": ex["a_N"], "a_D": ex["a_D"], "a_N_interval": fitting.interval(s["a_N"], level),
                "a_D_interval": fitting.interval(s["a_D"], level), "difference": ex["a_N"] - ex["a_D"],
                "difference_interval": (lo, hi), "level": level, "verdict": verdict}

    def to_dict(self, level: float | None = None) -> dict:
        level = self.level if level is None else level
        intervals = fitting.param_intervals(self.params, self.samples, level)
        return {"params": self.params, "intervals": intervals,
                "level": level, "flops_per_example": {"c": self.flops.c, "gamma": self.flops.gamma,
                                                      "n_models": self.flops.n_models},
                "r2": self.r2, "status": self.status, "success": self.success,
                "starts_agreeing": f"{self.starts_agreeing}/{min(self.starts, 32)}",
                "converged_fraction": self.converged_fraction, "n_points": self.n_points,
                "n_sizes": self.n_sizes, "n_data_sizes": self.n_data_sizes, "dof": self.dof,
                "interval_method": self.method, "intervals_withheld": self.withheld or None,
                "exponents": self.exponents(), "same_rate": self.same_rate(level)}


# Bootstrap refits bound the exponents alpha, beta <= 4. With 3 model sizes a resample can
# fit its smallest model with a term that vanishes everywhere else (alpha -> inf with
# A -> inf, measured: alpha 12-16, log A 220-280); the data cannot tell 4 from infinity
# there, and published exponents are 0.05-0.8 ([H22], [E24]; docs/references.md#fitting-scaling-laws),
# so 4 is no constraint on a law the data identify. A POINT fit beyond 4 gets no intervals
# (fit_approach3, with the reason): its refits would not move, the intervals zero-width.
EXPONENT_MAX = 4.0
REFIT_UPPER = np.array([np.inf, np.inf, np.inf, EXPONENT_MAX, EXPONENT_MAX])  # (a, b, e, alpha, beta)

# Each exponent needs >= 3 distinct values of its variable: with 2 model sizes the data fix
# only E + A/N^alpha at those two sizes, so E, A and alpha trade off along a ridge.
MIN_DISTINCT = 3


def identification(n_sizes: int, n_data: int) -> str:
    """Why the law's parameters are not all identified by the design ("" when they are)."""
    why = []
    if n_sizes < MIN_DISTINCT:
        why.append(f"the N exponent needs >= {MIN_DISTINCT} distinct model sizes, the runs have {n_sizes}")
    if n_data < MIN_DISTINCT:
        why.append(f"the D exponent needs >= {MIN_DISTINCT} distinct data sizes (epoch budgets), the runs have {n_data}")
    return "; ".join(why)


def fit_approach3(opt: pd.DataFrame, resamples: int = 1000, seed: int = 0, level: float = 0.95,
                  flops: FlopsRelation | None = None, polish: bool = True, method: str = "parametric",
                  starts: np.ndarray = INIT_GRID) -> ChinchillaFit:
    """Fit L(N, D) to the lr-optimal points (columns params, examples_seen, heldout_loss).

    Intervals (`method`): "parametric" (default) refits simulated data at the same points
    with the noise scale drawn from its small-sample distribution (fitting.parametric_samples),
    and withholds them when the design does not identify the law; "cases" is the old
    bootstrap over the points, kept only to measure how much it under-covers. `starts`:
    initial (a, b, e, alpha, beta) rows; coverage tests pass the truth to skip the grid."""
    pts = opt.dropna(subset=["params", "examples_seen", "heldout_loss"])
    if pts["params"].nunique() < 2 or pts["examples_seen"].nunique() < 2 or len(pts) < 6:
        raise ValueError(f"Approach 3 needs >= 2 model sizes, >= 2 data sizes and >= 6 points; has "
                         f"{pts['params'].nunique()} sizes, {pts['examples_seen'].nunique()} data sizes, {len(pts)} points")
    if method not in fitting.INTERVAL_METHODS:
        raise ValueError(f"method: {method!r} is not one of {fitting.INTERVAL_METHODS}")
    flops = fit_flops_relation(pts) if flops is None else flops
    log_n, log_d = np.log(pts["params"].to_numpy(float)), np.log(pts["examples_seen"].to_numpy(float))
    y = np.log(pts["heldout_loss"].to_numpy(float))
    designs = _designs(log_n, log_d)
    point = fitting.fit_multistart(starts, designs, y, polish=polish)
    alpha, beta = point.theta[3], point.theta[4]
    step = ""
    if max(alpha, beta) > EXPONENT_MAX:
        # The term vanishes past the smallest size (or data count): a step, not a power law
        # the runs identify; refits started there do not move, so intervals drawn from them
        # would be zero-width. They are withheld with this reason (the plan says so).
        which = "alpha" if alpha > EXPONENT_MAX else "beta"
        step = (f"{which} = {max(alpha, beta):.3g} > {EXPONENT_MAX:g}: the "
                f"{'params' if which == 'alpha' else 'data'} term is a step at the smallest "
                f"{'model' if which == 'alpha' else 'budget'}, not a power law the runs identify; add sizes or "
                "budgets where the loss still falls")
    if not (alpha > 0 and beta > 0):
        # Loss not falling with params (or data) over these runs: no compute-optimal
        # split exists (N_opt would be complex), e.g. shapes swept at about one size.
        raise ValueError(f"the fit has alpha = {alpha:.2g}, beta = {beta:.2g}: the loss does not fall with "
                         f"{'params' if alpha <= 0 else 'data'} over these runs ({pts['params'].nunique()} sizes spanning "
                         f"x{pts['params'].max() / pts['params'].min():.2g}), so there is no compute-optimal N; "
                         "sweep a ladder of sizes")
    u = np.einsum("jnp,p->jn", designs, point.theta)
    r2 = fitting.r_squared(y, np.logaddexp.reduce(u, axis=0))
    rng = np.random.default_rng(seed)
    n_sizes, n_data = int(pts["params"].nunique()), int(pts["examples_seen"].nunique())
    if method == "parametric":
        res = fitting.parametric_bootstrap(point.theta, designs, y, resamples, rng,
                                           not_identified=step or identification(n_sizes, n_data), upper=REFIT_UPPER)
        theta, converged, dof, withheld = res.theta, res.converged_fraction, res.dof, res.withheld
    else:
        w = fitting.bootstrap_weights(len(y), resamples, rng)
        boot = fitting.minimize_batched(np.repeat(point.theta[None], resamples, axis=0), designs, y, w,
                                        max_iter=fitting.CASES_MAX_ITER)
        theta = np.where(boot.converged[:, None] & (not step), boot.theta, np.nan)
        converged = float(boot.converged.mean()) if resamples else float("nan")
        dof, withheld = fitting.residual_dof(fitting.linearise(point.theta, designs, y)[1]), step
    return ChinchillaFit(params={k: float(v[0]) for k, v in _named(point.theta).items()},
                         samples=_named(theta), flops=flops, r2=r2, status=point.status, success=point.success,
                         starts=point.starts, starts_agreeing=point.starts_agreeing, converged_fraction=converged,
                         n_points=len(y), level=level, n_sizes=n_sizes, n_data_sizes=n_data, dof=dof,
                         method=method, withheld=withheld)


ISOFLOP_MIN_SIZES = 3  # a parabola has 3 coefficients: fewer sizes in a bin give no minimum


def _parabola_minimum(x: np.ndarray, y: np.ndarray, level: float):
    """Least-squares parabola y = c2 x^2 + c1 x + c0 through (x, y): (coefficients, vertex,
    vertex interval). The interval is the delta-method t-interval of -c1 / (2 c2) from the
    residual scatter; NaN with no residual degree of freedom (3 points lie on a parabola
    exactly) or a parabola that opens downward (no minimum)."""
    from scipy.special import stdtrit

    X = np.column_stack([x ** 2, x, np.ones_like(x)])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    c2, c1, _ = coef
    if not c2 > 0:
        return coef, float("nan"), (float("nan"), float("nan"))
    v = -c1 / (2 * c2)
    dof = len(x) - 3
    if dof < 1:
        return coef, float(v), (float("nan"), float("nan"))
    sigma2 = float(np.sum((y - X @ coef) ** 2) / dof)
    cov = sigma2 * np.linalg.pinv(X.T @ X)
    grad = np.array([c1 / (2 * c2 ** 2), -1 / (2 * c2), 0.0])
    half = float(stdtrit(dof, 0.5 + level / 2) * np.sqrt(max(grad @ cov @ grad, 0.0)))
    return coef, float(v), (float(v - half), float(v + half))


def isoflop_profiles(opt: pd.DataFrame, fit: ChinchillaFit | None = None, decade_width: float = 0.5,
                     level: float = 0.95) -> pd.DataFrame:
    """[H22] Approach 2 as a diagnostic: bin the lr-optimal points by log10 compute and fit,
    in each bin with >= ISOFLOP_MIN_SIZES model sizes, a parabola of loss in log N to THAT
    bin's own points; report its minimum (with a t-interval when the bin has more points
    than coefficients) next to Approach 3's N_opt at the bin's median compute. Bins with
    fewer sizes are listed (drawn False) but get no parabola."""
    pts = opt.dropna(subset=["train_flops", "params", "heldout_loss"]).copy()
    if pts.empty:
        return pd.DataFrame()
    pts["bin"] = np.floor(np.log10(pts["train_flops"]) / decade_width).astype(int)
    rows = []
    for b, g in pts.groupby("bin"):
        c = float(np.exp(np.log(g["train_flops"]).mean()))
        row = {"bin": int(b), "compute": c, "n_models": int(g["params"].nunique()), "n_points": len(g),
               "drawn": False, "n_parabola": np.nan, "n_parabola_lo": np.nan, "n_parabola_hi": np.nan,
               "c2": np.nan, "c1": np.nan, "c0": np.nan, "n_approach3": np.nan}
        if row["n_models"] >= ISOFLOP_MIN_SIZES:
            coef, v, (lo, hi) = _parabola_minimum(np.log(g["params"].to_numpy(float)),
                                                  g["heldout_loss"].to_numpy(float), level)
            with np.errstate(over="ignore"):  # a nearly flat parabola: its minimum is far off (inf), as it is
                row.update(drawn=True, c2=float(coef[0]), c1=float(coef[1]), c0=float(coef[2]), n_parabola=float(np.exp(v)),
                           n_parabola_lo=float(np.exp(lo)), n_parabola_hi=float(np.exp(hi)))
        if fit is not None:
            row["n_approach3"] = float(fit.optimal(c)[0])
        rows.append(row)
    return pd.DataFrame(rows)


def has_isoflop_design(iso: pd.DataFrame) -> bool:
    """True when at least one compute bin holds enough model sizes for its own parabola."""
    return bool(len(iso)) and "drawn" in iso and bool(iso["drawn"].any())


def backtest(opt: pd.DataFrame, holdouts=(1, 2, 3)) -> pd.DataFrame:
    """[A22] for Approach 3: refit on the runs below the k-th largest compute budget and
    score L(N, D) at every lr-optimal run at or above it (log-space RMSE)."""
    pts = opt.dropna(subset=["train_flops", "params", "examples_seen", "heldout_loss"])
    budgets = np.sort(pts["train_flops"].unique())[::-1]
    rows = []
    for k in holdouts:
        if k >= budgets.size:
            continue
        train, test = pts[pts["train_flops"] < budgets[k - 1]], pts[pts["train_flops"] >= budgets[k - 1]]
        row = {"form": "approach3", "held_out": k, "n_train": len(train), "n_test": len(test),
               "decades_beyond": float(np.log10(test["train_flops"].max() / train["train_flops"].max()))}
        try:
            fit = fit_approach3(train, resamples=0, flops=fit_flops_relation(pts), polish=False)
            err = np.log(fit.predict(test["params"], test["examples_seen"])) - np.log(test["heldout_loss"])
            row["rmse_log"] = float(np.sqrt(np.mean(err**2)))
        except ValueError as exc:
            row["rmse_log"], row["note"] = float("nan"), str(exc)
        rows.append(row)
    return pd.DataFrame(rows)
