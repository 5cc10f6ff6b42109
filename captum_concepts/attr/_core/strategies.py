"""How :class:`~captum_concepts.attr.EmbeddingAttribution` runs: one plan per source layer, one
named executor per strategy.

A :class:`Plan` is decided once per source layer and call (:func:`plan_sources`): the strategy,
why it was chosen, the chunk size and the layer's ``reshape_transform``. The executors take the
flat source tensors of the plans of one strategy:

- :func:`run_linear`: the linear case, one backward pass of ``mean_d z_d``;
- :func:`run_reverse` with ``"loop"`` / ``"batched"``: one sweep of vector-Jacobian products
  (one per embedding dimension, singly or vmapped in chunks) shared by every reverse source;
- :func:`run_forward_mode`: Jacobian-vector products
  (:func:`~captum_concepts.attr._core.forward_mode.forward_maps`).

A forward plan that meets an operation without a forward-mode rule under ``strategy="auto"``
is replaced by a new reverse plan (:meth:`Plan.fallback`); nothing is decided twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..._utils.layout import ReshapeTransform, apply_reshape
from ..._utils.progress import progress_bar
from .aggregators import Aggregator, aggregate, is_mean
from .costs import PassCosts
from .forward_mode import (
    ForwardSource,
    backward_hooks,
    forward_chunk,
    forward_maps,
    forward_passes,
    reverse_strategy,
    strategy_and_reason,
)

__all__ = ["Job", "Plan", "plan_sources", "run_forward_mode", "run_linear", "run_reverse"]

# Rough budget for the gradients of one chunk of embedding dimensions when
# internal_batch_size is None (the intermediate gradients of the head scale alike).
_CHUNK_BUDGET_BYTES = 512 * 2**20
_MAX_AUTO_CHUNK = 64

@dataclass(frozen=True)
class Plan:
    """How one source layer is computed.

    Attributes:
        strategy (str): ``"linear"`` (one backward pass of ``mean_d z_d``), ``"loop"``,
            ``"batched"`` (reverse mode) or ``"forward"`` (forward mode).
        reason (str): why it was chosen, in words.
        chunk (int or None): embedding dimensions per backward call (reverse mode; shared by
            every reverse source of the call) or tangents per forward pass (forward mode);
            None for ``"linear"``.
        transform (callable or None): the layer's ``reshape_transform``.
        passes (int or None): Jacobian-vector products forward mode would need.
        costs (PassCosts or None): the work of the first forward pass split at this layer, when
            it was counted (``strategy="auto"``).

    Example::

        from captum_concepts.attr import EmbeddingAttribution

        ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.relu")
        plan = ea.plan(data.x_test[:4])  # a Plan per source layer (a list for a list), nothing run
        print(plan.strategy, "-", plan.reason)
    """

    strategy: str
    reason: str
    chunk: Optional[int] = None
    transform: Optional[ReshapeTransform] = None
    passes: Optional[int] = None
    costs: Optional[PassCosts] = None

    def fallback(self, strategy: str, why: str, chunk: int) -> Plan:
        """A new reverse plan replacing this forward plan."""
        return replace(self, strategy=strategy, reason=f"{why}; planned: {self.reason}", chunk=chunk)


@dataclass(frozen=True)
class Job:
    """What every executor needs of the call: the method, the aggregators and the options."""

    method: str
    channel_aggregator: Aggregator
    embedding_aggregator: Aggregator
    return_per_dim: bool
    create_graph: bool
    show_progress: bool
    internal_batch_size: Optional[int]

    @property
    def linear(self) -> bool:
        """Mean over dimensions and channels, no per-dimension maps: one backward pass suffices."""
        return (
            not self.return_per_dim
            and is_mean(self.embedding_aggregator)
            and is_mean(self.channel_aggregator)
        )

    def finish(self, per_dim: torch.Tensor) -> torch.Tensor:
        """``(N, D, *S)`` per-dimension maps -> the result (aggregated over ``D`` unless
        ``return_per_dim``)."""
        return per_dim if self.return_per_dim else aggregate(per_dim, 1, self.embedding_aggregator)


# ---------------------------------------------------------------------- planning
def reverse_chunk(flat: Sequence[torch.Tensor], n_dims: int, internal_batch_size: Optional[int]) -> int:
    """Embedding dimensions per chunk of the reverse sweep over the sources ``flat``."""
    if internal_batch_size:
        return int(internal_batch_size)
    per_dim = sum(t.numel() * t.element_size() for t in flat) * 3
    return int(max(1, min(n_dims, _MAX_AUTO_CHUNK, _CHUNK_BUDGET_BYTES // max(per_dim, 1))))


def plan_sources(
    job: Job,
    strategy: str,
    n_dims: int,
    device: torch.device,
    groups: Sequence[Tuple[torch.Tensor, ...]],
    transforms: Sequence[Optional[ReshapeTransform]],
    training: bool,
    costs: Sequence[Optional[PassCosts]],
    model: Optional[torch.nn.Module] = None,
) -> List[Plan]:
    """One :class:`Plan` per source layer (``groups``: the tensors of each layer); ``model``'s
    backward hooks (:func:`~captum_concepts.attr._core.forward_mode.backward_hooks`) rule out
    forward mode."""
    if job.linear:
        why = "mean over dimensions and channels: one backward pass of mean_d z_d"
        return [Plan("linear", why, None, tf) for tf in transforms]
    hooks = backward_hooks(model) if model is not None and strategy in ("auto", "forward") else None
    decided = []
    for group, tf, cost in zip(groups, transforms, costs):
        with torch.no_grad():
            shapes = [t.shape if tf is None else tf(t.detach()).shape for t in group]
        passes = sum(forward_passes(s, job.method, job.channel_aggregator) for s in shapes)
        fchunk = min(forward_chunk(t, passes, job.internal_batch_size) for t in group)
        rchunk = 1 if reverse_strategy(strategy, device) == "loop" else None
        chosen, why = strategy_and_reason(
            strategy, n_dims, passes, device, job.create_graph, training, cost, fchunk, rchunk, hooks
        )
        decided.append((chosen, why, fchunk, tf, passes, cost))
    reverse = [t for (chosen, *_), group in zip(decided, groups) if chosen != "forward" for t in group]
    rchunk = reverse_chunk(reverse, n_dims, job.internal_batch_size)
    return [
        Plan(chosen, why, fchunk if chosen == "forward" else rchunk, tf, passes, cost)
        for chosen, why, fchunk, tf, passes, cost in decided
    ]


# ---------------------------------------------------------------------- executors
def _grad(
    out: torch.Tensor,
    inputs: List[torch.Tensor],
    grad_outputs: Optional[torch.Tensor],
    batched: bool,
    create_graph: bool,
) -> List[torch.Tensor]:
    grads = torch.autograd.grad(
        out,
        inputs,
        grad_outputs=grad_outputs,
        retain_graph=True,
        create_graph=create_graph,
        allow_unused=True,
        is_grads_batched=batched,
    )
    for g in grads:
        if g is None:
            raise ValueError(
                "the embedding does not depend on a source layer (or input): check that embedding_layer "
                "comes after every entry of layer in the forward pass"
            )
    return list(grads)


def _as_channels(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1) if t.dim() == 1 else t


def channel_maps(
    job: Job, g: torch.Tensor, act: torch.Tensor, scratch: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``rho_C(A_d)`` for a chunk: ``g`` (B, N, C, *S) gradients, ``act`` (N, C, *S) -> (B, N, *S).

    ``scratch`` (shape of ``act``, only with B = 1 and no graph) receives the temporaries.
    """
    g = g.reshape(g.shape[0], *act.shape)
    if job.method == "gradcam" and g.dim() > 3:
        g = g.mean(dim=tuple(range(3, g.dim())), keepdim=True)  # alpha_c, spatial mean
    if scratch is None:
        attr = g if job.method == "gradient" else g * act
        return aggregate(attr, 2, job.channel_aggregator)
    attr = g[0] if job.method == "gradient" else torch.mul(g[0], act, out=scratch)
    return aggregate(attr, 1, job.channel_aggregator, scratch=scratch).unsqueeze(0)


