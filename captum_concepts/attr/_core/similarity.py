"""SimilarityAttribution: which pixels (or source-layer positions) of two inputs make their
embeddings similar, and which part of one matches which part of the other.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..._utils.common import TensorOrTuple, check_batch, format_additional_args, format_inputs, restore_form
from ..._utils.layers import LayerSpec, resolve_layer
from .embedding_attribution import METHODS, EmbeddingAttribution
from .layer_readout import Embedding, read_embeddings

__all__ = ["SimilarityAttribution", "SIMILARITIES"]

SIMILARITIES = ("cosine", "dot")


def _channel_sum(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.sum(dim)


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
    dot = (za * zb).sum(1)
    if similarity == "dot":
        return dot
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

    def __init__(self, towers: Sequence[Embedding], similarity: str, stacked: bool, n_inputs_a: int) -> None:
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
    ``b`` fixed, summed over channels::

        m^a(p) = sum_c A_c(p),   A = F * ds/dF  ("activation_gradient"),  ds/dF  ("gradient"),
                                 alpha_c F_c with alpha_c the spatial mean of ds/dF_c  ("gradcam")

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
        **kwargs: passed to :class:`EmbeddingAttribution` (``upsample``, ``strategy``,
            ``eval_mode``, ``reshape_transform``, ``attribute_to_layer_input``); with two towers a
            list ``reshape_transform=[for_a, for_b]`` gives one per tower.

    ``multiplies_by_inputs`` is True except for ``"gradient"``. The model is never modified:
    hooks and flags go through :class:`~captum_concepts._utils.hooks.ModelGuard`.

    Example::

        >>> sa = SimilarityAttribution(encoder, layer="layer3", similarity="cosine")
        >>> maps_a, maps_b = sa.attribute(images_a, images_b)     # (N, H, W) each
        >>> M = sa.correspondence(images_a, images_b)             # (N, h*w, h*w) at layer3
    """

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
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model_b is not None and not isinstance(model_b, nn.Module):
            raise TypeError(f"model_b must be a torch.nn.Module or None, got {type(model_b).__name__}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
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
        self.kwargs = dict(kwargs)
        # validate the EmbeddingAttribution options once, here
        EmbeddingAttribution(
            model,
            embedding_layer=self.embedding_layer,
            layer=self.layer,
            method=method,
            **self._tower_kwargs(0),
        )

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.method != "gradient"

    def _tower_kwargs(self, side: int) -> Dict[str, Any]:
        kwargs = dict(self.kwargs)
        transform = kwargs.get("reshape_transform")
        if not self.shared and isinstance(transform, (list, tuple)) and len(transform) == 2:
            kwargs["reshape_transform"] = transform[side]
        return kwargs

    def _towers(self) -> List[Embedding]:
        if self.shared:
            return [Embedding(self.model, self.embedding_layer, "embedding_layer")]
        return [
            Embedding(self.model, self.embedding_layer, "embedding_layer"),
            Embedding(self.model_b, self.embedding_layer_b, "embedding_layer_b"),
        ]

    def _pair(self, inputs_a: TensorOrTuple, inputs_b: TensorOrTuple):
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
        return xa, xb, a_tuple, b_tuple, n, stacked

    # ------------------------------------------------------------------ public
    def attribute(
        self,
        inputs_a: TensorOrTuple,
        inputs_b: TensorOrTuple,
        additional_forward_args: Any = None,
        additional_forward_args_b: Any = None,
    ):
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
            ``(maps_a, maps_b)``: each a tensor ``(N, *S0)`` (the spatial shape of that side's
            first input; the layer resolution with ``upsample=None``; ``(N,)`` for a dense
            source), or a tuple of them for tuple inputs with ``layer=None``.
        """
        xa, xb, a_tuple, b_tuple, n, stacked = self._pair(inputs_a, inputs_b)
        extra_a, extra_b = _extras(additional_forward_args, additional_forward_args_b)
        towers = self._towers()
        objective = _PairObjective(towers, self.similarity, stacked, len(xa))
        if stacked:
            if additional_forward_args_b is not None:
                extra_a = tuple(
                    torch.cat([a, b]) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a
                    for a, b in zip(extra_a, extra_b)
                )
            else:
                extra_a = _repeat_batch_args(extra_a, n)
        objective.extra = (extra_a, extra_b)
        layers: List[Optional[nn.Module]] = [self.layer] if stacked else [self.layer, self.layer_b]
        kwargs = dict(self.kwargs)
        if not self.shared and isinstance(kwargs.get("reshape_transform"), tuple):
            kwargs["reshape_transform"] = list(kwargs["reshape_transform"])
        ea = EmbeddingAttribution(
            objective,
            layer=layers,
            method=self.method,
            channel_aggregator=_channel_sum,
            embedding_aggregator="mean",
            **kwargs,
        )
        with read_embeddings(towers):
            if stacked:
                x = tuple(torch.cat([ta, tb]) for ta, tb in zip(xa, xb))
                (maps,) = ea.attribute(x)
                parts = maps if isinstance(maps, tuple) else (maps,)
                maps_a = tuple(m[:n] for m in parts)
                maps_b = tuple(m[n:] for m in parts)
            else:
                got_a, got_b = ea.attribute(tuple(xa) + tuple(xb))
                maps_a = got_a[: len(xa)] if self.layer is None else _as_tuple(got_a)
                maps_b = got_b[len(xa) :] if self.layer_b is None else _as_tuple(got_b)
        return (
            restore_form(maps_a, a_tuple if self.layer is None else len(maps_a) > 1),
            restore_form(maps_b, b_tuple if self.layer_b is None else len(maps_b) > 1),
        )

    def similarity_scores(
        self,
        inputs_a: TensorOrTuple,
        inputs_b: TensorOrTuple,
        additional_forward_args: Any = None,
        additional_forward_args_b: Any = None,
    ) -> torch.Tensor:
        """``s(z(a_i), z(b_i))`` for every pair, ``(N,)`` (no gradients)."""
        za, zb = self._embeddings(inputs_a, inputs_b, additional_forward_args, additional_forward_args_b)
        return _similarity(za, zb, self.similarity)

    def _embeddings(self, inputs_a, inputs_b, extra_a, extra_b) -> Tuple[torch.Tensor, torch.Tensor]:
        xa, xb, _, _, _, _ = self._pair(inputs_a, inputs_b)
        extra_a, extra_b = _extras(extra_a, extra_b)
        towers = self._towers()
        with read_embeddings(towers, eval_mode=self.kwargs.get("eval_mode", True)), torch.no_grad():
            return towers[0].read(xa, extra_a), towers[-1].read(xb, extra_b)

    def per_dim_maps(
        self,
        inputs_a: TensorOrTuple,
        inputs_b: TensorOrTuple,
        additional_forward_args: Any = None,
        additional_forward_args_b: Any = None,
        **attribute_kwargs: Any,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""Per-dimension maps ``m_d(p)`` of both sides (``D`` gradients per side), channel-summed.

        Returns ``(m_a, m_b)`` of shape ``(N, D, *S)`` each, at the source resolution (no
        upsampling); for tuple inputs with ``layer=None`` only the first input's maps.
        ``attribute_kwargs`` go to :meth:`EmbeddingAttribution.attribute` (``embedding_dims``,
        ``internal_batch_size``, ``show_progress``).
        """
        xa, xb, _, _, _, _ = self._pair(inputs_a, inputs_b)
        extra_a, extra_b = _extras(additional_forward_args, additional_forward_args_b)
        out = []
        for side, (model, emb, lay, x, extra) in enumerate(
            [
                (self.model, self.embedding_layer, self.layer, xa, extra_a),
                (self.model_b, self.embedding_layer_b, self.layer_b, xb, extra_b),
            ]
        ):
            kwargs = self._tower_kwargs(side)
            kwargs["upsample"] = None
            ea = EmbeddingAttribution(
                model,
                embedding_layer=emb,
                layer=lay,
                method=self.method,
                channel_aggregator=_channel_sum,
                **kwargs,
            )
            maps = ea.attribute(
                x, additional_forward_args=extra or None, return_per_dim=True, **attribute_kwargs
            )
            out.append(maps[0] if isinstance(maps, tuple) else maps)
        return out[0], out[1]

    def correspondence(
        self,
        inputs_a: TensorOrTuple,
        inputs_b: TensorOrTuple,
        additional_forward_args: Any = None,
        additional_forward_args_b: Any = None,
        **attribute_kwargs: Any,
    ) -> torch.Tensor:
        r"""Correspondence maps ``M(p, q)``: how much positions ``p`` of ``a`` and ``q`` of ``b`` make
        the similarity.

        A second-order explanation, as BiLRP (Eberle et al. 2022)::

            M(p, q) = c * sum_d m_d^a(p) m_d^b(q),   c = 1 (dot),  1 / (|z(a)| |z(b)|) (cosine)

        with the per-dimension maps of :meth:`per_dim_maps`. For ``"activation_gradient"`` on a
        positively homogeneous encoder (ReLU, no biases, source layer or inputs), Euler's theorem
        gives ``sum_q m_d^b(q) = z_d(b)``, hence ``sum_q M(p, q) = m^a(p)`` (the plain map of
        :meth:`attribute` for ``dot``, and its first term for ``cosine``) and
        ``sum_{p,q} M(p, q) = s``. Costs ``D`` gradients per side (the ``strategy`` given to the
        constructor picks how :class:`EmbeddingAttribution` runs them): meant for source layers
        with few positions.

        Returns:
            Tensor ``(N, P_a, P_b)`` with ``P`` the number of source positions (spatial
            dimensions flattened row-major; 1 for a dense source).
        """
        ma, mb = self.per_dim_maps(
            inputs_a, inputs_b, additional_forward_args, additional_forward_args_b, **attribute_kwargs
        )
        n, d = ma.shape[:2]
        fa, fb = ma.reshape(n, d, -1), mb.reshape(n, d, -1)
        m = torch.einsum("ndp,ndq->npq", fa, fb)
        if self.similarity == "cosine":
            za, zb = self._embeddings(inputs_a, inputs_b, additional_forward_args, additional_forward_args_b)
            m = m * _inverse((za.norm(dim=1) * zb.norm(dim=1)).to(m.dtype))[:, None, None]
        return m


def _extras(extra_a: Any, extra_b: Any) -> Tuple[Tuple[Any, ...], Tuple[Any, ...]]:
    """Side ``b`` uses side ``a``'s extra forward arguments unless it has its own."""
    a = format_additional_args(extra_a)
    return a, (a if extra_b is None else format_additional_args(extra_b))


def _resolve(model: nn.Module, layer: Optional[LayerSpec], argument: str) -> Optional[nn.Module]:
    return None if layer is None else resolve_layer(model, layer, argument)


def _as_tuple(maps: Any) -> Tuple[torch.Tensor, ...]:
    return maps if isinstance(maps, tuple) else (maps,)
