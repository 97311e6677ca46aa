"""Optimizer recipe: masks by parameter path, AGC numerics, Nesterov + weight decay by
hand, the schedule's values, and one compilation for every LR / run length."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling.errors import BadInput
from scaling.optim import (
    OptimConfig,
    agc_mask,
    apply_updates,
    learning_rate,
    make_optimizer,
    weight_decay_mask,
)


def _conv(cin, cout):
    """A weight-standardised conv's leaves (HWIO kernel, per-output gain and bias)."""
    return {"kernel": jnp.ones((3, 3, cin, cout)), "gain": jnp.ones((cout,)),
            "bias": jnp.zeros((cout,))}


def _params():
    """A pytree following the NFNet naming contract (scaling/models)."""
    return {
        "stem": {"conv0": _conv(3, 4)},
        "stages": {"block0": {
            "conv0": _conv(4, 4),
            "se": {"fc0": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros((2,))},
                   "fc1": {"kernel": jnp.ones((2, 4)), "bias": jnp.zeros((4,))}},
            "skip_gain": jnp.zeros(()),
        }},
        "final_conv": _conv(4, 8),
        "classifier": {"kernel": jnp.ones((8, 10)), "bias": jnp.zeros((10,))},
    }


def _by_path(tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): v
            for path, v in flat}


def test_weight_decay_mask_by_path():
    mask = _by_path(weight_decay_mask(_params()))
    decayed = {p for p, v in mask.items() if v}
    assert decayed == {
        "stem/conv0/kernel", "stages/block0/conv0/kernel", "stages/block0/se/fc0/kernel",
        "stages/block0/se/fc1/kernel", "final_conv/kernel", "classifier/kernel",
    }
    assert mask["stages/block0/skip_gain"] is False
    assert mask["classifier/bias"] is False and mask["stem/conv0/gain"] is False


def test_agc_mask_by_path():
    mask = _by_path(agc_mask(_params()))
    assert {p for p, v in mask.items() if not v} == {"classifier/kernel", "classifier/bias"}
    # Everything else, 1-D gains/biases and the scalar skip gain included, is clipped.
    assert mask["stages/block0/skip_gain"] and mask["stages/block0/se/fc0/bias"]
    assert mask["stem/conv0/gain"] and mask["final_conv/kernel"]


def test_masks_on_flax_nnx_state():
    """NNX `State` paths end in a `value` attribute; the masks must see through it."""

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.se = nnx.Linear(4, 2, rngs=rngs)
            self.skip_gain = nnx.Param(jnp.zeros(()))
            self.classifier = nnx.Linear(2, 3, rngs=rngs)

    state = nnx.state(Block(nnx.Rngs(0)), nnx.Param)
    wd = _by_path(weight_decay_mask(state))
    agc = _by_path(agc_mask(state))
    assert wd == {"classifier/bias/value": False, "classifier/kernel/value": True,
                  "se/bias/value": False, "se/kernel/value": True, "skip_gain/value": False}
    assert agc == {"classifier/bias/value": False, "classifier/kernel/value": False,
                   "se/bias/value": True, "se/kernel/value": True, "skip_gain/value": True}
    tx = make_optimizer()
    direction, _ = tx.update(state, tx.init(state), state)  # runs on a State pytree
    assert jax.tree.structure(direction) == jax.tree.structure(state)


def _direction_only(**kw):
    """AGC alone: no decay, no momentum (direction = clipped gradient)."""
    return make_optimizer(OptimConfig(weight_decay=0.0, momentum=0.0, **kw))


