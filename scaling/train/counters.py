"""RunCounters: what a run has accounted for so far, carried across a resume.

Saved with every checkpoint as its meta item (`to_meta`) and read back on restore
(`from_meta`); the meta keys are the field names, so checkpoints of older code restore
(a key they lack takes its default; extra keys such as `step` are ignored). Pure Python.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class RunCounters:
    """Accumulated time (seconds), examples and the latest held-out evaluation."""

    device_seconds: float = 0.0      # train steps, completion to completion, x devices
    compile_seconds: float = 0.0
    eval_seconds: float = 0.0        # held-out evaluations, less compilation inside them
    checkpoint_seconds: float = 0.0  # saves and the restore
    examples_seen: int = 0
    heldout_loss: float | None = None
    heldout_accuracy: float | None = None
    heldout_step: int | None = None  # the step the held-out numbers belong to

    def record_evaluation(self, step: int, loss: float, accuracy: float) -> None:
        self.heldout_loss, self.heldout_accuracy, self.heldout_step = loss, accuracy, step

    def to_meta(self) -> dict[str, Any]:
        """The checkpoint meta entries (JSON values), in field order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "RunCounters":
        """From a checkpoint's meta: missing keys take their defaults, others are ignored."""
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta})
