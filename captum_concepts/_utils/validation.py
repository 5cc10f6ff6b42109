"""Parameter checks, in one place (private).

Scalar checks (:func:`check_int`, :func:`check_real`, :func:`check_bool`,
:func:`check_option`) for function arguments; declarative constraint tables
for estimators, in the spirit of scikit-learn's ``_parameter_constraints``:
each estimator lists ``{parameter: constraint}`` and calls
:func:`validate_params` first thing in every ``fit*`` method, before any data
is read or any forward pass runs. :func:`check_fitted` is the one not-fitted
check; it raises scikit-learn's ``NotFittedError``. :func:`validated` is the one
decorator that runs these checks at a public entry (``fit*``, ``transform``,
``attribute``, analyses), together with :func:`check_grad_mode` for entries that
need gradients; a public entry the package calls from inside another skips the checks its
caller made. The constraints every subpackage shares (:data:`MODEL`, :data:`LAYER`,
:class:`ListOf`) and the one parser of Captum's ``target`` (:func:`target_index`) live here.

Every error names the parameter and the expected type or range. Wrong types
and wrong values both raise :class:`InvalidParameterError`, a subclass of
``ValueError`` and ``TypeError`` (as scikit-learn's error of the same name), so
either ``except`` clause catches it.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import sys
import threading
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
from sklearn.exceptions import NotFittedError

__all__ = [
    "InvalidParameterError",
    "NotFittedError",
    "check_int",
    "check_real",
    "check_bool",
    "check_option",
    "check_fitted",
    "seed_of",
    "Constraint",
    "Int",
    "RealNumber",
    "Bool",
    "Options",
    "InstanceOf",
    "Positives",
    "AnyOf",
    "LayerList",
    "ListOf",
    "MODEL",
    "LAYER",
    "DeviceSpec",
    "Indices",
    "index_tensor",
    "target_index",
    "NONE",
    "validate_params",
    "validated",
    "flag_parameters",
    "check_grad_mode",
]

F = TypeVar("F", bound=Callable[..., Any])


class InvalidParameterError(ValueError, TypeError):
    """A parameter of the wrong type or out of range (catch it as ``ValueError`` or ``TypeError``)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def _range_text(low: Any, high: Any, low_open: bool = False, high_open: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts)


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


# ---------------------------------------------------------------------- constraints
class Constraint:
    """One rule for one parameter: ``describe()`` for messages, ``holds(value)`` to test it."""

    def describe(self) -> str:
        raise NotImplementedError

    def holds(self, value: Any) -> bool:
        raise NotImplementedError

    def check(self, value: Any, name: str) -> None:
        if not self.holds(value):
            raise InvalidParameterError(f"{name} must be {self.describe()}, {_got(value)}")


@dataclass(frozen=True)
class Int(Constraint):
    """An integer (Python or numpy, never ``bool``) in ``[low, high]``."""

    low: Optional[int] = None
    high: Optional[int] = None

    def describe(self) -> str:
        bounds = _range_text(self.low, self.high)
        return f"an int {bounds}" if bounds else "an int"

    def holds(self, value: Any) -> bool:
        return (
            _is_int(value)
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
        )


@dataclass(frozen=True)
class RealNumber(Constraint):
    """A finite real number (int or float, Python or numpy, never ``bool``) within the bounds."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        bounds = _range_text(self.low, self.high, self.low_open, self.high_open)
        return f"a finite real number {bounds}" if bounds else "a finite real number"

    def holds(self, value: Any) -> bool:
        if not _is_real(value) or not math.isfinite(float(value)):
            return False
        v = float(value)
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        if self.high is not None and (v >= self.high if self.high_open else v > self.high):
            return False
        return True


@dataclass(frozen=True)
class Bool(Constraint):
    """``True`` or ``False`` (also ``numpy.bool_``)."""

    def describe(self) -> str:
        return "True or False"

    def holds(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values (compared with ``==``; ``None`` may be one of them)."""

    values: Tuple[Any, ...]

    def describe(self) -> str:
        if len(self.values) == 1:
            return repr(self.values[0])
        return "one of " + ", ".join(repr(v) for v in self.values)

    def holds(self, value: Any) -> bool:
        for option in self.values:
            if value is option:
                return True
            if isinstance(option, str) and isinstance(value, str) and value == option:
                return True
        return False


