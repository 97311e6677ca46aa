"""Fashion-MNIST: IDX parsing on a tiny fixture, verification, errors, the grayscale
pipeline, configurable augmentation, the CLI, and (when the Debian package can be had)
the real files end to end.

The fixture is built here: real IDX headers (big-endian magic, N, 28, 28) around
random pixels, gzipped like Debian's files; its hashes are not Fashion-MNIST's, so it
is read with `verify=false`.
"""
from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.data import get_dataset, heldout_batches, train_iterator
from scaling.data import fashion
from scaling.errors import BadInput

REPO = Path(__file__).resolve().parents[1]


def idx_images(pixels: np.ndarray) -> bytes:
    n, rows, cols = pixels.shape
    return struct.pack(">IIII", 0x00000803, n, rows, cols) + pixels.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_fixture(directory: Path, n_train: int = 64, n_test: int = 37, *, gz: bool = True, seed: int = 0) -> Path:
    """Four IDX files of random 28x28 images whose labels are index % 10."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files = {f"{prefix}-images-idx3-ubyte": idx_images(rng.integers(0, 256, (n, 28, 28))),
                 f"{prefix}-labels-idx1-ubyte": idx_labels(np.arange(n) % 10)}
        for name, data in files.items():
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
    return directory


@pytest.fixture
def fixture_dir(tmp_path):
    return write_fixture(tmp_path / "fm")


def spec(directory: Path, extra: str = "") -> str:
    return f"fashion-mnist:dir={directory},verify=false" + (f",{extra}" if extra else "")


spec_of = spec  # for tests with a local named `spec`


# ------------------------------------------------------------------------ the source

def test_fixture_reads_as_grayscale_with_its_sizes_and_a_rebuildable_name(fixture_dir):
    ds = get_dataset(spec(fixture_dir))
    assert (ds.num_classes, ds.train_size, ds.heldout_size, ds.native_resolution, ds.channels) == (10, 64, 37, 28, 1)
    assert ds.name == f"fashion-mnist:train_size=64,heldout=37,dir={fixture_dir},verify=false"
    assert get_dataset(ds.name).name == ds.name
    pixels, labels = ds.source.read(0, np.array([0, 5, 63]), 28)
    assert pixels.shape == (3, 28, 28, 1) and pixels.dtype == np.uint8
    assert labels.tolist() == [0, 5, 3]
    # The bytes are the IDX payload, row-major, as written.
    raw = gzip.decompress((fixture_dir / "train-images-idx3-ubyte.gz").read_bytes())
    np.testing.assert_array_equal(pixels[1, :, :, 0], np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[5])
    # Resized on read like every real source (shorter side to R).
    assert ds.source.read(1, np.array([1, 2]), 16)[0].shape == (2, 16, 16, 1)


def test_plain_and_gzipped_files_read_the_same(tmp_path):
    a = get_dataset(spec(write_fixture(tmp_path / "gz", gz=True)))
    b = get_dataset(spec(write_fixture(tmp_path / "raw", gz=False)))
    idx = np.arange(10)
    np.testing.assert_array_equal(a.source.read(0, idx, 28)[0], b.source.read(0, idx, 28)[0])


def test_subsets_are_fixed_and_named(fixture_dir):
    ds = get_dataset(spec(fixture_dir, "train_size=20,heldout=10"))
    assert (ds.train_size, ds.heldout_size) == (20, 10)
    again = get_dataset(ds.name)
    np.testing.assert_array_equal(ds.source.read(0, np.arange(20), 28)[1], again.source.read(0, np.arange(20), 28)[1])
    full = get_dataset(spec(fixture_dir))
    keep = fashion.subset(64, 20, 0)
    assert len(set(keep.tolist())) == 20 and keep.max() < 64
    np.testing.assert_array_equal(ds.source.read(0, np.arange(20), 28)[0], full.source.read(0, keep, 28)[0])
    # Keyword overrides (as the sweep runner passes them) act like the options.
    assert get_dataset(spec(fixture_dir), train_size=20).train_size == 20


def test_verification_refuses_files_that_are_not_fashion_mnist(fixture_dir):
    with pytest.raises(BadInput) as err:
        get_dataset(f"fashion-mnist:dir={fixture_dir}")
    msg = str(err.value)
    assert "\n" not in msg and "SHA-256" in msg and f"scaling data fetch fashion-mnist:dir={fixture_dir}" in msg


def _corrupt(directory: Path, name: str, data: bytes) -> None:
    (directory / f"{name}.gz").write_bytes(gzip.compress(data))


@pytest.mark.parametrize("name,data,problem", [
    ("train-images-idx3-ubyte", struct.pack(">IIII", 0x801, 64, 28, 28) + bytes(64 * 784), "magic 0x00000801"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 0x803, 64, 28, 28) + bytes(100), "truncated"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 0x803, 1, 32, 32) + bytes(1024), "32x32"),
    ("train-labels-idx1-ubyte", struct.pack(">II", 0x801, 63) + bytes(63), "64 images but"),
    ("train-labels-idx1-ubyte", struct.pack(">II", 0x801, 64) + bytes([12] * 64), "label 12"),
    ("t10k-labels-idx1-ubyte", b"\x00\x00", "shorter than an IDX header"),
])
def test_bad_files_are_one_line_bad_input_naming_the_file_and_the_fix(fixture_dir, name, data, problem):
    _corrupt(fixture_dir, name, data)
    fashion.load_arrays.cache_clear()
    with pytest.raises(BadInput) as err:
        get_dataset(spec(fixture_dir))
    msg = str(err.value)
    assert "\n" not in msg and problem in msg and "scaling data fetch fashion-mnist:dir=" in msg


def test_a_broken_gzip_stream_is_bad_input(fixture_dir):
    (fixture_dir / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(BadInput, match="t10k-images-idx3-ubyte.gz: unreadable"):
        get_dataset(spec(fixture_dir))


def test_missing_files_say_to_fetch(tmp_path, monkeypatch):
    with pytest.raises(BadInput, match=r"lacks train-images-idx3-ubyte.*run `scaling data fetch fashion-mnist:dir="):
        get_dataset(f"fashion-mnist:dir={tmp_path}")
    monkeypatch.setattr(fashion, "INSTALLED_DIR", tmp_path / "not-installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(BadInput, match=r"run `scaling data fetch fashion-mnist`$"):
        get_dataset("fashion-mnist")


@pytest.mark.parametrize("bad,field", [
    ("fashion-mnist:size=3", "unknown fashion-mnist option"),
    ("fashion-mnist:train_size=ten", "not a whole number"),
    ("fashion-mnist:verify=maybe", "verify=true or verify=false"),
])
def test_bad_options(bad, field):
    with pytest.raises(BadInput, match=field):
        get_dataset(bad)


def test_sizes_out_of_range_and_overrides_refused(fixture_dir):
    with pytest.raises(BadInput, match=r"train_size=65 must be in \[1, 64\]"):
        get_dataset(spec(fixture_dir, "train_size=65"))
    with pytest.raises(BadInput, match="num_classes"):
        get_dataset(spec(fixture_dir), num_classes=100)
    with pytest.raises(BadInput, match="resolution"):
        get_dataset(spec(fixture_dir), resolution=32)


def test_the_default_places_are_the_package_then_the_cache(tmp_path, monkeypatch):
    installed, cache = tmp_path / "usr-share", tmp_path / "xdg"
    monkeypatch.setattr(fashion, "INSTALLED_DIR", installed)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    write_fixture(cache / "convnet-scaling" / "fashion-mnist", seed=1)
    assert fashion.locate() == cache / "convnet-scaling" / "fashion-mnist"
    write_fixture(installed, seed=2)
    assert fashion.locate() == installed  # an installed package is used as it is


# ------------------------------------------------------------------------ the pipeline

def test_grayscale_batches_are_one_channel_standardised_and_exactly_once(fixture_dir):
    ds = get_dataset(spec(fixture_dir))
    it = train_iterator(ds, global_batch_size=8, seed=2, resolution=28,
                        augment={"crop_pad": 4, "pad_mode": "zero"})
    batches = [next(it) for _ in range(16)]  # 2 epochs of 64
    assert batches[0]["image"].shape == (8, 28, 28, 1) and batches[0]["image"].dtype == np.float32
    for e in range(2):
        seen = np.concatenate([b["index"] for b in batches[e * 8:(e + 1) * 8]])
        assert sorted(seen.tolist()) == list(range(64))
    held = list(heldout_batches(ds, batch_size=8, resolution=28))
    x = np.concatenate([b["image"][b["mask"]] for b in held])
    raw = ds.source.read(1, np.arange(37), 28)[0].astype(np.float64) / 255
    np.testing.assert_allclose(x, (raw - fashion.PIXEL_MEAN) / fashion.PIXEL_STD, rtol=1e-5, atol=1e-5)


def test_heldout_batches_do_not_depend_on_augmentation(fixture_dir):
    """Held-out evaluation is never augmented: its batches are the same bytes whatever
    the training stream's augmentation (there is no augment argument to give it)."""
    import inspect

    assert "augment" not in inspect.signature(heldout_batches).parameters
    ds = get_dataset(spec(fixture_dir))
    plain = [b["image"] for b in heldout_batches(ds, batch_size=8, resolution=28)]
    for aug in ({}, {"crop_pad": 0, "flip": False}, {"crop_pad": 6, "pad_mode": "zero"}):
        it = train_iterator(ds, global_batch_size=8, seed=0, resolution=28, augment=aug)
        next(it)  # a training stream with this augmentation exists alongside
        for a, b in zip(plain, (b["image"] for b in heldout_batches(ds, batch_size=8, resolution=28)), strict=True):
            np.testing.assert_array_equal(a, b)
        it.close()


