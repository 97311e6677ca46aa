"""The architecture families, one record each; everything that handles "a model" asks here.

A family is (docs/models.md#the-family-registry):
  - a jax-free config dataclass and its name parser (`get_config`, `model_name`);
  - its variant table as data, each row with its source (`variants`);
  - a jax-free counter: params and MACs per example at a resolution and channel count
    (`count`; FLOPs = 2 x MACs, training = 3 x forward: `ModelCounts`);
  - its default training recipe: a jax-free, typed and range-checked dataclass that a
    spec's or the CLI's `optimizer` table is validated against (`recipe`);
  - the spec keys of its continuous sweep family (`grid_keys`, `grid_names`);
  - its jax side, named by "module:attribute" strings and imported only when a model is
    built (`load`): the Flax module class (`module(cfg, dtype=...)`), `init_params(cfg,
    rng, resolution)` drawn on the host, and `make_recipe(recipe_cfg)` -> `scaling.optim.Recipe`
    (the optax chain, the schedule and the update rule). The CPU kernels a family needs
    live in its own module (NFNet: scaling/models/layers.py; ViT: scaling/models/vit.py).

Pure Python on purpose, like config.py and counts.py: `sweeps` and `analysis` resolve
names, families and counts without jax. Adding a family means adding its record to
`FAMILIES` and writing the family's own files; nothing else names a family.

The family of a model is read from its NAME ("ViT-S/16" -> vit, "F0" and
"nfnet-d0.5-w0.125" -> nfnet), so no trial config carries a new field and every NFNet
trial id is unchanged.
"""
from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from scaling.errors import BadInput, closest
from scaling.models import config as nfnet_config
from scaling.models import counts as nfnet_counts
from scaling.models import vit_config, vit_counts
from scaling.models.counts import ModelCounts
from scaling.optim_config import OptimConfig


@dataclass(frozen=True)
class Family:
    name: str  # the store's `family` column
    title: str
    config_type: type
    presets: tuple[str, ...]  # canonical names of the named variants
    variants: Mapping[str, Mapping]  # the variant table as data; every row has "source"
    owns: Callable[[str], bool]  # is this name spelt as one of this family's?
    get_config: Callable[..., Any]  # (name, *, num_classes, **overrides) -> config
    model_name: Callable[[Any], str]  # config -> canonical name (get_config parses it back)
    count: Callable[..., ModelCounts]  # (config, resolution, *, channels=3)
    shape: Callable[[Any], dict]  # shape coordinates for model-info (and the store)
    member: Callable[..., Any]  # (num_classes=..., **shape) -> the continuous-family member of that shape
    summary: Callable[[Any], str]  # the architecture in a few words, for model-info
    min_resolution: Callable[[Any], tuple[int, str]]  # (pixels, why)
    recipe: type  # the recipe dataclass: from_dict, warmup_steps(total), label_smoothing
    grid_keys: tuple[str, ...]  # spec keys of the continuous family
    grid_names: Callable[[dict, str], list[str]]  # (grid table, "grid.") -> canonical names
    example: str  # a family name for error messages
    module: str  # "module:attr" of the Flax module class: module(cfg, dtype=...)
    init: str  # "module:attr" of init_params(cfg, rng, resolution)
    make_recipe: str  # "module:attr" of make_recipe(recipe_cfg) -> scaling.optim.Recipe
    references: str  # docs/references.md anchor of its sources

    def load(self, part: str) -> Any:
        """Import the family's jax side ("module", "init" or "make_recipe"); this is the
        only place a family's jax module is imported by name."""
        target = getattr(self, part)
        module_name, _, attr = target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


# --------------------------------------------------------------------------- NFNet
def _positive_numbers(value: Any, key: str) -> tuple[float, ...]:
    """A spec list of positive finite numbers (one line naming the key on error)."""
    value = value if isinstance(value, list) else [value]
    if not value:
        raise BadInput(f"{key}: empty list; give at least one value")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadInput(f"{key}: {v!r} is not a number; use numbers like [0.5, 1, 2]")
        if not math.isfinite(v) or v <= 0:
            raise BadInput(f"{key}: {v!r} must be a positive finite number; remove or fix it")
        out.append(float(v))
    if len(set(out)) != len(out):
        dup = next(v for v in out if out.count(v) > 1)
        raise BadInput(f"{key}: duplicate entry {dup!r}; list each value once")
    return tuple(out)


def _nfnet_grid_names(table: dict, where: str) -> list[str]:
    """depth_mults x width_mults of the continuous NFNet family."""
    if "depth_mults" not in table or "width_mults" not in table:
        missing = "depth_mults" if "depth_mults" not in table else "width_mults"
        raise BadInput(f"{where}{missing}: missing; the family grid needs both depth_mults and width_mults")
    depths = _positive_numbers(table["depth_mults"], f"{where}depth_mults")
    widths = _positive_numbers(table["width_mults"], f"{where}width_mults")
    return [nfnet_config.model_name(nfnet_config.family_config(d, w, num_classes=1))
            for d in depths for w in widths]


def _nfnet_owns(name: str) -> bool:
    key = str(name).strip().lower()
    return key.startswith("nfnet-") or bool(nfnet_config._PRESET_RE.match(key))


