"""The fast random backends give the reference bits exactly (see test_rng_golden.py)."""

import threading

import numpy as np
import pytest
import torch

from mcnc.core import rng

HAVE_NUMBA = "numba" in rng.available_backends()
BACKENDS = [
    "numpy",
    pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")),
]

_draw = np.random.default_rng(20240611)
SEEDS = [0, 1, 2**32 - 1, 2**32, 2**64 - 1, *(2 * int(s) + 1 for s in _draw.integers(0, 2**63, 3))]
STREAMS = [0, 1, 2**32 - 2, 2**32 - 1, int(_draw.integers(0, 2**32))]
# (start, count): odd starts and counts crossing 4-word blocks, windows across block 2**32
# (word 2**34) where the high counter word first changes, and the very end of the stream
WINDOWS = [
    (0, 1), (0, 4), (1, 2), (3, 1), (2, 7), (5, 50), (7, 1001), (4093, 4 * 16384 + 11),
    (2**34 - 9, 19), (2**34 - 1, 2), (2**34, 5), (2**34 + 3, 6), (3 * 2**34 + 1, 3),
    (2**64 + 2, 9), (2**66 - 7, 7), (2**66 - 1, 1),
]  # fmt: skip


def _bits(x) -> np.ndarray:
    array = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.ascontiguousarray(array).view(np.uint32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("start", "count"), WINDOWS)
def test_words_equal_reference(backend, start, count):
    for i, seed in enumerate(SEEDS):
        stream = STREAMS[(i + start) % len(STREAMS)]
        expected = rng.reference_words(seed, stream, start, count)
        got = rng.random_words(seed, stream, start, count, threads=1, backend=backend)
        assert got.dtype == np.uint32 and got.shape == (count,)
        np.testing.assert_array_equal(got, expected, err_msg=f"seed={seed} stream={stream}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_last_block_is_philox_of_the_all_ones_counter(backend):
    seed, stream = 2**64 - 1, 2**32 - 1
    expected = rng.philox4x32(np.array([[2**32 - 1, 2**32 - 1, stream, 0]]), (2**32 - 1,) * 2)
    got = rng.random_words(seed, stream, 2**66 - 4, 4, backend=backend)
    np.testing.assert_array_equal(got, expected[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bound", [0.5, 1 / 3, 2.5e-3, -2.5, 1e30, 3.0e38, 1e-42, 0.0, float("inf"), 7]
)
def test_uniform_equals_reference(backend, bound):
    for i, (start, count) in enumerate(WINDOWS[::2]):
        seed, stream = SEEDS[i % len(SEEDS)], STREAMS[i % len(STREAMS)]
        expected = rng.reference_uniform(seed, stream, (count,), bound, start)
        got = rng.uniform(seed, stream, (count,), bound, start, threads=1, backend=backend)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(_bits(got), _bits(expected), err_msg=f"window {i}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_shapes_and_fresh_memory(backend):
    seed, stream = 12345678901234567890, 2**32 - 1
    expected = rng.reference_uniform(seed, stream, (33, 7, 5), 0.25, 6)
    got = rng.uniform(seed, stream, (33, 7, 5), 0.25, 6, backend=backend)
    assert got.shape == (33, 7, 5)
    np.testing.assert_array_equal(_bits(got), _bits(expected))
    assert rng.uniform(seed, stream, (0, 4), 1.0, backend=backend).shape == (0, 4)
    assert rng.uniform(seed, stream, (), 1.0, backend=backend).shape == ()


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_into_regenerates_blockwise(backend):
    seed, stream, bound, shape = 2**40 + 17, 3, 0.1, (301, 103)
    whole = rng.reference_uniform(seed, stream, shape, bound).reshape(-1)
    out = torch.empty(shape[0] * shape[1])
    buffer = torch.empty(4099)
    for start in range(0, out.numel(), buffer.numel()):
        n = min(buffer.numel(), out.numel() - start)
        chunk = buffer[:n]
        assert rng.uniform_into(chunk, seed, stream, bound, start, backend=backend) is chunk
        out[start : start + n] = chunk
    np.testing.assert_array_equal(_bits(out), _bits(whole))
    array = np.empty((7, 9), np.float32)
    rng.uniform_into(array, seed, stream, bound, 11, backend=backend)
    np.testing.assert_array_equal(_bits(array.reshape(-1)), _bits(whole[11 : 11 + 63]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_do_not_change_bits(backend):
    count, start = 3 * 2**18 + 5, 2**34 - 6  # big enough for three threads, across block 2**32
    seed, stream = 2**63 + 11, 2**32 - 1
    expected = rng.reference_words(seed, stream, start, count)
    reference_floats = rng.reference_uniform(seed, stream, (count,), 0.75, start)
    for threads in (1, 2, 3):
        words = rng.random_words(seed, stream, start, count, threads=threads, backend=backend)
        np.testing.assert_array_equal(words, expected)
        floats = rng.uniform(seed, stream, (count,), 0.75, start, threads=threads, backend=backend)
        np.testing.assert_array_equal(_bits(floats), _bits(reference_floats))


def test_backends_agree_on_a_large_window():
    count = 2**20 + 3
    numpy_words = rng.random_words(7, 8, 9, count, threads=2, backend="numpy")
    np.testing.assert_array_equal(numpy_words[-1000:], rng.reference_words(7, 8, 9 + count - 1000,
                                                                           1000))
    for backend in rng.available_backends():
        np.testing.assert_array_equal(rng.random_words(7, 8, 9, count, backend=backend),
                                      numpy_words)


def test_concurrent_calls_from_python_threads():
    count = 2**19 + 1
    expected = _bits(rng.uniform(99, 1, (count,), 2.0, 5, threads=1))
    results = [None] * 4

    def work(i):
        results[i] = rng.uniform(99, 1, (count,), 2.0, 5, threads=2)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for r in results:
        np.testing.assert_array_equal(_bits(r), expected)


def test_without_numba_everything_falls_back_to_numpy(monkeypatch):
    monkeypatch.setitem(rng._nb_state, "numba", None)
    assert rng.available_backends() == ("numpy",)
    seed, stream, count = 2**50 + 3, 6, rng.NUMBA_MIN_WORDS + 3
    got = rng.uniform(seed, stream, (count,), 0.5, 1)
    np.testing.assert_array_equal(_bits(got), _bits(rng.reference_uniform(seed, stream, (count,),
                                                                          0.5, 1)))
    with pytest.raises(RuntimeError, match="numba"):
        rng.random_words(seed, stream, 0, 4, backend="numba")


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        rng.random_words(0, 0, 0, 4, backend="cuda")
    with pytest.raises(ValueError, match="threads"):
        rng.random_words(0, 0, 0, 4, threads=0)
    with pytest.raises(ValueError, match="end of the stream"):
        rng.random_words(0, 0, 2**66 - 1, 2)
    with pytest.raises(ValueError, match="non-negative"):
        rng.random_words(0, 0, -1, 2)
    with pytest.raises(ValueError, match="stream"):
        rng.uniform_into(torch.empty(3), 0, 2**32, 1.0)
    with pytest.raises(ValueError, match="float32"):
        rng.uniform_into(torch.empty(3, dtype=torch.float64), 0, 0, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        rng.uniform_into(torch.empty(4, 4).t(), 0, 0, 1.0)
    with pytest.raises(ValueError, match="float32"):
        rng.uniform_into(np.empty(4, np.float32)[::2], 0, 0, 1.0)
    with pytest.raises(TypeError):
        rng.uniform_into([0.0, 0.0], 0, 0, 1.0)
