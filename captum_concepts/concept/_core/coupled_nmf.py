"""Coupled NMF concept discovery over pixels, neurons of several layers and examples.

Saini & Papalexakis, "Analyzing Representations inside Convolutional Neural
Networks", §3.2, Equations 3.1 and 3.2.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..._utils import distributed as dist_utils
from ..._utils.layers import LayerSpec
from ..._utils.layout import expand_per_layer
from ..._utils.persistence import PathLike
from ..._utils.validation import (
    MODEL,
    NONE,
    AnyOf,
    Bool,
    InstanceOf,
    Int,
    LayerList,
    ListOf,
    Options,
    Positives,
    RealNumber,
    validated,
)
from ..._utils.warn import warn_user
from . import cnmf_solvers as solvers
from .activations import POOLS, BlockSpec, CollectedBlocks, collect_blocks, pick_device, resolve_blocks
from .base import COMMON_CONSTRAINTS, _ConceptEstimator
from .cnmf_analyses import _CoupledNMFAnalyses
from .cnmf_fitting import FitResult, Matrix, _CoupledNMFFitting, is_matrix_pair, matrix_lists
from .estimator_io import Fitted, FittedSpec, FittedTensor, StateReader
from .out_of_core import ActivationStore, OutOfCore, collect_to_store
from .tcav_export import _CaptumExport

__all__ = ["CoupledNMFConcepts"]

SOLVERS = ("mu", "hals")
SHIFTS = (None, "min")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# what resolve_blocks reads, and the reshape transform: transform reuses the fit's blocks while they stay
_SPEC_PARAMS = ("model", "layers", "include_pixels", "pool", "batch_size", "dtype", "reshape_transform")
State = Dict[str, Any]


# ---------------------------------------------------------------------- fitted state, as saved
def _n_blocks(state: State) -> int:
    return len(state["_offsets"]) - 1


def _check_offsets(offsets: List[int], state: State, est: Any) -> Optional[str]:
    if len(offsets) < 2 or offsets[0] != 0 or any(b <= a for a, b in zip(offsets[:-1], offsets[1:])):
        return f"bad block offsets {offsets[:8]}"
    return None


def _check_pixel_blocks(n_pixel: int, state: State, est: Any) -> Optional[str]:
    return None if n_pixel <= _n_blocks(state) else f"n_pixel_blocks={n_pixel} for {_n_blocks(state)} blocks"


def _one_per_block(values: list, state: State, est: Any) -> Optional[str]:
    return None if len(values) == _n_blocks(state) else "block names, weights and offsets disagree"


def _one_per_layer(values: list, state: State, est: Any) -> Optional[str]:
    n_layers = _n_blocks(state) - state["_n_pixel_blocks"]
    return None if len(values) == n_layers else "block names, layer names, layer shapes and offsets disagree"


def _dtype(est: Any, state: State) -> torch.dtype:
    return est.dtype


def _factors(offsets: List[int], components: Tensor) -> List[Tensor]:
    """Each block's factor ``(r_b, d)``: its columns of the stacked ``(d, R)`` components."""
    return [components[:, a:b].t().contiguous() for a, b in zip(offsets[:-1], offsets[1:])]


_STR = InstanceOf((str,), "a str")


def _floats(values: list) -> List[float]:
    return [float(v) for v in values]


class _Shifts(FittedSpec):
    """``shift_``, a ``(r_b,)`` tensor (``<= 0``) or None per block: the indices of the shifted
    blocks are saved under ``"shifted_blocks"``, block ``b``'s shift as ``f"shift_{b}"``."""

    def dump(self, est: Any, tensors: Dict[str, Tensor], values: State) -> None:
        values["shifted_blocks"] = [b for b, t in enumerate(est.shift_) if t is not None]
        tensors.update({f"shift_{b}": t for b, t in enumerate(est.shift_) if t is not None})

    def read(self, reader: StateReader, state: State, est: Any) -> None:
        present = reader.value("shifted_blocks", ListOf(Int(0)))
        sizes = [b - a for a, b in zip(state["_offsets"][:-1], state["_offsets"][1:])]
        if any(b >= len(sizes) for b in present):
            raise reader.error(f"'shifted_blocks': an index beyond the {len(sizes)} entries")
        state["shift_"] = [
            reader.tensor(f"shift_{b}", est.dtype, (r,), high=0.0) if b in present else None
            for b, r in enumerate(sizes)
        ]


