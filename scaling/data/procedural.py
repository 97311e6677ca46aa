"""The built-in dataset: formula-driven IFS fractal images (after FractalDB).

Kataoka et al. (ACCV 2020) showed that classifying images of iterated-function-system
(IFS) fractals is a pre-training task whose learned features transfer to natural
images: each class is a fixed set of random contractive affine maps; instances vary by
perturbing the maps and by colour, pose and background. We follow that recipe because
it gives what the scaling study needs and a download cannot: unbounded distinct
examples (index -> parameters by hashing, nothing stored), exact labels, tunable
difficulty, and natural-image-like statistics (self-similar edges at many scales).

Every image is a pure function of (dataset seed, split, index); train and held-out
instances are drawn from disjoint key spaces (hashing.key is a bijection in the index,
and the split bit is part of the key), so no held-out image is a training image.
Rendering is vectorised over a batch: the chaos game runs for all particles of all
images at once, points are splatted bilinearly with np.bincount.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scaling.data import hashing

TRAIN, HELDOUT = 0, 1  # the split bit of every instance key

# Difficulty and look. Values are our own, tuned on this project's small models so the
# held-out loss keeps falling with model size and data (docs/data.md, learnability).
MAX_MAPS = 4  # maps per class drawn from {2, 3, 4}; FractalDB draws 2-8 (Kataoka et al. 2020)
CLASS_SIGMA = (0.45, 0.85)  # largest singular value of each class map: contractive
INSTANCE_SIGMA_CAP = 0.92  # perturbed maps are rescaled below this to stay contractive
NOISE_TILES = 16  # noise tiles per resolution (see ProceduralSource.noise_bank)
CHAOS_ITERS, CHAOS_SKIP = 16, 3  # chaos-game steps per particle; first steps repeat points
# Rendered images kept per process for finite splits (ProceduralSource.read), so epochs
# after the first do not re-render: a split is cached when its uint8 images fit what is
# left of this budget (the demo's 16,384 x 16 px train split is 12 MiB; 1e6 at 32 px
# would be 2.9 GiB and is rendered every time). Our choice: a fraction of a laptop's RAM.
CACHE_BYTES = 512 * 2**20
# Images per render call. Measured at 16 px (process CPU, median of 3, load ~5): 26k img/s
# at 32, 39k at 64, 29-32k at 96-256 (larger temporaries fall out of cache), so bigger
# requests are rendered in blocks of 64.
RENDER_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class ProceduralConfig:
    """Everything that defines the dataset; `name` is stored with every result."""

    num_classes: int = 100
    train_size: int = 1_000_000
    heldout_size: int = 10_000
    resolution: int = 32
    seed: int = 0
    perturb: float = 0.06  # std of the per-instance noise added to each map's entries
    noise: float = 0.06  # amplitude of uniform per-pixel noise (fraction of 255)
    rotation: float = 30.0  # instances are rotated by up to +- this many degrees
    hue_jitter: float = 0.1  # std of the foreground hue around its class hue (1 = full circle)
    points_per_pixel: float = 1.2  # chaos-game points per output pixel (fixed: not in specs or name)

    @property
    def name(self) -> str:
        return (
            f"procedural:classes={self.num_classes},train_size={self.train_size},"
            f"heldout={self.heldout_size},res={self.resolution},seed={self.seed},"
            f"perturb={self.perturb:g},noise={self.noise:g},rotation={self.rotation:g},"
            f"hue_jitter={self.hue_jitter:g}"
        )


def _contract(maps: np.ndarray, cap: np.ndarray | float) -> np.ndarray:
    """Rescale 2x2 matrices [..., 2, 2] whose largest singular value exceeds cap.

    A closed-form 2x2 norm (error ~1e-8 relative) clears the matrices that are surely
    below the cap (factor exactly 1); only the rest go through numpy's SVD, so the
    result is bit-identical to an SVD of all of them at a fraction of the cost.
    """
    sq = (maps * maps).sum(axis=(-2, -1))
    det = maps[..., 0, 0] * maps[..., 1, 1] - maps[..., 0, 1] * maps[..., 1, 0]
    rough = np.sqrt((sq + np.sqrt(np.maximum(sq * sq - 4 * det * det, 0))) / 2)
    near = rough >= np.asarray(cap) * (1 - 1e-6)
    if not near.any():
        return maps
    sigma = np.linalg.norm(maps[near], ord=2, axis=(-2, -1))
    factor = np.minimum(1.0, np.broadcast_to(cap, near.shape)[near] / np.maximum(sigma, 1e-9))
    out = maps.copy()
    out[near] *= factor[..., None, None]
    return out


# hsv_to_rgb: which of (v, p, q, t) is R, G, B in each of the six hue sectors.
_HSV_SECTORS = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, float32 [n, 3] for 1-D h, s, v; hue wraps around 1."""
    h6 = (h % 1.0) * 6
    sector = np.floor(h6).astype(np.intp) % 6
    f = h6 - np.floor(h6)
    parts = np.stack([v, v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)])  # v, p, q, t: [4, n]
    return parts[_HSV_SECTORS[sector], np.arange(h.size)[:, None]].astype(np.float32)


