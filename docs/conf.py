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

# What every example on the API pages starts from (tests/test_docstring_examples.py runs them so).
EXAMPLES_START = [
    "Each page has an example. The examples start from the digits and a small CNN trained on them",
    "(seconds on a CPU); everything else an example uses, it imports or creates::",
    "",
    "    import torch",
    "    from torch import nn",
    "    from captum_concepts.data import load_digits_tensors, train_digits_cnn",
    "",
    "    data = load_digits_tensors()  # scikit-learn's 1,797 digits, (N, 1, 8, 8) in [0, 1]",
    "    model = train_digits_cnn(data).model  # ~98 % test accuracy",
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
             *EXAMPLES_START, "",
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


PAPER_LINKS = {
    "Explaining, Evaluating and Enhancing Neural": "https://arxiv.org/abs/2202.09374",
    "Semantics for Global and Local Interpretation": "https://arxiv.org/abs/1910.09085",
    "Analyzing Representations inside Convolutional": "https://arxiv.org/abs/2012.12516",
}
FIGURE_COMMENT = re.compile(r"^# Figure: (.+)$", re.M)


def api_names() -> dict:
    """``{short name: full name}`` of every public name (``EmbeddingAttribution``) and of its
    classes' public methods (``SemanticVector.relevance``), for links from the tutorials."""
    names = {}
    modules = public_modules()
    for module in modules[1:]:
        for attr in module.__all__:
            obj = getattr(module, attr)
            documented_here = home_of(obj, attr, modules) == module.__name__
            if isinstance(obj, type(sys)) or not callable(obj) or not documented_here:
                continue
            names[attr] = f"{module.__name__}.{attr}"
            if inspect.isclass(obj):
                for member in dir(obj):
                    public = not member.startswith("_") and member not in HIDDEN_MEMBERS
                    if public and callable(getattr(obj, member)):
                        names[f"{attr}.{member}"] = f"{module.__name__}.{attr}.{member}"
    return names


def link_markdown(text: str, names: dict) -> str:
    """A tutorial's markdown with each public name in code (```EmbeddingAttribution```,
    ```sv.relevance()``` is not one) linked to its API page, and each paper title to its arXiv page."""

    def link(match: re.Match) -> str:
        code = match.group(1)
        bare = code[:-2] if code.endswith("()") else code
        full = names.get(bare)
        return f"{{py:obj}}`{code} <{full}>`" if full else match.group(0)

    text = re.sub(r"(?<![`{])`([A-Za-z_][\w.]*(?:\(\))?)`(?!`)", link, text)
    for title_start, url in PAPER_LINKS.items():
        text = re.sub(r"\*\*(" + re.escape(title_start) + r"[^*]*)\*\*", rf"**[\1]({url})**", text)
    return text


def site_notebook(text: str, names: dict) -> str:
    """The executed notebook as the site shows it: API names and papers linked in its markdown,
    and each figure given the alt text of its cell's ``# Figure: ...`` comment."""
    import json

    nb = json.loads(text)
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            cell["source"] = link_markdown(source, names)
        elif (alt := FIGURE_COMMENT.search(source)) is not None:
            cell.setdefault("metadata", {}).setdefault("mystnb", {})["image"] = {"alt": alt.group(1).strip()}
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def tutorial_copies() -> None:
    """Copy the executed notebooks of ``tutorials/`` (their outputs are what the site shows), with
    the links and alt texts of :func:`site_notebook`."""
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    wanted = {nb.name for nb in (ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb")}
    names = api_names()
    for nb in (ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"):
        write_if_changed(target / nb.name, site_notebook(nb.read_text(encoding="utf-8"), names))
    for stale in target.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    tutorial_thumbnails(target)


def tutorial_thumbnails(notebooks: Path) -> None:
    """The first figure of each executed notebook, as ``docs/tutorials/thumbs/NN.png`` (the
    tutorial index shows it beside the tutorial's one-line summary)."""
    import base64
    import json

    thumbs = notebooks / "thumbs"
    thumbs.mkdir(exist_ok=True)
    for nb in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        pngs = [out["data"]["image/png"] for cell in cells for out in cell.get("outputs", [])
                if "image/png" in out.get("data", {})]
        if pngs:
            data = base64.b64decode("".join(pngs[0]) if isinstance(pngs[0], list) else pngs[0])
            path = thumbs / f"{nb.name[:2]}.png"
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)


# Members that base classes of other projects add and that say nothing about our classes: Captum's
# asynchronous entry (not supported here) and the convergence-delta flag of its attribution bases.
HIDDEN_MEMBERS = {"attribute_future", "has_convergence_delta", "compute_convergence_delta"}


def skip_member(app, what, name, obj, skip, options):
    """Hide scikit-learn's generated metadata-routing setters (``set_fit_request`` ...) and
    :data:`HIDDEN_MEMBERS`."""
    if re.fullmatch(r"set_\w+_request", name) or name in HIDDEN_MEMBERS:
        return True
    return None


def public_bases(app, name, obj, options, bases: list) -> None:
    """Show a class's public bases only: a private base of the package (``_ConceptEstimator``) is
    replaced by its own bases, so a page never names a class the site does not document."""
    def is_private(cls) -> bool:
        module = getattr(cls, "__module__", "")
        return module.startswith("captum_concepts") and (
            cls.__name__.startswith("_") or not any(
                getattr(importlib.import_module(m.__name__), cls.__name__, None) is cls
                for m in public_modules()))

    resolved: list = []
    pending = list(bases)
    while pending:
        base = pending.pop(0)
        if is_private(base):
            pending[:0] = list(base.__bases__)
        elif base not in resolved and base is not object:
            resolved.append(base)
    bases[:] = resolved or [object]


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


# "See also" of each public name: its neighbours, the Methods section that states it and the
# tutorial that uses it. A group lists names (relative to ``captum_concepts``) and references.
T = "/tutorials/"
SEE_ALSO_GROUPS = [
    (["attr.EmbeddingAttribution", "attr.aggregate", "attr.upsample_maps", "attr.choose_strategy",
      "attr.ForwardModeUnsupported", "attr.Plan", "attr.PassCosts",
      "visualization.visualize_embedding_attributions",
      "visualization.visualize_attribution_grid", "metrics.score_curve"],
     [":ref:`methods-embedding`", f":doc:`{T}01_embedding_attributions_and_scores`"]),
    (["attr.tokens_to_grid", "attr.channels_last", "attr.EmbeddingAttribution"],
     [":ref:`methods-layouts`", f":doc:`{T}05_your_own_model`"]),
    (["attr.as_captum_layer_attr", "attr.as_image_attr", "attr.as_captum_image", "attr.as_input_attr",
      "metrics.embedding_forward_func", "metrics.embedding_infidelity",
      "visualization.overlay_attribution", "attr.EmbeddingAttribution"],
     [":ref:`methods-embedding`", f":doc:`{T}05_your_own_model`"]),
    (["attr.SimilarityAttribution", "visualization.visualize_similarity_maps",
      "visualization.visualize_correspondence", "attr.EmbeddingAttribution"],
     [":ref:`methods-similarity`", f":doc:`{T}06_concept_maps_and_similarity`"]),
    (["metrics.noise_score", "metrics.noise_benchmark", "metrics.variance_score", "metrics.drift_score",
      "metrics.score_curve", "metrics.ScoreCurve", "visualization.visualize_score_curve"],
     [":ref:`methods-scores`", ":doc:`/evidence`", f":doc:`{T}01_embedding_attributions_and_scores`",
      f":doc:`{T}04_training_with_score_constraints`"]),
    (["concept.SemanticVector", "concept.ConceptRanking", "concept.PerturbationResult",
      "concept.channel_masks", "visualization.visualize_relevance_matrix", "attr.SemanticGuidedBackprop"],
     [":ref:`methods-semantic-vectors`", f":doc:`{T}02_semantic_vectors_and_saliency`"]),
    (["attr.SemanticGuidedBackprop", "attr.SemanticGradientInput", "attr.SemanticMaskSource",
      "metrics.pointing_game", "metrics.pointing_game_curve", "visualization.visualize_pointing_game_curve",
      "concept.SemanticVector"],
     [":ref:`methods-semantic-saliency`", f":doc:`{T}02_semantic_vectors_and_saliency`"]),
    (["concept.CoupledNMFConcepts", "concept.OutOfCore", "concept.ActivationStore",
      "visualization.visualize_concept_grid", "visualization.visualize_similarity_matrices",
      "visualization.visualize_tcav_scores"],
     [":ref:`methods-coupled-nmf`", f":doc:`{T}03_coupled_nmf_concepts_and_tcav`"]),
    (["concept.concept_presence_maps", "concept.concept_attribution_maps", "concept.concept_importance",
      "concept.class_importance", "concept.ConceptImportance", "concept.concept_sobol_indices",
      "visualization.visualize_concept_maps", "visualization.visualize_concept_importance",
      "concept.CoupledNMFConcepts"],
     [":ref:`methods-concept-maps`", f":doc:`{T}06_concept_maps_and_similarity`"]),
    (["data.DigitsData", "data.load_digits_tensors", "data.DigitsCNN", "data.TinyTextTransformer",
      "data.TrainResult", "data.accuracy", "data.train_classifier", "data.train_digits_cnn",
      "data.pretrained_digits_cnn", "data.TwoDigitCanvas", "data.make_two_digit_canvas",
      "data.load_fashion_mnist", "data.FashionMNISTData"],
     [":doc:`/quickstart`", ":doc:`/evidence`"]),
    (["distributed.RankFailedError", "distributed.all_gather_objects", "distributed.all_reduce_max",
      "distributed.all_reduce_mean", "distributed.all_reduce_min", "distributed.all_reduce_sum",
      "distributed.gather_columns", "distributed.get_rank", "distributed.get_world_size",
      "distributed.is_distributed", "distributed.shard_offset", "distributed.shard_range",
      "concept.CoupledNMFConcepts"],
     [":ref:`methods-coupled-nmf`"]),
    (["testing.count_hooks", "testing.model_state", "testing.assert_same_state", "testing.run_local_ranks"],
     [":doc:`/reliability`"]),
]


def see_also_table() -> dict:
    """``{full name: (neighbour full names, references)}`` from :data:`SEE_ALSO_GROUPS`."""
    table: dict = {}
    for names, refs in SEE_ALSO_GROUPS:
        full = [f"captum_concepts.{n}" for n in names]
        for name in full:
            neighbours, references = table.setdefault(name, ([], []))
            neighbours += [n for n in full if n != name and n not in neighbours]
            references += [r for r in refs if r not in references]
    return table


SEE_ALSO = see_also_table()


def add_see_also(app, what, name, obj, options, lines: list) -> None:
    """Append the "See also" of :data:`SEE_ALSO_GROUPS` to a public name's docstring."""
    if name not in SEE_ALSO:
        return
    neighbours, references = SEE_ALSO[name]
    links = [f":py:obj:`~{n}`" for n in neighbours] + references
    lines += ["", ".. seealso::", "", "   " + ", ".join(links) + "."]


# Pages written for maintainers: they may name the package's private modules and helpers.
MAINTAINER_PAGES = {"architecture.html", "contributing.html", "benchmarks_log.html", "changelog.html"}
# What a user page must not show: a private class or module of the package, an internal helper,
# an issue number or a reference to the development specification.
NOT_ON_USER_PAGES = re.compile(
    r"\b(ModelGuard|_ConceptEstimator|_CoupledNMF\w*|_SemanticGradientBase|captum_concepts\.\w+\._core"
    r"|captum_concepts\._utils|_utils\.\w+)\b|\bissue #?\d+|\bSPEC\b|\bSPEC\.md"
)


def check_user_pages(app, exception) -> None:
    """Fail the build when a user page shows what :data:`NOT_ON_USER_PAGES` forbids, or an API
    page of a public name has no example."""
    if exception is not None or app.builder.name != "html":
        return
    out = Path(app.outdir)
    problems = []
    for page in sorted(out.rglob("*.html")):
        rel = page.relative_to(out).as_posix()
        generated = rel.startswith(("_modules/", "_static/", "genindex", "search", "py-modindex"))
        if generated or rel in MAINTAINER_PAGES:
            continue
        text = page.read_text(encoding="utf-8")
        text = re.sub(r"<(script|style)\b.*?</\1>", "", text, flags=re.S)
        text = re.sub(r"<[^>]+>", " ", text)
        problems += [f"{rel}: {m.group(0)!r}" for m in NOT_ON_USER_PAGES.finditer(text)]
        if CHECK_EXAMPLES and rel.startswith("api/generated/") and "Example" not in text:
            problems.append(f"{rel}: no example")
        if rel.startswith("api/generated/") and rel.endswith(".html") and "See also" not in text:
            problems.append(f"{rel}: no See also (add the name to SEE_ALSO_GROUPS)")
    if problems:
        raise RuntimeError("user pages show maintainer material:\n  " + "\n  ".join(problems))


CHECK_EXAMPLES = True


def setup(app):
    app.connect("autodoc-skip-member", skip_member)
    app.connect("autodoc-process-bases", public_bases)
    app.connect("autodoc-process-docstring", add_see_also)
    app.connect("build-finished", check_user_pages)
    app.connect("missing-reference", resolve_reference, priority=900)


api_pages()
cli_help()
tutorial_copies()
