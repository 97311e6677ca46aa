"""Fashion-MNIST (Xiao et al. 2017, [X17]) from Debian's `dataset-fashion-mnist` package.

    fashion-mnist[:train_size=N,heldout=N,dir=/path,verify=false]

Four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte), each either gzipped (`.gz`, as Debian ships them) or plain.
IDX is big-endian: images are the magic 0x00000803, then N, 28, 28 as uint32, then
N*28*28 uint8 pixels; labels are 0x00000801, then N, then N uint8 labels.

Where the files are looked for, in order: `dir=` when given; else the installed Debian
package (/usr/share/datasets/fashion-mnist); else the cache folder that
`scaling data fetch fashion-mnist` fills (`$XDG_CACHE_HOME/convnet-scaling/fashion-mnist`,
by default ~/.cache/convnet-scaling/fashion-mnist). The fetch needs no root:
`apt-get download dataset-fashion-mnist` and `dpkg-deb -x` into a temporary folder, and
the four files are moved to the cache.

Every read checks the SHA-256 of each DECOMPRESSED file against the constants below
(Debian recompressed the .gz files, so upstream's MD5s of the .gz files do not apply);
`verify=false` skips that check (test fixtures, re-encoded copies) and is part of the
dataset's name, so runs on unverified files are told apart. A missing or corrupt file is
one BadInput line with the command that fixes it.

Grayscale: images are uint8 [N, 28, 28, 1]; the Dataset says `channels=1`, and models
take one input channel (nothing is repeated to RGB). `train_size=` keeps a fixed, seeded
random subset of the 60,000 training images (the same subset for every run);
`heldout=` likewise for the 10,000 test images (default: all of them).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np

from scaling.data import hashing, images
from scaling.data.base import Dataset
from scaling.errors import BadInput, RuntimeFailure

KIND = "fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
INSTALLED_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package puts them
FETCH_COMMAND = f"scaling data fetch {KIND}"
# SHA-256 of the decompressed IDX files, as shipped by Debian's dataset-fashion-mnist
# 0.0~git20200523.55506a9-1 (= upstream's files; docs/references.md#real-data-fashion-mnist).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SPLIT_FILES = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
SIZES = (60000, 10000)  # [X17]
NUM_CLASSES, RESOLUTION = 10, 28
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")  # label order of [X17]
# Pixel mean and std (in [0, 1]) of the 60,000 training images, measured on the verified
# files (`python -c` in docs/data.md#fashion-mnist); the pipeline standardises with them.
PIXEL_MEAN, PIXEL_STD = 0.2860405969887955, 0.35302424451492254
_KEYS = ("train_size", "heldout", "dir", "verify")


def cache_dir() -> Path:
    """The fetch's default destination: $XDG_CACHE_HOME (or ~/.cache)/convnet-scaling/fashion-mnist."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "convnet-scaling" / KIND


