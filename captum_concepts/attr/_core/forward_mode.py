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
jvp's primal through a forward hook (the layers below run once per chunk, unbatched).
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

import contextlib
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Sequence

import torch
from torch import nn

from ..._utils.common import run_forward
from ..._utils.hooks import ModelGuard
from .aggregators import Aggregator, aggregate, is_mean

__all__ = [
    "ForwardModeUnsupported",
    "ForwardSource",
    "choose_strategy",
    "forward_maps",
    "forward_passes",
    "reverse_strategy",
]

# Price of one Jacobian-vector product relative to one reverse pass, per device type. On CPU a
# product cost 0.65-0.7 reverse passes at ResNet-18 layer2/layer3, but forward mode also
# recomputes the layers below the source once per chunk (break-even at D ~ 35 for 49 products
# at ResNet-18 layer3, benchmarks/embedding_attribution_real.py): 1.5 is a conservative margin.
# Not measured on CUDA.
_PASS_COST = {"cpu": 1.5, "cuda": 1.0}
# Every chunk recomputes the layers below the source once: large chunks amortise it.
_MAX_AUTO_CHUNK = 64
_CHUNK_BUDGET_BYTES = 1024 * 2**20
# Elements of one chunk of (N, d, C, |S|) channel-resolved maps in the channel/element bases.
_COMBINE_ELEMENTS = 2**24

Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]


class ForwardModeUnsupported(RuntimeError):
    """An operation of the model has no forward-mode (or vmap) rule; use a reverse strategy."""


class ForwardSource(NamedTuple):
    """Where one source tensor lives: ``layer`` (None: the model inputs), ``position`` (the
    index among the tensors of the layer's output -- or input -- tuple, or among the inputs),
    ``value`` (the raw tensor of the first forward pass, detached) and its ``transform``."""

    layer: Optional[nn.Module]
    position: int
    value: torch.Tensor
    transform: Transform = None


def _basis(method: str, channel_aggregator: Aggregator) -> str:
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
    kind = _basis(method, channel_aggregator)
    return pixels if kind == "pixel" else channels if kind == "channel" else channels * pixels


def choose_strategy(
    strategy: str,
    n_dims: int,
    passes: int,
    device: torch.device,
    create_graph: bool = False,
    training: bool = False,
) -> str:
    """The strategy :class:`EmbeddingAttribution` runs for one source layer.

    ``"auto"``: ``"forward"`` when ``cost * passes < n_dims`` (``passes`` Jacobian-vector
    products, see :func:`forward_passes`, against ``n_dims`` vector-Jacobian products;
    ``cost`` is a price per product that covers forward mode's fixed costs: 1.5 on CPU, a
    conservative margin over the break-even measured on torchvision ResNets, 1.0 elsewhere),
    unless ``create_graph`` (maps that stay differentiable need reverse mode) or the model runs
    in training mode (each extra forward pass would update batch-norm statistics and redraw
    dropout); otherwise the reverse strategy of the device: ``"batched"`` on CUDA, ``"loop"``
    elsewhere. An explicit ``"forward"`` falls back to ``"loop"``/``"batched"`` with
    ``create_graph`` and raises ``ValueError`` for a model in training mode; explicit
    ``"loop"``/``"batched"`` are returned unchanged.
    """
    reverse = reverse_strategy(strategy, device)
    if strategy in ("loop", "batched"):
        return strategy
    if strategy == "forward":
        if training and not create_graph:
            raise ValueError(
                'strategy="forward" runs several forward passes and needs the model in eval mode '
                '(eval_mode=True, or a model already in eval mode); use strategy="auto", "loop" or "batched"'
            )
        return reverse if create_graph else "forward"
    if create_graph or training:
        return reverse
    cost = _PASS_COST.get(device.type, 1.0)
    return "forward" if cost * passes < n_dims else reverse


def reverse_strategy(strategy: str, device: torch.device) -> str:
    """``strategy`` if it is a reverse one (``"loop"``, ``"batched"``), else the device's:
    ``"batched"`` on CUDA, ``"loop"`` elsewhere."""
    if strategy in ("loop", "batched"):
        return strategy
    return "batched" if device.type == "cuda" else "loop"


