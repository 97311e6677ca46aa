"""Progressive resizing ([T21]'s progressive learning): the stages of one run, as data.

A run with `progressive = {stages = K, min_resolution = r0, min_strength = s0}` trains K
stages of equal length (in steps). Stage k of K trains at resolution
r0 + (R - r0) k / (K - 1), rounded (R: the run's own resolution, reached by the last
stage), and at regularisation strength s0 + (1 - s0) k / (K - 1) of the run's own: the
model's dropout rate times the strength (where the model has dropout), and the
pad-and-crop margin times the strength (where augmentation is on). [T21] ramps image size
and regularisation together, linearly, over equal stages
(docs/references.md#efficientnetv2).

Everything here is a pure function of (the config, the run's step count), so a resumed
run recomputes the same stages: the learning-rate schedule spans the whole run (one
`Hyper`), the data order is the fixed-resolution run's (step s's examples depend on
(seed, s) only), and each stage is one compiled shape. Pure Python: no jax.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from scaling.errors import BadInput, closest

# [T21] trains 4 stages (docs/references.md#efficientnetv2).
DEFAULT_STAGES = 4
# A run's stages are its compiled shapes (one compilation each, several seconds on a
# CPU); more than 16 is a typo, not a recipe (our bound, not a published one).
MAX_STAGES = 16
# [T21]'s V2-S ramps the image size from 128 to its train size 300
# (docs/references.md#efficientnetv2): the first stage's default side is that fraction.
DEFAULT_MIN_FRACTION = 128 / 300
# [T21]'s V2-S ramps RandAugment magnitude 5 -> 15 and dropout 0.1 -> 0.3: the first
# stage has a third of the final regularisation (docs/references.md#efficientnetv2).
DEFAULT_MIN_STRENGTH = 1 / 3
KEYS = ("stages", "min_resolution", "min_strength")
EXAMPLE = "e.g. progressive = { stages = 4, min_resolution = 8 }"


@dataclass(frozen=True)
class Progressive:
    """The recipe as typed data (validated on construction: one-line BadInput)."""

    stages: int = DEFAULT_STAGES
    min_resolution: int | None = None  # None: DEFAULT_MIN_FRACTION of the run's resolution
    min_strength: float = DEFAULT_MIN_STRENGTH

    def __post_init__(self):
        from scaling.models.config import MIN_RESOLUTION

        k = self.stages
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_STAGES:
            raise BadInput(f"progressive.stages: {k!r} is not a whole number in [2, {MAX_STAGES}] "
                           "(one stage is a fixed-resolution run: leave progressive out)")
        r = self.min_resolution
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < MIN_RESOLUTION):
            raise BadInput(f"progressive.min_resolution: {r!r} is not a whole number of pixels >= "
                           f"{MIN_RESOLUTION} (the stem downsamples 8x); {EXAMPLE}")
        s = self.min_strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and 0 <= s <= 1):
            raise BadInput(f"progressive.min_strength: {s!r} is not a number in [0, 1] (the first stage's "
                           "share of the final dropout and augmentation; 1 keeps them fixed)")

    @classmethod
    def from_dict(cls, data: Any, *, resolution: int | None = None) -> "Progressive | None":
        """From a config's table; {} is "off" (None). `resolution`, when known, is the
        run's final resolution, which the first stage's must be below."""
        if not isinstance(data, dict):
            raise BadInput(f"progressive: must be a table, {EXAMPLE} ({{}}: off)")
        if not data:
            return None
        for key in data:
            if key not in KEYS:
                raise BadInput(f"progressive.{key}: unknown field; {closest(str(key), KEYS)}known: {', '.join(KEYS)}")
        prog = cls(**data)
        if resolution is not None:
            prog.first_resolution(resolution)
        return prog

    def first_resolution(self, resolution: int) -> int:
        """The first stage's side at a final side `resolution` (BadInput unless below it)."""
        from scaling.models.config import MIN_RESOLUTION

        r0 = self.min_resolution
        if r0 is None:
            r0 = max(MIN_RESOLUTION, round(resolution * DEFAULT_MIN_FRACTION))
        if r0 >= resolution:
            raise BadInput(f"progressive.min_resolution: {r0} px is not below the run's {resolution} px; "
                           "give a smaller first stage or a larger resolution")
        return r0


@dataclass(frozen=True)
class Stage:
    """Steps first..last (1-based, inclusive) train at `resolution` and `strength`."""

    index: int
    first: int
    last: int
    resolution: int
    strength: float  # fraction of the run's own dropout and augmentation margin

    @property
    def steps(self) -> int:
        return self.last - self.first + 1


def plan(prog: Progressive | None, *, total_steps: int, resolution: int) -> tuple[Stage, ...]:
    """The stages of a run of `total_steps` whose last stage trains at `resolution`.

    Stage k ends at step round(total x (k + 1) / K) (equal lengths, [T21]); a stage left
    with no step (a run shorter than K steps) is dropped. Off (None): one stage, the run.
    """
    if prog is None:
        return (Stage(0, 1, total_steps, resolution, 1.0),)
    k, r0 = prog.stages, prog.first_resolution(resolution)
    bounds = [round(total_steps * i / k) for i in range(k + 1)]
    out = []
    for i in range(k):
        if bounds[i + 1] > bounds[i]:
            t = i / (k - 1)
            out.append(Stage(len(out), bounds[i] + 1, bounds[i + 1], round(r0 + (resolution - r0) * t),
                             prog.min_strength + (1 - prog.min_strength) * t))
    return tuple(out)


def stage_of(stages: tuple[Stage, ...], step: int) -> Stage:
    """The stage that trains `step` (a step past the plan: the last stage)."""
    for s in stages:
        if s.first <= step <= s.last:
            return s
    return stages[-1]


def mean_train_flops(prog: Progressive | None, resolution: int,
                     train_flops_at: Callable[[int], float]) -> float:
    """Training FLOPs per example averaged over equal stages (what turns a FLOPs or
    hours budget into steps: scaling/train/budget.py); the rounding of stage lengths
    to whole steps moves the spent FLOPs by at most one step per stage."""
    if prog is None:
        return float(train_flops_at(resolution))
    k, r0 = prog.stages, prog.first_resolution(resolution)
    sides = [round(r0 + (resolution - r0) * i / (k - 1)) for i in range(k)]
    return sum(float(train_flops_at(r)) for r in sides) / k


def train_flops(stages: tuple[Stage, ...], steps_done: int, batch_size: int,
                train_flops_at: Callable[[int], float]) -> float:
    """Analytic training FLOPs of the first `steps_done` steps: each stage's steps at its
    own resolution (3 x forward x examples, summed over stages)."""
    total = 0.0
    for s in stages:
        done = min(max(0, steps_done - s.first + 1), s.steps)
        total += float(train_flops_at(s.resolution)) * done * batch_size
    return total


def stage_model(model_cfg: Any, strength: float) -> Any:
    """The model config of a stage: its dropout rate times `strength` (unchanged when
    the family has no `dropout` field, or at full strength)."""
    if strength == 1.0 or not dataclasses.is_dataclass(model_cfg) or not hasattr(model_cfg, "dropout"):
        return model_cfg
    return dataclasses.replace(model_cfg, dropout=model_cfg.dropout * strength)


def describe(stages: tuple[Stage, ...]) -> list[dict]:
    """The stages as plain rows (for the data iterator's state and for reports)."""
    return [{"first": s.first, "last": s.last, "resolution": s.resolution, "strength": round(s.strength, 6)}
            for s in stages]
