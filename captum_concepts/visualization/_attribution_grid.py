"""Grids of attribution maps: any rows x columns, and the embedding-attribution grid (aggregator x layer).

The latter as in Figure 2 of Bertolini et al. (2023).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .._utils.validation import Options, validated
from ._common import (
    MAP_ARGS,
    ArrayLike,
    call_forms,
    check_ndim,
    clear_ticks,
    draw_map,
    finish,
    image_for_display,
    image_panel,
    labels_or_default,
    prepare_figure,
    to_numpy,
)

_METHODS = ("heat_map", "blended_heat_map")


@call_forms(renamed={"row_labels": "labels"})
@validated(args={**MAP_ARGS, "method": Options(_METHODS)})
def visualize_attribution_grid(
    attributions: ArrayLike,
    original_images: Optional[ArrayLike] = None,
    method: str = "heat_map",
    sign: str = "all",
    labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
    boxes: Optional[ArrayLike] = None,
    plt_fig_axis: Optional[Tuple[Figure, Any]] = None,
    outlier_perc: float = 2.0,
    cmap: Union[str, Any, None] = None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> Tuple[Figure, np.ndarray]:
    """Draw a grid of 2-D attribution maps, one row per example (or setting), one column per map.

    Each map is scaled on its own as in ``captum.attr.visualization.visualize_image_attr``
    (the chosen ``sign``, divided by its ``100 - outlier_perc`` percentile, clipped to ``[-1, 1]``
    or ``[0, 1]``), so maps of very different magnitude (layers, aggregators, methods) stay
    comparable by shape.

    Args:
        attributions: ``(R, C, H, W)`` maps, tensor or array.
        original_images: optional images shown in an extra first column: one image (``(H, W)``,
            ``(1|3, H, W)`` or ``(H, W, 1|3)``) used for every row, or ``R`` of them stacked on
            the first axis. With ``method="blended_heat_map"`` the maps are also drawn over it.
        method: ``"heat_map"`` or ``"blended_heat_map"`` (needs ``original_images``).
        sign: ``"all"``, ``"positive"``, ``"negative"`` or ``"absolute_value"``.
        labels: ``R`` strings written left of the rows (deprecated name ``row_labels=``).
        col_labels: ``C`` strings written above the columns.
        boxes: optional ``(R, B, 4)`` boxes ``(x_min, y_min, x_max, y_max)`` (exclusive maxima, as in
            :func:`captum_concepts.data.make_two_digit_canvas`) drawn on every map of the row.
        plt_fig_axis: ``(fig, axes)`` with ``R x (C [+1])`` axes to draw into.
        outlier_perc: as in Captum.
        cmap: as in Captum.
        alpha_overlay: as in Captum.
        show_colorbar: as in Captum.
        title: as in Captum.
        use_pyplot: as in Captum.
        fig_size: default ``(1.6 * columns, 1.6 * rows)``.

    Returns:
        ``(fig, axes)`` with ``axes`` an object array of shape ``(R, C)`` or ``(R, C + 1)``
        (the image column first).

    Example::

        from captum_concepts.attr import EmbeddingAttribution
        from captum_concepts.visualization import visualize_attribution_grid

        x = data.x_test[:3]
        layers = ["block1.relu", "block2.relu"]
        ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer=layers)
        maps = torch.stack(ea.attribute(x), dim=1)  # (3 examples, 2 layers, 8, 8)
        fig, axes = visualize_attribution_grid(maps, x, col_labels=layers, labels=["a", "b", "c"])
    """
    maps = to_numpy(attributions, "attributions")
    check_ndim(maps, (4,), "attributions", "(rows, columns, H, W)")
    if method == "blended_heat_map" and original_images is None:
        raise ValueError("method='blended_heat_map' needs original_images")
    n_rows, n_cols = maps.shape[:2]
    images = _row_images(original_images, n_rows, maps.shape[2:])
    row_labels = labels_or_default(labels, n_rows, "labels", "") if labels is not None else None
    col_labels = labels_or_default(col_labels, n_cols, "col_labels", "") if col_labels is not None else None
    box_arr = None
    if boxes is not None:
        box_arr = to_numpy(boxes, "boxes")
        if box_arr.ndim == 2:
            box_arr = box_arr[:, None, :]
        if box_arr.ndim != 3 or box_arr.shape[0] != n_rows or box_arr.shape[2] != 4:
            raise ValueError(f"boxes must have shape ({n_rows}, B, 4), got {tuple(box_arr.shape)}")

    offset = 1 if images is not None else 0
    total_cols = n_cols + offset
    if fig_size is None:
        h, w = maps.shape[2:]
        cell_w, cell_h = (1.6, 1.6 * h / w) if w >= h else (1.6 * w / h, 1.6)
        fig_size = (
            cell_w * total_cols + 0.6 + (0.8 if show_colorbar else 0),
            (cell_h + 0.25) * n_rows + (0.5 if title else 0.2),
        )
    fig, axes = prepare_figure(plt_fig_axis, n_rows, total_cols, fig_size, use_pyplot)
    last = None
    for r in range(n_rows):
        if images is not None:
            image_panel(axes[r, 0], images[r])
            if r == 0:
                axes[r, 0].set_title("image", fontsize=9)
        for c in range(n_cols):
            ax = axes[r, c + offset]
            if method == "blended_heat_map":
                gray = images[r] if images[r].ndim == 2 else images[r].mean(axis=-1)
                ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                last = draw_map(ax, maps[r, c], sign, cmap, outlier_perc, alpha_overlay, interpolation=None)
            else:
                last = draw_map(ax, maps[r, c], sign, cmap, outlier_perc)
            if box_arr is not None:
                _draw_boxes(ax, box_arr[r])
            clear_ticks(ax)
            if r == 0 and col_labels is not None:
                ax.set_title(col_labels[c], fontsize=9)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
    if show_colorbar and last is not None:
        fig.colorbar(last, ax=list(axes.reshape(-1)), shrink=0.6)
    finish(fig, title)
    return fig, axes


@call_forms(renamed={"aggregators": "labels", "layers": "col_labels"})
@validated(args=MAP_ARGS)
def visualize_embedding_attributions(
    attributions: Union[ArrayLike, Mapping[str, Any]],
    original_image: Optional[ArrayLike] = None,
    labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
    method: str = "heat_map",
    sign: str = "all",
    plt_fig_axis: Optional[Tuple[Figure, Any]] = None,
    outlier_perc: float = 2.0,
    cmap: Union[str, Any, None] = None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> Tuple[Figure, np.ndarray]:
    """The embedding-attribution grid of one example: one row per embedding aggregator, one column per layer.

    As in Figure 2 of Bertolini et al. (2023).

    Args:
        attributions: ``(A, L, H, W)`` maps (the ``(H, W)`` map of one example for aggregator
            ``a`` and layer ``l``, e.g. ``EmbeddingAttribution(..., embedding_aggregator=a,
            layer=l).attribute(x)[i]``), or a mapping ``{aggregator: {layer: map}}`` /
            ``{aggregator: [map per layer]}``; mapping keys give the labels.
        original_image: optional ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` image shown first in
            every row.
        labels: the aggregators' names, one per row (taken from a mapping's keys when omitted;
            deprecated name ``aggregators=``).
        col_labels: the layers' names, one per column (taken from a mapping's keys when
            omitted; deprecated name ``layers=``).
        method: as in :func:`visualize_attribution_grid`.
        sign: as in :func:`visualize_attribution_grid`.
        plt_fig_axis: ``(fig, axes)`` with ``A x (L [+1])`` axes to draw into.
        outlier_perc: as in :func:`visualize_attribution_grid`.
        cmap: as in :func:`visualize_attribution_grid`.
        alpha_overlay: as in :func:`visualize_attribution_grid`.
        show_colorbar: as in :func:`visualize_attribution_grid`.
        title: as in :func:`visualize_attribution_grid`.
        fig_size: as in :func:`visualize_attribution_grid`.
        use_pyplot: as in :func:`visualize_attribution_grid`.

    Returns:
        ``(fig, axes)``, ``axes`` of shape ``(A, L)`` or ``(A, L + 1)`` with an image column.

    Example::

        from captum_concepts.attr import EmbeddingAttribution
        from captum_concepts.visualization import visualize_embedding_attributions

        x = data.x_test[:1]
        grid = {agg: [EmbeddingAttribution(model, embedding_layer="embedding_relu", layer=layer,
                                           embedding_aggregator=agg).attribute(x)[0]
                      for layer in ["block1.relu", "block2.relu"]]
                for agg in ["mean", "var"]}  # rows: aggregators, columns: layers
        fig, axes = visualize_embedding_attributions(grid, original_image=x[0],
                                                     col_labels=["block1.relu", "block2.relu"])
    """
    if isinstance(attributions, Mapping):
        agg_names = [str(k) for k in attributions]
        rows, layer_names = [], None
        for key, per_layer in attributions.items():
            if isinstance(per_layer, Mapping):
                names = [str(k) for k in per_layer]
                if layer_names is not None and names != layer_names:
                    raise ValueError(f"attributions[{key!r}] has layers {names}, expected {layer_names}")
                layer_names = names
                per_layer = list(per_layer.values())
            rows.append(np.stack([to_numpy(m, "attributions") for m in per_layer]))
        shapes = {r.shape for r in rows}
        if len(shapes) != 1:
            raise ValueError(f"every aggregator needs the same number and size of maps, got {sorted(shapes)}")
        maps = np.stack(rows)
        labels = labels if labels is not None else agg_names
        col_labels = col_labels if col_labels is not None else layer_names
    else:
        maps = to_numpy(attributions, "attributions")
    check_ndim(maps, (4,), "attributions", "(aggregators, layers, H, W)")
    labels = labels_or_default(labels, maps.shape[0], "labels", "aggregator ")
    col_labels = labels_or_default(col_labels, maps.shape[1], "col_labels", "layer ")
    return visualize_attribution_grid(
        maps,
        original_images=original_image,
        method=method,
        sign=sign,
        labels=labels,
        col_labels=col_labels,
        plt_fig_axis=plt_fig_axis,
        outlier_perc=outlier_perc,
        cmap=cmap,
        alpha_overlay=alpha_overlay,
        show_colorbar=show_colorbar,
        title=title,
        fig_size=fig_size,
        use_pyplot=use_pyplot,
    )


def _row_images(original_images: Optional[ArrayLike], n_rows: int, hw: Tuple[int, ...]) -> Optional[list]:
    if original_images is None:
        return None
    arr = to_numpy(original_images, "original_images")
    # a stack of R images has one more axis than a single image of the same layout
    single = arr.ndim == 2 or (arr.ndim == 3 and (arr.shape[0] in (1, 3) or arr.shape[-1] in (1, 3)))
    if arr.ndim == 3 and arr.shape[0] == n_rows and arr.shape[1:] == tuple(hw):
        single = False
    if single:
        return [image_for_display(arr)] * n_rows
    if arr.shape[0] != n_rows:
        raise ValueError(f"original_images must hold one image or {n_rows} (one per row), got {arr.shape[0]}")
    return [image_for_display(a) for a in arr]


def _draw_boxes(ax: Any, boxes: np.ndarray) -> None:
    colors = ("lime", "orange", "cyan", "magenta")
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        # imshow puts pixel centres on integers: a box of pixels [x0, x1) spans x0-0.5 .. x1-0.5
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colors[k % 4], linewidth=1.2
            )
        )
