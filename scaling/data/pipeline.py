"""Training and held-out pipelines on grain.

The training stream is a concatenation of epochs; epoch e is a pseudo-random
permutation of [0, N) keyed by (seed, e) (hashing.permute). Global batches are
consecutive chunks of that stream, crossing epoch boundaries, so every epoch sees
every example exactly once whatever N and the batch size, and a fractional epoch
budget simply stops mid-epoch. Step s's global batch is therefore a pure function of
(seed, s): the iterator state is the next step number, restore is exact, and it does
not depend on the number of worker processes. Process p of P takes the p-th equal
slice of each global batch.

grain runs it: a MapDataset over chunks of consecutive steps -> (indices) -> (images),
read ahead by grain's threads, optionally through `mp_prefetch` worker processes, then
split into batches. Each element is several whole batches made by vectorised numpy
(when this pipeline was designed, grain's per-example DataLoader measured ~2k img/s
against ~41k for a batched MapDataset; docs/data.md).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Iterator

import grain
import numpy as np

from scaling.data import hashing, images
from scaling.data.augment import AugmentConfig
from scaling.data.dataset import Dataset
from scaling.errors import BadInput

TRAIN, HELDOUT = 0, 1
# grain's defaults (16 threads, 500 buffered elements) are sized for small records; our
# elements are whole batches, so a few threads (numpy and PIL release the GIL; 2 = the
# cores of the development machine) and a short buffer per process.
READ_THREADS, PREFETCH_BATCHES = 2, 4
# Training elements are chunks of consecutive steps of about this many images, rendered
# in one call and split into batches by the consumer: per-element costs (grain's
# worker-process transport, numpy call overhead) are paid once per chunk, not per
# batch. Measured for docs/data.md at 16 px, batch 64 (chunks of 4 batches).
CHUNK_IMAGES = 256


def _mark_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; unparsed flags crash them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """step -> which examples: the pure core of the exactly-once guarantee."""

    n: int  # examples per epoch
    global_batch_size: int
    seed: int
    process_index: int = 0
    process_count: int = 1

    def __call__(self, step: int, count: int = 1) -> dict[str, np.ndarray]:
        """This process's examples of steps step .. step + count - 1, in step order."""
        local = self.global_batch_size // self.process_count
        starts = (int(step) + np.arange(count, dtype=np.int64)) * self.global_batch_size + self.process_index * local
        positions = (starts[:, None] + np.arange(local, dtype=np.int64)).ravel()
        epoch, offset = np.divmod(positions, self.n)
        index = np.empty_like(offset)
        for e in np.unique(epoch):  # at most a few epochs per batch
            sel = epoch == e
            index[sel] = hashing.permute(offset[sel], self.n, hashing.key(self.seed, 0x5EED, e))
        return {"index": index, "epoch": epoch}


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """chunk c -> the examples of steps c*k .. c*k + k - 1, concatenated in step order."""

    plan: StepPlan
    steps: int

    def __call__(self, chunk: int) -> dict[str, np.ndarray]:  # one permute call per epoch, not per step
        return self.plan(int(chunk) * self.steps, self.steps)


@dataclasses.dataclass(frozen=True)
class LoadBatch:
    """indices -> uint8 images (augmented, keyed by (seed, epoch, index)), labels.

    `augment` None: no augmentation (held-out batches)."""

    dataset: Dataset
    split: int
    resolution: int
    seed: int
    augment: AugmentConfig | None

    def __call__(self, plan: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = plan["index"]
        pixels, label = self.dataset.source.read(self.split, index, self.resolution)
        aug = self.augment
        if aug is not None and not aug.is_identity():
            pixels = images.pad_crop_flip(pixels, hashing.key(self.seed, 0xA06, plan["epoch"], index),
                                          pad=aug.pad(self.resolution), flip=aug.flip, pad_mode=aug.pad_mode)
        out = {"image": pixels, "label": label.astype(np.int32), "index": index}
        if "mask" in plan:
            out["mask"] = plan["mask"]
        return out


@dataclasses.dataclass(frozen=True)
class ToFloat:
    """uint8 -> float32 standardised by the dataset's pixel statistics (a picklable map)."""

    stats: tuple | None = None  # Dataset.pixel_stats; None: ImageNet's RGB statistics

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, "image": images.normalise(batch["image"], self.stats)}


to_float = ToFloat()  # RGB sources


