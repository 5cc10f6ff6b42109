"""torch.compile()d models: explained through their original module, layer names without the prefix.

``torch.compile`` is lazy: nothing is compiled until the compiled module is called, and the
methods run the original module, so these tests stay cheap with the default backend.
"""

from __future__ import annotations

import pytest
import torch

from captum_concepts._utils.layers import resolve_layer
from captum_concepts.attr import EmbeddingAttribution, SemanticGradientInput, SemanticGuidedBackprop
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.metrics import score_curve
from captum_concepts.testing import assert_same_state, model_state


@pytest.fixture
def model(random_digits_cnn):
    return random_digits_cnn


@pytest.fixture
def x():
    return torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_resolve_layer_accepts_names_with_and_without_the_prefix(model):
    compiled = torch.compile(model)
    assert resolve_layer(compiled, "block2.conv") is model.block2.conv
    assert resolve_layer(compiled, "_orig_mod.block2.conv") is model.block2.conv
    assert resolve_layer(compiled, model.block2.conv) is model.block2.conv
    with pytest.raises(ValueError, match="Did you mean: 'block2.conv'"):
        resolve_layer(compiled, "block2.cnv")


@pytest.mark.parametrize("layer", ["block2.conv", "_orig_mod.block2.conv"])
@pytest.mark.parametrize("method", ["gradient", "activation_gradient", "gradcam"])
def test_embedding_attribution_on_a_compiled_model(model, x, layer, method):
    ref = EmbeddingAttribution(model, embedding_layer="embedding", layer="block2.conv", method=method)
    expected = ref.attribute(x, embedding_dims=[0, 3, 9])
    assert expected.abs().max() > 0
    before = model_state(model)
    compiled = torch.compile(model)
    with pytest.warns(UserWarning, match="torch.compile\\(\\)d module.*_orig_mod"):
        ea = EmbeddingAttribution(compiled, embedding_layer="embedding", layer=layer, method=method)
    torch.testing.assert_close(ea.attribute(x, embedding_dims=[0, 3, 9]), expected)
    assert_same_state(before, model)


def test_score_curve_on_a_compiled_model(model, x):
    kwargs = dict(score="variance", embedding_dims=[0, 3, 9])
    expected = score_curve(model, "embedding", ["block1.conv", "block2.conv"], x, **kwargs)
    with pytest.warns(UserWarning, match="_orig_mod"):
        curve = score_curve(
            torch.compile(model), "embedding", ["block1.conv", "_orig_mod.block2.conv"], x, **kwargs
        )
    assert curve.layers == ["block1.conv", "block2.conv"]  # the user's names, no wrapper prefix
    torch.testing.assert_close(curve.per_example, expected.per_example)


def test_semantic_vector_and_attributions_on_a_compiled_model(model, x):
    labels = torch.tensor([0, 1, 1])
    sv = SemanticVector(model, "block2.relu").fit_from_labels((x, labels))
    compiled = torch.compile(model)
    with pytest.warns(UserWarning, match="_orig_mod"):
        sv_c = SemanticVector(compiled, "block2.relu").fit_from_labels((x, labels))
    torch.testing.assert_close(sv_c.vectors_, sv.vectors_)
    before = model_state(model)
    for cls in (SemanticGuidedBackprop, SemanticGradientInput):
        expected = cls(model, "block2.relu", sv).attribute(x, target=labels)
        with pytest.warns(UserWarning, match="_orig_mod"):
            got = cls(compiled, "_orig_mod.block2.relu", sv_c).attribute(x, target=labels)
        torch.testing.assert_close(got, expected)
    assert_same_state(before, model)


def test_coupled_nmf_on_a_compiled_model(model, x):
    kwargs = dict(layers=["block2.relu", "embedding_relu"], max_iter=10)
    expected = CoupledNMFConcepts(2, model, **kwargs).fit(x)
    with pytest.warns(UserWarning, match="_orig_mod"):
        got = CoupledNMFConcepts(2, torch.compile(model), **kwargs).fit(x)
    torch.testing.assert_close(got.example_factors_, expected.example_factors_)
    assert got.layer_names_ == ["block2.relu", "embedding_relu"]
