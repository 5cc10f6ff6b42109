"""Layer layouts: bring a layer's output to ``(N, C, *S)`` (pytorch-grad-cam's ``reshape_transform``).

Every class that reads a layer's output spatially (``EmbeddingAttribution``, the score curves,
``CoupledNMFConcepts(pool=...)``) takes its channels from dimension 1 and its spatial positions
from the dimensions after it. Layers of other layouts -- the tokens of a vision transformer
``(N, 1 + T, C)``, the channels-last stages of Swin ``(N, H, W, C)``, a text model's token
embeddings ``(N, L, E)`` -- need a ``reshape_transform``: a callable that takes the layer's output
``(N, ...)`` and returns ``(N, C, *S)``, the convention of pytorch-grad-cam (Gildenblat et al.),
so that transforms written for it work unchanged. It is applied to the activations and to the
gradients alike (gradients are taken w.r.t. the raw layer output, then transformed).

:func:`tokens_to_grid` and :func:`channels_last` cover the common cases; :func:`layout_hint`
(in ``captum_concepts._utils.layout``) recognises layers whose output is channels-last, for a
warning.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from ..._utils.layout import ReshapeTransform

__all__ = ["ReshapeTransform", "tokens_to_grid", "channels_last"]


class tokens_to_grid:  # noqa: N801 - used like a function, as pytorch-grad-cam's transforms
    """A ``reshape_transform`` for token layers: ``(N, k + T, C)`` -> ``(N, C, h, w)``.

    Drops the first ``prefix_tokens`` tokens (``k``; ViT's class token: 1, DeiT's class and
    distillation tokens: 2, a ViT with registers: ``1 + registers``) and lays the ``T`` remaining
    patch tokens out on their ``h x w`` grid in row-major order, as torchvision's ViT creates them
    (``conv_proj`` then ``flatten(2).transpose(1, 2)``).

    Args:
        prefix_tokens (int): tokens before the patch tokens. Default: 1.
        grid_size (int or (int, int), optional): ``h`` (square) or ``(h, w)``. Default None:
            inferred as ``h = w = sqrt(T)``; a ``T`` that is not a square raises ``ValueError``
            asking for ``grid_size``.

    Example::

        >>> ea = EmbeddingAttribution(vit, embedding_layer="encoder.ln",
        ...                           layer="encoder.layers.encoder_layer_5",
        ...                           reshape_transform=tokens_to_grid(prefix_tokens=1))
        >>> maps = ea.attribute(images)  # (N, H0, W0): the 14x14 patch grid upsampled
    """

    def __init__(self, prefix_tokens: int = 1, grid_size: Union[None, int, Sequence[int]] = None) -> None:
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
            raise ValueError(f"prefix_tokens must be a non-negative int, got {prefix_tokens!r}")
        if grid_size is not None:
            grid = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
            if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
                raise ValueError(
                    f"grid_size must be a positive int or a pair (h, w) of them, got {grid_size!r}"
                )
            grid_size = grid
        self.prefix_tokens = prefix_tokens
        self.grid_size: Optional[Tuple[int, int]] = grid_size

    def __repr__(self) -> str:
        return f"tokens_to_grid(prefix_tokens={self.prefix_tokens}, grid_size={self.grid_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, tokens_to_grid) and (
            (self.prefix_tokens, self.grid_size) == (other.prefix_tokens, other.grid_size)
        )

    def __hash__(self) -> int:
        return hash((tokens_to_grid, self.prefix_tokens, self.grid_size))

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 3:
            raise ValueError(
                f"tokens_to_grid expects token layer outputs (N, {self.prefix_tokens} + T, C), got shape "
                f"{tuple(t.shape)}"
            )
        n_tokens = t.shape[1] - self.prefix_tokens
        if n_tokens < 1:
            raise ValueError(
                f"tokens_to_grid(prefix_tokens={self.prefix_tokens}) leaves no patch tokens in an output of "
                f"shape {tuple(t.shape)}"
            )
        if self.grid_size is None:
            h = math.isqrt(n_tokens)
            if h * h != n_tokens:
                raise ValueError(
                    f"tokens_to_grid: {n_tokens} patch tokens (shape {tuple(t.shape)} minus "
                    f"{self.prefix_tokens} prefix tokens) do not form a square grid; pass "
                    "grid_size=(h, w) or the right prefix_tokens"
                )
            h = w = h
        else:
            h, w = self.grid_size
            if h * w != n_tokens:
                raise ValueError(
                    f"tokens_to_grid: grid_size={self.grid_size} holds {h * w} tokens, the layer output "
                    f"{tuple(t.shape)} has {n_tokens} after {self.prefix_tokens} prefix tokens"
                )
        patches = t[:, self.prefix_tokens :]
        return patches.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A ``reshape_transform`` for channels-last layers: ``(N, *S, C)`` -> ``(N, C, *S)``.

    ``(N, H, W, C)`` -> ``(N, C, H, W)`` (Swin stages, ConvNeXt's inner ``LayerNorm`` /
    ``Linear``) and ``(N, L, C)`` -> ``(N, C, L)`` (a text model's token embeddings or encoder
    outputs: the maps are then one value per token, ``(N, L)``).
    """
    if not isinstance(t, torch.Tensor) or t.dim() < 3:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(
            f"channels_last expects a channels-last layer output (N, *S, C) with at least one spatial "
            f"dimension, got {shape}"
        )
    return t.movedim(-1, 1)
