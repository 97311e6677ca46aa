"""The ViT family: published counts, names, the Flax module (every preset at tiny size,
counts vs XLA), its recipe, and real training runs (resume after SIGKILL, 4 devices)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from resume_helpers import four_devices_match, sigkill_then_resume

from scaling.errors import BadInput
from scaling.models import registry
from scaling.models.vit_config import (PRESET_NAMES, VARIANTS, ViTRecipe, family_config, get_config,
                                       grid_names, model_name)
from scaling.models.vit_counts import count

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "results" / "test_jax_cache"

# Published parameter counts at 224 px, 1000 classes, class token, linear head
# (docs/references.md#vision-transformers; timm's counts agree): exact.
PARAMS_224 = {
    "ViT-Ti/16": 5_717_416,
    "ViT-S/16": 22_050_664,
    "ViT-B/16": 86_567_656,
    "ViT-L/16": 304_326_632,
    "ViT-H/14": 632_045_800,
    "ViT-g/14": 1_012_611_432,
    "ViT-G/14": 1_844_440_680,
}
# Published MACs per image at 224 px (same section): within 1%.
MACS_224 = {"ViT-Ti/16": 1.254e9, "ViT-S/16": 4.599e9, "ViT-B/16": 17.56e9, "ViT-L/16": 61.55e9,
            "ViT-H/14": 167.3e9, "ViT-g/14": 267.0e9, "ViT-G/14": 483.8e9}


# --------------------------------------------------------------------- counts and names


@pytest.mark.parametrize("name", sorted(PARAMS_224))
def test_published_counts_at_224(name):
    c = count(get_config(name), 224)
    assert c.params == PARAMS_224[name]
    assert abs(c.macs / MACS_224[name] - 1) < 0.01, (name, c.macs)
    assert c.flops == 2 * c.macs and c.train_flops == 3 * c.flops


def test_sovit_400m_with_map_head_matches_the_paper():
    """[A23]: SoViT-400m/14, MAP head, 428M params and 221 GFLOPs (2 x MACs) at 224."""
    cfg = get_config("SoViT-400m/14")
    assert (cfg.width, cfg.depth, cfg.mlp_dim, cfg.num_heads, cfg.patch_size, cfg.pool) == \
        (1152, 27, 4304, 16, 14, "map")
    c = count(cfg, 224)
    assert abs(c.params / 428e6 - 1) < 0.01, c.params
    assert abs(c.flops / 221e9 - 1) < 0.01, c.flops
    assert model_name(cfg) == "ViT-So400m/14"


def test_model_info_reports_vit_b16():
    out = subprocess.run([sys.executable, "-m", "study.cli", "model-info", "ViT-B/16", "--resolution", "224",
                          "--classes", "1000", "--json"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert (row["name"], row["family"], row["params"]) == ("ViT-B/16", "vit", 86_567_656)
    assert f"{row['macs'] / 1e9:.2f}" == "17.56" and row["flops"] == 2 * row["macs"]
    assert (row["width"], row["depth"], row["mlp_dim"], row["num_heads"], row["patch_size"]) == (768, 12, 3072, 12, 16)


def test_every_name_round_trips_through_get_config():
    names = list(PRESET_NAMES) + [p + s for p in ("ViT-B/16", "ViT-So400m/14") for s in ("-tok", "-gap", "-map")]
    names += ["vit-w32-d2-m128-h2-p4", "vit-w32-d2-m128-h2-p4-gap", "vit-w48-d3-m100-h3-p8-map"]
    for name in names:
        cfg = get_config(name, num_classes=10)
        again = registry.get_config(model_name(cfg), num_classes=10)
        assert again == cfg, name
        assert registry.family_of(name).name == "vit"
    # one spelling per model: aliases and case give the canonical name
    assert model_name(get_config("sovit-400m/14")) == "ViT-So400m/14"
    assert model_name(get_config("vit-ti/16")) == "ViT-Ti/16"
    assert model_name(get_config("ViT-B/16-tok")) == "ViT-B/16"
    assert model_name(get_config("ViT-So400m/14-map")) == "ViT-So400m/14"
    # g (giant, 1408) and G (gigantic, 1664) differ only in case
    assert get_config("ViT-g/14").width == 1408 and get_config("ViT-G/14").width == 1664
    # a family member with a preset's shape is that preset
    assert model_name(family_config(192, 12, 768, 3, 16, num_classes=5)) == "ViT-Ti/16"
    assert all("source" in row for row in VARIANTS.values())


@pytest.mark.parametrize("name, message", [
    ("ViT-X/16", r"^model: unknown model 'ViT-X/16'"),
    ("ViT-B/15", r"^model: unknown model"),
    ("ViT-B/16-max", r"^model: 'ViT-B/16-max' has pooling suffix 'max'"),
    ("vit-w30-d2-m64-h4-p4", r"^num_heads: width 30 does not split into 4 heads"),
    ("vit-w32-d0-m64-h4-p4", r"^depth: must be a positive whole number"),
])
def test_bad_names_say_what_to_fix(name, message):
    with pytest.raises(BadInput, match=message):
        registry.get_config(name)


def test_tiny_members_are_valid_at_16_to_32_px():
    for res in (16, 24, 32):
        c = count(family_config(16, 1, 32, 1, 4, num_classes=10), res)
        assert c.params > 0 and c.macs > 0
    with pytest.raises(BadInput, match="holds no 16x16 patch"):
        count(get_config("ViT-S/16"), 8)


def test_grid_names_span_the_family_axes():
    names = grid_names({"vit_widths": [32, 64], "vit_depths": [2, 4], "vit_patch_sizes": [4],
                        "vit_mlp_ratios": [2]}, "grid.")
    assert names == ["vit-w32-d2-m64-h1-p4", "vit-w32-d4-m64-h1-p4", "vit-w64-d2-m128-h1-p4",
                     "vit-w64-d4-m128-h1-p4"]
    with pytest.raises(BadInput, match=r"^grid\.vit_patch_sizes: missing"):
        grid_names({"vit_widths": [32], "vit_depths": [2]}, "grid.")


# ------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize("table, message", [
    ({"agc_clip": 0.04}, r"^optimizer\.agc_clip: unknown field of the ViT recipe"),
    ({"beta2": 1.5}, r"^optimizer\.beta2: 1\.5 is out of range"),
    ({"weight_decay": "0.1"}, r"^optimizer\.weight_decay: '0\.1' is not a number"),
    ({"decay": "rsqrt"}, r"^optimizer\.decay: 'rsqrt' is not one of cosine, linear"),
])
def test_recipe_table_is_typed_and_range_checked(table, message):
    with pytest.raises(BadInput, match=message):
        ViTRecipe.from_dict(table)


# ------------------------------------------------------------------- the Flax module


def _tiny(name: str, num_classes: int = 5):
    """A named variant at tiny width with its depth, heads, patch and pooling kept."""
    cfg = get_config(name, num_classes=num_classes)
    return dataclasses.replace(cfg, width=4 * cfg.num_heads, mlp_dim=8 * cfg.num_heads)


def _loss(model):
    import jax
    import jax.numpy as jnp

    def loss(params, x, key):
        logits = model.apply({"params": params}, x, train=True, rngs={"dropout": key})
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])

    return loss


def test_parameter_tree_matches_the_count_and_flax_init():
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from scaling.models.vit import ViT, init_params

    for pool in ("tok", "gap", "map"):
        cfg = family_config(24, 2, 40, 3, 4, num_classes=7, pool=pool)
        params = init_params(cfg, jax.random.key(0), 16)
        flat = traverse_util.flatten_dict(params, sep="/")
        assert sum(v.size for v in flat.values()) == count(cfg, 16).params
        assert flat["embedding/kernel"].shape == (4, 4, 3, 24)
        assert flat["block0/attn/qkv/kernel"].shape == (24, 72)
        assert flat["classifier/kernel"].shape == (24, 7)
        assert flat["pos_embedding"].shape == (1, 16 + (pool == "tok"), 24)
        assert ("map_head/probe" in flat) == (pool == "map") and ("cls" in flat) == (pool == "tok")
        ref = jax.eval_shape(lambda: ViT(cfg).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)["params"])
        assert jax.tree.map(lambda x: x.shape, ref) == jax.tree.map(lambda x: x.shape, params)
    # one grayscale channel: only the patch kernel changes
    gray = init_params(cfg, jax.random.key(0), 16, channels=1)
    assert gray["embedding"]["kernel"].shape == (4, 4, 1, 24)
    assert sum(v.size for v in jax.tree.leaves(gray)) == count(cfg, 16, channels=1).params


def test_init_is_deterministic_and_follows_big_visions_initialisers():
    import jax
    import numpy as np

    from scaling.models.vit import init_params

    cfg = family_config(128, 2, 512, 2, 4, num_classes=10)
    a, b = init_params(cfg, jax.random.key(1), 32), init_params(cfg, jax.random.key(1), 32)
    c = init_params(cfg, jax.random.key(2), 32)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), a, b))
    assert not (a["pos_embedding"] == c["pos_embedding"]).all()
    # 16k-65k draws each: sample std within 2% of the target
    np.testing.assert_allclose(np.std(a["pos_embedding"]), 1 / np.sqrt(128), rtol=0.02)
    np.testing.assert_allclose(np.std(a["block0"]["attn"]["qkv"]["kernel"]), np.sqrt(1 / 128), rtol=0.02)  # xavier D x D
    np.testing.assert_allclose(np.std(a["block0"]["mlp"]["fc1"]["kernel"]), np.sqrt(2 / (128 + 512)), rtol=0.02)
    np.testing.assert_allclose(np.std(a["embedding"]["kernel"]), np.sqrt(1 / 48), rtol=0.05)  # 6k draws
    assert float(np.abs(a["classifier"]["kernel"]).max()) == 0.0  # head zero-init
    assert float(np.abs(a["block0"]["attn"]["qkv"]["bias"]).max()) == 0.0
    assert float(a["block0"]["ln1"]["scale"].min()) == 1.0


@pytest.mark.parametrize("cfg_args, res", [((256, 2, 1024, 4, 4, "tok"), 16), ((256, 2, 1024, 4, 4, "map"), 16),
                                           ((128, 3, 512, 2, 4, "gap"), 32), ((192, 2, 768, 3, 8, "map"), 32)])
def test_counts_agree_with_xla_cost_analysis(cfg_args, res):
    """Marginal XLA FLOPs per image (batch 3 minus batch 1) vs 2 x analytic MACs. XLA also
    counts the elementwise work we do not (layer norms, GELU, softmax): measured +1.0% to
    +1.9% on these configs, so XLA must lie in [1, 1.025] x ours."""
    import jax
    import jax.numpy as jnp

    from scaling.models.vit import ViT, init_params

    *shape, pool = cfg_args
    cfg = family_config(*shape, num_classes=10, pool=pool)
    params = init_params(cfg, jax.random.key(0), res)
    fwd = jax.jit(lambda p, x: ViT(cfg).apply({"params": p}, x, train=False))
    flops = {b: fwd.lower(params, jnp.zeros((b, res, res, 3))).cost_analysis()["flops"] for b in (1, 3)}
    ratio = (flops[3] - flops[1]) / 2 / count(cfg, res).flops
    assert 1.0 <= ratio < 1.025, ratio


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_traces_forward_and_backward_at_tiny_size(name):
    """Every named variant at tiny width (depth, heads, patch and pooling kept), 2 x 2
    patches: forward and backward trace to logits and gradients of the right shapes."""
    import jax
    import jax.numpy as jnp

    from scaling.models.vit import ViT, init_params

    cfg = _tiny(name)
    res = 2 * cfg.patch_size
    params = init_params(cfg, jax.random.key(0), res)
    x = jax.ShapeDtypeStruct((2, res, res, 3), jnp.float32)
    loss, grads = jax.eval_shape(jax.value_and_grad(_loss(ViT(cfg))), params, x, jax.random.key(1))
    assert loss.shape == ()
    assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(lambda p: p.shape, params)
    assert len([k for k in params if k.startswith("block")]) == cfg.depth


@pytest.mark.parametrize("name", ["ViT-Ti/16", "ViT-S/14-gap", "ViT-B/16-map", "ViT-So400m/14"])
def test_preset_forward_backward_runs(name):
    """Each pooling head (token, mean, MAP) and the So400m shape execute: finite loss and
    gradients, dropout drawing from its stream, gradient reaching the embedding. Two
    blocks, not the preset's depth: the depth is checked by the tracing test above, and
    compiling 27 blocks (So400m) cost ~50 s of CI for no check two blocks lack."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.models.vit import ViT, init_params

    cfg = dataclasses.replace(_tiny(name), dropout=0.1, depth=2)
    res = 2 * cfg.patch_size
    params = init_params(cfg, jax.random.key(0), res)
    head = params["classifier"]["kernel"]  # zero-initialised: the body would get no gradient
    params["classifier"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(4), head.shape)
    x = jax.random.normal(jax.random.key(1), (2, res, res, 3))
    step = jax.jit(jax.value_and_grad(_loss(ViT(cfg))))
    loss1, grads = step(params, x, jax.random.key(2))
    loss2, _ = step(params, x, jax.random.key(3))
    assert np.isfinite(float(loss1)) and float(loss1) != float(loss2)  # dropout draws differ
    assert jax.tree.all(jax.tree.map(lambda g: bool(jnp.all(jnp.isfinite(g))), grads))
    assert float(jnp.abs(grads["block0"]["attn"]["qkv"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["embedding"]["kernel"]).max()) > 0


def test_cpu_and_native_kernels_compute_the_same_function():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.models.vit import ViT, init_params

    cfg = family_config(32, 2, 64, 4, 4, num_classes=10, pool="map")
    params = init_params(cfg, jax.random.key(0), 16)
    params["classifier"]["kernel"] = jax.random.normal(jax.random.key(5), params["classifier"]["kernel"].shape)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    out, grads = {}, {}
    for impl in ("cpu", "native"):
        f = jax.jit(jax.value_and_grad(lambda p, x: ViT(cfg, impl=impl).apply({"params": p}, x, train=False).sum()))
        out[impl], grads[impl] = f(params, x)
    np.testing.assert_allclose(out["cpu"], out["native"], rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads["cpu"], grads["native"])


def test_another_input_size_resamples_the_position_embeddings():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.models.vit import ViT, init_params

    cfg = family_config(32, 1, 64, 2, 4, num_classes=3)
    params = init_params(cfg, jax.random.key(0), 16)  # a 4 x 4 grid
    params["classifier"]["kernel"] = jnp.ones_like(params["classifier"]["kernel"])
    out = ViT(cfg).apply({"params": params}, jnp.ones((2, 32, 32, 3)), train=False)  # an 8 x 8 grid
    assert out.shape == (2, 3) and np.isfinite(np.asarray(out)).all()


def test_bfloat16_activations_keep_float32_logits():
    import jax
    import jax.numpy as jnp

    from scaling.models.vit import ViT, init_params

    cfg = family_config(32, 1, 64, 2, 4, num_classes=3, pool="map")
    params = init_params(cfg, jax.random.key(0), 16)
    out = ViT(cfg, dtype=jnp.bfloat16).apply({"params": params}, jnp.ones((2, 16, 16, 3)), train=False)
    assert out.dtype == jnp.float32


# ----------------------------------------------------------------- the optax recipe


def _toy_params():
    import jax.numpy as jnp

    return {"block0": {"mlp": {"fc1": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))}},
                       "ln1": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))}},
            "pos_embedding": jnp.ones((1, 4, 2)),
            "classifier": {"kernel": jnp.ones((2, 5)), "bias": jnp.ones((5,))}}


