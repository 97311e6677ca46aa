"""Fine-tuned top-1 against pre-training compute: the downstream half of the study.

[S23]'s headline is not pre-training loss but top-1 after fine-tuning, against the
compute spent pre-training (docs/references.md#fine-tuning). Here:
  - fine-tune rows (stage "finetune") are joined to their pre-training parent
    (parent_trial_id -> trial_id): the parent's model, epochs, loss and train_flops are
    the run's pre-training coordinates, its own train_flops the fine-tuning cost;
  - per parent, the fine-tune LR with the best held-out top-1;
  - top-1 error against pre-training compute and against pre-training + fine-tuning
    compute, per family, with the power law err = k C^-b fitted to the lower envelope
    (analysis.frontier.fit_law: the same fit and parametric bootstrap as the loss law);
  - the paper's finding tested on these runs: at each compute level, is the (model,
    epoch budget) best after fine-tuning larger or smaller, trained for fewer or more
    epochs, than the one best for pre-training loss; resolved when the verdict survives
    the top-1 measurement noise (a parametric bootstrap over the runs).
Pure functions apart from `load` (which reads a store or CSV through analysis.load).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import frontier
from analysis.load import family_column

FINETUNE, PRETRAIN = "finetune", "pretrain"
AXES = {"pretrain": "pre-training compute", "total": "pre-training + fine-tuning compute"}
# Cells whose pre-training compute lies within this factor of a level's smallest cell
# share a compute level: narrower than one doubling of [S23]'s epoch-budget grid, so two
# budgets of one model never share a level (docs/references.md#epoch-budgets-and-the-learning-rate-grid).
LEVEL_RATIO = 2.0
# Held-out examples of a downstream set whose name does not say (`heldout=N`):
# Fashion-MNIST's test split [X17] (docs/references.md#real-data-fashion-mnist).
HELDOUT_DEFAULT = {"fashion-mnist": 10_000}
# [S23]'s finding: fine-tuning favours slightly larger models trained for fewer epochs
# than the pre-training-loss optimum (docs/references.md#fine-tuning).
PAPER_VERDICT = ("larger", "fewer")
DEFAULT_LEVEL, DEFAULT_RESAMPLES = 0.95, 1000
_PARENT_COLS = ("trial_id", "model", "family", "params", "epochs", "lr", "seed", "dataset", "status",
                "heldout_loss", "heldout_accuracy", "train_flops", "device_seconds")


def _stage(df: pd.DataFrame) -> pd.Series:
    s = df["stage"] if "stage" in df else pd.Series(np.nan, index=df.index)
    return s.astype(object).fillna(PRETRAIN).astype(str).str.strip().str.lower()


def has_finetunes(raw: pd.DataFrame) -> bool:
    """Whether a raw table of runs (analysis.load.read_store / read_csv) holds any fine-tune row."""
    return bool(len(raw)) and bool((_stage(raw) == FINETUNE).any())


def _numeric(df: pd.DataFrame, cols) -> pd.DataFrame:
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df else np.nan
    return df


def join_parents(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Finished fine-tune runs with their parent's columns (prefixed `pre_`), and the
    notes on what was left out (unfinished, orphaned, parent not done, no top-1).
    Added: top1, top1_error, pretrain_flops, finetune_flops, total_flops."""
    notes: list[str] = []
    df = raw.copy()
    df["stage"] = _stage(df)
    for col in ("trial_id", "parent_trial_id", "dataset"):  # a CSV made elsewhere may lack them
        if col not in df:
            df[col] = np.nan
    df = _numeric(df, ("params", "epochs", "lr", "seed", "heldout_loss", "heldout_accuracy", "train_flops",
                       "device_seconds"))
    df["status"] = df["status"].astype(object).fillna("done").astype(str).str.lower() if "status" in df else "done"
    df["family"] = family_column(df)
    ft = df[df["stage"] == FINETUNE]
    if ft.empty:
        return ft.assign(**{c: pd.Series(dtype=float) for c in ("top1", "top1_error", "pretrain_flops",
                                                                 "finetune_flops", "total_flops")}), notes
    unfinished = int((ft["status"] != "done").sum())
    if unfinished:
        counts = ft.loc[ft["status"] != "done", "status"].value_counts()
        notes.append(f"fine-tuning: left out {unfinished} fine-tune trial(s) not finished 'done' "
                     f"({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    ft = ft[ft["status"] == "done"]
    pre = df[df["stage"] != FINETUNE][[c for c in _PARENT_COLS if c in df]].add_prefix("pre_")
    pre = pre.assign(pre_trial_id=pre["pre_trial_id"].astype("string")).dropna(subset=["pre_trial_id"])
    ft = ft.assign(parent_trial_id=ft["parent_trial_id"].astype("string"))
    out = ft.merge(pre, left_on="parent_trial_id", right_on="pre_trial_id", how="left")
    orphan = out["pre_trial_id"].isna()
    if orphan.any():
        notes.append(f"fine-tuning: left out {int(orphan.sum())} fine-tune run(s) whose parent is not among the "
                     "runs (export the parent with them)")
    parent_bad = ~orphan & (out["pre_status"] != "done")
    if parent_bad.any():
        notes.append(f"fine-tuning: left out {int(parent_bad.sum())} fine-tune run(s) whose parent did not "
                     "finish 'done'")
    out = out[~orphan & ~parent_bad].copy()
    ok = out["heldout_accuracy"].between(0, 1) & (out["train_flops"] > 0) & (out["pre_train_flops"] > 0) & \
        np.isfinite(out["pre_train_flops"])
    if (~ok).any():
        notes.append(f"fine-tuning: left out {int((~ok).sum())} fine-tune run(s) without a held-out top-1 in [0, 1] "
                     "or without positive FLOPs (theirs or their parent's)")
    out = out[ok].reset_index(drop=True)
    out["top1"] = out["heldout_accuracy"]
    out["top1_error"] = 1.0 - out["heldout_accuracy"]
    out["pretrain_flops"] = out["pre_train_flops"]
    out["finetune_flops"] = out["train_flops"]
    out["total_flops"] = out["pretrain_flops"] + out["finetune_flops"]
    return out, notes


def pretrain_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """Finished pre-training runs with a finite held-out loss (the cells' pre-training side)."""
    df = raw.copy()
    df["stage"] = _stage(df)
    df = _numeric(df, ("params", "epochs", "lr", "heldout_loss", "train_flops"))
    df["status"] = df["status"].astype(object).fillna("done").astype(str).str.lower() if "status" in df else "done"
    df["family"] = family_column(df)
    df = df[(df["stage"] != FINETUNE) & (df["status"] == "done")]
    return df[np.isfinite(df["heldout_loss"]) & (df["heldout_loss"] > 0)].reset_index(drop=True)


def _edge(lrs: np.ndarray, best: float) -> str:
    if lrs.size < 2:
        return "single lr"
    return "lowest lr" if best <= lrs.min() else "highest lr" if best >= lrs.max() else ""


def best_per_parent(runs: pd.DataFrame) -> pd.DataFrame:
    """Per parent: its fine-tune run of best top-1 (ties: lower held-out loss, then lower
    LR), with the LRs tried, whether the best is an edge of them, the runner-up's top-1
    and the fine-tune LRs either side of the best (its interval on the grid)."""
    if runs.empty:
        return runs.assign(n_lrs=pd.Series(dtype=int), lr_edge="", runner_up_top1=np.nan,
                           lr_below=np.nan, lr_above=np.nan)
    order = runs.sort_values(["parent_trial_id", "top1", "heldout_loss", "lr"], ascending=[True, False, True, True])
    rows = []
    for pid, g in order.groupby("parent_trial_id", sort=False):
        best = g.iloc[0].copy()
        lrs = np.unique(g["lr"].to_numpy(float))
        b = float(best["lr"])
        best["n_lrs"] = int(lrs.size)
        best["lr_edge"] = _edge(lrs, b)
        others = g[g["lr"] != b]["top1"]
        best["runner_up_top1"] = float(others.max()) if len(others) else np.nan
        below, above = lrs[lrs < b], lrs[lrs > b]
        best["lr_below"] = float(below.max()) if below.size else np.nan
        best["lr_above"] = float(above.min()) if above.size else np.nan
        rows.append(best)
    return pd.DataFrame(rows).reset_index(drop=True)


def cell_table(best: pd.DataFrame, pre: pd.DataFrame) -> pd.DataFrame:
    """One row per (family, model, epoch budget) that has fine-tuned parents: its best
    fine-tuned top-1 (mean over seeds of each seed's best parent and LR), its best
    pre-training loss (over every pre-training run of the cell, not only the parents)
    and its pre-training compute."""
    if best.empty:
        return pd.DataFrame(columns=["family", "model", "epochs", "params", "pretrain_flops", "top1",
                                     "pretrain_loss", "finetune_lr", "parents"])
    rows = []
    for (fam, model, epochs), g in best.groupby(["family", "pre_model", "pre_epochs"], dropna=False):
        per_seed = g.groupby(g["pre_seed"].fillna(-1))["top1"].max()  # join_parents always gives pre_seed
        top = g.loc[g["top1"].idxmax()]
        cell = pre[(pre["family"] == fam) & (pre["model"] == model) &
                   ((pre["epochs"] == epochs) | (pd.isna(epochs) & pre["epochs"].isna()))]
        loss = float(cell["heldout_loss"].min()) if len(cell) else float(g["pre_heldout_loss"].min())
        rows.append({"family": fam, "model": model, "epochs": epochs, "params": float(g["pre_params"].iloc[0]),
                     "pretrain_flops": float(g["pretrain_flops"].median()), "top1": float(per_seed.mean()),
                     "pretrain_loss": loss, "finetune_lr": float(top["lr"]),
                     "finetune_flops": float(top["finetune_flops"]), "parents": int(len(g))})
    return pd.DataFrame(rows).sort_values(["family", "pretrain_flops"]).reset_index(drop=True)


def compute_levels(flops: np.ndarray, ratio: float = LEVEL_RATIO) -> np.ndarray:
    """Level index per point: sorted by compute, a new level starts where a point's compute
    reaches `ratio` times the level's first point (so a level spans less than `ratio`)."""
    flops = np.asarray(flops, dtype=float)
    order = np.argsort(flops, kind="stable")
    out = np.empty(flops.size, dtype=int)
    level, first = -1, None
    for i in order:
        if first is None or flops[i] >= first * ratio * (1 - 1e-9):
            level, first = level + 1, flops[i]
        out[i] = level
    return out


def heldout_size(dataset: str) -> float:
    """Held-out examples a downstream dataset name declares (`heldout=N`), else the
    known default of its kind (HELDOUT_DEFAULT), else NaN (noise unknown)."""
    text = str(dataset)
    m = re.search(r"(?:^|[:,])heldout=(\d+)", text)
    if m:
        return float(m.group(1))
    return float(HELDOUT_DEFAULT.get(text.split(":", 1)[0].strip().lower(), float("nan")))


def _words(ft: pd.Series, pre: pd.Series) -> tuple[str, str]:
    size = "larger" if ft["params"] > pre["params"] else "smaller" if ft["params"] < pre["params"] else "same"
    e1, e0 = ft["epochs"], pre["epochs"]
    epochs = "fewer" if e1 < e0 else "more" if e1 > e0 else "same"
    return size, epochs


def _simulated_top1(cells: pd.DataFrame, all_runs: pd.DataFrame, resamples: int,
                    rng: np.random.Generator) -> np.ndarray | None:
    """(resamples, cells) top-1 of each cell when every fine-tune run's top-1 is redrawn
    from its binomial sampling noise (sd sqrt(p(1-p)/n_heldout)) and each parent's best LR
    is chosen again on the redrawn values; None when a held-out size is unknown."""
    n = all_runs["dataset"].map(heldout_size).to_numpy(float)
    if not np.isfinite(n).all():
        return None
    p = all_runs["top1"].to_numpy(float)
    sd = np.sqrt(np.clip(p * (1 - p), 1e-6, None) / n)  # a run at 0% or 100% still has some noise
    sim = np.clip(p[None, :] + sd[None, :] * rng.standard_normal((resamples, p.size)), 0, 1)
    out = np.empty((resamples, len(cells)))
    seed = all_runs["pre_seed"].fillna(-1).to_numpy() if "pre_seed" in all_runs else np.zeros(len(all_runs))
    for j, c in enumerate(cells.itertuples()):
        in_cell = ((all_runs["family"] == c.family) & (all_runs["pre_model"] == c.model) &
                   (all_runs["pre_epochs"] == c.epochs)).to_numpy()
        per_seed = [sim[:, in_cell & (seed == s)].max(axis=1) for s in np.unique(seed[in_cell])]
        out[:, j] = np.mean(per_seed, axis=0)
    return out


def compare_levels(cells: pd.DataFrame, runs: pd.DataFrame, level: float = DEFAULT_LEVEL,
                   resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Per family and compute level of two or more cells: the cell best after fine-tuning
    vs the cell best in pre-training loss, the verdict in words, the top-1 difference with
    its noise, and the share of bootstrap resamples giving the same verdict (resolved when
    at least `level`). The pre-training side is taken as measured (one loss per run, its
    noise unknown)."""
    rows = []
    rng = np.random.default_rng(seed)
    for fam, fc in cells.groupby("family"):
        fc = fc.reset_index(drop=True)
        fc["level"] = compute_levels(fc["pretrain_flops"].to_numpy(float))
        sim = _simulated_top1(fc, runs[runs["family"] == fam], resamples, rng) if resamples else None
        for lev, g in fc.groupby("level"):
            if len(g) < 2:
                continue
            idx = g.index.to_numpy()
            ft_i, pre_i = int(g["top1"].idxmax()), int(g["pretrain_loss"].idxmin())
            ft, pre = fc.loc[ft_i], fc.loc[pre_i]
            size, epochs = _words(ft, pre)
            diff = float(ft["top1"] - pre["top1"])
            n1 = heldout_size(runs.loc[runs["family"] == fam, "dataset"].iloc[0])
            noise = math.sqrt(sum(v * (1 - v) for v in (ft["top1"], pre["top1"])) / n1) if math.isfinite(n1) else np.nan
            agree, why = float("nan"), ""
            if sim is not None:
                pick = idx[np.argmax(sim[:, idx], axis=1)]
                agree = float(np.mean([_words(fc.loc[k], pre) == (size, epochs) for k in pick]))
            else:
                why = "held-out size unknown (no heldout=N in the downstream dataset name): noise not assessed"
            rows.append({"family": fam, "level": int(lev), "pretrain_flops_from": float(g["pretrain_flops"].min()),
                         "pretrain_flops_to": float(g["pretrain_flops"].max()), "cells": len(g),
                         "best_finetuned": f"{ft['model']} x {ft['epochs']:g} ep",
                         "best_pretrain_loss": f"{pre['model']} x {pre['epochs']:g} ep",
                         "size": size, "epochs": epochs, "top1_difference": diff, "noise_sd": noise,
                         "agreeing_resamples": agree,
                         "resolved": bool(np.isfinite(agree) and agree >= level), "note": why})
    return pd.DataFrame(rows)


def verdict(levels: pd.DataFrame) -> dict:
    """One statement over every compared level: the verdict where all levels agree
    ("mixed" where they do not), whether every level is resolved, and whether it matches
    [S23]'s direction (PAPER_VERDICT)."""
    if levels.empty:
        return {"size": None, "epochs": None, "resolved": False, "levels": 0, "matches_paper": None,
                "statement": "not testable: no compute level holds two (model, epoch budget) cells within a factor "
                             f"{LEVEL_RATIO:g} of pre-training compute; add sizes or epoch budgets that trade one "
                             "for the other at equal compute"}
    sizes, epochs = sorted(set(levels["size"])), sorted(set(levels["epochs"]))
    size = sizes[0] if len(sizes) == 1 else "mixed"
    ep = epochs[0] if len(epochs) == 1 else "mixed"
    resolved = bool(levels["resolved"].all())
    n_res = int(levels["resolved"].sum())
    matches = (size, ep) == PAPER_VERDICT
    size_words = {"larger": "a larger model", "smaller": "a smaller model", "same": "the same model"}
    ep_words = {"fewer": "fewer epochs", "more": "more epochs", "same": "the same epoch budget"}
    statement = (f"at equal pre-training compute, fine-tuned top-1 prefers {size_words.get(size, 'mixed sizes')} "
                 f"and {ep_words.get(ep, 'mixed epoch budgets')} compared with the pre-training-loss optimum "
                 f"({len(levels)} compute level(s), resolved at {n_res}); "
                 + ("as [S23] found (larger, fewer)" if matches else "[S23] found larger and fewer"))
    return {"size": size, "epochs": ep, "resolved": resolved, "levels": int(len(levels)),
            "resolved_levels": n_res, "matches_paper": matches, "statement": statement}


def published_comparable(runs: pd.DataFrame) -> tuple[bool, str]:
    """The published points (results/reference: ImageNet top-1 after fine-tuning vs
    TPU-v4 core-hours of JFT pre-training) share these axes only when the runs fine-tune
    on ImageNet; else the reason they are not drawn."""
    data = sorted(set(runs["dataset"].dropna().astype(str))) if len(runs) else []
    if data and all("imagenet" in d.lower() for d in data):
        return True, ""
    return False, ("published points not drawn: they are ImageNet top-1 after fine-tuning from JFT pre-training "
                   f"(TPU-v4 core-hours); these runs fine-tune on {', '.join(data) or 'nothing'}, so the axes "
                   "do not share units")


def fit_error_laws(best: pd.DataFrame, level: float, resamples: int, seed: int) -> tuple[dict, list[str]]:
    """{(family, axis): LawFit} of top-1 error = k C^-b on the lower envelope of the
    per-parent best points, for both compute axes; notes say where the points do not
    support a fit or the slope is not resolved."""
    laws, notes = {}, []
    for fam, g in best.groupby("family"):
        for axis in AXES:
            x = g[f"{axis}_flops"].to_numpy(float)
            y = g["top1_error"].to_numpy(float)
            try:
                with np.errstate(all="ignore"):
                    law = frontier.fit_law("power", x, y, resamples=resamples, seed=seed, level=level)
            except ValueError as err:
                notes.append(f"fine-tuning ({fam}, vs {AXES[axis]}): no law fitted, the points do not support "
                             f"one: {err}")
                continue
            laws[(fam, axis)] = law
            lo, hi = law.intervals()["b"]
            if law.withheld:
                notes.append(f"fine-tuning ({fam}, vs {AXES[axis]}): law fitted but intervals withheld: {law.withheld}")
            elif not (np.isfinite(lo) and lo > 0):
                notes.append(f"fine-tuning ({fam}, vs {AXES[axis]}): the error's fall with compute is not resolved "
                             f"(b in [{lo:.3g}, {hi:.3g}])")
    return laws, notes


@dataclass
class Finetune:
    runs: pd.DataFrame  # finished fine-tune runs with their parents' columns (pre_*)
    best: pd.DataFrame  # per parent, the best fine-tune LR
    cells: pd.DataFrame  # per (family, model, epochs)
    levels: pd.DataFrame  # compute levels compared (compare_levels)
    verdict: dict
    laws: dict = field(default_factory=dict)  # {(family, axis): frontier.LawFit}
    notes: list[str] = field(default_factory=list)
    published: tuple[bool, str] = (False, "")
    level: float = DEFAULT_LEVEL
    resamples: int = DEFAULT_RESAMPLES

    @property
    def families(self) -> list[str]:
        return sorted(set(self.best["family"])) if len(self.best) else []

    def law_dict(self, family: str, axis: str) -> dict | None:
        law = self.laws.get((family, axis))
        if law is None:
            return None
        return {"err = k C^-b": {"k": law.params["k"], "b": law.params["b"]},
                "b_interval": list(law.intervals()["b"]), "r2": law.r2, "points": law.n_points,
                "withheld": law.withheld or None, "level": law.level}

    def to_dict(self) -> dict:
        cols = ["family", "pre_model", "pre_epochs", "pre_lr", "pre_heldout_loss", "pretrain_flops", "lr", "top1",
                "finetune_flops", "total_flops", "n_lrs", "lr_edge", "parent_trial_id"]
        return {"runs": len(self.runs), "parents": len(self.best),
                "best_per_parent": self.best[[c for c in cols if c in self.best]].to_dict(orient="records"),
                "cells": self.cells.to_dict(orient="records"), "levels": self.levels.to_dict(orient="records"),
                "verdict": self.verdict, "notes": self.notes, "published_points": self.published[1] or "drawn",
                "laws": {f"{fam}/{axis}": self.law_dict(fam, axis) for fam, axis in self.laws}}


def analyse(raw: pd.DataFrame, level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
            seed: int = 0) -> Finetune | None:
    """The whole fine-tuning analysis of a raw table of runs; None when it holds no fine-tune row."""
    if not has_finetunes(raw):
        return None
    runs, notes = join_parents(raw)
    best = best_per_parent(runs)
    cells = cell_table(best, pretrain_rows(raw))
    edge = int((best["lr_edge"].isin(["lowest lr", "highest lr"])).sum()) if len(best) else 0
    if edge:
        notes.append(f"fine-tuning: {edge} parent(s) have their best fine-tune LR at an edge of the LRs tried "
                     "(extend the [finetune] LR grid)")
    laws, law_notes = fit_error_laws(best, level, resamples, seed)
    levels = compare_levels(cells, runs, level, resamples, seed)
    return Finetune(runs=runs, best=best, cells=cells, levels=levels, verdict=verdict(levels), laws=laws,
                    notes=notes + law_notes, published=published_comparable(runs), level=level, resamples=resamples)


def read_raw(store: str | None = None, csv=None) -> pd.DataFrame:
    """Every run of a store (URL) or CSV, both stages, through analysis.load's readers."""
    from analysis import load

    if (store is None) == (csv is None):
        from scaling.errors import BadInput

        raise BadInput("--store/--csv: give exactly one source of runs (a store URL or a CSV file)")
    return load.read_store(store) if store is not None else load.read_csv(csv)


def select(raw: pd.DataFrame, dataset: str | None = None, family: str | None = None) -> pd.DataFrame:
    """Keep the fine-tune rows whose parent was pre-trained on `dataset` (and those parents
    and their cell-mates) and of `family`; None keeps everything."""
    df = raw
    if "parent_trial_id" not in df:
        df = df.assign(parent_trial_id=np.nan)
    if family is not None:
        df = df[family_column(df) == family.strip().lower()]
    if dataset is not None:
        pre_ids = set(df.loc[(_stage(df) != FINETUNE) & (df["dataset"] == dataset), "trial_id"])
        keep = ((_stage(df) != FINETUNE) & (df["dataset"] == dataset)) | df["parent_trial_id"].isin(pre_ids)
        df = df[keep]
    return df.reset_index(drop=True)


# --- `scaling plan --objective finetune-top1` ---------------------------------------
OBJECTIVES = ("heldout-loss", "finetune-top1")  # the default first
PLAN_RESAMPLES = 200  # as the loss planner's (analysis/planner.py: enough for a 95% interval)


def _no_finetunes() -> Exception:
    from scaling.errors import BadInput

    return BadInput("--objective finetune-top1: the runs hold no finished fine-tune trial (stage 'finetune' with a "
                    "parent); run a spec with a [finetune] table (e.g. `scaling demo --spec transfer`) or plan for "
                    "held-out loss (the default objective)")


def plan(ft: Finetune | None, budget_flops: float, family: str | None = None, extrapolate: bool = False) -> dict:
    """What to pre-train and how to fine-tune for a pre-training budget (FLOPs): the
    measured (model, epochs) cell on the top-1 error envelope that the budget affords, its
    best fine-tune LR (with the LRs either side: the optimum's interval on the grid), and
    the top-1 the law predicts at the budget with its interval. Beyond the largest cell
    (with `extrapolate`) only the law speaks; the cell is the largest measured."""
    from analysis.planner import MAX_DECADES_OUTSIDE
    from scaling.errors import BadInput

    if ft is None or ft.best.empty:
        raise _no_finetunes()
    fams = ft.families
    if family is None and len(fams) > 1:
        raise BadInput(f"--family: the fine-tune runs hold {len(fams)} families ({', '.join(fams)}); choose one "
                       "with --family")
    fam = (family or fams[0]).strip().lower()
    if fam not in fams:
        raise BadInput(f"--family: {family!r} has no fine-tune runs; they hold {', '.join(fams)}")
    if not (budget_flops > 0 and math.isfinite(budget_flops)):
        raise BadInput(f"--budget: {budget_flops!r} FLOPs must be a finite number > 0")
    g = ft.best[ft.best["family"] == fam]
    x, err = g["pretrain_flops"].to_numpy(float), g["top1_error"].to_numpy(float)
    cmin, cmax = float(x.min()), float(x.max())
    outside = max(0.0, math.log10(budget_flops / cmax), math.log10(cmin / budget_flops))
    if outside > MAX_DECADES_OUTSIDE and not extrapolate:
        side = "above the largest" if budget_flops > cmax else "below the smallest"
        raise BadInput(f"--budget: {budget_flops:.3g} FLOPs of pre-training is {outside:.1f} orders of magnitude "
                       f"{side} fine-tuned parent ({cmin:.3g}..{cmax:.3g} FLOPs); pass --extrapolate to plan anyway")
    notes = []
    on = frontier.envelope_mask(x, np.maximum(err, 1e-12))
    afford = on & (x <= budget_flops * (1 + 1e-9))
    cell = None
    if afford.any():
        r = g[afford].loc[g[afford]["top1_error"].idxmin()]
        lr_iv = [r["lr_below"], r["lr_above"]]
        cell = {"model": r["pre_model"], "params": r["pre_params"], "epochs": r["pre_epochs"],
                "pretrain_lr": r["pre_lr"], "pretrain_flops": r["pretrain_flops"],
                "parent_trial_id": r["parent_trial_id"],
                "finetune_lr": r["lr"], "finetune_lr_interval": lr_iv, "finetune_lr_edge": r["lr_edge"],
                "finetune_epochs": r["epochs"], "finetune_flops": r["finetune_flops"],
                "total_flops": r["total_flops"], "measured_top1": r["top1"]}
        if r["lr_edge"]:
            notes.append(f"the best fine-tune LR {r['lr']:g} is the {r['lr_edge']} tried: its interval is open on "
                         "that side (extend the [finetune] LR grid)")
    else:
        notes.append(f"no fine-tuned parent fits in {budget_flops:.3g} FLOPs (the cheapest used {cmin:.3g})")
    if budget_flops > cmax * (1 + 1e-9):
        notes.append("EXTRAPOLATION: the budget is beyond the largest fine-tuned parent; the cell is the largest "
                     "measured, and `scaling plan` (held-out loss) picks a model and epochs for the budget itself, "
                     "to be shifted as the verdict below says")
    law = ft.laws.get((fam, "pretrain"))
    pred, pred_iv = None, [None, None]
    if law is None:
        notes.append("no top-1 law at this family: the answer is the measured cell only (see `scaling analyze`)")
    else:
        e = float(law.predict([budget_flops])[0])
        lo, hi = law.band([budget_flops])
        pred = 1.0 - e
        pred_iv = [1.0 - float(hi[0]), 1.0 - float(lo[0])] if np.isfinite([lo[0], hi[0]]).all() else [None, None]
        b_lo, _ = law.intervals()["b"]
        if not (np.isfinite(b_lo) and b_lo > 0):
            notes.append("the top-1 law's slope is not resolved (its interval reaches b <= 0): the prediction's "
                         "interval is wide for a reason")
    return {"objective": "finetune-top1", "family": fam, "budget_flops": budget_flops,
            "fitted_pretrain_flops": [cmin, cmax], "extrapolated": bool(budget_flops > cmax or budget_flops < cmin),
            "cell": cell, "predicted_top1": pred, "predicted_top1_interval": pred_iv, "level": ft.level,
            "law": ft.law_dict(fam, "pretrain"), "verdict": ft.verdict, "notes": ft.notes + notes}


def format_plan(p: dict) -> str:
    """The fine-tune plan as lines of text."""
    lines = [f"objective: fine-tuned top-1 (family {p['family']}), pre-training budget {p['budget_flops']:.3g} FLOPs"
             + (" -- EXTRAPOLATED" if p["extrapolated"] else "")]
    c = p["cell"]
    if c is not None:
        lo, hi = c["finetune_lr_interval"]
        iv = f"[{'open' if lo is None or not math.isfinite(lo) else f'{lo:g}'}, " \
             f"{'open' if hi is None or not math.isfinite(hi) else f'{hi:g}'}]"
        lines += [f"pre-train: {c['model']} ({c['params']:.3g} params) for {c['epochs']:g} epochs at lr "
                  f"{c['pretrain_lr']:g} ({c['pretrain_flops']:.3g} FLOPs)",
                  f"fine-tune: lr {c['finetune_lr']:g} (best of the grid; optimum between {iv}) for "
                  f"{c['finetune_epochs']:g} epochs ({c['finetune_flops']:.3g} FLOPs; total {c['total_flops']:.3g})",
                  f"measured top-1 of that cell: {c['measured_top1']:.1%}"]
    if p["predicted_top1"] is not None:
        lo, hi = p["predicted_top1_interval"]
        iv = f" ({p['level']:.0%} interval {lo:.1%}..{hi:.1%})" if lo is not None else " (interval withheld)"
        lines.append(f"predicted top-1 at the budget (law err = k C^-b): {p['predicted_top1']:.1%}{iv}")
    lines.append(f"verdict: {p['verdict']['statement']}")
    lines += [f"note: {n}" for n in p["notes"]]
    return "\n".join(lines)


def plan_command(budget: float, unit: str, *, store=None, csv=None, dataset=None, family=None,
                 extrapolate=False, utilization=None, level=DEFAULT_LEVEL, seed=0) -> dict:
    """Orchestration for `scaling plan --objective finetune-top1`: read, analyse, plan."""
    from scaling import units
    from scaling.errors import BadInput

    parsed = units.parse_unit(unit)
    if parsed.kind == "epochs":
        raise BadInput("--unit: epochs depend on the model; plan fine-tuning in FLOPs or hours")
    flops = units.to_flops(budget, parsed, utilization=utilization)
    raw = select(read_raw(store, csv), dataset, family)
    if not has_finetunes(raw):
        raise _no_finetunes()
    ft = analyse(raw, level=level, resamples=PLAN_RESAMPLES, seed=seed)
    if ft is None or ft.best.empty:
        raise _no_finetunes()
    out = plan(ft, flops, family, extrapolate)
    out.update(budget=budget, unit=parsed.name)
    return out


def check_objective(objective: str, dataset_size=None) -> str:
    """`--objective`, checked before anything is read (BadInput naming the choices)."""
    from scaling.errors import BadInput

    obj = str(objective).strip().lower()
    if obj not in OBJECTIVES:
        raise BadInput(f"--objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if obj == "finetune-top1" and dataset_size is not None:
        raise BadInput("--dataset-size: plans for held-out loss only; drop it with --objective finetune-top1")
    return obj


def from_source(store=None, csv=None, dataset=None, family=None, level=DEFAULT_LEVEL,
                resamples=DEFAULT_RESAMPLES, seed=0) -> Finetune | None:
    """The fine-tuning analysis of a store or CSV (`scaling analyze`), None without fine-tune rows."""
    if store is None and csv is None:
        from sweeps.options import DEFAULT_URL  # the results store (docs/references.md#results-store)

        store = DEFAULT_URL
    return analyse(select(read_raw(store, csv), dataset, family), level=level, resamples=resamples, seed=seed)


def summary(ft: Finetune | None) -> dict | None:
    """What `scaling demo` prints and returns for a sweep with fine-tune runs (JSON-ready)."""
    return None if ft is None else ft.to_dict()


def demo_lines(s: dict | None) -> list[str]:
    """The demo's fine-tuning lines: top-1 per cell, the law if one fits, the verdict."""
    if not s:
        return []
    lines = [f"fine-tuning: {s['runs']} fine-tune runs of {s['parents']} parents; best fine-tune per (model, epochs):"]
    for c in s["cells"]:
        lines.append(f"  {c['model']} x {c['epochs']:g} ep: pre-training loss {c['pretrain_loss']:.3f} at "
                     f"{c['pretrain_flops']:.3g} FLOPs -> top-1 {c['top1']:.1%} (fine-tune lr {c['finetune_lr']:g})")
    for key, law in s["laws"].items():
        fam, axis = key.split("/")
        if law is None:
            continue
        lo, hi = law["b_interval"]
        p = law["err = k C^-b"]
        lines.append(f"top-1 error law ({fam}, vs {AXES[axis]}): err = {p['k']:.3g} x C^-{p['b']:.3g} "
                     f"(b in [{lo:.3g}, {hi:.3g}], {law['points']} envelope points, R^2 {law['r2']:.3f})")
    if not any(s["laws"].values()):
        lines.append("top-1 error law: none fitted (the points do not support one; see the notes)")
    lines.append(f"verdict: {s['verdict']['statement']}")
    lines += [f"note: {n}" for n in s["notes"]]
    return lines
