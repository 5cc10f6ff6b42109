"""CRAFT's total Sobol indices of concept coefficients for a target logit."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from captum._utils.typing import TargetType
from torch import Tensor

from ..._utils.common import TensorOrTuple, format_additional_args
from ..._utils.finite import check_finite_result, check_finite_rows
from ..._utils.hooks import ModelGuard
from ..._utils.validation import NONE, AnyOf, Int, seed_of, validated
from .basis import ConceptBasis, check_target_range, explained_batch
from .coupled_nmf import CoupledNMFConcepts

__all__ = ["concept_sobol_indices"]


@validated(args={"n_designs": Int(2), "random_state": AnyOf(NONE, Int(0)), "max_batch": Int(1)})
def concept_sobol_indices(
    concepts: CoupledNMFConcepts,
    inputs: TensorOrTuple,
    target: TargetType,
    layer: Union[int, str] = 0,
    n_designs: int = 32,
    additional_forward_args: Any = None,
    coefficients: Optional[Tensor] = None,
    random_state: Optional[int] = 0,
    max_batch: int = 1024,
) -> Tensor:
    r"""Total Sobol indices of the concept coefficients for the ``target`` logit: ``(N, d)``, one row
    per example.

    CRAFT's concept importance (Fel et al., 2023, "CRAFT: Concept Recursive Activation
    FacTorization for Explainability").

    The layer's activations are rebuilt from masked coefficients, ``A(m) = sum_k m_k u_k o_k + R``
    with ``R = A - sum_k u_k o_k`` (so ``m = 1`` gives back ``A``), and the rest of the model runs
    on ``A(m)``. With masks ``m`` uniform on ``[0, 1]^d`` from a scrambled Sobol sequence and
    Jansen's estimator on Saltelli's design (matrices ``M_A``, ``M_B`` and ``M_C^k`` = ``M_A``
    with column ``k`` from ``M_B``):

    .. math::

        S_{T,k} = \frac{\operatorname{mean}\big((y(M_A) - y(M_C^k))^2\big)}{2 \operatorname{Var}(y)},

    the variance taken over :math:`y(M_A)` and :math:`y(M_B)`.

    Costs ``n_designs * (d + 2) * N`` rows of forward passes, run ``max_batch`` rows at a time
    (the inputs repeated; no backward pass). An example whose
    logit does not vary gets indices 0.

    Args:
        concepts (CoupledNMFConcepts): fitted with :meth:`~CoupledNMFConcepts.fit`.
        inputs (Tensor or tuple of Tensor): ``(N, C0, *S0)``; the model outputs ``(N, n_classes)``.
        target (int, list of int or Tensor): the logit explained, one for all or one per example.
        layer (int or str): the fitted layer (index into ``neuron_factors_`` or its name).
        n_designs (int): rows of ``M_A`` (and ``M_B``). Default 32 (CRAFT's default).
        additional_forward_args (Any, optional): extra forward arguments.
        coefficients (Tensor, optional): ``u`` as ``(d, N)`` (default: ``concepts.transform``).
        random_state (int or None): seed of the Sobol scrambling (an int >= 0, numpy ints too).
        max_batch (int): the most rows per forward pass (masks x examples), >= 1. Default 1024.

    Returns:
        Tensor ``(N, d)``, detached, whatever the form of ``inputs`` (one index per example and
        concept of the fitted layer).

    Raises:
        ValueError: bad arguments (before any forward pass; ``target`` against the number of
            classes on the first pass, before ``transform`` and the designs); the layer output
            holds NaN or infinite values (naming the examples); indices overflowed (naming the
            examples, as :func:`~captum_concepts._utils.finite.check_finite_result`).

    Example::

        from captum_concepts.concept import CoupledNMFConcepts, concept_sobol_indices

        cnmf = CoupledNMFConcepts(n_concepts=5, model=model, layers=["block3.pool"], max_iter=50,
                                  random_state=0).fit(data.x_train[:256])
        indices = concept_sobol_indices(cnmf, data.x_test[:4], target=data.y_test[:4], n_designs=16)
    """
    extra = format_additional_args(additional_forward_args)
    first: Dict[str, Tensor] = {}

    def first_pass(b: ConceptBasis, x: Tuple[Tensor, ...], t: Tensor) -> None:
        """The layer's activations and the logits, in one pass: targets are checked against the
        classes before ``transform`` and the designs run."""
        if b.transform is not None:
            raise ValueError(
                "Sobol indices rebuild the layer's raw output; layers with a reshape_transform are not "
                "supported"
            )
        with ModelGuard(b.model) as guard, torch.no_grad():
            captured = guard.capture(b.module, "layer")
            check_target_range(guard.forward(b.model, *x, *extra), t)
            first["acts"] = captured.tensor()

    b, x, n, t, coefficients = explained_batch(concepts, inputs, target, layer, coefficients, first_pass)
    acts = check_finite_rows(first["acts"], "the layer output")
    d = b.n_concepts
    engine = torch.quasirandom.SobolEngine(2 * d, scramble=True, seed=seed_of(random_state))
    draws = engine.draw(n_designs)
    m_a, m_b = draws[:, :d], draws[:, d:]
    designs = [m_a, m_b] + [torch.cat([m_a[:, :k], m_b[:, k : k + 1], m_a[:, k + 1 :]], 1) for k in range(d)]
    masks = torch.cat(designs)  # ((d + 2) * n_designs, d)

    rebuilt_output: List[Tensor] = []

    with ModelGuard(b.model) as guard, torch.no_grad():
        guard.replace(b.module, lambda _out: rebuilt_output[0])
        flat_o = b.layer_basis(tuple(acts.shape[1:])).to(acts).reshape(d, -1)  # (d, features)
        u = coefficients.t().to(acts)  # (N, d)
        residual = acts.reshape(n, -1) - u @ flat_o
        chunk = max(1, max_batch // n)  # masks per forward pass: the batch repeated `chunk` times
        ys = []
        for part in masks.to(acts).split(chunk):
            k = part.shape[0]
            rebuilt = (u[None] * part[:, None]).reshape(k * n, d) @ flat_o + residual.repeat(k, 1)
            rebuilt_output[:] = [rebuilt.reshape(k * n, *acts.shape[1:])]
            logits = b.model(*(_repeat(inp, k) for inp in x), *(_repeat(a, k, n) for a in extra))
            ys.append(logits.gather(1, t.repeat(k).to(logits.device)[:, None])[:, 0].reshape(k, n))
    y = torch.cat(ys).reshape(d + 2, n_designs, n)  # (designs, rows, N)
    var = torch.cat([y[0], y[1]]).var(dim=0, unbiased=False)  # (N,)
    jansen = ((y[0][None] - y[2:]) ** 2).mean(dim=1) / 2  # (d, N)
    indices = torch.where(var > 0, jansen / var.clamp_min(1e-30), torch.zeros_like(jansen)).t()
    return check_finite_result(indices, "concept_sobol_indices", x)


def _repeat(value: Any, k: int, n: Optional[int] = None) -> Any:
    """Repeat a batch tensor ``k`` times along dim 0 (extra arguments: only those with batch ``n``)."""
    if not isinstance(value, Tensor) or value.dim() == 0 or (n is not None and value.shape[0] != n):
        return value
    return value.repeat(k, *([1] * (value.dim() - 1)))
