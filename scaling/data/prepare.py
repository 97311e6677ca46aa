"""`scaling data prepare`: image folder -> ArrayRecord shards in random order.

Why: decoding many small files through a filesystem is the slow part of reading an
image folder; ArrayRecord gives random access to records packed in a few big files.
Records are stored in a seeded random order, so even sequential reads are mixed.

Skip policy for corrupt images: every image is decoded once here; one that fails is
skipped and counted (the count and the first few paths are printed and written to
dataset.json), because one bad JPEG in a million should not stop a conversion.
`strict=True` turns the first corrupt image into an error instead. A split in which
every image is corrupt is always an error.
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


def prepare_folder(src_dir: str, out_dir: str, *, shards: int = 8, seed: int = 0, strict: bool = False,
                   threads: int | None = None) -> dict:
    """Convert ROOT (ImageNet layout, see sources.folder_dataset) into OUT/train-*, OUT/heldout-*."""
    if shards <= 0:
        raise BadInput(f"--shards: must be positive, got {shards}")
    ds = sources.folder_dataset(src_dir, num_classes=None, heldout_size=None, seed=seed)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and any(out.iterdir()):
        raise BadInput(f"OUT_DIR: {out} is not empty; give a new or empty directory (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
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
