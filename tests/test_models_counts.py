"""Pure-Python model configs and analytic counts (no jax): Table 3, names, bad input."""
import subprocess
import sys

import pytest

from scaling.errors import BadInput
from scaling.models.config import PRESET_NAMES, family_config, get_config, model_name
from scaling.models.counts import count

# [B21] Table 3 (docs/references.md#table-3-parameters-and-macs): params in millions,
# MACs in billions, at the test
# resolution with 1000 classes, with the number of decimals printed there.
TABLE3 = {
    "F0": ("71.5", "12.38"),
    "F1": ("132.6", "35.54"),
    "F2": ("193.8", "62.59"),
    "F3": ("254.9", "114.76"),
    "F4": ("316.1", "215.24"),
    "F5": ("377.2", "289.76"),
    "F6": ("438.4", "377.28"),
}


def _printed(value: float, like: str) -> str:
    decimals = len(like.split(".")[1]) if "." in like else 0
    return f"{value:.{decimals}f}"


@pytest.mark.parametrize("name", sorted(TABLE3))
def test_table3_rows_match_to_printed_precision(name):
    cfg = get_config(name)
    c = count(cfg, cfg.test_resolution)
    params, macs = TABLE3[name]
    assert _printed(c.params / 1e6, params) == params
    assert _printed(c.macs / 1e9, macs) == macs


@pytest.mark.parametrize(
    "rule, params, macs",
    # docs/references.md#plus-variants-and-the-bottleneck-rounding-rule
    [("keep", "527", "367"), ("round", "525.0", "333.39")],
)
def test_f4_plus_under_both_bottleneck_rules(rule, params, macs):
    cfg = get_config("F4+", bottleneck_rule=rule)
    assert cfg.test_resolution == 512
    c = count(cfg, cfg.test_resolution)
    assert _printed(c.params / 1e6, params) == params
    assert _printed(c.macs / 1e9, macs) == macs


def test_plus_default_is_official_rounding_and_keep_suffix_parses():
    assert get_config("F4+").bottleneck_rule == "round"
    assert get_config("F4+").block_widths(0) == (128, 1)
    keep = get_config("F4+-keep")
    assert keep.block_widths(0) == (192, 1)
    assert model_name(keep) == "F4+-keep"


def test_flops_are_two_per_mac_and_training_three_times_forward():
    c = count(get_config("F0"), 256)
    assert c.flops == 2 * c.macs and c.train_flops == 6 * c.macs


def test_counts_scale_with_classes_and_resolution():
    base = count(get_config("F0"), 256)
    # classifier: 2 * 1536 inputs (+1 bias) per extra class
    assert count(get_config("F0", num_classes=1001), 256).params - base.params == 3072 + 1
    assert count(get_config("F0"), 224).params == base.params
    assert count(get_config("F0"), 224).macs < base.macs


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_name_round_trips(name):
    cfg = get_config(name)
    assert model_name(cfg) == name
    assert get_config(model_name(cfg)) == cfg


def test_presets_follow_the_reference_table():
    f7 = get_config("F7+")
    assert f7.depths == (8, 16, 48, 24) and f7.widths == (384, 768, 2048, 2048)
    assert (f7.dropout, f7.train_resolution, f7.test_resolution) == (0.5, 480, 608)
    assert get_config("f3").depths == (4, 8, 24, 12) and get_config("NFNet-F3") == get_config("F3")


@pytest.mark.parametrize(
    "d, w, expected",
    [
        (1, 1 / 32, "nfnet-d1-w0.03125"),
        (0.5, 1 / 16, "nfnet-d0.5-w0.0625"),
        (0.25, 0.3, "nfnet-d0.25-w0.3"),
        (3, 0.125, "nfnet-d3-w0.125"),
        (1.5, 2, "nfnet-d1.5-w2"),
    ],
)
def test_family_members_are_valid_and_named(d, w, expected):
    cfg = family_config(d, w, num_classes=10)
    name = model_name(cfg)
    assert name == expected
    assert get_config(name, num_classes=10) == cfg
    assert min(cfg.depths) >= 1
    for stage in range(4):
        width, groups = cfg.block_widths(stage)
        assert width % groups == 0 and groups >= 1
        assert width == int(cfg.widths[stage] * 0.5)  # no channels lost to rounding


def test_family_rounding_rules():
    # depth: floor(d * k + 0.5), at least 1 block per stage
    assert family_config(0.5, 1, num_classes=10).depths == (1, 1, 3, 2)
    assert family_config(0.25, 1, num_classes=10).depths == (1, 1, 2, 1)
    tiny = family_config(1, 1 / 32, num_classes=10)
    assert tiny.widths == (8, 16, 48, 48) and tiny.group_width == 4 and tiny.stem_widths == (1, 1, 2)
    # integer k with w = 1 is the preset's architecture (F1 = k 2), family regularisation
    fam = family_config(2, 1, num_classes=1000)
    assert fam.depths == get_config("F1").depths and fam.widths == get_config("F1").widths
    assert count(fam, 320) == count(get_config("F1"), 320)
    assert model_name(fam) == "nfnet-d2-w1"  # dropout 0 != F1's 0.3: not the preset


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: get_config("F8"), "model"),
        (lambda: get_config("FO"), "model"),
        (lambda: get_config("nfnet-dx-w1"), "model"),
        (lambda: get_config("F0", dropot=0.1), "dropot"),
        (lambda: get_config("F0", bottleneck_rule="keep192x"), "bottleneck_rule"),
        (lambda: get_config("F0", num_classes=0), "num_classes"),
        (lambda: family_config(0, 1, num_classes=10), "depth_mult"),
        (lambda: family_config(1, -1, num_classes=10), "width_mult"),
        (lambda: get_config("F0", widths=(256, 512, 1536)), "depths/widths/strides"),
        (lambda: count(get_config("F0"), 0), "resolution"),
    ],
)
def test_bad_input_names_the_field(call, field):
    with pytest.raises(BadInput) as err:
        call()
    message = str(err.value)
    assert message.startswith(f"{field}:") and "\n" not in message


def test_did_you_mean():
    with pytest.raises(BadInput, match="did you mean 'F3\\+'"):
        get_config("F3++")
    with pytest.raises(BadInput, match="did you mean 'dropout'"):
        get_config("F0", dropot=0.1)


def test_pure_modules_do_not_import_jax():
    code = (
        "import sys, scaling.models, scaling.models.config, scaling.models.counts;"
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
