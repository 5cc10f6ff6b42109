"""Silent wrong numbers: aliased scratch buffers, cancelled objectives, underflowing eps, overflow."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from captum_concepts._utils.finite import check_finite_result
from captum_concepts.attr import EmbeddingAttribution, aggregate
from captum_concepts.concept import CoupledNMFConcepts

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(20, 6),
    ).eval()


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------- 1: views of scratch
@pytest.mark.parametrize("method", ["gradient", "activation_gradient", "gradcam"])
def test_channel_aggregator_returning_a_view_gives_per_dimension_maps(method):
    """``lambda t, d: t.select(d, j)`` (a view) must give the same maps as its copy, per dimension."""
    model, x = _conv_model(), _images()

    def pick(t, d):
        return t.select(d, 2)

    def pick_copy(t, d):
        return t.select(d, 2).clone()

    results = {}
    for strategy in ("loop", "batched"):
        for name, agg in (("view", pick), ("copy", pick_copy)):
            ea = EmbeddingAttribution(
                model, layer="2", method=method, channel_aggregator=agg, strategy=strategy
            )
            results[strategy, name] = ea.attribute(x, return_per_dim=True)
    ref = results["batched", "copy"]
    assert ref.shape == (2, 6, 8, 8) and ref.abs().max() > 0
    # the per-dimension maps differ from each other (else aliasing would go unnoticed)
    assert (ref[:, 0] - ref[:, -1]).abs().max() > 1e-3 * ref.abs().max()
    for key, got in results.items():
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7, msg=f"{key}")


def test_aggregate_copies_a_callable_view_of_scratch():
    t = torch.arange(6.0).reshape(2, 3)
    scratch = t.clone()
    out = aggregate(scratch, 1, lambda u, d: u.select(d, 0), scratch=scratch)
    scratch.fill_(-1)
    assert out.tolist() == [0.0, 3.0]


# ---------------------------------------------------------------------- 2: the objective
def _planted(rank: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(60, rank, generator=g)
    F = torch.rand(rank, 400, generator=g)
    X = W @ F
    return X[:24], X[24:]


def _direct_objective(cnmf: CoupledNMFConcepts, blocks, penalties=(0.0, 0.0, 0.0)) -> float:
    """``sum_b ||X_b - W_b F||^2 + penalties`` in float64 from the fitted factors."""
    F = cnmf.example_factors_.double()
    factors = list(cnmf.pixel_factors_) + list(cnmf.neuron_factors_)
    data = sum(float((x.double() - w.double() @ F).square().sum()) for x, w in zip(blocks, factors))
    lam_p, lam_o, lam_f = penalties
    pen = lam_p * sum(float(p.double().square().sum()) for p in cnmf.pixel_factors_)
    pen += lam_o * sum(float(o.double().square().sum()) for o in cnmf.neuron_factors_)
    pen += lam_f * float(F.square().sum())
    return data + pen


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_loss_history_is_the_objective_near_an_exact_fit(solver):
    blocks = _planted(seed=2)  # before the fix: 85 of 301 HALS values negative, min -2.2e-3
    cnmf = CoupledNMFConcepts(5, solver=solver, max_iter=300, tol=0.0).fit_matrices([blocks[0]], [blocks[1]])
    h = np.asarray(cnmf.loss_history_)
    assert np.all(h >= 0), f"{int((h < 0).sum())} negative objective values, min {h.min():.3g}"
    direct = _direct_objective(cnmf, blocks)
    assert direct > 0
    assert h[-1] == pytest.approx(direct, rel=1e-3, abs=1e-6 * h[0])
    # MU never increases the objective; HALS reports the best so far
    assert np.all(np.diff(h) <= 1e-6 * h[:-1]), f"the objective rose {int((np.diff(h) > 0).sum())} times"


def test_tolerance_stop_and_best_iterate_on_the_true_objective():
    """HALS with a tolerance stops on real progress, and what it returns is what it reports."""
    blocks = _planted(seed=3)
    cnmf = CoupledNMFConcepts(5, solver="hals", max_iter=3000, tol=1e-6).fit_matrices([], list(blocks))
    assert cnmf.converged_ and cnmf.n_iter_ < 3000
    assert cnmf.loss_history_[-1] == pytest.approx(_direct_objective(cnmf, blocks), rel=1e-3, abs=1e-9)
    assert cnmf.loss_history_[-1] < 1e-4 * cnmf.loss_history_[0]


# ---------------------------------------------------------------------- 3: penalties + unit norms
def test_penalties_with_normalised_columns_warn_with_the_reason(digits):
    x = digits.x_train[:300].reshape(300, -1).t()
    kw = dict(solver="mu", lambda_p=0.5, lambda_o=0.5, lambda_f=0.5, max_iter=60, tol=0.0)
    with pytest.warns(UserWarning, match="normalize_columns=True with L2 penalties.*normalize_columns=False"):
        CoupledNMFConcepts(10, **kw).fit_matrices([x])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        free = CoupledNMFConcepts(10, normalize_columns=False, **kw).fit_matrices([x])
    h = np.asarray(free.loss_history_)
    assert np.all(np.diff(h) <= 1e-6 * h[:-1]), "without normalisation MU minimises the stated objective"
    assert h[-1] == pytest.approx(_direct_objective(free, [x], (0.5, 0.5, 0.5)), rel=1e-4)


# ---------------------------------------------------------------------- 4: zero rows, every dtype
@pytest.mark.parametrize("solver", ["mu", "hals"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rows_and_columns_give_finite_factors(dtype, solver):
    x = torch.rand(20, 30, generator=torch.Generator().manual_seed(0))
    x[3] = 0
    x[:, 5] = 0
    cnmf = CoupledNMFConcepts(4, solver=solver, dtype=dtype, max_iter=30).fit_matrices([], [x])
    for t in [cnmf.example_factors_, *cnmf.neuron_factors_]:
        assert t.dtype == dtype and bool(torch.isfinite(t).all())
    assert np.all(np.isfinite(cnmf.loss_history_))
    # a useful fit, not just finite: well below the energy of the data
    assert cnmf.loss_history_[-1] < 0.5 * float(x.double().square().sum())
    new = cnmf.transform(pixel_blocks=[], activation_blocks=[x[:, :4]])
    assert bool(torch.isfinite(new).all())


# ---------------------------------------------------------------------- 5: overflow
@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_overflowing_attribution_raises(strategy):
    model, x = _conv_model(), _images()
    ea = EmbeddingAttribution(model, layer="2", method="activation_gradient", strategy=strategy)
    assert bool(torch.isfinite(ea.attribute(x)).all())
    with pytest.raises(ValueError, match=r"EmbeddingAttribution produced NaN or infinite.*overflowed"):
        ea.attribute(x * 1e24)


def test_check_finite_result_names_the_examples():
    ok = (torch.ones(3, 2), [torch.zeros(3)])
    assert check_finite_result(ok, "X") is ok
    bad = torch.ones(3, 2)
    bad[1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"X produced NaN or infinite values for examples \[1\]"):
        check_finite_result([torch.ones(3), (bad,)], "X")
    # an example whose input is already non-finite is the method's own business
    x = torch.ones(3, 4)
    x[1, 2] = float("nan")
    assert check_finite_result(bad, "X", (x,)) is bad
    x[1, 2] = 0.0
    with pytest.raises(ValueError, match=r"examples \[1\]"):
        check_finite_result(bad, "X", (x,))


# ---------------------------------------------------------------------- 9: threads
def test_thread_count_reproducibility_is_stated_and_holds(digits):
    """Same thread count: bit for bit. Another thread count: agreement to the documented rounding."""
    doc = " ".join(CoupledNMFConcepts.__doc__.split())
    assert "the number of intra-op threads (``torch.get_num_threads()``)" in doc
    x = digits.x_train[:400].reshape(400, -1).t().contiguous()
    before = torch.get_num_threads()
    fits = {}
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            for solver in ("mu", "hals"):
                est = CoupledNMFConcepts(10, solver=solver, max_iter=50, tol=0.0).fit_matrices([x])
                fits.setdefault((threads, solver), []).append(est.example_factors_)
    finally:
        torch.set_num_threads(before)
    for solver, bound in (("mu", 1e-4), ("hals", 1e-2)):
        first, again = fits[1, solver]
        assert torch.equal(first, again)
        other = fits[2, solver][0]
        rel = float((first - other).abs().max() / first.abs().max())
        assert rel <= bound, f"{solver}: {rel:.3g}"


def test_streamed_objective_uses_the_residual_too(tmp_path):
    """The out-of-core fit reads the residual from the store: same history as in memory, never < 0."""
    from captum_concepts.concept import ActivationStore, OutOfCore

    pixels, acts = _planted()
    store = ActivationStore(str(tmp_path / "s.bin"), [pixels.shape[0], acts.shape[0]], n_pixel_blocks=1)
    for s in range(0, pixels.shape[1], 64):
        store.append([pixels[:, s : s + 64].t(), acts[:, s : s + 64].t()])
    store.close()
    kw = dict(solver="hals", max_iter=60, tol=0.0)
    streamed = CoupledNMFConcepts(5, out_of_core=OutOfCore("140KB"), **kw).fit_store(store)
    memory = CoupledNMFConcepts(5, **kw).fit_matrices([pixels], [acts])
    h = np.asarray(streamed.loss_history_)
    assert np.all(h >= 0) and h[-1] < 1e-3 * h[0]  # far into the range where the residual is used
    np.testing.assert_allclose(h, memory.loss_history_, rtol=1e-3, atol=1e-7 * h[0])
