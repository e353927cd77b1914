"""Tests of mcnc.data on tiny files written to temporary directories."""

import gzip
import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcnc.data import (
    DATASETS,
    DataCorruptError,
    DataError,
    DataNotFoundError,
    MNISTError,
    cifar,
    collate_batch,
    data_loader,
    dataset_info,
    fashion_mnist,
    load_dataset,
    subset,
    transforms,
)
from mcnc.data.idx import parse_idx, read_idx
from mcnc.data.mnist import load_mnist

# ---------------------------------------------------------------- helpers writing fake files


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    """IDX encoding of ``array`` (stored big-endian with the dtype of ``type_byte``)."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_byte]
    header = bytes([0, 0, type_byte, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    return header + np.asarray(array).astype(dtype).tobytes()


def write_idx_set(directory: Path, n_train: int = 6, n_test: int = 4, gz: bool = True,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Four MNIST-style files in ``directory``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, ndim in (("images", 3), ("labels", 1)):
            data = idx_bytes(arrays[f"{prefix}-{kind}"])
            name = f"{prefix}-{kind}-idx{ndim}-ubyte"
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
    return arrays


def cifar_records(labels: list[tuple[int, ...]], seed: int) -> tuple[bytes, np.ndarray]:
    """Binary CIFAR records with the given label bytes; returns (bytes, images (N, 3, 32, 32))."""
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 3, 32, 32),
                                                  dtype=np.uint8)
    rows = [bytes(lab) + img.tobytes() for lab, img in zip(labels, images, strict=True)]
    return b"".join(rows), images


@pytest.fixture
def cifar10_root(tmp_path):
    """A fake cifar-10-batches-bin with 2 records per training batch, 3 test records."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    train_images, train_labels = [], []
    for b in range(1, 6):
        labels = [(2 * b - 2) % 10, (2 * b - 1) % 10]
        data, images = cifar_records([(y,) for y in labels], seed=b)
        (folder / f"data_batch_{b}.bin").write_bytes(data)
        train_images.append(images)
        train_labels += labels
    data, test_images = cifar_records([(9,), (0,), (4,)], seed=99)
    (folder / "test_batch.bin").write_bytes(data)
    (folder / "batches.meta.txt").write_text("\n".join(cifar.CIFAR10_CLASSES) + "\n\n")
    return tmp_path, np.concatenate(train_images), train_labels, test_images


@pytest.fixture
def cifar100_root(tmp_path):
    """A fake cifar-100-binary with 4 training and 2 test records."""
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    train, train_images = cifar_records([(0, 99), (19, 5), (3, 0), (7, 42)], seed=1)
    test, _ = cifar_records([(1, 1), (2, 77)], seed=2)
    (folder / "train.bin").write_bytes(train)
    (folder / "test.bin").write_bytes(test)
    return tmp_path, train_images


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folder_root(tmp_path):
    """train/{cat,dog,emu}/ and val/{cat,dog,emu}/ with 8x10 RGB PNGs."""
    rng = np.random.default_rng(3)
    pixels = {}
    for split, per_class in (("train", 3), ("val", 1)):
        for name in ("dog", "cat", "emu"):  # written unsorted on purpose
            for i in range(per_class):
                image = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
                path = tmp_path / split / name / f"img{i}.png"
                write_png(path, image)
                pixels[str(path)] = image
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path, pixels


# ---------------------------------------------------------------- errors and registry


def test_error_hierarchy():
    assert issubclass(MNISTError, DataError) and issubclass(DataError, RuntimeError)
    assert issubclass(DataNotFoundError, DataError) and issubclass(DataCorruptError, DataError)
    assert issubclass(DataNotFoundError, FileNotFoundError)


def test_mnist_missing_is_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_mnist("train", tmp_path)
    assert isinstance(e.value, MNISTError)


def test_dataset_info_names():
    assert dataset_info("CIFAR-10") is DATASETS["cifar10"]
    assert dataset_info("fashion_mnist").num_classes == 10
    assert dataset_info("ImageNet-100").image_size == 224
    assert dataset_info("cifar100").in_channels == 3 and len(DATASETS["cifar100"].mean) == 3
    with pytest.raises(ValueError, match="cifar10"):
        dataset_info("svhn")


# ---------------------------------------------------------------- IDX and Fashion-MNIST


