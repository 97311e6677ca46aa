"""`get_dataset(spec)`: one spec string -> a Dataset with its random-access source.

A spec names the kind and where it lives: "procedural[:k=v,...]", "folder:/dir",
"arrayrecord:/dir-or-glob", "cifar10:/dir", "cifar100:/dir", "tfds:name". The
Dataset's `name` is canonical (absolute paths, every procedural option spelled out),
so the results store can tell runs on different data apart.
"""
from __future__ import annotations

from typing import Any

from scaling.data.base import Dataset, Source  # noqa: F401 - re-exported (scaling.data.Dataset)
from scaling.errors import BadInput


_PROCEDURAL_KEYS = {"classes": "num_classes", "train_size": "train_size", "heldout": "heldout_size",
                    "res": "resolution", "seed": "seed", "perturb": "perturb", "noise": "noise",
                    "rotation": "rotation", "hue_jitter": "hue_jitter"}


def _procedural(options: str, overrides: dict[str, Any]) -> Dataset:
    from scaling.data.procedural import ProceduralConfig, ProceduralSource

    fields: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        k, sep, v = item.partition("=")
        if not sep or k.strip() not in _PROCEDURAL_KEYS:
            raise BadInput(f"dataset: unknown procedural option {item!r}; use {', '.join(_PROCEDURAL_KEYS)} as key=value")
        field = _PROCEDURAL_KEYS[k.strip()]
        try:
            fields[field] = float(v) if field in ("perturb", "noise", "rotation", "hue_jitter") else int(float(v))
        except ValueError:
            raise BadInput(f"dataset: procedural option {k}={v!r} is not a number") from None
    fields.update({k: v for k, v in overrides.items() if v is not None})
    config = ProceduralConfig(**fields)
    for field in ("num_classes", "train_size", "resolution"):
        if getattr(config, field) <= 0:
            raise BadInput(f"dataset: procedural {field} must be positive, got {getattr(config, field)}")
    if min(config.heldout_size, config.perturb, config.noise, config.rotation, config.hue_jitter) < 0:
        raise BadInput("dataset: procedural heldout, perturb, noise, rotation and hue_jitter must be >= 0")
    if config.num_classes < 2:
        raise BadInput("dataset: procedural classes must be at least 2")
    if max(config.train_size, config.heldout_size) >= 2**62:
        raise BadInput("dataset: procedural train_size/heldout must be below 2**62")
    return Dataset(config.name, config.num_classes, config.train_size, config.heldout_size,
                   config.resolution, ProceduralSource(config))


def get_dataset(spec: str = "procedural", *, num_classes: int | None = None, train_size: int | None = None,
                heldout_size: int | None = None, resolution: int | None = None, seed: int = 0) -> Dataset:
    """Build the dataset a spec names. Keywords override the spec's own options.

    For real sources `num_classes` checks the labels found (a label >= num_classes is
    an error) and `heldout_size` carves a held-out split from a folder that has none.
    `resolution` only applies to the procedural set (real images are resized by the
    pipeline to whatever resolution it is asked for). `seed` is the dataset's own seed
    (procedural classes; a flat folder's held-out choice), not the training seed; the
    default 0 leaves a spec's `seed=` option in force.
    """
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "procedural":
        overrides = {"num_classes": num_classes, "train_size": train_size, "heldout_size": heldout_size,
                     "resolution": resolution, "seed": seed if seed else None}
        return _procedural(rest, overrides)
    from scaling.data import sources

    for field, value in (("train_size", train_size), ("resolution", resolution)):
        if value is not None:  # refuse rather than silently ignore
            raise BadInput(f"{field}: only the procedural dataset takes it; {kind} data has its own size "
                           "(real images are resized to the pipeline's resolution)")
    if not rest:
        raise BadInput(f"dataset: {spec!r} needs a location after the colon, e.g. {kind}:/path/to/data")
    if kind == "folder":
        return sources.folder_dataset(rest, num_classes=num_classes, heldout_size=heldout_size, seed=seed)
    if kind == "arrayrecord":
        return sources.arrayrecord_dataset(rest, num_classes=num_classes)
    if kind in ("cifar10", "cifar100"):
        return sources.cifar_dataset(rest, fine=kind == "cifar100", num_classes=num_classes)
    if kind == "tfds":
        return sources.tfds_dataset(rest, num_classes=num_classes)
    raise BadInput(f"dataset: unknown kind {kind!r} in {spec!r}; use procedural, folder:, arrayrecord:, "
                   "cifar10:, cifar100: or tfds:")
