"""Bad inputs for the visualization functions: each raises a clear error naming the argument.

The models and inputs are checked untouched after every case (``untouched`` in ``tests/conftest.py``).
"""

from __future__ import annotations

import torch
from _bad_inputs_common import MAPS, E, clear_error_test

from captum_concepts.visualization import (
    visualize_attribution_grid,
    visualize_relevance_matrix,
    visualize_score_curve,
    visualize_similarity_matrices,
)

ERROR_CASES = [
    E(
        "vis-grid-none",
        lambda: visualize_attribution_grid(None, use_pyplot=False),
        TypeError,
        "attributions must be",
    ),
    E(
        "vis-grid-3d",
        lambda: visualize_attribution_grid(MAPS, use_pyplot=False),
        ValueError,
        "attributions must have shape",
    ),
    E(
        "vis-curve-2d",
        lambda: visualize_score_curve({"a": MAPS}, use_pyplot=False),
        ValueError,
        "scores must hold 1-D",
    ),
    E(
        "vis-similarity-not-square",
        lambda: visualize_similarity_matrices([torch.rand(2, 3)], use_pyplot=False),
        ValueError,
        "must be square",
    ),
    E(
        "vis-relevance-none",
        lambda: visualize_relevance_matrix(None, use_pyplot=False),
        TypeError,
        "relevance must be",
    ),
]
test_clear_error = clear_error_test(ERROR_CASES)
