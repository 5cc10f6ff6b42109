"""The subpackages form layers: ``attr`` never imports ``concept`` (concepts build on attributions,
not the other way round), and no two subpackages import each other, directly or through others."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "captum_concepts"


def _modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def _imports(path: Path) -> Iterator[str]:
    """Every module of the package that ``path`` imports, at top level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [
                f"{origin}.{a.name}" if _is_module(f"{origin}.{a.name}") else origin for a in node.names
            ]
        else:
            continue
        yield from (t for t in targets if t == "captum_concepts" or t.startswith("captum_concepts."))


def _part(dotted: str) -> str:
    """The subpackage (or top-level module) a module belongs to; ``""`` for the package itself."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> Dict[str, Set[str]]:
    edges: Dict[str, Set[str]] = {}
    for path in _modules():
        source = _part(_module_name(path))
        if source in ("", "__main__"):  # the package's re-exports and the CLI entry sit above all
            continue
        for target in _imports(path):
            dest = _part(target)
            if dest not in ("", source):
                edges.setdefault(source, set()).add(dest)
    return edges


def _cycle(edges: Dict[str, Set[str]]) -> List[str]:
    """One cycle of the graph (as a path), or ``[]``."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_attr_never_imports_concept():
    edges = _graph()
    assert "attr" in edges and "_utils" in edges["attr"]  # the scan sees attr's imports
    offenders = [
        f"{_module_name(p)} imports {t}"
        for p in _modules()
        if _part(_module_name(p)) == "attr"
        for t in _imports(p)
        if _part(t) == "concept"
    ]
    assert offenders == []


def test_subpackages_import_each_other_without_a_cycle():
    edges = _graph()
    assert "attr" in edges.get("concept", set())  # concepts build on attributions
    assert _cycle(edges) == []
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check finds one


def test_importing_attr_loads_no_concept_module():
    code = (
        "import sys, captum_concepts.attr\n"
        "print(sorted(m for m in sys.modules if m.startswith('captum_concepts.concept')))\n"
        "print('captum_concepts.attr._core.semantic_saliency' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, saliency = out.stdout.split("\n")[:2]
    assert saliency == "True"
    assert loaded == "[]"


def test_top_level_names_load_on_first_use():
    code = (
        "import sys, captum_concepts\n"
        "assert 'captum_concepts.concept' not in sys.modules\n"
        "from captum_concepts import SemanticVector, EmbeddingAttribution\n"
        "from captum_concepts import *\n"
        "assert SemanticVector is captum_concepts.concept.SemanticVector\n"
        "assert 'concept_sobol_indices' in dir(captum_concepts)\n"
        "assert 'channel_masks' in captum_concepts.__all__\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
