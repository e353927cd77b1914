"""Reader for IDX files (the format of MNIST and Fashion-MNIST), gzip-compressed or not.

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
int32 sizes, then the data in C order. Gzip compression is recognised by the ``.gz`` suffix or
by the gzip signature at the start of the file.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from mcnc.data.errors import GENERIC, ErrorKinds

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
