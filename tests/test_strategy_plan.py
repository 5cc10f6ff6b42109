"""One plan per source layer: ``plan()`` says what ``attribute()`` runs and why, ``plan_`` /
``strategy_`` report the plans that ran, a forward-mode failure gives a new reverse plan, and
``auto``'s cost model counts what a pass costs (a pooling head makes reverse products cheap)."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from _models import no_forward_rule_cnn
from torch import nn

from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.attr._core import forward_mode, strategies
from captum_concepts.attr._core.strategies import Plan
from captum_concepts.testing import count_hooks


def _pooled_cnn(width=64, depth=6, dims=64):
    """Heavy convolutions at 32x32, a stride-8 pooling to 4x4, a 1x1 convolution (the source),
    then a pooling head."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.Softplus()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.Softplus()]
    layers += [nn.AvgPool2d(8), nn.Conv2d(width, dims, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers).eval()


def test_work_of_the_pass_is_split_at_the_source_layer():
    """Linear layers count their FLOPs (2 x rows x in x out), other modules their output elements;
    the source layer's own work belongs below it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Softplus(), nn.Linear(7, 30)).eval()
    x = torch.randn(3, 5)
    costs = EmbeddingAttribution(model, None, "1", "gradient", "mean", "var").plan(x).costs
    assert costs.below == (2 * 3 * 5 * 7, 3 * 7)
    assert costs.head == (2 * 3 * 7 * 30, 0) and costs.source_elements == 3 * 7
    inputs = EmbeddingAttribution(model, None, None, "gradient", "mean", "var").plan(x).costs
    assert inputs.below == (0, 0) and inputs.head == (2 * 3 * (5 * 7 + 7 * 30), 3 * 7)


def test_pooling_head_runs_reverse_mode_though_few_pixels():
    """16 source pixels against 64 dimensions: counting passes picks forward mode; the cost model
    sees that every forward chunk repeats the heavy convolutions while a reverse product only
    runs a pooling head, and picks reverse mode. The maps equal the reverse reference."""
    model = _pooled_cnn()
    x = torch.randn(2, 3, 32, 32)
    ea = EmbeddingAttribution(model, None, "13", "activation_gradient", "mean", "var")
    plan = ea.plan(x)
    assert isinstance(plan, Plan) and plan.passes == 16 and plan.strategy == "loop"
    assert "predicted cost" in plan.reason and plan.costs.below[0] > 0 and plan.costs.head[0] == 0
    got = ea.attribute(x)
    assert ea.strategy_ == "loop" and ea.plan_ == plan
    ref = EmbeddingAttribution(model, None, "13", "activation_gradient", "mean", "var", strategy="forward")
    want = ref.attribute(x)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def test_deep_head_runs_forward_mode(digits_cnn, digits):
    x = digits.x_test[:5]
    ea = EmbeddingAttribution(digits_cnn, "embedding", ["block1.relu", "block3.relu"])
    plans = ea.plan(x)
    assert [p.strategy for p in plans] == ["loop", "forward"]
    assert plans[1].chunk == plans[1].passes == 16 and plans[1].costs is not None
    ea.attribute(x)
    assert ea.plan_ == plans and ea.strategy_ == ["loop", "forward"]


def test_plans_of_explicit_and_linear_strategies(digits_cnn, digits):
    x = digits.x_test[:3]
    linear = EmbeddingAttribution(digits_cnn, "embedding", "block3.relu", embedding_aggregator="mean")
    plan = linear.plan(x)
    assert plan.strategy == "linear" and plan.costs is None and plan.chunk is None
    loop = EmbeddingAttribution(digits_cnn, "embedding", "block3.relu", strategy="batched")
    plan = loop.plan(x, internal_batch_size=5)
    assert plan.strategy == "batched" and plan.chunk == 5 and "requested" in plan.reason
    assert count_hooks(digits_cnn) == 0


def test_fallback_is_a_new_plan():
    torch.manual_seed(0)
    model = no_forward_rule_cnn()
    x = torch.randn(2, 1, 6, 6)
    ea = EmbeddingAttribution(model, None, ["0", "1"], "activation_gradient", "mean", "var")
    planned = ea.plan(x)
    assert [p.strategy for p in planned] == ["forward", "forward"]
    ea.attribute(x)
    assert ea.strategy_ == ["loop", "loop"]
    for before, ran in zip(planned, ea.plan_):
        assert ran.strategy == "loop" and "forward mode unsupported" in ran.reason
        assert ran.passes == before.passes and ran.chunk >= 1


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * 2


def test_forward_mode_stops_at_the_embedding_layer():
    """Forward mode reads the embedding through a stopping capture: the layers after it run only
    in the first pass."""
    torch.manual_seed(0)
    after = _Counting()
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Softplus(), nn.Flatten(), nn.Linear(3 * 16, 40), after
    ).eval()  # fmt: skip
    x = torch.randn(2, 1, 6, 6)
    ea = EmbeddingAttribution(model, "3", "1", "gradient", "mean", "var", strategy="forward")
    got = ea.attribute(x)
    assert after.calls == 1 and count_hooks(model) == 0
    want = EmbeddingAttribution(model, "3", "1", "gradient", "mean", "var", strategy="loop").attribute(x)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("strategy", ["auto", "forward"])
def test_plan_refuses_inference_mode(digits_cnn, digits, strategy):
    ea = EmbeddingAttribution(digits_cnn, "embedding", "block3.relu", strategy=strategy)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        ea.plan(digits.x_test[:2])


_DECISIONS = ("reverse_strategy", "strategy_and_reason", "forward_passes", "forward_chunk", "reverse_chunk")


def _decisions_of(call):
    """How often each decision function runs during ``call()``, wherever it is called from (the
    planner's module or the forward-mode module)."""
    with contextlib.ExitStack() as stack:
        mocks = {name: [] for name in _DECISIONS}
        for module in (strategies, forward_mode):
            for name in _DECISIONS:
                if hasattr(module, name):
                    wrapped = mock.patch.object(module, name, wraps=getattr(module, name))
                    mocks[name].append(stack.enter_context(wrapped))
        call()
        return {name: sum(m.call_count for m in found) for name, found in mocks.items()}


def test_each_decision_is_made_once_per_call(digits_cnn, digits):
    """A call with a reverse and a forward source layer: the reverse strategy is decided once, the
    strategy once per layer, the passes and the forward chunk once per source tensor, the reverse
    chunk once per reverse sweep (the shared sweep and the fallback that would replace the forward
    source); the executors run what the plan holds."""
    x = digits.x_test[:5]
    ea = EmbeddingAttribution(digits_cnn, "embedding", ["block1.relu", "block3.relu"])
    counts = _decisions_of(lambda: ea.attribute(x, show_progress=False))
    assert ea.strategy_ == ["loop", "forward"]
    once = {"reverse_strategy": 1, "strategy_and_reason": 2, "forward_passes": 2, "forward_chunk": 2}
    assert counts == {**once, "reverse_chunk": 2}


def test_fallback_runs_the_planned_sweep():
    """Forward mode fails on both layers: the fallback sweep the planner emitted runs, nothing is
    decided again (one reverse strategy, one reverse chunk: no reverse sweep was planned)."""
    torch.manual_seed(0)
    model = no_forward_rule_cnn()
    x = torch.randn(2, 1, 6, 6)
    ea = EmbeddingAttribution(model, None, ["0", "1"], "activation_gradient", "mean", "var")
    counts = _decisions_of(lambda: ea.attribute(x, show_progress=False))
    assert ea.strategy_ == ["loop", "loop"]
    assert counts["reverse_strategy"] == 1 and counts["reverse_chunk"] == 1
    assert counts["strategy_and_reason"] == counts["forward_passes"] == counts["forward_chunk"] == 2


def test_program_holds_the_units_that_run(digits_cnn, digits):
    """The planner's program: one reverse sweep with the reverse plan's strategy, chunk and
    transform; one forward source with the forward plan's passes, chunk and transform; under
    ``"auto"`` a fallback sweep over the forward source."""
    x = digits.x_test[:5]
    ea = EmbeddingAttribution(digits_cnn, "embedding", ["block1.relu", "block3.relu"])
    seen = {}
    run_sweep, forward_maps = strategies.run_sweep, forward_mode.forward_maps

    def sweep_spy(job, sweep, *args, **kwargs):
        seen["sweep"] = sweep
        return run_sweep(job, sweep, *args, **kwargs)

    def forward_spy(model, inputs, sources, **kwargs):
        seen["forward"] = list(sources)
        return forward_maps(model, inputs, sources, **kwargs)

    where = "captum_concepts.attr._core.embedding_attribution"
    with mock.patch(f"{where}.run_sweep", sweep_spy), mock.patch(f"{where}.forward_maps", forward_spy):
        ea.attribute(x, show_progress=False)
    reverse, forward = ea.plan_
    assert seen["sweep"] == strategies.Sweep("loop", reverse.chunk, (0,), (reverse.transform,))
    (src,) = seen["forward"]
    assert src.layer is digits_cnn.block3.relu and src.position == 0 and src.transform is forward.transform
    assert src.passes == forward.passes == 16 and src.chunk == forward.chunk
