"""Per-example min–max normalisation of attribution maps (``Nrm`` in Bertolini et al., §3.1, Equation 1)."""

from __future__ import annotations

import torch

__all__ = ["minmax_normalize"]


def minmax_normalize(maps: torch.Tensor, start_dim: int = 1) -> torch.Tensor:
    """Rescale every map to ``[0, 1]``: ``(m - min m) / (max m - min m)``.

    A "map" is the block of values from dimension ``start_dim`` on; every index
    before it (the batch, and e.g. the embedding dimension of per-dimension maps)
    selects one map, normalised on its own.

    A constant map has no range to rescale: it becomes all zeros **[choice]**
    and no division by zero happens. A map counts as constant when its
    range is at most ``8 · eps · max|m|`` (floating-point noise around a constant
    is not blown up to the full ``[0, 1]``). The result is differentiable
    w.r.t. ``maps`` (the constant branch has zero gradient).

    Args:
        maps (Tensor): at least ``start_dim + 1`` dimensions, floating point.
        start_dim (int): first dimension that belongs to a map. Default: 1.

    Returns:
        Tensor: same shape as ``maps``, values in ``[0, 1]``.
    """
    if not torch.is_floating_point(maps):
        maps = maps.float()
    if maps.dim() <= start_dim:
        raise ValueError(f"maps must have more than start_dim={start_dim} dimensions, got {maps.dim()}")
    flat = maps.flatten(start_dim)
    lo = flat.amin(dim=-1, keepdim=True)
    hi = flat.amax(dim=-1, keepdim=True)
    rng = hi - lo
    scale = torch.maximum(lo.abs(), hi.abs())
    constant = rng <= 8 * torch.finfo(flat.dtype).eps * scale
    # dividing by 1 on the constant branch keeps it finite: torch.where then back-propagates no NaN
    safe = torch.where(constant, torch.ones_like(rng), rng)
    out = torch.where(constant, torch.zeros_like(flat), (flat - lo) / safe)
    return out.reshape(maps.shape)
