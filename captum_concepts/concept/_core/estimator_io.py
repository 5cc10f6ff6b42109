"""``save`` / ``load`` of fitted concept estimators (private).

Built on :mod:`captum_concepts._utils.persistence` (checksummed, atomic,
pickle-free files). The estimator owns what is saved:

- the constructor parameters are ``get_params(deep=False)``, minus the names in
  the class's ``_runtime_params`` (the model, fit-time settings such as
  ``out_of_core``), so a new constructor parameter is saved and restored with
  no change here; layers given as modules of the model are stored by their
  dotted names; a parameter with no JSON form (e.g. a callable
  ``reshape_transform``) is recorded as unsaved and must be passed to ``load``
  again (a ``UserWarning`` says so when it is not);
- the fitted state comes from the estimator's ``_fitted_state()`` (tensors and
  JSON values) and goes back through ``_restore_fitted_state(reader)``, where
  :class:`StateReader` checks every value's presence, type, dtype, shape,
  finiteness and range, with a ``ValueError`` naming the file.

The model is never saved: a loaded estimator gets the ``model`` passed to
``load`` (or ``est.model = model`` later), and only methods that run the model
need it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..._utils.layers import layer_name
from ..._utils.persistence import UNSAVED, PathLike, decode_params, encode_params, load_state, save_state
from ..._utils.validation import validate_params
from ..._utils.warn import warn_user

__all__ = [
    "StateReader",
    "save_estimator",
    "load_estimator",
    "clone_with_layer_names",
    "fingerprint",
    "tag_names",
    "untag_names",
]


class StateReader:
    """Checked access to a loaded file's tensors and fitted values; errors name the file."""

    def __init__(self, tensors: Dict[str, torch.Tensor], fitted: Any, path: str) -> None:
        self.tensors = tensors
        self.path = path
        if not isinstance(fitted, dict):
            raise self.error("its fitted state is missing")
        self.fitted = fitted

    def error(self, problem: str) -> ValueError:
        return ValueError(f"path={self.path!r} is corrupted: {problem}")

    def value(self, key: str, kinds: Tuple[type, ...]) -> Any:
        """A fitted JSON value of one of ``kinds`` (``bool`` is never an ``int`` here)."""
        if key not in self.fitted:
            raise self.error(f"{key!r} is missing")
        v = self.fitted[key]
        if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
            raise self.error(
                f"{key!r} is a {type(v).__name__}, expected {' or '.join(k.__name__ for k in kinds)}"
            )
        return v

    def ints(self, key: str, low: Optional[int] = None, allow_none: bool = False) -> Optional[List[int]]:
        """A fitted list of ints (each ``>= low``), or None when ``allow_none``."""
        v = self.value(key, (list, type(None)) if allow_none else (list,))
        if v is None:
            return None
        if not all(type(i) is int and (low is None or i >= low) for i in v):
            raise self.error(f"{key!r} must hold ints{'' if low is None else f' >= {low}'}, got {v[:8]}")
        return list(v)

    def tensor(
        self,
        key: str,
        dtype: Optional[torch.dtype] = None,
        shape: Optional[Sequence[Optional[int]]] = None,
        low: Optional[float] = None,
        high: Optional[float] = None,
    ) -> torch.Tensor:
        """A saved tensor, checked: ``dtype``, ``shape`` (None: any size), finite, in ``[low, high]``."""
        if key not in self.tensors:
            raise self.error(f"{key!r} is missing")
        t = self.tensors[key]
        if dtype is not None and t.dtype != dtype:
            raise self.error(f"{key!r} has dtype {t.dtype}, expected {dtype}")
        if shape is not None and (
            t.dim() != len(shape) or any(s is not None and t.shape[i] != s for i, s in enumerate(shape))
        ):
            expected = tuple("*" if s is None else s for s in shape)
            raise self.error(f"{key!r} has shape {tuple(t.shape)}, expected {expected}")
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise self.error(f"{key!r} holds NaN or infinite values")
        if t.numel() and low is not None and float(t.min()) < low:
            raise self.error(f"{key!r} holds values below {low} (minimum {float(t.min()):.4g})")
        if t.numel() and high is not None and float(t.max()) > high:
            raise self.error(f"{key!r} holds values above {high} (maximum {float(t.max()):.4g})")
        return t


