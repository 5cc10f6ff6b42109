"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from local IDX files, never downloaded.

70,000 real 28x28 grey-level photographs of clothing in 10 classes (60,000 training,
10,000 test), MNIST's drop-in replacement. The four standard files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally ``.gz``) are looked for, in order, in

1. ``root`` if given, else ``$FASHION_MNIST_DIR`` if set, and then torchvision's layout below
   it (``<folder>/FashionMNIST/raw``); an explicit folder is the only one searched;
2. otherwise the Debian/Ubuntu package's folder ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .._utils.validation import NONE, AnyOf, InstanceOf, validated
from .digits import DigitsData

__all__ = ["FASHION_MNIST_CLASSES", "FashionMNISTData", "load_fashion_mnist", "read_idx"]

FASHION_MNIST_CLASSES: Tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "FASHION_MNIST_DIR"
_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
_UBYTE = 0x08


@dataclass
class FashionMNISTData(DigitsData):
    """Train/test split of Fashion-MNIST: ``x_*`` float32 ``(N, 1, 28, 28)`` in ``[0, 1]``,
    ``y_*`` int64 ``(N,)`` in ``0..9``; ``class_names[k]`` names label ``k``.

    Example::

        from captum_concepts.data import FashionMNISTData, load_fashion_mnist

        try:
            fmnist = load_fashion_mnist()
            assert isinstance(fmnist, FashionMNISTData) and len(fmnist.class_names) == 10
        except FileNotFoundError:
            pass  # the files are not on this machine
    """

    class_names: Tuple[str, ...] = field(default=FASHION_MNIST_CLASSES)


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzipped when ``path`` ends in ``.gz``).

    Returns:
        np.ndarray: uint8 array of the shape the header states.

    Raises:
        ValueError: the header's magic is not an unsigned-byte IDX magic, or the file's size does
            not match the shape in its header (a truncated or corrupt file), naming ``path``.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # a damaged gzip stream
        raise ValueError(f"{path}: not a readable IDX file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or not 1 <= raw[3] <= 4:
        raise ValueError(
            f"{path}: not an unsigned-byte IDX file (magic bytes {raw[:4].hex() or 'missing'}, "
            f"expected 000008 followed by the number of dimensions 01..04)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, header needs {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX header states shape {shape} ({expected} bytes with the header) "
            f"but the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _candidates(root: Optional[str]) -> List[str]:
    # An explicit folder (argument, else environment) is the only one searched: a typo in it
    # must not silently load another copy.
    base = root if root is not None else os.environ.get(ENV_VAR) or None
    if base is not None:
        return [base, os.path.join(base, "FashionMNIST", "raw")]
    return [DEBIAN_DIR]


def _find(directory: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


@validated(args={"root": AnyOf(InstanceOf((str, os.PathLike), "a path (str or os.PathLike)"), NONE)})
def load_fashion_mnist(root: Optional[Union[str, os.PathLike[str]]] = None) -> FashionMNISTData:
    """Load Fashion-MNIST from local IDX files (never downloads).

    Args:
        root (str or os.PathLike, optional): a folder holding the four IDX files (raw or
            ``.gz``), or torchvision's ``root`` (files in ``root/FashionMNIST/raw``). Default:
            ``$FASHION_MNIST_DIR`` if set (same two places), else the Debian package's folder.

    Returns:
        FashionMNISTData: the standard split, ``x_train`` ``(60000, 1, 28, 28)`` and ``x_test``
        ``(10000, 1, 28, 28)`` float32 in ``[0, 1]`` (pixel / 255), ``y_*`` int64 labels,
        ``class_names``. Files with other counts or sizes load as they are (same structure).

    Raises:
        FileNotFoundError: no searched folder holds all four files; the message lists the
            folders and how to get the files.
        ValueError: a file is not a valid IDX file, or images and labels disagree in count.

    Example::

        from captum_concepts.data import load_fashion_mnist

        try:  # root=, $FASHION_MNIST_DIR, torchvision's layout or Debian's dataset-fashion-mnist
            fmnist = load_fashion_mnist()
            print(fmnist.x_train.shape, fmnist.class_names[:2])  # (60000, 1, 28, 28), two names
        except FileNotFoundError as err:  # says where it looked and how to get the files
            print(err)
    """
    root_str = None if root is None else os.fspath(root)
    searched = _candidates(root_str)
    for directory in searched:
        paths = {key: _find(directory, stem) for key, stem in _FILES.items()}
        if all(paths.values()):
            break
    else:
        raise FileNotFoundError(
            "Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) not found in any of: "
            + ", ".join(searched)
            + ". Get them either with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or "
            "by downloading them yourself, e.g. `torchvision.datasets.FashionMNIST(ROOT, "
            "download=True)`, then pass root=ROOT or set $" + ENV_VAR + "=ROOT. "
            "captum_concepts never downloads."
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}  # type: ignore[arg-type]
    out = {}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{paths[f'x_{split}']} / {paths[f'y_{split}']}: expected images (N, H, W) and "
                f"labels (N,), got {images.shape} and {labels.shape}"
            )
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{paths[f'y_{split}']}: labels must lie in 0..9, found {int(labels.max())}")
        out[f"x_{split}"] = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        out[f"y_{split}"] = torch.from_numpy(labels.astype(np.int64))
    return FashionMNISTData(**out)
