"""Small image classifiers used by the demo and the tests (no torchvision needed)."""

from __future__ import annotations

from torch import nn


def mlp(in_features: int = 784, hidden: int = 256, classes: int = 10) -> nn.Sequential:
    """``in_features -> hidden -> classes`` with a ReLU; flattens its (N, C, H, W) input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def lenet5(in_channels: int = 1, classes: int = 10) -> nn.Sequential:
    """LeNet-5 for 28x28 inputs (padding 2 on the first convolution), ReLU and max pooling."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, classes),
    )


def small_cnn(in_channels: int = 1, classes: int = 10, width: int = 32, hidden: int = 256,
              image_size: int = 28) -> nn.Sequential:
    """Two 3x3 conv blocks (conv, batch norm, ReLU, 2x2 max pool) and a two-layer head.

    With the defaults on 28x28 inputs: 32 and 64 channels, 3136 -> 256 -> 10, ~0.83M weights.
    """
    flat = 2 * width * (image_size // 4) ** 2

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(in_channels, width), *block(width, 2 * width), nn.Flatten(),
                         nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, classes))
