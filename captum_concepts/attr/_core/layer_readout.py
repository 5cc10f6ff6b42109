"""An encoder's embedding as a function of its inputs, read through :meth:`ModelGuard.capture`.

Used where a scalar or vector function of an inner layer must look like a model output, so that
:class:`EmbeddingAttribution` can explain it: the similarity of two embeddings, a concept's
coefficient. The capture itself (exactly once, safe from later in-place operations, this thread
only) is :meth:`ModelGuard.capture <captum_concepts._utils.hooks.ModelGuard.capture>`; this module
only names the layer in errors and checks the batch dimension.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..._utils.capture import LayerCapture
from ..._utils.hooks import ModelGuard

__all__ = ["LayerReadout", "Readouts"]


class LayerReadout:
    """The output of ``layer`` of ``model`` (``layer=None``: the model output); ``name`` is the
    argument named in errors. :meth:`read` works inside :class:`Readouts`."""

    def __init__(self, model: nn.Module, layer: Optional[nn.Module], name: str) -> None:
        self.model = model
        self.layer = layer
        self.name = name
        self._guard: Optional[ModelGuard] = None
        self._capture: Optional[LayerCapture] = None

    def read(
        self, inputs: Tuple[torch.Tensor, ...], extra: Tuple[Any, ...], flatten: bool = True
    ) -> torch.Tensor:
        """Run ``model(*inputs, *extra)``; return the embedding, ``(N, -1)`` if ``flatten``."""
        if self._guard is None:
            raise RuntimeError("LayerReadout.read runs inside 'with Readouts(...)'")
        out = self._guard.forward(self.model, *inputs, *extra)
        if self._capture is not None:
            z = self._capture.tensor()
        elif isinstance(out, torch.Tensor):
            z = out
        else:
            raise TypeError(
                f"the model output is the embedding ({self.name}=None) and must be a tensor, got "
                f"{type(out).__name__}; pass {self.name}"
            )
        n = inputs[0].shape[0]
        if z.dim() == 0 or z.shape[0] != n:
            raise ValueError(f"the embedding has shape {tuple(z.shape)}; expected batch size {n} first")
        return z.reshape(n, -1) if flatten else z


class Readouts:
    """Context manager: one :class:`ModelGuard` per distinct model of ``embeddings`` (eval mode
    when asked) with each embedding layer captured; all undone on exit, also after an exception."""

    def __init__(self, embeddings: Sequence[LayerReadout], eval_mode: bool = False) -> None:
        self.embeddings = embeddings
        self.eval_mode = eval_mode
        self._stack = ExitStack()

    def __enter__(self) -> Readouts:
        with ExitStack() as stack:
            guards: List[ModelGuard] = []
            for e in self.embeddings:
                guard = next((g for g in guards if g.model is e.model), None)
                if guard is None:
                    guard = ModelGuard(e.model, eval_mode=self.eval_mode, warn_train_mode=False)
                    stack.enter_context(guard)
                    guards.append(guard)
                e._guard = guard
                e._capture = None if e.layer is None else guard.capture(e.layer, e.name)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._stack.close()
        finally:
            for e in self.embeddings:
                e._guard = e._capture = None
