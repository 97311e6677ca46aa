"""Optimal learning rate per (model, epoch budget) and its trend with epochs ([S23] Fig. 3).

The paper tunes the base lr on a grid spaced by factors of 2
(docs/references.md#epoch-budgets-and-the-learning-rate-grid). Here the
optimum is the vertex of the parabola in log2(lr) through the best grid point and its two
neighbours (seeds averaged first); when the best point is at the end of the grid the
optimum is not bracketed, so the grid point is used and the row is flagged `edge`.
The loss at the optimum is the best OBSERVED mean loss (never the extrapolated vertex),
so the frontier is built from measured numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # Student t quantile; scipy.stats would import scipy.optimize (planner speed)

KEYS = ["model", "epochs"]


def optimal_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, epochs): lr_opt, edge flag, loss at the optimum, compute, sizes.

    Runs without an epoch budget (CSV imports) are grouped by examples seen instead."""
    runs = runs.assign(budget=runs["epochs"].where(runs["epochs"].notna(), -runs["examples_seen"]))
    per = runs.groupby(["model", "budget", "lr"], sort=True).agg(
        heldout_loss=("heldout_loss", "mean"), n_trials=("heldout_loss", "size"), params=("params", "first"),
        flops_per_example=("flops_per_example", "median"), examples_seen=("examples_seen", "median"),
        train_flops=("train_flops", "median"), depth_mult=("depth_mult", "first"),
        width_mult=("width_mult", "first"), batch_size=("batch_size", "first"),
        heldout_accuracy=("heldout_accuracy", "mean"), device_seconds=("device_seconds", "median"),
        hardware=("hardware", "first")).reset_index()
    lrs, losses = per["lr"].to_numpy(float), per["heldout_loss"].to_numpy(float)
    rows = []
    for (model, budget), idx in sorted(per.groupby(["model", "budget"]).indices.items()):
        lr_opt, lr_best, edge, vertex, best, curvature = _vertex(lrs[idx], losses[idx])
        row = per.iloc[idx[best]].to_dict()
        row.update(model=model, epochs=budget if budget >= 0 else np.nan, lr_opt=lr_opt, lr_best=lr_best,
                   edge=edge, n_lrs=len(idx), n_trials=int(per["n_trials"].iloc[idx].sum()), loss_vertex=vertex,
                   curvature=curvature)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["model", "epochs", "lr_opt", "lr_best", "edge", "n_lrs", "n_trials", "heldout_loss", "loss_vertex",
           "curvature",
           "params", "flops_per_example", "examples_seen", "train_flops", "depth_mult", "width_mult",
           "batch_size", "heldout_accuracy", "device_seconds", "hardware"]


def _vertex(lrs: np.ndarray, losses: np.ndarray):
    """(lr_opt, best grid lr, edge flag, loss at the vertex, index of the best grid lr,
    curvature of the parabola in nats per log2(lr)^2; NaN when not bracketed)."""
    i = int(np.argmin(losses))
    edge, lr_opt, vertex, curvature = "", float(lrs[i]), float(losses[i]), float("nan")
    if len(lrs) < 3:
        edge = "too few lrs"
    elif i == 0:
        edge = "low"
    elif i == len(lrs) - 1:
        edge = "high"
    else:
        x, y = np.log2(lrs[i - 1:i + 2]), losses[i - 1:i + 2]
        a, b, c = np.polyfit(x, y, 2)
        curvature = float(a)
        if a > 0:
            xv = float(np.clip(-b / (2 * a), x[0], x[2]))
            lr_opt, vertex = float(2.0**xv), float(a * xv * xv + b * xv + c)
    return lr_opt, float(lrs[i]), edge, vertex, i, curvature


def lr_trend(opt: pd.DataFrame) -> pd.DataFrame:
    """Per model: lr_opt = c * epochs^s (least squares in log-log), with how many optima were edges."""
    rows = []
    for model, g in opt.dropna(subset=["epochs"]).groupby("model"):
        g = g[g["epochs"] > 0]
        row = {"model": model, "params": float(g["params"].iloc[0]), "n_points": len(g),
               "n_edge": int((g["edge"] != "").sum()), "c": np.nan, "s": np.nan}
        if g["epochs"].nunique() >= 2:
            s, logc = np.polyfit(np.log(g["epochs"]), np.log(g["lr_opt"]), 1)
            row["c"], row["s"] = float(np.exp(logc)), float(s)
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "params", "n_points", "n_edge", "c", "s"]).sort_values("params")


