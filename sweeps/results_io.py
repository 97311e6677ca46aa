"""`scaling results import/export`: finished runs in and out of the store as CSV/Parquet.

Import takes one run per row (DESIGN.md, Results store): required columns model,
params, examples_seen, lr, heldout_loss, train_flops; optional epochs, depth_mult,
width_mult, batch_size, dataset, sweep, status, device_seconds, hardware,
flops_per_example, resolution, eval_resolution, seed, heldout_accuracy (so an export
imports back whole: the planner needs the resolution to size its recommendation). FLOPs are
real FLOPs (2 per MAC, forward + backward). A bad file changes nothing: every row is
checked before the first insert.
"""
from __future__ import annotations

import math
from pathlib import Path

from scaling.errors import BadInput
from sweeps.spec import canonical_json
from sweeps.store import Store, utcnow

REQUIRED = ("model", "params", "examples_seen", "lr", "heldout_loss", "train_flops")
OPTIONAL = ("epochs", "depth_mult", "width_mult", "batch_size", "dataset", "sweep", "status",
            "device_seconds", "hardware", "flops_per_example", "resolution", "eval_resolution", "seed",
            "heldout_accuracy")
# Results, not identity: left out of an imported trial's id (see rows_from_frame).
NOT_HASHED = ("flops_per_example", "heldout_accuracy")
# Export adds these (the import ignores them if present: they describe one store's bookkeeping).
EXPORT_EXTRA = ("trial_id", "reason", "num_devices", "attempts", "error", "diverged_step", "compile_seconds")
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


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v != ""


def rows_from_frame(df, *, default_sweep: str) -> list[dict]:
    """Validate a DataFrame of runs and turn it into trials rows (BadInput on the first problem)."""
    cols = list(df.columns)
    for c in cols:
        if c in WRONG_UNIT_NAMES:
            raise BadInput(f"{c}: the store keeps {WRONG_UNIT_NAMES[c]}; convert and rename the column")
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise BadInput(f"{missing[0]}: required column missing (need {', '.join(REQUIRED)}); add it")
    from scaling.units import HARDWARE

    now = utcnow()
    rows = []
    for i, rec in enumerate(df.to_dict("records"), start=2):  # row 1 is the header
        r = {k: rec.get(k) for k in REQUIRED + OPTIONAL if _present(rec.get(k))}
        for c in REQUIRED:
            if c not in r:
                raise BadInput(f"{c}: row {i} is empty; every run needs {', '.join(REQUIRED)}")
        out = dict(model=str(r["model"]), params=_num(r["params"], "params", i, integer=True),
                   examples_seen=_num(r["examples_seen"], "examples_seen", i, integer=True),
                   lr=_num(r["lr"], "lr", i), heldout_loss=_num(r["heldout_loss"], "heldout_loss", i),
                   train_flops=_num(r["train_flops"], "train_flops", i))
        # Units check: every weight is used at least once per example in the forward
        # pass and training is 3 x forward at 2 FLOPs per MAC, so real training FLOPs
        # are at least ~6 x params x examples; the check uses a loose 2x so only
        # GFLOPs, per-example or MAC-counted figures are refused.
        floor = 2.0 * out["params"] * out["examples_seen"]
        if out["train_flops"] < floor:
            raise BadInput(f"train_flops: row {i} is {out['train_flops']:.3g}, below 2 x params x examples_seen "
                           f"= {floor:.3g}; give real training FLOPs (2 per MAC, forward + backward), not GFLOPs/MACs")
        for c in ("epochs", "depth_mult", "width_mult"):
            if c in r:
                out[c] = _num(r[c], c, i)
        for c in ("batch_size", "resolution", "eval_resolution"):
            if c in r:
                out[c] = _num(r[c], c, i, integer=True)
        if "seed" in r:  # part of the trial id: two seeds of one config are two runs
            out["seed"] = _num(r["seed"], "seed", i, integer=True, allow_zero=True)
        if "flops_per_example" in r:
            out["flops_per_example"] = _num(r["flops_per_example"], "flops_per_example", i)
        if "heldout_accuracy" in r:
            out["heldout_accuracy"] = _num(r["heldout_accuracy"], "heldout_accuracy", i, allow_zero=True)
            if out["heldout_accuracy"] > 1:
                raise BadInput(f"heldout_accuracy: row {i} is {out['heldout_accuracy']:g}; give a fraction in [0, 1]")
        if "device_seconds" in r:
            out["device_seconds"] = _num(r["device_seconds"], "device_seconds", i, allow_zero=True)
        if "hardware" in r:
            hw = str(r["hardware"])
            if hw not in HARDWARE:
                raise BadInput(f"hardware: row {i} is {hw!r}; use one of {', '.join(sorted(HARDWARE))}")
            out["hardware"] = hw
        status = str(r.get("status", "done"))
        if status not in ("done", "diverged", "failed"):
            raise BadInput(f"status: row {i} is {status!r}; imported runs are done, diverged or failed")
        out["status"] = status
        out["dataset"] = str(r["dataset"]) if "dataset" in r else None
        out["sweep"] = str(r.get("sweep", default_sweep))
        # The trial id hashes what the import hashed before these columns existed, plus
        # resolution/seed (they tell runs apart); the result-only columns added with them
        # stay out, so a file imported twice adds nothing.
        config = {k: v for k, v in out.items() if k not in ("sweep", "status") + NOT_HASHED}
        out.update(trial_id=_hash(out["sweep"], config), config_json=canonical_json(config),
                   reason="imported", attempts=0, created_at=now, updated_at=now)
        rows.append(out)
    return rows


def _hash(sweep: str, config: dict) -> str:
    from sweeps.spec import trial_id

    return trial_id(sweep, config)


def import_file(store: Store, path: str | Path, *, sweep: str | None = None) -> tuple[int, int]:
    """(rows read, rows added); importing the same file twice adds nothing."""
    p = Path(path)
    rows = rows_from_frame(_read(p), default_sweep=sweep or f"import:{p.stem}")
    return len(rows), store.insert_results(rows)


def export_frame(store: Store, sweep: str | None = None):
    import pandas as pd

    rows = store.rows(sweep)
    cols = list(REQUIRED) + list(OPTIONAL) + list(EXPORT_EXTRA)
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

