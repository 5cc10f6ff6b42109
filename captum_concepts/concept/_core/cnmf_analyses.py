"""The analyses of a fitted :class:`~captum_concepts.concept.CoupledNMFConcepts` (private).

Saini & Papalexakis, "Analyzing Representations inside Convolutional Neural Networks", §4: the
top examples and classes of each concept (Table 1), the similarity of the concepts' neurons, the
pixel factors as images and their median masks, and the concept distribution of each example's
neighbours. They read the fitted factors only (no model, no data pass) and are methods of the
estimator through :class:`_CoupledNMFAnalyses`, as is the basis of one layer that concept maps read.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..._utils.validation import Bool, InstanceOf, Int, RealNumber, check_fitted, check_int, validated
from .basis import ConceptBasis
from .nonnegative_blocks import read_shift

__all__ = ["_CoupledNMFAnalyses", "FITTED_INPUTS"]

FITTED_INPUTS = InstanceOf((Tensor,), "the fitted examples as a tensor")


class _CoupledNMFAnalyses:
    """Analyses of the fitted factors ``example_factors_``, ``pixel_factors_``, ``neuron_factors_``."""

    @validated(params=False, fitted=True)
    def top_examples(self, k: int = 10) -> Tensor:
        """Indices ``(d, k)`` of the ``k`` examples with the largest ``F[c, :]`` per concept ``c``."""
        k = self._check_k(k, self.example_factors_.shape[1])
        return self.example_factors_.topk(k, dim=1).indices

    @validated(params=False, fitted=True)
    def class_scores(self, labels: Any) -> Tuple[Tensor, Tensor]:
        """Summed affinity per concept and class: ``(scores (d, n_classes), classes (n_classes,))``."""
        values = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        n = self.example_factors_.shape[1]
        if values.ndim != 1 or len(values) != n:
            raise ValueError(
                f"labels must be 1-D with one entry per fitted example (N={n}), got {values.shape}"
            )
        classes, inverse = np.unique(values, return_inverse=True)
        F = self.example_factors_
        index = torch.as_tensor(inverse.reshape(-1), device=F.device)
        scores = torch.zeros(F.shape[0], len(classes), dtype=F.dtype, device=F.device).index_add_(1, index, F)
        return scores, torch.as_tensor(classes)

    @validated(params=False, fitted=True)
    def top_classes(self, labels: Any, k: int = 3) -> Tensor:
        """The ``k`` classes with the largest summed ``F[c, class]`` per concept, ``(d, k)`` (Table 1).

        Entries are the label values themselves (not positions).
        """
        scores, classes = self.class_scores(labels)
        k = self._check_k(k, scores.shape[1])
        return classes[scores.topk(k, dim=1).indices.cpu()]

    @validated(params=False, fitted=True, args={"return_eigenvalues": Bool()})
    def neuron_similarity(
        self, layer: Union[int, str] = 0, return_eigenvalues: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Cosine similarity ``(d, d)`` between the concepts' neuron vectors (columns of ``O_j``).

        Args:
            layer (int or str): index into ``neuron_factors_`` or a layer name.
            return_eigenvalues (bool): also return the eigenvalues of the
                (symmetric) similarity matrix, descending. The paper reads a
                matrix close to the identity (eigenvalues near 1, small mean of
                the first few) as concepts using separate neurons.
        """
        j = self._layer_index(layer)
        O = self.neuron_factors_[j].double()
        unit = O / O.norm(dim=0).clamp_min(1e-30)
        sim = (unit.t() @ unit).to(self.example_factors_.dtype)
        if not return_eigenvalues:
            return sim
        eig = torch.linalg.eigvalsh(sim.double().cpu()).flip(0).to(sim.dtype)
        return sim, eig

    @validated(params=False, fitted=True)
    def factor_images(self, shape: Optional[Sequence[int]] = None) -> Tensor:
        """Pixel factors as images ``(d, C, H, W)``: ``P_i[:, c]`` reshaped, stacked over channels.

        Args:
            shape: ``(H, W)`` (or ``(C, H, W)``) of one channel; default: the
                input shape seen by :meth:`fit`.
        """
        if not self.pixel_factors_:
            raise ValueError("no pixel blocks were fitted (include_pixels=False or empty pixel_blocks)")
        if shape is None:
            if not self.input_shape_:
                raise ValueError("shape is needed when the model was fitted with fit_matrices()")
            shape = self.input_shape_[1:] if len(self.input_shape_) > 1 else self.input_shape_
        shape = tuple(int(s) for s in shape)
        size = self.pixel_factors_[0].shape[0]
        if len(shape) > 1 and shape[0] == len(self.pixel_factors_) and int(np.prod(shape[1:])) == size:
            shape = shape[1:]  # (C, H, W) given
        if int(np.prod(shape)) != size:
            raise ValueError(
                f"shape {shape} has {int(np.prod(shape))} pixels but the pixel blocks have {size}"
            )
        return torch.stack([p.t().reshape(-1, *shape) for p in self.pixel_factors_], dim=1)

    @validated(
        params=False,
        fitted=True,
        args={"inputs": FITTED_INPUTS, "quantile": RealNumber(0.0, 1.0, high_open=True)},
    )
    def factor_masks(self, inputs: Tensor, k: int = 1, quantile: float = 0.5) -> Tuple[Tensor, Tensor]:
        """Saini & Papalexakis's median masks of the factor images, applied to each concept's top examples.

        Args:
            inputs (Tensor): the fitted examples ``(N, C, H, W)`` in fit order.
            k (int): top examples per concept.
            quantile (float): threshold of each factor image (0.5: the median).

        Returns:
            ``(masks, overlays)``: ``masks`` bool ``(d, C, H, W)`` -- pixels whose factor
            value is above the factor image's ``quantile``; ``overlays``
            ``(d, k, C, H, W)`` -- the top-``k`` examples times the mask.
        """
        n = self.example_factors_.shape[1]
        if inputs.shape[0] != n:
            raise ValueError(f"inputs must hold the {n} fitted examples in fit order, got {inputs.shape[0]}")
        images = self.factor_images(inputs.shape[2:] if inputs.dim() > 2 else inputs.shape[1:])
        flat = images.reshape(images.shape[0], -1)
        thresholds = flat.float().quantile(quantile, dim=1).to(flat.dtype)
        masks = (flat > thresholds[:, None]).reshape(images.shape)
        top = self.top_examples(k).to(inputs.device)
        chosen = inputs[top.reshape(-1)].reshape(top.shape[0], top.shape[1], *inputs.shape[1:])
        overlays = chosen * masks.to(inputs.device).reshape(chosen.shape[0], 1, *chosen.shape[2:])
        return masks, overlays

    @validated(params=False, fitted=True, args={"batch_size": Int(1)})
    def neighbor_concepts(self, k: int = 30, batch_size: int = 1024) -> Tensor:
        """For each example, the concept distribution ``(N, d)`` of its ``k`` nearest neighbours.

        Neighbours by Euclidean distance between columns of ``F`` (the example
        itself excluded); each neighbour counts for the concept it has most
        affinity with (argmax of its column), so rows sum to 1.
        """
        F = self.example_factors_.t()
        n, d = F.shape
        k = self._check_k(k, n - 1)
        best = F.argmax(dim=1)
        out = torch.zeros(n, d, dtype=F.dtype, device=F.device)
        for start in range(0, n, batch_size):
            rows = F[start : start + batch_size]
            dist = torch.cdist(rows, F)
            dist[torch.arange(rows.shape[0]), torch.arange(start, start + rows.shape[0])] = float("inf")
            nearest = dist.topk(k, dim=1, largest=False).indices
            out[start : start + rows.shape[0]].scatter_add_(
                1, best[nearest], torch.full(nearest.shape, 1.0 / k, dtype=F.dtype, device=F.device)
            )
        return out

    def _concept_basis(self, layer: Union[int, str], argument: str) -> ConceptBasis:
        """The basis at fitted ``layer``: ``neuron_factors_[j]``, with the layer's shift, read where
        the fit's block specification (``_block_spec``, shared with ``transform``) says."""
        check_fitted(self, "neuron_factors_", "fit")
        if not isinstance(self.model, nn.Module) or self.input_shape_ is None:
            raise ValueError(f"{argument} must be fitted with fit() on a model (fit_matrices has no layers)")
        j = self._layer_index(layer)
        spec = self._block_spec(device=self.example_factors_.device, reuse=True)
        basis = self.neuron_factors_[j].float()
        fitted = self.shift_[len(self.pixel_factors_) + j] if self.shift_ else None
        shift = read_shift(fitted, self.shift, basis.shape[0])
        return ConceptBasis(self.model, spec.modules[j], basis, self.pool, shift, spec.transforms[j])

    def _layer_index(self, layer: Union[int, str]) -> int:
        n = len(self.neuron_factors_)
        if isinstance(layer, str):
            if layer not in self.layer_names_:
                raise ValueError(f"layer {layer!r} was not fitted; fitted layers: {self.layer_names_}")
            return self.layer_names_.index(layer)
        if isinstance(layer, (int, np.integer)) and -n <= layer < n:
            return int(layer) % n
        raise ValueError(f"layer must be a fitted layer name or an index in [0, {n}), got {layer!r}")

    @staticmethod
    def _check_k(k: int, limit: int) -> int:
        k = check_int(k, "k", low=1)
        if k > limit:
            raise ValueError(f"k={k} is larger than the {limit} available")
        return k
