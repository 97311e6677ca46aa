"""The results store's tables: one schema for SQLite and PostgreSQL (DESIGN.md).

Pure SQLAlchemy Core, no jax: `analysis` reads these tables directly. Changing a
table means bumping SCHEMA_VERSION and adding a forward migration in
`sweeps/store.py`.
"""
from __future__ import annotations

import sqlalchemy as sa

# 1: trials, metrics, schema_info. 2: trials.shape (claim prefers the shape a worker
# last compiled), the sweeps table (each sweep's LR-extension policy), and the
# "what it trains" columns nullable (imported runs may not know epochs, batch, ...).
SCHEMA_VERSION = 2

metadata = sa.MetaData()

# One row per (sweep, trial config). trial_id is a hash of the canonical config,
# so enqueueing the same spec twice adds nothing.
trials = sa.Table(
    "trials",
    metadata,
    sa.Column("trial_id", sa.String(64), primary_key=True),
    sa.Column("sweep", sa.String(200), nullable=False, index=True),
    sa.Column("config_json", sa.Text, nullable=False),  # full canonical trial config
    # what the trial trains
    sa.Column("model", sa.String(100), nullable=False),  # preset name or "nfnet-d{k}-w{w}"
    sa.Column("depth_mult", sa.Float),
    sa.Column("width_mult", sa.Float),
    sa.Column("params", sa.BigInteger),  # parameter count
    sa.Column("flops_per_example", sa.Float),  # forward FLOPs/example at train res (2 per MAC)
    sa.Column("epochs", sa.Float),
    sa.Column("lr", sa.Float, nullable=False),  # peak learning rate
    sa.Column("batch_size", sa.Integer),
    sa.Column("resolution", sa.Integer),
    sa.Column("eval_resolution", sa.Integer),
    sa.Column("dataset", sa.String(200)),
    sa.Column("seed", sa.Integer),
    sa.Column("reason", sa.String(200), nullable=False, server_default="grid"),  # grid / lr-extension: ...
    # what one compilation depends on (sweeps.spec.shape_key); added in version 2
    sa.Column("shape", sa.String(500), index=True),
    # queue state
    sa.Column("status", sa.String(16), nullable=False, server_default="pending", index=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("worker", sa.String(200)),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.Column("diverged_step", sa.BigInteger),
    # results
    sa.Column("heldout_loss", sa.Float),
    sa.Column("heldout_accuracy", sa.Float),
    sa.Column("train_flops", sa.Float),  # analytic: 3 x forward FLOPs x examples seen
    sa.Column("device_seconds", sa.Float),  # measured, excl. compile/eval/checkpoint
    sa.Column("hardware", sa.String(100)),  # hardware profile name (scaling.units)
    sa.Column("num_devices", sa.Integer),
    sa.Column("examples_seen", sa.BigInteger),
    sa.Column("compile_seconds", sa.Float),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

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
