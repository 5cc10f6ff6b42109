"""Applying ``reshape_transform``s (pytorch-grad-cam's convention) and spotting channels-last layers.

A ``reshape_transform`` takes a layer's output ``(N, ...)`` and returns ``(N, C, *S)``; the public
ready-made ones are in :mod:`captum_concepts.attr` (``tokens_to_grid``, ``channels_last``).
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["ReshapeTransform", "check_reshape_transforms", "apply_reshape", "layout_hint"]

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


def check_reshape_transforms(
    reshape_transform: Union[None, ReshapeTransform, Sequence[Optional[ReshapeTransform]]],
    n_layers: int,
    argument: str = "reshape_transform",
) -> List[Optional[ReshapeTransform]]:
    """One transform (or None) per layer: a single callable is used for every layer."""
    if reshape_transform is None or callable(reshape_transform):
        return [reshape_transform] * n_layers
    if isinstance(reshape_transform, (list, tuple)):
        if len(reshape_transform) != n_layers:
            raise ValueError(
                f"{argument} is a list of {len(reshape_transform)} entries, expected one per layer "
                f"({n_layers})"
            )
        for i, fn in enumerate(reshape_transform):
            if fn is not None and not callable(fn):
                raise TypeError(f"{argument}[{i}] must be None or a callable, got {type(fn).__name__}")
        return list(reshape_transform)
    raise TypeError(
        f"{argument} must be None, a callable (N, ...) -> (N, C, *S) or a list of them aligned with the "
        f"layers, got {type(reshape_transform).__name__}"
    )


def apply_reshape(
    fn: Optional[ReshapeTransform], t: torch.Tensor, lead: int = 1, what: str = "the layer"
) -> torch.Tensor:
    """``fn`` on ``t`` whose first ``lead`` dimensions are batch dimensions (e.g. ``(B, N, ...)``
    gradients of ``B`` embedding dimensions): they are merged into one for the call."""
    if fn is None:
        return t
    lead_shape = t.shape[:lead]
    m = math.prod(lead_shape)
    out = fn(t.reshape(m, *t.shape[lead:]))
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != m:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"reshape_transform of {what} must return a tensor (N, C, *S) with the batch size N = {m} of "
            f"its input {tuple(t.shape[lead - 1 :])}; got {got}"
        )
    return out.reshape(*lead_shape, *out.shape[1:])


_SKIPPED = (nn.Dropout, nn.Identity)


def _last_leaf(module: nn.Module) -> Optional[nn.Module]:
    leaves = [m for m in module.modules() if not list(m.children()) and not isinstance(m, _SKIPPED)]
    return leaves[-1] if leaves else None


def _leaf_before(model: nn.Module, layer: nn.Module) -> Optional[nn.Module]:
    inside = {id(m) for m in layer.modules()}
    previous = None
    for m in model.modules():
        if m is layer:
            return previous
        if not list(m.children()) and not isinstance(m, _SKIPPED) and id(m) not in inside:
            previous = m
    return None


def _is_channels_last_module(m: nn.Module, shape: Tuple[int, ...]) -> bool:
    """True when ``m`` (just before, or at the end of, a layer whose output has ``shape``) is known to
    produce a channels-last tensor of that shape."""
    if len(shape) < 3:
        return False
    last = shape[-1]
    if isinstance(m, nn.Embedding):
        return m.embedding_dim == last
    if isinstance(m, nn.LayerNorm):
        # ConvNeXt's LayerNorm2d normalises dim 1: its normalized_shape matches shape[1], not shape[-1]
        return tuple(m.normalized_shape) == (last,) and shape[1] != last
    if isinstance(m, nn.Linear):
        return m.out_features == last and shape[1] != last
    if type(m).__name__ == "Permute":  # torchvision.ops.misc.Permute, e.g. [0, 2, 3, 1]
        dims = list(getattr(m, "dims", []))
        return len(dims) == len(shape) and dims[1] != 1 and dims[-1] == 1
    return False


def layout_hint(model: nn.Module, layer: nn.Module, shape: Tuple[int, ...]) -> Optional[str]:
    """A warning text when ``layer``'s output (of ``shape``) is recognisably not ``(N, C, *S)``."""
    candidates = [layer, _last_leaf(layer), _leaf_before(model, layer)]
    if not any(m is not None and _is_channels_last_module(m, shape) for m in candidates):
        return None
    if len(shape) == 3 and isinstance(layer, nn.Embedding):
        fix = "pass reshape_transform=channels_last for one value per token, maps (N, L)"
    elif len(shape) == 3:
        fix = (
            "pass reshape_transform=tokens_to_grid(prefix_tokens=k) for vision-transformer tokens "
            "(k = 1 for ViT's class token) or reshape_transform=channels_last for one value per token"
        )
    else:
        fix = "pass reshape_transform=channels_last"
    return (
        f"the output {tuple(shape)} looks channels-last (tokens or (N, H, W, C)), but it is read as "
        f"(N, C, *S) with C = {shape[1]}; {fix} (captum_concepts.attr)"
    )
