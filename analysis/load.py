"""Runs from a store (SQLite/PostgreSQL, read-only) or a CSV into one DataFrame.

Units of the returned columns (docs/analysis.md#units):
  params               parameter count
  flops_per_example    FORWARD real FLOPs per example (2 per MAC) at the train resolution
  train_flops          real training FLOPs of the run = 3 x forward x examples_seen
  examples_seen        training examples processed (D in the laws)
  epochs               epoch budget; dataset size = examples_seen / epochs
  lr                   peak learning rate; heldout_loss in nats
  device_seconds       measured device time on `hardware`
  family               architecture family (lower case: nfnet, vit, ...); runs without one
                       (older stores, CSVs made elsewhere) take their model name's family
                       (family_of_model), "unknown" when the name says nothing
Only finished runs ("done") are kept. Diverged and failed runs are excluded and counted
in the notes (the report prints them); pending/running ones are ignored.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import BadInput
from sweeps import record

# From the run record (sweeps/record.py): the columns a run must have, the ones read if
# present, and which of them are numbers.
REQUIRED = record.IMPORT_REQUIRED
OPTIONAL = tuple(c for c in record.EXPORTED if c not in REQUIRED)
NUMERIC = tuple(c for c in REQUIRED + OPTIONAL if record.BY_NAME[c].numeric)

# The family of a run recorded without one (stores made before the column, CSVs made
# elsewhere) is its model name's, as the family registry spells them (F0..F7(+) and
# nfnet-... -> nfnet; ViT-.../vit-... -> vit); a name no family owns is "unknown".
UNKNOWN_FAMILY = "unknown"


@functools.lru_cache(maxsize=4096)
def family_of_model(model: str) -> str:
    """The family a model's name says it belongs to ("F3+" -> nfnet, "ViT-B/16" -> vit;
    scaling.models.registry, pure Python), UNKNOWN_FAMILY when no family owns the name."""
    from scaling.models.registry import FAMILIES

    name = str(model).strip()
    return next((fam.name for fam in FAMILIES.values() if fam.owns(name)), UNKNOWN_FAMILY)


def family_column(runs: pd.DataFrame) -> pd.Series:
    """Each run's family: its recorded `family` (lower case), else its model name's."""
    inferred = runs["model"].astype(str).map(family_of_model) if "model" in runs else \
        pd.Series(UNKNOWN_FAMILY, index=runs.index)
    if "family" not in runs:
        return inferred
    given = runs["family"].astype("string").str.strip().str.lower()
    return given.mask(given.isna() | (given == ""), inferred).astype(str)


def read_store(url: str) -> pd.DataFrame:
    """All trials of a store as a DataFrame (one SELECT; nothing is written).

    Opened the way every command opens a store (sweeps.connect): a missing, empty,
    foreign, corrupt or newer-schema store is refused with one line (exit 2); an older
    one is read as it is (the columns it lacks are empty)."""
    import sqlalchemy as sa

    from sweeps import connect, schema

    engine = connect.make_engine(url, create=False, read_only=True)
    try:
        with engine.connect() as conn:
            connect.check_schema(conn, url, create=False)
            # The columns this store has (an older store may lack newer ones).
            have = {c["name"] for c in sa.inspect(conn).get_columns("trials")}
            rows = conn.execute(sa.select(*(c for c in schema.trials.columns if c.name in have))).mappings().all()
    except sa.exc.SQLAlchemyError as err:
        translated = connect.translate(err, url)
        if translated is err:
            raise
        raise translated from None
    finally:
        engine.dispose()
    return pd.DataFrame(rows, columns=[c.name for c in schema.trials.columns])


def read_csv(path: str | Path) -> pd.DataFrame:
    """A CSV of runs, every row checked as `scaling results import` checks it
    (sweeps/rows.py: one validator), except that unfinished runs are allowed (and
    ignored by `clean`, which says so)."""
    from sweeps import rows

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"--csv: no file at {str(path)!r}; pass an existing CSV of runs")
    df = rows.read_csv_runs(path, field="--csv")
    df.attrs["notes"] = rows.check_frame(df, statuses=rows.ANALYSIS_STATUSES)  # counts rounded
    return df


def clean(raw: pd.DataFrame, dataset: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Normalise columns and units, keep finished finite runs; notes say what was dropped."""
    notes: list[str] = []
    df = raw.copy()
    for col in OPTIONAL:
        if col not in df.columns:
            df[col] = np.nan
    df["status"] = df["status"].astype(object).fillna("done").astype(str).str.lower()
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["model"] = df["model"].astype(str)
    df["family"] = family_column(df)
    # Fine-tune trials (stage "finetune", on a downstream dataset) are not points of the
    # pre-training laws; analysis/finetune.py reads them with their parents.
    df["stage"] = df["stage"].astype(object).fillna("pretrain").astype(str).str.lower()
    tuned = int((df["stage"] == "finetune").sum())
    if tuned:
        notes.append(f"set aside {tuned} fine-tune trial(s): not points of the pre-training laws "
                     "(the fine-tuning section reads them)")
    df = df[df["stage"] != "finetune"]
    if dataset is not None:
        if dataset not in set(df["dataset"].dropna()):
            raise BadInput(f"--dataset: {dataset!r} not in the runs; choose one of {sorted(set(df['dataset'].dropna()))}")
        df = df[df["dataset"] == dataset]
    elif df["dataset"].nunique() > 1:
        top = df["dataset"].value_counts().index[0]
        notes.append(f"runs span datasets {sorted(df['dataset'].dropna().unique())}; analysed {top!r} "
                     "(the most runs; choose with --dataset)")
        df = df[df["dataset"] == top]
    for status in ("diverged", "failed"):
        bad = df[df["status"] == status]
        if len(bad):
            per = ", ".join(f"{m}: {n}" for m, n in bad["model"].value_counts().sort_index().items())
            notes.append(f"excluded {len(bad)} {status} trial(s) ({per})")
    unfinished = df["status"].isin(["pending", "running"]).sum()
    if unfinished:
        notes.append(f"ignored {unfinished} unfinished trial(s) (pending/running)")
    other = ~df["status"].isin(["done", "diverged", "failed", "pending", "running"])
    if other.any():
        notes.append(f"ignored {other.sum()} trial(s) with unknown status {sorted(df.loc[other, 'status'].unique())}")
    df = df[df["status"] == "done"]
    fwd = df["train_flops"] / (3.0 * df["examples_seen"])  # train = 3 x forward (docs/units.md#three-records-per-run)
    df["flops_per_example"] = df["flops_per_example"].fillna(fwd)
    needed = ["params", "examples_seen", "lr", "heldout_loss", "train_flops"]
    finite = np.isfinite(df[needed]).all(axis=1) & (df[needed] > 0).all(axis=1)
    if (~finite).any():
        notes.append(f"excluded {int((~finite).sum())} finished trial(s) with missing, non-finite or "
                     "non-positive loss/params/FLOPs/lr/examples")
    df = df[finite].reset_index(drop=True)
    return df, notes


def load_runs(store: str | None = None, csv: str | Path | None = None,
              dataset: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The one entry point: exactly one of `store` (URL) or `csv` (path)."""
    if (store is None) == (csv is None):
        raise BadInput("--store/--csv: give exactly one source of runs (a store URL or a CSV file)")
    raw = read_store(store) if store is not None else read_csv(csv)
    df, notes = clean(raw, dataset)
    return df, list(raw.attrs.get("notes", [])) + notes
