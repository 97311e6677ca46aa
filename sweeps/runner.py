"""`scaling sweep run`: validate a spec, enqueue its trials, run N local worker processes.

Workers are separate processes (`python -m sweeps.worker`, which is `scaling sweep
work`), so one crashing or being killed loses nothing but its current attempt; the
runner only watches the store and draws a progress bar. Workers on other machines join
the same sweep with `scaling sweep work --store postgresql://...` (docs/sweeps.md).

Ctrl-C: the first one asks the workers to hand their trials back (SIGINT forwarded to
each) and waits for them to exit; a second one forces (SIGTERM, then SIGKILL after
FORCE_GRACE_SECONDS). Either way `run_sweep` then raises KeyboardInterrupt (exit 130).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import BadInput, RuntimeFailure
from scaling.train.config import identity_of
from scaling.train.workdir import ensure_dir
from sweeps.options import WorkerOptions
from sweeps.spec import SweepSpec, expand, load_spec
from sweeps.store import Store

# After a forced stop (second Ctrl-C, or the runner failing): SIGTERM, then SIGKILL for
# workers still alive this much later (one stuck in a long XLA call ignores SIGTERM
# until it returns to Python). A killed worker's trial comes back when its lease expires.
FORCE_GRACE_SECONDS = 5.0
STOPPING = "stopping: workers are handing their trials back (Ctrl-C again to force)"


@dataclass
class RunSummary:
    sweep: str
    enqueued: int  # new trials this call added (0 when re-running a spec)
    total: int
    counts: dict
    worker_exit_codes: list[int]


# A sweep's record in the store (`sweeps` table): what workers need beyond its trials
# (the LR-extension policy and the original LR grid), and what its cells ARE. A spec run
# again under the same name must keep all of it except the cells, which it may only add
# to (more models, epoch or IsoFLOP budgets, seeds); anything else would mix old and new
# trials under one name and one policy, so it is refused (`check_same_sweep`). Changes of
# operational recipe fields (checkpoint cadence, logging) are not part of the record.
RECORD_FIXED = {"mode": "grid", "dataset": "dataset", "num_classes": "num_classes",
                "train_examples": "train_examples", "batch_size": "batch_size", "resolution": "resolution",
                "eval_resolution": "eval_resolution", "recipe": "recipe", "budget_unit": "isoflop.unit",
                "lrs": "lr", "lr_extension": "lr_extension", "finetune": "finetune"}
RECORD_GROWS = {"models": "models", "epochs": "grid.epochs", "budgets": "isoflop.budgets", "seeds": "seeds"}


def spec_record(spec: SweepSpec, trials: list | None = None) -> dict:
    """What the store keeps about a sweep beyond its trials (the `sweeps` table)."""
    trials = expand(spec) if trials is None else trials
    record = {"mode": spec.mode, "lr_extension": spec.lr_extension.to_json(), "report_unit": spec.report_unit,
              "lrs": list(spec.lrs), "dataset": spec.dataset, "num_classes": spec.num_classes,
              "train_examples": spec.train_examples, "batch_size": spec.batch_size,
              "resolution": spec.resolution, "eval_resolution": spec.eval_resolution,
              "recipe": identity_of(spec.recipe), "budget_unit": spec.budget_unit if spec.budgets else None,
              "models": sorted({t.config["model"] for t in trials}), "epochs": list(spec.epochs),
              "budgets": list(spec.budgets), "seeds": list(spec.seeds),
              "finetune": spec.finetune.to_json() if spec.finetune else None}
    return json.loads(json.dumps(record))  # as it reads back from the store


def _spec_key(key: str, mode: str) -> str:
    label = RECORD_FIXED.get(key) or RECORD_GROWS[key]
    return f"{mode}.{label}" if label in ("lr", "models") else label


def _refusal(name: str, key: str, what: str) -> BadInput:
    return BadInput(f"{key}: sweep {name!r} is in the store with {what}; its stored and new trials would mix "
                    f"under one name and policy: give this spec a new name (e.g. name = \"{name}-v2\") or keep "
                    "the stored value (nothing was changed)")


def check_same_sweep(name: str, stored: dict | None, new: dict) -> None:
    """Refuse (BadInput) a spec that would change a stored sweep (see RECORD_FIXED).
    A record written by an older program has fewer keys: those it has are compared."""
    if stored is None:
        return
    mode = stored.get("mode", new["mode"])
    for key in RECORD_FIXED:
        if key in stored and stored[key] != new[key]:
            raise _refusal(name, _spec_key(key, mode), f"{key} {_shown(stored[key])}; this spec has {_shown(new[key])}")
    for key in RECORD_GROWS:
        dropped = [v for v in stored.get(key, []) if v not in new[key]]
        if dropped:
            raise _refusal(name, _spec_key(key, mode), f"{key} {_shown(stored[key])}; this spec drops "
                           f"{_shown(dropped)} (a spec may add {key}, not remove them)")


def _shown(v) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else repr(v)


def check_cells(spec: SweepSpec, store: Store, trials: list) -> None:
    """The identity of the stored cells: a trial of this spec at a stored (model, epochs,
    lr, seed) must be the stored trial. Catches what an older sweep record does not say
    (it kept only the LR policy), e.g. a changed recipe or dataset."""
    stored = {}
    for r in store.rows(spec.name):
        # Fine-tunes are keyed by their parents, not by these cells (sweeps/finetune.py).
        if r["reason"] != "imported" and r["epochs"] is not None and r.get("stage") != "finetune":
            stored[(r["model"], float(r["epochs"]), float(r["lr"]), r["seed"])] = r
    for t in trials:
        c = t.config
        old = stored.get((c["model"], float(c["epochs"]), float(c["lr"]), int(c.get("seed", 0))))
        if old is None or old["identity"] == t.trial_id:
            continue
        mine, theirs = identity_of(c), identity_of(json.loads(old["config_json"]))
        fields = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)) or ["recipe"]
        key = fields[0] if fields[0] in RECORD_FIXED.values() else f"recipe.{fields[0]}"
        raise _refusal(spec.name, key, f"trial {old['trial_id'][:12]} ({c['model']}, epochs {c['epochs']:g}, lr "
                       f"{c['lr']:g}) computed with other {', '.join(fields)} ({_shown(theirs.get(fields[0]))}; "
                       f"this spec has {_shown(mine.get(fields[0]))})")


def enqueue_spec(spec: SweepSpec, store: Store, trials: list | None = None) -> int:
    """Idempotent: re-running a spec adds only what is missing (incl. due LR extensions).
    `trials`: `expand(spec)` when the caller has it already. A spec that would change a
    stored sweep of the same name is refused before anything is written."""
    trials = expand(spec) if trials is None else trials
    record = spec_record(spec, trials)
    check_same_sweep(spec.name, store.sweep_spec(spec.name), record)  # the record's own words first
    check_cells(spec, store, trials)
    if spec.finetune is not None:  # parents that exist, have finished and fit: before any write
        from sweeps.finetune import check_compatible, stored_parent

        ft = spec.finetune
        parents = [stored_parent(store, p)["config"] for p in ft.parents] if isinstance(ft.parents, tuple) \
            else [t.config for t in trials]
        check_compatible(parents, ft)
    store.record_sweep(spec.name, record, check=lambda stored: check_same_sweep(spec.name, stored, record))
    added = store.enqueue(trials)
    from sweeps.finetune import grow

    return added + grow(store, spec.name)


def worker_command(store_url: str, *, sweep: str | None, options: WorkerOptions, trainer: str | None,
                   results_dir: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "sweeps.worker", "--store", store_url,
           "--lease", str(options.lease_seconds), "--max-attempts", str(options.max_attempts),
           "--poll", str(options.poll_seconds)]
    if sweep:
        cmd += ["--sweep", sweep]
    if trainer:
        cmd += ["--trainer", trainer]
    if results_dir:
        cmd += ["--results-dir", str(results_dir)]
    return cmd


def start_workers(n: int, cmd: list[str], log_dir: Path, *, env: dict | None = None) -> list[subprocess.Popen]:
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        log = open(log_dir / f"worker-{i}.log", "ab")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy()))
        log.close()  # the child keeps its own descriptor
    return procs


class _CtrlC:
    """The runner's SIGINT handler while its workers run (see the module docstring).

    The handler itself only counts and forwards (a terminal's Ctrl-C has reached the
    workers already when they share its process group; they ignore the repeat); the
    status line is printed by the watch loop, not from inside a signal handler."""

    def __init__(self, procs: list[subprocess.Popen]):
        self.procs, self.count, self.announced, self._old = procs, 0, False, None

    def _handle(self, _signum, _frame) -> None:
        self.count += 1
        if self.count == 1:
            _signal_live(self.procs, signal.SIGINT)
        elif self.count == 2:
            raise KeyboardInterrupt  # force: run_sweep's cleanup terminates, then kills
        # later ones: the forced stop is already under way

    def announce(self) -> None:
        if self.count and not self.announced:
            self.announced = True
            from tqdm import tqdm

            tqdm.write(STOPPING, file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _signal_live(procs: list[subprocess.Popen], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:  # exited meanwhile
                pass


def stop_workers(procs: list[subprocess.Popen], grace: float = FORCE_GRACE_SECONDS) -> None:
    """SIGTERM the live workers, SIGKILL those still alive after `grace` seconds."""
    _signal_live(procs, signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def run_sweep(spec_path: str, store_url: str, *, workers: int = 2, options: WorkerOptions = WorkerOptions(),
              trainer: str | None = None, results_dir: str | None = None, progress: bool = True) -> RunSummary:
    """Enqueue, then work the sweep with `workers` local processes until it is finished.

    Raises KeyboardInterrupt after Ctrl-C once the workers have exited (the first Ctrl-C
    waits for them to hand their trials back), RuntimeFailure if a worker failed."""
    spec = load_spec(spec_path, require_data=True)  # BadInput before anything touches the store
    trials = expand(spec)  # ... including a bad recipe value, found at expansion
    if results_dir is not None:
        ensure_dir(results_dir, "--results-dir")  # a file in its place, read-only: before the store
    store = Store(store_url, results_dir=results_dir)
    added = enqueue_spec(spec, store, trials)
    codes: list[int] = []
    if workers > 0:
        cmd = worker_command(store_url, sweep=spec.name, options=options, trainer=trainer,
                             results_dir=results_dir)
        log_dir = store.results_dir / "logs" / spec.name
        procs = start_workers(workers, cmd, log_dir)
        with _CtrlC(procs) as ctrl_c:
            def finished() -> bool:
                ctrl_c.announce()
                return all(p.poll() is not None for p in procs)

            try:
                watch(store, spec.name, finished, progress=progress)
            finally:
                if any(p.poll() is None for p in procs):  # the second Ctrl-C, or the runner failed
                    stop_workers(procs)
                codes = [p.wait() for p in procs]
        if ctrl_c.count:
            raise KeyboardInterrupt
        if any(codes):
            raise RuntimeFailure(f"workers: {sum(1 for c in codes if c)} of {workers} exited with an error; "
                                 f"see {log_dir}/worker-*.log")
    counts = store.counts(spec.name).get(spec.name, {})
    return RunSummary(spec.name, added, sum(counts.values()), counts, codes)


def watch(store: Store, sweep: str | None, finished, *, progress: bool = True, interval: float = 1.0) -> dict:
    """Poll the store until `finished()`; a tqdm bar of finished/total trials meanwhile."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="trial", disable=not progress, desc=sweep or "all sweeps", file=sys.stderr)
    try:
        while True:
            counts = store.counts(sweep)
            total = sum(sum(c.values()) for c in counts.values())
            done = sum(c["done"] + c["failed"] + c["diverged"] for c in counts.values())
            running = sum(c["running"] for c in counts.values())
            bar.total = total  # grows when LR extension adds trials
            bar.n = done
            bar.set_postfix(running=running, refresh=False)
            bar.refresh()
            if finished():
                return counts
            time.sleep(interval)
    finally:
        bar.close()
