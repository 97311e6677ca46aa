"""Ctrl-C and SIGTERM: a stopped worker leaves no trial `running`, wherever the signal lands.

In-process tests deliver the signal to this process at chosen points (inside a store
call, inside the trainer, while idle); the real-process tests Ctrl-C `scaling sweep run`
the way a terminal does (SIGINT to its whole process group), then re-run it.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sweeps.spec import Trial
from sweeps.store import Store
from sweeps.worker import Worker, WorkerOptions

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


def trials(n: int, sweep: str = "stop") -> list[Trial]:
    return [Trial(sweep, dict(model="nfnet-d0.25-w0.03125", dataset="procedural", batch_size=8, resolution=16,
                              eval_resolution=16, epochs=1.0, lr=0.1 * (i + 1), seed=0)) for i in range(n)]


def interrupt(sig: int = signal.SIGINT) -> None:
    """What Ctrl-C does to this process; Python runs the handler right after this call."""
    os.kill(os.getpid(), sig)


def stepping_trainer(config, workdir, *, on_metrics=None, on_heartbeat=None, steps=4, before_step=None):
    """Resumable: a row per step, a heartbeat before each "checkpoint" (state.json)."""
    state = Path(workdir) / "state.json"
    step = json.loads(state.read_text())["step"] if state.exists() else 0
    while step < steps:
        step += 1
        if before_step:
            before_step(step)
        on_metrics({"step": step, "examples_seen": 8 * step, "train_loss": 1.0, "lr": config["lr"]})
        on_heartbeat()
        state.write_text(json.dumps({"step": step}))
    return {"status": "done", "heldout_loss": 1.0, "examples_seen": 8 * steps}


def patch(store: Store, name: str, before=None, after=None) -> None:
    real = getattr(store, name)

    def wrapper(*a, **k):
        if before:
            before()
        out = real(*a, **k)
        if after:
            after()
        return out
    setattr(store, name, wrapper)


def run_stopped(store: Store, trainer, *, raises=KeyboardInterrupt, **opts) -> None:
    options = WorkerOptions(lease_seconds=300, **opts)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    t = time.monotonic()
    with pytest.raises(raises):
        Worker(store, trainer=trainer, options=options).run()
    assert time.monotonic() - t < 20
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored


def in_claim_order(store: Store) -> list[dict]:
    """The fixture's two trials in the order a worker claims them (same created_at: by id)."""
    return sorted(store.rows("stop"), key=lambda r: r["trial_id"])


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'runs.db'}", results_dir=tmp_path)
    s.enqueue(trials(2))
    yield s
    s.dispose()


def assert_handed_back(row: dict) -> None:
    assert (row["status"], row["attempts"], row["worker"], row["lease_expires_at"]) == ("pending", 0, None, None)


def test_during_the_claim_the_trial_is_handed_back_untried(store):
    patch(store, "claim", after=interrupt)  # the claim's transaction committed, then Ctrl-C
    called = []
    run_stopped(store, lambda *a, **k: called.append(1))
    assert called == []
    for row in in_claim_order(store):
        assert_handed_back(row)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_inside_a_trainer_that_never_calls_back(store, sig):
    """The signal raises inside the trainer's own code at once (a trainer in a Python loop)."""
    def busy(config, workdir, **kw):
        (Path(workdir) / "state.json").write_text('{"step": 2}')  # its checkpoint
        interrupt(sig)
        time.sleep(60)  # not reached: the handler raises here
        raise AssertionError("the signal did not stop the trainer")

    run_stopped(store, busy, raises=KeyboardInterrupt if sig == signal.SIGINT else SystemExit)
    first, second = in_claim_order(store)
    assert_handed_back(first)
    assert (store.trial_workdir(first["trial_id"], "stop") / "state.json").exists()  # checkpoint kept
    assert_handed_back(second)  # never claimed


def test_inside_a_heartbeats_store_write_the_write_finishes_first(store):
    """Ctrl-C while on_heartbeat writes the rows: the transaction is not cut short; the
    trainer is stopped when on_heartbeat returns, and the trial handed back."""
    patch(store, "heartbeat", before=interrupt)
    steps_run = []
    run_stopped(store, lambda c, w, **k: stepping_trainer(c, w, before_step=steps_run.append, **k))
    first, _ = in_claim_order(store)
    assert steps_run == [1]
    assert_handed_back(first)
    assert [m["step"] for m in store.metrics_rows(first["trial_id"])] == [1]


def test_while_completing_the_result_is_written_then_the_worker_stops(store):
    patch(store, "complete", before=interrupt)
    run_stopped(store, stepping_trainer)
    first, second = in_claim_order(store)
    assert first["status"] == "done" and first["attempts"] == 1
    assert [m["step"] for m in store.metrics_rows(first["trial_id"])] == [1, 2, 3, 4]
    assert_handed_back(second)  # not started


def test_a_repeated_ctrl_c_does_not_cut_the_hand_back_short(store):
    """The terminal's Ctrl-C and the runner's forwarded one both reach a worker."""
    patch(store, "release", before=interrupt)
    run_stopped(store, lambda c, w, **k: stepping_trainer(c, w, before_step=lambda s: s == 3 and interrupt(), **k))
    first, second = in_claim_order(store)
    assert_handed_back(first)
    assert_handed_back(second)
    assert json.loads((store.trial_workdir(first["trial_id"], "stop") / "state.json").read_text()) == {"step": 2}


def test_while_idle_the_wait_for_other_workers_is_cut_short(store):
    """Nothing claimable (another worker holds both trials): Ctrl-C ends a 30 s poll at once."""
    for _ in range(2):
        store.claim("other", lease_seconds=300)
    threading.Timer(0.5, interrupt).start()
    t = time.monotonic()
    run_stopped(store, stepping_trainer, poll_seconds=30)
    assert time.monotonic() - t < 5
    assert {r["worker"] for r in store.rows("stop")} == {"other"}  # theirs, untouched


