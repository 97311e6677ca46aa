"""Which shape to recommend: the sweep's own scaling ladder, and a shape-aware law.

Ladder. A sweep grows its models along some rule (the demo: width 1/32..1/8 at depth
1/4). Each numeric shape coordinate of the swept members (`Family.shape`: NFNet depth
and width multipliers; ViT width, depth, MLP width, heads) is fitted as a power of the
parameter count, log x = a + b log N, by least squares over the swept members; a
coordinate the sweep never varies stays where it was (b = 0), and so do non-numeric
ones (pooling). The member recommended for N_opt is the ladder point whose counted
parameters are nearest N_opt, its coordinates rounded to what the family takes: whole
numbers in steps of the swept values' greatest common divisor (ViT widths 64, 128, 192
-> steps of 64, so widths stay whole numbers of heads), multipliers to a quarter-octave
grid 2^k x {1, 1.25, 1.5, 1.75} (0.125, 0.375, 2.5 ...: short decimals, readable names).
A recommended coordinate outside the swept range gets a `WARNING: shape extrapolation`
line saying how far outside: the law was measured on the swept shapes only.

Shape-aware law. [A23] (SoViT, docs/references.md#a-shape-aware-law) find that the loss-
optimal shape at fixed size moves with compute as a power law. When a sweep holds
several shapes of about the same size (>= 3 distinct values of one coordinate within a
factor SAME_SIZE of params), each (size group, epoch budget) cell gives the optimal
coordinate at its compute (vertex of a parabola of loss in log x); log x_opt = a + s log C
is fitted over the cells by least squares, and the plan's shape comes from it with a
t-interval (withheld with fewer than 3 cells: no degree of freedom left).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # Student t quantile (scipy.stats would import scipy.optimize)

# Multiplier grid: quarter octaves, 2^k x these (docs/analysis.md#shape).
MULT_STEPS = (1.0, 1.25, 1.5, 1.75)
LADDER_SPAN = 2.0  # ladder points searched within e^2 (7.4x) of N_opt either side
LADDER_POINTS = 161  # targets on that log span (rounding makes most of them coincide)
SAME_SIZE = 1.3  # members within this params factor count as "one size" for the shape law
MIN_SHAPES = 3  # distinct shapes at one size needed for a vertex (a parabola has 3 coefficients)


def _round_mult(x: float) -> float:
    """Nearest quarter-octave multiplier 2^k x {1, 1.25, 1.5, 1.75} (in log)."""
    k = math.floor(math.log2(x))
    grid = [m * 2.0 ** j for j in (k - 1, k, k + 1) for m in MULT_STEPS]
    return float(min(grid, key=lambda g: abs(math.log(g / x))))


def _optional_keywords(member) -> set[str]:
    """The shape keywords `member` can do without (it derives them from the others)."""
    import inspect

    try:
        params = inspect.signature(member).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n, p in params.items() if p.default is not inspect.Parameter.empty and n != "num_classes"}


def _py(v):
    """A numpy scalar as the Python int/float/str the family's builders type-check for."""
    return v.item() if isinstance(v, np.generic) else v


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass
class Ladder:
    """A family's swept members and the power laws their coordinates follow in params."""
    fam: object = field(repr=False)
    family: str
    resolution: int
    num_classes: int
    swept: pd.DataFrame  # name, params (counted at resolution/num_classes), one column per coordinate
    varying: dict[str, tuple[float, float]]  # coordinate -> (a, b): log x = a + b log N
    fixed: dict  # coordinates held at the swept value
    steps: dict[str, float]  # integer coordinates: their rounding step (0 for multipliers)
    swept_members: list = field(repr=False, default_factory=list)

    @classmethod
    def build(cls, fam, swept, resolution: int, num_classes: int) -> "Ladder":
        rows = []
        for s in swept:
            try:
                c = fam.count(s.build(fam, num_classes), resolution)
            except Exception:  # noqa: BLE001 - a member that cannot take the resolution
                continue
            rows.append({"name": s.name, "params": float(c.params), "flops_per_example": float(c.flops), **s.shape})
        table = pd.DataFrame(rows)
        coords = list(swept[0].shape)
        varying, fixed, steps = {}, {}, {}
        log_n = np.log(table["params"].to_numpy(float)) if len(table) else np.empty(0)
        optional = _optional_keywords(fam.member)
        for k in coords:
            values = table[k].tolist() if len(table) else [swept[0].shape[k]]
            numeric = all(_is_number(v) for v in values)
            keys = [repr(v) for v in values]
            if len(set(keys)) > 1 and k in optional:
                continue  # derived (CoAtNet's stage depths follow its multipliers): the member derives it
            if not numeric or len(set(keys)) < 2:
                fixed[k] = _py(values[keys.index(max(set(keys), key=keys.count))])  # the most common
                continue
            x = np.log(np.asarray(values, float))
            b, a = np.polyfit(log_n, x, 1) if np.ptp(log_n) > 0 else (0.0, float(np.mean(x)))
            varying[k] = (float(a), float(b))
            ints = all(isinstance(v, (int, np.integer)) for v in values)
            steps[k] = float(np.gcd.reduce(np.asarray(values, int))) if ints else 0.0
        return cls(fam, fam.name, int(resolution), int(num_classes), table, varying, fixed, steps, list(swept))

    # --------------------------------------------------------------- members
    def round(self, k: str, x: float):
        """`x` rounded to what coordinate k takes (its step, or the multiplier grid)."""
        step = self.steps.get(k, 0.0)
        return int(max(step, step * round(x / step))) if step else _round_mult(x)

    def raw_at(self, params: float) -> dict[str, float]:
        return {k: math.exp(a + b * math.log(params)) for k, (a, b) in self.varying.items()}

    def shape_at(self, params: float) -> dict:
        """The ladder's coordinates at `params`, rounded to what the family takes."""
        return dict(self.fixed) | {k: self.round(k, x) for k, x in self.raw_at(params).items()}

    def nearest_with(self, coordinate: str, value: float, params: float) -> dict | None:
        """The member with `coordinate` at `value` (rounded) whose other varying coordinates,
        scaled together from the ladder's, put its params nearest `params` (a shape law moves
        one coordinate; the others make up the size)."""
        raw = self.raw_at(params)
        fixed = dict(self.fixed) | {coordinate: self.round(coordinate, value)}
        others = [k for k in self.varying if k != coordinate]
        seen, best = set(), None
        for f in np.exp(np.linspace(-3.0, 3.0, 241)):
            shape = fixed | {k: self.round(k, raw[k] * f) for k in others}
            key = tuple(sorted((k, str(v)) for k, v in shape.items()))
            if key in seen:
                continue
            seen.add(key)
            m = self._member(shape)
            if m is not None and (best is None or abs(math.log(m["params"] / params)) < abs(math.log(best["params"] / params))):
                best = m
        return best

    def _member(self, shape: dict) -> dict | None:
        from scaling.errors import BadInput

        try:
            cfg = self.fam.member(num_classes=self.num_classes, **shape)
            c = self.fam.count(cfg, self.resolution)
        except (BadInput, TypeError, ValueError, ZeroDivisionError):
            return None
        return {"model": self.fam.model_name(cfg), "shape": dict(self.fam.shape(cfg)),
                "params": float(c.params), "flops_per_example": float(c.flops),
                "architecture": self.fam.summary(cfg)}

    def members_near(self, params: float) -> list[dict]:
        """Ladder points around `params` plus the swept members themselves."""
        seen, out = set(), []
        targets = np.exp(np.linspace(math.log(params) - LADDER_SPAN, math.log(params) + LADDER_SPAN, LADDER_POINTS))
        shapes = [self.shape_at(float(n)) for n in targets]
        shapes += [{**self.fixed, **{k: _py(row[k]) for k in self.varying}} for _, row in self.swept.iterrows()]
        for shape in shapes:
            key = tuple(sorted((k, str(v)) for k, v in shape.items()))
            if key in seen:
                continue
            seen.add(key)
            m = self._member(shape)
            if m is not None:
                out.append(m)
        for s in self.swept_members:  # named presets stay themselves ("F3+")
            row = self.swept[self.swept["name"] == s.name]
            if len(row):
                cfg = s.build(self.fam, self.num_classes)
                out.append({"model": s.name, "shape": dict(s.shape), "params": float(row["params"].iloc[0]),
                            "flops_per_example": float(row["flops_per_example"].iloc[0]),
                            "architecture": self.fam.summary(cfg)})
        return out

    def nearest(self, params: float) -> dict | None:
        members = self.members_near(params)
        if not members:
            return None
        return min(members, key=lambda m: abs(math.log(m["params"] / params)))

    def swept_range(self) -> dict[str, tuple[float, float]]:
        return {k: (float(self.swept[k].min()), float(self.swept[k].max())) for k in self.varying} | \
            {k: (float(v), float(v)) for k, v in self.fixed.items() if _is_number(v)}

    def is_multiplier(self, k: str) -> bool:
        return self.steps.get(k) == 0.0 or isinstance(self.fixed.get(k), float)

    def describe(self, k: str, v) -> str:
        return f"{k} x{float(v):g}" if self.is_multiplier(k) else f"{k} {int(v)}"

    def extrapolation(self, member: dict) -> list[str]:
        """One `WARNING: shape extrapolation` line per coordinate outside the swept range."""
        out = []
        for k, (lo, hi) in self.swept_range().items():
            v = member["shape"].get(k)
            if not _is_number(v):
                continue
            if v > hi * (1 + 1e-9):
                how = f"{v / hi:.3g}x the largest swept ({self.describe(k, hi)})"
            elif v < lo * (1 - 1e-9):
                how = f"1/{lo / v:.3g} of the smallest swept ({self.describe(k, lo)})"
            else:
                continue
            out.append(f"WARNING: shape extrapolation: {member['model']} has {self.describe(k, v)}, {how}; the "
                       "laws were measured on the swept shapes only")
        return out

    def to_dict(self) -> dict:
        return {"family": self.family, "resolution": self.resolution, "num_classes": self.num_classes,
                "ladder": {k: {"a": a, "b": b, "form": f"log {k} = a + b log N"} for k, (a, b) in self.varying.items()},
                "fixed": {k: v for k, v in self.fixed.items()}, "swept_range": self.swept_range(),
                "swept_models": list(self.swept["name"]) if len(self.swept) else []}


