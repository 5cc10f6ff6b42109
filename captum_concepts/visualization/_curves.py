"""Line plots: representation-score curves over layers, generalised pointing-game curves."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._utils.validation import validated
from ._common import ArrayLike, call_forms, fill_doc, finish, labels_or_default, prepare_figure, to_numpy

Curves = Union[ArrayLike, Mapping[str, ArrayLike]]


def _curves(values: Curves, argument: str, default_label: str) -> dict:
    items = values.items() if isinstance(values, Mapping) else [(default_label, values)]
    out = {}
    for label, v in items:
        arr = to_numpy(v, f"{argument}[{label!r}]" if isinstance(values, Mapping) else argument)
        if arr.ndim != 1:
            raise ValueError(f"{argument} must hold 1-D curves, got shape {tuple(arr.shape)} for {label!r}")
        out[str(label)] = arr
    if not out:
        raise ValueError(f"{argument} must hold at least one curve")
    lengths = {len(a) for a in out.values()}
    if len(lengths) != 1:
        raise ValueError(f"every curve in {argument} must have the same length, got {sorted(lengths)}")
    return out


def _band(band: Optional[Any], center: Optional[np.ndarray], n: int, argument: str):
    """``(low, high)`` from a pair of curves or from a half-width (scalar or curve) around ``center``."""
    if band is None:
        return None
    if isinstance(band, (tuple, list)) and len(band) == 2 and np.ndim(band[0]) == 1:
        lo, hi = to_numpy(band[0], argument), to_numpy(band[1], argument)
    else:
        if center is None:
            raise ValueError(f"{argument} given as a half-width needs the curve it surrounds")
        half = np.broadcast_to(to_numpy(band, argument), (n,))
        lo, hi = center - half, center + half
    if lo.shape != (n,) or hi.shape != (n,):
        raise ValueError(f"{argument} must give {n} values per side, got {lo.shape} and {hi.shape}")
    return lo, hi


@call_forms(renamed={"layer_names": "labels"})
@fill_doc
@validated()
def visualize_score_curve(
    scores: Curves,
    labels: Optional[Sequence[str]] = None,
    benchmark: Optional[ArrayLike] = None,
    benchmark_band: Optional[Any] = None,
    score_bands: Optional[Mapping[str, Any]] = None,
    plt_fig_axis: Optional[Tuple[Figure, Axes]] = None,
    ylabel: str = "noise score",
    ylim: Optional[Tuple[float, float]] = (0.0, None),
    title: Optional[str] = None,
    fig_size: Tuple[float, float] = (6, 3.5),
    use_pyplot: bool = True,
) -> Tuple[Figure, Axes]:
    """Representation scores layer by layer, with the noise benchmark as a shaded band.

    As in Figure 3 of Bertolini et al. (2023): trained and random networks against the benchmark.

    Args:
        scores: one curve ``(L,)`` (mean score per layer) or ``{label: (L,)}``, e.g.
            ``{"trained": ..., "random weights": ...}``.
        labels: the ``L`` layers' names, the tick labels (default ``0..L-1``; deprecated name
            ``layer_names=``).
        benchmark: ``(L,)`` noise benchmark ``NS0`` per layer, drawn dashed.
        benchmark_band: the shaded band around it: a half-width (scalar or ``(L,)``, e.g. the
            standard deviation over draws) or a ``(low, high)`` pair of ``(L,)`` curves.
        score_bands: ``{label: band}`` in the same forms, shaded around each score curve.
        ylabel: y-axis label (``None`` entries are left automatic).
        ylim: y-axis limits (``None`` entries are left automatic).
        %(figure_args)s

    Returns:
        ``(fig, ax)``.

    Example::

        from captum_concepts.metrics import score_curve
        from captum_concepts.visualization import visualize_score_curve

        curve = score_curve(model, "embedding_relu", ["block1.relu", "block2.pool", "block3.pool"],
                            data.x_test[:32])
        fig, ax = visualize_score_curve({"trained": curve.values}, labels=curve.layers,
                                        benchmark=curve.benchmark)
    """
    curves = _curves(scores, "scores", ylabel)
    n = len(next(iter(curves.values())))
    names = labels_or_default(labels, n, "labels", "")
    fig, ax = prepare_figure(plt_fig_axis, 1, 1, fig_size, use_pyplot, squeeze=True)
    x = np.arange(n)
    if benchmark is not None:
        bench = to_numpy(benchmark, "benchmark").reshape(-1)
        if bench.shape != (n,):
            raise ValueError(f"benchmark must have {n} values (one per layer), got {bench.shape}")
        ax.plot(x, bench, "--", color="gray", label="noise benchmark")
        band = _band(benchmark_band, bench, n, "benchmark_band")
        if band is not None:
            ax.fill_between(x, band[0], band[1], color="gray", alpha=0.25, linewidth=0)
    elif benchmark_band is not None:
        band = _band(benchmark_band, None, n, "benchmark_band")
        ax.fill_between(x, band[0], band[1], color="gray", alpha=0.25, linewidth=0, label="noise benchmark")
    for label, y in curves.items():
        (line,) = ax.plot(x, y, "o-", label=label)
        if score_bands and label in score_bands:
            band = _band(score_bands[label], y, n, f"score_bands[{label!r}]")
            ax.fill_between(x, band[0], band[1], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xticks(x)
    ax.set_xticklabels(
        names, rotation=30 if max(len(s) for s in names) > 6 else 0, ha="right" if n > 1 else "center"
    )
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if len(curves) > 1 or benchmark is not None or benchmark_band is not None:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    finish(fig, title, ax)
    return fig, ax


@fill_doc
@validated()
def visualize_pointing_game_curve(
    energies: ArrayLike,
    accuracies: Curves,
    plt_fig_axis: Optional[Tuple[Figure, Axes]] = None,
    percent: bool = True,
    title: Optional[str] = None,
    fig_size: Tuple[float, float] = (5, 3.5),
    use_pyplot: bool = True,
) -> Tuple[Figure, Axes]:
    """Generalised pointing-game accuracy against the share of positive energy kept, one line per method.

    As in Figure 6 of Gu & Tresp.

    Args:
        energies: ``(M,)`` energy fractions in ``[0, 1]`` (``0`` is the classic pointing game).
        accuracies: one curve ``(M,)`` or ``{method name: (M,)}`` of accuracies in ``[0, 1]``.
        percent: write the x-axis in percent.
        %(figure_args)s

    Returns:
        ``(fig, ax)``.

    Example::

        from captum_concepts.metrics import pointing_game_curve
        from captum_concepts.visualization import visualize_pointing_game_curve

        maps = torch.rand(8, 16, 16)
        boxes = torch.tensor([[4, 4, 8, 8]]).repeat(8, 1)  # (N, 4): x0, y0, x1, y1 of each object
        energies, acc = pointing_game_curve(maps, boxes=boxes, energies=[0.0, 0.25, 0.5])
        fig, ax = visualize_pointing_game_curve(energies, {"random maps": acc})
    """
    m = to_numpy(energies, "energies").reshape(-1)
    curves = _curves(accuracies, "accuracies", "accuracy")
    if len(next(iter(curves.values()))) != len(m):
        raise ValueError(
            f"accuracies must have {len(m)} values (one per energy), got {len(next(iter(curves.values())))}"
        )
    fig, ax = prepare_figure(plt_fig_axis, 1, 1, fig_size, use_pyplot, squeeze=True)
    x = m * 100 if percent else m
    for label, y in curves.items():
        ax.plot(x, y, "o-", label=label, markersize=4)
    ax.set_xlabel("energy kept (%)" if percent else "energy kept")
    ax.set_ylabel("pointing accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if isinstance(accuracies, Mapping):
        ax.legend(fontsize=8)
    finish(fig, title, ax)
    return fig, ax
