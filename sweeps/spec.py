"""Sweep specs: a TOML file -> a validated `SweepSpec` -> a list of `Trial`s.

A spec names the data and the recipe once and then either a grid (models x epoch
budgets x learning rates) or IsoFLOP budgets (for each budget and model, the epochs
that spend it). Every mistake is ONE `BadInput` line naming the key and the fix, so
`scaling sweep run` exits 2 before anything is written to the store (docs/sweeps.md).
No jax here: model names, families and sizes come from the pure family registry
(`scaling.models.registry`).
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.errors import BadInput, closest
from scaling.models import registry  # pure: names, families, counts and recipes of every model family
from scaling.train.config import GRID_OWNED, OPERATIONAL_FIELDS, TrainConfig, shape_of
from sweeps.ids import canonical_json, trial_id  # noqa: F401  (re-exported: the spec's ids)

# Keys each table accepts; anything else is an error with a "did you mean".
TOP_KEYS = {
    "name", "description", "dataset", "num_classes", "train_examples", "heldout_examples",
    "batch_size", "resolution", "eval_resolution", "seeds", "report_unit",
    "recipe", "grid", "isoflop", "lr_extension", "finetune",
}
# A [grid] / [isoflop] table, or each table of a [[grid]] / [[isoflop]] array (one group of
# models with its own budgets, LR grid and recipe; e.g. one per architecture family). The
# continuous families' own keys (depth_mults/width_mults for NFNet, vit_* for ViT) come
# from the family registry (scaling/models/registry.py).
GRID_KEYS = {"models", "depth_mults", "width_mults", "epochs", "lr", "recipe"} | registry.grid_keys()
ISOFLOP_KEYS = {"budgets", "unit", "models", "depth_mults", "width_mults", "lr", "recipe"} | registry.grid_keys()
LR_KEYS = {"centre", "center", "steps", "values"}
EXTENSION_KEYS = {"enabled", "max_steps", "min_lr", "max_lr"}
# [finetune]: the downstream task and recipe of the fine-tune trials, and their parents.
FINETUNE_KEYS = {"dataset", "fallback_dataset", "resolution", "eval_resolution", "batch_size", "epochs", "lr",
                 "optimizer", "augment", "sam_rho", "trainable", "reset_classifier", "parents"}
PARENT_RULES = ("best", "all")  # the best-LR run of every (model, epochs, seed) cell, or every run
BUNDLED_DIR = Path(__file__).parent / "specs"
MAX_NAME = 100  # a sweep's name: its trials/<name>/ folder and the store's column (200)
MAX_DATASET = 200  # the store's `dataset` column
MAX_LR_STEPS = 20  # factor-2 steps each side of an LR centre (2**20: six decades)


@dataclass(frozen=True)
class LRExtension:
    """When a group's best LR sits on its grid edge, try the next factor-2 value out.

    Bounded by `max_steps` extra steps beyond each edge of the original grid and by
    [min_lr, max_lr]; [S23] tunes LR on a factor-2 grid
    (docs/references.md#epoch-budgets-and-the-learning-rate-grid).
    """

    enabled: bool = True
    max_steps: int = 2
    min_lr: float = 0.0
    max_lr: float = math.inf

    def to_json(self) -> dict:
        return {"enabled": self.enabled, "max_steps": self.max_steps,
                "min_lr": self.min_lr, "max_lr": None if math.isinf(self.max_lr) else self.max_lr}

    @classmethod
    def from_json(cls, d: dict) -> "LRExtension":
        return cls(d["enabled"], d["max_steps"], d["min_lr"],
                   math.inf if d.get("max_lr") is None else d["max_lr"])


@dataclass(frozen=True)
class FinetuneSpec:
    """A spec's [finetune] table: each parent pre-training run is fine-tuned on `dataset`
    at every (epochs, lr) here, with `recipe` (optimizer, augment, sam_rho, trainable).
    `parents`: "best" (the best-LR finished run of every cell, once its LR search has
    settled), "all" (every finished run), or a tuple of stored trial ids."""

    dataset: str
    num_classes: int
    channels: int
    resolution: int
    eval_resolution: int
    batch_size: int
    epochs: tuple[float, ...]
    lrs: tuple[float, ...]
    recipe: dict = field(default_factory=dict)
    parents: str | tuple[str, ...] = "best"

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "num_classes": self.num_classes, "channels": self.channels,
                "resolution": self.resolution, "eval_resolution": self.eval_resolution,
                "batch_size": self.batch_size, "epochs": list(self.epochs), "lrs": list(self.lrs),
                "recipe": self.recipe, "parents": self.parents if isinstance(self.parents, str)
                else list(self.parents)}

    @classmethod
    def from_json(cls, d: dict) -> "FinetuneSpec":
        parents = d["parents"] if isinstance(d["parents"], str) else tuple(d["parents"])
        return cls(d["dataset"], d["num_classes"], d["channels"], d["resolution"], d["eval_resolution"],
                   d["batch_size"], tuple(d["epochs"]), tuple(d["lrs"]), dict(d["recipe"]), parents)


@dataclass(frozen=True)
class ModelRef:
    """A model name of any family ("F0", "F3+", "ViT-S/16", "vit-w64-d4-m256-h2-p4"), or a
    point (depth, width) of the continuous NFNet family."""

    name: str | None = None
    depth_mult: float | None = None
    width_mult: float | None = None


@dataclass(frozen=True)
class Trial:
    """One training run: `config` is the JSON the trainer's TrainConfig is built from."""

    sweep: str
    config: dict
    reason: str = "grid"
    params: int | None = None
    flops_per_example: float | None = None  # forward, at train resolution, 2 per MAC
    depth_mult: float | None = 1.0  # NFNet: as recorded by the model config (F<n> has n+1); None for other families
    width_mult: float | None = 1.0
    family: str | None = None  # architecture family (registry); None: read from the model name

    @property
    def trial_id(self) -> str:
        return trial_id(self.sweep, self.config)

    @property
    def shape(self) -> str:
        return shape_key(self.config)


@dataclass(frozen=True)
class SweepGroup:
    """Models that share budgets, an LR grid and a recipe: the spec's one [grid]/[isoflop]
    table, or one table of a [[grid]]/[[isoflop]] array (e.g. one per architecture family,
    each with the LR grid and optimizer table of its own recipe)."""

    models: tuple[ModelRef, ...]
    lrs: tuple[float, ...]
    epochs: tuple[float, ...] = ()  # grid mode
    budgets: tuple[float, ...] = ()  # IsoFLOP mode, in `budget_unit`
    budget_unit: str = "flops"
    recipe: dict = field(default_factory=dict)  # the spec's [recipe], updated by the group's own
    where: str = "grid."  # the spec key of its table, for messages ("grid." or "grid[1].")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    dataset: str
    num_classes: int
    batch_size: int
    resolution: int
    eval_resolution: int
    seeds: tuple[int, ...]
    models: tuple[ModelRef, ...]
    lrs: tuple[float, ...]
    epochs: tuple[float, ...] = ()  # grid mode
    budgets: tuple[float, ...] = ()  # IsoFLOP mode, in `budget_unit`
    budget_unit: str = "flops"
    train_examples: int | None = None
    heldout_examples: int | None = None
    recipe: dict = field(default_factory=dict)
    lr_extension: LRExtension = LRExtension()
    report_unit: str = "tpu-v4-core-hours"
    description: str = ""
    # False when the dataset lives at a path this machine lacks (planning a pod's sweep
    # from a laptop): its existence and sizes were taken on the spec's word.
    dataset_checked: bool = True
    # The groups of a [[grid]] / [[isoflop]] array; empty for one [grid] / [isoflop] table,
    # whose models, LRs, budgets and recipe are the fields above. With groups, those fields
    # hold the union over the groups (models, LRs, budgets) and the top-level [recipe].
    groups: tuple[SweepGroup, ...] = ()
    # Input channels of the data (1 for grayscale sources such as Fashion-MNIST): the
    # spec's parameter and FLOP counts are those of the network the trainer builds.
    channels: int = 3
    finetune: FinetuneSpec | None = None  # the [finetune] table, if any

    @property
    def mode(self) -> str:
        return "isoflop" if self.budgets else "grid"

    def all_groups(self) -> tuple[SweepGroup, ...]:
        """The groups to expand: the array's, or the one table's."""
        if self.groups:
            return self.groups
        return (SweepGroup(self.models, self.lrs, self.epochs, self.budgets, self.budget_unit, self.recipe,
                           f"{self.mode}."),)


# ---------------------------------------------------------------- hashing

def shape_key(config: dict) -> str:
    """What one compilation of the train step depends on: same key, same compiled step.

    The fields are those TrainConfig declares compile-shape; the learning rate and the
    epoch budget are runtime inputs of the step (docs/training.md), so trials that differ
    only in those share a compilation.
    """
    return canonical_json(shape_of(config))


# ---------------------------------------------------------------- validation helpers

def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise BadInput(f"{where}{key}: unknown key; {closest(key, allowed)}"
                           f"allowed keys: {', '.join(sorted(allowed))}")


def _positive_list(value: Any, key: str, kind: type = float, *, allow_empty: bool = False) -> tuple:
    if not isinstance(value, list):
        value = [value]
    if not value and not allow_empty:
        raise BadInput(f"{key}: empty list; give at least one value")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadInput(f"{key}: {v!r} is not a number; use numbers like [0.5, 1, 2]")
        if kind is int and (v != int(v)):
            raise BadInput(f"{key}: {v!r} is not a whole number; use integers")
        if not math.isfinite(v) or v <= 0:
            raise BadInput(f"{key}: {v!r} must be a positive finite number; remove or fix it")
        out.append(kind(v))
    if len(set(out)) != len(out):
        dup = next(v for v in out if out.count(v) > 1)
        raise BadInput(f"{key}: duplicate entry {dup!r}; list each value once")
    return tuple(out)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, list):
        raise BadInput(f"{key}: expected one whole number, got a list; give a single value")
    return _positive_list([value], key, int)[0]


