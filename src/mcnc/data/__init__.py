"""Image data sets for mcnc, read from local files without torchvision or network access.

Entry point: :func:`load_dataset` (``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``,
``imagefolder``, ``imagenet100``) returning an :class:`ImageDataset` that serves normalised
float32 batches through ``__getitems__``; :func:`data_loader` wraps one in a DataLoader.
"""

from mcnc.data.dataset import (
    FolderImageDataset,
    ImageDataset,
    TensorImageDataset,
    collate_batch,
    data_loader,
    subset,
)
from mcnc.data.errors import DataCorruptError, DataError, DataNotFoundError, MNISTError
from mcnc.data.registry import DATASETS, DatasetInfo, dataset_info, load_dataset

__all__ = [
    "DATASETS",
    "DataCorruptError",
    "DataError",
    "DataNotFoundError",
    "DatasetInfo",
    "FolderImageDataset",
    "ImageDataset",
    "MNISTError",
    "TensorImageDataset",
    "collate_batch",
    "data_loader",
    "dataset_info",
    "load_dataset",
    "subset",
]
