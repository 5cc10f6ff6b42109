"""Streaming per-concept sums of binarised layer features for :class:`SemanticVector` (private).

Gu & Tresp, §3, Equation 3: ``Σ a_i`` and ``Σ â_i`` per concept with ``a_i = 1[φ(x_i) > 0]``
and ``â_i = a_i / ||a_i||``, accumulated batch by batch (float64) and all-reduced over
``torch.distributed`` ranks.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..._utils import distributed as dist_utils

__all__ = ["_ConceptSums", "_membership"]


def _membership(labels: torch.Tensor, n_classes: Optional[int]) -> torch.Tensor:
    """Labels -> float membership ``(B, C)``: one-hot for class indices, ``> 0`` for multi-hot.

    A ``(B, 1)`` column is a column of class indices (a one-column multi-hot
    would describe a single concept, which is never what a label column means).
    """
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integer class indices or multi-hot, got dtype {labels.dtype}")
        if labels.numel() == 0:
            return torch.zeros(0, n_classes or 1)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (n_classes is not None and high >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes or 'n_classes'}), got {low}..{high}")
        width = n_classes if n_classes is not None else high + 1
        return torch.nn.functional.one_hot(labels.long().cpu(), width).float()
    if labels.dim() == 2:
        if n_classes is not None and labels.shape[1] != n_classes:
            raise ValueError(f"multi-hot labels have {labels.shape[1]} columns, n_classes={n_classes}")
        return (labels > 0).float().cpu()
    raise ValueError(
        f"labels must be (B,) class indices or (B, C) multi-hot, got shape {tuple(labels.shape)}"
    )


class _ConceptSums:
    """Running ``Σ a``, ``Σ â`` and counts per concept (float64); rows grow with new classes."""

    def __init__(self) -> None:
        self.a = self.ahat = self.counts = None
        self.shape: Optional[Tuple[int, ...]] = None

    def _grow(self, n_concepts: int, d: int, device: torch.device) -> None:
        if self.a is None:
            self.a = torch.zeros(n_concepts, d, dtype=torch.float64, device=device)
            self.ahat = torch.zeros_like(self.a)
            self.counts = torch.zeros(n_concepts, dtype=torch.float64, device=device)
        elif n_concepts > self.a.shape[0]:
            pad = n_concepts - self.a.shape[0]
            self.a = torch.nn.functional.pad(self.a, (0, 0, 0, pad))
            self.ahat = torch.nn.functional.pad(self.ahat, (0, 0, 0, pad))
            self.counts = torch.nn.functional.pad(self.counts, (0, pad))

    def add(self, feats: torch.Tensor, shape: Tuple[int, ...], member: torch.Tensor) -> None:
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(f"layer output shape changed between batches: {self.shape} then {shape}")
        # One reduction instead of an elementwise isfinite pass (a NaN/Inf makes the sum
        # non-finite; the exact check runs only then, ruling out overflow of a finite sum).
        if not bool(torch.isfinite(feats.sum())) and not bool(torch.isfinite(feats).all()):
            raise ValueError("the layer output holds NaN or infinite values (check the inputs for NaN/Inf)")
        self._grow(member.shape[1], feats.shape[1], feats.device)
        a = (feats > 0).to(torch.float32)
        inv_norm = a.sum(dim=1).clamp_min(1.0).rsqrt()  # rows without an active unit: â = 0 anyway
        w = torch.nn.functional.pad(member, (0, self.a.shape[0] - member.shape[1]))
        w = w.to(device=a.device, dtype=torch.float32).t()  # (C, B)
        # Σ a and Σ â = Σ a/||a|| per concept with one matmul: [w; w/||a||] @ a.
        both = (torch.cat([w, w * inv_norm[None]]) @ a).double()
        c = w.shape[0]
        self.a += both[:c]
        self.ahat += both[c:]
        self.counts += w.sum(dim=1).double()

    def all_reduce(self, device: Optional[torch.device]) -> None:
        """Sum over ``torch.distributed`` ranks; concepts seen on any rank exist on all."""
        mine = None if self.counts is None else (self.a.shape[0], self.a.shape[1], self.shape)
        known = [m for m in dist_utils.all_gather_objects(mine) if m is not None]
        if not known:
            return
        if len({m[2] for m in known}) > 1:
            raise ValueError(f"ranks saw different layer output shapes: {sorted({m[2] for m in known})}")
        self.shape = known[0][2]
        self._grow(max(m[0] for m in known), known[0][1], self.a.device if self.a is not None else device)
        reduce = dist_utils.all_reduce_sum
        self.a, self.ahat, self.counts = reduce(self.a), reduce(self.ahat), reduce(self.counts)
