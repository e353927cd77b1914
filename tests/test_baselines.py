"""PRANC, NOLA, LoRA and pruning: the math, training, and the shared file format."""

import math

import pytest
import torch
import torch.nn.functional as F
from toymodels import example_input, fit, make

import mcnc
from mcnc.baselines import (
    LoRAConfig,
    NOLAConfig,
    PRANCConfig,
    PruningConfig,
    lora,
    nola,
    pranc,
    prune,
)
from mcnc.baselines.basis import RandomBasis
from mcnc.baselines.subspace import split_coefficients
from mcnc.core.initialisation import element_std

BUILDERS = {
    "pranc": lambda m, mode="scratch": pranc(m, PRANCConfig(coefficients=40, mode=mode)),
    "nola": lambda m, mode="scratch": nola(m, NOLAConfig(coefficients=60, rank=2, mode=mode)),
    "lora": lambda m, mode="scratch": lora(m, LoRAConfig(rank=2, mode=mode)),
    "pruning": lambda m, mode="scratch": prune(m, PruningConfig(
        nonzeros=sum(p.numel() for p in m.parameters()) // 2)),
}


def _step(model, x, target, steps=5):
    return fit(model, lambda: F.mse_loss(model(x), target), steps)


@pytest.mark.parametrize("method", BUILDERS)
@pytest.mark.parametrize("name", ["odd", "tied", "convnet"])
def test_train_save_load_reconstruct_bit_exact(method, name, tmp_path):
    model = BUILDERS[method](make(name))
    x = example_input(name)
    target = torch.randn_like(model(x))
    losses = _step(model, x, target)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        expected = model.eval()(x)
    path = mcnc.save(model, tmp_path / "m.mcnc")
    loaded = mcnc.load(path, make(name)).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    dense = make(name)
    dense.load_state_dict(mcnc.reconstruct(path))
    with torch.no_grad():
        assert torch.equal(dense.eval()(x), loaded.eval()(x))


@pytest.mark.parametrize("method", ["pranc", "nola", "lora"])
def test_delta_mode_starts_at_the_base_and_reloads(method, tmp_path):
    base = make("convnet")
    x = example_input("convnet")
    with torch.no_grad():
        before = base.eval()(x)
    model = BUILDERS[method](base, "delta").eval()
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)
    model.train()
    _step(model, x, torch.randn_like(before))
    path = mcnc.save(model, tmp_path / "d.mcnc")
    state = mcnc.reconstruct(path, make("convnet").state_dict())
    with pytest.raises(mcnc.FormatError, match="other base"):
        other = make("convnet")
        with torch.no_grad():
            other[0].weight.add_(1)
        mcnc.load(path, other)
    dense = make("convnet")
    dense.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(dense.eval()(x), model.eval()(x), atol=1e-6)


def test_trainable_counts_are_the_budget():
    assert pranc(make("convnet"), PRANCConfig(coefficients=123)).trainable_count() == 123 + 16
    assert nola(make("convnet"), NOLAConfig(coefficients=77)).trainable_count() == 77 + 16
    assert prune(make("convnet"), PruningConfig(nonzeros=99)).trainable_count() == 99 + 16
    low = lora(make("odd"), LoRAConfig(rank=1))
    # emb 11x7 -> 18, conv 5x21 -> 26, head 3x5 -> 8 + bias 3; the LayerNorm stays dense (10)
    assert low.trainable_count() == 18 + 26 + 8 + 3 + 10


def test_pruning_keeps_the_largest_weights_globally():
    model = make("convnet")
    weights = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters()
                         if not n.startswith("1.")])
    pruned = prune(model, PruningConfig(nonzeros=100))
    flat = pruned.generated_flat().detach()
    assert int((flat != 0).sum()) == 100
    assert flat.abs().min() == 0
    threshold = weights.abs().sort(descending=True).values[99]
    assert torch.all(flat[flat != 0].abs() >= threshold)


def test_random_basis_streams_blocks_and_matches_the_cached_product():
    scale = torch.linspace(0.5, 2.0, 300)
    cached = RandomBasis(seed=5, stream=9, size=300, n=37, scale=scale)
    streamed = RandomBasis(seed=5, stream=9, size=300, n=37, scale=scale, max_bytes=0)
    streamed.block = 8  # five blocks of columns, the last one short
    assert cached.cached and not streamed.cached
    c = torch.randn(37, requires_grad=True)
    c2 = c.detach().clone().requires_grad_(True)
    v1, v2 = cached.apply(c), streamed.apply(c2)
    assert torch.allclose(v1, v2, atol=1e-5)
    g = torch.randn(300)
    (v1 @ g).backward()
    (v2 @ g).backward()
    assert torch.allclose(c.grad, c2.grad, atol=1e-4)
    dense = next(cached.column_blocks())[1].T * (scale / math.sqrt(37)).unsqueeze(1)
    assert torch.allclose(v1, dense @ c.detach(), atol=1e-5)
    # unit-variance coefficients give entries with the requested standard deviation
    many = torch.stack([cached.apply(torch.empty(37).uniform_(-3**0.5, 3**0.5))
                        for _ in range(400)])
    assert torch.allclose(many.std(0).mean() / scale.mean(), torch.tensor(1.0), atol=0.1)


def test_coefficient_split_and_init_scale():
    assert split_coefficients([10, 30, 60], 13) == [2, 4, 7]
    assert sum(split_coefficients([5, 1, 1, 900], 100)) == 100
    with pytest.raises(ValueError, match="at least 3"):
        split_coefficients([1, 2, 3], 2)
    layout = pranc(make("convnet")).layout
    std = element_std(layout)
    assert std[0] == pytest.approx(1 / math.sqrt(9) / math.sqrt(3))  # conv 1->8, fan-in 9


def test_files_refuse_the_wrong_method_and_bad_indices(tmp_path):
    path = mcnc.save(BUILDERS["pruning"](make("convnet")), tmp_path / "p.mcnc")
    other = BUILDERS["pranc"](make("convnet"))
    with pytest.raises(mcnc.FormatError, match="different method"):
        mcnc.load(path, other)
    model = BUILDERS["pruning"](make("convnet"))
    with torch.no_grad():
        model.kept_index[1] = model.kept_index[0]
    bad = mcnc.save(model, tmp_path / "bad.mcnc")
    with pytest.raises(mcnc.FormatError, match="increasing"):
        mcnc.load(bad, make("convnet"))