@contextlib.contextmanager
def forward_mode_kernels() -> Iterator[None]:
    """Turn off the fused attention kernels that have no forward-mode rule on CPU (the
    ``nn.MultiheadAttention`` fast path, and the non-math ``scaled_dot_product_attention``
    backends); the previous settings come back on exit, also after an exception."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


class _Stop(Exception):
    """Raised by the embedding hook: nothing after the embedding is needed."""


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
    """Runs the model with one source tensor replaced and returns the selected embedding."""

    def __init__(
        self, model, inputs, additional_forward_args, embedding_layer, select, guard, sources, input_side
    ):
        self.model, self.inputs, self.args = model, inputs, additional_forward_args
        self.embedding_layer, self.select = embedding_layer, select
        self.current: Optional[ForwardSource] = None
        self.value: Optional[torch.Tensor] = None
        self.replaced = False
        self.embedded: List[torch.Tensor] = []
        for module in {s.layer for s in sources if s.layer is not None}:
            if input_side:
                guard.register_forward_pre_hook(module, self._input_hook)
            else:
                guard.register_forward_hook(module, self._output_hook)
        if embedding_layer is not None:
            guard.register_forward_hook(embedding_layer, self._embedding_hook)

    def _substitute(self, module: nn.Module, value: Any) -> Any:
        if self.current is None or self.current.layer is not module:
            return None
        self.replaced = True
        # a clone: in-place operations downstream must not modify the jvp's primal
        return _replace(value, self.current.position, self.value.clone())

    def _output_hook(self, module, args, out):
        return self._substitute(module, out)

    def _input_hook(self, module, args):
        return self._substitute(module, tuple(args))

    def _embedding_hook(self, module, args, out):
        self.embedded.append(out)
        raise _Stop

    def __call__(self, source: ForwardSource, value: torch.Tensor) -> torch.Tensor:
        self.current, self.value, self.embedded = source, value, []
        self.replaced = source.layer is None
        inputs = self.inputs
        if source.layer is None:
            inputs = tuple(value if i == source.position else t for i, t in enumerate(inputs))
        try:
            out = run_forward(self.model, inputs, self.args)
        except _Stop:
            out = self.embedded[0]
        finally:
            self.current, self.value = None, None
        if not self.replaced:
            raise ValueError(
                "the embedding does not depend on a source layer (or input): check that embedding_layer "
                "comes after every entry of layer in the forward pass"
            )
        if self.embedding_layer is not None:
            out = self.embedded[0]
        return self.select(out.reshape(out.shape[0], -1))


def _auto_chunk(value: torch.Tensor, passes: int) -> int:
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
) -> List[torch.Tensor]:
    """Channel-aggregated per-dimension maps ``(N, D, *S)`` of each source, by forward mode.

    ``inputs`` are the model inputs (detached), ``select`` maps the flattened ``(N, D_all)``
    embedding to the explained ``(N, D)``; ``input_side`` says the layer sources are layer
    inputs. At most ``internal_batch_size`` tangents (each of the size of the source) are
    propagated together. Raises :class:`ForwardModeUnsupported` when an operation has no
    forward-mode or vmap rule. The model is left as it was (hooks, flags), also on errors.
    """
    out: List[torch.Tensor] = []
    with (
        ModelGuard(model, eval_mode=eval_mode, freeze_parameters=True, warn_train_mode=False) as guard,
        forward_mode_kernels(),
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
                shaped, adjoint = torch.func.vjp(src.transform, raw)
            act = _channels(shaped)
            spatial = tuple(act.shape[2:])
            act = act.reshape(act.shape[0], act.shape[1], -1)
            kind = _basis(method, channel_aggregator)
            passes = forward_passes(tuple(act.shape), method, channel_aggregator)
            chunk = internal_batch_size or _auto_chunk(raw, passes)

            def jvp_one(tangent, src=src, raw=raw):
                return torch.func.jvp(lambda v: run(src, v), (raw,), (tangent,))[1]

            products = []
            for a in range(0, passes, chunk):
                b = min(a + chunk, passes)
                t = _tangents(kind, method, act, a, b).reshape(b - a, *shaped.shape)
                t = t.reshape(b - a, *raw.shape) if adjoint is None else torch.func.vmap(adjoint)(t)[0]
                try:
                    products.append(torch.func.vmap(jvp_one)(t))  # (k, N, D)
                except (NotImplementedError, RuntimeError) as err:
                    raise ForwardModeUnsupported(
                        f"forward mode failed on this model ({type(err).__name__}: {err}); an operation "
                        'probably has no forward-mode or vmap rule: use strategy="loop" or "batched"'
                    ) from err
            maps = _combine(kind, method, torch.cat(products), act, channel_aggregator)
            out.append(maps.reshape(*maps.shape[:2], *spatial))
    return out
