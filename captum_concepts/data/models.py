"""A small CNN for the digits, shaped like the models our users explain."""

from __future__ import annotations

from collections import OrderedDict
from typing import Tuple, Union

import torch
from torch import nn

__all__ = ["DigitsCNN"]


class DigitsCNN(nn.Module):
    """Conv-ReLU-pool blocks, a named embedding layer and a linear classifier head.

    Layout (names usable as layers everywhere in captum_concepts)::

        block1.conv  -> block1.relu                     (N, w,   H,   W)
        block2.conv  -> block2.relu -> block2.pool      (N, 2w,  H/2, W/2)
        block3.conv  -> block3.relu -> block3.pool      (N, 4w,  H/4, W/4)
        flatten -> embedding (Linear) -> embedding_relu (N, embedding_dim)
        classifier (Linear)                             (N, n_classes)

    Every ReLU is its own ``nn.ReLU`` module (not reused), so Captum's
    ``GuidedBackprop`` and our semantic variants see each of them.

    Args:
        n_classes (int): outputs of the head. Default: 10.
        in_channels (int): image channels. Default: 1.
        image_size (int or (int, int)): input height and width; each must be a
            multiple of 4. Default: 8.
        width (int): channels of the first block. Default: 16.
        embedding_dim (int): size of the embedding layer. Default: 32.

    Example::

        from captum_concepts.data import DigitsCNN

        net = DigitsCNN(image_size=8).eval()
        logits = net(torch.rand(4, 1, 8, 8))  # (4, 10)
        print([name for name, _ in net.named_modules() if name][:4])  # layer names to pass by string
    """

    def __init__(
        self,
        n_classes: int = 10,
        in_channels: int = 1,
        image_size: Union[int, Tuple[int, int]] = 8,
        width: int = 16,
        embedding_dim: int = 32,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if h % 4 or w % 4:
            raise ValueError(f"image_size must be a multiple of 4 in each dimension, got {(h, w)}")
        self.image_size = (h, w)
        self.block1 = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(in_channels, width, 3, padding=1), relu=nn.ReLU())
        )
        self.block2 = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(width, 2 * width, 3, padding=1),
                relu=nn.ReLU(),
                pool=nn.MaxPool2d(2),
            )
        )
        self.block3 = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(2 * width, 4 * width, 3, padding=1),
                relu=nn.ReLU(),
                pool=nn.MaxPool2d(2),
            )
        )
        self.flatten = nn.Flatten()
        self.embedding = nn.Linear(4 * width * (h // 4) * (w // 4), embedding_dim)
        self.embedding_relu = nn.ReLU()
        self.classifier = nn.Linear(embedding_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding ``(N, embedding_dim)`` (output of ``embedding_relu``)."""
        x = self.block3(self.block2(self.block1(x)))
        return self.embedding_relu(self.embedding(self.flatten(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
