"""`scaling demo`: its wiring (sweep -> store -> report -> plan), idempotence and resume.

The fast tests run the real command, the real sweep runner and its worker processes
on a tiny spec, with `law_trainer` below standing in for the trainer (the real
trainer's path through the runner is tested in tests/test_sweep_e2e.py and
test_sweep_chaos.py; the demo's real-trainer timing is in docs/demo.md). The stand-in's
loss follows a known Approach 3 law of the REAL parameter counts and examples, with a
known best learning rate, so the analysis has a law to find and the planner answers.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINER = "test_demo:law_trainer"

# A known L(N, D) = E + A/N^alpha + B/D^beta (the [H22] form; toy constants) plus a
# factor-2 lr penalty around BEST_LR, so every group's optimum is interior.
E, A, ALPHA, B, BETA, BEST_LR = 0.5, 40.0, 0.5, 60.0, 0.5, 0.4
HELD = (4.0, 0.8)  # (epochs, lr) of the trials the resume test interrupts (one per model)

SPEC = """
name = "demotest"
dataset = "procedural:classes=10,train_size=256,heldout=40,res=16"
num_classes = 10
train_examples = 256
heldout_examples = 40
batch_size = 16
resolution = 16
seeds = [0]
report_unit = "cpu-core-hours"

[recipe]
checkpoint_every_steps = 4

[grid]
depth_mults = [0.25, 0.5]
width_mults = [0.03125, 0.0625]
epochs = [1, 2, 4]
lr = { centre = 0.4, steps = 1 }

