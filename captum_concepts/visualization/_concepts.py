"""Concept figures: top images per factor, factor similarity matrices with their eigenvalues,
concept relevance heat maps."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .._utils.validation import validated
from ._common import (
    ArrayLike,
    call_forms,
    check_ndim,
    clear_ticks,
    fill_doc,
    finish,
    image_for_display,
    labels_or_default,
    prepare_figure,
    show_image,
    to_numpy,
)


@call_forms(renamed={"concept_names": "labels"})
@fill_doc
@validated()
def visualize_concept_grid(
    images: ArrayLike,
    masks: Optional[ArrayLike] = None,
    factor_images: Optional[ArrayLike] = None,
    labels: Optional[Sequence[str]] = None,
    plt_fig_axis: Optional[Tuple[Figure, Any]] = None,
    mask_color: str = "red",
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> Tuple[Figure, np.ndarray]:
    """Top images of each concept (one row per concept), optionally with masks and the concept's
    pixel factor image.

    As in Figures 3 to 5 of Saini & Papalexakis.

    Args:
        images: ``(K, T, H, W)``, ``(K, T, C, H, W)`` or ``(K, T, H, W, C)`` — the ``T`` top
            examples of each of ``K`` concepts (e.g. ``x[concepts.top_examples(T)]``).
        masks: optional ``(K, T, H, W)`` or ``(K, H, W)`` (one mask per concept) masks; the
            ``> 0.5`` region's outline is drawn on each image in ``mask_color``.
        factor_images: optional ``(K, H, W)`` / ``(K, C, H, W)`` pixel factor per concept, shown in
            an extra first column ("factor").
        labels: the ``K`` concepts' names, written left of the rows (default ``"concept k"``;
            deprecated name ``concept_names=``).
        mask_color: the Matplotlib colour of the mask outlines.
        %(figure_args)s

    Returns:
        ``(fig, axes)``, ``axes`` an object array ``(K, T)`` or ``(K, T + 1)``.

    Example::

        from captum_concepts.concept import CoupledNMFConcepts
        from captum_concepts.visualization import visualize_concept_grid

        x = data.x_train[:256]
        cnmf = CoupledNMFConcepts(5, model, layers=["block3.relu"], max_iter=50, random_state=0).fit(x)
        top = cnmf.top_examples(4)  # (5, 4) indices into x
        fig, axes = visualize_concept_grid(x[top], factor_images=cnmf.factor_images()[:, 0])
    """
    imgs = to_numpy(images, "images")
    check_ndim(imgs, (4, 5), "images", "(concepts, top examples, H, W) or with a channel axis")
    n_concepts, n_top = imgs.shape[:2]
    shown = [[image_for_display(imgs[k, t], "images") for t in range(n_top)] for k in range(n_concepts)]
    hw = shown[0][0].shape[:2]
    mask_arr = None
    if masks is not None:
        mask_arr = to_numpy(masks, "masks")
        if mask_arr.ndim == 3:
            mask_arr = np.repeat(mask_arr[:, None], n_top, axis=1)
        if mask_arr.shape != (n_concepts, n_top) + tuple(hw):
            raise ValueError(
                f"masks must have shape {(n_concepts, n_top) + tuple(hw)} or {(n_concepts,) + tuple(hw)}, "
                f"got {tuple(to_numpy(masks, 'masks').shape)}"
            )
    factors = None
    if factor_images is not None:
        fac = to_numpy(factor_images, "factor_images")
        if fac.shape[0] != n_concepts:
            raise ValueError(f"factor_images must hold {n_concepts} images, got {fac.shape[0]}")
        factors = [image_for_display(f, "factor_images") for f in fac]
    names = labels_or_default(labels, n_concepts, "labels", "concept ")
    offset = 1 if factors is not None else 0
    cols = n_top + offset
    if fig_size is None:
        fig_size = (1.1 * cols + 0.6, 1.1 * n_concepts + (0.5 if title else 0.2))
    fig, axes = prepare_figure(plt_fig_axis, n_concepts, cols, fig_size, use_pyplot)
    for k in range(n_concepts):
        if factors is not None:
            axes[k, 0].imshow(factors[k], cmap="viridis", interpolation="nearest")
            clear_ticks(axes[k, 0])
            if k == 0:
                axes[k, 0].set_title("factor", fontsize=8)
        for t in range(n_top):
            ax = axes[k, t + offset]
            show_image(ax, shown[k][t])
            if mask_arr is not None and mask_arr[k, t].max() > 0.5 and mask_arr[k, t].min() <= 0.5:
                ax.contour(mask_arr[k, t] > 0.5, levels=[0.5], colors=mask_color, linewidths=1.0)
            clear_ticks(ax)
        axes[k, 0].set_ylabel(names[k], fontsize=8, rotation=0, ha="right", va="center")
    finish(fig, title)
    return fig, axes


@call_forms(renamed={"layer_names": "labels"})
@fill_doc
@validated()
def visualize_similarity_matrices(
    matrices: Union[ArrayLike, Sequence[ArrayLike]],
    labels: Optional[Sequence[str]] = None,
    plt_fig_axis: Optional[Tuple[Figure, Any]] = None,
    cmap: Union[str, Any] = "viridis",
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> Tuple[Figure, np.ndarray]:
    """Cosine-similarity matrices between concept factors, one per layer, plus their eigenvalue spectra.

    As in Figure 6 of Saini & Papalexakis: deeper layers are closer to the identity, whose
    eigenvalues are all 1. The spectra are drawn in a last panel.

    Args:
        matrices: ``(L, d, d)`` or a list of ``L`` symmetric ``(d, d)`` matrices (e.g. the cosine
            similarity between the columns of each layer's neuron factor ``O_j``).
        labels: the ``L`` layers' names, the panel titles (deprecated name ``layer_names=``).
        plt_fig_axis: ``(fig, axes)`` with ``L + 1`` axes.
        cmap: the colour map (a Matplotlib name or colormap), as in ``captum.attr.visualization``.
        %(title_and_size_args)s

    Returns:
        ``(fig, axes)``, ``axes`` an object array of ``L + 1`` axes: the matrices, then the spectra.

    Example::

        from captum_concepts.concept import CoupledNMFConcepts
        from captum_concepts.visualization import visualize_similarity_matrices

        layers = ["block2.relu", "block3.relu"]
        cnmf = CoupledNMFConcepts(5, model, layers=layers, max_iter=50, random_state=0)
        cnmf.fit(data.x_train[:256])
        sims = [cnmf.neuron_similarity(layer) for layer in layers]  # (5, 5) per layer
        fig, axes = visualize_similarity_matrices(sims, labels=layers)
    """
    if isinstance(matrices, (list, tuple)):
        mats = [to_numpy(m, "matrices") for m in matrices]
    else:
        arr = to_numpy(matrices, "matrices")
        mats = [arr] if arr.ndim == 2 else list(arr)
    if not mats:
        raise ValueError("matrices must hold at least one matrix")
    for i, m in enumerate(mats):
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"matrices[{i}] must be square (d, d), got shape {tuple(m.shape)}")
    names = labels_or_default(labels, len(mats), "labels", "layer ")
    n = len(mats)
    if fig_size is None:
        fig_size = (2.6 * (n + 1), 2.8 + (0.4 if title else 0))
    fig, axes = prepare_figure(plt_fig_axis, 1, n + 1, fig_size, use_pyplot)
    axes = axes.reshape(-1)
    for i, (m, name) in enumerate(zip(mats, names)):
        im = axes[i].imshow(m, cmap=cmap, vmin=min(0.0, float(m.min())), vmax=1.0, interpolation="nearest")
        axes[i].set_title(name, fontsize=9)
        axes[i].set_xlabel("factor", fontsize=8)
        if i == 0:
            axes[i].set_ylabel("factor", fontsize=8)
    fig.colorbar(im, ax=list(axes[:n]), shrink=0.7)
    spec = axes[n]
    for m, name in zip(mats, names):
        eig = np.sort(np.linalg.eigvalsh((m + m.T) / 2))[::-1]
        spec.plot(np.arange(1, len(eig) + 1), eig, "o-", markersize=3, label=name)
    spec.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="identity")
    spec.set_xlabel("rank", fontsize=8)
    spec.xaxis.set_major_locator(MaxNLocator(integer=True))  # ranks are whole numbers
    spec.set_ylabel("eigenvalue", fontsize=8)
    spec.set_title("eigenvalues", fontsize=9)
    spec.legend(fontsize=7)
    spec.grid(alpha=0.3)
    finish(fig, title)
    return fig, axes


@call_forms(renamed={"concept_names": "labels"})
@fill_doc
@validated()
def visualize_relevance_matrix(
    relevance: ArrayLike,
    labels: Optional[Sequence[str]] = None,
    plt_fig_axis: Optional[Tuple[Figure, Axes]] = None,
    cmap: Union[str, Any] = "magma",
    annotate: Optional[bool] = None,
    vmin: Optional[float] = None,
    vmax: Optional[float] = 1.0,
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> Tuple[Figure, Axes]:
    """Heat map of a concept relevance matrix ``rel(a, b) = cos(v_a, v_b)``, as in Figure 3 of Gu & Tresp.

    Args:
        relevance: ``(K, K)`` (or ``(K, J)``) matrix.
        labels: the ``K`` concepts' names, on both axes of a square matrix (deprecated name
            ``concept_names=``).
        annotate: write each value in its cell (default: when ``K <= 12``).
        vmin: lower colour limit (default: the matrix minimum).
        vmax: upper colour limit (default: 1).
        %(plt_fig_axis)s
        cmap: the colour map (a Matplotlib name or colormap), as in ``captum.attr.visualization``.
        %(title_and_size_args)s

    Returns:
        ``(fig, ax)``.

    Example::

        from captum_concepts.concept import SemanticVector
        from captum_concepts.visualization import visualize_relevance_matrix

        sv = SemanticVector(model, "block3.relu").fit_from_labels((data.x_train, data.y_train))
        fig, ax = visualize_relevance_matrix(sv.relevance(), labels=[str(d) for d in range(10)])
    """
    mat = to_numpy(relevance, "relevance")
    check_ndim(mat, (2,), "relevance", "(K, K)")
    rows, cols = mat.shape
    names = None
    if labels is not None:
        names = labels_or_default(labels, rows, "labels", "")
    if annotate is None:
        annotate = max(rows, cols) <= 12
    if fig_size is None:
        side = min(10.0, 1.5 + 0.45 * max(rows, cols))
        fig_size = (side + 1, side)
    fig, ax = prepare_figure(plt_fig_axis, 1, 1, fig_size, use_pyplot, squeeze=True)
    im = ax.imshow(mat, cmap=cmap, vmin=float(mat.min()) if vmin is None else vmin, vmax=vmax)
    fig.colorbar(im, ax=ax, shrink=0.8)
    if names is not None:
        ax.set_yticks(range(rows))
        ax.set_yticklabels(names, fontsize=8)
        if cols == rows:
            ax.set_xticks(range(cols))
            ax.set_xticklabels(names, fontsize=8, rotation=45, ha="right")
    if annotate:
        mid = (im.norm.vmin + im.norm.vmax) / 2
        for i in range(rows):
            for j in range(cols):
                ax.text(
                    j,
                    i,
                    f"{mat[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if mat[i, j] > mid else "white",
                )
    finish(fig, title, ax)
    return fig, ax


@call_forms(renamed={"concept_labels": "labels"})
@fill_doc
@validated()
def visualize_tcav_scores(
    scores: Union[ArrayLike, Mapping[str, ArrayLike]],
    labels: Optional[Sequence[str]] = None,
    chance: Optional[float] = 0.5,
    plt_fig_axis: Optional[Tuple[Figure, Axes]] = None,
    title: Optional[str] = None,
    fig_size: Tuple[float, float] = (7, 3),
    use_pyplot: bool = True,
) -> Tuple[Figure, Axes]:
    """TCAV scores of concepts as grouped bars, in the style of Figure 4 of the TCAV paper.

    Kim et al., "Interpretability Beyond Feature Attribution: Quantitative Testing with Concept
    Activation Vectors (TCAV)", ICML 2018.

    Args:
        scores: ``(d,)`` one score per concept, or ``{label: (d,)}`` for several groups side by
            side, e.g. ``{"top class": ..., "control class": ...}`` (the sign-count score of each
            concept's top class and of a control class).
        labels: the ``d`` concepts' names, the tick labels (default ``"c0".."c{d-1}"``;
            deprecated name ``concept_labels=``).
        chance: a dashed reference line (0.5: a concept unrelated to the class); None: none.
        %(figure_args)s

    Returns:
        ``(fig, ax)``.

    Example::

        from captum_concepts.visualization import visualize_tcav_scores

        scores = {"block3.relu": [0.9, 0.55, 0.2]}  # TCAV scores per concept, e.g. from captum's TCAV
        fig, ax = visualize_tcav_scores(scores, labels=["stripes", "dots", "plain"])
    """
    groups = dict(scores) if isinstance(scores, Mapping) else {"TCAV score": scores}
    if not groups:
        raise ValueError("scores must hold at least one group of scores")
    values = {str(k): to_numpy(v, f"scores[{k!r}]").reshape(-1) for k, v in groups.items()}
    lengths = {len(v) for v in values.values()}
    if len(lengths) != 1:
        raise ValueError(f"every group of scores needs one score per concept, got lengths {sorted(lengths)}")
    d = lengths.pop()
    labels = labels_or_default(labels, d, "labels", "c")
    fig, ax = prepare_figure(plt_fig_axis, 1, 1, fig_size, use_pyplot, squeeze=True)
    pos = np.arange(d)
    width = 0.8 / len(values)
    colors = ("tab:blue", "tab:gray", "tab:orange", "tab:green", "tab:purple")
    for i, (label, v) in enumerate(values.items()):
        offset = (i - (len(values) - 1) / 2) * width
        ax.bar(pos + offset, v, width=width, color=colors[i % len(colors)], label=label)
    if chance is not None:
        ax.axhline(chance, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("TCAV score")
    ax.legend(fontsize=8, loc="lower right")
    finish(fig, title)
    return fig, ax
