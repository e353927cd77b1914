"""Small fixed models with awkward shapes, shared by the tests."""

from collections.abc import Callable

import torch
from torch import nn


class Odd(nn.Module):
    """Embedding, bias-free Conv1d, LayerNorm, Linear: 77 + 105 + 10 + 18 = 210 parameters."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 7)
        self.conv = nn.Conv1d(7, 5, 3, bias=False)
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.emb(tokens).transpose(1, 2)).mean(dim=2)
        return self.head(self.norm(x))


class Tied(nn.Module):
    """A language-model-like toy whose output layer shares the embedding matrix."""

    def __init__(self, vocab: int = 13, dim: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(self.emb(tokens))))


def convnet() -> nn.Sequential:
    """Conv2d + BatchNorm + Linear on 1x8x8 images (exercises buffers and low-rank kernels)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10))


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return {"odd": Odd, "tied": Tied, "convnet": convnet}[name]()


def example_input(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if name == "convnet":
        return torch.randn(4, 1, 8, 8, generator=g)
    vocab = 11 if name == "odd" else 13
    return torch.randint(0, vocab, (4, 9), generator=g)


def fit(model: nn.Module, loss: Callable[[], torch.Tensor], steps: int, lr: float = 0.05,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam) -> list[float]:
    """``steps`` optimiser steps on ``loss()`` over the model's trainable parameters, with the
    compressed models' ``after_step`` (alpha folding) as in real training; returns the losses."""
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
        if hasattr(model, "after_step"):
            model.after_step()
        losses.append(value.item())
    return losses
