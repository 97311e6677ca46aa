"""`scaling sweep ...` and `scaling results ...`: thin typer wrappers over sweeps/*.

The sub-apps are defined here at module level; the `scaling` entry point (study/cli.py)
mounts them through `register(app)`. `python -m sweeps.worker` runs the `sweep work`
command (`work_main`), so a worker has one CLI with one set of flags. Option defaults
come from sweeps.options, which imports nothing heavy (`scaling --help` stays fast).
Errors are `BadInput` (exit 2) or `RuntimeFailure` (exit 1), printed as one line by
scaling.console.run.
"""
from __future__ import annotations

import json
import math
import sys

from typing import Optional

import typer

from scaling import console
from scaling.errors import RuntimeFailure
from sweeps.options import DEFAULT_URL, MAX_LOCAL_WORKERS, WorkerOptions, check_number

STORE_HELP = ("store URL: sqlite:///rel/path.db (three slashes: relative to the working directory), "
              "sqlite:////abs/path.db, or postgresql://user@host:port/db")
_LEASE_HELP = "lease seconds; a silent worker's trial is re-claimed after it"
_MAX_ATTEMPTS_HELP = "claims per trial before it is marked failed"
_WORKER_DEFAULTS = WorkerOptions()

sweep_app = typer.Typer(help="Sweep specs, workers and their status.", no_args_is_help=True)
results_app = typer.Typer(help="Move finished runs in and out of the store (CSV/Parquet).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(sweep_app, name="sweep")
    app.add_typer(results_app, name="results")


@sweep_app.command("run")
def run(
    spec: str = typer.Argument(..., help="spec TOML file, or a bundled name (demo, smoke, paper)"),
    store: str = typer.Option(DEFAULT_URL, help=STORE_HELP),
    workers: int = typer.Option(2, min=0, help="local worker processes (0: only enqueue)"),
    results_dir: Optional[str] = typer.Option(None, help="checkpoints/logs (default: next to a SQLite store, else results/)"),
    lease: float = typer.Option(_WORKER_DEFAULTS.lease_seconds, help=_LEASE_HELP),
    max_attempts: int = typer.Option(_WORKER_DEFAULTS.max_attempts, min=1, help=_MAX_ATTEMPTS_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and print the grid; touch no store"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable summary"),
    trainer: Optional[str] = typer.Option(None, hidden=True, help="module:function (tests)"),
) -> None:
    """Enqueue SPEC's trials (idempotent) and work them with N local processes.

    Exits 1 when trials of the sweep failed (with the command that lists them), 2 on bad
    input (the spec, a changed spec under a stored sweep's name, the options, the store)."""
    opts = WorkerOptions(lease_seconds=lease, max_attempts=max_attempts).validate()
    check_number("--workers", workers, 0, MAX_LOCAL_WORKERS, integer=True)
    if dry_run:
        _plan(spec, None, as_json)
        return
    from sweeps.connect import describe
    from sweeps.runner import run_sweep

    try:
        summary = run_sweep(spec, store, workers=workers, options=opts, trainer=trainer,
                            results_dir=results_dir, progress=not as_json and sys.stderr.isatty())
    except KeyboardInterrupt:  # the workers handed their trials back (sweeps/runner.py); as `scaling demo`
        typer.echo("interrupted: run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps(summary.__dict__))
    else:
        c = summary.counts
        typer.echo(f"sweep {summary.sweep}: {summary.enqueued} new trials; "
                   + ", ".join(f"{k} {v}" for k, v in c.items()) + f" (store {describe(store)})")
    failed = summary.counts.get("failed", 0)
    if workers > 0 and failed:
        where = "" if store == DEFAULT_URL else f" --store '{store}'"
        raise RuntimeFailure(f"sweep {summary.sweep}: {failed} of {summary.total} trials failed; "
                             f"`scaling sweep status{where} --sweep '{summary.sweep}'` lists them with their reasons "
                             "(`scaling sweep retry` re-queues them)")


@sweep_app.command("plan")
def plan(
    spec: str = typer.Argument(..., help="spec TOML file or bundled name"),
    unit: Optional[str] = typer.Option(None, help="compute unit (default: the spec's report_unit)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Validate SPEC and print its trials and their total compute (nothing is run)."""
    _plan(spec, unit, as_json)


@sweep_app.command("work")
def work_cmd(
    store: str = typer.Option(DEFAULT_URL, help=STORE_HELP),
    sweep_name: Optional[list[str]] = typer.Option(None, "--sweep", help="only these sweeps (repeatable)"),
    results_dir: Optional[str] = typer.Option(
        None, help="checkpoints and worker files (default: next to a SQLite store, else results/)"),
    lease: float = typer.Option(_WORKER_DEFAULTS.lease_seconds, help=_LEASE_HELP),
    max_attempts: int = typer.Option(_WORKER_DEFAULTS.max_attempts, min=1, help=_MAX_ATTEMPTS_HELP),
    poll: float = typer.Option(_WORKER_DEFAULTS.poll_seconds, help="idle wait (seconds) while other workers "
                               "still hold leases"),
    max_trials: Optional[int] = typer.Option(None, help="stop after this many trials"),
    name: Optional[str] = typer.Option(None, help="worker name in the store (default: host:pid:random)"),
    wait: bool = typer.Option(False, "--wait", help="keep polling when idle instead of exiting"),
    multihost: bool = typer.Option(False, "--multihost",
                                   help="this is one of several jax processes forming ONE worker"),
    trainer: Optional[str] = typer.Option(None, hidden=True, help="module:function (tests)"),
) -> None:
    """Join a sweep from this machine: claim and train trials until none are left.

    The store must exist (`scaling sweep run` makes it), and so must every --sweep
    named, unless --wait (a worker may start before its sweep is enqueued)."""
    import logging

    from sweeps.worker import work

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    opts = WorkerOptions(lease_seconds=lease, max_attempts=max_attempts, poll_seconds=poll,
                         exit_when_idle=not wait, sweeps=tuple(sweep_name) if sweep_name else None,
                         max_trials=max_trials).validate()
    try:
        n = work(store, trainer=trainer, options=opts, results_dir=results_dir, multihost=multihost, name=name,
                 known_sweeps_only=not wait)
    except KeyboardInterrupt:  # its trial was handed back (sweeps/worker.py)
        typer.echo("interrupted: the trial was handed back", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"worker: ran {n} trials")


def work_main(argv: list[str] | None = None) -> int:
    """`python -m sweeps.worker ARGS`: the `sweep work` command alone, same flags, same exit
    codes (what `scaling sweep run --workers N` starts N times, sweeps/runner.py)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(work_cmd)
    return console.run(app, argv, prog_name="python -m sweeps.worker")


@sweep_app.command("status")
def status(
    store: str = typer.Option(DEFAULT_URL, help=STORE_HELP),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="one sweep only"),
    as_json: bool = typer.Option(False, "--json"),
    watch_: bool = typer.Option(False, "--watch", help="progress bar until nothing is pending or running"),
) -> None:
    """Per-sweep trial counts by state, and the failures with their reasons."""
    from sweeps.runner import watch
    from sweeps.store import Store

    st = Store(store, create=False)
    if sweep_name is not None:
        st.check_sweeps([sweep_name])
    if watch_:
        watch(st, sweep_name, lambda: st.active([sweep_name] if sweep_name else None) == 0)
    counts = st.counts(sweep_name)
    failed = st.rows(sweep_name, where=_failed_or_diverged())
    report = {name: {"counts": c, "failures": [
        {"trial_id": r["trial_id"], "model": r["model"], "epochs": r["epochs"], "lr": r["lr"],
         "status": r["status"], "attempts": r["attempts"],
         "reason": (r["error"] or f"diverged at step {r['diverged_step']}").strip().splitlines()[0]}
        for r in failed if r["sweep"] == name]} for name, c in counts.items()}
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    if not report:
        typer.echo("no trials in the store")
    for name, rep in report.items():
        c = rep["counts"]
        typer.echo(f"{name}: {sum(c.values())} trials: " + ", ".join(f"{k} {v}" for k, v in c.items()))
        for f in rep["failures"]:
            typer.echo(f"  {f['status']:8s} {f['model']} epochs={f['epochs']} lr={f['lr']:g} "
                       f"(attempts {f['attempts']}): {f['reason']}")


@sweep_app.command("retry")
def retry_cmd(
    store: str = typer.Option(DEFAULT_URL, help=STORE_HELP),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="one sweep only (default: every sweep)"),
    status: Optional[list[str]] = typer.Option(
        None, "--status", help="failed (default) or diverged; repeat for both. Diverged only when named"),
    trial: Optional[list[str]] = typer.Option(None, "--trial", help="only trials whose id starts with this; repeatable"),
    results_dir: Optional[str] = typer.Option(
        None, help="where the workers keep checkpoints (as for `sweep run`/`sweep work`; default: next to "
                   "a SQLite store, else results/)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be re-queued; change nothing"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable summary"),
) -> None:
    """Re-queue failed trials: back to pending with their attempts reset; the next worker
    resumes each from its last checkpoint.

    For trials that failed for a passing reason (a node's OOM, a filesystem blip,
    pre-emptions that used up --max-attempts). Start workers afterwards (`sweep work`
    or `sweep run`). Diverged trials are a result, not an error: the same code and
    config diverge again at the same step, so re-queue them (--status diverged, never
    by default) only after changing the code, e.g. a fix; their stored result.json is
    moved aside so the trainer runs again. A new learning rate or recipe is a new
    trial: change the spec and `sweep run` it instead.
    """
    from sweeps.store import Store

    statuses = tuple(status) if status else ("failed",)
    st = Store(store, create=False, results_dir=results_dir)
    ids = st.retry(sweep_name, statuses, trial, dry_run=True)  # validates; changes nothing
    moved, missing = 0, 0
    if not dry_run and ids:
        for r in st.rows(sweep_name, where=_ids_with_status(ids, "diverged")):
            # before the re-queue commits: a worker must not find the old result
            found = _move_result_aside(st.trial_workdir(r["trial_id"], r["sweep"]))
            moved, missing = moved + found, missing + (not found)
        # Diverged trials: re-queue exactly the ones whose result.json was just moved
        # (a trial that diverged meanwhile must not come back with its result in place).
        ids = st.retry(sweep_name, statuses, ids if "diverged" in statuses else trial)
    short = [i[:12] for i in ids]
    if as_json:
        typer.echo(json.dumps({"requeued": 0 if dry_run else len(ids), "would_requeue": len(ids) if dry_run else 0,
                               "dry_run": dry_run, "statuses": list(statuses), "trial_ids": ids,
                               "diverged_results_moved": moved, "diverged_results_not_found": missing}))
        return
    shown = ", ".join(short[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    what = "/".join(statuses)
    if not ids:
        typer.echo(f"nothing to re-queue: no {what} trials" + (f" in sweep {sweep_name}" if sweep_name else ""))
    elif dry_run:
        typer.echo(f"would re-queue {len(ids)} {what} trials: {shown} (dry run: nothing changed)")
    else:
        typer.echo(f"re-queued {len(ids)} {what} trials: {shown}; start workers (`scaling sweep work`) to run them")
    if missing:
        typer.echo(f"warning: {missing} diverged trials have no result.json under {st.results_dir}/trials; if "
                   "their workers keep checkpoints elsewhere, pass that --results-dir (or move result.json "
                   "aside there), or the worker returns the stored diverged result", err=True)


@results_app.command("import")
def import_cmd(
    file: str = typer.Argument(..., help="CSV or Parquet, one run per row"),
    store: str = typer.Option(DEFAULT_URL, help=STORE_HELP),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="sweep name for rows without one"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Bring runs made elsewhere into the store (columns and units validated first)."""
    from sweeps.results_io import read_runs
    from sweeps.store import Store

    rows = read_runs(file, sweep=sweep_name)  # every row checked before the store is opened
    read, added = len(rows), Store(store).insert_results(rows)
    for note in getattr(rows, "notes", []):  # counts rounded to whole numbers (sweeps/rows.py)
        typer.echo(f"note: {note}", err=True)
    typer.echo(json.dumps({"read": read, "added": added}) if as_json
               else f"imported {added} new runs ({read - added} already in the store)")


@results_app.command("export")
def export_cmd(
    out: str = typer.Argument(..., help="output file (.csv or .parquet)"),
    store: str = typer.Option(DEFAULT_URL, help=STORE_HELP),
    fmt: Optional[str] = typer.Option(None, "--format", help="csv or parquet (default: from OUT)"),
    sweep_name: Optional[str] = typer.Option(None, "--sweep"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Write every trial (or one sweep's) with its results as CSV or Parquet. An existing
    OUT is left as it is unless --force."""
    from sweeps.results_io import check_output, export_file
    from sweeps.store import Store

    check_output(out, force=force)  # before the store is opened
    st = Store(store, create=False)
    if sweep_name is not None:
        st.check_sweeps([sweep_name])
    n = export_file(st, out, fmt=fmt, sweep=sweep_name, force=force)
    typer.echo(f"wrote {n} runs to {out}")


def _failed_or_diverged():
    from sweeps.schema import trials
    from sweeps.store import RETRYABLE

    return trials.c.status.in_(RETRYABLE)


def _ids_with_status(ids: list[str], status: str):
    from sweeps.schema import trials

    return trials.c.trial_id.in_(ids) & (trials.c.status == status)


def _move_result_aside(workdir) -> bool:
    """A finished run's result.json makes `run_training` return it unchanged; renamed
    (kept, with the checkpoints) the re-queued trial trains again from its last
    checkpoint. False if the workdir has none here."""
    from datetime import datetime, timezone

    result = workdir / "result.json"
    if not result.exists():
        return False
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result.rename(workdir / f"result.diverged-{stamp}.json")
    return True


def _plan(spec_path: str, unit: Optional[str], as_json: bool) -> None:
    """The expanded grid and its analytic compute, in the spec's report unit."""
    from sweeps.spec import expand, load_spec, total_train_flops

    spec = load_spec(spec_path)
    trials = expand(spec)
    if not spec.dataset_checked:  # planning a pod's sweep from a laptop: allowed, and said
        typer.echo(f"note: dataset {spec.dataset} is not on this machine, so it was not checked (its sizes are "
                   "the spec's); `scaling sweep run` checks it where it trains", err=True)
    unit = unit or spec.report_unit
    flops = total_train_flops(spec, trials)
    hours = None
    if flops is not None:
        from scaling.units import from_flops

        hours = from_flops(flops, unit)
    models = sorted({t.config["model"] for t in trials}, key=lambda m: next(
        t.params for t in trials if t.config["model"] == m))
    if as_json:
        typer.echo(json.dumps({"sweep": spec.name, "mode": spec.mode, "trials": len(trials),
                               "models": models, "epochs": sorted({t.config["epochs"] for t in trials}),
                               "lrs": list(spec.lrs), "seeds": list(spec.seeds), "train_flops": flops,
                               "unit": unit, "compute": hours}))
        return
    typer.echo(f"sweep {spec.name} ({spec.mode}): {len(trials)} trials on {spec.dataset}, batch "
               f"{spec.batch_size}, {spec.resolution}/{spec.eval_resolution} px, seeds {list(spec.seeds)}")
    typer.echo(f"{'model':>22} {'params':>12} {'epochs':>8} {'lrs':>4} {'train FLOPs':>12}")
    for m in models:
        rows = [t for t in trials if t.config["model"] == m]
        for e in sorted({t.config["epochs"] for t in rows}):
            er = [t for t in rows if t.config["epochs"] == e]
            f = (3 * er[0].flops_per_example * e * spec.train_examples) if spec.train_examples else math.nan
            typer.echo(f"{m:>22} {er[0].params:>12,} {e:>8g} {len(er):>4} {f:>12.3g}")
    if flops is not None:
        typer.echo(f"total: {flops:.3g} training FLOPs = {hours:,.4g} {unit} (grid before LR extension; "
                   "utilisation as in scaling.units)")
    else:
        typer.echo("total: unknown (set train_examples in the spec to get compute)")

