"""Beta's rate relative to its typical size: a step moves the weights as far at every budget."""

import pytest
import torch
from torch import nn

import mcnc


def weight_move(d: int, beta_rate: str, mixing: str) -> float:
    """Root-mean-square change of the generated weights of a 784-64-10 MLP compressed in chunks
    of d, when every beta takes the size of Adam's first step at rate 0.1 (its sign random)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    model = mcnc.compress(net, mcnc.MCNCConfig(d=d, mixing=mixing))
    beta_lr = next(g["lr"] for g in model.param_groups(0.1, 1e-3, beta_rate=beta_rate)
                   if any(p is model.beta for p in g["params"]))
    signs = torch.randint(0, 2, model.beta.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.generated_flat().clone()
        model.beta.add_(beta_lr * (2.0 * signs - 1))
        return (model.generated_flat() - before).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("mixing", ["none", "hadamard"])
def test_a_relative_beta_step_moves_the_weights_as_far_at_ten_times_the_chunks(mixing):
    relative = weight_move(50, "relative", mixing) / weight_move(500, "relative", mixing)
    absolute = weight_move(50, "absolute", mixing) / weight_move(500, "absolute", mixing)
    assert 0.8 < relative < 1.25  # the same step per weight at 10x the budget
    assert absolute > 2.5  # about sqrt(10): what diverged on LeNet-5 at 10,000 numbers


def test_the_typical_beta_is_the_size_betas_start_with_and_a_zero_start_knows_it_too():
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))

    scratch = mcnc.compress(net(), mcnc.MCNCConfig(d=100, mixing="hadamard"))
    delta = mcnc.compress(net(), mcnc.MCNCConfig(d=100, mixing="hadamard", mode="delta"))
    assert scratch.manifold.typical_beta == pytest.approx(scratch.beta.pow(2).mean().sqrt().item())
    assert delta.beta.abs().max() == 0 and delta.manifold.typical_beta == pytest.approx(
        scratch.manifold.typical_beta)
    with pytest.raises(ValueError, match="beta_rate must be one of"):
        scratch.param_groups(0.1, 1e-3, beta_rate="adaptive")
