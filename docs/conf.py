"""Sphinx configuration of the captum_concepts documentation.

Build (offline, warnings as errors) from the repository root::

    python -m sphinx -W -b html docs docs/_build/html

Before reading the sources this file generates, under ``docs/api/`` and ``docs/tutorials/``
(both git-ignored): one reference page per public module, listing every name of the module's
``__all__`` (so a new public name or module appears without editing the docs), the command
line's ``--help`` texts, and copies of the executed tutorial notebooks.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import captum_concepts  # noqa: E402

project = "captum_concepts"
author = "captum_concepts developers"
copyright = "captum_concepts developers"
release = version = captum_concepts.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # ships MathJax 3 in _static/mathjax: formulas render without a network
    "sphinx.ext.viewcode",
    "myst_nb",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"captum_concepts {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]

# Captum-style Google docstrings: "Args:", "Returns:", "Example::".
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # an "Attributes:" section must not duplicate the dataclass fields
napoleon_use_rtype = False
strip_signature_backslash = True  # napoleon then escapes trailing underscores (``vectors_``)
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autosummary_generate = True
autosummary_ignore_module_all = False
add_module_names = False

# Every cross-reference must resolve: a dead one fails the build (with -W).
nitpicky = True
nitpick_ignore_regex = [
    # Google-style type fields are prose ("Tensor or tuple of Tensors, optional", "callable or
    # attribution object", '"data", None or (lo, hi)'); Sphinx looks up every word of them as a class.
    # Lower-case words, phrases, quoted values and shapes are prose, never names of objects.
    ("py:class", r"[a-z][a-z_]*"),
    ("py:class", r".*[ \"'/()-].*"),
]
# External names link to the projects' own documentation through inventories shipped in
# docs/_inventories/ (the build runs offline); docs/_inventories/make_inventories.py writes them.
intersphinx_mapping = {
    project: (url, f"_inventories/{project}.inv")
    for project, url in {
        "python": "https://docs.python.org/3/",
        "torch": "https://pytorch.org/docs/stable/",
        "captum": "https://captum.ai/api/",
        "numpy": "https://numpy.org/doc/stable/",
        "sklearn": "https://scikit-learn.org/stable/",
        "matplotlib": "https://matplotlib.org/stable/",
    }.items()
}

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the committed notebooks already hold their outputs
nb_merge_streams = True

# The papers the package implements, cited on the API index (the home page and Methods cite them too).
PAPERS = [
    "The methods come from three papers (see :doc:`../methods` for each equation):",
    "",
    "- Bertolini, Clevert & Montanari, *Explaining, Evaluating and Enhancing Neural Networks'",
    "  Learned Representations*, `arXiv:2202.09374 <https://arxiv.org/abs/2202.09374>`__:",
    "  :mod:`captum_concepts.attr` (embedding attributions) and :mod:`captum_concepts.metrics`.",
    "- Gu & Tresp, *Semantics for Global and Local Interpretation of Deep Neural Networks*,",
    "  `arXiv:1910.09085 <https://arxiv.org/abs/1910.09085>`__: semantic vectors",
    "  (:mod:`captum_concepts.concept`) and semantic saliency (:mod:`captum_concepts.attr`).",
    "- Saini & Papalexakis, *Analyzing Representations inside Convolutional Neural Networks*,",
    "  `arXiv:2012.12516 <https://arxiv.org/abs/2012.12516>`__: coupled-NMF concepts",
    "  (:mod:`captum_concepts.concept`).",
]

# Modules that are public but documented elsewhere (the command line has its own page).
NOT_IN_API = {"captum_concepts.cli"}


def public_modules() -> list:
    """``captum_concepts`` and each of its public subpackages/modules that has an ``__all__``."""
    found = [captum_concepts]
    for info in sorted(pkgutil.iter_modules(captum_concepts.__path__), key=lambda i: i.name):
        name = f"captum_concepts.{info.name}"
        if info.name.startswith("_") or name in NOT_IN_API:
            continue
        module = importlib.import_module(name)
        if hasattr(module, "__all__"):
            found.append(module)
    return found


def home_of(obj, name: str, modules: list) -> str | None:
    """The module that documents ``obj``: the first subpackage exporting it under ``name``."""
    for module in modules[1:]:
        if name in module.__all__ and getattr(module, name, None) is obj:
            return module.__name__
    return None


def summary(full_name: str) -> str:
    """The first sentence of the docstring of the object named ``full_name`` (as autosummary's)."""
    module, _, attr = full_name.rpartition(".")
    doc = inspect.getdoc(getattr(importlib.import_module(module), attr)) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0].rstrip(":")


def write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def title(text: str, underline: str = "=") -> str:
    return f"{text}\n{underline * len(text)}\n"


