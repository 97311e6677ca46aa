"""The Vision Transformer ([D21]; shapes of [Z21] and [A23]) in Flax linen, and its recipe.

    params = init_params(cfg, rng, resolution)
    logits = ViT(cfg).apply({"params": params}, images, train=True, rngs={"dropout": key})

Pre-norm blocks (x + attn(LN(x)), x + mlp(LN(x))), learned position embeddings, a final
layer norm, then class-token, mean (GAP) or multihead-attention (MAP) pooling and a
linear classifier (docs/models.md#vision-transformers). Images are float32 NHWC
[B, H, W, C]; logits come back float32 whatever the compute dtype (`dtype`: activations;
parameters are float32, as for NFNet).

Parameter paths (the recipe's weight-decay mask reads them): every matrix is `kernel`,
output axis last (the patch embedding HWIO (P, P, C, D); dense (in, out)); `bias`;
layer norms `scale`/`bias`; `pos_embedding` (1, T, D), `cls` (1, 1, D); blocks
`block<i>/{ln1, attn/{qkv, out}, ln2, mlp/{fc1, fc2}}`; `encoder_norm`; the MAP head
`map_head/{probe, attn/{q, kv, out}, ln, mlp/{fc1, fc2}}`; the classifier `classifier`.

CPU kernels (measured in docs/models.md#vit-on-this-cpu): the blocks hold the tokens of
the whole batch as rows of one [B*T, D] matrix, so every projection is a plain 2-D matrix
product forward and backward (on [B, T, D] activations XLA transposed them around each
weight-gradient product); q/k/v is one fused product; attention is two einsums in
[B, heads, T, head dim] layout with the softmax in float32 (`impl="cpu"`); layer norms
are written out (flax's materialised a full-size broadcast for the backward pass).

A different input size than the one the parameters were made for (e.g. evaluation at
another resolution) resamples the patch position embeddings bilinearly, as big_vision
does when it loads a checkpoint at a new resolution.
"""
from __future__ import annotations

import functools
import math
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scaling.models.vit_config import ViTConfig, ViTRecipe

LN_EPS = 1e-6  # flax / big_vision LayerNorm epsilon (timm's ViT uses the same)
_TRUNC_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (flax/jax)


