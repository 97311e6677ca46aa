"""`scaling plan`: what to train for a compute budget.

From an Analysis (lr optima, lr trend, Approach 3 fit) of ONE family (the runs' own, or
`family=` / `--family` when the runs hold several): N_opt and D_opt at the budget, the
member of THAT family closest to N_opt (and the nearest named preset), its epoch budget
(the budget spent on that member's OWN FLOPs per example), its peak lr from the pooled lr
law (with an interval), and its predicted held-out loss with a bootstrap interval.
A family the project has no candidate architectures for (analysis.family.candidates_for:
imported runs of an unknown family, or a family without candidate logic) gets no concrete
architecture, never another family's: the answer is N_opt, D_opt = C / (3 f(N_opt)) with
f the runs' own FLOPs-per-example relation (the one Approach 3 uses), epochs, steps, lr
and the predicted loss at (N_opt, D_opt).

Speed (target < 1 s, docs/analysis.md#planner): the planner fits only what it needs
(lr optima, Approach 3) with PLAN_RESAMPLES bootstrap resamples instead of the report's 1000 (enough for a
95% percentile interval of a prediction), skips the L-BFGS-B polish (the batched
solver already converges to a 1e-10 step; skipping it avoids importing scipy.optimize)
and never imports matplotlib. Measured in bench/bench_analysis.py.
"""
from __future__ import annotations

import math

import numpy as np

import pandas as pd

from analysis import family as archs
from analysis import fitting, lr, repetition, seeds, shape
from analysis.pipeline import Analysis
from scaling import units
from scaling.errors import BadInput, RuntimeFailure

PLAN_RESAMPLES = 200  # modest bootstrap for the planner (see module docstring)
# Budgets more than this many orders of magnitude outside the fitted compute range are
# refused without --extrapolate ([A22]: check the backtest before trusting a law further).
MAX_DECADES_OUTSIDE = 1.0
# Iterations per profile step of the data-constrained fit (warm-started at the plain law's
# point, a profile step converges in < 100; far-off R* values crawl: analysis.repetition).
PROFILE_ITER = 100
REPETITION_RESAMPLES = 100  # the data-constrained law's bootstrap (each refit profiles 25 R* values)


def _epochs_to_flops(epochs: float, a: Analysis, size: float) -> float:
    """An epoch budget is read as epochs of the compute-optimal model: the C where
    D_opt(C) = epochs x dataset size (the recommended member then trains exactly those
    epochs, and the budget reported is what that costs on its own FLOPs/example)."""
    target = epochs * size
    lo, hi = math.log(a.compute_range[0]) - 30, math.log(a.compute_range[1]) + 30
    for _ in range(200):  # bisection in log C: D_opt grows monotonically with C
        mid = 0.5 * (lo + hi)
        if a.approach3.optimal(math.exp(mid))[1] < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return math.exp(0.5 * (lo + hi))


def for_family(a: Analysis, family: str | None = None) -> Analysis:
    """The Analysis of one family: `family`, or the only one the runs hold."""
    fams = a.per_family
    if family is None:
        if len(fams) > 1:
            raise BadInput(f"--family: the runs hold {len(fams)} families ({', '.join(sorted(fams))}); "
                           "the planner recommends within one, so choose it with --family")
        return next(iter(fams.values()))
    key = str(family).strip().lower()
    if key not in fams:
        raise BadInput(f"--family: {family!r} is not a family of the runs; they hold {', '.join(sorted(fams))}")
    return fams[key]


def check_dataset_size(dataset_size) -> None:
    if dataset_size is not None and not (isinstance(dataset_size, (int, float)) and math.isfinite(dataset_size)
                                         and dataset_size >= 1):
        raise BadInput(f"--dataset-size: {dataset_size!r} must be a number of unique training examples >= 1, "
                       "e.g. 1281167")


