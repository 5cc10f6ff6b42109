"""A guard's forward nested in another's is part of the outer pass: both guards' captures record."""

import torch
from torch import nn

from captum_concepts._utils.hooks import ModelGuard


def test_outer_capture_records_inside_a_nested_forward():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 3)

    class Objective(nn.Module):  # reads the encoder's output through its own guard, as SimilarityAttribution
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inp):
            return inner.forward(model, inp)

    objective = Objective()
    with ModelGuard(model) as inner, ModelGuard(objective) as outer, torch.no_grad():
        source = outer.capture(model[0], "layer")
        embedding = inner.capture(model[2], "embedding_layer")
        outer.forward(objective, x)
        expected = model[0](x)
        assert torch.equal(source.tensor(), expected)  # recorded before the in-place ReLU
        assert torch.equal(embedding.tensor(), model[2](torch.relu(expected)))
        model(x)  # a plain call outside both forwards records nothing
        assert len(source.records) == 1 and len(embedding.records) == 1
