"""Budget -> number of steps: the stated rule (docs/units.md#budget---steps-the-stated-rule;
docs/training.md).

examples = epochs x train_size                                   (epoch budgets)
examples = to_flops(budget, unit, utilization) / train_flops_per_example   (FLOPs / hours)
steps    = round(examples / batch_size)        (scaling.units.budget_to_steps)

`to_flops` turns hours into FLOPs as hours x 3600 x peak x utilisation (scaling.units,
utilisation documented per hardware profile and overridable); train FLOPs per example
are the model's analytic count at the train resolution (3 x forward, scaling.models.counts).
A budget worth less than half a step is refused rather than rounded up to one.
Pure Python: no jax.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scaling.errors import BadInput


@dataclass(frozen=True)
class StepPlan:
    total_steps: int
    examples: int          # total_steps x batch_size: what the run will actually see
    budget_flops: float    # the budget in training FLOPs (analytic) it was planned for


def plan_steps(*, epochs: float | None, budget: float | None, unit: str | None,
               utilization: float | None, batch_size: int, train_size: int,
               train_flops_per_example: float) -> StepPlan:
    """Number of optimizer steps for an epoch budget or a compute budget in any unit."""
    from scaling import units
    from scaling.train.config import MAX_STEPS

    if epochs is not None:
        budget, unit = epochs, "epochs"
    u = units.parse_unit(unit)
    if batch_size > train_size:
        raise BadInput(f"batch_size: {batch_size} is larger than the {train_size:,} training examples (one "
                       "batch would hold some twice, and every example is seen once per epoch); "
                       f"use a batch of at most {train_size}")
    wanted = (budget * train_size if u.kind == "epochs"
              else units.to_flops(budget, u, utilization=utilization) / train_flops_per_example)
    if not math.isfinite(wanted) or wanted / batch_size > MAX_STEPS:
        field = "epochs" if u.kind == "epochs" else "budget"
        raise BadInput(f"{field}: {budget:g} {u.name} is {wanted / batch_size:.3g} steps of batch {batch_size}; "
                       f"the step counter holds at most {MAX_STEPS:,} (int32); lower the budget or raise the batch")
    steps = units.budget_to_steps(budget, u, train_flops_per_example=train_flops_per_example,
                                  batch_size=batch_size, dataset_size=train_size,
                                  utilization=utilization)
    if wanted < batch_size / 2:  # budget_to_steps would round it up to a whole step
        raise BadInput(
            f"budget: {budget:g} {u.name} buys {wanted:.3g} examples, less than one step of "
            f"batch {batch_size} ({batch_size * train_flops_per_example:.3g} FLOPs); "
            "raise the budget or lower --batch")
    examples = steps * batch_size
    return StepPlan(total_steps=steps, examples=examples,
                    budget_flops=float(examples * train_flops_per_example))
