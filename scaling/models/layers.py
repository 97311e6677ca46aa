"""NFNet building blocks: scaled weight-standardised convs and grouped-conv kernels.

The parameters are always stored in Flax layout, output axis last (conv HWIO with
I = in/groups, linear (in, out)) whatever implementation computes the conv: the
optimizer masks and AGC read these paths and shapes (REFERENCE.md s2, AGC).

Why several conv implementations: on CPU, XLA's native grouped convolution
(`feature_group_count`) is tens of times slower than the same work split per group,
1x1 convs run faster as an einsum, and 3x3 convs on tiny maps run faster as one
im2col matrix product (issue 2 measurements; ours in docs/models.md). GPUs and TPUs
have fast native grouped convs, so `conv_impl="auto"` picks by backend:
  native  lax.conv_general_dilated with feature_group_count (GPU/TPU default)
  split   one lax conv per group, concatenated
  gemm    every kxk conv as im2col (shifted copies) + one batched matmul over groups
  cpu     per layer, the fastest on CPU (the rule in `_cpu_choice`; it also uses the
          centre tap alone for kxk convs of 1x1 maps, where the other taps see padding)
All produce the same numbers up to float32 summation order (tests/test_models_layers.py).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("native", "split", "gemm", "cpu")
WS_EPS = 1e-4  # floor on fan_in * var in weight standardisation; REFERENCE.md s2
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
    """1x1 stride-1 conv as an einsum (per group when grouped)."""
    b, h, wd, c = x.shape
    cout = w.shape[-1]
    xg = x.reshape(b, h, wd, groups, c // groups)
    wg = w.reshape(c // groups, groups, cout // groups)
    return jnp.einsum("bhwgc,cgd->bhwgd", xg, wg).reshape(b, h, wd, cout)


def _center_tap(x, w, stride: int, groups: int):
    """kxk SAME conv of a 1x1 map: only the centre tap meets data (the rest is padding)."""
    kh, kw = w.shape[:2]
    return _pointwise(x[:, :1, :1, :], w[kh // 2 : kh // 2 + 1, kw // 2 : kw // 2 + 1], groups)


def _gemm(x, w, stride: int, groups: int):
    """kxk conv as im2col: gather the k*k shifted (SAME-padded, strided) copies of x,
    then one matmul contracting taps and in-channels, batched over groups."""
    kh, kw, cin_g, cout = w.shape
    if kh == kw == 1 and stride == 1:
        return _pointwise(x, w, groups)
    b, h, wd, c = x.shape
    pads = lax.padtype_to_pads((h, wd), (kh, kw), (stride, stride), "SAME")
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    ho, wo = -(-h // stride), -(-wd // stride)
    taps = [
        xp[:, i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.stack(taps, axis=3).reshape(b, ho, wo, kh * kw, groups, cin_g)
    wg = w.reshape(kh * kw, cin_g, groups, cout // groups)
    return jnp.einsum("bhwkgc,kcgd->bhwgd", patches, wg).reshape(b, ho, wo, cout)


def _cpu_choice(x_shape, w_shape, stride: int, groups: int) -> str:
    """Fastest implementation on CPU for this layer (timings in docs/models.md):
    1x1 convs as an einsum; a 1x1 input map by its centre tap alone; 2x2 maps (and
    stride-2 convs on maps up to 4x4) as im2col GEMM; other grouped convs split per group.
    """
    kh, kw = w_shape[:2]
    h, w = x_shape[1], x_shape[2]
    if kh == kw == 1 and stride == 1:
        return "gemm"  # -> _pointwise einsum
    if h == w == 1:
        return "center"
    if h * w <= 4 or (stride > 1 and h * w <= 16):
        return "gemm"
    return "split" if groups > 1 else "native"


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
    if impl == "center":
        return _center_tap(x, w, stride, groups)
    raise ValueError(f"unknown conv impl {impl!r}; one of {CONV_IMPLS}")


# --- modules --------------------------------------------------------------------------


class WSConv2D(nn.Module):
    """Conv with scaled weight standardisation, learnable gain and bias (REFERENCE.md s2)."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    impl: str = "native"

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
        w = standardize(kernel, gain)
        y = conv2d(x, w, stride=self.stride, groups=self.groups, impl=self.impl)
        return y + bias


class SqueezeExcite(nn.Module):
    """SE: mean over space -> dense -> ReLU -> dense -> sigmoid (REFERENCE.md s2).

    Returns the per-channel gate; the block multiplies by 2 * gate. Not standardised.
    """

    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.mean(x, axis=(1, 2))
        h = nn.relu(nn.Dense(self.hidden, name="fc0")(h))
        h = nn.Dense(x.shape[-1], name="fc1")(h)
        return jax.nn.sigmoid(h)[:, None, None, :]


def gained_activation(name: str, gain: float) -> Callable[[jax.Array], jax.Array]:
    """act(x) * gain so that unit-Gaussian inputs give unit-variance outputs."""
    fn = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "silu": jax.nn.silu}[name]
    return lambda x: fn(x) * gain
