"""`scaling demo`: the whole study at toy scale, the first thing a user runs.

One command strings the real parts together, so what it shows is what a pod-sized
study does (docs/demo.md):
  1. the bundled sweep `sweeps/specs/demo.toml` is enqueued into the store and worked
     by the sweep runner's local worker processes (`sweeps.runner.run_sweep`), with its
     progress bar; checkpoints and worker logs go next to the store (results/);
  2. the analysis (`analysis.pipeline.run_analysis`) fits the laws and
     `analysis.report.write_report` writes report.html + figures;
  3. the planner answers for a budget one order of magnitude beyond the sweep's largest
     trial, i.e. an extrapolation, and says so.
A sweep of several architecture families (e.g. `--spec compare`) gets all of it per
family (law, lr law, plan within that family, at the same budget) and the crossover of
each pair of families' frontier laws.
Running it again reuses every finished trial (the enqueue is idempotent); after Ctrl-C
the next run resumes the interrupted trials from their checkpoints.

Orchestration only: no jax here (the workers import it), so the command starts fast.
It lives in `study`, above scaling, sweeps and analysis, because it uses all three.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import typer

from scaling.errors import RuntimeFailure, redact
from sweeps.options import DEFAULT_URL  # the results store (docs/references.md#results-store)
DEFAULT_OUT = "results/demo"
DEFAULT_SPEC = "demo"  # sweeps/specs/demo.toml
# Two local workers on a 2-core machine: each trains a small model on ~1 core, which
# measured faster than one worker using both (docs/demo.md).
DEFAULT_WORKERS = 2
# The planner's budget: this many orders of magnitude beyond the largest trial (docs/demo.md).
PLAN_DECADES_BEYOND = 1.0


@dataclass
class DemoResult:
    sweep: str
    store: str
    trials: int  # trials of the sweep in the store after the run
    trained: int  # trials this call finished (0 when everything was already done)
    train_wall_seconds: float  # wall time of the training phase of this call
    counts: dict
    report: Path
    figures: list[Path]
    notes: list[str]
    plan: dict | None  # the planner's answer (None when no law could be fitted)
    plan_error: str | None = None
    law: dict = field(default_factory=dict)  # the frontier law L = k C^-b (estimate + interval)
    lr_law: str = ""  # the pooled learning-rate law, in words (analysis.lr.LrLaw.describe)
    # Per family {name: {"law", "lr_law", "plan", "plan_error"}}; with one family the fields
    # above are its own, with several they are empty and the plan is per family.
    families: dict = field(default_factory=dict)
    crossovers: list = field(default_factory=list)  # analysis.crossover.Crossover.to_dict() per pair
    converged: dict | None = None  # {"fraction", "resamples"} of the Approach 3 bootstrap refits
    finetune: dict | None = None  # analysis.finetune.summary when the sweep has fine-tune runs

    @property
    def failed(self) -> bool:
        """No family got a plan."""
        return not any(f["plan"] is not None for f in self.families.values()) if self.families else self.plan is None


def _finished(counts: dict) -> int:
    from sweeps.store import TERMINAL

    return sum(counts.get(s, 0) for s in TERMINAL)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def run_demo(spec: str = DEFAULT_SPEC, store_url: str = DEFAULT_URL, out: str | Path = DEFAULT_OUT, *,
             workers: int = DEFAULT_WORKERS, trainer: str | None = None, resamples: int = 1000,
             progress: bool = True, echo: Callable[[str], None] = print) -> DemoResult:
    """Sweep -> analysis -> report -> plan. `trainer` ("module:function") replaces the
    real trainer in the worker processes (tests); `echo` receives the status lines."""
    from sweeps.runner import run_sweep
    from sweeps.spec import expand, load_spec, total_train_flops

    sweep = load_spec(spec, require_data=True)  # BadInput here, before the store is touched
    grid = expand(sweep)
    flops = total_train_flops(sweep, grid)
    echo(f"demo: sweep '{sweep.name}': {len(grid)} grid trials on {sweep.dataset}"
         + (f" ({flops:.3g} training FLOPs before LR extension)" if flops else "") + f"; store {redact(store_url)}")

    # Enqueue only (idempotent; applies any due LR extension), to learn what is left to do.
    before = run_sweep(spec, store_url, workers=0, progress=False)
    start_done = before.counts.get("done", 0)
    todo = before.counts.get("pending", 0) + before.counts.get("running", 0)
    t0 = time.monotonic()
    if todo == 0:
        echo(f"all {before.total} trials already finished in the store: nothing to train "
             f"(to start over, delete the store and the trials/{sweep.name}/ folder next to it)")
        after = before
    elif workers == 0:
        echo(f"--workers 0: {todo} trials left in the store for other workers (`scaling sweep work --store ...`); "
             "analysing the finished ones")
        after = before
    else:
        resumed = before.total - before.enqueued - _finished(before.counts)
        echo(f"training {todo} trials ({before.enqueued} new, {resumed} resumed or left from an earlier run) "
             f"with {workers} worker processes; Ctrl-C stops, `scaling demo` again resumes")
        # Ctrl-C: the runner asks its workers to hand their trials back, waits for them
        # (a second Ctrl-C forces) and raises KeyboardInterrupt (sweeps/runner.py).
        after = run_sweep(spec, store_url, workers=workers, trainer=trainer, progress=progress)
    wall = time.monotonic() - t0
    trained = after.counts.get("done", 0) - start_done
    if todo and workers:
        bad = {k: after.counts.get(k, 0) for k in ("failed", "diverged") if after.counts.get(k, 0)}
        echo(f"trained {trained} trials in {_minutes(wall)}"
             + (f"; {', '.join(f'{v} {k}' for k, v in bad.items())} (`scaling sweep status`)" if bad else ""))

    result = _analyse(sweep, store_url, Path(out), resamples)
    return DemoResult(sweep=sweep.name, store=store_url, trials=after.total, trained=max(trained, 0),
                      train_wall_seconds=wall, counts=after.counts, **result)


def _analyse(sweep, store_url: str, out: Path, resamples: int) -> dict:
    """The analysis of THIS sweep's trials (a store may hold other sweeps), then the plan."""
    import numpy as np

    from analysis.load import clean, read_store
    from analysis.pipeline import run_analysis
    from analysis.report import write_report

    raw = read_store(store_url)
    runs, notes = clean(raw[raw["sweep"] == sweep.name])
    # Some bootstrap resamples of a 12-point Approach 3 fit overflow; the report counts
    # them ("x% of bootstrap resamples converged"), so numpy's warnings add nothing.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        analysis = run_analysis(runs, notes, resamples=resamples)
        from analysis import finetune  # the sweep's fine-tune runs (set aside by clean): their own section

        analysis.finetune = finetune.analyse(raw[raw["sweep"] == sweep.name], resamples=resamples)
        report = write_report(analysis, out, unit=sweep.report_unit)
    figures = sorted(report.parent.glob("*.png"))
    # One budget for every family (comparable plans): 10x the sweep's largest trial.
    budget = analysis.compute_range[1] * 10 ** PLAN_DECADES_BEYOND
    families = {name: _family_summary(sub, budget) for name, sub in analysis.per_family.items()}
    single = next(iter(families.values())) if len(families) == 1 else \
        {"law": {}, "lr_law": "", "plan": None, "plan_error": None, "converged": None}
    return {"report": report, "figures": figures, "notes": analysis.notes, **single,
            "families": families, "crossovers": [c.to_dict() for c in analysis.crossovers],
            "finetune": finetune.summary(analysis.finetune)}


