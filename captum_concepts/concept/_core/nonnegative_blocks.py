"""Checks and shifts of coupled-NMF data blocks: one path for every fit (private).

The in-memory fit (:meth:`CoupledNMFConcepts.fit` / ``fit_matrices``), the
streamed fit (``OutOfCore``, ``fit_store``) and ``transform`` all reduce their
data to per-row minima and maxima (:func:`row_extrema` for a matrix, the
running extrema of an :class:`~.out_of_core.ActivationStore`) and pass them to
:func:`block_shifts`, which applies the one rule: every value finite, and
non-negative unless ``shift="min"``, in which case the negative row minima
become the shift subtracted from each row.

Row reductions (``amin``/``amax`` over one dimension) never copy the data,
whatever its strides; a full reduction such as ``x.min()`` of a transposed view
materialises a contiguous copy first and is avoided here.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["row_extrema", "block_shifts", "negative_message", "apply_shift", "read_shift"]


def row_extrema(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-row ``(min, max)`` of a ``(rows, N)`` block, float64 on the block's device, without a copy."""
    return x.amin(dim=1).double(), x.amax(dim=1).double()


def negative_message(name: str, is_pixel: bool, low: float) -> str:
    if is_pixel:
        fix = (
            "pass unnormalised images (e.g. in [0, 1], before mean/std normalisation), "
            "set include_pixels=False, or use shift='min'"
        )
    else:
        fix = "read a layer after a ReLU (or a pooled ReLU output), or use shift='min'"
    return f"coupled NMF needs non-negative data, but {name} has minimum {low:.4g}: {fix}"


def block_shifts(
    names: Sequence[str],
    n_pixel: int,
    row_min: Sequence[Tensor],
    row_max: Sequence[Tensor],
    shift: Optional[str],
    fitted: Optional[Sequence[Optional[Tensor]]] = None,
    reduce_min: Callable[[Tensor], Tensor] = lambda t: t,
) -> List[Optional[Tensor]]:
    """The shift ``(r_b,)`` (float64, to subtract, then clip at 0) of every block, or None.

    Args:
        names: block names for messages (pixel blocks first).
        n_pixel: how many blocks are pixel blocks.
        row_min, row_max: per-row extrema of each block (this process's examples).
        shift: the estimator's ``shift`` (None or ``"min"``).
        fitted: the shifts learnt by the fit, when preparing new data for
            ``transform``: they are reused, and negative values of a ``shift="min"``
            model's unshifted rows are clipped at 0 (a zero shift).
        reduce_min: the minimum over ``torch.distributed`` ranks in a sharded fit
            (every rank then raises the same error).

    Raises:
        ValueError: a block holds NaN or infinite values, or negative values with
            ``shift=None``.
    """
    # local flags first, reduced as ints: every rank raises the same error at the same point
    finite = torch.tensor(
        [int(bool(torch.isfinite(lo).all() & torch.isfinite(hi).all())) for lo, hi in zip(row_min, row_max)],
        dtype=torch.int32,
        device=row_min[0].device,
    )
    finite = reduce_min(finite)
    for name, ok in zip(names, finite.tolist()):
        if not ok:
            raise ValueError(f"{name} contains NaN or infinite values")
    out: List[Optional[Tensor]] = []
    for b, (name, lo) in enumerate(zip(names, row_min)):
        lo = reduce_min(lo)
        low = float(lo.min())
        if fitted is not None and fitted[b] is not None:
            out.append(fitted[b])
        elif low >= 0:
            out.append(None)
        elif shift != "min":
            raise ValueError(negative_message(name, b < n_pixel, low))
        elif fitted is not None:
            out.append(torch.zeros_like(lo))
        else:
            out.append(lo.clamp(max=0))
    return out


def apply_shift(x: Tensor, shift: Optional[Tensor], dim: int = 0, inplace: bool = False) -> Tensor:
    """``max(x - shift, 0)``: the one way shifted data are read, for fitting and after it.

    Args:
        x (Tensor): data with one feature per index of dimension ``dim``: a ``(features, N)``
            block (``dim=0``, the default) or ``(N, features)`` rows (``dim=1``); the shift is
            broadcast over every other dimension.
        shift (Tensor or None): ``(x.shape[dim],)`` values to subtract (non-positive, see
            :func:`block_shifts`), or None for an unshifted block.
        dim (int): the feature dimension of ``x``.
        inplace (bool): shift ``x`` itself (a buffer the caller owns) instead of a new tensor.

    Returns:
        Tensor: ``x`` shifted and clipped at 0 (a value below the fitted row minimum reads as 0,
        as in the fit), or ``x`` itself when ``shift`` is None.
    """
    if shift is None:
        return x
    view = [1] * x.dim()
    view[dim] = -1
    s = shift.to(device=x.device, dtype=x.dtype).reshape(view)
    return x.sub_(s).clamp_(min=0) if inplace else (x - s).clamp_(min=0)


def read_shift(fitted: Optional[Tensor], shift: Optional[str], n_features: int) -> Optional[Tensor]:
    """The shift with which new data of a fitted block are read (as :func:`block_shifts` does for
    ``transform``): the fitted shift; a zero shift (negative values clipped at 0) for an
    unshifted block of a ``shift="min"`` model; None otherwise."""
    if fitted is not None:
        return fitted
    if shift == "min":
        return torch.zeros(n_features, dtype=torch.float64)
    return None
