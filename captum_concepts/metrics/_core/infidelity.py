"""Captum's ``infidelity`` on an embedding: the scalar forward function it needs, and the call.

``captum.metrics.infidelity(forward_func, perturb_func, inputs, attributions)`` compares
``<I, attributions>`` with ``f(x) - f(x - I)`` for a *scalar* ``f`` per example (Yeh et al., 2019,
"On the (In)fidelity and Sensitivity of Explanations", Definition 2.1). An embedding is a vector:
:func:`embedding_forward_func` makes the scalar, the mean (or sum) of the selected embedding
components, which is the function whose input gradient
:class:`~captum_concepts.attr.EmbeddingAttribution` maps with ``method="gradient"`` and
``embedding_aggregator="mean"`` on the inputs are (for one input channel; for ``C`` channels
``channel_aggregator="mean"`` averages them). With a non-linear aggregator (the default ``var``)
no scalar function has the maps as its gradient, and infidelity measures how far they are from
the chosen one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..._utils.common import format_inputs
from ..._utils.layers import LayerSpec, resolve_layer
from ..._utils.validation import MODEL, InstanceOf, Int, Options, validated
from ...attr._core.captum_interop import as_input_attr
from ...attr._core.embedding_attribution import EmbeddingAttribution, _select_dims
from ...attr._core.layer_readout import LayerReadout, Readouts

__all__ = ["embedding_forward_func", "embedding_infidelity"]

REDUCTIONS = ("mean", "sum")
Dims = Union[None, int, Sequence[int], torch.Tensor]


class _EmbeddingScalar:
    """``f(*inputs, *additional_forward_args) -> (N,)``: the reduced embedding components."""

    def __init__(
        self, model: nn.Module, layer: Optional[nn.Module], dims: Dims, reduction: str, eval_mode: bool
    ) -> None:
        self.model, self.layer, self.dims = model, layer, dims
        self.reduction, self.eval_mode = reduction, eval_mode

    def __call__(self, *args: Any) -> torch.Tensor:
        readout = LayerReadout(self.model, self.layer, "embedding_layer")
        with Readouts([readout], eval_mode=self.eval_mode):
            z = _select_dims(readout.read(args[:1], args[1:]), self.dims)
        return z.mean(1) if self.reduction == "mean" else z.sum(1)


@validated(args={"model": MODEL, "reduction": Options(REDUCTIONS)})
def embedding_forward_func(
    model: nn.Module,
    embedding_layer: Optional[LayerSpec] = None,
    embedding_dims: Dims = None,
    reduction: str = "mean",
    eval_mode: bool = True,
) -> Callable[..., torch.Tensor]:
    """A scalar forward function of an embedding, for ``captum.metrics.infidelity``.

    Args:
        model (nn.Module): the model, called as ``model(*inputs, *additional_forward_args)``.
        embedding_layer (nn.Module or str, optional): the layer whose output, flattened to
            ``(N, D)``, is the embedding (as in :class:`EmbeddingAttribution`). Default None:
            the model output.
        embedding_dims (int, sequence of int or 1-D tensor, optional): the components used
            (default: all ``D``), as in :meth:`EmbeddingAttribution.attribute`.
        reduction (str): ``"mean"`` (default) or ``"sum"`` of the selected components.
        eval_mode (bool): run the model in eval mode inside each call (default True); the model's
            modes, hooks and buffers are restored after every call.

    Returns:
        A callable ``f(*inputs, *additional_forward_args) -> Tensor (N,)``.

    Example::

        from captum.metrics import infidelity

        from captum_concepts.attr import EmbeddingAttribution, as_input_attr
        from captum_concepts.metrics import embedding_forward_func

        x = data.x_test[:4]
        ea = EmbeddingAttribution(model, "embedding_relu", embedding_aggregator="mean")
        maps = ea.attribute(x, embedding_dims=[0, 5])  # (4, 8, 8)
        f = embedding_forward_func(model, "embedding_relu", embedding_dims=[0, 5])

        def perturb(inputs):
            noise = 0.05 * torch.randn_like(inputs)
            return noise, inputs - noise

        infidelity(f, perturb, x, as_input_attr(maps, x))  # (4,)
    """
    layer = None if embedding_layer is None else resolve_layer(model, embedding_layer, "embedding_layer")
    return _EmbeddingScalar(model, layer, embedding_dims, reduction, eval_mode)


@validated(
    args={
        "attribution": InstanceOf((EmbeddingAttribution,), "an EmbeddingAttribution"),
        "reduction": Options(REDUCTIONS),
        "n_perturb_samples": Int(1),
    }
)
def embedding_infidelity(
    attribution: EmbeddingAttribution,
    perturb_func: Callable,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    additional_forward_args: Any = None,
    embedding_dims: Dims = None,
    reduction: str = "mean",
    n_perturb_samples: int = 10,
    max_examples_per_batch: Optional[int] = None,
    normalize: bool = False,
) -> torch.Tensor:
    """``captum.metrics.infidelity`` of an :class:`EmbeddingAttribution`'s maps ``(N, *S)``.

    Runs Captum's function with :func:`embedding_forward_func` of the attribution's model and
    embedding layer (its ``eval_mode``) and the maps broadcast over the input channels
    (:func:`~captum_concepts.attr.as_input_attr`). Pass the ``embedding_dims`` the maps were
    computed with. ``perturb_func``, ``n_perturb_samples``, ``max_examples_per_batch`` and
    ``normalize`` as in Captum.

    Returns:
        Tensor ``(N,)``: the infidelity of each example's map.

    Example::

        from captum_concepts.attr import EmbeddingAttribution
        from captum_concepts.metrics import embedding_infidelity

        x = data.x_test[:4]
        ea = EmbeddingAttribution(model, "embedding_relu", embedding_aggregator="mean")
        maps = ea.attribute(x)

        def perturb(inputs):
            noise = 0.05 * torch.randn_like(inputs)
            return noise, inputs - noise

        embedding_infidelity(ea, perturb, x, maps)  # (4,): lower is better
    """
    from captum.metrics import infidelity

    x, _ = format_inputs(inputs)
    if len(x) != 1:
        raise ValueError("inputs must be one tensor (N, C, *S): the maps are broadcast over its channels")
    ea = attribution
    forward = embedding_forward_func(
        ea.forward_func, ea.embedding_layer, embedding_dims, reduction, ea.eval_mode
    )
    return infidelity(
        forward,
        perturb_func,
        x[0],
        as_input_attr(maps, x[0]),
        additional_forward_args=additional_forward_args,
        n_perturb_samples=int(n_perturb_samples),
        max_examples_per_batch=max_examples_per_batch,
        normalize=normalize,
    )
