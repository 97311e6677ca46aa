"""`Dataset` and its `Source` protocol: the types every dataset kind returns.

Their own module, imported by `dataset` (the spec parser) and `sources` (the real
sources), so neither imports the other's module to get them (no import cycle:
tests/test_layering.py). `scaling.data.dataset` re-exports both.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np


class Source(Protocol):
    """Random access by (split, indices): split 0 = train, 1 = held-out."""

    def read(self, split: int, indices: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (uint8 images [b, R, R, C], int32 labels [b]); C = the Dataset's `channels`."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    num_classes: int
    train_size: int
    heldout_size: int
    native_resolution: int | None  # None: images of mixed sizes (folders, records)
    source: Any = dataclasses.field(repr=False, compare=False)
    # 3 (RGB) for every source but grayscale ones (Fashion-MNIST: 1). Models take this
    # many input channels; grayscale is never repeated to RGB.
    channels: int = 3
    # Per-channel (mean, std) of the pixels in [0, 1] that the pipeline standardises with;
    # None: ImageNet's RGB statistics ([B21]'s code), for every RGB source.
    pixel_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __repr__(self) -> str:  # stable, for grain state checks and logs
        return f"Dataset({self.name})"
