"""``help(Class.__init__)`` shows the class's own parameters (private).

Python's ``inspect.getdoc`` gives a method without a docstring the docstring of the same method
in a base class: ``help(EmbeddingAttribution.__init__)`` printed Captum's
``LayerAttribution.__init__`` (whose parameters are not ours), ``help(SemanticVector.__init__)``
``object.__init__``'s "Initialize self". Our classes state their parameters once, in the class
docstring's ``Args:`` section (``Attributes:`` for data classes); :func:`document_inits` gives
each public class's ``__init__`` that section, so the parameters are written once and shown in
both places. Each subpackage calls it on its ``__all__``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, Iterable, List, Optional

__all__ = ["document_inits", "init_doc"]

_SECTIONS = ("Args:", "Attributes:")


def _section(doc: str, header: str) -> Optional[str]:
    lines = doc.splitlines()
    if header not in [line.strip() for line in lines if not line.startswith((" ", "\t"))]:
        return None
    start = next(i for i, line in enumerate(lines) if line.strip() == header and not line.startswith(" "))
    body: List[str] = [header]
    for line in lines[start + 1 :]:
        if line.strip() and not line.startswith((" ", "\t")):
            break
        body.append(line)
    return "\n".join(body).rstrip()


def init_doc(cls: type) -> str:
    """The docstring of ``cls.__init__``: a line naming the class and the ``Args:`` (else
    ``Attributes:``) section of the class docstring, else the whole class docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    section = next((s for s in (_section(doc, h) for h in _SECTIONS) if s is not None), None)
    head = f"Construct {cls.__name__} (the class docstring, ``help({cls.__name__})``, states the contract)."
    return f"{head}\n\n{section if section is not None else doc}".rstrip()


def _own_parameters(init: Any) -> bool:
    try:
        params = list(inspect.signature(init).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    return any(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def _own_copy(base_init: Any) -> Any:
    @functools.wraps(base_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base_init(self, *args, **kwargs)

    return __init__


def document_inits(namespace: Dict[str, Any], names: Iterable[str]) -> None:
    """Give the ``__init__`` of every class among ``names`` (in ``namespace``) :func:`init_doc`.

    An ``__init__`` inherited from a private base is wrapped in the class itself (same
    signature through ``__wrapped__``), so sibling classes keep their own docstrings; one
    inherited from ``object`` (named tuples, protocols) has no parameters to show and is left.
    """
    for name in names:
        cls = namespace.get(name)
        if not inspect.isclass(cls) or issubclass(cls, BaseException) or not _own_parameters(cls.__init__):
            continue
        if "__init__" in cls.__dict__:
            cls.__init__.__doc__ = init_doc(cls)
            continue
        init = _own_copy(cls.__init__)
        init.__doc__ = init_doc(cls)
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = init
