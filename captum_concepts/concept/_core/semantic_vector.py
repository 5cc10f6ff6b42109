"""Semantic vectors (Gu & Tresp): concepts as directions in a layer's feature space.

Gu & Tresp, §3, Equation 3. For a concept ``c`` with examples ``I_c`` and the features ``φ(x)`` of
one layer (flattened to ``D`` units):

- binarised features ``a_i = 1[φ(x_i) > 0]`` and ``â_i = a_i / ||a_i||``;
- ``A_c = Σ_i â_i`` and the semantic vector ``v_c = A_c / ||A_c||``;
- activation rates ``r_c = (1/M) Σ_i a_i``;
- degree of diversity ``D_c = 1 − (1/M) Σ_i cos(a_i, v_c)``. Because
  ``cos(a_i, v_c) = â_i · v_c``, this equals ``1 − ||A_c|| / M``: one streaming
  pass gives every quantity, and memory does not grow with the number of examples.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import (
    Any,
    Dict,
    Hashable,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import torch
from torch import nn

from ..._utils import distributed as dist_utils
from ..._utils.array_inputs import as_inputs, check_concept_names, labelled_data
from ..._utils.batches import Batch, iter_batches
from ..._utils.common import TensorOrTuple, check_batch, format_inputs, run_forward
from ..._utils.hooks import ModelGuard
from ..._utils.layers import LayerSpec, resolve_layer, uncompiled
from ..._utils.persistence import PathLike
from ..._utils.progress import progress_bar
from ..._utils.validation import (
    LAYER,
    MODEL,
    NONE,
    AnyOf,
    Bool,
    Int,
    ListOf,
    Options,
    RealNumber,
    check_real,
    seed_of,
    validated,
)
from .activations import stream_layer_outputs
from .base import COMMON_CONSTRAINTS, _ConceptEstimator
from .basis import ConceptBasis
from .estimator_io import CONCEPT_NAMES, Fitted, FittedTensor, tag_names, untag_names
from .semantic_sums import _ConceptSums, _membership

__all__ = ["SemanticVector", "ConceptRanking", "PerturbationResult"]

ConceptKey = Union[str, int, Hashable]


class ConceptRanking(NamedTuple):
    """Concepts ranked per input (:meth:`SemanticVector.explain`).

    Attributes:
        names: ``N`` lists of ``k`` concept names, best first.
        indices: ``(N, k)`` concept indices into ``concept_names_``.
        scores: ``(N, k)`` cosine similarities ``cos(φ(x), v_c)``.

    Example::

        from captum_concepts.concept import SemanticVector

        sv = SemanticVector(model, "block3.relu").fit_from_labels((data.x_train, data.y_train))
        ranking = sv.explain(data.x_test[:4], k=3)
        ranking.names[0], ranking.scores[0]  # the 3 closest concepts of the first digit, and cosines
    """

    names: List[List[ConceptKey]]
    indices: torch.Tensor
    scores: torch.Tensor


@dataclass
class PerturbationResult:
    """Change of the ground-truth class probability for each perturbation (Table 1 of Gu & Tresp).

    Each field is a tensor ``(N,)``: ``p_perturbed − p_original`` per example.

    Attributes:
        single_unit: the unit ``argmax v_c`` set to ``scale ×`` the layer's largest activation.
        semantic_mask: the features multiplied by ``mask_c = 1[r_c > threshold]``.
        permuted_mask: the features multiplied by a random permutation of ``mask_c``.
        random_unit: a random unit set to ``scale ×`` the layer's largest activation.

    Example::

        from captum_concepts.concept import SemanticVector

        sv = SemanticVector(model, "block3.relu").fit_from_labels((data.x_train, data.y_train))
        result = sv.perturbation_check(data.x_test[:32], data.y_test[:32])
        float(result.semantic_mask.mean()), float(result.permuted_mask.mean())  # mask keeps more
    """

    single_unit: torch.Tensor
    semantic_mask: torch.Tensor
    permuted_mask: torch.Tensor
    random_unit: torch.Tensor

    def means(self) -> Dict[str, float]:
        """The mean change per perturbation, as in Table 1 of Gu & Tresp."""
        return {name: float(getattr(self, name).mean()) for name in _PERTURBATIONS}


_PERTURBATIONS = ("single_unit", "semantic_mask", "permuted_mask", "random_unit")


def _set_unit(units: torch.Tensor, scale: float):
    """An edit of flat features ``(B, D)``: unit ``units[i]`` of row ``i`` becomes ``scale × max(row i)``."""

    def edit(flat: torch.Tensor) -> torch.Tensor:
        new = flat.clone()
        rows = torch.arange(flat.shape[0], device=flat.device)
        new[rows, units.to(flat.device)] = scale * flat.max(dim=1).values
        return new

    return edit


def _unit_norm(vectors: torch.Tensor, state: Dict[str, Any], est: Any) -> Optional[str]:
    k = vectors.shape[0]
    if k and not torch.allclose(vectors.double().norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-3):
        return "semantic vectors must have unit norm"
    return None


def _per_concept(est: Any, state: Dict[str, Any]) -> Tuple[int]:
    return (len(state["concept_names_"]),)


def _per_concept_and_unit(est: Any, state: Dict[str, Any]) -> Tuple[int, int]:
    return (len(state["concept_names_"]), int(np.prod(state["layer_shape_"])))


class SemanticVector(_ConceptEstimator):
    r"""Semantic vectors of named concepts at one layer (Gu & Tresp, §3, Equation 3).

    Fitting streams over data: each batch is forwarded up to ``layer``, binarised
    (``a = 1[φ(x) > 0]``) and added into per-concept sums, so memory depends on the
    layer size and the number of concepts, never on the number of examples. After
    the first batch, the forward pass stops as soon as ``layer`` has run; the first
    batch runs the whole model, so that a module reused in ``forward`` (run twice in
    one pass) raises ``ValueError``, as in :class:`~captum_concepts.attr.EmbeddingAttribution`
    and :class:`~captum_concepts.concept.CoupledNMFConcepts`, instead of being read at
    its first use.

    Layers whose activations can be negative (a convolution before its ReLU, tanh,
    batch-norm outputs): binarisation at 0 is still defined -- a unit counts as
    active when it is strictly positive -- so vectors, rates and masks describe
    the *positive* responses of such a layer. An example with no positive unit has
    ``â_i = 0``: it adds nothing to ``A_c``, counts in ``M`` and therefore raises
    ``D_c`` (its cosine with ``v_c`` is taken as 0).

    Args:
        model (nn.Module): the model.
        layer (str or nn.Module): the feature layer ``φ``, a module of ``model`` or
            its dotted name (``"block3.pool"``). Its output must be a tensor
            ``(N, ...)``; it is flattened to ``(N, D)``.
        batch_size (int): batch size used when data is given as tensors. Default: 256.
        device (torch.device or str, optional): device the batches are moved to;
            default: the device of the model's first parameter (inputs stay where
            they are for a model without parameters).
        random_state (int, optional): seed for the random permutation and the random
            unit of :meth:`perturbation_check`.
        distributed (bool): example-sharded fitting on the default
            ``torch.distributed`` process group: each rank passes its own examples
            (e.g. a loader with a ``DistributedSampler``) and the per-concept sums
            of ``a`` and ``â`` and the counts are all-reduced, so every rank ends
            with the vectors of all the examples (equal to a single-process fit up
            to float rounding). Concepts are the union over ranks. Without a
            process group it is a plain fit. Default: False.

    Parameters are checked against the class's constraint table (numpy integers
    accepted, ``bool`` refused where a number is expected) at the start of
    :meth:`fit` / :meth:`fit_from_labels`, before any forward pass; methods that
    need a fit raise ``sklearn.exceptions.NotFittedError`` before one;
    ``sklearn.base.clone`` keeps a ``layer`` given as a module of ``model`` as its
    name, so a clone reads its own copy of the model.

    Attributes:
        concept_names_ (list): concept names in order (dict keys for :meth:`fit`;
            the class labels ``0..C-1`` for :meth:`fit_from_labels`).
        vectors_ (Tensor): ``(n_concepts, D)`` unit-norm semantic vectors ``v_c``.
        activation_rates_ (Tensor): ``(n_concepts, D)`` activation rates ``r_c``.
        diversity_ (Tensor): ``(n_concepts,)`` degrees of diversity ``D_c``.
        n_examples_ (Tensor): ``(n_concepts,)`` number of examples ``M`` per concept.
        layer_shape_ (tuple): shape of one example's layer output (without batch).

    Example::

        from captum_concepts.concept import SemanticVector

        sv = SemanticVector(model, "block3.relu").fit_from_labels((data.x_train, data.y_train))
        sv.relevance()  # (10, 10) cosines between the class concepts
        sv.explain(data.x_test[:4], k=3)  # the 3 concepts closest to each input
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec,
        batch_size: int = 256,
        device: Optional[Union[str, torch.device]] = None,
        random_state: Optional[int] = None,
        distributed: bool = False,
    ) -> None:
        self._keep_params(locals())

    _parameter_constraints = {"model": MODEL, "layer": LAYER, **COMMON_CONSTRAINTS}
    _fitted_attributes = (
        Fitted("concept_names_", CONCEPT_NAMES, decode=untag_names, encode=tag_names),
        Fitted("layer_shape_", ListOf(Int(1)), decode=tuple),
        FittedTensor("vectors_", torch.float32, _per_concept_and_unit, check=_unit_norm),
        FittedTensor("activation_rates_", torch.float32, _per_concept_and_unit, low=0.0, high=1.0),
        FittedTensor("diversity_", torch.float32, _per_concept, low=-1e-6, high=1.0 + 1e-6),
        FittedTensor("n_examples_", torch.int64, _per_concept, low=1),
    )
    _fit_methods = ("fit", "fit_from_labels")

    # ------------------------------------------------------------------ helpers
    def _layer(self) -> nn.Module:
        """The layer, resolved in the model (parameters are checked by ``validated`` before)."""
        return resolve_layer(self.model, self.layer)

    def _target_device(self) -> Optional[torch.device]:
        if self.device is not None:
            return torch.device(self.device)
        param = next(self.model.parameters(), None)
        return param.device if param is not None else None

    def _move(self, tensors: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        device = self._target_device()
        return tensors if device is None else tuple(t.to(device) for t in tensors)

    def _features(
        self, batches: Iterable[Batch], layer: nn.Module, additional_forward_args: Any = None
    ) -> Iterator[Tuple[torch.Tensor, Tuple[int, ...], Optional[torch.Tensor]]]:
        """For each batch yield ``(features (B, D), layer shape, the batch's labels)``.

        No autograd graph is built and each forward pass stops once ``layer`` has
        produced its output (its first call).
        """
        stream = stream_layer_outputs(
            uncompiled(self.model),
            [layer],
            batches,
            additional_forward_args,
            self._target_device(),
            ["layer"],
            stop=True,
            where="SemanticVector",
        )
        for batch, (out,) in stream:
            yield out.reshape(out.shape[0], -1), tuple(out.shape[1:]), batch.labels

    def _fit_stream(
        self,
        names: Optional[List[ConceptKey]],
        stream: Iterable[Tuple[torch.Tensor, Tuple[int, ...], Any]],
        n_classes: Optional[int] = None,
        show_progress: bool = False,
        desc: str = "SemanticVector.fit",
    ) -> SemanticVector:
        """Accumulate ``Σ a`` and ``Σ â`` per concept from ``(features, shape, labels)``.

        ``C`` may grow while streaming (classes discovered from labels); ``names=None``
        names the concepts ``0..C-1``. ``show_progress``: a bar over the batches.
        """
        sums = _ConceptSums()
        # a manual bar: iterating the stream inside tqdm would attribute its warnings to tqdm
        with progress_bar(show=show_progress, desc=desc, unit="batch") as bar:
            for feats, shape, labels in stream:
                sums.add(feats, shape, _membership(labels, n_classes))
                bar.update(1)
        if self.distributed:
            sums.all_reduce(self._target_device())
        if sums.counts is None:
            raise ValueError("no data: every concept must have at least one example")
        names = list(range(sums.counts.shape[0])) if names is None else names
        counts = sums.counts
        empty = [names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if empty:
            raise ValueError(f"concepts with no examples: {empty}; each concept needs at least one example")
        norm = sums.ahat.norm(dim=1)
        self.concept_names_ = list(names)
        self.layer_shape_ = sums.shape
        self.n_examples_ = counts.round().long().cpu()
        self.vectors_ = (sums.ahat / norm.clamp_min(1e-300)[:, None]).float()
        self.activation_rates_ = (sums.a / counts[:, None]).float()
        self.diversity_ = (1.0 - norm / counts).float()
        return self

    # ------------------------------------------------------------------ fitting
    @dist_utils.synchronized
    @validated(args={"show_progress": Bool()})
    def fit(
        self,
        concepts: Mapping[ConceptKey, Any],
        additional_forward_args: Any = None,
        show_progress: bool = True,
    ) -> SemanticVector:
        """Fit one semantic vector per named concept.

        Args:
            concepts (dict): ``{name: data}``. ``data`` is a tensor ``(M, ...)`` or a
                tuple of tensors (the model's inputs, split into ``batch_size``
                batches), or an iterable of batches such as a ``DataLoader``; each
                batch is a tensor or a tuple/list of input tensors (a
                ``DataLoader(TensorDataset(x))`` yields ``[x]``: fine). Labels must
                not be part of the batches here (see :meth:`fit_from_labels`).
            additional_forward_args: appended to every forward call, as in Captum.
            show_progress (bool): a bar over the batches, shown on a terminal only; False
                silences it. Default True.

        Returns:
            self

        Raises:
            ValueError: a concept has no examples.
        """
        if not isinstance(concepts, Mapping) or len(concepts) == 0:
            raise TypeError("concepts must be a non-empty dict {name: tensor or data loader}")
        layer = self._layer()
        names = list(concepts.keys())
        dist_utils.declare(concepts=names)
        n = len(names)

        def batches():
            for index, name in enumerate(names):
                data = as_inputs(concepts[name])
                for batch in iter_batches(data, int(self.batch_size), f"concepts[{name!r}]"):
                    yield batch._replace(labels=torch.full((batch.size,), index, dtype=torch.long))

        stream = self._features(batches(), layer, additional_forward_args)
        return self._fit_stream(names, stream, n, bool(show_progress), "SemanticVector.fit")

    @dist_utils.synchronized
    @validated(args={"n_classes": AnyOf(NONE, Int(1)), "show_progress": Bool()})
    def fit_from_labels(
        self,
        data: Any,
        n_classes: Optional[int] = None,
        additional_forward_args: Any = None,
        show_progress: bool = True,
        concept_names: Optional[Sequence[ConceptKey]] = None,
    ) -> SemanticVector:
        """Fit one semantic vector per class from labelled data: concept ``i`` is class ``i``.

        Args:
            data: a tuple ``(inputs..., labels)`` of tensors or numpy arrays (a list
                ``[x, y]`` is refused: pass a tuple), or an iterable of such batches
                (``DataLoader(TensorDataset(x, y))``). Labels are integer class indices
                ``(B,)`` (or a ``(B, 1)`` column of them; a tensor, numpy array or list) or
                multi-hot ``(B, C)`` with ``C >= 2`` (an example belongs to every class whose
                entry is > 0: multi-label data); in a tuple they may also be class names
                (strings, a list or numpy array), as scikit-learn's classifiers take them:
                concept ``i`` is then the ``i``-th name in ``concept_names``, by default the
                names sorted (scikit-learn's ``classes_`` order). Floating numpy inputs take
                PyTorch's default dtype (float32).
            n_classes (int, optional): number of classes ``C``; default: the largest
                label + 1 (integer labels), the width of the multi-hot labels or the number of
                ``concept_names``.
            additional_forward_args: appended to every forward call.
            show_progress (bool): a bar over the batches, shown on a terminal only; False
                silences it. Default True.
            concept_names (list of str or int, optional): the name of class ``i`` at position
                ``i`` (``concept_names_``; :meth:`concept_index`, :meth:`rank` and
                :meth:`explain` then take the names); with string labels, the order of the
                classes.

        Returns:
            self, with ``concept_names_ == concept_names`` (default ``[0, 1, ..., C-1]``, or
            the sorted class names for string labels).

        Raises:
            ValueError: a class in ``0..C-1`` has no example, or a label is out of range.
        """
        layer = self._layer()
        n_classes = None if n_classes is None else int(n_classes)
        data, names = labelled_data(data, check_concept_names(concept_names))
        if names is not None:
            if n_classes is not None and n_classes != len(names):
                raise ValueError(f"n_classes={n_classes} but {len(names)} concept_names (class names)")
            n_classes = len(names)
        dist_utils.declare(n_classes=n_classes)

        batches = iter_batches(data, int(self.batch_size), "data", labels=True)
        stream = self._features(batches, layer, additional_forward_args)
        self._fit_stream(names, stream, n_classes, bool(show_progress), "SemanticVector.fit_from_labels")
        if n_classes is not None and len(self.concept_names_) < n_classes:
            missing = list(range(len(self.concept_names_), n_classes))
            raise ValueError(f"concepts with no examples: {missing}; each class needs at least one example")
        return self

    # ------------------------------------------------------------------ fitted state
    @validated(params=False, fitted=True)
    def concept_index(self, concept: ConceptKey) -> int:
        """Index of ``concept`` in ``concept_names_`` (a name, or an integer index)."""
        for i, name in enumerate(self.concept_names_):
            if name == concept and type(name) is type(concept):
                return i
        if isinstance(concept, (int, np.integer)) and not isinstance(concept, bool):
            if 0 <= int(concept) < len(self.concept_names_):
                return int(concept)
            raise ValueError(f"concept index {concept} out of range for {len(self.concept_names_)} concepts")
        close = difflib.get_close_matches(str(concept), [str(n) for n in self.concept_names_], n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown concept {concept!r}.{hint} Known: {self.concept_names_[:20]}")

    @validated(params=False, fitted=True)
    def class_rows(self, concepts: Optional[Sequence[ConceptKey]] = None) -> torch.Tensor:
        """Row of ``vectors_`` used for each class: ``(num_classes,)`` long.

        ``concepts=None``: class ``t`` is concept ``t`` (concept order; with
        :meth:`fit_from_labels`, concept ``t`` *is* class ``t``). Otherwise entry
        ``t`` of ``concepts`` names (or indexes) the concept of class ``t``.
        """
        if concepts is None:
            names = self.concept_names_
            ints = [n for n in names if isinstance(n, (int, np.integer)) and not isinstance(n, bool)]
            if len(ints) == len(names) and list(names) != list(range(len(names))):
                raise ValueError(
                    f"concept names {names[:10]} are integers but not 0..{len(names) - 1}; pass "
                    "concepts=[concept of class 0, concept of class 1, ...] to map classes to concepts"
                )
            return torch.arange(len(names))
        if isinstance(concepts, (str, bytes)) or not isinstance(concepts, Sequence):
            raise TypeError("concepts must be a sequence: entry t names the concept of class t")
        return torch.tensor([self.concept_index(c) for c in concepts], dtype=torch.long)

    @validated(params=False, fitted=True, args={"mode": Options(("unit", "channel"))})
    def masks(self, threshold: float = 0.5, mode: str = "unit") -> torch.Tensor:
        """Binary masks ``1[r_c > threshold]`` of shape ``(n_concepts, *layer_shape_)`` (bool).

        **[choice]** The paper (§3) thresholds "the SeVec" at 0.5, but a
        unit-norm vector has almost no entries above 0.5, so the threshold applies
        to the activation rate ``r_c`` (the share of the concept's examples in
        which the unit is active).

        ``mode="unit"`` (default) is the paper's per-unit rule above; ``mode="channel"`` is our
        position-free extension (:func:`~captum_concepts.concept.channel_masks`: whole channels
        whose position-averaged rate for the concept is above the average over concepts;
        ``threshold`` is not used).
        """
        if mode == "channel":
            from .channel_masks import channel_masks

            return channel_masks(self.activation_rates_, self.layer_shape_)
        check_real(threshold, "threshold", low=0.0, high=1.0, high_open=True)
        return (self.activation_rates_ > threshold).reshape(-1, *self.layer_shape_)

    @validated(params=False, fitted=True)
    def semantic_masks(
        self, threshold: float = 0.5, concepts: Optional[Sequence[ConceptKey]] = None
    ) -> Tuple[nn.Module, torch.Tensor]:
        """``(layer, masks)`` for :class:`~captum_concepts.attr.SemanticGuidedBackprop` and
        :class:`~captum_concepts.attr.SemanticGradientInput`: the fitted layer's module and
        ``masks(threshold)`` with row ``t`` for class ``t`` (:meth:`class_rows`)."""
        rows = self.class_rows(concepts)
        return resolve_layer(self.model, self.layer), self.masks(threshold)[rows]

    def _concept_basis(self, layer: Union[int, str], argument: str) -> ConceptBasis:
        """``vectors_`` transposed, at the fitted layer (``layer`` ignored: there is one)."""
        self._check_fitted()
        module = resolve_layer(self.model, self.layer, f"{argument}.layer")
        return ConceptBasis(self.model, module, self.vectors_.float().t())

    @validated(params=False, fitted=True)
    def relevance(self) -> torch.Tensor:
        """Relevance matrix ``rel(a, b) = cos(v_a, v_b)``, ``(n_concepts, n_concepts)``."""
        return self.vectors_ @ self.vectors_.t()

    # ------------------------------------------------------------------ persistence
    _persistence_kind = "SemanticVector"

    @validated(params=False, fitted=True)
    def save(self, path: PathLike) -> None:
        """Save the fitted vectors, rates, diversities and parameters to ``path``.

        A safe file: tensors via ``torch.save`` read back with ``weights_only=True``
        and JSON metadata (no pickled objects), with a checksum verified on
        load; written atomically (a temporary file in the same folder, then
        renamed). The model is not saved; a ``layer`` given as a module is stored
        by its name. Concept names must be ``str`` or ``int``.
        """
        super().save(path)

    @classmethod
    @validated(params=False)
    def load(cls, path: PathLike, model: Optional[nn.Module] = None, **params: Any) -> SemanticVector:
        """Load a :meth:`save` file. ``relevance``/``masks`` work at once; ``transform``,
        ``similarity`` & co. run the model: pass ``model=`` here (or set ``sv.model``).
        A model whose ``layer`` gives outputs of another shape than the fitted one
        is refused at its first use. ``params`` override saved constructor parameters.

        Raises:
            ValueError: a corrupted, damaged, truncated or foreign file.
        """
        return super().load(path, model, **params)

    # ------------------------------------------------------------------ new data
    @validated(fitted=True)
    def transform(self, inputs: TensorOrTuple, additional_forward_args: Any = None) -> torch.Tensor:
        """The flattened layer features ``φ(x)`` of ``inputs``: ``(N, D)``."""
        layer = self._layer()
        batches = iter_batches(format_inputs(as_inputs(inputs))[0], int(self.batch_size), "inputs")
        feats = []
        for f, shape, _ in self._features(batches, layer, additional_forward_args):
            self._check_layer_shape(shape)
            feats.append(f)
        return torch.cat(feats).to(self.vectors_.device)

    def _check_layer_shape(self, shape: Tuple[int, ...]) -> None:
        if tuple(shape) != tuple(self.layer_shape_):
            raise ValueError(
                f"layer {self.layer!r} gives outputs of shape {tuple(shape)} per example, but this "
                f"SemanticVector was fitted on outputs of shape {tuple(self.layer_shape_)}: is "
                f"model the architecture it was fitted (or saved) with?"
            )

    @validated(fitted=True, args={"binarize": Bool()})
    def similarity(
        self, inputs: TensorOrTuple, additional_forward_args: Any = None, binarize: bool = False
    ) -> torch.Tensor:
        """Cosine similarity ``cos(φ(x), v_c)`` of each input with each concept: ``(N, n_concepts)``.

        Raw features by default (Gu & Tresp, §3, retrieval); ``binarize=True`` uses
        ``1[φ(x) > 0]`` instead. An input whose features are all zero gets 0.
        """
        feats = self.transform(inputs, additional_forward_args)
        if binarize:
            feats = (feats > 0).float()
        feats = feats.float()
        return (feats @ self.vectors_.t()) / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @validated(fitted=True, args={"k": Int(1)})
    def rank(
        self, inputs: TensorOrTuple, concept: ConceptKey, k: int = 10, additional_forward_args: Any = None
    ) -> torch.return_types.topk:
        """The ``k`` inputs closest to ``concept`` (retrieval, Figure 1 of Gu & Tresp).

        Returns:
            ``torch.return_types.topk``: ``values`` (k,) cosines and ``indices`` (k,)
            into ``inputs``, best first (``k`` is capped at ``N``).
        """
        index = self.concept_index(concept)
        sim = self.similarity(inputs, additional_forward_args)[:, index]
        return torch.topk(sim, min(k, sim.shape[0]))

    @validated(fitted=True, args={"k": Int(1)})
    def explain(
        self,
        inputs: TensorOrTuple,
        vocabulary: Optional[Sequence[ConceptKey]] = None,
        k: int = 3,
        additional_forward_args: Any = None,
    ) -> ConceptRanking:
        """The ``k`` concepts of ``vocabulary`` closest to each input (Table 3 of Gu & Tresp).

        Args:
            inputs: tensor or tuple of tensors ``(N, ...)``.
            vocabulary: concept names or indices to choose from (textures,
                materials...); default: every concept.
            k: concepts per input (capped at the vocabulary size).
        """
        vocab = (
            list(range(len(self.concept_names_)))
            if vocabulary is None
            else [self.concept_index(c) for c in vocabulary]
        )
        if not vocab:
            raise ValueError("vocabulary must name at least one concept")
        sim = self.similarity(inputs, additional_forward_args)[:, vocab]
        scores, pos = torch.topk(sim, min(k, len(vocab)), dim=1)
        indices = torch.tensor(vocab, device=pos.device)[pos]
        names = [[self.concept_names_[i] for i in row] for row in indices.tolist()]
        return ConceptRanking(names, indices, scores)

    # ------------------------------------------------------------------ Table 1
    @validated(fitted=True, args={"scale": RealNumber()})
    def perturbation_check(
        self,
        inputs: TensorOrTuple,
        targets: Union[torch.Tensor, Sequence[int]],
        concepts: Optional[Sequence[ConceptKey]] = None,
        threshold: float = 0.5,
        scale: float = 1.5,
        additional_forward_args: Any = None,
    ) -> PerturbationResult:
        """Gu & Tresp's Table 1: how perturbing the layer changes the ground-truth probability.

        For each input with ground-truth class ``t`` (concept ``c`` per
        :meth:`class_rows`), the layer output ``φ(x)`` is replaced by

        (a) ``single_unit``: ``φ(x)`` with unit ``argmax v_c`` set to ``scale ×
            max φ(x)`` (the largest activation of this example at the layer);
        (b) ``semantic_mask``: ``φ(x) · mask_c`` with ``mask_c = 1[r_c > threshold]``;
        (c) ``permuted_mask``: ``φ(x) ·`` a random permutation of ``mask_c`` (one
            per example, seeded by ``random_state``);
        (d) ``random_unit``: as (a) for a unit drawn uniformly at random,

        and the change of ``softmax(model(x))[t]`` is recorded.

        Args:
            inputs: tensor or tuple of tensors ``(N, ...)``.
            targets: ground-truth classes ``(N,)``.
            concepts: class-to-concept map (see :meth:`class_rows`).
            threshold: activation-rate threshold of the masks. Default: 0.5.
            scale: factor of the largest activation for (a) and (d). Default: 1.5.

        Returns:
            :class:`PerturbationResult` with ``(N,)`` changes; ``.means()`` gives the table row.
        """
        layer = self._layer()
        inputs_t, _ = format_inputs(inputs)
        n = check_batch(inputs_t)
        rows = self.class_rows(concepts)
        targets_t = torch.as_tensor(targets)
        if targets_t.dtype.is_floating_point or targets_t.dtype.is_complex or targets_t.dtype == torch.bool:
            raise TypeError(f"targets must be integer class indices, got dtype {targets_t.dtype}")
        targets_t = targets_t.long().flatten().cpu()
        if targets_t.shape[0] != n:
            raise ValueError(f"targets must have one class per input ({n}), got {targets_t.shape[0]}")
        if int(targets_t.min()) < 0 or int(targets_t.max()) >= rows.shape[0]:
            raise ValueError(
                f"targets must lie in [0, {rows.shape[0]}), got {targets_t.min()}..{targets_t.max()}"
            )
        masks = self.masks(threshold).reshape(len(self.concept_names_), -1).float()
        seed = seed_of(self.random_state)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        d = masks.shape[1]
        perm = torch.argsort(torch.rand(n, d, generator=generator), dim=1)
        random_units = torch.randint(d, (n,), generator=generator)
        concept_of = rows[targets_t]
        changes: Dict[str, List[torch.Tensor]] = {name: [] for name in _PERTURBATIONS}
        edit: Dict[str, Any] = {}

        def replace(out):
            self._check_layer_shape(tuple(out.shape[1:]))
            if edit.get("fn") is None:
                return None
            flat = out.reshape(out.shape[0], -1)
            return edit["fn"](flat).reshape(out.shape)

        with ModelGuard(self.model) as guard, torch.no_grad():
            guard.replace(layer, replace)
            step = int(self.batch_size)
            for start in range(0, n, step):
                sl = slice(start, start + step)
                batch = self._move(tuple(t[sl] for t in inputs_t))
                tgt = targets_t[sl]
                cpt = concept_of[sl]
                mask_b = masks[cpt]
                perm_mask = torch.gather(mask_b, 1, perm[sl].to(mask_b.device))
                top_unit = self.vectors_[cpt].argmax(dim=1)

                edits = {
                    "single_unit": _set_unit(top_unit, scale),
                    "semantic_mask": lambda flat, m=mask_b: flat * m.to(flat),
                    "permuted_mask": lambda flat, m=perm_mask: flat * m.to(flat),
                    "random_unit": _set_unit(random_units[sl], scale),
                }
                edit["fn"] = None
                base = self._probability(run_forward(self.model, batch, additional_forward_args), tgt)
                for name, fn in edits.items():
                    edit["fn"] = fn
                    out = run_forward(self.model, batch, additional_forward_args)
                    changes[name].append((self._probability(out, tgt) - base).cpu())
                edit["fn"] = None
        return PerturbationResult(**{name: torch.cat(v) for name, v in changes.items()})

    @staticmethod
    def _probability(logits: Any, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError("perturbation_check needs a model returning (N, num_classes) logits")
        if int(targets.max()) >= logits.shape[1]:
            raise ValueError(f"targets must be < the model's {logits.shape[1]} outputs")
        probs = torch.softmax(logits.float(), dim=1)
        return probs.gather(1, targets.to(probs.device)[:, None]).squeeze(1)
