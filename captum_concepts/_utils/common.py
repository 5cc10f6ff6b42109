"""Input formatting and forward calls in Captum's conventions."""

from __future__ import annotations

from typing import Any, Tuple, Union

import torch
from torch import nn

__all__ = [
    "TensorOrTuple",
    "format_inputs",
    "format_additional_args",
    "restore_form",
    "run_forward",
    "check_batch",
]

TensorOrTuple = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


def format_inputs(inputs: TensorOrTuple, argument: str = "inputs") -> Tuple[Tuple[torch.Tensor, ...], bool]:
    """Return ``(tuple_of_tensors, was_tuple)``; tuple in, tuple out, as in Captum."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), False
    if isinstance(inputs, (tuple, list)) and len(inputs) > 0:
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{argument}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        return tuple(inputs), True
    raise TypeError(
        f"{argument} must be a tensor or a non-empty tuple of tensors, got {type(inputs).__name__}"
    )


def format_additional_args(additional_forward_args: Any) -> Tuple[Any, ...]:
    """Captum's rule: None -> (), a tuple stays, anything else becomes a 1-tuple."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def restore_form(values: Tuple[Any, ...], was_tuple: bool) -> Any:
    """Undo :func:`format_inputs`: a 1-tuple becomes its element unless the input was a tuple."""
    return tuple(values) if was_tuple else values[0]


def run_forward(
    model: nn.Module, inputs: Tuple[torch.Tensor, ...], additional_forward_args: Any = None
) -> Any:
    """``model(*inputs, *additional_forward_args)``."""
    return model(*inputs, *format_additional_args(additional_forward_args))


def check_batch(inputs: Tuple[torch.Tensor, ...], argument: str = "inputs") -> int:
    """Check that all tensors share a non-empty batch dimension; return it."""
    n = inputs[0].shape[0] if inputs[0].dim() > 0 else None
    if n is None or n == 0:
        raise ValueError(
            f"{argument} must have a non-empty batch dimension (N > 0), got shape {tuple(inputs[0].shape)}"
        )
    for i, t in enumerate(inputs[1:], start=1):
        if t.dim() == 0 or t.shape[0] != n:
            raise ValueError(
                f"{argument}[{i}] has batch size {t.shape[0] if t.dim() else None}, expected {n} "
                f"like {argument}[0]"
            )
    return n
