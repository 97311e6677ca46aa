"""Workers on both backends with the fake trainer: concurrency, kills, divergence, LR extension."""
from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps.runner import enqueue_spec
from sweeps.spec import Trial, parse_spec
from sweeps.store import Store
from sweeps.worker import Worker, WorkerOptions
from test_sweep_fakes import FAKE, STEPS_PER_EPOCH, fake_trainer, synthetic_loss

TESTS = Path(__file__).resolve().parent


def tiny_trials(n: int, sweep: str = "load", epochs: float = 1.0) -> list[Trial]:
    return [Trial(sweep, dict(model="nfnet-d0.25-w0.03125", dataset="procedural", batch_size=8, resolution=16,
                              eval_resolution=16, epochs=epochs, lr=0.05 * (i + 1), seed=0))
            for i in range(n)]


def worker_env(**extra) -> dict:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_worker(url: str, results: Path, env: dict, *, lease: float, max_attempts: int = 3) -> subprocess.Popen:
    """A worker process logging to a file (a pipe nobody reads would fill and block it)."""
    (results / "logs").mkdir(parents=True, exist_ok=True)
    with open(results / "logs" / f"w{time.monotonic_ns()}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "sweeps.worker", "--store", url, "--results-dir",
                                 str(results), "--trainer", FAKE, "--lease", str(lease), "--poll", "0.2",
                                 "--max-attempts", str(max_attempts)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def logs_of(results: Path) -> str:
    return "\n".join(p.read_text()[-1000:] for p in (results / "logs").glob("*.log"))


@pytest.mark.slow  # 8 worker processes start (~1-2 s each on a loaded 2-core machine): ~10-20 s
def test_eight_concurrent_workers_do_every_trial_exactly_once(store_url, tmp_path):
    store = Store(store_url, results_dir=tmp_path / "results")
    todo = tiny_trials(48)
    assert store.enqueue(todo) == 48
    log = tmp_path / "completions.log"
    env = worker_env(FAKE_COMPLETIONS=log, FAKE_STEP_SECONDS=0.01)
    procs = [start_worker(store_url, tmp_path / "results", env, lease=60) for _ in range(8)]
    for p in procs:
        p.wait(timeout=240)
    assert [p.returncode for p in procs] == [0] * 8, logs_of(tmp_path / "results")
    rows = store.rows("load")
    assert len(rows) == 48 and {r["status"] for r in rows} == {"done"}
    assert {r["attempts"] for r in rows} == {1}  # nothing re-claimed, nothing lost
    trained = collections.Counter(line for line in log.read_text().splitlines())
    assert len(trained) == 48 and set(trained.values()) == {1}  # each trained to completion once
    assert len({r["worker"] for r in rows}) >= 2  # the work really was shared
    for r in rows:
        assert r["heldout_loss"] == pytest.approx(synthetic_loss(json.loads(r["config_json"])))
    store.dispose()


@pytest.mark.slow  # ~7 worker process starts plus 1 s lease expiries after each kill: ~15-20 s
def test_killed_workers_lose_nothing_and_results_match(store_url, tmp_path):
    """SIGKILL random workers repeatedly; restart them; every trial finishes with the
    uninterrupted result and its steps recorded once each (fake trainer; the real
    trainer's version is tests/test_sweep_chaos.py)."""
    store = Store(store_url, results_dir=tmp_path / "results")
    todo = tiny_trials(16, sweep="chaos", epochs=2.0)  # 8 steps each
    store.enqueue(todo)
    env = worker_env(FAKE_STEP_SECONDS=0.05)
    rng = random.Random(0)
    procs = [start_worker(store_url, tmp_path / "results", env, lease=1.0, max_attempts=50) for _ in range(3)]
    kills = 0
    deadline = time.time() + 120
    while kills < 4 and time.time() < deadline and store.active(["chaos"]):
        # Kill a worker that holds a trial, part-way through it.
        holders = {int(r["worker"].split(":")[1]) for r in store.rows("chaos") if r["status"] == "running"}
        live = [p for p in procs if p.poll() is None and p.pid in holders]
        if not live:
            time.sleep(0.05)
            continue
        time.sleep(rng.uniform(0.05, 0.3))
        victim = rng.choice(live)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        procs.append(start_worker(store_url, tmp_path / "results", env, lease=1.0, max_attempts=50))
    for p in procs:
        p.wait(timeout=180)
    assert kills >= 3, logs_of(tmp_path / "results")
    rows = store.rows("chaos")
    assert {r["status"] for r in rows} == {"done"}, [(r["status"], r["error"]) for r in rows]
    assert max(r["attempts"] for r in rows) > 1  # some trials really were interrupted and resumed
    for r in rows:
        cfg = json.loads(r["config_json"])
        assert r["heldout_loss"] == synthetic_loss(cfg)
        steps = [m["step"] for m in store.metrics_rows(r["trial_id"])]
        assert steps == list(range(1, int(cfg["epochs"] * STEPS_PER_EPOCH) + 1))
        assert r["examples_seen"] == cfg["epochs"] * STEPS_PER_EPOCH * cfg["batch_size"]
    store.dispose()


def spec_dict(**grid) -> dict:
    return {"name": "ext", "dataset": "procedural:classes=10", "num_classes": 10, "batch_size": 8, "resolution": 16,
            "grid": {"depth_mults": [0.25], "width_mults": [0.03125], **grid},
            "lr_extension": {"enabled": True, "max_steps": 2}}


def run_in_process(store: Store) -> int:
    return Worker(store, trainer=fake_trainer, options=WorkerOptions(lease_seconds=30, poll_seconds=0.05)).run()


def test_lr_extension_walks_to_the_optimum_within_its_bound(tmp_path):
    """Synthetic objective with best LR 1.6/epochs: the 1-epoch group's grid (0.1-0.4) is
    extended upwards to 0.8 and 1.6, then stops at the bound of 2 steps; the 8-epoch
    group's best (0.2) is interior, so nothing is added there."""
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    spec = parse_spec(spec_dict(epochs=[1, 8], lr={"centre": 0.2, "steps": 1}))
    assert enqueue_spec(spec, store) == 6
    run_in_process(store)
    rows = store.rows("ext")
    by_epochs = {e: sorted(r["lr"] for r in rows if r["epochs"] == e) for e in (1, 8)}
    assert by_epochs[1] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert by_epochs[8] == [0.1, 0.2, 0.4]
    reasons = {r["lr"]: r["reason"] for r in rows if r["epochs"] == 1}
    assert reasons[0.1] == "grid" and reasons[0.8].startswith("lr-extension: best lr 0.4 is the upper edge")
    assert reasons[1.6].startswith("lr-extension: best lr 0.8 is the upper edge")
    assert {r["status"] for r in rows} == {"done"}
    assert enqueue_spec(spec, store) == 0  # re-running the spec adds nothing


def test_diverging_trial_is_marked_and_the_sweep_goes_on(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    enqueue_spec(parse_spec(spec_dict(epochs=[1], lr=[25.0, 50.0, 100.0])), store)
    run_in_process(store)
    rows = {r["lr"]: r for r in store.rows("ext")}
    assert rows[100.0]["status"] == "diverged" and rows[100.0]["diverged_step"] == 1
    assert rows[100.0]["heldout_loss"] is None
    # the best finite LR (25) was the lower edge, so the sweep went on downwards
    assert sorted(rows) == [6.25, 12.5, 25.0, 50.0, 100.0]
    assert all(rows[lr]["status"] == "done" for lr in (6.25, 12.5, 25.0, 50.0))


def test_trainer_errors_are_retried_then_failed_with_the_reason(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.enqueue(tiny_trials(2, sweep="err"))
    calls = collections.Counter()

    def flaky(config, workdir, **kw):
        calls[config["lr"]] += 1
        if config["lr"] == 0.05:
            raise FloatingPointError("disk full (simulated)")
        return fake_trainer(config, workdir, **kw)

    Worker(store, trainer=flaky, options=WorkerOptions(lease_seconds=30, max_attempts=2)).run()
    rows = {r["lr"]: r for r in store.rows("err")}
    assert rows[0.05]["status"] == "failed" and "disk full (simulated)" in rows[0.05]["error"]
    assert calls[0.05] == 2 and rows[0.1]["status"] == "done"


@pytest.mark.slow  # 6 CLI processes and 2 workers: ~15-20 s on a loaded 2-core machine
def test_cli_run_status_export_import(tmp_path):
    """`scaling sweep run smoke --workers 2`, then status and a CSV round trip (fake trainer)."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = worker_env()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    out = cli("sweep", "run", "smoke", "--store", url, "--workers", "2", "--trainer", FAKE, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    # 2 grid trials, then 1 LR extension (the fake's best LR is above the grid; bound 1 step)
    assert summary["enqueued"] == 2 and summary["total"] == 3 and summary["counts"]["done"] == 3
    status = json.loads(cli("sweep", "status", "--store", url, "--json").stdout)
    assert status["smoke"]["counts"]["done"] == 3 and status["smoke"]["failures"] == []
    again = json.loads(cli("sweep", "run", "smoke", "--store", url, "--workers", "0", "--json").stdout)
    assert again["enqueued"] == 0
    assert cli("results", "export", str(tmp_path / "runs.csv"), "--store", url).returncode == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"
    imported = cli("results", "import", str(tmp_path / "runs.csv"), "--store", other, "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"read": summary["total"], "added": summary["total"]}
    assert json.loads(cli("results", "import", str(tmp_path / "runs.csv"), "--store", other, "--json").stdout)["added"] == 0


def test_a_stopped_worker_hands_its_trial_back_at_once(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.enqueue(tiny_trials(1, sweep="stop"))

    def interrupted(config, workdir, **kw):
        raise KeyboardInterrupt  # Ctrl-C (SIGTERM arrives as SystemExit the same way)

    with pytest.raises(KeyboardInterrupt):
        Worker(store, trainer=interrupted, options=WorkerOptions(lease_seconds=300)).run()
    (row,) = store.rows("stop")
    assert (row["status"], row["attempts"], row["worker"]) == ("pending", 0, None)
    assert store.claim("next", lease_seconds=30) is not None  # no 300 s wait for the lease


def test_sigterm_releases_the_claim(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = Store(url)
    store.enqueue(tiny_trials(1, sweep="term", epochs=50.0))  # 200 steps of 0.05 s: still running when stopped
    proc = start_worker(url, tmp_path / "results", worker_env(FAKE_STEP_SECONDS=0.05), lease=300)
    deadline = time.time() + 60
    while not any(r["status"] == "running" for r in store.rows("term")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.terminate()
    assert proc.wait(timeout=30) != 0
    (row,) = store.rows("term")
    assert (row["status"], row["attempts"]) == ("pending", 0), logs_of(tmp_path / "results")
    assert len(store.metrics_rows(row["trial_id"])) > 0  # its progress so far was kept


def test_a_store_outage_after_the_claim_is_retried_not_fatal(tmp_path, monkeypatch):
    """The outage retry covers the whole poll (claim, LR extension, the idle check), not
    only the claim: a blip in `active()` used to crash an idle worker."""
    from scaling.errors import RuntimeFailure

    store = Store(f"sqlite:///{tmp_path / 'runs.db'}", results_dir=tmp_path)
    store.enqueue(tiny_trials(2))
    real_active, calls = Store.active, []

    def flaky_active(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeFailure("store: connection lost (test)")
        return real_active(self, *args, **kwargs)

    monkeypatch.setattr(Store, "active", flaky_active)
    assert run_in_process(store) == 2
    assert len(calls) >= 2 and store.counts()["load"]["done"] == 2
    store.dispose()
