"""captum_concepts: embedding attributions, concept discovery and representation
scores that extend Captum.

Public names live in the subpackages (``captum_concepts.attr``, ``.concept``,
``.metrics``, ``.visualization``, ``.data``) and are re-exported here, so
``captum_concepts.EmbeddingAttribution`` works as well as
``captum_concepts.attr.EmbeddingAttribution``.

Subpackages are imported when first used (PEP 562), so ``import captum_concepts.attr``
loads the attributions without the concept estimators.
"""

from __future__ import annotations

import importlib
from typing import Any, List

__version__ = "0.1.0"

_SUBPACKAGES = ("attr", "concept", "data", "distributed", "metrics", "visualization")
_REEXPORTED = ("attr", "concept", "metrics")


def _all() -> List[str]:
    names = [*_SUBPACKAGES, "__version__"]
    for sub in _REEXPORTED:
        names += importlib.import_module(f".{sub}", __name__).__all__
    return names


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name == "__all__":
        value: Any = _all()
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:
        for sub in _REEXPORTED:
            module = importlib.import_module(f".{sub}", __name__)
            if name in module.__all__:
                value = getattr(module, name)
                break
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_all()))
