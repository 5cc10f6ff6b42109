"""Coupled NMF concept discovery over pixels, neurons of several layers and examples.

Saini & Papalexakis, "Analyzing Representations inside Convolutional Neural
Networks", §3.2, Equations 3.1 and 3.2.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from captum.concept import Concept
from sklearn.base import BaseEstimator
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..._utils import distributed as dist_utils
from ..._utils.layers import LayerSpec, resolve_layers
from ..._utils.layout import expand_per_layer
from ..._utils.persistence import PathLike
from ..._utils.validation import (
    NONE,
    AnyOf,
    Bool,
    DeviceSpec,
    InstanceOf,
    Int,
    LayerList,
    Options,
    Positives,
    RealNumber,
    check_fitted,
    check_int,
    check_real,
    validate_params,
)
from . import block_prep
from . import cnmf_solvers as solvers
from . import out_of_core as ooc
from .activations import POOLS, CollectedBlocks, collect_blocks
from .estimator_io import clone_with_layer_names, fingerprint, load_estimator, save_estimator

__all__ = ["CoupledNMFConcepts"]

Matrix = Union[Tensor, np.ndarray]
SOLVERS = ("mu", "hals")
SHIFTS = (None, "min")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class _ExampleDataset(Dataset):
    """Indexable view of selected examples; batches collate to one input tensor (what TCAV expects)."""

    def __init__(self, inputs: Tensor, indices: Tensor) -> None:
        self.inputs = inputs
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tensor:
        return self.inputs[self.indices[i]]


class CoupledNMFConcepts(BaseEstimator):
    r"""Unsupervised concepts shared by pixels, neurons of several layers and examples.

    Factorises pixel blocks ``D_i`` (channel ``i`` of every input, ``S_i x N``) and
    activation blocks ``A_j`` (layer ``j``, ``a_j x N``) with a shared example
    factor ``F`` (``d x N``)::

        J = sum_i w_i ||D_i - P_i F||^2 + sum_j w_j ||A_j - O_j F||^2
            + lambda_p sum_i ||P_i||^2 + lambda_o sum_j ||O_j||^2 + lambda_f ||F||^2
            + group_sparsity * sum_{k, g} ||F[k, I_g]||_2

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

        >>> cnmf = CoupledNMFConcepts(10, model, layers=["block2.pool", "embedding_relu"])
        >>> cnmf.fit(x_train)                    # images in [0, 1]
        >>> cnmf.top_classes(y_train, k=3)       # (10, 3) class ids per concept
        >>> concepts = cnmf.to_captum_concepts(x_train, k=50)
        >>> TCAV(model, ["block3.pool"]).interpret(x, [[concepts[0], concepts[1]]], target=3)
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
        out_of_core: Optional[ooc.OutOfCore] = None,
        reshape_transform: Any = None,
    ) -> None:
        self.n_concepts = n_concepts
        self.model = model
        self.layers = layers
        self.include_pixels = include_pixels
        self.lambda_p = lambda_p
        self.lambda_o = lambda_o
        self.lambda_f = lambda_f
        self.group_sparsity = group_sparsity
        self.normalize_columns = normalize_columns
        self.block_weights = block_weights
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.pool = pool
        self.shift = shift
        self.batch_size = batch_size
        self.dtype = dtype
        self.distributed = distributed
        self.out_of_core = out_of_core
        self.reshape_transform = reshape_transform

    # ------------------------------------------------------------------ validation
    _parameter_constraints = {
        "n_concepts": Int(1),
        "model": AnyOf(NONE, InstanceOf((nn.Module,), "a torch.nn.Module")),
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
        "random_state": AnyOf(NONE, Int(0)),
        "device": DeviceSpec(),
        "pool": Options(POOLS),
        "shift": Options(SHIFTS),
        "batch_size": Int(1),
        "dtype": Options(DTYPES),
        "distributed": Bool(),
        "out_of_core": AnyOf(NONE, InstanceOf((ooc.OutOfCore,), "an OutOfCore")),
    }

    def _check_params(
        self, n_blocks: Optional[int] = None, groups: Any = None, n_examples: Optional[int] = None
    ) -> None:
        """Every parameter and the cross-parameter rules, before any data is read.

        ``n_blocks`` / ``n_examples``: known before reading the data for tensor
        inputs, matrices and stores (None: checked once known).
        """
        validate_params(self)
        expand_per_layer(self.reshape_transform, len(self.layers or ()), "reshape_transform")
        if self.out_of_core is not None:
            self.out_of_core.check()
        if not isinstance(self.block_weights, (type(None), str)) and n_blocks is not None:
            if len(self.block_weights) != n_blocks:
                raise ValueError(
                    f"block_weights must hold {n_blocks} weights, one per block (pixel blocks then "
                    f"layers), got {len(self.block_weights)}"
                )
        if groups is None:
            if self.group_sparsity > 0:
                raise ValueError("group_sparsity > 0 needs groups: one group id (e.g. the label) per example")
            return
        shape = tuple(groups.shape) if hasattr(groups, "shape") else np.shape(groups)
        if len(shape) != 1 or (n_examples is not None and shape[0] != n_examples):
            expected = f"N={n_examples}" if n_examples is not None else "N"
            raise ValueError(f"groups must be 1-D with one entry per example ({expected}), got shape {shape}")

    def _check_fitted(self) -> None:
        check_fitted(self, "example_factors_", "fit, fit_matrices or fit_store")

    def _as_block(self, x: Matrix, argument: str, device: torch.device) -> Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor):
            raise TypeError(f"{argument} must be a 2-D tensor or numpy array, got {type(x).__name__}")
        if x.dim() != 2 or x.numel() == 0:
            raise ValueError(f"{argument} must be a non-empty 2-D matrix (features, N), got {tuple(x.shape)}")
        if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int32, torch.int64)):
            raise TypeError(f"{argument} must hold real numbers, got dtype {x.dtype}")
        return x.to(device=device, dtype=self.dtype)

    def _prepare_blocks(
        self,
        pixel_blocks: Sequence[Matrix],
        activation_blocks: Sequence[Matrix],
        names: List[str],
        device: torch.device,
        fitting: bool,
    ) -> List[Tensor]:
        """Validated blocks on ``device`` in ``dtype``; negatives raise or are shifted (``shift``)."""
        blocks = [self._as_block(x, f"pixel_blocks[{i}]", device) for i, x in enumerate(pixel_blocks)]
        blocks += [
            self._as_block(x, f"activation_blocks[{j}]", device) for j, x in enumerate(activation_blocks)
        ]
        if not blocks:
            raise ValueError("no data: give at least one pixel or activation block")
        n = blocks[0].shape[1]
        dist_utils.declare(block_rows=[x.shape[0] for x in blocks])
        for b, (name, x) in enumerate(zip(names, blocks)):
            if not fitting and x.shape[0] != self._offsets[b + 1] - self._offsets[b]:
                # checked before any shift is applied, which would fail to broadcast
                raise ValueError(
                    f"{name} has {x.shape[0]} rows, expected "
                    f"{self._offsets[b + 1] - self._offsets[b]} as in fit"
                )
            if x.shape[1] != n:
                raise ValueError(
                    f"every block needs the same number of examples N={n}; {name} has {x.shape[1]}"
                )
        extrema = [block_prep.row_extrema(x) for x in blocks]
        shifts = block_prep.block_shifts(
            names,
            len(pixel_blocks),
            [lo for lo, _ in extrema],
            [hi for _, hi in extrema],
            self.shift,
            fitted=None if fitting else self.shift_,
            reduce_min=self._reduce_min,
        )
        if fitting:
            self.shift_ = [None if s is None else s.to(device=device, dtype=self.dtype) for s in shifts]
        return [block_prep.apply_shift(x, s) for x, s in zip(blocks, shifts)]

    def _block_weights(self, blocks: List[Tensor], moments: Tensor) -> List[float]:
        n = len(blocks)
        if self.block_weights is None:
            return [1.0] * n
        if isinstance(self.block_weights, str):  # "balanced" (the constraint table allows no other)
            energy = moments[:, 1].clamp_min(1e-30)
            w = energy.sum() / (n * energy)
            return [float(v) for v in w]
        if len(self.block_weights) != n:  # a loader's block count is known only after collection
            raise ValueError(
                f"block_weights must hold {n} weights, one per block (pixel blocks then layers), "
                f"got {len(self.block_weights)}"
            )
        return [float(v) for v in self.block_weights]

    def _group_index(self, groups: Any, n: int, device: torch.device) -> Tuple[Optional[Tensor], int]:
        if groups is None:  # group_sparsity > 0 without groups was refused by _check_params
            return None, 0
        values = groups.detach().cpu().numpy() if isinstance(groups, Tensor) else np.asarray(groups)
        if values.ndim != 1 or len(values) != n:
            raise ValueError(
                f"groups must be 1-D with one entry per example (N={n}), got shape {values.shape}"
            )
        if self.distributed:
            known = np.unique(np.concatenate(dist_utils.all_gather_objects(np.unique(values))))
            inverse = np.searchsorted(known, values)
            return torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=device), len(known)
        _, inverse = np.unique(values, return_inverse=True)
        return torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=device), int(inverse.max()) + 1

    def _reduce_min(self, t: Tensor) -> Tensor:
        return dist_utils.all_reduce_min(t) if self.distributed else t

    def _collect(
        self, inputs: Any, device: torch.device, additional_forward_args: Any, has_labels: bool
    ) -> CollectedBlocks:
        """The pixel and activation blocks of ``inputs``, as this estimator's parameters define them."""
        return collect_blocks(
            self.model,
            list(self.layers),
            inputs,
            include_pixels=self.include_pixels,
            pool=self.pool,
            batch_size=int(self.batch_size),
            device=device,
            dtype=self.dtype,
            additional_forward_args=additional_forward_args,
            has_labels=has_labels,
            reshape_transform=self.reshape_transform,
        )

    def _resolve_device(self, fallback: torch.device) -> torch.device:
        return torch.device(self.device) if self.device is not None else fallback

    # ------------------------------------------------------------------ fitting
    @dist_utils.synchronized
    def fit(
        self,
        inputs_or_loader: Union[Tensor, Iterable[Any]],
        groups: Any = None,
        additional_forward_args: Any = None,
        has_labels: bool = False,
    ) -> CoupledNMFConcepts:
        """Collect pixel channels and layer outputs, then factorise them.

        Args:
            inputs_or_loader (Tensor, tuple, dict or iterable): inputs ``(N, C, H, W)``
                (or any ``(N, ...)``), a tuple of input tensors (several model
                inputs), a dict of keyword inputs, or a loader whose batches are
                tensors, tuples or dicts. Every input goes to the model
                (``model(*inputs, *additional_forward_args, **keyword_inputs)``);
                the pixel blocks are the first input's channels. Streamed through
                ``model`` in one pass (forward hooks only, via ``ModelGuard``; the
                model is left as it was).
            groups (array-like, optional): ``(N,)`` group id per example for
                ``group_sparsity`` (e.g. class labels).
            additional_forward_args: appended to every forward call, as in Captum.
            has_labels (bool): batches are ``(inputs..., labels)`` tuples (or dicts
                with a ``"labels"`` entry, e.g. ``DataLoader(TensorDataset(x, y))``):
                the labels are not passed to the model. Default: False.

        Returns:
            self
        """
        tensor_input = isinstance(inputs_or_loader, Tensor)
        n_pixel = 0
        if tensor_input and self.include_pixels:
            n_pixel = inputs_or_loader.shape[1] if inputs_or_loader.dim() > 2 else 1
        self._check_params(
            n_blocks=n_pixel + len(self.layers) if tensor_input else None,
            groups=groups,
            n_examples=len(inputs_or_loader) if tensor_input and inputs_or_loader.dim() else None,
        )
        if not self.include_pixels and not self.layers:
            raise ValueError("nothing to factorise: include_pixels=False and no layers")
        if self.layers and self.model is None:
            raise ValueError("layers were given but model is None; pass the model whose layers to read")
        if self.layers:
            resolve_layers(self.model, list(self.layers), argument="layers")
        fallback = None
        if self.model is not None:
            p = next(self.model.parameters(), None)
            fallback = p.device if p is not None else None
        if fallback is None:
            fallback = inputs_or_loader.device if tensor_input else torch.device("cpu")
        device = self._resolve_device(fallback)
        if self.out_of_core is not None:
            store = ooc.collect_to_store(
                self.model,
                list(self.layers),
                inputs_or_loader,
                self.out_of_core,
                include_pixels=self.include_pixels,
                pool=self.pool,
                batch_size=int(self.batch_size),
                device=device,
                additional_forward_args=additional_forward_args,
                has_labels=has_labels,
                reshape_transform=self.reshape_transform,
            )
            try:
                self._fit_store(store, groups, device)
            finally:
                store.delete()
            self._fitted_on_inputs = True
            return self
        collected = self._collect(inputs_or_loader, device, additional_forward_args, has_labels)
        self.input_shape_ = collected.input_shape
        self.layer_names_ = collected.layer_names
        self.layer_shapes_ = collected.layer_shapes
        self._fitted_on_inputs = True
        return self._fit_blocks(collected.pixel_blocks, collected.activation_blocks, groups, device)

    @dist_utils.synchronized
    def fit_matrices(
        self,
        pixel_blocks: Sequence[Matrix] = (),
        activation_blocks: Sequence[Matrix] = (),
        groups: Any = None,
    ) -> CoupledNMFConcepts:
        """Factorise raw matrices: ``pixel_blocks`` ``S_i x N`` and ``activation_blocks`` ``a_j x N``.

        Tensors (any strides, e.g. transposed views) or numpy arrays; converted to
        ``dtype`` on ``device`` (no copy when they already match). Either list
        may be empty; ``include_pixels``, ``model`` and ``layers`` are not used.
        """
        for argument, value in (("pixel_blocks", pixel_blocks), ("activation_blocks", activation_blocks)):
            if isinstance(value, (Tensor, np.ndarray)):
                raise TypeError(f"{argument} must be a list of matrices, got one {type(value).__name__}")
        pixel_blocks, activation_blocks = list(pixel_blocks or ()), list(activation_blocks or ())
        first = (pixel_blocks + activation_blocks)[:1]
        self._check_params(
            n_blocks=len(pixel_blocks) + len(activation_blocks),
            groups=groups,
            n_examples=int(np.shape(first[0])[1]) if first and len(np.shape(first[0])) == 2 else None,
        )
        fallback = first[0].device if first and isinstance(first[0], Tensor) else torch.device("cpu")
        self.input_shape_ = None
        self.layer_names_ = [f"activation_blocks[{j}]" for j in range(len(activation_blocks))]
        self.layer_shapes_ = [(int(np.shape(x)[0]),) for x in activation_blocks]
        self._fitted_on_inputs = False
        return self._fit_blocks(pixel_blocks, activation_blocks, groups, self._resolve_device(fallback))

    @dist_utils.synchronized
    def fit_store(self, store: ooc.ActivationStore, groups: Any = None) -> CoupledNMFConcepts:
        """Factorise the blocks of an :class:`ActivationStore` (on disk) in chunks of examples.

        Memory stays within ``out_of_core.memory_budget`` (``OutOfCore()``'s
        default when ``out_of_core`` is None). Layer names and shapes are the
        store's; ``transform`` then takes ``(pixel_blocks, activation_blocks)``.
        """
        if not isinstance(store, ooc.ActivationStore):
            raise TypeError(f"store must be an ActivationStore, got {type(store).__name__}")
        self._check_params(n_blocks=len(store.block_rows), groups=groups, n_examples=store.n_examples)
        self._fitted_on_inputs = False
        return self._fit_store(store, groups, self._resolve_device(torch.device("cpu")))

    def _fit_store(self, store: ooc.ActivationStore, groups: Any, device: torch.device) -> CoupledNMFConcepts:
        if store.n_examples == 0:
            raise ValueError("store holds no examples; append at least one batch before fitting")
        dist_utils.declare(block_rows=list(store.block_rows))
        n_act = len(store.block_rows) - store.n_pixel_blocks
        self.input_shape_ = store.input_shape
        self.layer_names_ = list(store.layer_names) or [f"activation_blocks[{j}]" for j in range(n_act)]
        self.layer_shapes_ = list(store.layer_shapes) or [
            (r,) for r in store.block_rows[store.n_pixel_blocks :]
        ]
        names = [f"pixels[{i}]" for i in range(store.n_pixel_blocks)] + list(self.layer_names_)
        overflow = self._reduce_min(-torch.tensor(store.overflow, dtype=torch.int32)).neg()
        if bool(overflow.any()):
            name = names[int(torch.nonzero(overflow)[0])]
            raise ValueError(
                f"{name} holds values beyond +-65504, which overflow float16 storage (they would be "
                "stored as inf): use OutOfCore(storage_dtype=torch.float32) or rescale the data"
            )
        offsets = np.cumsum([0] + store.block_rows)
        bounds = list(zip(offsets[:-1], offsets[1:]))
        shifts = block_prep.block_shifts(
            names,
            store.n_pixel_blocks,
            [store.row_min[a:c] for a, c in bounds],
            [store.row_max[a:c] for a, c in bounds],
            self.shift,
            reduce_min=self._reduce_min,
        )
        self.shift_ = [None if s is None else s.to(device=device, dtype=self.dtype) for s in shifts]
        shift = None
        if any(s is not None for s in shifts):
            shift = torch.cat(
                [
                    torch.zeros(c - a, dtype=torch.float64) if s is None else s.cpu()
                    for (a, c), s in zip(bounds, shifts)
                ]
            )
            shift = shift.to(device=device, dtype=self.dtype)
        settings = self.out_of_core or ooc.OutOfCore()
        chunk_rows = ooc.plan_chunk_rows(
            settings.budget_bytes(),
            store.n_examples,
            store.n_features,
            int(self.n_concepts),
            self.dtype,
            store.storage_dtype,
        )
        lambdas = [self.lambda_p] * store.n_pixel_blocks + [self.lambda_o] * n_act
        placeholders = [torch.empty(r, 0, dtype=self.dtype, device=device) for r in store.block_rows]
        buffers: dict = {}  # chunk buffers shared by the problems built below

        new_problem = functools.partial(
            ooc.StreamedProblem, store, chunk_rows, shift, placeholders, buffers=buffers
        )
        return self._fit_problem(new_problem, lambdas, store.n_pixel_blocks, names, groups, device)

    def _fit_blocks(self, pixel_blocks, activation_blocks, groups, device) -> CoupledNMFConcepts:
        n_pixel = len(pixel_blocks)
        names = [f"pixels[{i}]" for i in range(n_pixel)] + list(self.layer_names_)
        blocks = self._prepare_blocks(pixel_blocks, activation_blocks, names, device, fitting=True)
        lambdas = [self.lambda_p] * n_pixel + [self.lambda_o] * len(activation_blocks)

        new_problem = functools.partial(solvers.CoupledProblem, blocks)
        return self._fit_problem(new_problem, lambdas, n_pixel, names, groups, device)

    def _fit_problem(self, new_problem, lambdas, n_pixel, names, groups, device) -> CoupledNMFConcepts:
        """Random start, solve and fitted attributes.

        ``new_problem(weights, lambdas, lambda_f, group_index, n_groups, group_sparsity)`` builds
        the in-memory or streamed problem; only the block weights and groups vary here.
        """

        def make_problem(weights, group_index=None, n_groups=0):
            return new_problem(
                weights, lambdas, float(self.lambda_f), group_index, n_groups, float(self.group_sparsity)
            )

        problem = make_problem([1.0] * len(names))
        n_local = problem.n_examples
        group_index, n_groups = self._group_index(groups, n_local, device)
        # sharded: sums over examples are all-reduced, F's start is the global one's columns
        reduce = dist_utils.all_reduce_sum if self.distributed else (lambda t: t)
        offset, n = dist_utils.shard_offset(n_local) if self.distributed else (0, n_local)
        moments = problem.moments(reduce)
        weights = self._block_weights(names, moments)
        problem = make_problem(weights, group_index, n_groups)
        seed = self.random_state
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
            if self.distributed:  # one random start for all ranks
                seed = dist_utils.all_gather_objects(seed)[0]
        mean = float(moments[:, 0].sum() / (problem.n_rows * n))
        Wt, F = solvers.random_init(self.n_concepts, problem.n_rows, n, mean, seed, self.dtype, device)
        if n != n_local:
            F = F[:, offset : offset + n_local].contiguous()
        result = solvers.solve(
            problem,
            Wt,
            F,
            solver=self.solver,
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            normalize=bool(self.normalize_columns),
            reduce=reduce,
            moments=moments,
        )
        self._components = result.Wt
        self._offsets = problem.offsets
        self._n_pixel_blocks = n_pixel
        self.example_factors_ = result.F
        factors = [
            result.Wt[:, a:b].t().contiguous() for a, b in zip(problem.offsets[:-1], problem.offsets[1:])
        ]
        self.pixel_factors_ = factors[:n_pixel]
        self.neuron_factors_ = factors[n_pixel:]
        self.loss_history_ = result.loss_history
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.block_weights_ = weights
        self.block_names_ = names
        return self

    # ------------------------------------------------------------------ projection
    @dist_utils.synchronized
    def transform(
        self,
        new_inputs_or_matrices: Any,
        max_iter: Optional[int] = None,
        additional_forward_args: Any = None,
        has_labels: bool = False,
    ) -> Tensor:
        """Concept affinities ``F_new`` ``(d, M)`` of new examples, all block factors fixed.

        Args:
            new_inputs_or_matrices: inputs or a loader (as in :meth:`fit`; needs a
                model fitted through :meth:`fit`), or a pair
                ``(pixel_blocks, activation_blocks)`` of matrix lists shaped as in
                :meth:`fit_matrices`.
            max_iter (int, optional): HALS iterations (default: ``self.max_iter``).
            additional_forward_args: as in :meth:`fit`.
            has_labels: as in :meth:`fit`.

        Solves the non-negative least-squares problem for ``F`` with HALS
        (convex, so the solution does not depend on the fitting solver), with
        ``lambda_f`` and the block weights, without the group lasso (new
        examples have no group).
        """
        self._check_fitted()
        x = new_inputs_or_matrices
        device = self.example_factors_.device
        if isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, (list, tuple)) for v in x):
            pixel_blocks, activation_blocks = list(x[0]), list(x[1])
        else:
            if not self._fitted_on_inputs:
                raise ValueError(
                    "this model was fitted with fit_matrices(); "
                    "pass (pixel_blocks, activation_blocks) to transform"
                )
            collected = self._collect(x, device, additional_forward_args, has_labels)
            pixel_blocks, activation_blocks = collected.pixel_blocks, collected.activation_blocks
        n_act = len(self._offsets) - 1 - self._n_pixel_blocks
        if len(pixel_blocks) != self._n_pixel_blocks or len(activation_blocks) != n_act:
            raise ValueError(
                f"transform needs {self._n_pixel_blocks} pixel blocks and {n_act} activation blocks "
                f"like fit, "
                f"got {len(pixel_blocks)} and {len(activation_blocks)}"
            )
        blocks = self._prepare_blocks(
            pixel_blocks, activation_blocks, self.block_names_, device, fitting=False
        )
        problem = solvers.CoupledProblem(
            blocks, self.block_weights_, [self.lambda_p] * len(blocks), float(self.lambda_f)
        )
        iters = self.max_iter if max_iter is None else max_iter
        return solvers.solve_examples(
            problem, self._components, blocks, max_iter=int(iters), tol=float(self.tol)
        )

    # ------------------------------------------------------------------ analyses
    def top_examples(self, k: int = 10) -> Tensor:
        """Indices ``(d, k)`` of the ``k`` examples with the largest ``F[c, :]`` per concept ``c``."""
        self._check_fitted()
        k = self._check_k(k, self.example_factors_.shape[1])
        return self.example_factors_.topk(k, dim=1).indices

    def class_scores(self, labels: Any) -> Tuple[Tensor, Tensor]:
        """Summed affinity per concept and class: ``(scores (d, n_classes), classes (n_classes,))``."""
        self._check_fitted()
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

    def top_classes(self, labels: Any, k: int = 3) -> Tensor:
        """The ``k`` classes with the largest summed ``F[c, class]`` per concept, ``(d, k)`` (Table 1).

        Entries are the label values themselves (not positions).
        """
        scores, classes = self.class_scores(labels)
        k = self._check_k(k, scores.shape[1])
        return classes[scores.topk(k, dim=1).indices.cpu()]

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
        self._check_fitted()
        j = self._layer_index(layer)
        O = self.neuron_factors_[j].double()
        unit = O / O.norm(dim=0).clamp_min(1e-30)
        sim = (unit.t() @ unit).to(self.example_factors_.dtype)
        if not return_eigenvalues:
            return sim
        eig = torch.linalg.eigvalsh(sim.double().cpu()).flip(0).to(sim.dtype)
        return sim, eig

    def factor_images(self, shape: Optional[Sequence[int]] = None) -> Tensor:
        """Pixel factors as images ``(d, C, H, W)``: ``P_i[:, c]`` reshaped, stacked over channels.

        Args:
            shape: ``(H, W)`` (or ``(C, H, W)``) of one channel; default: the
                input shape seen by :meth:`fit`.
        """
        self._check_fitted()
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
        self._check_fitted()
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be the fitted examples as a tensor, got {type(inputs).__name__}")
        check_real(quantile, "quantile", low=0.0, high=1.0, high_open=True)
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

    def neighbor_concepts(self, k: int = 30, batch_size: int = 1024) -> Tensor:
        """For each example, the concept distribution ``(N, d)`` of its ``k`` nearest neighbours.

        Neighbours by Euclidean distance between columns of ``F`` (the example
        itself excluded); each neighbour counts for the concept it has most
        affinity with (argmax of its column), so rows sum to 1.
        """
        self._check_fitted()
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

    def to_captum_concepts(
        self,
        inputs: Tensor,
        k: int = 50,
        concepts: Optional[Sequence[int]] = None,
        batch_size: Optional[int] = None,
        first_id: Optional[int] = None,
        name_prefix: str = "cnmf",
    ) -> List[Concept]:
        """Each concept's top-``k`` examples as a :class:`captum.concept.Concept` for ``TCAV``.

        Args:
            inputs (Tensor): the fitted examples ``(N, ...)`` in fit order.
            k (int): examples per concept (its ``top_examples``).
            concepts (sequence of int, optional): which concepts (default: all ``d``).
            batch_size (int, optional): batch size of each concept's ``DataLoader``
                (default: ``k``, one batch).
            first_id (int, optional): id of the first concept (the others follow);
                ids must be unique across all concepts given to one ``TCAV`` (e.g.
                your random concept). Default: derived from the fingerprint below
                (a multiple of ``n_concepts`` below ``2**31``, as Captum stores ids
                as int32), so unique per fit.
            name_prefix (str): names are ``f"{name_prefix}{c}-{fp}"`` with ``fp`` a
                fingerprint (10 hex digits) of this fit's factors and of the chosen
                top-``k`` examples.

        Captum's ``TCAV`` caches activations under ``save_path`` by concept name
        and id, and CAVs by concept ids alone: names and default ids unique per
        fit (and per ``k``) keep a new fit from silently reusing an old fit's
        activations and CAVs. With your own ``first_id``, use a fresh
        ``save_path`` per fit. The same fit (also after save/load) gives the same
        names and ids, so its cache is reused as intended.

        Returns:
            list of ``Concept(id, name, data_iter)``; each ``data_iter`` is a
            ``DataLoader`` yielding input tensors, as ``TCAV`` expects.
        """
        self._check_fitted()
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be the fitted examples as a tensor, got {type(inputs).__name__}")
        n = self.example_factors_.shape[1]
        if inputs.shape[0] != n:
            raise ValueError(f"inputs must hold the {n} fitted examples in fit order, got {inputs.shape[0]}")
        top = self.top_examples(k).cpu()
        chosen = range(self.n_concepts) if concepts is None else [int(c) for c in concepts]
        fp = fingerprint(self._components, self.example_factors_, top)
        if first_id is None:  # Captum keeps class ids as int32: stay below 2**31
            slots = 2**31 // self.n_concepts
            first_id = int(fp, 16) % (slots - 1) * self.n_concepts
        first_id = check_int(first_id, "first_id", low=0)
        out = []
        for i, c in enumerate(chosen):
            if not 0 <= c < self.n_concepts:
                raise ValueError(f"concepts must be in [0, {self.n_concepts}), got {c}")
            loader = DataLoader(_ExampleDataset(inputs, top[c]), batch_size=batch_size or top.shape[1])
            out.append(Concept(first_id + i, f"{name_prefix}{c}-{fp}", loader))
        return out

    # ------------------------------------------------------------------ helpers
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

    # ------------------------------------------------------------------ persistence
    _persistence_kind = "CoupledNMFConcepts"
    _runtime_params = ("model", "out_of_core")

    def save(self, path: PathLike) -> None:
        """Save the fitted factors, fitted attributes and parameters to ``path``.

        A safe file: tensors via ``torch.save`` read back with ``weights_only=True``
        and JSON metadata with the format and package versions (no pickled
        objects), with a checksum verified on load; written atomically (a
        temporary file in the same folder, then renamed). Neither the model nor
        ``out_of_core`` is saved; layers given as modules are stored by their
        names; parameters with no JSON form (callables) are recorded as unsaved.
        """

        save_estimator(self, path)

    @classmethod
    def load(cls, path: PathLike, model: Optional[nn.Module] = None, **params: Any) -> CoupledNMFConcepts:
        """Load a :meth:`save` file (factors on the CPU). The analyses and ``transform`` of
        matrices work at once; ``transform`` of inputs runs the model: pass ``model=``
        here (or set ``est.model``). ``params`` set constructor parameters that were
        not saved (``out_of_core``; callables such as a ``reshape_transform``, which a
        ``UserWarning`` names when they are missing) or override saved ones.

        Raises:
            ValueError: a corrupted, damaged, truncated or foreign file.
        """

        return load_estimator(cls, path, model, params)

    def _fitted_state(self) -> Tuple[dict, dict]:
        shifts = {f"shift_{b}": s for b, s in enumerate(self.shift_) if s is not None}
        fitted = {
            "offsets": [int(o) for o in self._offsets],
            "n_pixel_blocks": int(self._n_pixel_blocks),
            "fitted_on_inputs": bool(self._fitted_on_inputs),
            "shifted_blocks": sorted(int(k.split("_")[1]) for k in shifts),
            "loss_history": [float(v) for v in self.loss_history_],
            "n_iter": int(self.n_iter_),
            "converged": bool(self.converged_),
            "block_weights": [float(w) for w in self.block_weights_],
            "block_names": list(self.block_names_),
            "layer_names": list(self.layer_names_),
            "layer_shapes": [[int(s) for s in shape] for shape in self.layer_shapes_],
            "input_shape": None if self.input_shape_ is None else [int(s) for s in self.input_shape_],
        }
        tensors = {"components": self._components, "example_factors": self.example_factors_, **shifts}
        return tensors, fitted

    def _restore_fitted_state(self, reader: Any) -> None:
        offsets = reader.ints("offsets", low=0)
        n_blocks = len(offsets) - 1
        if n_blocks < 1 or offsets[0] != 0 or any(b <= a for a, b in zip(offsets[:-1], offsets[1:])):
            raise reader.error(f"bad block offsets {offsets[:8]}")
        n_pixel = reader.value("n_pixel_blocks", (int,))
        if not 0 <= n_pixel <= n_blocks:
            raise reader.error(f"n_pixel_blocks={n_pixel} for {n_blocks} blocks")
        d = int(self.n_concepts)
        components = reader.tensor("components", self.dtype, (d, offsets[-1]), low=0.0)
        example_factors = reader.tensor("example_factors", self.dtype, (d, None), low=0.0)
        shifted = reader.ints("shifted_blocks", low=0)
        if any(b >= n_blocks for b in shifted):
            raise reader.error(f"shifted block index beyond the {n_blocks} blocks")
        self.shift_ = [
            reader.tensor(f"shift_{b}", self.dtype, (offsets[b + 1] - offsets[b],), high=0.0)
            if b in shifted
            else None
            for b in range(n_blocks)
        ]
        names = reader.value("block_names", (list,))
        layer_names = reader.value("layer_names", (list,))
        weights = reader.value("block_weights", (list,))
        if len(names) != n_blocks or len(weights) != n_blocks or len(layer_names) != n_blocks - n_pixel:
            raise reader.error("block names, weights and offsets disagree")
        if not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < float("inf") for w in weights
        ):
            raise reader.error("block weights must be positive finite numbers")
        layer_shapes = reader.value("layer_shapes", (list,))
        if len(layer_shapes) != n_blocks - n_pixel or not all(
            isinstance(shape, list) and all(type(v) is int and v > 0 for v in shape) for shape in layer_shapes
        ):
            raise reader.error("bad layer shapes")
        history = reader.value("loss_history", (list,))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in history):
            raise reader.error("the loss history must hold numbers")
        n_iter = reader.value("n_iter", (int,))
        if n_iter < 0:
            raise reader.error(f"n_iter={n_iter} is negative")
        self._components = components
        self._offsets = offsets
        self._n_pixel_blocks = n_pixel
        self._fitted_on_inputs = reader.value("fitted_on_inputs", (bool,))
        self.example_factors_ = example_factors
        factors = [components[:, a:b].t().contiguous() for a, b in zip(offsets[:-1], offsets[1:])]
        self.pixel_factors_ = factors[:n_pixel]
        self.neuron_factors_ = factors[n_pixel:]
        self.loss_history_ = [float(v) for v in history]
        self.n_iter_ = n_iter
        self.converged_ = reader.value("converged", (bool,))
        self.block_weights_ = [float(w) for w in weights]
        self.block_names_ = [str(n) for n in names]
        self.layer_names_ = [str(n) for n in layer_names]
        self.layer_shapes_ = [tuple(shape) for shape in layer_shapes]
        shape = reader.ints("input_shape", low=1, allow_none=True)
        self.input_shape_ = None if shape is None else tuple(shape)

    # ------------------------------------------------------------------ scikit-learn
    def __sklearn_clone__(self) -> CoupledNMFConcepts:
        return clone_with_layer_names(self)
