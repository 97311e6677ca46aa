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


def decode(data: bytes, resolution: int, what: str, channels: int = 3) -> np.ndarray:
    """Encoded JPEG/PNG -> uint8 [R, R, C]: shorter side to R, then centre crop.

    `channels` 3: RGB; 1: grayscale (PIL mode "L"). `what` names the file or record in
    the one-line error for a corrupt image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if channels == 1:
                return square_resize(img.convert("L"), resolution)[..., None]
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
    """uint8 [B, H, W, C] -> [B, R, R, C], C = 3 or 1 (no-op when already R x R)."""
    if images.shape[1:3] == (resolution, resolution):
        return images
    if images.shape[-1] == 1:  # grayscale: PIL mode "L" wants 2-D arrays
        return np.stack([square_resize(Image.fromarray(im[..., 0]), resolution) for im in images])[..., None]
    return np.stack([square_resize(Image.fromarray(im), resolution) for im in images])


def default_pad(resolution: int) -> int:
    """The pad-and-crop margin when none is configured: R/8, at least 1 px."""
    return max(1, round(resolution * PAD_FRACTION))


def pad_crop_flip(images: np.ndarray, keys: np.ndarray, pad: int | None = None, flip: bool = True,
                  pad_mode: str = "reflect") -> np.ndarray:
    """Random pad-and-crop plus horizontal flip, one draw per key. Vectorised.

    `pad` px of padding on each side (None: `default_pad`, R/8; 0: no crop), then a
    random R x R crop; `flip`: mirror half of the images; `pad_mode` "reflect" (mirror
    the border) or "zero" (black, the usual choice for MNIST-like images on a black
    background). The three draws per key (dy, dx, flip) are the same whatever the options,
    so switching one off leaves the others' draws as they were.

    Done as one gather: each output pixel's source row and column come from padding the
    crop's coordinates (np.pad of an index vector = np.pad of the image), so no padded
    copy is made; equal, pixel for pixel, to padding and then slicing. Zero padding maps
    the padded positions to one extra black pixel.
    """
    b, r = images.shape[:2]
    pad = default_pad(r) if pad is None else int(pad)
    if pad == 0 and not flip:
        return images
    zero = pad_mode == "zero"
    source = np.pad(np.arange(r), pad, mode="constant", constant_values=-1) if zero \
        else np.pad(np.arange(r), pad, mode="reflect")  # padded position -> source row/column (-1: black)
    draws = hashing.uniform(keys[:, None], np.arange(3))  # [B, 3]: dy, dx, flip
    dy = (draws[:, 0] * (2 * pad + 1)).astype(np.intp)
    dx = (draws[:, 1] * (2 * pad + 1)).astype(np.intp)
    offsets = np.arange(r)
    rows = source[dy[:, None] + offsets]  # [B, R]
    cols = source[dx[:, None] + (np.where(draws[:, 2:] >= 0.5, offsets[::-1], offsets) if flip else offsets)]
    flat = (np.arange(b)[:, None, None] * r + rows[:, :, None]) * images.shape[2] + cols[:, None, :]
    pixels = images.reshape(-1, images.shape[-1])
    if zero:
        outside = (rows < 0)[:, :, None] | (cols < 0)[:, None, :]
        flat = np.where(outside, len(pixels), flat)
        pixels = np.concatenate([pixels, np.zeros((1, pixels.shape[1]), pixels.dtype)])
    return pixels.take(flat.ravel(), axis=0).reshape(images.shape)


def normalise(images: np.ndarray, stats: tuple | None = None) -> np.ndarray:
    """uint8 [..., W, C] -> float32, per-channel standardised.

    `stats` = (mean, std) per channel in [0, 1] units; None: ImageNet's RGB statistics.
    Works on rows of W*C values with the constants tiled to match: broadcasting over a
    trailing axis of 3 is ~20x slower in numpy.
    """
    mean, std = (MEAN_RGB, STD_RGB) if stats is None else (np.asarray(s, np.float32) for s in stats)
    channels = images.shape[-1]
    if mean.shape != (channels,):
        raise BadInput(f"images: {channels} channels but normalisation statistics for {mean.shape[0]}; "
                       "give the dataset's pixel_stats")
    width = images.shape[-2] * channels
    rows = images.reshape(-1, width).astype(np.float32)
    rows *= np.tile(np.float32(1 / 255) / std, width // channels)
    rows += np.tile(-mean / std, width // channels)
    return rows.reshape(images.shape)
