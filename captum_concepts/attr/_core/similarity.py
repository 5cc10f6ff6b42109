"""SimilarityAttribution: which pixels (or source-layer positions) of two inputs make their
embeddings similar, and which part of one matches which part of the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..._utils.common import TensorOrTuple, check_batch, format_additional_args, format_inputs, restore_form
from ..._utils.finite import check_finite_result, check_finite_rows, max_scaled
from ..._utils.layers import LayerSpec, resolve_layer
from ..._utils.layout import ReshapeTransform, expand_per_layer
from ..._utils.validation import MODEL, NONE, AnyOf, Options, validated
from ..._utils.warn import warn_user
from .embedding_attribution import METHODS, EmbeddingAttribution
from .layer_readout import LayerReadout, Readouts
from .upsampling import check_upsample

__all__ = ["SimilarityAttribution", "SIMILARITIES"]

SIMILARITIES = ("cosine", "dot")


def similarity_weights(
    za: torch.Tensor, zb: torch.Tensor, similarity: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""The exact gradients ``(ds/dz_a, ds/dz_b)`` of ``s(z_a, z_b)``, each ``(N, D)``.

    ``dot``: ``(z_b, z_a)``. ``cosine``: ``ds/dz_a = z_b / (|z_a| |z_b|) - s z_a / |z_a|^2`` (and
    symmetrically for ``b``); an embedding of norm 0 gets weight 0 (its cosine is taken as 0).
    """
    if similarity == "dot":
        return zb, za
    inv_a = _inverse(za.norm(dim=1, keepdim=True))
    inv_b = _inverse(zb.norm(dim=1, keepdim=True))
    s = (za * zb).sum(1, keepdim=True) * inv_a * inv_b
    return zb * inv_a * inv_b - s * za * inv_a**2, za * inv_a * inv_b - s * zb * inv_b**2


def _inverse(norms: torch.Tensor) -> torch.Tensor:
    """``1 / norms``, and 0 where a norm is 0 (a zero embedding's cosine is taken as 0)."""
    return torch.where(norms > 0, 1.0 / norms.clamp_min(1e-30), torch.zeros_like(norms))


def _similarity(za: torch.Tensor, zb: torch.Tensor, similarity: str) -> torch.Tensor:
    if similarity == "dot":
        return (za * zb).sum(1)
    # the cosine does not change with the scale of either side: rows brought to a largest |value|
    # of 1 first, so that |z| cannot overflow (embeddings near 1e20 would give inf / inf)
    za, zb = max_scaled(za, 1), max_scaled(zb, 1)
    dot = (za * zb).sum(1)
    norms = za.norm(dim=1) * zb.norm(dim=1)
    return torch.where(norms > 0, dot / norms.clamp_min(1e-30), torch.zeros_like(dot))


def _repeat_batch_args(args: Tuple[Any, ...], n: int) -> Tuple[Any, ...]:
    """Captum's expansion for a stacked batch: tensors with batch size ``n`` are repeated."""
    return tuple(
        torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n else a
        for a in args
    )