def _lr_grid(value: Any, key: str) -> tuple[float, ...]:
    """LRs as a list, or {centre, steps}: centre x 2^k for k in -steps..steps."""
    if isinstance(value, dict):
        _check_keys(value, LR_KEYS, f"{key}.")
        if "values" in value:
            if len(value) > 1:
                raise BadInput(f"{key}: give either 'values' or 'centre'+'steps', not both; remove one")
            return tuple(sorted(_positive_list(value["values"], f"{key}.values")))
        centre_key = "centre" if "centre" in value else "center"
        if centre_key not in value:
            raise BadInput(f"{key}.centre: missing; give e.g. {key} = {{ centre = 1.6, steps = 2 }}")
        centre = _positive_list(value[centre_key], f"{key}.{centre_key}")[0]
        steps = value.get("steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= MAX_LR_STEPS:
            raise BadInput(f"{key}.steps: {steps!r} must be a whole number in [0, {MAX_LR_STEPS}] "
                           "(factor-2 steps each side)")
        return tuple(centre * 2.0 ** k for k in range(-steps, steps + 1))
    return tuple(sorted(_positive_list(value, key)))


def _model_refs(table: dict, where: str) -> tuple[ModelRef, ...]:
    refs: list[ModelRef] = []
    if "models" in table:
        names = table["models"] if isinstance(table["models"], list) else [table["models"]]
        if not names:
            raise BadInput(f"{where}models: empty list; name at least one model, e.g. [\"F0\", \"F1\"]")
        for n in names:
            if not isinstance(n, str):
                raise BadInput(f"{where}models: {n!r} is not a model name; use names like \"F0\" or \"F3+\"")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise BadInput(f"{where}models: duplicate entry {dup!r}; list each model once")
        refs += [ModelRef(name=n) for n in names]
    # The continuous families' axes (NFNet depth_mults x width_mults, ViT vit_widths x ...),
    # as canonical names (get_config parses them back: the same configs, the same ids).
    refs += [ModelRef(name=n) for n in registry.grid_names(table, where)]
    if not refs:
        raise BadInput(f"{where}models: no models; give models = [...] or a family's axes "
                       "(depth_mults and width_mults; vit_widths, vit_depths and vit_patch_sizes)")
    return tuple(refs)


# ---------------------------------------------------------------- models (pure scaling.models)

@dataclass(frozen=True)
class ModelInfo:
    name: str
    depth_mult: float | None  # NFNet's multipliers; None for other families
    width_mult: float | None
    params: int
    flops_per_example: float  # forward FLOPs at the train resolution (2 per MAC)
    train_flops_per_example: float  # 3 x forward (forward + backward; docs/units.md#three-records-per-run)
    family: str = "nfnet"  # the architecture family (scaling/models/registry.py)


def describe_model(ref: ModelRef, *, num_classes: int, resolution: int, channels: int = 3) -> ModelInfo:
    """Resolve a model reference of any family with the pure registry (BadInput if unknown)."""
    from scaling.models.config import family_config

    if ref.name is not None:
        cfg = registry.get_config(ref.name, num_classes=num_classes)
    else:
        cfg = family_config(ref.depth_mult, ref.width_mult, num_classes=num_classes)
    fam = registry.family_of(cfg)
    counts = fam.count(cfg, resolution, channels=channels)
    shape = fam.shape(cfg)
    depth, width = shape.get("depth_mult"), shape.get("width_mult")
    # The canonical name ("f3+" -> "F3+"): one spelling per model, so one trial id.
    return ModelInfo(fam.model_name(cfg), None if depth is None else float(depth),
                     None if width is None else float(width), int(counts.params),
                     float(counts.flops), float(counts.train_flops), fam.name)


# ---------------------------------------------------------------- parsing

def load_spec(path: str | Path, *, require_data: bool = False) -> SweepSpec:
    """Read and validate a spec file; a bare name ("demo") means a bundled spec.

    `require_data`: the dataset must exist here (a run that trains); without it a dataset
    at a path this machine lacks is taken on the spec's word (planning a pod's sweep)."""
    p = Path(path)
    if not p.exists() and (BUNDLED_DIR / f"{p.name}.toml").exists() and p.suffix == "":
        p = BUNDLED_DIR / f"{p.name}.toml"
    if not p.exists():
        bundled = ", ".join(sorted(q.stem for q in BUNDLED_DIR.glob("*.toml")))
        raise BadInput(f"spec: {path} does not exist; give a TOML file or a bundled name ({bundled})")
    if not p.is_file():
        raise BadInput(f"spec: {p} is a folder, not a file; give the path of a TOML spec")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadInput(f"spec: {p} is not a UTF-8 text file (byte {err.start}); give a TOML spec") from None
    except OSError as err:
        raise BadInput(f"spec: cannot read {p} ({err.strerror}); check the path and its permissions") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BadInput(f"spec: {p} is not valid TOML ({str(err).splitlines()[0]}); fix the syntax") from None
    return parse_spec(data, default_name=p.stem, require_data=require_data)


# What a spec may state about its data, and the Dataset attribute it must agree with.
# `resolution` is the training resolution: it defaults to the data's native one but may
# differ from it (real images are resized), so it is derived, never compared.
DATASET_FACTS = {"num_classes": "num_classes", "train_examples": "train_size",
                 "heldout_examples": "heldout_size", "resolution": "native_resolution"}
_COMPARED = ("num_classes", "train_examples", "heldout_examples")
_PATH_KINDS = ("folder", "arrayrecord", "cifar10", "cifar100")  # dataset kinds that name a path


def dataset_facts(dataset: str, *, require: bool):
    """Open the dataset far enough to know its classes and sizes (no pixels are read).

    A dataset whose location does not exist on this machine (a pod's path, planned from a
    laptop) gives None unless `require` (a run that will train on it): then its error.
    """
    from scaling.data.dataset import get_dataset

    kind, _, location = dataset.partition(":")
    kind = kind.strip().lower()
    if not require and (kind == "tfds" or (kind in _PATH_KINDS and location)):
        import glob

        if kind == "tfds" or not glob.glob(location):
            return None
    try:
        return get_dataset(dataset)
    except BadInput as err:
        raise BadInput(f"dataset: {str(err).removeprefix('dataset: ')}") from None


def parse_spec(data: dict, *, default_name: str = "sweep", require_data: bool = False) -> SweepSpec:
    _check_keys(data, TOP_KEYS, "")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise BadInput("name: must be a non-empty string; e.g. name = \"demo\"")
    if len(name) > MAX_NAME:  # the store's column, and the trials/<sweep>/ folder name
        raise BadInput(f"name: {len(name)} characters; use at most {MAX_NAME}")
    if "dataset" not in data:
        raise BadInput("dataset: missing; e.g. dataset = \"procedural\"")
    dataset = data["dataset"]
    if not isinstance(dataset, str) or not dataset:
        raise BadInput("dataset: must be a dataset spec string; e.g. dataset = \"procedural\"")
    if len(dataset) > MAX_DATASET:  # the store's `dataset` column
        raise BadInput(f"dataset: {len(dataset)} characters; the store keeps at most {MAX_DATASET} (move the data "
                       "to a shorter path or link it)")
    if "batch_size" not in data:
        raise BadInput("batch_size: missing; add it to the top level of the spec")
    batch_size = _positive_int(data["batch_size"], "batch_size")
    facts = dataset_facts(dataset, require=require_data)
    stated = {k: _positive_int(data[k], k) for k in DATASET_FACTS if k in data}
    derived = {}
    for key, attr in DATASET_FACTS.items():
        have = getattr(facts, attr) if facts is not None else None
        if key in _COMPARED and key in stated and have is not None and stated[key] != have:
            raise BadInput(f"{key}: the spec says {stated[key]} but dataset {dataset!r} has {have}; "
                           f"remove {key} (it is read from the dataset) or make the two agree")
        derived[key] = stated.get(key, have)
    for key in ("num_classes", "resolution"):
        if derived[key] is None:
            raise BadInput(f"{key}: missing, and dataset {dataset!r} does not say it; add it to the top level")
    num_classes, resolution = derived["num_classes"], derived["resolution"]
    eval_resolution = _positive_int(data.get("eval_resolution", resolution), "eval_resolution")
    train_examples, heldout_examples = derived["train_examples"], derived["heldout_examples"]
    seeds_raw = data.get("seeds", [0])
    seeds_raw = seeds_raw if isinstance(seeds_raw, list) else [seeds_raw]
    if not seeds_raw:
        raise BadInput("seeds: empty list; give at least one seed, e.g. seeds = [0]")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds_raw):
        raise BadInput("seeds: must be whole numbers >= 0; e.g. seeds = [0, 1]")
    if len(set(seeds_raw)) != len(seeds_raw):
        raise BadInput("seeds: duplicate entry; list each seed once")
    recipe = data.get("recipe", {})
    if not isinstance(recipe, dict):
        raise BadInput("recipe: must be a table; write [recipe] with optimizer fields under it")
    for key in recipe:
        if key in GRID_OWNED:
            raise BadInput(f"recipe.{key}: set by the grid, not the recipe; move it to the top level or [grid]")
    _check_recipe_keys(recipe)

    if ("grid" in data) == ("isoflop" in data):
        raise BadInput("grid: give exactly one of [grid] or [isoflop]; remove the other or add one")
    ext_raw = data.get("lr_extension", {})
    if not isinstance(ext_raw, dict):
        raise BadInput("lr_extension: must be a table; write [lr_extension] with enabled/max_steps/min_lr/max_lr")
    _check_keys(ext_raw, EXTENSION_KEYS, "lr_extension.")
    ext = _lr_extension(ext_raw)
    report_unit = data.get("report_unit", "tpu-v4-core-hours")
    _check_unit(report_unit, "report_unit", allow_epochs=False)
    finetune = _finetune(data["finetune"], batch_size, require_data) if "finetune" in data else None
    common = dict(dataset_checked=facts is not None, finetune=finetune,
                  name=name, dataset=dataset, num_classes=num_classes, batch_size=batch_size,
                  resolution=resolution, eval_resolution=eval_resolution, seeds=tuple(seeds_raw),
                  train_examples=train_examples, heldout_examples=heldout_examples, recipe=recipe,
                  lr_extension=ext, report_unit=report_unit,
                  description=str(data.get("description", "")),
                  channels=getattr(facts, "channels", 3))

    mode = "grid" if "grid" in data else "isoflop"
    raw = data[mode]
    if isinstance(raw, list):  # [[grid]] / [[isoflop]]: groups, each with its own LRs and recipe
        if not raw:
            raise BadInput(f"{mode}: empty array; give at least one [[{mode}]] table")
        groups = tuple(_parse_group(t, mode, f"{mode}[{i}].", recipe, train_examples) for i, t in enumerate(raw))
        models = tuple(dict.fromkeys(ref for g in groups for ref in g.models))
        spec = SweepSpec(models=models, lrs=tuple(sorted({lr for g in groups for lr in g.lrs})),
                         epochs=tuple(sorted({e for g in groups for e in g.epochs})),
                         budgets=tuple(sorted({b for g in groups for b in g.budgets})),
                         budget_unit=groups[0].budget_unit, groups=groups, **common)
    else:
        g = _parse_group(raw, mode, f"{mode}.", recipe, train_examples)
        spec = SweepSpec(models=g.models, lrs=g.lrs, epochs=g.epochs, budgets=g.budgets, budget_unit=g.budget_unit,
                         groups=(g,) if g.recipe != recipe else (), **common)
    # Resolving every model now catches unknown names before anything is enqueued.
    for g in spec.all_groups():
        for ref in g.models:
            _model_info(spec, ref, g.where)
    return spec


