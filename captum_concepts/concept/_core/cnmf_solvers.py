"""Solvers for coupled non-negative matrix factorisation (private).

The problem (Saini & Papalexakis, Equation 3.1), written for ``B`` blocks ``X_b`` of shape ``(r_b, N)``
(pixel channels first, then layers) that share the example factor ``F``
``(d, N)``::

    J = sum_b w_b ||X_b - W_b F||^2 + sum_b lambda_b ||W_b||^2 + lambda_F ||F||^2
        + beta * sum_{k, g} ||F[k, I_g]||_2

``w_b`` are per-block weights (all 1 for the paper's objective), ``lambda_b`` is
``lambda_P`` for pixel blocks and ``lambda_O`` for activation blocks, and the last
term is a group lasso over user-given groups of examples ``I_g``.

Layout: the block factors are kept *transposed and stacked* as one tensor
``Wt`` of shape ``(d, R)`` with ``R = sum_b r_b`` (block ``b`` is the column slice
``Wt[:, off_b:off_b + r_b]``). The data blocks themselves are never stacked or
copied: every product with the data runs block by block. With this layout both
sub-problems have the same form -- rows of ``H`` minimising
``<B, H H^T> - 2 <A, H> + reg * ||H||^2`` -- so one multiplicative update and one
HALS sweep serve both ``F`` and ``Wt``.

Sufficient statistics. Only three quantities sum over examples:
``S = F X^T`` (per block, stacked as ``St`` ``(d, R)``), ``G = F F^T`` ``(d, d)``
and, with group sparsity, the per-group squared row norms of ``F``; plus the data
moments once at the start. They are all computed in :func:`example_statistics` /
:func:`data_moments` and then passed through a ``reduce`` callable (identity
here). Sharding the examples over ``torch.distributed`` ranks only needs
``reduce = all_reduce(SUM)``: the ``F`` update is local to each example, the
``Wt`` update and the objective only read the reduced statistics.

The objective comes from the statistics when they can carry it: with
``B = Wt diag(w) Wt^T``
``sum_b w_b ||X_b - W_b F||^2 = sum_b w_b ||X_b||^2 - 2 <Wt diag(w), St> + <B, G>``
(trace identities), which costs ``O(d R + d^2)`` per iteration, summed in float64.
Near a good fit the three terms cancel: each is about ``||X||^2`` and carries
the rounding of the float32 statistics, ``~eps ||X||^2``, while the difference
is far smaller (it even comes out negative). Whenever the trace value falls
below ``1e5 eps`` times the data energy ``sum_b w_b ||X_b||^2``, the data term
is recomputed from the residual ``X_b - W_b F`` in chunks of examples (at least
float32, summed in float64; one more pass over the data), which is never
negative and accurate to ``~eps ||X|| ||X - W F||``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

from ..._utils.warn import warn_user

__all__ = [
    "EPS",
    "eps_for",
    "residual_norms",
    "CoupledProblem",
    "Statistics",
    "SolverResult",
    "data_moments",
    "example_statistics",
    "weighted_projection",
    "weighted_gram",
    "objective",
    "mu_update",
    "hals_update",
    "random_init",
    "solve",
    "solve_examples",
]

EPS = 1e-10  # added to multiplicative-update denominators; absolute, data in [0, 1]-ish scale


def eps_for(dtype: torch.dtype) -> float:
    """``EPS``, raised to the smallest normal number of ``dtype`` (float16: ``6.1e-5``).

    In float16 ``1e-10`` rounds to 0, and a zero row of the data then gives ``0 / 0``.
    """
    return max(EPS, float(torch.finfo(dtype).tiny))
Reduce = Callable[[Tensor], Tensor]
# below this many eps of the data energy the trace identities have lost too many digits
_TRACE_DIGITS = 1e5
_RESIDUAL_CHUNK = 2**22  # elements of one residual chunk (16 MiB in float32)


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass
class CoupledProblem:
    """The data and the fixed hyper-parameters of one coupled factorisation.

    Attributes:
        blocks: the ``B`` data blocks, each ``(r_b, N)``, non-negative, any strides
            (transposed views are fine, nothing is copied).
        block_weights: ``w_b`` per block.
        block_lambdas: ``lambda_b`` per block (L2 penalty on ``W_b``).
        lambda_f: L2 penalty on ``F``.
        group_index: ``(N,)`` long tensor of group ids in ``[0, n_groups)`` or None.
        n_groups: number of groups.
        group_sparsity: ``beta`` of the group lasso on ``F``.
    """

    blocks: Sequence[Tensor]
    block_weights: Sequence[float]
    block_lambdas: Sequence[float]
    lambda_f: float = 0.0
    group_index: Optional[Tensor] = None
    n_groups: int = 0
    group_sparsity: float = 0.0
    offsets: List[int] = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = [0]
        for x in self.blocks:
            self.offsets.append(self.offsets[-1] + x.shape[0])
        ref = self.blocks[0]
        self.row_weight = torch.cat(
            [
                torch.full((x.shape[0],), float(w), dtype=ref.dtype, device=ref.device)
                for x, w in zip(self.blocks, self.block_weights)
            ]
        )
        self.row_lambda = torch.cat(
            [
                torch.full((x.shape[0],), float(lam), dtype=ref.dtype, device=ref.device)
                for x, lam in zip(self.blocks, self.block_lambdas)
            ]
        )
        # per-row penalty relative to the row's weight: the Wt update divides by w_r
        self.row_reg = self.row_lambda / self.row_weight
        if not bool((self.row_reg > 0).any()):
            self.row_reg = 0.0

    @property
    def n_rows(self) -> int:
        return self.offsets[-1]

    @property
    def n_examples(self) -> int:
        return self.blocks[0].shape[1]

    @property
    def uses_groups(self) -> bool:
        return self.group_index is not None and self.group_sparsity > 0

    # The solver's only passes over the data; a subclass may stream them
    # (out_of_core.StreamedProblem reads the blocks from disk in chunks of examples).
    def moments(self, reduce: Reduce = _identity) -> Tensor:
        return data_moments(self, reduce)

    def project(self, Wt: Tensor) -> Tensor:
        return weighted_projection(self, Wt)

    def statistics(self, F: Tensor, reduce: Reduce = _identity) -> Statistics:
        return example_statistics(self, F, reduce)

    def residuals(self, Wt: Tensor, F: Tensor, reduce: Reduce = _identity) -> Tensor:
        return residual_norms(self, Wt, F, reduce)

    def block_slices(self):
        return zip(self.blocks, self.offsets[:-1], self.offsets[1:], self.block_weights)


@dataclass
class Statistics:
    """Quantities summed over examples: ``St = F X^T`` ``(d, R)``, ``G = F F^T``,
    per-group squared row norms of ``F`` ``(d, n_groups)`` (or None)."""

    St: Tensor
    G: Tensor
    group_sq: Optional[Tensor] = None

    def rescale(self, s: Tensor) -> None:
        """Update in place for ``F <- diag(s) F`` (no pass over the data)."""
        self.St.mul_(s[:, None])
        self.G.mul_(s[:, None] * s[None, :])
        if self.group_sq is not None:
            self.group_sq.mul_((s * s)[:, None])


@dataclass
class SolverResult:
    Wt: Tensor
    F: Tensor
    loss_history: List[float]
    n_iter: int
    converged: bool


def data_moments(problem: CoupledProblem, reduce: Reduce = _identity) -> Tensor:
    """``(B, 2)`` float64: per block ``[sum(X_b), ||X_b||^2]`` (sums over examples, reduced)."""
    # per-row float32 reductions (fast, no copy of the data), totals in float64
    rows = [
        torch.stack([x.sum(dim=1).double().sum(), torch.linalg.vector_norm(x, dim=1).double().square().sum()])
        for x in problem.blocks
    ]
    return reduce(torch.stack(rows))


def _group_sq(F: Tensor, group_index: Tensor, n_groups: int) -> Tensor:
    return torch.zeros(F.shape[0], n_groups, dtype=F.dtype, device=F.device).index_add_(1, group_index, F * F)


def example_statistics(problem: CoupledProblem, F: Tensor, reduce: Reduce = _identity) -> Statistics:
    """The one place that sums over examples: ``St = F X^T``, ``G = F F^T`` (+ group norms).

    This is the seam for example-sharded fitting: ``reduce`` receives each
    statistic computed on the local examples and must return its global sum.
    """
    St = torch.empty(F.shape[0], problem.n_rows, dtype=F.dtype, device=F.device)
    for x, start, stop, _ in problem.block_slices():
        St[:, start:stop] = torch.mm(F, x.t())
    group_sq = _group_sq(F, problem.group_index, problem.n_groups) if problem.uses_groups else None
    return Statistics(
        St=reduce(St), G=reduce(F @ F.t()), group_sq=None if group_sq is None else reduce(group_sq)
    )


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every narrower dtype is accumulated in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def residual_norms(problem: CoupledProblem, Wt: Tensor, F: Tensor, reduce: Reduce = _identity) -> Tensor:
    """``(B,)`` float64: ``||X_b - W_b F||^2`` per block from the residual itself (reduced).

    Runs in chunks of examples (at most ``2**22`` residual entries at a time), in
    :func:`accumulation_dtype`, squares summed in float64.
    """
    acc = accumulation_dtype(F.dtype)
    Wa, Fa = Wt.to(acc), F.to(acc)
    out = torch.zeros(len(problem.blocks), dtype=torch.float64, device=F.device)
    n = F.shape[1]
    for b, (x, start, stop, _) in enumerate(problem.block_slices()):
        step = max(1, _RESIDUAL_CHUNK // max(stop - start, 1))
        for a in range(0, n, step):
            r = torch.mm(Wa[:, start:stop].t(), Fa[:, a : a + step]).sub_(x[:, a : a + step].to(acc))
            out[b] += r.square_().sum(dtype=torch.float64)
    return reduce(out)


def weighted_projection(
    problem: CoupledProblem, Wt: Tensor, blocks: Optional[Sequence[Tensor]] = None
) -> Tensor:
    """``A = sum_b w_b W_b^T X_b`` ``(d, N)`` -- local to each example, no reduction."""
    blocks = problem.blocks if blocks is None else blocks
    A = None
    for x, (_, start, stop, w) in zip(blocks, problem.block_slices()):
        if A is None:
            A = torch.mm(Wt[:, start:stop], x)
            if w != 1.0:
                A.mul_(w)
        else:
            A.addmm_(Wt[:, start:stop], x, alpha=w)
    return A


def weighted_gram(problem: CoupledProblem, Wt: Tensor) -> Tensor:
    """``B = Wt diag(w) Wt^T`` ``(d, d)``."""
    if _unweighted(problem):
        return Wt @ Wt.t()
    return (Wt * problem.row_weight) @ Wt.t()


def _unweighted(problem: CoupledProblem) -> bool:
    return all(float(w) == 1.0 for w in problem.block_weights)


def objective(
    problem: CoupledProblem,
    moments: Tensor,
    Wt: Tensor,
    stats: Statistics,
    B: Tensor,
    F: Optional[Tensor] = None,
    reduce: Reduce = _identity,
) -> float:
    """``J`` from the statistics (trace identities, float64), see the module docstring.

    With ``F`` given, the data term is recomputed from the residual when the trace
    value has cancelled below ``1e5 eps`` of the data energy (or is negative); every
    rank takes the same decision (it reads reduced quantities only).
    """
    w = torch.as_tensor(list(problem.block_weights), dtype=torch.float64, device=moments.device)
    f64 = torch.float64
    Gd = stats.G.double()
    energy = (w * moments[:, 1]).sum().to(Wt.device)
    # float32 element products, float64 sums: no float64 copies of the (d, R) factors
    cross = Wt * stats.St
    if not _unweighted(problem):
        cross.mul_(problem.row_weight)
    value = energy - 2.0 * cross.sum(dtype=f64) + (B.double() * Gd).sum()
    limit = min(1.0, _TRACE_DIGITS * float(torch.finfo(stats.St.dtype).eps))
    if F is not None and float(value) < limit * float(energy):
        value = (w.to(Wt.device) * problem.residuals(Wt, F, reduce).to(Wt.device)).sum()
    if torch.is_tensor(problem.row_reg):
        value = value + (Wt * Wt).mul_(problem.row_lambda).sum(dtype=f64)
    if problem.lambda_f > 0:
        value = value + problem.lambda_f * torch.diagonal(Gd).sum()
    if stats.group_sq is not None:
        value = value + problem.group_sparsity * stats.group_sq.double().clamp_min(0).sqrt().sum()
    return float(value)


def rounding_floor(moments: Tensor, problem: CoupledProblem, dtype: torch.dtype) -> float:
    """The objective change that rounding alone explains: ``16 eps^2`` of the data energy."""
    w = torch.as_tensor(list(problem.block_weights), dtype=torch.float64, device=moments.device)
    eps = float(torch.finfo(accumulation_dtype(dtype)).eps)
    return 16.0 * eps * eps * float((w * moments[:, 1]).sum())


def mu_update(
    H: Tensor,
    A: Tensor,
    B: Tensor,
    reg,
    group_term: Optional[Tensor] = None,
) -> None:
    """One multiplicative update of all rows of ``H`` in place.

    ``H <- H * A / (B H + reg * H + group_term + eps)`` (Lee & Seung; Saini & Papalexakis, Equation 3.2).
    ``reg`` is a float or a ``(M,)`` tensor (per column of ``H``); ``group_term``
    the group-lasso gradient ``(beta / 2) H / ||H[k, I_g]||`` or None.
    """
    den = B @ H
    if torch.is_tensor(reg):
        den.addcmul_(H, reg)
    elif reg > 0:
        den.add_(H, alpha=float(reg))
    if group_term is not None:
        den.add_(group_term)
    den.add_(eps_for(den.dtype))
    H.mul_(A.div(den))


def hals_update(
    H: Tensor,
    A: Tensor,
    B: Tensor,
    reg,
    max_sweeps: int = 1,
    rel_stop: float = 0.1,
    group_index: Optional[Tensor] = None,
    n_groups: int = 0,
    group_coef: float = 0.0,
    reduce: Reduce = _identity,
) -> int:
    """HALS: exact block coordinate descent over the ``d`` rows of ``H``, in place.

    Row ``k`` minimises ``B_kk ||h||^2 - 2 c^T h + reg ||h||^2`` (+ group lasso)
    over ``h >= 0`` with ``c = A_k - B_k H + B_kk H_k``: the closed form is
    ``h = max(0, c) / (B_kk + reg)``, followed by the non-negative group
    soft-threshold ``h_g *= max(0, 1 - (beta/2) / ||(B_kk + reg) h_g||)`` when a
    group lasso is active. Several sweeps re-use the same ``A`` and ``B`` (the
    expensive products with the data): "accelerated HALS" (Gillis & Glineur,
    2012). Sweeps stop once a sweep changes ``H`` by less than ``rel_stop``
    times the change of the first sweep. Returns the number of sweeps done.
    """
    d = H.shape[0]
    diag = B.diagonal().tolist()
    # c_k = A_k - (B_k - B_kk e_k) H: one matrix-vector product per row
    off_diag = B.clone()
    off_diag.diagonal().zero_()
    if torch.is_tensor(reg):
        inv_den = (B.diagonal()[:, None] + reg[None, :]).clamp_(min=eps_for(B.dtype)).reciprocal_()
        scale = list(inv_den.unbind(0))
    else:
        # a dead component (its partner row is all zero, den = 0) stays dead
        scale = [1.0 / (diag[k] + float(reg)) if diag[k] + float(reg) > 0 else 0.0 for k in range(d)]
    groups_on = group_index is not None and group_coef > 0 and not torch.is_tensor(reg)
    # row views made once: the loop is latency-bound on small d
    H_t, rows, A_rows, B_rows = H.t(), H.unbind(0), A.unbind(0), off_diag.unbind(0)
    buf = torch.empty_like(rows[0])
    first = None
    sweeps = 0
    for _ in range(max_sweeps):
        before = H.clone() if max_sweeps > 1 else None
        for k in range(d):
            torch.addmv(A_rows[k], H_t, B_rows[k], alpha=-1.0, out=buf)
            torch.clamp(buf, min=0, out=rows[k])
            rows[k].mul_(scale[k])
            if groups_on and scale[k] != 0.0:
                c = rows[k]
                sq = reduce(
                    torch.zeros(n_groups, dtype=c.dtype, device=c.device).index_add_(0, group_index, c * c)
                )
                norm = sq.sqrt().clamp_min(eps_for(sq.dtype))
                shrink = (1.0 - (0.5 * group_coef * scale[k]) / norm).clamp_(min=0)
                c.mul_(shrink[group_index])
        sweeps += 1
        if before is None:
            break
        # reduced: sharded ranks must agree on the number of sweeps
        change = float(reduce(torch.dist(H, before).square().reshape(1)))
        if first is None:
            first = change
        elif change <= rel_stop * rel_stop * first:
            break
    return sweeps


def random_init(
    n_components: int,
    n_rows: int,
    n_examples: int,
    mean: float,
    random_state: int,
    dtype: torch.dtype,
    device: torch.device,
):
    """``Wt (d, R)`` and ``F (d, N)`` with entries ``sqrt(mean / d) * |z|``, ``z ~ N(0, 1)``.

    Drawn in float64 on the CPU from a seeded generator, so the start is
    identical on every device and for every dtype.
    """
    gen = torch.Generator().manual_seed(int(random_state))
    scale = math.sqrt(max(mean, 1e-12) / n_components)
    Wt = torch.randn(n_components, n_rows, generator=gen, dtype=torch.float64).abs_().mul_(scale)
    F = torch.randn(n_components, n_examples, generator=gen, dtype=torch.float64).abs_().mul_(scale)
    return Wt.to(device=device, dtype=dtype), F.to(device=device, dtype=dtype)


def _normalize_rows(Wt: Tensor, F: Tensor, stats: Optional[Statistics] = None) -> Tensor:
    """Unit-norm rows of ``Wt`` (columns of the stacked ``[P; O]``); ``F``'s rows absorb the scale."""
    norms = Wt.norm(dim=1)
    alive = norms > 0
    s = torch.where(alive, norms, torch.ones_like(norms))
    Wt.div_(s[:, None])
    F.mul_(s[:, None])
    if stats is not None:
        stats.rescale(s)
    return s


