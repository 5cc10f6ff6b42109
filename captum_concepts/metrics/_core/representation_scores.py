"""Representation scores of Bertolini, Clevert & Montanari (§3–4).

Functions in the style of ``captum.metrics.infidelity`` / ``sensitivity_max``: an
explanation function first, then ``inputs``, the noise, ``max_examples_per_batch``,
and ``**kwargs`` forwarded to the explanation function; one value per example.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch

from ..._utils.common import TensorOrTuple, check_batch, format_inputs
from ..._utils.layers import LayerSpec
from ..._utils.validation import NONE, AnyOf, Bool, Int, RealNumber, validated
from .normalization import minmax_normalize
from .stacked_copies import draw_noise, explain_copies, resolve_explainer

__all__ = ["noise_score", "noise_benchmark", "variance_score", "drift_score"]

NoiseSpec = Union[None, Callable[..., TensorOrTuple], torch.Tensor, Tuple[torch.Tensor, ...]]
Explanation = Union[torch.nn.Module, Callable[..., Any], Any]

# the checks of the arguments every score shares, before any forward pass
_SHARED_ARGS = {
    "eval_mode": AnyOf(Bool(), NONE),
    "show_progress": Bool(),
    "max_examples_per_batch": AnyOf(NONE, Int(1)),
}
_THRESHOLD = AnyOf(NONE, RealNumber(0.0, 1.0, high_open=True))  # of the variance score
# the arguments that only apply when explanation_func is a model (see resolve_explainer)
_MODEL_ONLY = "embedding_layer layer method channel_aggregator embedding_aggregator reshape_transform".split()


def _stack_heads(values: list) -> torch.Tensor:
    return values[0] if len(values) == 1 else torch.stack(values)


def _mae_to_reference(maps: torch.Tensor, n_ref: int) -> torch.Tensor:
    """``maps`` ``(C, N, ...)``: copies ``0..n_ref-1`` are references; the mean over the
    other copies of ``mean_pixels |Nrm(ref) - Nrm(other)|``, shape ``(n_ref, N)``."""
    nrm = minmax_normalize(maps.flatten(2), start_dim=2)
    ref, other = nrm[:n_ref], nrm[n_ref:]
    return (ref.unsqueeze(1) - other.unsqueeze(0)).abs().mean(dim=-1).mean(dim=1)


@validated(grad=True, args={**_SHARED_ARGS, "n_noise": Int(1)})
def noise_score(
    explanation_func: Explanation,
    inputs: TensorOrTuple,
    noise_func: NoiseSpec = None,
    n_noise: int = 1,
    max_examples_per_batch: Optional[int] = None,
    differentiable: bool = False,
    *,
    embedding_layer: Optional[LayerSpec] = None,
    layer: Any = None,
    method: Optional[str] = None,
    channel_aggregator: Any = None,
    embedding_aggregator: Any = None,
    reshape_transform: Any = None,
    eval_mode: Optional[bool] = None,
    show_progress: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    r"""Noise score (informativeness): how far the attributions of an input are from those of noise.

    Bertolini et al., Equation 1, with :math:`\tilde x` a noise input:

    .. math::

        \mathrm{NS}(x) = \operatorname{mean}_{\text{pixels}}
        \big|\operatorname{Nrm}(E(x)) - \operatorname{Nrm}(E(\tilde x))\big|

    ``Nrm`` rescales each example's map to ``[0, 1]`` (min–max; a constant map
    becomes all zeros **[choice]**), so ``0 <= NS <= 1``. With
    ``n_noise > 1`` the score is averaged over that many independent noise inputs.
    The inputs and all noise inputs go through ``explanation_func`` together
    (stacked along the batch dimension), so an ``EmbeddingAttribution`` computes
    them with one forward and one backward pass.

    Which maps to score: the paper's claims about the noise score (trained above random-weight
    networks in deep layers, §4.1; ranking with accuracy, §4.2; falling with drift, §4.4) show
    with ``method="activation_gradient"``, ``channel_aggregator="mean"``,
    ``embedding_aggregator="mean"``: the defaults of :func:`score_curve` and of every score
    function given the model itself (``noise_score(model, inputs, embedding_layer=...,
    layer=...)``). With ``EmbeddingAttribution``'s default ``embedding_aggregator="var"`` (sparse
    maps, §2.2) a trained network's score sits at or below its noise benchmark, so an
    ``EmbeddingAttribution`` with it triggers a ``UserWarning``. The paper does not name the
    aggregators of its score experiments.

    The model is never changed (when the scores know it: given as the model, as an
    ``EmbeddingAttribution`` or as a Captum attribution object with a model as ``forward_func``):
    every attribution call runs on fresh copies of its buffers (batch-norm running statistics and
    ``num_batches_tracked``, a module's own buffers updated in ``forward``), which stay
    bit-identical, and when a module runs in training mode (``eval_mode=False`` in a training loop)
    the inputs and each noise copy go through separate calls, so the batch statistics of the real
    inputs are theirs alone. A plain function's model is unknown and not protected.

    Args:
        explanation_func (nn.Module, callable or attribution object): the model (an
            ``nn.Module``: the maps are those of ``EmbeddingAttribution(model, embedding_layer,
            layer, method, channel_aggregator, embedding_aggregator)``, by default with
            :func:`score_curve`'s setting), or ``explanation_func(inputs,
            **kwargs)`` returning one map per example, shape ``(N, ...)`` (a tuple of
            tensors for tuple inputs counts as one map: the tensors are flattened and
            joined before normalising). An object with an ``attribute`` method, e.g.
            an :class:`~captum_concepts.attr.EmbeddingAttribution`, may be passed
            directly. A returned *list* of maps (an ``EmbeddingAttribution`` over
            several layers) gives one score per list entry. Token or channels-last
            layers need the ``EmbeddingAttribution``'s ``reshape_transform``.
        inputs (Tensor or tuple of Tensors): the meaningful inputs, batch first.
        noise_func (callable, Tensor or None, optional): ``None`` draws standard
            normal noise of the inputs' shape (**[choice]**);
            a callable ``noise_func(inputs)`` returns a noise input shaped like
            ``inputs``; a tensor (tuple) *is* the noise input (then ``n_noise`` must
            be 1). Default: None.
        n_noise (int, optional): independent noise inputs to average over. Default: 1.
        max_examples_per_batch (int, optional): upper bound on the examples per
            call of ``explanation_func``; a call holds at least the ``N`` inputs (or
            one noise copy of them). Default: None (everything in one call).
        differentiable (bool, optional): keep the autograd graph, so that the score
            can enter a training loss (``loss = task_loss - gamma * NS.mean()``).
            ``explanation_func`` must then return maps with a graph; an
            ``EmbeddingAttribution`` gets ``create_graph=True`` automatically.
            Default: False (detached result).
        embedding_layer (nn.Module, str or None, keyword only): with a model, the layer whose
            output is the embedding (None: the model output). Default None.
        layer (nn.Module, str, None or a list of them, keyword only): with a model, the source
            layer(s) (None: the inputs; a list gives one score per layer). Default None.
        method (str, keyword only): with a model, the base saliency method. Default None:
            ``"activation_gradient"``, as :func:`score_curve`.
        channel_aggregator (str or callable, keyword only): with a model, ``rho_C``. Default
            None: ``"mean"``, as :func:`score_curve`.
        embedding_aggregator (str or callable, keyword only): with a model, ``rho_D``. Default
            None: ``"mean"``, as :func:`score_curve`.
        reshape_transform (keyword only): with a model, as in
            :class:`~captum_concepts.attr.EmbeddingAttribution`. Default None.
            These six configure the ``EmbeddingAttribution`` built from a model; with an
            attribution object or a function they are an error (configure the object). For
            everything else (``upsample``, ``strategy``, ``attribute_to_layer_input``) pass a
            configured ``EmbeddingAttribution``.
        eval_mode (bool or None, keyword only): the model's mode during the score. None
            (default): an ``EmbeddingAttribution``'s own ``eval_mode`` (True for a model: eval
            mode, and a ``UserWarning`` when the model is in training mode); a Captum
            attribution object's model keeps its mode. ``True`` says "score in eval mode, I know the
            model is training": eval mode for the call, the mode restored after it, no warning
            (the way to silence it once in a training loop). ``False``: the model keeps its mode;
            in training mode the inputs and each noise copy run in separate passes. Needs a known
            model (not a plain function).
        show_progress (bool, keyword only): a progress bar over the attribution passes (and an
            ``EmbeddingAttribution``'s own bar), shown on a terminal only. Default True.
        **kwargs: forwarded to ``explanation_func`` (e.g. ``target``,
            ``additional_forward_args``, ``embedding_dims``); per-example ``target``,
            ``additional_forward_args`` and ``baselines`` are repeated for the noise copies.

    Returns:
        Tensor: ``(N,)`` scores in ``[0, 1]`` (``(L, N)`` if ``explanation_func``
        returns a list of ``L`` maps).

    Raises:
        ValueError: maps with the wrong batch size, NaN/inf maps, noise of another
            shape than ``inputs``, ``n_noise < 1``, model-only arguments with an attribution
            object or a function, ``eval_mode=False`` with an ``EmbeddingAttribution`` built with
            ``eval_mode=True``.

    Example::

        from captum_concepts.metrics import noise_score

        x = data.x_test[:16]
        ns = noise_score(model, x, embedding_layer="embedding_relu", layer="block3.pool")  # (16,)
        # 0: the attributions look like those of noise; higher: more informative
    """
    settings = {k: v for k, v in locals().items() if k in _MODEL_ONLY}
    ex = resolve_explainer(
        explanation_func, kwargs, False, differentiable, settings, eval_mode, show_progress, "noise score"
    )
    inp, was_tuple = format_inputs(inputs)
    check_batch(inp)
    copies = [inp] + draw_noise(noise_func, inp, was_tuple, n_noise)
    heads = explain_copies(ex, copies, was_tuple, max_examples_per_batch, differentiable)
    return _stack_heads([_mae_to_reference(h, 1)[0] for h in heads])


@validated(grad=True, args={**_SHARED_ARGS, "n_draws": Int(1)})
def noise_benchmark(
    explanation_func: Explanation,
    inputs: TensorOrTuple,
    noise_func: Optional[Callable[..., TensorOrTuple]] = None,
    n_draws: int = 8,
    max_examples_per_batch: Optional[int] = None,
    *,
    embedding_layer: Optional[LayerSpec] = None,
    layer: Any = None,
    method: Optional[str] = None,
    channel_aggregator: Any = None,
    embedding_aggregator: Any = None,
    reshape_transform: Any = None,
    eval_mode: Optional[bool] = None,
    show_progress: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    r"""Noise benchmark: the noise score between two independent noise inputs, the score of an
    uninformative model.

    Bertolini et al., Equation 2, for two independent noise inputs, averaged over ``n_draws``
    pairs:

    .. math::

        \mathrm{NS}_0 = \operatorname{mean}
        \big|\operatorname{Nrm}(E(\tilde x_1)) - \operatorname{Nrm}(E(\tilde x_2))\big|

    ``inputs`` only fix the shape, dtype and device of the noise (and the batch the
    per-example ``kwargs`` such as ``target`` refer to); the result is the noise
    score the model would reach if the inputs were themselves noise — the
    reference line of a score curve.

    Args:
        explanation_func: as in :func:`noise_score`.
        inputs (Tensor or tuple of Tensors): template batch ``(N, ...)``.
        noise_func (callable or None, optional): as in :func:`noise_score`, but a fixed
            tensor is not accepted (the draws must be independent). Default: None
            (standard normal).
        n_draws (int, optional): independent pairs. Default: 8.
        max_examples_per_batch (int, optional): as in :func:`noise_score`.
        **kwargs: forwarded to ``explanation_func``; the keyword-only ``embedding_layer``,
            ``layer``, ``method``, ``channel_aggregator``, ``embedding_aggregator``,
            ``reshape_transform``, ``eval_mode`` and ``show_progress`` are as in
            :func:`noise_score` (with a model: :func:`score_curve`'s setting by default).

    Returns:
        Tensor: ``(N,)`` per-slot benchmark values in ``[0, 1]``; the benchmark value
        is their mean. ``(L, N)`` for a list of ``L`` maps.

    Example::

        from captum_concepts.metrics import noise_benchmark, noise_score

        x = data.x_test[:16]
        ns = noise_score(model, x, embedding_layer="embedding_relu", layer="block3.pool")
        bench = noise_benchmark(model, x, embedding_layer="embedding_relu", layer="block3.pool")
        float(ns.mean()), float(bench.mean())  # a trained network's score lies above its benchmark
    """
    if noise_func is not None and not callable(noise_func):
        raise TypeError(
            "noise_func of noise_benchmark must be None or a callable (independent draws are needed), "
            f"got {type(noise_func).__name__}"
        )
    settings = {k: v for k, v in locals().items() if k in _MODEL_ONLY}
    ex = resolve_explainer(
        explanation_func, kwargs, False, False, settings, eval_mode, show_progress, "noise benchmark"
    )
    inp, was_tuple = format_inputs(inputs)
    check_batch(inp)
    copies = draw_noise(noise_func, inp, was_tuple, 2 * n_draws)
    heads = explain_copies(ex, copies, was_tuple, max_examples_per_batch, differentiable=False)
    return _stack_heads([_benchmark_from_maps(h) for h in heads])


def _benchmark_from_maps(maps: torch.Tensor) -> torch.Tensor:
    """``maps`` ``(2K, N, ...)`` of ``K`` noise pairs -> ``(N,)``."""
    nrm = minmax_normalize(maps.flatten(2), start_dim=2)
    return (nrm[0::2] - nrm[1::2]).abs().mean(dim=-1).mean(dim=0)


@validated(grad=True, args={**_SHARED_ARGS, "threshold": _THRESHOLD})
def variance_score(
    explanation_func: Explanation,
    inputs: TensorOrTuple,
    threshold: Optional[float] = None,
    max_examples_per_batch: Optional[int] = None,
    differentiable: bool = False,
    *,
    embedding_layer: Optional[LayerSpec] = None,
    layer: Any = None,
    method: Optional[str] = None,
    channel_aggregator: Any = None,
    reshape_transform: Any = None,
    eval_mode: Optional[bool] = None,
    show_progress: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    r"""Variance score (conciseness): how much the embedding's dimensions differ in where they look.

    Bertolini et al., Equation 3, over the channel-aggregated, per-embedding-dimension maps
    :math:`M_d` (not aggregated over :math:`d`):

    .. math::

        \mathrm{VS}(x) = \operatorname{mean}_{\text{pixels}}
        \operatorname{Var}_d\big[\operatorname{Nrm}(M_d(x))\big]

    Each map ``M_d`` of each example is min–max normalised on its own (constant →
    zeros); the population variance over ``d`` is then at most ``1/4``
    (Popoviciu), reached when every pixel is on in half the dimensions and off in
    the others. With one embedding dimension the score is 0.

    Args:
        explanation_func (nn.Module, callable or attribution object): the model (as in
            :func:`noise_score`: ``EmbeddingAttribution(model, embedding_layer, layer, method,
            channel_aggregator)`` with :func:`score_curve`'s defaults), or a function returning
            per-dimension maps of shape ``(N, D, ...)`` (e.g. ``(N, D, H, W)``). An
            :class:`~captum_concepts.attr.EmbeddingAttribution` (or its bound
            ``attribute``) may be passed directly: ``return_per_dim=True`` is then set
            for it, and its ``strategy`` (``"auto"``: forward mode where the layer has fewer
            source pixels than embedding dimensions) decides how the maps are computed. Token or
            channels-last layers need its ``reshape_transform``.
        inputs (Tensor or tuple of Tensors): inputs, batch first.
        threshold (float, optional): binarise the normalised maps first (paper §4.3):
            a pixel is 1 where ``Nrm(M_d) > threshold``, else 0. Must lie in
            ``[0, 1)``; not differentiable. Default: None (no binarisation).
        max_examples_per_batch (int, optional): as in :func:`noise_score`.
        differentiable (bool, optional): keep the autograd graph (see
            :func:`noise_score`). Default: False.
        **kwargs: forwarded to ``explanation_func``; the keyword-only ``embedding_layer``,
            ``layer``, ``method``, ``channel_aggregator``, ``reshape_transform``, ``eval_mode``
            and ``show_progress`` are as in :func:`noise_score` (``rho_D`` does not enter the
            variance score).

    Returns:
        Tensor: ``(N,)`` scores in ``[0, 1/4]`` (``(L, N)`` for a list of ``L`` maps).

    Example::

        from captum_concepts.metrics import variance_score

        vs = variance_score(model, data.x_test[:16], embedding_layer="embedding_relu", layer="block3.pool")
        assert float(vs.max()) <= 0.25  # the variance of maps in [0, 1] is at most 1/4
    """
    if threshold is not None and differentiable:
        raise ValueError(
            "threshold binarises the maps and has no gradient; use threshold=None with differentiable=True"
        )
    settings = {k: v for k, v in locals().items() if k in _MODEL_ONLY}
    ex = resolve_explainer(
        explanation_func, kwargs, True, differentiable, settings, eval_mode, show_progress, "variance score"
    )
    inp, was_tuple = format_inputs(inputs)
    check_batch(inp)
    heads = explain_copies(ex, [inp], was_tuple, max_examples_per_batch, differentiable)
    return _stack_heads([_variance_from_maps(h[0], threshold) for h in heads])


def _variance_from_maps(maps: torch.Tensor, threshold: Optional[float]) -> torch.Tensor:
    if maps.dim() < 3:
        raise ValueError(
            "variance_score needs per-dimension maps of shape (N, D, ...) such as (N, D, H, W); "
            f"explanation_func returned shape {tuple(maps.shape)}"
        )
    nrm = minmax_normalize(maps.flatten(2), start_dim=2)
    if threshold is not None:
        nrm = (nrm > threshold).to(nrm.dtype)
    # population variance over d, two-pass (torch.var over a strided dim is slow on CPU)
    centred = nrm - nrm.mean(dim=1, keepdim=True)
    return centred.square().mean(dim=1).mean(dim=-1)


def _clip_bounds(clip_range: Any, inputs: Tuple[torch.Tensor, ...]) -> list:
    if clip_range is None:
        return [None] * len(inputs)
    if isinstance(clip_range, str):
        if clip_range != "data":
            raise ValueError(f"clip_range must be 'data', None or (lo, hi), got {clip_range!r}")
        return [(x.min().item(), x.max().item()) for x in inputs]
    if (
        isinstance(clip_range, (tuple, list))
        and len(clip_range) == 2
        and all(RealNumber().holds(v) for v in clip_range)
        and clip_range[0] <= clip_range[1]
    ):
        return [(float(clip_range[0]), float(clip_range[1]))] * len(inputs)
    raise ValueError(f"clip_range must be 'data', None or (lo, hi) with lo <= hi, got {clip_range!r}")


@validated(grad=True, args={**_SHARED_ARGS, "n_noise": Int(1)})
def drift_score(
    explanation_func: Explanation,
    inputs: TensorOrTuple,
    epsilons: Union[Sequence[float], torch.Tensor],
    noise_func: NoiseSpec = None,
    n_noise: int = 1,
    drift_func: Optional[Callable[..., TensorOrTuple]] = None,
    clip_range: Union[str, None, Tuple[float, float]] = "data",
    max_examples_per_batch: Optional[int] = None,
    *,
    embedding_layer: Optional[LayerSpec] = None,
    layer: Any = None,
    method: Optional[str] = None,
    channel_aggregator: Any = None,
    embedding_aggregator: Any = None,
    reshape_transform: Any = None,
    eval_mode: Optional[bool] = None,
    show_progress: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    r"""Relative change of the noise score under dataset drift (Bertolini, Clevert & Montanari, §4.4).

    For each :math:`\varepsilon`, with a drift direction :math:`n` (standard normal by default),
    :math:`x_\varepsilon = \operatorname{clip}(x + \varepsilon n, lo, hi)` and the relative change
    of the batch-mean noise score

    .. math::

        \frac{\operatorname{mean} \mathrm{NS}(x_\varepsilon) - \operatorname{mean} \mathrm{NS}(x)}
        {\operatorname{mean} \mathrm{NS}(x)}.

    The paper reports that it
    falls as ``ε`` grows (negative Spearman correlation); that shows with mean channel and mean
    embedding aggregation (see :func:`noise_score`), the default when the model itself is passed.

    **[reading of the paper]** Clipping. §4.4 generates the drift from "shifted data samples
    (normalized in range [0, 1])" ``x + ε·n``: the range is stated for the *shifted* samples, so
    they stay in the data range. The paper does not say how; the default ``clip_range="data"``
    clips ``x + ε·n`` to the range of the inputs (the MNIST range ``[0, 1]`` for MNIST-like
    data), which leaves ``x`` unchanged wherever the shift stays in range. ``clip_range=None``
    scores the unclipped ``x + ε·n``: its inputs leave the data range, and the measured fall of
    the noise score is larger (the Evidence page shows both on the digits autoencoders).

    **[choice]** One drift direction ``n`` and the same noise inputs ``x̃`` serve
    every ``ε`` (common random numbers: the curve over ``ε`` is not blurred by
    fresh noise at each point), and all drifted batches, the clean batch and the
    noise inputs go through ``explanation_func`` together.

    Args:
        explanation_func: as in :func:`noise_score`.
        inputs (Tensor or tuple of Tensors): clean inputs, batch first.
        epsilons (sequence of float or 1-D Tensor): non-negative drift strengths.
        noise_func: the noise inputs of the noise score, as in :func:`noise_score`.
        n_noise: the number of noise inputs of the noise score, as in :func:`noise_score`.
        drift_func (callable, optional): ``drift_func(inputs)`` returns the drift
            direction ``n`` shaped like ``inputs``. Default: None (standard normal).
        clip_range ("data", None or (lo, hi), optional): clip ``x_ε`` to
            ``[lo, hi]``; ``"data"`` uses each input tensor's own min and max
            (default, see "Clipping" above); None does not clip.
        max_examples_per_batch (int, optional): as in :func:`noise_score`.
        **kwargs: forwarded to ``explanation_func``; the keyword-only ``embedding_layer``,
            ``layer``, ``method``, ``channel_aggregator``, ``embedding_aggregator``,
            ``reshape_transform``, ``eval_mode`` and ``show_progress`` are as in
            :func:`noise_score` (with a model: :func:`score_curve`'s setting by default).

    Returns:
        Tensor: ``(len(epsilons),)`` relative changes (``(L, E)`` for a list of ``L`` maps).

    Raises:
        ValueError: negative or non-finite ``epsilons``; the clean noise score is 0
            (the relative change is undefined).

    Example::

        from captum_concepts.metrics import drift_score

        x = data.x_test[:16]
        drift = drift_score(model, x, epsilons=[0.0, 0.5, 1.0], embedding_layer="embedding_relu",
                            layer="block3.pool")  # (3,): relative change of the noise score
    """
    eps = torch.as_tensor(epsilons, dtype=torch.float64).flatten()
    if eps.numel() == 0 or not torch.isfinite(eps).all() or (eps < 0).any():
        raise ValueError(f"epsilons must be a non-empty sequence of finite values >= 0, got {epsilons!r}")
    settings = {k: v for k, v in locals().items() if k in _MODEL_ONLY}
    ex = resolve_explainer(
        explanation_func, kwargs, False, False, settings, eval_mode, show_progress, "drift score"
    )
    inp, was_tuple = format_inputs(inputs)
    check_batch(inp)
    bounds = _clip_bounds(clip_range, inp)
    (direction,) = draw_noise(drift_func, inp, was_tuple, 1, argument="drift_func")
    drifted = []
    for e in eps.tolist():
        xs = []
        for x, d, b in zip(inp, direction, bounds):
            xe = x + e * d
            xs.append(xe if b is None else xe.clamp(b[0], b[1]))
        drifted.append(tuple(xs))
    noise = draw_noise(noise_func, inp, was_tuple, n_noise)
    heads = explain_copies(ex, [inp, *drifted, *noise], was_tuple, max_examples_per_batch, False)
    out = []
    for h in heads:
        ns = _mae_to_reference(h, 1 + len(drifted)).mean(dim=1)  # (1 + E,)
        if ns[0].item() <= 0 or math.isnan(ns[0].item()):
            raise ValueError("the noise score of the clean inputs is 0, so its relative change is undefined")
        out.append((ns[1:] - ns[0]) / ns[0])
    return _stack_heads(out)