def class_table(num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class IFS: linear parts [C, K, 2, 2], offsets [C, K, 2], probabilities [C, K].

    Unused map slots (classes with fewer than MAX_MAPS maps) get probability 0.
    """
    rng = np.random.default_rng([seed, 0x1F5])
    linear = rng.uniform(-1, 1, size=(num_classes, MAX_MAPS, 2, 2))
    sigma = rng.uniform(*CLASS_SIGMA, size=(num_classes, MAX_MAPS))
    linear = linear / np.linalg.norm(linear, ord=2, axis=(-2, -1))[..., None, None] * sigma[..., None, None]
    offset = rng.uniform(-1, 1, size=(num_classes, MAX_MAPS, 2))
    n_maps = rng.integers(2, MAX_MAPS + 1, size=num_classes)
    used = np.arange(MAX_MAPS)[None, :] < n_maps[:, None]
    # Standard IFS choice: pick a map with probability ~ its area scale |det|.
    weight = np.abs(np.linalg.det(linear)) + 0.02
    prob = np.where(used, weight, 0.0)
    return linear, offset, prob / prob.sum(axis=1, keepdims=True)


class ProceduralSource:
    """Random-access renderer: read(split, indices, resolution) -> uint8 images, labels."""

    def __init__(self, config: ProceduralConfig, cache_bytes: int = CACHE_BYTES):
        self.config = config
        self.cache_bytes = cache_bytes
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray] | None] = {}
        self._linear, self._offset, self._prob = class_table(config.num_classes, config.seed)
        self._hue = np.random.default_rng([config.seed, 0xC010]).uniform(size=config.num_classes)
        self._noise_banks: dict[int, np.ndarray] = {}
        self._scaled_noise: dict[int, np.ndarray] = {}

    def noise_bank(self, resolution: int) -> np.ndarray:
        """NOISE_TILES uniform [-1, 1] tiles of 3 x 2R x 2R; instances crop one at random.

        Hashing fresh noise for every pixel cost a third of the render time; a random
        crop of a fixed bank is as good a nuisance for a classifier at a fraction.
        """
        if resolution not in self._noise_banks:
            rng = np.random.default_rng([self.config.seed, 0x4015E, resolution])
            shape = (NOISE_TILES, 3, 2 * resolution, 2 * resolution)
            self._noise_banks[resolution] = rng.uniform(-1, 1, size=shape).astype(np.float32)
        return self._noise_banks[resolution]

    def scaled_noise(self, resolution: int) -> np.ndarray:
        """noise_bank(resolution) * config.noise, float32, computed once per resolution."""
        if resolution not in self._scaled_noise:
            self._scaled_noise[resolution] = np.float32(self.config.noise) * self.noise_bank(resolution)
        return self._scaled_noise[resolution]

    def __repr__(self) -> str:  # stable: grain checkpoints compare pipeline reprs
        return f"ProceduralSource({self.config.name})"

    def size(self, split: int) -> int:
        return self.config.train_size if split == TRAIN else self.config.heldout_size

    def labels(self, split: int, indices: np.ndarray) -> np.ndarray:
        """Classes are balanced by construction: index mod num_classes."""
        del split
        return (np.asarray(indices, np.int64) % self.config.num_classes).astype(np.int32)

    def __getstate__(self) -> dict:  # worker processes get the recipe, not the caches
        return {**self.__dict__, "_cache": {}, "_noise_banks": {}, "_scaled_noise": {}}

    def _cache_for(self, split: int, resolution: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(images [N, R, R, 3], rendered? [N]) for a split that fits the budget, else None.

        np.zeros maps untouched pages lazily, so memory grows only as images are rendered.
        """
        if (split, resolution) not in self._cache:
            used = sum(c[0].nbytes for c in self._cache.values() if c is not None)
            n = self.size(split)
            fits = n * resolution * resolution * 3 <= self.cache_bytes - used
            self._cache[split, resolution] = (
                (np.zeros((n, resolution, resolution, 3), np.uint8), np.zeros(n, bool)) if fits else None)
        return self._cache[split, resolution]

    def render(self, split: int, indices: np.ndarray, resolution: int) -> np.ndarray:
        """Render without the cache: uint8 [b, R, R, 3], in blocks of RENDER_BLOCK images."""
        keys = hashing.key(self.config.seed, 0xDA7A, 2 * indices + split)
        labels, noise = self.labels(split, indices), self.scaled_noise(resolution)
        blocks = [render(keys[i:i + RENDER_BLOCK], labels[i:i + RENDER_BLOCK], self._linear, self._offset, self._prob,
                         self._hue, noise, resolution, self.config) for i in range(0, max(len(keys), 1), RENDER_BLOCK)]
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def read(self, split: int, indices: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of `indices`; from this process's cache where rendered before.

        Cached or not, an image is the same bytes (render is a pure function of the index).
        Concurrent reads from grain's threads may render an index twice; both write the
        same bytes, and the flag is set after the image, so a reader never sees a hole.
        """
        indices = np.asarray(indices, np.int64)
        labels = self.labels(split, indices)
        cache = self._cache_for(split, resolution)
        if cache is None or not (len(indices) and 0 <= indices.min() and indices.max() < len(cache[1])):
            return self.render(split, indices, resolution), labels
        images, done = cache
        missing = np.unique(indices[~done[indices]])
        if len(missing):
            images[missing] = self.render(split, missing, resolution)
            done[missing] = True
        return images[indices], labels


# Every per-image random number except the chaos game's map choices, in one table:
# name -> (hash counter, how many, Gaussian?). Counter c draws the values
# c * 2**32 + j (j < how many; a Gaussian takes counters 2v and 2v + 1 for Box-Muller),
# so every number is a hash of (key, its own counter) and they are all drawn by one
# vectorised hash call. Counter 3 is the chaos game's (hashing.bits16).
_DRAWS = {
    "map_noise": (1, MAX_MAPS * 4, True), "offset_noise": (2, MAX_MAPS * 2, True), "angle": (4, 1, False),
    "scale": (5, 1, False), "shift": (6, 2, False), "hue": (7, 1, True), "light_fg": (8, 1, False),
    "fg_light_value": (9, 1, False), "fg_dark_value": (10, 1, False), "bg_dark_value": (11, 1, False),
    "bg_light_value": (12, 1, False), "fg_saturation": (13, 1, False), "bg_hue": (14, 1, False),
    "bg_saturation": (15, 1, False), "grad_angle": (16, 1, False), "grad_amp": (17, 1, False),
    "tile": (18, 1, False), "noise_offset": (19, 2, False),
}
_CHOICE_COUNTER = 3


def _draw_layout() -> tuple[np.ndarray, dict[str, slice], dict[str, slice]]:
    """Counters of all draws in one vector; where each uniform / Gaussian's values sit."""
    counters, uniform_at, gauss_at, pos = [], {}, {}, 0
    for name, (c, n, is_gauss) in _DRAWS.items():
        v = c * 2**32 + np.arange(n)
        if is_gauss:
            counters += [2 * v, 2 * v + 1]
            gauss_at[name] = slice(pos, pos + 2 * n)  # first n: u1, next n: u2
            pos += 2 * n
        else:
            counters.append(v)
            uniform_at[name] = slice(pos, pos + n)
            pos += n
    return np.concatenate(counters), uniform_at, gauss_at


_COUNTERS, _UNIFORM_AT, _GAUSS_AT = _draw_layout()


def _draw(keys: np.ndarray) -> dict[str, np.ndarray]:
    """All per-image draws [B, n] (float64): uniforms in [0, 1), Gaussians by Box-Muller."""
    u = hashing.uniform(keys[:, None], _COUNTERS)
    out = {name: u[:, at] for name, at in _UNIFORM_AT.items()}
    for name, at in _GAUSS_AT.items():  # the same arithmetic as hashing.normal
        n = (at.stop - at.start) // 2
        u1, u2 = u[:, at.start:at.start + n], u[:, at.start + n:at.stop]
        out[name] = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return out


def render(
    keys: np.ndarray,
    labels: np.ndarray,
    class_linear: np.ndarray,
    class_offset: np.ndarray,
    class_prob: np.ndarray,
    class_hue: np.ndarray,
    scaled_noise: np.ndarray,
    resolution: int,
    config: ProceduralConfig,
) -> np.ndarray:
    """Render one image per key: uint8 [B, R, R, 3]. Pure function of its inputs.

    `scaled_noise` is the noise bank times config.noise (float32). Large arrays are
    updated in place (out=): at 16 px a batch is small enough that allocation and
    page faults cost as much as the arithmetic.
    """
    b, r = len(keys), resolution
    d = _draw(keys)

    # 1. Instance maps: the class maps, perturbed (FractalDB's intra-class variation).
    linear = class_linear[labels] + config.perturb * d["map_noise"].reshape(b, MAX_MAPS, 2, 2)
    linear = _contract(linear, INSTANCE_SIGMA_CAP)
    offset = class_offset[labels] + config.perturb * d["offset_noise"].reshape(b, MAX_MAPS, 2)
    cum_prob = np.cumsum(class_prob[labels], axis=1).astype(np.float32)  # [B, K]

    # 2. Chaos game for P particles per image, all started at map 0's fixed point,
    #    which lies on the attractor, so no burn-in is needed.
    fixed = np.linalg.solve(np.eye(2) - linear[:, 0], offset[:, 0][..., None])[..., 0]
    n_particles = max(8, int(np.ceil(config.points_per_pixel * r * r / (CHAOS_ITERS - CHAOS_SKIP))))
    n_choice = CHAOS_ITERS * n_particles
    words = hashing.bits16(keys, _CHOICE_COUNTER * 2**32 + np.arange((n_choice + 3) // 4))[:, :n_choice]
    # The map chosen is the number of cumulative probabilities below u = word / 2**16.
    # Compared as integers: word / 2**16 > c  <=>  word > floor(c * 2**16) (exact).
    thresholds = np.minimum(np.floor(cum_prob.astype(np.float64) * 65536), 65535).astype(np.uint16)
    choice = np.zeros(words.shape, np.uint8)
    for k in range(MAX_MAPS - 1):
        choice += words > thresholds[:, k, None]
    # [T, B, P] so that each step's indices are contiguous; points are only counted
    # (np.bincount below), so their order does not matter.
    flat_k = np.empty((CHAOS_ITERS, b, n_particles), np.intp)
    np.add(choice.reshape(b, CHAOS_ITERS, n_particles).transpose(1, 0, 2),
           (np.arange(b) * MAX_MAPS)[None, :, None], out=flat_k)
    # Any real affine map of the plane is z -> alpha z + beta conj(z) + c in complex
    # numbers: three gathers (alpha, beta, c) per step instead of six.
    a00, a01, a10, a11 = linear[..., 0, 0], linear[..., 0, 1], linear[..., 1, 0], linear[..., 1, 1]
    coef_alpha, coef_beta, coef_shift = (c.reshape(-1).astype(np.complex64) for c in (
        ((a00 + a11) + 1j * (a10 - a01)) / 2, ((a00 - a11) + 1j * (a10 + a01)) / 2, offset[..., 0] + 1j * offset[..., 1]))
    z = np.repeat((fixed[:, 0] + 1j * fixed[:, 1]).astype(np.complex64)[:, None], n_particles, axis=1)  # [B, P]
    zs = np.empty((CHAOS_ITERS - CHAOS_SKIP, b, n_particles), np.complex64)
    term, conj = np.empty_like(z), np.empty_like(z)
    for t in range(CHAOS_ITERS):
        k = flat_k[t]
        nxt = zs[t - CHAOS_SKIP] if t >= CHAOS_SKIP else np.empty_like(z)
        np.multiply(coef_alpha.take(k), z, out=nxt)
        np.multiply(coef_beta.take(k, out=term), np.conj(z, out=conj), out=term)
        nxt += term
        nxt += coef_shift.take(k, out=term)
        z = nxt
    x, y = zs.real, zs.imag  # [T', B, P]

    # 3. Pose: centre and scale the attractor into [-1, 1]^2, then a random rotation,
    #    scale and shift that keep it inside the frame.
    x_lo, x_hi, y_lo, y_hi = x.min((0, 2)), x.max((0, 2)), y.min((0, 2)), y.max((0, 2))
    half = np.maximum(np.maximum(x_hi - x_lo, y_hi - y_lo) / 2, 1e-6).astype(np.float64)
    cx, cy = (x_lo + x_hi) / 2, (y_lo + y_hi) / 2
    angle = np.deg2rad(config.rotation) * (2 * d["angle"][:, 0] - 1)
    scale = 0.55 + 0.4 * d["scale"][:, 0]
    shift = (d["shift"] * 2 - 1) * (1 - scale)[:, None]
    # One affine map per image, raw chaos-game coordinates -> pixel column / row.
    k = scale / half * (r / 2)
    cos, sin = np.cos(angle) * k, np.sin(angle) * k
    col0 = (shift[:, 0] + 1) * (r / 2) - cos * cx + sin * cy
    row0 = (shift[:, 1] + 1) * (r / 2) - sin * cx - cos * cy
    f32 = lambda v: v.astype(np.float32)[:, None]  # noqa: E731
    per_image = lambda v: v.astype(np.float32)[None, :, None]  # noqa: E731  # [1, B, 1] against [T', B, P]
    # Pixel = trunc(coordinate) clipped to [0, R-1]; clipping the float first is the
    # same (truncation is monotone and fixes 0 and R-1) and leaves int32 work.
    tmp = np.empty(x.shape, np.float32)

    def to_pixel(a, va, bb, vb, c0, sign):  # trunc(a * va -+ bb * vb + c0), clipped
        pix = np.multiply(per_image(a), va)
        np.multiply(per_image(bb), vb, out=tmp)
        (np.subtract if sign < 0 else np.add)(pix, tmp, out=pix)
        pix += per_image(c0)
        np.clip(pix, 0, r - 1, out=pix)
        return pix.astype(np.int32)

    px = to_pixel(cos, x, sin, y, col0, -1)
    py = to_pixel(sin, x, cos, y, row0, +1)

    # 4. Point density, saturating: alpha = 1 - exp(-count / gain).
    py *= r
    py += px
    py += (np.arange(b, dtype=np.int32) * (r * r))[None, :, None]
    density = np.bincount(py.ravel(), minlength=b * r * r).astype(np.float32).reshape(b, 1, r, r)
    gain = np.float32(x.shape[0] * x.shape[2] / (r * r) * 0.6)  # about the mean count on a covered pixel
    density /= -gain
    alpha = np.exp(density, out=density)
    np.subtract(1, alpha, out=alpha)  # [B, 1, R, R]: channels-first below, because numpy
    # broadcasting over a trailing axis of 3 is ~20x slower than over R x R.

    # 5. Colour. The foreground hue is the class hue plus jitter: a coarse cue that small
    #    models pick up first (as colour is in natural images), shape the fine one. Light
    #    on dark or dark on light at random; background of any hue plus a gradient.
    hue = class_hue[labels] + config.hue_jitter * d["hue"][:, 0]
    light_fg = d["light_fg"][:, 0] < 0.5
    fg_value = np.where(light_fg, 0.6 + 0.4 * d["fg_light_value"][:, 0], 0.1 + 0.3 * d["fg_dark_value"][:, 0])
    bg_value = np.where(light_fg, 0.05 + 0.35 * d["bg_dark_value"][:, 0], 0.6 + 0.35 * d["bg_light_value"][:, 0])
    rgb = hsv_to_rgb(np.concatenate([hue, d["bg_hue"][:, 0]]),
                     np.concatenate([0.5 + 0.5 * d["fg_saturation"][:, 0], 0.6 * d["bg_saturation"][:, 0]]),
                     np.concatenate([fg_value, bg_value]))
    fg, bg = rgb[:b], rgb[b:]
    grad_angle, grad_amp = 2 * np.pi * d["grad_angle"][:, 0], 0.3 * d["grad_amp"][:, 0]
    coords = ((np.arange(r) + 0.5) / r - 0.5).astype(np.float32)
    gx, gy = f32(np.cos(grad_angle) * grad_amp)[..., None], f32(np.sin(grad_angle) * grad_amp)[..., None]
    ramp = (gx * coords[None, None, :] + gy * coords[None, :, None])[:, None]  # [B, 1, R, R]
    image = np.add(bg[:, :, None, None], ramp)  # background [B, 3, R, R]
    blend = np.subtract(fg[:, :, None, None], image)
    blend *= alpha
    image += blend  # background + alpha * (fg - background)

    # 6. Pixel noise: a random crop of a random tile of the noise bank.
    tile = (d["tile"][:, 0] * NOISE_TILES).astype(np.intp)
    oy, ox = ((d["noise_offset"] * r).astype(np.intp)).T
    windows = np.lib.stride_tricks.sliding_window_view(scaled_noise, (r, r), axis=(2, 3))
    image += windows[tile, :, oy, ox]  # [B, 3, R, R]
    image *= 255
    image += 0.5
    np.clip(image, 0, 255, out=image)
    pixels = np.empty((b, r, r, 3), np.uint8)
    np.copyto(pixels, image.transpose(0, 2, 3, 1), casting="unsafe")  # truncates, as astype
    return pixels
