"""NFNet (Brock et al. 2021, [B21]) in Flax linen, faithful to
docs/references.md#nfnet-architecture-and-recipe.

    params = init_params(cfg, rng, resolution)
    logits = NFNet(cfg).apply({"params": params}, images, train=True,
                              rngs={"dropout": key})

Images are float32 NHWC [B, H, W, C] (C = 3, or 1 for grayscale data); logits come back float32 whatever the compute
dtype. `NFNet(cfg, dtype=jnp.bfloat16)` runs activations (convs, matmuls, the residual
stream) in bfloat16 with float32 parameters, as [B21]/[S23] train (docs/references.md#precision);
weight-standardisation statistics stay float32 (layers.py) and the classifier
accumulates in float32, so the logits are not rounded to bf16. With train=True, dropout and stochastic depth
draw from the "dropout" rng stream. Each block sows its residual-branch and
residual-stream variances into the "intermediates" collection (pass
mutable=["intermediates"] to read them) for signal-propagation checks.
"""
from __future__ import annotations

import functools
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scaling.models.config import NFNetConfig
from scaling.models.layers import SqueezeExcite, WSConv2D, gained_activation, resolve_conv_impl

_STEM_STRIDES = (2, 1, 1, 2)  # docs/references.md#stem
_CLASSIFIER_INIT_STD = 0.01  # docs/references.md#head-and-classifier-initialisation
_TRUNC_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (flax/jax)


def _channel_var(x: jax.Array) -> jax.Array:
    """Mean over channels of the per-channel variance over batch and space."""
    return jnp.mean(jnp.var(x, axis=(0, 1, 2)))


class NFBlock(nn.Module):
    """Pre-activation bottleneck: h + alpha * skip_gain * f(act(h) * beta)
    (docs/references.md#bottleneck-block-and-squeeze-excite).

    A transition block (stride 2 or a change of width) takes its shortcut from the
    normalised input act(h) * beta, average-pooled 2x2 when strided, then a 1x1 conv.
    """

    out_ch: int
    width: int  # bottleneck width
    groups: int
    stride: int
    beta: float  # 1 / expected std of the block input
    alpha: float
    stochdepth_rate: float
    se_hidden: int
    activation: str
    activation_gain: float
    skip_gain_init: float
    impl: str
    dtype: Any = jnp.float32  # compute dtype of the activations

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, drop_u: jax.Array | None = None) -> jax.Array:
        """drop_u: per-example uniforms [B] for stochastic depth (drawn once per network)."""
        act = gained_activation(self.activation, self.activation_gain)
        conv = lambda feats, k, name, stride=1, groups=1: WSConv2D(  # noqa: E731
            feats, k, stride, groups, self.impl, self.dtype, name=name
        )
        out = act(x) * self.beta
        if self.stride > 1:
            shortcut = nn.avg_pool(out, (2, 2), (2, 2), "SAME", count_include_pad=False)
            shortcut = conv(self.out_ch, 1, "conv_shortcut")(shortcut)
        elif x.shape[-1] != self.out_ch:
            shortcut = conv(self.out_ch, 1, "conv_shortcut")(out)
        else:
            shortcut = x
        out = conv(self.width, 1, "conv0")(out)
        out = conv(self.width, 3, "conv1", self.stride, self.groups)(act(out))
        out = conv(self.width, 3, "conv1b", 1, self.groups)(act(out))
        out = conv(self.out_ch, 1, "conv2")(act(out))
        out = 2.0 * SqueezeExcite(self.se_hidden, self.dtype, name="se")(out) * out
        self.sow("intermediates", "branch_var", _channel_var(out.astype(jnp.float32)))
        if train and self.stochdepth_rate > 0:
            keep = 1.0 - self.stochdepth_rate
            mask = (drop_u < keep).astype(out.dtype)[:, None, None, None]
            out = out * mask / keep
        skip_gain = self.param("skip_gain", nn.initializers.constant(self.skip_gain_init), ())
        out = out * skip_gain.astype(self.dtype) * self.alpha + shortcut
        self.sow("intermediates", "stream_var", _channel_var(out.astype(jnp.float32)))
        return out


def block_schedule(cfg: NFNetConfig) -> list[dict]:
    """Per-block hyper-parameters in order: stage, stride, width, groups, beta,
    expected input/output variance and stochastic-depth rate ([B21] bookkeeping).

    The expected variance of the residual stream grows by alpha^2 per block and
    resets to 1 + alpha^2 after each transition block (stride 2 or a width change),
    because the transition shortcut sees the normalised input. With the default
    strides every stage starts with a transition, as in the official code.
    """
    rows = []
    expected_var = 1.0
    index = 0
    in_ch = cfg.widths[0] // 2  # stem output
    for stage, (depth, out_ch, stage_stride) in enumerate(zip(cfg.depths, cfg.widths, cfg.strides)):
        width, groups = cfg.block_widths(stage)
        for b in range(depth):
            stride = stage_stride if b == 0 else 1
            transition = stride > 1 or in_ch != out_ch
            row = dict(
                stage=stage,
                out_ch=out_ch,
                stride=stride,
                transition=transition,
                width=width,
                groups=groups,
                beta=1.0 / expected_var**0.5,
                in_var=expected_var,
                # linear ramp over blocks, as in the official code: rate * index / num_blocks
                stochdepth_rate=cfg.stochdepth_rate * index / cfg.num_blocks,
            )
            if transition:
                expected_var = 1.0
            expected_var += cfg.alpha**2
            row["out_var"] = expected_var
            rows.append(row)
            index += 1
            in_ch = out_ch
    return rows


