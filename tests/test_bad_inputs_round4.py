"""Reliability round 4 (issue 28, items 3, 4, 5 and 14): flags never read by truthiness, boolean
masks and numpy ints as ``embedding_dims``, NaN and overflow never turned into finite numbers, and
every public entry's arguments checked before the model runs (a forward counter proves it)."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch
from torch import nn

from captum_concepts._utils.validation import Bool, InvalidParameterError, flag_parameters
from captum_concepts.attr import EmbeddingAttribution, SemanticGradientInput, SimilarityAttribution
from captum_concepts.concept import (
    CoupledNMFConcepts,
    SemanticVector,
    channel_masks,
    concept_importance,
    concept_presence_maps,
    concept_sobol_indices,
)
from captum_concepts.data import DigitsCNN

PUBLIC = [
    "captum_concepts.attr",
    "captum_concepts.concept",
    "captum_concepts.metrics",
    "captum_concepts.visualization",
    "captum_concepts.data",
    "captum_concepts.distributed",
]


class Counting(nn.Module):
    """``net`` with a count of its forward passes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


torch.manual_seed(0)
MODEL = Counting(DigitsCNN(width=4, embedding_dim=8)).eval()  # 10 classes, embedding D = 8
X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.fixture(scope="module")
def sv():
    return SemanticVector(MODEL, "net.block3.pool", random_state=0).fit_from_labels((X, Y))


@pytest.fixture(scope="module")
def cnmf():
    return CoupledNMFConcepts(
        3, MODEL, layers=["net.block3.pool"], include_pixels=False, max_iter=5, random_state=0
    ).fit(X)


def _passes(fn):
    """The number of forward passes of MODEL while ``fn`` runs (and what it raised)."""
    MODEL.calls = 0
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - returned to the test
        return MODEL.calls, err
    return MODEL.calls, None


# ---------------------------------------------------------------------- item 4: flags
def _public_entries():
    seen = set()
    for name in PUBLIC:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                for meth_name, meth in vars(obj).items():  # the class's own methods, not nn.Module's
                    if inspect.isfunction(meth) and (
                        meth_name == "__init__" or not meth_name.startswith("_")
                    ):
                        yield f"{name}.{attr}.{meth_name}", obj, meth
            elif inspect.isfunction(obj):
                yield f"{name}.{attr}", None, obj


FLAGGED = [
    (where, cls, fn, flag)
    for where, cls, fn in _public_entries()
    for flag in flag_parameters(inspect.signature(fn))
]


def test_the_sweep_finds_the_flags_of_the_issue():
    names = {(where.rsplit(".", 2)[-2:][0] if cls else "", flag) for where, cls, _, flag in FLAGGED}
    for expected in [
        ("EmbeddingAttribution", "attribute_to_layer_input"),
        ("EmbeddingAttribution", "eval_mode"),
        ("EmbeddingAttribution", "return_per_dim"),
        ("EmbeddingAttribution", "create_graph"),
        ("CoupledNMFConcepts", "include_pixels"),
    ]:
        assert expected in names
    assert len(FLAGGED) >= 30


@pytest.mark.parametrize("where, cls, fn, flag", FLAGGED, ids=[f"{w}:{f}" for w, _, _, f in FLAGGED])
def test_every_flag_of_every_public_entry_goes_through_the_bool_check(where, cls, fn, flag):
    """Methods and functions are wrapped by ``validated`` (which gives every flag ``Bool``);
    estimator constructors store their parameters (scikit-learn's rule) and their constraint
    table checks each flag with ``Bool`` in every ``fit*``, before any pass."""
    if cls is not None and fn.__name__ == "__init__" and hasattr(cls, "_parameter_constraints"):
        assert isinstance(cls._parameter_constraints.get(flag), Bool), f"{where}: {flag} has no Bool rule"
    else:
        assert getattr(fn, "__validated__", False), f"{where} is not wrapped by validated ({flag})"


def _ea(**kw):
    return EmbeddingAttribution(MODEL, embedding_layer="net.embedding", **kw)