def _repetition(a: Analysis, level: float) -> dict:
    """The data-constrained law next to the plain one (analysis.repetition.choose_law),
    started from the plain Approach 3 point (the profile refits converge from it)."""
    fit = a.approach3
    p = fit.params
    start = np.array([[math.log(p["A"]), math.log(p["B"]), math.log(max(p["E"], 1e-6)), p["alpha"], p["beta"]]])
    starts = np.vstack([start, start + np.array([[0.0, 0.0, 0.0, 0.1, 0.1]]), start - np.array([[0, 0, 0, 0.1, 0.1]])])
    return repetition.choose_law(a.opt, starts=starts, resamples=REPETITION_RESAMPLES, seed=a.seed + 11, level=level,
                                 profile_iter=PROFILE_ITER)


def plan(a: Analysis, budget: float, unit: str, extrapolate: bool = False, utilization: float | None = None,
         level: float | None = None, family: str | None = None, dataset_size: float | None = None) -> dict:
    """What to train for `budget` (see the module docstring); `dataset_size` plans for a
    dataset of that many unique examples instead of the runs' own."""
    check_dataset_size(dataset_size)
    a = for_family(a, family)
    level = a.level if level is None else level
    parsed = units.parse_unit(unit)
    if a.approach3 is None:
        why = "; ".join(n for n in a.notes if "Approach 3" in n) or "no fit"
        raise RuntimeFailure(f"cannot plan: the compute-optimal law could not be fitted ({why})")
    size = float(dataset_size) if dataset_size is not None else a.dataset_size
    if parsed.kind == "epochs":
        if not math.isfinite(size):
            raise BadInput("--unit: 'epochs' needs the dataset size, and the runs have no epochs column; "
                           "pass --dataset-size or use FLOPs or hours")
        if not (budget > 0 and math.isfinite(budget)):
            raise BadInput(f"--budget: {budget!r} must be a finite number > 0")
        flops = _epochs_to_flops(budget, a, size)
    else:
        flops = units.to_flops(budget, parsed, utilization=utilization)
    if not flops > 0:
        raise BadInput(f"--budget: {budget!r} must be > 0")
    cmin, cmax = a.compute_range
    outside = max(0.0, math.log10(flops / cmax), math.log10(cmin / flops))
    if outside > MAX_DECADES_OUTSIDE and not extrapolate:
        side = "above the largest" if flops > cmax else "below the smallest"
        raise BadInput(f"--budget: {flops:.3g} FLOPs is {outside:.1f} orders of magnitude {side} fitted run "
                       f"({cmin:.3g}..{cmax:.3g} FLOPs); pass --extrapolate to plan anyway, or run trials nearer it")
    fit = a.approach3
    warnings = list(a.warnings)

    # Data repetition: which law plans, and the compute-optimal point under it.
    rep = _repetition(a, level) if math.isfinite(size) else \
        {"law": "plain", "fit": None, "backtest": [], "why": "the unique dataset size is unknown (no epochs "
                                                             "column; pass --dataset-size)"}
    constrained = rep["law"] == "data-constrained"
    n_opt, d_opt = (float(v) for v in fit.optimal(flops))
    n_s, d_s = fit.optimal_samples([flops])
    n_s, d_s = n_s[:, 0], d_s[:, 0]
    if constrained:
        rf = rep["fit"]
        n_opt, d_opt = (float(v) for v in repetition.constrained_optimal(rf.params, fit.flops, flops, size, n_opt))
        if rf.samples:
            n_s, d_s = repetition.constrained_optimal(rf.samples, fit.flops, flops, size, n_opt)

    # The model: a member on the sweep's own ladder (or N_opt itself for a family without one).
    ladder = archs.candidates_for(a.family, a.runs)
    recommended, why_none, shape_info = None, None, None
    if ladder is not None:
        member = ladder.nearest(n_opt)
        shape_law, shape_why = shape.fit_shape_law(a.opt, _coords(ladder), level=level)
        law_shape = None
        if shape_law is not None:
            x_opt = shape_law.predict(flops)
            law_member = ladder.nearest_with(shape_law.coordinate, x_opt, n_opt)
            if law_member is not None:
                member, law_shape = law_member, shape_law.to_dict(flops)
        if member is None:
            ladder = None
            why_none = f"no member of the {a.family} ladder can be built at {n_opt:.3g} params"
    if ladder is not None:
        named = archs.nearest(archs.named_members(ladder.fam, ladder.resolution, ladder.num_classes), n_opt)
        params, per_example, what = float(member["params"]), float(member["flops_per_example"]), member["model"]
        ends = [ladder.nearest(float(v)) for v in fitting.interval(n_s, level) if math.isfinite(v) and v > 0]
        extrapolation = ladder.extrapolation(member)
        warnings += extrapolation
        recommended = {
            "model": member["model"], **member["shape"], "shape": member["shape"], "architecture": member["architecture"],
            "params": params, "flops_per_example": per_example, "resolution": ladder.resolution,
            "num_classes": ladder.num_classes,
            "nearest_named": named["name"] if named is not None else None,
            "nearest_named_params": float(named["params"]) if named is not None else None,
        }
        shape_info = {"source": "shape-aware law" if law_shape else "ladder", **ladder.to_dict(),
                      "member": member["model"], "coordinates": member["shape"],
                      "members_at_params_interval": [m["model"] for m in ends if m is not None],
                      "extrapolated": extrapolation, "law": law_shape,
                      "law_not_fitted": None if law_shape else shape_why}
    else:  # no architecture to name: N_opt itself, on the runs' own FLOPs-per-example relation
        params, per_example = n_opt, float(fit.flops(n_opt))
        what, why_none = f"a {params:.3g}-parameter model", why_none or archs.no_architecture_reason(a.family)
    if parsed.kind == "epochs":  # the user fixed the epochs: the model trains exactly that long
        examples = budget * size
        flops = 3.0 * per_example * examples
    else:  # the user fixed the compute: spend it on the model's own FLOPs per example
        examples = flops / (3.0 * per_example)  # train = 3 x forward (docs/units.md#three-records-per-run)
    epochs = examples / size if math.isfinite(size) else float("nan")
    batch = a.batch_size
    if math.isfinite(batch) and examples < batch:
        raise BadInput(f"--budget: {budget:g} {parsed.name} buys {examples:.3g} examples of {what}, "
                       f"less than one batch of {batch:g}; raise the budget")
    max_epochs = float(a.runs["epochs"].max()) if "epochs" in a.runs and a.runs["epochs"].notna().any() else float("nan")
    if math.isfinite(epochs) and math.isfinite(max_epochs) and epochs > max_epochs * (1 + 1e-9):
        warnings.append(f"WARNING: epoch extrapolation: the plan trains {epochs:.3g} epochs, {epochs / max_epochs:.3g}x "
                        f"the most any run used ({max_epochs:g}); the {rep['law']} law's repetition treatment there "
                        "is unmeasured")
    if constrained:
        loss = float(rep["fit"].predict(params, examples, size))
        loss_s = rep["fit"].predict_samples(params, examples, size) if rep["fit"].samples else np.full(1, np.nan)
    else:
        loss = float(fit.predict(params, examples))
        loss_s = fit.predict(np.array([params]), np.array([examples]), samples=True)[:, 0]
    loss_iv = fitting.interval(np.ravel(loss_s), level)
    scatter = seeds.seed_scatter(a.runs)
    loss_iv_runs = seeds.widen(loss, loss_iv, scatter, level)
    # The pooled lr law when it could be fitted (an interval, and every cell behind it);
    # else each model's own power law, interpolated in size (no interval).
    peak_lr, peak_lr_iv, lr_source = float("nan"), (float("nan"), float("nan")), "none"
    if math.isfinite(epochs) and a.lr_law is not None:
        peak_lr = float(a.lr_law.predict(params, epochs))
        peak_lr_iv = tuple(float(v) for v in a.lr_law.band(params, epochs, level))
        lr_source = "pooled lr law"
    elif math.isfinite(epochs):
        peak_lr, lr_source = lr.predict_lr(a.trend, params, epochs), "per-model lr trends"
    second = lr.two_trials(peak_lr, params, epochs, a.opt, a.lr_law, a.trend) if math.isfinite(epochs) else \
        {"first_lr": peak_lr, "second_lr": float("nan"), "direction": None, "why": "no epoch budget", "stop_rule": ""}
    every = units.all_units(flops, utilization, dataset_size=size if math.isfinite(size) else None,
                            train_flops_per_example=3.0 * per_example)
    law = a.laws.get("offset") or a.laws.get("power")
    rf = rep["fit"]
    return {
        "budget": {"value": budget, "unit": parsed.name, "flops": flops, "in_units": every},
        "fitted_compute_range_flops": [cmin, cmax], "decades_outside": outside, "extrapolated": outside > 0,
        "compute_optimal": {
            "params": n_opt, "params_interval": fitting.interval(n_s, level),
            "examples": d_opt, "examples_interval": fitting.interval(d_s, level),
            "epochs": d_opt / size if math.isfinite(size) else None, "law": rep["law"],
            "exponents": fit.exponents(), "flops_per_example_law": {"c": fit.flops.c, "gamma": fit.flops.gamma},
        },
        "family": a.family,
        "recommended": recommended,  # None: no concrete architecture (see no_architecture)
        "no_architecture": why_none,
        "shape": shape_info,
        "params": params, "flops_per_example": per_example,  # of the model the plan trains
        "epochs": epochs, "examples": examples, "dataset_size": size, "batch_size": batch,
        "dataset_size_from": "--dataset-size" if dataset_size is not None else "runs",
        "max_run_epochs": max_epochs,
        "steps": int(round(examples / batch)) if math.isfinite(batch) else None,
        "repetition": {"law": rep["law"], "why": rep["why"], "backtest": rep["backtest"],
                       "fit": rf.to_dict() if rf is not None else None,
                       "unique_examples": size, "repetitions": max(epochs - 1.0, 0.0) if math.isfinite(epochs) else None,
                       "effective_examples": float(repetition.effective_data(examples, size, rf.params["R_star"]))
                       if rf is not None and math.isfinite(size) else None},
        "peak_lr": peak_lr, "peak_lr_interval": peak_lr_iv, "peak_lr_source": lr_source,
        "second_lr_trial": second,
        "predicted_loss": loss, "predicted_loss_interval": loss_iv_runs, "level": level,
        "predicted_loss_interval_without_seed_noise": loss_iv,
        "seed_noise": scatter,
        "frontier_law_loss": float(law.predict([flops])[0]) if law else None,
        "intervals_withheld": fit.withheld or None,
        "warnings": warnings,
        "notes": a.notes,
    }


