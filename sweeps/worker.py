"""A worker: claim a trial, train it under a heartbeat-renewed lease, record the result.

Pre-emption safety comes from the store's protocol plus the trainer's checkpoints:
a killed worker stops heartbeating, its lease expires, another worker claims the
trial again and `run_training` resumes from the checkpoint in the trial's workdir
(under the store's results dir); completion is conditional on still holding the
lease, so a trial is never completed twice (docs/sweeps.md). Metrics rows are buffered
and written with the lease renewals, at the latest when the trainer heartbeats right
before a checkpoint (`_Lease`). Ctrl-C or SIGTERM hands the trial back (`pending`, the
attempt not counted) wherever it lands (`_StopSignals`).

The trainer is injectable: `trainer(config: dict, workdir: Path, *, on_metrics,
on_heartbeat)` returning the trainer's TrainResult (or a dict with the same fields).
The default wraps `scaling.train.run_training`, imported lazily so this module stays
importable without jax. Tests pass cheap deterministic trainers.

Multi-host: when jax runs as several processes (a TPU pod slice, a multi-node GPU
job), they are ONE worker: process 0 claims and broadcasts the trial, every process
trains it, only process 0 talks to the store.
"""
from __future__ import annotations

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
from pathlib import Path
from typing import Callable

from scaling.errors import BadInput, RuntimeFailure
from sweeps.finetune import grow
from sweeps.options import WorkerOptions  # re-exported: it lives in a module light enough for the CLI
from sweeps.store import Claim, Store

log = logging.getLogger("sweeps.worker")

Trainer = Callable[..., object]
MAX_STORE_RETRIES = 5  # consecutive failed claims before a worker gives up (backoff: poll x n)


class LeaseLost(RuntimeError):
    """Another worker re-claimed this trial (our heartbeats stopped for too long)."""


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
    """A claim's lease and its not-yet-written metrics rows.

    `add_metrics` only buffers. One write (one transaction: renew the lease, insert the
    buffered rows) happens
    - in `beat()`, which the worker's on_heartbeat calls, when rows are waiting or the
      renewal is due. The trainer calls on_heartbeat right BEFORE each checkpoint save
      (and about every HEARTBEAT_SECONDS/2 otherwise, scaling/train/loop.py), and
      `beat()` returns only once the rows are committed: every row of a checkpointed
      step is in the store before the checkpoint exists, and the rows after the last
      checkpoint are re-emitted by a resumed run (the store ignores a repeated step).
      No further rate limit here: the worker cannot tell a checkpoint's call from a
      periodic one, and the trainer already spaces its periodic calls;
    - from a background thread once the renewal is due (every lease/4), so a long XLA
      compile, which calls nothing, does not lose the lease;
    - at the end (`stop(final_write=True)`), or in `complete`'s own transaction.
    """

    def __init__(self, store: Store, claim: Claim, lease_seconds: float):
        self.store, self.claim, self.lease_seconds = store, claim, lease_seconds
        self.renew_every = lease_seconds / 4  # a worker must stall for 3/4 of a lease to lose it
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._rows_lock = threading.Lock()
        # One write at a time: a beat() that finds the buffer just drained by the thread
        # waits for that write to commit before it returns (and the trainer checkpoints).
        self._write_lock = threading.Lock()
        self._metrics: list[dict] = []
        self._last_write = time.monotonic()  # the claim itself set the lease
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease")
        self._thread.start()

    def add_metrics(self, row: dict) -> None:
        with self._rows_lock:
            self._metrics.append(dict(row))

    def beat(self) -> None:
        self._write(rows_only=False)

    def _write(self, *, rows_only: bool) -> bool:
        """Write the buffered rows, renewing the lease; with none, renew only when due.
        False if the store could not be reached (the rows stay buffered)."""
        with self._write_lock:
            with self._rows_lock:
                due = time.monotonic() - self._last_write >= self.renew_every
                if not self._metrics and (rows_only or not due):
                    return True
                rows, self._metrics = self._metrics, []
            try:
                held = self.store.heartbeat(self.claim, lease_seconds=self.lease_seconds, metrics_rows=rows)
            except Exception as err:  # noqa: BLE001 - a store blip: keep the rows, retry later
                log.warning("heartbeat failed (%s); retrying", err)
                with self._rows_lock:
                    self._metrics[:0] = rows
                return False
            self._last_write = time.monotonic()
            if not held:
                self.lost.set()
            return True

    def drain(self) -> list[dict]:
        with self._rows_lock:
            rows, self._metrics = self._metrics, []
        return rows

    def _run(self) -> None:
        pause = 0.0  # after a failed write: retry a down store every few seconds, not in a spin
        while not self.lost.is_set():
            wait = max(self._last_write + self.renew_every - time.monotonic(), pause, 0.01)
            if self._stop.wait(wait):
                return
            pause = 0.0 if self._write(rows_only=False) else min(self.renew_every, 5.0)

    def stop(self, *, final_write: bool = False) -> None:
        """Stop renewing; `final_write`: first write the rows still buffered (a failed or
        handed-back attempt keeps its learning curve so far)."""
        self._stop.set()
        self._thread.join()
        if final_write and not self.lost.is_set():
            self._write(rows_only=True)


