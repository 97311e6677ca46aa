"""One HTML report: every figure next to the table behind it, and the notes on what was
excluded or could not be fitted. Also fits.json, the machine-readable summary.

One family: the sections as they always were. Several: first the families compared (one
figure with every family's frontier points, laws and bands and each pair's crossover, a
table per family and the crossovers), then each family's own sections (figure files
suffixed with the family's name), then the published-points figure with the user's
families."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.pipeline import Analysis, jsonable
from scaling import units

REFERENCE_CSV = Path(__file__).resolve().parent.parent / "results" / "reference" / "vit_comparison.csv"


def _table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p><em>no rows</em></p>"
    return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="t")


def _fmt_interval(iv) -> str:
    return f"[{iv[0]:.4g}, {iv[1]:.4g}]" if np.isfinite(iv).all() else "withheld (see notes)"


def lr_law_table(a: Analysis) -> pd.DataFrame:
    """The pooled lr law's parameters, their intervals and whether each slope is resolved."""
    law = a.lr_law
    if law is None:
        return pd.DataFrame()
    ci = law.intervals()
    meaning = {"a": "log2 lr at E = 1 epoch, N = 1 parameter", "s": "slope per doubling of the epoch budget",
               "t": "slope per doubling of the parameter count"}
    return pd.DataFrame([{"parameter": k, "meaning": meaning[k], "estimate": getattr(law, k),
                          f"{law.level:.0%} interval": _fmt_interval(ci[k]),
                          "resolved (interval excludes 0)": "" if k == "a" else law.resolved(k),
                          "cells": law.n_cells, "edge cells left out": law.n_edge,
                          "scatter (x per cell)": 2**law.scatter} for k in "ast"])


def law_table(a: Analysis) -> pd.DataFrame:
    rows = []
    for form, law in a.laws.items():
        iv = law.intervals()
        for name, value in law.params.items():
            rows.append({"law": plots.LAW_STYLE[form][2], "parameter": name, "estimate": value,
                         f"{a.level:.0%} interval": _fmt_interval(iv[name]), "R^2 (log)": law.r2,
                         "points": law.n_points, "residual dof": law.dof,
                         "bootstrap converged": law.converged_fraction,
                         "optimiser": law.status, "starts agreeing": law.starts_agreeing})
    return pd.DataFrame(rows)


def approach3_tables(a: Analysis) -> tuple[pd.DataFrame, pd.DataFrame]:
    fit = a.approach3
    if fit is None:
        return pd.DataFrame(), pd.DataFrame()
    d = fit.to_dict()
    params = pd.DataFrame([{"parameter": k, "estimate": v, f"{a.level:.0%} interval": _fmt_interval(d["intervals"][k])}
                           for k, v in d["params"].items()])
    sr = d["same_rate"]
    extra = pd.DataFrame([
        {"quantity": "FLOPs/example = c N^gamma", "value": f"c = {fit.flops.c:.4g}, gamma = {fit.flops.gamma:.4g} "
                                                             f"({fit.flops.n_models} models)"},
        {"quantity": "N_opt ~ C^a_N", "value": f"{sr['a_N']:.4g} {_fmt_interval(sr['a_N_interval'])}"},
        {"quantity": "D_opt ~ C^a_D (epochs)", "value": f"{sr['a_D']:.4g} {_fmt_interval(sr['a_D_interval'])}"},
        {"quantity": "a_N - a_D", "value": f"{sr['difference']:.4g} {_fmt_interval(sr['difference_interval'])}"},
        {"quantity": "rule 'scale size and epochs at the same rate' [S23]", "value": sr["verdict"]},
        {"quantity": "R^2 (log) / points / residual dof", "value": f"{fit.r2:.4g} / {fit.n_points} "
                                                                     f"({fit.n_sizes} sizes x {fit.n_data_sizes} "
                                                                     f"data sizes) / {fit.dof}"},
        {"quantity": "intervals", "value": f"withheld: {fit.withheld}" if fit.withheld else fit.method},
        {"quantity": "optimiser", "value": f"{fit.status}; best starts agreeing {d['starts_agreeing']}; "
                                            f"bootstrap converged {fit.converged_fraction:.1%}"},
    ])
    return params, extra


