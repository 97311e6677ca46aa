"""Trial ids: hashes of what a trial IS, under an explicit id version.

Version 1 hashed a trial's whole config as written (operational fields such as the
checkpoint cadence too), and an imported run's columns including its results.
Version 2 hashes the identity only:
  - a trial of a spec: the identity fields of its TrainConfig that differ from their
    defaults (`scaling.train.config.identity_of`);
  - an imported run: its identity columns (sweeps/record.py) and the examples
    it saw.
Stored version-1 ids stay valid: every row also carries `identity` (the version-2 hash,
filled in by the store's migration), and enqueue and import match on it, so
re-enqueueing a spec or re-importing a file adds nothing whichever version stored it.
No jax, no SQLAlchemy.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from scaling.train.config import identity_of
from sweeps import record

ID_VERSION = 2


def canonical_json(obj: Any) -> str:
    """Key-sorted, compact JSON: equal configs give equal strings (and trial ids)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _sha(payload: dict) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def trial_id(sweep: str, config: dict) -> str:
    """Version 2: {sweep, identity}. A change of an operational field keeps the id."""
    return _sha({"sweep": sweep, "identity": identity_of(config), "id_version": ID_VERSION})


def legacy_trial_id(sweep: str, config: dict) -> str:
    """Version 1: {sweep, whole config}; kept to recognise and test stored ids."""
    return _sha({"sweep": sweep, "config": config})


def _typed(name: str, value: Any) -> Any:
    """One spelling per value (1 and 1.0 hash alike for a float column)."""
    kind = record.BY_NAME[name].type
    if kind == "float":
        return float(value)
    if kind in ("int", "bigint"):
        return int(value)
    return str(value)


def present(value: Any) -> bool:
    return value is not None and value != "" and not (isinstance(value, float) and math.isnan(value))


def imported_identity(sweep: str, row: dict) -> dict:
    """The identity of an imported run: the identity columns it gives, and its examples."""
    return {k: _typed(k, row[k]) for k in record.IMPORT_IDENTITY if present(row.get(k))}


def imported_trial_id(sweep: str, row: dict) -> str:
    """Version 2 id of an imported run (its results are not part of it)."""
    return _sha({"sweep": sweep, "imported": imported_identity(sweep, row), "id_version": ID_VERSION})


def identity_of_row(row: dict) -> str:
    """The version-2 identity hash of a stored row (used to fill `identity` in old stores)."""
    if row.get("reason") == "imported":
        return imported_trial_id(row["sweep"], row)
    return trial_id(row["sweep"], json.loads(row["config_json"]))
