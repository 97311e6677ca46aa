"""Optimal learning rate per (model, epoch budget) and its trend with epochs ([S23] Fig. 3).

The paper tunes the base lr on a grid spaced by factors of 2 (REFERENCE.md s1). Here the
optimum is the vertex of the parabola in log2(lr) through the best grid point and its two
neighbours (seeds averaged first); when the best point is at the end of the grid the
optimum is not bracketed, so the grid point is used and the row is flagged `edge`.
The loss at the optimum is the best OBSERVED mean loss (never the extrapolated vertex),
so the frontier is built from measured numbers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

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
        lr_opt, lr_best, edge, vertex, best = _vertex(lrs[idx], losses[idx])
        row = per.iloc[idx[best]].to_dict()
        row.update(model=model, epochs=budget if budget >= 0 else np.nan, lr_opt=lr_opt, lr_best=lr_best,
                   edge=edge, n_lrs=len(idx), n_trials=int(per["n_trials"].iloc[idx].sum()), loss_vertex=vertex)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["model", "epochs", "lr_opt", "lr_best", "edge", "n_lrs", "n_trials", "heldout_loss", "loss_vertex",
           "params", "flops_per_example", "examples_seen", "train_flops", "depth_mult", "width_mult",
           "batch_size", "heldout_accuracy", "device_seconds", "hardware"]


def _vertex(lrs: np.ndarray, losses: np.ndarray):
    """(lr_opt, best grid lr, edge flag, loss at the vertex, index of the best grid lr)."""
    i = int(np.argmin(losses))
    edge, lr_opt, vertex = "", float(lrs[i]), float(losses[i])
    if len(lrs) < 3:
        edge = "too few lrs"
    elif i == 0:
        edge = "low"
    elif i == len(lrs) - 1:
        edge = "high"
    else:
        x, y = np.log2(lrs[i - 1:i + 2]), losses[i - 1:i + 2]
        a, b, c = np.polyfit(x, y, 2)
        if a > 0:
            xv = float(np.clip(-b / (2 * a), x[0], x[2]))
            lr_opt, vertex = float(2.0**xv), float(a * xv * xv + b * xv + c)
    return lr_opt, float(lrs[i]), edge, vertex, i


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
