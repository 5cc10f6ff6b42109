"""Small modules the tests share."""

import torch
from torch import nn


class _NoForwardRule(torch.autograd.Function):
    """tanh with a backward but no jvp (no forward-mode rule)."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class TanhWithoutForwardRule(nn.Module):
    """``tanh`` whose autograd function has no forward-mode rule: forward mode fails on it."""

    def forward(self, x):
        return _NoForwardRule.apply(x)


def no_forward_rule_cnn() -> nn.Module:
    """A conv layer, a tanh without forward-mode rule and a 40-dimensional linear embedding (eval)."""
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), TanhWithoutForwardRule(), nn.Flatten(), nn.Linear(3 * 16, 40)
    ).eval()
