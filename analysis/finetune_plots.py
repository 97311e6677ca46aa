"""The fine-tuning figure: downstream top-1 error against compute, per family, on both
compute axes (pre-training; pre-training + fine-tuning), in the style of analysis/plots.py
(its Agg backend, rcParams, colours per model and save()).

The published points ([S23] Fig. 1: ImageNet top-1 vs TPU-v4 core-hours) are drawn only
when the runs fine-tune on ImageNet (finetune.published_comparable); otherwise the
figure says why they are absent instead of mixing units."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import frontier
from analysis import plots  # noqa: F401  (sets the Agg backend and the shared rcParams)
from analysis.finetune import AXES, Finetune
from analysis.plots import _colors, _plain_y, plt

EPOCH_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def finetune_figure(ft: Finetune, per_unit: float, unit: str, reference: pd.DataFrame | None = None):
    """One row per family, one column per compute axis: every parent's best fine-tune
    (colour: model, marker: pre-training epochs), the lower envelope, and the law
    err = k C^-b with its band where one was fitted. None when there is nothing to draw."""
    best = ft.best
    if best.empty:
        return None
    fams = ft.families
    fig, axes = plt.subplots(len(fams), 2, figsize=(11, 4.4 * len(fams)), squeeze=False)
    drawn_ref = False
    for r, fam in enumerate(fams):
        g = best[best["family"] == fam]
        models = list(g.groupby("pre_model")["pre_params"].first().sort_values().index)
        colors = _colors(models)
        budgets = sorted(g["pre_epochs"].dropna().unique())
        markers = {b: EPOCH_MARKERS[i % len(EPOCH_MARKERS)] for i, b in enumerate(budgets)}
        for c, axis in enumerate(AXES):
            ax = axes[r, c]
            x = g[f"{axis}_flops"].to_numpy(float)
            y = g["top1_error"].to_numpy(float)
            for row, xi, yi in zip(g.itertuples(), x, y):
                ax.plot(xi / per_unit, yi * 100, markers.get(row.pre_epochs, "o"), color=colors[row.pre_model], ms=7)
            on = frontier.envelope_mask(x, y) if np.all(y > 0) else np.zeros(y.size, bool)
            ax.plot(x[on] / per_unit, y[on] * 100, "s", mfc="none", mec="k", ms=12, label="lower envelope (fitted)")
            law = ft.laws.get((fam, axis))
            if law is not None:
                grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 200)
                lo, hi = law.band(grid)
                if np.isfinite(lo).all():
                    ax.fill_between(grid / per_unit, lo * 100, hi * 100, color="tab:red", alpha=0.12, lw=0)
                b_lo, b_hi = law.intervals()["b"]
                ax.plot(grid / per_unit, law.predict(grid) * 100, "-", color="tab:red",
                        label=f"err = k C^-b, b = {law.params['b']:.3f} [{b_lo:.3g}, {b_hi:.3g}] ({law.level:.0%})")
            else:
                ax.plot([], [], " ", label="no law: the points do not support one (notes)")
            if ft.published[0] and reference is not None and len(reference):
                from scaling import units

                per_tpu = units.to_flops(1.0, "tpu-v4-core-hours")
                ax.plot(reference["tpu_v4_core_hours"] * per_tpu / per_unit, 100 - reference["imagenet_top1"], "*",
                        color="gray", ms=10, label="published ([S23] Fig. 1)")
                drawn_ref = True
            for m in models:
                n = g.loc[g["pre_model"] == m, "pre_params"].iloc[0]
                ax.plot([], [], "o", color=colors[m], label=f"{m} ({n:.3g} params)")
            for b in budgets:
                ax.plot([], [], markers[b], color="gray", label=f"pre-trained {b:g} epochs")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(y.min() * 100 / 1.6, min(100.0, y.max() * 100 * 1.4))  # a band past 100% error says nothing
            _plain_y(ax)
            ax.set_xlabel(f"{AXES[axis]} [{unit}]")
            ax.set_ylabel("downstream top-1 error [%] (log scale)")
            ax.set_title(f"{fam}: fine-tuned top-1 error vs {AXES[axis]}", fontsize=9)
            ax.legend(fontsize=6.5, loc="lower left", framealpha=0.85)  # points run top left to bottom right
    if not ft.published[0]:
        fig.text(0.5, 0.005, "Published [S23] points not drawn: ImageNet top-1 vs TPU-v4 core-hours of JFT "
                 "pre-training is not these runs' units.", ha="center", fontsize=7, color="#a04000")
    fig.tight_layout(rect=(0, 0.02 if not drawn_ref else 0, 1, 1))
    return fig


def _table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p><em>no rows</em></p>"
    return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="t")


def law_table(ft: Finetune, per_unit: float, unit: str) -> pd.DataFrame:
    rows = []
    for (fam, axis), law in sorted(ft.laws.items()):
        lo, hi = law.intervals()["b"]
        rows.append({"family": fam, "compute axis": AXES[axis], "k (C in FLOPs)": law.params["k"],
                     "b": law.params["b"], f"b {law.level:.0%} interval": f"[{lo:.4g}, {hi:.4g}]"
                     if np.isfinite([lo, hi]).all() else f"withheld: {law.withheld}",
                     "resolved fall (b > 0)": bool(np.isfinite(lo) and lo > 0), "R^2 (log)": law.r2,
                     "envelope points": law.n_points, "residual dof": law.dof})
    return pd.DataFrame(rows)


def best_table(ft: Finetune, per_unit: float, unit: str) -> pd.DataFrame:
    b = ft.best
    if b.empty:
        return b
    return pd.DataFrame({"family": b["family"], "parent model": b["pre_model"], "pre-training epochs": b["pre_epochs"],
                         "pre-training lr": b["pre_lr"], "pre-training loss": b["pre_heldout_loss"],
                         f"pre-training [{unit}]": b["pretrain_flops"] / per_unit,
                         "fine-tune lr (best)": b["lr"], "lrs tried": b["n_lrs"], "lr at edge": b["lr_edge"],
                         "top-1 [%]": b["top1"] * 100, "runner-up lr top-1 [%]": b["runner_up_top1"] * 100,
                         f"fine-tuning [{unit}]": b["finetune_flops"] / per_unit,
                         f"total [{unit}]": b["total_flops"] / per_unit})


def levels_table(ft: Finetune, per_unit: float, unit: str) -> pd.DataFrame:
    lv = ft.levels
    if lv.empty:
        return lv
    return pd.DataFrame({"family": lv["family"], f"pre-training from [{unit}]": lv["pretrain_flops_from"] / per_unit,
                         f"to [{unit}]": lv["pretrain_flops_to"] / per_unit, "cells": lv["cells"],
                         "best fine-tuned": lv["best_finetuned"], "best pre-training loss": lv["best_pretrain_loss"],
                         "model": lv["size"], "epochs": lv["epochs"],
                         "top-1 difference [points]": lv["top1_difference"] * 100,
                         "noise sd [points]": lv["noise_sd"] * 100,
                         "resamples agreeing": lv["agreeing_resamples"], "resolved": lv["resolved"],
                         "note": lv["note"]})


def report_section(ft: Finetune, out, per_unit: float, unit: str, reference: pd.DataFrame | None = None) -> list[str]:
    """The report's fine-tuning section (HTML pieces): figure, tables, the verdict, notes."""
    import html

    from analysis.plots import save

    parts = ["<h1>Fine-tuning: downstream top-1 against compute ([S23] Fig. 1 axes)</h1>",
             f"<p>{len(ft.runs)} finished fine-tune runs of {len(ft.best)} parents. Each parent's point is its best "
             f"fine-tune learning rate; compute is the parent's training FLOPs (left) and that plus the best "
             f"fine-tune's own (right), in <b>{html.escape(unit)}</b>. The law err = k C^-b is fitted to the lower "
             f"envelope with the loss law's fit and parametric bootstrap ({ft.level:.0%} intervals, "
             f"{ft.resamples} resamples).</p>",
             f"<p><b>Verdict ([S23]: fine-tuning favours slightly larger models and fewer epochs):</b> "
             f"{html.escape(ft.verdict['statement'])}.</p>"]
    if not ft.published[0]:
        parts.append(f"<p class='note'>{html.escape(ft.published[1])}.</p>")
    parts.append("<ul>" + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in ft.notes) + "</ul>")
    fig = finetune_figure(ft, per_unit, unit, reference)
    if fig is not None:
        files = save(fig, out, "finetune_top1_vs_compute")
        parts.append(f"<p><img src='{files[0]}' alt='fine-tuned top-1 error vs compute'> "
                     f"<a href='{files[1]}'>SVG</a></p>")
    for caption, df in (("Laws: top-1 error = k C^-b (C in FLOPs)", law_table(ft, per_unit, unit)),
                        ("Compute levels: best after fine-tuning vs best in pre-training loss (a level spans less "
                         "than a factor 2 of pre-training compute; resolved when the verdict holds in at least "
                         f"{ft.level:.0%} of resamples of the top-1 measurement noise)",
                         levels_table(ft, per_unit, unit)),
                        ("Best fine-tune per parent", best_table(ft, per_unit, unit))):
        parts.append(f"<h3>{caption}</h3>{_table(df)}")
    return parts
