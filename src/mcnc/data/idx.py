"""Reader for IDX files (the format of MNIST and Fashion-MNIST), gzip-compressed or not.

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
int32 sizes, then the data in C order. Gzip compression is recognised by the ``.gz`` suffix or
by the gzip signature at the start of the file.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcnc.data.errors import GENERIC, ErrorKinds, missing_message

DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
"""IDX type byte -> numpy dtype of the stored values."""
GZIP_SIGNATURE = b"\x1f\x8b"


def md5_hex(data: bytes) -> str:
    """Hex md5 digest of ``data``."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def find_variant(directory: Path, name: str) -> Path | None:
    """``directory/name`` if it exists, else the same file with or without ``.gz``; or None."""
    other = name.removesuffix(".gz") if name.endswith(".gz") else name + ".gz"
    return next((p for p in (directory / name, directory / other) if p.is_file()), None)


def _decompress(raw: bytes, path: Path, label: str, errors: ErrorKinds) -> bytes:
    """Gunzip ``raw`` when ``path`` is named ``*.gz`` or starts with the gzip signature."""
    if not (path.name.endswith(".gz") or raw.startswith(GZIP_SIGNATURE)):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise errors.corrupt(f"{label} file {path} is not a valid gzip file ({e}); replace it."
                             ) from e


def _check_md5(data: bytes, expected: str | None, path: Path, what: str, label: str,
               hint: str, errors: ErrorKinds) -> None:
    """Raise ``errors.corrupt`` when ``expected`` is given and the md5 of ``data`` differs."""
    if expected is None or (digest := md5_hex(data)) == expected:
        return
    raise errors.corrupt(
        f"{label} file {path} failed its md5 checksum of the {what} (expected {expected}, "
        f"got {digest}). {hint} Or pass verify=False for files that are not the originals."
    )


def parse_idx(data: bytes, path: Path, ndim: int | None = None, label: str = "IDX",
              errors: ErrorKinds = GENERIC) -> np.ndarray:
    """Decode uncompressed IDX bytes into an array of shape given by the header.

    ``ndim`` (if given) is the required number of dimensions; ``path`` is only used in messages.
    Unsigned-byte data comes back as a read-only uint8 view of ``data``; other types as native
    byte order copies.
    """
    if len(data) < 4:
        raise errors.corrupt(f"{label} file {path} is too short for an IDX header; replace it.")
    zero, kind, dims_count = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or kind not in DTYPES or (ndim is not None and dims_count != ndim):
        wanted = f"{ndim}-d unsigned bytes, {0x800 + ndim:#010x}" if ndim else "an IDX file"
        raise errors.corrupt(
            f"{label} file {path} has magic number {int.from_bytes(data[:4], 'big'):#010x}, "
            f"expected {wanted}; is it the right file? Replace it."
        )
    header = 4 * (1 + dims_count)
    if len(data) < header:
        raise errors.corrupt(f"{label} file {path} is too short for an IDX header; replace it.")
    dims = np.frombuffer(data, dtype=">i4", count=dims_count, offset=4).tolist()
    dtype = np.dtype(DTYPES[kind])
    needed = int(np.prod(dims)) * dtype.itemsize
    if min(dims, default=0) < 0 or len(data) - header != needed:
        raise errors.corrupt(
            f"{label} file {path} holds {len(data) - header} data bytes but its header "
            f"{tuple(dims)} needs {needed}: the file is truncated or corrupt; replace it."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def read_idx(
    path: Path, ndim: int | None = None, *, label: str = "IDX", hint: str = "",
    file_md5: str | None = None, content_md5: str | None = None, errors: ErrorKinds = GENERIC,
) -> np.ndarray:
    """Read an IDX file (gzip or plain) and return its array.

    Args:
        path: the file.
        ndim: required number of dimensions (3 for images (N, rows, cols), 1 for labels (N,)).
        label: data set name used in messages, e.g. ``"MNIST"``.
        hint: where to get the files, appended to messages.
        file_md5: expected md5 of the file as stored (e.g. of the ``.gz``), or None.
        content_md5: expected md5 of the uncompressed IDX bytes, or None.
        errors: exception classes to raise for a missing and for a corrupt file.
    """
    if not path.is_file():
        raise errors.missing(f"{label} file {path.name} not found in {path.parent}. {hint}")
    raw = path.read_bytes()
    _check_md5(raw, file_md5, path, "file", label, hint, errors)
    data = _decompress(raw, path, label, errors)
    _check_md5(data, content_md5, path, "uncompressed contents", label, hint, errors)
    return parse_idx(data, path, ndim, label, errors)


def check_counts(images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path,
                 label: str = "IDX", errors: ErrorKinds = GENERIC) -> None:
    """Raise ``errors.corrupt`` unless there are as many labels as images."""
    if len(images) != len(labels):
        raise errors.corrupt(
            f"{label} files {image_path.name} ({len(images)} images) and {label_path.name} "
            f"({len(labels)} labels) in {image_path.parent} disagree; replace them."
        )


@dataclass(frozen=True)
class IdxDataset:
    """A data set stored as a pair of IDX files (images, labels) per split, e.g. MNIST."""

    label: str
    """Name used in messages, e.g. ``"MNIST"``."""
    files: dict[str, tuple[str, str]]
    """split -> (image file, label file), as named in the original release (``*.gz``)."""
    hint: str
    """Where to get the files, appended to error messages."""
    file_md5: dict[str, str] | None = None
    """md5 of each file as stored (the ``.gz``), checked when verifying; or None."""
    content_md5: dict[str, str] | None = None
    """md5 of each file's uncompressed contents, checked when verifying; or None."""
    errors: ErrorKinds = GENERIC
    """Exception classes for missing and corrupt files."""

    def locate(self, directory: Path, split: str) -> tuple[Path, Path]:
        """Paths of the split's image and label files (``.gz`` or unpacked) in ``directory``;
        ``errors.missing`` naming every expected file if one is not there."""
        found = [find_variant(directory, name) for name in self.files[split]]
        missing = [n for n, path in zip(self.files[split], found, strict=True) if path is None]
        if missing:
            expected = [n for pair in self.files.values() for n in pair]
            raise self.errors.missing(
                missing_message(self.label, directory, expected, self.hint, missing))
        return found[0], found[1]

    def load(self, directory: Path, split: str, verify: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The split as uint8 images (N, rows, cols) and int64 labels (N,), checking the md5
        sums when ``verify``."""
        if split not in self.files:
            raise ValueError(f"split must be one of {sorted(self.files)}, got {split!r}")
        paths = self.locate(directory, split)
        arrays = []
        for path, name, ndim in zip(paths, self.files[split], (3, 1), strict=True):
            sums = {"file_md5": self.file_md5, "content_md5": self.content_md5}
            checks = {k: v[name] for k, v in sums.items() if verify and v is not None}
            arrays.append(read_idx(path, ndim, label=self.label, hint=self.hint,
                                   errors=self.errors, **checks))
        images, labels = arrays
        check_counts(images, labels, *paths, self.label, self.errors)
        return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
