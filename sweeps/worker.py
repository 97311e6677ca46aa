"""A worker: claim a trial, train it under a heartbeat-renewed lease, record the result.

Pre-emption safety comes from the store's protocol plus the trainer's checkpoints:
a killed worker stops heartbeating, its lease expires, another worker claims the
trial again and `run_training` resumes from the checkpoint in the trial's workdir
(under the store's results dir); completion is conditional on still holding the
lease, so a trial is never completed twice (docs/sweeps.md).

The trainer is injectable: `trainer(config: dict, workdir: Path, *, on_metrics,
on_heartbeat)` returning the trainer's TrainResult (or a dict with the same fields).
The default wraps `scaling.train.run_training`, imported lazily so this module stays
importable without jax. Tests pass cheap deterministic trainers.

Multi-host: when jax runs as several processes (a TPU pod slice, a multi-node GPU
job), they are ONE worker: process 0 claims and broadcasts the trial, every process
trains it, only process 0 talks to the store.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scaling.errors import BadInput, RuntimeFailure
from sweeps.lr_extension import extend_sweep
from sweeps.store import Claim, Store

log = logging.getLogger("sweeps.worker")

Trainer = Callable[..., object]
MAX_STORE_RETRIES = 5  # consecutive failed claims before a worker gives up (backoff: poll x n)


class LeaseLost(RuntimeError):
    """Another worker re-claimed this trial (our heartbeats stopped for too long)."""


@dataclass(frozen=True)
class WorkerOptions:
    # The lease must outlast the longest gap between heartbeats; the heartbeat thread
    # renews every lease/4, so a worker must stall for 3/4 of a lease to lose it.
    lease_seconds: float = 60.0
    max_attempts: int = 3  # claims per trial before it is `failed` (errors or expired leases)
    poll_seconds: float = 2.0  # idle wait while other workers still hold leases
    exit_when_idle: bool = True  # stop once the sweeps have nothing pending or running
    sweeps: tuple[str, ...] | None = None  # only these sweeps (None: all)
    max_trials: int | None = None  # stop after this many trials (tests, draining)


def default_trainer(config: dict, workdir: Path, *, on_metrics=None, on_heartbeat=None):
    """The real trainer: one TrainConfig per trial, resumed from `workdir` if present."""
    from scaling.train import TrainConfig, run_training

    return run_training(TrainConfig.from_dict(config), Path(workdir),
                        on_metrics=on_metrics, on_heartbeat=on_heartbeat)


def load_trainer(path: str | None) -> Trainer:
    """"module:function" -> the callable (None: the real trainer)."""
    if not path:
        return default_trainer
    module, _, name = path.partition(":")
    if not name:
        raise BadInput(f"trainer: {path!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def result_dict(result) -> dict:
    if isinstance(result, dict):
        return dict(result)
    if dataclasses.is_dataclass(result):
        return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return dict(vars(result))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class _Lease:
    """Renews a claim's lease from a background thread (so a long XLA compile, which
    calls no callback, does not lose it) and writes metrics rows as they come."""

    def __init__(self, store: Store, claim: Claim, lease_seconds: float):
        self.store, self.claim, self.lease_seconds = store, claim, lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._metrics: list[dict] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease")
        self._thread.start()

    def add_metrics(self, row: dict) -> None:
        """Write a metrics row now (renewing the lease): the trainer may checkpoint right
        after, and a row still buffered when the worker is killed would never be sent
        again by the resumed run."""
        with self._lock:
            self._metrics.append(dict(row))
        self.flush()

    def flush(self) -> None:
        rows = self.drain()
        try:
            if not self.store.heartbeat(self.claim, lease_seconds=self.lease_seconds, metrics_rows=rows):
                self.lost.set()
        except Exception as err:  # noqa: BLE001 - a store blip: keep the rows, retry later
            log.warning("heartbeat failed (%s); retrying", err)
            with self._lock:
                self._metrics[:0] = rows

    def drain(self) -> list[dict]:
        with self._lock:
            rows, self._metrics = self._metrics, []
        return rows

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4) and not self.lost.is_set():
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(self, store: Store, *, trainer: Trainer | None = None, name: str | None = None,
                 options: WorkerOptions = WorkerOptions(), multihost=None):
        self.store = store
        self.trainer = trainer or default_trainer
        self.name = name or worker_name()
        self.options = options
        self.multihost = multihost  # a MultiHost (process 0 side) or None
        self.last_shape: str | None = None
        self.trials_run = 0

    def run(self) -> int:
        """Work until idle (or max_trials); returns the number of trials this worker ran."""
        opts = self.options
        store_errors = 0
        while opts.max_trials is None or self.trials_run < opts.max_trials:
            try:
                claim = self.store.claim(self.name, lease_seconds=opts.lease_seconds,
                                         max_attempts=opts.max_attempts, prefer_shape=self.last_shape,
                                         sweeps_only=opts.sweeps)
                store_errors = 0
            except RuntimeFailure as err:
                # A restarting server or a long-held SQLite lock: retry for a while.
                store_errors += 1
                if store_errors > MAX_STORE_RETRIES:
                    raise
                log.warning("%s: claim failed (%s); retry %d/%d", self.name, err, store_errors, MAX_STORE_RETRIES)
                time.sleep(opts.poll_seconds * store_errors)
                continue
            if claim is None:
                if self._extend_all():
                    continue
                if opts.exit_when_idle and self.store.active(opts.sweeps) == 0:
                    break
                time.sleep(opts.poll_seconds)  # others hold leases that may yet expire
                continue
            self.last_shape = claim.shape
            self.run_trial(claim)
            self.trials_run += 1
        if self.multihost is not None:
            self.multihost.send(None)
        return self.trials_run

    def _extend_all(self) -> int:
        names = self.options.sweeps or self.store.sweep_names()
        return sum(extend_sweep(self.store, s) for s in names)

    def run_trial(self, claim: Claim) -> str | None:
        """Train one claimed trial; returns the status written, or None if the lease was lost."""
        workdir = self.store.trial_workdir(claim)
        workdir.mkdir(parents=True, exist_ok=True)
        log.info("%s: trial %s attempt %d (%s)", self.name, claim.trial_id[:12], claim.attempt,
                 json.dumps(claim.config, sort_keys=True))
        lease = _Lease(self.store, claim, self.options.lease_seconds)

        def on_heartbeat(*_args, **_kw) -> None:
            # Multi-host: the other processes are inside collectives with us, so
            # process 0 finishes the trial; its completion is then refused.
            if lease.lost.is_set() and self.multihost is None:
                raise LeaseLost(f"trial {claim.trial_id[:12]}: lease lost to another worker")

        try:
            if self.multihost is not None:
                self.multihost.send({"config": claim.config, "workdir": str(workdir)})
            result = self.trainer(claim.config, workdir, on_metrics=lease.add_metrics,
                                  on_heartbeat=on_heartbeat)
        except LeaseLost as err:
            lease.stop()
            log.warning("%s", err)
            return None
        except (KeyboardInterrupt, SystemExit):
            # Stopped on purpose (Ctrl-C, SIGTERM): hand the trial back at once rather
            # than after its lease expires; the next claim resumes its checkpoint.
            lease.stop()
            self.store.release(claim)
            raise
        except Exception as err:  # noqa: BLE001 - any trainer failure is recorded, not fatal
            lease.stop()
            tb = traceback.format_exc(limit=-3)
            # Bad configs fail the same way every time: no point retrying them.
            attempts = claim.attempt if isinstance(err, BadInput) else self.options.max_attempts
            status = self.store.fail(claim, f"{type(err).__name__}: {err}\n{tb}", max_attempts=attempts)
            log.error("%s: trial %s raised %s -> %s", self.name, claim.trial_id[:12], err, status)
            return status
        lease.stop()
        res = result_dict(result)
        status = "diverged" if res.get("status") == "diverged" else "done"
        if not self.store.complete(claim, status, res, lease.drain()):
            log.warning("%s: trial %s finished but its lease was lost; result not recorded",
                        self.name, claim.trial_id[:12])
            return None
        extend_sweep(self.store, claim.sweep)
        return status


# ---------------------------------------------------------------- multi-host

class MultiHost:
    """Process 0's side of a multi-process worker: broadcast each trial to the others.

    Messages are JSON in a fixed-size byte buffer, broadcast with
    `jax.experimental.multihost_utils.broadcast_one_to_all` (every process must call
    it the same number of times, so the followers loop on `receive`).
    """

    SIZE = 1 << 16  # bytes per message; a trial config is ~1 KB

    def __init__(self):
        import jax

        self.jax = jax
        self.index = jax.process_index()
        self.count = jax.process_count()

    def _bcast(self, payload: bytes | None):
        import numpy as np
        from jax.experimental import multihost_utils

        buf = np.zeros(self.SIZE + 4, dtype=np.uint8)
        if payload is not None:
            if len(payload) > self.SIZE:
                raise ValueError("trial config too large to broadcast")
            buf[:4] = np.frombuffer(len(payload).to_bytes(4, "little"), dtype=np.uint8)
            buf[4:4 + len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
        n = int.from_bytes(out[:4].tobytes(), "little")
        return out[4:4 + n].tobytes()

    def send(self, message: dict | None) -> None:
        self._bcast(json.dumps(message).encode())

    def receive(self) -> dict | None:
        return json.loads(self._bcast(None).decode())


def follow(multihost: MultiHost, trainer: Trainer) -> int:
    """Processes 1..n-1: train whatever process 0 broadcasts, write nothing to the store."""
    n = 0
    while (msg := multihost.receive()) is not None:
        try:
            trainer(msg["config"], Path(msg["workdir"]), on_metrics=None, on_heartbeat=None)
        except Exception:  # noqa: BLE001 - process 0 records the failure
            log.exception("follower: trial failed")
        n += 1
    return n


def work(store_url: str, *, trainer: str | Trainer | None = None, options: WorkerOptions = WorkerOptions(),
         results_dir: str | None = None, multihost: bool = False, name: str | None = None) -> int:
    """Entry point of one worker process (`scaling sweep work`, `python -m sweeps.worker`)."""
    fn = trainer if callable(trainer) else load_trainer(trainer)
    if multihost:
        from scaling.train.distributed import init_distributed

        # JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or the cluster's own
        # environment (Cloud TPU, SLURM, ...) detected by jax.distributed.initialize().
        init_distributed(auto=True)
        mh = MultiHost()
        if mh.index != 0:
            return follow(mh, fn)
        store = Store(store_url, results_dir=results_dir)
        return Worker(store, trainer=fn, name=name, options=options, multihost=mh).run()
    store = Store(store_url, results_dir=results_dir)
    try:
        return Worker(store, trainer=fn, name=name, options=options).run()
    finally:
        store.dispose()


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run_trial, which releases the claim


def main(argv: list[str] | None = None) -> int:
    """`python -m sweeps.worker`: what `scaling sweep run --workers N` starts N times."""
    p = argparse.ArgumentParser(prog="python -m sweeps.worker")
    p.add_argument("--store", required=True)
    p.add_argument("--results-dir")
    p.add_argument("--sweep", action="append", help="only these sweeps (repeatable)")
    p.add_argument("--trainer", help="module:function (default: scaling.train.run_training)")
    p.add_argument("--lease", type=float, default=WorkerOptions.lease_seconds)
    p.add_argument("--max-attempts", type=int, default=WorkerOptions.max_attempts)
    p.add_argument("--poll", type=float, default=WorkerOptions.poll_seconds)
    p.add_argument("--max-trials", type=int)
    p.add_argument("--name")
    p.add_argument("--multihost", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not a.multihost:  # (jax.distributed handles SIGTERM itself as a pre-emption notice)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    opts = WorkerOptions(lease_seconds=a.lease, max_attempts=a.max_attempts, poll_seconds=a.poll,
                         sweeps=tuple(a.sweep) if a.sweep else None, max_trials=a.max_trials)
    try:
        work(a.store, trainer=a.trainer, options=opts, results_dir=a.results_dir,
             multihost=a.multihost, name=a.name)
    except (BadInput, RuntimeFailure) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, BadInput) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
