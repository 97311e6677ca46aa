"""What defines an EfficientNetV2 run: the config, the variant table (as data, with
sources), the continuous family and its grid keys. Pure Python (no jax).

  get_config("EfficientNetV2-S")               a named variant (S, M, L [T21])
  family_config(0.25, 0.25, num_classes=10)    V2-S's stages x depth and width multipliers
  get_config("effnetv2-d0.25-w0.25")           the same, by its canonical name
A normaliser other than the default is a suffix: "EfficientNetV2-S-ln", "effnetv2-d0.5-w0.25-ln_pn".
docs/models.md#efficientnetv2; sources docs/references.md#efficientnetv2.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from scaling.errors import BadInput, closest
from scaling.models import mbconv_config as mb
from scaling.models.mbconv_config import Stage

FAMILY = "effnetv2"
# The default batch-independent normaliser replacing [T21]'s BatchNorm
# (docs/models.md#normalisers-instead-of-batchnorm).
DEFAULT_NORM = "gn"


def _f(r, s, e, c):  # Fused-MBConv, 3x3, no SE ([T21] Table 4)
    return Stage("fused", r, 3, s, e, c, 0.0)


def _m(r, s, e, c):  # MBConv, 3x3 depthwise, SE 0.25 ([T21] Table 4)
    return Stage("mbconv", r, 3, s, e, c, 0.25)


# name: stem, stages, head, dropout before the classifier, train / test resolution, source.
VARIANTS: dict[str, dict] = {
    "S": dict(stem=24, stages=(_f(2, 1, 1, 24), _f(4, 2, 4, 48), _f(4, 2, 4, 64), _m(6, 2, 4, 128),
                               _m(9, 1, 6, 160), _m(15, 2, 6, 256)),
              head=1280, dropout=0.3, train_resolution=300, test_resolution=384,
              source="[T21] Table 4 (V2-S) and section 5 (sizes, final dropout of progressive learning)"),
    "M": dict(stem=24, stages=(_f(3, 1, 1, 24), _f(5, 2, 4, 48), _f(5, 2, 4, 80), _m(7, 2, 4, 160),
                               _m(14, 1, 6, 176), _m(18, 2, 6, 304), _m(5, 1, 6, 512)),
              head=1280, dropout=0.4, train_resolution=380, test_resolution=480,
              source="[T21] official code effnetv2_configs (V2-M, as timm _gen_efficientnetv2_m)"),
    "L": dict(stem=32, stages=(_f(4, 1, 1, 32), _f(7, 2, 4, 64), _f(7, 2, 4, 96), _m(10, 2, 4, 192),
                               _m(19, 1, 6, 224), _m(25, 2, 6, 384), _m(7, 1, 6, 640)),
              head=1280, dropout=0.5, train_resolution=380, test_resolution=480,
              source="[T21] official code effnetv2_configs (V2-L, as timm _gen_efficientnetv2_l)"),
}
PRESET_NAMES = tuple(f"EfficientNetV2-{v}" for v in VARIANTS)
# The continuous family scales V2-S; its regularisation and resolutions are the toy defaults.
FAMILY_DROPOUT = 0.0  # toy runs of a few epochs do not overfit; a config field to raise it
FAMILY_RESOLUTION = 32

_PRESET_RE = re.compile(r"^efficientnetv2-(?P<v>[sml])(?:-(?P<norm>[a-z_]+))?$", re.I)


@dataclass(frozen=True)
class EffNetV2Config:
    """An EfficientNetV2: stem 3x3 s2 conv, Fused-MBConv and MBConv stages, 1x1 head conv,
    global mean, dropout, classifier. SiLU everywhere [T21]. Defaults: V2-S."""

    stem: int = 24
    stages: tuple[Stage, ...] = VARIANTS["S"]["stages"]
    head: int = 1280
    norm: str = DEFAULT_NORM
    dropout: float = 0.3
    num_classes: int = 1000
    train_resolution: int = 300
    test_resolution: int = 384
    depth_mult: float = 1.0  # the multipliers this member was made with (V2-S base); 1 for presets
    width_mult: float = 1.0
    variant: str = "S"  # the preset this config came from ("" for a family member)

    def with_(self, **overrides) -> "EffNetV2Config":
        return _replace(self, overrides)


def owns(name: str) -> bool:
    key = str(name).strip().lower()
    return key.startswith("efficientnetv2-") or key.startswith("effnetv2-")


def preset_config(variant: str, *, num_classes: int, norm: str = DEFAULT_NORM) -> EffNetV2Config:
    row = VARIANTS[variant]
    return EffNetV2Config(stem=row["stem"], stages=row["stages"], head=row["head"], norm=mb.check_norm(norm),
                          dropout=row["dropout"], num_classes=num_classes,
                          train_resolution=row["train_resolution"], test_resolution=row["test_resolution"],
                          variant=variant)


def family_config(depth_mult: float, width_mult: float, *, num_classes: int, norm: str = DEFAULT_NORM,
                  **overrides) -> EffNetV2Config:
    """V2-S's stages with repeats x depth_mult (ceil, >= 1) and channels (stem, stages,
    head) x width_mult (EfficientNet's rounding to multiples of 8, >= 8). Any positive
    multipliers give a valid network; (0.25, 0.25) is 7 blocks, ~0.2M params at 10 classes."""
    d = mb.check_multiplier(depth_mult, "depth_mult")
    w = mb.check_multiplier(width_mult, "width_mult")
    base = VARIANTS["S"]
    cfg = EffNetV2Config(stem=mb.round_filters(base["stem"], w), stages=mb.scale_stages(base["stages"], d, w),
                         head=mb.round_filters(base["head"], w), norm=mb.check_norm(norm),
                         dropout=FAMILY_DROPOUT, num_classes=num_classes,
                         train_resolution=FAMILY_RESOLUTION, test_resolution=FAMILY_RESOLUTION,
                         depth_mult=d, width_mult=w, variant="")
    return _replace(cfg, overrides)


def get_config(name: str, *, num_classes: int = 1000, **overrides) -> EffNetV2Config:
    """Config for "EfficientNetV2-<S|M|L>[-<norm>]" or "effnetv2-d<D>-w<W>[-<norm>]"."""
    text = str(name).strip()
    if m := _PRESET_RE.match(text):
        norm = _norm(m["norm"], text)
        return _replace(preset_config(m["v"].upper(), num_classes=num_classes, norm=norm), overrides)
    fields = mb.parse_family_name(text, "effnetv2")
    if fields is not None and fields["group_size"] is None and fields["expand"] is None:
        return family_config(fields["depth_mult"], fields["width_mult"], num_classes=num_classes,
                             norm=_norm(fields["norm"], text), **overrides)
    raise BadInput(f"model: unknown model {name!r}; {closest(text, PRESET_NAMES)}EfficientNetV2 names are "
                   f"EfficientNetV2-<S|M|L>[-gn|-ln|-ln_pn] or a family name like 'effnetv2-d0.25-w0.25' "
                   f"(V2-S x depth and width multipliers)")


def _norm(text: str | None, name: str) -> str:
    if text is None:
        return DEFAULT_NORM
    if text.lower() not in mb.NORMS:
        raise BadInput(f"model: {name!r} has normaliser suffix {text!r}; {closest(text.lower(), mb.NORMS)}"
                       f"use -gn, -ln or -ln_pn")
    return text.lower()


def model_name(cfg: EffNetV2Config) -> str:
    """"EfficientNetV2-S" for a preset's architecture, else "effnetv2-d<D>-w<W>"; the
    normaliser as a suffix when it is not the default. get_config parses it back."""
    suffix = "" if cfg.norm == DEFAULT_NORM else f"-{cfg.norm}"
    for key, row in VARIANTS.items():
        if (row["stem"], row["stages"], row["head"]) == (cfg.stem, cfg.stages, cfg.head):
            return f"EfficientNetV2-{key}{suffix}"
    member = family_config(cfg.depth_mult, cfg.width_mult, num_classes=1)
    if (member.stem, member.stages, member.head) != (cfg.stem, cfg.stages, cfg.head):
        raise BadInput("model: this EfficientNetV2 config is neither a named variant nor a family member; "
                       "build it with get_config or family_config")
    return f"effnetv2-d{mb.fmt(cfg.depth_mult)}-w{mb.fmt(cfg.width_mult)}{suffix}"


def shape_of(cfg: EffNetV2Config) -> dict:
    return {"depth_mult": cfg.depth_mult, "width_mult": cfg.width_mult, "norm": cfg.norm,
            "variant": cfg.variant}


def member(*, num_classes: int, depth_mult: float, width_mult: float, norm: str = DEFAULT_NORM,
           variant: str = "") -> EffNetV2Config:
    """The config of that shape by its canonical name (a preset's shape is the preset)."""
    if variant:
        return preset_config(variant, num_classes=num_classes, norm=norm)
    cfg = family_config(depth_mult, width_mult, num_classes=num_classes, norm=norm)
    return get_config(model_name(cfg), num_classes=num_classes)


def summary(cfg: EffNetV2Config) -> str:
    stages = ", ".join(f"{'F' if s.kind == 'fused' else 'MB'}{s.expand} {s.repeats}x{s.out}" for s in cfg.stages)
    return f"stem {cfg.stem}, stages {stages}, head {cfg.head}, norm {cfg.norm}"


def min_resolution(cfg: EffNetV2Config) -> tuple[int, str]:
    return 1, "SAME-padded strides never shrink a map below 1x1"


def _replace(cfg: EffNetV2Config, overrides: dict) -> EffNetV2Config:
    fields = {f.name for f in dataclasses.fields(EffNetV2Config)}
    for key in overrides:
        if key not in fields:
            raise BadInput(f"{key}: not an EffNetV2Config field; {closest(key, fields)}"
                           f"see scaling/models/effnetv2_config.py")
    new = dataclasses.replace(cfg, **overrides)
    validate(new)
    return new


def validate(cfg: EffNetV2Config) -> None:
    mb.check_config(cfg, ("stem", "head", "num_classes", "train_resolution", "test_resolution"))


# --- the sweep grid keys ----------------------------------------------------------------
GRID_KEYS = ("effnetv2_depth_mults", "effnetv2_width_mults", "effnetv2_norm")


def grid_names(table: dict, where: str) -> list[str]:
    """effnetv2_depth_mults x effnetv2_width_mults (both required), one normaliser for all."""
    return mb.family_grid_names(table, where, "effnetv2", "EfficientNetV2", DEFAULT_NORM,
                                lambda d, w, norm: model_name(family_config(d, w, num_classes=1, norm=norm)))