def _nfnet_count(cfg, resolution: int, *, channels: int = 3) -> ModelCounts:
    if channels == 3:
        return nfnet_counts.count(cfg, resolution)
    if "channels" not in inspect.signature(nfnet_counts.count).parameters:
        raise BadInput(f"channels: NFNet counts take RGB input (3 channels), got {channels}")
    return nfnet_counts.count(cfg, resolution, channels=channels)


def _nfnet_shape(cfg) -> dict:
    return {"depth_mult": cfg.depth_mult, "width_mult": cfg.width_mult}


NFNET = Family(
    name="nfnet",
    title="NFNet",
    config_type=nfnet_config.NFNetConfig,
    presets=nfnet_config.PRESET_NAMES,
    variants={name: {**row, "source": "[B21] official code's variant table"}
              for name, row in nfnet_config.PRESETS.items()},
    owns=_nfnet_owns,
    get_config=nfnet_config.get_config,
    model_name=nfnet_config.model_name,
    count=_nfnet_count,
    shape=_nfnet_shape,
    member=lambda *, num_classes, depth_mult, width_mult: nfnet_config.family_config(
        depth_mult, width_mult, num_classes=num_classes),
    summary=lambda cfg: f"depths {list(cfg.depths)}, widths {list(cfg.widths)}",
    min_resolution=lambda cfg: (8, "the NFNet stem's 8x downsampling"),
    recipe=OptimConfig,
    grid_keys=("depth_mults", "width_mults"),
    grid_names=_nfnet_grid_names,
    example="nfnet-d1-w0.125",
    module="scaling.models.nfnet:NFNet",
    init="scaling.models.nfnet:init_params",
    make_recipe="scaling.optim:make_recipe",
    references="docs/references.md#nfnet-architecture-and-recipe",
)

# ----------------------------------------------------------------------------- ViT
VIT = Family(
    name=vit_config.FAMILY,
    title="ViT",
    config_type=vit_config.ViTConfig,
    presets=vit_config.PRESET_NAMES,
    variants=vit_config.VARIANTS,
    owns=vit_config.owns,
    get_config=vit_config.get_config,
    model_name=vit_config.model_name,
    count=vit_counts.count,
    shape=vit_config.shape_of,
    member=lambda *, num_classes, width, depth, mlp_dim, num_heads, patch_size, pool=vit_config.FAMILY_POOL:
        vit_config.family_config(width, depth, mlp_dim, num_heads, patch_size, num_classes=num_classes, pool=pool),
    summary=lambda cfg: (f"width {cfg.width}, depth {cfg.depth}, MLP {cfg.mlp_dim}, {cfg.num_heads} heads, "
                         f"patch {cfg.patch_size}, {cfg.pool} pooling"),
    min_resolution=vit_config.min_resolution,
    recipe=vit_config.ViTRecipe,
    grid_keys=vit_config.GRID_KEYS,
    grid_names=vit_config.grid_names,
    example="vit-w64-d4-m256-h2-p4",
    module="scaling.models.vit:ViT",
    init="scaling.models.vit:init_params",
    make_recipe="scaling.models.vit:make_recipe",
    references="docs/references.md#vision-transformers",
)

# --------------------------------------------------------------- EfficientNetV2, G16
from scaling.models import effnetv2_config, effnetv2_counts, g16_config, g16_counts  # noqa: E402
from scaling.models.mbconv_config import MBConvRecipe  # noqa: E402

EFFNETV2 = Family(
    name=effnetv2_config.FAMILY,
    title="EfficientNetV2",
    config_type=effnetv2_config.EffNetV2Config,
    presets=effnetv2_config.PRESET_NAMES,
    variants={f"EfficientNetV2-{k}": row for k, row in effnetv2_config.VARIANTS.items()},
    owns=effnetv2_config.owns,
    get_config=effnetv2_config.get_config,
    model_name=effnetv2_config.model_name,
    count=effnetv2_counts.count,
    shape=effnetv2_config.shape_of,
    member=effnetv2_config.member,
    summary=effnetv2_config.summary,
    min_resolution=effnetv2_config.min_resolution,
    recipe=MBConvRecipe,
    grid_keys=effnetv2_config.GRID_KEYS,
    grid_names=effnetv2_config.grid_names,
    example="effnetv2-d0.25-w0.25",
    module="scaling.models.mbconv:MBConvNet",
    init="scaling.models.mbconv:init_params",
    make_recipe="scaling.models.mbconv:make_recipe",
    references="docs/references.md#efficientnetv2",
)

G16 = Family(
    name=g16_config.FAMILY,
    title="G16-EfficientNet",
    config_type=g16_config.G16Config,
    presets=g16_config.PRESET_NAMES,
    variants={f"G16-EfficientNet-{k}": row for k, row in g16_config.VARIANTS.items()},
    owns=g16_config.owns,
    get_config=g16_config.get_config,
    model_name=g16_config.model_name,
    count=g16_counts.count,
    shape=g16_config.shape_of,
    member=g16_config.member,
    summary=g16_config.summary,
    min_resolution=g16_config.min_resolution,
    recipe=MBConvRecipe,
    grid_keys=g16_config.GRID_KEYS,
    grid_names=g16_config.grid_names,
    example="g16-d0.25-w0.25",
    module="scaling.models.mbconv:MBConvNet",
    init="scaling.models.mbconv:init_params",
    make_recipe="scaling.models.mbconv:make_recipe",
    references="docs/references.md#g16-efficientnet-and-proxy-norm",
)

