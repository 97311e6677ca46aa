"""AugmentConfig: the training stream's augmentation as typed, checked data (no jax).

A run's `augment` (TrainConfig field; a spec's `[recipe] augment = {...}`; `scaling
train --augment`) becomes this object when a run is configured or a sweep expanded, so
a misspelt key, a wrong type or a value out of range is refused with one line at once.

What it configures (applied by scaling/data/images.pad_crop_flip to training batches
only; held-out batches are never augmented):
  crop_pad  pixels of padding on each side before a random crop back to R x R; absent:
            R/8 (4 px at 32 px, 2 px at 16 px: the CIFAR recipe); 0: no crop.
  flip      random horizontal flip of half the images (default true).
  pad_mode  "reflect" (default: mirror the border) or "zero" (black: the usual choice for
            MNIST-like images, whose background is black).
The default (an empty table) is the augmentation every run had before the option
existed, so trials that leave it out keep their ids and their data streams.

Every draw is a hash of (seed, epoch, example index) (pipeline.LoadBatch): stateless,
so a resumed run draws what an uninterrupted one would, whatever the worker count.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from scaling.errors import BadInput, closest

PAD_MODES = ("reflect", "zero")


@dataclass(frozen=True)
class AugmentConfig:
    crop_pad: int | None = None  # None: R/8 of the train resolution (images.default_pad)
    flip: bool = True
    pad_mode: str = "reflect"

    def __post_init__(self):
        v = self.crop_pad
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise BadInput(f"augment.crop_pad: {v!r} is not a whole number >= 0; e.g. crop_pad = 4 "
                           "(pixels; 0 turns the crop off)")
        if not isinstance(self.flip, bool):
            raise BadInput(f"augment.flip: {self.flip!r} is not true or false; write it without quotes")
        if self.pad_mode not in PAD_MODES:
            raise BadInput(f"augment.pad_mode: {self.pad_mode!r} is not supported; "
                           f"{closest(str(self.pad_mode), PAD_MODES)}use one of {', '.join(PAD_MODES)}")

    @classmethod
    def from_dict(cls, data: Any) -> "AugmentConfig":
        """From a spec's or the CLI's table; unknown keys get a did-you-mean."""
        if isinstance(data, AugmentConfig):
            return data
        if not isinstance(data, dict):
            raise BadInput("augment: must be a table of augmentation fields, e.g. { crop_pad = 4, flip = true }")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise BadInput(f"augment.{key}: unknown field; {closest(str(key), known)}known: {', '.join(known)}")
        return cls(**data)

    def pad(self, resolution: int) -> int:
        """Pixels of padding at this train resolution."""
        from scaling.data.images import default_pad

        return default_pad(resolution) if self.crop_pad is None else self.crop_pad

    def at_strength(self, resolution: int, strength: float) -> "AugmentConfig":
        """This augmentation at a fraction `strength` in [0, 1] of its strength at
        `resolution`: the pad-and-crop margin scaled (rounded to whole pixels); the flip
        has no magnitude and is kept. A progressive run's stage uses it
        (scaling/train/progressive.py); strength 1 is the margin itself."""
        if not (0.0 <= strength <= 1.0):
            raise BadInput(f"augment strength: {strength!r} is not in [0, 1]")
        return dataclasses.replace(self, crop_pad=round(self.pad(resolution) * strength))

    def is_identity(self) -> bool:
        """True when it changes no image (no crop, no flip)."""
        return self.crop_pad == 0 and not self.flip

    def non_default(self) -> dict:
        """The fields that differ from the defaults (what identifies a stream)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}
