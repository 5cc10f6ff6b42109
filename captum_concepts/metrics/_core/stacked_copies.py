"""Calling an explanation function on stacked copies of a batch, as the scores need.

The scores compare the maps of the inputs with the maps of noise inputs (and of
drifted inputs). All of them go through the explanation function together, as
*copies* of the batch stacked along dimension 0 (copy ``c`` holds rows
``c·N .. (c+1)·N - 1``), so an :class:`~captum_concepts.attr.EmbeddingAttribution`
needs one forward and one backward pass for all of them. ``max_examples_per_batch``
bounds the examples per call; as in Captum's ``sensitivity_max`` a call always holds
whole copies (at least one, i.e. ``N`` examples).

A score never changes the model (when the model is known: the model of the scores' own
``EmbeddingAttribution`` or the ``forward_func`` of an attribution object). Every call runs on
fresh copies of the model's buffers, so batch-norm running statistics, ``num_batches_tracked`` and a
user module's own buffers updated in ``forward`` stay bit-identical; and when any module runs in
training mode, every copy of the batch goes through its own call, so the real examples are never
normalised together with their noise copies (batch statistics).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..._utils.common import format_inputs, restore_form
from ..._utils.hooks import ModelGuard
from ..._utils.progress import progress_bar
from ..._utils.warn import warn_user

__all__ = [
    "SCORE_METHOD",
    "SCORE_CHANNEL_AGGREGATOR",
    "SCORE_EMBEDDING_AGGREGATOR",
    "Explainer",
    "score_attribution",
    "resolve_explainer",
    "draw_noise",
    "explain_copies",
]

# The setting under which the paper's score claims show (docs/evidence.md, "Which aggregators the
# score claims need"): the defaults of score_curve and of the score functions given a model.
SCORE_METHOD = "activation_gradient"
SCORE_CHANNEL_AGGREGATOR = "mean"
SCORE_EMBEDDING_AGGREGATOR = "mean"

Inputs = Tuple[torch.Tensor, ...]

# keyword arguments of Captum's ``attribute`` that hold one entry per example
_PER_EXAMPLE_KWARGS = ("target", "additional_forward_args", "baselines")


def _is_embedding_attribution(obj: Any) -> bool:
    from ...attr import EmbeddingAttribution

    return isinstance(obj, EmbeddingAttribution)


@dataclass
class Explainer:
    """An explanation function as the scores call it.

    Attributes:
        func: ``func(inputs, **kwargs)`` returns the maps.
        kwargs: keyword arguments for ``func``.
        model: the model whose buffers are protected and whose mode is managed (None: unknown,
            e.g. a plain function; then nothing is protected).
        eval_mode: switch ``model`` to eval mode for the call (restored afterwards).
        warn_train_mode: warn when that switch hits a model in training mode.
        show_progress: a progress bar over the calls.
        desc: the bar's label.
    """

    func: Callable
    kwargs: Dict[str, Any] = field(default_factory=dict)
    model: Optional[nn.Module] = None
    eval_mode: bool = False
    warn_train_mode: bool = False
    show_progress: bool = True
    desc: str = "score"


def score_attribution(
    model: nn.Module,
    embedding_layer: Any = None,
    layer: Any = None,
    method: Optional[str] = None,
    channel_aggregator: Any = None,
    embedding_aggregator: Any = None,
    reshape_transform: Any = None,
    **options: Any,
) -> Any:
    """The ``EmbeddingAttribution`` the scores build from a model: ``method``, ``channel_aggregator``
    and ``embedding_aggregator`` left None take the score setting (activations x gradients,
    mean / mean); ``options`` (``upsample``, ``attribute_to_layer_input``, ``strategy``) go to the
    constructor as given."""
    from ...attr import EmbeddingAttribution

    return EmbeddingAttribution(
        model,
        embedding_layer=embedding_layer,
        layer=layer,
        method=SCORE_METHOD if method is None else method,
        channel_aggregator=SCORE_CHANNEL_AGGREGATOR if channel_aggregator is None else channel_aggregator,
        embedding_aggregator=(
            SCORE_EMBEDDING_AGGREGATOR if embedding_aggregator is None else embedding_aggregator
        ),
        reshape_transform=reshape_transform,
        **options,
    )


def _model_of(obj: Any) -> Optional[nn.Module]:
    model = getattr(obj, "forward_func", None)
    return model if isinstance(model, nn.Module) else None


def resolve_explainer(
    explanation_func: Any,
    kwargs: Dict[str, Any],
    per_dim: bool,
    differentiable: bool,
    settings: Optional[Dict[str, Any]] = None,
    eval_mode: Optional[bool] = None,
    show_progress: bool = True,
    desc: str = "score",
) -> Explainer:
    """The :class:`Explainer` of a score call.

    ``explanation_func`` is a model (``nn.Module``: an ``EmbeddingAttribution`` is built from it and
    ``settings``, see :func:`score_attribution`), an attribution object (anything with an
    ``attribute`` method that is not itself callable, e.g. ``Saliency(model)`` or an
    ``EmbeddingAttribution``: its ``attribute`` method) or a callable. For an
    ``EmbeddingAttribution`` (or its bound ``attribute``) the scores set ``return_per_dim=True``
    when they need per-dimension maps, ``create_graph=True`` on the differentiable path and
    ``show_progress=False`` when the score's bar is off, unless the caller set them; one whose
    ``embedding_aggregator`` is ``"var"`` triggers a warning for the noise scores (``per_dim``
    False).

    ``settings`` are the score function's model-only arguments (``embedding_layer``, ``layer``,
    ``method``, the aggregators, ``reshape_transform``): given with anything but a model they are
    an error. ``eval_mode``: None takes the ``EmbeddingAttribution``'s own (``True`` for a model;
    the mode as it is for another attribution object) and warns when it switches a model in
    training mode; True or False is the caller's explicit choice, without a warning.
    """
    settings = dict(settings or {})
    if isinstance(explanation_func, nn.Module):
        ea = score_attribution(explanation_func, **settings, eval_mode=eval_mode is not False)
        func: Any = ea.attribute
    else:
        given = [k for k, v in settings.items() if v is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} configure the EmbeddingAttribution built from a model; pass the "
                "model (an nn.Module) as the first argument, or set "
                f"{'it' if len(given) == 1 else 'them'} on the EmbeddingAttribution you pass, "
                f"not here (got {type(explanation_func).__name__})"
            )
        func = explanation_func
        if not callable(func) and callable(getattr(func, "attribute", None)):
            func = func.attribute
        if not callable(func):
            raise TypeError(
                "explanation_func must be a model (nn.Module), a callable explanation_func(inputs, **kwargs) "
                f"or an attribution object with an attribute() method, got {type(explanation_func).__name__}"
            )
    kwargs = dict(kwargs)
    owner = getattr(func, "__self__", None)
    model = _model_of(owner)
    if _is_embedding_attribution(owner):
        if per_dim:
            kwargs.setdefault("return_per_dim", True)
        if differentiable:
            kwargs.setdefault("create_graph", True)
        if not show_progress:  # silences its own bar too; otherwise its own default applies
            kwargs.setdefault("show_progress", False)
        if eval_mode is False and owner.eval_mode:
            raise ValueError(
                "eval_mode=False, but the EmbeddingAttribution passed was built with eval_mode=True and "
                "would switch the model to eval mode anyway; build it with eval_mode=False"
            )
        if not isinstance(explanation_func, nn.Module):
            _warn_setting(owner, per_dim)
        switch = owner.eval_mode if eval_mode is None else eval_mode
    else:
        if eval_mode is not None and model is None:
            raise ValueError(
                "eval_mode needs the model, but explanation_func is a plain function; pass the model, an "
                "EmbeddingAttribution or a Captum attribution object, or leave eval_mode=None"
            )
        switch = bool(eval_mode)
    return Explainer(
        func,
        kwargs,
        model,
        eval_mode=switch,
        warn_train_mode=eval_mode is None,
        show_progress=show_progress,
        desc=desc,
    )


def _warn_setting(ea: Any, per_dim: bool) -> None:
    """Warn when an ``EmbeddingAttribution`` passed to a noise score uses the setting the
    documentation says does not show the paper's score claims."""
    agg = ea.embedding_aggregator
    if per_dim or not (isinstance(agg, str) and agg == "var"):
        return
    warn_user(
        "the EmbeddingAttribution passed uses embedding_aggregator='var' (its default, made for sparse maps "
        "to look at): with it a trained network's noise score sits at or below its noise benchmark and the "
        "drift effect reverses (docs: Evidence, 'Which aggregators the score claims need'). The paper's "
        "score claims show with method='activation_gradient', channel_aggregator='mean', "
        "embedding_aggregator='mean', the default when you pass the model itself, e.g. "
        "noise_score(model, inputs, embedding_layer=..., layer=...)"
    )


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


