"""One batch-iteration rule for every estimator: tensors, tuples, dicts, loaders; optional labels.

A two-input model (an image and integer tokens, CLIP-like) with an extra forward argument: every
input of a tuple/dict batch and ``additional_forward_args`` must reach the model. References are
computed with a plain forward and hooks that clone the layer outputs.
"""

from __future__ import annotations

import pytest
import torch
from _kernels import kernel_batch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_concepts._utils.batches import Batch, iter_batches
from captum_concepts.concept import CoupledNMFConcepts, OutOfCore, SemanticVector
from captum_concepts.testing import assert_same_state, model_state

N = 6
IMAGES = torch.rand(N, 3, 6, 6, generator=torch.Generator().manual_seed(0))
TOKENS = torch.randint(0, 10, (N, 5), generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


class ImageText(nn.Module):
    """``forward(image, tokens, scale=1.0)``: ``out_relu`` depends on both inputs and on ``scale``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.text = nn.Embedding(10, 4)
        self.head = nn.Linear(8, 5)
        self.out_relu = nn.ReLU()

    def forward(self, image, tokens, scale=1.0):
        a = self.relu(self.conv(image))
        h = torch.cat([self.pool(a).flatten(1), self.text(tokens).mean(1)], dim=1) * scale
        return self.out_relu(self.head(h))


LAYERS = ["relu", "out_relu"]


def _reference_blocks(model, scale=1.0):
    outs = {}
    handles = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: outs.__setitem__(name, out.detach().clone())
        )
        for name in LAYERS
    ]
    try:
        with torch.no_grad():
            model(IMAGES, TOKENS, scale)
    finally:
        for h in handles:
            h.remove()
    pixels = [IMAGES.reshape(N, 3, -1)[:, i].t() for i in range(3)]
    acts = [outs[name].reshape(N, -1).t() for name in LAYERS]
    assert all(a.abs().sum() > 0 for a in acts)
    return pixels, acts


def _cnmf(model):
    return CoupledNMFConcepts(3, model, layers=LAYERS, max_iter=5, solver="hals", batch_size=kernel_batch(4))


DATA = {
    "tuple": (lambda: (IMAGES, TOKENS), False),
    "loader-with-labels": (
        lambda: DataLoader(TensorDataset(IMAGES, TOKENS, LABELS), batch_size=kernel_batch(4)),
        True,
    ),
    "dict-batches": (
        lambda: [{"image": IMAGES[:4], "tokens": TOKENS[:4]}, {"image": IMAGES[4:], "tokens": TOKENS[4:]}],
        False,
    ),
    "dict-dataset-with-labels": (lambda: {"image": IMAGES, "tokens": TOKENS, "labels": LABELS}, True),
}


@pytest.mark.kernels
@pytest.mark.parametrize("kind", list(DATA))
def test_coupled_nmf_passes_every_input_to_the_model(kind):
    model = ImageText().eval()
    data, has_labels = DATA[kind]
    pixels, acts = _reference_blocks(model)
    reference = _cnmf(model).fit_matrices(pixels, acts)
    before = model_state(model)
    fitted = _cnmf(model).fit(data(), has_labels=has_labels)
    assert_same_state(before, model)
    torch.testing.assert_close(fitted.example_factors_, reference.example_factors_)
    expected = reference.transform(pixel_blocks=pixels, activation_blocks=acts)
    torch.testing.assert_close(fitted.transform(data(), has_labels=has_labels), expected)


def test_coupled_nmf_additional_forward_args_reach_the_model():
    model = ImageText().eval()
    pixels, acts = _reference_blocks(model, scale=2.5)
    assert not torch.allclose(acts[1], _reference_blocks(model)[1][1])  # scale changes out_relu
    reference = _cnmf(model).fit_matrices(pixels, acts)
    fitted = _cnmf(model).fit((IMAGES, TOKENS), additional_forward_args=2.5)
    torch.testing.assert_close(fitted.example_factors_, reference.example_factors_)
    expected = reference.transform(pixel_blocks=pixels, activation_blocks=acts)
    torch.testing.assert_close(fitted.transform((IMAGES, TOKENS), additional_forward_args=(2.5,)), expected)
    streamed = _cnmf(model).set_params(out_of_core=OutOfCore("64MB", storage_dtype=torch.float32))
    streamed.fit((IMAGES, TOKENS), additional_forward_args=2.5)
    torch.testing.assert_close(streamed.example_factors_, reference.example_factors_, rtol=1e-4, atol=1e-5)


@pytest.mark.kernels
def test_semantic_vector_reads_batches_by_the_same_rules():
    model = ImageText().eval()
    reference = SemanticVector(model, "out_relu").fit_from_labels((IMAGES, TOKENS, LABELS))
    as_dicts = [
        {"image": IMAGES[s], "tokens": TOKENS[s], "labels": LABELS[s]} for s in (slice(0, 4), slice(4, N))
    ]
    for data in (as_dicts, DataLoader(TensorDataset(IMAGES, TOKENS, LABELS), batch_size=kernel_batch(4))):
        sv = SemanticVector(model, "out_relu").fit_from_labels(data)
        torch.testing.assert_close(sv.vectors_, reference.vectors_)
    by_name = SemanticVector(model, "out_relu").fit(
        {c: {"image": IMAGES[LABELS == c], "tokens": TOKENS[LABELS == c]} for c in range(3)}
    )
    torch.testing.assert_close(by_name.vectors_, reference.vectors_)


def test_iter_batches_rules_and_errors():
    x, y = torch.rand(5, 2), torch.arange(5)
    assert [b.size for b in iter_batches(x, 2)] == [2, 2, 1]
    (b,) = iter_batches((x, y), 8, labels=True)
    assert len(b.inputs) == 1 and torch.equal(b.inputs[0], x) and torch.equal(b.labels, y) and b.kwargs == {}
    (b,) = iter_batches([{"a": x, "label": y}], 8, labels=True)
    assert b.inputs == () and list(b.kwargs) == ["a"] and torch.equal(b.first, x)
    (b,) = iter_batches([[x]], 8)  # DataLoader(TensorDataset(x)) yields [x]
    assert isinstance(b, Batch) and len(b.inputs) == 1 and b.inputs[0] is x
    with pytest.raises(TypeError, match="data must be a tuple"):
        list(iter_batches(x, 2, "data", labels=True))
    with pytest.raises(TypeError, match="inputs must be a tensor, a tuple or dict"):
        list(iter_batches(3, 2))
    with pytest.raises(TypeError, match="must yield tensors"):
        list(iter_batches(["text"], 2))
    with pytest.raises(TypeError, match="without a label entry"):
        list(iter_batches([{"a": x}], 2, labels=True))
    with pytest.raises(ValueError, match="3 labels for a batch of 5"):
        list(iter_batches((x, y[:3]), 2, labels=True))
    with pytest.raises(ValueError, match=r"inputs\[1\] has batch size 3, expected 5"):
        list(iter_batches((x, x[:3]), 2))
    with pytest.raises(ValueError, match=r"N > 0"):
        list(iter_batches(x[:0], 2))
    with pytest.raises(TypeError, match=r"inputs\[1\] must be a torch.Tensor"):
        list(iter_batches([(x, "y")], 2))


def test_labelled_loader_without_has_labels_gets_a_hint():
    """A (images, labels) loader passed as unlabelled: the model's TypeError says what to pass."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    loader = [(torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(TypeError, match="has_labels=True"):
        CoupledNMFConcepts(2, model, layers=["1"], max_iter=2).fit(loader)
    cnmf = CoupledNMFConcepts(2, model, layers=["1"], max_iter=2).fit(loader, has_labels=True)
    assert tuple(cnmf.example_factors_.shape) == (2, 4)
