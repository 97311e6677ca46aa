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
    """Rescale 2x2 matrices [..., 2, 2] whose largest singular value exceeds cap."""
    sigma = np.linalg.norm(maps, ord=2, axis=(-2, -1))
    factor = np.minimum(1.0, np.asarray(cap) / np.maximum(sigma, 1e-9))
    return maps * factor[..., None, None]


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, float32 [..., 3]; hue wraps around 1."""
    h6 = (h % 1.0) * 6
    sector = np.floor(h6).astype(np.intp) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table[sector, np.arange(h.size).reshape(h.shape)].astype(np.float32)  # h, s, v: 1-D [B]


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

    def __init__(self, config: ProceduralConfig):
        self.config = config
        self._linear, self._offset, self._prob = class_table(config.num_classes, config.seed)
        self._hue = np.random.default_rng([config.seed, 0xC010]).uniform(size=config.num_classes)
        self._noise_banks: dict[int, np.ndarray] = {}

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

    def __repr__(self) -> str:  # stable: grain checkpoints compare pipeline reprs
        return f"ProceduralSource({self.config.name})"

    def size(self, split: int) -> int:
        return self.config.train_size if split == TRAIN else self.config.heldout_size

    def labels(self, split: int, indices: np.ndarray) -> np.ndarray:
        """Classes are balanced by construction: index mod num_classes."""
        del split
        return (np.asarray(indices, np.int64) % self.config.num_classes).astype(np.int32)

    def read(self, split: int, indices: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        labels = self.labels(split, indices)
        keys = hashing.key(self.config.seed, 0xDA7A, 2 * indices + split)
        return render(keys, labels, self._linear, self._offset, self._prob, self._hue, self.noise_bank(resolution),
                      resolution, self.config), labels


def render(
    keys: np.ndarray,
    labels: np.ndarray,
    class_linear: np.ndarray,
    class_offset: np.ndarray,
    class_prob: np.ndarray,
    class_hue: np.ndarray,
    noise_bank: np.ndarray,
    resolution: int,
    config: ProceduralConfig,
) -> np.ndarray:
    """Render one image per key: uint8 [B, R, R, 3]. Pure function of its inputs."""
    b, r = len(keys), resolution
    counter = iter(range(1, 1_000_000))  # distinct hash counters for each draw below

    def u(shape=()):
        c = next(counter)
        n = int(np.prod(shape))
        return hashing.uniform(keys[:, None], c * 2**32 + np.arange(n)).reshape((b, *shape))

    def gauss(shape=()):
        c = next(counter)
        n = int(np.prod(shape))
        return hashing.normal(keys[:, None], c * 2**32 + np.arange(n)).reshape((b, *shape))

    # 1. Instance maps: the class maps, perturbed (FractalDB's intra-class variation).
    linear = class_linear[labels] + config.perturb * gauss((MAX_MAPS, 2, 2))
    linear = _contract(linear, INSTANCE_SIGMA_CAP)
    offset = class_offset[labels] + config.perturb * gauss((MAX_MAPS, 2))
    cum_prob = np.cumsum(class_prob[labels], axis=1)  # [B, K]

    # 2. Chaos game for P particles per image, all started at map 0's fixed point,
    #    which lies on the attractor, so no burn-in is needed.
    fixed = np.linalg.solve(np.eye(2) - linear[:, 0], offset[:, 0][..., None])[..., 0]
    n_particles = max(8, int(np.ceil(config.points_per_pixel * r * r / (CHAOS_ITERS - CHAOS_SKIP))))
    c = next(counter)
    choice_u = hashing.uniform16(keys, c * 2**32 + np.arange((CHAOS_ITERS * n_particles + 3) // 4))
    choice_u = choice_u.reshape(b, -1)[:, : CHAOS_ITERS * n_particles].reshape(b, CHAOS_ITERS, n_particles)
    cum_prob = cum_prob.astype(np.float32)
    choice = sum((choice_u > cum_prob[:, k, None, None]).astype(np.intp) for k in range(MAX_MAPS - 1))
    flat_k = np.arange(b)[:, None, None] * MAX_MAPS + choice
    # Any real affine map of the plane is z -> alpha z + beta conj(z) + c in complex
    # numbers: three gathers (alpha, beta, c) per step instead of six.
    a00, a01, a10, a11 = linear[..., 0, 0], linear[..., 0, 1], linear[..., 1, 0], linear[..., 1, 1]
    coef_alpha, coef_beta, coef_shift = (c.reshape(-1).astype(np.complex64) for c in (
        ((a00 + a11) + 1j * (a10 - a01)) / 2, ((a00 - a11) + 1j * (a10 + a01)) / 2, offset[..., 0] + 1j * offset[..., 1]))
    z = np.repeat((fixed[:, 0] + 1j * fixed[:, 1]).astype(np.complex64)[:, None], n_particles, axis=1)  # [B, P]
    zs = []
    for t in range(CHAOS_ITERS):
        k = flat_k[:, t]
        z = coef_alpha.take(k) * z + coef_beta.take(k) * np.conj(z) + coef_shift.take(k)
        if t >= CHAOS_SKIP:
            zs.append(z)
    z = np.concatenate(zs, axis=1)  # [B, N]
    x, y = z.real, z.imag

    # 3. Pose: centre and scale the attractor into [-1, 1]^2, then a random rotation,
    #    scale and shift that keep it inside the frame.
    x_lo, x_hi, y_lo, y_hi = x.min(1), x.max(1), y.min(1), y.max(1)
    half = np.maximum(np.maximum(x_hi - x_lo, y_hi - y_lo) / 2, 1e-6).astype(np.float64)
    cx, cy = (x_lo + x_hi) / 2, (y_lo + y_hi) / 2
    angle = np.deg2rad(config.rotation) * (2 * u() - 1)
    scale = 0.55 + 0.4 * u()
    shift = (u((2,)) * 2 - 1) * (1 - scale)[:, None]
    # One affine map per image, raw chaos-game coordinates -> pixel column / row.
    k = scale / half * (r / 2)
    cos, sin = np.cos(angle) * k, np.sin(angle) * k
    col0 = (shift[:, 0] + 1) * (r / 2) - cos * cx + sin * cy
    row0 = (shift[:, 1] + 1) * (r / 2) - sin * cx - cos * cy
    f32 = lambda v: v.astype(np.float32)[:, None]  # noqa: E731
    px = (f32(cos) * x - f32(sin) * y + f32(col0)).astype(np.intp).clip(0, r - 1)
    py = (f32(sin) * x + f32(cos) * y + f32(row0)).astype(np.intp).clip(0, r - 1)

    # 4. Point density, saturating: alpha = 1 - exp(-count / gain).
    flat = (np.arange(b)[:, None] * (r * r) + py * r + px).ravel()
    density = np.bincount(flat, minlength=b * r * r).astype(np.float32).reshape(b, r, r)
    gain = np.float32(x.shape[1] / (r * r) * 0.6)  # about the mean count on a covered pixel
    alpha = (1 - np.exp(-density / gain))[:, None]  # [B, 1, R, R]: channels-first below,
    # because numpy broadcasting over a trailing axis of 3 is ~20x slower than over R x R.

    # 5. Colour. The foreground hue is the class hue plus jitter: a coarse cue that small
    #    models pick up first (as colour is in natural images), shape the fine one. Light
    #    on dark or dark on light at random; background of any hue plus a gradient.
    hue = class_hue[labels] + config.hue_jitter * gauss()
    light_fg = u() < 0.5
    fg_value = np.where(light_fg, 0.6 + 0.4 * u(), 0.1 + 0.3 * u())
    bg_value = np.where(light_fg, 0.05 + 0.35 * u(), 0.6 + 0.35 * u())
    fg = hsv_to_rgb(hue, 0.5 + 0.5 * u(), fg_value)
    bg = hsv_to_rgb(u(), 0.6 * u(), bg_value)
    grad_angle, grad_amp = 2 * np.pi * u(), 0.3 * u()
    coords = ((np.arange(r) + 0.5) / r - 0.5).astype(np.float32)
    gx, gy = f32(np.cos(grad_angle) * grad_amp)[..., None], f32(np.sin(grad_angle) * grad_amp)[..., None]
    ramp = (gx * coords[None, None, :] + gy * coords[None, :, None])[:, None]  # [B, 1, R, R]
    background = bg[:, :, None, None] + ramp  # [B, 3, R, R]
    image = background + alpha * (fg[:, :, None, None] - background)

    # 6. Pixel noise: a random crop of a random tile of the noise bank.
    tile = (u() * NOISE_TILES).astype(np.intp)
    oy, ox = ((u((2,)) * r).astype(np.intp)).T
    noise = np.stack([noise_bank[t, :, y:y + r, x:x + r] for t, y, x in zip(tile, oy, ox)])
    image += np.float32(config.noise) * noise
    pixels = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))  # [B, R, R, 3]
