"""The one check that an attribution result holds only finite numbers.

Finite inputs can still overflow inside a model or an aggregator (e.g. values
near ``1e22`` squared by a variance exceed float32's ``3.4e38``); a map with
``inf`` or ``NaN`` in it must never be returned as if it were an explanation.
"""

from __future__ import annotations

from typing import Any, List, Sequence

import torch

__all__ = ["check_finite_result", "check_finite_rows", "max_scaled"]


def _tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _finite_rows(t: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: every value of example ``n`` is finite."""
    t = t.detach()
    return torch.isfinite(t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)).all(dim=1)


def _finite_examples(inputs: Sequence[torch.Tensor]) -> Any:
    """``(N,)`` bool, examples whose floating inputs are all finite; False when no input is floating."""
    finite_in: Any = False
    for x in inputs:
        if x.dim() > 0 and (x.is_floating_point() or x.is_complex()):
            rows = _finite_rows(x)
            finite_in = rows if finite_in is False else finite_in & rows
    return finite_in


def check_finite_result(result: Any, who: str, inputs: Sequence[torch.Tensor] = ()) -> Any:
    """Return ``result`` (a tensor, or nested tuples/lists of them) if every value is finite.

    Examples whose ``inputs`` already hold NaN or ``inf`` are not checked: what a
    method does with non-finite inputs is its own documented behaviour (raise, or
    a non-finite map for that example only); this check is about finite inputs
    whose result overflowed.

    Raises:
        ValueError: naming ``who``, the dtype and the first examples (rows of the
            batch dimension) with finite inputs and a ``NaN`` or ``inf`` result.
    """
    finite_in = None
    for t in _tensors(result):
        if bool(torch.isfinite(t.detach()).all()):
            continue
        if finite_in is None:  # only once a result is not finite: the common case pays nothing
            finite_in = _finite_examples(inputs)
        bad_rows = ~_finite_rows(t)
        if finite_in is not False and finite_in.shape == bad_rows.shape:
            bad_rows &= finite_in.to(bad_rows.device)
        bad = torch.nonzero(bad_rows).flatten().tolist()
        if not bad:
            continue
        raise ValueError(
            f"{who} produced NaN or infinite values for examples {bad[:10]} although their inputs are "
            f"finite: the computation overflowed {t.dtype} (largest finite value "
            f"{torch.finfo(t.dtype).max:.3g}); rescale the inputs or use a wider dtype (e.g. float64)"
        )
    return result


def check_finite_rows(t: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``t`` (batch first) if every value is finite; else name the examples that are not.

    For values computed from the inputs before any result (an embedding, a layer's activations):
    NaN or ``inf`` there comes from the inputs (or an overflow on the way), and whatever followed
    would be meaningless, e.g. a cosine taken as 0 for a NaN pair.

    Raises:
        ValueError: ``"{what} holds NaN or infinite values for examples [...]"``.
    """
    if bool(torch.isfinite(t.detach()).all()):
        return t
    bad = torch.nonzero(~_finite_rows(t)).flatten().tolist()
    raise ValueError(
        f"{what} holds NaN or infinite values for examples {bad[:10]}: check the inputs for NaN/Inf, "
        "or rescale them if they are finite (the computation overflowed)"
    )


def max_scaled(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` divided by its largest absolute value along ``dim`` (all-zero slices unchanged).

    For scale-free quantities (cosines): the norms of the scaled vectors lie in ``[1, sqrt(n)]``,
    so large finite values (near ``1e20`` in float32) cannot overflow to ``inf / inf``.
    """
    peak = t.abs().amax(dim=dim, keepdim=True)
    return t / torch.where(peak > 0, peak, torch.ones_like(peak))
