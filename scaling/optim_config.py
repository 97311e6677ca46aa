"""OptimConfig: the optimizer recipe as typed, range-checked data (no jax).

A spec's `[recipe] optimizer = {...}` and `scaling train --optimizer` become this
object when a sweep is expanded or a run is configured, so a misspelt key
(`agc_clp`), a wrong type (`nesterov = "false"`, `momentum = "0.9"`) or a value out of
range (`momentum = 1.5`, `weight_decay = 1e400`) is refused at once with one line, not by
every trial as it starts. The optax chain that uses it is scaling/optim.py.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from scaling.errors import BadInput, closest

_KINDS = {"float": (int, float), "bool": (bool,), "int": (int,)}


def _p(default: Any, kind: str, lo: float | None = None, hi: float | None = None, *,
       lo_open: bool = False, hi_open: bool = False):
    """A recipe field with its type and range: [lo, hi], ends open where asked."""
    return field(default=default, metadata={"kind": kind, "lo": lo, "hi": hi,
                                            "lo_open": lo_open, "hi_open": hi_open})


def _range_text(m: dict) -> str:
    lo = "-inf" if m["lo"] is None else f"{m['lo']:g}"
    hi = "inf" if m["hi"] is None else f"{m['hi']:g}"
    return f"{'(' if m['lo_open'] or m['lo'] is None else '['}{lo}, {hi}{')' if m['hi_open'] or m['hi'] is None else ']'}"


def check_typed_fields(obj: Any, where: str) -> None:
    """Type and range of every `_p` field of a dataclass; BadInput (one line) otherwise."""
    for f in dataclasses.fields(obj):
        m = f.metadata
        if "kind" not in m:
            continue
        v = getattr(obj, f.name)
        ok_types = _KINDS[m["kind"]]
        if not isinstance(v, ok_types) or (m["kind"] != "bool" and isinstance(v, bool)):
            want = {"float": "a number", "bool": "true or false", "int": "a whole number"}[m["kind"]]
            raise BadInput(f"{where}{f.name}: {v!r} is not {want}; write it without quotes, "
                           f"e.g. {f.name} = {f.default!r}".replace("True", "true").replace("False", "false"))
        if m["kind"] == "bool":
            continue
        if not math.isfinite(v):
            raise BadInput(f"{where}{f.name}: {v!r} is not finite; use a value in {_range_text(m)}")
        lo, hi = m["lo"], m["hi"]
        if (lo is not None and (v < lo or (m["lo_open"] and v == lo))) or \
                (hi is not None and (v > hi or (m["hi_open"] and v == hi))):
            raise BadInput(f"{where}{f.name}: {v!r} is out of range; use a value in {_range_text(m)}")


class TypedRecipe:
    """What every family's recipe dataclass shares: built from a table with a
    did-you-mean for unknown keys, and a warmup given as a fraction of the run."""

    RECIPE_NAME = ""  # e.g. " of the ViT recipe", in the unknown-key message

    @classmethod
    def from_dict(cls, data: Any):
        """From a spec's or the CLI's table; unknown keys get a did-you-mean."""
        if not isinstance(data, dict):
            raise BadInput("optimizer: must be a table of optimizer fields, e.g. { weight_decay = 0.0 }")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise BadInput(f"optimizer.{key}: unknown field{cls.RECIPE_NAME}; {closest(str(key), known)}"
                               f"known: {', '.join(known)}")
        return cls(**data)

    def warmup_steps(self, total_steps: int) -> int:
        """Warmup length of a run of `total_steps` updates (a Python int, not traced)."""
        if total_steps < 1:
            raise BadInput(f"total_steps: {total_steps} < 1; a run needs at least one step")
        # Capped at total_steps - 1 so that at least one update runs at the peak LR.
        return min(int(round(self.warmup_fraction * total_steps)), total_steps - 1)


@dataclass(frozen=True)
class OptimConfig(TypedRecipe):
    """Hyper-parameters of the recipe that are fixed per compilation.

    The peak learning rate and the run length are NOT here: they are runtime inputs of
    `scaling.optim.learning_rate`, so one compiled step serves a whole LR x epoch grid.
    """

    momentum: float = _p(0.9, "float", 0.0, 1.0, hi_open=True)  # [B21] JFT-300M / ImageNet recipe; docs/references.md#imagenet-and-jft-300m-recipes
    nesterov: bool = _p(True, "bool")  # [B21]; docs/references.md#imagenet-and-jft-300m-recipes
    agc_clip: float = _p(0.01, "float", 0.0, None, lo_open=True)  # lambda for batch 1024-4096, [B21]; docs/references.md#adaptive-gradient-clipping
    agc_eps: float = _p(1e-3, "float", 0.0, None, lo_open=True)  # floor on ||W_i||, [B21]; docs/references.md#adaptive-gradient-clipping
    # [B21] JFT-300M recipe; [S23] does not state its JFT value
    # (docs/references.md#recipe-defaults-where-the-study-is-silent).
    # The ImageNet recipe uses 2e-5.
    weight_decay: float = _p(1e-6, "float", 0.0, None)
    # Warmup as a FRACTION of the run's own total steps. [S23] does not state its JFT
    # warmup (docs/references.md#recipe-defaults-where-the-study-is-silent). A fraction
    # (rather than [B21]'s 5 ImageNet epochs) keeps the schedule's shape identical across
    # epoch budgets 0.25..8, so the tuned LRs of different budgets are comparable, and it
    # stays valid for 0.25-epoch runs.
    # 0.05 is our documented choice (5 of [B21]'s 360 ImageNet epochs is ~1.4%; JFT
    # recipes commonly warm up a few percent of the run).
    warmup_fraction: float = _p(0.05, "float", 0.0, 1.0, hi_open=True)
    # 0.0 for pre-training (not stated by [S23]; [B21] JFT-300M recipe lists none);
    # 0.1 is the [B21] ImageNet recipe. Held-out loss is always measured WITHOUT it.
    label_smoothing: float = _p(0.0, "float", 0.0, 1.0, hi_open=True)

    def __post_init__(self):
        check_typed_fields(self, "optimizer.")

