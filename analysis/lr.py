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
    """One row per (model, epochs): lr_opt, edge flag, loss at the optimum, compute, sizes."""
    rows = []
    runs = runs.copy()
    runs["epochs"] = runs["epochs"].fillna(-1.0)  # CSVs without epochs: group by examples instead
    for (model, epochs), g in runs.groupby(KEYS, sort=True):
        if epochs < 0:
            for ex, gg in g.groupby("examples_seen"):
                rows.append(_one(model, np.nan, gg))
        else:
            rows.append(_one(model, epochs, g))
    cols = ["model", "epochs", "lr_opt", "lr_best", "edge", "n_lrs", "n_trials", "heldout_loss",
            "loss_vertex", "params", "flops_per_example", "examples_seen", "train_flops",
            "depth_mult", "width_mult", "batch_size", "heldout_accuracy", "device_seconds", "hardware"]
    return pd.DataFrame(rows, columns=cols)


def _one(model, epochs, g: pd.DataFrame) -> dict:
    per_lr = g.groupby("lr")["heldout_loss"].mean().sort_index()
    lrs, losses = per_lr.index.to_numpy(float), per_lr.to_numpy(float)
    i = int(np.argmin(losses))
    edge = ""
    lr_opt, vertex = lrs[i], losses[i]
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
            xv = np.clip(-b / (2 * a), x[0], x[2])
            lr_opt, vertex = float(2.0**xv), float(a * xv * xv + b * xv + c)
    best = g[g["lr"] == lrs[i]]
    first = best.iloc[0]
    return {"model": model, "epochs": epochs, "lr_opt": float(lr_opt), "lr_best": float(lrs[i]), "edge": edge,
            "n_lrs": len(lrs), "n_trials": len(g), "heldout_loss": float(losses[i]), "loss_vertex": float(vertex),
            "params": float(first["params"]), "flops_per_example": float(best["flops_per_example"].median()),
            "examples_seen": float(best["examples_seen"].median()), "train_flops": float(best["train_flops"].median()),
            "depth_mult": first.get("depth_mult"), "width_mult": first.get("width_mult"),
            "batch_size": first.get("batch_size"), "heldout_accuracy": float(best["heldout_accuracy"].mean()),
            "device_seconds": float(best["device_seconds"].median()), "hardware": first.get("hardware")}


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
