"""The parts shared by the ResNets (He et al. 2016): basic blocks, shortcuts, the trunk.

A ResNet here is ``stem -> stages of basic blocks -> global average pool -> linear``. The
first block of every stage but the first halves the side length and changes the width; its
shortcut is either a strided 1x1 convolution with batch norm ("conv", option B of the paper)
or parameter-free subsampling plus zero channels ("zeros", option A). Global pooling lets
every image size through.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Shortcut = Literal["conv", "zeros"]


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    """Bias-free convolution ("same" padding for odd kernels) followed by batch norm.

    (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels))


class ZeroPadShortcut(nn.Module):
    """(N, C, H, W) -> (N, C + extra, ceil(H / stride), ceil(W / stride)): keep every
    ``stride``-th pixel and add ``extra`` zero channels, half before and half after."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        before = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers plus a shortcut, ReLU after the sum.

    (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    The shortcut is the identity when the shape is kept, otherwise of kind ``shortcut``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 shortcut: Shortcut = "conv") -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(in_channels, out_channels, 3, stride), nn.ReLU(),
                                  conv_bn(out_channels, out_channels, 3, 1))
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "conv":
            self.shortcut = conv_bn(in_channels, out_channels, 1, stride)
        elif shortcut == "zeros":
            self.shortcut = ZeroPadShortcut(stride, out_channels - in_channels)
        else:
            raise ValueError(f"shortcut must be 'conv' or 'zeros', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """``stem``, then one stage of ``blocks_per_stage`` blocks per entry of ``widths``, global
    average pooling and a linear head: (N, C, H, W) -> logits (N, num_classes).

    ``stem`` must output ``widths[0]`` channels.
    """

    def __init__(self, stem: nn.Module, widths: tuple[int, ...], blocks_per_stage: int,
                 num_classes: int, shortcut: Shortcut = "conv") -> None:
        super().__init__()
        self.stem = stem
        blocks: list[nn.Module] = []
        width = widths[0]
        for stage, out_width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(width, out_width, stride, shortcut))
                width = out_width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, num_classes)
        init_resnet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x))        # (N, widths[-1], H', W')
        return self.fc(features.mean(dim=(2, 3)))


def init_resnet_weights(model: nn.Module) -> None:
    """Kaiming-normal convolution weights (fan-out, ReLU gain); PyTorch's default for the
    linear head; batch norm weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
