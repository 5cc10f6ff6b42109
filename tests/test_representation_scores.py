"""Representation scores (SPEC §2): hand-computed values, bounds, errors, Captum interplay."""

from __future__ import annotations

import pytest
import torch
from _kernels import kernel_batch
from captum.attr import Saliency
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_concepts.metrics import drift_score, noise_benchmark, noise_score, variance_score
from captum_concepts.metrics._core.normalization import minmax_normalize


def identity(x, **kwargs):
    return x


def t(values):
    """A (1, 1, 2, 2) tensor from 4 values."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


# ----------------------------------------------------------------------------- normalisation
def test_minmax_normalize_hand_values_and_constant_maps():
    maps = torch.tensor([[0.0, 1.0, 2.0, 4.0], [3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    out = minmax_normalize(maps)
    assert torch.allclose(out[0], torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert torch.equal(out[1:], torch.zeros(2, 4))  # constant -> zeros [SPEC choice]


def test_minmax_normalize_gradient_is_finite_on_constant_maps():
    maps = torch.tensor([[2.0, 2.0, 2.0], [0.0, 1.0, 3.0]], requires_grad=True)
    minmax_normalize(maps).sum().backward()
    assert torch.isfinite(maps.grad).all()
    assert torch.equal(maps.grad[0], torch.zeros(3))


def test_minmax_normalize_per_dimension_maps():
    maps = torch.tensor([[[0.0, 2.0], [5.0, 1.0]]])  # (N=1, D=2, P=2)
    assert torch.equal(minmax_normalize(maps, start_dim=2), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))


# ----------------------------------------------------------------------------- noise score
def test_noise_score_hand_computed():
    x, noise = t([0, 1, 2, 4]), t([4, 2, 1, 0])
    # Nrm(x) = [0, .25, .5, 1], Nrm(noise) = [1, .5, .25, 0] -> |diff| = [1, .25, .25, 1]
    ns = noise_score(identity, x, noise_func=noise)
    assert ns.shape == (1,)
    assert ns.item() == pytest.approx(0.625)
    # normalised per example: a second example at another scale scores on its own
    ns2 = noise_score(identity, torch.cat([x, 10 * x]), noise_func=torch.cat([noise, x]))
    assert torch.allclose(ns2, torch.tensor([0.625, 0.0]))


def test_noise_score_constant_map_is_documented_zero_map():
    ns = noise_score(identity, t([7, 7, 7, 7]), noise_func=t([0, 1, 1, 2]))
    assert ns.item() == pytest.approx((0 + 0.5 + 0.5 + 1) / 4)  # Nrm(constant) = 0


def test_noise_score_averages_draws_and_calls_noise_func_with_inputs():
    x = t([0, 1, 2, 4])
    draws = iter([t([4, 2, 1, 0]), t([0, 1, 2, 4])])
    seen = []

    def noise_func(inputs):
        seen.append(inputs)
        return next(draws)

    ns = noise_score(identity, x, noise_func=noise_func, n_noise=2)
    assert ns.item() == pytest.approx((0.625 + 0.0) / 2)
    assert all(s is x for s in seen)


def test_noise_score_tuple_inputs_form_one_joint_map():
    x = (t([0, 1, 2, 4]), torch.tensor([[2.0, 0.0]]))
    noise = (t([0, 1, 2, 4]), torch.tensor([[0.0, 2.0]]))
    # joint maps: [0,1,2,4,2,0] vs [0,1,2,4,0,2] -> Nrm /4 -> diff only in the last two: .5 + .5
    assert noise_score(identity, x, noise_func=noise).item() == pytest.approx(1.0 / 6)


def test_noise_score_default_noise_is_standard_normal():
    captured = []

    def expl(inputs):
        captured.append(inputs)
        return inputs

    x = torch.rand(200, 1, 8, 8)
    torch.manual_seed(0)
    noise_score(expl, x)
    noise = captured[0][200:]
    assert captured[0].shape[0] == 400  # inputs and noise in one call
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02


def test_noise_benchmark_hand_computed():
    draws = iter([t([0, 1, 2, 4]), t([4, 2, 1, 0]), t([1, 1, 1, 1]), t([0, 0, 0, 1])])
    nb = noise_benchmark(identity, t([5, 5, 5, 5]), noise_func=lambda _: next(draws), n_draws=2)
    # pair 1: 0.625; pair 2: zeros vs [0,0,0,1] -> 0.25
    assert nb.item() == pytest.approx((0.625 + 0.25) / 2)


# ----------------------------------------------------------------------------- variance score
def per_dim(values):
    return lambda x, **kw: torch.tensor(values, dtype=torch.float32).unsqueeze(0)


@pytest.mark.parametrize(
    "maps, threshold, expected",
    [
        ([[[0, 1]], [[1, 0]]], None, 0.25),  # Popoviciu's maximum: on in half of the dims
        ([[[0, 1]], [[0, 2]]], None, 0.0),  # same map up to scale
        ([[[0, 1]], [[0, 1]], [[1, 0]]], None, 2 / 9),  # per pixel: {0, 0, 1} -> var 2/9
        ([[[0, 0.4, 1]], [[0, 0.6, 1]]], None, 0.01 / 3),
        ([[[0, 0.4, 1]], [[0, 0.6, 1]]], 0.5, 0.25 / 3),  # binarised: [0,0,1] vs [0,1,1]
        ([[[3, 3]], [[0, 1]]], None, 0.125),  # constant map -> zeros
        ([[[0, 1]]], None, 0.0),  # one embedding dimension
    ],
)
def test_variance_score_hand_computed(maps, threshold, expected):
    vs = variance_score(per_dim(maps), torch.zeros(1, 3), threshold=threshold)
    assert vs.shape == (1,)
    assert vs.item() == pytest.approx(expected, abs=1e-7)


# ----------------------------------------------------------------------------- drift
def test_drift_score_matches_noise_scores_with_shared_noise_and_direction():
    torch.manual_seed(1)
    x = torch.rand(3, 1, 4, 4)
    direction, noise = torch.randn_like(x), torch.randn_like(x)

    def expl(inputs):
        return inputs**2  # a non-trivial map

    eps = [0.0, 0.1, 0.5]
    rel = drift_score(expl, x, eps, noise_func=noise, drift_func=lambda _: direction, clip_range=(0, 1))
    base = noise_score(expl, x, noise_func=noise).mean()
    for e, r in zip(eps, rel):
        ns = noise_score(expl, (x + e * direction).clamp(0, 1), noise_func=noise).mean()
        assert r.item() == pytest.approx(((ns - base) / base).item(), rel=1e-5, abs=1e-6)
    assert rel[0].item() == 0.0


def test_drift_score_clip_range_data_uses_input_range():
    x = torch.linspace(0.2, 0.7, 16).reshape(1, 1, 4, 4)
    seen = []

    def expl(inputs):
        seen.append(inputs)
        return inputs

    drift_score(expl, x, [5.0], drift_func=lambda _: torch.ones_like(x))
    assert torch.allclose(seen[0][1:2], torch.full_like(x, 0.7))


# ----------------------------------------------------------------------------- batching, Captum
@pytest.mark.kernels
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_max_examples_per_batch_and_per_example_target_match_one_call():
    model = BasicModel_ConvNet_One_Conv().eval()
    x = torch.rand(3, 1, 4, 4)
    target = torch.tensor([0, 1, 0])
    sal = Saliency(model)
    torch.manual_seed(0)
    full = noise_score(sal, x, n_noise=3, target=target)
    torch.manual_seed(0)
    sizes = []

    def counted(inputs, **kw):
        sizes.append(inputs.shape[0])
        assert kw["target"].shape[0] == inputs.shape[0]
        return sal.attribute(inputs, **kw)

    most = kernel_batch(7)
    chunked = noise_score(counted, x, n_noise=3, max_examples_per_batch=most, target=target)
    copies = min(max(most // 3, 1), 4)  # whole copies (inputs + 3 noisy) of the 3 examples per call
    assert sizes == [3 * min(copies, 4 - i) for i in range(0, 4, copies)]  # 7: [6, 6]
    assert torch.allclose(full, chunked, atol=1e-6)
    # the repeated target really selects per example: the noise copies use target[i] too
    torch.manual_seed(0)
    by_hand = noise_score(lambda inp: sal.attribute(inp, target=torch.cat([target] * 4)), x, n_noise=3)
    assert torch.allclose(full, by_hand, atol=1e-6)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "func, kwargs, match",
    [
        (lambda x: x[:1], {}, "one map per example"),
        (lambda x: x.flatten(), {}, "one map per example"),
        (lambda x: x * float("nan"), {}, "NaN"),
        (lambda x: "map", {}, "must return tensors"),
        (identity, {"noise_func": torch.zeros(2, 1, 2, 2)}, "shape of inputs"),
        (identity, {"noise_func": lambda x: torch.zeros(3)}, "shape of inputs"),
        (identity, {"noise_func": torch.zeros(1, 1, 2, 2), "n_noise": 2}, "one draw"),
        (identity, {"n_noise": 0}, "n_noise"),
        (identity, {"max_examples_per_batch": 0}, "max_examples_per_batch"),
        (identity, {"differentiable": True}, "autograd graph"),
        (identity, {"noise_func": "gauss"}, "noise_func"),
        (42, {}, "explanation_func"),
    ],
)
def test_noise_score_bad_input(func, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        noise_score(func, t([0, 1, 2, 3]), **kwargs)


def test_variance_and_drift_bad_input():
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match=r"\(N, D, \.\.\.\)"):
        variance_score(lambda x: torch.rand(1, 4), x)
    with pytest.raises(ValueError, match="threshold"):
        variance_score(per_dim([[[0, 1]], [[1, 0]]]), x, threshold=1.5)
    with pytest.raises(ValueError, match="no gradient"):
        variance_score(per_dim([[[0, 1]], [[1, 0]]]), x, threshold=0.5, differentiable=True)
    with pytest.raises(ValueError, match="epsilons"):
        drift_score(identity, t([0, 1, 2, 3]), [-0.1])
    with pytest.raises(ValueError, match="undefined"):
        drift_score(identity, t([0, 1, 2, 3]), [0.1], noise_func=t([0, 1, 2, 3]), clip_range=None)
    with pytest.raises(TypeError, match="independent"):
        noise_benchmark(identity, t([0, 1, 2, 3]), noise_func=t([0, 1, 2, 3]))


# ----------------------------------------------------------------------------- bounds (hypothesis)
def random_convnet(seed: int, d: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Softplus(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, d),
    ).eval()


def per_dim_gradients(model: nn.Module):
    def expl(x):
        x = x.detach().requires_grad_(True)
        z = model(x)
        eye = torch.eye(z.shape[1]).unsqueeze(1).expand(-1, z.shape[0], -1)
        (g,) = torch.autograd.grad(z, x, eye, is_grads_batched=True)
        return g.transpose(0, 1)[:, :, 0]  # (N, D, H, W)

    return expl


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 6), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_bounds_on_random_models(seed, d, scale):
    model = random_convnet(seed, d)
    x = torch.rand(3, 1, 6, 6) * scale
    expl = per_dim_gradients(model)
    ns = noise_score(lambda x: expl(x).sum(1), x, n_noise=2)
    vs = variance_score(expl, x)
    assert ns.shape == vs.shape == (3,)
    assert ((ns >= 0) & (ns <= 1)).all()
    assert ((vs >= 0) & (vs <= 0.25 + 1e-6)).all()


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=24, max_size=24),
    threshold=st.one_of(st.none(), st.floats(0, 0.99)),
)
def test_bounds_on_arbitrary_maps(data, threshold):
    maps = torch.tensor(data, dtype=torch.float64).reshape(1, 4, 2, 3)
    vs = variance_score(lambda x: maps, torch.zeros(1), threshold=threshold)
    ns = noise_score(
        lambda x: torch.where(x.reshape(-1, 1, 1) == 0, maps[0, 0], maps[0, 1]),
        torch.zeros(1),
        noise_func=torch.ones(1),
    )
    assert 0 <= vs.item() <= 0.25 + 1e-12
    assert 0 <= ns.item() <= 1


# ----------------------------------------------------------------------------- EmbeddingAttribution
class SoftplusEncoder(nn.Module):
    """Two conv layers and a linear bottleneck with softplus (non-zero second derivatives)."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = nn.Softplus()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, stride=2)
        self.act2 = nn.Softplus()
        self.bottleneck = nn.Linear(4 * 4 * 4, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(self.bottleneck(h.flatten(1)))


def test_embedding_attribution_passed_directly():
    from captum_concepts.attr import EmbeddingAttribution

    torch.manual_seed(0)
    model = SoftplusEncoder().eval()
    x = torch.rand(4, 1, 8, 8)
    noise = torch.randn_like(x)
    ea = EmbeddingAttribution(model, "bottleneck", layer="conv2")
    by_hand_ns = noise_score(ea.attribute, x, noise_func=noise)
    assert torch.allclose(noise_score(ea, x, noise_func=noise), by_hand_ns)
    per_dim_maps = ea.attribute(x, return_per_dim=True)
    assert per_dim_maps.shape == (4, 6, 8, 8)
    expected = minmax_normalize(per_dim_maps, start_dim=2).var(dim=1, unbiased=False).mean(dim=(1, 2))
    for func in (ea, ea.attribute):  # return_per_dim=True is set for an EmbeddingAttribution
        assert torch.allclose(variance_score(func, x), expected)
    assert (expected <= 0.25).all() and (expected > 0).all()


def test_differentiable_scores_reach_encoder_parameters_and_train():
    from captum_concepts.attr import EmbeddingAttribution

    torch.manual_seed(0)
    model = SoftplusEncoder().eval()  # no dropout/batch norm: eval mode trains the same
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    noise = torch.randn_like(x)
    ea = EmbeddingAttribution(model, "bottleneck", layer="conv2", embedding_aggregator="var")
    ns = noise_score(ea, x, noise_func=noise, differentiable=True).mean()
    vs = variance_score(ea, x, differentiable=True).mean()
    task = nn.functional.cross_entropy(model(x), y)
    (task - 0.1 * ns - 0.1 * vs).backward()
    for p in (model.conv1.weight, model.conv2.weight, model.bottleneck.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # gradient ascent on VS really raises it
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    start = variance_score(ea, x).mean().item()
    for _ in range(5):
        opt.zero_grad()
        (-variance_score(ea, x, differentiable=True).mean()).backward()
        opt.step()
    assert variance_score(ea, x).mean().item() > start + 0.02
    assert not variance_score(ea, x).requires_grad  # detached unless asked


# ----------------------------------------------------------------------------- score curves
def test_score_curve_one_pass_matches_per_layer_scores():
    from captum_concepts.attr import EmbeddingAttribution
    from captum_concepts.metrics import ScoreCurve, score_curve

    torch.manual_seed(0)
    model = SoftplusEncoder().eval()
    x = torch.rand(5, 1, 8, 8)
    noise = torch.randn_like(x)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    curve = score_curve(  # reverse mode: forward mode (auto's choice here) runs a pass per chunk
        model, "bottleneck", nn.Conv2d, x, noise_func=noise, benchmark=False, method="gradcam",
        strategy="loop",
    )  # fmt: skip
    handle.remove()
    assert calls == [10]  # one forward pass of inputs + noise for both layers
    assert isinstance(curve, ScoreCurve) and curve.layers == ["conv1", "conv2"]
    assert curve.per_example.shape == (2, 5) and curve.benchmark is None
    for i, name in enumerate(curve.layers):
        ea = EmbeddingAttribution(
            model, "bottleneck", layer=name, method="gradcam", embedding_aggregator="mean"
        )
        assert torch.allclose(curve.per_example[i], noise_score(ea, x, noise_func=noise), atol=1e-6)
    vcurve = score_curve(model, "bottleneck", ["conv1", "act2"], x, score="variance")
    ea = EmbeddingAttribution(model, "bottleneck", layer="act2", method="activation_gradient")
    assert torch.allclose(vcurve.per_example[1], variance_score(ea, x), atol=1e-6)
    assert (vcurve.values <= 0.25).all()


def test_score_curve_benchmark_and_plot(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captum_concepts.metrics import score_curve

    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plot() must not call plt.show()"))
    torch.manual_seed(0)
    model = SoftplusEncoder().eval()
    curve = score_curve(model, "bottleneck", ["conv1", "conv2"], torch.rand(4, 1, 8, 8), n_benchmark_draws=3)
    assert curve.benchmark.shape == curve.benchmark_std.shape == (2,)
    assert ((curve.benchmark > 0) & (curve.benchmark < 1)).all()
    fig, ax = curve.plot(label="softplus")
    labels = [line.get_label() for line in ax.get_lines()]
    assert "softplus" in labels and "noise benchmark" in labels
    plt.close(fig)
    with pytest.raises(ValueError, match="score must be"):
        score_curve(model, "bottleneck", ["conv1"], torch.rand(2, 1, 8, 8), score="entropy")
    with pytest.raises(ValueError, match="no submodule"):
        score_curve(model, "bottleneck", nn.Conv1d, torch.rand(2, 1, 8, 8))


def _trained_and_random_curves(trained_digits, digits, **kwargs):
    """Noise-score curves at ``block1.relu`` (shallow) and ``block3.pool`` (deep) of the trained
    digits CNN and of a random-weight one, on the same 64 test images."""
    from captum_concepts.data import DigitsCNN
    from captum_concepts.metrics import score_curve

    torch.manual_seed(10)
    random_net = DigitsCNN().eval()
    x = digits.x_test[:64]
    curves = []
    for model in (trained_digits.model, random_net):
        torch.manual_seed(0)
        layers = ["block1.relu", "block3.pool"]
        curves.append(score_curve(model, "embedding", layers, x, benchmark=False, **kwargs).values)
    return curves


def test_paper_claim_trained_and_random_curves_separate_in_deep_layers(trained_digits, digits):
    """Paper §4.1 (act x grad): trained and random-weight curves close in shallow layers, apart in
    deep ones (experiments/scores_1_trained_vs_random.py has the full curves)."""
    trained, random = _trained_and_random_curves(
        trained_digits, digits, method="activation_gradient", embedding_aggregator="mean"
    )
    assert trained[1] - random[1] > 0.05
    assert trained[1] - random[1] > 2 * abs(trained[0] - random[0])


def test_score_curve_defaults_reproduce_the_deep_layer_separation(trained_digits, digits):
    """score_curve's defaults (activations x gradients, mean channel and mean embedding
    aggregation) are the setting under which the paper's §4.1 claim holds: the trained network's
    noise score lies clearly above a random-weight network's in a deep layer, more than in a
    shallow one. (With vanilla gradients the map at the input of a linear embedding does not depend
    on the input, so both networks score 0 there.)"""
    trained, random = _trained_and_random_curves(trained_digits, digits)
    assert trained[1] > 0 and random[1] > 0
    assert trained[1] - random[1] > 0.05
    assert trained[1] - random[1] > 2 * abs(trained[0] - random[0])
