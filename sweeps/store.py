"""The results store: trials as a queue with leases, metrics, results (SQLite or PostgreSQL).

One schema (`sweeps/schema.py`) for both backends, versioned in `schema_info` with
forward migrations. The queue protocol (docs/sweeps.md):
- enqueue is idempotent: trial ids hash the canonical config, existing ids are skipped;
- claim is ONE transaction (SQLite `BEGIN IMMEDIATE`, PostgreSQL `FOR UPDATE SKIP
  LOCKED`) that takes a pending trial, or a running one whose lease expired, bumps
  `attempts` and sets a lease; (worker, attempts) is the lease token;
- heartbeats renew the lease and flush metrics, completion and failure only apply while
  the token still matches, so a trial is never completed twice.
No jax here: analysis and the CLI import this module.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite

from scaling.errors import BadInput, closest, redact
from sweeps import ids, record, schema
from sweeps.connect import check_schema, describe, make_engine, translate  # noqa: F401 - the one way a store is opened
from sweeps.options import DEFAULT_URL  # noqa: F401 - the one default store URL, re-exported
from sweeps.schema import SCHEMA_VERSION, metadata, metrics, schema_info, sweeps, trials

TERMINAL = ("done", "failed", "diverged")
RETRYABLE = ("failed", "diverged")  # what `Store.retry` puts back in the queue
# Result fields a worker may write on completion (the rest of the row is the queue's).
RESULT_FIELDS = record.RESULT_FIELDS


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _as_utc(t: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written as UTC."""
    if t is None or t.tzinfo is not None:
        return t
    return t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Claim:
    """A trial held by a worker; (worker, attempt) is the lease token."""

    trial_id: str
    sweep: str
    config: dict
    attempt: int
    worker: str
    shape: str | None
    reason: str


# ---------------------------------------------------------------- engine

def safe_url(url: str) -> str:
    """The URL as it may be printed: its password hidden (scaling.errors.redact)."""
    return redact(url)


# ---------------------------------------------------------------- migrations

_V2_NULLABLE = ("depth_mult", "width_mult", "epochs", "batch_size", "resolution", "eval_resolution",
                "dataset", "seed")


def _migrate_1_to_2(conn: sa.Connection) -> None:
    """Version 2: trials.shape (filled from config_json), the sweeps table, and the
    "what it trains" columns nullable. SQLite cannot drop NOT NULL in place, so there
    the trials table is rebuilt (copy, drop, rename) inside the same transaction."""
    from sweeps.spec import shape_key

    if conn.dialect.name == "sqlite":
        old_cols = [c["name"] for c in sa.inspect(conn).get_columns("trials")]
        conn.exec_driver_sql("ALTER TABLE trials RENAME TO _trials_v1")
        for (name,) in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='_trials_v1' "
                "AND name NOT LIKE 'sqlite_autoindex%'").all():
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
        trials.create(conn)
        cols = ", ".join(f'"{c}"' for c in old_cols)
        conn.exec_driver_sql(f"INSERT INTO trials ({cols}) SELECT {cols} FROM _trials_v1")
        conn.exec_driver_sql("DROP TABLE _trials_v1")
    else:
        conn.exec_driver_sql("ALTER TABLE trials ADD COLUMN shape VARCHAR(500)")
        conn.exec_driver_sql("CREATE INDEX ix_trials_shape ON trials (shape)")
        for col in _V2_NULLABLE:
            conn.exec_driver_sql(f"ALTER TABLE trials ALTER COLUMN {col} DROP NOT NULL")
    sweeps.create(conn)
    for tid, cfg in conn.execute(sa.select(trials.c.trial_id, trials.c.config_json)).all():
        conn.execute(trials.update().where(trials.c.trial_id == tid).values(shape=shape_key(json.loads(cfg))))