[lr_extension]
enabled = true
max_steps = 1
"""


def law_trainer(config: dict, workdir: Path, *, on_metrics=None, on_heartbeat=None) -> dict:
    """A resumable stand-in for `run_training` whose held-out loss follows a known law."""
    from scaling.models.config import get_config
    from scaling.models.counts import count

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    counts = count(get_config(config["model"], num_classes=10), config["resolution"])
    steps = round(config["epochs"] * 256 / config["batch_size"])
    state = workdir / "state.json"
    step = json.loads(state.read_text())["step"] if state.exists() else 0
    # While the file DEMO_TEST_HOLD names exists, the HELD trials stop after their first
    # step (inside the trainer, heartbeating), so a test can Ctrl-C workers mid-trial.
    hold = os.environ.get("DEMO_TEST_HOLD")
    while step < steps:
        step += 1
        if on_metrics:
            on_metrics({"step": step, "examples_seen": step * config["batch_size"], "train_loss": 2.0,
                        "lr": config["lr"], "wall_time": step * 0.01})
        if on_heartbeat:  # the trainer contract: a heartbeat right before each checkpoint save
            on_heartbeat()
        state.write_text(json.dumps({"step": step}))  # the "checkpoint"
        while hold and Path(hold).exists() and (config["epochs"], config["lr"]) == HELD:
            time.sleep(0.05)
            on_heartbeat()
    examples = steps * config["batch_size"]
    loss = (E + A / counts.params ** ALPHA + B / examples ** BETA
            + 0.02 * math.log2(config["lr"] / BEST_LR) ** 2)
    return {"status": "done", "diverged_step": None, "heldout_loss": loss, "heldout_accuracy": 0.5,
            "params": counts.params, "flops_per_example": float(counts.flops),
            "train_flops": 3.0 * counts.flops * examples, "device_seconds": 0.01 * steps, "hardware": "cpu",
            "num_devices": 1, "examples_seen": examples, "compile_seconds": 0.0}


def demo_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "study.cli", "demo", "--spec", str(tmp_path / "demotest.toml"),
            "--store", f"sqlite:///{tmp_path / 'results' / 'runs.db'}", "--out", str(tmp_path / "report"),
            "--workers", "2", "--trainer", TRAINER, "--resamples", "100", *extra]


def demo_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def statuses(tmp_path: Path) -> dict[str, int]:
    with sqlite3.connect(tmp_path / "results" / "runs.db") as db:
        return dict(db.execute("SELECT status, count(*) FROM trials WHERE sweep = 'demotest' GROUP BY status"))


def test_demo_end_to_end_with_ctrl_c_resume_and_a_rerun_that_trains_nothing(tmp_path):
    """One test, three runs (each run costs interpreter + worker start-ups): Ctrl-C a
    first run, resume it to a report and a plan, then run again and train nothing."""
    (tmp_path / "demotest.toml").write_text(SPEC)
    hold = tmp_path / "hold"
    hold.touch()
    proc = subprocess.Popen(demo_cmd(tmp_path), cwd=REPO, env=demo_env(DEMO_TEST_HOLD=str(hold)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and held_mid_trial(tmp_path) < 2:
        time.sleep(0.2)
    assert held_mid_trial(tmp_path) == 2, "both workers should be inside a held trial"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err[-3000:]
    assert "run `scaling demo` again to resume" in err
    left = statuses(tmp_path)
    assert left.get("running", 0) == 0 and 1 <= left.get("done", 0) <= 34  # handed back, not held
    assert left["pending"] == 36 - left["done"]

    first = subprocess.run(demo_cmd(tmp_path), cwd=REPO, env=demo_env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert f"training {36 - left['done']} trials" in first.stdout
    assert f"trained {36 - left['done']} trials" in first.stdout
    assert statuses(tmp_path) == {"done": 36}  # lr optimum interior everywhere: no extension
    report = tmp_path / "report" / "report.html"
    assert report.is_file() and f"report: {report}" in first.stdout
    for fig in ("loss_vs_compute", "optimal_lr", "optimal_size"):
        assert (tmp_path / "report" / f"{fig}.png").stat().st_size > 5000
    assert "EXTRAPOLATION" in first.stdout and "predicted held-out loss" in first.stdout
    assert (tmp_path / "results" / "trials" / "demotest").is_dir()  # workdirs next to the store

    second = subprocess.run(demo_cmd(tmp_path, "--json"), cwd=REPO, env=demo_env(), capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "nothing to train" in second.stderr
    out = json.loads(second.stdout)
    assert out["trained"] == 0 and out["trials"] == 36 and out["counts"]["done"] == 36
    with sqlite3.connect(tmp_path / "results" / "runs.db") as db:
        largest = db.execute("SELECT max(train_flops) FROM trials WHERE sweep = 'demotest'").fetchone()[0]
    plan = out["plan"]
    assert plan["budget"]["flops"] == pytest.approx(10 * largest, rel=1e-9)
    assert plan["extrapolated"] and plan["decades_outside"] == pytest.approx(1.0)
    # The stand-in's law is exact at every group's best lr, so the fitted Approach 3 law
    # must reproduce it at the recommended (N, D), and the lr trend must find BEST_LR.
    n, d = plan["recommended"]["params"], plan["examples"]
    assert plan["predicted_loss"] == pytest.approx(E + A / n ** ALPHA + B / d ** BETA, rel=0.01)
    assert plan["peak_lr"] == pytest.approx(BEST_LR, rel=0.3)
    # planner v2: shape on the sweep's ladder (or a warning), repetition, two-trial lr, converged refits
    assert {"shape", "repetition", "second_lr_trial"} <= set(plan)
    assert 0.25 <= plan["recommended"]["depth_mult"] <= 0.5 or \
        any(w.startswith("WARNING: shape extrapolation") for w in plan["warnings"])
    assert plan["repetition"]["law"] in ("plain", "data-constrained") and plan["second_lr_trial"]["stop_rule"]
    assert out["converged"]["fraction"] >= 0.99
    assert "bootstrap refits converged" in first.stdout and "lr in two trials" in first.stdout


def held_mid_trial(tmp_path: Path) -> int:
    """Running HELD trials that have written a metrics row (their worker is in the trainer)."""
    try:
        with sqlite3.connect(tmp_path / "results" / "runs.db") as db:
            return db.execute("SELECT count(*) FROM trials t WHERE status = 'running' AND epochs = ? AND lr = ? "
                              "AND EXISTS (SELECT 1 FROM metrics m WHERE m.trial_id = t.trial_id)", HELD).fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_bad_spec_exits_2_without_creating_a_store(tmp_path):
    (tmp_path / "demotest.toml").write_text(SPEC.replace("epochs = [1, 2, 4]", "epochs = [1, -2]"))
    out = subprocess.run(demo_cmd(tmp_path), cwd=REPO, env=demo_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1
    assert not (tmp_path / "results" / "runs.db").exists()


def test_the_convergence_line_says_why_when_no_refits_were_drawn():
    """Intervals withheld (too few points): the line gives the reason, never "nan%"."""
    from study.demo import _family_lines

    withheld = _family_lines({}, "", None, "no law", converged={"fraction": float("nan"), "resamples": 1000,
                                                               "withheld": "2 model sizes: alpha not identified"})
    assert withheld[0] == "compute-optimal fit: no intervals (2 model sizes: alpha not identified)"
    drawn = _family_lines({}, "", None, "no law", converged={"fraction": 0.995, "resamples": 1000, "withheld": ""})
    assert drawn[0] == "compute-optimal fit: 99.5% of 1000 bootstrap refits converged"
