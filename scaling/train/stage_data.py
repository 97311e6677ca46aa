"""The training stream of a progressive run: one grain iterator per stage, one state.

Step s's examples are a pure function of (seed, s) (scaling/data/pipeline.py), so a stage
only changes how they are rendered (resolution, crop margin): the iterator of the stage
that trains step s is opened AT step s, and the examples of the whole run are the
fixed-resolution run's, each seen once per epoch. The saved state is the step plus the
stages, so a resume into a differently staged run is refused like any other pipeline
mismatch. A grain DatasetIterator, saved and restored by grain's orbax handler.
"""
from __future__ import annotations

from typing import Any, Callable

import grain

from scaling.errors import BadInput
from scaling.train.progressive import Stage, describe, stage_of


class StagedIterator(grain.DatasetIterator):
    """Batches of step s come from `make(stage of s)` positioned at s."""

    def __init__(self, stages: tuple[Stage, ...], make: Callable[[Stage], Any]):
        super().__init__()
        self._stages, self._make = stages, make
        self._step = 0
        self._stage: Stage | None = None
        self._inner: Any = None
        first = make(stages[0])
        # what every stage shares (dataset, seed, batch, processes), without the step and
        # the per-stage rendering, which `stages` states instead
        self._identity = {k: v for k, v in first.get_state().items()
                          if k not in ("step", "resolution", "augment")}
        self._identity["stages"] = describe(stages)
        first.close()

    def __next__(self) -> dict:
        stage = stage_of(self._stages, self._step + 1)  # the step this batch trains
        if stage is not self._stage:
            self.close()
            inner = self._make(stage)
            inner.set_state({**inner.get_state(), "step": self._step})
            self._inner, self._stage = inner, stage
        batch = next(self._inner)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step, **self._identity}

    def set_state(self, state: dict[str, Any]) -> None:
        wrong = {k: (state.get(k), v) for k, v in self._identity.items() if state.get(k) != v}
        if wrong:
            raise BadInput(f"data iterator state: saved for a different pipeline {wrong} (saved, current); "
                           "restore with the same dataset, seed, batch size, processes and stages")
        self.close()
        self._step = int(state["step"])

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
        self._inner, self._stage = None, None

    @property
    def step(self) -> int:
        return self._step
