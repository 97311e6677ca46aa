"""TrainConfig and the budget -> steps rule: pure Python, no jax, instant."""
import math
import subprocess
import sys

import pytest

from scaling import units
from scaling.errors import BadInput
from scaling.train import TrainConfig, plan_steps


def test_json_round_trip_and_canonical_form():
    cfg = TrainConfig(model="F0", epochs=0.25, lr=1.6, batch_size=4096, resolution=224,
                      eval_resolution=256, optimizer={"weight_decay": 1e-6}, eval_points=3)
    text = cfg.to_json()
    assert TrainConfig.from_json(text) == cfg
    assert TrainConfig.from_json(text).to_json() == text  # canonical: equal configs hash equal
    family = TrainConfig(depth_mult=0.5, width_mult=0.125, budget=400.0, unit="tpu-v4-core-hours", lr=0.8)
    assert TrainConfig.from_json(family.to_json()) == family


@pytest.mark.parametrize("kwargs, field", [
    (dict(epochs=1.0), "model"),                                      # no model at all
    (dict(model="F0", depth_mult=1.0, width_mult=1.0, epochs=1.0), "model"),
    (dict(model="F0"), "epochs"),                                     # no budget
    (dict(model="F0", epochs=1.0, budget=3.0, unit="flops"), "epochs"),  # both
    (dict(model="F0", budget=3.0), "budget"),                         # budget without unit
    (dict(model="F0", epochs=-1.0), "epochs"),
    (dict(model="F0", epochs=float("nan")), "epochs"),
    (dict(model="F0", epochs=1.0, lr=0.0), "lr"),
    (dict(model="F0", epochs=1.0, batch_size=0), "batch_size"),
    (dict(model="F0", epochs=1.0, resolution=4), "resolution"),
    (dict(model="F0", epochs=1.0, utilization=1.5), "utilization"),
    (dict(model="F0", epochs=1.0, eval_points=-1), "eval_points"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(BadInput, match=f"^{field}:"):
        TrainConfig(**kwargs).validate()


def test_unknown_field_suggests_the_right_one():
    with pytest.raises(BadInput, match="did you mean 'batch_size'"):
        TrainConfig.from_dict({"model": "F0", "epochs": 1.0, "batchsize": 8})


def test_epoch_budget_to_steps():
    plan = plan_steps(epochs=0.25, budget=None, unit=None, utilization=None, batch_size=32,
                      train_size=1000, train_flops_per_example=1e6)
    assert plan.total_steps == round(0.25 * 1000 / 32) == 8
    assert plan.examples == 8 * 32
    assert plan.budget_flops == 8 * 32 * 1e6


def test_tpu_v4_core_hour_budget_to_steps():
    """400 v4 core-hours at the profile's utilisation, in examples of F0-like cost."""
    per_example = 3 * 2 * 12.38e9  # train FLOPs per example at F0's test MACs [B21] Table 3
    plan = plan_steps(epochs=None, budget=400.0, unit="tpu-v4-core-hours", utilization=None,
                      batch_size=4096, train_size=4_000_000_000, train_flops_per_example=per_example)
    flops = 400 * 3600 * 275e12 / 2 * units.HARDWARE["tpu-v4"].default_utilization
    assert plan.total_steps == round(flops / per_example / 4096)
    # The utilisation is overridable and scales the step count linearly.
    half = plan_steps(epochs=None, budget=400.0, unit="tpu-v4-core-hours",
                      utilization=units.HARDWARE["tpu-v4"].default_utilization / 2, batch_size=4096,
                      train_size=4_000_000_000, train_flops_per_example=per_example)
    assert math.isclose(half.total_steps, plan.total_steps / 2, abs_tol=1)


def test_budget_below_one_step_is_refused():
    with pytest.raises(BadInput, match="^budget: .*less than one step"):
        plan_steps(epochs=None, budget=1e7, unit="flops", utilization=None, batch_size=32,
                   train_size=1000, train_flops_per_example=1e6)


def test_config_import_stays_jax_free():
    code = "import sys, scaling.train; scaling.train.TrainConfig; assert 'jax' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
