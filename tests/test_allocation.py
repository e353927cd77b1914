"""Chunks shared out per layer (``allocation_power < 1``, experimental)."""

import pytest
import torch
from filebytes import join, split
from torch import nn

import mcnc
import mcnc.fileformat
from mcnc.allocation import (
    chunk_counts,
    covering_chunk_size,
    fold_onto_layers,
    layer_sizes,
    split_chunks,
)
from mcnc.layout import plan_layout
from mcnc.methods import MethodSettings, build_method


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 3, bias=False))


def test_layer_sizes_group_a_modules_weight_and_bias():
    layout = plan_layout(_model(), mcnc.MCNCConfig())
    assert layer_sizes(layout) == [40 * 30 + 30, 30 * 3]


def test_split_gives_every_layer_one_and_the_rest_by_a_power_of_its_size():
    assert split_chunks([100, 100, 400], 8, 1.0) == [2, 2, 4]
    assert split_chunks([100, 100, 400], 8, 0.0) == [3, 3, 2]  # equal shares, ties to the first
    assert split_chunks([9, 1], 2, 0.5) == [1, 1]
    assert sum(split_chunks([5, 17, 1_000, 3], 23, 0.5)) == 23
    with pytest.raises(ValueError, match="3 chunks cannot give each of 4 layers one"):
        split_chunks([1, 2, 3, 4], 3, 0.5)


def test_chunk_counts_are_the_fewest_that_cover_every_layer():
    sizes, d = [1_000, 60], 50
    counts = chunk_counts(sizes, d, 0.5)
    assert all(c * d >= s for c, s in zip(counts, sizes, strict=True))
    n = sum(counts)
    assert not all(c * d >= s for c, s in zip(split_chunks(sizes, n - 1, 0.5), sizes,
                                               strict=True))
    assert covering_chunk_size(sizes, counts) <= d


def test_fold_sums_a_layers_chunks_in_rounds_onto_its_entries():
    chunks = torch.arange(1.0, 13.0).view(4, 3)  # 3 chunks for a layer of 4, 1 for one of 2
    flat = fold_onto_layers(chunks, [3, 1], [4, 2])
    # layer 1: 1..9 padded to 12 -> rows (1,2,3,4) (5,6,7,8) (9,0,0,0); layer 2: (10,11)+(12,0)
    assert flat.tolist() == [15.0, 8.0, 10.0, 12.0, 22.0, 11.0]


def test_a_budget_is_spent_exactly_and_small_layers_get_more_per_weight():
    uniform = build_method("mcnc", _model(), 120, settings=MethodSettings(mixing="none"))
    per_layer = build_method("mcnc", _model(), 120, settings=MethodSettings(
        allocation_power=0.5, mixing="none"))
    trained = [sum(p.numel() for p in (w.alpha, w.beta)) for w in (uniform, per_layer)]
    assert trained == [119, 119]  # 7 chunks of k + 1 = 17
    counts, sizes = per_layer.per_layer
    assert counts == split_chunks(sizes, 7, 0.5) == [5, 2]
    assert counts[1] / sizes[1] > 7 / sum(sizes)
    x = torch.randn(5, 40)
    per_layer(x).square().sum().backward()
    assert per_layer.alpha.grad.abs().sum(dim=(1, 2)).gt(0).all()  # every chunk is used


def test_initial_amplitudes_give_each_layer_its_default_scale():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = mcnc.MCNCConfig(d=200, allocation_power=0.5, mixing="none")
    wrapped = mcnc.compress(model, config)
    weights = wrapped.generated_weights()
    for name, original in before.items():
        ratio = weights[name].norm() / original.norm()
        assert 0.4 < ratio < 2.5, (name, ratio)


def test_per_layer_chunks_are_checked():
    with pytest.raises(ValueError, match="allocation_power must be in"):
        mcnc.MCNCConfig(allocation_power=1.5, mixing="none")
    with pytest.raises(ValueError, match="cannot be combined"):
        mcnc.MCNCConfig(allocation_power=0.5, layer_scale=True, mixing="none")
    with pytest.raises(ValueError, match="layer_chunks must be a non-empty tuple"):
        mcnc.MCNCConfig(layer_chunks=((2, 0),), mixing="none")
    with pytest.raises(ValueError, match=r"cannot cover layers of .* use d >= "):
        mcnc.compress(_model(), mcnc.MCNCConfig(d=20, layer_chunks=((2, 1), (1, 2)), mixing="none"))
    with pytest.raises(ValueError, match="the layer groups hold 2 targets, the layout 3"):
        mcnc.compress(_model(), mcnc.MCNCConfig(d=2000, layer_chunks=((1, 1), (1, 1)),
                                                mixing="none"))
    with pytest.raises(ValueError, match="fewer than the 2 layers"):
        build_method("mcnc", _model(), 17,
                     settings=MethodSettings(allocation_power=0.5, mixing="none"))


def _per_layer_file() -> tuple[nn.Module, bytes]:
    model = build_method("mcnc", _model(), 120,
                         settings=MethodSettings(allocation_power=0.5, mixing="none"))
    with torch.no_grad():
        model.alpha.add_(0.3)
        model.beta.mul_(1.5)
    return model, mcnc.fileformat.to_bytes(model)


def test_a_file_records_the_chunks_per_layer_and_reloads_bit_for_bit(tmp_path):
    model, data = _per_layer_file()
    meta = split(data)[1]
    assert meta["format_version"] == 2
    assert meta["layer_chunks"] == [{"targets": 2, "chunks": 5}, {"targets": 1, "chunks": 2}]
    assert meta["allocation_power"] == 0.5
    path = tmp_path / "m.mcnc"
    path.write_bytes(data)
    loaded = mcnc.load(path, _model())
    assert loaded.config.layer_chunks == ((2, 5), (1, 2))
    for name, weight in model.generated_weights().items():
        assert torch.equal(loaded.generated_weights()[name], weight), name
    uniform = mcnc.compress(_model(), mcnc.MCNCConfig(d=300, mixing="none"))
    assert split(mcnc.fileformat.to_bytes(uniform))[1]["format_version"] == 1


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format_version=1), "a version-1 file none of them"),
    (lambda m: m.pop("layer_chunks"), "a version-1 file none of them"),
    (lambda m: m.update(mixing="fourier"), "unknown mixing 'fourier'"),
    (lambda m: m.update(mixing="hadamard"), "need mixing='none'"),
    (lambda m: m.update(layer_chunks=[{"targets": 2, "chunks": 5}]), "do not fit the layout"),
    (lambda m: m.update(layer_chunks=[{"targets": 2, "chunks": 1}, {"targets": 1, "chunks": 2}]),
     "cannot cover"),
    (lambda m: m.update(layer_chunks=[{"targets": 3}]), "positive integers 'targets' and"),
    (lambda m: m.update(allocation_power="half"), "allocation_power must be a number"),
    (lambda m: m.update(format_version=3), "upgrade mcnc to read it"),
])
def test_bad_chunks_per_layer_in_a_file_are_refused(tmp_path, edit, message):
    _, data = _per_layer_file()
    tensors, meta = split(data)
    edit(meta)
    path = tmp_path / "bad.mcnc"
    path.write_bytes(join(tensors, meta))
    skeleton = _model()
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    with pytest.raises(mcnc.FormatError, match=message):
        mcnc.load(path, skeleton)
    assert all(torch.equal(v, before[k]) for k, v in skeleton.state_dict().items())
