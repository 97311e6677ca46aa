"""`get_dataset(spec)`: one spec string -> a Dataset with its random-access source.

A spec names the kind and where it lives: "procedural[:k=v,...]", "fashion-mnist[:k=v,...]", "folder:/dir",
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


# Each procedural option's range (inclusive): whole numbers for the sizes and the seed,
# finite reals for the rendering knobs. Beyond these a value is a typo, not a dataset
# (res=100000 renders 30 GB per image; seed=-1 fails deep in numpy; noise=nan renders NaN).
_PROCEDURAL_RANGES: dict[str, tuple[float, float]] = {
    "num_classes": (2, 1_000_000), "train_size": (1, 2**62 - 1), "heldout_size": (1, 2**62 - 1),
    "resolution": (1, 4096), "seed": (0, 2**32 - 1),
    "perturb": (0.0, 10.0), "noise": (0.0, 1.0), "rotation": (0.0, 360.0), "hue_jitter": (0.0, 10.0)}
_PROCEDURAL_INTS = ("num_classes", "train_size", "heldout_size", "resolution", "seed")
_OPTION_OF = {field: key for key, field in _PROCEDURAL_KEYS.items()}


def _procedural_value(field: str, raw: Any) -> int | float:
    """One option's value, parsed and range-checked (BadInput naming the option)."""
    import math

    key = _OPTION_OF[field]
    low, high = _PROCEDURAL_RANGES[field]
    integer = field in _PROCEDURAL_INTS
    want = (f"a whole number in [{low:,}, {high:,}]" if integer else f"a number in [{low:g}, {high:g}]")
    try:
        if isinstance(raw, bool):
            raise ValueError
        try:  # whole numbers exactly (2**62 - 1 is not a float), "1e6" through float
            x = int(raw) if integer else float(raw)
        except ValueError:
            x = float(raw)
    except (TypeError, ValueError):
        raise BadInput(f"dataset: procedural option {key}={raw!r} is not a number; use {want}") from None
    if not math.isfinite(x) or not low <= x <= high or (integer and x != int(x)):
        raise BadInput(f"dataset: procedural option {key}={str(raw).strip()} is out of range; use {want}")
    return int(x) if integer else x


def _procedural(options: str, overrides: dict[str, Any]) -> Dataset:
    from scaling.data.procedural import ProceduralConfig, ProceduralSource

    fields: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        k, sep, v = item.partition("=")
        if not sep or k.strip() not in _PROCEDURAL_KEYS:
            raise BadInput(f"dataset: unknown procedural option {item!r}; use {', '.join(_PROCEDURAL_KEYS)} as key=value")
        field = _PROCEDURAL_KEYS[k.strip()]
        if field in fields:  # "classes=10,...,classes=5": which one was meant?
            raise BadInput(f"dataset: procedural option {k.strip()} is given twice; keep one")
        fields[field] = _procedural_value(field, v.strip())
    fields.update({k: _procedural_value(k, v) for k, v in overrides.items() if v is not None})
    config = ProceduralConfig(**fields)
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
    if kind in ("fashion-mnist", "fashion_mnist"):
        if resolution is not None:
            raise BadInput("resolution: fashion-mnist images are 28 px; the pipeline resizes to its own resolution")
        from scaling.data.fashion import fashion_dataset

        return fashion_dataset(rest, num_classes=num_classes, train_size=train_size, heldout_size=heldout_size)
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
    raise BadInput(f"dataset: unknown kind {kind!r} in {spec!r}; use procedural, fashion-mnist, folder:, "
                   "arrayrecord:, cifar10:, cifar100: or tfds:")
