"""Orchestration: runs -> lr optima -> frontier laws, Approach 3, backtest, IsoFLOP.

Each step is independent of the others' success: a step that cannot be done (too few
points, one model, ...) leaves its result as None and adds a note saying why, so the
report always says as much as the data allows and never shows a traceback.

Families: every law is fitted per architecture family (the runs' `family` column,
analysis.load.family_column). One family: run_analysis returns that family's Analysis,
as it always did. Several: it returns a study-level Analysis whose `families` holds one
Analysis per family, whose `opt`/`trend`/`backtest`/`isoflop` are theirs stacked with a
`family` column, whose notes are theirs prefixed with the family's name, and whose
`crossovers` say where each pair's frontier laws meet (analysis.crossover).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import chinchilla, crossover, fitting, frontier, lr
from analysis.load import UNKNOWN_FAMILY, family_column

DEFAULT_RESAMPLES = 1000  # at least 1000 bootstrap resamples (docs/analysis.md#methods)
DEFAULT_LEVEL = 0.95
# Below these the fit "rests on few points" and every output says so (one WARNING line).
# Sizes: 3 distinct values identify the N exponent, with nothing left to check the law's
# shape in N; 4 sizes x 3 budgets is the smallest design whose measured coverage is at or
# above nominal for every quantity (docs/analysis.md; 3x3 under-covers alpha and the loss
# 3 decades out). Residual degrees of freedom: with dof <= 4 the small-sample factor
# t(0.975, dof) / 1.96 is >= 1.4, so the noise scale itself is barely known.
ADVISED_SIZES, ADVISED_BUDGETS, ADVISED_DOF = 4, 3, 5
WARNING = "WARNING: "  # prefix of the few-points line in notes (CLI, report, demo, plan)


@dataclass
class Analysis:
    runs: pd.DataFrame
    notes: list[str]
    opt: pd.DataFrame
    trend: pd.DataFrame
    laws: dict[str, frontier.LawFit] = field(default_factory=dict)
    backtest: pd.DataFrame = field(default_factory=pd.DataFrame)
    approach3: chinchilla.ChinchillaFit | None = None
    isoflop: pd.DataFrame = field(default_factory=pd.DataFrame)
    level: float = DEFAULT_LEVEL
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    lr_law: lr.LrLaw | None = None  # one pooled lr law over every (model, epochs) optimum
    family: str = ""  # the family analysed; "" for a study of several (see `families`)
    families: dict[str, "Analysis"] = field(default_factory=dict)  # per family, when several
    crossovers: list[crossover.Crossover] = field(default_factory=list)  # every pair of families

    @property
    def per_family(self) -> dict[str, "Analysis"]:
        """{family: its Analysis}: `families` for a study of several, else {family: self}."""
        return dict(self.families) if self.families else {self.family or UNKNOWN_FAMILY: self}

    @property
    def warnings(self) -> list[str]:
        return [n for n in self.notes if n.startswith(WARNING)]

    @property
    def dataset_size(self) -> float:
        """Training-set size implied by the runs (examples_seen / epochs), NaN if unknown."""
        r = self.runs.dropna(subset=["epochs"])
        r = r[r["epochs"] > 0]
        return float(np.median(r["examples_seen"] / r["epochs"])) if len(r) else float("nan")

    @property
    def batch_size(self) -> float:
        b = self.runs["batch_size"].dropna()
        return float(b.mode().iloc[0]) if len(b) else float("nan")

    @property
    def compute_range(self) -> tuple[float, float]:
        c = self.opt["train_flops"].dropna()
        return (float(c.min()), float(c.max())) if len(c) else (float("nan"), float("nan"))

    def to_dict(self) -> dict:
        """The summary (`scaling analyze --json`, fits.json): the fits of a single family at
        the top level as before, every family's under `families`, and `crossovers`."""
        out = self._own_dict()
        out["family"] = self.family or None
        out["families"] = {name: sub._own_dict() for name, sub in self.per_family.items()}
        out["crossovers"] = [c.to_dict() for c in self.crossovers]
        return out

    def _own_dict(self) -> dict:
        out = {"notes": self.notes, "n_runs": len(self.runs), "n_optima": len(self.opt),
               "resamples": self.resamples, "seed": self.seed, "level": self.level,
               "dataset_size": self.dataset_size, "compute_range_flops": self.compute_range,
               "laws": {k: v.to_dict() for k, v in self.laws.items()},
               "approach3": self.approach3.to_dict() if self.approach3 else None,
               "lr_trend": self.trend.to_dict(orient="records"),
               "lr_law": self.lr_law.to_dict() if self.lr_law else None,
               "backtest": self.backtest.to_dict(orient="records")}
        return out