def _add_declared_columns(conn: sa.Connection) -> None:
    """Add every run-record column the store lacks (nullable, so old rows stay valid):
    a column declared in sweeps/record.py needs no migration of its own."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("trials")}
    for col in trials.columns:
        if col.name in have:
            continue
        ddl = sa.schema.CreateColumn(col).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE trials ADD COLUMN {ddl}")
        if col.index:
            conn.exec_driver_sql(f"CREATE INDEX ix_trials_{col.name} ON trials ({col.name})")


def _migrate_2_to_3(conn: sa.Connection) -> None:
    """Version 3: `identity` (version-2 id hash) and `id_version` on every row; the
    stored ids are kept (version 1), so checkpoints and exported ids stay valid."""
    _add_declared_columns(conn)
    q = sa.select(trials.c.trial_id, trials.c.sweep, trials.c.config_json, trials.c.reason,
                  *(trials.c[k] for k in record.IMPORT_IDENTITY))
    for row in conn.execute(q).mappings().all():
        conn.execute(trials.update().where(trials.c.trial_id == row["trial_id"]).values(
            identity=ids.identity_of_row(dict(row)), id_version=1))


def _migrate_3_to_4(conn: sa.Connection) -> None:
    """Version 4: `stage` and `parent_trial_id`; every stored row is a pre-training run
    (the column's default fills them; set again here for a backend that would not)."""
    _add_declared_columns(conn)
    conn.execute(trials.update().where(trials.c.stage.is_(None)).values(stage="pretrain"))


MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}  # from version k to k+1


# ---------------------------------------------------------------- the store

