"""Image files sorted into one folder per class: ``root/<split>/<class>/<image>``.

This is the layout of ImageNet-style data sets (ImageNet-100 among them). Classes are the
sub-folder names sorted alphabetically (label 0 is the first); images are found recursively
below each class folder, sorted by path. Files are only listed here; they are decoded one at a
time when a batch asks for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mcnc.data.errors import DataCorruptError, DataNotFoundError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp",
              ".gif")
LAYOUT = "root/<split>/<class>/<image>.{jpg,jpeg,png,...} (e.g. root/train/n01440764/a.JPEG)"
SPLIT_ALTERNATIVES = {"val": "test", "test": "val"}


def _subfolders(directory: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``directory``."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def split_dir(root: str | os.PathLike, split: str) -> Path:
    """``root/split``; for ``"val"`` or ``"test"`` the other name is tried when it is absent."""
    root = Path(root)
    for name in (split, SPLIT_ALTERNATIVES.get(split)):
        if name is not None and (root / name).is_dir():
            return root / name
    found = _subfolders(root) if root.is_dir() else []
    raise DataNotFoundError(
        f"Image folder for split {split!r} not found: no directory {root / split}"
        + (f" (sub-folders of {root}: {', '.join(found)})" if found else
           f" ({root} {'is empty' if root.is_dir() else 'does not exist'})")
        + f". Expected layout: {LAYOUT}."
    )


def _images_below(directory: Path, extensions: tuple[str, ...]) -> list[str]:
    """Sorted paths of the image files anywhere below ``directory``."""
    found = []
    for parent, _, files in os.walk(directory, followlinks=True):
        found += [os.path.join(parent, f) for f in files if f.lower().endswith(extensions)]
    return sorted(found)


def scan_folder(
    directory: Path, extensions: tuple[str, ...] = EXTENSIONS
) -> tuple[list[str], list[str], torch.Tensor]:
    """List an image folder.

    Returns the class names (sorted), the image paths (N, grouped by class) and the labels,
    int64 (N,).
    """
    classes = _subfolders(directory)
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = _images_below(directory / name, extensions)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataNotFoundError(
            f"No images ({', '.join(extensions)}) found in class folders of {directory} "
            f"({len(classes)} class folders). Expected layout: {LAYOUT}."
        )
    return classes, paths, torch.tensor(labels, dtype=torch.int64)


def decode_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file with PIL into an RGB uint8 tensor (3, H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataCorruptError(f"Cannot decode image {path} ({e}); replace or remove it.") from e
    return torch.from_numpy(pixels).permute(2, 0, 1)
