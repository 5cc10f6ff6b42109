"""Every public name's docstring has an example, and every example runs.

An example is the indented block after ``Example::`` in a Google-style docstring. Examples start
from what the API reference's introduction states (``EXAMPLE_PRELUDE``): ``torch``, ``nn``,
``data`` (scikit-learn's digits, :func:`~captum_concepts.data.load_digits_tensors`) and ``model``
(the digits CNN trained on them, :func:`~captum_concepts.data.train_digits_cnn`); everything else
an example uses, it creates.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
import textwrap

import matplotlib
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

PUBLIC = [
    "captum_concepts.attr",
    "captum_concepts.concept",
    "captum_concepts.metrics",
    "captum_concepts.visualization",
    "captum_concepts.data",
    "captum_concepts.testing",
    "captum_concepts.distributed",
]
EXAMPLE = re.compile(
    r"^(?P<indent>[ \t]*)Examples?::[ \t]*\n(?P<body>(?:[ \t]*\n|(?P=indent)[ \t]+\S.*\n?)+)", re.M
)


def public_names() -> list:
    """``(full name, object)`` of every callable in a public module's ``__all__``, once each."""
    found, seen = [], set()
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.ismodule(obj) or not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            found.append((f"{module_name}.{attr}", obj))
    return found


def examples(obj) -> list:
    """The code of each ``Example::`` block of ``obj``'s own docstring (``>>>`` prompts removed)."""
    doc = inspect.cleandoc(obj.__doc__ or "") + "\n"
    blocks = []
    for match in EXAMPLE.finditer(doc):
        code = textwrap.dedent(match.group("body"))
        code = "\n".join(re.sub(r"^(>>> |\.\.\. |>>>$|\.\.\.$)", "", line) for line in code.splitlines())
        blocks.append(code)
    return blocks


NAMES = public_names()


def test_every_public_name_has_an_example():
    missing = [name for name, obj in NAMES if not examples(obj)]
    assert not missing, f"{len(missing)} public names without an Example:: block: {missing}"


@pytest.mark.parametrize("name,obj", NAMES, ids=[name for name, _ in NAMES])
def test_example_runs(name, obj, digits, trained_digits, tmp_path, monkeypatch):
    blocks = examples(obj)
    if not blocks:
        pytest.skip("no example (test_every_public_name_has_an_example reports it)")
    monkeypatch.chdir(tmp_path)  # an example that saves a file writes it here
    model = copy.deepcopy(trained_digits.model).eval()
    namespace = {"torch": torch, "nn": nn, "data": digits, "model": model}
    torch.manual_seed(0)
    for code in blocks:
        exec(compile(code, f"<example of {name}>", "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")