def _family_summary(analysis, budget: float) -> dict:
    """One family's frontier law, lr law and plan (within that family) at `budget`."""
    import numpy as np

    from analysis import planner

    law = {}
    if "power" in analysis.laws:
        fit = analysis.laws["power"]
        law = {"k": fit.params["k"], "b": fit.params["b"], "b_interval": list(fit.intervals()["b"]),
               "r2": fit.r2}
    plan, error = None, None
    if analysis.approach3 is None or analysis.opt.empty:
        error = "; ".join(n for n in analysis.notes if "Approach 3" in n or "nothing" in n) or "no law fitted"
    else:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            plan = planner.plan(analysis, budget, "flops", extrapolate=True)
    fit = analysis.approach3
    converged = None if fit is None or not analysis.resamples else \
        {"fraction": fit.converged_fraction, "resamples": analysis.resamples, "withheld": fit.withheld}
    return {"law": law, "lr_law": analysis.lr_law.describe() if analysis.lr_law else "", "plan": plan,
            "plan_error": error, "converged": converged}


def summary_lines(r: DemoResult) -> list[str]:
    lines = [f"report: {r.report}", "figures: " + ", ".join(p.name for p in r.figures)]
    lines += [f"note: {n}" for n in r.notes if not n.startswith("crossover: ")]
    from analysis.finetune import demo_lines

    lines += demo_lines(r.finetune)  # a sweep with fine-tune runs: top-1 per cell, law, verdict
    if len(r.families) <= 1:
        return lines + _family_lines(r.law, r.lr_law, r.plan, r.plan_error, converged=r.converged)
    for name, f in r.families.items():
        lines.append(f"family {name}:")
        lines += ["  " + line for line in _family_lines(f["law"], f["lr_law"], f["plan"], f["plan_error"],
                                                        f" --family {name}", converged=f.get("converged"))]
    lines.append("crossovers (where two families' frontier laws meet):" if r.crossovers else
                 "crossovers: none computed (a family has no frontier law; see the notes)")
    lines += [f"  {c['statement']}" for c in r.crossovers]
    return lines


