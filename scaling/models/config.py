"""What defines an NFNet: the config dataclass, the preset table and the sweep family.

Pure Python on purpose (no jax): `analysis` and `model-info` read configs and
counts without paying for a jax import.

Three ways to get a config:
  get_config("F3+")                      a named preset of [B21] (F0..F7, F0+..F7+)
  family_config(0.5, 1/8, num_classes=10)  the continuous sweep family
  get_config("nfnet-d0.5-w0.125")        the same, by its canonical name
`model_name(cfg)` gives the canonical name back, which `get_config` parses.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from scaling.errors import BadInput, closest

# Activation gains: [B21] official code (docs/references.md#activation-gains),
# i.e. 1 / std(act(N(0,1))).
ACTIVATION_GAINS = {
    "gelu": 1.7015043497085571,
    "relu": 1.7139588594436646,
    "silu": 1.7881293296813965,
}

BOTTLENECK_RULES = ("round", "keep")


@dataclass(frozen=True)
class NFNetConfig:
    """Everything that defines the architecture plus its regularisation and resolutions.

    Defaults are F0 of [B21] (docs/references.md#nfnet-architecture-and-recipe). Channel
    counts are absolute (already width-scaled); `depth_mult` / `width_mult` only record how
    a family member was made.
    """

    depths: tuple[int, ...] = (1, 2, 6, 3)  # blocks per stage; [B21] F0
    widths: tuple[int, ...] = (256, 512, 1536, 1536)  # stage output widths; [B21] F0
    strides: tuple[int, ...] = (1, 2, 2, 2)  # docs/references.md#stages-and-transition-blocks
    stem_widths: tuple[int, ...] = (16, 32, 64)  # first three stem convs; the 4th is widths[0]//2
    group_width: int = 128  # channels per group of the 3x3 convs; docs/references.md#bottleneck-block-and-squeeze-excite
    bottleneck_ratio: float = 0.5  # x block output width; docs/references.md#bottleneck-block-and-squeeze-excite
    # How the bottleneck width meets the group width (the "+" rule,
    # docs/references.md#plus-variants-and-the-bottleneck-rounding-rule):
    #   "round": official code; round down to a multiple of group_width (F4+: 525.0M / 333.39B);
    #            a bottleneck narrower than one group is kept as one group
    #   "keep":  keep int(ratio x width) as is, in max(1, width // group_width) equal groups
    #            (F0+..F7+ first stage: 192 channels in one group; F4+: 527M / 367B, Table 3)
    # The two rules differ only where ratio x width is not a multiple of group_width.
    bottleneck_rule: str = "round"
    se_ratio: float = 0.5  # SE hidden = int(se_ratio x channels); docs/references.md#bottleneck-block-and-squeeze-excite
    alpha: float = 0.2  # residual branch scale; docs/references.md#signal-propagation-alpha-and-beta
    activation: str = "gelu"  # [B21] default
    final_conv_mult: int = 2  # head conv to 2x last width; docs/references.md#head-and-classifier-initialisation
    # SkipInit (docs/references.md#bottleneck-block-and-squeeze-excite); tests set 1 to see
    # signal propagation.
    skip_gain_init: float = 0.0
    stochdepth_rate: float = 0.25  # max drop rate, ramped linearly; docs/references.md#regularisation-and-resolution-per-variant
    dropout: float = 0.2  # before the classifier; [B21] F0
    num_classes: int = 1000
    train_resolution: int = 192  # [B21] F0
    test_resolution: int = 256  # [B21] F0
    depth_mult: float = 1.0  # recorded for family members and presets (F<n> has k = n+1)
    width_mult: float = 1.0

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)

    @property
    def activation_gain(self) -> float:
        return ACTIVATION_GAINS[self.activation]

    def block_widths(self, stage: int) -> tuple[int, int]:
        """(bottleneck width, number of groups) of every block in `stage`."""
        out_ch = self.widths[stage]
        width = int(out_ch * self.bottleneck_ratio)
        groups = max(1, width // self.group_width)
        if self.bottleneck_rule == "round" and width >= self.group_width:
            width = groups * self.group_width  # a narrower bottleneck stays one group
        return width, groups

    def with_(self, **overrides) -> "NFNetConfig":
        """A validated copy with some fields replaced (BadInput on unknown fields)."""
        return _replace(self, overrides)


# --- the preset table ([B21] official code's variant dict) ---------------------------
# Sources: docs/references.md#depths-and-widths-of-the-variants
# n: depth multiplier of the [1, 2, 6, 3] pattern; dropout; train / test resolution.
_BASE_DEPTHS = (1, 2, 6, 3)  # docs/references.md#depths-and-widths-of-the-variants
_BASE_WIDTHS = (256, 512, 1536, 1536)  # docs/references.md#depths-and-widths-of-the-variants
_PLUS_WIDTHS = (384, 768, 2048, 2048)  # "+" = wider, same depth; same section
_BASE_STEM = (16, 32, 64)  # docs/references.md#stem
_BASE_GROUP_WIDTH = 128  # docs/references.md#bottleneck-block-and-squeeze-excite

PRESETS: dict[str, dict] = {
    #       depth n  dropout  train  test   [B21]: docs/references.md#regularisation-and-resolution-per-variant
    "F0": dict(n=1, dropout=0.2, train=192, test=256),
    "F1": dict(n=2, dropout=0.3, train=224, test=320),
    "F2": dict(n=3, dropout=0.4, train=256, test=352),
    "F3": dict(n=4, dropout=0.4, train=320, test=416),
    "F4": dict(n=5, dropout=0.5, train=384, test=512),
    "F5": dict(n=6, dropout=0.5, train=416, test=544),
    "F6": dict(n=7, dropout=0.5, train=448, test=576),
    "F7": dict(n=8, dropout=0.5, train=480, test=608),
}
PRESET_NAMES = tuple(PRESETS) + tuple(f"{name}+" for name in PRESETS)

# The continuous family: no dropout / stochastic depth by default because [S23]
# pre-trains without them (they appear only in fine-tuning; docs/references.md#fine-tuning), and
# train 224 / test 256 as in [S23]. All are overridable.
FAMILY_DEFAULTS = dict(dropout=0.0, stochdepth_rate=0.0, train_resolution=224, test_resolution=256)

# What the analytic counter and a machine can honour; beyond these a number is a typo, not
# a model (--depth-mult 1e9 would be a billion blocks: the counter alone needed 21 GB).
# F7 is depth 8, F7+ width 1.5; 64 leaves room for any study of this family.
MAX_DEPTH_MULT = 64.0
MAX_WIDTH_MULT = 64.0
# Input sizes: the stem's 8x downsampling needs at least 8 px; 4096 px is 16x the paper's
# largest test resolution (608 px, F7) and already ~200 MB of activations per image.
MIN_RESOLUTION = 8
MAX_RESOLUTION = 4096
MAX_CLASSES = 1_000_000  # JFT has ~30k classes, ImageNet-21k ~22k


def check_resolution(field: str, value) -> int:
    """`value` as an input size in [MIN_RESOLUTION, MAX_RESOLUTION] px (BadInput naming `field`)."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_RESOLUTION <= value <= MAX_RESOLUTION:
        raise BadInput(f"{field}: {value!r} px is out of range; use a whole number in "
                       f"[{MIN_RESOLUTION}, {MAX_RESOLUTION}] (the stem downsamples 8x)")
    return value


def check_classes(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLASSES:
        raise BadInput(f"{field}: {value!r} is out of range; use a whole number in [1, {MAX_CLASSES:,}]")
    return value

_FAMILY_RE = re.compile(r"^nfnet-d(?P<d>[0-9.eE+-]+)-w(?P<w>[0-9.eE+-]+)$")
_PRESET_RE = re.compile(r"^(?:nfnet-)?(?P<base>f[0-7])(?P<plus>\+)?(?P<keep>-keep)?$")


def _preset(base: str, plus: bool, num_classes: int) -> NFNetConfig:
    row = PRESETS[base]
    n = row["n"]
    return NFNetConfig(
        depths=tuple(d * n for d in _BASE_DEPTHS),
        widths=_PLUS_WIDTHS if plus else _BASE_WIDTHS,
        dropout=row["dropout"],
        train_resolution=row["train"],
        test_resolution=row["test"],
        num_classes=num_classes,
        depth_mult=float(n),
        width_mult=1.0,
    )


def get_config(name: str, *, num_classes: int = 1000, **overrides) -> NFNetConfig:
    """Config for "F0".."F7", "F0+".."F7+" (optionally "-keep" for the keep192 rule)
    or a family name "nfnet-d<k>-w<w>"; keyword overrides replace fields."""
    key = str(name).strip().lower()
    if m := _PRESET_RE.match(key):
        cfg = _preset(m["base"].upper(), bool(m["plus"]), num_classes)
        if m["keep"]:
            cfg = dataclasses.replace(cfg, bottleneck_rule="keep")
        return _replace(cfg, overrides)
    if m := _FAMILY_RE.match(key):
        try:
            d, w = float(m["d"]), float(m["w"])
        except ValueError:
            d = w = float("nan")
        if math.isfinite(d) and math.isfinite(w):
            return family_config(d, w, num_classes=num_classes, **overrides)
    known = list(PRESET_NAMES) + ["nfnet-d1-w0.125"]
    guess = str(name).strip().upper().replace("NFNET-", "").replace("O", "0")  # F0 typed as FO
    raise BadInput(
        f"model: unknown model {name!r}; {closest(guess, PRESET_NAMES)}use one of {', '.join(PRESET_NAMES)} "
        f"or a family name like {known[-1]!r} (depth and width multipliers)"
    )


def _round_multiple(x: float, m: int) -> int:
    """Nearest multiple of m (ties up), at least m."""
    return max(m, int(math.floor(x / m + 0.5)) * m)


def family_config(depth_mult: float, width_mult: float, *, num_classes: int, **overrides) -> NFNetConfig:
    """Member of the continuous sweep family (docs/models.md, "continuous family").

    Depth: each stage of [1, 2, 6, 3] gets floor(d * k + 0.5) blocks (round half up), at
    least 1. Width: group width g = max(1, round(128 * w)); stage widths are rounded to
    the nearest multiple of 2g (so the 0.5 bottleneck is a whole number of groups, at
    least one); stem widths max(1, round(c * w)). w = 1, k = n reproduce F(n-1).
    """
    for field, value in (("depth_mult", depth_mult), ("width_mult", width_mult)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise BadInput(f"{field}: must be a positive number, got {value!r}; e.g. 0.5 or 1")
        top = MAX_DEPTH_MULT if field == "depth_mult" else MAX_WIDTH_MULT
        if value > top:
            raise BadInput(f"{field}: {value!r} is out of range; use a number in (0, {top:g}] "
                           "(F7 is depth 8, F7+ width 1.5)")
    depths = tuple(max(1, int(math.floor(d * depth_mult + 0.5))) for d in _BASE_DEPTHS)
    group_width = max(1, int(math.floor(_BASE_GROUP_WIDTH * width_mult + 0.5)))
    widths = tuple(_round_multiple(c * width_mult, 2 * group_width) for c in _BASE_WIDTHS)
    stem = tuple(max(1, int(math.floor(c * width_mult + 0.5))) for c in _BASE_STEM)
    cfg = NFNetConfig(
        depths=depths,
        widths=widths,
        stem_widths=stem,
        group_width=group_width,
        num_classes=num_classes,
        depth_mult=float(depth_mult),
        width_mult=float(width_mult),
        **FAMILY_DEFAULTS,
    )
    return _replace(cfg, overrides)


def _fmt(x: float) -> str:
    """Shortest decimal that parses back to exactly x ("1", "0.5", "0.125")."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# Fields that do not change the architecture's name (regularisation, data, init).
_NAME_NEUTRAL = {
    "stochdepth_rate", "dropout", "num_classes", "train_resolution", "test_resolution",
    "skip_gain_init", "depth_mult", "width_mult",
}


def _preset_extras(cfg: NFNetConfig) -> tuple:
    """What a preset fixes beyond the architecture; a family member differs here."""
    return cfg.dropout, cfg.train_resolution, cfg.test_resolution


def _arch(cfg: NFNetConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NAME_NEUTRAL}


def model_name(cfg: NFNetConfig) -> str:
    """Canonical name of cfg's architecture ("F3+", "F4+-keep", "nfnet-d0.5-w0.125").

    A preset's name needs its dropout and resolutions too; otherwise a matching family
    member's name is returned (so family_config(2, 1) is "nfnet-d2-w1", not "F1").
    get_config(model_name(cfg)) rebuilds the same architecture; num_classes,
    stochastic depth and skip-gain init are not part of the name."""
    arch = _arch(cfg)
    for name in PRESET_NAMES:
        for suffix in ("", "-keep"):
            preset = get_config(name + suffix)
            if _arch(preset) == arch and _preset_extras(preset) == _preset_extras(cfg):
                return name + suffix
    fam = f"nfnet-d{_fmt(cfg.depth_mult)}-w{_fmt(cfg.width_mult)}"
    if _arch(family_config(cfg.depth_mult, cfg.width_mult, num_classes=cfg.num_classes)) == arch:
        return fam
    raise BadInput(
        "model: this architecture has no canonical name (fields changed beyond a preset "
        "or family member); use get_config/family_config without architectural overrides"
    )


def _replace(cfg: NFNetConfig, overrides: dict) -> NFNetConfig:
    fields = {f.name for f in dataclasses.fields(NFNetConfig)}
    for key in overrides:
        if key not in fields:
            raise BadInput(f"{key}: not an NFNetConfig field; {closest(key, fields)}see scaling/models/config.py")
    for key in ("depths", "widths", "strides", "stem_widths"):
        if key in overrides:
            overrides = {**overrides, key: tuple(overrides[key])}
    new = dataclasses.replace(cfg, **overrides)
    validate(new)
    return new


def validate(cfg: NFNetConfig) -> None:
    """Raise BadInput naming the first field that cannot build a valid NFNet."""
    n = len(cfg.depths)
    if not (len(cfg.widths) == len(cfg.strides) == n and n > 0):
        raise BadInput("depths/widths/strides: need one entry per stage, same length; e.g. 4 each")
    if any(int(d) != d or d < 1 for d in cfg.depths):
        raise BadInput(f"depths: every stage needs >= 1 block, got {cfg.depths}")
    if any(int(c) != c or c < 1 for c in (*cfg.widths, *cfg.stem_widths)):
        raise BadInput("widths/stem_widths: channel counts must be positive integers")
    if any(s not in (1, 2) for s in cfg.strides):
        raise BadInput(f"strides: each stage stride must be 1 or 2, got {cfg.strides}")
    if cfg.group_width < 1:
        raise BadInput(f"group_width: must be >= 1, got {cfg.group_width}")
    if cfg.bottleneck_rule not in BOTTLENECK_RULES:
        raise BadInput(f"bottleneck_rule: must be one of {BOTTLENECK_RULES}, got {cfg.bottleneck_rule!r}")
    if cfg.activation not in ACTIVATION_GAINS:
        raise BadInput(f"activation: must be one of {tuple(ACTIVATION_GAINS)}, got {cfg.activation!r}")
    if not 0 < cfg.bottleneck_ratio <= 4:
        raise BadInput(f"bottleneck_ratio: must be in (0, 4], got {cfg.bottleneck_ratio}")
    if not 0 <= cfg.se_ratio <= 4:
        raise BadInput(f"se_ratio: must be in [0, 4], got {cfg.se_ratio}")
    if not 0 <= cfg.dropout < 1 or not 0 <= cfg.stochdepth_rate < 1:
        raise BadInput("dropout/stochdepth_rate: must be in [0, 1)")
    if not isinstance(cfg.num_classes, int) or cfg.num_classes < 1:
        raise BadInput(f"num_classes: must be a positive integer, got {cfg.num_classes!r}")
    for field in ("train_resolution", "test_resolution"):
        r = getattr(cfg, field)
        if not isinstance(r, int) or r < 1:
            raise BadInput(f"{field}: must be a positive integer, got {r!r}")
    for stage in range(n):
        width, groups = cfg.block_widths(stage)
        if width < 1:
            raise BadInput(f"widths: stage {stage} bottleneck is empty; raise widths or bottleneck_ratio")
        if width % groups:
            raise BadInput(
                f"group_width: stage {stage} bottleneck {width} does not split into {groups} equal "
                f"groups; pick a group_width that divides it or bottleneck_rule='round'"
            )
