"""Compiled loops of the seeded mixing (:mod:`mcnc.core.mixing`) for float32 CPU vectors: the
Hadamard butterflies, and the signs, permutation and division around them, each computed
once per entry in place, on as many threads as PyTorch uses.

They give the bits of the PyTorch path (``mixing.butterfly_passes`` and the separate steps of
``SeededMixing``): every butterfly reads the two values the previous level wrote and does the
same addition, whatever the grouping into passes, blocks and threads.

The loops are plain Python; :func:`kernel` compiles them with numba on first use (the machine
code is cached on disk), or returns None where numba cannot be used. Every top-level loop
takes ``parts`` and runs ``for part in _prange(parts)``: it is compiled twice, serially (one
part) and with ``parallel=True`` (a part per thread), the second from a copy under another
name (:func:`_renamed`) so that numba's disk cache keeps the two apart.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import numpy as np
import torch

from mcnc.core import rng

BLOCK = 1 << 15
"""The levels whose butterflies stay within this many entries (128 KiB of float32, the size
of a core's second-level cache) run block by block while the block sits in the cache."""
PARALLEL_MIN_LENGTH = 1 << 16
"""Shorter vectors take one thread (a parallel launch costs more there)."""
_prange = range  # numba.prange once the loops are compiled (:func:`kernel`)


def _octet(x: np.ndarray, j: np.uint64, h: np.uint64, down: bool) -> None:
    """Three butterfly levels, distances ``h, 2h, 4h`` (``down``: ``4h, 2h, h``), of the eight
    entries ``j + m h`` (m < 8): loaded once, taken through the butterflies in registers,
    stored once. Indices are unsigned: numba then omits its check for negative ones (here a
    third of the time), and unsigned plus unsigned stays unsigned (a signed number would
    make the sum a float)."""
    h2 = h + h
    h3, h4 = h2 + h, h2 + h2
    h5, h6, h7 = h4 + h, h4 + h2, h4 + h3
    a0, a1, a2, a3 = x[j], x[j + h], x[j + h2], x[j + h3]
    a4, a5, a6, a7 = x[j + h4], x[j + h5], x[j + h6], x[j + h7]
    if down:  # distance 4h first
        a0, a4, a1, a5 = a0 + a4, a0 - a4, a1 + a5, a1 - a5
        a2, a6, a3, a7 = a2 + a6, a2 - a6, a3 + a7, a3 - a7
    else:  # distance h first
        a0, a1, a2, a3 = a0 + a1, a0 - a1, a2 + a3, a2 - a3
        a4, a5, a6, a7 = a4 + a5, a4 - a5, a6 + a7, a6 - a7
    a0, a2, a1, a3 = a0 + a2, a0 - a2, a1 + a3, a1 - a3
    a4, a6, a5, a7 = a4 + a6, a4 - a6, a5 + a7, a5 - a7
    if down:  # distance h last
        a0, a1, a2, a3 = a0 + a1, a0 - a1, a2 + a3, a2 - a3
        a4, a5, a6, a7 = a4 + a5, a4 - a5, a6 + a7, a6 - a7
    else:  # distance 4h last
        a0, a4, a1, a5 = a0 + a4, a0 - a4, a1 + a5, a1 - a5
        a2, a6, a3, a7 = a2 + a6, a2 - a6, a3 + a7, a3 - a7
    x[j], x[j + h], x[j + h2], x[j + h3] = a0, a1, a2, a3
    x[j + h4], x[j + h5], x[j + h6], x[j + h7] = a4, a5, a6, a7


def _radix8_range(x: np.ndarray, shift: int, down: bool, lo: int, hi: int) -> None:
    """Octets ``lo .. hi - 1`` of the three-level pass at distance ``h = 2**shift``: octet t
    starts at ``j = (t // h) 8 h + t % h``; one group of ``8 h`` entries at a time, so that
    ``j`` runs over consecutive entries."""
    one, s = np.uint64(1), np.uint64(shift)
    h, t, hi = one << s, np.uint64(lo), np.uint64(hi)
    while t < hi:
        stop = min(hi, ((t >> s) + one) << s)
        first = ((t >> s) << (s + np.uint64(3))) + (t & (h - one))
        for j in range(first, first + (stop - t)):
            _octet(x, j, h, down)
        t = stop


def _radix2_range(x: np.ndarray, shift: int, lo: int, hi: int) -> None:
    """Butterflies ``lo .. hi - 1`` of the level at distance ``h = 2**shift`` (the pair
    ``j, j + h`` for ``j = (t // h) 2 h + t % h``)."""
    one, s = np.uint64(1), np.uint64(shift)
    h = one << s
    for t in range(np.uint64(lo), np.uint64(hi)):
        j = ((t >> s) << (s + one)) + (t & (h - one))
        a, b = x[j], x[j + h]
        x[j], x[j + h] = a + b, a - b


def _blocks(x: np.ndarray, b: int, block: int, local: int, down: bool) -> None:
    """The ``local`` lowest three-level groups (``down``: in reverse) within block ``b`` of
    ``block`` entries, while it sits in the cache."""
    part = x[b * block:(b + 1) * block]
    for i in range(local):
        g = local - 1 - i if down else i
        _radix8_range(part, 3 * g, down, 0, block // 8)


def _plan(n: int, block: int, reverse: bool) -> tuple[int, int, np.ndarray]:
    """How the ``log2 n`` levels are split: ``(block, local, passes)``: the block (at most
    n), the three-level groups run block by block, and the passes over the whole vector in
    order, rows ``(first level, levels)``: three levels per pass, the top one or two alone."""
    levels = 0
    while (1 << levels) < n:
        levels += 1
    groups, block = levels // 3, min(block, n)
    local = 0  # groups whose 8 h entries fit in a block (h = 8**g)
    while local < groups and 8 ** (local + 1) <= block:
        local += 1
    passes = np.empty((levels - 2 * groups - local, 2), np.int64)
    for i, g in enumerate(range(local, groups)):
        passes[i] = 3 * g, 3
    for i, level in enumerate(range(3 * groups, levels)):
        passes[groups - local + i] = level, 1
    return block, local, passes[::-1] if reverse else passes


def _span(n: int, part: int, parts: int) -> tuple[np.uint64, np.uint64]:
    """Part ``part`` of ``parts`` of ``range(n)``, as unsigned bounds (:func:`_octet`)."""
    return np.uint64(n * part // parts), np.uint64(n * (part + 1) // parts)


def _transform(x: np.ndarray, reverse: bool, block: int, parts: int) -> None:
    """``x <- H x`` in place for a power-of-two length (Sylvester order, unnormalised): level
    by level, pairs at distance 1, 2, 4, ... (``reverse``: ..., 4, 2, 1), the lowest levels
    block by block (:func:`_plan`), the others in passes of three cut into ``parts``."""
    block, local, passes = _plan(x.size, block, reverse)
    if not reverse:
        for b in _prange(x.size // block):
            _blocks(x, b, block, local, False)
    for level, width in passes:
        count = x.size // (8 if width == 3 else 2)  # octets or pairs
        for part in _prange(parts):
            lo, hi = _span(count, part, parts)
            if width == 3:
                _radix8_range(x, level, reverse, lo, hi)
            else:
                _radix2_range(x, level, lo, hi)
    if reverse:
        for b in _prange(x.size // block):
            _blocks(x, b, block, local, True)


def _signed_into(x: np.ndarray, signs: np.ndarray, buf: np.ndarray, parts: int) -> None:
    """``buf <- S [x; 0]``: ``x`` zero-padded to ``buf``'s length, times the signs (the
    padding too, so its zeros carry the signs a padded tensor times the signs would)."""
    n, zero = np.uint64(x.size), np.float32(0.0)
    for part in _prange(parts):
        lo, hi = _span(buf.size, part, parts)
        for i in range(lo, min(hi, n)):
            buf[i] = x[i] * signs[i]
        for i in range(max(lo, n), hi):
            buf[i] = zero * signs[i]


def _gathered(buf: np.ndarray, index: np.ndarray, divisor: np.float32, scale: np.ndarray,
              out: np.ndarray, parts: int) -> None:
    """``out[j] <- buf[index[j]] / divisor * scale[j]`` (without ``* scale[j]`` when
    ``scale`` is empty)."""
    for part in _prange(parts):
        lo, hi = _span(out.size, part, parts)
        if scale.size:
            for j in range(lo, hi):
                out[j] = buf[index[j]] / divisor * scale[j]
        else:
            for j in range(lo, hi):
                out[j] = buf[index[j]] / divisor


def _gathered_or_zero(grad: np.ndarray, index: np.ndarray, divisor: np.float32,
                      scale: np.ndarray, out: np.ndarray, parts: int) -> None:
    """``out[i] <- grad[k] * scale[k] / divisor`` for ``k = index[i]`` (without
    ``* scale[k]`` when ``scale`` is empty), and 0 where ``k < 0``: the transpose of
    :func:`_gathered` when ``index`` is the inverse of its index."""
    zero = np.float32(0.0)
    for part in _prange(parts):
        lo, hi = _span(out.size, part, parts)
        for i in range(lo, hi):
            k = index[i]
            if k < 0:
                out[i] = zero
            elif scale.size:
                out[i] = grad[k] * scale[k] / divisor
            else:
                out[i] = grad[k] / divisor


def _signed_from(buf: np.ndarray, signs: np.ndarray, out: np.ndarray, parts: int) -> None:
    """``out <- (S buf)[:len(out)]`` (the transpose of :func:`_signed_into`)."""
    for part in _prange(parts):
        lo, hi = _span(out.size, part, parts)
        for i in range(lo, hi):
            out[i] = buf[i] * signs[i]


DIGIT_BITS = 12
"""A key of the seeded order (24 bits) is sorted as two digits of this many bits."""


def _digit_offsets(counts: np.ndarray) -> None:
    """``counts[part, digit]`` -> where part ``part`` writes its first entry of ``digit``:
    all smaller digits first, then the same digit of the parts before (a stable order)."""
    position = 0
    for digit in range(counts.shape[1]):
        for part in range(counts.shape[0]):
            count = counts[part, digit]
            counts[part, digit] = position
            position += count


def _radix_order(keys: np.ndarray, scratch: np.ndarray, highs: np.ndarray, out: np.ndarray,
                 parts: int) -> None:
    """``out <- argsort(keys, stable=True)[:out.size]`` for integer keys below
    ``2 ** (2 DIGIT_BITS)``: a counting sort by the low digit into ``scratch`` (indices, of
    ``out``'s type) and ``highs`` (uint16: their high digits, so that the second pass reads
    in order), then a counting sort of that by the high digit. Each of ``parts`` parts of the
    input counts and writes its own share, in part order, so each pass is stable and equal
    keys keep their index order, as in PyTorch's sort, whatever the number of parts."""
    digits, mask, n = 1 << DIGIT_BITS, (1 << DIGIT_BITS) - 1, keys.size
    low = np.zeros((parts, digits), np.int64)
    for part in _prange(parts):
        lo, hi = _span(n, part, parts)
        for i in range(lo, hi):
            low[part, keys[i] & mask] += 1
    _digit_offsets(low)
    for part in _prange(parts):
        lo, hi = _span(n, part, parts)
        for i in range(lo, hi):
            key = keys[i]
            position = low[part, key & mask]
            low[part, key & mask] = position + 1
            scratch[position] = i
            highs[position] = key >> DIGIT_BITS
    high = np.zeros((parts, digits), np.int64)
    for part in _prange(parts):
        lo, hi = _span(n, part, parts)
        for j in range(lo, hi):
            high[part, highs[j]] += 1
    _digit_offsets(high)
    for part in _prange(parts):
        lo, hi = _span(n, part, parts)
        for j in range(lo, hi):
            position = high[part, highs[j]]
            high[part, highs[j]] = position + 1
            if position < out.size:
                out[position] = scratch[j]


_HELPERS = ("_octet", "_radix8_range", "_radix2_range", "_blocks", "_plan", "_span",
            "_digit_offsets")
_LOOPS = ("_transform", "_signed_into", "_gathered", "_gathered_or_zero", "_signed_from",
          "_radix_order")
_compiled: dict = {}


def _renamed(function: Callable, name: str) -> Callable:
    """``function``'s code under another name (numba's disk cache tells functions apart by
    name and line, not by compile options)."""
    code = function.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, function.__globals__, name)


def kernel(name: str, parallel: bool = False) -> Callable | None:
    """The compiled loop ``name`` of ``_LOOPS`` (``parallel``: its ``parallel=True``
    compilation), or None where numba cannot be used (:func:`mcnc.core.rng.numba_module`).
    Everything is compiled on first use, the helpers first, by rebinding this module's
    names."""
    if "loops" not in _compiled:
        numba = rng.numba_module()
        loops = None
        if numba is not None:
            names = globals()
            names["_prange"] = numba.prange
            options = {"cache": True, "nogil": True, "boundscheck": False}
            for helper in _HELPERS:
                inline = {"inline": "always"} if helper == "_octet" else {}
                names[helper] = numba.njit(**options, **inline)(names[helper])
            loops = {}
            for loop in _LOOPS:
                loops[loop, False] = numba.njit(**options)(names[loop])
                loops[loop, True] = numba.njit(parallel=True, **options)(
                    _renamed(names[loop], f"{loop}_parallel"))
        _compiled["loops"] = loops
    loops = _compiled["loops"]
    return None if loops is None else loops[name, parallel]


def available() -> bool:
    """Whether the compiled loops can be used (numba imports and is not switched off)."""
    return kernel("_transform") is not None


def run(name: str, length: int, *args) -> None:
    """Loop ``name`` on ``args`` over a vector of ``length`` entries: on PyTorch's threads
    (:func:`mcnc.core.rng.run_parallel`), on one below ``PARALLEL_MIN_LENGTH``."""
    threads = torch.get_num_threads() if length >= PARALLEL_MIN_LENGTH else 1
    serial = kernel(name)
    if threads == 1:
        serial(*args, 1)
        return
    parallel = kernel(name, parallel=True)
    rng.run_parallel(rng.numba_module(), threads, lambda parts: parallel(*args, parts),
                     lambda: serial(*args, 1))


def sorted_order(keys: np.ndarray, keep: int, dtype: np.dtype) -> np.ndarray | None:
    """``argsort(keys, stable=True)[:keep]`` as ``dtype`` (keys: int32 below
    ``2 ** (2 DIGIT_BITS)``, :func:`_radix_order`, on PyTorch's threads), or None without
    the compiled loops."""
    if not 0 <= keep <= keys.size:
        raise ValueError(f"keep must be in [0, {keys.size}], got {keep}")
    if not available():
        return None
    out, scratch = np.empty(keep, dtype), np.empty(keys.size, dtype)
    run("_radix_order", keys.size, keys, scratch, np.empty(keys.size, np.uint16), out)
    return out


def transform_in_place(x: np.ndarray, reverse: bool) -> None:
    """``x <- H x`` (float32, power-of-two length; :func:`_transform`)."""
    run("_transform", x.size, x, reverse, BLOCK)


def mix(x: np.ndarray, signs: np.ndarray, order: np.ndarray, divisor: np.float32,
        scale: np.ndarray, out: np.ndarray) -> None:
    """``out <- (H S [x; 0])[order] / divisor * scale`` (``scale`` empty: no scale) through
    one scratch vector of ``signs``'s length."""
    buf = np.empty(signs.size, np.float32)
    run("_signed_into", buf.size, x, signs, buf)
    transform_in_place(buf, False)
    run("_gathered", out.size, buf, order, divisor, scale, out)


def unmix(grad: np.ndarray, signs: np.ndarray, inverse: np.ndarray, divisor: np.float32,
          scale: np.ndarray, out: np.ndarray) -> None:
    """The transpose of :func:`mix` applied to ``grad``: ``out <- (S H g)[:len(out)]`` where
    ``g[order[j]] = grad[j] * scale[j] / divisor`` and 0 elsewhere, gathered through the
    inverse permutation (``inverse[order[j]] = j``, -1 elsewhere: reading at random is
    cheaper than writing at random)."""
    buf = np.empty(signs.size, np.float32)
    run("_gathered_or_zero", buf.size, grad, inverse, divisor, scale, buf)
    transform_in_place(buf, True)
    run("_signed_from", out.size, buf, signs, out)
