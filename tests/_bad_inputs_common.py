"""Shared models, inputs and helpers of the bad-input matrix (``tests/test_bad_inputs_*.py``).

Every case of the matrix runs under the ``untouched`` fixture (``tests/conftest.py``), which checks
that all of :data:`ALL_MODELS` and :data:`ALL_INPUTS` come out of the case as they went in: no hooks
left, the same modes, ``requires_grad`` flags and parameters, bit-identical inputs.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from captum.testing.helpers.basic_models import (
    BasicModel_ConvNet_One_Conv,
    BasicModel_MultiLayer_MultiInput,
    BasicModelWithReusedModules,
)
from hypothesis import HealthCheck, settings
from torch import nn

from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.concept import SemanticVector
from captum_concepts.data import DigitsCNN

# ---------------------------------------------------------------------- models and data
torch.manual_seed(0)
CNN = DigitsCNN(width=4, embedding_dim=8).eval()  # embedding D = 8, block3.pool (16, 2, 2)
G = torch.Generator().manual_seed(0)
X = torch.rand(4, 1, 8, 8, generator=G)
Y = torch.tensor([0, 1, 2, 0])
X_NAN = X.clone()
X_NAN[0, 0, 3, 3] = float("nan")
X_INF = X.clone()
X_INF[0, 0, 3, 3] = float("inf")
META = copy.deepcopy(CNN).to("meta")


class Unused(nn.Module):
    """``unused`` never runs in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.relu = nn.ReLU()
        self.unused = nn.ReLU()

    def forward(self, x):
        return self.relu(self.lin(x))


class ZeroD(nn.Module):
    """An embedding with D = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 0)

    def forward(self, x):
        return self.lin(x)


class NoGrad(nn.Module):
    """The output does not depend differentiably on anything."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        with torch.no_grad():
            return self.lin(x)


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.drop(self.relu(self.lin(x))))


torch.manual_seed(1)
UNUSED, ZERO_D, NO_GRAD, DROPOUT = Unused(), ZeroD(), NoGrad(), WithDropout()
REUSED = BasicModelWithReusedModules()
CONV = BasicModel_ConvNet_One_Conv()
CONV_INPLACE = BasicModel_ConvNet_One_Conv(inplace=True)
MULTI = BasicModel_MultiLayer_MultiInput()
X_CONV = torch.rand(3, 1, 4, 4, generator=G) * 20  # large enough to pass the conv's -50 bias
X_LIN = torch.randn(5, 3, generator=G)
X_MULTI = tuple(torch.randn(5, 3, generator=G) for _ in range(3))
ALL_MODELS = [CNN, UNUSED, ZERO_D, NO_GRAD, DROPOUT, REUSED, CONV, CONV_INPLACE, MULTI]
for _m in ALL_MODELS:
    _m.eval()
ALL_INPUTS = [X, X_NAN, X_INF, X_CONV, X_LIN, *X_MULTI]
MAPS = torch.rand(2, 6, 6, generator=G)  # attribution maps for the metrics and visualization cases


@functools.cache
def fitted_sv() -> SemanticVector:
    return SemanticVector(CNN, "block3.pool", random_state=0).fit_from_labels((X, Y))


def ea(**kw) -> EmbeddingAttribution:
    kw.setdefault("embedding_layer", "embedding")
    return EmbeddingAttribution(CNN, **kw)


# ---------------------------------------------------------------------- cases
def E(case_id, fn, exc, match):
    """A case that must raise ``exc`` with a message matching ``match``."""
    return pytest.param(fn, exc, match, id=case_id)


class ResultCases(list):
    """Cases with a documented result, each a function that checks it, as ``pytest.param``s."""

    def add(self, case_id: str):
        """Decorator: register the decorated function as the case ``case_id``."""

        def register(fn):
            self.append(pytest.param(fn, id=case_id))
            return fn

        return register


def clear_error_test(cases):
    """The test ``test_clear_error``: each of ``cases`` (see :func:`E`) raises its error."""

    @pytest.mark.parametrize("fn, exc, match", cases)
    def test_clear_error(fn, exc, match, untouched):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(exc, match=match):
                fn()

    return test_clear_error


def documented_result_test(cases: ResultCases):
    """The test ``test_documented_result``: each of ``cases`` checks its documented result."""

    @pytest.mark.parametrize("fn", cases)
    def test_documented_result(fn, untouched):
        fn()

    return test_documented_result


FAST = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
