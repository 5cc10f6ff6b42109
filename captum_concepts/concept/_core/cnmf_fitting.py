"""The fitting machinery of :class:`~captum_concepts.concept.CoupledNMFConcepts` (private).

Saini & Papalexakis, §3.2, Equations 3.1 and 3.2. The estimator's public entries (``fit``,
``fit_matrices``, ``fit_store``, ``transform``) check their parameters and arguments and hand
the data to :class:`_CoupledNMFFitting`: blocks are checked and shifted
(:mod:`.nonnegative_blocks`), block weights and groups resolved, and one in-memory
(:class:`~.cnmf_solvers.CoupledProblem`) or streamed (:class:`~.out_of_core.StreamedProblem`)
problem solved from a random start; the results become the fitted attributes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..._utils import distributed as dist_utils
from ..._utils.progress import progress_bar
from . import cnmf_solvers as solvers
from . import nonnegative_blocks
from .activations import CollectedBlocks, collect_blocks
from .out_of_core import ActivationStore, OutOfCore, StreamedProblem, plan_chunk_rows

__all__ = ["_CoupledNMFFitting", "Matrix", "matrix_lists"]

Matrix = Union[Tensor, np.ndarray]


def matrix_lists(
    pixel_blocks: Optional[Sequence[Matrix]], activation_blocks: Optional[Sequence[Matrix]]
) -> Tuple[List[Matrix], List[Matrix]]:
    """``pixel_blocks`` and ``activation_blocks`` as lists (None: empty); one matrix is refused."""
    for argument, value in (("pixel_blocks", pixel_blocks), ("activation_blocks", activation_blocks)):
        if isinstance(value, (Tensor, np.ndarray)):
            raise TypeError(f"{argument} must be a list of matrices, got one {type(value).__name__}")
    return list(pixel_blocks or ()), list(activation_blocks or ())


class _CoupledNMFFitting:
    """Blocks in, fitted factors out (the parameters are the estimator's)."""

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
        extrema = [nonnegative_blocks.row_extrema(x) for x in blocks]
        shifts = nonnegative_blocks.block_shifts(
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
        return [nonnegative_blocks.apply_shift(x, s) for x, s in zip(blocks, shifts)]

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

    @contextlib.contextmanager
    def _monitor(self, show_progress: bool) -> Iterator[Callable[[int, float], None]]:
        """The solver's per-iteration callback: a progress bar over ``max_iter`` iterations with
        the objective in its postfix (:func:`progress_bar`: on a terminal only), and, with
        ``verbose = k > 0``, the objective printed every ``k`` iterations (as scikit-learn's NMF
        prints its error). Closes the bar and prints the last iteration on exit."""
        first = dist_utils.get_rank() == 0  # one report for a sharded fit
        every = int(self.verbose) if first else 0
        name = type(self).__name__
        show = bool(show_progress) and first
        bar = progress_bar(show=show, total=int(self.max_iter), desc=name, unit="iter")
        last: List[Tuple[int, float]] = []

        def say(iteration: int, loss: float) -> None:
            print(f"{name}: iteration {iteration}, objective {loss:.6g}", flush=True)

        def report(iteration: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
            last[:] = [(iteration, loss)]
            if every and iteration % every == 0:
                say(iteration, loss)

        try:
            yield report
        finally:
            bar.close()
            if every and last and last[0][0] % every:
                say(*last[0])

    def _fit_store(
        self, store: ActivationStore, groups: Any, device: torch.device, show_progress: bool = True
    ) -> Any:
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
        shifts = nonnegative_blocks.block_shifts(
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
        settings = self.out_of_core or OutOfCore()
        chunk_rows = plan_chunk_rows(
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
            StreamedProblem, store, chunk_rows, shift, placeholders, buffers=buffers
        )
        return self._fit_problem(
            new_problem, lambdas, store.n_pixel_blocks, names, groups, device, show_progress
        )

    def _fit_blocks(self, pixel_blocks, activation_blocks, groups, device, show_progress: bool = True) -> Any:
        n_pixel = len(pixel_blocks)
        names = [f"pixels[{i}]" for i in range(n_pixel)] + list(self.layer_names_)
        blocks = self._prepare_blocks(pixel_blocks, activation_blocks, names, device, fitting=True)
        lambdas = [self.lambda_p] * n_pixel + [self.lambda_o] * len(activation_blocks)

        new_problem = functools.partial(solvers.CoupledProblem, blocks)
        return self._fit_problem(new_problem, lambdas, n_pixel, names, groups, device, show_progress)

    def _fit_problem(self, new_problem, lambdas, n_pixel, names, groups, device, show_progress=True) -> Any:
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
        with self._monitor(show_progress) as report:
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
                callback=report,
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
