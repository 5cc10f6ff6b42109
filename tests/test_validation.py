"""One validation mechanism: scalar checks, constraint tables, errors before the first forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _kernels import assert_matches
from torch import nn

from captum_concepts._utils.validation import (
    InvalidParameterError,
    check_int,
    check_option,
    check_real,
    seed_of,
)
from captum_concepts.concept import CoupledNMFConcepts, OutOfCore, SemanticVector
from captum_concepts.data import DigitsCNN


class CountingModel(nn.Module):
    """A DigitsCNN whose forward calls are counted."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = DigitsCNN(width=4, embedding_dim=6).eval()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.fixture
def counting():
    return CountingModel().eval()


X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


# ---------------------------------------------------------------------- scalar checks
def test_check_int_accepts_numpy_rejects_bool_and_checks_bounds():
    assert check_int(np.int64(4), "batch_size", low=1) == 4
    assert type(check_int(np.int32(4), "batch_size")) is int
    for bad in (True, np.bool_(True), 2.0, "3", None):
        with pytest.raises(InvalidParameterError, match="batch_size must be an int"):
            check_int(bad, "batch_size")
    with pytest.raises(ValueError, match=r"n must be an int >= 1 and <= 3, got 0"):
        check_int(0, "n", low=1, high=3)
    assert check_int(None, "n", allow_none=True) is None


def test_check_real_option_and_seed():
    assert check_real(np.float32(0.5), "tol", low=0) == 0.5
    for bad in (float("nan"), float("inf"), True, "1", -1.0):
        with pytest.raises(InvalidParameterError, match="tol must be a finite real number"):
            check_real(bad, "tol", low=0)
    with pytest.raises(ValueError, match=r"x must be a finite real number > 0"):
        check_real(0.0, "x", low=0, low_open=True)
    assert check_option("mu", "solver", ("mu", "hals")) == "mu"
    with pytest.raises(ValueError, match="solver must be one of 'mu', 'hals', got 'MU'"):
        check_option("MU", "solver", ("mu", "hals"))
    assert seed_of(np.int64(3)) == 3 and seed_of(None) is None
    with pytest.raises(TypeError, match="random_state"):
        seed_of(True)


# ---------------------------------------------------------------------- numpy ints work
def test_coupled_nmf_takes_numpy_ints(counting):
    kw = dict(model=counting, layers=["net.block2.pool"], max_iter=3)
    numpy = CoupledNMFConcepts(np.int64(3), batch_size=np.int64(4), random_state=np.int64(1), **kw)
    plain = CoupledNMFConcepts(3, batch_size=4, random_state=1, **kw)
    a, b = numpy.fit(X), plain.fit(X)
    assert torch.equal(a.example_factors_, b.example_factors_)
    assert counting.calls == 4  # 2 batches of 4 per fit


@pytest.mark.kernels
def test_semantic_vector_takes_numpy_ints(counting):
    a = SemanticVector(counting, "net.block3.pool", batch_size=np.int64(4)).fit_from_labels((X, Y))
    b = SemanticVector(counting, "net.block3.pool", batch_size=4).fit_from_labels((X, Y))
    assert torch.equal(a.vectors_, b.vectors_)
    c = SemanticVector(counting, "net.block3.pool").fit_from_labels((X, Y), n_classes=np.int64(3))
    assert_matches(c.vectors_, b.vectors_)  # one batch of 8 vs two of 4: to float tolerance


def test_numpy_random_state_draws_like_the_int(counting):
    base = SemanticVector(counting, "net.block3.pool", random_state=3).fit_from_labels((X, Y))
    other = SemanticVector(counting, "net.block3.pool", random_state=np.int64(3)).fit_from_labels((X, Y))
    a, b = base.perturbation_check(X, Y), other.perturbation_check(X, Y)
    for name in a.means():
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.permuted_mask, a.semantic_mask)  # the draw matters to the result


