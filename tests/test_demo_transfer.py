"""`scaling demo --spec <a transfer spec>`: pre-training, fine-tunes of each cell's best
run, then the fine-tuned top-1 per cell, the top-1 law and the [S23] verdict printed and
in --json (a fake trainer with known losses and accuracies: no jax training)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from test_demo import demo_env

REPO = Path(__file__).resolve().parents[1]
TRAINER = "test_demo_transfer:transfer_trainer"
# Pre-training: L = E + A/N^alpha + B/D^beta with data weighing more than size, so at
# equal compute the smaller model trained longer has the lower loss; fine-tuned top-1
# grows with the parameter count only, so the larger model fine-tunes best: [S23]'s
# finding, planted (larger model, fewer epochs).
E, A, ALPHA, B, BETA, BEST_LR, BEST_FT_LR = 0.5, 2.0, 0.3, 400.0, 0.6, 0.4, 0.2

SPEC = """
name = "transfertest"
dataset = "procedural:classes=10,train_size=256,heldout=40,res=16"
num_classes = 10
train_examples = 256
heldout_examples = 40
batch_size = 16
resolution = 16
seeds = [0]
report_unit = "cpu-core-hours"

[grid]
depth_mults = [0.25]
width_mults = [0.03125, 0.0625, 0.125]
epochs = [1.0, 3.0]
lr = { centre = 0.4, steps = 1 }

[lr_extension]
enabled = true
max_steps = 1

[finetune]
dataset = "procedural:classes=5,train_size=64,heldout=2000,res=16,seed=7"
epochs = [2.0]  # as sweeps/specs/transfer.toml: not one of the pre-training budgets
lr = { centre = 0.2, steps = 1 }
parents = "best"
"""


def transfer_trainer(config: dict, workdir: Path, *, on_metrics=None, on_heartbeat=None) -> dict:
    from scaling.models.config import get_config
    from scaling.models.counts import count

    Path(workdir).mkdir(parents=True, exist_ok=True)
    tuned = bool(config.get("parent_trial_id"))
    counts = count(get_config(config["model"], num_classes=5 if tuned else 10), config["resolution"])
    examples = round(config["epochs"] * (64 if tuned else 256))
    if on_heartbeat:
        on_heartbeat()
    if tuned:
        acc = 1.0 - 3.0 * counts.params ** -0.25 - 0.05 * math.log2(config["lr"] / BEST_FT_LR) ** 2
        loss = 1.0 - acc
    else:
        loss = E + A / counts.params ** ALPHA + B / examples ** BETA + 0.02 * math.log2(config["lr"] / BEST_LR) ** 2
        acc = 0.3
    return {"status": "done", "diverged_step": None, "heldout_loss": loss, "heldout_accuracy": acc,
            "params": counts.params, "flops_per_example": float(counts.flops),
            "train_flops": 3.0 * counts.flops * examples, "device_seconds": 0.01, "hardware": "cpu",
            "num_devices": 1, "examples_seen": examples, "compile_seconds": 0.0,
            "stage": "finetune" if tuned else "pretrain"}


@pytest.mark.slow  # interpreter + 2 worker processes + shape tracing of the parents: ~30-60 s on 2 cores
def test_transfer_demo_prints_top1_per_cell_the_law_and_the_verdict(tmp_path):
    (tmp_path / "transfertest.toml").write_text(SPEC)
    cmd = [sys.executable, "-m", "study.cli", "demo", "--spec", str(tmp_path / "transfertest.toml"),
           "--store", f"sqlite:///{tmp_path / 'runs.db'}", "--out", str(tmp_path / "report"), "--workers", "2",
           "--trainer", TRAINER, "--resamples", "50"]
    text = subprocess.run(cmd, cwd=REPO, env=demo_env(), capture_output=True, text=True, timeout=600)
    assert "fine-tuning: 18 fine-tune runs of 6 parents" in text.stdout, text.stdout + text.stderr[-3000:]
    cells = [line for line in text.stdout.splitlines() if "-> top-1" in line]
    assert len(cells) == 6 and all("fine-tune lr 0.2" in line for line in cells)
    assert "top-1 error law (nfnet, vs pre-training compute)" in text.stdout
    assert "verdict: at equal pre-training compute, fine-tuned top-1 prefers a larger model and fewer epochs" \
        in text.stdout
    assert (tmp_path / "report" / "finetune_top1_vs_compute.png").exists()
    # the second run trains nothing and says the same as JSON
    again = subprocess.run([*cmd, "--json"], cwd=REPO, env=demo_env(), capture_output=True, text=True, timeout=600)
    d = json.loads(again.stdout)
    assert d["trained"] == 0 and d["finetune"]["parents"] == 6
    v = d["finetune"]["verdict"]
    assert (v["size"], v["epochs"], v["matches_paper"]) == ("larger", "fewer", True)
