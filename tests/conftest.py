"""Shared fixtures: real digits, a trained digits CNN (trained once per session), and the kernel-path
settings of CI's second pass.

Results across machines (RELIABILITY.md): the same computation repeated identically gives the same
bits; other threads, batch compositions or CPUs agree only to rounding. CI's second pass (``.ci/run``)
reruns the tests marked ``kernels`` with other settings, so that a test which only holds on one kernel
path fails there:

- ``CAPTUM_CONCEPTS_TEST_THREADS=N``: every test process runs ``N`` intra-op threads (default: 1 per
  ``pytest -n`` worker, the machine's default otherwise);
- ``CAPTUM_CONCEPTS_TEST_BATCH=B``: the batch and chunk sizes that tests choose for comparisons across
  batch compositions (``internal_batch_size``, an estimator's ``batch_size``, a loader's) are written
  ``kernel_batch(size)`` (``tests/_kernels.py``), which returns ``B`` instead of the test's own value.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from _kernels import TEST_BATCH, env_int

from captum_concepts.data import DigitsCNN, load_digits_tensors, train_digits_cnn

TEST_THREADS = env_int("CAPTUM_CONCEPTS_TEST_THREADS")
if TEST_THREADS is not None:
    torch.set_num_threads(TEST_THREADS)
elif os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N already uses every core; more threads per worker only contend.
    torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "kernels: compares results of different kernel paths (batch compositions, chunk sizes, strategies, "
        "Captum's implementation) or checks bits; rerun by CI's second pass on other paths",
    )


def pytest_report_header(config):
    return (
        f"captum_concepts kernel paths: {torch.get_num_threads()} intra-op threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"test batch {TEST_BATCH or 'per test'}"
    )


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
