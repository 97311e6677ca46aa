"""Learning-rate extension: grow a group's LR grid until its best LR is interior.

[S23] tunes the LR per epoch budget on a factor-2 grid
(docs/references.md#epoch-budgets-and-the-learning-rate-grid). If the best
LR of a (model, epoch budget, seed, ...) group is the largest or smallest one tried,
the optimum may lie outside the grid, so the next factor-2 value beyond that edge is
enqueued, with the reason recorded in the store, until the best LR is interior or
the spec's bound (`lr_extension.max_steps` beyond the original grid, min_lr/max_lr)
is reached. `next_lrs` is the pure rule; `extend_sweep` applies it to a store.
"""
from __future__ import annotations

import math

from scaling.train.config import identity_of
from sweeps.spec import LRExtension, Trial, canonical_json

TERMINAL = ("done", "failed", "diverged")


def next_lrs(group: list[dict], policy: LRExtension) -> list[tuple[float, str]]:
    """New (lr, reason) pairs for one finished group; [] while any trial is unfinished.

    group: rows with `lr`, `status`, `heldout_loss`, `reason` (grid or lr-extension).
    A diverged or failed trial counts as infinitely bad, so divergence at a high LR
    stops the upward extension there.
    """
    if not policy.enabled or not group or any(r["status"] not in TERMINAL for r in group):
        return []

    def score(r: dict) -> float:
        loss = r.get("heldout_loss")
        ok = r["status"] == "done" and loss is not None and math.isfinite(loss)
        return loss if ok else math.inf

    best = min(group, key=lambda r: (score(r), r["lr"]))
    if math.isinf(score(best)):
        return []  # nothing trained: no direction to extend in
    lrs = sorted({r["lr"] for r in group})
    # The original grid: every trial not added by extension (a fine-tune group's are "finetune: ...").
    grid = sorted({r["lr"] for r in group if not r.get("reason", "grid").startswith("lr-extension")}) or lrs
    out = []
    shown = ", ".join(f"{x:g}" for x in lrs)
    if best["lr"] == lrs[-1]:
        new = lrs[-1] * 2.0
        steps = round(math.log2(new / grid[-1]))
        if steps <= policy.max_steps and new <= policy.max_lr:
            out.append((new, f"lr-extension: best lr {best['lr']:g} is the upper edge of [{shown}]"))
    if best["lr"] == lrs[0]:
        new = lrs[0] / 2.0
        steps = round(math.log2(grid[0] / new))
        if steps <= policy.max_steps and new >= policy.min_lr:
            out.append((new, f"lr-extension: best lr {best['lr']:g} is the lower edge of [{shown}]"))
    return out


def group_key(config: dict) -> str:
    """Trials whose identities differ only in their LR form one group (operational
    fields such as the checkpoint cadence do not split a group)."""
    return canonical_json({k: v for k, v in identity_of(config).items() if k != "lr"})


def extend_sweep(store, sweep: str) -> int:
    """Enqueue the extension trials every finished group of `sweep` calls for.

    Idempotent (trial ids are config hashes), so several workers may call it at once;
    workers call it after each completion and before going idle.
    """
    import json

    from sweeps.store import model_family

    spec = store.sweep_spec(sweep)
    if spec is None or "lr_extension" not in spec:
        return 0
    policy = LRExtension.from_json(spec["lr_extension"])
    if not policy.enabled:
        return 0
    groups: dict[str, list[dict]] = {}
    for row in store.rows(sweep):
        row["config"] = json.loads(row["config_json"])
        groups.setdefault(group_key(row["config"]), []).append(row)
    new: list[Trial] = []
    for rows in groups.values():
        for lr, reason in next_lrs(rows, policy):
            proto = rows[0]
            cfg = dict(proto["config"], lr=lr)
            family = proto.get("family") or model_family(proto["model"])
            nfnet = family in (None, "nfnet")  # NFNet rows always carry multipliers (1.0 in old stores)
            new.append(Trial(sweep, cfg, reason, proto["params"], proto["flops_per_example"],
                             (proto["depth_mult"] or 1.0) if nfnet else proto["depth_mult"],
                             (proto["width_mult"] or 1.0) if nfnet else proto["width_mult"], family))
    return store.enqueue(new) if new else 0
