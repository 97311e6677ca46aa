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

from analysis import family as archs
from analysis import fitting, lr
from analysis.pipeline import Analysis
from scaling import units
from scaling.errors import BadInput, RuntimeFailure

PLAN_RESAMPLES = 200  # modest bootstrap for the planner (see module docstring)
# Budgets more than this many orders of magnitude outside the fitted compute range are
# refused without --extrapolate ([A22]: check the backtest before trusting a law further).
MAX_DECADES_OUTSIDE = 1.0


def _epochs_to_flops(epochs: float, a: Analysis) -> float:
    """An epoch budget is read as epochs of the compute-optimal model: the C where
    D_opt(C) = epochs x dataset size (the recommended member then trains exactly those
    epochs, and the budget reported is what that costs on its own FLOPs/example)."""
    target = epochs * a.dataset_size
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


def plan(a: Analysis, budget: float, unit: str, extrapolate: bool = False, utilization: float | None = None,
         level: float | None = None, family: str | None = None) -> dict:
    a = for_family(a, family)
    level = a.level if level is None else level
    parsed = units.parse_unit(unit)
    if a.approach3 is None:
        why = "; ".join(n for n in a.notes if "Approach 3" in n) or "no fit"
        raise RuntimeFailure(f"cannot plan: the compute-optimal law could not be fitted ({why})")
    size = a.dataset_size
    if parsed.kind == "epochs":
        if not math.isfinite(size):
            raise BadInput("--unit: 'epochs' needs the dataset size, and the runs have no epochs column; use FLOPs or hours")
        if not (budget > 0 and math.isfinite(budget)):
            raise BadInput(f"--budget: {budget!r} must be a finite number > 0")
        flops = _epochs_to_flops(budget, a)
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
    n_opt, d_opt = (float(v) for v in fit.optimal(flops))
    n_s, d_s = fit.optimal_samples([flops])
    arch = archs.candidates_for(a.family, a.runs)
    recommended, why_none = None, None
    if arch is not None:  # a member of the runs' own family, on its own FLOPs per example
        table, resolution, num_classes = arch
        member = archs.nearest(table, n_opt)
        named = archs.nearest(table, n_opt, named=True)
        params, per_example, what = float(member["params"]), float(member["flops_per_example"]), member["name"]
        shape = ({"depth_mult": float(member["depth_mult"]), "width_mult": float(member["width_mult"])}
                 if a.family == "nfnet" else {"architecture": member["architecture"]})
        recommended = {
            "model": member["name"], **shape, "params": params,
            "flops_per_example": per_example, "resolution": resolution, "num_classes": num_classes,
            "nearest_named": named["name"] if named is not None else None,
            "nearest_named_params": float(named["params"]) if named is not None else None,
        }
    else:  # no architecture to name: N_opt itself, on the runs' own FLOPs-per-example relation
        params, per_example = n_opt, float(fit.flops(n_opt))
        what, why_none = f"a {params:.3g}-parameter model", archs.no_architecture_reason(a.family)
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
    loss = float(fit.predict(params, examples))
    loss_s = fit.predict(np.array([params]), np.array([examples]), samples=True)[:, 0]
    # The pooled lr law when it could be fitted (an interval, and every cell behind it);
    # else each model's own power law, interpolated in size (no interval).
    peak_lr, peak_lr_iv, lr_source = float("nan"), (float("nan"), float("nan")), "none"
    if math.isfinite(epochs) and a.lr_law is not None:
        peak_lr = float(a.lr_law.predict(params, epochs))
        peak_lr_iv = tuple(float(v) for v in a.lr_law.band(params, epochs, level))
        lr_source = "pooled lr law"
    elif math.isfinite(epochs):
        peak_lr, lr_source = lr.predict_lr(a.trend, params, epochs), "per-model lr trends"
    every = units.all_units(flops, utilization, dataset_size=size if math.isfinite(size) else None,
                            train_flops_per_example=3.0 * per_example)
    law = a.laws.get("offset") or a.laws.get("power")
    return {
        "budget": {"value": budget, "unit": parsed.name, "flops": flops, "in_units": every},
        "fitted_compute_range_flops": [cmin, cmax], "decades_outside": outside, "extrapolated": outside > 0,
        "compute_optimal": {
            "params": n_opt, "params_interval": fitting.interval(n_s[:, 0], level),
            "examples": d_opt, "examples_interval": fitting.interval(d_s[:, 0], level),
            "epochs": d_opt / size if math.isfinite(size) else None,
            "exponents": fit.exponents(), "flops_per_example_law": {"c": fit.flops.c, "gamma": fit.flops.gamma},
        },
        "family": a.family,
        "recommended": recommended,  # None: no concrete architecture (see no_architecture)
        "no_architecture": why_none,
        "params": params, "flops_per_example": per_example,  # of the model the plan trains
        "epochs": epochs, "examples": examples, "dataset_size": size, "batch_size": batch,
        "steps": int(round(examples / batch)) if math.isfinite(batch) else None,
        "peak_lr": peak_lr, "peak_lr_interval": peak_lr_iv, "peak_lr_source": lr_source,
        "predicted_loss": loss, "predicted_loss_interval": fitting.interval(loss_s, level), "level": level,
        "frontier_law_loss": float(law.predict([flops])[0]) if law else None,
        "intervals_withheld": fit.withheld or None,
        "warnings": a.warnings,
        "notes": a.notes,
    }


def _iv(iv, fmt: str) -> str:
    lo, hi = iv
    return f"{lo:{fmt}}..{hi:{fmt}}" if math.isfinite(lo) and math.isfinite(hi) else "withheld"


def format_plan(p: dict) -> str:
    """Human-readable plan (the --json flag prints the dict instead). Warnings come first,
    whether or not the caller passes the notes."""
    r, co = p["recommended"], p["compute_optimal"]
    if r is not None:
        shape = (f"depth x{r['depth_mult']:.3g}, width x{r['width_mult']:g}" if "depth_mult" in r
                 else r["architecture"])
        model = (f"model: {r['model']} ({shape}, {r['params']:.3g} params, {r['flops_per_example']:.3g} "
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
             f"compute-optimal size: N_opt = {co['params']:.3g} params ({p['level']:.0%} interval "
             f"{_iv(co['params_interval'], '.3g')}), D_opt = {co['examples']:.3g} examples "
             f"({_iv(co['examples_interval'], '.3g')})",
             model,
             f"epochs: {p['epochs']:.3g} ({p['examples']:.3g} examples of a {p['dataset_size']:.3g}-example dataset); "
             f"steps: {p['steps']} at batch {p['batch_size']:g}" if p["steps"] is not None else
             f"examples: {p['examples']:.3g}",
             f"peak lr: {p['peak_lr']:.3g} (" + (f"{p['level']:.0%} interval {_iv(p['peak_lr_interval'], '.3g')}, "
                                                 if p["peak_lr_source"] == "pooled lr law" else "no interval, ")
             + f"{p['peak_lr_source']})",
             f"predicted held-out loss: {p['predicted_loss']:.4g} ({p['level']:.0%} interval "
             f"{_iv(p['predicted_loss_interval'], '.4g')})"]
    if p.get("intervals_withheld"):
        lines.append(f"intervals withheld: {p['intervals_withheld']}")
    lines += ["budget in every unit:"]
    lines += [f"  {k:>22}: {v:.4g}" for k, v in p["budget"]["in_units"].items()]
    lines += [f"note: {n}" for n in p["notes"] if n not in p.get("warnings", [])]
    return "\n".join(lines)
