import pytest
import torch
from captum.testing.helpers.basic_models import BasicModel_MultiLayer
from torch import nn

from captum_concepts._utils.layers import layer_name, resolve_layer, resolve_layers
from captum_concepts.data import DigitsCNN


def test_dotted_names_and_modules_resolve_to_the_same_layer():
    model = DigitsCNN()
    assert resolve_layer(model, "block2.conv") is model.block2.conv
    assert resolve_layer(model, model.block2.conv) is model.block2.conv
    assert resolve_layer(model, "") is model
    assert resolve_layers(model, ["block1.relu", model.embedding]) == [model.block1.relu, model.embedding]
    assert resolve_layers(model, "classifier") == [model.classifier]
    assert layer_name(model, model.block3.pool) == "block3.pool"


def test_unknown_name_lists_close_names():
    model = DigitsCNN()
    with pytest.raises(ValueError, match=r"layer='block2.cnv'.*Did you mean: 'block2.conv'"):
        resolve_layer(model, "block2.cnv")
    with pytest.raises(ValueError, match=r"layers\[1\]='linear3'"):
        resolve_layers(BasicModel_MultiLayer(), ["linear1", "linear3"])


def test_non_module_and_foreign_module_are_rejected():
    model = DigitsCNN()
    with pytest.raises(TypeError, match="layer must be a module of the model or its dotted name"):
        resolve_layer(model, 3)
    with pytest.raises(ValueError, match="not part of DigitsCNN"):
        resolve_layer(model, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        resolve_layer(torch.zeros(1), "x")
