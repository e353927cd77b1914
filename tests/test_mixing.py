"""The seeded Hadamard mixing of MCNC's generated vector."""

import contextlib
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import mcnc
from mcnc.core import rng
from mcnc.core.mixing import SeededMixing, hadamard, padded_length, seeded_order, seeded_signs


@contextlib.contextmanager
def torch_threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sylvester(length: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < length:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def test_hadamard_is_the_sylvester_matrix_without_forming_it():
    x = torch.randn(16, dtype=torch.float64)
    assert torch.allclose(hadamard(x), _sylvester(16).double() @ x)
    with pytest.raises(ValueError, match="power-of-two length, got 12"):
        hadamard(torch.zeros(12))
    assert [padded_length(n) for n in (1, 2, 3, 1000, 1024)] == [1, 2, 4, 1024, 1024]


def _butterflies_with_autograd(x: torch.Tensor) -> torch.Tensor:
    """The passes of :func:`hadamard` written with differentiable ops, for autograd to trace."""
    half = 1
    while half < x.numel():
        pairs = x.reshape(-1, 2, half)
        x = torch.stack((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), dim=1)
        half *= 2
    return x.reshape(-1)


def test_the_hadamard_backward_is_what_autograd_computes_bit_for_bit():
    from mcnc.core.mixing import _Hadamard

    x = torch.randn(4096, requires_grad=True)
    grad = torch.randn(4096)
    (through_passes,) = torch.autograd.grad(_butterflies_with_autograd(x), x, grad)
    (own,) = torch.autograd.grad(_Hadamard.apply(x), x, grad)
    assert torch.equal(own, through_passes)
    assert torch.equal(_Hadamard.apply(x), _butterflies_with_autograd(x))
    assert torch.equal(hadamard(x.detach()), _butterflies_with_autograd(x))


@pytest.mark.parametrize("levels", [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21])
def test_the_compiled_butterflies_give_the_bits_of_the_passes(levels):
    """Three levels per pass and blocks that stay in the cache: every level count modulo 3,
    below, at and above the block (2**15 entries), in both directions."""
    from mcnc.core.mixing import butterfly_passes
    from mcnc.core.mixing_kernels import available

    pytest.importorskip("numba")
    assert available()
    x = torch.randn(1 << levels, generator=torch.Generator().manual_seed(levels))
    for threads in (1, 2):  # the serial and the parallel compilation
        with torch_threads(threads):
            assert torch.equal(hadamard(x), butterfly_passes(x))
            assert torch.equal(hadamard(x, reverse=True), butterfly_passes(x, reverse=True))
    if levels <= 13:
        assert torch.equal(hadamard(x), _butterflies_with_autograd(x))


@pytest.mark.parametrize(("seed", "stream", "length"), [(0, rng.MIXING_PERMUTATION_STREAM, 1 << 20),
                                                       (7, 3, 1000), (2**40, 11, 4096)])
def test_the_integer_sort_is_the_stable_sort_of_the_float_keys(seed, stream, length):
    keys = rng.uniform(seed, stream, (length,), 1.0)
    assert len(keys.unique()) < length or length < 5000  # a million keys hold ties: kept in order
    assert torch.equal(seeded_order(seed, stream, length).long(), torch.argsort(keys, stable=True))
    assert torch.equal(seeded_order(seed, stream, length, keep=length // 3).long(),
                       torch.argsort(keys, stable=True)[:length // 3])
    signs = torch.where(keys < 0, -1, 1).to(torch.int8)
    assert torch.equal(seeded_signs(seed, stream, length), signs)


@pytest.mark.parametrize("key_range", [5, 4096, 1 << 24])
def test_the_compiled_counting_sort_is_pytorchs_stable_sort(key_range, monkeypatch):
    """Ties (few distinct keys), one digit only, and both digits; serial, on two threads and
    without numba."""
    from mcnc.core import mixing_kernels

    keys = torch.randint(0, key_range, (70_001,), generator=torch.Generator().manual_seed(1),
                         dtype=torch.int32)
    expected = torch.argsort(keys, stable=True)
    if mixing_kernels.available():  # one part and one per thread (70,001 keys: two)
        for threads, (keep, dtype) in itertools.product((1, 2), ((70_001, np.int32),
                                                               (999, np.int64))):
            with torch_threads(threads):
                order = mixing_kernels.sorted_order(keys.numpy(), keep, dtype)
            assert order.dtype == dtype and np.array_equal(order, expected[:keep].numpy())
    monkeypatch.setitem(mixing_kernels._compiled, "loops", None)
    assert mixing_kernels.sorted_order(keys.numpy(), 10, np.int32) is None
    assert torch.equal(seeded_order(0, 3, 5000).long(),
                       torch.argsort(rng.uniform(0, 3, (5000,), 1.0), stable=True))


def test_mixing_is_a_seeded_isometry():
    x = torch.randn(1000, dtype=torch.float32)
    full = SeededMixing(1000, 1024, seed=7)
    assert full(x).norm() == pytest.approx(x.norm(), rel=1e-5)
    assert torch.equal(SeededMixing(1000, 900, seed=7)(x), full(x)[:900])
    assert not torch.equal(SeededMixing(1000, 1024, seed=8)(x), full(x))
    one_chunk = torch.zeros(1000)
    one_chunk[:10] = 1.0
    assert full(one_chunk).ne(0).float().mean() > 0.5  # a chunk moves most entries


def test_mixed_mcnc_starts_at_each_layers_default_spread_and_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    before = {n: p.detach().std() for n, p in model.named_parameters() if p.dim() == 2}
    wrapped = mcnc.compress(model, mcnc.MCNCConfig(d=100, mixing="hadamard"))
    weights = wrapped.generated_weights()
    for name, std in before.items():
        assert 0.8 < weights[name].std() / std < 1.25, name
    wrapped(torch.randn(3, 64)).square().sum().backward()
    assert wrapped.alpha.grad.abs().sum(dim=(1, 2)).gt(0).all()


def test_a_mixing_keeps_five_bytes_per_entry_shared_by_equal_seeds():
    from mcnc.core import mixing

    first = SeededMixing(3000, 3000, seed=11)
    kept = sum(b.numel() * b.element_size() for b in first.buffers())
    assert kept == 4096 * 1 + 3000 * 4  # int8 signs, int32 order
    second = SeededMixing(3000, 3000, seed=11)  # e.g. a second adapter of the same seed
    assert second.signs.data_ptr() == first.signs.data_ptr()
    assert second.order.data_ptr() == first.order.data_ptr()
    other = SeededMixing(3000, 3000, seed=12)
    assert other.signs.data_ptr() != first.signs.data_ptr()
    mixing.forget_drawn()  # as in a fresh process: drawn again, equal, not shared
    fresh = SeededMixing(3000, 3000, seed=11)
    assert fresh.order.data_ptr() != first.order.data_ptr()
    assert torch.equal(fresh.order, first.order) and torch.equal(fresh.signs, first.signs)
    x = torch.randn(3000)
    y = first(x)
    del first, second, fresh
    assert (11, (rng.MIXING_SIGN_STREAM, rng.MIXING_PERMUTATION_STREAM), 4096, 3000) \
        not in mixing._DRAWN  # freed with the last module that held it
    assert torch.equal(SeededMixing(3000, 3000, seed=11)(x), y)  # drawn again: the same


def test_adapters_of_one_layout_share_their_frozen_tensors():
    """Serving hundreds of mixed adapters: their signs, order and entry scales exist once."""
    base = nn.Sequential(nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 24))
    model = mcnc.AdapterModel(base)
    sources = [model.add_adapter(f"a{i}", mcnc.MCNCAdapterConfig(
        target_modules=("0", "2"), rank=4, d=90, k=3)) for i in range(3)]
    frozen = [{n: t for n, t in s.manifold.named_buffers() if not n.startswith("generator")}
              for s in sources]
    assert sorted(frozen[0]) == ["entry_scale_0", "mixings.0.order", "mixings.0.signs",
                                 "mixings.1.order", "mixings.1.signs"]
    for name, tensor in frozen[0].items():
        assert all(f[name].data_ptr() == tensor.data_ptr() for f in frozen[1:]), name


def test_mixing_is_checked():
    with pytest.raises(ValueError, match="mixing must be one of"):
        mcnc.MCNCConfig(mixing="fourier")
    assert mcnc.MCNCConfig().mixing == "hadamard"  # the default since results/held-in-2


def test_a_mixed_model_reloads_bit_for_bit_from_a_version_2_file(tmp_path):
    torch.manual_seed(0)
    model = mcnc.compress(nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 2)),
                          mcnc.MCNCConfig(d=40, mixing="hadamard"))
    with torch.no_grad():
        model.alpha.add_(0.5)
    path = mcnc.save(model, tmp_path / "mixed.mcnc")
    assert mcnc.read(path)[1]["mixing"] == "hadamard"
    loaded = mcnc.load(path, nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 2)))
    assert loaded.config.mixing == "hadamard"
    for name, weight in model.generated_weights().items():
        assert torch.equal(loaded.generated_weights()[name], weight), name


