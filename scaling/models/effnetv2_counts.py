"""Exact parameter and MAC counts of an EfficientNetV2 config, without building it. Pure
Python; the convention is mbconv_config's (docs/models.md#mbconv-mac-convention)."""
from __future__ import annotations

from scaling.models.counts import ModelCounts
from scaling.models.effnetv2_config import EffNetV2Config
from scaling.models.mbconv_config import count_network


def count(cfg: EffNetV2Config, resolution: int, *, channels: int = 3) -> ModelCounts:
    """Params and forward MACs per image at resolution x resolution with `channels` channels."""
    return count_network(cfg.stem, cfg.stages, cfg.head, cfg.num_classes, resolution, channels)
