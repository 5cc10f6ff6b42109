"""Score curves: a representation score at every source layer from one attribution call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from ..._utils.common import TensorOrTuple, check_batch, format_inputs
from ..._utils.layers import LayerSpec, layer_name, uncompiled
from ..._utils.validation import Int, Options, validated
from ..._utils.warn import warn_user
from .normalization import minmax_normalize
from .representation_scores import (
    _SHARED_ARGS,
    _THRESHOLD,
    _benchmark_from_maps,
    _mae_to_reference,
    _variance_from_maps,
)
from .stacked_copies import (
    SCORE_CHANNEL_AGGREGATOR,
    SCORE_EMBEDDING_AGGREGATOR,
    SCORE_METHOD,
    draw_noise,
    explain_copies,
    resolve_explainer,
)

__all__ = ["ScoreCurve", "score_curve"]

SCORES = ("noise", "variance")


@dataclass
class ScoreCurve:
    """What :func:`score_curve` returns: one score value per source layer.

    Attributes:
        layers (list of str): the source layers' dotted names (``"input"`` for the inputs).
        values (Tensor): ``(L,)`` mean score over the examples, per layer.
        per_example (Tensor): ``(L, N)`` the score of every example.
        benchmark (Tensor or None): ``(L,)`` noise benchmark ``NS0`` per layer (noise
            score only; None for the variance score or ``benchmark=False``).
        benchmark_std (Tensor or None): ``(L,)`` standard deviation of the benchmark
            over its draws (the shaded band of :meth:`plot`).
        score (str): ``"noise"`` or ``"variance"``.
        method (str): the base attribution method.
        constant_layers (list of str): the layers whose every map is constant over its positions
            (one spatial position, e.g. a ``1x1`` avgpool, or a dense layer): their score is 0 by
            construction, not a measurement (:func:`score_curve` warns about them).

    Example::

        from captum_concepts.metrics import score_curve

        curve = score_curve(model, "embedding_relu", ["block1.relu", "block2.pool", "block3.pool"],
                            data.x_test[:32])
        curve.layers, curve.values, curve.benchmark  # names, (3,) mean scores, (3,) benchmark
    """

    layers: List[str]
    values: torch.Tensor
    per_example: torch.Tensor = field(repr=False)
    benchmark: Optional[torch.Tensor]
    benchmark_std: Optional[torch.Tensor] = field(repr=False)
    score: str
    method: str
    constant_layers: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.layers)

    @validated()
    def plot(
        self,
        label: Optional[str] = None,
        plt_fig_axis: Optional[Tuple[Any, Any]] = None,
        show_benchmark: bool = True,
        **kwargs: Any,
    ) -> Tuple[Any, Any]:
        """Plot the curve (and the benchmark, dashed with a ±1 std band); returns ``(fig, ax)``.

        Never calls ``plt.show()``. Pass ``plt_fig_axis=(fig, ax)`` of an earlier plot to
        draw several curves together (e.g. trained vs random weights, with
        ``show_benchmark=False`` for the second). ``kwargs`` go to
        :func:`captum_concepts.visualization.visualize_score_curve`.
        """
        from ...visualization import visualize_score_curve

        bench = self.benchmark if show_benchmark else None
        kwargs.setdefault("ylabel", f"{self.score} score")
        if self.score == "variance":
            kwargs.setdefault("ylim", (0.0, 0.26))
        return visualize_score_curve(
            {label or self.method: self.values},
            layer_names=self.layers,
            benchmark=bench,
            benchmark_band=self.benchmark_std if bench is not None else None,
            plt_fig_axis=plt_fig_axis,
            **kwargs,
        )


def _resolve_layer_list(
    model: nn.Module, layers: Union[Sequence[Optional[LayerSpec]], Type[nn.Module], Tuple[type, ...]]
) -> List[Optional[LayerSpec]]:
    if isinstance(layers, type) or (
        isinstance(layers, tuple) and layers and all(isinstance(c, type) for c in layers)
    ):
        found = [m for m in model.modules() if isinstance(m, layers)]
        if not found:
            raise ValueError(f"layers={layers!r}: the model has no submodule of this type")
        return found
    if isinstance(layers, (str, nn.Module)) or layers is None:
        return [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty; pass at least one layer")
    return layers


@validated(
    grad=True,
    args={
        **_SHARED_ARGS,
        "score": Options(SCORES),
        "n_noise": Int(1),
        "n_benchmark_draws": Int(1),
        "threshold": _THRESHOLD,
    },
)
def score_curve(
    model: nn.Module,
    embedding_layer: Optional[LayerSpec],
    layers: Union[Sequence[Optional[LayerSpec]], Type[nn.Module]],
    inputs: TensorOrTuple,
    score: str = "noise",
    method: str = SCORE_METHOD,
    channel_aggregator: Any = SCORE_CHANNEL_AGGREGATOR,
    embedding_aggregator: Any = SCORE_EMBEDDING_AGGREGATOR,
    upsample: Optional[str] = "nearest",
    attribute_to_layer_input: bool = False,
    noise_func: Any = None,
    n_noise: int = 1,
    benchmark: bool = True,
    n_benchmark_draws: int = 8,
    threshold: Optional[float] = None,
    additional_forward_args: Any = None,
    embedding_dims: Any = None,
    internal_batch_size: Optional[int] = None,
    max_examples_per_batch: Optional[int] = None,
    strategy: str = "auto",
    reshape_transform: Any = None,
    eval_mode: Optional[bool] = None,
    show_progress: bool = True,
) -> ScoreCurve:
    r"""A representation score at every source layer: ``l ↦ mean_x NS^(l)(x)`` (or ``VS^(l)``).

    All layers come from the same passes: one
    :class:`~captum_concepts.attr.EmbeddingAttribution` over the list of layers runs one
    forward and one (batched) backward pass from the embedding on a batch that stacks
    the inputs, their noise inputs and the benchmark's noise pairs — not ``L`` passes.
    With ``strategy="auto"`` the choice between forward and reverse mode is made per layer (see
    :class:`~captum_concepts.attr.EmbeddingAttribution`): deep layers with fewer source pixels
    than embedding dimensions run forward mode, the others share one reverse sweep.

    Args:
        model (nn.Module): the model.
        embedding_layer (nn.Module, str or None): the layer whose output is the embedding
            (None: the model output).
        layers (list of layers, or a module type): the source layers (modules, dotted
            names, None for the inputs), or a type such as ``nn.Conv2d`` for every
            submodule of that type in definition order.
        inputs (Tensor or tuple of Tensors): the meaningful inputs, batch first.
        score (str): ``"noise"`` (default) or ``"variance"``.
        method (str): the base saliency method, as in
            :class:`~captum_concepts.attr.EmbeddingAttribution`. Default ``"activation_gradient"``
            (activations × gradients), the method of Bertolini et al. §4.1 whose trained and
            random-weight curves separate in deep layers (their Fig. 3). ``"gradient"`` is not the
            default here: at a layer that feeds a linear embedding its map does not depend on the
            input, so the noise score is 0 there for every network.
        channel_aggregator (str or callable): ``rho_C``, as in
            :class:`~captum_concepts.attr.EmbeddingAttribution`. Default ``"mean"``.
        embedding_aggregator (str or callable): ``rho_D``, as in
            :class:`~captum_concepts.attr.EmbeddingAttribution`. Default ``"mean"``, unlike
            ``EmbeddingAttribution``'s ``"var"``: the paper introduces the variance aggregator for
            sparser *maps* (§2.2, Fig. 2b) and does not name the aggregators of its score curves
            (§4.1–4.4, Figs. 3, 4, 6). With mean channel and mean embedding aggregation the score
            curves show the paper's qualitative claims (trained above random-weight networks in
            deep layers, the mean noise score ranking with accuracy under layer randomisation, the
            noise score falling with drift); with ``"var"`` the maps are sparse and a trained
            network's noise score sits at or below its noise benchmark. Pass
            ``embedding_aggregator="var"`` for the scores of the maps ``EmbeddingAttribution`` draws
            by default. With ``"mean"`` (linear) and a linear ``rho_C`` the attribution needs a single
            backward pass of ``mean_d z_d`` instead of one per embedding dimension.
        upsample: as in :class:`~captum_concepts.attr.EmbeddingAttribution` (same defaults).
        attribute_to_layer_input: as in :class:`~captum_concepts.attr.EmbeddingAttribution` (same defaults).
        strategy: as in :class:`~captum_concepts.attr.EmbeddingAttribution` (same defaults).
        reshape_transform (callable, list aligned with ``layers``, or None): as in
            :class:`~captum_concepts.attr.EmbeddingAttribution`: layers whose output is not
            ``(N, C, *S)`` (ViT tokens, Swin / ConvNeXt channels-last stages) need one
            (``tokens_to_grid(prefix_tokens=1)``, ``channels_last``), else the maps, and the
            scores, are taken over the wrong axes. Default None.
            ``embedding_aggregator`` is unused by the variance score (per-dimension maps).
        noise_func: the noise inputs of the noise score, as in :func:`noise_score`; the benchmark draws its
            pairs with ``noise_func`` when it is callable, else standard normal noise.
        n_noise: the number of noise inputs of the noise score, as in :func:`noise_score`.
        benchmark (bool): also compute the noise benchmark curve (noise score only). Default True.
        n_benchmark_draws (int): noise pairs of the benchmark. Default 8.
        threshold (float, optional): binarisation of the variance score (see
            :func:`variance_score`).
        additional_forward_args: passed to ``EmbeddingAttribution.attribute``.
        embedding_dims: passed to ``EmbeddingAttribution.attribute``.
        internal_batch_size: passed to ``EmbeddingAttribution.attribute``.
        max_examples_per_batch (int, optional): bound on the examples per attribution call
            (whole copies of the batch, as in :func:`noise_score`). Default None: one call.
        eval_mode (bool or None): the model's mode during the call, as in :func:`noise_score`:
            None (default) eval mode with a ``UserWarning`` for a model in training mode, True eval
            mode without it, False the model's own mode (in training mode the inputs and each
            noise copy then run in separate passes). No buffer of the model changes either way.
        show_progress (bool): a progress bar over the attribution passes (and the
            ``EmbeddingAttribution``'s own), shown on a terminal only. Default True.

    Returns:
        ScoreCurve: per-layer values, per-example scores, the benchmark curve, ``.plot()``.

    Reading a curve. The paper's picture (§4.1, Fig. 3): a trained network's noise curve lies on
    its benchmark in the first layers and above it, and above a random-weight network's curve, in
    deep layers. On a real trained model the curve often sits *on* the benchmark or *below* the
    random network instead; before reading it as a property of the representation, rule out:

    - not enough images: the benchmark band (``benchmark_std``) and the spread of
      ``per_example`` over examples show the noise; with a few images a gap of a few hundredths
      is within it. Rerun with more images (and ``n_noise`` / ``n_benchmark_draws`` above 1).
    - a layer whose map cannot vary: a layer with one spatial position (``1x1`` avgpool, a dense
      layer) gives constant maps and a score of 0 by construction (a ``UserWarning`` names it;
      ``constant_layers`` lists it); with ``method="gradient"`` the map at the input of a linear
      embedding does not depend on the input, so every network scores 0 there; with
      ``embedding_aggregator="var"`` the maps are sparse and a trained network sits at or below
      its benchmark.
    - the claim not holding for this model: with the default setting, enough images and layers
      whose maps can vary, a curve on its benchmark means the embedding's attributions of real
      images are no more different from those of noise than two noise inputs' are, and a curve
      below the random network's means the trained network's maps are less input-specific than a
      random one's. The paper's claim is then not borne out for this model; report it as such.

    Example::

        from captum_concepts.metrics import score_curve

        layers = ["block1.relu", "block2.pool", "block3.pool"]
        curve = score_curve(model, "embedding_relu", layers, data.x_test[:32])  # one backward pass
        variance = score_curve(model, "embedding_relu", layers, data.x_test[:32], score="variance")
    """
    if threshold is not None and score != "variance":
        raise ValueError("threshold applies to score='variance' only")
    model = uncompiled(model)
    layer_list = _resolve_layer_list(model, layers)
    settings = dict(
        embedding_layer=embedding_layer, layer=layer_list, method=method,
        channel_aggregator=channel_aggregator, embedding_aggregator=embedding_aggregator,
        reshape_transform=reshape_transform, upsample=upsample,
        attribute_to_layer_input=attribute_to_layer_input, strategy=strategy,
    )  # fmt: skip
    kwargs = dict(
        additional_forward_args=additional_forward_args,
        embedding_dims=embedding_dims,
        internal_batch_size=internal_batch_size,
        return_per_dim=score == "variance",
    )
    ex = resolve_explainer(
        model, kwargs, score == "variance", False, settings, eval_mode, show_progress, f"{score} score curve"
    )
    ea = ex.func.__self__
    names = ["input" if lay is None else layer_name(model, lay) for lay in ea.layer]
    inp, was_tuple = format_inputs(inputs)
    check_batch(inp)
    copies = [inp]
    if score == "noise":
        copies += draw_noise(noise_func, inp, was_tuple, n_noise)
        if benchmark:
            copies += draw_noise(
                None if not callable(noise_func) else noise_func, inp, was_tuple, 2 * n_benchmark_draws
            )
    heads = explain_copies(ex, copies, was_tuple, max_examples_per_batch, False)
    constant = _constant_layers(names, heads, 3 if score == "variance" else 2)
    for name in constant:
        warn_user(
            f"score_curve: every map of layer {name!r} is constant over its positions (a layer with one "
            f"spatial position, such as a 1x1 avgpool, or a dense layer), so its {score} score is 0 by "
            "construction and says nothing about the representation; leave the layer out"
        )

    bench = bench_std = None
    if score == "variance":
        per_example = torch.stack([_variance_from_maps(h[0], threshold) for h in heads])
    else:
        per_example = torch.stack([_mae_to_reference(h[: 1 + n_noise], 1)[0] for h in heads])
        if benchmark:
            draws = [_pairwise(h[1 + n_noise :]) for h in heads]  # (K,) per layer
            bench = torch.stack([d.mean() for d in draws])
            bench_std = torch.stack([d.std(unbiased=False) for d in draws])
    return ScoreCurve(
        layers=names,
        values=per_example.mean(dim=1),
        per_example=per_example,
        benchmark=bench,
        benchmark_std=bench_std,
        score=score,
        method=method,
        constant_layers=constant,
    )


def _constant_layers(names: List[str], heads: List[torch.Tensor], start_dim: int) -> List[str]:
    """The layers whose maps (every copy, example and, from ``start_dim = 3``, embedding
    dimension) are all constant over positions: ``minmax_normalize`` maps exactly those to zeros."""
    return [
        name
        for name, h in zip(names, heads)
        if h.dim() <= start_dim or not minmax_normalize(h.flatten(start_dim), start_dim=start_dim).any()
    ]


def _pairwise(maps: torch.Tensor) -> torch.Tensor:
    """Benchmark value of each noise pair (mean over the batch): ``(K,)``."""
    k = maps.shape[0] // 2
    return torch.stack([_benchmark_from_maps(maps[2 * i : 2 * i + 2]).mean() for i in range(k)])
