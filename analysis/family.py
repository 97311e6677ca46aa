"""Candidate architectures for the planner, per family, counted without jax.

The one place `analysis` calls `scaling.models` (configs, counts and the family registry,
all pure Python). The planner recommends only within the family the runs belong to
(`candidates_for`), the member whose parameter count is closest in log to N_opt:
  nfnet  a member of the continuous family (depth and width multipliers) at the runs'
         widths, plus the nearest named preset F0..F7(+);
  vit    a member of the continuous ViT family with the runs' own shape rule (patch size,
         pooling, MLP ratio, head width) over a grid of widths and depths, plus the
         nearest named variant (ViT-Ti..G, So400m);
each counted at the runs' resolution and class count. A family the project cannot build
(an imported family, "unknown") gets None: the planner then answers with N, D, epochs, lr
and loss from the law and the runs' own FLOPs-per-example relation, and no architecture.
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


def nearest(table: pd.DataFrame, params: float, named: bool | None = None) -> pd.Series | None:
    t = table if named is None else table[table["named"] == named]
    if t.empty:
        return None
    return t.iloc[int(np.argmin(np.abs(np.log(t["params"].to_numpy()) - np.log(params))))]


def candidates_for(family: str, runs: pd.DataFrame) -> tuple[pd.DataFrame, int, int] | None:
    """(table, resolution, num_classes) of `family`'s members to recommend from, or None
    when the project has no candidate architectures for that family (never another
    family's: an NFNet is no answer for runs of a ViT or of an imported family)."""
    make = CANDIDATES.get(family)
    return make(runs) if make is not None else None


def no_architecture_reason(family: str) -> str:
    """Why the plan names no architecture for `family` (candidates_for gave None)."""
    if family == "unknown":
        return ("the runs' family is not one this project knows: imported runs without a `family` column "
                "and with model names no family owns")
    if family in CANDIDATES:
        return (f"none of the runs' model names is a {family} this project can build, so no member can be "
                "sized against them")
    return f"this project has no candidate architectures for family {family!r} to recommend from"


# ---------------------------------------------------------------------------- ViT
# Heads (width = heads x the runs' head width) and depths searched: ViT-Ti has 3 heads,
# ViT-G 16 at width 1664 and depth 48 (scaling/models/vit_config.py VARIANTS).
VIT_HEADS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)
VIT_DEPTHS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 27, 32, 40, 48, 64)
VIT_DEFAULT_RESOLUTION = 224  # [D21] / big_vision: 224 px crops (vit_config.ViTConfig)


def _vit_runs(runs: pd.DataFrame) -> list[tuple]:
    """(config with 1 class, median params, median FLOPs/example) per ViT model of the runs."""
    from scaling.errors import BadInput
    from scaling.models.registry import family

    vit = family("vit")
    out = []
    for model, g in runs.groupby("model"):
        try:
            cfg = vit.get_config(str(model), num_classes=1)
        except BadInput:
            continue
        out.append((cfg, float(g["params"].median()), float(g["flops_per_example"].median())
                    if "flops_per_example" in g else float("nan")))
    return out


def _vit_classes(cfg, params: float, resolution: int) -> int | None:
    """Classes that make `cfg` at `resolution` have exactly `params` (the classifier adds
    width + 1 per class); None when no whole number of classes does."""
    from scaling.models.vit_counts import count

    try:
        p1 = count(cfg.with_(num_classes=1), resolution).params
    except Exception:  # noqa: BLE001 - a resolution below one patch
        return None
    k, rest = divmod(params - p1, cfg.width + 1)
    return int(k) + 1 if rest == 0 and k >= 0 else None


def vit_resolution_and_classes(runs: pd.DataFrame) -> tuple[int | None, int | None]:
    """The runs' train resolution (their column, else the one at which an observed ViT's
    exact parameter count and FLOPs per example both match: the position embeddings make
    params depend on the number of patches) and their class count; None when unknown."""
    from scaling.models.vit_counts import count

    seen = _vit_runs(runs)
    res = runs["resolution"].dropna() if "resolution" in runs else pd.Series(dtype=float)
    if len(res):
        r = int(res.median())
        return r, next((k for cfg, p, _ in seen if (k := _vit_classes(cfg, p, r))), None)
    best = None
    for cfg, p, f in seen:
        for side in range(1, 129):  # patches per side: the count depends on the resolution only through it
            r = side * cfg.patch_size
            k = _vit_classes(cfg, p, r)
            if k is None:
                continue
            err = abs(np.log(count(cfg.with_(num_classes=k), r).flops / f)) if np.isfinite(f) else 0.0
            if err <= 0.02 and (best is None or err < best[0]):
                best = (err, r, k)
        if best is not None:
            return best[1], best[2]
    return None, None


def vit_candidates(runs: pd.DataFrame) -> tuple[pd.DataFrame, int, int] | None:
    """ViT members to recommend from: (table, resolution, num_classes). The runs' shape
    rule (patch size, pooling, MLP ratio, head width: medians over their ViTs) over
    VIT_HEADS x VIT_DEPTHS, the runs' own models, and the named variants at the runs'
    patch size (16 when it is neither 14 nor 16). None when no run's model name is a ViT
    this project can build: nothing to size a member against."""
    from scaling.models.registry import family
    from scaling.models.vit_config import PATCHES, family_config

    vit = family("vit")
    seen = _vit_runs(runs)
    if not seen:
        return None
    resolution, num_classes = vit_resolution_and_classes(runs)
    resolution, num_classes = resolution or VIT_DEFAULT_RESOLUTION, num_classes or 1000
    patch = int(pd.Series([c.patch_size for c, _, _ in seen]).mode().iloc[0])
    pool = pd.Series([c.pool for c, _, _ in seen]).mode().iloc[0]
    ratio = float(np.median([c.mlp_dim / c.width for c, _, _ in seen]))
    head = max(1, int(round(float(np.median([c.width / c.num_heads for c, _, _ in seen])))))
    rows = []

    def add(cfg, named):
        cfg = cfg.with_(num_classes=num_classes)
        try:
            c = vit.count(cfg, resolution)
        except Exception:  # noqa: BLE001 - e.g. a preset's patch larger than the runs' images
            return
        rows.append({"name": vit.model_name(cfg), "params": float(c.params), "flops_per_example": float(c.flops),
                     "named": named, "architecture": vit.summary(cfg)})

    for h in VIT_HEADS:
        width = h * head
        for depth in VIT_DEPTHS:
            add(family_config(width, depth, max(1, int(round(ratio * width))), h, patch, num_classes=1, pool=pool),
                False)
    for cfg, _, _ in seen:
        add(cfg, False)
    for name in vit.presets:
        if name.endswith(f"/{patch if patch in PATCHES else 16}"):
            add(vit.get_config(name, num_classes=1), True)
    table = pd.DataFrame(rows).drop_duplicates("name").reset_index(drop=True)
    return table, resolution, num_classes


# Families whose members the planner can name, and how it lists them.
CANDIDATES = {"nfnet": candidates, "vit": vit_candidates}
