"""What EfficientNetV2 and G16-EfficientNet share, without jax: stage tables, the
EfficientNet rounding rules, the parameter/MAC counter of an MBConv network, the
normaliser options and the RMSProp recipe (docs/models.md#efficientnetv2 and
#g16-efficientnet). The Flax side is scaling/models/mbconv.py.

MAC convention (docs/models.md#mbconv-mac-convention): one MAC per multiply-accumulate
of every convolution (SAME padding; a group conv at in/groups per output) and of every
dense layer (the two squeeze-excite layers, the classifier), per image. Not counted:
normalisers, activations, biases, pooling, the SE gate multiply, residual adds. FLOPs =
2 x MACs; training = 3 x forward.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from scaling.errors import BadInput, closest
from scaling.models.counts import ModelCounts
from scaling.optim_config import TypedRecipe, _p, check_typed_fields

# Batch-independent normalisers (docs/models.md#normalisers-instead-of-batchnorm); each has
# BN's per-channel scale and bias, so parameter counts equal the published BN tables:
#   gn     GroupNorm, groups of GN_GROUP_SIZE channels (our choice, see below)
#   ln     LayerNorm over (H, W, C) per image ([M21]/[L21]'s LayerNorm for convnets)
#   ln_pn  LayerNorm, then proxy-normalised activations [L21]
NORMS = ("gn", "ln", "ln_pn")
# Channels per GroupNorm group: 16 so that a group still holds 16 numbers on the 1x1 maps
# of a 16-32 px input (a fixed number of groups degenerates there at toy widths); our
# choice, neither [T21] nor [M21] fix it for EfficientNetV2 (docs/references.md#g16-efficientnet-and-proxy-norm).
GN_GROUP_SIZE = 16
# EfficientNet's BatchNorm epsilon, kept for the replacement norms (docs/references.md#efficientnetv2).
NORM_EPS = 1e-3
ROUND_DIVISOR = 8  # EfficientNet's channel rounding: multiples of 8 (docs/references.md#efficientnetv2)
KINDS = ("fused", "mbconv")
DECAYS = ("cosine", "linear")


@dataclass(frozen=True)
class Stage:
    """`repeats` blocks of one kind; the first has `stride`, the others stride 1.
    expand: expansion ratio of the block's input channels; se: squeeze-excite width as a
    fraction of the block's input channels (0 = none); group_size: channels per group of
    an MBConv's k x k conv (1 = depthwise)."""

    kind: str
    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int
    se: float = 0.0
    group_size: int = 1


