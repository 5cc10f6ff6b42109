"""Files: checksums and content checks on load, atomic writes, estimator-owned parameters and state."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from captum_concepts._utils.persistence import load_state, save_state
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.data import DigitsCNN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DigitsCNN(width=4, embedding_dim=6).eval()


X = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.arange(12) % 3


@pytest.fixture(scope="module")
def sv(model):
    return SemanticVector(model, model.block3.pool, random_state=np.int64(3)).fit_from_labels((X, Y))


@pytest.fixture(scope="module")
def cnmf():
    g = torch.Generator().manual_seed(0)
    return CoupledNMFConcepts(3, max_iter=4, shift="min").fit_matrices(
        [torch.rand(6, 10, generator=g)], [torch.randn(5, 10, generator=g)]
    )


def _same_sv(a, b) -> bool:
    def params(e):
        return {k: v for k, v in e.get_params().items() if k not in ("model", "layer")}

    return (
        params(a) == params(b)
        and a.concept_names_ == b.concept_names_
        and all(
            torch.equal(getattr(a, k), getattr(b, k))
            for k in ("vectors_", "activation_rates_", "diversity_", "n_examples_")
        )
    )


def _same_cnmf(a, b) -> bool:
    return (
        torch.equal(a._components, b._components)
        and torch.equal(a.example_factors_, b.example_factors_)
        and a.loss_history_ == b.loss_history_
        and a.block_weights_ == b.block_weights_
        and all((s is None and t is None) or torch.equal(s, t) for s, t in zip(a.shift_, b.shift_))
    )


# ---------------------------------------------------------------------- bit flips
@pytest.mark.parametrize("which", ["sv", "cnmf"])
def test_every_flipped_bit_is_refused_or_harmless(tmp_path, request, which):
    est = request.getfixturevalue(which)
    cls, same = (SemanticVector, _same_sv) if which == "sv" else (CoupledNMFConcepts, _same_cnmf)
    path = tmp_path / "est.pt"
    est.save(path)
    raw = bytearray(path.read_bytes())
    refused = harmless = 0
    positions = np.unique(np.linspace(0, len(raw) - 1, 400).astype(int))
    for i, pos in enumerate(positions):
        damaged = bytearray(raw)
        damaged[pos] ^= 1 << (i % 8)
        path.write_bytes(bytes(damaged))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = cls.load(path)
        except ValueError as err:
            assert "path=" in str(err)
            refused += 1
            continue
        assert same(loaded, est), f"a flip at byte {pos} changed the loaded estimator silently"
        harmless += 1
    assert refused > len(positions) // 2  # most bytes matter; every one that does is caught
    path.write_bytes(bytes(raw))
    assert same(cls.load(path), est)


def _resave(tmp_path, kind, edit):
    """Load the payload of a good file, edit it, save it again (with a fresh, valid checksum)."""
    tensors, meta = load_state(tmp_path / "good.pt", kind)
    meta.pop("package_version")
    edit(tensors, meta)
    save_state(tmp_path / "bad.pt", kind, tensors, meta)
    return tmp_path / "bad.pt"


SV_DAMAGE = {
    "NaN vector": (lambda t, m: t["vectors"].__setitem__((0, 0), float("nan")), "NaN"),
    "negative count": (lambda t, m: t["n_examples"].__setitem__(0, -4), "below 1"),
    "wrong shape": (lambda t, m: t.__setitem__("vectors", t["vectors"][:, :-1]), "shape"),
    "wrong dtype": (lambda t, m: t.__setitem__("vectors", t["vectors"].double()), "dtype"),
    "not unit": (lambda t, m: t["vectors"].mul_(3.0), "unit norm"),
    "rate above 1": (lambda t, m: t["activation_rates"].__setitem__((0, 0), 2.0), "above 1"),
    "bad layer shape": (lambda t, m: m["fitted"].__setitem__("layer_shape", [True]), "layer_shape"),
    "unknown parameter": (lambda t, m: m["params"].__setitem__("colour", 3), "does not take"),
    "bad parameter": (lambda t, m: m["params"].__setitem__("batch_size", -1), "batch_size must be"),
}


CNMF_DAMAGE = {
    "negative factor": (lambda t, m: t["components"].__setitem__((0, 0), -1.0), "below 0"),
    "inf factor": (lambda t, m: t["example_factors"].__setitem__((0, 0), float("inf")), "NaN or infinite"),
    "positive shift": (lambda t, m: t["shift_1"].fill_(1.0), "above 0"),
    "wrong dtype": (lambda t, m: t.__setitem__("components", t["components"].double()), "dtype"),
    "offsets": (lambda t, m: m["fitted"].__setitem__("offsets", [0, 3, 2]), "offsets"),
    "n_iter": (lambda t, m: m["fitted"].__setitem__("n_iter", -2), "n_iter"),
    "weights": (lambda t, m: m["fitted"].__setitem__("block_weights", [1.0, 0.0]), "weights"),
}


DAMAGE = {("sv", k): v for k, v in SV_DAMAGE.items()} | {("cnmf", k): v for k, v in CNMF_DAMAGE.items()}


@pytest.mark.parametrize("which, case", sorted(DAMAGE))
def test_loaded_content_is_validated(tmp_path, request, which, case):
    cls = SemanticVector if which == "sv" else CoupledNMFConcepts
    request.getfixturevalue(which).save(tmp_path / "good.pt")
    edit, message = DAMAGE[which, case]
    path = _resave(tmp_path, cls.__name__, edit)
    with pytest.raises(ValueError, match=f"path=.*bad.pt.*{message}"):
        cls.load(path)


@pytest.mark.parametrize("version", [0, -5, True, 1.0, "2", 99])
def test_bad_format_versions_are_refused(tmp_path, sv, version):
    sv.save(tmp_path / "good.pt")
    payload = torch.load(tmp_path / "good.pt", weights_only=True)
    payload["format_version"] = version
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt.*format version"):
        SemanticVector.load(tmp_path / "bad.pt")


# ---------------------------------------------------------------------- atomic writes
def test_save_leaves_other_files_alone_and_no_temporary_file(tmp_path, sv):
    path = tmp_path / "X"
    (tmp_path / "X.tmp").write_text("mine")
    sv.save(path)
    assert (tmp_path / "X.tmp").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "X.tmp"]


def test_a_failed_save_keeps_the_old_file_and_leaves_nothing(tmp_path, sv, cnmf, monkeypatch):
    path = tmp_path / "est.pt"
    sv.save(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        sv.save(path)
    monkeypatch.undo()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        sv.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["est.pt"]


def test_save_through_a_symlink_replaces_its_target(tmp_path, sv, cnmf):
    target = tmp_path / "real.pt"
    cnmf.save(target)
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    sv.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert _same_sv(SemanticVector.load(target), sv)


def test_save_to_a_folder_or_a_missing_folder_is_a_clear_error(tmp_path, sv):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        sv.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sv.save(tmp_path / "missing" / "x.pt")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- estimator-owned parameters
class TaggedNMF(CoupledNMFConcepts):
    """A subclass with new constructor parameters (scikit-learn style: an explicit signature)."""

    def __init__(self, n_concepts=20, max_iter=500, random_state=0, tag="none", scale=(1, 2), hook=None):
        super().__init__(n_concepts, max_iter=max_iter, random_state=random_state)
        self.tag = tag
        self.scale = scale
        self.hook = hook


def test_a_new_constructor_parameter_round_trips(tmp_path):
    est = TaggedNMF(2, tag="blue", scale=(np.int64(3), 0.5), max_iter=2, random_state=np.int64(4))
    est.fit_matrices([torch.rand(4, 6)])
    est.save(tmp_path / "t.pt")
    loaded = TaggedNMF.load(tmp_path / "t.pt")
    assert loaded.tag == "blue" and loaded.scale == (3, 0.5) and type(loaded.scale[0]) is np.int64
    assert type(loaded.random_state) is np.int64 and loaded.random_state == 4
    params = [{k: repr(v) for k, v in e.get_params().items()} for e in (loaded, est)]
    assert params[0] == params[1]
    with pytest.raises(ValueError, match="does not take"):
        CoupledNMFConcepts.load(tmp_path / "t.pt")  # the base class has no 'tag'


def test_numpy_array_parameters_round_trip(tmp_path):
    weights = np.array([1.0, 2.5], dtype=np.float32)
    est = CoupledNMFConcepts(2, max_iter=2, block_weights=weights)
    est.fit_matrices([torch.rand(4, 6)], [torch.rand(3, 6)]).save(tmp_path / "w.pt")
    loaded = CoupledNMFConcepts.load(tmp_path / "w.pt")
    assert loaded.block_weights.dtype == np.float32 and np.array_equal(loaded.block_weights, weights)


def test_a_callable_parameter_is_not_saved_and_is_passed_to_load(tmp_path):
    def hook(t):
        return t

    est = TaggedNMF(2, hook=hook, max_iter=2).fit_matrices([torch.rand(4, 6)])
    est.save(tmp_path / "t.pt")
    with pytest.warns(UserWarning, match=r"\['hook'\] could not be saved.*hook=\.\.\."):
        assert TaggedNMF.load(tmp_path / "t.pt").hook is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TaggedNMF.load(tmp_path / "t.pt", hook=hook).hook is hook
    with pytest.raises(TypeError, match="unknown parameters"):
        TaggedNMF.load(tmp_path / "t.pt", colour=1)


def test_random_state_keeps_its_numpy_type_and_its_draws(tmp_path, model, sv):
    sv.save(tmp_path / "sv.pt")
    loaded = SemanticVector.load(tmp_path / "sv.pt", model=model)
    assert type(loaded.random_state) is np.int64 and loaded.random_state == 3
    a, b = sv.perturbation_check(X, Y), loaded.perturbation_check(X, Y)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in a.means())


def test_a_model_of_another_architecture_is_refused_at_first_use(tmp_path, sv):
    sv.save(tmp_path / "sv.pt")
    other = DigitsCNN(width=8, embedding_dim=6).eval()
    loaded = SemanticVector.load(tmp_path / "sv.pt", model=other)
    with pytest.raises(ValueError, match="fitted on outputs of shape .* architecture"):
        loaded.similarity(X)
    with pytest.raises(ValueError, match="fitted on outputs of shape .* architecture"):
        loaded.perturbation_check(X, Y)
