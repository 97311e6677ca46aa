"""The bfloat16 compute path: bf16 activations, float32 parameters
(docs/references.md#precision).

bf16 runs on CPU through XLA (slowly), so everything here is checked on the CI machine:
which dtype each conv / matmul actually runs in (read from the jaxpr, no compile), how
far bf16 numbers are from float32 ones, that the optimizer state stays float32, and
that a short bf16 run learns like the float32 run and resumes exactly.

Tolerances: bf16 keeps 8 significant bits (unit round-off 2^-9, about 0.2%), and the
tiny network below rounds activations at some 30 ops in sequence, so its logits and
gradients are expected a few percent off float32 (measured: 2.7% logits, 2.1% gradients,
relative L2; bound 5%);
float32 differences of summation order are ~1e-6, so the bounds also show that bf16
really ran.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.models.config import family_config
from scaling.models.layers import CONV_IMPLS, conv2d
from scaling.models.nfnet import NFNet, init_params
from scaling.train import TrainConfig, run_training

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "results" / "test_jax_cache"  # shared with test_train_run: same fp32 shapes
CFG = family_config(0.25, 0.03125, num_classes=10)  # blocks [1,1,2,1], ~30k params
# 16 training images, 2 batches per epoch: the tiny model memorises them within 32 steps,
# so "the loss goes down" is a clear signal (about 2.3 -> 1.95 nats at lr 0.4).
DATASET = "procedural:classes=10,train_size=16,heldout=37,res=16"


def _params():
    """Init params with every skip gain 1 (at init they are 0 and the residual branches,
    most of the network, would not reach the logits) and a larger classifier."""
    params = init_params(CFG, jax.random.key(0), 16)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.ones_like(v) if p[-1].key == "skip_gain" else v, params)
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 100.0
    return params


def _eqns(jaxpr):
    """Every equation of a jaxpr, nested sub-jaxprs (pjit, custom_vjp, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def _op_dtypes(fn, *args) -> list[tuple[str, tuple[str, ...]]]:
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return [(e.primitive.name, tuple(str(v.aval.dtype) for v in e.invars)) for e in _eqns(jaxpr)
            if e.primitive.name in ("conv_general_dilated", "dot_general", "rsqrt")]


# ------------------------------------------------------------------ kernels and the model


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_every_conv_kernel_computes_in_bf16(impl):
    """Each of layers.py's conv implementations, on each kind of layer `_cpu_choice`
    tells apart (1x1, tiny map, strided grouped, stride-1 grouped, ungrouped 3x3)."""
    rng = np.random.default_rng(0)
    for k, stride, groups, hw in [(1, 1, 1, 4), (3, 1, 2, 2), (3, 2, 2, 8), (3, 1, 2, 8), (3, 1, 1, 8)]:
        x = jnp.asarray(rng.standard_normal((2, hw, hw, 8)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, 8 // groups, 8)) / np.sqrt(k * k * 8 // groups), jnp.float32)
        ref = conv2d(x, w, stride=stride, groups=groups, impl=impl)
        out = conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), stride=stride, groups=groups, impl=impl)
        assert out.dtype == jnp.bfloat16, (k, stride, groups, hw)
        err = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
        assert err < 1e-2, (k, stride, groups, hw, err)  # one rounding of inputs and output


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_bf16_model_runs_convs_and_matmuls_in_bf16_and_ws_in_fp32(impl):
    """Read from the traced program (no compile): forward and backward convs and
    matmuls take bf16 operands (nothing silently promoted to float32 by a float32
    parameter), weight standardisation's rsqrt is float32, and the logits are float32."""
    params, x = _params(), jnp.zeros((2, 16, 16, 3), jnp.float32)
    model = NFNet(CFG, impl, jnp.bfloat16)

    def forward(p):
        return model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(0)})

    assert jax.eval_shape(forward, params).dtype == jnp.float32
    fwd = _op_dtypes(forward, params)
    assert {ops for name, ops in fwd if name != "rsqrt"} == {("bfloat16", "bfloat16")}
    assert {ops for name, ops in fwd if name == "rsqrt"} == {("float32",)}
    assert sum(name == "rsqrt" for name, _ in fwd) == 29  # one per WS conv: every conv counted

    bwd = _op_dtypes(jax.grad(lambda p: forward(p).sum()), params)
    assert all(ops == ("bfloat16", "bfloat16") for name, ops in bwd if name == "conv_general_dilated")
    # The only matmuls with a float32 operand are the classifier's two backward ones (its
    # cotangent is the float32 logits'); none is float32 x float32.
    mixed = [ops for name, ops in bwd if name == "dot_general" and "float32" in ops]
    assert len(mixed) == 2 and ("float32", "float32") not in mixed