def jsonable(obj):
    """Strict-JSON version of a result dict: NaN/inf -> null, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if obj is None or isinstance(obj, (int, str, bool)):
        return obj
    return str(obj)


_FIT_ERRORS = (ValueError, np.linalg.LinAlgError, FloatingPointError)


def run_analysis(runs: pd.DataFrame, notes: list[str] | None = None, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0, level: float = DEFAULT_LEVEL, laws: bool = True, backtest: bool = True,
                 approach3: bool = True, polish: bool = True) -> Analysis:
    """All steps, per family; `polish=False` (the planner) skips the L-BFGS-B polish of
    Approach 3. With several families, also the crossover of every pair (needs `laws`)."""
    notes = list(notes or [])
    fam = family_column(runs)
    names = sorted(fam.unique())
    kw = dict(resamples=resamples, seed=seed, level=level, laws=laws, backtest=backtest, approach3=approach3,
              polish=polish)
    if len(names) <= 1:
        res = _run_family(runs, notes, **kw)
        res.family = names[0] if names else UNKNOWN_FAMILY
        return res
    subs = {name: _run_family(runs[fam == name].reset_index(drop=True), [], **kw) for name in names}
    for name, sub in subs.items():
        sub.family = name

    def stack(attr):
        frames = [getattr(sub, attr).assign(family=name) for name, sub in subs.items()
                  if not getattr(sub, attr).empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    warnings = [f"{WARNING}{name}: {n[len(WARNING):]}" for name, sub in subs.items() for n in sub.warnings]
    own = [f"{name}: {n}" for name, sub in subs.items() for n in sub.notes if n not in sub.warnings]
    opt = stack("opt")
    res = Analysis(runs, warnings + notes + own, opt if len(opt) else subs[names[0]].opt, stack("trend"),
                   backtest=stack("backtest"), isoflop=stack("isoflop"), level=level, resamples=resamples,
                   seed=seed, families=subs)
    fitted = {name: (sub.laws, sub.compute_range) for name, sub in subs.items() if sub.laws}
    res.crossovers = crossover.all_pairs(fitted, level=level, seed=seed)
    if laws:
        missing = [name for name in names if name not in fitted]
        for c in res.crossovers:
            res.notes.append(f"crossover: {c.statement()}")
        if missing:
            res.notes.append(f"crossover: not computed for {', '.join(missing)} (no frontier law fitted)")
    return res


def _run_family(runs: pd.DataFrame, notes: list[str], resamples: int, seed: int, level: float, laws: bool,
                backtest: bool, approach3: bool, polish: bool) -> Analysis:
    """Every step for the runs of one family."""
    opt = lr.optimal_lr(runs)
    trend = lr.lr_trend(opt)
    res = Analysis(runs, notes, opt, trend, level=level, resamples=resamples, seed=seed)
    if opt.empty:
        notes.append("no finished runs with a finite held-out loss: nothing to fit")
        return res
    notes += edge_notes(opt)
    if trend["s"].isna().all():
        notes.append("lr trend: needs >= 2 epoch budgets per model; none has them")
    res.lr_law, why = lr.fit_lr_law(opt, level=level)
    if res.lr_law is None:
        notes.append(f"lr law not fitted: {why}")
    if opt["model"].nunique() < 2:
        notes.append("only one model: the frontier is that model's curve; N_opt cannot be fitted")
    c, l = opt["train_flops"].to_numpy(float), opt["heldout_loss"].to_numpy(float)
    if laws:
        for i, form in enumerate(frontier.FORMS):
            try:
                res.laws[form] = frontier.fit_law(form, c, l, resamples=resamples, seed=seed + i, level=level)
            except _FIT_ERRORS as err:
                notes.append(f"frontier law '{form}' not fitted: {err}")
    if backtest:
        try:
            res.backtest = frontier.backtest(c, l)
            if res.backtest.empty:
                notes.append("backtest: too few frontier points to hold any out")
        except _FIT_ERRORS as err:
            notes.append(f"backtest not done: {err}")
    if approach3:
        try:
            res.approach3 = chinchilla.fit_approach3(opt, resamples=resamples, seed=seed + 7, level=level,
                                                     polish=polish)
        except _FIT_ERRORS as err:
            notes.append(f"Approach 3 (N_opt, D_opt) not fitted: {err}")
        if backtest:
            try:
                res.backtest = pd.concat([res.backtest, chinchilla.backtest(opt)], ignore_index=True)
            except _FIT_ERRORS as err:
                notes.append(f"Approach 3 backtest not done: {err}")
        try:
            res.isoflop = chinchilla.isoflop_profiles(opt, res.approach3, level=level)
            if not chinchilla.has_isoflop_design(res.isoflop):
                notes.append(f"IsoFLOP: no IsoFLOP design (no half-decade compute bin holds >= "
                             f"{chinchilla.ISOFLOP_MIN_SIZES} model sizes), so no IsoFLOP profile is drawn")
        except _FIT_ERRORS as err:
            notes.append(f"IsoFLOP profiles not computed: {err}")
    fits = {**{f"frontier law '{k}'": v for k, v in res.laws.items()}, "Approach 3": res.approach3}
    at_bound = [name for name, fit in fits.items() if fit is not None and fitting.floor_at_bound(fit.params)]
    if at_bound:
        notes.append(f"{' and '.join(at_bound)}: the irreducible loss E was fitted at its bound 0 (the runs show "
                     f"no floor yet), so E is not identified and its interval is withheld; the other "
                     f"parameters' intervals stand")
    warning = few_points_warning(opt, res.approach3, res.laws)
    if warning:
        notes.insert(0, warning)
    for name, fit in [*res.laws.items(), ("approach3", res.approach3)]:
        if fit is not None and not fit.success:
            notes.append(f"fit '{name}' did not meet the convergence test: {fit.status}")
        if fit is not None and resamples and fit.converged_fraction < 0.95:  # False when NaN (withheld)
            notes.append(f"fit '{name}': only {fit.converged_fraction:.0%} of the bootstrap refits converged within "
                         f"{fitting.BOOTSTRAP_MAX_ITER} iterations; the others (laws running off along a direction "
                         "the data do not pin down) are kept at their last iterate, so the intervals show it"
                         if fit.method == "parametric" else
                         f"fit '{name}': only {fit.converged_fraction:.0%} of bootstrap resamples converged "
                         "or had enough distinct points; intervals use those")
    return res


def edge_notes(opt: pd.DataFrame, listed: int = 3) -> list[str]:
    """One note per kind of unbracketed lr optimum ("low", "high", "too few lrs"): the
    count and the first few cells, never one line per cell (an import of 240 single-lr
    runs is one line, not 240)."""
    out = []
    edges = opt[opt["edge"] != ""]
    for kind, g in edges.groupby("edge", sort=True):
        cells = [f"{r.model}@{r.epochs:g}ep" for r in g.head(listed).itertuples()]
        more = f" and {len(g) - listed} more" if len(g) > listed else ""
        fix = "run more learning rates per cell" if kind == "too few lrs" else "extend the lr grid"
        out.append(f"{len(g)} x lr optimum not bracketed ({kind}), e.g. {', '.join(cells)}{more}; {fix}")
    return out


def few_points_warning(opt: pd.DataFrame, fit: chinchilla.ChinchillaFit | None,
                       laws: dict[str, frontier.LawFit]) -> str:
    """One line, "" when the design is large enough: how many points and distinct sizes the
    compute-optimal fit rests on, which intervals are withheld, and what to add to the sweep."""
    if fit is None:
        return ""
    sizes, budgets, dof = fit.n_sizes, fit.n_data_sizes, fit.dof
    if sizes >= ADVISED_SIZES and budgets >= ADVISED_BUDGETS and dof >= ADVISED_DOF:
        return ""
    add = []
    if sizes < ADVISED_SIZES:
        add.append(f"{ADVISED_SIZES - sizes} more model size(s) (width/depth multipliers)")
    if budgets < ADVISED_BUDGETS:
        add.append(f"{ADVISED_BUDGETS - budgets} more epoch budget(s)")
    if not add:
        add.append("more model sizes or epoch budgets")
    law = laws.get("power")
    front = f"; the frontier law rests on {law.n_points} frontier points" if law is not None else ""
    withheld = f"; intervals withheld: {fit.withheld}" if fit.withheld else \
        "; intervals are wide and extrapolation beyond the runs is weakly constrained"
    return (f"{WARNING}few points: the compute-optimal fit rests on {fit.n_points} (model, epochs) optima from "
            f"{sizes} model size(s) x {budgets} epoch budget(s) ({dof} residual degrees of freedom){front}"
            f"{withheld}; add {' and '.join(add)} to the sweep (advised: >= {ADVISED_SIZES} sizes x "
            f">= {ADVISED_BUDGETS} budgets)")
