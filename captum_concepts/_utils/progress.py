"""Progress bars for long work: one rule for every entry point.

``show_progress=True`` (the default of the long entries) shows a tqdm bar on a terminal and nothing
elsewhere (tqdm's ``disable=None``: CI logs, redirected output, notebooks without a terminal stay
clean); ``show_progress=False`` silences it everywhere.
"""

from __future__ import annotations

from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

__all__ = ["progress_bar"]

T = TypeVar("T")


def progress_bar(
    iterable: Optional[Iterable[T]] = None,
    *,
    show: bool = True,
    desc: Optional[str] = None,
    total: Optional[int] = None,
    unit: str = "it",
    leave: bool = False,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one, ``total`` steps, when ``iterable`` is None),
    shown only when ``show`` is true and output goes to a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=None if show else True)
