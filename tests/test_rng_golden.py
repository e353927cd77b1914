"""Golden values: the portable generator must give these bits forever (format version 1)."""

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from mcnc.core import rng
from mcnc.core.generator import Generator, GeneratorSpec, seeded_weights

# Known-answer vectors of Philox4x32-10 published with Random123 (kat_vectors):
# counter (4 words), key (2 words) -> output (4 words).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_philox_known_answers(counter, key, expected):
    out = rng.philox4x32(np.array([counter], dtype=np.uint64), key)
    assert tuple(int(w) for w in out[0]) == expected


def test_stream_layout_block_zero_is_the_zero_kat():
    # seed 0, stream 0, block 0 is counter (0,0,0,0) under key (0,0)
    assert tuple(int(w) for w in rng.random_words(0, 0, 0, 4)) == KAT[0][2]


def test_windows_agree_with_the_whole_stream():
    whole = rng.random_words(42, 3, 0, 103)
    for start, count in [(0, 1), (1, 7), (5, 50), (99, 4), (102, 1)]:
        np.testing.assert_array_equal(rng.random_words(42, 3, start, count),
                                      whole[start : start + count])


def test_words_to_floats_is_exact():
    words = np.array([0, 0xFF, 0x100, 0xFFFFFFFF], dtype=np.uint32)
    np.testing.assert_array_equal(rng.words_to_unit(words),
                                  [0.5 / 2**24, 0.5 / 2**24, 1.5 / 2**24, 1 - 0.5 / 2**24])


def test_large_seed_and_stream_golden():
    assert rng.random_words(2**64 - 1, 7, 5, 3).tolist() == [272329441, 3572114394, 3229159653]


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        rng.random_words(seed, 0, 0, 1)


def _digest(tensors):
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in tensors)).hexdigest()


def test_default_generator_weights_with_gain_4_golden():
    spec = GeneratorSpec(k=16, d=1600, L=20.0, width=64, depth=2, hidden_gain=4.0, seed=0)
    assert spec == replace(GeneratorSpec(), hidden_gain=4.0)  # the defaults but the gain
    weights = seeded_weights(spec)
    assert [tuple(w.shape) for w in weights] == [(64, 16), (64,), (64, 64), (64,), (1600, 64)]
    assert weights[0][0, :2].tolist() == [-0.012619193643331528, 0.047565024346113205]
    assert weights[1][:2].tolist() == [0.10479811578989029, 2.762453079223633]
    assert weights[2][0, :2].tolist() == [-1.1636781692504883, 0.5215632915496826]
    assert weights[4][0, :2].tolist() == [0.27302879095077515, 0.03612591326236725]
    assert _digest(weights) == "5b38949eada5ea1440c22ded910b14cf07d011e9091d07c743bc076f51efe49b"


def test_odd_generator_golden():
    spec = GeneratorSpec(k=4, d=10, L=5.0, width=8, depth=3, seed=12345678901234567890,
                         hidden_gain=2.0)
    weights = seeded_weights(spec)
    assert _digest(weights) == "c1cfbe328f181e68b9aaff9641fe490ffa13875f3e6abb671dd240038a61c226"
    out = Generator(spec)(torch.tensor([[1.0, -2.0, 3.0, 0.5]]))
    expected = [0.051795341074466705, -0.03854486718773842, -0.18079383671283722,
                -0.02019827999174595, 0.192656010389328, -0.8340360522270203,
                0.11229889839887619, -0.43073830008506775, -0.1370650976896286,
                0.11432962864637375]
    torch.testing.assert_close(out[0], torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_weights_do_not_depend_on_torch_rng_or_threads():
    spec = GeneratorSpec(k=3, d=20, width=16, seed=5)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    a = seeded_weights(spec)
    torch.manual_seed(999)
    torch.set_num_threads(1)
    try:
        b = seeded_weights(spec)
    finally:
        torch.set_num_threads(threads)
    assert _digest(a) == _digest(b)
