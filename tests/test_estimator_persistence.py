"""save(path) / load(path) of fitted SemanticVector and CoupledNMFConcepts (issue 9).

Round trips give bit-identical results; a corrupted, truncated, foreign or malicious
file gives a clear ValueError and never runs code; unfitted or unsaveable estimators
give a clear error at save time.
"""

import os

import pytest
import torch
from sklearn.exceptions import NotFittedError

from captum_concepts.concept import CoupledNMFConcepts, OutOfCore, SemanticVector
from captum_concepts.data import DigitsCNN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DigitsCNN(width=8, embedding_dim=16).eval()


@pytest.fixture(scope="module")
def data(digits):
    return digits.x_train[:160], digits.y_train[:160], digits.x_test[:40]


def test_semantic_vector_round_trip_is_identical(tmp_path, model, data):
    x, y, x_new = data
    sv = SemanticVector(model, model.block3.pool, batch_size=64, random_state=7).fit_from_labels((x, y))
    path = tmp_path / "sv.pt"
    sv.save(path)
    loaded = SemanticVector.load(path)
    # usable without a model for everything that does not run it
    assert torch.equal(loaded.relevance(), sv.relevance())
    assert torch.equal(loaded.masks(0.3), sv.masks(0.3))
    assert loaded.concept_names_ == sv.concept_names_ and loaded.layer_shape_ == sv.layer_shape_
    for name in ("vectors_", "activation_rates_", "diversity_", "n_examples_"):
        assert torch.equal(getattr(loaded, name), getattr(sv, name)), name
    assert loaded.layer == "block3.pool" and loaded.random_state == 7 and loaded.batch_size == 64
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        loaded.similarity(x_new)
    loaded.model = model  # attach the model
    assert torch.equal(loaded.similarity(x_new), sv.similarity(x_new))
    again = SemanticVector.load(path, model=model)
    assert torch.equal(again.transform(x_new), sv.transform(x_new))
    a = sv.perturbation_check(x_new[:8], y[:8] % 10)
    b = again.perturbation_check(x_new[:8], y[:8] % 10)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in a.means())


def test_semantic_vector_string_names_round_trip(tmp_path, model, data):
    x, _, x_new = data
    sv = SemanticVector(model, "block2.pool").fit({"dark": x[:20] * 0.1, "bright": x[20:40]})
    sv.save(tmp_path / "named.pt")
    loaded = SemanticVector.load(tmp_path / "named.pt", model=model)
    assert loaded.concept_names_ == ["dark", "bright"]
    assert torch.equal(loaded.explain(x_new, k=1).indices, sv.explain(x_new, k=1).indices)


def test_coupled_nmf_round_trip_is_identical(tmp_path, model, data):
    x, y, x_new = data
    est = CoupledNMFConcepts(
        4, model, layers=["block2.pool", model.embedding_relu], max_iter=15, shift=None, random_state=1
    ).fit(x)
    path = tmp_path / "cnmf.pt"
    est.save(path)
    loaded = CoupledNMFConcepts.load(path)
    assert torch.equal(loaded.example_factors_, est.example_factors_)
    assert all(torch.equal(a, b) for a, b in zip(loaded.pixel_factors_, est.pixel_factors_))
    assert all(torch.equal(a, b) for a, b in zip(loaded.neuron_factors_, est.neuron_factors_))
    assert loaded.loss_history_ == est.loss_history_ and loaded.n_iter_ == est.n_iter_
    assert loaded.layers == ["block2.pool", "embedding_relu"]
    assert torch.equal(loaded.top_classes(y, k=2), est.top_classes(y, k=2))
    assert torch.equal(loaded.neuron_similarity(1), est.neuron_similarity(1))
    assert torch.equal(loaded.factor_images(), est.factor_images())
    loaded.model = model
    assert torch.equal(loaded.transform(x_new), est.transform(x_new))


