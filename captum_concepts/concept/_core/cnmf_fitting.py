"""The fitting machinery of :class:`~captum_concepts.concept.CoupledNMFConcepts` (private).

Saini & Papalexakis, §3.2, Equations 3.1 and 3.2. The estimator's public entries (``fit``,
``fit_matrices``, ``fit_store``, ``transform``) check their parameters and arguments and hand
the data to :class:`_CoupledNMFFitting`: blocks are checked and shifted
(:mod:`.nonnegative_blocks`), block weights and groups resolved, and one in-memory
(:class:`~.cnmf_solvers.CoupledProblem`) or streamed (:class:`~.out_of_core.StreamedProblem`)
problem solved from a random start, into a :class:`FitResult` that the estimator assigns to its
fitted attributes in one place. The blocks themselves come from one pass over the inputs with a
block specification resolved once per fit (:func:`~.activations.resolve_blocks`).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..._utils import distributed as dist_utils
from ..._utils.progress import progress_bar
from . import cnmf_solvers as solvers
from . import nonnegative_blocks
from .activations import CollectedBlocks
from .out_of_core import ActivationStore, OutOfCore, StreamedProblem, plan_chunk_rows

__all__ = ["_CoupledNMFFitting", "FitResult", "Matrix", "is_matrix_pair", "matrix_lists"]

Matrix = Union[Tensor, np.ndarray]


def matrix_lists(
    pixel_blocks: Optional[Sequence[Matrix]], activation_blocks: Optional[Sequence[Matrix]]
) -> Tuple[List[Matrix], List[Matrix]]:
    """``pixel_blocks`` and ``activation_blocks`` as lists (None: empty); one matrix is refused."""
    for argument, value in (("pixel_blocks", pixel_blocks), ("activation_blocks", activation_blocks)):
        if isinstance(value, (Tensor, np.ndarray)):
            raise TypeError(f"{argument} must be a list of matrices, got one {type(value).__name__}")
    return list(pixel_blocks or ()), list(activation_blocks or ())


def is_matrix_pair(value: Any) -> bool:
    """The deprecated ``transform((pixel_blocks, activation_blocks))`` argument: a pair of lists."""
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (list, tuple)) for v in value)


@dataclass
class FitResult:
    """What one fit found, assigned to the estimator's fitted attributes in one place: the blocks
    (``n_pixel_blocks`` pixel blocks, then the layers described by ``layer_names`` and
    ``layer_shapes``), their shifts, weights and offsets, and the solver's factors."""

    n_pixel_blocks: int
    input_shape: Optional[Tuple[int, ...]]
    layer_names: List[str]
    layer_shapes: List[Tuple[int, ...]]
    shifts: List[Optional[Tensor]] = field(default_factory=list)
    block_weights: List[float] = field(default_factory=list)
    offsets: List[int] = field(default_factory=list)
    solution: Optional[solvers.SolverResult] = None

    @classmethod
    def of_blocks(cls, n_pixel: int, rows: Sequence[int], layout: Any) -> FitResult:
        """Blocks of ``rows`` rows described by ``layout`` (a :class:`CollectedBlocks` or an
        :class:`ActivationStore`); activation blocks without names are ``activation_blocks[j]``,
        of shape ``(a_j,)``."""
        names = list(layout.layer_names) or [f"activation_blocks[{j}]" for j in range(len(rows) - n_pixel)]
        shapes = list(layout.layer_shapes) or [(int(r),) for r in rows[n_pixel:]]
        return cls(n_pixel, layout.input_shape, names, shapes)

    @property
    def block_names(self) -> List[str]:
        return [f"pixels[{i}]" for i in range(self.n_pixel_blocks)] + self.layer_names


