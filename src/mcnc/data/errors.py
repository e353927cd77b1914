"""Exceptions raised by :mod:`mcnc.data`, and the wording of the "files are missing" message.

Hierarchy::

    RuntimeError
    └── DataError                       anything wrong with a data set on disk
        ├── DataNotFoundError           files or folders are missing (also a FileNotFoundError)
        ├── DataCorruptError            truncated, wrong header, bad checksum, label out of range
        └── MNISTError                  everything raised by mcnc.data.mnist (the legacy name)
            ├── MNISTNotFoundError      (also a DataNotFoundError)
            └── MNISTCorruptError       (also a DataCorruptError)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple


class DataError(RuntimeError):
    """A data set is missing, corrupt or cannot be used as asked."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Files or folders of a data set are missing. The message names the files expected, the
    directory looked in and where to get them."""


class DataCorruptError(DataError):
    """A data file exists but is truncated, malformed or fails its checksum."""


class MNISTError(DataError):
    """The MNIST files are missing, corrupt or inconsistent."""


class MNISTNotFoundError(MNISTError, DataNotFoundError):
    """MNIST files are missing."""


class MNISTCorruptError(MNISTError, DataCorruptError):
    """MNIST files are truncated, malformed or fail their checksum."""


class ErrorKinds(NamedTuple):
    """Which exception classes a reader raises for missing and for corrupt files."""

    missing: type[DataError] = DataNotFoundError
    corrupt: type[DataError] = DataCorruptError


GENERIC = ErrorKinds()
MNIST_ERRORS = ErrorKinds(MNISTNotFoundError, MNISTCorruptError)


def missing_message(
    dataset: str, directory: Path | str, expected: Iterable[str], hint: str,
    missing: Iterable[str] = (),
) -> str:
    """The message for missing files of ``dataset``: what is missing, every file expected,
    the directory looked in and ``hint`` (where to get the files)."""
    missing = list(missing)
    head = f"{dataset} file(s) {', '.join(missing)} not found" if missing else (
        f"{dataset} files not found")
    return (f"{head} in {directory}. Expected files: {', '.join(expected)}. {hint}")
