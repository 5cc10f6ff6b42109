"""One-line glue from the package's maps to Captum's own helpers.

:meth:`EmbeddingAttribution.attribute <captum_concepts.attr.EmbeddingAttribution.attribute>` returns
maps ``(N, H, W)`` (one value per position, the channels aggregated), where Captum's helpers
expect other layouts:

- ``captum.attr.LayerAttribution.interpolate`` takes a layer attribution ``(N, C, h, w)``:
  :func:`as_captum_layer_attr` adds the channel axis;
- ``captum.attr.visualization.visualize_image_attr`` takes one ``(H, W, C)`` numpy array and
  divides by a percentile of its magnitude, warning "normalize by value approximately 0" below
  ``1e-5`` (the default ``var`` maps are often ~1e-6): :func:`as_image_attr` gives ``(H, W, 1)``
  rescaled to unit max-abs, and :func:`as_captum_image` the image as ``(H, W, C)`` numpy;
- ``captum.metrics.infidelity`` takes input-shaped attributions: :func:`as_input_attr` broadcasts
  a map over the input channels (the scalar forward function it needs is
  :func:`captum_concepts.metrics.embedding_forward_func`).

Example::

    >>> maps = EmbeddingAttribution(model, "embedding", layer="layer3", upsample=None).attribute(x)
    >>> up = LayerAttribution.interpolate(as_captum_layer_attr(maps), x.shape[-2:])  # (N, 1, H, W)
    >>> visualize_image_attr(as_image_attr(maps[0]), as_captum_image(x[0]), "blended_heat_map")
"""

from __future__ import annotations

from typing import Any, List, Union

import numpy as np
import torch

from ..._utils.validation import validated

__all__ = ["as_captum_layer_attr", "as_image_attr", "as_captum_image", "as_input_attr"]

ArrayLike = Union[torch.Tensor, np.ndarray]


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if hasattr(value, "shape") else type(value).__name__


Maps = Union[torch.Tensor, List[torch.Tensor]]


@validated()
def as_captum_layer_attr(maps: Maps) -> Maps:
    """Maps ``(N, *S)`` as a Captum layer attribution ``(N, 1, *S)`` (a view, one channel).

    So ``LayerAttribution.interpolate(as_captum_layer_attr(maps), (H, W))`` upsamples them as
    Captum upsamples ``LayerGradCam``'s output. A list of maps (several source layers) gives a
    list.

    Raises:
        TypeError: ``maps`` is not a tensor (or a list of them).
        ValueError: ``maps`` has no spatial axis (fewer than 2 dimensions).

    Example::

        from captum.attr import LayerAttribution

        from captum_concepts.attr import EmbeddingAttribution, as_captum_layer_attr

        x = data.x_test[:4]
        ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.pool", upsample=None)
        maps = ea.attribute(x)  # (4, 4, 4): the layer's resolution
        up = LayerAttribution.interpolate(as_captum_layer_attr(maps), (8, 8))  # (4, 1, 8, 8)
    """
    if isinstance(maps, (list, tuple)):
        return [as_captum_layer_attr(m) for m in maps]
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a tensor (N, *S), got {type(maps).__name__}")
    if maps.dim() < 2:
        raise ValueError(f"maps must have shape (N, *S) with at least one spatial axis, got {_shape(maps)}")
    return maps.unsqueeze(1)


def _numpy(value: ArrayLike, argument: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    raise TypeError(f"{argument} must be a tensor or a numpy array, got {type(value).__name__}")


@validated()
def as_image_attr(attribution: ArrayLike) -> np.ndarray:
    """One map ``(H, W)`` (or ``(1, H, W)``) as Captum's image attribution: ``(H, W, 1)`` float64
    numpy, divided by its largest magnitude (an all-zero map stays zero; the sign is kept).

    ``visualize_image_attr(as_image_attr(maps[i]), as_captum_image(x[i]), "blended_heat_map")``
    then draws map ``i``: the rescaling keeps Captum's percentile normalisation away from its
    "normalize by value approximately 0" warning and changes nothing else (that normalisation is
    scale-invariant).

    Raises:
        ValueError: not one 2-D map (e.g. a batch ``(N, H, W)``: pick one, ``maps[i]``).

    Example::

        from captum.attr import visualization as viz

        from captum_concepts.attr import EmbeddingAttribution, as_captum_image, as_image_attr

        x = data.x_test[:1]
        maps = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.relu").attribute(x)
        fig, ax = viz.visualize_image_attr(as_image_attr(maps[0]), as_captum_image(x[0]),
                                           "blended_heat_map", sign="absolute_value", use_pyplot=False)
    """
    a = _numpy(attribution, "attribution")
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(
            f"attribution must be one map (H, W) or (1, H, W), got shape {tuple(a.shape)}; "
            "for a batch of maps pass one of them, maps[i]"
        )
    top = float(np.abs(a[np.isfinite(a)]).max()) if np.isfinite(a).any() else 0.0
    return (a / top if top > 0 else a)[..., None]


@validated()
def as_captum_image(image: ArrayLike) -> np.ndarray:
    """One image ``(C, H, W)`` (PyTorch's layout) or ``(H, W)`` as the ``(H, W, C)`` float64 numpy
    array Captum's ``visualize_image_attr`` takes as ``original_image`` (values unchanged).

    Raises:
        ValueError: not one image (e.g. a batch ``(N, C, H, W)``: pick one, ``x[i]``).

    Example::

        from captum_concepts.attr import as_captum_image

        image = as_captum_image(data.x_test[0])  # (8, 8, 1) numpy, as captum's visualize_image_attr takes
    """
    a = _numpy(image, "image")
    if a.ndim == 2:
        return a[..., None]
    if a.ndim != 3:
        raise ValueError(
            f"image must be one image (C, H, W) or (H, W), got shape {tuple(a.shape)}; "
            "for a batch pass one of them, x[i]"
        )
    return np.moveaxis(a, 0, -1)


@validated()
def as_input_attr(maps: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Maps ``(N, *S)`` broadcast over the input channels: ``inputs``' shape ``(N, C, *S)``.

    The input-shaped attribution ``captum.metrics.infidelity`` expects (every channel of a
    position gets the position's value; a view, no copy). Maps of a source layer must be
    upsampled to the input size first (``upsample="nearest"`` or ``"bilinear"``).

    Raises:
        ValueError: the maps' shape is not the inputs' without their channel axis.

    Example::

        from captum_concepts.attr import EmbeddingAttribution, as_input_attr

        x = data.x_test[:4]
        maps = EmbeddingAttribution(model, embedding_layer="embedding_relu").attribute(x)  # (4, 8, 8)
        assert as_input_attr(maps, x).shape == x.shape  # (4, 1, 8, 8), for captum.metrics.infidelity
    """
    for value, name in ((maps, "maps"), (inputs, "inputs")):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if inputs.dim() < 2 or maps.shape != inputs.shape[:1] + inputs.shape[2:]:
        raise ValueError(
            f"maps {_shape(maps)} must be the inputs' shape {_shape(inputs)} without its channel "
            "axis (N, *S); attribute to the inputs, or upsample a layer's maps to the input size"
        )
    return maps.unsqueeze(1).expand_as(inputs)
