"""Determinism (issue 9): the same ``random_state`` (or seed) gives the same results, bit for bit, on CPU.

Each check also changes the seed and expects a different result, so it cannot pass vacuously.
"""

from __future__ import annotations

import pytest
import torch

from captum_concepts.attr import EmbeddingAttribution, SemanticGuidedBackprop
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.data import DigitsCNN
from captum_concepts.metrics import drift_score, noise_benchmark, noise_score, score_curve

pytestmark = pytest.mark.kernels  # the bit-for-bit checks hold on CI's other kernel paths too

torch.manual_seed(0)
MODEL = DigitsCNN(width=4, embedding_dim=6).eval()
X = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def _cnmf_state(est):
    return [est.example_factors_, *est.pixel_factors_, *est.neuron_factors_], est.loss_history_


def _same(a, b) -> bool:
    return all(torch.equal(s, t) for s, t in zip(a[0], b[0])) and a[1] == b[1]


@pytest.mark.parametrize("solver", ["mu", "hals"])
def test_coupled_nmf_same_seed_same_bits(solver):
    def fit(seed):
        est = CoupledNMFConcepts(
            3, MODEL, layers=["block2.pool", "embedding_relu"], solver=solver, max_iter=8
        )
        return _cnmf_state(est.set_params(random_state=seed).fit(X))

    first = fit(4)
    assert _same(first, fit(4))
    assert not _same(first, fit(5))
    g = torch.Generator().manual_seed(1)
    blocks = [torch.rand(7, 12, generator=g)], [torch.rand(5, 12, generator=g)]
    groups = [0, 1, 2] * 4

    def fit_matrices(seed):
        est = CoupledNMFConcepts(3, solver=solver, max_iter=8, random_state=seed, group_sparsity=0.1)
        return est.fit_matrices(*blocks, groups=groups)

    a, b = fit_matrices(0), fit_matrices(0)
    assert _same(_cnmf_state(a), _cnmf_state(b))
    new = ([torch.rand(7, 3, generator=g)], [torch.rand(5, 3, generator=g)])
    assert torch.equal(a.transform(new), b.transform(new))


def test_semantic_vector_perturbation_check_same_seed_same_bits():
    def run(seed):
        sv = SemanticVector(MODEL, "block3.pool", random_state=seed).fit_from_labels((X, Y))
        return sv.perturbation_check(X, Y)

    a, b, c = run(3), run(3), run(4)
    for name in ("single_unit", "semantic_mask", "permuted_mask", "random_unit"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # the random parts change with the seed, the deterministic ones do not
    assert not torch.equal(a.random_unit, c.random_unit) or not torch.equal(a.permuted_mask, c.permuted_mask)
    assert torch.equal(a.single_unit, c.single_unit) and torch.equal(a.semantic_mask, c.semantic_mask)


def _seeded_noise(seed):
    gen = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=gen)


def test_noise_scores_with_a_seeded_noise_function_or_global_seed():
    ea = EmbeddingAttribution(MODEL, "embedding", layer="block2.relu")
    a = noise_score(ea, X, noise_func=_seeded_noise(0), n_noise=2)
    b = noise_score(ea, X, noise_func=_seeded_noise(0), n_noise=2)
    c = noise_score(ea, X, noise_func=_seeded_noise(1), n_noise=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    results = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)  # the default N(0, 1) noise uses the global generator
        results.append(
            (
                noise_benchmark(ea, X, n_draws=2),
                drift_score(ea, X, [0.1, 0.3]),
                score_curve(
                    MODEL, "embedding", ["block2.relu", "block3.pool"], X, n_benchmark_draws=2
                ).values,
            )
        )
    assert all(torch.equal(s, t) for s, t in zip(results[0], results[1]))
    assert not torch.equal(results[0][0], results[2][0])


def test_attributions_are_repeatable():
    for strategy in ("loop", "batched"):
        ea = EmbeddingAttribution(MODEL, "embedding", layer=[None, "block2.relu"], strategy=strategy)
        first, second = ea.attribute(X, return_per_dim=True), ea.attribute(X, return_per_dim=True)
        assert all(torch.equal(s, t) for s, t in zip(first, second)), strategy
    ones = torch.ones(4, 16, 2, 2)
    sgb = SemanticGuidedBackprop(MODEL, "block3.pool", ones)
    assert torch.equal(sgb.attribute(X, target=Y), sgb.attribute(X, target=Y))
