"""The command line's one error type and message helper (imported by every CLI module)."""

from __future__ import annotations


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type name when empty)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
