"""Write the intersphinx inventories (``*.inv``) that the documentation links external names with.

The site is built offline (``python -m sphinx -W -b html docs docs/_build/html`` runs without a
network, in CI too), so ``docs/conf.py`` cannot download the ``objects.inv`` files of PyTorch,
Captum, NumPy, Python, scikit-learn and Matplotlib. This script writes small ones instead, in
Sphinx's inventory format version 2, next to itself. They cover only the external names that these
docs use (in type hints, docstring type fields, base classes and ``:class:`` roles); each entry
points at the page of that object on the project's own documentation site.

Every name is imported first, so a name that the installed packages no longer have fails here
instead of becoming a dead link. A class is also registered under the path where it is defined
(``torch.nn.modules.module.Module`` for ``torch.nn.Module``), because autodoc writes type hints
with that path; and a few short spellings used in docstring type fields (``Tensor``,
``nn.Module``) are registered as aliases of the full name.

Regenerate after a docstring or type hint starts using a new external name (the build with
``nitpicky = True`` then fails with "reference target not found"): add the name to ``NAMES`` below
and run, from the repository root::

    python docs/_inventories/make_inventories.py

then commit the changed ``docs/_inventories/*.inv``.
"""

from __future__ import annotations

import importlib
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# project -> (documentation root, {name: (role, page relative to the root, anchor or None)}).
# Anchor None means "#" + the name itself (Sphinx's default anchor for an object).
TORCH = "https://pytorch.org/docs/stable/"
NAMES = {
    "torch": (TORCH, {
        "torch.Tensor": ("class", "tensors.html", None),
        "torch.nn.Module": ("class", "generated/torch.nn.Module.html", None),
        "torch.dtype": ("class", "tensor_attributes.html", None),
        "torch.device": ("class", "tensor_attributes.html", None),
        "torch.float32": ("data", "tensor_attributes.html", "torch.dtype"),
        "torch.float16": ("data", "tensor_attributes.html", "torch.dtype"),
        "torch.float64": ("data", "tensor_attributes.html", "torch.dtype"),
        "torch.topk": ("function", "generated/torch.topk.html", None),
        "torch.return_types.topk": ("class", "generated/torch.topk.html", "torch.topk"),
        "torch.compile": ("function", "generated/torch.compile.html", None),
        "torch.autograd.grad": ("function", "generated/torch.autograd.grad.html", None),
        "torch.func.jvp": ("function", "generated/torch.func.jvp.html", None),
        "torch.func.vmap": ("function", "generated/torch.func.vmap.html", None),
        "torch.inference_mode": ("class", "generated/torch.inference_mode.html", None),
        "torch.no_grad": ("class", "generated/torch.no_grad.html", None),
        "torch.utils.data.DataLoader": ("class", "data.html", None),
        "torch.utils.data.Dataset": ("class", "data.html", None),
        "torch.nn.Sequential": ("class", "generated/torch.nn.Sequential.html", None),
        "torch.nn.ReLU": ("class", "generated/torch.nn.ReLU.html", None),
    }),
    "captum": ("https://captum.ai/api/", {
        "captum.attr.InputXGradient": ("class", "input_x_gradient.html", None),
        "captum.attr.GuidedBackprop": ("class", "guided_backprop.html", None),
        "captum.attr.Saliency": ("class", "saliency.html", None),
        "captum.attr.LayerGradientXActivation": ("class", "layer.html", None),
        "captum.attr.LayerGradCam": ("class", "layer.html", None),
        "captum.attr.LayerAttribution": ("class", "base_classes.html", None),
        "captum.attr.GradientAttribution": ("class", "base_classes.html", None),
        "captum.attr.Attribution": ("class", "base_classes.html", None),
        "captum.concept.Concept": ("class", "concept.html", None),
        "captum.concept.TCAV": ("class", "concept.html", None),
    }),
    "numpy": ("https://numpy.org/doc/stable/", {
        "numpy.ndarray": ("class", "reference/generated/numpy.ndarray.html", None),
        "numpy.memmap": ("class", "reference/generated/numpy.memmap.html", None),
    }),
    "python": ("https://docs.python.org/3/", {
        "os.PathLike": ("class", "library/os.html", None),
        "pathlib.Path": ("class", "library/pathlib.html", None),
    }),
    "sklearn": ("https://scikit-learn.org/stable/", {
        name: (role, f"modules/generated/{name}.html", None)
        for name, role in [
            ("sklearn.base.BaseEstimator", "class"),
            ("sklearn.base.TransformerMixin", "class"),
            ("sklearn.exceptions.NotFittedError", "exception"),
        ]
    }),
    "matplotlib": ("https://matplotlib.org/stable/", {
        "matplotlib.figure.Figure": ("class", "api/_as_gen/matplotlib.figure.Figure.html", None),
        "matplotlib.axes.Axes": ("class", "api/_as_gen/matplotlib.axes.Axes.html", None),
    }),
}

# Short spellings in docstring type fields ("Tensor or tuple of Tensors", "nn.Module") -> full name.
ALIASES = {
    "torch": {"Tensor": "torch.Tensor", "Tensors": "torch.Tensor", "nn.Module": "torch.nn.Module",
              "Module": "torch.nn.Module"},
    "python": {"PathLike": "os.PathLike"},
    "sklearn": {"NotFittedError": "sklearn.exceptions.NotFittedError"},
}


def resolve(name: str):
    """The object called ``name``, imported from the longest importable module prefix."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the installed package has no such name
        return obj
    return importlib.import_module(name)


def entries(project: str) -> list:
    """``(name, role, uri, anchor)`` rows of one project: its names, defining paths and aliases."""
    _, names = NAMES[project]
    rows = {}
    for name, (role, page, anchor) in names.items():
        obj = resolve(name)
        anchor = anchor or name
        rows[name] = (role, page, anchor)
        if isinstance(obj, type):  # also under the path autodoc writes in type hints
            defined = f"{obj.__module__}.{obj.__qualname__}"
            rows.setdefault(defined, (role, page, anchor))
    for alias, full in ALIASES.get(project, {}).items():
        rows.setdefault(alias, rows[full])
    return sorted((name, *row) for name, row in rows.items())


def write(project: str) -> Path:
    version = getattr(importlib.import_module({"python": "sys"}.get(project, project)), "__version__", "")
    if project == "python":
        import sys

        version = f"{sys.version_info.major}.{sys.version_info.minor}"
    header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n")
    lines = [f"{name} py:{role} 1 {page}#{anchor} -\n" for name, role, page, anchor in entries(project)]
    path = HERE / f"{project}.inv"
    path.write_bytes(header.encode() + zlib.compress("".join(lines).encode()))
    return path


if __name__ == "__main__":
    for project in NAMES:
        print(write(project).relative_to(HERE.parent.parent))
