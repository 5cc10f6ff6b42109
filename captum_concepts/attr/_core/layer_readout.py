"""Read a layer's output inside a model's forward pass (private helpers).

Used where a scalar or vector function of an inner layer must look like a model output, so that
:class:`EmbeddingAttribution` can explain it: the similarity of two embeddings, a concept's
coefficient.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..._utils.hooks import ModelGuard
from ..._utils.layers import layer_name

__all__ = ["LayerReadout", "hook_readouts"]


class LayerReadout:
    """Reads one layer's output (or the model output) of a model during a forward pass.

    ``layer=None`` reads the model output. The hook goes on a guard from :func:`hook_readouts`.
    """

    def __init__(self, model: nn.Module, layer: Optional[nn.Module], name: str) -> None:
        self.model = model
        self.layer = layer
        self.name = name
        self.captured: List[torch.Tensor] = []

    def hook(self, guard: ModelGuard) -> None:
        if self.layer is None:
            return

        def capture(module, args, out):
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"{self.name} {layer_name(self.model, module)!r} must output a tensor, "
                    f"got {type(out).__name__}"
                )
            self.captured.append(out)

        guard.register_forward_hook(self.layer, capture)

    def read(
        self, inputs: Tuple[torch.Tensor, ...], extra: Tuple[Any, ...], flatten: bool = True
    ) -> torch.Tensor:
        """Run ``model(*inputs, *extra)``; return the read tensor, ``(N, -1)`` if ``flatten``."""
        self.captured.clear()
        out = self.model(*inputs, *extra)
        if self.layer is None:
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"the model output is the embedding ({self.name}=None) and must be a tensor, got "
                    f"{type(out).__name__}; pass {self.name}"
                )
            z = out
        else:
            if len(self.captured) != 1:
                raise ValueError(
                    f"{self.name} ran {len(self.captured)} times in one forward pass; "
                    "it must run exactly once"
                )
            z = self.captured[0]
        n = inputs[0].shape[0]
        if z.dim() == 0 or z.shape[0] != n:
            raise ValueError(f"the embedding has shape {tuple(z.shape)}; expected batch size {n} first")
        return z.reshape(n, -1) if flatten else z


class hook_readouts:
    """Context manager: one ModelGuard per distinct model of ``readouts`` (hooks only, eval mode when
    asked), with every readout's hook registered; all undone on exit, also after an exception."""

    def __init__(self, readouts: Sequence[LayerReadout], eval_mode: bool = False) -> None:
        seen: List[nn.Module] = []
        self.readouts = readouts
        self.guards = []
        for t in readouts:
            if not any(t.model is m for m in seen):
                seen.append(t.model)
                self.guards.append(ModelGuard(t.model, eval_mode=eval_mode, warn_train_mode=False))
        self._entered: List[ModelGuard] = []

    def __enter__(self):
        try:
            for g in self.guards:
                g.__enter__()
                self._entered.append(g)
            by_model = {id(g.model): g for g in self.guards}
            for t in self.readouts:
                t.hook(by_model[id(t.model)])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self._entered:
            self._entered.pop().__exit__(None, None, None)
