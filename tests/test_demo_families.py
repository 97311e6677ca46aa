"""A sweep of two architecture families end to end: spec ([[grid]] per family) -> store
(the family column) -> analysis per family -> report with the comparison figure -> a plan
within each family and the crossover, through `scaling demo`.

As in tests/test_demo.py, the real command, runner and worker processes run on a tiny
spec and `family_law_trainer` stands in for the trainer: its held-out loss follows a known
law of the REAL parameter counts and examples, a different law per family."""
from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_demo import REPO, demo_env

TRAINER = "test_demo_families:family_law_trainer"
# (E, A, alpha, B, beta) per family; BEST_LR the optimum of every group.
LAWS = {"nfnet": (0.5, 40.0, 0.5, 60.0, 0.5), "vit": (0.3, 400.0, 0.6, 60.0, 0.5)}
BEST_LR = 0.4

SPEC = """
name = "familiestest"
dataset = "procedural:classes=10,train_size=256,heldout=40,res=16"
num_classes = 10
train_examples = 256
heldout_examples = 40
batch_size = 16
resolution = 16
seeds = [0]
report_unit = "cpu-core-hours"

[[grid]]
depth_mults = [0.25, 0.5]
width_mults = [0.03125, 0.0625]
epochs = [1, 2, 4]
lr = { centre = 0.4, steps = 1 }

[[grid]]
vit_widths = [32, 64]
vit_depths = [2, 4]
vit_patch_sizes = [4]
epochs = [1, 2, 4]
lr = { centre = 0.4, steps = 1 }
"""


def family_law_trainer(config: dict, workdir: Path, *, on_metrics=None, on_heartbeat=None) -> dict:
    from scaling.models import registry

    cfg = registry.get_config(config["model"], num_classes=10)
    family = registry.family_of(cfg).name
    counts = registry.count(cfg, config["resolution"])
    examples = round(config["epochs"] * 256 / config["batch_size"]) * config["batch_size"]
    e, a, alpha, b, beta = LAWS[family]
    loss = e + a / counts.params ** alpha + b / examples ** beta + 0.02 * math.log2(config["lr"] / BEST_LR) ** 2
    return {"status": "done", "diverged_step": None, "heldout_loss": loss, "heldout_accuracy": 0.5,
            "params": counts.params, "flops_per_example": float(counts.flops),
            "train_flops": 3.0 * counts.flops * examples, "device_seconds": 0.01, "hardware": "cpu",
            "num_devices": 1, "examples_seen": examples, "compile_seconds": 0.0}


def test_two_family_sweep_through_store_analysis_report_and_plans(tmp_path):
    from scaling.models.registry import family_name

    (tmp_path / "families.toml").write_text(SPEC)
    db = tmp_path / "results" / "runs.db"
    cmd = [sys.executable, "-m", "study.cli", "demo", "--spec", str(tmp_path / "families.toml"),
           "--store", f"sqlite:///{db}", "--out", str(tmp_path / "report"), "--workers", "2",
           "--trainer", TRAINER, "--resamples", "100"]
    env = demo_env()  # tests/ on the workers' path, for the stand-in trainer
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    out = first.stdout
    assert "family nfnet:" in out and "family vit:" in out and "crossovers (where two families'" in out
    assert "`scaling plan --extrapolate --family vit`" in out

    with sqlite3.connect(db) as con:
        assert dict(con.execute("SELECT family, count(*) FROM trials GROUP BY family")) == {"nfnet": 36, "vit": 36}

    report = tmp_path / "report"
    for fig in ("family_comparison", "loss_vs_compute_nfnet", "loss_vs_compute_vit", "optimal_size_vit",
                "vit_comparison"):
        assert (report / f"{fig}.png").stat().st_size > 5000, fig
    fits = json.loads((report / "fits.json").read_text())
    assert set(fits["families"]) == {"nfnet", "vit"} and len(fits["crossovers"]) == 1

    again = subprocess.run(cmd + ["--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0 and "nothing to train" in again.stderr, again.stderr[-3000:]
    d = json.loads(again.stdout)
    (x,) = d["crossovers"]
    assert x["families"] == ["nfnet", "vit"] and {"flops", "interval", "ahead_below", "ahead_above"} <= set(x)
    for family, f in d["families"].items():
        plan = f["plan"]
        assert plan["family"] == family and plan["recommended"]["model"]
        assert family_name(plan["recommended"]["model"]) == family  # never the other family's
        e, a, alpha, b, beta = LAWS[family]
        n, dd = plan["recommended"]["params"], plan["examples"]
        assert plan["predicted_loss"] == pytest.approx(e + a / n ** alpha + b / dd ** beta, rel=0.02)
