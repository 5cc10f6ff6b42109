"""Model-state guarantee (issue 9): every public method that touches a model leaves it as it was.

One parametrised test: 27 methods x 5 faults (none, an exception raised inside the forward
pass, one raised inside the backward pass by an autograd function, one raised by a full
backward hook, NaN features that the consuming code rejects) = 135 cases, each checked twice:
inside the ``except`` block, while the exception and its traceback are alive (as in a logger
or a REPL's ``sys.last_traceback``), and after it. A second sweep raises ``KeyboardInterrupt``
at evenly spaced module calls of each method. The model starts in a *mixed* state (training
mode with one block in eval mode, one block's parameters frozen) so that restoring "everything to
eval" or "everything to requires_grad=True" would be caught. After each case: no hook left (the test's
own backward hook excepted, counted in the snapshot), the same per-module train/eval flags,
the same ``requires_grad`` flags, the same parameter values, no ``.grad`` accumulated into the
user's parameters, ``ReLU.inplace`` unchanged, and the inputs bit-identical.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional

import pytest
import torch
from torch import nn

from captum_concepts.attr import EmbeddingAttribution, SemanticGradientInput, SemanticGuidedBackprop
from captum_concepts.concept import CoupledNMFConcepts, OutOfCore, SemanticVector
from captum_concepts.data import DigitsCNN, accuracy
from captum_concepts.metrics import drift_score, noise_benchmark, noise_score, score_curve, variance_score
from captum_concepts.testing import assert_same_state, model_state


class Boom(RuntimeError):
    """The injected fault."""


class _BackwardBomb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise Boom("fault injected in the backward pass")


class Trap(nn.Module):
    """Identity, or a fault in the forward / backward pass depending on ``fault``."""

    def __init__(self) -> None:
        super().__init__()
        self.fault = None

    def forward(self, x):
        if self.fault == "forward":
            raise Boom("fault injected in the forward pass")
        if self.fault == "backward":
            return _BackwardBomb.apply(x)
        if self.fault == "nan":
            return x * float("nan")
        return x


class TrapCNN(nn.Module):
    """The digits CNN with a trap between block2 and block3 (after the first hooks ran)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = DigitsCNN(width=4, embedding_dim=8)
        self.trap = Trap()

    def forward(self, x):
        n = self.net
        h = n.block3(self.trap(n.block2(n.block1(x))))
        return n.classifier(n.embedding_relu(n.embedding(n.flatten(h))))


X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def _ea(model, **kw):
    return EmbeddingAttribution(model, "net.embedding", **kw)


def _sv(model):
    return SemanticVector(model, "net.block3.pool", random_state=0).fit_from_labels((X, Y))


def _cnmf(model):
    return CoupledNMFConcepts(2, model, layers=["net.block2.relu", "net.embedding_relu"], max_iter=3)


def _fitted_cnmf(model):
    trap, model.trap.fault = model.trap.fault, None  # fit cleanly, then fault the method under test
    try:
        return _cnmf(model).fit(X)
    finally:
        model.trap.fault = trap


def _fitted_sv(model):
    trap, model.trap.fault = model.trap.fault, None
    try:
        return _sv(model)
    finally:
        model.trap.fault = trap


# name -> (call(model, x), runs a backward pass)
METHODS: Dict[str, tuple] = {
    "EmbeddingAttribution(input)": (lambda m, x: _ea(m).attribute(x), True),
    "EmbeddingAttribution(layer,gradcam)": (
        lambda m, x: _ea(m, layer="net.block2.relu", method="gradcam").attribute(x),
        True,
    ),
    "EmbeddingAttribution(layers,per_dim)": (
        lambda m, x: _ea(m, layer=[None, "net.block2.relu", "net.block3.pool"]).attribute(
            x, return_per_dim=True
        ),
        True,
    ),
    "EmbeddingAttribution(mean,linear)": (
        lambda m, x: _ea(m, layer="net.block2.relu", embedding_aggregator="mean").attribute(x),
        True,
    ),
    "EmbeddingAttribution(batched)": (lambda m, x: _ea(m, strategy="batched").attribute(x), True),
    "EmbeddingAttribution(create_graph)": (
        lambda m, x: _ea(m, layer="net.block2.relu").attribute(x, create_graph=True),
        True,
    ),
    "EmbeddingAttribution(layer_input)": (
        lambda m, x: _ea(m, layer="net.block2.conv", attribute_to_layer_input=True).attribute(x),
        True,
    ),
    "SemanticGuidedBackprop": (
        lambda m, x: SemanticGuidedBackprop(m, "net.block3.pool", _fitted_sv(m)).attribute(x, target=Y),
        True,
    ),
    "SemanticGradientInput": (
        lambda m, x: SemanticGradientInput(m, "net.block3.pool", _fitted_sv(m)).attribute(x, target=Y),
        True,
    ),
    "SemanticVector.fit": (
        lambda m, x: SemanticVector(m, "net.block3.pool").fit({"a": x[:3], "b": x[3:]}),
        False,
    ),
    "SemanticVector.fit_from_labels": (lambda m, x: _sv(m), False),
    "SemanticVector.transform": (lambda m, x: _fitted_sv(m).transform(x), False),
    "SemanticVector.similarity": (lambda m, x: _fitted_sv(m).similarity(x), False),
    "SemanticVector.rank": (lambda m, x: _fitted_sv(m).rank(x, 1, k=2), False),
    "SemanticVector.explain": (lambda m, x: _fitted_sv(m).explain(x, k=2), False),
    "SemanticVector.perturbation_check": (lambda m, x: _fitted_sv(m).perturbation_check(x, Y), False),
    "CoupledNMFConcepts.fit": (lambda m, x: _cnmf(m).fit(x), False),
    "CoupledNMFConcepts.fit(out_of_core)": (
        lambda m, x: _cnmf(m).set_params(out_of_core=OutOfCore("64MB")).fit(x),
        False,
    ),
    "CoupledNMFConcepts.transform": (lambda m, x: _fitted_cnmf(m).transform(x, max_iter=3), False),
    "data.accuracy": (lambda m, x: accuracy(m, x, Y), False),
    "noise_score": (lambda m, x: noise_score(_ea(m, layer="net.block2.relu"), x), True),
    "noise_score(differentiable)": (
        lambda m, x: noise_score(_ea(m, layer="net.block2.relu"), x, differentiable=True),
        True,
    ),
    "noise_benchmark": (lambda m, x: noise_benchmark(_ea(m), x, n_draws=2), True),
    "variance_score": (lambda m, x: variance_score(_ea(m, layer="net.block2.relu"), x), True),
    "drift_score": (lambda m, x: drift_score(_ea(m), x, [0.1, 0.5]), True),
    "score_curve(noise)": (
        lambda m, x: score_curve(
            m, "net.embedding", ["net.block2.relu", "net.block3.pool"], x, n_benchmark_draws=2
        ),
        True,
    ),
    "score_curve(variance)": (
        lambda m, x: score_curve(m, "net.embedding", [None, "net.block3.pool"], x, score="variance"),
        True,
    ),
}
FAULTS = ("none", "forward", "backward", "backward_hook", "nan")


