"""Modes come back through ``train()`` (side effects replayed), and re-entrant use of the model works.

- A module whose ``train()`` keeps another attribute in step with its mode, in a three-level
  mixed train/eval state: after every method the attribute and the flags are as before.
- A loader/generator that runs the same model between our batches (pseudo-labels, a filter,
  even one of our own methods): it sees the model as the user left it, and the fit equals a fit
  on the same data computed beforehand; no internal exception reaches the user.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_concepts.attr import EmbeddingAttribution, SemanticGradientInput
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.data import DigitsCNN
from captum_concepts.testing import assert_same_state, model_state

X = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


class ModeAware(nn.Sequential):
    """A block whose ``train()`` also switches a non-flag attribute (e.g. a frozen-BN policy)."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__(*modules)
        self.policy = "train"

    def train(self, mode: bool = True):
        self.policy = "train" if mode else "eval"
        return super().train(mode)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = ModeAware(
            nn.Conv2d(1, 4, 3), nn.ReLU(), ModeAware(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = ModeAware(nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def _policies(model):
    return {name: m.policy for name, m in model.named_modules() if isinstance(m, ModeAware)}


METHODS = {
    "EmbeddingAttribution": lambda m: EmbeddingAttribution(m, None, "features.2").attribute(X),
    "SemanticVector.fit_from_labels": lambda m: SemanticVector(m, "features.2").fit_from_labels((X, Y)),
    "SemanticGradientInput": lambda m: SemanticGradientInput(
        m, "features.2", SemanticVector(m, "features.2").fit_from_labels((X, Y))
    ).attribute(X, target=Y),
    "CoupledNMFConcepts.fit": lambda m: CoupledNMFConcepts(2, m, layers=["features.2"], max_iter=2).fit(X),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", list(METHODS))
def test_custom_train_is_replayed_and_mixed_states_come_back(method):
    model = Net().train()
    model.features.eval()  # features in eval mode, the inner block back in training mode
    model.features[2].train()
    before, policies = model_state(model), _policies(model)
    assert policies == {"features": "eval", "features.2": "train", "head": "train"}
    METHODS[method](model)
    assert_same_state(before, model)
    assert _policies(model) == policies


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fit_from_labels_over_pseudo_labels_from_the_same_model():
    torch.manual_seed(0)
    model = DigitsCNN(width=4, embedding_dim=8).eval()

    def pseudo_labels(xb):  # two classes per batch from ranks of logit 0 (random nets predict one class)
        with torch.no_grad():
            return model(xb)[:, 0].argsort().argsort() % 2

    def labelled():
        for xb in X.split(4):
            yield xb, pseudo_labels(xb)

    pseudo = torch.cat([pseudo_labels(xb) for xb in X.split(4)])
    before = model_state(model)
    got = SemanticVector(model, "block3.pool").fit_from_labels(labelled())
    assert_same_state(before, model)
    reference = SemanticVector(model, "block3.pool").fit_from_labels((X, pseudo))
    assert got.concept_names_ == reference.concept_names_
    torch.testing.assert_close(got.vectors_, reference.vectors_)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_generators_that_run_the_model_or_our_methods():
    torch.manual_seed(0)
    model = DigitsCNN(width=4, embedding_dim=8).eval()
    probe = SemanticVector(model, "block2.relu").fit({"all": X})
    seen = []

    def batches():
        for xb in X.split(3):
            with torch.no_grad():
                model(xb)  # a plain forward between our batches
            seen.append(probe.transform(xb))  # one of our own methods on the same model
            yield xb

    before = model_state(model)
    got = SemanticVector(model, "block3.pool").fit({"a": batches(), "b": X[:4]})
    reference = SemanticVector(model, "block3.pool").fit({"a": X, "b": X[:4]})
    torch.testing.assert_close(got.vectors_, reference.vectors_)
    torch.testing.assert_close(torch.cat(seen), probe.transform(X))
    cnmf = CoupledNMFConcepts(2, model, layers=["block3.pool"], max_iter=3)
    torch.testing.assert_close(cnmf.fit(batches()).example_factors_, cnmf.fit(X).example_factors_)
    assert_same_state(before, model)