# ------------------------------------------------------------------------- CoAtNet
from scaling.models import coatnet_config, coatnet_counts  # noqa: E402

COATNET = Family(
    name=coatnet_config.FAMILY,
    title="CoAtNet",
    config_type=coatnet_config.CoAtNetConfig,
    presets=coatnet_config.PRESET_NAMES,
    variants={f"CoAtNet-{k}": row for k, row in coatnet_config.VARIANTS.items()},
    owns=coatnet_config.owns,
    get_config=coatnet_config.get_config,
    model_name=coatnet_config.model_name,
    count=coatnet_counts.count,
    shape=coatnet_config.shape_of,
    member=coatnet_config.member,
    summary=coatnet_config.summary,
    min_resolution=coatnet_config.min_resolution,
    recipe=coatnet_config.CoAtNetRecipe,
    grid_keys=coatnet_config.GRID_KEYS,
    grid_names=coatnet_config.grid_names,
    example="coatnet-d0.5-w0.25",
    module="scaling.models.coatnet:CoAtNet",
    init="scaling.models.coatnet:init_params",
    make_recipe="scaling.models.coatnet:make_recipe",
    references="docs/references.md#coatnet",
)

# Order matters only for error messages and listings; NFNet first.
FAMILIES: dict[str, Family] = {f.name: f for f in (NFNET, VIT, EFFNETV2, G16, COATNET)}
DEFAULT_FAMILY = "nfnet"  # a run given by depth/width multipliers (TrainConfig) is an NFNet


# --------------------------------------------------------------------------- lookups
def family(name: str) -> Family:
    """The family called `name` ("nfnet", "vit")."""
    key = str(name).strip().lower()
    if key not in FAMILIES:
        raise BadInput(f"family: unknown family {name!r}; {closest(key, FAMILIES)}"
                       f"known: {', '.join(FAMILIES)}")
    return FAMILIES[key]


def family_of(model: Any) -> Family:
    """The family of a model name or config object."""
    if isinstance(model, str):
        for fam in FAMILIES.values():
            if fam.owns(model):
                return fam
        raise _unknown(model)
    for fam in FAMILIES.values():
        if isinstance(model, fam.config_type):
            return fam
    raise BadInput(f"model: {type(model).__name__} is not a model config of any family")


def _unknown(name: str) -> BadInput:
    presets = [p for fam in FAMILIES.values() for p in fam.presets]
    guess = str(name).strip()
    hint = closest(guess, presets) or closest(guess.upper().replace("NFNET-", "").replace("O", "0"), presets)
    examples = " or ".join(repr(f.example) for f in FAMILIES.values())
    return BadInput(f"model: unknown model {name!r}; {hint}use a named variant "
                    f"({', '.join(nfnet_config.PRESET_NAMES[:2])}, ..., 'ViT-S/16', ...; "
                    f"`scaling model-info --list`) or a family name like {examples}")


def get_config(name: str, *, num_classes: int = 1000, **overrides) -> Any:
    """The config of any family's model by its name (canonical or not)."""
    return family_of(name).get_config(name, num_classes=num_classes, **overrides)


def model_name(cfg: Any) -> str:
    """Canonical name of any family's config; `get_config` parses it back."""
    return family_of(cfg).model_name(cfg)


def canonical_name(name: str) -> str:
    """One spelling per model ("f3+" -> "F3+", "vit-s/16" -> "ViT-S/16")."""
    return model_name(get_config(name))


def count(cfg: Any, resolution: int, *, channels: int = 3) -> ModelCounts:
    """Params and forward MACs per example of any family's config."""
    return family_of(cfg).count(cfg, resolution, channels=channels)


def family_name(model: str) -> str:
    """The family column of a model name ("ViT-S/16" -> "vit")."""
    return family_of(model).name


def run_family(model: str | None) -> Family:
    """The family of a run (TrainConfig): by its model name, NFNet when the run is given
    by depth/width multipliers (model None)."""
    return FAMILIES[DEFAULT_FAMILY] if model is None else family_of(model)


def recipe_config(model: str | None, optimizer: dict) -> Any:
    """A run's `optimizer` table validated against its family's recipe dataclass."""
    return run_family(model).recipe.from_dict(optimizer)


def grid_keys() -> set[str]:
    """Every family's spec grid keys."""
    return {k for fam in FAMILIES.values() for k in fam.grid_keys}


def grid_names(table: dict, where: str) -> list[str]:
    """Canonical names of the continuous-family members a grid table asks for, family by
    family (a family whose keys are absent contributes none)."""
    names: list[str] = []
    for fam in FAMILIES.values():
        if any(k in table for k in fam.grid_keys):
            names += fam.grid_names(table, where)
    return names
