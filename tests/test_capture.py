"""One layer-capture helper: captured values are what the layer computed, safe from later in-place ops.

torchvision architectures with random weights overwrite batch-norm outputs in place (ResNet's
``relu(inplace=True)`` after ``bn1``, DenseNet's ``F.relu(inplace=True)`` after ``norm5``,
MobileNet's in-place Hardswish/ReLU). References come from a plain forward with a hook that
clones the layer's output (or from the truncated model), and hold negative values.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from captum_concepts._utils.hooks import ModelGuard
from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.concept import CoupledNMFConcepts, SemanticVector
from captum_concepts.concept._core.activations import collect_blocks, resolve_blocks
from captum_concepts.testing import assert_same_state, model_state


def _cloned_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Reference: the layer's output cloned inside its own forward hook (before anything downstream)."""
    module = dict(model.named_modules())[layer]
    got = []
    handle = module.register_forward_hook(lambda _m, _i, out: got.append(out.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert len(got) == 1
    return got[0]


def _resnet50() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


CASES = {
    "resnet50.layer1.0.bn1": (_resnet50, "layer1.0.bn1"),
    "densenet121.features.norm5": (lambda: torchvision.models.densenet121(weights=None), "features.norm5"),
    "mobilenet_v3_small.features.0.1": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None),
        "features.0.1",
    ),
    "mobilenet_v3_small.features.1.block.0.1": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None),
        "features.1.block.0.1",
    ),
}


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet50():
    """Shared by the tests that leave it untouched (each checks so)."""
    return _resnet50()


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if "densenet" in c else c for c in CASES]
)
def test_coupled_nmf_collects_the_layer_output_not_what_an_inplace_op_left(case, images):
    build, layer = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    reference = _cloned_output(model, layer, images)
    assert reference.min() < 0, "the reference must have negative values (else in-place ReLU is invisible)"
    before = model_state(model)
    got = collect_blocks(resolve_blocks(model, [layer], include_pixels=False), images)
    assert_same_state(before, model)
    torch.testing.assert_close(got.activation_blocks[0].t(), reference.reshape(2, -1), rtol=1e-5, atol=1e-6)
    # the public path: negative activations are seen, so a fit without shift refuses them
    with pytest.raises(ValueError, match="has minimum"):
        CoupledNMFConcepts(2, model, layers=[layer], include_pixels=False, max_iter=2).fit(images)
    assert_same_state(before, model)


def test_semantic_vector_features_equal_the_truncated_model(images, resnet50):
    model = resnet50
    truncated = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1[0].conv1)
    with torch.no_grad():
        reference = model.layer1[0].bn1(truncated(images))
    assert reference.min() < 0
    sv = SemanticVector(model, "layer1.0.bn1")
    sv.fit({"a": images[:1], "b": images[1:]})
    torch.testing.assert_close(sv.transform(images), reference.reshape(2, -1), rtol=1e-5, atol=1e-6)


def test_embedding_attribution_gradient_is_wrt_the_value_downstream_consumes(images, resnet50):
    """Gradients at ``layer1.0.bn1`` (overwritten by the in-place ReLU) against plain autograd."""
    model = resnet50
    x = images[:1, :, :32, :32]
    bn1 = model.layer1[0].bn1
    kept = []

    def keep_and_pass_clone(_m, _i, out):
        kept.append(out)
        return out.clone()

    handle = bn1.register_forward_hook(keep_and_pass_clone)
    try:
        z = model(x)[:, :2]
        grads = [torch.autograd.grad(z[:, d].sum(), kept[0], retain_graph=True)[0] for d in range(2)]
    finally:
        handle.remove()
    act = kept[0].detach()
    assert act.min() < 0 and all(g.abs().sum() > 0 for g in grads)
    reference = torch.stack([(g * act).mean(dim=1) for g in grads], dim=1)  # (N, D, H, W)
    ea = EmbeddingAttribution(model, None, "layer1.0.bn1", method="activation_gradient", upsample=None)
    before = model_state(model)
    got = ea.attribute(x, embedding_dims=[0, 1], return_per_dim=True)
    assert_same_state(before, model)
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-7)


def test_capture_checks_exactly_once_and_names_the_layer():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu).eval()
    unused = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)).eval()
    unused.forward = lambda x: unused[0](x)  # the second module never runs
    x = torch.randn(2, 3)
    with ModelGuard(model) as guard, torch.no_grad():
        cap = guard.capture(relu, "layers[0]")
        guard.forward(model, x)
        with pytest.raises(ValueError, match=r"layers\[0\]='1' was run 2 times in one forward pass"):
            cap.tensor()
    with ModelGuard(unused) as guard, torch.no_grad():
        cap = guard.capture(unused[1], "layer")
        guard.forward(unused, x)
        with pytest.raises(ValueError, match="layer='1' was never reached by the forward pass"):
            cap.tensor()
    # stop=True: the first call is recorded and the rest of the forward is skipped
    calls = []
    model[2].register_forward_hook(lambda *a: calls.append(1))
    with ModelGuard(model) as guard, torch.no_grad():
        cap = guard.capture(relu, stop=True)
        assert guard.forward(model, x) is None
        assert torch.equal(cap.tensor(), torch.relu(model[0](x)))
    assert calls == []


def test_capture_records_only_inside_its_forward():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU()).eval()
    x = torch.randn(2, 3)
    with ModelGuard(model) as guard, torch.no_grad():
        cap = guard.capture(model[0], stop=True)
        assert torch.equal(model(x), torch.relu(model[0](x)))  # a plain call: not stopped, not recorded
        assert cap.records == []
        guard.forward(model, x)
        assert len(cap.records) == 1
