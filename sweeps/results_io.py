"""`scaling results import/export`: finished runs in and out of the store as CSV/Parquet.

The columns come from the run record (sweeps/record.py): import needs its "required"
columns (model, params, examples_seen, lr, heldout_loss, train_flops) and reads its
"optional" ones; export writes every exported column, so an export imports back whole
and to the same trials (a `trial_id` column is kept). FLOPs are real FLOPs (2 per MAC,
forward + backward). A bad file changes nothing: every row is checked before the first
insert, and a row that contradicts a stored run (same identity, other results) is
refused naming both.
"""
from __future__ import annotations

import math
from pathlib import Path

from scaling.errors import BadInput
from sweeps import ids, record
from sweeps.store import Store, utcnow

REQUIRED = record.IMPORT_REQUIRED
OPTIONAL = record.IMPORT_OPTIONAL
# Columns where 0 is a valid value (elsewhere numbers must be > 0).
ZERO_ALLOWED = ("seed", "heldout_accuracy", "device_seconds")
# Columns whose name says the unit is not what the store keeps: the fix to suggest.
WRONG_UNIT_NAMES = {"train_gflops": "train_flops (real FLOPs, not GFLOPs)",
                    "train_macs": "train_flops (2 FLOPs per MAC)",
                    "gflops": "train_flops (real FLOPs)", "flops": "train_flops",
                    "device_hours": "device_seconds (seconds)", "params_m": "params (a count, not millions)"}


def _read(path: Path):
    import pandas as pd

    if not path.exists():
        raise BadInput(f"file: {path} does not exist; give a .csv or .parquet file")
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise BadInput(f"file: {path.name} is neither .csv nor .parquet; convert it or rename it")


def _num(value, col: str, row: int, *, integer=False, positive=True, allow_zero=False) -> float | int:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{col}: row {row} has {value!r}, not a number; fix the file") from None
    if not math.isfinite(x):
        raise BadInput(f"{col}: row {row} is {value!r}; give a finite number")
    if positive and (x < 0 or (x == 0 and not allow_zero)):
        raise BadInput(f"{col}: row {row} is {x:g}; it must be {'>= 0' if allow_zero else '> 0'}")
    if integer:
        if x != int(x):
            raise BadInput(f"{col}: row {row} is {x:g}; it must be a whole number")
        return int(x)
    return x


def rows_from_frame(df, *, default_sweep: str) -> list[dict]:
    """Validate a DataFrame of runs and turn it into trials rows (BadInput on the first problem)."""
    cols = list(df.columns)
    for c in cols:
        if c in WRONG_UNIT_NAMES:
            raise BadInput(f"{c}: the store keeps {WRONG_UNIT_NAMES[c]}; convert and rename the column")
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise BadInput(f"{missing[0]}: required column missing (need {', '.join(REQUIRED)}); add it")
    now = utcnow()
    rows, seen = [], {}
    for i, rec in enumerate(df.to_dict("records"), start=2):  # row 1 is the header
        r = {k: rec.get(k) for k in REQUIRED + OPTIONAL + ("trial_id",) if ids.present(rec.get(k))}
        for c in REQUIRED:
            if c not in r:
                raise BadInput(f"{c}: row {i} is empty; every run needs {', '.join(REQUIRED)}")
        out = {c: _value(c, r[c], i) for c in REQUIRED + OPTIONAL if c in r}
        _check_row(out, i)
        out["status"] = out.get("status", "done")
        out["dataset"] = out.get("dataset")
        out["sweep"] = out.get("sweep", default_sweep)
        identity = ids.imported_trial_id(out["sweep"], out)
        # An export carries its trial ids: importing it back keeps them (same trials).
        tid = str(r["trial_id"]) if "trial_id" in r else identity
        config = ids.imported_identity(out["sweep"], out)
        if identity in seen:  # the same run twice in one file
            first = seen[identity]
            if store_differs := _differs(first, out):
                raise BadInput(f"{store_differs}: rows {first['_row']} and {i} are the same run with different "
                               "results; keep one of them")
            continue
        out.update(trial_id=tid, identity=identity, id_version=ids.ID_VERSION,
                   config_json=ids.canonical_json(config), reason="imported", attempts=0,
                   created_at=now, updated_at=now, _row=i)
        seen[identity] = out
        rows.append(out)
    return rows


def _value(col: str, value, row: int):
    """One cell parsed by its column's declared type, with the column's range rules."""
    kind = record.BY_NAME[col].type
    if kind == "str":
        return str(value)
    zero_ok = col in ZERO_ALLOWED
    return _num(value, col, row, integer=kind in ("int", "bigint"), allow_zero=zero_ok)


def _check_row(out: dict, i: int) -> None:
    """Rules across columns, and the values a column's type does not say."""
    from scaling.units import HARDWARE

    # Units check: every weight is used at least once per example in the forward
    # pass and training is 3 x forward at 2 FLOPs per MAC, so real training FLOPs
    # are at least ~6 x params x examples; the check uses a loose 2x so only
    # GFLOPs, per-example or MAC-counted figures are refused.
    floor = 2.0 * out["params"] * out["examples_seen"]
    if out["train_flops"] < floor:
        raise BadInput(f"train_flops: row {i} is {out['train_flops']:.3g}, below 2 x params x examples_seen "
                       f"= {floor:.3g}; give real training FLOPs (2 per MAC, forward + backward), not GFLOPs/MACs")
    if out.get("heldout_accuracy", 0) > 1:
        raise BadInput(f"heldout_accuracy: row {i} is {out['heldout_accuracy']:g}; give a fraction in [0, 1]")
    if "hardware" in out and out["hardware"] not in HARDWARE:
        raise BadInput(f"hardware: row {i} is {out['hardware']!r}; use one of {', '.join(sorted(HARDWARE))}")
    if out.get("status", "done") not in ("done", "diverged", "failed"):
        raise BadInput(f"status: row {i} is {out['status']!r}; imported runs are done, diverged or failed")


def _differs(a: dict, b: dict) -> str | None:
    for k in record.names(role="result"):
        if k in a and k in b and a[k] != b[k]:
            return k
    return None


def import_file(store: Store, path: str | Path, *, sweep: str | None = None) -> tuple[int, int]:
    """(rows read, rows added); importing the same file twice adds nothing."""
    p = Path(path)
    rows = rows_from_frame(_read(p), default_sweep=sweep or f"import:{p.stem}")
    return len(rows), store.insert_results(rows)


def export_frame(store: Store, sweep: str | None = None):
    import pandas as pd

    rows = store.rows(sweep)
    cols = list(record.EXPORTED)
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


def export_file(store: Store, out: str | Path, *, fmt: str | None = None, sweep: str | None = None) -> int:
    p = Path(out)
    fmt = fmt or (p.suffix.lstrip(".") or "csv")
    if fmt not in ("csv", "parquet"):
        raise BadInput(f"format: {fmt!r} is not supported; use csv or parquet")
    df = export_frame(store, sweep)
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df.to_csv(p, index=False)
    else:
        df.to_parquet(p, index=False)
    return len(df)