def _family_lines(law: dict, lr_law: str, plan: dict | None, plan_error: str | None, flag: str = "",
                  converged: dict | None = None) -> list[str]:
    from analysis.planner import format_plan

    lines = []
    if converged and converged.get("withheld"):  # no refits were drawn: say why, not "nan%"
        lines.append(f"compute-optimal fit: no intervals ({converged['withheld']})")
    elif converged:
        lines.append(f"compute-optimal fit: {converged['fraction']:.1%} of {converged['resamples']} bootstrap refits "
                     "converged")
    if law:
        lo, hi = law["b_interval"]
        lines.append(f"frontier law: L = {law['k']:.3g} x C^-{law['b']:.3g} "
                     f"(b in [{lo:.3g}, {hi:.3g}], R^2 {law['r2']:.3f}; C in training FLOPs)")
    if lr_law:
        lines.append(f"learning-rate law: {lr_law}")
    if plan is None:
        lines.append(f"planner: no answer ({plan_error})")
        return lines
    lines.append(f"planner, for {10 ** PLAN_DECADES_BEYOND:g}x the largest trial's compute -- an EXTRAPOLATION "
                 f"beyond every fitted run (`scaling plan --extrapolate{flag}`):")
    lines += ["  " + line for line in format_plan({**plan, "notes": []}).splitlines()]
    return lines


def demo(
    store: str = typer.Option(DEFAULT_URL, "--store", help="results store URL (sqlite:///... or postgresql://...)"),
    out: Path = typer.Option(Path(DEFAULT_OUT), "--out", help="directory for report.html, figures and fits.json"),
    workers: int = typer.Option(DEFAULT_WORKERS, "--workers", min=0,
                                help="local worker processes (2 suits a 2-core CPU; 0: only enqueue, then report)"),
    spec: str = typer.Option(DEFAULT_SPEC, "--spec",
                             help="sweep spec to run instead of the bundled demo (a TOML path or bundled name)"),
    resamples: int = typer.Option(1000, "--resamples", help="bootstrap resamples of the report's intervals"),
    as_json: bool = typer.Option(False, "--json", help="print the summary and the plan as JSON"),
    trainer: Optional[str] = typer.Option(None, hidden=True, help="module:function (tests)"),
) -> None:
    """Run the demo sweep on the built-in dataset, analyse it, write the report and plan
    for ten times the sweep's largest compute (an extrapolation). Re-running reuses
    finished trials; after Ctrl-C it resumes."""
    import json

    from analysis.cli import check_out_dir, check_resamples
    from sweeps.options import MAX_LOCAL_WORKERS, check_number

    check_resamples(resamples)  # every number in its range before anything runs
    check_number("--workers", workers, 0, MAX_LOCAL_WORKERS, integer=True)
    check_out_dir(out)
    echo = (lambda s: typer.echo(s, err=True)) if as_json else typer.echo
    try:
        r = run_demo(spec, store, out, workers=workers, trainer=trainer, resamples=resamples,
                     progress=True, echo=echo)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: finished trials are in the store and the interrupted ones were handed "
                   "back with their checkpoints; run `scaling demo` again to resume", err=True)
        raise typer.Exit(130) from None
    if as_json:
        from analysis.pipeline import jsonable

        d = {k: getattr(r, k) for k in ("sweep", "store", "trials", "trained", "train_wall_seconds", "counts",
                                        "notes", "plan", "plan_error", "law", "lr_law", "families", "crossovers",
                                        "converged", "finetune")}
        d.update(report=str(r.report), figures=[str(p) for p in r.figures])
        typer.echo(json.dumps(jsonable(d), allow_nan=False, indent=1))
    else:
        for line in summary_lines(r):
            typer.echo(line)
    if r.failed:
        why = r.plan_error or "; ".join(f"{k}: {f['plan_error']}" for k, f in r.families.items())
        raise RuntimeFailure(f"demo: the report is written ({r.report}) but the planner cannot answer: {why}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
