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

import torch

from mcnc.data.idx import IdxDataset
from mcnc.data.mnist import FILES  # Fashion-MNIST keeps MNIST's file names

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
"""Pixel mean and std of the 60000 training images (scaled to [0, 1])."""
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
SOURCE = ("Run `apt-get install dataset-fashion-mnist` (files land in "
          "/usr/share/datasets/fashion-mnist/) or download the four .gz files from "
          "https://github.com/zalandoresearch/fashion-mnist (data/fashion) and pass "
          "root=<that directory>.")
CONTENT_MD5 = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}
"""md5 of each file's uncompressed IDX contents (the same for upstream and Debian)."""
FASHION_MNIST = IdxDataset("Fashion-MNIST", FILES, SOURCE, content_md5=CONTENT_MD5)


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
    directory = DEFAULT_DIR if root is None else Path(root)
    return FASHION_MNIST.load(directory, split, root is None if verify is None else verify)
