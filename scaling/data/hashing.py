"""Counter-based randomness: every random number is a pure function of integer keys.

Why: a training batch must be a pure function of (seed, step) and an image a pure
function of (seed, index), independent of which other indices share its batch, of the
worker that makes it, and of restarts. A stateful RNG cannot give that; hashing can.
All functions are vectorised over numpy uint64 arrays (wrap-around is intended).
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64 increment (Steele et al. 2014)
_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser constants (same source)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64, so distinct keys stay distinct."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def key(*parts: int | np.ndarray) -> np.ndarray:
    """Fold integers (or arrays of them) into one 64-bit key, chaining through mix64.

    For fixed other parts the map from the last part to the key is a bijection, which
    is what makes e.g. train and held-out keys disjoint by construction.
    """
    h = np.uint64(0x243F6A8885A308D3)  # arbitrary non-zero start (digits of pi)
    for part in parts:
        with np.errstate(over="ignore"):
            h = mix64(h ^ np.asarray(part).astype(np.uint64))
    return h


def uniform(keys: np.ndarray, counter: int | np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1), one per (key, counter); broadcasts."""
    with np.errstate(over="ignore"):
        bits = mix64(np.asarray(keys, np.uint64) + (np.asarray(counter).astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def normal(keys: np.ndarray, counter: int) -> np.ndarray:
    """Standard normal per (key, counter) by Box-Muller on two hashed uniforms."""
    u1 = uniform(keys, 2 * counter)
    u2 = uniform(keys, 2 * counter + 1)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def bits16(keys: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Four 16-bit words per hash, low word first: uint16 [..., 4 * len(counter)] for 1-D counter.

    The words are a little-endian view of the 64-bit hashes (no shifting or stacking).
    """
    with np.errstate(over="ignore"):
        bits = mix64(np.asarray(keys, np.uint64)[..., None] + (counter.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    bits = bits.astype("<u8", copy=False)  # the word order below is that of little-endian storage
    return bits.view(np.uint16)


def uniform16(keys: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Four uniforms in [0, 1) per hash (16 bits each): cheap pixel noise.

    Returns shape keys.shape + counter.shape + (4,), float32.
    """
    words = bits16(keys, counter).reshape(*np.shape(keys), *counter.shape, 4)
    return words.astype(np.float32) * np.float32(1.0 / 65536)


def permute(positions: np.ndarray, n: int, seed_key: int | np.ndarray) -> np.ndarray:
    """The images of `positions` under a pseudo-random permutation of [0, n).

    A 4-round Feistel network on the smallest even number of bits covering n, with
    cycle walking to stay inside [0, n) (Black & Rogaway 2002). O(1) memory for any n
    up to 2**62, vectorised. grain's own `index_shuffle` is one Python call (~7 us)
    per element and 32-bit; this does a whole global batch in one numpy pass.
    """
    if n <= 0:
        raise ValueError(f"permute: n must be positive, got {n}")
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    round_keys = [key(seed_key, r) for r in range(4)]

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & mask
        for rk in round_keys:
            left, right = right, left ^ (mix64(right ^ rk) & mask)
        return (left << half) | right

    y = encrypt(np.asarray(positions, np.uint64))
    out_of_range = y >= np.uint64(n)
    while out_of_range.any():  # expected < 4 walks: the domain is < 4n
        y[out_of_range] = encrypt(y[out_of_range])
        out_of_range = y >= np.uint64(n)
    return y.astype(np.int64)
