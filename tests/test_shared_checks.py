"""Function arguments of the data loaders and the representation scores go through the shared
scalar checks: numpy scalars are accepted, ``bool`` is never a number, errors name the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_concepts.data import load_digits_tensors, make_two_digit_canvas
from captum_concepts.metrics import noise_score


def identity(x, **kwargs):
    return x


def test_noise_score_accepts_a_numpy_bool_for_differentiable():
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    expected = noise_score(identity, x, noise_func=noise, differentiable=False)
    assert bool((expected > 0).all())
    same = noise_score(identity, x, noise_func=noise, differentiable=np.bool_(False))
    assert torch.allclose(same, expected)
    with pytest.raises(TypeError, match="differentiable must be True or False"):
        noise_score(identity, x, noise_func=noise, differentiable=1)


def test_digits_upscale_is_an_int_never_a_bool():
    assert load_digits_tensors(upscale=np.int64(2)).x_train.shape[-1] == 16
    with pytest.raises(ValueError, match="upscale must be an int >= 1"):
        load_digits_tensors(upscale=True)
    with pytest.raises(ValueError, match="test_size must be a finite real number > 0.0 and < 1.0"):
        load_digits_tensors(test_size=1.0)


def test_canvas_count_is_an_int_never_a_bool():
    assert make_two_digit_canvas(np.int64(2)).images.shape[0] == 2
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        make_two_digit_canvas(True)
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'"):
        make_two_digit_canvas(2, split="val")
