"""Shared plumbing for the plotting functions: figures, arrays, map scaling, call forms.

Every public plotting function follows ``captum.attr.visualization.visualize_image_attr``:
it draws into ``plt_fig_axis=(fig, axes)`` when given, otherwise creates a figure
(through ``pyplot`` when ``use_pyplot=True``, else a bare ``Figure`` with an Agg canvas
that no pyplot state ever sees), returns ``(fig, axes)`` and never calls ``plt.show()``.

One call form for all of them (:func:`call_forms` keeps the old ones working, deprecated):
the maps (attributions, correspondences) come first and the images they are drawn over after
them, as in Captum's ``visualize_image_attr(attr, original_image)``; the names of the entries a
figure shows (rows, concepts, layers) are ``labels=``, and a grid's column names ``col_labels=``.
"""

from __future__ import annotations

import functools
import inspect
import re
import textwrap
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._utils.validation import Options, RealNumber
from .._utils.warn import warn_user

ArrayLike = Any  # numpy array, torch tensor or nested sequence of numbers

_SIGNS = ("all", "positive", "negative", "absolute_value")
MAP_ARGS = {"sign": Options(_SIGNS), "outlier_perc": RealNumber(0, 100, high_open=True)}
"""The rules of the arguments every map figure takes (Captum's ``sign`` and ``outlier_perc``)."""
_DEFAULT_CMAPS = {"all": "bwr", "positive": "Greens", "negative": "Reds", "absolute_value": "Blues"}

# The ``Args:`` entries every plotting function shares, written once (Google style: a continuation
# line is indented four spaces more than its entry). ``fill_doc`` puts them where a docstring
# line holds only a placeholder ``%(name)s``, at that line's indentation.
DOC_ENTRIES = {
    "plt_fig_axis": (
        "plt_fig_axis: ``(fig, axes)`` to draw into; None (default) creates a figure, as in\n"
        "    ``captum.attr.visualization``."
    ),
    "title": "title: the figure's title (None: no title).",
    "fig_size": "fig_size: the size of a created figure, in inches.",
    "use_pyplot": (
        "use_pyplot: create the figure through ``pyplot`` (True) or as a bare ``Figure`` "
        "that no pyplot state\n"
        "    sees (False), as in ``captum.attr.visualization``."
    ),
    "map_cmap": "cmap: the maps' colour map.",
    "map_alpha": "alpha: the maps' opacity over the image.",
}
DOC_ENTRIES["title_and_size_args"] = "\n".join(DOC_ENTRIES[k] for k in ("title", "fig_size", "use_pyplot"))
DOC_ENTRIES["figure_args"] = "\n".join((DOC_ENTRIES["plt_fig_axis"], DOC_ENTRIES["title_and_size_args"]))

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.MULTILINE)
_F = TypeVar("_F", bound=Callable[..., Any])


def fill_doc(fn: _F) -> _F:
    """Replace each docstring line ``%(name)s`` by ``DOC_ENTRIES[name]`` at that line's indentation
    (in the manner of Matplotlib's ``_docstring.interpd``); an unknown name fails at import."""
    if fn.__doc__:  # None under ``python -OO``
        fn.__doc__ = _PLACEHOLDER.sub(
            lambda m: textwrap.indent(DOC_ENTRIES[m["name"]], m["indent"]), fn.__doc__
        )
    return fn


def to_numpy(x: ArrayLike, argument: str = "x") -> np.ndarray:
    """A float numpy copy of a tensor / array / nested list (tensors are detached and moved to CPU)."""
    if x is None:
        raise TypeError(f"{argument} must be an array or tensor, got None")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.array(x, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{argument} must be convertible to a float array: {err}") from None


def check_ndim(x: np.ndarray, ndims: Sequence[int], argument: str, meaning: str) -> None:
    if x.ndim not in ndims:
        raise ValueError(f"{argument} must have shape {meaning}, got an array of shape {tuple(x.shape)}")


def prepare_figure(
    plt_fig_axis: Optional[Tuple[Figure, Any]],
    nrows: int,
    ncols: int,
    fig_size: Tuple[float, float],
    use_pyplot: bool,
    squeeze: bool = False,
    **subplot_kw: Any,
) -> Tuple[Figure, Any]:
    """``(fig, axes)`` with an ``(nrows, ncols)`` object array of axes (or one Axes when squeezed)."""
    if plt_fig_axis is not None:
        if not isinstance(plt_fig_axis, (tuple, list)) or len(plt_fig_axis) != 2:
            raise TypeError("plt_fig_axis must be a (figure, axes) pair")
        fig, axes = plt_fig_axis
        arr = np.asarray(axes, dtype=object).reshape(-1)
        if arr.size != nrows * ncols:
            raise ValueError(
                f"plt_fig_axis must hold {nrows * ncols} axes ({nrows} x {ncols}), got {arr.size}"
            )
        arr = arr.reshape(nrows, ncols)
        return fig, (arr[0, 0] if squeeze and arr.size == 1 else arr)
    if use_pyplot:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(nrows, ncols, figsize=fig_size, squeeze=False, subplot_kw=subplot_kw or None)
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = Figure(figsize=fig_size)
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False, subplot_kw=subplot_kw or None)
    axes = np.asarray(axes, dtype=object)
    return fig, (axes[0, 0] if squeeze and axes.size == 1 else axes)


