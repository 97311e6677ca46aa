"""`scaling data ...`: dataset preparation and inspection (docs/data.md)."""
from __future__ import annotations

import json

import typer

data_app = typer.Typer(help="Prepare and inspect datasets.", no_args_is_help=True)


@data_app.command()
def prepare(
    src_dir: str = typer.Argument(..., help="Image folder: ROOT/train/CLASS/*.jpg (+ ROOT/val/...) or ROOT/CLASS/*.jpg"),
    out_dir: str = typer.Argument(..., help="New or empty directory for the ArrayRecord shards"),
    shards: int = typer.Option(8, "--shards", help="Number of train shards (held-out gets as many)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random storage order"),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first corrupt image instead of skipping it"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
) -> None:
    """Convert an image folder into ArrayRecord shards stored in random order."""
    from scaling.data.prepare import prepare_folder

    meta = prepare_folder(src_dir, out_dir, shards=shards, seed=seed, strict=strict)
    if as_json:
        typer.echo(json.dumps(meta))
        return
    typer.echo(f"wrote {meta['counts']} examples of {meta['num_classes']} classes to {out_dir}")
    if meta["skipped_corrupt"]:
        typer.echo(f"skipped {meta['skipped_corrupt']} corrupt images (listed in {out_dir}/dataset.json), "
                   f"e.g. {meta['skipped_examples'][0]}")
    typer.echo(f"train with: --dataset arrayrecord:{out_dir}")


@data_app.command()
def info(
    spec: str = typer.Argument("procedural", help="Dataset spec, e.g. procedural, folder:/dir, cifar10:/dir"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON"),
) -> None:
    """Show a dataset's canonical name, classes and split sizes."""
    from scaling.data import get_dataset

    ds = get_dataset(spec)
    row = {"name": ds.name, "num_classes": ds.num_classes, "train_size": ds.train_size,
           "heldout_size": ds.heldout_size, "native_resolution": ds.native_resolution}
    typer.echo(json.dumps(row) if as_json else "\n".join(f"{k}: {v}" for k, v in row.items()))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