class _Factors(FittedSpec):
    """``pixel_factors_`` / ``neuron_factors_``: not saved, the blocks' columns of ``_components``."""

    def dump(self, est: Any, tensors: Dict[str, Tensor], values: State) -> None:
        pass

    def read(self, reader: StateReader, state: State, est: Any) -> None:
        n_pixel, factors = state["_n_pixel_blocks"], _factors(state["_offsets"], state["_components"])
        state[self.attr] = factors[:n_pixel] if self.attr == "pixel_factors_" else factors[n_pixel:]


_FITTED_ATTRIBUTES = (
    Fitted("_offsets", ListOf(Int(0)), check=_check_offsets),
    Fitted("_n_pixel_blocks", Int(0), check=_check_pixel_blocks),
    Fitted("_fitted_on_inputs", Bool()),
    Fitted("block_names_", ListOf(_STR), check=_one_per_block),
    Fitted("block_weights_", ListOf(RealNumber(0, low_open=True)), decode=_floats, check=_one_per_block),
    Fitted("layer_names_", ListOf(_STR), check=_one_per_layer),
    Fitted(
        "layer_shapes_",
        ListOf(ListOf(Int(1))),
        decode=lambda shapes: [tuple(s) for s in shapes],
        check=_one_per_layer,
    ),
    Fitted("input_shape_", AnyOf(NONE, ListOf(Int(1))), decode=lambda s: None if s is None else tuple(s)),
    Fitted("loss_history_", ListOf(RealNumber()), decode=_floats),
    Fitted("n_iter_", Int(0)),
    Fitted("converged_", Bool()),
    FittedTensor("_components", _dtype, lambda est, state: (est.n_concepts, state["_offsets"][-1]), low=0.0),
    FittedTensor("example_factors_", _dtype, lambda est, state: (est.n_concepts, None), low=0.0),
    _Shifts("shift_"),
    _Factors("pixel_factors_"),
    _Factors("neuron_factors_"),
)


