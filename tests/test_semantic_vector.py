"""SemanticVector: hand-computed values, streaming, digits claims, bad input, model state."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _kernels import kernel_batch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_concepts.concept import SemanticVector
from captum_concepts.data import accuracy
from captum_concepts.testing import assert_same_state, model_state


def feature_model(d: int = 4, n_classes: int = 3) -> nn.Module:
    """Layer "feat" outputs the input itself, so activations are set by hand."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("feat", nn.Identity())
    model.add_module("head", nn.Linear(d, n_classes))
    return model.eval()


def test_hand_computed_vector_rates_diversity():
    # Binarisation at 0: 2.5 and 0.1 are active, 0 and the negative -3 are not.
    x = torch.tensor([[2.5, 0.1, 0.0, -3.0], [7.0, 0.0, -1.0, 0.0]])
    sv = SemanticVector(feature_model(), "feat").fit({"a": x})
    a_hat_sum = torch.tensor([1 + 1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0])
    norm = math.sqrt(2 + math.sqrt(2))
    assert torch.allclose(sv.vectors_[0], a_hat_sum / norm, atol=1e-6)
    assert torch.allclose(sv.activation_rates_[0], torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert sv.diversity_[0].item() == pytest.approx(1 - norm / 2, abs=1e-6)
    assert sv.layer_shape_ == (4,) and sv.n_examples_.tolist() == [2]
    assert sv.masks().tolist() == [[True, False, False, False]]  # rate 0.5 is not > 0.5
    assert sv.masks(0.4).tolist() == [[True, True, False, False]]


@pytest.mark.kernels
def test_diversity_equals_mean_cosine_definition():
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(40, 6, generator=g) > 0.4).float() * torch.rand(40, 6, generator=g)
    x[3] = 0.0  # an example without active units: cosine 0, still counted in M
    sv = SemanticVector(feature_model(6), "feat", batch_size=kernel_batch(7)).fit({"c": x})
    a = (x > 0).float()
    v = sv.vectors_[0]
    cos = (a @ v) / a.norm(dim=1).clamp_min(1e-12)
    assert sv.diversity_[0].item() == pytest.approx(1 - cos.mean().item(), abs=1e-6)
    assert v.norm().item() == pytest.approx(1.0, abs=1e-6)
    # v maximises the summed cosine: any perturbed unit vector does worse
    other = torch.nn.functional.normalize(v + 0.05 * torch.randn(6, generator=g), dim=0)
    assert ((a @ other) / a.norm(dim=1).clamp_min(1e-12)).sum() < cos.sum()


@pytest.mark.kernels
def test_streaming_equals_all_at_once(digits, digits_cnn):
    x, y = digits.x_train[:300], digits.y_train[:300]
    full = SemanticVector(digits_cnn, "block3.pool", batch_size=1000).fit_from_labels((x, y))
    loader = DataLoader(TensorDataset(x, y), batch_size=kernel_batch(37))
    streamed = SemanticVector(digits_cnn, "block3.pool").fit_from_labels(loader)
    per_concept = SemanticVector(digits_cnn, digits_cnn.block3.pool).fit(
        {c: DataLoader(TensorDataset(x[y == c]), batch_size=kernel_batch(11)) for c in range(10)}
    )
    for other in (streamed, per_concept):
        assert other.concept_names_ == full.concept_names_ == list(range(10))
        assert torch.allclose(other.vectors_, full.vectors_, atol=1e-6)
        assert torch.allclose(other.activation_rates_, full.activation_rates_, atol=1e-6)
        assert torch.allclose(other.diversity_, full.diversity_, atol=1e-6)
    assert full.n_examples_.sum().item() == 300