def _parse_group(table: Any, mode: str, where: str, recipe: dict, train_examples: int | None) -> SweepGroup:
    """One [grid] / [isoflop] table (or one table of the array): models, budgets, LRs and
    the group's own recipe on top of the spec's [recipe]."""
    if not isinstance(table, dict):
        raise BadInput(f"{where.rstrip('.')}: must be a table of models, budgets and lr; write [{mode}] or [[{mode}]]")
    _check_keys(table, GRID_KEYS if mode == "grid" else ISOFLOP_KEYS, where)
    own = table.get("recipe", {})
    if not isinstance(own, dict):
        raise BadInput(f"{where}recipe: must be a table, e.g. recipe = {{ optimizer = {{ weight_decay = 0.0 }} }}")
    for key in own:
        if key in GRID_OWNED:
            raise BadInput(f"{where}recipe.{key}: set by the grid, not the recipe; move it to the top level or [{mode}]")
    _check_keys(own, train_config_fields() - GRID_OWNED, f"{where}recipe.")
    merged = {**recipe, **own}
    if mode == "grid":
        for key in ("epochs", "lr"):
            if key not in table:
                raise BadInput(f"{where}{key}: missing; the grid needs models, epochs and lr")
        return SweepGroup(models=_model_refs(table, where),
                          epochs=tuple(sorted(_positive_list(table["epochs"], f"{where}epochs"))),
                          lrs=_lr_grid(table["lr"], f"{where}lr"), recipe=merged, where=where)
    for key in ("budgets", "lr"):
        if key not in table:
            raise BadInput(f"{where}{key}: missing; IsoFLOP specs need budgets, unit, models and lr")
    unit = table.get("unit", "flops")
    _check_unit(unit, f"{where}unit")
    if train_examples is None:
        raise BadInput("train_examples: missing; IsoFLOP budgets need the training-set size to turn compute into epochs")
    return SweepGroup(models=_model_refs(table, where),
                      budgets=tuple(sorted(_positive_list(table["budgets"], f"{where}budgets"))),
                      budget_unit=unit, lrs=_lr_grid(table["lr"], f"{where}lr"), recipe=merged, where=where)


