"""`scaling sweep run smoke --workers 2` end to end with the REAL trainer (PostgreSQL).

Helpers and the shared-compile-cache rationale: tests/test_sweep_chaos.py.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sweeps.store import Store
from test_sweep_chaos import REPO, TRAIN_SIZE, env, spec_file


@pytest.mark.slow  # 2 worker processes (jax import + cached compile, ~20 s each) and 3 real trials
@pytest.mark.postgres
def test_smoke_spec_end_to_end_with_two_workers(pg_url, tmp_path):
    """`scaling sweep run smoke --workers 2` on PostgreSQL; the LR extension adds a trial.
    (SQLite runs the same path in the chaos and multi-host tests below; one backend here
    keeps the suite's time down.)"""
    store_url = pg_url
    spec = spec_file(tmp_path)
    out = subprocess.run([sys.executable, "-m", "study.cli", "sweep", "run", str(spec), "--store", store_url,
                          "--workers", "2", "--results-dir", str(tmp_path / "results"), "--json"],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=580)
    logs = "\n".join(p.read_text()[-1500:] for p in (tmp_path / "results" / "logs").rglob("*.log"))
    assert out.returncode == 0, out.stderr[-2000:] + logs
    summary = json.loads(out.stdout)
    assert summary["enqueued"] == 2 and summary["counts"]["pending"] == summary["counts"]["running"] == 0
    store = Store(store_url, results_dir=tmp_path / "results")
    rows = store.rows("smoke")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    ext = [r for r in rows if r["reason"] != "grid"]
    assert len(ext) == 1 and ext[0]["reason"].startswith("lr-extension: best lr")
    assert ext[0]["lr"] in (0.05, 0.4)  # one factor-2 step beyond whichever edge won
    for r in rows:
        assert r["examples_seen"] == TRAIN_SIZE // 2 and r["heldout_loss"] > 0
        assert r["train_flops"] == 3 * r["flops_per_example"] * r["examples_seen"]
        assert r["hardware"] == "cpu" and r["device_seconds"] > 0
        assert [m["step"] for m in store.metrics_rows(r["trial_id"])][-1] == 4
    store.dispose()