# ---------------------------------------------------------------- real processes

SLEEP_TRAINER = "test_runner_interrupt:sleeping_trainer"
STEP_SECONDS, STEPS = 0.1, 20  # 2 s per trial (TRIAL_STEPS overrides)


def sleeping_trainer(config, workdir, *, on_metrics=None, on_heartbeat=None):
    """Sleeps per step; checkpoints every step (after its heartbeat); logs where it started.
    IGNORE_SIGNALS=1 makes it deaf to SIGINT and SIGTERM (a worker stuck in a C call)."""
    if os.environ.get("IGNORE_SIGNALS"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    state = Path(workdir) / "state.json"
    step = json.loads(state.read_text())["step"] if state.exists() else 0
    with open(Path(workdir) / "starts.log", "a") as f:
        f.write(f"{step}\n")
    steps = int(os.environ.get("TRIAL_STEPS", STEPS))
    while step < steps:
        time.sleep(STEP_SECONDS)
        step += 1
        on_metrics({"step": step, "examples_seen": 8 * step, "train_loss": 1.0, "lr": config["lr"]})
        on_heartbeat()
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step}))
        tmp.replace(state)
    return {"status": "done", "heldout_loss": 1.0 + config["lr"], "examples_seen": 8 * steps}


SPEC = """
name = "intr"
dataset = "procedural:classes=10,train_size=64,heldout=40,res=16"
num_classes = 10
train_examples = 64
heldout_examples = 40
batch_size = 8
resolution = 16
seeds = [0]
[grid]
depth_mults = [0.25]
width_mults = [0.03125]
epochs = [0.5]
lr = [0.1, 0.2, 0.4]
[lr_extension]
enabled = false
"""


def sweep_run(tmp_path: Path, **env_extra) -> subprocess.Popen:
    (tmp_path / "intr.toml").write_text(SPEC)
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(env_extra)
    return subprocess.Popen([sys.executable, "-m", "study.cli", "sweep", "run", str(tmp_path / "intr.toml"),
                             "--store", f"sqlite:///{tmp_path / 'runs.db'}", "--workers", "2",
                             "--trainer", SLEEP_TRAINER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def db_rows(tmp_path: Path) -> list[dict]:
    try:
        with sqlite3.connect(tmp_path / "runs.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM trials WHERE sweep = 'intr'")]
    except sqlite3.Error:  # not created yet
        return []


def wait_for_two_running_trials(tmp_path: Path, proc: subprocess.Popen, min_step: int) -> list[dict]:
    """Both workers inside a trial with a checkpoint of at least `min_step`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        running = [r for r in db_rows(tmp_path) if r["status"] == "running"]
        states = [tmp_path / "trials" / "intr" / r["trial_id"][:16] / "state.json" for r in running]
        if len(running) == 2 and all(s.exists() and json.loads(s.read_text())["step"] >= min_step for s in states):
            return running
        time.sleep(0.1)
    raise AssertionError(f"workers never got going: {proc.poll()} {db_rows(tmp_path)}")


def test_ctrl_c_of_sweep_run_hands_back_then_a_rerun_resumes(tmp_path):
    proc = sweep_run(tmp_path)
    held = wait_for_two_running_trials(tmp_path, proc, min_step=3)
    t = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert time.monotonic() - t < 15  # a step is 0.1 s: the hand-back is quick
    assert "stopping: workers are handing their trials back (Ctrl-C again to force)" in err
    rows = {r["trial_id"]: r for r in db_rows(tmp_path)}
    assert not [r for r in rows.values() if r["status"] == "running"]
    resumed_from = {}
    for r in held:
        assert_handed_back(rows[r["trial_id"]])
        state = tmp_path / "trials" / "intr" / r["trial_id"][:16] / "state.json"
        resumed_from[r["trial_id"]] = json.loads(state.read_text())["step"]  # checkpoint kept
        assert resumed_from[r["trial_id"]] >= 3

    again = sweep_run(tmp_path)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-3000:]
    rows = db_rows(tmp_path)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    for tid, step in resumed_from.items():
        starts = (tmp_path / "trials" / "intr" / tid[:16] / "starts.log").read_text().split()
        assert starts == ["0", str(step)]  # the second run resumed from the kept checkpoint
    with sqlite3.connect(tmp_path / "runs.db") as db:
        for tid in resumed_from:
            steps = [s for (s,) in db.execute("SELECT step FROM metrics WHERE trial_id = ? ORDER BY step", (tid,))]
            assert steps == list(range(1, STEPS + 1))


def test_a_second_ctrl_c_forces_workers_that_do_not_stop(tmp_path):
    """Workers deaf to SIGINT and SIGTERM: the second Ctrl-C SIGTERMs them, SIGKILLs them
    after the grace period, and the runner exits 130 (their trials wait for lease expiry)."""
    from sweeps.runner import FORCE_GRACE_SECONDS

    proc = sweep_run(tmp_path, IGNORE_SIGNALS="1", TRIAL_STEPS="100000")
    held = wait_for_two_running_trials(tmp_path, proc, min_step=1)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None  # waiting for workers that do not stop
    t = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert FORCE_GRACE_SECONDS - 0.5 < time.monotonic() - t < FORCE_GRACE_SECONDS + 10
    for r in held:
        pid = int(r["worker"].split(":")[1])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone
    assert sum(r["status"] == "running" for r in db_rows(tmp_path)) == 2  # killed: lease expiry's case