class LayerNorm(nn.Module):
    """Layer norm over the last axis with statistics in float32 (params `scale`, `bias`).
    Written out because flax's version materialises scale x rsqrt(var) at the full
    activation size for the backward pass, a broadcast that cost ~6% of a ViT step on CPU."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        xf = x.astype(jnp.float32)
        centred = xf - jnp.mean(xf, axis=-1, keepdims=True)
        y = centred * lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + LN_EPS)
        return (y * scale + bias).astype(self.dtype)


def _dense(features: int, name: str, dtype) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name)


IMPLS = ("cpu", "native")


def resolve_impl(impl: str) -> str:
    """"auto" -> "cpu" on the CPU backend, "native" elsewhere (as NFNet's conv_impl):
      cpu     attention as two einsums, softmax in float32
      native  jax.nn.dot_product_attention (which may pick a fused kernel on GPU)
    Both compute the same function (tests/test_models_vit.py)."""
    if impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "native"
    if impl not in IMPLS:
        from scaling.errors import BadInput

        raise BadInput(f"impl: must be 'auto' or one of {IMPLS}, got {impl!r}")
    return impl


class PatchEmbed(nn.Module):
    """Non-overlapping P x P patches -> D: a VALID stride-P convolution. (As a reshape and
    one matrix product it was 1-10% slower per train step on this CPU: docs/models.md.)"""

    width: int
    patch: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        p = self.patch
        gh, gw = h // p, w // p
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.width))
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        y = lax.conv_general_dilated(x[:, :gh * p, :gw * p, :], kernel.astype(self.dtype), (p, p), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.reshape(b, gh * gw, self.width) + bias.astype(self.dtype), (gh, gw)


def _attend(q, k, v, num_heads: int, impl: str = "cpu"):
    """Multihead attention of q [B, S, D] over k, v [B, T, D]; softmax in float32."""
    b, s, d = q.shape
    t = k.shape[1]
    hd = d // num_heads
    q = q.reshape(b, s, num_heads, hd)
    k = k.reshape(b, t, num_heads, hd)
    v = v.reshape(b, t, num_heads, hd)
    if impl == "native":
        return jax.nn.dot_product_attention(q, k, v).reshape(b, s, d)
    q = (q * jnp.asarray(1.0 / math.sqrt(hd), q.dtype)).transpose(0, 2, 1, 3)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    logits = jnp.einsum("bhsd,bhtd->bhst", q, k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhst,bhtd->bhsd", weights, v)
    return out.transpose(0, 2, 1, 3).reshape(b, s, d)


class SelfAttention(nn.Module):
    num_heads: int
    dtype: Any = jnp.float32
    impl: str = "cpu"

    @nn.compact
    def __call__(self, x: jax.Array, batch: int) -> jax.Array:
        """x: the tokens of `batch` images as rows, [batch * T, D]."""
        n, d = x.shape
        qkv = _dense(3 * d, "qkv", self.dtype)(x).reshape(batch, n // batch, 3 * d)  # q, k, v in one product
        q, k, v = jnp.split(qkv, 3, axis=-1)
        return _dense(d, "out", self.dtype)(_attend(q, k, v, self.num_heads, self.impl).reshape(n, d))


class CrossAttention(nn.Module):
    """Queries from `q_in`, keys and values from `kv_in` (the MAP head's attention)."""

    num_heads: int
    dtype: Any = jnp.float32
    impl: str = "cpu"

    @nn.compact
    def __call__(self, q_in: jax.Array, kv_in: jax.Array) -> jax.Array:
        d = kv_in.shape[-1]
        q = _dense(d, "q", self.dtype)(q_in)
        k, v = jnp.split(_dense(2 * d, "kv", self.dtype)(kv_in), 2, axis=-1)
        return _dense(d, "out", self.dtype)(_attend(q, k, v, self.num_heads, self.impl))


class Mlp(nn.Module):
    hidden: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        d = x.shape[-1]
        y = nn.gelu(_dense(self.hidden, "fc1", self.dtype)(x))  # tanh form, flax's default (big_vision)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return _dense(d, "fc2", self.dtype)(y)


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(LN(x)), then x + mlp(LN(x))."""

    num_heads: int
    mlp_dim: int
    dropout: float
    dtype: Any = jnp.float32
    impl: str = "cpu"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, batch: int) -> jax.Array:
        drop = nn.Dropout(self.dropout, deterministic=not train)
        y = LayerNorm(self.dtype, name="ln1")(x)
        x = x + drop(SelfAttention(self.num_heads, self.dtype, self.impl, name="attn")(y, batch))
        y = LayerNorm(self.dtype, name="ln2")(x)
        return x + drop(Mlp(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train))


class MAPHead(nn.Module):
    """Multihead attention pooling [Z21]/[A23]: a learned probe attends over the tokens,
    then a residual MLP on its layer-normed output."""

    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    impl: str = "cpu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d))
        probe = jnp.broadcast_to(probe.astype(self.dtype), (b, 1, d))
        y = CrossAttention(self.num_heads, self.dtype, self.impl, name="attn")(probe, x)
        z = LayerNorm(self.dtype, name="ln")(y)
        y = y + Mlp(self.mlp_dim, 0.0, self.dtype, name="mlp")(z, False)
        return y[:, 0]


def _resample(posemb: jax.Array, grid: tuple[int, int], extra: int) -> jax.Array:
    """Position embeddings [1, extra + g0*g0, D] -> [1, extra + gh*gw, D], bilinear over the
    patch grid (the class token's own embedding is kept)."""
    n0 = posemb.shape[1] - extra
    g0 = math.isqrt(n0)
    if (g0, g0) == grid:
        return posemb
    head, patches = posemb[:, :extra], posemb[:, extra:].reshape(1, g0, g0, -1)
    patches = jax.image.resize(patches, (1, *grid, posemb.shape[-1]), "bilinear")
    return jnp.concatenate([head, patches.reshape(1, grid[0] * grid[1], -1)], axis=1)


class ViT(nn.Module):
    """The ViT of `cfg`; `dtype` is the compute dtype of the activations; `impl` picks the
    kernels (`resolve_impl`)."""

    cfg: ViTConfig
    dtype: Any = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(self.dtype)
        impl = resolve_impl(self.impl)
        b = x.shape[0]
        x, grid = PatchEmbed(cfg.width, cfg.patch_size, dtype, name="embedding")(x.astype(dtype))
        extra = 1 if cfg.pool == "tok" else 0
        if extra:
            cls = self.param("cls", nn.initializers.zeros, (1, 1, cfg.width))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, cfg.width)), x], axis=1)
        # The parameter keeps the shape it was made with; another input size resamples it.
        shape = (self.get_variable("params", "pos_embedding").shape
                 if self.has_variable("params", "pos_embedding") else (1, x.shape[1], cfg.width))
        posemb = self.param("pos_embedding", nn.initializers.normal(1.0 / math.sqrt(cfg.width)), shape)
        x = x + _resample(posemb, grid, extra).astype(dtype)
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        t = x.shape[1]
        # The blocks see the tokens of the whole batch as rows of one matrix [B * T, D]: every
        # projection is then a plain 2-D matrix product, forward and backward (on 3-D
        # activations XLA transposed them around each weight-gradient product).
        x = x.reshape(b * t, cfg.width)
        for i in range(cfg.depth):
            x = Block(cfg.num_heads, cfg.mlp_dim, cfg.dropout, dtype, impl, name=f"block{i}")(x, train, b)
        x = LayerNorm(dtype, name="encoder_norm")(x).reshape(b, t, cfg.width)
        if cfg.pool == "tok":
            x = x[:, 0]
        elif cfg.pool == "gap":
            x = jnp.mean(x, axis=1)
        else:
            x = MAPHead(cfg.num_heads, cfg.mlp_dim, dtype, impl, name="map_head")(x)
        # As for NFNet: below float32 the classifier accumulates and returns float32.
        wide = None if dtype == jnp.float32 else functools.partial(
            lax.dot_general, preferred_element_type=jnp.float32)
        logits = nn.Dense(cfg.num_classes, kernel_init=nn.initializers.zeros, dtype=dtype,
                          dot_general=wide, name="classifier")(x)
        return logits.astype(jnp.float32)


