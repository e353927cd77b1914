"""Small classifiers: a two-layer MLP, LeNet-5 and a two-block CNN (used by the demo).

All take images shaped (N, C, H, W) with H = W = ``image_size`` and return logits (N, classes).
"""

from __future__ import annotations

from torch import nn


def mlp(in_features: int = 784, hidden: int = 256, classes: int = 10) -> nn.Sequential:
    """``in_features -> hidden -> classes`` with a ReLU; flattens its (N, C, H, W) input.

    ``in_features`` must equal C * H * W of the images it is given.
    """
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def _conv_pool_size(size: int, padding: int) -> int:
    """Side length after a 5x5 convolution with ``padding`` and a 2x2 max pool."""
    return (size + 2 * padding - 4) // 2


def lenet5(in_channels: int = 1, classes: int = 10, image_size: int = 28) -> nn.Sequential:
    """LeNet-5 (6 and 16 channels of 5x5 convolutions, 120 -> 84 -> classes), ReLU, max pool.

    Padding rule: a convolution pads by 2 (keeps the side length) when its input side is
    smaller than 32 for the first convolution, or smaller than 10 for the second; otherwise
    it pads nothing, as in the original network. So 28x28 inputs (MNIST) get padding 2 on
    the first convolution only, and 32x32 inputs get no padding: both reach a 16x5x5 map.
    Other sizes give other maps; the flatten size is computed from ``image_size``.
    Needs ``image_size >= 4``.
    """
    pad1 = 2 if image_size < 32 else 0
    side1 = _conv_pool_size(image_size, pad1)
    pad2 = 2 if side1 < 10 else 0
    side2 = _conv_pool_size(side1, pad2)
    if side2 < 1:
        raise ValueError(f"lenet5 needs images of at least 4x4 pixels, got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=pad1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * side2 * side2, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
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