class _CoupledNMFFitting:
    """Blocks in, a :class:`FitResult` out (the parameters are the estimator's; it writes nothing)."""

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

    def _as_blocks(
        self, pixel_blocks: Sequence[Matrix], activation_blocks: Sequence[Matrix], device: torch.device
    ) -> List[Tensor]:
        """The blocks as ``(rows, N)`` tensors on ``device`` in ``dtype``, pixel blocks first."""
        blocks = [self._as_block(x, f"pixel_blocks[{i}]", device) for i, x in enumerate(pixel_blocks)]
        blocks += [
            self._as_block(x, f"activation_blocks[{j}]", device) for j, x in enumerate(activation_blocks)
        ]
        if not blocks:
            raise ValueError("no data: give at least one pixel or activation block")
        return blocks

    def _shifted(
        self, blocks: List[Tensor], names: List[str], n_pixel: int, fitting: bool
    ) -> Tuple[List[Tensor], List[Optional[Tensor]]]:
        """The blocks checked, and shifted (``shift``, the fitted ``shift_`` when not ``fitting``),
        with their shifts; negatives raise unless ``shift="min"``."""
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
            n_pixel,
            [lo for lo, _ in extrema],
            [hi for _, hi in extrema],
            self.shift,
            fitted=None if fitting else self.shift_,
            reduce_min=self._reduce_min,
        )
        return [nonnegative_blocks.apply_shift(x, s) for x, s in zip(blocks, shifts)], shifts

    def _block_weights(self, n: int, moments: Tensor) -> List[float]:
        """``w`` per block (their count was checked against ``block_weights`` with the parameters)."""
        if self.block_weights is None:
            return [1.0] * n
        if isinstance(self.block_weights, str):  # "balanced" (the constraint table allows no other)
            energy = moments[:, 1].clamp_min(1e-30)
            w = energy.sum() / (n * energy)
            return [float(v) for v in w]
        return [float(v) for v in self.block_weights]

    def _group_index(self, groups: Any, device: torch.device) -> Tuple[Optional[Tensor], int]:
        """Group ids in ``[0, n_groups)`` and ``n_groups`` (their shape was checked with the parameters)."""
        if groups is None:
            return None, 0
        values = groups.detach().cpu().numpy() if isinstance(groups, Tensor) else np.asarray(groups)
        if self.distributed:
            known = np.unique(np.concatenate(dist_utils.all_gather_objects(np.unique(values))))
            inverse = np.searchsorted(known, values)
            return torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=device), len(known)
        _, inverse = np.unique(values, return_inverse=True)
        return torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=device), int(inverse.max()) + 1

    def _reduce_min(self, t: Tensor) -> Tensor:
        return dist_utils.all_reduce_min(t) if self.distributed else t

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
    ) -> FitResult:
        if store.n_examples == 0:
            raise ValueError("store holds no examples; append at least one batch before fitting")
        dist_utils.declare(block_rows=list(store.block_rows))
        n_pixel = store.n_pixel_blocks
        result = FitResult.of_blocks(n_pixel, store.block_rows, store)
        names = result.block_names
        overflow = self._reduce_min(-torch.tensor(store.overflow, dtype=torch.int32)).neg()
        if bool(overflow.any()):
            name = names[int(torch.nonzero(overflow)[0])]
            raise ValueError(
                f"{name} holds values beyond +-65504, which overflow float16 storage (they would be "
                "stored as inf): use OutOfCore(storage_dtype=torch.float32) or rescale the data"
            )
        offsets = np.cumsum([0] + store.block_rows)
        bounds = list(zip(offsets[:-1], offsets[1:]))
        result.shifts = nonnegative_blocks.block_shifts(
            names,
            n_pixel,
            [store.row_min[a:c] for a, c in bounds],
            [store.row_max[a:c] for a, c in bounds],
            self.shift,
            reduce_min=self._reduce_min,
        )
        shift = None
        if any(s is not None for s in result.shifts):  # then shift="min": a zero shift for the others
            parts = [
                nonnegative_blocks.read_shift(s, self.shift, c - a)
                for (a, c), s in zip(bounds, result.shifts)
            ]
            shift = torch.cat(parts).to(device=device, dtype=self.dtype)
        settings = self.out_of_core or OutOfCore()
        chunk_rows = plan_chunk_rows(
            settings.budget_bytes(),
            store.n_examples,
            store.n_features,
            int(self.n_concepts),
            self.dtype,
            store.storage_dtype,
        )
        placeholders = [torch.empty(r, 0, dtype=self.dtype, device=device) for r in store.block_rows]
        buffers: dict = {}  # chunk buffers shared by the problems built below

        new_problem = functools.partial(
            StreamedProblem, store, chunk_rows, shift, placeholders, buffers=buffers
        )
        return self._solve(result, new_problem, groups, device, show_progress)

    def _fit_blocks(
        self, collected: CollectedBlocks, groups: Any, device: torch.device, show_progress: bool = True
    ) -> FitResult:
        n_pixel = len(collected.pixel_blocks)
        blocks = self._as_blocks(collected.pixel_blocks, collected.activation_blocks, device)
        result = FitResult.of_blocks(n_pixel, [x.shape[0] for x in blocks], collected)
        blocks, result.shifts = self._shifted(blocks, result.block_names, n_pixel, fitting=True)
        return self._solve(
            result, functools.partial(solvers.CoupledProblem, blocks), groups, device, show_progress
        )

    def _solve(
        self, result: FitResult, new_problem: Callable, groups: Any, device: torch.device, show_progress: bool
    ) -> FitResult:
        """Random start and solve; ``result`` gets the block weights, offsets and solution.

        ``new_problem(weights, lambdas, lambda_f, group_index, n_groups, group_sparsity)`` builds
        the in-memory or streamed problem; only the block weights and groups vary here.
        """
        n_blocks, n_pixel = len(result.block_names), result.n_pixel_blocks
        lambdas = [self.lambda_p] * n_pixel + [self.lambda_o] * (n_blocks - n_pixel)

        def make_problem(weights, group_index=None, n_groups=0):
            return new_problem(
                weights, lambdas, float(self.lambda_f), group_index, n_groups, float(self.group_sparsity)
            )

        problem = make_problem([1.0] * n_blocks)
        n_local = problem.n_examples
        group_index, n_groups = self._group_index(groups, device)
        # sharded: sums over examples are all-reduced, F's start is the global one's columns
        reduce = dist_utils.all_reduce_sum if self.distributed else (lambda t: t)
        offset, n = dist_utils.shard_offset(n_local) if self.distributed else (0, n_local)
        moments = problem.moments(reduce)
        result.block_weights = self._block_weights(n_blocks, moments)
        problem = make_problem(result.block_weights, group_index, n_groups)
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
            result.solution = solvers.solve(
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
        result.offsets = problem.offsets
        return result
