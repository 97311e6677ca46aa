"""The checks every run row passes, wherever it comes from: a file imported into a store
(`scaling results import`, sweeps/results_io.py) or a CSV analysed directly
(`scaling analyze/plan --csv`, analysis/load.py). One validator, so a row one of them
refuses the other refuses too, with the same one-line message.

A row's columns come from the run record (sweeps/record.py): the "required" ones must be
present and, for a finished run ("done"), non-empty; a diverged or failed run (and, in
an analysis, a pending or running one) may leave its results empty. Numbers must be
finite, > 0 (>= 0 where ZERO_ALLOWED); a count column (integer) given with a fraction
(digitised data: Epoch AI's Chinchilla CSV has params 6795600349.29) is rounded to the
nearest whole number and reported once per column (`rounding_notes`); FLOPs are
real training FLOPs (2 per MAC, forward + backward), so `train_flops < 2 x params x
examples_seen` is a unit mistake; hardware must be a scaling.units profile.
Pure Python (no SQLAlchemy, no jax): the analysis imports it.
"""
from __future__ import annotations

import math
from pathlib import Path

from scaling.errors import BadInput
from sweeps import record

REQUIRED = record.IMPORT_REQUIRED
OPTIONAL = record.IMPORT_OPTIONAL
# Columns where 0 is a valid value (elsewhere numbers must be > 0).
ZERO_ALLOWED = ("seed", "heldout_accuracy", "device_seconds")
# Columns whose name says the unit is not what the store keeps: the fix to suggest.
WRONG_UNIT_NAMES = {"train_gflops": "train_flops (real FLOPs, not GFLOPs)",
                    "train_macs": "train_flops (2 FLOPs per MAC)",
                    "gflops": "train_flops (real FLOPs)", "flops": "train_flops",
                    "device_hours": "device_seconds (seconds)", "params_m": "params (a count, not millions)"}
# What a run's status may be: imported runs have finished one way or another; an analysis
# also takes unfinished ones (and ignores them, saying so).
IMPORT_STATUSES = ("done", "diverged", "failed")
ANALYSIS_STATUSES = IMPORT_STATUSES + ("pending", "running")
# Result columns a run that did not finish ("done") may leave empty.
RESULTS = tuple(c for c in REQUIRED if record.BY_NAME[c].role == "result")


def present(value) -> bool:
    return value is not None and value != "" and not (isinstance(value, float) and math.isnan(value))


def check_columns(cols) -> None:
    """The file's header: no column in a wrong unit, every required column there."""
    cols = list(cols)
    for c in cols:
        if c in WRONG_UNIT_NAMES:
            raise BadInput(f"{c}: the store keeps {WRONG_UNIT_NAMES[c]}; convert and rename the column")
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise BadInput(f"{missing[0]}: required column missing (need {', '.join(REQUIRED)}); add it")


def check_row(rec: dict, row: int, *, statuses=IMPORT_STATUSES, rounded: dict | None = None) -> dict:
    """One row (`row`: its line in the file, the header being 1) parsed by its columns'
    declared types and checked; returns {column: value} for the non-empty run-record
    columns it has (plus `trial_id` if given). BadInput names the column and the row.
    `rounded` collects {column: [(row, value), ...]} for counts rounded to whole numbers."""
    r = {k: rec.get(k) for k in REQUIRED + OPTIONAL + ("trial_id",) if present(rec.get(k))}
    status = str(r.get("status", "done")).strip().lower()
    if status not in statuses:
        what = "imported runs are" if statuses == IMPORT_STATUSES else "a run is"
        raise BadInput(f"status: row {row} is {r['status']!r}; {what} {', '.join(statuses[:-1])} or {statuses[-1]}")
    for c in REQUIRED:
        if c not in r and (status == "done" or c not in RESULTS):
            raise BadInput(f"{c}: row {row} is empty; every run needs {', '.join(REQUIRED)}"
                           + (" (a diverged or failed one may leave its results empty)" if c in RESULTS else ""))
    out = {c: _value(c, r[c], row, rounded) for c in REQUIRED + OPTIONAL if c in r}
    if "status" in r:
        out["status"] = status
    _check_across(out, row)
    if "trial_id" in r:
        out["trial_id"] = str(r["trial_id"])
    return out


