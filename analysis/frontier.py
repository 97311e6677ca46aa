"""The compute frontier: held-out loss against training compute, and its two laws.

Input: one point per (model, epoch budget) at its learning-rate optimum (analysis.lr).
The frontier is the lower envelope of those points (a point is on it when no point with
less or equal compute has a lower loss: the paper's Figure 2 reading). Laws, fitted in
log space with the summed Huber loss (analysis.fitting):
  "power":  L = k C^-b          (the paper's log-log law [S23])
  "offset": L = E + k C^-b      ([A22] M2, an irreducible loss E)
Intervals: a parametric bootstrap at the frontier points with a small-sample noise scale
(fitting.parametric_samples; the old resampling of points, with the envelope recomputed
per resample, is kept as method="cases": it under-covers with few points, docs/analysis.md).
Compute is in real FLOPs; other units are a rescaling of C done for display only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import fitting

FORMS = ("power", "offset")
_PARAMS = {"power": ("k", "b"), "offset": ("E", "k", "b")}


def envelope_mask(compute: np.ndarray, loss: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Lower-envelope membership; with (B, n) weights, per resample (zero weight = absent)."""
    order = np.argsort(compute, kind="stable")
    w = np.ones((1, compute.size)) if weights is None else np.atleast_2d(weights)
    lw = np.where(w[:, order] > 0, loss[order][None, :], np.inf)
    prev = np.minimum.accumulate(np.concatenate([np.full((lw.shape[0], 1), np.inf), lw[:, :-1]], axis=1), axis=1)
    on = np.isfinite(lw) & (lw < prev)
    out = np.empty_like(on)
    out[:, order] = on
    return out[0] if weights is None else out


def _designs(form: str, x: np.ndarray) -> np.ndarray:
    one, zero = np.ones_like(x), np.zeros_like(x)
    if form == "power":
        return np.stack([np.stack([one, -x], axis=1)])
    return np.stack([np.stack([one, zero, zero], axis=1), np.stack([zero, one, -x], axis=1)])


def _starts(form: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    slope, icpt = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, float(y.mean()))
    if form == "power":
        return np.array([[icpt, -slope]] + [[icpt, b] for b in (0.01, 0.05, 0.1, 0.3, 1.0)])
    lmin, lmean = float(np.exp(y.min())), float(np.exp(y.mean()))
    rows = []
    for frac in (0.01, 0.2, 0.5, 0.8, 0.9, 0.97):  # E as a fraction of the smallest loss
        for b in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0):
            rows.append([np.log(frac * lmin), np.log(max(lmean - frac * lmin, 1e-3 * lmean)), b])
    return np.array(rows)


def _to_named(form: str, theta: np.ndarray, log_cref: float) -> dict[str, np.ndarray]:
    with np.errstate(over="ignore"):  # a wild resample's k overflows to inf: not finite, left out of intervals
        return _named_params(form, np.atleast_2d(theta), log_cref)


def _named_params(form: str, theta: np.ndarray, log_cref: float) -> dict[str, np.ndarray]:
    if form == "power":
        a, b = theta[:, 0], theta[:, 1]
        return {"k": np.exp(a + b * log_cref), "b": b}
    e, a, b = theta.T
    return {"E": np.exp(e), "k": np.exp(a + b * log_cref), "b": b}


