"""load_fashion_mnist reads IDX files it is given (raw or gzipped) and never downloads.

Every test writes its own small IDX files, so the suite needs neither the dataset nor a network.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import captum_concepts.data.fashion_mnist as fm
from captum_concepts.data import FASHION_MNIST_CLASSES, FashionMNISTData, load_fashion_mnist

STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding written by hand: 0, 0, type 0x08, ndim, big-endian sizes, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=7, dtype=np.uint8),
        "x_test": rng.integers(0, 256, size=(3, 5, 4), dtype=np.uint8),
        "y_test": np.array([0, 9, 4], dtype=np.uint8),
    }


def _write(folder: Path, arrays, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in STEMS.items():
        data = _idx_bytes(arrays[key])
        if gz:
            with gzip.open(folder / (stem + ".gz"), "wb") as f:
                f.write(data)
        else:
            (folder / stem).write_bytes(data)


@pytest.fixture(autouse=True)
def _no_installed_copy(monkeypatch, tmp_path):
    # Whatever this machine has installed, the tests see only the files they write.
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "no-debian-package"))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_reads_values_shapes_and_labels(tmp_path, gz):
    arrays = _arrays()
    _write(tmp_path, arrays, gz)
    data = load_fashion_mnist(tmp_path)
    assert isinstance(data, FashionMNISTData)
    assert data.x_train.shape == (7, 1, 5, 4) and data.x_test.shape == (3, 1, 5, 4)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    # pixel / 255, byte for byte (0 -> 0.0, 255 -> 1.0)
    np.testing.assert_allclose(data.x_train[:, 0].numpy(), arrays["x_train"] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(data.x_test[:, 0].numpy(), arrays["x_test"] / 255.0, rtol=0, atol=1e-7)
    assert data.y_test.tolist() == [0, 9, 4]
    assert data.y_train.tolist() == arrays["y_train"].tolist()
    assert data.image_shape == (1, 5, 4)
    assert data.class_names == FASHION_MNIST_CLASSES and data.class_names[9] == "Ankle boot"


def test_env_variable_and_torchvision_layout(tmp_path, monkeypatch):
    arrays = _arrays(1)
    _write(tmp_path / "FashionMNIST" / "raw", arrays, gz=True)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    data = load_fashion_mnist()
    assert data.y_test.tolist() == [0, 9, 4]
    # an explicit root (a Path) wins over the environment
    other = _arrays(2)
    other["y_test"] = np.array([1, 2, 3], dtype=np.uint8)
    _write(tmp_path / "mine", other, gz=False)
    assert load_fashion_mnist(tmp_path / "mine").y_test.tolist() == [1, 2, 3]


def test_debian_folder_is_the_fallback(tmp_path, monkeypatch):
    _write(tmp_path / "deb", _arrays(), gz=True)
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "deb"))
    assert load_fashion_mnist().x_train.shape == (7, 1, 5, 4)


def test_missing_files_say_where_and_how(tmp_path, monkeypatch):
    import urllib.request

    def _no_network(*args, **kwargs):  # pragma: no cover - reached only if it tried to download
        raise AssertionError("load_fashion_mnist must never download")

    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    partial = _arrays()
    _write(tmp_path / "half", partial, gz=False)
    os.remove(tmp_path / "half" / STEMS["y_test"])  # three of four files are not enough
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist(tmp_path / "half")
    message = str(err.value)
    assert str(tmp_path / "half") in message
    assert os.path.join(str(tmp_path / "half"), "FashionMNIST", "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message and "never downloads" in message
    with pytest.raises(FileNotFoundError, match="no-debian-package"):
        load_fashion_mnist()


def test_corrupt_files_name_the_path(tmp_path):
    arrays = _arrays()
    _write(tmp_path, arrays, gz=False)
    path = tmp_path / STEMS["x_train"]
    good = path.read_bytes()
    path.write_bytes(good[:-3])  # truncated: the header's shape needs 3 more bytes
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*shape \(7, 5, 4\)"):
        load_fashion_mnist(tmp_path)
    path.write_bytes(b"\x00\x00\x0d\x03" + good[4:])  # type 0x0d (float), not unsigned bytes
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: not an unsigned-byte IDX file"):
        load_fashion_mnist(tmp_path)
    path.write_bytes(good)
    labels = tmp_path / STEMS["y_test"]
    labels.write_bytes(_idx_bytes(np.array([0, 1], dtype=np.uint8)))  # 2 labels for 3 images
    with pytest.raises(ValueError, match="expected images"):
        load_fashion_mnist(tmp_path)
    labels.write_bytes(_idx_bytes(np.array([0, 1, 10], dtype=np.uint8)))
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        load_fashion_mnist(tmp_path)
    gz = tmp_path / "gz"
    _write(gz, arrays, gz=True)
    (gz / (STEMS["x_test"] + ".gz")).write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: not a readable IDX file"):
        load_fashion_mnist(gz)


def test_root_must_be_a_path(tmp_path):
    with pytest.raises(TypeError, match="root must be a path"):
        load_fashion_mnist(3)
