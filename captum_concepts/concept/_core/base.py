"""The base of the concept estimators (private).

:class:`_ConceptEstimator` holds what every estimator of the package shares, in the spirit of
scikit-learn's ``BaseEstimator``: parameters through ``get_params`` / ``set_params`` (the
constructor only stores them), a constraint table checked by the
:func:`~captum_concepts._utils.validation.validated` decorator at every public entry, and one
declaration of the fitted attributes, ``_fitted_attributes``, which drives

- the not-fitted check (:meth:`_ConceptEstimator._check_fitted`: every declared attribute must
  be set; the message names the ``_fit_methods``);
- ``save`` / ``load`` (:mod:`.estimator_io`: each attribute is written and read back, checked,
  as its declaration says; nothing is set before everything is read);
- ``sklearn.base.clone`` (a new, unfitted estimator with the same parameters, layers given as
  modules of the model kept as their names).

A subclass declares::

    class MyEstimator(_ConceptEstimator):
        _parameter_constraints = {"n": Int(1)}
        _fitted_attributes = (FittedTensor("weights_", torch.float32), Fitted("n_iter_", Int(0)))
        _fit_methods = ("fit",)
        _persistence_kind = "MyEstimator"

        def __init__(self, n=3, model=None):
            self._keep_params(locals())

        @validated()
        def fit(self, x): ...

        @validated(fitted=True)
        def transform(self, x): ...
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

from sklearn.base import BaseEstimator
from torch import nn

from ..._utils.persistence import PathLike
from ..._utils.validation import (
    MODEL,
    NONE,
    AnyOf,
    Bool,
    Constraint,
    DeviceSpec,
    Int,
    check_fitted,
    validated,
)
from .estimator_io import FittedSpec, clone_with_layer_names, load_estimator, save_estimator

__all__ = ["_ConceptEstimator", "COMMON_CONSTRAINTS"]

COMMON_CONSTRAINTS: Dict[str, Constraint] = {
    "batch_size": Int(1),
    "device": DeviceSpec(),
    "random_state": AnyOf(NONE, Int(0)),
    "distributed": Bool(),
}
"""The rules of the parameters every estimator of the package takes (merged into each table)."""


class _ConceptEstimator(BaseEstimator):
    """Parameters, declared fitted attributes, not-fitted check, save / load and clone."""

    _parameter_constraints: ClassVar[Dict[str, Constraint]] = {}
    _fitted_attributes: ClassVar[Tuple[FittedSpec, ...]] = ()
    _fit_methods: ClassVar[Tuple[str, ...]] = ("fit",)
    _persistence_kind: ClassVar[str] = ""
    _runtime_params: ClassVar[Tuple[str, ...]] = ("model",)

    def _keep_params(self, arguments: Mapping[str, Any]) -> None:
        """Store the constructor's arguments (its ``locals()``) as attributes of the same names."""
        for name, value in arguments.items():
            if name not in ("self", "__class__"):
                setattr(self, name, value)

    def _check_fitted(self) -> None:
        """Raise ``sklearn.exceptions.NotFittedError`` unless every declared fitted attribute is set."""
        methods = self._fit_methods
        text = methods[0] if len(methods) == 1 else ", ".join(methods[:-1]) + " or " + methods[-1]
        for spec in self._fitted_attributes:
            check_fitted(self, spec.attr, text)

    @validated(params=False, fitted=True)
    def save(self, path: PathLike) -> None:
        """Save the parameters and the declared fitted attributes to ``path`` (see ``load``)."""
        save_estimator(self, path)

    @classmethod
    @validated(params=False, args={"model": AnyOf(NONE, MODEL)})
    def load(cls, path: PathLike, model: Optional[nn.Module] = None, **params: Any) -> Any:
        """A new estimator with the parameters and fitted state of a ``save`` file."""
        return load_estimator(cls, path, model, params)

    def __sklearn_clone__(self) -> Any:
        return clone_with_layer_names(self)