def test_decoupled_weight_decay_follows_the_schedule_not_the_peak_lr():
    """big_vision's update: p - s(t) (lr adam(g) + wd p) on kernels only, s = lr(t)/peak."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.models.vit import make_recipe

    cfg = ViTRecipe(weight_decay=0.1, head_decay_mult=3.0, grad_clip_norm=0.0)
    recipe = make_recipe(cfg)
    params = _toy_params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = recipe.optimizer.init(params)
    direction, _ = recipe.optimizer.update(zeros, state, params)
    for peak in (1e-3, 1.0):
        new = recipe.apply_updates(params, direction, 0.5 * peak, peak)  # s(t) = 0.5
        np.testing.assert_allclose(new["block0"]["mlp"]["fc1"]["kernel"], 1 - 0.5 * 0.1, rtol=1e-6)
        np.testing.assert_allclose(new["classifier"]["kernel"], 1 - 0.5 * 0.3, rtol=1e-6)
        for path in (("block0", "mlp", "fc1", "bias"), ("block0", "ln1", "scale"), ("pos_embedding",),
                     ("classifier", "bias")):
            leaf = new
            for k in path:
                leaf = leaf[k]
            np.testing.assert_allclose(leaf, 1.0)


def test_adam_direction_clipping_and_schedules():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.models.vit import make_recipe

    params = _toy_params()
    grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
    recipe = make_recipe(ViTRecipe(grad_clip_norm=1.0, weight_decay=0.0))
    direction, _ = recipe.optimizer.update(grads, recipe.optimizer.init(params), params)
    # Adam's first step is sign(g) whatever the clipping (bias-corrected moments)
    jax.tree.map(lambda d: np.testing.assert_allclose(d, 1.0, rtol=1e-4), direction)
    cos = make_recipe(ViTRecipe()).learning_rate
    lin = make_recipe(ViTRecipe(decay="linear")).learning_rate
    kw = dict(peak_lr=2.0, warmup_steps=10, total_steps=110)
    assert float(cos(5, **kw)) == pytest.approx(1.0) and float(lin(5, **kw)) == pytest.approx(1.0)
    assert float(cos(60, **kw)) == pytest.approx(1.0) and float(lin(60, **kw)) == pytest.approx(1.0)
    assert float(lin(85, **kw)) == pytest.approx(0.5) and float(cos(110, **kw)) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ real training runs

DATASET = "procedural:classes=10,train_size=64,heldout=37,res=16"
MODEL = "vit-w32-d2-m64-h2-p4"


def _config(**overrides):
    from scaling.train import TrainConfig

    base = dict(model=MODEL, dataset=DATASET, epochs=2.0, lr=0.004, batch_size=8, resolution=16,
                eval_points=1, checkpoint_every_steps=4, compile_cache_dir=str(CACHE), log_indices=True)
    return TrainConfig(**{**base, **overrides})


def _cli(workdir: Path, **extra: str) -> list[str]:
    args = [sys.executable, "-m", "study.cli", "train", "--model", MODEL, "--dataset", DATASET, "--epochs", "2",
            "--lr", "0.004", "--batch", "8", "--resolution", "16", "--eval-points", "1",
            "--compile-cache", str(CACHE), "--log-indices", "--json", "--workdir", str(workdir)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


@pytest.fixture(scope="module")
def vit_reference(tmp_path_factory):
    from scaling.train import run_training

    workdir = tmp_path_factory.mktemp("vit-reference")
    return run_training(_config(), workdir), workdir


def test_a_vit_trains_records_its_family_and_one_compile_serves_every_lr(vit_reference, tmp_path):
    from scaling.train import run_training, step

    ref, workdir = vit_reference
    assert (ref.status, ref.model, ref.family, ref.steps) == ("done", MODEL, "vit", 16)
    assert ref.params == count(get_config(MODEL, num_classes=10), 16).params
    assert ref.heldout_loss < 2.31  # below chance (ln 10 = 2.303) after 2 epochs
    assert json.loads((workdir / "result.json").read_text())["family"] == "vit"
    before = step.TRACE_COUNT["train"]
    a = run_training(_config(lr=0.001, epochs=0.5, eval_points=0), tmp_path / "a")
    b = run_training(_config(lr=0.016, epochs=1.5, eval_points=0), tmp_path / "b")
    assert step.TRACE_COUNT["train"] == before and a.compile_seconds == b.compile_seconds == 0.0
    assert a.heldout_loss != b.heldout_loss


def test_an_nfnet_optimizer_table_is_refused_for_a_vit():
    with pytest.raises(BadInput, match=r"^optimizer\.agc_clip: unknown field of the ViT recipe"):
        _config(optimizer={"agc_clip": 0.04}).validate()
    _config(optimizer={"weight_decay": 0.0, "decay": "linear"}).validate()


def test_vit_sigkill_at_random_points_then_resume_is_exact(vit_reference, tmp_path):
    ref, _ = vit_reference
    workdir = tmp_path / "killed"
    result = sigkill_then_resume(lambda **extra: _cli(workdir, **extra), workdir, ref, steps=16)
    assert result["family"] == "vit"  # the bitwise resume (params, Adam state, step) is the helper's check


@pytest.mark.slow  # compiles the 4-device program
def test_vit_on_four_simulated_devices_matches_one(vit_reference, tmp_path):
    four_devices_match(_config(), *vit_reference, tmp_path, timeout=400)
