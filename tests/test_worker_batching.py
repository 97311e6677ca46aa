"""The worker's metrics rows: buffered, written with the lease renewals, durable at checkpoints.

Contract with the trainer (scaling/train/loop.py): it calls on_heartbeat right before
each checkpoint save, and the worker's on_heartbeat returns only once every row
emitted so far is committed. Rows after the last checkpoint may be lost by a SIGKILL;
the resumed run emits them again and the store ignores repeated steps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sweeps.spec import Trial
from sweeps.store import Store
from sweeps.worker import Worker, WorkerOptions, _Lease

TESTS = Path(__file__).resolve().parent
TRAINER = "test_worker_batching:checkpointing_trainer"
STEPS_PER_EPOCH = 100  # of checkpointing_trainer


def trial(sweep: str, epochs: float = 10.0) -> Trial:
    return Trial(sweep, dict(model="nfnet-d0.25-w0.03125", dataset="procedural", batch_size=8, resolution=16,
                             eval_resolution=16, epochs=epochs, lr=0.1, seed=0))


def spy(store: Store, name: str) -> list:
    """Record the calls of one Store method (one call = one store transaction)."""
    calls, real = [], getattr(store, name)

    def wrapper(*a, **k):
        calls.append((a, k))
        return real(*a, **k)
    setattr(store, name, wrapper)
    return calls


def checkpointing_trainer(config: dict, workdir: Path, *, on_metrics=None, on_heartbeat=None) -> dict:
    """A stand-in for run_training: one row per step; every CKPT_EVERY steps it heartbeats
    and then writes its "checkpoint" atomically; resumes from it. CKPT_STEP_SECONDS
    sleeps per step (the SIGKILL test needs it to be alive for a while)."""
    every = int(os.environ.get("CKPT_EVERY", "100"))
    delay = float(os.environ.get("CKPT_STEP_SECONDS", "0"))
    state = Path(workdir) / "ckpt.json"
    steps = round(config["epochs"] * STEPS_PER_EPOCH)
    step = json.loads(state.read_text())["step"] if state.exists() else 0
    while step < steps:
        step += 1
        if delay:
            time.sleep(delay)
        on_metrics({"step": step, "examples_seen": 8 * step, "train_loss": 1.0 / step, "lr": config["lr"],
                    "wall_time": float(step)})
        if step % every == 0 and step < steps:  # (the last step is recorded by completion)
            on_heartbeat()
            tmp = state.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": step}))
            tmp.replace(state)
    return {"status": "done", "heldout_loss": 1.0, "examples_seen": 8 * steps}


def test_a_thousand_rows_cost_one_transaction_per_checkpoint_and_are_stored_once(store_url, tmp_path):
    store = Store(store_url, results_dir=tmp_path)
    store.enqueue([trial("batch")])  # 1000 steps
    beats, completes = spy(store, "heartbeat"), spy(store, "complete")
    in_store_at_checkpoint = []

    def trainer(config, workdir, *, on_metrics, on_heartbeat):
        def beat_then_look():
            on_heartbeat()
            tid = store.rows("batch")[0]["trial_id"]
            in_store_at_checkpoint.append(len(store.metrics_rows(tid)))
        return checkpointing_trainer(config, workdir, on_metrics=on_metrics, on_heartbeat=beat_then_look)

    Worker(store, trainer=trainer, options=WorkerOptions(lease_seconds=600)).run()
    (row,) = store.rows("batch")
    assert row["status"] == "done"
    # every row emitted before a checkpoint was committed when on_heartbeat returned
    assert in_store_at_checkpoint == list(range(100, 1000, 100))
    assert len(beats) == 9  # one per checkpoint (the lease, 600 s, never needed renewing)
    assert len(completes) == 1 and len(completes[0][0][3]) == 100  # the rest with the result
    assert [m["step"] for m in store.metrics_rows(row["trial_id"])] == list(range(1, 1001))


def test_a_heartbeat_writes_only_rows_or_a_due_renewal(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.enqueue([trial("beat")])
    claim = store.claim("w", lease_seconds=40)
    beats = spy(store, "heartbeat")
    lease = _Lease(store, claim, lease_seconds=40)  # renewal due every 10 s
    try:
        for _ in range(50):
            lease.beat()
        assert beats == []  # nothing to write, lease fresh: no transaction
        lease.add_metrics({"step": 1})
        lease.beat()
        lease.beat()
        assert len(beats) == 1 and beats[0][1]["metrics_rows"] == [{"step": 1}]
        lease._last_write -= 10.5  # as if 10.5 s had passed
        lease.beat()
        assert len(beats) == 2 and beats[1][1]["metrics_rows"] == []  # the renewal
    finally:
        lease.stop()
    assert [m["step"] for m in store.metrics_rows(claim.trial_id)] == [1]


def test_the_lease_thread_renews_a_silent_trainer(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.enqueue([trial("quiet")])
    claim = store.claim("w", lease_seconds=0.4)
    beats = spy(store, "heartbeat")
    lease = _Lease(store, claim, lease_seconds=0.4)
    lease.add_metrics({"step": 1})
    time.sleep(1.0)  # a compile: no callback at all; renewal due every 0.1 s
    lease.stop()
    assert 3 <= len(beats) <= 12 and not lease.lost.is_set()
    assert [m["step"] for m in store.metrics_rows(claim.trial_id)] == [1]


def test_a_heartbeat_waits_for_the_threads_write_in_flight(tmp_path):
    """The lease thread took the buffered rows and is writing them when the trainer's
    pre-checkpoint heartbeat comes: that heartbeat must not return before they are
    committed (else a kill right after the checkpoint could lose them)."""
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.enqueue([trial("race")])
    claim = store.claim("w", lease_seconds=1.0)
    real, in_flight = store.heartbeat, threading.Event()

    def slow_from_thread(*a, **k):
        if threading.current_thread().name == "lease" and k.get("metrics_rows"):
            in_flight.set()
            time.sleep(0.5)  # rows drained, not yet committed
        return real(*a, **k)
    store.heartbeat = slow_from_thread
    lease = _Lease(store, claim, lease_seconds=1.0)  # the thread writes after 0.25 s
    lease.add_metrics({"step": 1})
    assert in_flight.wait(10)
    lease.beat()
    assert [m["step"] for m in store.metrics_rows(claim.trial_id)] == [1]
    lease.stop()


def test_a_store_blip_keeps_the_rows_and_the_thread_does_not_spin(tmp_path):
    from scaling.errors import RuntimeFailure

    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.enqueue([trial("blip")])
    claim = store.claim("w", lease_seconds=0.4)
    real, calls, down = store.heartbeat, [], threading.Event()
    down.set()

    def flaky(*a, **k):
        calls.append(1)
        if down.is_set():
            raise RuntimeFailure("store: cannot reach it (simulated)")
        return real(*a, **k)
    store.heartbeat = flaky
    lease = _Lease(store, claim, lease_seconds=0.4)  # due every 0.1 s; retries every 0.1 s when down
    lease.add_metrics({"step": 1})
    lease.beat()  # fails: the row stays buffered
    time.sleep(0.5)
    assert len(calls) <= 8  # ~1 + 0.5 s / 0.1 s, not a spin
    down.clear()
    lease.beat()
    lease.stop()
    assert [m["step"] for m in store.metrics_rows(claim.trial_id)] == [1]


def test_sigkill_loses_no_row_of_a_checkpointed_step(tmp_path):
    """Real worker processes, killed (SIGKILL) at random points: every row up to the last
    checkpoint on disk is in the store; the resumed run completes every step once."""
    import random

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = Store(url, results_dir=tmp_path)
    store.enqueue([trial("kill", epochs=20.0)])  # 2000 steps of 1 ms, checkpoints every 7
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(CKPT_EVERY="7", CKPT_STEP_SECONDS="0.001")
    rng = random.Random(0)
    workdir = None
    for kill in range(2):
        with open(tmp_path / f"worker{kill}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "sweeps.worker", "--store", url, "--results-dir",
                                     str(tmp_path), "--trainer", TRAINER, "--lease", "0.5", "--poll", "0.1",
                                     "--max-attempts", "10"], env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            rows = store.rows("kill")
            workdir = store.trial_workdir(rows[0]["trial_id"], "kill")
            if rows[0]["attempts"] == kill + 1 and (workdir / "ckpt.json").exists() and \
                    json.loads((workdir / "ckpt.json").read_text())["step"] > 100 * (kill + 1):
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, (tmp_path / f"worker{kill}.log").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = json.loads((workdir / "ckpt.json").read_text())["step"]
        steps = {m["step"] for m in store.metrics_rows(store.rows("kill")[0]["trial_id"])}
        assert set(range(1, ckpt + 1)) <= steps, f"rows lost before the checkpoint at step {ckpt}"
        assert ckpt < 2000
    time.sleep(0.6)  # the killed worker's lease expires
    Worker(store, trainer=checkpointing_trainer, options=WorkerOptions(lease_seconds=30, max_attempts=10)).run()
    (row,) = store.rows("kill")
    assert row["status"] == "done" and row["attempts"] == 3
    assert [m["step"] for m in store.metrics_rows(row["trial_id"])] == list(range(1, 2001))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