def round_filters(channels: int, width_mult: float) -> int:
    """EfficientNet's rule: channels x width to the nearest multiple of 8 (at least 8),
    and up by 8 when rounding lost more than 10% (docs/references.md#efficientnetv2)."""
    want = channels * width_mult
    new = max(ROUND_DIVISOR, int(want + ROUND_DIVISOR / 2) // ROUND_DIVISOR * ROUND_DIVISOR)
    if new < 0.9 * want:
        new += ROUND_DIVISOR
    return int(new)


def round_repeats(repeats: int, depth_mult: float) -> int:
    """EfficientNet's rule: ceil(repeats x depth), at least 1."""
    return max(1, int(math.ceil(depth_mult * repeats)))


def scale_stages(stages: tuple[Stage, ...], depth_mult: float, width_mult: float) -> tuple[Stage, ...]:
    return tuple(dataclasses.replace(s, repeats=round_repeats(s.repeats, depth_mult),
                                     out=round_filters(s.out, width_mult)) for s in stages)


def groups_of(channels: int, group_size: int) -> int:
    """Groups of a k x k conv over `channels` with `group_size` channels each; where the
    size does not divide the channels (toy widths), gcd(channels, size) channels each."""
    return channels // math.gcd(channels, group_size)


def se_hidden(cin: int, ratio: float) -> int:
    """Squeeze-excite width: ratio x the block's INPUT channels (EfficientNet's rule), >= 1."""
    return max(1, int(cin * ratio))


def blocks(stem: int, stages: tuple[Stage, ...]):
    """(index, stage, cin, stride) of every block in order."""
    cin, i = stem, 0
    for s in stages:
        for r in range(s.repeats):
            yield i, s, cin, (s.stride if r == 0 else 1)
            cin, i = s.out, i + 1


def _out(h: int, stride: int) -> int:
    return -(-h // stride)  # SAME padding


def _valid_taps(h: int, k: int, stride: int) -> int:
    """Kernel taps along one axis, summed over the outputs, that land inside the input
    under SAME padding (the rest multiply padding zeros)."""
    ho = _out(h, stride)
    pad_lo = max((ho - 1) * stride + k - h, 0) // 2
    return sum(1 for o in range(ho) for i in range(k) if 0 <= o * stride + i - pad_lo < h)


def count_network(stem: int, stages: tuple[Stage, ...], head: int, num_classes: int,
                  resolution: int, channels: int, *, padded_taps: bool = True) -> ModelCounts:
    """Exact params and forward MACs per image (module docstring's convention).
    padded_taps=False counts only the taps that meet the input (XLA's cost analysis does
    so; used to cross-check the Flax module, tests/test_models_g16.py)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise BadInput(f"resolution: must be a positive integer, got {resolution!r}; e.g. 224")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise BadInput(f"channels: must be a positive integer, got {channels!r}; e.g. 3")
    params, macs = 0, 0

    def conv(cin, cout, k, h, stride=1, groups=1):
        nonlocal params, macs
        ho = _out(h, stride)
        params += k * k * (cin // groups) * cout + 2 * cout  # kernel (no bias) + norm scale/bias
        taps = (ho * k) ** 2 if padded_taps else _valid_taps(h, k, stride) ** 2
        macs += taps * (cin // groups) * cout
        return ho

    h = conv(channels, stem, 3, resolution, 2)  # stem: 3x3 stride 2
    for _, s, cin, stride in blocks(stem, stages):
        mid = cin * s.expand
        if s.kind == "fused":
            if s.expand == 1:
                h2 = conv(cin, s.out, s.kernel, h, stride)
            else:
                h2 = conv(cin, mid, s.kernel, h, stride)
        else:
            if s.expand != 1:
                conv(cin, mid, 1, h)
            h2 = conv(mid, mid, s.kernel, h, stride, groups_of(mid, s.group_size))
        if s.se:
            hid = se_hidden(cin, s.se)
            params += mid * hid + hid + hid * mid + mid
            macs += 2 * mid * hid
        if not (s.kind == "fused" and s.expand == 1):
            conv(mid, s.out, 1, h2)
        h = h2
    conv(stages[-1].out, head, 1, h)
    params += head * num_classes + num_classes
    macs += head * num_classes
    return ModelCounts(params=params, macs=macs, resolution=resolution, channels=channels)


def check_norm(norm: str, where: str = "norm") -> str:
    if norm not in NORMS:
        raise BadInput(f"{where}: {norm!r} is not a normaliser; {closest(str(norm), NORMS)}"
                       f"use one of {', '.join(NORMS)}")
    return norm


def check_multiplier(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadInput(f"{field}: must be a positive finite number, got {value!r}; e.g. 0.25")
    return float(value)


def fmt(x: float) -> str:
    """A multiplier as it appears in a name: 0.25 -> "0.25", 1.0 -> "1"."""
    return f"{x:g}"


def parse_family_name(text: str, prefix: str) -> dict | None:
    """"<prefix>-d<depth>-w<width>[-g<group size>][-e<expansion>][-<norm>]" -> fields, or None."""
    m = re.match(rf"^{prefix}-d(?P<d>[0-9.e+-]+?)-w(?P<w>[0-9.e+-]+?)(?:-g(?P<g>[0-9]+))?(?:-e(?P<e>[0-9]+))?"
                 rf"(?:-(?P<norm>[a-z_]+))?$", text, re.I)
    if not m:
        return None
    try:
        d, w = float(m["d"]), float(m["w"])
    except ValueError:
        return None
    return {"depth_mult": d, "width_mult": w, "group_size": m["g"] and int(m["g"]),
            "expand": m["e"] and int(m["e"]), "norm": m["norm"] and m["norm"].lower()}


def positive_numbers(table: dict, key: str, where: str) -> list[float]:
    """A grid's list of positive numbers, one line naming the key on error."""
    raw = table[key] if isinstance(table[key], list) else [table[key]]
    if not raw:
        raise BadInput(f"{where}{key}: empty list; give at least one value")
    out = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise BadInput(f"{where}{key}: {v!r} is not a positive number; e.g. {key} = [0.25, 0.5]")
        out.append(float(v))
    if len(set(out)) != len(out):
        raise BadInput(f"{where}{key}: duplicate entry; list each value once")
    return out


# --- the default training recipe (docs/references.md#efficientnetv2) --------------------
@dataclass(frozen=True)
class MBConvRecipe(TypedRecipe):
    """RMSProp with momentum and L2 weight decay on kernels, EfficientNet's optimiser
    ([T21] section 5; docs/references.md#efficientnetv2), with the project's warmup +
    cosine schedule over the run's own length instead of [T21]'s 0.97-per-2.4-epochs
    exponential decay (a run's length is a runtime input here, so the schedule must be a
    function of the fraction of the run; docs/models.md#the-mbconv-recipe)."""

    RECIPE_NAME = " of the EfficientNet recipe"

    rms_decay: float = _p(0.9, "float", 0.0, 1.0, hi_open=True)  # [T21]: RMSProp decay 0.9
    momentum: float = _p(0.9, "float", 0.0, 1.0, hi_open=True)  # [T21]: momentum 0.9
    eps: float = _p(1e-3, "float", 0.0, None, lo_open=True)  # [T21] official code: RMSProp epsilon 0.001
    weight_decay: float = _p(1e-5, "float", 0.0, None)  # [T21]: 1e-5, L2 on the gradient of kernels
    # [T21]: 5 warmup epochs of 350 (1.4%); a fraction of the run as for NFNet, rounded up
    # to 0.05 (the project's NFNet default) so toy runs of a few hundred steps warm up at all.
    warmup_fraction: float = _p(0.05, "float", 0.0, 1.0, hi_open=True)
    decay: str = dataclasses.field(default="cosine")  # "cosine" (default) or "linear"
    # 0 for pre-training as for every family here (held-out loss is measured without it);
    # [T21]'s ImageNet runs use 0.1.
    label_smoothing: float = _p(0.0, "float", 0.0, 1.0, hi_open=True)

    def __post_init__(self):
        check_typed_fields(self, "optimizer.")
        if not isinstance(self.decay, str) or self.decay not in DECAYS:
            raise BadInput(f"optimizer.decay: {self.decay!r} is not one of {', '.join(DECAYS)}; "
                           f"e.g. decay = \"cosine\"")


def check_config(cfg, whole_fields: tuple[str, ...]) -> None:
    """The checks every MBConv-family config shares: positive whole numbers, a known
    normaliser, a dropout rate in [0, 1) (one-line BadInput naming the field)."""
    for field in whole_fields:
        v = getattr(cfg, field)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BadInput(f"{field}: must be a positive whole number, got {v!r}")
    check_norm(cfg.norm)
    if not (isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1):
        raise BadInput(f"dropout: must be in [0, 1), got {cfg.dropout!r}")


def family_grid_names(table: dict, where: str, prefix: str, title: str, default_norm: str, member) -> list[str]:
    """`{prefix}_depth_mults` x `{prefix}_width_mults` (both required) of a continuous MBConv
    family, one `{prefix}_norm` for all; `member(d, w, norm)` -> the member's canonical name."""
    depth_key, width_key, norm_key = f"{prefix}_depth_mults", f"{prefix}_width_mults", f"{prefix}_norm"
    for key in (depth_key, width_key):
        if key not in table:
            raise BadInput(f"{where}{key}: missing; the {title} grid needs {depth_key} and {width_key}")
    norm = table.get(norm_key, default_norm)
    check_norm(norm, f"{where}{norm_key}")
    return [member(d, w, norm) for d in positive_numbers(table, depth_key, where)
            for w in positive_numbers(table, width_key, where)]
