"""Progressive resizing ([T21]): the stage plan, its data stream and real runs.

Real runs use tests/test_train_run.py's tiny shape (d0.25 w1/32, batch 8, 2 epochs = 16
steps) in 2 stages, 8 px then 16 px: the 16 px program is the one the other training
tests compile (the same persistent cache), so a stage adds one 8 px compilation.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.errors import BadInput
from scaling.train import TrainConfig, run_training
from scaling.train import progressive as prog
from resume_helpers import kill_at_random_steps

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "results" / "test_jax_cache"
DATASET = "procedural:classes=10,train_size=64,heldout=37,res=16"
TRAIN_SIZE, BATCH = 64, 8
PROG = {"stages": 2, "min_resolution": 8}


def tiny(**overrides) -> TrainConfig:
    base = dict(depth_mult=0.25, width_mult=0.03125, dataset=DATASET, epochs=2.0, lr=0.2, batch_size=BATCH,
                resolution=16, eval_points=1, checkpoint_every_steps=4, compile_cache_dir=str(CACHE),
                log_indices=True, progressive=PROG)
    return TrainConfig(**{**base, **overrides})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ the plan (pure)


def test_four_stages_ramp_resolution_and_strength_linearly_over_equal_steps():
    stages = prog.plan(prog.Progressive(stages=4, min_resolution=8, min_strength=0.25),
                       total_steps=18, resolution=32)
    assert [(s.first, s.last) for s in stages] == [(1, 4), (5, 9), (10, 14), (15, 18)]  # round(18 k / 4)
    assert [s.resolution for s in stages] == [8, 16, 24, 32]
    assert [s.strength for s in stages] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert prog.stage_of(stages, 9).index == 1 and prog.stage_of(stages, 10).index == 2
    assert prog.stage_of(stages, 99).index == 3  # past the plan: the last stage


def test_defaults_follow_t21_and_a_short_run_drops_empty_stages():
    p = prog.Progressive()
    assert (p.stages, p.first_resolution(300)) == (4, 128)  # [T21] V2-S: 128 -> 300 over 4 stages
    assert p.first_resolution(16) == 8  # never below the models' 8 px
    stages = prog.plan(p, total_steps=2, resolution=32)
    assert [(s.first, s.last) for s in stages] == [(1, 1), (2, 2)]  # stages 0 and 2 of 4 had no step
    assert prog.plan(None, total_steps=5, resolution=32) == (prog.Stage(0, 1, 5, 32, 1.0),)


def test_compute_is_summed_over_stages_at_their_own_resolution():
    stages = prog.plan(prog.Progressive(stages=2, min_resolution=8), total_steps=10, resolution=16)
    cost = {8: 1.0, 16: 4.0}.__getitem__
    assert prog.train_flops(stages, 10, 3, cost) == 5 * 3 * 1.0 + 5 * 3 * 4.0
    assert prog.train_flops(stages, 7, 3, cost) == 5 * 3 * 1.0 + 2 * 3 * 4.0  # mid-run: what was done
    assert prog.mean_train_flops(prog.Progressive(stages=2, min_resolution=8), 16, cost) == 2.5


def test_dropout_scales_with_strength_where_the_model_has_it():
    from scaling.models import registry

    f0 = registry.get_config("F0", num_classes=10)
    assert f0.dropout == 0.2
    assert prog.stage_model(f0, 0.5).dropout == pytest.approx(0.1)
    assert prog.stage_model(f0, 1.0) is f0
    assert prog.stage_model("not a dataclass", 0.5) == "not a dataclass"


@pytest.mark.parametrize("table, fix", [
    ({"stages": 1}, "progressive.stages: 1 is not"),
    ({"stages": "4"}, "progressive.stages: '4'"),
    ({"stages": 17}, "progressive.stages: 17"),
    ({"stage": 4}, "progressive.stage: unknown field; did you mean 'stages'?"),
    ({"min_resolution": 4}, "progressive.min_resolution: 4 is not"),
    ({"min_resolution": 16}, "progressive.min_resolution: 16 px is not below the run's 16 px"),
    ({"min_strength": 1.5}, "progressive.min_strength: 1.5"),
    ({"min_strength": True}, "progressive.min_strength: True"),
    ([4, 8], "progressive: must be a table"),
])
def test_bad_progressive_tables_are_refused_in_one_line(table, fix):
    with pytest.raises(BadInput) as err:
        tiny(progressive=table).validate()
    assert str(err.value).startswith(fix) and "\n" not in str(err.value)


def test_off_by_default_so_no_trial_id_or_shape_key_changes():
    from scaling.train.config import identity_of, shape_of

    plain = tiny(progressive={}).to_dict()
    assert "progressive" not in identity_of(plain) and "progressive" not in shape_of(plain)
    staged = tiny().to_dict()
    assert identity_of(staged)["progressive"] == PROG and shape_of(staged)["progressive"] == PROG


def test_a_spec_recipe_sets_it_and_it_enters_the_trial_and_its_shape():
    from sweeps.spec import expand, parse_spec

    base = {"name": "t", "dataset": "procedural:classes=10", "num_classes": 10, "batch_size": 8,
            "resolution": 16, "grid": {"depth_mults": [0.25], "width_mults": [0.03125], "epochs": [1],
                                       "lr": [0.4]}}
    plain = expand(parse_spec(base))
    staged = expand(parse_spec({**base, "recipe": {"progressive": PROG}}))
    assert staged[0].config["progressive"] == PROG
    assert staged[0].trial_id != plain[0].trial_id and staged[0].shape != plain[0].shape
    with pytest.raises(BadInput, match=r"^recipe\.progressive\.stages: 1 is not"):
        expand(parse_spec({**base, "recipe": {"progressive": {"stages": 1}}}))


# ------------------------------------------------------------------ the data stream


def test_staged_stream_renders_each_stage_at_its_side_and_keeps_the_order():
    from scaling.data import get_dataset, train_iterator
    from scaling.data.augment import AugmentConfig
    from scaling.data.pipeline import StepPlan
    from scaling.train.stage_data import StagedIterator

    ds = get_dataset(DATASET)
    stages = prog.plan(prog.Progressive(stages=2, min_resolution=8, min_strength=0.5), total_steps=6,
                       resolution=16)

    def make(st):
        aug = AugmentConfig().at_strength(st.resolution, st.strength)
        return train_iterator(ds, global_batch_size=BATCH, seed=3, resolution=st.resolution, augment=aug)

    it = StagedIterator(stages, make)
    batches = [next(it) for _ in range(6)]
    assert [b["image"].shape[1] for b in batches] == [8, 8, 8, 16, 16, 16]
    plan = StepPlan(TRAIN_SIZE, BATCH, 3)
    assert all(np.array_equal(b["index"], plan(s)["index"]) for s, b in enumerate(batches))
    # the last stage at full strength is the fixed-resolution stream, pixel for pixel
    fixed = train_iterator(ds, global_batch_size=BATCH, seed=3, resolution=16)
    fixed.set_state({**fixed.get_state(), "step": 3})
    assert all(np.array_equal(next(fixed)["image"], b["image"]) for b in batches[3:])
    # restored mid-stage from its saved state: the same batches, bitwise
    state = StagedIterator(stages, make)
    state.set_state({**it.get_state(), "step": 2})
    assert all(np.array_equal(next(state)["image"], b["image"]) for b in batches[2:])
    with pytest.raises(BadInput, match="different pipeline"):
        other = StagedIterator(prog.plan(prog.Progressive(stages=3, min_resolution=8), total_steps=6,
                                         resolution=16), make)
        other.set_state(it.get_state())


def test_augmentation_strength_scales_the_crop_margin_only():
    from scaling.data.augment import AugmentConfig

    assert AugmentConfig().at_strength(16, 0.5).crop_pad == 1  # R/8 = 2 px, halved
    assert AugmentConfig(crop_pad=4, flip=False).at_strength(32, 0.25) == AugmentConfig(crop_pad=1, flip=False)
    assert AugmentConfig(crop_pad=0).at_strength(32, 1.0).crop_pad == 0
    with pytest.raises(BadInput):
        AugmentConfig().at_strength(16, 1.5)


# ------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("progressive")
    return run_training(tiny(), workdir), workdir


def test_a_progressive_run_counts_each_stage_at_its_resolution(reference):
    from scaling.models.config import family_config
    from scaling.models.counts import count

    result, workdir = reference
    cfg = family_config(0.25, 0.03125, num_classes=10)
    per = {r: count(cfg, r).train_flops for r in (8, 16)}
    assert result.status == "done" and result.steps == 16 and result.examples_seen == 128
    assert result.train_flops == pytest.approx(8 * BATCH * per[8] + 8 * BATCH * per[16])
    assert result.train_flops < 3 * result.flops_per_example * result.examples_seen  # cheaper than fixed
    assert result.flops_per_example == count(cfg, 16).flops  # the run's (final) resolution
    assert result.device_seconds > 0 and result.heldout_loss is not None
    # the examples are the fixed-resolution run's, once per epoch
    rows = read_jsonl(workdir / "indices-p0.jsonl")
    from scaling.data.pipeline import StepPlan

    plan = StepPlan(TRAIN_SIZE, BATCH, 0)
    assert [r["index"] for r in rows] == [plan(s)["index"].tolist() for s in range(16)]
    lrs = [r["lr"] for r in read_jsonl(workdir / "metrics.jsonl")]
    assert lrs[-1] < lrs[len(lrs) // 2]  # one schedule over both stages (cosine to zero), not restarted


def test_interrupted_in_each_stage_then_resumed_is_bitwise_equal(reference, tmp_path):
    ref, _ = reference
    workdir = tmp_path / "cut"
    for step in (4, 12):  # one cut inside each stage; the second resume opens stage 2 mid-way
        with pytest.raises(KeyboardInterrupt):
            run_training(tiny(), workdir, should_stop=lambda s=step: (workdir / "checkpoints" / str(s)).exists())
        assert not (workdir / "result.json").exists()
    resumed = run_training(tiny(), workdir)
    assert resumed.fingerprint == ref.fingerprint and resumed.heldout_loss == ref.heldout_loss
    assert resumed.train_flops == ref.train_flops and resumed.examples_seen == ref.examples_seen


def test_a_flops_budget_buys_steps_at_the_stages_mean_cost(reference, tmp_path):
    from scaling.models.config import family_config
    from scaling.models.counts import count

    cfg = family_config(0.25, 0.03125, num_classes=10)
    mean = (count(cfg, 8).train_flops + count(cfg, 16).train_flops) / 2
    budget = mean * BATCH * 12  # 12 steps at the mean cost; fixed 16 px would buy fewer
    result = run_training(tiny(epochs=None, budget=budget, unit="flops", eval_points=0), tmp_path / "b")
    assert result.total_steps == 12
    assert result.train_flops == pytest.approx(budget)
    assert round(budget / (count(cfg, 16).train_flops * BATCH)) < 12


def test_a_model_whose_parameters_depend_on_the_side_is_refused(tmp_path):
    cfg = tiny(model="vit-w16-d1-m32-h2-p4", depth_mult=None, width_mult=None)
    with pytest.raises(BadInput, match=r"^progressive: model vit-w16-d1-m32-h2-p4's parameters depend"):
        run_training(cfg, tmp_path / "vit")
    assert not (tmp_path / "vit").exists()


@pytest.mark.slow  # 3 process starts of ~10-20 s each on 2 cores
def test_sigkill_at_random_points_then_resume_is_exact(reference, tmp_path):
    ref, _ = reference
    workdir = tmp_path / "killed"
    code = ("import sys, json; from scaling.train import TrainConfig, run_training; "
            "r = run_training(TrainConfig.from_json(sys.argv[1]), sys.argv[2]); print(json.dumps(r.to_dict()))")
    args = [sys.executable, "-c", code, tiny(checkpoint_every_steps=2).to_json(), str(workdir)]
    kills = kill_at_random_steps(lambda **_: args, workdir, rounds=2, seed=6, gap=(3, 6))
    assert kills >= 1, "the run finished before it could be killed; make it longer"
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["fingerprint"] == ref.fingerprint and result["heldout_loss"] == ref.heldout_loss
    assert result["train_flops"] == ref.train_flops
    rows = read_jsonl(workdir / "indices-p0.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17))