# ------------------------------------------------------------------------ augmentation

def test_augmentation_options_do_what_they_say():
    from scaling.data import hashing
    from scaling.data.images import pad_crop_flip

    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (64, 12, 12, 1)).astype(np.uint8)  # no zero pixels
    keys = hashing.key(7, np.arange(64))
    assert pad_crop_flip(x, keys, pad=0, flip=False) is x
    flipped = pad_crop_flip(x, keys, pad=0, flip=True)
    mirrored = [np.array_equal(f, o[:, ::-1]) and not np.array_equal(f, o) for f, o in zip(flipped, x)]
    kept = [np.array_equal(f, o) for f, o in zip(flipped, x)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 16 < sum(mirrored) < 48
    cropped = pad_crop_flip(x, keys, pad=3, flip=False, pad_mode="zero")
    for c, o in zip(cropped, x):  # every crop is a shifted window of the zero-padded image
        padded = np.pad(o, ((3, 3), (3, 3), (0, 0)))
        assert any(np.array_equal(c, padded[dy:dy + 12, dx:dx + 12]) for dy in range(7) for dx in range(7))
    assert (cropped == 0).any()  # black borders came in
    reflected = pad_crop_flip(x, keys, pad=3, flip=False)
    assert not (reflected == 0).any()
    # The crop draws do not depend on the flip option.
    both = pad_crop_flip(x, keys, pad=3, flip=True, pad_mode="zero")
    for b, c in zip(both, cropped):
        assert np.array_equal(b, c) or np.array_equal(b, c[:, ::-1])


def test_default_augmentation_is_the_stream_it_always_was():
    """augment={} (and None) reproduce the pre-option stream: pad R/8, reflect, flip."""
    from scaling.data import hashing
    from scaling.data.images import pad_crop_flip

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 16, 16, 3)).astype(np.uint8)
    keys = hashing.key(3, np.arange(32))
    ref = pad_crop_flip(x, keys)
    for pad, mode in ((2, "reflect"), (None, "reflect")):
        np.testing.assert_array_equal(pad_crop_flip(x, keys, pad=pad, flip=True, pad_mode=mode), ref)
    # Written out: reflect-pad by 2 then crop at (dy, dx), flip where the third draw >= 0.5.
    draws = hashing.uniform(keys[:, None], np.arange(3))
    for i in range(32):
        dy, dx = (draws[i, :2] * 5).astype(int)
        want = np.pad(x[i], ((2, 2), (2, 2), (0, 0)), mode="reflect")[dy:dy + 16, dx:dx + 16]
        if draws[i, 2] >= 0.5:
            want = want[:, ::-1]
        np.testing.assert_array_equal(ref[i], want)


