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
* block = (i mod 2**32, i div 2**32, stream, 0) for block i = 0, 1, ..., 2**64 - 1
* word j of the stream is output word j mod 4 of block j div 4.

Bits become floats exactly: the top 24 bits of a word give ``u = (w >> 8 + 0.5) / 2**24``,
an exact float in (0, 1) symmetric about 1/2, and ``U(-b, b)`` is ``b * (2u - 1)`` evaluated
in IEEE double and rounded once to float32.

Implementations. :func:`philox4x32` (with :func:`reference_words` and
:func:`reference_uniform`) is the readable reference, kept for cross-checks. The functions in
use (:func:`random_words`, :func:`uniform`, :func:`uniform_into`) give the same bits much
faster through one of two backends:

* ``"numba"``: compiled loops (SIMD, optionally several threads), used when numba can be
  imported and a request has at least ``NUMBA_MIN_WORDS`` words; numba is optional, and
  ``MCNC_NUMBA=0`` in the environment turns it off;
* ``"numpy"``: in-place uint64 array arithmetic on cache-sized blocks of counters, run on
  several Python threads for large requests (numpy releases the GIL).

Only integer operations and the exact float steps above are involved, so the backend, the
thread count and the way a request is split into windows never change a bit.
"""

from __future__ import annotations

import operator
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from mcnc.core.limits import check_seed, is_int

PRNG_NAME = "philox4x32-10"

# --------------------------------------------------------------------------------------------
# Which stream of a seed each random tensor of mcnc is drawn from (docs/format.md, 4.4; a test
# checks that the two tables agree). Frozen tensors are part of the file format: changing a
# stream changes every file. Streams marked "init" only draw starting values.
GENERATOR_LAYER_STREAM = 0
"""MCNC generator layer t (output layer last): weights from stream ``2t``, bias ``2t + 1``."""
ALPHA_INIT_STREAM = 0xA1FA
"""init: MCNC's initial alphas (also of MCNC adapters)."""
THETA0_STREAM = 0x7E7A0000
"""PRANC's seeded starting point theta0 (scratch mode)."""
PRANC_BASIS_STREAM = 0x9A4C0000
"""PRANC's one random basis."""
NOLA_BASIS_STREAM = 0x401A0000
"""NOLA piece p: basis stream ``NOLA_BASIS_STREAM + p``."""
COEFFICIENT_INIT_STREAM = 0xC0EF0000
"""init: NOLA's initial coefficients."""
LORA_FACTOR_INIT_STREAM = 0x10AA0000
"""init: LoRA's initial factors."""
ADAPTER_A_INIT_STREAM = 0x0ADA0000
"""init: the A factors of adapters (and NOLA adapters' initial coefficients)."""
NOLA_ADAPTER_STREAM = 0x0ADB0000
"""NOLA adapter factor p: basis stream ``NOLA_ADAPTER_STREAM + p``."""
MCNC_OFFSET_STREAM = 0x7E7A0001
"""MCNC's experimental seeded offset theta0 (training only; not in files yet)."""
MIXING_SIGN_STREAM = 0x313A0000
"""MCNC's mixing (format version 2): the random signs."""
MIXING_PERMUTATION_STREAM = 0x313A0001
"""MCNC's mixing (format version 2): keys whose stable sort is the permutation."""
ADAPTER_MIXING_STREAM = 0x0ADC0000
"""MCNC adapter mixing of region r (0: the A factors, 1: the B factors, 2: both together with
``mixing="hadamard-joint"``): signs from stream ``ADAPTER_MIXING_STREAM + 2r``, permutation
keys from ``+ 2r + 1``."""
STREAMS = {
    "generator layer t: weights 2t, bias 2t + 1": GENERATOR_LAYER_STREAM,
    "MCNC initial alpha (init)": ALPHA_INIT_STREAM,
    "PRANC theta0": THETA0_STREAM,
    "PRANC basis": PRANC_BASIS_STREAM,
    "NOLA basis of piece p (+ p)": NOLA_BASIS_STREAM,
    "NOLA initial coefficients (init)": COEFFICIENT_INIT_STREAM,
    "LoRA initial factors (init)": LORA_FACTOR_INIT_STREAM,
    "adapter A factors (init; MCNC's frozen A) and NOLA coefficients (init)": ADAPTER_A_INIT_STREAM,
    "NOLA adapter basis of factor p (+ p)": NOLA_ADAPTER_STREAM,
    "MCNC seeded offset theta0 (experimental: not in files yet)": MCNC_OFFSET_STREAM,
    "MCNC mixing signs (version 2)": MIXING_SIGN_STREAM,
    "MCNC mixing permutation keys (version 2)": MIXING_PERMUTATION_STREAM,
    "MCNC adapter mixing of region r: signs (+ 2r), permutation keys (+ 2r + 1)":
        ADAPTER_MIXING_STREAM,
}
"""The table above by purpose, as docs/format.md lists it."""

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
ROUNDS = 10
MAX_STREAM = 2**32 - 1
STREAM_WORDS = 2**66  # 2**64 blocks of 4 words

