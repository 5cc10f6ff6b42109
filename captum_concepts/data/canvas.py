"""Two digits on one canvas: images, both labels and both bounding boxes.

Ground truth for the (generalised) pointing game: a saliency map for class
``labels[i, k]`` should point inside ``boxes[i, k]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .._utils.validation import Int, Options, check_int, validated
from .digits import load_digits_tensors

__all__ = ["TwoDigitCanvas", "make_two_digit_canvas"]


@dataclass
class TwoDigitCanvas:
    """Output of :func:`make_two_digit_canvas`.

    Attributes:
        images: float32 ``(N, 1, H, W)`` in ``[0, 1]``.
        labels: int64 ``(N, 2)``, two different digit classes per image.
        boxes: int64 ``(N, 2, 4)``, ``(x_min, y_min, x_max, y_max)`` per digit with
            exclusive maxima (``image[..., y_min:y_max, x_min:x_max]`` is the
            digit's tight box: the rows and columns where the digit is non-zero).
        multi_hot: float32 ``(N, n_classes)`` targets for multi-label training.

    Example::

        from captum_concepts.data import make_two_digit_canvas

        canvas = make_two_digit_canvas(4, canvas_size=24)
        canvas.images.shape  # (4, 1, 24, 24)
        canvas.labels[0]  # the two digits of the first canvas
        canvas.boxes.shape  # (4, 2, 4): a box per digit
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    multi_hot: torch.Tensor

    @validated()
    def box_masks(self) -> torch.Tensor:
        """Boolean masks ``(N, 2, H, W)``, True inside each digit's box."""
        n, _, h, w = self.images.shape
        ys = torch.arange(h).view(1, 1, h, 1)
        xs = torch.arange(w).view(1, 1, 1, w)
        b = self.boxes
        return (
            (xs >= b[..., 0, None, None])
            & (xs < b[..., 2, None, None])
            & (ys >= b[..., 1, None, None])
            & (ys < b[..., 3, None, None])
        )


@validated(args={"n": Int(1), "split": Options(("train", "test"))})
def make_two_digit_canvas(
    n: int,
    canvas_size: Union[int, Tuple[int, int]] = 24,
    split: str = "train",
    random_state: Optional[int] = 0,
    n_classes: int = 10,
) -> TwoDigitCanvas:
    """Place two digits of different classes at random, non-overlapping positions.

    Digits come from the ``split`` part ("train" or "test") of
    :func:`load_digits_tensors`, so train and test canvases never share a digit image.

    Args:
        n (int): number of canvases.
        canvas_size (int or (int, int)): height and width (at least 8x16 or 16x8).
        split (str): "train" or "test".
        random_state (int): seed; same seed, same canvases.
        n_classes (int): length of ``multi_hot``.

    Example::

        from captum_concepts.data import make_two_digit_canvas

        canvas = make_two_digit_canvas(8, canvas_size=24, split="test", random_state=0)
        assert canvas.multi_hot.sum(1).le(2).all()  # at most two classes per canvas
    """
    n = int(n)
    if isinstance(canvas_size, Integral):
        canvas_size = (canvas_size, canvas_size)
    h, w = (check_int(v, "canvas_size") for v in canvas_size)
    if not (h >= 8 and w >= 16) and not (h >= 16 and w >= 8):
        raise ValueError(f"canvas_size must hold two 8x8 digits side by side, got {(h, w)}")
    data = load_digits_tensors()
    x = data.x_train if split == "train" else data.x_test
    y = data.y_train if split == "train" else data.y_test
    rng = np.random.default_rng(random_state)
    images = torch.zeros(n, 1, h, w)
    labels = torch.zeros(n, 2, dtype=torch.int64)
    boxes = torch.zeros(n, 2, 4, dtype=torch.int64)
    for i in range(n):
        first = int(rng.integers(len(y)))
        candidates = np.flatnonzero(y.numpy() != y[first].item())
        second = int(candidates[rng.integers(len(candidates))])
        while True:
            (r1, c1), (r2, c2) = [(int(rng.integers(h - 7)), int(rng.integers(w - 7))) for _ in range(2)]
            if abs(r1 - r2) >= 8 or abs(c1 - c2) >= 8:
                break
        for k, (idx, r, c) in enumerate(((first, r1, c1), (second, r2, c2))):
            digit = x[idx, 0]
            images[i, 0, r : r + 8, c : c + 8] = digit
            rows = torch.nonzero(digit.sum(dim=1) > 0).flatten()
            cols = torch.nonzero(digit.sum(dim=0) > 0).flatten()
            boxes[i, k] = torch.tensor(
                [
                    c + cols.min().item(),
                    r + rows.min().item(),
                    c + cols.max().item() + 1,
                    r + rows.max().item() + 1,
                ]
            )
            labels[i, k] = y[idx]
    multi_hot = torch.zeros(n, n_classes)
    multi_hot.scatter_(1, labels, 1.0)
    return TwoDigitCanvas(images, labels, boxes, multi_hot)
