"""Exactly-once, resumable, sharded training streams and held-out iteration."""
from __future__ import annotations

import json

import numpy as np
import pytest

from scaling.data import Dataset, heldout_batches, train_iterator
from scaling.errors import BadInput


class IndexSource:
    """Tiny images that encode their index, so augmentation and order are checkable."""

    def __init__(self, n: int):
        self.n = n

    def __repr__(self):
        return f"IndexSource({self.n})"

    def read(self, split, indices, resolution):
        ramp = np.arange(resolution * resolution * 3).reshape(resolution, resolution, 3)
        pixels = (indices[:, None, None, None] * 7 + ramp[None] + split * 101) % 256
        return pixels.astype(np.uint8), (indices % 5).astype(np.int32)


def index_dataset(n: int = 37, heldout: int = 23) -> Dataset:
    return Dataset(f"index:{n}", 5, n, heldout, 6, IndexSource(n))


def take(it, steps):
    return [next(it) for _ in range(steps)]


def epochs_of(stream: np.ndarray, n: int):
    return [stream[e * n:(e + 1) * n] for e in range(len(stream) // n)]


@pytest.mark.parametrize("n,batch", [(37, 8), (40, 8), (5, 16)])
def test_every_epoch_is_a_permutation_and_epochs_differ(n, batch):
    ds = index_dataset(n)
    steps = (4 * n) // batch + 1
    stream = np.concatenate([b["index"] for b in take(train_iterator(ds, global_batch_size=batch, seed=3, resolution=6), steps)])
    epochs = epochs_of(stream, n)
    assert len(epochs) >= 4
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert any(not np.array_equal(epochs[0], e) for e in epochs[1:])  # reshuffled per epoch


def test_resume_at_random_points_equals_uninterrupted_stream():
    ds, batch, n = index_dataset(37), 8, 37
    total = 30  # ~6.5 epochs
    reference = take(train_iterator(ds, global_batch_size=batch, seed=11, resolution=6), total)
    rng = np.random.default_rng(0)
    for trial in range(3):
        cuts = sorted(rng.choice(np.arange(1, total), size=4, replace=False))
        it, resumed, done = train_iterator(ds, global_batch_size=batch, seed=11, resolution=6), [], 0
        for cut in [*cuts, total]:
            resumed += take(it, cut - done)
            done = cut
            state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
            it.close()
            it = train_iterator(ds, global_batch_size=batch, seed=11, resolution=6)  # from scratch
            it.set_state(state)
        for a, b in zip(reference, resumed, strict=True):
            for key in ("index", "label", "image"):
                np.testing.assert_array_equal(a[key], b[key])
        stream = np.concatenate([b["index"] for b in resumed])
        for e in epochs_of(stream, n):
            assert sorted(e) == list(range(n))


def test_augmentation_is_seeded_and_not_identity():
    from scaling.data.images import normalise

    ds = index_dataset(37)
    a = next(train_iterator(ds, global_batch_size=8, seed=1, resolution=6))
    again = next(train_iterator(ds, global_batch_size=8, seed=1, resolution=6))
    np.testing.assert_array_equal(a["image"], again["image"])
    plain = normalise(ds.source.read(0, a["index"], 6)[0])
    changed = [not np.array_equal(x, y) for x, y in zip(a["image"], plain)]
    assert any(changed)  # crops/flips happened
    assert a["image"].shape == (8, 6, 6, 3)
    assert a["image"].dtype == np.float32 and a["label"].dtype == np.int32 and a["index"].dtype == np.int64


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_partition_each_global_batch(processes):
    ds, batch, n = index_dataset(37), 8, 37
    steps = 20
    per_process = [
        take(train_iterator(ds, global_batch_size=batch, seed=5, resolution=6, process_index=p, process_count=processes), steps)
        for p in range(processes)
    ]
    assert all(b["index"].shape == (batch // processes,) for b in per_process[0])
    global_stream = np.concatenate([np.concatenate([per_process[p][s]["index"] for p in range(processes)]) for s in range(steps)])
    single = np.concatenate([b["index"] for b in take(train_iterator(ds, global_batch_size=batch, seed=5, resolution=6), steps)])
    np.testing.assert_array_equal(global_stream, single)  # the processes' slices tile the global batch
    for e in epochs_of(global_stream, n):
        assert sorted(e) == list(range(n))  # union is the dataset, no overlap


def test_worker_processes_give_the_same_stream_and_state():
    ds = index_dataset(37)
    reference = take(train_iterator(ds, global_batch_size=8, seed=4, resolution=6), 7)
    it = train_iterator(ds, global_batch_size=8, seed=4, resolution=6, worker_count=1)
    first = take(it, 3)
    state = it.get_state()
    it.close()
    resumed = train_iterator(ds, global_batch_size=8, seed=4, resolution=6)  # elastic: no workers now
    resumed.set_state(state)
    rest = take(resumed, 4)
    resumed.close()
    for a, b in zip(reference, first + rest, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["index"], b["index"])


def test_state_saved_with_orbax_restores_exactly(tmp_path):
    import grain
    import orbax.checkpoint as ocp

    ds = index_dataset(37)
    it = train_iterator(ds, global_batch_size=8, seed=9, resolution=6)
    take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    expected = take(it, 3)
    fresh = train_iterator(ds, global_batch_size=8, seed=9, resolution=6)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert fresh.step == 5
    for a, b in zip(expected, take(fresh, 3), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_state_from_another_pipeline_is_refused():
    ds = index_dataset(37)
    state = train_iterator(ds, global_batch_size=8, seed=1, resolution=6).get_state()
    other = train_iterator(ds, global_batch_size=16, seed=1, resolution=6)
    with pytest.raises(BadInput, match="global_batch_size"):
        other.set_state(state)


def test_heldout_covers_split_once_with_mask_and_is_deterministic():
    ds = index_dataset(37, heldout=23)
    for processes in (1, 2):
        seen = []
        for p in range(processes):
            batches = list(heldout_batches(ds, batch_size=8, resolution=4, process_index=p, process_count=processes))
            assert len(batches) == 3
            assert all(b["image"].shape == (8 // processes, 4, 4, 3) for b in batches)
            seen += [i for b in batches for i in b["index"][b["mask"]]]
        assert sorted(seen) == list(range(23))
    from scaling.data.images import normalise

    for b in heldout_batches(ds, batch_size=8, resolution=4):  # no augmentation
        np.testing.assert_array_equal(b["image"], normalise(ds.source.read(1, b["index"], 4)[0]))
    again = [b["image"] for b in heldout_batches(ds, batch_size=8, resolution=4)]
    first = [b["image"] for b in heldout_batches(ds, batch_size=8, resolution=4)]
    for a, b in zip(again, first):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs,field", [
    ({"global_batch_size": 10, "process_count": 4}, "global_batch_size"),
    ({"global_batch_size": 0}, "global_batch_size"),
    ({"global_batch_size": 8, "process_index": 2, "process_count": 2}, "process_index"),
])
def test_bad_sharding_is_bad_input(kwargs, field):
    with pytest.raises(BadInput, match=field):
        train_iterator(index_dataset(), seed=0, resolution=6, **kwargs)
