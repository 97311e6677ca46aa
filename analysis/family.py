"""The runs' own family members, read through the family registry (counted without jax).

The one place `analysis` calls `scaling.models`, and only through the registry
(scaling/models/registry.py): a family that provides `shape`, `member` and `count` can be
planned for; its swept members (the runs' model names parsed by the family, or a member
rebuilt from the runs' shape columns) are what analysis.shape builds its scaling ladder
from. A family without them, or runs whose model names no family can build (an imported
family, "unknown"), get None: the planner then answers with N, D, epochs, lr and loss
from the law and the runs' own FLOPs-per-example relation, and no architecture.

The runs' resolution and class count are read from their columns when present, else
inferred from an observed member's exact counts (params are linear in the class count
through the classifier; FLOPs grow with the resolution): imported runs made elsewhere
may lack the columns, and guessing 224 px for 16 px runs would size the recommendation
200x off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_RESOLUTION = 224  # [S23] trains at 224x224 (docs/references.md#models-and-data)
DEFAULT_CLASSES = 1000  # ImageNet-1k, [B21]'s classifier (docs/references.md#models-and-data)
MAX_RESOLUTION = 512  # inferred resolutions are searched up to this many pixels
FLOPS_MATCH = 0.02  # an inferred resolution must reproduce the recorded FLOPs/example within 2%


@dataclass
class Swept:
    """One model of the runs, as its family builds it (with 1 class)."""
    name: str
    cfg: object
    shape: dict
    params: float  # median recorded params
    flops: float  # median recorded forward FLOPs per example (NaN if unknown)
    by_name: bool = True  # the family parses the name (else rebuilt from the shape columns)

    def build(self, fam, num_classes: int):
        """This model with `num_classes` classes (a named preset stays itself: "F3+" widens
        its stages unevenly, which no member of the continuous family reproduces)."""
        if self.by_name:
            return fam.get_config(self.name, num_classes=num_classes)
        return fam.member(num_classes=num_classes, **self.shape)


def registry_family(name: str):
    """The registry's Family called `name` when it can be planned for (has shape, member
    and count), else None."""
    from scaling.errors import BadInput
    from scaling.models.registry import family

    try:
        fam = family(name)
    except BadInput:
        return None
    return fam if all(callable(getattr(fam, k, None)) for k in ("shape", "member", "count")) else None


def _shape_keys(fam) -> list[str]:
    try:
        return list(fam.shape(fam.get_config(fam.example, num_classes=1)))
    except Exception:  # noqa: BLE001 - a family whose example cannot be built: no columns to read
        return []


def swept_members(runs: pd.DataFrame, fam) -> list[Swept]:
    """The runs' models that `fam` can build: by name, else from the runs' shape columns."""
    from scaling.errors import BadInput

    keys = _shape_keys(fam)
    out = []
    for model, g in runs.groupby("model"):
        cfg, by_name = None, True
        try:
            cfg = fam.get_config(str(model), num_classes=1)
        except BadInput:
            by_name = False
            if keys and set(keys) <= set(g.columns) and g[keys].notna().all(axis=None):
                try:
                    cfg = fam.member(num_classes=1, **{k: g[k].iloc[0] for k in keys})
                except (BadInput, TypeError, ValueError):
                    cfg = None
        if cfg is None:
            continue
        flops = float(g["flops_per_example"].median()) if "flops_per_example" in g else float("nan")
        out.append(Swept(str(model), cfg, dict(fam.shape(cfg)), float(g["params"].median()), flops, by_name))
    return out


def _counts(fam, s: Swept, k: int, r: int, channels: int = 3):
    c = fam.count(s.build(fam, k), r, channels=channels)
    return float(c.params), float(c.flops)


# Input channels the runs may have had: RGB, or grayscale (Fashion-MNIST).
CHANNELS = (3, 1)


def _classes_at(fam, s: Swept, r: int) -> int | None:
    """Classes that give `s` exactly its recorded params at resolution r (RGB or grayscale
    input); None if none do."""
    for channels in CHANNELS:
        try:
            p1, p2 = _counts(fam, s, 1, r, channels)[0], _counts(fam, s, 2, r, channels)[0]
        except Exception:  # noqa: BLE001 - a resolution the member cannot take
            return None
        if p2 <= p1:
            return None
        k = (s.params - p1) / (p2 - p1) + 1
        if k >= 0.5 and abs(k - round(k)) < 1e-3:
            return int(round(k))
    return None


def infer_setup(runs: pd.DataFrame, fam, swept: list[Swept] | None = None) -> tuple[int | None, int | None]:
    """(resolution, num_classes) of the runs: their columns when recorded, else the pair at
    which an observed member's counts match its recorded params and FLOPs per example.
    Strided layers make neighbouring sizes tie and published FLOPs are rounded, so among
    sizes within 0.5% of the best match the most even one wins (image sizes are 16, 32,
    224, ...). None where unknown."""
    swept = swept_members(runs, fam) if swept is None else swept
    res = runs["resolution"].dropna() if "resolution" in runs else pd.Series(dtype=float)
    if len(res):
        r = int(res.median())
        return r, next((k for s in swept if (k := _classes_at(fam, s, r))), None)
    for s in swept:
        if not np.isfinite(s.flops):
            continue
        try:
            ref = _counts(fam, s, 1, DEFAULT_RESOLUTION)[1]
        except Exception:  # noqa: BLE001
            continue
        guess = int(round(DEFAULT_RESOLUTION * np.sqrt(s.flops / ref)))  # FLOPs grow ~ resolution^2
        # Every integer near that guess, and every multiple of the member's smallest input
        # (a ViT's patch: attention makes FLOPs grow faster than r^2, so the guess can be far off).
        unit = max(1, int(fam.min_resolution(s.cfg)[0])) if callable(getattr(fam, "min_resolution", None)) else 8
        tried = set(range(max(1, guess - 8), guess + 9)) | set(range(unit, MAX_RESOLUTION + 1, unit))
        err = {}
        for r in sorted(tried):
            k = _classes_at(fam, s, r)
            if k is None:
                continue
            try:
                err[r] = (abs(np.log(_counts(fam, s, k, r)[1] / s.flops)), k)
            except Exception:  # noqa: BLE001
                continue
        if not err:
            continue
        low = min(e for e, _ in err.values())
        if low > FLOPS_MATCH:
            continue
        best = max((r for r, (e, _) in err.items() if e <= low + 0.005), key=lambda r: (r & -r, r))
        return best, err[best][1]
    return None, None


def infer_resolution(runs: pd.DataFrame, family: str = "nfnet") -> int | None:
    """The runs' train resolution (see infer_setup); None when it cannot be told."""
    fam = registry_family(family)
    return None if fam is None else infer_setup(runs, fam)[0]


