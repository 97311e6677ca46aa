"""Fine-tune runs: a tiny NFNet pre-trained on the procedural set, fine-tuned on a
procedural set with other classes (scaling/train/finetune.py).

The parent is tests/test_train_run.py's tiny shape (one compilation, cached in the same
persistent cache). Fine-tunes are 1 epoch (8 steps) with a checkpoint every 4.
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
from resume_helpers import kill_at_random_steps

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "results" / "test_jax_cache"
PRE_DATA = "procedural:classes=10,train_size=64,heldout=37,res=16"
DOWN_DATA = "procedural:classes=5,train_size=64,heldout=37,res=16,seed=7"  # other classes


def parent_config(**overrides) -> TrainConfig:
    base = dict(depth_mult=0.25, width_mult=0.03125, dataset=PRE_DATA, epochs=2.0, lr=0.2, batch_size=8,
                resolution=16, checkpoint_every_steps=4, compile_cache_dir=str(CACHE))
    return TrainConfig(**{**base, **overrides})


def ft_config(parent_dir: Path, **overrides) -> TrainConfig:
    base = dict(parent_config().to_dict(), dataset=DOWN_DATA, epochs=1.0, lr=0.1, parent_trial_id="parent-0",
                parent_workdir=str(parent_dir), log_indices=True)
    return TrainConfig(**{**base, **overrides})


def leaves(params) -> dict:
    from scaling.train.finetune import _leaves

    return {"/".join(k): np.asarray(v) for k, v in _leaves(params).items()}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("parent")
    return run_training(parent_config(), workdir), workdir


@pytest.fixture(scope="module")
def finetuned(parent, tmp_path_factory):
    """The uninterrupted fine-tune the interrupted ones are compared with."""
    workdir = tmp_path_factory.mktemp("ft")
    return run_training(ft_config(parent[1]), workdir), workdir


def test_finetune_records_its_stage_parent_and_own_compute(parent, finetuned):
    pre, _ = parent
    ft, _ = finetuned
    assert (ft.stage, ft.parent_trial_id) == ("finetune", "parent-0")
    assert (pre.stage, pre.parent_trial_id) == ("pretrain", None)
    assert ft.heldout_loss is not None and 0 <= ft.heldout_accuracy <= 1
    # its own compute: 8 steps of 8 images at 16 px, with a 5-class head
    assert ft.examples_seen == 64 and ft.steps == 8
    assert ft.train_flops == pytest.approx(3 * ft.flops_per_example * 64)
    assert ft.params < pre.params  # 5 classes instead of 10
    assert ft.device_seconds > 0 and ft.measured_hours > 0


def test_finetune_starts_from_the_parent_not_from_scratch(parent, finetuned, tmp_path):
    scratch = run_training(ft_config(parent[1], parent_trial_id=None, parent_workdir=None), tmp_path / "s")
    assert scratch.fingerprint != finetuned[0].fingerprint


def test_head_only_finetune_keeps_every_other_parameter(parent, tmp_path):
    from scaling.train.loop import final_params

    cfg = ft_config(parent[1], trainable="classifier")
    run_training(cfg, tmp_path / "head")
    theirs = leaves(final_params(parent_config(), parent[1], name="parent"))
    mine = leaves(final_params(cfg, tmp_path / "head", name="ft"))
    body = [k for k in mine if "classifier" not in k]
    assert body and all(np.array_equal(mine[k], theirs[k]) for k in body)
    assert mine["classifier/kernel"].shape[-1] == 5 and theirs["classifier/kernel"].shape[-1] == 10


def test_finetune_is_idempotent_and_resumes_exactly_after_an_interrupt(parent, finetuned, tmp_path):
    ref, ref_dir = finetuned
    again = run_training(ft_config(parent[1]), ref_dir)  # finished: the stored result
    assert again == ref
    beats = {"n": 0}

    def stop_after_a_checkpoint() -> bool:
        beats["n"] += 1
        return (tmp_path / "cut" / "checkpoints" / "4").exists()

    with pytest.raises(KeyboardInterrupt):
        run_training(ft_config(parent[1]), tmp_path / "cut", should_stop=stop_after_a_checkpoint)
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = run_training(ft_config(parent[1]), tmp_path / "cut")
    assert resumed.fingerprint == ref.fingerprint and resumed.heldout_loss == ref.heldout_loss


@pytest.mark.slow  # 3 process starts of ~10-20 s each on 2 cores
def test_finetune_sigkill_at_random_points_then_resume_is_exact(parent, finetuned, tmp_path):
    ref, _ = finetuned
    workdir = tmp_path / "killed"
    code = ("import sys, json; from scaling.train import TrainConfig, run_training; "
            "r = run_training(TrainConfig.from_json(sys.argv[1]), sys.argv[2]); print(json.dumps(r.to_dict()))")
    args = [sys.executable, "-c", code, ft_config(parent[1], checkpoint_every_steps=2).to_json(), str(workdir)]
    kills = kill_at_random_steps(lambda **_: args, workdir, rounds=2, seed=5, gap=(1, 3))
    assert kills >= 1, "the fine-tune finished before it could be killed; make it longer"
    out = subprocess.run(args[:-2] + [ft_config(parent[1]).to_json(), str(workdir)], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["fingerprint"] == ref.fingerprint and result["heldout_loss"] == ref.heldout_loss
    rows = [json.loads(x) for x in (workdir / "indices-p0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert sorted(i for r in rows for i in r["index"]) == list(range(64))  # one epoch, each image once


def test_half_resolution_then_full_resolution_keeps_the_classifier_and_counts_each_stage(parent, tmp_path):
    """[M21]'s recipe: the 16 px parent fine-tuned on the same task at 24 px (2.25x the
    pixels) with its own classifier kept; each stage's compute at its own resolution."""
    from scaling.train.loop import final_params

    pre, parent_dir = parent
    cfg = ft_config(parent_dir, dataset=PRE_DATA, resolution=24, epochs=0.5, lr=0.05, reset_classifier=False,
                    trainable="classifier")
    ft = run_training(cfg, tmp_path / "m21")
    from scaling.models import registry
    from scaling.models.config import family_config

    counts = {r: registry.count(family_config(0.25, 0.03125, num_classes=10), r).flops for r in (16, 24)}
    assert (pre.flops_per_example, ft.flops_per_example) == (counts[16], counts[24])
    assert counts[24] > 2 * counts[16]
    assert ft.train_flops == pytest.approx(3 * ft.flops_per_example * ft.examples_seen)
    assert ft.params == pre.params
    # the kept classifier trained on from the parent's: it moved, but only a little
    theirs = leaves(final_params(parent_config(), parent_dir, name="parent"))["classifier/kernel"]
    mine = leaves(final_params(cfg, tmp_path / "m21", name="ft"))["classifier/kernel"]
    assert not np.array_equal(mine, theirs)
    assert np.linalg.norm(mine - theirs) < 0.5 * np.linalg.norm(theirs)