def _warn_train_mode(ex: Explainer) -> None:
    # called from a plain function: warn_user attributes the warning to the caller's line (from a
    # generator context manager it would name contextlib)
    if ex.model is not None and ex.eval_mode and ex.warn_train_mode and ex.model.training:
        warn_user(
            "model is in training mode; the score is computed in eval mode and the model's mode restored "
            "afterwards. In a training loop pass eval_mode=True to score in eval mode without this "
            "warning, or eval_mode=False to score in training mode (the inputs and each noise copy then "
            "run in separate passes); no buffer of the model changes either way"
        )


@contextlib.contextmanager
def _model_kept(ex: Explainer) -> Iterator[bool]:
    """The model as the scores run it: in eval mode if ``ex.eval_mode`` (restored afterwards).
    Yields whether any module then runs in training mode (the copies must then go through
    separate calls)."""
    model = ex.model
    if model is None:
        yield False
        return
    with ModelGuard(model, eval_mode=ex.eval_mode, warn_train_mode=False):
        yield any(m.training for m in model.modules())


@contextlib.contextmanager
def _fresh_buffers(model: Optional[nn.Module]) -> Iterator[None]:
    """Run the block on fresh copies of every buffer of ``model``.

    Updates made in the forward pass (batch-norm running statistics and ``num_batches_tracked``,
    a user module's buffers, in place or reassigned) land on the copies, and the model's own
    tensors are put back untouched afterwards. Writing the old values back instead would bump the
    buffers' version counters and break the backward pass of a differentiable score (autograd
    saves batch norm's running statistics). Buffers shared by several modules share one copy.
    """
    if model is None:
        yield
        return
    with ModelGuard(model, eval_mode=False, warn_train_mode=False) as guard:
        copies: Dict[int, torch.Tensor] = {}
        for module in model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is None:
                    continue
                if id(buf) not in copies:
                    copies[id(buf)] = buf.detach().clone()
                guard.set_attribute(module, name, copies[id(buf)])
        yield


