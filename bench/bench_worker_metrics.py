"""Store cost of a trial's metrics rows in the sweep worker: this worker vs an earlier one.

A stand-in trainer (no jax) emits N metrics rows, one per step, heartbeats like
`scaling.train.loop` (every HEARTBEAT_SECONDS/2 and right before each checkpoint, every
`--checkpoint-every` steps), and returns a result; `Worker.run` works the one trial
against a fresh SQLite store. Printed per worker version: wall seconds of `Worker.run`
and the number of store transactions that wrote the lease or metrics (heartbeat +
complete calls). The peer is `sweeps/worker.py` as of `--baseline` (a git revision),
loaded from git into a private module and run in the same process, interleaved.

    python bench/bench_worker_metrics.py                       # N = 1000 and 5000, 3 repeats
    python bench/bench_worker_metrics.py --rows 200 --repeats 5 --baseline 0406ce3
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweeps.spec import Trial
from sweeps.store import Store

REPO = Path(__file__).resolve().parents[1]
HEARTBEAT_SECONDS = 2.0  # = scaling.train.loop.HEARTBEAT_SECONDS (not imported: it pulls in jax)


def load_worker(rev: str | None):
    """sweeps.worker now (rev None) or as of a git revision, as a separate module."""
    if rev is None:
        import sweeps.worker as mod

        return mod
    src = subprocess.run(["git", "show", f"{rev}:sweeps/worker.py"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"worker_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"worker_{rev}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def make_trainer(rows: int, checkpoint_every: int):
    def trainer(config, workdir, *, on_metrics=None, on_heartbeat=None):
        last_beat = time.monotonic()
        for step in range(1, rows + 1):
            on_metrics({"step": step, "examples_seen": 8 * step, "train_loss": 1.0 / step, "lr": 0.1,
                        "wall_time": time.time()})
            now = time.monotonic()
            if step % checkpoint_every == 0 or now - last_beat >= HEARTBEAT_SECONDS / 2:
                on_heartbeat()  # (before the "checkpoint", which costs nothing here)
                last_beat = now
        return {"status": "done", "heldout_loss": 1.0, "examples_seen": 8 * rows}
    return trainer


def one_run(mod, rows: int, checkpoint_every: int, tmp: Path) -> tuple[float, int]:
    store = Store(f"sqlite:///{tmp / 'runs.db'}", results_dir=tmp)
    store.enqueue([Trial("bench", dict(model="nfnet-d0.25-w0.03125", dataset="procedural", batch_size=8,
                                       resolution=16, eval_resolution=16, epochs=1.0, lr=0.1, seed=0))])
    calls = {"n": 0}
    for name in ("heartbeat", "complete"):
        real = getattr(store, name)

        def spy(*a, _real=real, **k):
            calls["n"] += 1
            return _real(*a, **k)
        setattr(store, name, spy)
    worker = mod.Worker(store, trainer=make_trainer(rows, checkpoint_every),
                        options=mod.WorkerOptions(lease_seconds=60, poll_seconds=0.05))
    t = time.perf_counter()
    worker.run()
    wall = time.perf_counter() - t
    (row,) = store.rows("bench")
    assert row["status"] == "done" and len(store.metrics_rows(row["trial_id"])) == rows
    store.dispose()
    return wall, calls["n"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", default="0406ce3", help="git revision of the peer sweeps/worker.py")
    a = p.parse_args()
    versions = {"this": load_worker(None), a.baseline: load_worker(a.baseline)}
    for rows in a.rows:
        res = {k: [] for k in versions}
        for _ in range(a.repeats):
            for name, mod in versions.items():  # interleaved, so load drifts hit both
                with tempfile.TemporaryDirectory() as d:
                    res[name].append(one_run(mod, rows, a.checkpoint_every, Path(d)))
        med = {k: statistics.median(w for w, _ in v) for k, v in res.items()}
        for name, v in res.items():
            print(f"rows={rows:5d} {name:>8}: wall median {med[name]:7.3f} s "
                  f"(runs {', '.join(f'{w:.3f}' for w, _ in v)}), store transactions {v[0][1]}")
        print(f"rows={rows:5d} speed-up this vs {a.baseline}: {med[a.baseline] / med['this']:.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
