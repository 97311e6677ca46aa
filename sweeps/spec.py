"""Sweep specs: a TOML file -> a validated `SweepSpec` -> a list of `Trial`s.

A spec names the data and the recipe once and then either a grid (models x epoch
budgets x learning rates) or IsoFLOP budgets (for each budget and model, the epochs
that spend it). Every mistake is ONE `BadInput` line naming the key and the fix, so
`scaling sweep run` exits 2 before anything is written to the store (docs/sweeps.md).
No jax here: model sizes come from the pure `scaling.models.config/counts`.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.errors import BadInput, closest
from scaling.train.config import GRID_OWNED, TrainConfig, shape_of
from sweeps.ids import canonical_json, trial_id  # noqa: F401  (re-exported: the spec's ids)

# Keys each table accepts; anything else is an error with a "did you mean".
TOP_KEYS = {
    "name", "description", "dataset", "num_classes", "train_examples", "heldout_examples",
    "batch_size", "resolution", "eval_resolution", "seeds", "report_unit",
    "recipe", "grid", "isoflop", "lr_extension",
}
GRID_KEYS = {"models", "depth_mults", "width_mults", "epochs", "lr"}
ISOFLOP_KEYS = {"budgets", "unit", "models", "depth_mults", "width_mults", "lr"}
LR_KEYS = {"centre", "center", "steps", "values"}
EXTENSION_KEYS = {"enabled", "max_steps", "min_lr", "max_lr"}
BUNDLED_DIR = Path(__file__).parent / "specs"


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
class ModelRef:
    """A preset name ("F0", "F3+") or a point of the continuous family (depth, width)."""

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
    depth_mult: float = 1.0  # as recorded by the model config (presets: F<n> has n+1)
    width_mult: float = 1.0

    @property
    def trial_id(self) -> str:
        return trial_id(self.sweep, self.config)

    @property
    def shape(self) -> str:
        return shape_key(self.config)


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

    @property
    def mode(self) -> str:
        return "isoflop" if self.budgets else "grid"


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
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise BadInput(f"{key}.steps: {steps!r} must be a whole number >= 0 (factor-2 steps each side)")
        return tuple(centre * 2.0 ** k for k in range(-steps, steps + 1))
    return tuple(sorted(_positive_list(value, key)))


def _model_refs(table: dict, where: str) -> tuple[ModelRef, ...]:
    refs: list[ModelRef] = []
    has_family = "depth_mults" in table or "width_mults" in table
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
    if has_family:
        if "depth_mults" not in table or "width_mults" not in table:
            missing = "depth_mults" if "depth_mults" not in table else "width_mults"
            raise BadInput(f"{where}{missing}: missing; the family grid needs both depth_mults and width_mults")
        depths = _positive_list(table["depth_mults"], f"{where}depth_mults")
        widths = _positive_list(table["width_mults"], f"{where}width_mults")
        refs += [ModelRef(depth_mult=d, width_mult=w) for d in depths for w in widths]
    if not refs:
        raise BadInput(f"{where}models: no models; give models = [...] or depth_mults and width_mults")
    return tuple(refs)


# ---------------------------------------------------------------- models (pure scaling.models)

@dataclass(frozen=True)
class ModelInfo:
    name: str
    depth_mult: float
    width_mult: float
    params: int
    flops_per_example: float  # forward FLOPs at the train resolution (2 per MAC)
    train_flops_per_example: float  # 3 x forward (forward + backward; docs/units.md#three-records-per-run)


def describe_model(ref: ModelRef, *, num_classes: int, resolution: int) -> ModelInfo:
    """Resolve a model reference with the pure config/count modules (BadInput if unknown)."""
    from scaling.models.config import family_config, get_config, model_name
    from scaling.models.counts import count

    if ref.name is not None:
        cfg = get_config(ref.name, num_classes=num_classes)
    else:
        cfg = family_config(ref.depth_mult, ref.width_mult, num_classes=num_classes)
    counts = count(cfg, resolution)
    # The canonical name ("f3+" -> "F3+"): one spelling per model, so one trial id.
    return ModelInfo(model_name(cfg), float(cfg.depth_mult), float(cfg.width_mult), int(counts.params),
                     float(counts.flops), float(counts.train_flops))


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
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise BadInput(f"spec: {p} is not valid TOML ({err}); fix the syntax") from None
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
    if "dataset" not in data:
        raise BadInput("dataset: missing; e.g. dataset = \"procedural\"")
    dataset = data["dataset"]
    if not isinstance(dataset, str) or not dataset:
        raise BadInput("dataset: must be a dataset spec string; e.g. dataset = \"procedural\"")
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
    ext = LRExtension(
        enabled=bool(ext_raw.get("enabled", True)),
        max_steps=int(ext_raw.get("max_steps", LRExtension.max_steps)),
        min_lr=float(ext_raw.get("min_lr", 0.0)),
        max_lr=float(ext_raw.get("max_lr", math.inf)),
    )
    if ext.max_steps < 0:
        raise BadInput("lr_extension.max_steps: must be >= 0; it bounds the extra factor-2 steps per edge")
    if ext.min_lr < 0 or ext.max_lr <= ext.min_lr:
        raise BadInput("lr_extension.max_lr: must exceed min_lr >= 0; fix the bounds")
    report_unit = data.get("report_unit", "tpu-v4-core-hours")
    common = dict(name=name, dataset=dataset, num_classes=num_classes, batch_size=batch_size,
                  resolution=resolution, eval_resolution=eval_resolution, seeds=tuple(seeds_raw),
                  train_examples=train_examples, heldout_examples=heldout_examples, recipe=recipe,
                  lr_extension=ext, report_unit=report_unit,
                  description=str(data.get("description", "")))

    if "grid" in data:
        grid = data["grid"]
        _check_keys(grid, GRID_KEYS, "grid.")
        for key in ("epochs", "lr"):
            if key not in grid:
                raise BadInput(f"grid.{key}: missing; the grid needs models, epochs and lr")
        spec = SweepSpec(models=_model_refs(grid, "grid."), epochs=tuple(sorted(_positive_list(grid["epochs"], "grid.epochs"))),
                         lrs=_lr_grid(grid["lr"], "grid.lr"), **common)
    else:
        iso = data["isoflop"]
        _check_keys(iso, ISOFLOP_KEYS, "isoflop.")
        for key in ("budgets", "lr"):
            if key not in iso:
                raise BadInput(f"isoflop.{key}: missing; IsoFLOP specs need budgets, unit, models and lr")
        unit = iso.get("unit", "flops")
        _check_unit(unit, "isoflop.unit")
        if train_examples is None:
            raise BadInput("train_examples: missing; IsoFLOP budgets need the training-set size to turn compute into epochs")
        spec = SweepSpec(models=_model_refs(iso, "isoflop."), budgets=tuple(sorted(_positive_list(iso["budgets"], "isoflop.budgets"))),
                         budget_unit=unit, lrs=_lr_grid(iso["lr"], "isoflop.lr"), **common)
    # Resolving every model now catches unknown names before anything is enqueued.
    for ref in spec.models:
        _model_info(spec, ref)
    return spec


def _check_unit(unit: Any, key: str) -> None:
    if not isinstance(unit, str):
        raise BadInput(f"{key}: must be a unit name such as \"flops\" or \"tpu-v4-core-hours\"")
    from scaling.units import parse_unit

    try:
        kind = parse_unit(unit).kind
    except BadInput as err:
        raise BadInput(f"{key}: {str(err).removeprefix('unit: ')}") from None
    if kind == "epochs":
        raise BadInput(f"{key}: epochs are not an IsoFLOP budget; use [grid] epochs = [...] instead")


def _check_recipe_keys(recipe: dict) -> None:
    """Recipe keys must be TrainConfig fields that the grid does not own."""
    _check_keys(recipe, train_config_fields() - GRID_OWNED, "recipe.")


def _check_recipe_values(config: dict) -> None:
    """One trial's config through TrainConfig's own checks: a bad recipe value (e.g.
    compute_dtype = "bf17") is refused with the spec, not by every trial as it starts.
    The recipe is the same in every trial, so one suffices."""
    try:
        TrainConfig.from_dict(config).validate()
    except BadInput as err:
        raise BadInput(f"recipe.{err}") from None


def train_config_fields() -> set[str]:
    """Field names of the trainer's TrainConfig."""
    import dataclasses

    return {f.name for f in dataclasses.fields(TrainConfig)}


