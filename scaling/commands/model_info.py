"""`scaling model-info`: parameters, MACs and FLOPs per example of one model.

Pure Python (config + analytic counts, no jax), so it answers instantly.
"""
from __future__ import annotations

import json
from typing import Optional

import typer

from scaling.errors import BadInput


def _si(x: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return str(x)


def model_info(
    name: Optional[str] = typer.Argument(
        None, help='Preset "F0".."F7", "F0+".."F7+" ("F4+-keep": keep192 rule) or "nfnet-d<k>-w<w>"'
    ),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Input size (default: the model's test resolution)"),
    classes: int = typer.Option(1000, "--classes", help="Number of classes"),
    depth_mult: Optional[float] = typer.Option(None, "--depth-mult", help="Family depth multiplier k (with --width-mult, instead of NAME)"),
    width_mult: Optional[float] = typer.Option(None, "--width-mult", help="Family width multiplier w (with --depth-mult, instead of NAME)"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON"),
) -> None:
    """Params, MACs and FLOPs per example, forward and training (3x forward)."""
    from scaling.models.config import family_config, get_config, model_name
    from scaling.models.counts import count

    if (depth_mult is None) != (width_mult is None):
        raise BadInput("depth-mult/width-mult: give both (e.g. --depth-mult 0.5 --width-mult 0.125)")
    if depth_mult is not None:
        if name is not None:
            raise BadInput("NAME: give a model NAME or --depth-mult/--width-mult, not both")
        cfg = family_config(depth_mult, width_mult, num_classes=classes)
    elif name is None:
        raise BadInput("NAME: missing; give a model name (e.g. F0) or --depth-mult and --width-mult")
    else:
        cfg = get_config(name, num_classes=classes)
    res = cfg.test_resolution if resolution is None else resolution
    c = count(cfg, res)
    row = {
        "name": model_name(cfg),
        "resolution": res,
        "num_classes": cfg.num_classes,
        "params": c.params,
        "macs": c.macs,
        "flops": c.flops,
        "train_flops": c.train_flops,
        "depth_mult": cfg.depth_mult,
        "width_mult": cfg.width_mult,
    }
    if as_json:
        typer.echo(json.dumps(row))
        return
    typer.echo(f"{row['name']} at {res}x{res}, {cfg.num_classes} classes "
               f"(depths {list(cfg.depths)}, widths {list(cfg.widths)})")
    typer.echo(f"  params:                       {c.params:>22,}  ({_si(c.params)})")
    typer.echo(f"  forward MACs / example:       {c.macs:>22,}  ({_si(c.macs)})")
    typer.echo(f"  forward FLOPs / example:      {c.flops:>22,}  ({_si(c.flops)})")
    typer.echo(f"  training FLOPs / example:     {c.train_flops:>22,}  ({_si(c.train_flops)}, 3x forward)")


def register(app: typer.Typer) -> None:
    app.command("model-info")(model_info)
