"""Multi-host: two jax processes form ONE worker next to a single-process worker (REAL trainer).

Helpers and the shared-compile-cache rationale: tests/test_sweep_chaos.py.
"""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from sweeps.store import Store
from test_sweep_chaos import REPO, each_example_once_per_epoch, env, spec_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 3 jax processes; the 2-process program compiles once (~30 s) then is cached
def test_two_process_worker_next_to_a_single_process_worker(tmp_path):
    """Two jax processes form ONE worker (process 0 claims and broadcasts, only it writes
    to the store) beside a one-process worker; the 4 trials are shared between them."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    spec = spec_file(tmp_path, epochs="[0.5]", lr="[0.05, 0.1, 0.2, 0.4]", extension=False, name="mh")
    assert subprocess.run([sys.executable, "-m", "study.cli", "sweep", "run", str(spec), "--store", url,
                           "--workers", "0"], cwd=REPO, env=env(), capture_output=True).returncode == 0
    port = _free_port()
    base = [sys.executable, "-m", "sweeps.worker", "--store", url, "--lease", "30", "--poll", "0.5"]
    logs = [tmp_path / f"{n}.log" for n in ("p0", "p1", "single")]  # files: a full pipe would block a worker

    def start(args, log, **extra):
        with open(log, "wb") as f:
            return subprocess.Popen(base + args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env(**extra))

    pair = [start(["--multihost", "--name", f"slice-p{i}"], logs[i], JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                  JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)) for i in range(2)]
    single = start(["--name", "single"], logs[2])
    for p in pair + [single]:
        p.wait(timeout=580)
    assert [p.returncode for p in pair + [single]] == [0, 0, 0], "\n".join(x.read_text()[-1500:] for x in logs)
    store = Store(url)
    rows = store.rows("mh")
    assert {r["status"] for r in rows} == {"done"}
    by = {r["worker"]: [x for x in rows if x["worker"] == r["worker"]] for r in rows}
    assert set(by) <= {"slice-p0", "single"}  # process 1 never wrote to the store
    for r in by.get("slice-p0", []):
        assert r["num_devices"] == 2
        each_example_once_per_epoch(store.trial_workdir(r["trial_id"], "mh"), 4, processes=2)
    for r in by.get("single", []):
        assert r["num_devices"] == 1
    assert "slice-p0" in by, "the two-process worker got no trial"
    store.dispose()