# ------------------------------------------------------------------ shape-aware law
@dataclass
class ShapeLaw:
    """log x_opt = a + s log C over (size group, epoch budget) cells ([A23])."""
    coordinate: str
    a: float
    s: float
    cov: np.ndarray
    n_cells: int
    cells: pd.DataFrame
    level: float = 0.95

    def predict(self, compute: float) -> float:
        return float(math.exp(self.a + self.s * math.log(compute)))

    def interval(self, compute: float) -> tuple[float, float]:
        dof = self.n_cells - 2
        if dof < 1:
            return float("nan"), float("nan")
        x = np.array([1.0, math.log(compute)])
        half = float(stdtrit(dof, 0.5 + self.level / 2) * math.sqrt(x @ self.cov @ x))
        centre = self.a + self.s * math.log(compute)
        return float(math.exp(centre - half)), float(math.exp(centre + half))

    def to_dict(self, compute: float | None = None) -> dict:
        out = {"coordinate": self.coordinate, "form": f"log {self.coordinate}_opt = a + s log C", "a": self.a,
               "s": self.s, "n_cells": self.n_cells, "level": self.level,
               "cells": self.cells.to_dict(orient="records")}
        if compute is not None:
            out |= {"at_budget": self.predict(compute), "interval": self.interval(compute)}
        return out