WARMUP = 5  # plain HALS iterations before extrapolating: far from a minimum it only overshoots


class _Extrapolation:
    """Extrapolation with restarts for HALS (Ang & Gillis, Neural Computation 2019, "HER").

    After ``F`` is solved, the next ``Wt`` update sees ``F^ = max(0, F_n + beta (F_n - F_{n-1}))``;
    after ``Wt`` is solved, the next ``F`` update starts from ``Wt^`` extrapolated the same way.
    The objective of the pair ``(Wt_n, F^)`` comes free from the statistics; when it goes up the
    ``Wt`` extrapolation is dropped and ``beta`` shrinks (restart), otherwise ``beta`` grows
    slowly. The best pair seen is what the solver returns, so the reported objective never
    increases. Costs ``O(d (N + R))`` per iteration and no extra pass over the data.
    """

    def __init__(self, Wt: Tensor, F: Tensor, loss: float) -> None:
        self.beta, self.beta_max = 0.25, 1.0
        self.eta, self.gamma, self.gamma_max = 1.5, 1.05, 1.01
        self.W_last, self.F_last = Wt.clone(), F.clone()
        self.best, self.best_W, self.best_F = loss, Wt.clone(), F.clone()
        self.prev = loss

    def extrapolate_f(self, F: Tensor) -> None:
        """``F`` holds the new ``F_n``; turn it into ``F^`` in place."""
        F_n = F.clone()
        F.sub_(self.F_last).mul_(self.beta).add_(F_n).clamp_(min=0)
        self.F_last = F_n

    def rescale(self, s: Tensor) -> None:
        self.W_last.div_(s[:, None])
        self.F_last.mul_(s[:, None])

    def step(self, Wt: Tensor, F: Tensor, loss: float) -> bool:
        """``(Wt, F)`` is the evaluated pair; extrapolate ``Wt`` in place. True on a restart."""
        if loss < self.best:
            self.best = loss
            self.best_W.copy_(Wt)
            self.best_F.copy_(F)
        W_n = Wt.clone()
        restart = loss > self.prev
        if restart:
            self.beta_max = self.beta
            self.beta /= self.eta
        else:
            Wt.sub_(self.W_last).mul_(self.beta).add_(W_n).clamp_(min=0)
            self.beta = min(self.beta_max, self.gamma * self.beta)
            self.beta_max = min(1.0, self.gamma_max * self.beta_max)
        self.W_last = W_n
        self.prev = loss
        return restart


