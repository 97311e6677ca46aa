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
        None, help='Any family\'s model: preset "F0".."F7", "F0+".."F7+" ("F4+-keep": keep192 rule), '
                   '"nfnet-d<k>-w<w>", "ViT-S/16".."ViT-G/14", "ViT-So400m/14", "vit-w<W>-d<D>-m<M>-h<H>-p<P>" '
                   '(suffix -tok/-gap/-map: pooling); --list shows the named variants'
    ),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Input size (default: the model's test resolution)"),
    classes: int = typer.Option(1000, "--classes", help="Number of classes"),
    depth_mult: Optional[float] = typer.Option(None, "--depth-mult", help="Family depth multiplier k (with --width-mult, instead of NAME)"),
    width_mult: Optional[float] = typer.Option(None, "--width-mult", help="Family width multiplier w (with --depth-mult, instead of NAME)"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON"),
    list_names: bool = typer.Option(False, "--list", help="List every family's named variants and exit"),
) -> None:
    """Params, MACs and FLOPs per example, forward and training (3x forward)."""
    from scaling.models import registry
    from scaling.models.config import check_classes, check_resolution, family_config

    if list_names:
        rows = {f.name: list(f.presets) for f in registry.FAMILIES.values()}
        if as_json:
            typer.echo(json.dumps(rows))
        else:
            for fam in registry.FAMILIES.values():
                typer.echo(f"{fam.name} ({fam.title}): {', '.join(fam.presets)}; family names like {fam.example}")
        return

    check_classes("--classes", classes)
    if resolution is not None:
        check_resolution("--resolution", resolution)
    if (depth_mult is None) != (width_mult is None):
        raise BadInput("depth-mult/width-mult: give both (e.g. --depth-mult 0.5 --width-mult 0.125)")
    if depth_mult is not None:
        if name is not None:
            raise BadInput("NAME: give a model NAME or --depth-mult/--width-mult, not both")
        cfg = family_config(depth_mult, width_mult, num_classes=classes)
    elif name is None:
        raise BadInput("NAME: missing; give a model name (e.g. F0) or --depth-mult and --width-mult")
    else:
        cfg = registry.get_config(name, num_classes=classes)
    fam = registry.family_of(cfg)
    res = cfg.test_resolution if resolution is None else resolution
    c = fam.count(cfg, res)
    row = {
        "name": fam.model_name(cfg),
        "family": fam.name,
        "resolution": res,
        "num_classes": cfg.num_classes,
        "params": c.params,
        "macs": c.macs,
        "flops": c.flops,
        "train_flops": c.train_flops,
        **fam.shape(cfg),  # NFNet: depth_mult, width_mult; ViT: width, depth, mlp_dim, num_heads, patch_size, pool
    }
    if as_json:
        typer.echo(json.dumps(row))
        return
    typer.echo(f"{row['name']} at {res}x{res}, {cfg.num_classes} classes ({fam.summary(cfg)})")
    typer.echo(f"  params:                       {c.params:>22,}  ({_si(c.params)})")
    typer.echo(f"  forward MACs / example:       {c.macs:>22,}  ({_si(c.macs)})")
    typer.echo(f"  forward FLOPs / example:      {c.flops:>22,}  ({_si(c.flops)})")
    typer.echo(f"  training FLOPs / example:     {c.train_flops:>22,}  ({_si(c.train_flops)}, 3x forward)")


def register(app: typer.Typer) -> None:
    app.command("model-info")(model_info)
