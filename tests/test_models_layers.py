"""Conv implementations agree in values and gradients; weight standardisation is right."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.models.layers import CONV_IMPLS, conv2d, resolve_conv_impl, standardize

# (input map, in channels, out channels, kernel, groups, stride): covers every branch of
# the CPU rule (1x1 einsum, 1x1-map centre tap, 2x2 GEMM, strided GEMM, per-group split).
SHAPES = [
    (5, 12, 12, 3, 3, 1),  # odd map, grouped: split
    (4, 12, 12, 3, 3, 2),  # strided small map: GEMM
    (5, 8, 8, 3, 2, 2),  # odd map, strided: asymmetric SAME padding
    (2, 12, 24, 3, 3, 1),  # 2x2 map: GEMM
    (1, 12, 12, 3, 3, 2),  # 1x1 map: centre tap
    (3, 6, 10, 1, 1, 1),  # 1x1 conv: einsum
]
# float32 with sums over <= 108 terms in a different order: relative error ~1e-6;
# 1e-5 leaves room without hiding a wrong tap or group (those give O(1) errors).
RTOL, ATOL = 1e-5, 1e-5


@pytest.mark.parametrize("hw, cin, cout, k, groups, stride", SHAPES)
def test_conv_impls_agree_in_values_and_gradients(hw, cin, cout, k, groups, stride):
    keys = jax.random.split(jax.random.key(hw * 100 + cin + k), 3)
    x = jax.random.normal(keys[0], (2, hw, hw, cin))
    w = jax.random.normal(keys[1], (k, k, cin // groups, cout))
    out_hw = -(-hw // stride)
    cot = jax.random.normal(keys[2], (2, out_hw, out_hw, cout))

    def all_impls(x, w):
        res = {}
        for impl in CONV_IMPLS:
            f = lambda x, w, impl=impl: jnp.sum(conv2d(x, w, stride=stride, groups=groups, impl=impl) * cot)
            y = conv2d(x, w, stride=stride, groups=groups, impl=impl)
            res[impl] = (y, *jax.grad(f, argnums=(0, 1))(x, w))
        return res

    res = jax.jit(all_impls)(x, w)
    ref = res["native"]
    assert ref[0].shape == (2, out_hw, out_hw, cout)
    for impl in CONV_IMPLS:
        for got, want, what in zip(res[impl], ref, ("output", "dx", "dw")):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{impl} {what}")


def test_standardize_zero_mean_unit_fan_in_variance_and_gain():
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 5)) * 3 + 1
    gain = jnp.arange(1.0, 6.0)
    w = jax.jit(standardize)(kernel, gain)
    np.testing.assert_allclose(jnp.mean(w, axis=(0, 1, 2)), 0, atol=1e-6)
    fan_in = 3 * 3 * 4
    np.testing.assert_allclose(fan_in * jnp.var(w, axis=(0, 1, 2)), gain**2, rtol=1e-5)


def test_standardize_floor_keeps_constant_kernels_finite():
    w = jax.jit(standardize)(jnp.ones((1, 1, 4, 2)), jnp.ones(2))
    assert bool(jnp.all(jnp.isfinite(w))) and float(jnp.max(jnp.abs(w))) == 0.0


def test_auto_picks_by_backend():
    expected = "cpu" if jax.default_backend() == "cpu" else "native"
    assert resolve_conv_impl("auto") == expected
    assert resolve_conv_impl("split") == "split"