def _coords(ladder) -> pd.DataFrame:
    """model -> shape coordinates of the swept members (for the shape-aware law)."""
    cols = [k for k in ladder.varying]
    return ladder.swept.rename(columns={"name": "model"})[["model", *cols]]


def _iv(iv, fmt: str) -> str:
    lo, hi = iv
    return f"{lo:{fmt}}..{hi:{fmt}}" if math.isfinite(lo) and math.isfinite(hi) else "withheld"


def format_plan(p: dict) -> str:
    """Human-readable plan (the --json flag prints the dict instead). Warnings come first,
    whether or not the caller passes the notes."""
    r, co, lvl = p["recommended"], p["compute_optimal"], f"{p['level']:.0%}"
    if r is not None:
        model = (f"model: {r['model']} ({r['architecture']}, {r['params']:.3g} params, {r['flops_per_example']:.3g} "
                 f"FLOPs/example at {r['resolution']}px); "
                 + (f"nearest named variant {r['nearest_named']} ({r['nearest_named_params']:.3g} params)"
                    if r["nearest_named"] else "no named variant at this resolution"))
    else:
        fl = co["flops_per_example_law"]
        model = (f"model: no concrete architecture ({p['no_architecture']}): train a model of the runs' family "
                 f"({p['family']}) with about {p['params']:.3g} params, {p['flops_per_example']:.3g} FLOPs/example by "
                 f"the runs' own relation {fl['c']:.3g} N^{fl['gamma']:.3g}")
    lines = list(p.get("warnings", []))
    lines += [f"budget: {p['budget']['value']:g} {p['budget']['unit']} = {p['budget']['flops']:.3g} training FLOPs"
              + (f"  (EXTRAPOLATED {p['decades_outside']:.1f} orders of magnitude outside the fitted runs)"
                 if p["extrapolated"] else ""),
              f"compute-optimal size ({co.get('law', 'plain')} law): N_opt = {co['params']:.3g} params ({lvl} interval "
              f"{_iv(co['params_interval'], '.3g')}), D_opt = {co['examples']:.3g} examples "
              f"({_iv(co['examples_interval'], '.3g')})",
              model]
    sh = p.get("shape")
    if sh:
        law = sh.get("law")
        if law:
            lo, hi = law["interval"]
            lines.append(f"shape: from the shape-aware law [A23] log {law['coordinate']}_opt = {law['a']:.3g} + "
                         f"{law['s']:.3g} log C ({law['n_cells']} cells): {law['coordinate']} {law['at_budget']:.3g} "
                         f"({lvl} interval {_iv((lo, hi), '.3g')})")
        else:
            grow = ", ".join(f"{k} ~ N^{v['b']:.2f}" for k, v in sh["ladder"].items()) or "no coordinate varies"
            held = ", ".join(f"{k} {v}" for k, v in sh["fixed"].items()) or "none"
            ends = sh.get("members_at_params_interval") or []
            lines.append(f"shape: on the sweep's own ladder ({grow}; held: {held})"
                         + (f"; members across the N_opt interval: {' .. '.join(ends)}" if ends else ""))
            why = sh.get("law_not_fitted") or ""
            if why and not why.startswith("no sweep of shapes"):  # shapes were swept: say why their law is unused
                lines.append(f"shape-aware law not used: {why}")
    rep = p.get("repetition") or {}
    if p["steps"] is not None:
        lines.append(f"epochs: {p['epochs']:.3g} ({p['examples']:.3g} examples of a {p['dataset_size']:.3g}-example "
                     f"dataset, from {p.get('dataset_size_from', 'runs')}); steps: {p['steps']} at batch "
                     f"{p['batch_size']:g}")
    else:
        lines.append(f"examples: {p['examples']:.3g}")
    if rep:
        fit = rep.get("fit")
        eff = rep.get("effective_examples")
        used = rep["law"] == "data-constrained"
        lines.append(f"data repetition: the plan uses the {rep['law']} law ({rep['why']})"
                     + (f"; {'' if used else 'the data-constrained fit (not used) has '}R* = "
                        f"{fit['params']['R_star']:.3g} repetitions ({lvl} interval {_iv(fit['R_star_interval'], '.3g')})"
                        f", {'so' if used else 'which would value'} {p['examples']:.3g} examples "
                        f"{'are worth' if used else 'at'} {eff:.3g} fresh ones" if fit and eff is not None else ""))
    lines.append(f"peak lr: {p['peak_lr']:.3g} (" + (f"{lvl} interval {_iv(p['peak_lr_interval'], '.3g')}, "
                                                     if p["peak_lr_source"] == "pooled lr law" else "no interval, ")
                 + f"{p['peak_lr_source']})")
    two = p.get("second_lr_trial") or {}
    if two.get("direction"):
        lines.append(f"lr in two trials [S23]: first {two['first_lr']:.3g}, second {two['second_lr']:.3g} "
                     f"({two['why']}); {two['stop_rule']}")
    noise = p.get("seed_noise")
    lines.append(f"predicted held-out loss: {p['predicted_loss']:.4g} ({lvl} interval "
                 f"{_iv(p['predicted_loss_interval'], '.4g')}"
                 + (f", including seed noise: sd {noise['sd_log']:.2%} of the loss from {noise['cells']} replicate "
                    "cells)" if noise else "; the intervals do not include seed noise: the sweep has no replicate "
                    "seeds)"))
    if p.get("intervals_withheld"):
        lines.append(f"intervals withheld: {p['intervals_withheld']}")
    lines += ["budget in every unit:"]
    lines += [f"  {k:>22}: {v:.4g}" for k, v in p["budget"]["in_units"].items()]
    lines += [f"note: {n}" for n in p["notes"] if n not in p.get("warnings", [])]
    return "\n".join(lines)
