"""Forward-mode (Jacobian-vector product) per-dimension maps for :class:`EmbeddingAttribution`.

Reverse mode gets the ``D`` per-dimension maps from ``D`` vector-Jacobian products, one per
embedding dimension. When the channel aggregation is linear, every map value is itself a
directional derivative of the embedding: with ``J`` the Jacobian of the embedding ``z`` w.r.t.
a source tensor ``F`` of shape ``(N, C, *S)``,

- ``"gradient"`` / ``"activation_gradient"`` with ``rho_C = mean``:
  ``m_d(p) = J_d . t_p`` with ``t_p = w`` restricted to pixel ``p`` (``w = 1/C`` or ``F/C``):
  one Jacobian-vector product per source pixel, ``|S|`` in all (``"pixel"`` basis);
- ``"gradcam"`` (any ``rho_C``): ``alpha_{d,c} = J_d . s_c`` with ``s_c = 1/|S|`` on channel
  ``c``: one product per channel, ``C`` in all (``"channel"`` basis), then
  ``rho_C(alpha_{d,c} F_c)``;
- otherwise the full per-element gradient, one product per element of one example, ``C |S|``
  in all (``"element"`` basis).

Each product gives the values of all ``D`` dimensions at once, so every embedding aggregator
and ``return_per_dim`` are exact. The products run as ``torch.func.vmap`` over
``torch.func.jvp`` of the model's forward pass, with the source layer's output replaced by the
jvp's primal (:meth:`ModelGuard.replace`) and the embedding read by a capture that ends the
pass there (the layers below run once per chunk, unbatched; the layers after the embedding
never run).
Examples are assumed independent (eval mode), as in reverse mode, so one tangent covers the
whole batch.

``reshape_transform`` (a callable mapping the raw source tensor ``(N, ...)`` to
``(N, C, *S)``): the basis is built in the transformed layout and mapped back to the raw
layout with the transform's adjoint (its vector-Jacobian product at the raw value). This is
exact when the transform is *linear* in its input (``T(a x + b y) = a T(x) + b T(y)``:
permutations, reshapes, selections such as dropping class tokens), because then
``<T(g), t> = <g, T*(t)>``; reverse mode applies the same transform to the gradients.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from ..._utils.common import run_forward
from ..._utils.hooks import ModelGuard, _hold, _release, _uninterruptible, acquire, run_uninterrupted
from ..._utils.progress import progress_bar
from ..._utils.validation import validated
from .aggregators import Aggregator, aggregate, is_mean
from .costs import PassCosts

__all__ = [
    "ForwardModeStateError",
    "ForwardModeUnsupported",
    "ForwardSource",
    "backward_hooks",
    "choose_strategy",
    "forward_maps",
    "forward_chunk",
    "forward_passes",
    "reverse_strategy",
    "strategy_and_reason",
]

# Margin on the pass count, per device type: forward mode is considered only when
# margin * (its products) < (the vector-Jacobian products of reverse mode). On CPU a product
# costs 0.65-0.7 reverse passes through the same head, but forward mode also recomputes the
# layers below the source once per chunk; 1.5 is a conservative margin. Not measured on CUDA.
_PASS_COST = {"cpu": 1.5, "cuda": 1.0}
# Every chunk recomputes the layers below the source once: large chunks amortise it.
_MAX_AUTO_CHUNK = 64
_CHUNK_BUDGET_BYTES = 1024 * 2**20
# Elements of one chunk of (N, d, C, |S|) channel-resolved maps in the channel/element bases.
_COMBINE_ELEMENTS = 2**24

Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]


class ForwardModeUnsupported(RuntimeError):
    """Forward mode cannot run: an operation of the model has no forward-mode (or vmap) rule
    (or, as :class:`ForwardModeStateError`, torch's forward-AD state is unusable); use a reverse
    strategy. ``reason`` says which, in a few words (``strategy="auto"`` puts it in the plan).

    Example::

        from captum_concepts.attr import EmbeddingAttribution, ForwardModeUnsupported

        ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", strategy="forward")
        try:
            maps = ea.attribute(data.x_test[:2])
        except ForwardModeUnsupported as err:  # a layer without a forward-mode rule
            print(err.reason)
            maps = EmbeddingAttribution(model, embedding_layer="embedding_relu", strategy="loop").attribute(
                data.x_test[:2])
    """

    reason = "forward mode unsupported"


class ForwardModeStateError(ForwardModeUnsupported):
    """Torch's forward-mode AD or functorch state of this process is unusable, whatever the
    model: another thread runs ``torch.autograd.forward_ad`` / ``torch.func.jvp`` outside
    captum_concepts, the call is made inside such a transform, or an earlier interruption outside
    captum_concepts left it broken."""

    reason = "forward mode unavailable: torch's forward-AD state of this process is unusable (not the model)"


class ForwardSource(NamedTuple):
    """Where one source tensor lives: ``layer`` (None: the model inputs), ``position`` (the
    index among the tensors of the layer's output -- or input -- tuple, or among the inputs),
    ``value`` (the raw tensor of the first forward pass, detached), its ``transform`` and
    ``chunk``, the tangents propagated together (None: ``internal_batch_size`` or
    :func:`forward_chunk`)."""

    layer: Optional[nn.Module]
    position: int
    value: torch.Tensor
    transform: Transform = None
    chunk: Optional[int] = None


def _tangent_kind(method: str, channel_aggregator: Aggregator) -> str:
    """What one tangent spans: a source "pixel" (all channels), a "channel" or one "element"."""
    if method == "gradcam":
        return "channel"
    return "pixel" if is_mean(channel_aggregator) else "element"


def _channels(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1) if t.dim() == 1 else t


def forward_passes(shape: Sequence[int], method: str, channel_aggregator: Aggregator) -> int:
    """Jacobian-vector products forward mode needs for a source of ``shape`` ``(N, C, *S)``
    (after any ``reshape_transform``; ``(N, K)`` is ``K`` channels of one pixel): ``|S|`` for
    ``"gradient"``/``"activation_gradient"`` with ``rho_C = mean``, ``C`` for ``"gradcam"``,
    ``C |S|`` otherwise."""
    shape = tuple(shape) if len(shape) > 1 else (shape[0], 1)
    channels, pixels = shape[1], 1
    for s in shape[2:]:
        pixels *= s
    kind = _tangent_kind(method, channel_aggregator)
    return pixels if kind == "pixel" else channels if kind == "channel" else channels * pixels


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
    chosen = strategy_and_reason(strategy, n_dims, passes, device, create_graph, training, costs, hooks=hooks)
    return chosen[0]


def strategy_and_reason(
    strategy: str,
    n_dims: int,
    passes: int,
    device: torch.device,
    create_graph: bool = False,
    training: bool = False,
    costs: Optional[PassCosts] = None,
    forward_chunk: Optional[int] = None,
    reverse_chunk: Optional[int] = None,
    hooks: Optional[str] = None,
) -> Tuple[str, str]:
    """:func:`choose_strategy` and why, in words; ``forward_chunk`` / ``reverse_chunk`` are the
    chunks the cost model assumes (default: ``min(passes, 64)``; 1 for ``"loop"``,
    ``min(n_dims, 64)`` for ``"batched"``); ``hooks``: the model's backward hooks in words
    (:func:`backward_hooks`), None when it has none."""
    reverse = reverse_strategy(strategy, device)
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


class _ForwardModeKernels:
    """Fused attention kernels without a forward-mode rule on CPU (the ``nn.MultiheadAttention``
    fast path, the non-math ``scaled_dot_product_attention`` backends) are off while any thread
    is inside: the flags are process-global, so the first thread to enter saves them and the last
    to leave restores them (under a lock, with Ctrl-C held back)."""

    _lock = threading.Lock()
    _users = 0
    _saved: Any = None

    @_uninterruptible
    def __enter__(self) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        held = _hold()
        try:
            with _ForwardModeKernels._lock:
                if _ForwardModeKernels._users == 0:
                    kernels = sdpa_kernel(SDPBackend.MATH)
                    fastpath = torch.backends.mha.get_fastpath_enabled()
                    kernels.__enter__()
                    _ForwardModeKernels._saved = (fastpath, kernels)
                    torch.backends.mha.set_fastpath_enabled(False)
                _ForwardModeKernels._users += 1
        finally:
            _release(held)

    @_uninterruptible
    def __exit__(self, *exc: Any) -> None:
        held = _hold()
        try:
            with _ForwardModeKernels._lock:
                _ForwardModeKernels._users -= 1
                if _ForwardModeKernels._users == 0:
                    (fastpath, kernels), _ForwardModeKernels._saved = _ForwardModeKernels._saved, None
                    try:
                        kernels.__exit__(None, None, None)
                    finally:
                        torch.backends.mha.set_fastpath_enabled(fastpath)
        finally:
            _release(held)


def forward_mode_kernels() -> _ForwardModeKernels:
    """Context manager: turn off the fused attention kernels that have no forward-mode rule on
    CPU (the ``nn.MultiheadAttention`` fast path, and the non-math ``scaled_dot_product_attention``
    backends); the settings from before the first of concurrent users come back when the last
    leaves, also after an exception."""
    return _ForwardModeKernels()


# torch.autograd.forward_ad's dual levels (and torch.func.jvp's nesting count) are process-global:
# two threads in forward mode at once see each other's level (all-zero products, "no level
# exists"). One forward-mode section at a time in the process; re-entrant for nested calls.
_FORWARD_AD_LOCK = threading.RLock()


def _transform_state_problem() -> Optional[str]:
    """None when a vmapped Jacobian-vector product of ``v -> 2 v`` gives ``2 t``, else what went
    wrong: whether forward mode can run at all in this process now, whatever the model."""
    try:
        tangents = torch.eye(2)
        product = lambda t: torch.func.jvp(lambda v: 2.0 * v, (torch.ones(2),), (t,))[1]  # noqa: E731
        out = torch.func.vmap(product)(tangents)
    except Exception as err:  # noqa: BLE001 -- any failure here is torch's state, reported as such
        return f"{type(err).__name__}: {err}"
    if not torch.equal(out, 2.0 * tangents):
        return f"a test product of v -> 2v gave {out.tolist()}, not 2t"
    return None


def _forward_ad_in_use() -> Optional[str]:
    """What holds torch's forward-AD state when no forward-mode section of ours runs (None:
    nothing): a dual level or a ``torch.func.jvp`` left open."""
    from torch._functorch import eager_transforms

    level = getattr(fwAD, "_current_level", -1)
    nesting = getattr(eager_transforms, "JVP_NESTING", 0)
    if level != -1 or nesting != 0:
        return f"a forward-AD level is open: level {level}, torch.func.jvp nesting {nesting}"
    return None


def _state_error(problem: str) -> ForwardModeStateError:
    return ForwardModeStateError(
        f"forward mode cannot run in this process now, whatever the model: torch's forward-mode AD "
        f"state is unusable ({problem}). Another thread may be using torch.autograd.forward_ad or "
        "torch.func.jvp outside captum_concepts, the call may be made inside such a transform, or an "
        'interruption outside captum_concepts left it broken; use strategy="loop" or "batched"'
    )


class _ForwardModeSection:
    """One forward-mode computation at a time in the process (:data:`_FORWARD_AD_LOCK`), with
    the fused attention kernels off; entering checks that no forward-AD level is open (one left
    by code outside this package) and raises :class:`ForwardModeStateError` if one is. Ctrl-C
    is held back while entering and leaving; waiting for another thread's section stays
    interruptible."""

    @_uninterruptible
    def __enter__(self) -> None:
        held = _hold()
        try:
            outermost = not _FORWARD_AD_LOCK._is_owned()
            acquire(_FORWARD_AD_LOCK)
            try:
                problem = _forward_ad_in_use() if outermost else None
                if problem is not None:
                    raise _state_error(problem)
                _ForwardModeKernels().__enter__()
            except BaseException:
                _FORWARD_AD_LOCK.release()
                raise
        except BaseException:
            _release(held)
            raise
        self._held = held

    @_uninterruptible
    def __exit__(self, *exc: Any) -> None:
        try:
            try:
                _ForwardModeKernels().__exit__(*exc)
            finally:
                _FORWARD_AD_LOCK.release()
        finally:
            _release(self._held)


def _replace(value: Any, position: int, new: torch.Tensor) -> Any:
    """``value`` (a tensor or a tuple holding tensors) with its ``position``-th tensor replaced."""
    if not isinstance(value, tuple):
        return new
    items, k = list(value), 0
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            if k == position:
                items[i] = new
                break
            k += 1
    return type(value)(*items) if hasattr(type(value), "_fields") else tuple(items)


class _Runner:
    """Runs the model with one source tensor replaced and returns the selected embedding.

    The replacement goes through :meth:`ModelGuard.replace`, the embedding is read through a
    ``stop=True`` capture (nothing after it runs)."""

    def __init__(
        self, model, inputs, additional_forward_args, embedding_layer, select, guard, sources, input_side
    ):
        self.model, self.inputs, self.args = model, inputs, additional_forward_args
        self.guard, self.select = guard, select
        self.current: Optional[ForwardSource] = None
        self.value: Optional[torch.Tensor] = None
        self.replaced = False
        of = "input" if input_side else "output"
        for module in {s.layer for s in sources if s.layer is not None}:
            guard.replace(module, lambda value, module=module: self._substitute(module, value), of=of)
        self.embedded = None
        if embedding_layer is not None:
            self.embedded = guard.capture(embedding_layer, "embedding_layer", stop=True)

    def _substitute(self, module: nn.Module, value: Any) -> Any:
        if self.current is None or self.current.layer is not module:
            return None
        self.replaced = True
        # a clone: in-place operations downstream must not modify the jvp's primal
        return _replace(value, self.current.position, self.value.clone())

    def __call__(self, source: ForwardSource, value: torch.Tensor) -> torch.Tensor:
        self.current, self.value = source, value
        self.replaced = source.layer is None
        inputs = self.inputs
        if source.layer is None:
            inputs = tuple(value if i == source.position else t for i, t in enumerate(inputs))
        try:
            out = self.guard.forward(run_forward, self.model, inputs, self.args)
        finally:
            self.current, self.value = None, None
        if not self.replaced:
            raise ValueError(
                "the embedding does not depend on a source layer (or input): check that embedding_layer "
                "comes after every entry of layer in the forward pass"
            )
        if self.embedded is not None:
            out = self.embedded.tensor()
        return self.select(out.reshape(out.shape[0], -1))


def forward_chunk(value: torch.Tensor, passes: int, internal_batch_size: Optional[int] = None) -> int:
    """Tangents propagated together for a source ``value``: ``internal_batch_size`` if given,
    else as many as fit a 1 GiB budget for the tangents of the layers above, at most 64."""
    if internal_batch_size:
        return int(internal_batch_size)
    per_tangent = value.numel() * value.element_size() * 8  # the tangents of the layers above
    return int(max(1, min(passes, _MAX_AUTO_CHUNK, _CHUNK_BUDGET_BYTES // max(per_tangent, 1))))


def _tangents(kind: str, method: str, act: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Basis vectors ``a..b-1`` in the transformed layout: ``(b - a, N, C, P)``."""
    n, c, p = act.shape
    k = b - a
    t = act.new_zeros(k, n, c, p)
    rows = torch.arange(k, device=act.device)
    idx = torch.arange(a, b, device=act.device)
    if kind == "pixel":
        w = act[:, :, a:b] / c if method == "activation_gradient" else act.new_full((n, c, k), 1.0 / c)
        t[rows, :, :, idx] = w.permute(2, 0, 1)
    elif kind == "channel":
        t[rows, :, idx, :] = 1.0 / p
    else:
        t.view(k, n, c * p)[rows, :, idx] = 1.0
    return t


def _combine(
    kind: str, method: str, grads: torch.Tensor, act: torch.Tensor, channel_aggregator
) -> torch.Tensor:
    """Per-dimension maps ``(N, D, P)`` from the products ``grads`` ``(K, N, D)``."""
    n, c, p = act.shape
    per = grads.permute(1, 2, 0)  # (N, D, K)
    if kind == "pixel":
        return per
    d_total = per.shape[1]
    step = max(1, _COMBINE_ELEMENTS // max(n * c * p, 1))
    out = []
    for a in range(0, d_total, step):
        block = per[:, a : a + step]
        if kind == "channel":
            attr = block.unsqueeze(-1) * act.unsqueeze(1)  # alpha_{d,c} F_c: (N, d, C, P)
        else:
            attr = block.reshape(n, -1, c, p)
            if method != "gradient":
                attr = attr * act.unsqueeze(1)
        out.append(aggregate(attr, 2, channel_aggregator))
    return torch.cat(out, 1)


def forward_maps(
    model: nn.Module,
    inputs: tuple,
    additional_forward_args: Any,
    embedding_layer: Optional[nn.Module],
    select: Callable[[torch.Tensor], torch.Tensor],
    sources: Sequence[ForwardSource],
    method: str,
    channel_aggregator: Aggregator,
    internal_batch_size: Optional[int],
    eval_mode: bool,
    input_side: bool = False,
    show_progress: bool = False,
) -> List[torch.Tensor]:
    """Channel-aggregated per-dimension maps ``(N, D, *S)`` of each source, by forward mode.

    ``inputs`` are the model inputs (detached), ``select`` maps the flattened ``(N, D_all)``
    embedding to the explained ``(N, D)``; ``input_side`` says the layer sources are layer
    inputs. At most ``internal_batch_size`` tangents (each of the size of the source) are
    propagated together. Raises :class:`ForwardModeUnsupported` when an operation has no
    forward-mode or vmap rule, :class:`ForwardModeStateError` when torch's forward-AD state is
    unusable whatever the model. The model is left as it was (hooks, flags), also on errors.

    One forward-mode computation runs at a time in the process (torch's forward-AD levels are
    process-global): concurrent calls, on one model or several, wait for each other. Ctrl-C
    during a chunk of products is delivered when the chunk ends, so an interrupt never leaves
    torch's forward-AD or functorch state half-changed.
    ``show_progress``: a bar over the chunks of tangents (one forward pass each).
    """
    out: List[torch.Tensor] = []
    with (
        ModelGuard(model, eval_mode=eval_mode, freeze_parameters=True, warn_train_mode=False) as guard,
        _ForwardModeSection(),
    ):
        run = _Runner(
            model, inputs, additional_forward_args, embedding_layer, select, guard, sources, input_side
        )
        for src in sources:
            raw = src.value
            if src.transform is None:
                shaped = raw
                adjoint = None
            else:
                shaped, adjoint = run_uninterrupted(torch.func.vjp, src.transform, raw)
            act = _channels(shaped)
            spatial = tuple(act.shape[2:])
            act = act.reshape(act.shape[0], act.shape[1], -1)
            kind = _tangent_kind(method, channel_aggregator)
            passes = forward_passes(tuple(act.shape), method, channel_aggregator)
            chunk = src.chunk or forward_chunk(raw, passes, internal_batch_size)

            def jvp_one(tangent, src=src, raw=raw):
                return torch.func.jvp(lambda v: run(src, v), (raw,), (tangent,))[1]

            products = []
            steps = progress_bar(
                range(0, passes, chunk), show=show_progress, desc="forward mode", unit="chunk"
            )
            for a in steps:
                b = min(a + chunk, passes)
                t = _tangents(kind, method, act, a, b).reshape(b - a, *shaped.shape)
                if adjoint is None:
                    t = t.reshape(b - a, *raw.shape)
                else:
                    t = run_uninterrupted(torch.func.vmap(adjoint), t)[0]
                try:
                    # Ctrl-C waits for the chunk: an interrupt inside torch's bookkeeping of the
                    # forward-AD level or the vmap level would break them for the whole process
                    products.append(run_uninterrupted(torch.func.vmap(jvp_one), t))  # (k, N, D)
                except (NotImplementedError, RuntimeError) as err:
                    problem = _transform_state_problem()
                    if problem is not None:
                        raise _state_error(problem) from err
                    raise ForwardModeUnsupported(
                        f"forward mode failed on this model ({type(err).__name__}: {err}); an operation "
                        'probably has no forward-mode or vmap rule: use strategy="loop" or "batched"'
                    ) from err
            maps = _combine(kind, method, torch.cat(products), act, channel_aggregator)
            out.append(maps.reshape(*maps.shape[:2], *spatial))
    return out
