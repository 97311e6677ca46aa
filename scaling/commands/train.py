"""`scaling train`: one run from the command line (the same `run_training` the sweep
runner calls), with a progress bar, metrics.jsonl in the workdir and compute reported
three ways at the end."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import typer

from scaling.errors import BadInput
from scaling.train.config import TrainConfig  # pure Python (no jax): the options' defaults


def _default(field: str):
    """TrainConfig's default for `field`: the CLI never retypes a default of the config."""
    return TrainConfig.__dataclass_fields__[field].default


def _summary(result, workdir: Path) -> str:
    lines = [
        f"status          {result.status}" + (f" at step {result.diverged_step}" if result.diverged_step else ""),
        f"model           {result.model} ({result.params:,} params)",
        f"held-out        loss {_fmt(result.heldout_loss)}  accuracy {_fmt(result.heldout_accuracy)}",
        f"steps           {result.steps}/{result.total_steps}  examples seen {result.examples_seen:,}",
        "compute:",
        f"  analytic      {result.train_flops:.4g} training FLOPs "
        f"(3 x {result.flops_per_example:.4g} forward FLOPs/example x examples)",
        f"  measured      {result.device_seconds:.4g} device-seconds on {result.num_devices} x {result.hardware}"
        f" = {result.measured_hours:.4g} {result.measured_unit}"
        f"  (compile {result.compile_seconds:.1f} s, eval {result.eval_seconds:.1f} s,"
        f" checkpoints {result.checkpoint_seconds:.1f} s excluded)",
        f"  budget unit   {result.hours:.4g} {result.unit} (analytic FLOPs at the unit's assumed utilisation)",
        f"  utilisation   {result.achieved_utilization:.2%} of {result.hardware} peak (achieved model FLOP/s)",
        f"workdir         {workdir}  (metrics.jsonl, result.json, checkpoints/)",
    ]
    return "\n".join(lines)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