def api_pages() -> None:
    """One page per public module: its docstring, then a summary table of its ``__all__``."""
    modules = public_modules()
    api = DOCS / "api"
    keep = {api / "generated"}
    index = [title("API reference"), "", "Every name a user imports, by module.", "", *PAPERS, "",
             ".. toctree::", "   :maxdepth: 1", ""]
    for module in modules:
        name = module.__name__
        index.append(f"   {name}")
        here, elsewhere, submodules, data = [], [], [], []
        for attr in module.__all__:
            obj = getattr(module, attr)
            if isinstance(obj, type(sys)):
                submodules.append(obj.__name__)
            elif (home := home_of(obj, attr, modules) or name) != name:
                elsewhere.append(f"{home}.{attr}")
            elif callable(obj):
                here.append(attr)
                keep.add(api / "generated" / f"{name}.{attr}.rst")
            else:
                data.append(attr)
        lines = [title(f"``{name}``"), "", f".. automodule:: {name}", "", f".. currentmodule:: {name}", ""]
        if here:
            lines += [".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
            lines += [f"   {attr}" for attr in here] + [""]
        if submodules:
            lines += [title("Subpackages", "-"), ""]
            lines += [f"- :doc:`{sub}`" for sub in submodules if sub in {m.__name__ for m in modules}]
            lines += [""]
        if elsewhere:
            lines += [title("Re-exported names", "-"), "",
                      f"Also importable from ``{name}``; documented in their own module.", ""]
            lines += [f"- :py:obj:`{full}`: {summary(full)}" for full in elsewhere] + [""]
        for attr in data:  # constants: their value, not the docstring of their type
            lines += [f".. py:data:: {attr}", f"   :value: {getattr(module, attr)!r}", ""]
        page = api / f"{name}.rst"
        keep.add(page)
        write_if_changed(page, "\n".join(lines))
    keep.add(api / "index.rst")
    write_if_changed(api / "index.rst", "\n".join(index) + "\n")
    for stale in [*api.glob("*.rst"), *api.glob("generated/*.rst")]:
        if stale not in keep:  # a name or module that is no longer public
            stale.unlink()


def cli_help() -> None:
    """The ``--help`` text of ``captum-concepts`` and of each of its commands."""
    import argparse

    from captum_concepts.cli import build_parser

    parser = build_parser()
    parts = [("captum-concepts --help", parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                parts.append((f"captum-concepts {command} --help", sub.format_help()))
    text = []
    for heading, body in parts:
        text += [title(f"``{heading}``", "-"), "", ".. code-block:: text", ""]
        text += [f"   {line}".rstrip() for line in body.splitlines()] + [""]
    write_if_changed(DOCS / "api" / "generated" / "cli_help.rst.inc", "\n".join(text))


def tutorial_copies() -> None:
    """Copy the executed notebooks of ``tutorials/`` (their outputs are what the site shows)."""
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    wanted = {nb.name for nb in (ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb")}
    for nb in (ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"):
        copy = target / nb.name
        if not copy.exists() or copy.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, copy)
    for stale in target.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()


def skip_member(app, what, name, obj, skip, options):
    """Hide scikit-learn's generated metadata-routing setters (``set_fit_request`` ...)."""
    if re.fullmatch(r"set_\w+_request", name):
        return True
    return None


def imported(target: str):
    """The object ``target`` (a dotted path) names, or None."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def is_internal(target: str) -> bool:
    """Whether ``target`` names an object of a private module of the package (``_core``, ``_utils``).

    Only for names that exist: ``captum_concepts._utils.hooks.ModelGuard`` or a short name such as
    ``ModelGuard`` or ``choose_strategy`` defined in one of the package's private modules.
    """
    parts = target.split(".")
    for name, module in list(sys.modules.items()):
        if not name.startswith("captum_concepts") or module is None:
            continue
        private = any(p.startswith("_") and p != "__init__" for p in name.split("."))
        for start in ([len(name.split("."))] if target.startswith(name + ".") else [0]):
            obj = module
            for attr in parts[start:]:
                obj = getattr(obj, attr, None)
                if obj is None:
                    break
            defined_here = not (inspect.isclass(obj) or inspect.isroutine(obj)) or obj.__module__ == name
            if obj is not None and private and defined_here:  # not a re-export of a public name
                return True
    return False


def resolve_reference(app, env, node, contnode):
    """Resolve a short cross-reference the Python domain did not find, or render an internal one.

    Docstrings write ``:class:`EmbeddingAttribution``` or ``:meth:`SimilarityAttribution.attribute```
    from inside another module. Such a name links to the one documented object whose full name
    ends with it; a name that ends no documented object, or several, stays a dead reference (and
    fails the build). A reference to an internal helper (defined in a private module, which the
    site does not document) is shown as code without a link.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    domain = env.get_domain("py")
    found = [name for name in domain.objects
             if (name == target or name.endswith("." + target)) and not domain.objects[name].aliased]
    if len(found) > 1:  # ``:meth:`attribute``` in a class's docstring: that class's method
        scope = ".".join(p for p in (node.get("py:module"), node.get("py:class")) if p)
        found = [name for name in found if scope and name == f"{scope}.{target}"]
    if not found and target.startswith("captum_concepts.") and (obj := imported(target)) is not None:
        # a private path (``captum_concepts.attr._core.forward_mode.choose_strategy``) of an object
        # that is documented under its public name
        last = "." + target.rpartition(".")[2]
        found = [name for name in domain.objects
                 if name.endswith(last) and not domain.objects[name].aliased and imported(name) is obj]
    if len(found) == 1:
        from sphinx.util.nodes import make_refnode

        entry = domain.objects[found[0]]
        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, found[0])
    if not found and is_internal(target):
        return contnode
    return None


def setup(app):
    app.connect("autodoc-skip-member", skip_member)
    app.connect("missing-reference", resolve_reference, priority=900)


api_pages()
cli_help()
tutorial_copies()
