"""Data: the built-in procedural dataset, real sources and grain pipelines.

Public API (docs/data.md):
    get_dataset(spec, *, num_classes, train_size, heldout_size, resolution, seed) -> Dataset
    train_iterator(ds, *, global_batch_size, seed, resolution, process_index, process_count, worker_count)
    heldout_batches(ds, *, batch_size, resolution, process_index, process_count)
No jax imports here: the pipeline is numpy + grain. grain is imported on first use of
the pipeline names, so a sweep spec can open a dataset (sizes, classes) without it.
"""
from scaling.data.dataset import Dataset, get_dataset

__all__ = ["Dataset", "TrainIterator", "get_dataset", "heldout_batches", "train_iterator"]


def __getattr__(name):
    if name in ("TrainIterator", "heldout_batches", "train_iterator"):
        from scaling.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'scaling.data' has no attribute {name!r}")
