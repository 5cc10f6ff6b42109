"""Concept figures: concept maps over images, concept importance bars per class."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from .._utils.validation import validated
from ._common import (
    ArrayLike,
    check_ndim,
    fill_doc,
    finish,
    image_for_display,
    image_panel,
    labels_or_default,
    overlay_map,
    prepare_figure,
    to_numpy,
)


@fill_doc
@validated()
def visualize_concept_maps(
    images: ArrayLike,
    maps: ArrayLike,
    concepts: Optional[Sequence[int]] = None,
    concept_names: Optional[Sequence[str]] = None,
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

    Args:
        images: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``.
        maps: ``(N, d, H, W)`` (e.g. :func:`~captum_concepts.concept.concept_presence_maps` or
            :func:`~captum_concepts.concept.concept_attribution_maps`), each map scaled on its
            own as in Captum's ``visualize_image_attr``.
        concepts: the concept indices shown (default: all ``d``).
        concept_names: column labels (default ``"concept k"``).
        factor_images: optional ``(d, H, W)`` / ``(d, C, H, W)`` pixel factor images
            (:meth:`CoupledNMFConcepts.factor_images`), shown as a first row.
        sign: ``"positive"`` (default), ``"all"``, ``"negative"`` or ``"absolute_value"``.
        %(map_cmap)s
        %(map_alpha)s
        %(figure_args)s

    Returns:
        ``(fig, axes)``, ``axes`` an object array ``(rows, len(concepts))``.
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
    names = labels_or_default(concept_names, len(chosen), "concept_names", "concept ")
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


@fill_doc
@validated()
def visualize_concept_importance(
    importance: ArrayLike,
    residual: Optional[ArrayLike] = None,
    class_names: Optional[Sequence[str]] = None,
    concept_names: Optional[Sequence[str]] = None,
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
        class_names: panel titles.
        concept_names: bar labels.
        %(figure_args)s

    Returns:
        ``(fig, axes)``, ``axes`` an object array ``(1, n_classes)``.
    """
    imp = to_numpy(importance, "importance")
    if imp.ndim == 1:
        imp = imp[None]
    check_ndim(imp, (2,), "importance", "(n_classes, d)")
    n_classes, d = imp.shape
    res = None if residual is None else to_numpy(residual, "residual").reshape(-1)
    if res is not None and res.shape[0] != n_classes:
        raise ValueError(f"residual must have {n_classes} entries, got {res.shape[0]}")
    classes = labels_or_default(class_names, n_classes, "class_names", "class ")
    labels = labels_or_default(concept_names, d, "concept_names", "")
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
