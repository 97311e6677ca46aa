"""Real, random-access image sources: image folders, ArrayRecord shards, CIFAR, TFDS.

Each returns a `Dataset` whose source has `read(split, indices, resolution)`. Bad
input (missing paths, empty classes, corrupt files, wrong formats, labels out of
range) raises a one-line BadInput naming the file and the fix.
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from scaling.data import hashing, images
from scaling.data.base import Dataset
from scaling.errors import BadInput

TRAIN, HELDOUT = 0, 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
HELDOUT_DIRS = ("val", "validation", "test")
META_FILE = "dataset.json"  # written by `scaling data prepare` beside the shards


# ---------------------------------------------------------------- image folders
def _scan_classes(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Sorted class directories and (file, label) pairs, sorted for determinism."""
    if not root.is_dir():
        raise BadInput(f"dataset: {root} is not a directory; give an ImageNet-layout folder (one directory per class)")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise BadInput(f"dataset: {root} has no class directories; put each class's images in its own folder")
    if len(classes) == 1:  # every label the same: nothing to learn, a zero loss to report
        raise BadInput(f"dataset: {root} has one class directory ({classes[0]}); a classifier needs at least 2")
    files = []
    for label, cls in enumerate(classes):
        found = sorted(e.path for e in os.scandir(root / cls) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            raise BadInput(f"dataset: class folder {root / cls} has no .jpg/.jpeg/.png images; add images or remove it")
        files.extend((f, label) for f in found)
    return classes, files


class FileListSource:
    """Decodes image files on demand; resized (shorter side, centre crop) on read."""

    def __init__(self, name: str, train: list[tuple[str, int]], heldout: list[tuple[str, int]]):
        self.name, self.splits = name, (train, heldout)

    def __repr__(self) -> str:
        return f"FileListSource({self.name})"

    def read(self, split: int, indices: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        entries = [self.splits[split][int(i)] for i in indices]
        pixels = []
        for path, _ in entries:
            with open(path, "rb") as f:
                pixels.append(images.decode(f.read(), resolution, path))
        return np.stack(pixels), np.array([label for _, label in entries], np.int32)


def folder_dataset(path: str, *, num_classes: int | None, heldout_size: int | None, seed: int) -> Dataset:
    """ImageNet layout: ROOT/train/CLASS/* and ROOT/val/CLASS/*, or ROOT/CLASS/*.

    Without a val/validation/test folder, `heldout_size` files (default 0) are set aside
    by a seeded permutation of the sorted file list, so the split is reproducible.
    """
    root = Path(path).expanduser().absolute()
    train_root = root / "train" if (root / "train").is_dir() else root
    classes, train = _scan_classes(train_root)
    heldout: list[tuple[str, int]] = []
    held_root = next((root / d for d in HELDOUT_DIRS if train_root != root and (root / d).is_dir()), None)
    if held_root is not None:
        held_classes, heldout = _scan_classes(held_root)
        unknown = sorted(set(held_classes) - set(classes))
        if unknown:
            raise BadInput(f"dataset: {held_root} has classes not in {train_root}: {unknown[:3]}; make the class folders match")
        remap = [classes.index(c) for c in held_classes]
        heldout = [(f, remap[label]) for f, label in heldout]
    elif heldout_size:
        if not 0 < heldout_size < len(train):
            raise BadInput(f"heldout_size: {heldout_size} must be in (0, {len(train)}) for {root}")
        order = hashing.permute(np.arange(len(train)), len(train), hashing.key(seed, 0xF01D))
        heldout = [train[i] for i in sorted(order[:heldout_size])]
        train = [train[i] for i in sorted(order[heldout_size:])]
    if num_classes is not None and num_classes < len(classes):
        raise BadInput(f"num_classes: {num_classes} but {train_root} has {len(classes)} class folders; "
                       "raise num_classes or remove folders")
    name = f"folder:{root}"
    return Dataset(name, num_classes or len(classes), len(train), len(heldout), None, FileListSource(name, train, heldout))


# ---------------------------------------------------------------- ArrayRecord
def encode_record(label: int, image_bytes: bytes) -> bytes:
    """One record = little-endian uint32 label + the encoded image file's bytes."""
    return struct.pack("<I", label) + image_bytes


def decode_record(record: bytes) -> tuple[int, bytes]:
    return struct.unpack_from("<I", record)[0], record[4:]


class ArrayRecordSource:
    """Reads records in batches with array_record's parallel `__getitems__`."""

    def __init__(self, name: str, train: list[str], heldout: list[str], num_classes: int, channels: int = 3):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self.name, self.num_classes, self.channels = name, num_classes, channels
        self.splits = tuple(ArrayRecordDataSource(p) if p else None for p in (train, heldout))

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.name})"

    def size(self, split: int) -> int:
        src = self.splits[split]
        return 0 if src is None else len(src)

    def read(self, split: int, indices: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        records = self.splits[split].__getitems__([int(i) for i in indices])
        pixels, labels = [], []
        for i, record in zip(indices, records):
            label, data = decode_record(record)
            what = f"{self.name} record {int(i)} ({'train' if split == TRAIN else 'heldout'})"
            if label >= self.num_classes:
                raise BadInput(f"{what}: label {label} is outside [0, {self.num_classes}); "
                               "fix dataset.json's num_classes or re-run `scaling data prepare`")
            pixels.append(images.decode(data, resolution, what, self.channels))
            labels.append(label)
        return np.stack(pixels), np.array(labels, np.int32)


def arrayrecord_dataset(path: str, *, num_classes: int | None) -> Dataset:
    """A directory written by `scaling data prepare`, or a glob of train shards.

    Held-out shards are the `heldout-*.array_record` files beside the train shards.
    The class count comes from dataset.json beside them, or from `num_classes`; so do
    the channel count, pixel statistics and native resolution of a converted dataset
    (Fashion-MNIST: 1 channel, 28 px), when dataset.json records them.
    """
    location = Path(path).expanduser().absolute()
    if location.is_dir():
        directory, train = location, sorted(glob.glob(str(location / "train-*.array_record")))
    else:
        directory, train = location.parent, sorted(glob.glob(str(location)))
    if not train:
        raise BadInput(f"dataset: no ArrayRecord shards match {location}; run `scaling data prepare` or fix the path")
    heldout = sorted(glob.glob(str(directory / "heldout-*.array_record")))
    meta_path = directory / META_FILE
    meta_classes, channels, stats, native = None, 3, None, None
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            meta_classes = int(meta["num_classes"])
            channels = int(meta.get("channels", 3))
            if meta.get("pixel_stats") is not None:
                stats = tuple(tuple(float(v) for v in part) for part in meta["pixel_stats"])
            native = None if meta.get("native_resolution") is None else int(meta["native_resolution"])
        except (ValueError, KeyError, TypeError) as err:
            raise BadInput(f"{meta_path}: unreadable ({err}); re-run `scaling data prepare`") from None
        if channels not in (1, 3):
            raise BadInput(f"{meta_path}: channels {channels} is not 1 or 3; re-run `scaling data prepare`")
    classes = num_classes or meta_classes
    if classes is None:
        raise BadInput(f"num_classes: {directory} has no {META_FILE}; pass num_classes")
    if meta_classes is not None and classes < meta_classes:
        raise BadInput(f"num_classes: {classes} is below the {meta_classes} classes recorded in {meta_path}")
    name = f"arrayrecord:{location}"
    try:
        source = ArrayRecordSource(name, train, heldout, classes, channels)
    except Exception as err:  # array_record raises plain RuntimeError/ValueError for bad files
        raise BadInput(f"dataset: {location} is not readable as ArrayRecord ({err}); re-run `scaling data prepare`") from None
    return Dataset(name, classes, source.size(TRAIN), source.size(HELDOUT), native, source,
                   channels=channels, pixel_stats=stats)


# ---------------------------------------------------------------- CIFAR
CIFAR_FILES = {False: (["data_batch_%d" % i for i in range(1, 6)], ["test_batch"]), True: (["train"], ["test"])}


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR files are pickles; allow only what they contain (numpy arrays, lists)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_cifar_file(path: Path, fine: bool, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise BadInput(f"dataset: {path} is missing; download and extract the CIFAR python version there")
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"fine_labels" if fine else b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise BadInput(f"{path}: not a CIFAR-{'100' if fine else '10'} python batch ({type(err).__name__}: {err}); "
                       "use the 'python version' files") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 32 * 32 * 3:
        raise BadInput(f"{path}: data is {data.dtype} {data.shape}, expected uint8 [N, 3072] (32x32 RGB rows); "
                       "use the original CIFAR python files")
    if labels.shape != (len(data),):
        raise BadInput(f"{path}: {len(labels)} labels for {len(data)} images; the file is truncated or mixed up")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise BadInput(f"{path}: label {int(labels.max())} is outside [0, {num_classes}); "
                       "is this CIFAR-100 read as CIFAR-10?")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)


class ArraySource:
    """Images already in memory (CIFAR): uint8 [N, H, W, 3] per split."""

    def __init__(self, name: str, train: tuple[np.ndarray, np.ndarray], heldout: tuple[np.ndarray, np.ndarray]):
        self.name, self.splits = name, (train, heldout)

    def __repr__(self) -> str:
        return f"ArraySource({self.name})"

    def read(self, split: int, indices: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        pixels, labels = self.splits[split]
        return images.resize_batch(pixels[indices], resolution), labels[indices]


def cifar_dataset(path: str, *, fine: bool, num_classes: int | None) -> Dataset:
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise BadInput(f"dataset: {root} is not a directory; point at the extracted cifar-*-python folder")
    classes = 100 if fine else 10
    if num_classes is not None and num_classes != classes:
        raise BadInput(f"num_classes: CIFAR-{classes} has {classes} classes, got {num_classes}")
    train_files, test_files = CIFAR_FILES[fine]

    def load(names):
        parts = [_load_cifar_file(root / n, fine, classes) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    name = f"cifar{classes}:{root}"
    train, heldout = load(train_files), load(test_files)
    return Dataset(name, classes, len(train[1]), len(heldout[1]), 32, ArraySource(name, train, heldout))


# ---------------------------------------------------------------- TFDS
class TfdsSource:
    """tensorflow_datasets' random-access `data_source` (ArrayRecord-backed builds)."""

    def __init__(self, name: str, train, heldout):
        self.name, self.splits = name, (train, heldout)

    def __repr__(self) -> str:
        return f"TfdsSource({self.name})"

    def read(self, split: int, indices: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        items = [self.splits[split][int(i)] for i in indices]
        pixels = [images.square_resize(Image.fromarray(np.asarray(it["image"])).convert("RGB"), resolution) for it in items]
        return np.stack(pixels), np.array([int(it["label"]) for it in items], np.int32)


def tfds_dataset(name: str, *, num_classes: int | None) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise BadInput("dataset: tfds: needs tensorflow-datasets; pip install tensorflow-datasets") from None
    try:
        builder = tfds.builder(name)
        train = tfds.data_source(name, split="train")
        held_split = next((s for s in ("validation", "test") if s in builder.info.splits), None)
        heldout = tfds.data_source(name, split=held_split) if held_split else []
    except Exception as err:  # tfds raises many types for "not prepared"
        raise BadInput(f"dataset: tfds:{name} is not prepared locally ({type(err).__name__}); "
                       f"run `tfds build {name} --file_format=array_record` first") from None
    classes = num_classes or builder.info.features["label"].num_classes
    spec = f"tfds:{name}"
    return Dataset(spec, classes, len(train), len(heldout), None, TfdsSource(spec, train, heldout))
