"""Similarity figures: both sides' similarity maps, and the strongest links between two images."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import ConnectionPatch

from .._utils.validation import check_int, check_option, validated
from ._common import (
    ArrayLike,
    check_ndim,
    fill_doc,
    finish,
    image_for_display,
    image_panel,
    overlay_map,
    prepare_figure,
    to_numpy,
)


@fill_doc
@validated()
def visualize_similarity_maps(
    images_a: ArrayLike,
    images_b: ArrayLike,
    maps_a: ArrayLike,
    maps_b: ArrayLike,
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

    Args:
        images_a: images of side ``a``: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``.
        images_b: images of side ``b``, shaped as ``images_a``.
        maps_a: ``(N, H, W)`` maps of side ``a`` (:meth:`SimilarityAttribution.attribute`).
        maps_b: ``(N, H, W)`` maps of side ``b``.
        scores: optional ``(N,)`` similarities, written in each row's title.
        sign: as in :func:`visualize_concept_maps` (default ``sign="all"``).
        %(map_cmap)s
        %(map_alpha)s
        %(figure_args)s

    Returns:
        ``(fig, axes)``, ``axes`` an object array ``(N, 4)``.
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


@fill_doc
@validated()
def visualize_correspondence(
    image_a: ArrayLike,
    image_b: ArrayLike,
    correspondence: ArrayLike,
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

    Args:
        image_a: the image of side ``a``, ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``.
        image_b: the image of side ``b``, shaped as ``image_a``.
        correspondence: ``(P_a, P_b)`` for one pair (a slice of
            :meth:`SimilarityAttribution.correspondence`).
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
    """
    m = to_numpy(correspondence, "correspondence")
    check_ndim(m, (2,), "correspondence", "(P_a, P_b)")
    grid_b = grid_a if grid_b is None else grid_b
    if int(np.prod(grid_a)) != m.shape[0] or int(np.prod(grid_b)) != m.shape[1]:
        raise ValueError(
            f"grid_a {tuple(grid_a)} and grid_b {tuple(grid_b)} must have {m.shape[0]} and {m.shape[1]} cells"
        )
    check_option(sign, "sign", ("positive", "negative", "absolute_value"))
    k = check_int(k, "k", low=1)
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
