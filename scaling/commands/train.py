"""`scaling train`: one run from the command line (the same `run_training` the sweep
runner calls), with a progress bar, metrics.jsonl in the workdir and compute reported
three ways at the end."""
from __future__ import annotations

import json
from pathlib import Path
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


def train(
    model: Optional[str] = typer.Option(None, help="Preset (F0..F7, F0+..F7+, nfnet-d<K>-w<W>)."),
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
    optimizer: str = typer.Option("{}", help='OptimConfig overrides as JSON, e.g. \'{"weight_decay": 0}\'.'),
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
    from scaling.train import run_training
    from scaling.train.distributed import init_distributed

    try:
        optim = json.loads(optimizer)
    except json.JSONDecodeError:
        raise BadInput(f"optimizer: {optimizer!r} is not JSON; e.g. '{{\"weight_decay\": 0}}'") from None
    config = TrainConfig(
        model=model, depth_mult=depth_mult, width_mult=width_mult, dataset=dataset,
        epochs=epochs, budget=budget, unit=unit, lr=lr, batch_size=batch, resolution=resolution,
        eval_resolution=eval_resolution, seed=seed, optimizer=optim, eval_points=eval_points,
        checkpoint_every_steps=checkpoint_steps, checkpoint_every_minutes=checkpoint_minutes,
        workdir=str(workdir), compile_cache_dir=compile_cache or None, tensorboard=tensorboard,
        hardware=hardware, utilization=utilization, log_indices=log_indices,
        data_workers=data_workers, compute_dtype=compute_dtype,
    ).validate()
    init_distributed(auto=distributed)
    result = run_training(config, workdir, progress=not json_out)
    import jax

    if jax.process_index() != 0:
        return
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(_summary(result, workdir))


def register(app: typer.Typer) -> None:
    app.command("train")(train)