def test_augmented_stream_resumes_exactly_and_depends_on_the_config(fixture_dir):
    ds = get_dataset(spec(fixture_dir))
    aug = {"crop_pad": 3, "pad_mode": "zero", "flip": True}
    make = lambda a=aug: train_iterator(ds, global_batch_size=8, seed=5, resolution=28, augment=a)  # noqa: E731
    ref = [next(it) for it in [make()] for _ in range(20)]
    it = make()
    got = [next(it) for _ in range(7)]
    state = json.loads(json.dumps(it.get_state()))
    assert state["augment"] == {"crop_pad": 3, "pad_mode": "zero"}
    fresh = make()
    fresh.set_state(state)
    got += [next(fresh) for _ in range(13)]
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["index"], b["index"])
    other = make({"crop_pad": 1})
    with pytest.raises(BadInput, match="augment"):
        other.set_state(state)
    plain = make({"crop_pad": 0, "flip": False})
    first = next(plain)
    assert not np.array_equal(first["image"], ref[0]["image"])
    np.testing.assert_array_equal(first["index"], ref[0]["index"])  # augmentation never changes the order


def test_default_augmentation_keeps_the_old_iterator_state():
    """A state saved before the augment option existed (no 'augment' key) restores."""
    from test_data_pipeline import index_dataset

    it = train_iterator(index_dataset(), global_batch_size=8, seed=1, resolution=6)
    assert "augment" not in it.get_state()
    it.set_state({"step": 3, **{k: v for k, v in it.get_state().items() if k != "step"}})


