"""Both MCNC paths (``mcnc.compress`` and the MCNC adapter) train to the values the code that
wrote tests/data/manifold_reference.safetensors (tests/data/make_manifold_reference.py, commit
ef03cb3) trained to, and the files that code wrote reload to the same values.

Equal up to the rounding of matrix products, not bit for bit: the generator's products (and the
model's) are summed in an order the CPU's kernels choose, which differs between machines (the
references were written on an Intel Xeon; an AMD EPYC trains to values a few ulps away). The
seeded tensors themselves are pinned bit for bit in test_rng_golden.py and test_bit_exact.py."""

from pathlib import Path

import pytest
import safetensors.torch
import torch
from manifold_cases import CASES, _stack, adapter_input, alpha_beta, train_a_few_steps

import mcnc

DATA = Path(__file__).parent / "data"


def assert_same_up_to_products(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal up to a few ulps of float32 relative to the tensor's largest entry: what another
    summation order of the products can change (a changed rule moves values by far more)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=64 * 2**-23 * scale, msg=what)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_few_steps_give_the_reference_alphas_and_betas(case):
    reference = safetensors.torch.load_file(DATA / "manifold_reference.safetensors")
    model = CASES[case]()
    train_a_few_steps(model)
    alpha, beta = alpha_beta(model)
    assert_same_up_to_products(alpha, reference[f"{case}.alpha"], "alpha")
    assert_same_up_to_products(beta, reference[f"{case}.beta"], "beta")


@pytest.mark.parametrize(("folder", "mixing"), [("adapter_v2", "hadamard"),
                                              ("adapter_v3", "hadamard-joint"),
                                              ("adapter_v4_unmixed", "none")])
def test_an_adapter_folder_written_by_older_code_reloads(folder, mixing):
    """adapter_v2: Hadamard-mixed, format version 2 (make_manifold_reference.py); adapter_v3:
    jointly mixed, format version 3; adapter_v4_unmixed: the defaults before version 0.3,
    unmixed (make_adapter_fixture.py)."""
    served = mcnc.AdapterModel.from_pretrained(_stack(), DATA / folder)
    assert served.adapters["default"].config.mixing == mixing
    with torch.no_grad():
        logits = served(adapter_input())
    expected = safetensors.torch.load_file(DATA / f"{folder}_logits.safetensors")
    assert_same_up_to_products(logits, expected["logits"], "logits")


def test_a_mixed_file_written_before_the_shared_module_reconstructs():
    expected = safetensors.torch.load_file(DATA / "mixed_v2_weights.safetensors")
    state = mcnc.reconstruct(DATA / "mixed_v2.mcnc")
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert_same_up_to_products(state[name], tensor, name)