FLAG_CALLS = {
    "attribute_to_layer_input": lambda v: _ea(layer="net.block3.pool", attribute_to_layer_input=v),
    "eval_mode": lambda v: _ea(eval_mode=v),
    "return_per_dim": lambda v: _ea().attribute(X, return_per_dim=v),
    "create_graph": lambda v: _ea().attribute(X, create_graph=v),
    "show_progress": lambda v: _ea().attribute(X, show_progress=v),
    "plan return_per_dim": lambda v: _ea().plan(X, return_per_dim=v),
    "similarity eval_mode": lambda v: SimilarityAttribution(MODEL, eval_mode=v),
    "semantic eval_mode": lambda v: SemanticGradientInput(
        MODEL, "net.block3.pool", torch.rand(2, 64), eval_mode=v
    ),
    "include_pixels": lambda v: CoupledNMFConcepts(
        2, MODEL, layers=["net.block3.pool"], include_pixels=v
    ).fit(X),
    "distributed": lambda v: SemanticVector(MODEL, "net.block3.pool", distributed=v).fit_from_labels((X, Y)),
}


@pytest.mark.parametrize("value", ["False", "no", None, 0, 1, np.float64(0.0)])
@pytest.mark.parametrize("case", sorted(FLAG_CALLS))
def test_flags_given_as_strings_none_or_numbers_are_refused_by_name_before_any_pass(case, value):
    flag = case.split()[-1]
    passes, err = _passes(lambda: FLAG_CALLS[case](value))
    assert isinstance(err, InvalidParameterError), err
    assert f"{flag} must be True or False" in str(err)
    assert passes == 0


def test_numpy_bools_are_flags():
    maps = _ea().attribute(X, return_per_dim=np.bool_(True))
    assert maps.shape == (6, 8, 8, 8)


# ---------------------------------------------------------------------- item 3: embedding_dims
def test_a_boolean_mask_selects_the_dimensions_where_it_is_true():
    ea = _ea()
    mask = np.arange(8) >= 5
    for given in (mask, torch.as_tensor(mask), mask.tolist()):
        torch.testing.assert_close(
            ea.attribute(X, embedding_dims=given, return_per_dim=True),
            ea.attribute(X, embedding_dims=[5, 6, 7], return_per_dim=True),
        )


@pytest.mark.parametrize("mask", [np.arange(7) >= 5, [True, False], torch.ones(9, dtype=torch.bool)])
def test_a_mask_of_the_wrong_length_is_refused_by_name(mask):
    with pytest.raises(ValueError, match=r"embedding_dims is a boolean mask of length \d+.*D = 8"):
        _ea().attribute(X, embedding_dims=mask)


def test_an_all_false_mask_is_refused():
    with pytest.raises(ValueError, match="embedding_dims selects no dimension"):
        _ea().attribute(X, embedding_dims=np.zeros(8, dtype=bool))


@pytest.mark.parametrize("given", [np.int64(3), np.int32(3), torch.tensor(3), np.array([3])])
def test_numpy_integers_are_ints(given):
    ea = _ea()
    torch.testing.assert_close(ea.attribute(X, embedding_dims=given), ea.attribute(X, embedding_dims=3))


@pytest.mark.parametrize("given", [-1, [0, -2], "3", 1.5, [[1]], True])
def test_bad_embedding_dims_are_refused_before_any_pass(given):
    passes, err = _passes(lambda: _ea().attribute(X, embedding_dims=given))
    assert isinstance(err, (ValueError, TypeError)) and "embedding_dims" in str(err), err
    assert passes == 0


def test_embedding_dims_beyond_d_fail_on_the_first_pass_with_its_name():
    passes, err = _passes(lambda: _ea().attribute(X, embedding_dims=[8]))
    assert isinstance(err, ValueError) and "embedding_dims [8] out of range for D = 8" in str(err)
    assert passes == 1  # D is known once the model has run


# ---------------------------------------------------------------------- item 14: entries checked first
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"random_state": True}, "random_state"),
        ({"random_state": 1.5}, "random_state"),
        ({"random_state": -1}, "random_state"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": 2.0}, "max_batch"),
        ({"n_designs": 1}, "n_designs"),
    ],
)
def test_sobol_arguments_are_refused_before_any_pass(cnmf, kwargs, match):
    passes, err = _passes(lambda: concept_sobol_indices(cnmf, X[:2], target=1, **kwargs))
    assert isinstance(err, InvalidParameterError) and match in str(err), err
    assert passes == 0