@pytest.mark.parametrize(("numbers", "keep"), [(1000, 1000), (5000, 4321), (1 << 14, 1 << 14),
                                               (200_001, 150_000)])
@pytest.mark.parametrize("scaled", [False, True])
def test_the_fused_mixing_gives_the_bits_of_its_separate_steps(numbers, keep, scaled,
                                                               monkeypatch):
    """The compiled loops each way (signs, transform, permutation, division, scale) against
    PyTorch's separate steps with the transform's passes: the same values and gradients, bit
    for bit, with and without padding, dropped entries and a per-entry scale."""
    from mcnc.core import mixing_kernels

    pytest.importorskip("numba")
    mix = SeededMixing(numbers, keep, seed=3)
    x = torch.randn(numbers, generator=torch.Generator().manual_seed(numbers), requires_grad=True)
    grad = torch.randn(keep, generator=torch.Generator().manual_seed(keep))
    scale = torch.rand(keep, generator=torch.Generator().manual_seed(1)) if scaled else None
    fused = {}
    for threads in (1, 2):
        with torch_threads(threads):
            y = mix(x, scale)
            assert y.grad_fn.name() == "_MixBackward"
            fused[threads] = (y, *torch.autograd.grad(y, x, grad))
    monkeypatch.setitem(mixing_kernels._compiled, "loops", None)
    steps = mix(x, scale)
    assert steps.grad_fn.name() != "_MixBackward"
    (steps_grad,) = torch.autograd.grad(steps, x, grad)
    for y, y_grad in fused.values():  # bit for bit: signed zeros too
        assert torch.equal(y.view(torch.int32), steps.view(torch.int32))
        assert torch.equal(y_grad.view(torch.int32), steps_grad.view(torch.int32))