# ---- refusals: one BadInput line, before anything trains ---------------------------------


def test_unfinished_missing_or_foreign_parents_are_refused(parent, tmp_path):
    _, parent_dir = parent
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(parent_config().to_json())
    cases = [
        (ft_config(tmp_path / "nowhere"), "no run of parent"),
        (ft_config(unfinished), "has not finished"),
        (ft_config(parent_dir, parent_workdir=None), "parent_workdir"),
        (ft_config(parent_dir, model="vit-w16-d1-m32-h2-p4", depth_mult=None, width_mult=None),
         "is a vit model but parent"),
        (ft_config(parent_dir, width_mult=0.0625), "incompatible"),
        (ft_config(parent_dir, reset_classifier=False), "keep it only for the same classes"),
    ]
    for i, (cfg, words) in enumerate(cases):
        with pytest.raises(BadInput, match=words) as err:
            run_training(cfg, tmp_path / f"ft{i}")
        assert "\n" not in str(err.value)
        assert not (tmp_path / f"ft{i}").exists(), "a refused fine-tune left a workdir behind"


def test_a_diverged_parent_or_a_swapped_checkpoint_is_refused(parent, tmp_path):
    import shutil

    _, parent_dir = parent
    diverged = tmp_path / "diverged"
    shutil.copytree(parent_dir, diverged)
    result = json.loads((diverged / "result.json").read_text())
    (diverged / "result.json").write_text(json.dumps(dict(result, status="diverged")))
    with pytest.raises(BadInput, match="ended 'diverged'"):
        run_training(ft_config(diverged), tmp_path / "a")
    swapped = tmp_path / "swapped"
    shutil.copytree(parent_dir, swapped)
    (swapped / "config.json").write_text(parent_config(lr=0.4).to_json())  # another run's config
    with pytest.raises(BadInput, match="belongs to another run"):
        run_training(ft_config(swapped), tmp_path / "b")


