"""Orchestration of ONE run: build model, data and optimizer, resume, train, evaluate,
checkpoint, and account for compute three ways (docs/units.md#three-records-per-run).

The run directory and its files: scaling/train/workdir.py. The counters a checkpoint
carries across a resume: scaling/train/counters.py. Compiled steps shared by the runs
of a process: scaling/train/compiled.py. A progressive run's stages (their sides,
programs and data streams): scaling/train/progressive.py and stage_data.py.

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

import contextlib
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from scaling.errors import BadInput
from scaling.train import progressive
from scaling.train.budget import plan_steps
from scaling.train.compiled import compiled, step_key
from scaling.train.config import TrainConfig, identity_hash
from scaling.train.counters import RunCounters
from scaling.train.workdir import (append_jsonl, checkpoints_dir, claim_workdir, config_path, ensure_dir,
                                   index_log_path, locked, metrics_path, read_result, tensorboard_dir,
                                   truncate_jsonl, write_result)

# The heartbeat promise to the sweep runner: called at least this often (seconds).
HEARTBEAT_SECONDS = 2.0
# At most this many metrics rows per run along the way (plus evaluations and the end):
# 200 points draw a smooth learning curve, and each row is one store transaction in
# the sweep worker (~16 ms on the 2-core CI machine, docs/demo.md), so 1000 cost the
# demo minutes.
MAX_LOGGED_STEPS = 200


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
    family: str = "nfnet"            # architecture family (scaling/models/registry.py); the store's column
    stage: str = "pretrain"          # "finetune" for a run started from a parent's parameters
    parent_trial_id: str | None = None  # that parent (train_flops etc. are this stage's own)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainResult":
        """From result.json; a field added later with a default (family) may be absent."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)
                      if f.name in data or f.default is dataclasses.MISSING})


# ------------------------------------------------------------------------------ helpers


def setup_compile_cache(directory: str | None) -> None:
    """JAX's persistent compilation cache: a new process training a known shape loads
    the executable instead of compiling it."""
    if not directory:
        return
    path = ensure_dir(Path(directory).absolute(), "compile_cache_dir").resolve()  # BadInput: a file, read-only
    if jax.config.jax_compilation_cache_dir != str(path):
        jax.config.update("jax_compilation_cache_dir", str(path))
        # Cache every executable: small CPU models compile in under the 1 s default.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        if jax.default_backend() == "cpu":
            # jax names the cache folder in XLA's GPU autotune option, and that option is
            # part of every entry's key (jax/_src/compiler.py, jax 0.10): a CPU entry would
            # then only be found through the same path spelling. CPUs autotune nothing, so
            # on them the option is dropped and a cache reached through a symlink or moved
            # elsewhere still hits. (resolve() above covers symlinks on GPUs too.) A jax
            # without the option keeps keys with the path: only fewer hits, so no error.
            with contextlib.suppress(AttributeError):
                jax.config.update("jax_persistent_cache_enable_xla_caches", "none")


def _model_config(config: TrainConfig, num_classes: int):
    from scaling.models import registry
    from scaling.models.config import family_config

    if config.model is not None:
        return registry.get_config(config.model, num_classes=num_classes)
    return family_config(config.depth_mult, config.width_mult, num_classes=num_classes)


def _optim_config(config: TrainConfig):
    from scaling.models import registry

    return registry.recipe_config(config.model, config.optimizer)  # the family's recipe dataclass


@dataclass(frozen=True)
class _Build:
    """What a config and its dataset fix about the network and its update rule."""

    model_cfg: Any
    optim_cfg: Any
    family: Any
    resolution: int
    recipe: Any  # scaling.optim.Recipe (SAM-wrapped when sam_rho > 0)


def _build(config: TrainConfig, dataset) -> _Build:
    from scaling.models import registry
    from scaling.optim import with_sam

    model_cfg = _model_config(config, dataset.num_classes)
    optim_cfg = _optim_config(config)
    family = registry.family_of(model_cfg)  # model, init and recipe come from here
    # Default: the dataset's native size if it has one (the procedural set renders at
    # 32 px), else the model's train resolution [B21].
    resolution = config.resolution or dataset.native_resolution or model_cfg.train_resolution
    recipe = family.load("make_recipe")(optim_cfg)
    if config.sam_rho > 0:
        recipe = with_sam(recipe, config.sam_rho)
    return _Build(model_cfg, optim_cfg, family, resolution, recipe)