def optimal_table(a: Analysis, per_unit: float, unit: str) -> pd.DataFrame:
    if a.approach3 is None:
        return pd.DataFrame()
    cmin, cmax = a.compute_range
    grid = np.geomspace(cmin, cmax * 100, 7)
    n, d = a.approach3.optimal(grid)
    size = a.dataset_size
    return pd.DataFrame({f"compute [{unit}]": grid / per_unit, "FLOPs": grid, "N_opt": n, "D_opt": d,
                         "epochs": d / size if np.isfinite(size) else np.nan,
                         "beyond fitted runs": grid > cmax * 1.0001})


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table.t{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}
table.t td,table.t th{border-bottom:1px solid #ddd;padding:2px 8px;text-align:right}
img{max-width:100%;border:1px solid #eee}.note{color:#a04000}"""


def families_table(a: Analysis, per_unit: float, unit: str) -> pd.DataFrame:
    rows = []
    for name, sub in a.per_family.items():
        cmin, cmax = sub.compute_range
        law = sub.laws.get("offset") or sub.laws.get("power")
        rows.append({"family": name, "runs": len(sub.runs), "models": sub.opt["model"].nunique() if len(sub.opt) else 0,
                     "optima": len(sub.opt), f"compute from [{unit}]": cmin / per_unit,
                     f"compute to [{unit}]": cmax / per_unit,
                     "frontier law": "" if law is None else
                     ", ".join(f"{k} = {v:.4g}" for k, v in law.params.items()) + f" ({plots.LAW_STYLE[law.form][2]})",
                     "N_opt exponent a_N": sub.approach3.exponents()["a_N"] if sub.approach3 else np.nan,
                     "warnings": len(sub.warnings)})
    return pd.DataFrame(rows)


def crossover_table(a: Analysis, per_unit: float, unit: str) -> pd.DataFrame:
    rows = []
    for x in a.crossovers:
        iv = x.interval
        rows.append({"families": " / ".join(x.families), "law": x.law,
                     f"crossing [{unit}]": np.nan if x.flops is None else x.flops / per_unit,
                     f"{x.level:.0%} interval [{unit}]": f"[{iv[0] / per_unit:.4g}, {iv[1] / per_unit:.4g}]" if iv
                     else ("withheld: " + x.withheld if x.withheld else ""),
                     "replicates crossing": x.crossing_fraction, "ahead below": x.ahead_below,
                     "ahead above": x.ahead_above, "statement": x.statement()})
    return pd.DataFrame(rows)


def write_report(a: Analysis, out: Path, unit: str = "flops") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parsed = units.parse_unit(unit)
    per_unit = units.to_flops(1.0, parsed)
    label = parsed.name
    reference = pd.read_csv(REFERENCE_CSV)
    parts = [f"<html><head><meta charset='utf-8'><title>Scaling analysis</title><style>{CSS}</style></head><body>",
             "<h1>Scaling analysis</h1>",
             f"<p>{len(a.runs)} finished runs, {len(a.opt)} (model, epoch budget) learning-rate optima, "
             f"{a.opt['model'].nunique() if len(a.opt) else 0} models"
             + (f", {len(a.families)} architecture families ({', '.join(a.families)}), each fitted on its own"
                if a.families else f" of family {html.escape(a.family)}" if a.family else "")
             + ". Compute is training FLOPs (3 x forward, "
             f"2 FLOPs per MAC), shown in <b>{label}</b>"
             + ("" if parsed.kind == "flops" else " at the hardware table's default utilisation")
             + f". Intervals: {a.level:.0%} percentile intervals of a parametric bootstrap that keeps the fitted "
             f"points and draws the noise scale from its small-sample distribution (honest with few points; "
             f"withheld when the design does not identify a law), {a.resamples} resamples, seed {a.seed}.</p>",
             "<h2>Notes</h2><ul>"]
    parts += [f"<li class='note'>{html.escape(n)}</li>" for n in a.notes] or ["<li>none</li>"]
    parts.append("</ul>")

    def figure(fig, name, title, tables):
        parts.append(f"<h2>{title}</h2>")
        if fig is None:
            parts.append("<p class='note'>not drawn: see the notes above.</p>")
        else:
            files = plots.save(fig, out, name)
            parts.append(f"<p><img src='{files[0]}' alt='{title}'> <a href='{files[1]}'>SVG</a></p>")
        for caption, df in tables:
            parts.append(f"<h3>{caption}</h3>{_table(df)}")

    if a.families:
        figure(plots.comparison_figure(a, per_unit, label), "family_comparison",
               "Families compared: frontier laws and where they cross",
               [("Families (each fitted on its own runs)", families_table(a, per_unit, label)),
                ("Crossovers: where two families' frontier laws meet, within the union of their fitted compute "
                 "ranges (interval: bootstrap replicates that cross there)", crossover_table(a, per_unit, label))])
    for fam_name, f in (a.families or {"": a}).items():
        sfx = "_" + re.sub(r"[^A-Za-z0-9_.-]", "_", fam_name) if fam_name else ""  # file names per family
        head = f"{html.escape(fam_name)}: " if fam_name else ""
        if fam_name:
            parts.append(f"<h1>Family {html.escape(fam_name)}</h1>")
        figure(plots.frontier_figure(f, per_unit, label), "loss_vs_compute" + sfx,
               head + "Held-out loss vs compute ([S23] Fig. 2)",
               [("Fitted laws (compute in FLOPs)", law_table(f)),
                ("Extrapolation backtest [A22]: refit without the k largest compute budgets, log-space RMSE "
                 "at them (frontier laws: at the held-out frontier points; approach3: at every held-out run)",
                 f.backtest)])
        trend = f.trend.rename(columns={"c": "c (lr = c E^s)", "s": "s"})
        figure(plots.lr_figure(f), "optimal_lr" + sfx,
               head + "Optimal learning rate vs epoch budget and model size ([S23] Fig. 3)",
               [("Pooled lr law (weighted least squares over every interior optimum; t-intervals)", lr_law_table(f)),
                ("Power law per model (each through its own 2-3 optima: scatter, not a trend, unless the pooled "
                 "law resolves it)", trend),
                ("Optimum per (model, epoch budget); curvature of the loss in log2(lr) weighs the cell in the law",
                 f.opt[[c for c in ("model", "epochs", "lr_opt", "lr_best", "edge", "curvature", "n_lrs", "n_trials",
                                    "heldout_loss", "params", "train_flops") if c in f.opt]])])
        params, extra = approach3_tables(f)
        figure(plots.optimal_figure(f, per_unit, label), "optimal_size" + sfx,
               head + "Compute-optimal model size and epochs (Approach 3 [H22] with "
               + ("ConvNet FLOPs)" if f.family in ("", "nfnet") else "the family's own FLOPs per example)"),
               [("L(N, D) = E + A/N^alpha + B/D^beta", params), ("Frontier and the same-rate rule", extra),
                ("N_opt and epochs at a range of budgets", optimal_table(f, per_unit, label))])
        figure(plots.isoflop_figure(f, per_unit, label), "isoflop" + sfx,
               head + "IsoFLOP profiles (diagnostic, [H22] Approach 2)",
               [("Parabola minimum vs Approach 3 N_opt per compute bin", f.isoflop)])
    figure(plots.vit_figure(reference, a), "vit_comparison", "ConvNets vs Vision Transformers ([S23] Fig. 1)",
           [("Published points (with sources)", reference)])
    if getattr(a, "finetune", None) is not None:  # fine-tune runs: analysis/finetune_plots.py
        from analysis.finetune_plots import report_section

        parts += report_section(a.finetune, out, per_unit, label, reference)
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    (out / "fits.json").write_text(json.dumps(jsonable(a.to_dict()), allow_nan=False, indent=2), encoding="utf-8")
    return path