@pytest.mark.parametrize("aug,field", [
    ({"crop_pd": 4}, "augment.crop_pd: unknown field; did you mean 'crop_pad'?"),
    ({"crop_pad": "4"}, "augment.crop_pad"),
    ({"crop_pad": -1}, "augment.crop_pad"),
    ({"crop_pad": 2.5}, "augment.crop_pad"),
    ({"flip": "yes"}, "augment.flip"),
    ({"pad_mode": "mirror"}, "augment.pad_mode"),
    ("crop", "augment: must be a table"),
    (None, "augment: must be a table"),
])
def test_bad_augment_values_are_refused_by_the_train_config(aug, field):
    from scaling.train.config import TrainConfig

    with pytest.raises(BadInput) as err:
        TrainConfig(depth_mult=0.25, width_mult=0.03125, epochs=1, augment=aug).validate()
    assert field in str(err.value) and "\n" not in str(err.value)


def test_a_crop_margin_as_large_as_the_image_is_refused(fixture_dir):
    ds = get_dataset(spec(fixture_dir))
    with pytest.raises(BadInput, match="augment.crop_pad: 28 px"):
        train_iterator(ds, global_batch_size=8, seed=0, resolution=28, augment={"crop_pad": 28})


def test_augment_is_an_identity_field_that_leaves_default_trial_ids_alone():
    from scaling.train.config import IDENTITY_FIELDS, SHAPE_FIELDS, identity_of

    assert "augment" in IDENTITY_FIELDS and "augment" not in SHAPE_FIELDS
    assert identity_of({"lr": 0.4, "augment": {}}) == {"lr": 0.4}
    assert identity_of({"lr": 0.4, "augment": {"flip": False}}) == {"lr": 0.4, "augment": {"flip": False}}


# ------------------------------------------------------------------------ counts and models

def test_counts_and_params_follow_the_input_channels():
    import jax
    from flax import traverse_util

    from scaling.models.config import family_config
    from scaling.models.counts import count
    from scaling.models.nfnet import init_params

    cfg = family_config(0.25, 0.03125, num_classes=10)
    rgb, gray = count(cfg, 28), count(cfg, 28, channels=1)
    stem0 = cfg.stem_widths[0]
    assert rgb.params - gray.params == 2 * 9 * stem0  # the first stem conv's kernel only
    assert rgb.macs - gray.macs == 2 * 9 * stem0 * 14 * 14  # 28 px, stride 2: 14 x 14 outputs
    assert gray.channels == 1 and rgb.channels == 3
    params = init_params(cfg, jax.random.key(0), 28, channels=1)
    flat = traverse_util.flatten_dict(params)
    assert flat[("stem_conv0", "kernel")].shape == (3, 3, 1, stem0)
    assert sum(v.size for v in flat.values()) == gray.params
    with pytest.raises(BadInput, match="channels"):
        count(cfg, 28, channels=0)


# ------------------------------------------------------------------------ ArrayRecord

def test_prepare_converts_it_to_arrayrecord_that_reads_back_the_same_pixels(fixture_dir, tmp_path):
    out = cli("data", "prepare", spec(fixture_dir), str(tmp_path / "ar"), "--shards", "3", "--json")
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout)
    assert meta["counts"] == {"train": 64, "heldout": 37} and meta["channels"] == 1
    ar, src = get_dataset(f"arrayrecord:{tmp_path / 'ar'}"), get_dataset(spec(fixture_dir))
    assert (ar.train_size, ar.heldout_size, ar.num_classes, ar.channels, ar.native_resolution) == (64, 37, 10, 1, 28)
    assert ar.pixel_stats == src.pixel_stats
    assert len(list((tmp_path / "ar").glob("train-*-of-00003.array_record"))) == 3
    for split, n in ((0, 64), (1, 37)):  # the same (image, label) multiset, stored in a shuffled order
        a = ar.source.read(split, np.arange(n), 28)
        b = src.source.read(split, np.arange(n), 28)
        key = lambda px, lab: sorted(x.tobytes() + bytes([y]) for x, y in zip(px, lab))  # noqa: E731
        assert key(*a) == key(*b)
        assert not np.array_equal(a[1], b[1]) or split == 1 and n < 3
    batch = next(train_iterator(ar, global_batch_size=8, seed=0, resolution=28))
    assert batch["image"].shape == (8, 28, 28, 1)


