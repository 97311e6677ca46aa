"""A cheap, deterministic, checkpoint-resumable stand-in for `scaling.train.run_training`.

Store and queue tests use it through the worker's injectable trainer (worker
processes get it as `--trainer test_sweep_fakes:fake_trainer` with tests/ on
PYTHONPATH). Its held-out loss is a synthetic objective of (lr, epochs) with a known
best LR, so the LR extension can be checked; lr >= DIVERGE_LR diverges.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

FAKE = "test_sweep_fakes:fake_trainer"
DIVERGE_LR = 100.0
STEPS_PER_EPOCH = 4


def best_lr(config: dict) -> float:
    """The synthetic optimum: 1.6 at 1 epoch, falling with the epoch budget ([S23]'s trend)."""
    return 1.6 / config["epochs"]


def synthetic_loss(config: dict) -> float:
    return 1.0 + 0.1 * (math.log2(config["lr"]) - math.log2(best_lr(config))) ** 2 + 1.0 / config["epochs"]


def fake_trainer(config: dict, workdir: Path, *, on_metrics=None, on_heartbeat=None) -> dict:
    workdir = Path(workdir)
    state_file = workdir / "fake_state.json"
    steps = max(1, round(config["epochs"] * STEPS_PER_EPOCH))
    step = json.loads(state_file.read_text())["step"] if state_file.exists() else 0
    delay = float(os.environ.get("FAKE_STEP_SECONDS", "0.005"))
    loss = synthetic_loss(config)
    diverged = config["lr"] >= DIVERGE_LR
    while step < steps:
        time.sleep(delay)
        step += 1
        if on_metrics:
            on_metrics({"step": step, "examples_seen": step * config["batch_size"],
                        "train_loss": loss + 1.0 / step, "lr": config["lr"], "wall_time": step * delay})
        if on_heartbeat:  # right before the checkpoint, as scaling.train.loop does
            on_heartbeat()
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step}))
        tmp.replace(state_file)  # the "checkpoint": atomic, like orbax's
        if diverged:
            break
    if log := os.environ.get("FAKE_COMPLETIONS"):
        with open(log, "a") as f:  # one short O_APPEND write per completion
            f.write(json.dumps(config, sort_keys=True) + "\n")
    examples = step * config["batch_size"]
    return {"status": "diverged" if diverged else "done", "diverged_step": step if diverged else None,
            "heldout_loss": math.nan if diverged else loss, "heldout_accuracy": 0.5, "params": 1000,
            "flops_per_example": 6000.0, "train_flops": 18000.0 * examples, "device_seconds": steps * delay,
            "hardware": "cpu", "num_devices": 1, "examples_seen": examples, "compile_seconds": 0.0}


def test_fake_trainer_resumes_where_it_stopped(tmp_path):
    cfg = {"epochs": 1.0, "lr": 0.4, "batch_size": 8}
    seen = []
    first = fake_trainer(cfg, tmp_path, on_metrics=seen.append)
    again = fake_trainer(cfg, tmp_path, on_metrics=seen.append)
    assert [m["step"] for m in seen] == [1, 2, 3, 4]  # the second call had nothing left to do
    assert first == again and first["heldout_loss"] == synthetic_loss(cfg)
