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
- the fitted state is the class's declared ``_fitted_attributes`` (:class:`Fitted` JSON
  values, :class:`FittedTensor` tensors; an estimator subclasses :class:`FittedSpec` for any
  other kind), written by :func:`save_estimator` and read back by :func:`load_estimator`,
  where :class:`StateReader` checks every value's presence, type (with the package's
  constraints), dtype, shape, finiteness and range, with a ``ValueError`` naming the file;
  no attribute is set before all of them are read.

The model is never saved: a loaded estimator gets the ``model`` passed to
``load`` (or ``est.model = model`` later), and only methods that run the model
need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..._utils.layers import layer_name
from ..._utils.persistence import UNSAVED, PathLike, decode_params, encode_params, load_state, save_state
from ..._utils.validation import Constraint, Int, validate_params
from ..._utils.warn import warn_user

__all__ = [
    "FittedSpec",
    "Fitted",
    "FittedTensor",
    "CONCEPT_NAMES",
    "tag_names",
    "untag_names",
    "save_estimator",
    "load_estimator",
    "clone_with_layer_names",
]


class StateReader:
    """Checked access to a loaded file's tensors and fitted values; errors name the file.

    JSON values are checked with the package's constraints (:class:`Int`, :class:`RealNumber`,
    :class:`Bool`, :class:`ListOf`, ...), as constructor parameters are.
    """

    def __init__(self, tensors: Dict[str, torch.Tensor], fitted: Any, path: str) -> None:
        self.tensors = tensors
        self.path = path
        if not isinstance(fitted, dict):
            raise self.error("its fitted state is missing")
        self.fitted = fitted

    def error(self, problem: str) -> ValueError:
        return ValueError(f"path={self.path!r} is corrupted: {problem}")

    def value(self, key: str, rule: Constraint) -> Any:
        """A fitted JSON value that satisfies ``rule`` (``bool`` is never a number here)."""
        if key not in self.fitted:
            raise self.error(f"{key!r} is missing")
        v = self.fitted[key]
        if not rule.holds(v):
            shown = repr(v[:8]) + ("..." if len(v) > 8 else "") if isinstance(v, list) else repr(v)
            raise self.error(f"{key!r} must be {rule.describe()}, got {shown} ({type(v).__name__})")
        return v

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


# ---------------------------------------------------------------------- fitted attributes
State = Dict[str, Any]
Check = Callable[[Any, State, Any], Optional[str]]
"""``check(value, state, est)``: the problem with a restored value (None: fine). ``state`` holds the
attributes restored before it (declaration order), by attribute name."""


