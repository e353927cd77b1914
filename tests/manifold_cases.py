"""Small fixed MCNC models, one per path through the chunked manifold, and a fixed few steps
of training: the cases that tests/data/manifold_reference.safetensors pins."""

import torch
from torch import nn

import mcnc


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 6))


def _stack() -> nn.Module:
    """A stack of linear layers of different shapes, as adapter targets."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 24), nn.Tanh(),
                         nn.Linear(24, 6))


def _adapter(**fields) -> nn.Module:
    config = mcnc.MCNCAdapterConfig(target_modules=("0", "2"), rank=4, d=90, k=3, **fields)
    return mcnc.get_adapter_model(_stack(), config)


CASES = {
    "compress-default": lambda: mcnc.compress(_mlp(), mcnc.MCNCConfig(k=4, d=100, width=8)),
    "compress-unmixed": lambda: mcnc.compress(_mlp(), mcnc.MCNCConfig(
        k=4, d=100, width=8, m=2, mixing="none")),
    "compress-lowrank": lambda: mcnc.compress(_mlp(), mcnc.MCNCConfig(
        k=4, d=60, width=8, mode="lowrank", rank=3)),
    "compress-delta": lambda: mcnc.compress(_mlp(), mcnc.MCNCConfig(
        k=4, d=100, width=8, mode="delta")),
    "adapter-unmixed": lambda: _adapter(mixing="none"),  # the default before 0.3
    "adapter-mixed": lambda: _adapter(mixing="hadamard", depth=2, width=8),
}


def adapter_input() -> torch.Tensor:
    return torch.linspace(-1, 1, 5 * 24).view(5, 24)


def train_a_few_steps(model: nn.Module, steps: int = 3) -> None:
    """Adam at 0.1 on a fixed regression target, folding alphas after every step."""
    x = adapter_input()
    target = torch.sin(torch.arange(5 * 6, dtype=torch.float32)).view(5, 6)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trained, lr=0.1)
    for _ in range(steps):
        loss = (model(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step()


def alpha_beta(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's alphas and betas (an adapter model's default adapter's)."""
    if isinstance(model, mcnc.AdapterModel):
        tensors = model.adapters["default"].stored_tensors()
        return tensors["mcnc.alpha"].detach().clone(), tensors["mcnc.beta"].detach().clone()
    return model.alpha.detach().clone(), model.beta.detach().clone()
