"""Similarity figures: both sides' similarity maps, and the strongest links between two images."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import ConnectionPatch

from .._utils.validation import Int, Options, validated
from ._common import (
    ArrayLike,
    call_forms,
    check_ndim,
    fill_doc,
    finish,
    image_for_display,
    image_panel,
    overlay_map,
    prepare_figure,
    shape_of,
    to_numpy,
)


def _images_first_pairs(reading: dict, kwargs: dict) -> bool:
    """The old order ``(images_a, images_b, maps_a, maps_b)``: a value read as a map is not
    ``(N, H, W)`` (4-D images). Grey images ``(N, H, W)`` are ambiguous: read in the new order."""
    return any(len(shape_of(reading[k])) == 4 for k in ("maps_a", "maps_b") if k in reading)


def _images_first_correspondence(reading: dict, kwargs: dict) -> bool:
    """The old order ``(image_a, image_b, correspondence)``: the first value is not the
    ``(P_a, P_b)`` matrix of ``grid_a`` / ``grid_b`` and the third is (or the first is 3-D)."""
    first = shape_of(reading["correspondence"])
    if len(first) == 3:
        return True
    if "image_b" not in reading or "grid_a" not in kwargs:
        return False
    grid_a = kwargs["grid_a"]
    grid_b = kwargs.get("grid_b") or grid_a
    try:
        cells = (int(np.prod(grid_a)), int(np.prod(grid_b)))
    except (TypeError, ValueError):
        return False
    return first != cells and shape_of(reading["image_b"]) == cells


@call_forms(old_order=("images_a", "images_b", "maps_a", "maps_b"), looks_old=_images_first_pairs)
@fill_doc
@validated()
def visualize_similarity_maps(
    maps_a: ArrayLike,
    maps_b: ArrayLike,
    images_a: ArrayLike,
    images_b: ArrayLike,
    scores: Optional[ArrayLike] = None,
    sign: str = "all",
    cmap: Any = None,
    alpha: float = 0.6,
    plt_fig_axis: Optional[Tuple[Figure, Any]] = None,
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> Tuple[Figure, np.ndarray]:
    """One row per pair: image ``a``, its similarity map, image ``b``, its map.

    The maps come first, then the images, as in every visualization function (and Captum's
    ``visualize_image_attr(attr, original_image)``). The old order ``(images_a, images_b,
    maps_a, maps_b)`` is deprecated and still accepted with a ``DeprecationWarning`` when the
    shapes tell it (images with a channel axis); grey images ``(N, H, W)``, shaped as the maps,
    are read in the new order: pass keywords.

    Args:
        maps_a: ``(N, H, W)`` maps of side ``a`` (:meth:`SimilarityAttribution.attribute`).
        maps_b: ``(N, H, W)`` maps of side ``b``.
        images_a: images of side ``a``: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``.
        images_b: images of side ``b``, shaped as ``images_a``.
        scores: optional ``(N,)`` similarities, written in each row's title.
        sign: as in :func:`visualize_concept_maps` (default ``sign="all"``).
        %(map_cmap)s
        %(map_alpha)s
        %(figure_args)s

    Returns:
        ``(fig, axes)``, ``axes`` an object array ``(N, 4)``.

    Example::

        from captum_concepts.attr import SimilarityAttribution
        from captum_concepts.visualization import visualize_similarity_maps

        sa = SimilarityAttribution(model, embedding_layer="embedding_relu", layer="block2.relu")
        a, b = data.x_test[:3], data.x_test[3:6]
        maps_a, maps_b = sa.attribute(a, b)
        fig, axes = visualize_similarity_maps(maps_a, maps_b, a, b, scores=sa.similarity_scores(a, b))
    """
    a, b = to_numpy(images_a, "images_a"), to_numpy(images_b, "images_b")
    ma, mb = to_numpy(maps_a, "maps_a"), to_numpy(maps_b, "maps_b")
    check_ndim(ma, (3,), "maps_a", "(N, H, W)")
    check_ndim(mb, (3,), "maps_b", "(N, H, W)")
    n = ma.shape[0]
    if not a.shape[0] == b.shape[0] == mb.shape[0] == n:
        raise ValueError("images_a, images_b, maps_a and maps_b must hold the same number of pairs")
    s = None if scores is None else to_numpy(scores, "scores").reshape(-1)
    fig, axes = prepare_figure(plt_fig_axis, n, 4, fig_size or (6.4, 1.7 * n), use_pyplot)
    for i in range(n):
        for col, (img, m) in enumerate(((a[i], ma[i]), (b[i], mb[i]))):
            shown = image_for_display(img, "images_a" if col == 0 else "images_b")
            image_panel(axes[i, 2 * col], shown)
            overlay_map(axes[i, 2 * col + 1], shown, m, sign, cmap, alpha)
        if s is not None:
            axes[i, 0].set_ylabel(f"s = {s[i]:.3g}", fontsize=8)
    for col, name in enumerate(("a", "map of a", "b", "map of b")):
        axes[0, col].set_title(name, fontsize=8)
    finish(fig, title)
    return fig, axes


def _centres(grid: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Pixel centres ``(P, 2)`` (x, y) of a row-major ``grid`` of cells over an image of ``size``."""
    gh, gw = int(grid[0]), int(grid[1])
    h, w = size
    ys, xs = np.meshgrid(
        (np.arange(gh) + 0.5) * h / gh - 0.5, (np.arange(gw) + 0.5) * w / gw - 0.5, indexing="ij"
    )
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)


