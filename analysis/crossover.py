"""Where two families' compute frontiers meet: the crossover and its bootstrap interval.

Each family's frontier law (analysis.frontier: L = k C^-b or L = E + k C^-b, fitted to
that family's own lr-optimal envelope) is a curve of held-out loss against training
compute. The crossover of families a and b is the compute C where L_a(C) = L_b(C),
searched within the UNION of the two families' fitted compute ranges [C_min, C_max]
(where one family has no runs its law is extrapolated, and the result says so).

  law        "offset" when both families have it (the frontier with a floor; the same
             preference as the planner's frontier loss), else "power"
  flops      the first crossing of the point-estimate laws in [C_min, C_max] (None when
             they do not cross there); `crossings` lists every one (an offset law can
             cross another twice)
  interval   percentile interval of the first crossing of the bootstrap replicates that
             cross within the range, in log C; `crossing_fraction` says how many do.
             Replicates of a and b are paired after a seeded shuffle of b's, so the two
             families' simulated noise is independent even when their fits used the
             same seed. Withheld when either law's intervals are.
  ahead_below / ahead_above  the family with the lower loss at C_min / at C_max (the
             same family when the laws do not cross)
Log losses are compared on a grid of GRID points per range and each sign change is
refined by bisection to 1e-9 in log C.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from analysis import fitting, frontier

GRID = 512  # log-spaced points over the range where a sign change is looked for
_BISECT = 60  # halvings of the bracket: (log range / 512) / 2^60, far below 1e-9


def _log_loss(p: dict[str, np.ndarray], log_c: np.ndarray) -> np.ndarray:
    """log L at log compute, for (B,) parameter arrays and (B, G) or (G,) log C."""
    k, b = (np.asarray(p[n], float).reshape(-1, 1) for n in ("k", "b"))
    with np.errstate(all="ignore"):
        term = np.log(k) - b * log_c
        if "E" not in p:
            return term
        return np.logaddexp(np.log(np.asarray(p["E"], float).reshape(-1, 1)), term)


def _first_crossing(pa: dict, pb: dict, lo: float, hi: float) -> tuple[np.ndarray, list[list[float]]]:
    """First crossing (log C, NaN when none) per row of the (B,) parameter arrays within
    [lo, hi] (log C), and every crossing per row."""
    grid = np.linspace(lo, hi, GRID)
    diff = _log_loss(pa, grid) - _log_loss(pb, grid)  # (B, G)
    ok = np.isfinite(diff).all(axis=1)
    sign = np.sign(diff)
    change = (sign[:, :-1] * sign[:, 1:] < 0) | ((sign[:, :-1] != 0) & (sign[:, 1:] == 0))
    change &= ok[:, None]
    rows, cols = np.nonzero(change)
    first = np.full(diff.shape[0], np.nan)
    every: list[list[float]] = [[] for _ in range(diff.shape[0])]
    if rows.size:
        a, b = grid[cols].copy(), grid[cols + 1].copy()
        sub_a = {k: np.asarray(v, float).reshape(-1)[rows] for k, v in pa.items()}
        sub_b = {k: np.asarray(v, float).reshape(-1)[rows] for k, v in pb.items()}
        fa = (_log_loss(sub_a, a[:, None]) - _log_loss(sub_b, a[:, None]))[:, 0]
        for _ in range(_BISECT):
            mid = 0.5 * (a + b)
            fm = (_log_loss(sub_a, mid[:, None]) - _log_loss(sub_b, mid[:, None]))[:, 0]
            left = np.sign(fm) == np.sign(fa)
            a, fa = np.where(left, mid, a), np.where(left, fm, fa)
            b = np.where(left, b, mid)
        roots = 0.5 * (a + b)
        for r, x in zip(rows, roots):
            every[r].append(float(x))
        for r in np.unique(rows):
            first[r] = min(every[r])
    return first, every


def _params(law: frontier.LawFit, samples: bool) -> dict[str, np.ndarray]:
    if samples:
        return {k: np.asarray(v, float) for k, v in law.samples.items()}
    return {k: np.array([v], float) for k, v in law.params.items()}


@dataclass
class Crossover:
    families: tuple[str, str]
    law: str  # the frontier law form compared
    compute_range: tuple[float, float]  # union of the two fitted ranges, FLOPs
    overlap: tuple[float, float] | None  # where both families have runs (None: disjoint)
    flops: float | None  # first crossing within the range (point laws); None: no crossing
    crossings: list[float]
    interval: tuple[float, float] | None
    crossing_fraction: float  # bootstrap replicates crossing within the range (NaN: withheld)
    ahead_below: str
    ahead_above: str
    level: float
    withheld: str = ""
    by_law: dict = field(default_factory=dict)  # the same, for every form both families have

    @property
    def extrapolated(self) -> bool:
        """The crossing lies where only one family has runs (the other's law is extrapolated)."""
        if self.flops is None:
            return False
        return self.overlap is None or not (self.overlap[0] <= self.flops <= self.overlap[1])

    def statement(self) -> str:
        a, b = self.families
        lo, hi = self.compute_range
        frac = (f"{self.crossing_fraction:.0%} of bootstrap replicates cross within it"
                if math.isfinite(self.crossing_fraction) else f"interval withheld: {self.withheld}")
        if self.flops is None:
            return (f"{a} and {b} do not cross within [{lo:.3g}, {hi:.3g}] FLOPs ({self.law} law): "
                    f"{self.ahead_below} is ahead throughout ({frac})")
        iv = (f"{self.level:.0%} interval {self.interval[0]:.3g}..{self.interval[1]:.3g}"
              if self.interval else "interval withheld" if self.withheld else "no interval")
        more = f"; the laws cross {len(self.crossings)} times in the range" if len(self.crossings) > 1 else ""
        extra = "; beyond one family's runs (its law extrapolated)" if self.extrapolated else ""
        return (f"{a} and {b} cross at {self.flops:.3g} FLOPs ({self.law} law; {iv}; {frac}): "
                f"{self.ahead_below} is ahead below, {self.ahead_above} above{more}{extra}")

    def to_dict(self) -> dict:
        return {"families": list(self.families), "law": self.law, "flops": self.flops,
                "interval": list(self.interval) if self.interval else None, "level": self.level,
                "crossing_fraction": self.crossing_fraction, "crossings": self.crossings,
                "ahead_below": self.ahead_below, "ahead_above": self.ahead_above,
                "compute_range_flops": list(self.compute_range),
                "overlap_flops": list(self.overlap) if self.overlap else None,
                "extrapolated": self.extrapolated, "intervals_withheld": self.withheld or None,
                "statement": self.statement(), "by_law": self.by_law}


def preferred_form(*law_sets: dict[str, frontier.LawFit]) -> str | None:
    """The frontier law compared: "offset" when every family has it, else "power"."""
    for form in ("offset", "power"):
        if all(form in laws for laws in law_sets):
            return form
    return None


def crossover(names: tuple[str, str], laws: tuple[dict, dict], ranges: tuple[tuple, tuple],
              level: float = 0.95, seed: int = 0) -> Crossover | None:
    """The crossover of two families from their frontier laws ({form: LawFit}) and fitted
    compute ranges (FLOPs); None when they share no law form."""
    form = preferred_form(*laws)
    if form is None:
        return None
    lo, hi = min(ranges[0][0], ranges[1][0]), max(ranges[0][1], ranges[1][1])
    olo, ohi = max(ranges[0][0], ranges[1][0]), min(ranges[0][1], ranges[1][1])
    overlap = (olo, ohi) if olo <= ohi else None
    results = {}
    for f in [form] + [f for f in frontier.FORMS if f != form and all(f in s for s in laws)]:
        results[f] = _one(names, laws[0][f], laws[1][f], (lo, hi), level, seed)
    main = results.pop(form)
    return Crossover(names, form, (lo, hi), overlap, level=level, by_law={
        f: {"flops": r["flops"], "interval": list(r["interval"]) if r["interval"] else None,
            "crossing_fraction": r["crossing_fraction"], "ahead_below": r["ahead_below"],
            "ahead_above": r["ahead_above"]} for f, r in results.items()}, **main)


def _one(names, la: frontier.LawFit, lb: frontier.LawFit, rng_c, level, seed) -> dict:
    lo, hi = math.log(rng_c[0]), math.log(rng_c[1])
    pa, pb = _params(la, False), _params(lb, False)
    first, every = _first_crossing(pa, pb, lo, hi)
    at = np.array([lo, hi])
    da = _log_loss(pa, at)[0] - _log_loss(pb, at)[0]
    ahead = [names[0] if d < 0 else names[1] for d in da]
    withheld = "; ".join(f"{n}: {law.withheld}" for n, law in zip(names, (la, lb)) if law.withheld)
    interval, fraction = None, float("nan")
    sa, sb = _params(la, True), _params(lb, True)
    n = min(len(sa["b"]), len(sb["b"]))
    if not withheld and n:
        perm = np.random.default_rng(seed).permutation(len(sb["b"]))[:n]
        sa = {k: v[:n] for k, v in sa.items()}
        sb = {k: v[perm] for k, v in sb.items()}
        usable = np.isfinite(np.stack([v for v in (*sa.values(), *sb.values())])).all(axis=0)
        rep, _ = _first_crossing({k: v[usable] for k, v in sa.items()}, {k: v[usable] for k, v in sb.items()},
                                 lo, hi)
        fraction = float(np.mean(np.isfinite(rep))) if rep.size else float("nan")
        if np.isfinite(first[0]) and np.isfinite(rep).any():
            ilo, ihi = fitting.interval(rep, level)
            interval = (math.exp(ilo), math.exp(ihi))
    elif not withheld:
        withheld = "no bootstrap resamples"
    return {"flops": math.exp(first[0]) if np.isfinite(first[0]) else None,
            "crossings": [math.exp(x) for x in sorted(every[0])], "interval": interval,
            "crossing_fraction": fraction, "ahead_below": ahead[0], "ahead_above": ahead[1], "withheld": withheld}


def all_pairs(fits: dict[str, tuple[dict, tuple[float, float]]], level: float = 0.95,
              seed: int = 0) -> list[Crossover]:
    """Every pair of families (sorted by name): {family: (laws, compute range)}."""
    out = []
    for i, (a, b) in enumerate(combinations(sorted(fits), 2)):
        (la, ra), (lb, rb) = fits[a], fits[b]
        c = crossover((a, b), (la, lb), (ra, rb), level=level, seed=seed + 31 * i)
        if c is not None:
            out.append(c)
    return out