class InterruptFlag:
    """Ctrl-C (SIGINT) during `scaling train`, made reliable.

    jax appends a callback to Python's garbage collector (`gc.callbacks`, in
    jax/_src/lib/__init__.py: `_xla_gc_callback`), and an exception raised inside a gc
    callback is printed as "Exception ignored in ..." and dropped. A Ctrl-C whose
    KeyboardInterrupt is raised while that callback runs (likely in a run's first
    seconds, while jax initialises and compiles and the collector runs often) was
    therefore swallowed, and the run trained to its end. This handler raises
    KeyboardInterrupt as Python's own does AND records the request; the train loop asks
    (`run_training(should_stop=...)`) at every step and heartbeat and raises it there, so
    a swallowed Ctrl-C stops the run one step later, as an unswallowed one does: the
    workdir keeps its last checkpoint and the same command resumes from it."""

    def __init__(self):
        self.requested = False
        self._old = None

    def _handle(self, _signum, _frame) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self) -> "InterruptFlag":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(
    model: Optional[str] = typer.Option(None, help="Model of any family: F0..F7, F0+..F7+, nfnet-d<K>-w<W>, "
                                        "ViT-S/16.., vit-w<W>-d<D>-m<M>-h<H>-p<P> (`scaling model-info --list`)."),
    depth_mult: Optional[float] = typer.Option(None, help="Family depth multiplier K (with --width-mult)."),
    width_mult: Optional[float] = typer.Option(None, help="Family width multiplier W (with --depth-mult)."),
    epochs: Optional[float] = typer.Option(None, help="Epoch budget (may be fractional)."),
    budget: Optional[float] = typer.Option(None, help="Compute budget in --unit (instead of --epochs)."),
    unit: Optional[str] = typer.Option(None, help="Budget unit, e.g. tpu-v4-core-hours, flops, cpu-core-hours."),
    lr: float = typer.Option(..., help="Peak learning rate (warmup then cosine to zero)."),
    dataset: str = typer.Option(_default("dataset"), help="Dataset spec (see `scaling data --help`)."),
    batch: int = typer.Option(_default("batch_size"), help="Global batch size (divisible by the device count)."),
    resolution: Optional[int] = typer.Option(None, help="Train resolution (default: the model's)."),
    eval_resolution: Optional[int] = typer.Option(None, help="Held-out resolution (default: --resolution)."),
    seed: int = typer.Option(_default("seed"), help="Training seed (initialisation and data order)."),
    eval_points: int = typer.Option(_default("eval_points"),
                                    help="Held-out evaluations along the way, besides the final one."),
    checkpoint_steps: int = typer.Option(_default("checkpoint_every_steps"), help="Checkpoint every N steps ..."),
    checkpoint_minutes: float = typer.Option(_default("checkpoint_every_minutes"), help="... or every M minutes."),
    workdir: Path = typer.Option(Path("results/train"), help="Run directory; an existing one is resumed."),
    compile_cache: str = typer.Option(_default("compile_cache_dir"), help="Persistent XLA cache ('' to disable)."),
    hardware: Optional[str] = typer.Option(None, help="Hardware profile for measured compute (default: detected)."),
    utilization: Optional[float] = typer.Option(None, help="Assumed utilisation for hour budgets (default: profile's)."),
    optimizer: str = typer.Option("{}", help='Overrides of the model family\'s recipe as JSON (NFNet: OptimConfig, '
                                  'ViT: ViTRecipe), e.g. \'{"weight_decay": 0}\'.'),
    augment: str = typer.Option("{}", help='Training augmentation as JSON, e.g. \'{"crop_pad": 2, "flip": false}\' '
                                "(default: pad-and-crop by R/8 + flip; docs/data.md)."),
    parent_workdir: Optional[Path] = typer.Option(
        None, help="Fine-tune: start from the final parameters of the finished run in this directory "
        "(its model unless --model/--depth-mult/--width-mult is given; a fresh classifier for --dataset)."),
    parent_trial_id: Optional[str] = typer.Option(
        None, help="The parent's id, recorded with the fine-tune (default: the hash of the parent's identity)."),
    trainable: str = typer.Option(_default("trainable"), help="Fine-tune: all, or classifier (the rest frozen)."),
    keep_classifier: bool = typer.Option(False, help="Fine-tune: keep the parent's classifier (same classes; "
                                         "[M21]'s full-resolution fine-tune of a low-resolution run)."),
    sam_rho: float = typer.Option(_default("sam_rho"), help="Sharpness-aware steps of this radius (0: plain steps)."),
    progressive: str = typer.Option("{}", help='Progressive resizing as JSON, e.g. \'{"stages": 4, '
                                    '"min_resolution": 8}\', or just the number of stages (docs/training.md).'),
    tensorboard: bool = typer.Option(_default("tensorboard"),
                                     help="Also write TensorBoard event files (needs tensorboardX)."),
    data_workers: int = typer.Option(_default("data_workers"), help="Grain worker processes for the training data."),
    compute_dtype: str = typer.Option(_default("compute_dtype"), help="Activation dtype: float32, or bfloat16 "
                                      "(fp32 params, for GPU/TPU; slower on CPU)."),
    distributed: bool = typer.Option(False, help="Join a multi-host run (auto-detected cluster; see docs/training.md)."),
    log_indices: bool = typer.Option(_default("log_indices"), hidden=True,
                                     help="Debug: log consumed example indices."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train one model at one budget and learning rate; resume if WORKDIR has a checkpoint."""
    o = SimpleNamespace(**locals())  # every option, as o.<name>
    with InterruptFlag() as interrupted:  # first: a Ctrl-C from here on is never lost
        try:
            _train(o, interrupted)
        except KeyboardInterrupt:
            typer.echo(f"interrupted: {workdir} keeps its last checkpoint; run the same command again to resume",
                       err=True)
            raise typer.Exit(130) from None


def _train(o: SimpleNamespace, interrupted: InterruptFlag) -> None:
    """The command's body (`o`: its options by name)."""
    from scaling.train import run_training
    from scaling.train.distributed import init_distributed

    try:
        optim = json.loads(o.optimizer)
    except json.JSONDecodeError:
        raise BadInput(f"optimizer: {o.optimizer!r} is not JSON; e.g. '{{\"weight_decay\": 0}}'") from None
    try:
        aug = json.loads(o.augment)
    except json.JSONDecodeError:
        raise BadInput(f"augment: {o.augment!r} is not JSON; e.g. '{{\"crop_pad\": 2, \"flip\": false}}'") from None
    prog = _progressive(o.progressive)
    model, parent_id = o.model, o.parent_trial_id
    if o.parent_workdir is not None:
        from scaling.train.finetune import parent_identity

        parent_cfg, default_id = parent_identity(o.parent_workdir)  # BadInput: not a run directory
        parent_id = parent_id or default_id
        if model is None and o.depth_mult is None and o.width_mult is None:  # the parent's own network
            model, o.depth_mult, o.width_mult = parent_cfg.model, parent_cfg.depth_mult, parent_cfg.width_mult
    config = TrainConfig(
        model=model, depth_mult=o.depth_mult, width_mult=o.width_mult, dataset=o.dataset,
        epochs=o.epochs, budget=o.budget, unit=o.unit, lr=o.lr, batch_size=o.batch, resolution=o.resolution,
        eval_resolution=o.eval_resolution, seed=o.seed, optimizer=optim, eval_points=o.eval_points,
        checkpoint_every_steps=o.checkpoint_steps, checkpoint_every_minutes=o.checkpoint_minutes,
        workdir=str(o.workdir), compile_cache_dir=o.compile_cache or None, tensorboard=o.tensorboard,
        hardware=o.hardware, utilization=o.utilization, log_indices=o.log_indices,
        data_workers=o.data_workers, compute_dtype=o.compute_dtype, augment=aug,
        parent_trial_id=parent_id, parent_workdir=None if o.parent_workdir is None else str(o.parent_workdir),
        trainable=o.trainable, reset_classifier=not o.keep_classifier, sam_rho=o.sam_rho, progressive=prog,
    ).validate()
    init_distributed(auto=o.distributed)
    result = run_training(config, o.workdir, progress=not o.json_out, should_stop=interrupted)
    import jax

    if jax.process_index() != 0:
        return
    if o.json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(_summary(result, o.workdir))


def _progressive(text: str) -> dict:
    """--progressive: a JSON table, or a bare number of stages (`--progressive 4`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise BadInput(f"progressive: {text!r} is not JSON; e.g. '{{\"stages\": 4, \"min_resolution\": 8}}' "
                       "or a number of stages") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return {"stages": value}
    if not isinstance(value, dict):
        raise BadInput(f"progressive: {text!r} is neither a JSON table nor a number of stages; "
                       "e.g. '{\"stages\": 4}'")
    return value


def register(app: typer.Typer) -> None:
    app.command("train")(train)
