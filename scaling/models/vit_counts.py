"""Exact parameter and MAC counts of a ViT config, without building the model. Pure Python.

MAC convention (docs/models.md#vit-mac-convention; it reproduces the published figures in
docs/references.md#vision-transformers): one MAC per multiply-accumulate of every matrix
product of the forward pass, per image:
  patch embedding   N x (P*P*C) x D             (N = patches, a VALID conv)
  each block        T x (3 D^2 + D^2 + 2 D M)   (q/k/v, attention output, the two MLP layers)
                    + 2 x T^2 x D               (attention: q.k^T and the weighted sum of v)
  MAP head          D^2 + 2 N D^2 + 2 N D + D^2 + 2 D M   (one query: q; k and v of every
                                                token; attention; output; the MLP)
  classifier        D x K
with T = N + 1 under class-token pooling, else N. Not counted: layer norms, softmax,
GELU, biases, position-embedding adds, residual adds, pooling means, the scale by
1/sqrt(head dim). FLOPs = 2 x MACs; training FLOPs = 3 x forward (as for NFNet).

Parameters: patch kernel + bias; learned position embeddings (one per token, the class
token's included, as in [D21]/timm); the class token; per block two layer norms (scale +
bias), q/k/v and output projections with biases, the two MLP layers with biases; the final
layer norm; the MAP head (probe, its attention, layer norm and MLP); the classifier.
"""
from __future__ import annotations

from scaling.errors import BadInput
from scaling.models.counts import ModelCounts
from scaling.models.vit_config import ViTConfig


def count(cfg: ViTConfig, resolution: int, *, channels: int = 3) -> ModelCounts:
    """Exact params and forward MACs per image of `cfg` on resolution x resolution inputs
    with `channels` channels. Params depend on the resolution through the position
    embeddings (one per token)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise BadInput(f"resolution: must be a positive integer, got {resolution!r}; e.g. 224")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise BadInput(f"channels: must be a positive integer, got {channels!r}; e.g. 3")
    if resolution < cfg.patch_size:
        raise BadInput(f"resolution: {resolution} px holds no {cfg.patch_size}x{cfg.patch_size} patch; "
                       f"use at least {cfg.patch_size}")
    d, m, k = cfg.width, cfg.mlp_dim, cfg.num_classes
    n = cfg.grid(resolution) ** 2
    t = cfg.tokens(resolution)
    patch_in = cfg.patch_size * cfg.patch_size * channels

    params = patch_in * d + d  # patch embedding
    macs = n * patch_in * d
    params += t * d  # learned position embeddings
    if cfg.pool == "tok":
        params += d  # class token
    block_params = 2 * (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    block_macs = t * (3 * d * d + d * d + 2 * d * m) + 2 * t * t * d
    params += cfg.depth * block_params
    macs += cfg.depth * block_macs
    params += 2 * d  # final layer norm
    if cfg.pool == "map":
        params += d + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
        macs += d * d + 2 * n * d * d + 2 * n * d + d * d + 2 * d * m
    params += d * k + k  # classifier
    macs += d * k
    return ModelCounts(params=params, macs=macs, resolution=resolution)
