"""`scaling analyze` / `scaling plan`: the report and its figures, JSON, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from analysis import synthetic


def run(*args):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    df = synthetic.make_runs(models=("F0", "F1", "F3", "F5"), epochs=(0.25, 1, 4), lr_grid=2.0 ** np.arange(-3, 3),
                             lr_curvature=0.05, noise=0.005)
    df.loc[df.index[-1], ["status", "heldout_loss"]] = ["diverged", np.nan]
    df.to_csv(path, index=False)
    return path


def test_analyze_writes_report_with_every_figure(csv, tmp_path):
    out = run("analyze", "--csv", str(csv), "--out", str(tmp_path), "--resamples", "50",
              "--unit", "tpu-v4-core-hours", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["approach3"]["params"]["alpha"] > 0 and set(summary["laws"]) == {"power", "offset"}
    html = (tmp_path / "report.html").read_text()
    for fig in ("loss_vs_compute", "optimal_lr", "optimal_size", "isoflop", "vit_comparison"):
        assert (tmp_path / f"{fig}.png").stat().st_size > 1000 and (tmp_path / f"{fig}.svg").exists()
        assert f"{fig}.png" in html
    assert "diverged" in html and "tpu-v4-core-hours" in html and "[S23]" in html


def test_plan_json(csv):
    out = run("plan", "--csv", str(csv), "--budget", "3e21", "--unit", "flops", "--json")
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    assert p["budget"]["flops"] == 3e21 and p["recommended"]["nearest_named"].startswith("F")
    assert p["steps"] > 0 and p["peak_lr"] > 0 and "h100-chip-hours" in p["budget"]["in_units"]
    assert p["shape"]["member"] == p["recommended"]["model"] and p["shape"]["source"] == "ladder"
    assert p["repetition"]["law"] in ("plain", "data-constrained") and p["repetition"]["why"]
    two = p["second_lr_trial"]
    assert two["first_lr"] == p["peak_lr"] and two["second_lr"] in (p["peak_lr"] / 2, p["peak_lr"] * 2)
    other = json.loads(run("plan", "--csv", str(csv), "--budget", "3e21", "--unit", "flops", "--json",
                           "--dataset-size", "1e12").stdout)
    assert other["dataset_size"] == 1e12 and other["epochs"] < p["epochs"]


@pytest.mark.parametrize("args,field", [
    (["plan", "--budget", "1", "--unit", "furlongs"], "unit"),
    (["plan", "--budget", "-5", "--unit", "flops"], "budget"),
    (["plan", "--budget", "1e40", "--unit", "flops"], "--budget"),
    (["analyze", "--csv", "/nonexistent.csv"], "--csv"),
    (["analyze", "--store", "sqlite:////nonexistent/runs.db"], "--store"),
    (["analyze", "--level", "2"], "--level"),
    (["plan", "--budget", "1e21", "--unit", "flops", "--dataset-size", "0"], "--dataset-size"),
])
def test_bad_input_exits_2_with_one_line(csv, args, field):
    if args[0] == "plan":
        args = [*args, "--csv", str(csv)]
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("error: ") and field in out.stderr and "Traceback" not in out.stderr


def test_all_diverged_exits_1_with_a_message_and_a_report(tmp_path):
    df = synthetic.make_runs(models=("F0",), epochs=(1,), lr_grid=[1.0, 2.0])
    df["status"], df["heldout_loss"] = "diverged", np.nan
    df.to_csv(tmp_path / "d.csv", index=False)
    out = run("analyze", "--csv", str(tmp_path / "d.csv"), "--out", str(tmp_path / "r"), "--resamples", "10")
    assert out.returncode == 1 and "nothing to analyse" in out.stderr and "Traceback" not in out.stderr
    assert "diverged" in (tmp_path / "r" / "report.html").read_text()


def test_few_points_warning_in_plan_and_analyze_output(tmp_path):
    """2 model sizes x 3 epoch budgets (the README's quick shape): one WARNING line naming the
    numbers and what to add, in `plan`'s and `analyze`'s output and the report's notes."""
    df = synthetic.make_runs(models=("F0", "F3"), epochs=(0.5, 1, 2), lr_grid=(0.8, 1.6, 3.2), lr_curvature=0.05)
    df.to_csv(tmp_path / "few.csv", index=False)
    out = run("plan", "--csv", str(tmp_path / "few.csv"), "--budget", "1e22", "--unit", "flops")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("WARNING: few points") and "2 model size(s) x 3 epoch budget(s)" in first
    assert "add 2 more model size(s)" in first and "interval withheld" in out.stdout
    out = run("analyze", "--csv", str(tmp_path / "few.csv"), "--out", str(tmp_path / "r"), "--resamples", "20")
    assert out.returncode == 0, out.stderr
    (warning,) = [line for line in out.stdout.splitlines() if line.startswith("WARNING:")]
    assert "2 model size(s) x 3 epoch budget(s)" in warning and "the frontier law rests on 6" in warning
    assert "WARNING: few points" in (tmp_path / "r" / "report.html").read_text()
