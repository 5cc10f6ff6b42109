"""``help(Class.__init__)`` shows each public class's own parameters (issue 27.4): not Captum's
``LayerAttribution.__init__`` docstring nor ``object``'s "Initialize self"."""

from __future__ import annotations

import importlib
import inspect

import pytest

SUBPACKAGES = ("captum_concepts.attr", "captum_concepts.concept", "captum_concepts.metrics")


def _public_classes():
    for name in SUBPACKAGES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                yield pytest.param(obj, id=f"{name.rsplit('.', 1)[1]}.{attr}")


def _parameters(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@pytest.mark.parametrize("cls", list(_public_classes()))
def test_init_help_names_the_class_and_each_of_its_parameters(cls):
    names = _parameters(cls)
    if not names:  # object.__init__ (named tuples, protocols): nothing to document
        return
    doc = inspect.getdoc(cls.__init__) or ""
    assert cls.__name__ in doc.splitlines()[0]
    assert "Initialize self" not in doc and "forward_func (Callable" not in doc
    missing = [n for n in names if n not in doc]
    assert not missing, f"{cls.__name__}.__init__ help misses {missing}"


def test_inherited_init_keeps_the_signature_and_works():
    from captum_concepts.attr import SemanticGradientInput, SemanticGuidedBackprop

    for cls in (SemanticGuidedBackprop, SemanticGradientInput):
        assert _parameters(cls)[:3] == ["model", "layer", "semantic_vectors"]
        assert inspect.getdoc(cls.__init__).startswith(f"Construct {cls.__name__}")
    assert SemanticGuidedBackprop.__init__ is not SemanticGradientInput.__init__