def explain_copies(
    ex: Explainer,
    copies: Sequence[Inputs],
    was_tuple: bool,
    max_examples_per_batch: Optional[int],
    differentiable: bool,
) -> List[torch.Tensor]:
    """Maps of all copies: one tensor ``(n_copies, N, ...)`` per head.

    The model (when known) keeps every buffer; when a module of it runs in training mode each
    copy goes through its own call (batch statistics of the real inputs alone).
    """
    n = copies[0][0].shape[0]
    c = len(copies)
    # max_examples_per_batch (>= 1) is checked by every score's decorator
    per_call = c if max_examples_per_batch is None else min(max(max_examples_per_batch // n, 1), c)
    chunks: List[List[torch.Tensor]] = []
    _warn_train_mode(ex)
    with _model_kept(ex) as training:
        if training:
            per_call = 1
        starts = range(0, c, per_call)
        bar = progress_bar(starts, show=ex.show_progress, desc=ex.desc, total=len(starts), unit="pass")
        for start in bar:
            group = copies[start : start + per_call]
            k = len(group)
            batch = tuple(torch.cat([g[i] for g in group], dim=0) for i in range(len(group[0])))
            with _fresh_buffers(ex.model):
                out = ex.func(restore_form(batch, was_tuple), **_repeat_kwargs(ex.kwargs, n, k))
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
