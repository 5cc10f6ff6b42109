"""Every method that needs a fit raises scikit-learn's NotFittedError, from one check."""

from __future__ import annotations

import pytest
import torch
from sklearn.exceptions import NotFittedError

from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.data import DigitsCNN

MODEL = DigitsCNN(width=4, embedding_dim=6).eval()
X = torch.rand(4, 1, 8, 8)
Y = torch.tensor([0, 1, 0, 1])
MATS = ([torch.rand(4, 4)], [])

CNMF_CALLS = {
    "transform": lambda e: e.transform(MATS),
    "top_examples": lambda e: e.top_examples(2),
    "class_scores": lambda e: e.class_scores(Y),
    "top_classes": lambda e: e.top_classes(Y),
    "neuron_similarity": lambda e: e.neuron_similarity(0),
    "factor_images": lambda e: e.factor_images(),
    "factor_masks": lambda e: e.factor_masks(X),
    "neighbor_concepts": lambda e: e.neighbor_concepts(2),
    "to_captum_concepts": lambda e: e.to_captum_concepts(X, k=2),
    "save": lambda e: e.save("/nonexistent/never-written.pt"),
}

SV_CALLS = {
    "concept_index": lambda s: s.concept_index(0),
    "class_rows": lambda s: s.class_rows(),
    "masks": lambda s: s.masks(),
    "relevance": lambda s: s.relevance(),
    "transform": lambda s: s.transform(X),
    "similarity": lambda s: s.similarity(X),
    "rank": lambda s: s.rank(X, 0),
    "explain": lambda s: s.explain(X),
    "perturbation_check": lambda s: s.perturbation_check(X, Y),
    "save": lambda s: s.save("/nonexistent/never-written.pt"),
}


@pytest.mark.parametrize("method", sorted(CNMF_CALLS))
def test_coupled_nmf_methods_need_a_fit(method):
    with pytest.raises(NotFittedError, match="CoupledNMFConcepts instance is not fitted yet; call fit"):
        CNMF_CALLS[method](CoupledNMFConcepts(2, MODEL, layers=["block2.pool"]))


@pytest.mark.parametrize("method", sorted(SV_CALLS))
def test_semantic_vector_methods_need_a_fit(method):
    with pytest.raises(NotFittedError, match="SemanticVector instance is not fitted yet; call fit"):
        SV_CALLS[method](SemanticVector(MODEL, "block3.pool"))


def test_not_fitted_error_is_what_scikit_learn_users_catch():
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    with pytest.raises(ValueError):
        SemanticVector(MODEL, "block3.pool").relevance()


def _concept_map_calls():
    from captum_concepts.concept import (
        concept_attribution_maps,
        concept_importance,
        concept_presence_maps,
        concept_sobol_indices,
    )

    return {
        "concept_presence_maps": lambda c: concept_presence_maps(c, X),
        "concept_attribution_maps": lambda c: concept_attribution_maps(c, X),
        "concept_importance": lambda c: concept_importance(c, X, target=Y),
        "concept_sobol_indices": lambda c: concept_sobol_indices(c, X, target=Y),
    }


@pytest.mark.parametrize("function", sorted(_concept_map_calls()))
def test_concept_maps_need_a_fit(function):
    call = _concept_map_calls()[function]
    with pytest.raises(NotFittedError, match="CoupledNMFConcepts instance is not fitted yet; call fit"):
        call(CoupledNMFConcepts(2, MODEL, layers=["block2.pool"]))
    if function in ("concept_presence_maps", "concept_attribution_maps"):  # these also read semantic vectors
        with pytest.raises(NotFittedError, match="SemanticVector instance is not fitted yet; call fit"):
            call(SemanticVector(MODEL, "block3.pool"))


@pytest.mark.parametrize("name", ["SemanticGuidedBackprop", "SemanticGradientInput"])
def test_semantic_attributions_need_a_fitted_semantic_vector(name):
    import captum_concepts.attr as attr

    with pytest.raises(NotFittedError, match="SemanticVector instance is not fitted yet; call fit"):
        getattr(attr, name)(MODEL, "block3.pool", SemanticVector(MODEL, "block3.pool"))
