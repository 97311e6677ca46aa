"""Real training runs of a tiny NFNet family member on the procedural dataset.

One model shape everywhere (d0.25 w1/32, 16 px, batch 8) so that one compilation, kept
in a persistent cache shared by every process of the test session, serves all tests.
A 2-epoch reference run (16 steps over 64 examples) is made once per module; the other
runs (resumed after SIGKILL, corrupt checkpoint, 4 devices, 2 processes) are compared
with it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from scaling.train import TrainConfig, run_training
from resume_helpers import kill_at_random_steps

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "results" / "test_jax_cache"
DATASET = "procedural:classes=10,train_size=64,heldout=37,res=16"  # 37: last held-out batch padded
TRAIN_SIZE, BATCH = 64, 8


def tiny(**overrides) -> TrainConfig:
    base = dict(depth_mult=0.25, width_mult=0.03125, dataset=DATASET, epochs=2.0, lr=0.2,
                batch_size=BATCH, resolution=16, eval_points=1, checkpoint_every_steps=4,
                compile_cache_dir=str(CACHE), log_indices=True)
    return TrainConfig(**{**base, **overrides})


def cli_args(workdir: Path, **extra: str) -> list[str]:
    args = ["-m", "study.cli", "train", "--depth-mult", "0.25", "--width-mult", "0.03125",
            "--dataset", DATASET, "--epochs", "2", "--lr", "0.2", "--batch", str(BATCH),
            "--resolution", "16", "--eval-points", "1", "--compile-cache", str(CACHE),
            "--log-indices", "--json", "--workdir", str(workdir)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return [sys.executable, *args]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_PROCESSES")}
    env.update(extra)
    return env


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_each_example_once_per_epoch(workdir: Path, steps: int) -> None:
    rows = read_jsonl(workdir / "indices-p0.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    per_epoch = TRAIN_SIZE // BATCH
    for epoch in range(steps // per_epoch):
        seen = sorted(i for r in rows[epoch * per_epoch:(epoch + 1) * per_epoch] for i in r["index"])
        assert seen == list(range(TRAIN_SIZE)), f"epoch {epoch} is not a permutation of the dataset"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every other run is compared with."""
    workdir = tmp_path_factory.mktemp("reference")
    rows, beats = [], []
    result = run_training(tiny(), workdir, on_metrics=rows.append, on_heartbeat=lambda: beats.append(1))
    return result, workdir, rows, beats


def test_reference_run_reports_everything(reference):
    result, workdir, rows, beats = reference
    from scaling.models.config import family_config
    from scaling.models.counts import count

    counts = count(family_config(0.25, 0.03125, num_classes=10), 16)
    assert result.status == "done" and result.diverged_step is None
    assert result.steps == result.total_steps == 2 * TRAIN_SIZE // BATCH
    assert result.examples_seen == 2 * TRAIN_SIZE
    assert result.params == counts.params
    assert result.flops_per_example == counts.flops
    assert result.train_flops == 3 * counts.flops * result.examples_seen
    assert result.device_seconds > 0 and result.compile_seconds >= 0
    assert result.measured_unit == "cpu-core-hours" and result.measured_hours > 0
    assert 0 < result.achieved_utilization < 1
    assert 0 < result.heldout_loss < 10 and 0 <= result.heldout_accuracy <= 1
    # Callbacks: a row per step, evaluations at the middle and the end, heartbeats.
    assert [r["step"] for r in rows] == list(range(1, 17))
    evaluated = [r["step"] for r in rows if "heldout_loss" in r]
    assert evaluated == [8, 16]
    assert rows[-1]["heldout_loss"] == result.heldout_loss
    assert beats
    assert read_jsonl(workdir / "metrics.jsonl") == rows
    assert_each_example_once_per_epoch(workdir, 16)
    # A finished workdir returns its stored result instead of training again.
    assert run_training(tiny(), workdir) == result