def scale_map(attr: np.ndarray, sign: str = "all", outlier_perc: float = 2.0) -> np.ndarray:
    """Scale a 2-D map like Captum's ``visualize_image_attr``: the chosen sign, divided by the
    ``100 - outlier_perc`` percentile of its magnitude and clipped to ``[-1, 1]`` (``[0, 1]`` for
    one-signed choices). An all-zero map stays zero."""
    MAP_ARGS["sign"].check(sign, "sign")
    MAP_ARGS["outlier_perc"].check(outlier_perc, "outlier_perc")
    if sign == "positive":
        attr = np.clip(attr, 0, None)
    elif sign == "negative":
        attr = np.clip(-attr, 0, None)
    elif sign == "absolute_value":
        attr = np.abs(attr)
    mags = np.abs(attr[np.isfinite(attr)])
    top = float(np.percentile(mags, 100 - outlier_perc)) if mags.size else 0.0
    if top <= 0:
        top = float(mags.max()) if mags.size and mags.max() > 0 else 1.0
    low = -1.0 if sign == "all" else 0.0
    return np.clip(attr / top, low, 1.0)


def sign_limits(sign: str) -> Tuple[float, float]:
    return (-1.0, 1.0) if sign == "all" else (0.0, 1.0)


def default_cmap(sign: str, cmap: Union[str, Any, None]) -> Union[str, Any]:
    return cmap if cmap is not None else _DEFAULT_CMAPS[sign]


def image_for_display(image: ArrayLike, argument: str = "original_image") -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` in ``[0, 1]`` from ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` (C = 1 or 3).

    Channels-first is assumed when the first axis has 1 or 3 entries and the last does not;
    values are min-max scaled for display (a constant image becomes zeros).
    """
    img = to_numpy(image, argument)
    if img.ndim == 3:
        if img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
            img = np.moveaxis(img, 0, -1)
        elif img.shape[0] in (1, 3) and img.shape[-1] in (1, 3) and img.shape[0] < img.shape[-1]:
            img = np.moveaxis(img, 0, -1)
        if img.shape[-1] == 1:
            img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise ValueError(
            f"{argument} must have shape (H, W), (C, H, W) or (H, W, C) with C in (1, 3), "
            f"got {tuple(to_numpy(image, argument).shape)}"
        )
    lo, hi = np.nanmin(img), np.nanmax(img)
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def show_image(ax: Axes, image: np.ndarray, alpha: float = 1.0) -> None:
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, alpha=alpha, interpolation="nearest")
    else:
        ax.imshow(image, alpha=alpha, interpolation="nearest")


def clear_ticks(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def image_panel(ax: Axes, image: np.ndarray) -> None:
    """``image`` (from :func:`image_for_display`) on its own, without ticks."""
    show_image(ax, image)
    clear_ticks(ax)


def draw_map(
    ax: Axes,
    heat: np.ndarray,
    sign: str,
    cmap: Union[str, Any, None],
    outlier_perc: float = 2.0,
    alpha: Optional[float] = None,
    interpolation: Optional[str] = "nearest",
) -> Any:
    """The 2-D map ``heat`` scaled by :func:`scale_map` in its sign's colour map; return the artist."""
    low, high = sign_limits(sign)
    return ax.imshow(
        scale_map(heat, sign, outlier_perc),
        cmap=default_cmap(sign, cmap),
        vmin=low,
        vmax=high,
        alpha=alpha,
        interpolation=interpolation,
    )


