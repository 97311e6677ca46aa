"""Real sources (folder, ArrayRecord, CIFAR, TFDS) and `scaling data prepare`, on fixtures made here."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from scaling.data import get_dataset, heldout_batches, train_iterator
from scaling.errors import BadInput


def make_folder(root, classes=3, per_class=4, val=2, sizes=((20, 14), (9, 12))):
    """ROOT/train/cK/*.png|jpg (mixed sizes) and ROOT/val/cK/*.png; colour encodes the class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                pixels = np.full((h, w, 3), 40 + 80 * c, np.uint8) + rng.integers(0, 10, (h, w, 3), dtype=np.uint8)
                ext = "jpg" if i % 2 else "png"
                Image.fromarray(pixels).save(d / f"{i}.{ext}")
    return root


def test_folder_dataset_reads_all_splits_with_labels(tmp_path):
    ds = get_dataset(f"folder:{make_folder(tmp_path / 'imgs')}")
    assert (ds.num_classes, ds.train_size, ds.heldout_size) == (3, 12, 6)
    assert ds.name == f"folder:{tmp_path / 'imgs'}"
    batches = list(heldout_batches(ds, batch_size=4, resolution=8))
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert sorted(labels) == [0, 0, 1, 1, 2, 2]
    # the class colour survives decoding and resizing (no augmentation on held-out)
    for b in batches:
        means = b["image"][b["mask"]].mean(axis=(1, 2, 3))
        assert np.all(np.diff(means[np.argsort(b["label"][b["mask"]])]) >= -0.05)
    batch = next(train_iterator(ds, global_batch_size=6, seed=0, resolution=8))
    assert batch["image"].shape == (6, 8, 8, 3)


def test_flat_folder_gets_a_seeded_heldout_split(tmp_path):
    root = make_folder(tmp_path / "imgs") / "train"
    ds = get_dataset(f"folder:{root}", heldout_size=3, seed=1)
    assert (ds.train_size, ds.heldout_size) == (9, 3)
    train, held = ds.source.splits
    assert not set(train) & set(held)
    assert get_dataset(f"folder:{root}", heldout_size=3, seed=1).source.splits == ds.source.splits


def test_folder_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not a directory"):
        get_dataset(f"folder:{tmp_path / 'missing'}")
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "empty").mkdir()
    with pytest.raises(BadInput, match="empty.*no .jpg"):
        get_dataset(f"folder:{root}")
    (root / "train" / "empty").rmdir()
    corrupt = root / "train" / "c1" / "0.png"
    corrupt.write_bytes(b"not an image")
    ds = get_dataset(f"folder:{root}")
    with pytest.raises(BadInput, match=r"0\.png: not a readable image"):
        list(heldout_batches(ds, batch_size=4, resolution=8))  # val is fine...
        ds.source.read(0, np.arange(ds.train_size), 8)  # ...train has the bad file
    with pytest.raises(BadInput, match="num_classes"):
        get_dataset(f"folder:{root}", num_classes=2)


def test_prepare_writes_shuffled_shards_that_read_back(tmp_path):
    src = make_folder(tmp_path / "imgs")
    out = tmp_path / "ar"
    cli = subprocess.run([sys.executable, "-m", "study.cli", "data", "prepare", str(src), str(out), "--shards", "2", "--json"],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    meta = json.loads(cli.stdout)
    assert meta["counts"] == {"train": 12, "heldout": 6} and meta["skipped_corrupt"] == 0
    assert len(list(out.glob("train-*.array_record"))) == 2
    ds = get_dataset(f"arrayrecord:{out}")
    folder = get_dataset(f"folder:{src}")
    assert (ds.num_classes, ds.train_size, ds.heldout_size) == (3, 12, 6)
    pixels, labels = ds.source.read(0, np.arange(12), 8)
    ref_pixels, ref_labels = folder.source.read(0, np.arange(12), 8)
    assert sorted(labels) == sorted(ref_labels)
    assert list(labels) != list(ref_labels)  # stored in random order, not folder order
    # same images, as a multiset (identical decode path)
    key = lambda p: p.tobytes()
    assert sorted(map(key, pixels)) == sorted(map(key, ref_pixels))
    glob_ds = get_dataset(f"arrayrecord:{out}/train-*.array_record")
    assert (glob_ds.train_size, glob_ds.heldout_size) == (12, 6)
    # never overwrite: a second run into the same directory is refused with exit 2
    again = subprocess.run([sys.executable, "-m", "study.cli", "data", "prepare", str(src), str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr and again.stderr.count("\n") == 1


def test_prepare_skips_and_counts_corrupt_images(tmp_path):
    from scaling.data.prepare import prepare_folder

    src = make_folder(tmp_path / "imgs")
    (src / "train" / "c0" / "1.jpg").write_bytes(b"\xff\xd8 truncated")
    meta = prepare_folder(str(src), str(tmp_path / "ar"), shards=1)
    assert meta["counts"]["train"] == 11 and meta["skipped_corrupt"] == 1
    assert meta["skipped_examples"][0].endswith("c0/1.jpg")
    with pytest.raises(BadInput, match="1.jpg: not a readable image"):
        prepare_folder(str(src), str(tmp_path / "ar2"), shards=1, strict=True)


def test_arrayrecord_label_out_of_range(tmp_path):
    from scaling.data.prepare import prepare_folder

    out = tmp_path / "ar"
    prepare_folder(str(make_folder(tmp_path / "imgs")), str(out), shards=1)
    meta = json.loads((out / "dataset.json").read_text())
    meta["num_classes"] = 2  # labels 2 now lie outside
    (out / "dataset.json").write_text(json.dumps(meta))
    ds = get_dataset(f"arrayrecord:{out}")
    with pytest.raises(BadInput, match=r"label 2 is outside \[0, 2\)"):
        ds.source.read(0, np.arange(12), 8)
    with pytest.raises(BadInput, match="no ArrayRecord shards"):
        get_dataset(f"arrayrecord:{tmp_path / 'nothing'}")


def write_cifar(root, fine=False, n=6, data=None, labels=None):
    root.mkdir(parents=True, exist_ok=True)
    names = ["train", "test"] if fine else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    key = b"fine_labels" if fine else b"labels"
    classes = 100 if fine else 10
    for j, name in enumerate(names):
        d = data if data is not None else np.full((n, 3072), j, np.uint8)
        l = labels if labels is not None else [(j + i) % classes for i in range(len(d))]
        with open(root / name, "wb") as f:
            pickle.dump({b"data": d, key: l, b"batch_label": b"x"}, f)
    return root


@pytest.mark.parametrize("fine", [False, True])
def test_cifar_reads_python_batches(tmp_path, fine):
    root = write_cifar(tmp_path / "c", fine=fine)
    ds = get_dataset(f"cifar{'100' if fine else '10'}:{root}")
    files = 1 if fine else 5
    assert (ds.num_classes, ds.train_size, ds.heldout_size, ds.native_resolution) == (100 if fine else 10, 6 * files, 6, 32)
    pixels, labels = ds.source.read(1, np.arange(6), 16)
    assert pixels.shape == (6, 16, 16, 3) and np.all(pixels == (1 if fine else 5))
    assert list(labels) == [(files + i) % ds.num_classes for i in range(6)]


def test_cifar_bad_input(tmp_path):
    with pytest.raises(BadInput, match="data_batch_1 is missing"):
        get_dataset(f"cifar10:{write_cifar(tmp_path / 'a', fine=True)}")
    root = tmp_path / "b"
    write_cifar(root)
    (root / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(BadInput, match="data_batch_3: not a CIFAR-10 python batch"):
        get_dataset(f"cifar10:{root}")
    with pytest.raises(BadInput, match=r"expected uint8 \[N, 3072\]"):
        get_dataset(f"cifar10:{write_cifar(tmp_path / 'c', data=np.zeros((4, 100), np.uint8))}")
    with pytest.raises(BadInput, match="outside"):
        get_dataset(f"cifar10:{write_cifar(tmp_path / 'd', labels=[0, 1, 2, 3, 4, 12])}")
    with pytest.raises(BadInput, match="5 labels for 6 images"):
        get_dataset(f"cifar10:{write_cifar(tmp_path / 'e', labels=[0, 1, 2, 3, 4])}")


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    root = write_cifar(tmp_path / "a")
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [subprocess.Popen]}, f)
    with pytest.raises(BadInput, match="refusing"):
        get_dataset(f"cifar10:{root}")


def test_tfds_when_installed():
    tfds = pytest.importorskip("tensorflow_datasets")
    del tfds
    with pytest.raises(BadInput, match="not prepared"):
        get_dataset("tfds:no_such_dataset_xyz")


def test_unknown_spec_is_one_line_bad_input():
    with pytest.raises(BadInput, match="unknown kind"):
        get_dataset("imagenet:/x")
    with pytest.raises(BadInput, match="needs a location"):
        get_dataset("folder:")
    with pytest.raises(BadInput, match="^train_size: only the procedural"):
        get_dataset("cifar10:/x", train_size=100)