class Store:
    """A handle on one store; cheap to create, safe to use from several threads."""

    def __init__(self, url: str = DEFAULT_URL, *, results_dir: str | Path | None = None,
                 create: bool = True):
        """Open (sweeps.connect: URL, file and schema checked first) and migrate a store.
        `create`: a missing or empty store is made (`sweep run`, `results import`);
        without it that is bad input (the commands that read or join a store)."""
        self.url = url
        self.engine = make_engine(url, create=create)
        self.backend = self.engine.dialect.name
        if results_dir is None:
            if self.backend == "sqlite":
                results_dir = Path(self.engine.url.database).resolve().parent
            else:
                results_dir = Path("results")
        self.results_dir = Path(results_dir)
        try:
            self._open(create)
        except BaseException:
            self.engine.dispose()
            raise

    # -- plumbing

    def _begin(self):
        return _Tx(self)

    def _open(self, create: bool) -> None:
        """Create or migrate the schema; refuse stores from a newer program or another
        program, and (without `create`) an empty one, untouched (sweeps.connect.check_schema)."""
        with self._begin() as conn:
            if self.backend == "postgresql":
                # Serialise concurrent first opens (8 workers starting at once).
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(732016)"))
            version = check_schema(conn, self.url, create=create)
            if version is None:
                metadata.create_all(conn)
                conn.execute(schema_info.insert().values(id=1, version=SCHEMA_VERSION))
                return
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
                conn.execute(schema_info.update().values(version=version))
            _add_declared_columns(conn)

    def schema_version(self) -> int:
        with self._begin() as conn:
            return conn.execute(sa.select(schema_info.c.version)).scalar_one()

    def _insert(self, table: sa.Table):
        return (postgresql.insert if self.backend == "postgresql" else sqlite.insert)(table)

    def trial_workdir(self, claim_or_id: Claim | str, sweep: str | None = None) -> Path:
        """Checkpoints of a trial live here; a re-claimed trial resumes from them."""
        if isinstance(claim_or_id, Claim):
            sweep, tid = claim_or_id.sweep, claim_or_id.trial_id
        else:
            tid = claim_or_id
        return self.results_dir / "trials" / _safe_name(sweep or "_") / tid[:16]

    def parent_workdir(self, trial_id: str) -> Path:
        """The workdir of a stored trial, by its id alone (a fine-tune's parent may be in
        another sweep); BadInput if the store has no such trial."""
        with self._begin() as conn:
            sweep = conn.execute(sa.select(trials.c.sweep).where(trials.c.trial_id == trial_id)).scalar_one_or_none()
        if sweep is None:
            raise BadInput(f"parent_trial_id: no trial {trial_id[:12]} in {describe(self.url)}; "
                           "the fine-tune's parent is gone from the store")
        return self.trial_workdir(trial_id, sweep)

    # -- sweeps and enqueue

    def record_sweep(self, name: str, spec_json: dict, *, check=None) -> None:
        """Store a sweep's record. `check(stored record or None)` runs first, in the same
        transaction, and may refuse (raise): then nothing is written."""
        stmt = self._insert(sweeps).values(name=name, spec_json=json.dumps(spec_json), created_at=utcnow())
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"spec_json": stmt.excluded.spec_json})
        with self._begin() as conn:
            if check is not None:
                query = sa.select(sweeps.c.spec_json).where(sweeps.c.name == name)
                if self.backend == "postgresql":
                    query = query.with_for_update()
                row = conn.execute(query).scalar_one_or_none()
                check(None if row is None else json.loads(row))
            conn.execute(stmt)

    def sweep_spec(self, name: str) -> dict | None:
        with self._begin() as conn:
            row = conn.execute(sa.select(sweeps.c.spec_json).where(sweeps.c.name == name)).scalar_one_or_none()
        return None if row is None else json.loads(row)

    def sweep_names(self) -> list[str]:
        with self._begin() as conn:
            return sorted(conn.execute(sa.select(trials.c.sweep).distinct()).scalars())

    def check_sweeps(self, names: Iterable[str]) -> None:
        """BadInput naming the first of `names` that is no sweep of this store (it has
        neither trials nor a record here), with a did-you-mean and the known ones."""
        with self._begin() as conn:
            known = set(conn.execute(sa.select(trials.c.sweep).distinct()).scalars())
            known |= set(conn.execute(sa.select(sweeps.c.name)).scalars())
        for name in names:
            if name not in known:
                shown = ", ".join(sorted(known)[:10]) or "none"
                raise BadInput(f"sweep: no sweep named {name!r} in {describe(self.url)}; "
                               f"{closest(name, known)}known: {shown}")

    def enqueue(self, new_trials: Iterable) -> int:
        """Insert trials not already stored; returns how many were new. Idempotent.

        A trial is "already stored" when a row has its identity (whatever the id version
        of that row). A stored trial still pending takes the new trial's operational
        fields (e.g. a new checkpoint cadence); nothing is re-enqueued or retrained.
        """
        now = utcnow()
        rows = {}
        for t in new_trials:
            c = t.config
            rows[t.trial_id] = dict(
                trial_id=t.trial_id, identity=t.trial_id, id_version=ids.ID_VERSION, sweep=t.sweep,
                config_json=ids.canonical_json(c), shape=t.shape,
                model=c["model"], family=getattr(t, "family", None) or model_family(c["model"]),
                depth_mult=_float_or_none(t.depth_mult), width_mult=_float_or_none(t.width_mult),
                params=t.params,
                flops_per_example=t.flops_per_example, epochs=float(c["epochs"]), lr=float(c["lr"]),
                batch_size=int(c["batch_size"]), resolution=int(c["resolution"]),
                eval_resolution=int(c.get("eval_resolution", c["resolution"])), dataset=c["dataset"],
                seed=int(c.get("seed", 0)), parent_trial_id=c.get("parent_trial_id"),
                stage="pretrain" if c.get("parent_trial_id") is None else "finetune",
                reason=t.reason[:200], status="pending", attempts=0,
                created_at=now, updated_at=now)
        if not rows:
            return 0
        added = 0
        keys = list(rows)
        with self._begin() as conn:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                have = {r.identity: r for r in conn.execute(
                    sa.select(trials.c.trial_id, trials.c.identity, trials.c.status, trials.c.config_json)
                    .where(trials.c.identity.in_(chunk)))}
                todo = [rows[k] for k in chunk if k not in have]
                if todo:
                    conn.execute(self._insert(trials).on_conflict_do_nothing(index_elements=["trial_id"]), todo)
                    added += len(todo)
                for k, old in have.items():
                    new_cfg = rows[k]["config_json"]
                    if old.status == "pending" and old.config_json != new_cfg:
                        conn.execute(trials.update().where(trials.c.trial_id == old.trial_id,
                                                           trials.c.status == "pending")
                                     .values(config_json=new_cfg, updated_at=now))
        return added

    # -- the queue

    def claim(self, worker: str, *, lease_seconds: float, max_attempts: int = 3,
              prefer_shape: str | None = None, sweeps_only: Iterable[str] | None = None) -> Claim | None:
        """Take one pending or lease-expired trial in one transaction, or None if none.

        Prefers `prefer_shape` (the shape this worker compiled last) so a worker runs
        the trials of one model shape back to back. A lease-expired trial that has
        used up `max_attempts` is marked failed instead of being handed out again.
        """
        now = utcnow()
        eligible = sa.or_(trials.c.status == "pending",
                          sa.and_(trials.c.status == "running", trials.c.lease_expires_at < now))
        query = sa.select(trials.c.trial_id, trials.c.sweep, trials.c.config_json, trials.c.attempts,
                          trials.c.status, trials.c.worker, trials.c.shape, trials.c.reason).where(eligible)
        if sweeps_only is not None:
            query = query.where(trials.c.sweep.in_(list(sweeps_only)))
        order = [trials.c.created_at, trials.c.trial_id]
        if prefer_shape is not None:
            order.insert(0, sa.case((trials.c.shape == prefer_shape, 0), else_=1))
        query = query.order_by(*order).limit(1).with_for_update(skip_locked=True)
        while True:
            with self._begin() as conn:
                row = conn.execute(query).first()
                if row is None:
                    return None
                if row.status == "running" and row.attempts >= max_attempts:
                    conn.execute(trials.update().where(trials.c.trial_id == row.trial_id).values(
                        status="failed", worker=None, lease_expires_at=None, updated_at=now,
                        error=f"lease expired on attempt {row.attempts} of {max_attempts} "
                              f"(worker {row.worker} stopped heartbeating: killed or pre-empted)"))
                    continue
                attempt = row.attempts + 1
                conn.execute(trials.update().where(trials.c.trial_id == row.trial_id).values(
                    status="running", worker=worker, attempts=attempt, heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now))
                return Claim(row.trial_id, row.sweep, json.loads(row.config_json), attempt, worker,
                             row.shape, row.reason)

    def _held(self, claim: Claim):
        return sa.and_(trials.c.trial_id == claim.trial_id, trials.c.status == "running",
                       trials.c.worker == claim.worker, trials.c.attempts == claim.attempt)

    def _write_metrics(self, conn: sa.Connection, trial_id: str, rows: list[dict]) -> None:
        if rows:
            conn.execute(self._insert(metrics).on_conflict_do_nothing(index_elements=["trial_id", "step"]),
                         [_metric_row(trial_id, r) for r in rows])

    def heartbeat(self, claim: Claim, *, lease_seconds: float, metrics_rows: list[dict] = ()) -> bool:
        """Renew the lease (and append metrics); False if the lease was lost."""
        now = utcnow()
        with self._begin() as conn:
            n = conn.execute(trials.update().where(self._held(claim)).values(
                heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))).rowcount
            if n == 1:
                self._write_metrics(conn, claim.trial_id, list(metrics_rows))
        return n == 1

    def complete(self, claim: Claim, status: str, result: dict, metrics_rows: list[dict] = ()) -> bool:
        """Record the result iff this worker still holds the lease; False otherwise."""
        if status not in ("done", "diverged"):
            raise ValueError(f"status: {status!r}; complete() takes 'done' or 'diverged'")
        values = {k: _finite_or_none(result.get(k)) for k in RESULT_FIELDS if k in result}
        if result.get("family"):  # the trainer's word on the family (fills rows enqueued without it)
            values["family"] = str(result["family"])
        now = utcnow()
        with self._begin() as conn:
            n = conn.execute(trials.update().where(self._held(claim)).values(
                status=status, lease_expires_at=None, heartbeat_at=now, updated_at=now, error=None,
                **values)).rowcount
            if n == 1:
                self._write_metrics(conn, claim.trial_id, list(metrics_rows))
        return n == 1

    def fail(self, claim: Claim, error: str, *, max_attempts: int) -> str | None:
        """Record an attempt's error: back to pending, or `failed` once attempts run out."""
        status = "failed" if claim.attempt >= max_attempts else "pending"
        with self._begin() as conn:
            n = conn.execute(trials.update().where(self._held(claim)).values(
                status=status, error=error[:4000], worker=None, lease_expires_at=None,
                updated_at=utcnow())).rowcount
        return status if n == 1 else None

    def release(self, claim: Claim) -> bool:
        """Give a trial back untried (graceful stop): pending, the attempt not counted."""
        with self._begin() as conn:
            return conn.execute(trials.update().where(self._held(claim)).values(
                status="pending", worker=None, lease_expires_at=None, attempts=claim.attempt - 1,
                updated_at=utcnow())).rowcount == 1

    def retry(self, sweep: str | None = None, statuses: Iterable[str] = ("failed",),
              trial_ids: list[str] | None = None, *, dry_run: bool = False) -> list[str]:
        """Put failed (or diverged) trials back in the queue; returns their ids, sorted.

        One transaction: select (rows locked on PostgreSQL), then `pending` with
        `attempts` 0, so the trial gets a fresh `max_attempts` budget (kept, the old
        count would fail it on its next error; the schema has no history column and the
        (worker, attempts) lease token stays unique because worker names are). Worker,
        lease and heartbeat are cleared, `error` is kept (a diverged trial gets "diverged
        at step N" there), result fields are cleared (a pending trial has none), metrics
        and checkpoints are kept: the next claim resumes from the last checkpoint and the
        store ignores repeated steps. A diverged trial's metrics rows from its non-finite
        step on are deleted, or they would shadow the resumed run's rows.
        `trial_ids` are id prefixes; each must match a trial of `statuses` (and `sweep`).
        Bad input raises BadInput before anything is written; `dry_run` writes nothing.
        """
        statuses = tuple(dict.fromkeys(statuses))
        for st in statuses or ("",):
            if st not in RETRYABLE:
                raise BadInput(f"status: {st!r} cannot be retried; use {' or '.join(RETRYABLE)} "
                               "(pending/running trials are queued already, done ones are results)")
        prefixes = [p.strip().lower() for p in trial_ids or []]
        if any(not p for p in prefixes):
            raise BadInput("trial: an empty trial id prefix; pass the first characters of an id "
                           "(`scaling sweep status --json` lists them)")
        in_sweep = (lambda q: q.where(trials.c.sweep == sweep)) if sweep is not None else (lambda q: q)
        now = utcnow()
        with self._begin() as conn:
            if conn.execute(in_sweep(sa.select(sa.func.count()).select_from(trials))).scalar_one() == 0:
                if sweep is None:
                    raise BadInput(f"store: {describe(self.url)} holds no trials; check --store")
                known = ", ".join(sorted(conn.execute(sa.select(trials.c.sweep).distinct()).scalars())[:10])
                raise BadInput(f"sweep: no sweep named {sweep!r} in the store; known: {known or 'none'}")
            for p in prefixes:
                found = conn.execute(in_sweep(sa.select(trials.c.status).where(
                    trials.c.trial_id.startswith(p, autoescape=True)))).scalars().all()
                where = f" in sweep {sweep!r}" if sweep is not None else ""
                if not found:
                    raise BadInput(f"trial: no trial id starts with {p!r}{where}; "
                                   "`scaling sweep status --json` lists the failed ones")
                if not set(found) & set(statuses):
                    have = ", ".join(sorted(set(found)))
                    raise BadInput(f"trial: {p!r} matches {len(found)} trial(s){where}, none of them "
                                   f"{'/'.join(statuses)} (they are {have}); only those statuses are re-queued "
                                   "(--status diverged for diverged trials)")
            query = in_sweep(sa.select(trials.c.trial_id, trials.c.status, trials.c.diverged_step)
                             .where(trials.c.status.in_(statuses)))
            if prefixes:
                query = query.where(sa.or_(*[trials.c.trial_id.startswith(p, autoescape=True) for p in prefixes]))
            rows = conn.execute(query.order_by(trials.c.trial_id).with_for_update()).all()
            if dry_run or not rows:
                return [r.trial_id for r in rows]
            cleared = {k: None for k in RESULT_FIELDS if k not in ("params", "flops_per_example", "stage")}
            requeue = dict(status="pending", attempts=0, worker=None, heartbeat_at=None, lease_expires_at=None,
                           updated_at=now, **cleared)
            ids = [r.trial_id for r in rows]
            for i in range(0, len(ids), 500):
                conn.execute(trials.update().where(trials.c.trial_id.in_(ids[i:i + 500]),
                                                   trials.c.status.in_(statuses)).values(**requeue))
            for r in rows:
                if r.status != "diverged":
                    continue
                conn.execute(trials.update().where(trials.c.trial_id == r.trial_id).values(
                    error=f"diverged at step {r.diverged_step} (re-queued by `scaling sweep retry`)"))
                if r.diverged_step is not None:
                    conn.execute(metrics.delete().where(metrics.c.trial_id == r.trial_id,
                                                        metrics.c.step >= r.diverged_step))
        return ids

    # -- reading

    def counts(self, sweep: str | None = None) -> dict[str, dict[str, int]]:
        """{sweep: {status: n}} with every status present."""
        q = sa.select(trials.c.sweep, trials.c.status, sa.func.count()).group_by(trials.c.sweep, trials.c.status)
        if sweep is not None:
            q = q.where(trials.c.sweep == sweep)
        out: dict[str, dict[str, int]] = {}
        with self._begin() as conn:
            for s, st, n in conn.execute(q):
                out.setdefault(s, {k: 0 for k in schema.TRIAL_STATUSES})[st] = n
        return out

    def rows(self, sweep: str | None = None, *, where=None) -> list[dict]:
        q = sa.select(trials)
        if sweep is not None:
            q = q.where(trials.c.sweep == sweep)
        if where is not None:
            q = q.where(where)
        with self._begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(trials.c.created_at, trials.c.trial_id))]

    def metrics_rows(self, trial_id: str) -> list[dict]:
        with self._begin() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(metrics).where(metrics.c.trial_id == trial_id).order_by(metrics.c.step))]

    def active(self, sweeps_only: Iterable[str] | None = None) -> int:
        """Trials still pending or running (in the given sweeps)."""
        q = sa.select(sa.func.count()).where(trials.c.status.in_(("pending", "running")))
        if sweeps_only is not None:
            q = q.where(trials.c.sweep.in_(list(sweeps_only)))
        with self._begin() as conn:
            return conn.execute(q).scalar_one()

    def insert_results(self, rows: list[dict]) -> int:
        """Imported runs (finished elsewhere); returns how many were new. Idempotent.

        A row is already stored when a stored row has its trial id (an export imported
        back) or its identity. If such a row's results differ, nothing is written and the
        conflict is refused naming both.
        """
        if not rows:
            return 0
        with self._begin() as conn:
            found = {}
            for i in range(0, len(rows), 500):
                chunk = rows[i:i + 500]
                q = sa.select(trials).where(sa.or_(
                    trials.c.trial_id.in_([r["trial_id"] for r in chunk]),
                    trials.c.identity.in_([r["identity"] for r in chunk])))
                for old in conn.execute(q).mappings():
                    found[old["trial_id"]] = found[old["identity"]] = dict(old)
            todo = []
            for r in rows:
                old = found.get(r["trial_id"]) or found.get(r["identity"])
                if old is None:
                    todo.append(r)
                    continue
                differ = _differing_results(old, r)
                if differ:
                    k = differ[0]
                    raise BadInput(f"{k}: row {r.get('_row', '?')} ({r['model']}, lr {r['lr']:g}) is {r[k]!r}, but the "
                                   f"store holds this run as trial {old['trial_id'][:12]} with {old[k]!r}; "
                                   "import it under another --sweep or fix the file (nothing was imported)")
            if todo:
                # One key set for every row: an executemany takes its columns from the
                # first row, so a column only later rows give would be dropped silently.
                keys = sorted({k for r in todo for k in r if not k.startswith("_")})
                conn.execute(self._insert(trials).on_conflict_do_nothing(index_elements=["trial_id"]),
                             [{k: r.get(k) for k in keys} for r in todo])
        return len(todo)

    def dispose(self) -> None:
        self.engine.dispose()