def _file_in(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _complete(directory: Path) -> bool:
    return all(_file_in(directory, stem) is not None for stem in SHA256)


def locate(directory: str | Path | None = None) -> Path:
    """The folder holding the four files: `directory`, else the installed package, else
    the cache; BadInput naming the fetch command when none has them."""
    if directory is not None:
        d = Path(directory).expanduser().absolute()
        if not _complete(d):
            missing = [s for s in SHA256 if _file_in(d, s) is None]
            raise BadInput(f"dataset {KIND}: {d} lacks {', '.join(missing)}(.gz); "
                           f"run `{FETCH_COMMAND}:dir={d}`")
        return d
    for d in (INSTALLED_DIR, cache_dir()):
        if _complete(d):
            return d
    raise BadInput(f"dataset {KIND}: the IDX files are in neither {INSTALLED_DIR} (Debian package "
                   f"{PACKAGE}) nor {cache_dir()}; run `{FETCH_COMMAND}`")


def _fix_hint(path: Path) -> str:
    if path.parent == INSTALLED_DIR:
        return f"reinstall the package (apt-get install --reinstall {PACKAGE})"
    spec = KIND if path.parent == cache_dir() else f"{KIND}:dir={path.parent}"
    return f"delete it and run `scaling data fetch {spec}`"


def read_idx(path: Path, stem: str, verify: bool) -> np.ndarray:
    """One IDX file (gzipped or plain) -> uint8 [N, 28, 28, 1] images or [N] labels."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise BadInput(f"{path}: unreadable ({type(err).__name__}: {err}); {_fix_hint(path)}") from None
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256[stem]:
            raise BadInput(f"{path}: SHA-256 {digest[:16]}... of its contents is not Fashion-MNIST's "
                           f"{SHA256[stem][:16]}...; the file is corrupt or another dataset: {_fix_hint(path)}")
    images_file = "idx3" in stem
    header = 16 if images_file else 8
    if len(data) < header:
        raise BadInput(f"{path}: {len(data)} bytes is shorter than an IDX header; {_fix_hint(path)}")
    magic, n = struct.unpack_from(">II", data)
    want_magic = IMAGE_MAGIC if images_file else LABEL_MAGIC
    if magic != want_magic:
        raise BadInput(f"{path}: IDX magic 0x{magic:08x}, expected 0x{want_magic:08x} "
                       f"({'images' if images_file else 'labels'}); {_fix_hint(path)}")
    shape: tuple[int, ...] = (n,)
    if images_file:
        rows, cols = struct.unpack_from(">II", data, 8)
        if (rows, cols) != (RESOLUTION, RESOLUTION):
            raise BadInput(f"{path}: images are {rows}x{cols}, expected {RESOLUTION}x{RESOLUTION}; {_fix_hint(path)}")
        shape = (n, rows, cols, 1)
    if len(data) != header + int(np.prod(shape)):
        raise BadInput(f"{path}: {len(data) - header} data bytes for the {int(np.prod(shape))} its header "
                       f"announces (truncated or padded); {_fix_hint(path)}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def load_arrays(directory: str, verify: bool) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """((train images, labels), (test images, labels)) of a folder, checked; cached per
    process (a sweep worker reads and hashes the files once, ~0.5 s)."""
    d = Path(directory)
    splits = []
    for image_stem, label_stem in SPLIT_FILES:
        pixels = read_idx(_file_in(d, image_stem), image_stem, verify)
        labels = read_idx(_file_in(d, label_stem), label_stem, verify)
        if len(pixels) != len(labels):
            raise BadInput(f"{d}: {image_stem} has {len(pixels)} images but {label_stem} {len(labels)} labels; "
                           f"{_fix_hint(_file_in(d, image_stem))}")
        if len(labels) and labels.max() >= NUM_CLASSES:
            raise BadInput(f"{_file_in(d, label_stem)}: label {int(labels.max())} is outside [0, {NUM_CLASSES}); "
                           f"{_fix_hint(_file_in(d, label_stem))}")
        splits.append((pixels, labels.astype(np.int32)))
    return tuple(splits)


def subset(n_total: int, n: int, split: int) -> np.ndarray:
    """A fixed random subset of n of the n_total examples of a split, in index order."""
    order = hashing.permute(np.arange(n_total), n_total, hashing.key(0xFA5, split))
    return np.sort(order[:n])


class IdxSource:
    """Fashion-MNIST in memory: uint8 [N, 28, 28, 1] per split (~47 MB for train)."""

    classes = CLASSES

    def __init__(self, name: str, train: tuple[np.ndarray, np.ndarray], heldout: tuple[np.ndarray, np.ndarray]):
        self.name, self.splits = name, (train, heldout)

    def __repr__(self) -> str:
        return f"IdxSource({self.name})"

    def read(self, split: int, indices: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        pixels, labels = self.splits[split]
        return images.resize_batch(pixels[indices], resolution), labels[indices]


def parse_options(options: str) -> dict:
    """`train_size=N,heldout=N,dir=/path,verify=false` -> typed values; BadInput otherwise."""
    out: dict = {}
    for item in filter(None, (p.strip() for p in options.split(","))):
        k, sep, v = item.partition("=")
        k, v = k.strip(), v.strip()
        if not sep or k not in _KEYS:
            raise BadInput(f"dataset: unknown {KIND} option {item!r}; use {', '.join(_KEYS)} as key=value")
        if k in ("train_size", "heldout"):
            try:
                out[k] = int(v)
            except ValueError:
                raise BadInput(f"dataset: {KIND} option {k}={v!r} is not a whole number") from None
        elif k == "verify":
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise BadInput(f"dataset: {KIND} option verify={v!r}; use verify=true or verify=false")
            out[k] = v.lower() in ("true", "1", "yes")
        else:
            if not v:
                raise BadInput(f"dataset: {KIND} option dir= is empty; give the folder of the IDX files")
            out[k] = str(Path(v).expanduser().absolute())
    return out


def canonical_name(train_size: int, heldout: int, directory: str | None, verify: bool) -> str:
    """`fashion-mnist` plus the options that differ from the defaults, in a fixed order.
    The folder is named only when given (the verified files are the same data wherever
    they are, so the default places do not enter a run's identity)."""
    opts = []
    if train_size != SIZES[0]:
        opts.append(f"train_size={train_size}")
    if heldout != SIZES[1]:
        opts.append(f"heldout={heldout}")
    if directory is not None:
        opts.append(f"dir={directory}")
    if not verify:
        opts.append("verify=false")
    return KIND + (":" + ",".join(opts) if opts else "")


def fashion_dataset(options: str, *, num_classes: int | None = None, train_size: int | None = None,
                    heldout_size: int | None = None) -> Dataset:
    """The Dataset a `fashion-mnist[:...]` spec names (keywords override its options)."""
    opts = parse_options(options)
    if num_classes is not None and num_classes != NUM_CLASSES:
        raise BadInput(f"num_classes: Fashion-MNIST has {NUM_CLASSES} classes, got {num_classes}")
    directory, verify = opts.get("dir"), opts.get("verify", True)
    found = locate(directory)
    (train_x, train_y), (test_x, test_y) = load_arrays(str(found), verify)
    # Default: every example of the files (60,000 / 10,000 for the real ones).
    n_train = train_size if train_size is not None else opts.get("train_size", len(train_y))
    n_held = heldout_size if heldout_size is not None else opts.get("heldout", len(test_y))
    for field, n, total in (("train_size", n_train, len(train_y)), ("heldout", n_held, len(test_y))):
        if not 0 < n <= total:
            raise BadInput(f"dataset: {KIND} {field}={n} must be in [1, {total}] (the files hold {total})")
    if n_train < len(train_y):
        keep = subset(len(train_y), n_train, 0)
        train_x, train_y = train_x[keep], train_y[keep]
    if n_held < len(test_y):
        keep = subset(len(test_y), n_held, 1)
        test_x, test_y = test_x[keep], test_y[keep]
    # Sizes other than the real files' are named (a fixture's too), so get_dataset(name)
    # rebuilds the same data and runs on different data have different names.
    name = canonical_name(n_train, n_held, directory, verify)
    return Dataset(name, NUM_CLASSES, n_train, n_held, RESOLUTION, IdxSource(name, (train_x, train_y), (test_x, test_y)),
                   channels=1, pixel_stats=((PIXEL_MEAN,), (PIXEL_STD,)))


# ---------------------------------------------------------------- fetch

def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise RuntimeFailure(f"fetch: `{cmd[0]}` is not installed (this needs Debian or Ubuntu); or copy the "
                             f"four Fashion-MNIST IDX files into a folder and use {KIND}:dir=FOLDER") from None
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"fetch: `{' '.join(cmd)}` took over 15 minutes; check the network and retry") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()
             and not ln.startswith("W: Download is performed unsandboxed")]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def _download(tmp: Path, echo) -> Path:
    """apt-get download the package into tmp (running `apt-get update` first when the
    package lists lack it and we are root); the .deb's path."""
    cmd = ["apt-get", "download", PACKAGE]
    proc = _run(cmd, tmp)
    if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        echo(f"fetch: `apt-get download` failed ({_last_line(proc)}); running `apt-get update` and retrying")
        _run(["apt-get", "update", "-qq"], tmp)
        proc = _run(cmd, tmp)
    if proc.returncode != 0:
        raise RuntimeFailure(f"fetch: `apt-get download {PACKAGE}` failed ({_last_line(proc)}); "
                             "check that the Debian archive is reachable (and `sudo apt-get update`), then retry")
    debs = sorted(tmp.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise RuntimeFailure(f"fetch: apt-get download left no {PACKAGE}_*.deb in {tmp}")
    return debs[-1]


def fetch(spec: str = KIND, *, echo=print) -> Path:
    """Make the four files available and verified; returns their folder.

    Already there (the installed package, the cache, or `dir=`) and intact: nothing is
    downloaded. Otherwise the package is downloaded and unpacked without root, and the
    files are moved into `dir=` or the cache; then every file is verified."""
    kind, _, options = spec.partition(":")
    if kind.strip().lower() != KIND:
        raise BadInput(f"fetch: only {KIND} can be fetched (got {spec!r}); other sources are local folders")
    opts = parse_options(options)
    directory, verify = opts.get("dir"), opts.get("verify", True)
    candidates = [Path(directory)] if directory else [INSTALLED_DIR, cache_dir()]
    for d in candidates:
        if _complete(d):
            try:
                load_arrays(str(d), verify)
                echo(f"{KIND}: already present and verified in {d}; nothing to fetch")
                return d
            except BadInput as err:
                if d == INSTALLED_DIR:
                    raise
                echo(f"{KIND}: {err}; fetching again")
    dest = candidates[-1]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fashion-mnist-", dir=dest.parent) as t:
        tmp = Path(t)
        echo(f"{KIND}: downloading the Debian package {PACKAGE} (~31 MB)")
        deb = _download(tmp, echo)
        proc = _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], tmp)
        if proc.returncode != 0:
            raise RuntimeFailure(f"fetch: `dpkg-deb -x {deb.name}` failed ({_last_line(proc)})")
        unpacked = tmp / "root" / INSTALLED_DIR.relative_to("/")
        if not _complete(unpacked):
            raise RuntimeFailure(f"fetch: {deb.name} does not hold the four IDX files under {INSTALLED_DIR}")
        load_arrays.cache_clear()
        load_arrays(str(unpacked), True)  # verify before anything replaces the destination's files
        for stem in SHA256:
            for old in (dest / stem, dest / (stem + ".gz")):
                old.unlink(missing_ok=True)
            src = _file_in(unpacked, stem)
            shutil.move(str(src), str(dest / src.name))
    load_arrays.cache_clear()
    load_arrays(str(dest), verify)
    echo(f"{KIND}: verified the SHA-256 of the four files in {dest}")
    return dest
