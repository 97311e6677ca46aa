"""`scaling data prepare`: image folder (or Fashion-MNIST) -> ArrayRecord shards in random order.

Why: decoding many small files through a filesystem is the slow part of reading an
image folder; ArrayRecord gives random access to records packed in a few big files.
Records are stored in a seeded random order, so even sequential reads are mixed.

Skip policy for corrupt images: every image is decoded once here; one that fails is
skipped and counted (the count and the first few paths are printed and written to
dataset.json), because one bad JPEG in a million should not stop a conversion.
`strict=True` turns the first corrupt image into an error instead. A split in which
every image is corrupt is always an error.

Fashion-MNIST (`prepare_dataset`, SRC = a `fashion-mnist[:...]` spec) is converted the same
way: each verified 28 px grayscale image is encoded as a lossless PNG (the record format
is the folder's: label + encoded image), and dataset.json also records the channel count
(1), the pixel statistics and the native resolution, so `arrayrecord:OUT` reads back the
same pixels, one channel, standardised as the source is.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from scaling.data import hashing, sources
from scaling.errors import BadInput

MAX_REPORTED = 20  # corrupt paths listed in dataset.json


def _check_image(path: str) -> tuple[bytes | None, str | None]:
    """(file bytes, None) if it decodes, else (None, reason)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return data, None
    except (OSError, SyntaxError, ValueError) as err:
        return None, f"{type(err).__name__}: {err}"


def _write_split(files, out_dir: Path, prefix: str, shards: int, seed: int, strict: bool, threads: int):
    from array_record.python.array_record_module import ArrayRecordWriter

    order = hashing.permute(np.arange(len(files)), len(files), hashing.key(seed, 0x5A4D))
    bounds = np.linspace(0, len(files), shards + 1).astype(int)
    written, corrupt = 0, []
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # PIL decodes without the GIL
        for s in range(shards):
            chunk = [files[i] for i in order[bounds[s]:bounds[s + 1]]]
            writer = ArrayRecordWriter(str(out_dir / f"{prefix}-{s:05d}-of-{shards:05d}.array_record"), "group_size:1")
            try:
                for (path, label), (data, reason) in zip(chunk, pool.map(_check_image, [p for p, _ in chunk])):
                    if data is None:
                        if strict:
                            raise BadInput(f"{path}: not a readable image ({reason}); remove it or drop --strict")
                        corrupt.append(path)
                        continue
                    writer.write(sources.encode_record(label, data))
                    written += 1
            finally:
                writer.close()
    if files and not written:
        raise BadInput(f"{prefix}: all {len(files)} images are unreadable; check the source folder")
    return written, corrupt


def _empty_out(out_dir: str) -> Path:
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and any(out.iterdir()):
        raise BadInput(f"OUT_DIR: {out} is not empty; give a new or empty directory (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue()


def prepare_dataset(spec: str, out_dir: str, *, shards: int = 8, seed: int = 0) -> dict:
    """Convert an in-memory source (`fashion-mnist[:...]`) into OUT/train-*, OUT/heldout-*:
    PNG-encoded images in a seeded random order, one record per example."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from scaling.data.dataset import get_dataset

    if shards <= 0:
        raise BadInput(f"--shards: must be positive, got {shards}")
    ds = get_dataset(spec)
    out = _empty_out(out_dir)
    counts = {}
    for split, prefix, n in ((0, "train", ds.train_size), (1, "heldout", ds.heldout_size)):
        order = hashing.permute(np.arange(n), n, hashing.key(seed, 0x5A4D))
        n_shards = max(1, min(shards, n))
        bounds = np.linspace(0, n, n_shards + 1).astype(int)
        for s in range(n_shards):
            writer = ArrayRecordWriter(str(out / f"{prefix}-{s:05d}-of-{n_shards:05d}.array_record"), "group_size:1")
            try:
                idx = order[bounds[s]:bounds[s + 1]]
                pixels, labels = ds.source.read(split, idx, ds.native_resolution)
                for image, label in zip(pixels, labels):
                    writer.write(sources.encode_record(int(label), _png(image)))
            finally:
                writer.close()
        counts[prefix] = n
    meta = {"source": ds.name, "num_classes": ds.num_classes, "classes": list(getattr(ds.source, "classes", ()))
            or [str(c) for c in range(ds.num_classes)], "counts": counts, "skipped_corrupt": 0,
            "skipped_examples": [], "seed": seed, "channels": ds.channels, "native_resolution": ds.native_resolution,
            "pixel_stats": ds.pixel_stats, "record_format": "uint32 little-endian label + PNG image bytes"}
    (out / sources.META_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def prepare_folder(src_dir: str, out_dir: str, *, shards: int = 8, seed: int = 0, strict: bool = False,
                   threads: int | None = None) -> dict:
    """Convert ROOT (ImageNet layout, see sources.folder_dataset) into OUT/train-*, OUT/heldout-*."""
    if shards <= 0:
        raise BadInput(f"--shards: must be positive, got {shards}")
    ds = sources.folder_dataset(src_dir, num_classes=None, heldout_size=None, seed=seed)
    out = _empty_out(out_dir)
    threads = threads or min(8, os.cpu_count() or 1)
    train_files, held_files = ds.source.splits
    counts, corrupt = {}, []
    for prefix, files in (("train", train_files), ("heldout", held_files)):
        if not files:
            continue
        n_shards = max(1, min(shards, len(files)))
        counts[prefix], bad = _write_split(files, out, prefix, n_shards, seed, strict, threads)
        corrupt += bad
    root = Path(src_dir).expanduser().absolute()
    train_root = root / "train" if (root / "train").is_dir() else root
    classes = sorted(d.name for d in os.scandir(train_root) if d.is_dir() and not d.name.startswith("."))
    meta = {"source": str(root), "num_classes": ds.num_classes, "classes": classes, "counts": counts,
            "skipped_corrupt": len(corrupt), "skipped_examples": corrupt[:MAX_REPORTED], "seed": seed,
            "record_format": "uint32 little-endian label + encoded image bytes"}
    (out / sources.META_FILE).write_text(json.dumps(meta, indent=1))
    return meta
