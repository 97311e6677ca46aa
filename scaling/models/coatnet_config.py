"""What defines a CoAtNet run: the config, the variant table, the sweep family and the
default training recipe. Pure Python (no jax), like vit_config.py.

Three ways to get a config (docs/models.md#coatnet):
  get_config("CoAtNet-0")                      a named variant ([Dai21] Table 3)
  family_config(0.5, 0.25, num_classes=10)     the continuous family: CoAtNet-0's blocks
                                               and channels scaled by depth and width multipliers
  get_config("coatnet-d0.5-w0.25")             the same, by its canonical name
`model_name(cfg)` gives the canonical name back, which `get_config` parses.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from scaling.errors import BadInput, closest
from scaling.optim_config import TypedRecipe, _p, check_typed_fields

FAMILY = "coatnet"
# Where the stride of a stage's first MBConv sits: "1x1" on the expansion conv, as
# [Dai21]'s downsampling formula writes it (the published MACs; docs/references.md#coatnet);
# "dw" on the depthwise conv, as timm's CoAtNets do (timm's 4.58 G for CoAtNet-0).
STRIDE_AT = ("1x1", "dw")
DECAYS = ("linear", "cosine")
HEAD_DIM = 32  # attention head size of CoAtNet-0..4 [Dai21]; docs/references.md#coatnet
CONV_ROUND = 8  # family widths of the stem and MBConv stages: multiples of 8 (EfficientNet-style rounding, our choice)
MAX_DEPTH_MULT, MAX_WIDTH_MULT = 16.0, 8.0  # sanity bounds on the family's multipliers (ours)


@dataclass(frozen=True)
class CoAtNetConfig:
    """C-C-T-T CoAtNet (docs/models.md#coatnet). Defaults are CoAtNet-0 [Dai21].

    S0 is a two-conv stem (3x3 stride 2, then 3x3) of `stem_width`; S1, S2 are MBConv
    stages, S3, S4 Transformer stages with relative attention; each stage's first block
    halves the map. `depths`/`widths` are S1..S4's blocks and channels.
    """

    stem_width: int = 64
    depths: tuple[int, int, int, int] = (2, 3, 5, 2)
    widths: tuple[int, int, int, int] = (96, 192, 384, 768)
    head_dim: int = HEAD_DIM  # attention head size; heads = width // head_dim
    expansion: int = 4  # MBConv inverted-bottleneck ratio [Dai21]
    se_ratio: float = 0.25  # SE hidden = int(se_ratio x block output width) [Dai21]; timm's basis
    mlp_ratio: int = 4  # Transformer MLP hidden = 4 x width [Dai21]
    stride_at: str = "1x1"
    # A hidden layer (width = last stage's, tanh) between pooling and classifier, as
    # timm's paper-sized CoAtNets have; without it CoAtNet-0 is 2.2% under 25M.
    pre_logits: bool = True
    dropout: float = 0.0  # before the classifier
    depth_mult: float = 1.0  # recorded for family members (presets: 1)
    width_mult: float = 1.0
    num_classes: int = 1000
    train_resolution: int = 224  # [Dai21] ImageNet-1K: 224 px
    test_resolution: int = 224

    @property
    def heads(self) -> tuple[int, int]:
        """Attention heads of S3 and S4."""
        return tuple(w // self.head_dim for w in self.widths[2:])

    def with_(self, **overrides) -> "CoAtNetConfig":
        return _replace(self, overrides)


def grids(resolution: int) -> tuple[int, ...]:
    """Map side after S0, S1, S2, S3, S4: each halves it, rounding up (SAME padding), so
    every resolution >= 1 gives at least a 1 x 1 map (at 16 px: 8, 4, 2, 1, 1)."""
    out, side = [], resolution
    for _ in range(5):
        side = -(-side // 2)
        out.append(side)
    return tuple(out)


# --- the variant table (data; docs/references.md#coatnet) ------------------------------------
VARIANTS: dict[str, dict] = {
    "0": dict(stem_width=64, depths=(2, 3, 5, 2), widths=(96, 192, 384, 768), source="[Dai21] Table 3"),
    "1": dict(stem_width=64, depths=(2, 6, 14, 2), widths=(96, 192, 384, 768), source="[Dai21] Table 3"),
    "2": dict(stem_width=128, depths=(2, 6, 14, 2), widths=(128, 256, 512, 1024), source="[Dai21] Table 3"),
    "3": dict(stem_width=192, depths=(2, 6, 14, 2), widths=(192, 384, 768, 1536), source="[Dai21] Table 3"),
}
PRESET_NAMES = tuple(f"CoAtNet-{v}" for v in VARIANTS)
BASE = "0"  # the continuous family scales CoAtNet-0

_PRESET_RE = re.compile(r"^coatnet-?(?P<v>[0-9]+)$", re.I)
_FAMILY_RE = re.compile(r"^coatnet-d(?P<d>[0-9.eE+-]+)-w(?P<w>[0-9.eE+-]+)(?P<dw>-dw)?$", re.I)


def owns(name: str) -> bool:
    """Whether `name` is spelt as a CoAtNet name (preset or family), valid or not."""
    return str(name).strip().lower().startswith("coatnet")


def get_config(name: str, *, num_classes: int = 1000, **overrides) -> CoAtNetConfig:
    """Config for "CoAtNet-<0..3>" or a family name "coatnet-d<depth_mult>-w<width_mult>";
    a "-dw" suffix puts the MBConv stride on the depthwise conv (timm's layout);
    keyword overrides replace fields."""
    text = str(name).strip()
    suffix_dw = text.lower().endswith("-dw")
    core = text[:-3] if suffix_dw else text
    if (m := _PRESET_RE.match(core)) and m["v"] in VARIANTS:
        row = VARIANTS[m["v"]]
        cfg = CoAtNetConfig(stem_width=row["stem_width"], depths=row["depths"], widths=row["widths"],
                            stride_at="dw" if suffix_dw else "1x1", num_classes=num_classes)
        return _replace(cfg, overrides)
    if m := _FAMILY_RE.match(text):
        try:
            d, w = float(m["d"]), float(m["w"])
        except ValueError:
            d = w = float("nan")
        if math.isfinite(d) and math.isfinite(w):
            extra = {"stride_at": "dw"} if m["dw"] else {}
            return family_config(d, w, num_classes=num_classes, **{**extra, **overrides})
    raise BadInput(
        f"model: unknown model {name!r}; {closest(text, PRESET_NAMES)}CoAtNet names are "
        f"{', '.join(PRESET_NAMES)} or a family name like 'coatnet-d0.5-w0.25' (depth and width "
        f"multipliers of CoAtNet-0); append -dw for timm's stride placement"
    )


def _round_multiple(x: float, m: int) -> int:
    """Nearest multiple of m (ties up), at least m."""
    return max(m, int(math.floor(x / m + 0.5)) * m)


def family_shape(depth_mult: float, width_mult: float) -> dict:
    """Blocks and channels of the family member: CoAtNet-0's S1..S4 blocks x depth_mult
    (round half up, at least 1); stem and MBConv channels x width_mult rounded to a
    multiple of 8, Transformer channels to a multiple of the 32-wide head (at least one
    head). d = w = 1 is CoAtNet-0."""
    row = VARIANTS[BASE]
    depths = tuple(max(1, int(math.floor(depth_mult * n + 0.5))) for n in row["depths"])
    conv = [_round_multiple(width_mult * c, CONV_ROUND) for c in (row["stem_width"], *row["widths"][:2])]
    attn = [_round_multiple(width_mult * c, HEAD_DIM) for c in row["widths"][2:]]
    return dict(stem_width=conv[0], depths=depths, widths=(conv[1], conv[2], *attn))


def family_config(depth_mult: float, width_mult: float, *, num_classes: int, **overrides) -> CoAtNetConfig:
    """A member of the continuous family (docs/models.md#the-continuous-coatnet-family).
    Valid at any resolution: maps halve rounding up, so at 16 px S3 and S4 hold one token."""
    for field, value, top in (("depth_mult", depth_mult, MAX_DEPTH_MULT), ("width_mult", width_mult, MAX_WIDTH_MULT)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise BadInput(f"{field}: must be a positive number, got {value!r}; e.g. 0.5 or 1")
        if value > top:
            raise BadInput(f"{field}: {value} is above {top}; use a named variant for large models")
    cfg = CoAtNetConfig(**family_shape(depth_mult, width_mult), depth_mult=float(depth_mult),
                        width_mult=float(width_mult), num_classes=num_classes)
    return _replace(cfg, overrides)


def _fmt(x: float) -> str:
    """Shortest decimal that parses back to exactly x ("1", "0.5", "0.125")."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


_SHAPE = ("stem_width", "depths", "widths")


def model_name(cfg: CoAtNetConfig) -> str:
    """Canonical name: "CoAtNet-<n>" when the shape is a named variant's, else the family
    name "coatnet-d<d>-w<w>" (its multipliers must rebuild the shape); "-dw" when the
    stride sits on the depthwise conv. Regularisation, classes and resolutions are not
    part of the name."""
    suffix = "-dw" if cfg.stride_at == "dw" else ""
    shape = {k: getattr(cfg, k) for k in _SHAPE}
    arch_default = {k: getattr(cfg, k) == getattr(CoAtNetConfig, k) for k in
                    ("head_dim", "expansion", "se_ratio", "mlp_ratio", "pre_logits")}
    if not all(arch_default.values()):
        bad = next(k for k, ok in arch_default.items() if not ok)
        raise BadInput(f"{bad}: {getattr(cfg, bad)!r} differs from CoAtNet's and has no name; "
                       f"keep the default {getattr(CoAtNetConfig, bad)!r}")
    for key, row in VARIANTS.items():
        if shape == {k: row[k] for k in _SHAPE}:
            return f"CoAtNet-{key}{suffix}"
    if shape == family_shape(cfg.depth_mult, cfg.width_mult):
        return f"coatnet-d{_fmt(cfg.depth_mult)}-w{_fmt(cfg.width_mult)}{suffix}"
    raise BadInput("widths: this CoAtNet shape is neither a named variant nor a family member; "
                   "build it with get_config('CoAtNet-0') or family_config(d, w)")


def shape_of(cfg: CoAtNetConfig) -> dict:
    """The shape coordinates model-info and sweeps report (`member` rebuilds from them)."""
    return {"depth_mult": cfg.depth_mult, "width_mult": cfg.width_mult, "stem_width": cfg.stem_width,
            "depths": list(cfg.depths), "widths": list(cfg.widths), "stride_at": cfg.stride_at}


def member(*, num_classes: int, depth_mult: float, width_mult: float, stem_width=None, depths=None,
           widths=None, stride_at: str = "1x1") -> CoAtNetConfig:
    """The config with these shape coordinates (`shape_of`'s keys): a named variant's
    shape gives that variant, otherwise the family member of the multipliers."""
    if stem_width is not None and depths is not None and widths is not None:
        shape = dict(stem_width=stem_width, depths=tuple(depths), widths=tuple(widths))
        for row in VARIANTS.values():
            if shape == {k: row[k] for k in _SHAPE}:
                return CoAtNetConfig(**shape, stride_at=stride_at, num_classes=num_classes)
    return family_config(depth_mult, width_mult, num_classes=num_classes, stride_at=stride_at)


def summary(cfg: CoAtNetConfig) -> str:
    return (f"stem {cfg.stem_width}, blocks {list(cfg.depths)}, channels {list(cfg.widths)} "
            f"(C-C-T-T), heads {list(cfg.heads)}, stride on {cfg.stride_at}")


def min_resolution(cfg: CoAtNetConfig) -> tuple[int, str]:
    """Any size works (maps halve rounding up); below 32 px S4 and at 16 px S3 hold one
    token, where attention is the identity mixing."""
    return 1, "maps halve rounding up: S3/S4 shrink to a single token below 32 px"


def _replace(cfg: CoAtNetConfig, overrides: dict) -> CoAtNetConfig:
    fields = {f.name for f in dataclasses.fields(CoAtNetConfig)}
    for key in overrides:
        if key not in fields:
            raise BadInput(f"{key}: not a CoAtNetConfig field; {closest(key, fields)}"
                           f"see scaling/models/coatnet_config.py")
    overrides = {k: tuple(v) if k in ("depths", "widths") and isinstance(v, list) else v
                 for k, v in overrides.items()}
    new = dataclasses.replace(cfg, **overrides)
    validate(new)
    return new


def validate(cfg: CoAtNetConfig) -> None:
    """Raise BadInput naming the first field that cannot build a valid CoAtNet."""
    for field in ("stem_width", "head_dim", "expansion", "mlp_ratio", "num_classes",
                  "train_resolution", "test_resolution"):
        v = getattr(cfg, field)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BadInput(f"{field}: must be a positive whole number, got {v!r}")
    for field in ("depths", "widths"):
        v = getattr(cfg, field)
        if (not isinstance(v, tuple) or len(v) != 4
                or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v)):
            raise BadInput(f"{field}: must be 4 positive whole numbers (S1..S4), got {v!r}")
    for w in cfg.widths[2:]:
        if w % cfg.head_dim:
            raise BadInput(f"widths: Transformer width {w} does not split into {cfg.head_dim}-wide heads; "
                           f"use multiples of {cfg.head_dim}")
    if not (isinstance(cfg.se_ratio, (int, float)) and 0 < cfg.se_ratio <= 1):
        raise BadInput(f"se_ratio: must be in (0, 1], got {cfg.se_ratio!r}")
    if cfg.stride_at not in STRIDE_AT:
        raise BadInput(f"stride_at: {cfg.stride_at!r} is not one of {', '.join(STRIDE_AT)}")
    if not isinstance(cfg.pre_logits, bool):
        raise BadInput(f"pre_logits: must be true or false, got {cfg.pre_logits!r}")
    if not (isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1):
        raise BadInput(f"dropout: must be in [0, 1), got {cfg.dropout!r}")


# --- the sweep grid keys (a spec's [grid] / [isoflop] table) ------------------------------
GRID_KEYS = ("coatnet_depth_mults", "coatnet_width_mults")


def _numbers(table: dict, key: str, where: str) -> list[float]:
    if key not in table:
        raise BadInput(f"{where}{key}: missing; the CoAtNet grid needs coatnet_depth_mults and coatnet_width_mults")
    raw = table[key] if isinstance(table[key], list) else [table[key]]
    if not raw:
        raise BadInput(f"{where}{key}: empty list; give at least one value")
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise BadInput(f"{where}{key}: {v!r} is not a positive number; e.g. {key} = [0.25, 0.5]")
    if len(set(raw)) != len(raw):
        raise BadInput(f"{where}{key}: duplicate entry; list each value once")
    return [float(v) for v in raw]


def grid_names(table: dict, where: str) -> list[str]:
    """Family names of coatnet_depth_mults x coatnet_width_mults."""
    names = []
    for d in _numbers(table, "coatnet_depth_mults", where):
        for w in _numbers(table, "coatnet_width_mults", where):
            try:
                names.append(model_name(family_config(d, w, num_classes=1)))
            except BadInput as err:
                raise BadInput(f"{where}{err}") from None
    return names


# --- the default training recipe ------------------------------------------------------------
@dataclass(frozen=True)
class CoAtNetRecipe(TypedRecipe):
    """AdamW with global-norm clipping, warmup then linear (or cosine) decay over the
    run's own length ([Dai21]'s ImageNet-1K settings; docs/references.md#coatnet-training-recipe).
    Peak LR and run length are runtime inputs, as for every family.

    The update (decoupled decay scaled by the current LR, AdamW's form):
    p <- p - lr(t) * (adam(clip(g)) + weight_decay * p) on kernels.
    """

    RECIPE_NAME = " of the CoAtNet recipe"  # in the unknown-key message

    beta1: float = _p(0.9, "float", 0.0, 1.0, hi_open=True)  # AdamW defaults (optax / TF), [Dai21] names AdamW
    beta2: float = _p(0.999, "float", 0.0, 1.0, hi_open=True)  # same
    eps: float = _p(1e-8, "float", 0.0, None, lo_open=True)  # same
    grad_clip_norm: float = _p(1.0, "float", 0.0, None)  # [Dai21] clips at global norm 1; 0 = off
    weight_decay: float = _p(0.05, "float", 0.0, None)  # [Dai21] ImageNet-1K: 0.05
    # 10k warmup steps of ~94k (300 ImageNet epochs at batch 4096) [Dai21]: ~11%, rounded to 0.1.
    warmup_fraction: float = _p(0.1, "float", 0.0, 1.0, hi_open=True)
    decay: str = dataclasses.field(default="linear")  # [Dai21]: linear decay
    # 0.0 for pre-training, the project's convention for every family (held-out loss is
    # measured without it); [Dai21] uses 0.1 on ImageNet-1K.
    label_smoothing: float = _p(0.0, "float", 0.0, 1.0, hi_open=True)

    def __post_init__(self):
        check_typed_fields(self, "optimizer.")
        if not isinstance(self.decay, str) or self.decay not in DECAYS:
            raise BadInput(f"optimizer.decay: {self.decay!r} is not one of {', '.join(DECAYS)}; "
                           f"e.g. decay = \"linear\"")