# ---------------------------------------------------------------------- errors before any forward pass
CNMF_BAD = {
    "n_concepts=True": (dict(n_concepts=True), "n_concepts must be an int"),
    "max_iter=True": (dict(max_iter=True), "max_iter must be an int"),
    "batch_size=0": (dict(batch_size=0), "batch_size must be an int >= 1"),
    "tol=nan": (dict(tol=float("nan")), "tol must be a finite real number"),
    "lambda_o=-1": (dict(lambda_o=-1.0), "lambda_o must be a finite real number >= 0"),
    "include_pixels=1": (dict(include_pixels=1), "include_pixels must be True or False"),
    "block_weights=balance": (dict(block_weights="balance"), "block_weights must be"),
    "block_weights=[1, 2, 3]": (dict(block_weights=[1.0, 2.0, 3.0]), "block_weights must hold 2 weights"),
    "block_weights=[1, -1]": (dict(block_weights=[1.0, -1.0]), "block_weights must be"),
    "group_sparsity without groups": (dict(group_sparsity=0.1), "group_sparsity > 0 needs groups"),
    "solver": (dict(solver="als"), "solver must be one of"),
    "shift": (dict(shift="max"), "shift must be one of"),
    "dtype": (dict(dtype=torch.int32), "dtype must be one of"),
    "device": (dict(device="gpu0"), "device must be None, a torch.device"),
    "random_state": (dict(random_state="0"), "random_state must be"),
    "layers as a string": (dict(layers="net.block2.pool"), "layers must be a sequence of layers"),
    "layer name": (dict(layers=["net.block2.pol"]), "Did you mean"),
    "out_of_core inf": (dict(out_of_core=OutOfCore(float("inf"))), "memory_budget must be a positive"),
    "out_of_core 1e300": (dict(out_of_core=OutOfCore(1e300)), "at most 2\\*\\*60"),
    "out_of_core missing folder": (dict(out_of_core=OutOfCore(directory="/nonexistent/x")), "does not exist"),
    "out_of_core folder is a file": (dict(out_of_core=OutOfCore(directory=__file__)), "is a file"),
}


@pytest.mark.parametrize("case", sorted(CNMF_BAD))
def test_coupled_nmf_refuses_before_the_first_forward(counting, case):
    params, message = CNMF_BAD[case]
    kw = dict(n_concepts=2, model=counting, layers=["net.block2.pool"], max_iter=2)
    kw.update(params)
    with pytest.raises((ValueError, TypeError, OSError), match=message):
        CoupledNMFConcepts(**kw).fit(X)
    assert counting.calls == 0


def test_coupled_nmf_group_length_is_checked_before_the_forward(counting):
    est = CoupledNMFConcepts(2, counting, layers=["net.block2.pool"], group_sparsity=0.1)
    with pytest.raises(ValueError, match=r"groups must be 1-D with one entry per example \(N=6\)"):
        est.fit(X, groups=[0, 1, 2])
    assert counting.calls == 0


def test_fit_matrices_and_fit_store_check_before_reading(tmp_path):
    from captum_concepts.concept import ActivationStore

    with pytest.raises(ValueError, match="n_concepts must be an int >= 1"):
        CoupledNMFConcepts(0).fit_matrices([torch.rand(3, 4)])
    store = ActivationStore(None, [3, 2])
    store.append([torch.rand(4, 3), torch.rand(4, 2)])
    with pytest.raises(ValueError, match="block_weights must hold 2 weights"):
        CoupledNMFConcepts(2, block_weights=[1.0]).fit_store(store.close())
    with pytest.raises(ValueError, match="group_sparsity > 0 needs groups"):
        CoupledNMFConcepts(2, group_sparsity=1.0).fit_store(store)


SV_BAD = {
    "batch_size=True": (dict(batch_size=True), "batch_size must be an int"),
    "batch_size=0": (dict(batch_size=0), "batch_size must be an int >= 1"),
    "random_state=-1": (dict(random_state=-1), "random_state must be"),
    "distributed=None": (dict(distributed=None), "distributed must be True or False"),
    "device": (dict(device=3.0), "device must be"),
    "layer": (dict(layer=3), "layer must be a dotted layer name"),
}


@pytest.mark.parametrize("case", sorted(SV_BAD))
def test_semantic_vector_refuses_before_the_first_forward(counting, case):
    params, message = SV_BAD[case]
    kw = dict(layer="net.block3.pool")
    kw.update(params)
    with pytest.raises((ValueError, TypeError), match=message):
        SemanticVector(counting, **kw).fit_from_labels((X, Y))
    with pytest.raises((ValueError, TypeError), match=message):
        SemanticVector(counting, **kw).fit({"a": X})
    assert counting.calls == 0


def test_semantic_vector_n_classes_checked_before_the_forward(counting):
    for bad in (0, True, 2.0):
        with pytest.raises((ValueError, TypeError), match="n_classes must be an int"):
            SemanticVector(counting, "net.block3.pool").fit_from_labels((X, Y), n_classes=bad)
    assert counting.calls == 0


# ---------------------------------------------------------------------- labels and targets
def test_label_column_is_read_as_class_indices(counting):
    flat = SemanticVector(counting, "net.block3.pool").fit_from_labels((X, Y))
    column = SemanticVector(counting, "net.block3.pool").fit_from_labels((X, Y[:, None]))
    assert column.concept_names_ == [0, 1, 2]
    assert torch.equal(column.vectors_, flat.vectors_)


def test_perturbation_check_refuses_float_and_bool_targets(counting):
    sv = SemanticVector(counting, "net.block3.pool", random_state=0).fit_from_labels((X, Y))
    for bad in (Y.float() + 0.7, Y > 0, [0.5] * 6):
        with pytest.raises(TypeError, match="targets must be integer class indices"):
            sv.perturbation_check(X, bad)