class CoupledNMFConcepts(_CoupledNMFFitting, _CoupledNMFAnalyses, _CaptumExport, _ConceptEstimator):
    r"""Unsupervised concepts shared by pixels, neurons of several layers and examples.

    Factorises pixel blocks ``D_i`` (channel ``i`` of every input, ``S_i x N``) and
    activation blocks ``A_j`` (layer ``j``, ``a_j x N``) with a shared example
    factor ``F`` (``d x N``):

    .. math::

        J = \sum_i w_i \|D_i - P_i F\|^2 + \sum_j w_j \|A_j - O_j F\|^2
            + \lambda_p \sum_i \|P_i\|^2 + \lambda_o \sum_j \|O_j\|^2 + \lambda_f \|F\|^2
            + \beta \sum_{k, g} \|F_{k, I_g}\|_2

    (:math:`\beta` is ``group_sparsity``)

    with all factors non-negative (Saini & Papalexakis, Equation 3.1; the ``w`` are 1 unless
    ``block_weights`` says otherwise). Row ``k`` of ``F`` is concept ``k``'s
    affinity with every example, column ``k`` of ``P_i`` its pixel pattern in
    channel ``i`` and column ``k`` of ``O_j`` its neurons in layer ``j``.

    The stacked matrix ``[D_0; ...; A_L]`` is never built: every product with
    the data runs block by block, and the objective comes from the sufficient
    statistics ``X F^T`` and ``F F^T`` (trace identities) at no extra pass. Runs
    on any device (the factors live on ``device``), float32 by default.

    Args:
        n_concepts (int): the rank ``d``. Default: 20.
        model (nn.Module, optional): the model to read ``layers`` from in
            :meth:`fit` / :meth:`transform`. Not needed for :meth:`fit_matrices`.
        layers (sequence of str or nn.Module): layers whose outputs become
            activation blocks, as modules or dotted names, shallow to deep.
            They must be non-negative (ReLU outputs, pooled ReLU outputs).
        include_pixels (bool): in :meth:`fit`, add one pixel block per input
            channel (inputs must be non-negative, e.g. images in ``[0, 1]``).
            :meth:`fit_matrices` uses the blocks it is given. Default: True.
        lambda_p (float): L2 penalty on the pixel factors ``P_i``. Default: 0.
        lambda_o (float): L2 penalty on the neuron factors ``O_j``. Default: 0.
        lambda_f (float): L2 penalty on the example factor ``F``. Default: 0.
        group_sparsity (float): weight ``beta`` of the group lasso on ``F``
            over the ``groups`` passed to :meth:`fit` (e.g. class labels): it
            drives whole groups of a concept's row of ``F`` to zero. The paper
            cites Kim, Monteiro & Park for group-sparse NMF; we use the
            ``l1/l2`` mixed norm over (concept, group) pairs. Default: 0.
        normalize_columns (bool): after each iteration rescale so that every
            column of the stacked ``[P_0; ...; O_L]`` has unit norm, ``F``'s rows
            absorbing the scale (the product, hence the data term, is unchanged).
            **[choice]** The paper asks unit columns for each ``P_i`` and ``O_j``;
            with a shared ``F`` that cannot hold in every block at once without
            changing the fit, so the norm is taken over the stacked column. With
            ``lambda_p``/``lambda_o`` the penalties then mostly fix the split
            between blocks; the paper uses unit norms *instead of* them.
            Default: True.
        block_weights (None, "balanced" or sequence of float): ``w`` per block,
            pixel blocks first then layers. None: all 1, the paper's objective
            (= plain NMF of the stacked matrix). "balanced": ``w_b`` proportional
            to ``1 / ||X_b||^2`` (scaled so the weighted total equals the
            unweighted one), so that a large layer does not drown the rest.
            **[choice]** Default: None.
        solver ("mu" or "hals"): "mu" is the paper's multiplicative update
            (Equation 3.2, with ``eps = 1e-10`` in the denominators); "hals" is
            hierarchical ALS (exact block coordinate descent over the ``d``
            concepts) on the same statistics with up to 4 inner sweeps per pass
            over the data and, after 5 plain iterations, extrapolation with
            restarts (Ang & Gillis, 2019) -- the same objective, reached in far
            fewer passes; ``loss_history_`` then holds the best objective so far
            and the best factors are kept. Default: "mu".
        max_iter (int): iterations (each one pass of ``F`` and one of the block
            factors). Default: 500.
        tol (float): stop when ``|J_prev - J| <= tol * J_prev``. Default: 1e-4.
        random_state (int or None): seed of the random start (drawn in float64 on
            the CPU, so identical on every device). With an int, two runs are
            identical bit for bit when they also share the device, the dtype, the
            PyTorch/BLAS build and the number of intra-op threads
            (``torch.get_num_threads()``). A different thread count changes the
            order of the sums inside BLAS matrix products, and the results then
            agree to rounding only (float32, digits, 50 iterations: ``F`` within
            ``~1e-5`` relative for "mu", ``~1e-3`` for "hals", whose extrapolation
            amplifies rounding); fix the thread count to reproduce a run exactly.
            Default: 0.
        device (str or torch.device, optional): where the factors live. None:
            the model's device in :meth:`fit`, the data's in :meth:`fit_matrices`.
        pool ("none", "mean" or "max"): per-channel spatial pooling of
            convolutional layer outputs in :meth:`fit` (``a_j`` becomes the
            number of channels) for layers too large to keep whole.
            Default: "none".
        shift (None or "min"): what to do with negative entries. None (default)
            raises a ``ValueError``. ``"min"`` subtracts, from every row (pixel
            or neuron) whose minimum over the fitted examples is negative, that
            minimum; the same shift is applied in :meth:`transform` (and the
            result clipped at 0). Shifted blocks are copied.
        batch_size (int): batch size for the forward passes of :meth:`fit` and
            :meth:`transform` when a tensor is given. Default: 256.
        dtype (torch.dtype): dtype of the data and factors. Default: float32.
        distributed (bool): example-sharded fitting on the default
            ``torch.distributed`` process group: every rank calls :meth:`fit` /
            :meth:`fit_matrices` on its own examples (e.g. from a loader with a
            ``DistributedSampler``) and the sums over examples (``X F^T``,
            ``F F^T``, the data moments, group norms) are all-reduced, so the
            block factors equal the single-process fit on all the examples
            (rank 0's first, then rank 1's, ...) up to float rounding, and
            ``example_factors_`` holds this rank's columns of that fit's ``F``
            (``captum_concepts.distributed.gather_columns`` joins them). Every rank must
            pass the same blocks (rows) and parameters. Without a process group
            it is a plain fit. Default: False.
        out_of_core (OutOfCore, optional): fit without holding the data in
            memory: :meth:`fit` streams the pixel and layer rows to a file on
            disk (float32 or float16) and the solver reads it in chunks of
            examples sized to ``out_of_core.memory_budget``; the result equals the
            in-memory fit up to float rounding (and the float16 rounding of the
            stored data). :meth:`fit_store` fits a store you wrote yourself.
            :meth:`fit_matrices` always works in memory. Default: None.
        reshape_transform (callable, list of them, or None): brings a layer's output to
            ``(N, C, *S)`` before ``pool`` reads channels from dimension 1, with
            pytorch-grad-cam's convention: one callable for every layer, or a list aligned
            with ``layers`` (None entries: as is). Layers of another layout need one:
            ``captum_concepts.attr.channels_last`` for Swin / ConvNeXt stages ``(N, H, W, C)``,
            ``tokens_to_grid(prefix_tokens=1)`` for ViT tokens. Like ``model``, it is not
            saved: set it again after :meth:`load`. Default: None.
        verbose (int or bool): print the objective ``J`` every ``verbose`` iterations of a fit
            (and at its last iteration), as scikit-learn's ``NMF(verbose=...)`` prints its error;
            ``True`` counts as 1, 0 / False (default) prints nothing. Independent of the progress
            bar (``show_progress`` of the fit methods), which also shows ``J``.

    Memory: the blocks take ``4 * N * (sum_i S_i + sum_j a_j)`` bytes (float32);
    the factors and statistics add ``4 * d * (N + 3 R)`` bytes with
    ``R = sum_i S_i + sum_j a_j``. In :meth:`fit` a tensor input is collected into
    preallocated storage (pixel blocks are views of the input when its dtype
    and device already match); a loader's batches are concatenated per block,
    so the peak adds the largest block once. Use ``pool`` to shrink big layers.
    The checks (finite, non-negative) use per-row reductions that never copy a
    block, whatever its strides (a transposed view included); only
    ``shift="min"`` copies the blocks it shifts.

    Parameters are checked against the class's constraint table (types and
    ranges; numpy integers accepted, ``bool`` refused where a number is
    expected) together with the rules that tie them to the data (``block_weights``
    length, ``group_sparsity`` needs ``groups``) at the start of :meth:`fit`,
    :meth:`fit_matrices` and :meth:`fit_store`, before any data is read or any
    forward pass runs. Methods that need a fit raise
    ``sklearn.exceptions.NotFittedError`` before one. ``sklearn.base.clone``
    keeps layers given as modules of ``model`` as their names, so a clone reads
    its own copy of the model.

    Orientation: ``example_factors_`` is the paper's ``F``, ``(d, N)``; :meth:`fit_transform` and
    ``transform(..., samples_first=True)`` give scikit-learn's ``(n_samples, n_components)``,
    ``(N, d)``, as ``SemanticVector.transform`` does (``transform`` without ``samples_first``
    still returns ``(d, M)``, with a ``FutureWarning``: the default will become ``(M, d)``).

    Attributes:
        example_factors_ (Tensor): ``F``, ``(d, N)``.
        pixel_factors_ (list of Tensor): ``P_i``, ``(S_i, d)`` each.
        neuron_factors_ (list of Tensor): ``O_j``, ``(a_j, d)`` each.
        loss_history_ (list of float): ``J`` at the start and after each iteration.
        n_iter_ (int): iterations run.
        converged_ (bool): ``tol`` reached.
        block_names_ (list of str): ``"pixels[i]"`` then the layer names.
        block_weights_ (list of float): the ``w`` used.
        layer_names_ (list of str): the activation blocks' layer names.
        layer_shapes_ (list of tuple): each block's shape for one example.
        input_shape_ (tuple or None): one input's shape (None after :meth:`fit_matrices`).

    Example::

        from captum_concepts.concept import CoupledNMFConcepts

        x = data.x_train[:512]  # images in [0, 1]
        cnmf = CoupledNMFConcepts(10, model, layers=["block2.pool", "embedding_relu"], random_state=0)
        cnmf.fit(x)
        cnmf.transform(data.x_test[:4], samples_first=True)  # (4, 10), one row per example
        cnmf.top_classes(data.y_train[:512], k=3)  # (10, 3) class ids per concept
        concepts = cnmf.to_captum_concepts(x, k=50)  # Captum Concepts, for captum.concept.TCAV
    """

    def __init__(
        self,
        n_concepts: int = 20,
        model: Optional[nn.Module] = None,
        layers: Sequence[LayerSpec] = (),
        include_pixels: bool = True,
        lambda_p: float = 0.0,
        lambda_o: float = 0.0,
        lambda_f: float = 0.0,
        group_sparsity: float = 0.0,
        normalize_columns: bool = True,
        block_weights: Union[None, str, Sequence[float]] = None,
        solver: str = "mu",
        max_iter: int = 500,
        tol: float = 1e-4,
        random_state: Optional[int] = 0,
        device: Union[None, str, torch.device] = None,
        pool: str = "none",
        shift: Optional[str] = None,
        batch_size: int = 256,
        dtype: torch.dtype = torch.float32,
        distributed: bool = False,
        out_of_core: Optional[OutOfCore] = None,
        reshape_transform: Any = None,
        verbose: Union[int, bool] = 0,
    ) -> None:
        self._keep_params(locals())

    # ------------------------------------------------------------------ validation
    _parameter_constraints = {
        "n_concepts": Int(1),
        "model": AnyOf(NONE, MODEL),
        "layers": LayerList(),
        "include_pixels": Bool(),
        "lambda_p": RealNumber(0),
        "lambda_o": RealNumber(0),
        "lambda_f": RealNumber(0),
        "group_sparsity": RealNumber(0),
        "normalize_columns": Bool(),
        "block_weights": AnyOf(NONE, Options(("balanced",)), Positives()),
        "solver": Options(SOLVERS),
        "max_iter": Int(0),
        "tol": RealNumber(0),
        "pool": Options(POOLS),
        "shift": Options(SHIFTS),
        "dtype": Options(DTYPES),
        "out_of_core": AnyOf(NONE, InstanceOf((OutOfCore,), "an OutOfCore")),
        "verbose": AnyOf(Bool(), Int(0)),
        **COMMON_CONSTRAINTS,
    }
    _fitted_attributes = _FITTED_ATTRIBUTES
    _fit_methods = ("fit", "fit_matrices", "fit_store", "fit_transform")

    def _check_params(
        self, n_blocks: Optional[int] = None, groups: Any = None, n_examples: Optional[int] = None
    ) -> List[Any]:
        """The cross-parameter rules, before any data is read (``validated`` has checked every
        parameter against the constraint table); returns the per-layer reshape transforms.

        ``n_blocks`` / ``n_examples``: known before reading the data for tensor inputs, matrices
        and stores (None: :meth:`_check_counts` again once known).
        """
        transforms = expand_per_layer(self.reshape_transform, len(self.layers or ()), "reshape_transform")
        if self.out_of_core is not None:
            self.out_of_core.check()
        if groups is None and self.group_sparsity > 0:
            raise ValueError("group_sparsity > 0 needs groups: one group id (e.g. the label) per example")
        self._check_counts(n_blocks, groups, n_examples)
        return transforms

    def _check_counts(self, n_blocks: Optional[int], groups: Any, n_examples: Optional[int]) -> None:
        """``block_weights`` and ``groups`` against the number of blocks and of examples."""
        if not isinstance(self.block_weights, (type(None), str)) and n_blocks is not None:
            if len(self.block_weights) != n_blocks:
                raise ValueError(
                    f"block_weights must hold {n_blocks} weights, one per block (pixel blocks then "
                    f"layers), got {len(self.block_weights)}"
                )
        if groups is None:
            return
        shape = tuple(groups.shape) if hasattr(groups, "shape") else np.shape(groups)
        if len(shape) != 1 or (n_examples is not None and shape[0] != n_examples):
            expected = f"N={n_examples}" if n_examples is not None else "N"
            raise ValueError(f"groups must be 1-D with one entry per example ({expected}), got shape {shape}")

    def _block_spec(
        self, transforms: Any = None, device: Any = None, inputs: Any = None, reuse: bool = False
    ) -> BlockSpec:
        """The blocks that :meth:`fit` and :meth:`transform` read (:func:`resolve_blocks` of the
        parameters); with ``reuse``, the last one while the parameters and ``device`` are the same."""
        values = (getattr(self, name) for name in _SPEC_PARAMS)  # lists copied: edited in place, they differ
        source = tuple(list(v) if isinstance(v, (list, tuple)) else v for v in values)
        cached = getattr(self, "_spec_cache", None)
        if reuse and cached is not None and cached[0] == source and cached[1].device == device:
            return cached[1]
        if transforms is None:
            transforms = expand_per_layer(self.reshape_transform, len(self.layers or ()), "reshape_transform")
        params = dict(zip(_SPEC_PARAMS[:-1], source))  # reshape_transform comes as transforms
        spec = resolve_blocks(transforms=transforms, device=device, inputs=inputs, **params)
        self._spec_cache = (source, spec)
        return spec

    def _set_fitted(self, result: FitResult, on_inputs: bool) -> CoupledNMFConcepts:
        """The one place a fit's result becomes the fitted attributes (``on_inputs``: by :meth:`fit`)."""
        solution, n_pixel = result.solution, result.n_pixel_blocks
        self._components, self._offsets, self._n_pixel_blocks = solution.Wt, result.offsets, n_pixel
        factors = _factors(result.offsets, solution.Wt)
        self.pixel_factors_, self.neuron_factors_ = factors[:n_pixel], factors[n_pixel:]
        self.example_factors_, self.loss_history_ = solution.F, solution.loss_history
        self.n_iter_, self.converged_ = solution.n_iter, solution.converged
        self.block_weights_, self.block_names_ = result.block_weights, result.block_names
        self.shift_ = [None if s is None else s.to(solution.Wt.device, self.dtype) for s in result.shifts]
        self.input_shape_, self.layer_names_ = result.input_shape, result.layer_names
        self.layer_shapes_ = result.layer_shapes
        self._fitted_on_inputs = on_inputs
        return self

    # ------------------------------------------------------------------ fitting
    @dist_utils.synchronized
    @validated(args={"has_labels": Bool(), "show_progress": Bool()})
    def fit(
        self,
        inputs_or_loader: Union[Tensor, Iterable[Any]],
        groups: Any = None,
        additional_forward_args: Any = None,
        has_labels: bool = False,
        show_progress: bool = True,
    ) -> CoupledNMFConcepts:
        """Collect pixel channels and layer outputs, then factorise them.

        Args:
            inputs_or_loader (Tensor, tuple, dict or iterable): inputs ``(N, C, H, W)``
                (or any ``(N, ...)``), a tuple of input tensors (several model
                inputs), a dict of keyword inputs, or a loader whose batches are
                tensors, tuples or dicts. Every input goes to the model
                (``model(*inputs, *additional_forward_args, **keyword_inputs)``);
                the pixel blocks are the first input's channels. Streamed through
                ``model`` in one pass (forward hooks only; the model is left as it
                was).
            groups (array-like, optional): ``(N,)`` group id per example for
                ``group_sparsity`` (e.g. class labels).
            additional_forward_args: appended to every forward call, as in Captum.
            has_labels (bool): batches are ``(inputs..., labels)`` tuples (or dicts
                with a ``"labels"`` entry, e.g. ``DataLoader(TensorDataset(x, y))``):
                the labels are not passed to the model. Default: False.
            show_progress (bool): a progress bar over the iterations with the objective ``J`` in
                its postfix, on a terminal only (silent in logs and redirected output).
                Default: True; False silences it. See also ``verbose``.

        Returns:
            self
        """
        tensor_input = isinstance(inputs_or_loader, Tensor)
        n_pixel = 0
        if tensor_input and self.include_pixels:
            n_pixel = inputs_or_loader.shape[1] if inputs_or_loader.dim() > 2 else 1
        transforms = self._check_params(
            n_blocks=n_pixel + len(self.layers) if tensor_input else None,
            groups=groups,
            n_examples=len(inputs_or_loader) if tensor_input and inputs_or_loader.dim() else None,
        )
        spec = self._block_spec(transforms, self.device, inputs_or_loader)
        if self.out_of_core is None:
            collected = collect_blocks(spec, inputs_or_loader, additional_forward_args, has_labels)
            blocks = collected.pixel_blocks + collected.activation_blocks
            if not tensor_input:  # a loader's counts are known only now
                self._check_counts(len(blocks), groups, blocks[0].shape[1])
            return self._set_fitted(self._fit_blocks(collected, groups, spec.device, show_progress), True)
        store = collect_to_store(
            spec, inputs_or_loader, self.out_of_core, additional_forward_args, has_labels
        )
        try:
            if not tensor_input:
                self._check_counts(len(store.block_rows), groups, store.n_examples)
            return self._set_fitted(self._fit_store(store, groups, spec.device, show_progress), True)
        finally:
            store.delete()

    @validated(args={"has_labels": Bool(), "show_progress": Bool()})
    def fit_transform(
        self,
        inputs_or_loader: Union[Tensor, Iterable[Any]],
        groups: Any = None,
        additional_forward_args: Any = None,
        has_labels: bool = False,
        show_progress: bool = True,
    ) -> Tensor:
        """:meth:`fit`, then the fitted example factor in scikit-learn's orientation.

        Returns ``example_factors_.T``: ``(N, d)``, one row per example (``(n_samples,
        n_components)``, as ``sklearn.decomposition.NMF.fit_transform`` and
        :meth:`SemanticVector.transform <captum_concepts.concept.SemanticVector.transform>`
        return), the affinities found by the fit itself (not re-solved as
        :meth:`transform` would). Arguments as in :meth:`fit`. For matrices:
        ``fit_matrices(...).example_factors_.T``.
        """
        self.fit(inputs_or_loader, groups, additional_forward_args, has_labels, show_progress)
        return self.example_factors_.t()

    @dist_utils.synchronized
    @validated(args={"show_progress": Bool()})
    def fit_matrices(
        self,
        pixel_blocks: Sequence[Matrix] = (),
        activation_blocks: Sequence[Matrix] = (),
        groups: Any = None,
        show_progress: bool = True,
    ) -> CoupledNMFConcepts:
        """Factorise raw matrices: ``pixel_blocks`` ``S_i x N`` and ``activation_blocks`` ``a_j x N``.

        Tensors (any strides, e.g. transposed views) or numpy arrays; converted to
        ``dtype`` on ``device`` (no copy when they already match). Either list
        may be empty; ``include_pixels``, ``model`` and ``layers`` are not used.
        ``show_progress``: as in :meth:`fit`.
        """
        pixel_blocks, activation_blocks = matrix_lists(pixel_blocks, activation_blocks)
        first = (pixel_blocks + activation_blocks)[:1]
        self._check_params(
            n_blocks=len(pixel_blocks) + len(activation_blocks),
            groups=groups,
            n_examples=int(np.shape(first[0])[1]) if first and len(np.shape(first[0])) == 2 else None,
        )
        collected = CollectedBlocks(pixel_blocks, activation_blocks, input_shape=None)
        device = pick_device(self.device, *first)
        return self._set_fitted(self._fit_blocks(collected, groups, device, show_progress), False)

    @dist_utils.synchronized
    @validated(args={"show_progress": Bool()})
    def fit_store(
        self, store: ActivationStore, groups: Any = None, show_progress: bool = True
    ) -> CoupledNMFConcepts:
        """Factorise the blocks of an :class:`ActivationStore` (on disk) in chunks of examples.

        Memory stays within ``out_of_core.memory_budget`` (``OutOfCore()``'s
        default when ``out_of_core`` is None). Layer names and shapes are the
        store's; ``transform`` then takes ``pixel_blocks=`` and ``activation_blocks=``.
        ``show_progress``: as in :meth:`fit`.
        """
        if not isinstance(store, ActivationStore):
            raise TypeError(f"store must be an ActivationStore, got {type(store).__name__}")
        self._check_params(n_blocks=len(store.block_rows), groups=groups, n_examples=store.n_examples)
        device = pick_device(self.device)
        return self._set_fitted(self._fit_store(store, groups, device, show_progress), False)

    # ------------------------------------------------------------------ projection
    @dist_utils.synchronized
    @validated(
        fitted=True,
        args={"max_iter": AnyOf(NONE, Int(0)), "has_labels": Bool(), "samples_first": AnyOf(NONE, Bool())},
    )
    def transform(
        self,
        inputs: Any = None,
        max_iter: Optional[int] = None,
        additional_forward_args: Any = None,
        has_labels: bool = False,
        *,
        pixel_blocks: Optional[Sequence[Matrix]] = None,
        activation_blocks: Optional[Sequence[Matrix]] = None,
        samples_first: Optional[bool] = None,
    ) -> Tensor:
        """Concept affinities of new examples, all block factors fixed: ``(M, d)`` with
        ``samples_first=True`` (scikit-learn's ``(n_samples, n_components)``), the paper's
        ``F_new`` ``(d, M)`` with ``samples_first=False``.

        Orientation: scikit-learn's ``NMF.transform``, :meth:`fit_transform` and
        :meth:`SemanticVector.transform <captum_concepts.concept.SemanticVector.transform>` give one
        row per example; this method has returned the paper's ``(d, M)``. Left unset
        (``samples_first=None``) it still does, with a ``FutureWarning``: a future release
        switches the default to ``(M, d)``. Pass ``samples_first=True`` for the new orientation
        (``transform(x, samples_first=True) == transform(x, samples_first=False).T``) or
        ``samples_first=False`` to keep the paper's, without the warning.

        Give either ``inputs`` (after :meth:`fit`) or the matrices ``pixel_blocks`` /
        ``activation_blocks`` (after :meth:`fit_matrices` or :meth:`fit_store`; either may be
        left out when the fit had no block of that kind).

        Args:
            inputs (Tensor, tuple, dict or iterable, optional): inputs or a loader, as in
                :meth:`fit` (needs a model fitted through :meth:`fit`). The old call form
                ``transform((pixel_blocks, activation_blocks))``, a pair of matrix lists in
                place of ``inputs``, still works but is deprecated (``DeprecationWarning``).
            max_iter (int, optional): HALS iterations, ``>= 0`` (default: ``self.max_iter``).
            additional_forward_args: as in :meth:`fit`.
            has_labels: as in :meth:`fit`.
            pixel_blocks (sequence of Tensor or ndarray, optional): ``S_i x M`` matrices, one
                per fitted pixel block, as in :meth:`fit_matrices`.
            activation_blocks (sequence of Tensor or ndarray, optional): ``a_j x M``
                matrices, one per fitted activation block.
            samples_first (bool, optional): the orientation of the result, see above.

        Solves the non-negative least-squares problem for ``F`` with HALS
        (convex, so the solution does not depend on the fitting solver), with
        ``lambda_f`` and the block weights, without the group lasso (new
        examples have no group).
        """
        device = self.example_factors_.device
        if is_matrix_pair(inputs):
            if pixel_blocks is not None or activation_blocks is not None:
                raise TypeError("transform: give the matrices as pixel_blocks= / activation_blocks= only")
            warn_user(
                "transform((pixel_blocks, activation_blocks)) is deprecated; call "
                "transform(pixel_blocks=..., activation_blocks=...)",
                DeprecationWarning,
            )
            (pixel_blocks, activation_blocks), inputs = inputs, None
        if pixel_blocks is not None or activation_blocks is not None:
            if inputs is not None:
                raise TypeError("transform takes inputs or pixel_blocks= / activation_blocks=, not both")
            pixel_blocks, activation_blocks = matrix_lists(pixel_blocks, activation_blocks)
        elif inputs is None:
            raise TypeError(
                "transform needs inputs (as in fit) or pixel_blocks= / activation_blocks= "
                "(as in fit_matrices)"
            )
        elif not self._fitted_on_inputs:
            raise ValueError(
                "this model was fitted with fit_matrices() or fit_store(); "
                "pass pixel_blocks= and activation_blocks= to transform"
            )
        else:
            collected = collect_blocks(
                self._block_spec(device=device, reuse=True), inputs, additional_forward_args, has_labels
            )
            pixel_blocks, activation_blocks = collected.pixel_blocks, collected.activation_blocks
        n_act = len(self._offsets) - 1 - self._n_pixel_blocks
        if len(pixel_blocks) != self._n_pixel_blocks or len(activation_blocks) != n_act:
            raise ValueError(
                f"transform needs {self._n_pixel_blocks} pixel blocks and {n_act} activation blocks "
                f"like fit, got {len(pixel_blocks)} and {len(activation_blocks)}"
            )
        blocks = self._as_blocks(pixel_blocks, activation_blocks, device)
        blocks, _ = self._shifted(blocks, self.block_names_, self._n_pixel_blocks, fitting=False)
        problem = solvers.CoupledProblem(
            blocks, self.block_weights_, [self.lambda_p] * len(blocks), float(self.lambda_f)
        )
        iters = self.max_iter if max_iter is None else max_iter
        F = solvers.solve_examples(
            problem, self._components, blocks, max_iter=int(iters), tol=float(self.tol)
        )
        if samples_first is None:
            warn_user(
                "CoupledNMFConcepts.transform returns (d, M), concepts first (the paper's F); a future "
                "release returns (M, d), one row per example, as scikit-learn, fit_transform and "
                "SemanticVector.transform do. Pass samples_first=True for (M, d) or "
                "samples_first=False to keep (d, M) and silence this warning.",
                FutureWarning,
            )
        return F.t() if samples_first else F

    # ------------------------------------------------------------------ persistence
    _persistence_kind = "CoupledNMFConcepts"
    _runtime_params = ("model", "out_of_core")

    @validated(params=False, fitted=True)
    def save(self, path: PathLike) -> None:
        """Save the fitted factors, fitted attributes and parameters to ``path``.

        A safe file: tensors via ``torch.save`` read back with ``weights_only=True``
        and JSON metadata with the format and package versions (no pickled
        objects), with a checksum verified on load; written atomically (a
        temporary file in the same folder, then renamed). Neither the model nor
        ``out_of_core`` is saved; layers given as modules are stored by their
        names; parameters with no JSON form (callables) are recorded as unsaved.
        """
        super().save(path)

    @classmethod
    @validated(params=False)
    def load(cls, path: PathLike, model: Optional[nn.Module] = None, **params: Any) -> CoupledNMFConcepts:
        """Load a :meth:`save` file (factors on the CPU). The analyses and ``transform`` of
        matrices work at once; ``transform`` of inputs runs the model: pass ``model=``
        here (or set ``est.model``). ``params`` set constructor parameters that were
        not saved (``out_of_core``; callables such as a ``reshape_transform``, which a
        ``UserWarning`` names when they are missing) or override saved ones.

        Raises:
            ValueError: a corrupted, damaged, truncated or foreign file.
        """
        return super().load(path, model, **params)