def _mixed_state_model() -> TrapCNN:
    model = TrapCNN()
    model.train()
    model.net.block1.eval()
    for p in model.net.block1.parameters():
        p.requires_grad_(False)
    return model


def _check_while_alive(before, model: TrapCNN) -> None:
    """The model is as before and usable while an exception from a call is still referenced."""
    assert_same_state(before, model)
    assert torch.is_grad_enabled(), "torch.no_grad() left on"
    fault, model.trap.fault = model.trap.fault, None
    try:
        with torch.no_grad():
            model(X)  # a leftover capture hook would raise an internal exception here
    finally:
        model.trap.fault = fault


def _raise_in_hook(module, grad_input, grad_output):
    raise Boom("fault injected by a full backward hook")


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("method", list(METHODS))
def test_model_and_inputs_come_back_unchanged(method: str, fault: str):
    call: Callable
    call, backward = METHODS[method]
    model = _mixed_state_model()
    handle = None
    if fault in ("forward", "backward", "nan"):
        model.trap.fault = fault
    elif fault == "backward_hook":
        handle = model.net.block3.conv.register_full_backward_hook(_raise_in_hook)
    before = model_state(model)
    x = X.clone()
    expect_failure = fault == "forward" or (fault not in ("none", "nan") and backward)
    caught = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the training-mode warning is tested elsewhere
        try:
            call(model, x)
        except (Boom, ValueError) as err:  # NaN: ValueError from the methods that check for it
            caught = err
            _check_while_alive(before, model)
    if expect_failure:
        assert isinstance(caught, Boom), f"expected the injected fault, got {caught!r}"
    elif fault != "nan":
        assert caught is None, f"unexpected {caught!r}"
    assert_same_state(before, model)
    assert all(p.grad is None for p in model.parameters()), "gradients were accumulated into the model"
    assert torch.equal(x, X), "inputs were modified in place"
    if handle is not None:
        handle.remove()
    assert model_state(model)["hooks"] == 0


def test_every_method_is_listed():
    assert len(METHODS) * len(FAULTS) == 135


class _InterruptAt:
    """A global forward pre-hook raising ``KeyboardInterrupt`` at the ``at``-th module call."""

    def __init__(self, at: Optional[int] = None) -> None:
        self.at, self.calls = at, 0

    def __call__(self, module, args):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt


def _count_module_calls(call: Callable) -> int:
    counter = _InterruptAt()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(counter)
    try:
        call(_mixed_state_model(), X.clone())
    finally:
        handle.remove()
    return counter.calls


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", list(METHODS))
def test_keyboard_interrupt_at_any_module_call_leaves_model_untouched(method: str):
    call, _ = METHODS[method]
    n_calls = _count_module_calls(call)
    points = sorted({1, n_calls, *(round(1 + k * (n_calls - 1) / 7) for k in range(1, 7))})
    for at in points:
        model = _mixed_state_model()
        before = model_state(model)
        handle = torch.nn.modules.module.register_module_forward_pre_hook(_InterruptAt(at))
        try:
            call(model, X.clone())
        except KeyboardInterrupt:
            handle.remove()
            _check_while_alive(before, model)
        else:
            pytest.fail(f"no KeyboardInterrupt at module call {at} of {n_calls}")
        finally:
            handle.remove()
        assert_same_state(before, model)
        assert all(p.grad is None for p in model.parameters())