class _StopSignals:
    """How a worker stops on Ctrl-C (SIGINT) or SIGTERM without leaving a trial `running`.

    The first signal only records the request, except while the trainer's own code runs
    (`in_trainer`), where it raises at once (KeyboardInterrupt; SystemExit for SIGTERM)
    so a trainer that never calls back still stops. The worker acts on the request at
    its safe points: at the end of each on_heartbeat (the trainer unwinds), after a
    claim (handed back at once), between trials, and after completing (the result is
    written first). So a signal landing inside a store transaction cannot cut it short.
    Repeats are ignored: a terminal's Ctrl-C reaches every process of the group and the
    runner forwards it too. A SIGTERM after a request forces the exit (the runner's
    second Ctrl-C); the lease then expires as after a kill.
    """

    def __init__(self):
        self.signum: int | None = None
        self.in_trainer = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def raise_(self):
        if self.signum == signal.SIGTERM:
            raise SystemExit(128 + signal.SIGTERM)
        raise KeyboardInterrupt

    def _handle(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self.in_trainer:
                self.in_trainer = False
                self.raise_()
        elif signum == signal.SIGTERM:
            raise SystemExit(128 + signum)

    def install(self, *, sigterm: bool) -> Callable[[], None]:
        """Handle the signals (main thread only: elsewhere Python cannot); returns the undo."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        sigs = (signal.SIGINT, signal.SIGTERM) if sigterm else (signal.SIGINT,)
        old = {s: signal.signal(s, self._handle) for s in sigs}

        def undo() -> None:
            for s, h in old.items():
                signal.signal(s, h)
        return undo


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
        self.stop = _StopSignals()

    def run(self) -> int:
        """Work until idle (or max_trials); returns the number of trials this worker ran.

        On Ctrl-C/SIGTERM it hands its trial back and raises KeyboardInterrupt (SystemExit
        for SIGTERM) once nothing is held. (Multi-host: jax.distributed handles SIGTERM.)"""
        undo = self.stop.install(sigterm=self.multihost is None)
        try:
            self._loop()
        finally:
            undo()
        if self.multihost is not None:
            self.multihost.send(None)
        return self.trials_run

    def _loop(self) -> None:
        opts, stop = self.options, self.stop
        store_errors = 0
        while opts.max_trials is None or self.trials_run < opts.max_trials:
            if stop.requested:
                stop.raise_()
            try:  # every store call of one poll, so an outage anywhere in it is retried
                claim = self.store.claim(self.name, lease_seconds=opts.lease_seconds,
                                         max_attempts=opts.max_attempts, prefer_shape=self.last_shape,
                                         sweeps_only=opts.sweeps)
                idle = claim is None and not self._extend_all()
                finished = idle and opts.exit_when_idle and self.store.active(opts.sweeps) == 0
                store_errors = 0
            except RuntimeFailure as err:
                # A restarting server or a long-held SQLite lock: retry for a while.
                store_errors += 1
                if store_errors > MAX_STORE_RETRIES:
                    raise
                log.warning("%s: store call failed (%s); retry %d/%d", self.name, err, store_errors,
                            MAX_STORE_RETRIES)
                self._sleep(opts.poll_seconds * store_errors)
                continue
            if finished:
                break
            if claim is None:
                if idle:
                    self._sleep(opts.poll_seconds)  # others hold leases that may yet expire
                continue  # (not idle: LR extension just enqueued trials; claim them)
            if stop.requested:  # the signal came during the claim: hand it back untried
                self.store.release(claim)
                stop.raise_()
            self.last_shape = claim.shape
            self.run_trial(claim)
            self.trials_run += 1
        if stop.requested:
            stop.raise_()

    def _sleep(self, seconds: float) -> None:
        """An idle wait that a stop request cuts short (signals do not wake time.sleep)."""
        end = time.monotonic() + seconds
        while not self.stop.requested and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def _extend_all(self) -> int:
        names = self.options.sweeps or self.store.sweep_names()
        return sum(grow(self.store, s) for s in names)

    def run_trial(self, claim: Claim) -> str | None:
        """Train one claimed trial; returns the status written, or None if the lease was lost.

        Raises KeyboardInterrupt/SystemExit after handing the trial back when stopped."""
        workdir = self.store.trial_workdir(claim)
        workdir.mkdir(parents=True, exist_ok=True)
        pid = claim.config.get("parent_trial_id")
        if pid is not None and claim.config.get("parent_workdir") is None:
            # A fine-tune: where its parent's files are is this store's business (operational).
            claim = dataclasses.replace(claim, config=dict(claim.config,
                                                           parent_workdir=str(self.store.parent_workdir(pid))))
        log.info("%s: trial %s attempt %d (%s)", self.name, claim.trial_id[:12], claim.attempt,
                 json.dumps(claim.config, sort_keys=True))
        lease = _Lease(self.store, claim, self.options.lease_seconds)
        stop = self.stop

        def on_heartbeat(*_args, **_kw) -> None:
            stop.in_trainer = False  # our own store write is not cut short by a signal...
            try:
                lease.beat()
            finally:
                stop.in_trainer = True
            # Multi-host: the other processes are inside collectives with us, so
            # process 0 finishes the trial; its completion is then refused.
            if lease.lost.is_set() and self.multihost is None:
                raise LeaseLost(f"trial {claim.trial_id[:12]}: lease lost to another worker")
            if stop.requested:  # ...it stops the trainer here instead
                stop.in_trainer = False
                stop.raise_()

        try:
            try:
                stop.in_trainer = True  # from here a signal raises inside the trainer
                if stop.requested:
                    stop.raise_()
                if self.multihost is not None:
                    self.multihost.send({"config": claim.config, "workdir": str(workdir)})
                result = self.trainer(claim.config, workdir, on_metrics=lease.add_metrics,
                                      on_heartbeat=on_heartbeat)
            finally:
                stop.in_trainer = False
        except LeaseLost as err:
            lease.stop()
            log.warning("%s", err)
            return None
        except (KeyboardInterrupt, SystemExit):
            # Stopped on purpose (Ctrl-C, SIGTERM): hand the trial back at once rather
            # than after its lease expires; the next claim resumes its checkpoint.
            self._hand_back(claim, lease)
            raise
        except Exception as err:  # noqa: BLE001 - any trainer failure is recorded, not fatal
            if stop.requested:
                # e.g. the trainer's data-loader processes got the terminal's Ctrl-C too:
                # a consequence of the stop, not a failure of the trial.
                log.warning("%s: trainer raised %s after a stop request", self.name, err)
                self._hand_back(claim, lease)
                stop.raise_()
            lease.stop(final_write=True)
            tb = traceback.format_exc(limit=-3)
            # Bad configs fail the same way every time: no point retrying them.
            attempts = claim.attempt if isinstance(err, BadInput) else self.options.max_attempts
            status = self.store.fail(claim, f"{type(err).__name__}: {err}\n{tb}", max_attempts=attempts)
            log.error("%s: trial %s raised %s -> %s", self.name, claim.trial_id[:12], err, status)
            return status
        lease.stop()
        res = result_dict(result)
        status = "diverged" if res.get("status") == "diverged" else "done"
        # The remaining rows go in the result's transaction.
        if not self.store.complete(claim, status, res, lease.drain()):
            log.warning("%s: trial %s finished but its lease was lost; result not recorded",
                        self.name, claim.trial_id[:12])
            return None
        grow(self.store, claim.sweep)  # LR extensions, and fine-tunes of settled cells
        return status

    def _hand_back(self, claim: Claim, lease: _Lease) -> None:
        lease.stop(final_write=True)
        if self.store.release(claim):
            log.info("%s: stopped; trial %s handed back", self.name, claim.trial_id[:12])


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
         results_dir: str | None = None, multihost: bool = False, name: str | None = None,
         known_sweeps_only: bool = False) -> int:
    """Entry point of one worker process (`scaling sweep work`, `python -m sweeps.worker`).

    The store must exist (a misspelt path is refused, not created empty); with
    `known_sweeps_only`, so must each of `options.sweeps`."""
    fn = trainer if callable(trainer) else load_trainer(trainer)

    def open_store() -> Store:
        if results_dir is not None:
            from scaling.train.workdir import ensure_dir

            ensure_dir(results_dir, "--results-dir")
        store = Store(store_url, results_dir=results_dir, create=False)
        if known_sweeps_only and options.sweeps:
            store.check_sweeps(options.sweeps)
        return store
    if multihost:
        from scaling.train.distributed import init_distributed

        # JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or the cluster's own
        # environment (Cloud TPU, SLURM, ...) detected by jax.distributed.initialize().
        init_distributed(auto=True)
        mh = MultiHost()
        if mh.index != 0:
            return follow(mh, fn)
        store = open_store()
        return Worker(store, trainer=fn, name=name, options=options, multihost=mh).run()
    store = open_store()
    try:
        return Worker(store, trainer=fn, name=name, options=options).run()
    finally:
        store.dispose()


if __name__ == "__main__":
    # `python -m sweeps.worker ARGS` (what `scaling sweep run --workers N` starts N times)
    # is `scaling sweep work ARGS`: one command, one set of flags (sweeps/cli.py).
    from sweeps.cli import work_main

    sys.exit(work_main())