@dataclass(frozen=True)
class InstanceOf(Constraint):
    """An instance of ``types`` (``description`` names them in messages)."""

    types: Tuple[type, ...]
    description: str

    def describe(self) -> str:
        return self.description

    def holds(self, value: Any) -> bool:
        return isinstance(value, self.types)


@dataclass(frozen=True)
class Positives(Constraint):
    """A non-empty sequence (not a string) of finite real numbers ``> 0``."""

    def describe(self) -> str:
        return "a sequence of finite real numbers > 0"

    def holds(self, value: Any) -> bool:
        if (
            isinstance(value, (str, bytes))
            or not isinstance(value, (Sequence, np.ndarray))
            or len(value) == 0
        ):
            return False
        positive = RealNumber(low=0, low_open=True)
        return all(positive.holds(v) for v in value)


class AnyOf(Constraint):
    """Any one of several constraints (e.g. ``None`` or a positive int)."""

    def __init__(self, *constraints: Constraint) -> None:
        self.constraints = constraints

    def describe(self) -> str:
        texts = [c.describe() for c in self.constraints if c != NONE]
        if len(texts) < len(self.constraints):
            texts.append("None")
        return ", ".join(texts[:-1]) + " or " + texts[-1] if len(texts) > 1 else texts[0]

    def holds(self, value: Any) -> bool:
        return any(c.holds(value) for c in self.constraints)


class LayerList(Constraint):
    """A sequence (not a string) of layers: dotted names or modules."""

    def describe(self) -> str:
        return "a sequence of layers (dotted names or modules of the model)"

    def holds(self, value: Any) -> bool:
        return (
            isinstance(value, Sequence)
            and not isinstance(value, (str, bytes))
            and all(isinstance(v, (str, torch.nn.Module)) for v in value)
        )


class ListOf(Constraint):
    """A JSON list (exactly a ``list``) whose every item satisfies ``item``."""

    def __init__(self, item: Constraint) -> None:
        self.item = item

    def describe(self) -> str:
        return f"a list (each item {self.item.describe()})"

    def holds(self, value: Any) -> bool:
        return type(value) is list and all(self.item.holds(v) for v in value)


class DeviceSpec(Constraint):
    """None, a ``torch.device`` or a string ``torch.device`` accepts (``"cpu"``, ``"cuda:0"``)."""

    def describe(self) -> str:
        return "None, a torch.device or a device string such as 'cpu' or 'cuda:0'"

    def holds(self, value: Any) -> bool:
        if value is None or isinstance(value, torch.device):
            return True
        if not isinstance(value, str):
            return False
        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            return False
        return True


NONE = Options((None,))
MODEL = InstanceOf((torch.nn.Module,), "a torch.nn.Module")
LAYER = InstanceOf((str, torch.nn.Module), "a dotted layer name (str) or a module of the model")


_INDICES = "an int, a 1-D sequence, array or tensor of ints, or a 1-D boolean mask"