def _plain(value: Any) -> Any:
    """A fitted value in JSON form: tuples become lists, numpy scalars Python numbers."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class FittedSpec:
    """One declared fitted attribute: ``dump`` writes it, ``read`` restores it (checked)."""

    attr: str

    @property
    def key(self) -> str:
        """The saved name: the attribute without its leading and trailing underscores."""
        return self.attr.strip("_")

    def dump(self, est: Any, tensors: Dict[str, torch.Tensor], values: State) -> None:
        raise NotImplementedError

    def read(self, reader: StateReader, state: State, est: Any) -> None:
        raise NotImplementedError

    @staticmethod
    def _check(check: Optional[Check], value: Any, state: State, est: Any, reader: StateReader) -> None:
        problem = None if check is None else check(value, state, est)
        if problem is not None:
            raise reader.error(problem)


def _resolve(spec: Any, est: Any, state: State) -> Any:
    return spec(est, state) if callable(spec) else spec


@dataclass(frozen=True)
class Fitted(FittedSpec):
    """A fitted attribute saved as a JSON value under ``attr`` without its underscores.

    Attributes:
        attr (str): the attribute (``"n_iter_"`` is saved as ``"n_iter"``).
        rule (Constraint): what the saved value must be.
        decode (callable, optional): JSON value -> attribute (e.g. ``tuple``).
        encode (callable, optional): attribute -> JSON value (default: lists for tuples, Python
            numbers for numpy ones).
        check (callable, optional): ``check(value, state, est)``, a problem text or None, for rules
            that tie the value to those restored before it.
    """

    rule: Constraint
    decode: Optional[Callable[[Any], Any]] = None
    encode: Optional[Callable[[Any], Any]] = None
    check: Optional[Check] = None

    def dump(self, est: Any, tensors: Dict[str, torch.Tensor], values: State) -> None:
        value = getattr(est, self.attr)
        values[self.key] = self.encode(value) if self.encode is not None else _plain(value)

    def read(self, reader: StateReader, state: State, est: Any) -> None:
        value = reader.value(self.key, self.rule)
        self._check(self.check, value, state, est, reader)
        state[self.attr] = value if self.decode is None else self.decode(value)


@dataclass(frozen=True)
class FittedTensor(FittedSpec):
    """A fitted tensor saved under ``attr`` without its underscores.

    ``dtype`` and ``shape`` are values or callables ``(est, state)`` (a shape entry None: any
    size); values must be finite and within ``[low, high]``.
    """

    dtype: Any = None
    shape: Any = None
    low: Optional[float] = None
    high: Optional[float] = None
    check: Optional[Check] = None

    def dump(self, est: Any, tensors: Dict[str, torch.Tensor], values: State) -> None:
        tensors[self.key] = getattr(est, self.attr)

    def read(self, reader: StateReader, state: State, est: Any) -> None:
        dtype, shape = _resolve(self.dtype, est, state), _resolve(self.shape, est, state)
        value = reader.tensor(self.key, dtype, shape, self.low, self.high)
        self._check(self.check, value, state, est, reader)
        state[self.attr] = value


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


class _ConceptNames(Constraint):
    """The saved form of :func:`tag_names`: a list of distinct ``["int", int]`` / ``["str", str]`` pairs."""

    def describe(self) -> str:
        return "a list of distinct [type, value] concept name pairs (['int', 3] or ['str', 'dog'])"

    def holds(self, value: Any) -> bool:
        if type(value) is not list or not all(type(v) is list and len(v) == 2 for v in value):
            return False
        named = all((k == "int" and Int().holds(v)) or (k == "str" and isinstance(v, str)) for k, v in value)
        return named and len({tuple(v) for v in value}) == len(value)


CONCEPT_NAMES = _ConceptNames()


def untag_names(tagged: List[List[Any]]) -> List[Any]:
    """Inverse of :func:`tag_names` (``tagged`` checked against :data:`CONCEPT_NAMES`)."""
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
    """Write a fitted estimator to ``path``: its parameters (``get_params(deep=False)`` but the
    runtime ones, layers as names) and fitted state, never the model."""
    model, params = getattr(est, "model", None), est.get_params(deep=False)
    saved = {k: _layers_as_names(model, k, v) for k, v in params.items() if k not in est._runtime_params}
    params, unsaved = encode_params(saved)
    tensors: Dict[str, torch.Tensor] = {}
    fitted: State = {}
    for spec in type(est)._fitted_attributes:
        spec.dump(est, tensors, fitted)
    meta = {"params": params, "unsaved_params": unsaved, "fitted": fitted}
    save_state(path, type(est)._persistence_kind, tensors, meta)


def load_estimator(cls: type, path: PathLike, model: Optional[nn.Module], overrides: Dict[str, Any]) -> Any:
    """Read a :func:`save_estimator` file into a new ``cls``; ``overrides`` set (unsaved) parameters.

    Raises:
        TypeError: unknown ``overrides``, or a ``model`` for a class that takes none (before the
            file is read).
        ValueError: naming ``path``, for anything wrong with the file's content (whatever error
            the content would raise inside: decoding, the constructor, the fitted-state checks).
    """
    names = set(cls._get_param_names())
    allowed = names - {"model"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise TypeError(f"load() got unknown parameters {bad}; {cls.__name__} takes {sorted(allowed)}")
    if "model" not in names and model is not None:
        raise TypeError(f"{cls.__name__} takes no model")
    tensors, meta = load_state(path, cls._persistence_kind)
    path = str(path)
    try:
        params, checked = _file_params(cls, path, meta, overrides)
        est = cls(**params, **({"model": model} if "model" in names else {}))
        try:
            validate_params(est, {k: v for k, v in cls._parameter_constraints.items() if k in checked})
        except (TypeError, ValueError) as err:
            raise ValueError(f"path={path!r} is corrupted: {err}") from None
        reader, state = StateReader(tensors, meta.get("fitted"), path), {}
        for spec in cls._fitted_attributes:  # all read and checked before any is set
            spec.read(reader, state, est)
        for attr, value in state.items():
            setattr(est, attr, value)
        return est
    except (TypeError, ValueError, OverflowError, RuntimeError, IndexError, KeyError, AttributeError) as err:
        if isinstance(err, ValueError) and str(err).startswith(f"path={path!r}"):
            raise
        raise ValueError(
            f"path={path!r} is corrupted: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
        ) from None


def _file_params(
    cls: type, path: str, meta: Dict[str, Any], overrides: Dict[str, Any]
) -> Tuple[Dict[str, Any], set]:
    """A loaded file's constructor parameters with ``overrides`` (unsaved ones None, with a
    warning), and the names of those read from the file (checked against the constraints)."""
    params = decode_params(meta.get("params"), f"path={path!r}")
    unsaved = meta.get("unsaved_params", [])
    unknown = sorted(set(params) - (set(cls._get_param_names()) - {"model"}))
    if unknown:
        raise ValueError(
            f"path={path!r} holds parameters {unknown} that {cls.__name__} does not take "
            f"(saved by another version or a subclass?)"
        )
    if not isinstance(unsaved, list) or any(params.get(n, None) != UNSAVED for n in unsaved):
        raise ValueError(f"path={path!r} is corrupted: bad list of unsaved parameters")
    missing = [n for n in unsaved if n not in overrides]
    if missing:
        warn_user(
            f"{cls.__name__}.load: {missing} could not be saved (no JSON form, e.g. a callable) and "
            f"are set to None; pass them again: {cls.__name__}.load(path, model, "
            + ", ".join(f"{n}=..." for n in missing)
            + ")"
        )
    checked = set(params) - set(unsaved) - set(overrides)
    return {**params, **dict.fromkeys(unsaved), **overrides}, checked
