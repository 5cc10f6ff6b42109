"""Capture what a layer computes during one forward pass: one mechanism for every caller.

A :class:`LayerCapture` is created by :meth:`ModelGuard.capture
<captum_concepts._utils.hooks.ModelGuard.capture>` and records the layer's output (or
input) only while :meth:`ModelGuard.forward <captum_concepts._utils.hooks.ModelGuard.forward>`
of its guard runs in the current thread: a forward pass started by anyone else (another
thread, user code between two of our passes) passes through untouched. A guard's forward
nested inside another's (an objective whose ``forward`` reads an encoder's layer through its
own guard) is part of the outer pass: the captures of both guards record there.

The recorded tensors are protected from in-place operations that run later in the same
forward pass (``nn.ReLU(inplace=True)`` after a batch norm, ``out += identity`` in a
residual block): with autograd recording, the layer's own tensor is kept and a clone is
handed to the rest of the model, so gradients w.r.t. the kept tensor are gradients w.r.t.
the value the downstream layers consume; without autograd, a clone is kept and the model
continues with its own tensor.
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["LayerCapture", "StopForward"]

_local = threading.local()


def running_forwards() -> Tuple[Any, ...]:
    """The guards whose :meth:`forward` runs in this thread, outermost first."""
    return getattr(_local, "guards", ())


class StopForward(Exception):
    """Ends a forward pass once a ``stop=True`` capture has its value (never leaves ``forward``)."""

    def __init__(self, guard: Any) -> None:
        super().__init__("internal: forward pass stopped after the captured layer")
        self.guard = guard


def _items(value: Any) -> Tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _rebuild(value: Any, items: List[Any]) -> Any:
    if not isinstance(value, (tuple, list)):
        return items[0]
    if hasattr(type(value), "_fields"):  # namedtuple
        return type(value)(*items)
    return type(value)(items)


class LayerCapture:
    """The output (or input) of one module, recorded at each call inside the guard's forward.

    Use :meth:`tensors` or :meth:`tensor` after :meth:`ModelGuard.forward`: both check that
    the module ran exactly once (a ``stop=True`` capture ends the pass at its first call, so
    it checks that the module ran at all).
    """

    def __init__(
        self,
        guard: Any,
        module: nn.Module,
        argument: str,
        of: str = "output",
        stop: bool = False,
        leaf: bool = False,
    ) -> None:
        if of not in ("output", "input"):
            raise ValueError(f"of must be 'output' or 'input', got {of!r}")
        self.guard = guard
        self.module = module
        self.argument = argument
        self.of = of
        self.stop = stop
        self.leaf = leaf
        self.records: List[Tuple[Any, Tuple[torch.Tensor, ...]]] = []

    # ------------------------------------------------------------------ hook side
    def forward_hook(self, _module, _args, output):
        return self._record(output)

    def forward_pre_hook(self, _module, args):
        return self._record(args)

    def _record(self, value: Any) -> Any:
        if not any(g is self.guard for g in running_forwards()) or (self.stop and self.records):
            return None
        items = _items(value)
        if not any(isinstance(t, torch.Tensor) for t in items):
            raise TypeError(
                f"the {self.of} of {self._describe()} holds no tensor (got {type(value).__name__})"
            )
        if self.stop:  # nothing downstream runs: no copy needed
            self._keep(value, items)
            raise StopForward(self.guard)
        if not torch.is_grad_enabled():
            kept = [t.clone() if isinstance(t, torch.Tensor) else t for t in items]
            self._keep(_rebuild(value, kept), kept)
            return None
        kept = []
        for t in items:
            if isinstance(t, torch.Tensor) and self.leaf and not t.requires_grad:
                # e.g. an embedding lookup of integer inputs with frozen weights: start the graph here
                if not (t.is_floating_point() or t.is_complex()):
                    raise ValueError(
                        f"the {self.of} of {self._describe()} has dtype {t.dtype}; "
                        "gradients need floating-point tensors"
                    )
                t = t.detach().requires_grad_(True)
            kept.append(t)
        passed = [t.clone() if isinstance(t, torch.Tensor) else t for t in kept]
        self._keep(_rebuild(value, kept), kept)
        return _rebuild(value, passed)

    def _keep(self, value: Any, items: Sequence[Any]) -> None:
        self.records.append((value, tuple(t for t in items if isinstance(t, torch.Tensor))))

    # ------------------------------------------------------------------ caller side
    def _describe(self) -> str:
        from .layers import layer_name

        name = layer_name(self.guard.model, self.module)
        return f"{self.argument}={name!r}" if name is not None else self.argument

    def _check_once(self) -> None:
        if not self.records:
            raise ValueError(f"{self._describe()} was never reached by the forward pass")
        if len(self.records) > 1:
            raise ValueError(
                f"{self._describe()} was run {len(self.records)} times in one forward pass; it must run "
                "exactly once (a module reused in forward cannot be told apart: give each use its own module)"
            )

    def value(self) -> Any:
        """The recorded output (or input tuple) as the module produced it."""
        self._check_once()
        return self.records[0][0]

    def tensors(self) -> Tuple[torch.Tensor, ...]:
        """The recorded tensors (non-tensor items of a tuple output are dropped)."""
        self._check_once()
        return self.records[0][1]

    def tensor(self) -> torch.Tensor:
        """The recorded value, which must be one tensor."""
        value = self.value()
        if self.of == "input":
            value = value[0] if len(value) == 1 else value
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{self._describe()} returns {type(value).__name__}; a layer whose {self.of} is one tensor "
                "is needed here"
            )
        return value

    def clear(self) -> None:
        self.records = []


def forward_once(guard: Any, captures: List[LayerCapture], fn, *args, **kwargs) -> Optional[Any]:
    """Run ``fn(*args, **kwargs)`` with ``captures`` recording; None if a capture stopped it."""
    for capture in captures:
        capture.clear()
    previous = running_forwards()
    _local.guards = previous + (guard,)  # the innermost running forward of this thread
    try:
        return fn(*args, **kwargs)
    except StopForward as stop:
        if stop.guard is not guard:
            raise
        return None
    finally:
        _local.guards = previous
