"""Calling an explanation function on stacked copies of a batch, as the scores need.

The scores compare the maps of the inputs with the maps of noise inputs (and of
drifted inputs). All of them go through the explanation function together, as
*copies* of the batch stacked along dimension 0 (copy ``c`` holds rows
``c·N .. (c+1)·N - 1``), so an :class:`~captum_concepts.attr.EmbeddingAttribution`
needs one forward and one backward pass for all of them. ``max_examples_per_batch``
bounds the examples per call; as in Captum's ``sensitivity_max`` a call always holds
whole copies (at least one, i.e. ``N`` examples).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..._utils.common import format_inputs, restore_form
from ..._utils.validation import check_int

__all__ = [
    "resolve_explainer",
    "draw_noise",
    "explain_copies",
]

Inputs = Tuple[torch.Tensor, ...]

# keyword arguments of Captum's ``attribute`` that hold one entry per example
_PER_EXAMPLE_KWARGS = ("target", "additional_forward_args", "baselines")


def _is_embedding_attribution(obj: Any) -> bool:
    try:
        from ...attr import EmbeddingAttribution
    except ImportError:  # pragma: no cover - only while attr is being built
        return False
    return isinstance(obj, EmbeddingAttribution)


def resolve_explainer(
    explanation_func: Any, kwargs: Dict[str, Any], per_dim: bool, differentiable: bool
) -> Tuple[Callable, Dict[str, Any]]:
    """Return ``(callable, kwargs)``.

    An attribution object (anything with an ``attribute`` method that is not itself
    callable, e.g. ``Saliency(model)`` or an ``EmbeddingAttribution``) stands for its
    ``attribute`` method. For an ``EmbeddingAttribution`` (or its bound ``attribute``)
    the scores set ``return_per_dim=True`` when they need per-dimension maps and
    ``create_graph=True`` on the differentiable path, unless the caller set them.
    """
    func = explanation_func
    if not callable(func) and callable(getattr(func, "attribute", None)):
        func = func.attribute
    if not callable(func):
        raise TypeError(
            "explanation_func must be a callable explanation_func(inputs, **kwargs) or an attribution "
            f"object with an attribute() method, got {type(explanation_func).__name__}"
        )
    kwargs = dict(kwargs)
    if _is_embedding_attribution(getattr(func, "__self__", None)):
        if per_dim:
            kwargs.setdefault("return_per_dim", True)
        if differentiable:
            kwargs.setdefault("create_graph", True)
    return func, kwargs


def _as_noise_tuple(noise: Any, inputs: Inputs, argument: str) -> Inputs:
    noise_t, _ = format_inputs(noise, argument=argument)
    if len(noise_t) != len(inputs):
        raise ValueError(f"{argument} gave {len(noise_t)} tensors, expected {len(inputs)} like inputs")
    for i, (z, x) in enumerate(zip(noise_t, inputs)):
        if z.shape != x.shape:
            raise ValueError(
                f"{argument} must have the shape of inputs: got {tuple(z.shape)} for input {i}, "
                f"expected {tuple(x.shape)}"
            )
    return tuple(z.to(device=x.device, dtype=x.dtype) for z, x in zip(noise_t, inputs))


def draw_noise(
    noise_func: Any, inputs: Inputs, was_tuple: bool, n: int, argument: str = "noise_func"
) -> List[Inputs]:
    """``n`` noise inputs shaped like ``inputs``.

    ``noise_func`` is ``None`` (standard normal ``N(0, 1)`` of the inputs' shape,
    dtype and device, a choice: the paper does not fix the noise), a callable ``noise_func(inputs) -> noise``
    (called once per draw with the inputs in the form given: tensor or tuple) or the
    noise itself (a tensor / tuple of tensors of the inputs' shape; then ``n`` must be 1).
    """
    if noise_func is None:
        return [tuple(torch.randn_like(x.detach(), dtype=_float(x)) for x in inputs) for _ in range(n)]
    if isinstance(noise_func, (torch.Tensor, tuple, list)):
        if n != 1:
            raise ValueError(
                f"{argument} is a fixed noise tensor, so only one draw is possible; got {n} draws "
                "(pass a callable noise_func for several draws)"
            )
        return [_as_noise_tuple(noise_func, inputs, argument)]
    if not callable(noise_func):
        raise TypeError(f"{argument} must be None, a callable or a tensor, got {type(noise_func).__name__}")
    form = restore_form(inputs, was_tuple)
    return [_as_noise_tuple(noise_func(form), inputs, f"{argument}(inputs)") for _ in range(n)]


def _float(x: torch.Tensor) -> torch.dtype:
    return x.dtype if torch.is_floating_point(x) else torch.get_default_dtype()


def _repeat(value: Any, n: int, copies: int) -> Any:
    if copies == 1:
        return value
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == n and value.numel() > 1:
            return torch.cat([value] * copies, dim=0)
        return value
    if isinstance(value, list) and len(value) == n:
        return value * copies
    if isinstance(value, tuple):
        return tuple(_repeat(v, n, copies) for v in value)
    return value


def _repeat_kwargs(kwargs: Dict[str, Any], n: int, copies: int) -> Dict[str, Any]:
    """Per-example keyword arguments (``target``, ``additional_forward_args``,
    ``baselines``) repeated for ``copies`` stacked copies of the batch."""
    return {k: (_repeat(v, n, copies) if k in _PER_EXAMPLE_KWARGS else v) for k, v in kwargs.items()}


def _heads(out: Any, m: int) -> List[torch.Tensor]:
    """One tensor ``(m, ...)`` per head. A list is several heads (e.g. one per layer);
    a tuple is one map spread over several input tensors, flattened and joined."""
    raw = list(out) if isinstance(out, list) else [out]
    heads = []
    for h, item in enumerate(raw):
        where = f" (entry {h} of the list)" if isinstance(out, list) else ""
        if isinstance(item, tuple):
            parts = [_check_map(t, m, where) for t in item]
            item = torch.cat([t.flatten(1) for t in parts], dim=1)
        heads.append(_check_map(item, m, where))
    return heads


def _check_map(t: Any, m: int, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"explanation_func must return tensors, got {type(t).__name__}{where}")
    if t.dim() < 2 or t.shape[0] != m:
        raise ValueError(
            f"explanation_func must return one map per example, shape ({m}, ...); got shape "
            f"{tuple(t.shape)}{where}"
        )
    if t[0].numel() == 0:
        raise ValueError(f"explanation_func returned empty maps of shape {tuple(t.shape)}{where}")
    if not torch.isfinite(t).all():
        raise ValueError(f"explanation_func returned NaN or infinite values{where}")
    return t


def explain_copies(
    func: Callable,
    kwargs: Dict[str, Any],
    copies: Sequence[Inputs],
    was_tuple: bool,
    max_examples_per_batch: Optional[int],
    differentiable: bool,
) -> List[torch.Tensor]:
    """Maps of all copies: one tensor ``(n_copies, N, ...)`` per head."""
    n = copies[0][0].shape[0]
    c = len(copies)
    if max_examples_per_batch is None:
        per_call = c
    else:
        check_int(max_examples_per_batch, "max_examples_per_batch", low=1)
        per_call = min(max(max_examples_per_batch // n, 1), c)
    chunks: List[List[torch.Tensor]] = []
    for start in range(0, c, per_call):
        group = copies[start : start + per_call]
        k = len(group)
        batch = tuple(torch.cat([g[i] for g in group], dim=0) for i in range(len(group[0])))
        out = func(restore_form(batch, was_tuple), **_repeat_kwargs(kwargs, n, k))
        heads = _heads(out, k * n)
        if differentiable and not all(h.requires_grad for h in heads):
            raise ValueError(
                "differentiable=True, but explanation_func returned maps without an autograd graph; "
                "it must build one (e.g. EmbeddingAttribution.attribute(..., create_graph=True))"
            )
        if not differentiable:
            heads = [h.detach() for h in heads]
        if chunks and [h.shape[1:] for h in heads] != [h.shape[1:] for h in chunks[-1]]:
            raise ValueError("explanation_func returned maps of different shapes for different inputs")
        chunks.append(heads)
    return [
        torch.cat([chunk[h] for chunk in chunks], dim=0).reshape(c, n, *chunks[0][h].shape[1:])
        for h in range(len(chunks[0]))
    ]