def test_one_compilation_serves_every_lr_and_budget(reference, tmp_path):
    from scaling.train import step

    before = step.TRACE_COUNT["train"]
    a = run_training(tiny(lr=0.05, epochs=0.5, eval_points=0), tmp_path / "a")
    b = run_training(tiny(lr=3.2, epochs=1.5, eval_points=0), tmp_path / "b")
    assert step.TRACE_COUNT["train"] == before  # the reference run's trace served both
    assert (a.total_steps, b.total_steps) == (4, 12)
    assert a.compile_seconds == 0.0 and b.compile_seconds == 0.0
    assert a.heldout_loss != b.heldout_loss  # they did train differently


def test_workdir_of_another_config_is_refused(reference):
    from scaling.errors import BadInput

    _, workdir, _, _ = reference
    before = (workdir / "config.json").read_bytes()
    with pytest.raises(BadInput, match="^workdir: .*lr"):
        run_training(tiny(lr=0.3), workdir)
    assert (workdir / "config.json").read_bytes() == before


def test_non_finite_loss_ends_as_diverged(tmp_path):
    result = run_training(tiny(lr=1e30, eval_points=0), tmp_path)
    assert result.status == "diverged"
    assert 1 <= result.diverged_step <= result.total_steps
    assert result.heldout_loss is None
    # The loop reads each loss one step late (loop.py "Hot path"): it stops at most one
    # update after the non-finite one, and never checkpoints a state from after it.
    assert result.diverged_step <= result.steps <= result.diverged_step + 1
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert all(s < result.diverged_step for s in saved)
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "diverged"