# ------------------------------------------------------------------------ initialisation


def init_params(cfg: ViTConfig, rng: jax.Array, resolution: int, *, channels: int = 3):
    """Parameter pytree of ViT(cfg) for `resolution` px inputs with `channels` channels,
    drawn on the host with numpy from `rng` (deterministic, identical on every host; no
    compilation, as NFNet's init_params). The position embeddings have one row per token
    at this resolution. Distributions (big_vision's ViT initialisers):
      patch kernel   lecun normal (truncated at 2 std, std 1/sqrt(P*P*C)); bias 0
      pos_embedding  normal, std 1/sqrt(D); cls 0
      q/k/v, out, MAP q/kv/out  xavier uniform per D x D projection; biases 0
      MLP kernels    xavier uniform; biases normal, std 1e-6
      layer norms    scale 1, bias 0; MAP probe xavier uniform over (1, D)
      classifier     kernel 0, bias 0 (big_vision's head_zeroinit)
    """
    from flax import traverse_util

    dummy = jax.ShapeDtypeStruct((1, resolution, resolution, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: ViT(cfg).init(jax.random.key(0), x, train=False), dummy)
    seed = [int(v) for v in np.asarray(jax.random.key_data(rng)).ravel()]
    flat = {}
    for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
        gen = np.random.default_rng([*seed, zlib.crc32("/".join(path).encode())])
        flat[path] = jnp.asarray(_draw(path, leaf.shape, gen, cfg))
    return traverse_util.unflatten_dict(flat)


def _xavier(gen: np.random.Generator, fan_in: int, fan_out: int, shape) -> np.ndarray:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return gen.uniform(-limit, limit, shape)


def _draw(path: tuple[str, ...], shape: tuple[int, ...], gen: np.random.Generator, cfg: ViTConfig):
    name, parent = path[-1], path[-2] if len(path) > 1 else ""
    d = cfg.width
    if name in ("cls",) or (name == "bias" and parent not in ("fc1", "fc2")) or parent == "classifier":
        out = np.zeros(shape)
    elif name == "scale":
        out = np.ones(shape)
    elif name == "bias":  # MLP biases
        out = gen.normal(0.0, 1e-6, shape)
    elif name == "pos_embedding":
        out = gen.normal(0.0, 1.0 / math.sqrt(d), shape)
    elif name == "probe":
        out = _xavier(gen, 1, d, shape)
    elif name == "kernel" and parent == "embedding":
        fan_in = int(np.prod(shape[:-1]))
        out = gen.standard_normal(shape)
        while (bad := np.abs(out) > 2).any():
            out[bad] = gen.standard_normal(int(bad.sum()))
        out *= math.sqrt(1.0 / fan_in) / _TRUNC_NORMAL_STD
    elif name == "kernel" and parent in ("qkv", "q", "kv", "out"):
        out = _xavier(gen, d, d, shape)  # each D x D projection on its own, as flax's MHDPA
    elif name == "kernel" and parent in ("fc1", "fc2"):
        out = _xavier(gen, shape[0], shape[1], shape)
    else:
        raise ValueError(f"no initializer for parameter {'/'.join(path)}")
    return out.astype(np.float32)


# ---------------------------------------------------------------------------- the recipe


def decay_rates(params, cfg: ViTRecipe) -> Any:
    """Per-leaf decoupled weight decay: weight_decay on every `kernel` (big_vision's
    default mask `.*/kernel$`), x head_decay_mult on the classifier's; 0 elsewhere."""
    def rate(path, _):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if not names or names[-1] != "kernel":
            return 0.0
        return cfg.weight_decay * (cfg.head_decay_mult if "classifier" in names else 1.0)

    return jax.tree_util.tree_map_with_path(rate, params)



def make_recipe(cfg: ViTRecipe = ViTRecipe()):
    """clip by global norm -> Adam (the direction); the update
    p - lr * direction - (lr / peak_lr) * rate * p, rate from `decay_rates`."""
    import optax

    from scaling.optim import Recipe, schedule

    chain = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm > 0 else []
    chain.append(optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps))
    optimizer = optax.chain(*chain)

    def apply_updates(params, direction, lr, peak_lr):
        mult = lr / peak_lr  # the schedule's multiplier in [0, 1]
        rates = decay_rates(params, cfg)
        return jax.tree.map(lambda p, dd, r: (p - lr * dd - (mult * r) * p).astype(p.dtype) if r
                            else (p - lr * dd).astype(p.dtype), params, direction, rates)

    return Recipe(optimizer, schedule(cfg.decay), apply_updates)
