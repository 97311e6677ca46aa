"""The report's figures (matplotlib, Agg backend). One function per figure; each returns
a Figure or None when the analysis has nothing to draw for it.

Compute axes are in the user's unit: FLOPs divided by `per_unit` (FLOPs per unit), a pure
rescaling, so the fitted laws are drawn from their FLOP form.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import crossover, frontier, lr  # noqa: E402
from analysis.load import family_column  # noqa: E402
from analysis.pipeline import Analysis  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3})
LAW_STYLE = {"power": ("black", "--", "L = k C^-b"), "offset": ("tab:red", "-", "L = E + k C^-b")}


def _colors(models):
    cmap = plt.get_cmap("viridis")
    return {m: cmap(i / max(1, len(models) - 1)) for i, m in enumerate(models)}


def _model_order(opt: pd.DataFrame):
    return list(opt.groupby("model")["params"].first().sort_values().index)


def frontier_figure(a: Analysis, per_unit: float, unit: str):
    """[S23] Fig. 2: held-out loss vs compute, one curve per model, laws with bands."""
    opt = a.opt.dropna(subset=["train_flops", "heldout_loss"])
    if opt.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.8))
    models = _model_order(opt)
    colors = _colors(models)
    for m in models:
        g = opt[opt["model"] == m].sort_values("train_flops")
        ax.plot(g["train_flops"] / per_unit, g["heldout_loss"], "o-", color=colors[m], ms=4, lw=1,
                label=f"{m} ({g['params'].iloc[0]:.3g} params)")
    on = frontier.envelope_mask(opt["train_flops"].to_numpy(float), opt["heldout_loss"].to_numpy(float))
    ax.plot(opt["train_flops"][on] / per_unit, opt["heldout_loss"][on], "s", mfc="none", mec="k", ms=8,
            label="frontier points")
    grid = np.geomspace(opt["train_flops"].min() / 1.5, opt["train_flops"].max() * 1.5, 200)
    for form, law in a.laws.items():
        color, ls, label = LAW_STYLE[form]
        lo, hi = law.band(grid)
        ax.fill_between(grid / per_unit, lo, hi, color=color, alpha=0.12, lw=0)
        ax.plot(grid / per_unit, law.predict(grid), ls, color=color,
                label=f"{label}: b = {law.params['b']:.3f} ({a.level:.0%} band)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_y(ax)
    ax.set_xlabel(f"training compute [{unit}]")
    ax.set_ylabel("held-out loss [nats] (log scale)")
    ax.set_title("Held-out loss vs compute at the optimal learning rate")
    ax.legend(fontsize=7, loc="upper right", ncol=1 if len(models) < 8 else 2)
    fig.tight_layout()
    return fig


def lr_figure(a: Analysis):
    """[S23] Fig. 3: optimal learning rate vs epoch budget (left) and vs model size
    (right), each cell's optimum with the pooled lr law through it and its band, so the
    eye sees the trend the law's intervals vouch for (analysis.lr.LrLaw)."""
    opt = a.opt.dropna(subset=["epochs"])
    if opt.empty:
        return None
    law = a.lr_law
    fig, (ax, ax_n) = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    models = _model_order(opt)
    colors = _colors(models)
    budgets = sorted(opt["epochs"].unique())
    bcolors = dict(zip(budgets, plt.get_cmap("plasma")(np.linspace(0, 0.85, len(budgets)))))
    # Marker area: the cell's weight in the law (lr.cell_weights); flat cells are small.
    wt = lr.cell_weights(opt)
    area = 12 + 60 * wt / wt.max()
    inside = (opt["edge"] == "").to_numpy()
    for m in models:
        sel = (opt["model"] == m).to_numpy()
        g = opt[sel]
        ax.scatter(g["epochs"][inside[sel]], g["lr_opt"][inside[sel]], s=area[sel][inside[sel]], color=colors[m],
                   zorder=3)
        ax.scatter(g["epochs"][~inside[sel]], g["lr_opt"][~inside[sel]], s=40, facecolors="none",
                   edgecolors=colors[m], zorder=3)
        e = np.geomspace(g["epochs"].min(), g["epochs"].max(), 50)
        n = float(g["params"].iloc[0])
        if law is not None:
            lo, hi = law.band(n, e)
            ax.fill_between(e, lo, hi, color=colors[m], alpha=0.08, lw=0)
            ax.plot(e, law.predict(n, e), "-", color=colors[m], lw=1.2)
        else:
            t = a.trend[a.trend["model"] == m]
            if len(t) and np.isfinite(t["s"].iloc[0]):
                ax.plot(e, t["c"].iloc[0] * e ** t["s"].iloc[0], "-", color=colors[m], lw=1)
        ax.plot([], [], "o-", color=colors[m], label=f"{m} ({n:.3g} params)")
    sizes = np.geomspace(opt["params"].min(), opt["params"].max(), 50)
    for b in budgets:
        sel = (opt["epochs"] == b).to_numpy() & inside
        ax_n.scatter(opt["params"][sel], opt["lr_opt"][sel], s=area[sel], color=bcolors[b], zorder=3)
        if law is not None:
            lo, hi = law.band(sizes, b)
            ax_n.fill_between(sizes, lo, hi, color=bcolors[b], alpha=0.08, lw=0)
            ax_n.plot(sizes, law.predict(sizes, b), "-", color=bcolors[b], lw=1.2)
        ax_n.plot([], [], "o-", color=bcolors[b], label=f"{b:g} epochs")
    ax.plot([], [], "o", mfc="none", mec="gray", label="optimum at grid edge (not fitted)")
    if not inside.any():  # every optimum on the grid's edge: nothing for the size panel
        ax_n.text(0.5, 0.5, "no interior optimum\n(extend the lr grid)", ha="center", va="center",
                  transform=ax_n.transAxes)
    for axis, xlabel in ((ax, "epoch budget [epochs]"), (ax_n, "parameters")):
        if axis is ax_n and not inside.any():
            axis.set_xlabel(xlabel)
            continue
        axis.set_xscale("log", base=2 if axis is ax else 10)
        axis.set_yscale("log", base=2)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    ax_n.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylabel("optimal peak learning rate (log2 scale)")
    ax.set_title("vs epoch budget", fontsize=10)
    ax_n.set_title("vs model size", fontsize=10)
    if law is not None:
        ci = law.intervals()
        verdict = {k: "resolved" if law.resolved(k) else "NOT resolved" for k in "st"}
        fig.suptitle(f"Optimal learning rate: lr = {2 ** law.a:.3g} E^{law.s:+.2f} N^{law.t:+.2f}  "
                     f"({law.level:.0%}: s in [{ci['s'][0]:+.2f}, {ci['s'][1]:+.2f}] {verdict['s']}, "
                     f"t in [{ci['t'][0]:+.2f}, {ci['t'][1]:+.2f}] {verdict['t']}; bands: the law's "
                     f"{law.level:.0%} interval; marker area: weight)", fontsize=8.5)
    else:
        fig.suptitle("Optimal learning rate (per-model power laws; the pooled law could not be fitted)",
                     fontsize=9)
    fig.tight_layout()
    return fig