def fingerprint(*tensors: torch.Tensor, length: int = 10) -> str:
    """A short hex digest of the tensors' bytes (identifies one fit's factors)."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


# ---------------------------------------------------------------------- concept names
def tag_names(names: List[Any]) -> List[List[Any]]:
    """Concept names (str or int) as ``[type, value]`` pairs, so ``1`` and ``"1"`` stay apart."""
    tagged = []
    for name in names:
        if isinstance(name, (bool, np.bool_)) or not isinstance(name, (int, np.integer, str)):
            raise TypeError(
                f"concept names must be str or int to be saved, got {name!r} ({type(name).__name__})"
            )
        tagged.append(["str", name] if isinstance(name, str) else ["int", int(name)])
    return tagged


def untag_names(reader: StateReader, key: str) -> List[Any]:
    tagged = reader.value(key, (list,))
    if not all(
        isinstance(t, list)
        and len(t) == 2
        and ((t[0] == "int" and type(t[1]) is int) or (t[0] == "str" and isinstance(t[1], str)))
        for t in tagged
    ):
        raise reader.error("bad concept names")
    return [value for _, value in tagged]


# ---------------------------------------------------------------------- parameters
def _layers_as_names(model: Optional[nn.Module], argument: str, value: Any) -> Any:
    """Modules of ``model`` inside a parameter value -> their dotted names."""
    if isinstance(value, nn.Module):
        name = layer_name(model, value) if isinstance(model, nn.Module) else None
        if name is None:
            raise TypeError(
                f"{argument} must be a dotted layer name (or a module of the model) to be saved, "
                f"got a {type(value).__name__} that is not part of the model"
            )
        return name
    if isinstance(value, (list, tuple)):
        items = [_layers_as_names(model, f"{argument}[{j}]", v) for j, v in enumerate(value)]
        return type(value)(items) if type(value) in (list, tuple) else items
    return value


def saveable_params(est: Any) -> Dict[str, Any]:
    """``get_params(deep=False)`` without the runtime parameters, layers as names."""
    params = est.get_params(deep=False)
    return {
        name: _layers_as_names(getattr(est, "model", None), name, value)
        for name, value in params.items()
        if name not in type(est)._runtime_params
    }


def clone_with_layer_names(est: Any) -> Any:
    """scikit-learn's ``clone`` for estimators holding a model: layers that are modules of the
    model become their dotted names, so the clone's layers resolve inside the clone's (deep
    copied) model rather than pointing into the original one."""
    from sklearn.base import clone

    params = est.get_params(deep=False)
    model = params.get("model")
    new = {}
    for name, value in params.items():
        if name != "model":
            try:
                value = _layers_as_names(model, name, value)
            except TypeError:  # a module outside the model: cloned as is, fit() says what is wrong
                pass
        new[name] = clone(value, safe=False)
    return type(est)(**new)


def save_estimator(est: Any, path: PathLike) -> None:
    """Write a fitted estimator (parameters and fitted state, never the model) to ``path``."""
    est._check_fitted()
    params, unsaved = encode_params(saveable_params(est))
    tensors, fitted = est._fitted_state()
    meta = {"params": params, "unsaved_params": unsaved, "fitted": fitted}
    save_state(path, type(est)._persistence_kind, tensors, meta)


def load_estimator(cls: type, path: PathLike, model: Optional[nn.Module], overrides: Dict[str, Any]) -> Any:
    """Read a :func:`save_estimator` file into a new ``cls``; ``overrides`` set (unsaved) parameters."""
    tensors, meta = load_state(path, cls._persistence_kind)
    path = str(path)
    params = decode_params(meta.get("params"), f"path={path!r}")
    unsaved = meta.get("unsaved_params", [])
    names = set(cls._get_param_names())
    allowed = names - {"model"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"path={path!r} holds parameters {unknown} that {cls.__name__} does not take "
            f"(saved by another version or a subclass?)"
        )
    if not isinstance(unsaved, list) or any(params.get(n, None) != UNSAVED for n in unsaved):
        raise ValueError(f"path={path!r} is corrupted: bad list of unsaved parameters")
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise TypeError(f"load() got unknown parameters {bad}; {cls.__name__} takes {sorted(allowed)}")
    missing = [n for n in unsaved if n not in overrides]
    for name in unsaved:
        params[name] = None
    if missing:
        warn_user(
            f"{cls.__name__}.load: {missing} could not be saved (no JSON form, e.g. a callable) and "
            f"are set to None; pass them again: {cls.__name__}.load(path, model, "
            + ", ".join(f"{n}=..." for n in missing)
            + ")"
        )
    saved = set(params) - set(unsaved)
    params.update(overrides)
    if "model" in names:
        params["model"] = model
    elif model is not None:
        raise TypeError(f"{cls.__name__} takes no model")
    est = cls(**params)
    rules = {k: v for k, v in cls._parameter_constraints.items() if k in saved - set(overrides)}
    try:
        validate_params(est, rules)
    except (TypeError, ValueError) as err:
        raise ValueError(f"path={path!r} is corrupted: {err}") from None
    est._restore_fitted_state(StateReader(tensors, meta.get("fitted"), path))
    return est