def test_config_checks_of_the_finetune_fields():
    with pytest.raises(BadInput, match="trainable"):
        parent_config(trainable="top").validate()
    with pytest.raises(BadInput, match="only a fine-tune"):
        parent_config(trainable="classifier").validate()
    with pytest.raises(BadInput, match="sam_rho"):
        parent_config(sam_rho=-0.1).validate()
    with pytest.raises(BadInput, match="without parent_trial_id"):
        parent_config(parent_workdir="/tmp/x").validate()


# ---- pure pieces --------------------------------------------------------------------------


def test_transfer_adapts_input_channels_and_keeps_the_fresh_classifier():
    from scaling.train.finetune import transfer

    rng = np.random.default_rng(0)
    parent = {"stem": {"kernel": rng.normal(size=(3, 3, 3, 4))}, "classifier": {"kernel": np.ones((4, 10))}}
    fresh = {"stem": {"kernel": np.zeros((3, 3, 1, 4))}, "classifier": {"kernel": np.zeros((4, 5))}}
    out = transfer(parent, fresh, "p")
    # a gray image x fed to the parent as (x, x, x) gives the same pre-activation
    x = rng.normal(size=(3, 3))
    want = np.einsum("hw,hwco->o", x, parent["stem"]["kernel"])
    assert np.allclose(np.einsum("hw,hwo->o", x, out["stem"]["kernel"][:, :, 0]), want)
    assert np.array_equal(out["classifier"]["kernel"], fresh["classifier"]["kernel"])
    back = transfer({"stem": {"kernel": out["stem"]["kernel"]}, "classifier": {"kernel": np.ones((4, 5))}},
                    {"stem": {"kernel": np.zeros((3, 3, 3, 4))}, "classifier": {"kernel": np.zeros((4, 2))}}, "p")
    rgb = np.stack([x, x, x], axis=-1)
    assert np.allclose(np.einsum("hwc,hwco->o", rgb, back["stem"]["kernel"]), want)
    with pytest.raises(BadInput, match="incompatible"):
        transfer(parent, {"stem": {"kernel": np.zeros((5, 5, 3, 4))}, "classifier": {"kernel": np.zeros((4, 5))}}, "p")
    with pytest.raises(BadInput, match="only one of"):
        transfer(parent, {"other": {"kernel": np.zeros((3, 3, 3, 4))}, "classifier": {"kernel": np.zeros((4, 5))}},
                 "p")


def test_sam_direction_is_the_gradient_at_the_ascended_point():
    """optax's SAM wrapped around a plain recipe (no AGC effect, no decay, no momentum):
    the direction equals the gradient at params + rho * g / ||g||."""
    import jax
    import jax.numpy as jnp

    from scaling.optim import OptimConfig, make_recipe, with_sam

    def loss(p):
        return jnp.sum(p["w"] ** 4) + jnp.sum(p["b"] ** 2 * p["w"][:2])

    params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([1.0, 3.0])}
    recipe = with_sam(make_recipe(OptimConfig(momentum=0.0, nesterov=False, agc_clip=1e6, weight_decay=0.0)), 0.1)
    g = jax.grad(loss)(params)
    direction, _ = recipe.optimizer.update(g, recipe.optimizer.init(params), params,
                                           grad_fn=lambda p, _i: jax.grad(loss)(p))
    norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g)))
    ascended = jax.tree.map(lambda p, gi: p + 0.1 * gi / norm, params, g)
    want = jax.grad(loss)(ascended)
    for k in params:
        assert np.allclose(direction[k], want[k], rtol=1e-5)
        assert not np.allclose(direction[k], g[k])