def optimal_figure(a: Analysis, per_unit: float, unit: str):
    """N_opt and epochs (D_opt / dataset size) vs compute, with bootstrap bands."""
    fit = a.approach3
    if fit is None:
        return None
    cmin, cmax = a.compute_range
    grid = np.geomspace(cmin / 3, cmax * 10, 100)
    n_opt, d_opt = fit.optimal(grid)
    n_s, d_s = fit.optimal_samples(grid)
    size = a.dataset_size
    q = [(1 - a.level) / 2, (1 + a.level) / 2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ex = fit.exponents()
    for ax, point, samples, name, obs in (
        (axes[0], n_opt, n_s, "parameters N_opt", "params"),
        (axes[1], d_opt / size if np.isfinite(size) else d_opt, d_s / size if np.isfinite(size) else d_s,
         "epochs E_opt [epochs]" if np.isfinite(size) else "examples D_opt", "examples_seen"),
    ):
        band = np.isfinite(samples).any(axis=0).all()  # False when the intervals are withheld
        if band:
            with np.errstate(all="ignore"):
                lo, hi = np.nanquantile(samples, q, axis=0)
            ax.fill_between(grid / per_unit, lo, hi, alpha=0.2, color="tab:blue", lw=0)
        ax.plot(grid / per_unit, point, "-", color="tab:blue",
                label=f"Approach 3 ({a.level:.0%} band)" if band else "Approach 3 (interval withheld: see notes)")
        ax.axvspan(cmax / per_unit, grid[-1] / per_unit, color="gray", alpha=0.08, label="beyond fitted runs")
        on = frontier.envelope_mask(a.opt["train_flops"].to_numpy(float), a.opt["heldout_loss"].to_numpy(float))
        y = a.opt[obs][on] / (size if obs == "examples_seen" and np.isfinite(size) else 1)
        ax.plot(a.opt["train_flops"][on] / per_unit, y, "s", mfc="none", mec="k", label="frontier runs")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"training compute [{unit}]")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    axes[0].set_title(f"N_opt ~ C^{ex['a_N']:.2f}")
    axes[1].set_title(f"D_opt ~ C^{ex['a_D']:.2f}")
    fig.tight_layout()
    return fig


