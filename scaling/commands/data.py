"""`scaling data ...`: dataset preparation and inspection (docs/data.md)."""
from __future__ import annotations

import json

import typer

data_app = typer.Typer(help="Prepare and inspect datasets.", no_args_is_help=True)


@data_app.command()
def prepare(
    src_dir: str = typer.Argument(..., help="Image folder: ROOT/train/CLASS/*.jpg (+ ROOT/val/...) or ROOT/CLASS/*.jpg; "
                                  "or a fashion-mnist[:...] dataset spec"),
    out_dir: str = typer.Argument(..., help="New or empty directory for the ArrayRecord shards"),
    shards: int = typer.Option(8, "--shards", help="Number of train shards (held-out gets as many)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random storage order"),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first corrupt image instead of skipping it"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
) -> None:
    """Convert an image folder (or Fashion-MNIST) into ArrayRecord shards stored in random order."""
    from scaling.data.prepare import prepare_dataset, prepare_folder

    if src_dir.split(":")[0].strip().lower() in ("fashion-mnist", "fashion_mnist"):
        meta = prepare_dataset(src_dir, out_dir, shards=shards, seed=seed)
    else:
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
    spec: str = typer.Argument("procedural", help="Dataset spec, e.g. procedural, fashion-mnist, folder:/dir, cifar10:/dir"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON"),
) -> None:
    """Show a dataset's canonical name, classes and split sizes."""
    from scaling.data import get_dataset

    ds = get_dataset(spec)
    row = {"name": ds.name, "num_classes": ds.num_classes, "train_size": ds.train_size,
           "heldout_size": ds.heldout_size, "native_resolution": ds.native_resolution,
           "channels": ds.channels}
    typer.echo(json.dumps(row) if as_json else "\n".join(f"{k}: {v}" for k, v in row.items()))


@data_app.command()
def fetch(
    spec: str = typer.Argument("fashion-mnist", help="fashion-mnist, or fashion-mnist:dir=FOLDER for another place"),
    as_json: bool = typer.Option(False, "--json", help="Print the folder and files as JSON"),
) -> None:
    """Download a dataset that ships as a Debian package (Fashion-MNIST) and verify it.

    Uses `apt-get download` + `dpkg-deb -x` (no root needed) into the cache folder
    (~/.cache/convnet-scaling/fashion-mnist, or $XDG_CACHE_HOME/...) or dir=; an installed
    package (/usr/share/datasets/fashion-mnist) is used as it is. Every file's SHA-256
    is checked.
    """
    from scaling.data import fashion

    echo = (lambda s: typer.echo(s, err=True)) if as_json else typer.echo
    folder = fashion.fetch(spec, echo=echo)
    if as_json:
        files = sorted(p.name for p in folder.iterdir() if p.name.split(".")[0] in fashion.SHA256)
        typer.echo(json.dumps({"dir": str(folder), "files": files, "verified": True}))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
