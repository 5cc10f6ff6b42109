"""Warnings that point at the user's line, however deep inside the package they are raised."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Type

__all__ = ["warn_user"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside the package, seen from ``warn_user``'s caller."""
    frame = sys._getframe(2)  # the function that called warn_user
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def warn_user(message: str, category: Type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside the package.

    A fixed ``stacklevel`` breaks whenever a helper or a decorator (such as
    :func:`~captum_concepts._utils.validation.validated`) adds a frame; this walks the stack instead.
    """
    warnings.warn(message, category, stacklevel=_user_stacklevel())