def index_tensor(value: Any, name: str, size: Optional[int] = None) -> torch.Tensor:
    """``value`` as a 1-D ``long`` tensor of indices into a dimension of ``size`` entries.

    Accepted: an int (numpy ints and integer 0-dim tensors too, never ``bool``); a 1-D sequence,
    numpy array or tensor of them; a 1-D boolean mask (a list of bools, a bool array or tensor),
    read as the indices where it is True. Without ``size`` (before the size is known, e.g. before
    a forward pass) only the form is checked and negative indices refused; a mask is then returned
    as given.

    Raises:
        InvalidParameterError: naming ``name``: not of these forms; empty; a mask whose length is
            not ``size`` or that selects nothing; an index ``< 0`` or ``>= size``.
    """
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise InvalidParameterError(f"{name} must be {_INDICES}, {_got(value)}")
    if _is_int(value):
        t = torch.tensor([int(value)])
    else:
        try:
            t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise InvalidParameterError(f"{name} must be {_INDICES}, got {value!r}") from None
        t = t.detach().cpu()
        if t.dim() == 0 and not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
            t = t.reshape(1)
        if t.dim() != 1 or (t.numel() and (t.is_floating_point() or t.is_complex())):
            raise InvalidParameterError(f"{name} must be {_INDICES}, got {value!r}")
    if t.numel() == 0:
        raise InvalidParameterError(f"{name} is empty (D = 0); select at least one dimension")
    if t.dtype == torch.bool:
        if size is None:
            return t
        if t.numel() != size:
            raise InvalidParameterError(
                f"{name} is a boolean mask of length {t.numel()}; a mask needs one entry per dimension "
                f"(D = {size})"
            )
        t = torch.nonzero(t).flatten()
        if t.numel() == 0:
            raise InvalidParameterError(f"{name} selects no dimension (D = 0); select at least one")
        return t
    t = t.long()
    bad = t[(t < 0) | (t >= size)] if size is not None else t[t < 0]
    if bad.numel():
        where = f"for D = {size}" if size is not None else "(indices are >= 0)"
        raise InvalidParameterError(f"{name} {bad.tolist()[:10]} out of range {where}")
    return t


def target_index(target: Any, n: int, required: str = "target is required") -> torch.Tensor:
    """Captum's ``target`` as ``(N,)`` long indices (the package's one parser): an int (numpy ints
    too, never ``bool``), a list of them, or an integer array or tensor of shape ``()``, ``(1,)``
    or ``(N,)``; a single index is used for every example. The caller checks the range.

    Raises:
        ValueError: ``target`` is None (the message is ``required``), or holds neither 1 nor N indices.
        TypeError: any other form (tuples, floats, bools).
    """
    if target is None:
        raise ValueError(required)
    index = None
    if (
        _is_int(target)
        or isinstance(target, (np.ndarray, torch.Tensor))
        or (isinstance(target, list) and all(_is_int(t) for t in target))
    ):
        index = torch.as_tensor(int(target) if _is_int(target) else target).detach()
    if index is None or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(
            "target must be integer indices: an int, a list of N ints or an integer tensor of shape () "
            "or (N,) (Captum's meaning: an index into the model output, flattened to (N, D)), got "
            f"{target!r:.80}; tuple targets of multi-dimensional outputs are not supported: pass the "
            "flattened index"
        )
    if index.dim() > 1 or index.numel() not in (1, n):
        raise ValueError(
            f"target has {index.numel()} entries for {n} examples (shape {tuple(index.shape)}); expected one "
            f"index per example, ({n},), or one for all"
        )
    return index.long().reshape(-1).expand(n).clone()


class Indices(Constraint):
    """Indices into a dimension whose size is not known yet: see :func:`index_tensor`."""

    def describe(self) -> str:
        return _INDICES

    def holds(self, value: Any) -> bool:
        try:
            index_tensor(value, "value")
        except InvalidParameterError:
            return False
        return True

    def check(self, value: Any, name: str) -> None:
        if value is not None:
            index_tensor(value, name)  # its own messages (empty, negative, form)


def validate_params(est: Any, constraints: Optional[Mapping[str, Constraint]] = None) -> None:
    """Check every parameter of ``est`` listed in its constraint table (``est._parameter_constraints``).

    Raises:
        InvalidParameterError: the first parameter that breaks its rule, by name.
    """
    table = type(est)._parameter_constraints if constraints is None else constraints
    for name, constraint in table.items():
        constraint.check(getattr(est, name), name)


# ---------------------------------------------------------------------- scalar checks
def check_int(
    value: Any, name: str, low: Optional[int] = None, high: Optional[int] = None, allow_none: bool = False
) -> Optional[int]:
    """``value`` as a Python ``int`` if it is an integer (numpy too, never ``bool``) in ``[low, high]``."""
    if value is None and allow_none:
        return None
    rule: Constraint = Int(low, high)
    if allow_none:
        rule = AnyOf(rule, NONE)
    rule.check(value, name)
    return int(value)


