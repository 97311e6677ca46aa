"""`scaling train`'s fine-tune and progressive flags: --parent-workdir/--parent-trial-id,
--trainable, --keep-classifier, --sam-rho, --progressive.

One real fine-tune from a finished workdir (tests/test_finetune.py's tiny parent and its
head-only 5-class program, so the persistent cache serves both); the other tests check
what the flags put in the run's config (run_training replaced) and that bad values exit
2 with one line and no workdir.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaling.train import TrainConfig, run_training

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "results" / "test_jax_cache"
PRE_DATA = "procedural:classes=10,train_size=64,heldout=37,res=16"
DOWN_DATA = "procedural:classes=5,train_size=64,heldout=37,res=16,seed=7"


def parent_config() -> TrainConfig:
    return TrainConfig(depth_mult=0.25, width_mult=0.03125, dataset=PRE_DATA, epochs=2.0, lr=0.2, batch_size=8,
                       resolution=16, checkpoint_every_steps=4, compile_cache_dir=str(CACHE))


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("parent")
    return run_training(parent_config(), workdir), workdir


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from study.cli import main

    try:
        rc = main(["train", *args])
    except SystemExit as exit_:
        rc = exit_.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def down_args(workdir: Path, *extra: str) -> list[str]:
    return ["--dataset", DOWN_DATA, "--epochs", "1", "--lr", "0.1", "--batch", "8", "--resolution", "16",
            "--checkpoint-steps", "4", "--compile-cache", str(CACHE), "--json", "--workdir", str(workdir), *extra]


@pytest.fixture
def captured(monkeypatch):
    """run_training replaced: the config the command built, nothing trained."""
    import scaling.train as train_pkg

    seen = {}

    def fake(config, workdir, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(train_pkg, "run_training", fake)
    return seen


def test_finetune_from_a_finished_workdir_takes_its_model_and_names_it(parent, tmp_path, capsys):
    from scaling.train.config import identity_hash

    pre, parent_dir = parent
    rc, out, err = run_cli(capsys, *down_args(tmp_path / "ft", "--parent-workdir", str(parent_dir),
                                                "--trainable", "classifier"))
    assert rc == 0, err
    result = json.loads(out)
    assert result["stage"] == "finetune" and result["model"] == pre.model
    assert result["parent_trial_id"] == identity_hash(parent_config())  # the parent's identity, by default
    stored = TrainConfig.from_json((tmp_path / "ft" / "config.json").read_text())
    assert (stored.trainable, stored.parent_workdir) == ("classifier", str(parent_dir))


def test_flags_reach_the_config(parent, tmp_path, capsys, captured):
    _, parent_dir = parent
    rc, _, err = run_cli(capsys, *down_args(tmp_path / "ft", "--parent-workdir", str(parent_dir),
                                            "--parent-trial-id", "pre-7", "--sam-rho", "0.05",
                                            "--keep-classifier", "--progressive", '{"stages": 3, "min_resolution": 8}'))
    assert rc == 0, err
    cfg = captured["config"]
    assert (cfg.parent_trial_id, cfg.sam_rho, cfg.reset_classifier) == ("pre-7", 0.05, False)
    assert (cfg.depth_mult, cfg.width_mult) == (0.25, 0.03125)  # the parent's network
    assert cfg.progressive == {"stages": 3, "min_resolution": 8}


def test_progressive_takes_a_bare_number_of_stages(tmp_path, capsys, captured):
    rc, _, err = run_cli(capsys, *down_args(tmp_path / "p", "--depth-mult", "0.25", "--width-mult", "0.03125",
                                            "--progressive", "4"))
    assert rc == 0, err
    assert captured["config"].progressive == {"stages": 4} and captured["config"].parent_trial_id is None


@pytest.mark.parametrize("extra, start", [
    (["--progressive", "{stages"], "progressive: '{stages' is not JSON"),
    (["--progressive", "[4]"], "progressive: '[4]' is neither"),
    (["--progressive", "1"], "progressive.stages: 1 is not"),
    (["--progressive", '{"min_resolution": 32}'], "progressive.min_resolution: 32 px is not below"),
    (["--sam-rho", "-0.1"], "sam_rho: must be"),
    (["--sam-rho", "2"], "sam_rho: must be"),
    (["--trainable", "head"], "trainable: 'head' is not one of"),
    (["--trainable", "classifier"], "trainable: only a fine-tune run"),  # no parent
    (["--keep-classifier"], "reset_classifier: only a fine-tune run"),
    (["--parent-workdir", "__nowhere__"], "parent_workdir: "),
    (["--parent-trial-id", "x" * 65], "parent_trial_id: must be 1 to 64"),
])
def test_bad_values_exit_2_with_one_line_and_no_workdir(tmp_path, capsys, extra, start):
    workdir = tmp_path / "w"
    rc, _, err = run_cli(capsys, *down_args(workdir, "--depth-mult", "0.25", "--width-mult", "0.03125", *extra))
    assert rc == 2
    assert err.startswith(f"error: {start}") and err.count("\n") == 1, err
    assert not workdir.exists()


def test_a_parent_that_did_not_finish_exits_2(parent, tmp_path, capsys):
    unfinished = tmp_path / "half"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(parent_config().to_json())
    rc, _, err = run_cli(capsys, *down_args(tmp_path / "ft", "--parent-workdir", str(unfinished)))
    assert rc == 2 and "has not finished" in err and err.count("\n") == 1
    assert not (tmp_path / "ft").exists()
