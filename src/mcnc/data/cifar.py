"""CIFAR-10 and CIFAR-100 from the official *binary* releases (never the pickled python ones).

CIFAR-10 (``cifar-10-binary.tar.gz``) unpacks to ``cifar-10-batches-bin/`` with
``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``; each record is 1 label
byte followed by 3072 pixel bytes (3 x 32 x 32, channel-major: all red, then green, then blue,
each row by row). CIFAR-100 (``cifar-100-binary.tar.gz``) unpacks to ``cifar-100-binary/`` with
``train.bin`` and ``test.bin``; each record is a coarse label byte, a fine label byte, then the
same 3072 pixel bytes. The fine label (100 classes) is used. ``root`` may be the unpacked folder
or its parent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcnc.data.errors import DataCorruptError, DataNotFoundError, missing_message

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """How one CIFAR binary release is laid out on disk."""

    name: str
    folder: str
    """Name of the folder the archive unpacks to."""
    files: dict[str, tuple[str, ...]]
    """split -> batch files, in reading order."""
    label_bytes: int
    """Label bytes at the start of each record."""
    label_ranges: tuple[int, ...]
    """Number of classes of each label byte (the last byte is the label used)."""
    names_file: str
    """Optional text file in the folder with one class name per line."""
    url: str
    python_folder: str
    """Folder of the pickled python release, which is recognised and refused."""

    @property
    def record_size(self) -> int:
        return self.label_bytes + PIXELS

    @property
    def num_classes(self) -> int:
        return self.label_ranges[-1]

    def hint(self) -> str:
        """Where to get the files and how to point at them."""
        archive = self.url.rsplit("/", 1)[-1]
        return (f"Download the binary version {self.url}, unpack it (tar xzf {archive}) and "
                f"pass root=<the {self.folder} folder or its parent>.")


CIFAR10 = CifarLayout(
    name="CIFAR-10", folder="cifar-10-batches-bin",
    files={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
           "test": ("test_batch.bin",)},
    label_bytes=1, label_ranges=(10,), names_file="batches.meta.txt",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    python_folder="cifar-10-batches-py",
)
CIFAR100 = CifarLayout(
    name="CIFAR-100", folder="cifar-100-binary",
    files={"train": ("train.bin",), "test": ("test.bin",)},
    label_bytes=2, label_ranges=(20, 100), names_file="fine_label_names.txt",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    python_folder="cifar-100-python",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def find_cifar_dir(layout: CifarLayout, root: str | os.PathLike, split: str) -> Path:
    """The directory holding ``split``'s files: ``root`` itself or ``root/<layout.folder>``."""
    root = Path(root)
    names = layout.files[split]
    for directory in (root / layout.folder, root):
        if all((directory / n).is_file() for n in names):
            return directory
    nearest = root / layout.folder if (root / layout.folder).is_dir() else root
    missing = [n for n in names if not (nearest / n).is_file()]
    expected = [n for split_files in layout.files.values() for n in split_files]
    hint = layout.hint()
    if (root / layout.python_folder).is_dir() or root.name == layout.python_folder:
        hint = f"{root} holds the pickled python version, which is not read. {hint}"
    looked_in = f"{root / layout.folder} or {root}"
    raise DataNotFoundError(
        missing_message(f"{layout.name} binary", looked_in, expected, hint, missing))


def read_records(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch file.

    Returns images uint8 (N, 3, 32, 32) and labels int64 (N,) (the last label byte).
    """
    raw = np.fromfile(path, dtype=np.uint8)
    size = layout.record_size
    if raw.size == 0 or raw.size % size:
        raise DataCorruptError(
            f"{layout.name} file {path} has {raw.size} bytes, not a positive multiple of the "
            f"record size {size} ({layout.label_bytes} label byte(s) + {PIXELS} pixels): it is "
            f"truncated or not a {layout.name} binary file. Download {layout.url} again."
        )
    records = raw.reshape(-1, size)
    for column, limit in enumerate(layout.label_ranges):
        worst = int(records[:, column].max())
        if worst >= limit:
            raise DataCorruptError(
                f"{layout.name} file {path} has label {worst} in label byte {column} of a "
                f"record (must be < {limit}): it is corrupt or not a {layout.name} binary file."
            )
    images = records[:, layout.label_bytes:].reshape(-1, 3, 32, 32)
    return images, records[:, layout.label_bytes - 1].astype(np.int64)


def class_names(layout: CifarLayout, directory: Path) -> list[str]:
    """Class names from the release's names file, or ``"0"``, ``"1"``, ... if it is absent."""
    path = directory / layout.names_file
    names = path.read_text().split() if path.is_file() else []
    return names if len(names) == layout.num_classes else [str(i) for i in
                                                           range(layout.num_classes)]


def load_cifar(
    layout: CifarLayout, split: str, root: str | os.PathLike
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load a CIFAR split described by ``layout`` (:data:`CIFAR10` or :data:`CIFAR100`).

    Returns images uint8 (N, 3, 32, 32) in RGB order, labels int64 (N,) and the class names.
    """
    if split not in layout.files:
        raise ValueError(f"split must be one of {sorted(layout.files)}, got {split!r}")
    directory = find_cifar_dir(layout, root, split)
    parts = [read_records(directory / name, layout) for name in layout.files[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels), class_names(layout, directory)
