"""Numbers and options outside the estimators go through the shared checks.

numpy integers, floats and bools are accepted wherever Python ones are; ``bool`` is refused where
an integer or a real number is expected; an unknown option is refused by name, even on a path
that would not have used it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _bad_inputs_common import MAPS, X

from captum_concepts.data import load_digits_tensors, make_two_digit_canvas
from captum_concepts.metrics import drift_score, noise_score
from captum_concepts.visualization import visualize_attribution_grid


def rand_explainer(t, **kw):
    return torch.rand(t.shape[0], 8, 8, generator=torch.Generator().manual_seed(t.shape[0]))


def test_numpy_bool_differentiable_is_accepted():
    ref = noise_score(rand_explainer, X, differentiable=False, noise_func=torch.zeros_like(X))
    got = noise_score(rand_explainer, X, differentiable=np.bool_(False), noise_func=torch.zeros_like(X))
    assert torch.allclose(got, ref)


def test_numpy_clip_range_is_accepted_and_bools_refused():
    kw = dict(epsilons=[0.0, 0.5], noise_func=torch.full_like(X, 0.1), drift_func=torch.ones_like(X))
    ref = drift_score(rand_explainer, X, clip_range=(0.0, 1.0), **kw)
    got = drift_score(rand_explainer, X, clip_range=(np.float32(0), np.float32(1)), **kw)
    assert torch.allclose(got, ref)
    with pytest.raises(ValueError, match="clip_range must be"):
        drift_score(rand_explainer, X, clip_range=(False, True), **kw)


def test_numpy_ints_are_accepted_by_the_data_helpers():
    assert load_digits_tensors(upscale=np.int64(2)).x_train.shape[-1] == 16
    canvas = make_two_digit_canvas(np.int64(3), canvas_size=np.int64(24), random_state=1)
    ref = make_two_digit_canvas(3, canvas_size=24, random_state=1)
    assert torch.equal(canvas.images, ref.images) and canvas.images.abs().sum() > 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: load_digits_tensors(upscale=True), "upscale must be an int"),
        (lambda: load_digits_tensors(mode="bicubic"), "mode must be one of 'nearest', 'bilinear'"),
        (lambda: make_two_digit_canvas(True), "n must be an int"),
        (lambda: make_two_digit_canvas(2, canvas_size=(24.0, 24.0)), "canvas_size must be an int"),
        (
            lambda: visualize_attribution_grid(MAPS[None], use_pyplot=False, outlier_perc="2"),
            "outlier_perc must be a finite real number",
        ),
    ],
)
def test_bools_and_unknown_options_are_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()

