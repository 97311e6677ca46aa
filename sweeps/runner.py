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

import os
import signal
import subprocess
import threading
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import RuntimeFailure
from sweeps.lr_extension import extend_sweep
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


def spec_record(spec: SweepSpec) -> dict:
    """What workers need to know about a sweep beyond its trials (stored in `sweeps`)."""
    return {"mode": spec.mode, "lr_extension": spec.lr_extension.to_json(), "report_unit": spec.report_unit,
            "lrs": list(spec.lrs)}


def enqueue_spec(spec: SweepSpec, store: Store, trials: list | None = None) -> int:
    """Idempotent: re-running a spec adds only what is missing (incl. due LR extensions).
    `trials`: `expand(spec)` when the caller has it already."""
    trials = expand(spec) if trials is None else trials
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