class _PairObjective(nn.Module):
    """``sum_d w_d(a) z_d(a) + sum_d w_d(b) z_d(b)`` with ``w = ds/dz`` detached: shape ``(N', 1)``.

    Its gradient w.r.t. either side equals the gradient of ``s(z(a), z(b))`` (the weights are the
    exact gradient of ``s`` at the current embeddings), so one backward pass explains both sides.
    ``stacked``: one encoder on the batch ``[a; b]`` (output ``(2N, 1)``); otherwise the inputs
    are ``(*inputs_a, *inputs_b)`` and each tower runs on its own (output ``(N, 1)``).
    """

    def __init__(
        self, towers: Sequence[LayerReadout], similarity: str, stacked: bool, n_inputs_a: int
    ) -> None:
        super().__init__()
        self.towers = (
            nn.ModuleList([t.model for t in towers])
            if towers[0].model is not towers[-1].model
            else nn.ModuleList([towers[0].model])
        )
        self._towers = list(towers)
        self.similarity = similarity
        self.stacked = stacked
        self.n_inputs_a = n_inputs_a
        self.extra: Tuple[Tuple[Any, ...], Tuple[Any, ...]] = ((), ())
        self.training = any(t.model.training for t in towers)  # the guard warns about the user's models

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.stacked:
            z = self._towers[0].read(inputs, self.extra[0])
            za, zb = z.chunk(2)
            wa, wb = similarity_weights(za.detach(), zb.detach(), self.similarity)
            return (torch.cat([wa, wb]) * z).sum(1, keepdim=True)
        za = self._towers[0].read(inputs[: self.n_inputs_a], self.extra[0])
        zb = self._towers[-1].read(inputs[self.n_inputs_a :], self.extra[1])
        if za.shape[1] != zb.shape[1]:
            raise ValueError(
                f"the two embeddings have D = {za.shape[1]} and D = {zb.shape[1]}; they must match"
            )
        wa, wb = similarity_weights(za.detach(), zb.detach(), self.similarity)
        return (wa * za).sum(1, keepdim=True) + (wb * zb).sum(1, keepdim=True)