def predict_lr(trend: pd.DataFrame, params: float, epochs: float) -> float:
    """Peak lr for a model size and epoch budget: each model's power law evaluated at
    `epochs`, interpolated linearly in log(params) between models (clamped at the ends)."""
    t = trend.dropna(subset=["s"])
    if t.empty:
        return float("nan")
    per_model = np.log(t["c"].to_numpy() * epochs ** t["s"].to_numpy())
    return float(np.exp(np.interp(np.log(params), np.log(t["params"].to_numpy()), per_model)))


# ---------------------------------------------------------------- one law for all models

MIN_LAW_CELLS = 5  # 3 parameters: at least 2 residual degrees of freedom


@dataclass
class LrLaw:
    """log2 lr_opt = a + s log2(epochs) + t log2(params), fitted by weighted least
    squares to every interior (model, epoch budget) optimum at once.

    Why one law rather than a line per model: with one seed and a factor-2 grid each
    cell's optimum scatters by about a factor of 1.6 (docs/demo.md), so 3 cells per
    model cannot separate a trend from scatter; pooling every cell gives each slope 4x
    the data and an interval that says whether the trend is resolved. [S23] also report
    an interaction (larger models' optimum falls faster); with the handful of cells of a
    small sweep it is not identifiable, so it is not fitted.
    Weights: a cell's vertex is uncertain in proportion to 1/curvature of its loss-vs-
    log2(lr) parabola (the delta method, equal loss noise per trial), so cells weigh
    curvature^2: a flat cell, where every lr gives the same loss, says little about
    where the optimum is. Intervals are the t-intervals of weighted least squares
    (exact for normal scatter): a cases bootstrap measured 81% coverage for nominal 90%
    at 16 cells."""
    a: float
    s: float  # per doubling of the epoch budget
    t: float  # per doubling of the parameter count
    cov: np.ndarray  # (3, 3) covariance of (a, s, t): scatter^2 (X'X)^-1
    n_cells: int
    n_edge: int  # edge cells left out (optimum not bracketed)
    scatter: float  # residual std of log2 lr_opt at the mean weight: 1.0 = a factor of 2
    level: float = 0.95

    @property
    def theta(self) -> np.ndarray:
        return np.array([self.a, self.s, self.t])

    def _quantile(self, level: float | None) -> float:
        return float(stdtrit(self.n_cells - 3, 0.5 + (level or self.level) / 2))

    def predict(self, params, epochs) -> np.ndarray:
        return 2.0 ** (self.a + self.s * np.log2(epochs) + self.t * np.log2(params))

    def band(self, params, epochs, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Interval of the fitted optimum (the law's uncertainty, not one run's scatter);
        it widens with the distance from the fitted cells, as an extrapolation should."""
        x = np.stack(np.broadcast_arrays(np.ones_like(np.asarray(epochs, float)), np.log2(epochs),
                                         np.log2(params)), axis=-1)
        centre = x @ self.theta
        half = self._quantile(level) * np.sqrt(np.einsum("...i,ij,...j->...", x, self.cov, x))
        return 2.0 ** (centre - half), 2.0 ** (centre + half)

    def intervals(self, level: float | None = None) -> dict[str, tuple[float, float]]:
        half = self._quantile(level) * np.sqrt(np.diag(self.cov))
        return {k: (float(v - h), float(v + h)) for k, v, h in zip("ast", self.theta, half)}

    def resolved(self, name: str, level: float | None = None) -> bool:
        """True when the slope's interval excludes 0: the data show a trend, not scatter."""
        lo, hi = self.intervals(level)[name]
        return lo > 0 or hi < 0

    def to_dict(self, level: float | None = None) -> dict:
        ci = self.intervals(level)
        return {"form": "log2 lr_opt = a + s log2(epochs) + t log2(params)",
                "a": self.a, "s": self.s, "t": self.t,
                "intervals": {k: list(v) for k, v in ci.items()}, "level": level or self.level,
                "s_resolved": self.resolved("s", level), "t_resolved": self.resolved("t", level),
                "n_cells": self.n_cells, "n_edge": self.n_edge, "scatter_log2": self.scatter}

    def describe(self) -> str:
        ci = self.intervals()
        words = []
        for key, what in (("s", "epoch budget"), ("t", "model size")):
            lo, hi = ci[key]
            verdict = "resolved" if self.resolved(key) else "not resolved: the interval includes x1.00"
            words.append(f"x{2 ** getattr(self, key):.2f} per doubling of {what} "
                         f"[{2 ** lo:.2f}, {2 ** hi:.2f}] ({verdict})")
        return (f"optimal lr = {2 ** self.a:.3g} x E^{self.s:.2f} x N^{self.t:.2f}: "
                f"{'; '.join(words)}; {self.n_cells} cells, scatter x{2 ** self.scatter:.2f}, "
                f"{self.level:.0%} intervals")


def cell_weights(opt: pd.DataFrame) -> np.ndarray:
    """Each cell's weight in the law, mean 1: curvature^2 (see LrLaw); equal weights when
    no cell has a usable curvature (e.g. optima given without their lr curves)."""
    curvature = opt["curvature"].to_numpy(float) if "curvature" in opt else np.ones(len(opt))
    w = np.where(np.isfinite(curvature) & (curvature > 0), curvature, 0.0) ** 2
    if w.sum() <= 0:
        w = np.ones(len(opt))
    return w / w.mean()


def fit_lr_law(opt: pd.DataFrame, *, level: float = 0.95) -> tuple[LrLaw | None, str]:
    """The pooled law and "", or (None, why not). Cells whose optimum sits on the grid's
    edge are left out: their lr_opt is a bound, not an estimate."""
    ok = opt.dropna(subset=["epochs"])
    ok = ok[(ok["epochs"] > 0) & np.isfinite(ok["lr_opt"])]
    cells = ok[ok["edge"] == ""]
    why = ""
    if len(cells) < MIN_LAW_CELLS:
        why = f"{len(cells)} interior (model, epoch budget) optima; need at least {MIN_LAW_CELLS}"
    elif cells["epochs"].nunique() < 2 or cells["params"].nunique() < 2:
        why = "need at least 2 epoch budgets and 2 model sizes with interior optima"
    if why:
        return None, why
    x = np.column_stack([np.ones(len(cells)), np.log2(cells["epochs"].to_numpy(float)),
                         np.log2(cells["params"].to_numpy(float))])
    y = np.log2(cells["lr_opt"].to_numpy(float))
    w = cell_weights(cells)
    root = np.sqrt(w)
    theta = np.linalg.lstsq(x * root[:, None], y * root, rcond=None)[0]
    scatter = float(np.sqrt(np.sum(w * (y - x @ theta) ** 2) / (len(y) - 3)))
    cov = scatter**2 * np.linalg.pinv(x.T @ (w[:, None] * x))
    return LrLaw(float(theta[0]), float(theta[1]), float(theta[2]), cov, len(cells), len(ok) - len(cells),
                 scatter, level), ""


def two_trials(first_lr: float, params: float, epochs: float, opt: pd.DataFrame, law: "LrLaw | None" = None,
               trend: pd.DataFrame | None = None) -> dict:
    """[S23]'s two-trial tuning: the optimal lr falls slowly and monotonically with the
    epoch budget, so the law's prediction and ONE factor-2 neighbour suffice. The second
    trial goes the way the law's lr moves from the nearest fitted cell to the plan's
    (params, epochs) (down when the plan is further than the runs and the lr falls with
    budget); inside the fitted cells, the way the epoch slope points."""
    cells = opt.dropna(subset=["epochs", "params", "lr_opt"])
    cells = cells[(cells["epochs"] > 0) & (cells["params"] > 0)]
    if not (np.isfinite(first_lr) and first_lr > 0) or cells.empty:
        return {"first_lr": first_lr, "second_lr": float("nan"), "direction": None,
                "why": "no lr prediction to start from", "stop_rule": ""}
    dist = np.hypot(np.log2(cells["epochs"].to_numpy(float) / epochs), np.log2(cells["params"].to_numpy(float) / params))
    near = cells.iloc[int(np.argmin(dist))]
    if law is not None:
        at_cell = float(law.predict(near["params"], near["epochs"]))
        slope = law.s
    else:
        at_cell = float(predict_lr(trend, near["params"], near["epochs"])) if trend is not None else float("nan")
        slope = float(np.nanmedian(trend["s"])) if trend is not None and trend["s"].notna().any() else -1.0
    move = math.log2(first_lr / at_cell) if np.isfinite(at_cell) and at_cell > 0 else 0.0
    if abs(move) > 0.05:  # the plan lies away from the runs: follow the law's change of lr
        down = move < 0
        why = (f"the law's lr {'falls' if down else 'rises'} by x{2 ** move:.2f} from the nearest fitted cell "
               f"({near['model']} at {near['epochs']:g} epochs) to this plan")
    else:
        down = slope <= 0
        why = f"the law's lr {'falls' if down else 'rises'} with the epoch budget (x{2 ** slope:.2f} per doubling)"
    second = first_lr / 2 if down else first_lr * 2
    stop = (f"run both; if {second:.3g} gives a higher held-out loss than {first_lr:.3g}, stop and keep "
            f"{first_lr:.3g} (the optimum is within a factor 2); if it gives a lower one, the optimum lies further "
            f"{'down' if down else 'up'}: try {second / 2 if down else second * 2:.3g} and stop at the first rise")
    return {"first_lr": first_lr, "second_lr": second, "direction": "down" if down else "up", "why": why,
            "stop_rule": stop}
