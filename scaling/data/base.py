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
        """-> (uint8 images [b, R, R, 3], int32 labels [b])."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    num_classes: int
    train_size: int
    heldout_size: int
    native_resolution: int | None  # None: images of mixed sizes (folders, records)
    source: Any = dataclasses.field(repr=False, compare=False)

    def __repr__(self) -> str:  # stable, for grain state checks and logs
        return f"Dataset({self.name})"
