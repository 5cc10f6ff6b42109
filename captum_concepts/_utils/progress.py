"""Progress bars for long work: one rule for every entry point.

``show_progress=True`` (the default of the long entries) shows a tqdm bar on a terminal and nothing
elsewhere (CI logs, redirected output, notebooks without a terminal stay clean);
``show_progress=False`` silences it everywhere.

A bar that is not shown never touches tqdm: every tqdm bar, shown or not, takes tqdm's process-wide
write lock when it is made and closed, and a Ctrl-C that lands between that lock's acquire and
release leaves it held, so that every later bar of the process, in any thread, waits forever. A
shown bar is made, updated and closed with Ctrl-C held back until the step ends
(:func:`~captum_concepts._utils.hooks.run_uninterrupted`).
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Iterator, Optional, TypeVar

from .hooks import run_uninterrupted

__all__ = ["progress_bar"]

T = TypeVar("T")


def _on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


class _Bar:
    """A progress bar over ``iterable`` (or ``total`` manual steps): a tqdm bar when shown, nothing
    otherwise. Supports iteration, ``update``, ``set_postfix(_str)``, ``close`` and ``with``."""

    def __init__(self, iterable: Optional[Iterable[T]], shown: bool, **tqdm_kwargs: Any) -> None:
        self._iterable = iterable
        self.n = 0
        self._bar = None
        if shown:
            from tqdm.auto import tqdm

            total = tqdm_kwargs.pop("total", None)
            if total is None and iterable is not None and hasattr(iterable, "__len__"):
                total = len(iterable)  # type: ignore[arg-type]
            self._bar = run_uninterrupted(tqdm, total=total, **tqdm_kwargs)

    def __iter__(self) -> Iterator[T]:
        try:
            for item in () if self._iterable is None else self._iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            run_uninterrupted(self._bar.update, n)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            run_uninterrupted(self._bar.set_postfix, *args, **kwargs)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        if self._bar is not None:
            run_uninterrupted(self._bar.set_postfix_str, text, refresh)

    def close(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            run_uninterrupted(bar.close)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(
    iterable: Optional[Iterable[T]] = None,
    *,
    show: bool = True,
    desc: Optional[str] = None,
    total: Optional[int] = None,
    unit: str = "it",
    leave: bool = False,
) -> _Bar:
    """A bar over ``iterable`` (or a manual one, ``total`` steps, when ``iterable`` is None), shown
    only when ``show`` is true and standard error is a terminal."""
    return _Bar(iterable, bool(show) and _on_terminal(), desc=desc, total=total, unit=unit, leave=leave)
