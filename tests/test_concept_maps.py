"""Concept presence maps, concept attribution maps and concept importance: hand-computed
references, the residual identity, one backward pass per target."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation
from scipy.optimize import nnls

from captum_concepts.concept import (
    CoupledNMFConcepts,
    SemanticVector,
    class_importance,
    concept_attribution_maps,
    concept_importance,
    concept_presence_maps,
)
from captum_concepts.data import DigitsCNN
from captum_concepts.testing import assert_same_state, model_state


@pytest.fixture(scope="module")
def setup(digits):
    torch.manual_seed(0)
    model = DigitsCNN(width=8, embedding_dim=16).eval()
    x = digits.x_train[:120]
    fits = {
        pool: CoupledNMFConcepts(4, model, layers=["block2.pool", "block3.pool"], pool=pool, max_iter=40).fit(
            x
        )
        for pool in ("none", "mean")
    }
    return model, x, digits.y_train[:120], fits


@pytest.mark.parametrize("pool", ["none", "mean"])
@pytest.mark.parametrize("layer", [0, 1])
def test_concept_terms_plus_residual_equal_the_layer_gradient_x_activation_total(setup, pool, layer):
    model, x, y, fits = setup
    cnmf = fits[pool]
    xb, yb = x[:6], y[:6]
    result = concept_importance(cnmf, xb, target=yb, layer=layer)
    module = model.block2.pool if layer == 0 else model.block3.pool
    ref = LayerGradientXActivation(model, module).attribute(xb, target=yb).reshape(6, -1).sum(1).detach()
    assert ref.abs().max() > 1e-4
    torch.testing.assert_close(result.total, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.importance.sum(1) + result.residual, ref, rtol=1e-4, atol=1e-6)
    # the residual is <g, A - O u>, computed here from scratch with plain autograd
    acts = {}
    handle = module.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    logits = model(xb)
    handle.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad(logits.gather(1, yb[:, None]).sum(), a)
    o = cnmf.neuron_factors_[layer]  # (a_j, d)
    u = cnmf.transform(xb).t()  # (N, d)
    recon = u @ o.t()
    if pool == "mean":
        recon = recon[:, :, None, None].expand_as(a)
    recon = recon.reshape(a.shape)
    torch.testing.assert_close(result.residual, (g * (a - recon)).reshape(6, -1).sum(1), rtol=1e-4, atol=1e-6)
    o_full = o.t().reshape(o.shape[1], a.shape[1], -1)
    if pool == "mean":
        o_full = o_full.expand(-1, -1, a[0, 0].numel())
    hand = u * torch.einsum(
        "ncp,kcp->nk", g.reshape(6, a.shape[1], -1), o_full.reshape(o.shape[1], a.shape[1], -1)
    )
    torch.testing.assert_close(result.importance, hand.detach(), rtol=1e-4, atol=1e-6)
    assert result.importance.abs().max() > 0


def test_importance_costs_one_backward_pass_per_target(setup):
    model, x, y, fits = setup
    cnmf = fits["none"]
    coefficients = cnmf.transform(x[:5])
    calls = []
    handle = model.classifier.register_full_backward_hook(lambda m, gi, go: calls.append(1))
    try:
        for target in range(3):
            concept_importance(cnmf, x[:5], target=target, layer=1, coefficients=coefficients)
    finally:
        handle.remove()
    assert len(calls) == 3


def test_class_importance_is_the_mean_per_class(setup):
    model, x, y, fits = setup
    result = concept_importance(fits["none"], x[:12], target=y[:12], layer=1)
    imp, res, classes = class_importance(result, y[:12])
    for row, c in enumerate(classes.tolist()):
        sel = y[:12] == c
        torch.testing.assert_close(imp[row], result.importance[sel].mean(0))
        torch.testing.assert_close(res[row], result.residual[sel].mean())
    imp2, _, _ = result.per_class()
    torch.testing.assert_close(imp2, imp)


def test_presence_maps_solve_the_per_position_nonnegative_least_squares(setup):
    model, x, y, fits = setup
    cnmf = fits["none"]
    maps = concept_presence_maps(cnmf, x[:2], layer=0, upsample=None)
    assert maps.shape == (2, 4, 4, 4) and (maps >= 0).all() and maps.max() > 0
    a = model.block2(model.block1(x[:2])).detach()  # (2, C, 4, 4)
    basis = cnmf.neuron_factors_[0].reshape(a.shape[1], 16, 4)  # rows ordered (channel, position)
    for n, p in [(0, 0), (0, 5), (1, 10), (1, 15)]:
        ref, _ = nnls(basis[:, p].double().numpy(), a[n, :, p // 4, p % 4].double().numpy())
        np.testing.assert_allclose(maps[n, :, p // 4, p % 4].numpy(), ref, rtol=1e-3, atol=1e-4)
    up = concept_presence_maps(cnmf, x[:2], layer=0)
    assert up.shape == (2, 4, 8, 8)


def test_pooled_presence_maps_use_the_same_basis_everywhere(setup):
    model, x, y, fits = setup
    cnmf = fits["mean"]
    maps = concept_presence_maps(cnmf, x[:1], layer=1, upsample=None)
    a = model.block3(model.block2(model.block1(x[:1]))).detach()
    ref, _ = nnls(cnmf.neuron_factors_[1].double().numpy(), a[0, :, 1, 0].double().numpy())
    np.testing.assert_allclose(maps[0, :, 1, 0].numpy(), ref, rtol=1e-3, atol=1e-4)


def test_semantic_vector_presence_maps_are_per_position_cosines(setup):
    model, x, y, _ = setup
    sv = SemanticVector(model, "block2.pool").fit_from_labels((x, y), n_classes=10)
    maps = concept_presence_maps(sv, x[:2], upsample=None)
    assert maps.shape == (2, 10, 4, 4)
    a = model.block2(model.block1(x[:2])).detach()
    v = sv.vectors_.reshape(10, *a.shape[1:])
    ref = torch.cosine_similarity(a[:, None], v[None], dim=2)
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-6)
    assert ref.abs().max() > 0


def test_concept_attribution_maps_equal_autograd_of_the_linear_coefficients(setup):
    model, x, y, fits = setup
    cnmf = fits["mean"]
    maps = concept_attribution_maps(cnmf, x[:3], layer=1)
    assert maps.shape == (3, 4, 8, 8)
    o = cnmf.neuron_factors_[1].double()
    w = (torch.linalg.pinv(o.t() @ o) @ o.t()).float()  # (d, a)
    xs = x[:3].clone().requires_grad_(True)
    pooled = model.block3(model.block2(model.block1(xs))).mean((2, 3))
    u = pooled @ w.t()
    refs = []
    for k in range(4):
        (g,) = torch.autograd.grad(u[:, k].sum(), xs, retain_graph=True)
        refs.append((g * xs).sum(1).detach())
    ref = torch.stack(refs, 1)
    assert ref.abs().max() > 1e-5
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-6)
    layer_maps = concept_attribution_maps(cnmf, x[:3], layer=1, source_layer="block1", upsample=None)
    assert layer_maps.shape == (3, 4, 8, 8)


def test_model_left_unchanged_and_bad_arguments(setup):
    model, x, y, fits = setup
    before = model_state(model)
    concept_importance(fits["none"], x[:2], target=1)
    concept_attribution_maps(fits["none"], x[:2])
    concept_presence_maps(fits["none"], x[:2])
    assert_same_state(before, model)
    with pytest.raises(ValueError, match="target"):
        concept_importance(fits["none"], x[:2], target=None)
    with pytest.raises(ValueError, match="out of range"):
        concept_importance(fits["none"], x[:2], target=10)
    assert_same_state(before, model)
    with pytest.raises(ValueError, match="coefficients"):
        concept_importance(fits["none"], x[:2], target=1, coefficients=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="not fitted"):
        concept_presence_maps(CoupledNMFConcepts(3, model, layers=["block2.pool"]), x[:2])
    with pytest.raises(TypeError, match="CoupledNMFConcepts"):
        concept_presence_maps(object(), x[:2])
    with pytest.raises(ValueError, match="n_iter"):
        concept_presence_maps(fits["none"], x[:2], n_iter=0)


def test_sobol_indices_match_the_analytic_values_of_a_linear_head(digits):
    from torch import nn

    from captum_concepts.concept import concept_sobol_indices

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).eval()
    x = digits.x_train[:80]
    cnmf = CoupledNMFConcepts(3, model, layers=["1"], include_pixels=False, max_iter=40).fit(x)
    u = cnmf.transform(x[:4])
    got = concept_sobol_indices(cnmf, x[:4], target=2, n_designs=2048, coefficients=u)
    # y = const + sum_k m_k c_k with c_k = u_k <w_2, o_k> and m_k ~ U[0, 1] independent:
    # Var(y) = sum_k c_k^2 / 12 and S_T,k = c_k^2 / sum_j c_j^2
    c = u.t() * (cnmf.neuron_factors_[0].t() @ model[3].weight[2].detach())[None]
    expected = c**2 / (c**2).sum(1, keepdim=True)
    assert expected.max() > 0.1
    torch.testing.assert_close(got, expected, atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="n_designs"):
        concept_sobol_indices(cnmf, x[:4], target=2, n_designs=1)


@pytest.fixture(scope="module")
def shifted(digits):
    """``shift="min"`` fits of a layer with negative values (a conv before its ReLU), and inputs
    outside the fit's range, so that some shifted values fall below 0 and are clipped as in the fit."""
    torch.manual_seed(0)
    model = DigitsCNN(width=8, embedding_dim=16).eval()
    fits = {
        pool: CoupledNMFConcepts(3, model, layers=["block2.conv"], pool=pool, shift="min", max_iter=30).fit(
            digits.x_train[:120]
        )
        for pool in ("none", "mean")
    }
    return model, digits.x_test[:4] * 2 - 0.5, fits