def shape_cells(opt: pd.DataFrame, coords: pd.DataFrame, coordinate: str) -> pd.DataFrame:
    """Per (size group, epoch budget) with >= MIN_SHAPES values of `coordinate`: the vertex
    of loss vs log coordinate (a parabola through the lr-optimal losses) at the cell's
    compute; cells whose parabola opens downward or whose vertex leaves the swept values
    are skipped (an optimum not bracketed)."""
    pts = opt.drop(columns=[coordinate], errors="ignore").merge(coords[["model", coordinate]], on="model")
    pts = pts.dropna(subset=["params", "heldout_loss", "epochs"])
    if pts.empty:
        return pd.DataFrame()
    group, g, start = {}, -1, 0.0
    for n in np.sort(pts["params"].unique()):  # a new group when n leaves SAME_SIZE of the group's first
        if g < 0 or n > start * SAME_SIZE:
            g, start = g + 1, n
        group[n] = g
    pts["group"] = pts["params"].map(group)
    rows = []
    for (grp, ep), cell in pts.groupby(["group", "epochs"]):
        if cell[coordinate].nunique() < MIN_SHAPES:
            continue
        x = np.log(cell[coordinate].to_numpy(float))
        c2, c1, _ = np.polyfit(x, cell["heldout_loss"].to_numpy(float), 2)
        if c2 <= 0:
            continue
        v = -c1 / (2 * c2)
        if not x.min() <= v <= x.max():
            continue
        rows.append({"group": int(grp), "epochs": float(ep), "params": float(np.exp(np.log(cell["params"]).mean())),
                     "compute": float(np.exp(np.log(cell["train_flops"]).mean())), f"{coordinate}_opt": float(np.exp(v)),
                     "n_shapes": int(cell[coordinate].nunique())})
    return pd.DataFrame(rows)