def _finetune(raw: Any, batch_size: int, require_data: bool) -> FinetuneSpec:
    """[finetune]: every key typed and ranged; the downstream data opened like the spec's own."""
    if not isinstance(raw, dict):
        raise BadInput("finetune: must be a table; write [finetune] with dataset, epochs and lr under it")
    _check_keys(raw, FINETUNE_KEYS, "finetune.")
    for key in ("dataset", "epochs", "lr"):
        if key not in raw:
            raise BadInput(f"finetune.{key}: missing; [finetune] needs dataset, epochs and lr")
    for key in ("dataset", "fallback_dataset"):
        v = raw.get(key, "x")
        if not isinstance(v, str) or not v or len(v) > MAX_DATASET:
            raise BadInput(f"finetune.{key}: must be a dataset spec string of 1 to {MAX_DATASET} characters; "
                           "e.g. dataset = \"fashion-mnist\"")
    dataset = raw["dataset"]
    if "fallback_dataset" in raw and not _present(dataset):
        dataset = raw["fallback_dataset"]  # e.g. Fashion-MNIST not fetched on this machine
    try:
        facts = dataset_facts(dataset, require=True)
    except BadInput as err:
        raise BadInput(f"finetune.{err}") from None
    resolution = raw.get("resolution", facts.native_resolution)
    if resolution is None:
        raise BadInput(f"finetune.resolution: missing, and dataset {dataset!r} does not say it; add it")
    resolution = _positive_int(resolution, "finetune.resolution")
    eval_resolution = _positive_int(raw.get("eval_resolution", resolution), "finetune.eval_resolution")
    parents = raw.get("parents", "best")
    if isinstance(parents, list):
        if not parents or not all(isinstance(x, str) and x.strip() for x in parents):
            raise BadInput("finetune.parents: a list must hold trial ids (strings); or use \"best\" or \"all\"")
        if len(set(parents)) != len(parents):
            raise BadInput("finetune.parents: duplicate trial id; list each parent once")
        parents = tuple(x.strip().lower() for x in parents)
    elif parents not in PARENT_RULES:
        raise BadInput(f"finetune.parents: {parents!r} is not one of {', '.join(PARENT_RULES)} or a list of "
                       f"trial ids; {closest(str(parents), PARENT_RULES)}e.g. parents = \"best\"")
    recipe = {k: raw[k] for k in ("optimizer", "augment", "sam_rho", "trainable", "reset_classifier") if k in raw}
    ft = FinetuneSpec(dataset=dataset, num_classes=facts.num_classes, channels=facts.channels,
                      resolution=resolution, eval_resolution=eval_resolution,
                      batch_size=_positive_int(raw.get("batch_size", batch_size), "finetune.batch_size"),
                      epochs=tuple(sorted(_positive_list(raw["epochs"], "finetune.epochs"))),
                      lrs=_lr_grid(raw["lr"], "finetune.lr"), recipe=recipe, parents=parents)
    # The fine-tune fields through TrainConfig's own checks (a model stands in for the parent's).
    probe = dict(recipe, model="F0", dataset=dataset, resolution=resolution, eval_resolution=eval_resolution,
                 batch_size=ft.batch_size, epochs=ft.epochs[0], lr=ft.lrs[0], parent_trial_id="probe")
    try:
        TrainConfig.from_dict(probe).validate()
    except BadInput as err:
        raise BadInput(f"finetune.{err}") from None
    return ft


