"""The one check that an attribution result holds only finite numbers.

Finite inputs can still overflow inside a model or an aggregator (e.g. values
near ``1e22`` squared by a variance exceed float32's ``3.4e38``); a map with
``inf`` or ``NaN`` in it must never be returned as if it were an explanation.
"""

from __future__ import annotations

from typing import Any, List

import torch

__all__ = ["check_finite_result"]


def _tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def check_finite_result(result: Any, who: str) -> Any:
    """Return ``result`` (a tensor, or nested tuples/lists of them) if every value is finite.

    Raises:
        ValueError: naming ``who``, the dtype and the first examples (rows of the
            batch dimension) that hold ``NaN`` or ``inf``.
    """
    for t in _tensors(result):
        flat = t.detach()
        if bool(torch.isfinite(flat).all()):
            continue
        rows = flat.reshape(flat.shape[0], -1) if flat.dim() > 1 else flat.reshape(-1, 1)
        bad = torch.nonzero(~torch.isfinite(rows).all(dim=1)).flatten().tolist()
        raise ValueError(
            f"{who} produced NaN or infinite values for examples {bad[:10]} although the inputs are "
            f"finite: the computation overflowed {t.dtype} (largest finite value "
            f"{torch.finfo(t.dtype).max:.3g}); rescale the inputs or use a wider dtype (e.g. float64)"
        )
    return result
