"""Where each concept is, where its evidence comes from and how much it drives a class.

For fitted :class:`CoupledNMFConcepts` (any fitted layer) and :class:`SemanticVector` (its layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from captum._utils.typing import TargetType
from torch import Tensor, nn

from ..._utils.common import TensorOrTuple, check_batch, format_additional_args, format_inputs
from ..._utils.finite import check_finite_rows, max_scaled
from ..._utils.hooks import ModelGuard
from ..._utils.layers import LayerSpec, resolve_layer
from ..._utils.validation import Int, validated
from ...attr._core.embedding_attribution import EmbeddingAttribution
from ...attr._core.layer_readout import Readouts
from ...attr._core.upsampling import check_upsample, upsample_maps
from .basis import ConceptBasis, Concepts, check_target_range, concept_basis, explained_batch
from .coupled_nmf import CoupledNMFConcepts
from .semantic_vector import SemanticVector

__all__ = [
    "ConceptImportance",
    "concept_presence_maps",
    "concept_attribution_maps",
    "concept_importance",
    "class_importance",
]


def _nnls_per_position(acts: Tensor, basis: Tensor, n_iter: int) -> Tensor:
    """``argmin_{c >= 0} ||a_p - B_p c||^2`` for every example and position, exactly.

    ``acts`` ``(N, P, C)``, ``basis`` ``(P, C, d)`` (or ``(1, C, d)``) -> ``(N, P, d)``. Block
    principal pivoting (Kim & Park, SIAM J. Sci. Comput. 2011, with its backup rule against
    cycling) on all problems at once, in float64; each step solves the free variables' normal
    equations.
    """
    n, p_count = acts.shape[:2]
    basis = basis.double().expand(p_count, -1, -1)
    gram = (basis.transpose(1, 2) @ basis).expand(n, -1, -1, -1).reshape(-1, basis.shape[2], basis.shape[2])
    rhs = torch.einsum("npc,pcd->npd", acts.double(), basis).reshape(-1, basis.shape[2])
    m, d = rhs.shape
    free = torch.zeros(m, d, dtype=torch.bool)
    best = torch.full((m,), d + 1, dtype=torch.long)
    tries = torch.full((m,), 3, dtype=torch.long)
    eye = torch.eye(d, dtype=gram.dtype)
    # a concept whose factor is zero at a position has no defined coefficient there: a tiny ridge
    # keeps the systems regular and gives it 0
    ridge = 1e-12 * gram.diagonal(dim1=1, dim2=2).amax(1, keepdim=True).clamp_min(1e-30)
    c = torch.zeros_like(rhs)
    for _ in range(n_iter):
        mask = free.to(gram.dtype)
        system = gram * mask[:, :, None] * mask[:, None, :] + eye * (1 - mask + ridge)[:, None, :]
        c = torch.linalg.solve(system, rhs * mask) * mask
        grad = (gram @ c[:, :, None])[:, :, 0] - rhs
        bad = (free & (c < -1e-12)) | (~free & (grad < -1e-12 * rhs.abs().amax(1, keepdim=True).clamp_min(1)))
        count = bad.sum(1)
        if not bool(count.any()):
            break
        better = count < best
        best = torch.where(better, count, best)
        tries = torch.where(better, torch.full_like(tries, 3), tries - (count > 0).long())
        full = tries > 0
        last = d - 1 - bad.flip(1).long().argmax(1)  # the largest infeasible index (backup rule)
        single = torch.zeros_like(bad)
        single[torch.arange(m), last] = True
        flip = torch.where(full[:, None], bad, single & bad)
        free = free ^ flip
    return c.clamp_min(0).reshape(n, p_count, d).float()


@validated(args={"n_iter": Int(1)})
def concept_presence_maps(
    concepts: Concepts,
    inputs: TensorOrTuple,
    layer: Union[int, str] = 0,
    additional_forward_args: Any = None,
    upsample: Optional[str] = "bilinear",
    n_iter: int = 50,
) -> Tensor:
    r"""Where each concept appears: one map per concept, ``(N, d, *S0)``.

    - :class:`CoupledNMFConcepts`: at each position ``p`` of the fitted ``layer`` (an index into
      ``neuron_factors_`` or a layer name) the non-negative coefficients ``c(p)`` of the
      concepts' neuron factors that best reconstruct the activations there,
      ``c(p) = argmin_{c >= 0} ||A(p) - O(p) c||^2`` (the Deep Feature Factorization reading of
      a layer, Collins et al. 2018, with the coupled factors fixed). ``A(p)`` is the ``C``-vector
      of channels at ``p`` (shifted as in the fit); ``O(p)`` the rows of ``O_j`` for position
      ``p`` (``pool="none"``), or all of ``O_j`` at every position (pooled fits).
    - :class:`SemanticVector`: the cosine of each position's features with the concept's
      vector at that position, ``cos(phi(x)[:, p], v_c[:, p])`` (0 where either is 0).

    A dense layer has one position (the value is copied over the image). Maps are upsampled to
    the spatial size of ``inputs[0]`` with ``upsample`` (``"bilinear"``, ``"nearest"``, or None:
    the layer's resolution ``(N, d, *S_l)``). Pixel factor images of a coupled fit come from
    :meth:`CoupledNMFConcepts.factor_images`.

    Args:
        concepts: a fitted :class:`CoupledNMFConcepts` (fitted with :meth:`~CoupledNMFConcepts.fit`)
            or :class:`SemanticVector`.
        inputs (Tensor or tuple of Tensor): ``(N, C0, *S0)``.
        layer (int or str): the coupled fit's layer. Ignored for a :class:`SemanticVector`.
        additional_forward_args (Any, optional): extra forward arguments.
        upsample (str or None): see above. Default ``"bilinear"``.
        n_iter (int): the most pivoting steps of the per-position non-negative least squares
            (each solves the problems exactly on a free set; a handful are enough). Default 50.

    Returns:
        Tensor ``(N, d, *S0)`` (``d`` concepts), detached: one tensor whatever the form of
        ``inputs``, as Captum's layer attributions return the layer's own form (the concepts live
        at one layer with one output tensor); ``S0`` is the spatial size of ``inputs[0]``.

    Raises:
        ValueError: bad arguments (before any forward pass); the layer output holds NaN or
            infinite values, naming the examples (a NaN position is never read as cosine 0).

    Example::

        from captum_concepts.concept import CoupledNMFConcepts, concept_presence_maps

        cnmf = CoupledNMFConcepts(n_concepts=5, model=model, layers=["block2.relu"], max_iter=50,
                                  random_state=0).fit(data.x_train[:256])
        presence = concept_presence_maps(cnmf, data.x_test[:4])  # (4, 5, 8, 8): where each concept is
    """
    upsample = check_upsample(upsample, "upsample")
    b = concept_basis(concepts, layer)
    x, _ = format_inputs(inputs)
    n = check_batch(x)
    outputs = b.read_outputs(x, format_additional_args(additional_forward_args))
    raw = b.shifted(check_finite_rows(outputs, "the layer output").float())
    if raw.dim() == 2:
        raw = raw.unsqueeze(-1)
    c, spatial = raw.shape[1], tuple(raw.shape[2:])
    acts = raw.reshape(n, c, -1).transpose(1, 2)  # (N, P, C)
    basis = b.basis.to(acts.device)
    d = basis.shape[1]
    if isinstance(concepts, SemanticVector):
        vec = basis.t().reshape(d, c, -1)  # (d, C, P)
        scaled = max_scaled(acts, 2)  # the cosine is scale-free: no overflow of |phi| for large inputs
        dots = torch.einsum("npc,dcp->ndp", scaled, vec)
        norms = scaled.norm(dim=2)[:, None, :] * vec.norm(dim=1)[None]
        maps = torch.where(norms > 0, dots / norms.clamp_min(1e-30), torch.zeros_like(dots))
    else:
        if b.pooled:
            per_position = basis.reshape(1, c, d)
        else:
            per_position = basis.reshape(c, -1, d).transpose(0, 1)  # (P, C, d)
        maps = _nnls_per_position(acts, per_position, n_iter).transpose(1, 2)  # (N, d, P)
    maps = maps.reshape(n, d, *spatial)
    size = tuple(x[0].shape[2:]) if x[0].dim() > 2 else ()
    if raw.shape[2:] == (1,) and len(size) != 1:
        maps = maps.reshape(n, d)
        return upsample_maps(maps, size, upsample, spatial_dims=0) if upsample else maps
    return upsample_maps(maps, size, upsample, spatial_dims=len(spatial)) if size else maps


class _ConceptHead(nn.Module):
    """A model whose output is the concepts' linear coefficients at one layer, ``(N, d)``."""

    def __init__(self, b: ConceptBasis, extra: Tuple[Any, ...]) -> None:
        super().__init__()
        self.model = b.model
        self._basis = b
        self._readout = b.readout()
        self._extra = extra
        self._coef = b.coefficient_matrix()
        self.training = b.model.training  # the guard then warns about the user's model, not ours

    def forward(self, *inputs: Tensor) -> Tensor:
        rows = self._basis.rows(self._basis.raw(self._readout.read(inputs, self._extra, flatten=False)))
        return rows @ self._coef.to(rows)


@validated(grad=True)
def concept_attribution_maps(
    concepts: Concepts,
    inputs: TensorOrTuple,
    layer: Union[int, str] = 0,
    source_layer: Optional[LayerSpec] = None,
    method: str = "activation_gradient",
    additional_forward_args: Any = None,
    **kwargs: Any,
) -> Tensor:
    r"""Where the evidence for each concept comes from: ``(N, d, *S0)``, one map per concept.

    The concept coefficients as a linear function of the layer's activations, ``u = W^T a``
    (``a`` the fitted block rows of the layer: flattened, pooled and shifted as in the fit), are
    explained like embedding dimensions by :class:`EmbeddingAttribution` with
    ``return_per_dim=True`` (all concepts from one forward pass): the map of concept ``k`` is
    ``sum_c A_c`` of the base ``method`` applied to ``u_k`` at ``source_layer`` (None: the
    inputs). ``W = O (O^T O)^+`` (least squares on the neuron factors ``O_j``) for a
    :class:`CoupledNMFConcepts`; for a :class:`SemanticVector` the same with the vectors, so
    ``u`` are least-squares coordinates in the span of the semantic vectors.

    Args:
        concepts: fitted :class:`CoupledNMFConcepts` or :class:`SemanticVector`.
        inputs (Tensor or tuple of Tensor): ``(N, C0, *S0)``.
        layer (int or str): the coupled fit's layer (ignored for a :class:`SemanticVector`).
        source_layer (nn.Module, str or None): where the maps live; must come before ``layer``.
        method (str): ``"activation_gradient"`` (default), ``"gradient"`` or ``"gradcam"``.
        additional_forward_args (Any, optional): extra forward arguments.
        **kwargs: :class:`EmbeddingAttribution` options (``channel_aggregator``, default the
            channel sum; ``upsample``, ``strategy``, ``reshape_transform``, ...) and
            ``internal_batch_size`` / ``show_progress`` of its ``attribute``.

    Returns:
        Maps ``(N, d, *S)``, detached, in Captum's form: with ``source_layer=None`` (input
        attributions) a tensor for a tensor input and a tuple with one tensor per input for a
        tuple of inputs (tuples in, tuples out); with a ``source_layer`` the layer's own form, a
        tensor for a layer with one output tensor (layer maps upsampled as in
        :class:`EmbeddingAttribution`).

    Example::

        from captum_concepts.concept import CoupledNMFConcepts, concept_attribution_maps

        cnmf = CoupledNMFConcepts(n_concepts=5, model=model, layers=["block3.relu"], max_iter=50,
                                  random_state=0).fit(data.x_train[:256])
        maps = concept_attribution_maps(cnmf, data.x_test[:4])  # (4, 5, 8, 8): evidence per concept
    """
    b = concept_basis(concepts, layer)
    x, _ = format_inputs(inputs)
    check_batch(x)
    head = _ConceptHead(b, format_additional_args(additional_forward_args))
    call = {k: kwargs.pop(k) for k in ("internal_batch_size", "show_progress") if k in kwargs}
    kwargs.setdefault("channel_aggregator", torch.sum)
    source = None if source_layer is None else resolve_layer(b.model, source_layer, "source_layer")
    ea = EmbeddingAttribution(head, layer=source, method=method, **kwargs)
    with Readouts([head._readout]):
        maps = ea.attribute(inputs if source is None else x, return_per_dim=True, **call)
    if source is not None and isinstance(maps, tuple) and len(maps) == 1:
        return maps[0]  # a layer with one output tensor: a tensor, whatever the inputs
    return maps


@dataclass
class ConceptImportance:
    r"""Gradient x activation of a target logit in concept space (see :func:`concept_importance`).

    Attributes:
        importance (Tensor): ``(N, d)``, ``u_k <g, o_k>``.
        residual (Tensor): ``(N,)``, ``<g, A - O u>``: what the concepts do not reconstruct.
        total (Tensor): ``(N,)``, ``<g, A>``, equal to ``importance.sum(1) + residual``.
        coefficients (Tensor): ``(N, d)``, the concept coefficients ``u`` used.
        target (Tensor): ``(N,)`` the target of each example.

    Example::

        from captum_concepts.concept import CoupledNMFConcepts, concept_importance

        cnmf = CoupledNMFConcepts(n_concepts=5, model=model, layers=["block3.pool"], max_iter=50,
                                  random_state=0).fit(data.x_train[:256])
        result = concept_importance(cnmf, data.x_test[:4], target=0)
        result.importance.shape, result.residual.shape  # (4, 5) and (4,)
    """

    importance: Tensor
    residual: Tensor
    total: Tensor
    coefficients: Tensor
    target: Tensor

    @validated()
    def per_class(self, labels: Any = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Mean importance and residual per class: see :func:`class_importance`."""
        return class_importance(self, self.target if labels is None else labels)


@validated(grad=True)
def concept_importance(
    concepts: CoupledNMFConcepts,
    inputs: TensorOrTuple,
    target: TargetType,
    layer: Union[int, str] = 0,
    additional_forward_args: Any = None,
    coefficients: Optional[Tensor] = None,
) -> ConceptImportance:
    r"""How much each concept drives the ``target`` logit, per example: gradient x input in concept space.

    As in Fel et al., 2023, "A holistic approach to unifying automatic concept extraction and
    concept importance estimation".

    With ``A`` the activations of the fitted ``layer`` (the layer's output, channels first),
    ``g = d logit_t / dA``, ``u`` the concept coefficients of the example (a column of
    :meth:`CoupledNMFConcepts.transform`) and ``o_k`` concept ``k``'s neuron factor in the
    layer's space (``O_j[:, k]`` reshaped, or broadcast over positions for pooled fits):

    .. math::

        \mathrm{importance}_k = u_k \langle g, o_k \rangle, \qquad
        \mathrm{residual} = \Big\langle g, A - \sum_k u_k o_k \Big\rangle, \qquad
        \sum_k \mathrm{importance}_k + \mathrm{residual} = \langle g, A \rangle

    (the layer's gradient × activation total)

    exactly, for any ``u``. All ``d`` concepts cost ONE forward and ONE backward pass (stopping
    at ``layer``) per target, plus the forward passes of ``transform`` unless ``coefficients``
    are given. With ``shift="min"`` the factors reconstruct the shifted activations, so the
    residual also holds ``<g, shift>``.

    Args:
        concepts (CoupledNMFConcepts): fitted with :meth:`~CoupledNMFConcepts.fit`.
        inputs (Tensor or tuple of Tensor): ``(N, C0, *S0)``; the model output must be
            ``(N, n_classes)`` logits.
        target (int, list of int or Tensor): the logit explained, one for all or one per example.
        layer (int or str): the fitted layer (index into ``neuron_factors_`` or its name).
        additional_forward_args (Any, optional): extra forward arguments.
        coefficients (Tensor, optional): ``u`` as ``(d, N)`` (the layout of ``transform``).

    Returns:
        :class:`ConceptImportance` of ``(N, d)`` and ``(N,)`` tensors, whatever the form of
        ``inputs`` (the result lives at the fitted layer, in concept space).

    Example::

        from captum_concepts.concept import CoupledNMFConcepts, concept_importance

        cnmf = CoupledNMFConcepts(n_concepts=5, model=model, layers=["block3.pool"], max_iter=50,
                                  random_state=0).fit(data.x_train[:256])
        result = concept_importance(cnmf, data.x_test[:8], target=data.y_test[:8])
        # the concept terms and the residual add up to the gradient x activation total
        assert torch.allclose(result.importance.sum(1) + result.residual, result.total, atol=1e-4)
    """
    if not isinstance(concepts, CoupledNMFConcepts):
        raise TypeError(f"concepts must be a fitted CoupledNMFConcepts, got {type(concepts).__name__}")
    extra = format_additional_args(additional_forward_args)
    first: Dict[str, Tensor] = {}

    def first_pass(b: ConceptBasis, x: Tuple[Tensor, ...], t: Tensor) -> None:
        # the gradient pass first: the targets meet the classes before transform's passes
        first["acts"], first["grads"] = _layer_gradient(b, x, t, extra)

    b, x, n, t, coefficients = explained_batch(concepts, inputs, target, layer, coefficients, first_pass)
    acts, grads = first["acts"], first["grads"]
    o_layer = b.layer_basis(tuple(acts.shape[1:])).to(acts)  # (d, *shape)
    u = coefficients.t().to(acts)
    flat_g = grads.reshape(n, -1)
    proj = flat_g @ o_layer.reshape(o_layer.shape[0], -1).t()  # (N, d): <g, o_k>
    importance = u * proj
    reconstruction = (u @ o_layer.reshape(o_layer.shape[0], -1)).reshape(acts.shape)
    residual = (flat_g * (acts - reconstruction).reshape(n, -1)).sum(1)
    total = (flat_g * acts.reshape(n, -1)).sum(1)
    return ConceptImportance(importance, residual, total, u, t.to(acts.device))


def _layer_gradient(
    b: ConceptBasis, x: Tuple[Tensor, ...], target: Tensor, extra: Tuple[Any, ...]
) -> Tuple[Tensor, Tensor]:
    """``(A, d logit_target / dA)`` at the basis' layer, one forward and one backward pass."""
    with ModelGuard(b.model, freeze_parameters=True) as guard, torch.enable_grad():
        captured = guard.capture(b.module, "layer", leaf=True)
        logits = guard.forward(b.model, *x, *extra)
        check_target_range(logits, target)
        layer_out = captured.tensor()
        score = logits.gather(1, target.to(logits.device)[:, None]).sum()
        (grad,) = torch.autograd.grad(score, layer_out)
    acts = b.raw(layer_out.detach())
    grads = b.raw(grad)
    if acts.dim() == 2:
        acts, grads = acts.unsqueeze(-1), grads.unsqueeze(-1)
    return acts, grads


@validated()
def class_importance(
    result: Union[ConceptImportance, Tensor], labels: Any, residual: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """Mean concept importance per class.

    Args:
        result: a :class:`ConceptImportance` or an importance tensor ``(N, d)``.
        labels: ``(N,)`` class of each example (e.g. the targets, or the true labels).
        residual: ``(N,)`` residuals when ``result`` is a tensor (optional).

    Returns:
        ``(importance (n_classes, d), residual (n_classes,), classes (n_classes,))`` over the
        classes present in ``labels`` (sorted); the residual is zeros when unknown.

    Example::

        from captum_concepts.concept import CoupledNMFConcepts, class_importance, concept_importance

        cnmf = CoupledNMFConcepts(n_concepts=5, model=model, layers=["block3.pool"], max_iter=50,
                                  random_state=0).fit(data.x_train[:256])
        result = concept_importance(cnmf, data.x_test[:32], target=data.y_test[:32])
        per_class, residual, classes = class_importance(result, data.y_test[:32])  # (n_classes, 5)
    """
    if isinstance(result, ConceptImportance):
        imp, res = result.importance, result.residual
    else:
        imp, res = result, residual
    if not isinstance(imp, Tensor) or imp.dim() != 2:
        raise ValueError("result must be a ConceptImportance or an (N, d) importance tensor")
    values = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if values.ndim != 1 or len(values) != imp.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per example (N={imp.shape[0]}), got {values.shape}"
        )
    classes, inverse = np.unique(values, return_inverse=True)
    index = torch.as_tensor(inverse.reshape(-1), device=imp.device)
    counts = torch.zeros(len(classes), dtype=imp.dtype, device=imp.device).index_add_(
        0, index, torch.ones_like(imp[:, 0])
    )
    mean = torch.zeros(len(classes), imp.shape[1], dtype=imp.dtype, device=imp.device).index_add_(
        0, index, imp
    )
    res_mean = torch.zeros(len(classes), dtype=imp.dtype, device=imp.device)
    if res is not None:
        res_mean = res_mean.index_add_(0, index, res.to(imp))
    return mean / counts[:, None], res_mean / counts, torch.as_tensor(classes)
