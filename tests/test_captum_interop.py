"""Captum's wrappers and metrics around EmbeddingAttribution and the semantic attributions."""

from __future__ import annotations

import pytest
import torch
from captum.attr import NoiseTunnel
from captum.metrics import infidelity, sensitivity_max

from captum_concepts.attr import EmbeddingAttribution, SemanticGradientInput, SemanticGuidedBackprop
from captum_concepts.testing import assert_same_state, model_state

N_SAMPLES = 3
STDEV = 0.2
DIMS = [0, 5, 17]  # a few embedding components keep the per-dimension backward passes cheap


@pytest.fixture
def model(random_digits_cnn):
    return random_digits_cnn


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.rand(2, 1, 8, 8)


def _masks(model):
    """A random 0/1 semantic mask per class at block2.relu (C=32, 8x8)."""
    gen = torch.Generator().manual_seed(3)
    return (torch.rand(10, 32, 8, 8, generator=gen) > 0.3).float()


def _methods(model):
    target = torch.tensor([3, 7])
    return {
        "embedding_input": (
            EmbeddingAttribution(model, embedding_layer="embedding"),
            {"embedding_dims": DIMS},
        ),
        "embedding_layer": (
            EmbeddingAttribution(model, embedding_layer="embedding", layer="block2.conv", method="gradcam"),
            {"embedding_dims": DIMS},
        ),
        "guided": (SemanticGuidedBackprop(model, "block2.relu", _masks(model)), {"target": target}),
        "gradient_input": (SemanticGradientInput(model, "block2.relu", _masks(model)), {"target": target}),
    }


METHODS = ["embedding_input", "embedding_layer", "guided", "gradient_input"]


def _hand_noise_tunnel(method, x, kwargs, seed):
    """The same noise draws as NoiseTunnel (one normal draw of shape (N * n, ...), rows
    repeat-interleaved), then one plain call per noise sample, averaged."""
    torch.manual_seed(seed)
    noise = torch.normal(0, torch.tensor(STDEV).repeat((x.shape[0] * N_SAMPLES, *x.shape[1:])))
    noisy = x.repeat_interleave(N_SAMPLES, dim=0) + noise
    maps = [method.attribute(noisy[k::N_SAMPLES], **kwargs) for k in range(N_SAMPLES)]
    return torch.stack(maps).mean(0)


@pytest.mark.parametrize("name", METHODS)
def test_noise_tunnel_equals_a_hand_written_average(model, x, name):
    method, kwargs = _methods(model)[name]
    assert callable(method.attribute.__wrapped__)
    before = model_state(model)
    torch.manual_seed(5)
    smooth = NoiseTunnel(method).attribute(x, nt_samples=N_SAMPLES, stdevs=STDEV, **kwargs)
    ref = _hand_noise_tunnel(method, x, kwargs, seed=5)
    assert ref.abs().max() > 0
    torch.testing.assert_close(smooth, ref, rtol=1e-4, atol=1e-7)
    assert_same_state(before, model)


@pytest.mark.parametrize("name", METHODS)
def test_noise_tunnel_with_zero_noise_is_the_plain_call(model, x, name):
    method, kwargs = _methods(model)[name]
    plain = method.attribute(x, **kwargs)
    assert plain.abs().max() > 0
    smooth = NoiseTunnel(method).attribute(x, nt_samples=2, stdevs=0.0, **kwargs)
    torch.testing.assert_close(smooth, plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", METHODS)
def test_sensitivity_max_runs_and_matches_its_definition(model, x, name):
    method, kwargs = _methods(model)[name]
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))

    def perturb(inputs):
        return inputs + 0.05 * direction.repeat(inputs.shape[0] // x.shape[0], 1, 1, 1)

    def explain(inputs, **kw):  # a layer attribution is a tensor (Captum's rule): tuple it, like LayerGradCam
        out = method.attribute(inputs, **kw)
        return out if isinstance(out, tuple) else (out,)

    sens = sensitivity_max(explain, x, perturb_func=perturb, n_perturb_samples=1, **kwargs)
    base = method.attribute(x, **kwargs).flatten(1)
    moved = method.attribute(perturb(x), **kwargs).flatten(1)
    ref = (moved - base).norm(dim=1) / base.norm(dim=1)
    assert ref.min() > 0
    torch.testing.assert_close(sens, ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", METHODS)
def test_infidelity_runs_on_the_maps(model, x, name):
    method, kwargs = _methods(model)[name]
    maps = method.attribute(x, **kwargs)
    if maps.shape != x.shape:  # an embedding map (N, H, W): the same value for every input channel
        maps = maps.unsqueeze(1).expand_as(x)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(8))
    target = kwargs.get("target", torch.tensor([3, 3]))

    def perturb(inputs):
        pert = 0.05 * direction.repeat(inputs.shape[0] // x.shape[0], 1, 1, 1)
        return pert, inputs - pert

    infid = infidelity(model, perturb, x, maps, target=target, n_perturb_samples=1)
    with torch.no_grad():
        pert, moved = perturb(x)
        drop = (model(x) - model(moved)).gather(1, target[:, None])[:, 0]
    ref = ((maps * pert).flatten(1).sum(1) - drop) ** 2
    assert ref.min() > 0
    torch.testing.assert_close(infid, ref, rtol=1e-4, atol=1e-9)


def test_tuples_in_tuples_out_for_inputs_layer_form_for_layers(model, x):
    ea = EmbeddingAttribution(model, embedding_layer="embedding")
    single = ea.attribute(x)
    (as_tuple,) = ea.attribute((x,))
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(as_tuple, single)
    # a layer source gives what the layer outputs (one tensor), whatever the inputs (Captum's rule)
    ea = EmbeddingAttribution(model, embedding_layer="embedding", layer="block2.conv")
    single, from_tuple = ea.attribute(x), ea.attribute((x,))
    assert isinstance(single, torch.Tensor) and isinstance(from_tuple, torch.Tensor)
    torch.testing.assert_close(from_tuple, single)
    both = EmbeddingAttribution(model, embedding_layer="embedding", layer=["block2.conv", None])
    listed = both.attribute((x,))
    assert isinstance(listed, list) and isinstance(listed[0], torch.Tensor) and isinstance(listed[1], tuple)
    torch.testing.assert_close(listed[0], single)
    sgi = SemanticGradientInput(model, "block2.relu", _masks(model))
    (as_tuple,) = sgi.attribute((x,), target=1)
    torch.testing.assert_close(as_tuple, sgi.attribute(x, target=1))


def test_eval_mode_false_equals_captum_on_a_training_mode_model():
    from captum.attr import GuidedBackprop, InputXGradient
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    ).train()
    x = torch.rand(4, 1, 4, 4)
    ones = torch.ones(3, 4, 4, 4)
    before = model_state(model)
    for cls, captum_cls in (
        (SemanticGradientInput, InputXGradient),
        (SemanticGuidedBackprop, GuidedBackprop),
    ):
        ours = cls(model, "2", ones, eval_mode=False).attribute(x, target=1)
        ref = captum_cls(model).attribute(x, target=1)
        assert ref.abs().max() > 0
        torch.testing.assert_close(ours, ref)
        with pytest.warns(UserWarning, match="training mode"):
            in_eval = cls(model, "2", ones).attribute(x, target=1)
        assert not torch.allclose(in_eval, ref)  # batch statistics differ from running statistics
    assert_same_state(before, model)