def _update_f(problem, solver, F, A, B, reduce, max_sweeps):
    if solver == "mu":
        group_term = None
        if problem.uses_groups:
            sq = reduce(_group_sq(F, problem.group_index, problem.n_groups))  # (d, n_groups)
            norms = sq.sqrt_()[:, problem.group_index].add_(eps_for(F.dtype))  # per example (d, N)
            group_term = F.div(norms).mul_(0.5 * problem.group_sparsity)
        mu_update(F, A, B, problem.lambda_f, group_term)
    else:
        hals_update(
            F,
            A,
            B,
            problem.lambda_f,
            max_sweeps=max_sweeps,
            group_index=problem.group_index if problem.uses_groups else None,
            n_groups=problem.n_groups,
            group_coef=problem.group_sparsity,
            reduce=reduce,
        )


NORMALIZE_WITH_PENALTIES = (
    "normalize_columns=True with L2 penalties (lambda_p, lambda_o or lambda_f > 0): rescaling the "
    "columns to unit norm after each iteration leaves the data term unchanged but changes the "
    "penalties, so the stated objective is not minimised and loss_history_ can rise; pass "
    "normalize_columns=False to minimise it, or drop the penalties (unit norms replace them)"
)


def solve(
    problem: CoupledProblem,
    Wt: Tensor,
    F: Tensor,
    solver: str = "mu",
    max_iter: int = 500,
    tol: float = 1e-4,
    normalize: bool = True,
    reduce: Reduce = _identity,
    max_sweeps: int = 4,
    moments: Optional[Tensor] = None,
    extrapolate: bool = True,
    callback: Optional[Callable[[int, float], None]] = None,
) -> SolverResult:
    """Alternate ``F`` and ``Wt`` updates until the relative change of ``J`` is below ``tol``.

    One iteration: ``A = sum_b w_b W_b^T X_b`` -> update ``F`` -> statistics
    ``St, G`` (reduced) -> update ``Wt`` -> optional unit-norm rows of ``Wt``
    (``F`` and the statistics rescaled, the product unchanged) -> ``J`` from the
    statistics. Two passes over the data per iteration, as plain NMF.
    ``loss_history[0]`` is ``J`` at the start; ``Wt`` and ``F`` are updated in place.
    ``moments``: :func:`data_moments` if already computed (saves two passes).
    The stop rule also accepts a change below the rounding floor of the objective
    (:func:`rounding_floor`): an exact fit stops instead of chasing rounding noise.
    ``normalize`` with an L2 penalty warns: the rescaling changes the penalties
    (:data:`NORMALIZE_WITH_PENALTIES`).
    With ``solver="hals"`` and ``extrapolate`` (default) the iterates are extrapolated
    (:class:`_Extrapolation`); ``loss_history`` then holds the best objective so far and the
    best pair is returned.
    ``callback(iteration, loss)``, when given, is called after every iteration (1-based) with the
    value just appended to ``loss_history`` (progress bars, ``verbose`` printing).
    """
    if solver not in ("mu", "hals"):
        raise ValueError(f"solver must be 'mu' or 'hals', got {solver!r}")
    if normalize and (torch.is_tensor(problem.row_reg) or problem.lambda_f > 0):  # an L2 penalty
        warn_user(NORMALIZE_WITH_PENALTIES)
    if moments is None:
        moments = problem.moments(reduce)
    if normalize:
        _normalize_rows(Wt, F)
    stats = problem.statistics(F, reduce)
    B = weighted_gram(problem, Wt)
    history = [objective(problem, moments, Wt, stats, B, F, reduce)]
    floor = rounding_floor(moments, problem, Wt.dtype)
    extra = None
    converged = False
    for it in range(max_iter):
        if it == WARMUP and extrapolate and solver == "hals":
            extra = _Extrapolation(Wt, F, history[-1])
        A = problem.project(Wt)
        _update_f(problem, solver, F, A, B, reduce, max_sweeps)
        del A
        if extra is not None:
            extra.extrapolate_f(F)
        stats = problem.statistics(F, reduce)
        if solver == "mu":
            mu_update(Wt, stats.St, stats.G, problem.row_reg)
        else:
            hals_update(Wt, stats.St, stats.G, problem.row_reg, max_sweeps=max_sweeps)
        if normalize:
            s = _normalize_rows(Wt, F, stats)
            if extra is not None:
                extra.rescale(s)
        B = weighted_gram(problem, Wt)
        loss = objective(problem, moments, Wt, stats, B, F, reduce)
        prev = history[-1]
        if extra is not None:
            prev = extra.prev  # the last evaluated pair's objective
            restart = extra.step(Wt, F, loss)
            B = weighted_gram(problem, Wt)  # of the extrapolated Wt, for the next F update
            history.append(extra.best)
            if callback is not None:
                callback(it + 1, history[-1])
            if restart:
                continue
        else:
            history.append(loss)
            if callback is not None:
                callback(it + 1, history[-1])
        if abs(prev - loss) <= max(tol * abs(prev), floor):
            converged = True
            break
    if extra is not None:
        Wt.copy_(extra.best_W)
        F.copy_(extra.best_F)
    return SolverResult(Wt=Wt, F=F, loss_history=history, n_iter=len(history) - 1, converged=converged)