def test_multi_hot_labels_and_class_discovery():
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 1.0]])
    y_hot = torch.tensor([[1, 0], [0, 1], [1, 1]])
    sv = SemanticVector(feature_model(3), "feat").fit_from_labels((x, y_hot))
    ref = SemanticVector(feature_model(3), "feat").fit({0: x[[0, 2]], 1: x[[1, 2]]})
    assert torch.allclose(sv.vectors_, ref.vectors_)
    # integer labels whose batches reveal classes gradually (batch 1 has only class 0)
    y = torch.tensor([0, 2, 1])
    sv = SemanticVector(feature_model(3), "feat", batch_size=1).fit_from_labels((x, y))
    assert sv.concept_names_ == [0, 1, 2]
    assert torch.allclose(sv.vectors_[2], torch.tensor([0.0, 1.0, 0.0]))  # class 2 is x[1]


def test_relevance_similarity_rank_explain_on_digits(digits, digits_cnn):
    sv = SemanticVector(digits_cnn, "block3.relu").fit_from_labels((digits.x_train, digits.y_train))
    rel = sv.relevance()
    assert rel.shape == (10, 10)
    assert torch.allclose(rel, rel.t()) and torch.allclose(rel.diagonal(), torch.ones(10), atol=1e-5)
    sim = sv.similarity(digits.x_test)
    assert sim.shape == (360, 10) and float(sim.abs().max()) <= 1 + 1e-5
    # nearest semantic vector as a classifier: the concepts describe the classes
    assert (sim.argmax(dim=1) == digits.y_test).float().mean() > 0.8  # measured 0.88, chance 0.1
    # retrieval (paper Fig. 1): the 10 test images closest to each class vector (measured 0.93)
    precision = [
        (digits.y_test[sv.rank(digits.x_test, c, k=10).indices] == c).float().mean() for c in range(10)
    ]
    assert torch.stack(precision).mean() > 0.8
    top = sv.rank(digits.x_test, 3, k=10)
    assert torch.all(top.values[:-1] >= top.values[1:])
    expl = sv.explain(digits.x_test[:5], vocabulary=[1, 3, 5, 7], k=2)
    assert expl.indices.shape == (5, 2) and all(n in (1, 3, 5, 7) for row in expl.names for n in row)
    assert torch.allclose(expl.scores[:, 0], sim[:5, [1, 3, 5, 7]].max(dim=1).values)


def test_named_concepts_and_lookup(digits, digits_cnn):
    x, y = digits.x_train, digits.y_train
    sv = SemanticVector(digits_cnn, "block3.pool").fit({"zero": x[y == 0], "one": x[y == 1]})
    assert sv.concept_index("one") == 1 and sv.concept_index(0) == 0
    assert sv.class_rows().tolist() == [0, 1]
    assert sv.class_rows(["one", "zero"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="Did you mean"):
        sv.concept_index("onee")
    assert sv.masks().shape == (
        2,
        *digits_cnn.block3.pool(digits_cnn.block3.conv(torch.zeros(1, 32, 4, 4))).shape[1:],
    )


def test_perturbation_check_hand_computed():
    # head: class 0 reads unit 0 and 1 positively, unit 2 negatively
    model = feature_model(3, 2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, 1.0, -1.0], [0.0, 0.0, 0.0]]))
        model.head.bias.zero_()
    x = torch.tensor([[1.0, 1.0, 0.5], [1.0, 0.0, 1.0]])
    sv = SemanticVector(model, "feat", random_state=0).fit(
        {0: torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])}
    )
    res = sv.perturbation_check(x, [0, 0], concepts=[0, 0])

    def p(z):
        logits = torch.stack([z @ torch.tensor([1.0, 1, -1]), torch.zeros(len(z))], 1)
        return torch.softmax(logits, 1)[:, 0]

    base = p(x)
    # (a) unit argmax v_0 = 0 set to 1.5 x the example's max activation
    xa = x.clone()
    xa[:, 0] = 1.5 * x.max(dim=1).values
    assert torch.allclose(res.single_unit, p(xa) - base, atol=1e-6)
    # (b) mask 1[r > 0.5] = [1, 0, 0]
    assert torch.allclose(res.semantic_mask, p(x * torch.tensor([1.0, 0, 0])) - base, atol=1e-6)
    assert set(res.means()) == {"single_unit", "semantic_mask", "permuted_mask", "random_unit"}
    again = SemanticVector(model, "feat", random_state=0).fit({0: torch.tensor([[1.0, 1.0, 0.0]])})
    r1 = again.perturbation_check(x, [0, 0], concepts=[0, 0])
    r2 = again.perturbation_check(x, [0, 0], concepts=[0, 0])
    assert torch.equal(r1.permuted_mask, r2.permuted_mask) and torch.equal(r1.random_unit, r2.random_unit)