class SimilarityAttribution:
    r"""Attribution of the similarity ``s(z(a), z(b))`` of two embeddings to both inputs.

    ``z`` is an embedding (the output of ``embedding_layer``, flattened to ``(N, D)``) and ``s`` is
    ``"dot"``, ``s = sum_d z_d(a) z_d(b)``, or ``"cosine"``, ``s = z(a).z(b) / (|z(a)| |z(b)|)``.
    The map of side ``a`` at source position ``p`` (a pixel, or a position of ``layer``) is the
    base method of :class:`EmbeddingAttribution` applied to ``s`` as a function of ``a`` with
    ``b`` fixed, summed over channels:

    .. math::

        m^a(p) = \sum_c A_c(p), \qquad
        A = F \odot \frac{\partial s}{\partial F} \ (\texttt{activation_gradient}), \quad
        \frac{\partial s}{\partial F} \ (\texttt{gradient}), \quad
        \alpha_c F_c \ (\texttt{gradcam})

    with :math:`\alpha_c` the spatial mean of :math:`\partial s / \partial F_c`,

    and ``ds/dF = sum_d w_d dz_d(a)/dF`` with ``w = ds/dz(a)``: ``w = z(b)`` for ``dot`` (the
    embedding aggregation of ``a``'s per-dimension maps weighted by ``z(b)``) and, for ``cosine``,
    its exact gradient ``w = z(b) / (|z(a)| |z(b)|) - s z(a) / |z(a)|^2``. The weights are
    computed inside the forward pass and detached, so both sides cost ONE forward and ONE
    backward pass together (not ``D``), like one Captum ``InputXGradient`` call on the pair.
    For ``"activation_gradient"`` w.r.t. the inputs, ``m^a`` summed over its channels is Captum's
    ``InputXGradient`` of ``s`` (tests check this).

    Encoders:

    - **Shared encoder** (siamese, retrieval; ``model_b=None``): ``model`` embeds both sides.
      When ``inputs_a`` and ``inputs_b`` have the same shapes the pair runs as one stacked
      batch ``[a; b]`` of ``2N`` (a source ``layer`` then runs once per forward, as
      :class:`EmbeddingAttribution` needs); otherwise the model is called twice, which works for
      ``layer=None`` only. ``additional_forward_args`` go to both calls (tensors whose first
      dimension is ``N`` are repeated for the stacked batch, as Captum expands them).
    - **Two towers** (CLIP-like): ``model_b`` embeds side ``b`` (its embedding layer
      ``embedding_layer_b``, its source layer ``layer_b``, its arguments
      ``additional_forward_args_b``). The towers may take different inputs (images and token
      ids), e.g. ``model=clip.vision_model, model_b=clip.text_model``; no layer may belong to
      both towers.

    Args:
        model (nn.Module): the encoder of ``a`` (and of ``b`` unless ``model_b`` is given).
        embedding_layer (nn.Module or str, optional): layer of ``model`` whose output is the
            embedding. Default None: the model output.
        layer (nn.Module, str or None): source layer of ``model``; None (default) means the
            inputs.
        method (str): ``"activation_gradient"`` (default), ``"gradient"`` or ``"gradcam"``.
        similarity (str): ``"cosine"`` (default) or ``"dot"``.
        model_b: the encoder of side ``b`` (two towers, see above). Default None: ``model`` embeds both sides.
        embedding_layer_b: the embedding layer of ``model_b``. Defaults to ``embedding_layer`` when
            ``model_b`` is None.
        layer_b: the source layer of ``model_b``. Defaults to ``layer`` when ``model_b`` is None.
        reshape_transform (callable or None): brings the source layer's output to ``(N, C, *S)``
            (pytorch-grad-cam's convention; see :class:`~captum_concepts.attr.tokens_to_grid`),
            as in :class:`EmbeddingAttribution`; applied to the source layer of both sides (of
            both towers with ``model_b``). Default None.
        tower_reshape_transforms (pair of callables or None): with two towers, one transform
            per tower, ``(for_a, for_b)`` (either may be None), instead of
            ``reshape_transform``. Default None.
        **kwargs: passed to :class:`EmbeddingAttribution` (``upsample``, ``strategy``,
            ``eval_mode``, ``attribute_to_layer_input``).

    ``reshape_transform`` keeps the meaning it has in pytorch-grad-cam and everywhere in this
    package (one transform for every layer explained; a list would be one per layer), so the
    per-tower pair has its own argument. The former ``reshape_transform=[for_a, for_b]`` with two
    towers still means ``tower_reshape_transforms=(for_a, for_b)``, with a ``DeprecationWarning``.

    ``multiplies_by_inputs`` is True except for ``"gradient"``. The model is never modified:
    every hook and flag is restored after each call, also after an exception or Ctrl-C.

    Example::

        from captum_concepts.attr import SimilarityAttribution

        sa = SimilarityAttribution(model, embedding_layer="embedding_relu", layer="block2.relu")
        a, b = data.x_test[:4], data.x_test[4:8]  # four pairs
        maps_a, maps_b = sa.attribute(a, b)  # (4, 8, 8) each: why a_i and b_i are similar
        scores = sa.similarity_scores(a, b)  # (4,) cosine similarities of the embeddings
    """

    @validated(
        params=False,
        args={
            "model": MODEL,
            "model_b": AnyOf(NONE, MODEL),
            "method": Options(METHODS),
            "similarity": Options(SIMILARITIES),
        },
    )
    def __init__(
        self,
        model: nn.Module,
        embedding_layer: Optional[LayerSpec] = None,
        layer: Optional[LayerSpec] = None,
        method: str = "activation_gradient",
        similarity: str = "cosine",
        model_b: Optional[nn.Module] = None,
        embedding_layer_b: Optional[LayerSpec] = None,
        layer_b: Optional[LayerSpec] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        tower_reshape_transforms: Optional[Sequence[Optional[ReshapeTransform]]] = None,
        **kwargs: Any,
    ) -> None:
        for key in ("channel_aggregator", "embedding_aggregator", "embedding_layer", "layer"):
            if key in kwargs:
                raise TypeError(f"SimilarityAttribution() got an unexpected keyword argument {key!r}")
        self.model = model
        self.shared = model_b is None
        self.model_b = model if model_b is None else model_b
        if self.shared:
            embedding_layer_b = embedding_layer if embedding_layer_b is None else embedding_layer_b
            layer_b = layer if layer_b is None else layer_b
        self.embedding_layer = _resolve(model, embedding_layer, "embedding_layer")
        self.embedding_layer_b = _resolve(self.model_b, embedding_layer_b, "embedding_layer_b")
        self.layer = _resolve(model, layer, "layer")
        self.layer_b = _resolve(self.model_b, layer_b, "layer_b")
        if self.shared and (
            self.embedding_layer is not self.embedding_layer_b or self.layer is not self.layer_b
        ):
            raise ValueError(
                "with a shared encoder (model_b=None) embedding_layer_b and layer_b must equal "
                "embedding_layer and layer; pass model_b for two towers"
            )
        if not self.shared and any(
            lay is not None and any(m is lay for m in other.modules())
            for lay, other in ((self.layer, self.model_b), (self.layer_b, self.model))
        ):
            raise ValueError(
                "layer / layer_b is part of both towers, so it would run twice per forward pass; with one "
                "encoder for both sides leave model_b=None"
            )
        self.method = method
        self.similarity = similarity
        self.reshape_transform = reshape_transform
        self.tower_reshape_transforms = tower_reshape_transforms
        self._transforms = _per_tower(self.shared, reshape_transform, tower_reshape_transforms)
        self.kwargs = dict(kwargs)
        check_upsample(self.kwargs.get("upsample", "nearest"))
        # each side's per-dimension explainer (one for a shared encoder), built and checked once
        sides = [(model, self.layer, self.embedding_layer), (model_b, self.layer_b, self.embedding_layer_b)]
        self._sides = [
            self._explainer(m, lay, fn, embedding_layer=emb, upsample=None)
            for (m, lay, emb), fn in zip(sides[: 1 if self.shared else 2], self._transforms)
        ]

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.method != "gradient"

    def _explainer(
        self, model: nn.Module, layer: Any, transform: Any, **options: Any
    ) -> EmbeddingAttribution:
        """The :class:`EmbeddingAttribution` of one side (or of the pair objective), channel-summed."""
        return EmbeddingAttribution(
            model,
            layer=layer,
            method=self.method,
            reshape_transform=transform,
            **{"channel_aggregator": torch.sum, **self.kwargs, **options},
        )

    def _towers(self) -> List[LayerReadout]:
        towers = [LayerReadout(self.model, self.embedding_layer, "embedding_layer")]
        if not self.shared:
            towers.append(LayerReadout(self.model_b, self.embedding_layer_b, "embedding_layer_b"))
        return towers

    def _pair(self, inputs_a: TensorOrTuple, inputs_b: TensorOrTuple, extra_a: Any, extra_b: Any) -> _Pair:
        """The one prelude of every entry: both sides checked, their extra arguments, the batch plan."""
        xa, a_tuple = format_inputs(inputs_a, "inputs_a")
        xb, b_tuple = format_inputs(inputs_b, "inputs_b")
        n = check_batch(xa, "inputs_a")
        if check_batch(xb, "inputs_b") != n:
            raise ValueError(
                f"inputs_a and inputs_b must hold the same number of pairs, got {n} and {xb[0].shape[0]}"
            )
        stacked = (
            self.shared
            and len(xa) == len(xb)
            and all(ta.shape[1:] == tb.shape[1:] and ta.dtype == tb.dtype for ta, tb in zip(xa, xb))
        )
        if self.shared and not stacked and self.layer is not None:
            raise ValueError(
                "inputs_a and inputs_b have different shapes, so the shared encoder must run twice and "
                "layer would run twice per forward pass; use layer=None, or pad the inputs to one shape"
            )
        a = format_additional_args(extra_a)
        b = a if extra_b is None else format_additional_args(extra_b)
        return _Pair(xa, xb, a_tuple, b_tuple, n, stacked, a, b, extra_b is not None)

    # ------------------------------------------------------------------ public
    @validated(grad=True)
    def attribute(
        self,
        inputs_a: TensorOrTuple,
        inputs_b: TensorOrTuple,
        additional_forward_args: Any = None,
        additional_forward_args_b: Any = None,
    ) -> Tuple[Any, Any]:
        r"""Maps of the contribution of each position of ``a`` and of ``b`` to ``s(z(a), z(b))``.

        Args:
            inputs_a (Tensor or tuple of Tensor): the first input of each pair, ``N`` examples (example ``i``
                of ``a`` is paired with example ``i`` of ``b``).
            inputs_b (Tensor or tuple of Tensor): the second input of each pair, ``N`` examples.
            additional_forward_args (Any, optional): extra forward arguments of ``model``;
                with a shared encoder also those of side ``b`` unless
                ``additional_forward_args_b`` is given.
            additional_forward_args_b (Any, optional): extra forward arguments for side ``b``.

        Returns:
            ``(maps_a, maps_b)``, each side in Captum's form. The inputs as source
            (``layer=None``): tuples in, tuples out (a tensor ``(N, *S)`` for a tensor input,
            ``S`` its spatial shape, ``(N,)`` for a dense input; a tuple of them for tuple
            inputs). A source layer: what the layer outputs, whatever the form of the inputs (a
            tensor ``(N, *S0)`` for a layer with one output tensor, ``S0`` the spatial shape of
            that side's first input, or the layer resolution with ``upsample=None``; a tuple of
            them for a layer with several output tensors).
        """
        p = self._pair(inputs_a, inputs_b, additional_forward_args, additional_forward_args_b)
        towers = self._towers()
        objective = _PairObjective(towers, self.similarity, p.stacked, len(p.xa))
        objective.extra = p.objective_extra()
        if p.stacked:
            ea = self._explainer(objective, [self.layer], [self._transforms[0]], embedding_aggregator="mean")
        else:
            layers = [self.layer, self.layer_b]
            ea = self._explainer(objective, layers, list(self._transforms), embedding_aggregator="mean")
        with Readouts(towers):
            if p.stacked:
                x = tuple(torch.cat([ta, tb]) for ta, tb in zip(p.xa, p.xb))
                (maps,) = ea.attribute(x)
                parts = _as_tuple(maps)
                maps_a = tuple(m[: p.n] for m in parts)
                maps_b = tuple(m[p.n :] for m in parts)
            else:
                got_a, got_b = ea.attribute(tuple(p.xa) + tuple(p.xb))
                maps_a = got_a[: len(p.xa)] if self.layer is None else got_a
                maps_b = got_b[len(p.xa) :] if self.layer_b is None else got_b
        return _form(maps_a, self.layer, p.a_tuple), _form(maps_b, self.layer_b, p.b_tuple)

    @validated()
    def similarity_scores(
        self,
        inputs_a: TensorOrTuple,
        inputs_b: TensorOrTuple,
        additional_forward_args: Any = None,
        additional_forward_args_b: Any = None,
    ) -> torch.Tensor:
        """``s(z(a_i), z(b_i))`` for every pair, ``(N,)`` (no gradients).

        Raises:
            ValueError: an embedding holds NaN or infinite values (NaN/Inf inputs), or a ``"dot"``
                similarity overflowed (finite inputs, e.g. scaled by ``1e30``); the message names
                the examples. A NaN pair is never given a finite score; the cosine is computed
                on rescaled embeddings, so large finite embeddings give their exact cosine.
        """
        p = self._pair(inputs_a, inputs_b, additional_forward_args, additional_forward_args_b)
        za, zb = self._embeddings(p)
        check_finite_rows(za, "the embedding of inputs_a")
        check_finite_rows(zb, "the embedding of inputs_b")
        scores = _similarity(za, zb, self.similarity)
        return check_finite_result(scores, "SimilarityAttribution.similarity_scores", p.xa + p.xb)

    def _embeddings(self, p: _Pair) -> Tuple[torch.Tensor, torch.Tensor]:
        towers = self._towers()
        with Readouts(towers, eval_mode=self.kwargs.get("eval_mode", True)), torch.no_grad():
            return towers[0].read(p.xa, p.extra_a), towers[-1].read(p.xb, p.extra_b)

    @validated(grad=True)
    def per_dim_maps(
        self,
        inputs_a: TensorOrTuple,
        inputs_b: TensorOrTuple,
        additional_forward_args: Any = None,
        additional_forward_args_b: Any = None,
        **attribute_kwargs: Any,
    ) -> Tuple[Any, Any]:
        r"""Per-dimension maps ``m_d(p)`` of both sides (``D`` gradients per side), channel-summed.

        ``attribute_kwargs`` go to :meth:`EmbeddingAttribution.attribute` (``embedding_dims``,
        ``internal_batch_size``, ``show_progress``).

        Returns:
            ``(m_a, m_b)``, each ``(N, D, *S)`` at the source resolution (no upsampling), in the
            form of :meth:`attribute`: a tuple of them for tuple inputs with ``layer=None`` (one
            per input) and for a source layer with several output tensors.
        """
        p = self._pair(inputs_a, inputs_b, additional_forward_args, additional_forward_args_b)
        return self._per_dim(p, attribute_kwargs)

    def _per_dim(self, p: _Pair, attribute_kwargs: Any) -> Tuple[Any, Any]:
        """Each side's per-dimension maps, in Captum's form (the inputs' form for ``layer=None``)."""
        a, b = self._sides[0], self._sides[-1]
        return tuple(
            ea.attribute(x if was_tuple else x[0], extra or None, return_per_dim=True, **attribute_kwargs)
            for ea, x, extra, was_tuple in ((a, p.xa, p.extra_a, p.a_tuple), (b, p.xb, p.extra_b, p.b_tuple))
        )

    @validated(grad=True)
    def correspondence(
        self,
        inputs_a: TensorOrTuple,
        inputs_b: TensorOrTuple,
        additional_forward_args: Any = None,
        additional_forward_args_b: Any = None,
        **attribute_kwargs: Any,
    ) -> Any:
        r"""Correspondence maps ``M(p, q)``: how much positions ``p`` of ``a`` and ``q`` of ``b`` make
        the similarity.

        A second-order explanation, as BiLRP (Eberle et al. 2022):

        .. math::

            M(p, q) = c \sum_d m_d^a(p)\, m_d^b(q), \qquad
            c = 1 \ (\texttt{dot}), \quad c = \frac{1}{\|z(a)\|\,\|z(b)\|} \ (\texttt{cosine})

        with the per-dimension maps of :meth:`per_dim_maps`. For ``"activation_gradient"`` on a
        positively homogeneous encoder (ReLU, no biases, source layer or inputs), Euler's theorem
        gives ``sum_q m_d^b(q) = z_d(b)``, hence ``sum_q M(p, q) = m^a(p)`` (the plain map of
        :meth:`attribute` for ``dot``, and its first term for ``cosine``) and
        ``sum_{p,q} M(p, q) = s``. Costs ``D`` gradients per side (the ``strategy`` given to the
        constructor picks how :class:`EmbeddingAttribution` runs them): meant for source layers
        with few positions.

        Returns:
            Tensor ``(N, P_a, P_b)`` with ``P`` the number of source positions (spatial
            dimensions flattened row-major; 1 for a dense source) when each side's maps are one
            tensor. When a side's maps are a tuple (tuple inputs with ``layer=None``, or a layer
            with several outputs; see :meth:`per_dim_maps`), that side becomes a level of tuples,
            as in ``torch.autograd.functional.jacobian``: ``M[i]`` for a tuple on side ``a``
            only, ``M[j]`` for side ``b`` only, ``M[i][j]`` ``(N, P_a_i, P_b_j)`` for both; the
            sums above then run over all the blocks of a side.
        """
        p = self._pair(inputs_a, inputs_b, additional_forward_args, additional_forward_args_b)
        ma, mb = self._per_dim(p, attribute_kwargs)
        scale = None
        if self.similarity == "cosine":
            za, zb = self._embeddings(p)
            scale = _inverse(za.norm(dim=1) * zb.norm(dim=1))
        rows = tuple(
            restore_form(tuple(_correspondence(fa, fb, scale) for fb in _as_tuple(mb)), isinstance(mb, tuple))
            for fa in _as_tuple(ma)
        )
        return restore_form(rows, isinstance(ma, tuple))


