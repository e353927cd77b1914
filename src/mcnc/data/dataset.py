"""``ImageDataset``: a torch Dataset that serves normalised float32 batches.

Two kinds share one interface:

* :class:`TensorImageDataset` holds every image in memory as uint8 (N, C, H, W) (MNIST family,
  CIFAR). A batch is one indexing operation, one batched augmentation and one normalisation.
* :class:`FolderImageDataset` holds file paths and decodes the images of a batch when asked
  (ImageFolder, ImageNet-100), each through an optional per-image crop/resize step.

``__getitems__(indices)`` returns a whole batch ``(x (B, C, H, W) float32, y (B,) int64)``;
torch's DataLoader calls it whenever it batches (``batch_size`` or ``batch_sampler`` given), and
:func:`collate_batch` passes that tuple through. :func:`data_loader` sets this up.

Randomness of the augmentations comes from ``dataset.generator`` if it is a torch.Generator,
else from torch's global RNG. Prefer the global RNG with ``num_workers > 0``: each worker copies
the dataset, so an explicit generator would repeat the same draws in every worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mcnc.data.errors import DataError
from mcnc.data.imagefolder import decode_image
from mcnc.data.transforms import BatchAugment, Generator, normalize

Batch = tuple[torch.Tensor, torch.Tensor]
ImageStep = Callable[[torch.Tensor, Generator], torch.Tensor]
"""Per-image step (C, H, W) uint8 -> (C, S, S) uint8, e.g. a random-resized crop."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set, and where to get it."""

    name: str
    num_classes: int
    """Number of classes; for ``imagefolder`` 0 in :data:`DATASETS`, set once a folder is read."""
    in_channels: int
    image_size: int | None
    """Side of the square images served; None: the folder's own image size."""
    mean: tuple[float, ...]
    """Per-channel mean of pixels scaled to [0, 1], subtracted before dividing by ``std``."""
    std: tuple[float, ...]
    source: str
    """Where to get the files."""
    splits: tuple[str, ...] = ("train", "test")


class ImageDataset(Dataset):
    """Images with integer labels, served as normalised float32.

    Attributes:
        info: the :class:`DatasetInfo` (mean/std used for normalisation).
        split: the split name.
        labels: int64 (N,).
        classes: class names; ``classes[y]`` names label ``y``.
        augment: batch augmentation applied to uint8 batches, or None.
        generator: source of augmentation randomness; None means torch's global RNG.
    """

    def __init__(self, info: DatasetInfo, split: str, labels: torch.Tensor,
                 classes: Sequence[str], augment: BatchAugment | None = None,
                 generator: Generator = None) -> None:
        if labels.ndim != 1 or labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 (N,), got {labels.dtype} {tuple(labels.shape)}")
        self.info = info
        self.split = split
        self.labels = labels
        self.classes = list(classes)
        self.augment = augment
        self.generator = generator

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) at ``index`` (int64 (B,)), before augmentation."""
        raise NotImplementedError

    def select(self, index: torch.Tensor) -> ImageDataset:
        """A dataset of the same kind holding only the samples at ``index`` (int64 (M,))."""
        raise NotImplementedError

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """Batch at ``indices``: x float32 (B, C, H, W) normalised, y int64 (B,)."""
        index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        y = self.labels[index]
        x = self.raw(index)
        if self.augment is not None:
            x = self.augment(x, self.generator)
        return normalize(x, self.info.mean, self.info.std), y

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Sample ``i``: x float32 (C, H, W) normalised, y as a Python int."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        x, y = self.__getitems__([i])
        return x[0], int(y[0])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.info.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={len(self.classes)}, augment={self.augment})")


class TensorImageDataset(ImageDataset):
    """An :class:`ImageDataset` whose images are held in memory as uint8 (N, C, H, W)."""

    def __init__(self, info: DatasetInfo, split: str, images: torch.Tensor,
                 labels: torch.Tensor, classes: Sequence[str],
                 augment: BatchAugment | None = None, generator: Generator = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images must be uint8 (N, C, H, W) with N = {len(labels)} labels, "
                             f"got {images.dtype} {tuple(images.shape)}")
        super().__init__(info, split, labels, classes, augment, generator)
        self.images = images

    def raw(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]

    def select(self, index: torch.Tensor) -> TensorImageDataset:
        return TensorImageDataset(self.info, self.split, self.images[index], self.labels[index],
                                  self.classes, self.augment, self.generator)


class FolderImageDataset(ImageDataset):
    """An :class:`ImageDataset` reading image files on demand.

    ``prepare`` turns each decoded RGB image (3, H, W) into its final size (e.g. a random-resized
    crop to 224); without it every image of a batch must already have the same size.
    """

    def __init__(self, info: DatasetInfo, split: str, paths: Sequence[str],
                 labels: torch.Tensor, classes: Sequence[str], prepare: ImageStep | None = None,
                 augment: BatchAugment | None = None, generator: Generator = None) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        super().__init__(info, split, labels, classes, augment, generator)
        self.paths = list(paths)
        self.prepare = prepare

    def load(self, i: int) -> torch.Tensor:
        """Image ``i`` decoded and prepared: uint8 (3, H, W)."""
        image = decode_image(self.paths[i])
        return image if self.prepare is None else self.prepare(image, self.generator)

    def raw(self, index: torch.Tensor) -> torch.Tensor:
        images = [self.load(i) for i in index.tolist()]
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) > 1:
            raise DataError(
                f"Images of one batch differ in size ({sorted(sizes)}) in {self.info.name} "
                f"{self.split!r}; give the dataset a prepare step (e.g. imagenet100's "
                f"resize + crop) or resize the files."
            )
        return torch.stack(images)

    def select(self, index: torch.Tensor) -> FolderImageDataset:
        return FolderImageDataset(self.info, self.split, [self.paths[i] for i in index.tolist()],
                                  self.labels[index], self.classes, self.prepare, self.augment,
                                  self.generator)


def collate_batch(batch: Batch | Sequence[tuple[torch.Tensor, Any]]) -> Batch:
    """DataLoader collate function: passes an ``(x, y)`` batch from ``__getitems__`` through;
    a list of single samples ``[(x, y), ...]`` is stacked into (B, ...) tensors instead."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return batch
    xs, ys = zip(*batch, strict=True)
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.int64)


def subset(dataset: ImageDataset, n: int, seed: int | None = None) -> ImageDataset:
    """The first ``n`` samples (``seed=None``), or ``n`` samples drawn without replacement by
    ``torch.randperm`` seeded with ``seed`` (kept in dataset order). ``n`` is capped at
    ``len(dataset)``. The result shares ``info``, ``classes``, augmentation and generator."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n = min(n, len(dataset))
    if seed is None:
        return dataset.select(torch.arange(n))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.select(order[:n].sort().values)


def data_loader(dataset: Dataset, batch_size: int, shuffle: bool = False,
                drop_last: bool = False, generator: torch.Generator | None = None,
                **options: Any) -> DataLoader:
    """A DataLoader yielding ``(x (B, C, H, W) float32, y (B,) int64)`` batches built by one
    ``__getitems__`` call each. ``generator`` drives the shuffling; ``options`` go to
    DataLoader (e.g. ``num_workers``, ``pin_memory``)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=generator, collate_fn=collate_batch, **options)