def test_a_sweep_spec_on_grayscale_data_counts_one_channel(fixture_dir):
    from scaling.models.config import family_config
    from scaling.models.counts import count
    from sweeps.spec import expand, parse_spec

    spec = parse_spec({"name": "g", "dataset": spec_of(fixture_dir), "batch_size": 8,
                       "recipe": {"augment": {"crop_pad": 0}},
                       "grid": {"depth_mults": [0.25], "width_mults": [0.03125], "epochs": [1], "lr": [0.1]}})
    (trial,) = expand(spec)
    want = count(family_config(0.25, 0.03125, num_classes=10), 28, channels=1)
    assert (spec.channels, trial.params, trial.flops_per_example) == (1, want.params, want.flops)
    assert trial.config["augment"] == {"crop_pad": 0}
    with pytest.raises(BadInput, match="^recipe.augment.flip"):
        expand(parse_spec({"name": "g", "dataset": spec_of(fixture_dir), "batch_size": 8,
                           "recipe": {"augment": {"flip": "no"}},
                           "grid": {"depth_mults": [0.25], "width_mults": [0.03125], "epochs": [1], "lr": [0.1]}}))


# ------------------------------------------------------------------------ CLI

def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env)


def test_cli_info_on_the_fixture_and_one_line_errors(fixture_dir, tmp_path):
    out = cli("data", "info", spec(fixture_dir), "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert (row["train_size"], row["heldout_size"], row["num_classes"], row["native_resolution"], row["channels"]) \
        == (64, 37, 10, 28, 1)
    out = cli("data", "info", f"fashion-mnist:dir={tmp_path / 'nowhere'}")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "run `scaling data fetch fashion-mnist:dir=" in out.stderr
    out = cli("data", "fetch", "procedural")
    assert out.returncode == 2 and "only fashion-mnist can be fetched" in out.stderr


def test_fetch_into_a_folder_that_already_has_verified_files_downloads_nothing(fixture_dir):
    out = cli("data", "fetch", spec(fixture_dir), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dir"] == str(fixture_dir)
    assert "nothing to fetch" in out.stderr


def test_fetch_without_apt_is_a_one_line_runtime_failure(tmp_path):
    import os

    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}  # no apt-get, no dpkg-deb
    out = subprocess.run([sys.executable, "-m", "study.cli", "data", "fetch", f"fashion-mnist:dir={tmp_path / 'd'}"],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("error: fetch: `apt-get`")


# ------------------------------------------------------------------------ the real files

@pytest.fixture(scope="module")
def real_dir():
    """The real files: already installed or fetched (`make test` fetches them first), else
    fetched here; skipped with the reason only when the Debian archive cannot be reached."""
    from scaling.errors import RuntimeFailure

    try:
        return fashion.locate()
    except BadInput:
        pass
    try:
        return fashion.fetch(echo=lambda s: None)
    except RuntimeFailure as err:
        pytest.skip(f"Fashion-MNIST unavailable and cannot be fetched: {err}")


def test_real_files_end_to_end(real_dir):
    """The four real files: hashes, sizes, balance, the info command, a batch of each split."""
    import hashlib

    for stem, digest in fashion.SHA256.items():
        path = fashion._file_in(real_dir, stem)
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, stem
    out = cli("data", "info", "fashion-mnist", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"name": "fashion-mnist", "num_classes": 10, "train_size": 60000,
                                      "heldout_size": 10000, "native_resolution": 28, "channels": 1}
    ds = get_dataset("fashion-mnist")
    (tx, ty), (vx, vy) = ds.source.splits
    assert np.bincount(ty).tolist() == [6000] * 10 and np.bincount(vy).tolist() == [1000] * 10
    x = tx.astype(np.float64) / 255
    assert abs(x.mean() - fashion.PIXEL_MEAN) < 1e-9 and abs(x.std() - fashion.PIXEL_STD) < 1e-9
    batch = next(train_iterator(ds, global_batch_size=64, seed=0, resolution=28))
    assert batch["image"].shape == (64, 28, 28, 1) and abs(float(batch["image"].mean())) < 1.0
    held = next(iter(heldout_batches(ds, batch_size=256, resolution=28)))
    assert held["image"].shape == (256, 28, 28, 1) and held["mask"].all()