def overlay_map(
    ax: Axes, image: Optional[np.ndarray], heat: np.ndarray, sign: str, cmap: Any, alpha: float
) -> Any:
    """Draw ``image`` (if any) and the scaled ``heat`` map over it, without ticks; return the map's artist."""
    if image is not None:
        show_image(ax, image)
    art = draw_map(ax, heat, sign, cmap, alpha=alpha if image is not None else 1.0)
    clear_ticks(ax)
    return art


def labels_or_default(labels: Optional[Sequence[str]], n: int, argument: str, prefix: str) -> list:
    if labels is None:
        return [f"{prefix}{i}" for i in range(n)]
    labels = [str(s) for s in labels]
    if len(labels) != n:
        raise ValueError(f"{argument} must have {n} entries, got {len(labels)}")
    return labels


def finish(fig: Figure, title: Optional[str], ax: Optional[Axes] = None) -> None:
    """Write ``title`` (if any) over the figure, or over ``ax`` for a one-panel figure."""
    if title:
        if ax is None:
            fig.suptitle(title)
        else:
            ax.set_title(title)


def call_forms(
    renamed: Optional[Mapping[str, str]] = None,
    old_order: Optional[Sequence[str]] = None,
    looks_old: Optional[Callable[[Dict[str, Any], Dict[str, Any]], bool]] = None,
) -> Callable[[_F], _F]:
    """Keep a plotting function's deprecated call forms working, with a ``DeprecationWarning``.

    Args:
        renamed: ``{old keyword: new keyword}`` (e.g. ``{"row_labels": "labels"}``); the new
            parameter sits where the old one did, so positional calls are unchanged. Both at
            once: ``TypeError``.
        old_order: the leading parameters' names in their old positional order (the function's
            own leading parameters hold the same names in the new order). A positional call is
            read in the old order when the new reading binds a name also given by keyword, or
            when ``looks_old(new_reading, keywords)`` says its values have the old shapes (the
            ambiguous case, e.g. equal shapes, keeps the new order: pass keywords there).
        looks_old: see ``old_order``; it gets ``{name: value}`` of the reordered positional
            values read in the new order, and every argument given (read in the new order).
    """
    renamed = dict(renamed or {})
    old = list(old_order or ())

    def decorate(fn: _F) -> _F:
        names = list(inspect.signature(fn).parameters)
        new = names[: len(old)]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for was, now in renamed.items():
                if was in kwargs:
                    if now in kwargs:
                        raise TypeError(f"{fn.__name__}: pass {now}= only ({was}= is its deprecated name)")
                    warn_user(
                        f"{fn.__name__}({was}=...) is deprecated; pass {now}=... (every visualization "
                        "function names its labels labels=)",
                        DeprecationWarning,
                    )
                    kwargs[now] = kwargs.pop(was)
            k = min(len(args), len(old))
            if k and new != old:
                clash = any(n in kwargs for n in new[:k])
                given = {**dict(zip(names, args)), **kwargs}  # every argument, read in the new order
                if clash or (looks_old is not None and looks_old(dict(zip(new, args[:k])), given)):
                    warn_user(
                        f"{fn.__name__}({', '.join(old[:k])}, ...) is the deprecated argument order; "
                        f"pass ({', '.join(new[:k])}, ...): the maps first, then the images they are "
                        "drawn over, as in Captum's visualize_image_attr(attr, original_image); "
                        "or pass them by keyword",
                        DeprecationWarning,
                    )
                    kwargs.update(zip(old[:k], args[:k]))
                    kwargs.update(zip(names[len(old) :], args[len(old) :]))
                    args = ()
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def shape_of(x: Any) -> Tuple[int, ...]:
    """The shape of a tensor, array or nested sequence, without copying it (``()`` if none)."""
    if hasattr(x, "shape"):
        return tuple(x.shape)
    try:
        return tuple(np.shape(x))
    except (TypeError, ValueError):
        return ()


def image_hw(x: Any, stacked: bool) -> Optional[Tuple[int, ...]]:
    """The ``(H, W)`` of an image (``stacked``: of a stack of images, first axis ``N``) in any of
    the accepted layouts, or None when ``x`` cannot be one."""
    a = shape_of(x)[1:] if stacked else shape_of(x)
    if len(a) == 2:
        return tuple(a)
    if len(a) == 3 and a[0] in (1, 3):
        return tuple(a[1:])
    if len(a) == 3 and a[-1] in (1, 3):
        return tuple(a[:2])
    return None
