"""Batches from tensors, tuples, dicts or loaders: one set of rules for every estimator.

``data`` is either one data set, split into ``batch_size`` batches:

- a tensor ``(N, ...)``: one input;
- a tuple of tensors ``(x_1, ..., x_k)``: ``k`` inputs (with labels: ``(inputs..., labels)``);
- a dict of tensors ``{name: (N, ...)}``: keyword inputs (with labels: the ``"labels"`` or
  ``"label"`` entry);

or any other iterable (``DataLoader``, list, generator) whose batches are tensors, tuples/lists
of tensors or dicts of tensors, read with the same rules. Positional inputs are passed to the
model as ``model(*inputs, *additional_forward_args, **keyword_inputs)``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .common import check_batch, format_additional_args

__all__ = ["Batch", "iter_batches", "LABEL_KEYS"]

LABEL_KEYS = ("labels", "label")


class Batch(NamedTuple):
    """One batch: positional inputs, keyword inputs and (optionally) labels."""

    inputs: Tuple[Tensor, ...]
    kwargs: Dict[str, Tensor]
    labels: Optional[Tensor] = None

    @property
    def first(self) -> Tensor:
        """The first input (positional, else the first keyword input): pixels, batch size."""
        return self.inputs[0] if self.inputs else next(iter(self.kwargs.values()))

    @property
    def size(self) -> int:
        return int(self.first.shape[0])

    def to(self, device: Optional[torch.device]) -> Batch:
        """Inputs moved to ``device`` (labels stay where they are); None: unchanged."""
        if device is None:
            return self
        return self._replace(
            inputs=tuple(t.to(device) for t in self.inputs),
            kwargs={k: v.to(device) for k, v in self.kwargs.items()},
        )

    def forward(self, model: nn.Module, additional_forward_args: Any = None) -> Any:
        """``model(*inputs, *additional_forward_args, **kwargs)``.

        A ``TypeError`` of the call for a batch of several inputs whose last one looks like labels
        (a 1-D integer tensor) gets a hint: every element of such a batch reaches the model unless
        the batches are declared labelled.
        """
        try:
            return model(*self.inputs, *format_additional_args(additional_forward_args), **self.kwargs)
        except TypeError as err:
            last = self.inputs[-1] if len(self.inputs) > 1 else None
            if self.labels is None and last is not None and last.dim() == 1 and not last.is_floating_point():
                raise TypeError(
                    f"{err} (the batch holds {len(self.inputs)} tensors and every one is passed to the "
                    "model; if the last one holds labels, pass has_labels=True to CoupledNMFConcepts "
                    "or use SemanticVector.fit_from_labels)"
                ) from err
            raise


def _tensors(items: Any, argument: str) -> None:
    for key, t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"{argument}[{key!r}] must be a torch.Tensor, got {type(t).__name__}")


def _as_batch(batch: Any, argument: str, labels: bool) -> Batch:
    """Read one batch (tensor, tuple/list or dict of tensors) and check its sizes."""
    if isinstance(batch, Batch):
        return batch
    label: Optional[Tensor] = None
    if isinstance(batch, Tensor):
        if labels:
            raise TypeError(
                f"{argument} must yield (inputs..., labels) batches or dicts with a 'labels' entry, "
                "got a single tensor"
            )
        inputs: Tuple[Tensor, ...] = (batch,)
        kwargs: Dict[str, Tensor] = {}
    elif isinstance(batch, (tuple, list)):
        _tensors(enumerate(batch), argument)
        inputs, kwargs = tuple(batch), {}
        if labels:
            if len(inputs) < 2:
                raise TypeError(
                    f"{argument} must yield (inputs..., labels) batches, got a {type(batch).__name__} "
                    f"of {len(inputs)} tensor(s)"
                )
            inputs, label = inputs[:-1], inputs[-1]
        elif not inputs:
            raise TypeError(f"{argument} yielded an empty {type(batch).__name__}; a batch needs an input")
    elif isinstance(batch, Mapping):
        _tensors(batch.items(), argument)
        inputs, kwargs = (), dict(batch)
        if labels:
            key = next((k for k in LABEL_KEYS if k in kwargs), None)
            if key is None:
                raise TypeError(
                    f"{argument} yields dict batches without a label entry; add one of {LABEL_KEYS} "
                    f"(got keys {list(kwargs)[:10]})"
                )
            label = kwargs.pop(key)
        if not kwargs:
            raise TypeError(f"{argument} yielded a dict without inputs")
    else:
        raise TypeError(
            f"{argument} must yield tensors, tuples/lists of tensors or dicts of tensors, "
            f"got {type(batch).__name__}"
        )
    out = Batch(inputs, kwargs, label)
    n = check_batch(tuple(inputs) + tuple(kwargs.values()), argument=argument)
    if label is not None and (label.dim() == 0 or label.shape[0] != n):
        got = label.shape[0] if label.dim() else "no batch dimension"
        raise ValueError(f"{got} labels for a batch of {n} inputs in {argument}")
    return out


def _split(batch: Batch, batch_size: int) -> Iterator[Batch]:
    for start in range(0, batch.size, batch_size):
        sl = slice(start, start + batch_size)
        yield Batch(
            tuple(t[sl] for t in batch.inputs),
            {k: v[sl] for k, v in batch.kwargs.items()},
            None if batch.labels is None else batch.labels[sl],
        )


def iter_batches(
    data: Any, batch_size: int, argument: str = "inputs", labels: bool = False
) -> Iterator[Batch]:
    """Yield :class:`Batch` es from one data set (split) or from an iterable of batches.

    Args:
        data: see the module docstring.
        batch_size: batch size used to split one data set (loader batches are kept as they are).
        argument: the argument name used in error messages.
        labels: the last element of a tuple (or the ``"labels"``/``"label"`` entry of a dict)
            is the labels, not an input; required in every batch.

    Raises:
        TypeError: ``data`` or one of its batches has an unsupported type, or labels are missing.
        ValueError: a batch is empty or its tensors disagree on the batch size.
    """
    if isinstance(data, (Tensor, tuple, Mapping)):  # one data set, not an iterable of batches
        if labels and isinstance(data, Tensor):
            raise TypeError(
                f"{argument} must be a tuple (inputs..., labels) of tensors, a dict with a 'labels' entry "
                "or an iterable of such batches (e.g. a DataLoader over a TensorDataset(x, y)), got a tensor"
            )
        yield from _split(_as_batch(data, argument, labels), batch_size)
        return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"{argument} must be a tensor, a tuple or dict of tensors, or an iterable of batches "
            f"(e.g. a DataLoader), got {type(data).__name__}"
        )
    for batch in data:
        yield _as_batch(batch, argument, labels)