@dataclass
class _Pair:
    """Both sides of a call, checked: inputs as tuples, whether each was a tuple, ``N``, whether the
    pair runs as one stacked batch, and each side's extra forward arguments (``own_b``: side ``b``
    has its own)."""

    xa: Tuple[torch.Tensor, ...]
    xb: Tuple[torch.Tensor, ...]
    a_tuple: bool
    b_tuple: bool
    n: int
    stacked: bool
    extra_a: Tuple[Any, ...]
    extra_b: Tuple[Any, ...]
    own_b: bool

    def objective_extra(self) -> Tuple[Tuple[Any, ...], Tuple[Any, ...]]:
        """The extra arguments of :class:`_PairObjective`: for the stacked batch ``[a; b]``, side
        ``b``'s own tensors appended to side ``a``'s, else Captum's repetition of ``a``'s."""
        if not self.stacked:
            return self.extra_a, self.extra_b
        if not self.own_b:
            return _repeat_batch_args(self.extra_a, self.n), self.extra_b
        both = tuple(
            torch.cat([a, b]) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a
            for a, b in zip(self.extra_a, self.extra_b)
        )
        return both, self.extra_b


def _correspondence(ma: torch.Tensor, mb: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    """Block ``M = c sum_d m_d^a(p) m_d^b(q)``: ``(N, D, *S_a)``, ``(N, D, *S_b)`` -> ``(N, P_a, P_b)``"""
    n, d = ma.shape[:2]
    m = torch.einsum("ndp,ndq->npq", ma.reshape(n, d, -1), mb.reshape(n, d, -1))
    return m if scale is None else m * scale.to(m.dtype)[:, None, None]


def _per_tower(
    shared: bool, reshape_transform: Any, tower_reshape_transforms: Any
) -> List[Optional[ReshapeTransform]]:
    """``(for_a, for_b)``: ``reshape_transform`` for both towers, or ``tower_reshape_transforms``."""
    if tower_reshape_transforms is not None:
        if shared:
            raise ValueError(
                "tower_reshape_transforms needs two towers (model_b); with a shared encoder both sides run "
                "the same layer: pass reshape_transform"
            )
        if reshape_transform is not None:
            raise ValueError(
                "pass reshape_transform (for both towers) or tower_reshape_transforms (one per tower), "
                "not both"
            )
        if not isinstance(tower_reshape_transforms, (list, tuple)):
            raise TypeError(
                "tower_reshape_transforms must be a pair (for_a, for_b) of None or callables, got "
                f"{type(tower_reshape_transforms).__name__}"
            )
        return expand_per_layer(tower_reshape_transforms, 2, "tower_reshape_transforms", per="tower")
    if not shared and isinstance(reshape_transform, (list, tuple)) and len(reshape_transform) == 2:
        warn_user(
            "SimilarityAttribution(reshape_transform=[for_a, for_b]) with two towers is deprecated: pass "
            "tower_reshape_transforms=(for_a, for_b); reshape_transform is one transform for both towers",
            DeprecationWarning,
        )
        return expand_per_layer(reshape_transform, 2, "reshape_transform", per="tower")
    (transform,) = expand_per_layer(reshape_transform, 1, "reshape_transform")
    return [transform, transform]


def _form(maps: Any, layer: Optional[nn.Module], was_tuple: bool) -> Any:
    """Captum's rule: the inputs as source keep the inputs' form; a layer gives a tensor for one output
    tensor and a tuple for several, whatever the inputs."""
    maps = _as_tuple(maps)
    return restore_form(maps, was_tuple if layer is None else len(maps) > 1)


def _resolve(model: nn.Module, layer: Optional[LayerSpec], argument: str) -> Optional[nn.Module]:
    return None if layer is None else resolve_layer(model, layer, argument)


def _as_tuple(maps: Any) -> Tuple[torch.Tensor, ...]:
    return tuple(maps) if isinstance(maps, (tuple, list)) else (maps,)