def test_perturbation_check_on_digits_semantic_mask_beats_single_unit(digits, digits_cnn):
    sv = SemanticVector(digits_cnn, "embedding_relu", random_state=0)
    sv.fit_from_labels((digits.x_train, digits.y_train))
    res = sv.perturbation_check(digits.x_test, digits.y_test).means()
    assert res["semantic_mask"] > res["permuted_mask"]
    assert res["semantic_mask"] > res["random_unit"]


def test_bad_input_errors(digits, digits_cnn):
    x, y = digits.x_train[:50], digits.y_train[:50]
    with pytest.raises(ValueError, match="no examples"):
        SemanticVector(digits_cnn, "block3.pool").fit(
            {"a": x, "b": DataLoader(TensorDataset(x[:0]), batch_size=4)}
        )
    with pytest.raises(ValueError, match="non-empty batch"):
        SemanticVector(digits_cnn, "block3.pool").fit({"a": x[:0]})
    with pytest.raises(ValueError, match="no examples"):
        SemanticVector(digits_cnn, "block3.pool").fit_from_labels((x, y), n_classes=12)
    with pytest.raises(ValueError, match="out of range|lie in"):
        SemanticVector(digits_cnn, "block3.pool").fit_from_labels((x, y), n_classes=3)
    with pytest.raises(ValueError, match="Did you mean"):
        SemanticVector(digits_cnn, "block3.pol").fit({"a": x})
    with pytest.raises(TypeError, match="concepts must be a non-empty dict"):
        SemanticVector(digits_cnn, "block3.pool").fit(x)
    with pytest.raises(TypeError, match="labels"):
        SemanticVector(digits_cnn, "block3.pool").fit_from_labels((x, y.float()))
    with pytest.raises(NotFittedError, match="not fitted"):
        SemanticVector(digits_cnn, "block3.pool").relevance()
    sv = SemanticVector(digits_cnn, "block3.pool").fit_from_labels((x, y))
    with pytest.raises(ValueError, match="threshold"):
        sv.masks(1.0)
    with pytest.raises(ValueError, match="targets must lie"):
        sv.perturbation_check(x[:3], [0, 1, 10])
    with pytest.raises(ValueError, match="unknown concept|out of range"):
        sv.rank(x, 11)
    named = SemanticVector(digits_cnn, "block3.pool").fit({2: x[y == 2], 5: x[y == 5]})
    with pytest.raises(ValueError, match="concepts="):
        named.class_rows()


class _FailOnSecondCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return x


