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
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from ..._utils.common import run_forward
from ..._utils.hooks import ModelGuard, _hold, _release, _uninterruptible, acquire, run_uninterrupted
from ..._utils.progress import progress_bar
from .aggregators import Aggregator, aggregate, is_mean

__all__ = [
    "ForwardModeStateError", "ForwardModeUnsupported", "ForwardSource", "forward_maps", "forward_passes",
]  # fmt: skip

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
    """One source tensor as the plan runs it: ``layer`` (None: the model inputs), ``position``
    (the index among the tensors of the layer's output -- or input -- tuple, or among the
    inputs), ``value`` (the raw tensor of the first forward pass, detached), its ``transform``,
    ``passes`` (its Jacobian-vector products, :func:`forward_passes`) and ``chunk`` (the
    tangents propagated together)."""

    layer: Optional[nn.Module]
    position: int
    value: torch.Tensor
    transform: Transform
    passes: int
    chunk: int


def _tangent_kind(method: str, channel_aggregator: Aggregator) -> str:
    """What one tangent spans: a source "pixel" (all channels), a "channel" or one "element"."""
    if method == "gradcam":
        return "channel"
    return "pixel" if is_mean(channel_aggregator) else "element"


def _channels(t: torch.Tensor) -> torch.Tensor:
    """A dense ``(N,)`` source as one channel ``(N, 1)``; others unchanged."""
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

    def __init__(self, guard, inputs, sources, select, *, args, embedding, input_side) -> None:
        self.model, self.inputs, self.args = guard.model, inputs, args
        self.guard, self.select = guard, select
        self.current: Optional[ForwardSource] = None
        self.value: Optional[torch.Tensor] = None
        self.replaced = False
        of = "input" if input_side else "output"
        for module in {s.layer for s in sources if s.layer is not None}:
            guard.replace(module, lambda value, module=module: self._substitute(module, value), of=of)
        self.embedded = None
        if embedding is not None:
            self.embedded = guard.capture(embedding, "embedding_layer", stop=True)

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
    sources: Sequence[ForwardSource],
    *,
    select: Callable[[torch.Tensor], torch.Tensor],
    method: str,
    channel_aggregator: Aggregator,
    additional_forward_args: Any = None,
    embedding_layer: Optional[nn.Module] = None,
    eval_mode: bool = True,
    input_side: bool = False,
    show_progress: bool = False,
) -> List[torch.Tensor]:
    """Channel-aggregated per-dimension maps ``(N, D, *S)`` of each source, by forward mode.

    ``inputs`` are the model inputs (detached), ``select`` maps the flattened ``(N, D_all)``
    embedding to the explained ``(N, D)``; ``input_side`` says the layer sources are layer
    inputs. Each source's ``passes`` products run in chunks of its ``chunk`` tangents (each of
    the size of the source). Raises :class:`ForwardModeUnsupported` when an operation has no
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
        run = _Runner(guard, inputs, sources, select, args=additional_forward_args, embedding=embedding_layer,
                      input_side=input_side)  # fmt: skip
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
            kind, passes, chunk = _tangent_kind(method, channel_aggregator), src.passes, src.chunk

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