def test_parse_idx_types(tmp_path):
    ints = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
    assert np.array_equal(parse_idx(idx_bytes(ints, 0x0C), tmp_path / "x"), ints)
    floats = np.array([0.5, -1.25], dtype=np.float32)
    assert np.array_equal(parse_idx(idx_bytes(floats, 0x0D), tmp_path / "x", ndim=1), floats)


def test_read_idx_plain_and_gzip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(array)))
    for name in ("a", "b.gz"):
        assert np.array_equal(read_idx(tmp_path / name, 3), array)
    content = hashlib.md5(idx_bytes(array)).hexdigest()
    read_idx(tmp_path / "b.gz", 3, content_md5=content)
    with pytest.raises(DataCorruptError, match="checksum"):
        read_idx(tmp_path / "b.gz", 3, content_md5="0" * 32)
    with pytest.raises(DataCorruptError, match="magic"):
        read_idx(tmp_path / "a", 1)


def test_read_idx_truncated(tmp_path):
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "t").write_bytes(data[:-5])
    with pytest.raises(DataCorruptError, match="truncated"):
        read_idx(tmp_path / "t", 3)
    (tmp_path / "h").write_bytes(data[:7])
    with pytest.raises(DataCorruptError, match="header"):
        read_idx(tmp_path / "h", 3)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_user_root(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    x, y = fashion_mnist.load_fashion_mnist("test", tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (4, 28, 28)
    assert np.array_equal(x.numpy(), arrays["t10k-images"])
    assert y.dtype == torch.int64 and y.tolist() == arrays["t10k-labels"].tolist()


def test_fashion_mnist_dataset_values(tmp_path):
    arrays = write_idx_set(tmp_path)
    ds = load_dataset("fashion-mnist", "train", root=tmp_path)
    assert len(ds) == 6 and ds.info.in_channels == 1 and ds.classes[0] == "T-shirt/top"
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    value = int(arrays["train-images"][2, 5, 7])
    assert x[0, 5, 7].item() == pytest.approx((value / 255 - 0.2860) / 0.3530, abs=1e-5)
    assert y == int(arrays["train-labels"][2])


def test_fashion_mnist_missing_files(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion-mnist", "train", root=tmp_path)
    message = str(e.value)
    assert all(name in message for name in fashion_mnist.FILES["test"] + fashion_mnist.FILES[
        "train"])
    assert str(tmp_path) in message and "apt-get install dataset-fashion-mnist" in message
    assert "train-labels-idx1-ubyte.gz not found" in message
    load_dataset("fashion-mnist", "test", root=tmp_path)  # the test split is complete


def test_fashion_mnist_verify_fake_files(tmp_path):
    write_idx_set(tmp_path)
    with pytest.raises(DataCorruptError, match="checksum"):
        fashion_mnist.load_fashion_mnist("test", tmp_path, verify=True)


def test_idx_labels_out_of_range(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.array([0, 1, 10, 2], np.uint8))))
    with pytest.raises(DataCorruptError, match=r"0\.\.9"):
        load_dataset("mnist", "test", root=tmp_path)


def test_mnist_dataset_from_root(tmp_path):
    arrays = write_idx_set(tmp_path)
    ds = load_dataset("mnist", "val", root=tmp_path)  # "val" means the test split
    x, y = ds.__getitems__([3, 0])
    assert x.shape == (2, 1, 28, 28) and y.tolist() == arrays["t10k-labels"][[3, 0]].tolist()
    expected = (torch.from_numpy(arrays["t10k-images"][[3, 0]]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[:, 0], expected, atol=1e-5)


def test_real_fashion_mnist():
    if not fashion_mnist.DEFAULT_DIR.is_dir():
        pytest.skip("apt-get install dataset-fashion-mnist to run this test")
    train = load_dataset("fashion-mnist", "train")  # default location: md5 verified
    test = load_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    pixels = train.images.double() / 255
    assert pixels.mean().item() == pytest.approx(fashion_mnist.MEAN, abs=1e-4)
    assert pixels.std().item() == pytest.approx(fashion_mnist.STD, abs=1e-4)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("parent", [True, False])
def test_cifar10_layout_and_values(cifar10_root, parent):
    root, images, labels, test_images = cifar10_root
    root = root if parent else root / "cifar-10-batches-bin"
    x, y = cifar.load_cifar(cifar.CIFAR10, "train", root)[:2]
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8
    assert np.array_equal(x.numpy(), images) and y.tolist() == labels
    x, y = cifar.load_cifar(cifar.CIFAR10, "test", root)[:2]
    assert np.array_equal(x.numpy(), test_images) and y.tolist() == [9, 0, 4]


def test_cifar_channel_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    planes = np.zeros((3, 32, 32), np.uint8)
    planes[0, 1, 2], planes[1, 1, 2], planes[2, 1, 2] = 200, 100, 50  # pixel (row 1, col 2)
    (folder / "test_batch.bin").write_bytes(bytes([7]) + planes.tobytes())
    ds = load_dataset("cifar10", "test", root=tmp_path)
    raw = ds.images[0, :, 1, 2].tolist()
    assert raw == [200, 100, 50] and ds.labels.tolist() == [7]
    x, y = ds[0]
    mean, std = ds.info.mean, ds.info.std
    for c, v in enumerate(raw):
        assert x[c, 1, 2].item() == pytest.approx((v / 255 - mean[c]) / std[c], abs=1e-5)
    assert y == 7 and ds.classes[7] == "7"  # no batches.meta.txt: numeric names


def test_cifar10_class_names(cifar10_root):
    ds = load_dataset("cifar10", "train", root=cifar10_root[0])
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"


def test_cifar100_fine_labels(cifar100_root):
    root, images = cifar100_root
    ds = load_dataset("cifar100", "train", root=root)
    assert ds.labels.tolist() == [99, 5, 0, 42] and ds.info.num_classes == 100
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert load_dataset("cifar-100", "test", root=root / "cifar-100-binary").labels.tolist() == [
        1, 77]


def test_cifar100_label_out_of_range(cifar100_root):
    root, _ = cifar100_root
    data, _ = cifar_records([(3, 100)], seed=0)
    (root / "cifar-100-binary" / "test.bin").write_bytes(data)
    with pytest.raises(DataCorruptError, match="< 100"):
        load_dataset("cifar100", "test", root=root)
    data, _ = cifar_records([(20, 1)], seed=0)
    (root / "cifar-100-binary" / "test.bin").write_bytes(data)
    with pytest.raises(DataCorruptError, match="< 20"):
        load_dataset("cifar100", "test", root=root)


def test_cifar_truncated(cifar10_root):
    root = cifar10_root[0] / "cifar-10-batches-bin"
    data = (root / "test_batch.bin").read_bytes()
    (root / "test_batch.bin").write_bytes(data[:-100])
    with pytest.raises(DataCorruptError, match="record size 3073") as e:
        load_dataset("cifar10", "test", root=root)
    assert "test_batch.bin" in str(e.value)
    (root / "data_batch_3.bin").write_bytes(b"")
    with pytest.raises(DataCorruptError, match=r"data_batch_3\.bin"):
        load_dataset("cifar10", "train", root=root)


def test_cifar_missing(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("cifar10", "train", root=tmp_path)
    message = str(e.value)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    assert all(n in message for n in names) and str(tmp_path) in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in message
    with pytest.raises(DataNotFoundError, match=r"cifar-100-binary\.tar\.gz") as e:
        load_dataset("cifar100", "test", root=None)
    assert "train.bin" in str(e.value) and "test.bin" in str(e.value)


def test_cifar_python_version_refused(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"pickle")
    with pytest.raises(DataNotFoundError, match="pickled python version"):
        load_dataset("cifar10", "train", root=tmp_path)


# ---------------------------------------------------------------- image folders


def test_imagefolder_native(folder_root):
    root, pixels = folder_root
    ds = load_dataset("imagefolder", "train", root=root)
    assert ds.classes == ["cat", "dog", "emu"] and ds.info.num_classes == 3
    assert len(ds) == 9 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(p.endswith(".png") for p in ds.paths)
    x, y = ds.__getitems__([4, 8])
    assert x.shape == (2, 3, 8, 10) and y.tolist() == [1, 2]
    expected = torch.from_numpy(pixels[ds.paths[4]]).permute(2, 0, 1)[None]
    assert torch.allclose(x[:1], transforms.normalize(expected, ds.info.mean, ds.info.std))
    assert load_dataset("imagefolder", "test", root=root).labels.tolist() == [0, 1, 2]


def test_imagefolder_is_lazy(folder_root):
    root, _ = folder_root
    (root / "train" / "dog" / "broken.png").write_bytes(b"no png")
    ds = load_dataset("imagefolder", "train", root=root)  # listing does not decode
    ds.__getitems__([0, 1])
    bad = ds.paths.index(str(root / "train" / "dog" / "broken.png"))
    with pytest.raises(DataCorruptError, match=r"broken\.png"):
        ds[bad]


def test_imagefolder_sizes_differ(folder_root):
    root, _ = folder_root
    write_png(root / "train" / "emu" / "big.png", np.zeros((12, 12, 3), np.uint8))
    ds = load_dataset("imagefolder", "train", root=root)
    with pytest.raises(DataError, match="differ in size"):
        ds.__getitems__(list(range(len(ds))))


def test_imagefolder_missing(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataNotFoundError, match="'val'") as e:
        load_dataset("imagefolder", "val", root=tmp_path)
    assert "train" in str(e.value) and "<class>" in str(e.value)
    with pytest.raises(DataNotFoundError, match="No images"):
        load_dataset("imagefolder", "train", root=tmp_path)
    with pytest.raises(DataNotFoundError, match="root="):
        load_dataset("imagefolder", "train")


def test_imagenet100_transforms(folder_root):
    root, _ = folder_root
    with pytest.warns(UserWarning, match="3 class folders"):
        ds = load_dataset("imagenet100", "val", root=root)
    x, y = ds.__getitems__([0, 1, 2])
    assert x.shape == (3, 3, 224, 224) and y.tolist() == [0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = load_dataset("imagenet100", "train", root=root, augment=True,
                             generator=torch.Generator().manual_seed(0))
    a = train.__getitems__([0, 5])[0]
    train.generator.manual_seed(0)
    assert torch.equal(a, train.__getitems__([0, 5])[0]) and a.shape == (2, 3, 224, 224)


# ---------------------------------------------------------------- transforms


def test_flip_flips():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 4, 5)
    assert torch.equal(transforms.random_flip(x, p=1.0), x[..., torch.arange(4, -1, -1)])
    assert torch.equal(transforms.random_flip(x, p=0.0), x)
    many = torch.arange(5, dtype=torch.uint8).repeat(1000, 1, 1, 1)
    flipped = transforms.random_flip(many, torch.Generator().manual_seed(0))
    share = (flipped[:, 0, 0, 0] == 4).float().mean().item()
    assert 0.4 < share < 0.6 and ((flipped[:, 0, 0, 0] == 0) | (flipped[:, 0, 0, 0] == 4)).all()


def shifted(image: np.ndarray, down: int, right: int) -> np.ndarray:
    """``image`` (C, H, W) moved down/right by the given amounts, zeros filling in."""
    out = np.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(down, 0) : h + min(down, 0), max(right, 0) : w + min(right, 0)] = image[
        :, max(-down, 0) : h - max(down, 0), max(-right, 0) : w - max(right, 0)]
    return out


def test_crop_with_padding_is_a_shift():
    x = torch.randint(1, 256, (4, 3, 6, 7), generator=torch.Generator().manual_seed(1),
                      dtype=torch.uint8)
    top, left = torch.tensor([0, 4, 2, 1]), torch.tensor([4, 0, 2, 3])
    out = transforms.crop_padded(x, top, left, padding=2)
    for b in range(4):
        expected = shifted(x[b].numpy(), 2 - int(top[b]), 2 - int(left[b]))
        assert np.array_equal(out[b].numpy(), expected)
    assert torch.equal(out[2], x[2])  # corner (2, 2) with padding 2: unchanged


def test_random_crop_shift_range_and_determinism():
    x = torch.zeros(200, 1, 9, 9, dtype=torch.uint8)
    x[:, 0, 4, 4] = 255  # one bright pixel in the centre
    out = transforms.random_crop(x, 4, torch.Generator().manual_seed(5))
    rows, cols = (out[:, 0] == 255).nonzero()[:, 1:].T
    assert out.shape == x.shape and len(rows) == 200  # a shift by <= 4 keeps the centre pixel
    assert rows.min() == 0 and rows.max() == 8 and cols.min() == 0 and cols.max() == 8
    again = transforms.random_crop(x, 4, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    torch.manual_seed(3)
    a = transforms.CIFAR_TRAIN(x)
    torch.manual_seed(3)
    assert torch.equal(a, transforms.CIFAR_TRAIN(x))  # global RNG when no generator


def test_dataset_augmentation_deterministic(cifar10_root):
    root = cifar10_root[0]
    ds = load_dataset("cifar10", "train", root=root, augment=True,
                      generator=torch.Generator().manual_seed(0))
    a, ya = ds.__getitems__(list(range(10)))
    b, _ = ds.__getitems__(list(range(10)))
    ds.generator.manual_seed(0)
    c, yc = ds.__getitems__(list(range(10)))
    assert a.shape == (10, 3, 32, 32) and torch.equal(a, c) and torch.equal(ya, yc)
    assert not torch.equal(a, b)
    plain = load_dataset("cifar10", "train", root=root)
    assert plain.augment is None and torch.equal(plain.__getitems__([0])[0],
                                                 plain.__getitems__([0])[0])


def test_random_box_bounds():
    g = torch.Generator().manual_seed(0)
    for height, width in [(375, 500), (64, 64), (20, 300)]:
        for _ in range(50):
            top, left, h, w = transforms.random_box(height, width, (0.08, 1.0), (3 / 4, 4 / 3), g)
            assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
    top, left, h, w = transforms.random_box(20, 300, (0.9, 1.0), (3 / 4, 4 / 3), g)
    assert (h, w) == (20, round(20 * 4 / 3)) and left == (300 - w) // 2  # fallback box
    areas = [math.prod(transforms.random_box(400, 400, (0.08, 1.0), (3 / 4, 4 / 3), g)[2:])
             for _ in range(100)]
    assert min(areas) >= 0.07 * 400**2 and max(areas) <= 400**2


def test_imagenet_crops():
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    out = transforms.IMAGENET_EVAL(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert transforms.resize_shorter(image, 256).shape == (3, 256, 341)
    g = torch.Generator().manual_seed(1)
    a = transforms.IMAGENET_TRAIN(image, g)
    g.manual_seed(1)
    assert a.shape == (3, 224, 224) and torch.equal(a, transforms.IMAGENET_TRAIN(image, g))
    flat = torch.full((3, 50, 60), 77, dtype=torch.uint8)
    assert (transforms.IMAGENET_TRAIN(flat) == 77).all()  # resizing keeps a constant image
    assert torch.equal(transforms.center_crop(image, 300), image[:, :, 50:350])


def test_normalize_stats():
    x = torch.randint(0, 256, (64, 3, 5, 5), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8)
    scaled = x.double() / 255
    mean = scaled.mean((0, 2, 3)).tolist()
    std = scaled.std((0, 2, 3)).tolist()
    out = transforms.normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.double().std((0, 2, 3)), torch.ones(3, dtype=torch.double),
                          atol=1e-5)


# ---------------------------------------------------------------- dataset plumbing


def test_getitem_matches_getitems(cifar10_root):
    ds = load_dataset("cifar10", "train", root=cifar10_root[0])
    x, y = ds.__getitems__([3, 7, 3])
    for row, i in enumerate([3, 7, 3]):
        xi, yi = ds[i]
        assert torch.equal(xi, x[row]) and yi == y[row].item()
    assert torch.equal(ds[-1][0], ds[9][0])
    with pytest.raises(IndexError):
        ds[10]


def test_data_loader_batches(cifar10_root):
    ds = load_dataset("cifar10", "train", root=cifar10_root[0], augment=True)
    loader = data_loader(ds, batch_size=4, shuffle=True,
                         generator=torch.Generator().manual_seed(0))
    calls = []
    batched = ds.__getitems__
    ds.__getitems__ = lambda indices: calls.append(indices) or batched(indices)
    batches = list(loader)
    assert [len(c) for c in calls] == [4, 4, 2]  # one batched call per batch
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 3, 32, 32) and batches[0][1].dtype == torch.int64
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(ds.labels.tolist())
    pairs = [ds[0], ds[1]]
    x, y = collate_batch(pairs)
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [pairs[0][1], pairs[1][1]]
    assert collate_batch((x, y)) == (x, y)


def test_subset(cifar10_root, folder_root):
    ds = load_dataset("cifar10", "train", root=cifar10_root[0])
    first = subset(ds, 3)
    assert len(first) == 3 and torch.equal(first.images, ds.images[:3])
    a, b = subset(ds, 4, seed=1), subset(ds, 4, seed=1)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert len(subset(ds, 100)) == 10 and a.info == ds.info
    folder = load_dataset("imagefolder", "train", root=folder_root[0])
    picked = subset(folder, 2, seed=0)
    assert len(picked) == 2 and picked.__getitems__([0, 1])[0].shape == (2, 3, 8, 10)
    assert set(picked.paths) <= set(folder.paths)