def named_members(fam, resolution: int, num_classes: int) -> pd.DataFrame:
    """The family's named variants counted at the runs' resolution and classes (those that
    cannot take it, e.g. a patch larger than the image, are left out)."""
    rows = []
    for name in fam.presets:
        try:
            c = fam.count(fam.get_config(name, num_classes=num_classes), resolution)
        except Exception:  # noqa: BLE001
            continue
        rows.append({"name": name, "params": float(c.params), "flops_per_example": float(c.flops)})
    return pd.DataFrame(rows, columns=["name", "params", "flops_per_example"])


def nearest(table: pd.DataFrame, params: float) -> pd.Series | None:
    if table.empty:
        return None
    return table.iloc[int(np.argmin(np.abs(np.log(table["params"].to_numpy(float)) - np.log(params))))]


def candidates_for(family: str, runs: pd.DataFrame):
    """The scaling ladder (analysis.shape.Ladder) of `family`'s swept members, or None when
    the project cannot build that family's members from these runs (never another
    family's: an NFNet is no answer for runs of a ViT or of an imported family)."""
    from analysis import shape

    fam = registry_family(family)
    if fam is None:
        return None
    swept = swept_members(runs, fam)
    if not swept:
        return None
    resolution, num_classes = infer_setup(runs, fam, swept)
    return shape.Ladder.build(fam, swept, resolution or DEFAULT_RESOLUTION, num_classes or DEFAULT_CLASSES)


def no_architecture_reason(family: str) -> str:
    """Why the plan names no architecture for `family` (candidates_for gave None)."""
    if family == "unknown":
        return ("the runs' family is not one this project knows: imported runs without a `family` column "
                "and with model names no family owns")
    if registry_family(family) is not None:
        return (f"none of the runs' model names is a {family} this project can build, so no member can be "
                "sized against them")
    return f"this project has no candidate architectures for family {family!r} to recommend from"
