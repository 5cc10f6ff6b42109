"""Comparing results computed along different kernel paths (RELIABILITY.md, "Results across machines").

The same computation repeated identically (same inputs, same batch, same threads, same device) gives
the same bits: compare with ``torch.equal``. Results computed with other batch compositions or chunk
sizes, thread counts, devices or by another implementation (Captum's, another strategy) agree only to
the rounding of their dtype: compare with :func:`assert_matches`, which also asserts that the reference
is finite and not all zero, so that the comparison cannot pass vacuously.

A test that compares results across batch compositions writes its batch or chunk size as
``kernel_batch(size)``: CI's second pass sets ``CAPTUM_CONCEPTS_TEST_BATCH`` to run the comparison with
other compositions (``tests/conftest.py``).
"""

from __future__ import annotations

import os

import pytest
import torch


def env_int(name: str) -> int | None:
    """The integer >= 1 in the environment variable ``name``, or None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


TEST_BATCH = env_int("CAPTUM_CONCEPTS_TEST_BATCH")


def kernel_batch(size: int) -> int:
    """The batch or chunk size of a comparison across batch compositions: ``size``, or
    ``CAPTUM_CONCEPTS_TEST_BATCH`` when set (CI's second pass)."""
    return size if TEST_BATCH is None else TEST_BATCH

# relative tolerance, and absolute tolerance as a fraction of the reference's largest magnitude
_TOLERANCE = {
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
    torch.float32: (1e-5, 1e-6),
    torch.float64: (1e-10, 1e-12),
}


def assert_matches(actual, expected, *, rtol: float | None = None, atol: float | None = None, nonzero=True):
    """``actual`` equals ``expected`` to the rounding of its dtype (tensors, or tuples/lists of them).

    Both must be finite; ``expected`` must not be all zero unless ``nonzero=False``. ``atol`` defaults
    to a dtype-dependent fraction of ``expected``'s largest magnitude (differences in summation order
    scale with the terms summed, not with each output).
    """
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, type(expected)) and len(actual) == len(expected), type(actual)
        for a, e in zip(actual, expected):
            assert_matches(a, e, rtol=rtol, atol=atol, nonzero=nonzero)
        return
    actual, expected = actual.detach(), expected.detach()
    assert torch.isfinite(expected).all(), "the reference holds NaN or infinite values"
    assert torch.isfinite(actual).all(), "the result holds NaN or infinite values"
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    if nonzero:
        assert scale > 0, "the reference is all zero: the comparison proves nothing"
    default_rtol, default_atol = _TOLERANCE.get(expected.dtype, (0.0, 0.0))
    torch.testing.assert_close(
        actual,
        expected,
        rtol=default_rtol if rtol is None else rtol,
        atol=default_atol * scale if atol is None else atol,
    )
