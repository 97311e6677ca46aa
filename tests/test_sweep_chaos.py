"""Sweeps with the REAL trainer (tiny NFNet, procedural data): end to end, chaos, multi-host.

One model shape throughout (d0.25 w1/32, 16 px, batch 8, 10 classes), the one
tests/test_train_run.py compiles, with the same persistent compilation cache, so each
new process loads its compiled step instead of compiling (~15-20 s per process start
on a loaded 2-core machine rather than ~90 s).
"""
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

from sweeps.store import Store

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "results" / "test_jax_cache"  # shared with tests/test_train_run.py
TRAIN_SIZE, BATCH = 64, 8


def spec_file(tmp_path: Path, *, epochs="[0.5]", lr="[0.1, 0.2]", extension=True, name="smoke",
              seeds="[0]") -> Path:
    """The bundled smoke spec with the shared compile cache (and optionally another grid)."""
    text = (REPO / "sweeps" / "specs" / "smoke.toml").read_text()
    text = text.replace("[recipe]\n", f'[recipe]\ncompile_cache_dir = "{CACHE}"\nlog_indices = true\n')
    text = text.replace("epochs = [0.5]", f"epochs = {epochs}").replace("lr = [0.1, 0.2]", f"lr = {lr}")
    text = text.replace('name = "smoke"', f'name = "{name}"').replace("seeds = [0]", f"seeds = {seeds}")
    if not extension:
        text = text.replace("enabled = true", "enabled = false")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_PROCESSES")}
    e.update(extra)
    return e


def each_example_once_per_epoch(workdir: Path, steps: int, processes: int = 1) -> None:
    logs = [[json.loads(x) for x in (workdir / f"indices-p{i}.jsonl").read_text().splitlines()]
            for i in range(processes)]
    for rows in logs:
        assert [r["step"] for r in rows] == list(range(1, steps + 1))
    per_epoch = TRAIN_SIZE // BATCH
    for epoch in range(max(1, steps // per_epoch)):
        seen = sorted(i for rows in logs for r in rows[epoch * per_epoch:(epoch + 1) * per_epoch] for i in r["index"])
        expect = list(range(TRAIN_SIZE)) if steps >= per_epoch else None
        if expect is not None:
            assert seen == expect, f"epoch {epoch} is not a permutation of the dataset"
        else:  # a fraction of an epoch: no example twice
            assert len(seen) == len(set(seen)) == steps * BATCH


@pytest.mark.slow  # ~5 worker process starts (~20 s each, cached compile) and 12 real 4-step trials
def test_sigkill_chaos_with_the_real_trainer(tmp_path):
    """Kill workers at random points of a 12-trial sweep, restart them; every trial ends
    with the held-out loss of an uninterrupted run and saw each example once per epoch."""
    from scaling.train import TrainConfig, run_training

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    spec = spec_file(tmp_path, epochs="[0.5]", lr="[0.025, 0.05, 0.1, 0.2, 0.4, 0.8]", extension=False,
                     name="chaos", seeds="[0, 1]")
    assert subprocess.run([sys.executable, "-m", "study.cli", "sweep", "run", str(spec), "--store", url,
                           "--workers", "0"], cwd=REPO, env=env(), capture_output=True).returncode == 0
    store = Store(url)
    assert len(store.rows("chaos")) == 12
    cmd = [sys.executable, "-m", "sweeps.worker", "--store", url, "--lease", "6", "--poll", "0.5",
           "--max-attempts", "20"]
    logs = tmp_path / "logs"
    logs.mkdir()

    def start() -> subprocess.Popen:
        log = open(logs / f"w{len(procs)}.log", "wb")
        return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT)

    procs: list[subprocess.Popen] = []
    procs.append(start())
    procs.append(start())
    rng = random.Random(1)
    kills, deadline = 0, time.time() + 420
    while kills < 3 and time.time() < deadline and store.active(["chaos"]):
        holders = {int(r["worker"].split(":")[1]): r for r in store.rows("chaos") if r["status"] == "running"}
        live = [p for p in procs if p.poll() is None and p.pid in holders]
        if not live:
            time.sleep(0.2)
            continue
        victim = rng.choice(live)
        # part-way into its trial: after a checkpoint or two, or before the first one
        time.sleep(rng.uniform(0.5, 3.0))
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kills += 1
            procs.append(start())
    for p in procs:
        p.wait(timeout=580)
    rows = store.rows("chaos")
    tail = "\n".join(p.read_text()[-800:] for p in logs.iterdir())
    assert kills >= 3, tail
    assert {r["status"] for r in rows} == {"done"}, [(r["status"], r["error"]) for r in rows]
    interrupted = [r for r in rows if r["attempts"] > 1]
    assert interrupted, "no trial was interrupted: the chaos did not bite"
    for r in rows:
        cfg = json.loads(r["config_json"])
        steps = int(cfg["epochs"] * TRAIN_SIZE / BATCH)
        each_example_once_per_epoch(store.trial_workdir(r["trial_id"], "chaos"), steps)
        assert r["examples_seen"] == steps * BATCH
    for r in interrupted:  # the uninterrupted result, computed here in one go
        ref = run_training(TrainConfig.from_dict(json.loads(r["config_json"])), tmp_path / "ref" / r["trial_id"][:8])
        assert r["heldout_loss"] == ref.heldout_loss, r["trial_id"]
    store.dispose()
