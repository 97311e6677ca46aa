"""Real training runs shared by tests/test_models_effnetv2.py and test_models_g16.py: a
reference run, SIGKILL at random points then resume (bitwise), 4 simulated devices."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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


def env(**extra) -> dict:
    out = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_PROCESSES")}
    out.update(extra)
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference_run(model: str, workdir: Path):
    from scaling.train import run_training

    return run_training(config(model), workdir), workdir


def check_sigkill_resume(model: str, ref, tmp_path: Path) -> None:
    """Kill the CLI run twice or more at random steps, resume: params, optimizer state,
    step and held-out loss equal the uninterrupted run's bitwise."""
    workdir = tmp_path / "killed"
    rng = random.Random(7)
    kills, last = 0, 0
    for _ in range(3):
        proc = subprocess.Popen(cli(model, workdir, checkpoint_steps="2"), cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = last + rng.randint(1, 4)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            metrics = workdir / "metrics.jsonl"
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()
                     if x.strip().endswith("}")] if metrics.exists() else []
            if steps and steps[-1] >= target:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        last = target
    assert kills >= 2, "the run finished before it could be killed; make it longer"
    out = subprocess.run(cli(model, workdir), cwd=REPO, env=env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["fingerprint"] == ref.fingerprint
    assert result["heldout_loss"] == ref.heldout_loss
    assert [r["step"] for r in rows(workdir / "metrics.jsonl")] == list(range(1, ref.steps + 1))


def check_four_devices(model: str, ref, ref_dir: Path, tmp_path: Path) -> None:
    """The same run on 4 simulated CPU devices (batch split 4 ways) matches one device."""
    code = ("import json, sys; from scaling.train import TrainConfig, run_training; "
            "r = run_training(TrainConfig.from_json(sys.argv[1]), sys.argv[2]); print(json.dumps(r.to_dict()))")
    out = subprocess.run([sys.executable, "-c", code, config(model).to_json(), str(tmp_path)], cwd=REPO,
                         env=env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["num_devices"] == 4
    assert result["heldout_loss"] == pytest.approx(ref.heldout_loss, rel=1e-4)
    losses = [r["train_loss"] for r in rows(tmp_path / "metrics.jsonl")]
    assert losses == pytest.approx([r["train_loss"] for r in rows(ref_dir / "metrics.jsonl")], rel=1e-4)