@dataclass
class LawFit:
    """One fitted law with its bootstrap samples (intervals at any level from them)."""

    form: str
    params: dict[str, float]
    samples: dict[str, np.ndarray] = field(repr=False)
    r2: float
    status: str
    success: bool
    converged_fraction: float  # bootstrap resamples whose optimiser converged
    n_points: int
    starts_agreeing: str
    level: float = 0.95
    dof: int = 0  # residual degrees of freedom of the fit on the frontier points
    method: str = "parametric"  # how the samples were drawn (fit_law)
    withheld: str = ""  # why the samples are all NaN (no intervals), "" when they are given

    def predict(self, compute) -> np.ndarray:
        c = np.asarray(compute, dtype=float)
        base = self.params["k"] * c ** (-self.params["b"])
        return base + self.params.get("E", 0.0)

    def band(self, compute, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile band of the predicted loss over bootstrap resamples."""
        level = self.level if level is None else level
        c = np.asarray(compute, dtype=float)[None, :]
        k, b = self.samples["k"][:, None], self.samples["b"][:, None]
        with np.errstate(invalid="ignore", over="ignore"):  # a resample with k overflowing: dropped just below
            pred = k * c ** (-b) + (self.samples["E"][:, None] if "E" in self.samples else 0.0)
        pred = pred[np.all(np.isfinite(pred), axis=1)]
        if pred.shape[0] == 0:
            nan = np.full(c.shape[1], np.nan)
            return nan, nan
        lo, hi = np.quantile(pred, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lo, hi

    def intervals(self, level: float | None = None) -> dict[str, tuple[float, float]]:
        """Per parameter; E's is withheld (NaN) when E sits at its bound 0."""
        level = self.level if level is None else level
        return fitting.param_intervals(self.params, self.samples, level)

    def to_dict(self, level: float | None = None) -> dict:
        return {"form": self.form, "params": self.params, "intervals": self.intervals(level),
                "level": self.level if level is None else level, "r2": self.r2, "status": self.status,
                "success": self.success, "converged_fraction": self.converged_fraction,
                "n_points": self.n_points, "starts_agreeing": self.starts_agreeing, "dof": self.dof,
                "interval_method": self.method, "intervals_withheld": self.withheld or None}


def fit_law(form: str, compute, loss, resamples: int = 1000, seed: int = 0, envelope: bool = True,
            level: float = 0.95, method: str = "parametric") -> LawFit:
    """Fit one law to (compute, loss) points, with bootstrap samples for intervals.

    `method` "parametric" (default): refits of simulated losses at the frontier points with a
    small-sample noise scale (fitting.parametric_samples); "cases": the old resampling of
    the points with the envelope recomputed per resample, kept to measure its coverage.
    Raises ValueError when there are too few distinct frontier points for the form.
    """
    if method not in fitting.INTERVAL_METHODS:
        raise ValueError(f"method: {method!r} is not one of {fitting.INTERVAL_METHODS}")
    c, l = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    ok = np.isfinite(c) & np.isfinite(l) & (c > 0) & (l > 0)
    c, l = c[ok], l[ok]
    p = len(_PARAMS[form])
    on = envelope_mask(c, l) if envelope else np.ones(c.size, dtype=bool)
    if np.unique(c[on]).size < p + 1:
        raise ValueError(f"{form} law needs at least {p + 1} frontier points at distinct compute, "
                         f"has {np.unique(c[on]).size}")
    log_cref = float(np.mean(np.log(c)))
    x, y = np.log(c) - log_cref, np.log(l)
    designs = _designs(form, x)
    fe, ye = designs[:, on, :], y[on]
    point = fitting.fit_multistart(_starts(form, x[on], ye), fe, ye)
    log_pred = np.log(_to_named_predict(form, point.theta, x[on]))
    r2 = fitting.r_squared(ye, log_pred)
    rng = np.random.default_rng(seed)
    if method == "parametric":
        res = fitting.parametric_bootstrap(point.theta, fe, ye, resamples, rng)
        theta, converged, dof, withheld = res.theta, res.converged_fraction, res.dof, res.withheld
    else:
        w = fitting.bootstrap_weights(c.size, resamples, rng)
        if envelope:
            w = w * envelope_mask(c, l, w)
        _, inverse = np.unique(c, return_inverse=True)
        distinct = ((w > 0).astype(float) @ np.eye(inverse.max() + 1)[inverse] > 0).sum(axis=1)
        boot = fitting.minimize_batched(np.repeat(point.theta[None], resamples, axis=0), designs, y, w,
                                        max_iter=fitting.CASES_MAX_ITER)
        bad = ~boot.converged | (distinct < p + 1)
        theta = np.where(bad[:, None], np.nan, boot.theta)
        converged = float(np.mean(~bad)) if resamples else float("nan")
        dof, withheld = fitting.residual_dof(fitting.linearise(point.theta, fe, ye)[1]), ""
    named = _to_named(form, point.theta, log_cref)
    return LawFit(form=form, params={k: float(v[0]) for k, v in named.items()},
                  samples=_to_named(form, theta, log_cref), r2=r2, status=point.status,
                  success=point.success, converged_fraction=converged,
                  n_points=int(on.sum()), starts_agreeing=f"{point.starts_agreeing}/{min(point.starts, 32)}",
                  level=level, dof=dof, method=method, withheld=withheld)


def _to_named_predict(form: str, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    if form == "power":
        return np.exp(theta[0] - theta[1] * x)
    return np.exp(theta[0]) + np.exp(theta[1] - theta[2] * x)


def backtest(compute, loss, holdouts=(1, 2, 3)) -> pd.DataFrame:
    """[A22]: refit without the k largest-compute frontier points, score them (log RMSE)."""
    c, l = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    on = envelope_mask(c, l)
    front_c = np.sort(c[on])[::-1]
    rows = []
    for k in holdouts:
        if k >= front_c.size:
            continue
        threshold = front_c[k - 1]
        train, test = c < threshold, on & (c >= threshold)
        for form in FORMS:
            row = {"form": form, "held_out": k, "n_train": int(envelope_mask(c[train], l[train]).sum()),
                   "n_test": int(test.sum()),
                   "decades_beyond": float(np.log10(c[test].max() / c[train].max()))}
            try:
                fit = fit_law(form, c[train], l[train], resamples=0)
                err = np.log(fit.predict(c[test])) - np.log(l[test])
                row["rmse_log"] = float(np.sqrt(np.mean(err**2)))
            except ValueError as exc:
                row["rmse_log"], row["note"] = float("nan"), str(exc)
            rows.append(row)
    return pd.DataFrame(rows)
