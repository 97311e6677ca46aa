"""The run record: every column the store keeps per trial, declared once with its role.

A column's role says what it is to a run, and every list of columns elsewhere is
derived from it (the SQL table in sweeps/schema.py, `results import/export`, the
columns `analysis.load` reads):
  key       the store's bookkeeping of the row itself (id, sweep, config, identity)
  identity  what the run is (model, budget, learning rate, data, seed): two rows that
            differ here are different runs; an imported run's identity hashes these
  input     fixed by the identity but recorded for analysis (parameter count, FLOPs)
  result    what the run measured (losses, compute, time)
  queue     the state of the trial in the work queue
`io` says how `results import` treats a column: "required" (every imported row needs
it), "optional", or None (not read on import; export still writes every column whose
`export` is true). `numeric` columns are coerced to numbers by the analysis.
Pure Python (no SQLAlchemy, no jax): analysis and the CLI import it.
"""
from __future__ import annotations

from dataclasses import dataclass

ROLES = ("key", "identity", "input", "result", "queue")
# A run's `stage`: trained from scratch, or fine-tuned from its `parent_trial_id`.
STAGES = ("pretrain", "finetune")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # "str" | "text" | "int" | "bigint" | "float" | "datetime"
    role: str
    io: str | None = None  # import: "required" | "optional" | None
    export: bool = True
    doc: str = ""
    # SQL details (sweeps/schema.py): a length for "str", nullability, index, default.
    length: int | None = None
    nullable: bool = True
    index: bool = False
    server_default: str | None = None
    primary_key: bool = False

    @property
    def numeric(self) -> bool:
        return self.type in ("int", "bigint", "float")


C = Column
# Order = the SQL table's column order and the export's column order.
COLUMNS: tuple[Column, ...] = (
    C("trial_id", "str", "key", length=64, primary_key=True, nullable=False,
      doc="hash of the trial's identity (id_version says which rule made it)"),
    C("sweep", "str", "key", "optional", length=200, nullable=False, index=True),
    C("config_json", "text", "key", export=False, nullable=False, doc="full canonical trial config"),
    C("model", "str", "identity", "required", length=100, nullable=False,
      doc="preset name or canonical family name (nfnet-d{k}-w{w})"),
    C("family", "str", "identity", "optional", length=50,
      doc="architecture family (nfnet, vit, ...); laws are fitted per family"),
    C("depth_mult", "float", "identity", "optional"),
    C("width_mult", "float", "identity", "optional"),
    C("params", "bigint", "input", "required", doc="parameter count"),
    C("flops_per_example", "float", "input", "optional",
      doc="forward real FLOPs per example at the train resolution (2 per MAC)"),
    C("epochs", "float", "identity", "optional"),
    C("lr", "float", "identity", "required", nullable=False, doc="peak learning rate"),
    C("batch_size", "int", "identity", "optional"),
    C("resolution", "int", "identity", "optional"),
    C("eval_resolution", "int", "identity", "optional"),
    C("dataset", "str", "identity", "optional", length=200),
    C("seed", "int", "identity", "optional"),
    C("parent_trial_id", "str", "identity", "optional", length=64, index=True,
      doc="a fine-tune's pre-training trial (its compute: that row's train_flops); empty for pre-training"),
    C("stage", "str", "input", "optional", length=16, server_default="pretrain",
      doc="pretrain / finetune (fixed by parent_trial_id)"),
    C("reason", "str", "queue", length=200, nullable=False, server_default="grid",
      doc="grid / lr-extension: ... / imported"),
    C("shape", "str", "queue", export=False, length=500, index=True,
      doc="what one compilation depends on (sweeps.spec.shape_key)"),
    C("status", "str", "queue", "optional", length=16, nullable=False, server_default="pending", index=True),
    C("attempts", "int", "queue", nullable=False, server_default="0"),
    C("worker", "str", "queue", export=False, length=200),
    C("heartbeat_at", "datetime", "queue", export=False),
    C("lease_expires_at", "datetime", "queue", export=False),
    C("error", "text", "queue"),
    C("diverged_step", "bigint", "result"),
    C("heldout_loss", "float", "result", "required", doc="mean CE over the held-out split, nats"),
    C("heldout_accuracy", "float", "result", "optional"),
    C("train_flops", "float", "result", "required", doc="analytic: 3 x forward FLOPs x examples seen"),
    C("device_seconds", "float", "result", "optional", doc="measured, excl. compile/eval/checkpoint"),
    C("hardware", "str", "result", "optional", length=100, doc="hardware profile (scaling.units)"),
    C("num_devices", "int", "result"),
    C("examples_seen", "bigint", "result", "required", doc="training examples processed (D in the laws)"),
    C("compile_seconds", "float", "result"),
    C("identity", "str", "key", export=False, length=64, index=True,
      doc="hash of the identity under the current rule: enqueue and import match on it"),
    C("id_version", "int", "key", export=False, doc="1: legacy whole-config hash; 2: identity hash"),
    C("created_at", "datetime", "key", export=False, nullable=False),
    C("updated_at", "datetime", "key", export=False, nullable=False),
)
del C

BY_NAME = {c.name: c for c in COLUMNS}
assert all(c.role in ROLES for c in COLUMNS), "every column declares a known role"


def names(*, role: str | tuple[str, ...] | None = None, io: str | None = None,
          export: bool | None = None, numeric: bool | None = None) -> tuple[str, ...]:
    """Column names selected by their declarations, in table order."""
    roles = (role,) if isinstance(role, str) else role
    return tuple(c.name for c in COLUMNS
                 if (roles is None or c.role in roles) and (io is None or c.io == io)
                 and (export is None or c.export == export) and (numeric is None or c.numeric == numeric))


# The derived lists the rest of the program uses.
IMPORT_REQUIRED = names(io="required")
IMPORT_OPTIONAL = names(io="optional")
EXPORTED = names(export=True)
# Written by a worker when a trial finishes (the rest of the row is the queue's).
RESULT_FIELDS = names(role=("input", "result"))
# An imported run's identity: its identity columns, plus the examples it saw (the budget
# it spent: an imported run need not state its epochs).
IMPORT_IDENTITY = names(role="identity") + ("examples_seen",)
