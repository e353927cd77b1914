"""Fashion-MNIST (Zalando, 28x28 grey images of 10 clothing classes) from its IDX files.

The default location is the Debian/Ubuntu package ``dataset-fashion-mnist``
(``apt-get install dataset-fashion-mnist``), which installs the four gzip files in
``/usr/share/datasets/fashion-mnist/``. Debian recompressed them, so the ``.gz`` files differ
from upstream's byte for byte; the checksums verified here are therefore those of the
*uncompressed* IDX contents, which are identical in both. A user-given root may hold the files
gzip-compressed (``*.gz``) or already unpacked (same names without ``.gz``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mcnc.data.errors import DataNotFoundError, missing_message
from mcnc.data.idx import check_counts, find_variant, read_idx

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
"""Pixel mean and std of the 60000 training images (scaled to [0, 1])."""
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
SOURCE = ("Run `apt-get install dataset-fashion-mnist` (files land in "
          "/usr/share/datasets/fashion-mnist/) or download the four .gz files from "
          "https://github.com/zalandoresearch/fashion-mnist (data/fashion) and pass "
          "root=<that directory>.")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CONTENT_MD5 = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}
"""md5 of each file's uncompressed IDX contents (the same for upstream and Debian)."""
DEBIAN_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "cf8536b0aa1a6ac5fa3f23001093305c",
    "train-labels-idx1-ubyte.gz": "10bea18fdb374794d4bb42e356e600c9",
    "t10k-images-idx3-ubyte.gz": "f78720b4224f21cce2f2ccf2d7a94c9a",
    "t10k-labels-idx1-ubyte.gz": "0d30e22e447f3c33dab9ed536400ac01",
}
"""md5 of the ``.gz`` files in Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
(for reference; upstream's ``.gz`` files have other checksums)."""


def _locate(directory: Path, split: str) -> tuple[Path, Path]:
    """Paths of the split's image and label files (``.gz`` or unpacked) in ``directory``."""
    found = [find_variant(directory, name) for name in FILES[split]]
    missing = [name for name, path in zip(FILES[split], found, strict=True) if path is None]
    if missing:
        expected = [n for pair in FILES.values() for n in pair]
        raise DataNotFoundError(
            missing_message("Fashion-MNIST", directory, expected, SOURCE, missing))
    return found[0], found[1]


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None, verify: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split as raw tensors.

    Args:
        split: ``"train"`` (60000 samples) or ``"test"`` (10000 samples).
        root: directory with the four IDX files; ``None`` uses :data:`DEFAULT_DIR`.
        verify: check the md5 of the uncompressed contents; ``None`` means verify only for the
            default location.

    Returns:
        ``images``: uint8 tensor (N, 28, 28); ``labels``: int64 tensor (N,) in 0..9.
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    directory = DEFAULT_DIR if root is None else Path(root)
    verify = root is None if verify is None else verify
    image_path, label_path = _locate(directory, split)
    image_name, label_name = FILES[split]
    options = {"label": "Fashion-MNIST", "hint": SOURCE}
    images = read_idx(image_path, 3, content_md5=CONTENT_MD5[image_name] if verify else None,
                      **options)
    labels = read_idx(label_path, 1, content_md5=CONTENT_MD5[label_name] if verify else None,
                      **options)
    check_counts(images, labels, image_path, label_path, "Fashion-MNIST")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
