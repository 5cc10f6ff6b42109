"""The plotting functions' shared ``Args:`` entries are written once and render as Google style."""

from __future__ import annotations

import inspect

import pytest
from sphinx.ext.napoleon import Config, GoogleDocstring

import captum_concepts.visualization as viz
from captum_concepts.visualization._common import DOC_ENTRIES, fill_doc

FUNCTIONS = [getattr(viz, name) for name in viz.__all__]


def test_fill_doc_puts_entries_at_the_placeholders_indentation():
    def f(use_pyplot=True):
        """Summary.

        Args:
            %(use_pyplot)s

        Returns:
            nothing.
        """

    doc = fill_doc(f).__doc__
    first, second = DOC_ENTRIES["use_pyplot"].split("\n")
    assert "%(" not in doc
    assert f"\n            {first}\n            {second}\n\n        Returns:" in doc
    assert second.startswith("    ")  # the continuation line stays indented under its entry


def test_fill_doc_refuses_an_unknown_name():
    def f():
        """Summary.

        Args:
            %(no_such_entry)s
        """

    with pytest.raises(KeyError, match="no_such_entry"):
        fill_doc(f)


def _entries(rendered: str) -> dict:
    """``{parameter: its text, continuation lines joined}`` from napoleon's ``:param name: text``."""
    out, name = {}, None
    for line in rendered.splitlines():
        if line.startswith(":param "):
            name, text = line[len(":param ") :].split(":", 1)
            out[name] = text.strip()
        elif name is not None and line.startswith(" "):
            out[name] += " " + line.strip()
        else:
            name = None
    return out


@pytest.mark.parametrize("fn", FUNCTIONS, ids=[f.__name__ for f in FUNCTIONS])
def test_every_parameter_is_one_napoleon_entry(fn):
    doc = inspect.cleandoc(fn.__doc__)
    assert "%(" not in doc
    entries = _entries(str(GoogleDocstring(doc, Config(napoleon_use_param=True))))
    assert sorted(entries) == sorted(inspect.signature(fn).parameters)
    if "%(figure_args)s" in inspect.getsource(fn):  # the shared text, whole, under its own name
        for name in ("plt_fig_axis", "title", "fig_size", "use_pyplot"):
            shared = " ".join(DOC_ENTRIES[name].split())
            assert f"{name}: {entries[name]}" == shared
