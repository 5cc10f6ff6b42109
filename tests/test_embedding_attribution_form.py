"""EmbeddingAttribution follows Captum's output rule: a layer source gives what the layer outputs
(a tensor for one output tensor, whatever the inputs; a tuple for several), the inputs as source
keep the form of the inputs, a list of layers gives a list. ``attribute`` refuses inference mode."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradientXActivation
from captum.testing.helpers.basic_models import BasicModel_MultiLayer, BasicModel_MultiLayer_MultiInput

from captum_concepts.attr import EmbeddingAttribution


def _inputs():
    torch.manual_seed(0)
    return tuple(torch.randn(4, 3) for _ in range(3))


def test_layer_attribution_is_a_tensor_for_tuple_inputs_as_in_captum():
    """Captum code that reads a layer attribution as a tensor (``.detach()``, ``.shape``) runs:
    tuple inputs, ``additional_forward_args``, a one-dimensional embedding (the model output's
    column 1) equal Captum's ``LayerGradientXActivation`` (channel mean of its per-unit values)."""
    model = BasicModel_MultiLayer_MultiInput().eval()
    inputs = _inputs()
    ref = LayerGradientXActivation(model, model.model.linear1).attribute(
        inputs, target=1, additional_forward_args=(2,)
    )
    assert isinstance(ref, torch.Tensor) and ref.abs().sum() > 0
    ea = EmbeddingAttribution(
        model, layer=model.model.linear1, method="activation_gradient", embedding_aggregator="mean"
    )
    attr = ea.attribute(inputs, additional_forward_args=(2,), embedding_dims=1)
    assert isinstance(attr, torch.Tensor)
    assert attr.detach().shape == (4,)  # a dense layer (N, K): K channels of one pixel
    torch.testing.assert_close(attr, ref.mean(1), rtol=1e-5, atol=1e-6)
    per_dim = ea.attribute(inputs, additional_forward_args=(2,), embedding_dims=1, return_per_dim=True)
    assert isinstance(per_dim, torch.Tensor) and per_dim.shape == (4, 1)


def test_layer_input_and_list_of_layers_follow_captum():
    model = BasicModel_MultiLayer_MultiInput().eval()
    inputs = _inputs()
    kw = dict(method="activation_gradient", embedding_aggregator="mean")
    # attribute_to_layer_input with a layer of one input: a tensor (Captum: a tensor too)
    ref = LayerGradientXActivation(model, model.model.linear1).attribute(
        inputs, target=1, additional_forward_args=(2,), attribute_to_layer_input=True
    )
    assert isinstance(ref, torch.Tensor) and ref.abs().sum() > 0
    ea = EmbeddingAttribution(model, layer="model.linear1", attribute_to_layer_input=True, **kw)
    got = ea.attribute(inputs, additional_forward_args=(2,), embedding_dims=1)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, ref.mean(1), rtol=1e-5, atol=1e-6)
    # a list of layers: a list, each entry in its layer's form; None (the inputs): tuples in, tuples out
    ea = EmbeddingAttribution(model, layer=["model.linear1", "model.linear0", None], **kw)
    lin1, lin0, from_inputs = ea.attribute(inputs, additional_forward_args=(2,), embedding_dims=1)
    assert isinstance(lin1, torch.Tensor) and isinstance(lin0, torch.Tensor)
    assert isinstance(from_inputs, tuple) and len(from_inputs) == 3
    out_ref = LayerGradientXActivation(model, model.model.linear1).attribute(
        inputs, target=1, additional_forward_args=(2,)
    )
    torch.testing.assert_close(lin1, out_ref.mean(1), rtol=1e-5, atol=1e-6)


def test_layer_with_two_outputs_gives_a_tuple_as_in_captum():
    torch.manual_seed(0)
    model = BasicModel_MultiLayer(multi_input_module=True).eval()
    x = torch.randn(4, 3)
    ref = LayerGradientXActivation(model, model.multi_relu).attribute(x, target=1)
    assert isinstance(ref, tuple) and len(ref) == 2 and all(r.abs().sum() > 0 for r in ref)
    ea = EmbeddingAttribution(
        model, layer="multi_relu", method="activation_gradient", embedding_aggregator="mean"
    )
    got = ea.attribute(x, embedding_dims=1)
    assert isinstance(got, tuple) and len(got) == 2
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r.mean(1), rtol=1e-5, atol=1e-6)


def test_attribute_refuses_inference_mode_with_the_cause():
    model = BasicModel_MultiLayer_MultiInput().eval()
    inputs = _inputs()
    ea = EmbeddingAttribution(model, layer="model.linear1")
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"inside torch\.inference_mode\(\)"):
            ea.attribute(inputs, additional_forward_args=(2,))
        made_inside = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"inputs\[0\] is an inference tensor"):
        ea.attribute((made_inside, *inputs[1:]), additional_forward_args=(2,))
