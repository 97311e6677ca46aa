"""Exact parameter and MAC counts of an NFNet config, without building the model.

Pure Python (no jax) so `analysis`, the planner and `model-info` can use it.

MAC convention (the one that reproduces [B21] Table 3 exactly,
docs/references.md#table-3-parameters-and-macs; it is
the official code's `count_flops`): one MAC per multiply-accumulate of every
convolution (padded SAME positions included, grouped convs at in/groups per output)
and of every linear layer (the two squeeze-excite layers and the classifier). Not
counted: activations, weight standardisation, biases and gains, pooling (stride-2
shortcut pooling, the SE mean, the global mean), sigmoid, skip gains, residual adds.
The block's first 1x1 conv runs before the stride, at the input resolution.
Resolutions follow SAME padding: a stride-2 layer maps h to ceil(h / 2).

FLOPs are 2 per MAC; a training step is 3x the forward FLOPs
(docs/units.md#three-records-per-run).
"""
from __future__ import annotations

from dataclasses import dataclass

from scaling.errors import BadInput
from scaling.models.config import NFNetConfig

_STEM_STRIDES = (2, 1, 1, 2)  # docs/references.md#stem: 3x3 s2, s1, s1, s2
_K = 3  # 3x3 kernels in the stem and the grouped convs; docs/references.md#nfnet-architecture-and-recipe


@dataclass(frozen=True)
class ModelCounts:
    """Per-example counts at one resolution."""

    params: int
    macs: int  # forward multiply-accumulates per example
    resolution: int
    channels: int = 3  # input channels (1 for grayscale data): the first stem conv's fan-in

    @property
    def flops(self) -> int:
        """Forward FLOPs per example (2 per MAC)."""
        return 2 * self.macs

    @property
    def train_flops(self) -> int:
        """Training FLOPs per example: forward + backward = 3x forward."""
        return 3 * self.flops


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _valid_taps(n: int, k: int, stride: int) -> int:
    """Sum over the SAME-padded outputs of one axis of the kernel taps that land inside
    the input (lax's SAME: out = ceil(n / s), padding split low = total // 2)."""
    out = _ceil_div(n, stride)
    low = max((out - 1) * stride + k - n, 0) // 2
    return sum(1 for o in range(out) for j in range(k) if 0 <= o * stride + j - low < n)


def _conv(
    cin: int, cout: int, k: int, groups: int, in_hw: int, stride: int, padding: bool
) -> tuple[int, int]:
    """(params, MACs) of a weight-standardised conv: kernel + gain + bias."""
    kernel = k * k * (cin // groups) * cout
    if padding:
        out_hw = _ceil_div(in_hw, stride)
        return kernel + 2 * cout, kernel * out_hw * out_hw
    taps = _valid_taps(in_hw, k, stride) ** 2
    return kernel + 2 * cout, taps * (cin // groups) * cout


def _linear(cin: int, cout: int) -> tuple[int, int]:
    return cin * cout + cout, cin * cout


def count(cfg: NFNetConfig, resolution: int, *, count_padding: bool = True, channels: int = 3) -> ModelCounts:
    """Exact params and forward MACs per example of `cfg` on resolution x resolution inputs
    with `channels` input channels (3: RGB; 1: grayscale data such as Fashion-MNIST).

    count_padding=False skips the taps that fall on SAME padding, as XLA's cost
    analysis does; it exists to cross-check against XLA (tests), not for reporting.
    """
    if not isinstance(resolution, int) or resolution < 1:
        raise BadInput(f"resolution: must be a positive integer, got {resolution!r}; e.g. 224")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise BadInput(f"channels: must be a positive integer, got {channels!r}; 3 for RGB, 1 for grayscale")
    parts: list[tuple[int, int]] = []
    h, ch = resolution, channels
    stem = (*cfg.stem_widths, cfg.widths[0] // 2)
    pad = count_padding
    for cout, stride in zip(stem, _STEM_STRIDES):
        parts.append(_conv(ch, cout, _K, 1, h, stride, pad))
        h = _ceil_div(h, stride)
        ch = cout
    for stage, (depth, out, stage_stride) in enumerate(zip(cfg.depths, cfg.widths, cfg.strides)):
        width, groups = cfg.block_widths(stage)
        hidden = max(1, int(out * cfg.se_ratio))
        for b in range(depth):
            stride = stage_stride if b == 0 else 1
            h_out = _ceil_div(h, stride)
            parts.append(_conv(ch, width, 1, 1, h, 1, pad))  # conv0, before the stride
            parts.append(_conv(width, width, _K, groups, h, stride, pad))  # conv1 (strided)
            parts.append(_conv(width, width, _K, groups, h_out, 1, pad))  # conv1b
            parts.append(_conv(width, out, 1, 1, h_out, 1, pad))  # conv2
            if stride > 1 or ch != out:
                parts.append(_conv(ch, out, 1, 1, h_out, 1, pad))  # shortcut projection
            parts.append(_linear(out, hidden))  # SE
            parts.append(_linear(hidden, out))
            parts.append((1, 0))  # skip_gain
            ch, h = out, h_out
    final = cfg.final_conv_mult * ch
    parts.append(_conv(ch, final, 1, 1, h, 1, pad))
    parts.append(_linear(final, cfg.num_classes))
    return ModelCounts(
        params=sum(p for p, _ in parts), macs=sum(m for _, m in parts), resolution=resolution,
        channels=channels,
    )
