"""Names the report sections show (class folders, layers), made safe for the UTF-8 report and for
matplotlib: a folder may be named ``cost_$5`` (matplotlib reads ``$...$`` as mathtext) or hold bytes
that are not UTF-8 (Python gives them as surrogate escapes, which neither the HTML file nor
matplotlib's text engine accept)."""

from __future__ import annotations

from typing import Iterable, List


def text_label(name: object) -> str:
    """``name`` as printable text: undecodable bytes of a file name become ``\\xNN``.

    ``os.listdir`` gives a non-UTF-8 byte ``0xE9`` as the lone surrogate ``"\\udce9"``; it is
    written back as the four characters ``\\xe9``, so the byte stays visible and the text encodes.
    """
    text = str(name)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that does not come from a byte (e.g. "\ud800")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def plot_label(name: object) -> str:
    """:func:`text_label` with every ``$`` escaped, so matplotlib draws it instead of mathtext."""
    return text_label(name).replace("$", r"\$")


def plot_labels(names: Iterable[object]) -> List[str]:
    """:func:`plot_label` of every name."""
    return [plot_label(n) for n in names]
