"""TrainConfig: everything that defines ONE training run, as JSON-round-trippable data.

The sweep runner stores `to_json()` as the trial config and hashes it, so the
dataclass holds only plain values (str, int, float, bool, None, dict of those).
Pure Python: no jax import (the sweep runner builds configs before any device work).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from scaling import units
from scaling.errors import BadInput, closest
from scaling.models import config as model_limits  # pure: the model's size and resolution ranges
from scaling.models import registry  # pure: model name -> family -> its recipe dataclass

# Where the persistent XLA compilation cache lives unless the user says otherwise
# (results/ is the default home of everything the program writes:
# docs/references.md#layout-and-dependency-direction).
DEFAULT_COMPILE_CACHE = "results/jax_cache"
# Compute dtypes of the activations; parameters and optimizer state are float32 in both.
# bfloat16 is [B21]/[S23]'s setting on TPU (bf16 activations, fp32 params:
# docs/references.md#precision); float16 is left out on purpose (it needs loss scaling).
COMPUTE_DTYPES = ("float32", "bfloat16")
# Ranges the machine and the counters honour (every number a run takes has one):
# the step counter is int32 in the train state, so a run has at most 2**31 - 1 steps
# (scaling/train/budget.py refuses a budget that needs more); a jax PRNG seed is a
# 32-bit value here; more evaluations or data workers than these are typos.
MAX_STEPS = 2**31 - 1
MAX_SEED = 2**31 - 1
MAX_BATCH_SIZE = 2**20
MAX_EVAL_POINTS = 10_000
MAX_DATA_WORKERS = 256
# What a fine-tune may train: everything, or the new classifier alone (a linear probe;
# the optional "top layers only" of the half-resolution recipe, docs/training.md#fine-tuning).
TRAINABLE = ("all", "classifier")
# SAM's radius ([S23] fine-tunes with SAM: docs/references.md#fine-tuning). Our bound, not
# a published one: a radius of 1 moves the weights by a unit-norm step, beyond which it is a typo.
MAX_SAM_RHO = 1.0
MAX_PARENT_ID = 64  # the store's trial id column

# A field's role, declared once on the field (metadata) and read by everything else:
#   identity     what the run computes: hashed into the trial id, must match on resume;
#   operational  how the run is operated (checkpoint cadence, logging, paths): may change
#                on resume and never changes a trial's id.
# and two flags on top of the role:
#   shape        selects a compiled train step (the sweep's shape key, the in-process
#                compiled-step cache); the learning rate and run length never do;
#   grid         set by a sweep's grid or top level, so a spec's [recipe] may not set it.
IDENTITY = "identity"
OPERATIONAL = "operational"
ROLES = (IDENTITY, OPERATIONAL)


def _f(default: Any, role: str, *, shape: bool = False, grid: bool = False):
    """A TrainConfig field with its declared role (`default` may be a factory: dict)."""
    assert role in ROLES, role
    meta = {"role": role, "shape": shape, "grid": grid}
    if default is dict:
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """One run: a model, a dataset, a budget (epochs OR budget+unit) and a peak LR.

    model:       a model name of any family (scaling/models/registry.py): "F0", "F3+",
                 "nfnet-d0.5-w0.125", "ViT-S/16", "vit-w64-d4-m256-h2-p4"; or leave None and
                 give depth_mult and width_mult (the continuous NFNet family). The family
                 is read from the name, so it is no field of its own.
    epochs:      fractional epoch budget (0.25, 0.5, ...), or
    budget/unit: compute budget in any unit of scaling.units ("tpu-v4-core-hours",
                 "flops", ...); converted to steps by `scaling.train.budget.plan_steps`.
    lr:          peak learning rate of the warmup + cosine schedule over this run's steps.
    resolution:  train resolution (None: the dataset's native one, e.g. 32 for the
                 procedural set, else the model's train resolution [B21]);
    eval_resolution: held-out resolution (None: same as `resolution`).
    optimizer:   overrides of the family's recipe fields (NFNet: scaling.optim_config.OptimConfig,
                 ViT: scaling.models.vit_config.ViTRecipe), e.g. {"weight_decay": 0}.
    eval_points: held-out evaluations along the way (besides the final one), evenly spaced.
    checkpoint_every_steps / checkpoint_every_minutes: save when either is reached.
    hardware:    profile measured time is reported against (scaling.units.HARDWARE);
                 None = detected from the JAX device kind.
    utilization: assumed utilisation turning an hours budget into FLOPs (None = the
                 unit's profile default, documented in scaling/units.py).
    data_workers: grain worker processes preparing batches (0: in the training process).
    log_indices: write every consumed training example index to indices-p<i>.jsonl
                 (debug: lets tests check exactly-once-per-epoch; large for real runs).
    compute_dtype: "float32" (default) or "bfloat16": the dtype of activations in training
                 AND evaluation; params, optimizer state, gradients and the loss stay float32
                 (docs/training.md, "Precision"). Slower on CPU; for GPU/TPU runs.
    parent_trial_id / parent_workdir: a fine-tune run: start from the final parameters of
                 the finished run in `parent_workdir` (its id names it; the location is
                 operational), with a fresh classifier for this dataset's classes.
    trainable:   "all", or "classifier" (every other parameter frozen; fine-tune runs only).
    reset_classifier: a fine-tune's classifier is fresh (True) or the parent's (False: the
                 same classes, e.g. [M21]'s full-resolution fine-tune of a low-resolution run).
    sam_rho:     > 0: sharpness-aware steps of that radius (optax.contrib.sam) [S23].
    augment:     fields of scaling.data.augment.AugmentConfig for the TRAINING stream
                 (e.g. {"crop_pad": 4, "flip": True, "pad_mode": "zero"}); {} = pad-and-crop
                 by R/8 + flip. Held-out batches are never augmented.
    progressive: progressive resizing over equal stages of one run ([T21]): {"stages": 4,
                 "min_resolution": 8, "min_strength": 1/3}; image side, dropout and crop margin
                 ramp up to the run's own by the last stage. {} = off (docs/training.md).
    """

    # Each field declares its role once (see `_f` and the role constants above); the
    # id, resume, compile-key and recipe lists below are derived from these declarations.
    model: str | None = _f(None, IDENTITY, shape=True, grid=True)
    depth_mult: float | None = _f(None, IDENTITY, shape=True, grid=True)
    width_mult: float | None = _f(None, IDENTITY, shape=True, grid=True)
    dataset: str = _f("procedural", IDENTITY, shape=True, grid=True)
    epochs: float | None = _f(None, IDENTITY, grid=True)
    budget: float | None = _f(None, IDENTITY, grid=True)
    unit: str | None = _f(None, IDENTITY, grid=True)
    lr: float = _f(0.1, IDENTITY, grid=True)
    batch_size: int = _f(32, IDENTITY, shape=True, grid=True)
    resolution: int | None = _f(None, IDENTITY, shape=True, grid=True)
    eval_resolution: int | None = _f(None, IDENTITY, shape=True, grid=True)
    seed: int = _f(0, IDENTITY, grid=True)
    optimizer: dict = _f(dict, IDENTITY, shape=True)
    eval_points: int = _f(0, OPERATIONAL)
    checkpoint_every_steps: int = _f(200, OPERATIONAL)
    checkpoint_every_minutes: float = _f(10.0, OPERATIONAL)
    workdir: str | None = _f(None, OPERATIONAL, grid=True)
    compile_cache_dir: str | None = _f(DEFAULT_COMPILE_CACHE, OPERATIONAL)
    tensorboard: bool = _f(False, OPERATIONAL)
    hardware: str | None = _f(None, IDENTITY)
    utilization: float | None = _f(None, IDENTITY)
    log_indices: bool = _f(False, OPERATIONAL)
    data_workers: int = _f(0, OPERATIONAL)
    compute_dtype: str = _f("float32", IDENTITY, shape=True)
    augment: dict = _f(dict, IDENTITY)
    # Fine-tuning (scaling/train/finetune.py). Every default is the pre-training value,
    # so a run that does not fine-tune keeps its trial id and shape key.
    parent_trial_id: str | None = _f(None, IDENTITY)  # the pre-training run it starts from
    parent_workdir: str | None = _f(None, OPERATIONAL)  # where that run's files are now
    trainable: str = _f("all", IDENTITY, shape=True)  # "all" | "classifier" (the rest frozen)
    sam_rho: float = _f(0.0, IDENTITY, shape=True)  # SAM's ascent radius; 0 = plain steps
    reset_classifier: bool = _f(True, IDENTITY)  # False: keep the parent's (same task, e.g. [M21])
    # Progressive resizing (scaling/train/progressive.py); {} = off, so every existing
    # trial id and shape key is unchanged. Its stages are compiled shapes of their own.
    progressive: dict = _f(dict, IDENTITY, shape=True)

    # ---- validation -------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise BadInput (one line: field, problem, fix) on anything unusable."""
        self._check_plain_types()
        if self.model is None and (self.depth_mult is None or self.width_mult is None):
            raise BadInput("model: give a preset name (e.g. --model F0) or both --depth-mult and --width-mult")
        if self.model is not None and (self.depth_mult is not None or self.width_mult is not None):
            raise BadInput("model: give either a preset name or --depth-mult/--width-mult, not both")
        for name in ("depth_mult", "width_mult"):
            v = getattr(self, name)
            top = model_limits.MAX_DEPTH_MULT if name == "depth_mult" else model_limits.MAX_WIDTH_MULT
            if v is not None and not (_finite(v) and 0 < v <= top):
                raise BadInput(f"{name}: must be a positive number up to {top:g}, got {v!r}")
        has_epochs = self.epochs is not None
        has_budget = self.budget is not None or self.unit is not None
        if has_epochs == has_budget:
            raise BadInput("epochs: give exactly one of --epochs E or --budget X --unit U")
        if has_epochs and not (_finite(self.epochs) and self.epochs > 0):
            raise BadInput(f"epochs: must be a positive number, got {self.epochs!r}")
        if has_budget:
            if self.budget is None or self.unit is None:
                raise BadInput("budget: --budget and --unit go together, e.g. --budget 400 --unit tpu-v4-core-hours")
            if not (_finite(self.budget) and self.budget > 0):
                raise BadInput(f"budget: must be a positive number, got {self.budget!r}")
            units.parse_unit(self.unit)  # BadInput with a did-you-mean
        if not (_finite(self.lr) and self.lr > 0):
            raise BadInput(f"lr: must be a positive number, got {self.lr!r}")
        _int_in("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        for name in ("resolution", "eval_resolution"):
            v = getattr(self, name)
            if v is not None:
                model_limits.check_resolution(name, v)
        _int_in("seed", self.seed, 0, MAX_SEED)
        _int_in("eval_points", self.eval_points, 0, MAX_EVAL_POINTS)
        _int_in("checkpoint_every_steps", self.checkpoint_every_steps, 1, MAX_STEPS)
        _int_in("data_workers", self.data_workers, 0, MAX_DATA_WORKERS)
        if not (_finite(self.checkpoint_every_minutes) and self.checkpoint_every_minutes > 0):
            raise BadInput("checkpoint_every_minutes: must be a positive number of minutes")
        if self.utilization is not None and not (_finite(self.utilization) and 0 < self.utilization <= 1):
            raise BadInput(f"utilization: must be in (0, 1], got {self.utilization!r}")
        if self.hardware is not None:
            units.hardware(self.hardware)
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise BadInput(f"compute_dtype: {self.compute_dtype!r} is not supported; "
                           f"{closest(self.compute_dtype, COMPUTE_DTYPES)}"
                           f"use one of {', '.join(COMPUTE_DTYPES)}")
        # typed against the recipe of the model's family (NFNet: OptimConfig; ViT: ViTRecipe):
        # unknown keys, types, ranges
        registry.recipe_config(self.model, self.optimizer)
        if self.trainable not in TRAINABLE:
            raise BadInput(f"trainable: {self.trainable!r} is not one of {', '.join(TRAINABLE)}; "
                           f"{closest(self.trainable, TRAINABLE)}e.g. trainable = \"classifier\"")
        if self.trainable != "all" and self.parent_trial_id is None:
            raise BadInput("trainable: only a fine-tune run (parent_trial_id) may freeze layers; "
                           "use trainable = \"all\" or name a parent")
        if not (_finite(self.sam_rho) and 0 <= self.sam_rho <= MAX_SAM_RHO):
            raise BadInput(f"sam_rho: must be a number in [0, {MAX_SAM_RHO:g}] (0: no SAM), got {self.sam_rho!r}")
        if self.parent_trial_id is not None and not (0 < len(self.parent_trial_id) <= MAX_PARENT_ID):
            raise BadInput(f"parent_trial_id: must be 1 to {MAX_PARENT_ID} characters, got "
                           f"{len(self.parent_trial_id)}; give the parent's trial id")
        if not self.reset_classifier and self.parent_trial_id is None:
            raise BadInput("reset_classifier: only a fine-tune run (parent_trial_id) keeps a parent's classifier")
        if self.parent_workdir is not None and self.parent_trial_id is None:
            raise BadInput("parent_workdir: given without parent_trial_id; name the parent run too")
        from scaling.data.augment import AugmentConfig
        from scaling.train.progressive import Progressive

        AugmentConfig.from_dict(self.augment)  # typed: unknown keys, types, ranges
        Progressive.from_dict(self.progressive, resolution=self.resolution)  # typed, below the resolution
        return self

    def _check_plain_types(self) -> None:
        """Flags must be booleans and names strings: a TOML `tensorboard = "no"` or
        `hardware = 4` would otherwise pass as truthy or fail deep inside a trial."""
        for f in dataclasses.fields(self):
            v, kind = getattr(self, f.name), str(f.type)
            if kind == "bool" and not isinstance(v, bool):
                raise BadInput(f"{f.name}: {v!r} is not true or false; write it without quotes")
            if kind.startswith("str") and not (isinstance(v, str) or (v is None and "None" in kind)):
                raise BadInput(f"{f.name}: {v!r} is not a string; write it in quotes")
            if kind.startswith("int") and v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise BadInput(f"{f.name}: {v!r} is not a whole number")

    # ---- JSON -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) so equal configs give equal strings and hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise BadInput(f"{key}: not a TrainConfig field; {closest(key, known)}"
                               f"known fields: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BadInput(f"config: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None
        if not isinstance(data, dict):
            raise BadInput("config: must be a JSON object of TrainConfig fields")
        return cls.from_dict(data)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise BadInput(f"{name}: must be a positive integer, got {v!r}")


def _int_in(name: str, v: Any, low: int, high: int) -> None:
    """A whole number in [low, high], or BadInput naming the field and the range."""
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise BadInput(f"{name}: must be a whole number in [{low:,}, {high:,}], got {v!r}")


# ---- lists derived from the declared roles (never written by hand) -------------------
def _fields_where(pred) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if pred(f.metadata))


IDENTITY_FIELDS = frozenset(_fields_where(lambda m: m["role"] == IDENTITY))
OPERATIONAL_FIELDS = frozenset(_fields_where(lambda m: m["role"] == OPERATIONAL))
SHAPE_FIELDS = _fields_where(lambda m: m["shape"])  # in declaration order
GRID_OWNED = frozenset(_fields_where(lambda m: m["grid"]))


def field_default(name: str) -> Any:
    """The declared default of a TrainConfig field (a factory is called)."""
    f = TrainConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def identity_of(config: dict[str, Any]) -> dict[str, Any]:
    """The identity fields of a (sparse) trial config that differ from their defaults.

    This is what a trial id hashes (id version 2) and what a resume must match: an
    operational field never enters it, and a field left at its default is the same as a
    field absent, so adding a field with a default changes no existing id.
    """
    return {k: v for k, v in config.items()
            if k in IDENTITY_FIELDS and v != field_default(k)}


def shape_of(config: dict[str, Any]) -> dict[str, Any]:
    """The compile-shape fields of a trial config: grid-owned ones always (the grid sets
    them in every trial), recipe ones only when they depart from their defaults (so a
    shape field added later leaves every stored shape key as it was)."""
    return {k: config.get(k) for k in SHAPE_FIELDS
            if k in GRID_OWNED or config.get(k, field_default(k)) != field_default(k)}


def identity_hash(config: "TrainConfig") -> str:
    """SHA-256 of a run's identity (what its checkpoints are bound to)."""
    import hashlib

    text = json.dumps(identity_of(config.to_dict()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
