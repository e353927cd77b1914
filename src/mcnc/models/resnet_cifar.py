"""CIFAR-style ResNets (He et al. 2016, section 4.2): ResNet-20 and ResNet-56.

A 3x3 convolution to 16 channels, then three stages of ``n`` basic blocks with 16, 32 and 64
channels, global average pooling and one linear layer: 6n + 2 weighted layers (n = 3 gives
ResNet-20, n = 9 ResNet-56). Any channel count and image size work.

Shortcuts that change the shape are 1x1 convolutions with batch norm by default
(``shortcut="conv"``), which gives the usual counts on CIFAR-10: 272,474 parameters for
ResNet-20 and 855,770 for ResNet-56. The paper's parameter-free option A
(``shortcut="zeros"``) has 2,752 fewer: 269,722 and 853,018.
"""

from __future__ import annotations

from torch import nn

from mcnc.models.resnet_blocks import ResNet, Shortcut, conv_bn

STAGE_WIDTHS = (16, 32, 64)


def cifar_resnet(blocks_per_stage: int, in_channels: int = 3, num_classes: int = 10,
                 shortcut: Shortcut = "conv") -> ResNet:
    """(N, in_channels, H, W) -> logits (N, num_classes), 6 * blocks_per_stage + 2 layers."""
    stem = nn.Sequential(conv_bn(in_channels, STAGE_WIDTHS[0], 3, 1), nn.ReLU())
    return ResNet(stem, STAGE_WIDTHS, blocks_per_stage, num_classes, shortcut)


def resnet20(in_channels: int = 3, num_classes: int = 10, shortcut: Shortcut = "conv") -> ResNet:
    """ResNet-20: three stages of 3 basic blocks."""
    return cifar_resnet(3, in_channels, num_classes, shortcut)


def resnet56(in_channels: int = 3, num_classes: int = 10, shortcut: Shortcut = "conv") -> ResNet:
    """ResNet-56: three stages of 9 basic blocks."""
    return cifar_resnet(9, in_channels, num_classes, shortcut)
