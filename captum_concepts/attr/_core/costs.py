"""What one pass of each strategy costs: the cost model behind ``strategy="auto"``.

Reverse mode runs one vector-Jacobian product per embedding dimension through the *head* (the
layers between the source layer and the embedding); forward mode runs one Jacobian-vector product
per source pixel (or channel, or element) through the same head, and, once per chunk of
tangents, the layers *below* the source again. Counting passes alone misses that a pass through
a head of one pooling layer costs next to nothing while re-running the layers below costs a
forward pass of most of the network. :class:`PassCosts` holds the work of the two parts of the
first forward pass, counted while it runs (:class:`WorkProbe`): floating-point operations of
the convolutions, linear layers and attention modules and elements output by every other leaf
module (memory traffic, priced per element). The prices are relative, in FLOP
equivalents, so the comparison does not depend on the speed of the machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..._utils.warn import warn_user
from .aggregators import is_mean

__all__ = ["MANY_PASSES", "PassCosts", "WorkProbe", "gradient_passes", "warn_if_costly"]

# The prices, in FLOP equivalents, were fitted on CPU (one and two threads) to the timings of
# benchmarks/embedding_attribution_real.py (torchvision ResNets and ViT-B/16); the same relative
# prices are used on other devices.
#
# One element written by an element-wise, pooling or normalisation op (memory-bound: about what
# a CPU core does in FLOPs while it moves one float).
ELEMENT_PRICE = 16.0
# Fixed price of one backward call (autograd engine, the one-hot seed, the gradient buffers), and
# of one forward pass of forward mode.
BACKWARD_OVERHEAD = 7.5e6
# One vector-Jacobian product through the head, relative to the head's forward work (the
# parameters need no gradients).
VJP_PRICE = 0.9
# One tangent through the head, relative to the head's forward work: the tangents of a chunk run
# as one vmapped (batched) pass, which uses the hardware better than single passes.
JVP_PRICE = 0.55
# Element-wise passes over the source per dimension in reverse mode (the gradient, F * gradient,
# the channel reduction, the one-hot seed) and per tangent in forward mode (building it, the clone
# handed on).
REVERSE_SOURCE_PASSES = 4.0
FORWARD_SOURCE_PASSES = 2.0

# A call whose plans need more gradient passes than this (vector-Jacobian products of reverse mode
# plus Jacobian-vector products of forward mode) warns before it starts, naming the cheaper choices.
# A pass through a ResNet-18-sized head takes about a tenth of a second for a small batch on two
# CPU cores, so a few hundred passes is where a call starts to take minutes, and the default
# "var" over ResNet-18's 512 dimensions (or "abs" over 1000 logits) is above it.
MANY_PASSES = 256


@dataclass(frozen=True)
class PassCosts:
    """The work of one forward pass, split at a source layer.

    Attributes:
        below (tuple): ``(flops, elements)`` from the model inputs to the source layer.
        head (tuple): ``(flops, elements)`` from the source layer to the embedding.
        source_elements (int): elements of the source tensor(s), whole batch.

    Example::

        from captum_concepts.attr import EmbeddingAttribution

        ea = EmbeddingAttribution(model, embedding_layer="embedding_relu", layer="block2.relu")
        costs = ea.plan(data.x_test[:4]).costs  # counted during the first forward pass
        if costs is not None:
            costs.reverse(n_dims=32), costs.forward(passes=16, chunk=16)  # predicted FLOP equivalents
    """

    below: Tuple[float, float]
    head: Tuple[float, float]
    source_elements: float

    def _work(self, part: Tuple[float, float]) -> float:
        return part[0] + ELEMENT_PRICE * part[1]

    def reverse(self, n_dims: int, chunk: int = 1) -> float:
        """Predicted price of ``n_dims`` vector-Jacobian products, ``chunk`` per backward call
        (1: ``"loop"``; ``"batched"`` runs ``chunk`` per call)."""
        per_dim = VJP_PRICE * self._work(self.head) + (
            ELEMENT_PRICE * REVERSE_SOURCE_PASSES * self.source_elements
        )
        return n_dims * per_dim + math.ceil(n_dims / max(chunk, 1)) * BACKWARD_OVERHEAD

    def forward(self, passes: int, chunk: int) -> float:
        """Predicted price of ``passes`` Jacobian-vector products, ``chunk`` per pass of the model
        (each pass runs the layers below once and the head once for its primal)."""
        per_tangent = JVP_PRICE * self._work(self.head) + (
            ELEMENT_PRICE * FORWARD_SOURCE_PASSES * self.source_elements
        )
        per_chunk = self._work(self.below) + self._work(self.head) + BACKWARD_OVERHEAD
        return passes * per_tangent + math.ceil(passes / max(chunk, 1)) * per_chunk


def _tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _conv_flops(module: Any, args: Any, out: torch.Tensor) -> float:
    per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
    if getattr(module, "transposed", False):  # each input element feeds out_channels / groups outputs
        return 2.0 * args[0].numel() * module.out_channels // module.groups * math.prod(module.kernel_size)
    return 2.0 * out.numel() * per_output


def _linear_flops(module: Any, args: Any, out: torch.Tensor) -> float:
    return 2.0 * out.numel() * module.in_features


def _attention_flops(module: Any, args: Any, out: Any) -> float:
    query, key = args[0], args[1] if len(args) > 1 else args[0]
    batched = query.dim() == 3
    lq = query.shape[1 if module.batch_first and batched else 0]
    lk = key.shape[1 if module.batch_first and batched else 0]
    n = query.numel() // (lq * module.embed_dim)
    e = module.embed_dim
    projections = 2.0 * n * (lq * e * e + 2 * lk * e * module.kdim) + 2.0 * n * lq * e * e
    return projections + 4.0 * n * lq * lk * e  # + Q K^T and the weighted sum of V


_FLOPS: Sequence[Tuple[type, Callable[[Any, Any, Any], float]]] = (
    (nn.modules.conv._ConvNd, _conv_flops),
    (nn.Linear, _linear_flops),
    (nn.MultiheadAttention, _attention_flops),
)


class WorkProbe:
    """Splits the work of one forward pass at each source layer and at the embedding.

    Counted per module call: the FLOPs of convolutions, linear layers and attention (from their
    shapes) and the elements every other leaf module outputs. Register the probe inside a guard
    before the pass and run the pass inside ``with probe:``; then :meth:`costs` gives each
    layer's :class:`PassCosts`. Its hooks go through the guard (removed on exit).
    """

    def __init__(self, guard: Any, layers: Sequence[Any], embedding_layer: Any, of: str) -> None:
        self.flops = 0.0
        self.elements = 0.0
        self.active = False
        self.at: Dict[Any, Tuple[float, float]] = {}
        self.end: Optional[Tuple[float, float]] = None
        skip = set()
        for module in guard.model.modules():
            if module in skip:
                continue
            formula = next((f for kind, f in _FLOPS if isinstance(module, kind)), None)
            if formula is not None or not any(True for _ in module.children()):
                guard.register_forward_hook(module, self._counter(formula))
            if isinstance(module, nn.MultiheadAttention):  # its projections run inside it
                skip.update(module.modules())
        for layer in {lay for lay in layers if lay is not None}:
            if of == "input":
                guard.register_forward_pre_hook(layer, lambda m, args: self._mark(m))
            else:
                guard.register_forward_hook(layer, lambda m, args, out: self._mark(m))
        if embedding_layer is not None:
            guard.register_forward_hook(embedding_layer, lambda m, args, out: self._end())

    def _counter(self, formula: Any) -> Callable:
        def count(module: Any, args: Any, out: Any) -> None:
            if not self.active:
                return
            if formula is not None:
                try:
                    self.flops += float(formula(module, args, out))
                    return
                except (AttributeError, IndexError, TypeError, ZeroDivisionError):
                    pass  # an unusual call: count its elements instead
            self.elements += sum(t.numel() for t in _tensors(out))

        return count

    def read(self) -> Tuple[float, float]:
        """``(flops, elements)`` so far."""
        return self.flops, self.elements

    def _mark(self, module: Any) -> None:
        if self.active:
            self.at.setdefault(module, self.read())

    def _end(self) -> None:
        if self.active and self.end is None:
            self.end = self.read()

    def __enter__(self) -> WorkProbe:
        self.active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._end()
        self.active = False

    def costs(self, layer: Any, source_elements: int) -> PassCosts:
        """The :class:`PassCosts` of ``layer`` (None: the model inputs)."""
        below = (0.0, 0.0) if layer is None else self.at.get(layer, (0.0, 0.0))
        end = self.end or self.read()
        head = (end[0] - below[0], end[1] - below[1])
        return PassCosts(below=below, head=head, source_elements=float(source_elements))


def gradient_passes(plans: Sequence[Any], n_dims: int) -> int:
    """The gradient passes a call with these plans runs: one backward pass for the linear case,
    ``n_dims`` vector-Jacobian products for the reverse sweep (shared by every reverse layer) and
    each forward plan's passes of the model (its ``plan.passes`` Jacobian-vector products, ``chunk``
    tangents vmapped per pass)."""
    total = sum(math.ceil((p.passes or 0) / max(p.chunk or 1, 1)) for p in plans if p.strategy == "forward")
    if any(p.strategy in ("loop", "batched") for p in plans):
        total += n_dims
    if any(p.strategy == "linear" for p in plans):
        total += 1
    return total


def _name(how: Any) -> str:
    return repr(how) if isinstance(how, str) else getattr(how, "__name__", type(how).__name__)


def warn_if_costly(
    plans: Sequence[Any], n_dims: int, embedding_aggregator: Any, channel_aggregator: Any,
    return_per_dim: bool, where: str = "EmbeddingAttribution.attribute",
) -> None:  # fmt: skip
    """One ``UserWarning`` when ``plans`` need more than :data:`MANY_PASSES` gradient passes,
    saying why so many and what is cheaper."""
    total = gradient_passes(plans, n_dims)
    if total <= MANY_PASSES:
        return
    if not is_mean(embedding_aggregator):
        why = f"embedding_aggregator={_name(embedding_aggregator)} is not linear"
    elif not is_mean(channel_aggregator):
        why = f"channel_aggregator={_name(channel_aggregator)} is not linear"
    else:
        why = "return_per_dim=True" if return_per_dim else "the plan"
    warn_user(
        f"{where} will run {total} gradient passes over D = {n_dims} embedding dimensions ({why}: one "
        "pass per dimension in reverse mode, one per chunk of source positions in forward mode); this can "
        "take minutes. Cheaper: "
        "embedding_dims=[...] to explain fewer dimensions, embedding_aggregator='mean' with "
        "channel_aggregator='mean' (one backward pass), or fewer layers"
    )
