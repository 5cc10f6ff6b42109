"""What scikit-learn users pass: numpy arrays, lists of labels, class names (private).

Estimators read tensors (:mod:`.batches`); these helpers turn the data set forms a scikit-learn
user has at hand into them before any forward pass:

- a numpy array of inputs becomes a tensor; a floating one takes PyTorch's default floating
  dtype (float32 unless changed), the dtype of models, since numpy's default float64 fails in a
  float32 model's first layer;
- labels given as a numpy array or a list of ints become an integer tensor; labels given as
  strings (class names, as scikit-learn's classifiers take them) become class indices, the
  names sorted as ``numpy.unique`` sorts them (scikit-learn's ``classes_`` order) unless
  ``concept_names`` gives the order;
- ``[x, y]`` (a list) where ``(x, y)`` (a tuple) is meant gets "pass a tuple": a list is read as
  an iterable of batches.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["as_tensor", "as_inputs", "labelled_data", "check_concept_names"]


def as_tensor(value: Any) -> Any:
    """A numpy array as a tensor (floating ones in the default dtype); anything else unchanged."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t.to(torch.get_default_dtype()) if t.is_floating_point() else t
    return value


def as_inputs(data: Any) -> Any:
    """``data`` with numpy arrays (the data set, or the items of a tuple / the values of a dict)
    turned into tensors; iterables of batches are left as they are."""
    if isinstance(data, np.ndarray):
        return as_tensor(data)
    if isinstance(data, tuple):
        return tuple(as_tensor(v) for v in data)
    if isinstance(data, dict):
        return {k: as_tensor(v) for k, v in data.items()}
    return data


def check_concept_names(names: Any, argument: str = "concept_names") -> Optional[List[Any]]:
    """None, or a list of distinct ``str`` / ``int`` names (numpy scalars accepted)."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, (Sequence, np.ndarray)):
        raise TypeError(f"{argument} must be a list of class names (str or int), got {type(names).__name__}")
    out = [n.item() if isinstance(n, np.generic) else n for n in names]
    bad = [n for n in out if isinstance(n, bool) or not isinstance(n, (str, int))]
    if bad:
        raise TypeError(f"{argument} must hold str or int names, got {bad[:5]!r}")
    if len(set(out)) != len(out) or not out:
        raise ValueError(f"{argument} must hold distinct names, at least one, got {out[:20]!r}")
    return out


def _string_labels(labels: Any) -> bool:
    if isinstance(labels, np.ndarray):
        return labels.dtype.kind in "USO"
    return isinstance(labels, (list, tuple)) and len(labels) > 0 and all(isinstance(v, str) for v in labels)


def labelled_data(
    data: Any, concept_names: Optional[List[Any]], argument: str = "data"
) -> Tuple[Any, Optional[List[Any]]]:
    """``(data, names)``: a labelled data set ``(inputs..., labels)`` with numpy inputs and
    numpy / list / string labels turned into tensors, and the class names when the labels are
    strings (else ``concept_names``, possibly None). Loaders are left as they are."""
    arrays = isinstance(data, list) and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data)
    if arrays and len(data) >= 2:
        raise TypeError(
            f"{argument} is a list of {len(data)} arrays; pass a tuple (inputs..., labels), e.g. "
            "fit_from_labels((x, y)): a list is read as an iterable of batches"
        )
    if not isinstance(data, tuple) or len(data) < 2:
        return as_inputs(data), concept_names
    *inputs, labels = data
    inputs = [as_tensor(v) for v in inputs]
    if _string_labels(labels):
        values = [str(v) for v in np.asarray(labels, dtype=object).ravel()]
        names = concept_names if concept_names is not None else sorted(set(values))
        position = {str(n): i for i, n in enumerate(names)}
        unknown = sorted({v for v in values if v not in position})
        if unknown:
            raise ValueError(f"labels {unknown[:10]} are not in concept_names {list(names)[:20]}")
        return tuple(inputs) + (torch.tensor([position[v] for v in values], dtype=torch.long),), names
    if isinstance(labels, (list, np.ndarray)):
        labels = torch.as_tensor(np.asarray(labels))
    return tuple(inputs) + (labels,), concept_names
