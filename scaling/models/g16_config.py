"""What defines a G16-EfficientNet run [M21]: EfficientNet-B0's stages with every depthwise
conv made a group conv of 16 channels per group and expansion 4 instead of 6, scaled by
EfficientNet's depth and width multipliers, with a batch-independent normaliser. Pure
Python (no jax).

  get_config("G16-EfficientNet-B0")            a named variant (B0, B1, B2)
  family_config(0.25, 0.25, num_classes=10)    B0 x depth and width multipliers
  get_config("g16-d0.25-w0.25")                the same, by its canonical name
  get_config("g16-d1-w1-g1-e6")                group size 1 and expansion 6: EfficientNet-B0
A normaliser other than the default (LayerNorm + proxy norm) is a suffix: "-gn", "-ln".
docs/models.md#g16-efficientnet; sources docs/references.md#g16-efficientnet-and-proxy-norm.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from scaling.errors import BadInput, closest
from scaling.models import mbconv_config as mb
from scaling.models.mbconv_config import Stage

FAMILY = "g16"
DEFAULT_NORM = "ln_pn"  # [M21]'s batch-independent choice: LayerNorm + proxy-normalised activations
GROUP_SIZE = 16  # [M21]: 16 channels per group in place of depthwise
EXPAND = 4  # [M21]: expansion 4 in place of EfficientNet's 6

# EfficientNet-B0's stages (EfficientNet paper Table 1, as restated in
# docs/references.md#g16-efficientnet-and-proxy-norm): repeats, kernel, stride, expansion, channels; SE 0.25.
B0_STEM, B0_HEAD = 32, 1280
B0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
             (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))

# name: EfficientNet's compound multipliers, [M21]'s training / native test resolution,
# EfficientNet's dropout; source.
VARIANTS: dict[str, dict] = {
    "B0": dict(depth_mult=1.0, width_mult=1.0, train_resolution=160, test_resolution=224, dropout=0.2,
               source="[M21] (G16, expansion 4, training 160) on EfficientNet-B0 (1.0, 1.0, 224, dropout 0.2)"),
    "B1": dict(depth_mult=1.1, width_mult=1.0, train_resolution=176, test_resolution=240, dropout=0.2,
               source="[M21] training 176 on EfficientNet-B1 (depth 1.1, width 1.0, 240, dropout 0.2)"),
    "B2": dict(depth_mult=1.2, width_mult=1.1, train_resolution=192, test_resolution=260, dropout=0.3,
               source="[M21] training 192 on EfficientNet-B2 (depth 1.2, width 1.1, 260, dropout 0.3)"),
}
PRESET_NAMES = tuple(f"G16-EfficientNet-{v}" for v in VARIANTS)
FAMILY_DROPOUT = 0.0  # toy runs; a config field to raise it
FAMILY_RESOLUTION = 32

_PRESET_RE = re.compile(r"^g16-efficientnet-(?P<v>b[0-9]+)(?:-(?P<norm>[a-z_]+))?$", re.I)


@dataclass(frozen=True)
class G16Config:
    """A G16-EfficientNet: B0's layout x (depth_mult, width_mult), MBConv blocks whose k x k
    conv has `group_size` channels per group, expansion `expand` (the first stage keeps 1)."""

    depth_mult: float = 1.0
    width_mult: float = 1.0
    group_size: int = GROUP_SIZE
    expand: int = EXPAND
    norm: str = DEFAULT_NORM
    dropout: float = 0.2
    num_classes: int = 1000
    train_resolution: int = 160
    test_resolution: int = 224

    @property
    def stem(self) -> int:
        return mb.round_filters(B0_STEM, self.width_mult)

    @property
    def head(self) -> int:
        return mb.round_filters(B0_HEAD, self.width_mult)

    @property
    def stages(self) -> tuple[Stage, ...]:
        base = tuple(Stage("mbconv", r, k, s, self.expand if e != 1 else 1, c, 0.25, self.group_size)
                     for r, k, s, e, c in B0_STAGES)
        return mb.scale_stages(base, self.depth_mult, self.width_mult)

    def with_(self, **overrides) -> "G16Config":
        return _replace(self, overrides)


def owns(name: str) -> bool:
    return str(name).strip().lower().startswith("g16-")


def family_config(depth_mult: float, width_mult: float, *, num_classes: int, **overrides) -> G16Config:
    """B0 x depth (ceil of repeats) and width (channels rounded to multiples of 8, >= 8).
    Any positive multipliers give a valid network; (0.25, 0.25) runs at 16-32 px."""
    cfg = G16Config(depth_mult=mb.check_multiplier(depth_mult, "depth_mult"),
                    width_mult=mb.check_multiplier(width_mult, "width_mult"), dropout=FAMILY_DROPOUT,
                    num_classes=num_classes, train_resolution=FAMILY_RESOLUTION,
                    test_resolution=FAMILY_RESOLUTION)
    return _replace(cfg, overrides)


def get_config(name: str, *, num_classes: int = 1000, **overrides) -> G16Config:
    """Config for "G16-EfficientNet-<B0|B1|B2>[-<norm>]" or "g16-d<D>-w<W>[-g<G>][-e<E>][-<norm>]"."""
    text = str(name).strip()
    if (m := _PRESET_RE.match(text)) and m["v"].upper() in VARIANTS:
        row = VARIANTS[m["v"].upper()]
        cfg = G16Config(depth_mult=row["depth_mult"], width_mult=row["width_mult"], dropout=row["dropout"],
                        num_classes=num_classes, train_resolution=row["train_resolution"],
                        test_resolution=row["test_resolution"], norm=_norm(m["norm"], text))
        return _replace(cfg, overrides)
    fields = mb.parse_family_name(text, "g16")
    if fields is not None:
        extra = {"norm": _norm(fields["norm"], text)}
        if fields["group_size"] is not None:
            extra["group_size"] = fields["group_size"]
        if fields["expand"] is not None:
            extra["expand"] = fields["expand"]
        return family_config(fields["depth_mult"], fields["width_mult"], num_classes=num_classes,
                             **{**extra, **overrides})
    raise BadInput(f"model: unknown model {name!r}; {closest(text, PRESET_NAMES)}G16-EfficientNet names are "
                   f"G16-EfficientNet-<B0|B1|B2>[-gn|-ln|-ln_pn] or a family name like 'g16-d0.25-w0.25' "
                   f"(B0 x depth and width multipliers; -g<group size>, -e<expansion> optional)")


def _norm(text: str | None, name: str) -> str:
    if text is None:
        return DEFAULT_NORM
    if text.lower() not in mb.NORMS:
        raise BadInput(f"model: {name!r} has normaliser suffix {text!r}; {closest(text.lower(), mb.NORMS)}"
                       f"use -gn, -ln or -ln_pn")
    return text.lower()


def model_name(cfg: G16Config) -> str:
    """"G16-EfficientNet-B<i>" when the multipliers, group size and expansion are a
    preset's, else "g16-d<D>-w<W>" (+ "-g<G>", "-e<E>" when not 16 and 4); the normaliser
    as a suffix when not the default."""
    norm = "" if cfg.norm == DEFAULT_NORM else f"-{cfg.norm}"
    if (cfg.group_size, cfg.expand) == (GROUP_SIZE, EXPAND):
        for key, row in VARIANTS.items():
            if (row["depth_mult"], row["width_mult"]) == (cfg.depth_mult, cfg.width_mult):
                return f"G16-EfficientNet-{key}{norm}"
    g = "" if cfg.group_size == GROUP_SIZE else f"-g{cfg.group_size}"
    e = "" if cfg.expand == EXPAND else f"-e{cfg.expand}"
    return f"g16-d{mb.fmt(cfg.depth_mult)}-w{mb.fmt(cfg.width_mult)}{g}{e}{norm}"


def shape_of(cfg: G16Config) -> dict:
    return {"depth_mult": cfg.depth_mult, "width_mult": cfg.width_mult, "group_size": cfg.group_size,
            "expand": cfg.expand, "norm": cfg.norm}


def member(*, num_classes: int, depth_mult: float, width_mult: float, group_size: int = GROUP_SIZE,
           expand: int = EXPAND, norm: str = DEFAULT_NORM) -> G16Config:
    """The config of that shape by its canonical name (a preset's shape is the preset)."""
    cfg = family_config(depth_mult, width_mult, num_classes=num_classes, group_size=group_size,
                        expand=expand, norm=norm)
    return get_config(model_name(cfg), num_classes=num_classes)


def summary(cfg: G16Config) -> str:
    stages = ", ".join(f"{s.repeats}x{s.out}" for s in cfg.stages)
    return (f"stem {cfg.stem}, MBConv stages {stages}, head {cfg.head}, group size {cfg.group_size}, "
            f"expansion {cfg.expand}, norm {cfg.norm}")


def min_resolution(cfg: G16Config) -> tuple[int, str]:
    return 1, "SAME-padded strides never shrink a map below 1x1"


def _replace(cfg: G16Config, overrides: dict) -> G16Config:
    fields = {f.name for f in dataclasses.fields(G16Config)}
    for key in overrides:
        if key not in fields:
            raise BadInput(f"{key}: not a G16Config field; {closest(key, fields)}see scaling/models/g16_config.py")
    new = dataclasses.replace(cfg, **overrides)
    validate(new)
    return new


def validate(cfg: G16Config) -> None:
    mb.check_multiplier(cfg.depth_mult, "depth_mult")
    mb.check_multiplier(cfg.width_mult, "width_mult")
    mb.check_config(cfg, ("group_size", "expand", "num_classes", "train_resolution", "test_resolution"))


GRID_KEYS = ("g16_depth_mults", "g16_width_mults", "g16_norm")


def grid_names(table: dict, where: str) -> list[str]:
    """g16_depth_mults x g16_width_mults (both required), one normaliser for all."""
    return mb.family_grid_names(table, where, "g16", "G16-EfficientNet", DEFAULT_NORM,
                                lambda d, w, norm: model_name(family_config(d, w, num_classes=1, norm=norm)))
