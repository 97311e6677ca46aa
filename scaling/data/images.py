"""Pixel-level helpers shared by every source: decode, resize, augment, normalise.

Pure numpy functions over batches. Augmentation is stateless: each example's crop
and flip come from hashing (seed, epoch, index), so a batch is the same whichever
worker makes it and after any restart.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from scaling.data import hashing
from scaling.errors import BadInput

# [B21] official code normalises inputs by the ImageNet channel mean and std.
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)
# Pad-and-crop margin as a fraction of the side: 4 px at 32 px, the standard CIFAR
# recipe (He et al. 2016 s4.2). At 32 px a random-resized (Inception) crop throws away
# most of a tiny image; [S23]/[B21] pre-train with random crop + flip only.
PAD_FRACTION = 1 / 8


def decode(data: bytes, resolution: int, what: str) -> np.ndarray:
    """Encoded JPEG/PNG -> uint8 [R, R, 3]: shorter side to R, then centre crop.

    `what` names the file or record in the one-line error for a corrupt image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            return square_resize(img.convert("RGB"), resolution)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadInput(f"{what}: not a readable image ({type(err).__name__}: {err}); "
                       "remove or replace the file") from None


def square_resize(img: Image.Image, resolution: int) -> np.ndarray:
    """Resize so the shorter side is `resolution`, centre-crop to a square."""
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return np.asarray(img.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)


def resize_batch(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [B, H, W, 3] -> [B, R, R, 3] (no-op when already R x R)."""
    if images.shape[1:3] == (resolution, resolution):
        return images
    return np.stack([square_resize(Image.fromarray(im), resolution) for im in images])


def pad_crop_flip(images: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Random reflect-pad-and-crop plus horizontal flip, one draw per key. Vectorised.

    Done as one gather: each output pixel's source row and column come from reflecting
    the crop's coordinates (np.pad of an index vector = np.pad of the image), so no
    padded copy is made; equal, pixel for pixel, to padding and then slicing.
    """
    b, r = images.shape[:2]
    pad = max(1, round(r * PAD_FRACTION))
    source = np.pad(np.arange(r), pad, mode="reflect")  # padded position -> source row/column
    draws = hashing.uniform(keys[:, None], np.arange(3))  # [B, 3]: dy, dx, flip
    dy = (draws[:, 0] * (2 * pad + 1)).astype(np.intp)
    dx = (draws[:, 1] * (2 * pad + 1)).astype(np.intp)
    offsets = np.arange(r)
    rows = source[dy[:, None] + offsets]  # [B, R]
    cols = source[dx[:, None] + np.where(draws[:, 2:] >= 0.5, offsets[::-1], offsets)]
    flat = (np.arange(b)[:, None, None] * r + rows[:, :, None]) * images.shape[2] + cols[:, None, :]
    return images.reshape(-1, images.shape[-1]).take(flat.ravel(), axis=0).reshape(images.shape)


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 [..., W, 3] -> float32, per-channel standardised.

    Works on rows of W*3 values with the constants tiled to match: broadcasting over a
    trailing axis of 3 is ~20x slower in numpy.
    """
    width = images.shape[-2] * 3
    rows = images.reshape(-1, width).astype(np.float32)
    rows *= np.tile(np.float32(1 / 255) / STD_RGB, width // 3)
    rows += np.tile(-MEAN_RGB / STD_RGB, width // 3)
    return rows.reshape(images.shape)
