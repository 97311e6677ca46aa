"""The results store on SQLite and PostgreSQL (same tests, `store_url` fixture)."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from scaling.errors import BadInput, RuntimeFailure
from sweeps.schema import SCHEMA_VERSION, schema_info
from sweeps.spec import Trial
from sweeps.store import Store


def trials(n: int, sweep: str = "s", **extra) -> list[Trial]:
    return [Trial(sweep, dict(model="nfnet-d0.25-w0.03125", dataset="procedural", batch_size=8, resolution=16,
                              eval_resolution=16, epochs=1.0, lr=0.1 * 2 ** i, seed=0, **extra))
            for i in range(n)]


@pytest.fixture
def store(store_url, tmp_path):
    s = Store(store_url, results_dir=tmp_path / "results")
    yield s
    s.dispose()


def test_enqueue_is_idempotent(store):
    assert store.enqueue(trials(5)) == 5
    assert store.enqueue(trials(5)) == 0
    assert store.enqueue(trials(7)) == 2  # only the new ones
    assert store.counts() == {"s": {"pending": 7, "running": 0, "done": 0, "failed": 0, "diverged": 0}}


def test_trial_ids_hash_the_canonical_config():
    a = Trial("s", {"lr": 0.1, "epochs": 1.0})
    b = Trial("s", {"epochs": 1.0, "lr": 0.1})
    assert a.trial_id == b.trial_id and len(a.trial_id) == 64
    assert a.trial_id != Trial("s", {"lr": 0.2, "epochs": 1.0}).trial_id
    assert a.trial_id != Trial("other", {"lr": 0.1, "epochs": 1.0}).trial_id


def test_expired_lease_is_reclaimed_and_the_old_holder_cannot_complete(store):
    store.enqueue(trials(1))
    first = store.claim("w1", lease_seconds=0.3)
    assert store.claim("w2", lease_seconds=30) is None  # held
    time.sleep(0.5)
    second = store.claim("w2", lease_seconds=30)
    assert second.trial_id == first.trial_id and second.attempt == 2
    assert not store.heartbeat(first, lease_seconds=30)  # w1 lost it
    assert not store.complete(first, "done", {"heldout_loss": 9.0})
    assert store.complete(second, "done", {"heldout_loss": 1.0})
    assert not store.complete(second, "done", {"heldout_loss": 2.0})  # never twice
    (row,) = store.rows()
    assert (row["status"], row["heldout_loss"], row["attempts"]) == ("done", 1.0, 2)


def test_heartbeat_keeps_the_lease(store):
    store.enqueue(trials(1))
    c = store.claim("w1", lease_seconds=0.6)
    for _ in range(4):
        time.sleep(0.25)
        assert store.heartbeat(c, lease_seconds=0.6)
    assert store.claim("w2", lease_seconds=1) is None


def test_failures_retry_then_fail_with_the_error_kept(store):
    store.enqueue(trials(1))
    for attempt in (1, 2):
        c = store.claim("w", lease_seconds=30, max_attempts=3)
        assert c.attempt == attempt
        assert store.fail(c, f"boom {attempt}", max_attempts=3) == "pending"
    c = store.claim("w", lease_seconds=30, max_attempts=3)
    assert store.fail(c, "boom 3", max_attempts=3) == "failed"
    assert store.claim("w", lease_seconds=30, max_attempts=3) is None
    (row,) = store.rows()
    assert row["status"] == "failed" and row["error"] == "boom 3" and row["attempts"] == 3


def test_lease_expiring_on_the_last_attempt_fails_the_trial(store):
    store.enqueue(trials(1))
    store.claim("w1", lease_seconds=0.1, max_attempts=1)
    time.sleep(0.3)
    assert store.claim("w2", lease_seconds=30, max_attempts=1) is None
    (row,) = store.rows()
    assert row["status"] == "failed" and "lease expired" in row["error"] and "w1" in row["error"]


def test_claim_prefers_the_shape_compiled_last(store):
    store.enqueue(trials(3) + [Trial("s", dict(t.config, resolution=32)) for t in trials(3)])
    first = store.claim("w", lease_seconds=30)
    shapes = [first.shape]
    for _ in range(5):
        c = store.claim("w", lease_seconds=30, prefer_shape=shapes[-1])
        shapes.append(c.shape)
    # one switch of shape in six trials: each shape compiled once
    assert sum(a != b for a, b in zip(shapes, shapes[1:])) == 1


def test_metrics_are_appended_once_per_step(store):
    store.enqueue(trials(1))
    c = store.claim("w", lease_seconds=30)
    rows = [{"step": s, "examples_seen": 8 * s, "train_loss": 1.0 / s} for s in (1, 2, 3)]
    assert store.heartbeat(c, lease_seconds=30, metrics_rows=rows[:2])
    assert store.complete(c, "done", {"heldout_loss": 1.0}, rows)  # steps 1-2 again (a resumed run)
    assert [m["step"] for m in store.metrics_rows(c.trial_id)] == [1, 2, 3]


def test_diverged_result_is_stored_without_nan(store):
    store.enqueue(trials(1))
    c = store.claim("w", lease_seconds=30)
    assert store.complete(c, "diverged", {"heldout_loss": float("nan"), "diverged_step": 7})
    (row,) = store.rows()
    assert row["status"] == "diverged" and row["heldout_loss"] is None and row["diverged_step"] == 7


def test_newer_schema_is_refused_and_nothing_changes(store, store_url, tmp_path):
    store.enqueue(trials(2))
    with store.engine.begin() as conn:
        conn.execute(schema_info.update().values(version=SCHEMA_VERSION + 1))
    store.dispose()
    before = _snapshot(store_url)
    with pytest.raises(BadInput, match=r"schema version \d+.*upgrade"):  # a refusal: exit 2
        Store(store_url, results_dir=tmp_path)
    assert _snapshot(store_url) == before


def _snapshot(url: str):
    """File bytes for SQLite; every row of every table for PostgreSQL."""
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "sqlite":
        from pathlib import Path

        return Path(u.database).read_bytes()
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        out = {t: conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1").all()
               for t in ("schema_info", "trials", "metrics", "sweeps")}
    eng.dispose()
    return out


def test_corrupt_sqlite_file_is_refused_untouched(tmp_path):
    db = tmp_path / "runs.db"
    db.write_bytes(b"this is not a database, but it is someone's data\n" * 100)
    before = db.read_bytes()
    with pytest.raises(BadInput, match="is not a SQLite database"):
        Store(f"sqlite:///{db}")
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]  # no journal left behind


def test_unreachable_postgres_is_a_clear_error():
    with pytest.raises(RuntimeFailure, match="cannot reach postgresql.*127.0.0.1:1/"):
        Store("postgresql://nobody@127.0.0.1:1/none")


def test_bad_urls_are_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not a database URL"):
        Store("not a url")
    with pytest.raises(BadInput, match="not supported"):
        Store("mysql://x@localhost/db")
    with pytest.raises(BadInput, match="does not exist"):
        Store(f"sqlite:///{tmp_path / 'missing.db'}", create=False)


def test_a_store_of_another_program_is_refused(tmp_path):
    db = tmp_path / "other.db"
    eng = sa.create_engine(f"sqlite:///{db}")
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE trials (x INTEGER)")
    eng.dispose()
    before = db.read_bytes()
    with pytest.raises(BadInput, match="not made by this program"):
        Store(f"sqlite:///{db}")
    assert db.read_bytes() == before


def _v1_metadata() -> sa.MetaData:
    """The version-1 schema as first committed (frozen here to test the migration)."""
    md = sa.MetaData()
    sa.Table("trials", md,
             sa.Column("trial_id", sa.String(64), primary_key=True),
             sa.Column("sweep", sa.String(200), nullable=False, index=True),
             sa.Column("config_json", sa.Text, nullable=False),
             sa.Column("model", sa.String(100), nullable=False),
             *[sa.Column(c, sa.Float, nullable=False) for c in ("depth_mult", "width_mult")],
             sa.Column("params", sa.BigInteger), sa.Column("flops_per_example", sa.Float),
             sa.Column("epochs", sa.Float, nullable=False), sa.Column("lr", sa.Float, nullable=False),
             *[sa.Column(c, sa.Integer, nullable=False) for c in ("batch_size", "resolution", "eval_resolution")],
             sa.Column("dataset", sa.String(200), nullable=False), sa.Column("seed", sa.Integer, nullable=False),
             sa.Column("reason", sa.String(200), nullable=False, server_default="grid"),
             sa.Column("status", sa.String(16), nullable=False, server_default="pending", index=True),
             sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
             sa.Column("worker", sa.String(200)), sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
             sa.Column("lease_expires_at", sa.DateTime(timezone=True)), sa.Column("error", sa.Text),
             sa.Column("diverged_step", sa.BigInteger),
             *[sa.Column(c, sa.Float) for c in ("heldout_loss", "heldout_accuracy", "train_flops",
                                                  "device_seconds")],
             sa.Column("hardware", sa.String(100)), sa.Column("num_devices", sa.Integer),
             sa.Column("examples_seen", sa.BigInteger), sa.Column("compile_seconds", sa.Float),
             sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
             sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False))
    sa.Table("metrics", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("trial_id", sa.String(64), sa.ForeignKey("trials.trial_id"), nullable=False, index=True),
             sa.Column("step", sa.BigInteger, nullable=False),
             sa.Column("examples_seen", sa.BigInteger, nullable=False),
             *[sa.Column(c, sa.Float) for c in ("train_loss", "heldout_loss", "heldout_accuracy", "lr",
                                                  "wall_time")],
             sa.UniqueConstraint("trial_id", "step", name="uq_metrics_trial_step"))
    sa.Table("schema_info", md, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("version", sa.Integer, nullable=False))
    return md


def test_version_1_store_is_migrated_forward_keeping_its_rows(store_url, tmp_path):
    import datetime as dt
    import json

    md = _v1_metadata()
    eng = sa.create_engine(store_url)
    now = dt.datetime.now(dt.timezone.utc)
    cfg = dict(model="F0", dataset="procedural", batch_size=8, resolution=16, eval_resolution=16,
               epochs=1.0, lr=0.4, seed=0)
    with eng.begin() as conn:
        md.create_all(conn)
        conn.execute(md.tables["schema_info"].insert().values(id=1, version=1))
        conn.execute(md.tables["trials"].insert().values(
            trial_id="a" * 64, sweep="old", config_json=json.dumps(cfg), model="F0", depth_mult=1.0,
            width_mult=1.0, epochs=1.0, lr=0.4, batch_size=8, resolution=16, eval_resolution=16,
            dataset="procedural", seed=0, status="done", heldout_loss=2.5, created_at=now, updated_at=now))
        conn.execute(md.tables["metrics"].insert().values(trial_id="a" * 64, step=1, examples_seen=8))
    eng.dispose()
    store = Store(store_url, results_dir=tmp_path)
    assert store.schema_version() == SCHEMA_VERSION
    (row,) = store.rows()
    assert row["heldout_loss"] == 2.5 and row["shape"] == Trial("old", cfg).shape
    assert len(store.metrics_rows("a" * 64)) == 1
    # version 2 behaviour works on the migrated store: nullable epochs (imports), sweeps table
    store.record_sweep("old", {"lr_extension": {"enabled": False, "max_steps": 0, "min_lr": 0, "max_lr": None}})
    assert store.sweep_spec("old")["lr_extension"]["enabled"] is False
    store.dispose()


@pytest.mark.postgres
def test_postgres_lost_mid_session_is_a_clear_error(pg_url, pg_server_url, tmp_path):
    store = Store(pg_url, results_dir=tmp_path)
    store.enqueue(trials(1))
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # the server drops our database and connections
        conn.exec_driver_sql(f'DROP DATABASE "{sa.engine.make_url(pg_url).database}" WITH (FORCE)')
    admin.dispose()
    with pytest.raises(RuntimeFailure, match=r"^store: cannot reach postgresql.*check the server is up"):
        store.claim("w", lease_seconds=30)
