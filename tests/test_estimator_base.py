"""The concept estimators share one base: declared fitted attributes drive the not-fitted check,
save / load and clone; every public entry goes through the ``validated`` decorator; the
explicit matrix parameters of ``CoupledNMFConcepts.transform``."""

from __future__ import annotations

import inspect
import types
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError

from captum_concepts._utils.persistence import load_state, save_state
from captum_concepts._utils.validation import validated
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.data import DigitsCNN

MODEL = DigitsCNN(width=4, embedding_dim=6).eval()
X = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(12) % 3
G = torch.Generator().manual_seed(1)
PIXELS, ACTS = [torch.rand(6, 10, generator=G)], [torch.rand(5, 10, generator=G)]
NEW_PIXELS, NEW_ACTS = [torch.rand(6, 4, generator=G)], [torch.rand(5, 4, generator=G)]

UNFITTED = {
    CoupledNMFConcepts: lambda: CoupledNMFConcepts(2, MODEL, layers=["block2.pool"]),
    SemanticVector: lambda: SemanticVector(MODEL, "block3.pool"),
}
_VALIDATED_CODE = validated()(lambda self: None).__code__


def _public_methods(cls):
    """Every public method of ``cls`` that is not scikit-learn's (``BaseEstimator``'s, or its
    generated metadata-routing setters), a fit method or ``load``."""
    skip = set(dir(BaseEstimator)) | set(cls._fit_methods) | {"load"}
    return sorted(
        name
        for name in dir(cls)
        if not name.startswith("_")
        and name not in skip
        and isinstance(inspect.getattr_static(cls, name), (types.FunctionType, classmethod, staticmethod))
    )


def _validated_layer(function):
    """The ``validated`` wrapper around ``function`` (through other decorators), or None."""
    while function is not None:
        if getattr(function, "__code__", None) is _VALIDATED_CODE:
            return function
        function = getattr(function, "__wrapped__", None)
    return None


@pytest.mark.parametrize("cls", list(UNFITTED), ids=lambda c: c.__name__)
def test_fit_methods_are_declared(cls):
    public_fits = {name for name, _ in inspect.getmembers(cls, callable) if name.startswith("fit")}
    assert set(cls._fit_methods) == public_fits
    for name in public_fits:
        assert _validated_layer(getattr(cls, name)) is not None, f"{cls.__name__}.{name} is not validated"


CASES = [(cls, name) for cls in UNFITTED for name in _public_methods(cls)]