def _present(dataset: str) -> bool:
    """Are the dataset's files on this machine? (Fashion-MNIST: fetched or installed;
    path kinds: the path exists.) Whether they are intact is checked when it is opened."""
    import glob

    kind, _, rest = dataset.partition(":")
    kind = kind.strip().lower()
    if kind in ("fashion-mnist", "fashion_mnist"):
        from scaling.data import fashion

        options = dict(o.split("=", 1) for o in rest.split(",") if "=" in o)
        try:
            fashion.locate(options.get("dir"))
        except BadInput:
            return False
        return True
    if kind in _PATH_KINDS:
        return bool(rest) and bool(glob.glob(rest))
    return True


def finetune_config(ft: FinetuneSpec, parent_config: dict, parent_id: str, *, epochs: float, lr: float) -> dict:
    """A fine-tune trial's config: the parent's model, seed and operational fields; the
    [finetune] table's data, resolution, batch, budget, LR and recipe; the parent's id."""
    keep = {"model", "depth_mult", "width_mult", "seed", "compute_dtype", "hardware", "utilization"}
    cfg = {k: v for k, v in parent_config.items()
           if k in keep or k in OPERATIONAL_FIELDS and k not in ("workdir", "parent_workdir")}
    cfg.update(ft.recipe)
    cfg.update(dataset=ft.dataset, resolution=ft.resolution, eval_resolution=ft.eval_resolution,
               batch_size=ft.batch_size, epochs=epochs, lr=lr, parent_trial_id=parent_id)
    return cfg


