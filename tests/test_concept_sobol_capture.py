"""concept_sobol_indices starts from the layer's activations as the layer produced them, also when
an in-place operation follows the layer (``out -= bias`` as a residual block's ``out += identity``)."""

import torch
from torch import nn

from captum_concepts.concept import CoupledNMFConcepts, concept_sobol_indices


class InplaceShift(nn.Module):
    def forward(self, t):
        return t.sub_(0.5)


def test_sobol_indices_rebuild_from_the_activations_before_an_inplace_op(digits):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        InplaceShift(),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 3),
    ).eval()
    x = digits.x_train[:80]
    cnmf = CoupledNMFConcepts(3, model, layers=["1"], include_pixels=False, max_iter=40).fit(x)
    xb = x[:4]
    u = cnmf.transform(xb)  # (d, N)
    d, n, n_designs = u.shape[0], xb.shape[0], 64
    got = concept_sobol_indices(cnmf, xb, target=2, n_designs=n_designs, coefficients=u, random_state=0)

    # reference: A(m) = sum_k m_k u_k o_k + (A - sum_k u_k o_k) pushed through the rest by hand
    with torch.no_grad():
        acts = model[1](model[0](xb)).reshape(n, -1)
        flat_o = cnmf.neuron_factors_[0].t()  # (d, features)
        residual = acts - u.t() @ flat_o
        draws = torch.quasirandom.SobolEngine(2 * d, scramble=True, seed=0).draw(n_designs)
        m_a, m_b = draws[:, :d], draws[:, d:]
        swapped = [torch.cat([m_a[:, :k], m_b[:, k : k + 1], m_a[:, k + 1 :]], 1) for k in range(d)]
        designs = [m_a, m_b] + swapped
        y = torch.stack(
            [
                torch.stack(
                    [model[5](torch.relu((u.t() * m) @ flat_o + residual - 0.5))[:, 2] for m in design]
                )
                for design in designs
            ]
        )  # (d + 2, n_designs, N)
    var = torch.cat([y[0], y[1]]).var(dim=0, unbiased=False)
    assert var.min() > 1e-8
    expected = (((y[0][None] - y[2:]) ** 2).mean(dim=1) / 2 / var).t()
    assert expected.max() > 0.05
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)


def test_concept_importance_works_before_an_inplace_op(digits):
    from captum_concepts.concept import concept_importance

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), InplaceShift(), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)
    ).eval()
    x = digits.x_train[:80]
    cnmf = CoupledNMFConcepts(3, model, layers=["1"], include_pixels=False, max_iter=40).fit(x)
    xb, target = x[:4], torch.tensor([0, 1, 2, 0])
    result = concept_importance(cnmf, xb, target=target)
    acts = model[1](model[0](xb)).detach().requires_grad_(True)
    logits = model[2:](acts.clone())
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), acts)
    total = (g * acts.detach()).reshape(4, -1).sum(1)
    assert total.abs().max() > 1e-3
    torch.testing.assert_close(result.total, total, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.importance.sum(1) + result.residual, total, rtol=1e-4, atol=1e-6)
