"""Augmented training runs on a grayscale (Fashion-MNIST-format) fixture: bitwise resume
after SIGKILL, every example once per epoch, 1-channel models and counts.

The same pattern as tests/test_train_run.py (whose procedural runs use the default
augmentation), here with a NON-default augmentation (`crop_pad = 3`, zero padding,
flip) and one input channel: d0.25 w1/32 at 28 px, batch 8, 64 training / 37 held-out
images, so one compilation (kept in the shared test cache) serves every run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from resume_helpers import read_jsonl, sigkill_then_resume
from test_data_fashion import write_fixture
from test_train_run import CACHE

from scaling.train import TrainConfig, run_training

AUGMENT = {"crop_pad": 3, "pad_mode": "zero", "flip": True}
TRAIN_SIZE, BATCH, STEPS = 64, 8, 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    directory = write_fixture(tmp_path_factory.mktemp("fashion") / "fm")
    return f"fashion-mnist:dir={directory},verify=false"


def config(dataset: str, **overrides) -> TrainConfig:
    base = dict(depth_mult=0.25, width_mult=0.03125, dataset=dataset, epochs=2.0, lr=0.2, batch_size=BATCH,
                eval_points=1, checkpoint_every_steps=4, compile_cache_dir=str(CACHE), log_indices=True,
                augment=AUGMENT)
    return TrainConfig(**{**base, **overrides})


def cli_args(dataset: str, workdir: Path, **extra: str) -> list[str]:
    args = ["-m", "study.cli", "train", "--depth-mult", "0.25", "--width-mult", "0.03125", "--dataset", dataset,
            "--epochs", "2", "--lr", "0.2", "--batch", str(BATCH), "--eval-points", "1",
            "--compile-cache", str(CACHE), "--augment", json.dumps(AUGMENT), "--log-indices", "--json",
            "--workdir", str(workdir)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return [sys.executable, *args]


def assert_each_example_once_per_epoch(workdir: Path) -> None:
    rows = read_jsonl(workdir / "indices-p0.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    per_epoch = TRAIN_SIZE // BATCH
    for epoch in range(STEPS // per_epoch):
        seen = sorted(i for r in rows[epoch * per_epoch:(epoch + 1) * per_epoch] for i in r["index"])
        assert seen == list(range(TRAIN_SIZE)), f"epoch {epoch} is not a permutation of the dataset"


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("aug-reference")
    return run_training(config(dataset), workdir), workdir


def test_augmented_grayscale_run_reports_one_channel_counts(reference):
    from scaling.models.config import family_config
    from scaling.models.counts import count

    result, workdir = reference
    counts = count(family_config(0.25, 0.03125, num_classes=10), 28, channels=1)
    assert result.status == "done" and result.steps == STEPS
    assert (result.params, result.flops_per_example) == (counts.params, counts.flops)
    assert result.params < count(family_config(0.25, 0.03125, num_classes=10), 28).params
    assert json.loads((workdir / "config.json").read_text())["augment"] == AUGMENT
    assert_each_example_once_per_epoch(workdir)


def test_augmentation_changes_the_run_and_the_config_is_bound_to_it(dataset, reference, tmp_path):
    from scaling.errors import BadInput

    ref, workdir = reference
    plain = run_training(config(dataset, augment={"crop_pad": 0, "flip": False}, log_indices=False), tmp_path)
    assert plain.fingerprint != ref.fingerprint  # the augmentation reached the training batches
    assert plain.examples_seen == ref.examples_seen
    with pytest.raises(BadInput, match="^workdir: .*augment"):
        run_training(config(dataset, augment={"crop_pad": 2}), workdir)


@pytest.mark.slow  # ~4 process starts of ~10-20 s each (imports, cached compile) on 2 cores
def test_augmented_run_killed_at_random_points_resumes_bitwise(dataset, reference, tmp_path):
    ref, _ = reference
    workdir = tmp_path / "killed"
    result = sigkill_then_resume(lambda **extra: cli_args(dataset, workdir, **extra), workdir, ref, steps=STEPS)
    assert result["examples_seen"] == ref.examples_seen  # params, optimizer state, step: the helper's check
    assert_each_example_once_per_epoch(workdir)
