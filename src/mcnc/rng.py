"""Portable counter-based random numbers: Philox4x32-10 in plain integer arithmetic.

Every frozen random tensor in mcnc (the generator's weights, later the bases of the baselines)
is a pure function of ``(seed, stream, index)``. That is what makes a model file a seed plus a
few numbers: the reader regenerates the same bits on any OS, device, thread count and library
version, because nothing here depends on torch's or numpy's own random generators, on float
rounding modes or on the order in which threads run.

The algorithm is Philox4x32 with 10 rounds (Salmon et al., "Parallel random numbers: as easy
as 1, 2, 3", SC 2011). It maps a 128-bit counter and a 64-bit key to 128 random bits:

    round(c, k):  (hi0, lo0) = M0 * c0,  (hi1, lo1) = M1 * c2      (32x32 -> 64-bit products)
                  c' = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)
    between rounds the key is bumped: k0 += W0, k1 += W1 (mod 2**32)

How mcnc lays out a stream (also written down in ``docs/format.md``):

* key   = (seed mod 2**32, seed div 2**32), for a seed in [0, 2**64)
* block = (i mod 2**32, i div 2**32, stream, 0) for block i = 0, 1, 2, ...
* word j of the stream is output word j mod 4 of block j div 4.

Bits become floats exactly: the top 24 bits of a word give ``u = (w >> 8 + 0.5) / 2**24``,
an exact float in (0, 1) symmetric about 1/2, and ``U(-b, b)`` is ``b * (2u - 1)`` evaluated
in IEEE double and rounded once to float32.
"""

from __future__ import annotations

import numpy as np
import torch

PRNG_NAME = "philox4x32-10"

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
ROUNDS = 10
MAX_SEED = 2**64 - 1
MAX_STREAM = 2**32 - 1


def philox4x32(counters: np.ndarray, key: tuple[int, int], rounds: int = ROUNDS) -> np.ndarray:
    """Apply Philox4x32 to a batch of counters.

    Args:
        counters: integer array of shape (n, 4) holding 32-bit counter words.
        key: the two 32-bit key words.
        rounds: number of rounds (10 is the standard, crush-resistant choice).

    Returns:
        uint32 array of shape (n, 4): the random words for each counter.
    """
    c = [np.asarray(counters[:, i], dtype=np.uint64) & _MASK32 for i in range(4)]
    k0, k1 = np.uint64(key[0] & 0xFFFFFFFF), np.uint64(key[1] & 0xFFFFFFFF)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        p0, p1 = _M0 * c[0], _M1 * c[2]
        c = [
            (p1 >> _SHIFT32) ^ c[1] ^ k0,
            p1 & _MASK32,
            (p0 >> _SHIFT32) ^ c[3] ^ k1,
            p0 & _MASK32,
        ]
    return np.stack(c, axis=1).astype(np.uint32)


def _check_seed_stream(seed: int, stream: int) -> None:
    if not (isinstance(seed, int | np.integer) and 0 <= int(seed) <= MAX_SEED):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if not (isinstance(stream, int | np.integer) and 0 <= int(stream) <= MAX_STREAM):
        raise ValueError(f"stream must be an integer in [0, 2**32), got {stream!r}")


def random_words(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """Words ``start .. start + count - 1`` of stream ``stream`` under ``seed``.

    Any window of a stream can be produced on its own, so large random tensors can be
    regenerated block by block in bounded memory.

    Returns:
        uint32 array of shape (count,).
    """
    _check_seed_stream(seed, stream)
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be non-negative, got {start}, {count}")
    first, last = start // 4, (start + count + 3) // 4
    blocks = np.arange(first, last, dtype=np.uint64)
    counters = np.zeros((len(blocks), 4), dtype=np.uint64)
    counters[:, 0] = blocks & _MASK32
    counters[:, 1] = blocks >> _SHIFT32
    counters[:, 2] = np.uint64(stream)
    seed = int(seed)
    words = philox4x32(counters, (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)
    offset = start - 4 * first
    return words[offset : offset + count]


def words_to_unit(words: np.ndarray) -> np.ndarray:
    """Map uint32 words to exact doubles in (0, 1): ``(w >> 8 + 0.5) / 2**24``."""
    return ((words >> np.uint32(8)).astype(np.float64) + 0.5) * 2.0**-24


def uniform(
    seed: int, stream: int, shape: tuple[int, ...], bound: float, start: int = 0
) -> torch.Tensor:
    """A float32 tensor of the given shape with entries ``U(-bound, bound)``.

    Entries are taken in row-major (C) order from word ``start`` of the stream.
    The result is bit-identical everywhere; move it to a device afterwards.
    """
    count = int(np.prod(shape, dtype=np.int64))
    unit = words_to_unit(random_words(seed, stream, start, count))
    values = (float(bound) * (2.0 * unit - 1.0)).astype(np.float32)
    return torch.from_numpy(values.reshape(shape))
