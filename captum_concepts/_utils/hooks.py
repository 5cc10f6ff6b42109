"""One context manager for every hook and temporary model change we make.

Every class in captum_concepts that touches a model goes through
:class:`ModelGuard`. On exit -- normal or by exception -- it removes every hook
it registered, restores each module's train/eval flag, each parameter's
``requires_grad`` flag and every attribute it was asked to change (for example
``ReLU.inplace``). This is the Zennit pattern (a composite used as a context
manager) applied to Captum-style attribution code.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["ModelGuard"]

_MISSING = object()


class ModelGuard:
    """Register hooks and temporary changes on ``model``; undo all of them on exit.

    Args:
        model (nn.Module): the model to guard.
        eval_mode (bool, optional): if True (default) the whole model runs in eval
            mode inside the block, so dropout and batch-norm statistics do not
            change explanations; the original per-module flags come back on exit.
            A model that was in training mode triggers a ``UserWarning`` once per
            guard, because its explanations would otherwise differ from a plain
            ``model(x)`` call in training mode. Pass ``eval_mode=False`` to keep
            the model's mode untouched.
        freeze_parameters (bool, optional): if True, parameters get
            ``requires_grad=False`` inside the block (gradients w.r.t. inputs or
            activations need no parameter gradients, and none are accumulated
            into ``.grad``). Default: False.
        warn_train_mode (bool, optional): emit the training-mode warning. Default: True.

    Example::

        with ModelGuard(model) as guard:
            guard.register_forward_hook(model.layer1, save_output)
            model(x)
        # here: no hooks left, modes and flags as before, even after an exception
    """

    def __init__(
        self,
        model: nn.Module,
        eval_mode: bool = True,
        freeze_parameters: bool = False,
        warn_train_mode: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.eval_mode = eval_mode
        self.freeze_parameters = freeze_parameters
        self.warn_train_mode = warn_train_mode
        self._handles: List[RemovableHandle] = []
        self._training: Dict[nn.Module, bool] = {}
        self._requires_grad: Dict[torch.nn.Parameter, bool] = {}
        self._attributes: List[Tuple[Any, str, Any]] = []
        self._active = False

    # ------------------------------------------------------------------ entry/exit
    def __enter__(self) -> ModelGuard:
        if self._active:
            raise RuntimeError("a ModelGuard cannot be entered twice")
        self._active = True
        self._training = {m: m.training for m in self.model.modules()}
        self._requires_grad = {p: p.requires_grad for p in self.model.parameters()}
        try:
            if self.eval_mode:
                if self.warn_train_mode and self.model.training:
                    warnings.warn(
                        "model is in training mode; captum_concepts computes explanations "
                        "in eval mode and restores training mode afterwards "
                        "(pass eval_mode=False to keep the mode as it is)",
                        UserWarning,
                        stacklevel=3,
                    )
                self.model.eval()
            if self.freeze_parameters:
                for p in self._requires_grad:
                    p.requires_grad_(False)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._restore()

    def _restore(self) -> None:
        errors: List[BaseException] = []
        while self._handles:
            handle = self._handles.pop()
            try:
                handle.remove()
            except BaseException as err:  # keep restoring the rest
                errors.append(err)
        while self._attributes:
            obj, name, old = self._attributes.pop()
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)
        for module, flag in self._training.items():
            module.training = flag
        for param, flag in self._requires_grad.items():
            param.requires_grad_(flag)
        self._training = {}
        self._requires_grad = {}
        self._active = False
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ registration
    def _check_active(self) -> None:
        if not self._active:
            raise RuntimeError("register hooks inside the 'with ModelGuard(...)' block")

    def _keep(self, handle: RemovableHandle) -> RemovableHandle:
        self._handles.append(handle)
        return handle

    def register_forward_hook(self, module: nn.Module, hook: Callable, **kwargs) -> RemovableHandle:
        """``module.register_forward_hook(hook, **kwargs)``, removed on exit."""
        self._check_active()
        return self._keep(module.register_forward_hook(hook, **kwargs))

    def register_forward_pre_hook(self, module: nn.Module, hook: Callable, **kwargs) -> RemovableHandle:
        """``module.register_forward_pre_hook(hook, **kwargs)``, removed on exit."""
        self._check_active()
        return self._keep(module.register_forward_pre_hook(hook, **kwargs))

    def register_full_backward_hook(self, module: nn.Module, hook: Callable, **kwargs) -> RemovableHandle:
        """``module.register_full_backward_hook(hook, **kwargs)``, removed on exit."""
        self._check_active()
        return self._keep(module.register_full_backward_hook(hook, **kwargs))

    def register_tensor_hook(self, tensor: torch.Tensor, hook: Callable) -> RemovableHandle:
        """``tensor.register_hook(hook)``, removed on exit."""
        self._check_active()
        return self._keep(tensor.register_hook(hook))

    def set_attribute(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value`` for the duration of the block (e.g. ``ReLU.inplace``)."""
        self._check_active()
        self._attributes.append((obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)

    @property
    def n_hooks(self) -> int:
        """Number of hooks currently registered through this guard."""
        return len(self._handles)


def count_hooks(model: nn.Module) -> int:
    """Total number of module hooks registered anywhere in ``model`` (for tests)."""
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            total += len(getattr(m, attr, {}) or {})
    return total


def model_state(model: nn.Module) -> Dict[str, Any]:
    """A snapshot of what :class:`ModelGuard` promises to restore (for tests)."""
    return {
        "hooks": count_hooks(model),
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "relu_inplace": {name: m.inplace for name, m in model.named_modules() if isinstance(m, nn.ReLU)},
    }


def assert_same_state(before: Dict[str, Any], model: nn.Module) -> None:
    """Raise ``AssertionError`` if ``model`` differs from the snapshot ``before``."""
    after = model_state(model)
    assert after["hooks"] == before["hooks"], f"hooks left: {after['hooks']} vs {before['hooks']}"
    assert after["training"] == before["training"], "train/eval flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    assert after["relu_inplace"] == before["relu_inplace"], "ReLU.inplace changed"
    for name, value in before["params"].items():
        assert torch.equal(value, after["params"][name]), f"parameter {name} changed"


__all__ += ["count_hooks", "model_state", "assert_same_state"]