MIN_LAW_CELLS = 3  # a line through the cells plus one degree of freedom for its t-interval


def fit_shape_law(opt: pd.DataFrame, coords: pd.DataFrame, level: float = 0.95) -> tuple[ShapeLaw | None, str]:
    """The law for the coordinate the sweep varies most at fixed size, or (None, why)."""
    best = None
    for k in [c for c in coords.columns if c != "model"]:
        if not pd.api.types.is_numeric_dtype(coords[k]):
            continue
        cells = shape_cells(opt, coords, k)
        if len(cells) and (best is None or len(cells) > len(best[1])):
            best = (k, cells)
    if best is None:
        return None, (f"no sweep of shapes at fixed size (>= {MIN_SHAPES} shapes within {SAME_SIZE}x params "
                      "with a bracketed optimum)")
    k, cells = best
    if cells["compute"].nunique() < 2:
        return None, f"{k}: optimal shape found at one compute only; need >= 2 budgets for its trend"
    if len(cells) < MIN_LAW_CELLS:
        # Two cells fix a line exactly: no interval, and the measured `shape` spec's two
        # cells put depth at 1/13 of the smallest swept. A shape recommended without an
        # interval is not one a user can act on, so the ladder answers instead.
        return None, (f"{k}: the optimal shape is bracketed in {len(cells)} (size, budget) cells only; the law needs "
                      f">= {MIN_LAW_CELLS} for an interval, so the plan keeps to the sweep's ladder")
    x = np.column_stack([np.ones(len(cells)), np.log(cells["compute"].to_numpy(float))])
    y = np.log(cells[f"{k}_opt"].to_numpy(float))
    theta, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(y) - 2
    scatter2 = float(np.sum((y - x @ theta) ** 2) / dof) if dof > 0 else float("nan")
    cov = scatter2 * np.linalg.pinv(x.T @ x)
    return ShapeLaw(k, float(theta[0]), float(theta[1]), cov, len(cells), cells, level), ""
