"""The Flax NFNet: parameter contract, counts vs XLA, signal propagation, every preset."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from scaling.models.config import PRESET_NAMES, family_config, get_config
from scaling.models.counts import count
from scaling.models.nfnet import NFNet, block_schedule, init_params


def _tiny(cfg, num_classes=5):
    """A preset at tiny width with its depth kept: widths / 64, group width 2, stem 2."""
    return dataclasses.replace(
        cfg, widths=tuple(w // 64 for w in cfg.widths), stem_widths=(2, 2, 2), group_width=2,
        num_classes=num_classes,
    )


def _loss_fn(model):
    def loss(params, x, key):
        logits = model.apply({"params": params}, x, train=True, rngs={"dropout": key})
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])

    return loss


def test_parameter_tree_follows_the_naming_contract_and_count():
    cfg = family_config(0.25, 1 / 32, num_classes=7)
    params = init_params(cfg, jax.random.key(0), 32)
    flat = traverse_util.flatten_dict(params, sep="/")
    assert sum(v.size for v in flat.values()) == count(cfg, 32).params
    assert {k.rsplit("/", 1)[-1] for k in flat} == {"kernel", "gain", "bias", "skip_gain"}
    assert flat["classifier/kernel"].shape == (2 * cfg.widths[-1], 7)
    assert flat["classifier/bias"].shape == (7,)
    se_kernels = [k for k in flat if "/se/" in k and k.endswith("kernel")]
    assert len(se_kernels) == 2 * cfg.num_blocks
    for row, i in zip(block_schedule(cfg), range(cfg.num_blocks)):
        k = flat[f"block{i}/conv1/kernel"]  # grouped 3x3: HWIO with I = width / groups
        assert k.shape == (3, 3, row["width"] // row["groups"], row["width"])
        assert float(flat[f"block{i}/skip_gain"]) == 0.0  # SkipInit
    assert all(float(jnp.min(v)) == 1.0 for k, v in flat.items() if k.endswith("gain") and "skip" not in k)


def test_init_params_is_deterministic_and_follows_the_initializers():
    cfg = family_config(0.25, 0.25, num_classes=100)
    a = init_params(cfg, jax.random.key(1), 32)
    b = init_params(cfg, jax.random.key(1), 32)
    c = init_params(cfg, jax.random.key(2), 32)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))
    assert not jnp.array_equal(a["classifier"]["kernel"], c["classifier"]["kernel"])
    # classifier ~ N(0, 0.01) (docs/references.md#head-and-classifier-initialisation);
    # conv kernels fan-in normal. 76,800 and
    # 36,864 draws: the sample std is within 2% of the target with overwhelming odds.
    np.testing.assert_allclose(np.std(a["classifier"]["kernel"]), 0.01, rtol=0.02)
    k = a["block1"]["conv2"]["kernel"]
    np.testing.assert_allclose(np.std(k), 1 / np.sqrt(np.prod(k.shape[:-1])), rtol=0.02)
    # same tree as flax's own init (shapes only: init_params draws on the host)
    flax_shapes = jax.eval_shape(
        lambda: NFNet(cfg).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    )
    assert jax.tree.map(lambda x: x.shape, flax_shapes) == jax.tree.map(lambda x: x.shape, a)


@pytest.mark.parametrize(
    "depth, width, res, impl",
    [(0.25, 1.0, 32, "native"), (1.0, 1.0, 32, "native"), (0.25, 0.75, 48, "split")],
)
def test_counts_agree_with_xla_cost_analysis(depth, width, res, impl):
    """Marginal XLA FLOPs per example (batch 3 minus batch 1, which removes the weight
    standardisation done once per batch) vs 2 x analytic MACs. XLA skips the taps that
    land on SAME padding, so we compare with count_padding=False; the rest of XLA's
    count (activations, SE, pooling: elementwise work) must stay under 2% here."""
    cfg = family_config(depth, width, num_classes=10)
    params = init_params(cfg, jax.random.key(0), res)
    model = NFNet(cfg, impl)
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    flops = {b: fwd.lower(params, jnp.zeros((b, res, res, 3))).cost_analysis()["flops"] for b in (1, 3)}
    per_example = (flops[3] - flops[1]) / 2
    analytic = count(cfg, res, count_padding=False).flops
    assert abs(per_example / analytic - 1) < 0.02, (per_example, analytic)
    assert count(cfg, res).flops > analytic  # the paper's convention counts the padding


def test_signal_propagation_follows_the_alpha_beta_schedule():
    """With skip gains set to 1, the residual stream's variance grows by alpha^2 per
    block and resets to 1 + alpha^2 at each transition
    (docs/references.md#signal-propagation-alpha-and-beta); with the default skip gain 0
    (SkipInit) non-transition blocks are the identity.

    Set-up: random N(0, 1) images; strides 1 so every map is 32x32 (pooling iid noise
    and SAME padding on 1x1-2x2 maps would shrink variances for reasons unrelated to
    the bookkeeping); width 0.5 so fan-ins are >= 128 (WS's zero-mean kernels inflate
    variance by about n/(n-1) per conv; +5% per layer measured at width 1/8).
    Tolerance 5%: measured deviations are under 2% (sampling over 2 x 1024 positions
    x >= 64 channels, SE gates near 1); a missing beta or alpha, or a reset in the
    wrong place, moves some block by >= 4% (one alpha^2 step) and usually far more.
    """
    cfg = family_config(0.5, 0.5, num_classes=10, skip_gain_init=1.0, strides=(1, 1, 1, 1))
    params = init_params(cfg, jax.random.key(0), 128)
    x = jax.random.normal(jax.random.key(1), (2, 128, 128, 3))
    fwd = jax.jit(lambda p, x: NFNet(cfg).apply({"params": p}, x, train=False, mutable=["intermediates"]))
    rows = block_schedule(cfg)
    assert [r["transition"] for r in rows] == [True, True, True, False, False, False, False]
    expected = [r["out_var"] for r in rows]
    np.testing.assert_allclose(expected, [1.04, 1.04, 1.04, 1.08, 1.12, 1.16, 1.20], rtol=1e-12)

    def variances(params):
        inter = fwd(params, x)[1]["intermediates"]
        return ([float(inter[f"block{i}"]["stream_var"][0]) for i in range(len(rows))],
                [float(inter[f"block{i}"]["branch_var"][0]) for i in range(len(rows))])

    measured, branch = variances(params)
    np.testing.assert_allclose(measured, expected, rtol=0.05)
    np.testing.assert_allclose(branch, 1.0, rtol=0.15)  # each residual branch ~ unit variance

    # SkipInit (skip gains 0, same compiled function): the stream passes unchanged
    # through non-transition blocks.
    zeroed = {k: ({**v, "skip_gain": jnp.zeros(())} if k.startswith("block") else v) for k, v in params.items()}
    measured0, _ = variances(zeroed)
    for i, row in enumerate(rows):
        if not row["transition"]:
            assert measured0[i] == measured0[i - 1]
    assert measured0[3] < measured[3]  # the branches did add variance with gain 1


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_traces_at_its_depth(name):
    """Every preset at tiny width, depth kept: the training forward traces to logits of
    the right shape and the parameter tree has one entry per block (jax.eval_shape:
    tracing only; compiling 16 deep graphs would take minutes on 2 cores). The backward
    is traced only for the shallow presets (below): every preset is the same blocks
    repeated, so tracing the gradient of 84 of them (F6) cost 14 s each for no check the
    shallow ones lack; execution is covered by F0 and F0+ further down."""
    cfg = _tiny(get_config(name))
    params = init_params(cfg, jax.random.key(0), 16)
    assert len(params) == 4 + cfg.num_blocks + 2  # stem, blocks, final conv, classifier
    assert sum(v.size for v in jax.tree.leaves(params)) == count(cfg, 16).params
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    logits = jax.eval_shape(lambda p, x, k: NFNet(cfg).apply({"params": p}, x, train=True, rngs={"dropout": k}),
                            params, x, jax.random.key(1))
    assert logits.shape == (2, cfg.num_classes)


@pytest.mark.parametrize("name", [n for n in PRESET_NAMES if n.rstrip("+") in ("F0", "F1")])
def test_shallow_presets_trace_forward_and_backward(name):
    """The gradient traces to one leaf per parameter, of the parameter's shape."""
    cfg = _tiny(get_config(name))
    params = init_params(cfg, jax.random.key(0), 16)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    loss, grads = jax.eval_shape(jax.value_and_grad(_loss_fn(NFNet(cfg))), params, x, jax.random.key(1))
    assert loss.shape == ()
    assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(lambda p: p.shape, params)


def _run_forward_backward(name):
    cfg = _tiny(get_config(name))
    params = init_params(cfg, jax.random.key(0), 16)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    step = jax.jit(jax.value_and_grad(_loss_fn(NFNet(cfg))))
    loss1, grads = step(params, x, jax.random.key(2))
    loss2, _ = step(params, x, jax.random.key(3))
    assert np.isfinite(float(loss1))
    assert jax.tree.all(jax.tree.map(lambda g: bool(jnp.all(jnp.isfinite(g))), grads))
    assert float(loss1) != float(loss2)  # dropout draws from the "dropout" stream
    # SkipInit: the branches are off, so only the skip gains and the path stem ->
    # shortcuts -> head -> classifier receive gradient. (Block 0 has stochastic-depth
    # rate 0; later blocks may be dropped for both examples, zeroing their gradient.)
    assert float(jnp.abs(grads["block0"]["skip_gain"])) > 0
    nonzero = sum(float(jnp.abs(grads[f"block{i}"]["skip_gain"])) > 0 for i in range(cfg.num_blocks))
    assert nonzero >= cfg.num_blocks // 2
    assert float(jnp.max(jnp.abs(grads["block0"]["conv1"]["kernel"]))) == 0.0
    assert float(jnp.max(jnp.abs(grads["classifier"]["kernel"]))) > 0


@pytest.mark.parametrize("name", ["F0", "F0+"])
def test_preset_forward_backward_runs(name):
    _run_forward_backward(name)
