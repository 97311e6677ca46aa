"""CoAtNet ([Dai21]: C-C-T-T, MBConv then Transformer stages with relative attention) in
Flax linen, and its recipe.

    params = init_params(cfg, rng, resolution)
    logits = CoAtNet(cfg).apply({"params": params}, images, train=True, rngs={"dropout": key})

Layout (docs/models.md#coatnet): S0 stem (3x3 conv stride 2, norm, GELU, 3x3 conv); S1, S2
pre-norm MBConv blocks (norm -> 1x1 expand -> norm, GELU -> 3x3 depthwise -> norm, GELU
-> SE -> 1x1 project, plus the shortcut); S3, S4 pre-norm Transformer blocks (x +
attn(LN(x)), x + MLP(LN(x))) whose attention adds a learned bias per head and relative
offset, from a (2H-1) x (2W-1) table on the stage's H x W token grid. A stage's first
block halves the map: the shortcut is 2x2 average pooling then (if the width changes) a
1x1 projection; the MBConv branch strides its 1x1 expansion ("1x1", [Dai21]) or its
depthwise conv ("dw", timm); the Transformer branch pools after its norm. Head: global
mean, layer norm, a tanh pre-logits layer, the classifier.

Normalisation without batch statistics: where [Dai21] has BatchNorm (stem, MBConv), this
module uses a per-pixel layer norm over channels with one scale and bias per channel
(the same parameter count as BatchNorm's affine part; the trainer keeps no batch state).

Parameter paths (the recipe's weight-decay mask reads them): every conv/dense matrix is
`kernel` with the output axis last (convs HWIO, the depthwise (3, 3, 1, C)); biases
`bias`; norms `scale`/`bias`; relative-position tables `rel_table` (2H-1, 2W-1, heads).
Top level: `stem_conv0`, `stem_norm0`, `stem_conv1`, `s<stage>b<i>` for stages 1-4
(MBConv: `shortcut/proj`, `pre_norm`, `expand`, `norm1`, `dw`, `norm2`, `se/{fc0,fc1}`,
`project`; Transformer: `shortcut/proj`, `pre_norm`, `attn/{qkv,out,rel_table}`, `norm2`,
`fc1`, `fc2`), `head_norm`, `pre_logits`, `classifier`.

CPU kernels (docs/models.md#coatnet-on-this-cpu): the depthwise conv is nine shifted
multiply-adds (`impl="cpu"`; on maps of at most 2x2 one dense product, layers.py's
`_dense`), 4-8x faster forward + backward than XLA's feature_group_count conv here.
"""
from __future__ import annotations

import functools
import math
import re
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scaling.models.coatnet_config import CoAtNetConfig, CoAtNetRecipe
from scaling.models.coatnet_counts import mbconv_mid
from scaling.models import layers
from scaling.models.layers import _dense as dense_small_map
from scaling.models.layers import conv2d

NORM_EPS = 1e-5  # BatchNorm's epsilon in timm's MBConv (the normaliser it replaces)
LN_EPS = 1e-6  # Transformer layer norms, timm's CoAtNet (as ViT)
# Relative-position table init: timm's RelPosBias draws a normal of std 0.02 truncated at
# +-2 (absolute bounds, 100 std: in effect not truncated).
REL_STD = 0.02
IMPLS = ("cpu", "native")


def resolve_impl(impl: str) -> str:
    """"auto" -> "cpu" on the CPU backend, "native" elsewhere. cpu: depthwise convs as
    shifted multiply-adds, attention as einsums; native: feature_group_count convs and
    jax.nn.dot_product_attention. Both compute the same function (tests)."""
    if impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "native"
    if impl not in IMPLS:
        from scaling.errors import BadInput

        raise BadInput(f"impl: must be 'auto' or one of {IMPLS}, got {impl!r}")
    return impl


# ------------------------------------------------------------------------- kernels