BACKENDS = ("numba", "numpy")
NUMBA_MIN_WORDS = 1 << 16  # smaller requests use numpy: no numba import or compile for them
_PAR_MIN_WORDS = 1 << 18  # fewest words per thread worth starting a thread for
# blocks per step of the numpy backend: its uint64 buffers stay in L2 with one thread; on
# several threads longer steps spend less time waiting for the GIL between array operations
_NP_CHUNK = 1 << 14
_NP_CHUNK_THREADED = 1 << 15
_NB_BATCH = 256  # blocks per batch of the numba backend (its scratch stays in L1)


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
    check_seed(seed)
    if not is_int(stream, 0, MAX_STREAM):
        raise ValueError(f"stream must be an integer in [0, 2**32), got {stream!r}")


def _check_window(start: int, count: int) -> tuple[int, int]:
    start, count = operator.index(start), operator.index(count)
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be non-negative, got {start}, {count}")
    if start + count > STREAM_WORDS:
        raise ValueError(f"words {start} .. {start + count - 1} run past the end of the stream "
                         "(2**66 words)")
    return start, count


# --------------------------------------------------------------------------------------------
# Reference implementation: explicit counters through philox4x32 (slow, kept for cross-checks)


def reference_words(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """:func:`random_words` computed the readable way, through :func:`philox4x32`."""
    _check_seed_stream(seed, stream)
    start, count = _check_window(start, count)
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


def reference_uniform(
    seed: int, stream: int, shape: tuple[int, ...], bound: float, start: int = 0
) -> torch.Tensor:
    """:func:`uniform` computed the readable way, from :func:`reference_words`."""
    count = int(np.prod(shape, dtype=np.int64))
    unit = words_to_unit(reference_words(seed, stream, start, count))
    values = (float(bound) * (2.0 * unit - 1.0)).astype(np.float32)
    return torch.from_numpy(values.reshape(shape))


# --------------------------------------------------------------------------------------------
# numpy backend
#
# A window of ``count`` words starting at word ``start`` covers blocks ``block0 + i`` for
# i = 0 .. nblocks - 1, where block0 = start // 4, offset = start % 4 and nblocks =
# (offset + count + 3) // 4; word q of block i goes to position 4 i + q - offset of the output
# (when that lies in [0, count)). Each backend fills the positions of a range of i.

_ARANGE = np.arange(_NP_CHUNK_THREADED, dtype=np.uint64)
_ARANGE.flags.writeable = False


def _round_keys(seed: int) -> list[tuple[np.uint64, np.uint64]]:
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    keys = []
    for _ in range(ROUNDS):
        keys.append((np.uint64(k0), np.uint64(k1)))
        k0, k1 = (k0 + int(_W0)) & 0xFFFFFFFF, (k1 + int(_W1)) & 0xFFFFFFFF
    return keys


def _np_philox(bufs: list[np.ndarray], block: int, m: int, keys, stream: np.uint64):
    """Blocks ``block .. block + m - 1``: four uint64 arrays of words (< 2**32), two scratch."""
    c0, c1, c2, c3, p0, p1 = (b[:m] for b in bufs)
    np.add(_ARANGE[:m], np.uint64(block), out=c0)  # no wrap: the last block is < 2**64
    np.right_shift(c0, _SHIFT32, out=c1)
    np.bitwise_and(c0, _MASK32, out=c0)
    c2.fill(stream)
    c3.fill(0)
    for k0, k1 in keys:
        np.multiply(c0, _M0, out=p0)  # < 2**64: exact
        np.multiply(c2, _M1, out=p1)
        np.right_shift(p1, _SHIFT32, out=c0)
        np.bitwise_xor(c0, c1, out=c0)
        np.bitwise_xor(c0, k0, out=c0)
        np.right_shift(p0, _SHIFT32, out=c2)
        np.bitwise_xor(c2, c3, out=c2)
        np.bitwise_xor(c2, k1, out=c2)
        np.bitwise_and(p1, _MASK32, out=c1)
        np.bitwise_and(p0, _MASK32, out=c3)
    return (c0, c1, c2, c3), p0, p1


def _np_fill(out, floats, block0, offset, keys, stream, bound, chunk, lo, hi) -> None:
    """Fill the positions of ``out`` that come from blocks ``lo .. hi - 1`` of the window."""
    count = out.shape[0]
    bufs = [np.empty(min(chunk, hi - lo), np.uint64) for _ in range(6)]
    scratch = np.empty((len(bufs[0]), 4), out.dtype)
    f64 = np.empty(len(bufs[0]), np.float64) if floats else None
    for a in range(lo, hi, chunk):
        m = min(chunk, hi - a)
        words, tmp, _ = _np_philox(bufs, block0 + a, m, keys, stream)
        base = 4 * a - offset  # position of word 0 of block a
        inside = base >= 0 and base + 4 * m <= count
        dst = out[base : base + 4 * m].reshape(m, 4) if inside else scratch[:m]
        for q, w in enumerate(words):
            if floats:
                f = f64[:m]
                np.right_shift(w, np.uint64(8), out=tmp)
                # 2u - 1 = (w >> 8) * 2**-23 + (2**-24 - 1): every step exact
                np.multiply(tmp, 2.0**-23, out=f)
                np.add(f, 2.0**-24 - 1.0, out=f)
                np.multiply(f, bound, out=dst[:, q])  # in double, rounded once to float32
            else:
                dst[:, q] = w
        if not inside:
            i, j = max(base, 0), min(base + 4 * m, count)
            out[i:j] = scratch[:m].reshape(-1)[i - base : j - base]


def _np_run(out, floats, block0, offset, seed, stream, bound, nblocks, threads) -> None:
    keys, stream = _round_keys(seed), np.uint64(stream)
    chunk = _NP_CHUNK if threads <= 1 else _NP_CHUNK_THREADED
    args = (out, floats, block0, offset, keys, stream, bound, chunk)
    if threads <= 1:
        _np_fill(*args, 0, nblocks)
        return
    cuts = [nblocks * t // threads for t in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        jobs = [pool.submit(_np_fill, *args, cuts[t], cuts[t + 1]) for t in range(threads)]
        for job in jobs:
            job.result()


# --------------------------------------------------------------------------------------------
# numba backend (optional)
#
# Plain functions here; _numba() compiles them on first use (cache=True keeps the machine
# code on disk) by rebinding the module names to numba dispatchers, so numba is imported only
# by a process that asks for a large window. A batch of blocks is computed with its four
# words in separate rows of a small scratch array, a layout LLVM turns into SIMD code.

_prange = range


def _nb_block(c0, c1, c2, c3, k0, k1):
    for _ in range(ROUNDS):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0 = (p1 >> _SHIFT32) ^ c1 ^ k0
        c1 = p1 & _MASK32
        c2 = (p0 >> _SHIFT32) ^ c3 ^ k1
        c3 = p0 & _MASK32
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def _nb_batch(s, block, m, k0, k1, stream):
    zero = np.uint64(0)
    for j in range(m):
        b = block + np.uint64(j)
        a0, a1, a2, a3 = _nb_block(b & _MASK32, b >> _SHIFT32, stream, zero, k0, k1)
        s[0, j] = np.uint32(a0)
        s[1, j] = np.uint32(a1)
        s[2, j] = np.uint32(a2)
        s[3, j] = np.uint32(a3)


def _nb_to_float(w, bound):
    t = np.float64(2 * np.int64(w >> np.uint32(8)) + 1 - 16777216) * 5.9604644775390625e-08
    return np.float32(bound * t)


def _nb_store(words, values, floats, pos, w, bound):
    """Output position ``pos`` gets word ``w`` (into ``words``) or its float (into
    ``values``): the one step in which the two kinds of request differ."""
    if floats:
        values[pos] = _nb_to_float(w, bound)
    else:
        words[pos] = w


def _nb_fill_range(words, values, floats, block0, offset, k0, k1, stream, bound, lo, hi):
    """Batches ``lo .. hi - 1`` of the window; the output is ``values`` (float32) if
    ``floats``, else ``words`` (uint32), and the other array is not touched."""
    count = values.shape[0] if floats else words.shape[0]
    nblocks = (offset + count + 3) // 4
    s = np.empty((4, _NB_BATCH), np.uint32)
    for bt in range(lo, hi):
        i0 = bt * _NB_BATCH
        m = min(_NB_BATCH, nblocks - i0)
        _nb_batch(s, block0 + np.uint64(i0), m, k0, k1, stream)
        base = 4 * i0 - offset
        if base >= 0 and base + 4 * m <= count:
            for j in range(m):
                for q in range(4):
                    _nb_store(words, values, floats, base + 4 * j + q, s[q, j], bound)
        else:
            for j in range(m):
                for q in range(4):
                    pos = base + 4 * j + q
                    if 0 <= pos < count:
                        _nb_store(words, values, floats, pos, s[q, j], bound)


def _nb_fill_parallel(words, values, floats, block0, offset, k0, k1, stream, bound, nbatches,
                      parts):
    for t in _prange(parts):
        lo, hi = nbatches * t // parts, nbatches * (t + 1) // parts
        _nb_fill_range(words, values, floats, block0, offset, k0, k1, stream, bound, lo, hi)


_NB_FUNCTIONS = {
    "_nb_block": {"inline": "always"},
    "_nb_batch": {},
    "_nb_to_float": {"inline": "always"},
    "_nb_store": {"inline": "always"},
    "_nb_fill_range": {},
    "_nb_fill_parallel": {"parallel": True},
}
_nb_state: dict = {}  # "numba": the module, or None where it cannot be used
_nb_load_lock = threading.Lock()
_nb_parallel_lock = threading.Lock()  # one parallel launch at a time (some layers need it)


def _numba():
    """The numba module with the kernels compiled on demand, or None where unavailable."""
    if "numba" not in _nb_state:
        with _nb_load_lock:
            if "numba" not in _nb_state:
                _nb_state["numba"] = _load_numba()
    return _nb_state["numba"]


def numba_module():
    """The numba module, or None where it cannot be imported or ``MCNC_NUMBA=0`` turns it
    off (compiled loops are optional: every caller has a pure NumPy / PyTorch path giving
    the same bits)."""
    if os.environ.get("MCNC_NUMBA", "").strip() == "0":
        return None
    try:
        import numba
    except Exception:  # not installed, or broken against this numpy
        return None
    return numba


def _load_numba():
    numba = numba_module()
    if numba is None:
        return None
    names = globals()
    names["_prange"] = numba.prange
    for name, options in _NB_FUNCTIONS.items():
        names[name] = numba.njit(cache=True, nogil=True, boundscheck=False, **options)(
            names[name]
        )
    return numba


def _nb_run(numba, out, floats, block0, offset, seed, stream, bound, nblocks, threads) -> None:
    keys = (np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32), np.uint64(stream))
    unused = np.empty(0, np.uint32 if floats else np.float32)
    words, values = (unused, out) if floats else (out, unused)
    args = (words, values, floats, np.uint64(block0), offset, *keys, float(bound))
    nbatches = (nblocks + _NB_BATCH - 1) // _NB_BATCH
    run_parallel(numba, min(threads, nbatches),
                 lambda parts: _nb_fill_parallel(*args, nbatches, parts),
                 lambda: _nb_fill_range(*args, 0, nbatches))


def run_parallel(numba, threads: int, parallel: Callable[[int], None],
                 serial: Callable[[], None]) -> None:
    """``parallel(threads)`` (a numba function with ``parallel=True`` that splits its work
    into that many parts) on up to ``threads`` threads when a parallel launch is allowed,
    else ``serial()``; both must give the same bits.

    OpenMP thread pools do not survive fork(): a child of a process that ran a parallel
    kernel stays serial. Two parallel launches at once are not allowed by every threading
    layer: the second caller runs serially instead of waiting."""
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    if threads > 1 and _nb_state.get("parallel_pid", os.getpid()) == os.getpid() and (
        _nb_parallel_lock.acquire(blocking=False)
    ):
        try:
            _nb_state["parallel_pid"] = os.getpid()
            before = numba.get_num_threads()
            numba.set_num_threads(threads)
            try:
                parallel(threads)
            finally:
                numba.set_num_threads(before)
        finally:
            _nb_parallel_lock.release()
    else:
        serial()


# --------------------------------------------------------------------------------------------
# Public API


def available_backends() -> tuple[str, ...]:
    """The backends usable in this process (``"numpy"`` always; ``"numba"`` if importable)."""
    return BACKENDS if _numba() is not None else ("numpy",)


def _fill(out: np.ndarray, floats: bool, seed, stream, start, bound, threads, backend) -> None:
    count = out.shape[0]
    block0, offset = divmod(start, 4)
    nblocks = (offset + count + 3) // 4
    if threads is None:
        threads = torch.get_num_threads()
    elif operator.index(threads) < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    threads = max(1, min(int(threads), count // _PAR_MIN_WORDS))
    if backend is None:
        backend = "numba" if count >= NUMBA_MIN_WORDS and _numba() is not None else "numpy"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if count == 0:
        return
    if backend == "numba":
        numba = _numba()
        if numba is None:
            raise RuntimeError("the numba backend was asked for, but numba cannot be imported")
        _nb_run(numba, out, floats, block0, offset, seed, stream, bound, nblocks, threads)
    else:
        _np_run(out, floats, block0, offset, seed, stream, bound, nblocks, threads)


def random_words(
    seed: int,
    stream: int,
    start: int,
    count: int,
    *,
    threads: int | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Words ``start .. start + count - 1`` of stream ``stream`` under ``seed``.

    Any window of a stream can be produced on its own, so large random tensors can be
    regenerated block by block in bounded memory.

    Args:
        threads: most threads to use (default ``torch.get_num_threads()``); never changes
            the result.
        backend: ``"numba"``, ``"numpy"`` or None (the fastest available); never changes
            the result.

    Returns:
        uint32 array of shape (count,).
    """
    _check_seed_stream(seed, stream)
    start, count = _check_window(start, count)
    out = np.empty(count, dtype=np.uint32)
    _fill(out, False, int(seed), int(stream), start, 0.0, threads, backend)
    return out


def uniform_into(
    out: torch.Tensor | np.ndarray,
    seed: int,
    stream: int,
    bound: float,
    start: int = 0,
    *,
    threads: int | None = None,
    backend: str | None = None,
) -> torch.Tensor | np.ndarray:
    """Fill a float32 buffer with ``U(-bound, bound)`` entries, in place; returns ``out``.

    Entry ``n`` (row-major order) gets word ``start + n`` of the stream, so
    ``uniform_into(buf, seed, stream, bound, start=s)`` writes exactly the entries
    ``s .. s + buf.numel() - 1`` of the flattened ``uniform(seed, stream, shape, bound)``:
    a large random matrix can be regenerated block by block into one reused buffer.

    Args:
        out: a C-contiguous float32 CPU tensor (its autograd history is not recorded) or
            writeable numpy array.
        threads, backend: as in :func:`random_words`; neither changes the result.
    """
    _check_seed_stream(seed, stream)
    if isinstance(out, torch.Tensor):
        if out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous():
            raise ValueError("out must be a contiguous float32 CPU tensor, got "
                             f"{out.dtype} on {out.device}, contiguous={out.is_contiguous()}")
        flat = out.detach().numpy().reshape(-1)
    elif isinstance(out, np.ndarray):
        if out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous float32 array")
        flat = out.reshape(-1)
    else:
        raise TypeError(f"out must be a torch.Tensor or numpy.ndarray, got {type(out)!r}")
    start, _ = _check_window(start, flat.shape[0])
    _fill(flat, True, int(seed), int(stream), start, float(bound), threads, backend)
    return out


def uniform(
    seed: int,
    stream: int,
    shape: tuple[int, ...],
    bound: float,
    start: int = 0,
    *,
    threads: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """A float32 tensor of the given shape with entries ``U(-bound, bound)``.

    Entries are taken in row-major (C) order from word ``start`` of the stream.
    The result is bit-identical everywhere; move it to a device afterwards.
    ``threads`` and ``backend`` are as in :func:`random_words`.
    """
    out = torch.empty(shape, dtype=torch.float32)
    return uniform_into(out, seed, stream, bound, start, threads=threads, backend=backend)
