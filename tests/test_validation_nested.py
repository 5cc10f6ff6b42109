"""A public entry the package calls from inside another skips the checks its caller made, and
only those: a user's call (from a callback, from another thread) is checked as any other."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from captum_concepts._utils import validation
from captum_concepts.concept import SemanticVector
from captum_concepts.concept._core.base import _ConceptEstimator
from captum_concepts.data import DigitsCNN

X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


class CallbackModel(nn.Module):
    """A DigitsCNN whose forward runs ``callback`` (user code called from inside an entry)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = DigitsCNN(width=4, embedding_dim=6).eval()
        self.callback = None

    def forward(self, x):
        if self.callback is not None:
            self.callback()
        return self.net(x)


@pytest.fixture
def sv():
    return SemanticVector(CallbackModel().eval(), "net.block3.pool").fit_from_labels((X, Y))


@pytest.fixture
def counts(monkeypatch):
    """How often the not-fitted check and the parameter table ran."""
    seen = {"fitted": 0, "params": 0}
    check_fitted, validate_params = _ConceptEstimator._check_fitted, validation.validate_params

    def counting_fitted(self):
        seen["fitted"] += 1
        return check_fitted(self)

    def counting_params(*args, **kwargs):
        seen["params"] += 1
        return validate_params(*args, **kwargs)

    monkeypatch.setattr(_ConceptEstimator, "_check_fitted", counting_fitted)
    monkeypatch.setattr(validation, "validate_params", counting_params)
    return seen


def test_nested_entries_skip_what_the_outer_entry_checked(sv, counts):
    # rank -> concept_index, similarity -> transform: four validated entries on one estimator
    sv.rank(X, concept=0, k=2)
    assert counts == {"fitted": 1, "params": 1}


def test_the_same_entries_called_directly_run_their_checks(sv, counts):
    sv.concept_index(0)
    sv.similarity(X)
    sv.transform(X)
    assert counts == {"fitted": 3, "params": 2}  # concept_index has no parameter check


def test_a_callback_of_the_user_is_checked_as_any_call(sv, counts):
    sv.model.callback = lambda: sv.concept_index(0)  # user code, called by the forward pass
    sv.rank(X, concept=0, k=2)
    assert counts == {"fitted": 2, "params": 1}


def test_a_call_from_another_thread_started_inside_is_checked(sv, counts):
    def in_thread():
        worker = threading.Thread(target=sv.concept_index, args=(0,))
        worker.start()
        worker.join()

    sv.model.callback = in_thread
    sv.rank(X, concept=0, k=2)
    assert counts == {"fitted": 2, "params": 1}


def test_the_record_is_reset_when_an_entry_raises(sv, counts):
    with pytest.raises(ValueError, match="nope"):
        sv.rank(X, concept="nope", k=2)
    assert validation._CHECKED.get() == (-1, frozenset())
    sv.transform(X)
    assert counts == {"fitted": 2, "params": 2}


def test_an_argument_not_checked_by_the_caller_is_still_checked(sv, counts):
    # an entry of the package (its module's name) passing similarity a flag it never checked
    scope = {"__name__": "captum_concepts._nested_example"}
    exec("def outer(self, x, flag):\n    return self.similarity(x, None, flag)\n", scope)
    outer = validation.validated(fitted=True)(scope["outer"])
    outer(sv, X, False)
    assert counts == {"fitted": 1, "params": 1}  # similarity skipped what outer checked
    with pytest.raises(validation.InvalidParameterError, match="binarize must be True or False"):
        outer(sv, X, "no")


def test_fit_transform_checks_the_parameters_once(counts):
    from captum_concepts.concept import CoupledNMFConcepts

    model = CallbackModel().eval()
    CoupledNMFConcepts(2, model, layers=["net.block3.pool"], max_iter=3).fit_transform(X)
    assert counts["params"] == 1  # fit_transform's check covers the fit it runs
