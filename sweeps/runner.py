"""`scaling sweep run`: validate a spec, enqueue its trials, run N local worker processes.

Workers are separate processes (`python -m sweeps.worker`), so one crashing or being
killed loses nothing but its current attempt; the runner only watches the store and
draws a progress bar. Workers on other machines join the same sweep with
`scaling sweep work --store postgresql://...` (docs/sweeps.md).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import RuntimeFailure
from sweeps.lr_extension import extend_sweep
from sweeps.spec import SweepSpec, expand, load_spec
from sweeps.store import Store
from sweeps.worker import WorkerOptions


@dataclass
class RunSummary:
    sweep: str
    enqueued: int  # new trials this call added (0 when re-running a spec)
    total: int
    counts: dict
    worker_exit_codes: list[int]


def spec_record(spec: SweepSpec) -> dict:
    """What workers need to know about a sweep beyond its trials (stored in `sweeps`)."""
    return {"mode": spec.mode, "lr_extension": spec.lr_extension.to_json(), "report_unit": spec.report_unit,
            "lrs": list(spec.lrs)}


def enqueue_spec(spec: SweepSpec, store: Store) -> int:
    """Idempotent: re-running a spec adds only what is missing (incl. due LR extensions)."""
    trials = expand(spec)
    store.record_sweep(spec.name, spec_record(spec))
    added = store.enqueue(trials)
    return added + extend_sweep(store, spec.name)


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


def run_sweep(spec_path: str, store_url: str, *, workers: int = 2, options: WorkerOptions = WorkerOptions(),
              trainer: str | None = None, results_dir: str | None = None, progress: bool = True) -> RunSummary:
    spec = load_spec(spec_path)  # BadInput before anything touches the store
    store = Store(store_url, results_dir=results_dir)
    added = enqueue_spec(spec, store)
    codes: list[int] = []
    if workers > 0:
        cmd = worker_command(store_url, sweep=spec.name, options=options, trainer=trainer,
                             results_dir=results_dir)
        log_dir = store.results_dir / "logs" / spec.name
        procs = start_workers(workers, cmd, log_dir)
        try:
            watch(store, spec.name, lambda: all(p.poll() is not None for p in procs), progress=progress)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            codes = [p.wait() for p in procs]
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