def finetune_trials(spec_name: str, ft: FinetuneSpec, parent_id: str, parent_config: dict,
                    reason: str) -> list[Trial]:
    """Every (epochs, lr) of [finetune] for one parent."""
    info = describe_model(ModelRef(name=parent_config["model"]), num_classes=ft.num_classes,
                          resolution=ft.resolution, channels=ft.channels)
    return [Trial(spec_name, finetune_config(ft, parent_config, parent_id, epochs=e, lr=lr), reason, info.params,
                  info.flops_per_example, info.depth_mult, info.width_mult, info.family)
            for e in ft.epochs for lr in ft.lrs]


def _check_unit(unit: Any, key: str, *, allow_epochs: bool = False) -> None:
    if not isinstance(unit, str):
        raise BadInput(f"{key}: must be a unit name such as \"flops\" or \"tpu-v4-core-hours\"")
    from scaling.units import parse_unit

    try:
        kind = parse_unit(unit).kind
    except BadInput as err:
        raise BadInput(f"{key}: {str(err).removeprefix('unit: ')}") from None
    if kind == "epochs" and not allow_epochs:
        if key == "report_unit":
            raise BadInput(f"{key}: epochs depend on the model, so they cannot total a sweep's compute; "
                           "use flops or an hours unit")
        raise BadInput(f"{key}: epochs are not an IsoFLOP budget; use [grid] epochs = [...] instead")


