"""Orchestration of ONE run: build model, data and optimizer, resume, train, evaluate,
checkpoint, and account for compute three ways (DESIGN.md "Compute units").

Files in the workdir:
  config.json      the TrainConfig (a workdir belongs to one config)
  checkpoints/     orbax steps (state + data-iterator state + counters, one atomic save)
  metrics.jsonl    one JSON object per logged step (and per evaluation)
  indices-p<i>.jsonl  consumed training indices per step (only with log_indices)
  result.json      the TrainResult once the run has finished (done or diverged)
  tensorboard/     event files, only when asked for

Hot path: the host never waits for the step it just dispatched. It dispatches step s,
then reads step s-1's metrics (one step of lag), so preparing batch s+1 overlaps the
device's work (JAX dispatch is asynchronous). Before anything that observes the state
(an evaluation, a checkpoint, the end) the lag is drained, so a state produced after a
non-finite loss is never evaluated or saved; a diverged run stops at most one step after
the non-finite one (`diverged_step` is the step whose loss was non-finite).

Timing rule: `device_seconds` is the sum over train steps of the wall time from the
previous step's completion (its metrics read on the host) to this step's completion,
times the number of devices: each step's device time plus any stall of the device waiting
for the host. A step after a pause is timed from its dispatch. Compilation, evaluation
and checkpoint pauses are outside it and reported apart (_CompletionClock).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scaling.errors import BadInput
from scaling.train.budget import plan_steps
from scaling.train.config import TrainConfig

# The heartbeat promise to the sweep runner: called at least this often (seconds).
HEARTBEAT_SECONDS = 2.0
# At most this many metrics rows per run along the way (plus evaluations and the end):
# 200 points draw a smooth learning curve, and each row is one store transaction in
# the sweep worker (~16 ms on the 2-core CI machine, docs/demo.md), so 1000 cost the
# demo minutes.
MAX_LOGGED_STEPS = 200
# Fields that change how a run is operated, not what it computes: a resume may change them.
OPERATIONAL_FIELDS = frozenset({"workdir", "checkpoint_every_steps", "checkpoint_every_minutes",
                                "compile_cache_dir", "tensorboard", "data_workers"})


@dataclass
class TrainResult:
    """What a finished run reports; stored as result.json and by the sweep runner."""

    status: str                      # "done" | "diverged"
    diverged_step: int | None
    heldout_loss: float | None       # mean CE, no label smoothing, whole held-out set
    heldout_accuracy: float | None
    model: str
    params: int
    flops_per_example: float         # forward FLOPs at the train resolution (2 per MAC)
    train_flops: float               # analytic: 3 x forward x examples seen
    device_seconds: float            # train steps, completion to completion, x devices (no compile/eval/ckpt)
    hardware: str
    num_devices: int
    examples_seen: int
    steps: int                       # updates applied
    total_steps: int                 # updates planned
    compile_seconds: float
    eval_seconds: float
    checkpoint_seconds: float
    unit: str                        # the unit `hours` is in
    hours: float                     # train_flops in the requested unit (planning rule)
    measured_hours: float            # device_seconds in `measured_unit`
    measured_unit: str
    achieved_utilization: float      # model FLOP/s over the hardware's peak
    fingerprint: str                 # SHA-256 of the final params + optimizer state + step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainResult":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


# ------------------------------------------------------------------------------ helpers


def setup_compile_cache(directory: str | None) -> None:
    """JAX's persistent compilation cache: a new process training a known shape loads
    the executable instead of compiling it."""
    import jax

    if not directory:
        return
    path = Path(directory).absolute()
    path.mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(path):
        jax.config.update("jax_compilation_cache_dir", str(path))
        # Cache every executable: small CPU models compile in under the 1 s default.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _model_config(config: TrainConfig, num_classes: int):
    from scaling.models.config import family_config, get_config

    if config.model is not None:
        return get_config(config.model, num_classes=num_classes)
    return family_config(config.depth_mult, config.width_mult, num_classes=num_classes)


def _optim_config(config: TrainConfig):
    from scaling.optim import OptimConfig

    known = {f.name for f in dataclasses.fields(OptimConfig)}
    unknown = sorted(set(config.optimizer) - known)
    if unknown:
        raise BadInput(f"optimizer: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return OptimConfig(**config.optimizer)


def _claim_workdir(config: TrainConfig, workdir: Path) -> None:
    """A workdir holds one run: refuse (without touching anything) a different config."""
    path = workdir / "config.json"
    mine = {k: v for k, v in config.to_dict().items() if k not in OPERATIONAL_FIELDS}
    if path.exists():
        # Through TrainConfig, so a field added since (at its default) matches a missing key.
        stored = {k: v for k, v in TrainConfig.from_json(path.read_text()).to_dict().items()
                  if k not in OPERATIONAL_FIELDS}
        if stored != mine:
            diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
            raise BadInput(f"workdir: {workdir} holds a run with a different config "
                           f"({', '.join(diff)}); use a new --workdir")
        return
    import jax

    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(config.to_dict(), indent=2, sort_keys=True))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of steps <= last_step (a resumed run redoes the rest); drop a torn
    last line left by a kill."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= last_step:
            keep.append(line)
    _atomic_write(path, "".join(k + "\n" for k in keep))


def eval_steps(total_steps: int, points: int) -> set[int]:
    """`points` evaluations evenly spaced inside the run, plus the final step."""
    steps = {round(total_steps * k / (points + 1)) for k in range(1, points + 1)}
    return {s for s in steps if 0 < s < total_steps} | {total_steps}


# --------------------------------------------------------------------------- the run


def run_training(config: TrainConfig, workdir: Path | str | None = None, *,
                 on_metrics: Callable[[dict], None] | None = None,
                 on_heartbeat: Callable[[], None] | None = None,
                 progress: bool = False) -> TrainResult:
    """Train `config` in `workdir`; resume if a checkpoint is there; return its result.

    Calling it again on a finished workdir returns the stored result. On several
    processes (jax.distributed initialised) every process calls it with the same
    config and workdir (a shared filesystem); process 0 writes logs and results.
    """
    config.validate()
    if workdir is None:
        if config.workdir is None:
            raise BadInput("workdir: no run directory given; pass --workdir DIR")
        workdir = config.workdir
    workdir = Path(workdir).absolute()
    result_path = workdir / "result.json"
    if (workdir / "config.json").exists():
        _claim_workdir(config, workdir)
        if result_path.exists():
            return TrainResult.from_dict(json.loads(result_path.read_text()))
    setup_compile_cache(config.compile_cache_dir)
    return _Run(config, workdir, on_metrics, on_heartbeat, progress).run()


class _Run:
    """The mutable state of one run; `run()` is the whole life cycle."""

    def __init__(self, config, workdir, on_metrics, on_heartbeat, progress):
        import jax

        from scaling import units
        from scaling.data import get_dataset
        from scaling.models.counts import count

        self.config, self.workdir = config, workdir
        self.on_metrics, self.on_heartbeat = on_metrics, on_heartbeat
        self.progress = progress
        self.lead = jax.process_index() == 0
        # The profile measured time is reported against: given, or this machine's.
        self.hardware = (units.hardware(config.hardware).name if config.hardware
                         else units.hardware_for_device_kind(jax.devices()[0].device_kind))
        self.dataset = get_dataset(config.dataset)
        self.model_cfg = _model_config(config, self.dataset.num_classes)
        self.optim_cfg = _optim_config(config)
        # Default: the dataset's native size if it has one (the procedural set renders at
        # 32 px), else the model's train resolution [B21].
        self.resolution = (config.resolution or self.dataset.native_resolution
                           or self.model_cfg.train_resolution)
        self.eval_resolution = config.eval_resolution or self.resolution
        self.counts = count(self.model_cfg, self.resolution)
        self.plan = plan_steps(epochs=config.epochs, budget=config.budget, unit=config.unit,
                               utilization=config.utilization, batch_size=config.batch_size,
                               train_size=self.dataset.train_size,
                               train_flops_per_example=self.counts.train_flops)
        self.num_devices = jax.device_count()
        if config.batch_size % self.num_devices:
            raise BadInput(f"batch_size: {config.batch_size} is not divisible by the "
                           f"{self.num_devices} devices; use a multiple of {self.num_devices}")
        _claim_workdir(config, workdir)
        if jax.process_count() > 1:  # everyone sees the workdir process 0 created
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("scaling-train-workdir")
        self.last_beat = 0.0

    # ---- small pieces -------------------------------------------------------------
    def heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_heartbeat is not None and (force or now - self.last_beat >= HEARTBEAT_SECONDS / 2):
            self.on_heartbeat()
            self.last_beat = now

    def emit(self, row: dict) -> None:
        if not self.lead:
            return
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key in ("train_loss", "lr", "heldout_loss", "heldout_accuracy"):
                if row.get(key) is not None:
                    self.tb.add_scalar(key, row[key], row["step"])
            self.tb.flush()
        if self.on_metrics is not None:
            self.on_metrics(dict(row))

    def evaluate(self, params) -> tuple[float, float]:
        """Mean CE (no smoothing) and accuracy over the WHOLE held-out set, exact under
        padding: sums over batches, one division in float64."""
        import jax
        import numpy as np

        from scaling.data import heldout_batches

        total = {"loss_sum": 0.0, "correct_sum": 0.0, "weight_sum": 0.0}
        for local in heldout_batches(self.dataset, batch_size=self.config.batch_size,
                                     resolution=self.eval_resolution,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
            local = {k: np.asarray(local[k]) for k in ("image", "label", "mask")}
            sums = self.eval_step(params, step_mod.global_batch(local, self.mesh))
            for k in total:
                total[k] += float(sums[k])
            self.heartbeat()
        return total["loss_sum"] / total["weight_sum"], total["correct_sum"] / total["weight_sum"]

    def timed_evaluate(self, params) -> tuple[float, float]:
        """evaluate(), its time added to eval_seconds less any compilation inside it."""
        te, compile0 = time.monotonic(), self.counters["compile_seconds"]
        out = self.evaluate(params)
        self.counters["eval_seconds"] += (time.monotonic() - te
                                          - (self.counters["compile_seconds"] - compile0))
        return out

    def _complete(self, step: int, metrics: dict) -> dict | None:
        """Wait for `step`'s metrics and account for it: its metrics row, or None (after
        emitting the `diverged` row) when its loss is not finite."""
        loss = float(metrics["loss"])  # the host sync: blocks until `step` is done
        lr = float(metrics["lr"])
        dt = self.clock.completed()
        counters = self.counters
        counters["device_seconds"] += dt * self.num_devices
        counters["examples_seen"] += self.config.batch_size
        self.heartbeat()
        row = {"step": step, "examples_seen": counters["examples_seen"], "train_loss": loss,
               "lr": lr, "wall_time": time.time()}
        if not math.isfinite(loss):
            self.emit(dict(row, train_loss=None, diverged=True))
            return None
        if self.bar is not None and self.bar is not False:
            self.bar.update(1)
            self.bar.set_postfix(img_s=f"{self.config.batch_size / max(dt, 1e-9):.0f}",
                                 loss=f"{loss:.3f}", lr=f"{lr:.3g}", refresh=False)
        return row

    def _log(self, row: dict) -> None:
        """Emit a completed step's row if it is a logged step (or carries an evaluation)."""
        if "heldout_loss" in row or row["step"] % self.log_every == 0:
            self.emit(row)

    # ---- life cycle ---------------------------------------------------------------
    def run(self) -> TrainResult:
        import jax
        import jax.numpy as jnp
        import numpy as np

        from scaling.data import train_iterator
        from scaling.models.config import model_name
        from scaling.models.nfnet import NFNet, init_params
        from scaling.optim import apply_updates, make_optimizer
        from scaling.train.checkpoint import RunCheckpoints, fingerprint

        cfg, plan = self.config, self.plan
        total_steps = plan.total_steps
        self.tb = _tensorboard_writer(self.workdir) if (cfg.tensorboard and self.lead) else None
        self.mesh = step_mod.make_mesh()
        model = NFNet(self.model_cfg, dtype=cfg.compute_dtype)
        optimizer = make_optimizer(self.optim_cfg)
        rep = step_mod.replicated(self.mesh)

        params = init_params(self.model_cfg, jax.random.key(cfg.seed), self.resolution)
        state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}
        state = jax.tree.map(lambda x: _put_replicated(np.asarray(x), rep), state)
        iterator = train_iterator(self.dataset, global_batch_size=cfg.batch_size, seed=cfg.seed,
                                  resolution=self.resolution,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(),
                                  worker_count=cfg.data_workers)

        ckpts = RunCheckpoints(self.workdir / "checkpoints", every_steps=cfg.checkpoint_every_steps,
                               every_minutes=cfg.checkpoint_every_minutes)
        counters = {"device_seconds": 0.0, "compile_seconds": 0.0, "eval_seconds": 0.0,
                    "checkpoint_seconds": 0.0, "examples_seen": 0,
                    "heldout_loss": None, "heldout_accuracy": None, "heldout_step": None}
        t = time.monotonic()
        restored = ckpts.restore_latest(state, iterator)
        if restored is not None:
            state, meta = restored
            counters.update({k: meta[k] for k in counters if k in meta})
        start = int(np.asarray(state["step"].addressable_data(0)))
        counters["checkpoint_seconds"] += time.monotonic() - t
        index_log = self.workdir / f"indices-p{jax.process_index()}.jsonl"
        if self.lead:
            _truncate_jsonl(self.workdir / "metrics.jsonl", start)
        if cfg.log_indices:
            _truncate_jsonl(index_log, start)

        hyper = step_mod.make_hyper(peak_lr=cfg.lr, warmup_steps=self.optim_cfg.warmup_steps(total_steps),
                                    total_steps=total_steps, seed=cfg.seed)
        hyper = jax.tree.map(lambda x: _put_replicated(np.asarray(x), rep), hyper)
        key = (self.model_cfg, self.optim_cfg, cfg.compute_dtype, tuple(d.id for d in self.mesh.devices.flat))
        self.counters = counters

        def compile_eval(params, batch):
            fn, seconds = compiled("eval", lambda: step_mod.make_eval_step(model, mesh=self.mesh),
                                   key, params, batch)
            counters["compile_seconds"] += seconds
            return fn(params, batch)

        self.eval_step = compile_eval

        evals = eval_steps(total_steps, cfg.eval_points)
        self.log_every = max(1, total_steps // MAX_LOGGED_STEPS)
        self.clock = _CompletionClock()
        self.bar = None  # made after the first step's compilation, so its rate/ETA exclude it
        status, diverged_step = "done", None
        # The one step dispatched but not yet read, as (step, metrics): the host prepares
        # the next batch and dispatches the next step before it waits for this one.
        pending = None
        self.heartbeat(force=True)
        try:
            for step in range(start + 1, total_steps + 1):
                local = next(iterator)  # host work that overlaps the device's step - 1
                if cfg.log_indices:
                    with open(index_log, "a") as f:
                        f.write(json.dumps({"step": step, "index": np.asarray(local["index"]).tolist()}) + "\n")
                batch = step_mod.global_batch({"image": local["image"], "label": local["label"]}, self.mesh)
                train_step, seconds = compiled(
                    "train", lambda: step_mod.make_train_step(
                        model, optimizer, apply_updates,
                        label_smoothing=self.optim_cfg.label_smoothing, mesh=self.mesh),
                    key, state, batch, hyper)
                counters["compile_seconds"] += seconds
                self.clock.exclude(seconds)
                if seconds:
                    self.heartbeat(force=True)
                if self.bar is None:
                    self.bar = _progress_bar(total_steps, step - 1, self.lead and self.progress)
                self.clock.start()
                state, metrics = train_step(state, batch, hyper)
                if pending is not None:  # read step - 1 while `step` is queued behind it
                    row = self._complete(*pending)
                    pending = None
                    if row is None:
                        status, diverged_step = "diverged", step - 1
                        break
                    self._log(row)
                pending = (step, metrics)
                save = ckpts.due(step, total_steps)
                if step not in evals and not save and step != total_steps:
                    continue
                # Drain: what follows observes the state after `step`, so `step` must be
                # known finite first (a diverged state is never evaluated or saved).
                row = self._complete(*pending)
                pending = None
                if row is None:
                    status, diverged_step = "diverged", step
                    break
                if step in evals:
                    hl, ha = self.timed_evaluate(state["params"])
                    counters.update(heldout_loss=hl, heldout_accuracy=ha, heldout_step=step)
                    row.update(heldout_loss=hl, heldout_accuracy=ha)
                self._log(row)
                if save:
                    # Contract with the sweep worker: this heartbeat flushes every row
                    # emitted so far, so they are durable before the checkpoint exists.
                    self.heartbeat(force=True)
                    tc = time.monotonic()
                    ckpts.save(step, state, iterator, counters)
                    counters["checkpoint_seconds"] += time.monotonic() - tc
                    self.heartbeat(force=True)
                self.clock.pause()  # the next interval starts at the next dispatch
            if status == "done" and counters["heldout_step"] != total_steps:
                # Resumed after the final checkpoint: the final evaluation is redone
                # (deterministic, so the same number).
                hl, ha = self.timed_evaluate(state["params"])
                counters.update(heldout_loss=hl, heldout_accuracy=ha, heldout_step=total_steps)
        finally:
            if self.bar is not None and self.bar is not False:
                self.bar.close()
            ckpts.close()
            if self.tb is not None:
                self.tb.close()
        steps_done = int(np.asarray(state["step"].addressable_data(0)))
        result = self._result(status, diverged_step, counters, steps_done, model_name(self.model_cfg),
                              fingerprint(state))
        if self.lead:
            _atomic_write(self.workdir / "result.json", json.dumps(result.to_dict(), indent=2))
        return result

    def _result(self, status, diverged_step, counters, steps_done, name, digest) -> TrainResult:
        from scaling import units

        cfg = self.config
        examples = counters["examples_seen"]
        train_flops = float(self.counts.train_flops) * examples
        measured_unit = measured_unit_for(self.hardware)
        unit = cfg.unit and units.parse_unit(cfg.unit)
        unit = unit.name if unit and unit.is_hours else measured_unit
        dev_s = counters["device_seconds"]
        wall_s = dev_s / self.num_devices  # units' functions take wall seconds + devices
        diverged = status == "diverged"
        return TrainResult(
            status=status, diverged_step=diverged_step,
            heldout_loss=None if diverged else counters["heldout_loss"],
            heldout_accuracy=None if diverged else counters["heldout_accuracy"],
            model=name, params=int(self.counts.params), flops_per_example=float(self.counts.flops),
            train_flops=train_flops, device_seconds=dev_s, hardware=self.hardware,
            num_devices=self.num_devices, examples_seen=examples, steps=steps_done,
            total_steps=self.plan.total_steps, compile_seconds=counters["compile_seconds"],
            eval_seconds=counters["eval_seconds"], checkpoint_seconds=counters["checkpoint_seconds"],
            unit=unit, hours=units.from_flops(train_flops, unit, utilization=cfg.utilization),
            measured_hours=units.device_seconds_to_hours(wall_s, self.hardware, self.num_devices,
                                                         measured_unit),
            measured_unit=measured_unit,
            achieved_utilization=units.achieved_utilization(train_flops, wall_s, self.hardware,
                                                            self.num_devices) if wall_s > 0 else 0.0,
            fingerprint=digest,
        )


def measured_unit_for(hardware: str) -> str:
    """Unit measured time is reported in: GPU-hours for GPUs, core-hours otherwise (the
    paper's TPU unit; CPUs have no chip unit). REFERENCE.md s4."""
    from scaling import units

    prof = units.hardware(hardware)
    kind = "core-hours" if (prof.cores_per_chip > 1 or not prof.has_chip_unit) else "chip-hours"
    return units.parse_unit(f"{prof.name}-{kind}").name


class _CompletionClock:
    """Measures each train step's time without a host sync per step.

    With one step in flight, the host learns that step s is done when it reads s's
    metrics; the time between two successive reads (completion to completion) is s's
    device time plus any time the device sat idle waiting for the host (a data or
    dispatch stall). The first step after a pause (start, evaluation, checkpoint) is
    timed from its dispatch. Compilation inside an interval is subtracted.
    """

    def __init__(self):
        self.mark: float | None = None
        self.excluded = 0.0

    def start(self) -> None:
        """Called just before a dispatch: opens an interval if none is open."""
        if self.mark is None:
            self.mark, self.excluded = time.perf_counter(), 0.0

    def exclude(self, seconds: float) -> None:
        if self.mark is not None:
            self.excluded += seconds

    def completed(self) -> float:
        """A step's metrics were just read: the seconds since the previous completion."""
        now = time.perf_counter()
        seconds = max(0.0, now - self.mark - self.excluded)
        self.mark, self.excluded = now, 0.0
        return seconds

    def pause(self) -> None:
        """Nothing in flight and host-only work follows (evaluation, checkpoint)."""
        self.mark = None


# ------------------------------------------------------------------ compiled steps

# Compiled executables of this process, keyed by everything that fixes the shapes and
# the program (model config, optimizer config, mesh, input avals) but NOT the learning
# rate or the run length: one compilation per model shape; the persistent cache serves
# new processes.
_COMPILED: dict[Any, Callable] = {}
MAX_COMPILED = 8  # executables kept per process (train + eval per shape), least recent dropped


def compiled(kind: str, make: Callable[[], Callable], key: tuple, *args) -> tuple[Callable, float]:
    """AOT-compile `make()` for `args` once per key; returns (executable, seconds spent)."""
    import jax

    avals = jax.tree.map(lambda x: (x.shape, str(x.dtype), x.sharding), args)
    full_key = (kind, key, str(avals))
    if full_key in _COMPILED:
        _COMPILED[full_key] = _COMPILED.pop(full_key)  # most recently used last
        return _COMPILED[full_key], 0.0
    t0 = time.perf_counter()
    executable = make().lower(*args).compile()
    while len(_COMPILED) >= MAX_COMPILED:  # a long-lived sweep worker meets many shapes
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[full_key] = executable
    return executable, time.perf_counter() - t0


def _put_replicated(value, sharding):
    import jax

    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def _progress_bar(total: int, start: int, enabled: bool):
    if not enabled:
        return False  # "no bar" (None means "not made yet")
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


def _tensorboard_writer(workdir: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise BadInput("tensorboard: needs tensorboardX; pip install 'convnet-scaling[tensorboard]' "
                       "or drop --tensorboard") from None
    return SummaryWriter(str(workdir / "tensorboard"))


from scaling.train import step as step_mod  # noqa: E402  (jax-heavy; loop is jax-side anyway)
