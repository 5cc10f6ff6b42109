"""One line from our maps to Captum's own interpolate, visualize_image_attr and infidelity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from captum.attr import visualization as captum_viz
from captum.metrics import infidelity

from captum_concepts.attr import (
    EmbeddingAttribution,
    as_captum_image,
    as_captum_layer_attr,
    as_image_attr,
    as_input_attr,
)
from captum_concepts.metrics import embedding_forward_func, embedding_infidelity
from captum_concepts.testing import assert_same_state, model_state

DIMS = [0, 5, 17]


@pytest.fixture
def model(random_digits_cnn):
    return random_digits_cnn


@pytest.fixture
def x():
    return torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_interpolate_takes_layer_maps_in_one_line(model, x):
    maps = EmbeddingAttribution(model, "embedding", layer="block2.conv", upsample=None).attribute(
        x, embedding_dims=DIMS
    )
    assert maps.dim() == 3 and maps.abs().max() > 0
    up = LayerAttribution.interpolate(as_captum_layer_attr(maps), (16, 16))
    assert up.shape == (2, 1, 16, 16)
    torch.testing.assert_close(up[:, 0], F.interpolate(maps[:, None], (16, 16), mode="nearest")[:, 0])
    assert [m.shape for m in as_captum_layer_attr([maps, maps])] == [(2, 1) + maps.shape[1:]] * 2
    with pytest.raises(ValueError, match=r"maps must have shape \(N, \*S\)"):
        as_captum_layer_attr(maps[0, 0, :])


def test_visualize_image_attr_draws_a_default_var_map_without_the_near_zero_warning(model, x):
    maps = EmbeddingAttribution(model, "embedding").attribute(x, embedding_dims=DIMS)  # var: tiny values
    m = maps[0]
    assert 0 < m.abs().max() < 1e-2
    attr = as_image_attr(m)
    assert attr.shape == (8, 8, 1) and attr.dtype == np.float64
    np.testing.assert_allclose(attr[..., 0], (m.double() / m.abs().max().double()).numpy(), rtol=1e-12)
    image = as_captum_image(x[0])
    assert image.shape == (8, 8, 1)
    np.testing.assert_array_equal(image[..., 0], x[0, 0].double().numpy())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, ax = captum_viz.visualize_image_attr(attr, image, "blended_heat_map", sign="all", use_pyplot=False)
    assert not [w for w in caught if "approximately 0" in str(w.message)]
    drawn = np.asarray(ax.images[-1].get_array())
    assert drawn.shape == (8, 8) and np.abs(drawn).max() > 0
    # Captum's own normalisation of the drawn map keeps its shape: the peak is our map's peak
    assert np.unravel_index(np.abs(drawn).argmax(), drawn.shape) == np.unravel_index(
        m.abs().argmax().item(), m.shape
    )
    # maps at ResNet's ~1e-6 (issue 27) trip Captum's warning as they are, never through as_image_attr
    tiny = m * 1e-2
    for shown, expected in ((tiny[..., None].double().numpy(), True), (as_image_attr(tiny), False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            captum_viz.visualize_image_attr(shown, image, "heat_map", sign="all", use_pyplot=False)
        assert any("approximately 0" in str(w.message) for w in caught) == expected
    with pytest.raises(ValueError, match=r"attribution must be one map .*maps\[i\]"):
        as_image_attr(maps)
    assert not as_image_attr(np.zeros((3, 3))).any()


def _perturb(x):
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(8))

    def perturb(inputs):
        pert = 0.05 * direction.repeat(inputs.shape[0] // x.shape[0], 1, 1, 1)
        return pert, inputs - pert

    return perturb


def _embedding(model, x):
    out = {}
    handle = model.embedding.register_forward_hook(lambda m, i, o: out.setdefault("z", o))
    try:
        model(x)
    finally:
        handle.remove()
    return out["z"].flatten(1)[:, DIMS].mean(1)


def test_the_forward_func_is_the_scalar_the_mean_maps_are_the_gradient_of(model, x):
    ea = EmbeddingAttribution(model, "embedding", embedding_aggregator="mean")
    maps = ea.attribute(x, embedding_dims=DIMS)
    f = embedding_forward_func(model, "embedding", embedding_dims=DIMS)
    before = model_state(model)
    xg = x.clone().requires_grad_(True)
    value = f(xg)
    assert value.shape == (2,)
    torch.testing.assert_close(value.detach(), _embedding(model, x))
    (grad,) = torch.autograd.grad(value.sum(), xg)
    torch.testing.assert_close(grad[:, 0], maps, rtol=1e-4, atol=1e-8)
    assert_same_state(before, model)


def test_infidelity_runs_through_the_forward_func_on_our_maps(model, x):
    ea = EmbeddingAttribution(model, "embedding", embedding_aggregator="mean")
    maps = ea.attribute(x, embedding_dims=DIMS)
    perturb = _perturb(x)
    f = embedding_forward_func(model, "embedding", embedding_dims=DIMS)
    infid = infidelity(f, perturb, x, as_input_attr(maps, x), n_perturb_samples=1)
    with torch.no_grad():
        pert, moved = perturb(x)
        drop = _embedding(model, x) - _embedding(model, moved)
    ref = ((maps[:, None] * pert).flatten(1).sum(1) - drop) ** 2
    assert ref.min() > 0
    torch.testing.assert_close(infid, ref, rtol=1e-4, atol=1e-12)
    # the wrapper: the same call from the attribution object
    wrapped = embedding_infidelity(ea, perturb, x, maps, embedding_dims=DIMS, n_perturb_samples=1)
    torch.testing.assert_close(wrapped, infid, rtol=1e-5, atol=1e-12)
    with pytest.raises(ValueError, match="without its channel"):
        as_input_attr(maps[:, :4], x)
    with pytest.raises(ValueError, match="reduction must be one of"):
        embedding_forward_func(model, "embedding", reduction="max")
