"""The API tables read well: every public docstring opens with one sentence that stands alone.

The API reference lists each public name with the first sentence of its docstring, cut where
Sphinx's autosummary sees a sentence end (a period followed by a space). An abbreviation there
("w.r.t.", "e.g.", "et al.", "eq.", "Fig.") cuts the sentence in the middle. And napoleon renders
an ``Args:`` entry that names several parameters ("a, b, c (float): ...") as one entry.
"""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

PUBLIC = [
    "captum_concepts",
    "captum_concepts.attr",
    "captum_concepts.concept",
    "captum_concepts.metrics",
    "captum_concepts.visualization",
    "captum_concepts.data",
    "captum_concepts.testing",
    "captum_concepts.distributed",
]
# a period followed by a space inside the opening sentence
ABBREVIATION = re.compile(r"\b(w\.r\.t|e\.g|i\.e|et al|eq|Eq|Fig|Figs|cf|vs|etc|resp|approx)\.(\s|$)")
MERGED_ENTRY = re.compile(r"\*{0,2}\w+(, \*{0,2}\w+)+( \([^)]*\))?: ")


def _documented() -> list:
    """``(name, object)`` of every public name and of the methods its classes define."""
    found, seen = [], set()
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if inspect.ismodule(obj) or not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            found.append((f"{module_name}.{attr}", obj))
            if inspect.isclass(obj):  # its methods, also those of the package's (private) bases
                own = [c for c in obj.__mro__ if c.__module__.startswith("captum_concepts")]
                methods = {}
                for cls in reversed(own):
                    methods.update(vars(cls))
                for key, value in methods.items():
                    if not key.startswith("_") and inspect.isfunction(value) and value.__doc__:
                        found.append((f"{module_name}.{attr}.{key}", value))
    return found


DOCUMENTED = _documented()


def _own_doc(obj) -> str:
    """The object's own docstring (not one inherited from Captum or Python)."""
    return inspect.cleandoc(obj.__doc__ or "")


def test_public_names_found():
    names = {name for name, _ in DOCUMENTED}
    assert len(DOCUMENTED) > 100
    assert "captum_concepts.EmbeddingAttribution" in names
    assert "captum_concepts.CoupledNMFConcepts.fit" in names


@pytest.mark.parametrize("name, obj", DOCUMENTED, ids=[name for name, _ in DOCUMENTED])
def test_first_sentence_stands_alone(name, obj):
    doc = _own_doc(obj)
    if not doc:
        return  # nothing of its own to check (an inherited docstring is its project's)
    paragraph = " ".join(doc.split("\n\n")[0].split())
    hit = ABBREVIATION.search(paragraph)
    assert hit is None, f"{name}: the table's summary would stop at {hit.group(0)!r}: {paragraph!r}"
    assert not re.match(r"(The|the) paper('s)?\b", paragraph), f"{name}: name the paper: {paragraph!r}"


@pytest.mark.parametrize("name, obj", DOCUMENTED, ids=[name for name, _ in DOCUMENTED])
def test_one_args_entry_per_parameter(name, obj):
    doc = _own_doc(obj)
    section = re.search(r"^(Args|Arguments|Parameters):\n(.*?)(^\S|\Z)", doc, re.S | re.M)
    if section is None:
        return
    lines = [line for line in section.group(2).splitlines() if line.strip()]
    indent = min(len(line) - len(line.lstrip()) for line in lines)  # the entries' own indentation
    entries = [line.strip() for line in lines if len(line) - len(line.lstrip()) == indent]
    merged = [entry for entry in entries if MERGED_ENTRY.match(entry)]
    assert not merged, f"{name}: one entry per parameter, got {merged}"
