"""Concepts as linear read-outs of one layer: the one basis every concept map uses (private).

A fitted :class:`CoupledNMFConcepts` (at one of its layers) or :class:`SemanticVector` is read
as a :class:`ConceptBasis`, which each estimator builds itself (:class:`BasisSource`): the layer,
the rows its fit reads from the layer's output (:func:`~.activations.pool_rows`, then the
fitted shift through :func:`~.nonnegative_blocks.apply_shift`, clipped at 0 exactly as in the
fit) and the basis ``O`` ``(a, d)`` whose ``d`` columns are the concepts in that row space.
:func:`concept_basis` asks for it; :func:`explained_batch` checks the inputs, targets and
coefficients of an explanation in concept space (concept importance, Sobol indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Tuple, Union, runtime_checkable

import torch
from captum._utils.typing import TargetType
from torch import Tensor, nn

from ..._utils.common import TensorOrTuple, check_batch, format_inputs
from ..._utils.layout import ReshapeTransform, apply_reshape
from ..._utils.validation import target_index
from ...attr._core.layer_readout import LayerReadout, Readouts
from .activations import pool_rows
from .nonnegative_blocks import apply_shift

if TYPE_CHECKING:
    from .coupled_nmf import CoupledNMFConcepts
    from .semantic_vector import SemanticVector

__all__ = [
    "Concepts",
    "ConceptBasis",
    "BasisSource",
    "concept_basis",
    "check_target_range",
    "explained_batch",
]

Concepts = Union["CoupledNMFConcepts", "SemanticVector"]


@dataclass
class ConceptBasis:
    """One layer's concepts: rows ``(N, a)`` read from the layer and the basis ``(a, d)``.

    Attributes:
        model (nn.Module): the model.
        module (nn.Module): the layer whose output is read.
        basis (Tensor): ``(a, d)``, concept ``k`` is column ``k`` in row space.
        pool (str): ``"none"`` (rows are the flattened output) or ``"mean"`` / ``"max"``
            (pooled per channel, so a concept is one ``C``-vector at every position).
        shift (Tensor or None): ``(a,)`` the fitted shift of the rows, or None.
        transform (callable or None): the fit's ``reshape_transform`` of this layer.
    """

    model: nn.Module
    module: nn.Module
    basis: Tensor
    pool: str = "none"
    shift: Optional[Tensor] = None
    transform: Optional[ReshapeTransform] = None

    @property
    def n_concepts(self) -> int:
        """``d``, the number of concepts."""
        return self.basis.shape[1]

    @property
    def pooled(self) -> bool:
        return self.pool != "none"

    def raw(self, out: Tensor) -> Tensor:
        """The layer's output ``(N, C, *S)`` as the fit saw it (after its ``reshape_transform``)."""
        return apply_reshape(self.transform, out, 1, "the concepts' layer")

    def rows(self, raw: Tensor) -> Tensor:
        """``(N, a)``: ``raw`` pooled as in the fit, shifted and clipped at 0 (differentiable)."""
        rows = pool_rows(raw, self.pool)
        return apply_shift(rows, self.shift, dim=1)

    def shifted(self, raw: Tensor) -> Tensor:
        """``raw`` ``(N, C, *S)`` with the fit's shift at every position, clipped at 0.

        Unpooled fits shift each (channel, position) feature; pooled fits shift each channel
        by its pooled shift at every position.
        """
        if self.shift is None:
            return raw
        n = raw.shape[0]
        if not self.pooled or raw.dim() <= 2:
            return apply_shift(raw.reshape(n, -1), self.shift, dim=1).reshape(raw.shape)
        return apply_shift(raw.reshape(n, raw.shape[1], -1), self.shift, dim=1).reshape(raw.shape)

    def layer_basis(self, shape: Tuple[int, ...]) -> Tensor:
        """The basis in the layer's own space: ``(d, *shape)`` (broadcast over positions if pooled)."""
        d = self.n_concepts
        if self.pooled:
            c = shape[0]
            return self.basis.t().reshape(d, c, *([1] * (len(shape) - 1))).expand(d, *shape)
        return self.basis.t().reshape(d, *shape)

    def coefficient_matrix(self) -> Tensor:
        """``W`` ``(a, d)`` with ``u = rows @ W`` the least-squares coordinates ``(O^T O)^+ O^T``."""
        o = self.basis.double()
        return torch.linalg.pinv(o.t() @ o, hermitian=True).matmul(o.t()).t().float()

    def readout(self) -> LayerReadout:
        """The layer's output as a model output (see :func:`read_outputs`)."""
        return LayerReadout(self.model, self.module, "layer")

    def read_outputs(self, inputs: Tuple[Tensor, ...], extra: Tuple[Any, ...]) -> Tensor:
        """The layer's output on ``inputs`` (after :meth:`raw`), eval mode, without autograd."""
        readout = self.readout()
        with Readouts([readout], eval_mode=True), torch.no_grad():
            return self.raw(readout.read(inputs, extra, flatten=False))


