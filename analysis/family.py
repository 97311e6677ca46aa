"""Candidate NFNet family members for the planner, counted without jax.

The one place `analysis` calls `scaling.models` (config + counts, both pure Python).
A recommendation is a concrete family member (depth and width multipliers) whose
parameter count is closest in log to N_opt, plus the nearest named preset F0..F7(+).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_RESOLUTION = 224  # [S23] trains at 224x224 (docs/references.md#models-and-data)
# Depth multipliers searched, 1/8 to 16 (F7 is depth 8): short decimals so the names
# (scaling.models.config.model_name) stay readable and round-trip through get_config.
DEPTHS = (0.125, 0.25, 0.375, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12, 14, 16)


def _count(cfg, resolution):
    from scaling.models.counts import count

    c = count(cfg, resolution)
    return float(c.params), float(c.flops)


def infer_num_classes(runs: pd.DataFrame, resolution: int) -> int:
    """Classes implied by an observed model's parameter count (params are linear in the
    number of classes through the classifier); 1000 ([B21]) when nothing is known."""
    from scaling.models.config import family_config

    known = runs.dropna(subset=["depth_mult", "width_mult", "params"])
    if known.empty:
        return 1000
    row = known.iloc[0]
    try:
        p1 = _count(family_config(row["depth_mult"], row["width_mult"], num_classes=1), resolution)[0]
        p2 = _count(family_config(row["depth_mult"], row["width_mult"], num_classes=2), resolution)[0]
    except Exception:  # noqa: BLE001 - an unknown architecture: fall back to the default
        return 1000
    return max(1, int(round((row["params"] - p1) / (p2 - p1))) + 1)


def infer_resolution(runs: pd.DataFrame) -> int | None:
    """The train resolution of the runs: their `resolution` column, else the one at which
    an observed family member's analytic FLOPs equal its recorded FLOPs per example
    (imported runs made elsewhere may lack the column; guessing 224 px for 16 px runs
    would size the recommendation 200x off). None when neither is known."""
    from scaling.models.config import family_config

    res = runs["resolution"].dropna() if "resolution" in runs else pd.Series(dtype=float)
    if len(res):
        return int(res.median())
    cols = ["depth_mult", "width_mult", "params", "flops_per_example"]
    known = runs.dropna(subset=cols) if set(cols) <= set(runs.columns) else pd.DataFrame()
    if known.empty:
        return None
    row = known.iloc[0]
    try:
        cfg = family_config(row["depth_mult"], row["width_mult"], num_classes=infer_num_classes(runs, 64))
        ref = _count(cfg, DEFAULT_RESOLUTION)[1]
    except Exception:  # noqa: BLE001 - not a family member: nothing to match against
        return None
    # FLOPs grow ~ resolution^2; check the integers around that estimate exactly.
    guess = int(round(DEFAULT_RESOLUTION * np.sqrt(row["flops_per_example"] / ref)))
    err = {r: abs(np.log(_count(cfg, r)[1] / row["flops_per_example"])) for r in range(max(8, guess - 8), guess + 9)}
    low = min(err.values())
    if low > 0.02:
        return None
    # Strided convs make neighbours tie (15 and 16 px give the same maps after the stem's
    # stride 2) and published FLOPs are rounded (Table 3: 4 digits): among sizes within
    # 0.5% of the best, prefer the most even one, as image sizes are (16, 32, 224, 256 ...).
    return max((r for r, e in err.items() if e <= low + 0.005), key=lambda r: (r & -r, r))


def candidates(runs: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Family members to recommend from: (table, resolution, num_classes); the
    resolution falls back to DEFAULT_RESOLUTION when `infer_resolution` cannot tell."""
    from scaling.models.config import PRESETS, family_config, get_config, model_name

    resolution = infer_resolution(runs) or DEFAULT_RESOLUTION
    num_classes = infer_num_classes(runs, resolution)
    widths = sorted(set(runs["width_mult"].dropna().astype(float))) or [1.0]
    rows = []
    for w in widths:
        for d in DEPTHS:
            cfg = family_config(d, w, num_classes=num_classes)
            params, flops = _count(cfg, resolution)
            rows.append({"name": model_name(cfg), "depth_mult": d, "width_mult": w, "params": params,
                         "flops_per_example": flops, "named": False})
    for base in PRESETS:
        for plus in ("", "+"):
            cfg = get_config(base + plus, num_classes=num_classes)
            params, flops = _count(cfg, resolution)
            rows.append({"name": base + plus, "depth_mult": cfg.depth_mult,
                         # "+" widens stages unevenly: no single multiplier
                         # (docs/references.md#depths-and-widths-of-the-variants)
                         "width_mult": float("nan") if plus else 1.0, "params": params,
                         "flops_per_example": flops, "named": True})
    return pd.DataFrame(rows), resolution, num_classes


def nearest(table: pd.DataFrame, params: float, named: bool | None = None) -> pd.Series:
    t = table if named is None else table[table["named"] == named]
    return t.iloc[int(np.argmin(np.abs(np.log(t["params"].to_numpy()) - np.log(params))))]
