"""Fine-tune trials of a sweep: enqueued as their parents finish, as LR extensions are.

A spec's [finetune] table (sweeps/spec.py, kept in the sweep's record) says which
pre-training runs are parents: "best" takes, for every cell (the runs that differ only
in their LR: sweeps.lr_extension.group_key), the finished run of lowest held-out loss
once the cell is settled (every run finished and no LR extension left to try); "all"
takes every finished run; a list names stored trials. Each parent gets one trial per
(epochs, lr) of the table. Enqueueing is idempotent (trial ids hash the config, which
names the parent), so workers call `enqueue_finetunes` after every completion, and a
fine-tune LR grid whose optimum is on its edge is extended by sweeps.lr_extension like
any other group (the parent is part of the group's identity).
"""
from __future__ import annotations

import json
import math

from scaling.errors import BadInput
from sweeps.lr_extension import TERMINAL, LRExtension, extend_sweep, group_key, next_lrs
from sweeps.spec import FinetuneSpec, Trial, finetune_trials


def _score(row: dict) -> float:
    loss = row.get("heldout_loss")
    return loss if row["status"] == "done" and loss is not None and math.isfinite(loss) else math.inf


def chosen_parents(rows: list[dict], rule: str, policy: LRExtension) -> list[dict]:
    """The pre-training rows `rule` ("best" | "all") makes parents now (pure)."""
    pre = [r for r in rows if r.get("stage", "pretrain") in (None, "pretrain") and r["reason"] != "imported"]
    if rule == "all":
        return [r for r in pre if r["status"] == "done"]
    cells: dict[str, list[dict]] = {}
    for r in pre:
        cells.setdefault(group_key(r["config"]), []).append(r)
    out = []
    for cell in cells.values():
        if any(r["status"] not in TERMINAL for r in cell) or next_lrs(cell, policy):
            continue  # not settled: a run is unfinished, or the LR search goes on
        best = min(cell, key=lambda r: (_score(r), r["lr"]))
        if math.isfinite(_score(best)):
            out.append(best)
    return out


def _rows(store, sweep: str) -> list[dict]:
    rows = store.rows(sweep)
    for r in rows:
        r["config"] = json.loads(r["config_json"])
    return rows


def enqueue_finetunes(store, sweep: str) -> int:
    """Enqueue the fine-tune trials of every parent of `sweep` that is ready; idempotent."""
    record = store.sweep_spec(sweep)
    if not record or not record.get("finetune"):
        return 0
    ft = FinetuneSpec.from_json(record["finetune"])
    policy = LRExtension.from_json(record["lr_extension"]) if "lr_extension" in record else LRExtension(False)
    if isinstance(ft.parents, str):
        parents = chosen_parents(_rows(store, sweep), ft.parents, policy)
    else:
        parents = [stored_parent(store, pid) for pid in ft.parents]
    new: list[Trial] = []
    for p in parents:
        why = f"finetune: {'parent' if not isinstance(ft.parents, str) else ft.parents} {p['trial_id'][:12]}"
        new += finetune_trials(sweep, ft, p["trial_id"], p["config"], why)
    return store.enqueue(new) if new else 0


def grow(store, sweep: str) -> int:
    """Everything a sweep adds as it runs: LR extensions, then fine-tunes of settled cells."""
    return extend_sweep(store, sweep) + enqueue_finetunes(store, sweep)


def stored_parent(store, prefix: str) -> dict:
    """The stored, finished pre-training trial an id (or unique prefix) names; BadInput
    (one line) when there is none, several, or it has not finished."""
    from sweeps.schema import trials

    matches = store.rows(where=trials.c.trial_id.startswith(prefix, autoescape=True))
    if not matches:
        raise BadInput(f"finetune.parents: no stored trial id starts with {prefix!r}; "
                       "`scaling sweep status --json` lists the trials")
    if len(matches) > 1:
        raise BadInput(f"finetune.parents: {prefix!r} matches {len(matches)} trials; give more of the id")
    row = matches[0]
    if row["status"] != "done":
        raise BadInput(f"finetune.parents: trial {prefix!r} is {row['status']}, not done; fine-tune a finished run "
                       "(or wait for it)")
    if row["reason"] == "imported":
        raise BadInput(f"finetune.parents: trial {prefix!r} was imported and has no checkpoint to start from; "
                       "name a trial trained by this store's workers")
    row["config"] = json.loads(row["config_json"])
    return row


def check_compatible(spec_models: list[dict], ft: FinetuneSpec) -> None:
    """Each parent config can be fine-tuned as [finetune] asks: the same parameter
    shapes apart from the classifier and the input channels (BadInput naming the first
    that cannot; scaling.train.finetune.check_fit). Traces shapes only (jax.eval_shape)."""
    from scaling.train.config import TrainConfig
    from scaling.train.finetune import check_fit
    from scaling.train.loop import param_shapes
    from sweeps.spec import finetune_config

    seen = set()
    for cfg in spec_models:
        key = json.dumps({k: cfg.get(k) for k in ("model", "dataset", "resolution")}, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        child = finetune_config(ft, cfg, "check", epochs=ft.epochs[0], lr=ft.lrs[0])
        try:
            check_fit(param_shapes(TrainConfig.from_dict(cfg)), param_shapes(TrainConfig.from_dict(child)),
                      cfg["model"], keep_classifier=child.get("reset_classifier", True) is False)
        except BadInput as err:
            raise BadInput(f"finetune.{err}") from None