@runtime_checkable
class BasisSource(Protocol):
    """Fitted concepts that answer "your basis at this layer" (both :data:`Concepts` are ones)."""

    def _concept_basis(self, layer: Union[int, str], argument: str) -> ConceptBasis:
        """The :class:`ConceptBasis` at ``layer`` (NotFittedError before a fit; ``argument``: their name)."""


def concept_basis(concepts: Concepts, layer: Union[int, str] = 0, argument: str = "concepts") -> ConceptBasis:
    """The :class:`ConceptBasis` of fitted ``concepts`` at ``layer``.

    Args:
        concepts: a fitted :class:`CoupledNMFConcepts` (fitted with ``fit`` on a model) or
            :class:`SemanticVector`.
        layer (int or str): the coupled fit's layer (an index into ``neuron_factors_`` or a
            layer name); ignored for a :class:`SemanticVector`, which has one layer.
        argument (str): the argument's name in error messages.

    Raises:
        NotFittedError: ``concepts`` is not fitted.
        TypeError: ``concepts`` is neither estimator.
    """
    if not isinstance(concepts, BasisSource):
        raise TypeError(
            f"{argument} must be a fitted CoupledNMFConcepts or SemanticVector, got {type(concepts).__name__}"
        )
    return concepts._concept_basis(layer, argument)


def explained_batch(
    concepts: Concepts,
    inputs: TensorOrTuple,
    target: TargetType,
    layer: Union[int, str],
    coefficients: Optional[Tensor],
    first_pass: Optional[Callable[[ConceptBasis, Tuple[Tensor, ...], Tensor], None]] = None,
) -> Tuple[ConceptBasis, Tuple[Tensor, ...], int, Tensor, Tensor]:
    """``(basis, inputs, N, targets, coefficients (d, N))`` checked; the coefficients from
    ``concepts.transform`` unless given. ``first_pass(basis, inputs, targets)``, the caller's
    first model pass (where the targets meet the number of classes), runs after every check
    that needs no pass and before ``transform``'s passes."""
    b = concept_basis(concepts, layer)
    x, _ = format_inputs(inputs)
    n = check_batch(x)
    t = target_index(target, n, "target is required: the class (logit index) whose score is explained")
    if coefficients is None and len(x) > 1:
        raise ValueError("pass coefficients= for tuple inputs (transform takes one input tensor)")
    if coefficients is not None:
        _check_coefficients(coefficients, b.n_concepts, n)
    if first_pass is not None:
        first_pass(b, x, t)
    if coefficients is None:
        coefficients = concepts.transform(x[0], samples_first=False)
        _check_coefficients(coefficients, b.n_concepts, n)
    return b, x, n, t, coefficients


def _check_coefficients(coefficients: Any, d: int, n: int) -> None:
    if not isinstance(coefficients, Tensor) or tuple(coefficients.shape) != (d, n):
        got = tuple(coefficients.shape) if isinstance(coefficients, Tensor) else type(coefficients).__name__
        raise ValueError(f"coefficients must be a ({d}, {n}) tensor (d, N), got {got}")


def check_target_range(logits: Any, target: Tensor) -> None:
    """Refuse model outputs that are not ``(N, n_classes)`` logits and targets beyond the classes."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model output must be (N, n_classes) logits, got {got}")
    if int(target.max()) >= logits.shape[1] or int(target.min()) < 0:
        raise ValueError(f"target {target.tolist()[:10]} out of range for {logits.shape[1]} classes")