@call_forms(
    old_order=("image_a", "image_b", "correspondence"), looks_old=_images_first_correspondence
)
@fill_doc
@validated(args={"sign": Options(("positive", "negative", "absolute_value")), "k": Int(1)})
def visualize_correspondence(
    correspondence: ArrayLike,
    image_a: ArrayLike,
    image_b: ArrayLike,
    grid_a: Sequence[int],
    grid_b: Optional[Sequence[int]] = None,
    k: int = 10,
    sign: str = "positive",
    plt_fig_axis: Optional[Tuple[Figure, Any]] = None,
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> Tuple[Figure, np.ndarray]:
    """The ``k`` strongest links ``M(p, q)`` drawn as lines between two images (BiLRP-style).

    The correspondence comes first, then the images, as in every visualization function. The
    old order ``(image_a, image_b, correspondence, grid_a)`` is deprecated and still accepted
    with a ``DeprecationWarning`` when the shapes tell it (a 3-D image, or only the third
    argument of ``grid_a``'s ``(P_a, P_b)`` shape).

    Args:
        correspondence: ``(P_a, P_b)`` for one pair (a slice of
            :meth:`SimilarityAttribution.correspondence`).
        image_a: the image of side ``a``, ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``.
        image_b: the image of side ``b``, shaped as ``image_a``.
        grid_a: the source layer's ``(h, w)`` for side ``a`` (``P = h * w``, row-major).
        grid_b: the same for side ``b``; defaults to ``grid_a``.
        k: the number of links drawn, the largest first.
        sign: ``"positive"`` (default: the largest ``M``, links that raise the similarity),
            ``"negative"`` (the most negative) or ``"absolute_value"``.
        %(figure_args)s

    Line width and opacity grow with ``|M(p, q)|``; red links raise the similarity, blue ones
    lower it.

    Returns:
        ``(fig, axes)``, ``axes`` an object array ``(1, 2)``.

    Example::

        from captum_concepts.attr import SimilarityAttribution
        from captum_concepts.visualization import visualize_correspondence

        sa = SimilarityAttribution(model, embedding_layer="embedding_relu", layer="block2.pool")
        a, b = data.x_test[:1], data.x_test[1:2]
        corr = sa.correspondence(a, b)  # (1, 4 * 4, 4 * 4): position of a x position of b
        fig, axes = visualize_correspondence(corr[0], a[0], b[0], grid_a=(4, 4), k=4)
    """
    m = to_numpy(correspondence, "correspondence")
    check_ndim(m, (2,), "correspondence", "(P_a, P_b)")
    grid_b = grid_a if grid_b is None else grid_b
    if int(np.prod(grid_a)) != m.shape[0] or int(np.prod(grid_b)) != m.shape[1]:
        raise ValueError(
            f"grid_a {tuple(grid_a)} and grid_b {tuple(grid_b)} must have {m.shape[0]} and {m.shape[1]} cells"
        )
    key = {"positive": m, "negative": -m, "absolute_value": np.abs(m)}[sign]
    order = np.argsort(key, axis=None)[::-1][: min(k, m.size)]
    a, b = image_for_display(image_a, "image_a"), image_for_display(image_b, "image_b")
    ca, cb = _centres(grid_a, a.shape[:2]), _centres(grid_b, b.shape[:2])
    fig, axes = prepare_figure(plt_fig_axis, 1, 2, fig_size or (6.0, 3.0), use_pyplot)
    for ax, img, name in ((axes[0, 0], a, "a"), (axes[0, 1], b, "b")):
        image_panel(ax, img)
        ax.set_xlabel(name, fontsize=8)
    top = float(np.abs(m.reshape(-1)[order]).max()) if order.size else 0.0
    for flat in order:
        p, q = np.unravel_index(flat, m.shape)
        value = float(m[p, q])
        weight = abs(value) / top if top > 0 else 0.0
        line = ConnectionPatch(
            xyA=tuple(ca[p]),
            coordsA=axes[0, 0].transData,
            xyB=tuple(cb[q]),
            coordsB=axes[0, 1].transData,
            color="tab:red" if value >= 0 else "tab:blue",
            linewidth=0.5 + 2.5 * weight,
            alpha=0.3 + 0.7 * weight,
        )
        fig.add_artist(line)
    finish(fig, title)
    return fig, axes
