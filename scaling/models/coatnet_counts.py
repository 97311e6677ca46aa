"""Exact parameter and MAC counts of a CoAtNet config, without building the model. Pure Python.

MAC convention (docs/models.md#coatnet-mac-convention): one MAC per multiply-accumulate
of every convolution and matrix product of the forward pass, per image, on the actual
maps (each stage halves its input side rounding up, `coatnet_config.grids`):
  stem              two 3x3 convs (27 C0 and 9 C0^2 per output pixel)
  MBConv            1x1 expansion (at the output map when the stride sits on it, "1x1";
                    at the input map for "dw"), 3x3 depthwise (9 per output element),
                    SE (2 x mid x hidden), 1x1 projection, and the shortcut's 1x1
                    projection when the channels change
  Transformer       q/k/v T x Cin x 3D, attention 2 x T^2 x D (q.k^T and the weighted
                    sum of v), output T x D^2, MLP 2 x T x D x 4D, shortcut projection
  head              pre-logits D^2, classifier D x K
Not counted: normalisation, activations, biases, the SE gate multiply, the relative-
position bias add, softmax, pooling and residual adds. FLOPs = 2 x MACs; training FLOPs
= 3 x forward (as for every family).

Parameters: conv and dense kernels, biases where the module has them (shortcut and
output projections, SE, attention, MLP, head), one scale and bias per channel for every
normaliser (the count BatchNorm's affine parameters have; running statistics are not
parameters), and the relative-position tables, (2H-1)(2W-1) per head on the stage's
token grid H x W at `resolution` (so params depend on the resolution, as ViT's do).
"""
from __future__ import annotations

from scaling.errors import BadInput
from scaling.models.coatnet_config import CoAtNetConfig, grids
from scaling.models.counts import ModelCounts


def mbconv_mid(cfg: CoAtNetConfig, cout: int) -> tuple[int, int]:
    """(expanded width, SE hidden width) of an MBConv block with `cout` outputs: expansion
    on the output width and SE hidden int(se_ratio x cout), as timm's CoAtNets."""
    return cfg.expansion * cout, max(1, int(cfg.se_ratio * cout))


def count(cfg: CoAtNetConfig, resolution: int, *, channels: int = 3) -> ModelCounts:
    """Exact params and forward MACs per image of `cfg` on resolution x resolution inputs."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise BadInput(f"resolution: must be a positive integer, got {resolution!r}; e.g. 224")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise BadInput(f"channels: must be a positive integer, got {channels!r}; e.g. 3")
    sides = grids(resolution)
    c0 = cfg.stem_width
    px = sides[0] ** 2
    params = 9 * channels * c0 + 2 * c0 + 9 * c0 * c0  # conv, norm, conv (no conv biases)
    macs = px * 9 * channels * c0 + px * 9 * c0 * c0
    cin, side_in = c0, sides[0]
    for s, (depth, cout) in enumerate(zip(cfg.depths, cfg.widths)):
        side = sides[s + 1]
        for i in range(depth):
            first = i == 0
            hw_in, hw = (side_in if first else side) ** 2, side ** 2
            if first and cin != cout:  # shortcut: pool, then a 1x1 projection with bias
                params += cin * cout + cout
                macs += hw * cin * cout
            params += 2 * cin  # the block's pre-norm
            if s < 2:  # MBConv
                mid, se = mbconv_mid(cfg, cout)
                expand_px = hw if (not first or cfg.stride_at == "1x1") else hw_in
                params += cin * mid + 2 * mid + 9 * mid + 2 * mid  # 1x1, norm, depthwise, norm
                macs += expand_px * cin * mid + hw * 9 * mid
                params += mid * se + se + se * mid + mid  # SE
                macs += 2 * mid * se
                params += mid * cout + cout  # 1x1 projection with bias
                macs += hw * mid * cout
            else:  # Transformer with relative attention
                heads = cout // cfg.head_dim
                hidden = cfg.mlp_ratio * cout
                params += cin * 3 * cout + 3 * cout + cout * cout + cout  # qkv, output
                params += (2 * side - 1) ** 2 * heads  # relative-position table
                macs += hw * cin * 3 * cout + 2 * hw * hw * cout + hw * cout * cout
                params += 2 * cout + cout * hidden + hidden + hidden * cout + cout  # norm, MLP
                macs += 2 * hw * cout * hidden
            cin = cout
        side_in = side
    d = cin
    params += 2 * d  # head norm
    if cfg.pre_logits:
        params += d * d + d
        macs += d * d
    params += d * cfg.num_classes + cfg.num_classes
    macs += d * cfg.num_classes
    return ModelCounts(params=params, macs=macs, resolution=resolution)
