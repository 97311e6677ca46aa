"""Sweep specs: validation (one line naming the key and the fix), expansion, bundled specs."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.errors import BadInput
from sweeps.spec import expand, load_spec, parse_spec

BASE = {
    "name": "t", "dataset": "procedural:classes=10", "num_classes": 10, "batch_size": 8, "resolution": 16,
    "grid": {"depth_mults": [0.25], "width_mults": [0.03125], "epochs": [1, 2], "lr": {"centre": 0.4, "steps": 1}},
}


def spec(**changes) -> dict:
    d = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        table, _, sub = key.partition("__")
        if sub:
            if value is None:
                d[table].pop(sub)
            else:
                d[table][sub] = value
        elif value is None:
            d.pop(table)
        else:
            d[table] = value
    return d


def test_grid_expands_models_x_epochs_x_lrs_x_seeds():
    s = parse_spec(spec(seeds=[0, 1], grid__models=["F0"]))
    trials = expand(s)
    assert len(trials) == 2 * 2 * 3 * 2  # (family point + F0) x epochs x lrs x seeds
    assert {t.config["lr"] for t in trials} == {0.2, 0.4, 0.8}
    assert {t.config["model"] for t in trials} == {"F0", "nfnet-d0.25-w0.03125"}
    assert len({t.trial_id for t in trials}) == len(trials)
    assert all(t.params > 0 and t.flops_per_example > 0 for t in trials)


def test_lr_list_and_canonical_model_names_give_one_trial_id():
    a = expand(parse_spec(spec(grid__models=["f3+"], grid__lr=[0.1, 0.2])))
    b = expand(parse_spec(spec(grid__models=["F3+"], grid__lr=[0.2, 0.1])))
    assert sorted(t.trial_id for t in a) == sorted(t.trial_id for t in b)


@pytest.mark.parametrize("changes, message", [
    ({"grid__epocs": [1]}, r"^grid\.epocs: unknown key; did you mean 'epochs'\?"),
    ({"batch_szie": 8}, r"^batch_szie: unknown key; did you mean 'batch_size'\?"),
    ({"grid__models": ["F9"]}, r"^grid\.model: unknown model 'F9'"),
    ({"grid__epochs": [1, 0]}, r"^grid\.epochs: 0 must be a positive"),
    ({"grid__epochs": []}, r"^grid\.epochs: empty list"),
    ({"grid__epochs": [1, 2, 1]}, r"^grid\.epochs: duplicate entry 1"),
    ({"grid__lr": [0.1, -0.2]}, r"^grid\.lr: -0\.2 must be a positive"),
    ({"grid__lr": {"centre": 0.4, "step": 1}}, r"^grid\.lr\.step: unknown key; did you mean 'steps'\?"),
    ({"grid__models": ["F0", "F0"]}, r"^grid\.models: duplicate entry 'F0'"),
    ({"grid__width_mults": None}, r"^grid\.width_mults: missing"),
    ({"dataset": None}, r"^dataset: missing"),
    ({"recipe": {"lr": 0.1}}, r"^recipe\.lr: set by the grid"),
    ({"recipe": {"eval_pionts": 2}}, r"^recipe\.eval_pionts: unknown key; did you mean 'eval_points'\?"),
    ({"isoflop": {"budgets": [1e12], "lr": [0.1]}}, r"^grid: give exactly one of \[grid\] or \[isoflop\]"),
    # a dataset this machine does not have (a pod's path): its size must be stated
    ({"grid": None, "dataset": "arrayrecord:/nowhere/shards", "isoflop": {"budgets": [1e12], "lr": [0.1], "depth_mults": [1], "width_mults": [1]}},
     r"^train_examples: missing"),
    # the spec's numbers must agree with the dataset's
    ({"num_classes": 12}, r"^num_classes: the spec says 12 but dataset 'procedural:classes=10' has 10; remove num_classes"),
    ({"train_examples": 5, "dataset": "procedural:classes=10,train_size=64"},
     r"^train_examples: the spec says 5 but dataset .* has 64"),
    ({"heldout_examples": 7, "dataset": "procedural:classes=10,heldout=40"},
     r"^heldout_examples: the spec says 7 but dataset .* has 40"),
    ({"dataset": "procedural:clases=10"}, r"^dataset: unknown procedural option 'clases=10'"),
    ({"dataset": "imagenet:/x"}, r"^dataset: unknown kind 'imagenet'"),
    ({"grid": None, "train_examples": 1000, "dataset": "procedural:classes=10,train_size=1000",
      "isoflop": {"budgets": [1e3], "lr": [0.1], "depth_mults": [0.25], "width_mults": [0.03125]}},
     r"^isoflop\.budgets: 1000 flops buys .* steps of nfnet-d0\.25-w0\.03125 \(one step costs"),
    ({"grid": None, "train_examples": 1000, "dataset": "procedural:classes=10,train_size=1000",
      "isoflop": {"budgets": [1], "unit": "tpu-v4-cor-hours", "lr": [0.1], "depth_mults": [1], "width_mults": [1]}},
     r"^isoflop\.unit: unknown unit 'tpu-v4-cor-hours'; did you mean 'tpu-v4-core-hours'\?"),
])
def test_bad_specs_name_the_key_and_the_fix(changes, message):
    with pytest.raises(BadInput, match=message) as err:
        expand(parse_spec(spec(**changes)))
    assert "\n" not in str(err.value)


def test_isoflop_budgets_become_the_epochs_that_spend_them():
    s = parse_spec(spec(grid=None, train_examples=1000, dataset="procedural:classes=10,train_size=1000", isoflop={
        "budgets": [1e12, 4e12], "unit": "flops", "lr": [0.1], "depth_mults": [0.25, 0.5], "width_mults": [0.0625]}))
    trials = expand(s)
    assert len(trials) == 4
    for t in trials:
        spent = 3 * t.flops_per_example * t.config["epochs"] * 1000
        assert spent == pytest.approx(1e12, rel=1e-5) or spent == pytest.approx(4e12, rel=1e-5)
    small, big = sorted({t.params for t in trials})
    epochs = {p: sorted(t.config["epochs"] for t in trials if t.params == p) for p in (small, big)}
    assert epochs[small][0] > epochs[big][0]  # a smaller model gets more epochs for the same FLOPs


def test_isoflop_budgets_of_a_progressive_recipe_are_spent_at_its_stages_mean_cost():
    """Progressive resizing trains early stages at smaller sides: the epochs that spend a
    budget are those at the stages' mean cost, as the trainer counts them, not at the
    full-resolution cost (which would leave the budget partly unspent)."""
    from scaling.models import registry
    from scaling.train import progressive

    iso = {"budgets": [1e12], "unit": "flops", "lr": [0.1], "depth_mults": [0.25], "width_mults": [0.0625]}
    base = dict(grid=None, train_examples=1000, dataset="procedural:classes=10,train_size=1000", isoflop=iso)
    fixed, = expand(parse_spec(spec(**base)))
    prog, = expand(parse_spec(spec(**base, recipe={"progressive": {"stages": 3, "min_resolution": 8}})))
    cfg = registry.get_config(prog.config["model"], num_classes=10)
    per_side = {r: registry.count(cfg, r).train_flops for r in (8, 12, 16)}
    mean = progressive.mean_train_flops(progressive.Progressive(stages=3, min_resolution=8), 16, per_side.__getitem__)
    assert mean == pytest.approx(sum(per_side.values()) / 3) and mean < per_side[16]
    assert prog.config["epochs"] * 1000 * mean == pytest.approx(1e12, rel=1e-5)
    assert prog.config["epochs"] > fixed.config["epochs"]


def test_paper_spec_is_the_published_grid():
    s = load_spec("paper")
    trials = expand(s)
    assert {t.config["model"] for t in trials} == {"F0", "F1", "F3", "F3+", "F7", "F7+"}
    assert sorted({t.config["epochs"] for t in trials}) == [0.25, 0.5, 1, 2, 4, 8]
    lrs = sorted({t.config["lr"] for t in trials})
    assert 1.6 in lrs and all(b / a == 2 for a, b in zip(lrs, lrs[1:]))
    assert len(trials) == 6 * 6 * len(lrs)
    assert {(t.config["batch_size"], t.config["resolution"], t.config["eval_resolution"]) for t in trials} == {(4096, 224, 256)}
    assert s.heldout_examples == 130_000 and s.report_unit == "tpu-v4-core-hours"


def test_paper_plan_reports_tpu_v4_core_hours():
    out = subprocess.run([sys.executable, "-m", "study.cli", "sweep", "plan", "paper", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["trials"] == 180 and plan["unit"] == "tpu-v4-core-hours"
    # F7+ at 8 epochs alone is ~1.9e22 FLOPs ~ 110k v4 core-hours at 36%
    # (docs/references.md#implied-utilisation-of-the-largest-run),
    # so the whole grid is a few million core-hours.
    assert 1e6 < plan["compute"] < 1e7 and math.isfinite(plan["train_flops"])


@pytest.mark.parametrize("name", ["demo", "smoke"])
def test_bundled_small_specs_validate(name):
    from sweeps import cli
    from sweeps.store import DEFAULT_URL

    assert cli.DEFAULT_URL == DEFAULT_URL
    s = load_spec(name)
    trials = expand(s)
    assert s.dataset.startswith("procedural")
    if name == "demo":
        assert len({t.config["model"] for t in trials}) >= 4
        assert len(s.epochs) == 3 and len(s.lrs) == 3


def test_cli_bad_spec_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndataset = "procedural:classes=10"\nnum_classes = 10\nbatch_size = 8\nresolution = 16\n'
                   '[grid]\nmodels = ["F0"]\nepochs = [1]\nlr = [0.1]\nlearning_rate = 1\n')
    out = subprocess.run([sys.executable, "-m", "study.cli", "sweep", "run", str(bad), "--store",
                          f"sqlite:///{tmp_path / 'runs.db'}"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: grid.learning_rate: unknown key; ")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs.db").exists()  # nothing written on bad input


def test_dry_run_prints_the_grid_and_touches_no_store(tmp_path):
    db = tmp_path / "runs.db"
    out = subprocess.run([sys.executable, "-m", "study.cli", "sweep", "run", "demo", "--dry-run", "--json",
                          "--store", f"sqlite:///{db}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["trials"] == 36 and len(plan["models"]) == 4 and plan["unit"] == "cpu-core-hours"
    assert not db.exists()


def test_a_bad_recipe_value_is_refused_with_the_spec(tmp_path):
    """At expansion (plan, run, enqueue all expand first), not by every trial as it starts."""
    bundled = Path(__file__).resolve().parents[1] / "sweeps" / "specs" / "smoke.toml"
    text = bundled.read_text().replace("[recipe]", '[recipe]\ncompute_dtype = "bf17"', 1)
    assert "bf17" in text, "the smoke spec has no [recipe] table any more: adapt this test"
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(BadInput, match=r"recipe\.compute_dtype: 'bf17'"):
        expand(load_spec(str(tmp_path / "bad.toml")))


def test_shape_key_separates_compute_dtypes_and_keeps_old_keys():
    from sweeps.spec import canonical_json, shape_key

    cfg = {"model": "F0", "dataset": "procedural", "batch_size": 64, "resolution": 16, "eval_resolution": 16}
    old = canonical_json({k: cfg.get(k) for k in ("model", "depth_mult", "width_mult", "dataset", "batch_size",
                                                  "resolution", "eval_resolution")})
    assert shape_key(cfg) == old == shape_key({**cfg, "compute_dtype": "float32"})
    assert shape_key({**cfg, "compute_dtype": "bfloat16"}) != old