def solve_examples(
    problem: CoupledProblem,
    Wt: Tensor,
    blocks: Sequence[Tensor],
    max_iter: int = 500,
    tol: float = 1e-4,
) -> Tensor:
    """Non-negative least squares for a new ``F`` ``(d, M)`` with ``Wt`` fixed.

    Uses HALS whatever the fitting solver: with ``Wt`` fixed the problem is
    convex and HALS is exact coordinate descent on it. The group lasso is not
    applied (new examples have no group). ``A`` is computed once (one pass over
    the data); every iteration then costs ``O(d^2 M)``.
    """
    A = weighted_projection(problem, Wt, blocks)
    B = weighted_gram(problem, Wt)
    diag = B.diagonal() + problem.lambda_f
    F = A.clamp(min=0).div_(diag.clamp_min(eps_for(diag.dtype))[:, None])
    prev = None
    for _ in range(max_iter):
        hals_update(F, A, B, problem.lambda_f, max_sweeps=1)
        # J(F) up to a constant: <B + lambda_F I, F F^T> - 2 <A, F>
        FF = F @ F.t()
        cur = float(
            (B.double() * FF.double()).sum()
            + problem.lambda_f * FF.diagonal().double().sum()
            - 2.0 * (A.double() * F.double()).sum()
        )
        if prev is not None and abs(prev - cur) <= tol * max(abs(prev), 1e-30):
            break
        prev = cur
    return F
