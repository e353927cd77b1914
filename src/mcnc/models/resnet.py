"""ResNet-18, ImageNet style (He et al. 2016, table 1), with a small-image stem.

Four stages of two basic blocks with 64, 128, 256 and 512 channels; stages two to four halve
the side length in their first block, whose shortcut is a strided 1x1 convolution with batch
norm. Global average pooling and one linear layer finish it.

Stem rule: images of at least ``LARGE_IMAGE`` (64) pixels get the ImageNet stem, a 7x7
stride-2 convolution and a 3x3 stride-2 max pool (side / 4); smaller images get a 3x3 stride-1
convolution and no pool (side kept), as is usual for CIFAR. With 3 channels, 1000 classes and
the ImageNet stem the network has the canonical 11,689,512 parameters.
"""

from __future__ import annotations

from torch import nn

from mcnc.models.resnet_blocks import ResNet, conv_bn

LARGE_IMAGE = 64
STAGE_WIDTHS = (64, 128, 256, 512)


def resnet18_stem(in_channels: int, image_size: int) -> nn.Sequential:
    """(N, C, S, S) -> (N, 64, S', S') with S' = ceil(S / 4) if S >= LARGE_IMAGE, else S."""
    width = STAGE_WIDTHS[0]
    if image_size >= LARGE_IMAGE:
        return nn.Sequential(conv_bn(in_channels, width, 7, 2), nn.ReLU(),
                             nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(conv_bn(in_channels, width, 3, 1), nn.ReLU())


def resnet18(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000) -> ResNet:
    """(N, in_channels, image_size, image_size) -> logits (N, num_classes)."""
    return ResNet(resnet18_stem(in_channels, image_size), STAGE_WIDTHS, 2, num_classes)