def _lr_extension(raw: dict) -> LRExtension:
    """[lr_extension], each value of its own type and range (a quoted "false" is no bool)."""
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise BadInput(f"lr_extension.enabled: {enabled!r} is not true or false; write it without quotes")
    max_steps = raw.get("max_steps", LRExtension.max_steps)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 0 <= max_steps <= MAX_LR_STEPS:
        raise BadInput(f"lr_extension.max_steps: {max_steps!r} must be a whole number in [0, {MAX_LR_STEPS}]; "
                       "it bounds the extra factor-2 steps per edge")
    bounds = {}
    for key, default in (("min_lr", 0.0), ("max_lr", math.inf)):
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0 \
                or (key == "min_lr" and math.isinf(v)):
            raise BadInput(f"lr_extension.{key}: {v!r} must be a number >= 0"
                           + (" (max_lr may be inf: no bound)" if key == "max_lr" else ""))
        bounds[key] = float(v)
    if bounds["max_lr"] <= bounds["min_lr"]:
        raise BadInput(f"lr_extension.max_lr: {bounds['max_lr']:g} must exceed min_lr {bounds['min_lr']:g}; fix the bounds")
    return LRExtension(enabled=enabled, max_steps=max_steps, **bounds)



def _check_recipe_keys(recipe: dict) -> None:
    """Recipe keys must be TrainConfig fields that the grid does not own."""
    _check_keys(recipe, train_config_fields() - GRID_OWNED, "recipe.")


def _spec_key(spec: "SweepSpec", field: str) -> str | None:
    """The spec key that sets a TrainConfig field (None: the field comes from [recipe])."""
    grid = spec.mode
    budget = "isoflop.budgets" if spec.mode == "isoflop" else "grid.epochs"
    return {"epochs": budget, "budget": budget, "lr": f"{grid}.lr", "seed": "seeds", "batch_size": "batch_size",
            "resolution": "resolution", "eval_resolution": "eval_resolution", "dataset": "dataset",
            "model": f"{grid}.models", "depth_mult": f"{grid}.depth_mults",
            "width_mult": f"{grid}.width_mults"}.get(field)


def _check_trials(spec: "SweepSpec", trials: list["Trial"]) -> None:
    """Everything a trial needs before it starts, checked for EVERY trial at expansion, so
    bad input is refused with the spec instead of failing trial by trial in the workers:
    each config through TrainConfig's own checks (a recipe value such as compute_dtype =
    "bf17", a seed or learning rate out of range) and, when the training-set size is
    known, its step plan (a batch larger than an epoch, a budget under one step or beyond
    the int32 step counter: scaling.train.budget.plan_steps, as the trainer will run it)."""
    from scaling.train.budget import plan_steps

    for t in trials:
        try:
            TrainConfig.from_dict(t.config).validate()
            if spec.train_examples is not None:
                plan_steps(epochs=t.config["epochs"], budget=None, unit=None, utilization=None,
                           batch_size=spec.batch_size, train_size=spec.train_examples,
                           train_flops_per_example=3.0 * t.flops_per_example)
        except BadInput as err:
            field, _, rest = str(err).partition(":")
            key = _spec_key(spec, field.strip())
            raise BadInput(f"{key}:{rest}" if key else f"recipe.{err}") from None


