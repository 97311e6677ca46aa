"""Run-to-run (seed) noise from replicate runs, for the planner's intervals.

A sweep with several seeds of the same (model, epoch budget, lr) measures how much one
run's held-out loss scatters around its expectation. The laws' bootstrap intervals are
intervals of the expected loss; the loss of the one run a user will train also carries
this scatter, so the planner widens its loss interval by it (in quadrature, in log
loss). Without replicates the scatter is unknown, and the plan says its intervals leave
it out.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # Student t quantile (scipy.stats would import scipy.optimize)

CELL = ("model", "epochs", "lr")  # what a replicate repeats (the seed is all that differs)


def seed_scatter(runs: pd.DataFrame) -> dict | None:
    """Pooled between-seed standard deviation of log held-out loss over every cell with
    >= 2 distinct seeds: {"sd_log", "cells", "runs", "dof"}; None without replicates."""
    if "seed" not in runs or runs["seed"].isna().all():
        return None
    r = runs.dropna(subset=["seed", "heldout_loss"])
    r = r[r["heldout_loss"] > 0]
    keys = [c for c in CELL if c in r]
    ss, dof, cells, n = 0.0, 0, 0, 0
    for _, g in r.groupby(keys, dropna=False):
        per_seed = np.log(g.groupby("seed")["heldout_loss"].mean().to_numpy(float))
        if per_seed.size < 2:
            continue
        ss += float(np.sum((per_seed - per_seed.mean()) ** 2))
        dof += per_seed.size - 1
        cells += 1
        n += per_seed.size
    if dof == 0:
        return None
    return {"sd_log": math.sqrt(ss / dof), "cells": cells, "runs": n, "dof": dof}


def widen(centre: float, interval: tuple[float, float], scatter: dict | None, level: float) -> tuple[float, float]:
    """`interval` of an expected loss widened to one run's loss: half-widths (log) added in
    quadrature to t(level, dof) x the seed scatter."""
    lo, hi = interval
    if scatter is None or not (math.isfinite(lo) and math.isfinite(hi)) or centre <= 0:
        return interval
    q = float(stdtrit(scatter["dof"], 0.5 + level / 2)) * scatter["sd_log"]
    down = math.sqrt(math.log(centre / lo) ** 2 + q ** 2) if lo > 0 else float("inf")
    up = math.sqrt(math.log(hi / centre) ** 2 + q ** 2)
    return centre * math.exp(-down), centre * math.exp(up)
