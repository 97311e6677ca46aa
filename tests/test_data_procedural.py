"""The built-in procedural (IFS fractal) dataset: determinism, splits, scale, specs."""
from __future__ import annotations

import numpy as np
import pytest

from scaling.data import get_dataset
from scaling.data.hashing import key, permute
from scaling.errors import BadInput

SMALL = "procedural:classes=10,train_size=5000,heldout=300,res=16"


def test_image_is_a_function_of_index_alone():
    src = get_dataset(SMALL).source
    batch, labels = src.read(0, np.array([3, 17, 4000, 9]), 16)
    alone, _ = src.read(0, np.array([17]), 16)
    np.testing.assert_array_equal(batch[1], alone[0])  # same pixels whatever the batch
    again, _ = get_dataset(SMALL).source.read(0, np.array([9]), 16)  # fresh object
    np.testing.assert_array_equal(batch[3], again[0])
    assert batch.dtype == np.uint8 and batch.shape == (4, 16, 16, 3)
    assert list(labels) == [3, 7, 0, 9]


def test_images_are_varied_and_not_degenerate():
    images, labels = get_dataset(SMALL).source.read(0, np.arange(200), 16)
    flat = images.reshape(200, -1).astype(np.float32)
    assert len({im.tobytes() for im in images}) == 200
    assert np.all(flat.std(axis=1) > 5)  # every image has structure, not a flat colour
    # same class, different instances differ; classes are balanced
    assert not np.array_equal(images[0], images[10])
    assert np.bincount(labels, minlength=10).tolist() == [20] * 10


def test_heldout_is_disjoint_from_train_by_construction():
    src = get_dataset(SMALL).source
    train, _ = src.read(0, np.arange(300), 16)
    held, _ = src.read(1, np.arange(300), 16)
    assert not {t.tobytes() for t in train} & {h.tobytes() for h in held}
    # the instance keys: one bijective hash of (2 * index + split), so never equal
    idx = np.arange(100_000)
    k_train, k_held = key(0, 0xDA7A, 2 * idx), key(0, 0xDA7A, 2 * idx + 1)
    assert len(np.intersect1d(k_train, k_held)) == 0


def test_seed_changes_the_classes_and_resolution_is_configurable():
    a, _ = get_dataset(SMALL).source.read(0, np.arange(4), 16)
    b, _ = get_dataset(SMALL, seed=1).source.read(0, np.arange(4), 16)
    assert not np.array_equal(a, b)
    ds = get_dataset("procedural", resolution=24)
    assert ds.native_resolution == 24 and ds.num_classes == 100
    big, _ = ds.source.read(0, np.arange(2), 48)  # renders at any requested size
    assert big.shape == (2, 48, 48, 3)


def test_billions_of_examples_need_no_storage():
    ds = get_dataset("procedural:train_size=2000000000")
    assert ds.train_size == 2_000_000_000
    images, labels = ds.source.read(0, np.array([0, 1_999_999_999]), 32)
    assert images.shape == (2, 32, 32, 3) and labels[1] == 1_999_999_999 % 100
    p = permute(np.arange(1000) + 1_999_000_000, 2_000_000_000, key(5))
    assert p.min() >= 0 and p.max() < 2_000_000_000 and len(np.unique(p)) == 1000


@pytest.mark.parametrize("n", [1, 2, 3, 31, 1000, 4097])
def test_permute_is_a_permutation(n):
    out = permute(np.arange(n), n, key(1, 2))
    assert sorted(out) == list(range(n))


def test_spec_options_and_canonical_name():
    ds = get_dataset("procedural:classes=7,train_size=99,heldout=5,res=8,seed=3,perturb=0.2,noise=0,rotation=10,hue_jitter=0.2")
    assert (ds.num_classes, ds.train_size, ds.heldout_size, ds.native_resolution) == (7, 99, 5, 8)
    assert ds.name == "procedural:classes=7,train_size=99,heldout=5,res=8,seed=3,perturb=0.2,noise=0,rotation=10,hue_jitter=0.2"
    assert get_dataset(ds.name).name == ds.name  # the stored name rebuilds the same data
    assert get_dataset("procedural:classes=7", num_classes=9).num_classes == 9  # keywords win


@pytest.mark.parametrize("spec", ["procedural:colour=3", "procedural:classes=x", "procedural:classes=1",
                                  "procedural:train_size=0", "procedural:noise=-1", "procedural:classes"])
def test_bad_procedural_specs(spec):
    with pytest.raises(BadInput, match="^dataset: "):
        get_dataset(spec)


def test_render_cache_gives_the_same_bytes_and_respects_its_budget():
    import pickle

    from scaling.data.procedural import ProceduralSource

    src = get_dataset(SMALL).source  # 5,000 x 16 x 16 x 3 bytes: fits the default budget
    idx = np.array([5, 17, 5, 4999, 0])
    fresh = src.render(0, idx, 16)
    first, labels = src.read(0, idx, 16)
    again, _ = src.read(0, idx[::-1], 16)  # served from the cache
    np.testing.assert_array_equal(first, fresh)
    np.testing.assert_array_equal(again, fresh[::-1])
    assert list(labels) == [5, 7, 5, 9, 0]
    assert src._cache[0, 16][1].sum() == 4  # four distinct indices rendered once
    out_of_range, _ = src.read(0, np.array([5000, 3]), 16)  # beyond the split: rendered, not cached
    np.testing.assert_array_equal(out_of_range[1], src.render(0, np.array([3]), 16)[0])
    tiny = ProceduralSource(src.config, cache_bytes=1000)  # budget too small: no cache
    np.testing.assert_array_equal(tiny.read(0, idx, 16)[0], fresh)
    assert tiny._cache[0, 16] is None
    assert pickle.loads(pickle.dumps(src))._cache == {}  # workers get no copy of the cache
