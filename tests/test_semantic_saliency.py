"""SemanticGuidedBackprop / SemanticGradientInput: Captum equality, hand-computed masks, errors, state."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from _kernels import assert_matches
from captum.attr import GradientAttribution, GuidedBackprop, InputXGradient
from captum.testing.helpers.basic_models import (
    BasicModel_ConvNet_One_Conv,
    BasicModel_MultiLayer,
    BasicModel_MultiLayer_MultiInput,
    BasicModelWithReusedModules,
)
from torch import nn

from captum_concepts.attr import SemanticGradientInput, SemanticGuidedBackprop
from captum_concepts.concept import SemanticVector
from captum_concepts.testing import assert_same_state, model_state

pytestmark = [
    pytest.mark.kernels,  # ours vs Captum's code path, batch vs one example
    pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients:UserWarning"),
]

METHODS = [(SemanticGuidedBackprop, GuidedBackprop), (SemanticGradientInput, InputXGradient)]


@pytest.mark.parametrize("ours, theirs", METHODS)
@pytest.mark.parametrize("layer, shape", [("block3.pool", (64, 2, 2)), ("block3.relu", (64, 4, 4))])
def test_all_ones_mask_equals_captum_on_digits(digits, digits_cnn, ours, theirs, layer, shape):
    x, t = digits.x_test[:32], digits.y_test[:32]
    attr = ours(digits_cnn, layer, torch.ones(10, *shape)).attribute(x, target=t)
    # Captum's own code path: equal to float tolerance (assert_matches also checks non-zero)
    assert_matches(attr, theirs(digits_cnn).attribute(x, target=t))
    assert not attr.requires_grad
    # tuple in, tuple out; an int target
    (a,) = ours(digits_cnn, layer, torch.ones(10, *shape)).attribute((x,), target=4)
    (b,) = theirs(digits_cnn).attribute((x,), target=4)
    assert_matches(a, b)


@pytest.mark.parametrize("ours, theirs", METHODS)
@pytest.mark.parametrize("inplace", [False, True])
def test_all_ones_mask_equals_captum_on_basic_conv_model(ours, theirs, inplace):
    model = BasicModel_ConvNet_One_Conv(inplace=inplace).eval()
    x = torch.arange(32.0).view(2, 1, 4, 4) * 3 - 20
    t = torch.tensor([1, 3])
    before = model_state(model)
    attr = ours(model, "relu1", torch.ones(4, 2, 2, 2)).attribute(x, target=t)
    assert_matches(attr, theirs(model).attribute(x, target=t))
    assert_same_state(before, model)  # ReLU.inplace untouched


@pytest.mark.parametrize("ours, theirs", METHODS)
def test_all_ones_mask_equals_captum_with_reused_relu(ours, theirs):
    torch.manual_seed(5)  # both outputs live on x (seed 0 gave a model whose outputs are all 0 on x)
    model = BasicModelWithReusedModules().eval()
    x = torch.randn(6, 3)
    attr = ours(model, "lin2", torch.ones(2, 2)).attribute(x, target=1)
    assert_matches(attr, theirs(model).attribute(x, target=1))
    # the masked layer can be the reused ReLU itself: the mask applies at both calls
    attr = ours(model, "relu", torch.ones(2, 2)).attribute(x, target=0)
    assert_matches(attr, theirs(model).attribute(x, target=0))


@pytest.mark.parametrize("ours, theirs", METHODS)
def test_all_ones_mask_equals_captum_multi_input_and_additional_args(ours, theirs):
    model = BasicModel_MultiLayer_MultiInput().eval()
    g = torch.Generator().manual_seed(0)
    x1, x2, x3 = (torch.randn(4, 3, generator=g) for _ in range(3))
    kwargs = dict(target=torch.tensor([0, 1, 1, 0]), additional_forward_args=(2,))
    a = ours(model, "model.relu", torch.ones(2, 4)).attribute((x1, x2, x3), **kwargs)
    b = theirs(model).attribute((x1, x2, x3), **kwargs)
    assert isinstance(a, tuple) and len(a) == 3
    assert_matches(a, b)
    single = BasicModel_MultiLayer().eval()
    a = ours(single, "linear1", torch.ones(2, 4)).attribute(x1, target=1)
    assert_matches(a, theirs(single).attribute(x1, target=1))


class TwoLayer(nn.Module):
    """x -> Linear(W1) -> ReLU -> Linear(W2): gradients by hand."""

    def __init__(self, functional: bool = False):
        super().__init__()
        self.lin1 = nn.Linear(3, 3, bias=False)
        self.relu = nn.ReLU()
        self.lin2 = nn.Linear(3, 2, bias=False)
        self.functional = functional
        with torch.no_grad():
            self.lin1.weight.copy_(torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]))
            self.lin2.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-1.0, 1.0, 1.0]]))

    def forward(self, x):
        h = self.lin1(x)
        h = F.relu(h) if self.functional else self.relu(h)
        return self.lin2(h)


def test_hand_computed_masked_gradients():
    model = TwoLayer().eval()
    x = torch.tensor([[1.0, -2.0, 3.0], [2.0, 1.0, -1.0]])  # h = [1, 2, 3], [2, -1, -1]
    masks = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    # class 0, example 0: dy/dh = [1, -2, 3], mask [1, 0, 1] -> [1, 0, 3]; relu' = [1, 1, 1];
    # dh/dx = diag(1, -1, 1) -> grad = [1, 0, 3].
    # class 1, example 1: dy/dh = [-1, 1, 1], mask [0, 1, 1] -> [0, 1, 1]; relu' = [1, 0, 0] -> 0.
    t = torch.tensor([0, 1])
    gxi = SemanticGradientInput(model, "relu", masks).attribute(x, target=t)
    assert torch.allclose(gxi, torch.tensor([[1.0, 0.0, 9.0], [0.0, 0.0, 0.0]]))
    # Guided: example 0 class 1 with mask row 1: [-1, 1, 1] * [0, 1, 1] = [0, 1, 1], relu' = 1,
    # keep positive -> [0, 1, 1]; through W1 = diag(1,-1,1): [0, -1, 1] (no ReLU below: kept as is).
    gbp = SemanticGuidedBackprop(model, "relu", masks).attribute(x[:1], target=1)
    assert torch.allclose(gbp, torch.tensor([[0.0, -1.0, 1.0]]))
    # the mask row is chosen per example by its target: batch == one by one
    batch = SemanticGuidedBackprop(model, "lin1", masks).attribute(x, target=t)
    singles = [
        SemanticGuidedBackprop(model, "lin1", masks).attribute(x[i : i + 1], target=int(t[i]))
        for i in range(2)
    ]
    assert_matches(batch, torch.cat(singles))  # one example vs a batch: other kernels, to float tolerance


def test_functional_relu_is_not_modified_like_captum():
    model = TwoLayer(functional=True).eval()
    x = torch.tensor([[1.0, -2.0, 3.0]])
    ones = torch.ones(2, 3)
    ours = SemanticGuidedBackprop(model, "lin1", ones).attribute(x, target=0)
    assert_matches(ours, GuidedBackprop(model).attribute(x, target=0))
    # F.relu keeps negative gradients: equal to the plain gradient [1, 2, 3]
    assert torch.allclose(ours, torch.tensor([[1.0, 2.0, 3.0]]))


def test_zero_mask_gives_zero_and_semantic_vector_masks(digits, digits_cnn):
    x, y = digits.x_test[:16], digits.y_test[:16]
    zeros = SemanticGuidedBackprop(digits_cnn, "block3.pool", torch.zeros(10, 64, 2, 2)).attribute(
        x, target=y
    )
    assert torch.count_nonzero(zeros) == 0
    sv = SemanticVector(digits_cnn, "block3.pool").fit_from_labels((digits.x_train, digits.y_train))
    for cls in (SemanticGuidedBackprop, SemanticGradientInput):
        from_sv = cls(digits_cnn, "block3.pool", sv).attribute(x, target=y)
        from_tensor = cls(digits_cnn, digits_cnn.block3.pool, sv.masks()).attribute(x, target=y)
        assert torch.equal(from_sv, from_tensor)
    plain = GuidedBackprop(digits_cnn).attribute(x, target=y)
    assert not torch.equal(from_sv, plain) or cls is SemanticGradientInput
    # classes mapped to concepts by name
    named = SemanticVector(digits_cnn, "block3.pool").fit(
        {f"digit{c}": digits.x_train[digits.y_train == c] for c in range(10)}
    )
    reverse = [f"digit{c}" for c in reversed(range(10))]
    a = SemanticGuidedBackprop(digits_cnn, "block3.pool", named, concepts=reverse).attribute(x, target=y)
    b = SemanticGuidedBackprop(digits_cnn, "block3.pool", sv.masks().flip(0)).attribute(x, target=y)
    assert torch.equal(a, b)


def test_captum_interface():
    model = TwoLayer()
    sgb = SemanticGuidedBackprop(model, "relu", torch.ones(2, 3))
    sgi = SemanticGradientInput(model, model.relu, torch.ones(2, 3))
    assert isinstance(sgb, GradientAttribution) and isinstance(sgi, GradientAttribution)
    assert not sgb.has_convergence_delta() and not sgi.has_convergence_delta()
    assert sgb.multiplies_by_inputs is False and sgi.multiplies_by_inputs is True


def test_bad_input_errors(digits, digits_cnn):
    x = digits.x_test[:4]
    with pytest.raises(ValueError, match="mask shape mismatch"):
        SemanticGuidedBackprop(digits_cnn, "block3.pool", torch.ones(10, 64, 4, 4)).attribute(x, target=1)
    sgb = SemanticGuidedBackprop(digits_cnn, "block3.pool", torch.ones(10, 64, 2, 2))
    with pytest.raises(ValueError, match="out of range"):
        sgb.attribute(x, target=10)
    with pytest.raises(ValueError, match="out of range"):
        sgb.attribute(x, target=torch.tensor([0, 1, -1, 2]))
    with pytest.raises(ValueError, match="entries for 4 examples"):
        sgb.attribute(x, target=[0, 1])
    with pytest.raises(ValueError, match="target is required"):
        sgb.attribute(x)
    with pytest.raises(TypeError, match="tuple targets"):
        sgb.attribute(x, target=(0, 1))
    with pytest.raises(ValueError, match="shape \\(num_classes"):
        SemanticGuidedBackprop(digits_cnn, "block3.pool", torch.ones(64))
    with pytest.raises(TypeError, match="semantic_vectors"):
        SemanticGuidedBackprop(digits_cnn, "block3.pool", [1, 0])
    with pytest.raises(ValueError, match="not fitted"):
        SemanticGuidedBackprop(digits_cnn, "block3.pool", SemanticVector(digits_cnn, "block3.pool"))
    sv = SemanticVector(digits_cnn, "block3.relu").fit({"a": x})
    with pytest.raises(ValueError, match="fitted at layer"):
        SemanticGuidedBackprop(digits_cnn, "block3.pool", sv)
    with pytest.raises(ValueError, match="Did you mean"):
        SemanticGradientInput(digits_cnn, "block3.poll", torch.ones(10, 64, 2, 2))


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("cls", [SemanticGuidedBackprop, SemanticGradientInput])
def test_model_state_restored_after_exception(digits, digits_cnn, cls):
    model = nn.Sequential(digits_cnn, _Boom()).train()
    digits_cnn.block2.relu.inplace = True
    digits_cnn.classifier.weight.requires_grad_(False)
    before = model_state(model)
    attr = cls(model, "0.block3.pool", torch.ones(10, 64, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(RuntimeError, match="boom"):
            attr.attribute(digits.x_test[:4], target=0)
    assert_same_state(before, model)
    assert model.training and digits_cnn.block2.relu.inplace


class _ChannelMasks:
    """Not a SemanticVector: any object with ``semantic_masks`` is a mask source."""

    def __init__(self, layer, masks):
        self.layer, self.table, self.calls = layer, masks, []

    def semantic_masks(self, threshold=0.5, concepts=None):
        self.calls.append((threshold, concepts))
        return self.layer, self.table


@pytest.mark.parametrize("cls", [SemanticGuidedBackprop, SemanticGradientInput])
def test_any_mask_source_object_drives_the_attribution(digits, digits_cnn, cls):
    x, y = digits.x_test[:8], digits.y_test[:8]
    masks = torch.rand(10, 64, 2, 2, generator=torch.Generator().manual_seed(0)) > 0.5
    source = _ChannelMasks(digits_cnn.block3.pool, masks)
    got = cls(digits_cnn, "block3.pool", source, threshold=0.3).attribute(x, target=y)
    assert source.calls == [(0.3, None)]
    ref = cls(digits_cnn, "block3.pool", masks).attribute(x, target=y)
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="fitted at layer 'block2.pool'"):
        cls(digits_cnn, "block3.pool", _ChannelMasks(digits_cnn.block2.pool, masks))
    # a fitted SemanticVector is such a source: its masks for the class of each concept
    sv = SemanticVector(digits_cnn, "block3.pool")
    sv.fit_from_labels((digits.x_train[:300], digits.y_train[:300]))
    layer, table = sv.semantic_masks(0.4, concepts=list(reversed(range(10))))
    assert layer is digits_cnn.block3.pool and torch.equal(table, sv.masks(0.4).flip(0))


@pytest.mark.parametrize("cls", [SemanticGuidedBackprop, SemanticGradientInput])
def test_attribute_refuses_inference_mode_naming_the_method(digits, digits_cnn, cls):
    x, y = digits.x_test[:4], digits.y_test[:4]
    attr = cls(digits_cnn, "block3.pool", torch.ones(10, 64, 2, 2))
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=rf"{cls.__name__}\.attribute needs gradients.*inference_mode"):
            attr.attribute(x, target=y)
        made_inside = x.clone()
    with pytest.raises(RuntimeError, match=r"inputs is an inference tensor"):
        attr.attribute(made_inside, target=y)
    with torch.no_grad():
        assert attr.attribute(x, target=y).abs().max() > 0
    # the checked entry keeps its signature (documentation, Captum's wrappers)
    assert list(inspect.signature(cls.attribute).parameters) == [
        "self",
        "inputs",
        "target",
        "additional_forward_args",
    ]
