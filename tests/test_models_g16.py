"""The G16-EfficientNet family [M21]: EfficientNet-B0's counts reproduced by the same
counter, the G16 counts, names, the normalisers (GroupNorm, LayerNorm, LayerNorm + proxy
norm [L21]), every preset at tiny size, counts vs XLA, and real training runs."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.errors import BadInput
from scaling.models import registry
from scaling.models.g16_config import PRESET_NAMES, VARIANTS, family_config, get_config, grid_names, model_name
from scaling.models.g16_counts import count

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mbconv_runs import check_four_devices, check_sigkill_resume, reference_run  # noqa: E402

# Our counts at each variant's native test resolution, 1000 classes (docs/models.md#g16-efficientnet).
G16_COUNTS = {"G16-EfficientNet-B0": (5_913_796, 224, 0.6347e9), "G16-EfficientNet-B1": (8_332_120, 240, 1.1117e9),
              "G16-EfficientNet-B2": (9_504_122, 260, 1.5225e9)}


def test_the_counter_reproduces_efficientnet_b0_to_b2():
    """Group size 1 and expansion 6 is EfficientNet: B0 5.3M params and 0.39B MACs at 224
    (docs/references.md#g16-efficientnet-and-proxy-norm); the exact parameter counts are
    the well-known 5,288,548 / 7,794,184 / 9,109,994 of B0 / B1 / B2."""
    b0 = count(get_config("g16-d1-w1-g1-e6"), 224)
    assert b0.params == 5_288_548 and abs(b0.params / 5.3e6 - 1) < 0.01
    assert abs(b0.macs / 0.39e9 - 1) < 0.02, b0.macs
    assert count(get_config("g16-d1.1-w1-g1-e6"), 240).params == 7_794_184
    assert count(get_config("g16-d1.2-w1.1-g1-e6"), 260).params == 9_109_994


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_g16_counts(name):
    params, res, macs = G16_COUNTS[name]
    c = count(get_config(name), res)
    assert c.params == params and abs(c.macs / macs - 1) < 1e-3
    # [M21] trains at about half the pixels: MACs scale with the maps (SAME padding)
    train = count(get_config(name), VARIANTS[name.split("-")[-1]]["train_resolution"])
    assert train.params == c.params and 0.45 < train.macs / c.macs < 0.6


def test_group_convs_cost_more_than_depthwise_and_expansion_4_claws_some_back():
    """The [M21] trade: G16 with expansion 6 would cost far more than EfficientNet-B0;
    expansion 4 brings it back to 1.6x B0's MACs (ours; docs/models.md#g16-efficientnet)."""
    b0 = count(get_config("g16-d1-w1-g1-e6"), 224).macs
    g16_e6 = count(get_config("g16-d1-w1-e6"), 224).macs
    g16 = count(get_config("G16-EfficientNet-B0"), 224).macs
    assert b0 < g16 < g16_e6 and 1.5 < g16 / b0 < 1.8


def test_model_info_reports_g16_b0():
    out = subprocess.run([sys.executable, "-m", "study.cli", "model-info", "G16-EfficientNet-B0", "--resolution",
                          "224", "--classes", "1000", "--json"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert (row["name"], row["family"], row["params"], row["group_size"], row["expand"], row["norm"]) == \
        ("G16-EfficientNet-B0", "g16", 5_913_796, 16, 4, "ln_pn")


def test_names_round_trip_and_are_owned_by_this_family_only():
    names = list(PRESET_NAMES) + ["G16-EfficientNet-B0-gn", "g16-efficientnet-b2-LN", "g16-d0.25-w0.25",
                                  "g16-d1-w1-g1-e6", "g16-d0.5-w0.25-g8-ln", "g16-d0.5-w0.25-e6-gn"]
    for name in names:
        cfg = get_config(name, num_classes=10)
        assert registry.get_config(model_name(cfg), num_classes=10) == cfg, name
        assert [f.name for f in registry.FAMILIES.values() if f.owns(name)] == ["g16"]
    assert model_name(get_config("g16-d1-w1")) == "G16-EfficientNet-B0"
    assert model_name(get_config("g16-d1.2-w1.1-g16-e4-ln_pn")) == "G16-EfficientNet-B2"
    assert all("source" in row for row in VARIANTS.values())


@pytest.mark.parametrize("name, message", [
    ("G16-EfficientNet-B7", r"^model: unknown model 'G16-EfficientNet-B7'"),
    ("G16-EfficientNet-B0-bn", r"^model: 'G16-EfficientNet-B0-bn' has normaliser suffix 'bn'"),
    ("g16-d0.5-w-1", r"^width_mult: must be a positive finite number"),
    ("g16-d0.5", r"^model: unknown model 'g16-d0.5'"),
    ("g16-d0.5-w0.5-g0", r"^group_size: must be a positive whole number"),
])
def test_bad_names_say_what_to_fix(name, message):
    with pytest.raises(BadInput, match=message):
        registry.get_config(name)


def test_tiny_members_and_grid():
    cfg = family_config(0.01, 0.01, num_classes=10)
    assert [s.repeats for s in cfg.stages] == [1] * 7 and cfg.stem == 8 and cfg.head == 16
    assert [s.out for s in cfg.stages] == [8] * 7
    for res in (16, 24, 32):
        assert count(cfg, res).params > 0
    assert grid_names({"g16_depth_mults": [0.25], "g16_width_mults": [0.25, 0.5]}, "grid.") == \
        ["g16-d0.25-w0.25", "g16-d0.25-w0.5"]
    with pytest.raises(BadInput, match=r"^grid\.g16_depth_mults: missing"):
        grid_names({"g16_width_mults": [0.25]}, "grid.")


# ------------------------------------------------------------------------- normalisers


def test_proxy_moments_match_a_monte_carlo_estimate_and_are_deterministic():
    import jax.numpy as jnp
    import numpy as np

    from scaling.models.mbconv import proxy_moments

    scale = jnp.asarray([1.0, 0.5, 2.0, 1.3])
    bias = jnp.asarray([0.0, 1.0, -0.5, 0.2])
    mean, var = proxy_moments(scale, bias)
    z = np.random.default_rng(0).standard_normal(2_000_000)
    for c in range(4):
        a = np.asarray(scale[c]) * z + np.asarray(bias[c])
        silu = a / (1 + np.exp(-a))
        assert float(mean[c]) == pytest.approx(silu.mean(), abs=3e-3)
        assert float(var[c]) == pytest.approx(silu.var(), rel=3e-3)
    again = proxy_moments(scale, bias)
    assert (np.asarray(again[0]) == np.asarray(mean)).all() and (np.asarray(again[1]) == np.asarray(var)).all()


def test_normalisers_are_per_image_and_proxy_norm_standardises_a_gaussian():
    """Each image is normalised on its own (no batch statistics: one image's output does
    not depend on the others); under ln_pn, Gaussian inputs come out of the activation
    with mean ~0 and variance ~1 whatever the scale and bias (16k samples per channel;
    where SiLU is curved the sample variance wanders by a few percent)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.models.mbconv import Norm

    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 32)) * 3.0 + 1.0
    for kind in ("gn", "ln", "ln_pn"):
        m = Norm(kind, act=kind == "ln_pn")
        params = m.init(jax.random.key(1), x)
        params = jax.tree.map(lambda p: p, params)
        params["params"]["scale"] = jnp.linspace(0.8, 2.0, 32)
        params["params"]["bias"] = jnp.linspace(-0.5, 0.5, 32)
        y = m.apply(params, x)
        alone = m.apply(params, x[:1])
        np.testing.assert_allclose(y[:1], alone, rtol=1e-5, atol=1e-5)
        if kind == "ln_pn":
            np.testing.assert_allclose(np.mean(np.asarray(y), axis=(0, 1, 2)), 0.0, atol=0.05)
            np.testing.assert_allclose(np.var(np.asarray(y), axis=(0, 1, 2)), 1.0, atol=0.08)
            plain = Norm("ln", act=True).apply(params, x)  # SiLU without the proxy: far from it
            assert float(np.var(np.asarray(plain), axis=(0, 1, 2)).min()) < 0.5
        else:  # before the affine, per image (and per group for gn): mean 0, variance 1
            z = (np.asarray(y) - np.asarray(params["params"]["bias"])) / np.asarray(params["params"]["scale"])
            # ln: over (H, W, C); gn: 32 channels are 2 groups of 16
            zg, axes = (z, (1, 2, 3)) if kind == "ln" else (z.reshape(16, 32, 32, 2, 16), (1, 2, 4))
            np.testing.assert_allclose(zg.mean(axis=axes), 0.0, atol=1e-4)
            np.testing.assert_allclose(zg.var(axis=axes), 1.0, atol=1e-2)


# ------------------------------------------------------------------- the Flax module


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_traces_forward_and_backward_at_tiny_size(name):
    """Each preset's depth (B0 16 blocks, B2 23) and group/expansion rule at width 0.05."""
    import jax
    import jax.numpy as jnp

    from scaling.models.mbconv import MBConvNet, init_params

    cfg = dataclasses.replace(get_config(name, num_classes=5), width_mult=0.05)
    params = init_params(cfg, jax.random.key(0), 16)
    assert sum(v.size for v in jax.tree.leaves(params)) == count(cfg, 16).params
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)

    def loss(p, x, key):
        return MBConvNet(cfg).apply({"params": p}, x, train=True, rngs={"dropout": key}).sum()

    out, grads = jax.eval_shape(jax.value_and_grad(loss), params, x, jax.random.key(1))
    assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(lambda p: p.shape, params)
    assert len([k for k in params if k.startswith("block")]) == sum(s.repeats for s in cfg.stages)


def test_group_convs_have_16_channels_per_group():
    import jax

    from scaling.models.mbconv import init_params

    cfg = family_config(0.25, 0.5, num_classes=10)
    params = init_params(cfg, jax.random.key(0), 16)
    dws = {k: v["dw"]["kernel"].shape for k, v in params.items() if k.startswith("block")}
    assert dws["block0"] == (3, 3, 16, 16)  # MBConv1 on 16 channels: one group
    assert dws["block1"] == (3, 3, 16, 32)  # 8 -> x4 = 32 channels, 2 groups of 16
    assert all(s[2] == 16 for s in dws.values())


def test_counts_agree_with_xla_cost_analysis():
    """As for EfficientNetV2 (tests/test_models_effnetv2.py): XLA's marginal FLOPs per
    image over 2 x our MACs of the taps that meet the input, measured 1.09-1.16."""
    import jax
    import jax.numpy as jnp

    from scaling.models.mbconv import MBConvNet, init_params
    from scaling.models.mbconv_config import count_network

    cfg = family_config(0.25, 0.5, num_classes=10, norm="gn")
    res = 16
    params = init_params(cfg, jax.random.key(0), res)
    fwd = jax.jit(lambda p, x: MBConvNet(cfg, impl="native").apply({"params": p}, x, train=False))
    flops = {b: fwd.lower(params, jnp.zeros((b, res, res, 3))).cost_analysis()["flops"] for b in (1, 3)}
    valid = count_network(cfg.stem, cfg.stages, cfg.head, 10, res, 3, padded_taps=False)
    assert 1.0 <= (flops[3] - flops[1]) / 2 / valid.flops < 1.2


# ------------------------------------------------------------------ real training runs

MODEL = "g16-d0.1-w0.25"


@pytest.fixture(scope="module")
def g16_reference(tmp_path_factory):
    return reference_run(MODEL, tmp_path_factory.mktemp("g16-reference"))


def test_a_g16_trains_and_one_compile_serves_every_lr(g16_reference, tmp_path):
    from scaling.train import run_training, step

    from mbconv_runs import config

    ref, workdir = g16_reference
    assert (ref.status, ref.model, ref.family) == ("done", MODEL, "g16")
    assert ref.params == count(get_config(MODEL, num_classes=10), 16).params
    assert json.loads((workdir / "result.json").read_text())["family"] == "g16"
    before = step.TRACE_COUNT["train"]
    a = run_training(config(MODEL, lr=0.001, epochs=0.5, eval_points=0), tmp_path / "a")
    b = run_training(config(MODEL, lr=0.03, epochs=1.5, eval_points=0), tmp_path / "b")
    assert step.TRACE_COUNT["train"] == before and a.heldout_loss != b.heldout_loss


def test_g16_sigkill_then_resume_is_exact(g16_reference, tmp_path):
    check_sigkill_resume(MODEL, g16_reference[0], tmp_path)


@pytest.mark.slow  # compiles the 4-device program
def test_g16_on_four_simulated_devices_matches_one(g16_reference, tmp_path):
    check_four_devices(MODEL, *g16_reference, tmp_path)


def test_a_spec_with_both_mbconv_families_expands():
    """One [[grid]] per family: canonical names, the family column and the counts of
    every trial; the two families' grid keys do not collide with NFNet's or ViT's."""
    from sweeps.spec import expand, parse_spec

    spec = parse_spec({"name": "mbconv", "dataset": "procedural:classes=10,train_size=256", "num_classes": 10,
                       "batch_size": 8, "resolution": 16, "train_examples": 256,
                       "grid": [{"effnetv2_depth_mults": [0.1], "effnetv2_width_mults": [0.125, 0.25],
                                 "epochs": [1], "lr": [0.01]},
                                {"g16_depth_mults": [0.1], "g16_width_mults": [0.25], "g16_norm": "gn",
                                 "epochs": [1], "lr": [0.01, 0.02], "recipe": {"optimizer": {"weight_decay": 0.0}}}]})
    got = sorted({(t.config["model"], t.family, t.params) for t in expand(spec)})
    want = sorted({(n, registry.family_name(n), registry.count(registry.get_config(n, num_classes=10), 16).params)
                   for n in ("effnetv2-d0.1-w0.125", "effnetv2-d0.1-w0.25", "g16-d0.1-w0.25-gn")})
    assert got == want
    assert not set(registry.FAMILIES["g16"].grid_keys) & (set(registry.FAMILIES["nfnet"].grid_keys)
                                                          | set(registry.FAMILIES["vit"].grid_keys))
    with pytest.raises(BadInput, match=r"optimizer\.agc_clip: unknown field of the EfficientNet recipe"):
        expand(parse_spec({"name": "bad", "dataset": "procedural:classes=10,train_size=256", "num_classes": 10,
                           "batch_size": 8, "resolution": 16, "train_examples": 256,
                           "grid": {"g16_depth_mults": [0.1], "g16_width_mults": [0.25], "epochs": [1],
                                    "lr": [0.01], "recipe": {"optimizer": {"agc_clip": 0.01}}}}))
