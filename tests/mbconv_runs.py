"""Real training runs shared by tests/test_models_effnetv2.py and test_models_g16.py: the
MBConv run (config and CLI) and its reference; the checks themselves (SIGKILL then resume,
4 simulated devices) are every family's, in tests/resume_helpers.py."""
from __future__ import annotations

import sys
from pathlib import Path

from resume_helpers import REPO, four_devices_match, sigkill_then_resume

CACHE = REPO / "results" / "test_jax_cache"
DATASET = "procedural:classes=10,train_size=64,heldout=37,res=16"


def config(model: str, **overrides):
    from scaling.train import TrainConfig

    base = dict(model=model, dataset=DATASET, epochs=2.0, lr=0.002, batch_size=8, resolution=16,
                eval_points=1, checkpoint_every_steps=4, compile_cache_dir=str(CACHE), log_indices=True)
    return TrainConfig(**{**base, **overrides})


def cli(model: str, workdir: Path, **extra: str) -> list[str]:
    args = [sys.executable, "-m", "study.cli", "train", "--model", model, "--dataset", DATASET, "--epochs", "2",
            "--lr", "0.002", "--batch", "8", "--resolution", "16", "--eval-points", "1",
            "--compile-cache", str(CACHE), "--log-indices", "--json", "--workdir", str(workdir)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


def reference_run(model: str, workdir: Path):
    from scaling.train import run_training

    return run_training(config(model), workdir), workdir


def check_sigkill_resume(model: str, ref, tmp_path: Path) -> None:
    """SIGKILL the CLI run at random steps, resume: bitwise equal to the reference run
    (tests/resume_helpers.py)."""
    workdir = tmp_path / "killed"
    sigkill_then_resume(lambda **extra: cli(model, workdir, **extra), workdir, ref, steps=ref.steps, wait_s=300)


def check_four_devices(model: str, ref, ref_dir: Path, tmp_path: Path) -> None:
    """The same run on 4 simulated CPU devices matches one device (tests/resume_helpers.py)."""
    four_devices_match(config(model), ref, ref_dir, tmp_path)