class TrainIterator(grain.DatasetIterator):
    """Infinite training stream; state = {"step": next step} plus identity checks.

    A grain DatasetIterator, so grain's orbax handler (grain.checkpoint.CheckpointSave
    / CheckpointRestore) saves it with the model; `get_state()` is also plain JSON.
    """

    def __init__(self, plan: StepPlan, load: LoadBatch, worker_count: int = 0, step: int = 0):
        super().__init__()
        self._plan, self._load, self._workers = plan, load, worker_count
        self._step = step
        self._local = plan.global_batch_size // plan.process_count
        self._chunk = max(1, CHUNK_IMAGES // self._local)  # steps per grain element
        self._inner: Any = None
        self._grain_iter: Any = None
        self._to_float = ToFloat(load.dataset.pixel_stats)

    def _identity(self) -> dict[str, Any]:
        p = self._plan
        identity = {"dataset": self._load.dataset.name, "seed": p.seed, "global_batch_size": p.global_batch_size,
                    "process_index": p.process_index, "process_count": p.process_count,
                    "resolution": self._load.resolution}
        augment = self._load.augment.non_default()
        if augment:  # only when not the default, so states saved before the option still restore
            identity["augment"] = augment
        return identity

    def _start(self) -> Iterator[dict[str, np.ndarray]]:
        first_chunk, skip = divmod(self._step, self._chunk)
        ds = grain.MapDataset.range(first_chunk, sys.maxsize).map(ChunkPlan(self._plan, self._chunk)).map(self._load)
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=PREFETCH_BATCHES))
        if self._workers > 0:
            _mark_absl_flags_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers, per_worker_buffer_size=2))
        self._grain_iter = iter(ds)
        return self._batches(self._grain_iter, skip)

    def _batches(self, chunks: Iterator[dict[str, np.ndarray]], skip: int) -> Iterator[dict[str, np.ndarray]]:
        """Split chunks into batches, dropping the first `skip` of the first chunk (resume).

        Workers hand over uint8 (4x less to copy between processes); the float
        conversion is cheap (images.normalise) and happens here.
        """
        b = self._local
        for chunk in chunks:
            for j in range(skip, self._chunk):
                yield self._to_float({key: value[j * b:(j + 1) * b] for key, value in chunk.items()})
            skip = 0

    def __next__(self) -> dict[str, np.ndarray]:
        if self._inner is None:
            self._inner = self._start()
        batch = next(self._inner)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step, **self._identity()}

    def set_state(self, state: dict[str, Any]) -> None:
        expected = self._identity()
        wrong = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if wrong:
            raise BadInput(f"data iterator state: saved for a different pipeline {wrong} (saved, current); "
                           "restore with the same dataset, seed, batch size, processes, resolution and augmentation")
        self.close()
        self._step = int(state["step"])

    def start_prefetch(self) -> None:
        if self._inner is None:
            self._inner = self._start()

    def close(self) -> None:
        if self._grain_iter is not None and hasattr(self._grain_iter, "close"):
            self._grain_iter.close()
        self._inner = self._grain_iter = None

    @property
    def step(self) -> int:
        return self._step


def _check_sharding(batch_size: int, process_index: int, process_count: int, field: str) -> None:
    if batch_size <= 0:
        raise BadInput(f"{field}: must be positive, got {batch_size}")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise BadInput(f"process_index: {process_index} is not in [0, {process_count}); pass jax.process_index()")
    if batch_size % process_count:
        raise BadInput(f"{field}: {batch_size} is not divisible by process_count {process_count}; "
                       "use a multiple of the number of processes")


def train_iterator(ds: Dataset, *, global_batch_size: int, seed: int, resolution: int,
                   process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                   augment: dict | AugmentConfig | None = None) -> TrainIterator:
    """The infinite, epoch-aware, augmented training stream for one process.

    Yields {"image": float32 [b, R, R, C], "label": int32 [b], "index": int64 [b]},
    b = global_batch_size // process_count, C = ds.channels. `augment`: the
    augmentation's fields (scaling/data/augment.py); None or {} is the default
    (pad-and-crop by R/8 + flip); {"crop_pad": 0, "flip": False} turns it off.
    """
    _check_sharding(global_batch_size, process_index, process_count, "global_batch_size")
    if resolution <= 0:
        raise BadInput(f"resolution: must be positive, got {resolution}")
    if ds.train_size <= 0:
        raise BadInput(f"dataset {ds.name}: has no training examples")
    aug = AugmentConfig() if augment is None else AugmentConfig.from_dict(augment)
    if aug.pad(resolution) >= resolution:
        raise BadInput(f"augment.crop_pad: {aug.pad(resolution)} px is not below the {resolution} px "
                       "train resolution; use a smaller margin (R/8 is usual)")
    plan = StepPlan(ds.train_size, global_batch_size, seed, process_index, process_count)
    return TrainIterator(plan, LoadBatch(ds, TRAIN, resolution, seed, augment=aug), worker_count)


@dataclasses.dataclass(frozen=True)
class HeldoutPlan:
    """batch number -> held-out indices in order, the tail padded and masked."""

    n: int
    batch_size: int
    process_index: int
    process_count: int

    def __call__(self, batch: int) -> dict[str, np.ndarray]:
        local = self.batch_size // self.process_count
        start = int(batch) * self.batch_size + self.process_index * local
        positions = np.arange(start, start + local, dtype=np.int64)
        mask = positions < self.n
        return {"index": np.where(mask, positions, self.n - 1), "epoch": np.zeros_like(positions), "mask": mask}


def heldout_batches(ds: Dataset, *, batch_size: int, resolution: int,
                    process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """The whole held-out split once, in index order, unaugmented, at `resolution`.

    `batch_size` is global; each process gets its slice. Every batch has the same shape;
    `mask` is True for real examples (the padded tail repeats the last example).
    Returns a grain IterDataset: iterate it (each pass starts from the beginning); it
    reads ahead a few batches in threads (grain's default buffer of 500 elements would
    hold 500 whole batches).
    """
    _check_sharding(batch_size, process_index, process_count, "batch_size")
    if ds.heldout_size <= 0:
        raise BadInput(f"dataset {ds.name}: has no held-out split; give it one (see docs/data.md)")
    num_batches = -(-ds.heldout_size // batch_size)
    plan = HeldoutPlan(ds.heldout_size, batch_size, process_index, process_count)
    load = LoadBatch(ds, HELDOUT, resolution, seed=0, augment=None)
    batches = grain.MapDataset.range(num_batches).map(plan).map(load).map(ToFloat(ds.pixel_stats))
    return batches.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=PREFETCH_BATCHES))