@pytest.mark.slow  # ~22-29 s on 2 cores: compiles the value-and-grad twice (fp32, bf16)
def test_bf16_logits_and_gradients_are_close_to_fp32_and_gradients_are_fp32():
    params = _params()
    x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
    labels = jnp.arange(8) % 10

    def loss_and_grads(dtype):
        model = NFNet(CFG, dtype=dtype)

        def loss(p):
            logits = model.apply({"params": p}, x, train=False)
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, ref_logits), ref_grads = loss_and_grads(jnp.float32)
    (_, logits), grads = loss_and_grads(jnp.bfloat16)
    assert logits.dtype == jnp.float32
    rel = float(jnp.linalg.norm(logits - ref_logits) / jnp.linalg.norm(ref_logits))
    assert 1e-4 < rel < 5e-2, rel
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    g, r = (jnp.concatenate([v.ravel() for v in jax.tree.leaves(t)]) for t in (grads, ref_grads))
    rel = float(jnp.linalg.norm(g - r) / jnp.linalg.norm(r))
    assert 1e-4 < rel < 5e-2, rel


# ------------------------------------------------------------------------- training runs


def tiny(**overrides) -> TrainConfig:
    base = dict(depth_mult=0.25, width_mult=0.03125, dataset=DATASET, epochs=16.0, lr=0.4,
                batch_size=8, resolution=16, checkpoint_every_steps=4, compile_cache_dir=str(CACHE))
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A float32 and a bfloat16 run of 32 steps, each with its per-step metrics rows.

    ~38 s on 2 cores with a cold compile cache (the bf16 train + eval steps; the fp32
    ones are test_train_run's, cached), ~5 s warm: the tests using it are marked slow."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        workdir = tmp_path_factory.mktemp(dtype)
        rows = []
        out[dtype] = (run_training(tiny(compute_dtype=dtype), workdir, on_metrics=rows.append), workdir, rows)
    return out


@pytest.mark.slow  # the `runs` fixture
def test_bf16_run_learns_like_fp32(runs):
    losses = {}
    for dtype, (result, _, rows) in runs.items():
        assert result.status == "done" and result.steps == 32
        losses[dtype] = np.array([r["train_loss"] for r in rows])
        assert losses[dtype][-8:].mean() < losses[dtype][:8].mean() - 0.15, dtype
    # Same data, same init: the bf16 trajectory follows the float32 one step by step
    # (measured max gap 0.049 nats) while the loss itself falls by 0.285 in both runs.
    assert np.max(np.abs(losses["bfloat16"] - losses["float32"])) < 0.1
    assert abs(runs["bfloat16"][0].heldout_loss - runs["float32"][0].heldout_loss) < 0.1
    assert runs["bfloat16"][0].fingerprint != runs["float32"][0].fingerprint  # bf16 did run


@pytest.mark.slow  # the `runs` fixture
def test_bf16_run_keeps_params_and_optimizer_state_fp32(runs):
    """Read the dtypes the bf16 run saved (orbax metadata, nothing cast on restore)."""
    import orbax.checkpoint as ocp

    _, workdir, _ = runs["bfloat16"]
    meta = ocp.StandardCheckpointer().metadata(workdir / "checkpoints" / "32" / "state")
    leaves = jax.tree_util.tree_leaves_with_path(getattr(meta, "item_metadata", meta))
    floats = {jax.tree_util.keystr(p): str(m.dtype) for p, m in leaves if "int" not in str(m.dtype)}
    assert any(k.startswith("['params']") for k in floats)
    assert any(k.startswith("['opt_state']") for k in floats)
    assert set(floats.values()) == {"float32"}


@pytest.mark.slow  # the `runs` fixture
def test_bf16_run_resumes_exactly(runs, tmp_path):
    """Stopped after step 13 (last checkpoint: 12), resumed: same final state."""
    result, _, rows = runs["bfloat16"]

    class Stop(Exception):
        pass

    def stop_after_13(row):
        if row["step"] == 13:
            raise Stop

    with pytest.raises(Stop):
        run_training(tiny(compute_dtype="bfloat16"), tmp_path, on_metrics=stop_after_13)
    resumed_rows = []
    resumed = run_training(tiny(compute_dtype="bfloat16"), tmp_path, on_metrics=resumed_rows.append)
    assert resumed_rows[0]["step"] == 13  # from the checkpoint at 12
    assert resumed.fingerprint == result.fingerprint
    assert resumed.heldout_loss == result.heldout_loss
    assert [r["train_loss"] for r in resumed_rows] == [r["train_loss"] for r in rows[12:]]


@pytest.mark.slow  # the `runs` fixture
def test_workdir_dtype_is_part_of_the_run(runs):
    from scaling.errors import BadInput

    _, workdir, _ = runs["bfloat16"]
    with pytest.raises(BadInput, match=r"^workdir: .*compute_dtype"):
        run_training(tiny(), workdir)


@pytest.mark.slow  # the `runs` fixture
def test_workdir_from_before_the_option_still_resumes(runs, tmp_path):
    """A config.json written before compute_dtype existed (no such key) is the float32 run."""
    import shutil

    result, workdir, _ = runs["float32"]
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    config = json.loads((old / "config.json").read_text())
    del config["compute_dtype"]
    (old / "config.json").write_text(json.dumps(config))
    assert run_training(tiny(), old) == result  # the stored result, not a refusal


# ------------------------------------------------------------------- CLI, config, specs


def test_cli_bad_dtype_exits_2(tmp_path, capsys):
    from study.cli import main

    try:
        rc = main(["train", "--depth-mult", "0.25", "--width-mult", "0.03125", "--epochs", "1",
                   "--lr", "0.1", "--workdir", str(tmp_path / "w"), "--compute-dtype", "bf17"])
    except SystemExit as exit_:
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: compute_dtype: 'bf17'") and "float32, bfloat16" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "w").exists()


def test_config_suggests_the_nearest_dtype():
    from scaling.errors import BadInput

    with pytest.raises(BadInput, match=r"^compute_dtype: 'bfloat61' .*did you mean 'bfloat16'"):
        tiny(compute_dtype="bfloat61").validate()
    assert tiny(compute_dtype="bfloat16").validate().compute_dtype == "bfloat16"


def test_spec_recipe_sets_the_dtype_and_leaves_float32_trial_ids_alone():
    from sweeps.spec import expand, parse_spec

    base = {"name": "t", "dataset": "procedural:classes=10", "num_classes": 10, "batch_size": 8, "resolution": 16,
            "grid": {"depth_mults": [0.25], "width_mults": [0.03125], "epochs": [1], "lr": [0.4]}}
    (plain,) = expand(parse_spec(base))
    (bf16,) = expand(parse_spec({**base, "recipe": {"compute_dtype": "bfloat16"}}))
    # The field enters a trial's config (and so its id) only when the recipe sets it:
    # this id was computed before compute_dtype existed.
    assert "compute_dtype" not in plain.config
    # Pinned before compute_dtype existed (id version 1; the spec then said "procedural"
    # with num_classes 10, which specs now refuse as a disagreement).
    from sweeps.ids import legacy_trial_id

    assert legacy_trial_id(plain.sweep, {**plain.config, "dataset": "procedural"}) == \
        "15c18e74edd7265075caddf7184a1adee5265523e0cf796eedb316370d5eafa5"
    (explicit,) = expand(parse_spec({**base, "recipe": {"compute_dtype": "float32"}}))
    assert explicit.trial_id == plain.trial_id  # version 2: a default is the same as absent
    assert bf16.trial_id != plain.trial_id
    assert TrainConfig.from_dict(bf16.config).validate().compute_dtype == "bfloat16"