def _model_info(spec: SweepSpec, ref: ModelRef) -> ModelInfo:
    try:
        return describe_model(ref, num_classes=spec.num_classes, resolution=spec.resolution)
    except BadInput as err:
        where = "isoflop" if spec.mode == "isoflop" else "grid"
        raise BadInput(f"{where}.{err}") from None


# ---------------------------------------------------------------- expansion

def budget_to_flops(spec: SweepSpec, budget: float) -> float:
    from scaling.units import to_flops

    return float(to_flops(budget, spec.budget_unit))


def base_config(spec: SweepSpec, info: ModelInfo, ref: ModelRef) -> dict:
    cfg = dict(spec.recipe)
    # Family points go by their canonical name ("nfnet-d0.5-w0.125"), which
    # get_config parses back: one spelling per model, so one trial id.
    cfg["model"] = info.name
    cfg.update(dataset=spec.dataset, batch_size=spec.batch_size, resolution=spec.resolution,
               eval_resolution=spec.eval_resolution)
    return cfg


def expand(spec: SweepSpec) -> list[Trial]:
    """Every (model, epochs, lr, seed) of the spec as a Trial, in a deterministic order."""
    trials: list[Trial] = []
    for ref in spec.models:
        info = _model_info(spec, ref)
        if spec.mode == "grid":
            epoch_list = list(spec.epochs)
        else:
            epoch_list = []
            for budget in spec.budgets:
                flops = budget_to_flops(spec, budget)
                epochs = flops / (info.train_flops_per_example * spec.train_examples)
                steps = epochs * spec.train_examples / spec.batch_size
                if steps < 1:
                    need = info.train_flops_per_example * spec.batch_size
                    raise BadInput(
                        f"isoflop.budgets: {budget:g} {spec.budget_unit} buys {steps:.3g} steps of {info.name} "
                        f"(one step costs {need:.3g} FLOPs); raise the budget or drop the model")
                epoch_list.append(float(f"{epochs:.6g}"))  # 6 significant digits: a stable hash
        for epochs in epoch_list:
            for lr in spec.lrs:
                for seed in spec.seeds:
                    cfg = base_config(spec, info, ref)
                    cfg.update(epochs=epochs, lr=lr, seed=seed)
                    trials.append(Trial(spec.name, cfg, "grid", info.params, info.flops_per_example,
                                        info.depth_mult, info.width_mult))
    if trials:
        _check_recipe_values(trials[0].config)
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise BadInput("grid: two entries expand to the same trial (e.g. a preset and its family point); remove the duplicate")
    return trials


def total_train_flops(spec: SweepSpec, trials: list[Trial]) -> float | None:
    """Analytic training FLOPs of the whole grid (3 x forward x examples), if the size is known."""
    n = spec.train_examples
    if n is None:
        return None
    per_model: dict[str, ModelInfo] = {}
    total = 0.0
    for t in trials:
        key = shape_key(t.config)
        if key not in per_model:
            per_model[key] = _model_info(spec, ModelRef(name=t.config["model"]))
        total += per_model[key].train_flops_per_example * t.config["epochs"] * n
    return total
