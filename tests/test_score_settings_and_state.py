"""The score functions: one setting whatever the entry point, no change to the model, the
training-mode acknowledgement, constant-map layers and progress (issue 27 items 1-2, 26 item 5)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.metrics import drift_score, noise_benchmark, noise_score, score_curve, variance_score
from captum_concepts.metrics._core import stacked_copies
from captum_concepts.metrics._core.normalization import minmax_normalize

WHERE = dict(embedding_layer="bottleneck", layer="conv2")


class Counter(nn.Module):
    """Identity with buffers of its own, updated in every forward pass whatever the mode: a count
    (in place), a running mean of its input (in place) and the last input mean (reassigned)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("running", torch.zeros(c))
        self.register_buffer("last", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)
        self.running.mul_(0.5).add_(0.5 * x.detach().mean(dim=(0, 2, 3)))
        self.last = x.detach().mean().reshape(1)
        return x


class BufferNet(nn.Module):
    """Conv -> BatchNorm -> softplus -> conv -> SyncBatchNorm -> Counter -> softplus -> linear
    embedding -> head: every kind of buffer the scores must leave alone."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.act1 = nn.Softplus()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, stride=2)
        self.bn2 = nn.SyncBatchNorm(4)  # falls back to batch norm outside a process group
        self.counter = Counter(4)
        self.act2 = nn.Softplus()
        self.bottleneck = nn.Linear(4 * 4 * 4, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.act2(self.counter(self.bn2(self.conv2(h))))
        return self.head(self.bottleneck(h.flatten(1)))


class SoftplusNet(nn.Module):
    """No buffers, no batch-dependent layer: eval and training mode compute the same."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = nn.Softplus()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, stride=2)
        self.act2 = nn.Softplus()
        self.bottleneck = nn.Linear(4 * 4 * 4, d)

    def forward(self, x):
        return self.bottleneck(self.act2(self.conv2(self.act1(self.conv1(x)))).flatten(1))


def trained_bn(seed: int = 0) -> BufferNet:
    """A BufferNet whose running statistics are no longer the initial zeros/ones."""
    torch.manual_seed(seed)
    model = BufferNet().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 1, 8, 8))
    return model


def snapshot(model: nn.Module):
    return [(name, buf, buf.clone()) for name, buf in model.named_buffers()]


def assert_unchanged(model: nn.Module, before) -> None:
    now = dict(model.named_buffers())
    assert sorted(now) == sorted(name for name, _, _ in before)
    for name, obj, value in before:
        assert now[name] is obj, f"buffer {name} was replaced"
        assert torch.equal(now[name], value), f"buffer {name} changed"


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- 1. one setting
def test_score_functions_given_a_model_use_the_score_curve_setting():
    torch.manual_seed(0)
    model = SoftplusNet().eval()
    x = torch.rand(4, 1, 8, 8)
    noise = torch.randn_like(x)
    curve = score_curve(model, "bottleneck", ["conv2"], x, noise_func=noise, benchmark=False)
    ns = noise_score(model, x, noise_func=noise, **WHERE)
    assert torch.allclose(ns, curve.per_example[0], atol=1e-6)
    explicit = EmbeddingAttribution(model, **WHERE, method="activation_gradient", embedding_aggregator="mean")
    assert torch.allclose(ns, noise_score(explicit, x, noise_func=noise), atol=1e-6)
    # the test can tell the settings apart: EmbeddingAttribution's own defaults score differently
    default = quiet(noise_score, EmbeddingAttribution(model, **WHERE), x, noise_func=noise)
    assert (ns - default).abs().max() > 1e-2

    vcurve = score_curve(model, "bottleneck", ["conv2"], x, score="variance")
    assert torch.allclose(variance_score(model, x, **WHERE), vcurve.per_example[0], atol=1e-6)

    for fn, args in ((noise_benchmark, {"n_draws": 2}), (drift_score, {"epsilons": [0.0, 0.5]})):
        torch.manual_seed(1)
        from_model = fn(model, x, **args, **WHERE)
        torch.manual_seed(1)
        assert torch.allclose(from_model, fn(explicit, x, **args), atol=1e-6)
    # a setting other than the default, given with the model
    torch.manual_seed(2)
    gcam = noise_score(model, x, noise_func=noise, method="gradcam", **WHERE)
    gradcam = EmbeddingAttribution(model, **WHERE, method="gradcam", embedding_aggregator="mean")
    ref = noise_score(gradcam, x, noise_func=noise)
    assert torch.allclose(gcam, ref, atol=1e-6)