class _Tx:
    """`with store._begin() as conn`: one transaction, backend errors as one clear line."""

    def __init__(self, store: Store):
        self.store = store
        self.cm = None

    def __enter__(self) -> sa.Connection:
        try:
            self.cm = self.store.engine.begin()
            return self.cm.__enter__()
        except Exception as err:  # noqa: BLE001 - re-raised as one clear line
            raise _translate(err, self.store) from None

    def __exit__(self, et, ev, tb):
        try:
            suppressed = self.cm.__exit__(et, ev, tb)  # commit, or roll back on error
        except Exception as err:  # noqa: BLE001 - the commit failed, or ev re-raised
            translated = _translate(err, self.store)
            if translated is err:
                raise
            raise translated from None
        if ev is not None and not suppressed:
            translated = _translate(ev, self.store)
            if translated is not ev:
                raise translated from None
        return suppressed


def _translate(err: Exception, store: Store) -> Exception:
    """A backend error as one line (sweeps.connect.translate)."""
    return translate(err, store.url)


def _metric_row(trial_id: str, r: dict) -> dict:
    return dict(trial_id=trial_id, step=int(r["step"]), examples_seen=int(r.get("examples_seen", 0)),
                train_loss=_finite_or_none(r.get("train_loss")), heldout_loss=_finite_or_none(r.get("heldout_loss")),
                heldout_accuracy=_finite_or_none(r.get("heldout_accuracy")), lr=_finite_or_none(r.get("lr")),
                wall_time=_finite_or_none(r.get("wall_time")))


def _differing_results(old: dict, new: dict) -> list[str]:
    """Result columns given in `new` whose value differs from the stored row's."""
    out = []
    for k in record.names(role="result"):
        a, b = old.get(k), new.get(k)
        if a is None or b is None:  # a result one side does not state is no conflict
            continue
        if isinstance(b, float) and isinstance(a, (int, float)):
            if not math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0):
                out.append(k)
        elif a != b:
            out.append(k)
    return out


def model_family(model) -> str | None:
    """The architecture family of a model name (scaling/models/registry.py), None for a
    name no family owns (e.g. a test's stand-in)."""
    from scaling.models import registry

    try:
        return registry.family_name(str(model))
    except BadInput:
        return None


def _float_or_none(v):
    return None if v is None else float(v)


def _finite_or_none(v):
    """NaN/inf do not round-trip through PostgreSQL floats cleanly; a diverged loss is NULL."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:100]