class NFNet(nn.Module):
    """The NFNet of `cfg`; `conv_impl` picks the grouped-conv kernels (layers.py);
    `dtype` is the compute dtype of the activations ("float32" or "bfloat16"; the
    parameters are float32 either way)."""

    cfg: NFNetConfig
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.cfg
        impl = resolve_conv_impl(self.conv_impl)
        dtype = jnp.dtype(self.dtype)
        x = x.astype(dtype)
        act = gained_activation(cfg.activation, cfg.activation_gain)
        stem = (*cfg.stem_widths, cfg.widths[0] // 2)
        for i, (feats, stride) in enumerate(zip(stem, _STEM_STRIDES)):
            if i:
                x = act(x)  # between stem convs, not after the last
            x = WSConv2D(feats, 3, stride, 1, impl, dtype, name=f"stem_conv{i}")(x)
        # One draw for every block's stochastic-depth mask rather than one threefry
        # expansion per block: with per-block draws a tiny F0's train-mode grad
        # compiled in 31 s vs 24 s in eval mode (busy 2-core CPU); RNG code is costly
        # to compile on CPU.
        drop_u = None
        if train and cfg.stochdepth_rate > 0:
            drop_u = jax.random.uniform(self.make_rng("dropout"), (cfg.num_blocks, x.shape[0]))
        for i, row in enumerate(block_schedule(cfg)):
            x = NFBlock(
                out_ch=row["out_ch"],
                width=row["width"],
                groups=row["groups"],
                stride=row["stride"],
                beta=row["beta"],
                alpha=cfg.alpha,
                stochdepth_rate=row["stochdepth_rate"],
                se_hidden=max(1, int(row["out_ch"] * cfg.se_ratio)),
                activation=cfg.activation,
                activation_gain=cfg.activation_gain,
                skip_gain_init=cfg.skip_gain_init,
                impl=impl,
                dtype=dtype,
                name=f"block{i}",
            )(x, train, None if drop_u is None else drop_u[i])
        x = WSConv2D(cfg.final_conv_mult * x.shape[-1], 1, 1, 1, impl, dtype, name="final_conv")(x)
        x = jnp.mean(act(x), axis=(1, 2))
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        # Below float32 the classifier takes bf16 inputs but accumulates and returns
        # float32 (free on GPU/TPU matrix units): bf16 logits would be rounded to
        # 8 significant bits, a visible step in the held-out loss. float32 runs keep
        # the plain Dense (the same program as before the dtype option existed).
        wide = None if dtype == jnp.float32 else functools.partial(
            lax.dot_general, preferred_element_type=jnp.float32)
        logits = nn.Dense(
            cfg.num_classes,
            kernel_init=nn.initializers.normal(_CLASSIFIER_INIT_STD),
            dtype=dtype,
            dot_general=wide,
            name="classifier",
        )(x)
        return logits.astype(jnp.float32)


def init_params(cfg: NFNetConfig, rng: jax.Array, resolution: int, conv_impl: str = "auto", *, channels: int = 3):
    """Parameter pytree of NFNet(cfg), drawn on the host with numpy from `rng`.

    Why not `model.init` under jit: compiling the init graph cost 10-50 s per shape on
    our 2-core CPU (docs/models.md#initialisation), more than many sweep trials train. Here only the shapes
    are traced (jax.eval_shape, no compile) and each leaf is drawn with numpy from a
    generator seeded by (rng, leaf path): deterministic, identical on every host.
    Distributions are those of the modules' own initializers (see `_draw`).
    The resolution only sizes the traced dummy input; shapes do not depend on it.
    `channels`: input channels of the data (3 RGB; 1 grayscale, e.g. Fashion-MNIST): the
    first stem conv's kernel is [3, 3, channels, ...].
    """
    from flax import traverse_util

    model = NFNet(cfg, conv_impl)
    dummy = jax.ShapeDtypeStruct((1, resolution, resolution, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
    seed = [int(v) for v in np.asarray(jax.random.key_data(rng)).ravel()]
    flat = {}
    for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
        gen = np.random.default_rng([*seed, zlib.crc32("/".join(path).encode())])
        flat[path] = jnp.asarray(_draw(path, leaf.shape, gen, cfg))
    return traverse_util.unflatten_dict(flat)


def _draw(path: tuple[str, ...], shape: tuple[int, ...], gen: np.random.Generator, cfg: NFNetConfig):
    """One leaf, as the module initializers would draw it (float32)."""
    name, parent = path[-1], path[-2] if len(path) > 1 else ""
    fan_in = int(np.prod(shape[:-1])) if shape else 1
    if name == "gain":
        out = np.ones(shape)
    elif name == "bias":
        out = np.zeros(shape)
    elif name == "skip_gain":
        out = np.full(shape, cfg.skip_gain_init)
    elif name == "kernel" and parent == "classifier":
        out = gen.normal(0.0, _CLASSIFIER_INIT_STD, shape)
    elif name == "kernel" and parent in ("fc0", "fc1"):
        # flax Dense default (lecun_normal): truncated at 2 std, rescaled to std 1/sqrt(fan_in)
        out = gen.standard_normal(shape)
        while (bad := np.abs(out) > 2).any():
            out[bad] = gen.standard_normal(int(bad.sum()))
        out *= np.sqrt(1.0 / fan_in) / _TRUNC_NORMAL_STD
    elif name == "kernel":
        out = gen.normal(0.0, np.sqrt(1.0 / fan_in), shape)  # WSConv2D: fan-in normal
    else:
        raise ValueError(f"no initializer for parameter {'/'.join(path)}")
    return out.astype(np.float32)