def test_coupled_nmf_fit_matrices_with_shift_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(12, 30, generator=g)
    acts = torch.randn(9, 30, generator=g)  # negative entries: shifted
    est = CoupledNMFConcepts(3, shift="min", solver="hals", max_iter=10, dtype=torch.float64)
    est.fit_matrices([pixels], [acts])
    est.save(tmp_path / "m.pt")
    loaded = CoupledNMFConcepts.load(tmp_path / "m.pt")
    assert loaded.dtype == torch.float64 and loaded.solver == "hals"
    assert loaded.shift_[0] is None and torch.equal(loaded.shift_[1], est.shift_[1])
    new = {
        "pixel_blocks": [torch.rand(12, 5, generator=g)],
        "activation_blocks": [torch.randn(9, 5, generator=g)],
    }
    assert torch.equal(loaded.transform(**new), est.transform(**new))


def test_save_refuses_unfitted_and_unsaveable(tmp_path, model, data):
    x, _, _ = data
    with pytest.raises(NotFittedError, match="not fitted"):
        SemanticVector(model, "block2.pool").save(tmp_path / "a.pt")
    with pytest.raises(NotFittedError, match="not fitted"):
        CoupledNMFConcepts(2).save(tmp_path / "b.pt")
    sv = SemanticVector(model, "block2.pool").fit({(1, 2): x[:10]})
    with pytest.raises(TypeError, match="concept names must be str or int"):
        sv.save(tmp_path / "c.pt")
    assert not os.path.exists(tmp_path / "c.pt")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign", "wrong_kind", "evil"])
def test_damaged_files_give_a_clear_error(tmp_path, data, damage, model):
    x, y, _ = data
    path = tmp_path / "sv.pt"
    SemanticVector(model, "block3.pool").fit_from_labels((x[:50], y[:50])).save(path)
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 3])
    elif damage == "garbage":
        path.write_bytes(raw[:100] + bytes(range(256)) * 4 + raw[1200:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        torch.save(model.state_dict(), path)
    elif damage == "wrong_kind":
        CoupledNMFConcepts(2, max_iter=2).fit_matrices([torch.rand(4, 6)]).save(path)
    else:
        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"magic": "captum_concepts", "tensors": Evil()}, path)
    with pytest.raises(ValueError, match="path="):
        SemanticVector.load(path, model=model)
    assert not (tmp_path / "pwned").exists()


def test_loading_a_file_with_inconsistent_content_is_refused(tmp_path):
    from captum_concepts._utils.persistence import load_state, save_state

    est = CoupledNMFConcepts(3, max_iter=3).fit_matrices([torch.rand(5, 8)], [torch.rand(4, 8)])
    est.save(tmp_path / "ok.pt")
    tensors, meta = load_state(tmp_path / "ok.pt", "CoupledNMFConcepts")
    meta.pop("package_version")
    tensors["components"] = tensors["components"][:, :-1]
    save_state(tmp_path / "bad.pt", "CoupledNMFConcepts", tensors, meta)
    with pytest.raises(ValueError, match="corrupted"):
        CoupledNMFConcepts.load(tmp_path / "bad.pt")
    del tensors["components"]
    save_state(tmp_path / "bad2.pt", "CoupledNMFConcepts", tensors, meta)
    with pytest.raises(ValueError, match="'components' is missing"):
        CoupledNMFConcepts.load(tmp_path / "bad2.pt")


def test_out_of_core_fit_round_trip_leaves_no_file(tmp_path, model, data):
    x, _, x_new = data
    settings = OutOfCore("64MB", directory=str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    est = CoupledNMFConcepts(3, model, layers=["block3.pool"], max_iter=5, out_of_core=settings).fit(x)
    assert list((tmp_path / "store").iterdir()) == []  # the activation file is deleted after fit
    est.save(tmp_path / "ooc.pt")
    loaded = CoupledNMFConcepts.load(tmp_path / "ooc.pt", model=model)
    assert loaded.out_of_core is None  # a fit-time setting, not saved
    assert torch.equal(loaded.transform(x_new), est.transform(x_new))