def _flip_array_bytes(checkpoint: Path) -> int:
    damaged = 0
    for f in (checkpoint / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # ocdbt data files: the arrays
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF
            f.write_bytes(bytes(data))
            damaged += 1
    return damaged


def test_corrupt_latest_checkpoint_is_skipped(reference, tmp_path):
    """Damage the newest checkpoint's array data and leave a half-written one beside it:
    the run warns, falls back to the previous checkpoint and still ends bitwise equal."""
    import shutil

    ref, ref_dir, _, _ = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    (workdir / "result.json").unlink()
    assert _flip_array_bytes(workdir / "checkpoints" / "16")
    # Also the leftovers of a save killed half-way (orbax's temporary directory).
    partial = workdir / "checkpoints" / "20.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\0" * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_training(tiny(), workdir)
    assert any("checkpoint at step 16" in str(w.message) and "damaged" in str(w.message) for w in caught)
    assert (workdir / "checkpoints_bad").is_dir()
    assert result.fingerprint == ref.fingerprint
    assert result.heldout_loss == ref.heldout_loss
    assert_each_example_once_per_epoch(workdir, 16)


def test_every_checkpoint_damaged_starts_over_cleanly(reference, tmp_path):
    """When no checkpoint passes its check, the run starts over with EVERYTHING reset
    (the data iterator was once restored in place from a damaged checkpoint, so a fresh
    model trained on a stream positioned mid-epoch: another loss, examples seen 1-3 times)."""
    import shutil

    ref, ref_dir, _, _ = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    (workdir / "result.json").unlink()
    steps = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) >= 2 and all(_flip_array_bytes(p) for p in steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_training(tiny(), workdir)
    messages = [str(w.message) for w in caught]
    assert sum(") is damaged (" in m or " is damaged (" in m for m in messages) == len(steps)
    assert any("starting over from step 0" in m for m in messages)
    assert result.fingerprint == ref.fingerprint and result.heldout_loss == ref.heldout_loss
    assert_each_example_once_per_epoch(workdir, 16)


def test_a_checkpoint_of_another_run_is_set_aside(reference, tmp_path):
    """Same shape, other learning rate: the fingerprint verifies (integrity), but the
    checkpoint is bound to its run's identity, so it is set aside, not resumed from."""
    import shutil

    _, ref_dir, _, _ = reference
    fresh = run_training(tiny(lr=0.4), tmp_path / "fresh")
    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copytree(ref_dir / "checkpoints", workdir / "checkpoints")  # from the lr=0.2 run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_training(tiny(lr=0.4), workdir)
    assert any("belongs to another run" in str(w.message) for w in caught)
    assert any((workdir / "checkpoints_foreign").iterdir())
    assert result.fingerprint == fresh.fingerprint and result.heldout_loss == fresh.heldout_loss
    assert_each_example_once_per_epoch(workdir, 16)


@pytest.mark.slow  # ~4 process starts of ~10-20 s each (imports, cached compile) on 2 cores
def test_sigkill_at_random_points_then_resume_is_exact(reference, tmp_path):
    ref, _, _, _ = reference
    workdir = tmp_path / "killed"
    kills = kill_at_random_steps(lambda **extra: cli_args(workdir, **extra), workdir, rounds=3, seed=4)
    assert kills >= 2, "the run finished before it could be killed; make it longer"
    assert not (workdir / "result.json").exists()
    out = subprocess.run(cli_args(workdir), cwd=REPO, env=clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["fingerprint"] == ref.fingerprint  # bitwise: params, optimizer state, step
    assert result["heldout_loss"] == ref.heldout_loss
    assert result["examples_seen"] == ref.examples_seen
    assert_each_example_once_per_epoch(workdir, 16)
    assert [r["step"] for r in read_jsonl(workdir / "metrics.jsonl")] == list(range(1, 17))


def _train_losses(workdir: Path) -> list[float]:
    return [r["train_loss"] for r in read_jsonl(workdir / "metrics.jsonl")]


@pytest.mark.slow  # compiles the 4-device program (~20-40 s on 2 cores, cached afterwards)
def test_four_simulated_devices_match_one(reference, tmp_path):
    ref, ref_dir, _, _ = reference
    code = ("import json, sys; from scaling.train import TrainConfig, run_training; "
            "r = run_training(TrainConfig.from_json(sys.argv[1]), sys.argv[2]); print(json.dumps(r.to_dict()))")
    env = clean_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", code, tiny().to_json(), str(tmp_path)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["num_devices"] == 4
    assert result["heldout_loss"] == pytest.approx(ref.heldout_loss, rel=1e-4)
    assert _train_losses(tmp_path) == pytest.approx(_train_losses(ref_dir), rel=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes: ~3 s per step on 2 loaded cores (gloo), ~60 s in all
def test_two_processes_train_together(reference, tmp_path):
    """One epoch (8 steps) on 2 processes x 1 CPU device against the same run on one."""
    one = run_training(tiny(epochs=1.0, eval_points=0), tmp_path / "one")
    port = _free_port()
    args = cli_args(tmp_path / "two")
    args[args.index("--epochs") + 1], args[args.index("--eval-points") + 1] = "1", "0"
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=clean_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                       JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    # (gloo prints a connection line to stdout from C++ before the JSON)
    result = json.loads(outs[0][0][outs[0][0].index("{"):])
    assert "{" not in outs[1][0]  # only process 0 reports
    assert result["num_devices"] == 2 and result["steps"] == one.steps == 8
    assert result["heldout_loss"] == pytest.approx(one.heldout_loss, rel=1e-4)
    assert _train_losses(tmp_path / "two") == pytest.approx(_train_losses(tmp_path / "one"), rel=1e-4)
    # Each process logged its own half of every global batch; together: each example
    # exactly once in the epoch.
    halves = [read_jsonl(tmp_path / "two" / f"indices-p{i}.jsonl") for i in range(2)]
    assert all(len(rows) == 8 and all(len(r["index"]) == BATCH // 2 for r in rows) for rows in halves)
    assert sorted(i for rows in halves for r in rows for i in r["index"]) == list(range(TRAIN_SIZE))


# ---------------------------------------------------------------- the CLI, in process


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`scaling train ...` in this process (reusing its compiled step)."""
    from study.cli import main

    try:
        rc = main(["train", *args])
    except SystemExit as exit_:
        rc = exit_.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def common_cli(workdir: Path) -> list[str]:
    return cli_args(workdir)[4:]  # drop python -m study.cli train


def test_cli_epoch_budget_writes_metrics_and_reports(reference, tmp_path, capsys):
    args = [a for a in common_cli(tmp_path) if a != "--json"] + ["--tensorboard"]
    pytest.importorskip("tensorboardX")
    rc, out, err = run_cli(capsys, *args)
    assert rc == 0, err
    for needle in ("analytic", "training FLOPs", "device-seconds", "cpu-core-hours", "utilisation"):
        assert needle in out
    assert "step/s" in err or "it/s" in err or "/16" in err  # the tqdm bar went to stderr
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert any((tmp_path / "tensorboard").iterdir())


def test_cli_tpu_v4_core_hour_budget(reference, tmp_path, capsys):
    from scaling import units

    ref, _, _, _ = reference
    budget = 2e-10  # v4 core-hours: about 17 steps of this tiny model at batch 8
    args = [a for a in common_cli(tmp_path) if a not in ("--epochs", "2")]
    rc, out, err = run_cli(capsys, *args, "--budget", str(budget), "--unit", "tpu-v4-core-hours")
    assert rc == 0, err
    result = json.loads(out)
    per_example = ref.train_flops / ref.examples_seen
    flops = units.to_flops(budget, "tpu-v4-core-hours")
    assert result["total_steps"] == round(flops / per_example / BATCH)
    assert result["unit"] == "tpu-v4-core-hours"
    assert result["hours"] == pytest.approx(budget, rel=BATCH * per_example / flops)
    assert result["measured_unit"] == "cpu-core-hours"


@pytest.mark.parametrize("args, field", [
    (["--lr", "-1"], "lr"),
    (["--budget", "1", "--unit", "tpu-v4-core-hour"], "epochs"),  # --epochs given too
    (["--batch", "0"], "batch_size"),
    (["--optimizer", "{not json"], "optimizer"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, args, field):
    base = [a for a in common_cli(tmp_path)]
    rc, out, err = run_cli(capsys, *base, *args)
    assert rc == 2
    assert err.startswith(f"error: {field}:") and err.count("\n") == 1
    assert not (tmp_path / "config.json").exists()


def test_cli_unknown_unit_exits_2_in_a_real_process(tmp_path):
    args = [a for a in cli_args(tmp_path) if a not in ("--epochs", "2")]
    out = subprocess.run([*args, "--budget", "1", "--unit", "tpu-v4-core-hour"], cwd=REPO,
                         env=clean_env(), capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: unit:") and "did you mean 'tpu-v4-core-hours'" in out.stderr


# ------------------------------------------------------- evaluation and checkpoint cadence


def test_heldout_loss_is_exact_under_padding(reference):
    """The reference evaluated 37 examples in batches of 8 (last one padded); one unpadded
    batch of all 37 with the final params gives the same mean up to float rounding."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from scaling.data import get_dataset, heldout_batches
    from scaling.models.config import family_config
    from scaling.models.nfnet import NFNet

    ref, workdir, _, _ = reference
    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "16" / "state")
    ds = get_dataset(DATASET)
    (batch,) = list(heldout_batches(ds, batch_size=37, resolution=16))
    assert batch["mask"].all()
    model = NFNet(family_config(0.25, 0.03125, num_classes=10))
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))  # one compile
    logits = forward(state["params"], batch["image"])
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)))
    loss = -logp[np.arange(37), batch["label"]].mean()
    assert ref.heldout_loss == pytest.approx(loss, rel=1e-5)
    assert ref.heldout_accuracy == pytest.approx((np.argmax(logp, 1) == batch["label"]).mean())


def test_checkpoint_due_every_n_steps_or_m_minutes(tmp_path):
    from scaling.train.checkpoint import RunCheckpoints

    by_steps = RunCheckpoints(tmp_path / "a", every_steps=5, every_minutes=60)
    assert [s for s in range(1, 13) if by_steps.due(s, total_steps=12)] == [5, 10, 12]
    by_time = RunCheckpoints(tmp_path / "b", every_steps=1000, every_minutes=0.5 / 60)
    assert not by_time.due(1, total_steps=100)
    time.sleep(0.6)
    assert by_time.due(2, total_steps=100)
