"""Concept figures: concept maps over images, concept importance bars per class."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from .._utils.validation import validated
from ._common import (
    ArrayLike,
    call_forms,
    check_ndim,
    fill_doc,
    finish,
    image_for_display,
    image_hw,
    image_panel,
    labels_or_default,
    overlay_map,
    prepare_figure,
    shape_of,
    to_numpy,
)


def _maps_over(maps: Any, images: Any) -> bool:
    """``maps`` can be ``(N, d, H, W)`` maps over ``images`` ``(N, [C,] H, W[, C])``."""
    shape = shape_of(maps)
    return len(shape) == 4 and image_hw(images, stacked=True) == shape[2:]


def _images_first(reading: dict, kwargs: dict) -> bool:
    """The old order ``(images, maps)``: the new reading does not fit and the old one does."""
    if "images" not in reading:
        return False
    maps, images = reading["maps"], reading["images"]
    return not _maps_over(maps, images) and _maps_over(images, maps)


@call_forms(renamed={"concept_names": "labels"}, old_order=("images", "maps"), looks_old=_images_first)
@fill_doc
@validated()
def visualize_concept_maps(
    maps: ArrayLike,
    images: ArrayLike,
    concepts: Optional[Sequence[int]] = None,
    labels: Optional[Sequence[str]] = None,
    factor_images: Optional[ArrayLike] = None,
    sign: str = "positive",
    cmap: Any = None,
    alpha: float = 0.6,
    plt_fig_axis: Optional[Tuple[Figure, Any]] = None,
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> Tuple[Figure, np.ndarray]:
    """Concept maps over their images: one row per image, one column per concept.

    The maps come first, then the images, as in every visualization function (and Captum's
    ``visualize_image_attr(attr, original_image)``). Deprecated, still accepted with a
    ``DeprecationWarning``: the old order ``(images, maps)`` (recognised from the shapes; with
    ``d`` in ``(1, 3)`` and channels-first images of as many channels it is ambiguous and read
    in the new order: pass keywords) and ``concept_names=`` (now ``labels=``).

    Args:
        maps: ``(N, d, H, W)`` (e.g. :func:`~captum_concepts.concept.concept_presence_maps` or
            :func:`~captum_concepts.concept.concept_attribution_maps`), each map scaled on its
            own as in Captum's ``visualize_image_attr``.
        images: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``.
        concepts: the concept indices shown (default: all ``d``).
        labels: the concepts' names, one per shown concept, written over the columns (default
            ``"concept k"``).
        factor_images: optional ``(d, H, W)`` / ``(d, C, H, W)`` pixel factor images
            (:meth:`CoupledNMFConcepts.factor_images`), shown as a first row.
        sign: ``"positive"`` (default), ``"all"``, ``"negative"`` or ``"absolute_value"``.
        %(map_cmap)s
        %(map_alpha)s
        %(figure_args)s

    Returns:
        ``(fig, axes)``, ``axes`` an object array ``(rows, len(concepts))``.

    Example::

        from captum_concepts.concept import CoupledNMFConcepts, concept_presence_maps
        from captum_concepts.visualization import visualize_concept_maps

        cnmf = CoupledNMFConcepts(5, model, layers=["block2.relu"], max_iter=50, random_state=0)
        cnmf.fit(data.x_train[:256])
        images = data.x_test[:3]
        fig, axes = visualize_concept_maps(concept_presence_maps(cnmf, images), images)
    """
    imgs = to_numpy(images, "images")
    heat = to_numpy(maps, "maps")
    check_ndim(heat, (4,), "maps", "(N, d, H, W)")
    n, d = heat.shape[:2]
    if imgs.shape[0] != n:
        raise ValueError(f"images and maps must hold the same N, got {imgs.shape[0]} and {n}")
    chosen = list(range(d)) if concepts is None else [int(k) for k in concepts]
    if not chosen or any(k < 0 or k >= d for k in chosen):
        raise ValueError(f"concepts must be indices in [0, {d}), got {concepts}")
    names = labels_or_default(labels, len(chosen), "labels", "concept ")
    factors = None if factor_images is None else to_numpy(factor_images, "factor_images")
    rows = n + (factors is not None)
    fig, axes = prepare_figure(
        plt_fig_axis, rows, len(chosen), fig_size or (1.6 * len(chosen), 1.6 * rows), use_pyplot
    )
    for col, k in enumerate(chosen):
        axes[0, col].set_title(names[col], fontsize=8)
        if factors is not None:
            image_panel(axes[0, col], image_for_display(factors[k], "factor_images"))
        for i in range(n):
            ax = axes[i + (factors is not None), col]
            overlay_map(ax, image_for_display(imgs[i], "images"), heat[i, k], sign, cmap, alpha)
    if factors is not None:
        axes[0, 0].set_ylabel("pixel factor", fontsize=8)
    finish(fig, title)
    return fig, axes


@call_forms(renamed={"concept_names": "labels", "class_names": "col_labels"})
@fill_doc
@validated()
def visualize_concept_importance(
    importance: ArrayLike,
    residual: Optional[ArrayLike] = None,
    col_labels: Optional[Sequence[str]] = None,
    labels: Optional[Sequence[str]] = None,
    plt_fig_axis: Optional[Tuple[Figure, Any]] = None,
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> Tuple[Figure, np.ndarray]:
    """Bar charts of concept importance, one panel per class (plus the residual bar).

    Args:
        importance: ``(n_classes, d)`` mean importance per class
            (:func:`~captum_concepts.concept.class_importance`), or ``(d,)`` for one class.
        residual: optional ``(n_classes,)`` residuals, drawn as a grey last bar.
        col_labels: the classes' names, one per panel (column), written over it (default
            ``"class c"``; deprecated name ``class_names=``).
        labels: the concepts' names, one per bar (default ``"0".."d-1"``; deprecated name
            ``concept_names=``).
        %(figure_args)s

    Returns:
        ``(fig, axes)``, ``axes`` an object array ``(1, n_classes)``.

    Example::

        from captum_concepts.concept import CoupledNMFConcepts, concept_importance
        from captum_concepts.visualization import visualize_concept_importance

        cnmf = CoupledNMFConcepts(5, model, layers=["block3.pool"], max_iter=50, random_state=0)
        cnmf.fit(data.x_train[:256])
        result = concept_importance(cnmf, data.x_test[:4], target=data.y_test[:4])
        fig, axes = visualize_concept_importance(result.importance, result.residual)
    """
    imp = to_numpy(importance, "importance")
    if imp.ndim == 1:
        imp = imp[None]
    check_ndim(imp, (2,), "importance", "(n_classes, d)")
    n_classes, d = imp.shape
    res = None if residual is None else to_numpy(residual, "residual").reshape(-1)
    if res is not None and res.shape[0] != n_classes:
        raise ValueError(f"residual must have {n_classes} entries, got {res.shape[0]}")
    classes = labels_or_default(col_labels, n_classes, "col_labels", "class ")
    labels = labels_or_default(labels, d, "labels", "")
    fig, axes = prepare_figure(
        plt_fig_axis, 1, n_classes, fig_size or (max(2.5, 0.3 * (d + 1)) * n_classes, 2.6), use_pyplot
    )
    for c in range(n_classes):
        ax = axes[0, c]
        values = list(imp[c]) + ([] if res is None else [res[c]])
        colors = ["tab:red" if v >= 0 else "tab:blue" for v in imp[c]] + ([] if res is None else ["grey"])
        ax.bar(range(len(values)), values, color=colors)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels + ([] if res is None else ["res."]), fontsize=6, rotation=90)
        ax.set_title(classes[c], fontsize=8)
    axes[0, 0].set_ylabel("u_k <dlogit/dA, o_k>", fontsize=8)
    finish(fig, title)
    return fig, axes
