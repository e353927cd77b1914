"""Image classifiers written with plain torch modules (no torchvision, no timm).

Every weight sits in an ``nn.Linear`` or ``nn.Conv2d`` (plus batch/layer norms), which is
what :mod:`mcnc.compress` looks for. Pick one by name with :func:`build_model`.

    small.py         mlp, lenet5, small_cnn (the demo's network)
    resnet_blocks.py basic block, shortcuts and the trunk shared by the ResNets
    resnet_cifar.py  resnet20, resnet56 (CIFAR style, 16/32/64 channels)
    resnet.py        resnet18 (ImageNet style, small-image stem below 64 px)
    vit.py           vit_tiny (ViT-Ti / DeiT-Ti, patch size chosen from the image size)
    registry.py      build_model, MODEL_NAMES
"""

from mcnc.models.registry import MODEL_NAMES, build_model
from mcnc.models.resnet import resnet18
from mcnc.models.resnet_cifar import resnet20, resnet56
from mcnc.models.small import lenet5, mlp, small_cnn
from mcnc.models.vit import patch_size_for, vit_tiny

__all__ = ["MODEL_NAMES", "build_model", "lenet5", "mlp", "patch_size_for", "resnet18",
           "resnet20", "resnet56", "small_cnn", "vit_tiny"]
