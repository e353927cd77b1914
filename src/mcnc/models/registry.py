"""Build a classifier by name for images of a given channel count and size."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mcnc.models.resnet import resnet18
from mcnc.models.resnet_cifar import resnet20, resnet56
from mcnc.models.small import lenet5, mlp
from mcnc.models.vit import vit_tiny

Builder = Callable[[int, int, int], nn.Module]
"""(in_channels, image_size, num_classes) -> model."""

_BUILDERS: dict[str, Builder] = {
    "mlp": lambda c, s, k: mlp(in_features=c * s * s, classes=k),
    "lenet5": lambda c, s, k: lenet5(in_channels=c, classes=k, image_size=s),
    "resnet20": lambda c, s, k: resnet20(in_channels=c, num_classes=k),
    "resnet56": lambda c, s, k: resnet56(in_channels=c, num_classes=k),
    "resnet18": lambda c, s, k: resnet18(in_channels=c, image_size=s, num_classes=k),
    "vit-ti": lambda c, s, k: vit_tiny(in_channels=c, image_size=s, num_classes=k),
}
ALIASES = {"deit-ti": "vit-ti"}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """A fresh model (weights from torch's global RNG) taking (N, in_channels, image_size,
    image_size) images and returning logits (N, num_classes).

    ``name`` is one of :data:`MODEL_NAMES` (case-insensitive) or an alias (``deit-ti``).
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)} "
                         f"(aliases: {', '.join(ALIASES)})")
    return _BUILDERS[key](in_channels, image_size, num_classes)
