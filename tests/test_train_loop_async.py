"""The train loop's hot path (scaling/train/loop.py "Hot path"): the host reads each
step's metrics one step late, and drains that lag before anything observes the state.

The real tiny model of tests/test_train_run.py (same shape, same compile cache) runs
here; the train executable and the checkpoint save are wrapped to record
WHEN things happen, inject a non-finite loss, or add a pause of known length.
"""
from __future__ import annotations

import math
import time

import pytest

from scaling.train import loop, run_training
from scaling.train.checkpoint import RunCheckpoints
from test_train_run import BATCH, tiny


def record_dispatches(monkeypatch, events: list, *, nan_at: int | None = None,
                      sleep: float = 0.0, fake_compile: tuple[int, float] | None = None,
                      compile_calls: list | None = None):
    """Wrap loop.compiled: every train-step call appends ("dispatch", step) to `events`
    (steps counted from 1, so use it on fresh workdirs). Optionally the loss of step
    `nan_at` becomes NaN, each call sleeps `sleep` seconds (stand-in device time), and
    fake_compile=(step, seconds) pretends the executable for that step had to be
    compiled (a sleep, reported as compile time). `compile_calls` gets (time, seconds)
    of every compiled() call."""
    real = loop.compiled

    def compiled(kind, make, key, *args):
        fn, seconds = real(kind, make, key, *args)
        if kind == "train":
            step = sum(1 for e in events if e[0] == "dispatch") + 1
            if fake_compile and step == fake_compile[0]:
                time.sleep(fake_compile[1])
                seconds += fake_compile[1]
        if compile_calls is not None:
            compile_calls.append((time.perf_counter(), seconds))
        if kind != "train":
            return fn, seconds

        def train_step(state, batch, hyper):
            step = sum(1 for e in events if e[0] == "dispatch") + 1
            events.append(("dispatch", step, time.perf_counter()))
            time.sleep(sleep)
            state, metrics = fn(state, batch, hyper)
            if step == nan_at:
                metrics = dict(metrics, loss=metrics["loss"] * math.nan)
            return state, metrics

        return train_step, seconds

    monkeypatch.setattr(loop, "compiled", compiled)


def record_saves(monkeypatch, events: list):
    real = RunCheckpoints.save

    def save(self, step, *args, **kwargs):
        events.append(("save", step))
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(RunCheckpoints, "save", save)


def saved_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


class FakeBar:
    """Stands in for the tqdm bar: records updates and postfixes."""

    def __init__(self):
        self.updates, self.postfixes, self.closed = 0, [], False

    def update(self, n):
        self.updates += n

    def set_postfix(self, **kw):
        self.postfixes.append(kw)

    def close(self):
        self.closed = True


def test_metrics_are_read_one_step_late_and_drained_before_eval_and_checkpoint(monkeypatch, tmp_path):
    events: list = []
    record_dispatches(monkeypatch, events)
    record_saves(monkeypatch, events)
    bar = FakeBar()
    monkeypatch.setattr(loop, "_progress_bar", lambda total, start, enabled: bar if enabled else False)
    result = run_training(tiny(eval_points=1, checkpoint_every_steps=4), tmp_path, progress=True,
                          on_metrics=lambda row: events.append(("row", row["step"], row)),
                          on_heartbeat=lambda: events.append(("beat",)))
    assert result.status == "done" and result.steps == 16
    position = {(e[0], e[1]): i for i, e in enumerate(events) if e[0] in ("dispatch", "row", "save")}
    rows = [e[2] for e in events if e[0] == "row"]
    # Same rows as an unlagged loop: every step once, in order, evaluations at 8 and 16.
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert [r["step"] for r in rows if "heldout_loss" in r] == [8, 16]
    assert [r["examples_seen"] for r in rows] == [BATCH * s for s in range(1, 17)]
    drained = {4, 8, 12, 16}  # checkpoints every 4 steps; evaluations at 8 and 16
    for s in range(1, 16):
        if s in drained:  # read before the next step is dispatched
            assert position[("row", s)] < position[("dispatch", s + 1)], s
        else:  # read only after the next step was dispatched: the host did not wait
            assert position[("dispatch", s + 1)] < position[("row", s)], s
    # The contract with the sweep worker: a heartbeat immediately before every save, and
    # every row up to the saved step emitted before that heartbeat.
    saves = [e[1] for e in events if e[0] == "save"]
    assert saves == [4, 8, 12, 16]
    for s in saves:
        i = position[("save", s)]
        assert events[i - 1] == ("beat",), s
        assert all(position[("row", r)] < i - 1 for r in range(1, s + 1)), s
    assert saved_steps(tmp_path) == [8, 12, 16]  # orbax keeps the 3 newest
    # The progress bar: one update per step, img/s from the measured interval.
    assert bar.updates == 16 and bar.closed
    assert len(bar.postfixes) == 16 and all(float(p["img_s"]) > 0 for p in bar.postfixes)