def _setting_warnings(fn, explanation, x, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(explanation, x, **kwargs)
    return [str(w.message) for w in caught if "embedding_aggregator='var'" in str(w.message)]


def test_an_embedding_attribution_with_var_warns_for_the_noise_scores():
    torch.manual_seed(0)
    model = SoftplusNet().eval()
    x = torch.rand(3, 1, 8, 8)
    default = EmbeddingAttribution(model, **WHERE)  # embedding_aggregator="var"
    cases = ((noise_score, {}), (noise_benchmark, {"n_draws": 1}), (drift_score, {"epsilons": [0.1]}))
    for fn, kwargs in cases:
        for explanation in (default, default.attribute):
            found = _setting_warnings(fn, explanation, x, **kwargs)
            assert len(found) == 1 and "noise_score(model, inputs" in found[0]
        mean = EmbeddingAttribution(model, **WHERE, embedding_aggregator="mean")
        assert _setting_warnings(fn, mean, x, **kwargs) == []
    # rho_D does not enter the variance score, and a model never warns
    assert _setting_warnings(variance_score, default, x) == []
    assert _setting_warnings(noise_score, model, x, **WHERE) == []


def test_model_only_arguments_need_a_model():
    model = SoftplusNet().eval()
    x = torch.rand(2, 1, 8, 8)
    ea = EmbeddingAttribution(model, **WHERE, embedding_aggregator="mean")
    with pytest.raises(ValueError, match="^method configure the EmbeddingAttribution built from a model"):
        noise_score(ea, x, method="gradient")
    with pytest.raises(ValueError, match="^embedding_layer, layer configure"):
        variance_score(lambda t: torch.rand(t.shape[0], 3, 8, 8), x, **WHERE)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(ValueError, match="method must be one of"):
        noise_score(model, x, method="saliency", **WHERE)
    with pytest.raises(ValueError, match="embedding_aggregator must be one of"):
        drift_score(model, x, [0.1], embedding_aggregator="median", **WHERE)
    handle.remove()
    assert calls == []  # refused before any forward pass


# ----------------------------------------------------------------------------- 2. no change to the model
CALLS = {
    "noise_score": lambda e, x, **k: noise_score(e, x, n_noise=2, **k),
    "noise_benchmark": lambda e, x, **k: noise_benchmark(e, x, n_draws=2, **k),
    "variance_score": lambda e, x, **k: variance_score(e, x, **k),
    "drift_score": lambda e, x, **k: drift_score(e, x, [0.0, 0.3], **k),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("eval_mode", [True, False])
def test_buffers_bit_identical_after_a_score(name, eval_mode):
    """BatchNorm, SyncBatchNorm and a user module's own buffers (in place and reassigned): the
    same tensors with the same bits after the call, in both modes, model form and object form."""
    model = trained_bn()
    x = torch.rand(4, 1, 8, 8)
    ea = EmbeddingAttribution(model, **WHERE, embedding_aggregator="mean", eval_mode=eval_mode)
    for explanation, kwargs in ((model, dict(WHERE, eval_mode=eval_mode)), (ea, {})):
        before = snapshot(model)
        quiet(CALLS[name], explanation, x, **kwargs)
        assert_unchanged(model, before)
        assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("eval_mode", [True, False])
def test_score_curve_leaves_buffers_alone(eval_mode):
    model = trained_bn()
    before = snapshot(model)
    x = torch.rand(4, 1, 8, 8)
    for score in ("noise", "variance"):
        quiet(score_curve, model, "bottleneck", ["conv1", "conv2"], x, score=score, eval_mode=eval_mode)
    assert_unchanged(model, before)
    assert model.training


def test_a_captum_attribution_object_keeps_its_model_buffers():
    from captum.attr import InputXGradient

    model = trained_bn().eval()
    before = snapshot(model)
    noise_score(InputXGradient(model), torch.rand(4, 1, 8, 8), target=0)
    assert_unchanged(model, before)  # the Counter's buffers would move without the protection


def _reference_train_mode_score(model, x, noise):
    """The score of the real batch alone against the noise batch alone, each in its own training-
    mode pass of a fresh copy of the model."""
    maps = []
    for batch in (x, noise):
        ea = EmbeddingAttribution(
            copy.deepcopy(model), **WHERE, method="activation_gradient", embedding_aggregator="mean",
            eval_mode=False,
        )  # fmt: skip
        maps.append(ea.attribute(batch).flatten(1))
    return (minmax_normalize(maps[0]) - minmax_normalize(maps[1])).abs().mean(dim=1)


def test_train_mode_scores_normalise_the_real_examples_alone():
    model = trained_bn()
    torch.manual_seed(3)
    x = torch.rand(6, 1, 8, 8)
    noise = torch.randn_like(x)
    expected = _reference_train_mode_score(model, x, noise)
    ea = EmbeddingAttribution(
        model, **WHERE, method="activation_gradient", embedding_aggregator="mean", eval_mode=False
    )
    assert torch.allclose(noise_score(ea, x, noise_func=noise), expected, atol=1e-6)
    from_model = noise_score(model, x, noise_func=noise, eval_mode=False, **WHERE)
    assert torch.allclose(from_model, expected, atol=1e-6)
    # also when a bound allowed several copies per call
    got = noise_score(ea, x, noise_func=noise, max_examples_per_batch=100)
    assert torch.allclose(got, expected, atol=1e-6)
    # the reference tells the two apart: images and noise normalised together score otherwise
    ea2 = copy.deepcopy(ea)
    joint = ea2.attribute(torch.cat([x, noise])).flatten(1)
    mixed = (minmax_normalize(joint[:6]) - minmax_normalize(joint[6:])).abs().mean(dim=1)
    assert (mixed - expected).abs().max() > 1e-3


def test_differentiable_train_mode_score_backpropagates_and_keeps_buffers():
    model = trained_bn()
    before = snapshot(model)
    x = torch.rand(4, 1, 8, 8)
    ns = noise_score(model, x, differentiable=True, eval_mode=False, **WHERE).mean()
    vs = variance_score(model, x, differentiable=True, eval_mode=False, **WHERE).mean()
    (-(ns + vs)).backward()  # the buffers saved by the graph were never written
    assert torch.isfinite(model.conv1.weight.grad).all() and model.conv1.weight.grad.abs().sum() > 0
    assert_unchanged(model, before)


def _train_mode_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    return [w for w in caught if "model is in training mode" in str(w.message)]


def test_training_mode_warning_and_the_way_to_say_i_know():
    model = trained_bn()
    x = torch.rand(3, 1, 8, 8)
    found = _train_mode_warnings(noise_score, model, x, **WHERE)
    assert len(found) == 1 and "eval_mode=True" in str(found[0].message)
    assert found[0].filename == __file__  # points at the user's line
    assert _train_mode_warnings(noise_score, model, x, eval_mode=True, **WHERE) == []
    assert _train_mode_warnings(noise_score, model, x, eval_mode=False, **WHERE) == []
    ea = EmbeddingAttribution(model, **WHERE, embedding_aggregator="mean")
    assert len(_train_mode_warnings(noise_score, ea, x)) == 1
    assert _train_mode_warnings(noise_score, ea, x, eval_mode=True) == []
    assert _train_mode_warnings(score_curve, model, "bottleneck", ["conv2"], x, eval_mode=True) == []
    assert model.training
    # eval_mode=True scores exactly as the model in eval mode does
    torch.manual_seed(0)
    in_train = noise_score(model, x, eval_mode=True, noise_func=torch.randn_like(x) * 0 + 0.5, **WHERE)
    model.eval()
    in_eval = noise_score(model, x, noise_func=torch.randn_like(x) * 0 + 0.5, **WHERE)
    assert torch.allclose(in_train, in_eval, atol=1e-6)


def test_eval_mode_errors():
    model = trained_bn()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="eval_mode must be True or False or None"):
        noise_score(model, x, eval_mode="yes", **WHERE)
    with pytest.raises(ValueError, match="built with eval_mode=True"):
        noise_score(EmbeddingAttribution(model, **WHERE), x, eval_mode=False)
    with pytest.raises(ValueError, match="eval_mode needs the model"):
        noise_score(lambda t: torch.rand(t.shape[0], 8, 8), x, eval_mode=True)


# ----------------------------------------------------------------------------- 3. constant-map layers
class PooledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.Softplus()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Linear(4, 5)

    def forward(self, x):
        return self.embedding(self.pool(self.act(self.conv1(x))).flatten(1))


@pytest.mark.parametrize("score", ["noise", "variance"])
def test_score_curve_warns_about_a_layer_with_one_position(score):
    torch.manual_seed(0)
    model = PooledNet().eval()
    x = torch.rand(4, 1, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curve = score_curve(model, "embedding", ["conv1", "pool"], x, score=score, n_benchmark_draws=2)
    found = [str(w.message) for w in caught if "constant over its positions" in str(w.message)]
    assert len(found) == 1 and "'pool'" in found[0] and "1x1 avgpool" in found[0]
    assert curve.constant_layers == ["pool"]
    assert curve.values[1] == 0 and curve.values[0] > 0


# ----------------------------------------------------------------------------- 4. progress
def test_show_progress_drives_a_bar_over_the_passes(monkeypatch):
    seen = []
    real = stacked_copies.progress_bar

    def spy(iterable=None, **kwargs):
        seen.append((kwargs["show"], kwargs["total"], kwargs["desc"]))
        return real(iterable, **kwargs)

    monkeypatch.setattr(stacked_copies, "progress_bar", spy)
    model = SoftplusNet().eval()
    x = torch.rand(2, 1, 8, 8)
    noise_score(model, x, n_noise=3, max_examples_per_batch=4, **WHERE)
    variance_score(model, x, show_progress=False, **WHERE)
    score_curve(model, "bottleneck", ["conv1", "conv2"], x, n_benchmark_draws=1)
    assert seen == [(True, 2, "noise score"), (False, 1, "variance score"), (True, 1, "noise score curve")]
    with pytest.raises(ValueError, match="show_progress must be True or False"):
        drift_score(model, x, [0.1], show_progress=1, **WHERE)
    # show_progress=False also silences an EmbeddingAttribution's own bar
    ea = EmbeddingAttribution(model, **WHERE, embedding_aggregator="mean")
    kwargs = stacked_copies.resolve_explainer(ea, {}, False, False, show_progress=False).kwargs
    assert kwargs == {"show_progress": False}
