"""`scaling sweep retry` / `Store.retry`: failed (or, when named, diverged) trials go back
to the queue and resume from their checkpoints; nothing else is touched (both backends)."""
from __future__ import annotations

import hashlib
import json

import pytest

from study.cli import main
from sweeps.spec import Trial
from sweeps.store import Store
from sweeps.worker import Worker, WorkerOptions
from test_sweep_fakes import fake_trainer, synthetic_loss


def tiny(n: int, sweep: str = "s") -> list[Trial]:
    return [Trial(sweep, dict(model="nfnet-d0.25-w0.03125", dataset="procedural", batch_size=8, resolution=16,
                              eval_resolution=16, epochs=1.0, lr=0.1 * 2 ** i, seed=0)) for i in range(n)]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `scaling ARGS` in-process (as the console script does): (exit code, stdout, stderr)."""
    try:
        rc = main(list(args))
    except SystemExit as done:  # typer exits itself on success
        rc = done.code or 0
    out = capsys.readouterr()
    return rc, out.out, out.err


def crash_after_two_steps(config, workdir, *, on_metrics=None, on_heartbeat=None):
    """The fake trainer, killed by a filesystem blip after its step-2 checkpoint."""
    def metrics(row):
        if row["step"] == 3:
            raise OSError("filesystem blip")
        on_metrics(row)
    return fake_trainer(config, workdir, on_metrics=metrics, on_heartbeat=on_heartbeat)


@pytest.fixture
def store(store_url, tmp_path):
    s = Store(store_url, results_dir=tmp_path / "results")
    yield s
    s.dispose()


def by_id(store: Store) -> dict[str, dict]:
    return {r["trial_id"]: r for r in store.rows()}


def test_failed_trial_is_requeued_and_resumed_from_its_checkpoint(store, store_url, tmp_path, capsys):
    (trial,) = tiny(1)
    store.enqueue([trial])
    once = WorkerOptions(lease_seconds=30, max_attempts=1)
    assert Worker(store, trainer=crash_after_two_steps, options=once).run() == 1
    (row,) = store.rows()
    assert (row["status"], row["attempts"]) == ("failed", 1) and "filesystem blip" in row["error"]
    checkpoint = store.trial_workdir(trial.trial_id, "s") / "fake_state.json"
    assert json.loads(checkpoint.read_text()) == {"step": 2}

    rc, out, err = cli(capsys, "sweep", "retry", "--store", store_url, "--results-dir", str(tmp_path / "results"))
    assert (rc, err) == (0, "")
    assert out.startswith("re-queued 1 failed trials: " + trial.trial_id[:12])
    (row,) = store.rows()
    assert (row["status"], row["attempts"], row["worker"], row["lease_expires_at"]) == ("pending", 0, None, None)
    assert "filesystem blip" in row["error"]  # the last failure's reason stays readable
    assert json.loads(checkpoint.read_text()) == {"step": 2}  # the checkpoint is kept

    steps = []

    def recording(config, workdir, *, on_metrics=None, on_heartbeat=None):
        return fake_trainer(config, workdir, on_heartbeat=on_heartbeat,
                            on_metrics=lambda r: (steps.append(r["step"]), on_metrics(r)))
    assert Worker(store, trainer=recording, options=once).run() == 1  # one attempt suffices again
    assert steps == [3, 4]  # resumed after the step-2 checkpoint
    (row,) = store.rows()
    assert (row["status"], row["attempts"], row["error"]) == ("done", 1, None)
    assert row["heldout_loss"] == pytest.approx(synthetic_loss(trial.config))
    assert [m["step"] for m in store.metrics_rows(trial.trial_id)] == [1, 2, 3, 4]


def test_only_the_named_statuses_are_requeued(store, store_url, tmp_path, capsys):
    results = tmp_path / "results"
    failed, diverged, done, running, pending = tiny(5)
    (other_failed,) = tiny(1, sweep="other")
    for t in (failed, diverged, done, running, other_failed, pending):
        store.enqueue([t])
        if t is pending:
            break
        c = store.claim(f"w-{t.trial_id[:4]}", lease_seconds=300)  # the only pending trial
        assert c.trial_id == t.trial_id
        if t in (failed, other_failed):
            assert store.fail(c, "CUDA out of memory", max_attempts=1) == "failed"
        elif t is diverged:
            store.complete(c, "diverged", {"diverged_step": 3, "examples_seen": 24},
                           [{"step": s, "train_loss": 1.0} for s in (1, 2, 3)])
        elif t is done:
            store.complete(c, "done", {"heldout_loss": 1.5, "examples_seen": 32})
    workdir = store.trial_workdir(diverged.trial_id, "s")
    workdir.mkdir(parents=True)
    (workdir / "result.json").write_text('{"status": "diverged"}')
    (workdir / "fake_state.json").write_text('{"step": 2}')
    before = by_id(store)
    store_args = ("--store", store_url, "--results-dir", str(results))

    rc, out, _ = cli(capsys, "sweep", "retry", *store_args, "--dry-run")
    assert rc == 0 and out.startswith("would re-queue 2 failed trials") and "nothing changed" in out
    assert by_id(store) == before

    rc, out, _ = cli(capsys, "sweep", "retry", *store_args, "--sweep", "s", "--json")
    assert rc == 0 and json.loads(out)["trial_ids"] == [failed.trial_id]
    after = by_id(store)
    assert after[failed.trial_id]["status"] == "pending"
    assert {k: v for k, v in after.items() if k != failed.trial_id} == {
        k: v for k, v in before.items() if k != failed.trial_id}  # diverged, done, running, pending, other

    # a done trial named explicitly is refused, and nothing changes
    rc, _, err = cli(capsys, "sweep", "retry", *store_args, "--trial", done.trial_id[:10])
    assert rc == 2 and err.startswith("error: trial:") and "they are done" in err and err.count("\n") == 1
    assert by_id(store) == after

    rc, out, _ = cli(capsys, "sweep", "retry", *store_args, "--status", "diverged", "--trial", diverged.trial_id[:8])
    assert rc == 0 and out.startswith("re-queued 1 diverged trials")
    row = by_id(store)[diverged.trial_id]
    assert (row["status"], row["attempts"], row["diverged_step"], row["examples_seen"]) == ("pending", 0, None, None)
    assert row["error"].startswith("diverged at step 3")
    assert [m["step"] for m in store.metrics_rows(diverged.trial_id)] == [1, 2]  # the diverged step's row is gone
    assert not (workdir / "result.json").exists()  # else the trainer would hand back the old result
    assert len(list(workdir.glob("result.diverged-*.json"))) == 1
    assert (workdir / "fake_state.json").exists()
    assert by_id(store)[other_failed.trial_id] == before[other_failed.trial_id]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, field", [
    (["--sweep", "nope"], "sweep"),
    (["--status", "done"], "status"),
    (["--status", "bogus"], "status"),
    (["--trial", "ffffffffffff"], "trial"),
    (["--trial", ""], "trial"),
    (["--status", "failed", "--trial", "DONE"], "trial"),  # names a done trial
])
def test_bad_input_exits_2_and_leaves_the_store_bytes_alone(tmp_path, capsys, args, field):
    db = tmp_path / "runs.db"
    store = Store(f"sqlite:///{db}")
    failed, done = tiny(2)
    # One at a time: claims of trials enqueued together go in trial-id order.
    store.enqueue([failed])
    store.fail(store.claim("w", lease_seconds=30), "boom", max_attempts=1)
    store.enqueue([done])
    store.complete(store.claim("w", lease_seconds=30), "done", {"heldout_loss": 1.0})
    store.dispose()
    args = [done.trial_id[:8] if a == "DONE" else a for a in args]
    digest = sha(db)
    for extra in ([], ["--dry-run"]):
        rc, out, err = cli(capsys, "sweep", "retry", "--store", f"sqlite:///{db}", *args, *extra)
        assert (rc, out) == (2, "") and err.startswith(f"error: {field}:") and err.count("\n") == 1, err
        assert sha(db) == digest
    rc, out, _ = cli(capsys, "sweep", "retry", "--store", f"sqlite:///{db}", "--dry-run")
    assert rc == 0 and out.startswith("would re-queue 1 failed trials") and sha(db) == digest


def test_a_missing_store_is_bad_input_and_not_created(tmp_path, capsys):
    db = tmp_path / "missing.db"
    rc, _, err = cli(capsys, "sweep", "retry", "--store", f"sqlite:///{db}")
    assert rc == 2 and err.startswith("error: store:") and not db.exists()


def test_nothing_to_retry_is_not_an_error(store, capsys):
    store.enqueue(tiny(2))
    assert store.retry() == [] and store.retry(statuses=["failed", "diverged"]) == []
    assert {r["status"] for r in store.rows()} == {"pending"}
