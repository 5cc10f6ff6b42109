"""The metrics that need gradients refuse ``torch.inference_mode()`` with an error naming the metric."""

from __future__ import annotations

import pytest
import torch
from _bad_inputs_common import CNN, X, ea

from captum_concepts.metrics import drift_score, noise_benchmark, noise_score, score_curve, variance_score

CALLS = {
    "noise_score": lambda x: noise_score(ea(), x),
    "noise_benchmark": lambda x: noise_benchmark(ea(), x, n_draws=1),
    "variance_score": lambda x: variance_score(ea(), x),
    "drift_score": lambda x: drift_score(ea(), x, epsilons=[0.5]),
    "score_curve": lambda x: score_curve(CNN, "embedding", ["block2.relu"], x),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_inference_mode_names_the_metric_and_the_cause(name):
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=rf"^{name} needs gradients.*inside torch\.inference_mode\(\)"):
            CALLS[name](X)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_inference_tensor_input_names_the_metric_and_the_argument(name):
    with torch.inference_mode():
        x = X.clone()
    with pytest.raises(RuntimeError, match=rf"^{name}: inputs is an inference tensor"):
        CALLS[name](x)
