"""What Captum's wrappers expect of an ``attribute`` method."""

from __future__ import annotations

import types
from typing import Callable, TypeVar

__all__ = ["captum_wrappable"]

F = TypeVar("F", bound=Callable)


def captum_wrappable(func: F) -> F:
    """Give ``func`` the ``__wrapped__`` that Captum's ``NoiseTunnel`` calls.

    Captum decorates every ``attribute`` with ``log_usage`` (``functools.wraps``), and
    ``NoiseTunnel`` calls ``attribute.__wrapped__(self, inputs, **kwargs)`` to skip the logging.
    Here ``__wrapped__`` is a copy of ``func`` itself rather than a wrapper, so no call frame is
    added: the ``stacklevel`` of our warnings keeps pointing at the user's code.
    """
    inner = types.FunctionType(
        func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    inner.__kwdefaults__ = func.__kwdefaults__
    inner.__qualname__ = func.__qualname__
    inner.__doc__ = func.__doc__
    inner.__annotations__ = func.__annotations__
    # a decorated func (e.g. ``validated``) keeps its own ``__wrapped__`` on the copy, so that
    # ``inspect.signature`` (and the documentation) still see the real arguments
    inner.__dict__.update(func.__dict__)
    func.__wrapped__ = inner  # type: ignore[attr-defined]
    return func
