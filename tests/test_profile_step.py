"""bench/profile_step.py's HLO classifier: a compiled conv's forward, input gradient and
weight gradient, and a dense layer's products, land in the categories the profile reports."""
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

SPEC = importlib.util.spec_from_file_location("profile_step", Path(__file__).parents[1] / "bench" / "profile_step.py")
profile_step = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(profile_step)


def _loss(w, v, x):
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.gelu(y)
    return jnp.sum(y.reshape(y.shape[0], -1) @ v)


def test_conv_fwd_dgrad_wgrad_and_matmuls_are_told_apart():
    x = jnp.ones((8, 16, 16, 4))
    w, v = jnp.ones((3, 3, 4, 8)), jnp.ones((16 * 16 * 8, 3))
    # the gradient w.r.t. x as well, so the backward has an input-gradient conv too
    text = jax.jit(jax.grad(lambda w, v, x: _loss(w, v, x), argnums=(0, 1, 2))).lower(w, v, x).compile().as_text()
    index = profile_step.hlo_index(text)
    top_level = [n for n, r in index.items() if r["opcode"] in ("convolution", "fusion", "dot")
                 and f"%{n} = " in text.split("ENTRY", 1)[1]]
    kinds = {profile_step.classify_jax(n, index, text)[0] for n in top_level}
    assert {"conv fwd", "conv dgrad", "conv wgrad"} <= kinds, kinds
    assert kinds & {"matmul fwd", "matmul bwd"}, kinds
    assert "optimizer" not in kinds, kinds  # no update in this graph: nothing may be counted as one


def test_unknown_thunk_is_elementwise_not_an_error():
    assert profile_step.classify_jax("no_such_op.1", {}, "") == ("elementwise", "?")
