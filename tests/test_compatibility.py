"""A file written by format version 1 must load to the same weights forever.

tests/data/odd_v1.mcnc was written once by tests/data/make_v1_fixture.py. The values below were
read from it when it was created: they pin the PRNG, the generator network, the alpha folding,
the chunk layout and the file parsing together.
"""

from pathlib import Path

import filebytes
import pytest
import torch
from toymodels import example_input, make

import mcnc

FIXTURE = Path(__file__).parent / "data" / "odd_v1.mcnc"

# name -> (shape, sum, first three values)
PINNED = {
    "emb.weight": ((11, 7), -17.33529430255294,
                   [1.164246916770935, -2.0836291313171387, 2.5647974014282227]),
    "conv.weight": ((5, 7, 3), -1.7247807253152132,
                    [0.5595306754112244, 0.02003657817840576, -0.6940843462944031]),
    "norm.weight": ((5,), 6.25, [1.25, 1.25, 1.25]),
    "norm.bias": ((5,), 0.0, [0.0, 0.0, 0.0]),
    "head.weight": ((3, 5), 0.8186495369300246,
                    [0.06893177330493927, -0.10292258858680725, 0.02066384255886078]),
    "head.bias": ((3,), -0.06960365548729897,
                  [0.024986885488033295, 0.018432531505823135, -0.1130230724811554]),
}


def test_version_1_file_reconstructs_to_the_pinned_weights():
    state = mcnc.reconstruct(FIXTURE)
    assert list(state) == list(PINNED)
    for name, (shape, total, first) in PINNED.items():
        assert tuple(state[name].shape) == shape
        assert state[name].double().sum().item() == pytest.approx(total, rel=1e-5, abs=1e-5)
        torch.testing.assert_close(state[name].reshape(-1)[:3], torch.tensor(first),
                                   rtol=1e-5, atol=1e-6)


def test_version_1_file_loads_into_a_skeleton():
    _, meta = mcnc.read(FIXTURE)
    assert meta["format_version"] == 1 and meta["generator"]["seed"] == 7
    model = mcnc.load(FIXTURE, make("odd")).eval()
    dense = make("odd").eval()
    dense.load_state_dict(mcnc.reconstruct(FIXTURE), strict=True)
    with torch.no_grad():
        assert torch.equal(model(example_input("odd")), dense(example_input("odd")))


def test_committed_demo_file_loads():
    """results/demo/demo.mcnc, written by `mcnc demo`, stays readable by the current code."""
    from mcnc.models import small_cnn

    path = Path(__file__).parents[1] / "results" / "demo" / "demo.mcnc"
    model = mcnc.load(path, small_cnn())
    assert mcnc.summarize(model).param_ratio > 100


def test_a_file_with_chunks_per_layer_is_refused_with_the_removed_option_named(tmp_path):
    """mcnc 0.1.0 could write chunks per layer (``layer_chunks``); 0.2 no longer reads them."""
    model = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, width=8, mixing="none"))
    tensors, meta = filebytes.split(mcnc.core.fileformat.to_bytes(model))
    meta |= {"format_version": 2, "allocation_power": 0.5,
             "layer_chunks": [{"targets": 4, "chunks": 4}]}
    path = tmp_path / "per-layer.mcnc"
    path.write_bytes(filebytes.join(tensors, meta))
    with pytest.raises(mcnc.FormatError, match=r"chunks of its own \(layer_chunks, "
                       r"allocation_power\).*mcnc 0\.1\.0"):
        mcnc.reconstruct(path)
