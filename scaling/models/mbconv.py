"""MBConv networks in Flax linen: EfficientNetV2 [T21] and G16-EfficientNet [M21] share
the blocks, the normalisers (with proxy-normalised activations [L21]), the CPU kernels,
`init_params` and the RMSProp recipe (docs/models.md#efficientnetv2, #g16-efficientnet).

    params = init_params(cfg, rng, resolution)
    logits = MBConvNet(cfg).apply({"params": params}, images, train=True, rngs={"dropout": key})

`cfg` is an EffNetV2Config or a G16Config: both expose stem, stages, head, norm,
dropout and num_classes. Images are float32 NHWC; logits come back float32; `dtype` is the
activations' compute dtype (parameters stay float32, normaliser statistics are float32).

No batch statistics anywhere (the trainer keeps parameters only): every normaliser is
per image, with BatchNorm's per-channel scale and bias (docs/models.md#normalisers-instead-of-batchnorm).

Parameter paths: `stem/{kernel, norm/{scale,bias}}`; `block<i>/` with `fused` (Fused-MBConv's
k x k conv), or `expand` (1x1) and `dw` (the k x k depthwise or group conv), then `se/{reduce,
expand}/{kernel,bias}` and `project` (1x1), each conv `{kernel, norm}`; `head`; `classifier`.
Conv kernels are HWIO with I = in/groups, dense kernels (in, out).
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

from scaling.models import layers
from scaling.models import mbconv_config as mb

IMPLS = ("cpu", "native")
# Gauss-Hermite nodes for the proxy's moments: exact for polynomials of degree < 2 x 64, and
# SiLU of a Gaussian is smooth, so the moments are exact to float32 (tests/test_models_g16.py).
PROXY_NODES = 64
PROXY_EPS = 1e-5  # added to the proxy variance; small against SiLU variances down to ~1e-3 (our choice)


def resolve_impl(impl: str) -> str:
    """"auto" -> "cpu" on the CPU backend, "native" elsewhere:
      cpu     depthwise convs as a sum of k*k shifted, scaled copies (`layers.depthwise_taps`);
              every other conv by layers.conv2d's per-layer CPU rule (NFNet's kernels)
      native  lax.conv_general_dilated with feature_group_count
    Both compute the same function (tests/test_models_effnetv2.py)."""
    if impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "native"
    if impl not in IMPLS:
        from scaling.errors import BadInput

        raise BadInput(f"impl: must be 'auto' or one of {IMPLS}, got {impl!r}")
    return impl


def conv(x: jax.Array, w: jax.Array, *, stride: int, groups: int, impl: str) -> jax.Array:
    """SAME NHWC conv, HWIO kernel (I = C_in / groups), by `impl` (`resolve_impl`)."""
    if impl == "cpu":
        if groups > 1 and groups == x.shape[-1] == w.shape[-1]:
            return layers.depthwise_taps(x, w, stride)
        return layers.conv2d(x, w, stride=stride, groups=groups, impl="cpu")
    return layers.conv2d(x, w, stride=stride, groups=groups, impl="native")


# --------------------------------------------------------------------------- normalisers


def proxy_moments(scale: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and variance per channel of silu(scale * z + bias), z ~ N(0, 1), by
    Gauss-Hermite quadrature: deterministic, no batch statistics, differentiable in
    scale and bias ([L21]'s Gaussian proxy; docs/models.md#proxy-normalised-activations)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(PROXY_NODES)  # weight exp(-z^2 / 2)
    z = jnp.asarray(nodes, jnp.float32)
    p = jnp.asarray(weights / weights.sum(), jnp.float32)
    a = jax.nn.silu(scale[:, None] * z + bias[:, None])  # C, nodes
    mean = a @ p
    var = ((a - mean[:, None]) ** 2) @ p
    return mean, var


class Norm(nn.Module):
    """A per-image normaliser with per-channel scale and bias (mbconv_config.NORMS), then
    SiLU when `act`; under "ln_pn" the SiLU's output is proxy-normalised [L21]."""

    kind: str
    act: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        xf = x.astype(jnp.float32)
        b, h, w, _ = xf.shape
        if self.kind == "gn":
            size = math.gcd(c, mb.GN_GROUP_SIZE)
            xg = xf.reshape(b, h, w, c // size, size)
            axes = (1, 2, 4)
        else:  # "ln", "ln_pn": over (H, W, C)
            xg, axes = xf, (1, 2, 3)
        mean = jnp.mean(xg, axis=axes, keepdims=True)
        centred = xg - mean
        var = jnp.mean(centred * centred, axis=axes, keepdims=True)
        y = (centred * lax.rsqrt(var + mb.NORM_EPS)).reshape(b, h, w, c) * scale + bias
        if self.act:
            y = jax.nn.silu(y)
            if self.kind == "ln_pn":
                pm, pv = proxy_moments(scale, bias)
                y = (y - pm) * lax.rsqrt(pv + PROXY_EPS)
        return y.astype(self.dtype)


class ConvNorm(nn.Module):
    """Conv (no bias) -> normaliser (-> SiLU)."""

    features: int
    kernel: int
    stride: int = 1
    groups: int = 1
    norm: str = "gn"
    act: bool = True
    dtype: Any = jnp.float32
    impl: str = "cpu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        k = self.kernel
        kernel = self.param("kernel", nn.initializers.he_normal(), (k, k, cin // self.groups, self.features))
        y = conv(x.astype(self.dtype), kernel.astype(self.dtype), stride=self.stride, groups=self.groups,
                 impl=self.impl)
        return Norm(self.norm, self.act, self.dtype, name="norm")(y)


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 silu(W1 mean_hw(x) + b1) + b2) (EfficientNet's SE, SiLU inside)."""

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2))
        s = jax.nn.silu(nn.Dense(self.hidden, dtype=self.dtype, name="reduce")(s))
        s = jax.nn.sigmoid(nn.Dense(x.shape[-1], dtype=self.dtype, name="expand")(s))
        return x * s[:, None, None, :]


class Block(nn.Module):
    """One MBConv or Fused-MBConv block ([T21] Figure 2); residual when the shape is kept.

    MBConv: 1x1 expand (if expand > 1) -> k x k depthwise/group conv (stride) -> SE -> 1x1 project.
    Fused-MBConv: k x k conv to the expanded width (stride) -> SE -> 1x1 project; with
    expansion 1, one k x k conv straight to the output width."""

    stage: mb.Stage
    stride: int
    norm: str
    dtype: Any = jnp.float32
    impl: str = "cpu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s, cin = self.stage, x.shape[-1]
        mid = cin * s.expand
        kw = dict(norm=self.norm, dtype=self.dtype, impl=self.impl)
        if s.kind == "fused":
            if s.expand == 1:
                y = ConvNorm(s.out, s.kernel, self.stride, name="fused", **kw)(x)
            else:
                y = ConvNorm(mid, s.kernel, self.stride, name="fused", **kw)(x)
        else:
            y = ConvNorm(mid, 1, name="expand", **kw)(x) if s.expand != 1 else x
            y = ConvNorm(mid, s.kernel, self.stride, groups=mb.groups_of(mid, s.group_size), name="dw", **kw)(y)
        if s.se:
            y = SqueezeExcite(mb.se_hidden(cin, s.se), self.dtype, name="se")(y)
        if not (s.kind == "fused" and s.expand == 1):
            y = ConvNorm(s.out, 1, act=False, name="project", **kw)(y)
        if self.stride == 1 and cin == s.out:
            y = y + x
        return y


class MBConvNet(nn.Module):
    """Stem (3x3 s2) -> the stages' blocks -> 1x1 head conv -> global mean -> dropout ->
    classifier. `impl` picks the conv kernels (`resolve_impl`)."""

    cfg: Any
    dtype: Any = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(self.dtype)
        impl = resolve_impl(self.impl)
        x = ConvNorm(cfg.stem, 3, 2, norm=cfg.norm, dtype=dtype, impl=impl, name="stem")(x.astype(dtype))
        for i, stage, _, stride in mb.blocks(cfg.stem, cfg.stages):
            x = Block(stage, stride, cfg.norm, dtype, impl, name=f"block{i}")(x)
        x = ConvNorm(cfg.head, 1, norm=cfg.norm, dtype=dtype, impl=impl, name="head")(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        wide = None if dtype == jnp.float32 else functools.partial(
            lax.dot_general, preferred_element_type=jnp.float32)
        logits = nn.Dense(cfg.num_classes, dtype=dtype, dot_general=wide, name="classifier")(x)
        return logits.astype(jnp.float32)


# ------------------------------------------------------------------------ initialisation


def init_params(cfg, rng: jax.Array, resolution: int, *, channels: int = 3):
    """Parameters of MBConvNet(cfg) drawn on the host with numpy from `rng` (deterministic,
    the same on every host, no compilation; as NFNet's and ViT's). EfficientNet's official
    initialisers (docs/references.md#efficientnetv2):
      conv kernels   normal, std sqrt(2 / fan_out), fan_out = k * k * out / groups
      SE kernels     the same as 1x1 convs (they are 1x1 convs there); biases 0
      normalisers    scale 1, bias 0
      classifier     kernel 0 and bias 0, as the NFNet and ViT heads here, where the
                     official code draws uniform(+-1/sqrt(classes)): on toy widths that
                     started the loss at 2x chance (docs/models.md#efficientnetv2)
    """
    from flax import traverse_util

    dummy = jax.ShapeDtypeStruct((1, resolution, resolution, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: MBConvNet(cfg, impl="native").init(jax.random.key(0), x, train=False), dummy)
    seed = [int(v) for v in np.asarray(jax.random.key_data(rng)).ravel()]
    flat = {}
    for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
        gen = np.random.default_rng([*seed, zlib.crc32("/".join(path).encode())])
        flat[path] = jnp.asarray(_draw(path, leaf.shape, gen))
    return traverse_util.unflatten_dict(flat)


def _draw(path: tuple[str, ...], shape: tuple[int, ...], gen: np.random.Generator) -> np.ndarray:
    name, parent = path[-1], path[-2] if len(path) > 1 else ""
    if name == "scale":
        out = np.ones(shape)
    elif name == "bias":
        out = np.zeros(shape)
    elif name == "kernel" and parent == "classifier":
        out = np.zeros(shape)  # as NFNet's and ViT's heads here (docstring)
    elif name == "kernel" and len(shape) == 4:
        k, _, cin_g, cout = shape
        groups = cout // cin_g if parent == "dw" else 1  # dw/group convs keep the width
        out = gen.normal(0.0, math.sqrt(2.0 / (k * k * cout / groups)), shape)
    elif name == "kernel" and len(shape) == 2:  # SE: 1x1 convs in the official code
        out = gen.normal(0.0, math.sqrt(2.0 / shape[1]), shape)
    else:
        raise ValueError(f"no initializer for parameter {'/'.join(path)}")
    return out.astype(np.float32)


# ---------------------------------------------------------------------------- the recipe


def decay_mask(params) -> Any:
    """True on every kernel (convs, SE, classifier): the L2 of EfficientNet's official code
    leaves normaliser parameters out; biases are left out here as well."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: str(getattr(path[-1], "key", path[-1])) == "kernel", params)


def make_recipe(cfg: mb.MBConvRecipe = mb.MBConvRecipe()):
    """L2 on kernels -> RMSProp (mean square from 1, eps inside the root, as TF) ->
    momentum; the update p - lr(t) x direction; warmup then cosine or linear decay."""
    import optax

    from scaling.optim import Recipe, schedule

    chain = []
    if cfg.weight_decay:
        chain.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    chain.append(optax.scale_by_rms(decay=cfg.rms_decay, eps=cfg.eps, initial_scale=1.0, eps_in_sqrt=True))
    if cfg.momentum:
        chain.append(optax.trace(decay=cfg.momentum))
    optimizer = optax.chain(*chain)

    def apply_updates(params, direction, lr, peak_lr):
        return jax.tree.map(lambda p, d: (p - lr * d).astype(p.dtype), params, direction)

    return Recipe(optimizer, schedule(cfg.decay), apply_updates)