def _num(value, col: str, row: int, *, integer=False, allow_zero=False, rounded=None) -> float | int:
    if isinstance(value, bool):
        raise BadInput(f"{col}: row {row} has {value!r}, not a number; fix the file")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{col}: row {row} has {value!r}, not a number; fix the file") from None
    if not math.isfinite(x):
        raise BadInput(f"{col}: row {row} is {value!r}; give a finite number")
    if x < 0 or (x == 0 and not allow_zero):
        raise BadInput(f"{col}: row {row} is {x:g}; it must be {'>= 0' if allow_zero else '> 0'}")
    if integer:
        if x >= 2**63:
            raise BadInput(f"{col}: row {row} is {x:g}; it must be below 2**63")
        whole = int(round(x))
        if whole != x:
            if whole == 0 and not allow_zero:
                raise BadInput(f"{col}: row {row} is {x:g}; it rounds to 0 and must be > 0")
            if rounded is not None:
                rounded.setdefault(col, []).append((row, x))
        return whole
    return x


def _value(col: str, value, row: int, rounded=None):
    """One cell parsed by its column's declared type, with the column's range rules."""
    kind = record.BY_NAME[col].type
    if kind in ("str", "text"):
        text = str(value)
        limit = record.BY_NAME[col].length
        if limit and len(text) > limit:
            raise BadInput(f"{col}: row {row} has {len(text)} characters; the store keeps at most {limit}")
        return text
    return _num(value, col, row, integer=kind in ("int", "bigint"), allow_zero=col in ZERO_ALLOWED, rounded=rounded)


def rounding_notes(rounded: dict) -> list[str]:
    """One note per column whose counts were rounded (check_row's `rounded`)."""
    return [f"{col}: {len(hits)} value(s) not whole numbers rounded to the nearest integer "
            f"(e.g. row {hits[0][0]}: {hits[0][1]!r} -> {int(round(hits[0][1]))})"
            for col, hits in rounded.items()]


def _check_across(out: dict, i: int) -> None:
    """Rules across columns, and the values a column's type does not say."""
    from scaling.units import HARDWARE

    # Units check: every weight is used at least once per example in the forward
    # pass and training is 3 x forward at 2 FLOPs per MAC, so real training FLOPs
    # are at least ~6 x params x examples; the check uses a loose 2x so only
    # GFLOPs, per-example or MAC-counted figures are refused.
    if all(k in out for k in ("train_flops", "params", "examples_seen")):
        floor = 2.0 * out["params"] * out["examples_seen"]
        if out["train_flops"] < floor:
            raise BadInput(f"train_flops: row {i} is {out['train_flops']:.3g}, below 2 x params x examples_seen "
                           f"= {floor:.3g}; give real training FLOPs (2 per MAC, forward + backward), not "
                           "GFLOPs/MACs")
    if out.get("heldout_accuracy", 0) > 1:
        raise BadInput(f"heldout_accuracy: row {i} is {out['heldout_accuracy']:g}; give a fraction in [0, 1]")
    stage = out.get("stage", "finetune" if "parent_trial_id" in out else "pretrain")
    if stage not in record.STAGES or (stage == "finetune") != ("parent_trial_id" in out):
        raise BadInput(f"stage: row {i} is {stage!r} with{'' if 'parent_trial_id' in out else 'out'} a "
                       "parent_trial_id; a pretrain run has none, a finetune run names its parent")
    if "stage" in out or "parent_trial_id" in out:
        out["stage"] = stage
    if "hardware" in out and out["hardware"] not in HARDWARE:
        raise BadInput(f"hardware: row {i} is {out['hardware']!r}; use one of {', '.join(sorted(HARDWARE))}")


def check_frame(df, *, statuses=ANALYSIS_STATUSES) -> list[str]:
    """Every row of a DataFrame of runs (BadInput on the first bad one); returns the
    rounding notes (counts given with a fraction are read as the nearest whole number)."""
    check_columns(df.columns)
    rounded: dict = {}
    for i, rec in enumerate(df.to_dict("records"), start=2):  # row 1 is the header
        check_row(rec, i, statuses=statuses, rounded=rounded)
    return rounding_notes(rounded)


def read_csv_runs(path: Path, *, field: str):
    """A CSV of runs as a DataFrame: UTF-8 text with a header row (BadInput otherwise,
    naming `field`). Shared with `analyze/plan --csv` (analysis/load.py)."""
    import pandas as pd

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as err:
        raise BadInput(f"{field}: cannot read {path} ({err.strerror}); check the path") from None
    if b"\x00" in head:
        raise BadInput(f"{field}: {path} is a binary file, not a CSV; give a CSV of runs (UTF-8 text)")
    try:
        return pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadInput(f"{field}: {path} is not UTF-8 text (byte {err.start}, e.g. Latin-1); save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BadInput(f"{field}: {path} is not a readable CSV ({first_line(err)}); fix the file") from None


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
