"""Helpers for tests of code that uses captum_concepts (as ``captum.testing`` for Captum).

:func:`model_state` snapshots what :class:`~captum_concepts._utils.hooks.ModelGuard`
promises to restore; :func:`assert_same_state` compares a model with such a snapshot;
:func:`count_hooks` counts the module hooks registered anywhere in a model.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

__all__ = ["count_hooks", "model_state", "assert_same_state"]

def count_hooks(model: nn.Module) -> int:
    """Total number of module hooks registered anywhere in ``model``."""
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
    """A snapshot of what :class:`ModelGuard` promises to restore."""
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
