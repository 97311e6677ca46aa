"""Checks that a real training run equals its uninterrupted reference, shared by the
tests of every family's runs (NFNet with augmentation, ViT, CoAtNet, EfficientNetV2,
G16-EfficientNet): SIGKILL at random steps then resume (bitwise), and the same run on 4
simulated CPU devices (to float tolerance).

Written once here so that every family is held to the same check; each test file only
says how to start its run (`command(**extra)` -> the `scaling train` argv for one
workdir, `extra` being CLI options such as checkpoint_steps="2")."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict:
    """This process's environment without the device-count and multi-process settings a
    test may have set, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_PROCESSES")}
    env.update(extra)
    return env


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _logged_steps(workdir: Path) -> list[int]:
    """Steps in metrics.jsonl so far (a line being written is skipped)."""
    metrics = workdir / "metrics.jsonl"
    if not metrics.exists():
        return []
    return [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip().endswith("}")]


def kill_at_random_steps(command: Callable[..., list[str]], workdir: Path, *, rounds: int = 3, seed: int = 7,
                         wait_s: float = 240, gap: tuple[int, int] = (1, 4)) -> int:
    """Start the run `rounds` times (checkpointing every 2 steps), each time SIGKILL it a
    random `gap` (1-4) steps after the previous kill's target (plus up to 0.3 s, so some
    kills land mid-checkpoint); returns how many runs were killed (a run that ends on its
    own is not)."""
    rng = random.Random(seed)
    kills, last = 0, 0
    for _ in range(rounds):
        proc = subprocess.Popen(command(checkpoint_steps="2"), cwd=REPO, env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = last + rng.randint(*gap)
        deadline = time.monotonic() + wait_s
        while proc.poll() is None and time.monotonic() < deadline:
            steps = _logged_steps(workdir)
            if steps and steps[-1] >= target:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        last = target
    return kills


def sigkill_then_resume(command: Callable[..., list[str]], workdir: Path, ref, *, steps: int,
                        wait_s: float = 240) -> dict:
    """Kill the CLI run at least twice at random steps, then let it resume to the end: its
    fingerprint (params, optimizer state, step) and held-out loss equal the uninterrupted
    reference run's bitwise, and every step is logged exactly once. Returns the resumed
    run's JSON result for the caller's own checks."""
    kills = kill_at_random_steps(command, workdir, wait_s=wait_s)
    assert kills >= 2, "the run finished before it could be killed; make it longer"
    assert not (workdir / "result.json").exists()  # what is resumed is an unfinished run
    out = subprocess.run(command(), cwd=REPO, env=clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["fingerprint"] == ref.fingerprint
    assert result["heldout_loss"] == ref.heldout_loss
    assert [r["step"] for r in read_jsonl(workdir / "metrics.jsonl")] == list(range(1, steps + 1))
    return result


def four_devices_match(config, ref, ref_dir: Path, workdir: Path, *, timeout: float = 600) -> dict:
    """The same run (a TrainConfig) on 4 simulated CPU devices, the batch split 4 ways:
    held-out loss and every logged training loss equal the one-device reference's to
    1e-4 (float32 reductions in another order). Returns the 4-device result."""
    code = ("import json, sys; from scaling.train import TrainConfig, run_training; "
            "r = run_training(TrainConfig.from_json(sys.argv[1]), sys.argv[2]); print(json.dumps(r.to_dict()))")
    out = subprocess.run([sys.executable, "-c", code, config.to_json(), str(workdir)], cwd=REPO,
                         env=clean_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["num_devices"] == 4
    assert result["heldout_loss"] == pytest.approx(ref.heldout_loss, rel=1e-4)
    losses = [r["train_loss"] for r in read_jsonl(workdir / "metrics.jsonl")]
    assert losses == pytest.approx([r["train_loss"] for r in read_jsonl(ref_dir / "metrics.jsonl")], rel=1e-4)
    return result