def test_sobol_takes_numpy_seeds_as_ints(cnmf):
    a = concept_sobol_indices(cnmf, X[:2], target=1, n_designs=4, random_state=np.int64(0))
    b = concept_sobol_indices(cnmf, X[:2], target=1, n_designs=4, random_state=0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("entry", ["sobol", "importance"])
def test_a_target_beyond_the_classes_fails_on_the_first_pass_by_name(cnmf, entry):
    fn = concept_sobol_indices if entry == "sobol" else concept_importance
    passes, err = _passes(lambda: fn(cnmf, X[:2], target=99))
    assert isinstance(err, ValueError) and "target [99, 99] out of range for 10 classes" in str(err), err
    assert passes == 1  # the classes are known once the model has run; transform has not run


def test_upsample_is_checked_before_any_pass(sv):
    passes, err = _passes(lambda: concept_presence_maps(sv, X, upsample="bogus"))
    assert isinstance(err, ValueError) and "upsample" in str(err), err
    assert passes == 0


def test_perturbation_scale_is_checked_before_any_pass(sv):
    for scale in (float("nan"), float("inf"), "2", True):
        passes, err = _passes(lambda scale=scale: sv.perturbation_check(X, Y, scale=scale))
        assert isinstance(err, InvalidParameterError) and "scale must be a finite real number" in str(err)
        assert passes == 0


@pytest.mark.parametrize(
    "layer_shape, match",
    [
        ((16, 2, 3), r"layer_shape \(16, 2, 3\) has 96 units.*64"),
        ((True, 64), "layer_shape must be"),
        ((16, 0, 4), "layer_shape must be"),
        ((16.0, 2, 2), "layer_shape must be"),
        ((), "layer_shape must be"),
        ("16", "layer_shape must be"),
    ],
)
def test_channel_masks_check_the_layer_shape(layer_shape, match):
    with pytest.raises(ValueError, match=match):
        channel_masks(torch.rand(3, 64), layer_shape)


def test_channel_masks_take_numpy_ints():
    rates = torch.rand(3, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(channel_masks(rates, (np.int64(16), 2, 2)), channel_masks(rates, (16, 2, 2)))


# ---------------------------------------------------------------------- item 5: NaN and overflow
class Linear(nn.Module):
    """A bias-free linear encoder: cosines do not change with the inputs' scale."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 5, bias=False)

    def forward(self, x):
        return self.lin(x)


ENC = Linear().eval()
A = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
B = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_similarity_scores_of_nan_or_inf_inputs_are_an_error_naming_the_examples(similarity, bad):
    a = A.clone()
    a[1, 2] = bad
    with pytest.raises(
        ValueError, match=r"embedding of inputs_a holds NaN or infinite values for examples \[1\]"
    ):
        SimilarityAttribution(ENC, similarity=similarity).similarity_scores(a, B)


def test_cosine_scores_of_huge_inputs_are_exact():
    sa = SimilarityAttribution(ENC, similarity="cosine")
    expected = torch.nn.functional.cosine_similarity(ENC(A).double(), ENC(B).double()).float()
    got = sa.similarity_scores(A * 1e30, B * 1e25)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_dot_scores_that_overflow_are_an_error_naming_the_examples():
    with pytest.raises(
        ValueError, match=r"similarity_scores produced NaN or infinite values for examples \[0, 1, 2\]"
    ):
        SimilarityAttribution(ENC, similarity="dot").similarity_scores(A * 1e30, B * 1e30)


def test_presence_maps_of_nan_inputs_are_an_error_naming_the_examples(sv):
    x = X.clone()
    x[2, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"layer output holds NaN or infinite values for examples \[2\]"):
        concept_presence_maps(sv, x)


def test_presence_maps_of_huge_inputs_are_the_maps_of_the_unscaled_ones():
    """A bias-free ReLU network is positively homogeneous: its layer output scales with the
    inputs, so the cosines of the semantic vectors do not change."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)
    ).eval()
    sv_ = SemanticVector(net, "1", random_state=0).fit_from_labels((X, torch.tensor([0, 1, 2, 0, 1, 2])))
    plain = concept_presence_maps(sv_, X, upsample=None)
    huge = concept_presence_maps(sv_, X * 1e30, upsample=None)
    assert plain.abs().max() > 0.1
    torch.testing.assert_close(huge, plain, rtol=1e-4, atol=1e-5)


def test_sobol_indices_that_overflow_are_an_error_naming_the_examples(cnmf):
    with pytest.raises(
        ValueError, match=r"concept_sobol_indices produced NaN or infinite values for examples"
    ):
        concept_sobol_indices(cnmf, X[:2] * 1e30, target=1, n_designs=4)


def test_sobol_indices_of_nan_inputs_are_an_error_naming_the_examples(cnmf):
    x = X[:3].clone()
    x[1, 0, 0, 0] = float("nan")
    coefficients = torch.rand(3, 3)
    with pytest.raises(ValueError, match=r"layer output holds NaN or infinite values for examples \[1\]"):
        concept_sobol_indices(cnmf, x, target=1, n_designs=4, coefficients=coefficients)