def _start_params(config: TrainConfig, fresh: Any, sharding) -> Any:
    """A fine-tune's first parameters: the parent's final ones with this run's fresh
    classifier (scaling/train/finetune.py); BadInput before anything is trained."""
    from scaling.train import finetune

    parent = finetune.read_parent(config)
    theirs = final_params(parent.config, parent.workdir, name=config.parent_trial_id, result=parent.result,
                          sharding=sharding)
    return finetune.transfer(theirs, fresh, config.parent_trial_id, keep_classifier=not config.reset_classifier)


def param_shapes(config: TrainConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{leaf path: shape} of the network `config` trains, traced (jax.eval_shape: no
    compilation, no drawing), for checking a fine-tune before anything is stored."""
    import jax.numpy as jnp

    from scaling.data import get_dataset
    from scaling.train.finetune import _leaves

    data = get_dataset(config.dataset)
    b = _build(config, data)
    model = b.family.load("module")(b.model_cfg)
    dummy = jax.ShapeDtypeStruct((1, b.resolution, b.resolution, data.channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
    return {k: tuple(v.shape) for k, v in _leaves(shapes["params"]).items()}


def final_params(config: TrainConfig, workdir: Path | str, *, name: str, result: dict | None = None,
                 sharding=None) -> Any:
    """The final parameters (host numpy) of the finished run `config` in `workdir`, read
    from its final checkpoint and checked against its identity and fingerprint
    (scaling.train.checkpoint.restore_params); `name` names the run in messages."""
    from scaling.data import get_dataset
    from scaling.train.checkpoint import restore_params
    from scaling.train.workdir import checkpoints_dir

    workdir = Path(workdir).absolute()
    result = read_result(workdir) if result is None else result
    if result is None:
        raise BadInput(f"parent_trial_id: run {name} in {workdir} has not finished; wait for it")
    if sharding is None:
        sharding = step_mod.replicated(step_mod.make_mesh())
    data = get_dataset(config.dataset)
    b = _build(config, data)
    params = b.family.load("init")(b.model_cfg, jax.random.key(config.seed), b.resolution, channels=data.channels)
    like = jax.eval_shape(lambda p: {"params": p, "opt_state": b.recipe.optimizer.init(p), "step": jnp.int32(0)},
                          params)
    like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), like)
    return restore_params(checkpoints_dir(workdir), step=int(result["steps"]), identity=identity_hash(config),
                          state_like=like, name=name)


def _check_resolution_free(family, model_cfg, stages, channels: int, name: str | None) -> None:
    """Progressive resizing trains one set of parameters at every stage's side: refuse a
    network whose parameter shapes depend on the input side (a ViT's position
    embedding), traced (no compilation) before anything is written."""
    model = family.load("module")(model_cfg)

    def shapes(resolution: int):
        dummy = jax.ShapeDtypeStruct((1, resolution, resolution, channels), jnp.float32)
        tree = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
        return jax.tree.map(lambda x: tuple(x.shape), tree["params"])

    if shapes(stages[0].resolution) != shapes(stages[-1].resolution):
        raise BadInput(f"progressive: model {name or family.name}'s parameters depend on the input side (e.g. a "
                       "position embedding), so it cannot change resolution within a run; use a convolutional "
                       "model or leave progressive out")


def eval_steps(total_steps: int, points: int) -> set[int]:
    """`points` evaluations evenly spaced inside the run, plus the final step."""
    steps = {round(total_steps * k / (points + 1)) for k in range(1, points + 1)}
    return {s for s in steps if 0 < s < total_steps} | {total_steps}


# --------------------------------------------------------------------------- the run


def run_training(config: TrainConfig, workdir: Path | str | None = None, *,
                 on_metrics: Callable[[dict], None] | None = None,
                 on_heartbeat: Callable[[], None] | None = None,
                 progress: bool = False,
                 should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train `config` in `workdir`; resume if a checkpoint is there; return its result.

    Calling it again on a finished workdir returns the stored result. On several
    processes (jax.distributed initialised) every process calls it with the same
    config and workdir (a shared filesystem); process 0 writes logs and results.
    Process 0 holds the workdir's lock meanwhile (workdir.locked): a second run on the
    same workdir is refused (WorkdirBusy). `should_stop` is asked at every step and
    heartbeat; when it says so the run raises KeyboardInterrupt there (`scaling train`'s
    Ctrl-C, which jax's garbage-collection callback may otherwise swallow), leaving the
    workdir as an interrupt does: resumable from its last checkpoint.
    """
    config.validate()
    if workdir is None:
        if config.workdir is None:
            raise BadInput("workdir: no run directory given; pass --workdir DIR")
        workdir = config.workdir
    workdir = Path(workdir).absolute()
    with locked(workdir, enabled=jax.process_index() == 0):
        if config_path(workdir).exists():
            claim_workdir(config, workdir, create=False)
            stored = read_result(workdir)
            if stored is not None:
                return TrainResult.from_dict(stored)
        setup_compile_cache(config.compile_cache_dir)
        run = _Run(config, workdir, on_metrics, on_heartbeat, progress)
        run.should_stop = should_stop
        return run.run()


class _Run:
    """One run: everything it holds is made in __init__; `run()` is the life cycle
    (resume, train, final evaluation, result)."""

    def __init__(self, config, workdir, on_metrics, on_heartbeat, progress):
        from scaling import units
        from scaling.data import get_dataset, train_iterator
        from scaling.models import registry
        from scaling.train.checkpoint import RunCheckpoints

        # ---- what the config fixes
        self.config, self.workdir = config, workdir
        self.on_metrics, self.on_heartbeat = on_metrics, on_heartbeat
        self.progress = progress
        self.lead = jax.process_index() == 0
        # The profile measured time is reported against: given, or this machine's.
        self.hardware = (units.hardware(config.hardware).name if config.hardware
                         else units.hardware_for_device_kind(jax.devices()[0].device_kind))
        self.dataset = get_dataset(config.dataset)
        built = _build(config, self.dataset)
        self.model_cfg, self.optim_cfg, self.family = built.model_cfg, built.optim_cfg, built.family
        self.resolution = built.resolution
        self.eval_resolution = config.eval_resolution or self.resolution
        self.counts = registry.count(self.model_cfg, self.resolution, channels=self.dataset.channels)
        # Progressive resizing (scaling/train/progressive.py): a budget buys steps at the
        # stages' mean cost; off, the plan is the single stage at the run's resolution.
        self.progressive = progressive.Progressive.from_dict(config.progressive, resolution=self.resolution)
        per_example = progressive.mean_train_flops(self.progressive, self.resolution, self.train_flops_at)
        self.plan = plan_steps(epochs=config.epochs, budget=config.budget, unit=config.unit,
                               utilization=config.utilization, batch_size=config.batch_size,
                               train_size=self.dataset.train_size,
                               train_flops_per_example=per_example)
        self.total_steps = self.plan.total_steps
        self.stages = progressive.plan(self.progressive, total_steps=self.total_steps, resolution=self.resolution)
        self.num_devices = jax.device_count()
        if config.batch_size % self.num_devices:
            raise BadInput(f"batch_size: {config.batch_size} is not divisible by the "
                           f"{self.num_devices} devices; use a multiple of {self.num_devices}")
        self.evals = eval_steps(self.total_steps, config.eval_points)
        self.log_every = max(1, self.total_steps // MAX_LOGGED_STEPS)
        self.index_log = index_log_path(workdir, jax.process_index())

        # ---- model, optimizer, compiled-step factories, initial state, data
        self.mesh = step_mod.make_mesh()
        model = self.family.load("module")(self.model_cfg, dtype=config.compute_dtype)
        recipe = built.recipe
        optimizer = recipe.optimizer
        self.compile_key = step_key(config, self.model_cfg, self.optim_cfg, self.mesh.devices.flat)
        rep = step_mod.replicated(self.mesh)
        params = self.family.load("init")(self.model_cfg, jax.random.key(config.seed), self.resolution,
                                          channels=self.dataset.channels)
        if config.parent_trial_id is not None:
            params = _start_params(config, params, rep)
        if self.progressive is not None:
            _check_resolution_free(self.family, self.model_cfg, self.stages, self.dataset.channels, config.model)
        # Claimed only now: a config refused above (a bad parent) leaves no workdir.
        claim_workdir(config, workdir, create=self.lead)
        if jax.process_count() > 1:  # everyone sees the workdir process 0 created
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("scaling-train-workdir")
        from scaling.train.finetune import frozen_mask

        frozen = frozen_mask(params, config.trainable)
        # One train program per stage (its dropout; its resolution enters through the
        # batch's shape): (factory, compile key) by stage index.
        self.stage_steps = {}
        for st in self.stages:
            cfg_k = progressive.stage_model(self.model_cfg, st.strength)
            model_k = model if cfg_k is self.model_cfg else self.family.load("module")(cfg_k, dtype=config.compute_dtype)
            self.stage_steps[st.index] = (
                functools.partial(step_mod.make_train_step, model_k, recipe,
                                  label_smoothing=self.optim_cfg.label_smoothing, mesh=self.mesh,
                                  sam=config.sam_rho > 0, frozen=frozen),
                self.compile_key if cfg_k is self.model_cfg
                else step_key(config, cfg_k, self.optim_cfg, self.mesh.devices.flat))
        self.make_eval_step = functools.partial(step_mod.make_eval_step, model, mesh=self.mesh)
        state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}
        self.state = jax.tree.map(lambda x: _put_replicated(np.asarray(x), rep), state)
        hyper = step_mod.make_hyper(peak_lr=config.lr,
                                    warmup_steps=self.optim_cfg.warmup_steps(self.total_steps),
                                    total_steps=self.total_steps, seed=config.seed)
        self.hyper = jax.tree.map(lambda x: _put_replicated(np.asarray(x), rep), hyper)

        def stream(resolution: int, augment):
            return train_iterator(self.dataset, global_batch_size=config.batch_size,
                                  seed=config.seed, resolution=resolution,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(),
                                  worker_count=config.data_workers,
                                  augment=augment)

        if self.progressive is None:
            self.iterator = stream(self.resolution, config.augment)
        else:
            from scaling.data.augment import AugmentConfig
            from scaling.train.stage_data import StagedIterator

            aug = AugmentConfig.from_dict(config.augment)
            self.iterator = StagedIterator(
                self.stages, lambda st: stream(st.resolution, aug.at_strength(st.resolution, st.strength)))

        # ---- progress: counters (restored by resume()), step clock, the lag, outcome
        self.counters = RunCounters()
        self.clock = _CompletionClock()
        self.last_beat = 0.0
        # The one step dispatched but not yet read, as (step, metrics): the host prepares
        # the next batch and dispatches the next step before it waits for this one.
        self.pending: tuple[int, dict] | None = None
        self.status: str = "done"  # or "diverged", set by drain()
        self.diverged_step: int | None = None

        # ---- outputs, closed by close()
        self.bar: Any = _NullBar()  # the real bar is made after the first step's compilation
        self.tb = _tensorboard_writer(workdir) if (config.tensorboard and self.lead) else None
        self.ckpts = RunCheckpoints(checkpoints_dir(workdir), every_steps=config.checkpoint_every_steps,
                                    every_minutes=config.checkpoint_every_minutes,
                                    identity=identity_hash(config))

    # ---- life cycle ---------------------------------------------------------------
    def run(self) -> TrainResult:
        from scaling.models.registry import model_name
        from scaling.train.checkpoint import fingerprint

        try:
            start = self.resume()
            self.heartbeat(force=True)
            self.train(start)
            if self.status == "done" and self.counters.heldout_step != self.total_steps:
                # Resumed after the final checkpoint: the final evaluation is redone
                # (deterministic, so the same number).
                self.counters.record_evaluation(self.total_steps, *self.timed_evaluate())
        finally:
            self.close()
        result = self.result(model_name(self.model_cfg), fingerprint(self.state))
        if self.lead:
            write_result(self.workdir, result.to_dict())
        return result

    def resume(self) -> int:
        """Restore the newest intact checkpoint if there is one (state, data position,
        counters) and drop the log lines of later steps; returns the last step done."""
        t = time.monotonic()
        restored = self.ckpts.restore_latest(self.state, self.iterator)
        if restored is not None:
            self.state, self.counters = restored
        start = _step_of(self.state)
        self.counters.checkpoint_seconds += time.monotonic() - t
        if self.lead:
            truncate_jsonl(metrics_path(self.workdir), start)
        if self.config.log_indices:
            truncate_jsonl(self.index_log, start)
        return start

    def train(self, start: int) -> None:
        """Steps start+1 .. total_steps, one step of lag (module docstring, "Hot path");
        stops early when drain() finds a non-finite loss."""
        for step in range(start + 1, self.total_steps + 1):
            self.check_stop()
            metrics = self.dispatch(step, first=step == start + 1)
            if self.pending is not None:  # read step - 1 while `step` is queued behind it
                row = self.drain()
                if row is None:
                    return
                self.log(row)
            self.pending = (step, metrics)
            save = self.ckpts.due(step, self.total_steps)
            if step not in self.evals and not save and step != self.total_steps:
                continue
            # What follows observes the state after `step`, so `step` must be known
            # finite first (a diverged state is never evaluated or saved).
            row = self.drain()
            if row is None:
                return
            if step in self.evals:
                hl, ha = self.timed_evaluate()
                self.counters.record_evaluation(step, hl, ha)
                row.update(heldout_loss=hl, heldout_accuracy=ha)
            self.log(row)
            if save:
                self.checkpoint(step)
            self.clock.pause()  # the next interval starts at the next dispatch

    def dispatch(self, step: int, *, first: bool) -> dict:
        """Prepare `step`'s batch, get its executable, dispatch it (not waiting for it);
        returns its metrics (device arrays)."""
        local = next(self.iterator)  # host work that overlaps the device's step - 1
        if self.config.log_indices:
            append_jsonl(self.index_log, {"step": step, "index": np.asarray(local["index"]).tolist()})
        batch = step_mod.global_batch({"image": local["image"], "label": local["label"]}, self.mesh)
        make, key = self.stage_steps[progressive.stage_of(self.stages, step).index]
        train_step, seconds = compiled("train", make, key, self.state, batch, self.hyper)
        self.counters.compile_seconds += seconds
        self.clock.exclude(seconds)
        if seconds:
            self.heartbeat(force=True)
        if first:  # made after the first compilation, so its rate/ETA exclude it
            self.bar = _progress_bar(self.total_steps, step - 1, self.lead and self.progress)
        self.clock.start()
        self.state, metrics = train_step(self.state, batch, self.hyper)
        return metrics

    def drain(self) -> dict | None:
        """Complete the pending step: wait for its metrics and account for it. Returns its
        metrics row, or None when its loss is not finite: then the `diverged` row is
        emitted and the run is marked diverged at that step."""
        step, metrics = self.pending
        self.pending = None
        loss = float(metrics["loss"])  # the host sync: blocks until `step` is done
        lr = float(metrics["lr"])
        dt = self.clock.completed()
        counters = self.counters
        counters.device_seconds += dt * self.num_devices
        counters.examples_seen += self.config.batch_size
        self.heartbeat()
        row = {"step": step, "examples_seen": counters.examples_seen, "train_loss": loss,
               "lr": lr, "wall_time": time.time()}
        if not math.isfinite(loss):
            self.emit(dict(row, train_loss=None, diverged=True))
            self.status, self.diverged_step = "diverged", step
            return None
        self.bar.update(1)
        self.bar.set_postfix(img_s=f"{self.config.batch_size / max(dt, 1e-9):.0f}",
                             loss=f"{loss:.3f}", lr=f"{lr:.3g}", refresh=False)
        return row

    def checkpoint(self, step: int) -> None:
        # Contract with the sweep worker: this heartbeat flushes every row emitted so
        # far, so they are durable before the checkpoint exists.
        self.heartbeat(force=True)
        tc = time.monotonic()
        self.ckpts.save(step, self.state, self.iterator, self.counters)
        self.counters.checkpoint_seconds += time.monotonic() - tc
        self.heartbeat(force=True)

    def close(self) -> None:
        self.bar.close()
        self.ckpts.close()
        if self.tb is not None:
            self.tb.close()

    # ---- small pieces -------------------------------------------------------------
    def train_flops_at(self, resolution: int) -> float:
        """Analytic training FLOPs per example of this run's network at `resolution`."""
        from scaling.models import registry

        if resolution == self.resolution:
            return float(self.counts.train_flops)
        return float(registry.count(self.model_cfg, resolution, channels=self.dataset.channels).train_flops)

    should_stop: Callable[[], bool] | None = None  # set by run_training

    def check_stop(self) -> None:
        """Raise KeyboardInterrupt if the caller asked to stop (run_training's should_stop)."""
        if self.should_stop is not None and self.should_stop():
            raise KeyboardInterrupt

    def heartbeat(self, force: bool = False) -> None:
        self.check_stop()
        now = time.monotonic()
        if self.on_heartbeat is not None and (force or now - self.last_beat >= HEARTBEAT_SECONDS / 2):
            self.on_heartbeat()
            self.last_beat = now

    def emit(self, row: dict) -> None:
        if not self.lead:
            return
        append_jsonl(metrics_path(self.workdir), row)
        if self.tb is not None:
            for key in ("train_loss", "lr", "heldout_loss", "heldout_accuracy"):
                if row.get(key) is not None:
                    self.tb.add_scalar(key, row[key], row["step"])
            self.tb.flush()
        if self.on_metrics is not None:
            self.on_metrics(dict(row))

    def log(self, row: dict) -> None:
        """Emit a completed step's row if it is a logged step (or carries an evaluation)."""
        if "heldout_loss" in row or row["step"] % self.log_every == 0:
            self.emit(row)

    def eval_step(self, params, batch) -> dict:
        fn, seconds = compiled("eval", self.make_eval_step, self.compile_key, params, batch)
        self.counters.compile_seconds += seconds
        return fn(params, batch)

    def evaluate(self) -> tuple[float, float]:
        """Mean CE (no smoothing) and accuracy of the current params over the WHOLE
        held-out set, exact under padding: sums over batches, one division in float64."""
        from scaling.data import heldout_batches

        params = self.state["params"]
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

    def timed_evaluate(self) -> tuple[float, float]:
        """evaluate(), its time added to eval_seconds less any compilation inside it."""
        te, compile0 = time.monotonic(), self.counters.compile_seconds
        out = self.evaluate()
        self.counters.eval_seconds += (time.monotonic() - te
                                       - (self.counters.compile_seconds - compile0))
        return out

    def result(self, name: str, digest: str) -> TrainResult:
        from scaling import units

        cfg, counters = self.config, self.counters
        examples = counters.examples_seen
        if self.progressive is None:
            train_flops = float(self.counts.train_flops) * examples
        else:  # each stage's steps at its own resolution
            train_flops = progressive.train_flops(self.stages, examples // cfg.batch_size, cfg.batch_size,
                                                  self.train_flops_at)
        measured_unit = measured_unit_for(self.hardware)
        unit = cfg.unit and units.parse_unit(cfg.unit)
        unit = unit.name if unit and unit.is_hours else measured_unit
        dev_s = counters.device_seconds
        wall_s = dev_s / self.num_devices  # units' functions take wall seconds + devices
        diverged = self.status == "diverged"
        return TrainResult(
            status=self.status, diverged_step=self.diverged_step,
            heldout_loss=None if diverged else counters.heldout_loss,
            heldout_accuracy=None if diverged else counters.heldout_accuracy,
            model=name, params=int(self.counts.params), flops_per_example=float(self.counts.flops),
            train_flops=train_flops, device_seconds=dev_s, hardware=self.hardware,
            num_devices=self.num_devices, examples_seen=examples, steps=_step_of(self.state),
            total_steps=self.total_steps, compile_seconds=counters.compile_seconds,
            eval_seconds=counters.eval_seconds, checkpoint_seconds=counters.checkpoint_seconds,
            unit=unit, hours=units.from_flops(train_flops, unit, utilization=cfg.utilization),
            measured_hours=units.device_seconds_to_hours(wall_s, self.hardware, self.num_devices,
                                                         measured_unit),
            measured_unit=measured_unit,
            achieved_utilization=units.achieved_utilization(train_flops, wall_s, self.hardware,
                                                            self.num_devices) if wall_s > 0 else 0.0,
            fingerprint=digest,
            family=self.family.name,
            stage="pretrain" if cfg.parent_trial_id is None else "finetune",
            parent_trial_id=cfg.parent_trial_id,
        )


def measured_unit_for(hardware: str) -> str:
    """Unit measured time is reported in: GPU-hours for GPUs, core-hours otherwise (the
    paper's TPU unit; CPUs have no chip unit). docs/references.md#chips-cores-and-jax-devices."""
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


# ------------------------------------------------------------------ small helpers


def _step_of(state: dict) -> int:
    """The updates applied to `state` (its replicated step counter, read on the host)."""
    return int(np.asarray(state["step"].addressable_data(0)))


def _put_replicated(value, sharding):
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


class _NullBar:
    """The progress bar when none is shown: the tqdm calls the loop makes, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, start: int, enabled: bool):
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


def _tensorboard_writer(workdir: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise BadInput("tensorboard: needs tensorboardX; pip install 'convnet-scaling[tensorboard]' "
                       "or drop --tensorboard") from None
    return SummaryWriter(str(tensorboard_dir(workdir)))


from scaling.train import step as step_mod  # noqa: E402  (jax-heavy; loop is jax-side anyway)