@pytest.mark.parametrize("bad, last_update, checkpoints", [
    (3, 4, []),    # noticed after step 4 was dispatched; step 4 is a checkpoint step: none saved
    (4, 4, []),    # a checkpoint step itself: drained before the save, so nothing saved
    (7, 8, [4]),   # the checkpoint from before the divergence stays; 8 is never saved
])
def test_first_non_finite_loss_is_reported_at_its_step(monkeypatch, tmp_path, bad, last_update, checkpoints):
    events: list = []
    record_dispatches(monkeypatch, events, nan_at=bad)
    rows: list = []
    result = run_training(tiny(eval_points=0, checkpoint_every_steps=4), tmp_path, on_metrics=rows.append)
    assert result.status == "diverged" and result.diverged_step == bad
    assert result.steps == last_update  # at most one update after the non-finite one
    assert result.heldout_loss is None
    assert [r["step"] for r in rows] == list(range(1, bad + 1))
    assert rows[-1]["diverged"] is True and rows[-1]["train_loss"] is None
    assert rows[-1]["examples_seen"] == result.examples_seen == BATCH * bad
    assert all(math.isfinite(r["train_loss"]) and "diverged" not in r for r in rows[:-1])
    assert saved_steps(tmp_path) == checkpoints


def test_device_seconds_covers_the_steps_and_nothing_else(monkeypatch, tmp_path):
    """Each step "takes" >= 30 ms (a sleep in the dispatch); a fake 1.5 s compilation in
    the middle of the run (step 6, one step in flight), the evaluations and the
    checkpoint saves must all stay out of device_seconds."""
    events: list = []
    compile_calls: list = []
    per_step = 0.03
    record_dispatches(monkeypatch, events, sleep=per_step, fake_compile=(6, 1.5),
                      compile_calls=compile_calls)
    result = run_training(tiny(eval_points=1, checkpoint_every_steps=4), tmp_path)
    end = time.perf_counter()
    first_dispatch = events[0][2]
    window = end - first_dispatch
    # Compilation after the first dispatch (the fake one, the eval step's if not cached).
    compile_in_window = sum(sec for t, sec in compile_calls if t > first_dispatch)
    assert compile_in_window >= 1.5 and result.compile_seconds >= 1.5
    assert result.num_devices == 1 and result.steps == 16
    assert result.device_seconds >= 16 * per_step
    # Disjoint counters: their sum fits in the time they were measured in (the 1.5 s
    # would break this if counted twice). The slack covers checkpoint_seconds' restore
    # attempt, timed just before the window (an empty directory: milliseconds).
    accounted = (result.device_seconds + compile_in_window + result.eval_seconds
                 + result.checkpoint_seconds)
    assert accounted <= window + 0.2, (accounted, window)
    assert result.eval_seconds > 0 and result.checkpoint_seconds > 0
