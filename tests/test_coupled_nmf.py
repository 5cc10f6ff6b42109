"""CoupledNMFConcepts: objective, equivalence with scikit-learn NMF, digits concepts, TCAV."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from _kernels import assert_matches, kernel_batch
from captum.concept import TCAV
from sklearn.base import clone
from sklearn.decomposition import NMF
from sklearn.exceptions import NotFittedError
from torch.utils.data import DataLoader, TensorDataset

from captum_concepts._utils.hooks import ModelGuard
from captum_concepts.concept import CoupledNMFConcepts
from captum_concepts.testing import assert_same_state, model_state

DIGIT_LAYERS = ["block2.pool", "block3.pool", "embedding_relu"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matrices: one thread avoids OpenMP contention on a shared CPU
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blocks(seed=0, n=240, rows=(48, 30, 64)):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(r, n, generator=g).pow(1 + i) for i, r in enumerate(rows)]


def _stacked_objective(cnmf, blocks):
    W = torch.cat(cnmf.pixel_factors_ + cnmf.neuron_factors_).double()
    M = torch.cat(blocks).double()
    return float((M - W @ cnmf.example_factors_.double()).pow(2).sum())


@pytest.fixture(scope="module")
def digits_fit(digits, trained_digits):
    model = copy.deepcopy(trained_digits.model).eval()
    cnmf = CoupledNMFConcepts(10, model, layers=DIGIT_LAYERS, solver="hals", max_iter=100, random_state=0)
    return cnmf.fit(digits.x_train)


# ---------------------------------------------------------------------- objective
@pytest.mark.parametrize("normalize", [True, False])
def test_mu_objective_non_increasing(normalize):
    blocks = _blocks()
    reg = {} if normalize else dict(lambda_p=0.1, lambda_o=0.3, lambda_f=0.05)
    cnmf = CoupledNMFConcepts(6, solver="mu", normalize_columns=normalize, max_iter=150, tol=0, **reg)
    cnmf.fit_matrices(blocks[:1], blocks[1:])
    h = np.asarray(cnmf.loss_history_)
    assert len(h) == 151 and cnmf.n_iter_ == 150
    assert np.all(np.diff(h) <= 1e-6 * h[:-1]), "MU increased the objective"
    assert h[-1] < 0.7 * h[0]


@pytest.mark.parametrize("solver", ["mu", "hals"])
def test_objective_from_statistics_equals_residual(solver):
    """The trace-identity objective equals ||M - W F||^2 computed from the stacked matrix."""
    blocks = _blocks(1)
    cnmf = CoupledNMFConcepts(5, solver=solver, max_iter=40, tol=0).fit_matrices(blocks[:2], blocks[2:])
    assert cnmf.loss_history_[-1] == pytest.approx(_stacked_objective(cnmf, blocks), rel=1e-5)
    lam = CoupledNMFConcepts(5, solver=solver, lambda_p=0.2, lambda_o=0.1, lambda_f=0.3, max_iter=10, tol=0)
    lam.fit_matrices(blocks[:2], blocks[2:])
    penalty = 0.2 * sum(float(p.double().pow(2).sum()) for p in lam.pixel_factors_)
    penalty += 0.1 * float(lam.neuron_factors_[0].double().pow(2).sum())
    penalty += 0.3 * float(lam.example_factors_.double().pow(2).sum())
    assert lam.loss_history_[-1] == pytest.approx(_stacked_objective(lam, blocks) + penalty, rel=1e-5)


def test_unregularised_matches_sklearn_nmf_on_stacked_matrix():
    blocks = _blocks(2)
    n_iter = 40
    # max_iter=0 exposes the random start; normalize_columns=False keeps it untouched
    start = CoupledNMFConcepts(6, normalize_columns=False, max_iter=0, random_state=4)
    start.fit_matrices(blocks[:1], blocks[1:])
    W0 = torch.cat(start.pixel_factors_ + start.neuron_factors_).double().numpy()  # (R, d)
    F0 = start.example_factors_.double().numpy()  # (d, N)
    ours = CoupledNMFConcepts(6, normalize_columns=False, max_iter=n_iter, tol=0, random_state=4)
    ours.fit_matrices(blocks[:1], blocks[1:])
    assert torch.allclose(
        torch.cat(start.pixel_factors_ + start.neuron_factors_), torch.from_numpy(W0).float()
    )
    # scikit-learn: X (n_samples, n_features) ~ W H; samples = our examples, so X = M^T,
    # W = F^T, H = [P; O]^T. sklearn updates W before H, as we update F before [P; O].
    M = torch.cat(blocks).double().numpy()
    nmf = NMF(6, solver="mu", beta_loss="frobenius", init="custom", max_iter=n_iter, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W_sk = nmf.fit_transform(M.T.copy(), W=F0.T.copy(), H=W0.T.copy())
    assert nmf.n_iter_ == n_iter
    sk_objective = float(((M.T - W_sk @ nmf.components_) ** 2).sum())
    assert ours.loss_history_[-1] == pytest.approx(sk_objective, rel=0.01)
    assert ours.loss_history_[-1] < 0.8 * ours.loss_history_[0]  # it did move


def test_hals_reaches_mu_objective_in_fewer_iterations():
    blocks = _blocks(3)
    mu = CoupledNMFConcepts(6, solver="mu", max_iter=400, tol=0).fit_matrices(blocks[:1], blocks[1:])
    hals = CoupledNMFConcepts(6, solver="hals", max_iter=400, tol=1e-6).fit_matrices(blocks[:1], blocks[1:])
    assert hals.loss_history_[-1] <= mu.loss_history_[-1] * 1.001
    assert mu.loss_history_[-1] <= hals.loss_history_[-1] * 1.03  # similar objective
    reached = np.nonzero(np.asarray(hals.loss_history_) <= mu.loss_history_[-1])[0]
    assert len(reached) and reached[0] < 100
    h = np.asarray(hals.loss_history_)
    assert np.all(np.diff(h) <= 1e-6 * h[:-1])


def test_group_sparsity_zeroes_whole_groups(digits):
    """Group lasso over classes: whole (concept, class) groups of F vanish.

    Measured on 600 digits (pixels only, d=10, beta=10): HALS sets 81 of the 100
    groups exactly to zero (none without the penalty); MU, which cannot reach
    exact zeros, brings 44 below 1% of the largest group norm.
    """
    x = digits.x_train[:600].reshape(600, -1).t()
    y = digits.y_train[:600]

    def small_groups(solver, beta, rel):
        cnmf = CoupledNMFConcepts(10, solver=solver, group_sparsity=beta, max_iter=150)
        cnmf.fit_matrices([x], [], groups=y)
        assert cnmf.loss_history_[-1] < cnmf.loss_history_[0]
        F = cnmf.example_factors_
        norms = torch.zeros(10, 10).index_add_(1, y, F * F).sqrt()
        return int((norms <= rel * norms.max()).sum())

    assert small_groups("hals", 0.0, 1e-6) == 0
    assert small_groups("hals", 10.0, 1e-6) >= 50
    assert small_groups("mu", 0.0, 1e-2) <= 5
    assert small_groups("mu", 10.0, 1e-2) >= 25


def test_determinism_under_random_state():
    blocks = _blocks(4)
    runs = [
        CoupledNMFConcepts(5, solver=s, max_iter=30, random_state=7).fit_matrices(blocks[:1], blocks[1:])
        for s in ("mu", "mu", "hals", "hals")
    ]
    for a, b in (runs[:2], runs[2:]):
        assert torch.equal(a.example_factors_, b.example_factors_)
        assert all(torch.equal(p, q) for p, q in zip(a.neuron_factors_, b.neuron_factors_))
        assert a.loss_history_ == b.loss_history_
    other = CoupledNMFConcepts(5, max_iter=30, random_state=8).fit_matrices(blocks[:1], blocks[1:])
    assert not torch.equal(other.example_factors_, runs[0].example_factors_)


def test_block_weights_balanced_and_explicit():
    blocks = _blocks(5)
    blocks[2] = blocks[2] * 10.0
    cnmf = CoupledNMFConcepts(4, block_weights="balanced", max_iter=5).fit_matrices(blocks[:1], blocks[1:])
    energy = [float(b.double().pow(2).sum()) for b in blocks]
    weighted = [w * e for w, e in zip(cnmf.block_weights_, energy)]
    assert weighted == pytest.approx([sum(energy) / 3] * 3, rel=1e-5)
    explicit = CoupledNMFConcepts(4, block_weights=[1.0, 2.0, 0.5], max_iter=20, tol=0)
    explicit.fit_matrices(blocks[:1], blocks[1:])
    W = explicit.pixel_factors_ + explicit.neuron_factors_
    J = sum(
        w * float((x.double() - p.double() @ explicit.example_factors_.double()).pow(2).sum())
        for w, x, p in zip((1.0, 2.0, 0.5), blocks, W)
    )
    assert explicit.loss_history_[-1] == pytest.approx(J, rel=1e-5)


# ---------------------------------------------------------------------- digits
def test_digits_concepts_are_purer_than_chance(digits, digits_fit):
    """Top-50 examples of each concept: share of the concept's majority class.

    Measured (seed 0, d=10, HALS, 100 iterations): mean 0.90; random sets of 50
    digits: 0.17 (99th percentile 0.24). Threshold 0.6.
    """
    y = digits.y_train
    top = digits_fit.top_examples(50)
    purity = [float((y[t] == y[t].mode().values).float().mean()) for t in top]
    assert np.mean(purity) >= 0.6, purity
    classes = digits_fit.top_classes(y, k=3)
    assert classes.shape == (10, 3)
    assert len(set(classes[:, 0].tolist())) >= 7  # concepts spread over the digits
    assert digits_fit.block_names_ == ["pixels[0]", *DIGIT_LAYERS]
    assert [o.shape for o in digits_fit.neuron_factors_] == [(512, 10), (256, 10), (32, 10)]
    assert digits_fit.pixel_factors_[0].shape == (64, 10)


@pytest.mark.kernels
def test_fit_leaves_model_untouched_and_loader_matches_tensor(digits, digits_cnn):
    before = model_state(digits_cnn)
    x = digits.x_test
    kwargs = dict(layers=["block3.pool", "embedding_relu"], max_iter=20, solver="hals")
    a = CoupledNMFConcepts(6, digits_cnn, **kwargs).fit(x)
    assert_same_state(before, digits_cnn)
    loader = DataLoader(TensorDataset(x, digits.y_test), batch_size=kernel_batch(50))
    b = CoupledNMFConcepts(6, digits_cnn, **kwargs).fit(loader, has_labels=True)
    # 20 HALS sweeps carry the rounding of another batch composition: compared to a fraction of the
    # factors' scale (near-zero entries differ by more than 1e-5 on some kernel paths)
    scale = float(a.example_factors_.abs().max())
    assert_matches(b.example_factors_, a.example_factors_, rtol=1e-3, atol=1e-4 * scale)
    pooled = CoupledNMFConcepts(6, digits_cnn, layers=["block2.relu", "block3.pool"], pool="mean", max_iter=5)
    pooled.fit(x)
    assert [o.shape[0] for o in pooled.neuron_factors_] == [32, 64]
    assert pooled.layer_shapes_ == [(32,), (64,)]
    assert_same_state(before, digits_cnn)


@pytest.mark.kernels
def test_transform_recovers_training_factors(digits, digits_fit):
    F_new = digits_fit.transform(digits.x_train, samples_first=False)
    F = digits_fit.example_factors_
    assert F_new.shape == F.shape
    assert float((F_new - F).norm() / F.norm()) < 0.05
    on_test = digits_fit.transform(digits.x_test, samples_first=False)
    assert on_test.shape == (10, 360) and bool((on_test >= 0).all())
    # matrices path, same numbers as the inputs path
    blocks = [digits.x_test.reshape(360, -1).t()]
    acts = []
    with torch.no_grad(), ModelGuard(digits_fit.model) as guard:
        for name in DIGIT_LAYERS:
            guard.register_forward_hook(digits_fit.model.get_submodule(name), lambda m, i, o: acts.append(o))
        digits_fit.model(digits.x_test)
    mats = digits_fit.transform(pixel_blocks=blocks, activation_blocks=[a.reshape(360, -1).t() for a in acts],
                                samples_first=False)
    assert torch.allclose(mats, on_test, rtol=1e-4, atol=1e-5)


def test_analyses_shapes_and_values(digits, digits_fit):
    d = 10
    sims = [digits_fit.neuron_similarity(j, return_eigenvalues=True) for j in range(3)]
    for sim, eig in sims:
        assert sim.shape == (d, d)
        assert torch.allclose(sim.diagonal(), torch.ones(d), atol=1e-5)
        assert torch.allclose(sim, sim.t(), atol=1e-6) and bool((sim >= -1e-6).all())
        assert eig.shape == (d,) and eig.sum() == pytest.approx(d, rel=1e-4)
        assert bool((eig[:-1] >= eig[1:] - 1e-6).all())
    assert torch.equal(digits_fit.neuron_similarity("embedding_relu"), sims[2][0])
    images = digits_fit.factor_images()
    assert images.shape == (d, 1, 8, 8)
    masks, overlays = digits_fit.factor_masks(digits.x_train, k=3)
    assert masks.shape == (d, 1, 8, 8) and overlays.shape == (d, 3, 1, 8, 8)
    assert 0.3 <= float(masks.float().mean()) <= 0.55  # above the median: about half
    top = digits_fit.top_examples(3)
    assert torch.equal(overlays[0, 0], digits.x_train[top[0, 0]] * masks[0])
    neigh = digits_fit.neighbor_concepts(k=30)
    assert neigh.shape == (digits.x_train.shape[0], d)
    assert torch.allclose(neigh.sum(1), torch.ones(len(neigh)))
    # an example's neighbours mostly share its dominant concept
    own = neigh[torch.arange(len(neigh)), digits_fit.example_factors_.argmax(0)]
    assert float(own.mean()) > 0.5


def test_to_captum_concepts_runs_through_tcav(tmp_path, digits, digits_fit):
    concepts = digits_fit.to_captum_concepts(digits.x_train, k=20, concepts=[0, 1, 2], first_id=5)
    assert [c.id for c in concepts] == [5, 6, 7]
    assert [c.name.split("-")[0] for c in concepts] == ["cnmf0", "cnmf1", "cnmf2"]
    batch = next(iter(concepts[0].data_iter))
    top = digits_fit.top_examples(20)
    assert torch.equal(batch, digits.x_train[top[0]])
    model = digits_fit.model
    before = model_state(model)
    tcav = TCAV(model, ["block3.pool"], save_path=str(tmp_path) + "/")
    target = int(digits.y_train[top[0, 0]])
    x = digits.x_test[digits.y_test == target][:6]
    scores = tcav.interpret(x, [[concepts[0], concepts[1]], [concepts[0], concepts[2]]], target=target)
    assert len(scores) == 2
    for result in scores.values():
        sign = result["block3.pool"]["sign_count"]
        assert sign.shape == (2,) and bool(((sign >= 0) & (sign <= 1)).all())
    assert_same_state(before, model)


def test_sklearn_estimator_contract():
    est = CoupledNMFConcepts(3, solver="hals", lambda_f=0.1)
    assert est.get_params()["lambda_f"] == 0.1
    twin = clone(est).set_params(n_concepts=4)
    assert twin.n_concepts == 4 and not hasattr(twin, "example_factors_")
    assert est.fit_matrices([], _blocks(6)[:1]) is est


# ---------------------------------------------------------------------- bad input
def test_negative_inputs_raise_with_fix_and_shift_min(digits, digits_cnn):
    normalised = (digits.x_test - 0.5) / 0.25
    with pytest.raises(ValueError, match=r"pixels\[0\].*unnormalised.*shift='min'"):
        CoupledNMFConcepts(3, max_iter=2).fit(normalised)
    with pytest.raises(ValueError, match=r"block2\.conv.*ReLU.*shift='min'"):
        CoupledNMFConcepts(3, digits_cnn, layers=["block2.conv"], include_pixels=False).fit(digits.x_test)
    shifted = CoupledNMFConcepts(3, shift="min", max_iter=20).fit(normalised)
    by_hand = normalised - normalised.amin(0, keepdim=True).clamp(max=0)  # per-pixel minimum
    plain = CoupledNMFConcepts(3, max_iter=20).fit(by_hand)
    assert torch.allclose(shifted.example_factors_, plain.example_factors_, rtol=1e-4, atol=1e-5)
    new_shifted = shifted.transform(normalised, samples_first=True)
    assert torch.allclose(new_shifted, plain.transform(by_hand, samples_first=True), rtol=1e-3, atol=1e-4)


def test_bad_arguments(digits, digits_cnn):
    blocks = _blocks(7)
    with pytest.raises(ValueError, match="solver"):
        CoupledNMFConcepts(solver="cd").fit_matrices(blocks)
    with pytest.raises(ValueError, match="n_concepts"):
        CoupledNMFConcepts(0).fit_matrices(blocks)
    with pytest.raises(ValueError, match="same number of examples"):
        CoupledNMFConcepts(2).fit_matrices([blocks[0]], [blocks[1][:, :10]])
    with pytest.raises(ValueError, match="groups"):
        CoupledNMFConcepts(2, group_sparsity=1.0).fit_matrices(blocks)
    with pytest.raises(ValueError, match="groups must be 1-D"):
        CoupledNMFConcepts(2).fit_matrices(blocks, groups=[0, 1])
    with pytest.raises(ValueError, match="model is None"):
        CoupledNMFConcepts(2, layers=["block2.pool"]).fit(digits.x_test)
    with pytest.raises(ValueError, match="Did you mean"):
        CoupledNMFConcepts(2, digits_cnn, layers=["block2.pol"]).fit(digits.x_test)
    with pytest.raises(ValueError, match="block_weights"):
        CoupledNMFConcepts(2, block_weights=[1.0]).fit_matrices(blocks)
    with pytest.raises(ValueError, match="pool"):
        CoupledNMFConcepts(2, pool="sum").fit(digits.x_test)
    with pytest.raises(ValueError, match="NaN"):
        CoupledNMFConcepts(2).fit_matrices([blocks[0] * float("nan")])
    with pytest.raises(TypeError, match="2-D tensor"):
        CoupledNMFConcepts(2).fit_matrices(["not a matrix"])
    with pytest.raises(NotFittedError, match="not fitted"):
        CoupledNMFConcepts(2).top_examples(3)
    fitted = CoupledNMFConcepts(2, max_iter=3).fit_matrices(blocks[:1], blocks[1:])
    with pytest.raises(ValueError, match="k="):
        fitted.top_examples(10_000)
    with pytest.raises(ValueError, match="fit_matrices"):
        fitted.transform(digits.x_test)
    with pytest.raises(ValueError, match="rows"):
        fitted.transform(pixel_blocks=[blocks[1]], activation_blocks=blocks[1:])
    with pytest.raises(ValueError, match="layer"):
        fitted.neuron_similarity("embedding")