def check_real(
    value: Any,
    name: str,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a ``float`` if it is a finite real number (never ``bool``) within the bounds."""
    RealNumber(low, high, low_open, high_open).check(value, name)
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a ``bool`` if it is ``True`` or ``False``."""
    Bool().check(value, name)
    return bool(value)


def check_option(value: Any, name: str, options: Iterable[Any]) -> Any:
    """``value`` if it is one of ``options``."""
    Options(tuple(options)).check(value, name)
    return value


def seed_of(random_state: Any, name: str = "random_state") -> Optional[int]:
    """The integer seed of ``random_state`` (an int, numpy ints included, or None): ``3`` and
    ``np.int64(3)`` give the same seed."""
    return check_int(random_state, name, low=0, allow_none=True)


def check_fitted(est: Any, attribute: str, fit_methods: str = "fit") -> None:
    """Raise ``sklearn.exceptions.NotFittedError`` unless ``est`` has ``attribute``."""
    if not hasattr(est, attribute):
        raise NotFittedError(
            f"this {type(est).__name__} instance is not fitted yet; "
            f"call {fit_methods} before using this method"
        )


# ---------------------------------------------------------------------- gradients
def _inference_tensor_path(value: Any, name: str, depth: int = 0) -> Optional[str]:
    """The name of the first inference tensor in ``value`` (a tensor or a tuple/list/dict of them)."""
    if isinstance(value, torch.Tensor):
        return name if value.is_inference() else None
    if depth >= 2:
        return None
    if isinstance(value, (tuple, list)):
        items: Iterable[Tuple[Any, Any]] = enumerate(value)
    elif isinstance(value, Mapping):
        items = value.items()
    else:
        return None
    for key, item in items:
        found = _inference_tensor_path(item, f"{name}[{key!r}]", depth + 1)
        if found is not None:
            return found
    return None


def check_grad_mode(where: str, arguments: Optional[Mapping[str, Any]] = None) -> None:
    """Refuse ``torch.inference_mode()`` and inference tensors at an entry that needs gradients.

    ``torch.no_grad()`` is fine (the entries switch gradients on themselves); inference mode
    is not: tensors made under it can never take part in autograd.

    Args:
        where (str): the entry, e.g. ``"EmbeddingAttribution.attribute"``, named in the error.
        arguments (mapping, optional): the call's arguments by name; tensors among them (also
            inside tuples, lists and dicts) must not be inference tensors.

    Raises:
        RuntimeError: inside ``torch.inference_mode()``, or an argument is an inference tensor.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{where} needs gradients, but it was called inside torch.inference_mode(); call it outside "
            "that block (torch.no_grad() is fine: gradients are switched on where they are needed)"
        )
    for name, value in (arguments or {}).items():
        found = _inference_tensor_path(value, name)
        if found is not None:
            raise RuntimeError(
                f"{where}: {found} is an inference tensor (made under torch.inference_mode()), which "
                "cannot take part in autograd; create it outside inference mode, or pass "
                f"{name.split('[')[0]}.clone() made outside it"
            )


# ---------------------------------------------------------------------- the entry decorator
def flag_parameters(signature: inspect.Signature) -> List[str]:
    """The flags of a signature: parameters annotated ``bool`` (or unannotated with a ``bool``
    default), which :func:`validated` checks with :class:`Bool`."""
    return [
        name
        for name, p in signature.parameters.items()
        if p.annotation in (bool, "bool")
        or (p.annotation is inspect.Parameter.empty and isinstance(p.default, bool))
    ]


# (thread, what the validated entries running in it checked), see validated: "grad",
# ("params", id(obj)), ("fitted", id(obj)) and (id(value), rule) per argument
_CHECKED: contextvars.ContextVar[Tuple[int, FrozenSet[Any]]] = contextvars.ContextVar(
    "captum_concepts_checked", default=(-1, frozenset())
)


def _from_package() -> bool:
    """Whether the caller of the validated wrapper (two frames up) is the package's own code."""
    return sys._getframe(2).f_globals.get("__name__", "").startswith("captum_concepts.")


@dataclass(frozen=True)
class _Entry:
    """The checks of one :func:`validated` entry (see there)."""

    func: Callable[..., Any]
    signature: inspect.Signature
    method: bool
    params: bool
    fitted: bool
    grad: bool
    rules: Mapping[str, Constraint]

    def check(self, receiver: Any, call: Tuple[Any, Any], done: FrozenSet[Any]) -> FrozenSet[Any]:
        """The checks of ``call`` (``(args, kwargs)``) not in ``done``, in order; ``done`` with them."""
        bound = self.signature.bind_partial(*call[0], **call[1]) if self.grad or self.rules else None
        if self.grad and "grad" not in done:
            # a method is named after the class it is called on, not the (private) base defining it
            func = self.func
            where = func.__qualname__ if receiver is None else f"{type(receiver).__name__}.{func.__name__}"
            check_grad_mode(where, {k: v for k, v in bound.arguments.items() if k != "self"})
        key = id(receiver)
        if self.method and self.params and ("params", key) not in done:
            if hasattr(type(receiver), "_parameter_constraints"):
                validate_params(receiver)
        if self.method and self.fitted and ("fitted", key) not in done:
            receiver._check_fitted()
        if bound is not None:
            bound.apply_defaults()
        values = {name: bound.arguments[name] for name in self.rules}
        for name, rule in self.rules.items():
            if (id(values[name]), rule) not in done:
                rule.check(values[name], name)
        own = {"grad"} if self.grad else set()
        own |= {(id(values[name]), rule) for name, rule in self.rules.items()}
        if self.method:
            own |= {(kind, key) for kind, on in (("params", self.params), ("fitted", self.fitted)) if on}
        return done | own


def validated(
    *,
    params: bool = True,
    fitted: bool = False,
    grad: bool = False,
    args: Optional[Mapping[str, Constraint]] = None,
) -> Callable[[F], F]:
    """Decorate a public entry so that its checks run before its body, in one place.

    In order: ``grad`` — :func:`check_grad_mode` over the call's arguments; ``params`` (methods)
    — the class's constraint table via :func:`validate_params`, if the class has one (parameters
    may have changed through ``set_params`` since the constructor); ``fitted`` (methods) —
    ``self._check_fitted()``; ``args`` — a constraint per named call argument, as the class table
    does for parameters. Every flag (see :func:`flag_parameters`) gets :class:`Bool` unless
    ``args`` gives it another rule, so ``"False"`` or ``None`` is never read by its truthiness.
    All of this happens before any data is read or any forward pass runs. The wrapper carries
    ``__validated__``, the record of its checks (tests find undecorated entries by it).

    A validated entry that the package's own code calls while another one runs, in the same
    thread, skips the checks its callers made: the gradient check, the parameters and the fitted
    state of an object already checked (``fit_transform`` calling ``fit`` and ``transform``), an
    argument rule already checked on the same value; the rest runs. The record is a context
    variable holding the thread, reset when the entry returns or raises, so a call from a user's
    code (a callback run inside an entry, another thread) is checked as any other.

    The wrapper keeps ``__name__``, ``__doc__`` and the signature (``functools.wraps``). It adds a
    frame: warnings raised inside go through :func:`~captum_concepts._utils.warn.warn_user`.

    Example::

        class Estimator:
            _parameter_constraints = {"n": Int(1)}

            @validated(args={"max_iter": AnyOf(NONE, Int(1))})
            def fit(self, x, max_iter=None): ...
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        method = next(iter(signature.parameters), None) == "self"
        unknown = set(args or {}) - set(signature.parameters)
        if unknown:
            raise TypeError(f"validated: {func.__qualname__} has no argument(s) {sorted(unknown)}")
        rules = {**{name: Bool() for name in flag_parameters(signature)}, **(args or {})}

        entry = _Entry(func, signature, method, params, fitted, grad, rules)

        @functools.wraps(func)
        def wrapper(*call_args: Any, **call_kwargs: Any) -> Any:
            self = (call_args[0] if call_args else call_kwargs["self"]) if method else None
            thread, done = _CHECKED.get()
            if thread != threading.get_ident() or not _from_package():
                done = frozenset()  # a user's call (a callback, another thread): checked in full
            token = _CHECKED.set((threading.get_ident(), entry.check(self, (call_args, call_kwargs), done)))
            try:
                return func(*call_args, **call_kwargs)
            finally:
                _CHECKED.reset(token)

        wrapper.__validated__ = entry  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
