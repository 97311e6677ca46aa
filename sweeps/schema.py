"""The results store's tables: one schema for SQLite and PostgreSQL
(docs/sweeps.md#the-store).

Pure SQLAlchemy Core, no jax: `analysis` reads these tables directly. The trials
table is derived from the run record (sweeps/record.py): a column declared there is
added to stores made before it when they are opened (sweeps/store.py); any other change
of a table means bumping SCHEMA_VERSION and adding a forward migration there.
"""
from __future__ import annotations

import sqlalchemy as sa

from sweeps import record

# 1: trials, metrics, schema_info. 2: trials.shape (claim prefers the shape a worker
# last compiled), the sweeps table (each sweep's LR-extension policy), and the
# "what it trains" columns nullable (imported runs may not know epochs, batch, ...).
# 3: trials.identity and trials.id_version (trial ids hash the identity only; stored
# version-1 ids stay and are matched by identity).
# 4: trials.stage and trials.parent_trial_id (fine-tune trials); old rows are "pretrain".
SCHEMA_VERSION = 4

metadata = sa.MetaData()

_SQL_TYPES = {"str": lambda c: sa.String(c.length), "text": lambda c: sa.Text(),
              "int": lambda c: sa.Integer(), "bigint": lambda c: sa.BigInteger(),
              "float": lambda c: sa.Float(), "datetime": lambda c: sa.DateTime(timezone=True)}


def sql_column(c: record.Column) -> sa.Column:
    """The SQL column of a run-record column (sweeps/record.py declares them all)."""
    return sa.Column(c.name, _SQL_TYPES[c.type](c), primary_key=c.primary_key, nullable=c.nullable,
                     index=c.index, server_default=c.server_default, comment=None)


# One row per trial; its columns and their roles are declared in sweeps/record.py.
trials = sa.Table("trials", metadata, *(sql_column(c) for c in record.COLUMNS))

TRIAL_STATUSES = ("pending", "running", "done", "failed", "diverged")

# Learning curves: one row per logged step of a trial.
metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("trial_id", sa.String(64), sa.ForeignKey("trials.trial_id"), nullable=False, index=True),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("examples_seen", sa.BigInteger, nullable=False),
    sa.Column("train_loss", sa.Float),
    sa.Column("heldout_loss", sa.Float),
    sa.Column("heldout_accuracy", sa.Float),
    sa.Column("lr", sa.Float),
    sa.Column("wall_time", sa.Float),  # seconds since the trial first started
    sa.UniqueConstraint("trial_id", "step", name="uq_metrics_trial_step"),
)

# One row per sweep: the policy workers need to grow it (LR extension); version 2.
sweeps = sa.Table(
    "sweeps",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("spec_json", sa.Text, nullable=False),  # mode, lr_extension, report unit
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# A single row holding the schema version the store was created or migrated to.
schema_info = sa.Table(
    "schema_info",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)