MINIMA_MARGIN = 3.0  # the IsoFLOP axis: the drawn sizes x/÷ 3 (a display choice, not a fit)


def isoflop_figure(a: Analysis, per_unit: float, unit: str):
    """[H22] Approach 2 view: loss vs params per compute bin, each bin's own parabola through
    its own points (bins with >= 3 sizes only), its minimum marked with its interval, and
    Approach 3's N_opt at the bin's compute for comparison. None (the report says "no
    IsoFLOP design") when no bin has 3 sizes."""
    iso = a.isoflop
    if iso is None or iso.empty or "drawn" not in iso or not iso["drawn"].any():
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pts = a.opt.dropna(subset=["train_flops", "params", "heldout_loss"]).copy()
    pts["bin"] = np.floor(np.log10(pts["train_flops"]) / 0.5).astype(int)  # as chinchilla.isoflop_profiles
    drawn = iso[iso["drawn"]].reset_index(drop=True)
    cmap = plt.get_cmap("plasma")
    in_bins = pts[pts["bin"].isin(drawn["bin"])]
    # The axis spans the drawn bins' sizes (x/÷ MINIMA_MARGIN): a minimum or interval end
    # beyond it is drawn at the edge as an arrow, so one flat parabola (its vertex and
    # interval decades away) cannot squash every bin into a line.
    x_lo, x_hi = in_bins["params"].min() / MINIMA_MARGIN, in_bins["params"].max() * MINIMA_MARGIN
    shown = []
    for i, row in enumerate(drawn.itertuples()):
        color = cmap(i / max(1, len(drawn) - 1) * 0.85)
        g = pts[pts["bin"] == row.bin]
        shown.append(g)
        ax.plot(g["params"], g["heldout_loss"], "o", color=color, ms=5)
        x = np.linspace(np.log(g["params"].min()) - 0.2, np.log(g["params"].max()) + 0.2, 100)
        label = f"C ~ {row.compute / per_unit:.3g} {unit}"
        if row.c2 <= 0:  # curves down: a maximum or a line, no minimum to mark
            label += "; curves down: no minimum"
        elif np.isfinite(row.n_parabola):
            v = np.log(np.clip(row.n_parabola, x_lo, x_hi))
            y_min = row.c2 * v ** 2 + row.c1 * v + row.c0
            lo, hi = row.n_parabola_lo, row.n_parabola_hi
            if np.isfinite(lo) and np.isfinite(hi):
                shown_lo, shown_hi = max(lo, x_lo), min(hi, x_hi)
                ax.plot([shown_lo, shown_hi], [y_min, y_min], "-", color=color, lw=1)
                for end, edge, marker in ((lo, x_lo, "<"), (hi, x_hi, ">")):
                    beyond = end < x_lo if marker == "<" else end > x_hi
                    ax.plot([edge if beyond else end], [y_min], marker if beyond else "|", color=color, ms=7)
                wild = lo < x_lo / MINIMA_MARGIN ** 4 or hi > x_hi * MINIMA_MARGIN ** 4
                label += "; min N: interval unbounded" if wild else f"; min N in [{lo:.2g}, {hi:.2g}]"
            inside = x_lo <= row.n_parabola <= x_hi
            ax.plot([np.exp(v)], [y_min], "D" if inside else ("<" if row.n_parabola < x_lo else ">"),
                    color=color, ms=6)
            if not inside:
                label += f" (vertex {row.n_parabola:.2g}, off the axis)"
        ax.plot(np.exp(x), row.c2 * x ** 2 + row.c1 * x + row.c0, "-", color=color, lw=1, label=label)
        if np.isfinite(row.n_approach3) and x_lo <= row.n_approach3 <= x_hi:
            ax.axvline(row.n_approach3, color=color, ls=":", lw=0.8)
    ax.set_xlim(x_lo, x_hi)
    both = pd.concat(shown)
    lo, hi = both["heldout_loss"].min(), both["heldout_loss"].max()
    ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("held-out loss [nats]")
    ax.set_title("IsoFLOP view: each bin's own parabola; diamond: its minimum with interval;\n"
                 "dotted: Approach 3 N_opt at the bin's compute", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def vit_figure(reference: pd.DataFrame, a: Analysis | None = None):
    """[S23] Fig. 1: ImageNet top-1 vs TPU-v4 core hours for the published points, and the
    project's own families (lr-optimal runs, compute in TPU-v4 core hours at the hardware
    table's utilisation) when the runs hold more than one. They share the published axes
    only when the units allow it: held-out accuracy measured on ImageNet. Otherwise (a
    different dataset, or no accuracy recorded: held-out loss) they get their own panel
    next to the published one, with the same compute unit."""
    fams = _families(a.opt) if a is not None else {}
    own = len(fams) > 1
    same_units = own and _imagenet_accuracy(a)
    side = own and not same_units
    fig, axes = plt.subplots(1, 2 if side else 1, figsize=(11 if side else 6.5, 4.5), squeeze=False)
    ax = axes[0, 0]
    for fam, g in reference.groupby("family"):
        marker = "o" if fam == "NFNet" else "^"
        ax.plot(g["tpu_v4_core_hours"], g["imagenet_top1"], marker, ms=8, label=fam)
        for r in g.itertuples():
            ax.annotate(r.model, (r.tpu_v4_core_hours, r.imagenet_top1), fontsize=7,
                        xytext=(4, -11) if fam == "NFNet" else (4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e3:g}k"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v / 1e3:g}k" if round(v / 1e4) * 1e4 == round(v) and str(round(v))[0] in "1235" else ""))
    lo, hi = reference["tpu_v4_core_hours"].min(), reference["tpu_v4_core_hours"].max()
    ax.set_xlim(lo / 1.3, hi * 1.6)
    ax.set_xlabel("pre-training compute [TPU-v4 core hours]")
    ax.set_ylabel("ImageNet top-1 after fine-tuning [%]")
    ax.set_title("Published points ([S23] Fig. 1)" + (" and this project's families" if same_units else ""))
    if own:
        from scaling import units

        ax2 = ax if same_units else axes[0, 1]
        per = units.to_flops(1.0, "tpu-v4-core-hours")
        accuracy = all(g["heldout_accuracy"].notna().any() for g in fams.values())
        for fam, g in fams.items():
            y = g["heldout_accuracy"] * 100 if accuracy else g["heldout_loss"]
            ax2.plot(g["train_flops"] / per, y, "s" if same_units else "o", mfc="none" if same_units else None,
                     label=f"{fam} (this project)" if same_units else fam)
        if same_units:
            xs = np.concatenate([ax.get_xlim(), *[g["train_flops"].to_numpy(float) / per for g in fams.values()]])
            ax.set_xlim(xs.min() / 1.3, xs.max() * 1.6)
        else:
            ax2.set_xscale("log")
            ax2.set_xlabel("training compute [TPU-v4 core hours at the table's utilisation]")
            ax2.set_ylabel(f"held-out {'accuracy [%]' if accuracy else 'loss [nats]'} (this project, "
                           f"lr-optimal runs)")
            ax2.set_title("This project's families (not ImageNet top-1: own axis)")
            ax2.legend(fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _imagenet_accuracy(a: Analysis) -> bool:
    """The runs' held-out accuracy is ImageNet top-1 (the published points' y unit)."""
    data = a.runs["dataset"].dropna().astype(str).str.lower() if "dataset" in a.runs else pd.Series(dtype=str)
    return bool(len(data)) and bool(data.str.contains("imagenet").all()) and \
        bool(a.opt["heldout_accuracy"].notna().any())


FAMILY_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def comparison_figure(a: Analysis, per_unit: float, unit: str):
    """Every family on one pair of axes: its lr-optimal points (frontier points filled),
    its frontier law with the bootstrap band, and each pair's crossover: for two families a
    vertical line with its interval shaded; for three or more a numbered marker where the
    drawn laws cross, with its interval as a bar (one legend line per pair, crossing or
    not). None for a single family."""
    subs = a.families
    if len(subs) < 2:
        return None
    form = crossover.preferred_form(*(sub.laws for sub in subs.values() if sub.laws))
    fig, ax = plt.subplots(figsize=(7.5, 5) if len(subs) == 2 else (12, 6))  # 3+: the legend goes beside
    colors = {name: FAMILY_COLORS[i % len(FAMILY_COLORS)] for i, name in enumerate(subs)}
    cmin, cmax = a.compute_range
    grid = np.geomspace(cmin / 1.5, cmax * 1.5, 300)
    for name, sub in subs.items():
        opt = sub.opt.dropna(subset=["train_flops", "heldout_loss"])
        if opt.empty:
            continue
        c, l = opt["train_flops"].to_numpy(float), opt["heldout_loss"].to_numpy(float)
        on = frontier.envelope_mask(c, l)
        color = colors[name]
        ax.plot(c[~on] / per_unit, l[~on], "o", color=color, alpha=0.25, ms=3)
        ax.plot(c[on] / per_unit, l[on], "o", color=color, ms=6, mec="k", mew=0.5,
                label=f"{name}: frontier points ({on.sum()} of {len(opt)} optima)")
        law = sub.laws.get(form) if form else None
        if law is not None:
            lo, hi = law.band(grid)
            if np.isfinite(lo).all():
                ax.fill_between(grid / per_unit, lo, hi, color=color, alpha=0.15, lw=0)
            inside = (grid >= c.min()) & (grid <= c.max())
            ax.plot(grid / per_unit, law.predict(grid), ":", color=color, lw=1)
            ax.plot(grid[inside] / per_unit, law.predict(grid[inside]), "-", color=color, lw=1.5,
                    label=f"{name}: {LAW_STYLE[form][2]}, b = {law.params['b']:.3f}")
    many = len(subs) > 2  # a line per pair no longer says which pair: markers instead
    if many:
        _mark_crossings(ax, a.crossovers, subs, form, colors, per_unit, unit)
    for x in () if many else a.crossovers:
        pair = " / ".join(x.families)
        if x.flops is None:
            ax.plot([], [], " ", label=f"{pair}: no crossing in range ({x.ahead_below} ahead)")
            continue
        if x.interval:
            ax.axvspan(x.interval[0] / per_unit, x.interval[1] / per_unit, color="gray", alpha=0.12, lw=0)
        ax.axvline(x.flops / per_unit, color="k", ls="--", lw=1,
                   label=f"{pair} cross at {x.flops / per_unit:.3g} {unit}"
                         + (f" ({x.level:.0%}: {x.interval[0] / per_unit:.3g}..{x.interval[1] / per_unit:.3g})"
                            if x.interval else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    losses = a.opt["heldout_loss"].dropna()
    if len(losses):  # the data's range: a band far beyond a family's runs would flatten the rest
        ax.set_ylim(losses.min() / 1.2, losses.max() * 1.4)
    _plain_y(ax)
    ax.set_xlabel(f"training compute [{unit}]")
    ax.set_ylabel("held-out loss [nats] (log scale)")
    ax.set_title("Families compared: frontier laws (solid: fitted range, dotted: extrapolated; "
                 f"{a.level:.0%} bands)", fontsize=9)
    ax.legend(fontsize=7, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if many else {"loc": "best"}))
    fig.tight_layout()
    return fig


def _drawn_crossing(x, form: str) -> tuple:
    """(flops, interval, ahead_below) of a pair's crossing for the law form the figure
    draws: the pair's own preferred form may differ (a family without the offset law makes
    the figure draw power laws for all), and a marker must sit where the DRAWN curves meet."""
    if x.law == form:
        return x.flops, x.interval, x.ahead_below
    other = x.by_law.get(form)
    if other is None:
        return None, None, x.ahead_below
    return other["flops"], tuple(other["interval"]) if other["interval"] else None, other["ahead_below"]


def _mark_crossings(ax, crossovers, subs, form, colors, per_unit: float, unit: str):
    """Three or more families: one vertical line per pair would not say which pair it is,
    so each crossing of the drawn laws is a numbered marker ON them (face: the first
    family's colour, edge: the second's) with its bootstrap interval as a horizontal bar,
    and the legend names the pair; pairs whose drawn laws do not cross are listed with the
    family that is ahead."""
    drawn = [(x, *_drawn_crossing(x, form)) for x in crossovers]
    for i, (x, flops, interval, _) in enumerate(d for d in drawn if d[1] is not None):
        a, b = x.families
        loss = float(subs[a].laws[form].predict(np.array([flops]))[0])
        if interval:
            ax.plot([interval[0] / per_unit, interval[1] / per_unit], [loss, loss], color="0.35", lw=1.2,
                    alpha=0.8, zorder=4)
        ax.plot(flops / per_unit, loss, "D", ms=9, mfc=colors[a], mec=colors[b], mew=2.5, zorder=5,
                label=f"[{i + 1}] {a} / {b} cross at {flops / per_unit:.3g} {unit}"
                      + (f" ({x.level:.0%}: {interval[0] / per_unit:.3g}..{interval[1] / per_unit:.3g})"
                         if interval else ""))
        ax.annotate(str(i + 1), (flops / per_unit, loss), xytext=(6, 6), textcoords="offset points",
                    fontsize=8, fontweight="bold", zorder=6)
    for x, flops, _, ahead in drawn:
        if flops is None:
            ax.plot([], [], " ", label=f"{' / '.join(x.families)}: no crossing in range ({ahead} ahead)")
    if any(x.law != form for x in crossovers):
        ax.plot([], [], " ", label=f"(crossings of the drawn {LAW_STYLE[form][2]} laws; the crossover table "
                                   "uses each pair's own preferred law)")


def _plain_y(ax):
    """Plain numbers on a log loss axis (losses span less than a decade)."""
    fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)


def _families(opt: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Group lr-optimal runs by architecture family: their `family` column (a study of
    several families stacks it), else the model name's family (analysis.load)."""
    if opt.empty:
        return {}
    return {f: g for f, g in opt.groupby(family_column(opt))}


def save(fig, out: Path, name: str) -> list[str]:
    """Write PNG and SVG; returns the file names (relative to out)."""
    out.mkdir(parents=True, exist_ok=True)
    files = [f"{name}.png", f"{name}.svg"]
    fig.savefig(out / files[0], dpi=130)
    fig.savefig(out / files[1])
    plt.close(fig)
    return files
