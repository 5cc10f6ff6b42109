"""One map over one image in one call, like pytorch-grad-cam's ``show_cam_on_image(img, mask)``."""

from __future__ import annotations

from typing import Any, Optional, Union

import matplotlib
import numpy as np
from matplotlib.axes import Axes

from .._utils.validation import RealNumber, validated
from ._common import (
    MAP_ARGS,
    ArrayLike,
    check_ndim,
    clear_ticks,
    image_for_display,
    scale_map,
    sign_limits,
    to_numpy,
)

__all__ = ["overlay_attribution"]


@validated(args={**MAP_ARGS, "alpha": RealNumber(0, 1)})
def overlay_attribution(
    attribution: ArrayLike,
    image: ArrayLike,
    sign: str = "absolute_value",
    cmap: Union[str, Any, None] = None,
    alpha: float = 0.5,
    outlier_perc: float = 2.0,
    ax: Optional[Axes] = None,
) -> np.ndarray:
    """Blend one attribution map over its image: an ``(H, W, 3)`` RGB array in ``[0, 1]``.

    The map is scaled as in Captum's ``visualize_image_attr`` (the chosen ``sign``, divided by
    its ``100 - outlier_perc`` percentile, clipped), coloured by ``cmap`` and mixed with the image
    (min-max scaled to ``[0, 1]``, grey images repeated over three channels):
    ``(1 - alpha) * image + alpha * colours`` — the blend of pytorch-grad-cam's
    ``show_cam_on_image(img, mask, image_weight=1 - alpha)``, with the map first as in every
    visualization function here. Any scale works: a ``var`` map of ~1e-6 is drawn as one of ~1.

    Args:
        attribution: one map ``(H, W)`` (or ``(1, H, W)``), e.g. ``maps[i]`` of
            :meth:`EmbeddingAttribution.attribute <captum_concepts.attr.EmbeddingAttribution.attribute>`.
        image: its image, ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` with ``C`` in ``(1, 3)``, of
            the map's size (upsample a layer's map first: ``upsample="bilinear"``).
        sign: ``"absolute_value"`` (default, Captum's), ``"positive"``, ``"negative"`` or ``"all"``.
        cmap: a Matplotlib colour map (name or object). Default: ``"jet"`` (grad-cam's) for the
            one-signed choices, ``"bwr"`` (white at 0) for ``sign="all"``.
        alpha: the map's weight in ``[0, 1]`` (0: the image alone, 1: the map alone).
        outlier_perc: the share of the largest magnitudes clipped, as in Captum.
        ax: an ``Axes`` to draw the result on (``imshow``, ticks removed); None: only return it.

    Returns:
        ``np.ndarray`` ``(H, W, 3)``, float64 in ``[0, 1]``
        (``plt.imsave(path, overlay_attribution(m, x))`` saves it).

    Example::

        import matplotlib.pyplot as plt

        from captum_concepts.attr import EmbeddingAttribution
        from captum_concepts.visualization import overlay_attribution

        x = data.x_test[:4]
        maps = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.relu").attribute(x)
        rgb = overlay_attribution(maps[0], x[0])  # (8, 8, 3) array in [0, 1]
        overlay_attribution(maps[0], x[0], ax=plt.gca())  # drawn on an axis
    """
    heat = to_numpy(attribution, "attribution")
    if heat.ndim == 3 and heat.shape[0] == 1:
        heat = heat[0]
    check_ndim(heat, (2,), "attribution", "(H, W) (one map: maps[i])")
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    shown = image_for_display(image, "image")
    if shown.shape[:2] != heat.shape:
        raise ValueError(
            f"attribution {tuple(heat.shape)} and image {tuple(shown.shape[:2])} must have the same "
            "(H, W); upsample the map to the image size (upsample='bilinear', or "
            "LayerAttribution.interpolate)"
        )
    rgb = shown if shown.ndim == 3 else np.repeat(shown[..., None], 3, axis=-1)
    low, high = sign_limits(sign)
    scaled = (scale_map(heat, sign, outlier_perc) - low) / (high - low)
    if cmap is None:
        cmap = "bwr" if sign == "all" else "jet"
    colours = matplotlib.colormaps.get_cmap(cmap)(np.nan_to_num(scaled))[..., :3]
    out = np.clip((1 - alpha) * rgb + alpha * colours, 0.0, 1.0)
    if ax is not None:
        ax.imshow(out, interpolation="nearest")
        clear_ticks(ax)
    return out
