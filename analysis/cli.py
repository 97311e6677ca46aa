"""`scaling analyze` and `scaling plan`, defined here; the `scaling` entry point (study/cli.py)
mounts them with `register(app)`.

Heavy imports (pandas, scipy, matplotlib) happen inside the commands; `plan` never
imports matplotlib. Bad input raises BadInput (exit 2); "nothing can be said" raises
RuntimeFailure (exit 1) after the report with its notes has been written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from scaling.errors import BadInput, RuntimeFailure
from sweeps.options import DEFAULT_URL  # the results store (docs/references.md#results-store)

_STORE = typer.Option(None, "--store", help=f"Results store URL (default {DEFAULT_URL}).")
_CSV = typer.Option(None, "--csv", help="CSV of runs (columns as `scaling results import`).")
_DATASET = typer.Option(None, "--dataset", help="Analyse only runs on this dataset.")


def _load(store, csv, dataset, family=None):
    from analysis.load import family_column, load_runs

    if store is None and csv is None:
        store = DEFAULT_URL
    runs, notes = load_runs(store=store, csv=csv, dataset=dataset)
    if family is not None:
        fam = family_column(runs)
        if family.strip().lower() not in set(fam):
            raise BadInput(f"--family: {family!r} is not a family of the runs; they hold "
                           f"{', '.join(sorted(set(fam))) or 'no finished runs'}")
        runs = runs[fam == family.strip().lower()].reset_index(drop=True)
    return runs, notes


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise BadInput(f"--level: {level} must be in (0, 1), e.g. 0.95")


# Bootstrap resamples: fewer than 10 give no interval at all, more than 100,000 cost
# hours and memory for no visible gain (1000 is the reported default).
RESAMPLES_RANGE = (10, 100_000)
SEED_RANGE = (0, 2**32 - 1)  # numpy's default_rng takes a non-negative seed


def check_resamples(resamples: int) -> None:
    low, high = RESAMPLES_RANGE
    if not low <= resamples <= high:
        raise BadInput(f"--resamples: {resamples} is out of range; use {low} to {high:,} "
                       "(1000 or more for reported intervals)")


def _check_seed(seed: int) -> None:
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise BadInput(f"--seed: {seed} is out of range; use a whole number in [0, {SEED_RANGE[1]}]")


def check_out_dir(out: Path, flag: str = "--out") -> None:
    """The report's folder: made if missing, and writable (BadInput before any fitting:
    a file in its place, a read-only filesystem)."""
    import os

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{flag}: {out} is a file; give a folder for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"{flag}: cannot create {out} ({err.strerror}); give another folder") from None
    if not os.access(out, os.W_OK):
        raise BadInput(f"{flag}: cannot write in {out} (read-only); give another folder")


def analyze(
    store: Optional[str] = _STORE,
    csv: Optional[Path] = _CSV,
    out: Path = typer.Option(Path("results/report"), "--out", help="Directory for figures and report.html."),
    unit: str = typer.Option("flops", "--unit", help="Compute unit of the plots' x axes, e.g. tpu-v4-core-hours."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples (>= 1000 for the report)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    level: float = typer.Option(0.95, "--level", help="Confidence level of the intervals."),
    dataset: Optional[str] = _DATASET,
    family: Optional[str] = typer.Option(None, "--family", help="Analyse only this architecture family "
                                         "(default: every family, with the crossovers of each pair)."),
    as_json: bool = typer.Option(False, "--json", help="Print the fit summary (per family, and `crossovers`) as JSON."),
) -> None:
    """Fit the laws per family (and where each pair of families' frontiers cross), draw the
    figures and write report.html into --out."""
    from scaling import units

    _check_level(level)
    check_resamples(resamples)
    _check_seed(seed)
    if units.parse_unit(unit).kind == "epochs":
        raise BadInput("--unit: epochs depend on the model, so they cannot be a compute axis; use flops or hours")
    runs, notes = _load(store, csv, dataset, family)
    check_out_dir(out)  # before any fitting
    from analysis import report
    from analysis.pipeline import jsonable, run_analysis

    result = run_analysis(runs, notes, resamples=resamples, seed=seed, level=level)
    from analysis import finetune  # fine-tune rows, set aside by load.clean, get their own section

    result.finetune = finetune.from_source(store, csv, dataset, family, level=level, resamples=resamples, seed=seed)
    path = report.write_report(result, out, unit=unit)
    summary = result.to_dict()
    summary["finetune"] = result.finetune.to_dict() if result.finetune is not None else None
    summary["report"] = str(path)
    if as_json:
        typer.echo(json.dumps(jsonable(summary), allow_nan=False, indent=2))
    else:
        typer.echo(f"report: {path}")
        for note in result.notes:
            typer.echo(note if note in result.warnings else f"note: {note}")
    if result.opt.empty:
        raise RuntimeFailure(f"nothing to analyse: {'; '.join(result.notes)} (report written to {path})")


def plan(
    budget: float = typer.Option(..., "--budget", help="Compute budget, in --unit."),
    unit: str = typer.Option(..., "--unit", help="flops, epochs, tpu-v4-core-hours, h100-hours, cpu-core-hours, ..."),
    store: Optional[str] = _STORE,
    csv: Optional[Path] = _CSV,
    extrapolate: bool = typer.Option(False, "--extrapolate", help="Allow budgets far outside the fitted runs."),
    utilization: Optional[float] = typer.Option(None, "--utilization", help="Fraction of peak for hour units."),
    level: float = typer.Option(0.95, "--level", help="Confidence level of the intervals."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    dataset: Optional[str] = _DATASET,
    family: Optional[str] = typer.Option(None, "--family", help="Plan within this architecture family "
                                         "(required when the runs hold several)."),
    dataset_size: Optional[float] = typer.Option(None, "--dataset-size", help="Unique training examples of the "
                                                 "dataset to plan for (default: the runs' own, examples / epochs)."),
    objective: str = typer.Option("heldout-loss", "--objective", help="heldout-loss (default: pre-training) or "
                                  "finetune-top1 (downstream top-1 of the runs' fine-tune trials)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Recommend model, epochs and peak LR for a budget, with the predicted loss, within
    the runs' family (no concrete architecture for a family the project does not know);
    data repetition, shape and the two-trial lr come with it."""
    from scaling import units

    _check_level(level)
    _check_seed(seed)
    units.parse_unit(unit)  # bad unit -> exit 2 before any loading
    from analysis import finetune, planner

    if finetune.check_objective(objective, dataset_size) == "finetune-top1":  # analysis/finetune.py
        from analysis.pipeline import jsonable

        p = finetune.plan_command(budget, unit, store=DEFAULT_URL if store is None and csv is None else store,
                                  csv=csv, dataset=dataset, family=family, extrapolate=extrapolate,
                                  utilization=utilization, level=level, seed=seed)
        typer.echo(json.dumps(jsonable(p), allow_nan=False, indent=2) if as_json else finetune.format_plan(p))
        return

    planner.check_dataset_size(dataset_size)
    runs, notes = _load(store, csv, dataset, family)
    from analysis.load import family_column
    from analysis.pipeline import jsonable, run_analysis

    held = sorted(set(family_column(runs)))
    if len(held) > 1:  # before any fitting: the planner recommends within one family
        raise BadInput(f"--family: the runs hold {len(held)} families ({', '.join(held)}); the planner "
                       "recommends within one, so choose it with --family")

    result = run_analysis(runs, notes, resamples=planner.PLAN_RESAMPLES, seed=seed, level=level,
                          laws=False, backtest=False, polish=False)
    if result.opt.empty:
        raise RuntimeFailure(f"cannot plan: {'; '.join(result.notes)}")
    p = planner.plan(result, budget, unit, extrapolate=extrapolate, utilization=utilization, level=level,
                     dataset_size=dataset_size)
    typer.echo(json.dumps(jsonable({"objective": objective, **p}), allow_nan=False, indent=2) if as_json
               else planner.format_plan(p))


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
    app.command("plan")(plan)
