"""NFNet building blocks: scaled weight-standardised convs and grouped-conv kernels.

The parameters are always stored in Flax layout, output axis last (conv HWIO with
I = in/groups, linear (in, out)) whatever implementation computes the conv: the
optimizer masks and AGC read these paths and shapes (docs/references.md#adaptive-gradient-clipping).

Why several conv implementations: on CPU, XLA's native grouped convolution
(`feature_group_count`) is tens of times slower than the same work split per group,
1x1 convs run faster as a plain matrix product, and 3x3 convs on tiny maps run much
faster as one matrix product (our timings in docs/bench_nfnet.md). GPUs and
TPUs have fast native grouped convs, so `conv_impl="auto"` picks by backend:
  native  lax.conv_general_dilated with feature_group_count (GPU/TPU default)
  split   one lax conv per group, concatenated
  gemm    im2col: the k*k shifted copies of x side by side, one matmul batched over groups
  dense   the conv as one matmul with its (Toeplitz) matrix over the whole map: for
          maps of a few pixels, where im2col would mostly copy padding
  cpu     per layer, the fastest on CPU (the rule in `_cpu_choice`)
All produce the same numbers up to float32 summation order (tests/test_models_layers.py).

Mixed precision: every module takes `dtype`, the compute dtype of its activations
(float32 or bfloat16; bf16 activations with fp32 params as in docs/references.md#precision).
Parameters are
stored in float32 and cast inside the forward pass, so gradients come back float32;
weight standardisation runs on the float32 kernel and only its result is cast. The conv
kernels below compute in the dtype of their inputs (all five, tests/test_mixed_precision.py).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_IMPLS = ("native", "split", "gemm", "dense", "cpu")
WS_EPS = 1e-4  # floor on fan_in * var in weight standardisation; docs/references.md#scaled-weight-standardisation
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(impl: str) -> str:
    """"auto" -> "cpu" on the CPU backend, "native" elsewhere; else checked and returned."""
    if impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "native"
    if impl not in CONV_IMPLS:
        from scaling.errors import BadInput

        raise BadInput(f"conv_impl: must be 'auto' or one of {CONV_IMPLS}, got {impl!r}")
    return impl


def standardize(kernel: jax.Array, gain: jax.Array) -> jax.Array:
    """Scaled WS: gain * (W - mean) / sqrt(max(fan_in * var, 1e-4)), per output unit.

    Statistics over every axis but the last (output) one; fan_in = their product.
    """
    axes = tuple(range(kernel.ndim - 1))
    fan_in = 1
    for a in axes:
        fan_in *= kernel.shape[a]
    mean = jnp.mean(kernel, axis=axes, keepdims=True)
    var = jnp.var(kernel, axis=axes, keepdims=True)
    scale = lax.rsqrt(jnp.maximum(var * fan_in, WS_EPS)) * gain
    return (kernel - mean) * scale


# --- grouped conv implementations (x NHWC, w HWIO with I = C_in / groups) --------------


def _native(x, w, stride: int, groups: int):
    return lax.conv_general_dilated(
        x, w, (stride, stride), "SAME", dimension_numbers=_DIMS, feature_group_count=groups
    )


def _split(x, w, stride: int, groups: int):
    if groups == 1:
        return _native(x, w, stride, 1)
    xs = jnp.split(x, groups, axis=-1)
    ws = jnp.split(w, groups, axis=-1)
    return jnp.concatenate([_native(xi, wi, stride, 1) for xi, wi in zip(xs, ws)], axis=-1)


def _pointwise(x, w, groups: int):
    """1x1 stride-1 conv as a matrix product (batched over groups when grouped).

    Ungrouped, it is one 2-D dot on [B*H*W, C]: the grouped einsum with a size-1 group
    axis made XLA's CPU layout pass transpose the activations around the dot.
    """
    b, h, wd, c = x.shape
    cout = w.shape[-1]
    if groups == 1:
        return jnp.dot(x.reshape(b * h * wd, c), w.reshape(c, cout)).reshape(b, h, wd, cout)
    xg = x.reshape(b, h, wd, groups, c // groups)
    wg = w.reshape(c // groups, groups, cout // groups)
    return jnp.einsum("bhwgc,cgd->bhwgd", xg, wg).reshape(b, h, wd, cout)


def _gemm(x, w, stride: int, groups: int):
    """kxk conv as im2col: the k*k shifted (SAME-padded, strided) copies of x placed side
    by side on the channel axis, then one matmul contracting taps and in-channels.

    Grouped, x is first moved to group-major order [G, B, H, W, C/G] (one copy of x)
    so the copies and the matmul batched over groups need no further transposes: the
    earlier version stacked taps at [B, H, W, k*k, G, C/G] and XLA transposed that 9x
    larger array for the dot (a quarter of the train step at 4M params, 32x32).
    """
    kh, kw, cin_g, cout = w.shape
    if kh == kw == 1 and stride == 1:
        return _pointwise(x, w, groups)
    b, h, wd, c = x.shape
    cout_g = cout // groups
    pads = lax.padtype_to_pads((h, wd), (kh, kw), (stride, stride), "SAME")
    ho, wo = -(-h // stride), -(-wd // stride)
    xg = jnp.moveaxis(x.reshape(b, h, wd, groups, cin_g), 3, 0)  # G, B, H, W, C/G
    xp = jnp.pad(xg, ((0, 0), (0, 0), *pads, (0, 0)))
    taps = [
        xp[:, :, i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(taps, axis=-1).reshape(groups, b * ho * wo, kh * kw * cin_g)
    wg = jnp.moveaxis(w.reshape(kh * kw * cin_g, groups, cout_g), 1, 0)  # G, k*k*C/G, D/G
    y = lax.dot_general(patches, wg, (((2,), (1,)), ((0,), (0,))))  # G, B*Ho*Wo, D/G
    return jnp.moveaxis(y.reshape(groups, b, ho, wo, cout_g), 0, 3).reshape(b, ho, wo, cout)


def _toeplitz_taps(h: int, w: int, kh: int, kw: int, stride: int) -> np.ndarray:
    """[H*W, Ho*Wo] index of the kernel tap linking input pixel p to output pixel o
    under SAME padding, or kh*kw where none does (static, built at trace time)."""
    (pt, _), (pl, _) = lax.padtype_to_pads((h, w), (kh, kw), (stride, stride), "SAME")
    ho, wo = -(-h // stride), -(-w // stride)
    r, s, i, j = np.meshgrid(np.arange(h), np.arange(w), np.arange(ho), np.arange(wo), indexing="ij")
    di, dj = r - i * stride + pt, s - j * stride + pl
    valid = (di >= 0) & (di < kh) & (dj >= 0) & (dj < kw)
    return np.where(valid, di * kw + dj, kh * kw).reshape(h * w, ho * wo)


def _dense(x, w, stride: int, groups: int):
    """kxk conv of a tiny map as one matmul with the conv's matrix over the whole map:
    y[b, (o, d)] = sum_(p, c) x[b, (p, c)] T[(p, c), (o, d)], block (p, o) of T being the
    tap that links input pixel p to output pixel o (zero if none).

    On a 2x2 map each output pixel meets only 4 of the 9 taps (the rest is padding), so
    this does 4/9 of im2col's multiplies and copies no activations; on a 1x1 map it is
    the centre tap alone. Cost grows as (H*W)^2, so `_cpu_choice` uses it for maps of at
    most 2x2 (measured faster there; slower from 4x4 on, docs/bench_nfnet.md).
    """
    kh, kw, cin_g, cout = w.shape
    b, h, wd, c = x.shape
    cout_g = cout // groups
    ho, wo = -(-h // stride), -(-wd // stride)
    p, o = h * wd, ho * wo
    idx = _toeplitz_taps(h, wd, kh, kw, stride)
    taps = w.reshape(kh * kw, cin_g, groups, cout_g)
    taps = jnp.concatenate([taps, jnp.zeros_like(taps[:1])])  # index kh*kw: no tap
    t = taps[idx]  # P, O, C/G, G, D/G
    if groups == 1:
        t = jnp.transpose(t[:, :, :, 0], (0, 2, 1, 3)).reshape(p * cin_g, o * cout_g)
        return jnp.dot(x.reshape(b, p * c), t).reshape(b, ho, wo, cout)
    t = jnp.transpose(t, (3, 0, 2, 1, 4)).reshape(groups, p * cin_g, o * cout_g)
    xg = jnp.transpose(x.reshape(b, p, groups, cin_g), (2, 0, 1, 3)).reshape(groups, b, p * cin_g)
    y = lax.dot_general(xg, t, (((2,), (1,)), ((0,), (0,))))  # G, B, O*D/G
    return jnp.transpose(y.reshape(groups, b, o, cout_g), (1, 2, 0, 3)).reshape(b, ho, wo, cout)


def depthwise_taps(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """SAME-padded depthwise conv (w: k, k, 1, C) as sum_ij shift_ij(x) * w[i, j]: k*k
    elementwise multiply-adds, forward and backward. On XLA:CPU 4-20x faster than
    feature_group_count = C at toy sizes (docs/models.md#depthwise-and-group-16-convolutions-on-cpu);
    the depthwise convs of CoAtNet's and the EfficientNets' MBConv blocks use it."""
    kh, kw, _, _ = w.shape
    b, h, wd, c = x.shape
    pads = lax.padtype_to_pads((h, wd), (kh, kw), (stride, stride), "SAME")
    ho, wo = -(-h // stride), -(-wd // stride)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    y = None
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride, :] * w[i, j, 0]
            y = tap if y is None else y + tap
    return y


def _cpu_choice(x_shape, w_shape, stride: int, groups: int) -> str:
    """Fastest implementation on CPU for this layer (timings in docs/bench_nfnet.md):
    1x1 convs as a matrix product; maps of at most 2x2 pixels as one dense matmul;
    strided grouped convs as im2col GEMM; other grouped convs split per group (XLA's
    ungrouped conv is fast from 4x4 maps up, where im2col's copies cost more than the
    matmul); ungrouped convs native.
    """
    kh, kw = w_shape[:2]
    h, w = x_shape[1], x_shape[2]
    if kh == kw == 1 and stride == 1:
        return "gemm"  # -> _pointwise
    if h * w <= 4:
        return "dense"
    if groups > 1:
        return "gemm" if stride > 1 else "split"
    return "native"


def conv2d(x: jax.Array, w: jax.Array, *, stride: int = 1, groups: int = 1, impl: str = "native"):
    """SAME-padded NHWC conv with an HWIO kernel (I = C_in / groups), by `impl`."""
    if impl == "cpu":
        impl = _cpu_choice(x.shape, w.shape, stride, groups)
    if impl == "native":
        return _native(x, w, stride, groups)
    if impl == "split":
        return _split(x, w, stride, groups)
    if impl == "gemm":
        return _gemm(x, w, stride, groups)
    if impl == "dense":
        return _dense(x, w, stride, groups)
    raise ValueError(f"unknown conv impl {impl!r}; one of {CONV_IMPLS}")


# --- modules --------------------------------------------------------------------------


class WSConv2D(nn.Module):
    """Conv with scaled weight standardisation, learnable gain and bias
    (docs/references.md#scaled-weight-standardisation).

    The standardised kernel is computed in float32 (the parameters' dtype: a bf16
    variance of a fan-in of thousands would lose most of its digits), then cast to
    `dtype` for the conv.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    impl: str = "native"
    dtype: Any = jnp.float32  # compute dtype of the conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        k = self.kernel_size
        # He-normal init (fan-in); WS rescales it anyway, so only its shape matters.
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
            (k, k, cin // self.groups, self.features),
        )
        gain = self.param("gain", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        w = standardize(kernel, gain).astype(self.dtype)
        y = conv2d(x.astype(self.dtype), w, stride=self.stride, groups=self.groups, impl=self.impl)
        return y + bias.astype(self.dtype)


class SqueezeExcite(nn.Module):
    """SE: mean over space -> dense -> ReLU -> dense -> sigmoid
    (docs/references.md#bottleneck-block-and-squeeze-excite).

    Returns the per-channel gate; the block multiplies by 2 * gate. Not standardised.
    """

    hidden: int
    dtype: Any = jnp.float32  # compute dtype; the Dense params stay float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.mean(x, axis=(1, 2))
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc0")(h))
        h = nn.Dense(x.shape[-1], dtype=self.dtype, name="fc1")(h)
        return jax.nn.sigmoid(h)[:, None, None, :]


def gained_activation(name: str, gain: float) -> Callable[[jax.Array], jax.Array]:
    """act(x) * gain so that unit-Gaussian inputs give unit-variance outputs."""
    fn = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "silu": jax.nn.silu}[name]
    return lambda x: fn(x) * gain
