"""How :class:`~captum_concepts.attr.EmbeddingAttribution` runs: the planner decides, the
executors run what it decided.

:func:`plan_sources` decides once per call and source layer (a :class:`Plan`: the strategy, why,
the chunk, the layer's ``reshape_transform``, the forward passes) and emits the units that run, a
:class:`Program`: the sweeps of gradients (:class:`Sweep`, run by :func:`run_sweep`):

- ``"linear"``: one backward pass of ``mean_d z_d``;
- ``"loop"`` / ``"batched"``: one sweep of vector-Jacobian products (one per embedding
  dimension, singly or vmapped in chunks) shared by every reverse source;

and the forward sources (:class:`~captum_concepts.attr._core.forward_mode.ForwardSource`, with
their passes, chunk and transform) for the Jacobian-vector products of
:func:`~captum_concepts.attr._core.forward_mode.forward_maps`. Under ``strategy="auto"`` it also
emits the reverse sweep that replaces the forward sources when an operation has no forward-mode
rule (the plans then become new reverse plans, :meth:`Plan.fallback`); nothing is decided twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..._utils.layout import ReshapeTransform, apply_reshape
from ..._utils.progress import progress_bar
from ..._utils.validation import validated
from .aggregators import Aggregator, aggregate, is_mean
from .costs import PassCosts
from .forward_mode import ForwardSource, _channels, forward_passes

__all__ = [
    "Job", "Plan", "Program", "Sweep", "backward_hooks", "choose_strategy", "forward_chunk", "plan_sources",
    "reverse_chunk", "reverse_strategy", "run_sweep", "strategy_and_reason",
]  # fmt: skip

# Rough budget for the gradients of one chunk of embedding dimensions when
# internal_batch_size is None (the intermediate gradients of the head scale alike).
_CHUNK_BUDGET_BYTES = 512 * 2**20
_MAX_AUTO_CHUNK = 64
# Forward mode: every chunk of tangents recomputes the layers below the source once, so large
# chunks amortise it, within a budget for the tangents of the layers above.
_FORWARD_BUDGET_BYTES = 1024 * 2**20
# Margin on the pass count, per device type: forward mode is considered only when
# margin * (its products) < (the vector-Jacobian products of reverse mode). On CPU a product
# costs 0.65-0.7 reverse passes through the same head, but forward mode also recomputes the
# layers below the source once per chunk; 1.5 is a conservative margin. Not measured on CUDA.
_PASS_COST = {"cpu": 1.5, "cuda": 1.0}


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
    """What the planner and the executors need of the call: the method, the aggregators and the
    options."""

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


@dataclass(frozen=True)
class Sweep:
    """One sweep of gradients: ``strategy`` ``"linear"`` (one backward pass), ``"loop"`` or
    ``"batched"`` (vector-Jacobian products, ``chunk`` embedding dimensions per backward call) over
    the flat sources ``index`` (the tensors of every source layer, in order), whose reshape
    transforms are ``transforms``."""

    strategy: str
    chunk: Optional[int]
    index: Tuple[int, ...]
    transforms: Tuple[Optional[ReshapeTransform], ...]


@dataclass(frozen=True)
class Program:
    """What one call runs, as :func:`plan_sources` decided it: a :class:`Plan` per source layer,
    the sweeps, the forward sources (flat index, source) and the reverse sweep replacing them
    when forward mode fails under ``strategy="auto"`` (None: the failure is raised)."""

    plans: List[Plan]
    sweeps: List[Sweep]
    forward: Tuple[Tuple[int, ForwardSource], ...] = ()
    fallback: Optional[Sweep] = None


# ---------------------------------------------------------------------- decisions
@validated()
def choose_strategy(
    strategy: str, n_dims: int, passes: int, device: torch.device,
    create_graph: bool = False, training: bool = False, costs: Optional[PassCosts] = None,
    hooks: Optional[str] = None,
) -> str:  # fmt: skip
    """The strategy :class:`EmbeddingAttribution` runs for one source layer.

    ``"auto"`` runs forward mode when both hold:

    1. it needs fewer passes: ``margin * passes < n_dims`` (``passes`` Jacobian-vector
       products, see :func:`forward_passes`, against ``n_dims`` vector-Jacobian products;
       ``margin`` covers forward mode's fixed costs: 1.5 on CPU, 1.0 elsewhere);
    2. its passes cost less, when ``costs`` (the work of the first forward pass split at the
       source layer, :class:`~captum_concepts.attr._core.costs.PassCosts`) is known. With
       ``W(part)`` = FLOPs of its matrix products and convolutions + ``e`` x elements written by
       its other operations, ``head`` the layers between the source and the embedding,
       ``below`` the layers before the source, ``E`` the elements of the source and ``k`` the
       chunk (tangents per forward pass; dimensions per backward call, 1 for ``"loop"``)::

           reverse = D (v W(head) + r e E) + ceil(D / k) o
           forward = P (j W(head) + f e E) + ceil(P / k) (W(below) + W(head) + o)

       with ``D = n_dims``, ``P = passes``, the price of a vector-Jacobian product ``v`` and of
       a tangent ``j < v`` relative to the head's forward work (a chunk of tangents runs as one
       vmapped pass), ``r``, ``f`` element-wise passes over the source per product and ``o``
       the fixed price of one pass (the constants of
       :mod:`~captum_concepts.attr._core.costs`). Forward mode runs when ``forward < reverse``.
       A deep source whose head is only a pooling layer thus runs reverse mode once forward
       mode's repeated passes of the layers below outweigh ``D`` nearly free reverse products;

    and neither ``create_graph`` (maps that stay differentiable need reverse mode), a model in
    training mode (each extra forward pass would update batch-norm statistics and redraw
    dropout) nor backward hooks on the model (``hooks``, where they are in words, see
    :func:`backward_hooks`: forward mode never runs them, reverse mode does) rules it out.
    Otherwise the reverse strategy of the device: ``"batched"`` on CUDA, ``"loop"`` elsewhere.
    An explicit ``"forward"`` falls back to ``"loop"``/``"batched"`` with ``create_graph`` and
    raises ``ValueError`` for a model in training mode or with backward hooks; explicit
    ``"loop"``/``"batched"`` are returned unchanged.

    Example::

        from captum_concepts.attr import choose_strategy

        # 512 embedding components, 49 Jacobian-vector products: forward mode needs fewer passes
        choose_strategy("auto", n_dims=512, passes=49, device=torch.device("cpu"))  # 'forward'
        choose_strategy("auto", n_dims=16, passes=49, device=torch.device("cpu"))  # 'loop'
    """
    flags = dict(create_graph=create_graph, training=training, costs=costs, hooks=hooks)
    return strategy_and_reason(strategy, n_dims, passes, device, **flags)[0]


def strategy_and_reason(
    strategy: str,
    n_dims: int,
    passes: int,
    device: torch.device,
    *,
    create_graph: bool = False,
    training: bool = False,
    costs: Optional[PassCosts] = None,
    hooks: Optional[str] = None,
    forward_chunk: Optional[int] = None,
    reverse_chunk: Optional[int] = None,
    reverse: Optional[str] = None,
) -> Tuple[str, str]:
    """:func:`choose_strategy` and why, in words; ``forward_chunk`` / ``reverse_chunk`` are the
    chunks the cost model assumes (default: ``min(passes, 64)``; 1 for ``"loop"``,
    ``min(n_dims, 64)`` for ``"batched"``); ``hooks``: the model's backward hooks in words
    (:func:`backward_hooks`), None when it has none; ``reverse``: the planner's
    :func:`reverse_strategy` (default: decided here)."""
    reverse = reverse or reverse_strategy(strategy, device)
    if strategy in ("loop", "batched"):
        return strategy, f"strategy={strategy!r} requested"
    if strategy == "forward":
        if training and not create_graph:
            raise ValueError(
                'strategy="forward" runs several forward passes and needs the model in eval mode '
                '(eval_mode=True, or a model already in eval mode); use strategy="auto", "loop" or "batched"'
            )
        if create_graph:
            return reverse, "create_graph=True needs reverse mode"
        if hooks:
            raise ValueError(
                f'strategy="forward" cannot honour the model\'s backward hooks ({hooks}): forward mode '
                'never calls them, reverse mode does; use strategy="auto", "loop" or "batched", or '
                "remove the hooks"
            )
        return "forward", "strategy='forward' requested"
    if create_graph:
        return reverse, "create_graph=True needs reverse mode"
    if training:
        return reverse, "the model runs in training mode (forward mode's extra passes would change it)"
    if hooks:
        return reverse, f"the model has backward hooks ({hooks}), which forward mode would never call"
    margin = _PASS_COST.get(device.type, 1.0)
    if margin * passes >= n_dims:
        return reverse, f"{passes} forward products x {margin} >= {n_dims} reverse products"
    if costs is not None:
        fchunk = forward_chunk or min(passes, _MAX_AUTO_CHUNK)
        rchunk = reverse_chunk or (1 if reverse == "loop" else min(n_dims, _MAX_AUTO_CHUNK))
        fwd, rev = costs.forward(passes, fchunk), costs.reverse(n_dims, rchunk)
        if fwd >= rev:
            return reverse, f"predicted cost forward {fwd:.3g} >= {reverse} {rev:.3g} (FLOP equivalents)"
        return "forward", f"predicted cost forward {fwd:.3g} < {reverse} {rev:.3g} (FLOP equivalents)"
    return "forward", f"{passes} forward products x {margin} < {n_dims} reverse products"


def reverse_strategy(strategy: str, device: torch.device) -> str:
    """``strategy`` if it is a reverse one (``"loop"``, ``"batched"``), else the device's:
    ``"batched"`` on CUDA, ``"loop"`` elsewhere."""
    if strategy in ("loop", "batched"):
        return strategy
    return "batched" if device.type == "cuda" else "loop"


def backward_hooks(model: nn.Module) -> Optional[str]:
    """Where ``model`` carries hooks that reverse mode runs and forward mode never would, in
    words (None: none): module backward hooks (full and legacy) and backward pre-hooks, the global
    module backward hooks (``torch.nn.modules.module.register_module_full_backward_hook`` and
    friends) and hooks on parameters (``Parameter.register_hook``,
    ``register_post_accumulate_grad_hook``). Hooks a forward pass registers on intermediate
    tensors cannot be seen before the pass."""
    from torch.nn.modules import module as torch_module

    found = []
    if getattr(torch_module, "_global_backward_hooks", None) or getattr(
        torch_module, "_global_backward_pre_hooks", None
    ):
        found.append("global module backward hooks")
    for name, module in model.named_modules():
        if getattr(module, "_backward_hooks", None) or getattr(module, "_backward_pre_hooks", None):
            found.append(f"module {name or type(module).__name__!r}")
    for name, param in model.named_parameters():
        if getattr(param, "_backward_hooks", None) or getattr(param, "_post_accumulate_grad_hooks", None):
            found.append(f"parameter {name!r}")
    if not found:
        return None
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return ", ".join(found[:3]) + more


def forward_chunk(value: torch.Tensor, passes: int, internal_batch_size: Optional[int] = None) -> int:
    """Tangents propagated together for a source ``value``: ``internal_batch_size`` if given,
    else as many as fit a 1 GiB budget for the tangents of the layers above, at most 64."""
    if internal_batch_size:
        return int(internal_batch_size)
    per_tangent = value.numel() * value.element_size() * 8  # the tangents of the layers above
    return int(max(1, min(passes, _MAX_AUTO_CHUNK, _FORWARD_BUDGET_BYTES // max(per_tangent, 1))))


def reverse_chunk(flat: Sequence[torch.Tensor], n_dims: int, internal_batch_size: Optional[int]) -> int:
    """Embedding dimensions per chunk of the reverse sweep over the sources ``flat``."""
    if internal_batch_size:
        return int(internal_batch_size)
    per_dim = sum(t.numel() * t.element_size() for t in flat) * 3
    return int(max(1, min(n_dims, _MAX_AUTO_CHUNK, _CHUNK_BUDGET_BYTES // max(per_dim, 1))))


def plan_sources(
    job: Job,
    *,
    strategy: str,
    z: torch.Tensor,
    layers: Sequence[Optional[nn.Module]],
    groups: Sequence[Tuple[torch.Tensor, ...]],
    transforms: Sequence[Optional[ReshapeTransform]],
    costs: Sequence[Optional[PassCosts]],
    training: bool,
    model: nn.Module,
) -> Program:
    """The :class:`Program` of a call explaining the embedding ``z`` ``(N, D)``: one :class:`Plan`
    per source layer (``layers``; ``groups``: the tensors of each, ``transforms``, ``costs``)
    and the units that run them; ``model``'s backward hooks (:func:`backward_hooks`) rule out
    forward mode."""
    n_dims, device, ibs = z.shape[1], z.device, job.internal_batch_size
    flat = [t for group in groups for t in group]
    where = [i for i, group in enumerate(groups) for _ in group]  # the layer of each flat source

    def sweep(strategy: str, chunk: Optional[int], index: List[int]) -> Sweep:
        return Sweep(strategy, chunk, tuple(index), tuple(plans[where[j]].transform for j in index))

    if job.linear:
        why = "mean over dimensions and channels: one backward pass of mean_d z_d"
        plans = [Plan("linear", why, None, tf) for tf in transforms]
        return Program(plans, [sweep("linear", None, list(range(len(flat))))])
    reverse = reverse_strategy(strategy, device)
    hooks = backward_hooks(model) if strategy in ("auto", "forward") else None
    plans, units = [], []
    for lay, group, tf, cost in zip(layers, groups, transforms, costs):
        with torch.no_grad():
            shapes = [t.shape if tf is None else tf(t.detach()).shape for t in group]
        counts = [forward_passes(s, job.method, job.channel_aggregator) for s in shapes]
        chunks = [forward_chunk(t, p, ibs) for t, p in zip(group, counts)]
        passes = sum(counts)  # the plan prices a layer's tensors as one run; each runs its own chunks
        fchunk = chunks[0] if len(group) == 1 else min(forward_chunk(t, passes, ibs) for t in group)
        chosen, why = strategy_and_reason(
            strategy, n_dims, passes, device, create_graph=job.create_graph, training=training, costs=cost,
            hooks=hooks, forward_chunk=fchunk, reverse_chunk=1 if reverse == "loop" else None,
            reverse=reverse,
        )  # fmt: skip
        plans.append(Plan(chosen, why, fchunk, tf, passes, cost))
        units += [
            ForwardSource(lay, k, t.detach(), tf, p, c)
            for k, (t, p, c) in enumerate(zip(group, counts, chunks))
        ]
    fwd = [j for j, i in enumerate(where) if plans[i].strategy == "forward"]
    rev = [j for j, i in enumerate(where) if plans[i].strategy != "forward"]
    sweeps, fallback = [], None
    if rev:
        rchunk = reverse_chunk([flat[j] for j in rev], n_dims, ibs)
        plans = [p if p.strategy == "forward" else replace(p, chunk=rchunk) for p in plans]
        sweeps.append(sweep(reverse, rchunk, rev))
    if fwd and strategy == "auto":  # the sweep that replaces forward mode if it fails
        fallback = sweep(reverse, reverse_chunk([flat[j] for j in fwd], n_dims, ibs), fwd)
    return Program(plans, sweeps, tuple((j, units[j]) for j in fwd), fallback)


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


def run_sweep(
    job: Job,
    sweep: Sweep,
    z: torch.Tensor,
    flat: List[torch.Tensor],
    *,
    show_progress: Optional[bool] = None,
    create_graph: Optional[bool] = None,
) -> List[torch.Tensor]:
    """The maps of the sources ``sweep.index`` of ``flat`` (the tensors of every source layer):
    ``"linear"``, one backward pass of ``mean_d z_d``; ``"loop"`` / ``"batched"``, one sweep over
    the dimensions of ``z``, ``sweep.chunk`` per step, shared by these sources (their transforms
    are the checked ones of :func:`~captum_concepts._utils.layout.layer_transforms`, which name
    the layer in errors). ``show_progress`` / ``create_graph``: None for the job's."""
    sources, fns = [flat[j] for j in sweep.index], sweep.transforms
    graph = job.create_graph if create_graph is None else create_graph
    acts = [_channels(apply_reshape(fn, t if graph else t.detach())) for t, fn in zip(sources, fns)]
    if sweep.strategy == "linear":
        grads = _grad(z.mean(1).sum(), sources, None, False, graph)
        return [
            channel_maps(job, apply_reshape(fn, g, 1).unsqueeze(0), a)[0]
            for g, a, fn in zip(grads, acts, fns)
        ]
    n, d_total = z.shape
    pieces: List[List[torch.Tensor]] = [[] for _ in sources]
    scratch: List[Optional[torch.Tensor]] = [None for _ in sources]

    def batched(a: int, b: int) -> None:
        onehot = torch.zeros(b - a, n, d_total, dtype=z.dtype, device=z.device)
        onehot[torch.arange(b - a), :, torch.arange(a, b)] = 1
        grads = _grad(z, sources, onehot, True, graph)
        for piece, g, act, fn in zip(pieces, grads, acts, fns):
            piece.append(channel_maps(job, apply_reshape(fn, g, 2), act))  # (B, N, *S)

    def loop(a: int, b: int) -> None:
        # reduce each gradient at once (a chunk of full-size gradients thrashes the cache), with the
        # temporaries in one reused buffer per source (fresh large tensors cost page faults)
        for d in range(a, b):
            onehot = torch.zeros_like(z)  # fresh each time: create_graph may keep it in the graph
            onehot[:, d] = 1
            raw = _grad(z, sources, onehot, False, graph)
            grads = [apply_reshape(fn, g, 1) for g, fn in zip(raw, fns)]
            del raw
            for i, (piece, g, act) in enumerate(zip(pieces, grads, acts)):
                if not graph and scratch[i] is None:
                    scratch[i] = torch.empty_like(act)
                piece.append(channel_maps(job, g.unsqueeze(0), act, scratch[i]))  # (1, N, *S)
            del grads, g  # free before the next backward so the allocator reuses the memory

    step = batched if sweep.strategy == "batched" else loop
    show = job.show_progress if show_progress is None else show_progress
    starts = range(0, d_total, sweep.chunk)
    for a in progress_bar(starts, show=show, desc="EmbeddingAttribution (reverse)", unit="chunk"):
        step(a, min(a + sweep.chunk, d_total))
    return [job.finish(torch.cat(piece).movedim(0, 1)) for piece in pieces]  # (N, D, *S) first