def _activations(flat: List[torch.Tensor], fns: List[Optional[ReshapeTransform]], create_graph: bool):
    return [_as_channels(apply_reshape(fn, t if create_graph else t.detach())) for t, fn in zip(flat, fns)]


def run_linear(
    job: Job, z: torch.Tensor, flat: List[torch.Tensor], fns: List[Optional[ReshapeTransform]]
) -> List[torch.Tensor]:
    """The linear case: one backward pass of ``mean_d z_d`` gives every source's map."""
    if not flat:
        return []
    acts = _activations(flat, fns, job.create_graph)
    grads = _grad(z.mean(1).sum(), flat, None, False, job.create_graph)
    return [
        channel_maps(job, apply_reshape(fn, g, 1).unsqueeze(0), a)[0]
        for g, a, fn in zip(grads, acts, fns)
    ]


def _batched_chunk(job, z, flat, acts, fns, a, b, create_graph, pieces, _scratch) -> None:
    n, d_total = z.shape
    onehot = torch.zeros(b - a, n, d_total, dtype=z.dtype, device=z.device)
    onehot[torch.arange(b - a), :, torch.arange(a, b)] = 1
    grads = _grad(z, flat, onehot, True, create_graph)
    for piece, g, act, fn in zip(pieces, grads, acts, fns):
        piece.append(channel_maps(job, apply_reshape(fn, g, 2), act))  # (B, N, *S)


