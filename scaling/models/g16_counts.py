"""Exact parameter and MAC counts of a G16-EfficientNet config, without building it. Pure
Python; the convention is mbconv_config's (docs/models.md#mbconv-mac-convention)."""
from __future__ import annotations

from scaling.models.counts import ModelCounts
from scaling.models.g16_config import G16Config
from scaling.models.mbconv_config import count_network


def count(cfg: G16Config, resolution: int, *, channels: int = 3) -> ModelCounts:
    """Params and forward MACs per image at resolution x resolution with `channels` channels."""
    return count_network(cfg.stem, cfg.stages, cfg.head, cfg.num_classes, resolution, channels)