def train_config_fields() -> set[str]:
    """Field names of the trainer's TrainConfig."""
    import dataclasses

    return {f.name for f in dataclasses.fields(TrainConfig)}


def _model_info(spec: SweepSpec, ref: ModelRef, where: str | None = None) -> ModelInfo:
    try:
        return describe_model(ref, num_classes=spec.num_classes, resolution=spec.resolution,
                              channels=spec.channels)
    except BadInput as err:
        where = where or ("isoflop." if spec.mode == "isoflop" else "grid.")
        raise BadInput(f"{where}{err}") from None


# ---------------------------------------------------------------- expansion

def budget_to_flops(spec: SweepSpec, budget: float, unit: str | None = None) -> float:
    from scaling.units import to_flops

    return float(to_flops(budget, unit or spec.budget_unit))


def base_config(spec: SweepSpec, info: ModelInfo, ref: ModelRef, group: SweepGroup | None = None) -> dict:
    cfg = dict(spec.recipe if group is None else group.recipe)
    # Family points go by their canonical name ("nfnet-d0.5-w0.125"), which
    # get_config parses back: one spelling per model, so one trial id.
    cfg["model"] = info.name
    cfg.update(dataset=spec.dataset, batch_size=spec.batch_size, resolution=spec.resolution,
               eval_resolution=spec.eval_resolution)
    return cfg


def expand(spec: SweepSpec) -> list[Trial]:
    """Every (model, epochs, lr, seed) of the spec as a Trial, in a deterministic order."""
    trials: list[Trial] = []
    for group in spec.all_groups():
        for ref in group.models:
            trials += _expand_model(spec, group, ref)
    _check_trials(spec, trials)
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise BadInput("grid: two entries expand to the same trial (e.g. a preset and its family point); remove the duplicate")
    return trials


def _expand_model(spec: SweepSpec, group: SweepGroup, ref: ModelRef) -> list[Trial]:
    """One model of one group: its epoch budgets (IsoFLOP: the epochs that spend each
    budget on THIS model) x the group's LRs x the seeds."""
    info = _model_info(spec, ref, group.where)
    if spec.mode == "grid":
        epoch_list = list(group.epochs)
    else:
        epoch_list = []
        per_example = _train_flops_per_example(spec, ref, base_config(spec, info, ref, group), info)
        for budget in group.budgets:
            flops = budget_to_flops(spec, budget, group.budget_unit)
            epochs = flops / (per_example * spec.train_examples)
            steps = epochs * spec.train_examples / spec.batch_size
            if steps < 1:
                need = per_example * spec.batch_size
                raise BadInput(
                    f"{group.where}budgets: {budget:g} {group.budget_unit} buys {steps:.3g} steps of {info.name} "
                    f"(one step costs {need:.3g} FLOPs); raise the budget or drop the model")
            epoch_list.append(float(f"{epochs:.6g}"))  # 6 significant digits: a stable hash
    trials = []
    for epochs in epoch_list:
        for lr in group.lrs:
            for seed in spec.seeds:
                cfg = base_config(spec, info, ref, group)
                cfg.update(epochs=epochs, lr=lr, seed=seed)
                trials.append(Trial(spec.name, cfg, "grid", info.params, info.flops_per_example,
                                    info.depth_mult, info.width_mult, info.family))
    return trials


def _train_flops_per_example(spec: SweepSpec, ref: ModelRef, config: dict, info: ModelInfo) -> float:
    """Training FLOPs per example of a trial: at the spec's resolution, or, for a
    progressive-resizing recipe, averaged over its stages' sides as the trainer spends
    them (scaling/train/progressive.py), so an IsoFLOP budget buys what it says."""
    from scaling.train import progressive

    prog = progressive.Progressive.from_dict(config.get("progressive") or {}, resolution=spec.resolution)
    if prog is None:
        return info.train_flops_per_example
    return progressive.mean_train_flops(prog, spec.resolution, lambda side: describe_model(
        ref, num_classes=spec.num_classes, resolution=side, channels=spec.channels).train_flops_per_example)


def total_train_flops(spec: SweepSpec, trials: list[Trial]) -> float | None:
    """Analytic training FLOPs of the whole grid (3 x forward x examples), if the size is known."""
    n = spec.train_examples
    if n is None:
        return None
    per_model: dict[str, float] = {}
    total = 0.0
    for t in trials:
        key = canonical_json([shape_key(t.config), t.config.get("progressive") or {}])
        if key not in per_model:
            ref = ModelRef(name=t.config["model"])
            per_model[key] = _train_flops_per_example(spec, ref, t.config, _model_info(spec, ref))
        total += per_model[key] * t.config["epochs"] * n
    return total
