"""Shared fixtures: real digits, a trained digits CNN (trained once per session)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from captum_concepts.data import DigitsCNN, load_digits_tensors, train_digits_cnn

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N already uses every core; more threads per worker only contend.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """:class:`DigitsData` 8x8 split (1,437 train / 360 test)."""
    return load_digits_tensors()


@pytest.fixture(scope="session")
def trained_digits(digits):
    """:class:`TrainResult` of the digits CNN, trained once per test session (seed 0).

    Do not modify ``.model``; use the ``digits_cnn`` fixture for a private copy.
    """
    return train_digits_cnn(digits, seed=0)


@pytest.fixture
def digits_cnn(trained_digits):
    """A private deep copy of the trained digits CNN, in eval mode."""
    return copy.deepcopy(trained_digits.model).eval()


@pytest.fixture
def random_digits_cnn():
    """An untrained DigitsCNN (seed 0), in eval mode."""
    torch.manual_seed(0)
    return DigitsCNN().eval()


@pytest.fixture
def untouched():
    """Every model and input of the bad-input matrix comes out of a case as it went in."""
    from _bad_inputs_common import ALL_INPUTS, ALL_MODELS

    from captum_concepts.testing import assert_same_state, model_state

    states = [model_state(m) for m in ALL_MODELS]
    inputs = [t.clone() for t in ALL_INPUTS]
    yield
    for before, m in zip(states, ALL_MODELS):
        assert_same_state(before, m)
    for before, t in zip(inputs, ALL_INPUTS):
        assert torch.equal(before, t) or (torch.isnan(before).any() and before.isnan().eq(t.isnan()).all())
