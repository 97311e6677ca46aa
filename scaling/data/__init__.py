"""Data: the built-in procedural dataset, real sources and grain pipelines.

Public API (docs/data.md):
    get_dataset(spec, *, num_classes, train_size, heldout_size, resolution, seed) -> Dataset
    train_iterator(ds, *, global_batch_size, seed, resolution, process_index, process_count, worker_count)
    heldout_batches(ds, *, batch_size, resolution, process_index, process_count)
No jax imports here: the pipeline is numpy + grain.
"""
from scaling.data.dataset import Dataset, get_dataset
from scaling.data.pipeline import TrainIterator, heldout_batches, train_iterator

__all__ = ["Dataset", "TrainIterator", "get_dataset", "heldout_batches", "train_iterator"]
