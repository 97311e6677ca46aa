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

import os
from pathlib import Path

from scaling.errors import BadInput
from sweeps import ids, record
from sweeps import rows as rows_mod
from sweeps.store import Store, utcnow

REQUIRED = record.IMPORT_REQUIRED
OPTIONAL = record.IMPORT_OPTIONAL


def _read(path: Path):
    """The file as a DataFrame; a file pandas cannot read is one BadInput line."""
    import pandas as pd

    if not path.exists():
        raise BadInput(f"file: {path} does not exist; give a .csv or .parquet file")
    if not path.is_file():
        raise BadInput(f"file: {path} is a folder; give a .csv or .parquet file")
    if path.suffix not in (".csv", ".parquet", ".pq"):
        raise BadInput(f"file: {path.name} is neither .csv nor .parquet; convert it or rename it")
    if path.stat().st_size == 0:
        raise BadInput(f"file: {path} is empty; give a file with a header row and one run per row")
    if path.suffix == ".csv":
        return rows_mod.read_csv_runs(path, field="file")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise BadInput(f"file: {path} is not a readable Parquet file ({rows_mod.first_line(err)}); "
                       "write it again or export CSV") from None


def rows_from_frame(df, *, default_sweep: str) -> list[dict]:
    """Validate a DataFrame of runs (sweeps/rows.py, the checks `analyze --csv` uses too)
    and turn it into trials rows (BadInput on the first problem)."""
    rows_mod.check_columns(df.columns)
    now = utcnow()
    rows, seen, rounded = Rows(), {}, {}
    for i, rec in enumerate(df.to_dict("records"), start=2):  # row 1 is the header
        out = rows_mod.check_row(rec, i, statuses=rows_mod.IMPORT_STATUSES, rounded=rounded)
        given_id = out.pop("trial_id", None)
        out["status"] = out.get("status", "done")
        out["dataset"] = out.get("dataset")
        out["sweep"] = out.get("sweep", default_sweep)
        identity = ids.imported_trial_id(out["sweep"], out)
        # An export carries its trial ids: importing it back keeps them (same trials).
        tid = given_id if given_id is not None else identity
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
    rows.notes = rows_mod.rounding_notes(rounded)
    return rows


class Rows(list):
    """The trials rows of a file, with `notes` (counts rounded to whole numbers)."""
    notes: list[str] = []


def _differs(a: dict, b: dict) -> str | None:
    for k in record.names(role="result"):
        if k in a and k in b and a[k] != b[k]:
            return k
    return None


def read_runs(path: str | Path, *, sweep: str | None = None) -> list[dict]:
    """The file's runs as trials rows, every row checked (nothing is written)."""
    p = Path(path)
    default = sweep or f"import:{p.stem}"
    limit = record.BY_NAME["sweep"].length
    if len(default) > limit:
        raise BadInput(f"sweep: {default[:40]!r}... has {len(default)} characters; the store keeps at most {limit} "
                       "(pass a shorter --sweep)")
    return rows_from_frame(_read(p), default_sweep=default)


def import_file(store: Store, path: str | Path, *, sweep: str | None = None) -> tuple[int, int]:
    """(rows read, rows added); importing the same file twice adds nothing."""
    rows = read_runs(path, sweep=sweep)
    return len(rows), store.insert_results(rows)


def export_frame(store: Store, sweep: str | None = None):
    import pandas as pd

    rows = store.rows(sweep)
    cols = list(record.EXPORTED)
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


def check_output(out: str | Path, *, force: bool = False) -> Path:
    """Where an export may go: not a folder, not an existing file (unless `force`), under a
    writable folder (a missing one is made by export_file). BadInput otherwise; nothing is
    written here."""
    p = Path(out)
    if p.is_dir():
        raise BadInput(f"out: {p} is a folder; give a file name, e.g. {p / 'runs.csv'}")
    if p.exists() and not force:
        raise BadInput(f"out: {p} exists; choose another name, or pass --force to replace it")
    existing = p.absolute().parent  # the folder, or the nearest one above it that exists
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadInput(f"out: {existing} is a file, not a folder; give another path")
    if not os.access(existing, os.W_OK):
        raise BadInput(f"out: cannot write in {existing} (read-only); give another path")
    return p


def export_file(store: Store, out: str | Path, *, fmt: str | None = None, sweep: str | None = None,
                force: bool = True) -> int:
    """Write the runs to `out` (whole or not at all: a temporary file renamed over it).
    `force=False` refuses an existing file."""
    p = Path(out)
    fmt = fmt or (p.suffix.lstrip(".") or "csv")
    if fmt not in ("csv", "parquet"):
        raise BadInput(f"format: {fmt!r} is not supported; use csv or parquet")
    check_output(p, force=force)
    df = export_frame(store, sweep)
    try:
        p.absolute().parent.mkdir(parents=True, exist_ok=True)  # a missing folder is made
    except OSError as err:
        raise BadInput(f"out: cannot create the folder of {p} ({err.strerror}); give another path") from None
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, p)
    except OSError as err:
        raise BadInput(f"out: cannot write {p} ({err.strerror}); give another path") from None
    finally:
        tmp.unlink(missing_ok=True)
    return len(df)

