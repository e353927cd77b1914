"""Image augmentations and normalisation as plain tensor operations (no torchvision).

Images are uint8 tensors in channel-first layout: one image is (C, H, W), a batch (B, C, H, W).
Geometric augmentations keep uint8 (cheap, and zero padding means a black pixel, as in the usual
pipelines); :func:`normalize` turns a batch into float32 at the end.

Randomness: every random function takes ``generator``. With a :class:`torch.Generator` the draws
come from it (reproducible, independent of other code); with ``None`` they come from torch's
global RNG (seeded with :func:`torch.manual_seed`; DataLoader workers get distinct seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Generator = torch.Generator | None


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 batch (B, C, H, W) -> float32 ``(x / 255 - mean[c]) / std[c]`` of the same shape.

    ``mean`` and ``std`` have one entry per channel (or one entry for all channels).
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return x.float().mul_(1 / (255 * std_t)).sub_(mean_t / std_t)


def random_flip(x: torch.Tensor, generator: Generator = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image of a batch (B, C, H, W) left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def crop_padded(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, padding: int
                ) -> torch.Tensor:
    """Zero-pad a batch (B, C, H, W) by ``padding`` on every side, then cut from image ``b``
    the (H, W) window whose corner is at ``(top[b], left[b])`` of the padded image.

    ``top`` and ``left`` are int64 (B,) in ``0 .. 2 * padding``; ``padding`` at both gives the
    input back. Equivalently image ``b`` is shifted down by ``padding - top[b]`` and right by
    ``padding - left[b]`` with zeros filling the gap.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    rows = top.view(b, 1, 1, 1) + torch.arange(h).view(1, 1, h, 1)
    x = padded.gather(2, rows.expand(b, c, h, w + 2 * padding))
    cols = left.view(b, 1, 1, 1) + torch.arange(w).view(1, 1, 1, w)
    return x.gather(3, cols.expand(b, c, h, w))


def random_crop(x: torch.Tensor, padding: int, generator: Generator = None) -> torch.Tensor:
    """Random crop of a batch (B, C, H, W) back to (H, W) after ``padding`` zeros per side,
    i.e. a random shift by up to ``padding`` pixels in each direction, per image."""
    if padding == 0:
        return x
    corners = torch.randint(0, 2 * padding + 1, (2, x.shape[0]), generator=generator)
    return crop_padded(x, corners[0], corners[1], padding)


def resize(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) of a uint8 image (C, H, W) to
    (C, height, width)."""
    if img.shape[-2:] == (height, width):
        return img
    out = F.interpolate(img[None].float(), size=(height, width), mode="bilinear",
                        align_corners=False, antialias=True)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


def resize_shorter(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (C, H, W) so that its shorter side is ``size``, keeping the aspect ratio."""
    h, w = img.shape[-2:]
    if h <= w:
        return resize(img, size, max(size, round(w * size / h)))
    return resize(img, max(size, round(h * size / w)), size)


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central (C, size, size) window of (C, H, W); H and W must be at least ``size``."""
    h, w = img.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot center-crop {size}x{size} from a {h}x{w} image")
    top, left = (h - size) // 2, (w - size) // 2
    return img[..., top : top + size, left : left + size]


def random_box(height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], generator: Generator = None
               ) -> tuple[int, int, int, int]:
    """A random crop box ``(top, left, h, w)`` of a height x width image covering a fraction
    in ``scale`` of its area with aspect ratio w / h in ``ratio`` (log-uniform).

    Ten tries; if none fits, the largest centred box whose ratio is clamped into ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio in torch.rand(10, 2, generator=generator).tolist():
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            corner = torch.rand(2, generator=generator).tolist()
            top = min(int(corner[0] * (height - h + 1)), height - h)
            left = min(int(corner[1] * (width - w + 1)), width - w)
            return top, left, h, w
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, round(width / aspect)) if width / height <= aspect else (
        round(height * aspect), height)
    w, h = min(w, width), min(h, height)
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class BatchAugment:
    """Augment a uint8 batch (B, C, H, W), shape kept: random crop after ``padding`` zeros per
    side (a random shift), then a random left-right flip if ``flip``."""

    padding: int = 0
    flip: bool = False

    def __call__(self, x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        x = random_crop(x, self.padding, generator)
        return random_flip(x, generator) if self.flip else x


@dataclass(frozen=True)
class RandomResizedCrop:
    """Training crop of one uint8 image (C, H, W) -> (C, size, size): a random box covering a
    ``scale`` fraction of the area with aspect ratio in ``ratio``, resized to ``size``."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, img: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        top, left, h, w = random_box(img.shape[-2], img.shape[-1], self.scale, self.ratio,
                                     generator)
        return resize(img[..., top : top + h, left : left + w], self.size, self.size)


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Evaluation crop of one uint8 image (C, H, W) -> (C, size, size): shorter side resized to
    ``resize``, then the central ``size`` x ``size`` window. Deterministic."""

    resize: int = 256
    size: int = 224

    def __call__(self, img: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return center_crop(resize_shorter(img, self.resize), self.size)


CIFAR_TRAIN = BatchAugment(padding=4, flip=True)
"""CIFAR training augmentation: random 32x32 crop with 4-pixel zero padding + random flip."""
MNIST_TRAIN = BatchAugment(padding=2, flip=False)
"""Optional MNIST-family augmentation: random shift by up to 2 pixels (no flip)."""
IMAGENET_TRAIN = RandomResizedCrop(224)
"""ImageNet training crop (per image); followed by :data:`FLIP` on the batch."""
IMAGENET_EVAL = ResizeCenterCrop(256, 224)
"""ImageNet evaluation crop (per image): resize to 256, center crop 224."""
FLIP = BatchAugment(padding=0, flip=True)
"""Random left-right flip only."""
