"""scikit-learn's handwritten digits as image tensors, offline.

1,797 real 8x8 grey-level digits (values 0..16 in scikit-learn) scaled to
``[0, 1]``, shaped ``(N, 1, 8, 8)`` and optionally upscaled by an integer factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .._utils.validation import Int, Options, RealNumber, validated

__all__ = ["DigitsData", "load_digits_tensors"]


@dataclass
class DigitsData:
    """Train/test split of the digits.

    Images are float32 ``(N, 1, H, W)`` in ``[0, 1]``.

    Example::

        from captum_concepts.data import load_digits_tensors

        digits = load_digits_tensors()
        print(digits.x_train.shape, digits.y_train[:5])  # torch.Size([1437, 1, 8, 8]) tensor([...])
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


@validated(
    args={
        "upscale": Int(1),
        "test_size": RealNumber(0.0, 1.0, low_open=True, high_open=True),
        "mode": Options(("nearest", "bilinear")),
    }
)
def load_digits_tensors(
    upscale: int = 1,
    test_size: float = 0.2,
    random_state: int = 0,
    mode: str = "nearest",
) -> DigitsData:
    """Load the digits, split them (stratified, seeded) and return tensors.

    Args:
        upscale (int): integer factor; ``2`` gives 16x16 images. Default: 1 (8x8).
        test_size (float): fraction held out for testing. Default: 0.2 (360 images).
        random_state (int): seed of the split.
        mode (str): interpolation for upscaling, ``"nearest"`` or ``"bilinear"``.

    Returns:
        DigitsData: ``x_*`` of shape ``(N, 1, 8*upscale, 8*upscale)`` in ``[0, 1]``,
        ``y_*`` int64 labels ``(N,)``.

    Example::

        from captum_concepts.data import load_digits_tensors

        digits = load_digits_tensors(upscale=4)  # 32x32 images, nearest-neighbour upscaled
        assert digits.x_test.shape[1:] == (1, 32, 32) and float(digits.x_test.max()) <= 1.0
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    upscale, test_size = int(upscale), float(test_size)
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_size, random_state=random_state, stratify=labels
    )
    x = torch.from_numpy(images).unsqueeze(1)
    if upscale > 1:
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        x = F.interpolate(x, scale_factor=upscale, mode=mode, **kwargs).clamp_(0.0, 1.0)
    y = torch.from_numpy(labels)
    return DigitsData(x[idx_train], y[idx_train], x[idx_test], y[idx_test])