def test_model_state_restored_after_exception(digits_cnn, digits):
    model = nn.Sequential(_FailOnSecondCall(), digits_cnn).train()
    model[1].block1.relu.inplace = True
    model[1].block2.conv.weight.requires_grad_(False)
    before = model_state(model)
    sv = SemanticVector(model, "1.block3.pool", batch_size=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # training-mode warning
        with pytest.raises(RuntimeError, match="boom"):
            sv.fit({"a": digits.x_train[:60]})
    assert_same_state(before, model)
    assert model.training


def test_sklearn_contract(digits_cnn):
    sv = SemanticVector(digits_cnn, "block3.pool", batch_size=32, random_state=3)
    params = sv.get_params()
    assert params["batch_size"] == 32 and params["random_state"] == 3 and params["layer"] == "block3.pool"
    cloned = clone(sv)
    assert not hasattr(cloned, "vectors_") and cloned.batch_size == 32
    x = torch.rand(8, 1, 8, 8)
    assert sv.fit({"a": x}) is sv


def test_fit_does_not_change_predictions(digits, digits_cnn):
    before = accuracy(digits_cnn, digits.x_test, digits.y_test)
    SemanticVector(digits_cnn, "block2.relu").fit_from_labels((digits.x_train, digits.y_train))
    assert accuracy(digits_cnn, digits.x_test, digits.y_test) == before


# ---------------------------------------------------------------------- issue 27.4: scikit-learn inputs
def _sk_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()


def test_numpy_inputs_numpy_and_list_labels_fit_like_tensors():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))  # float64, numpy's default
    y = np.arange(12) % 3
    model = _sk_model()
    ref = SemanticVector(model, "1").fit_from_labels(
        (torch.tensor(x, dtype=torch.float32), torch.tensor(y)), show_progress=False
    )
    assert ref.activation_rates_.sum() > 0
    for labels in (y, y.tolist()):
        sv = SemanticVector(model, "1").fit_from_labels((x, labels), show_progress=False)
        assert sv.concept_names_ == [0, 1, 2]
        torch.testing.assert_close(sv.vectors_, ref.vectors_)
        torch.testing.assert_close(sv.activation_rates_, ref.activation_rates_)
    torch.testing.assert_close(sv.transform(x[:4]), ref.transform(torch.tensor(x[:4], dtype=torch.float32)))
    by_dict = SemanticVector(model, "1").fit({c: x[y == c] for c in range(3)}, show_progress=False)
    torch.testing.assert_close(by_dict.vectors_, ref.vectors_)


def test_string_labels_and_concept_names():
    """Class names as labels: concepts in sorted order (scikit-learn's classes_), or in the order
    concept_names gives; the vectors are those of the integer classes."""
    import numpy as np

    torch.manual_seed(1)
    x = torch.randn(12, 5)
    y = torch.arange(12) % 3
    words = np.array(["cat", "dog", "ant"])[y.numpy()]  # class 0 = cat, 1 = dog, 2 = ant
    model = _sk_model()
    ref = SemanticVector(model, "1").fit_from_labels((x, y), show_progress=False)
    sv = SemanticVector(model, "1").fit_from_labels((x, list(words)), show_progress=False)
    assert sv.concept_names_ == ["ant", "cat", "dog"]
    torch.testing.assert_close(sv.vectors_, ref.vectors_[[2, 0, 1]])
    named = SemanticVector(model, "1").fit_from_labels(
        (x, words), concept_names=["cat", "dog", "ant"], show_progress=False
    )
    assert named.concept_names_ == ["cat", "dog", "ant"] and named.concept_index("dog") == 1
    torch.testing.assert_close(named.vectors_, ref.vectors_)
    names = ["cat", "dog", "ant"]
    ints = SemanticVector(model, "1").fit_from_labels((x, y), concept_names=names, show_progress=False)
    assert ints.concept_names_ == ["cat", "dog", "ant"]
    torch.testing.assert_close(ints.vectors_, ref.vectors_)
    with pytest.raises(ValueError, match=r"labels \['ant'\] are not in concept_names"):
        SemanticVector(model, "1").fit_from_labels((x, words), concept_names=["cat", "dog", "cow"])
    with pytest.raises(ValueError, match="n_classes=4 but 3 concept_names"):
        SemanticVector(model, "1").fit_from_labels((x, y), n_classes=4, concept_names=["a", "b", "c"])


def test_a_list_of_inputs_and_labels_says_pass_a_tuple():
    x, y = torch.randn(6, 5), torch.arange(6) % 2
    with pytest.raises(TypeError, match=r"pass a tuple \(inputs\.\.\., labels\)"):
        SemanticVector(_sk_model(), "1").fit_from_labels([x, y])
