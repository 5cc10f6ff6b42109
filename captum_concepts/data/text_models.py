"""A small text classifier over integer tokens, for tests and tutorials."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyTextTransformer"]


class TinyTextTransformer(nn.Module):
    """``nn.Embedding`` + transformer encoder + mean over tokens + linear head.

    Layout (names usable as layers; all token layers are ``(N, L, E)``, so they need
    ``reshape_transform=channels_last`` for per-token maps ``(N, L)``)::

        embedding            (N, L, E)  from integer tokens (N, L)
        encoder.layers.k     (N, L, E)
        head                 (N, n_classes), from the mean over the L tokens

    Args:
        vocab_size (int): number of token ids. Default: 100.
        embedding_dim (int): ``E``. Default: 32.
        n_heads (int): attention heads. Default: 4.
        n_layers (int): encoder layers. Default: 2.
        n_classes (int): outputs. Default: 4.

    Example::

        from captum_concepts.data import TinyTextTransformer

        net = TinyTextTransformer(vocab_size=100, n_classes=4).eval()
        tokens = torch.randint(0, 100, (2, 12))  # (N, T) token ids
        assert net(tokens).shape == (2, 4)
    """

    def __init__(
        self,
        vocab_size: int = 100,
        embedding_dim: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        n_classes: int = 4,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        layer = nn.TransformerEncoderLayer(
            embedding_dim, n_heads, 2 * embedding_dim, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(embedding_dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embedding(tokens)).mean(1))
