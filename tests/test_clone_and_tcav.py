"""scikit-learn ``clone`` of estimators holding a model, and TCAV concepts unique per fit."""

from __future__ import annotations

import random

import numpy as np
import torch
from captum.concept import TCAV
from sklearn.base import clone

from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.data import DigitsCNN

X = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(40) % 4


def _model() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(width=4, embedding_dim=6).eval()


def test_clone_of_coupled_nmf_with_module_layers_fits_its_own_model():
    model = _model()
    est = CoupledNMFConcepts(3, model, layers=[model.block2.pool, "block3.pool"], max_iter=5)
    twin = clone(est)
    assert twin.model is not model and twin.layers == ["block2.pool", "block3.pool"]
    assert est.layers[0] is model.block2.pool  # the original is untouched
    twin.fit(X)
    est.fit(X)
    assert torch.equal(twin.example_factors_, est.example_factors_)


def test_clone_of_semantic_vector_with_a_module_layer_fits_its_own_model():
    model = _model()
    sv = SemanticVector(model, model.block3.pool)
    twin = clone(sv)
    assert twin.model is not model and twin.layer == "block3.pool"
    assert torch.equal(twin.fit_from_labels((X, Y)).vectors_, sv.fit_from_labels((X, Y)).vectors_)


def test_tcav_results_are_not_reused_across_fits(tmp_path):
    model = _model()

    def concepts(seed):
        est = CoupledNMFConcepts(3, model, layers=["block3.pool"], max_iter=10, random_state=seed).fit(X)
        return est.to_captum_concepts(X, k=8)

    first, second = concepts(0), concepts(1)
    assert [c.name for c in first] != [c.name for c in second]
    assert not {c.id for c in first} & {c.id for c in second}  # Captum keys CAVs by ids alone
    again = concepts(0)  # the same fit: the same names and ids (its cache may be reused)
    assert [(c.id, c.name) for c in again] == [(c.id, c.name) for c in first]
    x = X[:4]

    def scores(concept_list, path):
        torch.manual_seed(0)  # TCAV's classifier splits and trains at random
        np.random.seed(0)
        random.seed(0)
        tcav = TCAV(model, ["block3.pool"], save_path=str(path) + "/")
        out = tcav.interpret(x, [[concept_list[0], concept_list[1]]], target=0)
        return next(iter(out.values()))["block3.pool"]["magnitude"]

    shared = tmp_path / "shared"
    scores(first, shared)
    reused = scores(second, shared)  # same save_path: must not pick up the first fit's CAVs
    fresh = scores(second, tmp_path / "fresh")
    assert torch.allclose(reused, fresh)