def _loop_chunk(job, z, flat, acts, fns, a, b, create_graph, pieces, scratch) -> None:
    # reduce each gradient at once (a chunk of full-size gradients thrashes the cache), with the
    # temporaries in one reused buffer per source (fresh large tensors cost page faults)
    for d in range(a, b):
        onehot = torch.zeros_like(z)  # fresh each time: create_graph may keep it in the graph
        onehot[:, d] = 1
        raw = _grad(z, flat, onehot, False, create_graph)
        grads = [apply_reshape(fn, g, 1) for g, fn in zip(raw, fns)]
        del raw
        for i, (piece, g, act) in enumerate(zip(pieces, grads, acts)):
            if not create_graph and scratch[i] is None:
                scratch[i] = torch.empty_like(act)
            piece.append(channel_maps(job, g.unsqueeze(0), act, scratch[i]))  # (1, N, *S)
        del grads, g  # free before the next backward so the allocator reuses the memory


_SWEEPS: dict = {"batched": _batched_chunk, "loop": _loop_chunk}


def run_reverse(
    job: Job,
    strategy: str,
    chunk: int,
    z: torch.Tensor,
    flat: List[torch.Tensor],
    fns: List[Optional[ReshapeTransform]],
    show_progress: Optional[bool] = None,
    create_graph: Optional[bool] = None,
) -> List[torch.Tensor]:
    """One reverse sweep (``"loop"`` or ``"batched"``) over the dimensions of ``z``, in chunks
    of ``chunk`` dimensions, shared by every source in ``flat`` (``fns``: their transforms, the
    checked ones of :func:`~captum_concepts._utils.layout.layer_transforms`, which name the layer
    in errors)."""
    if not flat:
        return []
    show = job.show_progress if show_progress is None else show_progress
    graph = job.create_graph if create_graph is None else create_graph
    step = _SWEEPS[strategy]
    acts = _activations(flat, fns, graph)
    d_total = z.shape[1]
    pieces: List[List[torch.Tensor]] = [[] for _ in flat]
    scratch: List[Optional[torch.Tensor]] = [None for _ in flat]
    starts = range(0, d_total, chunk)
    for a in progress_bar(starts, show=show, desc="EmbeddingAttribution (reverse)", unit="chunk"):
        step(job, z, flat, acts, fns, a, min(a + chunk, d_total), graph, pieces, scratch)
    return [job.finish(torch.cat(piece).movedim(0, 1)) for piece in pieces]  # (N, D, *S) first


def run_forward_mode(
    job: Job,
    model: Any,
    inputs: Tuple[torch.Tensor, ...],
    forward_args: Any,
    embedding_layer: Any,
    select: Callable[[torch.Tensor], torch.Tensor],
    sources: List[ForwardSource],
    eval_mode: bool,
    input_side: bool,
) -> List[torch.Tensor]:
    """The maps of ``sources`` by forward mode (raises ``ForwardModeUnsupported``)."""
    per_dim = forward_maps(
        model,
        tuple(t.detach() for t in inputs),
        forward_args,
        embedding_layer,
        select,
        sources,
        job.method,
        job.channel_aggregator,
        job.internal_batch_size,
        eval_mode,
        input_side,
        job.show_progress,
    )
    return [job.finish(m) for m in per_dim]
