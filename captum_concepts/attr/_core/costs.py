"""What one pass of each strategy costs: the cost model behind ``strategy="auto"``.

Reverse mode runs one vector-Jacobian product per embedding dimension through the *head* (the
layers between the source layer and the embedding); forward mode runs one Jacobian-vector product
per source pixel (or channel, or element) through the same head, and, once per chunk of
tangents, the layers *below* the source again. Counting passes alone misses that a pass through
a head of one pooling layer costs next to nothing while re-running the layers below costs a
forward pass of most of the network. :class:`PassCosts` holds the work of the two parts of the
first forward pass, counted while it runs (:class:`WorkCounter`): floating-point operations of
the matrix products and convolutions (PyTorch's own FLOP formulas) and elements written by every
other operation (memory traffic, priced per element). The prices are relative, in FLOP
equivalents, so the comparison does not depend on the speed of the machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["PassCosts", "WorkCounter", "WorkProbe"]

# FLOP equivalents of one element written by an element-wise, pooling or normalisation op
# (memory-bound: about what a CPU core does in FLOPs while it moves one float).
ELEMENT_PRICE = 16.0
# Fixed price of one backward call (autograd engine, the one-hot seed, the gradient buffers).
BACKWARD_OVERHEAD = 6e6
# Price of one tangent through the head relative to one vector-Jacobian product through it: the
# products of a chunk run as one vmapped (batched) pass, which uses the hardware better.
JVP_PRICE = 0.7
# Element-wise passes over the source per dimension in reverse mode (the gradient, F * gradient,
# the channel reduction) and per tangent in forward mode (building it, the clone handed on).
REVERSE_SOURCE_PASSES = 3.0
FORWARD_SOURCE_PASSES = 2.0


@dataclass(frozen=True)
class PassCosts:
    """The work of one forward pass, split at a source layer.

    Attributes:
        below (tuple): ``(flops, elements)`` from the model inputs to the source layer.
        head (tuple): ``(flops, elements)`` from the source layer to the embedding.
        source_elements (int): elements of the source tensor(s), whole batch.
    """

    below: Tuple[float, float]
    head: Tuple[float, float]
    source_elements: float

    def _work(self, part: Tuple[float, float]) -> float:
        return part[0] + ELEMENT_PRICE * part[1]

    def reverse(self, n_dims: int, chunk: int = 1) -> float:
        """Predicted price of ``n_dims`` vector-Jacobian products, ``chunk`` per backward call
        (1: ``"loop"``; ``"batched"`` runs ``chunk`` per call)."""
        per_dim = self._work(self.head) + ELEMENT_PRICE * REVERSE_SOURCE_PASSES * self.source_elements
        return n_dims * per_dim + math.ceil(n_dims / max(chunk, 1)) * BACKWARD_OVERHEAD

    def forward(self, passes: int, chunk: int) -> float:
        """Predicted price of ``passes`` Jacobian-vector products, ``chunk`` per pass of the model
        (each pass runs the layers below once and the head once for its primal)."""
        per_tangent = JVP_PRICE * self._work(self.head) + (
            ELEMENT_PRICE * FORWARD_SOURCE_PASSES * self.source_elements
        )
        per_chunk = self._work(self.below) + self._work(self.head) + BACKWARD_OVERHEAD
        return passes * per_tangent + math.ceil(passes / max(chunk, 1)) * per_chunk


def _flop_formulas() -> dict:
    try:
        from torch.utils.flop_counter import flop_registry
    except ImportError:  # pragma: no cover - older torch
        return {}
    return dict(flop_registry)


class WorkCounter(TorchDispatchMode):
    """Counts, while active, the FLOPs of matrix products and convolutions and the elements
    written by every other (non-view) operation. :meth:`read` gives the running totals, so a
    forward hook can split one pass at a layer. Thread-local, like every dispatch mode."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0.0
        self.elements = 0.0
        self._formulas = _flop_formulas()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self._formulas.get(getattr(func, "_overloadpacket", None))
        if formula is not None:
            try:
                self.flops += float(formula(*args, **kwargs, out_val=out))
            except Exception:  # a formula that does not know these arguments: count nothing
                pass
        elif not getattr(func, "is_view", False):
            self.elements += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out

    def read(self) -> Tuple[float, float]:
        """``(flops, elements)`` so far."""
        return self.flops, self.elements


class WorkProbe:
    """Splits the work of one forward pass at each source layer and at the embedding.

    Register it inside a guard before the pass and run the pass inside ``with probe:``; then
    :meth:`costs` gives each layer's :class:`PassCosts`. The counter reads its totals in forward
    hooks (pre-hooks for layer inputs) registered through the guard.
    """

    def __init__(self, guard: Any, layers: Sequence[Any], embedding_layer: Any, of: str) -> None:
        self.counter = WorkCounter()
        self.at: Dict[Any, Tuple[float, float]] = {}
        self.end: Optional[Tuple[float, float]] = None
        for layer in {lay for lay in layers if lay is not None}:
            if of == "input":
                guard.register_forward_pre_hook(layer, lambda m, args: self._mark(m))
            else:
                guard.register_forward_hook(layer, lambda m, args, out: self._mark(m))
        if embedding_layer is not None:
            guard.register_forward_hook(embedding_layer, lambda m, args, out: self._end())

    def _mark(self, module: Any) -> None:
        self.at.setdefault(module, self.counter.read())

    def _end(self) -> None:
        if self.end is None:
            self.end = self.counter.read()

    def __enter__(self) -> WorkProbe:
        self.counter.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.counter.__exit__(*exc)
        self._end()

    def costs(self, layer: Any, source_elements: int) -> PassCosts:
        """The :class:`PassCosts` of ``layer`` (None: the model inputs)."""
        below = (0.0, 0.0) if layer is None else self.at.get(layer, (0.0, 0.0))
        end = self.end or self.counter.read()
        head = (end[0] - below[0], end[1] - below[1])
        return PassCosts(below=below, head=head, source_elements=float(source_elements))