def depthwise_conv(x: jax.Array, w: jax.Array, *, stride: int = 1, impl: str = "native") -> jax.Array:
    """SAME depthwise conv, kernel (k, k, 1, C). cpu: one dense product on maps of at most
    2x2 pixels, shifted multiply-adds otherwise (measured in docs/models.md)."""
    c = x.shape[-1]
    if impl == "cpu":
        if x.shape[1] * x.shape[2] <= 4:
            return dense_small_map(x, w, stride, c)
        return layers.depthwise_taps(x, w, stride)
    return lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=c)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2, SAME: an odd side's last row/column averages only
    its real pixels (the output side is ceil(side / 2))."""
    b, h, w, c = x.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    total = x.reshape(b, (h + ph) // 2, 2, (w + pw) // 2, 2, c).sum(axis=(2, 4))
    ones = np.pad(np.ones((h, w)), ((0, ph), (0, pw)))
    counts = ones.reshape((h + ph) // 2, 2, (w + pw) // 2, 2).sum(axis=(1, 3))
    return total * jnp.asarray(1.0 / counts, x.dtype)[None, :, :, None]


def rel_bias(table: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """[heads, T, T] attention bias of a (2H-1, 2W-1, heads) table for an H x W token grid
    (T = H W): entry (i, j) is the table at offset (row_i - row_j, col_i - col_j). A table
    made for another grid is first resampled bilinearly (as timm does on a new size)."""
    h, w = grid
    if table.shape[:2] != (2 * h - 1, 2 * w - 1):
        table = jax.image.resize(table, (2 * h - 1, 2 * w - 1, table.shape[-1]), "bilinear")
    rows, cols = np.divmod(np.arange(h * w), w)
    di = rows[:, None] - rows[None, :] + h - 1
    dj = cols[:, None] - cols[None, :] + w - 1
    return jnp.transpose(table[di, dj], (2, 0, 1))


# ------------------------------------------------------------------------- modules


class Norm(nn.Module):
    """Normalisation over the channel axis with float32 statistics, params `scale`, `bias`
    (the layer norm of the Transformer blocks, and the batch-independent stand-in for
    BatchNorm in the stem and MBConv blocks)."""

    eps: float = LN_EPS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        xf = x.astype(jnp.float32)
        centred = xf - jnp.mean(xf, axis=-1, keepdims=True)
        y = centred * lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        return (y * scale + bias).astype(self.dtype)


class Pointwise(nn.Module):
    """1x1 conv as one matrix product on [B*H*W, C]; `stride` 2 keeps every other pixel
    (SAME padding of a 1x1 kernel)."""

    features: int
    stride: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.stride > 1:
            x = x[:, ::self.stride, ::self.stride]
        b, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, c, self.features))
        y = jnp.dot(x.reshape(b * h * w, c), kernel.reshape(c, self.features).astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y.reshape(b, h, w, self.features)


class Conv(nn.Module):
    """SAME kxk conv without bias, kernel HWIO (`groups` = channels: depthwise)."""

    features: int
    stride: int = 1
    depthwise: bool = False
    dtype: Any = jnp.float32
    impl: str = "native"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        shape = (3, 3, 1, cin) if self.depthwise else (3, 3, cin, self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape).astype(self.dtype)
        if self.depthwise:
            return depthwise_conv(x, kernel, stride=self.stride, impl=self.impl)
        return conv2d(x, kernel, stride=self.stride, impl=self.impl)


class Shortcut(nn.Module):
    """A stage's first block's shortcut: 2x2 average pool, then a 1x1 projection with
    bias when the width changes (timm's Downsample2d; [Dai21] Proj(Pool(x)))."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = avg_pool2(x)
        if x.shape[-1] != self.features:
            x = Pointwise(self.features, use_bias=True, dtype=self.dtype, name="proj")(x)
        return x


class SqueezeExcite(nn.Module):
    """Mean over space -> dense -> SiLU -> dense -> sigmoid gate (timm's CoAtNet SE)."""

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.mean(x, axis=(1, 2))
        h = jax.nn.silu(nn.Dense(self.hidden, dtype=self.dtype, name="fc0")(h))
        h = nn.Dense(x.shape[-1], dtype=self.dtype, name="fc1")(h)
        return x * jax.nn.sigmoid(h)[:, None, None, :]


class MBConv(nn.Module):
    cfg: CoAtNetConfig
    features: int
    stride: int
    dtype: Any = jnp.float32
    impl: str = "cpu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dt = self.cfg, self.dtype
        mid, se = mbconv_mid(cfg, self.features)
        down = self.stride > 1
        shortcut = Shortcut(self.features, dt, name="shortcut")(x) if down else x
        y = Norm(NORM_EPS, dt, name="pre_norm")(x)
        y = Pointwise(mid, stride=self.stride if cfg.stride_at == "1x1" else 1, dtype=dt, name="expand")(y)
        y = nn.gelu(Norm(NORM_EPS, dt, name="norm1")(y))
        y = Conv(mid, self.stride if cfg.stride_at == "dw" else 1, True, dt, self.impl, name="dw")(y)
        y = nn.gelu(Norm(NORM_EPS, dt, name="norm2")(y))
        y = SqueezeExcite(se, dt, name="se")(y)
        return shortcut + Pointwise(self.features, use_bias=True, dtype=dt, name="project")(y)


class RelAttention(nn.Module):
    """Multihead self-attention over an H x W token grid with a relative-position bias."""

    features: int
    head_dim: int
    dtype: Any = jnp.float32
    impl: str = "cpu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        t, d, hd = h * w, self.features, self.head_dim
        heads = d // hd
        shape = (self.get_variable("params", "rel_table").shape if self.has_variable("params", "rel_table")
                 else (2 * h - 1, 2 * w - 1, heads))
        table = self.param("rel_table", nn.initializers.normal(REL_STD), shape)
        bias = rel_bias(table, (h, w))  # heads, T, T (float32)
        qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x.reshape(b * t, c)).reshape(b, t, 3, heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # B, T, heads, hd
        if self.impl == "native":
            out = jax.nn.dot_product_attention(q, k, v, bias=bias[None].astype(q.dtype))
        else:
            q = (q * jnp.asarray(1.0 / math.sqrt(hd), q.dtype)).transpose(0, 2, 1, 3)
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
            logits = jnp.einsum("bhsd,bhtd->bhst", q, k).astype(jnp.float32) + bias[None]
            weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            out = jnp.einsum("bhst,bhtd->bhsd", weights, v).transpose(0, 2, 1, 3)
        out = nn.Dense(d, dtype=self.dtype, name="out")(out.reshape(b * t, d))
        return out.reshape(b, h, w, d)


class TransformerBlock(nn.Module):
    cfg: CoAtNetConfig
    features: int
    stride: int
    dtype: Any = jnp.float32
    impl: str = "cpu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dt = self.cfg, self.dtype
        down = self.stride > 1
        shortcut = Shortcut(self.features, dt, name="shortcut")(x) if down else x
        y = Norm(LN_EPS, dt, name="pre_norm")(x)
        if down:
            y = avg_pool2(y)
        x = shortcut + RelAttention(self.features, cfg.head_dim, dt, self.impl, name="attn")(y)
        b, h, w, d = x.shape
        y = Norm(LN_EPS, dt, name="norm2")(x).reshape(b * h * w, d)
        y = nn.Dense(cfg.mlp_ratio * d, dtype=dt, name="fc1")(y)
        y = nn.Dense(d, dtype=dt, name="fc2")(nn.gelu(y))
        return x + y.reshape(b, h, w, d)


class CoAtNet(nn.Module):
    """The CoAtNet of `cfg`; `dtype` is the compute dtype of the activations (params
    float32, logits float32); `impl` picks the kernels (`resolve_impl`)."""

    cfg: CoAtNetConfig
    dtype: Any = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.cfg
        dt = jnp.dtype(self.dtype)
        impl = resolve_impl(self.impl)
        conv_impl = "cpu" if impl == "cpu" else "native"
        x = x.astype(dt)
        x = Conv(cfg.stem_width, 2, dtype=dt, impl=conv_impl, name="stem_conv0")(x)
        x = nn.gelu(Norm(NORM_EPS, dt, name="stem_norm0")(x))
        x = Conv(cfg.stem_width, 1, dtype=dt, impl=conv_impl, name="stem_conv1")(x)
        for s, (depth, width) in enumerate(zip(cfg.depths, cfg.widths), start=1):
            block = MBConv if s <= 2 else TransformerBlock
            for i in range(depth):
                x = block(cfg, width, 2 if i == 0 else 1, dt, impl, name=f"s{s}b{i}")(x)
        x = Norm(LN_EPS, dt, name="head_norm")(jnp.mean(x, axis=(1, 2)))
        if cfg.pre_logits:
            x = jnp.tanh(nn.Dense(x.shape[-1], dtype=dt, name="pre_logits")(x))
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        # As for NFNet and ViT: below float32 the classifier accumulates and returns float32.
        wide = None if dt == jnp.float32 else functools.partial(lax.dot_general, preferred_element_type=jnp.float32)
        logits = nn.Dense(cfg.num_classes, kernel_init=nn.initializers.zeros, dtype=dt, dot_general=wide,
                          name="classifier")(x)
        return logits.astype(jnp.float32)


# ------------------------------------------------------------------------ initialisation


def init_params(cfg: CoAtNetConfig, rng: jax.Array, resolution: int, *, channels: int = 3):
    """Parameter pytree of CoAtNet(cfg) for `resolution` px inputs, drawn on the host with
    numpy from `rng` (deterministic, identical on every host; no compilation). The
    relative-position tables fit the token grids at this resolution. Distributions
    (timm's CoAtNet initialisers; docs/references.md#coatnet):
      stem and MBConv convs, SE   normal, std sqrt(2 / fan_out) (EfficientNet-style); biases 0
      Transformer dense, its shortcut  xavier uniform; biases 0 (MLP biases normal 1e-6)
      rel_table                   normal, std 0.02
      norms                       scale 1, bias 0
      pre-logits                  xavier uniform; classifier kernel and bias 0 (as ViT)
    """
    from flax import traverse_util

    dummy = jax.ShapeDtypeStruct((1, resolution, resolution, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: CoAtNet(cfg, impl="native").init(jax.random.key(0), x, train=False), dummy)
    seed = [int(v) for v in np.asarray(jax.random.key_data(rng)).ravel()]
    flat = {}
    for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
        gen = np.random.default_rng([*seed, zlib.crc32("/".join(path).encode())])
        flat[path] = jnp.asarray(_draw(path, leaf.shape, gen, cfg))
    return traverse_util.unflatten_dict(flat)


def _is_transformer(path: tuple[str, ...]) -> bool:
    """Inside an S3/S4 block ("s3b0/...")."""
    return re.match(r"^s[34]b[0-9]+$", path[0]) is not None


def _draw(path: tuple[str, ...], shape: tuple[int, ...], gen: np.random.Generator, cfg: CoAtNetConfig):
    name, parent = path[-1], path[-2] if len(path) > 1 else ""
    transformer = _is_transformer(path)
    if name == "scale":
        out = np.ones(shape)
    elif parent == "classifier":
        out = np.zeros(shape)
    elif name == "bias":
        out = gen.normal(0.0, 1e-6, shape) if transformer and parent in ("fc1", "fc2") else np.zeros(shape)
    elif name == "rel_table":
        out = gen.normal(0.0, REL_STD, shape)
    elif transformer or parent == "pre_logits":
        fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        out = gen.uniform(-limit, limit, shape)
    elif name == "kernel":
        # fan_out = k * k * out / groups: the depthwise conv's is 9
        fan_out = int(np.prod(shape[:2])) * (1 if parent == "dw" else shape[-1])
        out = gen.normal(0.0, math.sqrt(2.0 / fan_out), shape)
    else:
        raise ValueError(f"no initializer for parameter {'/'.join(path)}")
    return out.astype(np.float32)


# ---------------------------------------------------------------------------- the recipe


def decay_rates(params, cfg: CoAtNetRecipe) -> Any:
    """weight_decay on every conv/dense matrix (`kernel`); 0 on norms, biases and
    relative-position tables (timm's no-decay set)."""
    def rate(path, _):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return cfg.weight_decay if names and names[-1] == "kernel" else 0.0

    return jax.tree_util.tree_map_with_path(rate, params)



def make_recipe(cfg: CoAtNetRecipe = CoAtNetRecipe()):
    """clip by global norm -> Adam (the direction); the AdamW update
    p - lr * (direction + rate * p), rate from `decay_rates`."""
    import optax

    from scaling.optim import Recipe, schedule

    chain = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm > 0 else []
    chain.append(optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps))
    optimizer = optax.chain(*chain)

    def apply_updates(params, direction, lr, peak_lr):
        del peak_lr  # AdamW: the decay is scaled by the current LR itself
        rates = decay_rates(params, cfg)
        return jax.tree.map(lambda p, dd, r: (p - lr * (dd + r * p)).astype(p.dtype) if r
                            else (p - lr * dd).astype(p.dtype), params, direction, rates)

    return Recipe(optimizer, schedule(cfg.decay), apply_updates)