def test_attribution_maps_read_the_shifted_layer_clipped_at_zero_as_the_fit(shifted):
    model, x, fits = shifted
    cnmf = fits["mean"]
    shift = cnmf.shift_[-1].float()
    o = cnmf.neuron_factors_[0].double()
    w = (torch.linalg.pinv(o.t() @ o) @ o.t()).float()  # (d, a)
    xs = x.clone().requires_grad_(True)
    pooled = model.block2.conv(model.block1(xs)).mean((2, 3))
    assert ((pooled - shift) < 0).any() and ((pooled - shift) > 0).any()  # the clip matters here
    u = (pooled - shift).clamp(min=0) @ w.t()
    refs = []
    for k in range(3):
        (g,) = torch.autograd.grad(u[:, k].sum(), xs, retain_graph=True)
        refs.append((g * xs).sum(1).detach())
    ref = torch.stack(refs, 1)
    assert ref.abs().max() > 1e-5
    torch.testing.assert_close(concept_attribution_maps(cnmf, x), ref, rtol=1e-4, atol=1e-6)


def test_presence_maps_solve_on_the_shifted_activations_clipped_at_zero(shifted):
    model, x, fits = shifted
    cnmf = fits["none"]
    maps = concept_presence_maps(cnmf, x[:2], upsample=None)
    a = model.block2.conv(model.block1(x[:2])).detach()  # (2, C, 8, 8)
    c, p = a.shape[1], a[0, 0].numel()
    shifted_a = (a.reshape(2, -1) - cnmf.shift_[-1].float()).clamp(min=0).reshape(2, c, p)
    assert (a.reshape(2, c, p) < shifted_a).any()  # the shift changes the data read
    basis = cnmf.neuron_factors_[0].reshape(c, p, 3)  # rows ordered (channel, position)
    for n, q in [(0, 0), (0, 27), (1, 40), (1, 63)]:
        ref, _ = nnls(basis[:, q].double().numpy(), shifted_a[n, :, q].double().numpy())
        np.testing.assert_allclose(maps[n, :, q // 8, q % 8].numpy(), ref, rtol=1e-3, atol=1e-4)
    assert maps.max() > 0


class _TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.head = torch.nn.Linear(4 * 64, 3)

    def forward(self, x, y):
        return self.head(self.relu(self.a(x) + self.b(y)).flatten(1))


def test_attribution_maps_follow_captum_tuples_in_tuples_out(digits):
    torch.manual_seed(0)
    model = _TwoInputs().eval()
    x, y = digits.x_train[:60], digits.x_train[60:120]
    cnmf = CoupledNMFConcepts(3, model, layers=["relu"], pool="mean", max_iter=30).fit((x, y))
    xb, yb = x[:3], y[:3]
    maps = concept_attribution_maps(cnmf, (xb, yb))
    assert isinstance(maps, tuple) and len(maps) == 2
    o = cnmf.neuron_factors_[0].double()
    w = (torch.linalg.pinv(o.t() @ o) @ o.t()).float()
    xs, ys = xb.clone().requires_grad_(True), yb.clone().requires_grad_(True)
    u = model.relu(model.a(xs) + model.b(ys)).mean((2, 3)) @ w.t()
    for k in range(3):
        gx, gy = torch.autograd.grad(u[:, k].sum(), (xs, ys), retain_graph=True)
        assert (gy * ys).abs().max() > 0
        torch.testing.assert_close(maps[0][:, k], (gx * xs).sum(1).detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(maps[1][:, k], (gy * ys).sum(1).detach(), rtol=1e-4, atol=1e-6)
    # a tensor in, a tensor out; a one-output source layer gives the layer's form, a tensor
    assert isinstance(concept_attribution_maps(cnmf, (xb, yb), source_layer="a", upsample=None), torch.Tensor)


@pytest.mark.parametrize(
    "call",
    [
        lambda c, x, y: concept_attribution_maps(c, x),
        lambda c, x, y: concept_importance(c, x, target=y),
    ],
    ids=["concept_attribution_maps", "concept_importance"],
)
def test_gradient_entries_refuse_inference_mode_naming_it(setup, call):
    model, x, y, fits = setup
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"needs gradients.*inside torch\.inference_mode\(\)"):
            call(fits["mean"], x[:2], y[:2])
        made_inside = x[:2].clone()
    with pytest.raises(RuntimeError, match="inference tensor"):
        call(fits["mean"], made_inside, y[:2])
    with torch.no_grad():  # no_grad is fine: gradients are switched on where needed
        assert call(fits["mean"], x[:2], y[:2]) is not None


def test_the_basis_module_reads_no_private_state_of_an_estimator():
    """``basis.py`` asks fitted concepts only through ``_concept_basis`` (and their public API)."""
    import ast

    from captum_concepts.concept._core import basis

    tree = ast.parse(inspect.getsource(basis))
    private = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "concepts"
        and node.attr.startswith("_")
    }
    assert private == {"_concept_basis"}


def test_concept_basis_asks_the_estimator_through_its_protocol(setup):
    from captum_concepts.concept._core.basis import BasisSource, ConceptBasis, concept_basis

    model, _, _, fits = setup
    expected = ConceptBasis(model, model.block3.pool, torch.eye(3))

    class OwnConcepts:  # any object answering "your basis at this layer" is read as one
        def _concept_basis(self, layer, argument):
            assert (layer, argument) == (1, "cc")
            return expected

    assert isinstance(OwnConcepts(), BasisSource) and concept_basis(OwnConcepts(), 1, "cc") is expected
    cnmf = fits["mean"]
    for layer in (1, "block3.pool", -1):
        b = concept_basis(cnmf, layer)
        assert b.module is model.block3.pool and b.pool == "mean"
        torch.testing.assert_close(b.basis, cnmf.neuron_factors_[1].float())
    with pytest.raises(TypeError, match="cc must be a fitted CoupledNMFConcepts or SemanticVector"):
        concept_basis(object(), 0, "cc")