@pytest.mark.parametrize("cls, name", CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_every_public_method_that_needs_a_fit_is_validated_and_refuses_an_unfitted_estimator(cls, name):
    wrapper = _validated_layer(getattr(cls, name))
    assert wrapper is not None, f"{cls.__name__}.{name} does not go through the validated decorator"
    assert wrapper.__validated__.fitted, f"{cls.__name__}.{name}: fitted=False"
    with pytest.raises(NotFittedError, match=f"{cls.__name__} instance is not fitted yet; call fit"):
        getattr(UNFITTED[cls](), name)()  # refused before the arguments are even needed


def test_the_enumeration_covers_the_analyses_and_the_export():
    names = set(_public_methods(CoupledNMFConcepts))
    assert {"transform", "top_examples", "class_scores", "top_classes", "neuron_similarity"} <= names
    assert {"factor_images", "factor_masks", "neighbor_concepts", "to_captum_concepts", "save"} <= names
    assert {"transform", "similarity", "rank", "explain", "perturbation_check", "masks"} <= set(
        _public_methods(SemanticVector)
    )


def test_not_fitted_names_every_fit_method_and_checks_every_declared_attribute():
    est = CoupledNMFConcepts(2, max_iter=3).fit_matrices(PIXELS, ACTS)
    del est.loss_history_  # a state missing one declared attribute is not a fit
    with pytest.raises(NotFittedError, match="call fit, fit_matrices, fit_store or fit_transform before"):
        est.top_examples(2)
    with pytest.raises(NotFittedError, match="call fit or fit_from_labels before"):
        SemanticVector(MODEL, "block3.pool").relevance()


# ---------------------------------------------------------------------- declared state
def _fitted():
    cnmf = CoupledNMFConcepts(2, max_iter=3, shift="min").fit_matrices(PIXELS, [ACTS[0] - 0.5])
    sv = SemanticVector(MODEL, "block3.pool").fit_from_labels((X, Y))
    return {CoupledNMFConcepts: cnmf, SemanticVector: sv}


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("cls", list(UNFITTED), ids=lambda c: c.__name__)
def test_save_load_restores_every_declared_attribute_and_clone_none(tmp_path, cls):
    est = _fitted()[cls]
    est.save(tmp_path / "est.pt")
    loaded = cls.load(tmp_path / "est.pt")
    attributes = [spec.attr for spec in cls._fitted_attributes]
    assert len(attributes) >= 6
    for attr in attributes:
        assert _equal(getattr(loaded, attr), getattr(est, attr)), attr
    twin = clone(est)
    assert not any(hasattr(twin, attr) for attr in attributes)
    assert {k: repr(v) for k, v in twin.get_params().items() if k != "model"} == {
        k: repr(v) for k, v in est.get_params().items() if k != "model"
    }


def _resave(tmp_path, est, key, value):
    est.save(tmp_path / "good.pt")
    tensors, meta = load_state(tmp_path / "good.pt", type(est).__name__)
    meta.pop("package_version")
    meta["fitted"][key] = value
    save_state(tmp_path / "bad.pt", type(est).__name__, tensors, meta)
    return tmp_path / "bad.pt"


@pytest.mark.parametrize(
    "cls, key, value, message",
    [
        (CoupledNMFConcepts, "layer_names", [3], r"'layer_names' must be a list \(each item a str\)"),
        (CoupledNMFConcepts, "block_names", ["pixels[0]", None], "'block_names' must be a list"),
        (CoupledNMFConcepts, "n_iter", True, "'n_iter' must be an int >= 0"),
        (CoupledNMFConcepts, "loss_history", [1.0, "2"], "'loss_history' must be a list"),
        (CoupledNMFConcepts, "input_shape", [1, 0], r"'input_shape' must be a list \(each .* >= 1\) or None"),
        (SemanticVector, "layer_shape", [2, 2.0], r"'layer_shape' must be a list \(each item an int >= 1\)"),
        (SemanticVector, "concept_names", [["int", True]], "'concept_names' must be a list"),
    ],
)
def test_saved_values_are_checked_with_the_shared_constraints(tmp_path, cls, key, value, message):
    path = _resave(tmp_path, _fitted()[cls], key, value)
    with pytest.raises(ValueError, match=f"path=.*bad.pt.* is corrupted: {message}"):
        cls.load(path)


# ---------------------------------------------------------------------- transform
@pytest.fixture(scope="module")
def cnmf():
    return CoupledNMFConcepts(2, max_iter=20).fit_matrices(PIXELS, ACTS)


@pytest.mark.parametrize("max_iter", [-1, True, 2.5, "3"])
def test_transform_checks_max_iter(cnmf, max_iter):
    with pytest.raises(ValueError, match="max_iter must be an int >= 0 or None"):
        cnmf.transform(pixel_blocks=NEW_PIXELS, activation_blocks=NEW_ACTS, max_iter=max_iter)


def test_transform_takes_the_matrices_as_named_parameters(cnmf):
    new = cnmf.transform(pixel_blocks=NEW_PIXELS, activation_blocks=NEW_ACTS)
    assert new.shape == (2, 4) and bool((new > 0).any())
    fewer = cnmf.transform(pixel_blocks=NEW_PIXELS, activation_blocks=NEW_ACTS, max_iter=np.int64(1))
    assert not torch.allclose(fewer, new)  # max_iter reaches the solver
    with pytest.warns(DeprecationWarning, match=r"call transform\(pixel_blocks=\.\.\., activation_"):
        old = cnmf.transform((NEW_PIXELS, NEW_ACTS))
    torch.testing.assert_close(old, new)
    pixels_only = CoupledNMFConcepts(2, max_iter=5).fit_matrices(PIXELS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pixels_only.transform(pixel_blocks=NEW_PIXELS, samples_first=False).shape == (2, 4)


def test_transform_refuses_ambiguous_or_missing_data(cnmf):
    with pytest.raises(TypeError, match="inputs or pixel_blocks= / activation_blocks=, not both"):
        cnmf.transform(X, pixel_blocks=NEW_PIXELS)
    with pytest.raises(TypeError, match="needs inputs .* or pixel_blocks= / activation_blocks="):
        cnmf.transform()
    with pytest.raises(TypeError, match="pixel_blocks must be a list of matrices, got one Tensor"):
        cnmf.transform(pixel_blocks=NEW_PIXELS[0])
    with pytest.raises(ValueError, match="fitted with fit_matrices.* pass pixel_blocks= and activation_"):
        cnmf.transform(X)


FORMAT = {  # the saved names of format version 2: files written before the base still load
    CoupledNMFConcepts: (
        {"components", "example_factors", "shift_1"},
        {"offsets", "n_pixel_blocks", "fitted_on_inputs", "shifted_blocks", "loss_history", "n_iter"}
        | {"converged", "block_weights", "block_names", "layer_names", "layer_shapes", "input_shape"},
    ),
    SemanticVector: (
        {"vectors", "activation_rates", "diversity", "n_examples"},
        {"concept_names", "layer_shape"},
    ),
}


@pytest.mark.parametrize("cls", list(UNFITTED), ids=lambda c: c.__name__)
def test_the_saved_names_are_those_of_the_file_format(tmp_path, cls):
    _fitted()[cls].save(tmp_path / "est.pt")
    tensors, meta = load_state(tmp_path / "est.pt", cls.__name__)
    assert (set(tensors), set(meta["fitted"])) == FORMAT[cls]