def test_agc_matches_reference_formula():
    """docs/references.md#adaptive-gradient-clipping: if ||G_i|| / max(||W_i||, eps) > lam then
    G_i *= lam * max(||W_i||, eps) / ||G_i||."""
    lam, eps = 0.01, 1e-3
    # Conv HWIO (1, 1, 2, 2): output unit 0 has W = (3, 4), ||W|| = 5, max norm 0.05;
    # unit 1 has W = 0 -> floor eps, max norm 1e-5.
    w = jnp.array([[3.0, 0.0], [4.0, 0.0]]).reshape(1, 1, 2, 2)
    g = jnp.array([[0.06, 1e-6], [0.08, 0.0]]).reshape(1, 1, 2, 2)
    # Linear (in=1, out=3): fan-in 1, so every output is its own unit (optax's default
    # axis rule would squeeze this to a vector and clip it as ONE unit).
    lw = jnp.array([[1.0, 1.0, 1.0]])
    lg = jnp.array([[0.02, 0.005, -0.03]])
    # 1-D bias: one unit, ||W|| = 0 -> max norm 1e-5.
    b, bg = jnp.zeros((2,)), jnp.array([3e-5, 4e-5])
    params = {"conv": {"kernel": w, "bias": b}, "fc": {"kernel": lw},
              "classifier": {"kernel": lw, "bias": b}}
    grads = {"conv": {"kernel": g, "bias": bg}, "fc": {"kernel": lg},
             "classifier": {"kernel": 100 * lg, "bias": 100 * bg}}
    tx = _direction_only(agc_clip=lam, agc_eps=eps)
    out, _ = tx.update(grads, tx.init(params), params)

    np.testing.assert_allclose(out["conv"]["kernel"][0, 0, :, 0], [0.03, 0.04], rtol=1e-6)
    np.testing.assert_allclose(out["conv"]["kernel"][0, 0, :, 1], [1e-6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out["fc"]["kernel"], [[0.01, 0.005, -0.01]], rtol=1e-6)
    np.testing.assert_allclose(out["conv"]["bias"], [6e-6, 8e-6], rtol=1e-5)  # norm 5e-5 -> 1e-5
    # The classifier is exempt: its large gradient passes untouched.
    np.testing.assert_array_equal(out["classifier"]["kernel"], grads["classifier"]["kernel"])
    np.testing.assert_array_equal(out["classifier"]["bias"], grads["classifier"]["bias"])


def test_nesterov_with_weight_decay_two_steps_by_hand():
    """wd added to the gradient BEFORE momentum, not on gains; Nesterov
    d = u + m * (u + m * t_prev). Numbers worked out by hand (see comments)."""
    cfg = OptimConfig(momentum=0.9, nesterov=True, weight_decay=0.1, agc_clip=1e6)
    tx = make_optimizer(cfg)
    params = {"fc": {"kernel": jnp.ones((1, 1))}, "conv": {"gain": jnp.ones((1,))}}
    state = tx.init(params)
    lr = 0.1
    for g in (0.5, -0.25):
        grads = {"fc": {"kernel": jnp.full((1, 1), g)}, "conv": {"gain": jnp.full((1,), g)}}
        direction, state = tx.update(grads, state, params)
        params = apply_updates(params, direction, lr)
    # kernel: u1 = .5 + .1*1 = .6, d1 = .6 + .9*.6 = 1.14, W1 = .886;
    #         u2 = -.25 + .0886 = -.1614, t2 = -.1614 + .54 = .3786,
    #         d2 = -.1614 + .9*.3786 = .17934, W2 = .886 - .017934 = .868066
    np.testing.assert_allclose(params["fc"]["kernel"], [[0.868066]], rtol=1e-6)
    # gain (no decay): d1 = .95, W1 = .905; t2 = -.25 + .45 = .2, d2 = -.25 + .18 = -.07,
    #                  W2 = .905 + .007 = .912
    np.testing.assert_allclose(params["conv"]["gain"], [0.912], rtol=1e-6)


def test_schedule_values():
    lr = lambda s, w=10, t=100: float(learning_rate(s, peak_lr=2.0, warmup_steps=w, total_steps=t))
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(2.0)  # peak at the end of warmup
    assert lr(55) == pytest.approx(1.0, abs=1e-6)  # half-way through the cosine
    assert lr(100) == pytest.approx(0.0, abs=1e-7)  # zero at the run's own end
    assert lr(150) == pytest.approx(0.0, abs=1e-7)
    assert 0.0 < lr(99) < 1e-3
    assert lr(0, w=0) == pytest.approx(2.0)  # no warmup: the first update runs at peak
    assert lr(1, w=0, t=1) == pytest.approx(0.0, abs=1e-7)
    values = [lr(s) for s in range(101)]
    assert max(values) == pytest.approx(2.0) and values.index(max(values)) == 10


def test_warmup_steps_config():
    cfg = OptimConfig()  # warmup_fraction 0.05
    assert cfg.warmup_steps(1000) == 50
    assert cfg.warmup_steps(1) == 0  # a 1-step run still takes a step at peak
    assert OptimConfig(warmup_fraction=0.9).warmup_steps(2) == 1
    with pytest.raises(BadInput, match="total_steps"):
        cfg.warmup_steps(0)
    with pytest.raises(BadInput, match="warmup_fraction"):
        OptimConfig(warmup_fraction=1.0)
    with pytest.raises(BadInput, match="agc_clip"):
        OptimConfig(agc_clip=0.0)


def test_one_compilation_serves_every_lr_and_run_length():
    tx = make_optimizer()
    traces = []

    @jax.jit
    def step(params, opt_state, grads, i, peak_lr, warmup_steps, total_steps):
        traces.append(1)  # runs only while tracing
        direction, opt_state = tx.update(grads, opt_state, params)
        lr = learning_rate(i, peak_lr=peak_lr, warmup_steps=warmup_steps,
                           total_steps=total_steps)
        return apply_updates(params, direction, lr), opt_state, lr

    params = _params()
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.01), params)
    state = tx.init(params)
    runs = [(0.1, 5, 100, 7), (1.6, 2, 37, 30), (0.4, 0, 8, 3)]  # (peak, warmup, total, i)
    outs = []
    for peak, warm, total, i in runs:
        new_params, _, lr = step(params, state, grads, i, peak, warm, total)
        expected = learning_rate(i, peak_lr=peak, warmup_steps=warm, total_steps=total)
        assert float(lr) == pytest.approx(float(expected)) and float(lr) > 0
        outs.append(new_params["stem"]["conv0"]["kernel"])
    assert len(traces) == 1
    assert step._cache_size() == 1
    assert not np.allclose(outs[0], outs[1])  # the LR really reached the update


def test_agc_acts_before_weight_decay():
    """Order per [B21]: the decay term W * wd is added AFTER clipping, so it is never
    clipped itself. W unit (3, 4): clip threshold 0.01 * 5 = 0.05 < ||0.1 W|| = 0.5."""
    tx = make_optimizer(OptimConfig(weight_decay=0.1, momentum=0.0))
    params = {"fc": {"kernel": jnp.array([[3.0], [4.0]])}}
    grads = {"fc": {"kernel": jnp.array([[0.3], [0.4]])}}  # clipped to norm 0.05
    out, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(out["fc"]["kernel"], [[0.03 + 0.3], [0.04 + 0.4]], rtol=1e-6)
